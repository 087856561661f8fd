//! Reports (issue 14): a ledger with a known history, written on an
//! injected clock, and every figure of the report asserted exactly — on
//! SQLite and PostgreSQL — then the same figures through `precert report`
//! (table, CSV, JSON, the late-decision evidence as CSV and HTML), and the
//! console's Reports page over HTTP and in real Chromium.
//!
//! The history, lakeside-ortho (America/Chicago; DST ends 2026-11-01):
//!
//! payer `sandbox` (federal windows: 72 h urgent, 7 calendar days standard)
//! - A01–A12 standard, approved 48 h after submission (first pass).
//! - A13 standard, submitted Oct 28 10:00 CDT, approved 6 days later
//!   (Nov 3 10:00 CST: 145 h, across the DST change): in the window.
//! - A14 standard, same submission, denied CO-50 8 days later (193 h; the
//!   deadline is Nov 4 10:00 CST, 169 h after): 24 h late; polls saw it
//!   pending before, 2 h after and 23 h after the deadline.
//! - A15/A16/A17 urgent, decided at 2 h, 71 h (approved) and 73 h (denied
//!   CO-197; a poll at 72.5 h saw it pending).
//! - A18 partially approved at 72 h, appealed (back to ready, submitted
//!   again) and partially approved again, recorded by hand: appealed, not
//!   overturned. A19 pended for 48 h, approved at
//!   120 h. A20 denied CO-50 at 96 h, resubmitted, approved (appealed and
//!   overturned). A21 denied
//!   without a code at 120 h, no letter. A22 cancelled. A23 pending, its
//!   window open. A24 pending past its deadline (polls on Nov 20 and 25).
//! - A25 standard, submitted Oct 29 12:00 CDT, approved Nov 5 11:30 CST:
//!   168.5 h, inside a window that is 169 h long across DST.
//! - The sample case LO-2026-1004 goes to needs_attention (never submitted).
//!
//! payer `sandbox-pas` (the practice's override: 5 calendar days standard)
//! - B01–B10 approved at 24 h (B06–B10 without letters). B11 urgent at
//!   30 h. B12 denied N-115 at 48 h. B13 pended and still pended, past its
//!   5-day deadline. B14 approved at 6 days: late under the override (a
//!   poll 1 h after the deadline saw it pending). B15 needs attention.
//! - B16 was submitted in September: outside the period.
//!
//! Expected amounts (`AMOUNTS`): the requests at risk on Dec 1 are A14,
//! A17, A21 (denied), A24 (past its window), B12 (denied) and B13 (pended,
//! past its window); A21 and B12 carry no amount. A01, A20 (overturned),
//! A23 (open in its window), B15 (needs attention, in its window) and B16
//! carry one and are not at risk.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, TimeZone, Utc};
use precert::case::{CaseData, CaseStatus, Decision, DenialReason, Urgency, Usd};
use precert::report::{self, Figures, ReportQuery};
use precert::store::{Actor, EventKind, ImportOutcome, Ledger, Letter, ReportScope};
use serde_json::json;

use super::postgres::{both_backends, Backend, TestDb};
use super::support::{stderr, stdout, Project};

fn utc(m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
    let y = if m >= 9 { 2026 } else { 2027 };
    Utc.with_ymd_and_hms(y, m, d, h, min, 0).unwrap()
}

const HOUR: i64 = 3600;

/// What the practice expects requests to be worth, where it said.
const AMOUNTS: &[(&str, &str)] = &[
    ("A01", "100.00"),
    ("A14", "1250.00"),
    ("A17", "980.50"),
    ("A20", "700.00"),
    ("A23", "5000.00"),
    ("A24", "3400.00"),
    ("B13", "2750.25"),
    ("B15", "450.00"),
    ("B16", "999.99"),
];

/// The at-risk figures as (requests, with an amount, without, the sum).
fn at_risk(f: &Figures) -> (u64, u64, u64, Option<String>) {
    let r = &f.at_risk;
    (
        r.requests,
        r.with_amount,
        r.without_amount,
        r.amount.map(|a| a.to_string()),
    )
}

/// Writes cases' histories on a clock the test sets.
pub struct History {
    pub ledger: Ledger,
    clock: Arc<Mutex<DateTime<Utc>>>,
    template: CaseData,
    bot: Actor,
}

impl History {
    pub async fn new(url: &str, template: CaseData) -> History {
        let clock = Arc::new(Mutex::new(utc(9, 1, 12, 0)));
        let c = clock.clone();
        let ledger = Ledger::open(url)
            .await
            .unwrap()
            .with_clock(Arc::new(move || *c.lock().unwrap()));
        History {
            ledger,
            clock,
            template,
            bot: Actor::job("poll", 1),
        }
    }

    fn at(&self, t: DateTime<Utc>) {
        *self.clock.lock().unwrap() = t;
    }

    async fn case(&self, case_ref: &str, payer: &str, urgency: Urgency) -> i64 {
        let mut d = self.template.clone();
        d.case_ref = case_ref.into();
        d.coverage.payer = payer.into();
        d.urgency = urgency;
        d.expected_amount = AMOUNTS
            .iter()
            .find(|(c, _)| *c == case_ref)
            .map(|(_, a)| Usd::parse_expected(a).unwrap());
        match self
            .ledger
            .import_case(&d, Some(true), &Actor::user("test"))
            .await
            .unwrap()
        {
            ImportOutcome::Created { id } => id,
            o => panic!("{case_ref}: {o:?}"),
        }
    }

    async fn submit(&self, id: i64, t: DateTime<Utc>) {
        self.at(t);
        self.ledger
            .transition(id, CaseStatus::Submitting, &self.bot, None)
            .await
            .unwrap();
        self.ledger
            .transition(id, CaseStatus::Pending, &self.bot, None)
            .await
            .unwrap();
    }

    async fn decide(&self, id: i64, t: DateTime<Utc>, to: CaseStatus, denial: Option<(Option<&str>, &str)>) {
        self.at(t);
        let decision = Decision {
            auth_number: (to != CaseStatus::Denied).then(|| format!("AUTH{id}")),
            valid: None,
            lines: Vec::new(),
            conditions: None,
            denial: denial.map(|(code, text)| DenialReason {
                code: code.map(str::to_owned),
                text: text.into(),
            }),
            decided_at: t,
            source: "portal:sandbox".into(),
        };
        self.ledger.record_decision(id, &decision, to, &self.bot).await.unwrap();
    }

