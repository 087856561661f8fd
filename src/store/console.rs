//! What the web console keeps in the ledger: its users, their sessions, the
//! audit of what they saw and did, and the worklist's paged query.
//!
//! The console (`crate::console`) decides policy (who may see what, when a
//! session ends, when an account locks); this file only reads and writes.
//! The audit is append-only, as the case events are: triggers refuse
//! updates and deletes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{case_from_row, parse_status, parse_ts, ts, Backend, Ledger, StoreError};
use crate::case::{CaseRecord, CaseStatus};

/// A console user as stored. `Debug` leaves the password hash out.
#[derive(Clone)]
pub struct ConsoleUser {
    pub name: String,
    /// `admin`, `supervisor` or `operator` (checked by the console).
    pub role: String,
    /// The practices the user may see; ignored for an admin.
    pub practices: Vec<String>,
    /// Argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub failed_logins: u32,
    pub locked_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub password_changed_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// The TOTP seed once the user enrolled, as stored: sealed with the
    /// console's key (`console::seeds`), never the base32 seed itself.
    pub totp_secret: Option<String>,
    /// The last time step a TOTP code was accepted for.
    pub totp_last_step: i64,
}

impl ConsoleUser {
    pub fn has_totp(&self) -> bool {
        self.totp_secret.is_some()
    }
}

impl std::fmt::Debug for ConsoleUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleUser")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("practices", &self.practices)
            .field("disabled", &self.disabled)
            .field("failed_logins", &self.failed_logins)
            .field("locked_until", &self.locked_until)
            .field("totp", &self.has_totp())
            .finish_non_exhaustive()
    }
}

/// A signed-in session, found by the hash of its cookie's token.
#[derive(Clone, Debug)]
pub struct ConsoleSession {
    pub user: String,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// One line of the console's audit, to write.
#[derive(Clone, Debug)]
pub struct AuditEntry<'a> {
    pub user: &'a str,
    pub action: &'a str,
    pub practice: Option<&'a str>,
    pub case_id: Option<i64>,
    pub remote: Option<&'a str>,
    /// Never patient data.
    pub detail: Value,
}

/// One line of the console's audit, as stored.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub user: String,
    pub action: String,
    pub practice: Option<String>,
    pub case_id: Option<i64>,
    pub remote: Option<String>,
    pub detail: Value,
}

/// A worklist query: a page of cases, newest change first.
#[derive(Clone, Debug, Default)]
pub struct CaseQuery {
    /// The practices the viewer may see; `None` for all.
    pub allowed: Option<Vec<String>>,
    pub practice: Option<String>,
    pub payer: Option<String>,
    pub status: Option<CaseStatus>,
    /// `standard` or `urgent`.
    pub urgency: Option<String>,
    /// A case reference or payer reference, or the start of a case reference.
    pub search: Option<String>,
    /// Only cases created (imported) before this time: older than an age.
    pub created_before: Option<DateTime<Utc>>,
    /// Only cases the payer has and has not decided (pending, pended for
    /// information) with a submission time: the ones with a deadline.
    pub awaiting_only: bool,
    /// Only undecided cases whose stored decision deadline (under the
    /// rules it names) falls in a range; soonest first unless
    /// `oldest_first`.
    pub deadline: Option<DeadlineRange>,
    /// Oldest first (by creation) instead of the newest change first.
    pub oldest_first: bool,
    pub limit: u32,
    pub offset: u64,
}

/// A range of decision deadlines, as stored under the escalation rules
/// whose digest is `rules` (`Ledger::store_deadlines`): after `after` (if
/// given) and at or before `until`.
#[derive(Clone, Debug, Default)]
pub struct DeadlineRange {
    pub rules: String,
    pub after: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
}

/// One page of the worklist.
#[derive(Clone, Debug)]
pub struct CasePage {
    pub cases: Vec<CaseRecord>,
    /// Cases matching the query, every page.
    pub total: i64,
    /// Cases per status for the query without its status filter.
    pub counts: Vec<(CaseStatus, i64)>,
    /// When each case of `cases` was submitted, if it was.
    pub submitted_at: Vec<Option<DateTime<Utc>>>,
}

