//! Starting, running and stopping the sandbox: the router, the middleware (request log,
//! hazards), the decision ticker and the notification sender.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{NaiveDate, Utc};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SandboxConfig;
use crate::state::{AppState, HazardsPatch, LogEntry, Notification, Shared};
use crate::store::{AuthRequest, Decision, NewRequest, StoreError};
use crate::{admin, fhir, portal};

/// How often the ticker looks for timed decisions that came due.
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// Entry points to run the sandbox.
pub struct Sandbox;

impl Sandbox {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and serves in background tasks until
    /// [`SandboxHandle::shutdown`].
    pub async fn start(config: SandboxConfig, addr: &str) -> std::io::Result<SandboxHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (state, notifications) = build_state(config)?;
        let cancel = state.stopping.clone();
        let tracker = TaskTracker::new();
        spawn_all(&tracker, (state.clone(), notifications), listener, cancel.clone());
        tracker.close();
        Ok(SandboxHandle {
            addr: local,
            state,
            cancel,
            tracker,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then stops every task
    /// (like mini-redis's `server::run`): the caller owns the stop signal.
    pub async fn run(
        config: SandboxConfig,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let state = build_state(config)?;
        let cancel = state.0.stopping.clone();
        let tracker = TaskTracker::new();
        spawn_all(&tracker, state, listener, cancel.clone());
        tracker.close();
        shutdown.await;
        cancel.cancel();
        tracker.wait().await;
        Ok(())
    }
}

fn build_state(config: SandboxConfig) -> std::io::Result<(Shared, mpsc::UnboundedReceiver<Notification>)> {
    let log_file = match &config.request_log_path {
        Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((Arc::new(AppState::new(config, tx, log_file)), rx))
}

fn spawn_all(
    tracker: &TaskTracker,
    (state, notifications): (Shared, mpsc::UnboundedReceiver<Notification>),
    listener: TcpListener,
    cancel: CancellationToken,
) {
    let app = router(state.clone());
    let stop = cancel.clone();
    tracker.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "Sandbox server failed.");
        }
    });
    let stop = cancel.clone();
    let ticker_state = state.clone();
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => { ticker_state.run_due(); }
            }
        }
    });
    tracker.spawn(send_notifications(notifications, cancel));
}

/// Posts notifications one at a time, in order; failures are logged, not retried.
async fn send_notifications(mut rx: mpsc::UnboundedReceiver<Notification>, cancel: CancellationToken) {
    // One connection per notification, as many payers' rest-hook senders
    // do: behind a load balancer, notifications reach different servers.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => break,
            n = rx.recv() => match n { Some(n) => n, None => break },
        };
        let mut req = client
            .post(&n.endpoint)
            .header(header::CONTENT_TYPE, "application/fhir+json")
            .body(n.body.to_string());
        for h in &n.headers {
            if let Some((name, value)) = h.split_once(':') {
                req = req.header(name.trim(), value.trim());
            }
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(endpoint = %n.endpoint, "Notification delivered.");
            }
            Ok(r) => tracing::warn!(endpoint = %n.endpoint, status = %r.status(), "Notification refused."),
            Err(e) => tracing::warn!(endpoint = %n.endpoint, error = %e, "Notification failed."),
        }
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .merge(portal::router())
        .merge(fhir::router())
        .merge(admin::router())
        .layer(middleware::from_fn_with_state(state.clone(), hazards))
        .layer(middleware::from_fn_with_state(state.clone(), request_log))
        .with_state(state)
}

