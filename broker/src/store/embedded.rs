//! The single-process store: etcd's data model in memory, persisted to a snapshot file
//! and a write-ahead log beside it.
//!
//! Every successful write appends one record (its revision and ops, length-prefixed and
//! checksummed) to `<file>.wal` and waits for `fdatasync`, as etcd does: about 0.2 ms on
//! the reference VM, where rewriting a snapshot and fsyncing it and its directory took
//! 5-50 ms and put a warm-pool claim over its 10 ms budget. Once the log passes a few MiB, the whole
//! state is written as a snapshot (`<file>.tmp`, fsync, rename over `<file>`, fsync the
//! directory) and the log is emptied; opening the store does the same after replaying
//! the log. A record torn by a crash is never acknowledged, so replay stops at the first
//! incomplete or corrupt record and drops it; records already in the snapshot (a crash
//! between snapshot and truncation) are skipped by revision. Brokers that need more than
//! one machine's few thousand records, or several brokers, run on etcd.
//!
//! A sibling `<file>.lock` holds an exclusive OS lock for the store's whole life, so two
//! brokers can never write the same file.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    Changes, Compare, KeyValue, LEADER_KEY, LeaderInfo, LeaderRecord, Leadership, Op, Store,
    StoreError, Txn, TxnOutcome,
};

/// Written into every snapshot, so that a stray file is refused rather than read as an
/// empty store.
const FORMAT: &str = "hearth.store.embedded.v1";

/// Log size past which the state is snapshotted and the log emptied.
const COMPACT_AFTER_BYTES: u64 = 4 << 20;
/// Bytes before each log record: its length and its checksum, both little-endian u32.
const RECORD_HEADER: usize = 8;

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
    /// The write-ahead log. Locked only while `state` is, so records go in revision order.
    wal: Mutex<Wal>,
    /// Wakes campaigners when the live leadership ends.
    leader_gone: Notify,
    /// [`Store::watch`]ers: a prefix and where to say it changed.
    watchers: Mutex<Vec<(String, tokio::sync::mpsc::Sender<()>)>>,
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

/// One write, as the log holds it: applying `ops` to the state at `revision - 1` gives
/// the state at `revision`.
#[derive(Clone, PartialEq, prost::Message)]
struct WalRecord {
    #[prost(int64, tag = "1")]
    revision: i64,
    #[prost(message, repeated, tag = "2")]
    ops: Vec<WalOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WalOp {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
    /// A delete (`value` unused); otherwise a put.
    #[prost(bool, tag = "3")]
    delete: bool,
}

fn wal_ops(ops: &[Op]) -> Vec<WalOp> {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value } => WalOp {
                key: key.clone(),
                value: value.clone(),
                delete: false,
            },
            Op::Delete { key } => WalOp {
                key: key.clone(),
                value: Vec::new(),
                delete: true,
            },
        })
        .collect()
}

fn ops_of(record: WalRecord) -> Vec<Op> {
    record
        .ops
        .into_iter()
        .map(|op| {
            if op.delete {
                Op::Delete { key: op.key }
            } else {
                Op::Put {
                    key: op.key,
                    value: op.value,
                }
            }
        })
        .collect()
}

