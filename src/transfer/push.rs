//! `push`: send a branch's versions and the objects they name that the remote lacks, then move
//! the remote branch, only if no one else moved it since it was read.

use super::{current_branch, listed_ids, next_entry, remote_tip, tracking_ref};
use crate::history::{loose, CommitId};
use crate::remote::pack::{self, Inventory, Shelf};
use crate::remote::{self, git_key, Created, Remotes};
use crate::repo::Repo;
use crate::store::ObjectId;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone)]
pub struct PushParams {
    pub remote: String,
    /// None: the branch HEAD is on.
    pub branch: Option<String>,
    /// Concurrent uploads.
    pub jobs: usize,
    /// Objects are sent in packs of about this many bytes.
    pub pack_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub remote: String,
    pub url: String,
    pub branch: String,
    pub commit: String,
    /// Where the remote branch was (None: new branch).
    pub previous: Option<String>,
    pub up_to_date: bool,
    pub versions_sent: usize,
    pub objects_sent: usize,
    /// Packs the objects went in.
    pub packs_sent: usize,
    pub git_objects_sent: usize,
    pub bytes_sent: u64,
    pub seconds: f64,
    /// Whether the remote refused a second create of one key when asked before the push: if
    /// not (a server that ignores `If-None-Match`), the branch moved without a compare-and-swap
    /// and a push racing this one could have overwritten it. None when nothing was pushed.
    pub branch_move_atomic: Option<bool>,
}

