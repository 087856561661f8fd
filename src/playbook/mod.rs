//! Playbooks: how precert works one payer's portal or API, as data.
//!
//! `raw` is the YAML as written; `compile` checks it (every problem with
//! file:line:col) into the typed `Playbook` below, which the engine runs.
//! This module does no I/O beyond reading the files.

mod compile;
pub mod raw;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::case::CaseStatus;

pub(crate) use compile::saphyr_message;
pub use compile::{compile, single_expression};

/// Where something was written: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: u64,
    pub col: u64,
}

impl Loc {
    pub(crate) fn of(l: &serde_saphyr::Location) -> Loc {
        Loc {
            line: l.line(),
            col: l.column(),
        }
    }
}

/// One problem in a playbook file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaybookError {
    pub file: PathBuf,
    pub at: Loc,
    pub message: String,
}

impl fmt::Display for PlaybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.at.line,
            self.at.col,
            self.message
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Web,
    Api,
}

/// The actions a playbook can offer. `login`, `submit`, `poll_status`,
/// `download_letter` and `find_existing` are required for the web channel;
/// `submit` and `poll_status` for an api playbook of `http` steps; none for
/// `api: pas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Login,
    Submit,
    PollStatus,
    PollWorklist,
    DownloadLetter,
    FindExisting,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Login,
        Action::Submit,
        Action::PollStatus,
        Action::PollWorklist,
        Action::DownloadLetter,
        Action::FindExisting,
    ];
    pub const REQUIRED: [Action; 5] = [
        Action::Login,
        Action::Submit,
        Action::PollStatus,
        Action::DownloadLetter,
        Action::FindExisting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Submit => "submit",
            Action::PollStatus => "poll_status",
            Action::PollWorklist => "poll_worklist",
            Action::DownloadLetter => "download_letter",
            Action::FindExisting => "find_existing",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A template (minijinja, strict undefined) and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tpl {
    pub source: String,
    pub at: Loc,
    /// Renders a secret: never shown in traces.
    pub secret: bool,
}

/// A CSS selector (possibly a template) and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sel {
    pub css: Tpl,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Present(Sel),
    Absent(Sel),
    Text(Tpl),
    Url(Tpl),
    /// `{% if EXPR %}true{% endif %}` renders `true`.
    Expr(Tpl),
}

/// A protocol precert speaks itself for an `api` payer, instead of steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    /// Da Vinci PAS: `src/pas` submits and inquires.
    Pas,
}

/// A payer's Da Vinci CRD service (`crd:` in the playbook).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdService {
    /// The CDS Hooks base, absolute, without a trailing slash.
    pub url: String,
    /// The service id; `None`: found by discovery for `hook`.
    pub service: Option<String>,
    pub hook: CrdHook,
    /// Send the binding's OAuth2 client-credentials token.
    pub oauth2: bool,
}

/// The CDS Hooks hook precert calls a CRD service with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdHook {
    OrderSign,
    OrderSelect,
}

impl CrdHook {
    pub fn as_str(self) -> &'static str {
        match self {
            CrdHook::OrderSign => "order-sign",
            CrdHook::OrderSelect => "order-select",
        }
    }
}

