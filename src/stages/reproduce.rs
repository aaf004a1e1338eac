//! `reproduce`: re-runs the stage that made a commit, with the parameters, seed and thread count
//! of its `stage.json`, on its parent version, and compares what comes out with what was
//! recorded. Nothing is committed and HEAD does not move; the objects the re-run writes are
//! removed afterwards (the recorded ones are never touched).
//!
//! Outputs are compared by object hash first (bit-identical or not); where they differ the
//! report says by how much: the largest weight difference of two checkpoints, the Dice between
//! two masks, the largest difference of two matrices, which picks of a set changed, the RCA
//! change per stack. A recorded object that no longer matches its hash in the store (damaged,
//! tampered with) is reported as a mismatch too.

use crate::history::CommitId;
use crate::repo::Repo;
use crate::store::ObjectId;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// One output that did not come out the same.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    /// Where the output lives (`models/M0.json`, `annotations.jsonl: <patch>`, …).
    pub output: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReproduceReport {
    pub commit: String,
    pub parent: String,
    pub verb: String,
    pub threads: usize,
    /// Outputs compared (objects and manifests the stage changed).
    pub compared: usize,
    pub identical: bool,
    pub differences: Vec<Difference>,
    pub seconds: f64,
    /// The devices the networks ran on then and now (`cpu`, `cuda:N`).
    pub recorded_device: String,
    pub device: String,
    /// Set when the devices differ: bit-identity is then not expected, and the differences
    /// say by how much the outputs moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Runs the recorded stage again on `parent`.
fn rerun(
    repo: &Repo,
    verb: &str,
    p: &serde_json::Value,
    parent: CommitId,
    v: DatasetVersion,
) -> Result<DatasetVersion> {
    let Some(stage) = super::registered(verb) else {
        bail!("`{verb}` commits cannot be re-run");
    };
    stage
        .rerun(repo, parent, v, p)?
        .map(|(v, _)| v)
        .context("the re-run had nothing to commit (its inputs equal its parent)")
}

/// Objects a version names beyond those its parent names, by role.
fn new_objects(v: &DatasetVersion, parent: &DatasetVersion) -> BTreeMap<String, ObjectId> {
    let old: BTreeSet<(String, ObjectId)> = parent.object_refs().into_iter().collect();
    v.object_refs()
        .into_iter()
        .filter(|r| !old.contains(r))
        .collect()
}

/// Manifest files with volatile fields (wall-clock times) removed, so equal work compares equal.
fn stable_files(v: &DatasetVersion) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (path, bytes) in v.data_files()? {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = if path.ends_with(".jsonl") {
            text.lines()
                .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
                    Ok(mut j) => {
                        if let Some(o) = j.as_object_mut() {
                            o.remove("time");
                        }
                        j.to_string()
                    }
                    Err(_) => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            text
        };
        out.insert(path, text);
    }
    Ok(out)
}

