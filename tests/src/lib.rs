//! End-to-end harness: real etcd, brokers and agents on ephemeral ports.
//!
//! # Layout
//! - `etcd.rs`: starts a real etcd server per test (fails loudly in CI when missing).
//! - `process.rs`: `hearth-broker` / `hearth-agent` processes on free ports, `kill -9`.
//! - `eventually.rs`: polling with a deadline.
//! - `api.rs`: small client helpers over the generated gRPC clients.

pub mod api;
pub mod etcd;
pub mod eventually;
pub mod images;
pub mod process;

pub use eventually::eventually;
