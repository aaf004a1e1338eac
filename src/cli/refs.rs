//! Verbs that name versions: checkout, branch, tag.

use super::{print_json, short};
use crate::refs::{self, RefKind};
use crate::repo::Repo;
use anyhow::{bail, Result};
use clap::Args;
use std::path::Path;

/// Move HEAD to a branch or (detached) to any version.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc checkout main\n  biodc checkout 3f2a9c1b   # detached: inspect or branch from an old version"
)]
pub struct CheckoutArgs {
    pub target: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn checkout(dir: &Path, a: CheckoutArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let c = refs::checkout(&repo, &a.target)?;
    if a.json {
        return print_json(&c);
    }
    match &c.branch {
        Some(b) => println!("switched to branch {b}"),
        None => println!("HEAD detached at {}", short(&c.head)),
    }
    Ok(0)
}

/// List, create or delete branches.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc branch\n  biodc branch relabel-round2 HEAD~1\n  biodc branch -d relabel-round2"
)]
pub struct BranchArgs {
    /// Branch to create (lists branches when omitted).
    pub name: Option<String>,
    /// Where it starts (default HEAD).
    pub start: Option<String>,
    /// Delete the branch NAME.
    #[arg(short = 'd', long)]
    pub delete: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn branch(dir: &Path, a: BranchArgs) -> Result<i32> {
    named_refs(dir, RefKind::Branch, a.name, a.start, a.delete, a.json)
}

/// List, create or delete tags (names for versions).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc tag\n  biodc tag core-annotated\n  biodc tag -d core-annotated"
)]
pub struct TagArgs {
    /// Tag to create (lists tags when omitted).
    pub name: Option<String>,
    /// Version it names (default HEAD).
    pub rev: Option<String>,
    /// Delete the tag NAME.
    #[arg(short = 'd', long)]
    pub delete: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn tag(dir: &Path, a: TagArgs) -> Result<i32> {
    named_refs(dir, RefKind::Tag, a.name, a.rev, a.delete, a.json)
}

fn named_refs(
    dir: &Path,
    kind: RefKind,
    name: Option<String>,
    rev: Option<String>,
    delete: bool,
    json: bool,
) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let Some(name) = name else {
        if delete {
            bail!("-d needs the {} name", kind.word());
        }
        let list = refs::list(&repo, kind)?;
        if json {
            return print_json(&list);
        }
        for r in list {
            let mark = if r.current { "*" } else { " " };
            println!("{mark} {} {}", r.name, short(&r.version));
        }
        return Ok(0);
    };
    let change = if delete {
        refs::delete(&repo, kind, &name)?
    } else {
        refs::create(&repo, kind, &name, rev.as_deref())?
    };
    if json {
        return print_json(&change);
    }
    match &change.version {
        Some(v) => println!("{} {} {name} at {}", change.action, kind.word(), short(v)),
        None => println!("{} {} {name}", change.action, kind.word()),
    }
    Ok(0)
}

/// Merge another line of work (a branch, `origin/main` after a fetch, any version) into HEAD.
///
/// Annotations of different patches come together; a patch both sides gave a different mask,
/// or a set, model or manifest both changed differently, is a conflict: each is listed with
/// both sides and nothing is committed.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  biodc merge annotator-b\n  biodc fetch && biodc merge origin/main"
)]
pub struct MergeArgs {
    /// Branch or version to merge (remote branches as REMOTE/BRANCH).
    pub rev: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn merge(dir: &Path, a: MergeArgs) -> Result<i32> {
    let repo = Repo::discover(dir)?;
    let rev = if repo.history.resolve(&a.rev).is_err() && a.rev.contains('/') {
        format!("refs/remotes/{}", a.rev)
    } else {
        a.rev.clone()
    };
    let m = crate::stages::merge::merge_into_head(&repo, &rev)?;
    let failed = m.outcome == "conflict";
    if a.json {
        print_json(&m)?;
        return Ok(if failed { 1 } else { 0 });
    }
    match (m.outcome.as_str(), &m.report) {
        ("conflict", Some(r)) => {
            eprintln!(
                "{} conflicts merging {}; nothing was committed:",
                r.conflicts.len(),
                a.rev
            );
            for c in &r.conflicts {
                eprintln!(
                    "  {} {}: ours {} / theirs {}",
                    c.kind, c.name, c.ours, c.theirs
                );
            }
            eprintln!("resolve by annotating those patches again (or changing one side), then merge again");
        }
        ("merged", Some(r)) => println!(
            "version {}: merged {} ({} annotations taken{}{})",
            short(&m.head),
            a.rev,
            r.annotations_taken,
            if r.taken.is_empty() { "" } else { "; " },
            r.taken.join(", ")
        ),
        (other, _) => println!("{other}: HEAD at {}", short(&m.head)),
    }
    Ok(if failed { 1 } else { 0 })
}
