//! The ViT encoder (patch 16 on single-channel patches), named as Hugging Face's ViT-MAE names
//! its tensors so a biodc encoder loads in Python too.

use super::layers::{patchify, sincos_2d, Block, BlockDims, Init, LayerNorm, Params};
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
    /// Whether query, key and value projections have biases (Hugging Face's `qkv_bias`).
    #[serde(default = "yes")]
    pub qkv_bias: bool,
}

fn yes() -> bool {
    true
}

impl VitConfig {
    /// dim 192, depth 4, 3 heads (1.83 M parameters): on the 2-core development machine, MAE
    /// training runs at ≈ 20–30 images/s and embedding at ≈ 55–95 images/s (224², batch 8).
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
            qkv_bias: true,
        }
    }

    /// dim 384, depth 12, 6 heads (ViT-S/16, 21.4 M parameters; ≈ 4 images/s training on
    /// 2 cores).
    pub fn small() -> VitConfig {
        VitConfig {
            dim: 384,
            depth: 12,
            heads: 6,
            ..VitConfig::tiny()
        }
    }

    /// dim 768, depth 12, 12 heads (ViT-B/16, the seed paper's encoder; 85.3 M parameters,
    /// ≈ 1 image/s training on 2 cores: for a GPU).
    pub fn base() -> VitConfig {
        VitConfig {
            dim: 768,
            depth: 12,
            heads: 12,
            ..VitConfig::tiny()
        }
    }

    /// The preset called `name`: `tiny`, `small` or `base`.
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

    /// Checks that the numbers fit together (patch grid, heads, sin-cos positions).
    pub fn validate(&self) -> Result<()> {
        let ok = self.patch_size > 0
            && self.image_size >= self.patch_size
            && self.image_size.is_multiple_of(self.patch_size);
        if !ok {
            bail!(
                "image size {} is not a positive multiple of the patch size {}",
                self.image_size,
                self.patch_size
            );
        }
        if self.channels == 0 || self.depth == 0 || self.mlp_ratio == 0 {
            bail!("channels, depth and mlp_ratio must be positive");
        }
        if self.heads == 0 || !self.dim.is_multiple_of(self.heads) || !self.dim.is_multiple_of(4) {
            bail!(
                "width {} must be a multiple of 4 and of the number of heads {}",
                self.dim,
                self.heads
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("dropout {} must be in [0, 1)", self.dropout);
        }
        Ok(())
    }

    /// Number of patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patch tokens (CLS not counted).
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
    /// A new encoder, its parameters registered in `p` under Hugging Face ViT-MAE names
    /// (`vit.embeddings…`, `vit.encoder.layer.{i}…`, `vit.layernorm`) and drawn from `rng`.
    pub fn new(
        cfg: &VitConfig,
        p: &mut Params,
        rng: &mut ChaCha8Rng,
        dev: &Device,
    ) -> Result<Encoder> {
        cfg.validate()?;
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
                    BlockDims {
                        dim: d,
                        heads: cfg.heads,
                        mlp: d * cfg.mlp_ratio,
                        dropout: cfg.dropout,
                        qkv_bias: cfg.qkv_bias,
                    },
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

    /// The fixed sin-cos position embeddings, CLS row (zeros) first: (1, 1 + N, D). Not
    /// trained; written into checkpoints as `vit.embeddings.position_embeddings`, as Hugging
    /// Face stores them.
    pub fn position_embeddings(&self) -> &Tensor {
        &self.pos
    }

    /// (B, C, S, S) → patch tokens with positions added: (B, N, D). One matrix product over all
    /// patches (the same as a convolution with stride = patch size).
    pub fn embed_patches(&self, x: &Tensor) -> Result<Tensor> {
        let (d, ps) = (self.cfg.dim, self.cfg.patch_size);
        let (_, c, h, w) = x.dims4()?;
        let s = self.cfg.image_size;
        if (c, h, w) != (self.cfg.channels, s, s) {
            bail!(
                "the encoder takes (B, {}, {s}, {s}) images, got {:?}",
                self.cfg.channels,
                x.dims()
            );
        }
        let patches = patchify(x, ps)?;
        let (b, n, k) = patches.dims3()?;
        let w = self.proj_w.reshape((d, k))?;
        let t = super::linear_op::linear(&patches.reshape((b * n, k))?, &w, Some(&self.proj_b))?
            .reshape((b, n, d))?;
        Ok(t.broadcast_add(&self.pos.narrow(1, 1, n)?)?)
    }

    /// Runs CLS + `tokens` (positions already added) through the blocks and the final norm:
    /// (B, 1 + n, D). `rng` switches the dropout sites on.
    pub fn encode(&self, tokens: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        self.encode_with(tokens, rng, false)
    }

    /// [`Self::encode`]; with `detach`, each block starts from a detached copy of the last
    /// block's output (inference only: no gradient flows back through it).
    fn encode_with(
        &self,
        tokens: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
        detach: bool,
    ) -> Result<Tensor> {
        let b = tokens.dim(0)?;
        let cls = (self.cls.clone() + self.pos.narrow(1, 0, 1)?)?
            .broadcast_as((b, 1, self.cfg.dim))?
            .contiguous()?;
        let mut x = Tensor::cat(&[&cls, tokens], 1)?;
        for block in &self.blocks {
            if detach {
                x = x.detach();
            }
            x = block.forward(&x, rng.as_deref_mut())?;
        }
        self.norm.forward(&x)
    }

    /// [`Self::features`] for inference (no dropout, no gradients). The weights are variables,
    /// so candle records every operation for backpropagation and each output keeps its inputs
    /// alive: through all blocks, a batch of 32 ViT-S patches held ~6 GB that the kernel had
    /// to fault in and zero again for every batch. Cut after each block, at most one block's
    /// activations are alive; the values are the same bit for bit.
    pub fn features_inference(&self, x: &Tensor) -> Result<Tensor> {
        let t = self.encode_with(&self.embed_patches(x)?.detach(), None, true)?;
        let n = t.dim(1)? - 1;
        Ok(t.narrow(1, 1, n)?)
    }

    /// Features of every patch token after the final layer norm, no masking, no shuffling:
    /// (B, N, D), tokens in row-major patch order (CLS dropped). With `rng` the dropout sites
    /// are on (Monte-Carlo dropout, masks drawn from that RNG); with `None` it is deterministic.
    pub fn features(&self, x: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let t = self.encode(&self.embed_patches(x)?, rng)?;
        let n = t.dim(1)? - 1;
        Ok(t.narrow(1, 1, n)?)
    }
}
