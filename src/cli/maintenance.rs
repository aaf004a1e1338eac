//! Verbs that check and clean the repository: fsck, gc.

use super::print_json;
use crate::repo::Repo;
use crate::stages::fsck;
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// Verify every object (hash, compression), that every version reads back and that its objects,
/// patches, stacks and models exist.
///
/// Exits 1 if any object is corrupt or missing, a version cannot be read (damaged or crafted
/// manifests), a version names patches, stacks or models it does not hold, or the history is
/// damaged. Each damaged object is listed with the versions and patches that use it. Objects no
/// version names (left by an interrupted verb) are reported but are not errors; `gc` removes
/// them.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  biodc fsck && biodc gc")]
pub struct FsckArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn fsck(dir: &Path, a: FsckArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = fsck::fsck(&repo)?;
    let status = if r.is_clean() { 0 } else { 1 };
    if a.json {
        print_json(&r)?;
        return Ok(status);
    }
    for line in &r.history {
        println!("error: {line}");
    }
    for line in r.corrupt.iter().chain(&r.missing) {
        println!("error: {line}");
        let id = line.split_whitespace().nth(1).unwrap_or_default();
        for place in r.uses.get(id).into_iter().flatten() {
            println!("       named by {place}");
        }
    }
    for line in &r.dangling {
        println!("error: {line}");
    }
    println!(
        "{}: {} versions, {} objects checked; {} corrupt, {} missing, {} dangling names, {} unreachable, {} stray files",
        if r.is_clean() { "ok" } else { "DAMAGED" },
        r.versions,
        r.objects,
        r.corrupt.len(),
        r.missing.len(),
        r.dangling.len(),
        r.unreachable,
        r.stray.len()
    );
    if r.on_remote > 0 {
        println!(
            "({} objects are on the remote this partial clone reads from, not here: `biodc fetch --set NAME` brings some)",
            r.on_remote
        );
    }
    if r.vanished > 0 {
        println!(
            "({} unreachable objects were removed while fsck ran, by a gc beside it)",
            r.vanished
        );
    }
    if r.unreachable + r.stray.len() > 0 {
        println!("(`biodc gc` removes unreachable objects and stray files)");
    }
    Ok(status)
}

/// Remove objects no version names and stray temp files.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  biodc gc")]
pub struct GcArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn gc(dir: &Path, a: GcArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = fsck::gc(&repo)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "removed {} files ({:.1} MB); {} objects kept",
        r.removed,
        r.bytes as f64 / 1e6,
        r.kept
    );
    if !r.abandoned_shard_runs.is_empty() {
        println!(
            "dropped {} sharded runs computed on versions no branch is at any more: {}",
            r.abandoned_shard_runs.len(),
            r.abandoned_shard_runs.join(", ")
        );
    }
    Ok(0)
}
