//! The Rust side of Hearth's v1 API.
//!
//! `proto/hearth/v1/*.proto` is the language-neutral contract; this crate generates the
//! Rust types and gRPC clients from it at build time (protoc is vendored, so nothing needs
//! installing). The `server` feature adds the server stubs plus the few operational pieces
//! that both `hearth-broker` and `hearth-agent` share.
//!
//! # Layout
//! - `proto`: the generated `hearth.v1` package and its file descriptor set (for reflection).
//! - `client`: [`Client`], a connection to a broker (or a list of brokers) with tokens,
//!   TLS, retries of `UNAVAILABLE` with backoff, and leader redirects.
//! - `route`: which broker of the list a client uses, and where it goes when that one
//!   cannot be dialled or a standby names the leader.
//! - `session`: [`Session`], a handle on one session with a background keep-alive, and
//!   its turns ([`Exec`], [`Invoke`]).
//! - `retry`: [`RetryPolicy`] and what is safe to retry.
//! - `image`: container image references spelled one way (placement and credentials
//!   compare them).
//! - `size`: human byte sizes (`80GiB`) for flags and config files.
//! - `time`: conversions between protobuf timestamps/durations and std types.
//! - `ops` (feature `server`): admin HTTP (`/live`, `/ready`, `/metrics`) and tracing set-up.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod image;
#[cfg(feature = "server")]
pub mod ops;
pub mod retry;
pub mod route;
pub mod session;
pub mod size;
pub mod time;

/// Generated code for the `hearth.v1` package.
pub mod proto {
    /// Everything in `proto/hearth/v1/`.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("hearth.v1");

        /// The encoded `FileDescriptorSet` of every v1 file and its imports, for server
        /// reflection.
        pub const FILE_DESCRIPTOR_SET: &[u8] =
            include_bytes!(concat!(env!("OUT_DIR"), "/hearth_v1_descriptor.bin"));
    }
}

pub use client::{Client, ClientBuilder, Create};
pub use error::{Error, Result};
pub use retry::RetryPolicy;
pub use session::{Exec, ExecOutput, HttpResponse, Invoke, Session, TurnStream};

/// The version every Hearth binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Response metadata key in which a standby broker names the leader's address.
pub const LEADER_METADATA_KEY: &str = "hearth-leader";

/// Response metadata key set on an `UNAVAILABLE` answer when the broker guarantees that
/// the request was not acted on (a standby; a turn whose node is not connected), so a
/// client may send it again even when it is not idempotent.
pub const NOT_RUN_METADATA_KEY: &str = "hearth-not-run";
