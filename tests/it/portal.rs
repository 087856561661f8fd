//! End to end through a real portal: the sandbox payer in this process,
//! real chromedriver and headless Chromium driven by the engine with
//! `playbooks/sandbox.yaml`, and the real ledger.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use precert::case::CaseStatus;
use precert::engine::{Engine, FailureKind};
use precert::playbook::{self, Action};
use precert::store::{Actor, Ledger};
use precert_sandbox::{Decision, HazardsPatch, Sandbox, SandboxConfig, SandboxHandle};

use super::support::{stderr, stdout, Project};

struct World {
    p: Project,
    sandbox: SandboxHandle,
    ledger: Ledger,
    engine: Engine,
}

fn actor() -> Actor {
    Actor::job("test", 1)
}

async fn world() -> World {
    world_with(str::to_owned).await
}

/// A world whose `playbooks/sandbox.yaml` is edited first.
async fn world_with(edit: impl FnOnce(&str) -> String) -> World {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    let path = p.path("playbooks/sandbox.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(&text)).unwrap();
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let settings = p.settings_with_secrets();
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let ledger = Ledger::open(&settings.database_url).await.unwrap();
    let engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    World {
        p,
        sandbox,
        ledger,
        engine,
    }
}

impl World {
    async fn id(&self, case_ref: &str) -> i64 {
        self.ledger.find_by_ref(case_ref).await.unwrap().pop().unwrap().id
    }

    async fn run(&self, action: Action, case_ref: &str) -> precert::engine::RunReport {
        self.engine
            .run(action, self.id(case_ref).await, &actor())
            .await
            .unwrap()
    }

    fn logins(&self) -> usize {
        self.sandbox
            .request_log()
            .iter()
            .filter(|e| e.method == "POST" && e.path == "/portal/login")
            .count()
    }

    /// Ends the engine and proves no chromedriver or Chromium is left.
    async fn finish(self) {
        let group = self.engine.driver_process_group().await;
        self.engine.shutdown().await;
        if let Some(pgid) = group {
            gone(pgid).await;
        }
        self.ledger.close().await;
        self.sandbox.shutdown().await;
    }
}

/// Waits (bounded) until no process of the group is left.
async fn gone(pgid: i32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // SAFETY: signal 0 only asks whether the group exists.
        let alive = unsafe { libc::kill(-pgid, 0) } == 0;
        if !alive {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes of group {pgid} outlived the engine"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_is_submitted_approved_polled_and_its_letter_kept() {
    let w = world().await;
    let r = w.run(Action::Submit, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Pending);
    let case = w.ledger.get(r.case_id).await.unwrap();
    let reference = case.payer_ref.clone().expect("the portal's reference is recorded");
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        1
    );
    let sent = w.sandbox.submission(&reference).unwrap();
    assert_eq!(sent.member_id, "SBX100200301");

    w.sandbox.decide(&reference, Decision::Approve).unwrap();
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Approved);
    let decided = w.sandbox.submission(&reference).unwrap();
    let case = w.ledger.get(r.case_id).await.unwrap();
    let decision = case.decision.expect("a decision record");
    assert_eq!(decision.auth_number, decided.auth_number);
    assert!(decision.auth_number.is_some());
    let valid = decision.valid.expect("authorized dates");
    assert!(valid.start <= valid.end);
    assert_eq!(decision.lines[0].approved_units, 1);
    assert_eq!(decision.source, "portal:sandbox");

    let r = w.run(Action::DownloadLetter, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.letters, 1);
    let letters = w.ledger.letters(r.case_id).await.unwrap();
    assert_eq!(letters.len(), 1);
    let path = w.p.settings().data_dir.join(&letters[0].stored_path);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"%PDF-"));
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha, letters[0].sha256);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let text = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(decision.auth_number.as_deref().unwrap()));
    // Fetching again keeps one copy.
    assert_eq!(w.run(Action::DownloadLetter, "LO-2026-1001").await.letters, 0);

    // One login served all four runs: the session was reused.
    assert_eq!(w.logins(), 1);
    let out = w.p.precert(&["cases", "show", "LO-2026-1001"]);
    assert!(
        stdout(&out).contains(&format!("payer ref    {reference}")),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("letter       letters/lakeside-ortho/LO-2026-1001/"),
        "{}",
        stdout(&out)
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_recorded_with_the_payers_reason() {
    let w = world().await;
    let r = w.run(Action::Submit, "VI-88120").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    let r = w.run(Action::PollStatus, "VI-88120").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Denied);
    let denial = w
        .ledger
        .get(r.case_id)
        .await
        .unwrap()
        .decision
        .unwrap()
        .denial
        .expect("a denial reason");
    assert!(
        denial
            .text
            .contains("Conservative therapy of at least 6 weeks is not documented"),
        "{denial:?}"
    );
    assert_eq!(denial.code.as_deref(), Some("CLIN-06"), "{denial:?}");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_pended_for_information_is_recorded_as_such() {
    let w = world().await;
    assert!(w.run(Action::Submit, "LO-2026-1002").await.failure.is_none());
    let r = w.run(Action::PollStatus, "LO-2026-1002").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::PendedForInfo);
    // The payer's own request is on the timeline (and so in the mail).
    let events = w.ledger.events(r.case_id).await.unwrap();
    let pend = events
        .iter()
        .rfind(|e| e.to_status == Some(CaseStatus::PendedForInfo))
        .expect("the move to pended_for_info");
    assert!(
        pend.detail
            .to_string()
            .contains("Clinical notes documenting failed conservative treatment and recent weight-bearing X-rays."),
        "{}",
        pend.detail
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portals_own_refusal_text_is_the_failure_message() {
    let w = world().await;
    let r = w.run(Action::Submit, "VI-88122").await;
    let f = r.failure.expect("the portal refuses an inactive member");
    assert_eq!(f.kind, FailureKind::NeedsHuman);
    assert!(
        f.message
            .contains("the portal refused the member: Coverage for this member is not active"),
        "{f:?}"
    );
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    let events = w.ledger.events(r.case_id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.detail.to_string().contains("Coverage for this member is not active")),
        "{events:?}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_the_portal_is_logged_into_again_and_the_run_finishes() {
    let w = world().await;
    assert!(w.run(Action::Submit, "LO-2026-1001").await.failure.is_none());
    assert_eq!(w.logins(), 1);
    // The portal throws every session out (forced logout).
    let killed = reqwest::Client::new()
        .post(format!("{}/admin/sessions/kill-all", w.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert!(killed.status().is_success());
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Pending);
    assert_eq!(w.logins(), 2, "logged in again once");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_portal_is_retried_later_and_nothing_is_misrecorded() {
    let w = world().await;
    assert!(w.run(Action::Submit, "LO-2026-1001").await.failure.is_none());
    w.sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(1.0),
            ..Default::default()
        })
        .unwrap();
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    let f = r.failure.expect("the portal answers HTTP 500");
    assert_eq!(f.kind, FailureKind::Retryable, "{f}");
    assert_eq!(r.status, CaseStatus::Pending, "a failing portal changes no status");
    assert!(r.artifacts.is_some());
    w.sandbox
        .set_hazards(HazardsPatch {
            error_rate: Some(0.0),
            ..Default::default()
        })
        .unwrap();
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "the retry succeeds: {:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Pending);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_500_in_the_middle_of_a_run_is_retried_and_the_run_finishes() {
    let w = world().await;
    assert!(w.run(Action::Submit, "LO-2026-1001").await.failure.is_none());
    let reference = w.ledger.find_by_ref("LO-2026-1001").await.unwrap()[0]
        .payer_ref
        .clone()
        .unwrap();
    w.sandbox.decide(&reference, Decision::Approve).unwrap();
    // The status search answers HTTP 500 once (poll_status fetches it),
    // then works: the fetch is tried again.
    w.sandbox
        .set_hazards(HazardsPatch {
            status_search_fail_next: Some(1),
            ..Default::default()
        })
        .unwrap();
    let before = w.sandbox.request_log().len();
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    let errors = w.sandbox.request_log()[before..]
        .iter()
        .filter(|e| e.status == 500)
        .count();
    assert!(errors >= 1, "the portal failed at least once during the run");
    assert!(r.failure.is_none(), "retried past the 500s: {:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Approved);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worklist_updates_many_cases_from_its_pages() {
    let w = world().await;
    for case in ["LO-2026-1001", "LO-2026-1002", "LO-2026-1003"] {
        let r = w.run(Action::Submit, case).await;
        assert!(r.failure.is_none(), "{case}: {:?}", r.failure);
    }
    let reference = |case: &str| {
        let w = &w;
        let case = case.to_owned();
        async move { w.ledger.find_by_ref(&case).await.unwrap()[0].payer_ref.clone().unwrap() }
    };
    // 1001 approved by a reviewer; 1002 (27447) pends for information and
    // 1003 (97110) is approved for 8 of 12 units by the sandbox's rules.
    w.sandbox
        .decide(&reference("LO-2026-1001").await, Decision::Approve)
        .unwrap();
    let r = w.run(Action::PollWorklist, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.observations.len(), 3, "one row per request on the worklist");
    let status = |case: &str| {
        let w = &w;
        let case = case.to_owned();
        async move { w.ledger.find_by_ref(&case).await.unwrap()[0].clone() }
    };
    let approved = status("LO-2026-1001").await;
    assert_eq!(approved.status, CaseStatus::Approved);
    assert!(approved.decision.unwrap().auth_number.is_some());
    assert_eq!(status("LO-2026-1002").await.status, CaseStatus::PendedForInfo);
    let partial = status("LO-2026-1003").await;
    assert_eq!(partial.status, CaseStatus::PartiallyApproved);
    // The worklist shows no units: none are recorded, none made up.
    assert!(partial.decision.unwrap().lines.is_empty());
    // The status page shows them: 8 of the 12 requested.
    let r = w.run(Action::PollStatus, "LO-2026-1003").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    let lines = status("LO-2026-1003").await.decision.unwrap().lines;
    assert_eq!(
        (lines[0].approved_units, lines[0].requested_units),
        (8, 12),
        "{lines:?}"
    );
    // `precert run … poll_worklist` names each row's own case …
    let out =
        w.p.precert(&["run", "sandbox", "poll_worklist", "--case", "LO-2026-1001"]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(
        said.contains("lakeside-ortho/LO-2026-1003: portal says Partially Approved"),
        "{said}"
    );
    assert!(
        said.contains("lakeside-ortho/LO-2026-1002: portal says Pended"),
        "{said}"
    );
    // … and `poll_status --all` picks pending and pended cases only, not a
    // decision whose details are still to be read (1001's dates).
    let out = w.p.precert(&["run", "sandbox", "poll_status", "--all"]);
    let said = stdout(&out);
    assert!(out.status.success(), "{said}{}", stderr(&out));
    assert!(said.contains("lakeside-ortho/LO-2026-1002: poll_status ok"), "{said}");
    assert!(
        !said.contains("LO-2026-1001") && !said.contains("LO-2026-1003"),
        "{said}"
    );
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worklist_read_ahead_that_meets_a_signed_out_page_opens_it_signs_in_again_and_loses_no_row() {
    let w = world().await;
    // 80 requests of the account: worklist pages of 25, 25, 25 and 5.
    for i in 0..80 {
        w.sandbox.file_request(super::worklist::request(i));
    }
    let on_worklist = w.sandbox.submissions().len();
    assert_eq!(on_worklist, 80);
    let r = w.engine.login_only("sandbox", "lakeside-ortho").await.unwrap();
    assert!(r.failure.is_none(), "{:?}", r.failure);
    let pages_before = worklist_pages(&w);
    assert_eq!(w.logins(), 1);
    // The portal serves the first worklist page, then signs everyone out:
    // the page read ahead is a redirect to the login page.
    w.sandbox
        .set_hazards(HazardsPatch {
            sign_out_after_pages: Some(1),
            ..Default::default()
        })
        .unwrap();
    let r = w.run(Action::PollWorklist, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.observations.len(), on_worklist, "every row, none twice");
    let mut seen: Vec<_> = r.observations.iter().filter_map(|o| o.reference.clone()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), on_worklist);
    assert_eq!(w.logins(), 2, "signed in again once");
    // Without the sign-out: one navigation, then pages 2–4 read ahead in the
    // page — the same four pages served, none opened in the browser twice.
    let before = worklist_pages(&w);
    let r = w.run(Action::PollWorklist, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.observations.len(), on_worklist);
    assert_eq!(worklist_pages(&w) - before, 4, "each page served once");
    assert!(before > pages_before);
    w.finish().await;
}

/// Worklist pages the sandbox has served so far.
fn worklist_pages(w: &World) -> usize {
    w.sandbox
        .request_log()
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/portal/worklist"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_portal_sends_the_case_to_a_person_with_evidence_and_never_guesses() {
    let w = world().await;
    w.sandbox
        .set_hazards(HazardsPatch {
            layout_version: Some(2),
            ..Default::default()
        })
        .unwrap();
    let r = w.run(Action::Submit, "LO-2026-1001").await;
    let f = r.failure.expect("the wizard's layout changed");
    assert_eq!(f.kind, FailureKind::PortalChanged, "{f}");
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    assert!(w.sandbox.submissions().is_empty(), "nothing was submitted");
    let dir = r.artifacts.expect("artifacts");
    let png = std::fs::read(dir.join("screenshot.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let html = std::fs::read_to_string(dir.join("page.html")).unwrap();
    assert!(html.contains("subscriberId"), "the page as the browser saw it");
    let trace = std::fs::read_to_string(dir.join("trace.txt")).unwrap();
    assert!(
        trace.contains("assert (wizard v1)") && trace.contains("portal_changed"),
        "{trace}"
    );
    for f in ["screenshot.png", "page.html", "trace.txt"] {
        assert_eq!(
            std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let events = w.ledger.events(r.case_id).await.unwrap();
    let run = events.iter().rev().find(|e| e.kind == "run").unwrap();
    assert_eq!(run.detail["result"], "portal_changed");
    assert_eq!(run.detail["artifacts"], dir.display().to_string());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captcha_hands_the_case_to_a_person() {
    let w = world().await;
    w.sandbox
        .set_hazards(HazardsPatch {
            captcha: Some(true),
            ..Default::default()
        })
        .unwrap();
    let r = w.run(Action::Submit, "LO-2026-1001").await;
    let f = r.failure.expect("a CAPTCHA stops automation");
    assert_eq!(f.kind, FailureKind::NeedsHuman, "{f}");
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    assert!(w.sandbox.submissions().is_empty());
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_the_final_click_and_recording_the_reference_submits_only_once() {
    let w = world().await;
    // The subprocesses block a thread each; the sandbox serves on the others.
    let mut cmd = w.p.command(&["run", "sandbox", "submit", "--case", "LO-2026-1001"]);
    cmd.env("PRECERT_FAULT", "kill-after-commit");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", stderr(&out));
    // The browser dies with the process: the request may or may not have
    // left it. Either way the restart must end with exactly one.
    let case = w.ledger.find_by_ref("LO-2026-1001").await.unwrap().pop().unwrap();
    assert_eq!(case.status, CaseStatus::Submitting);
    assert_eq!(case.payer_ref, None, "the process died before recording the reference");

    let mut cmd = w.p.command(&["run", "sandbox", "submit", "--case", "LO-2026-1001"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("find_existing"), "{}", stderr(&out));
    let submissions = w.sandbox.submissions();
    assert_eq!(submissions.len(), 1, "exactly one submission");
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        1
    );
    let case = w.ledger.get(case.id).await.unwrap();
    assert_eq!(case.status, CaseStatus::Pending);
    assert_eq!(case.payer_ref.as_deref(), Some(submissions[0].reference.as_str()));
    w.finish().await;
}

/// `poll_status` reading the request's page by its labels alone, as a
/// person does: a `dt`/`dd` list (any case, a trailing colon), row headers
/// and a column header — no element IDs, no positions.
const BY_LABELS: &str = r##"  poll_status:
    - navigate: "{{ payer.base_url }}/portal/requests/{{ case.payer_reference }}"
    - extract: { label: "decision", into: status }
    - extract: { label: "Authorization #", into: auth }
    - extract: { label: "Valid", into: valid_from, regex: "^(\\S+)" }
    - extract: { label: "Valid", into: valid_to, regex: "(\\S+)$" }
    - extract: { label: "Approved units", within: "#detail-lines", into: units }
    - extract: { label: "Prior auth no.", into: missing, optional: true }
      timeout: 1s
    - outcome:
        status: "{{ vars.status }}"
        reference: "{{ case.payer_reference }}"
        auth_number: "{{ vars.auth }}"
        valid_from: "{{ vars.valid_from }}"
        valid_to: "{{ vars.valid_to }}"
        approved_units: "{{ vars.units }}"
        decision_date: "{{ vars.missing }}"

"##;

/// The one-time code typed one character at a time, as into a portal's
/// six boxes: a loop over the string's characters, in order.
const DIGIT_BY_DIGIT: &str = r##"    - fill: { selector: "#mfa-code", value: "" }
    - for_each:
        list: vars.mfa
        as: digit
        steps:
          - script:
              js: "document.getElementById('mfa-code').value += '{{ digit }}';"
    - set: { typed: "{{ vars.mfa | length }}" }
    - assert: { expr: "vars.typed == '6'" }
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_read_next_to_their_labels_after_a_code_typed_digit_by_digit() {
    let w = world_with(|text| {
        let start = text.find("  poll_status:\n").unwrap();
        let end = text.find("  poll_worklist:\n").unwrap();
        let text = format!("{}{BY_LABELS}{}", &text[..start], &text[end..]);
        let fill = "    - fill: { selector: \"#mfa-code\", value: \"{{ vars.mfa }}\" }\n";
        assert!(text.contains(fill));
        text.replacen(fill, DIGIT_BY_DIGIT, 1)
    })
    .await;
    // 97110: the sandbox approves 8 of the 12 units at once.
    assert!(w.run(Action::Submit, "LO-2026-1003").await.failure.is_none());
    let r = w.run(Action::PollStatus, "LO-2026-1003").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::PartiallyApproved);
    let case = w.ledger.get(r.case_id).await.unwrap();
    let sent = w.sandbox.submission(case.payer_ref.as_deref().unwrap()).unwrap();
    let decision = case.decision.unwrap();
    assert_eq!(decision.auth_number, sent.auth_number);
    assert!(decision.auth_number.is_some());
    let valid = decision.valid.expect("both dates read beside `Valid`");
    assert_eq!((Some(valid.start), Some(valid.end)), (sent.valid_from, sent.valid_to));
    assert_eq!(
        (decision.lines[0].approved_units, decision.lines[0].requested_units),
        (8, 12)
    );
    assert_eq!(w.logins(), 1, "the code typed digit by digit was accepted");
    w.finish().await;
}

/// Fix 7: the payer receives each document under the practice's own file
/// name (sanitised), not precert's stored, hash-prefixed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_reach_the_payer_under_the_practices_file_names() {
    let w = world().await;
    // A file name a portal's upload form would choke on.
    let odd = "MRI report #2 (final) \u{e9}t\u{e9}.pdf";
    std::fs::copy(
        w.p.path("samples/documents/knee-xray-report.pdf"),
        w.p.path(&format!("samples/documents/{odd}")),
    )
    .unwrap();
    let header = std::fs::read_to_string(w.p.path("samples/cases.csv"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let row = format!(
        "lakeside-ortho,LO-2026-1901,Avery,Marsh,1961-04-12,SBX100200301,GRP-4410,sandbox,Sandbox Advantage PPO,\
         medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,\
         73721-RT*1,M25.561,2026-12-09,2026-12-09,outpatient,standard,documents/{odd};documents/ortho-consult-note.pdf,yes"
    );
    w.p.write("samples/odd.csv", &format!("{header}\n{row}\n"));
    let out = w.p.precert(&["cases", "import", "samples/odd.csv"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let stored = w.ledger.get(w.id("LO-2026-1901").await).await.unwrap();
    let stored_names: Vec<String> = stored
        .data
        .attachments
        .iter()
        .map(|a| a.stored_path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(stored_names.iter().all(|n| n.len() > 13), "{stored_names:?}");

    let r = w.run(Action::Submit, "LO-2026-1901").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    let reference = w.ledger.get(r.case_id).await.unwrap().payer_ref.unwrap();
    let received: Vec<String> = w
        .sandbox
        .submission(&reference)
        .unwrap()
        .attachments
        .iter()
        .map(|a| a.file_name.clone())
        .collect();
    assert_eq!(received, ["MRI report _2 (final) _t_.pdf", "ortho-consult-note.pdf"]);
    for n in &stored_names {
        assert!(!received.contains(n), "{n} is precert's stored name");
    }
    // The sanitising rules, on names a practice might use.
    assert_eq!(
        precert::playbook::template::upload_name("../x/.hidden   name?.PDF"),
        "hidden name_.PDF"
    );
    assert_eq!(precert::playbook::template::upload_name("%%%.pdf"), "attachment.pdf");
    // No staged copy outlives the run.
    let staged = w.p.settings().data_dir.join("run/uploads");
    assert_eq!(std::fs::read_dir(&staged).unwrap().count(), 0);
    w.finish().await;
}

/// Fix 8: `--dry-run` runs a submission up to its commit step and records
/// nothing (no lease, status change, event or mail); `login` needs no case
/// and touches none, even when it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_sends_and_records_nothing_and_login_touches_no_case() {
    let w = world().await;
    let id = w.id("LO-2026-1001").await;
    let events = w.ledger.events(id).await.unwrap().len();
    let mail = w.ledger.outbox(true).await.unwrap().len();

    let out =
        w.p.precert(&["run", "sandbox", "submit", "--case", "LO-2026-1001", "--dry-run"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains("dry run stopped before the commit step at line"),
        "{text}"
    );
    assert!(text.contains("nothing recorded, the case is still ready"), "{text}");
    // The form was filled up to the confirm dialog, and nothing was sent.
    assert!(stderr(&out).contains("review shows our NPI"), "{}", stderr(&out));
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        0
    );
    let case = w.ledger.get(id).await.unwrap();
    assert_eq!(case.status, CaseStatus::Ready);
    assert_eq!(w.ledger.events(id).await.unwrap().len(), events);
    assert_eq!(w.ledger.outbox(true).await.unwrap().len(), mail);

    // A login on its own: every practice's account bound to the playbook.
    let out = w.p.precert(&["run", "sandbox", "login"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("lakeside-ortho: login ok (no case touched)"), "{text}");
    assert!(text.contains("valley-imaging: login ok (no case touched)"), "{text}");
    // A failing login named by a case leaves that case alone: no
    // needs_attention, no mail to operations.
    let mut cmd = w.p.command(&["run", "sandbox", "login", "--case", "LO-2026-1001"]);
    cmd.env("LAKESIDE_SANDBOX_PASSWORD", "not-the-password");
    let out = cmd.output().unwrap();
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("login failed"), "{text}{}", stderr(&out));
    assert!(text.contains("nothing recorded, the case is still ready"), "{text}");
    let out =
        w.p.precert(&["run", "sandbox", "poll_status", "--practice", "lakeside-ortho"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--practice goes with `login` only"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.ledger.get(id).await.unwrap().status, CaseStatus::Ready);
    assert_eq!(w.ledger.events(id).await.unwrap().len(), events);
    assert_eq!(w.ledger.outbox(true).await.unwrap().len(), mail);

    // The case was left clean: the real submission goes through, once.
    let r = w.run(Action::Submit, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Pending);
    assert_eq!(
        w.sandbox.submission_count("SBX100200301", "73721", date("2026-12-08")),
        1
    );
    w.finish().await;
}

/// Fix 9: an `assert` on an element the loaded page plainly lacks fails once
/// the page has settled (loaded, then unchanged for a moment), not after its
/// whole timeout; the message says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_presence_check_returns_once_the_page_has_settled() {
    let w = world_with(|text| {
        let poll = "  poll_worklist:\n    - navigate: \"{{ payer.base_url }}/portal/worklist\"\n";
        assert!(text.contains(poll));
        text.replacen(
            poll,
            &format!("{poll}    - assert: {{ present: \"#no-such-element\" }}\n      timeout: 5m\n      name: absent on purpose\n"),
            1,
        )
    })
    .await;
    assert!(w.run(Action::Submit, "LO-2026-1001").await.failure.is_none());
    let started = std::time::Instant::now();
    let r = w.run(Action::PollWorklist, "LO-2026-1001").await;
    let took = started.elapsed();
    let f = r.failure.expect("the assertion fails");
    assert_eq!(f.kind, FailureKind::PortalChanged, "{f:?}");
    assert!(
        f.message
            .contains("assertion failed: an element matches `#no-such-element` (on the settled page"),
        "{f:?}"
    );
    // The step may wait 5 minutes, and the action is tried twice; a
    // generous bound far below one timeout.
    assert!(took < Duration::from_secs(60), "{took:?}");
    w.finish().await;
}

/// `poll_status` through the browser's status search page (the sandbox
/// playbook itself fetches the search's JSON): both paths stay tested.
const BROWSER_POLL: &str = r##"  poll_status:
    - navigate: "{{ payer.base_url }}/portal/status"
    - fill: { selector: "#search-reference", value: "{{ case.payer_reference }}" }
    - click: "#status-search-submit"
    # The results table is built by JavaScript after an XHR; a failed search
    # shows #status-error (a `detect` rule: tried again, never "not found").
    - wait_for: { present: "#status-results-container[data-loaded='true'], #status-results-container[data-loaded='error']" }
      timeout: 20s
    - assert: { present: "#status-results tr[data-reference='{{ case.payer_reference }}']" }
      name: our request is listed
    - rows:
        selector: "#status-results tr[data-reference='{{ case.payer_reference }}']"
        cells:
          status: td.col-status
          decision_date: td.col-decision-date
          auth_number: td.col-auth-number
          approved_units: td.col-approved-units
          valid_from: td.col-valid-from
          valid_to: td.col-valid-to
          denial_reason: td.col-denial-reason
          information_requested: td.col-information-requested
        into: found
    - for_each:
        list: vars.found
        as: row
        steps:
          - outcome:
              status: "{{ row.status }}"
              reference: "{{ case.payer_reference }}"
              auth_number: "{{ row.auth_number }}"
              valid_from: "{{ row.valid_from }}"
              valid_to: "{{ row.valid_to }}"
              approved_units: "{{ row.approved_units }}"
              decision_date: "{{ row.decision_date }}"
              denial_reason: "{{ row.denial_reason }}"
              # A pend's request, in the payer's words: the timeline and
              # the supervisors' mail quote it.
              request: "{{ row.information_requested }}"

"##;

/// The sandbox's requests by path, counted.
fn served(w: &World, method: &str, path: &str) -> usize {
    w.sandbox
        .request_log()
        .iter()
        .filter(|e| e.method == method && e.path == path)
        .count()
}

/// Polling at the speed of the wire: `poll_status` fetches the status
/// search's JSON with the browser session's cookies — no page rendered —
/// and a session the portal ended between two fetches is logged into again.
/// The browser path (the search page) gives the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_polled_by_fetching_with_the_browsers_session_and_a_logout_between_fetches_logs_in_again() {
    let w = world().await;
    for case in ["LO-2026-1001", "LO-2026-1003"] {
        let r = w.run(Action::Submit, case).await;
        assert!(r.failure.is_none(), "{:?}", r.failure);
    }
    let ref1 = w
        .ledger
        .get(w.id("LO-2026-1001").await)
        .await
        .unwrap()
        .payer_ref
        .unwrap();
    w.sandbox.decide(&ref1, Decision::Approve).unwrap();
    let pages_before = served(&w, "GET", "/portal/status");
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::Approved);
    let decision = w.ledger.get(r.case_id).await.unwrap().decision.unwrap();
    assert_eq!(decision.auth_number, w.sandbox.submission(&ref1).unwrap().auth_number);
    assert_eq!(served(&w, "GET", "/portal/api/status"), 1);
    assert_eq!(
        served(&w, "GET", "/portal/status"),
        pages_before,
        "no page was rendered"
    );
    assert_eq!(w.logins(), 1);

    // The portal ends every session (idle expiry) between two fetches.
    w.sandbox
        .set_hazards(HazardsPatch {
            session_idle_timeout_seconds: Some(60),
            ..Default::default()
        })
        .unwrap();
    w.sandbox.advance_clock(Duration::from_secs(600));
    let r = w.run(Action::PollStatus, "LO-2026-1003").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    // 97110: the sandbox approves 8 of the 12 units at once.
    assert_eq!(r.status, CaseStatus::PartiallyApproved);
    assert_eq!(w.logins(), 2, "logged in again after the 401");
    assert_eq!(served(&w, "GET", "/portal/api/status"), 3);
    let case = w.ledger.get(r.case_id).await.unwrap();
    let decision = case.decision.unwrap();
    assert_eq!(
        (decision.lines[0].approved_units, decision.lines[0].requested_units),
        (8, 12)
    );
    let first = w.ledger.get(w.id("LO-2026-1001").await).await.unwrap();
    w.finish().await;

    // The same answers through the browser's search page.
    let w = world_with(|text| {
        let start = text.find("  poll_status:\n").unwrap();
        let end = text.find("  poll_worklist:\n").unwrap();
        format!("{}{BROWSER_POLL}{}", &text[..start], &text[end..])
    })
    .await;
    assert!(w.run(Action::Submit, "LO-2026-1001").await.failure.is_none());
    let reference = w
        .ledger
        .get(w.id("LO-2026-1001").await)
        .await
        .unwrap()
        .payer_ref
        .unwrap();
    w.sandbox.decide(&reference, Decision::Approve).unwrap();
    let r = w.run(Action::PollStatus, "LO-2026-1001").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, first.status);
    assert_eq!(
        served(&w, "GET", "/portal/api/status"),
        1,
        "read by the page's own script"
    );
    assert!(served(&w, "GET", "/portal/status") >= 1);
    w.finish().await;
}

/// A fetched HTML page is read by the same steps as the browser's: label
/// reads, `assert`, and `rows` over pages (next-page links fetched too).
const FETCHED_HTML: &str = r##"  poll_status:
    - fetch:
        url: "{{ payer.base_url }}/portal/requests/{{ case.payer_reference }}"
        steps:
          - assert: { present: "#detail-reference" }
          - extract: { label: "decision", into: status }
          - extract: { label: "Authorization #", into: auth }
          - extract: { label: "Approved units", within: "#detail-lines", into: units }
          - outcome:
              status: "{{ vars.status }}"
              reference: "{{ case.payer_reference }}"
              auth_number: "{{ vars.auth }}"
              approved_units: "{{ vars.units }}"

  poll_worklist:
    - fetch:
        url: "/portal/worklist"
        steps:
          - rows:
              selector: "#worklist-table tr[data-reference]"
              cells:
                reference: td.col-reference
                status: td.col-status
                auth_number: td.col-auth-number
              next_page: "#worklist-next"
              max_pages: 200
              into: worklist
    - for_each:
        list: vars.worklist
        as: row
        steps:
          - outcome:
              status: "{{ row.status }}"
              reference: "{{ row.reference }}"
              auth_number: "{{ row.auth_number }}"

"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_html_pages_are_read_by_labels_and_rows_across_pages() {
    let w = world_with(|text| {
        let start = text.find("  poll_status:\n").unwrap();
        let end = text.find("  download_letter:\n").unwrap();
        format!("{}{FETCHED_HTML}{}", &text[..start], &text[end..])
    })
    .await;
    assert!(w.run(Action::Submit, "LO-2026-1003").await.failure.is_none());
    let r = w.run(Action::PollStatus, "LO-2026-1003").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert_eq!(r.status, CaseStatus::PartiallyApproved);
    let case = w.ledger.get(r.case_id).await.unwrap();
    let sent = w.sandbox.submission(case.payer_ref.as_deref().unwrap()).unwrap();
    let decision = case.decision.unwrap();
    assert_eq!(decision.auth_number, sent.auth_number);
    assert_eq!(decision.lines[0].approved_units, 8);

    // 60 more requests: the worklist has 3 pages of 25, all fetched.
    for i in 0..60 {
        w.sandbox.file_request(precert_sandbox::store::NewRequest {
            channel: precert_sandbox::store::Channel::Portal,
            submitted_by: "lakeside.precert".into(),
            provider_npi: sent.provider_npi.clone(),
            provider_name: sent.provider_name.clone(),
            member_id: "SBX100200301".into(),
            member_name: "Avery Marsh".into(),
            request_type: "imaging".into(),
            urgency: "standard".into(),
            setting: "outpatient".into(),
            lines: vec![("73721".into(), 1)],
            diagnoses: vec!["M25.561".into()],
            service_start: date("2027-01-01") + chrono::Days::new(i),
            service_end: date("2027-01-01") + chrono::Days::new(i),
            servicing_npi: "1555012347".into(),
            attachments: Vec::new(),
            claim_identifier: None,
        });
    }
    let pages_before = served(&w, "GET", "/portal/worklist");
    let r = w.run(Action::PollWorklist, "LO-2026-1003").await;
    assert!(r.failure.is_none(), "{:?}", r.failure);
    assert!(r.partial.is_none());
    assert_eq!(r.observations.len(), 61);
    assert!(r
        .observations
        .iter()
        .any(|o| o.reference.as_deref() == case.payer_ref.as_deref()));
    assert_eq!(served(&w, "GET", "/portal/worklist") - pages_before, 3);
    w.finish().await;
}
