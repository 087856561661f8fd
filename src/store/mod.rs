//! The ledger: cases, their decisions and their append-only event log.
//!
//! Only this module (and `queue`, over the same pool) speaks SQL. It goes
//! through sqlx's `Any` driver with `$N` placeholders and SQL that SQLite and
//! PostgreSQL read alike; what differs (the schema, row locks, the migration
//! lock) is in [`backend`]. SQLite is the embedded default: WAL, a busy
//! timeout, foreign keys on, the file readable by its owner only. PostgreSQL
//! is the database several daemons share.
//!
//! Invariant: a change to a case and the event that records it commit in one
//! transaction, and no code path updates or deletes an event (the database
//! refuses it too, by trigger).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sqlx::{AnyPool, Row};

use crate::case::{CaseData, CaseRecord, CaseStatus, Decision};
use row::{Arg, ReadRow, Source as _};

mod api;
mod backend;
mod case_view;
mod console;
mod escalations;
mod facts;
mod metrics;
mod owner;
mod plan;
mod report;
mod requirement;
mod row;
mod schema;
mod slots;
mod sqlite_read;
mod subscriptions;
pub use api::{
    decision_json, ApiToken, ClaimedWebhook, SyncCursor, TokenScope, WebhookDelivery, WebhookOutcome, WEBHOOK_STATUSES,
};
pub use backend::{Backend, SCHEMES};
pub use case_view::{case_view_in_place, CaseName, CaseView, Lookup};
pub use console::{
    AuditEntry, AuditRecord, CasePage, CaseQuery, ConsoleSession, ConsoleUser, DeadlineInputs, DeadlineRange,
    PayerActivity,
};
pub use escalations::{
    Advance, CaseForRules, ClaimedMail, Escalation, EscalationHook, EscalationState, NewEscalation, NextCheck,
    OutboxEntry, OutboxState, RulesCursor, SendOutcome, Step,
};
pub use metrics::OldestPending;
pub use owner::{Owner, SubmitLease, SUBMIT_LEASE, SUBMIT_LEASE_RENEW};
pub use plan::{bulk_import_queries, hot_queries, BulkStats, HotQuery, PlanArg};
pub use report::{report_cases_sql, report_queries, AttentionEvent, CaseFacts, FactsSource, PendEpisode, ReportScope};
pub use requirement::RequirementDecision;
pub use schema::{migrate, redact_url, schema_status, AppliedMigration, SchemaStatus};
pub use slots::SlotLease;
pub use subscriptions::{SubscriptionClaim, SubscriptionRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the ledger at {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("`{url}` is not a database URL precert knows; use {SCHEMES}")]
    UnknownUrl { url: String },
    #[error(
        "{} is not a SQLite database (it does not begin as one); is `database_url` naming the ledger?",
        path.display()
    )]
    NotSqlite { path: PathBuf },
    #[error("cannot prepare the data directory {}: {source}", path.display())]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot bring the ledger's schema up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the ledger's schema is newer than this precert: migration {version} was applied by a later version; \
         upgrade precert (every daemon on this database) before starting it"
    )]
    NewerSchema { version: i64 },
    #[error("no {0}")]
    NotFound(String),
    #[error("case {case} cannot move from {from} to {to} (from {from} it may move to: {allowed})")]
    IllegalTransition {
        case: String,
        from: CaseStatus,
        to: CaseStatus,
        allowed: String,
    },
    #[error("case {case} was changed by someone else meanwhile (it is now {now}); nothing was written, try again")]
    Conflict { case: String, now: CaseStatus },
    #[error("case {case} is being submitted by {holder} since {since} (its lease runs to {until}); it was left alone")]
    Owned {
        case: String,
        holder: String,
        since: String,
        until: String,
    },
    #[error(
        "case {case} is no longer this submission's (lease {token}; the case is now at lease {now}{}): nothing was changed",
        holder.as_deref().map(|h| format!(", held by {h}")).unwrap_or_default()
    )]
    StaleLease {
        case: String,
        token: i64,
        now: i64,
        holder: Option<String>,
    },
    #[error(
        "the payer reference {reference} already belongs to case {other}; it is not recorded for case {case} as well"
    )]
    ReferenceTaken {
        case: String,
        reference: String,
        other: String,
    },
    #[error("the stored record of case {id} cannot be read: {reason}")]
    Corrupt { id: i64, reason: String },
    #[error("ledger: {0}")]
    Db(#[from] sqlx::Error),
    /// From a read through SQLite's C API (`store::sqlite_read`).
    #[error("ledger (SQLite error {code}): {message}")]
    Sqlite { code: i32, message: String },
}

impl StoreError {
    pub fn is_illegal_transition(&self) -> bool {
        matches!(self, StoreError::IllegalTransition { .. })
    }

    /// A write from a submission whose lease was superseded.
    pub fn is_stale_lease(&self) -> bool {
        matches!(self, StoreError::StaleLease { .. })
    }
}

/// Who made a change, for the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// A person at the command line.
    pub fn user(name: &str) -> Self {
        Actor(format!("user:{name}"))
    }

    /// The person running this process, as the OS knows them.
    pub fn current_user() -> Self {
        let name = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        match name {
            Some(n) => Actor::user(&n),
            // SAFETY: getuid has no preconditions and cannot fail.
            None => Actor::user(&format!("uid{}", unsafe { libc::getuid() })),
        }
    }

    /// precert itself, acting on its own rules: `system:escalations`.
    pub fn system(part: &str) -> Self {
        Actor(format!("system:{part}"))
    }

    /// A practice's system through the intake API: `api:PRACTICE/TOKEN`.
    pub fn api(practice: &str, token: &str) -> Self {
        Actor(format!("api:{practice}/{token}"))
    }

    /// A scheduled or queued job: `job:poll#42`.
    pub fn job(name: &str, id: i64) -> Self {
        Actor(format!("job:{name}#{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Imported,
    Updated,
    StatusChanged,
    DecisionRecorded,
    Run,
    Email,
    Letter,
    Note,
    /// Whether the payer wants a pre-cert, and who said so (rules, CRD, a person).
    RequirementDecided,
    /// The payer's API answered off its specification; the problems are listed.
    PayerNonconformant,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Imported => "imported",
            EventKind::Updated => "updated",
            EventKind::StatusChanged => "status_changed",
            EventKind::DecisionRecorded => "decision_recorded",
            EventKind::Run => "run",
            EventKind::Email => "email",
            EventKind::Letter => "letter",
            EventKind::Note => "note",
            EventKind::RequirementDecided => "requirement_decided",
            EventKind::PayerNonconformant => "payer_nonconformant",
        }
    }
}

/// One entry of a case's audit trail.
#[derive(Clone, Debug)]
pub struct CaseEvent {
    pub id: i64,
    pub case_id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub from_status: Option<CaseStatus>,
    pub to_status: Option<CaseStatus>,
    pub actor: String,
    pub detail: Value,
}

