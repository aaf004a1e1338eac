//! Neural networks in candle: the ViT encoder, the masked autoencoder, checkpoints, training.
//!
//! - [`vit`]: `VitConfig` (presets tiny/small/base) and the ViT `Encoder`.
//! - [`mae`]: `MaeConfig`, `Mae` with `loss` (masked-patch MSE) and `embed` (B × 256, unit rows).
//! - [`train`]: `Trainer` (AdamW, warm-up + cosine LR) with bit-exact `save_state`/`load_state`.
//! - [`checkpoint`]: deterministic safetensors bytes, `load`, a Hugging Face-like config, `device`.
//! - [`data`]: per-patch normalisation and batching.
//! - [`layers`], [`ops`], [`linear_op`]: building blocks and fused CPU kernels with gradients.
//!
//! Pure library: bytes in, bytes out, no file I/O. Every random number (initial weights, masks,
//! dropout) comes from a seeded ChaCha RNG, never from candle's unseedable CPU generator; tensor
//! names follow Hugging Face's ViT-MAE so checkpoints load in Python.

pub mod adamw_step;
pub mod checkpoint;
pub mod conv;
pub mod conv3x3;
pub mod data;
pub mod device;
pub mod group_norm;
pub mod layers;
pub mod linear_op;
pub mod loss;
pub mod mae;
pub mod onnx;
pub mod ops;
pub mod segmenter;
#[cfg(test)]
mod test_util;
pub mod train;
pub mod transunet;
pub mod unet;
pub mod unet_step;
pub mod vit;
