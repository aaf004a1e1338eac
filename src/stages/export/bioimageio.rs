//! `export --model M --bioimageio DIR`: a BioImage Model Zoo package (model spec 0.5) of a
//! U-Net segmenter: ONNX weights, `rdf.yaml`, a test input and the output biodc computes for
//! it (also as TIFF sample tensors), a cover image and a README with the training history
//! from the repository.
//!
//! The package describes one pass of the network on one window: per-image standardisation
//! (`zero_mean_unit_variance`) before it, sigmoid and the model's threshold (`binarize`) after.
//! Averaging over flips (`inference.flips`) and the tent-weighted tiling of `segment` are
//! biodc's and not in the package; the README says so.

use crate::io::png::{auto_contrast, write_gray8};
use crate::io::tiff::write_stack;
use crate::io::{Plane, Stack, StackInfo};
use crate::nn::data::{batch, normalize_patch};
use crate::nn::onnx::{unet_to_onnx, OPSET};
use crate::nn::segmenter::Segmenter;
use crate::output::OutDir;
use crate::repo::Repo;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What `export --bioimageio` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BioimageioPackage {
    pub model: String,
    pub dir: PathBuf,
    pub rdf: PathBuf,
    pub weights: PathBuf,
    pub opset: i64,
    /// The patch the test tensors were computed on.
    pub test_patch: String,
    /// The version the package was made from.
    pub version: String,
}

const FILES: [&str; 8] = [
    "rdf.yaml",
    "model.onnx",
    "test_input.npy",
    "test_output.npy",
    "sample_input.tif",
    "sample_output.tif",
    "cover.png",
    "README.md",
];

fn write_npy(path: &Path, side: usize, values: &[f32]) -> Result<()> {
    use npyz::WriterBuilder;
    let file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[1, 1, side as u64, side as u64])
        .writer(file)
        .begin_nd()?;
    w.extend(values.iter().copied())?;
    w.finish()?;
    Ok(())
}

