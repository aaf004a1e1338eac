//! `export --ome-zarr`: whole stacks as OME-Zarr images, each with its annotations and,
//! when asked, a model's predicted masks as label images, so napari (napari-ome-zarr) opens
//! image and labels together and `import` reads the image back as the same tiles.

use crate::io::ome_zarr::{write_image, LabelImage, Ngff};
use crate::io::StackInfo;
use crate::output::OutDir;
use crate::repo::Repo;
use crate::segmentation::SegmentationModel;
use crate::stages::segment::segment_slices;
use crate::version::DatasetVersion;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One stack written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedImage {
    pub stack: String,
    pub path: PathBuf,
    /// Its label images: `annotations` (1 where an annotated patch's mask is foreground; 0
    /// elsewhere, annotated or not) and the model's name for its predicted masks.
    pub labels: Vec<String>,
    /// Patches whose annotation is in `annotations`.
    pub annotated_patches: usize,
}

/// Writes `stacks` (all when empty) of `version` as `<to>/<stack>.ome.zarr`, with the
/// annotations and `prediction`'s masks as labels. Refuses, writing nothing, when one exists
/// and `force` is off; each image is written beside its place and moved in when complete.
pub fn export_ome_zarr(
    repo: &Repo,
    version: &DatasetVersion,
    stacks: &[String],
    prediction: Option<&str>,
    to: &Path,
    ngff: Ngff,
    force: bool,
) -> Result<Vec<ExportedImage>> {
    let names: Vec<String> = if stacks.is_empty() {
        version.stacks.keys().cloned().collect()
    } else {
        stacks.to_vec()
    };
    if let Some(n) = names.iter().find(|n| !version.stacks.contains_key(*n)) {
        bail!("no stack named {n:?} in this version (see `biodc status --json` or `biodc show`)");
    }
    let model = prediction
        .map(|m| SegmentationModel::load(&repo.store, version.model(m)?))
        .transpose()?;
    let out = OutDir::create(to)?;
    let mut targets = Vec::new();
    let mut taken = Vec::new();
    for n in &names {
        let path = out.path(&format!("{n}.ome.zarr"))?;
        if path.exists() {
            if !force {
                taken.push(path.display().to_string());
            } else if !crate::io::ome_zarr::is_zarr(&path) {
                bail!(
                    "{}: exists and is not a Zarr folder; not replacing it even with --force",
                    path.display()
                );
            }
        }
        targets.push(path);
    }
    if !taken.is_empty() {
        bail!(
            "not overwriting (pass --force to replace them); nothing was written:\n  {}",
            taken.join("\n  ")
        );
    }
    let masks = version.current_masks();
    let pb = crate::progress::bar(names.len() as u64, "export", false);
    let mut done = Vec::new();
    for (name, path) in names.iter().zip(targets) {
        let stack = &version.stacks[name];
        let [depth, h, w] = stack.shape;
        let planes = version.stack_planes(&repo.store, name)?;
        let mut labels = Vec::new();
        let mut annotated = vec![0u8; depth * h * w];
        let mut annotated_patches = 0;
        for p in &version.patches[name] {
            let Some(a) = masks.get(p.id.as_str()) else {
                continue;
            };
            let mask = repo.store.get(&a.mask)?;
            let t = stack.tile;
            for r in 0..t {
                let row = (p.z * h + p.y + r) * w + p.x;
                annotated[row..row + t].copy_from_slice(&mask[r * t..(r + 1) * t]);
            }
            annotated_patches += 1;
        }
        if annotated_patches > 0 {
            labels.push(LabelImage {
                name: "annotations".into(),
                voxels: annotated,
            });
        }
        if let (Some(net), Some(m)) = (&model, prediction) {
            let slices: Vec<Vec<f32>> = planes.iter().map(|p| p.to_f32()).collect();
            let predicted = segment_slices(net, &slices, h, w)
                .with_context(|| format!("segmenting {name} with {m}"))?;
            labels.push(LabelImage {
                name: m.to_string(),
                voxels: predicted.concat(),
            });
        }
        let info = StackInfo {
            shape: stack.shape,
            dtype: stack.dtype,
            voxel_size: stack.voxel_size,
        };
        let parent = path.parent().context("an export path has a folder")?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}.ome.zarr."))
            .tempdir_in(parent)?;
        let mut planes = planes.into_iter();
        write_image(
            tmp.path(),
            name,
            &info,
            |_| planes.next().context("fewer planes than the stack's depth"),
            &labels,
            ngff,
        )?;
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {} to replace it", path.display()))?;
        }
        std::fs::rename(tmp.keep(), &path)
            .with_context(|| format!("moving the export into {}", path.display()))?;
        done.push(ExportedImage {
            stack: name.clone(),
            path,
            labels: labels.into_iter().map(|l| l.name).collect(),
            annotated_patches,
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(done)
}
