//! Neural networks in candle: the ViT encoder, the masked autoencoder, checkpoints, training.

pub mod checkpoint;
pub mod data;
pub mod layers;
pub mod mae;
pub mod train;
pub mod vit;
