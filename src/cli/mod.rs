//! Command-line arguments and output. Each verb parses here and calls one library function;
//! what is printed (human text or `--json`) is decided here too, nothing else.

mod data;
mod history;
mod learn;
mod maintenance;
mod models;
mod refs;
mod remote;
mod shards;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// biodc: git for data-centric bioimage AI.
///
/// Versions every patch, annotation, set, embedding, model and metric of a microscopy cohort
/// in a content-addressed store with git history, and runs each stage of the BioData-Centric
/// loop (pretrain → assess → hunt for mistakes → monitor) as a recorded transition.
#[derive(Debug, Parser)]
#[command(name = "biodc", version, propagate_version = true)]
#[command(
    after_help = "Start here:\n  biodc demo                 run the whole loop on a synthetic cohort\n  biodc init && biodc import stacks/ --condition control"
)]
pub struct Cli {
    /// Run as if started in DIR (relative paths are then relative to DIR, as with git -C).
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub chdir: Option<PathBuf>,
    /// Where pretrain, embed, train, hunt, segment, monitor and demo run their networks:
    /// auto (a GPU when this biodc was built with CUDA and one answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    pub device: crate::nn::device::DeviceChoice,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    Init(history::InitArgs),
    Import(data::ImportArgs),
    Status(history::StatusArgs),
    Log(history::LogArgs),
    Show(history::ShowArgs),
    Diff(history::DiffArgs),
    Checkout(refs::CheckoutArgs),
    Branch(refs::BranchArgs),
    Tag(refs::TagArgs),
    Export(data::ExportArgs),
    Fsck(maintenance::FsckArgs),
    Gc(maintenance::GcArgs),
    Synth(data::SynthArgs),
    Demo(data::DemoArgs),
    Expert(data::ExpertArgs),
    Pretrain(learn::PretrainArgs),
    Embed(learn::EmbedArgs),
    Coreset(learn::CoresetArgs),
    Set(learn::SetArgs),
    Annotate(learn::AnnotateArgs),
    Qc(learn::QcArgs),
    Train(models::TrainArgs),
    Hunt(models::HuntArgs),
    Segment(models::SegmentArgs),
    Monitor(models::MonitorArgs),
    Reproduce(history::ReproduceArgs),
    Report(history::ReportArgs),
    Remote(remote::RemoteArgs),
    Push(remote::PushArgs),
    Fetch(remote::FetchArgs),
    Pull(remote::PullArgs),
    Clone(remote::CloneArgs),
    Merge(refs::MergeArgs),
    Gather(shards::GatherArgs),
    Slurm(shards::SlurmArgs),
}

impl Verb {
    /// Whether the verb trains or applies networks (the verbs `--device` is for).
    pub fn runs_networks(&self) -> bool {
        matches!(
            self,
            Verb::Pretrain(_)
                | Verb::Embed(_)
                | Verb::Train(_)
                | Verb::Hunt(_)
                | Verb::Segment(_)
                | Verb::Monitor(_)
                | Verb::Demo(_)
        )
    }
}

/// Runs the parsed command; returns the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    if let Some(dir) = &cli.chdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("-C {}: cannot enter folder", dir.display()))?;
    }
    crate::nn::device::select(cli.device)?;
    let dir = PathBuf::from(".");
    match cli.verb {
        Verb::Init(a) => history::init(&dir, a),
        Verb::Import(a) => data::import(&dir, a),
        Verb::Status(a) => history::status(&dir, a),
        Verb::Log(a) => history::log(&dir, a),
        Verb::Show(a) => history::show(&dir, a),
        Verb::Diff(a) => history::diff(&dir, a),
        Verb::Checkout(a) => refs::checkout(&dir, a),
        Verb::Branch(a) => refs::branch(&dir, a),
        Verb::Tag(a) => refs::tag(&dir, a),
        Verb::Export(a) => data::export(&dir, a),
        Verb::Fsck(a) => maintenance::fsck(&dir, a),
        Verb::Gc(a) => maintenance::gc(&dir, a),
        Verb::Synth(a) => data::synth(a),
        Verb::Demo(a) => data::demo(a),
        Verb::Expert(a) => data::expert(&dir, a),
        Verb::Pretrain(a) => learn::pretrain(&dir, a),
        Verb::Embed(a) => learn::embed(&dir, a),
        Verb::Coreset(a) => learn::coreset(&dir, a),
        Verb::Set(a) => learn::set(&dir, a),
        Verb::Annotate(a) => learn::annotate(&dir, a),
        Verb::Qc(a) => learn::qc(&dir, a),
        Verb::Train(a) => models::train(&dir, a),
        Verb::Hunt(a) => models::hunt(&dir, a),
        Verb::Segment(a) => models::segment(&dir, a),
        Verb::Monitor(a) => models::monitor(&dir, a),
        Verb::Reproduce(a) => history::reproduce(&dir, a),
        Verb::Report(a) => history::report(&dir, a),
        Verb::Remote(a) => remote::remote(&dir, a),
        Verb::Push(a) => remote::push(&dir, a),
        Verb::Fetch(a) => remote::fetch(&dir, a),
        Verb::Pull(a) => remote::pull(&dir, a),
        Verb::Clone(a) => remote::clone(&dir, a),
        Verb::Merge(a) => refs::merge(&dir, a),
        Verb::Gather(a) => shards::gather(&dir, a),
        Verb::Slurm(a) => shards::slurm(&dir, a),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json<T: serde::Serialize>(value: &T) -> Result<i32> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(0)
}

/// First 12 hex digits of a commit id.
fn short(id: &impl std::fmt::Display) -> String {
    id.to_string().chars().take(12).collect()
}

/// Parses "A,B,C" into three numbers.
fn parse_triple<T: std::str::FromStr>(s: &str) -> std::result::Result<[T; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || format!("expected three comma-separated numbers like 7,1024,1024, got {s:?}");
    if parts.len() != 3 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(3);
    for p in parts {
        out.push(p.parse::<T>().map_err(|_| bad())?);
    }
    out.try_into().map_err(|_| bad())
}
