//! `hunt`: Monte-Carlo dropout over unannotated patches to find where a model struggles.
//!
//! Each patch goes through the network `passes` times with every dropout site on (masks from a
//! seeded RNG); a pixel forest gives `passes` samples as the mean votes of disjoint groups of
//! its trees. Per pixel: the mean probability p̄ and the predictive entropy H(p̄) in bits.
//! Per patch, two scores:
//! - `disagreement`: 1 − the mean Dice between each pass's mask and the mean mask — how much
//!   the passes disagree about the object, on the scale of the error it predicts (1 − Dice);
//! - `entropy`: the mean pixel entropy.
//!
//! The top patches by the chosen score become `sets/candidates-N`, with each pick's entropy map
//! (f32) and mean-prediction mask stored as objects for export and review.

use super::Next;
use crate::history::CommitId;
use crate::pixel::dice;
use crate::repo::Repo;
use crate::segmentation::load_images;
use crate::segmentation::SegmentationModel;
use crate::store::{Filter, Kind, ObjectId};
use crate::version::{DatasetVersion, PatchSet};
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Score {
    Disagreement,
    Entropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HuntParams {
    pub model: String,
    pub top: usize,
    pub passes: usize,
    /// Score a random sample of this many unannotated patches instead of all.
    pub sample: Option<usize>,
    /// Set name; None = the next free `candidates-N`.
    pub name: Option<String>,
    pub score: Score,
    pub seed: u64,
    pub batch: usize,
    /// QC flags whose patches are skipped.
    pub exclude: Vec<String>,
    /// Draw each batch's dropout masks from a random stream of its own (numbered by the
    /// batch's place in the run) instead of one stream across all patches, so that the run
    /// can be cut into shards of whole batches. Off by default: hunts recorded before it read
    /// as off and re-run as they ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_streams: bool,
}

impl Default for HuntParams {
    fn default() -> Self {
        HuntParams {
            model: "M0".into(),
            top: 30,
            passes: 10,
            sample: None,
            name: None,
            score: Score::Disagreement,
            seed: 0,
            batch: 8,
            exclude: Vec::new(),
            batch_streams: false,
        }
    }
}

/// Uncertainty of one patch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PatchUncertainty {
    pub patch: String,
    pub disagreement: f64,
    pub entropy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HuntReport {
    pub set: String,
    pub scored: usize,
    pub top: Vec<PatchUncertainty>,
    pub patches_per_second: f64,
}

/// MC-dropout results of one patch: scores, entropy map and mean-prediction mask.
pub struct McResult {
    pub scores: PatchUncertainty,
    pub entropy_map: Vec<f32>,
    pub mean_mask: Vec<u8>,
}

fn binary_entropy(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    -(p * p.log2() + (1.0 - p) * (1.0 - p).log2())
}

/// Runs `passes` stochastic passes over normalised `images` and scores each.
pub fn mc_dropout(
    net: &SegmentationModel,
    ids: &[String],
    images: &[Vec<f32>],
    passes: usize,
    batch: usize,
    rng: &mut ChaCha8Rng,
    mut progress: impl FnMut(usize),
) -> Result<Vec<McResult>> {
    let size = net.window();
    let mut out = Vec::with_capacity(images.len());
    for (chunk_ids, chunk) in ids.chunks(batch.max(1)).zip(images.chunks(batch.max(1))) {
        let samples = net.samples(chunk, passes, rng)?;
        for (id, runs) in chunk_ids.iter().zip(&samples) {
            let passes = runs.len();
            let n = size * size;
            let mut mean = vec![0f32; n];
            for r in runs {
                for (m, v) in mean.iter_mut().zip(r) {
                    *m += v / passes as f32;
                }
            }
            let mean_mask: Vec<u8> = mean.iter().map(|&p| (p > 0.5) as u8).collect();
            let entropy_map: Vec<f32> = mean.iter().map(|&p| binary_entropy(p)).collect();
            let agreement: f64 = runs
                .iter()
                .map(|r| {
                    let m: Vec<u8> = r.iter().map(|&p| (p > 0.5) as u8).collect();
                    dice(&m, &mean_mask)
                })
                .sum::<f64>()
                / passes as f64;
            out.push(McResult {
                scores: PatchUncertainty {
                    patch: id.clone(),
                    disagreement: 1.0 - agreement,
                    entropy: entropy_map.iter().map(|&e| e as f64).sum::<f64>() / n as f64,
                },
                entropy_map,
                mean_mask,
            });
        }
        progress(chunk.len());
    }
    Ok(out)
}

fn next_name(version: &DatasetVersion) -> String {
    (1..)
        .map(|i| format!("candidates-{i}"))
        .find(|n| !version.sets.contains_key(n))
        .unwrap()
}

/// The `hunt` verb.
pub struct Hunt;

impl super::Stage for Hunt {
    const VERB: &'static str = "hunt";
    type Params = HuntParams;
    type Report = HuntReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &HuntParams,
    ) -> Result<(Next, HuntReport)> {
        hunt(repo, head, version, params)
    }

    fn seed(params: &HuntParams) -> Option<u64> {
        Some(params.seed)
    }
}

