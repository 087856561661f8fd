//! Quoted payer text is scrubbed before it is shown (issue 18): a denial
//! whose reason quotes the patient's birth date, member ID and the payer's
//! spelling of the name reaches the outbox, the `.eml` file and the digest
//! without any of them, the reason code and the payer's other words still
//! readable; the daemon's case page, which nobody logs in to see, shows no
//! payer text at all.

use std::process::{Child, Stdio};
use std::time::Duration as StdDuration;

use chrono::Duration;
use precert::case::{CaseStatus, Decision, DenialReason, LineDecision};
use precert::store::Actor;
use precert_sandbox::{Sandbox, SandboxConfig};

use super::escalation::{world, World};
use super::support::Project;

/// The payers' reasons, as reported: VI-88120 is Drew Kowalski
/// (SBX100200305), LO-2026-1001 Avery Marsh (SBX100200301); the payer
/// names other spellings of them, and a birth date.
const VALLEY_REASON: &str = "Member SBX100200305 (Teresa Vasquez) DOB 04/12/1961 not eligible";
const LAKESIDE_REASON: &str = "Not covered for member SBX100200301 (Margaret Okafor, DOB 04/12/1961)";
/// LO-2026-1003 is Casey Lindqvist (SBX100200303), born 1988-02-14.
const CONDITIONS: &str = "6 visits approved for LINDQVIST, CASEY (DOB 2/14/88); re-request with progress notes";
/// A portal's failure wording, quoted by a paused payer's alert.
const PORTAL_ERROR: &str = "portal error: member W123456789 (Teresa Vasquez) locked, call 509-555-0142";

/// What must not be anywhere people read.
const SENSITIVE: &[&str] = &[
    "04/12/1961",
    "1961",
    "2/14/88",
    "1988",
    "1969",
    "SBX100200305",
    "SBX100200301",
    "SBX100200303",
    "SBX100200302",
    "100200302",
    "Blake",
    "100200305",
    "100200301",
    "100200303",
    "W123456789",
    "555-0142",
    "Teresa",
    "Vasquez",
    "Margaret",
    "Okafor",
    "Drew",
    "Kowalski",
    "Avery",
    "Marsh",
    "Casey",
    "Lindqvist",
];

/// Case-sensitive, for a raw message: an encoded part could hold any
/// mix of letters by chance (the decoded parts are checked in any case).
#[track_caller]
fn assert_raw_clean(what: &str, raw: &str) {
    for s in SENSITIVE {
        assert!(!raw.contains(s), "`{s}` is in the {what}:\n{raw}");
    }
}

#[track_caller]
fn assert_clean(what: &str, text: &str) {
    for s in SENSITIVE {
        assert!(
            !text.to_lowercase().contains(&s.to_lowercase()),
            "`{s}` is in the {what}:\n{text}"
        );
    }
}

async fn deny(w: &World, practice: &str, case_ref: &str, code: &str, text: &str) -> i64 {
    let id = w.case_id(practice, case_ref).await;
    w.submit(id).await;
    let decision = Decision {
        auth_number: None,
        valid: None,
        lines: Vec::new(),
        conditions: None,
        denial: Some(DenialReason {
            code: Some(code.into()),
            text: text.into(),
        }),
        decided_at: w.at(),
        source: "portal:sandbox".into(),
    };
    w.ledger
        .record_decision(id, &decision, CaseStatus::Denied, &Actor::user("test"))
        .await
        .unwrap();
    id
}

async fn partially_approve(w: &World) {
    let id = w.case_id("lakeside-ortho", "LO-2026-1003").await;
    w.submit(id).await;
    let case = w.ledger.get(id).await.unwrap();
    let decision = Decision {
        auth_number: Some("SHP97110".into()),
        valid: None,
        lines: vec![LineDecision {
            code: case.data.service_lines[0].code.clone(),
            requested_units: 12,
            approved_units: 6,
        }],
        conditions: Some(CONDITIONS.into()),
        denial: None,
        decided_at: w.at(),
        source: "portal:sandbox".into(),
    };
    w.ledger
        .record_decision(id, &decision, CaseStatus::PartiallyApproved, &Actor::user("test"))
        .await
        .unwrap();
}

