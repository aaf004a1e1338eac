//! Image input/output: TIFF z-stacks in and out (8/16-bit unsigned, 32-bit float; multi-page,
//! ImageJ hyperstacks, OME-TIFF), OME-Zarr images in and out, PNG previews, masks and label images as annotators save them.

pub mod files;
pub mod labels;
pub mod ome_xml;
pub mod ome_zarr;
pub mod png;
pub mod stack;
pub mod tiff;

use serde::{Deserialize, Serialize};

/// Pixel type of a stack, kept from the source file all the way to exported patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    U8,
    U16,
    F32,
}

impl Dtype {
    /// Bytes per pixel.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::U16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// One 2D plane of pixels, row-major, `h` rows of `w` pixels.
#[derive(Debug, Clone, PartialEq)]
pub enum Plane {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

impl Plane {
    pub fn dtype(&self) -> Dtype {
        match self {
            Plane::U8(_) => Dtype::U8,
            Plane::U16(_) => Dtype::U16,
            Plane::F32(_) => Dtype::F32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Plane::U8(v) => v.len(),
            Plane::U16(v) => v.len(),
            Plane::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Little-endian bytes of the pixels (the raw form stored as a tile object).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Plane::U8(v) => v.clone(),
            Plane::U16(v) => v.iter().flat_map(|p| p.to_le_bytes()).collect(),
            Plane::F32(v) => v.iter().flat_map(|p| p.to_le_bytes()).collect(),
        }
    }

    /// Inverse of [`Plane::to_le_bytes`].
    pub fn from_le_bytes(dtype: Dtype, bytes: &[u8]) -> anyhow::Result<Plane> {
        anyhow::ensure!(
            bytes.len().is_multiple_of(dtype.size()),
            "{} bytes is not a whole number of {:?} pixels",
            bytes.len(),
            dtype
        );
        Ok(match dtype {
            Dtype::U8 => Plane::U8(bytes.to_vec()),
            Dtype::U16 => Plane::U16(
                bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            ),
            Dtype::F32 => Plane::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        })
    }

    /// Copy the `h`×`w` window at (`y`, `x`) out of a plane of width `width`.
    pub fn crop(&self, width: usize, y: usize, x: usize, h: usize, w: usize) -> Plane {
        match self {
            Plane::U8(v) => Plane::U8(crop(v, width, y, x, h, w)),
            Plane::U16(v) => Plane::U16(crop(v, width, y, x, h, w)),
            Plane::F32(v) => Plane::F32(crop(v, width, y, x, h, w)),
        }
    }

    /// Writes the `t`×`t` `tile` (of the same pixel type) at (`y`, `x`) into this plane of
    /// width `width`: the inverse of [`Plane::crop`].
    pub fn paste(&mut self, width: usize, y: usize, x: usize, t: usize, tile: &Plane) {
        fn rows<T: Copy>(dst: &mut [T], src: &[T], width: usize, y: usize, x: usize, t: usize) {
            for r in 0..t {
                dst[(y + r) * width + x..(y + r) * width + x + t]
                    .copy_from_slice(&src[r * t..(r + 1) * t]);
            }
        }
        match (self, tile) {
            (Plane::U8(d), Plane::U8(s)) => rows(d, s, width, y, x, t),
            (Plane::U16(d), Plane::U16(s)) => rows(d, s, width, y, x, t),
            (Plane::F32(d), Plane::F32(s)) => rows(d, s, width, y, x, t),
            (d, s) => panic!(
                "pasting a {:?} tile into a {:?} plane",
                s.dtype(),
                d.dtype()
            ),
        }
    }

    /// Pixels as f32 (for statistics and neural nets).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Plane::U8(v) => v.iter().map(|&p| p as f32).collect(),
            Plane::U16(v) => v.iter().map(|&p| p as f32).collect(),
            Plane::F32(v) => v.clone(),
        }
    }
}

/// The `h`×`w` window at (`y`, `x`) of row-major pixels `width` wide.
pub fn crop<T: Copy>(v: &[T], width: usize, y: usize, x: usize, h: usize, w: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(h * w);
    for row in y..y + h {
        out.extend_from_slice(&v[row * width + x..row * width + x + w]);
    }
    out
}

/// Shape and metadata of a z-stack, known before any pixel is read.
#[derive(Debug, Clone, PartialEq)]
pub struct StackInfo {
    /// (Z, Y, X).
    pub shape: [usize; 3],
    pub dtype: Dtype,
    /// Voxel size (Z, Y, X) in micrometres when the file says it (ImageJ or OME metadata).
    pub voxel_size: Option<[f64; 3]>,
}

/// A whole z-stack in memory: `shape[0]` planes of `shape[1]`×`shape[2]` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    pub info: StackInfo,
    pub planes: Vec<Plane>,
}
