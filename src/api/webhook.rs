//! Webhook deliveries: each row of the ledger's `webhook_outbox` (queued in
//! the transaction of the decision or status change it reports) POSTed to
//! the practice's `[api] webhook_url`, signed, retried with backoff until
//! the receiver answers 2xx or the attempts run out.
//!
//! Headers of a delivery:
//! - `Precert-Signature: t=UNIX_SECONDS,v1=HEX` — HMAC-SHA256 with the
//!   practice's `webhook_secret` over `UNIX_SECONDS.BODY`;
//! - `Precert-Event-Id` and `Idempotency-Key` (`precert-EVENT`): the same
//!   on every retry of a delivery, so a receiver can drop repeats.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::Settings;
use crate::store::{ClaimedWebhook, Ledger, StoreError, WebhookOutcome};

/// How long a sender holds a claimed delivery before another may take it.
const CLAIM: Duration = Duration::from_secs(60);
/// How long a receiver has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts before a delivery is left `failed` (for `precert webhooks`).
pub const MAX_ATTEMPTS: u32 = 12;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// `t=TIMESTAMP,v1=HEX` for a body sent at `timestamp` (Unix seconds).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    )
}

/// The wait before attempt `attempts + 1`: `first`, doubled each time.
fn backoff(first: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

/// What one round of deliveries did.
#[derive(Debug, Default)]
pub struct Round {
    pub delivered: usize,
    pub retried: usize,
    pub failed: usize,
}

/// Delivers every due delivery, one after another. Returns what it did;
/// the caller asks the ledger when the next one is due.
pub async fn deliver_due(ledger: &Ledger, settings: &Settings, client: &reqwest::Client) -> Result<Round, StoreError> {
    let mut round = Round::default();
    while let Some(claimed) = ledger.claim_webhook(CLAIM).await? {
        let outcome = deliver(ledger.now(), settings, client, &claimed).await;
        match &outcome {
            WebhookOutcome::Delivered => {
                tracing::info!(practice = %claimed.practice_id, event = claimed.event_id, "Webhook delivered.");
                round.delivered += 1;
            }
            WebhookOutcome::Retry { at, error } => {
                tracing::warn!(practice = %claimed.practice_id, event = claimed.event_id, attempt = claimed.attempts, %at, %error, "Webhook not delivered; it will be retried.");
                round.retried += 1;
            }
            WebhookOutcome::Failed { error } => {
                tracing::error!(practice = %claimed.practice_id, event = claimed.event_id, %error, "Webhook delivery failed for good (precert webhooks list --failed).");
                round.failed += 1;
            }
        }
        ledger.finish_webhook(&claimed, &outcome).await?;
    }
    Ok(round)
}

async fn deliver(
    now: DateTime<Utc>,
    settings: &Settings,
    client: &reqwest::Client,
    claimed: &ClaimedWebhook,
) -> WebhookOutcome {
    let Some(hook) = settings
        .practice(&claimed.practice_id)
        .and_then(|p| p.api.webhook.as_ref())
    else {
        return WebhookOutcome::Failed {
            error: format!(
                "practice {} has no [api] webhook_url in this configuration",
                claimed.practice_id
            ),
        };
    };
    let secret = match hook.secret.value() {
        Ok(s) => s,
        Err(e) => return WebhookOutcome::Failed { error: e },
    };
    let timestamp = now.timestamp();
    let body = claimed.payload.as_bytes();
    let sent = client
        .post(&hook.url)
        .timeout(TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            "Precert-Signature",
            signature(secret.expose_secret().as_bytes(), timestamp, body),
        )
        .header("Precert-Event-Id", claimed.event_id.to_string())
        .header("Idempotency-Key", format!("precert-{}", claimed.event_id))
        .body(claimed.payload.clone())
        .send()
        .await;
    let error = match sent {
        Ok(res) if res.status().is_success() => return WebhookOutcome::Delivered,
        Ok(res) => format!("the receiver answered {}", res.status()),
        // Without the URL: it may carry a receiver's own token.
        Err(e) => format!("cannot reach the receiver: {}", e.without_url()),
    };
    if claimed.attempts >= MAX_ATTEMPTS {
        WebhookOutcome::Failed {
            error: format!("{error} (attempt {}, the last)", claimed.attempts),
        }
    } else {
        let wait = backoff(hook.retry_first, claimed.attempts);
        WebhookOutcome::Retry {
            at: now + chrono::Duration::from_std(wait).unwrap_or_default(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
        let first = Duration::from_secs(30);
        assert_eq!(backoff(first, 1), Duration::from_secs(30));
        assert_eq!(backoff(first, 2), Duration::from_secs(60));
        assert_eq!(backoff(first, 4), Duration::from_secs(240));
        assert_eq!(backoff(first, 11), MAX_BACKOFF);
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // The value OpenSSL computes for the same key and message:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key
        let sig = signature(b"key", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }
}
