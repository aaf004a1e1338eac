//! Rebuildable caches in `.biodc/cache.sled` (sled is kept behind this one module so it can be
//! swapped). Nothing here is ever the only copy of a fact: deleting the folder loses nothing.

use anyhow::Result;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

/// A handle on the cache database; one named tree per use.
pub struct Cache {
    db: sled::Db,
}

impl Cache {
    /// Opens the cache at `path`; a damaged cache is deleted and started afresh.
    pub fn open(path: &Path) -> Result<Cache> {
        let db = match sled::open(path) {
            Ok(db) => db,
            Err(e) => {
                eprintln!("note: rebuilding damaged cache {} ({e})", path.display());
                std::fs::remove_dir_all(path).ok();
                sled::open(path)?
            }
        };
        Ok(Cache { db })
    }

    /// Reads `key` from `tree`; a missing or unreadable entry is None.
    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Option<T> {
        let tree = self.db.open_tree(tree).ok()?;
        let bytes = tree.get(key).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes `key` in `tree`; failures are ignored (it is only a cache).
    pub fn put<T: Serialize>(&self, tree: &str, key: &[u8], value: &T) {
        if let (Ok(tree), Ok(bytes)) = (self.db.open_tree(tree), serde_json::to_vec(value)) {
            tree.insert(key, bytes).ok();
        }
    }

    pub fn flush(&self) {
        self.db.flush().ok();
    }
}
