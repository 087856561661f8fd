//! What the daemon's loops report about themselves, for `/healthz`,
//! `/readyz` and `/metrics`: when the scheduler last ticked, what each
//! worker is doing, whether a browser could be started, and when each
//! practice's job last succeeded.
//!
//! The loops report; nothing here polls them. A part that never reported
//! (a daemon without workers yet) is shown as such and does not fail a
//! check: only a report that went stale does.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ids::PayerKey;

/// (practice, job kind, payer key for per-payer jobs).
pub type SuccessKey = (String, String, Option<PayerKey>);

/// The scheduler ticks at least every second; this much silence means its
/// loop is stuck (a tick blocked on the ledger, a deadlock).
pub const SCHEDULER_STALL: Duration = Duration::from_secs(30);
/// An idle worker looks for work at least every second.
pub const WORKER_STALL: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq)]
pub enum WorkerState {
    /// Looking for work; the last time it looked.
    Idle { at: Instant },
    /// Running a job since `since`.
    Busy { since: Instant, job: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct BrowserReport {
    pub at: Instant,
    /// `Err` holds why the browser could not be started.
    pub result: Result<(), String>,
}

#[derive(Debug)]
pub struct Health {
    started: Instant,
    scheduler: Mutex<Option<Instant>>,
    workers: Mutex<BTreeMap<u32, WorkerState>>,
    browser: Mutex<Option<BrowserReport>>,
    /// (practice, job kind, payer or "") → when it last succeeded.
    last_success: Mutex<BTreeMap<SuccessKey, DateTime<Utc>>>,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            started: Instant::now(),
            scheduler: Mutex::default(),
            workers: Mutex::default(),
            browser: Mutex::default(),
            last_success: Mutex::default(),
        }
    }
}

