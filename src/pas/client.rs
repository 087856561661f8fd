//! The PAS HTTP client: an OAuth2 client-credentials token kept and renewed
//! before it expires, `Claim/$submit`, `Claim/$inquire` and `Subscription`.
//!
//! What the payer's status codes mean to it: 429 waits for `Retry-After`
//! (up to a bound, beyond which the caller is told to come back later); 5xx
//! and refused connections are retried with exponential backoff and jitter,
//! a bounded number of times; a 4xx is final and its OperationOutcome's
//! diagnostics become the error, because sending the same request again
//! cannot succeed.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::resources::OperationOutcome;
use super::retry::{backoff, renew_after, retry_after, RetryPolicy};
use crate::config::PayerBinding;

const FHIR_JSON: &str = "application/fhir+json";

/// Where a payer's PAS API is and who precert is to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The FHIR base, e.g. `https://payer.example/fhir` (no trailing slash).
    pub fhir_base: String,
    pub token_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

impl Endpoint {
    /// From a practice's payer binding: `account.client_id` and
    /// `secrets.client_secret`, and where the API is: `account.fhir_base_url`
    /// and `account.token_url` when given, else `BASE/fhir` and
    /// `BASE/oauth/token` under `base_url` (the playbook's `base_url`, or the
    /// binding's override), the layout of the sandbox payer.
    pub fn from_binding(payer: &str, b: &PayerBinding, base_url: Option<&str>) -> Result<Endpoint, ClientError> {
        let base = base_url
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty());
        let account = |key: &str, under_base: Option<&str>| {
            b.account
                .get(key)
                .map(|v| v.trim().trim_end_matches('/').to_owned())
                .filter(|v| !v.is_empty())
                .or_else(|| Some(format!("{}/{}", base?, under_base?)))
                .ok_or_else(|| ClientError::Config(format!("payers.{payer}.account.{key} is required for the PAS API")))
        };
        let secret = b
            .secrets
            .get("client_secret")
            .ok_or_else(|| ClientError::Config(format!("payers.{payer}.secrets.client_secret is required")))?
            .value()
            .map_err(|e| ClientError::Config(format!("payers.{payer}.secrets.client_secret: {e}")))?;
        Ok(Endpoint {
            fhir_base: account("fhir_base_url", Some("fhir"))?,
            token_url: account("token_url", Some("oauth/token"))?,
            client_id: account("client_id", None)?,
            client_secret: secret.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("PAS API configuration: {0}")]
    Config(String),
    #[error("cannot get an access token from {url}: {message}")]
    Token { url: String, message: String },
    #[error("the payer refused the request (HTTP {status}): {}", issues.join("; "))]
    Rejected { status: u16, issues: Vec<String> },
    #[error("the payer is throttling requests; retry after {}s", retry_after.as_secs())]
    Throttled { retry_after: Duration },
    #[error("the payer failed {attempts} time(s); last: HTTP {status}: {message}")]
    Server {
        status: u16,
        attempts: u32,
        message: String,
    },
    #[error("cannot reach the payer at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("the payer's answer from {url} is not usable: {message}")]
    InvalidResponse { url: String, message: String },
}

impl ClientError {
    /// A 4xx: the request itself is wrong, and a person must change it.
    pub fn is_rejected(&self) -> bool {
        matches!(self, ClientError::Rejected { .. })
    }

    /// Trying again later may succeed (throttling, payer outage, network).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClientError::Throttled { .. } | ClientError::Server { .. } | ClientError::Transport { .. }
        )
    }
}

struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// Where and as whom an OAuth2 client-credentials token is asked for.
pub struct TokenRequest<'a> {
    pub url: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a SecretString,
    pub scope: Option<&'a str>,
}

/// One cached OAuth2 client-credentials token, renewed before it expires.
/// The PAS client keeps one; the playbook engine keeps one per payer
/// account for `http` steps with `auth: oauth2`, so both channels share the
/// same renewal rules.
#[derive(Default)]
pub struct TokenCache {
    slot: Mutex<Option<Token>>,
}

impl TokenCache {
    pub fn new() -> TokenCache {
        TokenCache::default()
    }

    /// Forgets the token (the payer answered 401 with it).
    pub async fn forget(&self) {
        *self.slot.lock().await = None;
    }

