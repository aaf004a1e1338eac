//! Verbs that move pixels in and out: import, export, synth.

use super::{parse_triple, print_json, short};
use crate::repo::Repo;
use crate::stages::{self, import::ImportParams};
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

/// Import TIFF z-stacks (files or folders) as the next version.
///
/// Each z-slice is cut into PATCH×PATCH tiles (edge tiles overlap inward; nothing is padded),
/// stored once by content. Files whose bytes did not change are skipped; a changed file
/// replaces its stack — unless annotations, sets, embeddings, QC flags or RCA scores name the
/// stack's patches: then the import is refused unless --replace is given. Symbolic links are
/// followed (git-annex, DataLad).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc import raw/ --condition-from-dir\n  biodc import ctrl_01.tif ctrl_02.tif --condition control --voxel-size 2,0.5,0.5\n  seq 0 7 | xargs -P 8 -I{} biodc import raw/ --shard {}/8 && biodc gather"
)]
pub struct ImportArgs {
    /// TIFF files or folders (walked for .tif/.tiff).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Condition tag for every imported stack (e.g. control, treated).
    #[arg(long)]
    pub condition: Option<String>,
    /// Tag each stack with the name of the folder it is in.
    #[arg(long)]
    pub condition_from_dir: bool,
    /// Voxel size Z,Y,X in µm (overrides the files' metadata).
    #[arg(long, value_parser = parse_triple::<f64>)]
    pub voxel_size: Option<[f64; 3]>,
    /// Patch edge in pixels (default: the repository's, 224).
    #[arg(long)]
    pub patch: Option<usize>,
    /// Replace stacks whose pixels changed even when annotations, sets, embeddings, QC flags
    /// or RCA scores name their patches; those made on pixels that changed or vanished are
    /// dropped from the new version (the history keeps them) and listed.
    #[arg(long)]
    pub replace: bool,
    /// Tile only shard I of N of the files (0 to N−1, in the order they are read; `auto` from
    /// a Slurm job array) and commit nothing: `biodc gather` commits once all N are done.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn import(dir: &Path, a: ImportArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = ImportParams {
        paths: a.paths,
        condition: a.condition,
        condition_from_dir: a.condition_from_dir,
        voxel_size: a.voxel_size,
        patch: a.patch,
        replace: a.replace,
    };
    if let Some(spec) = &a.shard {
        let spec = stages::shard::ShardSpec::parse(spec)?;
        let r = stages::shard::run_shard::<stages::import::Import>(&repo, &params, spec)?;
        return super::shards::print_shard(&r, a.json);
    }
    let (commit, report) = stages::run(&repo, |repo, head, v| {
        stages::import::import(repo, head, v, &params)
    })?;
    if a.json {
        let mut value = serde_json::to_value(&report)?;
        value["commit"] = serde_json::json!(commit.map(|c| c.to_string()));
        return print_json(&value);
    }
    let mb = |b: u64| b as f64 / 1e6;
    match commit {
        None => println!(
            "nothing new: {} stacks unchanged, no object written, no version committed",
            report.unchanged_stacks
        ),
        Some(c) => println!(
            "version {}: {} new, {} changed, {} unchanged stacks; {} patches; {} new objects \
             ({:.1} MB of pixels read, {:.1} MB stored) in {:.1} s",
            short(&c),
            report.new_stacks.len(),
            report.changed_stacks.len(),
            report.unchanged_stacks,
            report.patches,
            report.new_objects,
            mb(report.raw_bytes),
            mb(report.stored_bytes),
            report.seconds
        ),
    }
    for r in &report.replaced {
        println!(
            "stack {} replaced ({} → {}): {} patches vanished, {} hold other pixels",
            r.stack,
            r.previous_file,
            r.file,
            r.vanished.len(),
            r.changed
        );
        let d = &r.dropped;
        if !d.annotations.is_empty() {
            println!(
                "  dropped {} annotations: {}",
                d.annotations.len(),
                d.annotations.join(", ")
            );
        }
        for (set, members) in &d.set_members {
            println!(
                "  set {set} lost {} vanished patches: {}",
                members.len(),
                members.join(", ")
            );
        }
        if !d.embeddings.is_empty() {
            println!(
                "  dropped the embeddings of {} (run `biodc embed` again)",
                d.embeddings.join(", ")
            );
        }
        if d.qc_lines + d.rca_lines > 0 {
            println!(
                "  dropped {} QC flags and {} RCA scores",
                d.qc_lines, d.rca_lines
            );
        }
    }
    Ok(0)
}

