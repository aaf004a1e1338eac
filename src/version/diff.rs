//! What changed between two dataset versions. Only manifests whose git blob ids differ are
//! parsed, so diffing two versions of a 100,000-patch repository that differ in one stack reads
//! one stack's manifests.

use super::{parse_json, parse_jsonl, split_manifest_path, AnnotationRecord, PatchRecord};
use super::{EmbeddingManifest, ModelManifest, PatchSet, RcaRecord, StackManifest};
use crate::history::{BlobId, CommitId, History};
use anyhow::Result;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Names added, removed and changed in one kind of item.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn from_maps<T: PartialEq>(a: &BTreeMap<String, T>, b: &BTreeMap<String, T>) -> Changes {
        let mut c = Changes::default();
        for (k, va) in a {
            match b.get(k) {
                None => c.removed.push(k.clone()),
                Some(vb) if vb != va => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
        c
    }

    fn extend(&mut self, other: Changes) {
        self.added.extend(other.added);
        self.removed.extend(other.removed);
        self.changed.extend(other.changed);
    }
}

/// The difference between version `a` and version `b`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionDiff {
    pub from: String,
    pub to: String,
    pub stacks: Changes,
    pub patches: Changes,
    /// Patch ids whose current mask was added, removed or replaced.
    pub annotations: Changes,
    pub sets: Changes,
    pub models: Changes,
    pub embeddings: Changes,
    /// Other manifests (qc, metrics) by path.
    pub other: Changes,
    /// Metrics of every model added or changed, A beside B.
    pub model_metrics: Vec<ModelMetrics>,
    /// Per-stack RCA (the latest line of each stack) in A and B, largest drop first.
    pub rca: Vec<RcaChange>,
}

/// One model's metrics in both versions (None where the model is absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetrics {
    pub name: String,
    pub a: Option<BTreeMap<String, f64>>,
    pub b: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RcaChange {
    pub stack: String,
    pub model_a: Option<String>,
    pub a: Option<f64>,
    pub model_b: Option<String>,
    pub b: Option<f64>,
    /// b − a where both exist.
    pub change: Option<f64>,
}

/// The latest RCA line of each stack (highest run).
pub fn latest_rca(lines: Vec<RcaRecord>) -> BTreeMap<String, RcaRecord> {
    let mut latest: BTreeMap<String, RcaRecord> = BTreeMap::new();
    for l in lines {
        match latest.get(&l.stack) {
            Some(e) if e.run > l.run => {}
            _ => {
                latest.insert(l.stack.clone(), l);
            }
        }
    }
    latest
}

fn rca_changes(a: Vec<RcaRecord>, b: Vec<RcaRecord>) -> Vec<RcaChange> {
    let (la, lb) = (latest_rca(a), latest_rca(b));
    let stacks: BTreeSet<&String> = la.keys().chain(lb.keys()).collect();
    let mut v: Vec<RcaChange> = stacks
        .into_iter()
        .map(|s| {
            let (x, y) = (la.get(s), lb.get(s));
            let (a, b) = (x.map(|r| r.rca), y.map(|r| r.rca));
            RcaChange {
                stack: s.clone(),
                model_a: x.map(|r| r.model.clone()),
                a,
                model_b: y.map(|r| r.model.clone()),
                b,
                change: a.zip(b).map(|(a, b)| b - a),
            }
        })
        .filter(|c| c.a != c.b || c.model_a != c.model_b)
        .collect();
    // Largest drop first; stacks scored on one side only go last.
    v.sort_by(|x, y| {
        let key = |c: &RcaChange| c.change.unwrap_or(f64::INFINITY);
        key(x).total_cmp(&key(y)).then(x.stack.cmp(&y.stack))
    });
    v
}

impl VersionDiff {
    pub fn is_empty(&self) -> bool {
        [
            &self.stacks,
            &self.patches,
            &self.annotations,
            &self.sets,
            &self.models,
            &self.embeddings,
            &self.other,
        ]
        .iter()
        .all(|c| c.is_empty())
    }
}

