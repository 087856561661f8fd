//! Turning schedules into queued jobs, once per slot.
//!
//! Every fire is a row in `cron_fires` keyed by practice, job and slot, and
//! the jobs it queues are inserted in the same transaction; so a slot fires
//! once whether the daemon restarts, two schedulers race, or a tick repeats.
//!
//! Decisions:
//! - **Missed slots run once.** After downtime, the latest slot owed runs
//!   and the earlier ones are folded into it (counted in the row and the
//!   log): a nightly poll missed three nights polls once, not three times.
//! - **A schedule seen for the first time does not fire.** Its first row is
//!   a `baseline` at that moment, and slots after it fire; otherwise a new
//!   install would run every job at once for slots it never owed. A slot
//!   missed across a restart still fires, because the baseline survives it.
//! - **No overlap.** When the previous cron run of the same job for the same
//!   practice and payer is still queued or leased, the slot is recorded and
//!   that payer is skipped, with a log line saying so.
//! - Jobs that work on a payer (`submit`, `poll`, `letters`) are queued once
//!   per payer of the practice, so per-payer limits apply to them;
//!   `escalations` and `digest` are practice-wide.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{insert_job, NewJob, Queue, QueueError};
use crate::config::{Job, Practice};
use crate::ids::PayerKey;
use crate::schedule::{practice_schedules, Schedule, ScheduleError};
use crate::store::{parse_time, ts};

/// What one schedule did at a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    /// First sight of the schedule: recorded, nothing queued.
    Baseline,
    /// The slot ran: jobs queued (by id) and payers skipped because their
    /// previous run was still queued or leased (`None` is practice-wide).
    Fired {
        enqueued: Vec<i64>,
        skipped: Vec<Option<String>>,
    },
    /// Someone else recorded this slot first (another scheduler); nothing
    /// was queued here.
    AlreadyFired,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FireReport {
    pub practice: String,
    pub job: Job,
    pub slot: DateTime<Utc>,
    /// Earlier slots folded into this one.
    pub missed: u32,
    pub outcome: FireOutcome,
}

struct Entry {
    practice: String,
    payers: Vec<String>,
    job: Job,
    schedule: Schedule,
}

/// Every enabled practice's schedules, firing into the queue.
pub struct Scheduler {
    queue: Queue,
    entries: Vec<Entry>,
}

/// Whether the job works on one payer at a time.
fn per_payer(job: Job) -> bool {
    matches!(job, Job::Submit | Job::Poll | Job::Letters)
}

impl Scheduler {
    /// Schedules of the enabled practices; a disabled practice runs no jobs.
    pub fn new(queue: Queue, practices: &[Practice]) -> Result<Scheduler, ScheduleError> {
        let mut entries = Vec::new();
        for p in practices.iter().filter(|p| p.enabled) {
            for js in practice_schedules(p)? {
                entries.push(Entry {
                    practice: p.id.clone(),
                    payers: p.payers.keys().cloned().collect(),
                    job: js.job,
                    schedule: js.schedule,
                });
            }
        }
        Ok(Scheduler { queue, entries })
    }

    /// The earliest slot of any schedule after `now`: when to tick next.
    pub fn next_wake(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.entries.iter().filter_map(|e| e.schedule.next_fire(now)).min()
    }

