//! `merge`: two lines of work on one base — typically two annotators' rounds on their own
//! branches or clones — become one version with both as parents.
//!
//! Three-way, against the newest version both descend from: whatever only one side changed is
//! taken from it. Annotations are records: each side's new records are kept; a patch that both
//! sides gave a new, different mask is a conflict. Stacks, sets, models, embeddings and other
//! manifests are whole values by name: both sides changing one differently is a conflict.
//! Nothing is picked silently: with any conflict nothing is committed and each is listed.

use super::Next;
use crate::history::CommitId;
use crate::repo::Repo;
use crate::version::{AnnotationRecord, DatasetVersion};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeParams {
    /// The version merged into HEAD.
    pub theirs: String,
    /// The version both descend from.
    pub base: String,
}

/// Something both sides changed differently.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    /// `annotation`, `stack`, `set`, `model`, `embedding`, `manifest` or `meta`.
    pub kind: String,
    /// The patch, stack, set, model or file.
    pub name: String,
    pub ours: String,
    pub theirs: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub ours: String,
    pub theirs: String,
    pub base: String,
    /// Annotation records that came from theirs.
    pub annotations_taken: usize,
    /// Names whose value came from theirs (`set coreset`, `model M1`, …).
    pub taken: Vec<String>,
    pub conflicts: Vec<Conflict>,
}

/// The `merge` verb.
pub struct Merge;

impl super::Stage for Merge {
    const VERB: &'static str = "merge";
    type Params = MergeParams;
    type Report = MergeReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &MergeParams,
    ) -> Result<(Next, MergeReport)> {
        merge(repo, head, version, params)
    }
}

/// What `merge REV` did.
#[derive(Debug, Clone, Serialize)]
pub struct MergeOutcome {
    /// `up-to-date`, `fast-forward`, `merged` or `conflict`.
    pub outcome: String,
    /// HEAD afterwards.
    pub head: String,
    pub report: Option<MergeReport>,
}

/// Merges the version `rev` names into HEAD: nothing when HEAD has it already, a fast-forward
/// when HEAD is behind it, else a merge commit (or the conflicts, committing nothing).
pub fn merge_into_head(repo: &Repo, rev: &str) -> Result<MergeOutcome> {
    let theirs = repo.history.resolve(rev)?;
    let head = repo.head()?;
    let done = |outcome: &str, head: CommitId| MergeOutcome {
        outcome: outcome.into(),
        head: head.to_string(),
        report: None,
    };
    if repo.history.is_ancestor(theirs, head)? {
        return Ok(done("up-to-date", head));
    }
    if repo.history.is_ancestor(head, theirs)? {
        let _lock = repo.lock()?;
        match repo.history.head_branch()? {
            Some(b) => repo
                .history
                .move_ref(&format!("refs/heads/{b}"), theirs, Some(head))?,
            None => repo
                .history
                .set_head(crate::history::HeadTarget::Detached(theirs))?,
        }
        return Ok(done("fast-forward", theirs));
    }
    let base = repo.history.merge_base(head, theirs)?.with_context(|| {
        format!("HEAD and {rev} share no version: they are not two lines of one dataset")
    })?;
    let params = MergeParams {
        theirs: theirs.to_string(),
        base: base.to_string(),
    };
    let (commit, report) = <Merge as super::Stage>::commit(repo, &params)?;
    Ok(MergeOutcome {
        outcome: if commit.is_some() {
            "merged"
        } else {
            "conflict"
        }
        .into(),
        head: commit.unwrap_or(head).to_string(),
        report: Some(report),
    })
}

fn commit_of(repo: &Repo, hex: &str) -> Result<(CommitId, DatasetVersion)> {
    let id = repo.history.resolve(hex)?;
    Ok((id, DatasetVersion::load(&repo.history, id)?))
}

pub fn merge(
    repo: &Repo,
    head: CommitId,
    ours: DatasetVersion,
    params: &MergeParams,
) -> Result<(Next, MergeReport)> {
    let (theirs_id, theirs) = commit_of(repo, &params.theirs).context("the version to merge")?;
    let (base_id, base) = commit_of(repo, &params.base).context("the merge base")?;
    let mut report = MergeReport {
        ours: head.to_string(),
        theirs: theirs_id.to_string(),
        base: base_id.to_string(),
        annotations_taken: 0,
        taken: Vec::new(),
        conflicts: Vec::new(),
    };
    let merged = merge_versions(&base, ours, &theirs, &mut report);
    if !report.conflicts.is_empty() {
        return Ok((None, report));
    }
    let short = |s: &str| s[..12].to_string();
    let summary = format!(
        "merge {} into {}: {} annotations{}{}",
        short(&report.theirs),
        short(&report.ours),
        report.annotations_taken,
        if report.taken.is_empty() { "" } else { ", " },
        report.taken.join(", ")
    );
    let mut record = <Merge as super::Stage>::record(repo, params, &summary)?;
    record.merged = Some(theirs_id.to_string());
    record.inputs.insert("base".into(), base_id.to_string());
    Ok((Some((merged, record)), report))
}

