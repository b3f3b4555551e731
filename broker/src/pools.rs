//! Warm pools: a template with `warm_pool: N` keeps N READY, unclaimed sessions, and
//! `CreateSession(template=…)` claims one at once.
//!
//! Members are ordinary sessions booked with a pool key (see `sessions.rs`), so they hold
//! their GPUs, show in `Admin.ListSessions` (with the `hearth.pool` label and their
//! template) and survive a broker restart: the new leader rebuilds the pools from the
//! store before it reconciles, so it never refills what already exists.
//!
//! The leader reconciles every pool on a short timer and whenever something changes (a
//! claim, a member ending, a template write). Each pass, per template: members made from
//! an older spec are stopped (a claim must get the current spec), extras above the pool
//! size are stopped (the least warm first), and missing members are booked. Booking is
//! quick (placement and one transaction); the start runs in its own task. A failure to
//! fill (no capacity, a start or readiness failure) backs the template off exponentially
//! and emits `pool.fill_failed`, so a pool that cannot fill never spins.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hearth_sdk::proto::v1::{NodeState, Session, SessionState, Template};
use tokio::sync::Notify;

use crate::{
    cluster::{Cluster, LeaderState},
    convert,
    error::{Error, Result},
    sessions::{Booked, Launch},
    templates::{Stored, TemplateId},
};

/// Time between reconciler passes when nothing wakes it sooner.
pub const RECONCILE_PERIOD: Duration = Duration::from_millis(500);
/// Wait after the first failure to fill a pool; doubled per further failure.
pub const FILL_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between tries to fill a pool.
pub const FILL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Members a claim tries before it starts a session cold instead.
const CLAIM_TRIES: usize = 3;

/// The wait before the next try after `failures` failures in a row (at least one).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FILL_BACKOFF_MIN * 2u32.pow(doublings)).min(FILL_BACKOFF_MAX)
}

#[derive(Debug, Default)]
struct FillState {
    failures: u32,
    retry_at: Option<Instant>,
}

