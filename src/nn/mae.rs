//! Masked autoencoder (He et al. 2022) on single-channel patches: random masking of 75 % of the
//! tokens, the encoder sees only the visible ones, a light decoder reconstructs the masked
//! patches; loss = MSE on masked patches of per-patch-normalised pixels.

use super::layers::{
    normal, patchify, sincos_2d, Block, BlockDims, Init, LayerNorm, Linear, Params,
};
use super::vit::{Encoder, VitConfig};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Embedding dimension `embed` returns for every preset.
pub const EMBED_DIM: usize = 256;

/// MAE architecture: the encoder plus a light decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    pub encoder: VitConfig,
    pub decoder_dim: usize,
    pub decoder_depth: usize,
    pub decoder_heads: usize,
    pub mask_ratio: f32,
    pub norm_pix_loss: bool,
}

impl MaeConfig {
    /// The preset `name` (tiny, small, base) with its decoder (tiny: 128 wide, 2 deep).
    pub fn preset(name: &str) -> Result<MaeConfig> {
        let encoder = VitConfig::by_name(name)?;
        let (decoder_dim, decoder_depth, decoder_heads) = match name {
            "tiny" => (128, 2, 4),
            "small" => (256, 4, 8),
            _ => (512, 8, 16),
        };
        Ok(MaeConfig {
            encoder,
            decoder_dim,
            decoder_depth,
            decoder_heads,
            mask_ratio: 0.75,
            norm_pix_loss: true,
        })
    }

    /// Checks the encoder and decoder shapes and the mask ratio.
    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        let dd = self.decoder_dim;
        if self.decoder_depth == 0 || self.decoder_heads == 0 {
            bail!("the decoder needs at least one layer and one head");
        }
        if !dd.is_multiple_of(self.decoder_heads) || !dd.is_multiple_of(4) {
            bail!(
                "decoder width {dd} must be a multiple of 4 and of the number of heads {}",
                self.decoder_heads
            );
        }
        if !(0.0..1.0).contains(&self.mask_ratio) {
            bail!("mask ratio {} must be in [0, 1)", self.mask_ratio);
        }
        if self.encoder.tokens() < 2 {
            bail!("an MAE needs at least 2 patches per image (1 visible, 1 masked)");
        }
        Ok(())
    }

    /// Visible tokens per image under masking: round(N·(1 − r)), at least 1 and at most
    /// N − 1 so the loss always has a masked patch.
    pub fn visible_tokens(&self) -> usize {
        let n = self.encoder.tokens();
        let keep = ((n as f64) * (1.0 - self.mask_ratio as f64)).round() as usize;
        keep.clamp(1, n.saturating_sub(1).max(1))
    }

    /// Number of trainable scalars of the encoder (patch embedding, CLS, blocks, final norm).
    pub fn encoder_param_count(&self) -> usize {
        let e = &self.encoder;
        let pix = e.patch_size * e.patch_size * e.channels;
        e.dim * pix
            + e.dim
            + e.dim
            + e.depth * block_params(e.dim, e.dim * e.mlp_ratio, e.qkv_bias)
            + 2 * e.dim
    }

    /// Number of trainable scalars of the whole MAE (encoder + decoder), from the shapes alone.
    pub fn param_count(&self) -> usize {
        let e = &self.encoder;
        let pix = e.patch_size * e.patch_size * e.channels;
        let dd = self.decoder_dim;
        let decoder = e.dim * dd + dd // decoder_embed
            + dd // mask_token
            + self.decoder_depth * block_params(dd, 4 * dd, e.qkv_bias)
            + 2 * dd // decoder_norm
            + dd * pix + pix; // decoder_pred
        self.encoder_param_count() + decoder
    }

    /// A Hugging Face ViTMAEConfig-like description of the architecture.
    pub fn config_json(&self) -> serde_json::Value {
        let e = &self.encoder;
        serde_json::json!({
            "architectures": ["ViTMAEForPreTraining"],
            "model_type": "vit_mae",
            "hidden_size": e.dim,
            "num_hidden_layers": e.depth,
            "num_attention_heads": e.heads,
            "intermediate_size": e.dim * e.mlp_ratio,
            // candle's `gelu` is the tanh approximation, which is this one in transformers.
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_dropout_prob": decimal(e.dropout),
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-6,
            "image_size": e.image_size,
            "patch_size": e.patch_size,
            "num_channels": e.channels,
            "qkv_bias": e.qkv_bias,
            "decoder_hidden_size": self.decoder_dim,
            "decoder_num_hidden_layers": self.decoder_depth,
            "decoder_num_attention_heads": self.decoder_heads,
            "decoder_intermediate_size": self.decoder_dim * 4,
            "mask_ratio": decimal(self.mask_ratio),
            "norm_pix_loss": self.norm_pix_loss,
            "biodc_embedding": "mean of the patch tokens (CLS excluded) after vit.layernorm, times biodc.embed_projection (a fixed seeded random matrix with orthonormal rows if hidden_size < 256, orthonormal columns if > 256; stored in the checkpoint) when hidden_size != 256, then L2-normalised",
        })
    }
}

