//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) sleeps a uniformly random time in `[0, min(max, min * 2^n)]`. Full
//! jitter spreads a fleet of agents that lost the same broker at the same instant, so the new
//! leader is not hit by a thundering herd (AWS Architecture Blog, "Exponential Backoff And
//! Jitter"). The link calls [`Backoff::reset`] once a stream reaches `Welcome`.

use std::time::Duration;

use rand::Rng;

/// Full-jitter exponential backoff between `min` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is at most `min` and whose cap never exceeds `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(max, min * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn from the thread-local generator; counts one more attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// The next delay, drawn from `rng`; counts one more attempt.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // Nanosecond resolution; the cap (seconds) fits easily in u64 nanoseconds.
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Starts over from `min`, after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn ceiling_doubles_from_min_and_stops_at_max() {
        let mut b = Backoff::new(MIN, MAX);
        let mut rng = StdRng::seed_from_u64(7);
        let expected_ms = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000];
        for ms in expected_ms {
            assert_eq!(b.ceiling(), Duration::from_millis(ms));
            let d = b.next_delay_with(&mut rng);
            assert!(d <= Duration::from_millis(ms), "{d:?} > {ms}ms");
        }
        // Far past 2^31 the arithmetic must saturate, not overflow or panic.
        for _ in 0..100 {
            b.next_delay_with(&mut rng);
        }
        assert_eq!(b.ceiling(), MAX);
        assert!(b.next_delay_with(&mut rng) <= MAX);
    }

    #[test]
    fn delays_are_jittered_across_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let samples: Vec<Duration> = (0..2000)
            .map(|_| Backoff::new(MIN, MAX).next_delay_with(&mut rng))
            .collect();
        assert!(samples.iter().all(|d| *d <= MIN));
        // Full jitter: both ends of [0, 200ms] show up, and no two agents agree.
        assert!(samples.iter().any(|d| *d < MIN / 10));
        assert!(samples.iter().any(|d| *d > MIN * 9 / 10));
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        assert!(
            mean > Duration::from_millis(80) && mean < Duration::from_millis(120),
            "{mean:?}"
        );
    }

    #[test]
    fn reset_starts_over_from_min() {
        let mut b = Backoff::new(MIN, MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.attempt(), 10);
        assert_eq!(b.ceiling(), MAX);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.ceiling(), MIN);
        assert!(b.next_delay() <= MIN);
    }

    #[test]
    fn max_below_min_is_clamped() {
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }
}
