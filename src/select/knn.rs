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
        self.ids[r.clone()]
            .iter()
            .copied()
            .zip(self.sims[r].iter().copied())
    }
}

const BLOCK: usize = 256;

/// The running top-k of one row: (id, sim) sorted by sim descending, then id ascending, so the
/// result does not depend on the order candidates arrive in (ties included).
#[derive(Clone)]
struct TopK {
    items: Vec<(u32, f32)>,
}

impl TopK {
    fn beats(a: (u32, f32), b: (u32, f32)) -> bool {
        a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
    }

    /// Inserts `cand` if it ranks in the top k; returns the new admission floor (the k-th
    /// similarity, or -inf while fewer than k are held).
    fn offer(&mut self, k: usize, cand: (u32, f32)) -> f32 {
        if self.items.len() < k || Self::beats(cand, self.items[k - 1]) {
            let pos = self.items.partition_point(|&it| Self::beats(it, cand));
            self.items.insert(pos, cand);
            self.items.truncate(k);
        }
        if self.items.len() == k {
            self.items[k - 1].1
        } else {
            f32::NEG_INFINITY
        }
    }
}

/// The rows of one block: their running top-k and, apart, each one's admission floor, so the
/// hot loop is one comparison per similarity.
struct BlockTops {
    tops: Vec<TopK>,
    floors: Vec<f32>,
}

/// Leave-one-out k-NN accuracy of `labels` under cosine similarity: each of the `n` rows of `x`
/// (`d` columns, any length) gets the label most frequent among its `k` nearest other rows,
/// ties going to the label with the larger summed similarity. How well an embedding separates
/// known groups (conditions) without training a classifier on it.
pub fn leave_one_out_accuracy(x: &[f32], n: usize, d: usize, labels: &[String], k: usize) -> f64 {
    assert_eq!(labels.len(), n);
    let mut unit = x.to_vec();
    for row in unit.chunks_exact_mut(d) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    let nb = exact_knn(&unit, n, d, k + 1);
    let right = (0..n)
        .filter(|&i| {
            let mut votes: std::collections::BTreeMap<&str, (usize, f32)> = Default::default();
            for (j, s) in nb.of(i).filter(|(j, _)| *j as usize != i).take(k) {
                let v = votes.entry(labels[j as usize].as_str()).or_default();
                *v = (v.0 + 1, v.1 + s);
            }
            let best = votes
                .iter()
                .max_by(|a, b| a.1 .0.cmp(&b.1 .0).then(a.1 .1.total_cmp(&b.1 .1)))
                .map(|(l, _)| *l);
            best == Some(labels[i].as_str())
        })
        .count();
    right as f64 / n.max(1) as f64
}

/// Top-`k` neighbours of each of the `n` rows of `x` (row-major, `d` columns).
///
/// Similarity is symmetric, so only blocks (I, J) with J ≥ I are multiplied, and each product
/// updates the rows of both blocks: half the arithmetic of the full N × N product.
pub fn exact_knn(x: &[f32], n: usize, d: usize, k: usize) -> Neighbours {
    assert_eq!(x.len(), n * d);
    let k = k.min(n).max(1);
    let blocks = n.div_ceil(BLOCK);
    let tops: Vec<std::sync::Mutex<BlockTops>> = (0..blocks)
        .map(|b| {
            let rows = rows_of(b, n).len();
            std::sync::Mutex::new(BlockTops {
                tops: vec![
                    TopK {
                        items: Vec::with_capacity(k + 1)
                    };
                    rows
                ],
                floors: vec![f32::NEG_INFINITY; rows],
            })
        })
        .collect();
    let pairs: Vec<(usize, usize)> = (0..blocks)
        .flat_map(|i| (i..blocks).map(move |j| (i, j)))
        .collect();
    pairs.par_iter().for_each(|&(bi, bj)| {
        let (ri, rj) = (rows_of(bi, n), rows_of(bj, n));
        let a = &x[ri.start * d..ri.end * d];
        let b = &x[rj.start * d..rj.end * d];
        let (ni, nj) = (ri.len(), rj.len());
        let s = similarity_block(a, b, ni, nj, d);
        {
            let mut guard = tops[bi].lock().unwrap();
            let bt = &mut *guard;
            for r in 0..ni {
                let mut floor = bt.floors[r];
                for (c, &v) in s[r * nj..(r + 1) * nj].iter().enumerate() {
                    if v >= floor {
                        floor = bt.tops[r].offer(k, ((rj.start + c) as u32, v));
                    }
                }
                bt.floors[r] = floor;
            }
        }
        if bi != bj {
            let mut guard = tops[bj].lock().unwrap();
            let bt = &mut *guard;
            for r in 0..ni {
                for (c, &v) in s[r * nj..(r + 1) * nj].iter().enumerate() {
                    if v >= bt.floors[c] {
                        bt.floors[c] = bt.tops[c].offer(k, ((ri.start + r) as u32, v));
                    }
                }
            }
        }
    });
    let mut ids = Vec::with_capacity(n * k);
    let mut sims = Vec::with_capacity(n * k);
    for block in tops {
        for t in block.into_inner().unwrap().tops {
            ids.extend(t.items.iter().map(|i| i.0));
            sims.extend(t.items.iter().map(|i| i.1));
        }
    }
    Neighbours { k, ids, sims }
}

fn rows_of(block: usize, n: usize) -> std::ops::Range<usize> {
    block * BLOCK..((block + 1) * BLOCK).min(n)
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
                assert!(
                    (g.1 - e.1).abs() < 1e-5,
                    "row {i}: {got:?} vs {:?}",
                    &all[..7]
                );
            }
            assert_eq!(got[0].0, i as u32, "a point is its own nearest neighbour");
        }
    }

    #[test]
    fn leave_one_out_accuracy_of_clusters_and_of_noise() {
        let (x, n, d) = test_points(200, 4, 3);
        let by_cluster: Vec<String> = (0..n).map(|i| format!("c{}", i % 4)).collect();
        assert_eq!(leave_one_out_accuracy(&x, n, d, &by_cluster, 5), 1.0);
        // Labels unrelated to the clusters: about chance (1/2), never near 1.
        let unrelated: Vec<String> = (0..n).map(|i| format!("l{}", (i / 4) % 2)).collect();
        let acc = leave_one_out_accuracy(&x, n, d, &unrelated, 5);
        assert!((0.3..0.7).contains(&acc), "{acc}");
    }
}
