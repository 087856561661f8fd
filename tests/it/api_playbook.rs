//! API payers through the engine, without a browser: a REST playbook of
//! generic `http` steps (`playbooks/examples/sandbox-rest.yaml`) against the
//! sandbox payer's FHIR API, and the same payer through precert's own PAS
//! client when the practice's binding names `sandbox-pas`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use precert::case::CaseStatus;
use precert::engine::{Engine, FailureKind, RunReport};
use precert::pas::RetryPolicy;
use precert::playbook::{self, Action};
use precert::store::{Actor, Ledger};
use precert_sandbox::{HazardsPatch, Sandbox, SandboxConfig, SandboxHandle};

use super::support::{stderr, stdout, Project};

const VALLEY_SECRET: &str = "sandbox-valley-client-secret";
const LAKESIDE_SECRET: &str = "sandbox-lakeside-client-secret";

struct World {
    p: Project,
    sandbox: SandboxHandle,
    ledger: Ledger,
    engine: Engine,
}

fn actor() -> Actor {
    Actor::job("test", 1)
}

/// Short waits: the protocol's backoffs happen, but in milliseconds.
fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
        ..RetryPolicy::default()
    }
}

/// Binds both sample practices' `sandbox` payer to `playbook` with their
/// API clients instead of their portal accounts: the only change a
/// practice makes to move from the portal to an API.
fn bind(p: &Project, playbook: &str, base_url: &str) {
    for (practice, client, env) in [
        ("lakeside-ortho", "lakeside-pas", "LAKESIDE_SANDBOX_CLIENT_SECRET"),
        ("valley-imaging", "valley-pas", "VALLEY_SANDBOX_CLIENT_SECRET"),
    ] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("[payers.sandbox]\n").unwrap();
        let end = start + 1 + text[start + 1..].find("\n[").unwrap();
        let block = format!(
            "[payers.sandbox]\nplaybook = \"{playbook}\"\nbase_url = \"{base_url}\"\naccount = {{ client_id = \"{client}\" }}\nsecrets.client_secret = {{ env = \"{env}\" }}\n"
        );
        std::fs::write(&path, format!("{}{}{}", &text[..start], block, &text[end..])).unwrap();
    }
}

/// The REST example beside the shipped playbooks, edited by `edit`.
fn install_rest(p: &Project, edit: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(p.path("playbooks/examples/sandbox-rest.yaml")).unwrap();
    p.write("playbooks/sandbox-rest.yaml", &edit(text));
}

