//! The queries on precert's hot paths, as the database will run them: the
//! tests in `tests/it/query_plan.rs` ask each database for its plan and
//! refuse a full read of a large table (or a sort of one) where an index
//! should answer. A hot query that is added or changed belongs here.

use sqlx::Row;

use super::{Backend, CaseFilter, Ledger, StoreError, Work};
use crate::case::CaseStatus;

/// A value bound to a query's placeholder for its plan.
#[derive(Clone, Debug)]
pub enum PlanArg {
    Int(i64),
    Text(String),
}

/// One hot-path query.
#[derive(Clone, Debug)]
pub struct HotQuery {
    /// What it serves, for the test's message.
    pub name: String,
    pub sql: String,
    pub args: Vec<PlanArg>,
    /// It reads a page in index order: a sort of the rows it matches would
    /// grow with the ledger.
    pub ordered: bool,
}

fn text(s: &str) -> PlanArg {
    PlanArg::Text(s.to_owned())
}

fn q(name: impl Into<String>, sql: impl Into<String>, args: Vec<PlanArg>, ordered: bool) -> HotQuery {
    HotQuery {
        name: name.into(),
        sql: sql.into(),
        args,
        ordered,
    }
}

/// Every hot-path query with plausible values.
pub fn hot_queries(backend: Backend) -> Vec<HotQuery> {
    let now = text("2026-12-01T12:00:00.000000Z");
    let mut all = vec![q(
        "escalation scan: the cases due for a look",
        super::escalations::DUE_FOR_RULES,
        vec![text("p"), text(""), now.clone(), PlanArg::Int(0), PlanArg::Int(500)],
        true,
    )];
    for (practice, payer, status) in [
        (None, None, None),
        (Some("p"), None, None),
        (None, Some("sandbox"), None),
        (None, None, Some(CaseStatus::Pending)),
        (Some("p"), Some("sandbox"), None),
        (Some("p"), None, Some(CaseStatus::Pending)),
        (None, Some("sandbox"), Some(CaseStatus::Pending)),
        (Some("p"), Some("sandbox"), Some(CaseStatus::Pending)),
    ] {
        let filter = CaseFilter {
            practice: practice.map(str::to_owned),
            payer: payer.map(str::to_owned),
            status,
        };
        let (sql, values) = super::list_page_sql(&filter);
        let mut args = vec![PlanArg::Int(0), PlanArg::Int(101)];
        args.extend(values.into_iter().map(PlanArg::Text));
        all.push(q(format!("cases list, {filter:?}"), sql, args, true));
    }
    let case = format!("{} WHERE id = $1", super::SELECT_CASE);
    all.extend([
        q("cases show: by number", case, vec![PlanArg::Int(1)], false),
        q(
            "cases show: by practice and reference",
            format!("{} WHERE practice_id = $1 AND case_ref = $2", super::SELECT_CASE),
            vec![text("p"), text("R-1")],
            false,
        ),
        q(
            "cases show: by reference",
            format!("{} WHERE case_ref = $1 ORDER BY id", super::SELECT_CASE),
            vec![text("R-1")],
            false,
        ),
        q("cases show: events", super::SELECT_EVENTS, vec![PlanArg::Int(1)], false),
        q(
            "cases show: letters",
            super::SELECT_LETTERS,
            vec![PlanArg::Int(1)],
            false,
        ),
        q(
            "cases show: escalations",
            super::escalations::SELECT_CASE_ESCALATIONS,
            vec![PlanArg::Int(1)],
            false,
        ),
        q(
            "job queue: lease",
            crate::queue::lease_sql(backend, 1),
            vec![
                text("w"),
                now.clone(),
                now.clone(),
                text("lakeside-ortho"),
                text("sandbox"),
            ],
            true,
        ),
    ]);
    for (i, sql) in super::escalations::claim_mail_sql(backend.skip_locked())
        .into_iter()
        .enumerate()
    {
        all.push(q(
            format!("outbox claim {}", i + 1),
            sql,
            vec![now.clone(), now.clone()],
            true,
        ));
    }
    all.push(q(
        "intake API: the updated_since sync page",
        super::api::sync_page_sql(),
        vec![text("p"), now.clone(), PlanArg::Int(0), PlanArg::Int(101)],
        true,
    ));
    for (i, sql) in super::api::claim_webhook_sql(backend.skip_locked())
        .into_iter()
        .enumerate()
    {
        all.push(q(
            format!("webhook claim {}", i + 1),
            sql,
            vec![now.clone(), now.clone()],
            true,
        ));
    }
    all.push(q(
        "import: the batch's cases already stored",
        super::stored_sql(3),
        vec![text("p"), text("R-1"), text("R-2"), text("R-3")],
        false,
    ));
    for (name, sql, values, ordered) in super::console::worklist_queries(backend) {
        all.push(q(name, sql, values.into_iter().map(PlanArg::Text).collect(), ordered));
    }
    for work in [Work::Submit, Work::Poll, Work::Letters, Work::New] {
        all.push(q(
            format!("worker: is there work? ({work:?})"),
            super::has_work_sql(backend, work),
            vec![text("p"), text("sandbox")],
            false,
        ));
        // The page is sorted by id: what it sorts is the job's work (the
        // cases the condition selects), not the practice's ledger.
        all.push(q(
            format!("worker: a page of its cases ({work:?})"),
            super::work_page_sql(backend, work),
            vec![text("p"), text("sandbox"), PlanArg::Int(0), PlanArg::Int(500)],
            false,
        ));
    }
    all
}

