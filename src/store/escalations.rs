//! Escalations and the mail outbox, in the ledger's database.
//!
//! Invariants:
//! - an escalation and its first mail (an `outbox` row) commit together, in
//!   the transaction of the change that caused them (a status change, or
//!   the escalation rules' scan);
//! - at most one escalation per dedupe key is open or acknowledged (a
//!   partial unique index), and one resolved within its repeat window keeps
//!   a new one from opening;
//! - a mail's Message-ID is fixed when it is queued, so a resend after a
//!   crash carries the same one.
//!
//! With several daemons on one PostgreSQL database: two of them opening the
//! same escalation meet at the partial unique index (`ON CONFLICT ... DO
//! NOTHING`: one opens it, with its mail); an escalation's next step is taken
//! under its row lock, by whoever gets it first; senders claim mail with
//! `FOR UPDATE SKIP LOCKED` in one statement, each mail by one sender.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::row::{Arg, ReadRow, Source as _};
use super::{insert_event, parse_ts, ts, Actor, Backend, EventKind, Ledger, StoreError, Tx};
use crate::case::{CaseRecord, CaseStatus};
use crate::escalate::{Audience, Reason};
use crate::mail::OutgoingMail;

/// An escalation a rule asks for.
#[derive(Clone, Debug)]
pub struct NewEscalation {
    pub practice_id: String,
    pub case_id: Option<i64>,
    pub payer: Option<String>,
    pub reason: Reason,
    pub audience: Audience,
    pub severity: i64,
    pub due_at: Option<DateTime<Utc>>,
    /// One line without PHI.
    pub summary: String,
    pub detail: Value,
    /// The first reminder (None: no reminders).
    pub next_action_at: Option<DateTime<Utc>>,
    /// A resolved escalation with the same key this recent blocks a new one.
    pub repeat_window: Duration,
}

impl NewEscalation {
    pub fn dedupe_key(&self) -> String {
        match self.case_id {
            Some(id) => format!("case:{id}:{}", self.reason.as_str()),
            None => format!(
                "payer:{}:{}:{}",
                self.practice_id,
                self.payer.as_deref().unwrap_or("-"),
                self.reason.as_str()
            ),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EscalationState {
    Open,
    Acknowledged,
    Resolved,
}

impl EscalationState {
    pub fn as_str(self) -> &'static str {
        match self {
            EscalationState::Open => "open",
            EscalationState::Acknowledged => "acknowledged",
            EscalationState::Resolved => "resolved",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => EscalationState::Open,
            "acknowledged" => EscalationState::Acknowledged,
            "resolved" => EscalationState::Resolved,
            _ => return None,
        })
    }
}

/// An escalation as stored.
#[derive(Clone, Debug)]
pub struct Escalation {
    pub id: i64,
    pub practice_id: String,
    pub case_id: Option<i64>,
    pub payer: Option<String>,
    pub reason: Reason,
    pub audience: Audience,
    pub level: u32,
    pub state: EscalationState,
    pub severity: i64,
    pub due_at: Option<DateTime<Utc>>,
    pub summary: String,
    pub detail: Value,
    pub opened_at: DateTime<Utc>,
    pub sends: u32,
    pub reminders: u32,
    pub last_sent_at: Option<DateTime<Utc>>,
    pub next_action_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub note: Option<String>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// Which mail of an escalation is being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The first mail, at level 0.
    First,
    /// A reminder (1, 2, …) at the escalation's current level.
    Reminder(u32),
    /// Nobody acknowledged: the escalation moved up to `level`.
    NextLevel(u32),
}

impl Step {
    pub fn kind(self) -> &'static str {
        match self {
            Step::First => "escalation",
            Step::Reminder(_) => "reminder",
            Step::NextLevel(_) => "next_level",
        }
    }
}

/// What the ledger asks of the escalation rules inside its transactions.
pub trait EscalationHook: Send + Sync {
    /// Escalations a case's new status calls for at once (a denial, a pend,
    /// a case automation gave up on).
    fn on_status(
        &self,
        case: &CaseRecord,
        submitted_at: Option<DateTime<Utc>>,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Vec<NewEscalation>;
    /// The mail for one step of an escalation; None when nobody is to get it.
    fn render(
        &self,
        esc: &Escalation,
        case: Option<&CaseRecord>,
        step: Step,
        now: DateTime<Utc>,
    ) -> Option<OutgoingMail>;
    /// Mail was queued and committed: wake the sender.
    fn mail_queued(&self);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Sending,
    Sent,
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sending => "sending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OutboxState::Pending,
            "sending" => OutboxState::Sending,
            "sent" => OutboxState::Sent,
            "failed" => OutboxState::Failed,
            _ => return None,
        })
    }
}

