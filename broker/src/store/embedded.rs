//! The single-process store: etcd's data model in memory, persisted to one local file.
//!
//! Every successful write rewrites the whole snapshot (`<file>.tmp`, fsync, rename over
//! `<file>`, fsync the directory). That costs O(state) per write, which is fine for the
//! few thousand records one machine holds, and buys a file that is always either the old
//! or the new state, never a torn mix. Brokers that need more run on etcd.
//!
//! A sibling `<file>.lock` holds an exclusive OS lock for the store's whole life, so two
//! brokers can never write the same file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Compare, KeyValue, LEADER_KEY, LeaderInfo, LeaderRecord, Leadership, Op, Store, StoreError,
    Txn, TxnOutcome,
};

/// Written into every snapshot, so that a stray file is refused rather than read as an
/// empty store.
const FORMAT: &str = "hearth.store.embedded.v1";

/// The store used when no etcd endpoints are configured.
///
/// Semantics are etcd's, exactly: the revision of an empty store is 1; each transaction
/// that changes at least one key bumps it by one (deleting an absent key changes nothing);
/// failed and read-only transactions leave it alone. One difference: etcd rejects a
/// transaction that writes the same key twice, while this store applies the ops in order.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Wakes campaigners when the live leadership ends.
    leader_gone: Notify,
    /// Held, never read: dropping it releases the OS lock.
    _lock: File,
}

#[derive(Clone)]
struct State {
    revision: i64,
    keys: BTreeMap<String, KeyValue>,
    /// The leadership granted by this process and not yet ended, if any.
    live: Option<(i64, CancellationToken)>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Snapshot {
    #[prost(string, tag = "1")]
    format: String,
    #[prost(int64, tag = "2")]
    revision: i64,
    #[prost(message, repeated, tag = "3")]
    entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
    #[prost(int64, tag = "3")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    mod_revision: i64,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, taking its lock.
    ///
    /// Synchronous: it runs once at start-up, before the runtime serves anything.
    ///
    /// A leader key left by an earlier process is dropped on open (one revision bump, as
    /// when an etcd lease lapses): that process is gone, since we now hold its lock.
    ///
    /// # Errors
    ///
    /// [`StoreError::Locked`] when another store holds the file (in this process or
    /// another); [`StoreError::File`] when it cannot be read, written or decoded.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let lock = take_lock(&path)?;
        let mut state = load(&path)?;
        if state.keys.remove(LEADER_KEY).is_some() {
            state.revision += 1;
            persist(&path, &state)?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                leader_gone: Notify::new(),
                _lock: lock,
            }),
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::File {
        path: path.display().to_string(),
        source,
    }
}

fn take_lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = with_suffix(path, ".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| file_error(&lock_path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked(path.display().to_string())),
        Err(TryLockError::Error(e)) => Err(file_error(&lock_path, e)),
    }
}

fn load(path: &Path) -> Result<State, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(State {
                revision: 1,
                keys: BTreeMap::new(),
                live: None,
            });
        }
        Err(e) => return Err(file_error(path, e)),
    };
    let corrupt = |reason: String| {
        file_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "not a valid Hearth store snapshot ({reason}); restore it from a backup or move it away"
                ),
            ),
        )
    };
    let snapshot = Snapshot::decode(bytes.as_slice()).map_err(|e| corrupt(e.to_string()))?;
    if snapshot.format != FORMAT {
        return Err(corrupt(format!(
            "format is {:?}, want {FORMAT:?}",
            snapshot.format
        )));
    }
    if snapshot.revision < 1 {
        return Err(corrupt(format!("revision {} < 1", snapshot.revision)));
    }
    let mut keys = BTreeMap::new();
    for e in snapshot.entries {
        if e.create_revision < 1
            || e.create_revision > e.mod_revision
            || e.mod_revision > snapshot.revision
        {
            return Err(corrupt(format!(
                "key {:?} has create_revision {} and mod_revision {} at store revision {}",
                e.key, e.create_revision, e.mod_revision, snapshot.revision
            )));
        }
        let kv = KeyValue {
            key: e.key.clone(),
            value: e.value,
            create_revision: e.create_revision,
            mod_revision: e.mod_revision,
        };
        if keys.insert(e.key.clone(), kv).is_some() {
            return Err(corrupt(format!("key {:?} appears twice", e.key)));
        }
    }
    Ok(State {
        revision: snapshot.revision,
        keys,
        live: None,
    })
}

fn persist(path: &Path, state: &State) -> Result<(), StoreError> {
    let snapshot = Snapshot {
        format: FORMAT.to_owned(),
        revision: state.revision,
        entries: state
            .keys
            .values()
            .map(|kv| Entry {
                key: kv.key.clone(),
                value: kv.value.clone(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
            })
            .collect(),
    };
    let tmp = with_suffix(path, ".tmp");
    let write = || -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&snapshot.encode_to_vec())?;
        file.sync_all()
    };
    write().map_err(|e| file_error(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_error(path, e))?;
    // The rename is only durable once the directory entry is.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| file_error(dir, e))
}

