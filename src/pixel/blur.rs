//! Separable Gaussian blur: the microscope's point-spread function in the synthetic cohort, and
//! the smoothing behind qc's noise estimate.

/// Separable Gaussian blur of a `w`×`h` plane in place (kernel radius 3σ, edges clamped).
pub fn gaussian_blur(plane: &mut [f32], w: usize, h: usize, sigma: f32) {
    if sigma <= 0.0 || w == 0 || h == 0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as usize;
    let kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    // Rows: each row padded with its edge values, then shifted copies summed (vectorises).
    let mut padded = vec![0f32; w + 2 * radius];
    for row in plane.chunks_exact_mut(w) {
        padded[..radius].fill(row[0]);
        padded[radius..radius + w].copy_from_slice(row);
        padded[radius + w..].fill(row[w - 1]);
        row.fill(0.0);
        for (k, &kv) in kernel.iter().enumerate() {
            for (o, &s) in row.iter_mut().zip(&padded[k..k + w]) {
                *o += kv * s;
            }
        }
    }
    // Columns: each output row is a weighted sum of whole input rows.
    let source = plane.to_vec();
    for (y, row) in plane.chunks_exact_mut(w).enumerate() {
        row.fill(0.0);
        for (k, &kv) in kernel.iter().enumerate() {
            let sy = (y + k).saturating_sub(radius).min(h - 1);
            for (o, &s) in row.iter_mut().zip(&source[sy * w..(sy + 1) * w]) {
                *o += kv * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_constants_and_mass_and_spreads_an_impulse_by_sigma() {
        let (w, h) = (61, 41);
        let mut flat = vec![7.0f32; w * h];
        gaussian_blur(&mut flat, w, h, 2.0);
        assert!(flat.iter().all(|v| (v - 7.0).abs() < 1e-4));
        let mut dot = vec![0f32; w * h];
        dot[20 * w + 30] = 1.0;
        gaussian_blur(&mut dot, w, h, 2.0);
        let mass: f32 = dot.iter().sum();
        assert!((mass - 1.0).abs() < 1e-4);
        let var_x: f32 = dot
            .iter()
            .enumerate()
            .map(|(i, v)| v * ((i % w) as f32 - 30.0).powi(2))
            .sum();
        assert!((var_x - 4.0).abs() < 0.1, "{var_x}");
        assert_eq!(dot[20 * w + 28], dot[20 * w + 32]);
        assert_eq!(dot[18 * w + 30], dot[22 * w + 30]);
    }
}
