//! One contract for both `Store` backends: every check runs against the embedded store
//! (in a temp dir) and against a real etcd server (started per test, unique prefix).
//! Backend-specific behaviour (file locking, corrupt files, lease lapse, key prefixes,
//! server restarts) is tested at the end.

use std::sync::Arc;
use std::time::Duration;

use hearth_broker::store::{
    self, Compare, EmbeddedStore, EtcdStore, LEADER_KEY, LeaderInfo, Leadership, Store, StoreError,
    Txn,
};
use hearth_tests::etcd::{Etcd, etcd_or_skip, unique_prefix};
use tempfile::TempDir;
use tokio::time::{Instant, timeout};

const TTL: Duration = Duration::from_secs(2);
const DIAL: Duration = Duration::from_secs(5);

enum Backend {
    Embedded { dir: TempDir },
    Etcd { etcd: Etcd, prefix: String },
}

/// A store under test plus what it takes to open it again.
struct Fixture {
    backend: Backend,
    store: Option<Arc<dyn Store>>,
}

impl Fixture {
    fn embedded() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path().join("state.pb")).expect("open embedded");
        Fixture {
            backend: Backend::Embedded { dir },
            store: Some(Arc::new(store)),
        }
    }

    async fn etcd(test: &str) -> Option<Fixture> {
        let etcd = etcd_or_skip().await?;
        let prefix = unique_prefix(test);
        let store = connect(&etcd, &prefix).await;
        Some(Fixture {
            backend: Backend::Etcd { etcd, prefix },
            store: Some(store),
        })
    }

    fn store(&self) -> &dyn Store {
        self.store.as_deref().expect("store is open")
    }

    fn arc(&self) -> Arc<dyn Store> {
        Arc::clone(self.store.as_ref().expect("store is open"))
    }

    /// Another broker's handle on the same state. The embedded store is single-process,
    /// so there the "other broker" shares the one store.
    async fn peer(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Embedded { .. } => self.arc(),
            Backend::Etcd { etcd, prefix } => connect(etcd, prefix).await,
        }
    }

    /// Drops the store (as a restart would) and opens it again.
    async fn reopen(&mut self) {
        let old = self.store.take().expect("store is open");
        assert_eq!(Arc::strong_count(&old), 1, "the test still holds the store");
        drop(old);
        self.store = Some(match &self.backend {
            Backend::Embedded { dir } => {
                Arc::new(EmbeddedStore::open(dir.path().join("state.pb")).expect("reopen"))
            }
            Backend::Etcd { etcd, prefix } => connect(etcd, prefix).await,
        });
    }
}

async fn connect(etcd: &Etcd, prefix: &str) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(&[etcd.endpoint()], prefix, DIAL)
            .await
            .expect("connect to etcd"),
    )
}

async fn put(store: &dyn Store, key: &str, value: &[u8]) -> i64 {
    let outcome = store::put(store, key, value.to_vec()).await.expect("put");
    assert!(outcome.succeeded);
    outcome.revision
}

async fn revision(store: &dyn Store) -> i64 {
    store
        .txn(Txn::default())
        .await
        .expect("read-only txn")
        .revision
}

async fn must_get(store: &dyn Store, key: &str) -> hearth_broker::store::KeyValue {
    store
        .get(key)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{key} is missing"))
}

async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    let listed = store.list(prefix).await.expect("list");
    listed.into_iter().map(|kv| kv.key).collect()
}

// ---- checks that need only a store ----

async fn missing_key(s: &dyn Store) {
    assert_eq!(s.get("nodes/none").await.expect("get"), None);
    assert!(s.list("nodes/").await.expect("list").is_empty());
    assert_eq!(s.leader().await.expect("leader"), None);
}

