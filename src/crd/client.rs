//! The CDS Hooks client of a payer's CRD service: discovery
//! (`GET URL/cds-services`) to find the service for the hook when the
//! playbook names none, then `POST URL/cds-services/ID`.
//!
//! It shares the PAS client's transport rules (`pas::client::send_with_policy`):
//! 429 waits for `Retry-After`, 5xx and refused connections are retried with
//! backoff; a CRD call asks a question and changes nothing at the payer, so
//! resending after a 5xx is safe. With `auth: oauth2` the binding's client
//! credentials token (as for PAS) goes in `Authorization: Bearer`.

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::pas::client::{issues, send_with_policy, TokenCache, TokenRequest};
use crate::pas::{ClientError, Endpoint, RetryPolicy};
use crate::playbook::{CrdHook, CrdService};

/// A payer's CRD service as one binding calls it.
pub struct CrdClient {
    http: reqwest::Client,
    /// The CDS Hooks base, without a trailing slash.
    base: String,
    service: Option<String>,
    hook: CrdHook,
    /// The binding's client credentials, when the playbook says `oauth2`.
    auth: Option<Endpoint>,
    token: TokenCache,
    policy: RetryPolicy,
    discovered: Mutex<Option<String>>,
}

/// What the service answered: the JSON and the exact bytes (kept as
/// evidence).
pub struct Answered {
    pub json: Value,
    pub bytes: Vec<u8>,
    /// The service's id (named or discovered).
    pub service: String,
}

impl CrdClient {
    /// `base` overrides the playbook's URL (the binding's
    /// `account.crd_url`); `auth` is the binding's PAS endpoint (its token
    /// URL and client credentials).
    pub fn new(
        svc: &CrdService,
        base: Option<&str>,
        auth: Option<Endpoint>,
        policy: RetryPolicy,
    ) -> Result<CrdClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("precert/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(CrdClient {
            http,
            base: base.unwrap_or(&svc.url).trim_end_matches('/').to_owned(),
            service: svc.service.clone(),
            hook: svc.hook,
            auth: if svc.oauth2 { auth } else { None },
            token: TokenCache::new(),
            policy,
            discovered: Mutex::new(None),
        })
    }

    pub fn hook(&self) -> CrdHook {
        self.hook
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn bearer(&self) -> Result<Option<secrecy::SecretString>, ClientError> {
        let Some(e) = &self.auth else { return Ok(None) };
        let req = TokenRequest {
            url: &e.token_url,
            client_id: &e.client_id,
            client_secret: &e.client_secret,
            scope: None,
        };
        self.token.token(&self.http, &self.policy, &req).await.map(Some)
    }

    /// The service id: the playbook's, or the first one discovery lists for
    /// the hook (asked once per client).
    pub async fn service(&self) -> Result<String, ClientError> {
        if let Some(s) = &self.service {
            return Ok(s.clone());
        }
        let mut found = self.discovered.lock().await;
        if let Some(s) = found.as_ref() {
            return Ok(s.clone());
        }
        let url = format!("{}/cds-services", self.base);
        let bearer = self.bearer().await?;
        let send = || {
            let mut r = self.http.get(&url).header("Accept", "application/json");
            if let Some(t) = &bearer {
                r = r.bearer_auth(t.expose_secret());
            }
            r
        };
        let (status, _, bytes) = send_with_policy(&self.policy, &url, send, true).await?;
        let v = json_of(&url, status, &bytes)?;
        let id = v
            .get("services")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|s| s.get("hook").and_then(Value::as_str) == Some(self.hook.as_str()))
            .and_then(|s| s.get("id").and_then(Value::as_str))
            .ok_or_else(|| ClientError::InvalidResponse {
                url: url.clone(),
                message: format!("discovery lists no service for the `{}` hook", self.hook.as_str()),
            })?
            .to_owned();
        *found = Some(id.clone());
        Ok(id)
    }

    /// Calls the service with a CDS Hooks request.
    pub async fn call(&self, request: &Value) -> Result<Answered, ClientError> {
        let service = self.service().await?;
        let url = format!("{}/cds-services/{service}", self.base);
        let text = request.to_string();
        let mut renewed = false;
        loop {
            let bearer = self.bearer().await?;
            let send = || {
                let mut r = self
                    .http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .header("Accept", "application/json")
                    .body(text.clone());
                if let Some(t) = &bearer {
                    r = r.bearer_auth(t.expose_secret());
                }
                r
            };
            let (status, _, bytes) = send_with_policy(&self.policy, &url, send, true).await?;
            if status == StatusCode::UNAUTHORIZED && self.auth.is_some() && !renewed {
                self.token.forget().await;
                renewed = true;
                continue;
            }
            let json = json_of(&url, status, &bytes)?;
            return Ok(Answered {
                json,
                bytes: bytes.into(),
                service,
            });
        }
    }
}

fn json_of(url: &str, status: StatusCode, bytes: &[u8]) -> Result<Value, ClientError> {
    if !status.is_success() {
        return Err(ClientError::Rejected {
            status: status.as_u16(),
            issues: issues(bytes),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ClientError::InvalidResponse {
        url: url.to_owned(),
        message: format!("HTTP {status} but not JSON: {e}"),
    })
}
