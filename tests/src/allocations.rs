//! Audits GPU allocations straight from etcd, bypassing the broker.
//!
//! The broker keeps, under its key prefix, `sessions/<id>` (a protobuf `Session`) and
//! `gpus/<node>/<uuid>` (the id of the session holding that GPU), written in one
//! transaction (DESIGN section 5). [`audit`] reads both at one etcd revision and checks
//! that they agree: no GPU is claimed by two live sessions, every live session's GPUs
//! have keys naming it, and no key names a session that is missing, terminal, or does not
//! list that GPU.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use etcd_client::GetOptions;
use hearth_sdk::proto::v1::{Session, SessionState};
use prost::Message as _;

/// Keys read per etcd request, so a large fleet stays under gRPC message limits.
const PAGE: i64 = 1000;
/// Problems listed by example in an [`Audit`]; the counts are always complete.
const EXAMPLES: usize = 10;

/// What etcd says about sessions and GPU allocations, at one revision.
#[derive(Debug, Default)]
pub struct Audit {
    /// The etcd revision read.
    pub revision: i64,
    /// Session records, live or not.
    pub sessions: usize,
    /// Sessions in a non-terminal state, by state name.
    pub live_by_state: BTreeMap<String, usize>,
    /// `gpus/` keys.
    pub gpu_keys: usize,
    /// GPUs claimed by live session records.
    pub gpus_claimed: usize,
    /// GPUs held by two live sessions: two records claim it, or its key names another
    /// session than the one record that claims it.
    pub double_booked: usize,
    /// GPUs a live record claims with no key at all.
    pub missing_keys: usize,
    /// Keys naming a missing or terminal session, or one whose record does not list the
    /// GPU.
    pub dangling_keys: usize,
    /// A few of the problems, in words.
    pub examples: Vec<String>,
    /// A few live sessions, in words (id, state, node, GPUs, reason).
    pub live_sample: Vec<String>,
}

impl Audit {
    /// Live sessions.
    pub fn live(&self) -> usize {
        self.live_by_state.values().sum()
    }

    /// Live sessions in `state`.
    pub fn in_state(&self, state: SessionState) -> usize {
        self.live_by_state
            .get(state.as_str_name())
            .copied()
            .unwrap_or(0)
    }

    /// True when the allocations are exactly consistent.
    pub fn clean(&self) -> bool {
        self.double_booked == 0 && self.missing_keys == 0 && self.dangling_keys == 0
    }

    fn note(&mut self, problem: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
    }
}

/// True for the states a session never leaves (its GPUs are freed).
pub fn is_terminal(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Stopped | SessionState::Failed | SessionState::Lost
    )
}

/// Reads every key under `prefix + "/" + sub` at `revision` (0: the newest), in pages.
/// Returns (key without the prefix, value) pairs and the revision read.
async fn list(
    client: &mut etcd_client::Client,
    root: &str,
    sub: &str,
    revision: i64,
) -> anyhow::Result<(Vec<(String, Vec<u8>)>, i64)> {
    let start = format!("{root}{sub}");
    let mut end = start.clone().into_bytes();
    // The range end of a prefix: its last byte plus one ('/' + 1 = '0').
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut from = start.clone().into_bytes();
    let mut revision = revision;
    let mut out = Vec::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE)
            .with_revision(revision);
        let response = client
            .get(from.clone(), Some(options))
            .await
            .with_context(|| format!("reading {start}*"))?;
        if revision == 0 {
            revision = response.header().map_or(0, |h| h.revision());
        }
        let kvs = response.kvs();
        for kv in kvs {
            let key = String::from_utf8_lossy(kv.key());
            let key = key.strip_prefix(root).unwrap_or(&key).to_owned();
            out.push((key, kv.value().to_vec()));
        }
        match kvs.last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((out, revision))
}

/// Reads `sessions/` and `gpus/` under `prefix` at one revision of the etcd at
/// `endpoint`, and checks that they agree.
pub async fn audit(endpoint: &str, prefix: &str) -> anyhow::Result<Audit> {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))?;
    let root = format!("{}/", prefix.trim_end_matches('/'));
    let (records, revision) = list(&mut client, &root, "sessions/", 0).await?;
    let (keys, _) = list(&mut client, &root, "gpus/", revision).await?;

    let mut audit = Audit {
        revision,
        sessions: records.len(),
        gpu_keys: keys.len(),
        ..Audit::default()
    };
    // Every session's state, and the GPUs each live one claims.
    let mut states: HashMap<String, SessionState> = HashMap::new();
    let mut claims: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (key, value) in &records {
        let s = Session::decode(value.as_slice()).with_context(|| format!("decoding {key}"))?;
        states.insert(s.id.clone(), s.state());
        if is_terminal(s.state()) {
            continue;
        }
        *audit
            .live_by_state
            .entry(s.state().as_str_name().to_owned())
            .or_default() += 1;
        if audit.live_sample.len() < EXAMPLES {
            audit.live_sample.push(format!(
                "{} {} on {} with [{}] ({})",
                s.id,
                s.state().as_str_name(),
                s.node_id,
                s.gpu_uuids.join(", "),
                s.state_reason
            ));
        }
        for uuid in &s.gpu_uuids {
            claims
                .entry((s.node_id.clone(), uuid.clone()))
                .or_default()
                .push(s.id.clone());
        }
    }
    audit.gpus_claimed = claims.len();

    let mut holders: HashMap<(String, String), String> = HashMap::new();
    for (key, value) in keys {
        let path = key.trim_start_matches("gpus/");
        let Some((node, uuid)) = path.split_once('/') else {
            audit.dangling_keys += 1;
            audit.note(format!("malformed allocation key {key}"));
            continue;
        };
        holders.insert(
            (node.to_owned(), uuid.to_owned()),
            String::from_utf8_lossy(&value).into_owned(),
        );
    }

    for ((node, uuid), ids) in &claims {
        let holder = holders.get(&(node.clone(), uuid.clone()));
        if ids.len() > 1 {
            audit.double_booked += 1;
            audit.note(format!(
                "GPU {node}/{uuid} is claimed by {} live sessions: {}",
                ids.len(),
                ids.join(", ")
            ));
            continue;
        }
        match holder {
            None => {
                audit.missing_keys += 1;
                audit.note(format!(
                    "live session {} claims GPU {node}/{uuid} but no allocation key exists",
                    ids[0]
                ));
            }
            Some(h) if h != &ids[0] => {
                audit.double_booked += 1;
                audit.note(format!(
                    "GPU {node}/{uuid}: live session {} claims it but its key names {h}",
                    ids[0]
                ));
            }
            Some(_) => {}
        }
    }
    for ((node, uuid), holder) in &holders {
        if claims.contains_key(&(node.clone(), uuid.clone())) {
            // Agreeing, or already counted as double-booked above.
            continue;
        }
        audit.dangling_keys += 1;
        let what = match states.get(holder) {
            None => "a session with no record".to_owned(),
            Some(state) if is_terminal(*state) => format!("a {} session", state.as_str_name()),
            Some(_) => "a live session whose record does not list it".to_owned(),
        };
        audit.note(format!(
            "allocation key {node}/{uuid} names {holder}, {what}"
        ));
    }
    Ok(audit)
}