async fn put_get_overwrite(s: &dyn Store) {
    let r1 = put(s, "nodes/a", b"one").await;
    let kv = must_get(s, "nodes/a").await;
    assert_eq!(kv.key, "nodes/a");
    assert_eq!(kv.value, b"one");
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r1));

    let r2 = put(s, "nodes/a", b"two").await;
    assert!(r2 > r1);
    let kv = must_get(s, "nodes/a").await;
    assert_eq!(kv.value, b"two");
    assert_eq!(kv.create_revision, r1, "overwrite keeps create_revision");
    assert_eq!(kv.mod_revision, r2, "overwrite bumps mod_revision");
}

async fn delete(s: &dyn Store) {
    let created = put(s, "sessions/1", b"x").await;
    put(s, "sessions/2", b"y").await;
    let outcome = s
        .txn(Txn::default().delete("sessions/1"))
        .await
        .expect("txn");
    assert!(outcome.succeeded);
    assert_eq!(s.get("sessions/1").await.expect("get"), None);
    assert_eq!(keys(s, "sessions/").await, ["sessions/2"]);

    // As in etcd, deleting an absent key succeeds and changes nothing, not even the
    // revision.
    let before = revision(s).await;
    let outcome = s
        .txn(Txn::default().delete("sessions/1"))
        .await
        .expect("txn");
    assert_eq!((outcome.succeeded, outcome.revision), (true, before));

    let recreated = put(s, "sessions/1", b"z").await;
    let kv = must_get(s, "sessions/1").await;
    assert!(recreated > created);
    assert_eq!(
        kv.create_revision, recreated,
        "re-created key gets a new create_revision"
    );
}

async fn list_by_prefix(s: &dyn Store) {
    for key in [
        "nodes/b",
        "nodesx/b",
        "nodes/a",
        "nodes/c/d",
        "node",
        "sessions/1",
    ] {
        put(s, key, key.as_bytes()).await;
    }
    assert_eq!(keys(s, "nodes/").await, ["nodes/a", "nodes/b", "nodes/c/d"]);
    assert_eq!(keys(s, "nodesx/").await, ["nodesx/b"]);
    assert_eq!(
        keys(s, "").await,
        [
            "node",
            "nodes/a",
            "nodes/b",
            "nodes/c/d",
            "nodesx/b",
            "sessions/1"
        ]
    );
    for kv in s.list("nodes/").await.expect("list") {
        assert_eq!(kv.value, kv.key.as_bytes());
        assert_eq!(kv, must_get(s, &kv.key).await);
    }
}

async fn revisions(s: &dyn Store) {
    let start = revision(s).await;
    assert!(start >= 1, "revision starts at 1, like etcd");
    assert_eq!(revision(s).await, start, "a read-only txn does not bump it");

    let r1 = put(s, "a", b"1").await;
    assert_eq!(r1, start + 1);
    let both = s
        .txn(
            Txn::default()
                .put("b", b"2".to_vec())
                .put("c", b"3".to_vec()),
        )
        .await
        .expect("txn");
    assert_eq!(both.revision, r1 + 1, "one txn, one revision");
    assert_eq!(must_get(s, "b").await.mod_revision, both.revision);
    assert_eq!(must_get(s, "c").await.mod_revision, both.revision);

    let failed = s
        .txn(
            Txn::default()
                .when(Compare::Absent("a".into()))
                .put("d", vec![]),
        )
        .await
        .expect("txn");
    assert!(!failed.succeeded);
    assert_eq!(
        failed.revision, both.revision,
        "a failed txn does not bump it"
    );

    let mut last = both.revision;
    for i in 0..5 {
        let r = put(s, "a", format!("{i}").as_bytes()).await;
        assert!(r > last, "revisions strictly increase");
        last = r;
    }
}

