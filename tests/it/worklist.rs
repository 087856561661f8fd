//! The worklist at scale: many pending requests read through the portal's
//! paged worklist by the daemon's poll job, in real Chromium against the
//! sandbox (0 ms page latency), and every case is polled — also the ones
//! past the worklist's page cap.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use precert::case::CaseStatus;
use precert::store::{Actor, CaseFilter, Ledger};
use precert_sandbox::store::{Channel, NewRequest};
use precert_sandbox::{Decision, Sandbox, SandboxConfig};

use super::support::Project;

/// Pending requests on the worklist: 48 pages of 25.
const REQUESTS: usize = 1200;
/// The cap of the test's playbook: 46 pages (1 150 rows), so the 50 oldest
/// requests are not on the pages the worklist reads.
const MAX_PAGES: usize = 46;

const HEADER: &str = "practice_id,case_id,patient_first_name,patient_last_name,patient_birth_date,patient_member_id,patient_group_number,coverage_payer,coverage_plan,coverage_plan_type,coverage_state,requesting_provider_name,requesting_provider_npi,requesting_provider_location,servicing_provider_name,servicing_provider_npi,servicing_provider_location,service_lines,diagnoses,service_start,service_end,setting,urgency,attachments,precert_required";

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pending imaging request of `lakeside.precert`, its service date `i`
/// days after 8 December 2026 (modulo 300).
pub(super) fn request(i: usize) -> NewRequest {
    NewRequest {
        channel: Channel::Portal,
        submitted_by: "lakeside.precert".into(),
        provider_npi: "1245319599".into(),
        provider_name: "Lakeside Orthopedics".into(),
        member_id: "SBX100200301".into(),
        member_name: "Margaret Okafor".into(),
        request_type: "imaging".into(),
        urgency: "standard".into(),
        setting: "outpatient".into(),
        lines: vec![("73721".into(), 1)],
        diagnoses: vec!["M25.561".into()],
        service_start: chrono::NaiveDate::from_ymd_opt(2026, 12, 8).unwrap() + chrono::Days::new(i as u64 % 300),
        service_end: chrono::NaiveDate::from_ymd_opt(2026, 12, 8).unwrap() + chrono::Days::new(i as u64 % 300),
        servicing_npi: "1555012347".into(),
        attachments: Vec::new(),
        claim_identifier: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_one_of_1200_pending_requests_is_polled_also_past_the_worklists_page_cap() {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
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
    let playbook = p.path("playbooks/sandbox.yaml");
    let text = std::fs::read_to_string(&playbook).unwrap();
    let capped = text.replacen("max_pages: 200", &format!("max_pages: {MAX_PAGES}"), 1);
    assert_ne!(text, capped, "the shipped playbook caps its worklist at 200 pages");
    std::fs::write(&playbook, capped).unwrap();

    // The payer: 1 200 requests, each cancelled since, so one read of a
    // request is enough to see that it was polled (and no escalation mail
    // follows).
    let references: Vec<String> = (0..REQUESTS).map(|i| sandbox.file_request(request(i))).collect();
    for r in &references {
        sandbox.decide(r, Decision::Cancel).unwrap();
    }
    // The ledger: the same 1 200 cases, pending with their references.
    let mut csv = format!("{HEADER}\n");
    for i in 0..REQUESTS {
        csv.push_str(&format!(
            "lakeside-ortho,WL-{i:04},Avery,Marsh,1961-04-12,SBX100200301,GRP-4410,sandbox,Sandbox Advantage PPO,medicare_advantage,IL,\"Jordan Reyes, MD\",1987654328,main,Lakeside Orthopedics Imaging,1555012347,main,73721-RT*1,M25.561,2026-12-08,2026-12-08,outpatient,standard,,yes\n"
        ));
    }
    p.write("worklist.csv", &csv);
    let out = p.precert(&["cases", "import", "worklist.csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();
    let actor = Actor::user("test");
    for (i, reference) in references.iter().enumerate() {
        let id = ledger.find_by_ref(&format!("WL-{i:04}")).await.unwrap()[0].id;
        ledger
            .transition(id, CaseStatus::Submitting, &actor, None)
            .await
            .unwrap();
        ledger.set_payer_ref(id, reference, &actor).await.unwrap();
        ledger.transition(id, CaseStatus::Pending, &actor, None).await.unwrap();
    }

    let log = p.path("daemon.log");
    let mut cmd = p.command(&["daemon"]);
    cmd.env("PRECERT__HTTP__LISTEN", "127.0.0.1:0")
        .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("PRECERT_LOG", "info")
        .env("PRECERT__LIMITS__STARTS_PER_MINUTE", "6000")
        .env("PRECERT__LIMITS__BURST", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let daemon = Daemon {
        child: cmd.spawn().unwrap(),
        log,
    };

    let filter = CaseFilter {
        practice: Some("lakeside-ortho".into()),
        payer: None,
        status: None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let cases = ledger.list(&filter).await.unwrap();
        let left: Vec<_> = cases
            .iter()
            .filter(|c| c.status != CaseStatus::Cancelled)
            .map(|c| c.data.case_ref.clone())
            .collect();
        if left.is_empty() {
            assert_eq!(cases.len(), REQUESTS);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} cases not polled, e.g. {:?}:\n{}",
            left.len(),
            &left[..left.len().min(5)],
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The 50 oldest requests were past the cap: said so, and polled one by one.
    let said = daemon.log();
    assert!(said.contains("stopped at max_pages (46, 1150 rows)"), "{said}");
    let searched = sandbox
        .request_log()
        .iter()
        .filter(|e| e.path.starts_with("/portal/api/status"))
        .count();
    assert!(searched >= REQUESTS - MAX_PAGES * 25, "{searched} status searches");
    drop(daemon);
    ledger.close().await;
    sandbox.shutdown().await;
}
