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
        self.sandbox
            .request_log()
            .iter()
            .filter(|e| e.method == "POST" && e.path == "/portal/login")
            .count()
    }

    /// Chromium browser processes (one per session) in chromedriver's
    /// process group.
    async fn browsers(&self) -> usize {
        let pgid = self.engine.driver_process_group().await.expect("chromedriver runs");
        super::browser::chromium(pgid)
            .iter()
            .filter(|(cmdline, _)| !cmdline.contains("--type="))
            .count()
    }

    /// Waits (bounded) until the browser processes number `n`: a closed
    /// session's Chromium takes a moment to exit.
    async fn until_browsers(&self, n: usize) {
        let pgid = self.engine.driver_process_group().await.expect("chromedriver runs");
        let count = || {
            super::browser::chromium(pgid)
                .iter()
                .filter(|(cmdline, _)| !cmdline.contains("--type="))
                .count()
        };
        super::reaper::until(
            Duration::from_secs(10),
            &format!("{n} Chromium browser processes"),
            || count() == n,
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

    tokio::time::timeout(Duration::from_secs(10), open.wait_for(|&n| n == 0))
        .await
        .expect("the idle session is closed within 10 s")
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
