//! Exact k-nearest neighbours by cosine similarity of L2-normalised vectors, by blocked matrix
//! products: one block of rows against all rows at a time, so memory stays at block × N floats
//! and never N × N (90,860² floats would be 33 GB).

use rayon::prelude::*;

/// Each point's k most similar points (itself included), most similar first, in one flat
/// array of N × k entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    ids: Vec<u32>,
    sims: Vec<f32>,
}

impl Neighbours {
    pub fn len(&self) -> usize {
        self.ids.len() / self.k.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// (neighbour, similarity) of point `x`, most similar first.
    pub fn of(&self, x: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        let r = x * self.k..(x + 1) * self.k;
        self.ids[r.clone()].iter().copied().zip(self.sims[r].iter().copied())
    }
}

const BLOCK: usize = 256;

/// Top-`k` neighbours of each of the `n` rows of `x` (row-major, `d` columns).
pub fn exact_knn(x: &[f32], n: usize, d: usize, k: usize) -> Neighbours {
    assert_eq!(x.len(), n * d);
    let k = k.min(n).max(1);
    let mut ids = vec![0u32; n * k];
    let mut sims = vec![0f32; n * k];
    ids.par_chunks_mut(BLOCK * k)
        .zip(sims.par_chunks_mut(BLOCK * k))
        .enumerate()
        .for_each(|(b, (ids, sims))| {
            let start = b * BLOCK;
            let rows = (n - start).min(BLOCK);
            let block = similarity_block(&x[start * d..(start + rows) * d], x, rows, n, d);
            for r in 0..rows {
                let top = top_k(&block[r * n..(r + 1) * n], k);
                for (j, (id, s)) in top.into_iter().enumerate() {
                    ids[r * k + j] = id;
                    sims[r * k + j] = s;
                }
            }
        });
    Neighbours { k, ids, sims }
}

/// `a` (rows × d) times `b`ᵀ (n × d): rows × n similarities.
fn similarity_block(a: &[f32], b: &[f32], rows: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * n];
    // SAFETY: the strides describe a (rows × d), b treated as (d × n) via its transpose strides,
    // and out (rows × n); all three slices are exactly that long.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            d,
            n,
            1.0,
            a.as_ptr(),
            d as isize,
            1,
            b.as_ptr(),
            1,
            d as isize,
            0.0,
            out.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    out
}

/// The `k` largest entries of `row` as (index, value), largest first, ties by lower index.
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    let mut floor = f32::NEG_INFINITY;
    for (i, &s) in row.iter().enumerate() {
        if top.len() == k && s <= floor {
            continue;
        }
        let pos = top.partition_point(|&(_, t)| t >= s);
        top.insert(pos, (i as u32, s));
        top.truncate(k);
        if top.len() == k {
            floor = top[k - 1].1;
        }
    }
    top
}

/// Seeded, L2-normalised test points in `clusters` tight clusters: (data, n, d).
#[cfg(test)]
pub fn test_points(n: usize, clusters: usize, seed: u64) -> (Vec<f32>, usize, usize) {
    use rand::{Rng, SeedableRng};
    let d = 8;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..d).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = &centres[i % clusters];
        let v: Vec<f32> = c.iter().map(|m| m + rng.random_range(-0.2..0.2)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        x.extend(v.iter().map(|a| a / norm));
    }
    (x, n, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_brute_force() {
        let (x, n, d) = test_points(600, 5, 2);
        let nb = exact_knn(&x, n, d, 7);
        for i in (0..n).step_by(37) {
            let mut all: Vec<(u32, f32)> = (0..n)
                .map(|j| {
                    let s = (0..d).map(|t| x[i * d + t] * x[j * d + t]).sum::<f32>();
                    (j as u32, s)
                })
                .collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let got: Vec<(u32, f32)> = nb.of(i).collect();
            for (g, e) in got.iter().zip(&all[..7]) {
                assert!((g.1 - e.1).abs() < 1e-5, "row {i}: {got:?} vs {:?}", &all[..7]);
            }
            assert_eq!(got[0].0, i as u32, "a point is its own nearest neighbour");
        }
    }

    #[test]
    fn top_k_keeps_largest_in_order() {
        assert_eq!(
            top_k(&[0.1, 0.9, 0.5, 0.9, -1.0], 3),
            vec![(1, 0.9), (3, 0.9), (2, 0.5)]
        );
    }
}