    /// Fires every slot owed at `now`. Reports only schedules that did
    /// something (or found their slot taken).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<FireReport>, QueueError> {
        let mut reports = Vec::new();
        for e in &self.entries {
            if let Some(r) = self.tick_one(e, now).await? {
                reports.push(r);
            }
        }
        Ok(reports)
    }

    async fn tick_one(&self, e: &Entry, now: DateTime<Utc>) -> Result<Option<FireReport>, QueueError> {
        let pool = self.queue.ledger().pool();
        let last: Option<String> =
            sqlx::query("SELECT MAX(scheduled_at) AS last FROM cron_fires WHERE practice_id = $1 AND job = $2")
                .bind(&e.practice)
                .bind(e.job.as_str())
                .fetch_one(pool)
                .await?
                .try_get("last")?;
        let Some(last) = last else {
            sqlx::query(
                "INSERT INTO cron_fires (practice_id, job, scheduled_at, fired_at, outcome) VALUES ($1, $2, $3, $3, 'baseline') \
                 ON CONFLICT (practice_id, job, scheduled_at) DO NOTHING",
            )
            .bind(&e.practice)
            .bind(e.job.as_str())
            .bind(ts(now))
            .execute(pool)
            .await?;
            tracing::debug!(practice = %e.practice, job = %e.job, "Schedule seen for the first time; slots from now on fire.");
            return Ok(Some(FireReport {
                practice: e.practice.clone(),
                job: e.job,
                slot: now,
                missed: 0,
                outcome: FireOutcome::Baseline,
            }));
        };
        let last = parse_time(&last).map_err(|err| QueueError::Corrupt {
            id: 0,
            reason: format!("cron_fires of {}/{}: {err}", e.practice, e.job),
        })?;
        let Some(due) = e.schedule.due(last, now) else {
            return Ok(None);
        };
        let report = |outcome| FireReport {
            practice: e.practice.clone(),
            job: e.job,
            slot: due.slot,
            missed: due.missed,
            outcome,
        };

        // The fire's row comes first: it is the transaction's first write,
        // so SQLite takes the write lock at once (no deferred upgrade to fail
        // later), and a racing scheduler's insert finds the key taken. On
        // PostgreSQL a racing daemon's insert of the same key waits for this
        // transaction and then does nothing (or, had this one rolled back,
        // fires the slot itself).
        let mut tx = pool.begin().await?;
        let recorded = sqlx::query(
            "INSERT INTO cron_fires (practice_id, job, scheduled_at, fired_at, outcome, missed) VALUES ($1, $2, $3, $4, 'fired', $5) \
             ON CONFLICT (practice_id, job, scheduled_at) DO NOTHING",
        )
        .bind(&e.practice)
        .bind(e.job.as_str())
        .bind(ts(due.slot))
        .bind(ts(now))
        .bind(i64::from(due.missed))
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Some(report(FireOutcome::AlreadyFired)));
        }
        if due.missed > 0 {
            tracing::info!(practice = %e.practice, job = %e.job, slot = %due.slot, missed = due.missed,
                "Slots missed while the daemon was down run once, as this one.");
        }
        let targets: Vec<Option<&str>> = if per_payer(e.job) {
            e.payers.iter().map(|p| Some(p.as_str())).collect()
        } else {
            vec![None]
        };
        let (mut enqueued, mut skipped) = (Vec::new(), Vec::new());
        for payer in targets {
            // Only the cron-level run counts (no case): per-case jobs a run
            // queued are its children, not a previous run.
            let active = match payer {
                Some(p) => sqlx::query(
                    "SELECT COUNT(*) AS n FROM jobs WHERE practice_id = $1 AND kind = $2 AND payer = $3 \
                     AND case_id IS NULL AND state IN ('queued', 'leased')",
                )
                .bind(&e.practice)
                .bind(e.job.as_str())
                .bind(p),
                None => sqlx::query(
                    "SELECT COUNT(*) AS n FROM jobs WHERE practice_id = $1 AND kind = $2 AND payer IS NULL \
                     AND case_id IS NULL AND state IN ('queued', 'leased')",
                )
                .bind(&e.practice)
                .bind(e.job.as_str()),
            }
            .fetch_one(&mut *tx)
            .await?
            .try_get::<i64, _>("n")?;
            if active > 0 {
                tracing::info!(practice = %e.practice, job = %e.job, payer, slot = %due.slot,
                    "Slot skipped: the previous run of this job is still queued or running.");
                skipped.push(payer.map(str::to_owned));
                continue;
            }
            let mut job = NewJob::new(e.job, &e.practice, now);
            job.payer = payer.map(PayerKey::from);
            let id = insert_job(&mut tx, &job, now).await?;
            tracing::info!(practice = %e.practice, job = %e.job, payer, slot = %due.slot, job_id = id,
                "Scheduled job queued.");
            enqueued.push(id);
        }
        sqlx::query(
            "UPDATE cron_fires SET enqueued = $4, skipped = $5 WHERE practice_id = $1 AND job = $2 AND scheduled_at = $3",
        )
        .bind(&e.practice)
        .bind(e.job.as_str())
        .bind(ts(due.slot))
        .bind(enqueued.len() as i64)
        .bind(skipped.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(report(FireOutcome::Fired { enqueued, skipped })))
    }
}
