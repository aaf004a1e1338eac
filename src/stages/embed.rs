//! `embed`: one L2-normalised 256-dim vector per patch from a pretrained encoder, stored as one
//! matrix object + `embeddings/<model>.json`. Pooled features are cached by (checkpoint, tile)
//! in `cache.sled`, so after adding stacks only the new tiles go through the network.
//!
//! Mean-pooled transformer tokens share a large common component (all cosines ≈ 0.99), which
//! would make every patch look alike to the core-set and QC; so the features are centred on the
//! mean over the version's patches before L2 normalisation.

use super::{patches::PatchList, Next};
use crate::history::CommitId;
use crate::nn::{checkpoint, data::batch, mae::MaeConfig, mae::EMBED_DIM};
use crate::repo::Repo;
use crate::store::{Filter, Kind, ObjectId};
use crate::version::{DatasetVersion, EmbeddingManifest, ModelManifest};
use anyhow::{Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct EmbedParams {
    pub model: String,
    pub batch: usize,
    /// Compute every vector, ignoring and not filling the cache (what `reproduce` does).
    #[serde(skip)]
    pub fresh: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbedReport {
    pub patches: usize,
    /// Patches that went through the network (the rest came from the cache).
    pub computed: usize,
    pub seconds: f64,
    pub patches_per_second: f64,
}

/// The MAE a model manifest describes, with its weights.
pub fn load_mae(repo: &Repo, model: &ModelManifest, dev: &Device) -> Result<crate::nn::mae::Mae> {
    let cfg: MaeConfig = serde_json::from_value(model.architecture["biodc"].clone())
        .with_context(|| format!("model {} has no biodc architecture record", model.name))?;
    checkpoint::load(&cfg, &repo.store.get(&model.checkpoint)?, dev)
}

/// The `embed` verb.
pub struct Embed;

impl super::Stage for Embed {
    const VERB: &'static str = "embed";
    type Params = EmbedParams;
    type Report = EmbedReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &EmbedParams,
    ) -> Result<(Next, EmbedReport)> {
        embed(repo, head, version, params)
    }

    fn for_rerun(mut params: EmbedParams) -> EmbedParams {
        params.fresh = true;
        params
    }
}

/// The encoder `params.model` names (checked to be one, for these patches) and the patches.
fn prepare<'v>(
    repo: &Repo,
    version: &'v DatasetVersion,
    params: &EmbedParams,
    dev: &Device,
) -> Result<(ModelManifest, crate::nn::mae::Mae, PatchList<'v>)> {
    let model = version
        .models
        .get(&params.model)
        .with_context(|| {
            format!(
                "no model named {:?} in this version: run `biodc pretrain --name {}` first",
                params.model, params.model
            )
        })?
        .clone();
    anyhow::ensure!(
        model.kind == "mae",
        "model {} is a {}, not a pretrained encoder",
        model.name,
        model.kind
    );
    let mae = load_mae(repo, &model, dev)?;
    let list = PatchList::all(version)?;
    anyhow::ensure!(
        list.size == mae.cfg.encoder.image_size,
        "patches are {}×{} but model {} was trained on {}×{}",
        list.size,
        list.size,
        model.name,
        mae.cfg.encoder.image_size,
        mae.cfg.encoder.image_size
    );
    Ok((model, mae, list))
}

