//! Building blocks shared by the encoder, the MAE decoder and the segmenter: parameters drawn
//! from a seeded RNG, linear layers, a layer norm with a working gradient, attention, dropout.
//!
//! candle's fused `layer_norm`/`softmax_last_dim` have no backward pass (docs/ARCHITECTURE.md), so the
//! layers use the fused kernels with gradients of [`super::ops`]; and CPU random numbers cannot
//! be seeded in candle, so initial weights and dropout masks come from our own ChaCha RNG.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// All trainable tensors of a model by (Hugging Face-style) name, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub vars: BTreeMap<String, Var>,
    /// Make every parameter zeros without drawing random numbers (a model about to be
    /// overwritten by a checkpoint).
    pub skip_init: bool,
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
        let init = if self.skip_init { Init::Zeros } else { init };
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
    b: Option<Tensor>,
}

impl Linear {
    /// A linear layer with a bias: `{name}.weight` (Xavier-uniform), `{name}.bias` (zeros).
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        inp: usize,
        out: usize,
    ) -> Result<Linear> {
        Linear::with_bias(p, rng, dev, name, inp, out, true)
    }

    /// A linear layer, with or without its bias.
    pub fn with_bias(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        inp: usize,
        out: usize,
        bias: bool,
    ) -> Result<Linear> {
        let w = p.make(
            rng,
            dev,
            &format!("{name}.weight"),
            &[out, inp],
            Init::Xavier,
        )?;
        let b = bias
            .then(|| p.make(rng, dev, &format!("{name}.bias"), &[out], Init::Zeros))
            .transpose()?;
        Ok(Linear { w, b })
    }

    /// Applies to the last dimension of `x` (any leading dimensions): one matrix product over
    /// all rows.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::linear_op::linear(x, &self.w, self.b.as_ref())?)
    }
}

/// Layer norm over the last dimension (`{name}.weight`, `{name}.bias`), with a gradient.
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

    /// Normalises the last dimension (eps 1e-6, as MAE), with a gradient ([`super::ops`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::ops::layer_norm(x, &self.w, &self.b, 1e-6)?)
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
    Ok(super::ops::mul_by_mask(x, mask)?)
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
        qkv_bias: bool,
    ) -> Result<Attention> {
        anyhow::ensure!(
            heads > 0 && dim.is_multiple_of(heads),
            "width {dim} is not divisible by {heads} attention heads"
        );
        let qkv = |rng: &mut ChaCha8Rng, p: &mut Params, which: &str| {
            let name = format!("{name}.attention.{which}");
            Linear::with_bias(p, rng, dev, &name, dim, dim, qkv_bias)
        };
        Ok(Attention {
            q: qkv(rng, p, "query")?,
            k: qkv(rng, p, "key")?,
            v: qkv(rng, p, "value")?,
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
        let attn = super::ops::softmax_last_dim(&scores)?;
        let y = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, d))?;
        self.out.forward(&y)
    }
}

/// The shape of a transformer block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockDims {
    /// Token width.
    pub dim: usize,
    pub heads: usize,
    /// Hidden width of the MLP.
    pub mlp: usize,
    /// Drop probability at the two dropout sites.
    pub dropout: f32,
    /// Whether query, key and value have biases.
    pub qkv_bias: bool,
}

/// A pre-norm transformer block: x + Drop(Attn(LN(x))), then x + Drop(MLP(LN(x))), with
/// GELU in the MLP. The two dropout sites are where Hugging Face's ViT has them (after the
/// attention output projection and after the MLP's second linear); they are the MC-dropout
/// sites, on when `forward` is given an RNG.
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
    /// Parameters under `{name}.layernorm_before`, `{name}.attention.…`,
    /// `{name}.layernorm_after`, `{name}.intermediate.dense`, `{name}.output.dense`.
    pub fn new(
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
        name: &str,
        d: BlockDims,
    ) -> Result<Block> {
        let dim = d.dim;
        Ok(Block {
            norm1: LayerNorm::new(p, rng, dev, &format!("{name}.layernorm_before"), dim)?,
            attn: Attention::new(
                p,
                rng,
                dev,
                &format!("{name}.attention"),
                dim,
                d.heads,
                d.qkv_bias,
            )?,
            norm2: LayerNorm::new(p, rng, dev, &format!("{name}.layernorm_after"), dim)?,
            fc1: Linear::new(
                p,
                rng,
                dev,
                &format!("{name}.intermediate.dense"),
                dim,
                d.mlp,
            )?,
            fc2: Linear::new(p, rng, dev, &format!("{name}.output.dense"), d.mlp, dim)?,
            dropout: d.dropout,
        })
    }

    /// (B, N, D) → (B, N, D). `rng` switches dropout on, its masks drawn from that RNG.
    pub fn forward(&self, x: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?)?;
        let a = dropout(&a, self.dropout, rng.as_deref_mut())?;
        let x = (x + a)?;
        let h = super::ops::gelu(&self.fc1.forward(&self.norm2.forward(&x)?)?)?;
        let h = self.fc2.forward(&h)?;
        let h = dropout(&h, self.dropout, rng)?;
        Ok((x + h)?)
    }
}

