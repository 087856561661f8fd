//! The console's charts as inline SVG, written here: a few rectangles,
//! lines and labels need no plotting library, and the console's CSP (no
//! script, no inline style) holds because only presentation attributes
//! are used. Every text is escaped.

use std::fmt::Write as _;

use super::Figures;

const COLORS: [&str; 6] = ["#1f5fa8", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#5d6d7e"];
const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(f: &Figures) -> String {
    match &f.group {
        Some(g) => format!("{} · {} · {g}", f.practice, f.payer),
        None => format!("{} · {}", f.practice, f.payer),
    }
}

fn open(out: &mut String, class: &str, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart {class}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>",
        t = esc(title)
    );
}

fn legend(out: &mut String, series: &[&Figures]) {
    let mut x = LEFT;
    for (i, f) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"8\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{:.1}\" y=\"17\" font-size=\"11\" fill=\"#222\">{}</text>",
            x + 14.0,
            esc(&label(f))
        );
        x += 24.0 + 6.5 * label(f).chars().count() as f64;
    }
}

/// The y axis with gridlines from 0 to `max` in `steps`, labelled by `fmt`.
fn y_axis(out: &mut String, max: f64, steps: u32, fmt: impl Fn(f64) -> String) {
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=steps {
        let v = max * f64::from(i) / f64::from(steps);
        let y = TOP + plot_h - plot_h * f64::from(i) / f64::from(steps);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\" stroke-width=\"1\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#444\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 3.5,
            esc(&fmt(v))
        );
    }
}

/// Decided requests by days from submission to decision, one bar per
/// practice and payer in each day's slot.
pub fn turnaround_svg(groups: &[Figures]) -> String {
    let series: Vec<&Figures> = groups.iter().filter(|f| f.decided > 0).collect();
    let mut out = String::new();
    open(
        &mut out,
        "turnaround",
        "Decided requests by days from submission to decision",
    );
    let max = series
        .iter()
        .flat_map(|f| f.turnaround_days.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    // Round the axis up to a number that divides into 4 steps.
    let top = (max.div_ceil(4) * 4) as f64;
    y_axis(&mut out, top, 4, |v| format!("{v:.0}"));
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let slot = plot_w / 9.0;
    let bar = (slot - 8.0) / series.len().max(1) as f64;
    for day in 0..9 {
        let x0 = LEFT + slot * day as f64 + 4.0;
        for (i, f) in series.iter().enumerate() {
            let n = f.turnaround_days[day];
            let h = plot_h * n as f64 / top;
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{}: {n} decided in {}</title></rect>",
                x0 + bar * i as f64,
                TOP + plot_h - h,
                (bar - 1.0).max(1.0),
                COLORS[i % COLORS.len()],
                esc(&label(f)),
                day_label(day),
            );
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            LEFT + slot * (day as f64 + 0.5),
            H - BOTTOM + 14.0,
            day_label(day)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#222\">days from submission to decision</text>",
        LEFT + plot_w / 2.0,
        H - 8.0
    );
    legend(&mut out, &series);
    out.push_str("</svg>");
    out
}

fn day_label(day: usize) -> String {
    if day == 8 {
        "8+ d".into()
    } else {
        format!("{day}–{} d", day + 1)
    }
}

/// Approval rate (approved in full or partly, of decided) per month of
/// submission, one line per practice and payer.
pub fn approval_svg(groups: &[Figures]) -> String {
    let series: Vec<&Figures> = groups.iter().filter(|f| f.decided > 0).collect();
    let mut months: Vec<&str> = series
        .iter()
        .flat_map(|f| f.months.iter().map(|m| m.month.as_str()))
        .collect();
    months.sort_unstable();
    months.dedup();
    let mut out = String::new();
    open(&mut out, "approval", "Approval rate by month of submission");
    y_axis(&mut out, 100.0, 4, |v| format!("{v:.0} %"));
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let step = plot_w / months.len().max(1) as f64;
    let x_of = |i: usize| LEFT + step * (i as f64 + 0.5);
    for (i, m) in months.iter().enumerate() {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
            x_of(i),
            H - BOTTOM + 14.0,
            esc(m)
        );
    }
    for (s, f) in series.iter().enumerate() {
        let c = COLORS[s % COLORS.len()];
        let points: Vec<(f64, f64, &super::MonthFigures)> = f
            .months
            .iter()
            .filter(|m| m.decided > 0)
            .filter_map(|m| {
                let i = months.iter().position(|x| *x == m.month)?;
                let rate = m.approved as f64 * 100.0 / m.decided as f64;
                Some((x_of(i), TOP + plot_h - plot_h * rate / 100.0, m))
            })
            .collect();
        if points.len() > 1 {
            let path: Vec<String> = points.iter().map(|(x, y, _)| format!("{x:.1},{y:.1}")).collect();
            let _ = write!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
                path.join(" ")
            );
        }
        for (x, y, m) in &points {
            let _ = write!(
                out,
                "<circle class=\"point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{c}\"><title>{} {}: {} of {} approved</title></circle>",
                esc(&label(f)),
                esc(&m.month),
                m.approved,
                m.decided
            );
        }
    }
    legend(&mut out, &series);
    out.push_str("</svg>");
    out
}
