//! Dataset history on git (gix): each dataset version is a commit in the bare repository
//! `.biodc/git`, whose tree holds the version's text manifests.

use anyhow::{anyhow, Context, Result};
use gix::bstr::ByteSlice;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::{FullName, Target};
use std::collections::BTreeMap;
use std::path::Path;

mod transfer;
pub use transfer::{kind_word, loose, parse_loose, GitKind};

pub use gix::ObjectId as CommitId;

/// Git's id of a manifest blob: equal ids mean equal bytes, which makes `diff` cheap.
pub type BlobId = gix::ObjectId;

/// One commit as `log` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitInfo {
    pub id: String,
    pub parents: Vec<String>,
    pub time: i64,
    pub author: String,
    pub message: String,
}

/// The bare git repository of a biodc project.
pub struct History {
    repo: gix::Repository,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("git: {e}")
}

/// An error while writing to the git repository at `dir`. Running out of room (disk full,
/// quota, file size limit) is said in those words, whatever gix calls the step that failed.
fn write_err(dir: &Path, e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if is_out_of_space(io) {
                return anyhow!(
                    "no space left to write the new version into {} ({io}); nothing was \
                     committed: free some space and run the verb again",
                    dir.display()
                );
            }
        }
        cause = c.source();
    }
    anyhow!("git: {e}")
}

/// Disk full, over quota, or over the file size limit.
pub fn is_out_of_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || e.kind() == std::io::ErrorKind::FileTooLarge
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)
        )
}

impl History {
    /// Creates the bare repository with `HEAD` on branch `main`.
    pub fn init(dir: &Path) -> Result<History> {
        gix::init_bare(dir).map_err(err)?;
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n")?;
        History::open(dir)
    }

    pub fn open(dir: &Path) -> Result<History> {
        let repo = gix::open(dir)
            .map_err(err)
            .with_context(|| format!("opening {}", dir.display()))?;
        Ok(History { repo })
    }

    /// The commit HEAD points at, or None before the first commit.
    pub fn head(&self) -> Result<Option<CommitId>> {
        let head = self.repo.head().map_err(err)?;
        Ok(head.id().map(|id| id.detach()))
    }

    /// The branch HEAD is on (`main`), or None when HEAD is detached.
    pub fn head_branch(&self) -> Result<Option<String>> {
        Ok(self
            .repo
            .head_name()
            .map_err(err)?
            .map(|n| n.shorten().to_str_lossy().into_owned()))
    }

    /// Resolves a revision (hash or prefix, branch, tag, `HEAD~2`, …) to a commit.
    pub fn resolve(&self, rev: &str) -> Result<CommitId> {
        let id = self
            .repo
            .rev_parse_single(rev)
            .map_err(|e| anyhow!("unknown revision {rev:?}: {e}"))?;
        let commit = id
            .object()
            .map_err(err)?
            .peel_to_commit()
            .map_err(|_| anyhow!("revision {rev:?} is not a dataset version"))?;
        Ok(commit.id)
    }

    /// Lists a commit's tree: path → blob id, for every file (depth-first, sorted).
    pub fn tree_of(&self, commit: CommitId) -> Result<BTreeMap<String, BlobId>> {
        let tree_id = self
            .repo
            .find_commit(commit)
            .map_err(err)?
            .tree_id()
            .map_err(err)?
            .detach();
        let mut out = BTreeMap::new();
        self.walk_tree(tree_id, "", &mut out)?;
        Ok(out)
    }

    fn walk_tree(
        &self,
        tree: gix::ObjectId,
        prefix: &str,
        out: &mut BTreeMap<String, BlobId>,
    ) -> Result<()> {
        let tree = self.repo.find_tree(tree).map_err(err)?;
        for entry in tree.decode().map_err(err)?.entries.iter() {
            let path = format!("{prefix}{}", entry.filename.to_str_lossy());
            if entry.mode.is_tree() {
                self.walk_tree(entry.oid.to_owned(), &format!("{path}/"), out)?;
            } else {
                out.insert(path, entry.oid.to_owned());
            }
        }
        Ok(())
    }

    /// The bytes of a manifest blob.
    pub fn blob(&self, id: BlobId) -> Result<Vec<u8>> {
        Ok(self.repo.find_blob(id).map_err(err)?.data.clone())
    }

