//! Rest-hook notifications: the `Subscription` precert registers with a
//! payer, and the axum `Router` that receives what the payer then sends.
//!
//! precert gives each subscription a random bearer token of its own, which
//! the payer sends back as the `Authorization` header of every notification.
//! A request without it, or with a body that is not a PAS notification,
//! changes nothing. A genuine one is only a nudge: precert does not take the
//! payload's word for the decision but asks the payer (`$inquire`) with its
//! own credentials, then records that answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::client::{ClientError, PasClient};
use super::decode::decode;
use super::{inquire_case, Context};
use crate::case::CaseStatus;
use crate::config::Practice;
use crate::store::{Actor, Ledger};

pub const PAS_TOPIC: &str = "http://hl7.org/fhir/us/davinci-pas/SubscriptionTopic/PASSubscriptionTopic";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition";

/// A new random token for a subscription's `Authorization` header.
pub fn new_token() -> SecretString {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the operating system provides random bytes");
    SecretString::from(data_encoding::BASE64URL_NOPAD.encode(&bytes))
}

/// The Subscription to the PAS topic for the organisation `org_npi`, with
/// full-resource notifications sent to `endpoint` carrying `token`.
pub fn subscription(endpoint: &str, token: &SecretString, org_npi: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "meta": {"profile": [
            format!("{BACKPORT}/backport-subscription"),
            "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/profile-subscription",
        ]},
        "status": "requested",
        "reason": "Prior authorization updates for precert",
        "criteria": PAS_TOPIC,
        "_criteria": {"extension": [{
            "url": format!("{BACKPORT}/backport-filter-criteria"),
            "valueString": format!("org-identifier={org_npi}"),
        }]},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{
                "url": format!("{BACKPORT}/backport-payload-content"),
                "valueCode": "full-resource",
            }]},
            "header": [format!("Authorization: Bearer {}", token.expose_secret())],
        },
    })
}

/// Registers at the payer a subscription whose notifications go to
/// `endpoint` carrying a new random token; the payer's Subscription id and
/// the token.
pub async fn subscribe(
    client: &PasClient,
    endpoint: &str,
    org_npi: &str,
) -> Result<(String, SecretString), ClientError> {
    let token = new_token();
    let stored = client.subscribe(&subscription(endpoint, &token, org_npi)).await?;
    let id = stored.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok((id, token))
}

/// Registers a subscription for `practice` whose notifications go to
/// `endpoint`; returns the payer's Subscription id and the hook to serve.
pub async fn register(
    client: Arc<PasClient>,
    practice: Practice,
    endpoint: &str,
    data_dir: PathBuf,
    insurer_name: Option<String>,
) -> Result<(String, Hook), ClientError> {
    let (id, token) = subscribe(&client, endpoint, practice.npi.as_str()).await?;
    tracing::info!(practice = %practice.id, subscription = %id, "PAS subscription registered.");
    Ok((
        id,
        Hook {
            practice,
            client,
            token: Some(token),
            data_dir,
            insurer_name,
        },
    ))
}

/// What precert needs to act on one practice's notifications.
pub struct Hook {
    pub practice: Practice,
    pub client: Arc<PasClient>,
    /// The token the payer must present, when this hook registered the
    /// subscription itself. A route with a row in the ledger's
    /// `pas_subscriptions` (a daemon's) is checked against that row instead,
    /// whichever daemon registered it.
    pub token: Option<SecretString>,
    pub data_dir: PathBuf,
    pub insurer_name: Option<String>,
}

/// A notification that changed (or confirmed) a case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    pub case_id: i64,
    pub status: CaseStatus,
}

/// Serves `POST /pas/notify/{route}`: each registered subscription has its
/// own route (the daemon uses `PRACTICE/PAYER_KEY`, so two PAS payers of one
/// practice never share a token) and its hook. Hooks come and go while it
/// serves: a reload re-registers the subscriptions whose practice or payer
/// binding changed.
pub struct Receiver {
    ledger: Ledger,
    hooks: RwLock<HashMap<String, Arc<Hook>>>,
    handled: broadcast::Sender<Handled>,
}

impl Receiver {
    pub fn new(ledger: Ledger) -> Receiver {
        Receiver {
            ledger,
            hooks: RwLock::new(HashMap::new()),
            handled: broadcast::channel(64).0,
        }
    }

