//! How long a failed job waits before its next attempt.

use std::sync::Arc;
use std::time::Duration;

/// A number in `[0, 1)` for jitter. The queue draws from the OS; tests
/// inject their own.
pub type JitterSource = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Randomness from the operating system. Jitter needs no cryptographic
/// quality, but getrandom is already a dependency and needs no seeding.
pub fn os_jitter() -> JitterSource {
    Arc::new(|| {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_err() {
            // No entropy at all is no reason to stop retrying: the middle of
            // the range still backs off, only in step with other workers.
            return 0.5;
        }
        // 53 random bits make an evenly spread f64 in [0, 1).
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Exponential backoff with jitter: the `n`th retry waits
/// `min(base · 2^(n-1), max)`, spread by ±`jitter` of itself so that jobs
/// which failed together (a payer's portal went down) do not all come back
/// in the same second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry.
    pub base: Duration,
    /// The longest wait, before jitter.
    pub max: Duration,
    /// The share of the wait that jitter may add or take, in `[0, 1)`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// One minute, doubling to six hours: a portal outage of an afternoon
    /// is ridden out within the default five attempts' worth of patience.
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(60),
            max: Duration::from_secs(6 * 3600),
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// The wait before a job runs again after its `attempt`th run failed
    /// (`attempt` counts from 1), with `unit` in `[0, 1)` choosing where in
    /// the jitter range it falls.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let (lo, hi) = self.bounds(attempt);
        let unit = unit.clamp(0.0, 1.0);
        lo + (hi - lo).mul_f64(unit)
    }

    /// The shortest and longest wait after the `attempt`th failure.
    pub fn bounds(&self, attempt: u32) -> (Duration, Duration) {
        let doublings = attempt.saturating_sub(1).min(32);
        let nominal = self.base.saturating_mul(1u32 << doublings.min(31)).min(self.max);
        let jitter = self.jitter.clamp(0.0, 0.99);
        (nominal.mul_f64(1.0 - jitter), nominal.mul_f64(1.0 + jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_jitter_stays_in_the_unit_interval() {
        let j = os_jitter();
        for _ in 0..1000 {
            let u = j();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[test]
    fn the_cap_applies_before_jitter() {
        let p = RetryPolicy {
            base: Duration::from_secs(10),
            max: Duration::from_secs(100),
            jitter: 0.1,
        };
        assert_eq!(p.bounds(1), (Duration::from_secs(9), Duration::from_secs(11)));
        assert_eq!(p.bounds(40), (Duration::from_secs(90), Duration::from_secs(110)));
    }
}
