//! Pixel classification for reverse classification accuracy: ilastik-style filter features
//! ([`features`]) and a random forest ([`forest`]) trained on a balanced sample of pixels.

pub mod blur;
pub mod features;
pub mod forest;
pub mod frangi;
pub mod tile_stats;

use anyhow::{ensure, Result};
use forest::{Forest, ForestParams};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use blur::gaussian_blur;
pub use features::normalise_together;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PixelClassifierParams {
    pub forest: ForestParams,
    /// Training pixels drawn per class (all of a class when it has fewer).
    pub per_class: usize,
    pub seed: u64,
}

impl Default for PixelClassifierParams {
    fn default() -> Self {
        PixelClassifierParams {
            forest: ForestParams::default(),
            per_class: 20_000,
            seed: 0,
        }
    }
}

/// A forest over [`features::feature_planes`].
#[derive(Debug, Clone)]
pub struct PixelClassifier {
    pub forest: Forest,
    /// Training pixels per class actually used: [background, foreground].
    pub samples: [usize; 2],
}

/// The n×k row-major feature matrix of the pixels `at` of an h×w image.
fn gather(img: &[f32], h: usize, w: usize, at: &[usize]) -> Vec<f32> {
    let planes = features::feature_planes(img, h, w);
    let k = planes.len();
    let mut x = vec![0f32; at.len() * k];
    for (r, &p) in at.iter().enumerate() {
        for (j, plane) in planes.iter().enumerate() {
            x[r * k + j] = plane[p];
        }
    }
    x
}

/// The (h·w)×k row-major feature matrix of every pixel of an h×w image.
pub fn feature_matrix(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    let all: Vec<usize> = (0..h * w).collect();
    gather(img, h, w, &all)
}

impl PixelClassifier {
    /// Trains on `slices` (each h×w, already normalised) labelled by the 0/1 `labels`,
    /// drawing up to `per_class` pixels of each class from the whole stack.
    pub fn train(
        slices: &[Vec<f32>],
        labels: &[Vec<u8>],
        h: usize,
        w: usize,
        params: &PixelClassifierParams,
    ) -> Result<PixelClassifier> {
        ensure!(
            slices.len() == labels.len(),
            "{} slices but {} label planes",
            slices.len(),
            labels.len()
        );
        for (s, l) in slices.iter().zip(labels) {
            ensure!(
                s.len() == h * w && l.len() == h * w,
                "a slice or label plane is not {h}×{w}"
            );
        }
        // Global pixel index = slice × h·w + pixel; pick ranks within each class.
        let mut by_class: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for (z, l) in labels.iter().enumerate() {
            for (p, &v) in l.iter().enumerate() {
                by_class[(v != 0) as usize].push(z * h * w + p);
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let mut picked: Vec<(usize, u8)> = Vec::new();
        let mut samples = [0; 2];
        for (c, pool) in by_class.iter().enumerate() {
            let take = params.per_class.min(pool.len());
            samples[c] = take;
            picked.extend(
                sample(&mut rng, pool.len(), take)
                    .into_iter()
                    .map(|r| (pool[r], c as u8)),
            );
        }
        picked.sort_unstable();
        let k = features::COUNT;
        let per_slice: Vec<(Vec<f32>, Vec<u8>)> = slices
            .par_iter()
            .enumerate()
            .map(|(z, img)| {
                let lo = picked.partition_point(|&(g, _)| g < z * h * w);
                let hi = picked.partition_point(|&(g, _)| g < (z + 1) * h * w);
                let here = &picked[lo..hi];
                if here.is_empty() {
                    return (Vec::new(), Vec::new());
                }
                let at: Vec<usize> = here.iter().map(|&(g, _)| g - z * h * w).collect();
                (
                    gather(img, h, w, &at),
                    here.iter().map(|&(_, c)| c).collect(),
                )
            })
            .collect();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (xs, ys) in per_slice {
            x.extend(xs);
            y.extend(ys);
        }
        let forest_params = ForestParams {
            seed: params.seed,
            ..params.forest.clone()
        };
        let forest = Forest::fit(&x, y.len(), k, &y, &forest_params);
        Ok(PixelClassifier { forest, samples })
    }

    /// 0/1 mask of an h×w (normalised) image.
    pub fn predict(&self, img: &[f32], h: usize, w: usize) -> Vec<u8> {
        self.forest.predict(&feature_matrix(img, h, w))
    }
}

/// The h×w image averaged down to a t×t grid (t ≤ h, w): block (by, bx) covers rows
/// `[by·h/t, (by+1)·h/t)` and the matching columns; row-major.
pub fn block_means(img: &[f32], h: usize, w: usize, t: usize) -> Vec<f32> {
    let (ey, ex) = (|k: usize| k * h / t, |k: usize| k * w / t);
    (0..t * t)
        .map(|c| {
            let (by, bx) = (c / t, c % t);
            let (y0, y1, x0, x1) = (ey(by), ey(by + 1), ex(bx), ex(bx + 1));
            let sum: f64 = (y0..y1)
                .flat_map(|y| img[y * w + x0..y * w + x1].iter())
                .map(|&p| p as f64)
                .sum();
            (sum / ((y1 - y0) * (x1 - x0)).max(1) as f64) as f32
        })
        .collect()
}

/// Binary erosion (or dilation) of an h×w 0/1 mask by a (2r+1)² square, border pixels
/// replicated.
pub fn morph(m: &[u8], h: usize, w: usize, r: usize, dilate: bool) -> Vec<u8> {
    let r = r as isize;
    (0..h * w)
        .map(|p| {
            let (y, x) = ((p / w) as isize, (p % w) as isize);
            let (mut any, mut all) = (false, true);
            for dy in -r..=r {
                let yy = (y + dy).clamp(0, h as isize - 1) as usize;
                for dx in -r..=r {
                    let xx = (x + dx).clamp(0, w as isize - 1) as usize;
                    let v = m[yy * w + xx] != 0;
                    any |= v;
                    all &= v;
                }
            }
            (if dilate { any } else { all }) as u8
        })
        .collect()
}

/// Dice overlap of two 0/1 masks; 1 when both are empty.
pub fn dice(a: &[u8], b: &[u8]) -> f64 {
    let mut tally = DiceTally::default();
    tally.add(a, b);
    tally.dice()
}

/// Dice pooled over several mask pairs: overlaps and foreground counted over all of them, so a
/// large stack weighs more than a small one (the cohort-level score).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiceTally {
    overlap: usize,
    foreground: usize,
}

impl DiceTally {
    pub fn add(&mut self, a: &[u8], b: &[u8]) {
        self.overlap += a.iter().zip(b).filter(|(&x, &y)| x != 0 && y != 0).count();
        self.foreground +=
            a.iter().filter(|&&x| x != 0).count() + b.iter().filter(|&&y| y != 0).count();
    }

