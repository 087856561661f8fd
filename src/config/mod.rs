//! Configuration: `precert.toml` for the daemon, one file per practice.
//!
//! Two stages, as in Vector: `raw` types, then `compile` into typed
//! settings. Both report every problem they find, each with the file and the
//! key, instead of stopping at the first: reading collects every unknown key
//! (`unknown`, with its line and a "did you mean") and goes on past it.

pub mod raw;
pub mod secret;
pub mod unknown;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::tz::Tz;
use serde::de::DeserializeOwned;

use crate::case::{Npi, TaxId};
pub use crate::escalate::rules::{EscalationConfig, PatientDetails};
use raw::{RawDaemon, RawEscalations, RawPractice};
pub use secret::{Secret, SecretRef};

/// One problem in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path (`payers.sandbox.secrets.password`); empty when the
    /// problem is with the file as a whole.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "the configuration has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Whether loading reads secret values. Commands that never use a secret
/// skip them, so an operator's shell needs no credentials to list cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    Resolve,
    Skip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
    pub mask_phi: bool,
}

/// `webdriver.idle_close_secs` when left out: a payer account polled every
/// few minutes keeps its session; one polled hourly does not hold a browser
/// in between.
pub const DEFAULT_IDLE_CLOSE_SECS: u64 = 300;

/// The longest `webdriver.idle_close_secs` accepted (a day).
const MAX_IDLE_CLOSE_SECS: u64 = 86_400;

#[derive(Clone, Debug)]
pub struct WebDriverSettings {
    pub chromedriver: PathBuf,
    pub chromium: PathBuf,
    pub remote_url: Option<String>,
    pub max_sessions: u32,
    /// Browser sessions at once across every daemon on the ledger (the
    /// grid's capacity), when capped.
    pub cluster_sessions: Option<u32>,
    pub headless: bool,
    /// How long a logged-in session may stay idle before the engine closes
    /// it; zero: the daemon closes an account's sessions when each job ends.
    pub idle_close: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    None,
}

#[derive(Clone, Debug)]
pub enum MailTransport {
    /// `.eml` files in a directory: the embedded default.
    File { dir: PathBuf },
    Smtp {
        host: String,
        port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<Secret>,
        /// Extra trusted root certificates (PEM), checked at load to hold at
        /// least one certificate.
        ca_file: Option<PathBuf>,
    },
}

#[derive(Clone, Debug)]
pub struct MailSettings {
    pub from: String,
    pub transport: MailTransport,
    /// `[mail] operations`: the daemon's fallback operations addresses (a
    /// disabled practice whose own contacts cannot be read).
    pub operations: Vec<String>,
}

impl MailSettings {
    /// The From address's domain: the right-hand side of Message-IDs.
    pub fn domain(&self) -> &str {
        self.from
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('>'))
            .unwrap_or("localhost")
    }
}

/// The daemon-wide settings and every practice.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `precert.toml` these came from.
    pub source: PathBuf,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub practices_dir: PathBuf,
    pub playbooks_dir: PathBuf,
    pub artifacts_retention_days: u32,
    pub log: LogSettings,
    pub http_listen: SocketAddr,
    /// Where payers reach the listener (notifications): `http://LISTEN` unless set.
    pub http_public_url: String,
    pub webdriver: WebDriverSettings,
    pub mail: MailSettings,
    /// Per-payer pacing; each payer's concurrency is its playbook's
    /// `max_sessions`.
    pub limits: crate::limits::LimitSettings,
    /// Escalation rule defaults; each practice may override them.
    pub escalations: EscalationConfig,
    /// The web console's listener, sessions and lockout.
    pub console: ConsoleSettings,
    pub practices: Vec<Practice>,
}

/// `[console]`, checked.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    pub listen: SocketAddr,
    /// Where people reach the console, for links in mail: `http.public_url`
    /// when it is set (the TLS proxy in front of the console), else
    /// `http://LISTEN`. No trailing slash.
    pub public_url: String,
    /// How long an acknowledgement link in mail stays usable.
    pub ack_link_valid: std::time::Duration,
    /// Proxies whose `X-Forwarded-For` is believed: the client's address
    /// (audit, sign-in throttling) is the first address in the chain, from
    /// the right, that is not one of them.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub session_idle: std::time::Duration,
    pub session_max: std::time::Duration,
    pub lockout_failures: u32,
    pub lockout: std::time::Duration,
    /// The intake API's largest request body, in bytes.
    pub api_max_request_bytes: usize,
}

impl Settings {
    pub fn practice(&self, id: &str) -> Option<&Practice> {
        self.practices.iter().find(|p| p.id == id)
    }
}

#[derive(Clone, Debug)]
pub struct Practice {
    pub source: PathBuf,
    pub id: String,
    pub name: String,
    pub npi: Npi,
    pub tax_id: TaxId,
    pub timezone: Tz,
    pub enabled: bool,
    pub locations: Vec<Location>,
    pub contacts: Contacts,
    pub payers: BTreeMap<String, PayerBinding>,
    /// Every job with its cron expression; defaults filled in.
    pub schedules: BTreeMap<Job, String>,
    pub escalations: EscalationConfig,
    /// How the practice's own systems write case CSV files.
    pub csv: CsvFormat,
    /// `[intake]`: the drop folder.
    pub intake: IntakeConfig,
    /// `[api]`: the webhook.
    pub api: ApiConfig,
}

