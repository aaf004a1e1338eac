//! `train`: a TransUNet-style segmenter fine-tuned on annotated patches, from a pretrained MAE
//! encoder (M0) or from an earlier segmenter (M1, M2, …).
//!
//! Fine-tuning an earlier segmenter on a few new masks would forget what it learnt from the
//! old ones; so when the parent was trained on annotations that are still in the training set,
//! each sample of a batch is drawn from the new annotations with probability `new_weight` and
//! from the old ones otherwise (balanced sampling), instead of plain epochs over the union.

use super::Next;
use crate::history::CommitId;
use crate::nn::data::{augment, normalize_patch};
use crate::nn::segmenter::{Segmenter, SegmenterConfig};
use crate::nn::train::{AdamW, TrainConfig};
use crate::nn::{checkpoint, vit::VitConfig};
use crate::repo::Repo;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub name: String,
    /// A pretrained MAE (its encoder initialises the segmenter), an earlier segmenter
    /// (fine-tuning), or `none` (random initialisation with `preset`).
    pub from: String,
    /// Encoder preset when `from` is `none`.
    pub preset: String,
    /// Sets whose annotated patches are trained on; empty = every annotated patch.
    pub sets: Vec<String>,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
    /// Share of each batch drawn from annotations the parent model did not see (fine-tuning).
    pub new_weight: f64,
    /// Annotation round used only for validation, never for training.
    pub validation: String,
    /// Stop after this many steps (quick runs); None = all epochs.
    pub max_steps: Option<u64>,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            name: "M0".into(),
            from: "mae".into(),
            preset: "tiny".into(),
            sets: Vec::new(),
            epochs: 40,
            batch: 8,
            lr: 1e-3,
            seed: 0,
            new_weight: 0.5,
            validation: "validation".into(),
            max_steps: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub name: String,
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
}

/// An annotated patch in memory: normalised image and 0/1 mask as f32.
pub struct Example {
    pub id: String,
    pub image: Vec<f32>,
    pub mask: Vec<f32>,
}

/// The segmenter a model manifest describes, with its weights.
pub fn load_segmenter(store: &Store, model: &ModelManifest, dev: &Device) -> Result<Segmenter> {
    if model.kind != "segmenter" {
        bail!(
            "model {} is a {} model, not a segmenter: train one with `biodc train --name M0`",
            model.name,
            model.kind
        );
    }
    let cfg: SegmenterConfig = serde_json::from_value(model.architecture["biodc"].clone())
        .with_context(|| format!("model {} has no biodc architecture record", model.name))?;
    let net = Segmenter::zeroed(&cfg, dev)?;
    net.params.load(&checkpoint::from_safetensors(
        &store.get(&model.checkpoint)?,
        dev,
    )?)?;
    Ok(net)
}

/// The model `name` of `version`, with a helpful error.
pub fn model<'a>(version: &'a DatasetVersion, name: &str) -> Result<&'a ModelManifest> {
    version.models.get(name).with_context(|| {
        let known: Vec<&str> = version.models.keys().map(String::as_str).collect();
        format!(
            "no model named {name:?} in this version (models: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )
    })
}

/// Normalised images of `ids` (read in parallel).
pub fn load_images(
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
) -> Result<Vec<Vec<f32>>> {
    ids.par_iter()
        .map(|id| {
            let (_, plane) = super::export::patch_plane(store, version, id)?;
            Ok(normalize_patch(&plane.to_f32()))
        })
        .collect()
}

