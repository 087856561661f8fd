//! Every query on a hot path (the escalation scan, `cases list` under each
//! filter, `cases show`, the job lease, the outbox claim) reads through an
//! index: the database's own plan for it (`precert::store::hot_queries`)
//! has no full read of a table and, for a paged read, no sort of
//! everything it matched — what would grow with the ledger.

use precert::store::hot_queries;

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
