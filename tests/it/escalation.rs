//! Escalations: rules and deadlines (urgent, standard, across DST), the
//! outbox written with the change that caused it, delivery to a real SMTP
//! server (and waiting while it is down), reminders and the next level on
//! an injected clock, the digest, and the CLI.

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use precert::case::{CaseStatus, Decision, DenialReason, Urgency};
use precert::config::Settings;
use precert::escalate::rules::{self, RuleSet, DEFAULTS};
use precert::escalate::{self, Escalator, Reason};
use precert::mail::Mailer;
use precert::store::{Actor, EscalationState, EventKind, Ledger, OutboxState};
use precert::tz::Tz;

use super::postgres::{both_backends, Backend};
use super::smtp::{parse_eml, ReceivedMail, SmtpServer};
use super::support::{stdout, Project};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

// ---- deadlines -------------------------------------------------------------

#[test]
fn urgent_deadlines_are_72_hours_and_standard_ones_7_calendar_days_in_local_time_across_dst() {
    let chicago: Tz = "America/Chicago".parse().unwrap();
    // 10:00 CST on Thursday 5 March 2026; DST starts Sunday 8 March.
    let spring = utc("2026-03-05T16:00:00Z");
    let urgent = rules::decision_deadline(spring, Urgency::Urgent, &DEFAULTS, chicago);
    assert_eq!(urgent, utc("2026-03-08T16:00:00Z"), "72 hours, whatever the clocks do");
    let standard = rules::decision_deadline(spring, Urgency::Standard, &DEFAULTS, chicago);
    // 10:00 CDT on 12 March: 7 calendar days, 167 hours.
    assert_eq!(standard, utc("2026-03-12T15:00:00Z"));
    assert_eq!((standard - spring).num_hours(), 167);

    // 10:00 CDT on Thursday 29 October 2026; DST ends Sunday 1 November.
    let autumn = utc("2026-10-29T15:00:00Z");
    let standard = rules::decision_deadline(autumn, Urgency::Standard, &DEFAULTS, chicago);
    assert_eq!(standard, utc("2026-11-05T16:00:00Z"), "10:00 CST: 169 hours");
    assert_eq!((standard - autumn).num_hours(), 169);

    // Submitted at 02:30 local the day before a spring-forward: the 02:30
    // a week later does not exist, so the deadline is the first valid
    // instant after it (03:00 CDT).
    let night = chicago
        .with_ymd_and_hms(2026, 3, 1, 2, 30, 0)
        .unwrap()
        .with_timezone(&Utc);
    let d = rules::decision_deadline(night, Urgency::Standard, &DEFAULTS, chicago);
    assert_eq!(d, utc("2026-03-08T08:00:00Z"));

    // The warning comes at 75 % of the window.
    let warn = rules::warning_at(spring, urgent, 75);
    assert_eq!(warn, spring + Duration::hours(54));

    // Business days skip weekends.
    let fri = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
    let tue = NaiveDate::from_ymd_opt(2026, 12, 8).unwrap();
    assert_eq!(rules::business_days_until(fri, tue), 2);
    assert_eq!(rules::business_days_until(tue, fri), 0);
}

// ---- a project with an injected clock -------------------------------------

/// The sample project with cases imported, a ledger on an injected clock and
/// the escalation rules as its hook (also used by `scrub.rs`).
pub(super) struct World {
    pub(super) p: Project,
    pub(super) settings: Arc<Settings>,
    pub(super) ledger: Ledger,
    pub(super) esc: Arc<Escalator>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

impl World {
    pub(super) fn set(&self, t: DateTime<Utc>) {
        *self.now.lock().unwrap() = t;
    }

    pub(super) fn advance(&self, d: Duration) {
        *self.now.lock().unwrap() += d;
    }

    pub(super) fn at(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }

    pub(super) async fn case_id(&self, practice: &str, case_ref: &str) -> i64 {
        self.ledger.find(practice, case_ref).await.unwrap().unwrap().id
    }

    /// Submits a case: ready → submitting → pending, at the current time.
    pub(super) async fn submit(&self, id: i64) {
        let a = Actor::user("test");
        self.ledger
            .transition(id, CaseStatus::Submitting, &a, None)
            .await
            .unwrap();
        self.ledger.transition(id, CaseStatus::Pending, &a, None).await.unwrap();
    }

    pub(super) async fn deny(&self, id: i64) {
        let decision = Decision {
            auth_number: None,
            valid: None,
            lines: Vec::new(),
            conditions: None,
            denial: Some(DenialReason {
                code: Some("CLIN-06".into()),
                text: "Conservative therapy of six weeks is not documented".into(),
            }),
            decided_at: self.at(),
            source: "portal:sandbox".into(),
        };
        self.ledger
            .record_decision(id, &decision, CaseStatus::Denied, &Actor::user("test"))
            .await
            .unwrap();
    }

    pub(super) fn mailer(&self) -> Mailer {
        Mailer::new(&self.settings.mail).unwrap()
    }

    /// Delivers the outbox through the file transport; the mails, parsed.
    pub(super) async fn deliver_to_files(&self) -> Vec<ReceivedMail> {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = (*self.settings).clone();
        settings.mail.transport = precert::config::MailTransport::File {
            dir: dir.path().to_owned(),
        };
        let round = escalate::send_due(&self.ledger, &Mailer::new(&settings.mail).unwrap())
            .await
            .unwrap();
        let mails: Vec<ReceivedMail> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| parse_eml(&std::fs::read(f.unwrap().path()).unwrap()))
            .collect();
        assert_eq!(mails.len(), round.sent);
        mails
    }
}

