//! The configuration as written: serde types that refuse unknown keys.
//!
//! Almost every field is optional here so that one pass of `compile` can
//! report every missing or bad value at once, each with its file and key.
//! These doc comments are the reference for the keys; `config/*.toml` shows
//! them in use.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::secret::RawSecret;
use crate::escalate::rules::RuleLayer;

/// `config/precert.toml`: daemon-wide settings. Environment variables
/// `PRECERT__SECTION__KEY` override any key (`PRECERT__LOG__FORMAT=json`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// Where the ledger, letters, attachments, artifacts and mail files live.
    /// Default: `data` beside the `config` directory.
    pub data_dir: Option<String>,
    /// `sqlite://PATH` (default: `precert.db` in the data directory) or
    /// `postgres://USER@HOST/DATABASE` (no password here: PGPASSWORD,
    /// ~/.pgpass or peer authentication).
    pub database_url: Option<String>,
    /// Default: `practices` beside this file.
    pub practices_dir: Option<String>,
    /// Default: `playbooks` beside the `config` directory.
    pub playbooks_dir: Option<String>,
    /// Days to keep failure artifacts (screenshots, page HTML, traces) and
    /// the bodies of sent mail in the outbox. Default 30.
    pub artifacts_retention_days: Option<u32>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub webdriver: RawWebDriver,
    #[serde(default)]
    pub mail: RawMail,
    #[serde(default)]
    pub limits: RawLimits,
    /// Defaults for every practice's escalation rules.
    #[serde(default)]
    pub escalations: RawEscalations,
    /// The web console (`crate::console`).
    #[serde(default)]
    pub console: RawConsole,
}

/// `[console]`: the web console's listener, sessions and sign-in lockout.
/// Its users live in the ledger (`precert users add`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    /// Address of the console's own listener. Default `127.0.0.1:8623`
    /// (loopback: put a TLS proxy at `http.public_url` in front of it).
    pub listen: Option<String>,
    /// A session unused this long ends (default 30).
    pub session_idle_minutes: Option<u32>,
    /// A session ends this long after sign-in, used or not (default 12).
    pub session_max_hours: Option<u32>,
    /// Failed sign-ins in a row that lock an account (default 5).
    pub lockout_failures: Option<u32>,
    /// How long a locked account stays locked (default 15).
    pub lockout_minutes: Option<u32>,
    /// How long an acknowledgement link in escalation mail can be used
    /// (default 72). Each link works once.
    pub ack_link_hours: Option<u32>,
    /// Reverse proxies (addresses or networks, `10.0.0.0/8`) whose
    /// `X-Forwarded-For` header is believed for the client's address in the
    /// audit and the sign-in throttle. Default none: the listener's peer.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The intake API's (`/api/v1`) largest request body, in megabytes
    /// (default 10). A larger one is refused (413) without being read.
    pub api_max_request_mb: Option<u32>,
}

/// `[escalations]`: when a case reaches a person, and what mail shows.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalations {
    /// Patient details in mail: `minimum` (initials, member ID's last four;
    /// the default), `none`, or `full`.
    pub patient_details: Option<String>,
    /// A link to the case in mail, with `{practice}`, `{case_ref}` and
    /// `{case_id}` filled in. Default: the case's page in the console.
    pub case_link: Option<String>,
    /// The rules (see `escalate::rules::RuleLayer` for the keys).
    #[serde(default)]
    pub rules: RuleLayer,
    /// Per-payer overrides, by payer id.
    #[serde(default)]
    pub payers: BTreeMap<String, RuleLayer>,
    /// Per-state overrides (the plan's state), by two-letter code.
    #[serde(default)]
    pub states: BTreeMap<String, RuleLayer>,
    /// Per-plan-type overrides (`commercial`, `medicare_advantage`,
    /// `medicaid`, …): federal deadlines bind some plan types, state law
    /// others.
    #[serde(default)]
    pub plan_types: BTreeMap<String, RuleLayer>,
}

