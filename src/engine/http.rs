//! `http` steps: one request to a payer's API, its answer checked and read
//! into variables, without a browser.
//!
//! The waiting rules are the PAS client's (`pas::client::send_with_policy`):
//! a bounded `Retry-After` after a 429, backoff after a 5xx or a refused
//! connection. OAuth2 tokens come from the same `TokenCache`, one per payer
//! account, kept by the engine across runs. What a failure means for the
//! case: a 4xx (or any status the step does not `expect`) is the payer
//! refusing the request — a person must look; an outage, throttling or a
//! timeout is worth trying again later.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use super::exec::{fail, Interp};
use super::{FailureKind, StepFailure};
use crate::pas::client::{send_with_policy, TokenCache, TokenRequest};
use crate::pas::{ClientError, RetryPolicy};
use crate::playbook::{single_expression, template, ExtractFrom, HttpAuth, HttpBody, HttpStep, JsonTpl, Step};

/// Token caches by payer account and token endpoint: (payer, practice,
/// token URL, client id).
type TokenKey = (String, String, String, String);

/// The engine's OAuth2 tokens for `http` steps, kept across runs so one
/// token serves every run of a payer account until it is renewed.
#[derive(Default)]
pub struct TokenCaches(Mutex<HashMap<TokenKey, Arc<TokenCache>>>);

impl TokenCaches {
    async fn get(&self, key: TokenKey) -> Arc<TokenCache> {
        self.0.lock().await.entry(key).or_default().clone()
    }
}

/// What `http` steps of one run share.
#[derive(Clone)]
pub struct ApiContext {
    /// Redirects are not followed: a redirected POST would arrive as a GET.
    pub http: reqwest::Client,
    pub policy: RetryPolicy,
    pub tokens: Arc<TokenCaches>,
    /// (payer, practice): whose tokens these are.
    pub account: (String, String),
}

/// The credential of one request, rendered.
enum Credential {
    None,
    OAuth2 {
        cache: Arc<TokenCache>,
        url: String,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
    },
    Bearer(String),
    Basic(String, String),
}