async fn txn_compares(s: &dyn Store) {
    // Absent: holds, then fails.
    let created = s
        .txn(
            Txn::default()
                .when(Compare::Absent("k".into()))
                .put("k", b"1".to_vec()),
        )
        .await
        .expect("txn");
    assert!(created.succeeded);
    let again = s
        .txn(
            Txn::default()
                .when(Compare::Absent("k".into()))
                .put("k", b"2".to_vec()),
        )
        .await
        .expect("txn");
    assert!(!again.succeeded);
    assert_eq!(must_get(s, "k").await.value, b"1");

    // ModRevision: the current one holds; a stale one fails.
    let kv = must_get(s, "k").await;
    let updated = s
        .txn(
            Txn::default()
                .when(Compare::ModRevision("k".into(), kv.mod_revision))
                .put("k", b"3".to_vec()),
        )
        .await
        .expect("txn");
    assert!(updated.succeeded);
    let stale = s
        .txn(
            Txn::default()
                .when(Compare::ModRevision("k".into(), kv.mod_revision))
                .put("k", b"4".to_vec()),
        )
        .await
        .expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(must_get(s, "k").await.value, b"3");

    // CreateRevision: survives overwrites; fails on a missing key and a wrong revision.
    let create = must_get(s, "k").await.create_revision;
    assert_eq!(create, created.revision);
    let held = s
        .txn(
            Txn::default()
                .when(Compare::CreateRevision("k".into(), create))
                .put("k", b"5".to_vec()),
        )
        .await
        .expect("txn");
    assert!(held.succeeded);
    for compare in [
        Compare::CreateRevision("k".into(), create + 1),
        Compare::CreateRevision("missing".into(), create),
        Compare::ModRevision("missing".into(), create),
    ] {
        let outcome = s
            .txn(Txn::default().when(compare.clone()).put("k", b"6".to_vec()))
            .await
            .expect("txn");
        assert!(!outcome.succeeded, "{compare:?} must fail");
    }
    assert_eq!(must_get(s, "k").await.value, b"5");

    // Atomicity: one failing compare among holding ones, several ops, nothing written.
    put(s, "victim", b"keep").await;
    let before = revision(s).await;
    let outcome = s
        .txn(
            Txn::default()
                .when(Compare::Absent("new".into()))
                .when(Compare::CreateRevision("k".into(), create))
                .when(Compare::Absent("k".into()))
                .put("new", b"x".to_vec())
                .put("k", b"x".to_vec())
                .delete("victim"),
        )
        .await
        .expect("txn");
    assert_eq!((outcome.succeeded, outcome.revision), (false, before));
    assert_eq!(s.get("new").await.expect("get"), None);
    assert_eq!(must_get(s, "k").await.value, b"5");
    assert_eq!(must_get(s, "victim").await.value, b"keep");

    // The same ops apply together once every compare holds.
    let outcome = s
        .txn(
            Txn::default()
                .when(Compare::Absent("new".into()))
                .when(Compare::CreateRevision("k".into(), create))
                .put("new", b"x".to_vec())
                .put("k", b"x".to_vec())
                .delete("victim"),
        )
        .await
        .expect("txn");
    assert_eq!((outcome.succeeded, outcome.revision), (true, before + 1));
    assert_eq!(must_get(s, "new").await.value, b"x");
    assert_eq!(must_get(s, "k").await.value, b"x");
    assert_eq!(s.get("victim").await.expect("get"), None);
}

async fn campaign_and_leader(s: &dyn Store) {
    let leadership = s
        .campaign("broker-1", "10.0.0.1:7000", TTL)
        .await
        .expect("campaign");
    assert!(!leadership.lost.is_cancelled());
    let expected = LeaderInfo {
        broker_id: "broker-1".into(),
        address: "10.0.0.1:7000".into(),
        epoch: leadership.epoch,
    };
    assert_eq!(s.leader().await.expect("leader"), Some(expected));
    let key = must_get(s, LEADER_KEY).await;
    assert_eq!(
        key.create_revision, leadership.epoch,
        "the epoch is the key's create_revision"
    );

    s.resign(&leadership).await.expect("resign");
    assert!(leadership.lost.is_cancelled(), "resign cancels lost");
    assert_eq!(s.leader().await.expect("leader"), None);
}

