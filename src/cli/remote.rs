//! Verbs that leave the machine: remote, push, fetch, pull, clone.

use super::{print_json, short};
use crate::remote::{RemoteEntry, Remotes};
use crate::repo::Repo;
use crate::transfer::{self, CloneData};
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

/// Add, remove or list remotes: folders or S3-compatible buckets.
///
/// S3 endpoint, region and credentials come from the usual environment variables
/// (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ALLOW_HTTP);
/// nothing but the name and URL is written to .biodc/remotes.toml.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc remote add origin s3://imaging-facility/vessels\n  biodc remote add backup /mnt/nas/vessels.biodc\n  biodc remote list"
)]
pub struct RemoteArgs {
    #[command(subcommand)]
    pub action: Option<RemoteAction>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RemoteAction {
    /// Name a remote: a folder path, file:///path or s3://bucket/prefix.
    Add { name: String, url: String },
    /// Forget a remote (nothing on it is touched).
    Remove { name: String },
    /// List remotes (the default).
    List,
}

pub fn remote(dir: &Path, a: RemoteArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let mut remotes = Remotes::load(repo.dot())?;
    match a.action.unwrap_or(RemoteAction::List) {
        RemoteAction::Add { name, url } => {
            crate::name::Name::new(crate::name::NameKind::Model, &name)
                .map_err(|e| anyhow::anyhow!("remote name {name:?}: {e}"))?;
            // A folder is kept as an absolute path: the same from every working folder.
            let url = match crate::remote::Location::parse(&url, &std::env::current_dir()?)? {
                crate::remote::Location::Folder(p) => p.to_string_lossy().into_owned(),
                crate::remote::Location::S3 { .. } => url,
            };
            if remotes.remotes.contains_key(&name) {
                bail!("a remote named {name:?} exists already (remove it first)");
            }
            remotes.remotes.insert(name.clone(), RemoteEntry { url });
            remotes.save(repo.dot())?;
        }
        RemoteAction::Remove { name } => {
            remotes.url(&name)?;
            remotes.remotes.remove(&name);
            if remotes.partial.as_deref() == Some(name.as_str()) {
                bail!("{name} is where this partial clone reads its missing objects from: it cannot be removed");
            }
            remotes.save(repo.dot())?;
        }
        RemoteAction::List => {}
    }
    if a.json {
        return print_json(&remotes);
    }
    for (name, r) in &remotes.remotes {
        println!("{name}\t{}", r.url);
    }
    Ok(0)
}

/// Send a branch's versions and the objects they name to a remote.
///
/// Only what the remote lacks is sent (a killed push resumes where it stopped); the remote
/// branch moves last, and only if nobody else moved it since — otherwise pull first.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc push\n  biodc push origin main -j 16")]
pub struct PushArgs {
    /// Remote name.
    #[arg(default_value = "origin")]
    pub remote: String,
    /// Branch (default: the one HEAD is on).
    pub branch: Option<String>,
    /// Concurrent uploads.
    #[arg(short = 'j', long, default_value_t = 8)]
    pub jobs: usize,
    /// Objects go to the remote in packs of about this size (bytes, or with k, M, G): one
    /// request per pack; a push interrupted resumes at the first pack that had not arrived.
    #[arg(long, default_value = "32M", value_parser = parse_size)]
    pub pack_size: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `123`, `64k`, `32M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => {
            return Err(format!(
                "{s:?}: a size is a number of bytes, or with k, M or G"
            ))
        }
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n << shift),
        _ => Err(format!(
            "{s:?}: a size is a positive number of bytes, or with k, M or G"
        )),
    }
}

pub fn push(dir: &Path, a: PushArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = transfer::push(
        &repo,
        &transfer::PushParams {
            remote: a.remote,
            branch: a.branch,
            jobs: a.jobs,
            pack_bytes: a.pack_size,
        },
    )?;
    if r.branch_move_atomic == Some(false) {
        eprintln!(
            "warning: {} ignores conditional writes (If-None-Match), so {} moved there without a compare-and-swap: a push racing this one could have overwritten it unseen. Push to this remote from one place at a time.",
            r.url, r.branch
        );
    }
    if a.json {
        return print_json(&r);
    }
    if r.up_to_date {
        println!(
            "{} on {} is up to date at {}",
            r.branch,
            r.remote,
            short(&r.commit)
        );
    } else {
        println!(
            "{} → {} {}: {} versions, {} objects in {} packs, {} git objects, {:.1} MB in {:.1} s",
            r.branch,
            r.remote,
            match &r.previous {
                Some(p) => format!("{}..{}", short(p), short(&r.commit)),
                None => format!("(new branch) {}", short(&r.commit)),
            },
            r.versions_sent,
            r.objects_sent,
            r.packs_sent,
            r.git_objects_sent,
            r.bytes_sent as f64 / 1e6,
            r.seconds
        );
    }
    Ok(0)
}

/// Bring a remote's versions here (as refs/remotes/REMOTE/BRANCH), with their data.
///
/// In a clone made with --no-data or --sets, only history comes unless --set/--model ask for
/// the objects of a set or model of the checked-out version (others are read when first used).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc fetch\n  biodc fetch origin --set critical-1\n  biodc fetch --model M1"
)]
pub struct FetchArgs {
    #[arg(default_value = "origin")]
    pub remote: String,
    /// Also bring the tiles and masks of this set's patches (repeatable).
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// Also bring this model's weights (repeatable).
    #[arg(long = "model")]
    pub models: Vec<String>,
    #[arg(short = 'j', long, default_value_t = 8)]
    pub jobs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn fetch(dir: &Path, a: FetchArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let partial = Remotes::load(repo.dot())?.partial.is_some();
    let data = if !a.sets.is_empty() || !a.models.is_empty() {
        CloneData::Only {
            sets: a.sets,
            models: a.models,
        }
    } else if partial {
        CloneData::None
    } else {
        CloneData::All
    };
    let r = transfer::fetch(&repo, &a.remote, &data, a.jobs)?;
    if a.json {
        return print_json(&r);
    }
    print_fetch(&r);
    Ok(0)
}

fn print_fetch(r: &transfer::FetchReport) {
    println!(
        "from {}: {} versions, {} git objects, {} objects, {:.1} MB in {:.1} s",
        r.remote,
        r.versions_received,
        r.git_objects_received,
        r.objects_received,
        r.bytes_received as f64 / 1e6,
        r.seconds
    );
    for (b, id) in &r.branches {
        println!("  {}/{b} at {}", r.remote, short(id));
    }
}

/// Fetch, then move the current branch forward to the remote's.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  biodc pull\n  biodc pull origin main")]
pub struct PullArgs {
    #[arg(default_value = "origin")]
    pub remote: String,
    pub branch: Option<String>,
    #[arg(short = 'j', long, default_value_t = 8)]
    pub jobs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn pull(dir: &Path, a: PullArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let r = transfer::pull(&repo, &a.remote, a.branch.as_deref(), a.jobs)?;
    if a.json {
        return print_json(&r);
    }
    print_fetch(&r.fetch);
    match r.outcome.as_str() {
        "fast-forward" => println!("{}: fast-forward {} → {}", r.branch, r.from, r.to),
        "ahead" => println!("{} is ahead of {}: push it", r.branch, a.remote),
        _ => println!("{} is up to date", r.branch),
    }
    Ok(0)
}

/// Make a new repository from a remote.
///
/// By default every object of every version comes. --no-data brings history and manifests
/// only (log, diff, metrics and RCA need no pixels); objects then come from the remote when
/// first read, checked and kept. --sets brings what those sets need up front.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc clone s3://imaging-facility/vessels vessels\n  biodc clone --no-data s3://imaging-facility/vessels vessels-history\n  biodc clone --sets coreset,critical-1 /mnt/nas/vessels.biodc annotate-here"
)]
pub struct CloneArgs {
    pub url: String,
    pub dir: PathBuf,
    /// History and manifests only.
    #[arg(long, conflicts_with = "sets")]
    pub no_data: bool,
    /// Only the objects these sets need (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    #[arg(short = 'j', long, default_value_t = 8)]
    pub jobs: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn clone(dir: &Path, a: CloneArgs) -> Result<i32> {
    let data = if a.no_data {
        CloneData::None
    } else if !a.sets.is_empty() {
        CloneData::Only {
            sets: a.sets,
            models: Vec::new(),
        }
    } else {
        CloneData::All
    };
    let target = dir.join(&a.dir);
    let r = transfer::clone(&a.url, &target, &data, a.jobs)?;
    if a.json {
        return print_json(&r);
    }
    println!(
        "cloned {} into {}: {} versions, {} objects ({:.1} MB){}; on {} at {}",
        r.url,
        r.dir,
        r.fetch.versions_received,
        r.fetch.objects_received,
        r.fetch.bytes_received as f64 / 1e6,
        if r.partial {
            ", the rest read on first use"
        } else {
            ""
        },
        r.branch,
        short(&r.commit)
    );
    Ok(0)
}
