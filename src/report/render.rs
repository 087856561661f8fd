//! A report as people read it: a terminal table, CSV (figures; late
//! requests) and the printable evidence page. JSON is the `Report` itself
//! (serde). No payer free text but denial reasons, which the practice's own
//! report shows as recorded; no patient details at all.

use std::fmt::Write as _;

use crate::tz::Tz;
use chrono::{DateTime, Utc};

use super::{Figures, LateRequest, Report, Turnaround, WindowFigures};

/// Hours with one decimal.
pub fn hours(secs: i64) -> String {
    format!("{:.1}", secs as f64 / 3600.0)
}

/// A duration as people read it: hours under 100, days above.
pub fn duration(secs: Option<i64>) -> String {
    match secs {
        None => "–".into(),
        Some(s) if s < 100 * 3600 => format!("{} h", hours(s)),
        Some(s) => format!("{:.1} d", s as f64 / 86_400.0),
    }
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1} %"))
}

fn pct_csv(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v:.1}"))
}

fn hours_csv(v: Option<i64>) -> String {
    v.map_or(String::new(), hours)
}

fn num_csv(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{v}"))
}

/// A time in a zone: `2026-10-29 10:00 CDT`.
pub fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

fn window_cell(w: &WindowFigures) -> String {
    if w.due == 0 {
        return "–".into();
    }
    format!("{}/{} {}", w.within, w.due, pct(w.share_within))
}

/// Columns padded to their widest cell; the first `left` columns
/// left-aligned, the rest right-aligned (numbers).
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], left: usize) {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = width[i] - c.chars().count();
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, header.to_vec());
    for r in rows {
        line(out, r.iter().map(String::as_str).collect());
    }
}

fn who(f: &Figures) -> Vec<String> {
    let mut v = vec![f.practice.clone(), f.payer.clone()];
    if let Some(g) = &f.group {
        v.push(g.clone());
    }
    v
}

fn turnaround_cells(t: &Turnaround) -> [String; 4] {
    [
        t.count.to_string(),
        duration(t.median_seconds),
        duration(t.p90_seconds),
        duration(t.max_seconds),
    ]
}

