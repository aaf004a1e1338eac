//! A segmentation network of any of biodc's architectures, behind one type: what `train`,
//! `hunt`, `segment`, `export` and `monitor` run.
//!
//! - [`UNet`](super::unet::UNet): a plain U-Net trained from scratch on random crops (the
//!   default: it learns from ten annotated patches, docs/BENCHMARKS.md);
//! - [`TransUnet`](super::transunet::TransUnet): the pretrained ViT encoder with a CNN decoder.
//!
//! All take per-patch standardised single-channel images (B, 1, S, S) and give one logit per
//! pixel; `window` is the side of the windows a model segments at inference (the patch size it
//! was trained for).

use super::checkpoint;
use super::layers::Params;
use super::loss::{bce_dice, sigmoid};
use super::transunet::{TransUnet, TransUnetConfig};
use super::unet::{UNet, UNetConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;

/// A segmentation network with its weights.
#[derive(Debug, Clone)]
pub enum Segmenter {
    TransUnet(TransUnet),
    UNet(UNet),
}

impl Segmenter {
    /// The network an `architecture` record (`models/<name>.json`) describes, with the weights
    /// of the safetensors `checkpoint`.
    pub fn load(
        architecture: &serde_json::Value,
        checkpoint: &[u8],
        dev: &Device,
    ) -> Result<Segmenter> {
        let net = match architecture["model_type"].as_str() {
            Some("biodc-unet") => {
                let cfg: UNetConfig = serde_json::from_value(architecture["biodc"].clone())
                    .context("malformed U-Net architecture record")?;
                Segmenter::UNet(UNet::zeroed(&cfg, dev)?)
            }
            Some("biodc-transunet") => {
                let cfg: TransUnetConfig = serde_json::from_value(architecture["biodc"].clone())
                    .context("malformed TransUNet architecture record")?;
                Segmenter::TransUnet(TransUnet::zeroed(&cfg, dev)?)
            }
            other => bail!("unknown segmenter architecture {other:?}"),
        };
        net.params()
            .load(&checkpoint::from_safetensors(checkpoint, dev)?)?;
        Ok(net)
    }

    /// Every trainable tensor by name.
    pub fn params(&self) -> &Params {
        match self {
            Segmenter::TransUnet(n) => &n.params,
            Segmenter::UNet(n) => &n.params,
        }
    }

    /// The side of the windows this network segments.
    pub fn window(&self) -> usize {
        match self {
            Segmenter::TransUnet(n) => n.cfg.encoder.image_size,
            Segmenter::UNet(n) => n.cfg.window,
        }
    }

    /// Training crops must have sides that are multiples of this (TransUNet: its window).
    pub fn multiple(&self) -> usize {
        match self {
            Segmenter::TransUnet(n) => n.cfg.encoder.image_size,
            Segmenter::UNet(n) => n.cfg.multiple(),
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Segmenter::TransUnet(n) => n.device(),
            Segmenter::UNet(n) => n.device(),
        }
    }

    /// The JSON description for `models/<name>.json`.
    pub fn config_json(&self) -> serde_json::Value {
        match self {
            Segmenter::TransUnet(n) => n.cfg.config_json(),
            Segmenter::UNet(n) => n.cfg.config_json(),
        }
    }

    /// Logits (B, 1, H, W) of normalised images (B, 1, H, W) for inference (a U-Net on CPU
    /// runs its hand-written pass, without a graph). With `rng` the dropout sites are on,
    /// their masks drawn from that RNG: one Monte-Carlo dropout pass.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        match self {
            Segmenter::TransUnet(n) => n.forward(x, rng),
            Segmenter::UNet(n) => {
                let (b, _, h, w) = x.dims4()?;
                if x.device().is_cpu() {
                    let z =
                        super::unet_step::logits(n, &x.flatten_all()?.to_vec1()?, (b, h, w), rng)?;
                    return Ok(Tensor::from_vec(z, (b, 1, h, w), x.device())?);
                }
                // Single-channel (B, 1, H, W) is already channels-last (B, H, W, 1).
                n.forward(&x.reshape((b, h, w, 1))?, rng)
            }
        }
    }

    /// BCE-with-logits + soft Dice loss against 0/1 masks `y` (B, 1, H, W), through candle's
    /// autograd (a U-Net on CPU trains with [`super::unet_step`] instead).
    pub fn loss(&self, x: &Tensor, y: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let z = match self {
            Segmenter::TransUnet(n) => n.forward(x, rng)?,
            Segmenter::UNet(n) => {
                let (b, _, h, w) = x.dims4()?;
                n.forward(&x.reshape((b, h, w, 1))?, rng)?
            }
        };
        bce_dice(&z, y)
    }

    /// `passes` Monte-Carlo dropout samples of the foreground probabilities of a batch
    /// (B, 1, S, S): for each image, one map per pass.
    pub fn mc_probabilities(
        &self,
        x: &Tensor,
        passes: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let (b, _, h, w) = x.dims4()?;
        let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::with_capacity(passes); b];
        if let (Segmenter::UNet(n), true) = (self, x.device().is_cpu()) {
            let runs = super::unet_step::mc_logits(
                n,
                &x.flatten_all()?.to_vec1()?,
                (b, h, w),
                passes,
                rng,
            )?;
            for z in runs {
                for (o, img) in out.iter_mut().zip(z.chunks(h * w)) {
                    // As `sigmoid`: (tanh(z/2) + 1)/2.
                    o.push(
                        img.iter()
                            .map(|&v| ((v * 0.5).tanh() + 1.0) * 0.5)
                            .collect(),
                    );
                }
            }
            return Ok(out);
        }
        for _ in 0..passes {
            let p = sigmoid(&self.forward(x, Some(&mut *rng))?)?
                .reshape((b, ()))?
                .to_vec2::<f32>()?;
            for (o, p) in out.iter_mut().zip(p) {
                o.push(p);
            }
        }
        Ok(out)
    }

    /// Foreground probabilities (B rows of H·W) with dropout off.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let b = x.dim(0)?;
        Ok(sigmoid(&self.forward(x, None)?)?
            .reshape((b, ()))?
            .to_vec2::<f32>()?)
    }
}