/// The unannotated, unflagged patches of the model's window size that a run scores, in order
/// (a seeded sample of them with `sample`), and the random stream after sampling.
fn candidates(
    version: &DatasetVersion,
    params: &HuntParams,
    size: usize,
) -> Result<(Vec<String>, ChaCha8Rng)> {
    anyhow::ensure!(params.passes >= 2, "--passes must be at least 2");
    anyhow::ensure!(params.top > 0, "--top must be positive");
    let annotated = version.current_masks();
    let flagged = version.flagged_patches(&params.exclude)?;
    let mut ids: Vec<String> = version
        .all_patches()
        .filter(|(s, p)| {
            s.tile == size && !annotated.contains_key(p.id.as_str()) && !flagged.contains(&p.id)
        })
        .map(|(_, p)| p.id.clone())
        .collect();
    if ids.is_empty() {
        bail!("no unannotated {size}×{size} patches left to hunt in");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    if let Some(n) = params.sample {
        if n < ids.len() {
            ids.shuffle(&mut rng);
            ids.truncate(n);
            ids.sort();
        }
    }
    Ok((ids, rng))
}

/// The score that ranks candidates.
fn key(params: &HuntParams, u: &PatchUncertainty) -> f64 {
    match params.score {
        Score::Disagreement => u.disagreement,
        Score::Entropy => u.entropy,
    }
}

/// Highest score first, then patch id: the order of the candidate set.
fn rank(params: &HuntParams, a: &PatchUncertainty, b: &PatchUncertainty) -> std::cmp::Ordering {
    key(params, b)
        .total_cmp(&key(params, a))
        .then(a.patch.cmp(&b.patch))
}

/// The `params.top` most uncertain of `ids`, which start at batch `first_batch` of the run;
/// `rng` is the run's one stream (without `batch_streams`).
fn score(
    repo: &Repo,
    version: &DatasetVersion,
    net: &SegmentationModel,
    params: &HuntParams,
    ids: &[String],
    first_batch: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<McResult>> {
    let pb = crate::progress::bar(ids.len() as u64, "hunt", false);
    let batch = params.batch.max(1);
    // In chunks, so memory holds one chunk of images and maps at a time; with a stream per
    // batch the chunks hold whole batches, so each batch is the same wherever the run starts.
    let chunk = if params.batch_streams {
        batch * (256 / batch).max(1)
    } else {
        256
    };
    let mut results: Vec<McResult> = Vec::with_capacity(params.top + chunk);
    for (c, part) in ids.chunks(chunk).enumerate() {
        let images = load_images(&repo.store, version, part)?;
        let mut r = if params.batch_streams {
            let mut out = Vec::with_capacity(part.len());
            for (k, (b_ids, b_images)) in part.chunks(batch).zip(images.chunks(batch)).enumerate() {
                let mut stream = ChaCha8Rng::seed_from_u64(params.seed);
                stream.set_stream((first_batch + c * chunk / batch + k) as u64 + 1);
                out.extend(mc_dropout(
                    net,
                    b_ids,
                    b_images,
                    params.passes,
                    batch,
                    &mut stream,
                    |n| pb.inc(n as u64),
                )?);
            }
            out
        } else {
            mc_dropout(net, part, &images, params.passes, batch, rng, |n| {
                pb.inc(n as u64)
            })?
        };
        // Keep only what can still make the top list.
        results.append(&mut r);
        results.sort_by(|a, b| rank(params, &a.scores, &b.scores));
        results.truncate(params.top);
    }
    pb.finish_and_clear();
    Ok(results)
}

/// One pick with its stored uncertainty map and mean-prediction mask.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pick {
    scores: PatchUncertainty,
    uncertainty: ObjectId,
    prediction: ObjectId,
}

/// Stores each result's entropy map and mean mask.
fn store_picks(repo: &Repo, results: Vec<McResult>) -> Result<Vec<Pick>> {
    results
        .into_iter()
        .map(|r| {
            let bytes: Vec<u8> = r.entropy_map.iter().flat_map(|v| v.to_le_bytes()).collect();
            let (u, _) = repo.store.put(Kind::Matrix, Filter::Shuffle(4), &bytes)?;
            let (p, _) = repo.store.put(Kind::Mask, Filter::None, &r.mean_mask)?;
            Ok(Pick {
                scores: r.scores,
                uncertainty: u,
                prediction: p,
            })
        })
        .collect()
}

pub fn hunt(
    repo: &Repo,
    _head: CommitId,
    version: DatasetVersion,
    params: &HuntParams,
) -> Result<(Next, HuntReport)> {
    let started = Instant::now();
    let m = version.model(&params.model)?.clone();
    let net = SegmentationModel::load(&repo.store, &m)?;
    let (ids, mut rng) = candidates(&version, params, net.window())?;
    let results = score(repo, &version, &net, params, &ids, 0, &mut rng)?;
    let picks = store_picks(repo, results)?;
    finish(repo, version, params, &m, picks, ids.len(), started)
}

/// The candidate set of `picks` (the run's top, in rank order) as the next version.
fn finish(
    repo: &Repo,
    mut version: DatasetVersion,
    params: &HuntParams,
    m: &crate::version::ModelManifest,
    picks: Vec<Pick>,
    scored: usize,
    started: Instant,
) -> Result<(Next, HuntReport)> {
    let seconds = started.elapsed().as_secs_f64();
    let name = params.name.clone().unwrap_or_else(|| next_name(&version));
    let mut uncertainty: BTreeMap<String, ObjectId> = BTreeMap::new();
    let mut prediction: BTreeMap<String, ObjectId> = BTreeMap::new();
    for p in &picks {
        uncertainty.insert(p.scores.patch.clone(), p.uncertainty);
        prediction.insert(p.scores.patch.clone(), p.prediction);
    }
    let top: Vec<PatchUncertainty> = picks.into_iter().map(|p| p.scores).collect();
    let mut extra = BTreeMap::new();
    extra.insert("model".into(), serde_json::json!(params.model));
    extra.insert(
        "checkpoint".into(),
        serde_json::json!(m.checkpoint.to_hex()),
    );
    extra.insert("scored".into(), serde_json::json!(scored));
    extra.insert("uncertainty".into(), serde_json::to_value(&top)?);
    let set = PatchSet {
        name: name.clone(),
        method: format!(
            "mc-dropout-{}",
            serde_json::to_value(params.score)?.as_str().unwrap_or("")
        ),
        params: serde_json::to_value(params)?,
        patches: top.iter().map(|t| t.patch.clone()).collect(),
        scores: top.iter().map(|t| key(params, t)).collect(),
        extra,
        objects: BTreeMap::from([
            ("uncertainty".to_string(), uncertainty),
            ("prediction".to_string(), prediction),
        ]),
    };
    version.sets.insert(name.clone(), set);
    let summary = format!(
        "hunt {name}: {} MC-dropout passes of {} over {} unannotated patches, top {} by {:?} (max {:.3})",
        params.passes,
        params.model,
        scored,
        top.len(),
        params.score,
        version.sets[&name].scores.first().copied().unwrap_or(0.0)
    );
    let mut record = <Hunt as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert(format!("sets/{name}"), format!("{} patches", top.len()));
    record
        .timings_ms
        .insert("hunt".into(), (seconds * 1000.0) as u64);
    let report = HuntReport {
        set: name,
        scored,
        top,
        patches_per_second: scored as f64 / seconds.max(1e-9),
    };
    Ok((Some((version, record)), report))
}

/// A shard's part of a hunt: its top picks (objects stored) and how many patches it scored.
#[derive(Serialize, Deserialize)]
struct HuntShard {
    scored: usize,
    picks: Vec<Pick>,
}

impl super::shard::Sharded for Hunt {
    fn run_shard(
        repo: &Repo,
        version: &DatasetVersion,
        params: &HuntParams,
        spec: super::shard::ShardSpec,
    ) -> Result<(Vec<ObjectId>, serde_json::Value)> {
        anyhow::ensure!(
            params.batch_streams,
            "hunt shards need --batch-streams: without it every batch's dropout masks come from one random stream across all patches, which a shard cannot join midway"
        );
        let m = version.model(&params.model)?.clone();
        let net = SegmentationModel::load(&repo.store, &m)?;
        let (ids, mut rng) = candidates(version, params, net.window())?;
        // Shards take whole batches, so every batch has the stream it has in one process.
        let batch = params.batch.max(1);
        let batches = spec.slice(ids.len().div_ceil(batch));
        let mine =
            &ids[(batches.start * batch).min(ids.len())..(batches.end * batch).min(ids.len())];
        let results = score(repo, version, &net, params, mine, batches.start, &mut rng)?;
        let picks = store_picks(repo, results)?;
        let objects = picks
            .iter()
            .flat_map(|p| [p.uncertainty, p.prediction])
            .collect();
        let part = HuntShard {
            scored: mine.len(),
            picks,
        };
        Ok((objects, serde_json::to_value(part)?))
    }

    fn gather(
        repo: &Repo,
        _head: CommitId,
        version: DatasetVersion,
        params: &HuntParams,
        results: &[serde_json::Value],
    ) -> Result<(Next, HuntReport)> {
        let started = Instant::now();
        let m = version.model(&params.model)?.clone();
        let (mut scored, mut picks) = (0, Vec::new());
        for r in results {
            let part: HuntShard = super::shard::result(<Hunt as super::Stage>::VERB, r)?;
            scored += part.scored;
            picks.extend(part.picks);
        }
        picks.sort_by(|a, b| rank(params, &a.scores, &b.scores));
        picks.truncate(params.top);
        finish(repo, version, params, &m, picks, scored, started)
    }
}
