//! What reports read: each request's history as the event log
//! (`case_events`) tells it, never counters kept on the side, so a report
//! over any past period can be made again and says the same.
//!
//! One query gives one compact row per request submitted in the period
//! (its first submission, its first decision of each kind, pends,
//! cancellation, its status as of the report's instant): from `case_facts`
//! (`store::facts`, the same fold kept with every status change) where
//! nothing changed after that instant, from the events' fold for the rest.
//! Two narrow queries give pend episodes and the moves to
//! `needs_attention`. The figures themselves (`crate::report`) are folded
//! from these rows as they stream, so memory grows with the number of
//! groups and durations, not with the event log.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::Row;

use super::row::{required, Arg, ReadRow};
use super::{parse_status, parse_ts, Backend, Ledger, StoreError};
use crate::case::{CaseStatus, Urgency, Usd};

/// Which requests a report is about.
#[derive(Clone, Debug)]
pub struct ReportScope {
    /// Requests first submitted at or after this instant…
    pub from: DateTime<Utc>,
    /// …and before this one.
    pub to: DateTime<Utc>,
    /// What happened to them is read from the events up to this instant.
    pub as_of: DateTime<Utc>,
    pub practice: Option<String>,
    pub payer: Option<String>,
    /// Only these practices (a console user's); `None` for all.
    pub allowed: Option<Vec<String>>,
}

/// One request's history, as the event log tells it up to `as_of`.
#[derive(Clone, Debug)]
pub struct CaseFacts {
    pub id: i64,
    pub practice_id: String,
    pub case_ref: String,
    pub payer: String,
    pub urgency: Urgency,
    /// What the practice expects the request to be worth, when it said
    /// (`cases.expected_cents`, migration 17: a column, so no case's JSON is
    /// read for it).
    pub expected_amount: Option<Usd>,
    pub plan_type: Option<String>,
    pub state: Option<String>,
    /// The first service line's procedure code.
    pub cpt: Option<String>,
    pub setting: Option<String>,
    /// The first move from `submitting` to a payer state: the payer had it.
    pub submitted_at: DateTime<Utc>,
    /// How many times it went from `submitting` to the payer (more than one:
    /// resubmitted).
    pub submissions: u32,
    /// The first decision (approved, partially approved or denied) and when
    /// precert recorded it.
    pub first_decision: Option<(CaseStatus, DateTime<Utc>)>,
    /// The first approval in full, and the first partial approval.
    pub approved_at: Option<DateTime<Utc>>,
    pub partially_approved_at: Option<DateTime<Utc>>,
    pub first_pend_at: Option<DateTime<Utc>>,
    pub pends: u32,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The first move from a denial or a partial approval back to `ready`
    /// (the practice took the decision back to the payer: an appeal).
    pub appealed_at: Option<DateTime<Utc>>,
    /// The status the last status change before `as_of` left it in.
    pub status: CaseStatus,
    /// A decision letter was kept by `as_of`.
    pub has_letter: bool,
    /// The first denial's reason code (its event's), and its text while
    /// the case's recorded decision still carries that denial (a later
    /// decision replaces it; the event log keeps the code only).
    pub denial_code: Option<String>,
    pub denial_text: Option<String>,
    /// The decision deadline a stall warning or stall escalation recorded
    /// for this request (the rules in force when it was raised), with its
    /// `window` wording.
    pub recorded_deadline: Option<(DateTime<Utc>, Option<String>)>,
}

/// A time the request spent pended for information.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendEpisode {
    pub case_id: i64,
    pub start: DateTime<Utc>,
    /// `None`: still pended at `as_of`.
    pub end: Option<DateTime<Utc>>,
}

/// A move to `needs_attention` in the period: automation gave up.
#[derive(Clone, Debug)]
pub struct AttentionEvent {
    pub case_id: i64,
    pub practice_id: String,
    pub payer: String,
    pub at: DateTime<Utc>,
    /// The note the change carried (`submit portal_changed: …`), if any.
    pub note: Option<String>,
}