/// An f32 as the f64 with the same shortest decimal form (0.1, not 0.10000000149011612).
fn decimal(x: f32) -> f64 {
    format!("{x}").parse().unwrap_or(x as f64)
}

/// Scalars in one transformer block of width `d` and MLP width `mlp`.
fn block_params(d: usize, mlp: usize, qkv_bias: bool) -> usize {
    let norms = 4 * d;
    let qkv = 3 * d * d + if qkv_bias { 3 * d } else { 0 };
    let out = d * d + d;
    let mlp = d * mlp + mlp + mlp * d + d;
    norms + qkv + out + mlp
}

/// The MAE network.
#[derive(Debug, Clone)]
pub struct Mae {
    pub cfg: MaeConfig,
    pub params: Params,
    pub encoder: Encoder,
    decoder_embed: Linear,
    mask_token: Tensor,
    decoder_pos: Tensor,
    decoder_blocks: Vec<Block>,
    decoder_norm: LayerNorm,
    decoder_pred: Linear,
    /// Fixed (dim × 256) projection for embeddings; not trained.
    projection: Option<Tensor>,
}

impl Mae {
    /// A new network with weights drawn from `seed` (Xavier-uniform linears and patch
    /// embedding, normal(0.02) CLS and mask tokens, zero biases, unit layer-norm weights).
    pub fn new(cfg: &MaeConfig, seed: u64, dev: &Device) -> Result<Mae> {
        Mae::build(cfg, seed, false, dev)
    }

    /// A network whose parameters are all zeros, to be filled from a checkpoint (no random
    /// numbers drawn: loading a base model does not pay for 111 M Gaussian samples).
    pub fn zeroed(cfg: &MaeConfig, dev: &Device) -> Result<Mae> {
        Mae::build(cfg, 0, true, dev)
    }

