//! Masked autoencoder (He et al. 2022) on single-channel patches: random masking of 75 % of the
//! tokens, the encoder sees only the visible ones, a light decoder reconstructs the masked
//! patches; loss = MSE on masked patches of per-patch-normalised pixels.

use super::layers::{normal, patchify, sincos_2d, Block, Init, LayerNorm, Linear, Params};
use super::vit::{Encoder, VitConfig};
use anyhow::Result;
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

    /// A Hugging Face ViTMAEConfig-like description of the architecture.
    pub fn config_json(&self) -> serde_json::Value {
        let e = &self.encoder;
        serde_json::json!({
            "model_type": "vit_mae",
            "hidden_size": e.dim,
            "num_hidden_layers": e.depth,
            "num_attention_heads": e.heads,
            "intermediate_size": e.dim * e.mlp_ratio,
            "hidden_act": "gelu",
            "hidden_dropout_prob": e.dropout,
            "layer_norm_eps": 1e-6,
            "image_size": e.image_size,
            "patch_size": e.patch_size,
            "num_channels": e.channels,
            "qkv_bias": true,
            "decoder_hidden_size": self.decoder_dim,
            "decoder_num_hidden_layers": self.decoder_depth,
            "decoder_num_attention_heads": self.decoder_heads,
            "decoder_intermediate_size": self.decoder_dim * 4,
            "mask_ratio": self.mask_ratio,
            "norm_pix_loss": self.norm_pix_loss,
            "biodc_embedding": "mean of the patch tokens after vit.layernorm, times biodc.embed_projection (a fixed random orthonormal-column matrix, stored in the checkpoint) when hidden_size != 256, then L2-normalised",
        })
    }
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
    /// A new network with weights drawn from `seed`.
    pub fn new(cfg: &MaeConfig, seed: u64, dev: &Device) -> Result<Mae> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params::default();
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
        let decoder_blocks = (0..cfg.decoder_depth)
            .map(|i| {
                Block::new(
                    &mut p,
                    &mut rng,
                    dev,
                    &format!("decoder.decoder_layers.{i}"),
                    dd,
                    cfg.decoder_heads,
                    dd * 4,
                    0.0,
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

    /// The fixed embedding projection, if any (saved with the weights).
    pub fn projection(&self) -> Option<&Tensor> {
        self.projection.as_ref()
    }

    /// Masked-patch reconstruction loss of a batch `x` (B, 1, S, S) of normalised patches.
    /// Masks are drawn from `rng`; `train` also switches dropout on (from the same RNG).
    pub fn loss(&self, x: &Tensor, rng: &mut ChaCha8Rng, train: bool) -> Result<Tensor> {
        let e = &self.cfg.encoder;
        let (b, n) = (x.dim(0)?, e.tokens());
        let keep = ((n as f32) * (1.0 - self.cfg.mask_ratio)).round().max(1.0) as usize;
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
            let mean = target.mean_keepdim(D::Minus1)?;
            let var = target
                .broadcast_sub(&mean)?
                .sqr()?
                .mean_keepdim(D::Minus1)?;
            target = target
                .broadcast_sub(&mean)?
                .broadcast_div(&(var + 1e-6)?.sqrt()?)?;
        }
        let per_token = (pred - target)?.sqr()?.mean(D::Minus1)?;
        let mask = Tensor::from_vec(masked, (b, n), dev)?;
        Ok((per_token * &mask)?
            .sum_all()?
            .affine(1.0 / (b * (n - keep)) as f64, 0.0)?)
    }

    /// The 256-dim feature of each patch before normalisation: encoder without masking, mean
    /// over patch tokens (order does not matter, so MAE's token shuffle cannot leak in),
    /// projected to 256 dims.
    pub fn pooled(&self, x: &Tensor) -> Result<Tensor> {
        let pooled = self.encoder.features(x, None)?.mean(1)?;
        Ok(match &self.projection {
            Some(p) => pooled.matmul(p)?,
            None => pooled,
        })
    }

    /// One L2-normalised 256-dim vector per patch ([`Mae::pooled`], normalised).
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

/// A (dim × 256) matrix with orthonormal columns when dim ≥ 256 (Gram–Schmidt on Gaussian
/// columns from a fixed seed), so distances between embeddings are kept as well as possible.
fn fixed_projection(dim: usize, dev: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x0062_696f_6463);
    let mut cols: Vec<Vec<f32>> = Vec::with_capacity(EMBED_DIM);
    for _ in 0..EMBED_DIM {
        let mut v: Vec<f32> = (0..dim).map(|_| normal(&mut rng)).collect();
        if cols.len() < dim {
            for c in &cols {
                let dot: f32 = v.iter().zip(c).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
        }
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        cols.push(v.iter().map(|a| a / n).collect());
    }
    let data: Vec<f32> = (0..dim)
        .flat_map(|r| cols.iter().map(move |c| c[r]))
        .collect();
    Ok(Tensor::from_vec(data, (dim, EMBED_DIM), dev)?)
}
