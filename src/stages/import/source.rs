//! The source file of an imported stack: its size and blake3, hashed again only when the stat
//! cache cannot vouch that the file is unchanged.

use crate::cache::Cache;
use crate::version::SourceFile;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What the stat cache remembers of a file: when all of it still matches, the file's bytes
/// are taken to be unchanged. The inode change time (ctime) cannot be set back by anyone, so a
/// file rewritten with the same size and a restored mtime is still read again.
#[derive(Serialize, Deserialize, PartialEq)]
struct FileStat {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
}

#[derive(Serialize, Deserialize)]
struct StatEntry {
    stat: FileStat,
    /// When the file was hashed (clock time, ns since the epoch).
    hashed_ns: i128,
    blake3: String,
}

/// Changes made within this long before a file was hashed may share its timestamps with the
/// version that was hashed (coarse file system clocks): such an entry is not trusted.
const RACY_NS: i128 = 2_000_000_000;

fn file_stat(meta: &std::fs::Metadata) -> FileStat {
    use std::os::unix::fs::MetadataExt;
    FileStat {
        len: meta.len(),
        mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        inode: meta.ino(),
        device: meta.dev(),
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The source file's size and blake3, from the stat cache when nothing about the file changed.
/// A folder (an OME-Zarr image) is hashed whole every time: the blake3 of its files' relative
/// paths, sizes and bytes in name order, and its size their sum.
pub(super) fn source_file(cache: &Cache, path: &Path) -> Result<SourceFile> {
    if path.is_dir() {
        return source_folder(path);
    }
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let stat = file_stat(&meta);
    let key = path.canonicalize()?.to_string_lossy().into_owned();
    let cached: Option<StatEntry> = cache.get("import-stat", key.as_bytes());
    let trusted = cached
        .filter(|e| e.stat == stat && e.stat.ctime_ns.max(e.stat.mtime_ns) + RACY_NS < e.hashed_ns);
    let blake3 = match trusted {
        Some(e) => e.blake3,
        None => {
            let hashed_ns = now_ns();
            let mut hasher = blake3::Hasher::new();
            hasher
                .update_reader(std::fs::File::open(path)?)
                .with_context(|| format!("{}: reading", path.display()))?;
            let hex = hasher.finalize().to_hex().to_string();
            let entry = StatEntry {
                stat,
                hashed_ns,
                blake3: hex.clone(),
            };
            cache.put("import-stat", key.as_bytes(), &entry);
            hex
        }
    };
    Ok(SourceFile {
        file: path.to_string_lossy().into_owned(),
        blake3,
        bytes: meta.len(),
    })
}

fn source_folder(dir: &Path) -> Result<SourceFile> {
    let mut hasher = blake3::Hasher::new();
    let mut bytes = 0;
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(dir)?
            .to_string_lossy()
            .replace('\\', "/");
        let len = entry.metadata()?.len();
        hasher.update(rel.as_bytes());
        hasher.update(&[0]);
        hasher.update(&len.to_le_bytes());
        hasher
            .update_reader(std::fs::File::open(entry.path())?)
            .with_context(|| format!("{}: reading", entry.path().display()))?;
        bytes += len;
    }
    Ok(SourceFile {
        file: dir.to_string_lossy().into_owned(),
        blake3: hasher.finalize().to_hex().to_string(),
        bytes,
    })
}
