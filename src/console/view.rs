//! Rendering: the templates (embedded, auto-escaped by minijinja because
//! their names end in `.html`), the page layout, and small formatting
//! helpers shared by the pages.

use crate::tz::Tz;
use chrono::{DateTime, Utc};
use minijinja::value::Serde;
use minijinja::{Environment, Value};
use serde::Serialize;

use super::auth::Viewer;
use crate::case::CaseStatus;

/// The templates, compiled once. The layout wraps each page's body (no
/// template inheritance: the minijinja build stays lean).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("layout.html", include_str!("templates/layout.html")),
        ("login.html", include_str!("templates/login.html")),
        ("cases.html", include_str!("templates/cases.html")),
        ("case.html", include_str!("templates/case.html")),
        ("escalations.html", include_str!("templates/escalations.html")),
        ("message.html", include_str!("templates/message.html")),
        ("ack.html", include_str!("templates/ack.html")),
        ("users.html", include_str!("templates/users.html")),
        ("account.html", include_str!("templates/account.html")),
        ("payers.html", include_str!("templates/payers.html")),
    ] {
        env.add_template(name, text).expect("the console's templates parse");
    }
    env
}

pub const CSS: &str = include_str!("static/console.css");

/// What the layout shows around a page.
#[derive(Serialize)]
pub struct Frame<'a> {
    pub title: &'a str,
    /// `cases` or `escalations`: the menu entry shown as current.
    pub section: &'a str,
    pub user: Option<FrameUser>,
    pub csrf: Option<String>,
    /// A confirmation after an action (no PHI: fixed texts).
    pub notice: Option<String>,
    /// A path of this console the page opens again at once (see
    /// `auth::reopen_same_site`).
    pub reopen: Option<String>,
}

#[derive(Serialize)]
pub struct FrameUser {
    pub name: String,
    pub role: String,
}

impl<'a> Frame<'a> {
    pub fn new(title: &'a str, section: &'a str, viewer: Option<&Viewer>) -> Frame<'a> {
        Frame {
            title,
            section,
            user: viewer.map(|v| FrameUser {
                name: v.name().to_owned(),
                role: v.role.as_str().to_owned(),
            }),
            csrf: viewer.map(|v| v.csrf.clone()),
            notice: None,
            reopen: None,
        }
    }
}

/// Renders `template` with `ctx`, inside the layout.
pub fn page(
    env: &Environment<'static>,
    template: &str,
    frame: &Frame<'_>,
    ctx: impl Serialize,
) -> Result<String, String> {
    let body = env
        .get_template(template)
        .and_then(|t| t.render(Serde(ctx)))
        .map_err(|e| format!("{template}: {e:#}"))?;
    env.get_template("layout.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                frame => Serde(frame),
                body => Value::from_safe_string(body),
            })
        })
        .map_err(|e| format!("layout.html: {e:#}"))
}

/// A status as people read it: `needs_attention` → `needs attention`.
pub fn status_label(s: CaseStatus) -> String {
    s.as_str().replace('_', " ")
}

/// A status in the worklist: a `new` case is one whose requirement no rule
/// decided (`docs/requirements.md`), waiting on a person.
pub fn worklist_status_label(s: CaseStatus) -> String {
    match s {
        CaseStatus::New => "new: needs a decision".to_owned(),
        s => status_label(s),
    }
}

/// A time in the practice's zone.
pub fn when(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
}

/// Percent-encodes one URL path segment or query value (RFC 3986
/// unreserved characters stay).
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The console's address of a case.
pub fn case_path(practice: &str, case_ref: &str) -> String {
    format!("/cases/{}/{}", encode_component(practice), encode_component(case_ref))
}

/// A byte count as people read it.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0} kB", b as f64 / (1 << 10) as f64),
        b => format!("{b} bytes"),
    }
}
