//! A z-stack in any format biodc reads: a TIFF file or an OME-Zarr image (a folder).

use super::ome_zarr::{is_zarr, OmeZarrReader};
use super::tiff::TiffStackReader;
use super::{Plane, StackInfo};
use anyhow::Result;
use std::path::Path;

/// Reads a stack plane by plane, whatever its format.
pub enum StackReader {
    Tiff(TiffStackReader),
    OmeZarr(OmeZarrReader),
}

impl StackReader {
    /// Opens `path` (an OME-Zarr when it is a Zarr folder, else a TIFF) and checks its header;
    /// with `Some` voxel size the caller's is used and the file's is not read.
    pub fn open_with_voxel_size(path: &Path, voxel_size: Option<[f64; 3]>) -> Result<Self> {
        Ok(if is_zarr(path) {
            StackReader::OmeZarr(OmeZarrReader::open_with_voxel_size(path, voxel_size)?)
        } else {
            StackReader::Tiff(TiffStackReader::open_with_voxel_size(path, voxel_size)?)
        })
    }

    pub fn info(&self) -> &StackInfo {
        match self {
            StackReader::Tiff(r) => r.info(),
            StackReader::OmeZarr(r) => r.info(),
        }
    }

    /// Decodes plane `z` (0-based).
    pub fn read_plane(&mut self, z: usize) -> Result<Plane> {
        match self {
            StackReader::Tiff(r) => r.read_plane(z),
            StackReader::OmeZarr(r) => r.read_plane(z),
        }
    }
}
