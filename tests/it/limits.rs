//! Per-payer limits on an injected clock: a cap on runs at once, a rate of
//! starts, and a circuit breaker that stops automation against a failing
//! portal, tries once after a cool-down, and tells operations.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use precert::ids::PlaybookId;
use precert::limits::{AlertKind, Blocked, BreakerState, LimitSettings, PayerLimits, RateLimiter, RunEnd};

fn pb(id: &str) -> PlaybookId {
    PlaybookId::new(id)
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn settings() -> LimitSettings {
    LimitSettings {
        max_concurrent: 2,
        starts_per_minute: 6.0,
        burst: 3,
        failure_threshold: 3,
        cool_down: Duration::from_secs(600),
    }
}

#[test]
fn a_payer_gets_a_burst_then_its_rate_and_no_more() {
    let mut rate = RateLimiter::new(6.0, 3);
    for _ in 0..3 {
        rate.try_acquire(t0()).unwrap();
    }
    // The fourth start in the same second waits for a token: one per 10 s.
    assert_eq!(rate.try_acquire(t0()), Err(Duration::from_secs(10)));
    assert_eq!(rate.try_acquire(t0() + secs(4)), Err(Duration::from_secs(6)));
    rate.try_acquire(t0() + secs(10)).unwrap();
    assert!(rate.try_acquire(t0() + secs(10)).is_err());

    // Over ten minutes the rate holds: at most 6 a minute plus the burst.
    let mut rate = RateLimiter::new(6.0, 3);
    let started = (0..600).filter(|s| rate.try_acquire(t0() + secs(*s)).is_ok()).count();
    assert_eq!(started, 3 + 59, "the burst, then one every 10 s");

    // A quiet spell refills the bucket only up to the burst.
    let mut rate = RateLimiter::new(6.0, 3);
    let later = t0() + chrono::Duration::hours(1);
    assert_eq!((0..5).filter(|_| rate.try_acquire(later).is_ok()).count(), 3);
}

#[test]
fn a_payer_runs_no_more_than_its_cap_at_once() {
    let mut limits = PayerLimits::new(settings());
    let a = limits.try_start(&pb("sandbox"), t0()).unwrap();
    let _b = limits.try_start(&pb("sandbox"), t0()).unwrap();
    assert_eq!(
        limits.try_start(&pb("sandbox"), t0()),
        Err(Blocked::AtCapacity { running: 2, cap: 2 })
    );
    // Other payers have their own caps.
    let _c = limits.try_start(&pb("sandbox-pas"), t0()).unwrap();
    assert_eq!(
        limits.blocked([&pb("sandbox"), &pb("sandbox-pas")], t0()),
        vec![pb("sandbox")]
    );

    // A run that ends frees its slot.
    assert_eq!(limits.finish(a, &RunEnd::Success, t0() + secs(1)), None);
    assert_eq!(limits.running(&pb("sandbox")), 1);
    assert!(limits.try_start(&pb("sandbox"), t0() + secs(1)).is_ok());

    // The rate applies on top: the fourth start within seconds waits.
    let mut limits = PayerLimits::new(LimitSettings {
        max_concurrent: 10,
        ..settings()
    });
    for _ in 0..3 {
        let s = limits.try_start(&pb("sandbox"), t0()).unwrap();
        limits.finish(s, &RunEnd::Success, t0());
    }
    assert_eq!(
        limits.try_start(&pb("sandbox"), t0()),
        Err(Blocked::RateLimited {
            retry_in: Duration::from_secs(10)
        })
    );
}

#[test]
fn a_failing_portal_opens_the_breaker_then_one_trial_decides() {
    let mut limits = PayerLimits::new(LimitSettings {
        max_concurrent: 10,
        starts_per_minute: 600.0,
        burst: 100,
        ..settings()
    });
    let fail = |limits: &mut PayerLimits, at| {
        let s = limits.try_start(&pb("sandbox"), at).unwrap();
        limits.finish(s, &RunEnd::PortalFailure("login page timed out".into()), at)
    };

    // Two failures in a row: still closed. A success resets the count.
    assert_eq!(fail(&mut limits, t0()), None);
    assert_eq!(fail(&mut limits, t0()), None);
    let s = limits.try_start(&pb("sandbox"), t0()).unwrap();
    limits.finish(s, &RunEnd::Success, t0());
    assert_eq!(
        limits.breaker_state(&pb("sandbox"), t0()),
        BreakerState::Closed { failures: 0 }
    );

    // Failures that are not the portal's do not count.
    for _ in 0..5 {
        let s = limits.try_start(&pb("sandbox"), t0()).unwrap();
        limits.finish(s, &RunEnd::OtherFailure, t0());
    }

    // Three portal failures in a row open it, and operations hear once.
    assert_eq!(fail(&mut limits, t0()), None);
    assert_eq!(fail(&mut limits, t0()), None);
    let alert = fail(&mut limits, t0() + secs(5)).expect("opening the breaker raises an alert");
    assert_eq!(alert.playbook, pb("sandbox"));
    assert_eq!(
        alert.kind,
        AlertKind::BreakerOpened {
            failures: 3,
            last_error: "login page timed out".into(),
            retry_at: t0() + secs(605),
        }
    );
    assert_eq!(
        alert.to_string(),
        "automation against payer sandbox stopped after 3 failures in a row (last: login page timed out); it tries again at 2026-12-01T15:10:05Z"
    );

    // Open: nothing starts during the cool-down; the queue skips the payer.
    let open = Blocked::BreakerOpen {
        until: t0() + secs(605),
    };
    assert_eq!(limits.try_start(&pb("sandbox"), t0() + secs(600)), Err(open));
    assert_eq!(limits.blocked([&pb("sandbox")], t0() + secs(600)), vec![pb("sandbox")]);

    // Half-open after the cool-down: exactly one trial.
    let trial = limits.try_start(&pb("sandbox"), t0() + secs(605)).unwrap();
    assert_eq!(
        limits.breaker_state(&pb("sandbox"), t0() + secs(605)),
        BreakerState::HalfOpen { trial_running: true }
    );
    assert_eq!(
        limits.try_start(&pb("sandbox"), t0() + secs(606)),
        Err(Blocked::TrialRunning)
    );

    // The trial fails: open again for another cool-down, without a second
    // alert (the first is still true).
    let again = limits.finish(trial, &RunEnd::PortalFailure("HTTP 502".into()), t0() + secs(610));
    assert_eq!(again, None);
    assert_eq!(
        limits.try_start(&pb("sandbox"), t0() + secs(1000)),
        Err(Blocked::BreakerOpen {
            until: t0() + secs(1210)
        })
    );

    // The next trial succeeds: closed, and operations hear it recovered.
    let trial = limits.try_start(&pb("sandbox"), t0() + secs(1210)).unwrap();
    let recovered = limits.finish(trial, &RunEnd::Success, t0() + secs(1220)).unwrap();
    assert_eq!(recovered.kind, AlertKind::Recovered);
    assert_eq!(
        limits.breaker_state(&pb("sandbox"), t0() + secs(1220)),
        BreakerState::Closed { failures: 0 }
    );
    assert!(limits.try_start(&pb("sandbox"), t0() + secs(1221)).is_ok());
    assert!(limits.try_start(&pb("sandbox"), t0() + secs(1221)).is_ok());
}

#[test]
fn a_half_open_trial_that_fails_for_another_reason_leaves_the_next_run_as_the_trial() {
    let mut limits = PayerLimits::new(LimitSettings {
        failure_threshold: 1,
        ..settings()
    });
    let s = limits.try_start(&pb("sandbox"), t0()).unwrap();
    assert!(limits.finish(s, &RunEnd::PortalFailure("down".into()), t0()).is_some());
    let trial = limits.try_start(&pb("sandbox"), t0() + secs(600)).unwrap();
    limits.finish(trial, &RunEnd::OtherFailure, t0() + secs(601));
    assert_eq!(
        limits.breaker_state(&pb("sandbox"), t0() + secs(601)),
        BreakerState::HalfOpen { trial_running: false }
    );
    assert!(limits.try_start(&pb("sandbox"), t0() + secs(602)).is_ok());
}
