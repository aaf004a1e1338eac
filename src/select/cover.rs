//! Max K-cover (facility location) on a sparse similarity graph, greedy with lazy evaluation.
//!
//! Objective: F(S) = Σₓ max_{s∈S} sim(s, x), with sim clamped to ≥ 0 and kept only for each
//! patch's top-k neighbours (0 elsewhere). F is monotone submodular, so the greedy pick is within
//! (1 − 1/e) of the optimum, and lazy evaluation (a stale gain is an upper bound) skips most
//! gain recomputations.

use super::knn::Neighbours;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The greedy result: picks in order with their marginal gains, and the objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Cover {
    pub picks: Vec<usize>,
    pub gains: Vec<f64>,
    pub objective: f64,
    /// How many gains were (re)computed, against N·K for the plain greedy.
    pub evaluations: usize,
}

/// For each candidate c, the patches x whose neighbour list holds c, with sim(x, c) ≥ 0.
fn covered_by(nb: &Neighbours) -> Vec<Vec<(u32, f32)>> {
    let mut inv: Vec<Vec<(u32, f32)>> = vec![Vec::new(); nb.len()];
    for x in 0..nb.len() {
        for (c, s) in nb.of(x) {
            if s > 0.0 {
                inv[c as usize].push((x as u32, s));
            }
        }
    }
    inv
}

fn gain(list: &[(u32, f32)], best: &[f32]) -> f64 {
    list.iter()
        .map(|&(x, s)| (s - best[x as usize]).max(0.0) as f64)
        .sum()
}

#[derive(PartialEq)]
struct Entry {
    bound: f64,
    candidate: usize,
}

impl Eq for Entry {}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // Max-heap on the bound; ties go to the lower index, so picks are deterministic.
        self.bound
            .total_cmp(&other.bound)
            .then_with(|| other.candidate.cmp(&self.candidate))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Greedy max K-cover over the neighbour graph `nb`; `allowed[c]` false excludes a candidate
/// (e.g. QC-flagged patches) without removing it from what must be covered.
pub fn greedy(nb: &Neighbours, k: usize, allowed: &[bool]) -> Cover {
    greedy_with_quota(nb, k, allowed, None)
}

/// At least `min` picks from each group (`group[c]` of each candidate), where a group has that
/// many allowed candidates: the greedy picks freely until the free slots are all needed for
/// groups still short of their quota, then only from those groups.
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub group: &'a [usize],
    pub min: usize,
}

/// [`greedy`] under an optional [`Quota`].
pub fn greedy_with_quota(
    nb: &Neighbours,
    k: usize,
    allowed: &[bool],
    quota: Option<Quota>,
) -> Cover {
    let groups = quota.map_or(0, |q| q.group.iter().max().map_or(0, |g| g + 1));
    let mut need = vec![0usize; groups];
    if let Some(q) = quota {
        for (c, &g) in q.group.iter().enumerate() {
            need[g] += allowed[c] as usize;
        }
        need.iter_mut().for_each(|n| *n = (*n).min(q.min));
    }
    // Σ need: the slots still reserved for groups short of their quota.
    let mut reserved: usize = need.iter().sum();
    let inv = covered_by(nb);
    let mut best = vec![0f32; nb.len()];
    let mut heap: BinaryHeap<Entry> = (0..nb.len())
        .filter(|&c| allowed[c])
        .map(|c| Entry {
            bound: gain(&inv[c], &best),
            candidate: c,
        })
        .collect();
    let mut cover = Cover {
        picks: Vec::new(),
        gains: Vec::new(),
        objective: 0.0,
        evaluations: heap.len(),
    };
    let mut fresh = vec![0usize; nb.len()];
    while cover.picks.len() < k {
        let Some(top) = heap.pop() else { break };
        let round = cover.picks.len();
        if let Some(q) = quota {
            // Once every free slot is needed, a candidate of a satisfied group never becomes
            // eligible again: drop it.
            if k - round <= reserved && need[q.group[top.candidate]] == 0 {
                continue;
            }
        }
        if fresh[top.candidate] != round {
            // Stale bound: recompute and push back; it is picked only if it stays on top.
            fresh[top.candidate] = round;
            cover.evaluations += 1;
            heap.push(Entry {
                bound: gain(&inv[top.candidate], &best),
                candidate: top.candidate,
            });
            continue;
        }
        for &(x, s) in &inv[top.candidate] {
            let b = &mut best[x as usize];
            *b = b.max(s);
        }
        if let Some(q) = quota {
            let n = &mut need[q.group[top.candidate]];
            if *n > 0 {
                *n -= 1;
                reserved -= 1;
            }
        }
        cover.picks.push(top.candidate);
        cover.gains.push(top.bound);
        cover.objective += top.bound;
    }
    cover
}

