//! The repository write lock: `.biodc/lock`, created exclusively, holding the owner's pid.

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Another process holds the lock. The CLI exits with status 2 on this error.
#[derive(Debug, thiserror::Error)]
#[error("repository is locked by pid {pid} ({path}); if that process is gone, remove the file")]
pub struct Locked {
    pub pid: u32,
    pub path: PathBuf,
}

/// Held while a verb writes; released on drop.
#[derive(Debug)]
pub struct RepoLock {
    path: PathBuf,
}

impl RepoLock {
    /// Takes the lock at `path`. A lock left by a dead process is recovered (with a note on
    /// stderr); a live holder gives [`Locked`].
    pub fn acquire(path: &Path) -> Result<RepoLock> {
        for _ in 0..2 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
            {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id())?;
                    f.sync_all()?;
                    return Ok(RepoLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let pid = fs::read_to_string(path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u32>().ok());
                    match pid {
                        Some(pid) if process_alive(pid) => {
                            return Err(Locked {
                                pid,
                                path: path.to_path_buf(),
                            }
                            .into())
                        }
                        _ => {
                            eprintln!(
                                "note: removing stale lock {} (pid {} is gone)",
                                path.display(),
                                pid.map_or("?".into(), |p| p.to_string())
                            );
                            fs::remove_file(path).ok();
                        }
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        anyhow::bail!("could not take the lock {}", path.display())
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        fs::remove_file(&self.path).ok();
    }
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_stale_lock_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = RepoLock::acquire(&path).unwrap();
        let err = RepoLock::acquire(&path).unwrap_err();
        assert!(err.downcast_ref::<Locked>().is_some());
        drop(held);
        fs::write(&path, "999999999\n").unwrap();
        let _ = RepoLock::acquire(&path).unwrap();
    }
}
