use clap::Parser;

// candle on CPU spends ~40 % of training time in the system allocator (docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stack of the pool's threads, one of which runs the whole command (the main thread has 8 MiB).
const POOL_STACK: usize = 16 << 20;

/// Runs a command that trains or applies networks on one of rayon's threads rather than on
/// the main thread. Every parallel operation (matrix products, the fused kernels) then starts
/// on a pool thread, which shares the work with the other and carries on, instead of handing
/// it over and waking the main thread when it is done — thousands of such hand-overs per
/// training step. MAE pretraining ran ~20 % faster (docs/BENCHMARKS.md), the same bits.
///
/// Only those verbs, and only with at least two pool threads: a command that blocks a thread
/// while another thread waits for the pool (a fetch checks downloaded packs in parallel on a
/// thread of its own while the command's thread waits on the downloads) would hold the pool's
/// only thread. `reproduce` stays on the main thread too: it sizes the pool to the recorded
/// thread count first, which works only before the pool exists.
fn run_on_a_pool_thread(cli: biodc::cli::Cli) -> anyhow::Result<i32> {
    use biodc::cli::Verb;
    let networks = matches!(
        cli.verb,
        Verb::Pretrain(_)
            | Verb::Embed(_)
            | Verb::Train(_)
            | Verb::Hunt(_)
            | Verb::Segment(_)
            | Verb::Monitor(_)
            | Verb::Demo(_)
    );
    if !networks {
        return biodc::cli::run(cli);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(POOL_STACK)
        .build_global();
    if pool.is_err() || rayon::current_num_threads() < 2 {
        return biodc::cli::run(cli);
    }
    rayon::scope(|_| biodc::cli::run(cli))
}

fn main() {
    biodc::allocator::keep_freed_memory();
    biodc::allocator::no_huge_pages();
    // `biodc log | head`: when the reader goes away, end quietly as git and cat do, instead of
    // panicking in println! on the broken pipe.
    // SAFETY: setting a signal's disposition to the default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Before any thread or tensor exists: candle's element-wise pool spins (see the function).
    biodc::nn::checkpoint::prefer_rayon_threads();
    let cli = biodc::cli::Cli::parse();
    let code = match run_on_a_pool_thread(cli) {
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