impl ReportScope {
    /// ` AND c.practice_id = $N …` for the scope's filters, binding from
    /// `first`; returns the clause and its values in order.
    fn case_filter(&self, first: usize) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut args = Vec::new();
        if let Some(p) = &self.practice {
            args.push(p.clone());
            sql.push_str(&format!(" AND c.practice_id = ${}", first + args.len() - 1));
        }
        if let Some(p) = &self.payer {
            args.push(p.clone());
            sql.push_str(&format!(" AND c.payer = ${}", first + args.len() - 1));
        }
        if let Some(allowed) = &self.allowed {
            if allowed.is_empty() {
                sql.push_str(" AND 1 = 0");
            } else {
                let mut marks = Vec::new();
                for p in allowed {
                    args.push(p.clone());
                    marks.push(format!("${}", first + args.len() - 1));
                }
                sql.push_str(&format!(" AND c.practice_id IN ({})", marks.join(", ")));
            }
        }
        (sql, args)
    }
}

/// Where `report_cases_sql` reads each request's history from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactsSource {
    /// `case_facts` (migration 19) for the requests whose latest status
    /// change is at or before the report's instant, the fold of the event
    /// log for the others: what `precert report` runs.
    Facts,
    /// The fold of the event log for every request: the reference the
    /// facts must agree with (`Ledger::report_cases_from_events`).
    Events,
}

