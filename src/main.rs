use clap::Parser;

fn main() {
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