/// A practice's CSV dialect (`[csv]`): the delimiter, and their column
/// names mapped to precert's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvFormat {
    pub delimiter: u8,
    /// Their header, lower-cased and trimmed → precert's column.
    pub columns: BTreeMap<String, String>,
}

impl Default for CsvFormat {
    fn default() -> Self {
        CsvFormat {
            delimiter: b',',
            columns: BTreeMap::new(),
        }
    }
}

/// A practice's drop folder, when it has one.
#[derive(Clone, Debug, Default)]
pub struct IntakeConfig {
    pub dir: Option<PathBuf>,
    pub scan: std::time::Duration,
}

/// A practice's intake API settings.
#[derive(Clone, Debug, Default)]
pub struct ApiConfig {
    pub webhook: Option<Webhook>,
}

/// Where a practice's webhook deliveries go, and the key that signs them.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Secret,
    /// Before the first retry; doubled each time, at most an hour.
    pub retry_first: std::time::Duration,
}

impl Practice {
    pub fn location(&self, id: &str) -> Option<&Location> {
        self.locations.iter().find(|l| l.id == id)
    }
}

#[derive(Clone, Debug)]
pub struct Location {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
    pub npi: Option<Npi>,
}

#[derive(Clone, Debug, Default)]
pub struct Contacts {
    pub supervisors: Vec<String>,
    pub managers: Vec<String>,
    pub operations: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PayerBinding {
    pub playbook: String,
    pub base_url: Option<String>,
    pub account: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, Secret>,
}

/// Jobs a practice's schedule can fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Job {
    Submit,
    Poll,
    Letters,
    Escalations,
    Digest,
}

impl Job {
    pub const ALL: [Job; 5] = [Job::Submit, Job::Poll, Job::Letters, Job::Escalations, Job::Digest];

    pub fn as_str(self) -> &'static str {
        match self {
            Job::Submit => "submit",
            Job::Poll => "poll",
            Job::Letters => "letters",
            Job::Escalations => "escalations",
            Job::Digest => "digest",
        }
    }

    /// The schedule a practice gets when it names none, in its own time zone.
    pub fn default_schedule(self) -> &'static str {
        match self {
            // Every 30 minutes in office hours on weekdays.
            Job::Submit => "*/30 7-18 * * 1-5",
            // Nightly, when portals are quiet.
            Job::Poll => "0 2 * * *",
            Job::Letters => "30 2 * * *",
            Job::Escalations => "0 * * * *",
            // Supervisors read it first thing on weekdays.
            Job::Digest => "0 7 * * 1-5",
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Collects problems while compiling one file.
struct Problems<'a> {
    file: &'a Path,
    out: &'a mut Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.out.push(ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn required<'v>(&mut self, key: &str, v: &'v Option<String>) -> Option<&'v str> {
        match v.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(s),
            _ => {
                self.add(key, "is required");
                None
            }
        }
    }
}

/// Where playbooks are looked for when `precert.toml` cannot be read.
pub fn default_playbooks_dir(config_file: &Path) -> PathBuf {
    let base = absolute(
        config_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    );
    base.parent().map(Path::to_owned).unwrap_or(base).join("playbooks")
}

/// Loads and checks `precert.toml` and every practice file beside it.
pub fn load(path: &Path, secrets: Secrets) -> Result<Settings, ConfigErrors> {
    let mut parts = read_all(path, secrets);
    parts.errors.append(&mut parts.practice_errors);
    match parts.daemon {
        Some(mut d) if parts.errors.is_empty() => {
            d.practices = parts.practices;
            Ok(d)
        }
        _ => Err(ConfigErrors(parts.errors)),
    }
}

/// `precert.toml` and the practice files, each checked, with their
/// problems kept apart: the daemon's own, and the practice files'.
struct Parts {
    daemon: Option<Settings>,
    errors: Vec<ConfigError>,
    practices_dir: PathBuf,
    practices: Vec<Practice>,
    practice_errors: Vec<ConfigError>,
}

fn read_all(path: &Path, secrets: Secrets) -> Parts {
    let mut errors = Vec::new();
    let base = absolute(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    );
    let raw = if path.is_file() {
        let (raw, problems) = parse_file::<RawDaemon>(path, Some("PRECERT"));
        errors.extend(problems);
        raw
    } else {
        errors.push(ConfigError {
            file: path.to_owned(),
            key: String::new(),
            message: "configuration file not found (pass --config FILE or set PRECERT_CONFIG)".into(),
        });
        None
    };
    let daemon = raw
        .as_ref()
        .map(|r| compile_daemon(r, path, &base, secrets, &mut errors));
    let practices_dir = match &daemon {
        Some(d) => d.practices_dir.clone(),
        None => base.join("practices"),
    };
    let mut practice_errors = Vec::new();
    let practices = load_practices(&practices_dir, secrets, &mut practice_errors);
    Parts {
        daemon,
        errors,
        practices_dir,
        practices,
        practice_errors,
    }
}

