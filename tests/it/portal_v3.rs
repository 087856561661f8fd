//! A second portal: the sandbox's layout v3 (`/v3/`), built unlike the classic
//! one, worked by `playbooks/examples/sandbox-v3.yaml` alone — in real
//! chromedriver and headless Chromium, with the real ledger.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use precert::case::CaseStatus;
use precert::engine::Engine;
use precert::playbook::{self, Action};
use precert::store::{Actor, Ledger};
use precert_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

use super::support::{stderr, stdout, Project};

/// Installs the v3 example beside the shipped playbooks and binds both sample
/// practices' `sandbox` payer to it (their portal accounts are the same).
fn bind_v3(p: &Project, base_url: &str) {
    let text = std::fs::read_to_string(p.path("playbooks/examples/sandbox-v3.yaml")).unwrap();
    p.write("playbooks/sandbox-v3.yaml", &text);
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            "[payers.sandbox]\n",
            &format!("[payers.sandbox]\nplaybook = \"sandbox-v3\"\nbase_url = \"{base_url}\"\n"),
            1,
        );
        std::fs::write(&path, text).unwrap();
    }
}

async fn sandbox(config: SandboxConfig) -> SandboxHandle {
    Sandbox::start(config, "127.0.0.1:0").await.unwrap()
}

fn project(sandbox: &SandboxHandle) -> Project {
    let p = Project::new();
    bind_v3(&p, &sandbox.base_url());
    let out = p.precert(&["cases", "import", "samples/cases.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    p
}

fn sign_ins(sandbox: &SandboxHandle) -> usize {
    sandbox
        .request_log()
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/v3/signin")
        .count()
}

/// Sign-in through the six-box code and the organisation picker; submission
/// through the one-page form (eligibility by fetch, codes from delayed
/// suggestions, documents in the iframe, the confirm() accepted); an idle
/// session that ended, signed in again by itself; decisions read by label from
/// the fetched request page; the client-drawn table's pages; a letter from the
/// new tab. One browser session, one engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_portal_is_worked_by_its_playbook_alone() {
    let mut config = SandboxConfig::default_demo();
    // Two rows a page: the table's "Next page" button is followed.
    config.worklist_page_size = 2;
    let sbx = sandbox(config).await;
    let p = project(&sbx);
    let settings = p.settings_with_secrets();
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let ledger = Ledger::open(&settings.database_url).await.unwrap();
    let engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    let actor = Actor::job("test", 1);
    let case = |r: &'static str| {
        let ledger = ledger.clone();
        async move { ledger.find_by_ref(r).await.unwrap().pop().unwrap() }
    };
    let run = |action: Action, r: &'static str| {
        let (engine, actor) = (&engine, &actor);
        async move {
            let id = case(r).await.id;
            let report = engine.run(action, id, actor).await.unwrap();
            assert!(report.failure.is_none(), "{r} {action}: {:?}", report.failure);
            report
        }
    };

    // 1001: MRI knee (approved 20 s later), one document; 1002: knee
    // arthroplasty, pended at once, two documents; 1003: 12 units of therapy,
    // 8 approved at once.
    assert_eq!(run(Action::Submit, "LO-2026-1001").await.status, CaseStatus::Pending);
    assert_eq!(
        run(Action::Submit, "LO-2026-1002").await.status,
        CaseStatus::PendedForInfo
    );
    assert_eq!(
        run(Action::Submit, "LO-2026-1003").await.status,
        CaseStatus::PartiallyApproved
    );
    let reference = case("LO-2026-1001")
        .await
        .payer_ref
        .expect("the reference read by label");
    let sent = sbx.submission(&reference).unwrap();
    assert_eq!(
        sent.provider_npi, "1245319599",
        "the practice's organisation was picked"
    );
    assert_eq!(sent.codes(), ["73721"]);
    let files: Vec<_> = sbx
        .submission(&case("LO-2026-1002").await.payer_ref.unwrap())
        .unwrap()
        .attachments
        .iter()
        .map(|a| a.file_name.clone())
        .collect();
    assert_eq!(files, ["ortho-consult-note.pdf", "knee-xray-report.pdf"]);
    assert_eq!(sign_ins(&sbx), 1, "one sign-in served three submissions");

    // The session idles past the portal's limit; meanwhile 1001 is approved.
    sbx.advance_clock(Duration::from_secs(sbx.config().v3_idle_timeout_seconds + 1));
    let r = run(Action::PollStatus, "LO-2026-1001").await;
    assert_eq!(r.status, CaseStatus::Approved);
    assert_eq!(sign_ins(&sbx), 2, "the ended session was signed in again");
    let decided = sbx.submission(&reference).unwrap();
    let decision = case("LO-2026-1001").await.decision.expect("a decision");
    assert_eq!(decision.auth_number, decided.auth_number);
    assert!(decision.auth_number.is_some());
    let valid = decision.valid.expect("the valid dates, read by label");
    assert_eq!(Some(valid.start), decided.valid_from);
    assert_eq!(Some(valid.end), decided.valid_to);
    assert_eq!(decision.lines[0].approved_units, 1);

    // Units approved, read under their column header: 8 of the 12.
    run(Action::PollStatus, "LO-2026-1003").await;
    let lines = case("LO-2026-1003").await.decision.unwrap().lines;
    assert_eq!((lines[0].approved_units, lines[0].requested_units), (8, 12));

    // The table drawn from JSON, two pages of two rows.
    let r = run(Action::PollWorklist, "LO-2026-1001").await;
    assert_eq!(r.observations.len(), 3, "{:?}", r.observations);
    assert!(r.partial.is_none());

    // The letter, from the viewer the link opens in a new tab.
    let r = run(Action::DownloadLetter, "LO-2026-1001").await;
    assert_eq!(r.letters, 1);
    let letters = ledger.letters(r.case_id).await.unwrap();
    let pdf = std::fs::read(p.settings().data_dir.join(&letters[0].stored_path)).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));

    let group = engine.driver_process_group().await;
    engine.shutdown().await;
    if let Some(pgid) = group {
        // SAFETY: signal 0 only asks whether the group is gone.
        super::reaper::until(Duration::from_secs(10), "the browser ends with the engine", || unsafe {
            libc::kill(-pgid, 0) != 0
        })
        .await;
    }
    ledger.close().await;
    sbx.shutdown().await;
}

