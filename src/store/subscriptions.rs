//! The cluster's PAS subscriptions (migration 0014): one row per notification
//! route, so that N daemons on one ledger register each subscription once and
//! any of them can check a notification's token. See the migration for the
//! columns; the daemon's `sync_subscriptions` is the one user.

use chrono::{DateTime, Duration, Utc};
use sqlx::Row;

use super::{ts, Ledger, StoreError};

/// What a claim on a route's subscription found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriptionClaim {
    /// The subscription wanted is registered; nothing to do.
    Current,
    /// Another daemon is registering or replacing it right now.
    Busy { holder: String },
    /// This holder now owns the route until its lease ends: delete `old` at
    /// the payer (when there is one), register, then
    /// [`Ledger::complete_subscription`] or [`Ledger::release_subscription`].
    Taken { old: Option<String> },
    /// (Removal only) the row is another configuration's: leave it.
    NotOurs,
}

/// One route's row, for `precert pas subscriptions`.
#[derive(Clone, Debug)]
pub struct SubscriptionRow {
    pub route: String,
    pub fingerprint: String,
    pub subscription_id: Option<String>,
    pub holder: Option<String>,
    pub lease_until: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Ledger {
    /// Claims `route` for `holder` until `now + ttl` when its subscription is
    /// missing or incomplete, or (with `replace`) registered from another
    /// `fingerprint`; without `replace`, another fingerprint is `NotOurs`.
    pub async fn claim_subscription(
        &self,
        route: &str,
        fingerprint: &str,
        replace: bool,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionClaim, StoreError> {
        self.claim_route(route, Some((fingerprint, replace)), None, holder, ttl, now)
            .await
    }

    /// Claims `route` to delete its subscription, but only while it is still
    /// the one registered from `fingerprint` (a daemon that reloaded first may
    /// have registered a newer one: that is left alone).
    pub async fn claim_subscription_removal(
        &self,
        route: &str,
        fingerprint: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionClaim, StoreError> {
        self.claim_route(route, None, Some(fingerprint), holder, ttl, now).await
    }

    async fn claim_route(
        &self,
        route: &str,
        want: Option<(&str, bool)>,
        remove: Option<&str>,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<SubscriptionClaim, StoreError> {
        let until = ts(now + ttl);
        let mut tx = self.begin_write().await?;
        if let Some((want, _)) = want {
            let inserted = sqlx::query(
                "INSERT INTO pas_subscriptions (route, fingerprint, holder, lease_until, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (route) DO NOTHING",
            )
            .bind(route)
            .bind(want)
            .bind(holder)
            .bind(&until)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(SubscriptionClaim::Taken { old: None });
            }
        }
        let row = sqlx::query(&format!(
            "SELECT fingerprint, subscription_id, holder, lease_until FROM pas_subscriptions WHERE route = $1{}",
            self.backend.lock_row()
        ))
        .bind(route)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Removal of a route nobody registered.
            return Ok(SubscriptionClaim::NotOurs);
        };
        let fingerprint: String = row.try_get("fingerprint")?;
        let id: Option<String> = row.try_get("subscription_id")?;
        let other: Option<String> = row.try_get("holder")?;
        let lease: String = row.try_get("lease_until")?;
        if let Some((want, replace)) = want {
            if fingerprint == want && id.is_some() {
                return Ok(SubscriptionClaim::Current);
            }
            if fingerprint != want && !replace && id.is_some() {
                return Ok(SubscriptionClaim::NotOurs);
            }
        }
        if let Some(known) = remove {
            if fingerprint != known {
                return Ok(SubscriptionClaim::NotOurs);
            }
        }
        if let Some(other) = other.filter(|o| o != holder) {
            if lease > ts(now) {
                return Ok(SubscriptionClaim::Busy { holder: other });
            }
        }
        sqlx::query("UPDATE pas_subscriptions SET holder = $2, lease_until = $3, updated_at = $4 WHERE route = $1")
            .bind(route)
            .bind(holder)
            .bind(&until)
            .bind(ts(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(SubscriptionClaim::Taken { old: id })
    }

    /// Records the subscription `holder` registered and ends its claim. False
    /// when the claim was lost meanwhile (its lease ran out and another daemon
    /// took the route): the caller deletes what it registered.
    pub async fn complete_subscription(
        &self,
        route: &str,
        holder: &str,
        fingerprint: &str,
        subscription_id: &str,
        token_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE pas_subscriptions SET fingerprint = $3, subscription_id = $4, token_sha256 = $5, holder = NULL, \
             lease_until = $6, updated_at = $6 WHERE route = $1 AND holder = $2",
        )
        .bind(route)
        .bind(holder)
        .bind(fingerprint)
        .bind(subscription_id)
        .bind(token_sha256)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends `holder`'s claim without a subscription: the registration failed
    /// (after the old one, if any, was deleted). The next sync tries again.
    pub async fn release_subscription(&self, route: &str, holder: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pas_subscriptions SET subscription_id = NULL, token_sha256 = NULL, holder = NULL, \
             lease_until = $3, updated_at = $3 WHERE route = $1 AND holder = $2",
        )
        .bind(route)
        .bind(holder)
        .bind(ts(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a route whose subscription `holder` deleted at the payer.
    pub async fn forget_subscription(&self, route: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pas_subscriptions WHERE route = $1 AND holder = $2")
            .bind(route)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The SHA-256 (hex) of the token the payer must present on `route`, when
    /// a subscription is registered there.
    pub async fn subscription_token(&self, route: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT token_sha256 FROM pas_subscriptions WHERE route = $1")
            .bind(route)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("token_sha256")?,
            None => None,
        })
    }

    /// Every route's row, by route.
    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT route, fingerprint, subscription_id, holder, lease_until, updated_at \
             FROM pas_subscriptions ORDER BY route",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SubscriptionRow {
                    route: r.try_get("route")?,
                    fingerprint: r.try_get("fingerprint")?,
                    subscription_id: r.try_get("subscription_id")?,
                    holder: r.try_get("holder")?,
                    lease_until: parse(r.try_get::<String, _>("lease_until")?)?,
                    updated_at: parse(r.try_get::<String, _>("updated_at")?)?,
                })
            })
            .collect()
    }
}

fn parse(s: String) -> Result<DateTime<Utc>, StoreError> {
    super::parse_time(&s).map_err(|reason| StoreError::Corrupt { id: 0, reason })
}
