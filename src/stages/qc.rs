//! `qc`: flags, never deletes. Per patch: exact duplicates (same tile hash), near duplicates
//! (cosine ≥ 0.99, confirmed by the pixels), blank, saturated, blurred (variance of
//! Laplacian), low SNR, odd texture (not tube-like: low Hessian anisotropy of the bright
//! structures), and embedding outliers (robust z-score of the log distance to the nearest
//! neighbours); per condition and per core-set cluster: counts and the imbalance ratio, and
//! conditions the core set under-covers.

use super::{patches::PatchList, Next};
use crate::history::CommitId;
use crate::io::Plane;
use crate::pixel::tile_stats::{thumb_correlation, tile_stats, TileStats};
use crate::repo::Repo;
use crate::select::knn::exact_knn;
use crate::version::{DatasetVersion, QcLine, QC_FILE};
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;

/// Robust z-score beyond which a patch is flagged (blurred / low SNR below −Z, outlier above +Z).
pub const Z: f64 = 4.0;
/// Robust z-score of log sharpness below which a patch is blurred: lower than [`Z`] because
/// blur only ever lowers sharpness, and in-focus tiles spread little on that scale.
pub const BLUR_Z: f64 = 3.0;
/// Cosine similarity at or above which two patches are near-duplicate candidates. Looser
/// than issue 4's 0.995 because the pixels confirm: at 0.995 a weak encoder missed 2 of 8
/// patches of a stack imaged again with camera-level noise (tests/qc.rs).
pub const NEAR_DUPLICATE: f32 = 0.99;
/// Pearson correlation of the two patches' thumbnails ([`THUMB`]² block means) at or above
/// which a candidate is confirmed. A weakly trained encoder packs many unrelated patches above
/// cosine 0.99 (at `demo --scale small` a third of all patches); the same field imaged twice
/// also matches pixel for pixel once the noise is averaged out, different tissue does not.
pub const NEAR_DUPLICATE_PIXELS: f64 = 0.9;
/// Fraction of pixels at the dtype's maximum that makes a patch saturated.
pub const SATURATED: f64 = 0.05;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct QcParams {
    /// Embeddings used for near duplicates and outliers (skipped when absent).
    pub model: String,
    /// Core set used for clusters and coverage (skipped when absent).
    pub coreset: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QcReport {
    pub patches: usize,
    pub flagged: usize,
    pub by_flag: BTreeMap<String, usize>,
    pub per_condition: BTreeMap<String, usize>,
    /// Largest over smallest condition count.
    pub condition_imbalance: f64,
    /// Patches per core-set cluster (nearest pick in embedding space).
    pub per_cluster: BTreeMap<String, usize>,
    pub cluster_imbalance: Option<f64>,
    /// Conditions with under half their fair share of core-set picks.
    pub under_covered: Vec<String>,
}

/// The `qc` verb.
pub struct Qc;

impl super::Stage for Qc {
    const VERB: &'static str = "qc";
    type Params = QcParams;
    type Report = QcReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &QcParams,
    ) -> Result<(Next, QcReport)> {
        qc(repo, head, version, params)
    }
}

