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
        move |status| Error::Rpc {
            rpc,
            status: transport_as_unavailable(status),
        }
    }
}

/// The status an application should act on. tonic reports a connection that broke under
/// a call (the broker died, the network dropped) as UNKNOWN "transport error" or CANCELLED
/// "connection was not ready", although gRPC's code for "could not reach the server" is
/// UNAVAILABLE. Such a status (made on this side, with a connection failure among its
/// causes; the broker never sends one) becomes UNAVAILABLE, saying the connection was lost
/// and why. Any other status, the call's own deadline included, is returned as it is.
pub fn transport_as_unavailable(status: tonic::Status) -> tonic::Status {
    if !matches!(status.code(), Code::Unknown | Code::Cancelled) || !connection_failed(&status) {
        return status;
    }
    tonic::Status::unavailable(format!(
        "the connection to the broker was lost during the call (a turn may or may not have run): {}",
        describe(&status)
    ))
}

/// True when a turn that failed with `status` certainly did not run, so sending it again
/// cannot run it twice: the broker said so (`hearth-not-run` metadata), or the request
/// never left this process (no connection could be made, or it closed first).
pub fn certainly_not_run(status: &tonic::Status) -> bool {
    status.metadata().contains_key(crate::NOT_RUN_METADATA_KEY) || crate::retry::never_sent(status)
}

/// True when a connection failure (an I/O or HTTP/2 connection error) is among the causes.
pub(crate) fn connection_failed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<std::io::Error>() || e.is::<hyper::Error>() {
            return true;
        }
        source = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_unavailable_and_says_why() {
        let mut broken = tonic::Status::unknown("transport error");
        broken.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        let s = transport_as_unavailable(broken);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("connection to the broker was lost"),
            "{s:?}"
        );
        assert!(s.message().contains("broken pipe"), "{s:?}");
        // What the broker or the workload said stays as it was.
        let own = tonic::Status::unknown("worker said no");
        assert_eq!(transport_as_unavailable(own.clone()).code(), Code::Unknown);
        let mut not_ready = tonic::Status::cancelled("operation was canceled");
        not_ready.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection reset",
        )));
        assert_eq!(
            transport_as_unavailable(not_ready).code(),
            Code::Unavailable
        );
        // The call's own deadline is not a lost connection.
        let mut expired = tonic::Status::cancelled("Timeout expired");
        expired.set_source(std::sync::Arc::new(std::fmt::Error));
        assert_eq!(transport_as_unavailable(expired).code(), Code::Cancelled);
        let refused = tonic::Status::unavailable("standby");
        assert_eq!(transport_as_unavailable(refused).message(), "standby");
    }
}
