//! The console: the web front door where pre-cert teams and supervisors see
//! and act on the work (issue 13).
//!
//! Server-rendered HTML (axum + minijinja with auto-escaping), everything in
//! the binary: templates and the style sheet are embedded, there is no
//! script at all, and the Content-Security-Policy allows nothing but this
//! origin's style sheet, images and forms. Every response is `no-store`.
//!
//! - `auth`: passwords, sessions, CSRF, lockout; `users`: roles and user
//!   management (the CLI's `precert users`).
//! - `pages`: sign-in, the worklist, a case, the escalations inbox.
//! - `actions`: what a person does to a case, each an event in its timeline
//!   under the status graph and the submission lease.
//! - `files`: letters and failure artifacts, each download audited;
//!   `attach`: a letter received by fax or mail, uploaded as a PDF.
//! - `seeds`: users' TOTP seeds sealed with a key kept outside the ledger.
//!
//! PHI: a page with patient data is an audited view (`console_audit` in the
//! ledger); patient identifiers are masked and the payer's own words
//! scrubbed (`crate::scrub`) until the user asks to see them, which is
//! recorded in the case's timeline too. A user sees only their practices:
//! anything else answers 404, as a case that does not exist does.
//!
//! The console has its own listener (`[console] listen`, loopback by
//! default); the daemon starts it with [`serve`], and `precert console`
//! runs it alone.

mod account;
mod ack;
mod actions;
mod admin;
mod attach;
pub(crate) mod auth;
mod case_page;
mod files;
pub mod links;
mod pages;
mod payers;
mod reports;
pub mod seeds;
pub mod users;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::{hash_password, verify_password};
pub use pages::{deadline_rules_digest, refresh_deadlines};
pub use users::{Role, UserError};
pub use view::encode_component;

use crate::config::Settings;
use crate::queue::Queue;
use crate::store::{AuditEntry, Ledger, StoreError};

/// The Content-Security-Policy of every response: no script, no frame, no
/// other origin; styles, images and forms from this console only.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot listen on {addr} for the console: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    SeedKey(#[from] seeds::SeedKeyError),
}

/// A running console.
pub struct Console {
    /// Where it listens (the port is known here when `listen` said `:0`).
    pub addr: SocketAddr,
    /// Ends after `shutdown` is cancelled and open requests are answered.
    pub task: JoinHandle<()>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct App(Arc<Inner>);

pub struct Inner {
    pub settings: Arc<Settings>,
    pub ledger: Ledger,
    pub queue: Queue,
    pub templates: minijinja::Environment<'static>,
    /// Cookies are `Secure` when people reach the console over https
    /// (`http.public_url`).
    pub secure_cookies: bool,
    pub throttle: auth::AddressThrottle,
    /// The ledger's key for acknowledgement links, read on first use.
    link_key: tokio::sync::OnceCell<links::LinkKey>,
    /// The key that seals users' TOTP seeds (`seeds`), from the data
    /// directory, never from the ledger.
    pub seed_key: seeds::SeedKey,
    /// The daemon's payer limits, when the daemon serves the console: the
    /// payers page shows each circuit breaker's live state from them.
    pub live: Option<LiveLimits>,
}

/// The daemon's payer limits (circuit breakers, runs in flight), shared
/// with the console it serves.
pub type LiveLimits = Arc<std::sync::Mutex<crate::limits::PayerLimits>>;

impl std::ops::Deref for App {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl App {
    pub fn new(settings: Arc<Settings>, ledger: Ledger, live: Option<LiveLimits>, seed_key: seeds::SeedKey) -> App {
        App(Arc::new(Inner {
            live,
            seed_key,
            secure_cookies: settings.console.public_url.starts_with("https://"),
            queue: Queue::new(ledger.clone()),
            ledger,
            settings,
            templates: view::environment(),
            throttle: auth::AddressThrottle::default(),
            link_key: tokio::sync::OnceCell::new(),
        }))
    }

    /// The key that signs acknowledgement links (`links::LinkKey::of`).
    pub async fn link_key(&self) -> Result<&links::LinkKey, StoreError> {
        self.link_key.get_or_try_init(|| links::LinkKey::of(&self.ledger)).await
    }

