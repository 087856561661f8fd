//! The layout-v3 portal (`/v3/`) over HTTP: sign-in through the six-box code and
//! the organisation picker, idle expiry, the one-page request form's endpoints,
//! the JSON behind the requests table, the label-only request page and letters.

use std::time::Duration;

use reqwest::Client;
use serde_json::Value;

use super::common::{browser, no_redirects, start, LAKESIDE, VALLEY};

const LAKESIDE_NPI: &str = "1245319599";
const LAKESIDE_IMAGING_NPI: &str = "1555012347";

/// Signs in with password and code and picks the organisation `npi`; returns
/// the dashboard.
async fn sign_in(c: &Client, base: &str, account: (&str, &str, &str), npi: &str) -> String {
    let r = c
        .post(format!("{base}/v3/signin"))
        .form(&[("login", account.0), ("secret", account.1)])
        .send()
        .await
        .unwrap();
    assert!(r.url().path().ends_with("/v3/verify"), "{}", r.url());
    let code = precert_sandbox::totp::current_code(account.2).unwrap();
    let r = c
        .post(format!("{base}/v3/verify"))
        .form(&[("code", code.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.url().path().ends_with("/v3/organisations"), "{}", r.url());
    let r = c
        .post(format!("{base}/v3/organisations"))
        .form(&[("npi", npi)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.url().path(), "/v3/");
    r.text().await.unwrap()
}

fn signed_in_form(page: &str) -> bool {
    page.contains(r#"<form class="signin""#)
}

#[tokio::test]
async fn sign_in_takes_a_six_box_code_and_an_organisation() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    // Any page without a session shows the sign-in form in place.
    let r = c.get(format!("{base}/v3/requests")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.url().path(), "/v3/requests");
    assert!(signed_in_form(&r.text().await.unwrap()));

    let r = no_redirects()
        .post(format!("{base}/v3/signin"))
        .form(&[("login", LAKESIDE.0), ("secret", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("The user name or password is not right."));

    let r = c
        .post(format!("{base}/v3/signin"))
        .form(&[("login", LAKESIDE.0), ("secret", LAKESIDE.1)])
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    assert_eq!(
        page.matches(r#"inputmode="numeric" pattern="[0-9]" maxlength="1""#)
            .count(),
        6,
        "{page}"
    );
    // Pages past the code wait for it.
    let r = c.get(format!("{base}/v3/requests")).send().await.unwrap();
    assert_eq!(r.url().path(), "/v3/verify");
    let r = c
        .post(format!("{base}/v3/verify"))
        .form(&[("code", "000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let code = precert_sandbox::totp::current_code(LAKESIDE.2).unwrap();
    let page = c
        .post(format!("{base}/v3/verify"))
        .form(&[("code", code.as_str())])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for npi in [LAKESIDE_NPI, LAKESIDE_IMAGING_NPI] {
        assert!(page.contains(&format!(r#"data-npi="{npi}""#)), "{page}");
    }
    // Another login's organisation cannot be picked.
    let r = c
        .post(format!("{base}/v3/organisations"))
        .form(&[("npi", "1679576722")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(format!("{base}/v3/organisations"))
        .form(&[("npi", LAKESIDE_NPI)])
        .send()
        .await
        .unwrap();
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<nav class="account""#) && page.contains("Lakeside Orthopedics &middot; NPI 1245319599"));
    // Its own cookie, HttpOnly, for /v3 only.
    let r = no_redirects()
        .post(format!("{base}/v3/signin"))
        .form(&[("login", VALLEY.0), ("secret", VALLEY.1)])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("V3SID=") && cookie.contains("HttpOnly") && cookie.contains("Path=/v3"),
        "{cookie}"
    );
    sbx.shutdown().await;
}

#[tokio::test]
async fn an_idle_session_ends_and_the_next_page_shows_the_sign_in_form() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    sign_in(&c, &base, LAKESIDE, LAKESIDE_NPI).await;
    let idle = sbx.config().v3_idle_timeout_seconds;
    // Just under the limit: the session lives on, and the page touches it.
    sbx.advance_clock(Duration::from_secs(idle - 5));
    let page = c.get(format!("{base}/v3/")).send().await.unwrap().text().await.unwrap();
    assert!(!signed_in_form(&page), "{page}");
    sbx.advance_clock(Duration::from_secs(idle + 1));
    let r = c.get(format!("{base}/v3/requests")).send().await.unwrap();
    assert_eq!(r.url().path(), "/v3/requests");
    let page = r.text().await.unwrap();
    assert!(signed_in_form(&page) && page.contains("not used for a while"), "{page}");
    // It stays ended: JSON endpoints answer 401.
    let r = c.get(format!("{base}/v3/api/requests")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    sbx.shutdown().await;
}

fn request_form(token: &str, member: (&str, &str), code: &str, start: &str) -> Vec<(String, String)> {
    [
        ("form_token", token),
        ("member_id", member.0),
        ("birth_date", member.1),
        ("request_type", "imaging"),
        ("urgency", "standard"),
        ("setting", "outpatient"),
        ("code_1", code),
        ("units_1", "1"),
        ("diagnoses", "M25.561"),
        ("start_date", start),
        ("end_date", start),
        ("servicing_npi", "1245319599"),
        ("attestation", "yes"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn form_token(page: &str) -> String {
    let at = page.find(r#"name="form_token" value=""#).expect("a form token") + 25;
    page[at..at + 32].to_string()
}

#[tokio::test]
async fn the_one_page_form_checks_suggests_uploads_and_sends_once() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    sign_in(&c, &base, LAKESIDE, LAKESIDE_NPI).await;
    let page = c
        .get(format!("{base}/v3/request"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Sections after the patient's are hidden until the script reveals them.
    for section in ["service", "documents", "sign"] {
        assert!(
            page.contains(&format!(r#"<section class="{section}" hidden>"#)),
            "{section}"
        );
    }
    assert!(page.contains("window.confirm(") && !page.contains("<script src"));
    let token = form_token(&page);

    let eligibility = |member: &'static str, dob: &'static str| {
        let c = c.clone();
        let base = base.clone();
        async move {
            c.post(format!("{base}/v3/api/eligibility"))
                .form(&[("member_id", member), ("birth_date", dob)])
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let no = eligibility("SBX100200301", "1961-04-13").await;
    assert_eq!(no["eligible"], false);
    assert_eq!(no["message"], "Member not found or date of birth does not match.");
    let ended = eligibility("SBX100200304", "1950-12-01").await;
    assert_eq!(ended["message"], "Coverage for this member ended on 06/30/2026.");
    assert_eq!(eligibility("SBX100200301", "1961-04-12").await["eligible"], true);

    for q in ["7372", "lower extremity"] {
        let found: Value = c
            .get(format!("{base}/v3/api/procedures?q={q}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let codes: Vec<&str> = found["procedures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["code"].as_str().unwrap())
            .collect();
        assert!(codes.contains(&"73721"), "{q}: {codes:?}");
    }

    let part = reqwest::multipart::Part::bytes(b"%PDF-1.4 knee x-ray".to_vec())
        .file_name("knee-xray-report.pdf")
        .mime_str("application/pdf")
        .unwrap();
    let frame = c
        .post(format!("{base}/v3/upload"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        frame.contains(r#"data-count="1""#) && frame.contains("knee-xray-report.pdf"),
        "{frame}"
    );

    let form = request_form(&token, ("SBX100200301", "1961-04-12"), "73721", "2026-12-08");
    let r = no_redirects()
        .post(format!("{base}/v3/request"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert!(
        signed_in_form(&r.text().await.unwrap()),
        "another browser has no session"
    );
    assert!(sbx.submissions_for_member("SBX100200301").is_empty());
    let r = c.post(format!("{base}/v3/request")).form(&form).send().await.unwrap();
    assert!(r.url().path().starts_with("/v3/requests/SBX-"), "{}", r.url());
    let reference = r.url().path().rsplit('/').next().unwrap().to_string();
    let page = r.text().await.unwrap();
    assert!(page.contains("Your request was received."));
    assert!(
        page.contains(&format!("<dt>Reference</dt><dd>{reference}</dd>")),
        "{page}"
    );
    assert!(page.contains("<dt>Status</dt><dd>In Review</dd>"), "{page}");
    assert!(!page.contains(" id=\""), "no element IDs on the request's page");
    let sent = sbx.submission(&reference).unwrap();
    assert_eq!(sent.provider_npi, LAKESIDE_NPI);
    assert_eq!(sent.attachments[0].file_name, "knee-xray-report.pdf");

    // The same form again (a reload, a double click) sends nothing.
    let r = c.post(format!("{base}/v3/request")).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(sbx.submissions_for_member("SBX100200301").len(), 1);

    // The table's JSON lists it; the other organisation does not see it.
    let list: Value = c
        .get(format!("{base}/v3/api/requests?member=SBX100200301"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["reference"], reference.as_str());
    assert_eq!(list["items"][0]["procedures"], "73721");
    assert_eq!(list["items"][0]["from"], "12/08/2026");
    c.post(format!("{base}/v3/organisations"))
        .form(&[("npi", LAKESIDE_IMAGING_NPI)])
        .send()
        .await
        .unwrap();
    let list: Value = c
        .get(format!("{base}/v3/api/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let r = c.get(format!("{base}/v3/requests/{reference}")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    // A bad form is refused with the reasons and sends nothing.
    let page = c
        .get(format!("{base}/v3/request"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = request_form(&form_token(&page), ("SBX100200302", "1975-09-30"), "7372", "2026-12-09");
    let r = c.post(format!("{base}/v3/request")).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("is not a valid CPT/HCPCS code"));
    assert!(sbx.submissions_for_member("SBX100200302").is_empty());
    sbx.shutdown().await;
}

#[tokio::test]
async fn a_decided_request_links_its_letter_for_a_new_tab() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    sign_in(&c, &base, VALLEY, "1679576722").await;
    let page = c
        .get(format!("{base}/v3/request"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // E0601 is approved at once (a scenario rule).
    let form = request_form(
        &form_token(&page),
        ("SBX100200306", "1992-11-05"),
        "E0601",
        "2026-12-05",
    );
    let r = c.post(format!("{base}/v3/request")).form(&form).send().await.unwrap();
    let reference = r.url().path().rsplit('/').next().unwrap().to_string();
    let page = r.text().await.unwrap();
    assert!(page.contains("<dt>Status</dt><dd>Approved</dd>"), "{page}");
    let auth = sbx.submission(&reference).unwrap().auth_number.unwrap();
    assert!(
        page.contains(&format!("<dt>Authorization #</dt><dd>{auth}</dd>")),
        "{page}"
    );
    let link = format!(r#"href="/v3/requests/{reference}/letter" target="_blank""#);
    assert!(page.contains(&link), "{page}");
    let viewer = c
        .get(format!("{base}/v3/requests/{reference}/letter"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        viewer.contains(&format!(r#"href="/v3/letters/{reference}.pdf" download"#)),
        "{viewer}"
    );
    let r = c
        .get(format!("{base}/v3/letters/{reference}.pdf"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert!(r.bytes().await.unwrap().starts_with(b"%PDF-"));
    // Without a session: the sign-in form, never the letter.
    let anonymous = browser()
        .get(format!("{base}/v3/letters/{reference}.pdf"))
        .send()
        .await
        .unwrap();
    assert!(signed_in_form(&anonymous.text().await.unwrap()));
    sbx.shutdown().await;
}