/// The query behind `Ledger::report_cases`: one row per request first
/// submitted in the scope's period, in case order; binds `$1` from, `$2`
/// to, `$3` as of, then the returned values.
///
/// A request's history is a fold of its status changes up to `$3`. Most
/// requests' folds are kept, whole, in `case_facts` (`store::facts`,
/// written with every status change): a row whose `last_at` is at or before
/// `$3` folded exactly the changes up to `$3`, so it is read as it is. The
/// others (changed after `$3`: few when the report is as of now) are folded
/// from the event log here, through `case_events_report` (migration 16)
/// alone, in (case, id) order, with the status as of `$3` by one backward
/// seek into the same index. The two halves are merged in case order
/// (SQLite: a merge of the facts' primary-key order with the fold's few
/// rows, no sort of the whole). `FILTER` (SQLite 3.30, PostgreSQL 9.4) is
/// cheaper than `CASE` in every aggregate (measured by bench-report).
pub fn report_cases_sql(b: Backend, scope: &ReportScope, details: bool, source: FactsSource) -> (String, Vec<String>) {
    let (filter, args) = scope.case_filter(4);
    // JSON is read only where it is needed: the case's details when
    // asked, the decision's denial for denied requests.
    let field = |path: &[&str]| {
        if details {
            b.json_text("c.data", path)
        } else {
            "NULL".to_owned()
        }
    };
    let denied = |path: &[&str]| {
        format!(
            "CASE WHEN s.denied_id IS NOT NULL THEN {} END",
            b.json_text("c.decision", path)
        )
    };
    // One request: its case's columns, its history `s`, what else the
    // report wants of it by `$3`.
    let per_request = |history: &str| {
        format!(
            "SELECT s.case_id AS id, c.practice_id, c.case_ref, c.payer, c.urgency, c.expected_cents, \
               {plan_type} AS plan_type, {state} AS state, {cpt} AS cpt, {setting} AS setting, \
               {denial_code} AS denial_code, {denial_text} AS denial_text, \
               s.submitted_at, s.submissions, s.approved_at, s.partial_at, s.denied_at, \
               s.pend_at, s.pends, s.cancelled_at, s.appealed_at, s.status, \
               CASE WHEN s.denied_id IS NOT NULL \
                  THEN (SELECT e3.detail FROM case_events e3 WHERE e3.id = s.denied_id) END AS denial_event, \
               CASE WHEN EXISTS (SELECT 1 FROM letters l WHERE l.case_id = c.id AND l.fetched_at <= $3) \
                  THEN 1 ELSE 0 END AS has_letter, \
               (SELECT x.due_at FROM escalations x WHERE x.case_id = c.id \
                  AND x.reason IN ('stall_warning', 'stalled') AND x.opened_at <= $3 ORDER BY x.id LIMIT 1) AS recorded_due, \
               (SELECT x.detail FROM escalations x WHERE x.case_id = c.id \
                  AND x.reason IN ('stall_warning', 'stalled') AND x.opened_at <= $3 ORDER BY x.id LIMIT 1) AS recorded_detail \
             FROM ({history}) s JOIN cases c ON c.id = s.case_id \
             WHERE s.submitted_at >= $1 AND s.submitted_at < $2{filter}",
            plan_type = field(&["coverage", "plan_type"]),
            state = field(&["coverage", "state"]),
            cpt = field(&["service_lines", "0", "code"]),
            setting = field(&["setting"]),
            denial_code = denied(&["denial", "code"]),
            denial_text = denied(&["denial", "text"]),
        )
    };
    // The fold of the status changes up to `$3` of the requests `cases`
    // (`case_events e` and what picks them) holds; only the changes a
    // figure needs are folded (a third of them).
    let fold = |cases: &str| {
        format!(
            "SELECT e.case_id AS case_id, {aggregates}, \
               (SELECT e2.to_status FROM case_events e2 WHERE e2.case_id = e.case_id \
                  AND e2.to_status IS NOT NULL AND e2.at <= $3 ORDER BY e2.id DESC LIMIT 1) AS status \
             FROM {cases}e.to_status IS NOT NULL AND e.at <= $3 \
               AND (e.from_status IN ('submitting', 'denied', 'partially_approved') \
                    OR e.to_status IN ('pended_for_info', 'approved', 'partially_approved', 'denied', 'cancelled')) \
             GROUP BY e.case_id",
            aggregates = super::facts::fold_aggregates(),
        )
    };
    let sql = match source {
        FactsSource::Facts => format!(
            "{facts} UNION ALL {changed} ORDER BY 1",
            // Read in case order, every row: a report as of now wants
            // nearly all of them, and SQLite would rather go through
            // `case_facts_last_at` and fetch each row apart (twice the time,
            // bench-report); `+` keeps it off the index.
            facts = per_request(&format!(
                "SELECT f.case_id, {columns} FROM case_facts f WHERE {last_at} <= $3",
                last_at = match b {
                    Backend::Sqlite => "+f.last_at",
                    Backend::Postgres => "f.last_at",
                },
                columns = super::facts::FACT_COLUMNS
                    .split(", ")
                    .map(|c| format!("f.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            // The requests changed after `$3` are found by `last_at`, and
            // then their events by case: the database is told so, for it
            // would rather walk every status change without statistics
            // (SQLite: `CROSS JOIN` keeps the order written; PostgreSQL: a
            // `LATERAL` fold per request).
            changed = per_request(&match b {
                Backend::Sqlite =>
                    fold("case_facts g CROSS JOIN case_events e WHERE g.last_at > $3 AND e.case_id = g.case_id AND "),
                Backend::Postgres => format!(
                    "SELECT h.* FROM case_facts g CROSS JOIN LATERAL ({}) h WHERE g.last_at > $3",
                    fold("case_events e WHERE e.case_id = g.case_id AND ")
                ),
            }),
        ),
        FactsSource::Events => format!("{} ORDER BY 1", per_request(&fold("case_events e WHERE "))),
    };
    (sql, args)
}

/// The report's queries over the event log, with plausible values, for
/// `Ledger::query_plan` (`tests/it/query_plan.rs`): the aggregate (with
/// and without the case's details and filters) and the pend moves.
pub fn report_queries(b: Backend) -> Vec<super::HotQuery> {
    use super::PlanArg::Text;
    let times = || {
        vec![
            Text("2026-01-01T00:00:00.000000Z".into()),
            Text("2027-01-01T00:00:00.000000Z".into()),
            Text("2027-01-15T00:00:00.000000Z".into()),
        ]
    };
    let mut out = Vec::new();
    for (practice, payer, details) in [(None, None, false), (Some("p"), Some("sandbox"), true)] {
        let scope = ReportScope {
            from: chrono::DateTime::UNIX_EPOCH,
            to: chrono::DateTime::UNIX_EPOCH,
            as_of: chrono::DateTime::UNIX_EPOCH,
            practice: practice.map(str::to_owned),
            payer: payer.map(str::to_owned),
            allowed: None,
        };
        let (sql, values) = report_cases_sql(b, &scope, details, FactsSource::Facts);
        let mut args = times();
        args.extend(values.into_iter().map(Text));
        out.push(super::HotQuery {
            name: format!("report: each request's history (practice {practice:?}, payer {payer:?})"),
            sql,
            args,
            ordered: false,
        });
        let (sql, values) = report_pends_sql(&scope);
        let mut args = vec![Text("2027-01-15T00:00:00.000000Z".into())];
        args.extend(values.into_iter().map(Text));
        out.push(super::HotQuery {
            name: format!("report: pend moves (practice {practice:?}, payer {payer:?})"),
            sql,
            args,
            ordered: false,
        });
    }
    out
}

/// The pend moves' query: binds `$1` as of, then the returned values.
fn report_pends_sql(scope: &ReportScope) -> (String, Vec<String>) {
    let (filter, args) = scope.case_filter(2);
    // Through `case_events_report` alone (a move out of a pend has a
    // `to_status`); the join only when the scope filters by practice or
    // payer.
    let join = if filter.is_empty() {
        ""
    } else {
        " JOIN cases c ON c.id = e.case_id"
    };
    let sql = format!(
        "SELECT e.id, e.case_id, e.at, e.to_status FROM case_events e{join} \
         WHERE e.to_status IS NOT NULL AND e.at <= $1 \
         AND (e.to_status = 'pended_for_info' OR e.from_status = 'pended_for_info'){filter}"
    );
    (sql, args)
}

impl Ledger {
    /// Every request first submitted in the scope's period, one at a time
    /// to `each`, in case order. Rows stream from the database; nothing is
    /// collected here. Without `details`, plan type, state, CPT code and
    /// setting are not read (`None`).
    pub async fn report_cases(
        &self,
        scope: &ReportScope,
        details: bool,
        each: impl FnMut(CaseFacts),
    ) -> Result<(), StoreError> {
        self.report_cases_of(scope, details, FactsSource::Facts, each).await
    }

    /// `report_cases` folded from the event log alone, `case_facts` unread:
    /// what the facts must always agree with (the tests compare the two
    /// over histories and instants).
    pub async fn report_cases_from_events(
        &self,
        scope: &ReportScope,
        details: bool,
        each: impl FnMut(CaseFacts),
    ) -> Result<(), StoreError> {
        self.report_cases_of(scope, details, FactsSource::Events, each).await
    }

    async fn report_cases_of(
        &self,
        scope: &ReportScope,
        details: bool,
        source: FactsSource,
        mut each: impl FnMut(CaseFacts),
    ) -> Result<(), StoreError> {
        let (sql, args) = report_cases_sql(self.backend, scope, details, source);
        // (An in-memory database is one connection's own: read through the pool.)
        if self.backend == Backend::Sqlite {
            if let Some(path) = super::sqlite_path(&self.url) {
                return self.report_cases_on_sqlite(path, sql, scope, args, each).await;
            }
        }
        let mut query = sqlx::query(&sql)
            .bind(super::ts(scope.from))
            .bind(super::ts(scope.to))
            .bind(super::ts(scope.as_of));
        for a in &args {
            query = query.bind(a);
        }
        let mut rows = query.fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            each(facts_from_row(&row)?);
        }
        Ok(())
    }

    /// [`Ledger::report_cases_of`]'s read on a SQLite file: through a
    /// read-only connection of its own, with SQLite's C API on a blocking
    /// thread (`store::sqlite_read`: a request is ~25 values, and sqlx
    /// copies each of them across threads — most of a year's report over
    /// 100 000 requests, bench-report). The rows cross to this task as
    /// `CaseFacts`, `BATCH` at a time; when `each`'s side stops, the read
    /// stops at its next batch.
    async fn report_cases_on_sqlite(
        &self,
        path: std::path::PathBuf,
        sql: String,
        scope: &ReportScope,
        args: Vec<String>,
        mut each: impl FnMut(CaseFacts),
    ) -> Result<(), StoreError> {
        const BATCH: usize = 1024;
        let mut binds = vec![super::ts(scope.from), super::ts(scope.to), super::ts(scope.as_of)];
        binds.extend(args);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<CaseFacts>>(2);
        let reader = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let started = std::time::Instant::now();
            let db = super::sqlite_read::ReadOnly::open(&path)?;
            let binds: Vec<Arg<'_>> = binds.iter().map(|b| Arg::Text(b)).collect();
            let (mut batch, mut rows) = (Vec::with_capacity(BATCH), 0usize);
            db.each_row(&sql, &binds, |row| {
                batch.push(facts_from_row(row)?);
                rows += 1;
                if batch.len() < BATCH {
                    return Ok(true);
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                Ok(tx.blocking_send(full).is_ok())
            })?;
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            tracing::debug!(
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "report: requests read"
            );
            Ok(())
        });
        while let Some(batch) = rx.recv().await {
            batch.into_iter().for_each(&mut each);
        }
        match reader.await {
            Ok(read) => read,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Sqlite {
                code: 0,
                message: format!("the report's read did not finish: {e}"),
            }),
        }
    }

    /// Every pend episode, up to `as_of`, of requests in the scope's
    /// practices and payers that were pended at least once; the caller keeps
    /// those of its requests. An episode starts with the move to
    /// `pended_for_info` and ends with the next move from it.
    pub async fn report_pends(&self, scope: &ReportScope) -> Result<Vec<PendEpisode>, StoreError> {
        let (sql, args) = report_pends_sql(scope);
        let mut query = sqlx::query(&sql).bind(super::ts(scope.as_of));
        for a in &args {
            query = query.bind(a);
        }
        // Few rows (pends are rare), sorted here by (case, id) whatever
        // order the plan reads them in.
        let mut moves: Vec<(i64, i64, DateTime<Utc>, bool)> = Vec::new();
        let mut rows = query.fetch(&self.pool);
        while let Some(row) = rows.try_next().await? {
            let case_id: i64 = row.try_get("case_id")?;
            let at = parse_ts(case_id, row.try_get::<String, _>("at")?.as_str())?;
            let to: Option<String> = row.try_get("to_status")?;
            moves.push((
                case_id,
                row.try_get("id")?,
                at,
                to.as_deref() == Some("pended_for_info"),
            ));
        }
        moves.sort_unstable_by_key(|m| (m.0, m.1));
        let mut out: Vec<PendEpisode> = Vec::new();
        for (case_id, _, at, into) in moves {
            let open = out.last_mut().filter(|p| p.case_id == case_id && p.end.is_none());
            match (into, open) {
                // A move into a pend (an exit recorded as a move to the same
                // status cannot happen: the graph forbids it).
                (true, _) => out.push(PendEpisode {
                    case_id,
                    start: at,
                    end: None,
                }),
                (false, Some(p)) => p.end = Some(at),
                // An exit without its entry: nothing to measure.
                (false, None) => {}
            }
        }
        Ok(out)
    }

    /// Moves to `needs_attention` made in the scope's period (by when they
    /// happened, whatever the request's submission time).
    pub async fn report_attention(&self, scope: &ReportScope) -> Result<Vec<AttentionEvent>, StoreError> {
        let (filter, args) = scope.case_filter(3);
        let sql = format!(
            "SELECT e.case_id, c.practice_id, c.payer, e.at, e.detail FROM case_events e JOIN cases c ON c.id = e.case_id \
             WHERE e.to_status = 'needs_attention' AND e.at >= $1 AND e.at < $2{filter} ORDER BY e.id"
        );
        let mut query = sqlx::query(&sql).bind(super::ts(scope.from)).bind(super::ts(scope.to));
        for a in &args {
            query = query.bind(a);
        }
        let mut rows = query.fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let case_id: i64 = row.try_get("case_id")?;
            let detail: String = row.try_get("detail")?;
            let note = serde_json::from_str::<serde_json::Value>(&detail)
                .ok()
                .and_then(|d| d.get("note").and_then(|n| n.as_str()).map(str::to_owned));
            out.push(AttentionEvent {
                case_id,
                practice_id: row.try_get("practice_id")?,
                payer: row.try_get("payer")?,
                at: parse_ts(case_id, row.try_get::<String, _>("at")?.as_str())?,
                note,
            });
        }
        Ok(out)
    }
}

