//! Verbs that train and use networks or choose patches: pretrain, embed, coreset, set, annotate, qc.

use super::{print_json, short};
use crate::name::Name;
use crate::repo::Repo;
use crate::stages::{self, annotate, coreset, embed, pretrain, qc};
use anyhow::{Context, Result};
use clap::Args;
use std::path::Path;
use std::path::PathBuf;

/// Pretrain a masked autoencoder (ViT) self-supervised on every patch of HEAD.
///
/// Patches are intensity-normalised one by one (16-bit aware); 75 % of each patch's 16×16
/// tokens are masked and the network learns to reconstruct them. A checkpoint is kept every
/// --checkpoint-every steps, so a killed run continues with --resume (same flags). Deterministic
/// for a fixed seed, data and thread count.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc pretrain --preset tiny --epochs 5\n  biodc pretrain --preset tiny --epochs 5 --resume   # after an interruption"
)]
pub struct PretrainArgs {
    /// Architecture: tiny (minutes on 2 CPU cores), small, base (ViT-B/16).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long, default_value_t = 1.5e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.75)]
    pub mask_ratio: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Model name in models/<name>.json.
    #[arg(long, default_value = "mae", value_parser = crate::name::model)]
    pub name: Name,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: u64,
    /// Stop after N steps (quick runs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Continue the interrupted run of this name from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn pretrain(dir: &Path, a: PretrainArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = pretrain::PretrainParams {
        preset: a.preset,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        mask_ratio: a.mask_ratio,
        seed: a.seed,
        name: a.name.into(),
        checkpoint_every: a.checkpoint_every,
        max_steps: a.max_steps,
        scratch: false,
    };
    let (commit, r) = stages::run(&repo, |repo, head, v| {
        pretrain::pretrain(repo, head, v, &params, a.resume)
    })?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: model {} — {} steps on {} patches ({:.1} patches/s){}; held-out masked loss {:.3} → {:.3}",
        short(&commit.expect("pretrain commits")),
        params.name,
        r.steps,
        r.patches,
        r.patches_per_second,
        r.resumed_from.map_or(String::new(), |s| format!(", resumed at step {s}")),
        r.held_out_loss_start,
        r.held_out_loss_end
    );
    Ok(0)
}

/// Embed every patch with a pretrained encoder (256-dim, L2-normalised).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc embed --model mae\n  seq 0 3 | xargs -P 4 -I{} biodc embed --model mae --shard {}/4 && biodc gather"
)]
pub struct EmbedArgs {
    #[arg(long, default_value = "mae")]
    pub model: String,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Compute only shard I of N (0 to N−1; `auto` from a Slurm job array) and commit
    /// nothing: `biodc gather` commits once all N shards are done.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn embed(dir: &Path, a: EmbedArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = embed::EmbedParams {
        model: a.model,
        batch: a.batch,
        fresh: false,
    };
    if let Some(spec) = &a.shard {
        let spec = stages::shard::ShardSpec::parse(spec)?;
        let r = stages::shard::run_shard::<embed::Embed>(&repo, &params, spec)?;
        return super::shards::print_shard(&r, a.json);
    }
    let (commit, r) = stages::run(&repo, |repo, head, v| embed::embed(repo, head, v, &params))?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: embedded {} patches with {} ({} computed at {:.1} patches/s, {} from cache)",
        short(&commit.expect("embed commits")),
        r.patches,
        params.model,
        r.computed,
        r.patches_per_second,
        r.patches - r.computed
    );
    Ok(0)
}

