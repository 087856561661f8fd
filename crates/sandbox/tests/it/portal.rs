//! The web portal over HTTP: login and MFA, the wizard, status search, worklist, letters.

use super::common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_message() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    let r = password_step(&c, &base, ("lakeside.precert", "wrong", "")).await;
    assert_eq!(r.status(), 401);
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"login-error\""));
    assert!(page.contains("value=\"lakeside.precert\""), "the user ID is kept");
    sbx.shutdown().await;
}

#[tokio::test]
async fn mfa_refuses_a_wrong_code_and_accepts_the_current_one() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    let r = password_step(&c, &base, LAKESIDE).await;
    assert!(r.url().path().ends_with("/portal/mfa"));
    let current = precert_sandbox::totp::current_code(LAKESIDE.2).unwrap();
    let wrong = if current == "000000" { "111111" } else { "000000" };
    let r = c
        .post(format!("{base}/portal/mfa"))
        .form(&[("code", wrong)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("id=\"mfa-error\""));
    // Before MFA, portal pages send the user back to the MFA step.
    let (_, path, _) = get_text(&c, &format!("{base}/portal/home")).await;
    assert_eq!(path, "/portal/mfa");

    let home = mfa_step(&c, &base, LAKESIDE.2).await.text().await.unwrap();
    assert!(home.contains("Lakeside Orthopedics"), "{home}");
    assert!(home.contains("id=\"nav-new-request\""));
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_pages_need_it() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = no_redirects();
    let r = password_step(&c, &base, LAKESIDE).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("SBXSESSION=") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let anonymous = no_redirects();
    for path in [
        "/portal/home",
        "/portal/worklist",
        "/portal/requests/new",
        "/portal/status",
    ] {
        let r = anonymous.get(format!("{base}{path}")).send().await.unwrap();
        assert!(r.status().is_redirection(), "{path}");
        assert_eq!(r.headers()["location"], "/portal/login");
    }
    sbx.shutdown().await;
}

#[tokio::test]
async fn an_inactive_member_is_refused_with_a_message() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let page = c
        .post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", "SBX100200304"), ("birth_date", "1950-12-01")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"member-error\""));
    assert!(page.contains("not active"), "{page}");
    assert!(page.contains("06/30/2026"));
    assert!(!page.contains("eligibility-result"));
    // The wizard does not let the user skip ahead.
    let (_, path, _) = get_text(&c, &format!("{base}/portal/requests/new/service")).await;
    assert_eq!(path, "/portal/requests/new");

    let page = c
        .post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", "SBX100200301"), ("birth_date", "1999-01-01")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("No member was found"), "a wrong DOB finds nobody");
    sbx.shutdown().await;
}

