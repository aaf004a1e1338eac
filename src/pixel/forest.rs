//! A small random forest for two classes, built for pixel classification: features are
//! quantised once to at most 256 quantile bins (so split search is a histogram scan and
//! prediction reads bytes), trees are trained in parallel on bootstrap samples, each split
//! tries √k random features and takes the best Gini gain.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestParams {
    pub trees: usize,
    pub max_depth: usize,
    /// Smallest number of samples in a leaf.
    pub min_leaf: usize,
    /// Features tried per split; None = ⌈√k⌉.
    pub features_per_split: Option<usize>,
    /// Quantile bins per feature (2–256).
    pub bins: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            trees: 32,
            max_depth: 14,
            min_leaf: 2,
            features_per_split: None,
            bins: 64,
            seed: 0,
        }
    }
}

/// Per-feature cut points: value v falls in bin b when cuts[b-1] < v ≤ cuts[b].
#[derive(Debug, Clone, PartialEq)]
pub struct Bins {
    cuts: Vec<Vec<f32>>,
}

impl Bins {
    /// Quantile cut points of each of the k columns of the n×k row-major matrix `x`.
    pub fn fit(x: &[f32], n: usize, k: usize, bins: usize) -> Bins {
        let bins = bins.clamp(2, 256);
        let cuts = (0..k)
            .into_par_iter()
            .map(|j| {
                let mut col: Vec<f32> = (0..n).map(|i| x[i * k + j]).collect();
                col.sort_unstable_by(|a, b| a.total_cmp(b));
                let mut c: Vec<f32> = (1..bins)
                    .map(|b| col[(b * n / bins).min(n.saturating_sub(1))])
                    .collect();
                c.dedup();
                c
            })
            .collect();
        Bins { cuts }
    }

    pub fn features(&self) -> usize {
        self.cuts.len()
    }

