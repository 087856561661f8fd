//! One walk through the portal in real headless Chromium, driven over WebDriver:
//! login → MFA → wizard (with the iframe upload and the confirm dialog) → confirmation,
//! then the "Request details" tab and the XHR-rendered status search; and the status
//! search's rows, empty answer and failures as the page shows them.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use super::common::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver in its own process group; dropping it kills the whole group, so no
/// driver or browser outlives the test, even when the test panics.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER} must be installed (apt-get install chromium-driver): {e}"));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        driver.wait_ready().await;
        driver
    }

    /// Polls `/status` until the driver says it is ready, up to a deadline.
    async fn wait_ready(&self) {
        let client = api();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = client.get(format!("{}/status", self.url)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = i32::try_from(self.child.id()).expect("pid fits i32");
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

async fn connect(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session starts")
}

async fn fill(c: &Client, id: &str, text: &str) {
    let e = c.wait().at_most(WAIT).for_element(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(c: &Client, id: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Date inputs take keyboard input in the browser's locale; set the ISO value directly.
async fn set_date(c: &Client, id: &str, iso: &str) {
    c.wait().at_most(WAIT).for_element(Locator::Id(id)).await.unwrap();
    c.execute(
        "document.getElementById(arguments[0]).value = arguments[1];",
        vec![json!(id), json!(iso)],
    )
    .await
    .unwrap();
}

async fn text_of(c: &Client, css: &str) -> String {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_request_is_submitted_through_the_portal_in_headless_chromium() {
    let sbx = start().await;
    let base = sbx.base_url();
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;
    let outcome = walk(&c, &base).await;
    c.close().await.unwrap();
    drop(driver);
    let reference = outcome;

    assert_eq!(count(&base, "SBX100200301", "73721", "2026-12-14").await, 1);
    let stored = sbx.submission(&reference).unwrap();
    assert_eq!(stored.attachments[0].file_name, "knee-xray-report.txt");
    assert_eq!(stored.lines[0].code, "73721");
    sbx.shutdown().await;
}

/// Logs in as Lakeside with password and MFA.
async fn log_in(c: &Client, base: &str) {
    c.goto(&format!("{base}/portal/login")).await.unwrap();
    fill(c, "username", LAKESIDE.0).await;
    fill(c, "password", LAKESIDE.1).await;
    click(c, "login-submit").await;

    let code = precert_sandbox::totp::current_code(LAKESIDE.2).unwrap();
    fill(c, "mfa-code", &code).await;
    click(c, "mfa-submit").await;
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id("nav-status"))
        .await
        .unwrap();
}

/// The walk itself; returns the reference number shown on the confirmation page.
async fn walk(c: &Client, base: &str) -> String {
    log_in(c, base).await;

    click(c, "nav-new-request").await;
    fill(c, "member-id", "SBX100200301").await;
    set_date(c, "member-dob", "1961-04-12").await;
    click(c, "member-lookup-submit").await;
    assert_eq!(text_of(c, "#eligibility-status").await, "Active");
    click(c, "continue-to-service").await;

    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id("request-type"))
        .await
        .unwrap()
        .select_by_value("imaging")
        .await
        .unwrap();
    click(c, "urgency-standard").await;
    c.find(Locator::Id("service-setting"))
        .await
        .unwrap()
        .select_by_value("outpatient")
        .await
        .unwrap();
    fill(c, "cpt-code-1", "73721").await;
    fill(c, "units-1", "1").await;
    fill(c, "diagnosis-codes", "M23.91, M25.561").await;
    set_date(c, "service-start-date", "2026-12-14").await;
    set_date(c, "service-end-date", "2026-12-14").await;
    fill(c, "servicing-npi", "1245319599").await;
    click(c, "attestation").await;
    click(c, "service-continue").await;

    // The upload lives in an iframe.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("knee-xray-report.txt");
    std::fs::write(&file, "Weight-bearing X-ray: moderate medial joint space narrowing.").unwrap();
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Id("attachments-frame"))
        .await
        .unwrap()
        .enter_frame()
        .await
        .unwrap();
    fill(c, "attachment-file", file.to_str().unwrap()).await;
    click(c, "attachment-upload").await;
    let listed = text_of(c, "#attachment-1").await;
    assert!(listed.starts_with("knee-xray-report.txt"), "{listed}");
    c.enter_parent_frame().await.unwrap();
    click(c, "attachments-continue").await;

    // The final submit asks for confirmation in a JavaScript dialog.
    click(c, "submit-request").await;
    let prompt = c.get_alert_text().await.unwrap();
    assert!(prompt.contains("Submit this prior authorization request"), "{prompt}");
    c.accept_alert().await.unwrap();

    let reference = text_of(c, "#reference-number").await;
    assert!(reference.starts_with("SBX-") && reference.len() == 12, "{reference}");

    // "Request details" opens in a new tab.
    let first = c.window().await.unwrap();
    click(c, "request-details-link").await;
    let deadline = Instant::now() + WAIT;
    let tab = loop {
        let windows = c.windows().await.unwrap();
        if let Some(w) = windows.into_iter().find(|w| *w != first) {
            break w;
        }
        assert!(Instant::now() < deadline, "no new tab opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.switch_to_window(tab).await.unwrap();
    assert_eq!(text_of(c, "#detail-reference").await, reference);
    c.close_window().await.unwrap();
    c.switch_to_window(first).await.unwrap();

    // Status search: the table appears only after the page's XHR completes.
    click(c, "nav-status").await;
    fill(c, "search-reference", &reference).await;
    click(c, "status-search-submit").await;
    let status = text_of(c, "#status-results td.col-status").await;
    assert_eq!(status, "In Review");
    reference
}

/// Waits until the status search settled with `data-loaded` = `state`.
async fn settled(c: &Client, state: &str) {
    c.wait()
        .at_most(WAIT)
        .for_element(Locator::Css(&format!(
            "#status-results-container[data-loaded='{state}']"
        )))
        .await
        .unwrap_or_else(|e| panic!("data-loaded never became {state}: {e}"));
}

async fn present(c: &Client, css: &str) -> bool {
    !c.find_all(Locator::Css(css)).await.unwrap().is_empty()
}

async fn loaded_state(c: &Client) -> Value {
    c.execute(
        "var b = document.getElementById('status-results-container'); return [b.dataset.loaded, b.dataset.count || null];",
        vec![],
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn the_status_search_shows_rows_no_results_and_failures_apart() {
    use precert_sandbox::{HazardsPatch, SearchFailure};
    let sbx = start().await;
    let base = sbx.base_url();
    // Two requests for one member and code on different dates, through the API.
    let token = lakeside_token(&base).await;
    for date in ["2026-12-14", "2026-12-21"] {
        let (status, _, _) = fhir_post(
            &base,
            "/fhir/Claim/$submit",
            &token,
            &pas_bundle("SBX100200301", "73721", 1, date),
        )
        .await;
        assert_eq!(status, 200);
    }
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().unwrap();
    let c = connect(&driver, profile.path()).await;
    log_in(&c, &base).await;

    // Rows: member search through the form.
    click(&c, "nav-status").await;
    fill(&c, "search-member-id", "SBX100200301").await;
    set_date(&c, "search-birth-date", "1961-04-12").await;
    click(&c, "status-search-submit").await;
    settled(&c, "true").await;
    assert_eq!(loaded_state(&c).await, json!(["true", "2"]));
    let rows = c
        .find_all(Locator::Css("#status-results tr[data-reference]"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let mut dates = Vec::new();
    for row in rows {
        let cell = |class: &'static str| {
            let row = row.clone();
            async move {
                row.find(Locator::Css(&format!("td.{class}")))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(cell("col-member-id").await, "SBX100200301");
        assert_eq!(cell("col-member").await, "Margaret Okafor (SBX100200301)");
        assert_eq!(cell("col-codes").await, "73721");
        dates.push((cell("col-service-start").await, cell("col-service-end").await));
    }
    dates.sort();
    assert_eq!(
        dates,
        vec![
            ("12/14/2026".to_string(), "12/14/2026".to_string()),
            ("12/21/2026".to_string(), "12/21/2026".to_string())
        ]
    );
    assert!(!present(&c, "#status-no-results").await && !present(&c, "#status-error").await);

    // A successful search with nothing found.
    let nothing = format!("{base}/portal/status?reference=SBX-00000000");
    c.goto(&nothing).await.unwrap();
    settled(&c, "true").await;
    assert_eq!(loaded_state(&c).await, json!(["true", "0"]));
    assert!(present(&c, "#status-no-results").await);
    assert!(!present(&c, "#status-error").await && !present(&c, "#status-results").await);

    // A failing search never looks like an empty one.
    for (failure, message) in [
        (SearchFailure::Http500, "Search failed: HTTP 500"),
        (
            SearchFailure::ErrorMessage,
            "The search service is temporarily unavailable.",
        ),
        (SearchFailure::Timeout, "Search failed: HTTP 504"),
    ] {
        sbx.set_hazards(HazardsPatch {
            status_search_fail_next: Some(1),
            status_search_failure: Some(failure),
            status_search_delay_ms: Some(1500),
            ..Default::default()
        })
        .unwrap();
        c.goto(&nothing).await.unwrap();
        if failure == SearchFailure::Timeout {
            // Hung: still loading, neither answer nor error.
            assert_eq!(loaded_state(&c).await, json!(["false", null]));
            assert!(present(&c, "#status-loading").await);
        }
        settled(&c, "error").await;
        assert_eq!(loaded_state(&c).await, json!(["error", null]), "{failure:?}");
        assert_eq!(text_of(&c, "#status-error").await, message);
        assert!(!present(&c, "#status-no-results").await, "{failure:?}");
        assert!(!present(&c, "#status-loading").await && !present(&c, "#status-results").await);
    }
    c.close().await.unwrap();
    drop(driver);
    assert_eq!(sbx.submissions().len(), 2, "searches are no submissions");
    sbx.shutdown().await;
}
