//! The daemon's intake tasks (`docs/intake.md`): the drop folders of its
//! practices, and the webhook sender that empties `webhook_outbox`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::Ctx;
use crate::intake::folder::Watch;

/// The longest the webhook sender sleeps before looking at the outbox
/// again: a delivery queued by any process (the API, a worker, the CLI)
/// wakes nobody. One indexed query each time.
const WEBHOOK_POLL: Duration = Duration::from_secs(2);

/// Tells the ledger which practices have a webhook, so that their changes
/// queue deliveries whichever process makes them (at start, each reload).
pub(super) async fn sync_webhook_targets(ctx: &Ctx) {
    let settings = ctx.loaded.read().await.settings.clone();
    let practices: Vec<String> = settings
        .practices
        .iter()
        .filter(|p| p.api.webhook.is_some())
        .map(|p| p.id.clone())
        .collect();
    if let Err(e) = ctx.ledger.set_webhook_targets(&practices).await {
        tracing::error!(error = %e, "Cannot record which practices have a webhook.");
    }
}

/// Delivers due webhooks, then waits for the next one due (or a while).
pub(super) async fn webhook_sender(ctx: Arc<Ctx>) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the webhook sender.");
            return;
        }
    };
    loop {
        let settings = ctx.loaded.read().await.settings.clone();
        let next = match crate::api::webhook::deliver_due(&ctx.ledger, &settings, &client).await {
            Ok(_) => ctx.ledger.next_webhook_due().await.ok().flatten(),
            Err(e) => {
                tracing::error!(error = %e, "The webhook sender cannot read the outbox.");
                None
            }
        };
        let wait = next
            .map(|t| (t - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(WEBHOOK_POLL)
            .clamp(Duration::from_millis(100), WEBHOOK_POLL);
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Looks at every practice's drop folder at its `scan_seconds`.
pub(super) async fn drop_folders(ctx: Arc<Ctx>) {
    let mut watch = Watch::default();
    let mut last: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        let settings = ctx.loaded.read().await.settings.clone();
        let now = tokio::time::Instant::now();
        let mut next = Duration::from_secs(10);
        for practice in settings.practices.iter().filter(|p| p.intake.dir.is_some()) {
            let due = last.get(&practice.id).is_none_or(|t| now >= *t + practice.intake.scan);
            if due {
                last.insert(practice.id.clone(), now);
                watch.scan(practice, &settings, &ctx.ledger).await;
                next = next.min(practice.intake.scan);
            } else if let Some(t) = last.get(&practice.id) {
                next = next.min((*t + practice.intake.scan).saturating_duration_since(now));
            }
        }
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            () = tokio::time::sleep(next.max(Duration::from_millis(100))) => {}
        }
    }
}
