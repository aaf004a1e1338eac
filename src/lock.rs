//! The repository write lock: `.biodc/lock`, held with an OS advisory lock (`flock`) for as
//! long as a verb writes.
//!
//! The kernel decides who holds the lock and drops it when its holder exits, is killed or
//! becomes a zombie, so two writers can never both hold it and a dead writer never keeps it:
//! there is no stale lock to detect, and the file is never removed (removing it would let a
//! second writer lock a new file while the first still holds the old one). The file holds the
//! holder's pid followed by ` flock` while it is held, for error messages only.
//!
//! A file holding a bare pid was written by an older biodc, which took the lock by creating the
//! file: such a lock is honoured while that pid is alive and taken over when it is gone.

use anyhow::{Context, Result};
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Another process holds the lock. The CLI exits with status 2 on this error.
#[derive(Debug, thiserror::Error)]
#[error("repository is locked by {} ({}){}", holder(*.pid), .path.display(), hint(*.legacy))]
pub struct Locked {
    /// The holder's pid, when the lock file already names it.
    pub pid: Option<u32>,
    pub path: PathBuf,
    /// The lock was taken by an older biodc (a bare pid in the file, no OS lock).
    pub legacy: bool,
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "another biodc process".into(),
    }
}

fn hint(legacy: bool) -> &'static str {
    if legacy {
        "; an older biodc wrote it: if that process is not biodc, delete the file"
    } else {
        "; wait for it to finish"
    }
}

/// Held while a verb writes; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct RepoLock {
    file: fs::File,
}

/// What the lock file says.
enum Content {
    Empty,
    /// `<pid> flock`: written by a holder of the OS lock (stale once we hold the OS lock).
    Held(u32),
    /// `<pid>`: written by an older biodc that did not take the OS lock.
    Legacy(u32),
    Unreadable,
}

fn parse(text: &str) -> Content {
    let mut words = text.split_whitespace();
    match (words.next(), words.next()) {
        (None, _) => Content::Empty,
        (Some(pid), Some("flock")) => pid.parse().map_or(Content::Unreadable, Content::Held),
        (Some(pid), None) => pid.parse().map_or(Content::Unreadable, Content::Legacy),
        _ => Content::Unreadable,
    }
}

impl RepoLock {
    /// Takes the lock at `path` without waiting: a live holder gives [`Locked`].
    pub fn acquire(path: &Path) -> Result<RepoLock> {
        loop {
            let mut file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let pid = match parse(&read_all(&mut file)) {
                        Content::Held(pid) | Content::Legacy(pid) => Some(pid),
                        _ => None,
                    };
                    return Err(Locked {
                        pid,
                        path: path.to_path_buf(),
                        legacy: false,
                    }
                    .into());
                }
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
            // The file may have been replaced between open and flock (someone deleted it):
            // then we locked an orphan, and must lock the file now at `path` instead.
            let same = fs::metadata(path).ok().is_some_and(|m| {
                file.metadata()
                    .is_ok_and(|f| f.ino() == m.ino() && f.dev() == m.dev())
            });
            if !same {
                continue;
            }
            match parse(&read_all(&mut file)) {
                Content::Legacy(pid) if pid != std::process::id() && process_alive(pid) => {
                    return Err(Locked {
                        pid: Some(pid),
                        path: path.to_path_buf(),
                        legacy: true,
                    }
                    .into());
                }
                Content::Legacy(pid) => eprintln!(
                    "note: taking over the lock {} of pid {pid}, which is gone",
                    path.display()
                ),
                Content::Held(_) | Content::Empty | Content::Unreadable => {}
            }
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{} flock", std::process::id())?;
            return Ok(RepoLock { file });
        }
    }
}

fn read_all(file: &mut fs::File) -> String {
    let mut text = String::new();
    if file.rewind().is_ok() {
        file.read_to_string(&mut text).ok();
    }
    text
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Emptied while still held, so nobody reads our pid once we are gone; closing the file
        // releases the OS lock.
        self.file.set_len(0).ok();
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn second_holder_is_refused_and_stale_lock_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = RepoLock::acquire(&path).unwrap();
        let err = RepoLock::acquire(&path).unwrap_err();
        let locked = err.downcast_ref::<Locked>().unwrap();
        assert_eq!(locked.pid, Some(std::process::id()));
        drop(held);
        fs::write(&path, "999999999\n").unwrap();
        let _ = RepoLock::acquire(&path).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_killed_holder_is_free_and_a_live_legacy_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        // A holder killed with the lock: its pid stays in the file, the OS lock is gone.
        fs::write(&path, format!("{} flock\n", std::process::id())).unwrap();
        drop(RepoLock::acquire(&path).unwrap());
        // Even an empty or half-written file is no lock by itself.
        fs::write(&path, "").unwrap();
        drop(RepoLock::acquire(&path).unwrap());
        // An older biodc's lock that names a live process is honoured.
        fs::write(&path, "1\n").unwrap(); // pid 1 is always alive
        let err = RepoLock::acquire(&path).unwrap_err();
        let locked = err.downcast_ref::<Locked>().unwrap();
        assert!(locked.legacy && locked.pid == Some(1));
    }

    #[test]
    fn threads_racing_for_the_lock_never_hold_it_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let inside = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let taken = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..200 {
                        if let Ok(lock) = RepoLock::acquire(&path) {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            taken.fetch_add(1, Ordering::SeqCst);
                            std::thread::yield_now();
                            inside.fetch_sub(1, Ordering::SeqCst);
                            drop(lock);
                        }
                    }
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(taken.load(Ordering::SeqCst) > 0);
    }
}