/// Writes the package of model `name` of the version `rev` (default HEAD) into `dir`.
pub fn export_bioimageio(
    repo: &Repo,
    rev: Option<&str>,
    name: &str,
    dir: &Path,
    force: bool,
) -> Result<BioimageioPackage> {
    let (commit, version) = repo.version(rev)?;
    let m = version.model(name)?;
    if m.kind != "segmenter" {
        bail!(
            "model {name} is a {} model: only U-Net segmenters export to BioImage.IO (train one with `biodc train --name {name}`)",
            m.kind
        );
    }
    let seg = Segmenter::load(
        &m.architecture,
        &repo.store.get(&m.checkpoint)?,
        &Device::Cpu,
    )?;
    let net = match &seg {
        Segmenter::UNet(u) => u,
        Segmenter::TransUnet(_) => {
            bail!("model {name} is a TransUNet: only U-Net segmenters export to BioImage.IO so far")
        }
    };
    let side = net.cfg.window;
    // The test input: the first patch it was trained on (else the version's first) of its size.
    let trained: Vec<String> = m.training["patches"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let candidates = trained
        .into_iter()
        .chain(version.all_patches().map(|(_, p)| p.id.clone()));
    let mut chosen = None;
    for id in candidates {
        if let Ok((info, plane)) = version.patch_plane(&repo.store, &id) {
            if info.shape[1] == side && info.shape[2] == side {
                chosen = Some((id, plane));
                break;
            }
        }
    }
    let Some((test_patch, plane)) = chosen else {
        bail!("no patch of {side}×{side} pixels in this version to compute the test tensors on");
    };
    let raw = plane.to_f32();
    let probabilities = seg.predict(&batch(&[normalize_patch(&raw)], side, &Device::Cpu)?)?;
    let threshold = m.inference.threshold;
    let mask: Vec<f32> = probabilities[0]
        .iter()
        .map(|&p| if p > threshold { 1.0 } else { 0.0 })
        .collect();

    let out = OutDir::create(dir)?;
    if !force {
        let taken: Vec<String> = FILES
            .iter()
            .map(|f| out.shown().join(f))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !taken.is_empty() {
            bail!(
                "not overwriting (pass --force to replace them); nothing was written:\n  {}",
                taken.join("\n  ")
            );
        }
    }
    let doc = format!(
        "biodc U-Net {name} (checkpoint {}), version {}",
        m.checkpoint.to_hex(),
        commit
    );
    let weights = out.path("model.onnx")?;
    std::fs::write(&weights, unet_to_onnx(net, &doc)?)
        .with_context(|| format!("writing {}", weights.display()))?;
    write_npy(&out.path("test_input.npy")?, side, &raw)?;
    write_npy(&out.path("test_output.npy")?, side, &mask)?;
    let sample = |plane: Plane| Stack {
        info: StackInfo {
            shape: [1, side, side],
            dtype: plane.dtype(),
            voxel_size: None,
        },
        planes: vec![plane],
    };
    write_stack(&out.path("sample_input.tif")?, &sample(plane.clone()))?;
    let mask_u8: Vec<u8> = mask.iter().map(|&v| v as u8).collect();
    write_stack(&out.path("sample_output.tif")?, &sample(Plane::U8(mask_u8)))?;
    let mut cover = auto_contrast(&plane);
    cover.extend(mask.iter().map(|&v| (v * 255.0) as u8));
    write_gray8(&out.path("cover.png")?, side, 2 * side, &cover)?;
    let readme = readme(repo, commit, &version, m, &test_patch)?;
    std::fs::write(out.path("README.md")?, readme)?;
    let rdf_path = out.path("rdf.yaml")?;
    std::fs::write(&rdf_path, rdf(name, side, threshold, &version, m)?)?;
    Ok(BioimageioPackage {
        model: name.into(),
        dir: out.shown().to_path_buf(),
        rdf: rdf_path,
        weights,
        opset: OPSET,
        test_patch,
        version: commit.to_string(),
    })
}

/// `rdf.yaml`, written as JSON (which is YAML): model spec 0.5.
fn rdf(
    name: &str,
    side: usize,
    threshold: f32,
    version: &crate::version::DatasetVersion,
    m: &crate::version::ModelManifest,
) -> Result<String> {
    let mut annotators: Vec<String> = version
        .annotations
        .iter()
        .map(|a| a.annotator.clone())
        .collect();
    annotators.sort();
    annotators.dedup();
    let mut authors: Vec<serde_json::Value> = annotators
        .iter()
        .map(|a| serde_json::json!({"name": a}))
        .collect();
    if authors.is_empty() {
        authors.push(serde_json::json!({"name": "biodc"}));
    }
    let space = |id: &str| serde_json::json!({"type": "space", "id": id, "size": side});
    let rdf = serde_json::json!({
        "format_version": "0.5.4",
        "type": "model",
        "name": format!("biodc U-Net {name}"),
        "description": format!(
            "Binary segmentation U-Net trained with biodc's data-centric loop on {} annotated patches of {side}×{side} pixels. One network pass on one standardised window; sigmoid and threshold {threshold} after it.",
            m.training["patches"].as_array().map_or(0, Vec::len)
        ),
        "authors": authors,
        "cite": [{
            "text": "Ronneberger, Fischer, Brox: U-Net: Convolutional Networks for Biomedical Image Segmentation (MICCAI 2015)",
            "doi": "10.1007/978-3-319-24574-4_28",
        }],
        "license": "CC-BY-4.0",
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["segmentation", "2d", "unet", "binary-segmentation", "biodc"],
        "inputs": [{
            "id": "raw",
            "description": "one grey image; raw pixel values (standardised by the preprocessing)",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": ["raw"]},
                space("y"),
                space("x"),
            ],
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "zero_mean_unit_variance", "kwargs": {"axes": ["channel", "y", "x"], "eps": 1e-6}},
            ],
        }],
        "outputs": [{
            "id": "mask",
            "description": "foreground mask (1) after sigmoid and the model's threshold",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": ["foreground"]},
                space("y"),
                space("x"),
            ],
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32"},
            "postprocessing": [
                {"id": "sigmoid"},
                {"id": "binarize", "kwargs": {"threshold": threshold}},
            ],
        }],
        "weights": {
            "onnx": {"source": "model.onnx", "opset_version": OPSET},
        },
        "config": {
            "biodc": {
                "model": name,
                "checkpoint": m.checkpoint.to_hex(),
                "metrics": m.metrics,
            },
        },
    });
    Ok(serde_json::to_string_pretty(&rdf)? + "\n")
}