/// Write the patches of a set as TIFFs named by patch id, whole stacks as OME-Zarr, or a model
/// as safetensors.
///
/// Never overwrites a file unless --force is given: if any file to write exists, nothing is
/// written. What was written is listed in DIR/.biodc-export.json, so `biodc annotate DIR` later
/// reads only the masks (not the exported images, contact sheet or triptychs).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc export --set coreset --to to_annotate/\n  biodc export --set all --to all_patches/ --rev HEAD~2\n  biodc export --model mae --to encoder/   # mae.safetensors + config.json\n  biodc export --model M1 --bioimageio --to M1.bioimageio/   # then: bioimageio test M1.bioimageio/rdf.yaml\n  biodc export --ome-zarr --to zarr/ --with-prediction M1   # <stack>.ome.zarr, labels/annotations and labels/M1"
)]
pub struct ExportArgs {
    /// Export this model (safetensors + config.json) instead of patches.
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: write a BioImage Model Zoo package (rdf.yaml, ONNX weights, test tensors,
    /// README with the training history) into --to instead.
    #[arg(long, requires = "model")]
    pub bioimageio: bool,
    /// `all`, or the name of a set (e.g. coreset, candidates-1).
    #[arg(long, default_value = "all")]
    pub set: String,
    /// Output folder (created if needed).
    #[arg(long)]
    pub to: PathBuf,
    /// Version to export from (default HEAD).
    #[arg(long)]
    pub rev: Option<String>,
    /// Also write this segmenter's predicted masks (predictions/) and image | prediction |
    /// uncertainty triptychs (triptychs/) for correction; with --ome-zarr, as a label image.
    #[arg(long, value_name = "MODEL")]
    pub with_prediction: Option<String>,
    /// Write whole stacks as OME-Zarr images (DIR/<stack>.ome.zarr), their annotations (and
    /// --with-prediction's masks) as label images in labels/, instead of a set's patches.
    #[arg(long, conflicts_with_all = ["model", "set"])]
    pub ome_zarr: bool,
    /// With --ome-zarr: the stacks to write, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', requires = "ome_zarr")]
    pub stacks: Vec<String>,
    /// With --ome-zarr: the OME-Zarr version, 0.5 (Zarr v3) or 0.4 (Zarr v2, for older readers).
    #[arg(long, default_value = "0.5", requires = "ome_zarr")]
    pub ngff: crate::io::ome_zarr::Ngff,
    /// Overwrite files that already exist in the output folder.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn export(dir: &Path, a: ExportArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    if let (true, Some(model)) = (a.bioimageio, &a.model) {
        let p = crate::stages::export::bioimageio::export_bioimageio(
            &repo,
            a.rev.as_deref(),
            model,
            &a.to,
            a.force,
        )?;
        if a.json {
            return print_json(&p);
        }
        println!(
            "wrote the BioImage.IO package of {model} to {} (ONNX opset {}; test tensors from patch {}); check it with: bioimageio test {}",
            p.dir.display(),
            p.opset,
            p.test_patch,
            p.rdf.display()
        );
        return Ok(0);
    }
    let (_, version) = repo.version(a.rev.as_deref())?;
    if let Some(model) = &a.model {
        let (w, c) = crate::stages::export::export_model(&repo, &version, model, &a.to, a.force)?;
        if a.json {
            return print_json(&serde_json::json!({ "model": model, "weights": w, "config": c }));
        }
        println!(
            "exported model {model} to {} and {}",
            w.display(),
            c.display()
        );
        return Ok(0);
    }
    if a.ome_zarr {
        let done = crate::stages::export::ome_zarr::export_ome_zarr(
            &repo,
            &version,
            &a.stacks,
            a.with_prediction.as_deref(),
            &a.to,
            a.ngff,
            a.force,
        )?;
        if a.json {
            return print_json(&done);
        }
        for d in &done {
            println!(
                "{}: {}{}",
                d.stack,
                d.path.display(),
                if d.labels.is_empty() {
                    String::new()
                } else {
                    format!(" (labels: {})", d.labels.join(", "))
                }
            );
        }
        println!(
            "exported {} stacks as OME-Zarr to {}",
            done.len(),
            a.to.display()
        );
        return Ok(0);
    }
    if let Some(model) = &a.with_prediction {
        let n = crate::stages::export::export_with_prediction(
            &repo, &version, &a.set, model, &a.to, a.force,
        )?;
        if a.json {
            return print_json(&serde_json::json!({
                "set": a.set, "patches": n, "to": a.to, "with_prediction": model,
            }));
        }
        println!(
            "exported {n} patches of {} to {} with {model}'s predictions in predictions/ and triptychs/;\n\
             correct the masks in predictions/, then: biodc annotate {} --round critical-1",
            a.set,
            a.to.display(),
            a.to.display()
        );
        return Ok(0);
    }
    let n = crate::stages::export::export_set_with(&repo, &version, &a.set, &a.to, a.force)?;
    if a.json {
        return print_json(&serde_json::json!({ "set": a.set, "patches": n, "to": a.to }));
    }
    println!("exported {n} patches of {} to {}", a.set, a.to.display());
    Ok(0)
}

