//! OME-Zarr images (NGFF 0.4 on Zarr v2, NGFF 0.5 on Zarr v3): level 0 of the first multiscale
//! read plane by plane as a z-stack, its voxel size from the coordinate transformations in the
//! axes' units; and z-stacks written as OME-Zarr, with label images in a `labels/` group.
//!
//! Arrays and codecs (blosc, zstd, gzip, sharding, any chunking) are the `zarrs` crate's; the
//! OME metadata is parsed by `ome_zarr_metadata`, and what biodc writes is parsed back by it
//! before it is kept.

use super::{Dtype, Plane, StackInfo};
use anyhow::{anyhow, bail, Context, Result};
use ome_zarr_metadata::v0_4::{AxisType, AxisUnit, AxisUnitSpace};
use ome_zarr_metadata::v0_5::{CoordinateTransform, CoordinateTransformScale, MultiscaleImage};
use ome_zarr_metadata::AnyOmeFields;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zarrs::array::data_type::{Float32DataType, UInt16DataType, UInt8DataType};
use zarrs::array::{Array, ArraySubset};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::Group;

mod write;
pub use write::{write_image, LabelImage, Ngff};

/// Whether `dir` is a Zarr hierarchy (a folder with `zarr.json`, `.zgroup` or `.zattrs`).
pub fn is_zarr(dir: &Path) -> bool {
    dir.is_dir()
        && ["zarr.json", ".zgroup", ".zattrs"]
            .iter()
            .any(|f| dir.join(f).is_file())
}

/// Reads an OME-Zarr image's level 0 plane by plane.
pub struct OmeZarrReader {
    path: PathBuf,
    array: Array<FilesystemStore>,
    /// The array's ranges of one plane, with the z range at `z_axis` to fill in.
    ranges: Vec<Range<u64>>,
    z_axis: Option<usize>,
    info: StackInfo,
}

fn open_store(path: &Path) -> Result<Arc<FilesystemStore>> {
    Ok(Arc::new(FilesystemStore::new(path).map_err(|e| {
        anyhow!("{}: cannot open as a Zarr store: {e}", path.display())
    })?))
}

/// The first multiscale image of the group at `path`, as NGFF 0.5 (0.4 converted).
fn multiscale(path: &Path, store: &Arc<FilesystemStore>) -> Result<MultiscaleImage> {
    let group = Group::open(store.clone(), "/")
        .map_err(|e| anyhow!("{}: not a Zarr group: {e}", path.display()))?;
    let attributes = serde_json::Value::Object(group.attributes().clone());
    let ome: AnyOmeFields = serde_json::from_value(attributes).map_err(|e| {
        anyhow!(
            "{}: its attributes are not OME-Zarr 0.4 or 0.5 metadata ({e})",
            path.display()
        )
    })?;
    let images = match ome {
        AnyOmeFields::V0_4(a) => a
            .multiscales
            .map(|m| m.into_iter().map(MultiscaleImage::from).collect()),
        AnyOmeFields::V0_5(f) => f.multiscales,
    };
    images
        .and_then(|m| m.into_iter().next())
        .with_context(|| {
            format!(
                "{}: an OME-Zarr without a multiscale image (a plate, a well or labels only?): give the image's own folder",
                path.display()
            )
        })
}

/// Micrometres in one `unit`.
fn micrometres(unit: &AxisUnit) -> Result<f64> {
    use AxisUnitSpace::*;
    let AxisUnit::Space(u) = unit else {
        bail!("unit {unit:?} is not a length");
    };
    Ok(match u {
        Yoctometer => 1e-18,
        Zeptometer => 1e-15,
        Attometer => 1e-12,
        Femtometer => 1e-9,
        Picometer => 1e-6,
        Angstrom => 1e-4,
        Nanometer => 1e-3,
        Micrometer => 1.0,
        Millimeter => 1e3,
        Centimeter => 1e4,
        Decimeter => 1e5,
        Meter => 1e6,
        Hectometer => 1e8,
        Kilometer => 1e9,
        Megameter => 1e12,
        Gigameter => 1e15,
        Terameter => 1e18,
        Petameter => 1e21,
        Exameter => 1e24,
        Zettameter => 1e27,
        Yottameter => 1e30,
        Inch => 25_400.0,
        Foot => 304_800.0,
        Yard => 914_400.0,
        Mile => 1_609_344_000.0,
        Parsec => 3.085_677_581e22,
        other => bail!("unit {other:?} is not one biodc converts"),
    })
}

/// The product of the scale transforms in `transforms` (an axis's factor is 1 without one).
fn scale_of(transforms: &[CoordinateTransform], axes: usize) -> Result<Vec<f64>> {
    let mut scale = vec![1.0; axes];
    for t in transforms {
        match t {
            CoordinateTransform::Scale(CoordinateTransformScale::List { scale: s }) => {
                anyhow::ensure!(
                    s.len() == axes,
                    "a scale of {} values for {axes} axes",
                    s.len()
                );
                // The metadata crate holds f32: read back through its shortest decimal form, so
                // a scale written as 0.1 is 0.1, not 0.10000000149.
                let exact = |b: f32| b.to_string().parse::<f64>().unwrap_or(b as f64);
                scale.iter_mut().zip(s).for_each(|(a, &b)| *a *= exact(b));
            }
            CoordinateTransform::Scale(CoordinateTransformScale::Path { path }) => {
                bail!(
                    "the scale is stored in {} (a binary transform), which biodc does not read: give --voxel-size",
                    path.display()
                )
            }
            CoordinateTransform::Translation(_) | CoordinateTransform::Identity => {}
        }
    }
    Ok(scale)
}

