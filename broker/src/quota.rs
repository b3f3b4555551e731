//! Per-tenant quotas (live sessions, GPUs) and the create rate limit.
//!
//! `[quota]` sets cluster defaults and `[quota.tenants.<tenant>]` overrides them per
//! tenant, field by field; an unset limit is unlimited, which is the default for all
//! three, so a broker configured without `[quota]` behaves as before.
//!
//! What counts: every live (not yet STOPPED, FAILED or LOST) session of the tenant and
//! the GPUs booked for it, **including unclaimed warm-pool members** of the tenant's
//! templates, because they hold GPUs whether or not anyone has claimed them. A pool fill
//! over quota fails like any booking and the pool backs off; claiming a member changes no
//! count (it is already counted), so a claim is never refused by `max_sessions` or
//! `max_gpus`; a template create that finds no free member starts a session cold and is
//! counted like any create. `creates_per_minute` counts `CreateSession` calls (claims,
//! cold creates and retries alike), not pool fills.
//!
//! Counting holds under concurrent creates on the leader: a create reserves its session
//! and GPUs under one lock, counted together with the live sessions and the reservations
//! of creates still booking, and the reservation ends once the booking has committed (the
//! session is then live and counted as such) or failed.
//!
//! Across a leader change: session and GPU counts are the live sessions, which a new
//! leader loads from the store. The rate bucket is written to the store (`quota/<tenant>`:
//! tokens left, and when) with every create it admits, before the create goes on, and a
//! new leader loads it, refilled for the time since. So a leader kill is no way to a fresh
//! burst.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use prost::Message as _;
use serde::Deserialize;

use crate::{
    auth::check_tenant,
    config::ConfigError,
    error::Error,
    store::{Store, Txn},
};

/// Where the store keeps each tenant's create-rate bucket: `quota/<tenant>`.
pub const QUOTA_PREFIX: &str = "quota/";

/// A tenant's create-rate bucket as the store keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketRecord {
    /// Tokens left after the last admitted create.
    #[prost(double, tag = "1")]
    pub tokens: f64,
    /// When, as milliseconds since the Unix epoch on the leader that wrote it.
    #[prost(int64, tag = "2")]
    pub at_unix_ms: i64,
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Live sessions, warm-pool members included.
    pub max_sessions: Option<u32>,
    /// GPUs booked by live sessions, warm-pool members included.
    pub max_gpus: Option<u32>,
    /// `CreateSession` calls per minute, as a token bucket: a burst of this many, then
    /// one more every `60s / creates_per_minute`.
    pub creates_per_minute: Option<u32>,
}

/// `[quota]`: cluster defaults and per-tenant overrides.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Default live sessions per tenant. Unset: unlimited.
    pub max_sessions: Option<u32>,
    /// Default GPUs per tenant. Unset: unlimited.
    pub max_gpus: Option<u32>,
    /// Default `CreateSession` calls per minute per tenant. Unset: unlimited.
    pub creates_per_minute: Option<u32>,
    /// `[quota.tenants.<tenant>]`: overrides, field by field.
    pub tenants: BTreeMap<String, Limits>,
}

impl QuotaConfig {
    /// Checks tenant names; errors name the setting (`quota.tenants.<tenant>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        for tenant in self.tenants.keys() {
            check_tenant(tenant).map_err(|reason| ConfigError {
                setting: format!("quota.tenants.{tenant}"),
                reason,
            })?;
        }
        Ok(())
    }

    /// The limits that apply to `tenant`.
    pub fn limits(&self, tenant: &str) -> Limits {
        let own = self.tenants.get(tenant).copied().unwrap_or_default();
        Limits {
            max_sessions: own.max_sessions.or(self.max_sessions),
            max_gpus: own.max_gpus.or(self.max_gpus),
            creates_per_minute: own.creates_per_minute.or(self.creates_per_minute),
        }
    }
}

/// What a tenant holds now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live sessions.
    pub sessions: u32,
    /// GPUs booked.
    pub gpus: u32,
}

#[derive(Debug, Default)]
struct TenantState {
    /// Sessions and GPUs of creates that are booking now.
    reserved: Usage,
    /// Token bucket: (tokens left, when last refilled).
    bucket: Option<(f64, Instant)>,
}

