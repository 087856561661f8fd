//! The daemon's durable job queue, kept in the ledger's database.
//!
//! A job is leased by one worker at a time. The lease expires unless the
//! worker renews it, so the work of a worker (or a whole daemon) that died is
//! re-queued by [`Queue::requeue_expired`] and resumes after a restart. Every
//! lease bumps the job's *fencing token*; a worker commits its result
//! (`complete`, `fail`, `renew`, `release`) only under the token of its own lease, so a
//! worker that stalled past its lease cannot overwrite the result of the one
//! that took over: it gets [`QueueError::LeaseLost`] and must drop its work.
//!
//! Failures say what should happen next ([`Failure`]): a retryable one runs
//! again after exponential backoff with jitter, a fatal one does not. A job
//! out of attempts is `dead`, and the case it was about (if any) goes to
//! `needs_attention` with the reason, for a person to pick up.
//!
//! Cron fires are recorded in `cron_fires` ([`cron`]), so a slot fires once
//! however often the daemon restarts.
//!
//! Time is always passed in (`now`), never read here, so tests run on an
//! injected clock; the case events it writes are stamped by the ledger's
//! own (injectable) clock.

mod backoff;
pub mod cron;
mod job;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::case::CaseStatus;
use crate::config::Job;
use crate::ids::PayerKey;
// Times are stored as the ledger stores them, so they compare as text.
use crate::store::{parse_time, ts, Actor, EventKind, Ledger, StoreError};

pub use backoff::{os_jitter, JitterSource, RetryPolicy};
pub use cron::{FireOutcome, FireReport, Scheduler};
pub use job::{
    CaseEscalation, Expired, ExpiredOutcome, FailOutcome, Failure, JobRecord, JobState, Lease, LeaseFilter, LeasedJob,
    NewJob, DEFAULT_MAX_ATTEMPTS,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    #[error(
        "job {job} is no longer held under lease token {token} (it expired and was re-queued or taken over); nothing was recorded"
    )]
    LeaseLost { job: i64, token: i64 },
    #[error("no job {0}")]
    NotFound(i64),
    #[error("the stored job {id} cannot be read: {reason}")]
    Corrupt { id: i64, reason: String },
    #[error("job queue: {0}")]
    Db(#[from] sqlx::Error),
}

impl QueueError {
    /// The worker's lease is gone: it must abandon the job without retrying.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, QueueError::LeaseLost { .. })
    }
}

/// The job queue over the ledger's database.
#[derive(Clone)]
pub struct Queue {
    ledger: Ledger,
    policy: RetryPolicy,
    jitter: JitterSource,
}

fn parse_ts(id: i64, s: &str) -> Result<DateTime<Utc>, QueueError> {
    parse_time(s).map_err(|reason| QueueError::Corrupt { id, reason })
}

pub(crate) fn parse_job(id: i64, s: &str) -> Result<Job, QueueError> {
    Job::ALL
        .into_iter()
        .find(|j| j.as_str() == s)
        .ok_or_else(|| QueueError::Corrupt {
            id,
            reason: format!("unknown job kind `{s}`"),
        })
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

const SELECT_JOB: &str = "SELECT id, kind, practice_id, payer, case_id, state, run_at, attempts, max_attempts, \
                          lease_owner, lease_expires_at, lease_token, last_error FROM jobs";

fn record_from_row(r: &AnyRow) -> Result<JobRecord, QueueError> {
    let id: i64 = r.try_get("id")?;
    Ok(JobRecord {
        id,
        kind: parse_job(id, &r.try_get::<String, _>("kind")?)?,
        practice: r.try_get("practice_id")?,
        payer: r.try_get::<Option<String>, _>("payer")?.map(PayerKey::from),
        case_id: r.try_get("case_id")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|reason| QueueError::Corrupt { id, reason })?,
        run_at: parse_ts(id, &r.try_get::<String, _>("run_at")?)?,
        attempts: r.try_get::<i64, _>("attempts")? as u32,
        max_attempts: r.try_get::<i64, _>("max_attempts")? as u32,
        lease_owner: r.try_get("lease_owner")?,
        lease_expires_at: r
            .try_get::<Option<String>, _>("lease_expires_at")?
            .map(|s| parse_ts(id, &s))
            .transpose()?,
        lease_token: r.try_get("lease_token")?,
        last_error: r.try_get("last_error")?,
    })
}

