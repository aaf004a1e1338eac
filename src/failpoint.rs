//! Crash-test hooks. With `BIODC_FAILPOINT=<name>` in the environment, the process kills itself
//! with SIGKILL when it reaches [`hit`]`(<name>)`; `<name>:<n>` kills at the n-th hit (1-based).
//! Tests use this to check that a verb killed at any point leaves a repository `fsck` accepts.

use std::sync::atomic::{AtomicUsize, Ordering};

static HITS: AtomicUsize = AtomicUsize::new(0);

/// Returns an error if `BIODC_FAIL_WITH_ERROR=<name>` is set: lets tests check that a verb
/// failing midway (after it wrote objects) removes what it wrote.
pub fn error(name: &str) -> anyhow::Result<()> {
    match std::env::var("BIODC_FAIL_WITH_ERROR") {
        Ok(armed) if armed == name => anyhow::bail!("failpoint {name} fired"),
        _ => Ok(()),
    }
}

/// Kills the process if the failpoint `name` is armed.
pub fn hit(name: &str) {
    let Ok(spec) = std::env::var("BIODC_FAILPOINT") else {
        return;
    };
    let (armed, nth) = match spec.rsplit_once(':') {
        Some((n, k)) if k.chars().all(|c| c.is_ascii_digit()) => (n, k.parse().unwrap_or(1)),
        _ => (spec.as_str(), 1),
    };
    if armed == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == nth {
        // SAFETY: sending a signal to ourselves has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
