//! Parallel polling over a payer's `max_sessions`: with the sandbox
//! playbook allowing two sessions, `precert run … poll_status --all` and
//! the daemon's poll job poll with two browser sessions at once (the
//! sandbox sees two status searches in flight together, never three), and
//! every case is recorded exactly once. Real Chromium, real sandbox.

use std::time::Duration;

use chrono::{DateTime, Utc};
use precert::case::CaseStatus;
use precert::store::{Actor, CaseFilter, Ledger};
use precert_sandbox::store::{Channel, NewRequest};
use precert_sandbox::{Decision, HazardsPatch, Sandbox, SandboxConfig, SandboxHandle};

use super::daemon::{free_port, start_with, until};
use super::support::{stderr, stdout, Project};

/// Cases polled: enough that one session alone is still busy when the
/// second has started and signed in.
const CASES: usize = 30;

/// Page latency: each status search is in flight this long, so two
/// sessions' searches overlap in the sandbox's request log.
const LATENCY_MS: u64 = 300;

const HEADER: &str = "practice_id,case_id,patient_first_name,patient_last_name,patient_birth_date,patient_member_id,patient_group_number,coverage_payer,coverage_plan,coverage_plan_type,coverage_state,requesting_provider_name,requesting_provider_npi,requesting_provider_location,servicing_provider_name,servicing_provider_npi,servicing_provider_location,service_lines,diagnoses,service_start,service_end,setting,urgency,attachments,precert_required";

fn request(i: usize) -> NewRequest {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 8).unwrap() + chrono::Days::new(i as u64);
    NewRequest {
        channel: Channel::Portal,
        submitted_by: "lakeside.precert".into(),
        provider_npi: "1245319599".into(),
        provider_name: "Lakeside Orthopedics".into(),
        member_id: "SBX100200301".into(),
        member_name: "Avery Marsh".into(),
        request_type: "imaging".into(),
        urgency: "standard".into(),
        setting: "outpatient".into(),
        lines: vec![("73721".into(), 1)],
        diagnoses: vec!["M25.561".into()],
        service_start: day,
        service_end: day,
        servicing_npi: "1555012347".into(),
        attachments: Vec::new(),
        claim_identifier: None,
    }
}

