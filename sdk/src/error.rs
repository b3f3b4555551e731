//! The client's error type.

use tonic::Code;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker URL could not be parsed.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The broker could not be reached.
    #[error("cannot connect to the broker at {url}: {reason} (is hearth-broker running there?)")]
    Connect {
        /// Where we dialled.
        url: String,
        /// Why it failed, with every cause.
        reason: String,
    },
    /// The TLS settings could not be used.
    #[error("invalid TLS settings for {url}: {source}")]
    Tls {
        /// The broker URL they were for.
        url: String,
        /// Why they were refused.
        source: tonic::transport::Error,
    },
    /// The token cannot be sent as a header value.
    #[error("invalid token: it must be visible ASCII with no spaces or control characters")]
    InvalidToken,
    /// The broker answered with an error, or could not be reached, after any retries.
    #[error("{rpc} failed: {}: {}", .status.code().description(), describe(.status))]
    Rpc {
        /// The RPC, such as `Sessions/CreateSession`.
        rpc: &'static str,
        /// What the broker (or the transport) said.
        status: tonic::Status,
    },
}

impl Error {
    /// The gRPC code, for errors that came from a call.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The status, for errors that came from a call.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    pub(crate) fn rpc(rpc: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Error::Rpc { rpc, status }
    }
}

/// The status message, plus its causes when the transport made it up.
pub fn describe(status: &tonic::Status) -> String {
    with_causes(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

/// `e` and its causes on one line, joined with ": ", skipping a cause whose text is
/// already shown. Many errors print their source, and some (tonic's "transport error")
/// print only a vague summary and keep the useful part in the chain.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    with_causes(e.to_string(), e.source())
}

fn with_causes(mut out: String, mut source: Option<&(dyn std::error::Error + 'static)>) -> String {
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Result with the client's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
