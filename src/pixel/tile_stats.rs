//! Statistics of one tile that qc compares across a cohort: blank, saturation, sharpness,
//! signal-to-noise, tubularity, and a thumbnail for pixel-level duplicate checks.

use crate::io::{Dtype, Plane};

/// Thumbnail edge for the pixel check: blocks of (size / 32)² pixels average the noise away
/// and keep vessel-scale structure; a background-only thumbnail is noise and correlates with
/// nothing.
pub const THUMB: usize = 32;

/// Per-tile statistics.
#[derive(Debug, Clone)]
pub struct TileStats {
    pub blank: bool,
    pub saturated: f64,
    /// log of var(Laplacian) / var(image): sharpness independent of contrast.
    pub log_sharpness: f64,
    /// log of (p99 − median) / noise σ (Immerkær's estimator).
    pub log_snr: f64,
    /// Mean Hessian anisotropy |λ₁ − λ₂| / (|λ₁| + |λ₂|) over the brightest 10 % of the
    /// smoothed patch: high for tubes, low for blobs and other non-vessel textures.
    pub tubularity: f64,
    /// Block means on a [`THUMB`]² grid, centred and scaled to unit length (zeros when flat).
    pub thumb: Vec<f64>,
}

pub fn tile_stats(plane: &Plane, size: usize) -> TileStats {
    let v = plane.to_f32();
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let range = match plane.dtype() {
        Dtype::U8 => 255.0,
        Dtype::U16 => 65535.0,
        Dtype::F32 => v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0) as f64,
    };
    let blank = var.sqrt() <= 1e-6 * range.max(mean.abs());
    let saturated = match plane.dtype() {
        Dtype::F32 => 0.0,
        _ => v.iter().filter(|&&x| x as f64 >= range).count() as f64 / n,
    };
    let (mut lap_sum, mut lap_sq, mut noise_abs) = (0f64, 0f64, 0f64);
    let at = |y: usize, x: usize| v[y * size + x] as f64;
    for y in 1..size - 1 {
        for x in 1..size - 1 {
            let lap = at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1) - 4.0 * at(y, x);
            lap_sum += lap;
            lap_sq += lap * lap;
            let diag = at(y - 1, x - 1) + at(y - 1, x + 1) + at(y + 1, x - 1) + at(y + 1, x + 1);
            noise_abs += (diag - 2.0 * (at(y - 1, x) + at(y + 1, x) + at(y, x - 1) + at(y, x + 1))
                + 4.0 * at(y, x))
            .abs();
        }
    }
    let m = ((size - 2) * (size - 2)) as f64;
    let lap_var = lap_sq / m - (lap_sum / m).powi(2);
    let sigma = (std::f64::consts::PI / 2.0).sqrt() * noise_abs / (6.0 * m);
    let mut sorted = v.clone();
    sorted.sort_by(f32::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize] as f64;
    TileStats {
        tubularity: tubularity(&v, size),
        blank,
        saturated,
        log_sharpness: ((lap_var + 1e-12) / (var + 1e-12)).ln(),
        log_snr: ((q(0.99) - q(0.5)).max(1e-12) / sigma.max(1e-12)).ln(),
        thumb: thumbnail(&v, size),
    }
}

/// See [`TileStats::thumb`].
pub fn thumbnail(v: &[f32], size: usize) -> Vec<f64> {
    let mut out: Vec<f64> = super::block_means(v, size, size, THUMB.min(size))
        .into_iter()
        .map(f64::from)
        .collect();
    let mean = out.iter().sum::<f64>() / out.len() as f64;
    out.iter_mut().for_each(|p| *p -= mean);
    let norm = out.iter().map(|p| p * p).sum::<f64>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|p| *p /= norm);
    }
    out
}

/// Pearson correlation of two thumbnails (0 when either is flat).
pub fn thumb_correlation(a: &TileStats, b: &TileStats) -> f64 {
    a.thumb.iter().zip(&b.thumb).map(|(x, y)| x * y).sum()
}

/// See [`TileStats::tubularity`]; Hessian of the patch smoothed with σ = 2 px.
fn tubularity(v: &[f32], size: usize) -> f64 {
    let mut smooth = v.to_vec();
    super::gaussian_blur(&mut smooth, size, size, 2.0);
    let mut sorted = smooth.clone();
    sorted.sort_by(f32::total_cmp);
    let cut = sorted[(sorted.len() - 1) * 9 / 10];
    let at = |y: usize, x: usize| smooth[y * size + x] as f64;
    let (mut sum, mut count) = (0f64, 0usize);
    for y in 2..size - 2 {
        for x in 2..size - 2 {
            if smooth[y * size + x] < cut {
                continue;
            }
            let dxx = at(y, x + 2) - 2.0 * at(y, x) + at(y, x - 2);
            let dyy = at(y + 2, x) - 2.0 * at(y, x) + at(y - 2, x);
            let dxy =
                (at(y + 1, x + 1) - at(y + 1, x - 1) - at(y - 1, x + 1) + at(y - 1, x - 1)) / 4.0;
            let root = ((dxx - dyy).powi(2) + 4.0 * dxy * dxy).sqrt();
            let (l1, l2) = ((dxx + dyy + root) / 2.0, (dxx + dyy - root) / 2.0);
            let denom = l1.abs() + l2.abs();
            if denom > 0.0 {
                sum += (l1 - l2).abs() / denom;
                count += 1;
            }
        }
    }
    if count == 0 {
        1.0
    } else {
        sum / count as f64
    }
}
