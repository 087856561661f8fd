//! How patiently the PAS client waits: the policy, exponential backoff with
//! jitter, `Retry-After`, and when a token is renewed.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How patient the client is. Tests shrink the delays; production keeps the
/// defaults.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included, across 429s and 5xx alike.
    pub max_attempts: u32,
    /// The first backoff after a 5xx; doubled each time, jittered.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` the client waits out itself; a longer one
    /// is returned as `ClientError::Throttled` for the scheduler.
    pub max_retry_after: Duration,
    /// Per HTTP request.
    pub timeout: Duration,
    /// A token is renewed when less than this remains of its life.
    pub token_refresh_margin: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            timeout: Duration::from_secs(60),
            token_refresh_margin: Duration::from_secs(60),
        }
    }
}

/// How long a token that lives `lifetime` is used: renewed `margin` before
/// it expires, but never before half its life, so a short-lived token is
/// not fetched again on every call.
pub(super) fn renew_after(lifetime: Duration, margin: Duration) -> Duration {
    lifetime - margin.min(lifetime / 2)
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// Exponential backoff with "equal jitter": half the step fixed, half random,
/// so clients that failed together do not retry together.
pub(super) fn backoff(p: &RetryPolicy, attempt: u32) -> Duration {
    let step = p
        .base_delay
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(p.max_delay);
    let half = step / 2;
    // RandomState is seeded from the OS per instance: enough randomness for
    // jitter without a random-number crate.
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let extra = half.mul_f64((r % 10_000) as f64 / 10_000.0);
    half + extra
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for attempt in 1..10 {
            let step = Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_millis(1000));
            let d = backoff(&p, attempt);
            assert!(
                d >= step / 2 && d <= step,
                "attempt {attempt}: {d:?} not in [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn tokens_are_renewed_before_they_expire() {
        let s = Duration::from_secs;
        assert_eq!(renew_after(s(3600), s(60)), s(3540));
        assert_eq!(renew_after(s(60), s(60)), s(30), "never before half its life");
        assert_eq!(renew_after(s(0), s(60)), s(0));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past means now");
    }
}
