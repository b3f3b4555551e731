//! `hearth`: parse the command line, run it, exit with its code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = hearth_cli::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(hearth_cli::run(cli))
}
