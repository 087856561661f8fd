//! chromedriver supervision: clear errors before anything starts, and
//! browser profiles that live in the data directory and go with the driver.

use std::os::unix::fs::PermissionsExt;

use precert::browser::{BrowserError, Driver};
use precert::config::WebDriverSettings;

fn fake(dir: &std::path::Path, name: &str, version_line: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn settings(chromedriver: std::path::PathBuf, chromium: std::path::PathBuf) -> WebDriverSettings {
    WebDriverSettings {
        chromedriver,
        chromium,
        remote_url: None,
        max_sessions: 1,
        cluster_sessions: None,
        headless: true,
        idle_close: std::time::Duration::from_secs(300),
    }
}

#[tokio::test]
async fn a_chromedriver_built_for_another_chromium_is_refused_with_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    let driver = fake(dir.path(), "chromedriver", "ChromeDriver 155.0.7000.1 (abc)");
    let browser = fake(dir.path(), "chromium", "Chromium 156.0.8078.73 built on Debian");
    let err = Driver::start(&settings(driver, browser), dir.path())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, BrowserError::VersionMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("155.0.7000.1") && msg.contains("156.0.8078.73"), "{msg}");
}

#[tokio::test]
async fn a_missing_chromedriver_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let browser = fake(dir.path(), "chromium", "Chromium 156.0.8078.73");
    let err = Driver::start(&settings(dir.path().join("nowhere"), browser), dir.path())
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("chromedriver not found") && msg.contains("apt-get install -y chromium chromium-driver"),
        "{msg}"
    );
}

fn real() -> WebDriverSettings {
    settings("/usr/bin/chromedriver".into(), "/usr/bin/chromium".into())
}

/// The running Chromium processes of a group, with their command line and
/// environment.
pub(super) fn chromium(pgid: i32) -> Vec<(String, String)> {
    super::reaper::in_group(pgid)
        .into_iter()
        .filter(|p| p.comm == "chromium")
        .filter_map(|p| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).ok()?;
            let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).ok()?;
            Some((
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
                String::from_utf8_lossy(&environ).replace('\0', " "),
            ))
        })
        .collect()
}

/// Starts a driver in `data`, opens a page, and checks where Chromium keeps
/// its profile and temporary files: all inside the driver's folder under
/// `DATA/run/profiles`, which is the owner's alone.
async fn driver_with_a_page(data: &std::path::Path) -> (Driver, fantoccini::Client, std::path::PathBuf, i32) {
    let driver = Driver::start(&real(), data).await.unwrap();
    let root = driver.profile_root().unwrap().to_owned();
    assert!(root.starts_with(data.join("run/profiles")), "{}", root.display());
    assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700);
    let client = driver.session().await.unwrap();
    client.goto("data:text/html,<p>hello</p>").await.unwrap();
    let pgid = driver.process_group().unwrap();
    let procs = chromium(pgid);
    assert!(!procs.is_empty(), "Chromium runs in the driver's group");
    for (cmdline, _) in &procs {
        if let Some(dir) = cmdline.split(' ').find_map(|a| a.strip_prefix("--user-data-dir=")) {
            assert!(dir.starts_with(&*root.to_string_lossy()), "{cmdline}");
        }
    }
    // The browser process (the others overwrite their environment with
    // their title): its profile, and its temporary files, in the folder.
    let (cmdline, environ) = procs
        .iter()
        .find(|(c, _)| !c.contains("--type="))
        .expect("Chromium's browser process");
    assert!(
        cmdline.contains("--user-data-dir="),
        "precert sets the profile folder: {cmdline}"
    );
    let tmpdir = format!("TMPDIR={}/tmp", root.display());
    assert!(environ.split(' ').any(|v| v == tmpdir), "{environ}");
    (driver, client, root, pgid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_browsers_and_removes_their_profiles() {
    let data = tempfile::tempdir().unwrap();
    let (driver, client, root, pgid) = driver_with_a_page(data.path()).await;
    let _ = client.close().await;
    driver.shutdown().await;
    assert!(!root.exists(), "the profile folder is removed");
    assert_eq!(
        super::reaper::in_group(pgid).len(),
        0,
        "no process of the group is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_driver_ends_its_browsers_and_removes_their_profiles() {
    let data = tempfile::tempdir().unwrap();
    let (driver, _client, root, pgid) = driver_with_a_page(data.path()).await;
    // The session is still open: Chromium is writing its profile.
    drop(driver);
    assert!(!root.exists(), "the profile folder is removed");
    assert_eq!(
        super::reaper::in_group(pgid).len(),
        0,
        "no process of the group is left"
    );
}

/// A grid node: chromedriver started apart from precert, in a process group
/// of its own (ended with the test), logging the commands it receives.
pub(super) struct GridNode {
    child: std::process::Child,
    pub(super) url: String,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl GridNode {
    pub(super) async fn start() -> GridNode {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        let port = super::daemon::free_port();
        let child = std::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .process_group(0)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let ready = match http.get(&status).send().await {
                Ok(r) => r.text().await.unwrap_or_default().contains("\"ready\":true"),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the grid node did not start");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        GridNode {
            child,
            url,
            log,
            _dir: dir,
        }
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The most sessions the node had open at once, and how many it opened,
    /// from its log (one process, lines in order).
    pub(super) fn sessions(&self) -> (usize, usize) {
        let (mut open, mut most, mut opened) = (0usize, 0usize, 0usize);
        for line in self.log().lines() {
            if line.contains("RESPONSE InitSession") && !line.contains("ERROR") {
                open += 1;
                opened += 1;
                most = most.max(open);
            } else if line.contains("RESPONSE Quit") {
                open = open.saturating_sub(1);
            }
        }
        (most, opened)
    }
}

impl Drop for GridNode {
    fn drop(&mut self) {
        // SAFETY: ending the process group this test started.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Issue 12: `webdriver.remote_url` drives a WebDriver that precert did not
/// start — a chromedriver standing in for a grid node. precert starts no
/// chromedriver or Chromium of its own (its own chromedriver path does not
/// even exist here), the node opens the session and ends it, and the
/// submission goes through it to the payer once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_webdriver_node_runs_the_session_and_precert_starts_no_browser_of_its_own() {
    use precert::case::CaseStatus;
    let sandbox = precert_sandbox::Sandbox::start(precert_sandbox::SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = super::support::Project::new();
    p.use_sandbox(&sandbox.base_url());
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let node = GridNode::start().await;

    let mut cmd = p.command(&["run", "sandbox", "submit", "--case", "LO-2026-1001"]);
    cmd.env("PRECERT__WEBDRIVER__REMOTE_URL", &node.url)
        .env("PRECERT__WEBDRIVER__CHROMEDRIVER", "/nonexistent/chromedriver");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", super::support::stderr(&out));

    let ledger = p.ledger().await;
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    assert_eq!(case.status, CaseStatus::Pending);
    assert_eq!(sandbox.submissions().len(), 1);
    let log = node.log();
    assert_eq!(log.matches("COMMAND InitSession").count(), 1, "{log}");
    assert_eq!(
        log.matches("COMMAND Quit").count(),
        1,
        "the session was not ended:\n{log}"
    );
    // Nothing precert-made was left on this machine: no profile folders.
    let profiles = p.path("data/run/profiles");
    let left: Vec<_> = std::fs::read_dir(&profiles)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    sandbox.shutdown().await;
}