/// Appends TOML to a practice's file.
fn practice_toml(p: &Project, practice: &str, extra: &str) {
    let path = p.path(&format!("config/practices/{practice}.toml"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
}

pub(super) async fn world(configure: impl FnOnce(&Project)) -> World {
    world_on(Backend::Sqlite, configure).await
}

/// [`world`] with its ledger on `backend`.
pub(super) async fn world_on(backend: Backend, configure: impl FnOnce(&Project)) -> World {
    let p = Project::on(backend).await;
    configure(&p);
    let out = p.precert(&["cases", "import", "samples/cases.csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let settings = Arc::new(p.settings());
    let now = Arc::new(Mutex::new(utc("2026-11-02T15:00:00Z")));
    let clock = {
        let now = now.clone();
        Arc::new(move || *now.lock().unwrap())
    };
    let ledger = Ledger::open(&settings.database_url).await.unwrap().with_clock(clock);
    let (playbooks, errors) = precert::playbook::load_dir(&settings.playbooks_dir);
    assert!(errors.is_empty());
    let esc = Arc::new(Escalator::new(settings.clone(), &playbooks, Arc::default()));
    ledger.set_escalation_hook(esc.clone());
    World {
        p,
        settings,
        ledger,
        esc,
        now,
    }
}

fn assert_minimum_phi(m: &ReceivedMail, member_id: &str, last_name: &str) {
    for part in [&m.raw, m.text.as_ref().unwrap(), m.html.as_ref().unwrap()] {
        assert!(!part.contains(member_id), "the full member ID is in the mail:\n{part}");
        assert!(!part.contains(last_name), "the patient's name is in the mail:\n{part}");
    }
    let masked = format!("****{}", &member_id[member_id.len() - 4..]);
    assert!(m.text.as_ref().unwrap().contains(&masked), "{:?}", m.text);
}

// ---- immediate mail, real SMTP ---------------------------------------------

both_backends!(
    #[tokio::test]
    a_denial_queues_its_mail_in_the_same_transaction_and_a_real_smtp_server_receives_valid_mime
);
async fn a_denial_queues_its_mail_in_the_same_transaction_and_a_real_smtp_server_receives_valid_mime(backend: Backend) {
    let server = SmtpServer::start();
    // The sample Lakeside practice sets `appeal_days = 60` for the sandbox payer.
    let w = world_on(backend, |p| p.use_smtp(server.port())).await;
    let id = w.case_id("lakeside-ortho", "LO-2026-1001").await;
    w.submit(id).await;
    assert!(
        w.ledger.outbox(true).await.unwrap().is_empty(),
        "pending alone is not an escalation"
    );
    w.advance(Duration::hours(29));
    w.deny(id).await;

    // Committed with the decision: the escalation, its mail, its event.
    let open = w.ledger.escalations(None, false).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].reason, Reason::Denied);
    assert_eq!(open[0].case_id, Some(id));
    let outbox = w.ledger.outbox(false).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].state, OutboxState::Pending);
    assert_eq!(outbox[0].recipients, ["precert.supervisor@lakeside-ortho.example"]);
    let events = w.ledger.events(id).await.unwrap();
    let decided = events.iter().find(|e| e.kind == "decision_recorded").unwrap();
    let escalated = events.iter().find(|e| e.kind == EventKind::Email.as_str()).unwrap();
    assert_eq!(decided.at, escalated.at, "one transaction, one timestamp");

    let round = escalate::send_due(&w.ledger, &w.mailer()).await.unwrap();
    assert_eq!((round.sent, round.failed), (1, 0));
    let got = server.wait_for(1, StdDuration::from_secs(20));
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.defects.is_empty(), "MIME defects: {:?}", m.defects);
    assert_eq!(m.content_type, "multipart/alternative");
    assert_eq!(m.to, ["precert.supervisor@lakeside-ortho.example"]);
    assert!(m.cc.is_empty());
    assert_eq!(m.message_id, outbox[0].message_id);
    assert!(
        m.subject.contains("Denied") && m.subject.contains("LO-2026-1001"),
        "{}",
        m.subject
    );
    assert!(m.subject.contains("appeal by 2027-01-02"), "{}", m.subject);
    let text = m.text.as_ref().unwrap();
    let html = m.html.as_ref().unwrap();
    for needle in [
        "Lakeside Orthopedics",
        "lakeside-ortho/LO-2026-1001",
        "sandbox",
        "73721",
        "denied",
        "CLIN-06: Conservative therapy of six weeks is not documented",
        "appeal",
        "peer-to-peer",
        "/cases/lakeside-ortho/LO-2026-1001",
        "Decided after: 1.2 of 7 calendar days (standard); deadline 2026-11-09 09:00 CST",
    ] {
        assert!(text.contains(needle), "text part lacks `{needle}`:\n{text}");
    }
    assert!(html.contains("CLIN-06") && html.contains("<table"), "{html}");
    assert!(
        html.contains("<a href=\"http://127.0.0.1:8623/cases/lakeside-ortho/LO-2026-1001\">"),
        "{html}"
    );
    assert!(text.contains("A. M."), "initials: {text}");
    assert_minimum_phi(m, "SBX100200301", "Marsh");
    assert!(!m.raw.contains("1961-04-12"), "no birth date");

    let outbox = w.ledger.outbox(true).await.unwrap();
    assert_eq!(outbox[0].state, OutboxState::Sent);
    // After the retention period the body goes; the record stays.
    assert_eq!(w.ledger.prune_sent_mail(w.at() - Duration::days(30)).await.unwrap(), 0);
    w.advance(Duration::days(31));
    assert_eq!(w.ledger.prune_sent_mail(w.at() - Duration::days(30)).await.unwrap(), 1);
    // (A no-op update counts the rows whose body is empty.)
    let emptied = w
        .ledger
        .execute_raw("UPDATE outbox SET attempts = attempts WHERE mail = ''")
        .await
        .unwrap();
    assert_eq!(emptied, 1);
    let kept = w.ledger.outbox(true).await.unwrap();
    assert_eq!(kept[0].message_id, outbox[0].message_id);
    assert_eq!(kept[0].subject, outbox[0].subject);
    let events = w.ledger.events(id).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.actor == "system:mail" && e.detail["sent"] == m.message_id.as_str()));
    // Nothing more to send.
    assert_eq!(escalate::send_due(&w.ledger, &w.mailer()).await.unwrap().sent, 0);
}

