//! Verbs around segmenters: train, hunt, segment, monitor.

use super::{print_json, short};
use crate::name::Name;
use crate::repo::Repo;
use crate::stages::{self, hunt, monitor, segment, train};
use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};

/// Train a segmentation model on annotated patches.
///
/// `--kind unet` (default): a plain U-Net from random weights, trained for --steps optimiser
/// steps on random --crop² crops of the annotated patches. `--kind transunet`: the encoder of
/// a pretrained MAE (`--from mae`) with a CNN decoder. `--kind forest`: a random forest on 41
/// filter responses per pixel (ilastik-style), fitted in seconds. `--from M0` fine-tunes an
/// earlier model of the same kind; each batch then mixes annotations the parent saw and new
/// ones (`--new-weight`) so it does not forget. Loss: binary cross-entropy + Dice;
/// augmentation: flips, 90° rotations, intensity jitter. The run says whether it converged.
/// The model is recorded with how it is applied: a network's probabilities averaged over the
/// image's four flips, foreground above --threshold.
/// Masks of the round named by --validation are never trained on: they give the validation
/// Dice recorded in models/<name>.json.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc train --name M0 --sets coreset\n  biodc train --name M1 --from M0 --sets coreset,candidates-1   # after annotating critical-1\n  biodc train --name F0 --kind forest --sets coreset\n  biodc train --name T0 --kind transunet --from mae --sets coreset"
)]
pub struct TrainArgs {
    /// Model name in models/<name>.json.
    #[arg(long, default_value = "M0")]
    pub name: String,
    /// What to train.
    #[arg(long, value_enum, default_value = "unet")]
    pub kind: train::ModelKind,
    /// Start from this MAE (transunet) or earlier model of the same kind, or `none`.
    #[arg(long, default_value = "none")]
    pub from: String,
    /// Encoder architecture of a transunet when --from none: tiny, small, base.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Comma-separated sets whose annotated patches to train on (default: every annotation).
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    /// Optimiser steps of a network [default: 800].
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Train for passes over the annotated patches instead of --steps.
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Side of a U-Net's random training crops (clipped to the patch size).
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// When fine-tuning: share of each batch drawn from annotations the parent did not see.
    #[arg(long, default_value_t = 0.5)]
    pub new_weight: f64,
    /// Annotation round kept for validation only.
    #[arg(long, default_value = "validation")]
    pub validation: String,
    /// Stop after N steps (quick runs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Apply the network to each image once, not averaged over its four flips (4× faster
    /// segment and monitor; recorded in the model).
    #[arg(long)]
    pub no_flips: bool,
    /// Foreground above this probability; recorded in the model and used by segment,
    /// monitor and export.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn train(dir: &Path, a: TrainArgs) -> Result<i32> {
    crate::name::model(&a.name).and(crate::name::round(&a.validation))?;
    let repo = Repo::discover(dir)?;
    let defaults = train::TrainParams::default();
    let params = train::TrainParams {
        name: a.name,
        kind: a.kind,
        from: a.from,
        preset: a.preset,
        sets: a.sets,
        steps: match a.epochs {
            Some(_) => None,
            None => a.steps.or(defaults.steps),
        },
        epochs: a.epochs.unwrap_or(defaults.epochs),
        batch: a.batch,
        crop: Some(a.crop),
        lr: a.lr,
        seed: a.seed,
        new_weight: a.new_weight,
        validation: a.validation,
        max_steps: a.max_steps,
        flips: !a.no_flips,
        threshold: a.threshold,
    };
    if !(params.threshold > 0.0 && params.threshold < 1.0) {
        anyhow::bail!(
            "--threshold {}: a probability strictly between 0 and 1 was expected",
            params.threshold
        );
    }
    let (commit, r) = stages::run(&repo, |repo, head, v| train::train(repo, head, v, &params))?;
    if a.json {
        return print_json(&r);
    }
    let dice: Vec<String> = r.dice.iter().map(|(k, v)| format!("{k} {v:.3}")).collect();
    println!(
        "version {}: model {} — {} steps on {} annotated patches ({:.1} images/s); Dice: {}",
        short(&commit.expect("train commits")),
        r.name,
        r.steps,
        r.examples,
        r.images_per_second,
        dice.join(", ")
    );
    println!("{}", r.convergence.verdict);
    Ok(0)
}