    /// Records a line of the console's audit. A failure to record is
    /// logged, and the request that needed it fails (see callers).
    pub async fn audit(&self, entry: AuditEntry<'_>) -> Result<(), StoreError> {
        self.ledger.console_audit(&entry).await.map(|_| ()).inspect_err(|e| {
            tracing::error!(action = entry.action, error = %e, "Console audit not recorded.");
        })
    }
}

/// Binds `settings.console.listen` and serves the console until `shutdown`
/// is cancelled.
pub async fn serve(
    settings: Arc<Settings>,
    ledger: Ledger,
    shutdown: CancellationToken,
) -> Result<Console, ConsoleError> {
    serve_with(settings, ledger, shutdown, None).await
}

/// `serve`, with the daemon's payer limits for the payers page.
pub async fn serve_with(
    settings: Arc<Settings>,
    ledger: Ledger,
    shutdown: CancellationToken,
    live: Option<LiveLimits>,
) -> Result<Console, ConsoleError> {
    // Before listening: a missing or wrong key for the TOTP seeds stops the
    // console here, with the file named, not at someone's sign-in.
    let seed_key = seeds::prepare(&ledger, &settings.data_dir).await?;
    let addr = settings.console.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ConsoleError::Listen { addr, source })?;
    // The decision deadlines the worklist's deadline filters read, computed
    // now for every undecided case that lacks one under these rules (all of
    // them after a change of the rules), not at the first such page.
    let (warm_ledger, warm_settings) = (ledger.clone(), settings.clone());
    tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        match pages::refresh_deadlines(&warm_ledger, &warm_settings).await {
            Ok(_) => tracing::debug!(
                took_ms = t0.elapsed().as_millis() as u64,
                "Decision deadlines up to date."
            ),
            Err(e) => {
                tracing::warn!(error = %e, "Could not bring the stored decision deadlines up to date; the worklist's deadline filters will try again.")
            }
        }
    });
    let app = router(App::new(settings, ledger, live, seed_key));
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "The console's listener failed.");
        }
    });
    tracing::info!(%addr, "Console listening.");
    Ok(Console { addr, task })
}

/// The console's address of a case for mail and other places outside it:
/// `console.public_url` (`http.public_url`, where people reach the console
/// through its proxy, or the console's own listener) and the case's path.
pub fn case_url(settings: &Settings, practice: &str, case_ref: &str) -> String {
    format!("{}{}", settings.console.public_url, view::case_path(practice, case_ref))
}

/// The console's address of an escalation in the inbox.
pub fn escalation_url(settings: &Settings, id: i64) -> String {
    format!("{}/escalations#e{id}", settings.console.public_url)
}

/// Every route of the console.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/cases", get(pages::cases))
        .route("/cases.csv", get(pages::cases_csv))
        .route("/cases/{practice}/{case_ref}", get(pages::case))
        .route("/cases/{practice}/{case_ref}/reveal", post(pages::reveal))
        .route("/cases/{practice}/{case_ref}/status", post(actions::set_status))
        .route("/cases/{practice}/{case_ref}/decision", post(actions::record_decision))
        .route("/cases/{practice}/{case_ref}/resubmit", post(actions::resubmit))
        .route("/cases/{practice}/{case_ref}/poll", post(actions::poll))
        .route(
            "/cases/{practice}/{case_ref}/letters",
            post(attach::attach_letter).layer(axum::extract::DefaultBodyLimit::max(attach::MAX_BODY_BYTES)),
        )
        .route("/cases/{practice}/{case_ref}/letters/{n}", get(files::letter))
        .route("/cases/{practice}/{case_ref}/runs/{event}/{file}", get(files::artifact))
        .route("/escalations", get(pages::escalations))
        .route("/escalations/ack", post(actions::acknowledge))
        .route("/ack/{token}", get(ack::confirm).post(ack::acknowledge))
        .route("/users", get(admin::list).post(admin::add))
        .route("/users/{name}", post(admin::change))
        .route("/account", get(account::show))
        .route("/account/totp", post(account::totp))
        .route("/payers", get(payers::page))
        .route("/reports", get(reports::page))
        .route("/reports.csv", get(reports::csv))
        .route("/reports/late", get(reports::late))
        .route("/reports/late.css", get(reports::late_css))
        .route("/static/console.css", get(stylesheet))
        .nest("/api/v1", crate::api::routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], view::CSS).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not found\n").into_response()
}

/// The headers every answer carries: nothing is cached (pages hold PHI),
/// nothing may frame or script the console, and no referrer leaves it.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// The answer when the ledger cannot be read or written.
pub(crate) fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %e, "Console: ledger unavailable.");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "The ledger is unavailable; try again in a moment.\n",
    )
        .into_response()
}