/// Write a synthetic vessel cohort (16-bit z-stacks + ground-truth masks + defects manifest).
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  biodc synth --out cohort --stacks 12 --shape 3,256,256 --seed 7\n  biodc import cohort/images --condition-from-dir"
)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of stacks (defects included).
    #[arg(long)]
    pub stacks: Option<usize>,
    /// Shape Z,Y,X of each stack.
    #[arg(long, value_parser = parse_triple::<usize>)]
    pub shape: Option<[usize; 3]>,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Plant no defects.
    #[arg(long)]
    pub no_defects: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn synth(a: SynthArgs) -> Result<i32> {
    let mut params = crate::synth::SynthParams::default();
    if let Some(n) = a.stacks {
        params.stacks = n;
    }
    if let Some(s) = a.shape {
        params.shape = s;
    }
    if let Some(s) = a.seed {
        params.seed = s;
    }
    params.defects = !a.no_defects;
    let manifest = crate::synth::write_cohort(&a.out, &params)?;
    if a.json {
        return print_json(&serde_json::json!({
            "out": a.out,
            "stacks": params.stacks,
            "shape": params.shape,
            "seed": params.seed,
            "defects": manifest.defect_count(),
        }));
    }
    println!(
        "wrote {} synthetic stacks of {:?} to {} ({} planted defects listed in manifest.json)",
        params.stacks,
        params.shape,
        a.out.display(),
        manifest.defect_count()
    );
    Ok(0)
}

/// Run the loop on a synthetic cohort and print what each stage did.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc demo\n  biodc demo --dir /tmp/demo --scale small")]
pub struct DemoArgs {
    /// Folder for the cohort and the project (default: ./biodc-demo, or -2, -3… if taken).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = crate::demo::Scale::Tiny)]
    pub scale: crate::demo::Scale,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the outcome (Dice of M0 and M1, RCA correlation, report path) as JSON; the
    /// per-stage lines go to stderr.
    #[arg(long)]
    pub json: bool,
}

pub fn demo(a: DemoArgs) -> Result<i32> {
    let dir = a.dir.unwrap_or_else(|| {
        (1..)
            .map(|i| {
                PathBuf::from(if i == 1 {
                    "biodc-demo".into()
                } else {
                    format!("biodc-demo-{i}")
                })
            })
            .find(|p| !p.exists())
            .expect("some name is free")
    });
    let outcome = crate::demo::run(&dir, a.scale, a.seed, a.json)?;
    if a.json {
        return print_json(&outcome);
    }
    Ok(0)
}

/// Play the expert: write ground-truth masks of a set's patches.
///
/// One TIFF per patch, named by patch id, 0/255, as a biologist would return them. For demos,
/// tests and benchmarks; real data needs a real expert.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc export --set coreset --to todo/\n  biodc expert --cohort cohort/ --set coreset --to masks/\n  biodc annotate masks/ --round core\n  biodc expert --truth manual_masks/ --set coreset --to masks/   # whole-image masks named like the stacks"
)]
pub struct ExpertArgs {
    /// The synthetic cohort (written by `biodc synth`) the stacks were imported from.
    #[arg(long, required_unless_present = "truth", conflicts_with = "truth")]
    pub cohort: Option<PathBuf>,
    /// A folder of whole-stack truth masks named like the stacks (`<stack>.tif`).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Set whose patches to annotate (`all` = every patch).
    #[arg(long)]
    pub set: String,
    /// Only the first N patches of the set (in set order: e.g. the N most uncertain).
    #[arg(long)]
    pub first: Option<usize>,
    /// Output folder.
    #[arg(long)]
    pub to: PathBuf,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn expert(dir: &Path, a: ExpertArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let (_, version) = repo.version(None)?;
    let mut ids = version.set_members(&a.set)?;
    if let Some(n) = a.first {
        ids.truncate(n);
    }
    let n = match (&a.cohort, &a.truth) {
        (Some(cohort), _) => crate::synth::expert::write_masks(cohort, &version, &ids, &a.to)?,
        (None, Some(truth)) => {
            crate::synth::expert::write_masks_from_folder(truth, &version, &ids, &a.to)?
        }
        (None, None) => unreachable!("clap requires --cohort or --truth"),
    };
    if a.json {
        return print_json(&serde_json::json!({ "masks": n, "to": a.to }));
    }
    println!("wrote {n} ground-truth masks to {}", a.to.display());
    Ok(0)
}
