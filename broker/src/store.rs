//! The broker's persistent state, behind one trait with two backends.
//!
//! The model is etcd's: a flat, ordered key space; every write bumps one global revision;
//! each key remembers the revision that created it and the one that last changed it; and
//! all writes that must be atomic go through one compare-then-write transaction. The
//! embedded backend reproduces exactly these semantics, so one contract suite
//! (`tests/tests/store_contract.rs`) runs against both.
//!
//! Keys passed in and returned are relative to the store's prefix (`/hearth` by default):
//! `nodes/gpu-1`, never `/hearth/nodes/gpu-1`.
//!
//! Leader election lives here too, because fencing depends on it: the leader key's
//! `create_revision` is the leader's **epoch**, and every write the leader makes carries
//! `Compare::CreateRevision(LEADER_KEY, epoch)`, so a deposed leader's writes fail.

pub mod embedded;
pub mod etcd;

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// The key that the leader holds (relative to the prefix).
pub const LEADER_KEY: &str = "leader";
/// Key holding the cluster's identity (a ULID), written once by the first leader.
pub const CLUSTER_KEY: &str = "cluster";

/// A key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Key, relative to the prefix.
    pub key: String,
    /// Value bytes (protobuf-encoded records).
    pub value: Vec<u8>,
    /// Revision of the write that created the key.
    pub create_revision: i64,
    /// Revision of the write that last changed it.
    pub mod_revision: i64,
}

/// A condition a transaction checks before writing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at exactly this revision.
    ModRevision(String, i64),
    /// The key exists and was created at exactly this revision (leader fencing).
    CreateRevision(String, i64),
}

/// A write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace a key.
    Put {
        /// Key, relative to the prefix.
        key: String,
        /// New value.
        value: Vec<u8>,
    },
    /// Remove a key (no error if it is absent).
    Delete {
        /// Key, relative to the prefix.
        key: String,
    },
}

/// All `ops` are applied atomically if and only if every compare in `when` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub when: Vec<Compare>,
    /// Writes applied when they hold.
    pub then: Vec<Op>,
}

impl Txn {
    /// A transaction guarded by the leader's epoch (fencing).
    pub fn fenced(epoch: i64) -> Self {
        Self {
            when: vec![Compare::CreateRevision(LEADER_KEY.to_owned(), epoch)],
            then: Vec::new(),
        }
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.when.push(compare);
        self
    }

    /// Adds a put.
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.then.push(Op::Put {
            key: key.into(),
            value,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.then.push(Op::Delete { key: key.into() });
        self
    }
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    /// True when every compare held and the writes were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// Who leads, as read from the leader key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's broker id.
    pub broker_id: String,
    /// Where clients and agents reach it.
    pub address: String,
    /// The leader key's create revision.
    pub epoch: i64,
}

impl LeaderInfo {
    /// Reads the leader key: its value names the leader, its create revision is the epoch.
    pub fn from_key(kv: &KeyValue) -> Result<Self, StoreError> {
        use prost::Message as _;
        let record =
            LeaderRecord::decode(kv.value.as_slice()).map_err(|e| StoreError::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            broker_id: record.broker_id,
            address: record.address,
            epoch: kv.create_revision,
        })
    }
}

/// Held by the broker while it leads.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// The leader key's create revision; every fenced write carries it.
    pub epoch: i64,
    /// Cancelled when leadership is lost (the lease could not be kept alive, or the key
    /// was taken away). The broker must stop acting as leader at once.
    pub lost: CancellationToken,
}

/// Errors from a store backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error; retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The local file of the embedded store could not be read or written.
    #[error("store file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Another process holds the embedded store's file.
    #[error(
        "store file {0} is in use by another broker (the embedded store is single-process; use --etcd for several brokers)"
    )]
    Locked(String),
    /// Stored bytes could not be decoded.
    #[error("corrupt record at {key}: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why it could not be decoded.
        reason: String,
    },
}

/// The broker's persistent state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "etcd" or "embedded", for `GetClusterInfo` and logs.
    fn kind(&self) -> &'static str;

    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Reads every key that starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies a transaction.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;

    /// Waits until this broker is the leader, then returns its leadership. The leader key
    /// is bound to a lease of `ttl` that the store keeps alive in the background; if the
    /// process dies the key lapses after `ttl` and a standby takes over.
    async fn campaign(
        &self,
        broker_id: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<Leadership, StoreError>;

    /// Reads who leads now, if anyone.
    async fn leader(&self) -> Result<Option<LeaderInfo>, StoreError>;

    /// Gives leadership up (deletes the leader key if it is still ours and stops the
    /// lease), so a standby takes over without waiting for the lease to lapse.
    async fn resign(&self, leadership: &Leadership) -> Result<(), StoreError>;

    /// Follows changes to keys under `prefix`: the receiver gets a `()` after each write
    /// that puts or deletes one (several close together may come as one), and closes when
    /// the watch breaks; the caller then reads again and watches again. No change made
    /// after this returns is missed, so a caller that watches first and reads second
    /// never misses one.
    async fn watch(&self, prefix: &str) -> Result<Changes, StoreError>;
}

/// What [`Store::watch`] returns: one `()` per change (or batch of changes).
pub type Changes = tokio::sync::mpsc::Receiver<()>;

impl Op {
    /// The key it writes.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Unconditional put, for tests and tools; the broker itself writes through fenced
/// transactions.
pub async fn put(store: &dyn Store, key: &str, value: Vec<u8>) -> Result<TxnOutcome, StoreError> {
    store.txn(Txn::default().put(key, value)).await
}

/// The leader key's value: who leads and where to reach it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaderRecord {
    /// The leader's broker id.
    #[prost(string, tag = "1")]
    pub broker_id: String,
    /// Where clients and agents reach it.
    #[prost(string, tag = "2")]
    pub address: String,
}
