//! Grouped reads for `/metrics`: one statement each, whatever the ledger's
//! size (a scrape never loads cases). Cases by practice and status:
//! `Ledger::count_by_practice_status` in `store/mod.rs`.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{parse_ts, Ledger, StoreError};

/// The oldest open request of one practice, payer key and urgency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldestPending {
    pub practice_id: String,
    pub payer: String,
    /// `urgent` or `standard`.
    pub urgency: String,
    /// When it first went `pending` (the payer had it from then).
    pub since: DateTime<Utc>,
    /// Open requests (pending or pended for information) in the group.
    pub open: i64,
}

impl Ledger {
    /// For each practice, payer and urgency with requests the payer has not
    /// decided (pending, or pended for information): the oldest one's
    /// submission time and how many are open.
    pub async fn oldest_pending(&self) -> Result<Vec<OldestPending>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.practice_id, c.payer, c.urgency, MIN(e.at) AS since, COUNT(DISTINCT c.id) AS n \
             FROM cases c JOIN case_events e ON e.case_id = c.id AND e.to_status = 'pending' \
             WHERE c.status IN ('pending', 'pended_for_info') \
             GROUP BY c.practice_id, c.payer, c.urgency \
             ORDER BY c.practice_id, c.payer, c.urgency",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OldestPending {
                    practice_id: r.try_get("practice_id")?,
                    payer: r.try_get("payer")?,
                    urgency: r.try_get("urgency")?,
                    since: parse_ts(0, &r.try_get::<String, _>("since")?)?,
                    open: r.try_get("n")?,
                })
            })
            .collect()
    }

    /// Open or acknowledged escalations by practice and reason.
    pub async fn count_active_escalations(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT practice_id, reason, COUNT(*) AS n FROM escalations \
             WHERE state IN ('open', 'acknowledged') GROUP BY practice_id, reason ORDER BY practice_id, reason",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("practice_id")?, r.try_get("reason")?, r.try_get("n")?)))
            .collect()
    }
}