/// Quota bookkeeping for the leader.
#[derive(Debug, Default)]
pub struct Quotas {
    config: QuotaConfig,
    tenants: Mutex<HashMap<String, TenantState>>,
    /// Held from a rate decision through its write to the store, so the store gets the
    /// buckets in the order they were taken from.
    persisting: tokio::sync::Mutex<()>,
}

/// A create's share of its tenant's quota while it books; released on drop.
#[derive(Debug)]
#[must_use]
pub struct Reservation<'a> {
    quotas: &'a Quotas,
    tenant: String,
    amount: Usage,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.amount == Usage::default() {
            return;
        }
        let mut tenants = self.quotas.lock();
        if let Some(state) = tenants.get_mut(&self.tenant) {
            state.reserved.sessions = state.reserved.sessions.saturating_sub(self.amount.sessions);
            state.reserved.gpus = state.reserved.gpus.saturating_sub(self.amount.gpus);
        }
    }
}

impl Quotas {
    /// Quotas as configured.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            tenants: Mutex::default(),
            persisting: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes up the rate buckets the store holds, each refilled for the time since it was
    /// written (by the wall clock: the previous leader's against this one's, the one place
    /// Hearth compares them; a skew of a few seconds changes the refill by as many seconds
    /// of rate, and a clock behind counts as no time at all). Tenants without a record
    /// start full, as they would have on the previous leader. Call when taking over.
    pub async fn load(&self, store: &dyn Store) -> Result<(), Error> {
        let records = store.list(QUOTA_PREFIX).await?;
        let now_ms = unix_ms(std::time::SystemTime::now());
        let now = Instant::now();
        let mut tenants = self.lock();
        tenants.clear();
        for kv in records {
            let tenant = &kv.key[QUOTA_PREFIX.len()..];
            let Some(per_minute) = self.config.limits(tenant).creates_per_minute else {
                continue;
            };
            let Ok(record) = BucketRecord::decode(kv.value.as_slice()) else {
                tracing::warn!(key = kv.key, "skipping a corrupt rate bucket");
                continue;
            };
            let capacity = f64::from(per_minute);
            let elapsed = (now_ms.saturating_sub(record.at_unix_ms)).max(0) as f64 / 1000.0;
            let tokens = (record.tokens + elapsed * capacity / 60.0).clamp(0.0, capacity);
            tenants.entry(tenant.to_owned()).or_default().bucket = Some((tokens, now));
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TenantState>> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reserves one session with `gpus` GPUs for `tenant`, or RESOURCE_EXHAUSTED naming
    /// the limit and the tenant. `live` counts what the tenant holds; it runs under the
    /// quota lock, so two creates never both take the last unit.
    pub fn reserve(
        &self,
        tenant: &str,
        gpus: u32,
        live: impl FnOnce() -> Usage,
    ) -> Result<Reservation<'_>, Error> {
        let limits = self.config.limits(tenant);
        if limits.max_sessions.is_none() && limits.max_gpus.is_none() {
            return Ok(Reservation {
                quotas: self,
                tenant: String::new(),
                amount: Usage::default(),
            });
        }
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.to_owned()).or_default();
        let live = live();
        let sessions = live.sessions.saturating_add(state.reserved.sessions);
        if let Some(max) = limits.max_sessions
            && sessions.saturating_add(1) > max
        {
            return Err(Error::ResourceExhausted(format!(
                "tenant {tenant}: max_sessions {max} reached ({sessions} live); \
                 delete a session (warm-pool members count too)"
            )));
        }
        let booked = live.gpus.saturating_add(state.reserved.gpus);
        if let Some(max) = limits.max_gpus
            && booked.saturating_add(gpus) > max
        {
            return Err(Error::ResourceExhausted(format!(
                "tenant {tenant}: max_gpus {max} reached ({booked} booked, {gpus} requested)"
            )));
        }
        state.reserved.sessions += 1;
        state.reserved.gpus = state.reserved.gpus.saturating_add(gpus);
        Ok(Reservation {
            quotas: self,
            tenant: tenant.to_owned(),
            amount: Usage { sessions: 1, gpus },
        })
    }

