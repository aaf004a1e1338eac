//! Writing z-stacks as OME-Zarr images (NGFF 0.4 or 0.5) with label images; what is written
//! is parsed back by `ome_zarr_metadata` first.

use super::open_store;
use crate::io::{Dtype, Plane, StackInfo};
use anyhow::{anyhow, bail, Context, Result};
use ome_zarr_metadata::AnyOmeFields;
use std::path::Path;
use std::sync::Arc;
use zarrs::array::{Array, ArrayMetadata, ArraySubset};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::{Group, GroupMetadata};

/// The OME-Zarr version biodc writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ngff {
    /// NGFF 0.4 on Zarr v2: what most readers of 2023–2024 open.
    #[serde(rename = "0.4")]
    V04,
    /// NGFF 0.5 on Zarr v3.
    #[serde(rename = "0.5")]
    V05,
}

impl std::str::FromStr for Ngff {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Ngff> {
        match s {
            "0.4" => Ok(Ngff::V04),
            "0.5" => Ok(Ngff::V05),
            _ => bail!("OME-Zarr version {s:?}: biodc writes 0.4 (Zarr v2) or 0.5 (Zarr v3)"),
        }
    }
}

/// A label image of a stack: one byte per voxel, (Z, Y, X) row-major; 0 is no label.
pub struct LabelImage {
    pub name: String,
    pub voxels: Vec<u8>,
}

/// Writes a z-stack as the OME-Zarr image `dir` (which must not exist): level 0 only, one
/// chunk per plane (tiled at 1024² in larger planes), zstd-compressed, `plane(z)` giving the
/// pixels; `labels` go into its `labels/` group.
pub fn write_image(
    dir: &Path,
    name: &str,
    info: &StackInfo,
    mut plane: impl FnMut(usize) -> Result<Plane>,
    labels: &[LabelImage],
    ngff: Ngff,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let store = open_store(dir)?;
    write_group(&store, "/", image_attributes(name, info, ngff, None), ngff)?;
    let array = create_array(&store, "/0", info, ngff)?;
    let [depth, h, w] = info.shape;
    for z in 0..depth {
        let p = plane(z)?;
        anyhow::ensure!(p.len() == h * w, "plane {z} is not {h}×{w}");
        let subset =
            ArraySubset::new_with_ranges(&[z as u64..z as u64 + 1, 0..h as u64, 0..w as u64]);
        let stored = match p {
            Plane::U8(v) => array.store_array_subset(&subset, v),
            Plane::U16(v) => array.store_array_subset(&subset, v),
            Plane::F32(v) => array.store_array_subset(&subset, v),
        };
        stored.map_err(|e| anyhow!("{}: writing plane {z}: {e}", dir.display()))?;
    }
    if labels.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
    write_group(
        &store,
        "/labels",
        ome(ngff, serde_json::json!({ "labels": names })),
        ngff,
    )?;
    let label_info = StackInfo {
        dtype: Dtype::U8,
        ..info.clone()
    };
    for l in labels {
        anyhow::ensure!(
            l.voxels.len() == depth * h * w,
            "label image {} is not {depth}×{h}×{w}",
            l.name
        );
        let group = format!("/labels/{}", l.name);
        let attrs = image_attributes(&l.name, info, ngff, Some(image_label(ngff)));
        write_group(&store, &group, attrs, ngff)?;
        let array = create_array(&store, &format!("{group}/0"), &label_info, ngff)?;
        for (z, plane) in l.voxels.chunks(h * w).enumerate() {
            let subset =
                ArraySubset::new_with_ranges(&[z as u64..z as u64 + 1, 0..h as u64, 0..w as u64]);
            array
                .store_array_subset(&subset, plane.to_vec())
                .map_err(|e| anyhow!("{}: writing label {}: {e}", dir.display(), l.name))?;
        }
    }
    Ok(())
}

/// `fields` as the OME attributes of `ngff`: free (0.4) or under `ome` with the version (0.5).
fn ome(ngff: Ngff, fields: serde_json::Value) -> serde_json::Value {
    match ngff {
        Ngff::V04 => fields,
        Ngff::V05 => {
            let mut f = fields;
            f["version"] = "0.5".into();
            serde_json::json!({ "ome": f })
        }
    }
}

