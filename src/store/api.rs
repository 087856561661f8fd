//! The intake API's tables (`docs/intake.md`): per-practice tokens, the
//! practices with a webhook, the webhook outbox, and the sync read
//! (`updated_since`).
//!
//! A webhook delivery is queued by [`queue_webhook`], called from
//! `insert_event` — the one writer of case events — so it commits in the
//! transaction of the change it reports, whichever path made the change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{case_from_row, parse_ts, ts, EventKind, Ledger, StoreError, Tx, SELECT_CASE};
use crate::case::{CaseRecord, CaseStatus};

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenScope {
    /// Read cases.
    Read,
    /// Read cases and post them.
    Write,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Write => "write",
        }
    }
}

impl std::str::FromStr for TokenScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(TokenScope::Read),
            "write" => Ok(TokenScope::Write),
            other => Err(format!("`{other}` is not a scope; use read or write")),
        }
    }
}

/// A token as stored (never its secret).
#[derive(Clone, Debug)]
pub struct ApiToken {
    pub id: i64,
    /// The public part of the token, which finds its row.
    pub key_id: String,
    /// SHA-256 of the secret part, hex.
    pub secret_hash: String,
    pub practice_id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A webhook delivery as `precert webhooks list` shows it.
#[derive(Clone, Debug)]
pub struct WebhookDelivery {
    pub id: i64,
    pub event_id: i64,
    pub practice_id: String,
    pub case_id: i64,
    pub kind: String,
    pub state: String,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery claimed by a sender.
#[derive(Clone, Debug)]
pub struct ClaimedWebhook {
    pub id: i64,
    pub event_id: i64,
    pub practice_id: String,
    /// The JSON body, as queued.
    pub payload: String,
    /// This claim's attempt number (1 for the first); it fences `finish_webhook`.
    pub attempts: u32,
}

/// How a delivery attempt ended.
#[derive(Clone, Debug)]
pub enum WebhookOutcome {
    Delivered,
    Retry { at: DateTime<Utc>, error: String },
    Failed { error: String },
}

/// Where a sync read resumes: after this `updated_at` and case id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncCursor {
    pub updated_at: String,
    pub id: i64,
}

/// The statuses whose arrival is reported to a webhook (besides every
/// decision): the ones after which nothing more happens unless a person
/// or the payer starts something new.
pub const WEBHOOK_STATUSES: [CaseStatus; 6] = [
    CaseStatus::NotRequired,
    CaseStatus::Approved,
    CaseStatus::PartiallyApproved,
    CaseStatus::Denied,
    CaseStatus::Cancelled,
    CaseStatus::Expired,
];

const SELECT_TOKEN: &str = "SELECT id, key_id, secret_hash, practice_id, name, scope, created_at, created_by, \
                            last_used_at, revoked_at FROM api_tokens";

fn token_from_row(row: &AnyRow) -> Result<ApiToken, StoreError> {
    let id: i64 = row.try_get("id")?;
    let scope: String = row.try_get("scope")?;
    let opt = |col: &str| -> Result<Option<DateTime<Utc>>, StoreError> {
        row.try_get::<Option<String>, _>(col)?
            .map(|s| parse_ts(id, &s))
            .transpose()
    };
    Ok(ApiToken {
        id,
        key_id: row.try_get("key_id")?,
        secret_hash: row.try_get("secret_hash")?,
        practice_id: row.try_get("practice_id")?,
        name: row.try_get("name")?,
        scope: scope.parse().map_err(|reason| StoreError::Corrupt { id, reason })?,
        created_at: parse_ts(id, &row.try_get::<String, _>("created_at")?)?,
        created_by: row.try_get("created_by")?,
        last_used_at: opt("last_used_at")?,
        revoked_at: opt("revoked_at")?,
    })
}

fn delivery_from_row(row: &AnyRow) -> Result<WebhookDelivery, StoreError> {
    let id: i64 = row.try_get("id")?;
    Ok(WebhookDelivery {
        id,
        event_id: row.try_get("event_id")?,
        practice_id: row.try_get("practice_id")?,
        case_id: row.try_get("case_id")?,
        kind: row.try_get("kind")?,
        state: row.try_get("state")?,
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        next_attempt_at: parse_ts(id, &row.try_get::<String, _>("next_attempt_at")?)?,
        last_error: row.try_get("last_error")?,
        created_at: parse_ts(id, &row.try_get::<String, _>("created_at")?)?,
        delivered_at: row
            .try_get::<Option<String>, _>("delivered_at")?
            .map(|s| parse_ts(id, &s))
            .transpose()?,
    })
}

/// A token's `last_used_at` is written at most this often: a busy client
/// does not turn every read into a write.
const LAST_USED_EVERY: chrono::Duration = chrono::Duration::seconds(60);

impl Ledger {
    /// Stores a new token (its secret's hash only). Refused when the
    /// practice already has a live token of that name.
    pub async fn create_api_token(
        &self,
        key_id: &str,
        secret_hash: &str,
        practice: &str,
        name: &str,
        scope: TokenScope,
        created_by: &str,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO api_tokens (key_id, secret_hash, practice_id, name, scope, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(key_id)
        .bind(secret_hash)
        .bind(practice)
        .bind(name)
        .bind(scope.as_str())
        .bind(ts(self.now()))
        .bind(created_by)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(r.try_get("id")?),
            // Another live token of that name, made meanwhile.
            None => Err(StoreError::NotFound(format!(
                "second live token named `{name}` for practice {practice}: revoke the first, or choose another name"
            ))),
        }
    }

