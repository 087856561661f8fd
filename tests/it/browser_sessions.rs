//! Browser sessions are bounded by `webdriver.max_sessions` while open, not
//! only while in use, and idle ones are closed after
//! `webdriver.idle_close_secs` without a job to do it (issue 19). Real
//! chromedriver and headless Chromium on the sandbox payer; the browsers
//! are counted in chromedriver's process group.

use std::sync::Arc;
use std::time::Duration;

use precert::case::CaseStatus;
use precert::engine::Engine;
use precert::playbook::{self, Action};
use precert::store::{Actor, Ledger};
use precert_sandbox::{Sandbox, SandboxConfig, SandboxHandle};

use super::support::{stderr, Project};

struct World {
    _p: Project,
    sandbox: SandboxHandle,
    ledger: Ledger,
    engine: Engine,
}

/// The sample project on a sandbox payer, with `[webdriver]` settings
/// replaced by `webdriver` (TOML lines).
async fn world(webdriver: &str) -> World {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    assert!(
        text.contains("\nmax_sessions = 2\n"),
        "config/precert.toml sets max_sessions"
    );
    p.write(
        "config/precert.toml",
        &text.replacen("\nmax_sessions = 2\n", &format!("\n{webdriver}\n"), 1),
    );
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let settings = p.settings_with_secrets();
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let ledger = Ledger::open(&settings.database_url).await.unwrap();
    let engine = Engine::new(Arc::new(settings), ledger.clone(), playbooks);
    World {
        _p: p,
        sandbox,
        ledger,
        engine,
    }
}

impl World {
    /// Submits a case through the portal; it must go through.
    async fn submit(&self, case_ref: &str) {
        let id = self.ledger.find_by_ref(case_ref).await.unwrap().pop().unwrap().id;
        let r = self
            .engine
            .run(Action::Submit, id, &Actor::job("test", 1))
            .await
            .unwrap();
        assert!(r.failure.is_none(), "{case_ref}: {:?}", r.failure);
        // Sent: the sandbox answers some requests at once (a decision, a
        // pend), others are pending.
        assert!(
            !matches!(
                r.status,
                CaseStatus::Ready | CaseStatus::Submitting | CaseStatus::NeedsAttention
            ),
            "{case_ref}: {}",
            r.status
        );
        let case = self.ledger.get(id).await.unwrap();
        assert!(
            case.payer_ref.is_some(),
            "{case_ref}: the portal's reference is recorded"
        );
    }

    fn logins(&self) -> usize {
        logins(&self.sandbox)
    }

    /// Chromium browser processes (one per session) in chromedriver's
    /// process group.
    async fn browsers(&self) -> usize {
        browsers_in(self.engine.driver_process_group().await.expect("chromedriver runs"))
    }

    /// Waits (bounded) until the browser processes number `n`: a closed
    /// session's Chromium takes a moment to exit.
    async fn until_browsers(&self, n: usize) {
        let pgid = self.engine.driver_process_group().await.expect("chromedriver runs");
        super::reaper::until(
            Duration::from_secs(30),
            &format!("{n} Chromium browser processes"),
            || browsers_in(pgid) == n,
        )
        .await;
    }

    async fn finish(self) {
        self.engine.shutdown().await;
        self.ledger.close().await;
        self.sandbox.shutdown().await;
    }
}

/// Two practices' accounts at one payer, `max_sessions = 1`: the second
/// account's job closes the first one's idle session before it opens its
/// own, so one browser is open after each job, never two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_with_max_sessions_1_keep_one_browser_open() {
    let w = world("max_sessions = 1").await;
    let mut most = w.engine.watch_sessions_open();
    let seen = tokio::spawn(async move {
        let mut high = 0;
        while most.changed().await.is_ok() {
            high = high.max(*most.borrow_and_update());
        }
        high
    });

    w.submit("LO-2026-1001").await;
    assert_eq!(w.engine.sessions_open().await, 1);
    w.until_browsers(1).await;

    w.submit("VI-88120").await;
    assert_eq!(
        w.engine.sessions_open().await,
        1,
        "the other account's session was closed"
    );
    w.until_browsers(1).await;
    assert_eq!(w.logins(), 2);

    // Back to the first account: its session was closed, so it logs in
    // again, and still one browser is open.
    w.submit("LO-2026-1002").await;
    assert_eq!(w.engine.sessions_open().await, 1);
    assert_eq!(w.browsers().await, 1);
    assert_eq!(w.logins(), 3);

    // The same account again reuses its idle, logged-in session.
    w.submit("LO-2026-1003").await;
    assert_eq!(w.logins(), 3, "the account's idle session is reused");
    assert_eq!(w.browsers().await, 1);

    w.finish().await;
    assert_eq!(seen.await.unwrap(), 1, "never more than one session open");
}

