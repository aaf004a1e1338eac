//! `fetch` and `pull`: bring a remote's versions here (every object checked against
//! its name as it arrives), then the data they name — all of it, none (read on first use), or
//! what some sets need.

use super::{current_branch, remote_branches, tracking_ref};
use crate::history::{parse_loose, CommitId, GitKind};
use crate::remote::pack::{self, Inventory, Shelf};
use crate::remote::{self, git_key, object_key, Backend, Remotes};
use crate::repo::Repo;
use crate::store::ObjectId;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchReport {
    pub remote: String,
    /// Remote branches and where they are now.
    pub branches: BTreeMap<String, String>,
    pub versions_received: usize,
    pub git_objects_received: usize,
    pub objects_received: usize,
    pub bytes_received: u64,
    pub seconds: f64,
}

/// Which data objects to bring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneData {
    /// Everything the fetched versions name.
    All,
    /// Nothing now: each object is read from the remote when first needed.
    None,
    /// What these sets (their patches' tiles and masks) and models (their weights) of the
    /// checked-out version need.
    Only {
        sets: Vec<String>,
        models: Vec<String>,
    },
}

/// Git objects `ids` from the remote (from its history packs, `packs`, or one key each), each
/// checked against its id: (kind, bytes) in the order of `ids`, and the bytes transferred.
fn download_git(
    backend: &Backend,
    packs: &Inventory,
    ids: &[CommitId],
    jobs: usize,
) -> Result<(Vec<(GitKind, Vec<u8>)>, u64)> {
    let got: Mutex<Vec<Option<(GitKind, Vec<u8>)>>> = Mutex::new(vec![None; ids.len()]);
    let total = Mutex::new(0u64);
    let check = |i: usize, b: &[u8]| -> Result<()> {
        *total.lock().unwrap() += b.len() as u64;
        let raw = zstd::decode_all(&b[..])
            .with_context(|| format!("remote git object {} is not readable", ids[i]))?;
        let (kind, data) = parse_loose(&raw)
            .with_context(|| format!("remote git object {} is malformed", ids[i]))?;
        let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, data)
            .with_context(|| format!("hashing remote git object {}", ids[i]))?;
        if id != ids[i] {
            bail!(
                "remote git object {} holds the bytes of {id}: rejected; nothing was changed here",
                ids[i]
            );
        }
        got.lock().unwrap()[i] = Some((kind, data.to_vec()));
        Ok(())
    };
    let slots: Vec<ObjectId> = ids.iter().map(|&id| pack::history_slot(id)).collect();
    let place: HashMap<ObjectId, usize> = slots.iter().enumerate().map(|(i, s)| (*s, i)).collect();
    let (groups, loose) = packs.group(&slots);
    let requests: Vec<(String, Vec<std::ops::Range<u64>>)> = groups
        .iter()
        .map(|(name, entries)| {
            let ranges = entries.iter().map(|e| e.range()).collect();
            (Shelf::History.pack_key(name), ranges)
        })
        .collect();
    backend.get_ranges_many(&requests, jobs, &|g, parts| {
        for (e, b) in groups[g].1.iter().zip(&parts) {
            check(place[&e.id], b)?;
        }
        Ok(())
    })?;
    let loose: Vec<usize> = loose.iter().map(|s| place[s]).collect();
    let keys: Vec<String> = loose.iter().map(|&i| git_key(&ids[i])).collect();
    backend.get_many(&keys, jobs, &|k, b| {
        let i = loose[k];
        let b = b.with_context(|| {
            format!(
                "the remote names git object {} but does not hold it: the remote is incomplete; nothing was changed here",
                ids[i]
            )
        })?;
        check(i, &b)
    })?;
    let got = got
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.expect("every key was answered"))
        .collect();
    Ok((got, total.into_inner().unwrap()))
}

