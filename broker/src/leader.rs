//! Leader election and the leader-only background work.
//!
//! The broker campaigns in the store; on winning it loads the node records and starts
//! acting as leader (agent streams, liveness, fenced writes). When its leadership is lost
//! (the lease lapsed, or a fenced write found another leader) it drops to standby at once
//! and campaigns again. On shutdown it resigns, so a standby takes over without waiting
//! for the lease to lapse.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, Role};

/// Pause after a failed campaign or take-over before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Campaigns, leads and campaigns again until `shutdown`.
pub async fn run(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let ttl = cluster.config.store.leader_ttl;
    loop {
        let campaign = cluster
            .store
            .campaign(&cluster.broker_id, &cluster.advertise_url, ttl);
        let leadership = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = campaign => r,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "campaign failed; retrying");
                if sleep_or_shutdown(RETRY, &shutdown).await {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = cluster.become_leader(&leadership).await {
            tracing::warn!(error = %e, "could not take over as leader; resigning and retrying");
            let _ = cluster.store.resign(&leadership).await;
            cluster.become_standby("take-over failed");
            if sleep_or_shutdown(RETRY, &shutdown).await {
                return;
            }
            continue;
        }
        tracing::info!(epoch = leadership.epoch, "leading");
        tokio::select! {
            _ = leadership.lost.cancelled() => {
                tracing::warn!(epoch = leadership.epoch, "leadership lost; now a standby");
                cluster.become_standby("leadership lost");
            }
            _ = shutdown.cancelled() => {
                cluster.become_standby("shutting down");
                if let Err(e) = cluster.store.resign(&leadership).await {
                    tracing::warn!(error = %e, "could not resign; a standby takes over once the lease lapses");
                }
                return;
            }
        }
    }
}

/// Runs the liveness checks while this broker leads; sessions on a node that went DOWN
/// are marked LOST.
pub async fn check_liveness(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let period = (cluster.config.liveness.suspect_after / 20)
        .clamp(Duration::from_millis(20), Duration::from_millis(500));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Role::Leader(leader) = cluster.role() {
            if let Err(e) = cluster.nodes.check_liveness(&leader).await {
                tracing::warn!(error = %e, "liveness check could not record a change");
            }
            cluster.sessions.lose_on_down_nodes(&cluster, &leader).await;
        }
    }
}

/// Applies idle and lifetime policy to sessions, flushes their activity, and moves
/// drains along, while this broker leads.
pub async fn check_sessions(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Role::Leader(leader) = cluster.role() {
            let flush = last_flush.elapsed() >= crate::sessions::ACTIVITY_FLUSH;
            if flush {
                last_flush = tokio::time::Instant::now();
            }
            cluster.sessions.check_idle(&cluster, &leader, flush).await;
            cluster.sessions.restart_due(&cluster, &leader);
            cluster.drains.tick(&cluster, &leader);
        }
    }
}

/// Keeps warm pools full while this broker leads: a pass on a short timer, and at once
/// when a claim, a member ending or a template change wakes it.
pub async fn fill_pools(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = cluster.pools.woken() => {}
            _ = tokio::time::sleep(crate::pools::RECONCILE_PERIOD) => {}
        }
        if let Role::Leader(leader) = cluster.role() {
            crate::pools::reconcile(&cluster, &leader).await;
        }
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
