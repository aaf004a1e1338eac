//! The simulated expert: writes ground-truth masks for requested patches, as a biologist would
//! return them (one TIFF per patch, named by patch id, values {0, 255}).

use super::SynthManifest;
use crate::io::{tiff::read_stack, tiff::write_stack, Plane, Stack, StackInfo};
use crate::version::{stack_of_patch_id, DatasetVersion};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes `out/<patch id>.tif` for each of `patches`, cropped from the cohort's ground truth.
pub fn write_masks(
    cohort: &Path,
    version: &DatasetVersion,
    patches: &[String],
    out: &Path,
) -> Result<usize> {
    let manifest: SynthManifest = serde_json::from_slice(
        &std::fs::read(cohort.join("manifest.json"))
            .with_context(|| format!("{}: not a synthetic cohort", cohort.display()))?,
    )?;
    let mask_file: BTreeMap<&str, &str> = manifest
        .stacks
        .iter()
        .map(|s| (s.name.as_str(), s.mask.as_str()))
        .collect();
    std::fs::create_dir_all(out)?;
    let mut loaded: BTreeMap<String, Stack> = BTreeMap::new();
    for id in patches {
        let (stack, patch) = version
            .patch(id)
            .with_context(|| format!("patch {id} is not in this version"))?;
        let name = stack_of_patch_id(id).unwrap_or_default();
        let file = mask_file
            .get(name)
            .with_context(|| format!("stack {name} is not in the cohort"))?;
        if !loaded.contains_key(name) {
            loaded.insert(name.to_string(), read_stack(&cohort.join(file))?);
        }
        let truth = &loaded[name];
        let crop =
            truth.planes[patch.z].crop(stack.shape[2], patch.y, patch.x, stack.tile, stack.tile);
        let Plane::U8(v) = crop else {
            anyhow::bail!("ground-truth masks are u8")
        };
        let mask = Stack {
            info: StackInfo {
                shape: [1, stack.tile, stack.tile],
                dtype: crate::io::Dtype::U8,
                voxel_size: None,
            },
            planes: vec![Plane::U8(
                v.iter().map(|&m| if m > 0 { 255 } else { 0 }).collect(),
            )],
        };
        crate::output::OutDir::create(out)?
            .write(&format!("{id}.tif"), true, |p| write_stack(p, &mask))?;
    }
    Ok(patches.len())
}