impl Interp<'_> {
    pub(super) async fn http_step(&mut self, step: &Step, h: &HttpStep) -> Result<(), StepFailure> {
        let url = self.render(step, &h.url)?;
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            fail(
                step,
                FailureKind::Fatal,
                format!("the url template `{}` gives no URL: {e}", h.url.source),
            )
        })?;
        // Logs and errors name the address without its query, which may
        // carry a member ID.
        let label = self.scrub(&format!("{}{}", parsed.origin().ascii_serialization(), parsed.path()));
        let mut headers = Vec::new();
        for (name, t) in &h.headers {
            let v = self.render(step, t)?;
            if t.secret {
                self.redact.push(v.clone());
            }
            headers.push((name.clone(), v));
        }
        let body = match &h.body {
            None => None,
            Some(HttpBody::Json(j)) => Some(
                serde_json::to_vec(&self.render_json(step, j)?)
                    .map_err(|e| fail(step, FailureKind::Fatal, e.to_string()))?,
            ),
            Some(HttpBody::Text(t)) => {
                let text = self.render(step, t)?;
                if h.content_type.contains("json") {
                    // Caught here, a template that writes broken JSON is a
                    // playbook bug, not something the payer should see.
                    if let Err(e) = serde_json::from_str::<Value>(&text) {
                        return Err(fail(
                            step,
                            FailureKind::Fatal,
                            format!("the body template does not give JSON: {e}"),
                        ));
                    }
                }
                Some(text.into_bytes())
            }
        };
        let credential = self.credential(step, h).await?;
        let method = reqwest::Method::from_bytes(h.method.as_bytes())
            .map_err(|e| fail(step, FailureKind::Fatal, format!("method {}: {e}", h.method)))?;
        self.record_intent(step).await?;
        let api = self.api.clone();
        let mut renewed = false;
        let (status, answer_headers, bytes) = loop {
            let token = match &credential {
                Credential::OAuth2 {
                    cache,
                    url,
                    client_id,
                    client_secret,
                    scope,
                } => {
                    let req = TokenRequest {
                        url,
                        client_id,
                        client_secret,
                        scope: scope.as_deref(),
                    };
                    let t = cache
                        .token(&api.http, &api.policy, &req)
                        .await
                        .map_err(|e| client_failure(step, e))?;
                    self.redact.push(t.expose_secret().to_owned());
                    Some(t)
                }
                _ => None,
            };
            let send = || {
                let mut r = api.http.request(method.clone(), parsed.clone()).timeout(step.timeout);
                for (n, v) in &headers {
                    r = r.header(n.as_str(), v.as_str());
                }
                r = match &credential {
                    Credential::None => r,
                    Credential::OAuth2 { .. } => r.bearer_auth(token.as_ref().expect("fetched above").expose_secret()),
                    Credential::Bearer(t) => r.bearer_auth(t),
                    Credential::Basic(u, p) => r.basic_auth(u, Some(p)),
                };
                if let Some(b) = &body {
                    r = r.header(CONTENT_TYPE, h.content_type.as_str()).body(b.clone());
                }
                r
            };
            // The request that sends a submission is never resent after a
            // 5xx: the payer may have stored it (find_existing decides).
            let answer = match send_with_policy(&api.policy, &label, send, !step.commit).await {
                Ok(a) => a,
                Err(e) => {
                    if let ClientError::Throttled { retry_after } = &e {
                        self.throttled = Some(*retry_after);
                    }
                    return Err(client_failure(step, e));
                }
            };
            // A token the payer revoked early: forget it and ask once more.
            if answer.0 == StatusCode::UNAUTHORIZED && !renewed {
                if let Credential::OAuth2 { cache, .. } = &credential {
                    cache.forget().await;
                    renewed = true;
                    continue;
                }
            }
            break answer;
        };
        if step.commit {
            super::fault::after_commit();
        }
        self.trace
            .note(format!("     {} {} -> {}", h.method, h.url.source, status.as_u16()));
        let expected = if h.expect.is_empty() {
            status.is_success()
        } else {
            h.expect.contains(&status.as_u16())
        };
        if !expected {
            let why = diagnostics(&bytes);
            return Err(fail(
                step,
                FailureKind::PortalChanged,
                format!("the payer refused the request (HTTP {}): {why}", status.as_u16()),
            ));
        }
        self.extract(step, h, status, &answer_headers, &bytes)
    }

    async fn credential(&mut self, step: &Step, h: &HttpStep) -> Result<Credential, StepFailure> {
        Ok(match &h.auth {
            None => Credential::None,
            Some(HttpAuth::Bearer(t)) => {
                let v = self.render(step, t)?;
                self.redact.push(v.clone());
                Credential::Bearer(v)
            }
            Some(HttpAuth::Basic { username, password }) => {
                let u = self.render(step, username)?;
                let p = self.render(step, password)?;
                self.redact.push(p.clone());
                Credential::Basic(u, p)
            }
            Some(HttpAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            }) => {
                let url = self.render(step, token_url)?;
                let client_id = self.render(step, client_id)?;
                let secret = self.render(step, client_secret)?;
                self.redact.push(secret.clone());
                let scope = match scope {
                    Some(s) => Some(self.render(step, s)?),
                    None => None,
                };
                let (payer, practice) = self.api.account.clone();
                let cache = self
                    .api
                    .tokens
                    .get((payer, practice, url.clone(), client_id.clone()))
                    .await;
                Credential::OAuth2 {
                    cache,
                    url,
                    client_id,
                    client_secret: SecretString::from(secret),
                    scope,
                }
            }
        })
    }

    fn extract(
        &mut self,
        step: &Step,
        h: &HttpStep,
        status: StatusCode,
        headers: &HeaderMap,
        bytes: &[u8],
    ) -> Result<(), StepFailure> {
        let mut json: Option<Value> = None;
        for (var, from) in &h.extract {
            let optional = h.optional.contains(var);
            let found = match from {
                ExtractFrom::Status => Some(Value::from(status.as_u16())),
                ExtractFrom::Header(name) => headers
                    .get(name.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| Value::String(v.to_owned())),
                ExtractFrom::Pointer(p) => {
                    if json.is_none() {
                        json = Some(serde_json::from_slice(bytes).map_err(|e| {
                            fail(
                                step,
                                FailureKind::PortalChanged,
                                format!("the answer (HTTP {}) is not JSON: {e}", status.as_u16()),
                            )
                        })?);
                    }
                    json.as_ref()
                        .and_then(|j| j.pointer(p))
                        .filter(|v| !v.is_null())
                        .cloned()
                }
            };
            let value = match found {
                Some(v) => v,
                None if optional => Value::String(String::new()),
                None => {
                    let where_ = match from {
                        ExtractFrom::Pointer(p) => format!("nothing at `{p}`"),
                        ExtractFrom::Header(n) => format!("no `{n}` header"),
                        ExtractFrom::Status => "no status".into(),
                    };
                    return Err(fail(
                        step,
                        FailureKind::PortalChanged,
                        format!("the answer (HTTP {}) has {where_} for `{var}`", status.as_u16()),
                    ));
                }
            };
            self.set_var(var, value);
        }
        Ok(())
    }

    fn render_json(&self, step: &Step, j: &JsonTpl) -> Result<Value, StepFailure> {
        Ok(match j {
            JsonTpl::Literal(v) => v.clone(),
            JsonTpl::Text(t) => Value::String(self.render(step, t)?),
            JsonTpl::Expr(t) => {
                let expr = single_expression(&t.source).unwrap_or_default();
                let bad = |e: String| fail(step, FailureKind::Fatal, format!("template at line {}: {e}", t.at.line));
                let v = template::eval(&self.env, expr, &self.ctx).map_err(bad)?;
                if v.is_undefined() {
                    return Err(bad(format!("`{expr}` is undefined")));
                }
                serde_json::to_value(&v).map_err(|e| bad(e.to_string()))?
            }
            JsonTpl::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.render_json(step, i))
                    .collect::<Result<_, _>>()?,
            ),
            JsonTpl::Object(fields) => {
                let mut m = serde_json::Map::new();
                for (k, v) in fields {
                    m.insert(k.clone(), self.render_json(step, v)?);
                }
                Value::Object(m)
            }
        })
    }
}

