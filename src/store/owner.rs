//! Who owns a case while it is being submitted.
//!
//! A submission is a conversation with the payer that must happen once. Any
//! actor that submits — a daemon job, `precert run`, a person's action —
//! first takes the case's **submission lease**, atomically with
//! `ready → submitting`: holder, fencing token, since, until. While a live
//! lease is held, every other claimant is refused with who holds it and
//! since when. The token grows with every grant; a [`Ledger::fenced`]
//! handle writes to the case only while the token is still the case's, so a
//! result that arrives after someone else took over is recorded as an event
//! and changes nothing. The intent to send ([`Ledger::record_intent`]) is
//! fenced too: a holder that lost its lease never clicks.
//!
//! A lease ends when the case leaves `submitting` (any status change clears
//! it), when its holder releases it, or when it expires. A holder on this
//! host whose process is gone counts as expired at once. Taking over a
//! `submitting` case whose lease ended means "reconcile first": the new
//! holder learns it took over ([`SubmitLease::took_over`]) and looks for an
//! earlier request at the payer before anyone may submit again.
//!
//! Several daemons on one PostgreSQL database: every claim, renewal, intent
//! and fenced write reads the case row under a row lock inside its write
//! transaction (`SELECT … FOR NO KEY UPDATE`, in `current`), so claimants
//! are served one at a time and each sees the lease the previous one wrote;
//! SQLite gets the same from its one writer (`BEGIN IMMEDIATE`). A holder on
//! another host is never judged gone by its PID: only its lease's expiry
//! ends it.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::row::{Arg, ReadRow, Source};
use super::{current, illegal, insert_event, parse_ts, set_status, ts, Actor, EventKind, Ledger, StoreError, Tx};
use crate::case::CaseStatus;

/// How long a submission lease lasts without renewal. The engine renews it
/// every [`SUBMIT_LEASE_RENEW`] while its run goes on, so only a holder that
/// stopped (crashed, hung, lost its database) lets it run out.
pub const SUBMIT_LEASE: Duration = Duration::seconds(120);
/// How often a running submission renews its lease.
pub const SUBMIT_LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(30);

/// The right to submit one case, until its token is superseded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmitLease {
    pub case_id: i64,
    pub token: i64,
    /// `ACTOR (host HOST, pid PID)`.
    pub holder: String,
    /// The case was already `submitting` when this lease was granted (its
    /// earlier holder stopped, or nobody held it): the payer may already
    /// have a request, so the holder reconciles before it submits. Names the
    /// earlier holder when there was one.
    pub took_over: Option<String>,
}

/// The current holder of a case's submission lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub holder: String,
    pub token: i64,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// This process, as a lease holder.
struct ThisProcess {
    host: String,
    pid: i64,
    start: String,
}

fn this_process() -> ThisProcess {
    let pid = std::process::id();
    ThisProcess {
        host: hostname(),
        pid: i64::from(pid),
        start: process_start(pid).unwrap_or_default(),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), which tells a reused PID from the original.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether the holder recorded as (`host`, `pid`, `start`) is certainly gone:
/// it ran on this host and no process with that PID and start time exists.
fn holder_is_gone(host: Option<&str>, pid: Option<i64>, start: Option<&str>) -> bool {
    let (Some(host), Some(pid), Some(start)) = (host, pid, start) else {
        return false;
    };
    if host != hostname() || !std::path::Path::new("/proc/self/stat").exists() {
        return false;
    }
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    match process_start(pid) {
        None => true,
        Some(now) => !start.is_empty() && now != start,
    }
}

const CLEAR_OWNER: &str = "UPDATE cases SET owner = NULL, owner_host = NULL, owner_pid = NULL, owner_start = NULL, \
                           owner_since = NULL, owner_until = NULL WHERE id = $1 AND owner IS NOT NULL";

/// Ends the lease of a case that leaves `submitting` (called by every
/// status change, in its transaction). The token stays: it only grows.
pub(super) async fn clear_owner(tx: &mut Tx<'_>, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(CLEAR_OWNER).bind(id).execute(&mut **tx).await?;
    Ok(())
}

struct LeaseRow {
    owner: Option<String>,
    host: Option<String>,
    pid: Option<i64>,
    start: Option<String>,
    since: Option<String>,
    until: Option<String>,
    token: i64,
}

async fn lease_row<'e>(ex: impl sqlx::Executor<'e, Database = sqlx::Any>, id: i64) -> Result<LeaseRow, StoreError> {
    let r = sqlx::query(SELECT_LEASE)
        .bind(id)
        .fetch_optional(ex)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("case {id}")))?;
    LeaseRow::from_row(&r, id)
}

