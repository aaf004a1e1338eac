//! `annotate`: a folder of expert masks (TIFF or PNG, named by patch id, values {0,1} or
//! {0,255}) becomes one annotation round. Every file is checked first; any problem stops the
//! round with one report listing each file and what is wrong, and nothing is imported.
//!
//! A folder `export` wrote into lists its files in `.biodc-export.json`: the contact sheet,
//! the triptychs and the exported images that were not edited are not masks and are skipped;
//! the predictions and any exported image an expert saved a mask over are read.

use super::export::{ExportIndex, Role};
use super::Next;
use crate::history::CommitId;
use crate::io::{tiff::read_stack, Plane};
use crate::repo::Repo;
use crate::store::{Filter, Kind};
use crate::version::{AnnotationRecord, DatasetVersion, Origin};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AnnotateParams {
    pub dir: PathBuf,
    pub round: String,
    pub annotator: String,
    pub origin: Option<Origin>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AnnotateReport {
    pub masks: usize,
    /// Files `export` wrote that are not masks (unedited images, contact sheets, triptychs).
    pub skipped: usize,
    /// Patches that had a mask before (their new mask replaces it; history keeps both).
    pub replaced: usize,
    pub foreground_fraction: f64,
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

/// The patch id a mask file names: its file name without `.tif`/`.tiff`/`.png`.
fn patch_id_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let lower = name.to_ascii_lowercase();
    [".tiff", ".tif", ".png"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map(|e| name[..name.len() - e.len()].to_string())
}

/// Reads one mask as 0/1 bytes, checking shape and values.
fn read_mask(path: &Path, size: usize) -> Result<Vec<u8>> {
    let (h, w, plane) = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
    {
        crate::io::png::read_gray(path)?
    } else {
        let s = read_stack(path)?;
        if s.info.shape[0] != 1 {
            bail!("has {} pages; a mask is one 2D image", s.info.shape[0]);
        }
        (
            s.info.shape[1],
            s.info.shape[2],
            s.planes.into_iter().next().unwrap(),
        )
    };
    if (h, w) != (size, size) {
        bail!("is {h}×{w}, the patch is {size}×{size}");
    }
    let values = plane.to_f32();
    let mut distinct: Vec<f32> = Vec::new();
    for &v in &values {
        if !distinct.contains(&v) {
            distinct.push(v);
            if distinct.len() > 4 {
                break;
            }
        }
    }
    distinct.sort_by(f32::total_cmp);
    let integer = matches!(plane, Plane::U8(_) | Plane::U16(_));
    let binary = distinct.iter().all(|&v| v == 0.0 || v == 1.0)
        || (integer && distinct.iter().all(|&v| v == 0.0 || v == 255.0));
    if !binary {
        let shown: Vec<String> = distinct.iter().take(4).map(|v| v.to_string()).collect();
        bail!(
            "is not binary: holds {}{} (expected {{0,1}}{})",
            shown.join(", "),
            if distinct.len() > 4 { ", …" } else { "" },
            if integer {
                " or {0,255}"
            } else {
                " for a float mask"
            }
        );
    }
    Ok(values.iter().map(|&v| (v != 0.0) as u8).collect())
}

/// The files of `dir` to read as masks (symbolic links followed, hidden files and folders
/// skipped), how many files `export` wrote there were skipped as not masks, and problems
/// (links to nothing).
fn mask_files(dir: &Path) -> Result<(Vec<PathBuf>, usize, Vec<String>)> {
    let index = ExportIndex::read(dir);
    let mut files = Vec::new();
    let mut skipped = 0;
    let mut problems = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !crate::io::files::is_hidden(e.path()))
    {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => match e.path() {
                Some(p) if p.symlink_metadata().is_ok() && !p.exists() => {
                    if patch_id_of(p).is_some() {
                        problems.push(crate::io::files::broken_link(p));
                    }
                    continue;
                }
                _ => return Err(e).with_context(|| format!("reading {}", dir.display())),
            },
        };
        let path = entry.into_path();
        if !path.is_file() || patch_id_of(&path).is_none() {
            continue;
        }
        let relative = path
            .strip_prefix(dir)
            .map(|r| r.to_string_lossy().replace('\\', "/"))
            .unwrap_or_default();
        let exported = index.as_ref().and_then(|i| i.files.get(&relative));
        let not_a_mask = match exported {
            Some(f) if matches!(f.role, Role::Gallery | Role::Triptych | Role::Model) => true,
            // An exported image is a mask only if someone saved one over it.
            Some(f) if f.role == Role::Image => {
                let now = std::fs::read(&path).map(|b| blake3::hash(&b).to_hex().to_string());
                f.blake3.as_deref() == now.ok().as_deref()
            }
            _ => false,
        };
        if not_a_mask {
            skipped += 1;
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok((files, skipped, problems))
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
    let (files, skipped, mut problems) = mask_files(&params.dir)?;
    if files.is_empty() && problems.is_empty() {
        bail!(
            "{}: no .tif/.tiff/.png masks found{}",
            params.dir.display(),
            if skipped > 0 {
                format!(
                    " ({skipped} files `export` wrote there were skipped: unedited images, \
                     contact sheets, triptychs)"
                )
            } else {
                String::new()
            }
        );
    }
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut masks: Vec<(String, Vec<u8>)> = Vec::new();
    for path in &files {
        let id = patch_id_of(path).expect("filtered above");
        let Some((stack, _)) = version.patch(&id) else {
            problems.push(format!(
                "{}: unknown patch id {id:?} (not in this version)",
                path.display()
            ));
            continue;
        };
        if let Some(first) = seen.insert(id.clone(), path.clone()) {
            problems.push(format!(
                "{}: patch {id} has a second mask (also {})",
                path.display(),
                first.display()
            ));
            continue;
        }
        match read_mask(path, stack.tile) {
            Ok(m) => masks.push((id, m)),
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
    let report = AnnotateReport {
        masks: masks.len(),
        skipped,
        replaced,
        foreground_fraction: on as f64 / total.max(1) as f64,
    };
    Ok((Some((version, record)), report))
}
