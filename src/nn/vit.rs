//! The ViT encoder (patch 16 on single-channel patches), named as Hugging Face's ViT-MAE names
//! its tensors so a biodc encoder loads in Python too.

use super::layers::{patchify, sincos_2d, Block, Init, LayerNorm, Params};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Encoder architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    /// Drop probability at the dropout sites (used in training and for MC dropout).
    pub dropout: f32,
}

impl VitConfig {
    /// dim 192, depth 4, 3 heads: trains on 2 CPU cores in minutes.
    pub fn tiny() -> VitConfig {
        VitConfig {
            image_size: 224,
            patch_size: 16,
            channels: 1,
            dim: 192,
            depth: 4,
            heads: 3,
            mlp_ratio: 4,
            dropout: 0.1,
        }
    }

    /// dim 384, depth 12, 6 heads (ViT-S/16).
    pub fn small() -> VitConfig {
        VitConfig {
            dim: 384,
            depth: 12,
            heads: 6,
            ..VitConfig::tiny()
        }
    }

    /// dim 768, depth 12, 12 heads (ViT-B/16, the seed paper's encoder).
    pub fn base() -> VitConfig {
        VitConfig {
            dim: 768,
            depth: 12,
            heads: 12,
            ..VitConfig::tiny()
        }
    }

    pub fn by_name(name: &str) -> Result<VitConfig> {
        Ok(match name {
            "tiny" => VitConfig::tiny(),
            "small" => VitConfig::small(),
            "base" => VitConfig::base(),
            other => bail!("unknown preset {other:?} (tiny, small, base)"),
        })
    }

    /// The same architecture on `size`×`size` patches (a multiple of the patch size).
    pub fn with_image_size(mut self, size: usize) -> Result<VitConfig> {
        if !size.is_multiple_of(self.patch_size) || size == 0 {
            bail!(
                "patch edge {size} is not a multiple of the ViT patch size {}",
                self.patch_size
            );
        }
        self.image_size = size;
        Ok(self)
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// The encoder: patch embedding + fixed sin-cos positions + CLS + pre-norm blocks + final norm.
#[derive(Debug, Clone)]
pub struct Encoder {
    pub cfg: VitConfig,
    proj_w: Tensor,
    proj_b: Tensor,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
}

impl Encoder {
    pub fn new(
        cfg: &VitConfig,
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
    ) -> Result<Encoder> {
        let (d, ps, c) = (cfg.dim, cfg.patch_size, cfg.channels);
        let proj_w = p.make(
            rng,
            dev,
            "vit.embeddings.patch_embeddings.projection.weight",
            &[d, c, ps, ps],
            Init::Xavier,
        )?;
        let proj_b = p.make(
            rng,
            dev,
            "vit.embeddings.patch_embeddings.projection.bias",
            &[d],
            Init::Zeros,
        )?;
        let cls = p.make(
            rng,
            dev,
            "vit.embeddings.cls_token",
            &[1, 1, d],
            Init::Normal(0.02),
        )?;
        let blocks = (0..cfg.depth)
            .map(|i| {
                Block::new(
                    p,
                    rng,
                    dev,
                    &format!("vit.encoder.layer.{i}"),
                    d,
                    cfg.heads,
                    d * cfg.mlp_ratio,
                    cfg.dropout,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Encoder {
            cfg: cfg.clone(),
            proj_w,
            proj_b,
            cls,
            pos: sincos_2d(cfg.grid(), d, dev)?,
            blocks,
            norm: LayerNorm::new(p, rng, dev, "vit.layernorm", d)?,
        })
    }

    /// (B, 1, S, S) → patch tokens with positions added: (B, N, D).
    pub fn embed_patches(&self, x: &Tensor) -> Result<Tensor> {
        let (d, ps) = (self.cfg.dim, self.cfg.patch_size);
        let patches = patchify(x, ps)?;
        let (b, n, k) = patches.dims3()?;
        let w = self.proj_w.reshape((d, k))?;
        let t = patches
            .reshape((b * n, k))?
            .matmul(&w.t()?)?
            .broadcast_add(&self.proj_b)?
            .reshape((b, n, d))?;
        Ok(t.broadcast_add(&self.pos.narrow(1, 1, n)?)?)
    }

    /// Runs CLS + `tokens` (positions already added) through the blocks and the final norm:
    /// (B, 1 + n, D). `rng` switches the dropout sites on.
    pub fn encode(&self, tokens: &Tensor, mut rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let b = tokens.dim(0)?;
        let cls = (self.cls.clone() + self.pos.narrow(1, 0, 1)?)?
            .broadcast_as((b, 1, self.cfg.dim))?
            .contiguous()?;
        let mut x = Tensor::cat(&[&cls, tokens], 1)?;
        for block in &self.blocks {
            x = block.forward(&x, rng.as_deref_mut())?;
        }
        self.norm.forward(&x)
    }

    /// Features of every patch token, no masking, no shuffling: (B, N, D).
    pub fn features(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let t = self.encode(&self.embed_patches(x)?, rng)?;
        let n = t.dim(1)? - 1;
        Ok(t.narrow(1, 1, n)?)
    }
}