async fn fencing(s: &dyn Store) {
    let first = s.campaign("broker-1", "a:1", TTL).await.expect("campaign");
    let outcome = s
        .txn(Txn::fenced(first.epoch).put("sessions/1", b"v1".to_vec()))
        .await
        .expect("txn");
    assert!(outcome.succeeded, "a fenced write succeeds while leading");

    s.resign(&first).await.expect("resign");
    let outcome = s
        .txn(Txn::fenced(first.epoch).put("sessions/2", b"v1".to_vec()))
        .await
        .expect("txn");
    assert!(!outcome.succeeded, "a fenced write fails after resign");

    let second = s.campaign("broker-2", "b:1", TTL).await.expect("campaign");
    assert!(
        second.epoch > first.epoch,
        "each campaign gets a higher epoch"
    );
    let outcome = s
        .txn(Txn::fenced(first.epoch).put("sessions/2", b"stale".to_vec()))
        .await
        .expect("txn");
    assert!(
        !outcome.succeeded,
        "the deposed leader's epoch is fenced off"
    );
    assert_eq!(s.get("sessions/2").await.expect("get"), None);
    let outcome = s
        .txn(Txn::fenced(second.epoch).put("sessions/2", b"v2".to_vec()))
        .await
        .expect("txn");
    assert!(outcome.succeeded);
    s.resign(&second).await.expect("resign");
}

async fn leader_key_taken_away(s: &dyn Store) {
    let leadership = s.campaign("broker-1", "a:1", TTL).await.expect("campaign");
    let outcome = s.txn(Txn::default().delete(LEADER_KEY)).await.expect("txn");
    assert!(outcome.succeeded);
    timeout(Duration::from_secs(5), leadership.lost.cancelled())
        .await
        .expect("losing the leader key cancels lost");
}

// ---- checks that need to reopen the store or a second broker ----

async fn persistence(f: &mut Fixture) {
    let s = f.store();
    put(s, "nodes/a", b"a").await;
    put(s, "nodes/b", b"b").await;
    put(s, "nodes/a", b"a2").await;
    s.txn(Txn::default().delete("nodes/b")).await.expect("txn");
    let before = s.list("").await.expect("list");
    let rev = revision(s).await;

    f.reopen().await;
    let s = f.store();
    assert_eq!(
        s.list("").await.expect("list"),
        before,
        "data survives a reopen"
    );
    assert_eq!(revision(s).await, rev, "the revision survives a reopen");
    assert_eq!(
        put(s, "nodes/c", b"c").await,
        rev + 1,
        "revisions go on from there"
    );
}

async fn standby_waits_for_resign(f: &mut Fixture) {
    let first_store = f.arc();
    let first = first_store
        .campaign("broker-1", "a:1", TTL)
        .await
        .expect("campaign");
    let standby = f.peer().await;
    let mut waiting = tokio::spawn(async move { standby.campaign("broker-2", "b:1", TTL).await });

    assert!(
        timeout(Duration::from_secs(1), &mut waiting).await.is_err(),
        "the standby must wait while the leader leads"
    );
    let leader = first_store
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!(
        (leader.broker_id.as_str(), leader.epoch),
        ("broker-1", first.epoch)
    );

    first_store.resign(&first).await.expect("resign");
    let second = timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the standby wins after resign")
        .expect("task")
        .expect("campaign");
    assert!(second.epoch > first.epoch);
    let leader = first_store
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!(
        (leader.broker_id.as_str(), leader.epoch),
        ("broker-2", second.epoch)
    );
}

/// Whether `changes` says something changed within 5 s.
async fn heard(changes: &mut store::Changes) -> bool {
    matches!(
        timeout(Duration::from_secs(5), changes.recv()).await,
        Ok(Some(()))
    )
}