impl State {
    fn holds(&self, compare: &Compare) -> bool {
        // An absent key compares as revision 0, as in etcd.
        let revisions = |key: &str| {
            self.keys
                .get(key)
                .map_or((0, 0), |kv| (kv.create_revision, kv.mod_revision))
        };
        match compare {
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::ModRevision(key, rev) => revisions(key).1 == *rev,
            Compare::CreateRevision(key, rev) => revisions(key).0 == *rev,
        }
    }

    /// Applies `ops` at the next revision; returns whether anything changed.
    fn apply(&mut self, ops: Vec<Op>) -> bool {
        let next = self.revision + 1;
        let mut changed = false;
        for op in ops {
            match op {
                Op::Put { key, value } => {
                    let create_revision = self.keys.get(&key).map_or(next, |kv| kv.create_revision);
                    self.keys.insert(
                        key.clone(),
                        KeyValue {
                            key,
                            value,
                            create_revision,
                            mod_revision: next,
                        },
                    );
                    changed = true;
                }
                Op::Delete { key } => changed |= self.keys.remove(&key).is_some(),
            }
        }
        if changed {
            self.revision = next;
        }
        changed
    }

    /// Ends the live leadership if its key is gone or was replaced, as etcd's watch would.
    fn check_leader(&mut self) -> bool {
        let Some((epoch, lost)) = &self.live else {
            return false;
        };
        let current = self.keys.get(LEADER_KEY).map(|kv| kv.create_revision);
        if current == Some(*epoch) {
            return false;
        }
        lost.cancel();
        self.live = None;
        true
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-written: writes go to a
        // clone that replaces it only once persisted.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Compare, apply to a copy, persist, then publish: a failed write leaves memory and
    /// file as they were.
    fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let mut state = self.lock();
        if !txn.when.iter().all(|c| state.holds(c)) {
            return Ok(TxnOutcome {
                succeeded: false,
                revision: state.revision,
            });
        }
        if txn.then.is_empty() {
            return Ok(TxnOutcome {
                succeeded: true,
                revision: state.revision,
            });
        }
        let mut next = state.clone();
        if next.apply(txn.then) {
            persist(&self.path, &next)?;
            let ended = next.check_leader();
            *state = next;
            if ended {
                self.leader_gone.notify_waiters();
            }
        }
        Ok(TxnOutcome {
            succeeded: true,
            revision: state.revision,
        })
    }

    /// Takes leadership unless a leadership from this process is still live.
    fn try_campaign(&self, record: Vec<u8>) -> Result<Option<Leadership>, StoreError> {
        let mut state = self.lock();
        if state.live.is_some() {
            return Ok(None);
        }
        let mut next = state.clone();
        // Delete then put, so the key is created afresh and the epoch always grows.
        next.keys.remove(LEADER_KEY);
        next.apply(vec![Op::Put {
            key: LEADER_KEY.to_owned(),
            value: record,
        }]);
        let leadership = Leadership {
            epoch: next.revision,
            lost: CancellationToken::new(),
        };
        next.live = Some((leadership.epoch, leadership.lost.clone()));
        persist(&self.path, &next)?;
        *state = next;
        Ok(Some(leadership))
    }

    fn resign(&self, leadership: &Leadership) -> Result<(), StoreError> {
        leadership.lost.cancel();
        let mut state = self.lock();
        let mut next = state.clone();
        if next.holds(&Compare::CreateRevision(
            LEADER_KEY.to_owned(),
            leadership.epoch,
        )) {
            next.apply(vec![Op::Delete {
                key: LEADER_KEY.to_owned(),
            }]);
            persist(&self.path, &next)?;
        }
        if next
            .live
            .as_ref()
            .is_some_and(|(epoch, _)| *epoch == leadership.epoch)
        {
            next.live = None;
        }
        *state = next;
        drop(state);
        self.leader_gone.notify_waiters();
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // Writes fsync; keep them off the async workers.
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Unavailable(format!("embedded store write task failed: {e}")))?
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.inner.lock().keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let state = self.inner.lock();
        Ok(state
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let inner = Arc::clone(&self.inner);
        blocking(move || inner.txn(txn)).await
    }

    /// There is one process, so a campaign normally wins at once. It waits only while an
    /// earlier leadership from this same store is still live (not resigned), so that the
    /// contract "one leader at a time" holds here as it does on etcd. `ttl` is unused: a
    /// leader cannot outlive its process.
    async fn campaign(
        &self,
        broker_id: &str,
        address: &str,
        _ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        let record = LeaderRecord {
            broker_id: broker_id.to_owned(),
            address: address.to_owned(),
        }
        .encode_to_vec();
        loop {
            // Registered before the check, so a resign between the check and the await
            // still wakes us.
            let mut gone = pin!(self.inner.leader_gone.notified());
            gone.as_mut().enable();
            let inner = Arc::clone(&self.inner);
            let record = record.clone();
            if let Some(leadership) = blocking(move || inner.try_campaign(record)).await? {
                return Ok(leadership);
            }
            gone.await;
        }
    }

    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError> {
        let Some(kv) = self.inner.lock().keys.get(LEADER_KEY).cloned() else {
            return Ok(None);
        };
        LeaderInfo::from_key(&kv).map(Some)
    }

    async fn resign(&self, leadership: &Leadership) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let leadership = leadership.clone();
        blocking(move || inner.resign(&leadership)).await
    }
}