/// An `http` step: one request, its answer checked and read into variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpStep {
    /// Upper-case: GET, POST, PUT, PATCH, DELETE, HEAD.
    pub method: String,
    pub url: Tpl,
    /// Header name → value template.
    pub headers: Vec<(String, Tpl)>,
    pub auth: Option<HttpAuth>,
    pub body: Option<HttpBody>,
    /// The media type of the body.
    pub content_type: String,
    /// Status codes that are an answer; empty means any 2xx.
    pub expect: Vec<u16>,
    /// Variable → where in the answer its value is.
    pub extract: Vec<(String, ExtractFrom)>,
    /// Extracted variables that may be missing (set to an empty string).
    pub optional: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpAuth {
    /// Client credentials; the engine caches the token per payer account.
    OAuth2 {
        token_url: Tpl,
        client_id: Tpl,
        client_secret: Tpl,
        scope: Option<Tpl>,
    },
    Bearer(Tpl),
    Basic {
        username: Tpl,
        password: Tpl,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpBody {
    Json(JsonTpl),
    /// One template; the result is sent as it renders.
    Text(Tpl),
}

/// A JSON document whose string leaves are templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonTpl {
    /// A number, boolean or null, sent as written.
    Literal(serde_json::Value),
    /// A string rendered from a template.
    Text(Tpl),
    /// A leaf that is one `{{ expression }}`: the value keeps its JSON type
    /// (a number stays a number, a list a list).
    Expr(Tpl),
    Array(Vec<JsonTpl>),
    Object(Vec<(String, JsonTpl)>),
}

/// Where an `http` step's `extract` reads a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtractFrom {
    /// A JSON pointer (RFC 6901) into the answer's body.
    Pointer(String),
    /// The HTTP status code.
    Status,
    /// A response header, e.g. `Location`.
    Header(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    Retryable,
    NeedsHuman,
    PortalChanged,
    Fatal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectBy {
    Value(Tpl),
    Label(Tpl),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownloadFrom {
    Url(Tpl),
    Link(Sel),
}

/// Where an `extract` step reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtractOn {
    /// The first element matching a selector.
    Selector(Sel),
    /// The value next to a label (`dt`→`dd`, `th`→`td`, `label`→field),
    /// optionally inside one element.
    Label { label: Tpl, within: Option<Sel> },
}

/// What the portal says about a case, read by an `outcome` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeFields {
    pub status: Tpl,
    pub reference: Option<Tpl>,
    pub auth_number: Option<Tpl>,
    pub valid_from: Option<Tpl>,
    pub valid_to: Option<Tpl>,
    pub approved_units: Option<Tpl>,
    pub decision_date: Option<Tpl>,
    pub denial_reason: Option<Tpl>,
    /// A pend's request for information, in the payer's words.
    pub request: Option<Tpl>,
    /// The payer's reason in words (denial text, partial approval's terms).
    pub reason: Option<Tpl>,
    /// `find_existing`: what identifies the payer's record (see `MatchFields`).
    pub matches: Option<MatchFields>,
}

/// How a `find_existing` candidate is matched against the case. The engine
/// compares; a candidate is adopted only if every given field is equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchFields {
    pub case_ref: Option<Tpl>,
    pub member_id: Option<Tpl>,
    pub codes: Option<Tpl>,
    pub service_start: Option<Tpl>,
    pub service_end: Option<Tpl>,
}

