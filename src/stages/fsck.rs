//! `fsck` (verify every object and every reference) and `gc` (remove what no version names).

use crate::repo::Repo;
use crate::store::{Damage, ObjectId};
use crate::version::DatasetVersion;
use anyhow::Result;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeSet;

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
    /// Problems in the git history itself.
    pub history: Vec<String>,
    /// Objects no version names (left by a killed or failed verb; `gc` removes them).
    pub unreachable: usize,
    /// Temp files and other files that are not objects (`gc` removes them).
    pub stray: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.history.is_empty()
    }
}

/// Every object named by any version reachable from a branch, tag or HEAD.
fn referenced(repo: &Repo, report: &mut FsckReport) -> Result<BTreeSet<ObjectId>> {
    let mut keep = BTreeSet::new();
    let commits = repo.history.reachable()?;
    report.versions = commits.len();
    for commit in commits {
        match DatasetVersion::load(&repo.history, commit) {
            Ok(v) => {
                for (place, id) in v.object_refs() {
                    if keep.insert(id) && !repo.store.contains(&id) {
                        report.missing.push(format!(
                            "object {id} is missing (named by {commit} {place})"
                        ));
                    }
                }
            }
            Err(e) => report.history.push(format!("version {commit}: {e:#}")),
        }
    }
    Ok(keep)
}

/// Checks the whole repository.
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
    report.unreachable = ids.iter().filter(|id| !keep.contains(id)).count();
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
    for d in damaged {
        match d {
            Damage::Corrupt { id, reason } => report.corrupt.push(format!(
                "object {id} ({}) is {reason}",
                repo.store.path_of(&id).display()
            )),
            Damage::StrayFile(p) => report.stray.push(p.display().to_string()),
        }
    }
    report.corrupt.sort();
    Ok(report)
}

/// What `gc` removed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub removed: usize,
    pub bytes: u64,
    pub kept: usize,
}

/// Removes every object no reachable version names, and stray files. Refuses to run when some
/// named object is missing (a repository that needs repair is not swept).
pub fn gc(repo: &Repo) -> Result<GcReport> {
    let _lock = repo.lock()?;
    let mut report = FsckReport::default();
    let mut keep = referenced(repo, &mut report)?;
    keep.extend(super::pretrain::pending_objects(repo)?);
    anyhow::ensure!(
        report.history.is_empty(),
        "history is damaged; run `biodc fsck`: {}",
        report.history.join("; ")
    );
    let (removed, bytes) = repo.store.sweep(&keep)?;
    Ok(GcReport {
        removed,
        bytes,
        kept: keep.len(),
    })
}
