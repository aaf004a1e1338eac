//! The classical baseline for vessel segmentation: Frangi vesselness (multi-scale Hessian
//! eigenvalue analysis, Frangi et al. 1998) thresholded by Otsu's method. No training, no
//! annotation: what a learned segmenter has to beat.

use super::features::{conv_cols, conv_rows, gaussian_kernels};

/// Frangi vesselness of bright tubes on a dark background, maximum over `sigmas` (pixels).
/// β = 0.5 weighs blob-likeness; c is half the largest Hessian norm of each scale.
pub fn vesselness(img: &[f32], h: usize, w: usize, sigmas: &[f32]) -> Vec<f32> {
    let mut best = vec![0f32; h * w];
    for &sigma in sigmas {
        let [g, g1, g2] = gaussian_kernels(sigma);
        let s2 = sigma * sigma; // scale normalisation of second derivatives
        let rg = conv_rows(img, h, w, &g);
        let r1 = conv_rows(img, h, w, &g1);
        let hxx = conv_cols(&conv_rows(img, h, w, &g2), h, w, &g);
        let hyy = conv_cols(&rg, h, w, &g2);
        let hxy = conv_cols(&r1, h, w, &g1);
        let mut l1 = vec![0f32; h * w];
        let mut l2 = vec![0f32; h * w];
        let mut smax = 0f32;
        for i in 0..h * w {
            let (a, b, c) = (hxx[i] * s2, hxy[i] * s2, hyy[i] * s2);
            let m = 0.5 * (a + c);
            let d = (0.25 * (a - c) * (a - c) + b * b).sqrt();
            // |l1| ≤ |l2|
            let (x, y) = (m + d, m - d);
            let (small, large) = if x.abs() <= y.abs() { (x, y) } else { (y, x) };
            l1[i] = small;
            l2[i] = large;
            smax = smax.max((small * small + large * large).sqrt());
        }
        let c = (0.5 * smax).max(1e-12);
        for i in 0..h * w {
            if l2[i] >= 0.0 {
                continue; // a bright tube has a strongly negative cross-section curvature
            }
            let rb = l1[i] / l2[i];
            let s = (l1[i] * l1[i] + l2[i] * l2[i]).sqrt();
            let v = (-(rb * rb) / (2.0 * 0.25)).exp() * (1.0 - (-(s * s) / (2.0 * c * c)).exp());
            best[i] = best[i].max(v);
        }
    }
    best
}

/// Otsu's threshold of `values` over a 256-bin histogram of their range.
pub fn otsu(values: &[f32]) -> f32 {
    let (lo, hi) = values
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    if !(hi > lo) {
        return hi;
    }
    let bin = |v: f32| (((v - lo) / (hi - lo)) * 255.0).round() as usize;
    let mut hist = [0f64; 256];
    for &v in values {
        hist[bin(v).min(255)] += 1.0;
    }
    let total: f64 = hist.iter().sum();
    let sum_all: f64 = hist.iter().enumerate().map(|(i, c)| i as f64 * c).sum();
    let (mut w0, mut sum0, mut best, mut at) = (0.0, 0.0, -1.0, 0);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c;
        sum0 += t as f64 * c;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum_all - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            at = t;
        }
    }
    lo + (at as f32 + 0.5) / 255.0 * (hi - lo)
}

/// Frangi + Otsu masks of a stack's slices (one threshold for the whole stack).
pub fn segment(slices: &[Vec<f32>], h: usize, w: usize, sigmas: &[f32]) -> Vec<Vec<u8>> {
    use rayon::prelude::*;
    let v: Vec<Vec<f32>> = slices
        .par_iter()
        .map(|s| vesselness(s, h, w, sigmas))
        .collect();
    let t = otsu(&v.concat());
    v.into_iter()
        .map(|p| p.into_iter().map(|x| (x > t) as u8).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bright_line_is_found_and_the_background_is_not() {
        let (h, w) = (48, 48);
        let img: Vec<f32> = (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f32, (i % w) as f32);
                let d = (y - 0.5 * x - 10.0).abs() / 1.25f32.sqrt();
                (-d * d / 4.0).exp() + 0.02 * ((i * 7919 % 101) as f32 / 101.0)
            })
            .collect();
        let mask = &segment(&[img], h, w, &[1.0, 2.0, 3.0])[0];
        let on_line = |i: usize| {
            let (y, x) = ((i / w) as f32, (i % w) as f32);
            (y - 0.5 * x - 10.0).abs() / 1.25f32.sqrt() < 1.5
        };
        let (mut tp, mut fp) = (0, 0);
        for (i, &m) in mask.iter().enumerate() {
            match (m, on_line(i)) {
                (1, true) => tp += 1,
                (1, false) => fp += 1,
                _ => {}
            }
        }
        let line = (0..h * w).filter(|&i| on_line(i)).count();
        assert!(tp * 10 >= line * 7, "found {tp} of {line} line pixels");
        assert!(fp * 10 <= line * 3, "{fp} false positives");
    }

    #[test]
    fn otsu_splits_two_modes() {
        let v: Vec<f32> = (0..1000)
            .map(|i| {
                if i % 3 == 0 {
                    10.0 + (i % 7) as f32
                } else {
                    (i % 5) as f32
                }
            })
            .collect();
        let t = otsu(&v);
        assert!(t > 4.0 && t < 10.0, "threshold {t}");
    }
}
