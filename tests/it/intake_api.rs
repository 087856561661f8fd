//! The intake API (`docs/intake.md`) over real HTTP against the console's
//! server on both backends, its webhook delivered to a real local receiver,
//! and the drop folder — watched by a real daemon and by `Watch` itself.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use hmac::{Hmac, Mac};
use precert::case::{CaseStatus, Decision, LineDecision};
use precert::config::Settings;
use precert::console;
use precert::store::{Actor, Ledger, TokenScope};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::postgres::{both_backends, Backend, TestDb};
use super::support::Project;

const PRACTICE: &str = "lakeside-ortho";
const SECRET: &str = "whsec-synthetic-test-key";

/// A valid case of the sample practice, as a practice system posts it.
fn case(case_id: &str) -> Value {
    json!({
        "practice_id": PRACTICE,
        "case_id": case_id,
        "patient": {
            "first_name": "Casey",
            "last_name": "Lindqvist",
            "birth_date": "1988-02-14",
            "member_id": "SBX100200303"
        },
        "coverage": { "payer": "sandbox", "plan": "Sandbox Advantage PPO", "plan_type": "medicare_advantage", "state": "IL" },
        "requesting_provider": { "name": "Jordan Reyes, MD", "npi": "1987654328", "location": "main" },
        "servicing_provider": { "name": "North Shore Surgery Center", "npi": "1234567893", "location": "north" },
        "service_lines": [{ "code": "29881", "units": 1, "modifiers": ["LT"] }],
        "diagnoses": ["S83.242A"],
        "service_start": "2026-12-15",
        "setting": "ambulatory_surgery"
    })
}

struct Api {
    base: String,
    ledger: Ledger,
    http: reqwest::Client,
    stop: CancellationToken,
    _db: TestDb,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The console's server (which serves the API) on a test database.
async fn serve(backend: Backend, edit: impl FnOnce(&mut Settings)) -> Api {
    let db = TestDb::new(backend).await;
    let mut settings = db.project.settings();
    settings.console.listen = "127.0.0.1:0".parse().unwrap();
    edit(&mut settings);
    let ledger = db.ledger().await;
    let stop = CancellationToken::new();
    let running = console::serve(Arc::new(settings), ledger.clone(), stop.clone())
        .await
        .unwrap();
    Api {
        base: format!("http://{}/api/v1", running.addr),
        ledger,
        http: reqwest::Client::new(),
        stop,
        _db: db,
    }
}

impl Api {
    async fn token(&self, practice: &str, name: &str, scope: TokenScope) -> String {
        precert::api::tokens::create(&self.ledger, practice, name, scope, "user:test")
            .await
            .unwrap()
            .token
    }

    async fn post(&self, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}/cases", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        answer(req.send().await.unwrap()).await
    }

