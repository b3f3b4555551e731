//! The production store: etcd, through the `etcd-client` crate.
//!
//! Leader election is built from plain keys, leases, transactions and watches rather than
//! etcd's lock or election API, so that the epoch is simply the leader key's
//! `create_revision` and fencing is one `Compare` like any other.

use std::collections::HashMap;
use std::future::{Future, pending};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn as EtcdTxn, TxnOp, WatchOptions,
    WatchStream,
};
use prost::Message;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Changes, Compare, KeyValue, LEADER_KEY, LeaderInfo, LeaderRecord, Leadership, Op, Store,
    StoreError, Txn, TxnOutcome,
};

/// Upper bound on one unary request. Without it a call made while every endpoint is down
/// would wait for a connection forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The etcd-backed store. Dropping it stops every background lease keep-alive without
/// revoking the lease, exactly as if the process had died: the leader key then lapses
/// after its TTL and a standby takes over.
pub struct EtcdStore {
    client: Client,
    /// `{prefix}/`, with exactly one trailing slash.
    root: String,
    /// Lease of each live leadership, by epoch, so `resign` can revoke it.
    leases: Arc<Mutex<HashMap<i64, i64>>>,
    /// Cancelled on drop; keep-alive tasks watch it.
    shutdown: CancellationToken,
    _shutdown_on_drop: DropGuard,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd {what}: {e}"))
}

