//! `train`: a segmentation model on annotated patches — a U-Net from scratch (the default), a
//! TransUNet from a pretrained MAE encoder, or a pixel forest on the filter bank — or a model
//! fine-tuned from an earlier one (M1, M2, …).
//!
//! Networks train for a number of optimiser steps, not epochs: an epoch of seven patches is one
//! step, and a default of 40 epochs left the network where it started (docs/BENCHMARKS.md).
//! Each step draws `batch` random crops of the annotated patches (random position, one of the 8
//! flips/rotations, intensity gain and offset), so ten patches give thousands of different
//! examples. The run reports whether it converged: the training loss stopped falling and the
//! model segments its own training patches.
//!
//! Fine-tuning an earlier model on a few new masks would forget what it learnt from the old
//! ones; so when the parent was trained on annotations that are still in the training set,
//! each sample of a batch is drawn from the new annotations with probability `new_weight` and
//! from the old ones otherwise (balanced sampling), instead of plain epochs over the union.

mod convergence;
mod fit;

pub use convergence::Convergence;
use fit::{fit_forest, start, train_network, Start};

use super::Next;
use crate::history::CommitId;
use crate::nn::checkpoint;
use crate::repo::Repo;
use crate::segmentation::{
    evaluate, load_images, load_masks, mean, Example, Predictor, SegmentationModel,
};
use crate::store::{Filter, Kind};
use crate::version::{DatasetVersion, Inference, ModelManifest};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// What kind of model `train` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A plain U-Net (16–128 channels, group norm), random initialisation.
    Unet,
    /// The pretrained ViT encoder with a CNN decoder (`--from mae`).
    Transunet,
    /// A random forest on 41 filter responses per pixel (ilastik's pixel classification).
    Forest,
}

/// Records written before `kind` existed trained a TransUNet.
fn legacy_kind() -> ModelKind {
    ModelKind::Transunet
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub name: String,
    #[serde(default = "legacy_kind")]
    pub kind: ModelKind,
    /// A pretrained MAE (its encoder initialises a TransUNet), an earlier model of the same
    /// kind (fine-tuning), or `none` (fresh weights; `preset` sizes a TransUNet's encoder).
    pub from: String,
    /// Encoder preset of a TransUNet when `from` is `none`.
    pub preset: String,
    /// Sets whose annotated patches are trained on; empty = every annotated patch.
    pub sets: Vec<String>,
    /// Optimiser steps. None: `epochs` passes over the patches (how records before steps
    /// existed trained).
    #[serde(default)]
    pub steps: Option<u64>,
    pub epochs: usize,
    pub batch: usize,
    /// Side of the random training crops of a U-Net (clipped to the patch size).
    #[serde(default)]
    pub crop: Option<usize>,
    pub lr: f64,
    pub seed: u64,
    /// Share of each batch drawn from annotations the parent model did not see (fine-tuning).
    pub new_weight: f64,
    /// Annotation round used only for validation, never for training.
    pub validation: String,
    /// Stop after this many steps (quick runs); None = the whole schedule.
    pub max_steps: Option<u64>,
    /// Apply the network averaged over flips of its input (recorded in the model; a forest
    /// ignores it). Records from before it existed: off.
    #[serde(default)]
    pub flips: bool,
    /// Probability above which a pixel is foreground. Records from before it: 0.5.
    #[serde(default = "half")]
    pub threshold: f32,
}

fn half() -> f32 {
    0.5
}

impl TrainParams {
    /// How the trained model will be applied.
    pub fn inference(&self) -> Inference {
        Inference {
            flips: self.flips && self.kind != ModelKind::Forest,
            threshold: self.threshold,
        }
    }
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            name: "M0".into(),
            kind: ModelKind::Unet,
            from: "none".into(),
            preset: "tiny".into(),
            sets: Vec::new(),
            steps: Some(DEFAULT_STEPS),
            epochs: 40,
            batch: 8,
            crop: Some(128),
            lr: 1e-3,
            seed: 0,
            new_weight: 0.5,
            validation: "validation".into(),
            max_steps: None,
            flips: true,
            threshold: 0.5,
        }
    }
}

/// Default optimiser steps of a network (see docs/BENCHMARKS.md for how it was chosen).
pub const DEFAULT_STEPS: u64 = 800;

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub name: String,
    pub kind: ModelKind,
    pub steps: u64,
    pub examples: usize,
    /// Examples the parent model was trained on / new ones (fine-tuning only).
    pub old: usize,
    pub new: usize,
    pub checkpoint: String,
    /// Mean per-patch Dice by evaluation group (`train`, `validation`, `set:<name>`).
    pub dice: BTreeMap<String, f64>,
    pub images_per_second: f64,
    pub seconds: f64,
    /// Whether training converged, and why (or why not).
    pub convergence: Convergence,
}

