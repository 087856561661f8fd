//! Every hazard switch, through the admin API.

use serde_json::{json, Value};

use super::common::*;

#[tokio::test]
async fn latency_is_added_to_portal_pages_and_shows_in_the_request_log() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"latency_ms": 150})).await;
    let r = api().get(format!("{base}/portal/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let log = admin_get(&base, "/admin/log").await;
    let entry = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/portal/login")
        .unwrap()
        .clone();
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["status"], 200);
    assert!(entry["latency_ms"].as_f64().unwrap() >= 150.0, "{entry}");
    assert!(entry["started_at"].as_str().is_some());
    sbx.shutdown().await;
}

async fn statuses(base: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            api()
                .get(format!("{base}/portal/login"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    out
}

#[tokio::test]
async fn random_500s_follow_the_rate_and_the_seed() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"error_rate": 1.0})).await;
    assert_eq!(statuses(&base, 3).await, vec![500, 500, 500]);
    let token_status = api()
        .post(format!("{base}/oauth/token"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(token_status, 500, "the API fails too");
    assert_eq!(
        admin_get(&base, "/admin/health").await["status"],
        "ok",
        "admin never fails"
    );

    set_hazards(&base, json!({"error_rate": 0.5, "seed": 42})).await;
    let first = statuses(&base, 20).await;
    set_hazards(&base, json!({"seed": 42})).await;
    let again = statuses(&base, 20).await;
    assert_eq!(first, again, "the same seed gives the same failures");
    assert!(first.contains(&500) && first.contains(&200), "{first:?}");

    set_hazards(&base, json!({"error_rate": 0.0})).await;
    assert_eq!(statuses(&base, 3).await, vec![200, 200, 200]);
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_maintenance_page_replaces_the_portal() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"maintenance": true})).await;
    let r = api().get(format!("{base}/portal/login")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("id=\"maintenance-notice\""));
    set_hazards(&base, json!({"maintenance": false})).await;
    assert_eq!(statuses(&base, 1).await, vec![200]);
    sbx.shutdown().await;
}

#[tokio::test]
async fn idle_sessions_expire_on_the_sandbox_clock() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"session_idle_timeout_seconds": 60})).await;
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    sbx.advance_clock(std::time::Duration::from_secs(30));
    let (_, path, _) = get_text(&c, &format!("{base}/portal/home")).await;
    assert_eq!(path, "/portal/home", "activity keeps the session alive");
    sbx.advance_clock(std::time::Duration::from_secs(61));
    let (_, path, page) = get_text(&c, &format!("{base}/portal/home")).await;
    assert_eq!(path, "/portal/login");
    assert!(page.contains("Your session has expired"));
    sbx.shutdown().await;
}

#[tokio::test]
async fn a_forced_logout_ends_every_session() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let (status, ended) = admin_post(&base, "/admin/sessions/kill-all", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(ended["ended"], 1);
    let (_, path, page) = get_text(&c, &format!("{base}/portal/worklist")).await;
    assert_eq!(path, "/portal/login");
    assert!(page.contains("You have been signed out"));
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_contact_details_interstitial_comes_after_mfa() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"contact_details_interstitial": true})).await;
    let c = browser();
    let page = login(&c, &base, LAKESIDE).await;
    assert!(page.contains("id=\"contact-confirm\""));
    let (_, path, _) = get_text(&c, &format!("{base}/portal/worklist")).await;
    assert_eq!(path, "/portal/contact-details", "nothing else until confirmed");
    let r = c.post(format!("{base}/portal/contact-details")).send().await.unwrap();
    assert_eq!(r.url().path(), "/portal/home");
    sbx.shutdown().await;
}

