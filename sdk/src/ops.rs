//! Operational pieces shared by `hearth-broker` and `hearth-agent`: the admin HTTP server
//! (`/live`, `/ready`, `/metrics`) and tracing set-up (console plus optional OTLP).

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    http::header,
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};

/// What the admin endpoints report.
#[derive(Clone)]
pub struct AdminState {
    /// Metrics served at `/metrics`.
    pub registry: Arc<Registry>,
    /// `/ready` answers 200 while this is true, 503 otherwise.
    pub ready: watch::Receiver<bool>,
    /// `/ready?standby=ok` also answers 200 while this is true: a broker standby that
    /// can reach its store, ready to take over. Orchestrators probe that form, because a
    /// replica that is never Ready blocks rolling updates and disruption budgets. `None`
    /// where there is no standby role (the agent): the query changes nothing.
    pub standby: Option<watch::Receiver<bool>>,
}

/// Serves the admin HTTP endpoints on `listener` until `shutdown` completes. `extra` is
/// merged in, so a binary can add its own routes (the broker's dashboard, say).
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(extra);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(
    State(state): State<AdminState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> impl IntoResponse {
    // `standby=ok`: a healthy standby counts as ready too.
    let standby_ok = match query.get("standby").map(String::as_str) {
        None => false,
        Some("ok") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("standby={other:?}: the only value is \"ok\"\n"),
            );
        }
    };
    if *state.ready.borrow() {
        (StatusCode::OK, "ready\n".to_owned())
    } else if standby_ok && state.standby.as_ref().is_some_and(|s| *s.borrow()) {
        (StatusCode::OK, "ready (standby)\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned())
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Keeps the OTLP exporter alive; dropping it flushes pending spans.
pub struct TracingGuard {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Sets up `tracing`: human-readable (or JSON) logs filtered by `RUST_LOG` (default
/// `info`), and, when `otlp_endpoint` is given, spans exported over OTLP/gRPC.
pub fn init_tracing(
    service: &'static str,
    json: bool,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<TracingGuard> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let (otel, provider) = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(TracingGuard { provider })
}

use tracing_subscriber::Layer as _;