/// What importing one case did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    Created {
        id: i64,
    },
    /// Already imported with the same data: nothing written.
    Unchanged {
        id: i64,
    },
    /// Not yet submitted, so the new data replaced the old.
    Updated {
        id: i64,
    },
    /// Already with the payer: its data can no longer change by import.
    Refused {
        id: i64,
        status: CaseStatus,
    },
}

/// A letter kept for a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Letter {
    /// `letter` (the decision letter).
    pub kind: String,
    /// Relative to the data directory.
    pub stored_path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub media_type: String,
    pub fetched_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Default)]
pub struct CaseFilter {
    pub practice: Option<String>,
    pub payer: Option<String>,
    pub status: Option<CaseStatus>,
}

/// The clock the ledger stamps changes with; tests inject their own.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

#[derive(Clone)]
pub struct Ledger {
    pool: AnyPool,
    clock: Clock,
    /// SQLite (write transactions take the write lock when they begin) or
    /// PostgreSQL (they lock the rows they read to change).
    backend: Backend,
    /// Raises escalations inside status changes; shared by every clone.
    hook: Arc<std::sync::RwLock<Option<Arc<dyn EscalationHook>>>>,
    /// `(case, token)`: writes to that case hold only while its submission
    /// lease token is still this one (see [`Ledger::fenced`]).
    fence: Option<(i64, i64)>,
    /// The URL it was opened with: a report on SQLite reads through a
    /// connection of its own (`report::report_cases_of`).
    url: Arc<str>,
}

/// "Asked, nothing new" stamps a poll gathers and writes together
/// ([`Ledger::mark_polled_many`]) rather than one statement per inquiry.
/// A stamp only says when the payer was last asked; one lost to a crash
/// before its flush makes the case look asked earlier, and loses no
/// decision (answers that change a case are written at once).
#[derive(Debug, Default)]
pub struct PollStamps {
    pending: std::sync::Mutex<Vec<(i64, CaseStatus, DateTime<Utc>)>>,
}

impl PollStamps {
    /// The case `id` was asked about at `at`, in `status`, and the payer
    /// said nothing new.
    pub fn push(&self, id: i64, status: CaseStatus, at: DateTime<Utc>) {
        self.pending.lock().expect("stamps lock").push((id, status, at));
    }

    /// Writes every stamp gathered so far; how many cases were stamped.
    pub async fn flush(&self, ledger: &Ledger) -> Result<u64, StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().expect("stamps lock"));
        if taken.is_empty() {
            return Ok(0);
        }
        ledger.mark_polled_many(&taken).await
    }
}

/// A time as the ledger stores it on both backends: UTC RFC 3339 text with
/// microseconds (`2026-12-01T15:00:00.000000Z`), one fixed width, so times
/// compare and sort as text (byte order; PostgreSQL's columns are `"C"`).
/// The queue stores its times the same way, through this function.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The SQL of a batched `UPDATE cases … WHERE id IN (…)` over `rows` rows,
/// each bound as `width` parameters from `$first` on: the row's case id,
/// then its values. One `CASE id WHEN $id THEN $value … END` per value
/// column (`width - 1` of them), and the id list.
pub(crate) fn case_when(rows: usize, first: usize, width: usize) -> (Vec<String>, String) {
    let mut cases = vec![String::from("CASE id"); width - 1];
    let mut ids = Vec::with_capacity(rows);
    for i in 0..rows {
        let id = first + width * i;
        for (k, case) in cases.iter_mut().enumerate() {
            case.push_str(&format!(" WHEN ${id} THEN ${}", id + 1 + k));
        }
        ids.push(format!("${id}"));
    }
    for case in &mut cases {
        case.push_str(" END");
    }
    (cases, ids.join(", "))
}

/// A stored time back; the error says what was found.
pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("timestamp `{s}`: {e}"))
}

fn parse_ts(id: i64, s: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_time(s).map_err(|reason| StoreError::Corrupt { id, reason })
}

fn parse_status(id: i64, s: &str) -> Result<CaseStatus, StoreError> {
    s.parse()
        .map_err(|e: crate::case::status::UnknownStatus| StoreError::Corrupt {
            id,
            reason: e.to_string(),
        })
}

/// The file behind a `sqlite:` URL, if it names one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        None
    } else {
        Some(PathBuf::from(path))
    }
}

#[cfg(unix)]
fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn restrict(_: &Path, _: u32) -> std::io::Result<()> {
    Ok(())
}

/// Creates a directory for PHI (and its parents) readable by the owner only.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    restrict(path, 0o700)
}

impl Ledger {
    /// Opens (creating if needed) the ledger and runs pending migrations,
    /// under the migration lock (see [`migrate`]).
    pub async fn open(url: &str) -> Result<Ledger, StoreError> {
        Ledger::open_pooled(url, schema::POOL_CONNECTIONS).await
    }

    /// A ledger of one connection, for a command that asks a few questions
    /// one after the other (`precert cases show`). A pool of more would
    /// open a second connection for the next query while the first goes
    /// back (sqlx returns a connection by a task of its own, after a ping):
    /// a SQLite open and its schema read, ~5 ms of a command of ~15. Never
    /// for a caller that reads a stream while it asks anything else: it
    /// would wait for itself.
    pub async fn open_single(url: &str) -> Result<Ledger, StoreError> {
        Ledger::open_pooled(url, 1).await
    }

