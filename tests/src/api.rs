//! Client helpers for tests.

use std::time::Duration;

use hearth_sdk::proto::v1::{
    ClusterInfo, GetClusterInfoRequest, GetNodeRequest, InvokeRequest, Node,
    admin_client::AdminClient, invoke_response, sessions_client::SessionsClient,
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

/// Waits (up to 30 s) until the broker at `url` has node `id` READY, and returns it.
pub async fn node_ready(url: &str, id: &str) -> anyhow::Result<Node> {
    node_ready_within(url, id, Duration::from_secs(30)).await
}

/// Waits up to `deadline` until the broker at `url` has node `id` READY, and returns it.
pub async fn node_ready_within(url: &str, id: &str, deadline: Duration) -> anyhow::Result<Node> {
    crate::eventually(&format!("node {id} READY"), deadline, || async {
        Ok(node(url, id)
            .await
            .ok()
            .filter(|n| n.state() == hearth_sdk::proto::v1::NodeState::Ready))
    })
    .await
}

/// Waits (up to 30 s) until `node` is READY, asking through `admin` (an SDK client with
/// an admin token, for brokers that require tokens).
pub async fn node_ready_as(admin: &hearth_sdk::Client, node: &str) -> anyhow::Result<()> {
    crate::eventually(
        &format!("node {node} READY"),
        Duration::from_secs(30),
        || async {
            let nodes = admin
                .admin()
                .list_nodes(hearth_sdk::proto::v1::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            Ok(nodes
                .iter()
                .any(|n| n.id == node && n.state() == hearth_sdk::proto::v1::NodeState::Ready)
                .then_some(()))
        },
    )
    .await
}

/// One Invoke turn on port 8080, collected: the status and the whole body.
pub async fn invoke(
    client: &mut SessionsClient<Channel>,
    session_id: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u32, Vec<u8>), tonic::Status> {
    invoke_request(
        client,
        InvokeRequest {
            session_id: session_id.to_owned(),
            port: 8080,
            method: method.to_owned(),
            path: path.to_owned(),
            body,
            ..InvokeRequest::default()
        },
    )
    .await
}

/// One Invoke turn as the caller built it (with its own deadline or timeout), collected:
/// the status and the whole body.
pub async fn invoke_request(
    client: &mut SessionsClient<Channel>,
    request: impl tonic::IntoRequest<InvokeRequest>,
) -> Result<(u32, Vec<u8>), tonic::Status> {
    let mut stream = client.invoke(request).await?.into_inner();
    let mut status = 0;
    let mut out = Vec::new();
    while let Some(piece) = stream.message().await? {
        match piece.event {
            Some(invoke_response::Event::Head(h)) => status = h.status,
            Some(invoke_response::Event::Body(b)) => out.extend_from_slice(&b),
            None => {}
        }
    }
    Ok((status, out))
}

/// A top-level scalar field of a small flat JSON object (the test worker's `/state`),
/// as text.
pub fn json_field(body: &[u8], field: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let at = text.find(&format!("\"{field}\":"))? + field.len() + 3;
    let rest = text[at..].trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().trim_matches('"').to_owned())
}

/// One unlabelled sample from the `/metrics` of the admin HTTP address `admin`
/// (`host:port`); `None` when it cannot be read or has no such sample.
pub async fn metric(admin: &str, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