impl Ledger {
    /// The database's plan for `query`, one line per step: SQLite's
    /// `EXPLAIN QUERY PLAN` details; PostgreSQL's `EXPLAIN`, asked with
    /// sequential scans discouraged (a small test table would otherwise
    /// always be read whole), so a `Seq Scan` left means no index serves.
    #[doc(hidden)]
    pub async fn query_plan(&self, query: &HotQuery) -> Result<Vec<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let (sql, col) = match self.backend {
            Backend::Sqlite => (format!("EXPLAIN QUERY PLAN {}", query.sql), "detail"),
            Backend::Postgres => {
                sqlx::query("SET enable_seqscan = off").execute(&mut *conn).await?;
                (format!("EXPLAIN {}", query.sql), "QUERY PLAN")
            }
        };
        let mut qy = sqlx::query(&sql);
        for a in &query.args {
            qy = match a {
                PlanArg::Int(i) => qy.bind(*i),
                PlanArg::Text(t) => qy.bind(t.clone()),
            };
        }
        // EXPLAIN without ANALYZE runs nothing, an UPDATE included.
        let rows = qy.fetch_all(&mut *conn).await?;
        if self.backend == Backend::Postgres {
            sqlx::query("RESET enable_seqscan").execute(&mut *conn).await?;
        }
        rows.iter().map(|r| Ok(r.try_get::<String, _>(col)?)).collect()
    }
}

/// The statements an import repeats for every batch, as it prepares them,
/// with plausible values: the read of a batch's cases already stored and
/// the fold of a batch's facts. `tests/it/query_plan.rs` asks PostgreSQL
/// for the generic plans it keeps for them after an import into a new
/// ledger.
#[doc(hidden)]
pub fn bulk_import_queries() -> Vec<HotQuery> {
    let stored = 4 * super::ROWS_A_STATEMENT;
    let folded = super::ROWS_A_STATEMENT;
    vec![
        q(
            "the batch's cases already stored",
            super::stored_sql(stored),
            std::iter::once(text("lakeside-ortho"))
                .chain((0..stored).map(|i| PlanArg::Text(format!("SYN-{i:06}"))))
                .collect(),
            false,
        ),
        q(
            "the fold of the batch's facts",
            super::facts::refold_sql(folded),
            (1..=folded as i64).map(PlanArg::Int).collect(),
            false,
        ),
    ]
}

/// Below this many cases created, an import leaves the statistics alone:
/// one batch runs each statement about once, and a plan kept is a plan
/// made for more than one batch.
const BULK: u64 = 500;

/// The planner's statistics over a bulk write (the import), PostgreSQL's.
///
/// PostgreSQL plans a statement prepared on a connection once it has run a
/// few times (a generic plan) and keeps that plan until the table's
/// statistics change. An import into a new ledger prepares its statements
/// while `cases` holds a few rows and no statistics, so the plan then kept
/// reads every case of the practice to find a batch's 200 (`cases_worklist`
/// by `practice_id` alone) and every event to fold a batch's facts (a
/// `Seq Scan` of `case_events`): each batch costs more than the last, and
/// 100 000 cases took 15–71 s by whether autovacuum's first ANALYZE (a
/// minute or more away) came early. One ANALYZE once the import has
/// written more cases than the statistics know of gives the planner the
/// columns' shapes (a case ID is unique, a practice is not selective),
/// which scale with the table from then on.
///
/// SQLite has no statistics unless ANALYZE writes them and plans each
/// statement by its indexes' shapes; nothing is done there.
#[derive(Debug, Default)]
pub enum BulkStats {
    /// The statistics' row count of `cases` not read yet.
    #[default]
    Unread,
    /// The rows PostgreSQL's statistics count in `cases` (0 when never
    /// analyzed).
    Known(u64),
    /// Refreshed, unreadable, or SQLite: nothing more to do.
    Done,
}

impl Ledger {
    /// Called after each committed batch of a bulk write with the cases it
    /// has created so far: on PostgreSQL, analyzes the ledger's busiest
    /// tables once those are at least `BULK` and outnumber what the
    /// statistics knew of. A failure (a role that does not own the tables)
    /// is logged and the write goes on: statistics make it faster, never
    /// different.
    pub async fn keep_planner_stats(&self, stats: &mut BulkStats, created: u64) {
        if self.backend != Backend::Postgres {
            *stats = BulkStats::Done;
        }
        if matches!(stats, BulkStats::Done) || created < BULK {
            return;
        }
        if matches!(stats, BulkStats::Unread) {
            let known = sqlx::query(
                "SELECT CAST(GREATEST(reltuples, 0) AS BIGINT) AS n FROM pg_class WHERE oid = 'cases'::regclass",
            )
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get::<i64, _>("n"));
            *stats = match known {
                Ok(n) => BulkStats::Known(n as u64),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the planner's statistics of the ledger; left to autovacuum.");
                    BulkStats::Done
                }
            };
        }
        let BulkStats::Known(known) = *stats else { return };
        if created <= known {
            return;
        }
        *stats = BulkStats::Done;
        let start = std::time::Instant::now();
        match sqlx::query("ANALYZE cases, case_events, case_facts")
            .execute(&self.pool)
            .await
        {
            Ok(_) => tracing::debug!(
                created,
                known,
                ms = start.elapsed().as_millis() as u64,
                "The ledger's planner statistics refreshed during a bulk write."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot analyze the ledger's tables; their plans are left to autovacuum.")
            }
        }
    }
}
