//! Names for versions: moving HEAD (`checkout`), and listing, creating and deleting branches
//! and tags. Each returns what it did, for the CLI to print or write as JSON.

use crate::history::HeadTarget;
use crate::name::NameKind;
use crate::repo::Repo;
use anyhow::{bail, Result};
use serde::Serialize;

/// Where `checkout` left HEAD.
#[derive(Debug, Serialize)]
pub struct Checkout {
    /// The branch HEAD is on, or `None` when detached.
    pub branch: Option<String>,
    pub head: String,
}

/// Moves HEAD to branch `target`, or detached to the version `target` names.
pub fn checkout(repo: &Repo, target: &str) -> Result<Checkout> {
    let _lock = repo.lock()?;
    let branch_ref = format!("refs/heads/{target}");
    if repo.history.refs()?.iter().any(|(n, _)| *n == branch_ref) {
        repo.history
            .set_head(HeadTarget::Branch(target.to_string()))?;
        Ok(Checkout {
            branch: Some(target.to_string()),
            head: repo.head()?.to_string(),
        })
    } else {
        let id = repo.history.resolve(target)?;
        repo.history.set_head(HeadTarget::Detached(id))?;
        Ok(Checkout {
            branch: None,
            head: id.to_string(),
        })
    }
}

/// Branches or tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    Branch,
    Tag,
}

impl RefKind {
    fn prefix(self) -> &'static str {
        match self {
            RefKind::Branch => "refs/heads/",
            RefKind::Tag => "refs/tags/",
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            RefKind::Branch => "branch",
            RefKind::Tag => "tag",
        }
    }
}

/// One branch or tag.
#[derive(Debug, Serialize)]
pub struct NamedRef {
    pub name: String,
    pub version: String,
    /// HEAD is on this branch.
    pub current: bool,
}

pub fn list(repo: &Repo, kind: RefKind) -> Result<Vec<NamedRef>> {
    let current = repo.history.head_branch()?;
    Ok(repo
        .history
        .refs()?
        .into_iter()
        .filter_map(|(full, id)| {
            let n = full.strip_prefix(kind.prefix())?;
            Some(NamedRef {
                current: kind == RefKind::Branch && current.as_deref() == Some(n),
                name: n.to_string(),
                version: id.to_string(),
            })
        })
        .collect())
}

/// What `create` or `delete` did.
#[derive(Debug, Serialize)]
pub struct RefChange {
    pub kind: RefKind,
    pub name: String,
    /// "created" or "deleted".
    pub action: &'static str,
    /// The version a created name points at.
    pub version: Option<String>,
}

/// Names version `rev` (HEAD when `None`) `name`.
pub fn create(repo: &Repo, kind: RefKind, name: &str, rev: Option<&str>) -> Result<RefChange> {
    let name_kind = match kind {
        RefKind::Branch => NameKind::Branch,
        RefKind::Tag => NameKind::Tag,
    };
    crate::history::check_ref_name(name_kind, name)?;
    let _lock = repo.lock()?;
    let target = match rev {
        Some(r) => repo.history.resolve(r)?,
        None => repo.head()?,
    };
    repo.history
        .create_ref(&format!("{}{name}", kind.prefix()), target)?;
    Ok(RefChange {
        kind,
        name: name.to_string(),
        action: "created",
        version: Some(target.to_string()),
    })
}

/// Deletes `name` (by any name git gave it: existing names are not re-validated).
pub fn delete(repo: &Repo, kind: RefKind, name: &str) -> Result<RefChange> {
    let _lock = repo.lock()?;
    if kind == RefKind::Branch && repo.history.head_branch()?.as_deref() == Some(name) {
        bail!("cannot delete branch {name}: HEAD is on it");
    }
    repo.history
        .delete_ref(&format!("{}{name}", kind.prefix()))?;
    Ok(RefChange {
        kind,
        name: name.to_string(),
        action: "deleted",
        version: None,
    })
}
