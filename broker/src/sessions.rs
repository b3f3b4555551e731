//! Sessions: their records, lifecycle (DESIGN section 3) and idle policy.
//!
//! The leader keeps every live session in memory, so a turn finds its node and workload
//! without touching the store. Lifecycle changes are written at once through fenced
//! transactions; activity (last turn, turns served) is flushed in batches. A session's
//! record and its GPU allocation keys are created in one transaction that requires the
//! keys to be absent, so two creates can never book the same GPU.
//!
//! Start: PLACED (record and GPUs written) → the node starts the workload (STARTING) →
//! its readiness probe passes (READY, `cold_starts` = 1). A failed start or probe gives
//! FAILED with the reason, frees the GPUs and leaves no workload behind. Idle: after
//! `idle_timeout` without a turn or keep-alive, and with nothing running, `idle_action`
//! pauses (CPU frozen, VRAM kept) or stops it; the next turn resumes a paused session
//! transparently, without a new warm-up.
//!
//! Warm-pool members (`pools.rs` decides how many) are sessions like any other, plus a
//! membership key created in their create transaction. Until claimed they are not idled,
//! paused or given turns; a claim rewrites the record for its caller and deletes the key
//! in one transaction. Every write of a session record holds the entry's `revision` lock,
//! so writes reach the store in the order they were made in memory and a claim can
//! compare on the record's exact mod revision.
//!
//! Reconciliation (DESIGN section 4): on every Hello the agent's inventory is compared
//! with the live sessions on that node. A workload of a live session is adopted as it
//! is; a live session whose workload is missing is FAILED (unless its start is still in
//! flight); a workload of a session that ended is stopped at once, and one of a session
//! nobody knows (or of an older generation) after `orphan_grace`. A node silent past
//! `lost_after` is DOWN, and each of its sessions LOST, freeing its GPUs.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use hearth_sdk::proto::v1::{
    CommandMeta, CreateSessionRequest, GpuRequest, IdleAction, NodeState, PauseSessionCommand,
    PlacementSpec, RestartMode, ResumeSessionCommand, RunningSession, Session, SessionEvent,
    SessionSpec, SessionState, StartSessionCommand, StopSessionCommand, broker_message,
    create_session_request,
};
use prost::Message as _;
use tokio::sync::watch;
use tonic::Code;

use crate::{
    cluster::{Cluster, LeaderState},
    convert::{self, CheckedSpec},
    error::{Error, Result},
    placement::{self, Allocated},
    store::{Compare, LEADER_KEY, StoreError, Txn},
    templates::{self, TemplateId},
};

/// Key prefix of session records.
pub const SESSIONS_PREFIX: &str = "sessions/";
/// Key prefix of GPU allocations.
pub const GPUS_PREFIX: &str = "gpus/";
/// How long a node gets to create and start a workload (image unpacking included).
pub const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node gets to stop, pause or resume a workload.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often activity is flushed to the store.
pub const ACTIVITY_FLUSH: Duration = Duration::from_secs(5);
/// Wait before a session's first restart under `spec.restart`; it doubles per restart.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How often a pull's progress goes to the cluster's events, at most.
pub const PULL_EVENT_EVERY: Duration = Duration::from_secs(1);

/// A pull's progress in words: "pulling image x: 3.1 of 12.0 MiB, 1 of 3 layers".
fn pull_words(p: &hearth_sdk::proto::v1::PullProgress) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if p.layers_total == 0 && !p.done {
        return format!("pulling image {}: asking the registry", p.image);
    }
    if p.done {
        return format!(
            "pulled image {}: {:.1} MiB, {} layers",
            p.image,
            mib(p.total_bytes),
            p.layers_total
        );
    }
    format!(
        "pulling image {}: {:.1} of {:.1} MiB, {} of {} layers",
        p.image,
        mib(p.done_bytes),
        mib(p.total_bytes),
        p.layers_done,
        p.layers_total
    )
}

/// The store key of session `id`.
pub fn session_key(id: &str) -> String {
    format!("{SESSIONS_PREFIX}{id}")
}

fn gpu_key(node: &str, uuid: &str) -> String {
    format!("{GPUS_PREFIX}{node}/{uuid}")
}

fn request_key(tenant: &str, request_id: &str) -> String {
    format!("requests/{tenant}/{request_id}")
}

/// The most restarts `spec.restart` allows, or `None` when it allows none.
fn restart_limit(record: &Session) -> Option<u32> {
    let restart = record.spec.as_ref()?.restart.as_ref()?;
    (restart.mode() == RestartMode::OnFailure).then_some(restart.max_restarts.max(1))
}

/// True for states a session never leaves.
pub fn is_terminal(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Stopped | SessionState::Failed | SessionState::Lost
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One live session.
pub struct Entry {
    record: Mutex<Session>,
    changes: watch::Sender<SessionEvent>,
    /// Serialises lifecycle transitions (pause, resume, stop) of this session.
    lifecycle: tokio::sync::Mutex<()>,
    last_activity: Mutex<Instant>,
    /// The session record's mod revision in the store. Held across every write of the
    /// record, so writes land in the order memory changed.
    revision: tokio::sync::Mutex<i64>,
    /// Where `max_lifetime` counts from: creation, or the claim for a pool member.
    lifetime_from: Mutex<Instant>,
    idle_timeout: Duration,
    idle_action: IdleAction,
    max_lifetime: Option<Duration>,
    inflight: AtomicU32,
    /// Set when the session is to stop once its turns end (a drain): no new turn starts.
    closing: AtomicBool,
    dirty: AtomicBool,
    /// When a restart under `spec.restart` is due (the session is PLACED until then).
    restart_at: Mutex<Option<Instant>>,
    /// PLACED when this leader loaded it, and no start sent since: the start of a leader
    /// that is gone. The agent's Hello settles it (see `settle_placed`).
    start_unsent: AtomicBool,
    /// When the node last reported progress of the image pull the start waits for, and
    /// when that was last put in the cluster's events.
    pull_heard: Mutex<Option<Instant>>,
    pull_logged: Mutex<Option<Instant>>,
}

impl Entry {
    fn new(record: Session, lifetime_from: Instant, revision: i64) -> Arc<Self> {
        let checked = convert::session_spec(record.spec.clone()).ok();
        let event = event_for(&record, "loaded");
        Arc::new(Self {
            idle_timeout: checked
                .as_ref()
                .map_or(convert::DEFAULT_IDLE_TIMEOUT, |c| c.idle_timeout),
            idle_action: checked
                .as_ref()
                .map_or(IdleAction::Pause, |c| c.idle_action),
            max_lifetime: checked.and_then(|c| c.max_lifetime),
            record: Mutex::new(record),
            changes: watch::Sender::new(event),
            lifecycle: tokio::sync::Mutex::new(()),
            last_activity: Mutex::new(Instant::now()),
            revision: tokio::sync::Mutex::new(revision),
            lifetime_from: Mutex::new(lifetime_from),
            inflight: AtomicU32::new(0),
            closing: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            restart_at: Mutex::new(None),
            start_unsent: AtomicBool::new(false),
            pull_heard: Mutex::new(None),
            pull_logged: Mutex::new(None),
        })
    }

    /// The record with live fields (activity, idle deadline) filled in.
    pub fn snapshot(&self) -> Session {
        let mut s = lock(&self.record).clone();
        let idle = lock(&self.last_activity).elapsed();
        let last = SystemTime::now() - idle;
        s.last_activity_at = Some(hearth_sdk::time::timestamp(last));
        if s.state() == SessionState::Ready || s.state() == SessionState::Paused {
            s.expires_at = Some(hearth_sdk::time::timestamp(last + self.idle_timeout));
        }
        s
    }

    /// Follows the session's state changes.
    pub fn subscribe(&self) -> watch::Receiver<SessionEvent> {
        self.changes.subscribe()
    }

    fn state(&self) -> SessionState {
        lock(&self.record).state()
    }

    /// The session id.
    pub fn id(&self) -> String {
        lock(&self.record).id.clone()
    }

    fn touch(&self) {
        *lock(&self.last_activity) = Instant::now();
        self.dirty.store(true, Ordering::Relaxed);
    }
}

fn event_for(s: &Session, message: &str) -> SessionEvent {
    SessionEvent {
        session_id: s.id.clone(),
        time: Some(hearth_sdk::time::now()),
        state: s.state,
        message: message.to_owned(),
    }
}

/// A turn in flight; counts as activity and keeps idle handling away until dropped.
pub struct TurnGuard {
    entry: Arc<Entry>,
}

impl Drop for TurnGuard {
    fn drop(&mut self) {
        self.entry.inflight.fetch_sub(1, Ordering::SeqCst);
        self.entry.touch();
    }
}

/// Where a turn goes.
pub struct Route {
    /// The session's node.
    pub node_id: String,
    /// The session's generation.
    pub generation: u64,
    /// The turn goes through the node's turn link (no main stream to the node yet).
    pub via_link: bool,
    /// Keeps the session busy until the turn ends.
    pub guard: TurnGuard,
}

/// How a drain stops a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Once no turn is in flight; new turns are refused meanwhile.
    BetweenTurns,
    /// At once, even mid-turn (a drain's deadline passed).
    Now,
}