/// A case's lease columns.
pub(super) const SELECT_LEASE: &str =
    "SELECT owner, owner_host, owner_pid, owner_start, owner_since, owner_until, owner_token FROM cases WHERE id = $1";

impl LeaseRow {
    fn from_row(r: &(impl ReadRow + ?Sized), id: i64) -> Result<LeaseRow, StoreError> {
        Ok(LeaseRow {
            owner: r.text("owner")?,
            host: r.text("owner_host")?,
            pid: r.int("owner_pid")?,
            start: r.text("owner_start")?,
            since: r.text("owner_since")?,
            until: r.text("owner_until")?,
            token: r.req_int("owner_token", id)?,
        })
    }

    /// Who holds the lease, if anyone.
    fn owner(self, id: i64) -> Result<Option<Owner>, StoreError> {
        let (Some(holder), Some(since), Some(until)) = (self.owner, self.since, self.until) else {
            return Ok(None);
        };
        Ok(Some(Owner {
            holder,
            token: self.token,
            since: parse_ts(id, &since)?,
            until: parse_ts(id, &until)?,
        }))
    }
}

/// Who holds case `id`'s submission lease, read from `src`.
pub(super) async fn owner_from(src: &impl Source, id: i64) -> Result<Option<Owner>, StoreError> {
    src.rows(SELECT_LEASE, &[Arg::Int(id)], |r| LeaseRow::from_row(r, id))
        .await?
        .pop()
        .ok_or_else(|| StoreError::NotFound(format!("case {id}")))?
        .owner(id)
}

/// Refuses a fenced write whose token is no longer the case's.
pub(super) async fn check_fence(tx: &mut Tx<'_>, case: &str, id: i64, token: i64) -> Result<(), StoreError> {
    let row = lease_row(&mut **tx, id).await?;
    if row.token != token {
        return Err(StoreError::StaleLease {
            case: case.to_owned(),
            token,
            now: row.token,
            holder: row.owner,
        });
    }
    Ok(())
}

/// Refuses an unfenced write to a case whose submission lease another
/// holder has live: only the submission's owner changes a case that is
/// being submitted.
pub(super) async fn check_unowned(tx: &mut Tx<'_>, case: &str, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
    let row = lease_row(&mut **tx, id).await?;
    if live(&row, id, at) {
        return Err(StoreError::Owned {
            case: case.to_owned(),
            holder: row.owner.unwrap_or_default(),
            since: row.since.unwrap_or_default(),
            until: row.until.unwrap_or_default(),
        });
    }
    Ok(())
}

fn live(row: &LeaseRow, id: i64, at: DateTime<Utc>) -> bool {
    row.owner.is_some()
        && row
            .until
            .as_deref()
            .and_then(|u| parse_ts(id, u).ok())
            .is_some_and(|u| u > at)
        && !holder_is_gone(row.host.as_deref(), row.pid, row.start.as_deref())
}