/// Records method, path, status, start and latency of every request.
async fn request_log(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let started_at = Utc::now();
    let started = Instant::now();
    let response = next.run(req).await;
    let entry = LogEntry {
        method,
        path,
        status: response.status().as_u16(),
        started_at,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    if let Some(file) = &state.log_file {
        if let Ok(line) = serde_json::to_string(&entry) {
            use std::io::Write;
            let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(f, "{line}");
        }
    }
    state.lock().push_log(entry);
    response
}

/// Applies the switched-on hazards to portal and API requests (never to `/admin`).
async fn hazards(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let portal = path == "/" || path.starts_with("/portal") || path.starts_with("/v3");
    let api = path.starts_with("/fhir") || path.starts_with("/oauth") || path.starts_with("/cds-services");
    if !portal && !api {
        return next.run(req).await;
    }
    let (latency, fail, maintenance, throttle) = {
        let mut inner = state.lock();
        let fail = inner.roll_error();
        let throttle = if api && inner.hazards.api_throttle_next > 0 {
            inner.hazards.api_throttle_next -= 1;
            Some(inner.hazards.api_retry_after_seconds)
        } else {
            None
        };
        (inner.hazards.latency_ms, fail, inner.hazards.maintenance, throttle)
    };
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    if let Some(after) = throttle {
        let mut r = fhir::outcome(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            &["Too many requests. Retry after the indicated delay.".into()],
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(after));
        return r;
    }
    if portal && maintenance {
        return portal::maintenance_page();
    }
    if fail {
        return if api {
            fhir::outcome(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exception",
                &["An unexpected error occurred. Please retry.".into()],
            )
        } else {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        };
    }
    next.run(req).await
}

/// A running sandbox. Dropping it without [`SandboxHandle::shutdown`] leaves the tasks
/// running until the runtime ends.
pub struct SandboxHandle {
    addr: SocketAddr,
    state: Shared,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl SandboxHandle {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.state.config
    }

    /// Stops accepting connections, lets in-flight requests finish, and waits for every
    /// background task to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }

    /// How many requests were submitted for this member, code and service start date.
    pub fn submission_count(&self, member_id: &str, code: &str, service_date: NaiveDate) -> u32 {
        self.state.lock().store.count(member_id, code, service_date)
    }

    /// A snapshot of every submission, oldest first.
    pub fn submissions(&self) -> Vec<AuthRequest> {
        self.state.lock().store.all().to_vec()
    }

    /// A snapshot of one member's submissions (each with its `service_start` and
    /// `service_end`), oldest first; like `GET /admin/submissions?member_id=`.
    pub fn submissions_for_member(&self, member_id: &str) -> Vec<AuthRequest> {
        self.state.lock().store.by_member(member_id).cloned().collect()
    }

    pub fn submission(&self, reference: &str) -> Option<AuthRequest> {
        self.state.lock().store.by_reference(reference).cloned()
    }

    /// Files a request as the portal's last wizard step does (scenario rules
    /// apply), without the wizard: for tests and benchmarks that need many
    /// requests at once. Returns the payer's reference.
    pub fn file_request(&self, new: NewRequest) -> String {
        let (reference, t) = {
            let mut inner = self.state.lock();
            let now = Utc::now() + inner.clock_offset;
            let (id, t) = inner.store.submit(new, now, &self.state.scenarios);
            let reference = inner.store.get(id).map(|r| r.reference.clone()).unwrap_or_default();
            (reference, t)
        };
        self.state.notify(&t);
        reference
    }

    /// Decides a request now, notifying subscribers as the admin API would.
    pub fn decide(&self, reference: &str, decision: Decision) -> Result<(), StoreError> {
        let t = {
            let mut inner = self.state.lock();
            let now = Utc::now() + inner.clock_offset;
            inner.store.decide(reference, decision, now)?
        };
        self.state.notify(&t);
        Ok(())
    }

    /// Moves the sandbox clock forward and runs the decisions that became due; returns
    /// how many requests changed status.
    pub fn advance_clock(&self, by: std::time::Duration) -> usize {
        self.state.lock().clock_offset += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::zero());
        self.state.run_due().len()
    }

    pub fn set_hazards(&self, patch: HazardsPatch) -> Result<(), String> {
        self.state.lock().apply_hazards(patch)
    }

    /// Forgets every request, session, token, subscription, hazard and log entry, and
    /// sets the sandbox clock back to real time (like `POST /admin/reset`).
    pub fn reset(&self) {
        self.state.lock().reset();
    }

    /// The request log (method, path, status, start, latency) so far.
    pub fn request_log(&self) -> Vec<LogEntry> {
        self.state.lock().log.iter().cloned().collect()
    }
}