/// A mail in the outbox.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub id: i64,
    pub message_id: String,
    pub practice_id: String,
    pub escalation_id: Option<i64>,
    pub kind: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// A mail claimed for sending.
#[derive(Clone, Debug)]
pub struct ClaimedMail {
    pub id: i64,
    pub escalation_id: Option<i64>,
    pub case_id: Option<i64>,
    pub attempts: u32,
    pub mail: OutgoingMail,
}

/// How a send attempt ended.
#[derive(Clone, Debug)]
pub enum SendOutcome {
    Sent,
    /// Try again at this time.
    Retry {
        at: DateTime<Utc>,
        error: String,
    },
    /// The server refused it for good (a 5xx): a person must look.
    Failed {
        error: String,
    },
}

/// What an active case looks like to the time-based rules.
#[derive(Clone, Debug)]
pub struct CaseForRules {
    pub case: CaseRecord,
    pub submitted_at: Option<DateTime<Utc>>,
    pub has_letter: bool,
    /// The case's version when read: a later change wins over the scan's
    /// next check.
    pub version: i64,
    /// Where the scan's next page starts.
    pub cursor: RulesCursor,
}

/// A position in the scan's order, `(next_check_at, id)`; the default is
/// before every case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RulesCursor {
    at: String,
    id: i64,
}

/// When the rules must look at a case again.
#[derive(Clone, Copy, Debug)]
pub struct NextCheck {
    pub case_id: i64,
    /// The version the scan read.
    pub version: i64,
    /// None: not until the case changes.
    pub at: Option<DateTime<Utc>>,
}

/// The cases due for the rules: a range of the `cases_next_check` index,
/// `(next_check_at, id) > ($2, $4)` written as a range and a filter so that
/// both databases read it from the index.
pub(crate) const DUE_FOR_RULES: &str =
    "SELECT c.id, c.status, c.data, c.decision, c.payer_ref, c.created_at, c.updated_at, \
     c.submitted_at, c.version, c.next_check_at, \
     CASE WHEN EXISTS (SELECT 1 FROM letters l WHERE l.case_id = c.id) THEN 1 ELSE 0 END AS has_letter \
     FROM cases c WHERE c.practice_id = $1 AND c.next_check_at >= $2 AND c.next_check_at <= $3 \
     AND (c.next_check_at > $2 OR c.id > $4) ORDER BY c.next_check_at, c.id LIMIT $5";

const SELECT_ESCALATION: &str = "SELECT id, practice_id, case_id, payer, reason, audience, level, state, severity, \
     due_at, summary, detail, opened_at, sends, reminders, last_sent_at, next_action_at, acknowledged_at, \
     acknowledged_by, note, closed_at FROM escalations";

pub(crate) const SELECT_CASE_ESCALATIONS: &str = "SELECT id, practice_id, case_id, payer, reason, audience, level, \
     state, severity, due_at, summary, detail, opened_at, sends, reminders, last_sent_at, next_action_at, \
     acknowledged_at, acknowledged_by, note, closed_at FROM escalations WHERE case_id = $1 ORDER BY id DESC";

/// Due escalations the reminders read at a time.
const ADVANCE_PAGE: usize = 500;

const SELECT_OUTBOX: &str = "SELECT id, message_id, practice_id, escalation_id, kind, recipients, subject, state, \
     attempts, next_attempt_at, last_error, created_at, sent_at FROM outbox";

/// The sender's two claims (`$1` now, `$2` the claim's end): mail due
/// first, then a claim that ran out — two indexed lookups rather than one
/// OR (which SQLite answers by sorting every due row).
pub(crate) fn claim_mail_sql(skip: &str) -> [String; 2] {
    [
        ("state = 'pending' AND next_attempt_at <= $1", "next_attempt_at, id"),
        ("state = 'sending' AND lease_until <= $1", "lease_until, id"),
    ]
    .map(|(due, order)| {
        format!(
            "UPDATE outbox SET state = 'sending', lease_until = $2, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM outbox WHERE {due} ORDER BY {order} LIMIT 1{skip}) AND {due} \
             RETURNING id, escalation_id, attempts, mail, \
             (SELECT e.case_id FROM escalations e WHERE e.id = outbox.escalation_id) AS case_id"
        )
    })
}

fn opt_ts(row: &AnyRow, col: &str, id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| parse_ts(id, &s))
        .transpose()
}

fn corrupt(id: i64, reason: String) -> StoreError {
    StoreError::Corrupt { id, reason }
}

