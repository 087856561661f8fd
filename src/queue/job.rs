//! The queue's vocabulary: jobs, their states, leases, failures and what
//! became of them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::case::CaseStatus;
use crate::config::Job;
use crate::ids::PayerKey;

/// Attempts a job gets unless its creator says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Where a job stands. Stored by its `as_str()` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Waiting for a worker (and for its `run_at`).
    Queued,
    /// A worker holds it until the lease expires.
    Leased,
    Done,
    /// Out of attempts, or failed in a way retrying cannot fix.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [JobState::Queued, JobState::Leased, JobState::Done, JobState::Dead]
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| format!("unknown job state `{s}`"))
    }
}

/// A job to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub kind: Job,
    pub practice: String,
    /// `None` for practice-wide work (escalations, digest).
    pub payer: Option<PayerKey>,
    pub case_id: Option<i64>,
    pub run_at: DateTime<Utc>,
    pub max_attempts: u32,
}

impl NewJob {
    pub fn new(kind: Job, practice: &str, run_at: DateTime<Utc>) -> NewJob {
        NewJob {
            kind,
            practice: practice.to_owned(),
            payer: None,
            case_id: None,
            run_at,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    pub fn payer(mut self, payer: impl Into<PayerKey>) -> NewJob {
        self.payer = Some(payer.into());
        self
    }

    pub fn case(mut self, case_id: i64) -> NewJob {
        self.case_id = Some(case_id);
        self
    }

    pub fn max_attempts(mut self, n: u32) -> NewJob {
        self.max_attempts = n.max(1);
        self
    }
}

/// A worker's hold on a job. Present it to commit anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: i64,
    /// The fencing token of this lease.
    pub token: i64,
    pub owner: String,
    pub expires_at: DateTime<Utc>,
}

/// A job as a worker receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedJob {
    pub id: i64,
    pub kind: Job,
    pub practice: String,
    /// The practice's key for the payer; `None` for practice-wide work.
    pub payer: Option<PayerKey>,
    pub case_id: Option<i64>,
    /// This run's number, from 1.
    pub attempt: u32,
    pub max_attempts: u32,
    pub lease: Lease,
}

/// A job as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    pub id: i64,
    pub kind: Job,
    pub practice: String,
    /// The practice's key for the payer; `None` for practice-wide work.
    pub payer: Option<PayerKey>,
    pub case_id: Option<i64>,
    pub state: JobState,
    pub run_at: DateTime<Utc>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub lease_token: i64,
    pub last_error: Option<String>,
}

/// Why a run failed, and so what happens next. The reason goes into the
/// job row, the log and (when the job dies) the case's timeline, so it names
/// what went wrong, never patient data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Trying again may work (a 5xx, a timeout, a portal that did not load):
    /// the job runs again after backoff, while it has attempts left.
    Retry {
        reason: String,
        /// The payer asked for at least this wait (`Retry-After`).
        not_before: Option<Duration>,
    },
    /// Trying again would fail the same way (a 4xx, data the payer refuses):
    /// the job is dead at once.
    Fatal { reason: String },
}

impl Failure {
    pub fn retry(reason: impl Into<String>) -> Failure {
        Failure::Retry {
            reason: reason.into(),
            not_before: None,
        }
    }

    pub fn fatal(reason: impl Into<String>) -> Failure {
        Failure::Fatal { reason: reason.into() }
    }

    pub fn reason(&self) -> &str {
        match self {
            Failure::Retry { reason, .. } | Failure::Fatal { reason } => reason,
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Retry { .. })
    }
}

/// What became of the case of a job that died.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseEscalation {
    /// The case moved to `needs_attention`.
    Moved { case_id: i64, from: CaseStatus },
    /// It was already there; the reason went into its timeline as a note.
    AlreadyNeedsAttention { case_id: i64 },
    /// The status graph (or the database) refused; the reason says why.
    NotMoved { case_id: i64, reason: String },
}

/// What `fail` did with the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailOutcome {
    Retrying {
        attempt: u32,
        run_at: DateTime<Utc>,
    },
    Dead {
        attempts: u32,
        case: Option<CaseEscalation>,
    },
}

/// A job whose lease ran out, as `requeue_expired` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub job_id: i64,
    pub kind: Job,
    pub practice: String,
    pub outcome: ExpiredOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpiredOutcome {
    /// Queued again, to run at once.
    Requeued,
    /// That was its last attempt: dead, its case (if any) escalated.
    Dead { case: Option<CaseEscalation> },
}

/// Which jobs a worker will take now.
#[derive(Clone, Debug, Default)]
pub struct LeaseFilter {
    /// Payer bindings — a practice and its key — whose playbook is at its
    /// concurrency cap or rate limit, or has an open circuit breaker (see
    /// `crate::limits`); practice-wide jobs still run. A key is skipped only
    /// in its own practice: the same key may name another playbook
    /// elsewhere.
    pub skip: Vec<(String, crate::ids::PayerKey)>,
}
