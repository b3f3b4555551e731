//! The CLI's errors: what each failure tells the user to do, and its exit code.
//!
//! Exit codes: 0 ok, 1 an error, 2 a usage error (clap's code for bad flags, used here too
//! for flag combinations found wrong after parsing). `sessions exec` exits with the
//! command's own code instead.

use tonic::Code;

/// What a call was about, so a NOT_FOUND can name it and say where to look.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A session id.
    Session(&'a str),
    /// A node id.
    Node(&'a str),
    /// A template name.
    Template(&'a str),
    /// A token id.
    Token(&'a str),
    /// Nothing in particular (a list, a stream of events).
    None,
}

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answered at the broker URL, or the connection broke.
    #[error(
        "cannot reach the broker at {url}: {reason}\n\
         Start `hearth-broker` there, or point --broker (or HEARTH_BROKER) at a running broker."
    )]
    Unreachable {
        /// The URL dialled.
        url: String,
        /// Why, with every cause.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {id} not found; `{list}` lists {whose}")]
    NotFound {
        /// "session", "node", "template".
        kind: &'static str,
        /// Its id or name.
        id: String,
        /// The command that lists them.
        list: &'static str,
        /// "yours" or "them".
        whose: &'static str,
    },
    /// The broker refused a field; its message names the field.
    #[error("the broker refused the request: {0}")]
    InvalidArgument(String),
    /// The broker does not have this capability yet.
    #[error("this broker does not support {rpc} yet: {message}")]
    Unimplemented {
        /// The RPC, such as `Templates/CreateTemplate`.
        rpc: &'static str,
        /// What the broker said.
        message: String,
    },
    /// The broker needs credentials, or refused the ones given.
    #[error("{rpc}: {message}\nSet a token with --token (or HEARTH_TOKEN).")]
    Auth {
        /// The RPC.
        rpc: &'static str,
        /// What the broker said.
        message: String,
    },
    /// Any other error the broker answered with.
    #[error("{rpc} failed ({code}): {message}{hint}")]
    Rpc {
        /// The RPC.
        rpc: &'static str,
        /// The gRPC code, in words.
        code: &'static str,
        /// What the broker said.
        message: String,
        /// What to try, if anything useful can be said.
        hint: &'static str,
    },
    /// A session ended (FAILED, STOPPED, LOST) while the CLI waited for it.
    #[error("session {id} is {state}: {reason}")]
    SessionEnded {
        /// The session.
        id: String,
        /// Its final state, such as FAILED.
        state: String,
        /// Why, as the broker recorded it.
        reason: String,
    },
    /// Flags that parse but do not fit together (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else, already in words.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Maps an SDK error for a call about `subject` to what the user should read.
    pub fn from_sdk(e: hearth_sdk::Error, url: &str, subject: Subject<'_>) -> Self {
        match e {
            hearth_sdk::Error::Connect { url, reason } => Error::Unreachable { url, reason },
            hearth_sdk::Error::InvalidUrl { url, reason } => {
                Error::Usage(format!("invalid --broker URL {url:?}: {reason}"))
            }
            hearth_sdk::Error::InvalidToken => Error::Usage(
                "invalid --token: it must be printable ASCII, with no control characters such as line breaks"
                    .to_owned(),
            ),
            hearth_sdk::Error::Rpc { rpc, status } => Self::from_status(rpc, &status, url, subject),
            other => Error::Other(other.to_string()),
        }
    }

    /// Maps a status that `rpc` answered with.
    pub fn from_status(
        rpc: &'static str,
        status: &tonic::Status,
        url: &str,
        subject: Subject<'_>,
    ) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            // A status the transport made up (no broker answered) carries its cause.
            Code::Unavailable | Code::Unknown if std::error::Error::source(status).is_some() => {
                Error::Unreachable {
                    url: url.to_owned(),
                    reason: hearth_sdk::error::describe(status),
                }
            }
            Code::NotFound => match subject {
                Subject::Session(id) => Error::NotFound {
                    kind: "session",
                    id: id.to_owned(),
                    list: "hearth sessions ls",
                    whose: "yours",
                },
                Subject::Node(id) => Error::NotFound {
                    kind: "node",
                    id: id.to_owned(),
                    list: "hearth nodes ls",
                    whose: "them",
                },
                Subject::Template(name) => Error::NotFound {
                    kind: "template",
                    id: name.to_owned(),
                    list: "hearth templates ls",
                    whose: "yours",
                },
                Subject::Token(id) => Error::NotFound {
                    kind: "token",
                    id: id.to_owned(),
                    list: "hearth token ls",
                    whose: "them",
                },
                Subject::None => Error::Rpc {
                    rpc,
                    code: "not found",
                    message,
                    hint: "",
                },
            },
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::Unimplemented => Error::Unimplemented { rpc, message },
            Code::Unauthenticated | Code::PermissionDenied => Error::Auth { rpc, message },
            code => Error::Rpc {
                rpc,
                code: code_name(code),
                message,
                hint: match (code, subject) {
                    (Code::ResourceExhausted, _) => {
                        "\n`hearth nodes ls` shows which nodes have free GPUs."
                    }
                    (Code::AlreadyExists, Subject::Template(_)) => {
                        "\n`hearth templates update` changes an existing template."
                    }
                    (Code::Unavailable, _) => "\nThis is usually passing; try again shortly.",
                    _ => "",
                },
            },
        }
    }
}

/// A gRPC code in a few words.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Result with the CLI's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:7700";

    fn status_error(status: tonic::Status, subject: Subject<'_>) -> Error {
        Error::from_sdk(
            hearth_sdk::Error::Rpc {
                rpc: "Sessions/GetSession",
                status,
            },
            URL,
            subject,
        )
    }

    #[test]
    fn not_found_names_the_object_and_the_list_command() {
        let e = status_error(
            tonic::Status::not_found("session \"X\" not found"),
            Subject::Session("01JX"),
        );
        assert_eq!(
            e.to_string(),
            "session 01JX not found; `hearth sessions ls` lists yours"
        );
        assert_eq!(e.exit_code(), 1);
        let e = status_error(tonic::Status::not_found("no"), Subject::Node("gpu-9"));
        assert!(e.to_string().contains("`hearth nodes ls`"));
    }

    #[test]
    fn each_code_says_what_to_do() {
        let e = status_error(
            tonic::Status::invalid_argument("invalid spec.image: must not be empty"),
            Subject::None,
        );
        assert!(e.to_string().contains("invalid spec.image"), "{e}");

        let e = status_error(tonic::Status::unimplemented("not here yet"), Subject::None);
        assert!(e.to_string().contains("does not support"), "{e}");

        let e = status_error(
            tonic::Status::resource_exhausted("no node has 8 free GPUs"),
            Subject::None,
        );
        assert!(e.to_string().contains("hearth nodes ls"), "{e}");
        assert!(e.to_string().contains("(resource exhausted)"), "{e}");

        let e = status_error(tonic::Status::unauthenticated("no token"), Subject::None);
        assert!(e.to_string().contains("--token"), "{e}");
    }

    #[test]
    fn transport_failures_name_the_url_and_the_fix() {
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let e = status_error(status, Subject::None);
        let text = e.to_string();
        assert!(text.contains(URL), "{text}");
        assert!(text.contains("hearth-broker"), "{text}");
        assert!(text.contains("HEARTH_BROKER"), "{text}");

        let e = Error::from_sdk(
            hearth_sdk::Error::InvalidUrl {
                url: "nope".into(),
                reason: "it must start with http://".into(),
            },
            URL,
            Subject::None,
        );
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--broker"));
    }
}
