//! One file per stage of the loop. A stage reads the version at HEAD and returns the next
//! version with its stage record; [`run`] is the one place that locks, commits, and on failure
//! removes the objects the stage wrote, so a failed verb leaves the repository as it was.
//!
//! Each committing verb is a [`Stage`]: its verb name (written once, in its `impl`), its
//! parameters, and its run function. [`REGISTRY`] lists them, so `reproduce` finds a recorded
//! verb without a list of its own. Adding a verb: its file (the `impl Stage`), one line in
//! [`REGISTRY`], and its place in the CLI.

pub mod annotate;
pub mod coreset;
pub mod define_set;
pub mod embed;
pub mod export;
pub mod fsck;
pub mod hunt;
pub mod import;
pub mod merge;
pub mod monitor;
pub mod patches;
pub mod pretrain;
pub mod qc;
pub mod reproduce;
pub mod segment;
pub mod shard;
pub mod train;

use crate::history::CommitId;
use crate::repo::Repo;
use crate::version::{DatasetVersion, StageRecord};
use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

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

/// A committing verb of the loop.
pub trait Stage {
    /// The verb, as the CLI and the stage record name it.
    const VERB: &'static str;
    type Params: Serialize + DeserializeOwned;
    type Report;

    /// Runs on `version` (the commit `head`) and returns the next version with its record.
    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &Self::Params,
    ) -> Result<(Next, Self::Report)>;

    /// The seed the run draws its randomness from, for the record.
    fn seed(_params: &Self::Params) -> Option<u64> {
        None
    }

    /// The parameters `reproduce` re-runs with (e.g. recompute what a cache would skip).
    fn for_rerun(params: Self::Params) -> Self::Params {
        params
    }

    /// The record of a run: verb, command line, parameters, seed, threads, biodc version and
    /// `summary`; the stage adds its inputs, outputs and timings.
    fn record(repo: &Repo, params: &Self::Params, summary: &str) -> Result<StageRecord> {
        Ok(repo.stage_record(
            Self::VERB,
            serde_json::to_value(params)?,
            Self::seed(params),
            summary,
        ))
    }

    /// Runs on HEAD and commits (see [`run`]).
    fn commit(repo: &Repo, params: &Self::Params) -> Result<(Option<CommitId>, Self::Report)> {
        run(repo, |r, head, v| Self::run(r, head, v, params))
    }
}

/// A registered stage, its types erased: what `reproduce` needs to re-run a record.
pub struct Registered {
    pub verb: &'static str,
    rerun: fn(&Repo, CommitId, DatasetVersion, &serde_json::Value) -> Result<Next>,
    /// How shard results are assembled, for stages that shard.
    gather: Option<GatherFn>,
}

type GatherFn =
    fn(&Repo, CommitId, DatasetVersion, &serde_json::Value, &[serde_json::Value]) -> Result<Next>;

impl Registered {
    const fn of<S: Stage>() -> Registered {
        Registered {
            verb: S::VERB,
            rerun: rerun::<S>,
            gather: None,
        }
    }

    const fn sharded<S: shard::Sharded>() -> Registered {
        Registered {
            verb: S::VERB,
            rerun: rerun::<S>,
            gather: Some(gather::<S>),
        }
    }

    /// Whether the stage runs in shards that `gather` commits.
    pub fn gathers(&self) -> bool {
        self.gather.is_some()
    }

    /// The next version from a sharded run's recorded parameters and shard results.
    pub fn gather(
        &self,
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &serde_json::Value,
        results: &[serde_json::Value],
    ) -> Result<Next> {
        match self.gather {
            Some(f) => f(repo, head, version, params, results),
            None => anyhow::bail!("{} does not run in shards", self.verb),
        }
    }

    /// Runs the stage again on `version` (the commit `parent`) with recorded parameters.
    pub fn rerun(
        &self,
        repo: &Repo,
        parent: CommitId,
        version: DatasetVersion,
        params: &serde_json::Value,
    ) -> Result<Next> {
        (self.rerun)(repo, parent, version, params)
    }
}

fn rerun<S: Stage>(
    repo: &Repo,
    parent: CommitId,
    version: DatasetVersion,
    params: &serde_json::Value,
) -> Result<Next> {
    let p: S::Params = serde_json::from_value(params.clone()).with_context(|| {
        format!(
            "the {} record's parameters do not parse with this biodc",
            S::VERB
        )
    })?;
    Ok(S::run(repo, parent, version, &S::for_rerun(p))?.0)
}

fn gather<S: shard::Sharded>(
    repo: &Repo,
    head: CommitId,
    version: DatasetVersion,
    params: &serde_json::Value,
    results: &[serde_json::Value],
) -> Result<Next> {
    let p: S::Params = serde_json::from_value(params.clone())
        .with_context(|| format!("the {} shards' parameters do not parse", S::VERB))?;
    Ok(S::gather(repo, head, version, &p, results)?.0)
}

/// Every committing verb.
pub const REGISTRY: &[Registered] = &[
    Registered::sharded::<import::Import>(),
    Registered::of::<pretrain::Pretrain>(),
    Registered::sharded::<embed::Embed>(),
    Registered::of::<qc::Qc>(),
    Registered::of::<coreset::Coreset>(),
    Registered::of::<define_set::DefineSet>(),
    Registered::of::<annotate::Annotate>(),
    Registered::of::<train::Train>(),
    Registered::sharded::<hunt::Hunt>(),
    Registered::sharded::<monitor::Monitor>(),
    Registered::of::<merge::Merge>(),
];

/// The registered stage of `verb`.
pub fn registered(verb: &str) -> Option<&'static Registered> {
    REGISTRY.iter().find(|r| r.verb == verb)
}
