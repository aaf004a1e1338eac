//! The synthetic vessel cohort: deterministic 16-bit fluorescence-like z-stacks of branching
//! tubular networks with ground-truth masks, in four visibly different conditions, with planted
//! defects. It is the default data of tests, the demo and the benchmarks.

pub mod expert;
mod render;

pub use render::gaussian_blur;
mod vessels;

use crate::io::{Dtype, Plane, Stack, StackInfo};
use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthParams {
    /// Number of stacks, defect stacks included.
    pub stacks: usize,
    /// (Z, Y, X) of every stack.
    pub shape: [usize; 3],
    pub seed: u64,
    /// Plant the defects (see [`DefectKind`]).
    pub defects: bool,
}

impl Default for SynthParams {
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
    /// One slice with nearly every pixel at 65535.
    SaturatedSlice,
    /// Bit-identical image and mask of another stack (`duplicate_of`).
    DuplicateStack,
    /// The whole stack strongly out of focus (Gaussian blur σ = 6 px).
    BlurredStack,
    /// One slice of blob/speckle texture (nuclei-like) instead of vessels; empty mask there.
    OddTextureSlice,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defect {
    pub kind: DefectKind,
    pub stack: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub z: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub duplicate_of: Option<String>,
}

/// One stack in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackEntry {
    pub name: String,
    pub condition: String,
    /// Relative to the cohort folder.
    pub image: String,
    pub mask: String,
}

/// `manifest.json` of a cohort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthManifest {
    pub params: SynthParams,
    pub stacks: Vec<StackEntry>,
    pub defects: Vec<Defect>,
}

impl SynthManifest {
    pub fn defect_count(&self) -> usize {
        self.defects.len()
    }

    /// Defects planted in stack `name`.
    pub fn defects_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Defect> + 'a {
        self.defects.iter().filter(move |d| d.stack == name)
    }
}

/// One generated stack with its ground truth.
#[derive(Debug, Clone)]
pub struct SynthStack {
    pub name: String,
    pub condition: String,
    pub image: Stack,
    /// U8, 1 inside vessels.
    pub mask: Stack,
}

/// Number of conditions (`c0` … `c3`), assigned round-robin by stack index.
pub const CONDITIONS: usize = 4;

/// Which defect, if any, a stack index carries: the last stacks are whole-stack defects, stacks
/// 1 and 2 carry the slice defects. With few stacks only the defects that fit are planted
/// (in the order blank, duplicate, blurred, saturated, odd texture; 6 stacks hold all five).
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

/// Generates stack `index` (pure and deterministic: the same params and index give the same
/// pixels, whatever the thread count).
pub fn generate_stack(params: &SynthParams, index: usize) -> SynthStack {
    let defect = planned_defect(params, index);
    let source = if defect == Some(DefectKind::DuplicateStack) {
        0
    } else {
        index
    };
    let cond = condition_index(params, source);
    let mut rng = render::stack_rng(params.seed, source);
    let network = vessels::grow(&mut rng, cond, params.shape);
    let (mut image, mut mask) = render::render(&mut rng, cond, params.shape, &network);
    match defect {
        Some(DefectKind::BlankStack) => {
            image
                .iter_mut()
                .for_each(|v| v.iter_mut().for_each(|p| *p = 0.0));
            mask.iter_mut()
                .for_each(|m| m.iter_mut().for_each(|p| *p = 0));
        }
        Some(DefectKind::BlurredStack) => render::defocus(&mut image, params.shape, 6.0),
        Some(DefectKind::SaturatedSlice) => {
            let z = defect_slice(params, DefectKind::SaturatedSlice);
            image[z]
                .iter_mut()
                .for_each(|p| *p = (*p * 200.0 + 20_000.0).min(65535.0));
        }
        Some(DefectKind::OddTextureSlice) => {
            let z = defect_slice(params, DefectKind::OddTextureSlice);
            image[z] = render::blob_texture(&mut rng, cond, params.shape);
            mask[z].iter_mut().for_each(|p| *p = 0);
        }
        Some(DefectKind::DuplicateStack) | None => {}
    }
    let [depth, h, w] = params.shape;
    let info = |dtype| StackInfo {
        shape: [depth, h, w],
        dtype,
        voxel_size: Some([2.0, 0.5, 0.5]),
    };
    SynthStack {
        name: stack_name(params, index),
        condition: format!("c{cond}"),
        image: Stack {
            info: info(Dtype::U16),
            planes: image
                .into_iter()
                .map(|p| {
                    Plane::U16(
                        p.iter()
                            .map(|&v| v.round().clamp(0.0, 65535.0) as u16)
                            .collect(),
                    )
                })
                .collect(),
        },
        mask: Stack {
            info: info(Dtype::U8),
            planes: mask.into_iter().map(Plane::U8).collect(),
        },
    }
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

/// Generates the whole cohort in memory.
pub fn generate(params: &SynthParams) -> (Vec<SynthStack>, SynthManifest) {
    let stacks = (0..params.stacks)
        .into_par_iter()
        .map(|i| generate_stack(params, i))
        .collect();
    (stacks, manifest(params))
}

/// Writes `<out>/images/<condition>/<name>.tif`, `<out>/masks/<name>.tif` and
/// `<out>/manifest.json`, a few stacks at a time (memory stays at a few stacks).
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
    let chunk = rayon::current_num_threads().max(1);
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
