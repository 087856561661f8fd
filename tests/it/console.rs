//! The console (issue 13), as its users meet it: over HTTP with a real
//! listener, a real ledger and the escalation rules attached, and in real
//! headless Chromium driven through chromedriver against cases the engine
//! ran on the sandbox payer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{Duration, Utc};
use precert::case::CaseStatus;
use precert::config::Settings;
use precert::console::{self, Role};
use precert::escalate::Escalator;
use precert::store::{Actor, Ledger};
use reqwest::header::{HeaderMap, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::support::Project;

pub const PASSWORD: &str = "correct horse battery";

/// A project with the sample cases, its console on a free port, and users:
/// `ada` (admin), `sam` (supervisor of both sample practices), `olive`
/// (operator of lakeside-ortho only).
pub struct World {
    pub p: Project,
    pub settings: Arc<Settings>,
    pub ledger: Ledger,
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// How far the ledger's clock runs ahead of the wall clock: tests that
    /// need time to pass move it.
    pub ahead: Arc<Mutex<Duration>>,
}

pub async fn world_with(p: Project) -> World {
    world_with_console(p, "").await
}

/// `world_with`, with more lines in `[console]`.
pub async fn world_with_console(p: Project, console: &str) -> World {
    let config = p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}\n[console]\nlisten = \"127.0.0.1:0\"\n{console}\n"),
    )
    .unwrap();
    for file in ["samples/cases.csv", "samples/cases.json"] {
        let out = p.precert(&["cases", "import", file]);
        assert!(out.status.success(), "{}", super::support::stderr(&out));
    }
    let settings = Arc::new(p.settings());
    let ahead = Arc::new(Mutex::new(Duration::zero()));
    let clock = {
        let ahead = ahead.clone();
        Arc::new(move || Utc::now() + *ahead.lock().unwrap())
    };
    let ledger = Ledger::open(&settings.database_url).await.unwrap().with_clock(clock);
    let key = console::links::LinkKey::of(&ledger).await.unwrap();
    ledger.set_escalation_hook(Arc::new(
        Escalator::new(settings.clone(), &[], Arc::default()).with_link_key(key),
    ));
    for (name, role, practices) in [
        ("ada", Role::Admin, vec![]),
        (
            "sam",
            Role::Supervisor,
            vec!["lakeside-ortho".to_owned(), "valley-imaging".to_owned()],
        ),
        ("olive", Role::Operator, vec!["lakeside-ortho".to_owned()]),
    ] {
        console::users::add(&ledger, &settings, name, role, &practices, PASSWORD)
            .await
            .unwrap();
    }
    let stop = CancellationToken::new();
    let running = console::serve(settings.clone(), ledger.clone(), stop.clone())
        .await
        .unwrap();
    World {
        p,
        settings,
        base: format!("http://{}", running.addr),
        ledger,
        stop,
        task: running.task,
        ahead,
    }
}

pub async fn world() -> World {
    world_with(Project::new()).await
}

impl World {
    pub async fn id(&self, case_ref: &str) -> i64 {
        self.ledger.find_by_ref(case_ref).await.unwrap().pop().unwrap().id
    }

    pub fn advance(&self, by: Duration) {
        *self.ahead.lock().unwrap() += by;
    }

    pub async fn finish(self) {
        self.stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the console stops when asked")
            .unwrap();
        self.ledger.close().await;
    }

    pub fn client(&self) -> Client {
        Client {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: self.base.clone(),
            cookies: HashMap::new(),
            forwarded_for: None,
        }
    }

    async fn audit_actions(&self) -> Vec<String> {
        let mut log = self.ledger.console_audit_log(None, 1000).await.unwrap();
        log.reverse();
        log.into_iter().map(|a| format!("{}:{}", a.action, a.user)).collect()
    }
}

/// A person's browser, as far as HTTP goes: cookies kept, no redirects
/// followed.
pub struct Client {
    http: reqwest::Client,
    base: String,
    cookies: HashMap<String, String>,
    /// An `X-Forwarded-For` header on every request.
    pub forwarded_for: Option<String>,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text, with the slashes minijinja escapes in attributes
    /// (`&#x2f;`) read back, as a browser reads them.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).replace("&#x2f;", "/")
    }

    pub fn location(&self) -> String {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// The first form's CSRF token on the page.
    pub fn csrf(&self) -> String {
        let text = self.text();
        let at = text.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        text[at..].split('"').next().unwrap().to_owned()
    }
}

impl Client {
    fn keep_cookies(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("x-forwarded-for", self.forwarded_for.clone().unwrap_or_default())
            .send()
            .await
            .unwrap();
        self.answer(res).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("x-forwarded-for", self.forwarded_for.clone().unwrap_or_default())
            .form(form)
            .send()
            .await
            .unwrap();
        self.answer(res).await
    }

    /// POSTs a file upload form: text fields and one file field `file`.
    pub async fn post_file(&mut self, path: &str, fields: &[(&str, &str)], file: Vec<u8>) -> Answer {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(file)
                .file_name("letter.pdf")
                .mime_str("application/pdf")
                .unwrap(),
        );
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .multipart(form)
            .send()
            .await
            .unwrap();
        self.answer(res).await
    }

    async fn answer(&mut self, res: reqwest::Response) -> Answer {
        let status = res.status();
        let headers = res.headers().clone();
        self.keep_cookies(&headers);
        let body = res.bytes().await.unwrap().to_vec();
        Answer { status, headers, body }
    }

    /// Signs in through the form; the answer to the form's POST.
    pub async fn sign_in(&mut self, name: &str, password: &str) -> Answer {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = page.csrf();
        self.post("/login", &[("name", name), ("password", password), ("csrf", &csrf)])
            .await
    }

    pub async fn signed_in(&mut self, name: &str) -> Answer {
        let a = self.sign_in(name, PASSWORD).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text());
        self.get("/cases").await
    }
}

fn header<'h>(a: &'h Answer, name: &str) -> &'h str {
    a.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test]
async fn console_signs_in_with_a_strict_httponly_session_and_signs_out() {
    let w = world().await;
    let mut c = w.client();
    let first = c.get("/cases").await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    assert_eq!(first.location(), "/login?next=%2Fcases");

    let signed = c.sign_in("sam", PASSWORD).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.text());
    assert_eq!(signed.location(), "/cases");
    let cookie = signed
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("precert_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http on loopback: {cookie}");
    let token = cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    assert!(token.len() >= 43, "32 random bytes");

    let list = c.get("/cases").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(header(&list, CACHE_CONTROL.as_str()), "no-store");
    assert_eq!(header(&list, "x-frame-options"), "DENY");
    assert_eq!(header(&list, "content-security-policy"), console::CSP);
    assert!(
        !console::CSP.contains("script-src"),
        "no script at all: default-src 'none'"
    );
    assert!(list.text().contains("VI-88120") && list.text().contains("LO-2026-1001"));
    // The ledger keeps only the token's hash.
    assert!(w.ledger.console_session(&token).await.unwrap().is_none());

    let csrf = list.csrf();
    let out = c.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(c.get("/cases").await.status, StatusCode::SEE_OTHER, "signed out");
    let actions = w.audit_actions().await;
    assert!(actions.contains(&"login:sam".to_owned()), "{actions:?}");
    assert!(actions.contains(&"case_list:sam".to_owned()), "{actions:?}");
    assert!(actions.contains(&"logout:sam".to_owned()), "{actions:?}");
    w.finish().await;
}

