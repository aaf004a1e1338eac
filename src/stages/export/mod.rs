//! `export`: patches of a set as one TIFF each, named by patch id, in the source dtype; with a
//! model's predictions and triptychs for correction; or a model as safetensors.
//!
//! Export never overwrites a file unless told to (`--force`): it checks every name first and
//! writes nothing if one is taken, so masks an expert saved under a patch's name survive. It
//! records what it wrote in `.biodc-export.json` in the folder, so `annotate` on the same folder
//! reads only masks: not the exported images (unless an expert saved a mask over one), the
//! contact sheet or the triptychs.

pub mod bioimageio;
pub mod ome_zarr;

use crate::io::{tiff::write_stack, Plane, Stack, StackInfo};
use crate::output::OutDir;
use crate::repo::Repo;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The file in an export folder that lists what export wrote there.
pub const EXPORT_INDEX: &str = ".biodc-export.json";

/// What an exported file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A patch's pixels.
    Image,
    /// A contact sheet of a set.
    Gallery,
    /// A model's predicted mask, to correct and import with `annotate`.
    Prediction,
    /// Image | prediction | uncertainty, to look at.
    Triptych,
    /// Model weights or their config.
    Model,
}

/// One file export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub role: Role,
    /// blake3 of the bytes written (images and predictions), to tell whether it was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// `.biodc-export.json`: the files export wrote into a folder, by path relative to it (`/`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportIndex {
    pub files: BTreeMap<String, ExportedFile>,
}

