use clap::Parser;

// candle on CPU spends ~40 % of training time in the system allocator (docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The verbs that run networks run on a pool thread (`nn::device::on_a_pool_thread`); the
/// others stay on the main thread: a fetch blocks its thread on downloads while another
/// thread checks the packs on the pool, and `reproduce` sizes the pool to the recorded thread
/// count first, which works only before the pool exists.
fn run(cli: biodc::cli::Cli) -> anyhow::Result<i32> {
    if cli.verb.runs_networks() {
        biodc::nn::device::on_a_pool_thread(|| biodc::cli::run(cli))
    } else {
        biodc::cli::run(cli)
    }
}

fn main() {
    biodc::allocator::configure();
    // `biodc log | head`: when the reader goes away, end quietly as git and cat do, instead of
    // panicking in println! on the broken pipe.
    // SAFETY: setting a signal's disposition to the default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Before any thread or tensor exists: candle's element-wise pool spins (see the function).
    biodc::nn::checkpoint::prefer_rayon_threads();
    let cli = biodc::cli::Cli::parse();
    let code = match run(cli) {
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