/// Downloads the git objects of `tips` that are not here and writes them blobs and trees
/// first, then commits parents first. Returns (commits written, objects written, bytes).
fn fetch_history(
    repo: &Repo,
    backend: &Backend,
    tips: &[CommitId],
    jobs: usize,
) -> Result<(Vec<CommitId>, usize, u64)> {
    let h = &repo.history;
    let cache = remote::index_cache(repo.dot());
    let packs = Inventory::read(backend, Shelf::History, Some(&cache), jobs)?;
    let mut objects: HashMap<CommitId, (GitKind, Vec<u8>)> = HashMap::new();
    let mut bytes = 0u64;
    let mut seen: BTreeSet<CommitId> = BTreeSet::new();
    // Commits, walking parents until ones that are here.
    let mut commits = Vec::new();
    let mut parents: HashMap<CommitId, Vec<CommitId>> = HashMap::new();
    let mut trees = Vec::new();
    let mut frontier: Vec<CommitId> = tips
        .iter()
        .copied()
        .filter(|t| !h.has_object(*t) && seen.insert(*t))
        .collect();
    while !frontier.is_empty() {
        let ids = std::mem::take(&mut frontier);
        let (got, n) = download_git(backend, &packs, &ids, jobs)?;
        bytes += n;
        for (id, (kind, data)) in ids.into_iter().zip(got) {
            if kind != GitKind::Commit {
                bail!("remote git object {id} should be a version (commit), it is a {kind:?}");
            }
            let (tree, ps): (CommitId, Vec<CommitId>) = {
                let c = gix::objs::CommitRef::from_bytes(&data, gix::hash::Kind::Sha1)
                    .map_err(|e| anyhow::anyhow!("remote version {id} does not decode: {e}"))?;
                (c.tree(), c.parents().collect())
            };
            trees.push(tree);
            for &p in &ps {
                if !h.has_object(p) && seen.insert(p) {
                    frontier.push(p);
                }
            }
            parents.insert(id, ps);
            commits.push(id);
            objects.insert(id, (kind, data));
        }
    }
    // Trees and blobs.
    let mut contents = Vec::new();
    let mut frontier: Vec<CommitId> = trees
        .into_iter()
        .filter(|t| !h.has_object(*t) && seen.insert(*t))
        .collect();
    while !frontier.is_empty() {
        let ids = std::mem::take(&mut frontier);
        let (got, n) = download_git(backend, &packs, &ids, jobs)?;
        bytes += n;
        for (id, (kind, data)) in ids.into_iter().zip(got) {
            if kind == GitKind::Tree {
                let t = gix::objs::TreeRef::from_bytes(&data, gix::hash::Kind::Sha1)
                    .map_err(|e| anyhow::anyhow!("remote tree {id} does not decode: {e}"))?;
                for e in &t.entries {
                    let child = e.oid.to_owned();
                    if !h.has_object(child) && seen.insert(child) {
                        frontier.push(child);
                    }
                }
            }
            contents.push(id);
            objects.insert(id, (kind, data));
        }
    }
    // Children before parents were found; written the other way round.
    for id in contents.iter().rev() {
        let (kind, data) = &objects[id];
        h.write_raw_object(*id, *kind, data)?;
    }
    // Parents before children: a commit here always has its whole past here.
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for &c in &commits {
        let mut stack = vec![(c, false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if !parents.contains_key(&id) || !done.insert(id) {
                continue;
            }
            stack.push((id, true));
            for p in &parents[&id] {
                stack.push((*p, false));
            }
        }
    }
    for id in &order {
        let (kind, data) = &objects[id];
        h.write_raw_object(*id, *kind, data)?;
    }
    Ok((order, contents.len() + commits.len(), bytes))
}

/// Downloads the data objects `ids` that are not here, `jobs` packs at a time (only the byte
/// ranges of the objects wanted; near ones in one request); returns objects and bytes.
fn fetch_objects(
    repo: &Repo,
    backend: &Backend,
    ids: &[ObjectId],
    jobs: usize,
) -> Result<(usize, u64)> {
    let missing = repo.store.missing(ids.iter().copied());
    if missing.is_empty() {
        return Ok((0, 0));
    }
    let inventory = Inventory::read(
        backend,
        Shelf::Data,
        Some(&remote::index_cache(repo.dot())),
        jobs,
    )?;
    let (packs, loose) = inventory.group(&missing);
    let pb = crate::progress::bar(missing.len() as u64, "fetch objects", false);
    let bytes = Mutex::new(0u64);
    let store = &repo.store;
    let requests: Vec<(String, Vec<std::ops::Range<u64>>)> = packs
        .iter()
        .map(|(name, entries)| {
            (
                Shelf::Data.pack_key(name),
                entries.iter().map(|e| e.range()).collect(),
            )
        })
        .collect();
    backend.get_ranges_many(&requests, jobs, &|i, parts| {
        let entries = &packs[i].1;
        let objects: Vec<(ObjectId, &[u8])> = entries
            .iter()
            .zip(&parts)
            .map(|(e, b)| (e.id, &b[..]))
            .collect();
        // Kept as a pack here too: one file instead of one per object.
        store
            .put_stored_pack(&objects)
            .context("rejected an object from the remote")?;
        *bytes.lock().unwrap() += parts.iter().map(|b| b.len() as u64).sum::<u64>();
        pb.inc(entries.len() as u64);
        Ok(())
    })?;
    // Objects no pack holds: one key each, as format 1 remotes keep them.
    let keys: Vec<String> = loose.iter().map(object_key).collect();
    backend.get_many(&keys, jobs, &|i, b| {
        let b = b.with_context(|| {
            format!(
                "object {} is named by a remote version but the remote does not hold it",
                loose[i]
            )
        })?;
        *bytes.lock().unwrap() += b.len() as u64;
        store
            .put_stored(&loose[i], &b)
            .with_context(|| format!("rejected object {} from the remote", loose[i]))?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok((missing.len(), bytes.into_inner().unwrap()))
}

/// Objects that `sets` of `version` need: their patches' tiles and current masks.
fn set_objects(version: &DatasetVersion, sets: &[String]) -> Result<Vec<ObjectId>> {
    let masks = version.current_masks();
    let mut out = BTreeSet::new();
    for name in sets {
        for patch in version.set_members(name)? {
            let (_, p) = version.patch(&patch).with_context(|| {
                format!("set {name} names patch {patch}, which this version lacks")
            })?;
            out.insert(p.tile);
            if let Some(a) = masks.get(patch.as_str()) {
                out.insert(a.mask);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// Brings `remote`'s branches here as `refs/remotes/<remote>/<branch>`, with the data asked.
pub fn fetch(repo: &Repo, remote_name: &str, data: &CloneData, jobs: usize) -> Result<FetchReport> {
    let started = std::time::Instant::now();
    let remotes = Remotes::load(repo.dot())?;
    let url = remotes.url(remote_name)?.to_string();
    let base = repo.dot().parent().unwrap_or(repo.dot());
    let backend = remote::open(&url, base, false)?;
    match backend.get(remote::MARKER)? {
        Some(marker) => remote::check_format(&marker, &url)?,
        None => bail!(
            "{url} is not a biodc remote (no {}): push to it first",
            remote::MARKER
        ),
    }
    let _lock = repo.lock()?;
    let branches = remote_branches(&backend)?;
    let tips: Vec<CommitId> = branches.values().copied().collect();
    let (commits, git_objects, mut bytes) = fetch_history(repo, &backend, &tips, jobs)?;
    let mut objects = 0;
    let ids: Vec<ObjectId> = match data {
        CloneData::All => {
            // Every version, not only the new ones: a fetch killed after its history arrived
            // brings the rest of its data on the next run.
            let every = repo.history.commits_to_send(&tips, &|_| false)?;
            let mut all = BTreeSet::new();
            for &c in &every {
                all.extend(
                    DatasetVersion::load(&repo.history, c)?
                        .object_refs()
                        .into_iter()
                        .map(|(_, id)| id),
                );
            }
            all.into_iter().collect()
        }
        CloneData::None => Vec::new(),
        CloneData::Only { sets, models } => {
            let head = repo
                .history
                .head()?
                .context("nothing checked out to take sets from")?;
            let v = DatasetVersion::load(&repo.history, head)?;
            let mut ids = set_objects(&v, sets)?;
            for m in models {
                ids.push(v.model(m)?.checkpoint);
            }
            ids
        }
    };
    if !ids.is_empty() {
        let (n, b) = fetch_objects(repo, &backend, &ids, jobs)?;
        objects = n;
        bytes += b;
    }
    for (b, id) in &branches {
        repo.history
            .move_ref(&tracking_ref(remote_name, b), *id, None)?;
    }
    Ok(FetchReport {
        remote: remote_name.into(),
        branches: branches
            .iter()
            .map(|(b, id)| (b.clone(), id.to_string()))
            .collect(),
        versions_received: commits.len(),
        git_objects_received: git_objects,
        objects_received: objects,
        bytes_received: bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub fetch: FetchReport,
    pub branch: String,
    /// up-to-date, fast-forward, ahead (nothing to take; push instead).
    pub outcome: String,
    pub from: String,
    pub to: String,
}

/// Fetches, then moves the current branch forward to the remote's when it is behind.
pub fn pull(
    repo: &Repo,
    remote_name: &str,
    branch: Option<&str>,
    jobs: usize,
) -> Result<PullReport> {
    let partial = Remotes::load(repo.dot())?.partial.is_some();
    let data = if partial {
        CloneData::None
    } else {
        CloneData::All
    };
    let fetched = fetch(repo, remote_name, &data, jobs)?;
    let branch = current_branch(&repo.history, branch)?;
    let local_ref = format!("refs/heads/{branch}");
    let local = repo.history.ref_target(&local_ref)?;
    let Some(theirs) = repo
        .history
        .ref_target(&tracking_ref(remote_name, &branch))?
    else {
        bail!(
            "{remote_name} has no branch {branch} (branches: {})",
            fetched
                .branches
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let short = |id: CommitId| id.to_string()[..12].to_string();
    let outcome = match local {
        Some(l) if l == theirs => "up-to-date",
        Some(l) if repo.history.is_ancestor(l, theirs)? => {
            let _lock = repo.lock()?;
            repo.history.move_ref(&local_ref, theirs, Some(l))?;
            "fast-forward"
        }
        Some(l) if repo.history.is_ancestor(theirs, l)? => "ahead",
        Some(l) => bail!(
            "{branch} here ({}) and on {remote_name} ({}) have both moved on: run `biodc merge {remote_name}/{branch}`, then push; nothing was changed here",
            short(l),
            short(theirs)
        ),
        None => {
            repo.history.move_ref(&local_ref, theirs, None)?;
            "fast-forward"
        }
    };
    Ok(PullReport {
        fetch: fetched,
        branch,
        outcome: outcome.into(),
        from: local.map(short).unwrap_or_default(),
        to: short(theirs),
    })
}
