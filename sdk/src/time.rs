//! Conversions between protobuf well-known types and std time types.

use std::time::{Duration, SystemTime};

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The protobuf timestamp for now.
pub fn now() -> prost_types::Timestamp {
    timestamp(SystemTime::now())
}

/// A std `SystemTime` from a protobuf timestamp, or `None` if it is out of range.
pub fn system_time(ts: &prost_types::Timestamp) -> Option<SystemTime> {
    SystemTime::try_from(*ts).ok()
}

/// A protobuf duration for `d`, saturating at the largest representable value.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 999_999_999,
    })
}

/// A std duration from a protobuf one; negative durations are an error that names `field`.
pub fn std_duration(d: &prost_types::Duration, field: &str) -> Result<Duration, String> {
    Duration::try_from(*d).map_err(|_| format!("{field} must not be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_and_negative_is_rejected() {
        let d = Duration::from_millis(1500);
        assert_eq!(std_duration(&duration(d), "x").unwrap(), d);
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(
            std_duration(&negative, "spec.idle_timeout").unwrap_err(),
            "spec.idle_timeout must not be negative"
        );
    }

    #[test]
    fn timestamps_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(system_time(&timestamp(t)), Some(t));
    }
}
