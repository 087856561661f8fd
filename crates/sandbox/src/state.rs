//! Shared server state: the store, sessions, tokens, subscriptions, hazards, the request
//! log and the sandbox clock.
//!
//! One mutex guards it all; it is held only for short, non-async sections, never across
//! an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::SandboxConfig;
use crate::store::{Attachment, Scenarios, Store, Transition};

/// Runtime-switchable misbehaviour, set through `PUT /admin/hazards`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Hazards {
    /// Added to every portal and API response, in milliseconds.
    pub latency_ms: u64,
    /// Share (0.0–1.0) of portal and API requests answered with HTTP 500.
    pub error_rate: f64,
    /// Seed of the random generator behind `error_rate`, for reproducible runs.
    pub seed: u64,
    /// Every portal page shows the maintenance page (HTTP 503).
    pub maintenance: bool,
    /// Portal sessions idle longer than this are ended (sandbox clock).
    pub session_idle_timeout_seconds: Option<u64>,
    /// After this many more pages behind the login, every portal session
    /// ends (the next page finds itself signed out); spent then.
    pub sign_out_after_pages: Option<u32>,
    /// After MFA, a "confirm your contact details" page must be confirmed.
    pub contact_details_interstitial: bool,
    /// After MFA, a CAPTCHA must be solved (by a human).
    pub captcha: bool,
    /// The next N API calls are answered with HTTP 429.
    pub api_throttle_next: u32,
    /// The `Retry-After` seconds sent with those 429s.
    pub api_retry_after_seconds: u64,
    /// Which wizard layout the portal serves: 1 (original) or 2 (changed IDs and labels).
    pub layout_version: u8,
    /// The next N status searches (`GET /portal/api/status` by a logged-in user) fail.
    pub status_search_fail_next: u32,
    /// How those searches fail.
    pub status_search_failure: SearchFailure,
    /// How long a `timeout` search hangs before it answers 504, in milliseconds.
    pub status_search_delay_ms: u64,
    /// PAS and CRD answers that depart from their specifications.
    pub off_spec: OffSpec,
}

/// How the PAS and CRD answers break their specifications (the `off_spec`
/// hazard).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OffSpec {
    /// As the specifications say.
    #[default]
    Off,
    /// Required elements left out, the decision still readable and tied to
    /// the request: PAS — no Bundle `timestamp`, the ClaimResponse entry
    /// without `fullUrl` and `resourceType`, the Patient it references left
    /// out; CRD — cards without `indicator` and `source`, the
    /// coverage-information without `date` and `coverage-assertion-id`.
    MissingElements,
    /// As `missing_elements`, and nothing ties the answer to the request:
    /// PAS — the ClaimResponse has no `id` and no `identifier`; CRD — the
    /// coverage-information is on an order with another id.
    Untied,
}

/// How a failing status search fails (the `status_search_failure` hazard).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SearchFailure {
    /// HTTP 500 with a plain-text body.
    #[default]
    #[serde(rename = "http_500")]
    Http500,
    /// HTTP 200 with no results and an `error` message.
    ErrorMessage,
    /// The answer hangs for `status_search_delay_ms`, then HTTP 504.
    Timeout,
}

/// What a failing search answers with `error_message`.
pub const SEARCH_UNAVAILABLE: &str = "The search service is temporarily unavailable.";

impl Default for Hazards {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            seed: 0,
            maintenance: false,
            session_idle_timeout_seconds: None,
            sign_out_after_pages: None,
            contact_details_interstitial: false,
            captcha: false,
            api_throttle_next: 0,
            api_retry_after_seconds: 30,
            layout_version: 1,
            status_search_fail_next: 0,
            status_search_failure: SearchFailure::Http500,
            status_search_delay_ms: 60_000,
            off_spec: OffSpec::Off,
        }
    }
}

/// A partial update of [`Hazards`]; absent fields are left as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HazardsPatch {
    pub latency_ms: Option<u64>,
    pub error_rate: Option<f64>,
    pub seed: Option<u64>,
    pub maintenance: Option<bool>,
    /// `0` switches the idle timeout off.
    pub session_idle_timeout_seconds: Option<u64>,
    pub sign_out_after_pages: Option<u32>,
    pub contact_details_interstitial: Option<bool>,
    pub captcha: Option<bool>,
    pub api_throttle_next: Option<u32>,
    pub api_retry_after_seconds: Option<u64>,
    pub layout_version: Option<u8>,
    pub status_search_fail_next: Option<u32>,
    pub status_search_failure: Option<SearchFailure>,
    pub status_search_delay_ms: Option<u64>,
    pub off_spec: Option<OffSpec>,
}

