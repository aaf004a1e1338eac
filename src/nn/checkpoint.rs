//! Checkpoints as safetensors bytes: deterministic (names sorted, no metadata, no timestamps),
//! so the same weights always give the same object hash.
//!
//! A checkpoint holds every trainable tensor under its Hugging Face ViT-MAE name, plus the
//! fixed tensors a Python user needs to run the encoder elsewhere: the sin-cos position
//! embeddings (`vit.embeddings.position_embeddings`, `decoder.decoder_pos_embed`, as
//! transformers stores them) and biodc's embedding projection (`biodc.embed_projection`).
//! With [`config_json`] written beside it as `config.json`, transformers'
//! `ViTMAEForPreTraining.from_pretrained` loads it (biodc's extra tensor is reported unused);
//! checked with transformers 5.24: same encoder features to 1e-6 and the same MAE loss for the
//! same masks to 1e-7 (`export_for_hugging_face` in tests/nn.rs has the script). For
//! embeddings in Python, pass `mask_ratio=0.0` and an ascending `noise` (else transformers
//! shuffles the tokens), mean the patch tokens and apply `biodc.embed_projection`.

use super::mae::{Mae, MaeConfig};
use anyhow::{anyhow, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Name of the fixed embedding projection inside a checkpoint.
pub const PROJECTION: &str = "biodc.embed_projection";
/// Name of the encoder's fixed position embeddings inside a checkpoint.
pub const POSITIONS: &str = "vit.embeddings.position_embeddings";
/// Name of the decoder's fixed position embeddings inside a checkpoint.
pub const DECODER_POSITIONS: &str = "decoder.decoder_pos_embed";

/// Safetensors bytes of `tensors`, in name order, without metadata.
pub fn to_safetensors(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| anyhow!("safetensors: {e}"))
}

/// The tensors in safetensors `bytes`, on `dev`.
pub fn from_safetensors(bytes: &[u8], dev: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, dev).map_err(|e| anyhow!("safetensors: {e}"))
}

/// The weights of `mae` with its fixed position embeddings and embedding projection, as
/// deterministic safetensors bytes.
pub fn weights_to_safetensors(mae: &Mae) -> Result<Vec<u8>> {
    let mut t: BTreeMap<String, Tensor> = mae
        .params
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    t.insert(POSITIONS.into(), mae.encoder.position_embeddings().clone());
    t.insert(
        DECODER_POSITIONS.into(),
        mae.decoder_position_embeddings().clone(),
    );
    if let Some(p) = mae.projection() {
        t.insert(PROJECTION.into(), p.clone());
    }
    to_safetensors(&t)
}

/// Same as [`weights_to_safetensors`] (the name the stages use).
pub fn weights(mae: &Mae) -> Result<Vec<u8>> {
    weights_to_safetensors(mae)
}

/// An MAE of architecture `cfg` with the weights in `bytes`. Every trainable tensor must be
/// present with the right shape; the embedding projection is taken from the checkpoint when
/// it has one (so embeddings are exactly those of the run that wrote it). The position
/// embeddings are recomputed from `cfg` (they are fixed), which lets a model trained on one
/// patch size run on another.
pub fn load(cfg: &MaeConfig, bytes: &[u8], dev: &Device) -> Result<Mae> {
    let mut mae = Mae::zeroed(cfg, dev)?;
    let tensors = from_safetensors(bytes, dev)?;
    mae.params.load(&tensors)?;
    if let Some(p) = tensors.get(PROJECTION) {
        if cfg.encoder.dim != super::mae::EMBED_DIM {
            mae.set_projection(p.clone())?;
        }
    }
    Ok(mae)
}

/// A Hugging Face ViTMAEConfig-like `config.json` for `cfg` (hidden_size, num_hidden_layers,
/// num_attention_heads, intermediate_size, image_size, patch_size, num_channels, decoder_*,
/// mask_ratio, norm_pix_loss, …).
pub fn config_json(cfg: &MaeConfig) -> serde_json::Value {
    cfg.config_json()
}

/// The device to run on: CPU, or the first CUDA GPU when built with `--features cuda` and asked.
pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        #[cfg(feature = "cuda")]
        return Ok(Device::new_cuda(0)?);
        #[cfg(not(feature = "cuda"))]
        anyhow::bail!("this biodc was built without the `cuda` feature");
    }
    Ok(Device::Cpu)
}

/// Makes candle's element-wise CPU operations run on the calling thread (sets
/// `CANDLE_NUM_THREADS=1` unless the user set it). Matrix products and this crate's fused
/// kernels still use every core through rayon.
///
/// Why: candle 0.11 runs element-wise operations on its own pool whose worker spins after each
/// operation and whose caller spins until the worker is done. On 2 cores that spinner took
/// ~30 % of all CPU samples of a training step, and when another process held a core a step
/// ran 3–4× slower (8 instead of ~28 images/s); with this setting the same step is as fast or
/// faster and stays fast under load. Call it at the start of `main`, before any other thread
/// exists and before the first tensor operation (candle reads the variable once).
pub fn prefer_rayon_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
