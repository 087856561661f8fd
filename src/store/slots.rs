//! A payer's session slots across every daemon on one ledger (migration
//! 0007): the cluster-wide half of a playbook's `max_sessions`. Each daemon
//! keeps its own `PayerLimits` (pacing, breaker, its own cap); a run also
//! holds one of these slots, so several daemons on one PostgreSQL never open
//! more sessions to a portal than its playbook allows.

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;

use super::{ts, Ledger, StoreError};

/// One slot held: give it back with [`Ledger::release_payer_slot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotLease {
    pub playbook: String,
    pub slot: i64,
    /// The grant's fencing token.
    pub token: i64,
}

/// Sorts before every real time: a freed slot.
fn free() -> String {
    ts(DateTime::<Utc>::UNIX_EPOCH)
}

impl Ledger {
    /// Takes a free slot of `playbook`'s `max` for `holder` (`HOST-PID…`)
    /// until `now + ttl`; `None` when all are held. A slot held by a
    /// process of this host that is gone is free at once (a daemon killed
    /// here does not block its portal until its slot runs out).
    pub async fn claim_payer_slot(
        &self,
        playbook: &str,
        max: u32,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<SlotLease>, StoreError> {
        self.free_slots_of_dead_local_holders(playbook, holder, now).await?;
        for slot in 0..i64::from(max) {
            let row = sqlx::query(
                "INSERT INTO payer_slots (playbook, slot, holder, token, expires_at) VALUES ($1, $2, $3, 1, $4) \
                 ON CONFLICT (playbook, slot) DO UPDATE \
                 SET holder = excluded.holder, token = payer_slots.token + 1, expires_at = excluded.expires_at \
                 WHERE payer_slots.expires_at <= $5 \
                 RETURNING token",
            )
            .bind(playbook)
            .bind(slot)
            .bind(holder)
            .bind(ts(now + ttl))
            .bind(ts(now))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return Ok(Some(SlotLease {
                    playbook: playbook.to_owned(),
                    slot,
                    token: r.try_get("token")?,
                }));
            }
        }
        Ok(None)
    }

    /// Extends a held slot; false when it was lost (it ran out and another
    /// run took it).
    pub async fn renew_payer_slot(
        &self,
        lease: &SlotLease,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE payer_slots SET expires_at = $4 WHERE playbook = $1 AND slot = $2 AND token = $3 AND expires_at > $5",
        )
        .bind(&lease.playbook)
        .bind(lease.slot)
        .bind(lease.token)
        .bind(ts(now + ttl))
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a slot back (nothing when it was already lost).
    pub async fn release_payer_slot(&self, lease: &SlotLease) -> Result<(), StoreError> {
        sqlx::query("UPDATE payer_slots SET expires_at = $4 WHERE playbook = $1 AND slot = $2 AND token = $3")
            .bind(&lease.playbook)
            .bind(lease.slot)
            .bind(lease.token)
            .bind(free())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Slots of `playbook` held now, across every daemon.
    pub async fn payer_slots_held(&self, playbook: &str, now: DateTime<Utc>) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) AS n FROM payer_slots WHERE playbook = $1 AND expires_at > $2")
            .bind(playbook)
            .bind(ts(now))
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("n")?)
    }

    async fn free_slots_of_dead_local_holders(
        &self,
        playbook: &str,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // HOST-PID…: the host part is everything before the last `-PID`.
        let Some(host) = holder_host(holder) else {
            return Ok(());
        };
        let rows = sqlx::query("SELECT slot, holder, token FROM payer_slots WHERE playbook = $1 AND expires_at > $2")
            .bind(playbook)
            .bind(ts(now))
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            let other: String = r.try_get("holder")?;
            let (Some(h), Some(pid)) = (holder_host(&other), holder_pid(&other)) else {
                continue;
            };
            if h != host || pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            sqlx::query("UPDATE payer_slots SET expires_at = $4 WHERE playbook = $1 AND slot = $2 AND token = $3")
                .bind(playbook)
                .bind(r.try_get::<i64, _>("slot")?)
                .bind(r.try_get::<i64, _>("token")?)
                .bind(free())
                .execute(&self.pool)
                .await?;
            tracing::info!(playbook, holder = %other, "A payer slot held by a process that is gone was freed.");
        }
        Ok(())
    }
}

/// `HOST` of a holder named `HOST-PID` or `HOST-PID-wN`.
fn holder_host(holder: &str) -> Option<&str> {
    let (rest, last) = holder.rsplit_once('-')?;
    if last.parse::<u32>().is_ok() {
        return Some(rest);
    }
    rest.rsplit_once('-').map(|(host, _)| host)
}

/// `PID` of a holder named `HOST-PID` or `HOST-PID-wN`.
fn holder_pid(holder: &str) -> Option<u32> {
    let (rest, last) = holder.rsplit_once('-')?;
    last.parse()
        .ok()
        .or_else(|| rest.rsplit_once('-').and_then(|(_, pid)| pid.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_split_into_host_and_pid() {
        assert_eq!(holder_host("db-1.example-4242"), Some("db-1.example"));
        assert_eq!(holder_pid("db-1.example-4242"), Some(4242));
        assert_eq!(holder_host("db-1.example-4242-w3"), Some("db-1.example"));
        assert_eq!(holder_pid("db-1.example-4242-w3"), Some(4242));
        assert_eq!(holder_pid("nohyphen"), None);
    }
}
