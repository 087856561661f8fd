//! How hard precert may lean on each payer: a cap on runs at once, a rate
//! of starts, and a circuit breaker that stops automation against a portal
//! that keeps failing.
//!
//! Pure logic over an injected `now`: the daemon keeps one [`PayerLimits`]
//! behind a mutex, asks [`PayerLimits::try_start`] before it runs a job for a
//! payer, and reports how the run ended with [`PayerLimits::finish`]. Payers
//! it may not start now go into the queue's `LeaseFilter::skip`.
//!
//! Limits are keyed by [`PlaybookId`]: the portal behind a playbook is one,
//! whichever practices bind it and under whatever [`crate::ids::PayerKey`].
//! The daemon maps a job's binding to its playbook before it asks.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ids::PlaybookId;

/// The limits of one payer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitSettings {
    /// Runs against the payer at once (portal sessions, API calls).
    pub max_concurrent: u32,
    /// Starts allowed per minute, on average.
    pub starts_per_minute: f64,
    /// Starts allowed back to back before the rate applies.
    pub burst: u32,
    /// Consecutive portal failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses before it lets one trial through.
    pub cool_down: Duration,
}

impl Default for LimitSettings {
    /// Conservative: a portal sees one robot at a time, a few times a
    /// minute, the way a careful person would use it.
    fn default() -> Self {
        LimitSettings {
            max_concurrent: 1,
            starts_per_minute: 6.0,
            burst: 3,
            failure_threshold: 5,
            cool_down: Duration::from_secs(15 * 60),
        }
    }
}

/// A token bucket of `burst` tokens refilled at `per_minute`, kept as the
/// generic cell rate algorithm: one timestamp instead of a fractional token
/// count, so the arithmetic is exact (ten 0.1-token refills make a whole
/// token, which in floating point they do not).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    /// Time between starts at the sustained rate; `None` when the rate is 0.
    interval: Option<chrono::Duration>,
    /// How far ahead of the sustained rate a burst may run.
    tolerance: chrono::Duration,
    /// When the bucket would be full again at the sustained rate.
    theoretical_arrival: Option<DateTime<Utc>>,
}

impl RateLimiter {
    pub fn new(per_minute: f64, burst: u32) -> RateLimiter {
        let interval = (per_minute > 0.0)
            .then(|| Duration::try_from_secs_f64(60.0 / per_minute).ok())
            .flatten()
            .and_then(|d| chrono::Duration::from_std(d).ok());
        let tolerance = interval.map_or(chrono::Duration::zero(), |i| i * (burst.max(1) as i32 - 1));
        RateLimiter {
            interval,
            tolerance,
            theoretical_arrival: None,
        }
    }

    /// Whether a start is allowed now; `Err` says how long until one is.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), Duration> {
        if self.interval.is_none() {
            return Err(Duration::MAX);
        }
        let tat = self.theoretical_arrival.unwrap_or(now);
        let allowed_at = tat - self.tolerance;
        if now >= allowed_at {
            Ok(())
        } else {
            Err((allowed_at - now).to_std().unwrap_or_default())
        }
    }

    /// Takes a token if there is one.
    pub fn try_acquire(&mut self, now: DateTime<Utc>) -> Result<(), Duration> {
        self.check(now)?;
        if let Some(interval) = self.interval {
            let tat = self.theoretical_arrival.map_or(now, |t| t.max(now));
            self.theoretical_arrival = Some(tat + interval);
        }
        Ok(())
    }
}

/// Where a breaker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Runs go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// Refusing until `until`.
    Open { until: DateTime<Utc> },
    /// Cool-down over: one trial run decides. `trial_running` while it runs.
    HalfOpen { trial_running: bool },
}

