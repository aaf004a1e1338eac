//! Per-pixel features of a 2D slice, ilastik-style: raw intensity plus, at each scale σ,
//! Gaussian smoothing, Laplacian of Gaussian, gradient magnitude, difference of Gaussians, the
//! two eigenvalues of the Hessian and the two of the structure tensor. Every filter is a pair of
//! 1D convolutions with Gaussian-derivative kernels (mirror borders), so the cost grows with σ
//! rather than σ².

/// The scales, in pixels.
pub const SIGMAS: [f32; 5] = [0.7, 1.0, 1.6, 3.5, 5.0];

/// Features per scale, in the order [`feature_planes`] returns them after the raw plane.
pub const PER_SCALE: [&str; 8] = [
    "gaussian",
    "log",
    "gradient",
    "dog",
    "hessian-1",
    "hessian-2",
    "structure-1",
    "structure-2",
];

/// How many features [`feature_planes`] returns.
pub const COUNT: usize = 1 + SIGMAS.len() * PER_SCALE.len();

/// Human-readable feature names, index-aligned with [`feature_planes`].
pub fn names() -> Vec<String> {
    let mut v = vec!["raw".to_string()];
    for s in SIGMAS {
        for f in PER_SCALE {
            v.push(format!("{f}@{s}"));
        }
    }
    v
}

/// The three sampled 1D kernels of a Gaussian: smoothing (sums to 1), first and second
/// derivative (each sums to 0), on a radius of ⌈3σ⌉.
pub fn gaussian_kernels(sigma: f32) -> [Vec<f32>; 3] {
    let r = (3.0 * sigma).ceil().max(1.0) as i32;
    let xs: Vec<f32> = (-r..=r).map(|x| x as f32).collect();
    let s2 = sigma * sigma;
    let mut g: Vec<f32> = xs.iter().map(|x| (-x * x / (2.0 * s2)).exp()).collect();
    let sum: f32 = g.iter().sum();
    g.iter_mut().for_each(|v| *v /= sum);
    let g1: Vec<f32> = xs.iter().zip(&g).map(|(x, v)| -x / s2 * v).collect();
    let mut g2: Vec<f32> = xs
        .iter()
        .zip(&g)
        .map(|(x, v)| (x * x / (s2 * s2) - 1.0 / s2) * v)
        .collect();
    let mean = g2.iter().sum::<f32>() / g2.len() as f32;
    g2.iter_mut().for_each(|v| *v -= mean);
    [g, g1, g2]
}

/// Mirror index (…, 2, 1, 0, 1, 2, …, n−2, n−1, n−2, …) for any offset.
#[inline]
pub fn mirror(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Convolves every row of an h×w image with `k` (centred, mirror borders).
pub fn conv_rows(img: &[f32], h: usize, w: usize, k: &[f32]) -> Vec<f32> {
    let r = k.len() / 2;
    let mut out = vec![0f32; h * w];
    let mut padded = vec![0f32; w + 2 * r];
    for y in 0..h {
        let row = &img[y * w..(y + 1) * w];
        for (i, p) in padded.iter_mut().enumerate() {
            *p = row[mirror(i as isize - r as isize, w)];
        }
        let o = &mut out[y * w..(y + 1) * w];
        for (t, &kv) in k.iter().enumerate() {
            let src = &padded[t..t + w];
            for (ov, sv) in o.iter_mut().zip(src) {
                *ov += kv * sv;
            }
        }
    }
    out
}

/// Convolves every column of an h×w image with `k` (centred, mirror borders).
pub fn conv_cols(img: &[f32], h: usize, w: usize, k: &[f32]) -> Vec<f32> {
    let r = k.len() as isize / 2;
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        let o = &mut out[y * w..(y + 1) * w];
        for (t, &kv) in k.iter().enumerate() {
            let sy = mirror(y as isize + t as isize - r, h);
            let src = &img[sy * w..(sy + 1) * w];
            for (ov, sv) in o.iter_mut().zip(src) {
                *ov += kv * sv;
            }
        }
    }
    out
}

