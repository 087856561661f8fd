//! The only module that starts browsers: chromedriver spawned and
//! supervised by precert (or a remote WebDriver), and WebDriver sessions on
//! it.
//!
//! chromedriver runs in its own process group, so one `kill(-pgid)` ends it
//! and every Chromium it started. Each group is also written to
//! `DATA/run/`, so that after a crash of precert itself the next start kills
//! what the dead process left behind: no orphaned browsers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::WebDriverSettings;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{what} not found at {}: install it (apt-get install -y chromium chromium-driver) or set webdriver.{key}", path.display())]
    Missing {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
    },
    #[error("chromedriver {driver} does not match Chromium {browser}: their major versions must be equal (install the chromedriver built for this Chromium)")]
    VersionMismatch { driver: String, browser: String },
    #[error("cannot start chromedriver: {0}")]
    Spawn(std::io::Error),
    #[error("chromedriver did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("cannot open a browser session: {0}")]
    Session(String),
}

/// A running chromedriver (or a remote WebDriver's address).
pub struct Driver {
    url: String,
    child: Option<tokio::process::Child>,
    pidfile: Option<PathBuf>,
    chromium: PathBuf,
    headless: bool,
    profiles: tempfile::TempDir,
}

/// `Name 156.0.8078.73 (…)` → `156.0.8078.73`.
fn version_of(output: &str) -> Option<String> {
    output
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_owned)
}

fn major(v: &str) -> &str {
    v.split('.').next().unwrap_or(v)
}

async fn version(bin: &Path) -> Option<String> {
    let out = tokio::process::Command::new(bin).arg("--version").output().await.ok()?;
    version_of(&String::from_utf8_lossy(&out.stdout))
}

/// Kills process groups a crashed precert left behind.
fn reap_stale(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pgid) = name.strip_prefix("chromedriver-").and_then(|s| s.strip_suffix(".pgid")) else {
            continue;
        };
        let Ok(pgid) = pgid.parse::<i32>() else { continue };
        let owner: Option<i32> = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // Only when the precert that wrote it is gone (not a sibling CLI).
        let owner_alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !owner_alive {
            // SAFETY: kill(2) with a negative pid signals a process group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = std::fs::remove_file(e.path());
            tracing::warn!(pgid, "Killed browsers left by an earlier precert process.");
        }
    }
}

/// Asks chromedriver's `/status` once. chromedriver keeps connections
/// open, so the answer is read until the JSON says whether it is ready.
async fn status_ready(port: u16) -> std::io::Result<bool> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET /status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut body = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        body.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&body);
        if text.contains("\"ready\":true") {
            return Ok(true);
        }
        if text.contains("\"ready\":false") {
            return Ok(false);
        }
    }
}

impl Driver {
    /// Starts chromedriver (or uses `remote_url`), checking versions first.
    pub async fn start(settings: &WebDriverSettings, data_dir: &Path) -> Result<Driver, BrowserError> {
        let profiles = tempfile::Builder::new()
            .prefix("precert-browser-")
            .tempdir()
            .map_err(BrowserError::Spawn)?;
        if let Some(url) = &settings.remote_url {
            return Ok(Driver {
                url: url.clone(),
                child: None,
                pidfile: None,
                chromium: settings.chromium.clone(),
                headless: settings.headless,
                profiles,
            });
        }
        for (what, key, path) in [
            ("chromedriver", "chromedriver", &settings.chromedriver),
            ("Chromium", "chromium", &settings.chromium),
        ] {
            if !path.is_file() {
                return Err(BrowserError::Missing {
                    what,
                    key,
                    path: path.clone(),
                });
            }
        }
        if let (Some(d), Some(b)) = (version(&settings.chromedriver).await, version(&settings.chromium).await) {
            if major(&d) != major(&b) {
                return Err(BrowserError::VersionMismatch { driver: d, browser: b });
            }
        }
        let run_dir = data_dir.join("run");
        let _ = crate::store::private_dir(&run_dir);
        reap_stale(&run_dir);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BrowserError::Spawn)?
            .port();
        let mut cmd = tokio::process::Command::new(&settings.chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(BrowserError::Spawn)?;
        let pgid = child.id().map(|p| p as i32);
        let pidfile = pgid.map(|g| run_dir.join(format!("chromedriver-{g}.pgid")));
        if let Some(p) = &pidfile {
            let _ = std::fs::write(p, std::process::id().to_string());
        }
        let driver = Driver {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            pidfile,
            chromium: settings.chromium.clone(),
            headless: settings.headless,
            profiles,
        };
        driver.wait_ready(port, Duration::from_secs(20)).await?;
        tracing::debug!(port, "chromedriver is ready.");
        Ok(driver)
    }

    /// Polls `/status` until chromedriver says it is ready.
    async fn wait_ready(&self, port: u16, limit: Duration) -> Result<(), BrowserError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(2), status_ready(port)).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BrowserError::NotReady(limit));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process group of chromedriver and its browsers.
    pub fn process_group(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| c.id()).map(|p| p as i32)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new browser session with its own profile and download folder.
    pub async fn session(&self) -> Result<Client, BrowserError> {
        let profile = tempfile::Builder::new()
            .prefix("profile-")
            .tempdir_in(self.profiles.path())
            .map_err(BrowserError::Spawn)?
            .keep();
        let downloads = profile.join("downloads");
        let _ = std::fs::create_dir_all(&downloads);
        let mut args = vec![
            "--no-sandbox".to_owned(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,1024".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        if self.headless {
            args.insert(0, "--headless=new".into());
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium.display().to_string(),
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "plugins.always_open_pdf_externally": true,
                },
            },
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("capabilities are an object"),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .map_err(|e| BrowserError::Session(e.to_string()))?;
        // WebDriver's own default page-load limit is five minutes; a portal
        // that slow is down, and the step fails as retryable much sooner.
        let limits = fantoccini::wd::TimeoutConfiguration::new(
            Some(Duration::from_secs(30)),
            Some(Duration::from_secs(60)),
            Some(Duration::ZERO),
        );
        client
            .update_timeouts(limits)
            .await
            .map_err(|e| BrowserError::Session(e.to_string()))?;
        Ok(client)
    }

    /// Ends chromedriver and every browser it started.
    pub async fn shutdown(mut self) {
        self.kill_group();
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
    }

    fn kill_group(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(|c| c.id()) {
            // SAFETY: kill(2) on the process group we created.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        if let Some(p) = self.pidfile.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill_group();
    }
}
