//! Brokers on one etcd: waiting for one to lead, and a leader with a standby behind it.

use std::{path::Path, time::Duration};

use hearth_sdk::proto::v1::ClusterInfo;

use crate::{api, eventually, process::Broker};

/// Waits (up to 30 s) until the broker at `url` leads, and returns its cluster info.
pub async fn until_leads(what: &str, url: &str) -> anyhow::Result<ClusterInfo> {
    eventually(what, Duration::from_secs(30), || async {
        Ok(api::cluster_info(url).await.ok().filter(|i| i.is_leader))
    })
    .await
}

/// broker-a and broker-b on one store (`flags`): broker-a leads (its cluster info comes
/// back with it), then broker-b stands by behind it.
pub async fn leader_and_standby(
    dir: &Path,
    flags: &[&str],
) -> anyhow::Result<(Broker, ClusterInfo, Broker)> {
    leader_and_standby_with(dir, flags, flags).await
}

/// [`leader_and_standby`] with flags of its own for each broker (such as the URL it
/// advertises).
pub async fn leader_and_standby_with(
    dir: &Path,
    a_flags: &[&str],
    b_flags: &[&str],
) -> anyhow::Result<(Broker, ClusterInfo, Broker)> {
    let a = Broker::spawn(dir, "broker-a", a_flags)?;
    let first = until_leads("broker-a leads", &a.url).await?;
    let b = Broker::spawn(dir, "broker-b", b_flags)?;
    eventually("broker-b stands by", Duration::from_secs(30), || async {
        Ok(api::cluster_info(&b.url)
            .await
            .ok()
            .filter(|i| !i.is_leader && i.leader_id == "broker-a"))
    })
    .await?;
    Ok((a, first, b))
}

/// The cluster info `url` gives the admin token `admin` (for brokers with tokens).
pub async fn info_as(url: &str, admin: &str) -> anyhow::Result<ClusterInfo> {
    let client = hearth_sdk::Client::builder(url)
        .token(admin)
        .retry(hearth_sdk::RetryPolicy::never())
        .build()?;
    Ok(client
        .admin()
        .get_cluster_info(hearth_sdk::proto::v1::GetClusterInfoRequest {})
        .await?
        .into_inner())
}

/// [`until_leads`] for brokers with tokens, asking with the admin token `admin`.
pub async fn until_leads_as(what: &str, url: &str, admin: &str) -> anyhow::Result<ClusterInfo> {
    eventually(what, Duration::from_secs(30), || async {
        Ok(info_as(url, admin).await.ok().filter(|i| i.is_leader))
    })
    .await
}

/// [`leader_and_standby`] for brokers with tokens, asking with the admin token `admin`.
pub async fn leader_and_standby_as(
    dir: &Path,
    flags: &[&str],
    admin: &str,
) -> anyhow::Result<(Broker, ClusterInfo, Broker)> {
    let a = Broker::spawn(dir, "broker-a", flags)?;
    let first = until_leads_as("broker-a leads", &a.url, admin).await?;
    let b = Broker::spawn(dir, "broker-b", flags)?;
    eventually("broker-b stands by", Duration::from_secs(30), || async {
        Ok(info_as(&b.url, admin)
            .await
            .ok()
            .filter(|i| !i.is_leader && i.leader_id == "broker-a"))
    })
    .await?;
    Ok((a, first, b))
}