pub(super) fn escalation_from_row(row: &(impl ReadRow + ?Sized)) -> Result<Escalation, StoreError> {
    let id = row.req_int("id", 0)?;
    let reason = row.req_text("reason", id)?;
    let audience = row.req_text("audience", id)?;
    let state = row.req_text("state", id)?;
    let detail = row.req_text("detail", id)?;
    Ok(Escalation {
        id,
        practice_id: row.req_text("practice_id", id)?,
        case_id: row.int("case_id")?,
        payer: row.text("payer")?,
        reason: reason
            .parse()
            .map_err(|_| corrupt(id, format!("escalation reason `{reason}`")))?,
        audience: audience
            .parse()
            .map_err(|_| corrupt(id, format!("escalation audience `{audience}`")))?,
        level: row.req_int("level", id)? as u32,
        state: EscalationState::parse(&state).ok_or_else(|| corrupt(id, format!("escalation state `{state}`")))?,
        severity: row.req_int("severity", id)?,
        due_at: row.time("due_at", id)?,
        summary: row.req_text("summary", id)?,
        detail: serde_json::from_str(&detail).map_err(|e| corrupt(id, format!("escalation detail: {e}")))?,
        opened_at: row.req_time("opened_at", id)?,
        sends: row.req_int("sends", id)? as u32,
        reminders: row.req_int("reminders", id)? as u32,
        last_sent_at: row.time("last_sent_at", id)?,
        next_action_at: row.time("next_action_at", id)?,
        acknowledged_at: row.time("acknowledged_at", id)?,
        acknowledged_by: row.text("acknowledged_by")?,
        note: row.text("note")?,
        closed_at: row.time("closed_at", id)?,
    })
}

fn outbox_from_row(row: &AnyRow) -> Result<OutboxEntry, StoreError> {
    let id: i64 = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let recipients: String = row.try_get("recipients")?;
    Ok(OutboxEntry {
        id,
        message_id: row.try_get("message_id")?,
        practice_id: row.try_get("practice_id")?,
        escalation_id: row.try_get("escalation_id")?,
        kind: row.try_get("kind")?,
        recipients: serde_json::from_str(&recipients).map_err(|e| corrupt(id, format!("outbox recipients: {e}")))?,
        subject: row.try_get("subject")?,
        state: OutboxState::parse(&state).ok_or_else(|| corrupt(id, format!("outbox state `{state}`")))?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        next_attempt_at: parse_ts(id, &row.try_get::<String, _>("next_attempt_at")?)?,
        last_error: row.try_get("last_error")?,
        created_at: parse_ts(id, &row.try_get::<String, _>("created_at")?)?,
        sent_at: opt_ts(row, "sent_at", id)?,
    })
}

/// Which open escalations of a case a new status ends: those whose reason
/// no longer holds.
fn still_holds(reason: Reason, status: CaseStatus) -> bool {
    use CaseStatus::*;
    match reason {
        Reason::Denied => status == Denied,
        Reason::PendedForInfo => status == PendedForInfo,
        Reason::PartiallyApproved => status == PartiallyApproved,
        Reason::StallWarning | Reason::Stalled => status == Pending,
        Reason::ServiceDateNear => matches!(
            status,
            New | Required | Ready | Submitting | Pending | PendedForInfo | NeedsAttention
        ),
        Reason::NeedsAttention => status == NeedsAttention,
        Reason::LetterMissing => matches!(status, Approved | PartiallyApproved | Denied),
        Reason::PayerPaused | Reason::PracticeDisabled => true,
    }
}

/// An `email` event on the case's timeline, by `system:PART`.
async fn email_event(tx: &mut Tx<'_>, case_id: i64, at: &str, part: &str, detail: &Value) -> Result<(), StoreError> {
    insert_event(
        tx,
        case_id,
        at,
        EventKind::Email,
        None,
        None,
        &Actor::system(part),
        detail,
    )
    .await?;
    Ok(())
}

/// The case an escalation is about, read in the caller's transaction.
async fn case_in_tx(tx: &mut Tx<'_>, id: Option<i64>) -> Result<Option<CaseRecord>, StoreError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let row = sqlx::query(&format!("{} WHERE id = $1", super::SELECT_CASE))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("case {id}")))?;
    Ok(Some(super::case_from_row(&row)?))
}

