//! Building blocks shared by the encoder, the MAE decoder and the segmenter: parameters drawn
//! from a seeded RNG, linear layers, a layer norm with a working gradient, attention, dropout.
//!
//! candle's fused `layer_norm`/`softmax_last_dim` returned no gradient in a gradient check
//! (DESIGN.md §8), so training uses the composite forms here; and CPU random numbers cannot be
//! seeded in candle, so initial weights and dropout masks come from our own ChaCha RNG.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// All trainable tensors of a model by (Hugging Face-style) name, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub vars: BTreeMap<String, Var>,
}

/// How a new parameter is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Xavier/Glorot uniform on (fan_out, fan_in).
    Xavier,
    /// Normal with this standard deviation.
    Normal(f32),
    Zeros,
    Ones,
}

impl Params {
    /// Creates parameter `name` of `shape`, drawn from `rng`.
    pub fn make(
        &mut self,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        shape: &[usize],
        init: Init,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n).map(|_| normal(rng) * std).collect(),
            Init::Xavier => {
                let fan_out = shape[0];
                let fan_in = n / fan_out;
                let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
                (0..n).map(|_| rng.random_range(-a..a)).collect()
            }
        };
        let var = Var::from_tensor(&Tensor::from_vec(data, shape, dev)?)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(t)
    }

    /// Total number of scalars.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Sets every parameter present in `tensors` (same shape) — loading a checkpoint.
    pub fn load(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let t = tensors
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("checkpoint lacks tensor {name}"))?;
            anyhow::ensure!(
                t.dims() == var.dims(),
                "checkpoint tensor {name} is {:?}, model expects {:?}",
                t.dims(),
                var.dims()
            );
            var.set(&t.to_dtype(DType::F32)?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `y = x Wᵀ + b` with W stored (out, in), as Hugging Face stores linear layers.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<Linear> {
        Ok(Linear {
            w: p.make(
                rng,
                dev,
                &format!("{name}.weight"),
                &[out, inp],
                Init::Xavier,
            )?,
            b: p.make(rng, dev, &format!("{name}.bias"), &[out], Init::Zeros)?,
        })
    }

    /// Applies to the last dimension of `x` (any leading dimensions).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap();
        let rows = x.elem_count() / inp;
        let y = x
            .reshape((rows, inp))?
            .matmul(&self.w.t()?)?
            .broadcast_add(&self.b)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.w.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

/// Layer norm over the last dimension, written out so it has a gradient.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

impl LayerNorm {
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        dim: usize,
    ) -> Result<LayerNorm> {
        Ok(LayerNorm {
            w: p.make(rng, dev, &format!("{name}.weight"), &[dim], Init::Ones)?,
            b: p.make(rng, dev, &format!("{name}.bias"), &[dim], Init::Zeros)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&self.w)?.broadcast_add(&self.b)?)
    }
}

/// Dropout whose masks come from the caller's RNG; `p = 0` or `rng = None` is the identity.
pub fn dropout(x: &Tensor, p: f32, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < keep {
                1.0 / keep
            } else {
                0.0
            }
        })
        .collect();
    Ok((x * Tensor::from_vec(mask, x.shape(), x.device())?)?)
}

/// Multi-head self-attention with Hugging Face ViT names (`attention.attention.query`, …).
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        dim: usize,
        heads: usize,
    ) -> Result<Attention> {
        Ok(Attention {
            q: Linear::new(p, rng, dev, &format!("{name}.attention.query"), dim, dim)?,
            k: Linear::new(p, rng, dev, &format!("{name}.attention.key"), dim, dim)?,
            v: Linear::new(p, rng, dev, &format!("{name}.attention.value"), dim, dim)?,
            out: Linear::new(p, rng, dev, &format!("{name}.output.dense"), dim, dim)?,
            heads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, d))?;
        self.out.forward(&y)
    }
}

/// A pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); dropout after the
/// attention projection and inside the MLP (the MC-dropout sites).
#[derive(Debug, Clone)]
pub struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    dropout: f32,
}

impl Block {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        dim: usize,
        heads: usize,
        mlp: usize,
        dropout: f32,
    ) -> Result<Block> {
        Ok(Block {
            norm1: LayerNorm::new(p, rng, dev, &format!("{name}.layernorm_before"), dim)?,
            attn: Attention::new(p, rng, dev, &format!("{name}.attention"), dim, heads)?,
            norm2: LayerNorm::new(p, rng, dev, &format!("{name}.layernorm_after"), dim)?,
            fc1: Linear::new(p, rng, dev, &format!("{name}.intermediate.dense"), dim, mlp)?,
            fc2: Linear::new(p, rng, dev, &format!("{name}.output.dense"), mlp, dim)?,
            dropout,
        })
    }

    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?)?;
        let a = dropout(&a, self.dropout, rng.as_deref_mut())?;
        let x = (x + a)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu()?;
        let h = dropout(&h, self.dropout, rng)?;
        let h = self.fc2.forward(&h)?;
        Ok((x + h)?)
    }
}

/// Fixed 2D sin-cos position embeddings for a `grid`×`grid` token grid, with a zero row first
/// for the CLS token: (1, 1 + grid², dim).
pub fn sincos_2d(grid: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    let quarter = dim / 4;
    let mut data = vec![0f32; (1 + grid * grid) * dim];
    for gy in 0..grid {
        for gx in 0..grid {
            let row = &mut data[(1 + gy * grid + gx) * dim..(2 + gy * grid + gx) * dim];
            for (half, pos) in [(0, gx as f32), (1, gy as f32)] {
                for i in 0..quarter {
                    let omega = 1.0 / 10000f32.powf(i as f32 / quarter as f32);
                    row[half * 2 * quarter + i] = (pos * omega).sin();
                    row[half * 2 * quarter + quarter + i] = (pos * omega).cos();
                }
            }
        }
    }
    Ok(Tensor::from_vec(data, (1, 1 + grid * grid, dim), dev)?)
}

/// (B, 1, S, S) images → (B, N, P·P) patches in row-major token order.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, s, _) = x.dims4()?;
    let g = s / p;
    Ok(x.reshape((b, c, g, p, g, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((b, g * g, c * p * p))?)
}

/// Inverse of [`patchify`] for one channel: (B, N, P·P) → (B, 1, S, S).
pub fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, n, _) = x.dims3()?;
    let g = (n as f64).sqrt() as usize;
    Ok(x.reshape((b, g, g, 1, p, p))?
        .permute((0, 3, 1, 4, 2, 5))?
        .contiguous()?
        .reshape((b, 1, g * p, g * p))?)
}
