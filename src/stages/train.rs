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

use super::Next;
use crate::history::CommitId;
use crate::nn::data::{augment, normalize_patch};
use crate::nn::segmenter::Segmenter;
use crate::nn::train::{AdamW, TrainConfig};
use crate::nn::transunet::{TransUnet, TransUnetConfig};
use crate::nn::unet::{UNet, UNetConfig};
use crate::nn::{checkpoint, vit::VitConfig};
use crate::pixel::{PixelClassifier, PixelClassifierParams};
use crate::repo::Repo;
use crate::segmentation::{predict_masks, PixelForest, SegmentationModel};
use crate::store::{Filter, Kind, Store};
use crate::version::{DatasetVersion, ModelManifest};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
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

/// Did a training run converge? The loss made at least 90 % of its descent before the last
/// fifth of the steps (a plateau: the mean loss over the last fifth fell from the fifth before
/// by less than a tenth of its fall since the first fifth), and the model segments its own
/// training patches (Dice ≥ 0.5: it left its starting point — a stuck model has a flat loss too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    pub converged: bool,
    /// Mean training loss over the first, the second-last and the last fifth of the steps.
    pub loss_first: f64,
    pub loss_before: f64,
    pub loss_last: f64,
    pub train_dice: f64,
    pub verdict: String,
}

impl Convergence {
    /// Judges a run from the loss of every step and the Dice on its training patches.
    pub fn judge(losses: &[f32], train_dice: f64) -> Convergence {
        let n = losses.len();
        let fifth = (n / 5).max(1);
        let mean = |s: &[f32]| s.iter().map(|&v| v as f64).sum::<f64>() / s.len().max(1) as f64;
        let first = mean(&losses[..fifth.min(n)]);
        let last = mean(&losses[n.saturating_sub(fifth)..]);
        let before = mean(&losses[n.saturating_sub(2 * fifth)..n.saturating_sub(fifth)]);
        let plateau = n >= 10 && before - last <= 0.1 * (first - last).max(0.0);
        let fits = train_dice >= 0.5;
        let verdict = match (plateau, fits) {
            (true, true) => format!(
                "converged: loss {first:.3} → {before:.3} → {last:.3} (first, second-last, last fifth of the steps), Dice {train_dice:.3} on its training patches"
            ),
            (false, _) if n < 10 => {
                format!("not converged: only {n} steps; train longer with --steps")
            }
            (false, _) => format!(
                "not converged: loss still falling ({first:.3} → {before:.3} → {last:.3} over the first, second-last and last fifth of the steps); train longer with --steps"
            ),
            (true, false) => format!(
                "not converged: the loss stopped falling ({first:.3} → {last:.3}) but the model segments its own training patches at Dice {train_dice:.3}; try a higher --lr or more --steps"
            ),
        };
        Convergence {
            converged: plateau && fits,
            loss_first: first,
            loss_before: before,
            loss_last: last,
            train_dice,
            verdict,
        }
    }

    /// A forest is fitted, not trained by steps: it converged when it fits its patches.
    fn fitted(train_dice: f64) -> Convergence {
        let converged = train_dice >= 0.5;
        Convergence {
            converged,
            loss_first: f64::NAN,
            loss_before: f64::NAN,
            loss_last: f64::NAN,
            train_dice,
            verdict: if converged {
                format!("fitted: Dice {train_dice:.3} on its training patches")
            } else {
                format!("the forest does not fit its training patches (Dice {train_dice:.3})")
            },
        }
    }
}

