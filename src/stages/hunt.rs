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
        }
    }
}

/// Uncertainty of one patch.
#[derive(Debug, Clone, Serialize)]
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

pub fn hunt(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &HuntParams,
) -> Result<(Next, HuntReport)> {
    let started = Instant::now();
    anyhow::ensure!(params.passes >= 2, "--passes must be at least 2");
    anyhow::ensure!(params.top > 0, "--top must be positive");
    let m = version.model(&params.model)?;
    let net = SegmentationModel::load(&repo.store, m)?;
    let annotated = version.current_masks();
    let flagged = version.flagged_patches(&params.exclude)?;
    let size = net.window();
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
    let pb = crate::progress::bar(ids.len() as u64, "hunt", false);
    let mut results = Vec::with_capacity(ids.len());
    // In chunks, so memory holds one chunk of images and maps at a time.
    for chunk in ids.chunks(256) {
        let images = load_images(&repo.store, &version, chunk)?;
        let mut r = mc_dropout(
            &net,
            chunk,
            &images,
            params.passes,
            params.batch,
            &mut rng,
            |n| pb.inc(n as u64),
        )?;
        let key = |x: &McResult| match params.score {
            Score::Disagreement => x.scores.disagreement,
            Score::Entropy => x.scores.entropy,
        };
        // Keep only what can still make the top list.
        results.append(&mut r);
        results.sort_by(|a, b| {
            key(b)
                .total_cmp(&key(a))
                .then(a.scores.patch.cmp(&b.scores.patch))
        });
        results.truncate(params.top);
    }
    pb.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let name = params.name.clone().unwrap_or_else(|| next_name(&version));
    let mut uncertainty: BTreeMap<String, ObjectId> = BTreeMap::new();
    let mut prediction: BTreeMap<String, ObjectId> = BTreeMap::new();
    for r in &results {
        let bytes: Vec<u8> = r.entropy_map.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (u, _) = repo.store.put(Kind::Matrix, Filter::Shuffle(4), &bytes)?;
        let (p, _) = repo.store.put(Kind::Mask, Filter::None, &r.mean_mask)?;
        uncertainty.insert(r.scores.patch.clone(), u);
        prediction.insert(r.scores.patch.clone(), p);
    }
    let top: Vec<PatchUncertainty> = results.iter().map(|r| r.scores.clone()).collect();
    let mut extra = BTreeMap::new();
    extra.insert("model".into(), serde_json::json!(params.model));
    extra.insert(
        "checkpoint".into(),
        serde_json::json!(m.checkpoint.to_hex()),
    );
    extra.insert("scored".into(), serde_json::json!(ids.len()));
    extra.insert("uncertainty".into(), serde_json::to_value(&top)?);
    let set = PatchSet {
        name: name.clone(),
        method: format!(
            "mc-dropout-{}",
            serde_json::to_value(params.score)?.as_str().unwrap_or("")
        ),
        params: serde_json::to_value(params)?,
        patches: top.iter().map(|t| t.patch.clone()).collect(),
        scores: top
            .iter()
            .map(|t| match params.score {
                Score::Disagreement => t.disagreement,
                Score::Entropy => t.entropy,
            })
            .collect(),
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
        ids.len(),
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
        scored: ids.len(),
        top,
        patches_per_second: ids.len() as f64 / seconds.max(1e-9),
    };
    Ok((Some((version, record)), report))
}