async fn world_with(playbook: &str, edit: impl Fn(String) -> String) -> World {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    install_rest(&p, edit);
    bind(&p, playbook, &sandbox.base_url());
    for file in ["samples/cases.csv", "samples/cases.json"] {
        let out = p.precert(&["cases", "import", file]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // SAFETY: nextest runs each test in its own process; set before any
    // thread reads the environment.
    unsafe { std::env::set_var("VALLEY_SANDBOX_CLIENT_SECRET", VALLEY_SECRET) };
    let mut settings = p.settings_with_secrets();
    // Any attempt to start a browser for an API payer fails loudly.
    settings.webdriver.chromedriver = "/nonexistent/chromedriver".into();
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let ledger = Ledger::open(&settings.database_url).await.unwrap();
    let mut engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    engine.api_policy = quick();
    World {
        p,
        sandbox,
        ledger,
        engine,
    }
}

async fn world(playbook: &str) -> World {
    world_with(playbook, |t| t).await
}

impl World {
    async fn id(&self, case_ref: &str) -> i64 {
        self.ledger.find_by_ref(case_ref).await.unwrap().pop().unwrap().id
    }

    async fn run(&self, action: Action, case_ref: &str) -> RunReport {
        self.engine
            .run(action, self.id(case_ref).await, &actor())
            .await
            .unwrap()
    }

    async fn ok(&self, action: Action, case_ref: &str) -> RunReport {
        let r = self.run(action, case_ref).await;
        assert!(r.failure.is_none(), "{case_ref} {action}: {:?}", r.failure);
        r
    }

    /// How many requests to `path` the sandbox answered with `status`.
    fn answered(&self, path: &str, status: u16) -> usize {
        self.sandbox
            .request_log()
            .iter()
            .filter(|e| e.path == path && e.status == status)
            .count()
    }

    async fn no_browser_and_finish(self) {
        assert_eq!(
            self.engine.driver_process_group().await,
            None,
            "no chromedriver for an API payer"
        );
        self.engine.shutdown().await;
        self.ledger.close().await;
        self.sandbox.shutdown().await;
    }
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

#[tokio::test]
async fn a_knee_mri_is_submitted_pended_and_polled_approved_with_one_token() {
    let w = world("sandbox-rest").await;
    let r = w.ok(Action::Submit, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Pending, "73721 is in review for 20 s");
    let case = w.ledger.get(r.case_id).await.unwrap();
    let reference = case.payer_ref.clone().expect("the payer's reference is recorded");
    assert!(reference.starts_with("SBX-"), "{reference}");
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        1
    );
    let sent = w.sandbox.submission(&reference).unwrap();
    assert_eq!(sent.lines[0].code, "73721");

    // Still in review: polling changes nothing.
    let r = w.ok(Action::PollStatus, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Pending);

    w.sandbox.advance_clock(Duration::from_secs(20));
    let r = w.ok(Action::PollStatus, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Approved);
    let decision = w.ledger.get(r.case_id).await.unwrap().decision.unwrap();
    assert!(decision.auth_number.unwrap().starts_with("SHP"));
    assert_eq!(decision.source, "api:sandbox-rest");
    assert!(decision.valid.is_some(), "preAuthPeriod was read");
    assert_eq!(w.answered("/fhir/Claim/$inquire", 200), 2);
    assert_eq!(w.answered("/oauth/token", 200), 1, "one token serves every run");
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn a_lumbar_mri_is_denied_with_its_reason_and_a_cpap_approved_at_once() {
    let w = world("sandbox-rest").await;
    let r = w.ok(Action::Submit, "VI-88120").await;
    assert_eq!(r.status, CaseStatus::Denied);
    let denial = w.ledger.get(r.case_id).await.unwrap().decision.unwrap().denial.unwrap();
    assert_eq!(denial.code.as_deref(), Some("CLIN-06"));
    assert_eq!(
        denial.text,
        "Conservative therapy of at least 6 weeks is not documented."
    );
    let sent = w
        .sandbox
        .submission(w.ledger.get(r.case_id).await.unwrap().payer_ref.as_deref().unwrap())
        .unwrap();
    assert_eq!(sent.urgency, "urgent", "the template sent the urgency extension");

    // Two hours later by the payer's clock its token has expired there:
    // the 401 is answered by a new token and the request is sent again.
    w.sandbox.advance_clock(Duration::from_secs(2 * 3600));
    let r = w.ok(Action::Submit, "VI-88121").await;
    assert_eq!(r.status, CaseStatus::Approved);
    let decision = w.ledger.get(r.case_id).await.unwrap().decision.unwrap();
    assert!(decision.auth_number.unwrap().starts_with("SHP"));
    assert_eq!(decision.lines[0].approved_units, 1);
    assert_eq!(w.answered("/fhir/Claim/$submit", 401), 1);
    assert_eq!(
        w.answered("/oauth/token", 200),
        2,
        "Valley Imaging's token, then its renewal"
    );

    // Therapy comes back modified: 8 of 12 units, read from `addItem`.
    let r = w.ok(Action::Submit, "LO-2026-1003").await;
    assert_eq!(r.status, CaseStatus::PartiallyApproved);
    let decision = w.ledger.get(r.case_id).await.unwrap().decision.unwrap();
    assert_eq!(
        (decision.lines[0].requested_units, decision.lines[0].approved_units),
        (12, 8)
    );
    assert_eq!(w.answered("/oauth/token", 200), 3, "and Lakeside's, its own account");
    w.no_browser_and_finish().await;
}

/// A `login` action that reads the API's CapabilityStatement and checks it.
fn with_login(fhir_version: &'static str) -> impl Fn(String) -> String {
    move |t: String| {
        t.replacen(
            "actions:\n  submit:\n",
            &format!(
                r#"actions:
  login:
    - http:
        method: GET
        url: "{{{{ payer.base_url }}}}/fhir/metadata"
        extract:
          fhir_version: /fhirVersion
          media_type: header:Content-Type
    - assert: {{ expr: "vars.fhir_version == '{fhir_version}' and vars.media_type is startingwith('application/fhir+json')" }}
  submit:
"#
            ),
            1,
        )
    }
}

#[tokio::test]
async fn an_optional_login_runs_first_and_reads_the_answers_headers() {
    let w = world_with("sandbox-rest", with_login("4.0.1")).await;
    let r = w.ok(Action::Submit, "VI-88121").await;
    assert_eq!(r.status, CaseStatus::Approved);
    assert_eq!(w.answered("/fhir/metadata", 200), 1);
    w.no_browser_and_finish().await;

    // An API that is not what the playbook expects: a person looks, and
    // nothing was sent.
    let w = world_with("sandbox-rest", with_login("5.0.0")).await;
    let r = w.run(Action::Submit, "VI-88121").await;
    let failure = r.failure.expect("the assertion fails");
    assert_eq!(failure.kind, FailureKind::PortalChanged, "{failure}");
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    assert!(w.sandbox.submissions().is_empty());
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn throttling_is_waited_out_as_retry_after_says_and_a_long_wait_goes_back_to_the_queue() {
    let w = world("sandbox-rest").await;
    w.sandbox
        .set_hazards(HazardsPatch {
            api_throttle_next: Some(1),
            api_retry_after_seconds: Some(1),
            ..HazardsPatch::default()
        })
        .unwrap();
    let started = Instant::now();
    let r = w.ok(Action::Submit, "VI-88121").await;
    assert_eq!(r.status, CaseStatus::Approved);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as Retry-After asked"
    );
    assert_eq!(w.answered("/oauth/token", 429), 1);

    // Longer than the policy's bound (2 s here): back to ready, for later.
    w.sandbox
        .set_hazards(HazardsPatch {
            api_throttle_next: Some(1),
            api_retry_after_seconds: Some(30),
            ..HazardsPatch::default()
        })
        .unwrap();
    let r = w.run(Action::Submit, "VI-88120").await;
    let failure = r.failure.expect("throttled");
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert!(failure.message.contains("retry after 30s"), "{}", failure.message);
    assert_eq!(
        r.status,
        CaseStatus::Submitting,
        "the intent was recorded: the next run looks before it sends"
    );

    // The next run asks the payer first (find_existing: `$inquire` by the
    // case's identifier answers 404), then submits: once.
    let r = w.ok(Action::Submit, "VI-88120").await;
    assert_eq!(r.status, CaseStatus::Denied);
    assert_eq!(w.answered("/fhir/Claim/$inquire", 404), 1);
    assert_eq!(
        w.sandbox.submission_count("SBX100200305", "72148", date("2026-12-03")),
        1
    );
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn a_submission_that_reached_the_payer_before_a_crash_is_adopted_not_sent_again() {
    let w = world("sandbox-rest").await;
    let id = w.id("LO-2026-1001").await;
    let case = w.ledger.get(id).await.unwrap();
    // What a crash right after the commit request leaves: the request at
    // the payer (with the case's identifier), the case `submitting` with
    // its intent recorded, and no reference.
    let settings = w.p.settings();
    let ctx = precert::pas::Context {
        practice: settings.practice("lakeside-ortho").unwrap(),
        data_dir: &settings.data_dir,
        insurer_name: None,
        now: chrono::Utc::now(),
    };
    let client = precert::pas::PasClient::new(
        precert::pas::Endpoint {
            fhir_base: format!("{}/fhir", w.sandbox.base_url()),
            token_url: format!("{}/oauth/token", w.sandbox.base_url()),
            client_id: "lakeside-pas".into(),
            client_secret: LAKESIDE_SECRET.to_owned().into(),
        },
        quick(),
    )
    .unwrap();
    let bundle = precert::pas::request_bundle(&case.data, &ctx).unwrap();
    client.submit(&bundle.to_json()).await.unwrap();
    w.ledger
        .transition(id, CaseStatus::Submitting, &actor(), Some("submission started"))
        .await
        .unwrap();
    w.ledger
        .append_event(
            id,
            precert::store::EventKind::Run,
            &actor(),
            &serde_json::json!({ "action": "submit", "intent": "commit" }),
        )
        .await
        .unwrap();

    let r = w.ok(Action::Submit, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Pending);
    let reference = w.ledger.get(id).await.unwrap().payer_ref.expect("adopted");
    assert!(reference.starts_with("SBX-"), "{reference}");
    assert_eq!(w.answered("/fhir/Claim/$submit", 200), 1, "never sent again");
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        1
    );
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let w = world("sandbox-rest").await;
    // Seeded, so the same requests fail on every run.
    w.sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(0.5),
            seed: Some(7),
            ..HazardsPatch::default()
        })
        .unwrap();
    // The request that sends the submission is not resent after a 5xx (the
    // payer may have stored it): that run fails as retryable, and the next
    // one asks the payer first (find_existing) and sends it only if the
    // payer has none, as the daemon's retry would.
    let mut runs = 0;
    let r = loop {
        runs += 1;
        let r = w.run(Action::Submit, "VI-88121").await;
        match &r.failure {
            None => break r,
            Some(f) => assert!(runs < 5 && f.kind == FailureKind::Retryable, "{f}"),
        }
    };
    assert_eq!(r.status, CaseStatus::Approved);
    let failures = w.answered("/oauth/token", 500) + w.answered("/fhir/Claim/$submit", 500);
    assert!(failures >= 1, "{:?}", w.sandbox.request_log());
    assert_eq!(
        w.sandbox.submission_count("SBX100200306", "E0601", date("2026-12-05")),
        1,
        "retried, never sent twice"
    );
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn a_refused_request_needs_attention_with_the_payers_diagnostics_and_no_secret() {
    // A playbook bug the payer catches: the Claim's `use` is wrong.
    let w = world_with("sandbox-rest", |t| {
        t.replace(r#""use": "preauthorization""#, r#""use": "claim""#)
    })
    .await;
    let r = w.run(Action::Submit, "VI-88121").await;
    let failure = r.failure.expect("refused");
    assert_eq!(failure.kind, FailureKind::PortalChanged);
    assert!(
        failure.message.contains("HTTP 400") && failure.message.contains("Claim.use: must be \"preauthorization\""),
        "{}",
        failure.message
    );
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    let events = w.ledger.events(r.case_id).await.unwrap();
    let timeline = format!("{events:?}");
    assert!(
        timeline.contains("Claim.use"),
        "the reason is in the timeline: {timeline}"
    );

    // The trace of the failed run is kept, without a credential in it.
    let dir = r.artifacts.expect("the trace is kept");
    let trace = std::fs::read_to_string(dir.join("trace.txt")).unwrap();
    assert!(
        trace.contains("POST {{ payer.base_url }}/fhir/Claim/$submit -> 400"),
        "{trace}"
    );
    assert!(!dir.join("screenshot.png").exists(), "no browser, no screenshot");
    for text in [&trace, &timeline, &failure.message] {
        assert!(!text.contains(VALLEY_SECRET), "{text}");
        assert!(!text.contains("Bearer"), "{text}");
    }
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn a_secret_rendered_into_a_request_is_scrubbed_from_failures_and_traces() {
    // The secret sits in the URL's path, and the address refuses
    // connections: the error names the address, which must not show it.
    let w = world_with("sandbox-rest", |t| {
        t.replacen(
            r#"url: "{{ payer.base_url }}/fhir/Claim/$submit""#,
            r#"url: "http://127.0.0.1:9/{{ secrets.client_secret }}/Claim/$submit""#,
            1,
        )
    })
    .await;
    let r = w.run(Action::Submit, "LO-2026-1001").await;
    let failure = r.failure.expect("unreachable");
    assert_eq!(failure.kind, FailureKind::Retryable);
    assert!(failure.message.contains("127.0.0.1:9/***/Claim"), "{}", failure.message);
    let trace = std::fs::read_to_string(r.artifacts.unwrap().join("trace.txt")).unwrap();
    let timeline = format!("{:?}", w.ledger.events(r.case_id).await.unwrap());
    for text in [&trace, &timeline, &failure.message] {
        assert!(!text.contains(LAKESIDE_SECRET), "{text}");
    }
    w.no_browser_and_finish().await;
}

#[tokio::test]
async fn a_case_bound_to_sandbox_pas_goes_through_the_pas_client() {
    let w = world("sandbox-pas").await;
    let r = w.ok(Action::Submit, "VI-88121").await;
    assert_eq!(r.status, CaseStatus::Approved);
    let case = w.ledger.get(r.case_id).await.unwrap();
    let decision = case.decision.unwrap();
    assert_eq!(decision.source, "api:sandbox", "recorded by the PAS channel");
    assert!(decision.auth_number.unwrap().starts_with("SHP"));
    let reference = case.payer_ref.expect("the ClaimResponse id is the payer's reference");
    // The PAS client's full Bundle went out: with its DeviceRequest.
    assert_eq!(w.sandbox.submission(&reference).unwrap().lines[0].code, "E0601");
    assert_eq!(w.answered("/fhir/Claim/$submit", 200), 1);

    let r = w.ok(Action::Submit, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Pending);
    // Still in review: the inquiry is stamped on the case, and the
    // timeline (which records changes) gets nothing.
    let events = w.ledger.events(r.case_id).await.unwrap().len();
    assert_eq!(w.ledger.last_polled(r.case_id).await.unwrap(), None);
    let r = w.ok(Action::PollStatus, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Pending);
    assert_eq!(
        w.ledger.events(r.case_id).await.unwrap().len(),
        events,
        "no event for no change"
    );
    assert!(w.ledger.last_polled(r.case_id).await.unwrap().is_some());
    w.sandbox.advance_clock(Duration::from_secs(20));
    let r = w.ok(Action::PollStatus, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Approved);
    assert!(
        w.ledger.events(r.case_id).await.unwrap().len() > events,
        "the change is recorded"
    );
    assert_eq!(w.answered("/fhir/Claim/$inquire", 200), 2);
    assert_eq!(
        w.answered("/oauth/token", 200),
        2,
        "one token per practice's client, reused across runs"
    );
    // PAS has no letters or worklist to read.
    let err = w
        .engine
        .run(Action::DownloadLetter, r.case_id, &actor())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("speaks Da Vinci PAS"), "{err}");
    w.no_browser_and_finish().await;
}

#[test]
fn check_reports_a_malformed_http_step_at_its_line_and_column() {
    let p = Project::new();
    install_rest(&p, |t| t);
    let out = p.precert(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("playbook sandbox-rest"), "{}", stdout(&out));

    let bad = r#"payer:
  id: bad-api
  name: Bad API
  channel: api
  base_url: https://api.example
credentials: [client_id, client_secret]
outcomes:
  A1: approved
actions:
  submit:
    - http:
        method: FETCH
        url: "{{ payer.base_url }}/claims"
        auth:
          oauth2: { token_url: "{{ payer.base_url }}/token", client_id: "{{ account.client_id }}", client_secret: "{{ secrets.client_sekret }}" }
        json: { member: "{{ case.patient.member_idd }}" }
        extract:
          ref: "entry/0/id"
          other: "/a/~2"
      commit: true
    - outcome: { status: "A1", reference: "{{ vars.ref }}" }
  poll_status:
    - navigate: "{{ payer.base_url }}"
"#;
    p.write("playbooks/bad.yaml", bad);
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let f = p.path("playbooks/bad.yaml").display().to_string();
    for needle in [
        format!("{f}:12:17: method `FETCH` is not one of GET, POST, PUT, PATCH, DELETE, HEAD"),
        format!("{f}:15:115: undefined variable `secrets.client_sekret` (list the name under `credentials:`)"),
        format!("{f}:16:15: undefined variable `case.patient.member_idd`"),
        format!("{f}:18:16: extract `ref`: `entry/0/id` is not a JSON pointer (`/a/0/b`), `status` or `header:NAME`"),
        format!("{f}:19:18: `/a/~2` is not a JSON pointer"),
        format!("{f}:23:7: `navigate` needs a browser page"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }

    // A header given twice is a YAML duplicate key, reported where it is.
    let dup = bad.replace(
        "        json: {",
        "        headers:\n          Accept: application/json\n          Accept: text/plain\n        json: {",
    );
    p.write("playbooks/bad.yaml", &dup);
    let err = stderr(&p.precert(&["check"]));
    assert!(
        err.contains(&format!("{f}:18:11: duplicate mapping key: Accept")),
        "{err}"
    );
}