    /// 2|A∩B| / (|A| + |B|) over everything added; 1 when both are empty.
    pub fn dice(&self) -> f64 {
        if self.foreground == 0 {
            1.0
        } else {
            2.0 * self.overlap as f64 / self.foreground as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bright discs on a dark noisy background; the label is the disc.
    fn discs(h: usize, w: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<(f32, f32, f32)> = (0..6)
            .map(|_| {
                (
                    rng.random_range(0.0..h as f32),
                    rng.random_range(0.0..w as f32),
                    rng.random_range(3.0..8.0),
                )
            })
            .collect();
        let mut img = vec![0f32; h * w];
        let mut lab = vec![0u8; h * w];
        for y in 0..h {
            for x in 0..w {
                let inside = centres
                    .iter()
                    .any(|&(cy, cx, r)| (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2) < r * r);
                lab[y * w + x] = inside as u8;
                img[y * w + x] = 0.2 + 0.6 * inside as u8 as f32 + rng.random_range(-0.15..0.15);
            }
        }
        (img, lab)
    }

    #[test]
    fn pixel_classifier_segments_discs_it_was_not_trained_on() {
        let (h, w) = (64, 64);
        let (slices, labels): (Vec<_>, Vec<_>) = (0..3).map(|s| discs(h, w, s)).unzip();
        let p = PixelClassifierParams {
            per_class: 2000,
            ..Default::default()
        };
        let clf = PixelClassifier::train(&slices, &labels, h, w, &p).unwrap();
        assert_eq!(
            clf.samples[1],
            2000.min(labels.iter().flatten().filter(|&&v| v == 1).count())
        );
        let (img, truth) = discs(h, w, 99);
        let d = dice(&clf.predict(&img, h, w), &truth);
        assert!(d > 0.9, "Dice {d} on an unseen image");
        // A classifier taught an empty mask predicts nothing.
        let empty: Vec<Vec<u8>> = labels.iter().map(|l| vec![0; l.len()]).collect();
        let none = PixelClassifier::train(&slices, &empty, h, w, &p).unwrap();
        assert!(none.predict(&img, h, w).iter().all(|&v| v == 0));
    }

    #[test]
    fn morphology_grows_and_shrinks_a_square() {
        let (h, w) = (9, 9);
        let m: Vec<u8> = (0..81)
            .map(|p| ((3..6).contains(&(p / 9)) && (3..6).contains(&(p % 9))) as u8)
            .collect();
        assert_eq!(
            morph(&m, h, w, 1, true).iter().filter(|&&v| v == 1).count(),
            25
        );
        assert_eq!(
            morph(&m, h, w, 1, false)
                .iter()
                .filter(|&&v| v == 1)
                .count(),
            1
        );
        assert_eq!(morph(&m, h, w, 0, false), m);
    }

    #[test]
    fn dice_edge_cases() {
        assert_eq!(dice(&[0, 0], &[0, 0]), 1.0);
        assert_eq!(dice(&[1, 0], &[0, 1]), 0.0);
        assert_eq!(dice(&[1, 1], &[1, 0]), 2.0 / 3.0);
    }
}
