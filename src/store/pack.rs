//! Packs: many objects' stored forms in one file, with an index saying where each is. Remotes
//! keep every object in packs (a push sends one request per pack, not per object); a local
//! store keeps in packs what `clone` and `fetch` bring, as received, so a clone of 61,200 tiles
//! (270 MB) writes 18 files instead of 61,200 (measured: creating the files was most of a
//! clone's time, most of it in the filesystem's inode allocation).
//!
//! `<name>.pack` is the stored forms of its objects, back to back; `<name>.idx` says where each
//! is (`INDEX_MAGIC`, then per object its 32-byte id and its offset and length as little-endian
//! u64). `<name>` is the blake3 of the pack's bytes. The index is written after its pack, so a
//! pack whose index is missing (a writer killed between the two) is ignored and swept by `gc`.

use super::ObjectId;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// First bytes of an index.
pub const INDEX_MAGIC: &[u8] = b"biodc-pack-index 1\n";
/// Bytes per index entry: id, offset, length.
const ENTRY: usize = 32 + 8 + 8;

/// Where one object sits in a pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: ObjectId,
    pub offset: u64,
    pub len: u64,
}

impl Entry {
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }
}

/// One pack: its name, bytes and index.
pub struct Pack {
    pub name: String,
    pub bytes: Vec<u8>,
    pub index: Vec<u8>,
    pub entries: Vec<Entry>,
}

/// Builds a pack of `objects` (id and stored form, in order).
pub fn build(objects: &[(ObjectId, impl AsRef<[u8]>)]) -> Pack {
    let total: usize = objects.iter().map(|(_, b)| b.as_ref().len()).sum();
    let mut bytes = Vec::with_capacity(total);
    let mut entries = Vec::with_capacity(objects.len());
    for (id, b) in objects {
        entries.push(Entry {
            id: *id,
            offset: bytes.len() as u64,
            len: b.as_ref().len() as u64,
        });
        bytes.extend_from_slice(b.as_ref());
    }
    Pack {
        name: blake3::hash(&bytes).to_hex().to_string(),
        index: encode_index(&entries),
        entries,
        bytes,
    }
}

pub fn encode_index(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_MAGIC.len() + entries.len() * ENTRY);
    out.extend_from_slice(INDEX_MAGIC);
    for e in entries {
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.len.to_le_bytes());
    }
    out
}

/// The entries of index `bytes`; `name` is shown in errors.
pub fn decode_index(bytes: &[u8], name: &str) -> Result<Vec<Entry>> {
    let Some(body) = bytes.strip_prefix(INDEX_MAGIC) else {
        bail!("pack index {name} is not a biodc pack index (or of a newer format)");
    };
    if body.len() % ENTRY != 0 {
        bail!(
            "pack index {name} is truncated ({} bytes of entries, not a multiple of {ENTRY})",
            body.len()
        );
    }
    Ok(body
        .chunks_exact(ENTRY)
        .map(|c| Entry {
            id: ObjectId(c[..32].try_into().expect("32 bytes")),
            offset: u64::from_le_bytes(c[32..40].try_into().expect("8 bytes")),
            len: u64::from_le_bytes(c[40..48].try_into().expect("8 bytes")),
        })
        .collect())
}

/// Where a packed object is: its pack (open) and its place in it.
#[derive(Clone)]
pub(super) struct Slot {
    pub pack: Arc<str>,
    file: Arc<fs::File>,
    pub offset: u64,
    pub len: u64,
}

/// The packs of a local store, `objects/packs/`, and an in-memory map of what they hold (read
/// when first needed, and again when the folder has changed since).
pub(super) struct LocalPacks {
    dir: PathBuf,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// The folder's modification time at the last scan.
    scanned: Option<SystemTime>,
    /// Pack name → the pack, open, and its entries.
    packs: HashMap<Arc<str>, (Arc<fs::File>, Vec<Entry>)>,
    slots: HashMap<ObjectId, Slot>,
}