/// Rank unannotated patches by the segmenter's Monte-Carlo dropout uncertainty.
///
/// Every patch goes through the model --passes times with dropout on; the patches where the
/// passes disagree most (default score: 1 − mean Dice between each pass and the mean mask) are
/// stored as the set candidates-N with their uncertainty maps. Export them with
/// `biodc export --set candidates-1 --with-prediction M0 --to DIR`, correct the predicted masks,
/// and import them with `biodc annotate DIR --round critical-1`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc hunt --model M0 --top 30\n  biodc hunt --model M0 --sample 2000 --passes 10\n  seq 0 3 | xargs -P 4 -I{} biodc hunt --model M0 --batch-streams --shard {}/4 && biodc gather"
)]
pub struct HuntArgs {
    #[arg(long, default_value = "M0")]
    pub model: String,
    /// How many patches to keep in the candidate set.
    #[arg(long, default_value_t = 30)]
    pub top: usize,
    /// Dropout passes per patch.
    #[arg(long, default_value_t = 10)]
    pub passes: usize,
    /// Score a random sample of N unannotated patches instead of all.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Set name (default: the next free candidates-N).
    #[arg(long, value_parser = crate::name::set)]
    pub name: Option<Name>,
    #[arg(long, value_enum, default_value = "disagreement")]
    pub score: hunt::Score,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Skip patches with these QC flags (e.g. --exclude blank,duplicate).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// Give each batch its own random stream for the dropout masks (recorded), so the run can
    /// be cut into shards; a run with it gives other masks than one without, for the same seed.
    #[arg(long)]
    pub batch_streams: bool,
    /// Score only shard I of N of the candidates, in whole batches (0 to N−1; `auto` from a
    /// Slurm job array), and commit nothing: `biodc gather` commits once all N are done.
    /// Needs --batch-streams.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn hunt(dir: &Path, a: HuntArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let params = hunt::HuntParams {
        model: a.model,
        top: a.top,
        passes: a.passes,
        sample: a.sample,
        name: a.name.map(Name::into_string),
        score: a.score,
        seed: a.seed,
        batch: a.batch,
        exclude: a.exclude,
        batch_streams: a.batch_streams,
    };
    if let Some(spec) = &a.shard {
        let spec = stages::shard::ShardSpec::parse(spec)?;
        let r = stages::shard::run_shard::<hunt::Hunt>(&repo, &params, spec)?;
        return super::shards::print_shard(&r, a.json);
    }
    let (commit, r) = stages::run(&repo, |repo, head, v| hunt::hunt(repo, head, v, &params))?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: set {} — top {} of {} unannotated patches by MC-dropout uncertainty ({:.1} patches/s)",
        short(&commit.expect("hunt commits")),
        r.set,
        r.top.len(),
        r.scored,
        r.patches_per_second
    );
    for t in r.top.iter().take(10) {
        println!(
            "  {:<28} disagreement {:.3}  entropy {:.3}",
            t.patch, t.disagreement, t.entropy
        );
    }
    if r.top.len() > 10 {
        println!("  … {} more in sets/{}.json", r.top.len() - 10, r.set);
    }
    Ok(0)
}

/// Segment whole stacks with a trained model.
///
/// Masks are written as TIFF stacks (0/255) of the input's shape. Windows overlap by a quarter
/// and are blended.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc segment --model M1 --all --out masks/\n  biodc segment --model M1 c0_s003 c1_s007 --out masks/"
)]
pub struct SegmentArgs {
    #[arg(long, default_value = "M0")]
    pub model: String,
    /// Stacks to segment (names as in `biodc status`).
    pub stacks: Vec<String>,
    /// Segment every stack of the version.
    #[arg(long, conflicts_with = "stacks")]
    pub all: bool,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Revision to read (default HEAD).
    #[arg(long)]
    pub rev: Option<String>,
    /// Segment only shard I of N of the stacks (0 to N−1; `auto` from a Slurm job array);
    /// the shards write into the same --out.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn segment(dir: &Path, a: SegmentArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    if a.stacks.is_empty() && !a.all {
        anyhow::bail!("name the stacks to segment, or pass --all");
    }
    let (_, version) = repo.version(a.rev.as_deref())?;
    let mut stacks = a.stacks.clone();
    if let Some(spec) = &a.shard {
        let spec = stages::shard::ShardSpec::parse(spec)?;
        let all: Vec<String> = if stacks.is_empty() {
            version.stacks.keys().cloned().collect()
        } else {
            stacks
        };
        stacks = all[spec.slice(all.len())].to_vec();
        if stacks.is_empty() {
            if a.json {
                return print_json(&Vec::<segment::SegmentedStack>::new());
            }
            println!(
                "shard {}/{}: no stack falls to this shard",
                spec.index, spec.count
            );
            return Ok(0);
        }
    }
    let done = segment::segment(&repo, &version, &a.model, &stacks, &a.out)?;
    if a.json {
        return print_json(&done);
    }
    for s in &done {
        println!(
            "{} {:?} → {} ({:.1} % foreground, {:.1} s)",
            s.stack,
            s.shape,
            s.file.display(),
            100.0 * s.foreground_fraction,
            s.seconds
        );
    }
    Ok(0)
}

