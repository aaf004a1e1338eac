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

/// Writes, for every patch of `set`, what an expert needs to correct `model`'s prediction:
/// `dir/<id>.tif` (the image), `dir/predictions/<id>.tif` (the predicted mask, 0/255, to edit
/// in napari or Fiji and import with `annotate`) and `dir/triptychs/<id>.png` (image,
/// prediction, MC-dropout uncertainty). The uncertainty maps stored by `hunt` are used when
/// the set has them; otherwise 10 dropout passes are run here. Returns how many patches.
pub fn export_with_prediction(
    repo: &Repo,
    version: &DatasetVersion,
    set: &str,
    model: &str,
    dir: &Path,
) -> Result<usize> {
    let n = export_set(repo, version, set, dir)?;
    let ids = set_members(version, set)?;
    let m = super::train::model(version, model)?;
    let net = crate::segmentation::SegmentationModel::load(&repo.store, m)?;
    let size = net.window();
    let images = super::train::load_images(&repo.store, version, &ids)?;
    let masks = crate::segmentation::predict_masks(&net, &images, 16)?;
    let stored = version.sets.get(set).and_then(|s| {
        let same_model =
            s.extra.get("checkpoint").and_then(|c| c.as_str()) == Some(&m.checkpoint.to_hex());
        same_model.then(|| s.objects.get("uncertainty")).flatten()
    });
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut uncertainty = Vec::with_capacity(ids.len());
    for (id, img) in ids.iter().zip(&images) {
        let map = match stored.and_then(|s| s.get(id)) {
            Some(obj) => super::read_f32_matrix(&repo.store, obj, size, size)?,
            None => {
                let r = super::hunt::mc_dropout(
                    &net,
                    std::slice::from_ref(id),
                    std::slice::from_ref(img),
                    10,
                    1,
                    &mut rng,
                    |_| {},
                )?;
                r.into_iter().next().unwrap().entropy_map
            }
        };
        uncertainty.push(map);
    }
    let (pred_dir, trip_dir) = (dir.join("predictions"), dir.join("triptychs"));
    std::fs::create_dir_all(&pred_dir)?;
    std::fs::create_dir_all(&trip_dir)?;
    for ((id, mask), unc) in ids.iter().zip(&masks).zip(&uncertainty) {
        let (info, plane) = patch_plane(&repo.store, version, id)?;
        let path = pred_dir.join(format!("{id}.tif"));
        write_stack(
            &path,
            &Stack {
                info: StackInfo {
                    dtype: crate::io::Dtype::U8,
                    ..info
                },
                planes: vec![Plane::U8(mask.iter().map(|&v| v * 255).collect())],
            },
        )
        .with_context(|| format!("writing {}", path.display()))?;
        crate::report::gallery::triptych(
            &trip_dir.join(format!("{id}.png")),
            &plane,
            mask,
            unc,
            size,
        )?;
    }
    Ok(n)
}
