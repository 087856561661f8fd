//! Playbook files as written: YAML read by serde-saphyr, which reports line
//! and column. Each step is one map whose single *step key* says what it
//! does (`fill:`, `click:` …) next to optional common keys (`timeout:`,
//! `retries:`, `name:`, `commit:`). `compile` checks there is exactly one.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A string with where it was written.
pub type S = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaybook {
    pub payer: Spanned<RawPayer>,
    /// Credential names the playbook uses; each practice binds them under
    /// `[payers.ID]` as `account.NAME` or `secrets.NAME`.
    #[serde(default)]
    pub credentials: Vec<S>,
    /// Pages that say something about the session, checked after a failure.
    #[serde(default)]
    pub detect: RawDetect,
    /// Portal wording → canonical status.
    #[serde(default)]
    pub outcomes: Option<Spanned<BTreeMap<String, S>>>,
    pub actions: Spanned<BTreeMap<String, Spanned<Vec<Spanned<RawStep>>>>>,
    /// The payer's Da Vinci CRD service (Coverage Requirements Discovery
    /// over CDS Hooks): precert asks it whether a `new` case needs a
    /// pre-cert (`src/crd`, `docs/crd.md`).
    #[serde(default)]
    pub crd: Option<Spanned<RawCrd>>,
}

