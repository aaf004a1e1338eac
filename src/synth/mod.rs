//! The synthetic vessel cohort: deterministic 16-bit fluorescence-like z-stacks of branching
//! tubular networks with ground-truth masks, in four visibly different conditions, with planted
//! defects. It is the default data of tests, the demo and the benchmarks.
//!
//! A stack is made in three steps: `vessels.rs` grows branching 3D centrelines (random walks with
//! momentum, tapering, branching thinner) until the condition's share of voxels lies inside
//! tubes, and rasterises the tube footprints slice by slice as the ground truth; `render.rs`
//! exposes the tubes' intensity profiles over a background under a smooth illumination field,
//! blurs them with the PSF, adds shot and read noise and rounds to u16; then the planted defects
//! are applied. Every random draw comes from a ChaCha8 stream keyed by (seed, stack, purpose,
//! slice), so stacks and slices can be made in any order, in parallel, with the same bytes.
//! How each condition looks is in [`STYLES`].

pub mod expert;
mod render;
mod style;
mod vessels;

pub use style::{Style, STYLES};

use crate::io::{Dtype, Plane, Stack, StackInfo};
use anyhow::{Context, Result};
use rayon::prelude::*;
use render::{stream, Look, Stream};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Voxel size (Z, Y, X) in micrometres written into every stack: 2 µm slices of 0.5 µm pixels.
pub const VOXEL_SIZE: [f64; 3] = [2.0, 0.5, 0.5];

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthParams {
    /// Number of stacks, defect stacks included.
    pub stacks: usize,
    /// (Z, Y, X) of every stack.
    pub shape: [usize; 3],
    /// Seed of every random draw: the same params give the same bytes.
    pub seed: u64,
    /// Plant the defects (see [`DefectKind`]).
    pub defects: bool,
}

impl Default for SynthParams {
    /// 12 stacks of 3×256×256, seed 0, with all five defects: small enough for tests.
    fn default() -> Self {
        SynthParams {
            stacks: 12,
            shape: [3, 256, 256],
            seed: 0,
            defects: true,
        }
    }
}

/// A planted defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// Every pixel 0, empty mask.
    BlankStack,
    /// One slice over-exposed: nearly every pixel at 65535 (its mask still shows the vessels).
    SaturatedSlice,
    /// Bit-identical image and mask of another stack (`duplicate_of`), under its own name.
    DuplicateStack,
    /// The whole stack strongly out of focus: Gaussian blur of σ = 6 px over the finished image
    /// (noise included); the mask is the sharp ground truth.
    BlurredStack,
    /// One slice of another modality: nuclei-like blobs with speckle instead of vessels, at the
    /// stack's levels and noise; its mask is empty.
    OddTextureSlice,
}

/// One planted defect in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defect {
    /// What was planted.
    pub kind: DefectKind,
    /// Name of the stack it is in.
    pub stack: String,
    /// The slice, for slice defects.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub z: Option<usize>,
    /// The original, for a duplicate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duplicate_of: Option<String>,
}

/// One stack in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackEntry {
    /// Stack name, e.g. `c2_s006`: condition and index.
    pub name: String,
    /// Condition, `c0` … `c3`.
    pub condition: String,
    /// Image file, relative to the cohort folder: `images/<condition>/<name>.tif`.
    pub image: String,
    /// Ground-truth mask file, relative to the cohort folder: `masks/<name>.tif`.
    pub mask: String,
}

/// `manifest.json` of a cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthManifest {
    /// What was generated.
    pub params: SynthParams,
    /// Every stack, in index order.
    pub stacks: Vec<StackEntry>,
    /// Every planted defect, in index order of their stacks.
    pub defects: Vec<Defect>,
}

impl SynthManifest {
    /// Number of planted defects.
    pub fn defect_count(&self) -> usize {
        self.defects.len()
    }
}

/// One generated stack with its ground truth.
#[derive(Debug, Clone)]
pub struct SynthStack {
    /// Stack name, e.g. `c2_s006`.
    pub name: String,
    /// Condition, `c0` … `c3`.
    pub condition: String,
    /// U16 image.
    pub image: Stack,
    /// U8 ground truth, 1 inside vessels, 0 elsewhere.
    pub mask: Stack,
}

/// Number of conditions (`c0` … `c3`), assigned round-robin by stack index.
pub const CONDITIONS: usize = 4;

/// Which defect, if any, stack `index` carries. The last three stacks are the whole-stack
/// defects (last: blank, then duplicate of stack 0, then blurred); stack 1 has the saturated
/// slice (the middle one) and stack 2 the odd-texture slice (the last one). With fewer than six
/// stacks only what fits is planted, in the order blank (2 stacks), duplicate (3), blurred (4),
/// saturated (5), odd texture (6). Stack 0, the original of the duplicate, is always clean.
fn planned_defect(params: &SynthParams, index: usize) -> Option<DefectKind> {
    if !params.defects {
        return None;
    }
    let n = params.stacks;
    let whole = [
        DefectKind::BlankStack,
        DefectKind::DuplicateStack,
        DefectKind::BlurredStack,
    ];
    for (k, kind) in whole.iter().enumerate() {
        if n >= k + 2 && index == n - 1 - k {
            return Some(*kind);
        }
    }
    match index {
        1 if n >= 5 => Some(DefectKind::SaturatedSlice),
        2 if n >= 6 => Some(DefectKind::OddTextureSlice),
        _ => None,
    }
}