/// The worklist's columns: a case and its submission time.
const SELECT_LISTED: &str =
    "SELECT id, status, data, decision, payer_ref, created_at, updated_at, submitted_at FROM cases";

fn opt_ts(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<String>, _>(col)?
        .map(|s| parse_ts(0, &s))
        .transpose()
}

fn user_from_row(r: &AnyRow) -> Result<ConsoleUser, StoreError> {
    let practices: String = r.try_get("practices")?;
    Ok(ConsoleUser {
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        practices: serde_json::from_str(&practices).map_err(|e| StoreError::Corrupt {
            id: 0,
            reason: format!("console user practices: {e}"),
        })?,
        password_hash: r.try_get("password_hash")?,
        disabled: r.try_get::<i64, _>("disabled")? != 0,
        failed_logins: r.try_get::<i64, _>("failed_logins")? as u32,
        locked_until: opt_ts(r, "locked_until")?,
        created_at: parse_ts(0, &r.try_get::<String, _>("created_at")?)?,
        password_changed_at: parse_ts(0, &r.try_get::<String, _>("password_changed_at")?)?,
        last_login_at: opt_ts(r, "last_login_at")?,
        totp_secret: r.try_get("totp_secret")?,
        totp_last_step: r.try_get("totp_last_step")?,
    })
}

const SELECT_USER: &str = "SELECT name, role, practices, password_hash, disabled, failed_logins, locked_until, \
     created_at, password_changed_at, last_login_at, totp_secret, totp_last_step FROM console_users";

/// The worklist's order.
fn order(q: &CaseQuery) -> &'static str {
    if q.oldest_first {
        "created_at ASC, id ASC"
    } else if q.deadline.is_some() {
        "deadline_at ASC, id ASC"
    } else {
        "updated_at DESC, id DESC"
    }
}