/// Queues one mail in the caller's transaction. Returns false when a mail
/// with this Message-ID is already queued (a step taken twice).
async fn queue_mail(
    tx: &mut Tx<'_>,
    practice: &str,
    escalation: Option<i64>,
    kind: &str,
    mail: &OutgoingMail,
    now: &str,
) -> Result<bool, StoreError> {
    let recipients: Vec<&String> = mail.to.iter().chain(&mail.cc).collect();
    let done = sqlx::query(
        "INSERT INTO outbox (message_id, practice_id, escalation_id, kind, recipients, subject, mail, state, \
         attempts, next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8) \
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&mail.message_id)
    .bind(practice)
    .bind(escalation)
    .bind(kind)
    .bind(serde_json::to_string(&recipients).expect("recipients serialise"))
    .bind(&mail.subject)
    .bind(serde_json::to_string(mail).expect("mail serialises"))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Ledger {
    /// Sets (or replaces, after a reload) what raises escalations when a
    /// case changes. Every clone of this ledger shares it.
    pub fn set_escalation_hook(&self, hook: std::sync::Arc<dyn EscalationHook>) {
        *self.hook.write().expect("hook lock") = Some(hook);
    }

    pub(super) fn hook(&self) -> Option<std::sync::Arc<dyn EscalationHook>> {
        self.hook.read().expect("hook lock").clone()
    }

    /// Inside a status change's transaction: resolves the case's
    /// escalations the new status ends, opens those it calls for, and queues
    /// their first mail. Returns whether mail was queued.
    pub(super) async fn escalate_in_tx(
        &self,
        tx: &mut Tx<'_>,
        id: i64,
        from: CaseStatus,
        to: CaseStatus,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        if from == CaseStatus::Submitting && to.is_payer_state() {
            sqlx::query("UPDATE cases SET submitted_at = COALESCE(submitted_at, $1) WHERE id = $2")
                .bind(ts(now))
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        // The same status again (a decision's details read later) ends
        // nothing, but may now have what an escalation needs.
        if from != to {
            self.resolve_ended(tx, id, to, now).await?;
        }
        let Some(hook) = self.hook() else {
            return Ok(false);
        };
        let Some(case) = case_in_tx(tx, Some(id)).await? else {
            return Ok(false);
        };
        let submitted: Option<String> = sqlx::query("SELECT submitted_at FROM cases WHERE id = $1")
            .bind(id)
            .fetch_one(&mut **tx)
            .await?
            .try_get("submitted_at")?;
        let submitted = submitted.map(|s| parse_ts(id, &s)).transpose()?;
        let mut queued = false;
        for new in hook.on_status(&case, submitted, note, now) {
            queued |= self
                .open_in_tx(tx, &*hook, &new, Some(&case), now)
                .await?
                .is_some_and(|(_, q)| q);
        }
        Ok(queued)
    }

    async fn resolve_ended(
        &self,
        tx: &mut Tx<'_>,
        id: i64,
        to: CaseStatus,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let rows =
            sqlx::query("SELECT id, reason FROM escalations WHERE case_id = $1 AND state IN ('open', 'acknowledged')")
                .bind(id)
                .fetch_all(&mut **tx)
                .await?;
        for r in rows {
            let eid: i64 = r.try_get("id")?;
            let reason: String = r.try_get("reason")?;
            let Ok(reason) = reason.parse::<Reason>() else { continue };
            if !still_holds(reason, to) {
                self.close_in_tx(tx, eid, &format!("the case is now {to}"), now).await?;
            }
        }
        Ok(())
    }

    async fn close_in_tx(&self, tx: &mut Tx<'_>, eid: i64, why: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE escalations SET state = 'resolved', closed_at = $1, next_action_at = NULL, \
             note = COALESCE(note || '; ', '') || $2 WHERE id = $3 AND state IN ('open', 'acknowledged')",
        )
        .bind(ts(now))
        .bind(why)
        .bind(eid)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Opens an escalation unless one with its key is active or was resolved
    /// within its repeat window; queues its first mail. Returns the new id
    /// and whether mail was queued.
    async fn open_in_tx(
        &self,
        tx: &mut Tx<'_>,
        hook: &dyn EscalationHook,
        new: &NewEscalation,
        case: Option<&CaseRecord>,
        now: DateTime<Utc>,
    ) -> Result<Option<(i64, bool)>, StoreError> {
        let key = new.dedupe_key();
        let recent = sqlx::query(
            "SELECT id FROM escalations WHERE dedupe_key = $1 AND (state IN ('open', 'acknowledged') OR closed_at > $2) LIMIT 1",
        )
        .bind(&key)
        .bind(ts(now - new.repeat_window))
        .fetch_optional(&mut **tx)
        .await?;
        if recent.is_some() {
            return Ok(None);
        }
        let now_s = ts(now);
        // Another writer may open the same key meanwhile (PostgreSQL): the
        // partial unique index makes this insert wait for it, then do
        // nothing if it committed.
        let inserted = sqlx::query(
            "INSERT INTO escalations (practice_id, case_id, payer, reason, dedupe_key, audience, level, state, severity, \
             due_at, summary, detail, opened_at, next_action_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, 'open', $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (dedupe_key) WHERE state IN ('open', 'acknowledged') DO NOTHING RETURNING id",
        )
        .bind(&new.practice_id)
        .bind(new.case_id)
        .bind(new.payer.as_deref())
        .bind(new.reason.as_str())
        .bind(&key)
        .bind(new.audience.as_str())
        .bind(new.severity)
        .bind(new.due_at.map(ts))
        .bind(&new.summary)
        .bind(new.detail.to_string())
        .bind(&now_s)
        .bind(new.next_action_at.map(ts))
        .fetch_optional(&mut **tx)
        .await?;
        let Some(inserted) = inserted else {
            return Ok(None);
        };
        let eid: i64 = inserted.try_get("id")?;
        let esc = self.escalation_in_tx(tx, eid).await?;
        let queued = self.send_step_in_tx(tx, hook, &esc, case, Step::First, now).await?;
        if let Some(case_id) = new.case_id {
            // The timeline keeps what the rule saw: for a payer past its
            // deadline, the practice's evidence (no PHI in summaries).
            let detail = json!({
                "escalation": eid,
                "reason": new.reason.as_str(),
                "summary": new.summary,
                "due_at": new.due_at.map(ts),
                "mail_queued": queued,
            });
            email_event(tx, case_id, &now_s, "escalations", &detail).await?;
        }
        Ok(Some((eid, queued)))
    }

    /// Renders and queues one step's mail and counts it on the escalation.
    async fn send_step_in_tx(
        &self,
        tx: &mut Tx<'_>,
        hook: &dyn EscalationHook,
        esc: &Escalation,
        case: Option<&CaseRecord>,
        step: Step,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let Some(mail) = hook.render(esc, case, step, now) else {
            return Ok(false);
        };
        let queued = queue_mail(tx, &esc.practice_id, Some(esc.id), step.kind(), &mail, &ts(now)).await?;
        if queued {
            sqlx::query("UPDATE escalations SET sends = sends + 1, last_sent_at = $1 WHERE id = $2")
                .bind(ts(now))
                .bind(esc.id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(queued)
    }

    /// An escalation read in a write transaction, which holds its row from
    /// here on (PostgreSQL's row lock; SQLite's write transaction).
    async fn escalation_in_tx(&self, tx: &mut Tx<'_>, eid: i64) -> Result<Escalation, StoreError> {
        let lock = Backend::of(tx).lock_row();
        let row = sqlx::query(&format!("{SELECT_ESCALATION} WHERE id = $1{lock}"))
            .bind(eid)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("escalation {eid}")))?;
        escalation_from_row(&row)
    }

    /// Opens an escalation a time-based rule found (its own transaction).
    /// None when one with the same key is active or recently resolved.
    pub async fn open_escalation(&self, new: &NewEscalation) -> Result<Option<i64>, StoreError> {
        let Some(hook) = self.hook() else {
            return Ok(None);
        };
        let now = self.now();
        let mut tx = self.begin_write().await?;
        let case = case_in_tx(&mut tx, new.case_id).await?;
        let opened = self.open_in_tx(&mut tx, &*hook, new, case.as_ref(), now).await?;
        tx.commit().await?;
        if opened.is_some_and(|(_, q)| q) {
            hook.mail_queued();
        }
        Ok(opened.map(|(id, _)| id))
    }

    /// Resolves the active escalation with this key, if any (a payer that
    /// works again, a stall warning overtaken by the stall itself).
    pub async fn resolve_escalation_key(&self, key: &str, why: &str) -> Result<bool, StoreError> {
        let now = self.now();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT id FROM escalations WHERE dedupe_key = $1 AND state IN ('open', 'acknowledged'){}",
            self.backend.lock_row()
        ))
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        self.close_in_tx(&mut tx, row.try_get("id")?, why, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Sends what is due: reminders at the current level, or the move to
    /// the next level. Each in its own transaction with its mail. Returns
    /// how many steps were taken.
    pub async fn advance_escalations(
        &self,
        policy: &(dyn Fn(&Escalation) -> Option<Advance> + Sync),
    ) -> Result<usize, StoreError> {
        let Some(hook) = self.hook() else {
            return Ok(0);
        };
        let now = self.now();
        let mut taken = 0;
        // A page at a time, in the order of the `escalations_due` index.
        let mut after = (String::new(), 0i64);
        loop {
            let page = sqlx::query(&format!(
                "{SELECT_ESCALATION} WHERE state = 'open' AND next_action_at >= $1 AND next_action_at <= $2 \
                 AND (next_action_at > $1 OR id > $3) ORDER BY next_action_at, id LIMIT {ADVANCE_PAGE}"
            ))
            .bind(&after.0)
            .bind(ts(now))
            .bind(after.1)
            .fetch_all(&self.pool)
            .await?;
            let full = page.len() == ADVANCE_PAGE;
            let due = page.iter().map(escalation_from_row).collect::<Result<Vec<_>, _>>()?;
            if let Some(last) = due.last() {
                after = (last.next_action_at.map(ts).unwrap_or_default(), last.id);
            }
            taken += self.advance_page(&*hook, policy, due, now).await?;
            if !full {
                return Ok(taken);
            }
        }
    }

    async fn advance_page(
        &self,
        hook: &dyn EscalationHook,
        policy: &(dyn Fn(&Escalation) -> Option<Advance> + Sync),
        due: Vec<Escalation>,
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let mut taken = 0;
        for esc in due {
            let Some(advance) = policy(&esc) else {
                continue;
            };
            let mut tx = self.begin_write().await?;
            // Re-read under the row's lock: an acknowledgement, or another
            // daemon taking this same step, may have won.
            let fresh = self.escalation_in_tx(&mut tx, esc.id).await?;
            if fresh.state != EscalationState::Open || fresh.next_action_at != esc.next_action_at {
                continue;
            }
            // The policy read this same row (its next action is unchanged).
            let step = advance.step;
            let (level, reminders) = match step {
                Step::NextLevel(l) => (l, 0),
                Step::Reminder(n) => (fresh.level, n),
                Step::First => (fresh.level, fresh.reminders),
            };
            sqlx::query("UPDATE escalations SET level = $1, reminders = $2, next_action_at = $3 WHERE id = $4")
                .bind(level as i64)
                .bind(reminders as i64)
                .bind(advance.next.map(ts))
                .bind(esc.id)
                .execute(&mut *tx)
                .await?;
            let updated = self.escalation_in_tx(&mut tx, esc.id).await?;
            let case = case_in_tx(&mut tx, updated.case_id).await?;
            let queued = self
                .send_step_in_tx(&mut tx, hook, &updated, case.as_ref(), step, now)
                .await?;
            if let Some(case_id) = updated.case_id {
                let detail =
                    json!({ "escalation": esc.id, "step": step.kind(), "level": level, "mail_queued": queued });
                email_event(&mut tx, case_id, &ts(now), "escalations", &detail).await?;
            }
            tx.commit().await?;
            if queued {
                hook.mail_queued();
            }
            taken += 1;
        }
        Ok(taken)
    }

    /// Acknowledges an escalation: its reminders stop. It stays active
    /// (so the same rule does not raise it again) until its cause ends.
    pub async fn acknowledge_escalation(
        &self,
        eid: i64,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<Escalation, StoreError> {
        let now = self.now();
        let mut tx = self.begin_write().await?;
        let esc = self.escalation_in_tx(&mut tx, eid).await?;
        if esc.state != EscalationState::Open {
            return Err(StoreError::NotFound(format!(
                "open escalation {eid} (it is {})",
                esc.state.as_str()
            )));
        }
        sqlx::query(
            "UPDATE escalations SET state = 'acknowledged', acknowledged_at = $1, acknowledged_by = $2, \
             next_action_at = NULL, note = $3 WHERE id = $4",
        )
        .bind(ts(now))
        .bind(actor.as_str())
        .bind(note)
        .bind(eid)
        .execute(&mut *tx)
        .await?;
        if let Some(case_id) = esc.case_id {
            let detail = json!({ "escalation": eid, "acknowledged": true, "note": note });
            insert_event(&mut tx, case_id, &ts(now), EventKind::Note, None, None, actor, &detail).await?;
        }
        let esc = self.escalation_in_tx(&mut tx, eid).await?;
        tx.commit().await?;
        Ok(esc)
    }

    pub async fn escalation(&self, eid: i64) -> Result<Escalation, StoreError> {
        let row = sqlx::query(&format!("{SELECT_ESCALATION} WHERE id = $1"))
            .bind(eid)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("escalation {eid}")))?;
        escalation_from_row(&row)
    }

    /// Escalations, most urgent first: the open and acknowledged ones, or
    /// all of them.
    pub async fn escalations(
        &self,
        practice: Option<&str>,
        include_closed: bool,
    ) -> Result<Vec<Escalation>, StoreError> {
        let mut sql = format!("{SELECT_ESCALATION} WHERE 1 = 1");
        if !include_closed {
            sql.push_str(" AND state IN ('open', 'acknowledged')");
        }
        if practice.is_some() {
            sql.push_str(" AND practice_id = $1");
        }
        sql.push_str(" ORDER BY severity DESC, COALESCE(due_at, '9999') ASC, id ASC");
        let mut q = sqlx::query(&sql);
        if let Some(p) = practice {
            q = q.bind(p);
        }
        q.fetch_all(&self.pool).await?.iter().map(escalation_from_row).collect()
    }

    /// One page of the cases of a practice the time-based rules must look
    /// at now (their `next_check_at` has come), in `(next_check_at, id)`
    /// order after `after`. An indexed range read (`cases_next_check`),
    /// whatever the ledger's size.
    pub async fn cases_due_for_rules(
        &self,
        practice: &str,
        now: DateTime<Utc>,
        after: &RulesCursor,
        limit: usize,
    ) -> Result<Vec<CaseForRules>, StoreError> {
        let rows = sqlx::query(DUE_FOR_RULES)
            .bind(practice)
            .bind(&after.at)
            .bind(ts(now))
            .bind(after.id)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let case = super::case_from_row(r)?;
                let submitted_at = opt_ts(r, "submitted_at", case.id)?;
                // An integer on both backends (PostgreSQL's EXISTS is a
                // boolean, SQLite's an integer; the CASE makes it one type).
                let has_letter: i64 = r.try_get("has_letter")?;
                Ok(CaseForRules {
                    submitted_at,
                    has_letter: has_letter != 0,
                    version: r.try_get("version")?,
                    cursor: RulesCursor {
                        at: r.try_get("next_check_at")?,
                        id: case.id,
                    },
                    case,
                })
            })
            .collect()
    }

    /// The dedupe keys of these cases' active (open or acknowledged)
    /// escalations: what a scan need not try to open again.
    pub async fn active_escalation_keys(&self, cases: &[i64]) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut keys = std::collections::HashSet::new();
        for chunk in cases.chunks(500) {
            let list = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT dedupe_key FROM escalations WHERE case_id IN ({list}) AND state IN ('open', 'acknowledged')"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                keys.insert(r.try_get("dedupe_key")?);
            }
        }
        Ok(keys)
    }

    /// Records when the rules must look at each case again (None: not
    /// until it changes), in one statement per 300 cases. A case changed
    /// since it was read (its version moved on) keeps the time its change
    /// set. Returns how many were recorded.
    pub async fn set_next_checks(&self, checks: &[NextCheck]) -> Result<u64, StoreError> {
        let mut done = 0;
        for chunk in checks.chunks(300) {
            let (set, ids) = super::case_when(chunk.len(), 1, 3);
            let sql = format!(
                "UPDATE cases SET next_check_at = {} WHERE id IN ({ids}) AND version = {}",
                set[0], set[1]
            );
            let mut q = sqlx::query(&sql);
            for c in chunk {
                q = q.bind(c.case_id).bind(c.at.map(ts)).bind(c.version);
            }
            done += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(done)
    }

    /// Whether the escalation rules a practice's cases were scheduled by
    /// differ from `fingerprint` (a hash of the rules now in force). If
    /// they do, every case not final is due for a look at `now` (one
    /// statement), and the new fingerprint is kept.
    pub async fn rules_changed(&self, practice: &str, fingerprint: &str) -> Result<bool, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let seen = sqlx::query(&format!(
            "SELECT fingerprint FROM escalation_rules_seen WHERE practice_id = $1{}",
            self.backend.lock_row()
        ))
        .bind(practice)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = &seen {
            if r.try_get::<String, _>("fingerprint")? == fingerprint {
                return Ok(false);
            }
        }
        sqlx::query(
            "UPDATE cases SET next_check_at = $1 WHERE practice_id = $2 \
             AND status NOT IN ('cancelled', 'expired', 'not_required') \
             AND (next_check_at IS NULL OR next_check_at > $1)",
        )
        .bind(&now)
        .bind(practice)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO escalation_rules_seen (practice_id, fingerprint, changed_at) VALUES ($1, $2, $3) \
             ON CONFLICT (practice_id) DO UPDATE SET fingerprint = $2, changed_at = $3",
        )
        .bind(practice)
        .bind(fingerprint)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A case's escalations, newest first (an indexed lookup).
    pub async fn case_escalations(&self, case_id: i64) -> Result<Vec<Escalation>, StoreError> {
        self.pool
            .rows(SELECT_CASE_ESCALATIONS, &[Arg::Int(case_id)], |r| {
                escalation_from_row(r)
            })
            .await
    }

    /// Queues a mail that belongs to no escalation (a digest). False when
    /// one with its Message-ID was queued before.
    pub async fn queue_mail(&self, practice: &str, kind: &str, mail: &OutgoingMail) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let queued = queue_mail(&mut tx, practice, None, kind, mail, &ts(self.now())).await?;
        tx.commit().await?;
        if queued {
            if let Some(h) = self.hook() {
                h.mail_queued();
            }
        }
        Ok(queued)
    }

    /// Claims the next mail due (pending, or a claim that ran out), for
    /// `lease`. None when nothing is due. One statement picks and claims the
    /// mail, so two senders (two daemons) never hold the same one: on
    /// PostgreSQL the pick skips rows another sender is claiming (`SKIP
    /// LOCKED`), and the claim re-checks the state it picked by.
    pub async fn claim_mail(&self, lease: Duration) -> Result<Option<ClaimedMail>, StoreError> {
        let now = self.now();
        let skip = self.backend.skip_locked();
        for sql in claim_mail_sql(skip) {
            let row = sqlx::query(&sql)
                .bind(ts(now))
                .bind(ts(now + lease))
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { continue };
            let id: i64 = row.try_get("id")?;
            let mail: String = row.try_get("mail")?;
            return Ok(Some(ClaimedMail {
                id,
                escalation_id: row.try_get("escalation_id")?,
                case_id: row.try_get("case_id")?,
                attempts: row.try_get::<i64, _>("attempts")? as u32,
                mail: serde_json::from_str(&mail).map_err(|e| corrupt(id, format!("outbox mail: {e}")))?,
            }));
        }
        Ok(None)
    }

    /// Records how sending a claimed mail ended. The claim's attempt
    /// number fences it: a sender whose claim ran out and was taken over by
    /// another (a daemon that hung) does not overwrite the newer claim's
    /// retry or failure. A mail that went out is recorded as sent whoever
    /// sent it, once.
    pub async fn finish_mail(&self, claimed: &ClaimedMail, outcome: &SendOutcome) -> Result<(), StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        match outcome {
            SendOutcome::Sent => {
                let done = sqlx::query(
                    "UPDATE outbox SET state = 'sent', sent_at = $1, lease_until = NULL, last_error = NULL \
                     WHERE id = $2 AND state <> 'sent'",
                )
                .bind(&now)
                .bind(claimed.id)
                .execute(&mut *tx)
                .await?;
                if let (1, Some(case_id)) = (done.rows_affected(), claimed.case_id) {
                    let detail = json!({
                        "sent": claimed.mail.message_id,
                        "escalation": claimed.escalation_id,
                        "recipients": claimed.mail.to.len() + claimed.mail.cc.len(),
                    });
                    email_event(&mut tx, case_id, &now, "mail", &detail).await?;
                }
            }
            SendOutcome::Retry { at, error } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = $1, lease_until = NULL, last_error = $2 \
                     WHERE id = $3 AND state = 'sending' AND attempts = $4",
                )
                .bind(ts(*at))
                .bind(error)
                .bind(claimed.id)
                .bind(i64::from(claimed.attempts))
                .execute(&mut *tx)
                .await?;
            }
            SendOutcome::Failed { error } => {
                sqlx::query(
                    "UPDATE outbox SET state = 'failed', lease_until = NULL, last_error = $1 \
                     WHERE id = $2 AND state = 'sending' AND attempts = $3",
                )
                .bind(error)
                .bind(claimed.id)
                .bind(i64::from(claimed.attempts))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The outbox: mail waiting or failing, or everything with `all`.
    pub async fn outbox(&self, all: bool) -> Result<Vec<OutboxEntry>, StoreError> {
        let sql = if all {
            format!("{SELECT_OUTBOX} ORDER BY id")
        } else {
            format!("{SELECT_OUTBOX} WHERE state <> 'sent' ORDER BY id")
        };
        sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(outbox_from_row)
            .collect()
    }

    /// Mail not yet sent, by state (for metrics).
    pub async fn outbox_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM outbox WHERE state <> 'sent' GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// Open or acknowledged escalations (for metrics).
    pub async fn active_escalation_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM escalations WHERE state IN ('open', 'acknowledged')")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// Forgets the bodies of mail sent before `before` (they hold patient
    /// initials and masked IDs, or more): the outbox keeps who got what
    /// subject when, as the record. Returns how many were pruned.
    pub async fn prune_sent_mail(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("UPDATE outbox SET mail = '' WHERE state = 'sent' AND sent_at < $1 AND mail <> ''")
            .bind(ts(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Puts a failed mail back in line to be sent now.
    pub async fn retry_mail(&self, id: i64) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE outbox SET state = 'pending', next_attempt_at = $1 WHERE id = $2 AND state IN ('failed', 'pending')",
        )
        .bind(ts(self.now()))
        .bind(id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "mail {id} waiting or failed in the outbox"
            )));
        }
        if let Some(h) = self.hook() {
            h.mail_queued();
        }
        Ok(())
    }

    /// When the next pending mail is due, if any.
    pub async fn next_mail_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt_at ELSE lease_until END) AS due \
             FROM outbox WHERE state IN ('pending', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?;
        opt_ts(&row, "due", 0)
    }
}

/// How an escalation moves on when its next action is due.
#[derive(Clone, Copy, Debug)]
pub struct Advance {
    pub step: Step,
    /// The action after this one (None: no more).
    pub next: Option<DateTime<Utc>>,
}
