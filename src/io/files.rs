//! The input files a verb is given: TIFFs (and OME-Zarr images, for verbs that read stacks)
//! found in files and folders (links followed, hidden entries skipped), and the stack name
//! each gets.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The TIFF files named by `paths`: files as given, folders walked in name order, skipping
/// hidden files and folders (`.git`, whose annex holds the content a DataLad dataset links to;
/// temp files). Symbolic links are followed (git-annex and DataLad keep files as links); a link
/// whose target is missing is an error, not silently skipped.
pub fn tiff_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    input_files(paths, false)
}

/// As [`tiff_files`], and OME-Zarr images (Zarr folders: given, or found while walking, which
/// does not go into them) too.
pub fn stack_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    input_files(paths, true)
}

fn input_files(paths: &[PathBuf], zarr: bool) -> Result<Vec<PathBuf>> {
    let is_zarr = |p: &Path| zarr && crate::io::ome_zarr::is_zarr(p);
    let mut files = Vec::new();
    let mut broken = Vec::new();
    for path in paths {
        if !path.exists() {
            if path.symlink_metadata().is_ok() {
                broken.push(broken_link(path));
                continue;
            }
            bail!("{}: no such file or folder", path.display());
        }
        if is_zarr(path) {
            files.push(path.clone());
        } else if path.is_dir() {
            let before = files.len() + broken.len();
            let mut walk = walkdir::WalkDir::new(path)
                .follow_links(true)
                .sort_by_file_name()
                .into_iter()
                .filter_entry(|e| e.depth() == 0 || !is_hidden(e.path()));
            while let Some(entry) = walk.next() {
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => match e.path() {
                        Some(p) if p.symlink_metadata().is_ok() && !p.exists() => {
                            if is_tiff_name(p) {
                                broken.push(broken_link(p));
                            }
                            continue;
                        }
                        _ => return Err(e).with_context(|| format!("walking {}", path.display())),
                    },
                };
                if entry.file_type().is_dir() && is_zarr(entry.path()) {
                    walk.skip_current_dir();
                    files.push(entry.into_path());
                } else if entry.file_type().is_file() && is_tiff_name(entry.path()) {
                    files.push(entry.into_path());
                }
            }
            if files.len() + broken.len() == before {
                let what = if zarr {
                    ".tif/.tiff files or OME-Zarr images"
                } else {
                    ".tif/.tiff files"
                };
                bail!("{}: folder has no {what}", path.display());
            }
        } else {
            files.push(path.clone());
        }
    }
    if !broken.is_empty() {
        bail!(
            "cannot import; nothing was written:\n  {}",
            broken.join("\n  ")
        );
    }
    Ok(files)
}

/// Why a dangling link cannot be read.
pub fn broken_link(path: &Path) -> String {
    let target = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    format!(
        "{}: symbolic link to {target}, which does not exist (with git-annex or DataLad, \
         `git annex get` / `datalad get` the file first)",
        path.display()
    )
}

/// A file or folder whose name starts with `.`.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_tiff_name(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| e == "tif" || e == "tiff")
}

/// The stack name of a file: its name without `.ome.tif`/`.tif`/`.tiff` (`.ome.zarr`/`.zarr`
/// for an OME-Zarr folder), other characters than
/// letters, digits, `_`, `.` and `-` replaced by `_`.
pub fn stack_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = file.to_ascii_lowercase();
    let stem_len = [
        ".ome.tiff",
        ".ome.tif",
        ".tiff",
        ".tif",
        ".ome.zarr",
        ".zarr",
    ]
    .iter()
    .find(|s| lower.ends_with(*s))
    .map_or(file.len(), |s| file.len() - s.len());
    file[..stem_len]
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names() {
        assert_eq!(stack_name(Path::new("a/b/c0_s001.tif")), "c0_s001");
        assert_eq!(stack_name(Path::new("x.OME.TIF")), "x");
        assert_eq!(stack_name(Path::new("my stack (2).tiff")), "my_stack__2_");
        assert_eq!(stack_name(Path::new("d/s1.ome.zarr")), "s1");
    }
}