/// Where a logged-in portal user is in the login sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    NeedMfa,
    NeedContactDetails,
    NeedCaptcha,
    Active,
}

/// Service details entered on wizard step 2, kept as typed so errors can re-show them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceForm {
    pub request_type: String,
    pub urgency: String,
    pub setting: String,
    pub codes: Vec<String>,
    pub units: Vec<String>,
    pub diagnoses: String,
    pub start_date: String,
    pub end_date: String,
    pub servicing_npi: String,
    pub attestation: bool,
}

/// A wizard in progress.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub member_id: Option<String>,
    pub service: Option<ServiceForm>,
    pub attachments: Vec<Attachment>,
}

/// A portal session.
#[derive(Debug, Clone)]
pub struct Session {
    pub username: String,
    pub stage: Stage,
    pub last_seen: DateTime<Utc>,
    pub captcha_answer: Option<String>,
    pub draft: Draft,
}

/// Where a layout-v3 user is in its sign-in sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V3Stage {
    /// Password given; the six-box one-time code is next.
    NeedCode,
    /// Code given; an organisation must be picked.
    NeedOrganisation,
    /// Signed in, acting for one organisation.
    Active,
}

/// A layout-v3 portal session: its own cookie and its own sign-in steps over
/// the same payer (store, scenarios, letters) as the classic portal.
#[derive(Debug, Clone)]
pub struct V3Session {
    pub username: String,
    pub stage: V3Stage,
    /// The organisation picked after sign-in: (NPI, name).
    pub organisation: Option<(String, String)>,
    pub last_seen: DateTime<Utc>,
    /// Documents attached through the upload frame to the request form now open.
    pub attachments: Vec<Attachment>,
    /// The one-time token of the request form now open; a second POST of the
    /// same form finds it gone and sends nothing.
    pub form_token: Option<String>,
}

/// An OAuth2 bearer token.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub client_id: String,
    pub expires_at: DateTime<Utc>,
}

/// A registered rest-hook subscription.
#[derive(Debug, Clone, Serialize)]
pub struct Subscription {
    pub id: String,
    pub client_id: String,
    pub endpoint: String,
    /// Headers sent with every notification, as `Name: value` strings.
    pub headers: Vec<String>,
    /// The organisation NPI whose requests are notified.
    pub org_npi: String,
    pub events: u64,
    #[serde(skip)]
    pub resource: serde_json::Value,
}

/// One handled HTTP request, for benchmarks.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub started_at: DateTime<Utc>,
    pub latency_ms: f64,
}

/// At most this many log entries are kept in memory (oldest dropped first).
pub const LOG_CAPACITY: usize = 100_000;

/// Everything behind the mutex.
pub struct Inner {
    pub store: Store,
    pub sessions: HashMap<String, Session>,
    /// Sessions of the layout-v3 portal (`/v3/`), by their own cookie.
    pub v3_sessions: HashMap<String, V3Session>,
    pub tokens: HashMap<String, ApiToken>,
    pub subscriptions: Vec<Subscription>,
    pub hazards: Hazards,
    pub rng: StdRng,
    pub log: VecDeque<LogEntry>,
    /// How far the sandbox clock runs ahead of real time (admin "advance").
    pub clock_offset: Duration,
}

/// A notification to POST to a subscriber.
#[derive(Debug, Clone)]
pub struct Notification {
    pub endpoint: String,
    pub headers: Vec<String>,
    pub body: serde_json::Value,
}