/// Diffs the versions committed as `a` and `b`.
pub fn diff(history: &History, a: CommitId, b: CommitId) -> Result<VersionDiff> {
    let ta = history.tree_of(a)?;
    let tb = history.tree_of(b)?;
    let mut d = VersionDiff {
        from: a.to_string(),
        to: b.to_string(),
        ..Default::default()
    };
    let paths: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for path in paths {
        let (ba, bb) = (ta.get(path), tb.get(path));
        if ba == bb {
            continue;
        }
        let read = |blob: Option<&BlobId>| -> Result<Option<Vec<u8>>> {
            blob.map(|b| history.blob(*b)).transpose()
        };
        let (xa, xb) = (read(ba)?, read(bb)?);
        match split_manifest_path(path) {
            ("stage.json" | "biodc.json", _) => {}
            ("stacks", Some(name)) => d.stacks.extend(one::<StackManifest>(path, name, xa, xb)?),
            ("sets", Some(name)) => d.sets.extend(one::<PatchSet>(path, name, xa, xb)?),
            ("models", Some(name)) => {
                let metrics = |x: &Option<Vec<u8>>| -> Result<Option<BTreeMap<String, f64>>> {
                    x.as_ref()
                        .map(|b| parse_json::<ModelManifest>(path, b).map(|m| m.metrics))
                        .transpose()
                };
                d.model_metrics.push(ModelMetrics {
                    name: name.to_string(),
                    a: metrics(&xa)?,
                    b: metrics(&xb)?,
                });
                d.models.extend(one::<ModelManifest>(path, name, xa, xb)?)
            }
            ("metrics", Some("rca")) => {
                d.rca = rca_changes(lines::<RcaRecord>(path, xa)?, lines::<RcaRecord>(path, xb)?);
                d.other.extend(presence(path, ba.is_some(), bb.is_some()));
            }
            ("embeddings", Some(name)) => d
                .embeddings
                .extend(one::<EmbeddingManifest>(path, name, xa, xb)?),
            ("patches", Some(_)) => {
                let by_id = |x: Option<Vec<u8>>| -> Result<BTreeMap<String, PatchRecord>> {
                    Ok(lines::<PatchRecord>(path, x)?
                        .into_iter()
                        .map(|p| (p.id.clone(), p))
                        .collect())
                };
                d.patches
                    .extend(Changes::from_maps(&by_id(xa)?, &by_id(xb)?));
            }
            ("annotations.jsonl", _) => {
                // The current mask of each patch is its last line.
                let latest = |x: Option<Vec<u8>>| -> Result<BTreeMap<String, AnnotationRecord>> {
                    Ok(lines::<AnnotationRecord>(path, x)?
                        .into_iter()
                        .map(|a| (a.patch.clone(), a))
                        .collect())
                };
                let (la, lb) = (latest(xa)?, latest(xb)?);
                let masks = |m: &BTreeMap<String, AnnotationRecord>| {
                    m.iter()
                        .map(|(k, a)| (k.clone(), a.mask))
                        .collect::<BTreeMap<_, _>>()
                };
                d.annotations = Changes::from_maps(&masks(&la), &masks(&lb));
            }
            _ => d.other.extend(presence(path, ba.is_some(), bb.is_some())),
        }
    }
    // Models that scored the stacks on either side are shown too, even when unchanged.
    let scoring: BTreeSet<String> = d
        .rca
        .iter()
        .flat_map(|r| r.model_a.iter().chain(&r.model_b).cloned())
        .collect();
    for name in scoring {
        if d.model_metrics.iter().any(|m| m.name == name) {
            continue;
        }
        let path = format!("models/{name}.json");
        let metrics = |t: &BTreeMap<String, BlobId>| -> Result<Option<BTreeMap<String, f64>>> {
            t.get(&path)
                .map(|b| parse_json::<ModelManifest>(&path, &history.blob(*b)?).map(|m| m.metrics))
                .transpose()
        };
        d.model_metrics.push(ModelMetrics {
            a: metrics(&ta)?,
            b: metrics(&tb)?,
            name,
        });
    }
    d.model_metrics.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(d)
}

fn one<T: serde::de::DeserializeOwned + PartialEq>(
    path: &str,
    name: &str,
    a: Option<Vec<u8>>,
    b: Option<Vec<u8>>,
) -> Result<Changes> {
    let parse = |x: Option<Vec<u8>>| -> Result<BTreeMap<String, T>> {
        Ok(x.map(|bytes| parse_json::<T>(path, &bytes))
            .transpose()?
            .map(|v| (name.to_string(), v))
            .into_iter()
            .collect())
    };
    Ok(Changes::from_maps(&parse(a)?, &parse(b)?))
}

fn lines<T: serde::de::DeserializeOwned>(path: &str, x: Option<Vec<u8>>) -> Result<Vec<T>> {
    x.map(|bytes| parse_jsonl(path, &bytes))
        .transpose()
        .map(Option::unwrap_or_default)
}

fn presence(path: &str, in_a: bool, in_b: bool) -> Changes {
    let p = vec![path.to_string()];
    match (in_a, in_b) {
        (false, true) => Changes {
            added: p,
            ..Default::default()
        },
        (true, false) => Changes {
            removed: p,
            ..Default::default()
        },
        _ => Changes {
            changed: p,
            ..Default::default()
        },
    }
}
