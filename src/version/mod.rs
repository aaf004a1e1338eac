//! A dataset version: the manifests of one commit, loaded, edited by a stage, saved as the next
//! commit's tree; and the differences between two versions.

pub mod diff;
mod float;
pub mod manifest;
mod queries;
pub mod references;
pub mod validate;

pub use diff::{diff, Changes, VersionDiff};
pub use manifest::*;
pub use queries::latest_by_stack;

use crate::history::{BlobId, CommitId, History};
use crate::store::ObjectId;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// Everything a commit's tree says, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetVersion {
    pub meta: RepoMeta,
    pub stacks: BTreeMap<String, StackManifest>,
    /// Patches of each stack, keyed by stack name, sorted by (z, y, x).
    pub patches: BTreeMap<String, Vec<PatchRecord>>,
    pub annotations: Vec<AnnotationRecord>,
    pub sets: BTreeMap<String, PatchSet>,
    pub models: BTreeMap<String, ModelManifest>,
    /// Embeddings by model name.
    pub embeddings: BTreeMap<String, EmbeddingManifest>,
    /// Manifests this biodc does not interpret (written by later stages); passed on unchanged.
    pub other: BTreeMap<String, Vec<u8>>,
    /// The stage that made this version (not carried to the next one).
    pub stage: Option<StageRecord>,
}

impl DatasetVersion {
    /// The empty version `init` commits.
    pub fn empty(patch_size: usize) -> DatasetVersion {
        DatasetVersion {
            meta: RepoMeta::new(patch_size),
            stacks: BTreeMap::new(),
            patches: BTreeMap::new(),
            annotations: Vec::new(),
            sets: BTreeMap::new(),
            models: BTreeMap::new(),
            embeddings: BTreeMap::new(),
            other: BTreeMap::new(),
            stage: None,
        }
    }

