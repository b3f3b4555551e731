//! The broker's error type, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

use crate::store::{LeaderInfo, StoreError};

/// Everything a broker operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field, as named in the proto (`spec.gpus.count`).
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// The named object does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// "node", "session", ...
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The named object exists already.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// "template", ...
        kind: &'static str,
        /// Its name.
        id: String,
    },
    /// This broker is a standby; the request must go to the leader.
    #[error("{}", not_leader_message(.leader.as_ref()))]
    NotLeader {
        /// The leader, if one is known.
        leader: Option<LeaderInfo>,
    },
    /// Leadership was lost while the request was being served; retry against the leader.
    #[error("this broker lost leadership while serving the request; retry")]
    Deposed,
    /// The deployment's limits do not allow this (an image outside the allowlist, a
    /// capability the tenant may not add).
    #[error("{field}: {reason}")]
    NotAllowed {
        /// The field, as named in the proto (`spec.image`).
        field: String,
        /// What is not allowed, naming the setting that decides it.
        reason: String,
    },
    /// The object is not in a state that allows this.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No capacity (or over quota).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A node or the workload cannot be reached now; retryable.
    #[error("{0}")]
    Unavailable(String),
    /// A turn could not be sent to its node, so it certainly did not run; retryable even
    /// for a turn with side effects.
    #[error("{0}")]
    NotRun(String),
    /// A wait ran past its deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A node reported a failure, with its gRPC code.
    #[error("{message}")]
    Node {
        /// The code the node reported.
        code: Code,
        /// Its message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn not_leader_message(leader: Option<&LeaderInfo>) -> String {
    match leader {
        Some(l) => format!(
            "this broker is a standby; the leader is {} at {} (retry there)",
            l.broker_id, l.address
        ),
        None => "this broker is a standby and no leader is elected yet; retry shortly".to_owned(),
    }
}

impl Error {
    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotAllowed { .. } => Code::PermissionDenied,
            Error::NotFound { .. } => Code::NotFound,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::NotLeader { .. } | Error::Deposed => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) | Error::NotRun(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Node { code, .. } => *code,
            Error::Store(StoreError::Corrupt { .. }) => Code::Internal,
            Error::Store(_) => Code::Unavailable,
        };
        let mut status = Status::new(code, e.to_string());
        if matches!(e, Error::NotLeader { .. } | Error::NotRun(_)) {
            status.metadata_mut().insert(
                hearth_sdk::NOT_RUN_METADATA_KEY,
                tonic::metadata::MetadataValue::from_static("true"),
            );
        }
        if let Error::NotLeader {
            leader: Some(leader),
        } = &e
            && let Ok(value) = leader.address.parse()
        {
            status
                .metadata_mut()
                .insert(hearth_sdk::LEADER_METADATA_KEY, value);
        }
        status
    }
}

/// Result with the broker's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_status_names_the_leader_in_metadata() {
        let status = Status::from(Error::NotLeader {
            leader: Some(LeaderInfo {
                broker_id: "b1".into(),
                address: "http://127.0.0.1:7700".into(),
                epoch: 4,
            }),
        });
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("b1 at http://127.0.0.1:7700"));
        assert!(
            status
                .metadata()
                .contains_key(hearth_sdk::NOT_RUN_METADATA_KEY)
        );
        assert_eq!(
            status
                .metadata()
                .get(hearth_sdk::LEADER_METADATA_KEY)
                .unwrap(),
            "http://127.0.0.1:7700"
        );
    }

    #[test]
    fn codes_follow_the_design() {
        let cases = [
            (
                Error::invalid("id", "must not be empty"),
                Code::InvalidArgument,
            ),
            (
                Error::NotFound {
                    kind: "node",
                    id: "x".into(),
                },
                Code::NotFound,
            ),
            (
                Error::AlreadyExists {
                    kind: "template",
                    id: "x".into(),
                },
                Code::AlreadyExists,
            ),
            (Error::Deposed, Code::Unavailable),
            (
                Error::Store(StoreError::Unavailable("down".into())),
                Code::Unavailable,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
        // Only an answer that guarantees nothing ran says so.
        let not_run = Status::from(Error::NotRun("node n1 is disconnected".into()));
        assert_eq!(not_run.code(), Code::Unavailable);
        assert!(
            not_run
                .metadata()
                .contains_key(hearth_sdk::NOT_RUN_METADATA_KEY)
        );
        let unsure = Status::from(Error::Unavailable("node n1 went away mid-turn".into()));
        assert!(
            !unsure
                .metadata()
                .contains_key(hearth_sdk::NOT_RUN_METADATA_KEY)
        );
        let s = Status::from(Error::invalid("id", "must not be empty"));
        assert_eq!(s.message(), "invalid id: must not be empty");
    }
}