/// Reads one TOML file through the `config` crate, with environment
/// overrides when a prefix is given. Every unknown key is reported (with its
/// line, or the variable it came from) and reading goes on past it; a value
/// of the wrong type ends the file's reading, its key named.
fn parse_file<T: DeserializeOwned>(path: &Path, env_prefix: Option<&str>) -> (Option<T>, Vec<ConfigError>) {
    let mut builder =
        config::Config::builder().add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
    if let Some(prefix) = env_prefix {
        builder = builder.add_source(
            config::Environment::with_prefix(prefix)
                .separator("__")
                .try_parsing(true),
        );
    }
    let err = |key: String, message: String| ConfigError {
        file: path.to_owned(),
        key,
        message,
    };
    let env_var = |key: &str| env_prefix.map(|prefix| format!("{prefix}__{}", key.replace('.', "__").to_uppercase()));
    let cfg = match builder.build() {
        Ok(cfg) => cfg,
        Err(e) => return (None, vec![err(String::new(), e.to_string())]),
    };
    let found = RefCell::new(Vec::new());
    let parsed = serde_path_to_error::deserialize(unknown::Lenient::new(cfg, unknown::Keys::Plain, &found));
    let found = found.into_inner();
    // The text again, for the lines of unknown keys only.
    let text = if found.is_empty() {
        String::new()
    } else {
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let mut errors: Vec<ConfigError> = found
        .into_iter()
        .map(|u| {
            let full = u.path();
            let key = unknown::dotted(&full);
            let place = match (toml_line(&text, &full), env_var(&key)) {
                (Some(line), _) => format!(" (line {line})"),
                (None, Some(var)) => format!(" (from the environment variable {var})"),
                (None, None) => String::new(),
            };
            err(key, format!("unknown key{place}; {}", u.hint()))
        })
        .collect();
    match parsed {
        Ok(raw) => (Some(raw), errors),
        Err(e) => {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let mut message = e.inner().to_string();
            if let Some(var) = env_var(&key).filter(|_| !key.is_empty()) {
                message.push_str(&format!(" (in the file, or the environment variable {var})"));
            }
            errors.push(err(key, message));
            (None, errors)
        }
    }
}

/// The line (from 1) a key is written on in a TOML text; `None` when the
/// text does not have it (it came from the environment).
fn toml_line(text: &str, path: &[unknown::PathSeg]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeValue::Table(DeTable::parse(text).ok()?.into_inner());
    let mut node = &root;
    let mut at = None;
    for seg in path {
        node = match (seg, node) {
            (unknown::PathSeg::Key(k), DeValue::Table(t)) => {
                let (key, value) = t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() as &str == k.as_str())
                    .or_else(|| t.iter().find(|(key, _)| key.get_ref().eq_ignore_ascii_case(k)))?;
                at = Some(key.span().start);
                value.get_ref()
            }
            (unknown::PathSeg::Index(i), DeValue::Array(a)) => a.get(*i)?.get_ref(),
            _ => return None,
        };
    }
    Some(text[..at?].matches('\n').count() + 1)
}

/// An absolute, lexically clean path: `value` as is when absolute, else
/// against `base`. Clean paths keep messages readable and `sqlite://` URLs
/// unambiguous (a URL parser would read `config/../data` as a host).
fn resolve_path(base: &Path, value: &str) -> PathBuf {
    absolute(&base.join(value))
}