/// The report for a terminal.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Requests first submitted from {} to {} (UTC), as the ledger stood at {}.",
        r.from.format("%Y-%m-%d %H:%M"),
        r.to.format("%Y-%m-%d %H:%M"),
        r.as_of.format("%Y-%m-%d %H:%M UTC"),
    );
    if r.groups.is_empty() {
        out.push_str("\nNo requests were submitted in this period.\n");
        return out;
    }
    let mut head: Vec<&str> = vec!["PRACTICE", "PAYER"];
    if let Some(by) = r.by {
        head.push(by.as_str());
    }
    let left = head.len();
    let mut h = head.clone();
    h.extend([
        "SUBMITTED",
        "DECIDED",
        "APPROVED",
        "PARTIAL",
        "DENIED",
        "CANCELLED",
        "OPEN",
        "PENDED",
        "FIRST-PASS",
        "APPROVAL",
        "DENIAL",
    ]);
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|f| {
            let mut row = who(f);
            row.extend([
                f.submitted.to_string(),
                f.decided.to_string(),
                f.approved.to_string(),
                f.partially_approved.to_string(),
                f.denied.to_string(),
                f.cancelled.to_string(),
                f.open.to_string(),
                f.pends.requests.to_string(),
                pct(f.first_pass_rate),
                pct(f.approval_rate),
                pct(f.denial_rate),
            ]);
            row
        })
        .collect();
    out.push('\n');
    table(&mut out, &h, &rows, left);

    out.push_str("\nTurnaround, submission to decision, and decisions inside the legal window\n");
    let mut h = head.clone();
    h.extend([
        "URGENT",
        "MEDIAN",
        "P90",
        "MAX",
        "IN WINDOW",
        "STANDARD",
        "MEDIAN",
        "P90",
        "MAX",
        "IN WINDOW",
    ]);
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|f| {
            let mut row = who(f);
            row.extend(turnaround_cells(&f.turnaround_urgent));
            row.push(window_cell(&f.window_urgent));
            row.extend(turnaround_cells(&f.turnaround_standard));
            row.push(window_cell(&f.window_standard));
            row
        })
        .collect();
    table(&mut out, &h, &rows, left);

    out.push_str("\nPends, letters and cases automation could not finish\n");
    let mut h = head.clone();
    h.extend([
        "PENDED",
        "EPISODES",
        "STILL PENDED",
        "PEND MEDIAN",
        "PEND MAX",
        "LETTERS MISSING",
        "NEEDS ATTENTION",
        "APPEALED",
        "OVERTURNED",
    ]);
    let rows: Vec<Vec<String>> = r
        .groups
        .iter()
        .map(|f| {
            let mut row = who(f);
            row.extend([
                f.pends.requests.to_string(),
                f.pends.episodes.to_string(),
                f.pends.open.to_string(),
                duration(f.pends.median_seconds),
                duration(f.pends.max_seconds),
                f.letters_missing.to_string(),
                f.needs_attention.iter().map(|n| n.count).sum::<u64>().to_string(),
                f.appealed.to_string(),
                f.overturned.to_string(),
            ]);
            row
        })
        .collect();
    table(&mut out, &h, &rows, left);

    out.push_str("\nValue of services at risk: denied (not granted since), pended now, or undecided past the window\n");
    for f in &r.groups {
        let _ = writeln!(out, "  {}: {}", who(f).join(" · "), f.at_risk.summary());
    }

    let with_published: Vec<&Figures> = r.groups.iter().filter(|f| f.published.is_some()).collect();
    if !with_published.is_empty() {
        out.push_str("\nBeside what the payer published\n");
        let mut h = head.clone();
        h.extend(["YEAR", "", "APPROVAL", "DENIAL", "STD MEDIAN", "URG MEDIAN"]);
        let mut rows = Vec::new();
        for f in with_published {
            let p = f.published.as_ref().expect("filtered");
            let mut ours = who(f);
            ours.extend([
                p.year.to_string(),
                "ours".into(),
                pct(f.approval_rate),
                pct(f.denial_rate),
                duration(f.turnaround_standard.median_seconds),
                duration(f.turnaround_urgent.median_seconds),
            ]);
            rows.push(ours);
            let mut theirs = vec![String::new(); left];
            let h = |v: Option<f64>| {
                v.map(|h| duration(Some((h * 3600.0).round() as i64)))
                    .unwrap_or("–".into())
            };
            theirs.extend([
                String::new(),
                "published".into(),
                pct(p.approval_rate),
                pct(p.denial_rate),
                h(p.median_decision_hours_standard),
                h(p.median_decision_hours_urgent),
            ]);
            rows.push(theirs);
        }
        table(&mut out, &h, &rows, left + 2);
    }

    let reasons: Vec<&Figures> = r.groups.iter().filter(|f| !f.denial_reasons.is_empty()).collect();
    if !reasons.is_empty() {
        out.push_str("\nDenial reasons, most frequent first\n");
        for f in reasons {
            let _ = writeln!(out, "  {}:", who(f).join(" · "));
            for d in &f.denial_reasons {
                let _ = writeln!(
                    out,
                    "    {:>4} × {}{}",
                    d.count,
                    d.code.as_deref().map(|c| format!("{c} ")).unwrap_or_default(),
                    d.text
                );
            }
        }
    }
    let attention: Vec<&Figures> = r.groups.iter().filter(|f| !f.needs_attention.is_empty()).collect();
    if !attention.is_empty() {
        out.push_str("\nMoves to needs_attention in the period, by reason\n");
        for f in attention {
            let _ = writeln!(out, "  {}:", who(f).join(" · "));
            for n in &f.needs_attention {
                let _ = writeln!(out, "    {:>4} × {}", n.count, n.text);
            }
        }
    }
    if !r.late.is_empty() {
        out.push_str("\nDecided past the window, or undecided past it\n");
        let rows: Vec<Vec<String>> = r
            .late
            .iter()
            .map(|l| {
                vec![
                    l.practice.clone(),
                    l.payer.clone(),
                    l.case_ref.clone(),
                    l.urgency.as_str().to_owned(),
                    l.submitted_at.format("%Y-%m-%d %H:%M").to_string(),
                    l.deadline.format("%Y-%m-%d %H:%M").to_string(),
                    l.decided_at
                        .map_or("undecided".into(), |d| d.format("%Y-%m-%d %H:%M").to_string()),
                    format!("{:.1}", l.hours_late),
                    l.proven_late_hours.map_or("–".into(), |h| format!("{h:.1}")),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "PRACTICE",
                "PAYER",
                "CASE",
                "URGENCY",
                "SUBMITTED (UTC)",
                "DEADLINE (UTC)",
                "DECIDED (UTC)",
                "HOURS LATE",
                "PROVEN LATE",
            ],
            &rows,
            4,
        );
    }
    out
}

