//! Moving versions between a repository and a remote: `push`, `fetch`, `pull`, `clone`.
//!
//! Order is what makes each safe to kill: data objects first, then git trees and blobs, then
//! commits parents first, then the branch. A commit that has arrived therefore has everything
//! it names, a branch never names a commit that has not, and a rerun sends only what is still
//! missing.

mod clone;
mod fetch;
mod push;

pub use clone::{clone, CloneReport};
pub use fetch::{fetch, pull, CloneData, FetchReport, PullReport};
pub use push::{push, PushParams, PushReport};

use crate::history::{CommitId, History};
use crate::remote::{branch_key, branch_prefix, Backend};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;

/// A branch's position on a remote: its highest entry and the commit it holds.
fn remote_tip(backend: &Backend, branch: &str) -> Result<Option<(u64, CommitId)>> {
    let prefix = branch_prefix(branch);
    let mut best: Option<(u64, String)> = None;
    for key in backend.list(&prefix)? {
        let Some(n) = key
            .strip_prefix(&format!("{prefix}/"))
            .and_then(|rest| rest.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| n > *b) {
            best = Some((n, key));
        }
    }
    let Some((n, key)) = best else {
        return Ok(None);
    };
    let bytes = backend
        .get(&key)?
        .with_context(|| format!("remote branch entry {key} vanished while being read"))?;
    let text = String::from_utf8_lossy(&bytes);
    let id = CommitId::from_hex(text.trim().as_bytes())
        .with_context(|| format!("remote branch entry {key} does not hold a commit id"))?;
    Ok(Some((n, id)))
}

/// Every branch of a remote and its commit.
fn remote_branches(backend: &Backend) -> Result<BTreeMap<String, CommitId>> {
    let mut names = std::collections::BTreeSet::new();
    for key in backend.list("refs/heads")? {
        if let Some((branch, _)) = key
            .strip_prefix("refs/heads/")
            .and_then(|rest| rest.rsplit_once('/'))
        {
            names.insert(branch.to_string());
        }
    }
    let mut out = BTreeMap::new();
    for b in names {
        if let Some((_, id)) = remote_tip(backend, &b)? {
            out.insert(b, id);
        }
    }
    Ok(out)
}

/// Ids of the objects under a remote prefix laid out `<prefix>/<2 hex>/<rest>`.
fn listed_ids(backend: &Backend, prefix: &str) -> Result<Vec<String>> {
    Ok(backend
        .list(prefix)?
        .into_iter()
        .filter_map(|k| {
            let rest = k.strip_prefix(&format!("{prefix}/"))?;
            let (fan, tail) = rest.split_once('/')?;
            (fan.len() == 2).then(|| format!("{fan}{tail}"))
        })
        .collect())
}

/// Name of the local ref that remembers where `remote`'s `branch` was.
pub fn tracking_ref(remote: &str, branch: &str) -> String {
    format!("refs/remotes/{remote}/{branch}")
}

/// The branch a command acts on: the one named, or the one HEAD is on.
fn current_branch(history: &History, named: Option<&str>) -> Result<String> {
    match named {
        Some(b) => Ok(b.to_string()),
        None => match history.head_branch()? {
            Some(b) => Ok(b),
            None => bail!("HEAD is detached: name the branch (e.g. `main`)"),
        },
    }
}

/// Where a ref's entry goes next on the remote.
fn next_entry(branch: &str, tip: Option<(u64, CommitId)>) -> String {
    branch_key(branch, tip.map_or(1, |(n, _)| n + 1))
}