/// State shared by every handler.
pub struct AppState {
    pub config: SandboxConfig,
    pub scenarios: Scenarios,
    inner: Mutex<Inner>,
    pub notify_tx: mpsc::UnboundedSender<Notification>,
    pub log_file: Option<Mutex<std::fs::File>>,
    /// Cancelled when the sandbox shuts down; long waits (a hung search) end with it.
    pub stopping: CancellationToken,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(
        config: SandboxConfig,
        notify_tx: mpsc::UnboundedSender<Notification>,
        log_file: Option<std::fs::File>,
    ) -> Self {
        let scenarios = Scenarios::new(config.scenarios.clone());
        Self {
            config,
            scenarios,
            inner: Mutex::new(Inner::fresh()),
            notify_tx,
            log_file: log_file.map(Mutex::new),
            stopping: CancellationToken::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sandbox clock: real time plus the admin's advance.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.lock().clock_offset
    }

    /// Sends subscription notifications for status changes. Call without the lock held.
    pub fn notify(&self, transitions: &[Transition]) {
        if transitions.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let now = Utc::now() + inner.clock_offset;
        let mut out = Vec::new();
        let Inner {
            store, subscriptions, ..
        } = &mut *inner;
        for t in transitions {
            let Some(req) = store.get(t.id) else { continue };
            for sub in subscriptions.iter_mut().filter(|s| s.org_npi == req.provider_npi) {
                sub.events += 1;
                out.push(Notification {
                    endpoint: sub.endpoint.clone(),
                    headers: sub.headers.clone(),
                    body: crate::fhir::notification_bundle(&self.config, sub, req, now),
                });
            }
        }
        drop(inner);
        for n in out {
            // The receiver lives as long as the server; a send error means shutdown.
            let _ = self.notify_tx.send(n);
        }
    }

    /// Runs the decisions due by the sandbox clock and notifies subscribers.
    pub fn run_due(&self) -> Vec<Transition> {
        let transitions = {
            let mut inner = self.lock();
            let now = Utc::now() + inner.clock_offset;
            inner.store.run_due(now)
        };
        self.notify(&transitions);
        transitions
    }
}

impl Inner {
    fn fresh() -> Self {
        Self {
            store: Store::default(),
            sessions: HashMap::new(),
            v3_sessions: HashMap::new(),
            tokens: HashMap::new(),
            subscriptions: Vec::new(),
            hazards: Hazards::default(),
            rng: StdRng::seed_from_u64(0),
            log: VecDeque::new(),
            clock_offset: Duration::zero(),
        }
    }

    /// Forgets every request, session, token, subscription, hazard and log entry.
    pub fn reset(&mut self) {
        *self = Self::fresh();
    }

    pub fn apply_hazards(&mut self, p: HazardsPatch) -> Result<(), String> {
        let mut h = self.hazards.clone();
        if let Some(v) = p.latency_ms {
            h.latency_ms = v;
        }
        if let Some(v) = p.error_rate {
            if !(0.0..=1.0).contains(&v) {
                return Err("error_rate must be between 0.0 and 1.0".into());
            }
            h.error_rate = v;
        }
        if let Some(v) = p.seed {
            h.seed = v;
            self.rng = StdRng::seed_from_u64(v);
        }
        if let Some(v) = p.maintenance {
            h.maintenance = v;
        }
        if let Some(v) = p.session_idle_timeout_seconds {
            h.session_idle_timeout_seconds = (v > 0).then_some(v);
        }
        if let Some(v) = p.sign_out_after_pages {
            h.sign_out_after_pages = Some(v);
        }
        if let Some(v) = p.contact_details_interstitial {
            h.contact_details_interstitial = v;
        }
        if let Some(v) = p.captcha {
            h.captcha = v;
        }
        if let Some(v) = p.api_throttle_next {
            h.api_throttle_next = v;
        }
        if let Some(v) = p.api_retry_after_seconds {
            h.api_retry_after_seconds = v;
        }
        if let Some(v) = p.layout_version {
            if !(1..=2).contains(&v) {
                return Err("layout_version must be 1 or 2".into());
            }
            h.layout_version = v;
        }
        if let Some(v) = p.status_search_fail_next {
            h.status_search_fail_next = v;
        }
        if let Some(v) = p.status_search_failure {
            h.status_search_failure = v;
        }
        if let Some(v) = p.status_search_delay_ms {
            h.status_search_delay_ms = v;
        }
        if let Some(v) = p.off_spec {
            h.off_spec = v;
        }
        self.hazards = h;
        Ok(())
    }

    /// Whether this status search should fail, and how; counts the failure down.
    pub fn take_search_failure(&mut self) -> Option<(SearchFailure, u64)> {
        if self.hazards.status_search_fail_next == 0 {
            return None;
        }
        self.hazards.status_search_fail_next -= 1;
        Some((self.hazards.status_search_failure, self.hazards.status_search_delay_ms))
    }

    /// Whether this request should fail with a random HTTP 500.
    pub fn roll_error(&mut self) -> bool {
        let rate = self.hazards.error_rate;
        rate > 0.0 && self.rng.gen_bool(rate)
    }

    pub fn push_log(&mut self, entry: LogEntry) {
        if self.log.len() == LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(entry);
    }
}

/// A random token of 32 hex characters from the thread-local CSPRNG.
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