fn absolute(path: &Path) -> PathBuf {
    use std::path::Component;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn compile_daemon(
    raw: &RawDaemon,
    path: &Path,
    base: &Path,
    secrets: Secrets,
    errors: &mut Vec<ConfigError>,
) -> Settings {
    let mut p = Problems {
        file: path,
        out: errors,
    };
    // Relative paths are resolved against the directory of the file that
    // names them, so `precert check` means the same from any working
    // directory.
    let project = base.parent().map(Path::to_owned).unwrap_or_else(|| base.to_owned());
    let data_dir = match &raw.data_dir {
        Some(d) => resolve_path(base, d),
        None => project.join("data"),
    };
    let database_url = match &raw.database_url {
        None => format!("sqlite://{}?mode=rwc", data_dir.join("precert.db").display()),
        Some(u) if u.starts_with("sqlite:") => u.clone(),
        Some(u) if u.starts_with("postgres:") || u.starts_with("postgresql:") => {
            // A configuration file holds no secret: the password comes from
            // PGPASSWORD or ~/.pgpass (or peer authentication on a socket).
            let userinfo = u
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
                .and_then(|authority| authority.rsplit_once('@').map(|(info, _)| info.to_owned()));
            if userinfo.is_some_and(|info| info.contains(':')) {
                p.add(
                    "database_url",
                    "holds a password: configuration files hold no secrets; set PGPASSWORD (e.g. from a systemd \
                     credential) or use ~/.pgpass or peer authentication, and write postgres://USER@HOST/DATABASE",
                );
            }
            u.clone()
        }
        Some(u) => {
            p.add(
                "database_url",
                format!(
                    "`{u}` is not a database URL precert knows; use sqlite://PATH or postgres://USER@HOST/DATABASE"
                ),
            );
            u.clone()
        }
    };
    let log = LogSettings {
        format: match raw.log.format.as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                p.add(
                    "log.format",
                    format!("`{other}` is not a log format; use `human` or `json`"),
                );
                LogFormat::Human
            }
        },
        level: match &raw.log.level {
            None => "info".into(),
            Some(l) => {
                if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(l) {
                    p.add("log.level", format!("`{l}` is not a log filter: {e}"));
                }
                l.clone()
            }
        },
        mask_phi: raw.log.mask_phi.unwrap_or(true),
    };
    let listen = raw.http.listen.as_deref().unwrap_or("127.0.0.1:8622");
    let http_listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add(
            "http.listen",
            format!("`{listen}` is not an address such as 127.0.0.1:8622"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8622))
    });
    let http_public_url = match &raw.http.public_url {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => u.trim_end_matches('/').to_owned(),
        Some(u) => {
            p.add("http.public_url", format!("`{u}` is not an http(s) URL"));
            String::new()
        }
        None => format!("http://{http_listen}"),
    };
    let webdriver = WebDriverSettings {
        chromedriver: PathBuf::from(raw.webdriver.chromedriver.as_deref().unwrap_or("/usr/bin/chromedriver")),
        chromium: PathBuf::from(raw.webdriver.chromium.as_deref().unwrap_or("/usr/bin/chromium")),
        remote_url: raw.webdriver.remote_url.clone(),
        max_sessions: match raw.webdriver.max_sessions {
            Some(0) => {
                p.add("webdriver.max_sessions", "must be at least 1");
                1
            }
            Some(n) => n,
            None => 2,
        },
        cluster_sessions: match raw.webdriver.cluster_sessions {
            Some(0) => {
                p.add(
                    "webdriver.cluster_sessions",
                    "must be at least 1 (leave it out for no cluster-wide cap)",
                );
                None
            }
            n => n,
        },
        headless: raw.webdriver.headless.unwrap_or(true),
        idle_close: match raw.webdriver.idle_close_secs {
            Some(s) if s > MAX_IDLE_CLOSE_SECS => {
                p.add(
                    "webdriver.idle_close_secs",
                    format!(
                        "{s} is more than {MAX_IDLE_CLOSE_SECS} (a day): an idle browser session holds about half a \
                         gigabyte; use 0 to close sessions after each job"
                    ),
                );
                std::time::Duration::from_secs(DEFAULT_IDLE_CLOSE_SECS)
            }
            Some(s) => std::time::Duration::from_secs(s),
            None => std::time::Duration::from_secs(DEFAULT_IDLE_CLOSE_SECS),
        },
    };
    if let Some(url) = &webdriver.remote_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            p.add("webdriver.remote_url", format!("`{url}` is not an http(s) URL"));
        }
    }
    let defaults = crate::limits::LimitSettings::default();
    let limits = crate::limits::LimitSettings {
        max_concurrent: defaults.max_concurrent,
        starts_per_minute: match raw.limits.starts_per_minute {
            Some(r) if r.is_finite() && r > 0.0 => r,
            Some(r) => {
                p.add("limits.starts_per_minute", format!("{r} must be a number above 0"));
                defaults.starts_per_minute
            }
            None => defaults.starts_per_minute,
        },
        burst: raw.limits.burst.unwrap_or(defaults.burst).max(1),
        failure_threshold: raw
            .limits
            .failure_threshold
            .unwrap_or(defaults.failure_threshold)
            .max(1),
        cool_down: raw
            .limits
            .cool_down_seconds
            .map(std::time::Duration::from_secs)
            .unwrap_or(defaults.cool_down),
    };
    let mail = compile_mail(raw, base, &data_dir, secrets, &mut p);
    let escalations = compile_escalations(&raw.escalations, &mut p);
    let console = compile_console(
        &raw.console,
        raw.http.public_url.is_some().then_some(&*http_public_url),
        &mut p,
    );
    Settings {
        source: path.to_owned(),
        practices_dir: raw
            .practices_dir
            .as_deref()
            .map(|d| resolve_path(base, d))
            .unwrap_or_else(|| base.join("practices")),
        playbooks_dir: raw
            .playbooks_dir
            .as_deref()
            .map(|d| resolve_path(base, d))
            .unwrap_or_else(|| project.join("playbooks")),
        data_dir,
        database_url,
        artifacts_retention_days: raw.artifacts_retention_days.unwrap_or(30),
        log,
        http_listen,
        http_public_url,
        webdriver,
        mail,
        limits,
        escalations,
        console,
        practices: Vec::new(),
    }
}

