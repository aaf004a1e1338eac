//! How each kind of model is fitted: the network or forest `train` starts from, and the
//! training loop of a network over random crops of the annotated patches.

use super::{ModelKind, TrainParams};
use crate::nn::data::augment;
use crate::nn::segmenter::Segmenter;
use crate::nn::train::{AdamW, TrainConfig};
use crate::nn::transunet::{TransUnet, TransUnetConfig};
use crate::nn::unet::{UNet, UNetConfig};
use crate::nn::{checkpoint, vit::VitConfig};
use crate::pixel::{PixelClassifier, PixelClassifierParams};
use crate::repo::Repo;
use crate::segmentation::{Example, PixelForest, Predictor, SegmentationModel};
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::time::Instant;

/// The model `train` starts from: a fresh or parent network, or a forest to fit.
pub(super) enum Start {
    Network(Segmenter),
    Forest,
}

/// The starting model, its parent (`name@checkpoint`) and the patches the parent saw.
pub(super) fn start(
    repo: &Repo,
    version: &DatasetVersion,
    params: &TrainParams,
    size: usize,
) -> Result<(Start, Option<String>, BTreeSet<String>)> {
    let dev = crate::nn::device::current();
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
            let Predictor::Network(net) = SegmentationModel::load(&repo.store, m)?.predictor else {
                unreachable!("a segmenter record loads as a network")
            };
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
pub(super) struct Trained {
    pub steps: u64,
    pub losses: Vec<f32>,
    pub curve: Vec<(u64, f32)>,
    pub seconds: f64,
}

/// Trains `net` on `examples` with the schedule of `params`.
pub(super) fn train_network(
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
pub(super) fn fit_forest(examples: &[Example], size: usize, seed: u64) -> Result<PixelForest> {
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