/// What a failed exchange means for the case.
pub(super) fn client_kind(e: &ClientError) -> FailureKind {
    match e {
        ClientError::Throttled { .. } | ClientError::Server { .. } | ClientError::Transport { .. } => {
            FailureKind::Retryable
        }
        // The payer refused the request or answered what precert cannot
        // read: sending it again as it is cannot help.
        ClientError::Rejected { .. } | ClientError::InvalidResponse { .. } => FailureKind::PortalChanged,
        // The payer does not accept the account's credentials.
        ClientError::Token { .. } => FailureKind::NeedsHuman,
        _ => FailureKind::Fatal,
    }
}

/// The error's text, without the full URL reqwest would print (its query
/// may carry PHI).
pub(super) fn client_message(e: ClientError) -> String {
    match e {
        ClientError::Transport { url, source } => {
            format!("cannot reach the payer at {url}: {}", source.without_url())
        }
        other => other.to_string(),
    }
}

fn client_failure(step: &Step, e: ClientError) -> StepFailure {
    let kind = client_kind(&e);
    fail(step, kind, client_message(e))
}

/// Why the payer refused: an OperationOutcome's diagnostics, a JSON error's
/// message (`error_description`, `error`, `message`, `detail`, `title`), or
/// the body's first line.
fn diagnostics(bytes: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        if v.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") {
            return crate::pas::client::issues(bytes).join("; ");
        }
        let said: Vec<&str> = ["error_description", "error", "message", "detail", "title"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_str))
            .collect();
        if !said.is_empty() {
            return said.join(": ");
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let first: String = text.lines().next().unwrap_or("").chars().take(200).collect();
    if first.trim().is_empty() {
        "no explanation given".into()
    } else {
        first
    }
}