/// One line of `/healthz` or `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Health {
    /// The scheduler loop turned (call once per tick).
    pub fn scheduler_ticked(&self) {
        *self.scheduler.lock().expect("health lock") = Some(Instant::now());
    }

    /// Worker `n` is looking for work (call each time round its loop).
    pub fn worker_idle(&self, n: u32) {
        self.workers
            .lock()
            .expect("health lock")
            .insert(n, WorkerState::Idle { at: Instant::now() });
    }

    /// Worker `n` leased a job and runs it.
    pub fn worker_busy(&self, n: u32, job: &str) {
        self.workers.lock().expect("health lock").insert(
            n,
            WorkerState::Busy {
                since: Instant::now(),
                job: job.to_owned(),
            },
        );
    }

    /// Worker `n` stopped (shutdown, or fewer workers after a reload).
    pub fn worker_gone(&self, n: u32) {
        self.workers.lock().expect("health lock").remove(&n);
    }

    /// A browser start was tried: `Err` with why it failed.
    pub fn browser_started(&self, result: Result<(), String>) {
        *self.browser.lock().expect("health lock") = Some(BrowserReport {
            at: Instant::now(),
            result,
        });
    }

    /// A job finished well; `payer` is empty for practice-wide jobs.
    pub fn job_succeeded(&self, practice: &str, kind: &str, payer: Option<&PayerKey>, at: DateTime<Utc>) {
        let mut m = self.last_success.lock().expect("health lock");
        let e = m
            .entry((practice.to_owned(), kind.to_owned(), payer.cloned()))
            .or_insert(at);
        *e = (*e).max(at);
    }

    pub fn last_success(&self) -> BTreeMap<SuccessKey, DateTime<Utc>> {
        self.last_success.lock().expect("health lock").clone()
    }

    pub fn workers(&self) -> BTreeMap<u32, WorkerState> {
        self.workers.lock().expect("health lock").clone()
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Liveness: the scheduler and the workers turn. At `now`, so tests
    /// can ask about a later moment.
    pub fn liveness(&self, now: Instant) -> Vec<Check> {
        let scheduler = match *self.scheduler.lock().expect("health lock") {
            None => Check {
                name: "scheduler",
                ok: true,
                detail: "not reported yet".into(),
            },
            Some(at) => {
                let ago = now.saturating_duration_since(at);
                Check {
                    name: "scheduler",
                    ok: ago < SCHEDULER_STALL,
                    detail: format!("last tick {:.1} s ago", ago.as_secs_f64()),
                }
            }
        };
        let workers = self.workers();
        let stalled: Vec<String> = workers
            .iter()
            .filter_map(|(n, w)| match w {
                WorkerState::Idle { at } if now.saturating_duration_since(*at) >= WORKER_STALL => Some(format!(
                    "worker {n} silent for {:.0} s",
                    now.saturating_duration_since(*at).as_secs_f64()
                )),
                _ => None,
            })
            .collect();
        let busy = workers
            .values()
            .filter(|w| matches!(w, WorkerState::Busy { .. }))
            .count();
        let workers = Check {
            name: "workers",
            ok: stalled.is_empty(),
            detail: if stalled.is_empty() {
                format!("{} running, {busy} busy", workers.len())
            } else {
                stalled.join(", ")
            },
        };
        vec![scheduler, workers]
    }

    /// Whether the last browser start worked (for readiness, when a web
    /// payer is enabled).
    pub fn browser(&self, now: Instant) -> Check {
        match &*self.browser.lock().expect("health lock") {
            None => Check {
                name: "browser",
                ok: true,
                detail: "not started yet".into(),
            },
            Some(BrowserReport { at, result }) => {
                let ago = now.saturating_duration_since(*at).as_secs_f64();
                match result {
                    Ok(()) => Check {
                        name: "browser",
                        ok: true,
                        detail: format!("started {ago:.0} s ago"),
                    },
                    Err(why) => Check {
                        name: "browser",
                        ok: false,
                        detail: format!("could not start {ago:.0} s ago: {why}"),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduler_that_stops_ticking_fails_liveness() {
        let h = Health::default();
        let t0 = Instant::now();
        assert!(h.liveness(t0).iter().all(|c| c.ok), "nothing reported is not a failure");
        h.scheduler_ticked();
        h.worker_idle(0);
        assert!(h.liveness(Instant::now()).iter().all(|c| c.ok));
        let later = Instant::now() + SCHEDULER_STALL;
        let checks = h.liveness(later);
        let scheduler = checks.iter().find(|c| c.name == "scheduler").unwrap();
        assert!(!scheduler.ok, "{scheduler:?}");
        let workers = checks.iter().find(|c| c.name == "workers").unwrap();
        assert!(!workers.ok && workers.detail.contains("worker 0 silent"), "{workers:?}");
    }

    #[test]
    fn a_busy_worker_is_alive_however_long_its_job_runs() {
        let h = Health::default();
        h.worker_busy(1, "submit#7");
        let much_later = Instant::now() + Duration::from_secs(3600);
        let workers = h
            .liveness(much_later)
            .into_iter()
            .find(|c| c.name == "workers")
            .unwrap();
        assert!(workers.ok && workers.detail == "1 running, 1 busy", "{workers:?}");
    }

    #[test]
    fn a_browser_that_cannot_start_fails_until_one_starts() {
        let h = Health::default();
        assert!(h.browser(Instant::now()).ok);
        h.browser_started(Err("chromedriver exited".into()));
        let b = h.browser(Instant::now());
        assert!(!b.ok && b.detail.contains("chromedriver exited"), "{b:?}");
        h.browser_started(Ok(()));
        assert!(h.browser(Instant::now()).ok);
    }

    #[test]
    fn the_last_success_is_the_latest() {
        let h = Health::default();
        let t = Utc::now();
        let key = PayerKey::new("sandbox");
        h.job_succeeded("p", "poll", Some(&key), t);
        h.job_succeeded("p", "poll", Some(&key), t - chrono::Duration::hours(1));
        assert_eq!(h.last_success()[&("p".into(), "poll".into(), Some(key))], t);
    }
}
