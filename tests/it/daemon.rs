//! `precert daemon` as a real process: second-level schedules against the
//! in-process sandbox payer, signals, a crash and a restart.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use precert::case::CaseStatus;
use precert::store::{CaseFilter, Ledger};
use precert_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

use super::postgres::{both_backends, Backend};
use super::support::Project;

/// Every job every two seconds, in both sample practices.
fn fast_schedules(p: &Project) {
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let head = text.split("[schedules]").next().unwrap();
        let fast = "[schedules]\nsubmit = \"*/2 * * * * *\"\npoll = \"*/2 * * * * *\"\nletters = \"*/2 * * * * *\"\nescalations = \"*/2 * * * * *\"\n";
        std::fs::write(&path, format!("{head}{fast}")).unwrap();
    }
}

pub(super) struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(p: &Project, port: u16, fault: bool, name: &str) -> Daemon {
    start_with(p, port, fault, name, &[], &[])
}

/// `start`, with extra environment variables and some removed.
pub(super) fn start_with(
    p: &Project,
    port: u16,
    fault: bool,
    name: &str,
    env: &[(&str, &str)],
    remove: &[&str],
) -> Daemon {
    let log = p.path(&format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = p.command(&["daemon"]);
    cmd.env("PRECERT__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("PRECERT_LOG", "info,precert=debug")
        // Schedules every two seconds would hit the default pacing (6 starts
        // a minute per payer) all the time; the sandbox does not mind.
        .env("PRECERT__LIMITS__STARTS_PER_MINUTE", "600")
        .env("PRECERT__LIMITS__BURST", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    if fault {
        cmd.env("PRECERT_FAULT", "kill-after-commit");
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in remove {
        cmd.env_remove(k);
    }
    Daemon {
        child: cmd.spawn().unwrap(),
        log,
    }
}

impl Daemon {
    pub(super) fn log(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.log).unwrap().read_to_string(&mut s).unwrap();
        s
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the process to end; its exit status.
    pub(super) async fn exit(mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon did not stop within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn setup(backend: Backend) -> (Project, SandboxHandle, Ledger) {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::on(backend).await;
    p.use_sandbox(&sandbox.base_url());
    fast_schedules(&p);
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();
    (p, sandbox, ledger)
}

/// Every case has been through the payer as far as it can go: decided
/// cases have their letter and their details (a decision first seen on a
/// page that shows only the status, such as a confirmation, is read in full
/// by a later poll, which may come after its letter), the refused member is
/// with a person.
async fn all_settled(ledger: &Ledger) -> bool {
    for c in ledger.list(&CaseFilter::default()).await.unwrap() {
        let detailed = match (c.status, &c.decision) {
            (CaseStatus::Denied, Some(d)) => d.denial.is_some(),
            (CaseStatus::Approved | CaseStatus::PartiallyApproved, Some(d)) => {
                d.auth_number.is_some() && d.valid.is_some()
            }
            _ => false,
        };
        let settled = match c.status {
            CaseStatus::Approved | CaseStatus::PartiallyApproved | CaseStatus::Denied => {
                detailed && !ledger.letters(c.id).await.unwrap().is_empty()
            }
            CaseStatus::PendedForInfo | CaseStatus::NeedsAttention => true,
            _ => false,
        };
        if !settled {
            return false;
        }
    }
    true
}

/// Waits (bounded) until every case settled, moving the payer's clock so
/// its timed decisions come due.
async fn until_settled(ledger: &Ledger, sandbox: &SandboxHandle, daemon: &Daemon, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while !all_settled(ledger).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cases did not settle in {limit:?}:\n{}",
            daemon.log()
        );
        sandbox.advance_clock(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn each_submitted_once(sandbox: &SandboxHandle) {
    let subs = sandbox.submissions();
    assert_eq!(
        subs.len(),
        5,
        "five of the six cases reach the payer (one member is inactive)"
    );
    let mut keys: Vec<String> = subs.iter().map(|s| s.member_id.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 5, "no member's request was submitted twice");
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    the_daemon_works_the_cases_on_its_schedules_until_they_are_decided_and_their_letters_kept
);
async fn the_daemon_works_the_cases_on_its_schedules_until_they_are_decided_and_their_letters_kept(backend: Backend) {
    let (p, sandbox, ledger) = setup(backend).await;
    let port = free_port();
    let daemon = start(&p, port, false, "daemon");
    until_settled(&ledger, &sandbox, &daemon, Duration::from_secs(150)).await;
    each_submitted_once(&sandbox);
    let inactive = ledger.find("valley-imaging", "VI-88122").await.unwrap().unwrap();
    assert_eq!(inactive.status, CaseStatus::NeedsAttention);
    // Read again from the worklist on later polls, a decision keeps its details.
    let approved = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    let decision = approved.decision.expect("a decision");
    assert!(
        decision.auth_number.is_some() && decision.valid.is_some(),
        "{decision:?}"
    );
    let denied = ledger.find("valley-imaging", "VI-88120").await.unwrap().unwrap();
    assert!(denied.decision.unwrap().denial.is_some());

    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("precert_cases{status=\"approved\"} 2"), "{metrics}");
    assert!(
        metrics.contains("precert_jobs_total{kind=\"submit\",payer=\"sandbox\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("precert_queue_jobs{state=\"queued\"}"), "{metrics}");
    assert!(
        metrics.contains("precert_run_seconds_count{payer=\"sandbox\",action=\"download_letter\"}"),
        "{metrics}"
    );

    // A whole day's work at debug level: no secret, no member ID, no name.
    let log = daemon.log();
    assert!(log.contains("Job done."), "{log}");
    for (_, secret) in super::support::SECRETS {
        assert!(!log.contains(secret), "a secret in the daemon's log");
    }
    for phi in ["SBX100200301", "SBX100200305", "Marsh", "Kowalski", "1961-04-12"] {
        assert!(!log.contains(phi), "PHI in the daemon's log: {phi}");
    }

    daemon.signal(libc::SIGTERM);
    let log_path = daemon.log.clone();
    let status = daemon.exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(log_path).unwrap());
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_daemon_killed_mid_submission_resumes_after_restart_and_submits_nothing_twice
);
async fn a_daemon_killed_mid_submission_resumes_after_restart_and_submits_nothing_twice(backend: Backend) {
    let (p, sandbox, ledger) = setup(backend).await;
    let port = free_port();
    // The first daemon kills itself right after its first final click.
    let first = start(&p, port, true, "first");
    let status = first.exit(Duration::from_secs(120)).await;
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Its browser died with it: the request may or may not have left. The
    // restart must end with exactly one either way.
    let second = start(&p, port, false, "second");
    until_settled(&ledger, &sandbox, &second, Duration::from_secs(150)).await;
    each_submitted_once(&sandbox);
    let log = second.log();
    assert!(log.contains("find_existing") || log.contains("queued again"), "{log}");
    second.signal(libc::SIGTERM);
    assert_eq!(second.exit(Duration::from_secs(60)).await.code(), Some(0));
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sighup_reloads_a_good_configuration_and_refuses_a_broken_one
);
async fn sighup_reloads_a_good_configuration_and_refuses_a_broken_one(backend: Backend) {
    let (p, sandbox, _ledger) = setup(backend).await;
    let port = free_port();
    let daemon = start(&p, port, false, "daemon");
    let http = reqwest::Client::new();
    let healthy = || async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/healthz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the daemon never answered /healthz"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    healthy().await;
    let wait_for_log = |needle: &'static str| {
        let daemon = &daemon;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while !daemon.log().contains(needle) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no `{needle}` in:\n{}",
                    daemon.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // A broken practice file disables that practice alone (and says why).
    let practice = p.path("config/practices/valley-imaging.toml");
    let good = std::fs::read_to_string(&practice).unwrap();
    std::fs::write(&practice, good.replace("America/Los_Angeles", "Mars/Olympus_Mons")).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for_log("Practice disabled").await;
    assert!(daemon.log().contains("Mars/Olympus_Mons"), "the log says why");
    healthy().await;
    // A broken precert.toml is refused whole; the running one stays.
    let main_config = p.config_path();
    let main_good = std::fs::read_to_string(&main_config).unwrap();
    std::fs::write(
        &main_config,
        main_good.replace("failure_threshold = 5", "failure_threshold = \"many\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for_log("Reload refused; the running configuration stays.").await;
    healthy().await;
    std::fs::write(&main_config, main_good).unwrap();

    std::fs::write(&practice, good).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for_log("Configuration reloaded.").await;
    healthy().await;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit(Duration::from_secs(60)).await.code(), Some(0));
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    sigterm_mid_job_exits_cleanly_within_the_grace_period_and_the_work_resumes_on_the_next_start
);
async fn sigterm_mid_job_exits_cleanly_within_the_grace_period_and_the_work_resumes_on_the_next_start(
    backend: Backend,
) {
    let (p, sandbox, ledger) = setup(backend).await;
    let port = free_port();
    let first = start(&p, port, false, "first");
    // Wait until a submission is under way in the browser.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !sandbox
        .request_log()
        .iter()
        .any(|e| e.path.starts_with("/portal/requests/new"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no submission started:\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.signal(libc::SIGTERM);
    let log = first.log.clone();
    let status = first.exit(precert::daemon::GRACE + Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Stopping: no new jobs") && text.contains("Daemon stopped."),
        "{text}"
    );
    // The job cut by the shutdown was given back unrun: no attempt used,
    // no failure recorded, due at once.
    for practice in ["lakeside-ortho", "valley-imaging"] {
        for j in submit_jobs(&ledger, practice).await {
            if j.state != precert::queue::JobState::Done {
                assert_eq!(j.attempts, 0, "{j:?}\n{text}");
                assert_eq!(j.last_error, None, "{j:?}");
            }
        }
    }
    assert!(
        text.contains("released unrun") || !text.contains("Job failed"),
        "{text}"
    );

    let second = start(&p, port, false, "second");
    until_settled(&ledger, &sandbox, &second, Duration::from_secs(150)).await;
    each_submitted_once(&sandbox);
    second.signal(libc::SIGTERM);
    assert_eq!(second.exit(Duration::from_secs(60)).await.code(), Some(0));
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_pended_pas_request_is_decided_by_the_payers_notification
);
async fn a_pended_pas_request_is_decided_by_the_payers_notification(backend: Backend) {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::on(backend).await;
    p.use_sandbox(&sandbox.base_url());
    // Lakeside's cases go to the sandbox payer through its PAS API; the
    // poll schedule is yearly, so only a notification can bring the answer.
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("[payers.sandbox]").next().unwrap();
    let pas = format!(
        "[payers.sandbox]\nplaybook = \"sandbox-pas\"\nbase_url = \"{}\"\naccount = {{ client_id = \"lakeside-pas\" }}\nsecrets.client_secret = {{ env = \"LAKESIDE_SANDBOX_CLIENT_SECRET\" }}\n\n\
         [schedules]\nsubmit = \"*/2 * * * * *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\n",
        sandbox.base_url()
    );
    std::fs::write(&path, format!("{head}{pas}")).unwrap();
    assert!(
        p.precert(&["check"]).status.success(),
        "{}",
        super::support::stderr(&p.precert(&["check"]))
    );
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();
    // Its public address (here, its listener) is part of the subscription.
    let port = free_port();
    let daemon = start(&p, port, false, "daemon");

    let case = || async { ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while case().await.status != CaseStatus::Pending {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not submitted:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subscription_calls = |method: &'static str| {
        sandbox
            .request_log()
            .iter()
            .filter(|e| e.method == method && e.path.starts_with("/fhir/Subscription"))
            .count()
    };
    assert_eq!(subscription_calls("POST"), 1);
    let reloads = |d: &Daemon| d.log().matches("Configuration reloaded.").count();
    // A reload that changes nothing keeps the subscription.
    daemon.signal(libc::SIGHUP);
    until(&daemon, Duration::from_secs(30), "the first reload", || async {
        reloads(&daemon) == 1
    })
    .await;
    assert_eq!((subscription_calls("POST"), subscription_calls("DELETE")), (1, 0));
    // One that changes lakeside's PAS binding replaces it: the old one is
    // deleted at the payer, a new one registered, and the notification
    // below arrives through the new one.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "account = { client_id = \"lakeside-pas\" }",
            "account = { client_id = \"lakeside-pas\", payer_name = \"Sandbox Health Plan\" }",
        ),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    until(&daemon, Duration::from_secs(30), "the second reload", || async {
        reloads(&daemon) == 2
    })
    .await;
    assert_eq!((subscription_calls("POST"), subscription_calls("DELETE")), (2, 1));
    // The payer's reviewer decides; the sandbox notifies the daemon.
    sandbox.advance_clock(Duration::from_secs(30));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while case().await.status != CaseStatus::Approved {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification handled:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decision = case().await.decision.unwrap();
    assert!(decision.auth_number.is_some(), "{decision:?}");
    assert!(decision.source.starts_with("api:"), "{decision:?}");
    let log = sandbox.request_log();
    assert!(log.iter().any(|e| e.method == "POST" && e.path == "/fhir/Subscription"));
    assert!(
        log.iter().any(|e| e.path == "/fhir/Claim/$inquire"),
        "the answer was read again, not taken from the payload"
    );
    let log = daemon.log();
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit(Duration::from_secs(60)).await.code(), Some(0));
    // Stopping, the daemon leaves the subscription to the cluster (the
    // ledger names it); started again, it serves it without registering
    // another.
    assert_eq!(
        (subscription_calls("POST"), subscription_calls("DELETE")),
        (2, 1),
        "{log}"
    );
    let rows = ledger.subscriptions().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].route, "lakeside-ortho/sandbox");
    let daemon = start(&p, port, false, "daemon-again");
    until(&daemon, Duration::from_secs(30), "the restarted daemon", || async {
        daemon.log().contains("Daemon started.")
    })
    .await;
    assert_eq!((subscription_calls("POST"), subscription_calls("DELETE")), (2, 1));
    assert_eq!(
        ledger.subscriptions().await.unwrap()[0].subscription_id,
        rows[0].subscription_id
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.exit(Duration::from_secs(60)).await.code(), Some(0));
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test]
    a_denial_from_the_payer_reaches_the_supervisors_inbox_through_the_daemon
);
async fn a_denial_from_the_payer_reaches_the_supervisors_inbox_through_the_daemon(backend: Backend) {
    let server = super::smtp::SmtpServer::start();
    let (p, sandbox, ledger) = setup(backend).await;
    p.use_smtp(server.port());
    let port = free_port();
    let daemon = start(&p, port, false, "daemon");
    let denied = ledger.find("valley-imaging", "VI-88120").await.unwrap().unwrap();
    // The daemon submits, polls, records the denial with its reason, and
    // the escalation mail goes out through the sender.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
    let mail = loop {
        let found = server
            .messages()
            .into_iter()
            .find(|m| m.subject.contains("Denied") && m.subject.contains("VI-88120"));
        if let Some(m) = found {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no denial mail; received {:?}\n{}",
            server.messages().iter().map(|m| m.subject.clone()).collect::<Vec<_>>(),
            daemon.log()
        );
        sandbox.advance_clock(Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let case = ledger.get(denied.id).await.unwrap();
    assert_eq!(case.status, CaseStatus::Denied);
    let reason = case.decision.unwrap().denial.unwrap();
    assert_eq!(reason.code.as_deref(), Some("CLIN-06"));
    assert!(mail.defects.is_empty(), "{:?}", mail.defects);
    assert_eq!(mail.content_type, "multipart/alternative");
    assert_eq!(
        mail.to,
        [
            "auth.lead@valley-imaging.example",
            "charge.nurse@valley-imaging.example"
        ]
    );
    let text = mail.text.as_deref().unwrap();
    assert!(text.contains("CLIN-06") && text.contains(&reason.text), "{text}");
    assert!(
        text.contains("****0305") && !mail.raw.contains("SBX100200305"),
        "{text}"
    );
    assert!(!mail.raw.contains("Kowalski"));
    // It leads to the console: the case's page and a signed link to
    // acknowledge (the daemon signs with the ledger's key).
    assert!(
        text.contains("/cases/valley-imaging/VI-88120") && text.contains("/ack/"),
        "{text}"
    );
    // Sent once, recorded as sent.
    let sent: Vec<_> = ledger.outbox(true).await.unwrap();
    let entry = sent
        .iter()
        .find(|m| m.message_id == mail.message_id)
        .unwrap_or_else(|| {
            panic!(
                "{} not in {:?}",
                mail.message_id,
                sent.iter().map(|m| &m.message_id).collect::<Vec<_>>()
            )
        });
    assert_eq!(entry.state, precert::store::OutboxState::Sent);
    assert_eq!(
        server
            .messages()
            .iter()
            .filter(|m| m.message_id == mail.message_id)
            .count(),
        1
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("precert_mail_total{result=\"sent\"}"), "{metrics}");
    assert!(
        metrics.contains("precert_outbox_mails{state=\"failed\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("precert_escalations_active "), "{metrics}");
    // The daemon's own case page (no sign-in) answers, without patient
    // identifiers.
    let page = reqwest::get(format!("http://127.0.0.1:{port}/cases/valley-imaging/VI-88120"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("denied") && page.contains("CLIN-06"), "{page}");
    assert!(!page.contains("SBX100200305") && !page.contains("Kowalski"), "{page}");
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(40)).await.success());
    sandbox.shutdown().await;
}

both_backends!(
    #[tokio::test]
    with_the_smtp_server_down_the_daemon_keeps_mail_in_the_outbox_and_delivers_it_once_it_returns
);
async fn with_the_smtp_server_down_the_daemon_keeps_mail_in_the_outbox_and_delivers_it_once_it_returns(
    backend: Backend,
) {
    let mut server = super::smtp::SmtpServer::start();
    let p = Project::on(backend).await;
    p.use_smtp(server.port());
    // No job fires during the test: only the mail sender works.
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let head = text.split("[schedules]").next().unwrap().to_owned();
        let yearly = "[schedules]\nsubmit = \"0 0 1 1 *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\nescalations = \"0 0 1 1 *\"\ndigest = \"0 0 1 1 *\"\n";
        // The practice's [escalations] tables follow [schedules] in the
        // sample; keep them.
        let tail = text
            .split("[schedules]")
            .nth(1)
            .and_then(|t| t.find("\n[").map(|i| t[i..].to_owned()))
            .unwrap_or_default();
        std::fs::write(&path, format!("{head}{yearly}{tail}")).unwrap();
    }
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();
    server.stop();
    let daemon = start(&p, free_port(), false, "daemon");

    // A person hands a case to operations from the command line; the mail
    // is queued with the change, and the daemon's sender picks it up.
    let out = p.precert(&[
        "cases",
        "set-status",
        "lakeside-ortho/LO-2026-1002",
        "needs_attention",
        "--note",
        "wrong service location on the request",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let waiting = ledger.outbox(false).await.unwrap();
        if let Some(m) = waiting.iter().find(|m| m.attempts >= 1 && m.last_error.is_some()) {
            break m.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sender did not try: {waiting:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.state, precert::store::OutboxState::Pending, "kept, not given up");

    // The server comes back: the mail arrives at the next retry, once.
    server.restart();
    let got = server.wait_for(1, Duration::from_secs(90));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, failed.message_id);
    assert_eq!(got[0].to, ["precert.ops@lakeside-ortho.example"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ledger.outbox(false).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not recorded as sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = ledger.outbox(true).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, precert::store::OutboxState::Sent);
    assert!(all[0].attempts >= 2, "{:?}", all[0]);
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(40)).await.success());
    assert_eq!(server.messages().len(), 1, "exactly once");
}

/// Waits (bounded) until `check` holds, polling the ledger; the daemon's
/// log on failure.
pub(super) async fn until<F, Fut>(daemon: &Daemon, limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen in {limit:?}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn submit_jobs(ledger: &Ledger, practice: &str) -> Vec<precert::queue::JobRecord> {
    let queue = precert::queue::Queue::new(ledger.clone());
    queue
        .list(Some(practice))
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == precert::config::Job::Submit)
        .collect()
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_job_that_cannot_start_a_browser_is_failed_counted_and_pauses_the_payer
);
/// Issue 11: an engine that cannot start a browser fails the job (it is not
/// "done"), counts for the payer's breaker, and the breaker's pause reaches
/// the operations contacts as an escalation.
async fn a_job_that_cannot_start_a_browser_is_failed_counted_and_pauses_the_payer(backend: Backend) {
    let (p, _sandbox, ledger) = setup(backend).await;
    let port = free_port();
    let d = start_with(
        &p,
        port,
        false,
        "nobrowser",
        &[
            ("PRECERT__WEBDRIVER__CHROMEDRIVER", "/nonexistent/chromedriver"),
            ("PRECERT__LIMITS__FAILURE_THRESHOLD", "2"),
        ],
        &[],
    );
    until(&d, Duration::from_secs(60), "a failed submit job", || async {
        submit_jobs(&ledger, "lakeside-ortho")
            .await
            .iter()
            .any(|j| j.attempts >= 1 && j.last_error.as_deref().is_some_and(|e| e.contains("chromedriver")))
    })
    .await;
    until(&d, Duration::from_secs(60), "the payer_paused escalation", || async {
        ledger
            .escalations(Some("lakeside-ortho"), false)
            .await
            .unwrap()
            .iter()
            .any(|e| e.reason.as_str() == "payer_paused")
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("precert_jobs_total")
            && l.contains("kind=\"submit\"")
            && l.contains("result=\"retry\"")),
        "{metrics}"
    );
    // Not ready while no browser can start (alive, though: /healthz).
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("browser") && why.contains("chromedriver"), "{why}");
    let alive = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await.unwrap();
    assert_eq!(alive.status().as_u16(), 200);
    let log = d.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("Job done.") && l.contains("kind=\"submit\"") && l.contains("payer=\"sandbox\"")),
        "a failed submit is never 'done':\n{log}"
    );
    let cases = ledger.list(&CaseFilter::default()).await.unwrap();
    assert!(
        cases.iter().all(|c| c.status != CaseStatus::Pending),
        "nothing was submitted"
    );
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(40)).await.success());
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_throttled_submission_waits_the_payers_retry_after
);
/// Issue 11: a payer's 429 with `Retry-After` puts the job's next try that
/// far out.
async fn a_throttled_submission_waits_the_payers_retry_after(backend: Backend) {
    let (p, sandbox, ledger) = setup(backend).await;
    // lakeside's sandbox cases go through the PAS API.
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let from = text.find("[payers.sandbox]\n").unwrap();
    let to = text.find("[payers.sandbox-pas]").unwrap();
    let binding = format!(
        "[payers.sandbox]\nplaybook = \"sandbox-pas\"\nbase_url = \"{}\"\naccount = {{ client_id = \"lakeside-pas\" }}\n\
         secrets.client_secret = {{ env = \"LAKESIDE_SANDBOX_CLIENT_SECRET\" }}\n\n",
        sandbox.base_url()
    );
    std::fs::write(&path, format!("{}{binding}{}", &text[..from], &text[to..])).unwrap();
    sandbox
        .set_hazards(precert_sandbox::HazardsPatch {
            api_throttle_next: Some(1000),
            api_retry_after_seconds: Some(600),
            ..Default::default()
        })
        .unwrap();
    let d = start(&p, free_port(), false, "throttled");
    until(&d, Duration::from_secs(60), "a throttled submit job", || async {
        submit_jobs(&ledger, "lakeside-ortho")
            .await
            .iter()
            .any(|j| j.attempts >= 1 && j.last_error.is_some())
    })
    .await;
    let job = submit_jobs(&ledger, "lakeside-ortho")
        .await
        .into_iter()
        .find(|j| j.attempts >= 1 && j.last_error.is_some());
    let job = job.unwrap();
    let wait = job.run_at - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::seconds(500),
        "the next try is {wait} away, not the payer's 600 s: {job:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(40)).await.success());
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_practice_with_an_unreadable_secret_is_disabled_while_the_others_run
);
/// Issue 11: a practice whose secret cannot be read is disabled alone; the
/// other practice's cases are submitted by the same daemon.
async fn a_practice_with_an_unreadable_secret_is_disabled_while_the_others_run(backend: Backend) {
    let (p, sandbox, ledger) = setup(backend).await;
    let port = free_port();
    let d = start_with(&p, port, false, "isolated", &[], &["VALLEY_SANDBOX_PASSWORD"]);
    until(&d, Duration::from_secs(90), "lakeside's cases submitted", || async {
        let cases = ledger
            .list(&CaseFilter {
                practice: Some("lakeside-ortho".into()),
                payer: Some("sandbox".into()),
                status: None,
            })
            .await
            .unwrap();
        cases.iter().all(|c| c.payer_ref.is_some())
    })
    .await;
    let log = d.log();
    assert!(log.contains("Practice disabled"), "{log}");
    assert!(log.contains("valley-imaging"), "{log}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("precert_practices_disabled 1\n"), "{metrics}");
    assert!(
        metrics.contains("precert_practice_disabled{practice=\"valley-imaging\"} 1"),
        "{metrics}"
    );
    let valley = ledger
        .list(&CaseFilter {
            practice: Some("valley-imaging".into()),
            payer: None,
            status: None,
        })
        .await
        .unwrap();
    assert!(
        valley.iter().all(|c| c.payer_ref.is_none()),
        "a disabled practice submits nothing"
    );
    assert!(sandbox.submissions().iter().all(|s| s.provider_npi != "1679576722"));
    // Operations of the disabled practice were told, once.
    let told = ledger.escalations(Some("valley-imaging"), false).await.unwrap();
    assert_eq!(
        told.iter().filter(|e| e.reason.as_str() == "practice_disabled").count(),
        1,
        "{told:?}"
    );
    let mail = ledger.outbox(true).await.unwrap();
    assert!(
        mail.iter()
            .any(|m| m.recipients == ["it.ops@valley-imaging.example"] && m.subject.contains("valley-imaging")),
        "{mail:?}"
    );
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(40)).await.success());
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_reload_applies_new_limits
);
/// Issue 11: SIGHUP with new `[limits]` applies them (and keeps what runs).
async fn a_reload_applies_new_limits(backend: Backend) {
    let (p, _sandbox, ledger) = setup(backend).await;
    let config = p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    // One start per 100 minutes: one practice's submit job runs, the
    // other's waits.
    let slow = text
        .replace("starts_per_minute = 6", "starts_per_minute = 0.01")
        .replace("burst = 3", "burst = 1");
    assert_ne!(slow, text, "the sample precert.toml has a [limits] section");
    std::fs::write(&config, &slow).unwrap();
    let d = start_with(
        &p,
        free_port(),
        false,
        "limits",
        &[],
        &["PRECERT__LIMITS__STARTS_PER_MINUTE", "PRECERT__LIMITS__BURST"],
    );
    let submitted = |practice: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger
                .list(&CaseFilter {
                    practice: Some(practice.into()),
                    payer: Some("sandbox".into()),
                    status: None,
                })
                .await
                .unwrap()
                .iter()
                .filter(|c| c.payer_ref.is_some())
                .count()
        }
    };
    until(&d, Duration::from_secs(90), "one practice submitted", || async {
        submitted("lakeside-ortho").await + submitted("valley-imaging").await > 0
    })
    .await;
    let held = if submitted("lakeside-ortho").await == 0 {
        "lakeside-ortho"
    } else {
        "valley-imaging"
    };
    // Absence takes time to show: over a few scheduler ticks the other
    // practice's submit job is not even leased (its payer is blocked).
    let watch = tokio::time::Instant::now() + Duration::from_secs(6);
    while tokio::time::Instant::now() < watch {
        assert_eq!(submitted(held).await, 0, "the limits let {held} through:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    std::fs::write(
        &config,
        slow.replace("starts_per_minute = 0.01", "starts_per_minute = 600")
            .replace("burst = 1", "burst = 50"),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    until(
        &d,
        Duration::from_secs(120),
        "the held-back practice submitted after the reload",
        || async { submitted(held).await > 0 },
    )
    .await;
    assert!(d.log().contains("Configuration reloaded."), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(60)).await.success());
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_payer_key_bound_to_another_playbook_id_shares_its_breaker_and_escalations
);
/// Issue 11: a practice's payer key that differs from its playbook's id.
/// The breaker is the playbook's: failures of either practice open it, the
/// paused-payer escalation opens for each practice under its own key, and it
/// resolves when the portal works again.
async fn a_payer_key_bound_to_another_playbook_id_shares_its_breaker_and_escalations(backend: Backend) {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::on(backend).await;
    p.use_sandbox(&sandbox.base_url());
    fast_schedules(&p);
    // valley's key for the sandbox playbook is `sbx`.
    let path = p.path("config/practices/valley-imaging.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[payers.sandbox]\n", "[payers.sbx]\nplaybook = \"sandbox\"\n"),
    )
    .unwrap();
    let cases = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let cases: String = cases
        .lines()
        .map(|l| {
            if l.starts_with("valley-imaging,") {
                l.replacen(",sandbox,", ",sbx,", 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    p.write("samples/cases-sbx.csv", &(cases + "\n"));
    let out = p.precert(&["cases", "import", "samples/cases-sbx.csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();

    // First the cap: the sandbox playbook allows one session at once, and
    // the daemon has two workers. lakeside's `sandbox` jobs and valley's
    // `sbx` jobs share that one slot, so no two submit jobs ever run at
    // once: their spans on the timeline never overlap.
    let d = start(&p, free_port(), false, "cap");
    until(
        &d,
        Duration::from_secs(180),
        "every case of both practices submitted",
        || async { all_submitted(&ledger).await },
    )
    .await;
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(60)).await.success());
    let spans = submit_job_spans(&ledger).await;
    let practices: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(practices.len(), 2, "both practices submitted: {spans:?}");
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            assert!(
                a.2 < b.1 || b.2 < a.1,
                "two jobs of one playbook ran at once despite max_sessions = 1: {a:?} and {b:?}"
            );
        }
    }

    // Then the breaker, shared by both keys.
    sandbox
        .set_hazards(precert_sandbox::HazardsPatch {
            maintenance: Some(true),
            ..Default::default()
        })
        .unwrap();
    // The poll jobs of both keys now meet the maintenance page.
    let d = start_with(
        &p,
        free_port(),
        false,
        "keys",
        &[
            ("PRECERT__LIMITS__FAILURE_THRESHOLD", "2"),
            ("PRECERT__LIMITS__COOL_DOWN_SECONDS", "2"),
        ],
        &[],
    );
    let paused = |practice: &'static str, key: &'static str, state: &'static str| {
        let ledger = ledger.clone();
        async move {
            ledger.escalations(Some(practice), true).await.unwrap().iter().any(|e| {
                e.reason.as_str() == "payer_paused" && e.payer.as_deref() == Some(key) && e.state.as_str() == state
            })
        }
    };
    until(
        &d,
        Duration::from_secs(120),
        "payer_paused for both practices' keys",
        || async { paused("lakeside-ortho", "sandbox", "open").await && paused("valley-imaging", "sbx", "open").await },
    )
    .await;
    sandbox
        .set_hazards(precert_sandbox::HazardsPatch {
            maintenance: Some(false),
            ..Default::default()
        })
        .unwrap();
    until(
        &d,
        Duration::from_secs(120),
        "the pause resolved when the portal works again",
        || async { paused("valley-imaging", "sbx", "resolved").await },
    )
    .await;
    d.signal(libc::SIGTERM);
    assert!(d.exit(Duration::from_secs(60)).await.success());
    sandbox.shutdown().await;
}

/// Whether every case that can be submitted has been.
async fn all_submitted(ledger: &Ledger) -> bool {
    let cases = ledger.list(&CaseFilter::default()).await.unwrap();
    !cases.is_empty()
        && cases
            .iter()
            .filter(|c| matches!(c.status, CaseStatus::Ready | CaseStatus::Submitting))
            .count()
            == 0
}

/// Each submit job's span on the timeline: (practice, first event, last
/// event), from the events its runs wrote.
async fn submit_job_spans(
    ledger: &Ledger,
) -> Vec<(String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let mut spans: std::collections::BTreeMap<
        String,
        (String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    > = std::collections::BTreeMap::new();
    for c in ledger.list(&CaseFilter::default()).await.unwrap() {
        for e in ledger.events(c.id).await.unwrap() {
            if !e.actor.starts_with("job:submit#") {
                continue;
            }
            let span = spans
                .entry(e.actor.clone())
                .or_insert((c.data.practice_id.clone(), e.at, e.at));
            span.1 = span.1.min(e.at);
            span.2 = span.2.max(e.at);
        }
    }
    spans.into_values().collect()
}
