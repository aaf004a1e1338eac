//! A TransUNet-style segmenter: the (pretrained) ViT encoder gives the deep features at 1/16
//! resolution, a small CNN stem gives skip features at full, 1/2 and 1/4 resolution, and an
//! upsampling decoder with dropout merges them into one logit per pixel.
//!
//! Tensor names: the encoder keeps its Hugging Face ViT-MAE names (`vit.…`), so a pretrained
//! MAE checkpoint initialises it directly; the CNN parts are `stem.…`, `bridge`, `decoder.…`,
//! `head`. The decoder's dropout sites are the ones Monte-Carlo dropout samples at inference.

use super::conv::{upsample, Conv};
use super::layers::{dropout, Params};
use super::vit::{Encoder, VitConfig};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// TransUnet architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransUnetConfig {
    pub encoder: VitConfig,
    /// Channels of the CNN stem at full, 1/2 and 1/4 resolution.
    pub skips: [usize; 3],
    /// Channels of the decoder at 1/16 and 1/8 resolution.
    pub bridge: usize,
    /// Drop probability of the decoder's dropout sites.
    pub dropout: f32,
}

impl TransUnetConfig {
    /// The default CNN parts around encoder `encoder`.
    pub fn around(encoder: VitConfig) -> TransUnetConfig {
        TransUnetConfig {
            encoder,
            skips: [8, 16, 32],
            bridge: 64,
            dropout: 0.2,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if self.encoder.channels != 1 {
            bail!("the segmenter takes single-channel images");
        }
        if self.skips.contains(&0) || self.bridge == 0 {
            bail!("segmenter channel counts must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// A JSON description for `models/<name>.json`.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": "biodc-transunet",
            "image_size": self.encoder.image_size,
            "patch_size": self.encoder.patch_size,
            "hidden_size": self.encoder.dim,
            "num_hidden_layers": self.encoder.depth,
            "num_attention_heads": self.encoder.heads,
            "skip_channels": self.skips,
            "bridge_channels": self.bridge,
            "decoder_dropout": self.dropout,
            "biodc": self,
        })
    }
}

/// The network.
#[derive(Debug, Clone)]
pub struct TransUnet {
    pub cfg: TransUnetConfig,
    pub params: Params,
    pub encoder: Encoder,
    stem: [Conv; 4],
    bridge: Conv,
    up: [Conv; 4],
    head: Conv,
}

impl TransUnet {
    /// A new network with every weight drawn from `seed`.
    pub fn new(cfg: &TransUnetConfig, seed: u64, dev: &Device) -> Result<TransUnet> {
        TransUnet::build(cfg, seed, false, dev)
    }

    /// A network of zeros, to be filled from a checkpoint.
    pub fn zeroed(cfg: &TransUnetConfig, dev: &Device) -> Result<TransUnet> {
        TransUnet::build(cfg, 0, true, dev)
    }

