//! `monitor`: quality of a deployed segmenter on stacks without ground truth, by reverse
//! classification accuracy (RCA).
//!
//! For each stack: segment it with the model; train a random-forest pixel classifier on the
//! stack's pixels labelled by that prediction (balanced sample over the whole stack); let the
//! forest segment every reference patch (the annotated core set), whose ground truth is known;
//! Dice against that truth. If the model's prediction was good, a classifier that imitates it
//! segments at least one similar reference patch well: the stack's RCA score is the best Dice
//! (the mean and the best-matching patch are kept too). Scores under the alarm threshold are
//! alarms in `monitor`, `status` and `diff`.

use super::Next;
use crate::history::CommitId;
use crate::pixel::{dice, normalise_together, PixelClassifier, PixelClassifierParams};
use crate::repo::Repo;
use crate::segmentation::SegmentationModel;
use crate::version::{DatasetVersion, RcaRecord, RCA_FILE};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Where `metrics/rca.jsonl` lives in a version.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorParams {
    pub model: String,
    /// Stack names to score; empty = every stack.
    pub stacks: Vec<String>,
    /// Set of annotated reference patches.
    pub reference: String,
    pub alarm: f64,
    pub seed: u64,
    /// The pixel classifier: trees, depth, pixels per class.
    pub classifier: PixelClassifierParams,
    /// Return each stack's predicted mask in the report (callers that compare with a truth);
    /// off by default, as a cohort's masks would all sit in memory.
    #[serde(skip)]
    pub keep_predictions: bool,
}

