//! `pretrain`: a masked autoencoder trained self-supervised on every patch of HEAD.
//!
//! Checkpoints are written every `checkpoint_every` steps as store objects named by
//! `.biodc/pending/pretrain-<name>.json` (which `gc` keeps), so `--resume` continues a killed
//! run from its last checkpoint and reaches the same weights as an uninterrupted run. Nothing is
//! committed until the end: an interrupted run leaves HEAD unchanged.

use super::{patches::PatchList, Next};
use crate::history::CommitId;
use crate::nn::{checkpoint, data::batch, mae::MaeConfig, train::TrainConfig, train::Trainer};
use crate::repo::Repo;
use crate::store::{Filter, Kind, ObjectId};
use crate::version::{DatasetVersion, ModelManifest};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Patches kept out of training to measure held-out loss (at most this many).
const MAX_HELD_OUT: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainParams {
    pub preset: String,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub mask_ratio: f32,
    pub seed: u64,
    pub name: String,
    pub checkpoint_every: u64,
    /// Stop after this many steps (for quick runs); None = all epochs.
    pub max_steps: Option<u64>,
    /// Write no pending checkpoints (and leave any of the same name alone): a re-run by
    /// `reproduce`, which must not touch an interrupted run the user may resume.
    #[serde(skip)]
    pub scratch: bool,
}

impl Default for PretrainParams {
    /// `biodc pretrain`'s defaults: MAE tiny, 5 epochs of batch 8.
    fn default() -> PretrainParams {
        PretrainParams {
            preset: "tiny".into(),
            epochs: 5,
            batch: 8,
            lr: 1.5e-3,
            mask_ratio: 0.75,
            seed: 0,
            name: "mae".into(),
            checkpoint_every: 50,
            max_steps: None,
            scratch: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    pub steps: u64,
    pub patches: usize,
    pub held_out: usize,
    pub held_out_loss_start: f64,
    pub held_out_loss_end: f64,
    pub checkpoint: String,
    pub resumed_from: Option<u64>,
    /// End to end: setup, held-out losses, every step and the checkpoint.
    pub patches_per_second: f64,
    /// Optimiser steps after the first [`WARM_UP_STEPS`] (which fill the allocator and the
    /// thread pools): the rate a long run settles at; none for shorter runs.
    pub steady_patches_per_second: Option<f64>,
}

/// Steps left out of `steady_patches_per_second` (as `benches/pytorch_mae.py` leaves them out).
const WARM_UP_STEPS: u64 = 3;

/// What `.biodc/pending/pretrain-<name>.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    head: String,
    params: PretrainParams,
    step: u64,
    state: ObjectId,
    loss_curve: Vec<(u64, f32)>,
    held_out_loss_start: f64,
}

/// The architecture `params` ask for, on `size`×`size` patches.
pub fn model_config(params: &PretrainParams, size: usize) -> Result<MaeConfig> {
    let mut cfg = MaeConfig::preset(&params.preset)?;
    cfg.encoder = cfg.encoder.with_image_size(size)?;
    if !(0.0..1.0).contains(&params.mask_ratio) {
        bail!("--mask-ratio {} must be in [0, 1)", params.mask_ratio);
    }
    cfg.mask_ratio = params.mask_ratio;
    Ok(cfg)
}

/// The `pretrain` verb.
pub struct Pretrain;

impl super::Stage for Pretrain {
    const VERB: &'static str = "pretrain";
    type Params = PretrainParams;
    type Report = PretrainReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &PretrainParams,
    ) -> Result<(Next, PretrainReport)> {
        pretrain(repo, head, version, params, false)
    }

    fn seed(params: &PretrainParams) -> Option<u64> {
        Some(params.seed)
    }

    fn for_rerun(mut params: PretrainParams) -> PretrainParams {
        params.scratch = true;
        params
    }
}