/// A sandbox with `CASES` approved requests and a project whose ledger
/// has the same cases pending, whose sandbox playbook allows two sessions
/// and polls case by case (no worklist: a payer without one).
async fn world() -> (SandboxHandle, Project, Ledger, Vec<i64>) {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    let path = p.path("playbooks/sandbox.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let two = text.replacen("  max_sessions: 1\n", "  max_sessions: 2\n", 1);
    let (start, end) = (
        two.find("  poll_worklist:\n").unwrap(),
        two.find("  download_letter:\n").unwrap(),
    );
    assert_ne!(text, two, "the shipped playbook allows one session");
    std::fs::write(&path, format!("{}{}", &two[..start], &two[end..])).unwrap();

    let references: Vec<String> = (0..CASES).map(|i| sandbox.file_request(request(i))).collect();
    for r in &references {
        sandbox.decide(r, Decision::Approve).unwrap();
    }
    let mut csv = format!("{HEADER}\n");
    for i in 0..CASES {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 8).unwrap() + chrono::Days::new(i as u64);
        csv.push_str(&format!(
            "lakeside-ortho,PP-{i:03},Avery,Marsh,1961-04-12,SBX100200301,GRP-4410,sandbox,Sandbox Advantage PPO,medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,73721-RT*1,M25.561,{day},{day},outpatient,standard,,yes\n"
        ));
    }
    p.write("cases.csv", &csv);
    let out = p.precert(&["cases", "import", "cases.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ledger = p.ledger().await;
    let actor = Actor::user("test");
    let mut ids = Vec::new();
    for (i, reference) in references.iter().enumerate() {
        let id = ledger.find_by_ref(&format!("PP-{i:03}")).await.unwrap()[0].id;
        ledger
            .transition(id, CaseStatus::Submitting, &actor, None)
            .await
            .unwrap();
        ledger.set_payer_ref(id, reference, &actor).await.unwrap();
        ledger.transition(id, CaseStatus::Pending, &actor, None).await.unwrap();
        ids.push(id);
    }
    sandbox
        .set_hazards(HazardsPatch {
            latency_ms: Some(LATENCY_MS),
            ..Default::default()
        })
        .unwrap();
    (sandbox, p, ledger, ids)
}

/// The most status searches the sandbox had in flight at one moment.
fn most_searches_at_once(sandbox: &SandboxHandle) -> usize {
    let spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = sandbox
        .request_log()
        .iter()
        .filter(|e| e.path.starts_with("/portal/api/status"))
        .map(|e| {
            let end = e.started_at + chrono::Duration::microseconds((e.latency_ms * 1000.0) as i64);
            (e.started_at, end)
        })
        .collect();
    spans
        .iter()
        .map(|(start, _)| spans.iter().filter(|(s, e)| s <= start && start < e).count())
        .max()
        .unwrap_or(0)
}

/// Every case approved by exactly one recorded change, and the payer
/// asked about each exactly once.
async fn each_recorded_once(sandbox: &SandboxHandle, ledger: &Ledger, ids: &[i64]) {
    for &id in ids {
        let case = ledger.get(id).await.unwrap();
        assert_eq!(case.status, CaseStatus::Approved, "case {}", case.data.case_ref);
        let approvals = ledger
            .events(id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.to_status == Some(CaseStatus::Approved))
            .count();
        assert_eq!(approvals, 1, "case {} approved {approvals} times", case.data.case_ref);
    }
    let searches = sandbox
        .request_log()
        .iter()
        .filter(|e| e.path.starts_with("/portal/api/status"))
        .count();
    assert_eq!(searches, ids.len(), "status searches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_polls_with_the_payers_two_sessions_at_once_and_records_each_case_once() {
    let (sandbox, p, ledger, ids) = world().await;
    let out = p.precert(&["run", "sandbox", "poll_status", "--all"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out).matches("poll_status ok; now approved").count(),
        CASES,
        "{}",
        stdout(&out)
    );
    assert_eq!(most_searches_at_once(&sandbox), 2, "two sessions at once, never more");
    each_recorded_once(&sandbox, &ledger, &ids).await;
    ledger.close().await;
    sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_poll_job_polls_with_the_payers_two_sessions_at_once_and_records_each_case_once() {
    let (sandbox, p, ledger, ids) = world().await;
    // Only the poll job runs, every two seconds.
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("[schedules]").next().unwrap().replacen(
        "[payers.sandbox-pas]\n",
        &format!("[payers.sandbox-pas]\nbase_url = \"{}\"\n", sandbox.base_url()),
        1,
    );
    let yearly = "\"0 0 1 1 *\"";
    std::fs::write(
        &path,
        format!(
            "{head}[schedules]\nsubmit = {yearly}\npoll = \"*/2 * * * * *\"\nletters = {yearly}\nescalations = {yearly}\ndigest = {yearly}\n"
        ),
    )
    .unwrap();
    let daemon = start_with(&p, free_port(), false, "daemon", &[], &[]);
    let filter = CaseFilter {
        practice: Some("lakeside-ortho".into()),
        payer: Some("sandbox".into()),
        status: Some(CaseStatus::Pending),
    };
    until(&daemon, Duration::from_secs(240), "every case polled", || async {
        ledger.list(&filter).await.unwrap().is_empty()
    })
    .await;
    let said = daemon.log();
    drop(daemon);
    assert_eq!(
        most_searches_at_once(&sandbox),
        2,
        "two sessions at once, never more:\n{said}"
    );
    each_recorded_once(&sandbox, &ledger, &ids).await;
    ledger.close().await;
    sandbox.shutdown().await;
}
