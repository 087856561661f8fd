//! chromedriver supervision: clear errors before anything starts.

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
        headless: true,
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
