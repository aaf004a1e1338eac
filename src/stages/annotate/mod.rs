//! `annotate`: a folder of expert masks becomes one annotation round. A mask is a TIFF or PNG
//! named by a patch id, or by a stack name for a mask of the whole stack (cut into the masks of
//! its patches); values {0,1} or {0,255}, or instance labels (`--labels`, and files Cellpose
//! named `_masks`/`_cp_masks`: any non-zero label is foreground), or one class's colour in a
//! CVAT "Segmentation mask" export (`--class`). Every file is checked first; any problem stops
//! the round with one report listing each file and what is wrong, and nothing is imported.
//!
//! A folder `export` wrote into lists its files in `.biodc-export.json`: the contact sheet,
//! the triptychs and the exported images that were not edited are not masks and are skipped;
//! the predictions and any exported image an expert saved a mask over are read.

mod sources;

use super::Next;
use crate::history::CommitId;
use crate::io::labels::{self, Foreground};
use crate::repo::Repo;
use crate::store::{Filter, Kind};
use crate::version::{AnnotationRecord, DatasetVersion, Origin, PatchRecord};
use anyhow::{bail, Result};
use serde::Serialize;
use sources::Target;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AnnotateParams {
    pub dir: PathBuf,
    pub round: String,
    pub annotator: String,
    pub origin: Option<Origin>,
    /// Masks are instance label images: any non-zero label is foreground.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub labels: bool,
    /// The class of a CVAT export whose colour is foreground.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnnotateReport {
    pub masks: usize,
    /// Files `export` wrote that are not masks (unedited images, contact sheets, triptychs).
    pub skipped: usize,
    /// Patches that had a mask before (their new mask replaces it; history keeps both).
    pub replaced: usize,
    pub foreground_fraction: f64,
    /// Mask files read, by format (`binary`, `labels`, `Cellpose labels`, `CVAT class NAME`;
    /// `, whole stack` for masks of whole stacks).
    pub files: BTreeMap<String, usize>,
}

/// The origin a round name implies: `core…` → core, `critical…` → critical, else manual.
pub fn origin_of_round(round: &str) -> Origin {
    if round.starts_with("core") {
        Origin::Core
    } else if round.starts_with("critical") {
        Origin::Critical
    } else {
        Origin::Manual
    }
}

/// `Z×Y×X`.
fn dims(shape: [usize; 3]) -> String {
    format!("{}×{}×{}", shape[0], shape[1], shape[2])
}

/// The masks one file gives: (patch id, 0/1 tile) for its patch or every patch of its stack.
fn cut(
    path: &Path,
    target: &Target,
    patches: &[&PatchRecord],
    rule: Foreground,
) -> Result<Vec<(String, Vec<u8>)>> {
    let (stack, whole) = match target {
        Target::Patch(stack, _) => (*stack, false),
        Target::Stack(stack) => (*stack, true),
    };
    let tile = stack.tile;
    let mask = labels::read(path, rule, |found| {
        if whole && found != stack.shape {
            Err(format!(
                "is {} (Z×Y×X), stack {} is {}",
                dims(found),
                stack.name,
                dims(stack.shape)
            ))
        } else if !whole && found[0] != 1 {
            Err(format!(
                "has {} pages; a patch's mask is one 2D image (a mask of the whole stack is \
                 named by the stack: {}.tif)",
                found[0], stack.name
            ))
        } else if !whole && found[1..] != [tile, tile] {
            Err(format!(
                "is {}×{}, the patch is {tile}×{tile}",
                found[1], found[2]
            ))
        } else {
            Ok(())
        }
    })?;
    Ok(patches
        .iter()
        .map(|p| {
            let (z, y, x) = if whole { (p.z, p.y, p.x) } else { (0, 0, 0) };
            let m = crate::io::crop(&mask.planes[z], mask.shape[2], y, x, tile, tile);
            (p.id.clone(), m)
        })
        .collect())
}

/// The `annotate` verb.
pub struct Annotate;

impl super::Stage for Annotate {
    const VERB: &'static str = "annotate";
    type Params = AnnotateParams;
    type Report = AnnotateReport;

    fn run(
        repo: &Repo,
        head: CommitId,
        version: DatasetVersion,
        params: &AnnotateParams,
    ) -> Result<(Next, AnnotateReport)> {
        annotate(repo, head, version, params)
    }
}

