//! One file per stage of the loop. A stage reads the version at HEAD and returns the next
//! version with its stage record; [`run`] is the one place that locks, commits, and on failure
//! removes the objects the stage wrote, so a failed verb leaves the repository as it was.

pub mod annotate;
pub mod coreset;
pub mod embed;
pub mod export;
pub mod fsck;
pub mod hunt;
pub mod import;
pub mod monitor;
pub mod patches;
pub mod pretrain;
pub mod qc;
pub mod reproduce;
pub mod segment;
pub mod train;

use crate::history::CommitId;
use crate::repo::Repo;
use crate::version::{DatasetVersion, StageRecord};
use anyhow::Result;

/// What a stage returns: the next version and its record, or None when there is nothing to
/// commit (e.g. re-importing unchanged files).
pub type Next = Option<(DatasetVersion, StageRecord)>;

/// Runs `stage` on HEAD under the repository lock and commits what it returns. Returns the new
/// commit, or None if the stage had nothing to commit.
pub fn run<R>(
    repo: &Repo,
    stage: impl FnOnce(&Repo, CommitId, DatasetVersion) -> Result<(Next, R)>,
) -> Result<(Option<CommitId>, R)> {
    let lock = repo.lock()?;
    let (head, version) = repo.version(None)?;
    let outcome = stage(repo, head, version).and_then(|(next, report)| {
        let commit = match next {
            Some((version, record)) => Some(repo.commit(&lock, Some(head), &version, &record)?),
            None => None,
        };
        Ok((commit, report))
    });
    if outcome.is_err() {
        let removed = repo.store.roll_back(&lock);
        if removed > 0 {
            eprintln!("note: removed the {removed} objects this failed run had written");
        }
    }
    outcome
}
