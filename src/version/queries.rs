//! Questions every stage asks of a version: the current mask of each patch, the members of a
//! set, a patch's pixels and condition, a model by name, its QC flags and RCA scores. One
//! answer each, here.

use super::{
    AnnotationRecord, DatasetVersion, ModelManifest, QcLine, RcaRecord, QC_FILE, RCA_FILE,
};
use crate::io::{Plane, StackInfo};
use crate::store::Store;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

impl DatasetVersion {
    /// The current mask of each annotated patch: its last annotation line.
    pub fn current_masks(&self) -> BTreeMap<&str, &AnnotationRecord> {
        self.annotations
            .iter()
            .map(|a| (a.patch.as_str(), a))
            .collect()
    }

    /// Patches whose current mask came in `round`.
    pub fn round_ids(&self, round: &str) -> Vec<String> {
        self.current_masks()
            .into_iter()
            .filter(|(_, a)| a.round == round)
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// The patch ids of `set` ("all" = every patch).
    pub fn set_members(&self, set: &str) -> Result<Vec<String>> {
        if set == "all" {
            return Ok(self.all_patches().map(|(_, p)| p.id.clone()).collect());
        }
        match self.sets.get(set) {
            Some(s) => Ok(s.patches.clone()),
            None => bail!(
                "no set named {set:?} in this version (sets: {}; or `all`)",
                listing(self.sets.keys())
            ),
        }
    }

    /// One patch's pixels, read from `store`.
    pub fn patch_plane(&self, store: &Store, id: &str) -> Result<(StackInfo, Plane)> {
        let (stack, patch) = self
            .patch(id)
            .with_context(|| format!("patch {id} is not in this version"))?;
        let raw = store.get(&patch.tile)?;
        let plane = Plane::from_le_bytes(stack.dtype, &raw)?;
        let info = StackInfo {
            shape: [1, stack.tile, stack.tile],
            dtype: stack.dtype,
            voxel_size: stack.voxel_size,
        };
        Ok((info, plane))
    }

    /// Every plane of stack `name` in its own pixel type, rebuilt from its tiles (which cover
    /// it; where edge tiles overlap, they hold the same pixels).
    pub fn stack_planes(&self, store: &Store, name: &str) -> Result<Vec<Plane>> {
        use rayon::prelude::*;
        let stack = self
            .stacks
            .get(name)
            .with_context(|| format!("no stack named {name:?} in this version"))?;
        let [depth, h, w] = stack.shape;
        let patches = self
            .patches
            .get(name)
            .with_context(|| format!("stack {name} has no patch list"))?;
        let tiles: Vec<(usize, usize, usize, Plane)> = patches
            .par_iter()
            .map(|p| {
                let plane = Plane::from_le_bytes(stack.dtype, &store.get(&p.tile)?)?;
                Ok((p.z, p.y, p.x, plane))
            })
            .collect::<Result<_>>()?;
        let empty = Plane::from_le_bytes(stack.dtype, &vec![0; h * w * stack.dtype.size()])?;
        let mut planes = vec![empty; depth];
        for (z, y, x, tile) in tiles {
            planes[z].paste(w, y, x, stack.tile, &tile);
        }
        Ok(planes)
    }

    /// The condition label of a patch's stack ("none" when untagged).
    pub fn condition_of(&self, patch: &str) -> String {
        super::stack_of_patch_id(patch)
            .and_then(|s| self.stacks.get(s))
            .and_then(|s| s.conditions.first().cloned())
            .unwrap_or_else(|| "none".into())
    }

    /// The model `name`, with an error that lists the models there are.
    pub fn model(&self, name: &str) -> Result<&ModelManifest> {
        self.models.get(name).with_context(|| {
            format!(
                "no model named {name:?} in this version (models: {})",
                listing(self.models.keys())
            )
        })
    }

    /// The QC lines (empty when `qc` has not run).
    pub fn qc_lines(&self) -> Result<Vec<QcLine>> {
        let Some(text) = self.other.get(QC_FILE) else {
            return Ok(Vec::new());
        };
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).with_context(|| format!("{QC_FILE}: malformed line"))
            })
            .collect()
    }

    /// Patch ids carrying any of `flags` in the QC lines (empty when `flags` is).
    pub fn flagged_patches(&self, flags: &[String]) -> Result<BTreeSet<String>> {
        if flags.is_empty() {
            return Ok(BTreeSet::new());
        }
        anyhow::ensure!(
            self.other.contains_key(QC_FILE),
            "--exclude needs QC flags: run `biodc qc` first"
        );
        Ok(self
            .qc_lines()?
            .into_iter()
            .filter(|l| l.flags.iter().any(|f| flags.contains(f)))
            .map(|l| l.patch)
            .collect())
    }

    /// The RCA lines (empty when `monitor` has not run).
    pub fn rca_lines(&self) -> Result<Vec<RcaRecord>> {
        let Some(bytes) = self.other.get(RCA_FILE) else {
            return Ok(Vec::new());
        };
        std::str::from_utf8(bytes)?
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| anyhow::anyhow!("{RCA_FILE} line {}: {e}", i + 1))
            })
            .collect()
    }
}

/// "a, b, c", or "none".
fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Latest RCA line per stack (the file keeps one line per (stack, model); this takes the one of
/// the most recent run), worst first.
pub fn latest_by_stack(lines: &[RcaRecord]) -> Vec<RcaRecord> {
    let mut v: Vec<RcaRecord> = super::diff::latest_rca(lines.to_vec())
        .into_values()
        .collect();
    v.sort_by(|a, b| a.rca.total_cmp(&b.rca).then(a.stack.cmp(&b.stack)));
    v
}