/// A watcher on a prefix hears of puts and deletes under it, made by another broker's
/// handle too, and of nothing else.
async fn watch_prefix(f: &mut Fixture) {
    let s = f.store();
    let peer = f.peer().await;
    let mut changes = s.watch("tokens/").await.expect("watch");
    put(peer.as_ref(), "tokens/a", b"1").await;
    assert!(heard(&mut changes).await, "a put under the prefix is heard");
    put(s, "tokenz/b", b"1").await;
    put(s, "other", b"1").await;
    assert!(
        timeout(Duration::from_millis(300), changes.recv())
            .await
            .is_err(),
        "writes outside the prefix are not heard"
    );
    peer.txn(Txn::default().delete("tokens/a"))
        .await
        .expect("delete");
    assert!(
        heard(&mut changes).await,
        "a delete under the prefix is heard"
    );
    // Several writes before the reader looks come as at least one change.
    for i in 0..5 {
        put(s, &format!("tokens/{i}"), b"x").await;
    }
    assert!(heard(&mut changes).await);
    drop(changes);
    put(s, "tokens/after", b"x").await;
}

macro_rules! contract {
    (store: [$($check:ident),* $(,)?], fixture: [$($fcheck:ident),* $(,)?] $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $check() {
                    let f = super::Fixture::embedded();
                    super::$check(f.store()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $fcheck() {
                    let mut f = super::Fixture::embedded();
                    super::$fcheck(&mut f).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $check() {
                    let Some(f) = super::Fixture::etcd(stringify!($check)).await else { return };
                    super::$check(f.store()).await;
                }
            )*
            $(
                #[tokio::test]
                async fn $fcheck() {
                    let Some(mut f) = super::Fixture::etcd(stringify!($fcheck)).await else { return };
                    super::$fcheck(&mut f).await;
                }
            )*
        }
    };
}

contract! {
    store: [
        missing_key,
        put_get_overwrite,
        delete,
        list_by_prefix,
        revisions,
        txn_compares,
        campaign_and_leader,
        fencing,
        leader_key_taken_away,
    ],
    fixture: [persistence, standby_waits_for_resign, watch_prefix],
}

// ---- embedded only ----

#[tokio::test]
async fn embedded_starts_at_revision_one() {
    let f = Fixture::embedded();
    assert_eq!(revision(f.store()).await, 1);
    assert_eq!(put(f.store(), "a", b"").await, 2);
}

#[tokio::test]
async fn embedded_second_open_is_locked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.pb");
    let first = EmbeddedStore::open(&path).expect("open");
    match EmbeddedStore::open(&path) {
        Err(StoreError::Locked(p)) => assert_eq!(p, path.display().to_string()),
        Err(e) => panic!("want Locked, got {e}"),
        Ok(_) => panic!("a second open of the same file must fail"),
    }
    drop(first);
    EmbeddedStore::open(&path).expect("the lock is released with the store");
}

#[tokio::test]
async fn embedded_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("state.pb");
    {
        let s = EmbeddedStore::open(&path).expect("open");
        put(&s, "nodes/a", b"some value").await;
    }
    let good = std::fs::read(&path).expect("read snapshot");
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "garbage",
            b"\xff\xfe this is not a snapshot \x00\x01".to_vec(),
        ),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        std::fs::write(&path, bytes).expect("write");
        match EmbeddedStore::open(&path) {
            Err(e @ StoreError::File { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&path.display().to_string()),
                    "{name}: {message}"
                );
            }
            Err(e) => panic!("{name}: want a File error, got {e}"),
            Ok(_) => panic!("{name}: a corrupt file must not open"),
        }
    }
}

#[tokio::test]
async fn embedded_restart_drops_the_dead_leader() {
    let mut f = Fixture::embedded();
    let old = f
        .store()
        .campaign("broker-1", "a:1", TTL)
        .await
        .expect("campaign");
    drop(old);
    f.reopen().await;
    assert_eq!(f.store().leader().await.expect("leader"), None);
    let new = timeout(
        Duration::from_secs(1),
        f.store().campaign("broker-1", "a:1", TTL),
    )
    .await
    .expect("a campaign after restart wins at once")
    .expect("campaign");
    let outcome = f
        .store()
        .txn(Txn::fenced(new.epoch).put("x", vec![]))
        .await
        .expect("txn");
    assert!(outcome.succeeded);
}

