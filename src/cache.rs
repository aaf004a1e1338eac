//! Rebuildable caches in `.biodc/cache.sled` (sled is kept behind this one module so it can be
//! swapped). Nothing here is ever the only copy of a fact: deleting the folder loses nothing.

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// A handle on the cache database; one named tree per use. Without a database (another process
/// has it open) every lookup misses and nothing is stored.
pub struct Cache {
    db: Option<sled::Db>,
}

impl Cache {
    /// Opens the cache at `path`. A cache another process holds open is left alone (this run
    /// goes without); only one that sled reports as corrupt is deleted and started afresh.
    pub fn open(path: &Path) -> Result<Cache> {
        let db = match sled::open(path) {
            Ok(db) => Some(db),
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                eprintln!(
                    "note: {} is in use by another process; running without the cache",
                    path.display()
                );
                None
            }
            Err(e @ sled::Error::Corruption { .. }) => {
                eprintln!("note: rebuilding damaged cache {} ({e})", path.display());
                std::fs::remove_dir_all(path).ok();
                Some(sled::open(path)?)
            }
            Err(e) => {
                eprintln!(
                    "note: cannot open the cache {} ({e}); running without it",
                    path.display()
                );
                None
            }
        };
        Ok(Cache { db })
    }

    /// Reads `key` from `tree`; a missing or unreadable entry is None.
    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Option<T> {
        let tree = self.db.as_ref()?.open_tree(tree).ok()?;
        let bytes = tree.get(key).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes `key` in `tree`; failures are ignored (it is only a cache).
    pub fn put<T: Serialize>(&self, tree: &str, key: &[u8], value: &T) {
        let Some(db) = &self.db else {
            return;
        };
        if let (Ok(tree), Ok(bytes)) = (db.open_tree(tree), serde_json::to_vec(value)) {
            tree.insert(key, bytes).ok();
        }
    }

    pub fn flush(&self) {
        if let Some(db) = &self.db {
            db.flush().ok();
        }
    }
}