/// The leader's warm-pool bookkeeping: fill backoff per template, and the reconciler's
/// wake-up.
#[derive(Default)]
pub struct Pools {
    fills: Mutex<HashMap<TemplateId, FillState>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pools {
    /// Asks for a reconciler pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until `wake` is called (a call made before this waits is not lost).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Forgets everything (leadership lost).
    pub fn clear(&self) {
        lock(&self.fills).clear();
    }

    /// Forgets a template's backoff (it was updated or deleted: try afresh).
    pub fn forget(&self, template: &TemplateId) {
        lock(&self.fills).remove(template);
    }

    /// A member became READY: the pool fills again, so its backoff ends.
    pub fn filled(&self, cluster: &Cluster, template: &TemplateId) {
        let failures = lock(&self.fills).remove(template).map_or(0, |f| f.failures);
        if failures > 0 {
            cluster.events.emit(
                "pool.recovered",
                "",
                "",
                format!(
                    "template {}: a warm-pool member is READY after {failures} failed tries to fill",
                    template.1
                ),
            );
        }
    }

    /// A try to fill a template's pool failed: the next one waits, longer each time.
    pub fn fill_failed(&self, cluster: &Cluster, template: &TemplateId, reason: &str) {
        let wait = {
            let mut fills = lock(&self.fills);
            let f = fills.entry(template.clone()).or_default();
            f.failures += 1;
            let wait = backoff(f.failures);
            f.retry_at = Some(Instant::now() + wait);
            wait
        };
        cluster.metrics.pool_fill_failures_total.inc();
        tracing::warn!(
            template = template.1,
            tenant = template.0,
            "cannot fill the warm pool: {reason}"
        );
        cluster.events.emit(
            "pool.fill_failed",
            "",
            "",
            format!(
                "template {}: cannot fill its warm pool: {reason}; next try in {}",
                template.1,
                humantime::format_duration(wait)
            ),
        );
    }

    fn may_fill(&self, template: &TemplateId) -> bool {
        lock(&self.fills)
            .get(template)
            .and_then(|f| f.retry_at)
            .is_none_or(|at| Instant::now() >= at)
    }
}

/// The template as the API shows it, with `pool_ready` filled in.
pub fn describe(cluster: &Cluster, stored: &Stored) -> Template {
    let mut t = stored.template.clone();
    t.pool_ready = cluster.sessions.pool_ready(&stored.id(), &stored.spec.spec);
    t
}

/// `CreateSession(template=…)`: claims a free member of the template's pool (READY if
/// any, else one still starting), or starts a session cold from the template's spec.
/// `Session.template` is set either way.
pub async fn create_from_template(
    cluster: &Arc<Cluster>,
    leader: &LeaderState,
    tenant: &str,
    name: &str,
    labels: &std::collections::HashMap<String, String>,
    request_id: &str,
    no_wait: bool,
) -> Result<Session> {
    convert::template_name("template", name)?;
    let labels: BTreeMap<String, String> = convert::session_labels(labels)?;
    convert::request_id(request_id)?;
    let template = cluster.templates.get(tenant, name)?;
    // Again at each use: the limits may have been tightened since the template was written.
    cluster
        .config
        .check_spec(tenant, "template.spec", &template.spec.spec)?;
    let ready_timeout = template.spec.ready_timeout;
    let sessions = &cluster.sessions;
    if let Some(earlier) = sessions
        .retried(cluster, tenant, request_id, no_wait, ready_timeout)
        .await?
    {
        return Ok(earlier);
    }
    // Only a create that makes (or claims) a session counts: a retry is answered above.
    cluster
        .quotas
        .admit_create(&*cluster.store, leader.epoch, tenant)
        .await?;
    let id = template.id();
    let usable = |node: &str| cluster.nodes.state(node) == Some(NodeState::Ready);
    for _ in 0..CLAIM_TRIES {
        let Some(entry) = sessions.pick_member(&id, &template.spec.spec, usable) else {
            break;
        };
        // The claim runs in its own task: a caller that goes away mid-claim must not
        // leave the member marked busy, or its record written but not its memory.
        let claim = {
            let (cluster, leader, labels) = (cluster.clone(), leader.clone(), labels.clone());
            let request_id = request_id.to_owned();
            tokio::spawn(async move {
                cluster
                    .sessions
                    .claim(&cluster, &leader, &entry, &labels, &request_id)
                    .await
            })
        };
        let claimed = claim
            .await
            .map_err(|e| Error::Unavailable(format!("the claim did not finish: {e}")))??;
        if let Some(session) = claimed {
            cluster.metrics.pool_claims_total.inc();
            let warm = if session.state() == SessionState::Ready {
                "READY"
            } else {
                "still starting"
            };
            cluster.events.emit(
                "pool.claimed",
                &session.node_id,
                &session.id,
                format!(
                    "session {} claimed from the warm pool of template {name} ({warm})",
                    session.id
                ),
            );
            cluster.pools.wake();
            return sessions
                .finish_create(cluster, session, no_wait, ready_timeout)
                .await;
        }
        // The member changed under us (it failed or was stopped), or an earlier try of
        // this request won the race.
        if let Some(earlier) = sessions
            .retried(cluster, tenant, request_id, no_wait, ready_timeout)
            .await?
        {
            return Ok(earlier);
        }
    }
    cluster.metrics.pool_misses_total.inc();
    if template.template.warm_pool > 0 {
        cluster.events.emit(
            "pool.miss",
            "",
            "",
            format!("template {name}: no free warm-pool member; starting a session cold"),
        );
    }
    let launch = Launch {
        tenant: tenant.to_owned(),
        spec: template.spec.clone(),
        labels,
        template: name.to_owned(),
        request_id: request_id.to_owned(),
        pool: false,
    };
    sessions.launch(cluster, leader, launch, no_wait).await
}

/// Deletes a template and stops its unclaimed pool members; returns how many.
pub async fn delete_template(
    cluster: &Cluster,
    leader: &LeaderState,
    tenant: &str,
    name: &str,
) -> Result<u32> {
    let _writes = cluster.templates.writes.lock().await;
    let stored = cluster
        .templates
        .delete(cluster, leader, tenant, name)
        .await?;
    let id = stored.id();
    cluster.pools.forget(&id);
    let stopped = retire_all(cluster, leader, &id, "its template was deleted").await;
    cluster.events.emit(
        "template.deleted",
        "",
        "",
        format!("template {name} deleted; {stopped} unclaimed warm-pool members stopped"),
    );
    Ok(stopped)
}

/// Stops every unclaimed member of a template's pool; returns how many were stopped.
async fn retire_all(
    cluster: &Cluster,
    leader: &LeaderState,
    template: &TemplateId,
    why: &str,
) -> u32 {
    let members: Vec<_> = cluster
        .sessions
        .pool_members(template)
        .into_iter()
        .map(|(entry, _)| (entry, why.to_owned()))
        .collect();
    retire(cluster, leader, template, members).await
}

async fn retire(
    cluster: &Cluster,
    leader: &LeaderState,
    template: &TemplateId,
    members: Vec<(Arc<crate::sessions::Entry>, String)>,
) -> u32 {
    let stops = members.iter().map(|(entry, why)| async move {
        let why = format!("warm pool of template {}: {why}", template.1);
        cluster.sessions.retire(cluster, leader, entry, &why).await
    });
    let mut stopped = 0;
    for outcome in futures::future::join_all(stops).await {
        match outcome {
            Ok(true) => stopped += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(
                template = template.1,
                error = %e,
                "could not stop a warm-pool member; will retry"
            ),
        }
    }
    stopped
}

/// One reconciler pass over every pool. Holds the template write lock, so no template
/// changes under it.
pub async fn reconcile(cluster: &Arc<Cluster>, leader: &LeaderState) {
    let _writes = cluster.templates.writes.lock().await;
    cluster.sessions.drop_stale_pool_keys(cluster, leader).await;
    let templates = cluster.templates.list(None);
    let known: HashSet<TemplateId> = templates.iter().map(|t| t.id()).collect();
    for orphan in cluster.sessions.pooled_templates().difference(&known) {
        retire_all(cluster, leader, orphan, "its template was deleted").await;
    }
    for template in templates {
        if leader.lost.is_cancelled() {
            return;
        }
        reconcile_pool(cluster, leader, &template).await;
    }
}

/// Which members to keep and which to stop, in order of preference: members with the
/// template's current spec are kept, READY before starting and the longest warm first,
/// up to the pool size. Returns (kept, stopped with the reason).
pub fn plan(members: Vec<Session>, template: &Stored) -> (Vec<Session>, Vec<(Session, String)>) {
    let want = template.template.warm_pool as usize;
    let (mut current, stale): (Vec<Session>, Vec<Session>) = members
        .into_iter()
        .partition(|s| s.spec.as_ref() == Some(&template.spec.spec));
    let mut stop: Vec<(Session, String)> = stale
        .into_iter()
        .map(|s| (s, "made from an older spec of the template".to_owned()))
        .collect();
    current.sort_by(|a, b| {
        let warm = |s: &Session| s.state() != SessionState::Ready;
        (warm(a), &a.id).cmp(&(warm(b), &b.id))
    });
    if current.len() > want {
        let why = format!("the pool size is now {want}");
        stop.extend(
            current
                .split_off(want)
                .into_iter()
                .map(|s| (s, why.clone())),
        );
    }
    (current, stop)
}

async fn reconcile_pool(cluster: &Arc<Cluster>, leader: &LeaderState, template: &Stored) {
    let id = template.id();
    let members = cluster.sessions.pool_members(&id);
    let entries: HashMap<String, Arc<crate::sessions::Entry>> = members
        .iter()
        .map(|(e, s)| (s.id.clone(), e.clone()))
        .collect();
    let (kept, stop) = plan(members.into_iter().map(|(_, s)| s).collect(), template);
    if !stop.is_empty() {
        let stop = stop
            .into_iter()
            .filter_map(|(s, why)| entries.get(&s.id).map(|e| (e.clone(), why)))
            .collect();
        retire(cluster, leader, &id, stop).await;
    }
    let want = template.template.warm_pool as usize;
    let missing = want.saturating_sub(kept.len());
    if missing == 0 || !cluster.pools.may_fill(&id) {
        return;
    }
    let name = &template.template.name;
    if let Err(e) = cluster
        .config
        .check_spec(&id.0, "template.spec", &template.spec.spec)
    {
        cluster.pools.fill_failed(cluster, &id, &e.to_string());
        return;
    }
    for n in 0..missing {
        let launch = Launch {
            tenant: id.0.clone(),
            spec: template.spec.clone(),
            labels: [(convert::POOL_LABEL.to_owned(), name.clone())].into(),
            template: name.clone(),
            request_id: String::new(),
            pool: true,
        };
        match cluster.sessions.book(cluster, leader, launch).await {
            Ok(Booked::New(entry)) => {
                cluster.metrics.pool_fills_total.inc();
                let s = entry.snapshot();
                cluster.events.emit(
                    "pool.fill",
                    &s.node_id,
                    &s.id,
                    format!(
                        "template {name}: starting warm-pool member {} on {} ({} of {want})",
                        s.id,
                        s.node_id,
                        kept.len() + n + 1
                    ),
                );
                let (cluster, leader) = (cluster.clone(), leader.clone());
                tokio::spawn(async move {
                    // A failed start marks the member FAILED, which backs the pool off.
                    if let Err(e) = cluster.sessions.start(&cluster, &leader, &entry).await {
                        tracing::debug!(error = %e, "a warm-pool member did not start");
                    }
                });
            }
            Ok(Booked::Earlier(_)) => {}
            Err(e) => {
                cluster.pools.fill_failed(cluster, &id, &e.to_string());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hearth_sdk::proto::v1::SessionSpec;

    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(6), FILL_BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), FILL_BACKOFF_MAX);
        assert_eq!(backoff(0), FILL_BACKOFF_MIN);
    }

    fn template(warm_pool: u32, image: &str) -> Stored {
        let spec = convert::session_spec(Some(SessionSpec {
            image: image.into(),
            ..SessionSpec::default()
        }))
        .unwrap();
        Stored {
            template: Template {
                name: "t".into(),
                tenant: "default".into(),
                spec: Some(spec.spec.clone()),
                warm_pool,
                ..Template::default()
            },
            spec,
            revision: 1,
        }
    }

    fn member(id: &str, state: SessionState, t: &Stored) -> Session {
        let mut s = Session {
            id: id.into(),
            spec: Some(t.spec.spec.clone()),
            ..Session::default()
        };
        s.set_state(state);
        s
    }

    fn ids(v: &[Session]) -> Vec<&str> {
        v.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn a_short_pool_keeps_everything() {
        let t = template(3, "/bin/worker");
        let (kept, stop) = plan(vec![member("a", SessionState::Ready, &t)], &t);
        assert_eq!(ids(&kept), ["a"]);
        assert!(stop.is_empty());
    }

    #[test]
    fn a_smaller_pool_stops_the_least_warm_extras() {
        let t = template(2, "/bin/worker");
        let members = vec![
            member("a", SessionState::Starting, &t),
            member("b", SessionState::Ready, &t),
            member("c", SessionState::Ready, &t),
            member("d", SessionState::Ready, &t),
        ];
        let (kept, stop) = plan(members, &t);
        assert_eq!(ids(&kept), ["b", "c"]);
        let stopped: Vec<&str> = stop.iter().map(|(s, _)| s.id.as_str()).collect();
        assert_eq!(stopped, ["d", "a"]);
        assert!(stop[0].1.contains("pool size is now 2"));
    }

    #[test]
    fn members_of_an_older_spec_are_replaced() {
        let old = template(2, "/bin/old");
        let new = template(2, "/bin/new");
        let members = vec![
            member("a", SessionState::Ready, &old),
            member("b", SessionState::Ready, &new),
        ];
        let (kept, stop) = plan(members, &new);
        assert_eq!(ids(&kept), ["b"]);
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0].0.id, "a");
        assert!(stop[0].1.contains("older spec"));
    }

    #[test]
    fn a_zero_pool_stops_every_member() {
        let t = template(0, "/bin/worker");
        let (kept, stop) = plan(vec![member("a", SessionState::Ready, &t)], &t);
        assert!(kept.is_empty());
        assert_eq!(stop.len(), 1);
    }
}
