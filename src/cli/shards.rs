//! Sharded runs: what a shard prints, and `gather`.

use super::{print_json, short};
use crate::repo::Repo;
use crate::stages::shard;
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// What `VERB --shard I/N` prints.
pub(super) fn print_shard(r: &shard::ShardReport, json: bool) -> Result<i32> {
    if json {
        return print_json(r);
    }
    println!(
        "{} shard {}/{} of run {} on {} done in {:.1} s; `biodc gather` commits once all {} are done",
        r.verb,
        r.index,
        r.count,
        r.run,
        short(&r.parent),
        r.seconds,
        r.count
    );
    Ok(0)
}

/// Commit a sharded run once all its shards are done.
///
/// Checks that every shard of the run computed on HEAD (`import`, `embed`, `hunt` or `monitor`
/// with `--shard I/N`) is present and that they agree on verb, parameters and parent; then commits
/// one version, the same as the unsharded run gives, whose stage record lists the shards.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  seq 0 3 | xargs -P 4 -I{} biodc embed --model mae --shard {}/4\n  biodc gather"
)]
pub struct GatherArgs {
    /// The run to gather (as the shards printed it); default: the one computed on HEAD.
    #[arg(long)]
    pub run: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn gather(dir: &Path, a: GatherArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = shard::gather(&repo, a.run.as_deref())?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "version {}: gathered {} shards of {} — {}",
        short(&r.commit),
        r.shards,
        r.run,
        r.summary
    );
    Ok(0)
}

/// Run a verb as a Slurm job array of N shards, and `biodc gather` after them.
///
/// Writes two batch scripts under .biodc/slurm/ — the array (each task runs the verb with
/// `--shard auto`) and the gather job — and submits them with `sbatch`, the gather job with
/// `--dependency=afterok` on the array. The scripts run biodc from the repository folder, which
/// every node must see (a shared filesystem). The array's script is kept in the gathered
/// commit's stage record.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc slurm --shards 32 -- embed --model mae\n  biodc slurm --shards 8 --sbatch=--partition=gpu --sbatch=--time=1:00:00 -- monitor --model M1 --all\n  biodc slurm --shards 4 --dry-run -- segment --model M1 --all --out masks/"
)]
pub struct SlurmArgs {
    /// Array tasks (shards).
    #[arg(long)]
    pub shards: usize,
    /// An option for sbatch, for both jobs (repeat for more).
    #[arg(long, allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Write the scripts and print the sbatch commands; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The verb and its arguments (import, embed, hunt, monitor or segment), after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn slurm(dir: &Path, a: SlurmArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = crate::slurm::submit(
        &repo,
        &crate::slurm::SlurmParams {
            command: a.command,
            shards: a.shards,
            sbatch: a.sbatch,
            dry_run: a.dry_run,
        },
    )?;
    if a.json {
        return print_json(&r);
    }
    println!("array script: {}", r.array_script);
    if let Some(g) = &r.gather_script {
        println!("gather script: {g}");
    }
    match (&r.array_job, &r.gather_job) {
        (Some(a), Some(g)) => {
            println!("submitted array job {a} and gather job {g} (after {a} succeeds)")
        }
        (Some(a), None) => println!("submitted array job {a}"),
        _ => {
            println!("not submitted (--dry-run); to submit:");
            for c in &r.commands {
                println!("  {c}");
            }
        }
    }
    Ok(0)
}