    fn build(cfg: &MaeConfig, seed: u64, skip_init: bool, dev: &Device) -> Result<Mae> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params {
            skip_init,
            ..Params::default()
        };
        let e = &cfg.encoder;
        let encoder = Encoder::new(e, &mut p, &mut rng, dev)?;
        let dd = cfg.decoder_dim;
        let decoder_embed = Linear::new(&mut p, &mut rng, dev, "decoder.decoder_embed", e.dim, dd)?;
        let mask_token = p.make(
            &mut rng,
            dev,
            "decoder.mask_token",
            &[1, 1, dd],
            Init::Normal(0.02),
        )?;
        // The decoder has no dropout: it is thrown away after pretraining.
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| {
                Block::new(
                    &mut p,
                    &mut rng,
                    dev,
                    &format!("decoder.decoder_layers.{i}"),
                    BlockDims {
                        dim: dd,
                        heads: cfg.decoder_heads,
                        mlp: dd * 4,
                        dropout: 0.0,
                        qkv_bias: e.qkv_bias,
                    },
                )
            })
            .collect::<Result<_>>()?;
        let decoder_norm = LayerNorm::new(&mut p, &mut rng, dev, "decoder.decoder_norm", dd)?;
        let out = e.patch_size * e.patch_size * e.channels;
        let decoder_pred = Linear::new(&mut p, &mut rng, dev, "decoder.decoder_pred", dd, out)?;
        let projection = (e.dim != EMBED_DIM)
            .then(|| fixed_projection(e.dim, dev))
            .transpose()?;
        Ok(Mae {
            cfg: cfg.clone(),
            params: p,
            encoder,
            decoder_embed,
            mask_token,
            decoder_pos: sincos_2d(e.grid(), dd, dev)?,
            decoder_blocks,
            decoder_norm,
            decoder_pred,
            projection,
        })
    }

    /// The fixed embedding projection (D × 256), if D ≠ 256 (saved with the weights).
    pub fn projection(&self) -> Option<&Tensor> {
        self.projection.as_ref()
    }

    /// Replaces the embedding projection (by one read from a checkpoint).
    pub fn set_projection(&mut self, p: Tensor) -> Result<()> {
        let want = (self.cfg.encoder.dim, EMBED_DIM);
        if p.dims2()? != want {
            bail!("embedding projection is {:?}, expected {want:?}", p.dims());
        }
        self.projection = Some(p.to_dtype(candle_core::DType::F32)?);
        Ok(())
    }

    /// The decoder's fixed sin-cos position embeddings (1, 1 + N, decoder_dim), written into
    /// checkpoints as `decoder.decoder_pos_embed`.
    pub fn decoder_position_embeddings(&self) -> &Tensor {
        &self.decoder_pos
    }

    /// Masked-patch reconstruction loss of a batch `x` (B, 1, S, S) of normalised patches: the
    /// mean over masked patches of the per-patch MSE between predicted and (with
    /// `norm_pix_loss`) per-patch-standardised pixels, as MAE and transformers' ViT-MAE compute
    /// it. Per sample, a permutation of the tokens is drawn from `rng` and the first
    /// [`MaeConfig::visible_tokens`] of it stay visible (transformers' `noise` argument with
    /// `noise[perm[r]] = r` selects the same tokens). `train` switches the encoder's dropout on,
    /// its masks drawn from the same RNG after the permutations.
    pub fn loss(&self, x: &Tensor, rng: &mut ChaCha8Rng, train: bool) -> Result<Tensor> {
        let e = &self.cfg.encoder;
        let (b, n) = (x.dim(0)?, e.tokens());
        let keep = self.cfg.visible_tokens();
        // Per sample: a random permutation; the first `keep` tokens stay visible.
        let mut keep_idx = Vec::with_capacity(b * keep);
        let mut restore = Vec::with_capacity(b * n);
        let mut masked = vec![1f32; b * n];
        for s in 0..b {
            let mut perm: Vec<u32> = (0..n as u32).collect();
            perm.shuffle(rng);
            let mut inverse = vec![0u32; n];
            for (rank, &tok) in perm.iter().enumerate() {
                inverse[tok as usize] = rank as u32;
            }
            for &tok in &perm[..keep] {
                keep_idx.push((s * n) as u32 + tok);
                masked[s * n + tok as usize] = 0.0;
            }
            restore.extend(inverse.iter().map(|&r| (s * n) as u32 + r));
        }
        let dev = x.device();
        let tokens = self.encoder.embed_patches(x)?;
        let d = e.dim;
        let visible = tokens
            .reshape((b * n, d))?
            .index_select(&Tensor::from_vec(keep_idx, b * keep, dev)?, 0)?
            .reshape((b, keep, d))?;
        let dropout_rng = if train { Some(&mut *rng) } else { None };
        let latent = self.encoder.encode(&visible, dropout_rng)?;
        let dd = self.cfg.decoder_dim;
        let y = self.decoder_embed.forward(&latent)?;
        let cls = y.narrow(1, 0, 1)?;
        let vis = y.narrow(1, 1, keep)?;
        let mask_tokens = self
            .mask_token
            .broadcast_as((b, n - keep, dd))?
            .contiguous()?;
        let shuffled = Tensor::cat(&[&vis, &mask_tokens], 1)?.reshape((b * n, dd))?;
        let ordered = shuffled
            .index_select(&Tensor::from_vec(restore, b * n, dev)?, 0)?
            .reshape((b, n, dd))?;
        let mut h = Tensor::cat(&[&cls, &ordered], 1)?.broadcast_add(&self.decoder_pos)?;
        for block in &self.decoder_blocks {
            h = block.forward(&h, None)?;
        }
        let pred = self
            .decoder_pred
            .forward(&self.decoder_norm.forward(&h)?)?
            .narrow(1, 1, n)?;
        let mut target = patchify(x, e.patch_size)?;
        if self.cfg.norm_pix_loss {
            // As MAE and transformers: unbiased variance (torch's `var` default), eps 1e-6.
            let pix = target.dim(D::Minus1)?;
            let mean = target.mean_keepdim(D::Minus1)?;
            let centred = target.broadcast_sub(&mean)?;
            let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (pix.max(2) - 1) as f64)?;
            target = centred.broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        }
        let per_token = (pred - target)?.sqr()?.mean(D::Minus1)?;
        let mask = Tensor::from_vec(masked, (b, n), dev)?;
        Ok((per_token * &mask)?
            .sum_all()?
            .affine(1.0 / (b * (n - keep)) as f64, 0.0)?)
    }

    /// The 256-dim feature of each patch before normalisation: the encoder without masking
    /// and without shuffling, mean over the patch tokens (CLS excluded; a mean does not depend
    /// on token order, so MAE's shuffle trap cannot leak in), times the embedding projection
    /// when D ≠ 256. (B, 256). Deterministic: no dropout.
    pub fn pooled(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = self.encoder.features_inference(x)?.mean(1)?;
        Ok(match &self.projection {
            Some(p) => pooled.matmul(p)?,
            None => pooled,
        })
    }

    /// One L2-normalised 256-dim vector per image: [`Mae::pooled`], rows scaled to unit length.
    /// (B, 1, S, S) → (B, 256).
    ///
    /// The projection to 256 dims is fixed, not learned: MAE's loss never sees the embedding,
    /// so a "learned" projection would only ever be its random initialisation, tied to the
    /// training seed. Instead it is drawn once from a constant seed and orthonormalised — rows
    /// orthonormal when D < 256 (an exact isometry: cosines between embeddings equal cosines
    /// between pooled features), columns orthonormal when D > 256 (a random orthogonal
    /// projection that keeps distances as well as any fixed linear map can). It is written into
    /// every checkpoint as `biodc.embed_projection` and read back from it, so an embedding can
    /// be recomputed from the checkpoint alone.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.pooled(x)?)
    }
}

