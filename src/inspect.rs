//! Read-only questions about a repository's history, answered as serialisable reports: where
//! HEAD is and what it holds (`status`), the versions behind it (`log`, with RCA per version),
//! and one version's stage record (`show`). The CLI prints these or writes them as JSON.

use crate::history::CommitInfo;
use crate::repo::Repo;
use crate::version::{counts, rca_of, Counts, RcaRecord, StageRecord};
use anyhow::Result;
use serde::Serialize;

/// Where HEAD is and what its version holds.
#[derive(Debug, Serialize)]
pub struct Status {
    pub branch: Option<String>,
    pub head: String,
    pub summary: String,
    pub counts: Counts,
    /// Stacks whose latest RCA score is under its alarm threshold, worst first.
    pub alarms: Vec<RcaRecord>,
}

pub fn status(repo: &Repo) -> Result<Status> {
    let head = repo.head()?;
    let info = repo.history.info(head)?;
    Ok(Status {
        branch: repo.history.head_branch()?,
        head: head.to_string(),
        summary: subject(&info).to_string(),
        counts: counts(&repo.history, head)?,
        alarms: rca_of(&repo.history, head)?
            .into_iter()
            .filter(|r| r.alarm)
            .collect(),
    })
}

/// The versions from `rev` (HEAD when `None`) back along first parents, at most `max`.
pub fn log(repo: &Repo, rev: Option<&str>, max: Option<usize>) -> Result<Vec<CommitInfo>> {
    let tip = match rev {
        Some(r) => repo.history.resolve(r)?,
        None => repo.head()?,
    };
    repo.history
        .first_parent_chain(tip)?
        .into_iter()
        .take(max.unwrap_or(usize::MAX))
        .map(|id| repo.history.info(id))
        .collect()
}

/// A version's RCA summary (`log --metrics`).
#[derive(Debug, Serialize)]
pub struct VersionMetrics {
    pub id: String,
    pub subject: String,
    pub models: Vec<String>,
    pub stacks: usize,
    pub mean_rca: Option<f64>,
    pub min_rca: Option<f64>,
    pub alarms: usize,
}

pub fn version_metrics(repo: &Repo, info: &CommitInfo) -> Result<VersionMetrics> {
    let rca = rca_of(&repo.history, repo.history.resolve(&info.id)?)?;
    let mut models: Vec<String> = rca.iter().map(|r| r.model.clone()).collect();
    models.sort();
    models.dedup();
    let n = rca.len();
    Ok(VersionMetrics {
        id: info.id.to_string(),
        subject: subject(info).to_string(),
        models,
        stacks: n,
        mean_rca: (n > 0).then(|| rca.iter().map(|r| r.rca).sum::<f64>() / n as f64),
        min_rca: rca.first().map(|r| r.rca),
        alarms: rca.iter().filter(|r| r.alarm).count(),
    })
}

/// One version: its commit, the stage that made it, and what it holds.
#[derive(Debug, Serialize)]
pub struct Shown {
    pub commit: CommitInfo,
    pub stage: Option<StageRecord>,
    pub stacks: usize,
    pub patches: usize,
    pub annotations: usize,
    pub sets: Vec<String>,
}

pub fn show(repo: &Repo, rev: Option<&str>) -> Result<(Shown, crate::version::DatasetVersion)> {
    let (id, v) = repo.version(rev)?;
    let shown = Shown {
        commit: repo.history.info(id)?,
        stage: v.stage.clone(),
        stacks: v.stacks.len(),
        patches: v.patch_count(),
        annotations: v.annotations.len(),
        sets: v.sets.keys().cloned().collect(),
    };
    Ok((shown, v))
}

/// The first line of a commit message.
pub fn subject(info: &CommitInfo) -> &str {
    info.message.lines().next().unwrap_or_default()
}