/// The CSV header of [`figures_csv`].
pub const FIGURES_COLUMNS: &[&str] = &[
    "practice",
    "payer",
    "group",
    "submitted",
    "decided",
    "approved",
    "partially_approved",
    "denied",
    "cancelled",
    "expired",
    "open",
    "pended_now",
    "resubmitted",
    "first_pass_approved",
    "appealed",
    "overturned",
    "first_pass_rate",
    "approval_rate",
    "denial_rate",
    "overturn_rate",
    "urgent_decided",
    "urgent_median_hours",
    "urgent_p90_hours",
    "urgent_max_hours",
    "urgent_due",
    "urgent_within_window",
    "urgent_late",
    "urgent_overdue_open",
    "urgent_share_within",
    "standard_decided",
    "standard_median_hours",
    "standard_p90_hours",
    "standard_max_hours",
    "standard_due",
    "standard_within_window",
    "standard_late",
    "standard_overdue_open",
    "standard_share_within",
    "pended_requests",
    "pend_episodes",
    "pends_open",
    "pend_median_hours",
    "pend_max_hours",
    "letters_missing",
    "needs_attention",
    "top_denial_reason",
    "at_risk_requests",
    "at_risk_with_amount",
    "at_risk_without_amount",
    "at_risk_amount",
    "published_year",
    "published_approval_rate",
    "published_denial_rate",
    "published_median_hours_standard",
    "published_median_hours_urgent",
];

/// One row per group, rates in percent, durations in hours.
pub fn figures_csv(r: &Report) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(FIGURES_COLUMNS).expect("writing to memory");
    for f in &r.groups {
        let mut row: Vec<String> = vec![f.practice.clone(), f.payer.clone(), f.group.clone().unwrap_or_default()];
        row.extend(
            [
                f.submitted,
                f.decided,
                f.approved,
                f.partially_approved,
                f.denied,
                f.cancelled,
                f.expired,
                f.open,
                f.pended_now,
                f.resubmitted,
                f.first_pass_approved,
                f.appealed,
                f.overturned,
            ]
            .map(|n| n.to_string()),
        );
        row.extend([
            pct_csv(f.first_pass_rate),
            pct_csv(f.approval_rate),
            pct_csv(f.denial_rate),
            pct_csv(f.overturn_rate),
        ]);
        for (t, w) in [
            (&f.turnaround_urgent, &f.window_urgent),
            (&f.turnaround_standard, &f.window_standard),
        ] {
            row.extend([
                t.count.to_string(),
                hours_csv(t.median_seconds),
                hours_csv(t.p90_seconds),
                hours_csv(t.max_seconds),
                w.due.to_string(),
                w.within.to_string(),
                w.late.to_string(),
                w.overdue_open.to_string(),
                pct_csv(w.share_within),
            ]);
        }
        row.extend([
            f.pends.requests.to_string(),
            f.pends.episodes.to_string(),
            f.pends.open.to_string(),
            hours_csv(f.pends.median_seconds),
            hours_csv(f.pends.max_seconds),
            f.letters_missing.to_string(),
            f.needs_attention.iter().map(|n| n.count).sum::<u64>().to_string(),
            f.denial_reasons
                .first()
                .map(|d| match &d.code {
                    Some(c) => format!("{c} {}", d.text),
                    None => d.text.clone(),
                })
                .unwrap_or_default(),
            f.at_risk.requests.to_string(),
            f.at_risk.with_amount.to_string(),
            f.at_risk.without_amount.to_string(),
            f.at_risk.amount.map(|a| a.to_string()).unwrap_or_default(),
        ]);
        match &f.published {
            Some(p) => row.extend([
                p.year.to_string(),
                num_csv(p.approval_rate),
                num_csv(p.denial_rate),
                num_csv(p.median_decision_hours_standard),
                num_csv(p.median_decision_hours_urgent),
            ]),
            None => row.extend(std::iter::repeat_n(String::new(), 5)),
        }
        w.write_record(&row).expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("CSV of UTF-8 text")
}

