//! `set`: a named set of patches chosen by a person — a validation set, the patches of one
//! experiment, a hand-picked batch to annotate — committed like the sets `coreset` and `hunt`
//! make, so `export`, `train --sets`, `expert` and `diff` treat it the same.

use super::Next;
use crate::history::CommitId;
use crate::repo::Repo;
use crate::version::{DatasetVersion, PatchSet};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetParams {
    pub name: String,
    /// Patch ids, in the order given.
    pub patches: Vec<String>,
    /// Replace a set of the same name.
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetReport {
    pub name: String,
    pub patches: usize,
    /// The set this one replaced had these many patches.
    pub replaced: Option<usize>,
}

/// The `set` verb.
pub struct DefineSet;

impl super::Stage for DefineSet {
    const VERB: &'static str = "set";
    type Params = SetParams;
    type Report = SetReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &SetParams,
    ) -> Result<(Next, SetReport)> {
        define_set(repo, head, version, params)
    }
}

pub fn define_set(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &SetParams,
) -> Result<(Next, SetReport)> {
    crate::name::set(&params.name)?;
    if params.patches.is_empty() {
        bail!(
            "set {} would be empty: name at least one patch",
            params.name
        );
    }
    let unknown: Vec<&String> = params
        .patches
        .iter()
        .filter(|id| version.patch(id).is_none())
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{} patch ids are not in this version: {}",
            unknown.len(),
            unknown
                .iter()
                .take(10)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = params.patches.iter().find(|id| !seen.insert(id.as_str())) {
        bail!("patch {twice} is named twice");
    }
    let replaced = version.sets.get(&params.name).map(|s| s.patches.len());
    if replaced.is_some() && !params.replace {
        bail!(
            "a set named {} exists: choose another name or pass --replace",
            params.name
        );
    }
    version.sets.insert(
        params.name.clone(),
        PatchSet {
            name: params.name.clone(),
            method: "manual".into(),
            params: serde_json::Value::Null,
            patches: params.patches.clone(),
            scores: Vec::new(),
            extra: BTreeMap::new(),
            objects: BTreeMap::new(),
        },
    );
    let summary = format!(
        "set {}: {} patches chosen by hand{}",
        params.name,
        params.patches.len(),
        if replaced.is_some() {
            " (replaced)"
        } else {
            ""
        }
    );
    let record = <DefineSet as super::Stage>::record(repo, params, &summary)?;
    let report = SetReport {
        name: params.name.clone(),
        patches: params.patches.len(),
        replaced,
    };
    Ok((Some((version, record)), report))
}