/// Rows scaled to unit length.
pub fn l2_normalize(v: &Tensor) -> Result<Tensor> {
    let norm = v
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(v.broadcast_div(&norm)?)
}

/// The fixed (dim × 256) embedding projection: Gaussian entries from a constant seed, then
/// Gram–Schmidt (twice, in f64) on the rows when dim ≤ 256 or on the columns when dim > 256.
pub fn fixed_projection(dim: usize, dev: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x62_696f_6463);
    let (count, len) = if dim <= EMBED_DIM {
        (dim, EMBED_DIM)
    } else {
        (EMBED_DIM, dim)
    };
    let mut vecs: Vec<Vec<f64>> = Vec::with_capacity(count);
    for _ in 0..count {
        let mut v: Vec<f64> = (0..len).map(|_| normal(&mut rng) as f64).collect();
        for _ in 0..2 {
            for u in &vecs {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        vecs.push(v.iter().map(|a| a / n).collect());
    }
    let data: Vec<f32> = if dim <= EMBED_DIM {
        vecs.iter().flatten().map(|&a| a as f32).collect()
    } else {
        (0..dim)
            .flat_map(|r| vecs.iter().map(move |c| c[r] as f32))
            .collect()
    };
    Ok(Tensor::from_vec(data, (dim, EMBED_DIM), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dim: usize) -> MaeConfig {
        let mut c = MaeConfig::preset("tiny").unwrap();
        c.encoder = VitConfig {
            dim,
            heads: 2,
            depth: 1,
            mlp_ratio: 2,
            ..c.encoder.with_image_size(32).unwrap()
        };
        c.encoder.patch_size = 8;
        c.decoder_dim = 16;
        c.decoder_depth = 1;
        c.decoder_heads = 2;
        c
    }

    #[test]
    fn presets_and_param_counts() {
        for name in ["tiny", "small", "base"] {
            let c = MaeConfig::preset(name).unwrap();
            c.validate().unwrap();
            assert_eq!(c.encoder, VitConfig::by_name(name).unwrap());
        }
        assert!(MaeConfig::preset("huge").is_err());
        // ViT-B/16 on one channel; with 3 channels, the fixed position embeddings and a
        // 1000-class head this is the usual 86,567,656.
        let base = MaeConfig::preset("base").unwrap();
        assert_eq!(base.encoder_param_count(), 85_254_144);
        for dim in [48, 256, 320] {
            let c = cfg(dim);
            let m = Mae::new(&c, 0, &Device::Cpu).unwrap();
            assert_eq!(m.params.count(), c.param_count(), "dim {dim}");
            let enc: usize = m
                .params
                .vars
                .iter()
                .filter(|(k, _)| k.starts_with("vit."))
                .map(|(_, v)| v.elem_count())
                .sum();
            assert_eq!(enc, c.encoder_param_count());
        }
    }

    #[test]
    fn projection_keeps_geometry() {
        for dim in [48, 192, 384] {
            let p: Vec<Vec<f32>> = fixed_projection(dim, &Device::Cpu)
                .unwrap()
                .to_vec2()
                .unwrap();
            // Orthonormal rows (dim ≤ 256) or columns (dim > 256).
            let (k, get): (usize, Box<dyn Fn(usize, usize) -> f32>) = if dim <= EMBED_DIM {
                (dim, Box::new(|i, j| p[i][j]))
            } else {
                (EMBED_DIM, Box::new(|i, j| p[j][i]))
            };
            let len = if dim <= EMBED_DIM { EMBED_DIM } else { dim };
            for a in 0..k {
                for b in [0, a / 2, a] {
                    let dot: f32 = (0..len).map(|t| get(a, t) * get(b, t)).sum();
                    let want = if a == b { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-5, "dim {dim} ({a},{b}): {dot}");
                }
            }
        }
    }

    #[test]
    fn visible_tokens_leave_one_masked() {
        let mut c = cfg(48);
        assert_eq!(c.encoder.tokens(), 16);
        assert_eq!(c.visible_tokens(), 4);
        c.mask_ratio = 0.0;
        assert_eq!(c.visible_tokens(), 15);
        c.mask_ratio = 0.99;
        assert_eq!(c.visible_tokens(), 1);
        c.mask_ratio = 1.0;
        assert!(c.validate().is_err());
        let mut c = cfg(48);
        c.mask_ratio = 0.0;
        let m = Mae::new(&c, 0, &Device::Cpu).unwrap();
        let x = Tensor::ones((2, 1, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let l = m
            .loss(&x, &mut rng, true)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(l.is_finite());
    }

    #[test]
    fn wrong_image_size_is_a_clear_error() {
        let m = Mae::new(&cfg(48), 0, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 1, 64, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = m.embed(&x).unwrap_err().to_string();
        assert!(err.contains("(B, 1, 32, 32)"), "{err}");
    }
}
