//! The gRPC services. Each file implements one `hearth.v1` service on top of
//! [`Cluster`](crate::cluster::Cluster); errors become statuses only through
//! `From<Error> for Status` in `error.rs`.

pub mod admin;
pub mod node_agent;
pub mod sessions;
pub mod templates;

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

/// A boxed server stream, as every streaming RPC here returns.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