impl Default for MonitorParams {
    fn default() -> Self {
        MonitorParams {
            model: "M1".into(),
            stacks: Vec::new(),
            reference: "coreset".into(),
            alarm: 0.6,
            seed: 0,
            classifier: PixelClassifierParams::default(),
            keep_predictions: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorReport {
    /// This run's scores, worst first.
    pub scores: Vec<RcaRecord>,
    pub alarms: Vec<String>,
    pub seconds: f64,
    /// Stack → predicted mask (slices concatenated), with `keep_predictions`.
    #[serde(skip)]
    pub predictions: BTreeMap<String, Vec<u8>>,
}

/// RCA of one stack.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rca {
    pub best: f64,
    pub mean: f64,
    pub best_patch: usize,
}

/// RCA of a stack (`slices`, each `h`×`w` raw intensities) whose predicted masks are `pred`,
/// against `references` (raw image, true 0/1 mask; `size`×`size`). The stack and the reference
/// set are each intensity-normalised as a whole.
pub fn rca(
    slices: &[Vec<f32>],
    pred: &[Vec<u8>],
    h: usize,
    w: usize,
    references: &[(Vec<f32>, Vec<u8>)],
    size: usize,
    params: &PixelClassifierParams,
) -> Result<Rca> {
    if references.is_empty() {
        bail!("RCA needs at least one annotated reference patch");
    }
    let mut slices = slices.to_vec();
    normalise_together(&mut slices);
    let forest = PixelClassifier::train(&slices, pred, h, w, params)?;
    let mut images: Vec<Vec<f32>> = references.iter().map(|(img, _)| img.clone()).collect();
    normalise_together(&mut images);
    let dices: Vec<f64> = images
        .iter()
        .zip(references)
        .map(|(img, (_, truth))| dice(&forest.predict(img, size, size), truth))
        .collect();
    let (best_patch, best) = dices
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    Ok(Rca {
        best,
        mean: dices.iter().sum::<f64>() / dices.len() as f64,
        best_patch,
    })
}

/// The annotated patches of set `name` with some foreground, as RCA references: (ids, (raw
/// image, 0/1 truth), edge).
pub fn references(
    repo: &Repo,
    version: &DatasetVersion,
    name: &str,
) -> Result<(Vec<String>, Vec<(Vec<f32>, Vec<u8>)>, usize)> {
    let Some(set) = version.sets.get(name) else {
        bail!("no reference set {name:?}: RCA compares against annotated patches (e.g. --reference coreset)");
    };
    let current = version.current_masks();
    let ids: Vec<String> = set
        .patches
        .iter()
        .filter(|p| current.contains_key(p.as_str()))
        .cloned()
        .collect();
    if ids.is_empty() {
        bail!("set {name} has no annotated patch: annotate it first (`biodc annotate DIR --round core`)");
    }
    let masks = crate::segmentation::load_masks(&repo.store, version, &ids)?;
    let mut kept = Vec::with_capacity(ids.len());
    let mut refs = Vec::with_capacity(ids.len());
    let mut size = 0;
    for (id, m) in ids.iter().zip(masks) {
        // An empty reference scores Dice 1 against any classifier that predicts nothing, so
        // it would hide every failure behind a perfect RCA.
        if !m.iter().any(|&v| v != 0) {
            continue;
        }
        let (info, plane) = version.patch_plane(&repo.store, id)?;
        size = info.shape[1];
        kept.push(id.clone());
        refs.push((
            plane.to_f32(),
            m.into_iter().map(|v| (v != 0) as u8).collect(),
        ));
    }
    if kept.is_empty() {
        bail!("every annotated patch of set {name} has an empty mask: RCA needs references with foreground");
    }
    Ok((kept, refs, size))
}

/// The `monitor` verb.
pub struct Monitor;

impl super::Stage for Monitor {
    const VERB: &'static str = "monitor";
    type Params = MonitorParams;
    type Report = MonitorReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &MonitorParams,
    ) -> Result<(Next, MonitorReport)> {
        monitor(repo, head, version, params)
    }

    fn seed(params: &MonitorParams) -> Option<u64> {
        Some(params.seed)
    }
}

/// RCA lines of stacks `names` (in that order), each with run number `run`, and how many
/// reference patches scored them.
fn score_stacks(
    repo: &Repo,
    version: &DatasetVersion,
    params: &MonitorParams,
    names: &[String],
    run: u64,
    predictions: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(Vec<RcaRecord>, usize)> {
    let m = version.model(&params.model)?.clone();
    let net = SegmentationModel::load(&repo.store, &m)?;
    let (ref_ids, references, size) = references(repo, version, &params.reference)?;
    let forest = PixelClassifierParams {
        seed: params.seed,
        ..params.classifier.clone()
    };
    let pb = crate::progress::bar(names.len() as u64, "monitor", false);
    let mut scores = Vec::new();
    for name in names {
        let Some(stack) = version.stacks.get(name) else {
            bail!("no stack named {name:?} in this version");
        };
        let [_, h, w] = stack.shape;
        let slices = super::segment::stack_slices(&repo.store, version, stack)?;
        let pred = super::segment::segment_slices(&net, &slices, h, w)?;
        let r = rca(&slices, &pred, h, w, &references, size, &forest)?;
        let on: usize = pred
            .iter()
            .map(|p| p.iter().map(|&v| v as usize).sum::<usize>())
            .sum();
        scores.push(RcaRecord {
            stack: name.clone(),
            model: params.model.clone(),
            checkpoint: m.checkpoint.to_hex(),
            reference: params.reference.clone(),
            rca: r.best,
            mean_dice: r.mean,
            best_patch: ref_ids[r.best_patch].clone(),
            foreground: on as f64 / (h * w * slices.len()).max(1) as f64,
            alarm: r.best < params.alarm,
            threshold: params.alarm,
            run,
        });
        if params.keep_predictions {
            predictions.insert(name.clone(), pred.concat());
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((scores, ref_ids.len()))
}

/// The stacks a run scores, and its run number (one more than the version's last).
fn stacks_and_run(version: &DatasetVersion, params: &MonitorParams) -> Result<(Vec<String>, u64)> {
    let names: Vec<String> = if params.stacks.is_empty() {
        version.stacks.keys().cloned().collect()
    } else {
        params.stacks.clone()
    };
    let run = version
        .rca_lines()?
        .iter()
        .map(|l| l.run)
        .max()
        .unwrap_or(0)
        + 1;
    Ok((names, run))
}

pub fn monitor(
    repo: &Repo,
    _head: CommitId,
    version: DatasetVersion,
    params: &MonitorParams,
) -> Result<(Next, MonitorReport)> {
    let started = Instant::now();
    let (names, run) = stacks_and_run(&version, params)?;
    let mut predictions = BTreeMap::new();
    let (scores, reference_count) =
        score_stacks(repo, &version, params, &names, run, &mut predictions)?;
    finish(
        repo,
        version,
        params,
        &names,
        scores,
        reference_count,
        predictions,
        started,
    )
}

/// The version with this run's lines `scores` (of stacks `names`) in its RCA file.
#[allow(clippy::too_many_arguments)]
fn finish(
    repo: &Repo,
    mut version: DatasetVersion,
    params: &MonitorParams,
    names: &[String],
    mut scores: Vec<RcaRecord>,
    reference_count: usize,
    predictions: BTreeMap<String, Vec<u8>>,
    started: Instant,
) -> Result<(Next, MonitorReport)> {
    let earlier = version.rca_lines()?;
    // One line per (stack, model): this run's lines replace earlier ones of the same pair.
    let mut lines: Vec<RcaRecord> = earlier
        .into_iter()
        .filter(|l| !(l.model == params.model && names.contains(&l.stack)))
        .collect();
    lines.extend(scores.iter().cloned());
    lines.sort_by(|a, b| a.stack.cmp(&b.stack).then(a.model.cmp(&b.model)));
    let mut text = String::new();
    for l in &lines {
        text.push_str(&serde_json::to_string(l)?);
        text.push('\n');
    }
    version.other.insert(RCA_FILE.into(), text.into_bytes());
    scores.sort_by(|a, b| a.rca.total_cmp(&b.rca).then(a.stack.cmp(&b.stack)));
    let alarms: Vec<String> = scores
        .iter()
        .filter(|s| s.alarm)
        .map(|s| s.stack.clone())
        .collect();
    let mean = scores.iter().map(|s| s.rca).sum::<f64>() / scores.len().max(1) as f64;
    let summary = format!(
        "monitor: RCA of {} stacks with {} against {} ({} references): mean {mean:.3}, min {:.3}, {} under {}",
        scores.len(),
        params.model,
        params.reference,
        reference_count,
        scores.first().map_or(f64::NAN, |s| s.rca),
        alarms.len(),
        params.alarm
    );
    let mut record = <Monitor as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert(RCA_FILE.into(), format!("{} stacks", scores.len()));
    let seconds = started.elapsed().as_secs_f64();
    record
        .timings_ms
        .insert("monitor".into(), (seconds * 1000.0) as u64);
    Ok((
        Some((version, record)),
        MonitorReport {
            scores,
            alarms,
            seconds,
            predictions,
        },
    ))
}

impl super::shard::Sharded for Monitor {
    fn run_shard(
        repo: &Repo,
        version: &DatasetVersion,
        params: &MonitorParams,
        spec: super::shard::ShardSpec,
    ) -> Result<(Vec<crate::store::ObjectId>, serde_json::Value)> {
        let (names, run) = stacks_and_run(version, params)?;
        let mine = &names[spec.slice(names.len())];
        let (scores, _) = score_stacks(repo, version, params, mine, run, &mut BTreeMap::new())?;
        Ok((Vec::new(), serde_json::to_value(scores)?))
    }

    fn gather(
        repo: &Repo,
        _head: CommitId,
        version: DatasetVersion,
        params: &MonitorParams,
        results: &[serde_json::Value],
    ) -> Result<(Next, MonitorReport)> {
        let started = Instant::now();
        let (names, _) = stacks_and_run(&version, params)?;
        let mut scores: Vec<RcaRecord> = Vec::new();
        for r in results {
            scores.extend(super::shard::result::<Vec<RcaRecord>>(
                <Monitor as super::Stage>::VERB,
                r,
            )?);
        }
        let got: Vec<&String> = scores.iter().map(|s| &s.stack).collect();
        anyhow::ensure!(
            got.len() == names.len() && got.iter().zip(&names).all(|(a, b)| *a == b),
            "the monitor shards scored {} stacks, the run covers {}",
            got.len(),
            names.len()
        );
        // The shards do not report it; the references are a few annotated patches.
        let reference_count = references(repo, &version, &params.reference)?.0.len();
        finish(
            repo,
            version,
            params,
            &names,
            scores,
            reference_count,
            BTreeMap::new(),
            started,
        )
    }
}
