//! Content-addressed object store: key = blake3 of the raw bytes, value = a small header and the
//! zstd-compressed bytes (byte-shuffled first when the object holds multi-byte numbers).
//!
//! The store knows nothing of images: callers say what an object is ([`Kind`]) and how wide its
//! numbers are ([`Filter`]); it hashes, compresses, writes atomically, reads and verifies.

mod object;

pub use object::{decode, encode, Filter, Header, Kind, HEADER_LEN};

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A 32-byte blake3 object key, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    /// The key of `raw`.
    pub fn of(raw: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(raw).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    pub fn from_hex(hex: &str) -> Result<ObjectId> {
        let h = blake3::Hash::from_hex(hex)
            .map_err(|_| anyhow::anyhow!("{hex:?} is not a 64-digit hex object id"))?;
        Ok(ObjectId(*h.as_bytes()))
    }

    /// First 12 hex digits, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectId({})", self.short())
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ObjectId::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

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
        let (_, raw) = decode(bytes).with_context(|| format!("object {id} is corrupt"))?;
        if ObjectId::of(&raw) != *id {
            bail!("object {id} is corrupt: its content does not hash to its name");
        }
        if !self.path_of(id).exists() {
            self.write_file(id, bytes)?;
        }
        Ok(raw)
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
        self.path_of(id).exists()
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
            if !self.path_of(id).exists() {
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
        let path = self.path_of(id);
        let bytes = fs::read(&path).with_context(|| format!("object {id} is missing"))?;
        let (_, raw) = decode(&bytes).with_context(|| format!("object {id} is corrupt"))?;
        if ObjectId::of(&raw) != *id {
            bail!("object {id} is corrupt: its content does not hash to its name");
        }
        Ok(raw)
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
        let bytes = fs::read(self.path_of(id))?;
        Ok((Header::parse(&bytes)?, raw))
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
        let mut ids = Vec::new();
        let mut stray = Vec::new();
        for fan in read_dir_sorted(&self.root)? {
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
        let (ids, stray) = self.list()?;
        let mut count = 0;
        let mut bytes = 0;
        for path in ids
            .iter()
            .filter(|id| !keep.contains(id))
            .map(|id| self.path_of(id))
            .chain(stray.into_iter().filter(|p| p.is_file()))
        {
            bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            count += 1;
        }
        Ok((count, bytes))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_dedup_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let raw: Vec<u8> = (0..5000u32)
            .flat_map(|i| (i as u16).to_le_bytes())
            .collect();
        let (id, new) = store.put(Kind::Tile, Filter::Shuffle(2), &raw).unwrap();
        assert!(new);
        let (id2, new2) = store.put(Kind::Tile, Filter::Shuffle(2), &raw).unwrap();
        assert_eq!((id, false), (id2, new2));
        assert_eq!(store.get(&id).unwrap(), raw);
        assert_eq!(store.list().unwrap().0, vec![id]);
        let lock = crate::lock::RepoLock::acquire(&dir.path().join("lock")).unwrap();
        assert_eq!(store.roll_back(&lock), 1);
        assert!(!store.contains(&id));
    }

    #[test]
    fn flipped_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (id, _) = store
            .put(Kind::Blob, Filter::None, b"hello hello hello")
            .unwrap();
        let path = store.path_of(&id);
        let mut bytes = fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x40;
            fs::write(&path, &bytes).unwrap();
            assert!(store.verify(&id).is_some(), "flip at byte {i} not detected");
            bytes[i] ^= 0x40;
        }
        fs::write(&path, &bytes).unwrap();
        assert!(store.verify(&id).is_none());
    }

    #[test]
    fn hex_round_trip() {
        let id = ObjectId::of(b"x");
        assert_eq!(ObjectId::from_hex(&id.to_hex()).unwrap(), id);
        assert!(ObjectId::from_hex("zz").is_err());
    }
}