/// The lease's statement: `$1` the owner, `$2` the lease's end, `$3` now,
/// then `skipped` payer keys. One statement picks and leases the job due
/// first (`jobs_ready`).
pub(crate) fn lease_sql(backend: crate::store::Backend, skipped: usize) -> String {
    // `skipped` bindings, each a practice and its payer key ($4/$5, …).
    let mut payer_clause = String::new();
    if skipped > 0 {
        let pairs: Vec<String> = (0..skipped)
            .map(|i| format!("(practice_id = ${} AND payer = ${})", 2 * i + 4, 2 * i + 5))
            .collect();
        payer_clause = format!(" AND (payer IS NULL OR NOT ({}))", pairs.join(" OR "));
    }
    let skip = backend.skip_locked();
    format!(
        "UPDATE jobs SET state = 'leased', lease_owner = $1, lease_expires_at = $2, \
         lease_token = lease_token + 1, attempts = attempts + 1, updated_at = $3 \
         WHERE id = (SELECT id FROM jobs WHERE state = 'queued' AND run_at <= $3{payer_clause} \
                     ORDER BY run_at, id LIMIT 1{skip}) \
           AND state = 'queued' \
         RETURNING id, kind, practice_id, payer, case_id, attempts, max_attempts, lease_token"
    )
}

/// Inserts a job on any connection, so the scheduler can queue jobs in the
/// transaction that records the cron fire.
pub(crate) async fn insert_job(
    conn: &mut sqlx::AnyConnection,
    job: &NewJob,
    now: DateTime<Utc>,
) -> Result<i64, QueueError> {
    let row = sqlx::query(
        "INSERT INTO jobs (kind, practice_id, payer, case_id, state, run_at, attempts, max_attempts, lease_token, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, 0, $8, $8) RETURNING id",
    )
    .bind(job.kind.as_str())
    .bind(&job.practice)
    .bind(job.payer.as_deref())
    .bind(job.case_id)
    .bind(JobState::Queued.as_str())
    .bind(ts(job.run_at))
    .bind(i64::from(job.max_attempts.max(1)))
    .bind(ts(now))
    .fetch_one(conn)
    .await?;
    Ok(row.try_get("id")?)
}

impl Queue {
    pub fn new(ledger: Ledger) -> Queue {
        Queue {
            ledger,
            policy: RetryPolicy::default(),
            jitter: os_jitter(),
        }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Queue {
        self.policy = policy;
        self
    }

    /// Draws jitter from `jitter` instead of the OS (for tests).
    pub fn with_jitter(mut self, jitter: JitterSource) -> Queue {
        self.jitter = jitter;
        self
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn pool(&self) -> &AnyPool {
        self.ledger.pool()
    }

    pub async fn enqueue(&self, job: &NewJob, now: DateTime<Utc>) -> Result<i64, QueueError> {
        let mut conn = self.pool().acquire().await?;
        insert_job(&mut conn, job, now).await
    }

    /// Takes the oldest job that is due, for `ttl`. Atomic: one statement
    /// picks and claims it, so two workers (of one daemon or of several)
    /// never get the same job. SQLite runs one writer at a time; on
    /// PostgreSQL the pick takes `FOR UPDATE SKIP LOCKED`, so concurrent
    /// workers take different jobs without waiting on each other, and the
    /// outer `state = 'queued'` re-checks what was picked.
    pub async fn lease(
        &self,
        owner: &str,
        ttl: Duration,
        filter: &LeaseFilter,
        now: DateTime<Utc>,
    ) -> Result<Option<LeasedJob>, QueueError> {
        let expires_at = now + chrono_duration(ttl);
        let sql = lease_sql(self.ledger.backend(), filter.skip.len());
        let mut query = sqlx::query(&sql).bind(owner).bind(ts(expires_at)).bind(ts(now));
        for (practice, key) in &filter.skip {
            query = query.bind(practice).bind(key.as_str());
        }
        let Some(r) = query.fetch_optional(self.pool()).await? else {
            return Ok(None);
        };
        let id: i64 = r.try_get("id")?;
        let job = LeasedJob {
            id,
            kind: parse_job(id, &r.try_get::<String, _>("kind")?)?,
            practice: r.try_get("practice_id")?,
            payer: r.try_get::<Option<String>, _>("payer")?.map(PayerKey::from),
            case_id: r.try_get("case_id")?,
            attempt: r.try_get::<i64, _>("attempts")? as u32,
            max_attempts: r.try_get::<i64, _>("max_attempts")? as u32,
            lease: Lease {
                job_id: id,
                token: r.try_get("lease_token")?,
                owner: owner.to_owned(),
                expires_at,
            },
        };
        tracing::debug!(job_id = id, kind = %job.kind, practice = %job.practice, attempt = job.attempt, owner, "Job leased.");
        Ok(Some(job))
    }

    /// Extends a lease the worker still holds; the new lease replaces it.
    /// A lease past its expiry that nobody has re-queued yet is still held.
    pub async fn renew(&self, lease: &Lease, ttl: Duration, now: DateTime<Utc>) -> Result<Lease, QueueError> {
        let expires_at = now + chrono_duration(ttl);
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $3, updated_at = $4 WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(ts(expires_at))
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.lost(lease));
        }
        Ok(Lease {
            expires_at,
            ..lease.clone()
        })
    }