pub const LATE_COLUMNS: &[&str] = &[
    "practice",
    "payer",
    "case_ref",
    "payer_ref",
    "urgency",
    "submitted_at",
    "deadline",
    "window",
    "window_source",
    "decided_at",
    "decision",
    "payer_decision_date",
    "hours_late",
    "last_seen_pending",
    "proven_late_hours",
    "proof",
];

fn rfc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The late requests, one row each; times in UTC (RFC 3339), the proof
/// events joined by ` | `.
pub fn late_csv(late: &[LateRequest]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(LATE_COLUMNS).expect("writing to memory");
    for l in late {
        let proof: Vec<String> = l
            .proof
            .iter()
            .map(|p| format!("{} {} ({})", rfc(p.at), p.what, p.actor))
            .collect();
        w.write_record([
            l.practice.clone(),
            l.payer.clone(),
            l.case_ref.clone(),
            l.payer_ref.clone().unwrap_or_default(),
            l.urgency.as_str().to_owned(),
            rfc(l.submitted_at),
            rfc(l.deadline),
            l.window.clone(),
            l.window_source.clone(),
            l.decided_at.map(rfc).unwrap_or_default(),
            l.decision.map(|d| d.as_str().to_owned()).unwrap_or_default(),
            l.payer_decision_date.map(rfc).unwrap_or_default(),
            format!("{:.1}", l.hours_late),
            l.last_seen_pending.map(rfc).unwrap_or_default(),
            l.proven_late_hours.map(|h| format!("{h:.1}")).unwrap_or_default(),
            proof.join(" | "),
        ])
        .expect("writing to memory");
    }
    String::from_utf8(w.into_inner().expect("writing to memory")).expect("CSV of UTF-8 text")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The evidence page's style: printable on A4 or Letter, each request's
/// proof kept on one page where it fits.
pub const LATE_CSS: &str = "body { font: 11pt/1.4 system-ui, sans-serif; margin: 2em; color: #111; }\n\
     h1 { font-size: 16pt; } h2 { font-size: 12pt; margin-top: 1.6em; page-break-after: avoid; }\n\
     table { border-collapse: collapse; width: 100%; margin: .4em 0 1em; }\n\
     th, td { border: 1px solid #999; padding: .2em .4em; text-align: left; vertical-align: top; }\n\
     th { background: #eee; } .late { font-weight: bold; }\n\
     section { page-break-inside: avoid; }\n\
     @media print { .screen-only { display: none; } }\n";

/// Where the evidence page takes its style from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style<'a> {
    /// In a `<style>` element: a file that stands alone (`precert report
    /// --format html`).
    Inline,
    /// From this address (the console, whose Content-Security-Policy allows
    /// no inline style), with a link back to the Reports page that is not
    /// printed.
    Linked { css: &'a str, back: &'a str },
}