    /// The bin of every entry of the n×k matrix `x`.
    pub fn apply(&self, x: &[f32]) -> Vec<u8> {
        let k = self.cuts.len();
        let mut out = vec![0u8; x.len()];
        out.par_chunks_mut(k * 1024)
            .zip(x.par_chunks(k * 1024))
            .for_each(|(o, xs)| {
                for (i, &v) in xs.iter().enumerate() {
                    o[i] = self.cuts[i % k].partition_point(|&c| c < v) as u8;
                }
            });
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    /// u16::MAX marks a leaf.
    feature: u16,
    /// Go left when the bin is ≤ this.
    threshold: u8,
    left: u32,
    right: u32,
    /// Leaf: share of class 1 among its training samples.
    p: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    #[inline]
    fn predict(&self, row: &[u8]) -> f32 {
        let mut i = 0;
        loop {
            let n = &self.nodes[i];
            if n.feature == u16::MAX {
                return n.p;
            }
            i = if row[n.feature as usize] <= n.threshold {
                n.left
            } else {
                n.right
            } as usize;
        }
    }

    pub fn depth(&self) -> usize {
        fn d(nodes: &[Node], i: usize) -> usize {
            let n = &nodes[i];
            if n.feature == u16::MAX {
                1
            } else {
                1 + d(nodes, n.left as usize).max(d(nodes, n.right as usize))
            }
        }
        d(&self.nodes, 0)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    pub bins: Bins,
    pub trees: Vec<Tree>,
}

/// Gini impurity × count of a node with `n1` of `n` samples in class 1.
#[inline]
fn gini(n1: f64, n: f64) -> f64 {
    if n == 0.0 {
        0.0
    } else {
        2.0 * n1 * (n - n1) / n
    }
}

fn grow(
    x: &[u8],
    k: usize,
    y: &[u8],
    idx: &mut [u32],
    params: &ForestParams,
    nbins: &[usize],
    rng: &mut ChaCha8Rng,
) -> Tree {
    let m = params
        .features_per_split
        .unwrap_or_else(|| (k as f64).sqrt().ceil() as usize)
        .clamp(1, k);
    let mut nodes = Vec::new();
    // (node index, range of idx, depth)
    let mut todo = vec![(0usize, 0usize, idx.len(), 0usize)];
    nodes.push(Node {
        feature: u16::MAX,
        threshold: 0,
        left: 0,
        right: 0,
        p: 0.0,
    });
    let mut hist = vec![[0u32; 2]; 256];
    while let Some((node, lo, hi, depth)) = todo.pop() {
        let part = &mut idx[lo..hi];
        let n = part.len();
        let n1 = part.iter().filter(|&&i| y[i as usize] != 0).count();
        nodes[node].p = if n == 0 { 0.0 } else { n1 as f32 / n as f32 };
        if depth >= params.max_depth || n < 2 * params.min_leaf || n1 == 0 || n1 == n {
            continue;
        }
        let parent = gini(n1 as f64, n as f64);
        let mut best: Option<(f64, usize, u8)> = None;
        for f in sample(rng, k, m).into_iter() {
            let nb = nbins[f];
            if nb < 2 {
                continue;
            }
            hist[..nb].iter_mut().for_each(|h| *h = [0, 0]);
            for &i in part.iter() {
                let i = i as usize;
                hist[x[i * k + f] as usize][(y[i] != 0) as usize] += 1;
            }
            let (mut l, mut l1) = (0usize, 0usize);
            for (b, h) in hist[..nb - 1].iter().enumerate() {
                l += (h[0] + h[1]) as usize;
                l1 += h[1] as usize;
                if l < params.min_leaf || n - l < params.min_leaf {
                    continue;
                }
                let gain =
                    parent - gini(l1 as f64, l as f64) - gini((n1 - l1) as f64, (n - l) as f64);
                if gain > 1e-12 && best.is_none_or(|(g, _, _)| gain > g) {
                    best = Some((gain, f, b as u8));
                }
            }
        }
        let Some((_, f, t)) = best else { continue };
        // Partition in place: left samples first.
        let mut split = 0;
        for j in 0..n {
            if x[part[j] as usize * k + f] <= t {
                part.swap(split, j);
                split += 1;
            }
        }
        let (left, right) = (nodes.len(), nodes.len() + 1);
        let leaf = Node {
            feature: u16::MAX,
            threshold: 0,
            left: 0,
            right: 0,
            p: 0.0,
        };
        nodes.extend([leaf, leaf]);
        nodes[node] = Node {
            feature: f as u16,
            threshold: t,
            left: left as u32,
            right: right as u32,
            p: 0.0,
        };
        todo.push((left, lo, lo + split, depth + 1));
        todo.push((right, lo + split, hi, depth + 1));
    }
    Tree { nodes }
}

impl Forest {
    /// Trains on the n×k row-major feature matrix `x` with 0/1 labels `y`.
    pub fn fit(x: &[f32], n: usize, k: usize, y: &[u8], params: &ForestParams) -> Forest {
        assert_eq!(x.len(), n * k, "feature matrix is not {n}×{k}");
        assert_eq!(y.len(), n, "{} labels for {n} samples", y.len());
        assert!(k < u16::MAX as usize, "too many features");
        let bins = Bins::fit(x, n, k, params.bins);
        let xb = bins.apply(x);
        let nbins: Vec<usize> = bins.cuts.iter().map(|c| c.len() + 1).collect();
        let trees = (0..params.trees)
            .into_par_iter()
            .map(|t| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    params.seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                let mut idx: Vec<u32> = if n == 0 {
                    Vec::new()
                } else {
                    (0..n).map(|_| rng.random_range(0..n) as u32).collect()
                };
                grow(&xb, k, y, &mut idx, params, &nbins, &mut rng)
            })
            .collect();
        Forest { bins, trees }
    }

    /// Probability of class 1 for each row of the n×k matrix `x`.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f32> {
        let k = self.bins.features();
        let xb = self.bins.apply(x);
        let mut out = vec![0f32; x.len() / k.max(1)];
        let scale = 1.0 / self.trees.len().max(1) as f32;
        out.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
            for (j, p) in o.iter_mut().enumerate() {
                let row = &xb[(c * 4096 + j) * k..(c * 4096 + j + 1) * k];
                *p = self.trees.iter().map(|t| t.predict(row)).sum::<f32>() * scale;
            }
        });
        out
    }

    /// Per row of `x`: the mean class-1 probability of each of `groups` consecutive groups of
    /// trees (`groups` ≤ trees) — samples of the forest's disagreement with itself.
    pub fn predict_groups(&self, x: &[f32], groups: usize) -> Vec<Vec<f32>> {
        let k = self.bins.features();
        let xb = self.bins.apply(x);
        let rows = x.len() / k.max(1);
        let groups = groups.clamp(1, self.trees.len().max(1));
        let per = self.trees.len() / groups;
        (0..groups)
            .map(|g| {
                let trees = &self.trees[g * per..(g + 1) * per];
                let scale = 1.0 / trees.len().max(1) as f32;
                let mut out = vec![0f32; rows];
                out.par_chunks_mut(4096).enumerate().for_each(|(c, o)| {
                    for (j, p) in o.iter_mut().enumerate() {
                        let row = &xb[(c * 4096 + j) * k..(c * 4096 + j + 1) * k];
                        *p = trees.iter().map(|t| t.predict(row)).sum::<f32>() * scale;
                    }
                });
                out
            })
            .collect()
    }

    /// The forest as bytes (little-endian): the bin cuts of each feature, then every tree's
    /// nodes. [`Forest::from_bytes`] reads it back.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(FOREST_MAGIC);
        b.extend_from_slice(&(self.bins.cuts.len() as u32).to_le_bytes());
        for cuts in &self.bins.cuts {
            b.extend_from_slice(&(cuts.len() as u32).to_le_bytes());
            for c in cuts {
                b.extend_from_slice(&c.to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.trees.len() as u32).to_le_bytes());
        for t in &self.trees {
            b.extend_from_slice(&(t.nodes.len() as u32).to_le_bytes());
            for n in &t.nodes {
                b.extend_from_slice(&n.feature.to_le_bytes());
                b.push(n.threshold);
                b.extend_from_slice(&n.left.to_le_bytes());
                b.extend_from_slice(&n.right.to_le_bytes());
                b.extend_from_slice(&n.p.to_le_bytes());
            }
        }
        b
    }

    /// Reads [`Forest::to_bytes`]; every node index and feature is checked, so a damaged or
    /// crafted object is an error, never a panic at prediction time.
    pub fn from_bytes(bytes: &[u8]) -> Result<Forest, String> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.take(FOREST_MAGIC.len())? != FOREST_MAGIC {
            return Err("not a biodc forest".into());
        }
        let k = r.u32()? as usize;
        let mut cuts = Vec::with_capacity(k.min(1 << 16));
        for _ in 0..k {
            let n = r.u32()? as usize;
            if n > 255 {
                return Err(format!("{n} bin cuts (at most 255)"));
            }
            cuts.push(
                (0..n)
                    .map(|_| r.f32())
                    .collect::<Result<Vec<f32>, String>>()?,
            );
        }
        let count = r.u32()? as usize;
        let mut trees = Vec::with_capacity(count.min(1 << 16));
        for _ in 0..count {
            let n = r.u32()? as usize;
            let mut nodes = Vec::with_capacity(n.min(bytes.len() / 15 + 1));
            for _ in 0..n {
                let node = Node {
                    feature: r.u16()?,
                    threshold: r.take(1)?[0],
                    left: r.u32()?,
                    right: r.u32()?,
                    p: r.f32()?,
                };
                let leaf = node.feature == u16::MAX;
                if !leaf
                    && (node.feature as usize >= k
                        || node.left as usize >= n
                        || node.right as usize >= n
                        || node.left as usize <= nodes.len()
                        || node.right as usize <= nodes.len())
                {
                    return Err("a tree node points outside its tree".into());
                }
                nodes.push(node);
            }
            if nodes.is_empty() {
                return Err("an empty tree".into());
            }
            trees.push(Tree { nodes });
        }
        if r.at != bytes.len() {
            return Err("trailing bytes after the last tree".into());
        }
        Ok(Forest {
            bins: Bins { cuts },
            trees,
        })
    }

    /// 0/1 labels (probability ≥ 0.5).
    pub fn predict(&self, x: &[f32]) -> Vec<u8> {
        self.predict_proba(x)
            .into_iter()
            .map(|p| (p >= 0.5) as u8)
            .collect()
    }
}

