//! Turning a vessel network into pixels: tube rasterisation, illumination, PSF blur, noise; and
//! the textures of the planted defects.

use super::vessels::{normal, Point, STYLES};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The RNG of one stack: independent of thread scheduling.
pub fn stack_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    rng
}

/// Renders the network: (image planes as f32 grey levels, mask planes 0/1).
pub fn render(
    rng: &mut ChaCha8Rng,
    cond: usize,
    shape: [usize; 3],
    network: &[Point],
) -> (Vec<Vec<f32>>, Vec<Vec<u8>>) {
    let style = STYLES[cond];
    let [depth, h, w] = shape;
    let mut profile = vec![vec![0f32; h * w]; depth];
    let mut mask = vec![vec![0u8; h * w]; depth];
    for p in network {
        // Vessels are round in 3D; z is coarser (2 µm slices, 0.5 µm pixels).
        let rz = 0.3 * p.r + 1.2;
        for z in 0..depth {
            let dz = (z as f32 - p.z) / rz;
            if dz.abs() >= 1.0 {
                continue;
            }
            let r = p.r * (1.0 - dz * dz).sqrt();
            paint_disc(&mut profile[z], &mut mask[z], w, h, p.x, p.y, r);
        }
    }
    let field = illumination(rng, h, w);
    let mut image: Vec<Vec<f32>> = profile
        .iter()
        .map(|prof| {
            prof.iter()
                .zip(&field)
                .map(|(&v, &f)| {
                    style.background * (1.0 + style.inhomogeneity * f) + style.signal * v
                })
                .collect()
        })
        .collect();
    for plane in &mut image {
        gaussian_blur(plane, w, h, 1.2);
        for v in plane.iter_mut() {
            let shot = v.max(0.0).sqrt();
            *v += normal(rng) * (shot * shot + style.read_noise * style.read_noise).sqrt();
        }
    }
    (image, mask)
}

/// Paints a disc of radius `r`: brightest at the centre, 0.3 at the rim; the mask is the disc.
fn paint_disc(prof: &mut [f32], mask: &mut [u8], w: usize, h: usize, cx: f32, cy: f32, r: f32) {
    let r2 = r * r;
    let (x0, x1) = (
        (cx - r).floor().max(0.0) as usize,
        ((cx + r).ceil() as isize).min(w as isize - 1),
    );
    let (y0, y1) = (
        (cy - r).floor().max(0.0) as usize,
        ((cy + r).ceil() as isize).min(h as isize - 1),
    );
    if x1 < 0 || y1 < 0 {
        return;
    }
    for y in y0..=y1 as usize {
        for x in x0..=x1 as usize {
            let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
            if d2 <= r2 {
                let i = y * w + x;
                prof[i] = prof[i].max(1.0 - 0.7 * d2 / r2.max(1e-6));
                mask[i] = 1;
            }
        }
    }
}

/// A smooth field in [-1, 1]: a few low-frequency waves.
fn illumination(rng: &mut ChaCha8Rng, h: usize, w: usize) -> Vec<f32> {
    let waves: Vec<(f32, f32, f32)> = (0..3)
        .map(|_| {
            (
                rng.random_range(0.3..1.5) / w.max(h) as f32 * std::f32::consts::TAU,
                rng.random_range(0.0..std::f32::consts::PI),
                rng.random_range(0.0..std::f32::consts::TAU),
            )
        })
        .collect();
    let mut field = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let s: f32 = waves
                .iter()
                .map(|&(f, a, ph)| ((x as f32 * a.cos() + y as f32 * a.sin()) * f + ph).cos())
                .sum();
            field[y * w + x] = s / 3.0;
        }
    }
    field
}

/// Separable Gaussian blur with clamped edges.
pub fn gaussian_blur(plane: &mut [f32], w: usize, h: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let mut tmp = vec![0f32; plane.len()];
    for y in 0..h {
        let row = &plane[y * w..(y + 1) * w];
        for x in 0..w {
            tmp[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, kv)| {
                    kv * row[(x as isize + k as isize - radius).clamp(0, w as isize - 1) as usize]
                })
                .sum();
        }
    }
    for x in 0..w {
        for y in 0..h {
            plane[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, kv)| {
                    kv * tmp[(y as isize + k as isize - radius).clamp(0, h as isize - 1) as usize
                        * w
                        + x]
                })
                .sum();
        }
    }
}

/// Out-of-focus: every plane blurred with `sigma`.
pub fn defocus(image: &mut [Vec<f32>], shape: [usize; 3], sigma: f32) {
    for plane in image {
        gaussian_blur(plane, shape[2], shape[1], sigma);
    }
}

/// A nuclei-like texture of bright round blobs with speckle, at the condition's levels.
pub fn blob_texture(rng: &mut ChaCha8Rng, cond: usize, shape: [usize; 3]) -> Vec<f32> {
    let style = STYLES[cond];
    let [_, h, w] = shape;
    let mut plane = vec![0f32; h * w];
    let mut ignore = vec![0u8; h * w];
    let blobs = (h * w / 600).max(4);
    for _ in 0..blobs {
        let (cx, cy) = (
            rng.random_range(0.0..w as f32),
            rng.random_range(0.0..h as f32),
        );
        paint_disc(
            &mut plane,
            &mut ignore,
            w,
            h,
            cx,
            cy,
            rng.random_range(5.0..10.0),
        );
    }
    for v in plane.iter_mut() {
        let speckle = rng.random_range(0.5f32..1.5);
        *v = style.background + style.signal * *v * speckle + normal(rng) * style.read_noise;
    }
    plane
}