    /// Serves `hook` at `/pas/notify/{route}` (replacing one there).
    pub fn add(&self, route: &str, hook: Hook) {
        self.hooks
            .write()
            .expect("hooks lock")
            .insert(route.to_owned(), Arc::new(hook));
    }

    /// Stops serving `route`: its notifications are refused with 404.
    pub fn remove(&self, route: &str) -> bool {
        self.hooks.write().expect("hooks lock").remove(route).is_some()
    }

    fn hook(&self, route: &str) -> Option<Arc<Hook>> {
        self.hooks.read().expect("hooks lock").get(route).cloned()
    }

    /// Every handled notification, for whoever wants to wait on one.
    pub fn handled(&self) -> broadcast::Receiver<Handled> {
        self.handled.subscribe()
    }
}

/// `POST /pas/notify/{route}`: precert's HTTP listener mounts this.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/pas/notify/{*route}", post(receive))
        .with_state(receiver)
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn receive(
    State(rx): State<Arc<Receiver>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(hook) = rx.hook(&route) else {
        return answer(StatusCode::NOT_FOUND, "no subscription here");
    };
    let practice = hook.practice.id.clone();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let accepted = match rx.ledger.subscription_token(&route).await {
        Ok(Some(sha256)) => same(
            crate::files::sha256_hex(presented.trim().as_bytes()).as_bytes(),
            sha256.as_bytes(),
        ),
        Ok(None) => hook
            .token
            .as_ref()
            .is_some_and(|t| same(presented.trim().as_bytes(), t.expose_secret().as_bytes())),
        Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    if !accepted {
        tracing::warn!(%practice, "PAS notification refused: bad or missing token.");
        return answer(StatusCode::UNAUTHORIZED, "not authorized");
    }
    let Ok(bundle) = serde_json::from_slice::<Value>(&body) else {
        return answer(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    let is_notification = bundle.get("resourceType").and_then(Value::as_str) == Some("Bundle")
        && bundle.get("type").and_then(Value::as_str) == Some("history")
        && bundle.pointer("/entry/0/resource/resourceType").and_then(Value::as_str) == Some("Parameters");
    if !is_notification {
        return answer(StatusCode::BAD_REQUEST, "not a subscription notification Bundle");
    }
    // Handshakes and heartbeats carry no event.
    let kind = bundle
        .pointer("/entry/0/resource/parameter")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some("type"))
        })
        .and_then(|p| p.get("valueCode").and_then(Value::as_str));
    if matches!(kind, Some("handshake" | "heartbeat")) {
        return answer(StatusCode::OK, "acknowledged");
    }
    let outcome = match decode(&bundle) {
        Ok(o) => o,
        Err(e) => return answer(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    // The payload names the case; the decision itself is asked for below.
    let mut refs: Vec<String> = outcome.case_ref.iter().cloned().collect();
    refs.extend(outcome.identifiers.iter().cloned());
    let mut case = None;
    for r in &refs {
        match rx.ledger.find(&practice, r).await {
            Ok(Some(c)) => {
                case = Some(c);
                break;
            }
            Ok(None) => {}
            Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }
    let Some(case) = case else {
        return answer(StatusCode::NOT_FOUND, "no case matches the notification");
    };
    let ctx = Context {
        practice: &hook.practice,
        data_dir: &hook.data_dir,
        insurer_name: hook.insurer_name.as_deref(),
        now: rx.ledger.now(),
    };
    let actor = Actor::job("pas-notify", case.id);
    match inquire_case(&rx.ledger, &hook.client, &ctx, &case, &actor, None).await {
        Ok(applied) => {
            tracing::info!(case = %case.key(), to = %applied.to, "PAS notification handled.");
            let _ = rx.handled.send(Handled {
                case_id: case.id,
                status: applied.to,
            });
            answer(StatusCode::OK, "recorded")
        }
        Err(e) => {
            tracing::warn!(case = %case.key(), error = %e, "PAS notification: the follow-up inquiry failed.");
            // 503 asks the payer to deliver the notification again later.
            answer(StatusCode::SERVICE_UNAVAILABLE, "could not fetch the result; try again")
        }
    }
}