// ---- etcd only ----

#[tokio::test]
async fn etcd_dead_leader_is_replaced_after_ttl() {
    let Some(mut f) = Fixture::etcd("dead_leader").await else {
        return;
    };
    let standby = f.peer().await;
    let leader_store = f.store.take().expect("store is open");
    let first: Leadership = leader_store
        .campaign("broker-1", "a:1", TTL)
        .await
        .expect("campaign");
    let mut waiting = tokio::spawn(async move { standby.campaign("broker-2", "b:1", TTL).await });

    // Longer than the TTL: only the keep-alive can hold the key this long.
    assert!(timeout(Duration::from_secs(4), &mut waiting).await.is_err());
    assert!(!first.lost.is_cancelled());
    let leader = leader_store
        .leader()
        .await
        .expect("leader")
        .expect("a leader");
    assert_eq!(leader.epoch, first.epoch);

    // The process "dies": no resign, the keep-alive stops with the store.
    drop(leader_store);
    let died = Instant::now();
    let second = timeout(Duration::from_secs(8), waiting)
        .await
        .expect("the standby takes over within ttl + margin")
        .expect("task")
        .expect("campaign");
    eprintln!(
        "standby took over {:?} after the leader died",
        died.elapsed()
    );
    assert!(second.epoch > first.epoch);
    assert!(
        first.lost.is_cancelled(),
        "a dropped store gives up its leadership"
    );
}

#[tokio::test]
async fn etcd_prefixes_are_isolated() {
    let Some(etcd) = etcd_or_skip().await else {
        return;
    };
    let base = unique_prefix("isolated");
    // `px` shares a string prefix with `p`; keys must still not leak across.
    let p = connect(&etcd, &base).await;
    let px = connect(&etcd, &format!("{base}x/")).await;
    put(&*p, "nodes/a", b"p").await;
    put(&*px, "nodes/a", b"px").await;
    put(&*px, "nodes/b", b"px").await;

    assert_eq!(must_get(&*p, "nodes/a").await.value, b"p");
    assert_eq!(must_get(&*px, "nodes/a").await.value, b"px");
    assert_eq!(keys(&*p, "").await, ["nodes/a"]);
    assert_eq!(keys(&*px, "").await, ["nodes/a", "nodes/b"]);

    let lp = timeout(Duration::from_secs(5), p.campaign("p", "p:1", TTL))
        .await
        .expect("campaign")
        .expect("campaign");
    let lpx = timeout(Duration::from_secs(5), px.campaign("px", "px:1", TTL))
        .await
        .expect("each prefix has its own leader")
        .expect("campaign");
    assert_eq!(
        p.leader().await.expect("leader").map(|l| l.broker_id),
        Some("p".into())
    );
    assert_eq!(
        px.leader().await.expect("leader").map(|l| l.broker_id),
        Some("px".into())
    );
    p.resign(&lp).await.expect("resign");
    assert_eq!(
        px.leader().await.expect("leader").map(|l| l.epoch),
        Some(lpx.epoch)
    );
}

#[tokio::test]
async fn etcd_data_survives_a_server_restart() {
    let Some(mut etcd) = etcd_or_skip().await else {
        return;
    };
    let prefix = unique_prefix("server_restart");
    let s = connect(&etcd, &prefix).await;
    let rev = put(&*s, "nodes/a", b"a").await;

    etcd.restart().await;
    let fresh = connect(&etcd, &prefix).await;
    let kv = must_get(&*fresh, "nodes/a").await;
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"a"[..], rev));

    // The old client reconnects on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.get("nodes/a").await {
            Ok(Some(kv)) => break assert_eq!(kv.value, b"a"),
            other if Instant::now() > deadline => panic!("old client did not recover: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
