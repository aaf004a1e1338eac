//! Git objects as loose bytes, for copying history to and from a remote: what a set of commits
//! needs, each object's raw form, writing one back (checked against its name), ancestry and
//! plain ref moves.

use super::{err, name, signature, CommitId, History};
use anyhow::{anyhow, bail, Result};
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::refs::Target;
use std::collections::{BTreeSet, HashSet};

pub use gix::object::Kind as GitKind;

/// A git object's kind as the one word of its loose header.
pub fn kind_word(kind: GitKind) -> &'static str {
    match kind {
        GitKind::Blob => "blob",
        GitKind::Tree => "tree",
        GitKind::Commit => "commit",
        GitKind::Tag => "tag",
    }
}

/// Loose form `<kind> <len>\0<data>` of an object (what git hashes).
pub fn loose(kind: GitKind, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{} {}\0", kind_word(kind), data.len()).into_bytes();
    out.extend_from_slice(data);
    out
}

/// Splits a loose form into kind and data.
pub fn parse_loose(bytes: &[u8]) -> Result<(GitKind, &[u8])> {
    let nul = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| anyhow!("no header"))?;
    let header = std::str::from_utf8(&bytes[..nul]).map_err(|_| anyhow!("header not text"))?;
    let (word, len) = header
        .split_once(' ')
        .ok_or_else(|| anyhow!("malformed header {header:?}"))?;
    let kind = match word {
        "blob" => GitKind::Blob,
        "tree" => GitKind::Tree,
        "commit" => GitKind::Commit,
        "tag" => GitKind::Tag,
        other => bail!("unknown object kind {other:?}"),
    };
    let data = &bytes[nul + 1..];
    if len.parse::<usize>().ok() != Some(data.len()) {
        bail!("header says {len} bytes, the object has {}", data.len());
    }
    Ok((kind, data))
}

impl History {
    /// Is git object `id` here?
    pub fn has_object(&self, id: CommitId) -> bool {
        self.repo.has_object(id)
    }

    /// Kind and bytes of git object `id`.
    pub fn raw_object(&self, id: CommitId) -> Result<(GitKind, Vec<u8>)> {
        let o = self.repo.find_object(id).map_err(err)?;
        Ok((o.kind, o.data.clone()))
    }

    /// Writes a git object and checks that it is the object `expected` names.
    pub fn write_raw_object(&self, expected: CommitId, kind: GitKind, data: &[u8]) -> Result<()> {
        let id = gix::objs::Write::write_buf(&self.repo.objects, kind, data).map_err(err)?;
        if id != expected {
            bail!("object {expected} holds the bytes of {id}");
        }
        Ok(())
    }

    /// Parent ids of a commit.
    pub fn parents(&self, id: CommitId) -> Result<Vec<CommitId>> {
        Ok(self
            .repo
            .find_commit(id)
            .map_err(err)?
            .parent_ids()
            .map(|p| p.detach())
            .collect())
    }

    /// Commits reachable from `tips`, not descending below any for which `known` holds;
    /// parents before children.
    pub fn commits_to_send(
        &self,
        tips: &[CommitId],
        known: &dyn Fn(CommitId) -> bool,
    ) -> Result<Vec<CommitId>> {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        // Depth-first, emitting a commit after its parents (iteratively: histories are long).
        let mut stack: Vec<(CommitId, bool)> = tips.iter().map(|&t| (t, false)).collect();
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if known(id) || !seen.insert(id) {
                continue;
            }
            stack.push((id, true));
            for p in self.parents(id)? {
                stack.push((p, false));
            }
        }
        Ok(order)
    }

    /// Trees and blobs of `commits` (each tree's entries, recursively) that `known` lacks.
    /// A known tree is still walked: a push killed midway can leave a tree on the remote
    /// without all of its entries (they go in packs, concurrently), so having a tree says
    /// nothing of what is below it.
    pub fn contents(
        &self,
        commits: &[CommitId],
        known: &dyn Fn(CommitId) -> bool,
    ) -> Result<Vec<CommitId>> {
        let mut out = BTreeSet::new();
        let mut walked = BTreeSet::new();
        let mut stack: Vec<CommitId> = Vec::new();
        for &c in commits {
            stack.push(
                self.repo
                    .find_commit(c)
                    .map_err(err)?
                    .tree_id()
                    .map_err(err)?
                    .detach(),
            );
        }
        while let Some(tree) = stack.pop() {
            if !walked.insert(tree) {
                continue;
            }
            if !known(tree) {
                out.insert(tree);
            }
            let t = self.repo.find_tree(tree).map_err(err)?;
            for entry in t.decode().map_err(err)?.entries.iter() {
                let id = entry.oid.to_owned();
                if entry.mode.is_tree() {
                    stack.push(id);
                } else if !known(id) {
                    out.insert(id);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Is `ancestor` reachable from `descendant` (or the same commit)?
    pub fn is_ancestor(&self, ancestor: CommitId, descendant: CommitId) -> Result<bool> {
        if ancestor == descendant {
            return Ok(true);
        }
        let walk = self.repo.rev_walk([descendant]).all().map_err(err)?;
        for info in walk {
            if info.map_err(err)?.id == ancestor {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The newest commit both `a` and `b` descend from, if any.
    pub fn merge_base(&self, a: CommitId, b: CommitId) -> Result<Option<CommitId>> {
        let mut of_a = HashSet::new();
        for info in self.repo.rev_walk([a]).all().map_err(err)? {
            of_a.insert(info.map_err(err)?.id);
        }
        for info in self.repo.rev_walk([b]).all().map_err(err)? {
            let id = info.map_err(err)?.id;
            if of_a.contains(&id) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Moves ref `full` (a branch or remote-tracking ref) to `new`, creating it if needed,
    /// provided it is still at `expected` (None: whatever it is).
    pub fn move_ref(&self, full: &str, new: CommitId, expected: Option<CommitId>) -> Result<()> {
        let sig = signature();
        let mut buf = gix::date::parse::TimeBuf::default();
        let edit = RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: "biodc: fetch".into(),
                },
                expected: match expected {
                    Some(e) => PreviousValue::MustExistAndMatch(Target::Object(e)),
                    None => PreviousValue::Any,
                },
                new: Target::Object(new),
            },
            name: name(full)?,
            deref: false,
        };
        self.repo
            .edit_references_as(Some(edit), Some(sig.to_ref(&mut buf)))
            .map_err(err)?;
        Ok(())
    }

    /// The commit ref `full` points at, if it exists.
    pub fn ref_target(&self, full: &str) -> Result<Option<CommitId>> {
        Ok(self
            .refs()?
            .into_iter()
            .find(|(n, _)| n == full)
            .map(|(_, id)| id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_form_round_trips_and_rejects_a_wrong_length() {
        let b = loose(GitKind::Blob, b"hello");
        assert_eq!(b, b"blob 5\0hello");
        let (k, d) = parse_loose(&b).unwrap();
        assert_eq!((k, d), (GitKind::Blob, &b"hello"[..]));
        assert!(parse_loose(b"blob 6\0hello").is_err());
        assert!(parse_loose(b"frob 5\0hello").is_err());
    }
}