/// Estimate a segmenter's quality on stacks without ground truth (reverse classification
/// accuracy).
///
/// Each stack is segmented with the model; a random-forest pixel classifier is trained on the
/// stack labelled by that prediction and applied to the annotated reference patches (the core
/// set), whose truth is known. The best Dice is the stack's RCA score: low scores mean the model
/// probably failed there. Stack files given on the command line are imported first (a normal
/// import commit); the scores are committed as metrics/rca.jsonl and listed worst first, with
/// alarms for scores under --alarm.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc monitor --model M1 new_stacks/*.tif --condition week-12\n  biodc monitor --model M1 --all --alarm 0.7"
)]
pub struct MonitorArgs {
    #[arg(long, default_value = "M1")]
    pub model: String,
    /// New TIFF stacks (or folders) to import and score; or stack names already in the
    /// repository.
    pub stacks: Vec<String>,
    /// Score every stack of the version.
    #[arg(long, conflicts_with = "stacks")]
    pub all: bool,
    /// Annotated set to test the pixel classifier on.
    #[arg(long, default_value = "coreset")]
    pub reference: String,
    /// Scores under this are alarms.
    #[arg(long, default_value_t = 0.6)]
    pub alarm: f64,
    /// Condition tag for imported stacks.
    #[arg(long)]
    pub condition: Option<String>,
    /// Let stack files replace stacks of the same name whose patches annotations, sets or
    /// scores name (as `import --replace`).
    #[arg(long)]
    pub replace: bool,
    /// Trees of the pixel classifier.
    #[arg(long, default_value_t = crate::pixel::forest::ForestParams::default().trees)]
    pub trees: usize,
    /// Training pixels per class for the pixel classifier.
    #[arg(long, default_value_t = crate::pixel::PixelClassifierParams::default().per_class)]
    pub per_class: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Score only shard I of N of the stacks (0 to N−1; `auto` from a Slurm job array) and
    /// commit nothing: `biodc gather` commits once all N shards are done. Stacks must be
    /// in the repository already (import them first).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn monitor(dir: &Path, a: MonitorArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    if a.stacks.is_empty() && !a.all {
        anyhow::bail!("name stack files or stacks to score, or pass --all");
    }
    // Arguments that exist on disk are files to import; the rest name stacks.
    let (files, mut names): (Vec<String>, Vec<String>) =
        a.stacks.into_iter().partition(|s| Path::new(s).exists());
    let mut import_commit = None;
    if !files.is_empty() && a.shard.is_some() {
        anyhow::bail!(
            "shards do not import (each would make its own version): import {} first with `biodc import`, then score the stacks by name or with --all",
            files.join(" ")
        );
    }
    if !files.is_empty() {
        let paths: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
        for f in crate::io::files::tiff_files(&paths)? {
            names.push(crate::io::files::stack_name(&f));
        }
        let params = stages::import::ImportParams {
            paths,
            condition: a.condition.clone(),
            condition_from_dir: false,
            voxel_size: None,
            patch: None,
            replace: a.replace,
        };
        let (commit, r) = stages::run(&repo, |repo, head, v| {
            stages::import::import(repo, head, v, &params)
        })?;
        if let Some(c) = commit {
            if !a.json {
                println!(
                    "version {}: imported {} new and {} changed stacks",
                    short(&c),
                    r.new_stacks.len(),
                    r.changed_stacks.len()
                );
            }
        }
        import_commit = commit;
    }
    let params = monitor::MonitorParams {
        model: a.model,
        stacks: names,
        reference: a.reference,
        alarm: a.alarm,
        seed: a.seed,
        classifier: crate::pixel::PixelClassifierParams {
            per_class: a.per_class,
            forest: crate::pixel::forest::ForestParams {
                trees: a.trees,
                ..Default::default()
            },
            seed: a.seed,
        },
        keep_predictions: false,
    };
    if let Some(spec) = &a.shard {
        let spec = stages::shard::ShardSpec::parse(spec)?;
        let r = stages::shard::run_shard::<monitor::Monitor>(&repo, &params, spec)?;
        return super::shards::print_shard(&r, a.json);
    }
    let (commit, r) = stages::run(&repo, |repo, head, v| {
        monitor::monitor(repo, head, v, &params)
    })?;
    if a.json {
        let mut value = serde_json::to_value(&r)?;
        value["commit"] = serde_json::json!(commit.map(|c| c.to_string()));
        value["import_commit"] = serde_json::json!(import_commit.map(|c| c.to_string()));
        return print_json(&value);
    }
    println!(
        "version {}: RCA of {} stacks with {} in {:.1} s, worst first",
        short(&commit.expect("monitor commits")),
        r.scores.len(),
        params.model,
        r.seconds
    );
    for s in &r.scores {
        println!(
            "  {:<28} RCA {:.3}  (mean Dice {:.3}, best match {}, {:.1} % foreground){}",
            s.stack,
            s.rca,
            s.mean_dice,
            s.best_patch,
            100.0 * s.foreground,
            if s.alarm { "  ALARM" } else { "" }
        );
    }
    if !r.alarms.is_empty() {
        println!(
            "{} stacks under {}: check their segmentations (`biodc segment --model {} {} --out DIR`)",
            r.alarms.len(),
            params.alarm,
            params.model,
            r.alarms.join(" ")
        );
    }
    Ok(0)
}
