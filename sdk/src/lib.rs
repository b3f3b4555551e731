//! The Rust side of Hearth's v1 API.
//!
//! `proto/hearth/v1/*.proto` is the language-neutral contract; this crate generates the
//! Rust types and gRPC clients from it at build time (protoc is vendored, so nothing needs
//! installing). The `server` feature adds the server stubs plus the few operational pieces
//! that both `hearth-broker` and `hearth-agent` share.
//!
//! # Layout
//! - `proto`: the generated `hearth.v1` package and its file descriptor set (for reflection).
//! - `client`: [`Client`], a typed handle over the three user-facing services.
//! - `time`: conversions between protobuf timestamps/durations and std types.
//! - `ops` (feature `server`): admin HTTP (`/live`, `/ready`, `/metrics`) and tracing set-up.
#![forbid(unsafe_code)]

pub mod client;
#[cfg(feature = "server")]
pub mod ops;
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

pub use client::{Client, ClientError};

/// The version every Hearth binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Response metadata key in which a standby broker names the leader's address.
pub const LEADER_METADATA_KEY: &str = "hearth-leader";