/// Pushes a branch to a remote.
pub fn push(repo: &Repo, p: &PushParams) -> Result<PushReport> {
    let started = std::time::Instant::now();
    let remotes = Remotes::load(repo.dot())?;
    let url = remotes.url(&p.remote)?.to_string();
    let branch = current_branch(&repo.history, p.branch.as_deref())?;
    let tip = repo
        .history
        .ref_target(&format!("refs/heads/{branch}"))?
        .with_context(|| format!("no branch {branch:?} here"))?;
    let base = repo.dot().parent().unwrap_or(repo.dot());
    let backend = remote::open(&url, base, true)?;
    let before = remote_tip(&backend, &branch)?;
    let mut report = PushReport {
        remote: p.remote.clone(),
        url: url.clone(),
        branch: branch.clone(),
        commit: tip.to_string(),
        previous: before.map(|(_, id)| id.to_string()),
        up_to_date: false,
        versions_sent: 0,
        objects_sent: 0,
        packs_sent: 0,
        git_objects_sent: 0,
        bytes_sent: 0,
        seconds: 0.0,
        branch_move_atomic: None,
    };
    if let Some((_, old)) = before {
        if old == tip {
            report.up_to_date = true;
            repo.history
                .move_ref(&tracking_ref(&p.remote, &branch), tip, None)?;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        if !repo.history.has_object(old) || !repo.history.is_ancestor(old, tip)? {
            bail!(
                "{} on {} is at {}, which {branch} here does not contain: run `biodc pull {}` first, then push again",
                branch,
                p.remote,
                &old.to_string()[..12],
                p.remote
            );
        }
    }
    if let Some(marker) = backend.get(remote::MARKER)? {
        remote::check_format(&marker, &url)?;
    }
    report.branch_move_atomic = Some(backend.refuses_second_create()?);
    backend.put(
        remote::MARKER,
        format!("{{\"format\": {}}}", remote::FORMAT).into_bytes(),
    )?;
    backend.put(
        remote::CONFIG,
        std::fs::read(repo.dot().join("config.toml")).unwrap_or_default(),
    )?;

    let remote_git: HashSet<CommitId> = listed_ids(&backend, "git")?
        .iter()
        .filter_map(|h| CommitId::from_hex(h.as_bytes()).ok())
        .collect();
    let cache = remote::index_cache(repo.dot());
    let git_packs = Inventory::read(&backend, Shelf::History, Some(&cache), p.jobs)?;
    let known =
        |id: CommitId| remote_git.contains(&id) || git_packs.contains(&pack::history_slot(id));
    let commits = repo.history.commits_to_send(&[tip], &known)?;
    report.versions_sent = commits.len();

    // Data objects the new versions name that the remote lacks (packed, or loose as format 1
    // remotes hold them), in the order the versions name them: a stack's tiles stay together.
    let packed = Inventory::read(&backend, Shelf::Data, Some(&cache), p.jobs)?;
    let unpacked: HashSet<ObjectId> = listed_ids(&backend, "objects")?
        .iter()
        .filter_map(|h| ObjectId::from_hex(h).ok())
        .collect();
    let mut seen = HashSet::new();
    let mut wanted = Vec::new();
    for &c in &commits {
        let v = DatasetVersion::load(&repo.history, c)?;
        for (_, id) in v.object_refs() {
            if !packed.contains(&id) && !unpacked.contains(&id) && seen.insert(id) {
                wanted.push(id);
            }
        }
    }
    let store = &repo.store;
    // Both cores: a cohort of real tiles is tens of thousands of small files to look at.
    let sizes: Vec<Option<u64>> = wanted.par_iter().map(|id| store.stored_len(id)).collect();
    if let Some(i) = sizes.iter().position(Option::is_none) {
        bail!(
            "object {} is named by a version being pushed but is neither here nor on {}: nothing was moved (run `biodc fsck`)",
            wanted[i],
            p.remote
        );
    }
    let sizes: Vec<u64> = sizes.into_iter().flatten().collect();
    let groups = pack::plan(&sizes, p.pack_bytes.max(1));
    let sent = AtomicU64::new(0);
    let pb = crate::progress::bar(wanted.len() as u64, "push objects", false);
    backend.put_groups(
        groups.len(),
        p.jobs,
        &|g| {
            let objects = wanted[groups[g].clone()]
                .par_iter()
                .map(|id| Ok((*id, store.stored(id)?)))
                .collect::<Result<Vec<_>>>()?;
            let pack = pack::build(&objects);
            // The pack first, its index last: an index names only a pack that has arrived.
            Ok(vec![
                (Shelf::Data.pack_key(&pack.name), pack.bytes),
                (Shelf::Data.index_key(&pack.name), pack.index),
            ])
        },
        &|g, k, n| {
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if k == 0 {
                crate::failpoint::hit("push:before-index");
            } else {
                pb.inc(groups[g].len() as u64);
                crate::failpoint::hit("push:pack");
            }
        },
    )?;
    pb.finish_and_clear();
    report.objects_sent = wanted.len();
    report.packs_sent = groups.len();
    crate::failpoint::hit("push:after-objects");

    // History: trees and blobs in packs (a cohort of 600 stacks has ~1,200: one request each
    // was most of a push to a slow server), then commits parents first, one key each.
    let contents = repo.history.contents(&commits, &known)?;
    let git_bytes = |id: CommitId| -> Result<Vec<u8>> {
        let (kind, data) = repo.history.raw_object(id)?;
        Ok(zstd::encode_all(&loose(kind, &data)[..], 3)?)
    };
    // Read here, not in the uploads: the git repository handle stays on this thread.
    let encoded = contents
        .iter()
        .map(|&id| Ok((pack::history_slot(id), git_bytes(id)?)))
        .collect::<Result<Vec<_>>>()?;
    let sizes: Vec<u64> = encoded.iter().map(|(_, b)| b.len() as u64).collect();
    let groups = pack::plan(&sizes, p.pack_bytes.max(1));
    backend.put_groups(
        groups.len(),
        p.jobs,
        &|g| {
            let pack = pack::build(&encoded[groups[g].clone()]);
            Ok(vec![
                (Shelf::History.pack_key(&pack.name), pack.bytes),
                (Shelf::History.index_key(&pack.name), pack.index),
            ])
        },
        &|_, k, n| {
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if k == 0 {
                crate::failpoint::hit("push:history-before-index");
            }
        },
    )?;
    crate::failpoint::hit("push:after-trees");
    for &c in &commits {
        let bytes = git_bytes(c)?;
        sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        backend.put(&git_key(&c), bytes)?;
    }
    report.git_objects_sent = contents.len() + commits.len();
    crate::failpoint::hit("push:before-ref");

    let entry = next_entry(&branch, before);
    match backend.create(&entry, format!("{tip}\n").into_bytes())? {
        Created::Yes => {}
        Created::AlreadyThere => bail!(
            "{branch} on {} moved while this push ran (another push won): run `biodc pull {}`, then push again; the versions sent stay there and will not be sent twice",
            p.remote,
            p.remote
        ),
    }
    repo.history
        .move_ref(&tracking_ref(&p.remote, &branch), tip, None)?;
    report.bytes_sent = sent.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
