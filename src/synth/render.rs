//! From geometry to pixels: the random streams of a stack, exposure under a smooth illumination
//! field, Gaussian PSF blur, Poisson-like and read noise, quantisation to 16 bits; and the
//! textures of the planted defects.

use super::style::Style;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f32::consts::{PI, TAU};

/// Lateral PSF of the simulated microscope: Gaussian σ in pixels.
const PSF_SIGMA: f32 = 1.2;
/// Blur σ (pixels) of the out-of-focus defect.
pub const DEFOCUS_SIGMA: f32 = 6.0;

/// What a random stream of a stack is used for. Every purpose, and every slice's noise, has its
/// own stream, so slices render in parallel and pixels never depend on the thread count.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Vessel centrelines and the coverage target.
    Geometry,
    /// Brightness, background and the illumination field.
    Look,
    /// The texture of a defect slice.
    Defect,
    /// The noise of slice `z`.
    Noise(usize),
}

/// The random stream `purpose` of stack `index` of a cohort seeded with `seed`.
pub fn stream(seed: u64, index: usize, purpose: Stream) -> ChaCha8Rng {
    let part = match purpose {
        Stream::Geometry => 0,
        Stream::Look => 1,
        Stream::Defect => 2,
        Stream::Noise(z) => 16 + z as u64,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((index as u64) << 32) | part);
    rng
}

/// An approximately standard normal sample, cheap enough for every pixel: the Irwin–Hall sum of
/// four 16-bit uniforms from one 64-bit draw, scaled to mean 0 and variance 1 (tails end at
/// ±3.46).
pub fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u = rng.next_u64();
    let sum = (u & 0xffff) + ((u >> 16) & 0xffff) + ((u >> 32) & 0xffff) + (u >> 48);
    // Each uniform has mean 32767.5 and variance (65536² − 1) / 12.
    (sum as f32 - 131_070.0) * (3.0f32.sqrt() / 65_536.0)
}

/// The imaging of one stack: its levels (the condition's, jittered per stack) and a smooth
/// multiplicative illumination field made of three low-frequency plane waves.
pub struct Look {
    background: f32,
    signal: f32,
    read_noise: f32,
    inhomogeneity: f32,
    /// (x frequency, y frequency, phase) of each wave, in radians per pixel.
    waves: [(f32, f32, f32); 3],
}

impl Look {
    /// Draws the look of a `h`×`w` stack of condition `style`.
    pub fn draw(rng: &mut ChaCha8Rng, style: &Style, h: usize, w: usize) -> Look {
        let background = style.background * rng.random_range(0.85..1.15);
        let signal = style.signal * rng.random_range(0.85..1.15);
        let per_pixel = TAU / h.max(w) as f32;
        let waves = [(); 3].map(|_| {
            // 0.3 to 1.5 cycles across the field, in any direction.
            let f = rng.random_range(0.3..1.5) * per_pixel;
            let angle = rng.random_range(0.0..PI);
            (f * angle.cos(), f * angle.sin(), rng.random_range(0.0..TAU))
        });
        Look {
            background,
            signal,
            read_noise: style.read_noise,
            inhomogeneity: style.inhomogeneity,
            waves,
        }
    }

    /// Turns a slice's intensity profile (0 = background, about 1 = vessel centre) into grey
    /// levels: exposure under the illumination field, PSF blur, then noise from `rng`.
    pub fn image(&self, mut profile: Vec<f32>, w: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let h = profile.len() / w;
        self.expose(&mut profile, w);
        crate::pixel::gaussian_blur(&mut profile, w, h, PSF_SIGMA);
        self.add_noise(&mut profile, rng);
        profile
    }

    /// (background + signal × profile) × (1 + inhomogeneity × field), field in [−1, 1]. The
    /// waves are separable: cos(a + b) = cos a cos b − sin a sin b.
    fn expose(&self, plane: &mut [f32], w: usize) {
        let columns: Vec<[(f32, f32); 3]> = (0..w)
            .map(|x| {
                self.waves.map(|(fx, _, phase)| {
                    let a = fx * x as f32 + phase;
                    (a.cos() / 3.0, a.sin() / 3.0)
                })
            })
            .collect();
        for (y, row) in plane.chunks_exact_mut(w).enumerate() {
            let rows = self.waves.map(|(_, fy, _)| {
                let b = fy * y as f32;
                (b.cos(), b.sin())
            });
            for (v, col) in row.iter_mut().zip(&columns) {
                let field: f32 = col
                    .iter()
                    .zip(&rows)
                    .map(|(c, r)| c.0 * r.0 - c.1 * r.1)
                    .sum();
                *v = (self.background + self.signal * *v) * (1.0 + self.inhomogeneity * field);
            }
        }
    }

    /// Adds Gaussian noise of variance (level + read noise²): Poisson-like shot noise at a gain
    /// of one grey level per photon, plus the camera's read noise.
    fn add_noise(&self, plane: &mut [f32], rng: &mut ChaCha8Rng) {
        let read2 = self.read_noise * self.read_noise;
        for v in plane {
            *v += gauss(rng) * (v.max(0.0) + read2).sqrt();
        }
    }
}

