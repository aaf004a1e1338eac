//! Content-addressed object store: key = blake3 of the raw bytes, value = a small header and the
//! zstd-compressed bytes (byte-shuffled first when the object holds multi-byte numbers).
//!
//! The store knows nothing of images: callers say what an object is ([`Kind`]) and how wide its
//! numbers are ([`Filter`]); it hashes, compresses, writes atomically, reads and verifies.

mod id;
mod object;
pub mod pack;
#[cfg(test)]
mod tests;

pub use id::ObjectId;
pub use object::{decode, encode, Filter, Header, Kind, HEADER_LEN};

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// What went wrong with one object file, as `fsck` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The file's name is not an object id (e.g. a left-over temp file).
    StrayFile(PathBuf),
    /// The object is unreadable or its content does not hash to its name.
    Corrupt { id: ObjectId, reason: String },
    /// The object is not there (e.g. `gc` removed it while `fsck` was listing the store).
    Missing { id: ObjectId },
}

/// Where objects that are not here can be read from: the remote a partial clone came from.
pub trait ObjectSource: Send + Sync {
    /// The stored form (header and compressed bytes) of `id`, or None when the source lacks it.
    fn fetch(&self, id: &ObjectId) -> Result<Option<Vec<u8>>>;
}

/// The object store under `.biodc/objects`.
pub struct Store {
    root: PathBuf,
    level: i32,
    /// Objects this process created (not merely found), so a failed verb can take them back.
    created: Mutex<Vec<ObjectId>>,
    /// Read-through for objects not here (a partial clone), and how many it brought.
    source: std::sync::OnceLock<Box<dyn ObjectSource>>,
    fetched: std::sync::atomic::AtomicUsize,
    /// What `clone` and `fetch` brought, in packs as received (src/store/pack.rs).
    packs: pack::LocalPacks,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Store {
            root: root.to_path_buf(),
            level: 1,
            created: Mutex::new(Vec::new()),
            source: std::sync::OnceLock::new(),
            fetched: std::sync::atomic::AtomicUsize::new(0),
            packs: pack::LocalPacks::new(root.join("packs")),
        })
    }

    /// Reads objects missing here from `source` from now on (each kept here once read).
    pub fn set_source(&self, source: Box<dyn ObjectSource>) {
        let _ = self.source.set(source);
    }

    /// Whether objects missing here may come from a source.
    pub fn has_source(&self) -> bool {
        self.source.get().is_some()
    }

    /// How many objects the source brought in this process.
    pub fn fetched(&self) -> usize {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stores the stored form `bytes` of object `id` as read from elsewhere, after checking that
    /// it decodes to content that hashes to `id`; returns the content.
    pub fn put_stored(&self, id: &ObjectId, bytes: &[u8]) -> Result<Vec<u8>> {
        let raw = check(id, bytes)?;
        if !self.contains(id) {
            self.write_file(id, bytes)?;
        }
        Ok(raw)
    }

    /// Stores objects read from elsewhere (id and stored form) as one pack, after checking
    /// each as [`Store::put_stored`] does; objects already here are left out.
    pub fn put_stored_pack(&self, objects: &[(ObjectId, &[u8])]) -> Result<()> {
        use rayon::prelude::*;
        objects
            .par_iter()
            .try_for_each(|(id, bytes)| check(id, bytes).map(drop))?;
        let absent: std::collections::HashSet<ObjectId> = self
            .missing(objects.iter().map(|(id, _)| *id))
            .into_iter()
            .collect();
        let new: Vec<(ObjectId, &[u8])> = objects
            .iter()
            .filter(|(id, _)| absent.contains(id))
            .copied()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.packs.write(&new).map(drop)
    }

    /// Writes the stored form of `id` atomically (temp file in the same folder, then a
    /// no-clobber rename); false when another writer stored it first.
    fn write_file(&self, id: &ObjectId, bytes: &[u8]) -> Result<bool> {
        let path = self.path_of(id);
        let dir = path.parent().expect("object path has a folder");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        tmp.write_all(bytes)
            .with_context(|| format!("writing object {}", id.short()))?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => Ok(true),
            Err(e) if path.exists() => {
                drop(e);
                Ok(false)
            }
            Err(e) => Err(e.error).with_context(|| format!("storing {}", path.display())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds object `id`: `objects/ab/cdef…`.
    pub fn path_of(&self, id: &ObjectId) -> PathBuf {
        let hex = id.to_hex();
        self.root.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, id: &ObjectId) -> bool {
        self.packs.lookup(id).is_some()
            || self.path_of(id).exists()
            || self.packs.find(id, false).is_some()
    }

    /// Those of `ids` that are not here (the packs folder is looked at once for all of them).
    pub fn missing(&self, ids: impl IntoIterator<Item = ObjectId>) -> Vec<ObjectId> {
        self.packs.refresh(false);
        ids.into_iter()
            .filter(|id| self.packs.lookup(id).is_none() && !self.path_of(id).exists())
            .collect()
    }

    /// The stored form (header and compressed bytes) of `id` here: its file, or its place in a
    /// pack.
    pub fn stored(&self, id: &ObjectId) -> Result<Vec<u8>> {
        if let Some(slot) = self.packs.lookup(id) {
            return self.packs.read(&slot);
        }
        let path = self.path_of(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match self.packs.find(id, true) {
                Some(slot) => self.packs.read(&slot),
                None => Err(e).with_context(|| format!("object {id} is missing")),
            },
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The size of the stored form of `id`, when it is here.
    pub fn stored_len(&self, id: &ObjectId) -> Option<u64> {
        match self.packs.lookup(id) {
            Some(slot) => Some(slot.len),
            None => match fs::metadata(self.path_of(id)) {
                Ok(m) => Some(m.len()),
                Err(_) => self.packs.find(id, true).map(|s| s.len),
            },
        }
    }

    /// Where `id` is kept here, for messages: its file, or its pack and offset.
    pub fn location(&self, id: &ObjectId) -> String {
        match self.packs.find(id, false) {
            Some(slot) => format!(
                "{} at byte {}",
                self.packs
                    .dir()
                    .join(format!("{}.pack", slot.pack))
                    .display(),
                slot.offset
            ),
            None => self.path_of(id).display().to_string(),
        }
    }

    /// Pack indexes here that cannot be read, each with why.
    pub fn damaged_packs(&self) -> Vec<String> {
        self.packs.damaged()
    }

    /// Stores `raw` unless an object with its key exists; returns the key and whether it was new.
    ///
    /// The object file appears atomically (temp file in the same folder, then rename), so a
    /// killed process leaves either the whole object or none. Durability against power loss is
    /// batched: [`Store::sync`] is called once before a commit names the new objects.
    pub fn put(&self, kind: Kind, filter: Filter, raw: &[u8]) -> Result<(ObjectId, bool)> {
        let id = ObjectId::of(raw);
        let path = self.path_of(&id);
        if path.exists() {
            return Ok((id, false));
        }
        let bytes = encode(kind, filter, raw, self.level)?;
        // Another thread may store the same content between our check and our rename: then
        // the object is not ours (not new, and not ours to roll back).
        if !self.write_file(&id, &bytes)? {
            return Ok((id, false));
        }
        self.created.lock().unwrap().push(id);
        crate::failpoint::hit("store:after-put");
        Ok((id, true))
    }

    /// Stores a serde value as pretty JSON.
    pub fn put_json<T: serde::Serialize>(&self, value: &T) -> Result<ObjectId> {
        let raw = serde_json::to_vec_pretty(value)?;
        Ok(self.put(Kind::Json, Filter::None, &raw)?.0)
    }

    /// Reads object `id`, checking that its content hashes to `id`; an object not here comes
    /// from the source, if there is one, and stays here.
    pub fn get(&self, id: &ObjectId) -> Result<Vec<u8>> {
        if let Some(source) = self.source.get() {
            if !self.contains(id) {
                let bytes = source
                    .fetch(id)?
                    .with_context(|| format!("object {id} is missing here and on the remote"))?;
                let raw = self.put_stored(id, &bytes)?;
                self.fetched
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(raw);
            }
        }
        self.get_here(id)
    }

    /// Reads object `id` from this store only.
    fn get_here(&self, id: &ObjectId) -> Result<Vec<u8>> {
        check(id, &self.stored(id)?)
    }

    /// Reads object `id` as a rows × dim little-endian f32 matrix (embeddings, uncertainty maps).
    pub fn get_f32_matrix(&self, id: &ObjectId, rows: usize, dim: usize) -> Result<Vec<f32>> {
        let raw = self.get(id)?;
        anyhow::ensure!(
            raw.len() == rows * dim * 4,
            "matrix {id} holds {} bytes, expected {rows}×{dim} f32",
            raw.len()
        );
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// Reads object `id` and its header.
    pub fn get_with_header(&self, id: &ObjectId) -> Result<(Header, Vec<u8>)> {
        let raw = self.get(id)?;
        Ok((Header::parse(&self.stored(id)?)?, raw))
    }

    /// Objects created by this process so far.
    pub fn created(&self) -> Vec<ObjectId> {
        self.created.lock().unwrap().clone()
    }

    /// Removes the objects this process created under the lock `_held` (taking the lock
    /// forgets earlier ones): called when a verb fails before committing, so a failed verb
    /// leaves the store as it found it. Only objects this process brought into existence are
    /// listed (an object that was already there, or that another thread stored first, is not),
    /// so no committed version names one of them; and while the lock is held no other writer
    /// runs that could have named one since.
    pub fn roll_back(&self, _held: &crate::lock::RepoLock) -> usize {
        let ids = std::mem::take(&mut *self.created.lock().unwrap());
        ids.iter()
            .filter(|id| fs::remove_file(self.path_of(id)).is_ok())
            .count()
    }

    /// Forgets the list of created objects (they are now committed).
    pub fn keep_created(&self) {
        self.created.lock().unwrap().clear();
    }

    /// Makes every written object durable (one `syncfs` for the whole store instead of one
    /// `fsync` per tile: tens of thousands of fsyncs would dominate import time).
    pub fn sync(&self) -> Result<()> {
        let dir = fs::File::open(&self.root)?;
        sync_filesystem(&dir).with_context(|| format!("syncing {}", self.root.display()))
    }

    /// Every object id present, with stray files (temp files, odd names) listed separately.
    pub fn list(&self) -> Result<(Vec<ObjectId>, Vec<PathBuf>)> {
        let (mut ids, mut stray) = self.list_loose()?;
        let mut seen: std::collections::HashSet<ObjectId> = ids.iter().copied().collect();
        for (_, entries) in self.packs.packs() {
            ids.extend(entries.iter().map(|e| e.id).filter(|id| seen.insert(*id)));
        }
        stray.extend(self.packs.strays());
        Ok((ids, stray))
    }

    /// The objects in files of their own, and stray files beside them.
    fn list_loose(&self) -> Result<(Vec<ObjectId>, Vec<PathBuf>)> {
        let mut ids = Vec::new();
        let mut stray = Vec::new();
        for fan in read_dir_sorted(&self.root)? {
            if fan == self.packs.dir() {
                continue;
            }
            let fan_name = file_name(&fan);
            if !fan.is_dir() || fan_name.len() != 2 {
                stray.push(fan);
                continue;
            }
            for file in read_dir_sorted(&fan)? {
                match ObjectId::from_hex(&format!("{fan_name}{}", file_name(&file))) {
                    Ok(id) if file.is_file() => ids.push(id),
                    _ => stray.push(file),
                }
            }
        }
        Ok((ids, stray))
    }

    /// Checks one object: readable, decompresses, hashes to its name. An object whose file is
    /// not there (or was removed while being read) is [`Damage::Missing`], not corrupt.
    pub fn verify(&self, id: &ObjectId) -> Option<Damage> {
        let e = self.get_here(id).err()?;
        let gone = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        });
        Some(if gone {
            Damage::Missing { id: *id }
        } else {
            Damage::Corrupt {
                id: *id,
                reason: format!("{:#}", e)
                    .trim_start_matches(&format!("object {id} is "))
                    .to_string(),
            }
        })
    }

    /// Removes every object not in `keep` and every stray file; returns (objects, bytes) freed.
    pub fn sweep(&self, keep: &BTreeSet<ObjectId>) -> Result<(usize, u64)> {
        let (ids, stray) = self.list_loose()?;
        let mut count = 0;
        let mut bytes = 0;
        for path in ids
            .iter()
            .filter(|id| !keep.contains(id))
            .map(|id| self.path_of(id))
            .chain(stray.into_iter().filter(|p| p.is_file()))
            .chain(self.packs.strays())
        {
            bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            count += 1;
        }
        // A pack holding objects no longer kept is written again with the kept ones only.
        for (name, entries) in self.packs.packs() {
            let dead = entries.iter().filter(|e| !keep.contains(&e.id)).count();
            if dead == 0 {
                continue;
            }
            let live = entries
                .iter()
                .filter(|e| keep.contains(&e.id))
                .map(|e| Ok((e.id, self.stored(&e.id)?)))
                .collect::<Result<Vec<_>>>()?;
            let written = if live.is_empty() {
                0
            } else {
                self.packs.write(&live)?
            };
            bytes += self.packs.remove(&name)?.saturating_sub(written);
            count += dead;
        }
        Ok((count, bytes))
    }
}

/// The content of `bytes`, the stored form of `id`, after checking that it decodes and hashes
/// to `id`.
fn check(id: &ObjectId, bytes: &[u8]) -> Result<Vec<u8>> {
    let (_, raw) = decode(bytes).with_context(|| format!("object {id} is corrupt"))?;
    if ObjectId::of(&raw) != *id {
        bail!("object {id} is corrupt: its content does not hash to its name");
    }
    Ok(raw)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(target_os = "linux")]
fn sync_filesystem(dir: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(dir: &fs::File) -> std::io::Result<()> {
    dir.sync_all()
}
