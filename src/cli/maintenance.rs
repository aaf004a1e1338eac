//! Verbs that check and clean the repository: fsck, gc.

use super::print_json;
use crate::repo::Repo;
use crate::stages::fsck;
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// Verify every object (hash, compression) and that every version's objects exist.
///
/// Exits 1 if any object is corrupt or missing or the history is damaged. Objects no version
/// names (left by an interrupted verb) are reported but are not errors; `gc` removes them.
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
    for line in r.history.iter().chain(&r.corrupt).chain(&r.missing) {
        println!("error: {line}");
    }
    println!(
        "{}: {} versions, {} objects checked; {} corrupt, {} missing, {} unreachable, {} stray files",
        if r.is_clean() { "ok" } else { "DAMAGED" },
        r.versions,
        r.objects,
        r.corrupt.len(),
        r.missing.len(),
        r.unreachable,
        r.stray.len()
    );
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
    Ok(0)
}