impl ExportIndex {
    /// The index of `dir`, if export wrote one there (an unreadable one counts as none).
    pub fn read(dir: &Path) -> Option<ExportIndex> {
        let bytes = std::fs::read(dir.join(EXPORT_INDEX)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Adds `files` to the index of `out` (keeping what earlier exports recorded).
    fn record(out: &OutDir, files: BTreeMap<String, ExportedFile>) -> Result<()> {
        let mut index = ExportIndex::read(out.shown()).unwrap_or_default();
        index.files.extend(files);
        out.write_bytes(EXPORT_INDEX, true, &serde_json::to_vec_pretty(&index)?)?;
        Ok(())
    }
}

fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// Refuses, before anything is written, when any of `files` exists in `out` and `force` is off.
fn refuse_existing(out: &OutDir, files: &[String], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let mut taken = Vec::new();
    for f in files {
        if out.exists(f)? {
            taken.push(f.as_str());
        }
    }
    if !taken.is_empty() {
        bail!(
            "{} of the files to export already exist in {} ({}{}); nothing was written. \
             Export to another folder, or pass --force to overwrite them",
            taken.len(),
            out.shown().display(),
            taken.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            if taken.len() > 3 { ", …" } else { "" }
        );
    }
    Ok(())
}

/// Largest set that also gets a contact sheet.
const GALLERY_MAX: usize = 400;

/// Writes every patch of `set` to `dir/<patch id>.tif` and, for sets of up to 400 patches, a
/// contact sheet `dir/<set>-gallery.png`; returns how many patches. Refuses (writing nothing)
/// when one of these files exists.
pub fn export_set(repo: &Repo, version: &DatasetVersion, set: &str, dir: &Path) -> Result<usize> {
    export_set_with(repo, version, set, dir, false)
}

/// [`export_set`], overwriting existing files when `force`.
pub fn export_set_with(
    repo: &Repo,
    version: &DatasetVersion,
    set: &str,
    dir: &Path,
    force: bool,
) -> Result<usize> {
    let ids = version.set_members(set)?;
    let out = OutDir::create(dir)?;
    refuse_existing(&out, &set_files(set, &ids), force)?;
    write_set(repo, version, set, &ids, &out, force)
}

/// The names [`export_set`] writes.
fn set_files(set: &str, ids: &[String]) -> Vec<String> {
    let mut files: Vec<String> = ids.iter().map(|id| format!("{id}.tif")).collect();
    if !ids.is_empty() && ids.len() <= GALLERY_MAX {
        files.push(format!("{set}-gallery.png"));
    }
    files
}

fn write_set(
    repo: &Repo,
    version: &DatasetVersion,
    set: &str,
    ids: &[String],
    out: &OutDir,
    force: bool,
) -> Result<usize> {
    let store = &repo.store;
    let pb = crate::progress::bar(ids.len() as u64, "export", false);
    let written: Vec<(String, ExportedFile)> = ids
        .par_iter()
        .map(|id| -> Result<(String, ExportedFile)> {
            let (info, plane) = version.patch_plane(store, id)?;
            let name = format!("{id}.tif");
            let mut hash = None;
            out.write(&name, force, |path| {
                write_stack(
                    path,
                    &Stack {
                        info,
                        planes: vec![plane],
                    },
                )?;
                hash = Some(file_hash(path)?);
                Ok(())
            })?;
            pb.inc(1);
            Ok((
                name,
                ExportedFile {
                    role: Role::Image,
                    blake3: hash,
                },
            ))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mut index: BTreeMap<String, ExportedFile> = written.into_iter().collect();
    if !ids.is_empty() && ids.len() <= GALLERY_MAX {
        let planes = ids
            .iter()
            .map(|id| version.patch_plane(store, id).map(|(_, p)| p))
            .collect::<Result<Vec<_>>>()?;
        let size = version.patch(&ids[0]).map_or(0, |(s, _)| s.tile);
        let name = format!("{set}-gallery.png");
        out.write(&name, force, |path| {
            crate::report::gallery::contact_sheet(path, &planes, size)
        })?;
        index.insert(
            name,
            ExportedFile {
                role: Role::Gallery,
                blake3: None,
            },
        );
    }
    ExportIndex::record(out, index)?;
    Ok(ids.len())
}

/// Writes model `name` as `dir/<name>.safetensors` and `dir/config.json` (Hugging Face-like
/// ViT-MAE config), loadable outside biodc; returns the two paths. Existing files are kept
/// (nothing is written) unless `force`.
pub fn export_model(
    repo: &Repo,
    version: &DatasetVersion,
    name: &str,
    dir: &Path,
    force: bool,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let model = version.models.get(name).with_context(|| {
        let known: Vec<&str> = version.models.keys().map(String::as_str).collect();
        format!(
            "no model named {name:?} in this version (models: {})",
            known.join(", ")
        )
    })?;
    let out = OutDir::create(dir)?;
    let (weights_name, config_name) = (format!("{name}.safetensors"), "config.json".to_string());
    refuse_existing(&out, &[weights_name.clone(), config_name.clone()], force)?;
    let weights = out.write_bytes(&weights_name, force, &repo.store.get(&model.checkpoint)?)?;
    let mut cfg = model.architecture.clone();
    if let Some(obj) = cfg.as_object_mut() {
        obj.remove("biodc");
        obj.insert("biodc_model".into(), serde_json::json!(name));
        obj.insert(
            "biodc_checkpoint".into(),
            serde_json::json!(model.checkpoint.to_hex()),
        );
    }
    let config = out.write_bytes(&config_name, force, &serde_json::to_vec_pretty(&cfg)?)?;
    let model_file = || ExportedFile {
        role: Role::Model,
        blake3: None,
    };
    ExportIndex::record(
        &out,
        BTreeMap::from([(weights_name, model_file()), (config_name, model_file())]),
    )?;
    Ok((weights, config))
}

/// Writes, for every patch of `set`, what an expert needs to correct `model`'s prediction:
/// `dir/<id>.tif` (the image), `dir/predictions/<id>.tif` (the predicted mask, 0/255, to edit
/// in napari or Fiji and import with `annotate dir` or `annotate dir/predictions`) and
/// `dir/triptychs/<id>.png` (image, prediction, MC-dropout uncertainty). The uncertainty maps
/// stored by `hunt` are used when the set has them; otherwise 10 dropout passes are run here.
/// Refuses (writing nothing) when one of these files exists, unless `force`. Returns how many
/// patches.
pub fn export_with_prediction(
    repo: &Repo,
    version: &DatasetVersion,
    set: &str,
    model: &str,
    dir: &Path,
    force: bool,
) -> Result<usize> {
    // Everything is checked before anything is written.
    version.model(model)?;
    let members = version.set_members(set)?;
    let out = OutDir::create(dir)?;
    let mut files = set_files(set, &members);
    for id in &members {
        files.push(format!("predictions/{id}.tif"));
        files.push(format!("triptychs/{id}.png"));
    }
    refuse_existing(&out, &files, force)?;
    let n = write_set(repo, version, set, &members, &out, force)?;
    let ids = version.set_members(set)?;
    let m = version.model(model)?;
    let net = crate::segmentation::SegmentationModel::load(&repo.store, m)?;
    let size = net.window();
    let images = crate::segmentation::load_images(&repo.store, version, &ids)?;
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
            Some(obj) => repo.store.get_f32_matrix(obj, size, size)?,
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
    let mut index = BTreeMap::new();
    for ((id, mask), unc) in ids.iter().zip(&masks).zip(&uncertainty) {
        let (info, plane) = version.patch_plane(&repo.store, id)?;
        let name = format!("predictions/{id}.tif");
        let mut hash = None;
        out.write(&name, force, |path| {
            write_stack(
                path,
                &Stack {
                    info: StackInfo {
                        dtype: crate::io::Dtype::U8,
                        ..info
                    },
                    planes: vec![Plane::U8(mask.iter().map(|&v| v * 255).collect())],
                },
            )?;
            hash = Some(file_hash(path)?);
            Ok(())
        })?;
        index.insert(
            name,
            ExportedFile {
                role: Role::Prediction,
                blake3: hash,
            },
        );
        let name = format!("triptychs/{id}.png");
        out.write(&name, force, |path| {
            crate::report::gallery::triptych(path, &plane, mask, unc, size)
        })?;
        index.insert(
            name,
            ExportedFile {
                role: Role::Triptych,
                blake3: None,
            },
        );
    }
    ExportIndex::record(&out, index)?;
    Ok(n)
}