/// Runs one etcd request under [`REQUEST_TIMEOUT`].
async fn call<T>(
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(
            what,
            format!("no answer in {REQUEST_TIMEOUT:?}"),
        )),
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers within `dial_timeout`. Keys live under
    /// `prefix` (`/hearth` by default); a trailing slash is optional.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when no endpoint answers in time.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        dial_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(dial_timeout)
            // Surfaces a dead connection under an idle watch or keep-alive stream.
            .with_keep_alive(
                Duration::from_secs(5),
                dial_timeout.max(Duration::from_secs(1)),
            );
        let root = format!("{}/", prefix.trim_end_matches('/'));
        let probe = async {
            let mut client = Client::connect(endpoints, Some(options)).await?;
            // Connecting is lazy; only a request proves that etcd answers. It reads inside
            // the prefix, where a restricted etcd user is allowed to.
            client.get(format!("{root}{LEADER_KEY}"), None).await?;
            Ok::<_, etcd_client::Error>(client)
        };
        let client = match timeout(dial_timeout, probe).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(unavailable(&format!("connect {endpoints:?}"), e)),
            Err(_) => {
                return Err(unavailable(
                    &format!("connect {endpoints:?}"),
                    format!("no answer in {dial_timeout:?}"),
                ));
            }
        };
        let shutdown = CancellationToken::new();
        Ok(Self {
            client,
            root,
            leases: Arc::default(),
            _shutdown_on_drop: shutdown.clone().drop_guard(),
            shutdown,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.root, key.trim_start_matches('/'))
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let full = String::from_utf8_lossy(kv.key());
        let key = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(&self.root))
            .ok_or_else(|| StoreError::Corrupt {
                key: full.to_string(),
                reason: format!("key is not UTF-8 under {:?}", self.root),
            })?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    fn compare(&self, compare: &Compare) -> EtcdCompare {
        match compare {
            Compare::Absent(key) => {
                EtcdCompare::create_revision(self.full(key), CompareOp::Equal, 0)
            }
            Compare::ModRevision(key, rev) => {
                EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *rev)
            }
            Compare::CreateRevision(key, rev) => {
                EtcdCompare::create_revision(self.full(key), CompareOp::Equal, *rev)
            }
        }
    }

    /// One attempt: binds the leader key to `lease` if nobody holds it. Returns the epoch
    /// on success, or the revision at which someone else held it.
    async fn try_lead(&self, record: &[u8], lease: i64) -> Result<Result<i64, i64>, StoreError> {
        let key = self.full(LEADER_KEY);
        let txn = EtcdTxn::new()
            .when([EtcdCompare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                key,
                record.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let response = call("campaign", self.client.clone().txn(txn)).await?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| unavailable("campaign", "response has no header"))?;
        // The put created the key in this very revision, so the revision is its
        // create_revision: the epoch.
        Ok(if response.succeeded() {
            Ok(revision)
        } else {
            Err(revision)
        })
    }

    /// Returns once the leader key is deleted after `revision`, the watch breaks, or
    /// `patience` passes; the caller then simply tries again.
    async fn wait_for_vacancy(&self, revision: i64, patience: Duration) {
        let wait = async {
            let options = WatchOptions::new().with_start_revision(revision + 1);
            let watch = self
                .client
                .clone()
                .watch(self.full(LEADER_KEY), Some(options))
                .await;
            let Ok(mut watch) = watch else {
                sleep(Duration::from_millis(200)).await;
                return;
            };
            while let Ok(Some(response)) = watch.message().await {
                if response.canceled() {
                    break;
                }
                if response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == EventType::Delete)
                {
                    return;
                }
            }
            // The watch broke: back off a little so a retry loop cannot spin.
            sleep(Duration::from_millis(200)).await;
        };
        let _ = timeout(patience, wait).await;
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = call("get", self.client.clone().get(self.full(key), None)).await?;
        response
            .kvs()
            .first()
            .map(|kv| self.convert(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let options = GetOptions::new().with_prefix();
        let response = call(
            "list",
            self.client.clone().get(self.full(prefix), Some(options)),
        )
        .await?;
        // etcd returns a range sorted by key.
        response.kvs().iter().map(|kv| self.convert(kv)).collect()
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<_> = txn.when.iter().map(|c| self.compare(c)).collect();
        let ops: Vec<_> = txn
            .then
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.full(&key), value, None),
                Op::Delete { key } => TxnOp::delete(self.full(&key), None),
            })
            .collect();
        let request = EtcdTxn::new().when(compares).and_then(ops);
        let response = call("txn", self.client.clone().txn(request)).await?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| unavailable("txn", "response has no header"))?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision,
        })
    }

    /// Each attempt grants a fresh lease and revokes it if the attempt loses, so a lease
    /// that lapsed while we waited is never attached to the leader key.
    async fn campaign(
        &self,
        broker_id: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        let record = LeaderRecord {
            broker_id: broker_id.to_owned(),
            address: address.to_owned(),
        }
        .encode_to_vec();
        let ttl_secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        loop {
            let granted_at = Instant::now();
            let grant = call(
                "lease grant",
                self.client.clone().lease_grant(ttl_secs, None),
            )
            .await?;
            let lease = grant.id();
            // etcd may raise a TTL below its minimum; the granted one is what counts.
            let granted = Duration::from_secs(grant.ttl().max(1).unsigned_abs());
            let attempt = self.try_lead(&record, lease).await;
            match attempt {
                Ok(Ok(epoch)) => {
                    let lost = CancellationToken::new();
                    lock(&self.leases).insert(epoch, lease);
                    tokio::spawn(
                        Keeper {
                            client: self.client.clone(),
                            key: self.full(LEADER_KEY),
                            lease,
                            ttl: granted,
                            epoch,
                            lost: lost.clone(),
                            shutdown: self.shutdown.clone(),
                            leases: Arc::clone(&self.leases),
                        }
                        .run(granted_at + granted),
                    );
                    return Ok(Leadership { epoch, lost });
                }
                Ok(Err(held_at)) => {
                    let _ = call("lease revoke", self.client.clone().lease_revoke(lease)).await;
                    self.wait_for_vacancy(held_at, granted).await;
                }
                Err(e) => {
                    let _ = call("lease revoke", self.client.clone().lease_revoke(lease)).await;
                    return Err(e);
                }
            }
        }
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        let Some(kv) = self.get(LEADER_KEY).await? else {
            return Ok(None);
        };
        LeaderInfo::from_key(&kv).map(Some)
    }

    async fn watch(&self, prefix: &str) -> Result<Changes, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix();
        let mut stream = call("watch", client.watch(self.full(prefix), Some(options))).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(response)) if !response.canceled() => {
                        if !response.events().is_empty() {
                            // Full: a change is already waiting to be read.
                            let _ = tx.try_send(());
                        }
                    }
                    // Broken or cancelled (say, compacted): closing tells the caller to
                    // read again and watch again.
                    _ => return,
                }
            }
        });
        Ok(rx)
    }

    async fn resign(&self, leadership: &Leadership) -> Result<(), StoreError> {
        // Taken before cancelling `lost`, which makes the keeper forget the lease.
        let lease = lock(&self.leases).remove(&leadership.epoch);
        // Stop acting as leader before anything else can fail.
        leadership.lost.cancel();
        let fenced = Txn::fenced(leadership.epoch).delete(LEADER_KEY);
        let deleted = self.txn(fenced).await;
        if let Some(lease) = lease {
            call("lease revoke", self.client.clone().lease_revoke(lease)).await?;
        }
        deleted.map(drop)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The map stays consistent across a panic: every access is a single insert or remove.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps one leadership's lease alive and watches its key, cancelling `lost` as soon as
/// either fails. Stops when `lost` or `shutdown` is cancelled.
struct Keeper {
    client: Client,
    key: String,
    lease: i64,
    ttl: Duration,
    epoch: i64,
    lost: CancellationToken,
    shutdown: CancellationToken,
    leases: Arc<Mutex<HashMap<i64, i64>>>,
}

enum Renewal {
    /// The lease is good until this instant (local monotonic clock).
    Until(Instant),
    /// etcd no longer knows the lease.
    Gone,
    /// No answer; try again next tick.
    Failed,
}

impl Keeper {
    /// `valid_until` is a conservative local deadline: the lease surely lives until then.
    async fn run(self, mut valid_until: Instant) {
        let period = self.ttl / 3;
        let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut watch = self.watch().await;
        let mut next_tick = Instant::now() + period;
        loop {
            tokio::select! {
                () = self.lost.cancelled() => break,
                () = self.shutdown.cancelled() => break,
                () = sleep_until(next_tick) => {
                    next_tick = Instant::now() + period;
                    match self.renew(&mut stream, period).await {
                        Renewal::Until(deadline) => valid_until = deadline,
                        Renewal::Gone => break,
                        Renewal::Failed => stream = None,
                    }
                    // Past this point another broker may already lead.
                    if Instant::now() >= valid_until {
                        break;
                    }
                    if watch.is_none() {
                        watch = self.watch().await;
                    }
                }
                taken = next_change(&mut watch, self.epoch) => {
                    match taken {
                        Some(true) => break,
                        Some(false) => {}
                        // Re-established (with a fresh read) on the next tick.
                        None => watch = None,
                    }
                }
            }
        }
        self.lost.cancel();
        lock(&self.leases).remove(&self.epoch);
    }

    async fn renew(
        &self,
        stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
        patience: Duration,
    ) -> Renewal {
        let sent_at = Instant::now();
        let attempt = async {
            match stream {
                Some((keeper, responses)) => {
                    keeper.keep_alive().await?;
                    match responses.message().await? {
                        Some(r) => Ok(Some(r.ttl())),
                        None => Err(etcd_client::Error::LeaseKeepAliveError(
                            "keep-alive stream closed".to_owned(),
                        )),
                    }
                }
                None => {
                    // Opening the stream renews once and fails if the lease is unknown.
                    let opened = self.client.clone().lease_keep_alive(self.lease).await;
                    match opened {
                        Ok(pair) => {
                            *stream = Some(pair);
                            Ok(Some(self.ttl.as_secs().try_into().unwrap_or(i64::MAX)))
                        }
                        Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match timeout(patience, attempt).await {
            Ok(Ok(Some(ttl))) if ttl > 0 => {
                Renewal::Until(sent_at + Duration::from_secs(ttl.unsigned_abs()))
            }
            Ok(Ok(_)) => Renewal::Gone,
            Ok(Err(_)) | Err(_) => Renewal::Failed,
        }
    }

    /// Watches the leader key from just after a read that shows it is still ours.
    /// `None` if that read fails (retried next tick) or shows it is not ours (the next
    /// renewal or the deadline then ends the leadership).
    async fn watch(&self) -> Option<WatchStream> {
        let mut client = self.client.clone();
        let read = timeout(REQUEST_TIMEOUT, client.get(self.key.clone(), None));
        let response = read.await.ok()?.ok()?;
        let ours = response
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == self.epoch);
        if !ours {
            self.lost.cancel();
            return None;
        }
        let revision = response.header()?.revision();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let watch = client.watch(self.key.clone(), Some(options));
        timeout(REQUEST_TIMEOUT, watch).await.ok()?.ok()
    }
}

/// Waits for the next watch response: `Some(true)` if the key was deleted or recreated,
/// `Some(false)` for anything else, `None` if the watch broke. Pends forever without a
/// watch, so it can sit in a `select!`.
async fn next_change(watch: &mut Option<WatchStream>, epoch: i64) -> Option<bool> {
    let Some(stream) = watch else {
        return pending().await;
    };
    match stream.message().await {
        Ok(Some(response)) if !response.canceled() => Some(response.events().iter().any(|e| {
            e.event_type() == EventType::Delete
                || e.kv().is_some_and(|kv| kv.create_revision() != epoch)
        })),
        _ => {
            // Backs off a little so a broken stream cannot spin.
            sleep(Duration::from_millis(100)).await;
            None
        }
    }
}