    async fn to(&self, id: i64, t: DateTime<Utc>, to: CaseStatus, note: Option<&str>) {
        self.at(t);
        self.ledger.transition(id, to, &self.bot, note).await.unwrap();
    }

    async fn poll(&self, id: i64, t: DateTime<Utc>) {
        self.at(t);
        self.ledger
            .append_event(
                id,
                EventKind::Run,
                &self.bot,
                &json!({ "action": "poll_status", "result": "ok" }),
            )
            .await
            .unwrap();
    }

    async fn letter(&self, id: i64, t: DateTime<Utc>) {
        self.at(t);
        let letter = Letter {
            kind: "letter".into(),
            stored_path: format!("letters/{id}.pdf").into(),
            sha256: format!("{id:064}"),
            bytes: 1,
            media_type: "application/pdf".into(),
            fetched_at: None,
        };
        self.ledger.add_letter(id, &letter, &self.bot).await.unwrap();
    }

    /// A standard or urgent request submitted at `t` and decided `after`
    /// later, with its letter an hour after the decision.
    #[allow(clippy::too_many_arguments)]
    async fn decided(
        &self,
        case_ref: &str,
        payer: &str,
        urgency: Urgency,
        t: DateTime<Utc>,
        after: Duration,
        to: CaseStatus,
        letter: bool,
    ) -> i64 {
        let id = self.case(case_ref, payer, urgency).await;
        self.submit(id, t).await;
        self.decide(id, t + after, to, None).await;
        if letter {
            self.letter(id, t + after + Duration::hours(1)).await;
        }
        id
    }
}

/// The history of the module's comment. Returns the ledger it was written
/// to (the clock left at the end of the history).
pub async fn write_history(url: &str, template: CaseData, sample: Option<i64>) -> History {
    use CaseStatus::*;
    use Urgency::{Standard, Urgent};
    let h = History::new(url, template).await;
    let (a, b) = ("sandbox", "sandbox-pas");
    for i in 1..=12u32 {
        h.decided(
            &format!("A{i:02}"),
            a,
            Standard,
            utc(10, 4 + i, 15, 0),
            Duration::hours(48),
            Approved,
            true,
        )
        .await;
    }
    h.decided(
        "A13",
        a,
        Standard,
        utc(10, 28, 15, 0),
        Duration::hours(145),
        Approved,
        true,
    )
    .await;
    let a14 = h.case("A14", a, Standard).await;
    h.submit(a14, utc(10, 28, 15, 0)).await;
    h.ledger.set_payer_ref(a14, "SBX-A14", &h.bot).await.unwrap();
    for t in [utc(11, 3, 15, 0), utc(11, 4, 18, 0), utc(11, 5, 15, 0)] {
        h.poll(a14, t).await;
    }
    h.decide(
        a14,
        utc(11, 5, 16, 0),
        Denied,
        Some((Some("CO-50"), "Not medically necessary")),
    )
    .await;
    h.letter(a14, utc(11, 5, 17, 0)).await;
    h.decided("A15", a, Urgent, utc(10, 20, 13, 0), Duration::hours(2), Approved, true)
        .await;
    h.decided(
        "A16",
        a,
        Urgent,
        utc(10, 21, 13, 0),
        Duration::hours(71),
        Approved,
        true,
    )
    .await;
    let a17 = h.case("A17", a, Urgent).await;
    h.submit(a17, utc(10, 22, 13, 0)).await;
    h.poll(a17, utc(10, 25, 13, 30)).await;
    h.decide(
        a17,
        utc(10, 25, 14, 0),
        Denied,
        Some((Some("CO-197"), "Precertification/authorization absent")),
    )
    .await;
    h.letter(a17, utc(10, 25, 15, 0)).await;
    let a18 = h
        .decided(
            "A18",
            a,
            Standard,
            utc(10, 23, 15, 0),
            Duration::hours(72),
            PartiallyApproved,
            true,
        )
        .await;
    // The appeal of A18's partial approval: back to the payer, whose answer
    // came by phone and was recorded by hand (as the console does).
    h.to(a18, utc(10, 27, 15, 0), Ready, Some("appealing the units not granted"))
        .await;
    h.submit(a18, utc(10, 27, 16, 0)).await;
    h.at(utc(10, 30, 15, 0));
    let by_hand = Decision {
        auth_number: Some("AUTH-A18".into()),
        valid: None,
        lines: Vec::new(),
        conditions: None,
        denial: None,
        decided_at: utc(10, 30, 15, 0),
        source: "manual:ann".into(),
    };
    h.ledger
        .record_decision(a18, &by_hand, PartiallyApproved, &Actor::user("ann"))
        .await
        .unwrap();
    let a19 = h.case("A19", a, Standard).await;
    h.submit(a19, utc(10, 26, 15, 0)).await;
    h.to(
        a19,
        utc(10, 27, 15, 0),
        PendedForInfo,
        Some("portal says \"more information\""),
    )
    .await;
    h.to(a19, utc(10, 29, 15, 0), Pending, None).await;
    h.decide(a19, utc(10, 31, 15, 0), Approved, None).await;
    h.letter(a19, utc(10, 31, 16, 0)).await;
    let a20 = h.case("A20", a, Standard).await;
    h.submit(a20, utc(10, 27, 15, 0)).await;
    h.decide(
        a20,
        utc(10, 31, 15, 0),
        Denied,
        Some((Some("CO-50"), "Not medically necessary")),
    )
    .await;
    h.letter(a20, utc(10, 31, 16, 0)).await;
    h.to(a20, utc(10, 31, 19, 0), Ready, Some("resubmitting with the MRI report"))
        .await;
    h.submit(a20, utc(10, 31, 20, 0)).await;
    h.decide(a20, utc(11, 1, 20, 0), Approved, None).await;
    let a21 = h.case("A21", a, Standard).await;
    h.submit(a21, utc(10, 29, 15, 0)).await;
    h.decide(a21, utc(11, 3, 15, 0), Denied, Some((None, "Missing clinical notes")))
        .await;
    let a22 = h.case("A22", a, Standard).await;
    h.submit(a22, utc(10, 30, 15, 0)).await;
    h.to(a22, utc(11, 1, 15, 0), Cancelled, Some("patient postponed")).await;
    let a23 = h.case("A23", a, Standard).await;
    h.submit(a23, utc(11, 28, 16, 0)).await;
    let a24 = h.case("A24", a, Standard).await;
    h.submit(a24, utc(11, 10, 16, 0)).await;
    h.poll(a24, utc(11, 20, 16, 0)).await;
    h.poll(a24, utc(11, 25, 16, 0)).await;
    h.decided(
        "A25",
        a,
        Standard,
        utc(10, 29, 17, 0),
        Duration::minutes(168 * 60 + 30),
        Approved,
        true,
    )
    .await;
    if let Some(sample) = sample {
        h.to(
            sample,
            utc(11, 15, 12, 0),
            NeedsAttention,
            Some("submit portal_changed: no element matches #submit"),
        )
        .await;
    }

    for i in 1..=10u32 {
        h.decided(
            &format!("B{i:02}"),
            b,
            Standard,
            utc(11, 1 + i, 15, 0),
            Duration::hours(24),
            Approved,
            i <= 5,
        )
        .await;
    }
    h.decided(
        "B11",
        b,
        Urgent,
        utc(11, 12, 15, 0),
        Duration::hours(30),
        Approved,
        true,
    )
    .await;
    let b12 = h.case("B12", b, Standard).await;
    h.submit(b12, utc(11, 13, 15, 0)).await;
    h.decide(
        b12,
        utc(11, 15, 15, 0),
        Denied,
        Some((Some("N-115"), "Service not covered by plan")),
    )
    .await;
    h.letter(b12, utc(11, 15, 16, 0)).await;
    let b13 = h.case("B13", b, Standard).await;
    h.submit(b13, utc(11, 20, 15, 0)).await;
    h.to(b13, utc(11, 22, 15, 0), PendedForInfo, None).await;
    let b14 = h.case("B14", b, Standard).await;
    h.submit(b14, utc(11, 14, 15, 0)).await;
    h.poll(b14, utc(11, 19, 16, 0)).await;
    h.decide(b14, utc(11, 20, 15, 0), Approved, None).await;
    h.letter(b14, utc(11, 20, 16, 0)).await;
    let b15 = h.case("B15", b, Standard).await;
    h.submit(b15, utc(11, 28, 15, 0)).await;
    h.to(
        b15,
        utc(11, 29, 15, 0),
        NeedsAttention,
        Some("poll_status portal_changed: the status cell is gone"),
    )
    .await;
    h.decided(
        "B16",
        b,
        Standard,
        utc(9, 28, 15, 0),
        Duration::hours(96),
        Approved,
        true,
    )
    .await;
    // After the report's instant: invisible to it.
    h.decide(a23, utc(12, 2, 15, 0), Approved, None).await;
    h
}