#[tokio::test]
async fn console_refuses_forms_without_the_sessions_csrf_token() {
    let w = world().await;
    let mut c = w.client();
    // The sign-in form itself needs its token (and the cookie that carries it).
    let bare = c
        .post("/login", &[("name", "sam"), ("password", PASSWORD), ("csrf", "forged")])
        .await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN);
    c.signed_in("sam").await;
    let id = w.id("VI-88120").await;
    w.ledger
        .transition(
            id,
            CaseStatus::NeedsAttention,
            &Actor::user("test"),
            Some("portal changed"),
        )
        .await
        .unwrap();
    let path = "/cases/valley-imaging/VI-88120/status";
    let forged = c.post(path, &[("to", "ready"), ("note", "fixed")]).await;
    assert_eq!(
        forged.status,
        StatusCode::FORBIDDEN,
        "a form without the token is refused"
    );
    let wrong = c
        .post(path, &[("csrf", "not-the-token"), ("to", "ready"), ("note", "fixed")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(w.ledger.get(id).await.unwrap().status, CaseStatus::NeedsAttention);
    w.finish().await;
}

#[tokio::test]
async fn console_locks_an_account_after_five_bad_passwords_until_the_lockout_ends() {
    let w = world().await;
    let mut c = w.client();
    for _ in 0..5 {
        assert_eq!(
            c.sign_in("sam", "wrong password!").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = c.sign_in("sam", PASSWORD).await;
    assert_eq!(
        locked.status,
        StatusCode::UNAUTHORIZED,
        "the right password while locked"
    );
    // The page does not tell a locked account from a wrong password.
    let unknown = c.sign_in("nobody", PASSWORD).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(locked
        .text()
        .contains("Wrong name, password or one-time code, or the account is locked"));
    assert_eq!(
        locked
            .text()
            .split("<main>")
            .nth(1)
            .unwrap()
            .split("name=\"csrf\"")
            .next(),
        unknown
            .text()
            .split("<main>")
            .nth(1)
            .unwrap()
            .split("name=\"csrf\"")
            .next()
    );
    let actions = w.audit_actions().await;
    assert!(actions.contains(&"account_locked:sam".to_owned()), "{actions:?}");
    assert_eq!(actions.iter().filter(|a| *a == "login_failed:sam").count(), 6);
    assert!(actions.contains(&"login_failed:nobody".to_owned()));

    w.advance(Duration::minutes(16));
    assert_eq!(c.sign_in("sam", PASSWORD).await.status, StatusCode::SEE_OTHER);
    w.finish().await;
}

#[tokio::test]
async fn console_sessions_end_when_idle_and_everywhere_on_a_password_reset() {
    let w = world().await;
    let mut c = w.client();
    c.signed_in("olive").await;
    w.advance(Duration::minutes(31));
    assert_eq!(
        c.get("/cases").await.status,
        StatusCode::SEE_OTHER,
        "idle for 31 minutes"
    );

    let mut a = w.client();
    let mut b = w.client();
    a.signed_in("olive").await;
    b.signed_in("olive").await;
    console::users::reset_password(&w.ledger, "olive", "a new long password")
        .await
        .unwrap();
    assert_eq!(a.get("/cases").await.status, StatusCode::SEE_OTHER);
    assert_eq!(b.get("/cases").await.status, StatusCode::SEE_OTHER);
    w.finish().await;
}

#[tokio::test]
async fn console_shows_a_user_only_their_practices_and_404s_the_rest() {
    let w = world().await;
    let mut c = w.client();
    let list = c.signed_in("olive").await;
    assert!(list.text().contains("LO-2026-1001"));
    assert!(
        !list.text().contains("VI-88120"),
        "a valley-imaging case in lakeside's list"
    );
    let other = c.get("/cases/valley-imaging/VI-88120").await;
    let missing = c.get("/cases/lakeside-ortho/NO-SUCH-CASE").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        other.text(),
        missing.text(),
        "another practice's case looks like no case at all"
    );
    let filtered = c.get("/cases?practice=valley-imaging").await;
    assert!(!filtered.text().contains("VI-88120"));
    assert_eq!(
        c.get("/cases/valley-imaging/VI-88120/letters/1").await.status,
        StatusCode::NOT_FOUND
    );
    let csrf = list.csrf();
    let act = c
        .post(
            "/cases/valley-imaging/VI-88120/status",
            &[("csrf", &csrf), ("to", "cancelled"), ("note", "x"), ("confirm", "yes")],
        )
        .await;
    assert_eq!(act.status, StatusCode::NOT_FOUND);
    assert_ne!(
        w.ledger.get(w.id("VI-88120").await).await.unwrap().status,
        CaseStatus::Cancelled
    );
    w.finish().await;
}

#[tokio::test]
async fn console_worklist_is_filtered_and_paged_fifty_at_a_time() {
    let p = Project::new();
    let csv = std::fs::read_to_string(p.path("samples/cases.csv")).unwrap();
    let mut lines = csv.lines();
    let head = lines.next().unwrap();
    let row = lines.next().unwrap();
    let mut many = format!("{head}\n");
    for i in 0..120 {
        many.push_str(&row.replacen("LO-2026-1001", &format!("LO-BULK-{i:04}"), 1));
        many.push('\n');
    }
    p.write("samples/bulk.csv", &many);
    assert!(p.precert(&["cases", "import", "samples/bulk.csv"]).status.success());
    let w = world_with(p).await;
    let mut c = w.client();
    let first = c.signed_in("sam").await;
    let text = first.text();
    assert_eq!(text.matches("<tr>").count() - 1, 50, "one header row and fifty cases");
    assert!(
        text.contains("1–50 of 1"),
        "{}",
        &text[text.find("pager").unwrap()..][..200]
    );
    let third = c.get("/cases?practice=lakeside-ortho&page=3").await.text();
    assert!(third.contains("101–"), "the third page");
    let ready = c.get("/cases?status=ready&q=LO-BULK-011").await.text();
    assert!(ready.contains("LO-BULK-0110") && ready.contains("LO-BULK-0119"));
    assert!(!ready.contains("LO-BULK-0120") && !ready.contains("VI-88120"));
    assert!(ready.contains("1–10 of 10"), "the search and the status together");
    let urgent = c.get("/cases?urgency=urgent").await.text();
    assert!(
        urgent.contains("VI-88120") && !urgent.contains("LO-BULK-0001"),
        "urgent cases only"
    );
    w.finish().await;
}

#[tokio::test]
async fn console_masks_the_patient_until_shown_and_records_the_showing() {
    let w = world().await;
    let mut c = w.client();
    c.signed_in("olive").await;
    let page = c.get("/cases/lakeside-ortho/LO-2026-1001").await;
    assert_eq!(page.status, StatusCode::OK);
    let text = page.text();
    assert!(!text.contains("SBX100200301") && !text.contains("Marsh") && !text.contains("1961-04-12"));
    assert!(text.contains("********0301"), "the member ID's last four");
    let csrf = page.csrf();
    let shown = c
        .post(
            "/cases/lakeside-ortho/LO-2026-1001/reveal",
            &[("csrf", &csrf), ("what", "patient")],
        )
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.text().contains("SBX100200301") && shown.text().contains("Avery Marsh"));
    assert_eq!(header(&shown, CACHE_CONTROL.as_str()), "no-store");
    let events = w.ledger.events(w.id("LO-2026-1001").await).await.unwrap();
    let shown = events
        .iter()
        .find(|e| e.detail["console"] == "shown")
        .expect("an event");
    assert_eq!(shown.actor, "user:olive");
    assert_eq!(shown.detail["what"], "patient identifiers");
    let again = c.get("/cases/lakeside-ortho/LO-2026-1001").await.text();
    assert!(!again.contains("SBX100200301"), "shown once, not for the session");
    let actions = w.audit_actions().await;
    assert!(actions.contains(&"reveal:olive".to_owned()) && actions.contains(&"case_view:olive".to_owned()));
    w.finish().await;
}

#[tokio::test]
async fn console_refuses_to_move_a_case_being_submitted_and_says_who_holds_it() {
    let w = world().await;
    let id = w.id("LO-2026-1001").await;
    w.ledger.claim_submission(id, &Actor::job("submit", 9)).await.unwrap();
    let mut c = w.client();
    c.signed_in("olive").await;
    let page = c.get("/cases/lakeside-ortho/LO-2026-1001").await;
    assert!(
        page.text().contains("Being submitted now"),
        "the lease shows on the page"
    );
    let csrf = page.csrf();
    let refused = c
        .post(
            "/cases/lakeside-ortho/LO-2026-1001/status",
            &[("csrf", &csrf), ("to", "needs_attention"), ("note", "looks stuck")],
        )
        .await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    let text = refused.text();
    assert!(
        text.contains("Refused: this case is being submitted right now by job:submit#9"),
        "{text}"
    );
    assert!(text.contains("Nothing was changed"));
    assert_eq!(w.ledger.get(id).await.unwrap().status, CaseStatus::Submitting);
    w.finish().await;
}

#[tokio::test]
async fn console_records_a_phone_approval_and_queues_a_resubmission() {
    let w = world().await;
    let lo = w.id("LO-2026-1001").await;
    let vi = w.id("VI-88120").await;
    for id in [lo, vi] {
        w.ledger
            .transition(
                id,
                CaseStatus::NeedsAttention,
                &Actor::job("submit", 3),
                Some("captcha"),
            )
            .await
            .unwrap();
    }
    let mut c = w.client();
    let csrf = c.signed_in("sam").await.csrf();
    let no_number = c
        .post(
            "/cases/lakeside-ortho/LO-2026-1001/decision",
            &[("csrf", &csrf), ("outcome", "approved"), ("note", "by phone")],
        )
        .await;
    assert_eq!(no_number.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(no_number.text().contains("authorization number"));
    let done = c
        .post(
            "/cases/lakeside-ortho/LO-2026-1001/decision",
            &[
                ("csrf", &csrf),
                ("outcome", "approved"),
                ("auth_number", "PA-PHONE-7731"),
                ("valid_from", "2026-12-01"),
                ("valid_to", "2027-02-28"),
                ("units_0", "1"),
                ("note", "approved by phone, Dana at the payer's UM line"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    let case = w.ledger.get(lo).await.unwrap();
    assert_eq!(case.status, CaseStatus::Approved);
    let d = case.decision.unwrap();
    assert_eq!(d.auth_number.as_deref(), Some("PA-PHONE-7731"));
    assert_eq!(d.source, "manual:sam");
    let page = c.get(&done.location()).await.text();
    assert!(page.contains("Decision recorded.") && page.contains("PA-PHONE-7731"));

    let queued = c
        .post(
            "/cases/valley-imaging/VI-88120/resubmit",
            &[("csrf", &csrf), ("note", "member ID corrected with the practice")],
        )
        .await;
    assert_eq!(queued.status, StatusCode::SEE_OTHER, "{}", queued.text());
    assert_eq!(w.ledger.get(vi).await.unwrap().status, CaseStatus::Ready);
    let jobs = precert::queue::Queue::new(w.ledger.clone())
        .list(Some("valley-imaging"))
        .await
        .unwrap();
    let job = jobs.iter().find(|j| j.case_id == Some(vi)).expect("a submit job");
    assert_eq!(job.kind, precert::config::Job::Submit);
    assert_eq!(job.payer.as_deref(), Some("sandbox"));
    w.finish().await;
}

#[tokio::test]
async fn console_serves_a_letter_as_pdf_no_store_and_records_the_download() {
    let w = world().await;
    let id = w.id("VI-88120").await;
    let pdf = b"%PDF-1.4\n% synthetic letter\n%%EOF\n".to_vec();
    let rel = std::path::PathBuf::from("letters/valley-imaging/VI-88120/letter.pdf");
    let path = w.settings.data_dir.join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &pdf).unwrap();
    let letter = precert::store::Letter {
        kind: "letter".into(),
        stored_path: rel,
        sha256: precert::files::sha256_hex(&pdf),
        bytes: pdf.len() as u64,
        media_type: "application/pdf".into(),
        fetched_at: None,
    };
    w.ledger
        .add_letter(id, &letter, &Actor::job("letters", 1))
        .await
        .unwrap();
    let mut c = w.client();
    c.signed_in("sam").await;
    let page = c.get("/cases/valley-imaging/VI-88120").await.text();
    assert!(page.contains("/cases/valley-imaging/VI-88120/letters/1"));
    let got = c.get("/cases/valley-imaging/VI-88120/letters/1").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(header(&got, CONTENT_TYPE.as_str()), "application/pdf");
    assert_eq!(header(&got, CACHE_CONTROL.as_str()), "no-store");
    assert!(header(&got, "content-disposition").starts_with("attachment; filename=\"VI-88120-letter-1.pdf\""));
    assert_eq!(got.body, pdf);
    let events = w.ledger.events(id).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.detail["console"] == "downloaded" && e.actor == "user:sam"));
    assert_eq!(
        c.get("/cases/valley-imaging/VI-88120/letters/2").await.status,
        StatusCode::NOT_FOUND
    );
    w.finish().await;
}

#[tokio::test]
async fn console_acknowledges_escalations_and_their_reminders_stop() {
    let w = world().await;
    let id = w.id("VI-88120").await;
    w.ledger
        .transition(
            id,
            CaseStatus::NeedsAttention,
            &Actor::job("submit", 3),
            Some("portal changed"),
        )
        .await
        .unwrap();
    let open = w.ledger.escalations(Some("valley-imaging"), false).await.unwrap();
    let esc = open.iter().find(|e| e.case_id == Some(id)).expect("an escalation");
    let mut c = w.client();
    c.signed_in("sam").await;
    let inbox = c.get("/escalations").await;
    assert!(inbox.text().contains(&format!("value=\"{}\"", esc.id)));
    let csrf = inbox.csrf();
    let ack = c
        .post(
            "/escalations/ack",
            &[
                ("csrf", &csrf),
                ("id", &esc.id.to_string()),
                ("note", "calling the payer"),
                ("back", "/escalations"),
            ],
        )
        .await;
    assert_eq!(ack.status, StatusCode::SEE_OTHER, "{}", ack.text());
    assert_eq!(ack.location(), "/escalations?done=acknowledged");
    let after = w.ledger.escalation(esc.id).await.unwrap();
    assert_eq!(after.state, precert::store::EscalationState::Acknowledged);
    assert_eq!(after.acknowledged_by.as_deref(), Some("user:sam"));
    assert_eq!(after.next_action_at, None, "no more reminders");
    let page = c.get("/escalations?done=acknowledged").await.text();
    assert!(page.contains("Acknowledged: reminders for it stop.") && page.contains("calling the payer"));
    w.finish().await;
}

/// Where the browser test's screenshots go: the project's `shots/`, and
/// `PRECERT_CONSOLE_SHOTS` too when set (how `docs/console/` is made).
fn keep_shot(w: &World, name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let mut dirs = vec![w.p.path("shots")];
    if let Ok(d) = std::env::var("PRECERT_CONSOLE_SHOTS") {
        dirs.push(d.into());
    }
    for d in dirs {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.png")), png).unwrap();
    }
}

async fn text_of(b: &fantoccini::Client, css: &str) -> String {
    b.wait()
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn sign_in_with(b: &fantoccini::Client, base: &str, name: &str) {
    use fantoccini::Locator;
    b.goto(&format!("{base}/cases")).await.unwrap();
    let form = b
        .wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    form.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys(name)
        .await
        .unwrap();
    form.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[normalize-space()='Cases']"))
        .await
        .expect("the worklist after signing in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_a_supervisor_handles_a_denial_and_an_operator_records_a_phone_approval() {
    use fantoccini::Locator;
    use precert::engine::Engine;
    use precert::playbook::{self, Action};
    use precert_sandbox::{HazardsPatch, Sandbox, SandboxConfig};

    // The engine works real cases on the sandbox payer first: a denial with
    // its letter, and a submission the portal's changed layout stops.
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    let w = world_with(p).await;
    let settings = w.p.settings_with_secrets();
    let (playbooks, errors) = playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty(), "{errors:?}");
    let engine = Engine::new(Arc::new(settings.clone()), w.ledger.clone(), playbooks);
    let bot = Actor::job("test", 1);
    let vi = w.id("VI-88120").await;
    let lo = w.id("LO-2026-1001").await;
    for action in [Action::Submit, Action::PollStatus, Action::DownloadLetter] {
        let r = engine.run(action, vi, &bot).await.unwrap();
        assert!(r.failure.is_none(), "{action:?}: {:?}", r.failure);
    }
    assert_eq!(w.ledger.get(vi).await.unwrap().status, CaseStatus::Denied);
    assert_eq!(w.ledger.letters(vi).await.unwrap().len(), 1);
    sandbox
        .set_hazards(HazardsPatch {
            layout_version: Some(2),
            ..Default::default()
        })
        .unwrap();
    let r = engine.run(Action::Submit, lo, &bot).await.unwrap();
    assert_eq!(r.status, CaseStatus::NeedsAttention);
    engine.shutdown().await;

    let driver = precert::browser::Driver::start(&settings.webdriver, &settings.data_dir)
        .await
        .unwrap();
    let b = driver.session().await.unwrap();

    // A supervisor signs in, finds the denied case in the worklist and
    // opens it.
    b.goto(&format!("{}/login", w.base)).await.unwrap();
    b.wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    keep_shot(&w, "login", &b.screenshot().await.unwrap());
    sign_in_with(&b, &w.base, "sam").await;
    keep_shot(&w, "worklist", &b.screenshot().await.unwrap());
    b.find(Locator::LinkText("VI-88120"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[contains(., 'VI-88120')]"))
        .await
        .unwrap();
    let reason = text_of(&b, "dd.quote").await;
    assert!(
        reason.contains("Conservative therapy of at least 6 weeks is not documented"),
        "{reason}"
    );
    assert_eq!(text_of(&b, ".case-head .status").await, "denied");
    keep_shot(&w, "case-denied", &b.screenshot().await.unwrap());

    // The letter link downloads the PDF with this session.
    let href = b
        .find(Locator::Css("a[href$='/letters/1']"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let session = b
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == "precert_session")
        .expect("the session cookie");
    assert_eq!(session.http_only(), Some(true));
    let letter = reqwest::Client::new()
        .get(format!("{}{href}", w.base))
        .header("cookie", format!("precert_session={}", session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(letter.headers()[CONTENT_TYPE], "application/pdf");
    assert!(letter.bytes().await.unwrap().starts_with(b"%PDF-"));

    // …and acknowledges the denial's escalation from the case page.
    let form = b
        .find(Locator::Css("form.inline[action='/escalations/ack']"))
        .await
        .unwrap();
    form.find(Locator::Css("input[name=note]"))
        .await
        .unwrap()
        .send_keys("peer-to-peer requested")
        .await
        .unwrap();
    form.find(Locator::Css("button")).await.unwrap().click().await.unwrap();
    let notice = text_of(&b, ".flash.ok").await;
    assert_eq!(notice, "Acknowledged: reminders for it stop.");
    let escalations = w.ledger.escalations(Some("valley-imaging"), false).await.unwrap();
    let denial = escalations.iter().find(|e| e.case_id == Some(vi)).unwrap();
    assert_eq!(denial.acknowledged_by.as_deref(), Some("user:sam"));
    assert_eq!(denial.next_action_at, None, "its reminders stop");

    b.goto(&format!("{}/escalations", w.base)).await.unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[normalize-space()='Escalations']"))
        .await
        .unwrap();
    keep_shot(&w, "escalations", &b.screenshot().await.unwrap());
    b.find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();

    // An operator sees why the submission stopped, with the screenshot…
    sign_in_with(&b, &w.base, "olive").await;
    b.goto(&format!("{}/cases/lakeside-ortho/LO-2026-1001", w.base))
        .await
        .unwrap();
    let shot = b.wait().for_element(Locator::Css("img.shot")).await.unwrap();
    let width = b
        .execute(
            "return arguments[0].naturalWidth",
            vec![serde_json::to_value(&shot).unwrap()],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(width > 100, "the failure screenshot is shown ({width} px)");
    assert!(text_of(&b, ".run h3").await.contains("portal changed"));
    keep_shot(&w, "case-failed-run", &b.screenshot().await.unwrap());
    let run = b.find(Locator::Css("article.run")).await.unwrap();
    keep_shot(&w, "failed-run", &run.screenshot().await.unwrap());

    // …and records the approval the payer gave by phone.
    let form = b.find(Locator::Css("form[action$='/decision']")).await.unwrap();
    form.find(Locator::Css("select[name=outcome]"))
        .await
        .unwrap()
        .select_by_value("approved")
        .await
        .unwrap();
    for (field, value) in [
        ("auth_number", "PA-PHONE-2291"),
        ("note", "approved by phone, Dana at UM"),
    ] {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&b, ".flash.ok").await, "Decision recorded.");
    assert_eq!(text_of(&b, ".case-head .status").await, "approved");
    assert_eq!(text_of(&b, "dd.mono.big").await, "PA-PHONE-2291");
    keep_shot(&w, "case-approved-by-phone", &b.screenshot().await.unwrap());
    // The case page prints without the menu and the forms.
    let pdf = b.print(fantoccini::wd::PrintConfiguration::default()).await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let pdf_path = w.p.path("shots/case-print.pdf");
    std::fs::write(&pdf_path, &pdf).unwrap();
    if let Ok(d) = std::env::var("PRECERT_CONSOLE_SHOTS") {
        std::fs::write(std::path::Path::new(&d).join("case-print.pdf"), &pdf).unwrap();
    }
    let out = std::process::Command::new("pdftotext")
        .arg(&pdf_path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is installed");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("LO-2026-1001") && printed.contains("PA-PHONE-2291"),
        "{printed}"
    );
    assert!(printed.contains("Timeline"), "{printed}");
    for gone in ["Sign out", "Record decision", "Show patient identifiers"] {
        assert!(!printed.contains(gone), "`{gone}` is not printed");
    }
    // The case page prints without the menu and the forms.
    let pdf = b.print(fantoccini::wd::PrintConfiguration::default()).await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let pdf_path = w.p.path("shots/case-print.pdf");
    std::fs::write(&pdf_path, &pdf).unwrap();
    if let Ok(d) = std::env::var("PRECERT_CONSOLE_SHOTS") {
        std::fs::write(std::path::Path::new(&d).join("case-print.pdf"), &pdf).unwrap();
    }
    let out = std::process::Command::new("pdftotext")
        .arg(&pdf_path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is installed");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("LO-2026-1001") && printed.contains("PA-PHONE-2291"),
        "{printed}"
    );
    assert!(printed.contains("Timeline"), "{printed}");
    for gone in ["Sign out", "Record decision", "Show patient identifiers"] {
        assert!(!printed.contains(gone), "`{gone}` is not printed");
    }
    let case = w.ledger.get(lo).await.unwrap();
    assert_eq!(case.status, CaseStatus::Approved);
    assert_eq!(case.decision.unwrap().auth_number.as_deref(), Some("PA-PHONE-2291"));

    b.close().await.unwrap();
    driver.shutdown().await;
    sandbox.shutdown().await;
    w.finish().await;
}

/// What the console keeps in the ledger behaves the same on both backends:
/// users, the lockout count, sessions, the append-only audit and the
/// worklist's page query.
async fn console_store_on(backend: super::postgres::Backend) {
    use precert::store::{AuditEntry, CaseQuery};
    let db = super::postgres::TestDb::new(backend).await;
    let ledger = db.ledger().await;
    db.import(&ledger, "samples/cases.csv").await;
    db.import(&ledger, "samples/cases.json").await;
    let practices = vec!["lakeside-ortho".to_owned()];
    assert!(ledger
        .add_console_user("olive", "operator", &practices, "$argon2id$x")
        .await
        .unwrap());
    assert!(
        !ledger
            .add_console_user("olive", "admin", &[], "$argon2id$y")
            .await
            .unwrap(),
        "names are unique"
    );
    let until = Utc::now() + Duration::minutes(15);
    assert_eq!(ledger.console_login_failed("olive", 2, until).await.unwrap(), 1);
    assert_eq!(ledger.console_login_failed("olive", 2, until).await.unwrap(), 2);
    let user = ledger.console_user("olive").await.unwrap().unwrap();
    assert_eq!(user.practices, practices);
    assert!(
        user.locked_until.is_some_and(|t| t > Utc::now()),
        "locked at the threshold"
    );

    ledger
        .create_console_session(
            "hash-1",
            "olive",
            "csrf-1",
            Utc::now() + Duration::hours(1),
            Some("127.0.0.1"),
        )
        .await
        .unwrap();
    let session = ledger.console_session("hash-1").await.unwrap().unwrap();
    assert_eq!((session.user.as_str(), session.csrf.as_str()), ("olive", "csrf-1"));
    let user = ledger.console_user("olive").await.unwrap().unwrap();
    assert_eq!(
        (user.failed_logins, user.locked_until),
        (0, None),
        "a sign-in resets the count"
    );
    ledger.touch_console_session("hash-1").await.unwrap();
    assert!(ledger.set_console_password("olive", "$argon2id$z").await.unwrap());
    assert!(
        ledger.console_session("hash-1").await.unwrap().is_none(),
        "a new password ends sessions"
    );

    let id = ledger
        .console_audit(&AuditEntry {
            user: "olive",
            action: "case_view",
            practice: Some("lakeside-ortho"),
            case_id: Some(1),
            remote: Some("127.0.0.1"),
            detail: serde_json::json!({ "patient_shown": false }),
        })
        .await
        .unwrap();
    let log = ledger.console_audit_log(Some(1), 10).await.unwrap();
    assert_eq!((log.len(), log[0].id, log[0].action.as_str()), (1, id, "case_view"));
    assert!(ledger
        .execute_raw("UPDATE console_audit SET action = 'x'")
        .await
        .is_err());
    assert!(ledger.execute_raw("DELETE FROM console_audit").await.is_err());

    let page = |q: CaseQuery| {
        let ledger = ledger.clone();
        async move { ledger.case_page(&q).await.unwrap() }
    };
    let all = page(CaseQuery {
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(all.total, all.counts.iter().map(|(_, n)| n).sum::<i64>());
    let mine = page(CaseQuery {
        allowed: Some(practices.clone()),
        limit: 2,
        offset: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(mine.cases.len(), 2);
    assert!(mine.cases.iter().all(|c| c.data.practice_id == "lakeside-ortho"));
    assert!(mine.total > 2 && mine.total < all.total);
    let found = page(CaseQuery {
        search: Some("LO-2026-100".into()),
        status: Some(CaseStatus::Ready),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert!(!found.cases.is_empty() && found.cases.iter().all(|c| c.data.case_ref.starts_with("LO-2026-100")));
    // Case-insensitive on both backends (each through its own index).
    let lower = page(CaseQuery {
        search: Some("lo-2026-100".into()),
        status: Some(CaseStatus::Ready),
        limit: 50,
        ..Default::default()
    })
    .await;
    let ids = |p: &precert::store::CasePage| p.cases.iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!((ids(&lower), lower.total), (ids(&found), found.total));
    let none = page(CaseQuery {
        allowed: Some(vec![]),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(
        (none.total, none.cases.len()),
        (0, 0),
        "a user without practices sees nothing"
    );
    let literal = page(CaseQuery {
        search: Some("LO%".into()),
        limit: 50,
        ..Default::default()
    })
    .await;
    assert_eq!(literal.total, 0, "`%` is searched for, not a wildcard");

    // Keys, links used once, TOTP steps, access changes.
    let key = ledger.console_key("ack_link", "first").await.unwrap();
    assert_eq!(key, "first");
    assert_eq!(
        ledger.console_key("ack_link", "second").await.unwrap(),
        "first",
        "made once"
    );
    assert_eq!(ledger.use_console_link("n-1", 7, "olive").await.unwrap(), None);
    let (_, by) = ledger
        .use_console_link("n-1", 7, "sam")
        .await
        .unwrap()
        .expect("used before");
    assert_eq!(by, "olive");
    assert!(ledger.set_console_totp("olive", Some("SEED")).await.unwrap());
    assert!(ledger.use_console_totp_step("olive", 100).await.unwrap());
    assert!(!ledger.use_console_totp_step("olive", 100).await.unwrap(), "once");
    assert!(
        !ledger.use_console_totp_step("olive", 99).await.unwrap(),
        "nor an older one"
    );
    let user = ledger.console_user("olive").await.unwrap().unwrap();
    assert_eq!((user.totp_secret.as_deref(), user.totp_last_step), (Some("SEED"), 100));
    let both = vec!["lakeside-ortho".to_owned(), "valley-imaging".to_owned()];
    assert!(ledger
        .set_console_user_access("olive", "supervisor", &both)
        .await
        .unwrap());
    assert_eq!(ledger.console_user("olive").await.unwrap().unwrap().practices, both);

    // The worklist's deadline and export reads, and the payers page's.
    let lo = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    let a = Actor::user("test");
    ledger
        .transition(lo.id, CaseStatus::Submitting, &a, None)
        .await
        .unwrap();
    ledger.transition(lo.id, CaseStatus::Pending, &a, None).await.unwrap();
    let awaiting = ledger
        .cases_matching(
            &CaseQuery {
                awaiting_only: true,
                created_before: Some(Utc::now() + Duration::minutes(1)),
                oldest_first: true,
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(awaiting.len(), 1);
    assert!(awaiting[0].1.is_some(), "with its submission time");

    // Stored decision deadlines (migration 20): computed for the undecided
    // case, read by range under the rules they name, forgotten when the
    // rules change, cleared when the case changes.
    let stale = ledger.stale_deadlines(100).await.unwrap();
    assert_eq!(stale.iter().map(|c| c.id).collect::<Vec<_>>(), vec![lo.id]);
    let (version, submitted) = (stale[0].version, stale[0].submitted_at);
    let due = submitted + Duration::days(7);
    let in_range = |rules: &str| precert::store::CaseQuery {
        deadline: Some(precert::store::DeadlineRange {
            rules: rules.into(),
            after: Some(due - Duration::hours(1)),
            until: due,
        }),
        limit: 50,
        ..Default::default()
    };
    assert_eq!(
        ledger
            .store_deadlines("r1", &[(lo.id, version - 1, Some(due))])
            .await
            .unwrap(),
        0,
        "read at an older version: left for the next look"
    );
    assert_eq!(
        ledger
            .store_deadlines("r1", &[(lo.id, version, Some(due))])
            .await
            .unwrap(),
        1
    );
    assert!(ledger.stale_deadlines(100).await.unwrap().is_empty());
    let page = ledger.case_page(&in_range("r1")).await.unwrap();
    assert_eq!((page.total, page.cases[0].id), (1, lo.id));
    assert_eq!(page.counts, vec![(CaseStatus::Pending, 1)]);
    let mut later = in_range("r1");
    later.deadline.as_mut().unwrap().until = due - Duration::minutes(1);
    assert_eq!(ledger.case_page(&later).await.unwrap().total, 0, "the range is exact");
    assert_eq!(ledger.case_page(&in_range("r2")).await.unwrap().total, 0);
    assert_eq!(ledger.forget_deadlines_of_other_rules("r1").await.unwrap(), 0);
    assert_eq!(ledger.forget_deadlines_of_other_rules("r2").await.unwrap(), 1);
    assert_eq!(ledger.stale_deadlines(100).await.unwrap().len(), 1, "computed again");
    ledger
        .store_deadlines("r2", &[(lo.id, version, Some(due))])
        .await
        .unwrap();
    ledger
        .transition(lo.id, CaseStatus::PendedForInfo, &a, None)
        .await
        .unwrap();
    assert_eq!(
        ledger.case_page(&in_range("r2")).await.unwrap().total,
        0,
        "changed since"
    );
    assert_eq!(ledger.stale_deadlines(100).await.unwrap().len(), 1);
    ledger.transition(lo.id, CaseStatus::Pending, &a, None).await.unwrap();
    let activity = ledger
        .payer_activity(Some(&practices), Utc::now() - Duration::hours(24))
        .await
        .unwrap();
    assert!(activity.iter().all(|p| p.practice_id == "lakeside-ortho"));
    let sandbox = activity.iter().find(|p| p.payer == "sandbox").unwrap();
    assert!(sandbox.oldest_pending_since.is_some());
    assert!(
        sandbox.statuses.contains(&(CaseStatus::Pending, 1)),
        "{:?}",
        sandbox.statuses
    );
    ledger.close().await;
}

#[tokio::test]
async fn console_store_on_sqlite() {
    console_store_on(super::postgres::Backend::Sqlite).await;
}

#[tokio::test]
async fn console_store_on_postgres() {
    console_store_on(super::postgres::Backend::Postgres).await;
}

#[tokio::test]
async fn precert_users_and_precert_console_from_the_command_line() {
    use std::io::{BufRead, Write};
    use std::process::Stdio;
    let p = Project::new();
    let config = p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[console]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let add = |args: &[&str], password: &str| {
        let mut child = p
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = add(
        &[
            "users",
            "add",
            "sam",
            "--role",
            "supervisor",
            "--practice",
            "valley-imaging",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert!(ok.status.success(), "{}", super::support::stderr(&ok));
    let short = add(
        &[
            "users",
            "add",
            "kim",
            "--role",
            "operator",
            "--practice",
            "valley-imaging",
            "--password-stdin",
        ],
        "short",
    );
    assert_eq!(short.status.code(), Some(1));
    assert!(super::support::stderr(&short).contains("too short"));
    let nowhere = add(
        &[
            "users",
            "add",
            "kim",
            "--role",
            "operator",
            "--practice",
            "nowhere",
            "--password-stdin",
        ],
        PASSWORD,
    );
    assert!(super::support::stderr(&nowhere).contains("no practice `nowhere`"));
    let list = p.precert(&["users", "list"]);
    let listed = super::support::stdout(&list);
    assert!(
        listed.contains("sam") && listed.contains("supervisor") && listed.contains("valley-imaging"),
        "{listed}"
    );
    assert!(!listed.contains("argon2"), "no hash is printed");
    assert!(listed.contains("password"), "sign-in without two-step: {listed}");
    let out = p.precert(&["users", "remove-totp", "nobody"]);
    assert!(!out.status.success());
    assert!(super::support::stderr(&out).contains("no user named `nobody`"));
    assert!(p.precert(&["users", "remove-totp", "sam"]).status.success());

    let mut console = p.command(&["console"]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = console.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("Console at ") {
                let _ = tx.send(url.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the console says where it listens");
    let mut c = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: url,
        cookies: HashMap::new(),
        forwarded_for: None,
    };
    let list = c.signed_in("sam").await;
    assert!(list.text().contains("VI-88120") || list.text().contains("0 cases"));
    assert!(p.precert(&["users", "disable", "sam"]).status.success());
    assert_eq!(
        c.get("/cases").await.status,
        StatusCode::SEE_OTHER,
        "disabling ends the session"
    );
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(console.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || console.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn console_cookies_are_secure_when_people_reach_it_over_https() {
    let p = Project::new();
    let config = p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replacen("[http]\n", "[http]\npublic_url = \"https://precert.example.org\"\n", 1);
    std::fs::write(&config, text).unwrap();
    let w = world_with(p).await;
    let mut c = w.client();
    let login = c.get("/login").await;
    assert!(header(&login, "set-cookie").contains("; Secure"));
    let signed = c.sign_in("ada", PASSWORD).await;
    let cookie = header(&signed, "set-cookie");
    assert!(
        cookie.starts_with("precert_session=") && cookie.contains("; Secure"),
        "{cookie}"
    );
    assert_eq!(
        console::case_url(&w.settings, "valley-imaging", "VI-88120"),
        "https://precert.example.org/cases/valley-imaging/VI-88120"
    );
    w.finish().await;
}

/// The escalation mail of a case sent to needs_attention, as queued: the
/// escalation's number and the mail's text.
async fn attention_mail(w: &World, case_ref: &str) -> (i64, String) {
    let id = w.id(case_ref).await;
    w.ledger
        .transition(
            id,
            CaseStatus::NeedsAttention,
            &Actor::job("submit", 3),
            Some("portal changed: no element #member-id"),
        )
        .await
        .unwrap();
    let claimed = w
        .ledger
        .claim_mail(Duration::minutes(5))
        .await
        .unwrap()
        .expect("the escalation's mail");
    (claimed.escalation_id.unwrap(), claimed.mail.text)
}

/// The acknowledgement link in a mail's text.
fn ack_link_in(text: &str) -> String {
    let at = text.find("/ack/").expect("an acknowledgement link");
    let start = text[..at].rfind("http").unwrap();
    text[start..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn console_mail_links_to_the_case_page_and_a_signed_link_acknowledges_once() {
    let w = world().await;
    let (esc, text) = attention_mail(&w, "VI-88120").await;
    let public = &w.settings.console.public_url;
    assert!(
        text.contains(&format!("{public}/cases/valley-imaging/VI-88120")),
        "the console's case page: {text}"
    );
    assert!(text.contains(&format!("{public}/escalations")), "{text}");
    assert!(!text.contains("precert escalations ack"), "no shell command: {text}");
    let link = ack_link_in(&text);
    assert!(link.starts_with(&format!("{public}/ack/{esc}.")), "{link}");
    let path = link.strip_prefix(public.as_str()).unwrap().to_owned();
    let case = w.ledger.get(w.id("VI-88120").await).await.unwrap();
    let member = case.data.patient.member_id.expose().to_owned();
    assert!(
        !link.contains(&member) && !link.contains(&member[member.len() - 4..]),
        "{link}"
    );

    // Not signed in: the link leads through the sign-in page and back.
    let mut c = w.client();
    let first = c.get(&path).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER);
    let login_page = first.location();
    assert!(login_page.starts_with("/login?next=%2Fack%2F"), "{login_page}");
    let form = c.get(&login_page).await;
    let back = c
        .post(
            "/login",
            &[
                ("name", "sam"),
                ("password", PASSWORD),
                ("csrf", &form.csrf()),
                ("next", &path),
            ],
        )
        .await;
    assert_eq!(back.location(), path);
    let confirm = c.get(&path).await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.text());
    assert!(confirm.text().contains(&format!("Acknowledge escalation #{esc}")));
    assert_eq!(
        w.ledger.escalation(esc).await.unwrap().state,
        precert::store::EscalationState::Open,
        "opening the link changes nothing"
    );
    // The confirmation is a form with the session's CSRF token.
    let forged = c.post(&path, &[("csrf", "nope"), ("note", "x")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let done = c
        .post(
            &path,
            &[("csrf", &confirm.csrf()), ("note", "calling the portal's help desk")],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text());
    assert_eq!(done.location(), "/cases/valley-imaging/VI-88120?done=acknowledged");
    let e = w.ledger.escalation(esc).await.unwrap();
    assert_eq!(e.state, precert::store::EscalationState::Acknowledged);
    assert_eq!(e.acknowledged_by.as_deref(), Some("user:sam"));
    assert_eq!(e.note.as_deref(), Some("calling the portal's help desk"));
    assert_eq!(e.next_action_at, None, "its reminders stop");

    // Used: refused, saying when and by whom.
    let again = c.get(&path).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.text().contains("was used at") && again.text().contains("by sam"));
    assert_eq!(
        c.post(&path, &[("csrf", &confirm.csrf())]).await.status,
        StatusCode::CONFLICT
    );

    // Altered: another escalation's number under this signature.
    let forged_path = path.replacen(&format!("/ack/{esc}."), &format!("/ack/{}.", esc + 1), 1);
    let forged = c.get(&forged_path).await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(forged.text().contains("not one this console made"));

    // Expired.
    let (esc2, _) = attention_mail(&w, "LO-2026-1002").await;
    let key = console::links::LinkKey::of(&w.ledger).await.unwrap();
    let old = key.ack_token(esc2, Utc::now() - Duration::minutes(1));
    let expired = c.get(&format!("/ack/{old}")).await;
    assert_eq!(expired.status, StatusCode::GONE);
    assert!(expired.text().contains("Link expired"));
    assert_eq!(
        w.ledger.escalation(esc2).await.unwrap().state,
        precert::store::EscalationState::Open
    );

    // A link followed on another site (webmail) comes without the
    // SameSite=Strict cookie: the console opens it again from its own page.
    let cross = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}{path}", w.base))
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::OK);
    let page = cross.text().await.unwrap().replace("&#x2f;", "/");
    assert!(
        page.contains(&format!("<meta http-equiv=\"refresh\" content=\"0; url={path}\">")),
        "{page}"
    );

    // Another practice's escalation is not there at all for olive.
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let fresh = key.ack_token(esc, Utc::now() + Duration::hours(1));
    assert_eq!(olive.get(&format!("/ack/{fresh}")).await.status, StatusCode::NOT_FOUND);

    let log = w.audit_actions().await;
    for line in ["acknowledge:sam", "ack_link_refused:sam", "ack_link_refused:olive"] {
        assert!(log.iter().any(|l| l == line), "{line} in {log:?}");
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_a_supervisor_acknowledges_from_the_mail_once() {
    use fantoccini::Locator;
    let w = world().await;
    let (esc, text) = attention_mail(&w, "VI-88120").await;
    let link = ack_link_in(&text);
    // The console listens on a port of the test's; the mail's host is the
    // configured public address.
    let url = link.replacen(&w.settings.console.public_url, &w.base, 1);
    let settings = w.p.settings_with_secrets();
    let driver = precert::browser::Driver::start(&settings.webdriver, &settings.data_dir)
        .await
        .unwrap();
    let b = driver.session().await.unwrap();
    b.goto(&url).await.unwrap();
    let form = b
        .wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .expect("the sign-in page first");
    for (field, value) in [("name", "sam"), ("password", PASSWORD)] {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .unwrap()
            .send_keys(value)
            .await
            .unwrap();
    }
    form.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let heading = text_of(&b, "h1").await;
    assert_eq!(heading, format!("Acknowledge escalation #{esc}"));
    keep_shot(&w, "ack-link", &b.screenshot().await.unwrap());
    let confirm = b.find(Locator::Css("form.ack-link")).await.unwrap();
    confirm
        .find(Locator::Css("input[name=note]"))
        .await
        .unwrap()
        .send_keys("on it")
        .await
        .unwrap();
    confirm
        .find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(text_of(&b, ".flash.ok").await, "Acknowledged: reminders for it stop.");
    let e = w.ledger.escalation(esc).await.unwrap();
    assert_eq!(e.acknowledged_by.as_deref(), Some("user:sam"));
    assert_eq!(e.next_action_at, None);
    // The same link again is refused.
    b.goto(&url).await.unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[normalize-space()='Link used already']"))
        .await
        .expect("a used link is refused");
    // Followed from another site (a page of another origin, as webmail is),
    // the link still finds the signed-in session, not the sign-in page.
    b.goto(&format!("data:text/html,<a id=mail href=\"{url}\">open</a>"))
        .await
        .unwrap();
    b.find(Locator::Id("mail")).await.unwrap().click().await.unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[normalize-space()='Link used already']"))
        .await
        .expect("the session, not the sign-in page, after a link from another site");
    // The payers page shows a paused payer and the work per payer.
    Escalator::new(w.settings.clone(), &[], Arc::default())
        .payer_alert(
            &w.ledger,
            &"sandbox-pas".into(),
            Some("HTTP 503 from the PAS endpoint, 5 times in a row"),
        )
        .await
        .unwrap();
    b.goto(&format!("{}/payers", w.base)).await.unwrap();
    assert!(text_of(&b, "tr#p-lakeside-ortho-sandbox-pas .automation")
        .await
        .starts_with("paused since"));
    keep_shot(&w, "payers", &b.screenshot().await.unwrap());
    b.close().await.unwrap();
    driver.shutdown().await;
    w.finish().await;
}

/// The value of a hidden field on a page.
fn hidden(a: &Answer, name: &str) -> String {
    let text = a.text();
    let needle = format!("name=\"{name}\" value=\"");
    let at = text.find(&needle).unwrap_or_else(|| panic!("no {name} in {text}")) + needle.len();
    text[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn console_an_admin_manages_users_and_a_reset_signs_the_user_out_everywhere() {
    let w = world().await;
    let mut ada = w.client();
    ada.signed_in("ada").await;
    let mut sam = w.client();
    sam.signed_in("sam").await;
    assert_eq!(sam.get("/users").await.status, StatusCode::NOT_FOUND, "only an admin");
    let page = ada.get("/users").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("olive") && page.text().contains("every practice"));
    let csrf = page.csrf();
    let new_password = "a new long password";

    // Add: checked as `precert users add` checks.
    let short = ada
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "pat"),
                ("role", "operator"),
                ("practice", "valley-imaging"),
                ("password", "short"),
                ("password2", "short"),
            ],
        )
        .await;
    assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(short.text().contains("too short"), "{}", short.text());
    assert_eq!(
        ada.post(
            "/users",
            &[
                ("name", "pat"),
                ("role", "operator"),
                ("password", PASSWORD),
                ("password2", PASSWORD)
            ]
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "no CSRF token"
    );
    let added = ada
        .post(
            "/users",
            &[
                ("csrf", &csrf),
                ("name", "pat"),
                ("role", "operator"),
                ("practice", "valley-imaging"),
                ("password", PASSWORD),
                ("password2", PASSWORD),
            ],
        )
        .await;
    assert_eq!(added.location(), "/users?done=added", "{}", added.text());
    let pat = w.ledger.console_user("pat").await.unwrap().unwrap();
    assert_eq!(
        (pat.role.as_str(), pat.practices.clone()),
        ("operator", vec!["valley-imaging".to_owned()])
    );
    let mut pc = w.client();
    pc.signed_in("pat").await;

    // Reset olive's password: every session of hers ends.
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let reset = ada
        .post(
            "/users/olive",
            &[
                ("csrf", &csrf),
                ("do", "reset"),
                ("password", new_password),
                ("password2", new_password),
            ],
        )
        .await;
    assert_eq!(reset.location(), "/users?done=reset");
    assert_eq!(
        olive.get("/cases").await.status,
        StatusCode::SEE_OTHER,
        "signed out everywhere"
    );
    assert_eq!(olive.sign_in("olive", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(olive.sign_in("olive", new_password).await.status, StatusCode::SEE_OTHER);

    // Role and practices: olive becomes a supervisor of valley-imaging.
    let access = ada
        .post(
            "/users/olive",
            &[
                ("csrf", &csrf),
                ("do", "access"),
                ("role", "supervisor"),
                ("practice", "valley-imaging"),
            ],
        )
        .await;
    assert_eq!(access.location(), "/users?done=access");
    let u = w.ledger.console_user("olive").await.unwrap().unwrap();
    assert_eq!(
        (u.role.as_str(), u.practices.clone()),
        ("supervisor", vec!["valley-imaging".to_owned()])
    );
    assert_eq!(
        olive.get("/cases").await.status,
        StatusCode::SEE_OTHER,
        "she signs in again"
    );

    // Disable and enable pat; an admin cannot disable themselves.
    assert_eq!(
        ada.post("/users/pat", &[("csrf", &csrf), ("do", "disable")])
            .await
            .location(),
        "/users?done=disabled"
    );
    assert_eq!(pc.get("/cases").await.status, StatusCode::SEE_OTHER);
    assert_eq!(pc.sign_in("pat", PASSWORD).await.status, StatusCode::UNAUTHORIZED);
    ada.post("/users/pat", &[("csrf", &csrf), ("do", "enable")]).await;
    assert_eq!(pc.sign_in("pat", PASSWORD).await.status, StatusCode::SEE_OTHER);
    let me = ada.post("/users/ada", &[("csrf", &csrf), ("do", "disable")]).await;
    assert_eq!(me.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!w.ledger.console_user("ada").await.unwrap().unwrap().disabled);

    let log = w.audit_actions().await;
    for line in [
        "user_add:ada",
        "user_reset_password:ada",
        "user_access:ada",
        "user_disable:ada",
        "user_enable:ada",
    ] {
        assert!(log.iter().any(|l| l == line), "{line} in {log:?}");
    }
    w.finish().await;
}

#[tokio::test]
async fn console_totp_enrolment_then_sign_in_needs_a_code_each_used_once() {
    let w = world().await;
    let now_code = |seed: &str, ahead: i64| {
        let t = (Utc::now().timestamp() + ahead) as u64;
        precert::totp::code(seed, t).unwrap()
    };
    let mut sam = w.client();
    sam.signed_in("sam").await;
    let account = sam.get("/account").await;
    assert!(account.text().contains("Set up two-step sign-in"));
    let start = sam
        .post("/account/totp", &[("csrf", &account.csrf()), ("do", "start")])
        .await;
    let seed = hidden(&start, "seed");
    assert_eq!(seed.len(), 32);
    let wrong = sam
        .post(
            "/account/totp",
            &[
                ("csrf", &account.csrf()),
                ("do", "confirm"),
                ("seed", &seed),
                ("code", "000000"),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(w
        .ledger
        .console_user("sam")
        .await
        .unwrap()
        .unwrap()
        .totp_secret
        .is_none());
    let on = sam
        .post(
            "/account/totp",
            &[
                ("csrf", &account.csrf()),
                ("do", "confirm"),
                ("seed", &seed),
                ("code", &now_code(&seed, 0)),
            ],
        )
        .await;
    assert_eq!(on.location(), "/account?done=totp_on", "{}", on.text());
    // The ledger holds the seed sealed with the console's key, not the seed.
    let stored = w
        .ledger
        .console_user("sam")
        .await
        .unwrap()
        .unwrap()
        .totp_secret
        .unwrap();
    assert!(stored.starts_with("v1:") && !stored.contains(&seed), "{stored}");
    let key = w.settings.data_dir.join(console::seeds::KEY_FILE);
    assert_eq!(mode_of(&key), 0o600);

    // Sign-in now needs the code; each code signs in once.
    let sign_in = |code: String| {
        let mut c = w.client();
        async move {
            let form = c.get("/login").await;
            let a = c
                .post(
                    "/login",
                    &[
                        ("name", "sam"),
                        ("password", PASSWORD),
                        ("code", &code),
                        ("csrf", &form.csrf()),
                    ],
                )
                .await;
            a.status
        }
    };
    assert_eq!(
        sign_in(String::new()).await,
        StatusCode::UNAUTHORIZED,
        "a password alone"
    );
    assert_eq!(sign_in("123456".into()).await, StatusCode::UNAUTHORIZED);
    let next = now_code(&seed, 30);
    assert_eq!(sign_in(next.clone()).await, StatusCode::SEE_OTHER);
    assert_eq!(sign_in(next).await, StatusCode::UNAUTHORIZED, "a code works once");
    let log = w.audit_actions().await;
    assert!(log.iter().any(|l| l == "totp_enrol:sam"), "{log:?}");

    // Lost phone: an admin removes it, and the password alone works again.
    let mut ada = w.client();
    let page = ada.signed_in("ada").await;
    let off = ada
        .post("/users/sam", &[("csrf", &page.csrf()), ("do", "totp_off")])
        .await;
    assert_eq!(off.location(), "/users?done=totp_off");
    assert_eq!(sign_in(String::new()).await, StatusCode::SEE_OTHER);
    w.finish().await;
}

#[tokio::test]
async fn console_payers_page_shows_a_paused_payer_and_its_work_for_the_users_practices_only() {
    use precert::config::Job;
    use precert::queue::{NewJob, Queue};
    let w = world().await;
    let esc = Escalator::new(w.settings.clone(), &[], Arc::default());
    esc.payer_alert(&w.ledger, &"sandbox".into(), Some("portal down: HTTP 503 at login"))
        .await
        .unwrap();
    let now = w.ledger.now();
    Queue::new(w.ledger.clone())
        .enqueue(&NewJob::new(Job::Poll, "lakeside-ortho", now).payer("sandbox"), now)
        .await
        .unwrap();
    let id = w.id("LO-2026-1001").await;
    let a = Actor::user("test");
    w.ledger.transition(id, CaseStatus::Submitting, &a, None).await.unwrap();
    w.ledger.transition(id, CaseStatus::Pending, &a, None).await.unwrap();
    w.advance(Duration::hours(5));

    let mut olive = w.client();
    olive.signed_in("olive").await;
    let page = olive.get("/payers").await;
    assert_eq!(page.status, StatusCode::OK);
    let text = page.text();
    assert!(text.contains("id=\"p-lakeside-ortho-sandbox\""), "{text}");
    assert!(text.contains("id=\"p-lakeside-ortho-sandbox-pas\""), "{text}");
    assert!(!text.contains("valley-imaging"), "not olive's practice: {text}");
    let row = &text[text.find("id=\"p-lakeside-ortho-sandbox\"").unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("class=\"paused\"") && row.contains("HTTP 503"), "{row}");
    assert!(row.contains("<td>1 / 0</td>"), "one poll waiting: {row}");
    assert!(
        row.contains("5 h 0 min") || row.contains("5 h 1 min"),
        "the oldest undecided: {row}"
    );
    let pas = &text[text.find("id=\"p-lakeside-ortho-sandbox-pas\"").unwrap()..];
    let pas = &pas[..pas.find("</tr>").unwrap()];
    assert!(pas.contains("running"), "{pas}");
    let mut sam = w.client();
    sam.signed_in("sam").await;
    assert!(sam.get("/payers").await.text().contains("p-valley-imaging-sandbox"));
    w.finish().await;
}

#[tokio::test]
async fn console_worklist_filters_by_deadline_and_age_and_exports_csv_without_member_ids() {
    let w = world().await;
    let id = w.id("LO-2026-1001").await;
    let a = Actor::user("test");
    w.ledger.transition(id, CaseStatus::Submitting, &a, None).await.unwrap();
    w.ledger.transition(id, CaseStatus::Pending, &a, None).await.unwrap();
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let listed = |page: &Answer| page.text().contains(">LO-2026-1001</a>");

    // Standard: 7 calendar days. Six and a half days on, it is due within
    // 24 hours and not overdue; a day later it is overdue.
    assert!(!listed(&olive.get("/cases?due=24").await));
    w.advance(Duration::hours(6 * 24 + 12));
    // (Days later: a new session.)
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let due = olive.get("/cases?due=24").await;
    assert!(listed(&due), "{}", due.text());
    assert!(due.text().contains("in 1"), "the deadline is shown: {}", due.text());
    assert!(!listed(&olive.get("/cases?due=overdue").await));
    w.advance(Duration::days(1));
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let overdue = olive.get("/cases?due=overdue").await;
    assert!(
        listed(&overdue) && overdue.text().contains("overdue by"),
        "{}",
        overdue.text()
    );
    assert!(
        !overdue.text().contains(">LO-2026-1002</a>"),
        "not submitted: no deadline"
    );
    // Age: every sample case is older than 7 days now, none older than 30.
    assert!(listed(&olive.get("/cases?age=7").await));
    assert!(!listed(&olive.get("/cases?age=30").await));

    // The export: the same filters, CSV, member IDs masked, audited.
    let csv = olive.get("/cases.csv?practice=valley-imaging").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(header(&csv, "content-type"), "text/csv; charset=utf-8");
    assert!(header(&csv, "content-disposition").starts_with("attachment; filename=\"precert-cases-"));
    let body = String::from_utf8(csv.body.clone()).unwrap();
    assert!(body.starts_with("practice,case_id,payer,"), "{body}");
    assert!(!body.contains("VI-"), "not olive's practice: {body}");
    assert!(body.contains("LO-2026-1001"));
    let mut reader = csv_reader(&body);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let lo = rows.iter().find(|r| &r[1] == "LO-2026-1001").unwrap();
    assert_eq!(&lo[4], "pending");
    assert_eq!(&lo[6], "A. M.");
    assert!(lo[7].ends_with("0301") && lo[7].starts_with('*'), "masked: {}", &lo[7]);
    assert!(!lo[13].is_empty(), "the decision deadline");
    assert!(!body.contains("SBX100200301") && !body.contains("Marsh"), "{body}");
    let overdue_csv = olive.get("/cases.csv?due=overdue").await;
    let body = String::from_utf8(overdue_csv.body.clone()).unwrap();
    assert_eq!(body.lines().count(), 2, "the header and LO-2026-1001: {body}");
    let log = w.ledger.console_audit_log(None, 5).await.unwrap();
    assert!(log
        .iter()
        .any(|l| l.action == "case_export" && l.user == "olive" && l.detail["shown"] == 1));
    w.finish().await;
}

#[tokio::test]
async fn console_deadline_filters_follow_a_change_of_the_escalation_rules() {
    // The deadlines the filters read are stored under the rules they were
    // computed by: a console started with other rules (a reload with
    // `standard_days = 3`) computes them again, and so does the first one
    // after it. Each answers by its own rules.
    let w = world().await;
    let id = w.id("LO-2026-1001").await;
    let a = Actor::user("test");
    w.ledger.transition(id, CaseStatus::Submitting, &a, None).await.unwrap();
    w.ledger.transition(id, CaseStatus::Pending, &a, None).await.unwrap();
    let config = w.p.config_path();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("standard_days = 7"));
    std::fs::write(&config, text.replace("standard_days = 7", "standard_days = 3")).unwrap();
    let shorter = Arc::new(w.p.settings());
    let stop = CancellationToken::new();
    let reloaded = console::serve(shorter, w.ledger.clone(), stop.clone()).await.unwrap();
    // Four days on: past a 3-day window, within 4 days of a 7-day one.
    w.advance(Duration::days(4));
    let listed = |page: &Answer| page.text().contains(">LO-2026-1001</a>");
    let mut seven = w.client();
    seven.signed_in("olive").await;
    let mut three = w.client();
    three.base = format!("http://{}", reloaded.addr);
    three.signed_in("olive").await;
    for _ in 0..2 {
        let page = three.get("/cases?due=overdue").await;
        assert!(listed(&page), "3 days: overdue: {}", page.text());
        assert!(!listed(&seven.get("/cases?due=overdue").await), "7 days: not yet");
        assert!(listed(&seven.get("/cases?due=96").await), "7 days: due within 4 days");
        assert!(!listed(&three.get("/cases?due=96").await));
    }
    stop.cancel();
    reloaded.task.await.unwrap();
    w.finish().await;
}

fn csv_reader(body: &str) -> csv::Reader<&[u8]> {
    csv::Reader::from_reader(body.as_bytes())
}

#[tokio::test]
async fn console_believes_x_forwarded_for_only_from_a_trusted_proxy() {
    // Untrusted (the default): the peer's address, whatever the header says.
    let w = world().await;
    let mut c = w.client();
    c.forwarded_for = Some("198.51.100.7".into());
    c.signed_in("sam").await;
    let log = w.ledger.console_audit_log(None, 10).await.unwrap();
    let login = log.iter().find(|l| l.action == "login").unwrap();
    assert_eq!(login.remote.as_deref(), Some("127.0.0.1"));
    w.finish().await;

    // Behind a trusted proxy: the client it forwarded for.
    let w = world_with_console(Project::new(), "trusted_proxies = [\"127.0.0.1/32\"]").await;
    let mut c = w.client();
    c.forwarded_for = Some("203.0.113.9, 198.51.100.7".into());
    c.signed_in("sam").await;
    let log = w.ledger.console_audit_log(None, 10).await.unwrap();
    let login = log.iter().find(|l| l.action == "login").unwrap();
    assert_eq!(
        login.remote.as_deref(),
        Some("198.51.100.7"),
        "the right-most untrusted hop"
    );
    let listed = log.iter().find(|l| l.action == "case_list").unwrap();
    assert_eq!(listed.remote.as_deref(), Some("198.51.100.7"));
    w.finish().await;
}

#[tokio::test]
async fn console_served_by_the_daemon_shows_each_circuit_breakers_live_state() {
    use precert::limits::{LimitSettings, PayerLimits, RunEnd};
    let w = world().await;
    // The daemon's limits: the sandbox portal failed three times in a row
    // (its threshold), one PAS run is going on.
    let mut limits = PayerLimits::new(LimitSettings {
        failure_threshold: 3,
        starts_per_minute: 600.0,
        burst: 10,
        max_concurrent: 2,
        ..LimitSettings::default()
    });
    let now = Utc::now();
    for _ in 0..3 {
        let s = limits.try_start(&"sandbox".into(), now).unwrap();
        limits.finish(s, &RunEnd::PortalFailure("HTTP 503".into()), now);
    }
    let _running = limits.try_start(&"sandbox-pas".into(), now).unwrap();
    let live = Arc::new(std::sync::Mutex::new(limits));
    let stop = CancellationToken::new();
    let daemons = console::serve_with(w.settings.clone(), w.ledger.clone(), stop.clone(), Some(live))
        .await
        .unwrap();
    let mut c = w.client();
    c.base = format!("http://{}", daemons.addr);
    c.signed_in("olive").await;
    let text = c.get("/payers").await.text();
    let row = |id: &str| {
        let at = text
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} in {text}"));
        let r = &text[at..];
        r[..r.find("</tr>").unwrap()].to_owned()
    };
    let portal = row("p-lakeside-ortho-sandbox");
    assert!(portal.contains("class=\"paused\""), "{portal}");
    assert!(portal.contains("circuit breaker open until"), "{portal}");
    let pas = row("p-lakeside-ortho-sandbox-pas");
    assert!(pas.contains("circuit breaker closed; 1 run now"), "{pas}");
    // `precert console` alone has no breakers to show: the ledger's word only.
    let mut alone = w.client();
    alone.signed_in("olive").await;
    assert!(!alone.get("/payers").await.text().contains("class=\"breaker\""));
    stop.cancel();
    daemons.task.await.unwrap();
    w.finish().await;
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A TOTP seed stored before seeds were sealed (base32 in the ledger) is
/// sealed when the console starts, and its owner still signs in with their
/// codes; a console whose key file is gone or is another key refuses to
/// start and names the file.
#[tokio::test]
async fn console_seals_plain_totp_seeds_at_start_and_refuses_a_missing_or_wrong_key() {
    let w = world().await;
    let seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".to_owned();
    assert!(w.ledger.set_console_totp("olive", Some(&seed)).await.unwrap());
    assert!(w.ledger.use_console_totp_step("olive", 1).await.unwrap());
    // The next console to start (here beside the world's, on the same
    // ledger and data directory) seals it.
    let settings = w.settings.clone();
    let ledger = w.ledger.clone();
    let stop = CancellationToken::new();
    let running = console::serve(settings.clone(), ledger.clone(), stop.clone())
        .await
        .unwrap();
    let stored = ledger.console_user("olive").await.unwrap().unwrap();
    let sealed = stored.totp_secret.clone().unwrap();
    assert!(sealed.starts_with("v1:") && !sealed.contains(&seed), "{sealed}");
    assert_eq!(stored.totp_last_step, 1, "the used steps stay used");
    let mut c = Client {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: format!("http://{}", running.addr),
        cookies: HashMap::new(),
        forwarded_for: None,
    };
    let form = c.get("/login").await;
    let code = precert::totp::code(&seed, Utc::now().timestamp() as u64).unwrap();
    let signed = c
        .post(
            "/login",
            &[
                ("name", "olive"),
                ("password", PASSWORD),
                ("code", &code),
                ("csrf", &form.csrf()),
            ],
        )
        .await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.text());
    stop.cancel();
    running.task.await.unwrap();

    // The key file gone: the console does not start, and says which file.
    let key = settings.data_dir.join(console::seeds::KEY_FILE);
    let kept = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let e = console::serve(settings.clone(), ledger.clone(), CancellationToken::new())
        .await
        .err()
        .expect("no console without its key")
        .to_string();
    assert!(
        e.contains(console::seeds::KEY_FILE) && e.contains("missing") && e.contains("olive"),
        "{e}"
    );
    assert!(!key.exists(), "no new key is made over sealed seeds");
    // Another key: refused too.
    std::fs::write(&key, format!("{}QUE=\n", "QUFB".repeat(10))).unwrap();
    let e = console::serve(settings.clone(), ledger.clone(), CancellationToken::new())
        .await
        .err()
        .expect("no console with another key")
        .to_string();
    assert!(e.contains("does not open") && e.contains("olive"), "{e}");
    std::fs::write(&key, kept).unwrap();
    assert_eq!(
        ledger
            .console_user("olive")
            .await
            .unwrap()
            .unwrap()
            .totp_secret
            .as_deref(),
        Some(sealed.as_str()),
        "nothing was changed by the refused starts"
    );
    w.finish().await;
}

/// Attaching a letter is for the case's own people: another practice's
/// operator gets 404, a form without the token 403, and nothing is stored
/// either way; a file too small, empty or not a PDF is refused with why.
#[tokio::test]
async fn console_attaches_a_letter_only_for_the_cases_practice_with_its_token() {
    let w = world().await;
    let mut olive = w.client();
    let page = olive.signed_in("olive").await;
    let csrf = page.csrf();
    let pdf = synthetic_pdf("fax of 2 December");
    let other = olive
        .post_file(
            "/cases/valley-imaging/VI-88120/letters",
            &[("csrf", &csrf), ("received", "fax"), ("note", "fax")],
            pdf.clone(),
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let path = "/cases/lakeside-ortho/LO-2026-1001/letters";
    let forged = olive
        .post_file(path, &[("received", "fax"), ("note", "fax")], pdf.clone())
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    for (bytes, says) in [
        (Vec::new(), "The file is empty"),
        (b"%PDF-1.4\n%%EOF\n".to_vec(), "too small to be a letter"),
    ] {
        let bad = olive
            .post_file(path, &[("csrf", &csrf), ("received", "mail"), ("note", "mail")], bytes)
            .await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.text().contains(says), "{}", bad.text());
    }
    let no_note = olive
        .post_file(
            path,
            &[("csrf", &csrf), ("received", "mail"), ("note", " ")],
            pdf.clone(),
        )
        .await;
    assert!(no_note.text().contains("Say what the letter is"), "{}", no_note.text());
    for id in [w.id("VI-88120").await, w.id("LO-2026-1001").await] {
        assert!(w.ledger.letters(id).await.unwrap().is_empty());
    }
    assert!(!w.settings.data_dir.join("letters").exists(), "no file was written");
    let ok = olive
        .post_file(
            path,
            &[("csrf", &csrf), ("received", "mail"), ("note", "by post")],
            pdf.clone(),
        )
        .await;
    assert_eq!(ok.location(), "/cases/lakeside-ortho/LO-2026-1001?done=letter");
    let again = olive
        .post_file(path, &[("csrf", &csrf), ("received", "mail"), ("note", "again")], pdf)
        .await;
    assert!(again.text().contains("kept for this case already"), "{}", again.text());
    assert_eq!(w.ledger.letters(w.id("LO-2026-1001").await).await.unwrap().len(), 1);
    w.finish().await;
}

/// A small synthetic PDF (one page of text) standing for a faxed letter.
fn synthetic_pdf(text: &str) -> Vec<u8> {
    format!(
        "%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n\
         2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n\
         3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj\n\
         % synthetic letter: {text}\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )
    .into_bytes()
}

/// An operator attaches a letter received by mail in real Chromium: a
/// file that is not a PDF is refused with why and nothing is kept; the PDF
/// is stored 0600 under its SHA-256, listed on the case page, downloads,
/// and the timeline says who attached it, how it came and their note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_an_operator_attaches_a_letter_received_by_mail() {
    use fantoccini::Locator;
    let w = world().await;
    let driver = precert::browser::Driver::start(&w.settings.webdriver, &w.settings.data_dir)
        .await
        .unwrap();
    let b = driver.session().await.unwrap();
    sign_in_with(&b, &w.base, "olive").await;
    let case_path = "/cases/lakeside-ortho/LO-2026-1001";
    let id = w.id("LO-2026-1001").await;
    let uploads = w.p.path("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let not_pdf = uploads.join("scan.png");
    std::fs::write(
        &not_pdf,
        b"\x89PNG\r\n\x1a\n a picture of a letter, not a PDF of it, padded to length",
    )
    .unwrap();
    let letter = uploads.join("letter.pdf");
    let pdf = synthetic_pdf("approval received by mail");
    std::fs::write(&letter, &pdf).unwrap();

    let attach = |file: std::path::PathBuf, note: &'static str| {
        let b = b.clone();
        let base = w.base.clone();
        async move {
            b.goto(&format!("{base}{case_path}")).await.unwrap();
            let form = b.wait().for_element(Locator::Css("form.attach")).await.unwrap();
            form.find(Locator::Css("input[type=file]"))
                .await
                .unwrap()
                .send_keys(file.to_str().unwrap())
                .await
                .unwrap();
            form.find(Locator::Css("select[name=received] option[value=mail]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            form.find(Locator::Css("input[name=note]"))
                .await
                .unwrap()
                .send_keys(note)
                .await
                .unwrap();
            form.find(Locator::Css("button[type=submit]"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
        }
    };
    attach(not_pdf, "scan from the front desk").await;
    let refused = text_of(&b, ".flash.error").await;
    assert!(
        refused.contains("not a PDF") && refused.contains("Nothing was stored"),
        "{refused}"
    );
    assert!(w.ledger.letters(id).await.unwrap().is_empty());
    assert!(!w.settings.data_dir.join("letters").exists());

    attach(letter, "approval letter from the payer, sent by post").await;
    let notice = text_of(&b, ".flash.ok").await;
    assert!(notice.contains("Letter attached"), "{notice}");
    let kept = w.ledger.letters(id).await.unwrap();
    assert_eq!(kept.len(), 1);
    let sha = precert::files::sha256_hex(&pdf);
    assert_eq!(kept[0].sha256, sha);
    assert_eq!(kept[0].bytes, pdf.len() as u64);
    let stored = w.settings.data_dir.join(&kept[0].stored_path);
    assert_eq!(std::fs::read(&stored).unwrap(), pdf);
    assert_eq!(mode_of(&stored), 0o600);
    assert!(stored.starts_with(w.settings.data_dir.join("letters/lakeside-ortho")));

    // Listed on the page, and it downloads with this session.
    let href = b
        .find(Locator::Css("a[href$='/letters/1']"))
        .await
        .unwrap()
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    let session = b
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == "precert_session")
        .expect("the session cookie");
    let got = reqwest::Client::new()
        .get(format!("{}{href}", w.base))
        .header("cookie", format!("precert_session={}", session.value()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()[CONTENT_TYPE], "application/pdf");
    assert_eq!(got.bytes().await.unwrap().to_vec(), pdf);
    let timeline = text_of(&b, "table.timeline").await;
    assert!(
        timeline.contains("letter attached") && timeline.contains("by mail") && timeline.contains("sent by post"),
        "{timeline}"
    );
    let events = w.ledger.events(id).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "letter" && e.actor == "user:olive" && e.detail["sha256"] == sha));
    assert!(w.audit_actions().await.iter().any(|l| l == "attach_letter:olive"));
    b.close().await.unwrap();
    driver.shutdown().await;
    w.finish().await;
}
