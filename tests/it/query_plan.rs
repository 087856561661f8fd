//! Every query on a hot path (the escalation scan, `cases list` under each
//! filter, `cases show`, the job lease, the outbox claim) reads through an
//! index: the database's own plan for it (`precert::store::hot_queries`)
//! has no full read of a table and, for a paged read, no sort of
//! everything it matched — what would grow with the ledger.

use precert::store::{hot_queries, PlanArg};

use super::postgres::{both_backends, Backend, TestDb};

/// What in a plan line means the query reads or sorts more than its page.
fn problem(backend: Backend, line: &str, ordered: bool) -> Option<&'static str> {
    match backend {
        Backend::Sqlite if line.starts_with("SCAN ") => Some("reads a whole table"),
        // `FOR RIGHT PART` / `FOR LAST TERM OF ORDER BY`: rows come in the
        // index's order and only those tied on its leading key are sorted
        // (by id).
        Backend::Sqlite
            if ordered
                && line.contains("TEMP B-TREE")
                && !line.contains("RIGHT PART OF ORDER BY")
                && !line.contains("LAST TERM OF ORDER BY") =>
        {
            Some("sorts every row it matched")
        }
        Backend::Postgres if line.contains("Seq Scan") => Some("reads a whole table"),
        _ => None,
    }
}

async fn hot_queries_read_through_indexes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    let mut bad = Vec::new();
    for q in hot_queries(ledger.backend()) {
        let plan = ledger
            .query_plan(&q)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", q.name));
        assert!(!plan.is_empty(), "{}: an empty plan", q.name);
        let indexed = plan.iter().any(|l| {
            l.contains("USING INDEX")
                || l.contains("USING COVERING INDEX")
                || l.contains("USING INTEGER PRIMARY KEY")
                || l.contains("Index Scan")
                || l.contains("Index Only Scan")
                || l.contains("Bitmap Index Scan")
        });
        if !indexed {
            bad.push(format!("{}: no index used:\n  {}", q.name, plan.join("\n  ")));
        }
        for line in &plan {
            if let Some(why) = problem(backend, line, q.ordered) {
                bad.push(format!("{}: {why} (`{line}`):\n  {}", q.name, plan.join("\n  ")));
            }
        }
    }
    ledger.close().await;
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

both_backends!(
    #[tokio::test]
    hot_queries_read_through_indexes
);

