//! Turning stored tiles into network input.

use anyhow::Result;
use candle_core::{Device, Tensor};

/// Per-patch standardisation: (x − mean) / std; a constant patch becomes zeros. Works the same
/// for 8-bit, 16-bit and float data, so intensity scale differences between stacks vanish.
pub fn normalize_patch(pixels: &[f32]) -> Vec<f32> {
    let n = pixels.len().max(1) as f64;
    let mean = pixels.iter().map(|&p| p as f64).sum::<f64>() / n;
    let var = pixels
        .iter()
        .map(|&p| (p as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let std = var.sqrt();
    if std < 1e-6 * mean.abs().max(1.0) {
        return vec![0.0; pixels.len()];
    }
    pixels
        .iter()
        .map(|&p| ((p as f64 - mean) / std) as f32)
        .collect()
}

/// Stacks normalised `size`×`size` patches into a (B, 1, size, size) tensor.
pub fn batch(patches: &[Vec<f32>], size: usize, dev: &Device) -> Result<Tensor> {
    let data: Vec<f32> = patches.iter().flat_map(|p| p.iter().copied()).collect();
    Ok(Tensor::from_vec(data, (patches.len(), 1, size, size), dev)?)
}