const FOREST_MAGIC: &[u8] = b"biodc-forest-1\n";

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or("the forest ends early")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two features carry the class (a diagonal boundary), three are noise.
    fn separable(n: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = Vec::with_capacity(n * 5);
        let mut y = Vec::with_capacity(n);
        while y.len() < n {
            let (a, b): (f32, f32) = (rng.random(), rng.random());
            let margin = a + b - 1.0;
            if margin.abs() < 0.02 {
                continue;
            }
            x.extend([a, rng.random(), b, rng.random(), rng.random()]);
            y.push((margin > 0.0) as u8);
        }
        (x, y)
    }

    #[test]
    fn learns_a_separable_case() {
        let (x, y) = separable(4000, 1);
        let forest = Forest::fit(&x, 4000, 5, &y, &ForestParams::default());
        let (xt, yt) = separable(4000, 2);
        let pred = forest.predict(&xt);
        let acc = pred.iter().zip(&yt).filter(|(a, b)| a == b).count() as f64 / yt.len() as f64;
        assert!(acc >= 0.99, "accuracy {acc} on a separable case");
        assert!(forest
            .trees
            .iter()
            .all(|t| t.depth() <= ForestParams::default().max_depth + 1));
    }

    #[test]
    fn same_seed_same_forest_and_degenerate_inputs() {
        let (x, y) = separable(500, 3);
        let p = ForestParams {
            trees: 4,
            ..ForestParams::default()
        };
        assert_eq!(
            Forest::fit(&x, 500, 5, &y, &p),
            Forest::fit(&x, 500, 5, &y, &p)
        );
        // One class only: every prediction is that class.
        let ones = vec![1u8; 500];
        assert!(Forest::fit(&x, 500, 5, &ones, &p)
            .predict(&x)
            .iter()
            .all(|&v| v == 1));
        // Constant features: no split, the prior decides.
        let flat = vec![0.5f32; 500 * 5];
        let probs = Forest::fit(&flat, 500, 5, &y, &p).predict_proba(&flat);
        assert!(probs.iter().all(|&v| v == probs[0]));
    }
}
