//! Client helpers for tests.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    ClusterInfo, GetClusterInfoRequest, GetNodeRequest, Node, admin_client::AdminClient,
};
use tonic::transport::{Channel, Endpoint};

/// A lazily connecting channel to `url` (so a test can hold it across broker restarts).
pub fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// A channel with no per-request timeout, for calls that legitimately take long (a
/// CreateSession that waits for READY, a long Exec). Tests bound them with their own
/// deadlines.
pub fn long_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_owned())
        .expect("valid URL")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// An Admin client for `url`.
pub fn admin(url: &str) -> AdminClient<Channel> {
    AdminClient::new(channel(url))
}

/// `GetClusterInfo` on `url`.
pub async fn cluster_info(url: &str) -> anyhow::Result<ClusterInfo> {
    Ok(admin(url)
        .get_cluster_info(GetClusterInfoRequest {})
        .await?
        .into_inner())
}

/// `GetNode` on `url`.
pub async fn node(url: &str, id: &str) -> Result<Node, tonic::Status> {
    admin(url)
        .get_node(GetNodeRequest { id: id.to_owned() })
        .await
        .map(|r| r.into_inner())
}
