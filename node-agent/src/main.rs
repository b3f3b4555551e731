//! `hearth-agent`: parse the configuration, set up tracing, bind the admin port, and run the
//! agent until Ctrl-C or SIGTERM.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use hearth_agent::config::{Cli, Config};

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hearth-agent: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line (with its causes) for the operator, not a backtrace.
            eprintln!("hearth-agent: {}", hearth_agent::report(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn agent() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let print_config = cli.print_config;
    let config = Config::load(cli)?;
    if print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }

    let _tracing = hearth_sdk::ops::init_tracing(
        "hearth-agent",
        config.log_json,
        config.otlp_endpoint.as_deref(),
    )?;
    let listener = tokio::net::TcpListener::bind(config.admin_addr)
        .await
        .with_context(|| format!("cannot listen on admin_addr {}", config.admin_addr))?;
    hearth_agent::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what systemd, Docker and Kubernetes send).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