pub fn annotate(
    repo: &Repo,
    _head: CommitId,
    mut version: DatasetVersion,
    params: &AnnotateParams,
) -> Result<(Next, AnnotateReport)> {
    if !params.dir.is_dir() {
        bail!("{}: no such folder", params.dir.display());
    }
    if params.labels && params.class.is_some() {
        bail!("--labels and --class exclude each other: a CVAT export's masks are colours");
    }
    let folder = sources::find(&params.dir, params.class.as_deref())?;
    let mut problems = folder.problems;
    if folder.files.is_empty() && problems.is_empty() {
        bail!(
            "{}: no .tif/.tiff/.png masks found{}",
            folder.root.display(),
            if folder.skipped > 0 {
                format!(
                    " ({} files `export` wrote there were skipped: unedited images, \
                     contact sheets, triptychs)",
                    folder.skipped
                )
            } else {
                String::new()
            }
        );
    }
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut masks: Vec<(String, Vec<u8>)> = Vec::new();
    let mut formats: BTreeMap<String, String> = BTreeMap::new();
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    for path in &folder.files {
        let named = match sources::named(&version, path) {
            Ok(n) => n,
            Err(e) => {
                problems.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let (rule, kind) = match &folder.cvat {
            Some((class, colour)) => (Foreground::Colour(*colour), format!("CVAT class {class}")),
            None if named.cellpose => (Foreground::Labels, "Cellpose labels".into()),
            None if params.labels => (Foreground::Labels, "labels".into()),
            None => (Foreground::Binary, "binary".into()),
        };
        let (patches, format, kind): (Vec<&PatchRecord>, _, _) = match &named.target {
            Target::Patch(_, p) => (vec![*p], kind.clone(), kind),
            Target::Stack(s) => {
                let patches: Vec<&PatchRecord> =
                    version.patches.get(&s.name).into_iter().flatten().collect();
                let format = format!("{kind}, whole stack {} ({} patches)", s.name, patches.len());
                (patches, format, format!("{kind}, whole stack"))
            }
        };
        if let (Target::Stack(s), true) = (&named.target, patches.is_empty()) {
            problems.push(format!(
                "{}: a mask of stack {}, which has no patches (it is smaller than a tile)",
                path.display(),
                s.name
            ));
            continue;
        }
        let clashes: Vec<(&str, &PathBuf)> = patches
            .iter()
            .filter_map(|p| seen.get(&p.id).map(|first| (p.id.as_str(), first)))
            .collect();
        if let Some((id, first)) = clashes.first() {
            problems.push(format!(
                "{}: patch {id} has a second mask (also {}){}",
                path.display(),
                first.display(),
                if clashes.len() > 1 {
                    format!(", and {} more of its patches", clashes.len() - 1)
                } else {
                    String::new()
                }
            ));
            continue;
        }
        for p in &patches {
            seen.insert(p.id.clone(), path.clone());
        }
        match cut(path, &named.target, &patches, rule) {
            Ok(m) => {
                masks.extend(m);
                let relative = path.strip_prefix(&params.dir).unwrap_or(path);
                formats.insert(relative.to_string_lossy().replace('\\', "/"), format);
                *files.entry(kind).or_default() += 1;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                let shown = path.display().to_string();
                problems.push(if msg.starts_with(&shown) {
                    msg
                } else {
                    format!("{shown}: {msg}")
                });
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s); nothing was imported:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    let origin = params
        .origin
        .unwrap_or_else(|| origin_of_round(&params.round));
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let already: std::collections::BTreeSet<&str> = version
        .annotations
        .iter()
        .map(|a| a.patch.as_str())
        .collect();
    let replaced = masks
        .iter()
        .filter(|(id, _)| already.contains(id.as_str()))
        .count();
    let mut on = 0usize;
    let mut total = 0usize;
    let mut records = Vec::new();
    for (id, m) in &masks {
        on += m.iter().map(|&v| v as usize).sum::<usize>();
        total += m.len();
        let (mask, _) = repo.store.put(Kind::Mask, Filter::None, m)?;
        records.push(AnnotationRecord {
            patch: id.clone(),
            mask,
            round: params.round.clone(),
            origin,
            annotator: params.annotator.clone(),
            time,
        });
    }
    version.annotations.extend(records);
    let summary = format!(
        "annotate: {} masks (round {}, {} replaced) by {}",
        masks.len(),
        params.round,
        replaced,
        params.annotator
    );
    let mut record = <Annotate as super::Stage>::record(repo, params, &summary)?;
    record
        .outputs
        .insert("annotations.jsonl".into(), format!("{} masks", masks.len()));
    // Each mask file read, with the format it was read as.
    record.inputs = formats;
    let report = AnnotateReport {
        masks: masks.len(),
        skipped: folder.skipped,
        replaced,
        foreground_fraction: on as f64 / total.max(1) as f64,
        files,
    };
    Ok((Some((version, record)), report))
}