/// Annotated patches used for training: those in `sets` (all when empty), never those whose
/// current mask came in the `validation` round. Sorted by id.
pub fn training_ids(
    version: &DatasetVersion,
    sets: &[String],
    validation: &str,
) -> Result<Vec<String>> {
    let current = version.current_masks();
    let wanted: Option<BTreeSet<String>> = if sets.is_empty() {
        None
    } else {
        let mut w = BTreeSet::new();
        for s in sets {
            w.extend(version.set_members(s)?);
        }
        Some(w)
    };
    let ids: Vec<String> = current
        .iter()
        .filter(|(id, a)| a.round != validation && wanted.as_ref().is_none_or(|w| w.contains(**id)))
        .map(|(id, _)| id.to_string())
        .collect();
    if ids.is_empty() {
        bail!(
            "no annotated patches to train on{}: export a set, annotate it (`biodc annotate DIR --round core`) and train again",
            if sets.is_empty() {
                String::new()
            } else {
                format!(" in sets {}", sets.join(","))
            }
        );
    }
    Ok(ids)
}

/// The `train` verb.
pub struct Train;

impl super::Stage for Train {
    const VERB: &'static str = "train";
    type Params = TrainParams;
    type Report = TrainReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &TrainParams,
    ) -> Result<(Next, TrainReport)> {
        train(repo, head, version, params)
    }

    fn seed(params: &TrainParams) -> Option<u64> {
        Some(params.seed)
    }
}

