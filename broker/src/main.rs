//! `hearth-broker`: parse config, set up telemetry, bind, run.

use clap::Parser as _;
use hearth_broker::config::{Args, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::load(Args::parse())?;
    let _tracing = hearth_sdk::ops::init_tracing(
        "hearth-broker",
        config.log_json,
        config.otlp_endpoint.as_deref(),
    )?;
    let grpc = bind(config.grpc_addr, "grpc_addr").await?;
    let admin = bind(config.admin_addr, "admin_addr").await?;
    hearth_broker::run(config, grpc, admin, shutdown_signal()).await
}

async fn bind(
    addr: std::net::SocketAddr,
    setting: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({setting}): {e}"))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the broker");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
