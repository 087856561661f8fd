//! The `precert-sandbox` binary: configuration checks, listening, stopping on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_precert-sandbox");

#[test]
fn the_shipped_config_checks_and_a_broken_one_lists_every_error() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox.toml");
    let out = Command::new(BIN)
        .args(["--config", shipped, "--check"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[payer]\nname = \"X\"\n[[api_clients]]\nclient_id = \"a\"\nclient_secret = \"\"\nprovider_npi = \"123\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("provider_npi") && err.contains("client_secret"), "{err}");
}

/// Kills the child on drop unless it was already reaped, so a failing test leaks nothing.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn the_binary_serves_until_sigterm_and_logs_requests_to_the_request_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--request-log"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("precert-sandbox listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the binary reports its address");
    let health: serde_json::Value = reqwest::get(format!("{url}/admin/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    // The line is written before the answer goes out.
    let lines = std::fs::read_to_string(&log).expect("--request-log creates the file");
    let entry: serde_json::Value = serde_json::from_str(lines.lines().last().expect("one line a request")).unwrap();
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/admin/health");
    assert_eq!(entry["status"], 200);
    let pid = i32::try_from(child.0.id()).unwrap();
    // SAFETY: signals the child we spawned.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
}
