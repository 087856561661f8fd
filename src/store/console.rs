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

use super::{case_from_row, parse_status, parse_ts, ts, Ledger, StoreError, SELECT_CASE};
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
    pub limit: u32,
    pub offset: u64,
}

/// One page of the worklist.
#[derive(Clone, Debug)]
pub struct CasePage {
    pub cases: Vec<CaseRecord>,
    /// Cases matching the query, every page.
    pub total: i64,
    /// Cases per status for the query without its status filter.
    pub counts: Vec<(CaseStatus, i64)>,
}

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
    })
}

const SELECT_USER: &str = "SELECT name, role, practices, password_hash, disabled, failed_logins, locked_until, \
     created_at, password_changed_at, last_login_at FROM console_users";

/// The WHERE clause (without the status filter) and its arguments.
fn where_clause(q: &CaseQuery) -> (String, Vec<String>) {
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
        sql.push_str(&format!(
            " AND (payer_ref = ${exact} OR case_ref LIKE ${} ESCAPE '\\')",
            args.len()
        ));
    }
    (sql, args)
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
        let (base, args) = where_clause(q);
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
        let mut sql = format!("{SELECT_CASE}{base}");
        let mut args = args;
        if let Some(s) = q.status {
            args.push(s.as_str().to_owned());
            sql.push_str(&format!(" AND status = ${}", args.len()));
        }
        sql.push_str(&format!(
            " ORDER BY updated_at DESC, id DESC LIMIT ${} OFFSET ${}",
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
        Ok(CasePage { cases, total, counts })
    }
}