    async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        answer(
            self.http
                .get(format!("{}{path}", self.base))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn count(&self) -> usize {
        self.ledger
            .list(&precert::store::CaseFilter::default())
            .await
            .unwrap()
            .len()
    }
}

async fn answer(res: reqwest::Response) -> (StatusCode, Value) {
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap();
    assert_eq!(
        res.headers().get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store"),
        "every API answer is no-store"
    );
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

async fn api_creates_refuses_with_field_errors_and_repeats_idempotently(backend: Backend) {
    let api = serve(backend, |_| {}).await;
    let token = api.token(PRACTICE, "pm-system", TokenScope::Write).await;

    let (status, body) = api.post(Some(&token), &case("API-1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["results"][0]["result"], "created");
    assert_eq!(body["results"][0]["case_id"], "API-1");

    // The same case again: nothing changes, and the answer says so.
    let (status, body) = api.post(Some(&token), &case("API-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["result"], "unchanged");

    // Changed before submission: updated, 200.
    let mut changed = case("API-1");
    changed["service_start"] = json!("2026-12-16");
    let (status, body) = api.post(Some(&token), &changed).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["result"], "updated");

    // A batch with one bad case: the good one is stored, the bad one is
    // refused with each field named by its JSON path and array index.
    let mut bad = case("API-3");
    bad["patient"]["birth_date"] = json!("1988-14-02");
    bad["service_lines"][0]["code"] = json!("ABCDE");
    let (status, body) = api.post(Some(&token), &json!([case("API-2"), bad])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["created"], 1);
    assert_eq!(body["invalid"], 1);
    assert_eq!(body["results"][0]["result"], "created");
    let refused = &body["results"][1];
    assert_eq!(refused["result"], "invalid");
    assert_eq!(refused["index"], 1);
    assert_eq!(refused["case_id"], "API-3");
    let paths: Vec<&str> = refused["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["$[1].patient.birth_date", "$[1].service_lines[0].code"],
        "{body}"
    );
    assert!(refused["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("is not a date"));
    assert!(api.ledger.find(PRACTICE, "API-2").await.unwrap().is_some());
    assert!(
        api.ledger.find(PRACTICE, "API-3").await.unwrap().is_none(),
        "nothing of the bad case is stored"
    );

    // The case as the API reads it back: no patient data in it.
    let (status, body) = api.get(&token, &format!("/cases/{PRACTICE}/API-1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "new");
    assert!(!body.to_string().contains("SBX100200303"), "no member ID: {body}");
    assert!(!body.to_string().contains("Lindqvist"), "no patient name: {body}");
    // Posts and reads are in the console's audit, by token.
    let audit = api.ledger.console_audit_log(None, 50).await.unwrap();
    let actions: Vec<(&str, &str)> = audit.iter().map(|a| (a.user.as_str(), a.action.as_str())).collect();
    assert!(
        actions.contains(&("api:lakeside-ortho/pm-system", "api_view_case")),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("api:lakeside-ortho/pm-system", "api_post_cases")),
        "{actions:?}"
    );
    // The case's timeline names the token as the actor.
    let id = api.ledger.find(PRACTICE, "API-1").await.unwrap().unwrap().id;
    let events = api.ledger.events(id).await.unwrap();
    assert_eq!(events[0].actor, "api:lakeside-ortho/pm-system");
}
both_backends!(
    #[tokio::test]
    api_creates_refuses_with_field_errors_and_repeats_idempotently
);

#[tokio::test]
async fn missing_unknown_revoked_and_read_only_tokens_are_refused() {
    let api = serve(Backend::Sqlite, |_| {}).await;
    let writer = api.token(PRACTICE, "writer", TokenScope::Write).await;
    let reader = api.token(PRACTICE, "reader", TokenScope::Read).await;
    let other = api.token("valley-imaging", "valley", TokenScope::Write).await;
    assert_eq!(api.post(Some(&writer), &case("T-1")).await.0, StatusCode::CREATED);

    let (status, body) = api.post(None, &case("T-2")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = api.post(Some("pct_0123456789ab_not-a-real-secret"), &case("T-2")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A real key with a wrong secret.
    let forged = format!("{}x", &writer[..writer.len() - 1]);
    assert_eq!(api.post(Some(&forged), &case("T-2")).await.0, StatusCode::UNAUTHORIZED);

    let (status, body) = api.post(Some(&reader), &case("T-2")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"].as_str().unwrap().contains("read-only"));
    assert_eq!(
        api.get(&reader, &format!("/cases/{PRACTICE}/T-1")).await.0,
        StatusCode::OK
    );

    // Another practice's token may not read this practice's case, nor post
    // one of its cases.
    let (status, body) = api.get(&other, &format!("/cases/{PRACTICE}/T-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = api.post(Some(&other), &case("T-3")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["results"][0]["errors"][0]["field"], "practice_id");
    assert!(api.ledger.find(PRACTICE, "T-3").await.unwrap().is_none());

    // Revoked: refused from the next request on.
    assert!(api.ledger.revoke_api_token(PRACTICE, "writer").await.unwrap());
    let (status, body) = api.post(Some(&writer), &case("T-4")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["error"].as_str().unwrap().contains("revoked"));
    let tokens = api.ledger.api_tokens(Some(PRACTICE)).await.unwrap();
    let w = tokens.iter().find(|t| t.name == "writer").unwrap();
    assert!(w.revoked_at.is_some() && w.last_used_at.is_some());
    assert!(
        !w.secret_hash.is_empty() && !writer.contains(&w.secret_hash),
        "stored hashed"
    );
}

/// An expected amount is checked as a file's is (422 naming its path) and
/// kept to the cent, a JSON number read as the decimal it is written as.
#[tokio::test]
async fn an_expected_amount_is_checked_and_kept_to_the_cent() {
    let api = serve(Backend::Sqlite, |_| {}).await;
    let token = api.token(PRACTICE, "pm", TokenScope::Write).await;
    let mut cents = case("A-1");
    cents["expected_amount"] = json!("12.345");
    let (status, body) = api.post(Some(&token), &cents).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = &body["results"][0]["errors"][0];
    assert_eq!(error["path"], "$.expected_amount", "{body}");
    assert!(
        error["reason"]
            .as_str()
            .unwrap()
            .contains("`12.345` has more than 2 decimals"),
        "{body}"
    );
    assert_eq!(api.count().await, 0);
    cents["expected_amount"] = json!(1250.5);
    let (status, body) = api.post(Some(&token), &cents).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let stored = api.ledger.find(PRACTICE, "A-1").await.unwrap().unwrap();
    assert_eq!(stored.data.expected_amount.map(|a| a.cents()), Some(125_050));
}

#[tokio::test]
async fn bad_bodies_are_each_a_clear_4xx_and_store_nothing() {
    let api = serve(Backend::Sqlite, |s| s.console.api_max_request_bytes = 1024 * 1024).await;
    let token = api.token(PRACTICE, "pm", TokenScope::Write).await;
    let url = format!("{}/cases", api.base);

    // Malformed JSON: 400 with the line and column.
    let res = api
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("[\n  {\"case_id\": \"M-1\",\n  \"patient\": }\n]")
        .send()
        .await
        .unwrap();
    let (status, body) = answer(res).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("line 3, column 15"), "{body}");

    // Wrong types: 422 naming the field.
    let mut typed = case("W-1");
    typed["service_lines"][0]["units"] = json!("two");
    let (status, body) = api.post(Some(&token), &typed).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["results"][0]["errors"][0]["path"], "$.service_lines[0].units");
    let (status, body) = api.post(Some(&token), &json!(42)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // Unknown practice: 422 with the practice named.
    let mut unknown = case("U-1");
    unknown["practice_id"] = json!("no-such-practice");
    let (status, body) = api.post(Some(&token), &unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("no-such-practice"), "{body}");
    let (status, body) = api.get(&token, "/cases/no-such-practice/U-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no-such-practice"));

    // Not JSON by its Content-Type: 415.
    let res = api
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body("case_id\nX-1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);

    // 50 MB with its length declared: refused before it is read.
    let big = vec![b' '; 50 * 1024 * 1024];
    let res = api
        .http
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await;
    match res {
        Ok(res) => assert_eq!(res.status().as_u16(), 413),
        // The server answered and closed while the client still wrote.
        Err(e) => panic!("no answer to the 50 MB body: {e}"),
    }
    // 50 MB streamed without a length (chunked): refused once past the
    // limit, while the client is still sending.
    assert_eq!(chunked_post(&url, &token, 50).await, "413");
    assert_eq!(api.count().await, 0, "nothing stored by any bad request");
}

/// POSTs `megabytes` of spaces with `Transfer-Encoding: chunked` over a
/// raw connection, stopping as soon as the server answers; the status code.
async fn chunked_post(url: &str, token: &str, megabytes: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 1024 * 1024];
    let mut answer = Vec::new();
    for _ in 0..megabytes {
        let sent = async {
            stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
            stream.write_all(&chunk).await?;
            stream.write_all(b"\r\n").await
        };
        if sent.await.is_err() {
            break; // the server answered and closed
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            _ => {}
        }
    }
    if answer.is_empty() {
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).unwrap_or_default().to_owned()
}

async fn a_practice_system_syncing_by_updated_since_sees_the_decision(backend: Backend) {
    let api = serve(backend, |_| {}).await;
    let token = api.token(PRACTICE, "pm", TokenScope::Write).await;
    let start = Utc::now() - chrono::Duration::seconds(1);
    for n in 1..=3 {
        let mut c = case(&format!("S-{n}"));
        c["precert_required"] = json!(true);
        assert_eq!(api.post(Some(&token), &c).await.0, StatusCode::CREATED);
    }
    // Two pages of two.
    let since = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, page1) = api.get(&token, &format!("/cases?updated_since={since}&limit=2")).await;
    assert_eq!(status, StatusCode::OK, "{page1}");
    assert_eq!(page1["cases"].as_array().unwrap().len(), 2);
    assert_eq!(page1["has_more"], true);
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = api.get(&token, &format!("/cases?limit=2&cursor={cursor}")).await;
    assert_eq!(page2["cases"].as_array().unwrap().len(), 1);
    assert_eq!(page2["has_more"], false);
    let resume = page2["next_cursor"].as_str().unwrap().to_owned();

    // The payer decides S-2.
    let id = api.ledger.find(PRACTICE, "S-2").await.unwrap().unwrap().id;
    let actor = Actor::job("submit", 1);
    api.ledger
        .transition(id, CaseStatus::Submitting, &actor, None)
        .await
        .unwrap();
    let decision = Decision {
        auth_number: Some("AUTH-778899".into()),
        valid: Some(precert::case::DateRange {
            start: "2026-12-15".parse().unwrap(),
            end: "2027-03-15".parse().unwrap(),
        }),
        lines: vec![LineDecision {
            code: precert::case::ProcedureCode::parse("29881").unwrap(),
            requested_units: 1,
            approved_units: 1,
        }],
        conditions: None,
        denial: None,
        decided_at: Utc::now(),
        source: "api:sandbox".into(),
    };
    api.ledger
        .record_decision(id, &decision, CaseStatus::Approved, &actor)
        .await
        .unwrap();

    // The next sync, from where the last ended, sees exactly that.
    let (status, next) = api.get(&token, &format!("/cases?cursor={resume}")).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let cases = next["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 1, "{next}");
    assert_eq!(cases[0]["case_id"], "S-2");
    assert_eq!(cases[0]["status"], "approved");
    assert_eq!(cases[0]["decision"]["auth_number"], "AUTH-778899");
    assert_eq!(cases[0]["decision"]["valid_to"], "2027-03-15");
    assert_eq!(cases[0]["decision"]["lines"][0]["approved_units"], 1);

    let (status, body) = api.get(&token, "/cases?updated_since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("updated_since"));
}
both_backends!(
    #[tokio::test]
    a_practice_system_syncing_by_updated_since_sees_the_decision
);

/// What a receiver got: headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, String)>>>;

/// A real HTTP receiver on loopback that answers 503 to its first
/// `failures` requests and 200 after; `notify` fires on each request.
async fn receiver(failures: usize) -> (String, Received, Arc<tokio::sync::Notify>) {
    let got: Received = Arc::default();
    let notify = Arc::new(tokio::sync::Notify::new());
    let seen = Arc::new(AtomicUsize::new(0));
    let (g, n) = (got.clone(), notify.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (g, n, seen) = (g.clone(), n.clone(), seen.clone());
            async move {
                g.lock().unwrap().push((headers, body));
                n.notify_one();
                if seen.fetch_add(1, Ordering::SeqCst) < failures {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got, notify)
}

/// Checks a delivery's signature as a receiver would.
fn verify(headers: &HeaderMap, body: &str) {
    let sig = headers["precert-signature"].to_str().unwrap();
    let (t, v1) = sig.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected = data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes());
    assert_eq!(v1, expected, "the signature verifies");
    assert!(headers.contains_key("idempotency-key"));
}

fn with_webhook(project: &Project, url: &str) {
    let path = project.path(&format!("config/practices/{PRACTICE}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!(
            "{text}\n[api]\nwebhook_url = \"{url}\"\nwebhook_secret = {{ env = \"PRECERT_TEST_WEBHOOK_SECRET\" }}\nwebhook_retry_seconds = 1\n"
        ),
    )
    .unwrap();
}

async fn a_decision_queues_a_signed_webhook_retried_after_a_receiver_failure(backend: Backend) {
    let (url, got, _) = receiver(1).await;
    let db = TestDb::new(backend).await;
    with_webhook(&db.project, &url);
    // SAFETY: set before any thread reads it; each test is its own process.
    unsafe { std::env::set_var("PRECERT_TEST_WEBHOOK_SECRET", SECRET) };
    let settings = db.project.settings_with_secrets();
    // The ledger's clock, moved by the test instead of waiting.
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: precert::store::Clock =
        Arc::new(move || Utc::now() + chrono::Duration::seconds(o.load(Ordering::SeqCst)));
    let ledger = db.ledger().await.with_clock(clock);
    ledger.set_webhook_targets(&[PRACTICE.to_owned()]).await.unwrap();
    db.import(&ledger, "samples/cases.json").await;
    let c = ledger.find(PRACTICE, "LO-2026-1004").await.unwrap().unwrap();
    let actor = Actor::job("submit", 1);
    ledger
        .transition(c.id, CaseStatus::Submitting, &actor, None)
        .await
        .unwrap();
    // Not a final status: nothing queued.
    assert!(ledger.webhook_deliveries(None, false, 10).await.unwrap().is_empty());
    let decision = Decision {
        auth_number: Some("AUTH-1234".into()),
        valid: None,
        lines: vec![],
        conditions: None,
        denial: None,
        decided_at: Utc::now(),
        source: "api:sandbox".into(),
    };
    ledger
        .record_decision(c.id, &decision, CaseStatus::Approved, &actor)
        .await
        .unwrap();
    let queued = ledger.webhook_deliveries(None, false, 10).await.unwrap();
    assert_eq!(queued.len(), 1, "queued with the decision");
    assert_eq!(queued[0].kind, "decision");

    let client = reqwest::Client::new();
    let round = precert::api::webhook::deliver_due(&ledger, &settings, &client)
        .await
        .unwrap();
    assert_eq!((round.delivered, round.retried), (0, 1), "the receiver failed once");
    let failing = ledger.webhook_deliveries(None, true, 10).await.unwrap();
    assert!(failing[0].last_error.as_deref().unwrap().contains("503"), "{failing:?}");
    // Not due yet; due once the backoff has passed.
    let round = precert::api::webhook::deliver_due(&ledger, &settings, &client)
        .await
        .unwrap();
    assert_eq!(round.delivered + round.retried, 0);
    offset.store(2, Ordering::SeqCst);
    let round = precert::api::webhook::deliver_due(&ledger, &settings, &client)
        .await
        .unwrap();
    assert_eq!(round.delivered, 1);
    let done = ledger.webhook_deliveries(None, false, 10).await.unwrap();
    assert_eq!(done[0].state, "delivered");
    assert_eq!(done[0].attempts, 2);

    let got = got.lock().unwrap();
    assert_eq!(got.len(), 2);
    let (headers, body) = &got[1];
    verify(headers, body);
    assert_eq!(
        got[0].0["idempotency-key"], got[1].0["idempotency-key"],
        "the same key on a retry"
    );
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["event"], "decision");
    assert_eq!(payload["case_id"], "LO-2026-1004");
    assert_eq!(payload["status"], "approved");
    assert_eq!(payload["decision"]["auth_number"], "AUTH-1234");
    assert!(!body.contains("SBX100200303"), "no member ID in a webhook");
}
both_backends!(
    #[tokio::test]
    a_decision_queues_a_signed_webhook_retried_after_a_receiver_failure
);

/// Waits (bounded) for `check`, looking again at each `tick`.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn the_daemon_imports_a_dropped_file_moves_it_with_its_report_and_tells_the_webhook() {
    use std::os::unix::fs::PermissionsExt;
    let (url, got, notify) = receiver(1).await;
    let p = Project::new();
    with_webhook(&p, &url);
    let drop = p.path("dropbox");
    std::fs::create_dir_all(&drop).unwrap();
    let path = p.path(&format!("config/practices/{PRACTICE}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[intake]\ndir = \"{}\"\nscan_seconds = 1\n", drop.display()),
    )
    .unwrap();
    // A file still being written (by the .tmp convention) and a hidden one.
    std::fs::write(drop.join("nightly.json.tmp"), json!([case("D-9")]).to_string()).unwrap();
    std::fs::write(drop.join(".partial.json"), "[").unwrap();
    // A token made by the CLI, for the daemon's own console listener.
    let out = p.precert(&["api-tokens", "create", PRACTICE, "--name", "pm", "--scope", "write"]);
    assert!(out.status.success(), "{}", super::support::stderr(&out));
    let token = super::support::stdout(&out).trim().to_owned();
    let console_port = super::daemon::free_port();
    let daemon = super::daemon::start_with(
        &p,
        super::daemon::free_port(),
        false,
        "daemon",
        &[
            ("PRECERT_TEST_WEBHOOK_SECRET", SECRET),
            ("PRECERT__CONSOLE__LISTEN", &format!("127.0.0.1:{console_port}")),
        ],
        &[],
    );
    // The daemon serves the API on its console listener.
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{console_port}/api/v1/cases");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let posted = loop {
        match http.post(&api).bearer_auth(&token).json(&case("D-0")).send().await {
            Ok(res) => break res,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no console: {e}\n{}",
                    daemon.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(posted.status().as_u16(), 201);
    let mut bad = case("D-2");
    bad["patient"]["birth_date"] = json!("not a date");
    std::fs::write(drop.join("good.json"), json!([case("D-1")]).to_string()).unwrap();
    std::fs::write(
        drop.join("bad.json"),
        serde_json::to_string_pretty(&json!([bad])).unwrap(),
    )
    .unwrap();

    let (done, failed) = (drop.join("done"), drop.join("failed"));
    until("the files moved", Duration::from_secs(30), || {
        files_in(&done).len() == 2 && files_in(&failed).len() == 2
    })
    .await;
    let done_files = files_in(&done);
    assert!(done_files[0].ends_with("-good.json"), "{done_files:?}");
    assert!(done_files[1].ends_with("-good.json.report.txt"), "{done_files:?}");
    let report = std::fs::read_to_string(done.join(&done_files[1])).unwrap();
    assert!(report.contains("1 created"), "{report}");
    let failed_files = files_in(&failed);
    let report = std::fs::read_to_string(failed.join(&failed_files[1])).unwrap();
    assert!(
        report.contains("refused: line 2 (case D-2): patient.birth_date:"),
        "{report}"
    );
    for f in [done.join(&done_files[0]), failed.join(&failed_files[1])] {
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::metadata(&done).unwrap().permissions().mode() & 0o777, 0o700);
    // The half-written ones wait where they are.
    assert_eq!(files_in(&drop), [".partial.json", "done", "failed", "nightly.json.tmp"]);
    let ledger = p.ledger().await;
    assert!(ledger.find(PRACTICE, "D-1").await.unwrap().is_some());
    assert!(ledger.find(PRACTICE, "D-2").await.unwrap().is_none());
    assert!(ledger.find(PRACTICE, "D-9").await.unwrap().is_none());
    // Renamed into place, as a writer finishes: now it is read.
    std::fs::rename(drop.join("nightly.json.tmp"), drop.join("nightly.json")).unwrap();
    until("the renamed file moved", Duration::from_secs(30), || {
        files_in(&done).len() == 4
    })
    .await;
    assert!(ledger.find(PRACTICE, "D-9").await.unwrap().is_some());

    // A person cancels D-1: the daemon tells the webhook, retrying after
    // the receiver's first failure.
    let out = p.precert(&["cases", "set-status", &format!("{PRACTICE}/D-1"), "cancelled"]);
    assert!(out.status.success(), "{}", super::support::stderr(&out));
    let deadline = Duration::from_secs(30);
    loop {
        if got.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::timeout(deadline, notify.notified())
            .await
            .unwrap_or_else(|_| panic!("no delivery:\n{}", daemon.log()));
    }
    // The daemon logs the delivery once it has the receiver's answer, which
    // may be just after the receiver saw it.
    until("the delivery logged", Duration::from_secs(30), || {
        daemon.log().contains("Webhook delivered.")
    })
    .await;
    let got = got.lock().unwrap();
    let (headers, body) = &got[1];
    verify(headers, body);
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["event"], "status");
    assert_eq!(payload["case_id"], "D-1");
    assert_eq!(payload["status"], "cancelled");
    let log = daemon.log();
    assert!(!log.contains(SECRET), "no webhook secret in the log");
    assert!(!log.contains(&token[4..]), "no API token in the log");
}

#[tokio::test]
async fn api_tokens_are_shown_once_listed_without_secrets_and_revoked_by_the_cli() {
    let p = Project::new();
    let out = p.precert(&["api-tokens", "create", PRACTICE, "--name", "pm", "--scope", "read"]);
    assert!(out.status.success(), "{}", super::support::stderr(&out));
    let token = super::support::stdout(&out).trim().to_owned();
    assert!(token.starts_with("pct_") && token.len() > 50, "{token}");
    let (_, secret) = token[4..].split_once('_').unwrap();
    // A second live token of the same name is refused.
    let again = p.precert(&["api-tokens", "create", PRACTICE, "--name", "pm", "--scope", "read"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        super::support::stderr(&again).contains("already has a live token named `pm`"),
        "{}",
        super::support::stderr(&again)
    );
    let unknown = p.precert(&["api-tokens", "create", "nope", "--name", "pm", "--scope", "read"]);
    assert!(super::support::stderr(&unknown).contains("`nope` is not a configured practice"));

    let list = super::support::stdout(&p.precert(&["api-tokens", "list"]));
    assert!(
        list.contains("lakeside-ortho") && list.contains("pm") && list.contains("read"),
        "{list}"
    );
    assert!(list.contains("live") && !list.contains(secret), "{list}");
    assert!(p
        .precert(&["api-tokens", "revoke", PRACTICE, "--name", "pm"])
        .status
        .success());
    let list = super::support::stdout(&p.precert(&["api-tokens", "list", "--practice", PRACTICE]));
    assert!(list.contains("revoked"), "{list}");
    let out = p.precert(&["api-tokens", "revoke", PRACTICE, "--name", "pm"]);
    assert!(!out.status.success());

    let out = p.precert(&["webhooks", "list", "--failed"]);
    assert!(out.status.success(), "{}", super::support::stderr(&out));
    assert!(super::support::stdout(&out).contains("No webhook deliveries failing."));
}

#[test]
fn check_names_a_webhook_without_https_or_secret_and_a_bad_scan_interval() {
    let p = Project::new();
    let path = p.path(&format!("config/practices/{PRACTICE}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[intake]\nscan_seconds = 0\n\n[api]\nwebhook_url = \"http://pm.example/hook\"\n"),
    )
    .unwrap();
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = super::support::stdout(&out) + &super::support::stderr(&out);
    assert!(err.contains("intake.scan_seconds: must be at least 1"), "{err}");
    assert!(
        err.contains("api.webhook_secret: is required with api.webhook_url"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_still_growing_is_not_read_until_it_stops() {
    let db = TestDb::new(Backend::Sqlite).await;
    let drop = db.project.path("dropbox");
    std::fs::create_dir_all(&drop).unwrap();
    let mut settings = db.project.settings();
    let i = settings.practices.iter().position(|p| p.id == PRACTICE).unwrap();
    settings.practices[i].intake.dir = Some(drop.clone());
    let practice = settings.practices[i].clone();
    let ledger = db.ledger().await;
    let mut watch = precert::intake::folder::Watch::default();

    let file = drop.join("growing.json");
    std::fs::write(&file, "[").unwrap();
    assert!(
        watch.scan(&practice, &settings, &ledger).await.is_empty(),
        "first seen: waits"
    );
    std::fs::write(&file, format!("[{}", case("G-1"))).unwrap();
    assert!(
        watch.scan(&practice, &settings, &ledger).await.is_empty(),
        "grew: waits"
    );
    std::fs::write(&file, json!([case("G-1")]).to_string()).unwrap();
    assert!(
        watch.scan(&practice, &settings, &ledger).await.is_empty(),
        "grew again: waits"
    );
    let moved = watch.scan(&practice, &settings, &ledger).await;
    assert_eq!(moved.len(), 1, "unchanged between two looks: read");
    assert!(moved[0].done);
    assert!(ledger.find(PRACTICE, "G-1").await.unwrap().is_some());
}