    async fn open_pooled(url: &str, connections: u32) -> Result<Ledger, StoreError> {
        let (backend, pool) = schema::connect(url, connections).await?;
        if let Err(e) = schema::run_migrations(backend, url, &pool).await {
            pool.close().await;
            return Err(e);
        }
        Ok(Ledger {
            pool,
            clock: Arc::new(Utc::now),
            backend,
            hook: Arc::default(),
            fence: None,
            url: url.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that will write. On SQLite it begins IMMEDIATE: a
    /// deferred one that reads first and then writes fails with "database is
    /// locked" (SQLITE_BUSY_SNAPSHOT, which the busy timeout cannot wait out)
    /// when another process wrote in between.
    /// On PostgreSQL it is an ordinary (read committed) transaction; what
    /// it reads to change, it reads under a row lock ([`Backend::lock_row`]).
    pub(crate) async fn begin_write(&self) -> Result<Tx<'static>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// For a fenced handle writing to its case: the lease must still be
    /// the case's.
    /// Any other handle may not change a case whose submission someone
    /// else owns now.
    async fn check_fence(&self, tx: &mut Tx<'_>, case: &str, id: i64) -> Result<(), StoreError> {
        match self.fence {
            Some((fenced, token)) if fenced == id => owner::check_fence(tx, case, id, token).await,
            _ => owner::check_unowned(tx, case, id, self.now()).await,
        }
    }

    /// Stamps changes with `clock` instead of the wall clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The connection pool, for the queue (`crate::queue`), which keeps its
    /// tables in the ledger's database so a job and a case change can share
    /// a transaction later.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores a validated case, or recognises it from an earlier import by
    /// its practice and case reference. With `precert_required`, a new case
    /// moves on at once: to `ready` (its data is complete) or `not_required`.
    pub async fn import_case(
        &self,
        data: &CaseData,
        precert_required: Option<bool>,
        actor: &Actor,
    ) -> Result<ImportOutcome, StoreError> {
        let mut outcomes = self.import_cases(&[(data.clone(), precert_required)], actor).await?;
        Ok(outcomes.remove(0))
    }

    /// [`Ledger::import_case`] for a batch, in one transaction: all of
    /// them or (on a database error) none. One outcome per case, in order.
    ///
    /// A few statements per 50 cases, not three per case: one read of the
    /// batch's cases already stored, a multi-row insert of the new ones
    /// and one of their events. A case already stored whose data or status
    /// must change (a re-import), a case twice in the batch, and a case
    /// another importer inserted meanwhile go the way of one case at a time
    /// ([`Ledger::import_case`]'s), in the same transaction.
    ///
    /// Several importers of overlapping files at once (PostgreSQL) write
    /// each batch in the order of the cases' keys, so they wait for each
    /// other in one order. Should the database still abort a batch to
    /// break a deadlock, the batch is tried again from the start: its
    /// transaction wrote nothing, and the other importers' cases are found.
    pub async fn import_cases(
        &self,
        cases: &[(CaseData, Option<bool>)],
        actor: &Actor,
    ) -> Result<Vec<ImportOutcome>, StoreError> {
        let mut attempt = 1;
        loop {
            match self.import_cases_once(cases, actor).await {
                Err(StoreError::Db(e)) if attempt < IMPORT_ATTEMPTS && is_deadlock(&e) => {
                    tracing::debug!(attempt, "an import batch met another importer's rows; trying again");
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn import_cases_once(
        &self,
        cases: &[(CaseData, Option<bool>)],
        actor: &Actor,
    ) -> Result<Vec<ImportOutcome>, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let mut outcomes: Vec<Option<ImportOutcome>> = vec![None; cases.len()];
        let stored = self.stored_of(&mut tx, cases).await?;
        // The cases to insert: (index, status it starts in, its data as JSON).
        let mut fresh: Vec<(usize, CaseStatus, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Cases that take the one-at-a-time way, in order.
        let mut slow = Vec::new();
        for (i, (data, required)) in cases.iter().enumerate() {
            let path = import_path(*required);
            let first = path_end(data, path)?;
            let json = serde_json::to_string(data).expect("case data serialises");
            if !seen.insert((data.practice_id.as_str(), data.case_ref.as_str())) {
                slow.push(i);
                continue;
            }
            match stored.get(&(data.practice_id.clone(), data.case_ref.clone())) {
                None => fresh.push((i, first, json)),
                // Already imported with the same data and nothing to move:
                // nothing to write.
                Some(s) if s.data == json && (s.status != CaseStatus::New || path.is_empty()) => {
                    outcomes[i] = Some(ImportOutcome::Unchanged { id: s.id })
                }
                Some(s) if s.data != json && !s.status.is_before_submission() => {
                    outcomes[i] = Some(ImportOutcome::Refused {
                        id: s.id,
                        status: s.status,
                    })
                }
                Some(_) => slow.push(i),
            }
        }
        // A statement binds a few hundred values: SQLite looks each
        // parameter's name up in a list (`sqlite3_bind_parameter_name`, as
        // sqlx binds), so a statement's binding grows with the square of its
        // parameters; 50 cases (500 values, 250 of their events at most) is
        // a fraction of the statement's own cost, and each size of
        // statement is prepared once and reused (sqlx's statement cache).
        // Every importer writes a batch's cases in the order of their keys,
        // whatever the order of its file: two importers of overlapping
        // files then wait for each other's rows in one order, never in a
        // circle (a deadlock PostgreSQL would break by aborting one).
        let by_key = |i: &usize| (cases[*i].0.practice_id.as_str(), cases[*i].0.case_ref.as_str());
        fresh.sort_by(|a, b| by_key(&a.0).cmp(&by_key(&b.0)));
        for chunk in fresh.chunks(ROWS_A_STATEMENT) {
            let created = insert_cases(&mut tx, cases, chunk, &now).await?;
            let mut events = Vec::with_capacity(chunk.len() * 3);
            for (i, _, _) in chunk {
                let data = &cases[*i].0;
                match created.get(&(data.practice_id.as_str(), data.case_ref.as_str())) {
                    Some(&id) => {
                        outcomes[*i] = Some(ImportOutcome::Created { id });
                        events.push((id, EventKind::Imported, None, CaseStatus::New));
                        let mut from = CaseStatus::New;
                        for &to in import_path(cases[*i].1) {
                            events.push((id, EventKind::StatusChanged, Some(from), to));
                            from = to;
                        }
                    }
                    // Another importer stored it first (PostgreSQL; SQLite
                    // has one writer): the key decided, and the case is found.
                    None => slow.push(*i),
                }
            }
            insert_import_events(&mut tx, &events, actor, &now).await?;
        }
        // In key order too (and, for a case twice in the batch, in the
        // file's order).
        slow.sort_by(|a, b| by_key(a).cmp(&by_key(b)).then(a.cmp(b)));
        for i in slow {
            let (data, required) = &cases[i];
            outcomes[i] = Some(self.import_in_tx(&mut tx, data, *required, actor, &now).await?);
        }
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every case of the batch has an outcome"))
            .collect())
    }

    /// The batch's cases already in the ledger, by (practice, case ID), in
    /// one read a practice (and 200 cases). Without a row lock: its
    /// verdicts hold without one (a case's data or status past submission
    /// does not come back), and every write goes through
    /// [`Ledger::import_in_tx`], which locks its one row. Locking the whole
    /// read, in the order the database scans it, made two importers of one
    /// file deadlock against each other's one-row locks.
    async fn stored_of(
        &self,
        tx: &mut Tx<'_>,
        cases: &[(CaseData, Option<bool>)],
    ) -> Result<std::collections::HashMap<(String, String), Stored>, StoreError> {
        let mut by_practice: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (data, _) in cases {
            by_practice
                .entry(data.practice_id.as_str())
                .or_default()
                .push(data.case_ref.as_str());
        }
        let mut stored = std::collections::HashMap::new();
        for (practice, refs) in by_practice {
            for refs in refs.chunks(4 * ROWS_A_STATEMENT) {
                let sql = stored_sql(refs.len());
                let mut q = sqlx::query(&sql).bind(practice);
                for r in refs {
                    q = q.bind(*r);
                }
                for row in q.fetch_all(&mut **tx).await? {
                    let id: i64 = row.try_get("id")?;
                    let s = Stored {
                        id,
                        status: parse_status(id, row.try_get::<String, _>("status")?.as_str())?,
                        data: row.try_get("data")?,
                    };
                    stored.insert((practice.to_owned(), row.try_get("case_ref")?), s);
                }
            }
        }
        Ok(stored)
    }

    async fn import_in_tx(
        &self,
        tx: &mut Tx<'_>,
        data: &CaseData,
        precert_required: Option<bool>,
        actor: &Actor,
        now: &str,
    ) -> Result<ImportOutcome, StoreError> {
        let json = serde_json::to_string(data).expect("case data serialises");
        let select = format!(
            "SELECT id, status, data, version FROM cases WHERE practice_id = $1 AND case_ref = $2{}",
            self.backend.lock_row()
        );
        let find = || sqlx::query(&select).bind(&data.practice_id).bind(&data.case_ref);
        let mut existing = find().fetch_optional(&mut **tx).await?;
        let mut created = None;
        // The import's verdict on whether a pre-cert is needed moves a case
        // that nobody has triaged yet.
        let path = import_path(precert_required);
        // A new case is written with the status its path ends at, and the
        // path's events with its `imported` one, in two statements.
        let first = path_end(data, path)?;
        if existing.is_none() {
            // Two importers of the same case at once (PostgreSQL; SQLite has
            // one writer): the key decides, and the later one finds the case.
            created = sqlx::query(
                "INSERT INTO cases (practice_id, case_ref, payer, status, urgency, service_start, service_end, data, \
                 created_at, updated_at, next_check_at, version, expected_cents) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9, $10, $11) ON CONFLICT (practice_id, case_ref) DO NOTHING RETURNING id",
            )
            .bind(&data.practice_id)
            .bind(&data.case_ref)
            .bind(&data.coverage.payer)
            .bind(first.as_str())
            .bind(data.urgency.as_str())
            .bind(data.service_dates.start.to_string())
            .bind(data.service_dates.end.to_string())
            .bind(&json)
            .bind(now)
            .bind(1 + path.len() as i64)
            .bind(expected_cents(data))
            .fetch_optional(&mut **tx)
            .await?;
            if created.is_none() {
                existing = find().fetch_optional(&mut **tx).await?;
            }
        }
        let (id, status, version, outcome) = match existing {
            None => {
                let id: i64 = created
                    .ok_or_else(|| StoreError::NotFound(format!("case {}", key(data))))?
                    .try_get("id")?;
                let mut steps = vec![(EventKind::Imported, None, CaseStatus::New, json!({}))];
                let mut from = CaseStatus::New;
                for &to in path {
                    steps.push((
                        EventKind::StatusChanged,
                        Some(from),
                        to,
                        json!({ "note": "set by import" }),
                    ));
                    from = to;
                }
                let values: Vec<String> = (0..steps.len())
                    .map(|i| {
                        let b = 7 * i;
                        format!(
                            "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                            b + 1,
                            b + 2,
                            b + 3,
                            b + 4,
                            b + 5,
                            b + 6,
                            b + 7
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO case_events (case_id, at, kind, from_status, to_status, actor, detail) VALUES {}",
                    values.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for (kind, from, to, detail) in &steps {
                    q = q
                        .bind(id)
                        .bind(now)
                        .bind(kind.as_str())
                        .bind(from.map(|s| s.as_str()))
                        .bind(to.as_str())
                        .bind(actor.as_str())
                        .bind(detail.to_string());
                }
                q.execute(&mut **tx).await?;
                facts::refold(tx, &[id]).await?;
                (id, first, 1 + path.len() as i64, ImportOutcome::Created { id })
            }
            Some(row) => {
                let id: i64 = row.try_get("id")?;
                let status = parse_status(id, row.try_get::<String, _>("status")?.as_str())?;
                let version: i64 = row.try_get("version")?;
                let stored: String = row.try_get("data")?;
                if stored == json {
                    (id, status, version, ImportOutcome::Unchanged { id })
                } else if !status.is_before_submission() {
                    return Ok(ImportOutcome::Refused { id, status });
                } else {
                    let changed = changed_fields(&stored, &json);
                    update_case_data(tx, id, version, data, &json, now).await?;
                    insert_event(
                        tx,
                        id,
                        now,
                        EventKind::Updated,
                        None,
                        None,
                        actor,
                        &json!({ "changed": changed }),
                    )
                    .await?;
                    (id, status, version + 1, ImportOutcome::Updated { id })
                }
            }
        };
        // A case stored earlier and still untriaged moves on now.
        if status == CaseStatus::New && !matches!(outcome, ImportOutcome::Created { .. }) {
            let (mut from, mut version) = (status, version);
            for &to in path {
                let detail = json!({ "note": "set by import" });
                set_status(tx, id, &key(data), from, version, to, now, actor, &detail).await?;
                from = to;
                version += 1;
            }
        }
        Ok(outcome)
    }

    /// Moves a case to `to`, refusing any move the status graph does not
    /// allow. Returns the status it moved from.
    pub async fn transition(
        &self,
        id: i64,
        to: CaseStatus,
        actor: &Actor,
        note: Option<&str>,
    ) -> Result<CaseStatus, StoreError> {
        let at = self.now();
        let now = ts(at);
        let mut tx = self.begin_write().await?;
        let (case_key, from, version) = current(&mut tx, id).await?;
        self.check_fence(&mut tx, &case_key, id).await?;
        let detail = match note {
            Some(n) => json!({ "note": n }),
            None => json!({}),
        };
        set_status(&mut tx, id, &case_key, from, version, to, &now, actor, &detail).await?;
        let queued = self.escalate_in_tx(&mut tx, id, from, to, note, at).await?;
        tx.commit().await?;
        self.mail_queued(queued);
        Ok(from)
    }

    fn mail_queued(&self, queued: bool) {
        if queued {
            if let Some(h) = self.hook() {
                h.mail_queued();
            }
        }
    }

    /// Records the payer's decision and the status it implies, together.
    pub async fn record_decision(
        &self,
        id: i64,
        decision: &Decision,
        to: CaseStatus,
        actor: &Actor,
    ) -> Result<(), StoreError> {
        let at = self.now();
        let now = ts(at);
        let mut tx = self.begin_write().await?;
        let (case_key, from, version) = current(&mut tx, id).await?;
        self.check_fence(&mut tx, &case_key, id).await?;
        if from != to && !from.can_move_to(to) {
            return Err(illegal(&case_key, from, to));
        }
        let decision_json = serde_json::to_string(decision).expect("decision serialises");
        let done = sqlx::query(
            "UPDATE cases SET status = $1, decision = $2, version = version + 1, deadline_at = NULL, deadline_rules = NULL, updated_at = $3, next_check_at = $3 \
             WHERE id = $4 AND version = $5",
        )
        .bind(to.as_str())
        .bind(&decision_json)
        .bind(&now)
        .bind(id)
        .bind(version)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(conflict(&mut tx, id, &case_key).await);
        }
        if to != CaseStatus::Submitting {
            owner::clear_owner(&mut tx, id).await?;
        }
        let detail = json!({
            "auth_number": decision.auth_number,
            "denial_code": decision.denial.as_ref().and_then(|d| d.code.clone()),
            "source": decision.source,
        });
        let moved = (from != to).then_some(to);
        insert_event(
            &mut tx,
            id,
            &now,
            EventKind::DecisionRecorded,
            moved.map(|_| from),
            moved,
            actor,
            &detail,
        )
        .await?;
        let queued = self.escalate_in_tx(&mut tx, id, from, to, None, at).await?;
        tx.commit().await?;
        self.mail_queued(queued);
        Ok(())
    }

    /// Adds an event that changes nothing else (a run, an e-mail, a note).
    pub async fn append_event(
        &self,
        id: i64,
        kind: EventKind,
        actor: &Actor,
        detail: &Value,
    ) -> Result<i64, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        current(&mut tx, id).await?;
        let event = insert_event(&mut tx, id, &now, kind, None, None, actor, detail).await?;
        tx.commit().await?;
        Ok(event)
    }

    /// The payer was asked about the case and said nothing new: one
    /// statement stamps `last_polled_at` (no event: the timeline records
    /// changes). False when the case is no longer in `status` (it changed
    /// meanwhile, and that change has its own event).
    pub async fn mark_polled(&self, id: i64, status: CaseStatus) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE cases SET last_polled_at = $1 WHERE id = $2 AND status = $3")
            .bind(ts(self.now()))
            .bind(id)
            .bind(status.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Many "asked, nothing new" stamps at once (a poll's page of them,
    /// see [`PollStamps`]): one statement per 300 cases of a status, each
    /// case stamped with its own time, and only while it is still in the
    /// status it was asked in. How many cases were stamped.
    pub async fn mark_polled_many(&self, stamps: &[(i64, CaseStatus, DateTime<Utc>)]) -> Result<u64, StoreError> {
        let mut done = 0;
        for status in CaseStatus::ALL {
            let of_status: Vec<_> = stamps.iter().filter(|(_, s, _)| *s == status).collect();
            for chunk in of_status.chunks(300) {
                let (at, ids) = case_when(chunk.len(), 2, 2);
                let sql = format!(
                    "UPDATE cases SET last_polled_at = {} WHERE status = $1 AND id IN ({ids})",
                    at[0]
                );
                let mut q = sqlx::query(&sql).bind(status.as_str());
                for (id, _, t) in chunk {
                    q = q.bind(*id).bind(ts(*t));
                }
                done += q.execute(&self.pool).await?.rows_affected();
            }
        }
        Ok(done)
    }

    /// When the payer was last asked about the case and said nothing new.
    pub async fn last_polled(&self, id: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
        case_view::last_polled(&self.pool, id).await
    }

    pub async fn get(&self, id: i64) -> Result<CaseRecord, StoreError> {
        case_view::cases_named(&self.pool, &CaseName::Id(id))
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("case {id}")))
    }

    /// A case by its practice and the practice's own reference.
    pub async fn find(&self, practice: &str, case_ref: &str) -> Result<Option<CaseRecord>, StoreError> {
        Ok(
            case_view::cases_named(&self.pool, &CaseName::Key { practice, case_ref })
                .await?
                .pop(),
        )
    }

    /// Cases of any practice with this reference.
    pub async fn find_by_ref(&self, case_ref: &str) -> Result<Vec<CaseRecord>, StoreError> {
        case_view::cases_named(&self.pool, &CaseName::Ref(case_ref)).await
    }

    pub async fn list(&self, filter: &CaseFilter) -> Result<Vec<CaseRecord>, StoreError> {
        let mut sql = format!("{SELECT_CASE} WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        for (column, value) in [
            ("practice_id", filter.practice.clone()),
            ("payer", filter.payer.clone()),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
        ] {
            if let Some(v) = value {
                args.push(v);
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        sql.push_str(" ORDER BY id");
        let mut query = sqlx::query(&sql);
        for a in &args {
            query = query.bind(a);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(case_from_row).collect()
    }

    /// One page of cases in id order after `after` (None: from the first),
    /// at most `limit`, with how many letters each has: filters and paging
    /// in SQL, on an index per filter (`cases_list_*`), in one query.
    pub async fn list_page(
        &self,
        filter: &CaseFilter,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ListedCase>, StoreError> {
        let (sql, args) = list_page_sql(filter);
        let mut query = sqlx::query(&sql).bind(after.unwrap_or(0)).bind(limit as i64);
        for a in &args {
            query = query.bind(a);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(ListedCase {
                    case: case_from_row(r)?,
                    letters: r.try_get::<i64, _>("letters")? as usize,
                })
            })
            .collect()
    }

    /// Whether a per-payer job has a case to work: one indexed read of at
    /// most one row (`LIMIT 1`),
    /// never a read of the practice's cases.
    pub async fn has_work(&self, practice: &str, payer: &str, work: Work) -> Result<bool, StoreError> {
        let row = sqlx::query(&has_work_sql(self.backend, work))
            .bind(practice)
            .bind(payer)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// A page of the cases a per-payer job works (the `work` condition in
    /// SQL), in id order after `after`, at most `limit`.
    pub async fn work_page(
        &self,
        practice: &str,
        payer: &str,
        work: Work,
        after: i64,
        limit: usize,
    ) -> Result<Vec<CaseRecord>, StoreError> {
        let rows = sqlx::query(&work_page_sql(self.backend, work))
            .bind(practice)
            .bind(payer)
            .bind(after)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(case_from_row).collect()
    }

    /// Counts of cases per status (for reports and metrics).
    pub async fn count_by_status(&self) -> Result<Vec<(CaseStatus, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM cases GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_status(0, r.try_get::<String, _>("status")?.as_str())?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    /// Counts of cases per practice and status (for metrics): one grouped
    /// read on `cases_by_practice`, not the cases themselves.
    pub async fn count_by_practice_status(&self) -> Result<Vec<(String, CaseStatus, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT practice_id, status, COUNT(*) AS n FROM cases GROUP BY practice_id, status ORDER BY practice_id, status",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("practice_id")?,
                    parse_status(0, r.try_get::<String, _>("status")?.as_str())?,
                    r.try_get("n")?,
                ))
            })
            .collect()
    }

    /// A case's audit trail, oldest first.
    pub async fn events(&self, id: i64) -> Result<Vec<CaseEvent>, StoreError> {
        self.pool
            .rows(SELECT_EVENTS, &[Arg::Int(id)], |r| event_from_row(r, id))
            .await
    }

    /// Records the payer's reference for the case's request, with its event.
    pub async fn set_payer_ref(&self, id: i64, reference: &str, actor: &Actor) -> Result<(), StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        let (case_key, _, _) = current(&mut tx, id).await?;
        self.check_fence(&mut tx, &case_key, id).await?;
        if let Some(other) = payer_ref_holder(&mut *tx, id, reference).await? {
            return Err(StoreError::ReferenceTaken {
                case: case_key,
                reference: reference.to_owned(),
                other,
            });
        }
        let set = sqlx::query("UPDATE cases SET payer_ref = $1, version = version + 1, updated_at = $2 WHERE id = $3")
            .bind(reference)
            .bind(&now)
            .bind(id)
            .execute(&mut *tx)
            .await;
        if let Err(e) = set {
            // Another case of this payer took the reference after the check
            // (PostgreSQL, two writers): the unique index refused this one.
            if e.as_database_error().is_some_and(|d| d.is_unique_violation()) {
                tx.rollback().await?;
                let other = payer_ref_holder(&self.pool, id, reference)
                    .await?
                    .unwrap_or_else(|| "another case".into());
                return Err(StoreError::ReferenceTaken {
                    case: case_key,
                    reference: reference.to_owned(),
                    other,
                });
            }
            return Err(e.into());
        }
        insert_event(
            &mut tx,
            id,
            &now,
            EventKind::Note,
            None,
            None,
            actor,
            &json!({ "payer_reference": reference }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A case by the payer's reference for it.
    pub async fn find_by_payer_ref(&self, payer: &str, reference: &str) -> Result<Option<CaseRecord>, StoreError> {
        let row = sqlx::query(&format!("{SELECT_CASE} WHERE payer = $1 AND payer_ref = $2"))
            .bind(payer)
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(case_from_row).transpose()
    }

    /// Records a stored letter (once per content) with its event. Returns
    /// false when the same letter was already kept.
    pub async fn add_letter(&self, id: i64, letter: &Letter, actor: &Actor) -> Result<bool, StoreError> {
        let now = ts(self.now());
        let mut tx = self.begin_write().await?;
        current(&mut tx, id).await?;
        let exists = sqlx::query("SELECT id FROM letters WHERE case_id = $1 AND sha256 = $2")
            .bind(id)
            .bind(&letter.sha256)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO letters (case_id, kind, stored_path, sha256, bytes, media_type, fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&letter.kind)
        .bind(letter.stored_path.display().to_string())
        .bind(&letter.sha256)
        .bind(letter.bytes as i64)
        .bind(&letter.media_type)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        let detail =
            json!({ "kind": letter.kind, "file": letter.stored_path, "sha256": letter.sha256, "bytes": letter.bytes });
        insert_event(&mut tx, id, &now, EventKind::Letter, None, None, actor, &detail).await?;
        // A practice system syncing by `updated_at` sees the letter.
        sqlx::query("UPDATE cases SET updated_at = $1 WHERE id = $2")
            .bind(&now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE escalations SET state = 'resolved', closed_at = $1, next_action_at = NULL \
             WHERE case_id = $2 AND reason = 'letter_missing' AND state IN ('open', 'acknowledged')",
        )
        .bind(&now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn letters(&self, id: i64) -> Result<Vec<Letter>, StoreError> {
        self.pool
            .rows(SELECT_LETTERS, &[Arg::Int(id)], |r| letter_from_row(r, id))
            .await
    }

    /// Runs a raw statement; for tests that prove the database's own guards.
    #[doc(hidden)]
    pub async fn execute_raw(&self, sql: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }
}

/// `PRACTICE/CASE` of another case of the same payer that holds `reference`.
async fn payer_ref_holder<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: i64,
    reference: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query(
        "SELECT o.practice_id, o.case_ref FROM cases o JOIN cases c ON o.payer = c.payer \
         WHERE c.id = $1 AND o.id <> $1 AND o.payer_ref = $2",
    )
    .bind(id)
    .bind(reference)
    .fetch_optional(db)
    .await?;
    row.map(|r| {
        Ok(format!(
            "{}/{}",
            r.try_get::<String, _>("practice_id")?,
            r.try_get::<String, _>("case_ref")?
        ))
    })
    .transpose()
}

/// `list_page`'s query: `$1` the id to start after, `$2` the page size,
/// then the filters' values.
pub(crate) fn list_page_sql(filter: &CaseFilter) -> (String, Vec<String>) {
    let mut sql = String::from(
        "SELECT c.id, c.status, c.data, c.decision, c.payer_ref, c.created_at, c.updated_at, \
         (SELECT COUNT(*) FROM letters l WHERE l.case_id = c.id) AS letters FROM cases c WHERE c.id > $1",
    );
    let mut args: Vec<String> = Vec::new();
    for (column, value) in [
        ("practice_id", filter.practice.clone()),
        ("payer", filter.payer.clone()),
        ("status", filter.status.map(|s| s.as_str().to_owned())),
    ] {
        if let Some(v) = value {
            args.push(v);
            sql.push_str(&format!(" AND c.{column} = ${}", args.len() + 2));
        }
    }
    sql.push_str(" ORDER BY c.id LIMIT $2");
    (sql, args)
}

/// A case in a listing, with how many letters it has.
#[derive(Clone, Debug)]
pub struct ListedCase {
    pub case: CaseRecord,
    pub letters: usize,
}

const SELECT_EVENTS: &str =
    "SELECT id, case_id, at, kind, from_status, to_status, actor, detail FROM case_events WHERE case_id = $1 ORDER BY id";

const SELECT_LETTERS: &str =
    "SELECT kind, stored_path, sha256, bytes, media_type, fetched_at FROM letters WHERE case_id = $1 ORDER BY id";

const SELECT_CASE: &str = "SELECT id, status, data, decision, payer_ref, created_at, updated_at FROM cases";

/// The cases a per-payer job works on, as SQL conditions (what
/// `daemon::applies` says of one case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Ready to submit, or a submission to finish.
    Submit,
    /// With the payer and still undecided, or decided with details still
    /// to read.
    Poll,
    /// Decided, and no letter kept yet.
    Letters,
    /// Still `new` (the candidates for a CRD question).
    New,
}

/// `work`'s condition on a row of `cases`.
fn work_condition(backend: Backend, work: Work) -> String {
    use CaseStatus::*;
    let status_in = |statuses: &[CaseStatus]| {
        let list: Vec<String> = statuses.iter().map(|s| format!("'{}'", s.as_str())).collect();
        format!("status IN ({})", list.join(", "))
    };
    match work {
        Work::Submit => status_in(&[Ready, Submitting]),
        Work::New => status_in(&[New]),
        Work::Poll => {
            let field = |name: &str| backend.json_text("decision", &[name]);
            // The first `status IN` lets an index on the status serve.
            format!(
                "{} AND payer_ref IS NOT NULL AND ({} \
                 OR ({} AND (decision IS NULL OR {} IS NULL OR {} IS NULL)) \
                 OR ({} AND (decision IS NULL OR {} IS NULL)))",
                status_in(&[Pending, PendedForInfo, Approved, PartiallyApproved, Denied]),
                status_in(&[Pending, PendedForInfo]),
                status_in(&[Approved, PartiallyApproved]),
                field("auth_number"),
                field("valid"),
                status_in(&[Denied]),
                field("denial"),
            )
        }
        Work::Letters => format!(
            "{} AND payer_ref IS NOT NULL AND NOT EXISTS (SELECT 1 FROM letters l WHERE l.case_id = cases.id)",
            status_in(&[Approved, PartiallyApproved, Denied])
        ),
    }
}

/// Whether a job has a case: (practice, payer).
pub(crate) fn has_work_sql(backend: Backend, work: Work) -> String {
    format!(
        "SELECT 1 AS any_work FROM cases WHERE practice_id = $1 AND payer = $2 AND {} LIMIT 1",
        work_condition(backend, work)
    )
}

/// The import's read of a batch's stored cases: (practice, `n` case IDs).
pub(crate) fn stored_sql(n: usize) -> String {
    let marks: Vec<String> = (0..n).map(|i| format!("${}", i + 2)).collect();
    format!(
        "SELECT id, case_ref, status, data FROM cases WHERE practice_id = $1 AND case_ref IN ({})",
        marks.join(", ")
    )
}

/// How often a batch of the import is tried when the database chose it as
/// a deadlock's victim.
const IMPORT_ATTEMPTS: u32 = 5;

/// PostgreSQL aborted the transaction to break a deadlock (SQLSTATE
/// 40P01); nothing it wrote remains.
fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01"))
}

/// A page of a job's cases: (practice, payer, after id, limit).
pub(crate) fn work_page_sql(backend: Backend, work: Work) -> String {
    format!(
        "{SELECT_CASE} WHERE practice_id = $1 AND payer = $2 AND id > $3 AND {} ORDER BY id LIMIT $4",
        work_condition(backend, work)
    )
}

/// Cases a multi-row statement of the import writes.
const ROWS_A_STATEMENT: usize = 50;

/// A case already stored, as the batch import reads it.
struct Stored {
    id: i64,
    status: CaseStatus,
    data: String,
}

/// The moves the import's verdict on whether a pre-cert is needed makes
/// for a case nobody has triaged yet.
fn import_path(precert_required: Option<bool>) -> &'static [CaseStatus] {
    match precert_required {
        Some(true) => &[CaseStatus::Required, CaseStatus::Ready],
        Some(false) => &[CaseStatus::NotRequired],
        None => &[],
    }
}

/// The status a new case is written with: where its import path ends.
fn path_end(data: &CaseData, path: &[CaseStatus]) -> Result<CaseStatus, StoreError> {
    let mut at = CaseStatus::New;
    for &to in path {
        if !at.can_move_to(to) {
            return Err(illegal(&key(data), at, to));
        }
        at = to;
    }
    Ok(at)
}

/// Inserts new cases in one statement; the ids of those inserted by
/// (practice, case ID). A case another importer inserted first is left out.
async fn insert_cases<'c>(
    tx: &mut Tx<'_>,
    cases: &'c [(CaseData, Option<bool>)],
    rows: &[(usize, CaseStatus, String)],
    now: &str,
) -> Result<std::collections::HashMap<(&'c str, &'c str), i64>, StoreError> {
    let mut created = std::collections::HashMap::with_capacity(rows.len());
    if rows.is_empty() {
        return Ok(created);
    }
    let values: Vec<String> = (0..rows.len())
        .map(|r| {
            let b = 1 + 10 * r;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, $1, $1, $1, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO cases (practice_id, case_ref, payer, status, urgency, service_start, service_end, data, \
         created_at, updated_at, next_check_at, version, expected_cents) VALUES {} \
         ON CONFLICT (practice_id, case_ref) DO NOTHING RETURNING id, practice_id, case_ref",
        values.join(", ")
    );
    let mut q = sqlx::query(&sql).bind(now);
    for (i, status, json) in rows {
        let (data, required) = &cases[*i];
        q = q
            .bind(&data.practice_id)
            .bind(&data.case_ref)
            .bind(&data.coverage.payer)
            .bind(status.as_str())
            .bind(data.urgency.as_str())
            .bind(data.service_dates.start.to_string())
            .bind(data.service_dates.end.to_string())
            .bind(json.as_str())
            .bind(1 + import_path(*required).len() as i64)
            .bind(expected_cents(data));
    }
    let by_key: std::collections::HashMap<(&str, &str), &'c CaseData> = rows
        .iter()
        .map(|(i, _, _)| {
            let d = &cases[*i].0;
            ((d.practice_id.as_str(), d.case_ref.as_str()), d)
        })
        .collect();
    for row in q.fetch_all(&mut **tx).await? {
        let practice: String = row.try_get("practice_id")?;
        let case_ref: String = row.try_get("case_ref")?;
        if let Some(d) = by_key.get(&(practice.as_str(), case_ref.as_str())) {
            created.insert((d.practice_id.as_str(), d.case_ref.as_str()), row.try_get("id")?);
        }
    }
    Ok(created)
}

/// The events of newly imported cases, in one statement: `imported`, then
/// each move the import made (noted as set by import).
async fn insert_import_events(
    tx: &mut Tx<'_>,
    events: &[(i64, EventKind, Option<CaseStatus>, CaseStatus)],
    actor: &Actor,
    now: &str,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let values: Vec<String> = (0..events.len())
        .map(|e| {
            let b = 2 + 5 * e;
            format!("(${}, $1, ${}, ${}, ${}, $2, ${})", b + 1, b + 2, b + 3, b + 4, b + 5)
        })
        .collect();
    let sql = format!(
        "INSERT INTO case_events (case_id, at, kind, from_status, to_status, actor, detail) VALUES {}",
        values.join(", ")
    );
    let by_import = json!({ "note": "set by import" }).to_string();
    let mut q = sqlx::query(&sql).bind(now).bind(actor.as_str());
    for (id, kind, from, to) in events {
        let detail = if *kind == EventKind::Imported {
            "{}"
        } else {
            by_import.as_str()
        };
        q = q
            .bind(*id)
            .bind(kind.as_str())
            .bind(from.map(|s| s.as_str()))
            .bind(to.as_str())
            .bind(detail);
    }
    q.execute(&mut **tx).await?;
    let mut cases: Vec<i64> = events.iter().map(|e| e.0).collect();
    cases.dedup();
    facts::refold(tx, &cases).await?;
    Ok(())
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

fn key(data: &CaseData) -> String {
    format!("{}/{}", data.practice_id, data.case_ref)
}

fn case_from_row(row: &(impl ReadRow + ?Sized)) -> Result<CaseRecord, StoreError> {
    let id = row.req_int("id", 0)?;
    let data = row.req_text("data", id)?;
    let decision = row.text("decision")?;
    Ok(CaseRecord {
        id,
        status: parse_status(id, &row.req_text("status", id)?)?,
        data: serde_json::from_str(&data).map_err(|e| StoreError::Corrupt {
            id,
            reason: format!("case data: {e}"),
        })?,
        decision: decision
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                id,
                reason: format!("decision: {e}"),
            })?,
        payer_ref: row.text("payer_ref")?,
        created_at: row.req_time("created_at", id)?,
        updated_at: row.req_time("updated_at", id)?,
    })
}

/// An event of case `id` (`SELECT_EVENTS`).
fn event_from_row(row: &(impl ReadRow + ?Sized), id: i64) -> Result<CaseEvent, StoreError> {
    let status = |col: &str| -> Result<Option<CaseStatus>, StoreError> {
        row.text(col)?.map(|s| parse_status(id, &s)).transpose()
    };
    let detail = row.req_text("detail", id)?;
    Ok(CaseEvent {
        id: row.req_int("id", id)?,
        case_id: row.req_int("case_id", id)?,
        at: row.req_time("at", id)?,
        kind: row.req_text("kind", id)?,
        from_status: status("from_status")?,
        to_status: status("to_status")?,
        actor: row.req_text("actor", id)?,
        detail: serde_json::from_str(&detail).map_err(|e| StoreError::Corrupt {
            id,
            reason: format!("event detail: {e}"),
        })?,
    })
}

/// A letter of case `id` (`SELECT_LETTERS`).
fn letter_from_row(row: &(impl ReadRow + ?Sized), id: i64) -> Result<Letter, StoreError> {
    Ok(Letter {
        kind: row.req_text("kind", id)?,
        stored_path: PathBuf::from(row.req_text("stored_path", id)?),
        sha256: row.req_text("sha256", id)?,
        bytes: row.req_int("bytes", id)? as u64,
        media_type: row.req_text("media_type", id)?,
        fetched_at: Some(row.req_time("fetched_at", id)?),
    })
}

/// The case's key, status and version inside a write transaction, which
/// holds the case's row from here to its end (PostgreSQL's row lock; SQLite's
/// write transaction holds the database).
async fn current(tx: &mut Tx<'_>, id: i64) -> Result<(String, CaseStatus, i64), StoreError> {
    let lock = Backend::of(tx).lock_row();
    let row = sqlx::query(&format!(
        "SELECT practice_id, case_ref, status, version FROM cases WHERE id = $1{lock}"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("case {id}")))?;
    let key = format!(
        "{}/{}",
        row.try_get::<String, _>("practice_id")?,
        row.try_get::<String, _>("case_ref")?
    );
    let status = parse_status(id, row.try_get::<String, _>("status")?.as_str())?;
    Ok((key, status, row.try_get("version")?))
}

fn illegal(case: &str, from: CaseStatus, to: CaseStatus) -> StoreError {
    let allowed = from.next().iter().map(|s| s.as_str()).collect::<Vec<_>>();
    StoreError::IllegalTransition {
        case: case.to_owned(),
        from,
        to,
        allowed: if allowed.is_empty() {
            "nothing, it is final".into()
        } else {
            allowed.join(", ")
        },
    }
}

async fn conflict(tx: &mut Tx<'_>, id: i64, case: &str) -> StoreError {
    match current(tx, id).await {
        Ok((_, now, _)) => StoreError::Conflict {
            case: case.to_owned(),
            now,
        },
        Err(e) => e,
    }
}

/// Compare-and-set on the version, then the event, in the caller's
/// transaction.
#[allow(clippy::too_many_arguments)]
async fn set_status(
    tx: &mut Tx<'_>,
    id: i64,
    case: &str,
    from: CaseStatus,
    version: i64,
    to: CaseStatus,
    now: &str,
    actor: &Actor,
    detail: &Value,
) -> Result<(), StoreError> {
    if !from.can_move_to(to) {
        return Err(illegal(case, from, to));
    }
    let done = sqlx::query(
        "UPDATE cases SET status = $1, version = version + 1, deadline_at = NULL, deadline_rules = NULL, updated_at = $2, next_check_at = $2 WHERE id = $3 AND version = $4",
    )
    .bind(to.as_str())
    .bind(now)
    .bind(id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(conflict(tx, id, case).await);
    }
    if to != CaseStatus::Submitting {
        owner::clear_owner(tx, id).await?;
    }
    insert_event(
        tx,
        id,
        now,
        EventKind::StatusChanged,
        Some(from),
        Some(to),
        actor,
        detail,
    )
    .await?;
    Ok(())
}

async fn update_case_data(
    tx: &mut Tx<'_>,
    id: i64,
    version: i64,
    data: &CaseData,
    json: &str,
    now: &str,
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE cases SET data = $1, payer = $2, urgency = $3, service_start = $4, service_end = $5, \
         version = version + 1, deadline_at = NULL, deadline_rules = NULL, updated_at = $6, next_check_at = $6, \
         expected_cents = $9 WHERE id = $7 AND version = $8",
    )
    .bind(json)
    .bind(&data.coverage.payer)
    .bind(data.urgency.as_str())
    .bind(data.service_dates.start.to_string())
    .bind(data.service_dates.end.to_string())
    .bind(now)
    .bind(id)
    .bind(version)
    .bind(expected_cents(data))
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(conflict(tx, id, &key(data)).await);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_event(
    tx: &mut Tx<'_>,
    case_id: i64,
    at: &str,
    kind: EventKind,
    from: Option<CaseStatus>,
    to: Option<CaseStatus>,
    actor: &Actor,
    detail: &Value,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO case_events (case_id, at, kind, from_status, to_status, actor, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(case_id)
    .bind(at)
    .bind(kind.as_str())
    .bind(from.map(|s| s.as_str()))
    .bind(to.map(|s| s.as_str()))
    .bind(actor.as_str())
    .bind(detail.to_string())
    .fetch_one(&mut **tx)
    .await?;
    let event: i64 = row.try_get("id")?;
    if to.is_some() {
        facts::refold(tx, &[case_id]).await?;
    }
    api::queue_webhook(tx, event, case_id, at, kind, from, to).await?;
    Ok(event)
}

/// Names of the top-level case fields that differ: the event says what
/// changed without copying PHI into the trail twice. An optional field
/// given or dropped (`expected_amount`) is a change too.
fn changed_fields(old: &str, new: &str) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::from_str::<Value>(old), serde_json::from_str::<Value>(new))
    else {
        return vec!["data".into()];
    };
    let dropped = a.keys().filter(|k| !b.contains_key(*k));
    b.iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(dropped)
        .cloned()
        .collect()
}

/// The `expected_cents` column: the case's expected amount, in cents.
fn expected_cents(data: &CaseData) -> Option<i64> {
    data.expected_amount.map(crate::case::Usd::cents)
}

#[cfg(test)]
mod tests {
    #[test]
    fn case_when_numbers_each_rows_id_then_its_values() {
        let (cases, ids) = super::case_when(2, 2, 3);
        assert_eq!(
            cases,
            [
                "CASE id WHEN $2 THEN $3 WHEN $5 THEN $6 END",
                "CASE id WHEN $2 THEN $4 WHEN $5 THEN $7 END"
            ]
        );
        assert_eq!(ids, "$2, $5");
    }
}