both_backends!(
    #[tokio::test]
    with_the_smtp_server_down_mail_waits_in_the_outbox_and_arrives_exactly_once_when_it_is_back
);
async fn with_the_smtp_server_down_mail_waits_in_the_outbox_and_arrives_exactly_once_when_it_is_back(backend: Backend) {
    let mut server = SmtpServer::start();
    let w = world_on(backend, |p| p.use_smtp(server.port())).await;
    server.stop();
    let id = w.case_id("valley-imaging", "VI-88121").await;
    w.submit(id).await;
    w.ledger
        .transition(
            id,
            CaseStatus::PendedForInfo,
            &Actor::user("test"),
            Some("sleep study pages 2-4"),
        )
        .await
        .unwrap();
    let mailer = w.mailer();
    let round = escalate::send_due(&w.ledger, &mailer).await.unwrap();
    assert_eq!(round.sent, 0);
    let retry_at = round.retry_at.expect("a retry time");
    assert!(retry_at > w.at());
    let waiting = w.ledger.outbox(false).await.unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].state, OutboxState::Pending);
    assert_eq!(waiting[0].attempts, 1);
    assert!(waiting[0].last_error.as_deref().is_some_and(|e| !e.is_empty()));
    // `precert outbox list` says why.
    let out = w.p.precert(&["outbox", "list"]);
    assert!(out.status.success());
    let listing = stdout(&out);
    assert!(
        listing.contains("pending") && listing.contains("last error:"),
        "{listing}"
    );
    assert!(listing.contains("auth.lead@valley-imaging.example"), "{listing}");

    // Before the retry time nothing is tried.
    assert_eq!(
        escalate::send_due(&w.ledger, &mailer).await.unwrap(),
        Default::default()
    );

    server.restart();
    w.set(retry_at);
    let round = escalate::send_due(&w.ledger, &mailer).await.unwrap();
    assert_eq!(round.sent, 1, "{round:?}");
    assert_eq!(escalate::send_due(&w.ledger, &mailer).await.unwrap().sent, 0);
    let got = server.wait_for(1, StdDuration::from_secs(20));
    assert_eq!(got.len(), 1, "exactly once");
    assert_eq!(
        got[0].to,
        [
            "auth.lead@valley-imaging.example",
            "charge.nurse@valley-imaging.example"
        ]
    );
    assert!(
        got[0].subject.contains("More information requested"),
        "{}",
        got[0].subject
    );
    assert!(got[0].text.as_ref().unwrap().contains("sleep study pages 2-4"));
    assert_minimum_phi(&got[0], "SBX100200306", "Tate");
    assert!(w.ledger.outbox(false).await.unwrap().is_empty());
}

// ---- time-based rules, reminders, next level -------------------------------

both_backends!(
    #[tokio::test]
    a_standard_case_warns_at_75_percent_then_stalls_at_7_days_and_an_urgent_one_at_72_hours
);
async fn a_standard_case_warns_at_75_percent_then_stalls_at_7_days_and_an_urgent_one_at_72_hours(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let standard = w.case_id("lakeside-ortho", "LO-2026-1002").await;
    let urgent = w.case_id("valley-imaging", "VI-88120").await;
    let t0 = w.at();
    w.submit(standard).await;
    w.submit(urgent).await;
    let scan = |w: &World| {
        let (esc, ledger) = (w.esc.clone(), w.ledger.clone());
        async move {
            esc.scan(&ledger, "lakeside-ortho").await.unwrap() + esc.scan(&ledger, "valley-imaging").await.unwrap()
        }
    };
    let reasons = |w: &World| {
        let ledger = w.ledger.clone();
        async move {
            let mut r: Vec<(i64, Reason)> = ledger
                .escalations(None, false)
                .await
                .unwrap()
                .iter()
                .map(|e| (e.case_id.unwrap(), e.reason))
                .collect();
            r.sort();
            r
        }
    };
    w.set(t0 + Duration::hours(50));
    assert_eq!(scan(&w).await, 0, "urgent at 69 %, standard at 30 %");
    w.set(t0 + Duration::hours(55));
    assert_eq!(scan(&w).await, 1);
    assert_eq!(reasons(&w).await, [(urgent, Reason::StallWarning)]);
    w.set(t0 + Duration::hours(72));
    scan(&w).await;
    assert_eq!(reasons(&w).await, [(urgent, Reason::Stalled)], "the warning gives way");
    // 75 % of 7 days is 126 hours.
    w.set(t0 + Duration::hours(125));
    scan(&w).await;
    assert!(!reasons(&w).await.contains(&(standard, Reason::StallWarning)));
    w.set(t0 + Duration::hours(127));
    scan(&w).await;
    assert!(reasons(&w).await.contains(&(standard, Reason::StallWarning)));
    // Chicago is on CST throughout November: 7 days is 168 hours.
    w.set(t0 + Duration::hours(168) - Duration::minutes(1));
    scan(&w).await;
    assert!(!reasons(&w).await.contains(&(standard, Reason::Stalled)));
    w.set(t0 + Duration::hours(168));
    scan(&w).await;
    assert!(reasons(&w).await.contains(&(standard, Reason::Stalled)));
    // The timeline keeps the evidence of the payer's delay.
    let events = w.ledger.events(standard).await.unwrap();
    let evidence = events
        .iter()
        .find(|e| e.detail["reason"] == "stalled")
        .expect("a stall event");
    assert!(
        evidence.detail["summary"]
            .as_str()
            .unwrap()
            .contains("past the payer's 7 calendar days (standard) deadline"),
        "{:?}",
        evidence.detail
    );
    assert!(evidence.detail["due_at"].is_string());
    // Scanning again opens nothing twice.
    let before = w.ledger.escalations(None, true).await.unwrap().len();
    scan(&w).await;
    assert_eq!(w.ledger.escalations(None, true).await.unwrap().len(), before);

    // The payer decides: the stall ends by itself.
    w.ledger
        .transition(urgent, CaseStatus::Approved, &Actor::user("test"), None)
        .await
        .unwrap();
    assert!(!reasons(&w).await.iter().any(|(c, _)| *c == urgent));
    let stalled = w.ledger.escalations(None, true).await.unwrap();
    let closed = stalled
        .iter()
        .find(|e| e.case_id == Some(urgent) && e.reason == Reason::Stalled)
        .unwrap();
    assert_eq!(closed.state, EscalationState::Resolved);

    // Stall mail says how long against which window.
    let outbox = w.ledger.outbox(false).await.unwrap();
    let stall_mail = outbox
        .iter()
        .find(|m| m.subject.contains("Past the payer's deadline") && m.subject.contains("LO-2026-1002"))
        .unwrap();
    assert!(
        stall_mail.subject.contains("pending 7 of 7 days"),
        "{}",
        stall_mail.subject
    );
}