    /// Takes one create from `tenant`'s rate limit and writes the bucket to the store
    /// (fenced by `epoch`), or RESOURCE_EXHAUSTED naming the limit, the tenant and when to
    /// retry. A bucket the store did not take is given its token back.
    pub async fn admit_create(
        &self,
        store: &dyn Store,
        epoch: i64,
        tenant: &str,
    ) -> Result<(), Error> {
        if self.config.limits(tenant).creates_per_minute.is_none() {
            return Ok(());
        }
        let _ordered = self.persisting.lock().await;
        let Some(tokens) = self.admit_create_at(tenant, Instant::now())? else {
            return Ok(());
        };
        let record = BucketRecord {
            tokens,
            at_unix_ms: unix_ms(std::time::SystemTime::now()),
        };
        let txn = Txn::fenced(epoch).put(format!("{QUOTA_PREFIX}{tenant}"), record.encode_to_vec());
        let written = match store.txn(txn).await {
            Ok(outcome) if outcome.succeeded => Ok(()),
            Ok(_) => Err(Error::Deposed),
            Err(e) => Err(e.into()),
        };
        if written.is_err()
            && let Some(state) = self.lock().get_mut(tenant)
            && let Some((tokens, _)) = state.bucket.as_mut()
        {
            *tokens += 1.0;
        }
        written
    }

