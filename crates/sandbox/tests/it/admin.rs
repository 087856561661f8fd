//! The admin API: decisions, listing, counting, the clock and reset.

use serde_json::json;

use super::common::*;

#[tokio::test]
async fn the_admin_decides_lists_and_resets() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    let (_, b, _) = fhir_post(
        &base,
        "/fhir/Claim/$submit",
        &token,
        &pas_bundle("SBX100200302", "99999", 4, "2026-12-09"),
    )
    .await;
    let reference = b["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        sbx.submission(&reference).unwrap().status,
        precert_sandbox::Status::InReview
    );

    let (status, r) = admin_post(
        &base,
        &format!("/admin/submissions/{reference}/decide"),
        json!({"action": "pend", "information_requested": "Imaging report"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["status_label"], "Pended - Additional Information Requested");
    let (_, r) = admin_post(
        &base,
        &format!("/admin/submissions/{reference}/decide"),
        json!({"action": "partial", "approved_units": 2}),
    )
    .await;
    assert_eq!(r["status"], "partially_approved");
    assert_eq!(r["lines"][0]["approved_units"], 2);
    let (_, r) = admin_post(
        &base,
        &format!("/admin/submissions/{reference}/decide"),
        json!({"action": "deny", "reason_code": "ADM-01", "reason_text": "Not medically necessary."}),
    )
    .await;
    assert_eq!(r["denial"]["code"], "ADM-01");
    let (status, _) = admin_post(
        &base,
        "/admin/submissions/SBX-00000000/decide",
        json!({"action": "approve"}),
    )
    .await;
    assert_eq!(status, 404);

    let list = admin_get(&base, "/admin/submissions?member_id=SBX100200302").await;
    assert_eq!(list["total"], 1);
    let list = admin_get(&base, "/admin/submissions?status=denied").await;
    assert_eq!(list["total"], 1);
    assert_eq!(count(&base, "SBX100200302", "99999", "2026-12-09").await, 1);

    let (status, _) = admin_post(&base, "/admin/reset", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(admin_get(&base, "/admin/submissions").await["total"], 0);
    assert_eq!(count(&base, "SBX100200302", "99999", "2026-12-09").await, 0);
    sbx.shutdown().await;
}

#[tokio::test]
async fn run_all_decides_every_timed_request_at_once() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    for day in 1..=3 {
        fhir_post(
            &base,
            "/fhir/Claim/$submit",
            &token,
            &pas_bundle("SBX100200301", "73721", 1, &format!("2026-12-0{day}")),
        )
        .await;
    }
    assert!(admin_get(&base, "/admin/clock").await["next_decision_due"].is_string());
    let (_, r) = admin_post(&base, "/admin/scheduled/run-all", json!({})).await;
    assert_eq!(r["decided"].as_array().unwrap().len(), 3);
    assert_eq!(admin_get(&base, "/admin/submissions?status=approved").await["total"], 3);
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_request_log_can_be_written_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let mut config = precert_sandbox::SandboxConfig::default_demo();
    config.request_log_path = Some(path.display().to_string());
    let sbx = precert_sandbox::Sandbox::start(config, "127.0.0.1:0").await.unwrap();
    let base = sbx.base_url();
    api().get(format!("{base}/portal/login")).send().await.unwrap();
    no_redirects().get(format!("{base}/portal/home")).send().await.unwrap();
    sbx.shutdown().await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["path"], "/portal/login");
    assert_eq!(lines[1]["status"], 303);
    assert!(lines[1]["latency_ms"].is_number() && lines[1]["started_at"].is_string());
}