/// The period: October and November in Chicago, read at Dec 1 00:00 CST.
pub fn scope() -> ReportScope {
    ReportScope {
        from: utc(10, 1, 5, 0),
        to: utc(12, 1, 6, 0),
        as_of: utc(12, 1, 6, 0),
        practice: Some("lakeside-ortho".into()),
        payer: None,
        allowed: None,
    }
}

/// The practice's override for `sandbox-pas`: 5 calendar days standard.
pub fn override_window(p: &Project) {
    let path = p.path("config/practices/lakeside-ortho.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[escalations.payers.sandbox-pas]\nstandard_days = 5\n"),
    )
    .unwrap();
}

const PUBLISHED: &str = "source = \"https://sandbox.example/prior-auth-metrics-2026\"\napproval_rate = 88.0\ndenial_rate = 12.0\nmedian_decision_hours_standard = 96\nmedian_decision_hours_urgent = 24.5\n";

fn secs(h: i64) -> Option<i64> {
    Some(h * HOUR)
}

fn assert_sandbox(f: &Figures) {
    assert_eq!(
        (f.practice.as_str(), f.payer.as_str(), f.group.as_deref()),
        ("lakeside-ortho", "sandbox", None)
    );
    assert_eq!(
        (
            f.submitted,
            f.decided,
            f.approved,
            f.partially_approved,
            f.denied,
            f.cancelled,
            f.expired,
            f.open
        ),
        (25, 22, 17, 1, 4, 1, 0, 2)
    );
    assert_eq!((f.pended_now, f.attention_now, f.resubmitted), (0, 0, 2), "A18, A20");
    assert_eq!(
        (f.appealed, f.overturned, f.overturn_rate),
        (2, 1, Some(50.0)),
        "A18, A20"
    );
    assert_eq!(f.first_pass_approved, 16);
    assert_eq!(f.first_pass_rate, Some(72.7));
    assert_eq!(f.approval_rate, Some(81.8));
    assert_eq!(f.denial_rate, Some(18.2));
    assert_eq!(
        f.turnaround_urgent,
        report::Turnaround {
            count: 3,
            median_seconds: secs(71),
            p90_seconds: secs(73),
            max_seconds: secs(73),
        }
    );
    assert_eq!(
        f.turnaround_standard,
        report::Turnaround {
            count: 19,
            median_seconds: secs(48),
            p90_seconds: Some(168 * HOUR + 30 * 60),
            max_seconds: secs(193),
        }
    );
    assert_eq!(
        f.window_urgent,
        report::WindowFigures {
            due: 3,
            within: 2,
            late: 1,
            overdue_open: 0,
            share_within: Some(66.7)
        }
    );
    assert_eq!(
        f.window_standard,
        report::WindowFigures {
            due: 20,
            within: 18,
            late: 1,
            overdue_open: 1,
            share_within: Some(90.0)
        }
    );
    assert_eq!(
        f.pends,
        report::PendFigures {
            requests: 1,
            episodes: 1,
            open: 0,
            median_seconds: secs(48),
            max_seconds: secs(48),
        }
    );
    let reasons: Vec<(Option<&str>, &str, u64)> = f
        .denial_reasons
        .iter()
        .map(|r| (r.code.as_deref(), r.text.as_str(), r.count))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("CO-50"), "Not medically necessary", 2),
            (None, "Missing clinical notes", 1),
            (Some("CO-197"), "Precertification/authorization absent", 1),
        ]
    );
    assert_eq!(f.letters_missing, 1, "A21");
    let attention: Vec<(&str, u64)> = f.needs_attention.iter().map(|r| (r.text.as_str(), r.count)).collect();
    assert_eq!(attention, [("submit portal_changed", 1)]);
    assert_eq!(f.turnaround_days, [1, 0, 13, 2, 1, 2, 1, 1, 1]);
    let months: Vec<(&str, u64, u64, u64)> = f
        .months
        .iter()
        .map(|m| (m.month.as_str(), m.submitted, m.decided, m.approved))
        .collect();
    assert_eq!(months, [("2026-10", 23, 22, 18), ("2026-11", 2, 0, 0)]);
    assert_eq!(
        at_risk(f),
        (4, 3, 1, Some("5630.50".into())),
        "A14 + A17 + A24; A21 without an amount"
    );
    assert_eq!(
        f.at_risk.summary(),
        "$5,630.50 at risk (3 of 4 requests with an amount)"
    );
}