fn facts_from_row(row: &(impl ReadRow + ?Sized)) -> Result<CaseFacts, StoreError> {
    let id = required(row.int("id")?, "id", 0)?;
    let urgency = required(row.text("urgency")?, "urgency", id)?;
    let urgency = urgency
        .parse::<Urgency>()
        .map_err(|reason| StoreError::Corrupt { id, reason })?;
    let expected_amount = match row.int("expected_cents")? {
        None => None,
        Some(cents) => Some(Usd::from_cents(cents).ok_or_else(|| StoreError::Corrupt {
            id,
            reason: format!("a negative expected amount ({cents} cents)"),
        })?),
    };
    let submitted_at = row.time("submitted_at", id)?.ok_or_else(|| StoreError::Corrupt {
        id,
        reason: "a reported request without its submission".into(),
    })?;
    let approved_at = row.time("approved_at", id)?;
    let partially_approved_at = row.time("partial_at", id)?;
    let first_decision = [
        (CaseStatus::Approved, approved_at),
        (CaseStatus::PartiallyApproved, partially_approved_at),
        (CaseStatus::Denied, row.time("denied_at", id)?),
    ]
    .into_iter()
    .filter_map(|(s, t)| t.map(|t| (s, t)))
    .min_by_key(|(_, t)| *t);
    let status = row.text("status")?;
    let status = parse_status(id, status.as_deref().unwrap_or("pending"))?;
    let recorded_deadline = match row.time("recorded_due", id)? {
        Some(due) => {
            let detail = row.text("recorded_detail")?;
            let window = detail
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                .and_then(|d| d.get("window").and_then(|w| w.as_str()).map(str::to_owned));
            Some((due, window))
        }
        None => None,
    };
    let count =
        |col: &str| -> Result<u32, StoreError> { Ok(row.int(col)?.unwrap_or(0).clamp(0, u32::MAX.into()) as u32) };
    let decision_text = row.text("denial_text")?;
    let (denial_code, denial_text) = if decision_text.is_some() {
        (row.text("denial_code")?, decision_text)
    } else {
        let event = row.text("denial_event")?;
        let code = event
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d.get("denial_code").and_then(|c| c.as_str()).map(str::to_owned));
        (code, None)
    };
    Ok(CaseFacts {
        id,
        practice_id: required(row.text("practice_id")?, "practice_id", id)?,
        case_ref: required(row.text("case_ref")?, "case_ref", id)?,
        payer: required(row.text("payer")?, "payer", id)?,
        urgency,
        expected_amount,
        plan_type: row.text("plan_type")?,
        state: row.text("state")?,
        cpt: row.text("cpt")?,
        setting: row.text("setting")?,
        submitted_at,
        submissions: count("submissions")?,
        first_decision,
        approved_at,
        partially_approved_at,
        first_pend_at: row.time("pend_at", id)?,
        pends: count("pends")?,
        cancelled_at: row.time("cancelled_at", id)?,
        appealed_at: row.time("appealed_at", id)?,
        status,
        has_letter: row.int("has_letter")?.unwrap_or(0) != 0,
        denial_code,
        denial_text,
        recorded_deadline,
    })
}
