//! Turning stored tiles into network input.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Per-patch standardisation: (x − mean) / std, computed in f64 over the finite pixels, so it
/// is the same for 8-bit, 16-bit and float data and intensity scale differences between stacks
/// vanish. A constant patch (std below 1e-6 of its level) becomes zeros; NaN and ±∞ pixels
/// become 0 (the patch mean) instead of poisoning a whole batch.
pub fn normalize_patch(pixels: &[f32]) -> Vec<f32> {
    let finite = || pixels.iter().filter(|p| p.is_finite()).map(|&p| p as f64);
    let count = finite().count();
    if count == 0 {
        return vec![0.0; pixels.len()];
    }
    let n = count as f64;
    let mean = finite().sum::<f64>() / n;
    let var = finite().map(|p| (p - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    if std < 1e-6 * mean.abs().max(1.0) {
        return vec![0.0; pixels.len()];
    }
    pixels
        .iter()
        .map(|&p| {
            if p.is_finite() {
                ((p as f64 - mean) / std) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// Stacks normalised `size`×`size` patches into a (B, 1, size, size) tensor.
pub fn batch(patches: &[Vec<f32>], size: usize, dev: &Device) -> Result<Tensor> {
    if let Some((i, p)) = patches
        .iter()
        .enumerate()
        .find(|(_, p)| p.len() != size * size)
    {
        anyhow::bail!(
            "patch {i} of the batch has {} pixels, expected {size}×{size}",
            p.len()
        );
    }
    let data: Vec<f32> = patches.iter().flat_map(|p| p.iter().copied()).collect();
    Ok(Tensor::from_vec(data, (patches.len(), 1, size, size), dev)?)
}

/// Random augmentation of one normalised image and its mask (both `size`×`size`, row-major),
/// drawn from `rng`: one of the 8 flips/90° rotations (applied to both), then an intensity
/// jitter of the image (gain 0.8–1.2, offset ±0.2 in units of the patch's standard deviation).
pub fn augment(
    img: &[f32],
    mask: &[f32],
    size: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<f32>) {
    let rot: u8 = rng.random_range(0..4);
    let flip: bool = rng.random();
    let gain: f32 = rng.random_range(0.8..1.2);
    let offset: f32 = rng.random_range(-0.2..0.2);
    let n = size - 1;
    let source = |y: usize, x: usize| -> usize {
        let (y, x) = if flip { (y, n - x) } else { (y, x) };
        let (sy, sx) = match rot {
            0 => (y, x),
            1 => (x, n - y),
            2 => (n - y, n - x),
            _ => (n - x, y),
        };
        sy * size + sx
    };
    let mut out_img = Vec::with_capacity(size * size);
    let mut out_mask = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let i = source(y, x);
            out_img.push(img[i] * gain + offset);
            out_mask.push(mask[i]);
        }
    }
    (out_img, out_mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_std(v: &[f32]) -> (f64, f64) {
        let n = v.len() as f64;
        let m = v.iter().map(|&a| a as f64).sum::<f64>() / n;
        let s = (v.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / n).sqrt();
        (m, s)
    }

    #[test]
    fn standardises_any_bit_depth() {
        // 16-bit range, 8-bit range and small floats give the same normalised patch.
        let base: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32).collect();
        let u16ish: Vec<f32> = base.iter().map(|v| 20_000.0 + 400.0 * v).collect();
        let floats: Vec<f32> = base.iter().map(|v| 1e-3 * v).collect();
        let a = normalize_patch(&base);
        let (m, s) = mean_std(&a);
        assert!(m.abs() < 1e-6 && (s - 1.0).abs() < 1e-5, "{m} {s}");
        for other in [normalize_patch(&u16ish), normalize_patch(&floats)] {
            for (x, y) in a.iter().zip(&other) {
                assert!((x - y).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn constant_and_broken_patches() {
        assert_eq!(normalize_patch(&[65535.0; 16]), vec![0.0; 16]);
        assert_eq!(normalize_patch(&[0.0; 16]), vec![0.0; 16]);
        assert_eq!(normalize_patch(&[f32::NAN; 4]), vec![0.0; 4]);
        let v = normalize_patch(&[1.0, f32::NAN, 3.0, f32::INFINITY]);
        assert_eq!(v, vec![-1.0, 0.0, 1.0, 0.0]);
        assert!(normalize_patch(&[]).is_empty());
    }

    #[test]
    fn augmentation_moves_image_and_mask_together() {
        use rand::SeedableRng;
        let size = 5;
        let img: Vec<f32> = (0..25).map(|i| i as f32).collect();
        let mask: Vec<f32> = (0..25).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let (a, m) = augment(&img, &mask, size, &mut rng);
            // A positive gain keeps the order of intensities: sorting recovers which source
            // pixel went where, and the mask must have moved the same way.
            let mut order: Vec<usize> = (0..25).collect();
            order.sort_by(|&i, &j| a[i].partial_cmp(&a[j]).unwrap());
            for (rank, &i) in order.iter().enumerate() {
                assert_eq!(m[i], mask[rank], "mask moved differently from the image");
            }
            seen.insert(order);
        }
        assert_eq!(seen.len(), 8, "all 8 flips/rotations occur");
    }

    #[test]
    fn batch_checks_sizes() {
        let t = batch(&[vec![0.0; 16], vec![1.0; 16]], 4, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[2, 1, 4, 4]);
        assert!(batch(&[vec![0.0; 15]], 4, &Device::Cpu).is_err());
    }
}