/// A report reads each request's history from `case_facts` (migration 19)
/// and folds the events only of the requests changed after its instant:
/// those are found through `case_facts_last_at`, then their status changes
/// through `case_events_report` (migration 16) by case — never a walk of
/// every status change (the fold of a million events was most of `precert
/// report`'s time, bench-report). The pend moves still read that index
/// whole (a third of the events, none of their JSON). A plan that reads the
/// events' table itself (its JSON details, a random read per event) is what
/// made `precert report` take seconds over a million events.
async fn the_report_reads_events_through_its_own_index(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    let mut bad = Vec::new();
    for q in precert::store::report_queries(ledger.backend()) {
        let plan = ledger
            .query_plan(&q)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", q.name));
        if !plan.iter().any(|l| l.contains("case_events_report")) {
            bad.push(format!(
                "{}: not through case_events_report:\n  {}",
                q.name,
                plan.join("\n  ")
            ));
        }
        if q.name.contains("history") {
            if !plan.iter().any(|l| l.contains("case_facts_last_at")) {
                bad.push(format!(
                    "{}: the requests changed after the instant not found through case_facts_last_at:\n  {}",
                    q.name,
                    plan.join("\n  ")
                ));
            }
            // Each status change read by case: SQLite `SEARCH e … (case_id=?)`,
            // PostgreSQL an index condition on `case_id` under each read of
            // the index.
            let walks = plan.iter().enumerate().any(|(i, l)| match backend {
                Backend::Sqlite => l.trim_start_matches(['|', '`', '-', ' ']).starts_with("SCAN e "),
                Backend::Postgres => {
                    l.contains("case_events_report")
                        && !plan.get(i + 1).is_some_and(|n| {
                            n.contains("Index Cond: ((case_id =") || n.contains("Index Cond: (case_id =")
                        })
                }
            });
            if walks {
                bad.push(format!(
                    "{}: walks every status change instead of the changed requests':\n  {}",
                    q.name,
                    plan.join("\n  ")
                ));
            }
        }
        for line in &plan {
            let events_table = match backend {
                // `SCAN e` alone: the table; `SCAN e USING … INDEX`: an index.
                Backend::Sqlite => {
                    let l = line.trim_start_matches(['|', '`', '-', ' ']);
                    ["SCAN e", "SCAN e2", "SCAN e3"].contains(&l.trim())
                }
                Backend::Postgres => line.contains("Seq Scan on case_events"),
            };
            if events_table {
                bad.push(format!(
                    "{}: reads the events' table (`{line}`):\n  {}",
                    q.name,
                    plan.join("\n  ")
                ));
            }
        }
    }
    ledger.close().await;
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

both_backends!(
    #[tokio::test]
    the_report_reads_events_through_its_own_index
);

/// An import into a new PostgreSQL ledger prepares its statements while
/// `cases` is nearly empty and has no statistics; the generic plans
/// PostgreSQL then keeps for the rest of the import (until the statistics
/// change) found a batch's 200 cases by `practice_id` alone — every case of
/// the practice, a read that grew with each batch — and folded a batch's
/// facts over every event (`Seq Scan on case_events`). The import analyzes
/// the ledger once it has written more cases than the statistics knew of
/// (`Ledger::keep_planner_stats`); the plans kept after it read by the key.
#[tokio::test]
async fn an_import_into_a_new_postgresql_ledger_leaves_plans_that_read_by_the_case_key() {
    use sqlx::{Connection, Row};
    let db = TestDb::new(Backend::Postgres).await;
    let ledger = db.ledger().await;
    let sample = std::fs::read_to_string(db.project.path("samples/cases.csv")).unwrap();
    let mut lines = sample.lines();
    let header = lines.next().unwrap();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.split(',').position(|h| h == name).unwrap();
    // The sample's provider name is quoted and holds a comma: one more
    // field when split on commas, after the requesting provider's name.
    let shift = |i: usize| if i > at("requesting_provider_name") { i + 1 } else { i };
    let mut csv = format!("{header}\n");
    for i in 0..1_200 {
        let mut r = row.clone();
        let (case, member) = (format!("SYN-{i:06}"), format!("SYN{i:09}"));
        r[shift(at("case_id"))] = &case;
        r[shift(at("patient_member_id"))] = &member;
        r[shift(at("attachments"))] = "";
        csv.push_str(&r.join(","));
        csv.push('\n');
    }
    std::fs::write(db.project.path("samples/many.csv"), csv).unwrap();
    let report = db.import(&ledger, "samples/many.csv").await;
    assert_eq!(report.created, 1_200, "{report:?}");
    ledger.close().await;

    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let known: f32 = sqlx::query("SELECT reltuples FROM pg_class WHERE oid = 'cases'::regclass")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert!(
        known >= 500.0,
        "the import left `cases` without statistics (reltuples {known})"
    );
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut c)
        .await
        .unwrap();
    let mut bad = Vec::new();
    for (i, q) in precert::store::bulk_import_queries().into_iter().enumerate() {
        sqlx::query(&format!("PREPARE q{i} AS {}", q.sql))
            .execute(&mut c)
            .await
            .unwrap();
        let args: Vec<String> = q
            .args
            .iter()
            .map(|a| match a {
                PlanArg::Int(n) => n.to_string(),
                PlanArg::Text(t) => format!("'{t}'"),
            })
            .collect();
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN EXECUTE q{i}({})", args.join(", ")))
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
        // The read by its key: the case IDs of the batch under an index.
        let by_key = plan
            .iter()
            .any(|l| l.contains("Index Cond") && (l.contains("case_ref = ANY") || l.contains("case_id = ANY")));
        if !by_key || plan.iter().any(|l| l.contains("Seq Scan")) {
            bad.push(format!("{}: not read by its key:\n  {}", q.name, plan.join("\n  ")));
        }
    }
    c.close().await.unwrap();
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}