both_backends!(
    #[tokio::test]
    an_unacknowledged_escalation_reminds_then_moves_to_the_managers_and_acknowledging_stops_it
);
async fn an_unacknowledged_escalation_reminds_then_moves_to_the_managers_and_acknowledging_stops_it(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let id = w.case_id("lakeside-ortho", "LO-2026-1001").await;
    w.submit(id).await;
    w.deny(id).await;
    let t0 = w.at();
    let steps = |hours: i64| {
        let (esc, ledger) = (w.esc.clone(), w.ledger.clone());
        w.set(t0 + Duration::hours(hours));
        async move { esc.advance(&ledger).await.unwrap() }
    };
    assert_eq!(steps(23).await, 0);
    assert_eq!(steps(24).await, 1, "first reminder");
    assert_eq!(steps(25).await, 0);
    assert_eq!(steps(48).await, 1, "second reminder");
    assert_eq!(steps(72).await, 1, "next level");
    let mails = w.ledger.outbox(true).await.unwrap();
    let kinds: Vec<&str> = mails.iter().map(|m| m.kind.as_str()).collect();
    assert_eq!(kinds, ["escalation", "reminder", "reminder", "next_level"]);
    let sup = "precert.supervisor@lakeside-ortho.example";
    let mgr = "revenue.manager@lakeside-ortho.example";
    assert_eq!(mails[1].recipients, [sup]);
    assert!(mails[1].subject.starts_with("Reminder 1: "), "{}", mails[1].subject);
    assert_eq!(mails[3].recipients, [mgr, sup], "to the manager, cc the supervisor");
    assert!(mails[3].subject.starts_with("Escalated (not acknowledged): "));
    let e = &w.ledger.escalations(None, false).await.unwrap()[0];
    assert_eq!((e.level, e.sends), (1, 4));

    // The file transport writes the mails; the next level's threads under
    // the first one.
    let files = w.deliver_to_files().await;
    assert_eq!(files.len(), 4);
    let next_level = files.iter().find(|m| m.subject.starts_with("Escalated")).unwrap();
    assert_eq!(next_level.to, [mgr]);
    assert_eq!(next_level.cc, [sup]);
    let first_id = &mails[0].message_id;
    assert!(
        next_level
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("In-Reply-To") && v.contains(first_id.as_str())),
        "{:?}",
        next_level.headers
    );

    // The manager acknowledges (through the CLI): no more reminders.
    let out =
        w.p.precert(&["escalations", "ack", &e.id.to_string(), "--note", "appeal drafted"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(steps(96).await, 0);
    assert_eq!(steps(500).await, 0);
    let e = w.ledger.escalation(e.id).await.unwrap();
    assert_eq!(e.state, EscalationState::Acknowledged);
    assert_eq!(e.note.as_deref(), Some("appeal drafted"));
    // Acknowledged is still active: the rule does not raise it again.
    w.esc.scan(&w.ledger, "lakeside-ortho").await.unwrap();
    let denials = w.ledger.escalations(None, true).await.unwrap();
    assert_eq!(denials.iter().filter(|e| e.reason == Reason::Denied).count(), 1);
    let listing = stdout(&w.p.precert(&["escalations", "list"]));
    assert!(
        listing.contains("acknowledged") && listing.contains("denied"),
        "{listing}"
    );
}

both_backends!(
    #[tokio::test]
    the_same_case_and_reason_is_not_raised_again_within_its_window
);
async fn the_same_case_and_reason_is_not_raised_again_within_its_window(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let id = w.case_id("lakeside-ortho", "LO-2026-1001").await;
    let a = Actor::user("test");
    w.submit(id).await;
    w.deny(id).await;
    // Resubmitted and denied again the same day: one escalation, one mail.
    w.ledger.transition(id, CaseStatus::Ready, &a, None).await.unwrap();
    assert!(w.ledger.escalations(None, false).await.unwrap().is_empty(), "resolved");
    w.advance(Duration::hours(2));
    w.submit(id).await;
    w.deny(id).await;
    assert_eq!(w.ledger.escalations(None, true).await.unwrap().len(), 1);
    assert_eq!(w.ledger.outbox(true).await.unwrap().len(), 1);
    // After the window, a new denial is news again.
    w.ledger.transition(id, CaseStatus::Ready, &a, None).await.unwrap();
    w.advance(Duration::hours(25));
    w.submit(id).await;
    w.deny(id).await;
    assert_eq!(w.ledger.escalations(None, false).await.unwrap().len(), 1);
    assert_eq!(w.ledger.outbox(true).await.unwrap().len(), 2);
}

both_backends!(
    #[tokio::test]
    the_daily_digest_groups_each_supervisors_open_escalations_most_urgent_first
);
async fn the_daily_digest_groups_each_supervisors_open_escalations_most_urgent_first(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let a = Actor::user("test");
    let denied = w.case_id("valley-imaging", "VI-88120").await;
    let pended = w.case_id("valley-imaging", "VI-88121").await;
    let stuck = w.case_id("valley-imaging", "VI-88122").await;
    w.submit(denied).await;
    w.deny(denied).await;
    w.submit(pended).await;
    w.ledger
        .transition(pended, CaseStatus::PendedForInfo, &a, None)
        .await
        .unwrap();
    w.ledger
        .transition(
            stuck,
            CaseStatus::NeedsAttention,
            &a,
            Some("portal changed: no #submit"),
        )
        .await
        .unwrap();
    let before = w.ledger.outbox(true).await.unwrap().len();
    let queued = w.esc.digest(&w.ledger, "valley-imaging", "slot-1").await.unwrap();
    assert_eq!(queued, 2, "one digest per supervisor");
    assert_eq!(
        w.esc.digest(&w.ledger, "valley-imaging", "slot-1").await.unwrap(),
        0,
        "a slot once"
    );
    assert_eq!(
        w.esc.digest(&w.ledger, "lakeside-ortho", "slot-1").await.unwrap(),
        0,
        "nothing open"
    );
    let mails = w.ledger.outbox(true).await.unwrap();
    let digests: Vec<_> = mails[before..].iter().collect();
    assert_eq!(digests[0].recipients, ["auth.lead@valley-imaging.example"]);
    assert_eq!(digests[1].recipients, ["charge.nurse@valley-imaging.example"]);
    assert!(
        digests[0].subject.contains("3 open escalation(s)"),
        "{}",
        digests[0].subject
    );

    let digest = w
        .deliver_to_files()
        .await
        .into_iter()
        .find(|m| m.subject.contains("Daily digest") && m.to == ["auth.lead@valley-imaging.example"])
        .unwrap();
    assert!(digest.defects.is_empty());
    let text = digest.text.unwrap();
    let order: Vec<usize> = [
        "Denied (1)",
        "More information requested (1)",
        "Automation needs a person (1)",
    ]
    .iter()
    .map(|h| text.find(h).unwrap_or_else(|| panic!("no `{h}` in:\n{text}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "most urgent first:\n{text}");
    assert!(text.contains("VI-88120") && text.contains("VI-88121") && text.contains("VI-88122"));
    assert!(!text.contains("SBX1002003"), "no member IDs in a digest");
    assert!(digest.html.unwrap().contains("<h3>Denied (1)</h3>"));

    // An acknowledged escalation has an owner: counted, no longer listed.
    let pend = w.ledger.escalations(Some("valley-imaging"), false).await.unwrap();
    let pend = pend.iter().find(|e| e.reason == Reason::PendedForInfo).unwrap();
    w.ledger.acknowledge_escalation(pend.id, &a, None).await.unwrap();
    assert_eq!(w.esc.digest(&w.ledger, "valley-imaging", "slot-2").await.unwrap(), 2);
    let mails = w.ledger.outbox(true).await.unwrap();
    let last = mails.last().unwrap();
    assert!(last.subject.contains("2 open escalation(s)"), "{}", last.subject);
}

both_backends!(
    #[tokio::test]
    rules_take_practice_state_and_payer_overrides_and_bad_values_name_their_file_and_key
);
async fn rules_take_practice_state_and_payer_overrides_and_bad_values_name_their_file_and_key(backend: Backend) {
    let w = world_on(backend, |p| {
        let path = p.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("standard_days = 7\n", "standard_days = 10\n")
            + "\n[escalations.states.WA]\nstandard_days = 5\n[escalations.plan_types.commercial]\nstandard_days = 15\n";
        std::fs::write(&path, text).unwrap();
        let path = p.path("config/practices/lakeside-ortho.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            "[escalations.payers.sandbox]\n",
            "[escalations.payers.sandbox]\nurgent_hours = 24\n",
        ) + "\n[escalations]\npatient_details = \"none\"\n";
        std::fs::write(&path, text).unwrap();
    })
    .await;
    let s = &w.settings;
    let lakeside = s.practice("lakeside-ortho").unwrap();
    let valley = s.practice("valley-imaging").unwrap();
    let key = |payer, state, plan_type| rules::RuleKey {
        payer,
        state,
        plan_type,
    };
    let r: RuleSet = rules::rules_for(
        &s.escalations,
        &lakeside.escalations,
        &key("sandbox", "IL", "medicare_advantage"),
    );
    assert_eq!((r.standard_days, r.urgent_hours), (10, 24));
    let r = rules::rules_for(
        &s.escalations,
        &valley.escalations,
        &key("sandbox", "WA", "marketplace"),
    );
    assert_eq!((r.standard_days, r.urgent_hours), (5, 72));
    // Commercial plans follow state law: here 15 days, but Washington's 5
    // (a state layer) still wins over the plan type.
    let r = rules::rules_for(&s.escalations, &valley.escalations, &key("other", "OR", "commercial"));
    assert_eq!(r.standard_days, 15);
    let r = rules::rules_for(&s.escalations, &valley.escalations, &key("other", "WA", "commercial"));
    assert_eq!(r.standard_days, 5);

    // patient_details = "none": no initials, no member ID at all.
    let id = w.case_id("lakeside-ortho", "LO-2026-1001").await;
    w.submit(id).await;
    w.deny(id).await;
    let m = w.deliver_to_files().await.remove(0);
    assert!(!m.raw.contains("A. M.") && !m.raw.contains("0301"), "{}", m.raw);

    let p = Project::on(backend).await;
    practice_toml(
        &p,
        "valley-imaging",
        "\n[escalations]\npatient_details = \"everything\"\n[escalations.rules]\nwarn_at_percent = 120\n[escalations.states.ZZ]\nurgent_hours = 0\n[escalations.plan_types.hmo]\nurgent_hours = 48\n",
    );
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    for needle in [
        "valley-imaging.toml",
        "escalations.patient_details",
        "`everything` is not one of minimum, none, full",
        "escalations.rules.warn_at_percent",
        "escalations.states.ZZ",
        "escalations.states.ZZ.urgent_hours",
        "escalations.plan_types.hmo",
    ] {
        assert!(err.contains(needle), "no `{needle}` in:\n{err}");
    }
}

both_backends!(
    #[tokio::test]
    a_case_automation_gives_up_on_goes_to_operations_and_a_service_date_near_to_supervisors
);
async fn a_case_automation_gives_up_on_goes_to_operations_and_a_service_date_near_to_supervisors(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let a = Actor::user("test");
    let id = w.case_id("lakeside-ortho", "LO-2026-1002").await;
    // A failure message that echoes the patient (as portals' errors do).
    let why = "portal says: member SBX100200302 (Blake Okafor) not found";
    w.ledger
        .transition(id, CaseStatus::NeedsAttention, &a, Some(why))
        .await
        .unwrap();
    let mails = w.ledger.outbox(true).await.unwrap();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].recipients, ["precert.ops@lakeside-ortho.example"]);
    assert!(mails[0].subject.contains("Automation needs a person"));
    let m = w.deliver_to_files().await.remove(0);
    let text = m.text.as_deref().unwrap();
    assert!(text.contains("member ********0302 (B. O.) not found"), "{text}");
    // It leads to the console's case page (the screenshot and the portal's
    // message are there), not to a shell command.
    assert!(
        text.contains("http://127.0.0.1:8623/cases/lakeside-ortho/LO-2026-1002") && text.contains("screenshot"),
        "{text}"
    );
    assert!(
        !text.contains("precert cases") && !text.contains("precert escalations"),
        "no command to run: {text}"
    );
    assert_minimum_phi(&m, "SBX100200302", "Okafor");

    // LO-2026-1001's service is on Tuesday 8 December 2026, still not
    // submitted: on Thursday 3 December it is 3 business days away.
    w.set(utc("2026-12-02T15:00:00Z"));
    w.esc.scan(&w.ledger, "lakeside-ortho").await.unwrap();
    let case = w.case_id("lakeside-ortho", "LO-2026-1001").await;
    let near = |w: &World| {
        let ledger = w.ledger.clone();
        async move {
            ledger
                .escalations(None, false)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.reason == Reason::ServiceDateNear && e.case_id == Some(case))
                .count()
        }
    };
    assert_eq!(near(&w).await, 0, "4 business days away");
    w.set(utc("2026-12-03T15:00:00Z"));
    w.esc.scan(&w.ledger, "lakeside-ortho").await.unwrap();
    assert_eq!(near(&w).await, 1);
    let mails = w.ledger.outbox(true).await.unwrap();
    let m = mails
        .iter()
        .find(|m| m.subject.contains("Service date near") && m.subject.contains("LO-2026-1001"))
        .unwrap();
    assert_eq!(m.recipients, ["precert.supervisor@lakeside-ortho.example"]);
}

both_backends!(
    #[tokio::test]
    a_paused_payer_reaches_every_practices_operations_and_ends_when_it_works_again
);
async fn a_paused_payer_reaches_every_practices_operations_and_ends_when_it_works_again(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    w.esc
        .payer_alert(
            &w.ledger,
            &"sandbox".into(),
            Some("payer sandbox paused after 5 portal failures"),
        )
        .await
        .unwrap();
    // Both practices use the sandbox portal playbook; lakeside's PAS binding
    // is another playbook.
    let open = w.ledger.escalations(None, false).await.unwrap();
    let mut practices: Vec<&str> = open.iter().map(|e| e.practice_id.as_str()).collect();
    practices.sort();
    assert_eq!(practices, ["lakeside-ortho", "valley-imaging"]);
    assert!(open
        .iter()
        .all(|e| e.reason == Reason::PayerPaused && e.case_id.is_none()));
    let mut recipients: Vec<String> = w
        .ledger
        .outbox(true)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|m| m.recipients)
        .collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["it.ops@valley-imaging.example", "precert.ops@lakeside-ortho.example"]
    );
    // A second alert while paused adds nothing.
    w.esc
        .payer_alert(&w.ledger, &"sandbox".into(), Some("still failing"))
        .await
        .unwrap();
    assert_eq!(w.ledger.outbox(true).await.unwrap().len(), 2);
    w.esc.payer_alert(&w.ledger, &"sandbox".into(), None).await.unwrap();
    assert!(w.ledger.escalations(None, false).await.unwrap().is_empty());
    let mails = w.deliver_to_files().await;
    assert_eq!(mails.len(), 2);
    let text = mails[0].text.as_deref().unwrap();
    assert!(mails[0].subject.contains("Payer paused"), "{}", mails[0].subject);
    assert!(text.contains("paused after 5 portal failures"), "{text}");
}

