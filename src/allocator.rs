//! Settings of the process's allocator (mimalloc, installed by `src/main.rs`: the system
//! allocator cost ~40 % of candle's training time on CPU, docs/ARCHITECTURE.md).

/// Both settings below, as `biodc` runs: call first in `main`.
pub fn configure() {
    keep_freed_memory();
    no_huge_pages();
}

/// mimalloc's `mi_option_purge_delay`. The option enum keeps its numbering across mimalloc
/// versions (retired options keep their slot as `deprecated_…`), and libmimalloc-sys 0.1.49
/// declares `mi_option_set` but not this constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory in the process instead of returning it to the OS after mimalloc's
/// default delay (1 s). A training step frees and reallocates hundreds of MB of activations;
/// purged, every reuse faulted in and zeroed fresh (huge) pages again: MAE pretraining of
/// ViT-S spent as much system time as user time (docs/BENCHMARKS.md). The process's resident
/// memory stays at its peak instead of shrinking between phases. `MIMALLOC_PURGE_DELAY` in the
/// environment still decides when set.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at its next purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Turns transparent huge pages off for this process (Linux), as `MIMALLOC_ALLOW_THP=0` would
/// had it been set before the process started (mimalloc reads it before `main`, and asks for
/// huge pages on the memory it reserves first). On the virtual machines measured here, the
/// first touch of a 2 MiB page cost ~6 ms, as much as all of a short run's training: MAE tiny
/// pretraining, 30 steps end to end, 58 → 92 patches/s, the steady rate unchanged (ViT-S −2 %,
/// docs/BENCHMARKS.md). `MIMALLOC_ALLOW_THP` in the environment still decides when set.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: sets a flag of this process; no memory is touched. An error (an old kernel)
        // leaves huge pages on, which is only slower.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Option 15 is the purge delay: mimalloc's default of 1000 ms until biodc sets it to -1.
    #[test]
    fn the_option_set_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("skipped: MIMALLOC_PURGE_DELAY is set in the environment");
            return;
        }
        // SAFETY: reads one integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }
}
