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
/// Checks that every shard of the run computed on HEAD (`embed` or `monitor` with
/// `--shard I/N`) is present and that they agree on verb, parameters and parent; then commits
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