/// Eigenvalues (larger first) of the symmetric 2×2 matrix [a b; b c].
#[inline]
fn eigen2(a: f32, b: f32, c: f32) -> (f32, f32) {
    let m = 0.5 * (a + c);
    let d = (0.25 * (a - c) * (a - c) + b * b).sqrt();
    (m + d, m - d)
}

/// A hand-made texture descriptor of a whole image: the mean and standard deviation of each of
/// the [`COUNT`] feature planes (2 × COUNT values). The classical baseline that learned
/// embeddings are compared with.
pub fn image_statistics(img: &[f32], h: usize, w: usize) -> Vec<f32> {
    feature_planes(img, h, w)
        .iter()
        .flat_map(|f| {
            let n = f.len() as f64;
            let mean = f.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = f.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            [mean as f32, var.sqrt() as f32]
        })
        .collect()
}

/// All [`COUNT`] feature planes of an h×w image (each h×w), raw first.
pub fn feature_planes(img: &[f32], h: usize, w: usize) -> Vec<Vec<f32>> {
    assert_eq!(img.len(), h * w, "image is not {h}×{w}");
    let mut planes = Vec::with_capacity(COUNT);
    planes.push(img.to_vec());
    for sigma in SIGMAS {
        let [g, g1, g2] = gaussian_kernels(sigma);
        let rg = conv_rows(img, h, w, &g);
        let r1 = conv_rows(img, h, w, &g1);
        let r2 = conv_rows(img, h, w, &g2);
        let smooth = conv_cols(&rg, h, w, &g);
        let gx = conv_cols(&r1, h, w, &g);
        let gy = conv_cols(&rg, h, w, &g1);
        let gxx = conv_cols(&r2, h, w, &g);
        let gyy = conv_cols(&rg, h, w, &g2);
        let gxy = conv_cols(&r1, h, w, &g1);
        drop((rg, r1, r2));
        // DoG against the same image at 0.66σ, as ilastik does.
        let [gs, _, _] = gaussian_kernels(0.66 * sigma);
        let narrow = conv_cols(&conv_rows(img, h, w, &gs), h, w, &gs);
        // Structure tensor: products of the gradient at σ, smoothed at 0.5σ.
        let [go, _, _] = gaussian_kernels(0.5 * sigma);
        let outer = |v: Vec<f32>| conv_cols(&conv_rows(&v, h, w, &go), h, w, &go);
        let sxx = outer(gx.iter().map(|v| v * v).collect());
        let sxy = outer(gx.iter().zip(&gy).map(|(a, b)| a * b).collect());
        let syy = outer(gy.iter().map(|v| v * v).collect());

        let n = h * w;
        let mut log = vec![0f32; n];
        let mut grad = vec![0f32; n];
        let mut dog = vec![0f32; n];
        let (mut h1, mut h2, mut s1, mut s2) =
            (vec![0f32; n], vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for i in 0..n {
            log[i] = gxx[i] + gyy[i];
            grad[i] = (gx[i] * gx[i] + gy[i] * gy[i]).sqrt();
            dog[i] = smooth[i] - narrow[i];
            (h1[i], h2[i]) = eigen2(gxx[i], gxy[i], gyy[i]);
            (s1[i], s2[i]) = eigen2(sxx[i], sxy[i], syy[i]);
        }
        planes.extend([smooth, log, grad, dog, h1, h2, s1, s2]);
    }
    planes
}

/// Maps a set of images to roughly [0, 1] with one shared affine map, from the 0.5th and 99.5th
/// percentiles of all their pixels, so that a stack and a reference set are each normalised as
/// a whole rather than image by image.
pub fn normalise_together(images: &mut [Vec<f32>]) {
    let total: usize = images.iter().map(|i| i.len()).sum();
    if total == 0 {
        return;
    }
    // A strided sample is plenty for two percentiles and keeps this cheap on large stacks.
    let stride = (total / 1_000_000).max(1);
    let mut sample: Vec<f32> = images.iter().flatten().step_by(stride).copied().collect();
    let q = |s: &mut Vec<f32>, p: f64| {
        let k = ((s.len() - 1) as f64 * p).round() as usize;
        *s.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
    };
    let lo = q(&mut sample, 0.005);
    let hi = q(&mut sample, 0.995);
    let scale = if hi > lo { 1.0 / (hi - lo) } else { 1.0 };
    for img in images.iter_mut() {
        img.iter_mut().for_each(|v| *v = (*v - lo) * scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2D convolution with the outer product of two kernels, evaluated directly (no separation).
    fn direct(img: &[f32], h: usize, w: usize, ky: &[f32], kx: &[f32]) -> Vec<f32> {
        let (ry, rx) = (ky.len() as isize / 2, kx.len() as isize / 2);
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0f64;
                for (j, &a) in ky.iter().enumerate() {
                    let sy = mirror(y as isize + j as isize - ry, h);
                    for (i, &b) in kx.iter().enumerate() {
                        let sx = mirror(x as isize + i as isize - rx, w);
                        acc += (a * b) as f64 * img[sy * w + sx] as f64;
                    }
                }
                out[y * w + x] = acc as f32;
            }
        }
        out
    }

    fn image(h: usize, w: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f32, (i % w) as f32);
                0.5 + 0.3 * (x * 0.31).sin() * (y * 0.17).cos()
                    + 0.2 * ((x - 20.0).powi(2) + (y - 9.0).powi(2) < 40.0) as u8 as f32
            })
            .collect()
    }

    #[test]
    fn separable_matches_direct_convolution() {
        let (h, w) = (37, 45);
        let img = image(h, w);
        for sigma in SIGMAS {
            let [g, g1, g2] = gaussian_kernels(sigma);
            for (ky, kx) in [(&g, &g), (&g, &g1), (&g1, &g), (&g2, &g), (&g1, &g1)] {
                let sep = conv_cols(&conv_rows(&img, h, w, kx), h, w, ky);
                let dir = direct(&img, h, w, ky, kx);
                let worst = sep
                    .iter()
                    .zip(&dir)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-4,
                    "σ={sigma}: separable vs direct differ by {worst}"
                );
            }
        }
    }

    #[test]
    fn constant_image_gives_constant_features() {
        let (h, w) = (20, 31);
        let planes = feature_planes(&vec![0.37; h * w], h, w);
        assert_eq!(planes.len(), COUNT);
        assert_eq!(names().len(), COUNT);
        for (p, name) in planes.iter().zip(names()) {
            assert!(
                p.iter().all(|&v| v == p[0]),
                "feature {name} varies on a constant image"
            );
        }
        // Smoothing keeps the value; derivative-based features vanish.
        assert!((planes[1][0] - 0.37).abs() < 1e-5);
        assert!(planes[2][0].abs() < 1e-5 && planes[3][0].abs() < 1e-5);
    }

    #[test]
    fn kernels_have_the_right_moments() {
        for sigma in SIGMAS {
            let [g, g1, g2] = gaussian_kernels(sigma);
            let r = g.len() as f32 / 2.0 - 0.5;
            assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(g1.iter().sum::<f32>().abs() < 1e-5);
            // Σ x·g'(x) = −1: the derivative of a unit ramp is one.
            let m1: f32 = g1.iter().enumerate().map(|(i, v)| (i as f32 - r) * v).sum();
            assert!((m1 + 1.0).abs() < 0.05, "σ={sigma}: first moment {m1}");
            assert!(g2.iter().sum::<f32>().abs() < 1e-5);
        }
        assert_eq!(mirror(-1, 5), 1);
        assert_eq!(mirror(5, 5), 3);
        assert_eq!(mirror(-9, 5), 1);
    }
}