/// Pooled features of the patches `todo` (indices into `list`), `batch` at a time;
/// `each(i, row)` as each is computed.
fn pooled(
    repo: &Repo,
    mae: &crate::nn::mae::Mae,
    list: &PatchList,
    todo: &[usize],
    batch_size: usize,
    dev: &Device,
    mut each: impl FnMut(usize, Vec<f32>),
) -> Result<()> {
    let pb = crate::progress::bar(todo.len() as u64, "embed", false);
    for chunk in todo.chunks(batch_size.max(1)) {
        let x = batch(&list.load(&repo.store, chunk)?, list.size, dev)?;
        let out: Vec<Vec<f32>> = mae.pooled(&x)?.to_vec2()?;
        for (&i, v) in chunk.iter().zip(out) {
            each(i, v);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(())
}

pub fn embed(
    repo: &Repo,
    _head: CommitId,
    version: DatasetVersion,
    params: &EmbedParams,
) -> Result<(Next, EmbedReport)> {
    let started = Instant::now();
    let dev = crate::nn::device::current();
    let (model, mae, list) = prepare(repo, &version, params, &dev)?;
    let cache = repo.cache()?;
    let tree = format!("pooled-{}", model.checkpoint.to_hex());
    let mut rows: Vec<Option<Vec<f32>>> = list
        .items
        .iter()
        .map(|(_, p)| {
            cache
                .get::<Vec<f32>>(&tree, &p.tile.0)
                .filter(|v| v.len() == EMBED_DIM && !params.fresh)
        })
        .collect();
    let todo: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].is_none()).collect();
    pooled(repo, &mae, &list, &todo, params.batch, &dev, |i, v| {
        if !params.fresh {
            cache.put(&tree, &list.items[i].1.tile.0, &v);
        }
        rows[i] = Some(v);
    })?;
    cache.flush();
    let rows: Vec<Vec<f32>> = rows
        .into_iter()
        .map(|r| r.expect("every row embedded"))
        .collect();
    let patches = list.ids();
    finish(
        repo,
        version,
        params,
        &model,
        patches,
        rows,
        todo.len(),
        started,
    )
}

/// The embedding of `rows` (every patch's pooled features, in `list` order) as the next version.
#[allow(clippy::too_many_arguments)]
fn finish(
    repo: &Repo,
    mut version: DatasetVersion,
    params: &EmbedParams,
    model: &ModelManifest,
    patches: Vec<String>,
    rows: Vec<Vec<f32>>,
    computed: usize,
    started: Instant,
) -> Result<(Next, EmbedReport)> {
    let matrix: Vec<u8> = centred_unit_rows(&rows)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (id, _) = repo.store.put(Kind::Matrix, Filter::Shuffle(4), &matrix)?;
    let manifest = EmbeddingManifest {
        model: model.name.clone(),
        checkpoint: model.checkpoint,
        matrix: id,
        rows: rows.len(),
        dim: EMBED_DIM,
        patches,
    };
    version.embeddings.insert(model.name.clone(), manifest);
    let seconds = started.elapsed().as_secs_f64();
    let summary = format!(
        "embed {}: {} patches → {EMBED_DIM}-dim vectors ({} computed, {} cached)",
        model.name,
        rows.len(),
        computed,
        rows.len() - computed
    );
    let mut record = <Embed as super::Stage>::record(repo, params, &summary)?;
    record
        .inputs
        .insert(format!("models/{}", model.name), model.checkpoint.to_hex());
    record
        .outputs
        .insert(format!("embeddings/{}", model.name), id.to_hex());
    record
        .timings_ms
        .insert("embed".into(), (seconds * 1000.0) as u64);
    let report = EmbedReport {
        patches: rows.len(),
        computed,
        seconds,
        patches_per_second: computed as f64 / seconds.max(1e-9),
    };
    Ok((Some((version, record)), report))
}

/// A shard's part of an embedding: the pooled features of patches `start..start + rows`.
#[derive(Serialize, serde::Deserialize)]
struct EmbedShard {
    start: usize,
    rows: usize,
    pooled: ObjectId,
}

impl super::shard::Sharded for Embed {
    fn run_shard(
        repo: &Repo,
        version: &DatasetVersion,
        params: &EmbedParams,
        spec: super::shard::ShardSpec,
    ) -> Result<(Vec<ObjectId>, serde_json::Value)> {
        let dev = crate::nn::device::current();
        let (_, mae, list) = prepare(repo, version, params, &dev)?;
        let range = spec.slice(list.items.len());
        let todo: Vec<usize> = range.clone().collect();
        let mut bytes = Vec::with_capacity(todo.len() * EMBED_DIM * 4);
        pooled(repo, &mae, &list, &todo, params.batch, &dev, |_, v| {
            bytes.extend(v.iter().flat_map(|x| x.to_le_bytes()))
        })?;
        let (id, _) = repo.store.put(Kind::Matrix, Filter::Shuffle(4), &bytes)?;
        let part = EmbedShard {
            start: range.start,
            rows: todo.len(),
            pooled: id,
        };
        Ok((vec![id], serde_json::to_value(part)?))
    }