    /// The cached token, or a new one when it is about to expire.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        policy: &RetryPolicy,
        req: &TokenRequest<'_>,
    ) -> Result<SecretString, ClientError> {
        // The lock is held while a new token is fetched, so callers that
        // arrive meanwhile wait for it instead of each fetching their own.
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.value.clone());
        }
        let url = req.url;
        let send = || {
            let mut form = vec![("grant_type", "client_credentials")];
            if let Some(scope) = req.scope {
                form.push(("scope", scope));
            }
            http.post(url)
                .basic_auth(req.client_id, Some(req.client_secret.expose_secret()))
                .form(&form)
        };
        let (status, _, bytes) = send_with_policy(policy, url, send, true).await?;
        let fail = |message: String| ClientError::Token {
            url: url.to_owned(),
            message,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| fail(format!("HTTP {status}, not JSON: {e}")))?;
        if !status.is_success() {
            let err = v.get("error").and_then(Value::as_str).unwrap_or("error");
            let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
            return Err(fail(format!("HTTP {status}: {err} {desc}").trim().to_owned()));
        }
        let value = v
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| fail("no access_token in the answer".into()))?;
        let lifetime = Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(300));
        let token = SecretString::from(value.to_owned());
        *slot = Some(Token {
            value: token.clone(),
            renew_at: Instant::now() + renew_after(lifetime, policy.token_refresh_margin),
        });
        tracing::debug!(client_id = %req.client_id, lifetime_s = lifetime.as_secs(), "Access token obtained.");
        Ok(token)
    }
}

pub struct PasClient {
    http: reqwest::Client,
    endpoint: Endpoint,
    policy: RetryPolicy,
    token: TokenCache,
}

impl PasClient {
    pub fn new(endpoint: Endpoint, policy: RetryPolicy) -> Result<PasClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("precert/", env!("CARGO_PKG_VERSION")))
            // A redirected POST would arrive as a GET, or not at all; a
            // payer that moved its API is a configuration change.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(PasClient {
            http,
            endpoint,
            policy,
            token: TokenCache::new(),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `POST Claim/$submit`: the response Bundle (first entry ClaimResponse).
    /// Sent once: a 5xx or a timeout may hide a request that arrived, so it
    /// is returned for the caller to ask (`$inquire`) before sending again.
    pub async fn submit(&self, bundle: &impl serde::Serialize) -> Result<Value, ClientError> {
        self.post_fhir_with("Claim/$submit", bundle, false).await
    }

    /// The retry policy (attempts and backoff) of this client.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// `POST Claim/$inquire`: the current answer to an earlier request.
    pub async fn inquire(&self, bundle: &impl serde::Serialize) -> Result<Value, ClientError> {
        self.post_fhir("Claim/$inquire", bundle).await
    }

    /// `POST Subscription`: the Subscription as the payer stored it.
    pub async fn subscribe(&self, subscription: &Value) -> Result<Value, ClientError> {
        self.post_fhir("Subscription", subscription).await
    }

    /// `DELETE Subscription/ID`: no more notifications (the daemon stops).
    pub async fn unsubscribe(&self, id: &str) -> Result<(), ClientError> {
        let url = format!("{}/Subscription/{id}", self.endpoint.fhir_base);
        let token = self.token().await?;
        let (status, headers, bytes) = self
            .send(&url, || {
                self.http
                    .delete(&url)
                    .bearer_auth(token.expose_secret())
                    .header("Accept", FHIR_JSON)
            })
            .await?;
        if status.is_success() || status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(());
        }
        finish(&url, status, &headers, &bytes).map(|_| ())
    }

    async fn post_fhir(&self, path: &str, body: &impl serde::Serialize) -> Result<Value, ClientError> {
        self.post_fhir_with(path, body, true).await
    }

    /// `body` is written as JSON once, straight from its types (a Bundle
    /// is not built as a `Value` first), and sent as is on every attempt.
    async fn post_fhir_with(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        resend_on_5xx: bool,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/{path}", self.endpoint.fhir_base);
        // `Bytes`: each attempt shares the one body, uncopied.
        let text = bytes::Bytes::from(
            serde_json::to_vec(body)
                .map_err(|e| ClientError::Config(format!("the request to {url} cannot be written as JSON: {e}")))?,
        );
        let mut renewed = false;
        loop {
            let token = self.token().await?;
            let send = || {
                self.http
                    .post(&url)
                    .bearer_auth(token.expose_secret())
                    .header(CONTENT_TYPE, FHIR_JSON)
                    .header("Accept", FHIR_JSON)
                    .body(text.clone())
            };
            let (status, headers, bytes) = send_with_policy(&self.policy, &url, send, resend_on_5xx).await?;
            // A token the payer revoked early: forget it and try once more.
            if status == StatusCode::UNAUTHORIZED && !renewed {
                self.token.forget().await;
                renewed = true;
                continue;
            }
            return finish(&url, status, &headers, &bytes);
        }
    }

    /// The cached token, or a new one when it is about to expire.
    async fn token(&self) -> Result<SecretString, ClientError> {
        let req = TokenRequest {
            url: &self.endpoint.token_url,
            client_id: &self.endpoint.client_id,
            client_secret: &self.endpoint.client_secret,
            scope: None,
        };
        self.token.token(&self.http, &self.policy, &req).await
    }

    /// Sends until the answer is neither a 429 nor a 5xx, within the policy.
    async fn send(
        &self,
        url: &str,
        request: impl Fn() -> RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, bytes::Bytes), ClientError> {
        send_with_policy(&self.policy, url, request, true).await
    }
}

