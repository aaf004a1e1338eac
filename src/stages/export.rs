//! `export`: patches of a set as one TIFF each, named by patch id, in the source dtype.

use crate::io::{tiff::write_stack, Plane, Stack, StackInfo};
use crate::repo::Repo;
use crate::store::Store;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::Path;

/// The patch ids of `set` ("all" = every patch) in `version`.
pub fn set_members(version: &DatasetVersion, set: &str) -> Result<Vec<String>> {
    if set == "all" {
        return Ok(version.all_patches().map(|(_, p)| p.id.clone()).collect());
    }
    match version.sets.get(set) {
        Some(s) => Ok(s.patches.clone()),
        None => {
            let known: Vec<&str> = version.sets.keys().map(String::as_str).collect();
            bail!(
                "no set named {set:?} in this version (sets: {}; or `all`)",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        }
    }
}

/// Reads one patch's pixels from the store.
pub fn patch_plane(
    store: &Store,
    version: &DatasetVersion,
    id: &str,
) -> Result<(StackInfo, Plane)> {
    let (stack, patch) = version
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

/// Largest set that also gets a contact sheet.
const GALLERY_MAX: usize = 400;

/// Writes every patch of `set` to `dir/<patch id>.tif` and, for sets of up to 400 patches, a
/// contact sheet `dir/<set>-gallery.png`; returns how many patches.
pub fn export_set(repo: &Repo, version: &DatasetVersion, set: &str, dir: &Path) -> Result<usize> {
    let ids = set_members(version, set)?;
    let store = &repo.store;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let pb = crate::progress::bar(ids.len() as u64, "export", false);
    ids.par_iter().try_for_each(|id| -> Result<()> {
        let (info, plane) = patch_plane(store, version, id)?;
        let path = dir.join(format!("{id}.tif"));
        write_stack(
            &path,
            &Stack {
                info,
                planes: vec![plane],
            },
        )
        .with_context(|| format!("writing {}", path.display()))?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    if !ids.is_empty() && ids.len() <= GALLERY_MAX {
        let planes = ids
            .iter()
            .map(|id| patch_plane(store, version, id).map(|(_, p)| p))
            .collect::<Result<Vec<_>>>()?;
        let size = version.patch(&ids[0]).map_or(0, |(s, _)| s.tile);
        crate::report::gallery::contact_sheet(
            &dir.join(format!("{set}-gallery.png")),
            &planes,
            size,
        )?;
    }
    Ok(ids.len())
}

/// Writes model `name` as `dir/<name>.safetensors` and `dir/config.json` (Hugging Face-like
/// ViT-MAE config), loadable outside biodc; returns the two paths.
pub fn export_model(
    repo: &Repo,
    version: &DatasetVersion,
    name: &str,
    dir: &Path,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let model = version.models.get(name).with_context(|| {
        let known: Vec<&str> = version.models.keys().map(String::as_str).collect();
        format!(
            "no model named {name:?} in this version (models: {})",
            known.join(", ")
        )
    })?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join(format!("{name}.safetensors"));
    std::fs::write(&weights, repo.store.get(&model.checkpoint)?)?;
    let config = dir.join("config.json");
    let mut cfg = model.architecture.clone();
    if let Some(obj) = cfg.as_object_mut() {
        obj.remove("biodc");
        obj.insert("biodc_model".into(), serde_json::json!(name));
        obj.insert(
            "biodc_checkpoint".into(),
            serde_json::json!(model.checkpoint.to_hex()),
        );
    }
    std::fs::write(&config, serde_json::to_vec_pretty(&cfg)?)?;
    Ok((weights, config))
}