    /// Tokens, of one practice or all, oldest first; revoked ones too.
    pub async fn api_tokens(&self, practice: Option<&str>) -> Result<Vec<ApiToken>, StoreError> {
        let rows = match practice {
            Some(p) => {
                sqlx::query(&format!("{SELECT_TOKEN} WHERE practice_id = $1 ORDER BY id"))
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(&format!("{SELECT_TOKEN} ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(token_from_row).collect()
    }

    /// A token by its public key id (revoked or not: the caller decides).
    pub async fn api_token_by_key(&self, key_id: &str) -> Result<Option<ApiToken>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_TOKEN} WHERE key_id = $1"))
            .bind(key_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Revokes a practice's live token by name. False when there is none.
    pub async fn revoke_api_token(&self, practice: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE practice_id = $2 AND name = $3 AND revoked_at IS NULL",
        )
        .bind(ts(self.now()))
        .bind(practice)
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stamps a token's last use (at most once a minute).
    pub async fn touch_api_token(&self, id: i64) -> Result<(), StoreError> {
        let now = self.now();
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(ts(now))
        .bind(id)
        .bind(ts(now - LAST_USED_EVERY))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Makes `practices` the set whose case changes queue webhook
    /// deliveries (the daemon's configuration, at start and each reload).
    pub async fn set_webhook_targets(&self, practices: &[String]) -> Result<(), StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query("SELECT practice_id FROM webhook_targets")
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let p: String = row.try_get("practice_id")?;
            if !practices.contains(&p) {
                sqlx::query("DELETE FROM webhook_targets WHERE practice_id = $1")
                    .bind(&p)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for p in practices {
            sqlx::query("INSERT INTO webhook_targets (practice_id, updated_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(p)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims the next due delivery for `lease` (or one whose sender's
    /// claim ran out), as the mail outbox does.
    pub async fn claim_webhook(&self, lease: Duration) -> Result<Option<ClaimedWebhook>, StoreError> {
        let now = self.now();
        let skip = self.backend.skip_locked();
        for sql in claim_webhook_sql(skip) {
            let row = sqlx::query(&sql)
                .bind(ts(now))
                .bind(ts(now + lease))
                .fetch_optional(&self.pool)
                .await?;
            if let Some(row) = row {
                return Ok(Some(ClaimedWebhook {
                    id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    practice_id: row.try_get("practice_id")?,
                    payload: row.try_get("payload")?,
                    attempts: row.try_get::<i64, _>("attempts")? as u32,
                }));
            }
        }
        Ok(None)
    }

    /// Records how a claimed delivery ended; the claim's attempt number
    /// fences it (a sender whose claim was taken over writes nothing),
    /// except that a delivery that arrived is recorded whoever made it.
    pub async fn finish_webhook(&self, claimed: &ClaimedWebhook, outcome: &WebhookOutcome) -> Result<(), StoreError> {
        let now = ts(self.now());
        let attempts = i64::from(claimed.attempts);
        let q = match outcome {
            WebhookOutcome::Delivered => sqlx::query(
                "UPDATE webhook_outbox SET state = 'delivered', delivered_at = $1, lease_until = NULL, last_error = NULL \
                 WHERE id = $2 AND state <> 'delivered'",
            )
            .bind(now)
            .bind(claimed.id),
            WebhookOutcome::Retry { at, error } => sqlx::query(
                "UPDATE webhook_outbox SET state = 'pending', next_attempt_at = $1, lease_until = NULL, last_error = $2 \
                 WHERE id = $3 AND state = 'sending' AND attempts = $4",
            )
            .bind(ts(*at))
            .bind(error.clone())
            .bind(claimed.id)
            .bind(attempts),
            WebhookOutcome::Failed { error } => sqlx::query(
                "UPDATE webhook_outbox SET state = 'failed', lease_until = NULL, last_error = $1 \
                 WHERE id = $2 AND state = 'sending' AND attempts = $3",
            )
            .bind(error.clone())
            .bind(claimed.id)
            .bind(attempts),
        };
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// When the next pending delivery is due, if any.
    pub async fn next_webhook_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = sqlx::query(
            "SELECT next_attempt_at FROM webhook_outbox WHERE state = 'pending' ORDER BY next_attempt_at, id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| parse_ts(0, &r.try_get::<String, _>("next_attempt_at")?))
            .transpose()
    }

    /// Deliveries, newest first: of one practice and/or only the failed
    /// ones (and those still being retried after a failure).
    pub async fn webhook_deliveries(
        &self,
        practice: Option<&str>,
        failures_only: bool,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let mut sql = String::from(
            "SELECT id, event_id, practice_id, case_id, kind, state, attempts, next_attempt_at, last_error, \
             created_at, delivered_at FROM webhook_outbox WHERE 1 = 1",
        );
        if failures_only {
            sql.push_str(" AND (state = 'failed' OR (state <> 'delivered' AND last_error IS NOT NULL))");
        }
        if practice.is_some() {
            sql.push_str(" AND practice_id = $2");
        }
        sql.push_str(" ORDER BY id DESC LIMIT $1");
        let mut q = sqlx::query(&sql).bind(i64::from(limit));
        if let Some(p) = practice {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Puts a failed delivery back in the queue, due now. False when it
    /// is not failed.
    pub async fn retry_webhook(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET state = 'pending', next_attempt_at = $1, attempts = 0 WHERE id = $2 AND state = 'failed'",
        )
        .bind(ts(self.now()))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A page of a practice's cases changed after `since` (or resuming
    /// after `after`), oldest change first: what a practice system syncs.
    /// `updated_at` is set by every status, decision, data, reference and
    /// letter change.
    pub async fn cases_updated_since(
        &self,
        practice: &str,
        since: DateTime<Utc>,
        after: Option<&SyncCursor>,
        limit: u32,
    ) -> Result<Vec<CaseRecord>, StoreError> {
        let (at, id) = match after {
            Some(c) => (c.updated_at.clone(), c.id),
            // Strictly after `since`: a change stamped exactly then is read
            // by a cursor starting at id 0 of that instant.
            None => (ts(since), 0),
        };
        let rows = sqlx::query(&sync_page_sql())
            .bind(practice)
            .bind(&at)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(case_from_row).collect()
    }
}

/// The sync page: `$1` practice, after (`$2` updated_at, `$3` id), `$4`
/// rows; read through `cases_by_practice_updated`.
pub(crate) fn sync_page_sql() -> String {
    format!("{SELECT_CASE} WHERE practice_id = $1 AND (updated_at, id) > ($2, $3) ORDER BY updated_at, id LIMIT $4")
}

/// The two claims of a delivery: a due one, or one whose sender's claim
/// ran out. `$1` now, `$2` the claim's end.
pub(crate) fn claim_webhook_sql(skip: &str) -> [String; 2] {
    [
        ("state = 'pending' AND next_attempt_at <= $1", "next_attempt_at, id"),
        ("state = 'sending' AND lease_until <= $1", "lease_until, id"),
    ]
    .map(|(due, order)| {
        format!(
            "UPDATE webhook_outbox SET state = 'sending', lease_until = $2, attempts = attempts + 1 \
             WHERE id = (SELECT id FROM webhook_outbox WHERE {due} ORDER BY {order} LIMIT 1{skip}) AND {due} \
             RETURNING id, event_id, practice_id, payload, attempts"
        )
    })
}

/// Queues a webhook delivery for an event, inside its transaction, when
/// the event is a decision or a move to one of [`WEBHOOK_STATUSES`] and
/// the case's practice has a webhook (`webhook_targets`). The body is fixed
/// now: no patient data, only the practice's own case ID, the status and
/// the decision's auth number, dates and units (the practice system reads
/// the rest through the API).
pub(super) async fn queue_webhook(
    tx: &mut Tx<'_>,
    event_id: i64,
    case_id: i64,
    at: &str,
    kind: EventKind,
    from: Option<CaseStatus>,
    to: Option<CaseStatus>,
) -> Result<(), StoreError> {
    let what = match (kind, to) {
        (EventKind::DecisionRecorded, _) => "decision",
        (EventKind::StatusChanged, Some(to)) if WEBHOOK_STATUSES.contains(&to) => "status",
        _ => return Ok(()),
    };
    let row = sqlx::query(
        "SELECT c.practice_id, c.case_ref, c.status, c.decision, c.payer_ref FROM cases c \
         WHERE c.id = $1 AND EXISTS (SELECT 1 FROM webhook_targets w WHERE w.practice_id = c.practice_id)",
    )
    .bind(case_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let practice: String = row.try_get("practice_id")?;
    let decision: Option<String> = row.try_get("decision")?;
    let decision: Option<crate::case::Decision> =
        decision
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                id: case_id,
                reason: format!("decision: {e}"),
            })?;
    let payload = json!({
        "event": what,
        "event_id": event_id,
        "at": at,
        "practice_id": practice,
        "case_id": row.try_get::<String, _>("case_ref")?,
        "status": row.try_get::<String, _>("status")?,
        "previous_status": from.map(CaseStatus::as_str),
        "payer_ref": row.try_get::<Option<String>, _>("payer_ref")?,
        "decision": decision.as_ref().map(|d| decision_json(d, false)),
    });
    sqlx::query(
        "INSERT INTO webhook_outbox (event_id, practice_id, case_id, kind, payload, state, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6) ON CONFLICT DO NOTHING",
    )
    .bind(event_id)
    .bind(&practice)
    .bind(case_id)
    .bind(what)
    .bind(payload.to_string())
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A decision as the API and webhooks show it: the auth number, the
/// validity dates, the units per line, the denial's code, and with
/// `payer_text` the payer's own words (the denial reason, conditions),
/// which only the audited API read carries, never a webhook.
pub fn decision_json(d: &crate::case::Decision, payer_text: bool) -> Value {
    json!({
        "auth_number": d.auth_number,
        "valid_from": d.valid.as_ref().map(|v| v.start.to_string()),
        "valid_to": d.valid.as_ref().map(|v| v.end.to_string()),
        "lines": d.lines.iter().map(|l| json!({
            "code": l.code.to_string(),
            "requested_units": l.requested_units,
            "approved_units": l.approved_units,
        })).collect::<Vec<_>>(),
        "conditions": if payer_text { d.conditions.clone() } else { None },
        "denial_code": d.denial.as_ref().and_then(|r| r.code.clone()),
        "denial_reason": if payer_text { d.denial.as_ref().map(|r| r.text.clone()) } else { None },
        "decided_at": crate::store::ts(d.decided_at),
        "source": d.source,
    })
}
