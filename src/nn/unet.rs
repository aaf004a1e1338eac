//! A plain U-Net: two (3×3 convolution, group norm, ReLU) per level, 2×2 stride-2
//! convolutions down, 2×2 transposed convolutions up, skip connections by concatenation,
//! dropout on the last decoder features (the Monte-Carlo dropout site), one logit per pixel.
//!
//! This candle forward is the reference and the path for other devices; on CPU, training and
//! inference run the same network written out by hand ([`super::unet_step`]).
//!
//! Fully convolutional: it takes any image whose sides are multiples of 2^(levels − 1), so it
//! trains on random crops and segments whole windows. Tensor names: `enc.{l}.{0,1}`,
//! `dec.{l}.{0,1}` (`.weight` (out, in, 3, 3) as PyTorch stores convolutions, `.norm.weight`,
//! `.norm.bias`), `down.{l}`, `up.{l}`, `head` (`.weight`, `.bias`).

use super::conv::{depth_to_space, Conv};
use super::conv3x3::conv3x3;
use super::group_norm::group_norm_relu;
use super::layers::{Init, Params};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::RngCore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// U-Net architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    /// Input channels (1: the normalised image).
    pub inputs: usize,
    /// Channels per level, full resolution first; each further level halves the resolution.
    pub channels: Vec<usize>,
    /// Drop probability at the decoder's dropout sites.
    pub dropout: f32,
    /// Side of the windows it segments at inference: the patch size it was trained on.
    pub window: usize,
}

impl UNetConfig {
    /// The default network for patches of `window`².
    pub fn for_window(window: usize) -> UNetConfig {
        UNetConfig {
            inputs: 1,
            channels: vec![16, 32, 64, 128],
            dropout: 0.1,
            window,
        }
    }
}

impl UNetConfig {
    pub fn validate(&self) -> Result<()> {
        if self.inputs == 0 || self.channels.len() < 2 || self.channels.contains(&0) {
            bail!("a U-Net needs ≥ 1 input channel and ≥ 2 levels of positive width");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout {} must be in [0, 1)", self.dropout);
        }
        if self.window == 0 || !self.window.is_multiple_of(self.multiple()) {
            bail!(
                "a U-Net of {} levels segments windows whose side is a multiple of {}, not {}",
                self.channels.len(),
                self.multiple(),
                self.window
            );
        }
        Ok(())
    }

    /// Image sides must be multiples of this.
    pub fn multiple(&self) -> usize {
        1 << (self.channels.len() - 1)
    }

    /// A JSON description for `models/<name>.json`.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model_type": "biodc-unet",
            "image_size": self.window,
            "channels": self.channels,
            "decoder_dropout": self.dropout,
            "biodc": self,
        })
    }
}

/// Channel groups of the group norm after a convolution with `channels` outputs.
pub fn groups(channels: usize) -> usize {
    if channels.is_multiple_of(8) {
        8
    } else {
        1
    }
}

/// 3×3 convolution (no bias: the norm's shift replaces it), group norm, ReLU.
#[derive(Debug, Clone)]
struct ConvNorm {
    w: Tensor,
    gamma: Tensor,
    beta: Tensor,
    groups: usize,
}

impl ConvNorm {
    fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<ConvNorm> {
        let std = (2.0 / (inp * 9) as f32).sqrt();
        Ok(ConvNorm {
            w: p.make(
                rng,
                dev,
                &format!("{name}.weight"),
                &[out, inp, 3, 3],
                Init::Normal(std),
            )?,
            gamma: p.make(rng, dev, &format!("{name}.norm.weight"), &[out], Init::Ones)?,
            beta: p.make(rng, dev, &format!("{name}.norm.bias"), &[out], Init::Zeros)?,
            groups: groups(out),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, inp, _, _) = self.w.dims4()?;
        // (out, in, ky, kx) → rows (ky, kx, in), one column per output channel.
        let wm = self.w.permute((2, 3, 1, 0))?.reshape((9 * inp, out))?;
        Ok(group_norm_relu(
            &conv3x3(x, &wm)?,
            &self.gamma,
            &self.beta,
            self.groups,
        )?)
    }
}

/// The network.
#[derive(Debug, Clone)]
pub struct UNet {
    pub cfg: UNetConfig,
    pub params: Params,
    enc: Vec<[ConvNorm; 2]>,
    down: Vec<Conv>,
    up: Vec<Conv>,
    dec: Vec<[ConvNorm; 2]>,
    head: Conv,
}

impl UNet {
    /// A new network with every weight drawn from `seed`.
    pub fn new(cfg: &UNetConfig, seed: u64, dev: &Device) -> Result<UNet> {
        UNet::build(cfg, seed, false, dev)
    }

    /// A network of zeros, to be filled from a checkpoint.
    pub fn zeroed(cfg: &UNetConfig, dev: &Device) -> Result<UNet> {
        UNet::build(cfg, 0, true, dev)
    }

