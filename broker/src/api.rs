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

/// The answer for an RPC whose capability this broker does not have yet. Standbys redirect
/// to the leader first, so clients learn where to go even then.
pub async fn unimplemented(
    cluster: &crate::cluster::Cluster,
    rpc: &'static str,
    what: &'static str,
) -> Status {
    match cluster.require_leader().await {
        Err(e) => e.into(),
        Ok(_) => crate::error::Error::Unimplemented { rpc, what }.into(),
    }
}