/// `idle_close_secs = 1`: the idle session is closed with no job running,
/// chromedriver stays, and the next job opens a new session, logs in and
/// goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_without_a_job_and_the_next_job_opens_a_new_one() {
    let w = world("max_sessions = 2\nidle_close_secs = 1").await;
    let mut open = w.engine.watch_sessions_open();
    w.submit("LO-2026-1001").await;
    assert_eq!(w.logins(), 1);

    tokio::time::timeout(Duration::from_secs(30), open.wait_for(|&n| n == 0))
        .await
        .expect("the idle session is closed within 30 s")
        .unwrap();
    w.until_browsers(0).await;
    let pgid = w.engine.driver_process_group().await;
    assert!(pgid.is_some(), "chromedriver stays for the next session");

    w.submit("LO-2026-1002").await;
    assert_eq!(w.logins(), 2, "a new session logs in");
    assert_eq!(w.engine.driver_process_group().await, pgid, "the same chromedriver");
    w.finish().await;
}

#[test]
fn idle_close_secs_is_checked_and_defaults_to_five_minutes() {
    let p = Project::new();
    assert_eq!(p.settings().webdriver.idle_close, Duration::from_secs(300));
    let out = p
        .command(&["check"])
        .env("PRECERT__WEBDRIVER__IDLE_CLOSE_SECS", "100000")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("precert.toml: webdriver.idle_close_secs: 100000 is more than 86400"),
        "{err}"
    );
    let out = p
        .command(&["check"])
        .env("PRECERT__WEBDRIVER__IDLE_CLOSE_SECS", "-1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("webdriver.idle_close_secs: invalid type"), "{err}");
}

/// Chromium browser processes (one per session) in a process group.
fn browsers_in(pgid: i32) -> usize {
    super::browser::chromium(pgid)
        .iter()
        .filter(|(cmdline, _)| !cmdline.contains("--type="))
        .count()
}

/// Chromium browser processes (one per session) with their profile in the
/// project's data directory.
fn browsers_of(p: &Project) -> usize {
    let profiles = p.path("data/run/profiles").display().to_string();
    super::reaper::processes()
        .into_iter()
        .filter(|proc| proc.comm == "chromium")
        .filter(|proc| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", proc.pid)).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(&format!("--user-data-dir={profiles}")) && !cmdline.contains("--type=")
        })
        .count()
}

/// `idle_close_secs = 0` in the daemon: an account's sessions are closed
/// when its job ends, so once the submissions are done no browser is left
/// while the daemon runs on (with the default, each account's stays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_idle_close_secs_0_the_daemon_keeps_no_browser_between_jobs() {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let head = text.split("[schedules]").next().unwrap();
        std::fs::write(&path, format!("{head}[schedules]\nsubmit = \"*/2 * * * * *\"\n")).unwrap();
    }
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let ledger = Ledger::open(&p.settings().database_url).await.unwrap();
    let port = super::daemon::free_port();
    let daemon = super::daemon::start_with(
        &p,
        port,
        false,
        "daemon",
        &[("PRECERT__WEBDRIVER__IDLE_CLOSE_SECS", "0")],
        &[],
    );
    super::daemon::until(&daemon, Duration::from_secs(150), "every ready case submitted", || {
        let ledger = ledger.clone();
        async move {
            let cases = ledger.list(&Default::default()).await.unwrap();
            cases.iter().filter(|c| c.payer_ref.is_some()).count() >= 2
                && !cases
                    .iter()
                    .any(|c| matches!(c.status, CaseStatus::Ready | CaseStatus::Submitting))
        }
    })
    .await;
    assert!(logins(&sandbox) >= 2, "both accounts logged in");
    super::reaper::until(Duration::from_secs(30), "no browser left between jobs", || {
        browsers_of(&p) == 0
    })
    .await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.exit(Duration::from_secs(40)).await.success());
    ledger.close().await;
    sandbox.shutdown().await;
}

/// Logins the portal received, from either account.
fn logins(sandbox: &SandboxHandle) -> usize {
    sandbox
        .request_log()
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/portal/login")
        .count()
}
