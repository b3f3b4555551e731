//! Waiting for state to converge, with a deadline instead of a bare sleep.

use std::{future::Future, time::Duration};

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout` with
/// `what` and the last error seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: String;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = "condition not met yet".to_owned(),
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