/// What a new session is made from.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Owner tenant.
    pub tenant: String,
    /// The checked spec.
    pub spec: CheckedSpec,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The template it comes from; empty for none.
    pub template: String,
    /// The caller's idempotency key; empty for none.
    pub request_id: String,
    /// True for an unclaimed member of `template`'s warm pool.
    pub pool: bool,
}

/// What booking a session gave.
pub enum Booked {
    /// A new session, placed and recorded; its start has not been sent yet.
    New(Arc<Entry>),
    /// An earlier try of the same request created this one.
    Earlier(Box<Session>),
}

/// An unclaimed warm-pool member.
#[derive(Clone, Debug)]
pub struct Membership {
    /// Its template: (tenant, name).
    pub template: TemplateId,
    /// Its pool key.
    pub key: String,
    /// The pool key's mod revision (it never changes while the key exists).
    pub key_revision: i64,
    /// A claim or a stop has taken it; nobody else may.
    busy: bool,
}

/// The live sessions the broker expects on a node, with their generations
/// ([`Sessions::expected_on`]).
pub struct Expected(Vec<(Arc<Entry>, u64)>);

/// The registry of live sessions.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    allocated: Mutex<Allocated>,
    /// GPUs chosen by creates whose booking has not committed yet. Lock order:
    /// `allocated`, then `reserved`, then `entries`.
    reserved: Mutex<Allocated>,
    /// Unclaimed warm-pool members by session id. Lock order: `pooled`, then `entries`.
    pooled: Mutex<HashMap<String, Membership>>,
    /// Pool keys found at load whose session is not live: deleted by the reconciler.
    stale_pool_keys: Mutex<Vec<String>>,
    /// Workloads of unknown sessions waiting out `orphan_grace`: (node, session,
    /// generation). One timer each, however often the agent says Hello meanwhile.
    orphans: Mutex<HashSet<(String, String, u64)>>,
}

/// Runs a fenced transaction, counted in the metrics; when it does not succeed, checks
/// that this broker still leads (`Deposed` otherwise), so a failed compare is the
/// caller's to interpret.
pub async fn fenced_write(
    cluster: &Cluster,
    leader: &LeaderState,
    txn: Txn,
) -> Result<crate::store::TxnOutcome> {
    cluster.metrics.store_writes_total.inc();
    let outcome = cluster.store.txn(txn).await?;
    if !outcome.succeeded {
        cluster.metrics.store_write_failures_total.inc();
        check_still_leader(cluster, leader).await?;
    }
    Ok(outcome)
}

/// Fails with `Deposed` (and gives leadership up) unless the leader key is still ours. A
/// fenced write that failed means either a compare of the caller's failed or another
/// broker leads; this tells them apart.
pub async fn check_still_leader(cluster: &Cluster, leader: &LeaderState) -> Result<()> {
    let ours = cluster
        .store
        .get(LEADER_KEY)
        .await?
        .is_some_and(|kv| kv.create_revision == leader.epoch);
    if !ours {
        leader.depose();
        return Err(Error::Deposed);
    }
    Ok(())
}

impl Sessions {
    /// Loads live sessions and GPU allocations from the store when becoming leader.
    pub async fn load(&self, cluster: &Cluster) -> Result<()> {
        let records = cluster.store.list(SESSIONS_PREFIX).await?;
        let mut entries = HashMap::new();
        let mut allocated = Allocated::new();
        for kv in records {
            let s = Session::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
            if is_terminal(s.state()) {
                continue;
            }
            let node = allocated.entry(s.node_id.clone()).or_default();
            node.extend(s.gpu_uuids.iter().cloned());
            let lifetime_from = lifetime_start(&s);
            let age = lifetime_from
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let from = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            let placed = s.state() == SessionState::Placed;
            let entry = Entry::new(s, from, kv.mod_revision);
            entry.start_unsent.store(placed, Ordering::Relaxed);
            entries.insert(entry.id(), entry);
        }
        let mut pooled = HashMap::new();
        let mut stale = Vec::new();
        for kv in cluster.store.list(templates::POOL_PREFIX).await? {
            let member = templates::parse_pool_key(&kv.key).and_then(|(tenant, template, id)| {
                let live = entries
                    .get(id)
                    .is_some_and(|e: &Arc<Entry>| lock(&e.record).tenant == tenant);
                live.then(|| {
                    let m = Membership {
                        template: (tenant.to_owned(), template.to_owned()),
                        key: kv.key.clone(),
                        key_revision: kv.mod_revision,
                        busy: false,
                    };
                    (id.to_owned(), m)
                })
            });
            match member {
                Some((id, m)) => {
                    pooled.insert(id, m);
                }
                None => stale.push(kv.key.clone()),
            }
        }
        tracing::info!(
            sessions = entries.len(),
            pool_members = pooled.len(),
            stale_pool_keys = stale.len(),
            "loaded live sessions"
        );
        *lock(&self.pooled) = pooled;
        *lock(&self.stale_pool_keys) = stale;
        *lock(&self.entries) = entries;
        *lock(&self.allocated) = allocated;
        Ok(())
    }

    /// Forgets everything (leadership lost).
    pub fn clear(&self) {
        lock(&self.pooled).clear();
        lock(&self.stale_pool_keys).clear();
        lock(&self.orphans).clear();
        lock(&self.entries).clear();
        lock(&self.allocated).clear();
    }

