//! `segment`: whole stacks through a segmenter, slice by slice. Each slice is rebuilt from its
//! stored tiles, cut into windows of the patch size that overlap by a quarter, each window
//! normalised like a training patch; the windows' probabilities are blended with a tent weight
//! (highest in the window's centre, where the network sees the most context) and thresholded
//! as the model's record says (averaged over flips first where it says so). Masks are written as 8-bit TIFF stacks (0/255) of the input's shape.

use crate::io::{tiff::write_stack, Plane, Stack, StackInfo};
use crate::nn::data::normalize_patch;
use crate::repo::Repo;
use crate::segmentation::SegmentationModel;
use crate::store::Store;
use crate::version::{DatasetVersion, StackManifest};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every slice of `stack` as f32 pixels, rebuilt from its tiles (which cover it).
pub fn stack_slices(
    store: &Store,
    version: &DatasetVersion,
    stack: &StackManifest,
) -> Result<Vec<Vec<f32>>> {
    Ok(version
        .stack_planes(store, &stack.name)?
        .iter()
        .map(Plane::to_f32)
        .collect())
}

/// Window origins along an axis of `len`: step `size − size/4`, the last flush with the edge.
fn window_starts(len: usize, size: usize) -> Vec<usize> {
    let step = (size - size / 4).max(1);
    let mut starts: Vec<usize> = (0..=len - size).step_by(step).collect();
    if starts.last().map(|s| s + size) != Some(len) {
        starts.push(len - size);
    }
    starts
}

/// Foreground probability of every pixel of an `h`×`w` slice (h, w ≥ the network's size).
pub fn segment_slice(
    net: &SegmentationModel,
    slice: &[f32],
    h: usize,
    w: usize,
    batch: usize,
) -> Result<Vec<f32>> {
    let s = net.window();
    if h < s || w < s {
        bail!("a {h}×{w} slice is smaller than the model's {s}×{s} input");
    }
    let tent: Vec<f32> = (0..s).map(|i| (i.min(s - 1 - i) + 1) as f32).collect();
    let windows: Vec<(usize, usize)> = window_starts(h, s)
        .into_iter()
        .flat_map(|y| window_starts(w, s).into_iter().map(move |x| (y, x)))
        .collect();
    let mut acc = vec![0f32; h * w];
    let mut weight = vec![0f32; h * w];
    for chunk in windows.chunks(batch.max(1)) {
        let crops: Vec<Vec<f32>> = chunk
            .iter()
            .map(|&(y, x)| {
                let mut c = Vec::with_capacity(s * s);
                for r in y..y + s {
                    c.extend_from_slice(&slice[r * w + x..r * w + x + s]);
                }
                normalize_patch(&c)
            })
            .collect();
        let probs = net.probabilities(&crops, batch)?;
        for (&(y, x), p) in chunk.iter().zip(probs) {
            for r in 0..s {
                for c in 0..s {
                    let wt = tent[r] * tent[c];
                    acc[(y + r) * w + x + c] += wt * p[r * s + c];
                    weight[(y + r) * w + x + c] += wt;
                }
            }
        }
    }
    Ok(acc.iter().zip(&weight).map(|(a, b)| a / b).collect())
}

/// 0/1 masks of every slice of `slices`.
pub fn segment_slices(
    net: &SegmentationModel,
    slices: &[Vec<f32>],
    h: usize,
    w: usize,
) -> Result<Vec<Vec<u8>>> {
    slices
        .iter()
        .map(|s| Ok(net.mask(&segment_slice(net, s, h, w, 8)?)))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentedStack {
    pub stack: String,
    pub file: PathBuf,
    pub shape: [usize; 3],
    pub foreground_fraction: f64,
    pub seconds: f64,
}

/// Segments `stacks` (names; empty = all) of `version` with model `model`, writing
/// `out/<stack>.tif`.
pub fn segment(
    repo: &Repo,
    version: &DatasetVersion,
    model: &str,
    stacks: &[String],
    out: &Path,
) -> Result<Vec<SegmentedStack>> {
    let m = version.model(model)?;
    let net = SegmentationModel::load(&repo.store, m)?;
    let names: Vec<String> = if stacks.is_empty() {
        version.stacks.keys().cloned().collect()
    } else {
        stacks.to_vec()
    };
    for n in &names {
        if !version.stacks.contains_key(n) {
            bail!(
                "no stack named {n:?} in this version (see `biodc status --json` or `biodc show`)"
            );
        }
    }
    let out = crate::output::OutDir::create(out)?;
    let pb = crate::progress::bar(names.len() as u64, "segment", false);
    let mut done = Vec::new();
    for name in &names {
        let started = Instant::now();
        let stack = &version.stacks[name];
        let [_, h, w] = stack.shape;
        let slices = stack_slices(&repo.store, version, stack)?;
        let masks = segment_slices(&net, &slices, h, w)?;
        let on: usize = masks
            .iter()
            .map(|m| m.iter().map(|&v| v as usize).sum::<usize>())
            .sum();
        let file = out.path(&format!("{name}.tif"))?;
        write_stack(
            &file,
            &Stack {
                info: StackInfo {
                    shape: stack.shape,
                    dtype: crate::io::Dtype::U8,
                    voxel_size: stack.voxel_size,
                },
                planes: masks
                    .into_iter()
                    .map(|m| Plane::U8(m.into_iter().map(|v| v * 255).collect()))
                    .collect(),
            },
        )
        .with_context(|| format!("writing {}", file.display()))?;
        done.push(SegmentedStack {
            stack: name.clone(),
            file,
            shape: stack.shape,
            foreground_fraction: on as f64 / (stack.shape.iter().product::<usize>()).max(1) as f64,
            seconds: started.elapsed().as_secs_f64(),
        });
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(done)
}
