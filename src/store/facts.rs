//! Each request's history as reports read it (`case_facts`, migration 19):
//! the fold of its status changes that `report` would otherwise make over
//! the whole event log at report time.
//!
//! A facts row is derived from the event log and nothing else: `refold`
//! rewrites it, by the same fold, in the transaction that appends any
//! status change (`insert_event`, and the import's bulk statements), and
//! `Ledger::rebuild_facts` rewrites every row from the events. Its
//! `last_at` is the latest time among the changes folded, so a report as of
//! an instant reads the rows with `last_at` at or before it and folds the
//! events of the others (`report::report_cases_sql`): the facts make a
//! report faster, never different.

use super::{Ledger, StoreError, Tx};

/// A payer state: the move from `submitting` to one of them is a
/// submission the payer had.
pub(crate) const PAYER_STATES: &str = "('pending', 'pended_for_info', 'approved', 'partially_approved', 'denied')";

/// The fold's aggregates over status changes `e` (grouped by case), in the
/// order of `FACT_COLUMNS` from `submitted_at` to `appealed_at`, then
/// `denied_id`. The report's fold over the events (`report.rs`) and the
/// facts (here) share it, so they cannot disagree.
pub(crate) fn fold_aggregates() -> String {
    format!(
        "MIN(e.at) FILTER (WHERE e.from_status = 'submitting' AND e.to_status IN {PAYER_STATES}) AS submitted_at, \
         COUNT(*) FILTER (WHERE e.from_status = 'submitting' AND e.to_status IN {PAYER_STATES}) AS submissions, \
         MIN(e.at) FILTER (WHERE e.to_status = 'approved') AS approved_at, \
         MIN(e.at) FILTER (WHERE e.to_status = 'partially_approved') AS partial_at, \
         MIN(e.at) FILTER (WHERE e.to_status = 'denied') AS denied_at, \
         MIN(e.at) FILTER (WHERE e.to_status = 'pended_for_info') AS pend_at, \
         COUNT(*) FILTER (WHERE e.to_status = 'pended_for_info') AS pends, \
         MIN(e.at) FILTER (WHERE e.to_status = 'cancelled') AS cancelled_at, \
         MIN(e.at) FILTER (WHERE e.from_status IN ('denied', 'partially_approved') AND e.to_status = 'ready') AS appealed_at, \
         MIN(e.id) FILTER (WHERE e.to_status = 'denied') AS denied_id"
    )
}

/// The columns a report reads from a facts row (or from the fold in its
/// place), after `case_id`.
pub(crate) const FACT_COLUMNS: &str = "submitted_at, submissions, approved_at, partial_at, denied_at, pend_at, pends, \
     cancelled_at, appealed_at, denied_id, status";

/// `INSERT … SELECT` of the facts of the cases `e.case_id` matches in
/// `filter` (SQL over `case_events e`), from all their status changes.
fn fold_into_facts(filter: &str) -> String {
    let columns = FACT_COLUMNS;
    let updates: Vec<String> = ["last_id", "last_at"]
        .into_iter()
        .chain(FACT_COLUMNS.split(", "))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO case_facts (case_id, last_id, last_at, {columns}) \
         SELECT e.case_id, MAX(e.id), MAX(e.at), {aggregates}, \
           (SELECT e2.to_status FROM case_events e2 WHERE e2.case_id = e.case_id AND e2.to_status IS NOT NULL \
              ORDER BY e2.id DESC LIMIT 1) \
         FROM case_events e WHERE e.to_status IS NOT NULL{filter} GROUP BY e.case_id \
         ON CONFLICT (case_id) DO UPDATE SET {updates}",
        aggregates = fold_aggregates(),
        updates = updates.join(", "),
    )
}

/// The fold of `n` cases' facts, `$1` … `$n` their IDs.
pub(crate) fn refold_sql(n: usize) -> String {
    let marks: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    fold_into_facts(&format!(" AND e.case_id IN ({})", marks.join(", ")))
}

/// Rewrites the facts of `cases` from their events, in the transaction that
/// has just appended status changes to them. Every path that appends a
/// status change calls it (`insert_event` for one, the import for its
/// batch).
pub(crate) async fn refold(tx: &mut Tx<'_>, cases: &[i64]) -> Result<(), StoreError> {
    if cases.is_empty() {
        return Ok(());
    }
    let sql = refold_sql(cases.len());
    let mut q = sqlx::query(&sql);
    for id in cases {
        q = q.bind(*id);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

impl Ledger {
    /// Rewrites every request's facts from the event log, in one
    /// transaction (`precert db rebuild-facts`): what to do if the table is
    /// ever suspected, since the events are the source of truth. Returns
    /// how many requests it folded.
    pub async fn rebuild_facts(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM case_facts").execute(&mut *tx).await?;
        let done = sqlx::query(&fold_into_facts("")).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