impl Ledger {
    /// Takes the submission lease of a case: `ready → submitting` with the
    /// lease, or a `submitting` case whose lease ended (taken over: see
    /// [`SubmitLease::took_over`]). Refused with [`StoreError::Owned`] while
    /// another holder's lease is live, and with an illegal-transition error
    /// for a case in any other status.
    pub async fn claim_submission(&self, id: i64, actor: &Actor) -> Result<SubmitLease, StoreError> {
        let at = self.now();
        let now = ts(at);
        let me = this_process();
        let holder = format!("{} (host {}, pid {})", actor.as_str(), me.host, me.pid);
        let mut tx = self.begin_write().await?;
        let (case_key, status, version) = current(&mut tx, id).await?;
        let row = lease_row(&mut *tx, id).await?;
        let took_over = match status {
            CaseStatus::Ready => None,
            CaseStatus::Submitting => {
                if live(&row, id, at) {
                    return Err(StoreError::Owned {
                        case: case_key,
                        holder: row.owner.unwrap_or_default(),
                        since: row.since.unwrap_or_default(),
                        until: row.until.unwrap_or_default(),
                    });
                }
                Some(row.owner.clone().unwrap_or_else(|| "nobody (no lease was held)".into()))
            }
            other => return Err(illegal(&case_key, other, CaseStatus::Submitting)),
        };
        let token = row.token + 1;
        let until = ts(at + SUBMIT_LEASE);
        if status == CaseStatus::Ready {
            let detail = json!({ "note": "submission started", "owner": holder, "token": token });
            set_status(
                &mut tx,
                id,
                &case_key,
                status,
                version,
                CaseStatus::Submitting,
                &now,
                actor,
                &detail,
            )
            .await?;
        } else {
            let detail = json!({
                "lease": "taken over",
                "owner": holder,
                "token": token,
                "previous": took_over,
                "note": "the earlier submission stopped; the payer is asked before anything is sent again",
            });
            insert_event(&mut tx, id, &now, EventKind::Note, None, None, actor, &detail).await?;
        }
        sqlx::query(
            "UPDATE cases SET owner = $1, owner_host = $2, owner_pid = $3, owner_start = $4, owner_since = $5, \
             owner_until = $6, owner_token = $7 WHERE id = $8 AND owner_token = $9",
        )
        .bind(&holder)
        .bind(&me.host)
        .bind(me.pid)
        .bind(&me.start)
        .bind(&now)
        .bind(&until)
        .bind(token)
        .bind(id)
        .bind(row.token)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::debug!(case_id = id, token, "Submission lease taken.");
        Ok(SubmitLease {
            case_id: id,
            token,
            holder,
            took_over,
        })
    }

    /// Extends a live lease. [`StoreError::StaleLease`] once someone else
    /// holds the case (or it moved on and was claimed again).
    pub async fn renew_submission(&self, lease: &SubmitLease) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.begin_write().await?;
        let (case_key, _, _) = current(&mut tx, lease.case_id).await?;
        check_fence(&mut tx, &case_key, lease.case_id, lease.token).await?;
        sqlx::query("UPDATE cases SET owner_until = $1 WHERE id = $2 AND owner_token = $3 AND owner IS NOT NULL")
            .bind(ts(at + SUBMIT_LEASE))
            .bind(lease.case_id)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives a lease back, leaving the case where it is (a `submitting`
    /// case then waits for the next claimant, who reconciles first). A lease
    /// already superseded is left alone.
    pub async fn release_submission(&self, lease: &SubmitLease) -> Result<(), StoreError> {
        sqlx::query(&format!("{CLEAR_OWNER} AND owner_token = $2"))
            .bind(lease.case_id)
            .bind(lease.token)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records, fenced by the lease, that the request is about to be sent:
    /// the event a restart looks for before it may submit again. Refused
    /// (and nothing may be sent) when the lease was lost or the case is no
    /// longer `submitting`.
    pub async fn record_intent(
        &self,
        lease: &SubmitLease,
        actor: &Actor,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let now = ts(at);
        let mut tx = self.begin_write().await?;
        let (case_key, status, _) = current(&mut tx, lease.case_id).await?;
        check_fence(&mut tx, &case_key, lease.case_id, lease.token).await?;
        if status != CaseStatus::Submitting {
            return Err(StoreError::StaleLease {
                case: case_key,
                token: lease.token,
                now: lease.token,
                holder: None,
            });
        }
        let mut detail = detail.clone();
        if let Some(m) = detail.as_object_mut() {
            m.insert("intent".into(), json!("commit"));
            m.insert("token".into(), json!(lease.token));
        }
        insert_event(&mut tx, lease.case_id, &now, EventKind::Run, None, None, actor, &detail).await?;
        sqlx::query("UPDATE cases SET owner_until = $1 WHERE id = $2 AND owner_token = $3 AND owner IS NOT NULL")
            .bind(ts(at + SUBMIT_LEASE))
            .bind(lease.case_id)
            .bind(lease.token)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who holds the case's submission lease now, if anyone.
    pub async fn submission_owner(&self, id: i64) -> Result<Option<Owner>, StoreError> {
        // One statement: no transaction around it.
        owner_from(&self.pool, id).await
    }

    /// A handle whose writes to the lease's case hold only while the lease's
    /// token is still the case's: status changes, decisions and the payer
    /// reference from a superseded run fail with [`StoreError::StaleLease`]
    /// and change nothing. Writes to other cases are not affected.
    pub fn fenced(&self, lease: &SubmitLease) -> Ledger {
        let mut l = self.clone();
        l.fence = Some((lease.case_id, lease.token));
        l
    }
}