both_backends!(
    #[tokio::test]
    a_partial_approval_mails_at_once_and_a_missing_letter_after_48_hours_until_it_arrives
);
async fn a_partial_approval_mails_at_once_and_a_missing_letter_after_48_hours_until_it_arrives(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let id = w.case_id("lakeside-ortho", "LO-2026-1003").await;
    w.submit(id).await;
    let case = w.ledger.get(id).await.unwrap();
    let line = &case.data.service_lines[0];
    let decision = Decision {
        auth_number: Some("SHP97110".into()),
        valid: None,
        lines: vec![precert::case::LineDecision {
            code: line.code.clone(),
            requested_units: 12,
            approved_units: 6,
        }],
        conditions: Some("6 visits approved; re-request with progress notes".into()),
        denial: None,
        decided_at: w.at(),
        source: "portal:sandbox".into(),
    };
    w.ledger
        .record_decision(id, &decision, CaseStatus::PartiallyApproved, &Actor::user("test"))
        .await
        .unwrap();
    let mail = w.deliver_to_files().await.remove(0);
    assert!(mail.subject.contains("Partially approved"), "{}", mail.subject);
    let text = mail.text.unwrap();
    assert!(text.contains("97110: 6 of 12 units"), "{text}");
    assert!(text.contains("re-request with progress notes"), "{text}");
    assert!(text.contains("SHP97110"), "{text}");

    let letter_missing = |w: &World| {
        let ledger = w.ledger.clone();
        async move {
            ledger
                .escalations(None, false)
                .await
                .unwrap()
                .iter()
                .any(|e| e.reason == Reason::LetterMissing)
        }
    };
    w.advance(Duration::hours(47));
    w.esc.scan(&w.ledger, "lakeside-ortho").await.unwrap();
    assert!(!letter_missing(&w).await);
    w.advance(Duration::hours(1));
    w.esc.scan(&w.ledger, "lakeside-ortho").await.unwrap();
    assert!(letter_missing(&w).await);
    // The letters job keeps the letter: the escalation ends.
    let letter = precert::store::Letter {
        kind: "letter".into(),
        stored_path: "letters/x.pdf".into(),
        sha256: "00".repeat(32),
        bytes: 10,
        media_type: "application/pdf".into(),
        fetched_at: None,
    };
    w.ledger.add_letter(id, &letter, &Actor::user("test")).await.unwrap();
    assert!(!letter_missing(&w).await);
}

