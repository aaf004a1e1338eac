//! Loading stored tiles as network input.

use crate::io::Plane;
use crate::nn::data::normalize_patch;
use crate::store::Store;
use crate::version::{DatasetVersion, PatchRecord, StackManifest};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// The patches of a version that a network sees, with their common edge length.
pub struct PatchList<'a> {
    pub items: Vec<(&'a StackManifest, &'a PatchRecord)>,
    pub size: usize,
}

impl<'a> PatchList<'a> {
    /// Every patch of `version`; all stacks must share one tile size.
    pub fn all(version: &'a DatasetVersion) -> Result<PatchList<'a>> {
        let items: Vec<_> = version.all_patches().collect();
        if items.is_empty() {
            bail!("this version has no patches: import some stacks first");
        }
        let size = items[0].0.tile;
        if let Some((s, _)) = items.iter().find(|(s, _)| s.tile != size) {
            bail!(
                "stacks have different patch sizes ({} has {}, {} has {size}); networks need one size",
                s.name,
                s.tile,
                items[0].0.name
            );
        }
        Ok(PatchList { items, size })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The patches' ids, in order.
    pub fn ids(&self) -> Vec<String> {
        self.items.iter().map(|(_, p)| p.id.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Normalised pixels of the patches at `indices` (read in parallel).
    pub fn load(&self, store: &Store, indices: &[usize]) -> Result<Vec<Vec<f32>>> {
        indices
            .par_iter()
            .map(|&i| {
                let (stack, patch) = self.items[i];
                let plane = Plane::from_le_bytes(stack.dtype, &store.get(&patch.tile)?)?;
                Ok(normalize_patch(&plane.to_f32()))
            })
            .collect()
    }
}
