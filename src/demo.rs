//! `biodc demo`: the whole loop on a synthetic cohort, stage by stage, with one line per
//! outcome: synth → init → import → pretrain → embed → qc → coreset → annotate (a simulated
//! expert returns ground-truth masks) → train M0 → hunt → annotate critical-1 (the expert fixes
//! the 3 of the top 30 with the most wrong pixels) → train M1 → monitor stacks held back from the import → report.
//! Ends with M0's and M1's Dice on the held-back stacks and how well RCA tracked it.

use crate::io::tiff::read_binary_mask;
use crate::pixel::{dice, DiceTally};
use crate::repo::{Config, Repo};
use crate::stages::{
    self, annotate, coreset, embed, export, hunt, import, monitor, pretrain, qc, train,
};
use crate::synth::expert::{triage, Triage};
use crate::synth::{write_cohort, SynthParams};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the demo measured, also written to `<dir>/demo.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoOutcome {
    /// Pooled Dice of each model on the held-back stacks.
    pub dice_m0: f64,
    pub dice_m1: f64,
    /// Pearson r between RCA and true Dice over (held-back stack, model) pairs, and how many.
    pub rca_pearson: f64,
    pub rca_pairs: usize,
    pub rca_mean_abs_error: f64,
    pub report: PathBuf,
    pub seconds: f64,
}

/// Held-back stacks: indices 3..3+n of the cohort (clean; the planted defects sit at 1, 2 and
/// the last three), imported only when monitored, as new data would arrive.
fn held_back(n_held: usize) -> std::ops::Range<usize> {
    3..3 + n_held
}

/// How big a demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// 16 stacks of 3×336×336 cut into 432 patches of 112², 6 more held back: a few
    /// minutes on 2 cores.
    Tiny,
    /// 32 stacks of 7×672×672 cut into 2,016 patches of 224², 8 more held back: longer runs.
    Small,
}

/// Runs the demo in `dir` (created; must be empty or absent). Prints one line per stage, to
/// stderr when `json` (standard output is then left to the caller's JSON).
pub fn run(dir: &Path, scale: Scale, seed: u64, json: bool) -> Result<DemoOutcome> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty: give --dir a new folder", dir.display());
    }
    // (imported stacks, held back, shape, patch, pretrain epochs, M0 steps, M1 steps)
    let (imported, n_held, shape, patch, epochs, m0_steps, m1_steps) = match scale {
        Scale::Tiny => (16, 6, [3, 336, 336], 112, 2, 150, 100),
        Scale::Small => (32, 8, [7, 672, 672], 224, 3, 400, 200),
    };
    let stacks = imported + n_held;
    let started = Instant::now();
    let say = |what: &str, line: String| {
        let line = format!(
            "[{:>6.1} s] {what:<9} {line}",
            started.elapsed().as_secs_f64()
        );
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let cohort = dir.join("cohort");
    let params = SynthParams {
        stacks,
        shape,
        seed,
        defects: true,
    };
    let manifest = write_cohort(&cohort, &params)?;
    say(
        "synth",
        format!(
            "{stacks} stacks of {shape:?} in 4 conditions, {} planted defects, {n_held} held back for monitoring → {}",
            manifest.defect_count(),
            cohort.display()
        ),
    );
    let held = held_back(n_held);
    let file_of = |i: usize| cohort.join(&manifest.stacks[i].image);
    let (import_files, held_files): (Vec<PathBuf>, Vec<PathBuf>) = (
        (0..stacks)
            .filter(|i| !held.contains(i))
            .map(file_of)
            .collect(),
        held.clone().map(file_of).collect(),
    );

    let project = dir.join("project");
    std::fs::create_dir_all(&project)?;
    let repo = Repo::init(
        &project,
        Config {
            patch_size: patch,
            ..Config::default()
        },
    )?;
    say(
        "init",
        format!(
            "repository in {} (patches of {patch}²)",
            repo.dot().display()
        ),
    );

    let ip = import::ImportParams {
        paths: import_files,
        condition_from_dir: true,
        ..Default::default()
    };
    let (_, r) = stages::run(&repo, |repo, head, v| import::import(repo, head, v, &ip))?;
    say(
        "import",
        format!(
            "{} stacks → {} patches, {} objects ({:.0} MB/s)",
            r.new_stacks.len(),
            r.patches,
            r.new_objects,
            r.raw_bytes as f64 / 1e6 / r.seconds.max(1e-9)
        ),
    );

    let pp = pretrain::PretrainParams {
        epochs,
        seed,
        ..pretrain::PretrainParams::default()
    };
    let (_, r) = stages::run(&repo, |repo, head, v| {
        pretrain::pretrain(repo, head, v, &pp, false)
    })?;
    say(
        "pretrain",
        format!(
            "MAE tiny, {} steps on {} patches ({:.1}/s), held-out masked loss {:.3} → {:.3}",
            r.steps, r.patches, r.patches_per_second, r.held_out_loss_start, r.held_out_loss_end
        ),
    );

    let ep = embed::EmbedParams {
        model: "mae".into(),
        batch: 32,
        fresh: false,
    };
    let (_, r) = stages::run(&repo, |repo, head, v| embed::embed(repo, head, v, &ep))?;
    say(
        "embed",
        format!(
            "{} patches → 256-dim vectors ({:.1}/s)",
            r.patches, r.patches_per_second
        ),
    );

    let qp = qc::QcParams {
        model: "mae".into(),
        coreset: "coreset".into(),
    };
    let (_, r) = stages::run(&repo, |repo, head, v| qc::qc(repo, head, v, &qp))?;
    let flags: Vec<String> = r.by_flag.iter().map(|(f, n)| format!("{f} {n}")).collect();
    say(
        "qc",
        format!(
            "{} of {} patches flagged ({}); condition imbalance {:.2}",
            r.flagged,
            r.patches,
            flags.join(", "),
            r.condition_imbalance
        ),
    );

    let cp = coreset::CoresetParams {
        k: 25,
        model: "mae".into(),
        neighbours: 50,
        name: "coreset".into(),
        method: coreset::Method::Kcover,
        seed,
        exclude: ["blank", "duplicate", "saturated", "blurred", "odd_texture"]
            .map(String::from)
            .to_vec(),
        per_condition: 0,
    };
    let (_, r) = stages::run(&repo, |repo, head, v| coreset::coreset(repo, head, v, &cp))?;
    let covered: Vec<String> = r
        .coverage
        .iter()
        .map(|(c, v)| format!("{c}:{}", v.picks))
        .collect();
    say(
        "coreset",
        format!(
            "25 patches by max K-cover, objective {:.1}; picks per condition {}",
            r.objective,
            covered.join(" ")
        ),
    );

    let (_, version) = repo.version(None)?;
    let todo = dir.join("to_annotate");
    let n = export::export_set(&repo, &version, "coreset", &todo)?;
    let masks = dir.join("masks-core");
    crate::synth::expert::write_masks(&cohort, &version, &version.sets["coreset"].patches, &masks)?;
    let ap = annotate::AnnotateParams {
        dir: masks,
        round: "core".into(),
        annotator: "simulated-expert".into(),
        origin: None,
        labels: false,
        class: None,
    };
    let (_, r) = stages::run(&repo, |repo, head, v| {
        annotate::annotate(repo, head, v, &ap)
    })?;
    say("annotate", format!("{n} core-set patches exported to {}; the simulated expert returned {} masks ({:.1} % vessel)", todo.display(), r.masks, 100.0 * r.foreground_fraction));

    let train_params = |name: &str, from: &str, sets: Vec<String>, steps: u64| train::TrainParams {
        name: name.into(),
        from: from.into(),
        sets,
        steps: Some(steps),
        seed,
        ..train::TrainParams::default()
    };
    let tp = train_params("M0", "none", vec!["coreset".into()], m0_steps);
    let (_, r) = stages::run(&repo, |repo, head, v| train::train(repo, head, v, &tp))?;
    say(
        "train",
        format!(
            "M0, a U-Net, on {} core-set masks, {} steps ({:.1} images/s); Dice on them {:.3}",
            r.examples,
            r.steps,
            r.images_per_second,
            r.dice.get("train").copied().unwrap_or(f64::NAN)
        ),
    );

    let hp = hunt::HuntParams {
        model: "M0".into(),
        top: 30,
        passes: 10,
        // At small scale, score a sample: 10 passes over ~2,000 patches of 224² take long on CPU.
        sample: (scale == Scale::Small).then_some(600),
        name: None,
        score: hunt::Score::Disagreement,
        seed,
        batch: 8,
        exclude: ["blank", "duplicate", "saturated", "odd_texture"]
            .map(String::from)
            .to_vec(),
        batch_streams: false,
    };
    let (_, h) = stages::run(&repo, |repo, head, v| hunt::hunt(repo, head, v, &hp))?;
    say(
        "hunt",
        format!(
            "{}: top 30 of {} unannotated patches by MC-dropout disagreement ({:.1} patches/s), most uncertain {}",
            h.set,
            h.scored,
            h.patches_per_second,
            h.top.first().map_or("-", |t| t.patch.as_str())
        ),
    );

    // The expert looks at the 30 candidates' predictions and fixes the 3 with the most wrong
    // pixels.
    let (_, version) = repo.version(None)?;
    let set = &version.sets[&h.set];
    let all_truth = dir.join("truth-candidates");
    crate::synth::expert::write_masks(&cohort, &version, &set.patches, &all_truth)?;
    let mut worst = triage(&repo.store, set, &all_truth, Triage::MostWrong)?;
    worst.truncate(3);
    let fixed_dir = dir.join("masks-critical-1");
    std::fs::create_dir_all(&fixed_dir)?;
    for w in &worst {
        let file = format!("{}.tif", w.patch);
        std::fs::copy(all_truth.join(&file), fixed_dir.join(&file))?;
    }
    std::fs::remove_dir_all(&all_truth)?;
    let ap = annotate::AnnotateParams {
        dir: fixed_dir.clone(),
        round: "critical-1".into(),
        annotator: "simulated-expert".into(),
        origin: None,
        labels: false,
        class: None,
    };
    stages::run(&repo, |repo, head, v| {
        annotate::annotate(repo, head, v, &ap)
    })?;
    let fixed: Vec<String> = worst
        .iter()
        .map(|w| {
            format!(
                "{} ({} wrong pixels, M0 Dice {:.2})",
                w.patch, w.wrong, w.dice
            )
        })
        .collect();
    say(
        "annotate",
        format!(
            "critical-1: the expert corrected the 3 candidates with the most wrong pixels: {}",
            fixed.join(", ")
        ),
    );

    let tp = train_params("M1", "M0", vec!["coreset".into(), h.set.clone()], m1_steps);
    let (_, r) = stages::run(&repo, |repo, head, v| train::train(repo, head, v, &tp))?;
    let g = |k: &str| r.dice.get(k).copied().unwrap_or(f64::NAN);
    say(
        "train",
        format!(
            "M1 from M0 on {} old + {} new masks, {} steps; core set {:.3} → {:.3}, critical set {:.3} → {:.3}",
            r.old, r.new, r.steps, g("parent_old"), g("old"), g("parent_new"), g("new")
        ),
    );

    // New stacks arrive: import them, score them with both models, compare with the truth.
    let mut rca = Vec::new();
    let mut truth_dice = Vec::new();
    let mut pooled = [0.0; 2];
    for (k, model) in ["M0", "M1"].iter().enumerate() {
        let mp = monitor::MonitorParams {
            model: (*model).into(),
            stacks: held_files
                .iter()
                .map(|f| crate::io::files::stack_name(f))
                .collect(),
            seed,
            keep_predictions: true,
            ..monitor::MonitorParams::default()
        };
        if k == 0 {
            let ip = import::ImportParams {
                paths: held_files.clone(),
                condition_from_dir: true,
                ..Default::default()
            };
            stages::run(&repo, |repo, head, v| import::import(repo, head, v, &ip))?;
        }
        let (_, m) = stages::run(&repo, |repo, head, v| monitor::monitor(repo, head, v, &mp))?;
        let mut tally = DiceTally::default();
        for s in &m.scores {
            let pred = &m.predictions[&s.stack];
            let entry = manifest
                .stacks
                .iter()
                .find(|e| e.name == s.stack)
                .context("held-back stack not in the cohort")?;
            let truth = read_binary_mask(&cohort.join(&entry.mask))?.1;
            tally.add(pred, &truth);
            rca.push(s.rca);
            truth_dice.push(dice(pred, &truth));
        }
        pooled[k] = tally.dice();
        let worst = m.scores.first().map_or(String::new(), |s| {
            format!(", lowest {} {:.3}", s.stack, s.rca)
        });
        say(
            "monitor",
            format!(
                "{model}: RCA of {} held-back stacks in {:.1} s: mean {:.3}{}, {} alarms under {}",
                m.scores.len(),
                m.seconds,
                m.scores.iter().map(|s| s.rca).sum::<f64>() / m.scores.len().max(1) as f64,
                worst,
                m.alarms.len(),
                mp.alarm
            ),
        );
    }

    let out = dir.join("report");
    let rep = crate::report::html::report(&repo, None, &out)?;
    say(
        "report",
        format!("{} ({} pictures)", rep.html.display(), rep.pictures.len()),
    );

    let r = crate::stats::pearson(&rca, &truth_dice);
    let mae = crate::stats::mean_abs_error(&rca, &truth_dice);
    let outcome = DemoOutcome {
        dice_m0: pooled[0],
        dice_m1: pooled[1],
        rca_pearson: r,
        rca_pairs: rca.len(),
        rca_mean_abs_error: mae,
        report: rep.html,
        seconds: started.elapsed().as_secs_f64(),
    };
    std::fs::write(
        dir.join("demo.json"),
        serde_json::to_string_pretty(&outcome)?,
    )?;
    let summary = format!(
        "\nDice on {n_held} held-back stacks: M0 {:.3}, M1 {:.3} ({:+.3}).\n\
         RCA vs true Dice over {} (stack, model) pairs: Pearson r {:.2}, mean abs error {:.3}.\n\
         Report: {}\n\
         History: biodc -C {} log --metrics; re-run any version: biodc -C {} reproduce HEAD~3",
        outcome.dice_m0,
        outcome.dice_m1,
        outcome.dice_m1 - outcome.dice_m0,
        outcome.rca_pairs,
        r,
        mae,
        outcome.report.display(),
        project.display(),
        project.display()
    );
    if json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    Ok(outcome)
}
