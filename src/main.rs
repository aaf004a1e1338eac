use clap::Parser;

// candle on CPU spends ~40 % of training time in the system allocator (docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at its next purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_memory();
    // `biodc log | head`: when the reader goes away, end quietly as git and cat do, instead of
    // panicking in println! on the broken pipe.
    // SAFETY: setting a signal's disposition to the default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Before any thread or tensor exists: candle's element-wise pool spins (see the function).
    biodc::nn::checkpoint::prefer_rayon_threads();
    let cli = biodc::cli::Cli::parse();
    let code = match biodc::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<biodc::lock::Locked>().is_some() {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