    fn build(cfg: &UNetConfig, seed: u64, skip_init: bool, dev: &Device) -> Result<UNet> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let r = &mut rng;
        let mut p = Params {
            skip_init,
            ..Params::default()
        };
        let ch = &cfg.channels;
        let levels = ch.len();
        let mut enc = Vec::with_capacity(levels);
        let mut down = Vec::with_capacity(levels - 1);
        for l in 0..levels {
            let inp = if l == 0 {
                cfg.inputs
            } else {
                down.push(Conv::new(
                    &mut p,
                    r,
                    dev,
                    &format!("down.{l}"),
                    ch[l - 1],
                    ch[l],
                    1,
                    true,
                )?);
                ch[l]
            };
            enc.push([
                ConvNorm::new(&mut p, r, dev, &format!("enc.{l}.0"), inp, ch[l])?,
                ConvNorm::new(&mut p, r, dev, &format!("enc.{l}.1"), ch[l], ch[l])?,
            ]);
        }
        let mut up = Vec::with_capacity(levels - 1);
        let mut dec = Vec::with_capacity(levels - 1);
        for l in (0..levels - 1).rev() {
            // A 2×2 stride-2 transposed convolution = a 1×1 convolution to 4× the channels,
            // then depth-to-space.
            up.push(Conv::new(
                &mut p,
                r,
                dev,
                &format!("up.{l}"),
                ch[l + 1],
                4 * ch[l],
                1,
                false,
            )?);
            dec.push([
                ConvNorm::new(&mut p, r, dev, &format!("dec.{l}.0"), 2 * ch[l], ch[l])?,
                ConvNorm::new(&mut p, r, dev, &format!("dec.{l}.1"), ch[l], ch[l])?,
            ]);
        }
        let head = Conv::new(&mut p, r, dev, "head", ch[0], 1, 1, false)?;
        Ok(UNet {
            cfg: cfg.clone(),
            params: p,
            enc,
            down,
            up,
            dec,
            head,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.head.w.device().clone()
    }

    /// Logits (B, 1, H, W) of channels-last inputs (B, H, W, inputs). With `rng` the decoder's
    /// dropout sites are on, their masks drawn from that RNG: training, or one Monte-Carlo
    /// dropout pass.
    pub fn forward(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let (_, h, w, c) = x.dims4()?;
        let m = self.cfg.multiple();
        if c != self.cfg.inputs || h % m != 0 || w % m != 0 {
            bail!(
                "the U-Net takes (B, H, W, {}) with H and W multiples of {m}, got {:?}",
                self.cfg.inputs,
                x.dims()
            );
        }
        let mut skips = Vec::with_capacity(self.enc.len());
        let mut y = x.clone();
        for (l, [c0, c1]) in self.enc.iter().enumerate() {
            if l > 0 {
                y = self.down[l - 1].forward(&y)?;
            }
            y = c1.forward(&c0.forward(&y)?)?;
            skips.push(y.clone());
        }
        skips.pop();
        for (up, [c0, c1]) in self.up.iter().zip(&self.dec) {
            let skip = skips.pop().expect("one skip per decoder level");
            let u = depth_to_space(&up.forward(&y)?)?;
            y = Tensor::cat(&[&u, &skip], 3)?;
            y = c1.forward(&c0.forward(&y)?)?;
        }
        let y = match rng {
            Some(rng) if self.cfg.dropout > 0.0 => {
                let mask = dropout_mask(y.elem_count(), self.cfg.dropout, rng);
                (&y * Tensor::from_vec(mask, y.shape(), y.device())?)?
            }
            _ => y,
        };
        Ok(self.head.forward(&y)?.permute((0, 3, 1, 2))?)
    }
}

/// Dropout keep-masks (0 or 1/keep) of `n` elements with drop probability `p`: 16 random bits
/// per element, four elements per draw of the RNG (one draw per element made drawing the masks
/// a tenth of a training step).
pub fn dropout_mask(n: usize, p: f32, rng: &mut impl RngCore) -> Vec<f32> {
    let keep = 1.0 - p;
    let threshold = (keep * 65536.0).round() as u32;
    let scale = 1.0 / keep;
    let mut mask = Vec::with_capacity(n);
    while mask.len() < n {
        let bits = rng.next_u64();
        for k in 0..4.min(n - mask.len()) {
            let r = ((bits >> (16 * k)) & 0xffff) as u32;
            mask.push(if r < threshold { scale } else { 0.0 });
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> UNetConfig {
        UNetConfig {
            inputs: 1,
            channels: vec![4, 8, 8],
            dropout: 0.2,
            window: 16,
        }
    }

    #[test]
    fn shapes_determinism_and_dropout() {
        let dev = Device::Cpu;
        let net = UNet::new(&small(), 7, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 16, 24, 1), &dev).unwrap();
        let z = net.forward(&x, None).unwrap();
        assert_eq!(z.dims(), &[2, 1, 16, 24]);
        let again = UNet::new(&small(), 7, &dev).unwrap();
        let d = (&z - again.forward(&x, None).unwrap())
            .unwrap()
            .abs()
            .unwrap();
        assert_eq!(d.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let a = net.forward(&x, Some(&mut rng)).unwrap();
        let b = net.forward(&x, Some(&mut rng)).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
        assert!(net
            .forward(
                &Tensor::zeros((1, 10, 16, 1), candle_core::DType::F32, &dev).unwrap(),
                None
            )
            .is_err());
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let dev = Device::Cpu;
        let net = UNet::new(&small(), 3, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 8, 8, 1), &dev).unwrap();
        let z = net.forward(&x, None).unwrap();
        let grads = z.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in &net.params.vars {
            assert!(grads.get(var).is_some(), "no gradient for {name}");
        }
    }
}