/// The condition of stack `index`: round-robin, except that a duplicate keeps its original's.
fn condition_index(params: &SynthParams, index: usize) -> usize {
    match planned_defect(params, index) {
        Some(DefectKind::DuplicateStack) => 0,
        _ => index % CONDITIONS,
    }
}

/// The name of stack `index`, e.g. `c2_s006`.
pub fn stack_name(params: &SynthParams, index: usize) -> String {
    format!("c{}_s{index:03}", condition_index(params, index))
}

/// The slice a slice defect sits in.
fn defect_slice(params: &SynthParams, kind: DefectKind) -> usize {
    let depth = params.shape[0];
    match kind {
        DefectKind::SaturatedSlice => depth / 2,
        _ => depth - 1,
    }
}

/// Generates stack `index` of the cohort (pure and deterministic: the same params and index
/// give the same pixels, whatever the thread count; slices render in parallel).
///
/// # Panics
/// If a dimension of `params.shape` is 0.
pub fn generate_stack(params: &SynthParams, index: usize) -> SynthStack {
    assert!(
        params.shape.iter().all(|&s| s > 0),
        "synthetic stacks need a non-empty shape, not {:?}",
        params.shape
    );
    let defect = planned_defect(params, index);
    // A duplicate renders its original, stack 0 (which never carries a defect).
    let source = if defect == Some(DefectKind::DuplicateStack) {
        0
    } else {
        index
    };
    let cond = condition_index(params, source);
    let [depth, h, w] = params.shape;
    let (image, mask) = if defect == Some(DefectKind::BlankStack) {
        (vec![vec![0; h * w]; depth], vec![vec![0; h * w]; depth])
    } else {
        render_stack(params, source, cond, defect)
    };
    let info = |dtype| StackInfo {
        shape: params.shape,
        dtype,
        voxel_size: Some(VOXEL_SIZE),
    };
    SynthStack {
        name: stack_name(params, index),
        condition: format!("c{cond}"),
        image: Stack {
            info: info(Dtype::U16),
            planes: image.into_iter().map(Plane::U16).collect(),
        },
        mask: Stack {
            info: info(Dtype::U8),
            planes: mask.into_iter().map(Plane::U8).collect(),
        },
    }
}

/// Renders stack `index` of condition `cond` with its slice or blur `defect`: (u16 image
/// planes, u8 mask planes).
fn render_stack(
    params: &SynthParams,
    index: usize,
    cond: usize,
    defect: Option<DefectKind>,
) -> (Vec<Vec<u16>>, Vec<Vec<u8>>) {
    let [_, h, w] = params.shape;
    let seed = params.seed;
    let style = &STYLES[cond];
    let mut network = vessels::grow(
        &mut stream(seed, index, Stream::Geometry),
        style,
        params.shape,
    );
    let look = Look::draw(&mut stream(seed, index, Stream::Look), style, h, w);
    let slice_of = |kind| (defect == Some(kind)).then(|| defect_slice(params, kind));
    let odd_z = slice_of(DefectKind::OddTextureSlice);
    let saturated_z = slice_of(DefectKind::SaturatedSlice);
    let image = (0..params.shape[0])
        .into_par_iter()
        .map(|z| {
            let profile = if odd_z == Some(z) {
                render::nuclei_profile(&mut stream(seed, index, Stream::Defect), h, w)
            } else {
                network.profile(z)
            };
            let mut plane = look.image(profile, w, &mut stream(seed, index, Stream::Noise(z)));
            if defect == Some(DefectKind::BlurredStack) {
                crate::pixel::gaussian_blur(&mut plane, w, h, render::DEFOCUS_SIGMA);
            }
            if saturated_z == Some(z) {
                render::saturate(&mut plane);
            }
            render::to_u16(&plane)
        })
        .collect();
    if let Some(z) = odd_z {
        network.mask[z].fill(0);
    }
    (image, network.mask)
}

/// The manifest of a cohort (without generating pixels).
pub fn manifest(params: &SynthParams) -> SynthManifest {
    let mut stacks = Vec::new();
    let mut defects = Vec::new();
    for i in 0..params.stacks {
        let name = stack_name(params, i);
        let condition = format!("c{}", condition_index(params, i));
        if let Some(kind) = planned_defect(params, i) {
            defects.push(Defect {
                kind,
                stack: name.clone(),
                z: matches!(
                    kind,
                    DefectKind::SaturatedSlice | DefectKind::OddTextureSlice
                )
                .then(|| defect_slice(params, kind)),
                duplicate_of: (kind == DefectKind::DuplicateStack).then(|| stack_name(params, 0)),
            });
        }
        stacks.push(StackEntry {
            image: format!("images/{condition}/{name}.tif"),
            mask: format!("masks/{name}.tif"),
            name,
            condition,
        });
    }
    SynthManifest {
        params: params.clone(),
        stacks,
        defects,
    }
}