/// The package's README: what it does, what it leaves out, and the training history.
fn readme(
    repo: &Repo,
    commit: crate::history::CommitId,
    version: &crate::version::DatasetVersion,
    m: &crate::version::ModelManifest,
    test_patch: &str,
) -> Result<String> {
    use std::fmt::Write;
    let name = &m.name;
    let side = m.architecture["image_size"].as_u64().unwrap_or(0);
    let mut r = String::new();
    writeln!(r, "# biodc U-Net {name}\n")?;
    writeln!(
        r,
        "Written by `biodc export --model {name} --bioimageio` from version `{commit}` of a biodc \
         repository; `biodc reproduce` re-runs every step below from that history.\n"
    )?;
    writeln!(r, "## Use\n")?;
    writeln!(
        r,
        "Input `raw`: one grey 2D window of {side}×{side} pixels (batch, channel, y, x), raw \
         values; the preprocessing standardises it (zero mean, unit variance), as biodc does per \
         patch. Output `mask`: 1 where the network's sigmoid exceeds {} (the model's threshold).\n",
        m.inference.threshold
    )?;
    writeln!(r, "Not in this package, but in `biodc segment`:\n")?;
    writeln!(
        r,
        "- whole images are cut into windows overlapping by a quarter, blended with a tent weight;"
    )?;
    if m.inference.flips {
        writeln!(
            r,
            "- biodc averages the probabilities of the window and its three flips before the \
             threshold; this package runs one pass, so its masks can differ at the edges of \
             structures;"
        )?;
    }
    writeln!(
        r,
        "- a consumer's own tiling (deepImageJ, ilastik) standardises each tile by itself.\n"
    )?;
    writeln!(
        r,
        "The test tensors are patch `{test_patch}` and biodc's mask for it.\n"
    )?;
    writeln!(r, "## Training\n")?;
    let trained = m.training["patches"].as_array().map_or(0, Vec::len);
    writeln!(r, "- checkpoint `{}`", m.checkpoint.to_hex())?;
    if let Some(p) = &m.parent {
        writeln!(r, "- fine-tuned from `{p}`")?;
    }
    writeln!(r, "- trained on {trained} annotated patches")?;
    let mut rounds: std::collections::BTreeMap<&str, (usize, std::collections::BTreeSet<&str>)> =
        Default::default();
    for a in &version.annotations {
        let e = rounds.entry(a.round.as_str()).or_default();
        e.0 += 1;
        e.1.insert(a.annotator.as_str());
    }
    for (round, (n, who)) in &rounds {
        let who: Vec<&str> = who.iter().copied().collect();
        writeln!(
            r,
            "- annotation round `{round}`: {n} masks by {}",
            who.join(", ")
        )?;
    }
    for (set, s) in &version.sets {
        writeln!(
            r,
            "- set `{set}`: {} patches ({})",
            s.patches.len(),
            s.method
        )?;
    }
    writeln!(r, "\n## Validation\n")?;
    writeln!(
        r,
        "biodc's metrics of this model, mean per-patch Dice against the annotations \
         (`dice_train`: the patches it was trained on; `dice_set:<set>`: a set's annotated \
         patches; `dice_validation`: annotated patches it was not trained on):\n"
    )?;
    if m.metrics.is_empty() {
        writeln!(r, "(none recorded)")?;
    } else {
        writeln!(r, "| metric | value |\n|---|---|")?;
        for (k, v) in &m.metrics {
            writeln!(r, "| {k} | {v:.4} |")?;
        }
    }
    writeln!(
        r,
        "\nThe ONNX weights reproduce biodc's mask of the test input (`bioimageio test rdf.yaml`)."
    )?;
    writeln!(r, "\n## History (oldest first)\n")?;
    let log = crate::inspect::log(repo, Some(&commit.to_string()), None)?;
    for c in log.iter().rev() {
        let subject = c.message.lines().next().unwrap_or("");
        writeln!(r, "- `{}` {subject}", &c.id[..12])?;
    }
    Ok(r)
}