    /// Records success. A lease that expired but that nobody took over still
    /// commits: the work is done, and refusing it would only redo it (a
    /// second submission to a payer is worse than a late one).
    pub async fn complete(&self, lease: &Lease, now: DateTime<Utc>) -> Result<(), QueueError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, finished_at = $3, updated_at = $3 \
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.lost(lease));
        }
        Ok(())
    }

    /// Gives the job back unrun, its attempt not counted: for a worker that
    /// leased it but may not start it after all (the payer's limit was
    /// reached meanwhile), or that stops at a step boundary on shutdown.
    pub async fn release(&self, lease: &Lease, run_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), QueueError> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', run_at = $3, attempts = attempts - 1, lease_owner = NULL, \
             lease_expires_at = NULL, updated_at = $4 WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .bind(ts(run_at))
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.lost(lease));
        }
        tracing::debug!(job_id = lease.job_id, owner = %lease.owner, "Job released unrun.");
        Ok(())
    }

    /// Records a failed run: queued again after backoff when the failure is
    /// retryable and attempts remain, else dead (its case escalated).
    pub async fn fail(&self, lease: &Lease, failure: &Failure, now: DateTime<Utc>) -> Result<FailOutcome, QueueError> {
        let row = sqlx::query(
            "SELECT kind, case_id, attempts, max_attempts FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(lease.job_id)
        .bind(lease.token)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| self.lost(lease))?;
        let id = lease.job_id;
        let kind = parse_job(id, &row.try_get::<String, _>("kind")?)?;
        let case_id: Option<i64> = row.try_get("case_id")?;
        let attempts = row.try_get::<i64, _>("attempts")? as u32;
        let max_attempts = row.try_get::<i64, _>("max_attempts")? as u32;
        let reason = failure.reason();

        if let (Failure::Retry { not_before, .. }, true) = (failure, attempts < max_attempts) {
            let backoff = self.policy.delay(attempts, (self.jitter)());
            let wait = not_before.map_or(backoff, |n| n.max(backoff));
            let run_at = now + chrono_duration(wait);
            let done = sqlx::query(
                "UPDATE jobs SET state = 'queued', run_at = $3, last_error = $4, lease_owner = NULL, lease_expires_at = NULL, updated_at = $5 \
                 WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
            )
            .bind(id)
            .bind(lease.token)
            .bind(ts(run_at))
            .bind(reason)
            .bind(ts(now))
            .execute(self.pool())
            .await?;
            if done.rows_affected() != 1 {
                return Err(self.lost(lease));
            }
            tracing::info!(job_id = id, %kind, attempt = attempts, retry_at = %run_at, "Job failed; it will be retried.");
            return Ok(FailOutcome::Retrying {
                attempt: attempts,
                run_at,
            });
        }

        let done = sqlx::query(
            "UPDATE jobs SET state = 'dead', last_error = $3, lease_owner = NULL, lease_expires_at = NULL, finished_at = $4, updated_at = $4 \
             WHERE id = $1 AND lease_token = $2 AND state = 'leased'",
        )
        .bind(id)
        .bind(lease.token)
        .bind(reason)
        .bind(ts(now))
        .execute(self.pool())
        .await?;
        if done.rows_affected() != 1 {
            return Err(self.lost(lease));
        }
        let why = if failure.is_retryable() {
            format!("gave up after {attempts} attempts: {reason}")
        } else {
            format!("failed and cannot be retried: {reason}")
        };
        tracing::warn!(job_id = id, %kind, attempts, reason = %why, "Job is dead.");
        // Fenced first, escalated second: a worker that lost its lease must
        // not move a case. A crash between the two leaves a dead job whose
        // case was not moved; the dead job is still there to see.
        let case = match case_id {
            Some(case_id) => Some(self.escalate(id, kind, case_id, &why).await),
            None => None,
        };
        Ok(FailOutcome::Dead { attempts, case })
    }

    /// Re-queues every job whose lease ran out (its worker died or hung),
    /// at once; a job that has used all its attempts is dead instead, so a
    /// job that crashes the daemon every time cannot crash it forever.
    pub async fn requeue_expired(&self, now: DateTime<Utc>) -> Result<Vec<Expired>, QueueError> {
        let now_s = ts(now);
        let mut out = Vec::new();
        let dead = sqlx::query(
            "UPDATE jobs SET state = 'dead', last_error = 'the lease held by ' || lease_owner || ' expired on its last attempt', \
             lease_owner = NULL, lease_expires_at = NULL, finished_at = $1, updated_at = $1 \
             WHERE state = 'leased' AND lease_expires_at <= $1 AND attempts >= max_attempts \
             RETURNING id, kind, practice_id, case_id, attempts, last_error",
        )
        .bind(&now_s)
        .fetch_all(self.pool())
        .await?;
        for r in &dead {
            let id: i64 = r.try_get("id")?;
            let kind = parse_job(id, &r.try_get::<String, _>("kind")?)?;
            let why: String = r.try_get::<Option<String>, _>("last_error")?.unwrap_or_default();
            let attempts: i64 = r.try_get("attempts")?;
            tracing::warn!(job_id = id, %kind, attempts, reason = %why, "Job is dead.");
            let case = match r.try_get::<Option<i64>, _>("case_id")? {
                Some(case_id) => Some(
                    self.escalate(id, kind, case_id, &format!("gave up after {attempts} attempts: {why}"))
                        .await,
                ),
                None => None,
            };
            out.push(Expired {
                job_id: id,
                kind,
                practice: r.try_get("practice_id")?,
                outcome: ExpiredOutcome::Dead { case },
            });
        }
        let requeued = sqlx::query(
            "UPDATE jobs SET state = 'queued', run_at = $1, last_error = 'the lease held by ' || lease_owner || ' expired', \
             lease_owner = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE state = 'leased' AND lease_expires_at <= $1 \
             RETURNING id, kind, practice_id, last_error",
        )
        .bind(&now_s)
        .fetch_all(self.pool())
        .await?;
        for r in &requeued {
            let id: i64 = r.try_get("id")?;
            let kind = parse_job(id, &r.try_get::<String, _>("kind")?)?;
            let practice: String = r.try_get("practice_id")?;
            let why: String = r.try_get::<Option<String>, _>("last_error")?.unwrap_or_default();
            tracing::info!(job_id = id, %kind, %practice, reason = %why, "Job re-queued.");
            out.push(Expired {
                job_id: id,
                kind,
                practice,
                outcome: ExpiredOutcome::Requeued,
            });
        }
        Ok(out)
    }

    pub async fn get(&self, id: i64) -> Result<JobRecord, QueueError> {
        let row = sqlx::query(&format!("{SELECT_JOB} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?
            .ok_or(QueueError::NotFound(id))?;
        record_from_row(&row)
    }

    /// Every job of a practice (all practices with `None`), oldest first.
    pub async fn list(&self, practice: Option<&str>) -> Result<Vec<JobRecord>, QueueError> {
        let rows = match practice {
            Some(p) => {
                sqlx::query(&format!("{SELECT_JOB} WHERE practice_id = $1 ORDER BY id"))
                    .bind(p)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                sqlx::query(&format!("{SELECT_JOB} ORDER BY id"))
                    .fetch_all(self.pool())
                    .await?
            }
        };
        rows.iter().map(record_from_row).collect()
    }

    fn lost(&self, lease: &Lease) -> QueueError {
        tracing::warn!(job_id = lease.job_id, token = lease.token, owner = %lease.owner, "Lease lost; the result was not recorded.");
        QueueError::LeaseLost {
            job: lease.job_id,
            token: lease.token,
        }
    }

    /// Puts a dead job's case in front of a person.
    async fn escalate(&self, job_id: i64, kind: Job, case_id: i64, why: &str) -> CaseEscalation {
        let actor = Actor::job(kind.as_str(), job_id);
        let note = format!("job {kind}#{job_id} {why}");
        match self
            .ledger
            .transition(case_id, CaseStatus::NeedsAttention, &actor, Some(&note))
            .await
        {
            Ok(from) => {
                tracing::info!(case_id, job_id, %from, "Case needs attention: its job is dead.");
                CaseEscalation::Moved { case_id, from }
            }
            Err(StoreError::IllegalTransition {
                from: CaseStatus::NeedsAttention,
                ..
            }) => {
                let noted = self
                    .ledger
                    .append_event(case_id, EventKind::Note, &actor, &json!({ "note": note }))
                    .await;
                if let Err(e) = noted {
                    tracing::error!(case_id, job_id, error = %e, "Cannot note the dead job on its case.");
                }
                CaseEscalation::AlreadyNeedsAttention { case_id }
            }
            Err(e) => {
                tracing::error!(case_id, job_id, error = %e, "Cannot move the case of a dead job to needs_attention.");
                CaseEscalation::NotMoved {
                    case_id,
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// Queue figures for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Jobs waiting (`queued`) and running (`leased`).
    pub queued: i64,
    pub leased: i64,
    pub dead: i64,
    /// Seconds the oldest due, queued job has waited (0 when none).
    pub oldest_due_seconds: f64,
}

impl Queue {
    pub async fn stats(&self, now: DateTime<Utc>) -> Result<QueueStats, QueueError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'leased', 'dead') GROUP BY state",
        )
        .fetch_all(self.pool())
        .await?;
        let mut stats = QueueStats::default();
        for r in rows {
            let n: i64 = r.try_get("n")?;
            match r.try_get::<String, _>("state")?.as_str() {
                "queued" => stats.queued = n,
                "leased" => stats.leased = n,
                _ => stats.dead = n,
            }
        }
        let oldest: Option<String> =
            sqlx::query("SELECT MIN(run_at) AS oldest FROM jobs WHERE state = 'queued' AND run_at <= $1")
                .bind(ts(now))
                .fetch_one(self.pool())
                .await?
                .try_get("oldest")?;
        if let Some(t) = oldest.and_then(|s| parse_time(&s).ok()) {
            stats.oldest_due_seconds = (now - t).num_milliseconds().max(0) as f64 / 1000.0;
        }
        Ok(stats)
    }
}

impl Queue {
    /// Queues again at once the jobs leased by workers of this host whose
    /// process is gone (a daemon that crashed or was killed), instead of
    /// waiting for their leases to run out. `owner_prefix` is `HOST-`; the
    /// process id follows it in the owner name (`HOST-PID-wN`).
    pub async fn requeue_dead_local(&self, owner_prefix: &str, now: DateTime<Utc>) -> Result<u64, QueueError> {
        let rows =
            sqlx::query("SELECT DISTINCT lease_owner FROM jobs WHERE state = 'leased' AND lease_owner IS NOT NULL")
                .fetch_all(self.pool())
                .await?;
        let mut requeued = 0;
        for r in rows {
            let owner: String = r.try_get("lease_owner")?;
            let Some(pid) = owner
                .strip_prefix(owner_prefix)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let done = sqlx::query(
                "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, run_at = $1, updated_at = $1 \
                 WHERE state = 'leased' AND lease_owner = $2",
            )
            .bind(ts(now))
            .bind(&owner)
            .execute(self.pool())
            .await?;
            requeued += done.rows_affected();
        }
        Ok(requeued)
    }
}
