//! `/metrics`, `/healthz` and `/readyz` of a running daemon: what an
//! operator alerts on is there from the first scrape, and Prometheus's own
//! `promtool` accepts the exposition.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::support::Project;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path` once the daemon answers (bounded: 30 s).
async fn get(daemon: &mut Daemon, port: u16, path: &str) -> (u16, String) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}{path}")).send().await {
            return (r.status().as_u16(), r.text().await.unwrap());
        }
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("the daemon exited: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never answered {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs Debian's prometheus package)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_from_a_running_daemon_pass_promtool_and_carry_what_alerts_need() {
    let p = Project::new();
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let port = free_port();
    let log = std::fs::File::create(p.path("daemon.log")).unwrap();
    let mut daemon = Daemon(
        p.command(&["daemon"])
            .env("PRECERT__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );

    let (status, health) = get(&mut daemon, port, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(
        health.contains("ledger ok") && health.contains("scheduler ok"),
        "{health}"
    );
    let (status, ready) = get(&mut daemon, port, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("configuration ok: 2 practice(s) enabled"), "{ready}");

    let (status, text) = get(&mut daemon, port, "/metrics").await;
    assert_eq!(status, 200);
    promtool_check_metrics(&text);

    assert_eq!(
        value(
            &text,
            &format!("precert_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))
        ),
        Some(1.0),
        "{text}"
    );
    // Statuses no case has are there, at 0.
    assert_eq!(value(&text, "precert_cases{status=\"denied\"}"), Some(0.0), "{text}");
    assert_eq!(value(&text, "precert_cases{status=\"ready\"}"), Some(6.0), "{text}");
    assert_eq!(
        value(
            &text,
            "precert_practice_cases{practice=\"lakeside-ortho\",status=\"ready\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "precert_practice_cases{practice=\"valley-imaging\",status=\"approved\"}"
        ),
        Some(0.0),
        "{text}"
    );
    // Each playbook's breaker, closed.
    for pb in ["sandbox", "sandbox-pas"] {
        assert_eq!(
            value(
                &text,
                &format!("precert_breaker_state{{playbook=\"{pb}\",state=\"closed\"}}")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                &format!("precert_breaker_state{{playbook=\"{pb}\",state=\"open\"}}")
            ),
            Some(0.0),
            "{text}"
        );
    }
    assert_eq!(
        value(&text, "precert_mail_total{result=\"failed\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "precert_practice_escalations_active{practice=\"valley-imaging\"}"
        ),
        Some(0.0),
        "{text}"
    );
    // Every metric the shipped alert rules and dashboard use is served.
    for name in deployed_metric_names() {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} (used by deploy/) is not in /metrics:\n{text}"
        );
    }
    for family in [
        "# TYPE precert_run_seconds histogram",
        "# TYPE precert_job_last_success_timestamp_seconds gauge",
        "# TYPE precert_jobs_total counter",
        "# TYPE precert_workers gauge",
    ] {
        assert!(text.contains(family), "{family} in\n{text}");
    }
}

fn deploy_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The metric families `deploy/prometheus/alerts.yml` and
/// `deploy/grafana/precert.json` name (histogram series by their family).
fn deployed_metric_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for file in ["deploy/prometheus/alerts.yml", "deploy/grafana/precert.json"] {
        let text = std::fs::read_to_string(deploy_file(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("precert_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| *f == "precert_run_seconds"))
                .unwrap_or(name);
            names.insert(family.to_owned());
            rest = &tail[end..];
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// The shipped alert rules load in Prometheus's own checker, and each alert
/// fires on the synthetic history in `alerts.test.yml` (and not before).
#[test]
fn shipped_alert_rules_pass_promtool_and_each_alert_fires_when_it_should() {
    for args in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(deploy_file("deploy/prometheus"))
            .output()
            .expect("promtool runs (scripts/test installs Debian's prometheus package)");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(deploy_file("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy_file("deploy/prometheus/alerts.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in alerts.test.yml"
        );
    }
    // The dashboard is JSON Grafana imports: panels with queries.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_file("deploy/grafana/precert.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    assert!(panels
        .iter()
        .all(|p| p["targets"].as_array().is_some_and(|t| !t.is_empty())));
}
