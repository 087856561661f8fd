//! The worker contract: what one run means for the job that asked for it.
//!
//! The engine decides what happened (a `RunReport`, or an `EngineError`
//! when the run could not start); this module turns that into one
//! [`Disposition`], and the daemon's worker (`daemon/worker.rs`) folds a
//! job's dispositions into exactly one queue call and one
//! `PayerLimits::finish`. Nobody else matches on failure kinds or error
//! strings to decide retry, release or dead.

use std::time::Duration;

use super::{EngineError, FailureKind, RunReport};
use crate::pas::ClientError;
use crate::store::StoreError;

/// What the queue should do about a run.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disposition {
    /// The run did its work, or the case went to a person
    /// (`needs_attention`), or the case was not this run's to do (another
    /// submitter holds it, it moved on meanwhile).
    Done,
    /// The run was cut short by shutdown: give the job back unrun, with no
    /// attempt used.
    Release,
    /// Try again later, after at least `not_before` (a payer's
    /// `Retry-After`). `portal_fault` counts for the payer's circuit
    /// breaker: the portal or API failed, or precert could not reach it
    /// (no browser, no driver).
    Retry {
        reason: String,
        not_before: Option<Duration>,
        portal_fault: bool,
    },
    /// Trying again cannot help until someone changes the configuration.
    Dead { reason: String },
}

impl Disposition {
    /// How strongly a disposition decides a job made of several runs:
    /// a shutdown releases the whole job; a dead configuration ends it;
    /// any retryable run retries it.
    fn weight(&self) -> u8 {
        match self {
            Disposition::Done => 0,
            Disposition::Retry { .. } => 1,
            Disposition::Dead { .. } => 2,
            Disposition::Release => 3,
        }
    }

    /// The disposition of a job whose runs were `self` and then `other`.
    pub fn and(self, other: Disposition) -> Disposition {
        match (self, other) {
            (
                Disposition::Retry {
                    reason,
                    not_before: a,
                    portal_fault: fa,
                },
                Disposition::Retry {
                    not_before: b,
                    portal_fault: fb,
                    ..
                },
            ) => Disposition::Retry {
                reason,
                not_before: a.max(b),
                portal_fault: fa || fb,
            },
            (a, b) if b.weight() > a.weight() => b,
            (a, _) => a,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Disposition::Done => "done",
            Disposition::Release => "released",
            Disposition::Retry { .. } => "retry",
            Disposition::Dead { .. } => "dead",
        }
    }
}

impl From<&RunReport> for Disposition {
    fn from(r: &RunReport) -> Disposition {
        let Some(f) = &r.failure else {
            return Disposition::Done;
        };
        let reason = format!("case {}: {f}", r.case_id);
        match f.kind {
            FailureKind::Retryable | FailureKind::SessionLost => Disposition::Retry {
                reason,
                not_before: r.not_before,
                portal_fault: true,
            },
            // The case is with a person now; the job's work is done. The
            // breaker hears of a portal that changed through the report.
            FailureKind::NeedsHuman | FailureKind::PortalChanged => Disposition::Done,
            // A superseded submission: the case is another run's.
            FailureKind::Fatal if f.keyword == "lease" => Disposition::Done,
            // The browser died under the run, a template failed: try again
            // later (bounded by the job's attempts), not the portal's fault.
            FailureKind::Fatal => Disposition::Retry {
                reason,
                not_before: None,
                portal_fault: false,
            },
        }
    }
}

impl From<&EngineError> for Disposition {
    fn from(e: &EngineError) -> Disposition {
        match e {
            // No chromedriver, a version mismatch, a browser that will not
            // start: automation cannot reach the payer. Visible, counted by
            // the breaker (which then raises the operations escalation).
            EngineError::Browser(_) => Disposition::Retry {
                reason: e.to_string(),
                not_before: None,
                portal_fault: true,
            },
            EngineError::Store(StoreError::Owned { .. } | StoreError::StaleLease { .. }) => Disposition::Done,
            // The database is busy or gone: try again, not the payer's fault.
            EngineError::Store(_) => Disposition::Retry {
                reason: e.to_string(),
                not_before: None,
                portal_fault: false,
            },
            // The case is no longer one this action applies to.
            EngineError::NotApplicable(_) => Disposition::Done,
            // A binding, playbook or file that does not work: retrying
            // cannot help until the configuration changes.
            EngineError::Setup(_) => Disposition::Dead { reason: e.to_string() },
        }
    }
}

impl From<&ClientError> for Disposition {
    fn from(e: &ClientError) -> Disposition {
        match e {
            ClientError::Throttled { retry_after } => Disposition::Retry {
                reason: e.to_string(),
                not_before: Some(*retry_after),
                portal_fault: false,
            },
            ClientError::Server { .. } | ClientError::Transport { .. } => Disposition::Retry {
                reason: e.to_string(),
                not_before: None,
                portal_fault: true,
            },
            _ => Disposition::Done,
        }
    }
}

impl From<&crate::crd::CrdError> for Disposition {
    fn from(e: &crate::crd::CrdError) -> Disposition {
        use crate::crd::CrdError;
        match e {
            // A binding or playbook that cannot reach a CRD service.
            CrdError::Client(ClientError::Config(_)) => Disposition::Dead { reason: e.to_string() },
            // Throttled, down, unreachable: asked again later, and the
            // breaker hears of it; a refusal was noted on the case.
            CrdError::Client(c) => Disposition::from(c),
            CrdError::Store(StoreError::Owned { .. } | StoreError::StaleLease { .. }) => Disposition::Done,
            CrdError::Store(_) => Disposition::Retry {
                reason: e.to_string(),
                not_before: None,
                portal_fault: false,
            },
            // Decided meanwhile: nothing to ask.
            CrdError::NotNew { .. } => Disposition::Done,
            // The data directory refused the evidence: nothing was recorded.
            CrdError::Evidence { .. } => Disposition::Retry {
                reason: e.to_string(),
                not_before: None,
                portal_fault: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(s: u64, fault: bool) -> Disposition {
        Disposition::Retry {
            reason: "r".into(),
            not_before: Some(Duration::from_secs(s)),
            portal_fault: fault,
        }
    }

    #[test]
    fn a_job_is_decided_by_its_strongest_run() {
        assert_eq!(Disposition::Done.and(Disposition::Done), Disposition::Done);
        assert_eq!(Disposition::Done.and(retry(5, false)), retry(5, false));
        assert_eq!(retry(5, false).and(retry(120, true)), retry(120, true));
        let dead = Disposition::Dead { reason: "d".into() };
        assert_eq!(retry(5, true).and(dead.clone()), dead);
        assert_eq!(dead.clone().and(Disposition::Release), Disposition::Release);
        assert_eq!(Disposition::Release.and(Disposition::Done), Disposition::Release);
    }

    #[test]
    fn a_throttle_carries_its_wait() {
        let e = ClientError::Throttled {
            retry_after: Duration::from_secs(120),
        };
        assert_eq!(
            Disposition::from(&e),
            Disposition::Retry {
                reason: e.to_string(),
                not_before: Some(Duration::from_secs(120)),
                portal_fault: false
            }
        );
    }
}