/// An annotated patch in memory: normalised image and 0/1 mask as f32.
pub struct Example {
    pub id: String,
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// The network a model manifest describes, with its weights.
pub fn load_segmenter(store: &Store, model: &ModelManifest, dev: &Device) -> Result<Segmenter> {
    if model.kind != "segmenter" {
        bail!(
            "model {} is a {} model, not a segmentation network: train one with `biodc train --name M0`",
            model.name,
            model.kind
        );
    }
    Segmenter::load(&model.architecture, &store.get(&model.checkpoint)?, dev)
        .with_context(|| format!("loading model {}", model.name))
}

/// Normalised images of `ids` (read in parallel).
pub fn load_images(
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
) -> Result<Vec<Vec<f32>>> {
    ids.par_iter()
        .map(|id| {
            let (_, plane) = version.patch_plane(store, id)?;
            Ok(normalize_patch(&plane.to_f32()))
        })
        .collect()
}

/// The current masks of `ids` as 0/1 bytes.
pub fn load_masks(store: &Store, version: &DatasetVersion, ids: &[String]) -> Result<Vec<Vec<u8>>> {
    let current = version.current_masks();
    ids.par_iter()
        .map(|id| {
            let a = current
                .get(id.as_str())
                .with_context(|| format!("patch {id} has no mask"))?;
            store.get(&a.mask)
        })
        .collect()
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

pub use crate::pixel::dice;

/// Per-patch Dice of `model` on annotated patches `ids`.
pub fn evaluate(
    model: &SegmentationModel,
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
) -> Result<Vec<f64>> {
    let images = load_images(store, version, ids)?;
    let masks = load_masks(store, version, ids)?;
    let pred = predict_masks(model, &images, 16)?;
    Ok(pred.iter().zip(&masks).map(|(p, m)| dice(p, m)).collect())
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The model `train` starts from: a fresh or parent network, or a forest to fit.
enum Start {
    Network(Segmenter),
    Forest,
}

/// The starting model, its parent (`name@checkpoint`) and the patches the parent saw.
fn start(
    repo: &Repo,
    version: &DatasetVersion,
    params: &TrainParams,
    size: usize,
) -> Result<(Start, Option<String>, BTreeSet<String>)> {
    let dev = Device::Cpu;
    if params.from == "none" {
        let start = match params.kind {
            ModelKind::Forest => Start::Forest,
            ModelKind::Unet => {
                let cfg = UNetConfig::for_window(size);
                cfg.validate()
                    .with_context(|| format!("patches of {size}²"))?;
                Start::Network(Segmenter::UNet(UNet::new(&cfg, params.seed, &dev)?))
            }
            ModelKind::Transunet => {
                let enc = VitConfig::by_name(&params.preset)?.with_image_size(size)?;
                Start::Network(Segmenter::TransUnet(TransUnet::new(
                    &TransUnetConfig::around(enc),
                    params.seed,
                    &dev,
                )?))
            }
        };
        return Ok((start, None, BTreeSet::new()));
    }
    let m = version.model(&params.from)?;
    let parent = Some(format!("{}@{}", m.name, m.checkpoint.to_hex()));
    let seen = || -> BTreeSet<String> {
        m.training["patches"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    match (m.kind.as_str(), params.kind) {
        ("mae", ModelKind::Transunet) => {
            let mae_cfg: crate::nn::mae::MaeConfig =
                serde_json::from_value(m.architecture["biodc"].clone())
                    .with_context(|| format!("model {} has no architecture record", m.name))?;
            let enc = mae_cfg.encoder.with_image_size(size)?;
            let net = TransUnet::new(&TransUnetConfig::around(enc), params.seed, &dev)?;
            let tensors = checkpoint::from_safetensors(&repo.store.get(&m.checkpoint)?, &dev)?;
            net.load_encoder(&tensors)?;
            Ok((Start::Network(Segmenter::TransUnet(net)), parent, BTreeSet::new()))
        }
        ("mae", kind) => bail!(
            "a pretrained MAE initialises a TransUNet's encoder, not a {kind:?} model: use --kind transunet --from {}, or --from none",
            m.name
        ),
        ("segmenter", ModelKind::Unet | ModelKind::Transunet) => {
            let net = load_segmenter(&repo.store, m, &dev)?;
            let same = matches!(
                (&net, params.kind),
                (Segmenter::UNet(_), ModelKind::Unet)
                    | (Segmenter::TransUnet(_), ModelKind::Transunet)
            );
            if !same {
                bail!(
                    "model {} is a {}, not a {:?}: fine-tune with the same --kind",
                    m.name,
                    net.config_json()["model_type"].as_str().unwrap_or("network"),
                    params.kind
                );
            }
            Ok((Start::Network(net), parent, seen()))
        }
        // A forest is refitted on every annotation; its parent is recorded, not loaded.
        ("forest", ModelKind::Forest) => Ok((Start::Forest, parent, seen())),
        (kind, want) => bail!(
            "cannot train a {want:?} model from model {} (a {kind} model)",
            m.name
        ),
    }
}

/// Optimiser settings of a network: the MAE's for a TransUNet (as before `kind` existed);
/// Adam's usual β₂ and a light weight decay for a U-Net trained from scratch.
fn optimiser(net: &Segmenter, lr: f64, total: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(lr, total);
    if let Segmenter::UNet(_) = net {
        cfg.betas = (0.9, 0.999);
        cfg.weight_decay = 1e-4;
    }
    cfg
}

/// A random `crop`² window of a `size`² image and its mask.
fn random_crop(
    ex: &Example,
    size: usize,
    crop: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<f32>) {
    if crop >= size {
        return (ex.image.clone(), ex.mask.clone());
    }
    let y0 = rng.random_range(0..=size - crop);
    let x0 = rng.random_range(0..=size - crop);
    let cut = |v: &[f32]| -> Vec<f32> {
        (y0..y0 + crop)
            .flat_map(|y| v[y * size + x0..y * size + x0 + crop].iter().copied())
            .collect()
    };
    (cut(&ex.image), cut(&ex.mask))
}

/// What training a network produced.
struct Trained {
    steps: u64,
    losses: Vec<f32>,
    curve: Vec<(u64, f32)>,
    seconds: f64,
}

/// Trains `net` on `examples` with the schedule of `params`.
fn train_network(
    net: &Segmenter,
    examples: &[Example],
    (old, new): (&[usize], &[usize]),
    size: usize,
    params: &TrainParams,
) -> Result<Trained> {
    let balanced = !old.is_empty() && !new.is_empty();
    let per_epoch = examples.len().div_ceil(params.batch) as u64;
    let scheduled = params
        .steps
        .unwrap_or(per_epoch * params.epochs as u64)
        .max(1);
    let total = scheduled.min(params.max_steps.unwrap_or(u64::MAX));
    // The crop side: a multiple of what the network takes, at most the patch.
    let crop = match (net, params.crop) {
        (Segmenter::UNet(_), Some(c)) => {
            let m = net.multiple();
            (c.min(size) / m * m).max(m)
        }
        _ => size,
    };
    let mut opt = AdamW::new(net.params(), optimiser(net, params.lr, total))?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    rng.set_stream(1);
    let pb = crate::progress::bar(total, "train", false);
    let log_every = (total / 100).max(1);
    let (mut curve, mut window, mut losses) = (Vec::new(), Vec::new(), Vec::new());
    let mut perm: Vec<usize> = Vec::new();
    let started = Instant::now();
    let dev = net.device();
    while opt.step < total {
        let picks: Vec<usize> = if balanced {
            (0..params.batch)
                .map(|_| {
                    let pool = if rng.random_bool(params.new_weight) {
                        new
                    } else {
                        old
                    };
                    pool[rng.random_range(0..pool.len())]
                })
                .collect()
        } else if params.steps.is_some() {
            (0..params.batch)
                .map(|_| rng.random_range(0..examples.len()))
                .collect()
        } else {
            // Epochs (records from before steps existed): a shuffled pass at a time.
            let at = ((opt.step % per_epoch) as usize) * params.batch;
            if at == 0 {
                perm = (0..examples.len()).collect();
                perm.shuffle(&mut rng);
            }
            perm[at..(at + params.batch).min(perm.len())].to_vec()
        };
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &i in &picks {
            let (img, mask) = random_crop(&examples[i], size, crop, &mut rng);
            let (x, y) = augment(&img, &mask, crop, &mut rng);
            xs.push(x);
            ys.push(y);
        }
        let l = match net {
            // A U-Net on CPU: the hand-written pass (the same gradients, several times faster).
            Segmenter::UNet(unet) if dev.is_cpu() => {
                let (x, y): (Vec<f32>, Vec<f32>) = (xs.concat(), ys.concat());
                let (l, grads) = crate::nn::unet_step::loss_and_gradients(
                    unet,
                    &x,
                    &y,
                    (xs.len(), crop, crop),
                    &mut rng,
                )?;
                opt.update(net.params(), &grads)?;
                l
            }
            _ => {
                let x = crate::nn::data::batch(&xs, crop, &dev)?;
                let y = crate::nn::data::batch(&ys, crop, &dev)?;
                let loss = net.loss(&x, &y, Some(&mut rng))?;
                opt.update(net.params(), &loss.backward()?)?;
                loss.to_scalar::<f32>()?
            }
        };
        if !l.is_finite() {
            bail!(
                "training diverged at step {}: the loss is {l}; try a lower --lr",
                opt.step
            );
        }
        losses.push(l);
        window.push(l);
        if opt.step % log_every == 0 || opt.step == total {
            let m = window.iter().sum::<f32>() / window.len() as f32;
            curve.push((opt.step, m));
            window.clear();
            pb.set_message(format!("loss {m:.3}"));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(Trained {
        steps: opt.step,
        losses,
        curve,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Fits a pixel forest on `examples` (all `size`²).
fn fit_forest(examples: &[Example], size: usize, seed: u64) -> Result<PixelForest> {
    let images: Vec<Vec<f32>> = examples.iter().map(|e| e.image.clone()).collect();
    let labels: Vec<Vec<u8>> = examples
        .iter()
        .map(|e| e.mask.iter().map(|&v| (v > 0.5) as u8).collect())
        .collect();
    let params = PixelClassifierParams {
        seed,
        ..PixelClassifierParams::default()
    };
    let classifier = PixelClassifier::train(&images, &labels, size, size, &params)?;
    let pixels = (labels.len() * size * size).max(1);
    let foreground = labels.iter().flatten().filter(|&&v| v != 0).count() as f64 / pixels as f64;
    Ok(PixelForest {
        forest: classifier.forest,
        window: size,
        foreground,
    })
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
        let parent_model = SegmentationModel::Network(net.clone());
        for (key, set) in [("parent_old", &old), ("parent_new", &new)] {
            let d = evaluate(&parent_model, &repo.store, &version, &ids_of(set))?;
            dice_by.insert(key.to_string(), mean(&d));
        }
    }

    let (trained_model, trained) = match start {
        Start::Network(net) => {
            let t = train_network(&net, &examples, (&old, &new), size, params)?;
            (SegmentationModel::Network(net), Some(t))
        }
        Start::Forest => (
            SegmentationModel::Forest(fit_forest(&examples, size, params.seed)?),
            None,
        ),
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

    let (weights, architecture, kind) = match &trained_model {
        SegmentationModel::Network(net) => (
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
        SegmentationModel::Forest(f) => (
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
    let mut record = repo.stage_record(
        "train",
        serde_json::to_value(params)?,
        Some(params.seed),
        &summary,
    );
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

#[cfg(test)]
mod tests {
    use super::Convergence;

    #[test]
    fn convergence_verdicts() {
        // Fell from 1.5 to 0.2 and flattened: converged.
        let flat: Vec<f32> = (0..100)
            .map(|i| 0.2 + 1.3 * (-(i as f32) / 10.0).exp())
            .collect();
        assert!(Convergence::judge(&flat, 0.8).converged);
        // Still falling steadily: not converged.
        let falling: Vec<f32> = (0..100).map(|i| 1.5 - 0.012 * i as f32).collect();
        let c = Convergence::judge(&falling, 0.8);
        assert!(
            !c.converged && c.verdict.contains("still falling"),
            "{}",
            c.verdict
        );
        // Flat from the start, and the model does not fit: stuck, not converged.
        let stuck = vec![1.0f32; 100];
        let c = Convergence::judge(&stuck, 0.01);
        assert!(
            !c.converged && c.verdict.contains("stopped falling"),
            "{}",
            c.verdict
        );
        // Too short to tell.
        assert!(!Convergence::judge(&[1.0, 0.9], 0.9).converged);
    }
}