    /// A live session of `tenant`.
    pub fn entry(&self, tenant: &str, id: &str) -> Result<Arc<Entry>> {
        lock(&self.entries)
            .get(id)
            .filter(|e| lock(&e.record).tenant == tenant)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: "session",
                id: id.to_owned(),
            })
    }

    /// Every live session (tenant `None`: all tenants), ordered by id.
    pub fn list(&self, tenant: Option<&str>) -> Vec<Session> {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        let mut out: Vec<Session> = entries
            .iter()
            .map(|e| e.snapshot())
            .filter(|s| tenant.is_none_or(|t| s.tenant == t))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// What `tenant` holds: its live sessions (warm-pool members included) and their
    /// GPUs, for quotas.
    pub fn usage(&self, tenant: &str) -> crate::quota::Usage {
        let mut usage = crate::quota::Usage::default();
        for entry in lock(&self.entries).values() {
            let record = lock(&entry.record);
            if record.tenant == tenant {
                usage.sessions += 1;
                usage.gpus += u32::try_from(record.gpu_uuids.len()).unwrap_or(u32::MAX);
            }
        }
        usage
    }

    /// Reads a session from the store (terminal sessions live only there).
    pub async fn get(&self, cluster: &Cluster, tenant: &str, id: &str) -> Result<Session> {
        if let Ok(e) = self.entry(tenant, id) {
            return Ok(e.snapshot());
        }
        let kv = cluster
            .store
            .get(&session_key(id))
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "session",
                id: id.to_owned(),
            })?;
        let s = Session::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
            key: kv.key,
            reason: e.to_string(),
        })?;
        if s.tenant != tenant {
            return Err(Error::NotFound {
                kind: "session",
                id: id.to_owned(),
            });
        }
        Ok(s)
    }

    /// Places and starts a session from a spec, or from a template (claiming a warm-pool
    /// member when one is free); waits for READY unless `no_wait`.
    pub async fn create(
        &self,
        cluster: &Arc<Cluster>,
        leader: &LeaderState,
        tenant: &str,
        request: CreateSessionRequest,
    ) -> Result<Session> {
        let spec = match request.source {
            Some(create_session_request::Source::Spec(spec)) => spec,
            Some(create_session_request::Source::Template(name)) => {
                return crate::pools::create_from_template(
                    cluster,
                    leader,
                    tenant,
                    &name,
                    &request.labels,
                    &request.request_id,
                    request.no_wait,
                )
                .await;
            }
            None => return Err(Error::invalid("spec", "is required (or give a template)")),
        };
        let checked = convert::session_spec(Some(spec))?;
        cluster.config.check_spec(tenant, "spec", &checked.spec)?;
        let labels = convert::session_labels(&request.labels)?;
        convert::request_id(&request.request_id)?;
        if let Some(earlier) = self
            .retried(
                cluster,
                tenant,
                &request.request_id,
                request.no_wait,
                checked.ready_timeout,
            )
            .await?
        {
            return Ok(earlier);
        }
        // Only a create that makes a session counts: a retry of one is answered above.
        cluster
            .quotas
            .admit_create(&*cluster.store, leader.epoch, tenant)
            .await?;
        let launch = Launch {
            tenant: tenant.to_owned(),
            spec: checked,
            labels,
            template: String::new(),
            request_id: request.request_id,
            pool: false,
        };
        if !request.no_wait {
            return self.launch(cluster, leader, launch, false).await;
        }
        // Placed is enough: the start (an image pull can take minutes) goes on in the
        // background, and its progress and outcome reach WatchSession. A start that fails
        // leaves the session FAILED with the reason, as a waited-for one does.
        let entry = match self.book(cluster, leader, launch).await? {
            Booked::New(entry) => entry,
            Booked::Earlier(session) => return Ok(*session),
        };
        let placed = entry.snapshot();
        let (cluster, leader) = (cluster.clone(), leader.clone());
        tokio::spawn(async move {
            if let Err(e) = cluster.sessions.start(&cluster, &leader, &entry).await {
                tracing::info!(session = entry.id(), error = %e, "start of a session created without waiting failed");
            }
        });
        Ok(placed)
    }

    /// Books, starts and (unless `no_wait`) waits for a new session.
    pub async fn launch(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        launch: Launch,
        no_wait: bool,
    ) -> Result<Session> {
        let ready_timeout = launch.spec.ready_timeout;
        let entry = match self.book(cluster, leader, launch).await? {
            Booked::New(entry) => entry,
            Booked::Earlier(session) => {
                return self
                    .finish_create(cluster, *session, no_wait, ready_timeout)
                    .await;
            }
        };
        self.start(cluster, leader, &entry).await?;
        self.finish_create(cluster, entry.snapshot(), no_wait, ready_timeout)
            .await
    }

    /// Places a new session and records it with its GPU allocations (and its request and
    /// pool keys) in one transaction. The start command is the caller's to send.
    pub async fn book(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        launch: Launch,
    ) -> Result<Booked> {
        let tenant = launch.tenant.as_str();
        let checked = &launch.spec;
        // Held until the session is in `entries` (where `usage` counts it) or the
        // booking failed, so concurrent creates never both take the last unit.
        let gpu_count = checked.spec.gpus.as_ref().map_or(0, |g| g.count);
        let _quota = cluster
            .quotas
            .reserve(tenant, gpu_count, || self.usage(tenant))?;
        let id = ulid::Ulid::new().to_string();
        let now = SystemTime::now();
        let mut record = Session {
            id: id.clone(),
            tenant: tenant.to_owned(),
            spec: Some(checked.spec.clone()),
            labels: launch.labels.clone().into_iter().collect(),
            template: launch.template.clone(),
            generation: 1,
            created_at: Some(hearth_sdk::time::timestamp(now)),
            max_deadline: checked
                .max_lifetime
                .map(|d| hearth_sdk::time::timestamp(now + d)),
            ..Session::default()
        };
        record.set_state(SessionState::Placed);
        let pool_key = launch
            .pool
            .then(|| templates::pool_key(tenant, &launch.template, &id));
        let gpus = checked.spec.gpus.clone().unwrap_or_default();
        let image = hearth_sdk::image::canonical(&checked.spec.image);
        let mut attempt = 0;
        let mut holds_image;
        let revision = loop {
            attempt += 1;
            let place = self.reserve(cluster, &gpus, checked.spec.placement.as_ref(), &image)?;
            holds_image = place.holds_image;
            record.node_id = place.node_id.clone();
            record.gpu_uuids = place.gpu_uuids.clone();
            let mut txn = Txn::fenced(leader.epoch)
                .when(Compare::Absent(session_key(&id)))
                .put(session_key(&id), record.encode_to_vec());
            for uuid in &place.gpu_uuids {
                txn = txn
                    .when(Compare::Absent(gpu_key(&place.node_id, uuid)))
                    .put(gpu_key(&place.node_id, uuid), id.clone().into_bytes());
            }
            if !launch.request_id.is_empty() {
                let key = request_key(tenant, &launch.request_id);
                txn = txn
                    .when(Compare::Absent(key.clone()))
                    .put(key, id.clone().into_bytes());
            }
            if let Some(key) = &pool_key {
                txn = txn.put(key.clone(), id.clone().into_bytes());
            }
            cluster.metrics.store_writes_total.inc();
            let outcome = cluster.store.txn(txn).await;
            if let Ok(outcome) = &outcome
                && outcome.succeeded
            {
                break outcome.revision;
            }
            self.unreserve(&place);
            outcome?;
            // Lost a race: to a new leader, a concurrent retry of the same request, or
            // a write this leader did not make (GPUs booked by a deposed leader). Find
            // out which, then retry on fresh state.
            cluster.metrics.placement_races_total.inc();
            self.after_lost_race(cluster, leader).await?;
            if !launch.request_id.is_empty()
                && let Some(earlier) = self.by_request(cluster, tenant, &launch.request_id).await?
            {
                return Ok(Booked::Earlier(Box::new(earlier)));
            }
            if attempt >= 5 {
                return Err(Error::Unavailable(
                    "placement kept losing races for GPUs; retry".to_owned(),
                ));
            }
        };
        {
            let mut allocated = lock(&self.allocated);
            allocated
                .entry(record.node_id.clone())
                .or_default()
                .extend(record.gpu_uuids.iter().cloned());
        }
        let entry = Entry::new(record.clone(), Instant::now(), revision);
        // Live in the registry before the reservation goes: `after_lost_race` counts
        // both, so the GPUs are never unaccounted for in between.
        lock(&self.entries).insert(id.clone(), entry.clone());
        self.unreserve(&placement::Placement {
            node_id: record.node_id.clone(),
            gpu_uuids: record.gpu_uuids.clone(),
            holds_image,
        });
        if let Some(key) = pool_key {
            let membership = Membership {
                template: (tenant.to_owned(), launch.template.clone()),
                key,
                key_revision: revision,
                busy: false,
            };
            lock(&self.pooled).insert(id.clone(), membership);
        }
        cluster.metrics.sessions_created_total.inc();
        cluster.events.emit(
            "session.placed",
            &record.node_id,
            &id,
            format!(
                "session {id} placed on {} with GPUs [{}]{}{}",
                record.node_id,
                record.gpu_uuids.join(", "),
                if holds_image {
                    format!(", which already holds image {}", checked.spec.image)
                } else {
                    String::new()
                },
                if launch.pool {
                    format!(" for the warm pool of template {}", launch.template)
                } else {
                    String::new()
                }
            ),
        );
        Ok(Booked::New(entry))
    }

    /// If an earlier try of this request (same tenant and `request_id`) created a session,
    /// that session, waited on as a fresh create would be.
    pub async fn retried(
        &self,
        cluster: &Cluster,
        tenant: &str,
        request_id: &str,
        no_wait: bool,
        ready_timeout: Duration,
    ) -> Result<Option<Session>> {
        if request_id.is_empty() {
            return Ok(None);
        }
        match self.by_request(cluster, tenant, request_id).await? {
            Some(existing) => self
                .finish_create(cluster, existing, no_wait, ready_timeout)
                .await
                .map(Some),
            None => Ok(None),
        }
    }

    /// The session an earlier try of (`tenant`, `request_id`) created, if any.
    pub async fn by_request(
        &self,
        cluster: &Cluster,
        tenant: &str,
        request_id: &str,
    ) -> Result<Option<Session>> {
        let Some(kv) = cluster.store.get(&request_key(tenant, request_id)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&kv.value).into_owned();
        self.get(cluster, tenant, &id).await.map(Some)
    }

    async fn after_lost_race(&self, cluster: &Cluster, leader: &LeaderState) -> Result<()> {
        check_still_leader(cluster, leader).await?;
        // Refresh allocations from the store: another writer may have booked GPUs.
        let mut allocated = Allocated::new();
        for kv in cluster.store.list(GPUS_PREFIX).await? {
            if let Some((node, uuid)) = kv.key.trim_start_matches(GPUS_PREFIX).split_once('/') {
                allocated
                    .entry(node.to_owned())
                    .or_default()
                    .insert(uuid.to_owned());
            }
        }
        // Creates that committed after the list was read are live sessions by now, or
        // still hold their reservation (a create enters the registry before it lets the
        // reservation go, and the reservations stay locked while the registry is read).
        let mut current = lock(&self.allocated);
        let _reserved = lock(&self.reserved);
        for entry in lock(&self.entries).values() {
            let r = lock(&entry.record);
            if !is_terminal(r.state()) {
                allocated
                    .entry(r.node_id.clone())
                    .or_default()
                    .extend(r.gpu_uuids.iter().cloned());
            }
        }
        *current = allocated;
        Ok(())
    }

    /// Places a session and reserves its GPUs in memory until its booking commits or
    /// fails, so concurrent creates on this leader never pick the same GPU (and never
    /// lose a store transaction to each other).
    fn reserve(
        &self,
        cluster: &Cluster,
        gpus: &GpuRequest,
        spec: Option<&PlacementSpec>,
        image: &str,
    ) -> Result<placement::Placement> {
        let allocated = lock(&self.allocated);
        let mut reserved = lock(&self.reserved);
        let taken = |node: &str, uuid: &str| {
            let held = |a: &Allocated| a.get(node).is_some_and(|s| s.contains(uuid));
            held(&allocated) || held(&reserved)
        };
        let place = cluster
            .nodes
            .with_placement_view(|nodes| {
                let strategy = cluster.config.placement.strategy;
                placement::place_among(nodes, &taken, gpus, spec, strategy, image)
            })
            .map_err(Error::ResourceExhausted)?;
        reserved
            .entry(place.node_id.clone())
            .or_default()
            .extend(place.gpu_uuids.iter().cloned());
        Ok(place)
    }

    /// Lets a reservation go.
    fn unreserve(&self, place: &placement::Placement) {
        let mut reserved = lock(&self.reserved);
        if let Some(set) = reserved.get_mut(&place.node_id) {
            for uuid in &place.gpu_uuids {
                set.remove(uuid);
            }
            if set.is_empty() {
                reserved.remove(&place.node_id);
            }
        }
    }

    /// Waits for a created session to leave its start-up states, unless told not to.
    pub async fn finish_create(
        &self,
        cluster: &Cluster,
        session: Session,
        no_wait: bool,
        ready_timeout: Duration,
    ) -> Result<Session> {
        if no_wait
            || !matches!(
                session.state(),
                SessionState::Placed | SessionState::Starting
            )
        {
            return Ok(session);
        }
        let entry = self.entry(&session.tenant, &session.id)?;
        let mut changes = entry.subscribe();
        let wait = ready_timeout + START_TIMEOUT;
        // An image pull in progress moves the deadline: `wait` counts from its last
        // progress report, so a large image is not cut off while it still downloads.
        let began = Instant::now();
        let deadline = || {
            let heard = *lock(&entry.pull_heard);
            heard.map_or(began, |h| h.max(began)) + wait
        };
        let waited = loop {
            match entry.state() {
                SessionState::Placed | SessionState::Starting => {}
                _ => break Ok(()),
            }
            let until = deadline();
            match tokio::time::timeout_at(until.into(), changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break Ok(()),
                Err(elapsed) if deadline() <= until => break Err(elapsed),
                Err(_) => {}
            }
        };
        let s = self.get(cluster, &session.tenant, &session.id).await?;
        match (waited, s.state()) {
            (_, SessionState::Failed) => Err(Error::FailedPrecondition(format!(
                "session {} failed to start: {}",
                s.id, s.state_reason
            ))),
            (Err(_), _) => Err(Error::DeadlineExceeded(format!(
                "session {} was not READY within {}; it is {} (GetSession shows progress)",
                s.id,
                humantime::format_duration(wait),
                s.state().as_str_name()
            ))),
            _ => Ok(s),
        }
    }

    fn meta(record: &Session, leader: &LeaderState) -> CommandMeta {
        CommandMeta {
            command_id: ulid::Ulid::new().to_string(),
            epoch: leader.epoch,
            session_id: record.id.clone(),
            generation: record.generation,
        }
    }

    /// Sends the start command; on failure the session is FAILED and its GPUs freed.
    pub async fn start(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
    ) -> Result<()> {
        let record = lock(&entry.record).clone();
        let Some(connection) = cluster.nodes.connection(&record.node_id) else {
            self.fail(
                cluster,
                leader,
                entry,
                "its node disconnected before the start",
            )
            .await?;
            return Err(Error::Unavailable(format!(
                "node {} disconnected before the session could start; retry",
                record.node_id
            )));
        };
        let image = record.spec.as_ref().map_or("", |s| s.image.as_str());
        let registry_auth = match cluster
            .credentials
            .for_image(cluster, &record.tenant, image)
            .await
        {
            Ok(auth) => auth,
            Err(e) => {
                self.fail(
                    cluster,
                    leader,
                    entry,
                    &format!("its registry credentials could not be read: {e}"),
                )
                .await?;
                return Err(e);
            }
        };
        let meta = Self::meta(&record, leader);
        let command_id = meta.command_id.clone();
        let command = broker_message::Msg::StartSession(StartSessionCommand {
            meta: Some(meta),
            spec: record.spec.clone(),
            gpu_uuids: record.gpu_uuids.clone(),
            tenant: record.tenant.clone(),
            network: Some(cluster.config.network.resolve(
                &record.tenant,
                record.spec.as_ref().unwrap_or(&Default::default()),
            )),
            registry_auth,
        });
        let reply = cluster
            .turns
            .command(
                &record.node_id,
                &connection,
                &command_id,
                command,
                START_TIMEOUT,
            )
            .await;
        match reply {
            // The node may have reported READY (or FAILED) before this Reply was read:
            // only a session still PLACED moves to STARTING.
            Ok(reply) if entry.state() == SessionState::Placed => {
                self.transition(
                    cluster,
                    leader,
                    entry,
                    SessionState::Starting,
                    "workload started; waiting for readiness",
                    |s| {
                        s.container_id = reply.container_id.clone();
                    },
                )
                .await
            }
            Ok(_) => Ok(()),
            Err(e) => {
                // Named by field, as the caller's error is, for those who only see the
                // session (a create that did not wait, WatchSession).
                let reason = match &e {
                    Error::Node {
                        code: Code::NotFound,
                        message,
                    } => format!("invalid spec.image: {message}"),
                    Error::Node {
                        code: Code::InvalidArgument,
                        message,
                    } => format!("invalid spec: {message}"),
                    other => other.to_string(),
                };
                self.fail(
                    cluster,
                    leader,
                    entry,
                    &format!("start failed on node {}: {reason}", record.node_id),
                )
                .await?;
                // The caller learns which session failed, to look it up.
                let failed = |message: String| {
                    format!(
                        "session {} failed to start on node {}: {message}",
                        record.id, record.node_id
                    )
                };
                Err(match e {
                    Error::Node {
                        code: Code::NotFound,
                        message,
                    } => Error::invalid("spec.image", failed(message)),
                    Error::Node {
                        code: Code::InvalidArgument,
                        message,
                    } => Error::invalid("spec", failed(message)),
                    Error::Node { code, message } => Error::Node {
                        code,
                        message: failed(message),
                    },
                    other => other,
                })
            }
        }
    }

    /// Applies a state change: persisted (fenced), announced, published to watchers. A
    /// pool member that stops or ends leaves its pool in the same transaction.
    async fn transition(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        state: SessionState,
        reason: &str,
        edit: impl FnOnce(&mut Session),
    ) -> Result<()> {
        let mut revision = entry.revision.lock().await;
        let (record, from) = {
            let mut r = lock(&entry.record);
            let from = r.state();
            r.set_state(state);
            r.state_reason = reason.to_owned();
            edit(&mut r);
            (r.clone(), from)
        };
        let mut txn = Txn::fenced(leader.epoch).put(
            session_key(&record.id),
            entry_record_for_store(entry, record.clone()),
        );
        let frees_gpus = is_terminal(state) && !is_terminal(from);
        if frees_gpus {
            for uuid in &record.gpu_uuids {
                txn = txn.delete(gpu_key(&record.node_id, uuid));
            }
        }
        let leaves_pool = state == SessionState::Stopping || is_terminal(state);
        let membership = if leaves_pool {
            lock(&self.pooled).get(&record.id).cloned()
        } else {
            None
        };
        if let Some(m) = &membership {
            txn = txn.delete(m.key.clone());
        }
        cluster.metrics.store_writes_total.inc();
        let outcome = cluster.store.txn(txn).await?;
        if !outcome.succeeded {
            cluster.metrics.store_write_failures_total.inc();
            leader.depose();
            return Err(Error::Deposed);
        }
        *revision = outcome.revision;
        drop(revision);
        if frees_gpus {
            if let Some(gpus) = lock(&self.allocated).get_mut(&record.node_id) {
                for uuid in &record.gpu_uuids {
                    gpus.remove(uuid);
                }
            }
            lock(&self.entries).remove(&record.id);
        }
        let kind = format!(
            "session.{}",
            state
                .as_str_name()
                .trim_start_matches("SESSION_STATE_")
                .to_lowercase()
        );
        cluster.events.emit(
            &kind,
            &record.node_id,
            &record.id,
            format!(
                "session {} is {}: {reason}",
                record.id,
                state.as_str_name().trim_start_matches("SESSION_STATE_")
            ),
        );
        entry.changes.send_replace(event_for(&record, reason));
        if let Some(m) = membership {
            lock(&self.pooled).remove(&record.id);
            if matches!(state, SessionState::Failed | SessionState::Lost) {
                cluster.pools.fill_failed(
                    cluster,
                    &m.template,
                    &format!("member {} is {}: {reason}", record.id, state.as_str_name()),
                );
            }
            cluster.pools.wake();
        } else if state == SessionState::Ready && !record.template.is_empty() {
            let template = lock(&self.pooled)
                .get(&record.id)
                .map(|m| m.template.clone());
            if let Some(template) = template {
                cluster.pools.filled(cluster, &template);
            }
        }
        Ok(())
    }

    async fn fail(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        reason: &str,
    ) -> Result<()> {
        // A session already ended (LOST while its start was in flight) keeps its end.
        if is_terminal(entry.state()) {
            return Ok(());
        }
        let (limit, restarts, stopping) = {
            let r = lock(&entry.record);
            (
                restart_limit(&r),
                r.restarts,
                r.state() == SessionState::Stopping,
            )
        };
        match limit {
            // A session being stopped is not started again, whatever its policy.
            Some(max) if !stopping && restarts < max => {
                self.restart_later(cluster, leader, entry, reason, restarts + 1, max)
                    .await
            }
            Some(max) if !stopping => {
                let reason = format!(
                    "{reason} (no restart left: it was restarted {restarts} times, \
                     spec.restart.max_restarts is {max})"
                );
                self.transition(
                    cluster,
                    leader,
                    entry,
                    SessionState::Failed,
                    &reason,
                    |_| {},
                )
                .await
            }
            _ => {
                self.transition(cluster, leader, entry, SessionState::Failed, reason, |_| {})
                    .await
            }
        }
    }

    /// Restart `n` of `max` under `spec.restart`: the session goes back to PLACED with a
    /// new generation, keeping its node and GPUs, and its start is sent once the backoff
    /// has passed (see [`Sessions::restart_due`]).
    async fn restart_later(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        reason: &str,
        n: u32,
        max: u32,
    ) -> Result<()> {
        let wait = RESTART_BACKOFF
            .saturating_mul(1 << (n - 1).min(5))
            .min(RESTART_BACKOFF_MAX);
        let why = format!(
            "restarting in {} (restart {n} of {max}) after: {reason}",
            humantime::format_duration(wait)
        );
        self.transition(cluster, leader, entry, SessionState::Placed, &why, |s| {
            s.generation += 1;
            s.restarts = n;
            s.container_id.clear();
            s.ready_at = None;
        })
        .await?;
        entry.start_unsent.store(false, Ordering::Relaxed);
        *lock(&entry.restart_at) = Some(Instant::now() + wait);
        let node = lock(&entry.record).node_id.clone();
        cluster.events.emit(
            "session.restarting",
            &node,
            &entry.id(),
            format!(
                "session {} failed: {reason}; restart {n} of {max}, cold, in {}",
                entry.id(),
                humantime::format_duration(wait)
            ),
        );
        Ok(())
    }

    /// Sends the start of every session whose restart backoff has passed. Runs on the
    /// leader's session ticker.
    pub fn restart_due(&self, cluster: &Arc<Cluster>, leader: &LeaderState) {
        let now = Instant::now();
        let due: Vec<Arc<Entry>> = lock(&self.entries)
            .values()
            .filter(|e| lock(&e.restart_at).is_some_and(|at| at <= now))
            .cloned()
            .collect();
        for entry in due {
            *lock(&entry.restart_at) = None;
            if entry.state() != SessionState::Placed {
                continue;
            }
            let (cluster, leader) = (cluster.clone(), leader.clone());
            tokio::spawn(async move {
                if let Err(e) = cluster.sessions.start(&cluster, &leader, &entry).await {
                    tracing::warn!(session = entry.id(), error = %e, "restart did not start");
                }
            });
        }
    }

    /// Progress of the image pull a start of the session waits for: told to the session's
    /// watchers each time, and to the cluster's events at most every
    /// [`PULL_EVENT_EVERY`] (and when it ends).
    pub fn on_pull_progress(
        &self,
        cluster: &Cluster,
        node_id: &str,
        progress: &hearth_sdk::proto::v1::PullProgress,
    ) {
        let Some(entry) = lock(&self.entries).get(&progress.session_id).cloned() else {
            return;
        };
        let record = {
            let r = lock(&entry.record);
            if r.node_id != node_id || r.generation != progress.generation {
                return;
            }
            r.clone()
        };
        *lock(&entry.pull_heard) = Some(Instant::now());
        let message = pull_words(progress);
        entry.changes.send_replace(event_for(&record, &message));
        let log = {
            let mut logged = lock(&entry.pull_logged);
            let due = progress.done || logged.is_none_or(|at| at.elapsed() >= PULL_EVENT_EVERY);
            if due {
                *logged = Some(Instant::now());
            }
            due
        };
        if log {
            let kind = if progress.done {
                "session.pulled"
            } else {
                "session.pulling"
            };
            cluster.events.emit(kind, node_id, &record.id, message);
        }
    }

    /// A status report from the session's node.
    pub async fn on_status(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        node_id: &str,
        status: hearth_sdk::proto::v1::SessionStatus,
    ) -> Result<()> {
        let Some(entry) = lock(&self.entries).get(&status.session_id).cloned() else {
            return Ok(());
        };
        let (current, generation, on_node) = {
            let r = lock(&entry.record);
            (r.state(), r.generation, r.node_id == node_id)
        };
        if !on_node || status.generation != generation {
            return Ok(());
        }
        match status.state() {
            SessionState::Ready
                if matches!(current, SessionState::Placed | SessionState::Starting) =>
            {
                entry.touch();
                self.transition(
                    cluster,
                    leader,
                    &entry,
                    SessionState::Ready,
                    "readiness probe passed",
                    |s| {
                        if !status.container_id.is_empty() {
                            s.container_id = status.container_id.clone();
                        }
                        s.ready_at = Some(hearth_sdk::time::now());
                        s.cold_starts += 1;
                        s.pull_ms = status.pull_ms;
                        s.warmup_ms = status.warmup_ms;
                    },
                )
                .await
            }
            SessionState::Failed if !is_terminal(current) => {
                self.fail(cluster, leader, &entry, &status.reason).await
            }
            _ => Ok(()),
        }
    }

    /// Stops and removes a session; its GPUs are freed.
    pub async fn delete(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        why: &str,
    ) -> Result<Session> {
        let _lifecycle = entry.lifecycle.lock().await;
        if is_terminal(entry.state()) {
            return Ok(entry.snapshot());
        }
        self.transition(cluster, leader, entry, SessionState::Stopping, why, |_| {})
            .await?;
        let record = lock(&entry.record).clone();
        let outcome = match cluster.nodes.connection(&record.node_id) {
            Some(connection) => {
                let meta = Self::meta(&record, leader);
                let command_id = meta.command_id.clone();
                let command = broker_message::Msg::StopSession(StopSessionCommand {
                    meta: Some(meta),
                    grace: Some(hearth_sdk::time::duration(Duration::from_secs(10))),
                });
                cluster
                    .turns
                    .command(
                        &record.node_id,
                        &connection,
                        &command_id,
                        command,
                        COMMAND_TIMEOUT,
                    )
                    .await
                    .map(|_| why.to_owned())
                    .map_err(|e| e.to_string())
            }
            None => Err(format!("node {} is not connected", record.node_id)),
        };
        let reason = match outcome {
            Ok(r) => r,
            // The record says STOPPED either way: the agent removes workloads of stopped
            // sessions when it next says Hello.
            Err(e) => format!("{why} (workload removal pending: {e})"),
        };
        self.transition(
            cluster,
            leader,
            entry,
            SessionState::Stopped,
            &reason,
            |_| {},
        )
        .await?;
        let mut s = entry.snapshot();
        s.set_state(SessionState::Stopped);
        Ok(s)
    }

    /// Freezes a READY session.
    pub async fn pause(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        why: &str,
    ) -> Result<Session> {
        self.freeze(cluster, leader, entry, true, why).await
    }

    /// Unfreezes a PAUSED session (a READY one is left alone).
    pub async fn resume(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        why: &str,
    ) -> Result<Session> {
        self.freeze(cluster, leader, entry, false, why).await
    }

    /// Pause (`pause`) or resume (`!pause`): one command to the node, then the state.
    async fn freeze(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        pause: bool,
        why: &str,
    ) -> Result<Session> {
        let (from, to, verb) = if pause {
            (SessionState::Ready, SessionState::Paused, "paused")
        } else {
            (SessionState::Paused, SessionState::Ready, "resumed")
        };
        self.refuse_pooled(entry)?;
        let _lifecycle = entry.lifecycle.lock().await;
        let state = entry.state();
        if state == to {
            return Ok(entry.snapshot());
        }
        if state != from {
            return Err(Error::FailedPrecondition(format!(
                "session is {}; only a {} session can be {verb}",
                state.as_str_name(),
                from.as_str_name()
            )));
        }
        let record = lock(&entry.record).clone();
        let meta = Some(Self::meta(&record, leader));
        let command_id = meta
            .as_ref()
            .map(|m| m.command_id.clone())
            .unwrap_or_default();
        let command = if pause {
            broker_message::Msg::PauseSession(PauseSessionCommand { meta })
        } else {
            broker_message::Msg::ResumeSession(ResumeSessionCommand { meta })
        };
        let connection = self.connection(cluster, &record.node_id)?;
        cluster
            .turns
            .command(
                &record.node_id,
                &connection,
                &command_id,
                command,
                COMMAND_TIMEOUT,
            )
            .await?;
        if !pause {
            entry.touch();
        }
        if let Err(e) = self
            .transition(cluster, leader, entry, to, why, |_| {})
            .await
        {
            // The node did it but the store did not take it, so the old state stands: undo
            // it on the node, or a READY session would stay frozen and its turns hang.
            let meta = Some(Self::meta(&record, leader));
            let command_id = meta
                .as_ref()
                .map(|m| m.command_id.clone())
                .unwrap_or_default();
            let undo = if pause {
                broker_message::Msg::ResumeSession(ResumeSessionCommand { meta })
            } else {
                broker_message::Msg::PauseSession(PauseSessionCommand { meta })
            };
            if let Err(undo_error) = cluster
                .turns
                .command(
                    &record.node_id,
                    &connection,
                    &command_id,
                    undo,
                    COMMAND_TIMEOUT,
                )
                .await
            {
                tracing::warn!(session = record.id, error = %undo_error, "could not undo a change of state that the store did not record");
            }
            return Err(e);
        }
        Ok(entry.snapshot())
    }

    fn connection(&self, cluster: &Cluster, node_id: &str) -> Result<crate::nodes::Connection> {
        // A cut link can leave the stream open (nothing arrives, nothing fails) long after
        // the node went quiet: silence decides, so a turn fails fast instead of hanging.
        if matches!(
            cluster.nodes.state(node_id),
            Some(NodeState::Disconnected | NodeState::Down)
        ) {
            return Err(Error::NotRun(format!(
                "node {node_id} is disconnected (silent); the turn was not run (retry later)"
            )));
        }
        cluster.nodes.connection(node_id).ok_or_else(|| {
            Error::NotRun(format!(
                "node {node_id} is disconnected; the turn was not run (retry later)"
            ))
        })
    }

    /// Prepares a turn: resumes a paused session, checks the node is reachable, and marks
    /// the session busy. No store access unless a resume is needed.
    pub async fn route(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        tenant: &str,
        id: &str,
    ) -> Result<(Route, crate::nodes::Connection)> {
        let entry = self.entry(tenant, id)?;
        self.refuse_pooled(&entry)?;
        if entry.state() == SessionState::Paused {
            self.resume(cluster, leader, &entry, "resumed by a turn")
                .await?;
        }
        let (state, node_id, generation) = {
            let r = lock(&entry.record);
            (r.state(), r.node_id.clone(), r.generation)
        };
        if state != SessionState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "session is {}; turns need a READY session",
                state.as_str_name()
            )));
        }
        // A new leader before the node's stream has reached it still has the node's turn
        // link (turn_links.rs); a node whose stream is open but silent gets no turns.
        let (connection, via_link) = match self.connection(cluster, &node_id) {
            Ok(connection) => (connection, false),
            Err(e) => match cluster
                .nodes
                .connection(&node_id)
                .is_none()
                .then(|| cluster.turn_links.get(&node_id))
                .flatten()
            {
                Some(link) => (link, true),
                None => return Err(e),
            },
        };
        // Count the turn first, then look for a stop in progress: `stop` sets `closing`
        // first, then looks for turns. Whichever comes second sees the other, so a turn
        // either is refused here or is seen (and waited for) by the stop.
        entry.inflight.fetch_add(1, Ordering::SeqCst);
        if entry.closing.load(Ordering::SeqCst) {
            entry.inflight.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::FailedPrecondition(format!(
                "session {id} is being stopped (its node is draining) and takes no new turns; \
                 the turn was not run"
            )));
        }
        {
            let mut r = lock(&entry.record);
            r.turns_served += 1;
        }
        entry.touch();
        Ok((
            Route {
                node_id,
                generation,
                via_link,
                guard: TurnGuard { entry },
            },
            connection,
        ))
    }

    /// Live sessions placed on `node_id`, PLACED to PAUSED.
    pub fn on_node(&self, node_id: &str) -> Vec<Arc<Entry>> {
        lock(&self.entries)
            .values()
            .filter(|e| {
                let r = lock(&e.record);
                r.node_id == node_id && !is_terminal(r.state())
            })
            .cloned()
            .collect()
    }

    /// Stops a session for a drain. `Stop::BetweenTurns` closes it to new turns and
    /// stops it once no turn is in flight; until then it returns `Ok(false)` and the
    /// caller asks again. An unclaimed warm-pool member has no turns and is retired.
    pub async fn stop(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        why: &str,
        how: Stop,
    ) -> Result<bool> {
        if self.pool_of(&entry.id()).is_some() {
            return self.retire(cluster, leader, entry, why).await;
        }
        if how == Stop::BetweenTurns {
            entry.closing.store(true, Ordering::SeqCst);
            if entry.inflight.load(Ordering::SeqCst) > 0 {
                return Ok(false);
            }
        }
        self.delete(cluster, leader, entry, why).await?;
        Ok(true)
    }

    /// Opens the sessions on `node_id` to turns again (a drain was called off).
    pub fn reopen(&self, node_id: &str) {
        for entry in self.on_node(node_id) {
            entry.closing.store(false, Ordering::SeqCst);
        }
    }

    /// A keep-alive: activity now; returns the new idle deadline.
    pub fn keep_alive(&self, tenant: &str, id: &str) -> Result<Session> {
        let entry = self.entry(tenant, id)?;
        entry.touch();
        Ok(entry.snapshot())
    }

    /// Sessions reported busy by their node (a turn or GPU work running) count as active.
    pub fn touch_busy(&self, ids: &[String]) {
        let entries = lock(&self.entries);
        for id in ids {
            if let Some(e) = entries.get(id) {
                e.touch();
            }
        }
    }

    /// Applies idle and lifetime policy, and flushes activity. Called on a short timer.
    pub async fn check_idle(&self, cluster: &Cluster, leader: &LeaderState, flush: bool) {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        for entry in entries {
            let state = entry.state();
            // Unclaimed pool members must stay warm: no idle action, and their lifetime
            // starts when they are claimed.
            let pooled = lock(&self.pooled).contains_key(&entry.id());
            let lifetime = lock(&entry.lifetime_from).elapsed();
            if let Some(max) = entry.max_lifetime
                && !pooled
                && lifetime >= max
                && !is_terminal(state)
            {
                let why = format!("max_lifetime {} reached", humantime::format_duration(max));
                if let Err(e) = self.delete(cluster, leader, &entry, &why).await {
                    tracing::warn!(error = %e, "could not stop a session past its max_lifetime");
                }
                continue;
            }
            let idle = lock(&entry.last_activity).elapsed();
            let busy = entry.inflight.load(Ordering::Relaxed) > 0;
            if state == SessionState::Ready && !pooled && !busy && idle >= entry.idle_timeout {
                let why = format!(
                    "idle for {}",
                    humantime::format_duration(Duration::from_secs(idle.as_secs()))
                );
                let result = match entry.idle_action {
                    IdleAction::Pause => {
                        self.pause(cluster, leader, &entry, &why).await.map(|_| ())
                    }
                    IdleAction::Stop => {
                        self.delete(cluster, leader, &entry, &why).await.map(|_| ())
                    }
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "idle action failed; will retry");
                }
                continue;
            }
            if flush && entry.dirty.swap(false, Ordering::Relaxed) && !is_terminal(state) {
                let mut revision = entry.revision.lock().await;
                let record = entry.snapshot();
                if is_terminal(record.state()) {
                    continue;
                }
                let txn =
                    Txn::fenced(leader.epoch).put(session_key(&record.id), record.encode_to_vec());
                cluster.metrics.store_writes_total.inc();
                match cluster.store.txn(txn).await {
                    Ok(o) if o.succeeded => *revision = o.revision,
                    Ok(_) => {
                        leader.depose();
                        return;
                    }
                    Err(e) => {
                        entry.dirty.store(true, Ordering::Relaxed);
                        tracing::warn!(error = %e, "activity flush failed; will retry");
                    }
                }
            }
        }
    }

    /// Turns and pause/resume are refused for unclaimed pool members: a claim must hand
    /// out a workload nobody has touched.
    fn refuse_pooled(&self, entry: &Entry) -> Result<()> {
        let id = entry.id();
        match lock(&self.pooled).get(&id) {
            Some(m) => Err(Error::FailedPrecondition(format!(
                "session {id} is an unclaimed member of the warm pool of template {}; \
                 CreateSession with that template claims one",
                m.template.1
            ))),
            None => Ok(()),
        }
    }

    /// The template whose pool holds session `id` unclaimed, if any.
    pub fn pool_of(&self, id: &str) -> Option<TemplateId> {
        lock(&self.pooled).get(id).map(|m| m.template.clone())
    }

    /// Unclaimed members of a template's pool that no claim or stop has taken, with their
    /// current records.
    pub fn pool_members(&self, template: &TemplateId) -> Vec<(Arc<Entry>, Session)> {
        let pooled = lock(&self.pooled);
        let entries = lock(&self.entries);
        let mut out: Vec<(Arc<Entry>, Session)> = pooled
            .iter()
            .filter(|(_, m)| &m.template == template && !m.busy)
            .filter_map(|(id, _)| entries.get(id).cloned())
            .map(|e| {
                let s = lock(&e.record).clone();
                (e, s)
            })
            .collect();
        out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        out
    }

    /// Every template that has unclaimed members (some may no longer exist).
    pub fn pooled_templates(&self) -> HashSet<TemplateId> {
        lock(&self.pooled)
            .values()
            .map(|m| m.template.clone())
            .collect()
    }

    /// Unclaimed members READY with the template's current spec: what a claim gets at once.
    pub fn pool_ready(&self, template: &TemplateId, spec: &SessionSpec) -> u32 {
        self.pool_members(template)
            .iter()
            .filter(|(_, s)| s.state() == SessionState::Ready && s.spec.as_ref() == Some(spec))
            .count() as u32
    }

    /// Pool keys found at load that name no live session.
    fn take_stale_pool_keys(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.stale_pool_keys))
    }

    /// Takes an unclaimed member of a template's pool for a claim: a READY one if any (the
    /// longest warm first), else one still starting, which is still sooner than a cold
    /// start. Only members with the template's current spec qualify. The member is marked
    /// busy, so no other claim or stop takes it; `claim` settles it either way, so call
    /// it at once (from a task that cannot be cancelled in between).
    pub fn pick_member(
        &self,
        template: &TemplateId,
        spec: &SessionSpec,
        node_usable: impl Fn(&str) -> bool,
    ) -> Option<Arc<Entry>> {
        let mut pooled = lock(&self.pooled);
        let entries = lock(&self.entries);
        let mut best: Option<(u8, String, Arc<Entry>)> = None;
        for (id, m) in pooled.iter() {
            if &m.template != template || m.busy {
                continue;
            }
            let Some(entry) = entries.get(id) else {
                continue;
            };
            let rank = {
                let r = lock(&entry.record);
                if r.spec.as_ref() != Some(spec) || !node_usable(&r.node_id) {
                    continue;
                }
                match r.state() {
                    SessionState::Ready => 0,
                    SessionState::Placed | SessionState::Starting => 1,
                    _ => continue,
                }
            };
            let better = best
                .as_ref()
                .is_none_or(|(r, best_id, _)| (rank, id) < (*r, best_id));
            if better {
                best = Some((rank, id.clone(), entry.clone()));
            }
        }
        let (_, id, entry) = best?;
        if let Some(m) = pooled.get_mut(&id) {
            m.busy = true;
        }
        Some(entry)
    }

    fn release(&self, id: &str) {
        if let Some(m) = lock(&self.pooled).get_mut(id) {
            m.busy = false;
        }
    }

    /// Hands a member taken by `pick_member` to its caller: one transaction, compared on
    /// the member's record and pool key revisions, deletes the pool key and rewrites the
    /// record with the caller's labels (and records the request id). `None` when the
    /// member changed meanwhile (failed, stopped): the caller picks another.
    pub async fn claim(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        labels: &BTreeMap<String, String>,
        request_id: &str,
    ) -> Result<Option<Session>> {
        let id = entry.id();
        let mut revision = entry.revision.lock().await;
        let membership = lock(&self.pooled).get(&id).filter(|m| m.busy).cloned();
        let Some(m) = membership else {
            return Ok(None);
        };
        if !matches!(
            entry.state(),
            SessionState::Ready | SessionState::Placed | SessionState::Starting
        ) {
            self.release(&id);
            return Ok(None);
        }
        let now = SystemTime::now();
        let max_deadline = entry
            .max_lifetime
            .map(|d| hearth_sdk::time::timestamp(now + d));
        let mut record = lock(&entry.record).clone();
        record.labels = labels.clone().into_iter().collect();
        record.max_deadline = max_deadline;
        let mut txn = Txn::fenced(leader.epoch)
            .when(Compare::ModRevision(session_key(&id), *revision))
            .when(Compare::ModRevision(m.key.clone(), m.key_revision))
            .delete(m.key.clone())
            .put(
                session_key(&id),
                entry_record_for_store(entry, record.clone()),
            );
        if !request_id.is_empty() {
            let key = request_key(&record.tenant, request_id);
            txn = txn
                .when(Compare::Absent(key.clone()))
                .put(key, id.clone().into_bytes());
        }
        cluster.metrics.store_writes_total.inc();
        let outcome = match cluster.store.txn(txn).await {
            Ok(o) => o,
            Err(e) => {
                self.release(&id);
                return Err(e.into());
            }
        };
        if !outcome.succeeded {
            self.release(&id);
            cluster.metrics.store_write_failures_total.inc();
            check_still_leader(cluster, leader).await?;
            return Ok(None);
        }
        *revision = outcome.revision;
        {
            let mut r = lock(&entry.record);
            r.labels = record.labels;
            r.max_deadline = record.max_deadline;
        }
        lock(&self.pooled).remove(&id);
        *lock(&entry.lifetime_from) = Instant::now();
        entry.touch();
        drop(revision);
        let snapshot = entry.snapshot();
        let why = format!("claimed from the warm pool of template {}", m.template.1);
        entry.changes.send_replace(event_for(&snapshot, &why));
        Ok(Some(snapshot))
    }

    /// Stops an unclaimed pool member, unless a claim or another stop has it. True if
    /// this call stopped it.
    pub async fn retire(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        entry: &Arc<Entry>,
        why: &str,
    ) -> Result<bool> {
        let id = entry.id();
        {
            let mut pooled = lock(&self.pooled);
            match pooled.get_mut(&id) {
                Some(m) if !m.busy => m.busy = true,
                _ => return Ok(false),
            }
        }
        match self.delete(cluster, leader, entry, why).await {
            Ok(_) => Ok(true),
            Err(e) => {
                self.release(&id);
                Err(e)
            }
        }
    }

    /// Deletes pool keys that name no live session (found at load).
    pub async fn drop_stale_pool_keys(&self, cluster: &Cluster, leader: &LeaderState) {
        let keys = self.take_stale_pool_keys();
        if keys.is_empty() {
            return;
        }
        let mut txn = Txn::fenced(leader.epoch);
        for key in &keys {
            txn = txn.delete(key.clone());
        }
        cluster.metrics.store_writes_total.inc();
        match cluster.store.txn(txn).await {
            Ok(o) if o.succeeded => {
                tracing::info!(
                    keys = keys.len(),
                    "removed pool keys of sessions that ended"
                );
            }
            Ok(_) => leader.depose(),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove stale pool keys; will retry");
                lock(&self.stale_pool_keys).extend(keys);
            }
        }
    }

    /// What the broker expects a node to run, taken on Hello before the node's new stream
    /// is registered: a session started over the new stream cannot be in the agent's
    /// inventory, so it must not be judged against it.
    pub fn expected_on(&self, node_id: &str) -> Expected {
        Expected(
            self.on_node(node_id)
                .into_iter()
                .map(|e| {
                    let generation = lock(&e.record).generation;
                    (e, generation)
                })
                .collect(),
        )
    }

    /// Reconciles an agent's inventory on Hello (DESIGN section 4):
    /// - a workload of a live session on this node, same generation: adopted as it is;
    /// - a session `expected` on this node whose workload is missing: FAILED, its GPUs
    ///   freed (not while its start command is in flight: the start settles it);
    /// - a workload of a session that ended (STOPPED, FAILED, LOST): stopped at once;
    /// - a workload of an unknown session, or of another generation: stopped after
    ///   `orphan_grace`, unless the session has become live on this node by then.
    pub async fn reconcile(
        &self,
        cluster: &Arc<Cluster>,
        leader: &LeaderState,
        node_id: &str,
        expected: Expected,
        running: Vec<RunningSession>,
    ) {
        let reported: HashSet<(String, u64)> = running
            .iter()
            .map(|w| (w.session_id.clone(), w.generation))
            .collect();
        for (entry, generation) in expected.0 {
            if reported.contains(&(entry.id(), generation)) {
                continue;
            }
            if let Err(e) = self
                .fail_missing(cluster, leader, node_id, &entry, generation)
                .await
            {
                tracing::warn!(error = %e, session = entry.id(), "could not fail a session whose workload is missing");
            }
        }
        for w in running {
            if self.live_here(node_id, &w.session_id, w.generation) {
                // Its READY status may have been dropped with the stream to a leader that
                // died; the Hello carries it instead, or the session would stay STARTING.
                if w.state() == SessionState::Ready {
                    let status = hearth_sdk::proto::v1::SessionStatus {
                        session_id: w.session_id.clone(),
                        generation: w.generation,
                        state: w.state,
                        reason: String::new(),
                        container_id: w.container_id.clone(),
                        ..Default::default()
                    };
                    if let Err(e) = self.on_status(cluster, leader, node_id, status).await {
                        tracing::warn!(error = %e, session = w.session_id, "could not record a workload reported ready on Hello");
                    }
                }
                continue;
            }
            match self.ended(cluster, &w.session_id).await {
                Ok(Some(state)) => {
                    let why = format!(
                        "its session is {}",
                        state.as_str_name().trim_start_matches("SESSION_STATE_")
                    );
                    self.stop_workload(cluster, leader, node_id, &w, &why).await;
                }
                Ok(None) => self.stop_after_grace(cluster, leader, node_id, w),
                Err(e) => {
                    tracing::warn!(error = %e, session = w.session_id, "could not look up the session of a workload; it is judged on the next Hello");
                }
            }
        }
    }

    /// True if `id` is a live session on `node_id` with this generation.
    fn live_here(&self, node_id: &str, id: &str, generation: u64) -> bool {
        lock(&self.entries).get(id).is_some_and(|e| {
            let r = lock(&e.record);
            r.node_id == node_id && r.generation == generation && !is_terminal(r.state())
        })
    }

    /// The final state of session `id` if it is recorded as ended; `None` if it is live
    /// (anywhere) or was never recorded.
    async fn ended(&self, cluster: &Cluster, id: &str) -> Result<Option<SessionState>> {
        if lock(&self.entries).contains_key(id) {
            return Ok(None);
        }
        let Some(kv) = cluster.store.get(&session_key(id)).await? else {
            return Ok(None);
        };
        let s = Session::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
            key: kv.key,
            reason: e.to_string(),
        })?;
        Ok(is_terminal(s.state()).then(|| s.state()))
    }

    /// FAILS a session whose workload its node no longer reports, unless it moved on
    /// meanwhile (a start in flight, a stop, another generation).
    async fn fail_missing(
        &self,
        cluster: &Arc<Cluster>,
        leader: &LeaderState,
        node_id: &str,
        entry: &Arc<Entry>,
        generation: u64,
    ) -> Result<()> {
        let _lifecycle = entry.lifecycle.lock().await;
        let (state, current) = {
            let r = lock(&entry.record);
            (r.state(), r.generation)
        };
        // PLACED by a leader that is gone, and its workload not here: that start was cut
        // off (or a restart was due). Send it again; the agent replaces any leftover.
        if state == SessionState::Placed
            && current == generation
            && entry.start_unsent.swap(false, Ordering::Relaxed)
            && lock(&entry.restart_at).is_none()
        {
            tracing::info!(
                session = entry.id(),
                node_id,
                "sending again a start a previous leader did not finish"
            );
            let (cluster, leader, entry) = (cluster.clone(), leader.clone(), entry.clone());
            tokio::spawn(async move {
                if let Err(e) = cluster.sessions.start(&cluster, &leader, &entry).await {
                    tracing::warn!(session = entry.id(), error = %e, "a start sent again failed");
                }
            });
            return Ok(());
        }
        // PLACED: the start command is in flight and settles the session itself.
        // STOPPING: a stop is in progress and ends it either way.
        let settled_elsewhere = !matches!(
            state,
            SessionState::Starting | SessionState::Ready | SessionState::Paused
        );
        if settled_elsewhere || current != generation {
            return Ok(());
        }
        let why = format!(
            "its workload is gone: node {node_id} did not report it when its agent said Hello"
        );
        self.fail(cluster, leader, entry, &why).await
    }

    /// Stops a workload that belongs to no live session here, now.
    async fn stop_workload(
        &self,
        cluster: &Cluster,
        leader: &LeaderState,
        node_id: &str,
        w: &RunningSession,
        why: &str,
    ) {
        let Some(connection) = cluster.nodes.connection(node_id) else {
            tracing::info!(
                node_id,
                session = w.session_id,
                "node disconnected before its orphan workload could be stopped; judged again on its next Hello"
            );
            return;
        };
        cluster.events.emit(
            "session.orphan_stopped",
            node_id,
            &w.session_id,
            format!(
                "stopping workload {} (session {}, generation {}) on node {node_id}: {why}",
                w.container_id, w.session_id, w.generation
            ),
        );
        let meta = CommandMeta {
            command_id: ulid::Ulid::new().to_string(),
            epoch: leader.epoch,
            session_id: w.session_id.clone(),
            generation: w.generation,
        };
        let command_id = meta.command_id.clone();
        let command = broker_message::Msg::StopSession(StopSessionCommand {
            meta: Some(meta),
            grace: Some(hearth_sdk::time::duration(Duration::from_secs(10))),
        });
        if let Err(e) = cluster
            .turns
            .command(node_id, &connection, &command_id, command, COMMAND_TIMEOUT)
            .await
        {
            tracing::warn!(error = %e, session = w.session_id, "could not stop an orphan workload");
        }
    }

    /// Stops a workload of an unknown session (or of another generation) once
    /// `orphan_grace` has passed, unless its session has become live on the node by then.
    /// The grace leaves room for a store that is behind, or an operator's mistake, before
    /// anything is destroyed. One timer per workload, however many Hellos come meanwhile.
    fn stop_after_grace(
        &self,
        cluster: &Arc<Cluster>,
        leader: &LeaderState,
        node_id: &str,
        w: RunningSession,
    ) {
        let key = (node_id.to_owned(), w.session_id.clone(), w.generation);
        if !lock(&self.orphans).insert(key.clone()) {
            return;
        }
        let grace = cluster.config.liveness.orphan_grace;
        cluster.events.emit(
            "session.orphan",
            node_id,
            &w.session_id,
            format!(
                "workload {} (session {}, generation {}) on node {node_id} belongs to no live \
                 session; it is stopped in {} unless the session becomes known",
                w.container_id,
                w.session_id,
                w.generation,
                humantime::format_duration(grace)
            ),
        );
        let (cluster, leader, node_id) = (cluster.clone(), leader.clone(), node_id.to_owned());
        tokio::spawn(async move {
            let waited = tokio::select! {
                _ = leader.lost.cancelled() => false,
                _ = tokio::time::sleep(grace) => true,
            };
            let sessions = &cluster.sessions;
            if waited && !sessions.live_here(&node_id, &w.session_id, w.generation) {
                let why = format!(
                    "no live session claimed it within orphan_grace ({})",
                    humantime::format_duration(grace)
                );
                sessions
                    .stop_workload(&cluster, &leader, &node_id, &w, &why)
                    .await;
            }
            lock(&sessions.orphans).remove(&key);
        });
    }

    /// Marks LOST every live session whose node is DOWN (silent past `lost_after`, with
    /// the leader in office for `takeover_grace`): one fenced transaction each writes the
    /// record and deletes its GPU allocation keys (and pool key), then `session.lost` is
    /// emitted. Called on the liveness timer; a session in the middle of a lifecycle change
    /// is taken on a later tick.
    pub async fn lose_on_down_nodes(&self, cluster: &Cluster, leader: &LeaderState) {
        let entries: Vec<Arc<Entry>> = lock(&self.entries).values().cloned().collect();
        for entry in entries {
            let node_id = lock(&entry.record).node_id.clone();
            if cluster.nodes.state(&node_id) != Some(NodeState::Down) {
                continue;
            }
            let Ok(_lifecycle) = entry.lifecycle.try_lock() else {
                continue;
            };
            if is_terminal(entry.state()) {
                continue;
            }
            let why = format!(
                "node {node_id} was silent past lost_after ({})",
                humantime::format_duration(cluster.config.liveness.lost_after)
            );
            let lost = self
                .transition(cluster, leader, &entry, SessionState::Lost, &why, |_| {})
                .await;
            match lost {
                Ok(()) => {
                    cluster.metrics.sessions_lost_total.inc();
                }
                Err(Error::Deposed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, session = entry.id(), "could not mark a session LOST; will retry");
                }
            }
        }
    }
}

fn entry_record_for_store(entry: &Entry, mut record: Session) -> Vec<u8> {
    let snapshot = entry.snapshot();
    record.last_activity_at = snapshot.last_activity_at;
    record.expires_at = snapshot.expires_at;
    record.encode_to_vec()
}

/// When a session's `max_lifetime` started: its claim for a claimed pool member (the
/// deadline is set then), else its creation.
fn lifetime_start(s: &Session) -> Option<SystemTime> {
    let deadline = s
        .max_deadline
        .as_ref()
        .and_then(hearth_sdk::time::system_time);
    let max = s
        .spec
        .as_ref()
        .and_then(|spec| spec.max_lifetime.as_ref())
        .and_then(|d| hearth_sdk::time::std_duration(d, "max_lifetime").ok());
    match (deadline, max) {
        (Some(deadline), Some(max)) => deadline.checked_sub(max),
        _ => s
            .created_at
            .as_ref()
            .and_then(hearth_sdk::time::system_time),
    }
}