    /// Writes `files` as a tree and a commit on top of `parent` (and `merged`, a merge's second
    /// parent), then moves HEAD (and the branch it is on) to it, checking that HEAD still is
    /// `parent`. Objects first, ref last: a process killed midway leaves HEAD where it was.
    pub fn commit(
        &self,
        files: &BTreeMap<String, Vec<u8>>,
        message: &str,
        parent: Option<CommitId>,
        merged: Option<CommitId>,
    ) -> Result<CommitId> {
        let dir = self.repo.path();
        let empty = gix::ObjectId::empty_tree(gix::hash::Kind::Sha1);
        let mut editor = self.repo.edit_tree(empty).map_err(|e| write_err(dir, e))?;
        for (path, bytes) in files {
            let blob = self
                .repo
                .write_blob(bytes)
                .map_err(|e| write_err(dir, e))?
                .detach();
            editor
                .upsert(path.as_str(), gix::object::tree::EntryKind::Blob, blob)
                .map_err(|e| write_err(dir, e))?;
        }
        let tree = editor.write().map_err(|e| write_err(dir, e))?.detach();
        crate::failpoint::hit("history:after-tree");
        let sig = signature();
        let mut buf = gix::date::parse::TimeBuf::default();
        let commit = gix::objs::Commit {
            message: message.into(),
            tree,
            author: sig.clone(),
            committer: sig.clone(),
            encoding: None,
            parents: parent.into_iter().chain(merged).collect(),
            extra_headers: Vec::new(),
        };
        let id = self
            .repo
            .write_object(&commit)
            .map_err(|e| write_err(dir, e))?
            .detach();
        crate::failpoint::hit("history:before-ref");
        let expected = match parent {
            Some(p) => PreviousValue::MustExistAndMatch(Target::Object(p)),
            None => PreviousValue::MustNotExist,
        };
        let summary = message.lines().next().unwrap_or_default();
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: format!("biodc: {summary}").into(),
                },
                expected,
                new: Target::Object(id),
            },
            name: name("HEAD")?,
            deref: true,
        };
        self.repo
            .edit_references_as(Some(edit), Some(sig.to_ref(&mut buf)))
            .map_err(|e| write_err(dir, e))
            .context("moving HEAD to the new version")?;
        Ok(id)
    }

    /// Commit metadata.
    pub fn info(&self, id: CommitId) -> Result<CommitInfo> {
        let commit = self.repo.find_commit(id).map_err(err)?;
        let decoded = commit.decode().map_err(err)?;
        let author = decoded.author().map_err(err)?;
        Ok(CommitInfo {
            id: id.to_string(),
            parents: decoded.parents().map(|p| p.to_string()).collect(),
            time: author.time().map(|t| t.seconds).unwrap_or(0),
            author: author.name.to_str_lossy().into_owned(),
            message: decoded.message.to_str_lossy().trim_end().to_string(),
        })
    }

    /// First-parent chain from `tip` back to the first version, newest first.
    pub fn first_parent_chain(&self, tip: CommitId) -> Result<Vec<CommitId>> {
        let mut out = vec![tip];
        let mut cur = tip;
        loop {
            let commit = self.repo.find_commit(cur).map_err(err)?;
            let parent = commit.parent_ids().next().map(|p| p.detach());
            match parent {
                Some(p) => {
                    cur = p;
                    out.push(cur);
                }
                None => return Ok(out),
            }
        }
    }

    /// Every commit reachable from any branch, tag or HEAD.
    pub fn reachable(&self) -> Result<Vec<CommitId>> {
        let mut tips: Vec<CommitId> = self.refs()?.into_iter().map(|(_, id)| id).collect();
        tips.extend(self.head()?);
        if tips.is_empty() {
            return Ok(Vec::new());
        }
        let walk = self.repo.rev_walk(tips).all().map_err(err)?;
        walk.map(|info| info.map(|i| i.id).map_err(err)).collect()
    }

    /// All branches and tags: (full ref name, commit).
    pub fn refs(&self) -> Result<Vec<(String, CommitId)>> {
        let platform = self.repo.references().map_err(err)?;
        let mut out = Vec::new();
        for r in platform.all().map_err(err)? {
            let mut r = r.map_err(|e| anyhow!("git: {e}"))?;
            let full = r.name().as_bstr().to_str_lossy().into_owned();
            let id = r.peel_to_id().map_err(err)?.detach();
            out.push((full, id));
        }
        out.sort();
        Ok(out)
    }

    /// Creates `refs/heads/<name>` (branch) or `refs/tags/<name>` at `target`.
    pub fn create_ref(&self, full: &str, target: CommitId) -> Result<()> {
        let edit = RefEdit::update(
            name(full)?,
            target,
            PreviousValue::MustNotExist,
            "biodc: create",
        );
        self.edit(edit)
            .with_context(|| format!("{full} already exists or cannot be created"))
    }

    /// Deletes a branch or tag.
    pub fn delete_ref(&self, full: &str) -> Result<()> {
        let edit = RefEdit::delete(name(full)?, PreviousValue::MustExist);
        self.edit(edit)
            .with_context(|| format!("{full} does not exist"))
    }

    /// Points HEAD at a branch (symbolic) or, detached, at a commit.
    pub fn set_head(&self, target: HeadTarget) -> Result<()> {
        let new = match target {
            HeadTarget::Branch(b) => Target::Symbolic(name(&format!("refs/heads/{b}"))?),
            HeadTarget::Detached(id) => Target::Object(id),
        };
        self.edit(RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: "biodc: checkout".into(),
                },
                expected: PreviousValue::Any,
                new,
            },
            name: name("HEAD")?,
            deref: false,
        })
    }

    fn edit(&self, edit: RefEdit) -> Result<()> {
        let sig = signature();
        let mut buf = gix::date::parse::TimeBuf::default();
        self.repo
            .edit_references_as(Some(edit), Some(sig.to_ref(&mut buf)))
            .map_err(err)?;
        Ok(())
    }

    /// Checks that every reachable commit and tree decodes and every blob exists.
    pub fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for id in self.reachable()? {
            if let Err(e) = self.tree_of(id) {
                problems.push(format!("version {id}: {e:#}"));
                continue;
            }
            for (path, blob) in self.tree_of(id)? {
                if let Err(e) = self.repo.find_blob(blob) {
                    problems.push(format!("version {id}: {path}: {e}"));
                }
            }
        }
        Ok(problems)
    }

    /// Removes git lock files left by a killed process. Only call with the repository lock held.
    pub fn clear_stale_locks(&self) -> Result<()> {
        for entry in walkdir::WalkDir::new(self.repo.path()).max_depth(4) {
            let entry = entry?;
            if entry.file_type().is_file() && entry.path().extension().is_some_and(|e| e == "lock")
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Where `checkout` puts HEAD.
pub enum HeadTarget {
    Branch(String),
    Detached(CommitId),
}

fn name(full: &str) -> Result<FullName> {
    FullName::try_from(full).map_err(|e| anyhow!("invalid reference name {full:?}: {e}"))
}

fn signature() -> gix::actor::Signature {
    let user = std::env::var("BIODC_AUTHOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "biodc".into());
    gix::actor::Signature {
        name: user.into(),
        email: "biodc@localhost".into(),
        time: gix::date::Time::now_local_or_utc(),
    }
}

/// Is `short` a valid name for a new branch or tag (a [`crate::name::Name`] git accepts)?
pub fn check_ref_name(kind: crate::name::NameKind, short: &str) -> Result<()> {
    crate::name::Name::new(kind, short)?;
    name(&format!("refs/heads/{short}")).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_space_is_named_as_such() {
        use std::io::Write;
        // /dev/full fails every write with ENOSPC: a real error from the kernel.
        let e = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .and_then(|mut f| f.write_all(b"x").and_then(|_| f.flush()))
            .unwrap_err();
        assert!(is_out_of_space(&e), "{e:?}");
        #[derive(Debug, thiserror::Error)]
        #[error("Could not write loose object header")]
        struct Wrapped(#[source] std::io::Error);
        let msg = write_err(Path::new(".biodc/git"), Wrapped(e)).to_string();
        assert!(
            msg.starts_with("no space left") && msg.contains("nothing was committed"),
            "{msg}"
        );
    }
}
