//! Remotes: where a repository's versions and objects are copied to and from — a folder or an
//! S3-compatible bucket — their layout there, and the settings in `.biodc/remotes.toml` (a
//! name and a URL each; credentials only ever come from the environment).
//!
//! Layout of a remote (docs/FORMAT.md):
//! `biodc-remote.json`, `config.toml`, `packs/<name>.pack` and `.idx` (the store's files, as
//! stored, many to a pack: see [`pack`]), `objects/<2 hex>/<62 hex>` (one store file a key, as
//! format 1 remotes hold them; still read), `git/<2 hex>/<38 hex>` (git objects, zstd of
//! `<kind> <len>\0<data>`: commits, and trees and blobs of format 1 and 2 remotes),
//! `git-packs/<name>.pack` and `.idx` (trees and blobs, many to a pack) and
//! `refs/heads/<branch>/<n>`: the branch's n-th position (20 digits), written only if absent, so the highest n is the branch and two pushes cannot both
//! take the same n (where the storage honours "only if absent": a push asks it first, with a
//! key under `probes/`).

mod backend;
pub mod pack;

pub use backend::{Backend, Created, Location};

use crate::store::{ObjectId, ObjectSource};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Marker object at a remote's root.
pub const MARKER: &str = "biodc-remote.json";
/// The pushing repository's `config.toml`, for clones.
pub const CONFIG: &str = "config.toml";
/// The layout version a push writes into the marker (1: one key per object; 2: packs of
/// store objects; 3: git trees and blobs in packs too).
pub const FORMAT: u64 = 3;

/// Fails unless `marker` (the bytes of [`MARKER`]) names a layout this biodc reads.
pub fn check_format(marker: &[u8], url: &str) -> Result<()> {
    let v: serde_json::Value =
        serde_json::from_slice(marker).with_context(|| format!("{url}: {MARKER} is not JSON"))?;
    match v["format"].as_u64() {
        Some(n) if n <= FORMAT => Ok(()),
        Some(n) => bail!("{url} is a biodc remote of format {n}; this biodc reads formats up to {FORMAT}: upgrade biodc"),
        None => bail!("{url}: {MARKER} names no format"),
    }
}

/// Folder of a repository's `.biodc` where remote pack indexes are kept once read.
pub fn index_cache(dot: &Path) -> PathBuf {
    dot.join("pack-indexes")
}

/// Key of a store object on a remote.
pub fn object_key(id: &ObjectId) -> String {
    let hex = id.to_hex();
    format!("objects/{}/{}", &hex[..2], &hex[2..])
}

/// Key of a git object on a remote.
pub fn git_key(id: &crate::history::CommitId) -> String {
    let hex = id.to_string();
    format!("git/{}/{}", &hex[..2], &hex[2..])
}

/// Prefix of a branch's positions on a remote.
pub fn branch_prefix(branch: &str) -> String {
    format!("refs/heads/{branch}")
}

/// Key of a branch's n-th position.
pub fn branch_key(branch: &str, n: u64) -> String {
    format!("refs/heads/{branch}/{n:020}")
}

/// `.biodc/remotes.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Remotes {
    #[serde(default)]
    pub remotes: BTreeMap<String, RemoteEntry>,
    /// The remote objects missing here are read from (a clone made with `--no-data` or
    /// `--sets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteEntry {
    pub url: String,
}

impl Remotes {
    fn path(dot: &Path) -> PathBuf {
        dot.join("remotes.toml")
    }

    /// The remotes of the repository whose `.biodc` folder is `dot`.
    pub fn load(dot: &Path) -> Result<Remotes> {
        let path = Remotes::path(dot);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{}: malformed remotes file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Remotes::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes them (whole file, atomically).
    pub fn save(&self, dot: &Path) -> Result<()> {
        let path = Remotes::path(dot);
        let mut tmp = tempfile::NamedTempFile::new_in(dot)?;
        std::io::Write::write_all(&mut tmp, toml::to_string_pretty(self)?.as_bytes())?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The URL of remote `name`.
    pub fn url(&self, name: &str) -> Result<&str> {
        match self.remotes.get(name) {
            Some(r) => Ok(&r.url),
            None if self.remotes.is_empty() => bail!(
                "no remote named {name:?}: this repository has none (add one with `biodc remote add {name} URL`)"
            ),
            None => bail!(
                "no remote named {name:?} (remotes: {})",
                self.remotes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// Opens remote storage by URL; `base` resolves relative folder paths.
pub fn open(url: &str, base: &Path, create: bool) -> Result<Backend> {
    Backend::open(&Location::parse(url, base)?, url, create)
}

/// Reads objects from a remote on first need (the connection is made, and the remote's pack
/// indexes read, on the first miss).
pub struct LazySource {
    url: String,
    base: PathBuf,
    cache: PathBuf,
    remote: OnceLock<(Backend, pack::Inventory)>,
}

impl LazySource {
    pub fn new(url: &str, base: &Path, cache: &Path) -> LazySource {
        LazySource {
            url: url.into(),
            base: base.into(),
            cache: cache.into(),
            remote: OnceLock::new(),
        }
    }
}

impl ObjectSource for LazySource {
    fn fetch(&self, id: &ObjectId) -> Result<Option<Vec<u8>>> {
        let (backend, inventory) = match self.remote.get() {
            Some(r) => r,
            None => {
                let b = open(&self.url, &self.base, false)?;
                let inv = pack::Inventory::read(&b, pack::Shelf::Data, Some(&self.cache), 8)?;
                self.remote.get_or_init(|| (b, inv))
            }
        };
        match inventory.find(id) {
            Some((name, entry)) => {
                let got = Mutex::new(None);
                backend.get_ranges_many(
                    &[(pack::Shelf::Data.pack_key(name), vec![entry.range()])],
                    1,
                    &|_, mut parts| {
                        *got.lock().unwrap() = parts.pop();
                        Ok(())
                    },
                )?;
                Ok(got.into_inner().unwrap())
            }
            None => backend.get(&object_key(id)),
        }
    }
}

/// Attaches the read-through source of a partial clone to `store` (no-op otherwise).
pub fn attach_partial_source(dot: &Path, store: &crate::store::Store) -> Result<()> {
    let remotes = Remotes::load(dot)?;
    if let Some(name) = &remotes.partial {
        let url = remotes.url(name)?;
        let base = dot.parent().unwrap_or(dot);
        store.set_source(Box::new(LazySource::new(url, base, &index_cache(dot))));
    }
    Ok(())
}