pub fn qc(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &QcParams,
) -> Result<(Next, QcReport)> {
    let list = PatchList::all(&version)?;
    let n = list.len();
    let size = list.size;
    let store = &repo.store;
    let pb = crate::progress::bar(n as u64, "qc", false);
    let stats: Vec<TileStats> = list
        .items
        .par_iter()
        .map(|(stack, patch)| {
            pb.inc(1);
            Ok(tile_stats(
                &Plane::from_le_bytes(stack.dtype, &store.get(&patch.tile)?)?,
                size,
            ))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut lines: BTreeMap<String, QcLine> = BTreeMap::new();
    // Exact duplicates: every later patch with a tile hash already seen.
    let mut first: BTreeMap<_, &str> = BTreeMap::new();
    let mut dup_of: BTreeMap<String, String> = BTreeMap::new();
    for (_, p) in &list.items {
        match first.get(&p.tile) {
            Some(orig) => {
                dup_of.insert(p.id.clone(), orig.to_string());
            }
            None => {
                first.insert(p.tile, &p.id);
            }
        }
    }
    let informative: Vec<bool> = stats
        .iter()
        .map(|s| !s.blank && s.saturated < SATURATED)
        .collect();
    // Conditions are acquired apart (and may be different specimens or modalities): each patch
    // is compared with its own condition.
    let groups: Vec<String> = list
        .items
        .iter()
        .map(|(_, p)| version.condition_of(&p.id))
        .collect();
    let z_of = |f: fn(&TileStats) -> f64| {
        crate::stats::grouped_robust_z(
            &stats.iter().map(f).collect::<Vec<_>>(),
            &informative,
            &groups,
        )
    };
    // Sharpness is only judged where there is structure: a patch of pure noise (p99 less than
    // 5 σ above the median) has the highest Laplacian variance of all and would make every
    // real structure look blurred.
    let structured: Vec<bool> = stats
        .iter()
        .zip(&informative)
        .map(|(s, &i)| i && s.log_snr > 5f64.ln())
        .collect();
    let sharp_z = crate::stats::grouped_robust_z(
        &stats.iter().map(|s| s.log_sharpness).collect::<Vec<_>>(),
        &structured,
        &groups,
    );
    let snr_z = z_of(|s| s.log_snr);
    let tube_z = z_of(|s| s.tubularity);
    for (i, (_, p)) in list.items.iter().enumerate() {
        let s = &stats[i];
        if let Some(orig) = dup_of.get(&p.id) {
            flag(&mut lines, &p.id, "duplicate").duplicate_of = Some(orig.clone());
        }
        if s.blank {
            flag(&mut lines, &p.id, "blank");
        }
        if s.saturated >= SATURATED {
            flag(&mut lines, &p.id, "saturated");
        }
        if structured[i] && sharp_z[i] < -BLUR_Z {
            flag(&mut lines, &p.id, "blurred")
                .z
                .insert("sharpness".into(), sharp_z[i]);
        }
        if informative[i] && tube_z[i] < -Z {
            flag(&mut lines, &p.id, "odd_texture")
                .z
                .insert("tubularity".into(), tube_z[i]);
        }
        if informative[i] && snr_z[i] < -Z {
            flag(&mut lines, &p.id, "low_snr")
                .z
                .insert("snr".into(), snr_z[i]);
        }
    }
    let mut report = QcReport {
        patches: n,
        ..Default::default()
    };
    // Embedding-based flags and clusters, when embeddings exist.
    if let Some(e) = version.embeddings.get(&params.model) {
        let x = store.get_f32_matrix(&e.matrix, e.rows, e.dim)?;
        let nb = exact_knn(&x, e.rows, e.dim, 11);
        let index: BTreeMap<&str, usize> = list
            .items
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (p.id.as_str(), i))
            .collect();
        let mut dist = vec![0f64; e.rows];
        for i in 0..e.rows {
            let others: Vec<f32> = nb
                .of(i)
                .filter(|(j, _)| *j as usize != i)
                .map(|(_, s)| s)
                .collect();
            // On a log scale: kNN distances are right-skewed (most patches sit in dense
            // regions), and a robust z of the raw distance flagged 7 % of clean patches at
            // 2,520 patches, none of them a planted defect.
            let mean_sim =
                others.iter().map(|&s| s as f64).sum::<f64>() / others.len().max(1) as f64;
            dist[i] = (1.0 - mean_sim).max(1e-6).ln();
            // Candidates: earlier patches above the cosine threshold, except the same place in
            // an adjacent slice (expected to look alike); the first whose pixels agree is it.
            let a = &e.patches[i];
            let Some(&ia) = index.get(a.as_str()) else {
                continue;
            };
            if dup_of.contains_key(a) || stats[ia].blank {
                continue;
            }
            let confirmed = nb
                .of(i)
                .filter(|&(j, s)| {
                    (j as usize) < i
                        && s >= NEAR_DUPLICATE
                        && !crate::version::z_neighbours(a, &e.patches[j as usize])
                })
                .find_map(|(j, _)| {
                    let b = &e.patches[j as usize];
                    let pixels = thumb_correlation(&stats[ia], &stats[*index.get(b.as_str())?]);
                    (pixels >= NEAR_DUPLICATE_PIXELS).then_some((b, pixels))
                });
            if let Some((b, pixels)) = confirmed {
                let line = flag(&mut lines, a, "near_duplicate");
                line.duplicate_of = Some(b.clone());
                line.z.insert("pixel_correlation".into(), pixels);
            }
        }
        let use_: Vec<bool> = e
            .patches
            .iter()
            .map(|p| {
                index.get(p.as_str()).is_some_and(|&i| informative[i]) && !dup_of.contains_key(p)
            })
            .collect();
        let z = crate::stats::robust_z(&dist, &use_);
        for (i, id) in e.patches.iter().enumerate() {
            if use_[i] && z[i] > Z {
                flag(&mut lines, id, "outlier")
                    .z
                    .insert("knn_distance".into(), z[i]);
            }
        }
        if let Some(set) = version.sets.get(&params.coreset) {
            let row: BTreeMap<&str, usize> = e
                .patches
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_str(), i))
                .collect();
            let picks: Vec<usize> = set
                .patches
                .iter()
                .filter_map(|p| row.get(p.as_str()).copied())
                .collect();
            for i in 0..e.rows {
                let best = picks
                    .iter()
                    .max_by(|&&a, &&b| dot(&x, e.dim, i, a).total_cmp(&dot(&x, e.dim, i, b)))
                    .map(|&p| e.patches[p].clone());
                if let Some(b) = best {
                    *report.per_cluster.entry(b).or_default() += 1;
                }
            }
            report.cluster_imbalance = imbalance(&report.per_cluster);
            let mut picks_per: BTreeMap<String, usize> = BTreeMap::new();
            for p in &set.patches {
                *picks_per.entry(version.condition_of(p)).or_default() += 1;
            }
            report.under_covered = condition_counts(&version, &list)
                .iter()
                .filter(|(c, count)| {
                    let fair = set.patches.len() as f64 * **count as f64 / n as f64;
                    (picks_per.get(*c).copied().unwrap_or(0) as f64) < 0.5 * fair
                })
                .map(|(c, _)| c.clone())
                .collect();
        }
    }
    report.per_condition = condition_counts(&version, &list);
    report.condition_imbalance = imbalance(&report.per_condition).unwrap_or(1.0);
    for line in lines.values() {
        for f in &line.flags {
            *report.by_flag.entry(f.clone()).or_default() += 1;
        }
    }
    report.flagged = lines.len();
    let mut text = Vec::new();
    for line in lines.values() {
        serde_json::to_writer(&mut text, line)?;
        text.push(b'\n');
    }
    version.other.insert(QC_FILE.into(), text);
    let summary = format!(
        "qc: {} of {n} patches flagged ({}); condition imbalance {:.2}{}",
        report.flagged,
        report
            .by_flag
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        report.condition_imbalance,
        if report.under_covered.is_empty() {
            String::new()
        } else {
            format!(
                "; core set under-covers {}",
                report.under_covered.join(", ")
            )
        }
    );
    let mut record = <Qc as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert(QC_FILE.into(), format!("{} flagged", report.flagged));
    record
        .outputs
        .insert("summary".into(), serde_json::to_string(&report)?);
    Ok((Some((version, record)), report))
}