/// One value by name, three ways: what only one side changed wins; both changing it
/// differently is a conflict (ours is kept in the returned map, which is then not committed).
fn three_way<V: PartialEq + Clone>(
    kind: &str,
    base: &BTreeMap<String, V>,
    ours: &BTreeMap<String, V>,
    theirs: &BTreeMap<String, V>,
    describe: &dyn Fn(Option<&V>) -> String,
    report: &mut MergeReport,
) -> BTreeMap<String, V> {
    let names: BTreeSet<&String> = base
        .keys()
        .chain(ours.keys())
        .chain(theirs.keys())
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        let (b, o, t) = (base.get(name), ours.get(name), theirs.get(name));
        let pick = if o == t || t == b {
            o
        } else if o == b {
            report.taken.push(format!("{kind} {name}"));
            t
        } else {
            report.conflicts.push(Conflict {
                kind: kind.into(),
                name: name.clone(),
                ours: describe(o),
                theirs: describe(t),
            });
            o
        };
        if let Some(v) = pick {
            out.insert(name.clone(), v.clone());
        }
    }
    out
}

fn key(a: &AnnotationRecord) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        a.patch, a.mask, a.round, a.annotator, a.time
    )
}

fn who(a: &AnnotationRecord) -> String {
    format!(
        "mask {} (round {}, by {})",
        a.mask.short(),
        a.round,
        a.annotator
    )
}

/// Records kept on both sides or new on one; conflicts where both sides gave a patch a new,
/// different mask.
fn merge_annotations(
    base: &[AnnotationRecord],
    ours: &[AnnotationRecord],
    theirs: &[AnnotationRecord],
    report: &mut MergeReport,
) -> Vec<AnnotationRecord> {
    let in_base: HashSet<String> = base.iter().map(key).collect();
    let in_ours: HashSet<String> = ours.iter().map(key).collect();
    let in_theirs: HashSet<String> = theirs.iter().map(key).collect();
    let new_ours: BTreeMap<&str, &AnnotationRecord> = ours
        .iter()
        .filter(|a| !in_base.contains(&key(a)))
        .map(|a| (a.patch.as_str(), a))
        .collect();
    let new_theirs: Vec<&AnnotationRecord> = theirs
        .iter()
        .filter(|a| !in_base.contains(&key(a)) && !in_ours.contains(&key(a)))
        .collect();
    let mut latest_theirs: BTreeMap<&str, &AnnotationRecord> = BTreeMap::new();
    for a in &new_theirs {
        latest_theirs.insert(a.patch.as_str(), a);
    }
    for (patch, t) in &latest_theirs {
        if let Some(o) = new_ours.get(patch) {
            if o.mask != t.mask {
                report.conflicts.push(Conflict {
                    kind: "annotation".into(),
                    name: patch.to_string(),
                    ours: who(o),
                    theirs: who(t),
                });
            }
        }
    }
    // Ours, less what theirs removed from the base; then theirs' new records.
    let mut out: Vec<AnnotationRecord> = ours
        .iter()
        .filter(|a| !in_base.contains(&key(a)) || in_theirs.contains(&key(a)))
        .cloned()
        .collect();
    report.annotations_taken = new_theirs.len();
    out.extend(new_theirs.into_iter().cloned());
    out
}

/// `ours` with `theirs`' changes since `base` applied; conflicts go to `report`.
pub fn merge_versions(
    base: &DatasetVersion,
    mut ours: DatasetVersion,
    theirs: &DatasetVersion,
    report: &mut MergeReport,
) -> DatasetVersion {
    ours.annotations = merge_annotations(
        &base.annotations,
        &ours.annotations,
        &theirs.annotations,
        report,
    );
    let stacks = |v: &DatasetVersion| -> BTreeMap<String, _> {
        v.stacks
            .iter()
            .map(|(n, s)| (n.clone(), (s.clone(), v.patches.get(n).cloned())))
            .collect()
    };
    let merged = three_way(
        "stack",
        &stacks(base),
        &stacks(&ours),
        &stacks(theirs),
        &|s| {
            s.map_or("absent".into(), |(m, p)| {
                format!(
                    "{:?}, {} patches",
                    m.shape,
                    p.as_ref().map_or(0, |p| p.len())
                )
            })
        },
        report,
    );
    ours.stacks = merged
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    ours.patches = merged
        .into_iter()
        .filter_map(|(n, (_, p))| p.map(|p| (n, p)))
        .collect();
    ours.sets = three_way(
        "set",
        &base.sets,
        &ours.sets,
        &theirs.sets,
        &|s| {
            s.map_or("absent".into(), |s| {
                format!("{} patches by {}", s.patches.len(), s.method)
            })
        },
        report,
    );
    ours.models = three_way(
        "model",
        &base.models,
        &ours.models,
        &theirs.models,
        &|m| {
            m.map_or("absent".into(), |m| {
                format!("checkpoint {}", m.checkpoint.short())
            })
        },
        report,
    );
    ours.embeddings = three_way(
        "embedding",
        &base.embeddings,
        &ours.embeddings,
        &theirs.embeddings,
        &|e| e.map_or("absent".into(), |e| format!("matrix {}", e.matrix.short())),
        report,
    );
    ours.other = three_way(
        "manifest",
        &base.other,
        &ours.other,
        &theirs.other,
        &|b| b.map_or("absent".into(), |b| format!("{} bytes", b.len())),
        report,
    );
    if ours.meta != theirs.meta && ours.meta == base.meta {
        ours.meta = theirs.meta.clone();
    } else if ours.meta != theirs.meta && theirs.meta != base.meta {
        report.conflicts.push(Conflict {
            kind: "meta".into(),
            name: "biodc.json".into(),
            ours: format!("{:?}", ours.meta),
            theirs: format!("{:?}", theirs.meta),
        });
    }
    ours.stage = None;
    ours
}
