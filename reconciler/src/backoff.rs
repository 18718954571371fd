//! The one backoff of every retry in Hadron: a delay that doubles per
//! failure from a base up to a cap ([`Backoff::delay`]), and the two ways
//! to spread it: [`spread_by_key`] (deterministic, for the pure planner)
//! and [`spread_random`] (for calls that run at once, so clients that fail
//! together do not retry together).
//!
//! Users: retries of a failed attempt (`plan`), failed steps of a pass and
//! publishing status files (`reconcile::steps`), rounds of the status
//! writer (`status::writer`) and Gitea calls (`forge::gitea`).

use std::time::Duration;

/// Exponential backoff: `base`, `2·base`, `4·base`, … never above `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `base` up to `max`.
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay after `failures` failures in a row (`1`: the first):
    /// `base · 2^(failures-1)`, at most `max`; `base` for 0.
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.max)
    }
}

/// `delay` moved by up to ±`percent` %, by an amount derived from `key`
/// alone (FNV-1a): the same key always gets the same delay, so pure code can
/// spread retries (of different workers) without reading a clock or a random
/// source.
pub fn spread_by_key(delay: Duration, key: &str, percent: u32) -> Duration {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let range = u64::from(percent.min(100)) * 200 + 1; // in ten-thousandths: -percent % ..= +percent %
    let offset = i128::from(h % range) - i128::from(range / 2);
    let millis = i128::try_from(delay.as_millis()).unwrap_or(i128::MAX);
    let moved = millis + millis * offset / 10_000;
    Duration::from_millis(u64::try_from(moved.max(0)).unwrap_or(u64::MAX))
}

/// A random delay between half of `delay` and `delay` ("equal jitter").
pub fn spread_random(delay: Duration) -> Duration {
    use rand::Rng;
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    if nanos < 2 {
        return delay;
    }
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_stops_at_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let got: Vec<u128> = (0..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(got, [100, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn keyed_spread_is_deterministic_and_bounded() {
        let d = Duration::from_secs(10);
        let a = spread_by_key(d, "w-1", 20);
        assert_eq!(a, spread_by_key(d, "w-1", 20), "same key, same delay");
        let all: Vec<Duration> = (0..200).map(|i| spread_by_key(d, &format!("w-{i}"), 20)).collect();
        assert!(all.iter().all(|x| *x >= Duration::from_secs(8) && *x <= Duration::from_secs(12)), "{all:?}");
        assert!(all.iter().any(|x| *x < Duration::from_secs(9)) && all.iter().any(|x| *x > Duration::from_secs(11)), "spread over ±20 %");
        assert_eq!(spread_by_key(d, "w-1", 0), d);
    }

    #[test]
    fn random_spread_stays_in_the_upper_half() {
        for _ in 0..100 {
            let x = spread_random(Duration::from_millis(400));
            assert!(x >= Duration::from_millis(200) && x <= Duration::from_millis(400), "{x:?}");
        }
        assert_eq!(spread_random(Duration::ZERO), Duration::ZERO);
    }
}