    /// Loads the version committed as `commit`.
    pub fn load(history: &History, commit: CommitId) -> Result<DatasetVersion> {
        let tree = history.tree_of(commit)?;
        let files = tree
            .iter()
            .map(|(path, blob)| Ok((path.clone(), history.blob(*blob)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        DatasetVersion::from_files(files).with_context(|| format!("reading version {commit}"))
    }

    /// Parses a tree's files.
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<DatasetVersion> {
        let mut v = DatasetVersion::empty(0);
        let mut meta = None;
        for (path, bytes) in files {
            match split_manifest_path(&path) {
                ("biodc.json", _) => meta = Some(parse_json(&path, &bytes)?),
                ("stage.json", _) => v.stage = Some(parse_json(&path, &bytes)?),
                ("annotations.jsonl", _) => v.annotations = parse_jsonl(&path, &bytes)?,
                ("stacks", Some(name)) => {
                    v.stacks.insert(name.into(), parse_json(&path, &bytes)?);
                }
                ("patches", Some(name)) => {
                    v.patches.insert(name.into(), parse_jsonl(&path, &bytes)?);
                }
                ("sets", Some(name)) => {
                    v.sets.insert(name.into(), parse_json(&path, &bytes)?);
                }
                ("models", Some(name)) => {
                    v.models.insert(name.into(), parse_json(&path, &bytes)?);
                }
                ("embeddings", Some(name)) => {
                    v.embeddings.insert(name.into(), parse_json(&path, &bytes)?);
                }
                _ => {
                    v.other.insert(path, bytes);
                }
            }
        }
        v.meta = meta.context("biodc.json is missing: not a biodc dataset version")?;
        validate::check(&v)?;
        Ok(v)
    }

    /// The files of this version's tree, including `stage` as `stage.json`.
    pub fn to_files(&self, stage: &StageRecord) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut files = self.data_files()?;
        files.insert("stage.json".into(), to_json(stage)?);
        Ok(files)
    }

    /// Every manifest file except `stage.json` (the record of how the version was made).
    /// Refuses a version that breaks the rules of [`validate::check`].
    pub fn data_files(&self) -> Result<BTreeMap<String, Vec<u8>>> {
        validate::check(self)?;
        let mut files = self.other.clone();
        files.insert("biodc.json".into(), to_json(&self.meta)?);
        for (name, s) in &self.stacks {
            files.insert(format!("stacks/{name}.json"), to_json(s)?);
        }
        for (name, p) in &self.patches {
            files.insert(format!("patches/{name}.jsonl"), to_jsonl(p)?);
        }
        if !self.annotations.is_empty() {
            files.insert("annotations.jsonl".into(), to_jsonl(&self.annotations)?);
        }
        for (name, s) in &self.sets {
            files.insert(format!("sets/{name}.json"), to_json(s)?);
        }
        for (name, m) in &self.models {
            files.insert(format!("models/{name}.json"), to_json(m)?);
        }
        for (name, e) in &self.embeddings {
            files.insert(format!("embeddings/{name}.json"), to_json(e)?);
        }
        Ok(files)
    }

    /// Every patch, in stack then (z, y, x) order.
    pub fn all_patches(&self) -> impl Iterator<Item = (&StackManifest, &PatchRecord)> {
        self.patches
            .iter()
            .flat_map(move |(s, ps)| ps.iter().map(move |p| (&self.stacks[s], p)))
    }

    /// Finds a patch by id.
    pub fn patch(&self, id: &str) -> Option<(&StackManifest, &PatchRecord)> {
        let stack = stack_of_patch_id(id)?;
        let patches = self.patches.get(stack)?;
        let p = patches.iter().find(|p| p.id == id)?;
        Some((&self.stacks[stack], p))
    }

    pub fn patch_count(&self) -> usize {
        self.patches.values().map(Vec::len).sum()
    }

    /// The store objects this version names, with where it names them (for fsck and gc).
    pub fn object_refs(&self) -> Vec<(String, ObjectId)> {
        let mut out: Vec<(String, ObjectId)> = self
            .all_patches()
            .map(|(s, p)| (format!("patches/{}.jsonl: {}", s.name, p.id), p.tile))
            .collect();
        out.extend(
            self.annotations
                .iter()
                .map(|a| (format!("annotations.jsonl: {}", a.patch), a.mask)),
        );
        out.extend(
            self.models
                .iter()
                .map(|(n, m)| (format!("models/{n}.json"), m.checkpoint)),
        );
        out.extend(
            self.embeddings
                .iter()
                .map(|(n, e)| (format!("embeddings/{n}.json"), e.matrix)),
        );
        for (n, set) in &self.sets {
            for (role, objects) in &set.objects {
                out.extend(
                    objects
                        .iter()
                        .map(|(patch, id)| (format!("sets/{n}.json: {role} of {patch}"), *id)),
                );
            }
        }
        out
    }
}

/// The stack part of a patch id (`<stack>-z<z>-y<y>-x<x>`).
pub fn stack_of_patch_id(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(4, '-');
    let (x, y, z, stack) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (x.starts_with('x') && y.starts_with('y') && z.starts_with('z')).then_some(stack)
}

/// Whether two patch ids are the same place of one stack in adjacent slices.
pub fn z_neighbours(a: &str, b: &str) -> bool {
    let split = |id: &str| -> Option<(String, i64)> {
        let mut parts = id.rsplitn(4, '-');
        let (x, y, z, stack) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        Some((
            format!("{stack}-{y}-{x}"),
            z.strip_prefix('z')?.parse().ok()?,
        ))
    };
    match (split(a), split(b)) {
        (Some((pa, za)), Some((pb, zb))) => pa == pb && (za - zb).abs() == 1,
        _ => false,
    }
}

/// `stacks/a.json` → ("stacks", Some("a")); `biodc.json` → ("biodc.json", None).
fn split_manifest_path(path: &str) -> (&str, Option<&str>) {
    match path.split_once('/') {
        Some((dir, file)) if !file.contains('/') => {
            let stem = file
                .strip_suffix(".jsonl")
                .or_else(|| file.strip_suffix(".json"));
            (dir, stem)
        }
        Some(_) => ("", None),
        None => (path, None),
    }
}

fn parse_json<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("{path}: malformed manifest"))
}