/// The objective F(S) on the neighbour graph, computed directly (for checks).
pub fn objective(nb: &Neighbours, picks: &[usize]) -> f64 {
    (0..nb.len())
        .map(|x| {
            nb.of(x)
                .filter(|(c, _)| picks.contains(&(*c as usize)))
                .map(|(_, s)| s.max(0.0) as f64)
                .fold(0.0, f64::max)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::knn::{exact_knn, test_points};

    fn all_subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
        if k == 0 {
            return vec![vec![]];
        }
        if n < k {
            return vec![];
        }
        let mut out = all_subsets(n - 1, k);
        for mut s in all_subsets(n - 1, k - 1) {
            s.push(n - 1);
            out.push(s);
        }
        out
    }

    #[test]
    fn greedy_is_within_1_minus_1_over_e_of_exhaustive() {
        for seed in 0..5 {
            let (x, n, d) = test_points(14, 6, seed);
            let nb = exact_knn(&x, n, d, 5);
            let cover = greedy(&nb, 3, &vec![true; n]);
            assert!((cover.objective - objective(&nb, &cover.picks)).abs() < 1e-4);
            let best = all_subsets(n, 3)
                .iter()
                .map(|s| objective(&nb, s))
                .fold(0.0, f64::max);
            assert!(
                cover.objective >= (1.0 - (-1f64).exp()) * best - 1e-9,
                "seed {seed}: greedy {} vs optimum {best}",
                cover.objective
            );
            // Marginal gains of a submodular greedy never increase.
            assert!(cover.gains.windows(2).all(|w| w[1] <= w[0] + 1e-9));
        }
    }

    #[test]
    fn excluded_candidates_are_never_picked() {
        let (x, n, d) = test_points(30, 4, 1);
        let nb = exact_knn(&x, n, d, 6);
        let allowed: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
        let cover = greedy(&nb, 5, &allowed);
        assert_eq!(cover.picks.len(), 5);
        assert!(cover.picks.iter().all(|&p| p % 2 == 0));
    }

    #[test]
    fn a_quota_gives_every_group_its_minimum_and_costs_little_objective() {
        let (x, n, d) = test_points(60, 4, 2);
        let nb = exact_knn(&x, n, d, 8);
        let free = greedy(&nb, 4, &vec![true; n]);
        // Group 1 is two points the free greedy does not pick; group 2 has no allowed candidate.
        let lonely: Vec<usize> = (0..n).filter(|c| !free.picks.contains(c)).take(2).collect();
        let mut group = vec![0usize; n];
        lonely.iter().for_each(|&c| group[c] = 1);
        group[n - 1] = 2;
        let mut allowed = vec![true; n];
        allowed[n - 1] = false;
        let q = Quota {
            group: &group,
            min: 1,
        };
        let held = greedy_with_quota(&nb, 4, &allowed, Some(q));
        assert_eq!(held.picks.len(), 4);
        assert_eq!(held.picks.iter().filter(|&&c| group[c] == 1).count(), 1);
        assert!(held.picks.iter().all(|&c| allowed[c]));
        assert!((held.objective - objective(&nb, &held.picks)).abs() < 1e-4);
        assert!(held.objective <= free.objective + 1e-9);
        // The first three picks are the free greedy's: the quota only binds at the last slot.
        assert_eq!(held.picks[..3], free.picks[..3]);
    }
}