/// Fixed 2D sin-cos position embeddings for a `grid`×`grid` token grid, with a zero row first
/// for the CLS token: (1, 1 + grid², dim).
pub fn sincos_2d(grid: usize, dim: usize, dev: &Device) -> Result<Tensor> {
    anyhow::ensure!(
        dim.is_multiple_of(4),
        "width {dim} must be a multiple of 4 for 2D sin-cos positions"
    );
    let quarter = dim / 4;
    let mut data = vec![0f32; (1 + grid * grid) * dim];
    for gy in 0..grid {
        for gx in 0..grid {
            let row = &mut data[(1 + gy * grid + gx) * dim..(2 + gy * grid + gx) * dim];
            // As MAE's get_2d_sincos_pos_embed (in f64, then f32): the first half encodes the
            // column, the second the row; each half is [sin(pos·ω), cos(pos·ω)].
            for (half, pos) in [(0, gx as f64), (1, gy as f64)] {
                for i in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(i as f64 / quarter as f64);
                    row[half * 2 * quarter + i] = (pos * omega).sin() as f32;
                    row[half * 2 * quarter + quarter + i] = (pos * omega).cos() as f32;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::test_util::max_diff;
    use rand::SeedableRng;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| normal(&mut rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn layer_norm_matches_candle_and_has_a_gradient() {
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let ln = LayerNorm::new(&mut p, &mut rng, &Device::Cpu, "ln", 16).unwrap();
        let x = randn(&[2, 5, 16], 1);
        let ours = ln.forward(&x).unwrap();
        let ones = Tensor::ones(16, DType::F32, &Device::Cpu).unwrap();
        let zeros = Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap();
        let fused = candle_nn::ops::layer_norm(&x, &ones, &zeros, 1e-6).unwrap();
        assert!(max_diff(&ours, &fused) < 1e-5);
        let xv = Var::from_tensor(&x).unwrap();
        let g = ln
            .forward(xv.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(xv.as_tensor()).is_some());
        assert!(g.get(&p.vars["ln.weight"]).is_some());
        assert!(g.get(&p.vars["ln.bias"]).is_some());
    }

    #[test]
    fn linear_with_and_without_bias() {
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let dev = Device::Cpu;
        let a = Linear::new(&mut p, &mut rng, &dev, "a", 8, 4).unwrap();
        let b = Linear::with_bias(&mut p, &mut rng, &dev, "b", 8, 4, false).unwrap();
        assert!(p.vars.contains_key("a.bias") && !p.vars.contains_key("b.bias"));
        assert_eq!(p.vars["a.weight"].dims(), &[4, 8]);
        let x = randn(&[3, 2, 8], 2);
        assert_eq!(a.forward(&x).unwrap().dims(), &[3, 2, 4]);
        // Xavier-uniform bound.
        let w: Vec<f32> = p.vars["b.weight"].flatten_all().unwrap().to_vec1().unwrap();
        let bound = (6.0f32 / 12.0).sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
        let y = b.forward(&x).unwrap();
        let want = x
            .reshape((6, 8))
            .unwrap()
            .matmul(&p.vars["b.weight"].t().unwrap())
            .unwrap()
            .reshape((3, 2, 4))
            .unwrap();
        assert!(max_diff(&y, &want) < 1e-6);
    }

    #[test]
    fn dropout_is_seeded_scaled_and_off_without_rng() {
        let x = Tensor::ones((4, 1000), DType::F32, &Device::Cpu).unwrap();
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            dropout(&x, 0.25, Some(&mut rng))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b, c) = (draw(1), draw(1), draw(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let zeros = a.iter().filter(|&&v| v == 0.0).count() as f32 / a.len() as f32;
        assert!((zeros - 0.25).abs() < 0.03, "{zeros}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 1.0).abs() < 0.05);
        assert_eq!(max_diff(&dropout(&x, 0.25, None).unwrap(), &x), 0.0);
    }

    #[test]
    fn patchify_round_trips_in_row_major_order() {
        let x = Tensor::arange(0f32, 64.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 8, 8))
            .unwrap();
        let p = patchify(&x, 4).unwrap();
        assert_eq!(p.dims(), &[1, 4, 16]);
        let rows: Vec<Vec<f32>> = p.squeeze(0).unwrap().to_vec2().unwrap();
        // Token 1 is the top-right patch; its first row is pixels 4..8 of image row 0.
        assert_eq!(&rows[1][..4], &[4.0, 5.0, 6.0, 7.0]);
        assert_eq!(rows[2][0], 32.0);
        assert_eq!(max_diff(&unpatchify(&p, 4).unwrap(), &x), 0.0);
    }

    #[test]
    fn sincos_positions_follow_mae() {
        let (g, d) = (3, 8);
        let pos: Vec<Vec<f32>> = sincos_2d(g, d, &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(pos.len(), 1 + g * g);
        assert!(pos[0].iter().all(|&v| v == 0.0));
        // Token (y=1, x=2): first half from x, second from y; ω = 1, 1/100 for d/4 = 2.
        let t = &pos[1 + g + 2];
        let want = [
            2f64.sin(),
            0.02f64.sin(),
            2f64.cos(),
            0.02f64.cos(),
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
        ];
        for (a, b) in t.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6);
        }
        assert!(sincos_2d(2, 6, &Device::Cpu).is_err());
    }

    #[test]
    fn attention_gradient_reaches_every_projection() {
        let mut p = Params::default();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let dev = Device::Cpu;
        let dims = BlockDims {
            dim: 16,
            heads: 2,
            mlp: 32,
            dropout: 0.1,
            qkv_bias: true,
        };
        let block = Block::new(&mut p, &mut rng, &dev, "blk", dims).unwrap();
        let x = randn(&[2, 5, 16], 4);
        let y = block.forward(&x, Some(&mut rng)).unwrap();
        assert_eq!(y.dims(), &[2, 5, 16]);
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in &p.vars {
            let n: f32 = g
                .get(var)
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(n > 0.0, "{name}: zero gradient");
        }
        let bad = BlockDims { heads: 3, ..dims };
        assert!(Block::new(&mut p, &mut rng, &dev, "bad", bad).is_err());
    }
}