/// How far apart two objects of the same role are.
fn describe(repo: &Repo, role: &str, a: &ObjectId, b: &ObjectId) -> String {
    let store = &repo.store;
    let (ra, rb) = match (store.get(a), store.get(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return format!("recorded object unreadable: {e:#}"),
        (_, Err(e)) => return format!("re-run object unreadable: {e:#}"),
    };
    if role.starts_with("models/") {
        let dev = candle_core::Device::Cpu;
        let (Ok(ta), Ok(tb)) = (
            crate::nn::checkpoint::from_safetensors(&ra, &dev),
            crate::nn::checkpoint::from_safetensors(&rb, &dev),
        ) else {
            return "checkpoints differ (not both readable as safetensors)".into();
        };
        let mut max = 0f32;
        for (name, x) in &ta {
            let Some(y) = tb.get(name) else {
                return format!("re-run checkpoint lacks tensor {name}");
            };
            let d = (x - y)
                .and_then(|d| d.abs())
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.max(0))
                .and_then(|d| d.to_scalar::<f32>());
            match d {
                Ok(d) => max = max.max(d),
                Err(_) => return format!("tensor {name} has a different shape"),
            }
        }
        return format!("weights differ: max abs difference {max:.3e}");
    }
    if ra.len() != rb.len() {
        return format!("sizes differ: {} vs {} bytes", ra.len(), rb.len());
    }
    if role.starts_with("annotations.jsonl") || role.contains(": prediction of ") {
        return format!("masks differ: Dice {:.4}", crate::pixel::dice(&ra, &rb));
    }
    if role.starts_with("embeddings/") || role.contains(": uncertainty of ") {
        let f = |r: &[u8]| -> Vec<f32> {
            r.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let max = f(&ra)
            .iter()
            .zip(f(&rb))
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        return format!("values differ: max abs difference {max:.3e}");
    }
    let differing = ra.iter().zip(&rb).filter(|(x, y)| x != y).count();
    format!("{differing} of {} bytes differ", ra.len())
}

/// What differs between two manifests of the same path.
fn describe_manifest(path: &str, a: &str, b: &str) -> String {
    if path == crate::version::RCA_FILE {
        let parse = |t: &str| -> BTreeMap<(String, String), f64> {
            t.lines()
                .filter_map(|l| serde_json::from_str::<crate::version::RcaRecord>(l).ok())
                .map(|r| ((r.stack, r.model), r.rca))
                .collect()
        };
        let (x, y) = (parse(a), parse(b));
        let diffs: Vec<String> = x
            .iter()
            .filter_map(|(k, v)| {
                let w = y.get(k)?;
                (v != w).then(|| format!("{} {:+.4}", k.0, w - v))
            })
            .collect();
        return format!("RCA changed: {}", diffs.join(", "));
    }
    if path.starts_with("sets/") {
        let picks = |t: &str| -> BTreeSet<String> {
            serde_json::from_str::<crate::version::PatchSet>(t)
                .map(|s| s.patches.into_iter().collect())
                .unwrap_or_default()
        };
        let (x, y) = (picks(a), picks(b));
        let gone = x.difference(&y).count();
        if gone > 0 {
            return format!("{gone} of {} picks differ", x.len());
        }
        let fields = |t: &str| -> BTreeMap<String, serde_json::Value> {
            let mut out = BTreeMap::new();
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(t) {
                for (k, v) in m {
                    match v {
                        serde_json::Value::Object(inner) if k == "extra" => out.extend(
                            inner
                                .into_iter()
                                .map(|(ik, iv)| (format!("extra.{ik}"), iv)),
                        ),
                        v => {
                            out.insert(k, v);
                        }
                    }
                }
            }
            out
        };
        let (fa, fb) = (fields(a), fields(b));
        let changed: Vec<&String> = fa.keys().filter(|k| fa.get(*k) != fb.get(*k)).collect();
        return format!("same picks; fields that differ: {changed:?}");
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let differing =
        la.iter().zip(&lb).filter(|(x, y)| x != y).count() + la.len().abs_diff(lb.len());
    format!("{differing} of {} lines differ", la.len().max(lb.len()))
}

pub fn reproduce(repo: &Repo, rev: &str) -> Result<ReproduceReport> {
    let started = Instant::now();
    let id = repo.history.resolve(rev)?;
    let recorded = DatasetVersion::load(&repo.history, id)?;
    let Some(stage) = recorded.stage.clone() else {
        bail!(
            "version {} has no stage record (the initial commit): nothing to re-run",
            &id.to_string()[..12]
        );
    };
    let info = repo.history.info(id)?;
    let Some(parent_hex) = info.parents.first() else {
        bail!(
            "version {} has no parent to re-run on",
            &id.to_string()[..12]
        );
    };
    let parent = repo.history.resolve(parent_hex)?;
    let parent_version = DatasetVersion::load(&repo.history, parent)?;
    let lock = repo.lock()?;
    // The repository handle is not Sync, so the re-run cannot move into a scoped pool: size the
    // global one instead. That only works before anything used rayon (true for the CLI); when it
    // is too late, a different thread count is reported with the result.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(stage.threads.max(1))
        .build_global();
    let threads = rayon::current_num_threads();
    let outcome = rerun(
        repo,
        &stage.verb,
        &stage.params,
        parent,
        parent_version.clone(),
    );

    let mut differences = Vec::new();
    let mut compared = 0;
    // A recorded output that is no longer intact in the store is a mismatch whatever the re-run
    // gives (both would carry the same name).
    let recorded_objects = new_objects(&recorded, &parent_version);
    for (role, obj) in &recorded_objects {
        if let Some(damage) = repo.store.verify(obj) {
            differences.push(Difference {
                output: role.clone(),
                detail: format!(
                    "the recorded object {} is damaged in the store: {damage:?}",
                    obj.short()
                ),
            });
        }
    }
    match outcome {
        Err(e) => differences.push(Difference {
            output: stage.verb.clone(),
            detail: format!("the re-run failed: {e:#}"),
        }),
        Ok(again) => {
            let rerun_objects = new_objects(&again, &parent_version);
            let roles: BTreeSet<&String> = recorded_objects
                .keys()
                .chain(rerun_objects.keys())
                .collect();
            for role in roles {
                compared += 1;
                match (recorded_objects.get(role), rerun_objects.get(role)) {
                    (Some(a), Some(b)) if a == b => {}
                    (Some(a), Some(b)) => differences.push(Difference {
                        output: role.clone(),
                        detail: describe(repo, role, a, b),
                    }),
                    (Some(_), None) => differences.push(Difference {
                        output: role.clone(),
                        detail: "recorded, but the re-run did not produce it".into(),
                    }),
                    (None, _) => differences.push(Difference {
                        output: role.clone(),
                        detail: "produced by the re-run, but not recorded".into(),
                    }),
                }
            }
            let (a, b, base) = (
                stable_files(&recorded)?,
                stable_files(&again)?,
                stable_files(&parent_version)?,
            );
            let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for path in paths {
                let (x, y) = (a.get(path), b.get(path));
                if x == base.get(path) && y == base.get(path) {
                    continue; // a manifest the stage did not touch
                }
                compared += 1;
                if x != y {
                    // Manifests that only name differing objects are reported through them.
                    let already = differences
                        .iter()
                        .any(|d| d.output.starts_with(path.as_str()));
                    if !already {
                        differences.push(Difference {
                            output: path.clone(),
                            detail: describe_manifest(
                                path,
                                x.map_or("", |s| s),
                                y.map_or("", |s| s),
                            ),
                        });
                    }
                }
            }
        }
    }
    if threads != stage.threads && !differences.is_empty() {
        differences.push(Difference {
            output: "threads".into(),
            detail: format!(
                "recorded with {} threads, re-run with {threads}: parallel floating-point sums may differ",
                stage.threads
            ),
        });
    }
    // The re-run's own objects are not part of any version.
    repo.store.roll_back(&lock);
    let recorded_device = stage.device.clone().unwrap_or_else(|| "cpu".into());
    let device = crate::nn::device::recorded(&stage.verb).unwrap_or_else(|| "cpu".into());
    let note = (recorded_device != device).then(|| {
        format!(
            "recorded on {recorded_device}, re-run on {device}: the devices compute in a \
             different order, so outputs agree within floating-point tolerance, not bit for \
             bit; the differences say by how much"
        )
    });
    Ok(ReproduceReport {
        recorded_device,
        device,
        note,
        commit: id.to_string(),
        parent: parent.to_string(),
        verb: stage.verb,
        threads,
        compared,
        identical: differences.is_empty(),
        differences,
        seconds: started.elapsed().as_secs_f64(),
    })
}