    fn gather(
        repo: &Repo,
        _head: CommitId,
        version: DatasetVersion,
        params: &EmbedParams,
        results: &[serde_json::Value],
    ) -> Result<(Next, EmbedReport)> {
        let started = Instant::now();
        let model = version.model(&params.model)?.clone();
        let list = PatchList::all(&version)?;
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(list.items.len());
        for r in results {
            let part: EmbedShard = super::shard::result(<Embed as super::Stage>::VERB, r)?;
            anyhow::ensure!(
                part.start == rows.len(),
                "embed shards do not tile the patches: one starts at {}, expected {}",
                part.start,
                rows.len()
            );
            let m = repo
                .store
                .get_f32_matrix(&part.pooled, part.rows, EMBED_DIM)?;
            rows.extend(m.chunks(EMBED_DIM).map(<[f32]>::to_vec));
        }
        anyhow::ensure!(
            rows.len() == list.items.len(),
            "the embed shards hold {} rows, the version has {} patches",
            rows.len(),
            list.items.len()
        );
        let (n, patches) = (rows.len(), list.ids());
        finish(repo, version, params, &model, patches, rows, n, started)
    }
}

/// Leave-one-out k-NN accuracy of condition labels on one embedding, beside two baselines on
/// the same patches: the normalised pixels averaged down to 8×8, and hand-made texture
/// statistics ([`crate::pixel::features::image_statistics`], standardised per column).
#[derive(Debug, Clone, Serialize)]
pub struct ConditionKnn {
    pub k: usize,
    pub patches: usize,
    pub embedding: f64,
    pub raw_pixels: f64,
    pub texture: f64,
}

/// [`ConditionKnn`] for the embeddings of `model` in `version`.
pub fn condition_knn(
    repo: &Repo,
    version: &DatasetVersion,
    model: &str,
    k: usize,
) -> Result<ConditionKnn> {
    use crate::select::knn::leave_one_out_accuracy;
    let e = version
        .embeddings
        .get(model)
        .with_context(|| format!("no embeddings of model {model:?}: run `biodc embed` first"))?;
    let x = repo.store.get_f32_matrix(&e.matrix, e.rows, e.dim)?;
    let labels: Vec<String> = e.patches.iter().map(|p| version.condition_of(p)).collect();
    let (mut raw, mut texture) = (Vec::new(), Vec::new());
    for id in &e.patches {
        let (info, plane) = version.patch_plane(&repo.store, id)?;
        let (h, w) = (info.shape[1], info.shape[2]);
        let px = crate::nn::data::normalize_patch(&plane.to_f32());
        raw.extend(crate::pixel::block_means(&px, h, w, 8));
        texture.push(crate::pixel::features::image_statistics(&px, h, w));
    }
    crate::stats::standardise_columns(&mut texture);
    let width = texture.first().map_or(1, Vec::len);
    let n = e.rows;
    Ok(ConditionKnn {
        k,
        patches: n,
        embedding: leave_one_out_accuracy(&x, n, e.dim, &labels, k),
        raw_pixels: leave_one_out_accuracy(&raw, n, 64, &labels, k),
        texture: leave_one_out_accuracy(&texture.concat(), n, width, &labels, k),
    })
}

/// Subtracts the mean row, then scales each row to unit length (flattened, row-major).
fn centred_unit_rows(rows: &[Vec<f32>]) -> Vec<f32> {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; EMBED_DIM];
    for r in rows {
        mean.iter_mut()
            .zip(r)
            .for_each(|(m, v)| *m += *v as f64 / n);
    }
    let mut out = Vec::with_capacity(rows.len() * EMBED_DIM);
    for r in rows {
        let c: Vec<f64> = r.iter().zip(&mean).map(|(v, m)| *v as f64 - m).collect();
        let norm = c.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        out.extend(c.iter().map(|x| (x / norm) as f32));
    }
    out
}