/// Pick the K most representative patches (max K-cover on the embeddings) for annotation.
///
/// Maximises Σₓ max_{s∈S} cos(s, x) over the embedded patches — hubs close to most of the data
/// and far from each other — greedily with lazy evaluation on each patch's exact top-k
/// neighbours. `random` and `kcenter` (farthest point, the seed paper's code) are baselines.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc coreset -k 25\n  biodc coreset -k 25 --per-condition 2 --exclude blank duplicate\n  biodc coreset -k 25 --method kcenter --name coreset-kcenter"
)]
pub struct CoresetArgs {
    #[arg(short = 'k', default_value_t = 25)]
    pub k: usize,
    /// Embeddings of this model.
    #[arg(long, default_value = "mae")]
    pub model: String,
    /// Neighbours per patch in the sparse similarity graph.
    #[arg(long, default_value_t = 50)]
    pub neighbours: usize,
    /// Set name (sets/<name>.json).
    #[arg(long, default_value = "coreset", value_parser = crate::name::set)]
    pub name: Name,
    #[arg(long, value_enum, default_value_t = coreset::Method::Kcover)]
    pub method: coreset::Method,
    /// Seed for `random` and the first `kcenter` pick.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Never pick patches with these QC flags (e.g. blank duplicate).
    #[arg(long, num_args = 1..)]
    pub exclude: Vec<String>,
    /// At least this many picks from every condition (K-cover under a quota), for when `qc`
    /// reports conditions the core set under-covers.
    #[arg(long, default_value_t = 0)]
    pub per_condition: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn coreset(dir: &Path, a: CoresetArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = coreset::CoresetParams {
        k: a.k,
        model: a.model,
        neighbours: a.neighbours,
        name: a.name.into(),
        method: a.method,
        seed: a.seed,
        exclude: a.exclude,
        per_condition: a.per_condition,
    };
    let (commit, r) = stages::run(&repo, |repo, head, v| {
        coreset::coreset(repo, head, v, &params)
    })?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: set {} — {} patches by {:?}, objective {:.1} ({:.1} s)",
        short(&commit.expect("coreset commits")),
        params.name,
        r.picks.len(),
        params.method,
        r.objective,
        r.seconds
    );
    for (cond, c) in &r.coverage {
        println!(
            "  {cond}: {} patches, {} picks, mean similarity to nearest pick {:.3}",
            c.patches, c.picks, c.mean_similarity
        );
    }
    Ok(0)
}

/// Import a folder of expert masks as one annotation round.
///
/// Masks are TIFF or PNG files named by patch id (as `export` names patches), one 2D image of
/// the patch's size with values {0,1} or {0,255}; or named by a stack (the part of a patch id
/// before `-z`), a Z×Y×X mask of the whole stack, cut into the masks of its patches. With
/// `--labels`, instance label images (napari, Fiji; any integer type): any non-zero label is
/// foreground. Files Cellpose named `<name>_masks.tif|png` / `<name>_cp_masks.tif|png` are read
/// as labels. A CVAT "Segmentation mask" export (labelmap.txt, SegmentationClass/) is read with
/// `--class NAME`: that class's colour is foreground. In a folder `export` wrote, the contact
/// sheet, triptychs and unedited images are skipped (masks saved over an exported image, and
/// the predictions/ of `export --with-prediction`, are read). Every file is checked first; any
/// problem (wrong shape, non-binary values, unknown name, the same patch twice, unreadable) is
/// reported for every file at once and nothing is imported. A later round may replace a
/// patch's mask; the history keeps both.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  biodc export --set coreset --to to_annotate/   # then draw masks in Fiji/napari
  biodc annotate masks/ --round core --annotator alice
      # masks/<patch id>.tif, values 0/1 or 0/255
  biodc annotate labels/ --round core --labels
      # napari/Fiji label images: labels/<patch id>.tif, any non-zero label is foreground
  biodc annotate cellpose/ --round core
      # Cellpose output: cellpose/<patch id>_cp_masks.png or <patch id>_masks.tif
  biodc annotate whole/ --round core
      # whole/<stack>.tif: a Z×Y×X mask of a whole stack, cut into its patches (with
      # --labels, or named <stack>_cp_masks.tif, a label image of the stack)
  biodc annotate cvat_export/ --round core --class vessel
      # CVAT \"Segmentation mask\" export: labelmap.txt and SegmentationClass/<patch id>.png")]
