//! The only module that starts browsers: chromedriver spawned and
//! supervised by precert (or a remote WebDriver), and WebDriver sessions on
//! it.
//!
//! No browser outlives precert:
//! - chromedriver and every Chromium it starts run in one process group led
//!   by a guard that kills the group when precert ends, however it ends;
//!   chromedriver also has a parent-death signal (`spawn`).
//! - `Driver::shutdown` and dropping a `Driver` kill the group and remove
//!   its profiles.
//! - Profiles, Chromium's temporary files and its configuration live in
//!   `DATA/run/profiles/ID/` (0700), never in `/tmp`; after a crash, the next
//!   precert command removes them and kills anything left
//!   (`reap_orphans`, `reap`).

mod procs;
mod reap;
mod spawn;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::WebDriverSettings;

pub use reap::{reap_orphans, Reaped};

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
    #[error("cannot create the browser profile folder under {}: {source}", path.display())]
    Profile { path: PathBuf, source: std::io::Error },
    #[error("chromedriver did not become ready within {0:?}")]
    NotReady(Duration),
    #[error("cannot open a browser session: {0}")]
    Session(String),
}

/// A running chromedriver (or a remote WebDriver's address).
pub struct Driver {
    url: String,
    /// chromedriver and its guard, when precert started them, until
    /// `shutdown` has reaped them.
    group: Option<spawn::Group>,
    /// Their process group (the guard's id).
    pgid: Option<i32>,
    /// Removed (with whatever is still running from it) when the driver ends.
    root: Option<reap::ProfileRoot>,
    chromium: PathBuf,
    headless: bool,
    /// A remote WebDriver (a grid node): the browser runs on its machine,
    /// so its binary, profile and download folder are the node's own.
    remote: bool,
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
    /// Reaps what a dead precert left in `DATA/run/` before it starts.
    pub async fn start(settings: &WebDriverSettings, data_dir: &Path) -> Result<Driver, BrowserError> {
        reap_orphans(data_dir);
        let profile_root = || {
            reap::ProfileRoot::create(data_dir).map_err(|source| BrowserError::Profile {
                path: data_dir.join("run").join("profiles"),
                source,
            })
        };
        if let Some(url) = &settings.remote_url {
            return Ok(Driver {
                url: url.clone(),
                group: None,
                pgid: None,
                root: Some(profile_root()?),
                chromium: settings.chromium.clone(),
                headless: settings.headless,
                remote: true,
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
        let root = profile_root()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(BrowserError::Spawn)?
            .port();
        let mut driver = Driver {
            url: format!("http://127.0.0.1:{port}"),
            group: None,
            pgid: None,
            root: Some(root),
            chromium: settings.chromium.clone(),
            headless: settings.headless,
            remote: false,
        };
        let root = driver.root.as_ref().expect("set above");
        let group = spawn::start(&settings.chromedriver, port, root)
            .await
            .map_err(BrowserError::Spawn)?;
        if let Err(e) = root.record_group(group.pgid) {
            // The guard still ends the group with precert; only a reap after
            // a failed guard needs the record.
            tracing::warn!(error = %e, "Cannot record chromedriver's process group.");
        }
        driver.pgid = Some(group.pgid);
        driver.group = Some(group);
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
        self.pgid
    }

    /// The folder of this driver's profiles and temporary files.
    pub fn profile_root(&self) -> Option<&Path> {
        self.root.as_ref().map(|r| r.path())
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new browser session with its own profile and download folder (on
    /// a remote WebDriver, the node's: precert's paths mean nothing there,
    /// and letters are fetched with the session's cookies, not downloaded).
    pub async fn session(&self) -> Result<Client, BrowserError> {
        let mut args = vec![
            "--no-sandbox".to_owned(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            // No crash reports: a dump would hold portal pages. (Chromium
            // still starts crashpad's handlers, which leave the process
            // group; they carry the mark, end with the browser and keep
            // their database in the driver's XDG_CONFIG_HOME. Its switch
            // `--disable-crashpad-for-testing` hangs every renderer.)
            "--disable-crash-reporter".into(),
            // Memory (bench/README, "Browser memory per session": 458 →
            // 412 MB PSS, 1 056 → 919 MB RSS): no back-forward
            // cache (a left page's renderer is not kept alive; going back
            // loads the page again, as after a cache miss), no spare
            // renderer kept warm for the next site, and no software GL in
            // the GPU process (precert draws nothing with WebGL). chromedriver
            // adds these features to its own `--disable-features` list.
            "--disable-features=BackForwardCache,SpareRendererForSitePerProcess".into(),
            "--disable-software-rasterizer".into(),
            "--window-size=1280,1024".into(),
        ];
        if self.headless {
            args.insert(0, "--headless=new".into());
        }
        let options = if self.remote {
            json!({ "args": args })
        } else {
            let root = self.root.as_ref().expect("a driver has its root until it ends");
            let profile = tempfile::Builder::new()
                .prefix("session-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir_in(root.path())
                .map_err(|source| BrowserError::Profile {
                    path: root.path().to_owned(),
                    source,
                })?
                .keep();
            let downloads = profile.join("downloads");
            let _ = std::fs::create_dir_all(&downloads);
            args.push(format!("--user-data-dir={}", profile.display()));
            json!({
                "binary": self.chromium.display().to_string(),
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.display().to_string(),
                    "download.prompt_for_download": false,
                    "plugins.always_open_pdf_externally": true,
                },
            })
        };
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
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

    /// Ends chromedriver and every browser it started, and removes the
    /// profiles.
    pub async fn shutdown(mut self) {
        self.kill_group();
        if let Some(mut g) = self.group.take() {
            let _ = g.chromedriver.wait().await;
            let _ = g.guard.wait().await;
        }
        // Drop removes the profiles.
    }

    fn kill_group(&mut self) {
        if let Some(g) = &self.group {
            // SAFETY: kill(2) on the process group we created. Its leader,
            // the guard, is our child and not yet reaped, so the id cannot
            // have been reused.
            unsafe { libc::kill(-g.pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill_group();
        if let Some(root) = self.root.take() {
            // Waits (bounded) for every process of the driver to end, so
            // that none writes into the profile while it is removed.
            root.end(self.pgid);
        }
    }
}