/// How hard the daemon may use each payer's portal or API (per payer).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Runs started per minute, on average (default 6).
    pub starts_per_minute: Option<f64>,
    /// Starts allowed back to back before the rate applies (default 3).
    pub burst: Option<u32>,
    /// Consecutive portal failures that pause the payer (default 5).
    pub failure_threshold: Option<u32>,
    /// How long a paused payer rests before one trial run (default 900).
    pub cool_down_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `human` (default) or `json`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `precert=debug,sqlx=warn`.
    /// `PRECERT_LOG` in the environment wins over it.
    pub level: Option<String>,
    /// Mask member IDs and patient names in logs (default true).
    pub mask_phi: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address of the HTTP listener (health, metrics, PAS notifications).
    /// Default `127.0.0.1:8622`.
    pub listen: Option<String>,
    /// Where people and payers reach precert from outside, through a
    /// reverse proxy with TLS: payers post PAS subscription notifications to
    /// `PUBLIC_URL/pas/notify/…` (the HTTP listener), and mail links to the
    /// console's pages under it (the console's listener). Unset, PAS uses
    /// `http://LISTEN` and mail links `http://CONSOLE_LISTEN`.
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebDriver {
    /// chromedriver to spawn (default `/usr/bin/chromedriver`).
    pub chromedriver: Option<String>,
    /// Chromium binary (default `/usr/bin/chromium`).
    pub chromium: Option<String>,
    /// Use a remote WebDriver (e.g. Selenium Grid) instead of spawning
    /// chromedriver.
    pub remote_url: Option<String>,
    /// Browser sessions open at once, across all payers (default 2).
    pub max_sessions: Option<u32>,
    /// Browser sessions open at once across every daemon on this ledger
    /// (a WebDriver grid's capacity; default: no cap beyond each daemon's
    /// `max_sessions`).
    pub cluster_sessions: Option<u32>,
    /// Run Chromium headless (default true).
    pub headless: Option<bool>,
    /// Seconds a logged-in browser session may stay idle before it is
    /// closed (default 300; at most 86400). An idle session holds about
    /// half a gigabyte; keeping it saves the next job of the same payer
    /// account a login. 0 closes an account's sessions when each job ends.
    pub idle_close_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMail {
    /// `file` (default: `.eml` files in `dir`) or `smtp`.
    pub transport: Option<String>,
    /// The From address of escalation mail.
    pub from: Option<String>,
    /// For `file`: where `.eml` files go (default `mail` in the data dir).
    pub dir: Option<String>,
    /// Who hears of problems that belong to no readable practice: a
    /// practice whose file cannot be read is reported here (a practice whose
    /// `contacts.operations` can be read is reported there).
    #[serde(default)]
    pub operations: Vec<String>,
    pub smtp: Option<RawSmtp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub host: Option<String>,
    /// Default 587 for `starttls`, 465 for `implicit`, 25 for `none`.
    pub port: Option<u16>,
    /// `starttls` (default), `implicit` or `none`.
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
    /// `tls = "none"` to a host other than loopback needs this set to true.
    pub allow_plaintext: Option<bool>,
    /// Extra trusted root certificate(s), PEM, for a relay whose certificate
    /// is issued by a private CA, e.g. `"/etc/precert/smtp-ca.pem"` (relative
    /// to this file's directory). Trusted in addition to the public (webpki)
    /// roots. Checked at load: the file must hold at least one certificate.
    pub ca_file: Option<String>,
}

/// `config/practices/ID.toml`: one practice.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPractice {
    /// Lower-case letters, digits and `-`; equals the file's name.
    pub id: Option<String>,
    pub name: Option<String>,
    /// The practice's group (type 2) NPI.
    pub npi: Option<String>,
    pub tax_id: Option<String>,
    /// IANA time zone, e.g. `America/Chicago`; schedules run in it.
    pub timezone: Option<String>,
    /// Set false to keep the practice's cases but run no jobs for it.
    pub enabled: Option<bool>,
    #[serde(default)]
    pub locations: Vec<RawLocation>,
    pub contacts: Option<RawContacts>,
    /// The payers this practice uses, by playbook id.
    #[serde(default)]
    pub payers: BTreeMap<String, RawPayer>,
    /// Job name → cron expression in the practice's time zone.
    #[serde(default)]
    pub schedules: BTreeMap<String, String>,
    /// Overrides precert.toml's `[escalations]` for this practice.
    #[serde(default)]
    pub escalations: RawEscalations,
    /// How this practice's own systems write case CSV files
    /// (`docs/csv-import.md`): used by `precert cases import --practice ID`.
    #[serde(default)]
    pub csv: RawCsv,
    /// The drop folder (`docs/intake.md`).
    #[serde(default)]
    pub intake: RawIntake,
    /// The intake API's webhook (`docs/intake.md`).
    #[serde(default)]
    pub api: RawApi,
}

/// `[csv]` of a practice file: the CSV its practice management system
/// exports, read as it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCsv {
    /// One character between fields: `","` (the default), `";"`, `"|"`, or
    /// `"\t"` / `"tab"`.
    pub delimiter: Option<String>,
    /// Their header → precert's column name, e.g. `"Member #" =
    /// "patient_member_id"`. Headers compare without regard to case.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

/// `[intake]`: the practice's drop folder.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIntake {
    /// A folder the daemon watches: a `.csv` or `.json` file of this
    /// practice's cases that appears in it is imported, then moved to
    /// `done/` or `failed/` with a report beside it. Relative to this file.
    pub dir: Option<String>,
    /// How often the folder is looked at, in seconds (default 10). A file
    /// is read once its size and modification time are the same at two
    /// looks in a row.
    pub scan_seconds: Option<u32>,
}

/// `[api]`: the practice's webhook, told of each decision and each move
/// to a final status.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `https://…` (or `http://` on loopback) where deliveries are POSTed.
    pub webhook_url: Option<String>,
    /// The key that signs each delivery (HMAC-SHA256), from where to read
    /// it: `{ env = "VAR" }`, `{ file = "/path" }` or `{ credential = "name" }`.
    pub webhook_secret: Option<RawSecret>,
    /// Seconds before the first retry of a failed delivery (default 30);
    /// each later retry waits twice as long, at most an hour.
    pub webhook_retry_seconds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocation {
    pub id: Option<String>,
    pub name: Option<String>,
    pub address: Option<String>,
    /// The location's own NPI, if it has one.
    pub npi: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContacts {
    /// Receive escalations for stalled, denied and pended cases.
    #[serde(default)]
    pub supervisors: Vec<String>,
    /// The next level when an escalation is not acknowledged.
    #[serde(default)]
    pub managers: Vec<String>,
    /// Receive automation alerts (a portal changed, a payer paused).
    #[serde(default)]
    pub operations: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayer {
    /// The playbook to run (default: the table's key).
    pub playbook: Option<String>,
    /// Overrides the playbook's portal address (a test portal, the sandbox).
    pub base_url: Option<String>,
    /// Non-secret account details the playbook uses, e.g. `username`.
    #[serde(default)]
    pub account: BTreeMap<String, String>,
    /// Secrets the playbook uses, each naming where to read it.
    #[serde(default)]
    pub secrets: BTreeMap<String, RawSecret>,
}