pub struct AnnotateArgs {
    /// Folder of masks.
    pub dir: PathBuf,
    /// Round name, e.g. core, critical-1.
    #[arg(long, value_parser = crate::name::round)]
    pub round: Name,
    #[arg(long, default_value = "expert")]
    pub annotator: String,
    /// core, critical or manual (default: from the round name).
    #[arg(long, value_parser = ["core", "critical", "manual"])]
    pub origin: Option<String>,
    /// Masks are instance label images: any non-zero label is foreground.
    #[arg(long, conflicts_with = "class")]
    pub labels: bool,
    /// The class of a CVAT "Segmentation mask" export (DIR/labelmap.txt) whose colour is
    /// foreground.
    #[arg(long, value_name = "NAME")]
    pub class: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn annotate(dir: &Path, a: AnnotateArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let origin = a.origin.as_deref().map(|o| match o {
        "core" => crate::version::Origin::Core,
        "critical" => crate::version::Origin::Critical,
        _ => crate::version::Origin::Manual,
    });
    let params = annotate::AnnotateParams {
        dir: a.dir,
        round: a.round.into(),
        annotator: a.annotator,
        origin,
        labels: a.labels,
        class: a.class,
    };
    let (commit, r) = stages::run(&repo, |repo, head, v| {
        annotate::annotate(repo, head, v, &params)
    })?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: {} masks in round {} ({} replaced earlier masks; {:.1} % foreground)",
        short(&commit.expect("annotate commits")),
        r.masks,
        params.round,
        r.replaced,
        100.0 * r.foreground_fraction
    );
    if r.files.keys().any(|k| k != "binary") {
        let files: Vec<String> = r.files.iter().map(|(k, n)| format!("{k} ({n})")).collect();
        println!(
            "from {} files: {}",
            r.files.values().sum::<usize>(),
            files.join("; ")
        );
    }
    if r.skipped > 0 {
        println!(
            "({} files `export` wrote there are not masks and were skipped: unedited images, \
             contact sheets, triptychs)",
            r.skipped
        );
    }
    Ok(0)
}

/// Flag quality problems (never deletes anything).
///
/// Duplicates, near duplicates, blank, saturated, blurred, low-SNR and outlier patches; counts
/// per condition and core-set cluster, imbalance.
///
/// Blurred / low SNR / outlier are robust z-scores (median and MAD over the cohort) beyond 4.
/// Near duplicates and outliers need `embed` first; clusters and coverage need a core set.
/// Later verbs skip flagged patches with `--exclude FLAG…`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc qc\n  biodc coreset -k 25 --exclude blank duplicate saturated"
)]
pub struct QcArgs {
    /// Embeddings to use.
    #[arg(long, default_value = "mae")]
    pub model: String,
    /// Core set for clusters and coverage.
    #[arg(long, default_value = "coreset")]
    pub coreset: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn qc(dir: &Path, a: QcArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = qc::QcParams {
        model: a.model,
        coreset: a.coreset,
    };
    let (commit, r) = stages::run(&repo, |repo, head, v| qc::qc(repo, head, v, &params))?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: {} of {} patches flagged",
        short(&commit.expect("qc commits")),
        r.flagged,
        r.patches
    );
    for (f, n) in &r.by_flag {
        println!("  {f}: {n}");
    }
    let conds: Vec<String> = r
        .per_condition
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!(
        "per condition: {} (imbalance {:.2})",
        conds.join(", "),
        r.condition_imbalance
    );
    if let Some(ci) = r.cluster_imbalance {
        println!(
            "core-set clusters: {} (imbalance {ci:.2})",
            r.per_cluster.len()
        );
    }
    if !r.under_covered.is_empty() {
        println!("the core set under-covers: {}", r.under_covered.join(", "));
    }
    Ok(0)
}

/// Name a set of patches by hand (a validation set, a batch to annotate, one experiment's
/// patches): `export`, `expert`, `train --sets` and `diff` then use it like a core set.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  biodc set validation c0_s001-z0-y0000-x0000 c1_s004-z2-y0224-x0448
  biodc set batch-2 --from picked.txt   # one patch id per line")]
pub struct SetArgs {
    /// Set name.
    #[arg(value_parser = crate::name::set)]
    pub name: Name,
    /// Patch ids.
    pub patches: Vec<String>,
    /// A file of patch ids, one per line (`#` starts a comment).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Replace a set of the same name.
    #[arg(long)]
    pub replace: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn set(dir: &Path, a: SetArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let mut patches = a.patches;
    if let Some(file) = &a.from {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read the patch list", file.display()))?;
        patches.extend(
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim())
                .filter(|l| !l.is_empty())
                .map(String::from),
        );
    }
    let params = stages::define_set::SetParams {
        name: a.name.into(),
        patches,
        replace: a.replace,
    };
    let (commit, r) = <stages::define_set::DefineSet as stages::Stage>::commit(&repo, &params)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: set {} of {} patches{}",
        short(&commit.expect("set commits")),
        r.name,
        r.patches,
        if r.replaced.is_some() {
            " (replaced)"
        } else {
            ""
        }
    );
    Ok(0)
}