/// The current masks of `ids` as 0/1 bytes.
pub fn load_masks(store: &Store, version: &DatasetVersion, ids: &[String]) -> Result<Vec<Vec<u8>>> {
    let current = super::annotate::current_masks(version);
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
    let current = super::annotate::current_masks(version);
    let wanted: Option<BTreeSet<String>> = if sets.is_empty() {
        None
    } else {
        let mut w = BTreeSet::new();
        for s in sets {
            w.extend(super::export::set_members(version, s)?);
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

/// Patches whose current mask came in `round`.
pub fn round_ids(version: &DatasetVersion, round: &str) -> Vec<String> {
    super::annotate::current_masks(version)
        .into_iter()
        .filter(|(_, a)| a.round == round)
        .map(|(id, _)| id.to_string())
        .collect()
}

pub use crate::pixel::dice;

/// Predicted 0/1 masks of normalised images, `batch` at a time, dropout off.
pub fn predict_masks(
    net: &Segmenter,
    images: &[Vec<f32>],
    size: usize,
    batch: usize,
) -> Result<Vec<Vec<u8>>> {
    let dev = net.device();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let x = crate::nn::data::batch(chunk, size, &dev)?;
        for p in net.predict(&x)? {
            out.push(p.iter().map(|&v| (v > 0.5) as u8).collect());
        }
    }
    Ok(out)
}

/// Per-patch Dice of `net` on annotated patches `ids`.
pub fn evaluate(
    net: &Segmenter,
    store: &Store,
    version: &DatasetVersion,
    ids: &[String],
    size: usize,
) -> Result<Vec<f64>> {
    let images = load_images(store, version, ids)?;
    let masks = load_masks(store, version, ids)?;
    let pred = predict_masks(net, &images, size, 16)?;
    Ok(pred.iter().zip(&masks).map(|(p, m)| dice(p, m)).collect())
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
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
        params.batch > 0 && params.epochs > 0,
        "--batch and --epochs must be positive"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&params.new_weight),
        "--new-weight {} must be in [0, 1]",
        params.new_weight
    );
    let size = version.meta.patch_size;
    let dev = Device::Cpu;
    let ids = training_ids(&version, &params.sets, &params.validation)?;
    if let Some(id) = ids
        .iter()
        .find(|id| version.patch(id).is_some_and(|(s, _)| s.tile != size))
    {
        bail!("patch {id} is not {size}×{size}: the segmenter trains on one patch size");
    }

    // Initialise: from an MAE's encoder, an earlier segmenter, or random weights.
    let (net, parent, parent_ids) = match params.from.as_str() {
        "none" => {
            let enc = VitConfig::by_name(&params.preset)?.with_image_size(size)?;
            let net = Segmenter::new(&SegmenterConfig::around(enc), params.seed, &dev)?;
            (net, None, BTreeSet::new())
        }
        from => {
            let m = model(&version, from)?;
            let parent = Some(format!("{}@{}", m.name, m.checkpoint.to_hex()));
            match m.kind.as_str() {
                "mae" => {
                    let mae_cfg: crate::nn::mae::MaeConfig =
                        serde_json::from_value(m.architecture["biodc"].clone())
                            .with_context(|| format!("model {from} has no architecture record"))?;
                    let enc = mae_cfg.encoder.with_image_size(size)?;
                    let net = Segmenter::new(&SegmenterConfig::around(enc), params.seed, &dev)?;
                    let tensors =
                        checkpoint::from_safetensors(&repo.store.get(&m.checkpoint)?, &dev)?;
                    net.load_encoder(&tensors)?;
                    (net, parent, BTreeSet::new())
                }
                "segmenter" => {
                    let net = load_segmenter(&repo.store, m, &dev)?;
                    let seen: BTreeSet<String> = m.training["patches"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    (net, parent, seen)
                }
                other => bail!("cannot train a segmenter from a {other} model"),
            }
        }
    };
    if net.cfg.encoder.image_size != size {
        bail!(
            "model {} takes {}×{} patches, this version's are {size}×{size}",
            params.from,
            net.cfg.encoder.image_size,
            net.cfg.encoder.image_size
        );
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
    if balanced {
        for (key, set) in [("parent_old", &old), ("parent_new", &new)] {
            let d = evaluate(&net, &repo.store, &version, &ids_of(set), size)?;
            dice_by.insert(key.to_string(), mean(&d));
        }
    }

    let per_epoch = examples.len().div_ceil(params.batch) as u64;
    let total = (per_epoch * params.epochs as u64).min(params.max_steps.unwrap_or(u64::MAX));
    let mut opt = AdamW::new(&net.params, TrainConfig::new(params.lr, total))?;
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    rng.set_stream(1);
    let pb = crate::progress::bar(total, "train", false);
    let log_every = (total / 100).max(1);
    let (mut curve, mut window) = (Vec::new(), Vec::new());
    let mut perm: Vec<usize> = Vec::new();
    let train_started = Instant::now();
    while opt.step < total {
        let picks: Vec<usize> = if balanced {
            (0..params.batch)
                .map(|_| {
                    let pool = if rng.random_bool(params.new_weight) {
                        &new
                    } else {
                        &old
                    };
                    pool[rng.random_range(0..pool.len())]
                })
                .collect()
        } else {
            let at = ((opt.step % per_epoch) as usize) * params.batch;
            if at == 0 {
                perm = (0..examples.len()).collect();
                perm.shuffle(&mut rng);
            }
            perm[at..(at + params.batch).min(perm.len())].to_vec()
        };
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &i in &picks {
            let (x, y) = augment(&examples[i].image, &examples[i].mask, size, &mut rng);
            xs.push(x);
            ys.push(y);
        }
        let x = crate::nn::data::batch(&xs, size, &dev)?;
        let y = crate::nn::data::batch(&ys, size, &dev)?;
        let loss = net.loss(&x, &y, Some(&mut rng))?;
        opt.update(&net.params, &loss.backward()?)?;
        let l = loss.to_scalar::<f32>()?;
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
    let train_seconds = train_started.elapsed().as_secs_f64();

    // Dice on what it was trained on, per training set, and on the validation round.
    let train_dice = evaluate(&net, &repo.store, &version, &ids, size)?;
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
    let val = round_ids(&version, &params.validation);
    if !val.is_empty() {
        dice_by.insert(
            "validation".to_string(),
            mean(&evaluate(&net, &repo.store, &version, &val, size)?),
        );
    }

    let weights = checkpoint::to_safetensors(
        &net.params
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect(),
    )?;
    let (ckpt, _) = repo
        .store
        .put(Kind::Checkpoint, Filter::Shuffle(4), &weights)?;
    let metrics: BTreeMap<String, f64> = dice_by
        .iter()
        .map(|(k, v)| (format!("dice_{k}"), *v))
        .collect();
    let manifest = ModelManifest {
        name: params.name.clone(),
        kind: "segmenter".into(),
        architecture: net.cfg.config_json(),
        checkpoint: ckpt,
        parent: parent.clone(),
        training: serde_json::json!({
            "params": params,
            "version": head.to_string(),
            "patches": ids,
            "old": old.len(),
            "new": new.len(),
            "balanced": balanced,
            "steps": opt.step,
        }),
        loss_curve: curve,
        metrics,
    };
    version.models.insert(params.name.clone(), manifest);
    let seconds = started.elapsed().as_secs_f64();
    let dice_line: Vec<String> = dice_by.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    let summary = format!(
        "train {}: segmenter from {} on {} annotated patches{}, {} steps; Dice {}",
        params.name,
        params.from,
        ids.len(),
        if balanced {
            format!(" ({} old, {} new, balanced)", old.len(), new.len())
        } else {
            String::new()
        },
        opt.step,
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
        steps: opt.step,
        examples: ids.len(),
        old: old.len(),
        new: new.len(),
        checkpoint: ckpt.to_hex(),
        dice: dice_by,
        images_per_second: (opt.step as f64 * params.batch as f64) / train_seconds.max(1e-9),
        seconds,
    };
    Ok((Some((version, record)), report))
}