/// Sends until the answer is neither a 429 nor a 5xx, within the policy:
/// waits out a bounded `Retry-After`, backs off after a 5xx or a refused
/// connection. Shared by the PAS client and the playbook engine's `http`
/// steps.
///
/// `resend_on_5xx` is false for a request that sends a submission: a 5xx
/// may come after the payer stored it, so it is returned at once and the
/// caller asks the payer (`$inquire`, `find_existing`) before sending again.
pub async fn send_with_policy(
    p: &RetryPolicy,
    url: &str,
    request: impl Fn() -> RequestBuilder,
    resend_on_5xx: bool,
) -> Result<(StatusCode, HeaderMap, bytes::Bytes), ClientError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last = attempt >= p.max_attempts.max(1);
        let response = match request().send().await {
            Ok(r) => r,
            // Only a refused connection is retried: the payer never saw
            // the request. A timeout may hide a request that arrived,
            // and a second $submit would be a second request.
            Err(e) if e.is_connect() && !last => {
                let wait = backoff(p, attempt);
                tracing::warn!(url, attempt, wait_ms = wait.as_millis() as u64, error = %e, "Payer API unreachable; retrying.");
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(source) => {
                return Err(ClientError::Transport {
                    url: url.to_owned(),
                    source,
                })
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|source| ClientError::Transport {
            url: url.to_owned(),
            source,
        })?;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after(&headers).unwrap_or_else(|| backoff(p, attempt));
            if wait > p.max_retry_after || last {
                return Err(ClientError::Throttled { retry_after: wait });
            }
            tracing::info!(
                url,
                attempt,
                wait_ms = wait.as_millis() as u64,
                "Payer API throttled; waiting as asked."
            );
            tokio::time::sleep(wait).await;
            continue;
        }
        if status.is_server_error() {
            if last || !resend_on_5xx {
                return Err(ClientError::Server {
                    status: status.as_u16(),
                    attempts: attempt,
                    message: issues(&bytes).join("; "),
                });
            }
            let wait = backoff(p, attempt);
            tracing::warn!(url, attempt, %status, wait_ms = wait.as_millis() as u64, "Payer API failed; retrying.");
            tokio::time::sleep(wait).await;
            continue;
        }
        return Ok((status, headers, bytes));
    }
}

/// A 2xx answer as JSON; anything else as a typed error.
fn finish(url: &str, status: StatusCode, _headers: &HeaderMap, bytes: &[u8]) -> Result<Value, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::InvalidResponse {
            url: url.to_owned(),
            message: format!("HTTP {status} but not JSON: {e}"),
        });
    }
    Err(ClientError::Rejected {
        status: status.as_u16(),
        issues: issues(bytes),
    })
}

/// The diagnostics of an OperationOutcome body, or the body's first line.
pub(crate) fn issues(bytes: &[u8]) -> Vec<String> {
    let found: Vec<String> = serde_json::from_slice::<OperationOutcome>(bytes)
        .map(|oo| oo.issue.iter().map(|i| i.message()).collect())
        .unwrap_or_default();
    if !found.is_empty() {
        return found;
    }
    let text = String::from_utf8_lossy(bytes);
    let first = text.lines().next().unwrap_or("").chars().take(200).collect::<String>();
    vec![if first.trim().is_empty() {
        "no explanation given".into()
    } else {
        first
    }]
}