/// Generates the whole cohort in memory, stacks in parallel, with its manifest.
pub fn generate(params: &SynthParams) -> (Vec<SynthStack>, SynthManifest) {
    let stacks = (0..params.stacks)
        .into_par_iter()
        .map(|i| generate_stack(params, i))
        .collect();
    (stacks, manifest(params))
}

/// Writes `<out>/images/<condition>/<name>.tif`, `<out>/masks/<name>.tif` and
/// `<out>/manifest.json` (pretty JSON) and returns the manifest. Stacks are generated and
/// written a few at a time (at most four in flight, their slices rendered in parallel), so
/// memory stays at a few stacks whatever the size of the cohort.
pub fn write_cohort(out: &Path, params: &SynthParams) -> Result<SynthManifest> {
    anyhow::ensure!(params.stacks > 0, "--stacks must be at least 1");
    anyhow::ensure!(
        params.shape.iter().all(|&s| s > 0) && params.shape[1] >= 16 && params.shape[2] >= 16,
        "--shape {:?} is too small (at least 1,16,16)",
        params.shape
    );
    let manifest = manifest(params);
    for c in 0..CONDITIONS {
        std::fs::create_dir_all(out.join(format!("images/c{c}")))
            .with_context(|| format!("creating {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("masks"))?;
    let pb = crate::progress::bar(params.stacks as u64, "synth", false);
    let chunk = rayon::current_num_threads().clamp(1, 4);
    let indices: Vec<usize> = (0..params.stacks).collect();
    for group in indices.chunks(chunk) {
        group.par_iter().try_for_each(|&i| -> Result<()> {
            let s = generate_stack(params, i);
            let entry = &manifest.stacks[i];
            crate::io::tiff::write_stack(&out.join(&entry.image), &s.image)?;
            crate::io::tiff::write_stack(&out.join(&entry.mask), &s.mask)?;
            pb.inc(1);
            Ok(())
        })?;
    }
    pb.finish_and_clear();
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(stacks: usize) -> SynthParams {
        SynthParams {
            stacks,
            shape: [2, 32, 48],
            seed: 5,
            defects: true,
        }
    }

    #[test]
    fn defects_planted_are_those_that_fit() {
        let order = [
            DefectKind::BlankStack,
            DefectKind::DuplicateStack,
            DefectKind::BlurredStack,
            DefectKind::SaturatedSlice,
            DefectKind::OddTextureSlice,
        ];
        for n in 1..=20 {
            let m = manifest(&params(n));
            let mut kinds: Vec<DefectKind> = m.defects.iter().map(|d| d.kind).collect();
            kinds.sort_by_key(|k| order.iter().position(|o| o == k));
            assert_eq!(kinds, order[..n.saturating_sub(1).min(5)], "{n} stacks");
            let mut stacks: Vec<&str> = m.defects.iter().map(|d| d.stack.as_str()).collect();
            stacks.dedup();
            assert_eq!(stacks.len(), m.defects.len(), "one defect per stack");
            assert!(m.defects.iter().all(|d| d.stack != m.stacks[0].name));
            for d in &m.defects {
                let slice = matches!(
                    d.kind,
                    DefectKind::SaturatedSlice | DefectKind::OddTextureSlice
                );
                assert_eq!(d.z.is_some(), slice);
                assert!(d.z.is_none_or(|z| z < 2));
                assert_eq!(
                    d.duplicate_of.as_deref(),
                    (d.kind == DefectKind::DuplicateStack).then_some("c0_s000")
                );
            }
            let clean = manifest(&SynthParams {
                defects: false,
                ..params(n)
            });
            assert!(clean.defects.is_empty());
        }
    }

    #[test]
    fn names_are_stable_and_unique() {
        let m = manifest(&params(12));
        let names: Vec<&str> = m.stacks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "c0_s000", "c1_s001", "c2_s002", "c3_s003", "c0_s004", "c1_s005", "c2_s006",
                "c3_s007", "c0_s008", "c1_s009", "c0_s010", "c3_s011"
            ]
        );
        assert_eq!(
            serde_json::to_value(&m.defects[0]).unwrap()["kind"],
            "saturated_slice"
        );
    }

    #[test]
    fn every_stack_of_a_small_cohort_is_whole() {
        for shape in [[1, 16, 16], [4, 20, 17]] {
            let p = SynthParams { shape, ..params(6) };
            let (stacks, m) = generate(&p);
            assert_eq!(m.defects.len(), 5);
            for s in &stacks {
                assert_eq!(s.image.planes.len(), shape[0]);
                assert!(s
                    .image
                    .planes
                    .iter()
                    .all(|p| p.len() == shape[1] * shape[2]));
                assert!(s.mask.planes.iter().all(|p| p.len() == shape[1] * shape[2]));
            }
            assert_eq!(stacks[4].image, stacks[0].image, "the duplicate");
        }
    }
}