both_backends!(
    #[tokio::test]
    the_cli_raises_escalations_for_its_own_changes_and_delivers_and_lists_the_outbox
);
async fn the_cli_raises_escalations_for_its_own_changes_and_delivers_and_lists_the_outbox(backend: Backend) {
    let p = Project::on(backend).await;
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let out = p.precert(&[
        "cases",
        "set-status",
        "lakeside-ortho/LO-2026-1002",
        "needs_attention",
        "--note",
        "wrong location on the request",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing = stdout(&p.precert(&["outbox", "list"]));
    assert!(
        listing.contains("pending") && listing.contains("precert.ops@lakeside-ortho.example"),
        "{listing}"
    );
    let listing = stdout(&p.precert(&["escalations", "list"]));
    assert!(
        listing.contains("needs_attention") && listing.contains("LO-2026-1002"),
        "{listing}"
    );
    let shown = stdout(&p.precert(&["cases", "show", "lakeside-ortho/LO-2026-1002"]));
    assert!(
        shown.contains("escalations") && shown.contains("needs_attention"),
        "{shown}"
    );

    let out = p.precert(&["outbox", "send"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("1 sent, 0 failed"), "{}", stdout(&out));
    assert!(stdout(&p.precert(&["outbox", "list"])).contains("outbox is empty"));
    assert!(stdout(&p.precert(&["outbox", "list", "--all"])).contains("sent"));
    let dir = p.settings().data_dir.join("mail");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|f| f.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    let mail = parse_eml(&std::fs::read(&files[0]).unwrap());
    let text = mail.text.unwrap();
    assert!(text.contains("wrong location on the request"));
    // The command line signs acknowledgement links with the ledger's key,
    // as the daemon does: one in the text, one in the HTML.
    assert!(text.contains("http://127.0.0.1:8623/ack/"), "{text}");
    assert!(mail.html.unwrap().contains("href=\"http://127.0.0.1:8623/ack/"));

    // `scan` evaluates the time rules now; nothing new is due today for
    // this case, and a second scan opens nothing.
    let first = stdout(&p.precert(&["escalations", "scan", "--practice", "lakeside-ortho"]));
    assert!(first.contains("escalation(s) opened"), "{first}");
    let again = stdout(&p.precert(&["escalations", "scan", "--practice", "lakeside-ortho"]));
    assert!(again.starts_with("0 escalation(s) opened"), "{again}");

    // Retrying mail that is not failed is refused with a clear message.
    let out = p.precert(&["outbox", "retry", "99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mail 99"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn outbox_test_sends_a_message_without_patient_data_and_says_why_when_it_cannot() {
    let mut server = SmtpServer::start();
    let p = Project::new();
    p.use_smtp(server.port());
    let out = p.precert(&["outbox", "test", "it.ops@valley-imaging.example"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout(&out).contains("Sent to it.ops@valley-imaging.example: accepted by the SMTP server: 250"),
        "{}",
        stdout(&out)
    );
    let got = server.wait_for(1, StdDuration::from_secs(20));
    assert_eq!(got[0].to, ["it.ops@valley-imaging.example"]);
    assert!(got[0].defects.is_empty());
    assert_eq!(got[0].subject, "[precert] Test message");

    server.stop();
    let out = p.precert(&["outbox", "test", "it.ops@valley-imaging.example"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not sent") && err.contains(&server.port().to_string()),
        "{err}"
    );
}

// ---- a practice left out ---------------------------------------------------

both_backends!(
    #[tokio::test]
    a_disabled_practice_reaches_its_own_operations_or_the_daemons_and_resolves_when_it_runs_again
);
/// Issue 11: a practice whose configuration does not check is disabled
/// alone, and operations hear of it — its own operations contacts when its
/// file can be read that far, the daemon's `[mail] operations` when not —
/// until a reload finds it fixed.
async fn a_disabled_practice_reaches_its_own_operations_or_the_daemons_and_resolves_when_it_runs_again(
    backend: Backend,
) {
    let w = world_on(backend, |p| {
        let path = p.config_path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[mail]\n"));
        std::fs::write(
            &path,
            text.replacen(
                "[mail]\n",
                "[mail]\noperations = [\"night.ops@precert-team.example\"]\n",
                1,
            ),
        )
        .unwrap();
    })
    .await;
    // valley's time zone is wrong (its contacts read fine); hill-clinic's
    // file is not even TOML.
    let valley = w.p.path("config/practices/valley-imaging.toml");
    let text = std::fs::read_to_string(&valley).unwrap();
    std::fs::write(&valley, text.replace("America/Los_Angeles", "Mars/Olympus_Mons")).unwrap();
    std::fs::write(
        w.p.path("config/practices/hill-clinic.toml"),
        "name = \"Hill Clinic\nnpi = [\n",
    )
    .unwrap();
    let (_, disabled) = precert::config::load_isolated(&w.p.config_path(), precert::config::Secrets::Skip).unwrap();
    let mut ids: Vec<&str> = disabled.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["hill-clinic", "valley-imaging"]);
    for d in &disabled {
        assert!(w.esc.practice_disabled(&w.ledger, d).await.unwrap().is_some());
        // Told once: a reload that finds it still broken adds nothing.
        assert!(w.esc.practice_disabled(&w.ledger, d).await.unwrap().is_none());
    }
    let open = w.ledger.escalations(None, false).await.unwrap();
    assert_eq!(open.len(), 2);
    assert!(open
        .iter()
        .all(|e| e.reason == Reason::PracticeDisabled && e.case_id.is_none()));
    let mails = w.deliver_to_files().await;
    assert_eq!(mails.len(), 2);
    let to = |practice: &str| {
        mails
            .iter()
            .find(|m| m.subject.contains(practice))
            .unwrap_or_else(|| panic!("no mail for {practice}"))
    };
    let valley_mail = to("valley-imaging");
    assert_eq!(valley_mail.to, ["it.ops@valley-imaging.example"]);
    let text = valley_mail.text.as_ref().unwrap();
    assert!(text.contains("timezone"), "the problem is named:\n{text}");
    assert!(text.contains("valley-imaging.toml"), "{text}");
    assert!(text.contains("reload"), "the next step says what to do:\n{text}");
    assert_eq!(to("hill-clinic").to, ["night.ops@precert-team.example"]);

    // valley fixed and reloaded: its escalation resolves; hill's stays.
    assert!(w.esc.practice_enabled(&w.ledger, "valley-imaging").await.unwrap());
    assert!(!w.esc.practice_enabled(&w.ledger, "valley-imaging").await.unwrap());
    let open = w.ledger.escalations(None, false).await.unwrap();
    assert_eq!(
        open.iter().map(|e| e.practice_id.as_str()).collect::<Vec<_>>(),
        ["hill-clinic"]
    );
}

// ---- what /metrics reads -----------------------------------------------------

both_backends!(
    #[tokio::test]
    metrics_read_the_oldest_undecided_request_and_escalations_by_reason
);
/// The grouped reads behind `precert_pending_oldest_age_seconds` and
/// `precert_escalations_active_by_reason`: the oldest undecided request per
/// practice, payer and urgency is the first to go pending (polls and pends
/// after that do not make it younger), and escalations count by reason.
async fn metrics_read_the_oldest_undecided_request_and_escalations_by_reason(backend: Backend) {
    let w = world_on(backend, |_| {}).await;
    let t0 = w.at();
    let (a, b) = (
        w.case_id("lakeside-ortho", "LO-2026-1001").await,
        w.case_id("lakeside-ortho", "LO-2026-1002").await,
    );
    w.submit(a).await;
    w.advance(Duration::hours(5));
    w.submit(b).await;
    let c = w.case_id("valley-imaging", "VI-88120").await;
    w.submit(c).await;
    w.deny(c).await;
    let oldest = w.ledger.oldest_pending().await.unwrap();
    let lakeside: Vec<_> = oldest.iter().filter(|o| o.practice_id == "lakeside-ortho").collect();
    let total: i64 = lakeside.iter().map(|o| o.open).sum();
    assert_eq!(total, 2, "{oldest:?}");
    assert_eq!(lakeside.iter().map(|o| o.since).min(), Some(t0), "{oldest:?}");
    assert!(
        oldest.iter().all(|o| o.practice_id != "valley-imaging"),
        "a decided request is not undecided: {oldest:?}"
    );
    let by_reason = w.ledger.count_active_escalations().await.unwrap();
    assert_eq!(
        by_reason,
        [("valley-imaging".to_owned(), "denied".to_owned(), 1)],
        "{by_reason:?}"
    );
    let counts = w.ledger.count_by_practice_status().await.unwrap();
    assert!(
        counts.contains(&("lakeside-ortho".to_owned(), CaseStatus::Pending, 2)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&("valley-imaging".to_owned(), CaseStatus::Denied, 1)),
        "{counts:?}"
    );
}