/// The WHERE clause (without the status filter) and its arguments.
fn where_clause(b: Backend, q: &CaseQuery) -> (String, Vec<String>) {
    let mut sql = String::from(" WHERE 1 = 1");
    let mut args: Vec<String> = Vec::new();
    if let Some(allowed) = &q.allowed {
        if allowed.is_empty() {
            sql.push_str(" AND 1 = 0");
        } else {
            let mut marks = Vec::new();
            for p in allowed {
                args.push(p.clone());
                marks.push(format!("${}", args.len()));
            }
            sql.push_str(&format!(" AND practice_id IN ({})", marks.join(", ")));
        }
    }
    if let Some(t) = q.created_before {
        args.push(ts(t));
        sql.push_str(&format!(" AND created_at < ${}", args.len()));
    }
    if q.awaiting_only {
        sql.push_str(" AND status IN ('pending', 'pended_for_info') AND submitted_at IS NOT NULL");
    }
    if let Some(d) = &q.deadline {
        // A stored deadline is cleared by every change of status or data,
        // so one under these rules belongs to a case still undecided since.
        args.push(d.rules.clone());
        sql.push_str(&format!(
            " AND deadline_rules = ${} AND status IN ('pending', 'pended_for_info')",
            args.len()
        ));
        if let Some(after) = d.after {
            args.push(ts(after));
            sql.push_str(&format!(" AND deadline_at > ${}", args.len()));
        }
        args.push(ts(d.until));
        sql.push_str(&format!(" AND deadline_at <= ${}", args.len()));
    }
    for (column, value) in [
        ("practice_id", &q.practice),
        ("payer", &q.payer),
        ("urgency", &q.urgency),
    ] {
        if let Some(v) = value {
            args.push(v.clone());
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    if let Some(s) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        args.push(s.to_owned());
        let exact = args.len();
        let escaped: String = s
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        args.push(format!("{escaped}%"));
        // Case-insensitive on both, each through its own index (migration
        // 18): SQLite's LIKE folds ASCII case and reads `case_ref COLLATE
        // NOCASE`; PostgreSQL's is exact, so both sides are lowered and
        // `lower(case_ref) text_pattern_ops` serves the prefix.
        let case_ref = match b {
            Backend::Sqlite => format!("case_ref LIKE ${}", args.len()),
            Backend::Postgres => format!("lower(case_ref) LIKE lower(${})", args.len()),
        };
        sql.push_str(&format!(" AND (payer_ref = ${exact} OR {case_ref} ESCAPE '\\')"));
    }
    (sql, args)
}

/// The worklist's queries that must read through an index at any ledger
/// size (migration 18), with plausible values, for `store::hot_queries`:
/// the counts per status of a practice and payer, a status's page of it,
/// and a search by case ID prefix or payer reference.
pub(crate) fn worklist_queries(b: Backend) -> Vec<(String, String, Vec<String>, bool)> {
    let filtered = CaseQuery {
        practice: Some("p".into()),
        payer: Some("sandbox".into()),
        ..CaseQuery::default()
    };
    let search = CaseQuery {
        search: Some("LO-2026".into()),
        ..CaseQuery::default()
    };
    let mut out = Vec::new();
    for (name, q) in [("practice and payer", &filtered), ("search", &search)] {
        let (base, args) = where_clause(b, q);
        out.push((
            format!("worklist: counts per status ({name})"),
            format!("SELECT status, COUNT(*) AS n FROM cases{base} GROUP BY status"),
            args,
            false,
        ));
    }
    let (base, mut args) = where_clause(b, &filtered);
    args.push("pending".into());
    out.push((
        "worklist: a status's page (practice and payer)".into(),
        format!(
            "{SELECT_LISTED}{base} AND status = ${} ORDER BY {} LIMIT 50",
            args.len(),
            order(&filtered)
        ),
        args,
        true,
    ));
    // The deadline filters (migration 20): the look for deadlines to
    // compute, the one for deadlines of other rules, and past the deadline
    // (every undecided case, at worst) counted and paged, soonest first.
    out.push((
        "worklist: deadlines to compute".into(),
        format!("SELECT id, version, data FROM cases WHERE {STALE_DEADLINE} LIMIT 2000"),
        Vec::new(),
        false,
    ));
    out.push((
        "worklist: deadlines of other rules".into(),
        "SELECT id FROM cases WHERE deadline_rules < $1 OR deadline_rules > $1 LIMIT 1".into(),
        vec!["digest".into()],
        false,
    ));
    let overdue = CaseQuery {
        deadline: Some(DeadlineRange {
            rules: "digest".into(),
            after: None,
            until: DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
                .expect("a time")
                .with_timezone(&Utc),
        }),
        ..CaseQuery::default()
    };
    let (base, args) = where_clause(b, &overdue);
    out.push((
        "worklist: counts per status (past the deadline)".into(),
        format!("SELECT status, COUNT(*) AS n FROM cases{base} GROUP BY status"),
        args.clone(),
        false,
    ));
    out.push((
        "worklist: a page past the deadline, soonest first".into(),
        format!("{SELECT_LISTED}{base} ORDER BY {} LIMIT 50", order(&overdue)),
        args,
        true,
    ));
    out
}

impl Ledger {
    /// Adds a console user. False when a user of that name exists.
    pub async fn add_console_user(
        &self,
        name: &str,
        role: &str,
        practices: &[String],
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let now = ts(self.now());
        let done = sqlx::query(
            "INSERT INTO console_users (name, role, practices, password_hash, created_at, password_changed_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role)
        .bind(serde_json::to_string(practices).expect("a list of strings serialises"))
        .bind(password_hash)
        .bind(&now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn console_user(&self, name: &str) -> Result<Option<ConsoleUser>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_USER} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn console_users(&self) -> Result<Vec<ConsoleUser>, StoreError> {
        let rows = sqlx::query(&format!("{SELECT_USER} ORDER BY name"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Disables (or enables again) a user; disabling ends their sessions.
    /// False when there is no such user.
    pub async fn set_console_user_disabled(&self, name: &str, disabled: bool) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE console_users SET disabled = $1 WHERE name = $2")
            .bind(i64::from(disabled))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if disabled {
            sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets a new password: every session of the user ends, and a lockout
    /// is lifted. False when there is no such user.
    pub async fn set_console_password(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE console_users SET password_hash = $1, password_changed_at = $2, failed_logins = 0, \
             locked_until = NULL WHERE name = $3",
        )
        .bind(password_hash)
        .bind(&now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Changes a user's role and practices. False when there is no such
    /// user. Their sessions end, so the change holds at once.
    pub async fn set_console_user_access(
        &self,
        name: &str,
        role: &str,
        practices: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE console_users SET role = $1, practices = $2 WHERE name = $3")
            .bind(role)
            .bind(serde_json::to_string(practices).expect("a list of strings serialises"))
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM console_sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets (enrols) or clears a user's TOTP seed, as the console sealed
    /// it. False when there is no such user.
    pub async fn set_console_totp(&self, name: &str, secret: Option<&str>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE console_users SET totp_secret = $1, totp_last_step = 0 WHERE name = $2")
            .bind(secret)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every enrolled user's stored TOTP seed (as stored: the console seals
    /// them, `console::seeds`), by name.
    pub async fn console_totp_seeds(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT name, totp_secret FROM console_users WHERE totp_secret IS NOT NULL ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("totp_secret")?)))
            .collect()
    }

    /// Replaces a user's stored seed by another form of the same seed (its
    /// sealed form), only while it is still `old`: a user who changed or
    /// removed their TOTP meanwhile keeps the change. The last accepted
    /// step stays, so a used code stays used.
    pub async fn reseal_console_totp(&self, name: &str, old: &str, new: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE console_users SET totp_secret = $1 WHERE name = $2 AND totp_secret = $3")
            .bind(new)
            .bind(name)
            .bind(old)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Accepts a TOTP code's time step for a user once: false when a code
    /// of this step (or a later one) was accepted already, so a code seen
    /// over someone's shoulder does not sign in twice.
    pub async fn use_console_totp_step(&self, name: &str, step: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE console_users SET totp_last_step = $1 WHERE name = $2 AND totp_last_step < $1")
            .bind(step)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The console's key `name`, stored as `candidate` if there is none yet
    /// (whoever asks first makes it; everyone reads the same).
    pub async fn console_key(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO console_keys (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(candidate)
        .bind(ts(self.now()))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM console_keys WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    /// When and by whom a link (by its nonce) was used, if it was.
    pub async fn console_link_use(&self, nonce: &str) -> Result<Option<(DateTime<Utc>, String)>, StoreError> {
        let row = sqlx::query("SELECT used_at, used_by FROM console_used_links WHERE nonce = $1")
            .bind(nonce)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((parse_ts(0, &r.try_get::<String, _>("used_at")?)?, r.try_get("used_by")?)))
            .transpose()
    }

    /// Records that a link (by its nonce) is used now by `user`. `None`
    /// the first time; the first use's time and user when it was used
    /// already.
    pub async fn use_console_link(
        &self,
        nonce: &str,
        escalation_id: i64,
        user: &str,
    ) -> Result<Option<(DateTime<Utc>, String)>, StoreError> {
        let done = sqlx::query(
            "INSERT INTO console_used_links (nonce, escalation_id, used_at, used_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .bind(nonce)
        .bind(escalation_id)
        .bind(ts(self.now()))
        .bind(user)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(None);
        }
        self.console_link_use(nonce).await
    }

    /// Counts a failed sign-in; at `threshold` in a row the account locks
    /// until `lock_until`. Returns the failures in a row so far.
    pub async fn console_login_failed(
        &self,
        name: &str,
        threshold: u32,
        lock_until: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE console_users SET failed_logins = failed_logins + 1 WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let failed: i64 = sqlx::query("SELECT failed_logins FROM console_users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("failed_logins"))
            .transpose()?
            .unwrap_or(0);
        if failed >= i64::from(threshold) {
            sqlx::query("UPDATE console_users SET locked_until = $1, failed_logins = 0 WHERE name = $2")
                .bind(ts(lock_until))
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(failed as u32)
    }

    /// Opens a session for a user who signed in.
    pub async fn create_console_session(
        &self,
        token_hash: &str,
        user: &str,
        csrf: &str,
        expires_at: DateTime<Utc>,
        remote: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE console_users SET failed_logins = 0, locked_until = NULL, last_login_at = $1 WHERE name = $2",
        )
        .bind(&now)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, user_name, csrf, created_at, last_seen_at, expires_at, remote) \
             VALUES ($1, $2, $3, $4, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(user)
        .bind(csrf)
        .bind(&now)
        .bind(ts(expires_at))
        .bind(remote)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn console_session(&self, token_hash: &str) -> Result<Option<ConsoleSession>, StoreError> {
        let row = sqlx::query(
            "SELECT user_name, csrf, created_at, last_seen_at, expires_at FROM console_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        Ok(Some(ConsoleSession {
            user: r.try_get("user_name")?,
            csrf: r.try_get("csrf")?,
            created_at: parse_ts(0, &r.try_get::<String, _>("created_at")?)?,
            last_seen_at: parse_ts(0, &r.try_get::<String, _>("last_seen_at")?)?,
            expires_at: parse_ts(0, &r.try_get::<String, _>("expires_at")?)?,
        }))
    }

    /// Marks a session as used now (its idle time starts again).
    pub async fn touch_console_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE console_sessions SET last_seen_at = $1 WHERE token_hash = $2")
            .bind(ts(self.now()))
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn end_console_session(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes sessions past their end or idle since before `idle_since`.
    pub async fn prune_console_sessions(&self, idle_since: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(ts(self.now()))
            .bind(ts(idle_since))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Appends a line to the console's audit.
    pub async fn console_audit(&self, entry: &AuditEntry<'_>) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO console_audit (at, user_name, action, practice_id, case_id, remote, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(ts(self.now()))
        .bind(entry.user)
        .bind(entry.action)
        .bind(entry.practice)
        .bind(entry.case_id)
        .bind(entry.remote)
        .bind(entry.detail.to_string())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// The newest `limit` lines of the audit, newest first; of one case when
    /// `case_id` is given.
    pub async fn console_audit_log(&self, case_id: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut sql =
            String::from("SELECT id, at, user_name, action, practice_id, case_id, remote, detail FROM console_audit");
        if case_id.is_some() {
            sql.push_str(" WHERE case_id = $2");
        }
        sql.push_str(" ORDER BY id DESC LIMIT $1");
        let mut q = sqlx::query(&sql).bind(i64::from(limit));
        if let Some(id) = case_id {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    id,
                    at: parse_ts(id, &r.try_get::<String, _>("at")?)?,
                    user: r.try_get("user_name")?,
                    action: r.try_get("action")?,
                    practice: r.try_get("practice_id")?,
                    case_id: r.try_get("case_id")?,
                    remote: r.try_get("remote")?,
                    detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
                        id,
                        reason: format!("audit detail: {e}"),
                    })?,
                })
            })
            .collect()
    }

    /// One page of the worklist, with the count of every page and the
    /// counts per status. Reads only the page's rows.
    pub async fn case_page(&self, q: &CaseQuery) -> Result<CasePage, StoreError> {
        let (base, args) = where_clause(self.backend, q);
        let count_sql = format!("SELECT status, COUNT(*) AS n FROM cases{base} GROUP BY status");
        let mut count = sqlx::query(&count_sql);
        for a in &args {
            count = count.bind(a);
        }
        let mut counts = Vec::new();
        for r in count.fetch_all(&self.pool).await? {
            counts.push((
                parse_status(0, &r.try_get::<String, _>("status")?)?,
                r.try_get::<i64, _>("n")?,
            ));
        }
        counts.sort();
        let total = counts
            .iter()
            .filter(|(s, _)| q.status.is_none_or(|want| want == *s))
            .map(|(_, n)| n)
            .sum();
        let mut sql = format!("{SELECT_LISTED}{base}");
        let mut args = args;
        if let Some(s) = q.status {
            args.push(s.as_str().to_owned());
            sql.push_str(&format!(" AND status = ${}", args.len()));
        }
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ${} OFFSET ${}",
            order(q),
            args.len() + 1,
            args.len() + 2
        ));
        let mut page = sqlx::query(&sql);
        for a in &args {
            page = page.bind(a);
        }
        let rows = page
            .bind(i64::from(q.limit.max(1)))
            .bind(i64::try_from(q.offset).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        let cases = rows.iter().map(case_from_row).collect::<Result<_, _>>()?;
        let submitted_at = rows
            .iter()
            .map(|r| opt_ts(r, "submitted_at"))
            .collect::<Result<_, _>>()?;
        Ok(CasePage {
            cases,
            total,
            counts,
            submitted_at,
        })
    }

    /// Every case matching the query (its status filter too), in its
    /// order, at most `max`: for the worklist's CSV export and its deadline
    /// filters, which are computed per case from the escalation rules.
    pub async fn cases_matching(
        &self,
        q: &CaseQuery,
        max: u32,
    ) -> Result<Vec<(CaseRecord, Option<DateTime<Utc>>)>, StoreError> {
        let (base, mut args) = where_clause(self.backend, q);
        let mut sql = format!("{SELECT_LISTED}{base}");
        if let Some(s) = q.status {
            args.push(s.as_str().to_owned());
            sql.push_str(&format!(" AND status = ${}", args.len()));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT ${}", order(q), args.len() + 1));
        let mut query = sqlx::query(&sql);
        for a in &args {
            query = query.bind(a);
        }
        let rows = query.bind(i64::from(max)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((case_from_row(r)?, opt_ts(r, "submitted_at")?)))
            .collect()
    }
}

/// An undecided case without a stored deadline: the condition of the
/// partial index `cases_deadline_stale` (migration 20), word for word, so
/// the database reads that index.
const STALE_DEADLINE: &str =
    "status IN ('pending', 'pended_for_info') AND submitted_at IS NOT NULL AND deadline_rules IS NULL";

/// What a case's decision deadline is computed from (the escalation rules'
/// key, its urgency and submission), without the rest of the case, and
/// the version it was read at.
#[derive(Clone, Debug)]
pub struct DeadlineInputs {
    pub id: i64,
    pub version: i64,
    pub practice_id: String,
    pub payer: String,
    pub urgency: crate::case::Urgency,
    pub state: String,
    pub plan_type: String,
    pub submitted_at: DateTime<Utc>,
}

impl Ledger {
    /// Forgets the deadlines stored under other rules than those `rules`
    /// names (the configuration's rules changed), so they are computed
    /// again. Reads one index entry when there are none; writes only when
    /// there are. Returns how many were forgotten.
    pub async fn forget_deadlines_of_other_rules(&self, rules: &str) -> Result<u64, StoreError> {
        const OTHER: &str = "deadline_rules < $1 OR deadline_rules > $1";
        let any = sqlx::query(&format!("SELECT id FROM cases WHERE {OTHER} LIMIT 1"))
            .bind(rules)
            .fetch_optional(&self.pool)
            .await?;
        if any.is_none() {
            return Ok(0);
        }
        let done = sqlx::query(&format!(
            "UPDATE cases SET deadline_at = NULL, deadline_rules = NULL WHERE {OTHER}"
        ))
        .bind(rules)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Undecided, submitted cases without a stored deadline (never
    /// computed, changed since, or forgotten with other rules), at most
    /// `max`.
    pub async fn stale_deadlines(&self, max: u32) -> Result<Vec<DeadlineInputs>, StoreError> {
        let sql = format!(
            "SELECT id, version, practice_id, payer, urgency, {state} AS state, {plan} AS plan_type, submitted_at \
             FROM cases WHERE {STALE_DEADLINE} LIMIT $1",
            state = self.backend.json_text("data", &["coverage", "state"]),
            plan = self.backend.json_text("data", &["coverage", "plan_type"]),
        );
        let rows = sqlx::query(&sql).bind(i64::from(max)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.try_get("id")?;
                let corrupt = |reason: String| StoreError::Corrupt { id, reason };
                let urgency: String = r.try_get("urgency")?;
                Ok(DeadlineInputs {
                    id,
                    version: r.try_get("version")?,
                    practice_id: r.try_get("practice_id")?,
                    payer: r.try_get("payer")?,
                    urgency: urgency.parse().map_err(|e| corrupt(format!("urgency: {e}")))?,
                    state: r.try_get::<Option<String>, _>("state")?.unwrap_or_default(),
                    plan_type: r.try_get::<Option<String>, _>("plan_type")?.unwrap_or_default(),
                    submitted_at: opt_ts(r, "submitted_at")?.ok_or_else(|| corrupt("no submission time".into()))?,
                })
            })
            .collect()
    }

    /// Stores each case's decision deadline (None: its practice has no
    /// rules) as computed under the rules `rules` names, in one statement
    /// per 300 cases. A case changed since its inputs were read (its
    /// version moved on) is left without one, for the next look. Returns
    /// how many were stored.
    pub async fn store_deadlines(
        &self,
        rules: &str,
        deadlines: &[(i64, i64, Option<DateTime<Utc>>)],
    ) -> Result<u64, StoreError> {
        let mut done = 0;
        for chunk in deadlines.chunks(300) {
            let (set, ids) = super::case_when(chunk.len(), 2, 3);
            let sql = format!(
                "UPDATE cases SET deadline_at = {}, deadline_rules = $1 WHERE id IN ({ids}) AND version = {}",
                set[0], set[1]
            );
            let mut q = sqlx::query(&sql).bind(rules);
            for (id, v, d) in chunk {
                q = q.bind(*id).bind(d.map(ts)).bind(*v);
            }
            done += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(done)
    }
}

/// One payer of one practice, for the console's payers page.
#[derive(Clone, Debug, Default)]
pub struct PayerActivity {
    pub practice_id: String,
    pub payer: String,
    /// Cases per status.
    pub statuses: Vec<(CaseStatus, i64)>,
    /// The earliest submission among cases the payer has not decided.
    pub oldest_pending_since: Option<DateTime<Utc>>,
    /// Jobs queued (waiting for a worker or their time) and running.
    pub jobs_queued: i64,
    pub jobs_running: i64,
    /// Jobs that failed (an attempt, or for good) in the window asked for.
    pub jobs_failed: i64,
    /// Per job kind, the last time one finished well.
    pub last_success: Vec<(String, DateTime<Utc>)>,
    /// An active `payer_paused` escalation: the circuit breaker opened
    /// (when, and its summary).
    pub paused: Option<(DateTime<Utc>, String)>,
}

/// ` AND practice_id IN ($n, …)` for the practices a viewer may see.
fn practice_filter(allowed: Option<&[String]>, args: &mut Vec<String>) -> String {
    match allowed {
        None => String::new(),
        Some([]) => " AND 1 = 0".to_owned(),
        Some(list) => {
            let mut marks = Vec::new();
            for p in list {
                args.push(p.clone());
                marks.push(format!("${}", args.len()));
            }
            format!(" AND practice_id IN ({})", marks.join(", "))
        }
    }
}

impl Ledger {
    /// What each (practice, payer) has going on: cases per status, the
    /// oldest undecided submission, the jobs waiting and running, failures
    /// since `failures_since`, the last success per job kind, and whether
    /// the payer is paused. Only `allowed` practices (`None`: all).
    pub async fn payer_activity(
        &self,
        allowed: Option<&[String]>,
        failures_since: DateTime<Utc>,
    ) -> Result<Vec<PayerActivity>, StoreError> {
        use std::collections::BTreeMap;
        let mut rows: BTreeMap<(String, String), PayerActivity> = BTreeMap::new();
        fn entry<'m>(
            m: &'m mut BTreeMap<(String, String), PayerActivity>,
            r: &AnyRow,
        ) -> Result<&'m mut PayerActivity, StoreError> {
            let practice: String = r.try_get("practice_id")?;
            let payer: String = r.try_get("payer")?;
            Ok(m.entry((practice.clone(), payer.clone()))
                .or_insert_with(|| PayerActivity {
                    practice_id: practice,
                    payer,
                    ..Default::default()
                }))
        }
        let fetch = |sql: String, args: Vec<String>| async move {
            let mut q = sqlx::query(&sql);
            for a in &args {
                q = q.bind(a.clone());
            }
            q.fetch_all(&self.pool).await
        };

        let mut args = Vec::new();
        let filter = practice_filter(allowed, &mut args);
        let sql = format!(
            "SELECT practice_id, payer, status, COUNT(*) AS n, \
             MIN(CASE WHEN status IN ('pending', 'pended_for_info') THEN submitted_at END) AS oldest \
             FROM cases WHERE 1 = 1{filter} GROUP BY practice_id, payer, status"
        );
        for r in fetch(sql, args).await? {
            let status = parse_status(0, &r.try_get::<String, _>("status")?)?;
            let n: i64 = r.try_get("n")?;
            let oldest = opt_ts(&r, "oldest")?;
            let e = entry(&mut rows, &r)?;
            e.statuses.push((status, n));
            if let Some(t) = oldest {
                e.oldest_pending_since = Some(e.oldest_pending_since.map_or(t, |o| o.min(t)));
            }
        }

        let mut args = Vec::new();
        let filter = practice_filter(allowed, &mut args);
        let sql = format!(
            "SELECT practice_id, payer, state, COUNT(*) AS n FROM jobs \
             WHERE payer IS NOT NULL AND state IN ('queued', 'leased'){filter} GROUP BY practice_id, payer, state"
        );
        for r in fetch(sql, args).await? {
            let state: String = r.try_get("state")?;
            let n: i64 = r.try_get("n")?;
            let e = entry(&mut rows, &r)?;
            if state == "queued" {
                e.jobs_queued = n;
            } else {
                e.jobs_running = n;
            }
        }

        let mut args = vec![ts(failures_since)];
        let filter = practice_filter(allowed, &mut args);
        let sql = format!(
            "SELECT practice_id, payer, COUNT(*) AS n FROM jobs \
             WHERE payer IS NOT NULL AND last_error IS NOT NULL AND updated_at >= $1{filter} \
             GROUP BY practice_id, payer"
        );
        for r in fetch(sql, args).await? {
            let n: i64 = r.try_get("n")?;
            entry(&mut rows, &r)?.jobs_failed = n;
        }

        let mut args = Vec::new();
        let filter = practice_filter(allowed, &mut args);
        let sql = format!(
            "SELECT practice_id, payer, kind, MAX(finished_at) AS at FROM jobs \
             WHERE payer IS NOT NULL AND state = 'done'{filter} GROUP BY practice_id, payer, kind"
        );
        for r in fetch(sql, args).await? {
            let kind: String = r.try_get("kind")?;
            let at = opt_ts(&r, "at")?;
            if let Some(at) = at {
                entry(&mut rows, &r)?.last_success.push((kind, at));
            }
        }

        let mut args = Vec::new();
        let filter = practice_filter(allowed, &mut args);
        let sql = format!(
            "SELECT practice_id, payer, opened_at, summary FROM escalations \
             WHERE reason = 'payer_paused' AND state IN ('open', 'acknowledged') AND payer IS NOT NULL{filter}"
        );
        for r in fetch(sql, args).await? {
            let opened = parse_ts(0, &r.try_get::<String, _>("opened_at")?)?;
            let summary: String = r.try_get("summary")?;
            entry(&mut rows, &r)?.paused = Some((opened, summary));
        }
        Ok(rows.into_values().collect())
    }
}