    fn build(cfg: &TransUnetConfig, seed: u64, skip_init: bool, dev: &Device) -> Result<TransUnet> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params {
            skip_init,
            ..Params::default()
        };
        let r = &mut rng;
        let encoder = Encoder::new(&cfg.encoder, &mut p, r, dev)?;
        let [s0, s1, s2] = cfg.skips;
        let (d, b) = (cfg.encoder.dim, cfg.bridge);
        let stem = [
            Conv::new(&mut p, r, dev, "stem.0", 1, s0, 3, false)?,
            Conv::new(&mut p, r, dev, "stem.1", s0, s0, 3, false)?,
            Conv::new(&mut p, r, dev, "stem.2", s0, s1, 1, true)?,
            Conv::new(&mut p, r, dev, "stem.3", s1, s2, 1, true)?,
        ];
        let bridge = Conv::new(&mut p, r, dev, "bridge", d, b, 1, false)?;
        let up = [
            Conv::new(&mut p, r, dev, "decoder.0", b, b, 3, false)?,
            Conv::new(&mut p, r, dev, "decoder.1", b + s2, s2, 3, false)?,
            Conv::new(&mut p, r, dev, "decoder.2", s2 + s1, s1, 3, false)?,
            Conv::new(&mut p, r, dev, "decoder.3", s1 + s0, s0, 3, false)?,
        ];
        let head = Conv::new(&mut p, r, dev, "head", s0, 1, 1, false)?;
        Ok(TransUnet {
            cfg: cfg.clone(),
            params: p,
            encoder,
            stem,
            bridge,
            up,
            head,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.head.w.device().clone()
    }

    /// Copies the encoder's weights (`vit.…`) from a pretrained MAE checkpoint's tensors.
    pub fn load_encoder(&self, tensors: &HashMap<String, Tensor>) -> Result<usize> {
        let mut n = 0;
        for (name, var) in self
            .params
            .vars
            .iter()
            .filter(|(n, _)| n.starts_with("vit."))
        {
            let Some(t) = tensors.get(name) else {
                bail!("the pretrained checkpoint lacks encoder tensor {name}");
            };
            if t.dims() != var.dims() {
                bail!(
                    "pretrained tensor {name} is {:?}, the segmenter's encoder expects {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(candle_core::DType::F32)?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Logits (B, 1, S, S) of a batch of normalised images (B, 1, S, S). With `rng` every
    /// dropout site (encoder and decoder) is on, its masks drawn from that RNG: training, or
    /// one Monte-Carlo dropout pass.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let (b, _, s, _) = x.dims4()?;
        // The CNN works channels-last; a single-channel (B, 1, S, S) is already (B, S, S, 1).
        let nhwc = x.reshape((b, s, s, 1))?;
        let f0 = self.stem[1].relu(&self.stem[0].relu(&nhwc)?)?;
        let f1 = self.stem[2].relu(&f0)?;
        let f2 = self.stem[3].relu(&f1)?;
        let g = self.cfg.encoder.grid();
        let tokens = self.encoder.features(x, rng.as_deref_mut())?;
        let deep = tokens.reshape((b, g, g, self.cfg.encoder.dim))?;
        let mut y = self.bridge.relu(&deep)?;
        y = self.up[0].relu(&upsample(&y, 2)?)?;
        let p = self.cfg.dropout;
        for (conv, skip) in self.up[1..].iter().zip([&f2, &f1, &f0]) {
            let f = skip.dim(1)? / y.dim(1)?;
            y = Tensor::cat(&[&upsample(&y, f)?, skip], 3)?;
            y = dropout(&conv.relu(&y)?, p, rng.as_deref_mut())?;
        }
        Ok(self.head.forward(&y)?.reshape((b, 1, s, s))?)
    }

    /// BCE-with-logits + soft Dice loss of logits against 0/1 masks `y` (B, 1, S, S).
    pub fn loss(&self, x: &Tensor, y: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let z = self.forward(x, rng)?;
        super::loss::bce_dice(&z, y)
    }

    /// Foreground probabilities (B, S·S rows) with dropout off.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<Vec<f32>>> {
        let b = x.dim(0)?;
        Ok(super::loss::sigmoid(&self.forward(x, None)?)?
            .reshape((b, ()))?
            .to_vec2::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> TransUnetConfig {
        let mut e = VitConfig::tiny().with_image_size(32).unwrap();
        e.dim = 32;
        e.depth = 1;
        e.heads = 2;
        TransUnetConfig::around(e)
    }

    #[test]
    fn shapes_and_determinism() {
        let dev = Device::Cpu;
        let net = TransUnet::new(&small(), 7, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32), &dev).unwrap();
        let z = net.forward(&x, None).unwrap();
        assert_eq!(z.dims(), &[2, 1, 32, 32]);
        let again = TransUnet::new(&small(), 7, &dev).unwrap();
        let d = (z - again.forward(&x, None).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
        // Dropout passes differ from each other.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = net.forward(&x, Some(&mut rng)).unwrap();
        let b = net.forward(&x, Some(&mut rng)).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        let net = TransUnet::new(&small(), 3, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 1, 32, 32), &dev).unwrap();
        let y = x
            .gt(0.5)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grads = net
            .loss(&x, &y, Some(&mut rng))
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in &net.params.vars {
            if name.contains("cls_token") {
                continue; // the segmenter drops the CLS output, so only attention reaches it
            }
            assert!(grads.get(var).is_some(), "no gradient for {name}");
        }
    }
}