/// Something operations should hear about (mailed by the escalation layer
/// to the practice's `contacts.operations`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// The playbook whose portal the alert is about.
    pub playbook: PlaybookId,
    pub kind: AlertKind,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// Automation against the payer stopped after `failures` failures in a
    /// row; it tries again at `retry_at`.
    BreakerOpened {
        failures: u32,
        last_error: String,
        retry_at: DateTime<Utc>,
    },
    /// A trial run succeeded after the breaker had opened: automation runs
    /// again.
    Recovered,
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            AlertKind::BreakerOpened {
                failures,
                last_error,
                retry_at,
            } => write!(
                f,
                "automation against payer {} stopped after {failures} failures in a row (last: {last_error}); it tries again at {}",
                self.playbook,
                retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            AlertKind::Recovered => write!(f, "automation against payer {} works again", self.playbook),
        }
    }
}

/// A circuit breaker for one payer's portal.
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: chrono::Duration,
    state: BreakerState,
    /// Set once the breaker opened and cleared when it closes, so a trial
    /// that fails re-opens it without a second alert (the first one is
    /// still true) and the close sends one "recovered".
    alerted: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            cool_down: chrono::Duration::from_std(cool_down).unwrap_or(chrono::Duration::MAX),
            state: BreakerState::Closed { failures: 0 },
            alerted: false,
        }
    }

    /// The state at `now` (an open breaker whose cool-down is over reads as
    /// half-open).
    pub fn state(&mut self, now: DateTime<Utc>) -> BreakerState {
        if let BreakerState::Open { until } = self.state {
            if now >= until {
                self.state = BreakerState::HalfOpen { trial_running: false };
            }
        }
        self.state
    }

    /// Whether a run may start now, without starting it.
    pub fn check(&mut self, now: DateTime<Utc>) -> Result<(), Blocked> {
        match self.state(now) {
            BreakerState::Closed { .. } | BreakerState::HalfOpen { trial_running: false } => Ok(()),
            BreakerState::Open { until } => Err(Blocked::BreakerOpen { until }),
            BreakerState::HalfOpen { trial_running: true } => Err(Blocked::TrialRunning),
        }
    }

    /// Lets a run start: in half-open, it becomes the one trial.
    pub fn start(&mut self, now: DateTime<Utc>) -> Result<(), Blocked> {
        self.check(now)?;
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen { trial_running: true };
        }
        Ok(())
    }

    pub fn record_success(&mut self, playbook: &PlaybookId, now: DateTime<Utc>) -> Option<Alert> {
        self.state = BreakerState::Closed { failures: 0 };
        if std::mem::take(&mut self.alerted) {
            tracing::info!(playbook = %playbook, "Circuit breaker closed: the trial run succeeded.");
            return Some(Alert {
                playbook: playbook.clone(),
                kind: AlertKind::Recovered,
                at: now,
            });
        }
        None
    }

    /// A portal failure (not a data error: those say nothing about the
    /// portal's health). Returns the alert when this failure opens the
    /// breaker for the first time.
    pub fn record_failure(&mut self, playbook: &PlaybookId, error: &str, now: DateTime<Utc>) -> Option<Alert> {
        let failures = match self.state(now) {
            BreakerState::Closed { failures } => failures + 1,
            // The trial failed (or a run that started before the breaker
            // opened ended late): open again for another cool-down.
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => self.threshold,
        };
        if failures < self.threshold {
            self.state = BreakerState::Closed { failures };
            return None;
        }
        let retry_at = now + self.cool_down;
        self.state = BreakerState::Open { until: retry_at };
        tracing::warn!(
            playbook = %playbook,
            failures,
            retry_at = %retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "Circuit breaker open: automation against this payer pauses."
        );
        if std::mem::replace(&mut self.alerted, true) {
            return None;
        }
        Some(Alert {
            playbook: playbook.clone(),
            kind: AlertKind::BreakerOpened {
                failures,
                last_error: error.to_owned(),
                retry_at,
            },
            at: now,
        })
    }
}