impl MatchFields {
    /// Specific enough to tell one request from another: our own case
    /// reference, or the member, the codes and the service dates.
    pub fn is_specific(&self) -> bool {
        self.case_ref.is_some() || (self.member_id.is_some() && self.codes.is_some() && self.service_start.is_some())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    Navigate {
        url: Tpl,
    },
    Fill {
        selector: Sel,
        value: Tpl,
    },
    Select {
        selector: Sel,
        by: SelectBy,
    },
    Check {
        selector: Sel,
        checked: bool,
    },
    Upload {
        selector: Sel,
        file: Tpl,
    },
    Click {
        selector: Sel,
    },
    WaitFor(Condition),
    Extract {
        from: ExtractOn,
        attribute: Option<String>,
        regex: Option<String>,
        into: String,
        optional: bool,
    },
    Assert(Condition),
    Totp {
        secret: Tpl,
        into: String,
    },
    Screenshot {
        name: String,
    },
    Download {
        from: DownloadFrom,
        kind: String,
    },
    If {
        condition: Condition,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    Rows {
        selector: Sel,
        cells: Vec<(String, Sel)>,
        next_page: Option<Sel>,
        max_pages: u32,
        into: String,
        /// What a successful search with no result looks like.
        empty: Option<Condition>,
    },
    ForEach {
        /// An expression giving a list, or a string (its characters).
        list: Tpl,
        item: String,
        steps: Vec<Step>,
    },
    Frame {
        selector: Sel,
        steps: Vec<Step>,
    },
    Dialog {
        accept: bool,
        expect: Option<Tpl>,
    },
    NewTab {
        click: Sel,
        steps: Vec<Step>,
    },
    Script {
        js: Tpl,
        into: Option<String>,
    },
    Set(Vec<(String, Tpl)>),
    Call(Action),
    Fail {
        kind: FailKind,
        /// A template: the portal's own words (`{{ vars.error }}`) reach the
        /// timeline and the mail.
        message: Tpl,
    },
    Outcome(Box<OutcomeFields>),
    Http(Box<HttpStep>),
    /// A page fetched with the browser session's cookies, read without
    /// rendering: JSON `into` a variable, HTML by `steps`.
    Fetch {
        url: Tpl,
        into: Option<String>,
        steps: Vec<Step>,
    },
}

impl StepKind {
    /// Whether the step can read a page fetched by `fetch` (it reads, and
    /// needs no browser of its own).
    pub fn reads_fetched_page(&self) -> bool {
        matches!(
            self,
            StepKind::Extract { .. }
                | StepKind::Rows { .. }
                | StepKind::Assert(_)
                | StepKind::WaitFor(_)
                | StepKind::If { .. }
                | StepKind::Set(_)
                | StepKind::ForEach { .. }
                | StepKind::Outcome(_)
                | StepKind::Fail { .. }
        )
    }

    /// Whether the step needs a browser page (an `api` playbook has none).
    pub fn needs_browser(&self) -> bool {
        match self {
            StepKind::Set(_)
            | StepKind::Call(_)
            | StepKind::Fail { .. }
            | StepKind::Outcome(_)
            | StepKind::Http(_)
            | StepKind::Totp { .. }
            | StepKind::ForEach { .. } => false,
            StepKind::If { condition, .. } | StepKind::Assert(condition) | StepKind::WaitFor(condition) => {
                !matches!(condition, Condition::Expr(_))
            }
            _ => true,
        }
    }

    /// The step key, as written in the playbook.
    pub fn keyword(&self) -> &'static str {
        match self {
            StepKind::Navigate { .. } => "navigate",
            StepKind::Fill { .. } => "fill",
            StepKind::Select { .. } => "select",
            StepKind::Check { .. } => "check",
            StepKind::Upload { .. } => "upload",
            StepKind::Click { .. } => "click",
            StepKind::WaitFor(_) => "wait_for",
            StepKind::Extract { .. } => "extract",
            StepKind::Assert(_) => "assert",
            StepKind::Totp { .. } => "totp",
            StepKind::Screenshot { .. } => "screenshot",
            StepKind::Download { .. } => "download",
            StepKind::If { .. } => "if",
            StepKind::Rows { .. } => "rows",
            StepKind::ForEach { .. } => "for_each",
            StepKind::Frame { .. } => "frame",
            StepKind::Dialog { .. } => "dialog",
            StepKind::NewTab { .. } => "new_tab",
            StepKind::Script { .. } => "script",
            StepKind::Set(_) => "set",
            StepKind::Call(_) => "call",
            StepKind::Fail { .. } => "fail",
            StepKind::Outcome(_) => "outcome",
            StepKind::Http(_) => "http",
            StepKind::Fetch { .. } => "fetch",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub at: Loc,
    pub name: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub commit: bool,
    /// A safe point to resume the action from (see `RawStep::checkpoint`).
    pub checkpoint: bool,
    pub kind: StepKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Detect {
    pub logged_out: Vec<Condition>,
    pub needs_human: Vec<Condition>,
    pub unavailable: Vec<Condition>,
}

#[derive(Clone, Debug)]
pub struct Playbook {
    pub file: PathBuf,
    pub id: String,
    pub name: String,
    pub channel: Channel,
    /// A protocol precert speaks itself (`payer.api`), for `channel: api`.
    pub api: Option<ApiKind>,
    pub base_url: String,
    pub plans: Vec<String>,
    pub states: Vec<String>,
    pub max_sessions: u32,
    pub credentials: Vec<String>,
    pub detect: Detect,
    /// Normalised portal wording → status.
    pub outcomes: BTreeMap<String, CaseStatus>,
    pub actions: BTreeMap<Action, Vec<Step>>,
    /// The payer's CRD service, when the playbook declares one.
    pub crd: Option<CrdService>,
}

impl Playbook {
    /// The canonical status for the portal's wording, if the map knows it.
    /// Matching ignores case and runs of white space.
    pub fn outcome(&self, wording: &str) -> Option<CaseStatus> {
        self.outcomes.get(&normalize_wording(wording)).copied()
    }
}

pub fn normalize_wording(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

/// The statuses a payer reports (an outcome map may name any of them).
pub const OUTCOME_STATUSES: [CaseStatus; 7] = [
    CaseStatus::Pending,
    CaseStatus::PendedForInfo,
    CaseStatus::Approved,
    CaseStatus::PartiallyApproved,
    CaseStatus::Denied,
    CaseStatus::Cancelled,
    CaseStatus::Expired,
];

/// Reads and compiles one playbook file.
pub fn load_file(path: &Path) -> Result<Playbook, Vec<PlaybookError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![PlaybookError {
            file: path.to_owned(),
            at: Loc::default(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    compile(path, &text)
}

/// Every `*.yaml`/`*.yml` in a directory, with every problem found.
pub fn load_dir(dir: &Path) -> (Vec<Playbook>, Vec<PlaybookError>) {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            // Requirement rules live beside the playbooks (`crate::requirements`).
            .filter(|p| !crate::requirements::is_rules_file(p))
            .collect(),
        Err(e) => {
            return (
                Vec::new(),
                vec![PlaybookError {
                    file: dir.to_owned(),
                    at: Loc::default(),
                    message: format!("cannot read the playbooks directory: {e}"),
                }],
            )
        }
    };
    files.sort();
    let (mut playbooks, mut errors) = (Vec::new(), Vec::new());
    for file in files {
        match load_file(&file) {
            Ok(p) => {
                if let Some(other) = playbooks.iter().find(|o: &&Playbook| o.id == p.id) {
                    errors.push(PlaybookError {
                        file: file.clone(),
                        at: Loc::default(),
                        message: format!("payer id `{}` is already used by {}", p.id, other.file.display()),
                    });
                } else {
                    playbooks.push(p);
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    (playbooks, errors)
}

/// Every practice's payer bindings against the playbooks: the playbook must
/// exist and every credential it needs must be bound.
pub fn check_bindings(settings: &crate::config::Settings, playbooks: &[Playbook]) -> Vec<crate::config::ConfigError> {
    let mut out = Vec::new();
    for practice in &settings.practices {
        for (key, binding) in &practice.payers {
            let err = |k: String, message: String| crate::config::ConfigError {
                file: practice.source.clone(),
                key: k,
                message,
            };
            let Some(pb) = playbooks.iter().find(|p| p.id == binding.playbook) else {
                out.push(err(
                    format!("payers.{key}"),
                    format!(
                        "no playbook `{}` in {}",
                        binding.playbook,
                        settings.playbooks_dir.display()
                    ),
                ));
                continue;
            };
            for cred in &pb.credentials {
                if !binding.account.contains_key(cred) && !binding.secrets.contains_key(cred) {
                    out.push(err(
                        format!("payers.{key}"),
                        format!(
                            "playbook {} needs credential `{cred}`: set account.{cred} or secrets.{cred}",
                            pb.id
                        ),
                    ));
                }
            }
        }
    }
    out
}
