//! [`RetryPolicy`]: how often and after what delay a failed call is retried.

use std::time::Duration;

use crate::backoff::{Backoff, spread_random};

/// How 429, 5xx and transport errors are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub initial_delay: Duration,
    /// Upper bound of any delay, a `Retry-After` header included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Short on purpose: retries happen inside a pass, and the next pass
        // (and the circuit breaker) handle a longer outage.
        RetryPolicy { max_attempts: 3, initial_delay: Duration::from_millis(500), max_delay: Duration::from_secs(2) }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): exponential with
    /// jitter in its upper half, at least `retry_after`, at most `max_delay`.
    pub(super) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let jittered = spread_random(Backoff::new(self.initial_delay, self.max_delay).delay(attempt));
        jittered.max(retry_after.unwrap_or(Duration::ZERO)).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy { max_attempts: 5, initial_delay: Duration::from_millis(100), max_delay: Duration::from_millis(1000) };
        let d1 = p.delay(1, None);
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
        let d3 = p.delay(3, None);
        assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
        assert!(p.delay(30, None) <= Duration::from_millis(1000));
        assert_eq!(p.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(p.delay(1, Some(Duration::from_secs(60))), Duration::from_millis(1000));
    }
}
