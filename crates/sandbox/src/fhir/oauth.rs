//! OAuth2 client credentials: `POST /oauth/token` and bearer-token checks.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::config::ApiClient;
use crate::state::{random_token, ApiToken, Shared};

use super::outcome;

#[derive(Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Client credentials from HTTP Basic auth, if sent.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = data_encoding::BASE64.decode(encoded.trim().as_bytes()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

pub async fn token(State(state): State<Shared>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    if f.grant_type != "client_credentials" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=client_credentials is supported.",
        );
    }
    let (id, secret) = match (basic_credentials(&headers), f.client_id, f.client_secret) {
        (Some(c), _, _) => c,
        (None, Some(id), Some(secret)) => (id, secret),
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client_id and client_secret are required.",
            )
        }
    };
    let Some(client) = state
        .config
        .api_clients
        .iter()
        .find(|c| c.client_id == id && c.client_secret == secret)
    else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unknown client or wrong secret.",
        );
    };
    let access_token = random_token();
    let ttl = state.config.token_ttl_seconds;
    {
        let mut inner = state.lock();
        let now = Utc::now() + inner.clock_offset;
        // Expired tokens are dropped here so the map does not grow without bound.
        inner.tokens.retain(|_, t| t.expires_at > now);
        inner.tokens.insert(
            access_token.clone(),
            ApiToken {
                client_id: client.client_id.clone(),
                expires_at: now + Duration::seconds(i64::try_from(ttl).unwrap_or(3600)),
            },
        );
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "scope": f.scope.unwrap_or_else(|| "system/Claim.write system/ClaimResponse.read system/Subscription.write".into()),
        })),
    )
        .into_response()
}

/// The API client behind a valid bearer token; `Err` is the 401 to send.
pub(super) fn authorize(state: &Shared, headers: &HeaderMap) -> Result<ApiClient, Response> {
    let unauthorized = |msg: &str| {
        let mut r = outcome(StatusCode::UNAUTHORIZED, "login", &[msg.to_string()]);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("A bearer token is required."))?;
    let client_id = {
        let inner = state.lock();
        let now = Utc::now() + inner.clock_offset;
        match inner.tokens.get(token) {
            Some(t) if t.expires_at > now => t.client_id.clone(),
            Some(_) => return Err(unauthorized("The access token has expired.")),
            None => return Err(unauthorized("The access token is not valid.")),
        }
    };
    state
        .config
        .api_clients
        .iter()
        .find(|c| c.client_id == client_id)
        .cloned()
        .ok_or_else(|| unauthorized("The client no longer exists."))
}
