//! Core-set benchmark (issue 4, acceptance 4): K = 25 picks by max K-cover from 90,860 × 256
//! clustered random embeddings, exact top-50 neighbours.
//!
//!     cargo bench --bench coreset [-- N DIM K NEIGHBOURS]
//!
//! Prints the time of the neighbour search and of the greedy, and the peak resident memory.

use biodc::select::{cover, knn};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = *args.first().unwrap_or(&90_860);
    let d = *args.get(1).unwrap_or(&256);
    let k = *args.get(2).unwrap_or(&25);
    let neighbours = *args.get(3).unwrap_or(&50);
    let x = clustered(n, d, 200, 7);
    let t0 = Instant::now();
    let nb = knn::exact_knn(&x, n, d, neighbours);
    let t_knn = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let c = cover::greedy(&nb, k, &vec![true; n]);
    let t_greedy = t1.elapsed().as_secs_f64();
    println!(
        "coreset n={n} dim={d} K={k} neighbours={neighbours} threads={}: knn {t_knn:.2} s, \
         greedy {t_greedy:.3} s ({} gain evaluations), total {:.2} s, objective {:.1}, \
         peak RSS {} MB",
        rayon::current_num_threads(),
        c.evaluations,
        t_knn + t_greedy,
        c.objective,
        peak_rss_mb()
    );
}

/// L2-normalised points around `clusters` random centres of varied spread.
fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<f32> = (0..clusters * d)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let mut x = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = rng.random_range(0..clusters);
        let spread = 0.2 + 0.6 * (c as f32 / clusters as f32);
        let v: Vec<f32> = (0..d)
            .map(|j| centres[c * d + j] + spread * rng.random_range(-1.0f32..1.0))
            .collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        x.extend(v.iter().map(|a| a / norm));
    }
    x
}

fn peak_rss_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