fn assert_sandbox_pas(f: &Figures) {
    assert_eq!(
        (f.practice.as_str(), f.payer.as_str()),
        ("lakeside-ortho", "sandbox-pas")
    );
    assert_eq!(
        (
            f.submitted,
            f.decided,
            f.approved,
            f.partially_approved,
            f.denied,
            f.cancelled,
            f.expired,
            f.open
        ),
        (15, 13, 12, 0, 1, 0, 0, 2)
    );
    assert_eq!((f.pended_now, f.attention_now, f.resubmitted), (1, 1, 0));
    assert_eq!((f.appealed, f.overturned, f.overturn_rate), (0, 0, None));
    assert_eq!(f.first_pass_approved, 12);
    assert_eq!(
        (f.first_pass_rate, f.approval_rate, f.denial_rate),
        (Some(92.3), Some(92.3), Some(7.7))
    );
    assert_eq!(
        f.turnaround_urgent,
        report::Turnaround {
            count: 1,
            median_seconds: secs(30),
            p90_seconds: secs(30),
            max_seconds: secs(30),
        }
    );
    assert_eq!(
        f.turnaround_standard,
        report::Turnaround {
            count: 12,
            median_seconds: secs(24),
            p90_seconds: secs(48),
            max_seconds: secs(144),
        }
    );
    assert_eq!(f.window_urgent.share_within, Some(100.0));
    assert_eq!(
        f.window_standard,
        report::WindowFigures {
            due: 13,
            within: 11,
            late: 1,
            overdue_open: 1,
            share_within: Some(84.6)
        }
    );
    assert_eq!(
        f.pends,
        report::PendFigures {
            requests: 1,
            episodes: 1,
            open: 1,
            median_seconds: None,
            max_seconds: None,
        }
    );
    assert_eq!(f.denial_reasons.len(), 1);
    assert_eq!(
        (f.denial_reasons[0].code.as_deref(), f.denial_reasons[0].text.as_str()),
        (Some("N-115"), "Service not covered by plan")
    );
    assert_eq!(f.letters_missing, 5, "B06–B10");
    let attention: Vec<(&str, u64)> = f.needs_attention.iter().map(|r| (r.text.as_str(), r.count)).collect();
    assert_eq!(attention, [("poll_status portal_changed", 1)]);
    assert_eq!(f.turnaround_days, [0, 11, 1, 0, 0, 0, 1, 0, 0]);
    assert_eq!(
        at_risk(f),
        (2, 1, 1, Some("2750.25".into())),
        "B13; B12 without an amount"
    );
}

/// The late list: who, when due, when decided, how late, proven how, by
/// which window.
fn assert_late(late: &[report::LateRequest]) {
    type Row<'a> = (&'a str, &'a str, Option<DateTime<Utc>>, DateTime<Utc>, f64, Option<f64>);
    let rows: Vec<Row<'_>> = late
        .iter()
        .map(|l| {
            (
                l.payer.as_str(),
                l.case_ref.as_str(),
                l.decided_at,
                l.deadline,
                l.hours_late,
                l.proven_late_hours,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "sandbox",
                "A17",
                Some(utc(10, 25, 14, 0)),
                utc(10, 25, 13, 0),
                1.0,
                Some(0.5)
            ),
            (
                "sandbox",
                "A14",
                Some(utc(11, 5, 16, 0)),
                utc(11, 4, 16, 0),
                24.0,
                Some(23.0)
            ),
            ("sandbox", "A24", None, utc(11, 17, 16, 0), 326.0, Some(192.0)),
            (
                "sandbox-pas",
                "B14",
                Some(utc(11, 20, 15, 0)),
                utc(11, 19, 15, 0),
                24.0,
                Some(1.0)
            ),
            ("sandbox-pas", "B13", None, utc(11, 25, 15, 0), 135.0, None),
        ]
    );
    let windows: Vec<(&str, &str, &str)> = late
        .iter()
        .map(|l| (l.case_ref.as_str(), l.window.as_str(), l.window_source.as_str()))
        .collect();
    assert_eq!(
        windows,
        [
            ("A17", "72 hours (urgent)", "precert.toml: [escalations.rules]"),
            ("A14", "7 calendar days (standard)", "precert.toml: [escalations.rules]"),
            ("A24", "7 calendar days (standard)", "precert.toml: [escalations.rules]"),
            (
                "B14",
                "5 calendar days (standard)",
                "lakeside-ortho.toml: [escalations.payers.sandbox-pas]"
            ),
            (
                "B13",
                "5 calendar days (standard)",
                "lakeside-ortho.toml: [escalations.payers.sandbox-pas]"
            ),
        ]
    );
    let a14 = &late[1];
    assert_eq!(a14.payer_ref.as_deref(), Some("SBX-A14"));
    assert_eq!(a14.decision, Some(CaseStatus::Denied));
    assert_eq!(a14.last_seen_pending, Some(utc(11, 5, 15, 0)));
    let proof: Vec<(DateTime<Utc>, &str)> = a14.proof.iter().map(|p| (p.at, p.what.as_str())).collect();
    assert_eq!(
        proof,
        [
            (
                utc(10, 28, 15, 0),
                "submitted: the payer has the request (submitting → pending)"
            ),
            (utc(10, 28, 15, 0), "payer's reference recorded: SBX-A14"),
            (utc(11, 3, 15, 0), "checked with the payer: still pending"),
            (
                utc(11, 4, 18, 0),
                "checked with the payer: still pending, 2 h past the deadline"
            ),
            (
                utc(11, 5, 15, 0),
                "checked with the payer: still pending, 23 h past the deadline"
            ),
            (utc(11, 5, 16, 0), "decision recorded (pending → denied)"),
        ]
    );
    assert!(a14.proof.iter().all(|p| p.actor == "job:poll#1"));
}