pub fn pretrain(
    repo: &Repo,
    head: CommitId,
    mut version: DatasetVersion,
    params: &PretrainParams,
    resume: bool,
) -> Result<(Next, PretrainReport)> {
    let started = Instant::now();
    // The name becomes a file name under .biodc/pending before anything is committed.
    crate::name::check_stored(crate::name::NameKind::Model, &params.name)?;
    anyhow::ensure!(
        params.batch > 0 && params.epochs > 0,
        "--batch and --epochs must be positive"
    );
    let list = PatchList::all(&version)?;
    let cfg = model_config(params, list.size)?;
    let dev = crate::nn::device::current();
    // Held-out patches: a seeded sample, never trained on.
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(params.seed ^ 0x686f_6c64));
    let held = (list.len() / 10).min(MAX_HELD_OUT);
    let (held_idx, train_idx) = order.split_at(held);
    let mut train_idx = train_idx.to_vec();
    train_idx.sort_unstable();
    if train_idx.is_empty() {
        bail!("no patches left to train on");
    }
    let per_epoch = train_idx.len().div_ceil(params.batch) as u64;
    let total = (per_epoch * params.epochs as u64).min(params.max_steps.unwrap_or(u64::MAX));
    let train_cfg = TrainConfig::new(params.lr, total);
    let held_batch = (held > 0)
        .then(|| batch(&list.load(&repo.store, held_idx)?, list.size, &dev))
        .transpose()?;
    let held_loss = |t: &Trainer| -> Result<f64> {
        let Some(x) = &held_batch else {
            return Ok(f64::NAN);
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0x6576_616c);
        Ok(t.mae.loss(x, &mut rng, false)?.to_scalar::<f32>()? as f64)
    };

    let pending_file = repo.pending_path("pretrain", &params.name);
    let (mut trainer, mut curve, start_loss, resumed_from) = match resume {
        true => {
            let p: Pending =
                serde_json::from_slice(&std::fs::read(&pending_file).with_context(|| {
                    format!("no interrupted pretrain named {:?} to resume", params.name)
                })?)?;
            if p.head != head || p.params != *params {
                bail!(
                    "the interrupted pretrain {:?} was started on version {} with {}; resume needs the same version and parameters",
                    params.name,
                    &p.head[..12],
                    serde_json::to_string(&p.params)?
                );
            }
            let state = repo.store.get(&p.state)?;
            let t = Trainer::load_state(&cfg, train_cfg.clone(), &state, &dev)?;
            let step = t.step;
            (t, p.loss_curve, p.held_out_loss_start, Some(step))
        }
        false => {
            let t = Trainer::new(&cfg, train_cfg.clone(), params.seed, &dev)?;
            let l = held_loss(&t)?;
            (t, Vec::new(), l, None)
        }
    };

    let pb = crate::progress::bar(total, "pretrain", false);
    pb.set_position(trainer.step);
    let log_every = (total / 200).max(1);
    let mut window = Vec::new();
    let first_step = trainer.step;
    let mut steady_since = None;
    while trainer.step < total {
        if trainer.step == first_step + WARM_UP_STEPS {
            steady_since = Some((trainer.step, Instant::now()));
        }
        let step = trainer.step;
        let epoch = step / per_epoch;
        let mut perm = train_idx.clone();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
            params.seed.wrapping_add(epoch),
        ));
        let at = ((step % per_epoch) as usize) * params.batch;
        let ids = &perm[at..(at + params.batch).min(perm.len())];
        let x = batch(&list.load(&repo.store, ids)?, list.size, &dev)?;
        let loss = trainer.step(&x)?;
        window.push(loss);
        if trainer.step % log_every == 0 || trainer.step == total {
            let mean = window.iter().sum::<f32>() / window.len() as f32;
            curve.push((trainer.step, mean));
            window.clear();
            pb.set_message(format!("loss {mean:.3}"));
        }
        pb.inc(1);
        if !params.scratch
            && trainer.step % params.checkpoint_every.max(1) == 0
            && trainer.step < total
        {
            repo.save_pending(&pending_file, &trainer.save_state()?, |state| Pending {
                head: head.to_string(),
                params: params.clone(),
                step: trainer.step,
                state,
                loss_curve: curve.clone(),
                held_out_loss_start: start_loss,
            })?;
            crate::failpoint::hit("pretrain:after-checkpoint");
        }
    }
    pb.finish_and_clear();
    let steady_patches_per_second = steady_since.map(|(from, at)| {
        ((trainer.step - from) * params.batch as u64) as f64 / at.elapsed().as_secs_f64().max(1e-9)
    });

    let end_loss = held_loss(&trainer)?;
    let weights = checkpoint::weights(&trainer.mae)?;
    let (ckpt, _) = repo
        .store
        .put(Kind::Checkpoint, Filter::Shuffle(4), &weights)?;
    let seconds = started.elapsed().as_secs_f64();
    let trained_steps = trainer.step - resumed_from.unwrap_or(0);
    let mut architecture = cfg.config_json();
    architecture["biodc"] = serde_json::to_value(&cfg)?;
    let manifest = ModelManifest {
        name: params.name.clone(),
        kind: "mae".into(),
        architecture,
        checkpoint: ckpt,
        parent: None,
        training: serde_json::json!({
            "params": params,
            "version": head.to_string(),
            "patches": train_idx.len(),
            "held_out": held,
            "steps": trainer.step,
            "image_size": list.size,
        }),
        loss_curve: curve,
        // Without held-out patches (a tiny repository) there is no held-out loss to record,
        // rather than a NaN.
        metrics: [
            ("held_out_loss_start", start_loss),
            ("held_out_loss_end", end_loss),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| (k.to_string(), v))
        .collect::<BTreeMap<_, _>>(),
        inference: Default::default(),
    };
    version.models.insert(params.name.clone(), manifest);
    let summary = format!(
        "pretrain {}: MAE {} on {} patches, {} steps, {}",
        params.name,
        params.preset,
        train_idx.len(),
        trainer.step,
        if held > 0 {
            format!("held-out masked loss {start_loss:.3} → {end_loss:.3}")
        } else {
            "no held-out patches (fewer than 10)".to_string()
        }
    );
    let mut record = <Pretrain as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert(format!("models/{}", params.name), ckpt.to_hex());
    record
        .timings_ms
        .insert("pretrain".into(), (seconds * 1000.0) as u64);
    if !params.scratch {
        std::fs::remove_file(&pending_file).ok();
    }
    let report = PretrainReport {
        steps: trainer.step,
        patches: train_idx.len(),
        held_out: held,
        held_out_loss_start: start_loss,
        held_out_loss_end: end_loss,
        checkpoint: ckpt.to_hex(),
        resumed_from,
        patches_per_second: (trained_steps as f64 * params.batch as f64) / seconds.max(1e-9),
        steady_patches_per_second,
    };
    Ok((Some((version, record)), report))
}
