//! When a failed call is tried again, and how long to wait in between.

use std::time::Duration;

use tonic::{Code, Status};

use crate::LEADER_METADATA_KEY;

/// How a [`crate::Client`] retries calls that fail with `UNAVAILABLE` (or whose
/// connection broke under them).
///
/// Unary calls are all safe to repeat: reads and keep-alives trivially, pause, resume and
/// delete because they name the state they want, and creates because the client sends the
/// same `request_id` each time. A turn (Exec or Invoke) may have side effects, so it is
/// repeated only when it certainly did not run: the broker could not be dialled, the
/// request never left the client, or the broker answered that the turn was not run (a
/// standby, or a node not connected right now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first wait; each further wait doubles, up to `max_backoff`, with full jitter.
    pub initial_backoff: Duration,
    /// The longest single wait.
    pub max_backoff: Duration,
    /// No new attempt starts after this long since the first. Zero disables retries.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 50 ms doubling to 1 s, for up to 30 s: long enough to ride out a leader failover
    /// (about 3 s) or a broker restart. The 1 s cap bounds how long a client waits, after
    /// a standby has taken over, before its next try finds it leading.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        Self {
            max_elapsed: Duration::ZERO,
            ..Self::default()
        }
    }

    /// The wait before attempt `n + 1` (`n` counts from 0): a random point in
    /// `[0, min(max_backoff, initial_backoff * 2^n)]`.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(n.min(20)))
            .min(self.max_backoff);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// How far one call's wait between attempts has grown.
#[derive(Debug, Default)]
pub(crate) struct Waits {
    /// Backoffs since the wait last started over.
    grown: u32,
    /// Whether the last refusal a broker answered named a leader.
    named_leader: Option<bool>,
}

impl Waits {
    /// Takes in a failed attempt. A standby that stops naming a leader has just taken
    /// over (or a leader just stepped down): the wait starts over from the shortest, as
    /// the agent's does, because the next answer (its node reconnected, say) is likely to
    /// come soon. Failures to dial say nothing about that and change nothing.
    pub(crate) fn failed(&mut self, status: &Status) {
        if never_sent(status) {
            return;
        }
        let names = leader(status).is_some();
        if self.named_leader.is_some_and(|before| before != names) {
            self.grown = 0;
        }
        self.named_leader = Some(names);
    }

    /// The next wait under `policy`; each call grows the one after it.
    pub(crate) fn next(&mut self, policy: &RetryPolicy) -> Duration {
        let wait = policy.backoff(self.grown);
        self.grown = self.grown.saturating_add(1);
        wait
    }
}

/// What kind of call failed, which decides whether repeating it is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Idempotent: safe to repeat on any `UNAVAILABLE`.
    Unary,
    /// A turn: repeated only when it certainly did not run.
    Turn,
}

/// Whether `status` may be retried for a call of `kind`.
pub(crate) fn retryable(kind: Kind, status: &Status) -> bool {
    match (kind, status.code()) {
        (Kind::Unary, Code::Unavailable) => true,
        // tonic reports a connection that broke under a call as UNKNOWN or CANCELLED.
        (Kind::Unary, Code::Unknown | Code::Cancelled) => crate::error::connection_failed(status),
        (Kind::Turn, Code::Unavailable | Code::Unknown | Code::Cancelled) => {
            crate::error::certainly_not_run(status)
        }
        _ => false,
    }
}

/// The leader's URL, when a standby named it.
pub(crate) fn leader(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_METADATA_KEY)?
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// True when the transport failed before the request left this process: no connection
/// could be made (refused, timed out, a name that does not resolve, a failed TLS
/// handshake: everything tonic reports as a [`tonic::ConnectError`]), or the connection
/// closed while the request still waited to be sent.
pub(crate) fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotFound
            )
        {
            return true;
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NOT_RUN_METADATA_KEY;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_under_it() {
        let p = RetryPolicy::default();
        for n in 0..40 {
            let cap = (p.initial_backoff * 2u32.saturating_pow(n.min(20))).min(p.max_backoff);
            let b = p.backoff(n);
            assert!(b <= cap, "attempt {n}: {b:?} > {cap:?}");
        }
        // With full jitter the mean of many draws sits near half the cap.
        let mean: f64 = (0..2000).map(|_| p.backoff(10).as_secs_f64()).sum::<f64>() / 2000.0;
        let half = p.max_backoff.as_secs_f64() / 2.0;
        assert!(
            (half * 0.7..half * 1.3).contains(&mean),
            "mean {mean}, cap {:?}",
            p.max_backoff
        );
    }

    #[test]
    fn turns_retry_only_what_did_not_run() {
        let plain = Status::unavailable("node gone while the turn ran");
        assert!(retryable(Kind::Unary, &plain));
        assert!(!retryable(Kind::Turn, &plain));

        let mut not_run = Status::unavailable("the turn was not run");
        not_run
            .metadata_mut()
            .insert(NOT_RUN_METADATA_KEY, "true".parse().unwrap());
        assert!(retryable(Kind::Turn, &not_run));

        let mut refused = Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(retryable(Kind::Turn, &refused));

        assert!(!retryable(
            Kind::Unary,
            &Status::invalid_argument("invalid spec.image")
        ));

        // A broken connection: idempotent calls go again, turns do not.
        let mut broken = Status::unknown("transport error");
        broken.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert!(retryable(Kind::Unary, &broken));
        assert!(!retryable(Kind::Turn, &broken));
        // The workload's own UNKNOWN is not the transport's.
        assert!(!retryable(Kind::Unary, &Status::unknown("worker said no")));
    }

    #[test]
    fn the_wait_starts_over_when_a_standby_stops_naming_a_leader() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let mut standby = Status::unavailable("not the leader");
        standby
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "http://a:7700".parse().unwrap());
        let leader_now = Status::unavailable("node gpu-1 is not connected");
        let mut waits = Waits::default();
        for _ in 0..6 {
            waits.failed(&standby);
            waits.next(&policy);
        }
        assert_eq!(waits.grown, 6);
        // A dial failure in between changes nothing.
        let mut refused = Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        waits.failed(&refused);
        assert_eq!(waits.grown, 6);
        // The standby took over: it answers without naming anyone.
        waits.failed(&leader_now);
        assert_eq!(waits.grown, 0);
        assert!(waits.next(&policy) <= policy.initial_backoff);
        // The same answer again lets the wait grow as usual.
        waits.failed(&leader_now);
        assert_eq!(waits.grown, 1);
    }

    #[test]
    fn leader_comes_from_metadata() {
        let mut s = Status::unavailable("standby");
        assert_eq!(leader(&s), None);
        s.metadata_mut()
            .insert(LEADER_METADATA_KEY, "http://10.0.0.2:7700".parse().unwrap());
        assert_eq!(leader(&s).as_deref(), Some("http://10.0.0.2:7700"));
    }
}
