//! Which manifests name which patches, stacks and models: annotations, sets and their per-patch
//! objects, embeddings, QC flags (`qc.jsonl`) and RCA lines (`metrics/rca.jsonl`).
//!
//! `fsck` reports names that point at nothing ([`dangling`]); `import` refuses to replace a
//! stack whose patches something names ([`dependents`]) unless told to, and then removes those
//! references from the new version and lists them ([`drop_references`]).

use super::{DatasetVersion, QC_FILE, RCA_FILE};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Lines of a JSON-lines manifest in `other`, parsed loosely (unparsable lines are None).
fn json_lines(v: &DatasetVersion, path: &str) -> Vec<(String, Option<serde_json::Value>)> {
    v.other.get(path).map_or_else(Vec::new, |bytes| {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (l.to_string(), serde_json::from_str(l).ok()))
            .collect()
    })
}

fn field<'a>(line: &'a Option<serde_json::Value>, key: &str) -> Option<&'a str> {
    line.as_ref()?.get(key)?.as_str()
}

/// One message per manifest that names patches, stacks or models the version does not hold
/// (with the count and the first few names).
pub fn dangling(v: &DatasetVersion) -> Vec<String> {
    let ids: HashSet<&str> = v.all_patches().map(|(_, p)| p.id.as_str()).collect();
    let mut out = Vec::new();
    let mut shape_problems = Vec::new();
    let mut report = |place: String, what: &str, missing: Vec<String>| {
        if missing.is_empty() {
            return;
        }
        let shown: Vec<&str> = missing.iter().take(3).map(String::as_str).collect();
        out.push(format!(
            "{place} names {} {what} this version does not hold: {}{}",
            missing.len(),
            shown.join(", "),
            if missing.len() > 3 { ", …" } else { "" }
        ));
    };
    let absent = |names: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        let mut seen = BTreeSet::new();
        names
            .filter(|n| !ids.contains(n) && seen.insert(*n))
            .map(str::to_string)
            .collect()
    };
    report(
        "annotations.jsonl".into(),
        "patches",
        absent(&mut v.annotations.iter().map(|a| a.patch.as_str())),
    );
    for (name, set) in &v.sets {
        let mut named = set.patches.iter().map(String::as_str).chain(
            set.objects
                .values()
                .flat_map(|m| m.keys().map(String::as_str)),
        );
        report(format!("sets/{name}.json"), "patches", absent(&mut named));
    }
    for (name, e) in &v.embeddings {
        let place = format!("embeddings/{name}.json");
        report(
            place.clone(),
            "patches",
            absent(&mut e.patches.iter().map(String::as_str)),
        );
        if e.rows != e.patches.len() {
            shape_problems.push(format!(
                "{place} has {} rows but names {} patches",
                e.rows,
                e.patches.len()
            ));
        }
        if !v.models.contains_key(&e.model) {
            report(place, "models", vec![e.model.clone()]);
        }
    }
    let qc = json_lines(v, QC_FILE);
    let mut named = qc
        .iter()
        .flat_map(|(_, l)| [field(l, "patch"), field(l, "duplicate_of")])
        .flatten();
    report(QC_FILE.into(), "patches", absent(&mut named));
    let rca = json_lines(v, RCA_FILE);
    let stacks: BTreeSet<String> = rca
        .iter()
        .filter_map(|(_, l)| field(l, "stack"))
        .filter(|s| !v.stacks.contains_key(*s))
        .map(str::to_string)
        .collect();
    report(RCA_FILE.into(), "stacks", stacks.into_iter().collect());
    let models: BTreeSet<String> = rca
        .iter()
        .filter_map(|(_, l)| field(l, "model"))
        .filter(|m| !v.models.contains_key(*m))
        .map(str::to_string)
        .collect();
    report(RCA_FILE.into(), "models", models.into_iter().collect());
    out.extend(shape_problems);
    out
}

/// What in a version names the patches of one stack.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dependents {
    pub annotations: usize,
    pub sets: Vec<String>,
    pub embeddings: Vec<String>,
    pub qc_lines: usize,
    pub rca_lines: usize,
}

impl Dependents {
    pub fn is_empty(&self) -> bool {
        self.annotations == 0
            && self.sets.is_empty()
            && self.embeddings.is_empty()
            && self.qc_lines == 0
            && self.rca_lines == 0
    }

    /// "3 annotations, sets coreset, candidates-1, embeddings of mae".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.annotations > 0 {
            parts.push(format!("{} annotations", self.annotations));
        }
        if !self.sets.is_empty() {
            parts.push(format!("sets {}", self.sets.join(", ")));
        }
        if !self.embeddings.is_empty() {
            parts.push(format!("embeddings of {}", self.embeddings.join(", ")));
        }
        if self.qc_lines > 0 {
            parts.push(format!("{} QC flags", self.qc_lines));
        }
        if self.rca_lines > 0 {
            parts.push(format!("{} RCA scores", self.rca_lines));
        }
        parts.join(", ")
    }
}