fn parse_jsonl<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<Vec<T>> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .with_context(|| format!("{path}:{}: malformed manifest line", i + 1))
        })
        .collect()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let mut out = serde_json::to_vec_pretty(v)?;
    out.push(b'\n');
    Ok(out)
}

fn to_jsonl<T: serde::Serialize>(items: &[T]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Counts that `status` shows, read from the tree without parsing patch lines (fast on
/// repositories of 100,000 patches).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Counts {
    pub stacks: usize,
    pub patches: usize,
    pub annotations: usize,
    pub sets: Vec<String>,
    /// Annotation lines per round.
    pub rounds: BTreeMap<String, usize>,
    /// For each set, how many of its patches have no mask yet.
    pub unannotated_in_sets: BTreeMap<String, usize>,
    pub models: Vec<String>,
    pub embeddings: Vec<String>,
    pub other_manifests: Vec<String>,
}

/// Counts the stacks, patches, annotations and sets of `commit`.
/// The latest RCA line of each stack at `commit`, worst first (empty without monitor results).
/// Reads one blob, not the whole version.
pub fn rca_of(history: &History, commit: CommitId) -> Result<Vec<RcaRecord>> {
    let tree: BTreeMap<String, BlobId> = history.tree_of(commit)?;
    let Some(blob) = tree.get(RCA_FILE) else {
        return Ok(Vec::new());
    };
    let lines: Vec<RcaRecord> = parse_jsonl(RCA_FILE, &history.blob(*blob)?)?;
    Ok(latest_by_stack(&lines))
}

pub fn counts(history: &History, commit: CommitId) -> Result<Counts> {
    let tree: BTreeMap<String, BlobId> = history.tree_of(commit)?;
    let mut c = Counts::default();
    let mut annotated = std::collections::BTreeSet::new();
    let mut sets = Vec::new();
    for (path, blob) in &tree {
        match split_manifest_path(path) {
            ("stacks", Some(_)) => c.stacks += 1,
            ("patches", Some(_)) => c.patches += count_lines(&history.blob(*blob)?),
            ("annotations.jsonl", _) => {
                let lines: Vec<AnnotationRecord> = parse_jsonl(path, &history.blob(*blob)?)?;
                c.annotations = lines.len();
                for a in lines {
                    *c.rounds.entry(a.round).or_default() += 1;
                    annotated.insert(a.patch);
                }
            }
            ("sets", Some(name)) => {
                c.sets.push(name.to_string());
                sets.push(parse_json::<PatchSet>(path, &history.blob(*blob)?)?);
            }
            ("models", Some(name)) => c.models.push(name.to_string()),
            ("embeddings", Some(name)) => c.embeddings.push(name.to_string()),
            ("biodc.json" | "stage.json", _) => {}
            _ => c.other_manifests.push(path.clone()),
        }
    }
    for set in sets {
        let missing = set
            .patches
            .iter()
            .filter(|p| !annotated.contains(*p))
            .count();
        c.unannotated_in_sets.insert(set.name, missing);
    }
    Ok(c)
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    #[test]
    fn z_neighbours_are_the_same_place_in_adjacent_slices() {
        assert!(z_neighbours(
            "c0_s001-z2-y0224-x0000",
            "c0_s001-z3-y0224-x0000"
        ));
        assert!(!z_neighbours(
            "c0_s001-z2-y0224-x0000",
            "c0_s001-z4-y0224-x0000"
        ));
        assert!(!z_neighbours(
            "c0_s001-z2-y0224-x0000",
            "c0_s001-z3-y0224-x0224"
        ));
        assert!(!z_neighbours(
            "c0_s001-z2-y0224-x0000",
            "c0_s002-z3-y0224-x0000"
        ));
        assert!(!z_neighbours("odd", "c0_s002-z3-y0224-x0000"));
    }

    use super::*;

    #[test]
    fn patch_id_round_trip() {
        let id = patch_id("c0_s001-b", 2, 224, 32);
        assert_eq!(id, "c0_s001-b-z2-y0224-x0032");
        assert_eq!(stack_of_patch_id(&id), Some("c0_s001-b"));
        assert_eq!(stack_of_patch_id("nonsense"), None);
    }
}
