//! Correlations used to check that a score tracks the truth (RCA vs Dice, uncertainty vs error),
//! robust z-scores, and column standardisation of feature tables.

use std::collections::BTreeSet;

/// Pearson correlation of two equally long samples (NaN when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Ranks from 0, ties sharing their mean rank.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        for k in i..=j {
            r[idx[k]] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// Mean absolute difference.
pub fn mean_abs_error(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len().max(1) as f64
}

/// Scales each column of `rows` (equally long) to mean 0 and standard deviation 1 across the
/// rows; a constant column becomes 0.
pub fn standardise_columns(rows: &mut [Vec<f32>]) {
    let Some(width) = rows.first().map(Vec::len) else {
        return;
    };
    let n = rows.len() as f64;
    for c in 0..width {
        let mean = rows.iter().map(|r| r[c] as f64).sum::<f64>() / n;
        let sd = (rows
            .iter()
            .map(|r| (r[c] as f64 - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt();
        for r in rows.iter_mut() {
            r[c] = if sd > 1e-12 {
                ((r[c] as f64 - mean) / sd) as f32
            } else {
                0.0
            };
        }
    }
}

/// [`robust_z`] computed separately within each group.
pub fn grouped_robust_z(values: &[f64], use_: &[bool], groups: &[String]) -> Vec<f64> {
    let mut out = vec![0.0; values.len()];
    for g in groups.iter().collect::<BTreeSet<_>>() {
        let idx: Vec<usize> = (0..values.len()).filter(|&i| &groups[i] == g).collect();
        let v: Vec<f64> = idx.iter().map(|&i| values[i]).collect();
        let u: Vec<bool> = idx.iter().map(|&i| use_[i]).collect();
        for (k, z) in robust_z(&v, &u).into_iter().enumerate() {
            out[idx[k]] = z;
        }
    }
    out
}

/// Robust z-scores (median / 1.4826·MAD) of `values` over the entries where `use_[i]`.
pub fn robust_z(values: &[f64], use_: &[bool]) -> Vec<f64> {
    let mut v: Vec<f64> = values
        .iter()
        .zip(use_)
        .filter(|(_, u)| **u)
        .map(|(x, _)| *x)
        .collect();
    if v.is_empty() {
        return vec![0.0; values.len()];
    }
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    let mut dev: Vec<f64> = v.iter().map(|x| (x - med).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = (1.4826 * dev[dev.len() / 2]).max(1e-9);
    values.iter().map(|x| (x - med) / mad).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlations() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&a, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[1.0, 10.0, 100.0, 1000.0]) - 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[3.0, 1.0, 3.0]), vec![1.5, 0.0, 1.5]);
        assert!(pearson(&a, &[1.0; 4]).is_nan());
        assert_eq!(mean_abs_error(&a, &[1.0, 2.0, 3.0, 5.0]), 0.25);
    }

    #[test]
    fn standardised_columns_have_mean_0_and_sd_1() {
        let mut rows = vec![vec![1.0, 5.0], vec![2.0, 5.0], vec![6.0, 5.0]];
        standardise_columns(&mut rows);
        let col0: Vec<f64> = rows.iter().map(|r| r[0] as f64).collect();
        assert!(col0.iter().sum::<f64>().abs() < 1e-6);
        assert!((col0.iter().map(|v| v * v).sum::<f64>() / 3.0 - 1.0).abs() < 1e-5);
        assert!(
            rows.iter().all(|r| r[1] == 0.0),
            "a constant column becomes 0"
        );
    }
}