/// The evidence as one printable HTML page (no script), times in each
/// practice's zone.
pub fn late_html(r: &Report, tz_of: impl Fn(&str) -> Tz, style: Style<'_>) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Late prior-authorization decisions</title>\n",
    );
    match style {
        Style::Inline => {
            let _ = write!(out, "<style>\n{LATE_CSS}</style>\n</head>\n<body>\n");
        }
        Style::Linked { css, back } => {
            let _ = write!(
                out,
                "<link rel=\"stylesheet\" href=\"{}\">\n</head>\n<body>\n<p class=\"screen-only\"><a href=\"{}\">← Reports</a> · print this page (or save it as PDF) to attach it to a complaint.</p>\n",
                esc(css),
                esc(back)
            );
        }
    }
    let _ = writeln!(
        out,
        "<h1>Prior-authorization requests decided late or still undecided past the legal window</h1>"
    );
    let _ = writeln!(
        out,
        "<p>Requests first submitted from {} to {} (UTC), as recorded in precert's ledger at {}. \
         Windows: 72 hours for urgent (expedited) requests and 7 calendar days for standard ones \
         (CMS-0057-F) unless a state or payer rule says otherwise; each request names the window applied and where it comes from. \
         The decision time is when precert recorded the decision; the last check that still saw the request pending proves the minimum delay.</p>",
        r.from.format("%Y-%m-%d %H:%M"),
        r.to.format("%Y-%m-%d %H:%M"),
        r.as_of.format("%Y-%m-%d %H:%M UTC"),
    );
    if r.late.is_empty() {
        out.push_str("<p>No request was decided late, and none is undecided past its window.</p>\n");
    } else {
        out.push_str("<table>\n<thead><tr><th>Practice</th><th>Payer</th><th>Case</th><th>Payer's reference</th><th>Urgency</th><th>Submitted</th><th>Deadline</th><th>Decided</th><th>Hours late</th><th>Proven late (h)</th></tr></thead>\n<tbody>\n");
        for l in &r.late {
            let tz = tz_of(&l.practice);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"late\">{:.1}</td><td>{}</td></tr>",
                esc(&l.practice),
                esc(&l.payer),
                esc(&anchor(l)),
                esc(&l.case_ref),
                esc(l.payer_ref.as_deref().unwrap_or("–")),
                l.urgency.as_str(),
                local(l.submitted_at, tz),
                local(l.deadline, tz),
                l.decided_at.map_or("undecided".into(), |d| format!(
                    "{} ({})",
                    local(d, tz),
                    l.decision.map_or("", |s| s.as_str()).replace('_', " ")
                )),
                l.hours_late,
                l.proven_late_hours.map_or("–".into(), |h| format!("{h:.1}")),
            );
        }
        out.push_str("</tbody>\n</table>\n");
        for l in &r.late {
            let tz = tz_of(&l.practice);
            let _ = writeln!(
                out,
                "<section id=\"{}\">\n<h2>{} · {} · {}</h2>\n<p>Window: {} ({}); submitted {}, deadline {}, {}.</p>",
                esc(&anchor(l)),
                esc(&l.practice),
                esc(&l.payer),
                esc(&l.case_ref),
                esc(&l.window),
                esc(&l.window_source),
                local(l.submitted_at, tz),
                local(l.deadline, tz),
                match l.decided_at {
                    Some(d) => format!("decision recorded {} — {:.1} hours late", local(d, tz), l.hours_late),
                    None => format!(
                        "still undecided at {} — {:.1} hours past the deadline",
                        local(r.as_of, tz),
                        l.hours_late
                    ),
                }
            );
            out.push_str(
                "<table>\n<thead><tr><th>When</th><th>What the ledger recorded</th><th>By</th></tr></thead>\n<tbody>\n",
            );
            for p in &l.proof {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                    local(p.at, tz),
                    esc(&p.what),
                    esc(&p.actor)
                );
            }
            out.push_str("</tbody>\n</table>\n</section>\n");
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn anchor(l: &LateRequest) -> String {
    format!("{}-{}", l.practice, l.case_ref)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}