/// Why a run for a payer cannot start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    AtCapacity {
        running: u32,
        cap: u32,
    },
    RateLimited {
        retry_in: Duration,
    },
    BreakerOpen {
        until: DateTime<Utc>,
    },
    /// Half-open and its one trial run is under way.
    TrialRunning,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocked::AtCapacity { running, cap } => write!(f, "{running} of {cap} sessions in use"),
            Blocked::RateLimited { retry_in } => write!(f, "rate limit; next start in {} ms", retry_in.as_millis()),
            Blocked::BreakerOpen { until } => write!(
                f,
                "paused after repeated failures until {}",
                until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Blocked::TrialRunning => write!(f, "paused; one trial run is under way"),
        }
    }
}

/// How a run ended, for the breaker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Success,
    /// The portal or API failed (timeout, 5xx, page that did not load).
    PortalFailure(String),
    /// The run failed for a reason that is not the portal's (bad data, a
    /// denial, a lost lease): the breaker does not count it.
    OtherFailure,
}

#[derive(Clone, Debug)]
struct PayerState {
    settings: LimitSettings,
    running: u32,
    rate: RateLimiter,
    breaker: CircuitBreaker,
}

impl PayerState {
    fn new(settings: LimitSettings) -> PayerState {
        PayerState {
            settings,
            running: 0,
            rate: RateLimiter::new(settings.starts_per_minute, settings.burst),
            breaker: CircuitBreaker::new(settings.failure_threshold, settings.cool_down),
        }
    }
}

/// Every payer's limits.
#[derive(Clone, Debug, Default)]
pub struct PayerLimits {
    defaults: LimitSettings,
    overrides: HashMap<PlaybookId, LimitSettings>,
    payers: HashMap<PlaybookId, PayerState>,
}

/// Proof that a run was admitted; hand it back to `finish`.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a started run must be finished, or the payer's slot stays taken"]
pub struct Started {
    playbook: PlaybookId,
}

/// A session added to an admitted job (`PayerLimits::try_widen`).
#[derive(Debug)]
#[must_use = "give the session back with PayerLimits::narrow"]
pub struct Widened {
    playbook: PlaybookId,
}

impl Started {
    pub fn playbook(&self) -> &PlaybookId {
        &self.playbook
    }
}

impl PayerLimits {
    pub fn new(defaults: LimitSettings) -> PayerLimits {
        PayerLimits {
            defaults,
            ..PayerLimits::default()
        }
    }

    /// Takes the settings of `new` (a reloaded configuration) and keeps what
    /// is under way: each payer's running count and its breaker's state. The
    /// rate limiter starts afresh with the new pace.
    pub fn reconfigure(&mut self, new: PayerLimits) {
        self.defaults = new.defaults;
        self.overrides = new.overrides;
        let ids: Vec<PlaybookId> = self.payers.keys().cloned().collect();
        for id in ids {
            let settings = self.overrides.get(&id).copied().unwrap_or(self.defaults);
            if let Some(p) = self.payers.get_mut(&id) {
                p.settings = settings;
                p.rate = RateLimiter::new(settings.starts_per_minute, settings.burst);
            }
        }
    }

    /// The settings a payer runs under now.
    pub fn settings(&self, playbook: &PlaybookId) -> LimitSettings {
        self.overrides.get(playbook).copied().unwrap_or(self.defaults)
    }

    /// Limits for one playbook instead of the defaults.
    pub fn set(&mut self, playbook: &PlaybookId, settings: LimitSettings) {
        self.overrides.insert(playbook.clone(), settings);
        self.payers.remove(playbook);
    }

    fn payer(&mut self, playbook: &PlaybookId) -> &mut PayerState {
        let settings = self.overrides.get(playbook).copied().unwrap_or(self.defaults);
        self.payers
            .entry(playbook.clone())
            .or_insert_with(|| PayerState::new(settings))
    }

