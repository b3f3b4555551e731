//! Which broker a client talks to, and where it goes when that one fails.
//!
//! A client is given a list of brokers. It talks to one of them at a time, follows a
//! standby to the leader it names (`hearth-leader`), and when the broker in use cannot be
//! dialled it moves on: to the next broker in its list, or, from a named leader that
//! cannot be dialled, back to its list. That last case is common: brokers inside a
//! container network or a cluster advertise names (`https://broker-a:7700`) that a client
//! outside reaches only through other addresses (published ports, a load balancer), which
//! it was given as its list.
//!
//! `Route` is the bookkeeping alone, with no I/O and the clock passed in, so every rule
//! below is unit-tested:
//!
//! - A dial failure moves to the next listed broker at once, without the retry backoff,
//!   until every listed broker has failed to dial since the last pause; then the caller
//!   backs off once and starts the round again. A broker that refuses connections costs
//!   one refused dial, not a backoff.
//! - A broker that could not be dialled is passed over for [`UNREACHABLE_FOR`]: the
//!   rotation skips it (unless every listed broker is in that state), and a standby that
//!   names it as the leader is not followed. A standby keeps naming a dead leader until
//!   the leader's lease runs out; following it would bounce between the two.
//! - A standby's answer naming a leader switches to that leader, by its listed entry when
//!   the list holds the same URL, else by the URL as named.
//! - Any other failure stays where it is: the broker answered, so it is up.

use std::time::{Duration, Instant};

/// How long a broker that could not be dialled is passed over. Long enough to cover a
/// leader election (the default lease is 3 s) so that a client does not keep going back to
/// a dead leader that a standby still names; short enough that a broker back from a
/// restart is used again soon.
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(10);

/// Where the client is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum At {
    /// The listed broker at this index.
    Listed(usize),
    /// A leader a standby named that is not in the list, by its URL.
    Named(String),
}

/// What the retry loop does after a failed attempt (if the call may be retried at all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Try again at once: the attempt went to another broker than the next one will.
    Now,
    /// Wait out the policy's backoff first.
    AfterBackoff,
}

/// Why an attempt failed, as far as choosing a broker goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// No connection: the broker could not be dialled, or the connection closed before the
    /// request was sent.
    Unreachable,
    /// A standby answered and named the leader.
    Redirect(&'a str),
    /// Anything else: the broker answered, or a connection broke during the call.
    Other,
}

/// The client's list of brokers and its position in it.
#[derive(Debug)]
pub(crate) struct Route {
    listed: Vec<String>,
    at: At,
    /// The listed broker used last, where the rotation resumes after a named leader fails.
    last_listed: usize,
    /// Bumped on every move, so that a failure seen by a call that started before another
    /// call moved the client does not move it a second time.
    generation: u64,
    /// Brokers that could not be dialled, until when they are passed over.
    unreachable: Vec<(String, Instant)>,
    /// Dial failures in a row since the last answer or pause.
    dial_failures: usize,
}