pub fn train(
    repo: &Repo,
    head: CommitId,
    mut version: DatasetVersion,
    params: &TrainParams,
) -> Result<(Next, TrainReport)> {
    let started = Instant::now();
    anyhow::ensure!(
        params.batch > 0 && params.epochs > 0 && params.steps != Some(0),
        "--batch, --epochs and --steps must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&params.new_weight),
        "--new-weight {} must be in [0, 1]",
        params.new_weight
    );
    let size = version.meta.patch_size;
    let ids = training_ids(&version, &params.sets, &params.validation)?;
    if let Some(id) = ids
        .iter()
        .find(|id| version.patch(id).is_some_and(|(s, _)| s.tile != size))
    {
        bail!("patch {id} is not {size}×{size}: models train on one patch size");
    }
    let (start, parent, parent_ids) = start(repo, &version, params, size)?;
    if let Start::Network(net) = &start {
        if net.window() != size {
            bail!(
                "model {} takes {}×{} patches, this version's are {size}×{size}",
                params.from,
                net.window(),
                net.window()
            );
        }
    }

    let images = load_images(&repo.store, &version, &ids)?;
    let masks = load_masks(&repo.store, &version, &ids)?;
    let examples: Vec<Example> = ids
        .iter()
        .zip(images)
        .zip(&masks)
        .map(|((id, image), m)| Example {
            id: id.clone(),
            image,
            mask: m.iter().map(|&v| (v != 0) as u8 as f32).collect(),
        })
        .collect();
    let (old, new): (Vec<usize>, Vec<usize>) =
        (0..examples.len()).partition(|&i| parent_ids.contains(&examples[i].id));
    let balanced = !old.is_empty() && !new.is_empty();
    let ids_of =
        |set: &[usize]| -> Vec<String> { set.iter().map(|&i| examples[i].id.clone()).collect() };
    // The parent's Dice on the old and new annotations, to show what fine-tuning changed.
    let mut dice_by = BTreeMap::new();
    if let (Start::Network(net), true) = (&start, balanced) {
        let parent_model = SegmentationModel {
            predictor: Predictor::Network(net.clone()),
            inference: params.inference(),
        };
        for (key, set) in [("parent_old", &old), ("parent_new", &new)] {
            let d = evaluate(&parent_model, &repo.store, &version, &ids_of(set))?;
            dice_by.insert(key.to_string(), mean(&d));
        }
    }

    let (trained_model, trained) = match start {
        Start::Network(net) => {
            let t = train_network(&net, &examples, (&old, &new), size, params)?;
            (Predictor::Network(net), Some(t))
        }
        Start::Forest => (
            Predictor::Forest(fit_forest(&examples, size, params.seed)?),
            None,
        ),
    };
    let trained_model = SegmentationModel {
        predictor: trained_model,
        inference: params.inference(),
    };
    let steps = trained.as_ref().map_or(0, |t| t.steps);
    let train_seconds = trained
        .as_ref()
        .map_or_else(|| started.elapsed().as_secs_f64(), |t| t.seconds);

    // Dice on what it was trained on, per training set, and on the validation round.
    let train_dice = evaluate(&trained_model, &repo.store, &version, &ids)?;
    let by_id: BTreeMap<&str, f64> = ids
        .iter()
        .map(String::as_str)
        .zip(train_dice.iter().copied())
        .collect();
    dice_by.insert("train".to_string(), mean(&train_dice));
    if balanced {
        let of = |set: &[usize]| {
            mean(
                &set.iter()
                    .map(|&i| by_id[examples[i].id.as_str()])
                    .collect::<Vec<_>>(),
            )
        };
        dice_by.insert("old".to_string(), of(&old));
        dice_by.insert("new".to_string(), of(&new));
    }
    for (name, set) in &version.sets {
        let d: Vec<f64> = set
            .patches
            .iter()
            .filter_map(|p| by_id.get(p.as_str()).copied())
            .collect();
        if !d.is_empty() {
            dice_by.insert(format!("set:{name}"), mean(&d));
        }
    }
    let val = version.round_ids(&params.validation);
    if !val.is_empty() {
        dice_by.insert(
            "validation".to_string(),
            mean(&evaluate(&trained_model, &repo.store, &version, &val)?),
        );
    }
    let convergence = match &trained {
        Some(t) => Convergence::judge(&t.losses, dice_by["train"]),
        None => Convergence::fitted(dice_by["train"]),
    };

    let (weights, architecture, kind) = match &trained_model.predictor {
        Predictor::Network(net) => (
            checkpoint::to_safetensors(
                &net.params()
                    .vars
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                    .collect(),
            )?,
            net.config_json(),
            "segmenter",
        ),
        Predictor::Forest(f) => (
            f.forest.to_bytes(),
            serde_json::to_value(f.architecture())?,
            "forest",
        ),
    };
    let (ckpt, _) = repo
        .store
        .put(Kind::Checkpoint, Filter::Shuffle(4), &weights)?;
    let metrics: BTreeMap<String, f64> = dice_by
        .iter()
        .map(|(k, v)| (format!("dice_{k}"), *v))
        .collect();
    let mut training = serde_json::json!({
        "params": params,
        "version": head.to_string(),
        "patches": ids,
        "old": old.len(),
        "new": new.len(),
        "balanced": balanced,
        "steps": steps,
    });
    // Records from before convergence was judged had no such field: keep them identical.
    if params.steps.is_some() || params.kind != ModelKind::Transunet {
        training["converged"] = serde_json::json!(convergence.converged);
        training["convergence"] = serde_json::json!(convergence.verdict);
    }
    let manifest = ModelManifest {
        name: params.name.clone(),
        kind: kind.into(),
        architecture,
        checkpoint: ckpt,
        parent: parent.clone(),
        training,
        loss_curve: trained
            .as_ref()
            .map(|t| t.curve.clone())
            .unwrap_or_default(),
        metrics,
        inference: trained_model.inference,
    };
    version.models.insert(params.name.clone(), manifest);
    let seconds = started.elapsed().as_secs_f64();
    let dice_line: Vec<String> = dice_by.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    let what = match params.kind {
        ModelKind::Unet => "U-Net",
        ModelKind::Transunet => "segmenter",
        ModelKind::Forest => "pixel forest",
    };
    let summary = format!(
        "train {}: {what} from {} on {} annotated patches{}, {} steps; Dice {}",
        params.name,
        params.from,
        ids.len(),
        if balanced {
            format!(" ({} old, {} new, balanced)", old.len(), new.len())
        } else {
            String::new()
        },
        steps,
        dice_line.join(", ")
    );
    let mut record = <Train as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert(format!("models/{}", params.name), ckpt.to_hex());
    if let Some(p) = &parent {
        record.inputs.insert("from".into(), p.clone());
    }
    record
        .timings_ms
        .insert("train".into(), (train_seconds * 1000.0) as u64);
    let report = TrainReport {
        name: params.name.clone(),
        kind: params.kind,
        steps,
        examples: ids.len(),
        old: old.len(),
        new: new.len(),
        checkpoint: ckpt.to_hex(),
        dice: dice_by,
        images_per_second: (steps as f64 * params.batch as f64) / train_seconds.max(1e-9),
        seconds,
        convergence,
    };
    Ok((Some((version, record)), report))
}
