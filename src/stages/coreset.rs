//! `coreset`: the K most representative patches by max K-cover over the embeddings' cosine
//! similarity (or the `random` / `kcenter` baselines), stored as `sets/<name>.json`.

use super::Next;
use crate::history::CommitId;
use crate::repo::Repo;
use crate::select::{cover, kcenter::kcenter, knn::exact_knn};
use crate::version::{DatasetVersion, PatchSet};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// How to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Max K-cover (facility location), greedy with lazy evaluation.
    Kcover,
    /// Uniformly random patches (baseline).
    Random,
    /// Farthest-point k-center (the seed paper's code; baseline).
    Kcenter,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CoresetParams {
    pub k: usize,
    pub model: String,
    pub neighbours: usize,
    pub name: String,
    pub method: Method,
    pub seed: u64,
    /// QC flags whose patches may not be picked (they still count as data to cover).
    pub exclude: Vec<String>,
    /// K-cover only: at least this many picks from each condition (0: no quota).
    #[serde(default)]
    pub per_condition: usize,
}

/// Coverage of one condition by the picks.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Coverage {
    pub patches: usize,
    pub picks: usize,
    /// Mean over the condition's patches of the cosine similarity to the nearest pick.
    pub mean_similarity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoresetReport {
    pub picks: Vec<String>,
    pub objective: f64,
    pub coverage: BTreeMap<String, Coverage>,
    pub seconds: f64,
}

/// The `coreset` verb.
pub struct Coreset;

impl super::Stage for Coreset {
    const VERB: &'static str = "coreset";
    type Params = CoresetParams;
    type Report = CoresetReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &CoresetParams,
    ) -> Result<(Next, CoresetReport)> {
        coreset(repo, head, version, params)
    }

    fn seed(params: &CoresetParams) -> Option<u64> {
        Some(params.seed)
    }
}

pub fn coreset(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &CoresetParams,
) -> Result<(Next, CoresetReport)> {
    let started = Instant::now();
    let emb = version.embeddings.get(&params.model).with_context(|| {
        format!(
            "no embeddings of model {:?} in this version: run `biodc embed --model {}` first",
            params.model, params.model
        )
    })?;
    let (n, d) = (emb.rows, emb.dim);
    if params.k == 0 || params.k > n {
        bail!(
            "-k {} must be between 1 and the {n} embedded patches",
            params.k
        );
    }
    let x = repo.store.get_f32_matrix(&emb.matrix, n, d)?;
    if params.per_condition > 0 && params.method != Method::Kcover {
        bail!("--per-condition applies to --method kcover only");
    }
    let flagged = version.flagged_patches(&params.exclude)?;
    let allowed: Vec<bool> = emb.patches.iter().map(|p| !flagged.contains(p)).collect();
    if allowed.iter().filter(|a| **a).count() < params.k {
        bail!("fewer than {} patches are left after --exclude", params.k);
    }
    let nb = exact_knn(&x, n, d, params.neighbours.max(1));
    let conditions: Vec<String> = emb
        .patches
        .iter()
        .map(|p| version.condition_of(p))
        .collect();
    let (picks, scores) = match params.method {
        Method::Kcover => {
            let names: BTreeSet<&String> = conditions.iter().collect();
            if params.k < params.per_condition * names.len() {
                bail!(
                    "-k {} cannot hold --per-condition {} picks from each of {} conditions",
                    params.k,
                    params.per_condition,
                    names.len()
                );
            }
            let index: BTreeMap<&String, usize> =
                names.iter().enumerate().map(|(i, c)| (*c, i)).collect();
            let group: Vec<usize> = conditions.iter().map(|c| index[c]).collect();
            let quota = (params.per_condition > 0).then_some(cover::Quota {
                group: &group,
                min: params.per_condition,
            });
            let c = cover::greedy_with_quota(&nb, params.k, &allowed, quota);
            (c.picks, c.gains)
        }
        Method::Random => {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(params.seed);
            let mut pool: Vec<usize> = (0..n).filter(|&i| allowed[i]).collect();
            pool.shuffle(&mut rng);
            pool.truncate(params.k);
            (pool, Vec::new())
        }
        Method::Kcenter => {
            let first = (params.seed as usize % n..n)
                .chain(0..n)
                .find(|&i| allowed[i])
                .expect("some patch is allowed");
            kcenter(&x, n, d, params.k, first, &allowed)
        }
    };
    let objective = cover::objective(&nb, &picks);
    let coverage = coverage(&conditions, &x, d, &picks);
    let ids: Vec<String> = picks.iter().map(|&i| emb.patches[i].clone()).collect();
    let mut extra = BTreeMap::new();
    extra.insert("objective".into(), serde_json::json!(objective));
    extra.insert("coverage".into(), serde_json::to_value(&coverage)?);
    extra.insert("embedded_patches".into(), serde_json::json!(n));
    let set = PatchSet {
        name: params.name.clone(),
        method: serde_json::to_value(params.method)?
            .as_str()
            .unwrap_or_default()
            .into(),
        params: serde_json::to_value(params)?,
        patches: ids.clone(),
        scores: scores
            .iter()
            .map(|s| if s.is_finite() { *s } else { 0.0 })
            .collect(),
        extra,
        objects: BTreeMap::new(),
    };
    version.sets.insert(params.name.clone(), set);
    let uncovered: Vec<&String> = coverage
        .iter()
        .filter(|(_, c)| c.picks == 0)
        .map(|(k, _)| k)
        .collect();
    let summary = format!(
        "coreset: {} picks by {:?} from {n} patches, objective {objective:.1}{}",
        params.k,
        params.method,
        if uncovered.is_empty() {
            String::new()
        } else {
            format!(
                ", conditions without a pick: {}",
                uncovered
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let mut record = <Coreset as super::Stage>::record(repo, params, &summary)?;
    record
        .inputs
        .insert(format!("embeddings/{}", params.model), emb.matrix.to_hex());
    record
        .outputs
        .insert(format!("sets/{}", params.name), ids.join(","));
    let seconds = started.elapsed().as_secs_f64();
    record
        .timings_ms
        .insert("coreset".into(), (seconds * 1000.0) as u64);
    let report = CoresetReport {
        picks: ids,
        objective,
        coverage,
        seconds,
    };
    Ok((Some((version, record)), report))
}

/// Per condition: patch count, picks, and mean similarity to the nearest pick (exact).
fn coverage(
    conditions: &[String],
    x: &[f32],
    d: usize,
    picks: &[usize],
) -> BTreeMap<String, Coverage> {
    let picked: BTreeSet<usize> = picks.iter().copied().collect();
    let mut out: BTreeMap<String, Coverage> = BTreeMap::new();
    for (i, condition) in conditions.iter().enumerate() {
        let row = &x[i * d..(i + 1) * d];
        let best = picks
            .iter()
            .map(|&p| {
                row.iter()
                    .zip(&x[p * d..(p + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum::<f32>()
            })
            .fold(f32::NEG_INFINITY, f32::max);
        let c = out.entry(condition.clone()).or_insert(Coverage {
            patches: 0,
            picks: 0,
            mean_similarity: 0.0,
        });
        c.patches += 1;
        c.picks += picked.contains(&i) as usize;
        c.mean_similarity += best as f64;
    }
    for c in out.values_mut() {
        c.mean_similarity /= c.patches as f64;
    }
    out
}