/// Rounds grey levels to u16, clipping at 0 and 65535.
pub fn to_u16(plane: &[f32]) -> Vec<u16> {
    plane
        .iter()
        .map(|&v| v.round().clamp(0.0, 65535.0) as u16)
        .collect()
}

/// The over-exposed slice defect: gain far too high, nearly every pixel clips at 65535.
pub fn saturate(plane: &mut [f32]) {
    for v in plane {
        *v = *v * 200.0 + 20_000.0;
    }
}

/// The profile of the odd-texture defect: nuclei-like blobs instead of vessels — ellipses 10–20
/// pixels across with granular (speckled) chromatin, covering about a third of the slice.
pub fn nuclei_profile(rng: &mut ChaCha8Rng, h: usize, w: usize) -> Vec<f32> {
    let mut profile = vec![0f32; h * w];
    for _ in 0..(h * w / 600).max(4) {
        let (cx, cy) = (
            rng.random_range(0.0..w as f32),
            rng.random_range(0.0..h as f32),
        );
        let a = rng.random_range(5.0..10.0f32);
        let b = a * rng.random_range(0.6..1.0);
        let (sin, cos) = rng.random_range(0.0..PI).sin_cos();
        let brightness = rng.random_range(0.6..1.2);
        let (x0, x1) = ((cx - a).max(0.0) as usize, ((cx + a) as usize).min(w - 1));
        let (y0, y1) = ((cy - a).max(0.0) as usize, ((cy + a) as usize).min(h - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                let (u, v) = (dx * cos + dy * sin, dy * cos - dx * sin);
                let q = (u / a).powi(2) + (v / b).powi(2);
                if q <= 1.0 {
                    let i = y * w + x;
                    profile[i] = profile[i].max(brightness * (1.0 - 0.4 * q));
                }
            }
        }
    }
    for v in profile.iter_mut().filter(|v| **v > 0.0) {
        *v *= rng.random_range(0.5..1.5);
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(v: &[f32]) -> (f64, f64) {
        let m = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / v.len() as f64;
        (m, var)
    }

    #[test]
    fn gauss_is_standard_normal_enough() {
        let mut rng = stream(0, 0, Stream::Noise(0));
        let v: Vec<f32> = (0..200_000).map(|_| gauss(&mut rng)).collect();
        let (m, var) = mean_var(&v);
        assert!(m.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{m} {var}");
        let beyond2 = v.iter().filter(|x| x.abs() > 2.0).count() as f64 / v.len() as f64;
        assert!((beyond2 - 0.0455).abs() < 0.01, "{beyond2}");
    }

    #[test]
    fn streams_are_independent_and_reproducible() {
        let draw = |s: u64, i: usize, p: Stream| stream(s, i, p).next_u64();
        assert_eq!(draw(1, 2, Stream::Look), draw(1, 2, Stream::Look));
        assert_ne!(draw(1, 2, Stream::Look), draw(1, 3, Stream::Look));
        assert_ne!(draw(1, 2, Stream::Look), draw(2, 2, Stream::Look));
        assert_ne!(draw(1, 2, Stream::Noise(0)), draw(1, 2, Stream::Noise(1)));
        assert_ne!(draw(1, 2, Stream::Geometry), draw(1, 2, Stream::Defect));
    }

    #[test]
    fn exposure_follows_levels_and_a_bounded_smooth_field() {
        let style = crate::synth::style::STYLES[3];
        let look = Look::draw(&mut stream(4, 3, Stream::Look), &style, 64, 96);
        let mut plane = vec![0f32; 64 * 96];
        look.expose(&mut plane, 96);
        let (lo, hi) = (
            look.background * (1.0 - look.inhomogeneity),
            look.background * (1.0 + look.inhomogeneity),
        );
        assert!(plane.iter().all(|v| (lo - 1e-3..=hi + 1e-3).contains(v)));
        let step = plane
            .chunks_exact(96)
            .flat_map(|row| row.windows(2))
            .map(|p| (p[1] - p[0]).abs())
            .fold(0f32, f32::max);
        assert!(step < 0.05 * look.background, "smooth: {step}");
        let mut one = vec![1f32; 64 * 96];
        look.expose(&mut one, 96);
        let ratio = one[0] / plane[0];
        assert!((ratio - (look.background + look.signal) / look.background).abs() < 1e-3);
    }

    #[test]
    fn noise_has_shot_and_read_components() {
        let style = crate::synth::style::STYLES[0];
        let look = Look::draw(&mut stream(0, 0, Stream::Look), &style, 8, 8);
        let mut plane = vec![10_000f32; 100_000];
        look.add_noise(&mut plane, &mut stream(0, 0, Stream::Noise(0)));
        let (m, var) = mean_var(&plane);
        let expected = 10_000.0 + (style.read_noise as f64).powi(2);
        assert!((m - 10_000.0).abs() < 2.0 && (var / expected - 1.0).abs() < 0.03);
    }

    #[test]
    fn nuclei_cover_a_fair_part_of_the_slice() {
        let p = nuclei_profile(&mut stream(0, 0, Stream::Defect), 256, 256);
        let f = p.iter().filter(|&&v| v > 0.0).count() as f64 / p.len() as f64;
        assert!((0.15..0.5).contains(&f), "{f}");
    }
}