impl OmeZarrReader {
    /// Opens the OME-Zarr image at `path` and checks its metadata; with `Some` voxel size the
    /// caller's is used and the file's is not read.
    pub fn open_with_voxel_size(path: &Path, voxel_size: Option<[f64; 3]>) -> Result<Self> {
        let store = open_store(path)?;
        let image = multiscale(path, &store)?;
        let here = |msg: String| anyhow!("{}: {msg}", path.display());
        let level0 = image
            .datasets
            .first()
            .ok_or_else(|| here("its multiscale image lists no datasets".into()))?;
        let array = Array::open(
            store.clone(),
            &format!("/{}", level0.path.trim_matches('/')),
        )
        .map_err(|e| here(format!("dataset {:?}: {e}", level0.path)))?;
        let shape = array.shape().to_vec();
        let axes = &image.axes;
        if axes.len() != shape.len() {
            return Err(here(format!(
                "{} axes for an array of {} dimensions",
                axes.len(),
                shape.len()
            )));
        }
        let names: Vec<String> = axes.iter().map(|a| a.name.to_ascii_lowercase()).collect();
        let z_axis = names.iter().position(|n| n == "z");
        let (Some(y), Some(x)) = (
            names.iter().position(|n| n == "y"),
            names.iter().position(|n| n == "x"),
        ) else {
            return Err(here(format!("axes {names:?} have no y and x")));
        };
        if y > x || z_axis.is_some_and(|z| z > y) {
            return Err(here(format!(
                "axes {names:?}: biodc reads z, y, x in that order (as NGFF recommends)"
            )));
        }
        let mut ranges = Vec::with_capacity(shape.len());
        for (i, (axis, &len)) in axes.iter().zip(&shape).enumerate() {
            if i == y || i == x || Some(i) == z_axis {
                ranges.push(0..len);
            } else if len == 1 {
                ranges.push(0..1);
            } else {
                let what = match axis.r#type {
                    Some(AxisType::Channel) => "channels",
                    Some(AxisType::Time) => "time points",
                    _ => "positions",
                };
                return Err(here(format!(
                    "axis {:?} has {len} {what}; biodc imports one z-stack of one channel: \
                     save each channel and time point as its own image",
                    axis.name
                )));
            }
        }
        let dt = array.data_type();
        let dtype = if dt.is::<UInt8DataType>() {
            Dtype::U8
        } else if dt.is::<UInt16DataType>() {
            Dtype::U16
        } else if dt.is::<Float32DataType>() {
            Dtype::F32
        } else {
            return Err(here(format!(
                "pixels of type {}; biodc reads uint8, uint16 and float32",
                array.data_type()
            )));
        };
        let voxel_size = match voxel_size {
            Some(v) => Some(v),
            None => {
                let mut transforms = level0.coordinate_transformations.clone();
                transforms.extend(image.coordinate_transformations.clone().unwrap_or_default());
                let scale =
                    scale_of(&transforms, axes.len()).map_err(|e| here(format!("{e:#}")))?;
                let um = |i: usize| -> Result<Option<f64>> {
                    match &axes[i].unit {
                        None => Ok(None),
                        Some(u) => Ok(Some(
                            scale[i] * micrometres(u).map_err(|e| here(format!("{e:#}")))?,
                        )),
                    }
                };
                match (z_axis.map(um).transpose()?.flatten(), um(y)?, um(x)?) {
                    (z, Some(vy), Some(vx)) => Some([z.unwrap_or(1.0), vy, vx]),
                    _ => None,
                }
            }
        };
        let depth = z_axis.map_or(1, |z| shape[z]) as usize;
        Ok(OmeZarrReader {
            path: path.to_path_buf(),
            array,
            ranges,
            z_axis,
            info: StackInfo {
                shape: [depth, shape[y] as usize, shape[x] as usize],
                dtype,
                voxel_size,
            },
        })
    }

    pub fn info(&self) -> &StackInfo {
        &self.info
    }

    /// Decodes plane `z` (0-based).
    pub fn read_plane(&mut self, z: usize) -> Result<Plane> {
        anyhow::ensure!(
            z < self.info.shape[0],
            "{}: no plane {z}",
            self.path.display()
        );
        let mut ranges = self.ranges.clone();
        if let Some(a) = self.z_axis {
            ranges[a] = z as u64..z as u64 + 1;
        }
        let subset = ArraySubset::new_with_ranges(&ranges);
        let here = |e: zarrs::array::ArrayError| anyhow!("{}: plane {z}: {e}", self.path.display());
        Ok(match self.info.dtype {
            Dtype::U8 => Plane::U8(self.array.retrieve_array_subset(&subset).map_err(here)?),
            Dtype::U16 => Plane::U16(self.array.retrieve_array_subset(&subset).map_err(here)?),
            Dtype::F32 => Plane::F32(self.array.retrieve_array_subset(&subset).map_err(here)?),
        })
    }
}