/// How many outbox bodies contain `needle` (SQLite's LIKE ignores ASCII
/// case; a no-op update counts the rows).
async fn outbox_bodies_with(w: &World, needle: &str) -> u64 {
    w.ledger
        .execute_raw(&format!(
            "UPDATE outbox SET attempts = attempts WHERE mail LIKE '%{}%'",
            needle.replace('\'', "''")
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_denial_quoting_birth_date_member_id_and_name_reaches_mail_and_digest_without_them() {
    let w = world(|_| {}).await;
    deny(&w, "valley-imaging", "VI-88120", "ELIG-01", VALLEY_REASON).await;
    deny(&w, "lakeside-ortho", "LO-2026-1001", "ADM-01", LAKESIDE_REASON).await;
    // A payer that puts free text in its code field (LO-2026-1002 is Blake
    // Okafor): the code is quoted in the summary, so it is scrubbed too.
    deny(
        &w,
        "lakeside-ortho",
        "LO-2026-1002",
        "MEMBER SBX100200302 BLAKE",
        "Not eligible",
    )
    .await;
    partially_approve(&w).await;
    w.esc
        .payer_alert(&w.ledger, &"sandbox".into(), Some(PORTAL_ERROR))
        .await
        .unwrap();

    // The outbox holds what will be sent: already scrubbed.
    assert!(
        outbox_bodies_with(&w, "ELIG-01").await >= 1,
        "the bodies are searchable"
    );
    for s in SENSITIVE {
        assert_eq!(outbox_bodies_with(&w, s).await, 0, "`{s}` is in an outbox body");
    }

    let mails = w.deliver_to_files().await;
    // Two Valley supervisors share one mail; Lakeside's supervisor gets
    // three; each practice's operations contact gets the payer alert.
    assert_eq!(
        mails.len(),
        6,
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
    for m in &mails {
        assert_raw_clean("raw .eml file", &m.raw);
        assert_clean("text part", m.text.as_deref().unwrap());
        assert_clean("HTML part", m.html.as_deref().unwrap());
        assert_clean("subject", &m.subject);
    }
    let text_of = |case_ref: &str| {
        mails
            .iter()
            .find(|m| m.subject.contains(case_ref))
            .and_then(|m| m.text.clone())
            .unwrap_or_else(|| panic!("no mail about {case_ref}"))
    };
    // The reason code and the payer's own words stay; the patient as the
    // mail's patient line shows them (initials, the member ID's last four).
    let valley = text_of("VI-88120");
    assert!(
        valley.contains("ELIG-01: Member ********0305 ([name]) DOB [date] not eligible"),
        "{valley}"
    );
    assert!(valley.contains("D. K., member ********0305"), "{valley}");
    let lakeside = text_of("LO-2026-1001");
    assert!(
        lakeside.contains("ADM-01: Not covered for member ********0301 ([name], DOB [date])"),
        "{lakeside}"
    );
    let free_code = text_of("LO-2026-1002");
    assert!(free_code.contains("denied (MEMBER [id] [name])"), "{free_code}");
    let partial = text_of("LO-2026-1003");
    assert!(
        partial.contains("6 visits approved for L., C. (DOB [date]); re-request with progress notes"),
        "{partial}"
    );
    assert!(
        partial.contains("SHP97110"),
        "the auth number is the practice's to read: {partial}"
    );
    let html = mails
        .iter()
        .find(|m| m.subject.contains("VI-88120"))
        .and_then(|m| m.html.clone())
        .unwrap();
    assert!(
        html.contains("ELIG-01: Member ********0305 ([name]) DOB [date] not eligible"),
        "{html}"
    );
    let paused = mails
        .iter()
        .find(|m| m.subject.contains("Payer paused") && m.to == ["it.ops@valley-imaging.example"])
        .and_then(|m| m.text.clone())
        .unwrap();
    assert!(
        paused.contains("portal error: member [id] ([name]) locked, call [phone]"),
        "{paused}"
    );

    // The digest lists summaries; a paused payer's quotes its failure.
    assert_eq!(w.esc.digest(&w.ledger, "valley-imaging", "slot-1").await.unwrap(), 2);
    assert_eq!(w.esc.digest(&w.ledger, "lakeside-ortho", "slot-1").await.unwrap(), 1);
    for s in SENSITIVE {
        assert_eq!(outbox_bodies_with(&w, s).await, 0, "`{s}` is in a digest's body");
    }
    let digests = w.deliver_to_files().await;
    assert_eq!(digests.len(), 3);
    for d in &digests {
        assert!(d.subject.contains("Daily digest"), "{}", d.subject);
        assert_raw_clean("digest", &d.raw);
        assert_clean("digest", d.text.as_deref().unwrap());
        assert_clean("digest", d.html.as_deref().unwrap());
    }
    let valley_digest = digests
        .iter()
        .find(|d| d.subject.contains("Valley"))
        .and_then(|d| d.text.clone())
        .unwrap();
    assert!(valley_digest.contains("VI-88120 denied (ELIG-01)"), "{valley_digest}");
    assert!(
        valley_digest.contains("paused for valley-imaging: portal error: member [id] ([name]) locked"),
        "{valley_digest}"
    );

    // The raw text stays in the ledger, for `precert cases show --phi`.
    let id = w.case_id("valley-imaging", "VI-88120").await;
    let kept = w.ledger.get(id).await.unwrap().decision.unwrap().denial.unwrap();
    assert_eq!(kept.text, VALLEY_REASON);
}

// ---- the case page ----------------------------------------------------------

/// No job fires while the test runs: only the HTTP listener matters.
fn yearly_schedules(p: &Project) {
    for practice in ["lakeside-ortho", "valley-imaging"] {
        let path = p.path(&format!("config/practices/{practice}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let head = text.split("[schedules]").next().unwrap().to_owned();
        let yearly = "[schedules]\nsubmit = \"0 0 1 1 *\"\npoll = \"0 0 1 1 *\"\nletters = \"0 0 1 1 *\"\nescalations = \"0 0 1 1 *\"\ndigest = \"0 0 1 1 *\"\n";
        // Keep the practice's tables after [schedules] ([escalations]).
        let tail = text
            .split("[schedules]")
            .nth(1)
            .and_then(|t| t.find("\n[").map(|i| t[i..].to_owned()))
            .unwrap_or_default();
        std::fs::write(&path, format!("{head}{yearly}{tail}")).unwrap();
    }
}

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

async fn get(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    r.status().is_success().then_some(())?;
    r.text().await.ok()
}

#[tokio::test]
async fn the_case_page_shows_the_status_and_reason_code_but_no_payer_text() {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let w = world(|p| {
        p.use_sandbox(&sandbox.base_url());
        yearly_schedules(p);
    })
    .await;
    deny(&w, "valley-imaging", "VI-88120", "ELIG-01", VALLEY_REASON).await;
    // A code that is not a payer code's shape is not shown either.
    deny(
        &w,
        "lakeside-ortho",
        "LO-2026-1001",
        "Member SBX100200301",
        LAKESIDE_REASON,
    )
    .await;
    partially_approve(&w).await;
    w.advance(Duration::minutes(1));

    let port = free_port();
    let log = std::fs::File::create(w.p.path("daemon.log")).unwrap();
    let daemon = Daemon(
        w.p.command(&["daemon"])
            .env("PRECERT__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("PRECERT__CONSOLE__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(60);
    while get(&format!("{base}/healthz")).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon did not listen:\n{}",
            std::fs::read_to_string(w.p.path("daemon.log")).unwrap_or_default()
        );
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
    let page = |case_ref: &'static str| {
        let url = format!("{base}/cases/{case_ref}");
        async move { get(&url).await.unwrap_or_else(|| panic!("no page at {url}")) }
    };

    let valley = page("valley-imaging/VI-88120").await;
    for needle in [
        "valley-imaging/VI-88120",
        "denied",
        "ELIG-01",
        "reason on file, see the case in precert",
        "72148 x1",
        "Denied (open)",
    ] {
        assert!(valley.contains(needle), "no `{needle}` on the page:\n{valley}");
    }
    let lakeside = page("lakeside-ortho/LO-2026-1001").await;
    assert!(lakeside.contains("reason on file"), "{lakeside}");
    let partial = page("lakeside-ortho/LO-2026-1003").await;
    assert!(partial.contains("partially_approved"), "{partial}");
    assert!(
        partial.contains("Auth number") && partial.contains("on file"),
        "{partial}"
    );
    for (name, p) in [("valley", &valley), ("lakeside", &lakeside), ("partial", &partial)] {
        assert_clean(&format!("{name} case page"), p);
        // No payer free text at all, scrubbed or not.
        for words in [
            "not eligible",
            "Not covered",
            "DOB",
            "[name]",
            "[date]",
            "visits approved",
            "progress notes",
            "SHP97110",
            "Member",
        ] {
            assert!(!p.contains(words), "`{words}` is on the {name} case page:\n{p}");
        }
    }
    assert_eq!(
        reqwest::get(format!("{base}/cases/valley-imaging/NO-SUCH"))
            .await
            .unwrap()
            .status(),
        404
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    drop(daemon);
    sandbox.shutdown().await;
}
