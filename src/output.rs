//! Folders biodc writes into outside its repository (`export`, `report`, `segment`, `expert`).
//! Every file path in them is made by [`OutDir::path`], which proves that the path stays inside
//! the folder the user named, whatever names a (possibly crafted) version holds.

use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// An output folder.
#[derive(Debug, Clone)]
pub struct OutDir {
    /// As the user gave it (for messages).
    shown: PathBuf,
    /// Canonical: every path handed out starts with it.
    root: PathBuf,
}

impl OutDir {
    /// Creates `dir` (and its parents) if needed and opens it.
    pub fn create(dir: &Path) -> Result<OutDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let root = dir
            .canonicalize()
            .with_context(|| format!("opening {}", dir.display()))?;
        Ok(OutDir {
            shown: dir.to_path_buf(),
            root,
        })
    }

    /// The folder as the user named it.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// The path of `relative` (parts separated by `/`) inside the folder. Refused unless every
    /// part is a plain name (not empty, `.` or `..`, no `\`, NUL or control character) and no
    /// folder on the way that already exists is a symbolic link — so the path cannot leave the
    /// folder.
    pub fn path(&self, relative: &str) -> Result<PathBuf> {
        let refuse = |why: &str| -> Result<PathBuf> {
            bail!(
                "refusing to write {relative:?} in {}: {why}",
                self.shown.display()
            )
        };
        if relative.is_empty() {
            return refuse("empty file name");
        }
        let mut path = self.root.clone();
        let parts: Vec<&str> = relative.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let plain = matches!(
                Path::new(part).components().collect::<Vec<_>>().as_slice(),
                [Component::Normal(_)]
            );
            if !plain
                || part.contains('\\')
                || part.chars().any(char::is_control)
                || *part == "."
                || *part == ".."
            {
                return refuse("each part of the name must be a plain file or folder name");
            }
            path.push(part);
            let is_last = i + 1 == parts.len();
            if !is_last
                && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
            {
                return refuse(&format!("{} is a symbolic link", path.display()));
            }
        }
        debug_assert!(path.starts_with(&self.root));
        Ok(path)
    }

    /// Does `relative` exist already (as a file, folder or link)?
    pub fn exists(&self, relative: &str) -> Result<bool> {
        Ok(std::fs::symlink_metadata(self.path(relative)?).is_ok())
    }

    /// Writes the file `relative`: `write` fills a temp file beside it, which then takes the
    /// file's name — replacing an existing file only when `replace`, and never writing through
    /// a link at that name. Creates the folders on the way. Returns the path.
    pub fn write(
        &self,
        relative: &str,
        replace: bool,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let path = self.path(relative)?;
        let dir = path.parent().expect("inside the root");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let real = dir
            .canonicalize()
            .with_context(|| format!("opening {}", dir.display()))?;
        if !real.starts_with(&self.root) {
            bail!(
                "refusing to write {relative:?}: {} leads outside {}",
                dir.display(),
                self.shown.display()
            );
        }
        let suffix = path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .suffix(&suffix)
            .tempfile_in(&real)
            .with_context(|| format!("creating a temp file in {}", dir.display()))?;
        write(tmp.path()).with_context(|| format!("writing {}", path.display()))?;
        let target = real.join(path.file_name().expect("a file name"));
        let persisted = if replace {
            tmp.persist(&target).map(drop)
        } else {
            tmp.persist_noclobber(&target).map(drop)
        };
        match persisted {
            Ok(()) => Ok(path),
            Err(e) if !replace && e.error.kind() == std::io::ErrorKind::AlreadyExists => bail!(
                "{} already exists; not overwritten (use --force to overwrite)",
                path.display()
            ),
            Err(e) => Err(e.error).with_context(|| format!("writing {}", path.display())),
        }
    }

    /// Writes `bytes` as the file `relative` (see [`OutDir::write`]).
    pub fn write_bytes(&self, relative: &str, replace: bool, bytes: &[u8]) -> Result<PathBuf> {
        self.write(relative, replace, |p| {
            std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::create(&tmp.path().join("out")).unwrap();
        for bad in [
            "",
            "..",
            "../x.tif",
            "a/../../x.tif",
            "./x",
            "/etc/passwd",
            "a//b",
            "a\\..\\b",
            "x\n.tif",
        ] {
            assert!(out.path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(out.path("predictions/c0-z0-y0000-x0000.tif").is_ok());
        // A link inside the folder does not lead out of it either.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("out/link")).unwrap();
        assert!(out.write_bytes("link/x.txt", false, b"x").is_err());
        assert!(!tmp.path().join("x.txt").exists());
        // A link at the file's own name is replaced, not written through.
        std::os::unix::fs::symlink(tmp.path().join("victim"), tmp.path().join("out/v.txt"))
            .unwrap();
        assert!(out.write_bytes("v.txt", false, b"x").is_err());
        out.write_bytes("v.txt", true, b"x").unwrap();
        assert!(!tmp.path().join("victim").exists());
    }

    #[test]
    fn existing_files_are_kept_unless_replacing() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutDir::create(tmp.path()).unwrap();
        out.write_bytes("a.txt", false, b"first").unwrap();
        let e = out.write_bytes("a.txt", false, b"second").unwrap_err();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"first");
        out.write_bytes("a.txt", true, b"second").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"second");
        let leftovers = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temp files left behind");
    }
}