impl LocalPacks {
    pub fn new(dir: PathBuf) -> LocalPacks {
        LocalPacks {
            dir,
            state: RwLock::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `id` is packed here. A miss looks at the folder again when it changed since the
    /// last scan (`force`: whatever its time says, before calling an object missing).
    pub fn find(&self, id: &ObjectId, force: bool) -> Option<Slot> {
        self.lookup(id).or_else(|| {
            self.refresh(force);
            self.lookup(id)
        })
    }

    /// Where `id` is packed here, as of the last scan.
    pub fn lookup(&self, id: &ObjectId) -> Option<Slot> {
        self.state.read().unwrap().slots.get(id).cloned()
    }

    /// Reads the indexes of packs not read yet, when the folder changed since the last scan.
    pub fn refresh(&self, force: bool) {
        let Ok(modified) = fs::metadata(&self.dir).and_then(|m| m.modified()) else {
            return;
        };
        if !force && self.state.read().unwrap().scanned == Some(modified) {
            return;
        }
        let mut state = self.state.write().unwrap();
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return;
        };
        for path in listing.filter_map(|e| e.ok().map(|e| e.path())) {
            let Some(name) = pack_name(&path, "idx") else {
                continue;
            };
            if state.packs.contains_key(name.as_str()) {
                continue;
            }
            // A pack that cannot be read now (removed by `gc` since the listing) is skipped;
            // `fsck` reads every index and reports a damaged one.
            if let Ok((file, entries)) = self.open(&name) {
                state.add(&name, Arc::new(file), entries);
            }
        }
        state.scanned = Some(modified);
    }

    fn open(&self, name: &str) -> Result<(fs::File, Vec<Entry>)> {
        let idx = self.dir.join(format!("{name}.idx"));
        let bytes = fs::read(&idx).with_context(|| format!("reading {}", idx.display()))?;
        let entries = decode_index(&bytes, name)?;
        let path = self.dir.join(format!("{name}.pack"));
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok((file, entries))
    }

    /// The stored form of the object at `slot`.
    pub fn read(&self, slot: &Slot) -> Result<Vec<u8>> {
        let mut bytes = vec![0u8; slot.len as usize];
        slot.file
            .read_exact_at(&mut bytes, slot.offset)
            .with_context(|| {
                format!(
                    "pack {} ends before {} bytes at offset {}",
                    slot.pack, slot.len, slot.offset
                )
            })?;
        Ok(bytes)
    }

    /// Writes `objects` (id and checked stored form) as one pack: the pack, then its index,
    /// each through a temp file and a rename. Returns the bytes written.
    pub fn write(&self, objects: &[(ObjectId, impl AsRef<[u8]>)]) -> Result<u64> {
        let pack = build(objects);
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(format!("{}.pack", pack.name));
        write_atomically(&path, &pack.bytes)?;
        write_atomically(&self.dir.join(format!("{}.idx", pack.name)), &pack.index)?;
        let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let written = (pack.bytes.len() + pack.index.len()) as u64;
        self.state
            .write()
            .unwrap()
            .add(&pack.name, Arc::new(file), pack.entries);
        Ok(written)
    }

    /// Every pack here with its entries (after a fresh scan).
    pub fn packs(&self) -> Vec<(Arc<str>, Vec<Entry>)> {
        self.refresh(true);
        let state = self.state.read().unwrap();
        let mut out: Vec<_> = state
            .packs
            .iter()
            .map(|(n, (_, e))| (n.clone(), e.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Removes pack `name` (its index first, so no reader finds an index without its pack);
    /// returns the bytes freed.
    pub fn remove(&self, name: &str) -> Result<u64> {
        let mut freed = 0;
        for ext in ["idx", "pack"] {
            let path = self.dir.join(format!("{name}.{ext}"));
            freed += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        let mut state = self.state.write().unwrap();
        if let Some((_, entries)) = state.packs.remove(name) {
            for e in &entries {
                if state.slots.get(&e.id).is_some_and(|s| &*s.pack == name) {
                    state.slots.remove(&e.id);
                }
            }
            // Objects that another pack holds too (gc writes the live ones of a pack into a
            // new pack before removing it) are now found there.
            let State { packs, slots, .. } = &mut *state;
            for (pack, (file, others)) in packs.iter() {
                link(slots, pack, file, others);
            }
        }
        Ok(freed)
    }

    /// Files in the packs folder that are not a pack with its index (temp files of a writer
    /// that was killed, a pack whose index never came).
    pub fn strays(&self) -> Vec<PathBuf> {
        let files = self.files();
        let mut stray: Vec<PathBuf> = files
            .iter()
            .filter(|path| {
                let partner = match (pack_name(path, "pack"), pack_name(path, "idx")) {
                    (Some(n), _) => format!("{n}.idx"),
                    (_, Some(n)) => format!("{n}.pack"),
                    _ => return true,
                };
                !files.contains(&self.dir.join(partner))
            })
            .cloned()
            .collect();
        stray.sort();
        stray
    }

    /// Pack indexes that cannot be read (or whose pack cannot be opened), each with why.
    pub fn damaged(&self) -> Vec<String> {
        let mut bad: Vec<String> = self
            .files()
            .iter()
            .filter_map(|path| pack_name(path, "idx"))
            .filter_map(|n| self.open(&n).err().map(|e| format!("pack {n}: {e:#}")))
            .collect();
        bad.sort();
        bad
    }

    fn files(&self) -> HashSet<PathBuf> {
        fs::read_dir(&self.dir)
            .map(|l| l.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

impl State {
    fn add(&mut self, name: &str, file: Arc<fs::File>, entries: Vec<Entry>) {
        let pack: Arc<str> = name.into();
        link(&mut self.slots, &pack, &file, &entries);
        self.packs.insert(pack, (file, entries));
    }
}

/// Finds in `pack` each of `entries` not found elsewhere yet.
fn link(
    slots: &mut HashMap<ObjectId, Slot>,
    pack: &Arc<str>,
    file: &Arc<fs::File>,
    entries: &[Entry],
) {
    for e in entries {
        slots.entry(e.id).or_insert_with(|| Slot {
            pack: pack.clone(),
            file: file.clone(),
            offset: e.offset,
            len: e.len,
        });
    }
}

/// Writes `bytes` to `path` through a temp file beside it and a rename: a reader finds the
/// whole file or none.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a file's path has a folder")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("storing {}", path.display()))?;
    Ok(())
}

/// The pack name in `path` when it is `<64 hex digits>.<ext>`.
fn pack_name(path: &Path, ext: &str) -> Option<String> {
    let name = path
        .file_name()?
        .to_str()?
        .strip_suffix(&format!(".{ext}"))?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_string())
}