/// `precert check` passes the example; a `precert run … submit` SIGKILLed
/// after the confirm() was accepted and the portal answered — the reference
/// read, not yet recorded — leaves the case `submitting`, and the next run
/// finds the request with `find_existing` and adopts it instead of sending a
/// second. (Killed right at the accept, precert takes its browser down with it
/// and the form may never be posted; that is the fault matrix's business.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_killed_after_the_confirm_is_adopted_not_sent_again() {
    let sbx = sandbox(SandboxConfig::default_demo()).await;
    let p = project(&sbx);
    let out = p.precert(&["check"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));

    let submit = |fault: Option<&'static str>| {
        let mut cmd = p.command(&["run", "sandbox-v3", "submit", "--case", "LO-2026-1001"]);
        if let Some(f) = fault {
            cmd.env("PRECERT_FAULT", f);
        }
        // The subprocess blocks a thread; the sandbox serves on the others.
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    // Step 31 of this case's submit (one line, one document) is the first
    // read on the request's page after the portal filed it.
    let out = submit(Some("kill-after-step:31")).await.unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}", stderr(&out));
    let ledger = p.ledger().await;
    let killed = ledger.find_by_ref("LO-2026-1001").await.unwrap().pop().unwrap();
    assert_eq!(killed.status, CaseStatus::Submitting);
    assert!(killed.payer_ref.is_none());
    assert_eq!(
        sbx.submissions_for_member("SBX100200301").len(),
        1,
        "the portal filed it"
    );

    let out = submit(None).await.unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let sent = sbx.submissions_for_member("SBX100200301");
    assert_eq!(sent.len(), 1, "adopted, not sent again");
    let case = ledger.find_by_ref("LO-2026-1001").await.unwrap().pop().unwrap();
    assert_eq!(case.payer_ref.as_deref(), Some(sent[0].reference.as_str()));
    assert_eq!(case.status, CaseStatus::Pending);
    ledger.close().await;
    sbx.shutdown().await;
}
