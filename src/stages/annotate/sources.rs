//! Which files of an `annotate` folder are masks, and what each one's name names: a patch
//! (`<patch id>.tif`) or a whole stack (`<stack>.tif`), either one possibly with Cellpose's
//! `_masks`/`_cp_masks` suffix. A CVAT "Segmentation mask" export (`labelmap.txt`) has its masks
//! under `SegmentationClass/`.

use super::super::export::{ExportIndex, Role};
use crate::io::labels;
use crate::version::{stack_of_patch_id, DatasetVersion, PatchRecord, StackManifest};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The mask files of a folder.
pub struct Folder {
    /// Where the masks were looked for (the folder, or a CVAT export's `SegmentationClass/`).
    pub root: PathBuf,
    pub files: Vec<PathBuf>,
    /// Files `export` wrote that are not masks (unedited images, contact sheets, triptychs).
    pub skipped: usize,
    /// Links to nothing.
    pub problems: Vec<String>,
    /// A CVAT export's chosen class and its colour.
    pub cvat: Option<(String, [u8; 3])>,
}

/// The masks of `dir`; `class` picks the foreground of a CVAT export.
pub fn find(dir: &Path, class: Option<&str>) -> Result<Folder> {
    let labelmap = dir.join("labelmap.txt");
    if !labelmap.is_file() {
        if class.is_some() {
            bail!(
                "{}: no such file: --class reads a CVAT \"Segmentation mask\" export \
                 (labelmap.txt and SegmentationClass/)",
                labelmap.display()
            );
        }
        return folder(dir, None);
    }
    let classes = labels::read_labelmap(&labelmap)?;
    let Some(class) = class else {
        bail!(
            "{}: a CVAT export (it has labelmap.txt): choose the foreground with --class NAME \
             (classes: {})",
            dir.display(),
            labels::class_names(&classes)
        );
    };
    let colour = labels::class_colour(&classes, class, &labelmap)?;
    let masks = dir.join("SegmentationClass");
    if !masks.is_dir() {
        bail!(
            "{}: no such folder (a CVAT \"Segmentation mask\" export keeps its masks there)",
            masks.display()
        );
    }
    folder(&masks, Some((class.to_string(), colour)))
}

fn folder(root: &Path, cvat: Option<(String, [u8; 3])>) -> Result<Folder> {
    let (files, skipped, problems) = mask_files(root)?;
    Ok(Folder {
        root: root.to_path_buf(),
        files,
        skipped,
        problems,
        cvat,
    })
}

/// A mask file's name without `.tif`/`.tiff`/`.png`; None for other files.
pub fn mask_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let lower = name.to_ascii_lowercase();
    [".tiff", ".tif", ".png"]
        .iter()
        .find(|e| lower.ends_with(*e))
        .map(|e| name[..name.len() - e.len()].to_string())
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
                    if mask_stem(p).is_some() {
                        problems.push(crate::io::files::broken_link(p));
                    }
                    continue;
                }
                _ => return Err(e).with_context(|| format!("reading {}", dir.display())),
            },
        };
        let path = entry.into_path();
        if !path.is_file() || mask_stem(&path).is_none() {
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

/// What a mask file's name names.
pub enum Target<'v> {
    Patch(&'v StackManifest, &'v PatchRecord),
    /// A mask of the whole stack, to cut into its patches.
    Stack(&'v StackManifest),
}

/// A mask file's target, and whether Cellpose named it (its masks are instance labels).
pub struct Named<'v> {
    pub target: Target<'v>,
    pub cellpose: bool,
}

/// The suffixes Cellpose gives the masks it saves (`_cp_masks.png`, `_masks.tif`).
const CELLPOSE: [&str; 2] = ["_cp_masks", "_masks"];

/// What the name of `path` names in `version`: a patch id, else a stack name, else either after
/// a Cellpose suffix; or why it names nothing.
pub fn named<'v>(
    version: &'v DatasetVersion,
    path: &Path,
) -> std::result::Result<Named<'v>, String> {
    let stem = mask_stem(path).unwrap_or_default();
    let stripped = CELLPOSE.iter().find_map(|s| stem.strip_suffix(s));
    let names = std::iter::once((stem.as_str(), false)).chain(stripped.map(|s| (s, true)));
    for (name, cellpose) in names {
        if let Some((stack, patch)) = version.patch(name) {
            return Ok(Named {
                target: Target::Patch(stack, patch),
                cellpose,
            });
        }
        // The name `import` gives a stack from a file of this name.
        let as_stack = crate::io::files::stack_name(Path::new(&format!("{name}.tif")));
        if let Some(stack) = version.stacks.get(&as_stack) {
            return Ok(Named {
                target: Target::Stack(stack),
                cellpose,
            });
        }
    }
    let name = stripped.unwrap_or(&stem);
    if stack_of_patch_id(name).is_some() {
        return Err(format!("unknown patch id {name:?} (not in this version)"));
    }
    let stacks: Vec<&str> = version.stacks.keys().map(String::as_str).collect();
    if stacks.is_empty() {
        return Err(format!(
            "{stem:?} names nothing: this version has no stacks"
        ));
    }
    Err(format!(
        "{stem:?} is no patch id or stack name of this version{} (stacks: {}{})",
        match stripped {
            Some(s) => format!(", nor is {s:?} (without Cellpose's suffix)"),
            None => String::new(),
        },
        stacks[..stacks.len().min(8)].join(", "),
        if stacks.len() > 8 {
            format!(", … {} in all", stacks.len())
        } else {
            String::new()
        }
    ))
}
