//! What import decides for each file before any pixel is read: new, unchanged, or replacing
//! a stack (refused without `--replace` when anything names the old stack's patches).

use super::source::source_file;
use super::{ImportParams, Input};
use crate::version::references::dependents;
use crate::version::{DatasetVersion, StackManifest};
use anyhow::{bail, Result};

/// What import decided for one file before any pixel is read.
pub(super) struct Plan {
    /// The file's blake3.
    pub blake3: String,
    /// The stack's new manifest; `None` when the stack is already there as it is.
    pub manifest: Option<StackManifest>,
}

/// Decides, for every file, whether it is new, unchanged or replaces a stack; refuses (listing
/// every problem) before any pixel is stored.
pub(super) fn plan(
    cache: &crate::cache::Cache,
    version: &DatasetVersion,
    inputs: &[Input],
    tile: usize,
    params: &ImportParams,
) -> Result<Vec<Plan>> {
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        let source = source_file(cache, &input.path)?;
        let blake3 = source.blake3.clone();
        let manifest = StackManifest {
            name: input.name.clone(),
            source,
            shape: input.info.shape,
            dtype: input.info.dtype,
            voxel_size: input.info.voxel_size,
            conditions: input.conditions.clone(),
            tile,
        };
        if version.stacks.get(&input.name) == Some(&manifest) {
            plans.push(Plan {
                blake3,
                manifest: None,
            });
            continue;
        }
        problems.extend(replace_problem(version, &manifest, params));
        plans.push(Plan {
            blake3,
            manifest: Some(manifest),
        });
    }
    if !problems.is_empty() {
        bail!(
            "cannot import; nothing was written:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(plans)
}

/// Why `manifest` may not replace the stack of its name without `--replace`, if it may not.
pub(super) fn replace_problem(
    version: &DatasetVersion,
    manifest: &StackManifest,
    params: &ImportParams,
) -> Option<String> {
    let before = version.stacks.get(&manifest.name)?;
    let other_pixels = before.source.blake3 != manifest.source.blake3
        || before.tile != manifest.tile
        || before.shape != manifest.shape
        || before.dtype != manifest.dtype;
    let named_by = dependents(version, &manifest.name);
    if !other_pixels || params.replace || named_by.is_empty() {
        return None;
    }
    Some(format!(
        "{}: stack {:?} was imported from {} (blake3 {}) and {} name its patches; \
         this file holds other pixels (blake3 {}). Rename the file to import it \
         as a new stack, or pass --replace to replace the stack (what was made on \
         patches whose pixels change or vanish is then dropped from the new \
         version and listed)",
        manifest.source.file,
        manifest.name,
        before.source.file,
        &before.source.blake3[..12.min(before.source.blake3.len())],
        named_by.describe(),
        &manifest.source.blake3[..12]
    ))
}
