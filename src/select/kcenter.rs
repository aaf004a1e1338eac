//! k-center (farthest-point) selection: what the seed paper's code actually runs; kept as a
//! baseline for max K-cover.

/// Starts from `first` and repeatedly adds the point least similar to its nearest pick.
/// Returns the picks and, for each, its similarity to the nearest earlier pick.
pub fn kcenter(
    x: &[f32],
    n: usize,
    d: usize,
    k: usize,
    first: usize,
    allowed: &[bool],
) -> (Vec<usize>, Vec<f64>) {
    let mut nearest = vec![f32::NEG_INFINITY; n];
    let mut picks = Vec::with_capacity(k);
    let mut scores = Vec::with_capacity(k);
    let mut next = first;
    let mut score = f64::NAN;
    while picks.len() < k.min(n) {
        picks.push(next);
        scores.push(score);
        let p = &x[next * d..(next + 1) * d];
        for i in 0..n {
            let s: f32 = x[i * d..(i + 1) * d]
                .iter()
                .zip(p)
                .map(|(a, b)| a * b)
                .sum();
            nearest[i] = nearest[i].max(s);
        }
        let candidate = (0..n)
            .filter(|&i| allowed[i] && !picks.contains(&i))
            .min_by(|&a, &b| nearest[a].total_cmp(&nearest[b]).then(a.cmp(&b)));
        match candidate {
            Some(c) => {
                score = nearest[c] as f64;
                next = c;
            }
            None => break,
        }
    }
    (picks, scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::knn::test_points;

    #[test]
    fn picks_one_point_per_cluster_first() {
        let (x, n, d) = test_points(40, 4, 3);
        let (picks, _) = kcenter(&x, n, d, 4, 0, &vec![true; n]);
        let mut clusters: Vec<usize> = picks.iter().map(|p| p % 4).collect();
        clusters.sort();
        assert_eq!(clusters, vec![0, 1, 2, 3]);
    }
}