/// Adds flag `f` to patch `id`'s line (creating it) and returns the line.
fn flag<'a>(lines: &'a mut BTreeMap<String, QcLine>, id: &str, f: &str) -> &'a mut QcLine {
    let line = lines.entry(id.to_string()).or_insert_with(|| QcLine {
        patch: id.into(),
        flags: Vec::new(),
        duplicate_of: None,
        z: BTreeMap::new(),
    });
    line.flags.push(f.to_string());
    line
}

fn dot(x: &[f32], d: usize, a: usize, b: usize) -> f32 {
    x[a * d..(a + 1) * d]
        .iter()
        .zip(&x[b * d..(b + 1) * d])
        .map(|(p, q)| p * q)
        .sum()
}

fn condition_counts(version: &DatasetVersion, list: &PatchList) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (_, p) in &list.items {
        *out.entry(version.condition_of(&p.id)).or_default() += 1;
    }
    out
}

fn imbalance(counts: &BTreeMap<String, usize>) -> Option<f64> {
    let max = *counts.values().max()?;
    let min = *counts.values().min()?;
    Some(max as f64 / min.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixel::tile_stats::thumbnail;
    use rand::{Rng, SeedableRng};

    /// Roughly standard normal: the centred sum of four uniforms, scaled to unit variance.
    fn noise_sample(rng: &mut rand_chacha::ChaCha8Rng) -> f32 {
        ((0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0) * 3f32.sqrt()
    }

    /// A 128² patch: a vessel-like bright band along `angle` plus noise of σ `noise` from `seed`.
    fn patch(angle: f32, noise: f32, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (c, s) = (angle.cos(), angle.sin());
        (0..128 * 128)
            .map(|i| {
                let (y, x) = ((i / 128) as f32 - 64.0, (i % 128) as f32 - 64.0);
                let d = (x * s - y * c).abs();
                1000.0 + 2000.0 * (-d * d / 18.0).exp() + noise * noise_sample(&mut rng)
            })
            .collect()
    }

    fn stats(v: &[f32]) -> TileStats {
        TileStats {
            blank: false,
            saturated: 0.0,
            log_sharpness: 0.0,
            log_snr: 0.0,
            tubularity: 0.0,
            thumb: thumbnail(v, 128),
        }
    }

    #[test]
    fn the_same_field_imaged_twice_matches_in_pixels_other_fields_do_not() {
        let field = stats(&patch(0.3, 300.0, 1));
        let again = stats(&patch(0.3, 300.0, 2));
        let other = stats(&patch(1.2, 300.0, 3));
        let same = thumb_correlation(&field, &again);
        assert!(same >= NEAR_DUPLICATE_PIXELS, "re-imaged field: {same}");
        assert!(thumb_correlation(&field, &other) < 0.5);
        // Background only: noise correlates with nothing.
        let pure = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            stats(
                &(0..128 * 128)
                    .map(|_| 1000.0 + 100.0 * noise_sample(&mut rng))
                    .collect::<Vec<f32>>(),
            )
        };
        assert!(thumb_correlation(&pure(6), &pure(7)).abs() < 0.3);
        // A flat thumbnail correlates with nothing (and does not divide by zero).
        let flat = stats(&[5.0; 128 * 128]);
        assert_eq!(thumb_correlation(&flat, &field), 0.0);
    }
}
