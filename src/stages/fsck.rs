//! `fsck` (verify every object and every reference) and `gc` (remove what no version names).

use crate::repo::Repo;
use crate::store::{Damage, ObjectId};
use crate::version::DatasetVersion;
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What `fsck` found.
#[derive(Debug, Default, Serialize)]
pub struct FsckReport {
    pub head: String,
    pub versions: usize,
    pub objects: usize,
    /// Unreadable objects or objects whose content does not hash to their name.
    pub corrupt: Vec<String>,
    /// Objects some version names that are not in the store.
    pub missing: Vec<String>,
    /// For each corrupt or missing object (hex id), the versions and places that name it
    /// (the first [`USES_SHOWN`]; `…and N more` after them).
    pub uses: BTreeMap<String, Vec<String>>,
    /// Problems in the git history itself, and versions that cannot be read (a manifest that
    /// does not parse, or breaks the rules a version must keep: crafted names, patch ids).
    pub history: Vec<String>,
    /// Names inside a version that point at nothing: annotations, sets, embeddings, QC flags
    /// or RCA scores of patches, stacks or models the version does not hold; with the versions.
    pub dangling: Vec<String>,
    /// Objects no version names (left by a killed or failed verb; `gc` removes them).
    pub unreachable: usize,
    /// Objects that disappeared while being checked (removed by a `gc` running beside): no
    /// version named them, so this is not damage.
    pub vanished: usize,
    /// Temp files and other files that are not objects (`gc` removes them).
    pub stray: Vec<String>,
    /// In a partial clone: objects versions name that are not here but read from the remote
    /// when needed (not damage; `fetch` brings them).
    pub on_remote: usize,
}

/// Places listed per damaged object.
pub const USES_SHOWN: usize = 10;

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.history.is_empty()
            && self.dangling.is_empty()
    }
}

fn short(id: &crate::history::CommitId) -> String {
    id.to_string()[..12].to_string()
}

/// Every object named by any version reachable from a branch, tag or HEAD; versions that cannot
/// be read and dangling names go to `report`.
fn referenced(repo: &Repo, report: &mut FsckReport) -> Result<BTreeSet<ObjectId>> {
    let mut keep = BTreeSet::new();
    let commits = repo.history.reachable()?;
    report.versions = commits.len();
    // The same dangling name usually runs through many versions: list it once, with them.
    let mut dangling: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for commit in commits {
        match DatasetVersion::load(&repo.history, commit) {
            Ok(v) => {
                keep.extend(v.object_refs().into_iter().map(|(_, id)| id));
                for d in crate::version::references::dangling(&v) {
                    dangling.entry(d).or_default().push(short(&commit));
                }
            }
            Err(e) => report.history.push(format!("version {commit}: {e:#}")),
        }
    }
    for (what, versions) in dangling {
        let shown: Vec<&str> = versions.iter().take(3).map(String::as_str).collect();
        report.dangling.push(format!(
            "{what} (in {} version{}: {}{})",
            versions.len(),
            if versions.len() == 1 { "" } else { "s" },
            shown.join(", "),
            if versions.len() > 3 { ", …" } else { "" }
        ));
    }
    Ok(keep)
}

/// Where each of `damaged` is named: "version <id> <place>".
fn uses_of(repo: &Repo, damaged: &BTreeSet<ObjectId>) -> Result<BTreeMap<String, Vec<String>>> {
    let mut uses: BTreeMap<ObjectId, (Vec<String>, usize)> = BTreeMap::new();
    for commit in repo.history.reachable()? {
        let Ok(v) = DatasetVersion::load(&repo.history, commit) else {
            continue;
        };
        for (place, id) in v.object_refs() {
            if damaged.contains(&id) {
                let (shown, more) = uses.entry(id).or_default();
                if shown.len() < USES_SHOWN {
                    shown.push(format!("version {} {place}", short(&commit)));
                } else {
                    *more += 1;
                }
            }
        }
    }
    Ok(uses
        .into_iter()
        .map(|(id, (mut shown, more))| {
            if more > 0 {
                shown.push(format!("…and {more} more"));
            }
            (id.to_hex(), shown)
        })
        .collect())
}

/// Checks the whole repository. Runs beside writers and `gc` without taking the lock: an
/// object `gc` removes while it is being checked is not damage (no version names it).
pub fn fsck(repo: &Repo) -> Result<FsckReport> {
    let mut report = FsckReport {
        head: repo.head().map(|h| h.to_string()).unwrap_or_default(),
        ..Default::default()
    };
    report.history = repo.history.verify()?;
    let keep = referenced(repo, &mut report)?;
    let (ids, stray) = repo.store.list()?;
    report.objects = ids.len();
    report.stray = stray.iter().map(|p| p.display().to_string()).collect();
    report.corrupt.extend(repo.store.damaged_packs());
    let pb = crate::progress::bar(ids.len() as u64, "fsck", false);
    let store = &repo.store;
    let damaged: Vec<Damage> = ids
        .par_iter()
        .filter_map(|id| {
            pb.inc(1);
            store.verify(id)
        })
        .collect();
    pb.finish_and_clear();
    let listed: BTreeSet<ObjectId> = ids.iter().copied().collect();
    let mut bad = BTreeSet::new();
    for id in keep
        .iter()
        .filter(|id| !listed.contains(id) && !store.contains(id))
    {
        if store.has_source() {
            report.on_remote += 1;
            continue;
        }
        report.missing.push(format!("object {id} is missing"));
        bad.insert(*id);
    }
    for d in damaged {
        match d {
            Damage::Corrupt { id, reason } => {
                report.corrupt.push(format!(
                    "object {id} ({}) is {reason}",
                    repo.store.location(&id)
                ));
                bad.insert(id);
            }
            Damage::Missing { id } if keep.contains(&id) => {
                report.missing.push(format!("object {id} is missing"));
                bad.insert(id);
            }
            Damage::Missing { .. } => report.vanished += 1,
            Damage::StrayFile(p) => report.stray.push(p.display().to_string()),
        }
    }
    report.unreachable = ids
        .iter()
        .filter(|id| !keep.contains(id))
        .count()
        .saturating_sub(report.vanished);
    report.corrupt.sort();
    report.missing.sort();
    if !bad.is_empty() {
        report.uses = uses_of(repo, &bad)?;
    }
    Ok(report)
}

/// What `gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: usize,
    pub bytes: u64,
    pub kept: usize,
    /// Sharded runs dropped: computed on a version that is no longer a branch's tip or HEAD.
    pub abandoned_shard_runs: Vec<String>,
}

/// Removes every object no reachable version names, and stray files. Refuses to run when some
/// named object is missing (a repository that needs repair is not swept).
pub fn gc(repo: &Repo) -> Result<GcReport> {
    let _lock = repo.lock()?;
    let mut report = FsckReport::default();
    let mut keep = referenced(repo, &mut report)?;
    keep.extend(repo.pending_objects()?);
    // Shards of a run that can still be gathered keep their objects.
    let (shard_objects, abandoned) = super::shard::live_objects(repo)?;
    keep.extend(shard_objects);
    anyhow::ensure!(
        report.history.is_empty(),
        "history is damaged; run `biodc fsck`: {}",
        report.history.join("; ")
    );
    super::shard::remove_runs(repo, &abandoned)?;
    let (removed, bytes) = repo.store.sweep(&keep)?;
    Ok(GcReport {
        removed,
        bytes,
        kept: keep.len(),
        abandoned_shard_runs: abandoned,
    })
}