    /// Whether a run could start now, without taking anything.
    pub fn check(&mut self, payer: &PlaybookId, now: DateTime<Utc>) -> Result<(), Blocked> {
        let p = self.payer(payer);
        p.breaker.check(now)?;
        if p.running >= p.settings.max_concurrent {
            return Err(Blocked::AtCapacity {
                running: p.running,
                cap: p.settings.max_concurrent,
            });
        }
        p.rate.check(now).map_err(|retry_in| Blocked::RateLimited { retry_in })
    }

    /// Admits a run: a concurrency slot, a rate token, and (half-open) the
    /// breaker's trial.
    pub fn try_start(&mut self, payer: &PlaybookId, now: DateTime<Utc>) -> Result<Started, Blocked> {
        self.check(payer, now)?;
        let p = self.payer(payer);
        p.breaker.start(now)?;
        p.rate
            .try_acquire(now)
            .map_err(|retry_in| Blocked::RateLimited { retry_in })?;
        p.running += 1;
        Ok(Started {
            playbook: payer.clone(),
        })
    }

    /// Gives back a run that was admitted but did not start after all (the
    /// cluster had no session slot free): its slot, and a half-open trial
    /// back to the next run. The breaker hears nothing.
    pub fn cancel(&mut self, started: Started, now: DateTime<Utc>) {
        let p = self.payer(&started.playbook);
        p.running = p.running.saturating_sub(1);
        if let BreakerState::HalfOpen { .. } = p.breaker.state(now) {
            p.breaker.state = BreakerState::HalfOpen { trial_running: false };
        }
    }

    /// One more session for a job already admitted by `try_start` (the
    /// per-case poll runs its cases over the payer's `max_sessions`): a
    /// concurrency slot only — no rate token, no breaker trial — and only
    /// while the breaker is closed. Given back with `narrow`.
    pub fn try_widen(&mut self, payer: &PlaybookId, now: DateTime<Utc>) -> Option<Widened> {
        let p = self.payer(payer);
        if !matches!(p.breaker.state(now), BreakerState::Closed { .. }) || p.running >= p.settings.max_concurrent {
            return None;
        }
        p.running += 1;
        Some(Widened {
            playbook: payer.clone(),
        })
    }

    /// Gives back a session `try_widen` added (the breaker hears nothing:
    /// the job's own `finish` speaks for its runs).
    pub fn narrow(&mut self, widened: Widened) {
        let p = self.payer(&widened.playbook);
        p.running = p.running.saturating_sub(1);
    }

    /// Releases the run's slot and tells the breaker how it went.
    pub fn finish(&mut self, started: Started, end: &RunEnd, now: DateTime<Utc>) -> Option<Alert> {
        let payer = started.playbook;
        let p = self.payer(&payer);
        p.running = p.running.saturating_sub(1);
        match end {
            RunEnd::Success => p.breaker.record_success(&payer, now),
            RunEnd::PortalFailure(error) => p.breaker.record_failure(&payer, error, now),
            RunEnd::OtherFailure => {
                // Says nothing about the portal; a half-open trial that
                // ended so is no verdict, so the next run is the trial.
                if let BreakerState::HalfOpen { .. } = p.breaker.state(now) {
                    p.breaker.state = BreakerState::HalfOpen { trial_running: false };
                }
                None
            }
        }
    }

    /// Playbooks among `playbooks` that cannot start a run now (the daemon
    /// turns them into the queue's `skip` through each practice's
    /// bindings).
    pub fn blocked<'a>(
        &mut self,
        playbooks: impl IntoIterator<Item = &'a PlaybookId>,
        now: DateTime<Utc>,
    ) -> Vec<PlaybookId> {
        playbooks
            .into_iter()
            .filter(|p| self.check(p, now).is_err())
            .cloned()
            .collect()
    }

    pub fn running(&self, playbook: &PlaybookId) -> u32 {
        self.payers.get(playbook).map_or(0, |p| p.running)
    }

    pub fn breaker_state(&mut self, payer: &PlaybookId, now: DateTime<Utc>) -> BreakerState {
        self.payer(payer).breaker.state(now)
    }
}
