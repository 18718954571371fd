//! Fetch retries with exponential backoff and full jitter.

use std::time::Duration;

use rand::Rng;

use super::{Revision, Source, SourceError};

/// How [`fetch_with_retry`] retries transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, at least 1.
    pub max_attempts: u32,
    /// Delay cap before jitter for the first retry; doubles for each further retry.
    pub base_delay: Duration,
    /// Upper bound of any single delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay cap before retry number `retry` (0-based): `base * 2^retry`, at most `max_delay`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A "full jitter" delay: uniform in `[0, backoff_cap(retry)]`.
    pub fn delay(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let cap = self.backoff_cap(retry);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

/// Fetch, retrying transient errors ([`SourceError::is_transient`]) with exponential
/// backoff and full jitter, up to `policy.max_attempts` attempts. Permanent errors
/// (auth, not found, corrupt, bad config) return at once. On failure the source's
/// [`last_good`](Source::last_good) revision is untouched, so callers keep serving it.
/// Blocks the calling thread while waiting; call it through `spawn_blocking`.
pub fn fetch_with_retry(source: &mut Source, policy: RetryPolicy) -> Result<Revision, SourceError> {
    retry_with_backoff(policy, || source.fetch())
}

/// Run `op` until it succeeds, returns a non-transient error, or `policy.max_attempts`
/// attempts are used up, sleeping a jittered exponential backoff between attempts.
pub fn retry_with_backoff<T>(policy: RetryPolicy, mut op: impl FnMut() -> Result<T, SourceError>) -> Result<T, SourceError> {
    let attempts = policy.max_attempts.max(1);
    let mut rng = rand::rng();
    let mut retry = 0;
    loop {
        match op() {
            Ok(value) => return Ok(value),
            Err(err) if err.is_transient() && retry + 1 < attempts => {
                let delay = policy.delay(retry, &mut rng);
                tracing::warn!(
                    reason = err.reason(),
                    attempt = retry + 1,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "git source operation failed, retrying: {err}"
                );
                std::thread::sleep(delay);
                retry += 1;
            }
            Err(err) => return Err(err),
        }
    }
}