async fn known_history(backend: Backend) {
    let db = TestDb::new(backend).await;
    override_window(&db.project);
    db.project.write("reports/published/sandbox-2026.toml", PUBLISHED);
    let settings = db.project.settings();
    let setup = db.ledger().await;
    db.import(&setup, "samples/cases.json").await;
    let sample = setup.find("lakeside-ortho", "LO-2026-1004").await.unwrap().unwrap();
    setup.close().await;
    let h = write_history(&db.url, sample.data.clone(), Some(sample.id)).await;

    let (published, problems) = report::published::load_dir(&db.project.path("reports/published"));
    assert!(problems.is_empty(), "{problems:?}");
    let q = ReportQuery {
        scope: scope(),
        by: None,
        late: true,
    };
    let r = report::build(&h.ledger, &settings, &published, &q).await.unwrap();
    assert_eq!(r.groups.len(), 2, "{:#?}", r.groups);
    assert_sandbox(&r.groups[0]);
    assert_sandbox_pas(&r.groups[1]);
    let p = r.groups[0].published.as_ref().expect("sandbox's published figures");
    assert_eq!(
        (p.year, p.approval_rate, p.median_decision_hours_urgent),
        (2026, Some(88.0), Some(24.5))
    );
    assert!(r.groups[1].published.is_none());
    assert_late(&r.late);

    // Grouped by CPT code: every request has the sample's one code.
    let by = ReportQuery {
        scope: scope(),
        by: Some(report::Dimension::Cpt),
        late: false,
    };
    let g = report::build(&h.ledger, &settings, &published, &by).await.unwrap();
    let groups: Vec<(&str, Option<&str>, u64)> = g
        .groups
        .iter()
        .map(|f| (f.payer.as_str(), f.group.as_deref(), f.submitted))
        .collect();
    assert_eq!(
        groups,
        [
            ("sandbox", Some("(not in period)"), 0),
            ("sandbox", Some("29881"), 25),
            ("sandbox-pas", Some("29881"), 15),
        ]
    );
    // One payer, and a period read earlier: the same ledger says what it
    // said then (A24 was not yet overdue on Nov 15).
    let mut earlier = scope();
    earlier.payer = Some("sandbox".into());
    earlier.to = utc(11, 15, 6, 0);
    earlier.as_of = utc(11, 15, 6, 0);
    let e = report::build(
        &h.ledger,
        &settings,
        &published,
        &ReportQuery {
            scope: earlier,
            by: None,
            late: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(e.groups.len(), 1);
    assert_eq!(
        (e.groups[0].submitted, e.groups[0].decided, e.groups[0].open),
        (24, 22, 1)
    );
    assert_eq!(e.groups[0].window_standard.overdue_open, 0);
    assert_eq!(
        at_risk(&e.groups[0]),
        (3, 2, 1, Some("2230.50".into())),
        "A14, A17 and A21 denied; A24 not yet past its window"
    );
    // On Nov 1 A20's denial was not yet overturned: at risk then.
    let mut before = scope();
    before.payer = Some("sandbox".into());
    before.to = utc(11, 1, 6, 0);
    before.as_of = utc(11, 1, 6, 0);
    let b = report::build(
        &h.ledger,
        &settings,
        &published,
        &ReportQuery {
            scope: before,
            by: None,
            late: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        at_risk(&b.groups[0]),
        (2, 2, 0, Some("1680.50".into())),
        "A17 and A20 denied"
    );
    h.ledger.close().await;

    if backend == Backend::Sqlite {
        command_line(&db.project, &r);
    }
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    known_history
);

fn parse_csv(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut rd = csv::Reader::from_reader(text.as_bytes());
    let headers = rd.headers().unwrap().clone();
    rd.records()
        .map(|r| {
            let r = r.unwrap();
            headers
                .iter()
                .map(str::to_owned)
                .zip(r.iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// `precert report` over the same ledger: the table, CSV, JSON, the late
/// list as CSV and as a printable page, and a broken published file.
fn command_line(p: &Project, r: &report::Report) {
    let base = [
        "report",
        "--practice",
        "lakeside-ortho",
        "--from",
        "2026-10-01",
        "--to",
        "2026-11-30",
        "--as-of",
        "2026-12-01T06:00:00Z",
    ];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = p.precert(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let text = run(&[]);
    assert!(text.contains("lakeside-ortho  sandbox"), "{text}");
    assert!(text.contains("72.7 %") && text.contains("92.3 %"), "{text}");
    assert!(text.contains("2 × CO-50 Not medically necessary"), "{text}");
    assert!(text.contains("published"), "{text}");
    assert!(
        text.contains("lakeside-ortho · sandbox: $5,630.50 at risk (3 of 4 requests with an amount)"),
        "{text}"
    );

    let rows = parse_csv(&run(&["--format", "csv"]));
    assert_eq!(rows.len(), 2);
    let s = &rows[0];
    for (k, v) in [
        ("payer", "sandbox"),
        ("submitted", "25"),
        ("decided", "22"),
        ("approved", "17"),
        ("partially_approved", "1"),
        ("denied", "4"),
        ("cancelled", "1"),
        ("open", "2"),
        ("first_pass_rate", "72.7"),
        ("approval_rate", "81.8"),
        ("urgent_median_hours", "71.0"),
        ("urgent_p90_hours", "73.0"),
        ("standard_median_hours", "48.0"),
        ("standard_p90_hours", "168.5"),
        ("standard_max_hours", "193.0"),
        ("standard_share_within", "90.0"),
        ("urgent_share_within", "66.7"),
        ("pend_median_hours", "48.0"),
        ("letters_missing", "1"),
        ("needs_attention", "1"),
        ("resubmitted", "2"),
        ("appealed", "2"),
        ("overturned", "1"),
        ("overturn_rate", "50.0"),
        ("top_denial_reason", "CO-50 Not medically necessary"),
        ("published_approval_rate", "88"),
        ("published_median_hours_urgent", "24.5"),
        ("at_risk_requests", "4"),
        ("at_risk_with_amount", "3"),
        ("at_risk_without_amount", "1"),
        ("at_risk_amount", "5630.50"),
    ] {
        assert_eq!(s[k], v, "{k}");
    }
    assert_eq!(rows[1]["standard_share_within"], "84.6");
    assert_eq!(rows[1]["published_year"], "");
    // The CSV is the report's: every group's figures agree.
    for (row, f) in rows.iter().zip(&r.groups) {
        assert_eq!(row["submitted"], f.submitted.to_string());
        assert_eq!(row["first_pass_approved"], f.first_pass_approved.to_string());
    }

    let json: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    assert_eq!(
        json["groups"][0]["turnaround_standard"]["p90_seconds"],
        168 * 3600 + 1800
    );
    assert_eq!(json["groups"][1]["window_standard"]["overdue_open"], 1);
    assert_eq!(
        json["groups"][1]["at_risk"],
        json!({ "requests": 2, "with_amount": 1, "without_amount": 1, "amount": "2750.25" })
    );
    assert_eq!(
        json["late"].as_array().unwrap().len(),
        0,
        "the late list only when asked"
    );

    let late = parse_csv(&run(&["--late", "--format", "csv"]));
    let refs: Vec<(&str, &str, &str)> = late
        .iter()
        .map(|l| (l["case_ref"].as_str(), l["hours_late"].as_str(), l["deadline"].as_str()))
        .collect();
    assert_eq!(
        refs,
        [
            ("A17", "1.0", "2026-10-25T13:00:00Z"),
            ("A14", "24.0", "2026-11-04T16:00:00Z"),
            ("A24", "326.0", "2026-11-17T16:00:00Z"),
            ("B14", "24.0", "2026-11-19T15:00:00Z"),
            ("B13", "135.0", "2026-11-25T15:00:00Z"),
        ]
    );
    assert_eq!(late[1]["payer_ref"], "SBX-A14");
    assert!(late[1]["proof"]
        .contains("2026-11-05T15:00:00Z checked with the payer: still pending, 23 h past the deadline (job:poll#1)"));

    let html = run(&["--format", "html"]);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<section id=\"lakeside-ortho-A14\">"), "{html}");
    assert!(
        html.contains("2026-11-04 10:00 CST"),
        "the deadline in the practice's zone: {html}"
    );
    assert!(!html.contains("<script"));

    // A broken published file: named with its line, left out, exit 1.
    p.write(
        "reports/published/sandbox-pas-2026.toml",
        "approval_rate = 90\ndenial_rat = 10\n",
    );
    let mut args = base.to_vec();
    args.extend_from_slice(&["--format", "csv"]);
    let out = p.precert(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sandbox-pas-2026.toml:2: unknown key `denial_rat` (did you mean `denial_rate`?)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(parse_csv(&stdout(&out)).len(), 2, "the report is still made");
    let check = p.precert(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(
        stderr(&check).contains("sandbox-pas-2026.toml:2:"),
        "{}",
        stderr(&check)
    );
}

/// The console's world (its samples imported, its users) with the history
/// written into its ledger, and one request of valley-imaging too.
async fn console_world() -> super::console::World {
    let w = super::console::world().await;
    let lo = w.ledger.find("lakeside-ortho", "LO-2026-1004").await.unwrap().unwrap();
    let vi = w.ledger.find("valley-imaging", "VI-88120").await.unwrap().unwrap();
    let h = write_history(&w.settings.database_url, lo.data.clone(), Some(lo.id)).await;
    h.submit(vi.id, utc(10, 6, 15, 0)).await;
    h.decide(vi.id, utc(10, 7, 15, 0), CaseStatus::Approved, None).await;
    h.ledger.close().await;
    w
}

const PERIOD: &str = "from=2026-10-01&to=2026-11-30&as_of=2026-11-30";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reports_show_a_users_practices_only_and_export_the_figures_as_csv() {
    use reqwest::StatusCode;
    let w = console_world().await;

    // A supervisor of both practices sees both, with the charts.
    let mut sam = w.client();
    sam.signed_in("sam").await;
    let page = sam.get(&format!("/reports?{PERIOD}")).await;
    assert_eq!(page.status, StatusCode::OK);
    let text = page.text();
    assert!(text.contains("<td class=\"payer\">sandbox</td>"), "{text}");
    assert!(text.contains("<td>valley-imaging</td>"), "{text}");
    assert!(text.contains("<td class=\"num first-pass\">72.7 %</td>"), "{text}");
    assert!(text.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart turnaround\""));
    assert!(text.contains("class=\"chart approval\""));
    assert!(!text.contains("<script"));
    let csv_link = "/reports.csv?from=2026-10-01&amp;to=2026-11-30&amp;as_of=2026-11-30";
    assert!(text.contains(csv_link), "{text}");

    // The export is the page's figures.
    let export = sam.get(&csv_link.replace("&amp;", "&")).await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(header(&export, "content-type").starts_with("text/csv"));
    assert!(header(&export, "content-disposition").contains("precert-report-2026-10-01-2026-11-30.csv"));
    let rows = parse_csv(&export.text());
    let got: Vec<(&str, &str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["practice"].as_str(),
                r["payer"].as_str(),
                r["submitted"].as_str(),
                r["decided"].as_str(),
                r["first_pass_rate"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("lakeside-ortho", "sandbox", "25", "22", "72.7"),
            ("lakeside-ortho", "sandbox-pas", "15", "13", "92.3"),
            ("valley-imaging", "sandbox", "1", "1", "100.0"),
        ]
    );
    // Without the practice's override, B14's six days are inside 7.
    assert_eq!(rows[1]["standard_share_within"], "92.3");
    let risk: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["at_risk_requests"].as_str(), r["at_risk_amount"].as_str()))
        .collect();
    assert_eq!(risk, [("4", "5630.50"), ("2", "2750.25"), ("0", "")]);
    assert!(
        text.contains("<td class=\"num at-risk\">$5,630.50 (3 of 4 with an amount)</td>"),
        "{text}"
    );

    // An operator of lakeside-ortho sees its figures only; valley-imaging
    // is not found, as its cases are.
    let mut olive = w.client();
    olive.signed_in("olive").await;
    let page = olive.get(&format!("/reports?{PERIOD}")).await.text();
    assert!(
        page.contains("lakeside-ortho") && !page.contains("valley-imaging"),
        "{page}"
    );
    let rows = parse_csv(&olive.get(&format!("/reports.csv?{PERIOD}")).await.text());
    assert_eq!(rows.len(), 2);
    for path in [
        format!("/reports?{PERIOD}&practice=valley-imaging"),
        format!("/reports.csv?{PERIOD}&practice=valley-imaging"),
    ] {
        assert_eq!(olive.get(&path).await.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(
        olive.get("/reports?from=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    // Nobody signed in: to the sign-in page.
    let anon = w.client().get("/reports").await;
    assert_eq!(anon.status, StatusCode::SEE_OTHER);
    assert_eq!(
        w.client().get(&format!("/reports/late?{PERIOD}")).await.status,
        StatusCode::SEE_OTHER
    );

    // The printable evidence of late decisions, for one payer: the user's
    // practices only, its style from the console (no inline style under
    // the console's policy), each view audited with the requests it named.
    let late = olive.get(&format!("/reports/late?{PERIOD}&payer=sandbox")).await;
    assert_eq!(late.status, StatusCode::OK);
    let text = late.text();
    assert!(
        text.contains("<link rel=\"stylesheet\" href=\"/reports/late.css\">"),
        "{text}"
    );
    assert!(!text.contains("<style") && !text.contains("<script"), "{text}");
    for case in ["A17", "A14", "A24"] {
        assert!(
            text.contains(&format!("<section id=\"lakeside-ortho-{case}\">")),
            "{case}: {text}"
        );
    }
    assert!(!text.contains("B13"), "another payer's request: {text}");
    let css = olive.get("/reports/late.css").await;
    assert!(header(&css, "content-type").starts_with("text/css"));
    assert_eq!(
        olive
            .get(&format!("/reports/late?{PERIOD}&practice=valley-imaging"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let log = w.ledger.console_audit_log(None, 100).await.unwrap();
    let seen: Vec<(&str, &str)> = log
        .iter()
        .filter(|a| a.action.starts_with("report_"))
        .map(|a| (a.user.as_str(), a.action.as_str()))
        .rev()
        .collect();
    assert_eq!(
        seen,
        [
            ("sam", "report_view"),
            ("sam", "report_export"),
            ("olive", "report_view"),
            ("olive", "report_export"),
            ("olive", "report_late_view"),
        ]
    );
    let late_view = log.iter().find(|a| a.action == "report_late_view").unwrap();
    assert_eq!(
        late_view.detail["cases"],
        json!(["lakeside-ortho/A17", "lakeside-ortho/A14", "lakeside-ortho/A24"])
    );
    assert_eq!(late_view.detail["payer"], "sandbox");
    w.finish().await;
}

fn header<'a>(a: &'a super::console::Answer, name: &str) -> &'a str {
    a.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_in_chromium_show_the_figures_and_both_charts() {
    use fantoccini::Locator;
    let w = console_world().await;
    let driver = precert::browser::Driver::start(&w.settings.webdriver, &w.settings.data_dir)
        .await
        .unwrap();
    let b = driver.session().await.unwrap();
    b.goto(&format!("{}/login", w.base)).await.unwrap();
    let form = b
        .wait()
        .for_element(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    form.find(Locator::Css("input[name=name]"))
        .await
        .unwrap()
        .send_keys("sam")
        .await
        .unwrap();
    form.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(super::console::PASSWORD)
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
    // From the menu, then the practice chosen in the form.
    b.find(Locator::LinkText("Reports"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .for_element(Locator::XPath("//h1[normalize-space()='Reports']"))
        .await
        .unwrap();
    b.goto(&format!("{}/reports?{PERIOD}&practice=lakeside-ortho", w.base))
        .await
        .unwrap();
    let table = b.wait().for_element(Locator::Css("table.figures")).await.unwrap();
    let mut cells = Vec::new();
    for css in ["td.payer", "td.submitted", "td.first-pass", "td.approval", "td.denial"] {
        let mut col = Vec::new();
        for c in table.find_all(Locator::Css(&format!("tr.group {css}"))).await.unwrap() {
            col.push(c.text().await.unwrap());
        }
        cells.push(col);
    }
    assert_eq!(
        cells,
        [
            vec!["sandbox", "sandbox-pas"],
            vec!["25", "15"],
            vec!["72.7 %", "92.3 %"],
            vec!["81.8 %", "92.3 %"],
            vec!["18.2 %", "7.7 %"],
        ]
    );
    // Both charts are drawn: bars for each day slot that has decisions,
    // a point per month with decisions, each with its figures in words.
    let bars = b.find_all(Locator::Css("svg.turnaround rect.bar")).await.unwrap();
    assert_eq!(bars.len(), 18, "9 day slots × 2 payers");
    let points = b.find_all(Locator::Css("svg.approval circle.point")).await.unwrap();
    assert_eq!(points.len(), 2, "sandbox in October, sandbox-pas in November");
    let svg = b.find(Locator::Css("svg.turnaround")).await.unwrap();
    let (_, _, width, height) = svg.rectangle().await.unwrap();
    assert!(width > 300.0 && height > 100.0, "{width}×{height}");
    let title = b
        .find(Locator::Css("svg.approval circle.point title"))
        .await
        .unwrap()
        .html(true)
        .await
        .unwrap();
    assert_eq!(title, "lakeside-ortho · sandbox 2026-10: 18 of 22 approved");
    let shot = b.screenshot().await.unwrap();
    assert!(shot.starts_with(b"\x89PNG"));
    std::fs::create_dir_all(w.p.path("shots")).unwrap();
    std::fs::write(w.p.path("shots/reports.png"), &shot).unwrap();
    if let Ok(d) = std::env::var("PRECERT_CONSOLE_SHOTS") {
        std::fs::write(std::path::Path::new(&d).join("reports.png"), &shot).unwrap();
    }

    // The printable evidence, from the page's link: every late request of
    // the period with its times, hours late and the events that prove it.
    b.find(Locator::Css("a.late-evidence"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let h1 = b.wait().for_element(Locator::Css("h1")).await.unwrap();
    assert!(h1
        .text()
        .await
        .unwrap()
        .starts_with("Prior-authorization requests decided late"));
    let mut rows = Vec::new();
    for tr in b.find_all(Locator::Css("body > table tbody tr")).await.unwrap() {
        let mut cells = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await.unwrap() {
            cells.push(td.text().await.unwrap());
        }
        rows.push(cells);
    }
    let a14: Vec<&str> = rows
        .iter()
        .find(|r| r[2] == "A14")
        .expect("A14 is listed")
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        a14,
        [
            "lakeside-ortho",
            "sandbox",
            "A14",
            "SBX-A14",
            "standard",
            "2026-10-28 10:00 CDT",
            "2026-11-04 10:00 CST",
            "2026-11-05 10:00 CST (denied)",
            "24.0",
            "23.0",
        ]
    );
    let cases: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        cases,
        ["A17", "A14", "A24", "B13"],
        "decided late or undecided past the window"
    );
    let proof = b
        .find(Locator::Css("section#lakeside-ortho-A14 table"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        proof.contains("checked with the payer: still pending, 23 h past the deadline"),
        "{proof}"
    );
    assert!(proof.contains("decision recorded (pending → denied)"), "{proof}");
    // The console's stylesheet for it loaded (the policy allows no inline
    // style): the table's header is shaded, the screen-only link shown.
    let th = b.find(Locator::Css("th")).await.unwrap();
    assert_eq!(
        th.css_value("background-color").await.unwrap(),
        "rgba(238, 238, 238, 1)"
    );
    assert!(b.find(Locator::Css("p.screen-only a")).await.is_ok());
    b.close().await.unwrap();
    driver.shutdown().await;
    w.finish().await;
}

/// Every request's history as `Ledger::report_cases` reads it (facts
/// where they hold, the events' fold for the rest) and as the event log
/// alone folds it, with and without the case's details: `Debug` lines.
async fn histories(ledger: &Ledger, scope: &ReportScope) -> (Vec<String>, Vec<String>) {
    let (mut read, mut folded) = (Vec::new(), Vec::new());
    for details in [false, true] {
        ledger
            .report_cases(scope, details, |f| read.push(format!("{f:?}")))
            .await
            .unwrap();
        ledger
            .report_cases_from_events(scope, details, |f| folded.push(format!("{f:?}")))
            .await
            .unwrap();
    }
    (read, folded)
}

/// `case_facts` (migration 19) is derived from the event log: written with
/// every status change, rebuilt by `Ledger::rebuild_facts`, backfilled by
/// the migration. A report as of any instant — before everything, in the
/// middle of A14's history (after its polls, before its denial), exactly at
/// its denial, at the report's usual instant, after everything — reads the
/// same histories through the facts as the fold of the events says, on both
/// databases; wrong facts would show, and a rebuild or the migration's
/// backfill puts them right.
async fn facts_say_what_the_event_log_says(backend: Backend) {
    let db = TestDb::new(backend).await;
    let setup = db.ledger().await;
    db.import(&setup, "samples/cases.json").await;
    let sample = setup.find("lakeside-ortho", "LO-2026-1004").await.unwrap().unwrap();
    setup.close().await;
    let h = write_history(&db.url, sample.data.clone(), Some(sample.id)).await;
    let instants = [
        utc(9, 1, 0, 0),
        utc(10, 20, 14, 0),
        utc(11, 5, 15, 30),
        utc(11, 5, 16, 0),
        utc(11, 15, 6, 0),
        utc(12, 1, 6, 0),
        utc(12, 31, 0, 0),
    ];
    let scope_at = |as_of: DateTime<Utc>, payer: Option<&str>| ReportScope {
        from: utc(9, 1, 0, 0),
        to: utc(12, 31, 0, 0),
        as_of,
        practice: None,
        payer: payer.map(str::to_owned),
        allowed: None,
    };
    let mut sizes = Vec::new();
    for as_of in instants {
        for payer in [None, Some("sandbox")] {
            let (read, folded) = histories(&h.ledger, &scope_at(as_of, payer)).await;
            assert_eq!(read, folded, "as of {as_of}, payer {payer:?}");
            if payer.is_none() {
                sizes.push(read.len() / 2);
            }
        }
    }
    // Nothing submitted by Sep 1; all 41 requests by the end (B16 in
    // September included).
    assert_eq!(sizes.first(), Some(&0));
    assert_eq!(sizes.last(), Some(&41));
    assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");

    // The facts are what is read: spoil them and the report says otherwise.
    let end = scope_at(utc(12, 31, 0, 0), None);
    let spoiled = h
        .ledger
        .execute_raw("UPDATE case_facts SET pends = pends + 7")
        .await
        .unwrap();
    assert!(spoiled > 41, "{spoiled} rows of facts");
    let (read, folded) = histories(&h.ledger, &end).await;
    assert_ne!(read, folded);
    // A rebuild from the events puts them right.
    assert_eq!(h.ledger.rebuild_facts().await.unwrap(), spoiled);
    let (read, folded) = histories(&h.ledger, &end).await;
    assert_eq!(read, folded);

    // And `precert db rebuild-facts` (the command line reads the project's
    // SQLite ledger).
    if backend == Backend::Sqlite {
        h.ledger
            .execute_raw("UPDATE case_facts SET status = 'cancelled'")
            .await
            .unwrap();
        assert_ne!(histories(&h.ledger, &end).await.0, read);
        let out = db.project.precert(&["db", "rebuild-facts"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("the facts of {spoiled} request(s) rebuilt from the event log")),
            "{}",
            stdout(&out)
        );
        let (again, folded) = histories(&h.ledger, &end).await;
        assert_eq!(again, folded);
    }

    // So does the migration's backfill, from the same events.
    let (_, _, sql) = h
        .ledger
        .backend()
        .migrations()
        .iter()
        .find(|(v, _, _)| *v == 19)
        .copied()
        .expect("migration 19");
    let backfill = &sql[sql.find("INSERT INTO case_facts").expect("its backfill")..];
    h.ledger.execute_raw("DELETE FROM case_facts").await.unwrap();
    assert_eq!(h.ledger.execute_raw(backfill).await.unwrap(), spoiled);
    for as_of in instants {
        let (read, folded) = histories(&h.ledger, &scope_at(as_of, None)).await;
        assert_eq!(read, folded, "after the backfill, as of {as_of}");
    }
    h.ledger.close().await;
}

both_backends!(
    #[tokio::test]
    facts_say_what_the_event_log_says
);