    /// The rate decision at `now`: the tokens left after taking one (`None` without a
    /// limit), or RESOURCE_EXHAUSTED.
    fn admit_create_at(&self, tenant: &str, now: Instant) -> Result<Option<f64>, Error> {
        let Some(per_minute) = self.config.limits(tenant).creates_per_minute else {
            return Ok(None);
        };
        let capacity = f64::from(per_minute);
        let per_second = capacity / 60.0;
        let mut tenants = self.lock();
        let state = tenants.entry(tenant.to_owned()).or_default();
        let (tokens, since) = state.bucket.get_or_insert((capacity, now));
        let elapsed = now.saturating_duration_since(*since).as_secs_f64();
        *tokens = (*tokens + elapsed * per_second).min(capacity);
        *since = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(Some(*tokens));
        }
        let retry = if per_second > 0.0 {
            let wait = Duration::from_secs_f64(((1.0 - *tokens) / per_second).max(0.001));
            format!(
                "retry in {}",
                humantime::format_duration(Duration::from_millis(
                    wait.as_millis().try_into().unwrap_or(u64::MAX)
                ))
            )
        } else {
            "creates are disabled for this tenant".to_owned()
        };
        Err(Error::ResourceExhausted(format!(
            "tenant {tenant}: creates_per_minute {per_minute} reached; {retry}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> QuotaConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_are_unlimited_and_overrides_go_field_by_field() {
        let unlimited = QuotaConfig::default();
        assert_eq!(unlimited.limits("any"), Limits::default());
        let c = config(
            "max_sessions = 100\nmax_gpus = 8\n[tenants.team-a]\nmax_gpus = 16\n\
             [tenants.team-b]\ncreates_per_minute = 5\n",
        );
        c.validate().unwrap();
        assert_eq!(
            c.limits("team-a"),
            Limits {
                max_sessions: Some(100),
                max_gpus: Some(16),
                creates_per_minute: None
            }
        );
        assert_eq!(c.limits("team-b").creates_per_minute, Some(5));
        assert_eq!(c.limits("team-b").max_gpus, Some(8));
        assert_eq!(c.limits("other").max_gpus, Some(8));
    }

    #[test]
    fn bad_tenant_names_and_unknown_fields_are_refused() {
        let err = config("[tenants.\"a/b\"]\nmax_gpus = 1\n")
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "quota.tenants.a/b");
        let err = toml::from_str::<QuotaConfig>("[tenants.a]\nmax_gpu = 1\n").unwrap_err();
        assert!(err.to_string().contains("max_gpu"), "{err}");
    }

    #[test]
    fn reservations_count_with_live_usage_and_free_on_drop() {
        let q = Quotas::new(config("max_sessions = 2\nmax_gpus = 3\n"));
        let live = || Usage::default();
        let first = q.reserve("a", 2, live).unwrap();
        // A concurrent create sees the first one's reservation.
        let err = q.reserve("a", 2, live).unwrap_err().to_string();
        assert!(
            err.contains("tenant a: max_gpus 3 reached (2 booked, 2 requested)"),
            "{err}"
        );
        let second = q.reserve("a", 1, live).unwrap();
        let err = q.reserve("a", 0, live).unwrap_err().to_string();
        assert!(
            err.contains("tenant a: max_sessions 2 reached (2 live)"),
            "{err}"
        );
        // Other tenants have their own counts.
        drop(q.reserve("b", 3, live).unwrap());
        drop(first);
        drop(second);
        drop(q.reserve("a", 3, live).unwrap());
        // Live sessions count the same way as reservations.
        let full = || Usage {
            sessions: 2,
            gpus: 0,
        };
        assert!(q.reserve("a", 0, full).is_err());
    }

    #[test]
    fn reservations_hold_under_concurrency() {
        let q = std::sync::Arc::new(Quotas::new(config("max_sessions = 5\n")));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
        let granted: usize = (0..16)
            .map(|_| {
                let (q, barrier) = (q.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = q.reserve("a", 0, Usage::default);
                    let ok = r.is_ok();
                    // Hold it until every thread has tried.
                    std::thread::sleep(Duration::from_millis(200));
                    drop(r);
                    ok
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| usize::from(h.join().unwrap()))
            .sum();
        assert_eq!(granted, 5);
    }

    #[test]
    fn the_rate_limit_is_a_token_bucket() {
        let q = Quotas::new(config("[tenants.a]\ncreates_per_minute = 2\n"));
        let t0 = Instant::now();
        q.admit_create_at("a", t0).unwrap();
        q.admit_create_at("a", t0).unwrap();
        let err = q.admit_create_at("a", t0).unwrap_err().to_string();
        assert!(
            err.contains("tenant a: creates_per_minute 2 reached"),
            "{err}"
        );
        assert!(err.contains("retry in 30s"), "{err}");
        // Unlimited for others.
        for _ in 0..100 {
            q.admit_create_at("b", t0).unwrap();
        }
        // One token back every 30 s.
        q.admit_create_at("a", t0 + Duration::from_secs(30))
            .unwrap();
        assert!(
            q.admit_create_at("a", t0 + Duration::from_secs(31))
                .is_err()
        );
        let zero = Quotas::new(config("creates_per_minute = 0\n"));
        assert_eq!(
            Quotas::new(config("")).admit_create_at("a", t0).unwrap(),
            None,
            "no limit, no bucket to keep"
        );
        let err = zero.admit_create_at("a", t0).unwrap_err().to_string();
        assert!(err.contains("disabled"), "{err}");
    }

    #[tokio::test]
    async fn the_bucket_survives_in_the_store_and_refills_for_the_time_since() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::EmbeddedStore::open(dir.path().join("s")).unwrap();
        let settings = "[tenants.a]\ncreates_per_minute = 2\n";
        let leader = Quotas::new(config(settings));
        leader.admit_create(&store, 0, "a").await.unwrap();
        leader.admit_create(&store, 0, "a").await.unwrap();
        assert!(leader.admit_create(&store, 0, "a").await.is_err());
        // A new leader takes the empty bucket over instead of starting full.
        let next = Quotas::new(config(settings));
        next.load(&store).await.unwrap();
        let err = next
            .admit_create(&store, 0, "a")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("creates_per_minute 2 reached"), "{err}");
        // Written 45 s ago: one and a half tokens have come back since.
        let earlier = BucketRecord {
            tokens: 0.0,
            at_unix_ms: unix_ms(std::time::SystemTime::now()) - 45_000,
        };
        crate::store::put(&store, "quota/a", earlier.encode_to_vec())
            .await
            .unwrap();
        let later = Quotas::new(config(settings));
        later.load(&store).await.unwrap();
        later.admit_create(&store, 0, "a").await.unwrap();
        assert!(later.admit_create(&store, 0, "a").await.is_err());
    }
}
