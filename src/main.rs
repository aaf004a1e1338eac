use clap::Parser;

// candle on CPU spends ~40 % of training time in the system allocator (docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    biodc::allocator::keep_freed_memory();
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