/// `crd:` — where the payer's CDS Hooks service is and how to call it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrd {
    /// The CDS Hooks base: an http(s) URL, or a path under `base_url`
    /// (e.g. `/cds`). Discovery is at `URL/cds-services`.
    pub url: S,
    /// The service id (`URL/cds-services/ID`); when left out, the first
    /// service that discovery lists for the hook.
    pub service: Option<S>,
    /// `order-sign` (default) or `order-select`.
    pub hook: Option<S>,
    /// `oauth2` (default: the binding's client credentials, as PAS) or
    /// `none`.
    pub auth: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayer {
    pub id: S,
    pub name: S,
    /// `web` (a portal through WebDriver) or `api`.
    pub channel: S,
    /// The portal's address; a practice may override it (`base_url`).
    pub base_url: S,
    #[serde(default)]
    pub plans: Vec<S>,
    #[serde(default)]
    pub states: Vec<S>,
    /// Sessions open at once on this payer (default 1).
    pub max_sessions: Option<u32>,
    /// With `channel: api`, a protocol precert speaks itself instead of
    /// running steps: `pas` (Da Vinci PAS, `src/pas`).
    pub api: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDetect {
    /// The portal logged us out: log in again and resume.
    #[serde(default)]
    pub logged_out: Vec<Spanned<RawCondition>>,
    /// A page only a person can pass (CAPTCHA): the case needs attention.
    #[serde(default)]
    pub needs_human: Vec<Spanned<RawCondition>>,
    /// The portal is failing (HTTP 500 page, maintenance): retry later.
    #[serde(default)]
    pub unavailable: Vec<Spanned<RawCondition>>,
}

/// A test on the current page. Exactly one key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    /// An element matching this CSS selector exists.
    pub present: Option<S>,
    /// No element matches this CSS selector.
    pub absent: Option<S>,
    /// The page's text contains this.
    pub text: Option<S>,
    /// The URL contains this.
    pub url: Option<S>,
    /// A template expression that is true, e.g. `row.codes == "73721"`.
    pub expr: Option<S>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    // Step keys: exactly one per step.
    /// Go to a URL (template).
    pub navigate: Option<S>,
    /// Type a value into an input.
    pub fill: Option<Spanned<RawFill>>,
    /// Choose an option of a `<select>` by value or visible label.
    pub select: Option<Spanned<RawSelect>>,
    /// Tick (or untick) a checkbox or choose a radio button.
    pub check: Option<Spanned<RawCheck>>,
    /// Give a file to a file input.
    pub upload: Option<Spanned<RawUpload>>,
    /// Click the element.
    pub click: Option<S>,
    /// Wait until a condition holds.
    pub wait_for: Option<Spanned<RawCondition>>,
    /// Read text or an attribute into a variable.
    pub extract: Option<Spanned<RawExtract>>,
    /// Prove we are on the right page; failing means the portal changed.
    #[serde(rename = "assert")]
    pub assert_: Option<Spanned<RawCondition>>,
    /// Compute a TOTP code from a secret into a variable.
    pub totp: Option<Spanned<RawTotp>>,
    /// Save a screenshot as an artifact.
    pub screenshot: Option<S>,
    /// Fetch a file with the session's cookies and keep it as a letter.
    pub download: Option<Spanned<RawDownload>>,
    /// Run `then` (or `else`) steps depending on the page.
    #[serde(rename = "if")]
    pub if_: Option<Spanned<RawCondition>>,
    /// Read a table's rows into a list variable, over pages.
    pub rows: Option<Spanned<RawRows>>,
    /// Run steps for each item of a list variable.
    pub for_each: Option<Spanned<RawForEach>>,
    /// Run steps inside an iframe, then return to the page.
    pub frame: Option<Spanned<RawFrame>>,
    /// Accept or dismiss a browser alert/confirm.
    pub dialog: Option<Spanned<RawDialog>>,
    /// Click something that opens a new tab, run steps there, close it.
    pub new_tab: Option<Spanned<RawNewTab>>,
    /// Run a short JavaScript snippet where nothing else works.
    pub script: Option<Spanned<RawScript>>,
    /// Set variables from templates.
    pub set: Option<Spanned<BTreeMap<String, S>>>,
    /// Run another action of this playbook (e.g. `login`).
    pub call: Option<S>,
    /// Stop with a classified failure.
    pub fail: Option<Spanned<RawFail>>,
    /// Record the portal's outcome for the case from a variable.
    pub outcome: Option<Spanned<RawOutcome>>,
    /// Send an HTTP request (no browser) and read its answer.
    pub http: Option<Spanned<RawHttp>>,
    /// Fetch a page with the browser session's cookies (no rendering) and
    /// read it: a JSON answer `into` a variable, an HTML one by `steps`.
    pub fetch: Option<Spanned<RawFetch>>,

    // Common keys.
    /// Shown in the step trace.
    pub name: Option<S>,
    /// How long this step may wait, e.g. `10s`, `500ms` (default 15s).
    pub timeout: Option<S>,
    /// Extra attempts for retryable failures (default 0).
    pub retries: Option<u32>,
    /// This step sends the request to the payer: precert records the intent
    /// first, so a crash after it never leads to a second submission.
    pub commit: Option<bool>,
    /// A safe point of the action (top-level steps before the commit step):
    /// after a passing failure further on, precert goes back to the page
    /// this step began on and resumes here instead of from the first step.
    pub checkpoint: Option<bool>,
    /// With `if`: the steps when the condition holds.
    pub then: Option<Vec<Spanned<RawStep>>>,
    /// With `if`: the steps when it does not.
    #[serde(rename = "else")]
    pub else_: Option<Vec<Spanned<RawStep>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFill {
    pub selector: S,
    pub value: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelect {
    pub selector: S,
    pub value: Option<S>,
    pub label: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub selector: S,
    /// Default true; false unticks a checkbox.
    pub checked: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    pub selector: S,
    /// A template giving the file's path (e.g. `{{ item.path }}`).
    pub file: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExtract {
    /// The element to read (or `label`).
    pub selector: Option<S>,
    /// Read the value next to this label, as a person does: the `dd` after
    /// a `dt`, the cell beside (or below) a `th`, the field a `label` is
    /// for, or the element after any other element with exactly this text.
    /// Case and a trailing `:` do not matter.
    pub label: Option<S>,
    /// With `label`: look only inside the first element matching this.
    pub within: Option<S>,
    /// Read this attribute instead of the text.
    pub attribute: Option<S>,
    /// Keep the first capture group (or the whole match) of this regex.
    pub regex: Option<S>,
    pub into: S,
    /// A missing element sets the variable empty instead of failing.
    pub optional: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTotp {
    pub secret: S,
    pub into: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownload {
    /// A template for the URL; or
    pub url: Option<S>,
    /// the `href` of this link.
    pub selector: Option<S>,
    /// What the file is: `letter` (the decision letter).
    pub kind: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRows {
    /// Selector of the table rows (`#worklist tbody tr`).
    pub selector: S,
    /// Column name → selector within the row (text is read).
    pub cells: Spanned<BTreeMap<String, S>>,
    /// Selector of the "next page" link; followed until absent.
    pub next_page: Option<S>,
    /// Pages read at most (default 50).
    pub max_pages: Option<u32>,
    pub into: S,
    /// What the page shows when the search found nothing (e.g. `present:
    /// "#no-results"`). With it, zero rows count only when this holds;
    /// otherwise (an error box, a half-loaded page) the step fails as
    /// retryable. Required in `find_existing`.
    pub empty: Option<Spanned<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForEach {
    /// What to loop over, an expression: a list (`vars.rows`,
    /// `case.attachments`), a string's characters (`vars.mfa`), or a list
    /// made by a filter (`vars.codes | split(",")`).
    pub list: S,
    /// Name of the item variable in the steps (default `item`).
    #[serde(rename = "as")]
    pub as_: Option<S>,
    pub steps: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFetch {
    /// The address (template): absolute, or a path on the payer's base URL.
    pub url: S,
    /// A JSON answer, parsed, into `vars.NAME` (an HTML answer: its text).
    pub into: Option<S>,
    /// Steps that read the fetched HTML page instead of the browser's:
    /// extract, rows, assert, wait_for, if, set, for_each, outcome, fail.
    pub steps: Option<Vec<Spanned<RawStep>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrame {
    pub selector: S,
    pub steps: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDialog {
    /// `accept` or `dismiss`.
    pub action: S,
    /// Fail unless the dialog's text contains this.
    pub expect: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNewTab {
    /// The element whose click opens the tab.
    pub click: S,
    pub steps: Vec<Spanned<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScript {
    pub js: S,
    pub into: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFail {
    /// `needs_human`, `portal_changed`, `retryable` or `fatal`.
    pub kind: S,
    pub message: S,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutcome {
    /// The portal's status wording, mapped through `outcomes`.
    pub status: S,
    pub reference: Option<S>,
    pub auth_number: Option<S>,
    pub valid_from: Option<S>,
    pub valid_to: Option<S>,
    pub approved_units: Option<S>,
    pub decision_date: Option<S>,
    pub denial_reason: Option<S>,
    /// What the payer asks for (a pend's request: "Please send the MRI
    /// report"): the timeline and the supervisors' mail quote it.
    pub request: Option<S>,
    /// The payer's reason in words: a denial's reason text (when there is
    /// no `denial_reason` with its code), a partial approval's conditions.
    pub reason: Option<S>,
    /// In `find_existing`: what the payer's record says, compared by precert
    /// with the case (not by the playbook).
    #[serde(rename = "match")]
    pub match_: Option<Spanned<RawMatch>>,
}

/// The payer's record of a request, as `find_existing` read it. precert
/// adopts a candidate only when every given field equals the case's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Our own case reference, where the payer keeps it (a PAS Claim
    /// identifier). Enough on its own.
    pub case_ref: Option<S>,
    /// The member ID the request is for.
    pub member_id: Option<S>,
    /// The request's procedure codes (`73721, 97110`; any order).
    pub codes: Option<S>,
    /// First and last service date (`MM/DD/YYYY` or `YYYY-MM-DD`).
    pub service_start: Option<S>,
    pub service_end: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    pub method: S,
    /// A template for the URL.
    pub url: S,
    /// Header name → template.
    pub headers: Option<Spanned<BTreeMap<String, S>>>,
    pub auth: Option<Spanned<RawAuth>>,
    /// A JSON body: a YAML mapping whose string leaves are templates (a
    /// leaf that is one `{{ expression }}` keeps the value's JSON type).
    pub json: Option<Spanned<serde_json::Value>>,
    /// A body from one template (e.g. a JSON document built with loops).
    pub body: Option<S>,
    /// The body's media type (default `application/json`).
    pub content_type: Option<S>,
    /// Status codes that are an answer (default: any 2xx).
    pub expect: Option<Spanned<Vec<u16>>>,
    /// Variable → where its value is: a JSON pointer into the answer
    /// (`/entry/0/resource/id`), `status`, or `header:NAME`.
    pub extract: Option<Spanned<BTreeMap<String, S>>>,
    /// Extracted variables that may be missing from the answer (set empty).
    pub optional: Option<Vec<S>>,
}

/// How the request proves who sends it. Exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// OAuth2 client credentials; the token is cached per payer account.
    pub oauth2: Option<Spanned<RawOAuth2>>,
    /// A bearer token from a template.
    pub bearer: Option<S>,
    /// HTTP Basic.
    pub basic: Option<Spanned<RawBasic>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    pub token_url: S,
    pub client_id: S,
    pub client_secret: S,
    pub scope: Option<S>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    pub username: S,
    pub password: S,
}
