//! `biodc demo`: the loop on a synthetic cohort, stage by stage, with one line per outcome.
//!
//! Built so far: synth → init → import → pretrain → embed → qc → coreset → export the core set →
//! annotate (a simulated expert returns ground-truth masks). The stages after annotation
//! (train, hunt, monitor, report) are listed as not built yet.

use crate::repo::{Config, Repo};
use crate::stages::{self, annotate, coreset, embed, export, import, pretrain, qc};
use crate::synth::{write_cohort, SynthParams};
use anyhow::{bail, Result};
use std::path::Path;
use std::time::Instant;

/// How big a demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// 16 stacks of 3×448×448 (192 patches of 224²), a short pretraining: minutes on 2 cores.
    Tiny,
    /// 32 stacks of 7×672×672 (2,016 patches), longer pretraining.
    Small,
}

/// Runs the demo in `dir` (created; must be empty or absent). Prints one line per stage.
pub fn run(dir: &Path, scale: Scale, seed: u64) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} is not empty: give --dir a new folder", dir.display());
    }
    let (stacks, shape, epochs) = match scale {
        Scale::Tiny => (16, [3, 448, 448], 2),
        Scale::Small => (32, [7, 672, 672], 3),
    };
    let started = Instant::now();
    let say = |what: &str, line: String| {
        println!(
            "[{:>6.1} s] {what:<9} {line}",
            started.elapsed().as_secs_f64()
        )
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
            "{stacks} stacks of {shape:?} in 4 conditions, {} planted defects → {}",
            manifest.defect_count(),
            cohort.display()
        ),
    );

    let project = dir.join("project");
    std::fs::create_dir_all(&project)?;
    let repo = Repo::init(&project, Config::default())?;
    say("init", format!("repository in {}", repo.dot().display()));

    let ip = import::ImportParams {
        paths: vec![cohort.join("images")],
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
        preset: "tiny".into(),
        epochs,
        batch: 8,
        lr: 1.5e-3,
        mask_ratio: 0.75,
        seed,
        name: "mae".into(),
        checkpoint_every: 50,
        max_steps: None,
        scratch: false,
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
    };
    let (_, r) = stages::run(&repo, |repo, head, v| {
        annotate::annotate(repo, head, v, &ap)
    })?;
    say("annotate", format!("{n} core-set patches exported to {}; the simulated expert returned {} masks ({:.1} % vessel)", todo.display(), r.masks, 100.0 * r.foreground_fraction));

    println!(
        "\nnot built yet: train M0/M1, hunt, monitor (RCA), report.\n\
         Inspect what was recorded: biodc -C {} log --oneline",
        project.display()
    );
    Ok(())
}
