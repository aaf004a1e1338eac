//! Packs: many store objects under one remote key, so that a push or a clone costs one request
//! per pack instead of one per object (a 1 GB cohort is ~12,000 tiles; at a few milliseconds a
//! request, per-object keys made S3 remotes request-bound).
//!
//! `packs/<name>.pack` and `packs/<name>.idx`, in the format local packs have too
//! (src/store/pack.rs). The index is written after its pack, so a pack whose index is missing
//! (a push killed between the two) is ignored: its objects count as absent and the next push
//! sends them again. A single object, or a range of a pack, is read with a ranged GET, which is
//! how partial clones and read-through work.

use super::Backend;
use crate::store::pack::write_atomically;
pub use crate::store::pack::{build, decode_index, encode_index, Entry, Pack, INDEX_MAGIC};
use crate::store::ObjectId;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Packs a push aims for when not told otherwise.
pub const DEFAULT_PACK_BYTES: u64 = 32 << 20;

/// What a pack holds: store objects (`packs/`) or git trees and blobs (`git-packs/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    Data,
    History,
}

impl Shelf {
    fn prefix(self) -> &'static str {
        match self {
            Shelf::Data => "packs",
            Shelf::History => "git-packs",
        }
    }

    pub fn pack_key(self, name: &str) -> String {
        format!("{}/{name}.pack", self.prefix())
    }

    pub fn index_key(self, name: &str) -> String {
        format!("{}/{name}.idx", self.prefix())
    }
}

/// A git object's id as a pack index holds it: its 20 bytes, then 12 zero bytes.
pub fn history_slot(id: crate::history::CommitId) -> ObjectId {
    let mut slot = [0u8; 32];
    slot[..20].copy_from_slice(id.as_bytes());
    ObjectId(slot)
}

/// Splits objects of these sizes, in order, into consecutive groups of about `target` bytes
/// (an object larger than `target` is a pack of its own).
pub fn plan(sizes: &[u64], target: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && bytes + s > target {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Every packed object a remote holds and where: read from the indexes under `packs/` (each
/// kept in `cache` once read: an index never changes, as its pack's name is its pack's hash).
#[derive(Default)]
pub struct Inventory {
    slots: HashMap<ObjectId, (Arc<str>, Entry)>,
    pub packs: usize,
}

impl Inventory {
    /// Lists the remote's packs and reads every index not yet in `cache` (a folder; None: read
    /// them all).
    pub fn read(
        backend: &Backend,
        shelf: Shelf,
        cache: Option<&Path>,
        jobs: usize,
    ) -> Result<Inventory> {
        let mut has_pack = std::collections::HashSet::new();
        let mut indexed = Vec::new();
        let prefix = format!("{}/", shelf.prefix());
        for key in backend.list(shelf.prefix())? {
            let Some(file) = key.strip_prefix(&prefix) else {
                continue;
            };
            if let Some(name) = file.strip_suffix(".pack") {
                has_pack.insert(name.to_string());
            } else if let Some(name) = file.strip_suffix(".idx") {
                indexed.push(name.to_string());
            }
        }
        // An index without its pack was not written by a push; say so rather than guess.
        if let Some(name) = indexed.iter().find(|n| !has_pack.contains(*n)) {
            bail!(
                "the remote has an index for pack {name} but not the pack: the remote is damaged"
            );
        }
        indexed.sort();
        let cached =
            |name: &str| -> Option<PathBuf> { cache.map(|dir| dir.join(format!("{name}.idx"))) };
        let mut indexes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut to_get = Vec::new();
        for name in &indexed {
            // A cached index that does not decode (a damaged cache) is read again.
            match cached(name)
                .and_then(|p| std::fs::read(p).ok())
                .filter(|b| decode_index(b, name).is_ok())
            {
                Some(b) => {
                    indexes.insert(name.clone(), b);
                }
                None => to_get.push(name.clone()),
            }
        }
        let got = Mutex::new(Vec::new());
        let keys: Vec<String> = to_get.iter().map(|n| shelf.index_key(n)).collect();
        backend.get_many(&keys, jobs, &|i, b| {
            let b = b.with_context(|| format!("pack index {} vanished while read", to_get[i]))?;
            got.lock().unwrap().push((to_get[i].clone(), b));
            Ok(())
        })?;
        if let Some(dir) = cache {
            std::fs::create_dir_all(dir).ok();
        }
        for (name, bytes) in got.into_inner().unwrap() {
            decode_index(&bytes, &name)?;
            if let Some(path) = cached(&name) {
                // Best effort: the cache only saves requests.
                let _ = write_atomically(&path, &bytes);
            }
            indexes.insert(name, bytes);
        }
        let mut inv = Inventory {
            packs: indexes.len(),
            ..Default::default()
        };
        for (name, bytes) in indexes {
            let name: Arc<str> = name.as_str().into();
            for e in decode_index(&bytes, &name)? {
                inv.slots.entry(e.id).or_insert((name.clone(), e));
            }
        }
        Ok(inv)
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.slots.contains_key(id)
    }

    /// The pack holding `id` and where in it.
    pub fn find(&self, id: &ObjectId) -> Option<(&str, &Entry)> {
        self.slots.get(id).map(|(n, e)| (&**n, e))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &ObjectId> {
        self.slots.keys()
    }

    /// `ids` grouped by pack, each group in pack order; the ids no pack holds come second.
    pub fn group(&self, ids: &[ObjectId]) -> (Vec<(String, Vec<Entry>)>, Vec<ObjectId>) {
        let mut by_pack: BTreeMap<&str, Vec<Entry>> = BTreeMap::new();
        let mut loose = Vec::new();
        for id in ids {
            match self.find(id) {
                Some((name, e)) => by_pack.entry(name).or_default().push(e.clone()),
                None => loose.push(*id),
            }
        }
        let groups = by_pack
            .into_iter()
            .map(|(n, mut es)| {
                es.sort_by_key(|e| e.offset);
                (n.to_string(), es)
            })
            .collect();
        (groups, loose)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_groups_in_order_and_gives_big_objects_their_own_pack() {
        assert_eq!(plan(&[], 10), Vec::<Range<usize>>::new());
        assert_eq!(plan(&[4, 4, 4, 4], 10), vec![0..2, 2..4]);
        assert_eq!(plan(&[30, 1, 1], 10), vec![0..1, 1..3]);
        assert_eq!(plan(&[1, 30, 1], 10), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan(&[5, 5], 10), vec![0..2]);
    }

    #[test]
    fn an_index_reads_back_and_a_damaged_one_is_refused() {
        let a = (ObjectId::of(b"a"), b"stored a".to_vec());
        let b = (ObjectId::of(b"b"), b"stored bb".to_vec());
        let p = build(&[a.clone(), b.clone()]);
        let es = decode_index(&p.index, &p.name).unwrap();
        assert_eq!(es.len(), 2);
        assert_eq!(
            &p.bytes[es[0].offset as usize..][..es[0].len as usize],
            &a.1[..]
        );
        assert_eq!(es[1].id, b.0);
        assert_eq!(
            &p.bytes[es[1].range().start as usize..es[1].range().end as usize],
            &b.1[..]
        );
        assert_eq!(p.name, blake3::hash(&p.bytes).to_hex().to_string());
        assert!(decode_index(&p.index[..p.index.len() - 1], "x")
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(decode_index(b"something else", "x").is_err());
    }
}