#[tokio::test]
async fn a_captcha_blocks_the_portal_until_a_human_solves_it() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"captcha": true})).await;
    let c = browser();
    let page = login(&c, &base, LAKESIDE).await;
    assert!(page.contains("id=\"captcha-image\""));
    let (_, path, _) = get_text(&c, &format!("{base}/portal/home")).await;
    assert_eq!(path, "/portal/captcha");
    let r = c
        .post(format!("{base}/portal/captcha"))
        .form(&[("answer", "WRONG1")])
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("id=\"captcha-error\""));
    // The "human" reads the answer (the test uses the admin API to play that part).
    let sessions: Value = admin_get(&base, "/admin/sessions").await;
    let answer = sessions["sessions"][0]["captcha_answer"].as_str().unwrap().to_string();
    let r = c
        .post(format!("{base}/portal/captcha"))
        .form(&[("answer", answer.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.url().path(), "/portal/home");
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_api_is_throttled_for_the_next_n_calls_with_retry_after() {
    let sbx = start().await;
    let base = sbx.base_url();
    set_hazards(&base, json!({"api_throttle_next": 2, "api_retry_after_seconds": 7})).await;
    for _ in 0..2 {
        let r = api()
            .post(format!("{base}/oauth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "lakeside-pas"),
                ("client_secret", "sandbox-lakeside-client-secret"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
    }
    lakeside_token(&base).await;
    assert_eq!(statuses(&base, 1).await, vec![200], "the portal is not throttled");
    sbx.shutdown().await;
}

#[tokio::test]
async fn layout_version_2_changes_ids_and_labels() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let (_, _, v1) = get_text(&c, &format!("{base}/portal/requests/new")).await;
    assert!(v1.contains("id=\"member-id\"") && v1.contains(">Member ID<"));
    set_hazards(&base, json!({"layout_version": 2})).await;
    let (_, _, v2) = get_text(&c, &format!("{base}/portal/requests/new")).await;
    assert!(!v2.contains("id=\"member-id\""));
    assert!(v2.contains("id=\"subscriberId\"") && v2.contains(">Subscriber ID<"));
    // Validation messages follow the new IDs.
    c.post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", "SBX100200301"), ("birth_date", "1961-04-12")])
        .send()
        .await
        .unwrap();
    let mut form = service_form("73721", "1", "2026-12-01");
    form.retain(|(k, _)| k != "attestation");
    let page = c
        .post(format!("{base}/portal/requests/new/service"))
        .form(&form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"certifyInfo-error\""), "{page}");
    let r = set_hazards_raw(&base, json!({"layout_version": 3})).await;
    assert_eq!(r, 400);
    sbx.shutdown().await;
}

async fn set_hazards_raw(base: &str, patch: Value) -> u16 {
    api()
        .put(format!("{base}/admin/hazards"))
        .json(&patch)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_next_n_status_searches_fail_in_the_chosen_way() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let reference = submit_via_portal(&c, &base, ("SBX100200306", "1992-11-05"), "E0601", "1", "2026-12-02").await;
    let by_reference = format!("reference={reference}");
    let h = admin_get(&base, "/admin/hazards").await;
    assert_eq!(h["status_search_fail_next"], 0);
    assert_eq!(h["status_search_failure"], "http_500", "the default");
    assert_eq!(h["status_search_delay_ms"], 60_000);

    // http_500 (the default), for the next two searches; then searches work again.
    let h = set_hazards(&base, json!({"status_search_fail_next": 2})).await;
    assert_eq!(h["status_search_fail_next"], 2);
    for left in [1, 0] {
        let (status, _) = status_search(&c, &base, &by_reference).await;
        assert_eq!(status, 500);
        assert_eq!(
            admin_get(&base, "/admin/hazards").await["status_search_fail_next"],
            left
        );
    }
    let (status, body) = status_search(&c, &base, &by_reference).await;
    assert_eq!(status, 200);
    let ok: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ok["results"][0]["reference"], json!(reference));

    // error_message: HTTP 200, no results, the message.
    set_hazards(
        &base,
        json!({"status_search_fail_next": 1, "status_search_failure": "error_message"}),
    )
    .await;
    let (status, body) = status_search(&c, &base, "member_id=SBX100200306&birth_date=1992-11-05").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"results": [], "error": "The search service is temporarily unavailable."})
    );

    // timeout: the answer hangs for the delay, then 504.
    set_hazards(
        &base,
        json!({"status_search_fail_next": 1, "status_search_failure": "timeout", "status_search_delay_ms": 400}),
    )
    .await;
    let started = std::time::Instant::now();
    let (status, _) = status_search(&c, &base, &by_reference).await;
    assert_eq!(status, 504);
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    let (status, _) = status_search(&c, &base, &by_reference).await;
    assert_eq!(status, 200, "only the next N fail");

    // A search without a session is refused as before and uses up no failure.
    set_hazards(
        &base,
        json!({"status_search_fail_next": 1, "status_search_failure": "http_500"}),
    )
    .await;
    let (status, _) = status_search(&no_redirects(), &base, &by_reference).await;
    assert_eq!(status, 401);
    assert_eq!(admin_get(&base, "/admin/hazards").await["status_search_fail_next"], 1);
    // The status page itself is not a search.
    let (status, _, _) = get_text(&c, &format!("{base}/portal/status?{by_reference}")).await;
    assert_eq!(status, 200);
    assert_eq!(admin_get(&base, "/admin/hazards").await["status_search_fail_next"], 1);

    // Failed searches are no submissions.
    assert_eq!(admin_get(&base, "/admin/submissions").await["total"], 1);
    assert_eq!(count(&base, "SBX100200306", "E0601", "2026-12-02").await, 1);

    assert_eq!(
        set_hazards_raw(&base, json!({"status_search_failure": "explode"})).await,
        422,
        "an unknown failure kind is refused"
    );
    sbx.shutdown().await;
}

#[tokio::test]
async fn search_failures_can_be_set_in_process_and_a_hung_search_does_not_hold_up_shutdown() {
    use precert_sandbox::{HazardsPatch, SearchFailure};
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    sbx.set_hazards(HazardsPatch {
        status_search_fail_next: Some(1),
        status_search_failure: Some(SearchFailure::Timeout),
        status_search_delay_ms: Some(600_000),
        ..Default::default()
    })
    .unwrap();
    let hung = tokio::spawn({
        let base = base.clone();
        async move { status_search(&c, &base, "reference=SBX-00000000").await }
    });
    // Wait until the search is hanging (it has used up the failure).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while admin_get(&base, "/admin/hazards").await["status_search_fail_next"] != 0 {
        assert!(std::time::Instant::now() < deadline, "the search never arrived");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(10), sbx.shutdown())
        .await
        .expect("shutdown does not wait for the hung search");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let (status, _) = hung.await.unwrap();
    assert_eq!(status, 504);
}