fn compile_console(raw: &raw::RawConsole, public_url: Option<&str>, p: &mut Problems<'_>) -> ConsoleSettings {
    let listen = raw.listen.as_deref().unwrap_or("127.0.0.1:8623");
    let listen = listen.parse::<SocketAddr>().unwrap_or_else(|_| {
        p.add(
            "console.listen",
            format!("`{listen}` is not an address such as 127.0.0.1:8623"),
        );
        SocketAddr::from(([127, 0, 0, 1], 8623))
    });
    let mut at_least_one = |key: &str, value: Option<u32>, default: u32| match value {
        Some(0) => {
            p.add(key, "must be at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let minutes = |m: u32| std::time::Duration::from_secs(u64::from(m) * 60);
    let ack_hours = at_least_one("console.ack_link_hours", raw.ack_link_hours, 72);
    let session_idle = minutes(at_least_one(
        "console.session_idle_minutes",
        raw.session_idle_minutes,
        30,
    ));
    let session_max = minutes(60 * at_least_one("console.session_max_hours", raw.session_max_hours, 12));
    let lockout_failures = at_least_one("console.lockout_failures", raw.lockout_failures, 5);
    let lockout = minutes(at_least_one("console.lockout_minutes", raw.lockout_minutes, 15));
    let api_max_request_bytes =
        at_least_one("console.api_max_request_mb", raw.api_max_request_mb, 10) as usize * 1024 * 1024;
    let mut trusted_proxies = Vec::new();
    for (i, proxy) in raw.trusted_proxies.iter().enumerate() {
        let parsed = proxy
            .parse::<ipnet::IpNet>()
            .or_else(|_| proxy.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => p.add(
                format!("console.trusted_proxies[{i}]"),
                format!("`{proxy}` is not an IP address or network such as 10.0.0.0/8"),
            ),
        }
    }
    ConsoleSettings {
        listen,
        public_url: public_url.map_or_else(|| format!("http://{listen}"), str::to_owned),
        ack_link_valid: minutes(60 * ack_hours),
        trusted_proxies,
        session_idle,
        session_max,
        lockout_failures,
        lockout,
        api_max_request_bytes,
    }
}

fn compile_mail(raw: &RawDaemon, base: &Path, data_dir: &Path, secrets: Secrets, p: &mut Problems<'_>) -> MailSettings {
    let from = raw.mail.from.clone().unwrap_or_else(|| "precert@localhost".into());
    if let Err(e) = check_email(&from) {
        p.add("mail.from", e);
    }
    let transport = match raw.mail.transport.as_deref() {
        None | Some("file") => {
            if raw.mail.smtp.is_some() {
                p.add(
                    "mail.smtp",
                    "is set but mail.transport is `file`; set mail.transport = \"smtp\" to use it",
                );
            }
            MailTransport::File {
                dir: raw
                    .mail
                    .dir
                    .as_deref()
                    .map(|d| resolve_path(base, d))
                    .unwrap_or_else(|| data_dir.join("mail")),
            }
        }
        Some("smtp") => {
            let default = raw::RawSmtp::default();
            let smtp = raw.mail.smtp.as_ref().unwrap_or_else(|| {
                p.add("mail.smtp", "is required when mail.transport = \"smtp\"");
                &default
            });
            let host = p
                .required("mail.smtp.host", &smtp.host)
                .unwrap_or("localhost")
                .to_owned();
            let tls = match smtp.tls.as_deref() {
                None | Some("starttls") => SmtpTls::StartTls,
                Some("implicit") => SmtpTls::Implicit,
                Some("none") => SmtpTls::None,
                Some(o) => {
                    p.add("mail.smtp.tls", format!("`{o}` is not one of starttls, implicit, none"));
                    SmtpTls::StartTls
                }
            };
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if tls == SmtpTls::None && !loopback && smtp.allow_plaintext != Some(true) {
                p.add(
                    "mail.smtp.tls",
                    format!("plain SMTP to {host} would send mail and password unencrypted; use starttls or implicit, or set allow_plaintext = true"),
                );
            }
            let port = smtp.port.unwrap_or(match tls {
                SmtpTls::StartTls => 587,
                SmtpTls::Implicit => 465,
                SmtpTls::None => 25,
            });
            let password = smtp
                .password
                .as_ref()
                .and_then(|s| compile_secret(s, base, secrets, "mail.smtp.password", p));
            if password.is_some() && smtp.username.is_none() {
                p.add("mail.smtp.username", "is required when a password is set");
            }
            let ca_file = smtp.ca_file.as_deref().map(|f| resolve_path(base, f));
            if let Some(path) = &ca_file {
                if let Err(e) = crate::mail::read_ca_file(path) {
                    p.add("mail.smtp.ca_file", e);
                }
                if tls == SmtpTls::None {
                    p.add(
                        "mail.smtp.ca_file",
                        "is set but mail.smtp.tls is `none`; it is used with starttls or implicit only",
                    );
                }
            }
            MailTransport::Smtp {
                host,
                port,
                tls,
                username: smtp.username.clone(),
                password,
                ca_file,
            }
        }
        Some(o) => {
            p.add("mail.transport", format!("`{o}` is not one of file, smtp"));
            MailTransport::File {
                dir: data_dir.join("mail"),
            }
        }
    };
    for (i, a) in raw.mail.operations.iter().enumerate() {
        if let Err(e) = check_email(a) {
            p.add(format!("mail.operations[{i}]"), e);
        }
    }
    MailSettings {
        from,
        transport,
        operations: raw.mail.operations.clone(),
    }
}

fn compile_secret(
    raw: &secret::RawSecret,
    base: &Path,
    secrets: Secrets,
    key: &str,
    p: &mut Problems<'_>,
) -> Option<Secret> {
    let reference = match raw.compile(base) {
        Ok(r) => r,
        Err(e) => {
            p.add(key, e);
            return None;
        }
    };
    match secrets {
        Secrets::Skip => Some(Secret::unresolved(reference)),
        Secrets::Resolve => match reference.resolve() {
            Ok(v) => Some(Secret::resolved(reference, v)),
            Err(e) => {
                p.add(key, e);
                None
            }
        },
    }
}

/// A light check for a mail address: the SMTP layer does the strict one.
pub fn check_email(addr: &str) -> Result<(), String> {
    let ok = match addr.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !addr
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{addr}` is not an e-mail address"))
    }
}

/// An identifier for practices, locations and payers: lower-case letters,
/// digits and `-`, starting with a letter.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not an id: use lower-case letters, digits and `-`, starting with a letter"
        ))
    }
}

fn load_practices(dir: &Path, secrets: Secrets, errors: &mut Vec<ConfigError>) -> Vec<Practice> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError {
                file: dir.to_owned(),
                key: String::new(),
                message: format!("cannot read the practices directory: {e}"),
            });
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    if files.is_empty() {
        errors.push(ConfigError {
            file: dir.to_owned(),
            key: String::new(),
            message: "no practice files (*.toml) found; add one per practice".into(),
        });
    }
    let mut practices: Vec<Practice> = Vec::new();
    for file in files {
        let before = errors.len();
        let (raw, problems) = parse_file::<RawPractice>(&file, None);
        errors.extend(problems);
        let Some(raw) = raw else { continue };
        let practice = compile_practice(&raw, &file, secrets, errors);
        if let Some(other) = practices.iter().find(|o| o.id == practice.id) {
            errors.push(ConfigError {
                file: file.clone(),
                key: "id".into(),
                message: format!("`{}` is already the id of {}", practice.id, other.source.display()),
            });
        }
        if errors.len() == before {
            practices.push(practice);
        }
    }
    practices
}

fn compile_practice(raw: &RawPractice, file: &Path, secrets: Secrets, errors: &mut Vec<ConfigError>) -> Practice {
    let mut p = Problems { file, out: errors };
    let base = file.parent().unwrap_or(Path::new("."));
    let id = p.required("id", &raw.id).unwrap_or_default().to_owned();
    if !id.is_empty() {
        if let Err(e) = check_id(&id) {
            p.add("id", e);
        } else if file.file_stem().is_some_and(|s| s != id.as_str()) {
            p.add(
                "id",
                format!("`{id}` differs from the file name; name the file {id}.toml"),
            );
        }
    }
    let name = p.required("name", &raw.name).unwrap_or_default().to_owned();
    let npi = p
        .required("npi", &raw.npi)
        .and_then(|v| Npi::parse(v).map_err(|e| p.add("npi", e)).ok());
    let tax_id = p
        .required("tax_id", &raw.tax_id)
        .and_then(|v| TaxId::parse(v).map_err(|e| p.add("tax_id", e)).ok());
    let timezone = p
        .required("timezone", &raw.timezone)
        .and_then(|v| v.parse::<Tz>().map_err(|e| p.add("timezone", e.to_string())).ok());
    let mut locations: Vec<Location> = Vec::new();
    for (i, l) in raw.locations.iter().enumerate() {
        let k = |f: &str| format!("locations[{i}].{f}");
        let lid = p.required(&k("id"), &l.id).unwrap_or_default().to_owned();
        if !lid.is_empty() {
            if let Err(e) = check_id(&lid) {
                p.add(k("id"), e);
            }
            if locations.iter().any(|o| o.id == lid) {
                p.add(k("id"), format!("location `{lid}` is listed twice"));
            }
        }
        let lname = p.required(&k("name"), &l.name).unwrap_or_default().to_owned();
        let lnpi = l
            .npi
            .as_deref()
            .and_then(|v| Npi::parse(v).map_err(|e| p.add(k("npi"), e)).ok());
        locations.push(Location {
            id: lid,
            name: lname,
            address: l.address.clone(),
            npi: lnpi,
        });
    }
    if raw.locations.is_empty() {
        p.add(
            "locations",
            "list at least one service location ([[locations]] with id and name)",
        );
    }
    let contacts = match &raw.contacts {
        None => {
            p.add(
                "contacts",
                "is required: supervisors and operations need e-mail addresses for escalations",
            );
            Contacts::default()
        }
        Some(c) => {
            for (list, key) in [
                (&c.supervisors, "supervisors"),
                (&c.managers, "managers"),
                (&c.operations, "operations"),
            ] {
                for (i, a) in list.iter().enumerate() {
                    if let Err(e) = check_email(a) {
                        p.add(format!("contacts.{key}[{i}]"), e);
                    }
                }
            }
            if c.supervisors.is_empty() {
                p.add("contacts.supervisors", "name at least one supervisor's e-mail address");
            }
            if c.operations.is_empty() {
                p.add(
                    "contacts.operations",
                    "name at least one operations contact's e-mail address",
                );
            }
            Contacts {
                supervisors: c.supervisors.clone(),
                managers: c.managers.clone(),
                operations: c.operations.clone(),
            }
        }
    };
    let mut payers = BTreeMap::new();
    for (key, payer) in &raw.payers {
        if let Err(e) = check_id(key) {
            p.add(format!("payers.{key}"), e);
        }
        let playbook = payer.playbook.clone().unwrap_or_else(|| key.clone());
        let mut resolved = BTreeMap::new();
        for (name, s) in &payer.secrets {
            if let Some(secret) = compile_secret(s, base, secrets, &format!("payers.{key}.secrets.{name}"), &mut p) {
                resolved.insert(name.clone(), secret);
            }
        }
        for (name, value) in &payer.account {
            if value.trim().is_empty() {
                p.add(format!("payers.{key}.account.{name}"), "is empty");
            }
        }
        if let Some(url) = &payer.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.add(
                    format!("payers.{key}.base_url"),
                    format!("`{url}` is not an http(s) URL"),
                );
            }
        }
        payers.insert(
            key.clone(),
            PayerBinding {
                playbook,
                base_url: payer.base_url.clone(),
                account: payer.account.clone(),
                secrets: resolved,
            },
        );
    }
    if raw.payers.is_empty() {
        p.add(
            "payers",
            "name at least one payer ([payers.ID]) this practice submits to",
        );
    }
    let mut schedules: BTreeMap<Job, String> = Job::ALL.iter().map(|j| (*j, j.default_schedule().to_owned())).collect();
    let escalations = compile_escalations(&raw.escalations, &mut p);
    let csv = compile_csv(&raw.csv, &mut p);
    for (name, expr) in &raw.schedules {
        let key = format!("schedules.{name}");
        match Job::ALL.iter().find(|j| j.as_str() == name) {
            None => p.add(
                key,
                format!(
                    "`{name}` is not a job; jobs are {}",
                    Job::ALL.map(Job::as_str).join(", ")
                ),
            ),
            Some(job) => match check_cron(expr) {
                Ok(()) => {
                    schedules.insert(*job, expr.trim().to_owned());
                }
                Err(e) => p.add(key, e),
            },
        }
    }
    let intake = compile_intake(raw, base, &mut p);
    let api = compile_api(raw, base, secrets, &mut p);
    Practice {
        source: file.to_owned(),
        id,
        name,
        npi: npi.unwrap_or_else(|| Npi::parse("1234567893").expect("a valid placeholder NPI")),
        tax_id: tax_id.unwrap_or_else(|| TaxId::parse("000000000").expect("a valid placeholder tax ID")),
        timezone: timezone.unwrap_or(Tz::UTC),
        enabled: raw.enabled.unwrap_or(true),
        locations,
        contacts,
        payers,
        schedules,
        escalations,
        csv,
        intake,
        api,
    }
}

fn compile_csv(raw: &raw::RawCsv, p: &mut Problems<'_>) -> CsvFormat {
    let mut out = CsvFormat::default();
    if let Some(d) = &raw.delimiter {
        match d.as_str() {
            "\\t" | "\t" | "tab" => out.delimiter = b'\t',
            s if s.len() == 1 && s.is_ascii() && !matches!(s, "\"" | "\n" | "\r") => out.delimiter = s.as_bytes()[0],
            s => p.add(
                "csv.delimiter",
                format!(
                    "`{s}` is not one character (e.g. \",\", \";\", \"|\", \"tab\"); quotes and line ends cannot be"
                ),
            ),
        }
    }
    let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
    for (theirs, ours) in &raw.columns {
        let key = format!("csv.columns.{theirs}");
        let ours = ours.trim();
        if !crate::intake::CSV_COLUMNS.contains(&ours) {
            let hint = crate::config::unknown::closest(ours, crate::intake::CSV_COLUMNS)
                .map(|c| format!("did you mean `{c}`?"))
                .unwrap_or_else(|| format!("the columns are {}", crate::intake::CSV_COLUMNS.join(", ")));
            p.add(key, format!("`{ours}` is not a precert column; {hint}"));
            continue;
        }
        if let Some(first) = targets.insert(ours, theirs) {
            p.add(key, format!("`{ours}` is already the column `{first}` maps to"));
            continue;
        }
        out.columns.insert(theirs.trim().to_ascii_lowercase(), ours.to_owned());
    }
    out
}

fn compile_intake(raw: &RawPractice, base: &Path, p: &mut Problems<'_>) -> IntakeConfig {
    let dir = raw.intake.dir.as_deref().map(str::trim).and_then(|d| {
        if d.is_empty() {
            p.add("intake.dir", "is empty");
            None
        } else {
            Some(base.join(d))
        }
    });
    let scan = match raw.intake.scan_seconds {
        Some(0) => {
            p.add("intake.scan_seconds", "must be at least 1");
            10
        }
        Some(n) => n,
        None => 10,
    };
    IntakeConfig {
        dir,
        scan: std::time::Duration::from_secs(u64::from(scan)),
    }
}

fn compile_api(raw: &RawPractice, base: &Path, secrets: Secrets, p: &mut Problems<'_>) -> ApiConfig {
    let a = &raw.api;
    let retry = match a.webhook_retry_seconds {
        Some(0) => {
            p.add("api.webhook_retry_seconds", "must be at least 1");
            30
        }
        Some(n) => n,
        None => 30,
    };
    let webhook = match (&a.webhook_url, &a.webhook_secret) {
        (None, None) => None,
        (None, Some(_)) => {
            p.add("api.webhook_url", "is required with api.webhook_secret");
            None
        }
        (Some(_), None) => {
            p.add(
                "api.webhook_secret",
                "is required with api.webhook_url: deliveries are signed (e.g. { env = \"PRECERT_WEBHOOK_SECRET\" })",
            );
            None
        }
        (Some(url), Some(secret)) => {
            let url = url.trim();
            let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
                .iter()
                .any(|l| {
                    url.strip_prefix(l)
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
                });
            let ok = url.starts_with("https://") || loopback;
            if !ok {
                p.add(
                    "api.webhook_url",
                    format!("`{url}` is not an https URL (plain http only to 127.0.0.1, localhost or [::1])"),
                );
            }
            let secret = compile_secret(secret, base, secrets, "api.webhook_secret", p);
            match (ok, secret) {
                (true, Some(secret)) => Some(Webhook {
                    url: url.to_owned(),
                    secret,
                    retry_first: std::time::Duration::from_secs(u64::from(retry)),
                }),
                _ => None,
            }
        }
    };
    ApiConfig { webhook }
}

fn compile_escalations(raw: &RawEscalations, p: &mut Problems<'_>) -> EscalationConfig {
    let patient_details = raw.patient_details.as_deref().and_then(|v| {
        v.parse::<PatientDetails>()
            .map_err(|e| p.add("escalations.patient_details", e))
            .ok()
    });
    if let Some(link) = &raw.case_link {
        if !(link.starts_with("http://") || link.starts_with("https://")) {
            p.add("escalations.case_link", format!("`{link}` is not an http(s) URL"));
        }
    }
    for (k, m) in raw.rules.check() {
        p.add(format!("escalations.rules.{k}"), m);
    }
    for (table, layers) in [
        ("payers", &raw.payers),
        ("states", &raw.states),
        ("plan_types", &raw.plan_types),
    ] {
        for (name, layer) in layers {
            if table == "states" && crate::case::UsState::parse(name).is_err() {
                p.add(
                    format!("escalations.states.{name}"),
                    format!("`{name}` is not a US state code"),
                );
            }
            if table == "plan_types" {
                match name.parse::<crate::case::PlanType>() {
                    Ok(t) if t.as_str() == name => {}
                    Ok(t) => p.add(
                        format!("escalations.plan_types.{name}"),
                        format!("write `{}` (the plan type's name)", t.as_str()),
                    ),
                    Err(e) => p.add(format!("escalations.plan_types.{name}"), e),
                }
            }
            for (k, m) in layer.check() {
                p.add(format!("escalations.{table}.{name}.{k}"), m);
            }
        }
    }
    EscalationConfig {
        rules: raw.rules.clone(),
        plan_types: raw.plan_types.clone(),
        states: raw.states.clone(),
        payers: raw.payers.clone(),
        patient_details,
        case_link: raw.case_link.clone(),
    }
}

/// Checks a cron expression: standard 5-field crontab (minute first; day of
/// month OR day of week), or 6/7 fields with seconds first and a year last.
pub fn check_cron(expr: &str) -> Result<(), String> {
    // The same parser the daemon runs with: one source of truth.
    crate::schedule::Schedule::parse(expr, Tz::UTC)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A practice the daemon leaves out because its file does not check.
#[derive(Clone, Debug)]
pub struct DisabledPractice {
    /// The practice's id as its file names it (the file's stem).
    pub id: String,
    pub file: PathBuf,
    pub problems: Vec<ConfigError>,
    /// The practice's `contacts.operations` as far as its file can be read
    /// (valid addresses only); empty when it cannot, and the daemon's
    /// `[mail] operations` hear of it instead.
    pub operations: Vec<String>,
}

/// A disabled practice's operations addresses, read as leniently as its
/// file allows: TOML that parses, a `contacts.operations` list, each entry
/// a valid address.
fn readable_operations(file: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    use toml::de::{DeTable, DeValue};
    let Ok(doc) = DeTable::parse(&text) else {
        return Vec::new();
    };
    let doc = doc.into_inner();
    fn field<'a>(t: &DeTable<'a>, name: &str) -> Option<DeValue<'a>> {
        t.iter()
            .find(|(k, _)| k.get_ref().as_ref() as &str == name)
            .map(|(_, v)| v.get_ref().clone())
    }
    let Some(DeValue::Table(contacts)) = field(&doc, "contacts") else {
        return Vec::new();
    };
    let Some(DeValue::Array(list)) = field(&contacts, "operations") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|v| match v.get_ref() {
            DeValue::String(a) if check_email(a).is_ok() => Some(a.to_string()),
            _ => None,
        })
        .collect()
}

/// The configuration as the daemon takes it: a practice whose file, secrets
/// or bindings do not check is left out alone (`disabled`) while every
/// other practice runs; a problem in `precert.toml` itself, or with the
/// practices directory as a whole, refuses the configuration as `load` does.
/// `precert check` still reports every problem through `load`.
pub fn load_isolated(path: &Path, secrets: Secrets) -> Result<(Settings, Vec<DisabledPractice>), ConfigErrors> {
    let Parts {
        daemon,
        mut errors,
        practices_dir,
        practices,
        practice_errors,
    } = read_all(path, secrets);
    let mut disabled: Vec<DisabledPractice> = Vec::new();
    for e in practice_errors {
        if e.file == practices_dir {
            errors.push(e);
            continue;
        }
        match disabled.iter_mut().find(|d| d.file == e.file) {
            Some(d) => d.problems.push(e),
            None => disabled.push(DisabledPractice {
                id: e
                    .file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                operations: readable_operations(&e.file),
                file: e.file.clone(),
                problems: vec![e],
            }),
        }
    }
    match daemon {
        Some(mut d) if errors.is_empty() => {
            d.practices = practices;
            Ok((d, disabled))
        }
        _ => Err(ConfigErrors(errors)),
    }
}