/// URLs name the same broker when they differ at most by a trailing `/`.
fn same(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

impl Route {
    /// A route over `listed`, which must not be empty, starting at its first entry.
    pub(crate) fn new(listed: Vec<String>) -> Self {
        assert!(!listed.is_empty(), "a route needs at least one broker");
        Self {
            listed,
            at: At::Listed(0),
            last_listed: 0,
            generation: 0,
            unreachable: Vec::new(),
            dial_failures: 0,
        }
    }

    /// Where the client is now.
    pub(crate) fn at(&self) -> &At {
        &self.at
    }

    /// The URL of the broker in use.
    pub(crate) fn url(&self) -> &str {
        match &self.at {
            At::Listed(i) => &self.listed[*i],
            At::Named(url) => url,
        }
    }

    /// Changes on every move; pass it back to [`Route::failed`] and [`Route::answered`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Starts at the listed broker `index` (the first one that `connect` could dial), the
    /// ones before it having failed at `now`.
    pub(crate) fn start_at(&mut self, index: usize, now: Instant) {
        let until = now + UNREACHABLE_FOR;
        self.unreachable
            .extend(self.listed[..index].iter().map(|url| (url.clone(), until)));
        self.move_to(At::Listed(index));
    }

    /// A broker answered an attempt made at `generation` (successfully or not): it is up.
    pub(crate) fn answered(&mut self, generation: u64) {
        if generation != self.generation {
            return;
        }
        self.dial_failures = 0;
        let url = self.url().to_owned();
        self.unreachable.retain(|(u, _)| !same(u, &url));
    }

    /// An attempt made at `generation` failed with `failure` at `now`: moves the client if
    /// the failure calls for it, and says whether to retry at once.
    pub(crate) fn failed(&mut self, generation: u64, failure: Failure<'_>, now: Instant) -> Next {
        self.unreachable.retain(|(_, until)| *until > now);
        if generation != self.generation {
            // Another call has moved the client since this attempt started: this failure
            // is about a broker no longer in use. A dial failure is retried at once where
            // the client is now; anything else waits as usual.
            return match failure {
                Failure::Unreachable => Next::Now,
                _ => Next::AfterBackoff,
            };
        }
        match failure {
            Failure::Unreachable => {
                let url = self.url().to_owned();
                self.mark_unreachable(&url, now);
                self.dial_failures += 1;
                let from = match self.at {
                    At::Listed(i) => i,
                    At::Named(_) => self.last_listed,
                };
                let next = self.next_listed(from, now);
                self.move_to(At::Listed(next));
                if self.dial_failures >= self.listed.len() {
                    self.dial_failures = 0;
                    Next::AfterBackoff
                } else {
                    Next::Now
                }
            }
            Failure::Redirect(leader) => {
                self.answered(generation);
                if !same(leader, self.url()) && !self.is_unreachable(leader, now) {
                    let to = match self.listed.iter().position(|u| same(u, leader)) {
                        Some(i) => At::Listed(i),
                        None => At::Named(leader.to_owned()),
                    };
                    self.move_to(to);
                }
                Next::AfterBackoff
            }
            Failure::Other => {
                self.answered(generation);
                Next::AfterBackoff
            }
        }
    }

    /// The listed broker after `from` that is not passed over, or simply the one after
    /// `from` when every one is.
    fn next_listed(&self, from: usize, now: Instant) -> usize {
        let n = self.listed.len();
        (1..=n)
            .map(|step| (from + step) % n)
            .find(|&i| !self.is_unreachable(&self.listed[i], now))
            .unwrap_or((from + 1) % n)
    }

    fn is_unreachable(&self, url: &str, now: Instant) -> bool {
        self.unreachable
            .iter()
            .any(|(u, until)| same(u, url) && *until > now)
    }

    fn mark_unreachable(&mut self, url: &str, now: Instant) {
        self.unreachable.retain(|(u, _)| !same(u, url));
        self.unreachable
            .push((url.to_owned(), now + UNREACHABLE_FOR));
    }

    fn move_to(&mut self, at: At) {
        if let At::Listed(i) = at {
            self.last_listed = i;
        }
        self.at = at;
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "http://a:7700";
    const B: &str = "http://b:7700";
    const C: &str = "http://c:7700";

    fn route(urls: &[&str]) -> Route {
        Route::new(urls.iter().map(|u| u.to_string()).collect())
    }

    fn fail(r: &mut Route, failure: Failure<'_>, now: Instant) -> Next {
        r.failed(r.generation(), failure, now)
    }

    #[test]
    fn a_dial_failure_moves_to_the_next_broker_at_once_and_a_full_round_backs_off() {
        let now = Instant::now();
        let mut r = route(&[A, B, C]);
        assert_eq!(r.url(), A);
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), B);
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), C);
        // Every broker failed to dial: wait once, then go round again.
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::AfterBackoff);
        assert_eq!(r.url(), A);
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), B);
        // An answer starts the count over.
        r.answered(r.generation());
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), C);
    }

    #[test]
    fn a_lone_broker_that_cannot_be_dialled_backs_off_every_time() {
        let now = Instant::now();
        let mut r = route(&[A]);
        for _ in 0..3 {
            assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::AfterBackoff);
            assert_eq!(r.url(), A);
        }
    }

    #[test]
    fn a_standby_naming_a_listed_leader_moves_to_that_entry() {
        let now = Instant::now();
        let mut r = route(&[A, B, C]);
        assert_eq!(
            fail(&mut r, Failure::Redirect("http://c:7700/"), now),
            Next::AfterBackoff
        );
        assert_eq!(r.at(), &At::Listed(2));
        // From there a dial failure continues round the list.
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), A);
    }

    #[test]
    fn an_unreachable_named_leader_falls_back_to_the_list_after_the_standby() {
        // Brokers in a container network advertise names the client cannot reach; the
        // client has their published ports instead.
        let now = Instant::now();
        let standby = "http://127.0.0.1:17710";
        let leader = "http://127.0.0.1:17700";
        let mut r = route(&[standby, leader]);
        fail(&mut r, Failure::Redirect("https://broker-a:7700"), now);
        assert_eq!(r.at(), &At::Named("https://broker-a:7700".into()));
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), leader, "the entry after the standby that named it");
        r.answered(r.generation());
        // The leader dies; the standby names it by its advertised URL until its lease
        // runs out. That URL failed a moment ago, so the client stays on the standby.
        let later = now + Duration::from_secs(1);
        assert_eq!(fail(&mut r, Failure::Unreachable, later), Next::Now);
        assert_eq!(r.url(), standby);
        fail(&mut r, Failure::Redirect("https://broker-a:7700"), later);
        assert_eq!(r.url(), standby);
        // Once that has expired it is tried again: it may be reachable by now.
        let much_later = now + UNREACHABLE_FOR + Duration::from_secs(1);
        fail(
            &mut r,
            Failure::Redirect("https://broker-a:7700"),
            much_later,
        );
        assert_eq!(r.url(), "https://broker-a:7700");
    }

    #[test]
    fn after_the_leader_dies_the_client_stays_on_the_standby_that_still_names_it() {
        let now = Instant::now();
        let mut r = route(&[A, B]);
        r.answered(r.generation());
        // kill -9 of A.
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), B);
        // Until A's lease runs out, B names A; going back to A would only fail again.
        for _ in 0..5 {
            assert_eq!(fail(&mut r, Failure::Redirect(A), now), Next::AfterBackoff);
            assert_eq!(r.url(), B);
        }
        // B took over: calls succeed there.
        r.answered(r.generation());
        assert_eq!(r.url(), B);
    }

    #[test]
    fn the_rotation_passes_over_brokers_that_failed_to_dial() {
        let now = Instant::now();
        let mut r = route(&[A, B, C]);
        fail(&mut r, Failure::Unreachable, now); // A -> B
        fail(&mut r, Failure::Redirect(C), now); // B names C
        assert_eq!(r.url(), C);
        // C dies: A failed a moment ago, so B is next.
        assert_eq!(fail(&mut r, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), B);
        // When every broker has failed, the plain next one is taken.
        let mut r = route(&[A, B]);
        fail(&mut r, Failure::Unreachable, now);
        fail(&mut r, Failure::Unreachable, now);
        assert_eq!(r.url(), A);
    }

    #[test]
    fn a_failure_from_before_another_move_does_not_move_again() {
        let now = Instant::now();
        let mut r = route(&[A, B, C]);
        let stale = r.generation();
        fail(&mut r, Failure::Unreachable, now);
        assert_eq!(r.url(), B);
        assert_eq!(r.failed(stale, Failure::Unreachable, now), Next::Now);
        assert_eq!(r.url(), B, "a second call's failure at A does not skip B");
        assert_eq!(
            r.failed(stale, Failure::Redirect(C), now),
            Next::AfterBackoff
        );
        assert_eq!(r.url(), B);
    }

    #[test]
    fn other_failures_stay_put() {
        let now = Instant::now();
        let mut r = route(&[A, B]);
        assert_eq!(fail(&mut r, Failure::Other, now), Next::AfterBackoff);
        assert_eq!(r.url(), A);
        // A standby naming the broker in use changes nothing.
        assert_eq!(fail(&mut r, Failure::Redirect(A), now), Next::AfterBackoff);
        assert_eq!(r.at(), &At::Listed(0));
    }

    #[test]
    fn start_at_passes_over_the_entries_connect_could_not_dial() {
        let now = Instant::now();
        let mut r = route(&[A, B, C]);
        r.start_at(1, now);
        assert_eq!(r.url(), B);
        fail(&mut r, Failure::Redirect(A), now);
        assert_eq!(r.url(), B, "A failed to dial just now");
        fail(&mut r, Failure::Unreachable, now);
        assert_eq!(r.url(), C);
    }
}