fn image_label(ngff: Ngff) -> serde_json::Value {
    let mut label = serde_json::json!({
        "colors": [{"label-value": 1, "rgba": [255, 0, 255, 255]}],
        "source": {"image": "../../"},
    });
    if ngff == Ngff::V04 {
        label["version"] = "0.4".into();
    }
    label
}

/// The multiscales metadata of a one-level image (and its `image-label` entry, for a label).
fn image_attributes(
    name: &str,
    info: &StackInfo,
    ngff: Ngff,
    image_label: Option<serde_json::Value>,
) -> serde_json::Value {
    let (scale, unit) = match info.voxel_size {
        Some(v) => (v.to_vec(), Some("micrometer")),
        None => (vec![1.0; 3], None),
    };
    let axes: Vec<serde_json::Value> = ["z", "y", "x"]
        .iter()
        .map(|a| match unit {
            Some(u) => serde_json::json!({"name": a, "type": "space", "unit": u}),
            None => serde_json::json!({"name": a, "type": "space"}),
        })
        .collect();
    let mut multiscale = serde_json::json!({
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    });
    if ngff == Ngff::V04 {
        multiscale["version"] = "0.4".into();
    }
    let mut fields = serde_json::json!({ "multiscales": [multiscale] });
    if let Some(l) = image_label {
        fields["image-label"] = l;
    }
    ome(ngff, fields)
}

fn write_group(
    store: &Arc<FilesystemStore>,
    path: &str,
    attributes: serde_json::Value,
    ngff: Ngff,
) -> Result<()> {
    // What biodc writes must be OME metadata that the reference parser accepts.
    if attributes.get("multiscales").is_some() || attributes.pointer("/ome/multiscales").is_some() {
        serde_json::from_value::<AnyOmeFields>(attributes.clone()).map_err(|e| {
            anyhow!("biodc made OME-Zarr metadata that does not parse ({e}): a bug")
        })?;
    }
    let metadata = match ngff {
        Ngff::V04 => {
            let mut m = attributes;
            m["zarr_format"] = 2.into();
            m
        }
        Ngff::V05 => {
            serde_json::json!({"zarr_format": 3, "node_type": "group", "attributes": attributes})
        }
    };
    let metadata: GroupMetadata = serde_json::from_value(metadata)?;
    let group = Group::new_with_metadata(store.clone(), path, metadata)
        .map_err(|e| anyhow!("creating group {path}: {e}"))?;
    group
        .store_metadata()
        .map_err(|e| anyhow!("writing group {path}: {e}"))
}

fn create_array(
    store: &Arc<FilesystemStore>,
    path: &str,
    info: &StackInfo,
    ngff: Ngff,
) -> Result<Array<FilesystemStore>> {
    let [depth, h, w] = info.shape;
    let chunks = [1, h.min(1024), w.min(1024)];
    let shape = [depth, h, w];
    let metadata = match ngff {
        Ngff::V04 => {
            let dtype = match info.dtype {
                Dtype::U8 => "|u1",
                Dtype::U16 => "<u2",
                Dtype::F32 => "<f4",
            };
            serde_json::json!({
                "zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype,
                "compressor": {"id": "zstd", "level": 3}, "fill_value": 0, "order": "C",
                "filters": null, "dimension_separator": "/",
            })
        }
        Ngff::V05 => {
            let dtype = match info.dtype {
                Dtype::U8 => "uint8",
                Dtype::U16 => "uint16",
                Dtype::F32 => "float32",
            };
            serde_json::json!({
                "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0,
                "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                           {"name": "zstd", "configuration": {"level": 3, "checksum": false}}],
                "dimension_names": ["z", "y", "x"],
            })
        }
    };
    let metadata: ArrayMetadata = serde_json::from_value(metadata)?;
    let array = Array::new_with_metadata(store.clone(), path, metadata)
        .map_err(|e| anyhow!("creating array {path}: {e}"))?;
    array
        .store_metadata()
        .map_err(|e| anyhow!("writing array {path}: {e}"))?;
    Ok(array)
}