#[tokio::test]
async fn bad_service_details_are_shown_next_to_their_fields_with_the_values_kept() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    c.post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", "SBX100200301"), ("birth_date", "1961-04-12")])
        .send()
        .await
        .unwrap();
    let form = [
        ("request_type", "imaging"),
        ("urgency", "standard"),
        ("setting", "outpatient"),
        ("code_1", "7372"),
        ("units_1", "1"),
        ("code_2", "97110"),
        ("units_2", "0"),
        ("diagnoses", "M17.11, 17.11"),
        ("start_date", "2026-12-10"),
        ("end_date", "2026-12-01"),
        ("servicing_npi", "1245319598"),
    ];
    let r = c
        .post(format!("{base}/portal/requests/new/service"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let page = r.text().await.unwrap();
    for (id, words) in [
        ("cpt-code-1-error", "not a valid CPT/HCPCS"),
        ("units-2-error", "at least 1"),
        ("diagnosis-codes-error", "\"17.11\" is not a valid ICD-10-CM"),
        ("service-end-date-error", "cannot be before the start date"),
        ("servicing-npi-error", "check digit"),
        ("attestation-error", "must attest"),
    ] {
        let at = page
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} missing"));
        assert!(
            page[at..at + 200].contains(&words.replace('"', "&quot;")),
            "{id}: {}",
            &page[at..at + 200]
        );
    }
    assert!(page.contains("value=\"7372\""), "entered values are kept");
    assert!(page.contains("value=\"1245319598\""));
    assert!(page.contains("<option value=\"imaging\" selected>"));
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_wizard_submits_once_with_an_upload_and_shows_a_reference() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    c.post(format!("{base}/portal/requests/new"))
        .form(&[("member_id", "SBX100200302"), ("birth_date", "1975-09-30")])
        .send()
        .await
        .unwrap();
    c.post(format!("{base}/portal/requests/new/service"))
        .form(&service_form("E0601", "1", "2026-12-15"))
        .send()
        .await
        .unwrap();
    let attachments = c
        .get(format!("{base}/portal/requests/new/attachments"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(attachments.contains("<iframe id=\"attachments-frame\""));
    let part = reqwest::multipart::Part::bytes(b"sleep study results".to_vec())
        .file_name("sleep-study.txt")
        .mime_str("text/plain")
        .unwrap();
    let frame = c
        .post(format!("{base}/portal/requests/new/upload"))
        .multipart(reqwest::multipart::Form::new().part("attachment", part))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        frame.contains("<li id=\"attachment-1\">sleep-study.txt (19 bytes)</li>"),
        "{frame}"
    );
    let review = c
        .get(format!("{base}/portal/requests/new/review"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(review.contains("return confirm("), "the submit asks for confirmation");
    assert!(review.contains("sleep-study.txt"));
    let page = c
        .post(format!("{base}/portal/requests/new/submit"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reference = reference_in(&page);
    assert!(reference.starts_with("SBX-") && reference[4..].bytes().all(|b| b.is_ascii_digit()));
    assert!(page.contains("target=\"_blank\""));
    // E0601 is approved immediately.
    assert!(page.contains("id=\"confirmation-status\">Approved<"), "{page}");

    // Re-posting the final step (a reload) submits nothing more.
    let (_, path, _) = {
        let r = c
            .post(format!("{base}/portal/requests/new/submit"))
            .send()
            .await
            .unwrap();
        (r.status(), r.url().path().to_string(), ())
    };
    assert_eq!(path, "/portal/requests/new");
    assert_eq!(count(&base, "SBX100200302", "E0601", "2026-12-15").await, 1);
    let stored = sbx.submission(&reference).unwrap();
    assert_eq!(stored.attachments.len(), 1);
    assert_eq!(stored.submitted_by, "lakeside.precert");
    sbx.shutdown().await;
}

#[tokio::test]
async fn status_search_renders_after_an_xhr_and_answers_json() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let denied = submit_via_portal(&c, &base, ("SBX100200303", "1988-02-14"), "72148", "1", "2026-12-20").await;
    let page = c
        .get(format!("{base}/portal/status?reference={denied}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"status-loading\""), "the page loads with a spinner");
    assert!(
        !page.contains("id=\"status-results\""),
        "the table is built client-side"
    );
    let json: Value = c
        .get(format!("{base}/portal/api/status?reference={denied}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let row = &json["results"][0];
    assert_eq!(row["status"], "Denied");
    assert_eq!(
        row["denial_reason"],
        "CLIN-06 - Conservative therapy of at least 6 weeks is not documented."
    );
    let by_member: Value = c
        .get(format!(
            "{base}/portal/api/status?member_id=SBX100200303&birth_date=1988-02-14"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_member["results"].as_array().unwrap().len(), 1);
    // Another provider does not see Lakeside's request.
    let valley = browser();
    login(&valley, &base, VALLEY).await;
    let theirs: Value = valley
        .get(format!("{base}/portal/api/status?reference={denied}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["results"], json!([]));
    sbx.shutdown().await;
}

#[tokio::test]
async fn the_worklist_pages_25_rows_at_a_time() {
    let sbx = start().await;
    let base = sbx.base_url();
    let token = lakeside_token(&base).await;
    for day in 1..=30 {
        let b = pas_bundle("SBX100200301", "99213", 1, &format!("2026-12-{day:02}"));
        let (status, _, _) = fhir_post(&base, "/fhir/Claim/$submit", &token, &b).await;
        assert_eq!(status, 200);
    }
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let (_, _, first) = get_text(&c, &format!("{base}/portal/worklist")).await;
    assert_eq!(first.matches("<tr data-reference=").count(), 25);
    assert!(first.contains("Page 1 of 2"));
    assert!(first.contains("id=\"worklist-next\" href=\"/portal/worklist?page=2\""));
    assert!(!first.contains("id=\"worklist-prev\""));
    let (_, _, second) = get_text(&c, &format!("{base}/portal/worklist?page=2")).await;
    assert_eq!(second.matches("<tr data-reference=").count(), 5);
    assert!(second.contains("id=\"worklist-prev\""));
    assert!(!second.contains("id=\"worklist-next\""));
    // Valley sees none of Lakeside's requests.
    let v = browser();
    login(&v, &base, VALLEY).await;
    let (_, _, theirs) = get_text(&v, &format!("{base}/portal/worklist")).await;
    assert_eq!(theirs.matches("<tr data-reference=").count(), 0);
    sbx.shutdown().await;
}

/// Text of a PDF through `pdftotext`.
fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letter.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is installed");
    assert!(
        out.status.success(),
        "pdftotext: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn letters_are_real_pdfs_and_need_a_session() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let approved = submit_via_portal(&c, &base, ("SBX100200306", "1992-11-05"), "E0601", "1", "2026-12-02").await;
    let denied = submit_via_portal(&c, &base, ("SBX100200303", "1988-02-14"), "72148", "1", "2026-12-03").await;
    let partial = submit_via_portal(&c, &base, ("SBX100200305", "1969-07-22"), "97110", "12", "2026-12-04").await;

    let details = c
        .get(format!("{base}/portal/requests/{approved}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(details.contains(&format!(
        "id=\"view-letter\" href=\"/portal/letters/{approved}\" target=\"_blank\""
    )));

    let r = c.get(format!("{base}/portal/letters/{approved}")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/pdf");
    let pdf = r.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-1.4"));
    let text = pdf_text(&pdf);
    let auth = sbx.submission(&approved).unwrap().auth_number.unwrap();
    assert!(text.contains(&format!("Authorization number: {auth}")), "{text}");
    assert!(text.contains("APPROVED"));

    let text = pdf_text(
        &c.get(format!("{base}/portal/letters/{denied}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert!(
        text.contains("CLIN-06 - Conservative therapy of at least 6 weeks is not documented."),
        "{text}"
    );

    let text = pdf_text(
        &c.get(format!("{base}/portal/letters/{partial}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert!(text.contains("requested 12 units, approved 8 units"), "{text}");

    // Without a session: redirected to login, no PDF.
    let anonymous = no_redirects();
    let r = anonymous
        .get(format!("{base}/portal/letters/{approved}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/portal/login");
    // Another provider: not found.
    let v = browser();
    login(&v, &base, VALLEY).await;
    let r = v.get(format!("{base}/portal/letters/{approved}")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    sbx.shutdown().await;
}

#[tokio::test]
async fn a_pended_request_is_approved_20_seconds_after_the_information_arrives() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let reference = submit_via_portal(&c, &base, ("SBX100200301", "1961-04-12"), "27447", "1", "2027-01-11").await;
    let details = c
        .get(format!("{base}/portal/requests/{reference}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(details.contains("Pended - Additional Information Requested"));
    assert!(details.contains("id=\"information-form\""));
    let part = reqwest::multipart::Part::bytes(b"clinical notes".to_vec()).file_name("notes.txt");
    let page = c
        .post(format!("{base}/portal/requests/{reference}/information"))
        .multipart(
            reqwest::multipart::Form::new()
                .text("note", "attached")
                .part("document", part),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"detail-status\">In Review<"), "{page}");
    assert_eq!(sbx.advance_clock(std::time::Duration::from_secs(19)), 0);
    assert_eq!(sbx.advance_clock(std::time::Duration::from_secs(1)), 1);
    let r = sbx.submission(&reference).unwrap();
    assert_eq!(r.status, precert_sandbox::Status::Approved);
    assert!(r.auth_number.is_some());
    sbx.shutdown().await;
}

/// The `td` of class `class` in the worklist row of `reference`.
fn worklist_cell(page: &str, reference: &str, class: &str) -> String {
    let row_at = page
        .find(&format!("<tr data-reference=\"{reference}\">"))
        .unwrap_or_else(|| panic!("{reference} not in the worklist"));
    let row = &page[row_at..row_at + page[row_at..].find("</tr>").unwrap()];
    let open = format!("<td class=\"{class}\">");
    let at = row.find(&open).unwrap_or_else(|| panic!("{class} missing")) + open.len();
    row[at..at + row[at..].find("</td>").unwrap()].to_string()
}

#[tokio::test]
async fn requests_for_one_member_and_code_on_different_dates_are_told_apart() {
    let sbx = start().await;
    let base = sbx.base_url();
    let c = browser();
    login(&c, &base, LAKESIDE).await;
    let margaret = ("SBX100200301", "1961-04-12");
    let first = submit_via_portal_dates(&c, &base, margaret, "73721", "1", ("2026-12-14", "2026-12-18")).await;
    let second = submit_via_portal(&c, &base, margaret, "73721", "1", "2026-12-21").await;
    assert_ne!(first, second);

    // Counted per service start date: one each, none on a date in between.
    assert_eq!(count(&base, "SBX100200301", "73721", "2026-12-14").await, 1);
    assert_eq!(count(&base, "SBX100200301", "73721", "2026-12-21").await, 1);
    assert_eq!(count(&base, "SBX100200301", "73721", "2026-12-18").await, 0);
    let day = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    assert_eq!(sbx.submission_count("SBX100200301", "73721", day("2026-12-14")), 1);
    assert_eq!(sbx.submission_count("SBX100200301", "73721", day("2026-12-21")), 1);

    // The admin list and the handle carry the service dates.
    let list = admin_get(&base, "/admin/submissions?member_id=SBX100200301").await;
    assert_eq!(list["total"], 2);
    let dates: Vec<(Value, Value)> = list["submissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["service_start"].clone(), s["service_end"].clone()))
        .collect();
    assert_eq!(
        dates,
        vec![
            (json!("2026-12-14"), json!("2026-12-18")),
            (json!("2026-12-21"), json!("2026-12-21"))
        ]
    );
    let on_21 = admin_get(
        &base,
        "/admin/submissions?member_id=SBX100200301&code=73721&service_date=2026-12-21",
    )
    .await;
    assert_eq!(on_21["total"], 1);
    assert_eq!(on_21["submissions"][0]["reference"], json!(second));
    let other_code = admin_get(&base, "/admin/submissions?member_id=SBX100200301&code=27447").await;
    assert_eq!(other_code["total"], 0);
    let mine = sbx.submissions_for_member("SBX100200301");
    assert_eq!(
        mine.iter()
            .map(|r| (r.reference.clone(), r.service_start, r.service_end))
            .collect::<Vec<_>>(),
        vec![
            (first.clone(), day("2026-12-14"), day("2026-12-18")),
            (second.clone(), day("2026-12-21"), day("2026-12-21"))
        ]
    );
    assert_eq!(sbx.submissions().len(), 2);
    assert_eq!(sbx.submissions()[0].service_end, day("2026-12-18"));

    // The status search's JSON tells them apart by service date.
    let (status, body) = status_search(&c, &base, "member_id=SBX100200301&birth_date=1961-04-12").await;
    assert_eq!(status, 200);
    let json: Value = serde_json::from_str(&body).unwrap();
    let rows = json["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(json.get("error").is_none(), "{json}");
    let r0 = rows.iter().find(|r| r["reference"] == json!(first)).unwrap();
    let r1 = rows.iter().find(|r| r["reference"] == json!(second)).unwrap();
    assert_eq!(r0["member_id"], "SBX100200301");
    assert_eq!(r0["member"], "Margaret Okafor (SBX100200301)");
    assert_eq!(r0["codes"], r1["codes"]);
    assert_eq!(
        (&r0["service_start"], &r0["service_end"]),
        (&json!("12/14/2026"), &json!("12/18/2026"))
    );
    assert_eq!(
        (&r1["service_start"], &r1["service_end"]),
        (&json!("12/21/2026"), &json!("12/21/2026"))
    );

    // The page's script builds those cells.
    let (_, _, page) = get_text(&c, &format!("{base}/portal/status?reference={first}")).await;
    for class in ["col-member-id", "col-service-start", "col-service-end"] {
        assert!(
            page.contains(&format!("'{}'", class.trim_start_matches("col-").replace('-', "_"))),
            "{class}"
        );
    }

    // Details and worklist show them too.
    let (_, _, details) = get_text(&c, &format!("{base}/portal/requests/{first}")).await;
    assert!(
        details.contains("<span id=\"detail-service-start\">12/14/2026</span>"),
        "{details}"
    );
    assert!(details.contains("<span id=\"detail-service-end\">12/18/2026</span>"));
    assert!(details.contains("<span id=\"detail-member-id\">SBX100200301</span>"));
    assert!(details.contains("id=\"detail-dates\""), "the old id stays");
    let (_, _, worklist) = get_text(&c, &format!("{base}/portal/worklist")).await;
    assert_eq!(worklist_cell(&worklist, &first, "col-service-start"), "12/14/2026");
    assert_eq!(worklist_cell(&worklist, &first, "col-service-end"), "12/18/2026");
    assert_eq!(worklist_cell(&worklist, &second, "col-service-start"), "12/21/2026");
    assert_eq!(worklist_cell(&worklist, &second, "col-member-id"), "SBX100200301");
    sbx.shutdown().await;
}