/// FNV-1a: enough to tell a torn or garbled record from a whole one.
fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The open log file.
struct Wal {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Wal {
    /// Opens the log empty (its records are in the snapshot by now).
    fn create_empty(path: PathBuf) -> Result<Self, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| file_error(&path, e))?;
        let mut wal = Self { path, file, len: 1 };
        wal.truncate()?;
        Ok(wal)
    }

    /// Appends one record and waits until it is on disk. On failure the log is cut back
    /// to where it was, so it never holds a record that was not acknowledged.
    fn append(&mut self, record: &WalRecord) -> Result<(), StoreError> {
        let payload = record.encode_to_vec();
        let len = u32::try_from(payload.len()).map_err(|_| {
            file_error(
                &self.path,
                io::Error::new(io::ErrorKind::InvalidInput, "one write larger than 4 GiB"),
            )
        })?;
        let mut bytes = Vec::with_capacity(RECORD_HEADER + payload.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&checksum(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let written = self
            .file
            .write_all(&bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(self.len);
            return Err(file_error(&self.path, e));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn truncate(&mut self) -> Result<(), StoreError> {
        if self.len == 0 {
            return Ok(());
        }
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| file_error(&self.path, e))?;
        self.len = 0;
        Ok(())
    }
}

/// Applies the log at `path` on top of `state`; returns how many records it applied.
/// Stops at the first torn or corrupt record: one that was never acknowledged.
fn replay(path: &Path, state: &mut State) -> Result<usize, StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(|e| file_error(path, e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(file_error(path, e)),
    }
    let corrupt = |reason: String| {
        file_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the store's log does not follow its snapshot ({reason})"),
            ),
        )
    };
    let (mut at, mut applied) = (0usize, 0usize);
    while bytes.len() - at >= RECORD_HEADER {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (len, sum) = (word(at) as usize, word(at + 4));
        let Some(payload) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        if checksum(payload) != sum {
            break;
        }
        let Ok(record) = WalRecord::decode(payload) else {
            break;
        };
        at += RECORD_HEADER + len;
        if record.revision <= state.revision {
            // Already in the snapshot: the log was not emptied after the last one.
            continue;
        }
        let revision = record.revision;
        if revision != state.revision + 1 {
            return Err(corrupt(format!(
                "record for revision {revision} follows revision {}",
                state.revision
            )));
        }
        if !state.apply(ops_of(record)) || state.revision != revision {
            return Err(corrupt(format!(
                "record for revision {revision} does not change the state"
            )));
        }
        applied += 1;
    }
    if at < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - at,
            "dropping the unacknowledged end of the store's log (a write torn by a crash)"
        );
    }
    Ok(applied)
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
        let wal_path = with_suffix(&path, ".wal");
        replay(&wal_path, &mut state)?;
        if state.keys.remove(LEADER_KEY).is_some() {
            state.revision += 1;
        }
        // Start from a snapshot of everything and an empty log.
        persist(&path, &state)?;
        let wal = Wal::create_empty(wal_path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                wal: Mutex::new(wal),
                leader_gone: Notify::new(),
                watchers: Mutex::new(Vec::new()),
                _lock: lock,
            }),
        })
    }

    /// The snapshot file (the log is beside it, with `.wal` appended).
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
        let ops = wal_ops(&txn.then);
        let keys: Vec<String> = txn.then.iter().map(|op| op.key().to_owned()).collect();
        if next.apply(txn.then) {
            self.log(next.revision, ops)?;
            let ended = next.check_leader();
            *state = next;
            self.compact_if_due(&state);
            if ended {
                self.leader_gone.notify_waiters();
            }
            // Under the state lock, so watchers hear of writes in order.
            self.tell_watchers(&keys);
        }
        Ok(TxnOutcome {
            succeeded: true,
            revision: state.revision,
        })
    }

    /// Tells every watcher whose prefix covers one of `keys`; forgets closed ones.
    fn tell_watchers(&self, keys: &[String]) {
        let mut watchers = self
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        watchers.retain(|(prefix, tx)| {
            if tx.is_closed() {
                return false;
            }
            if keys.iter().any(|k| k.starts_with(prefix.as_str())) {
                // Full: a change is already waiting to be read.
                let _ = tx.try_send(());
            }
            true
        });
    }

    /// Makes one write durable: appends it to the log. Call with `state` locked.
    fn log(&self, revision: i64, ops: Vec<WalOp>) -> Result<(), StoreError> {
        self.wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&WalRecord { revision, ops })
    }

    /// Once the log is long, writes the state as a snapshot and empties the log. A
    /// failure is only logged: the log still holds every write. Call with `state` locked.
    fn compact_if_due(&self, state: &State) {
        let mut wal = self
            .wal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if wal.len < COMPACT_AFTER_BYTES {
            return;
        }
        if let Err(e) = persist(&self.path, state).and_then(|()| wal.truncate()) {
            tracing::warn!(error = %e, "could not snapshot the store; its log keeps growing until it can");
        }
    }

    /// Takes leadership unless a leadership from this process is still live.
    fn try_campaign(&self, record: Vec<u8>) -> Result<Option<Leadership>, StoreError> {
        let mut state = self.lock();
        if state.live.is_some() {
            return Ok(None);
        }
        let mut next = state.clone();
        // Delete then put, so the key is created afresh and the epoch always grows.
        let ops = vec![
            Op::Delete {
                key: LEADER_KEY.to_owned(),
            },
            Op::Put {
                key: LEADER_KEY.to_owned(),
                value: record,
            },
        ];
        let logged = wal_ops(&ops);
        next.apply(ops);
        let leadership = Leadership {
            epoch: next.revision,
            lost: CancellationToken::new(),
        };
        next.live = Some((leadership.epoch, leadership.lost.clone()));
        self.log(next.revision, logged)?;
        *state = next;
        self.compact_if_due(&state);
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
            let ops = vec![Op::Delete {
                key: LEADER_KEY.to_owned(),
            }];
            let logged = wal_ops(&ops);
            next.apply(ops);
            self.log(next.revision, logged)?;
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

    async fn watch(&self, prefix: &str) -> Result<Changes, StoreError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        self.inner
            .watchers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((prefix.to_owned(), tx));
        Ok(rx)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8]) -> Txn {
        Txn::default().put(key, value.to_vec())
    }

    #[tokio::test]
    async fn writes_survive_a_crash_through_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.txn(put("a", b"1")).await.unwrap();
            s.txn(put("b", b"2")).await.unwrap();
            s.txn(Txn::default().delete("a")).await.unwrap();
            assert!(
                std::fs::metadata(with_suffix(&path, ".wal")).unwrap().len() > 0,
                "the writes went to the log, not a new snapshot"
            );
            // Dropped without any shutdown step, as a crash would.
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.get("a").await.unwrap(), None);
        let b = s.get("b").await.unwrap().unwrap();
        assert_eq!((b.value.as_slice(), b.mod_revision), (b"2".as_slice(), 3));
        assert_eq!(s.txn(put("c", b"3")).await.unwrap().revision, 5);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.txn(put("a", b"1")).await.unwrap();
            s.txn(put("b", b"2")).await.unwrap();
        }
        let wal = with_suffix(&path, ".wal");
        let bytes = std::fs::read(&wal).unwrap();
        // Cut the second record short, then add garbage, as a crash mid-write leaves it.
        let mut torn = bytes[..bytes.len() - 2].to_vec();
        torn.extend_from_slice(b"\xff\xff");
        std::fs::write(&wal, &torn).unwrap();
        let s = EmbeddedStore::open(&path).unwrap();
        assert!(s.get("a").await.unwrap().is_some());
        assert_eq!(s.get("b").await.unwrap(), None, "never acknowledged");
        assert_eq!(s.txn(put("c", b"3")).await.unwrap().revision, 3);
        drop(s);
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.get("c").await.unwrap().unwrap().mod_revision, 3);
    }

    #[tokio::test]
    async fn a_long_log_is_folded_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        let wal = with_suffix(&path, ".wal");
        let s = EmbeddedStore::open(&path).unwrap();
        let big = vec![7u8; 1 << 20];
        for i in 0..5 {
            s.txn(put(&format!("k{i}"), &big)).await.unwrap();
        }
        assert!(
            std::fs::metadata(&wal).unwrap().len() < COMPACT_AFTER_BYTES,
            "the log was emptied once it passed {COMPACT_AFTER_BYTES} bytes"
        );
        drop(s);
        let s = EmbeddedStore::open(&path).unwrap();
        for i in 0..5 {
            assert_eq!(s.get(&format!("k{i}")).await.unwrap().unwrap().value, big);
        }
    }

    #[tokio::test]
    async fn records_already_in_the_snapshot_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        let wal = with_suffix(&path, ".wal");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.txn(put("a", b"1")).await.unwrap();
        }
        let log = std::fs::read(&wal).unwrap();
        {
            // Opening snapshots everything and empties the log...
            let s = EmbeddedStore::open(&path).unwrap();
            s.txn(put("b", b"2")).await.unwrap();
        }
        // ...but a crash before the log was emptied leaves old records in front.
        let mut both = log;
        both.extend(std::fs::read(&wal).unwrap());
        std::fs::write(&wal, both).unwrap();
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.get("a").await.unwrap().unwrap().mod_revision, 2);
        assert_eq!(s.get("b").await.unwrap().unwrap().mod_revision, 3);
    }
}