fn of_stack(stack: &str) -> impl Fn(&str) -> bool + '_ {
    move |id: &str| super::stack_of_patch_id(id) == Some(stack)
}

/// What in `v` names a patch of `stack` (or, for RCA lines, the stack itself).
pub fn dependents(v: &DatasetVersion, stack: &str) -> Dependents {
    let mine = of_stack(stack);
    let qc = json_lines(v, QC_FILE);
    Dependents {
        annotations: v.annotations.iter().filter(|a| mine(&a.patch)).count(),
        sets: v
            .sets
            .iter()
            .filter(|(_, s)| s.patches.iter().any(|p| mine(p)))
            .map(|(n, _)| n.clone())
            .collect(),
        embeddings: v
            .embeddings
            .iter()
            .filter(|(_, e)| e.patches.iter().any(|p| mine(p)))
            .map(|(n, _)| n.clone())
            .collect(),
        qc_lines: qc
            .iter()
            .filter(|(_, l)| {
                field(l, "patch").is_some_and(&mine) || field(l, "duplicate_of").is_some_and(&mine)
            })
            .count(),
        rca_lines: json_lines(v, RCA_FILE)
            .iter()
            .filter(|(_, l)| field(l, "stack") == Some(stack))
            .count(),
    }
}

/// What [`drop_references`] removed from a version.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Dropped {
    /// Annotations removed: "patch (round r)".
    pub annotations: Vec<String>,
    /// Members removed from each set.
    pub set_members: BTreeMap<String, Vec<String>>,
    /// Embeddings removed (they named a patch whose pixels changed or vanished).
    pub embeddings: Vec<String>,
    pub qc_lines: usize,
    pub rca_lines: usize,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.annotations.is_empty()
            && self.set_members.is_empty()
            && self.embeddings.is_empty()
            && self.qc_lines == 0
            && self.rca_lines == 0
    }
}

/// Removes from `v` what was made on pixels that are no longer there, after stack `stack` was
/// replaced: `vanished` patches no longer exist; `changed` ones hold new pixels. Annotations,
/// embeddings and QC flags of either are removed (a mask drawn on other pixels is not a mask
/// of these); sets lose only vanished members (a changed patch is still a valid choice); RCA
/// scores of the stack are removed when any of its pixels changed.
pub fn drop_references(
    v: &mut DatasetVersion,
    stack: &str,
    vanished: &BTreeSet<String>,
    changed: &BTreeSet<String>,
) -> Dropped {
    let mut dropped = Dropped::default();
    let stale = |id: &str| vanished.contains(id) || changed.contains(id);
    v.annotations.retain(|a| {
        let keep = !stale(&a.patch);
        if !keep {
            dropped
                .annotations
                .push(format!("{} (round {})", a.patch, a.round));
        }
        keep
    });
    for (name, set) in v.sets.iter_mut() {
        let parallel = set.scores.len() == set.patches.len();
        let mut removed = Vec::new();
        let mut kept_scores = Vec::new();
        let mut kept = Vec::new();
        for (i, p) in set.patches.drain(..).enumerate() {
            if vanished.contains(&p) {
                removed.push(p);
            } else {
                if parallel {
                    kept_scores.push(set.scores[i]);
                }
                kept.push(p);
            }
        }
        set.patches = kept;
        if parallel {
            set.scores = kept_scores;
        }
        for objects in set.objects.values_mut() {
            objects.retain(|p, _| !vanished.contains(p));
        }
        if !removed.is_empty() {
            dropped.set_members.insert(name.clone(), removed);
        }
    }
    v.embeddings.retain(|name, e| {
        let keep = !e.patches.iter().any(|p| stale(p));
        if !keep {
            dropped.embeddings.push(name.clone());
        }
        keep
    });
    let filter =
        |v: &mut DatasetVersion, path: &str, drop: &dyn Fn(&Option<serde_json::Value>) -> bool| {
            let lines = json_lines(v, path);
            if lines.is_empty() {
                return 0;
            }
            let before = lines.len();
            let text: String = lines
                .into_iter()
                .filter(|(_, l)| !drop(l))
                .map(|(raw, _)| raw + "\n")
                .collect();
            let after = text.lines().count();
            v.other.insert(path.to_string(), text.into_bytes());
            before - after
        };
    dropped.qc_lines = filter(v, QC_FILE, &|l| {
        field(l, "patch").is_some_and(&stale) || field(l, "duplicate_of").is_some_and(&stale)
    });
    if !vanished.is_empty() || !changed.is_empty() {
        dropped.rca_lines = filter(v, RCA_FILE, &|l| field(l, "stack") == Some(stack));
    }
    dropped
}
