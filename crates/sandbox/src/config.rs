//! The sandbox configuration: accounts, API clients, members and scenario rules.
//!
//! Loading is two-staged: the TOML is read into raw serde types that reject unknown
//! fields, then [`RawConfig::compile`] checks every entry and reports all problems at
//! once, each naming where it came from.

use std::collections::HashMap;
use std::path::Path;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::codes;
use crate::totp;

/// The shipped demo configuration; `SandboxConfig::default_demo` compiles exactly this.
pub const DEMO_TOML: &str = include_str!("../sandbox.toml");

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    payer: RawPayer,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    api_clients: Vec<RawApiClient>,
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    scenarios: Vec<RawScenario>,
    #[serde(default)]
    portal_v3: RawPortalV3,
}

/// The layout-v3 portal (`/v3/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortalV3 {
    #[serde(default = "default_v3_idle")]
    idle_timeout_seconds: u64,
}

impl Default for RawPortalV3 {
    fn default() -> Self {
        Self {
            idle_timeout_seconds: default_v3_idle(),
        }
    }
}

fn default_v3_idle() -> u64 {
    900
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayer {
    name: String,
    #[serde(default = "default_token_ttl")]
    token_ttl_seconds: u64,
    #[serde(default = "default_page_size")]
    worklist_page_size: usize,
    #[serde(default)]
    request_log_path: Option<String>,
}

fn default_token_ttl() -> u64 {
    3600
}

fn default_page_size() -> usize {
    25
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    username: String,
    password: String,
    totp_seed: String,
    provider_npi: String,
    provider_name: String,
    #[serde(default)]
    other_organisations: Vec<RawOrganisation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrganisation {
    name: String,
    npi: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiClient {
    client_id: String,
    client_secret: String,
    provider_npi: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    member_id: String,
    birth_date: NaiveDate,
    first_name: String,
    last_name: String,
    group_number: String,
    plan: String,
    coverage_start: NaiveDate,
    #[serde(default)]
    coverage_end: Option<NaiveDate>,
}

/// One rule as written; which fields are required depends on `outcome`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    member: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    /// What the CRD service answers for it: auth-needed, no-auth,
    /// conditional, satisfied or not-covered.
    #[serde(default)]
    crd: Option<String>,
    #[serde(default)]
    after_seconds: Option<u64>,
    #[serde(default)]
    information_requested: Option<String>,
    #[serde(default)]
    approve_after_information_seconds: Option<u64>,
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    reason_text: Option<String>,
    #[serde(default)]
    approved_units: Option<u32>,
}

/// A provider organisation's portal login.
#[derive(Debug, Clone)]
pub struct Account {
    pub username: String,
    pub password: String,
    /// Base32 TOTP seed (RFC 6238, SHA-1, 6 digits, 30 s step).
    pub totp_seed: String,
    pub provider_npi: String,
    pub provider_name: String,
    /// Further organisations this login may act for; the layout-v3 portal
    /// offers them beside its own in its organisation picker.
    pub other_organisations: Vec<Organisation>,
}

/// A provider organisation a portal login may act for.
#[derive(Debug, Clone)]
pub struct Organisation {
    pub name: String,
    pub npi: String,
}

impl Account {
    /// Every organisation the login may pick, its own first.
    pub fn organisations(&self) -> Vec<Organisation> {
        let own = Organisation {
            name: self.provider_name.clone(),
            npi: self.provider_npi.clone(),
        };
        std::iter::once(own)
            .chain(self.other_organisations.iter().cloned())
            .collect()
    }
}

/// An OAuth2 client of the PAS API, acting for one provider organisation.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub client_id: String,
    pub client_secret: String,
    pub provider_npi: String,
}

/// A health-plan member whose eligibility the portal and API check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub member_id: String,
    pub birth_date: NaiveDate,
    pub first_name: String,
    pub last_name: String,
    pub group_number: String,
    pub plan: String,
    pub coverage_start: NaiveDate,
    pub coverage_end: Option<NaiveDate>,
}

impl Member {
    /// Whether coverage is in force on `day`.
    pub fn is_active_on(&self, day: NaiveDate) -> bool {
        day >= self.coverage_start && self.coverage_end.is_none_or(|end| day <= end)
    }

    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// What a scenario rule does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approve in full `after_seconds` after submission (0 = in the submit response).
    Approve { after_seconds: u64 },
    /// Pend for information; approve `approve_after_seconds` after it arrives.
    Pend {
        information_requested: String,
        approve_after_seconds: u64,
    },
    /// Deny at once with a specific reason.
    Deny { reason_code: String, reason_text: String },
    /// Approve `approved_units` of the matching line at once.
    Partial { approved_units: u32 },
}

/// What the CRD service says about an order a rule matches (the CRD
/// guide's `pa-needed`, or that the service is not covered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdAnswer {
    AuthNeeded,
    NoAuth,
    Conditional,
    /// An authorization on file already covers it.
    Satisfied,
    NotCovered,
}

impl CrdAnswer {
    pub fn parse(s: &str) -> Option<CrdAnswer> {
        Some(match s {
            "auth-needed" => CrdAnswer::AuthNeeded,
            "no-auth" => CrdAnswer::NoAuth,
            "conditional" => CrdAnswer::Conditional,
            "satisfied" => CrdAnswer::Satisfied,
            "not-covered" => CrdAnswer::NotCovered,
            _ => return None,
        })
    }
}

/// A compiled scenario rule.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub code: Option<String>,
    pub member: Option<String>,
    pub description: String,
    /// What happens to a submitted request; `None`: a rule for the CRD
    /// service only (submitted requests stay In Review).
    pub outcome: Option<Outcome>,
    /// What the CRD service answers; `None`: no coverage information.
    pub crd: Option<CrdAnswer>,
}

/// A validated sandbox configuration.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub payer_name: String,
    pub token_ttl_seconds: u64,
    pub worklist_page_size: usize,
    /// When set, every handled HTTP request is appended here as one JSON line.
    pub request_log_path: Option<String>,
    pub accounts: Vec<Account>,
    pub api_clients: Vec<ApiClient>,
    pub members: Vec<Member>,
    pub scenarios: Vec<Scenario>,
    /// Layout-v3 portal sessions idle longer than this end (sandbox clock);
    /// the next page shows the sign-in form again.
    pub v3_idle_timeout_seconds: u64,
}

impl SandboxConfig {
    /// Parses and validates a TOML configuration.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.compile()
    }

    /// Reads, parses and validates a TOML configuration file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The built-in demo configuration (the shipped `crates/sandbox/sandbox.toml`).
    pub fn default_demo() -> Self {
        Self::from_toml_str(DEMO_TOML).expect("the shipped sandbox.toml is valid")
    }

    pub fn account(&self, username: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.username == username)
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.member_id == member_id)
    }
}

impl RawConfig {
    fn compile(self) -> Result<SandboxConfig, ConfigError> {
        let mut errors = Vec::new();
        let mut seen = HashMap::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let at = format!("accounts[{i}] ({})", a.username);
            if seen.insert(a.username.clone(), ()).is_some() {
                errors.push(format!("{at}: duplicate username"));
            }
            if totp::decode_seed(&a.totp_seed).is_none() {
                errors.push(format!("{at}: totp_seed is not valid base32"));
            }
            if let Err(e) = codes::check_npi(&a.provider_npi) {
                errors.push(format!("{at}: provider_npi: {e}"));
            }
            if a.password.is_empty() {
                errors.push(format!("{at}: password is empty"));
            }
            for (j, o) in a.other_organisations.iter().enumerate() {
                if let Err(e) = codes::check_npi(&o.npi) {
                    errors.push(format!("{at}: other_organisations[{j}].npi: {e}"));
                }
                if o.npi == a.provider_npi {
                    errors.push(format!(
                        "{at}: other_organisations[{j}] is the account's own organisation"
                    ));
                }
            }
        }
        for (i, c) in self.api_clients.iter().enumerate() {
            let at = format!("api_clients[{i}] ({})", c.client_id);
            if let Err(e) = codes::check_npi(&c.provider_npi) {
                errors.push(format!("{at}: provider_npi: {e}"));
            }
            if c.client_secret.is_empty() {
                errors.push(format!("{at}: client_secret is empty"));
            }
        }
        let mut member_ids = HashMap::new();
        for (i, m) in self.members.iter().enumerate() {
            let at = format!("members[{i}] ({})", m.member_id);
            if member_ids.insert(m.member_id.clone(), ()).is_some() {
                errors.push(format!("{at}: duplicate member_id"));
            }
            if m.coverage_end.is_some_and(|end| end < m.coverage_start) {
                errors.push(format!("{at}: coverage_end is before coverage_start"));
            }
        }
        let mut scenarios = Vec::new();
        for (i, s) in self.scenarios.into_iter().enumerate() {
            let at = format!("scenarios[{i}]");
            match compile_scenario(s) {
                Ok(s) => scenarios.push(s),
                Err(e) => errors.push(format!("{at}: {e}")),
            }
        }
        if self.portal_v3.idle_timeout_seconds == 0 {
            errors.push("portal_v3.idle_timeout_seconds must be at least 1".into());
        }
        if self.payer.worklist_page_size == 0 {
            errors.push("payer.worklist_page_size must be at least 1".into());
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(SandboxConfig {
            payer_name: self.payer.name,
            token_ttl_seconds: self.payer.token_ttl_seconds,
            worklist_page_size: self.payer.worklist_page_size,
            request_log_path: self.payer.request_log_path,
            accounts: self
                .accounts
                .into_iter()
                .map(|a| Account {
                    username: a.username,
                    password: a.password,
                    totp_seed: a.totp_seed,
                    provider_npi: a.provider_npi,
                    provider_name: a.provider_name,
                    other_organisations: a
                        .other_organisations
                        .into_iter()
                        .map(|o| Organisation {
                            name: o.name,
                            npi: o.npi,
                        })
                        .collect(),
                })
                .collect(),
            api_clients: self
                .api_clients
                .into_iter()
                .map(|c| ApiClient {
                    client_id: c.client_id,
                    client_secret: c.client_secret,
                    provider_npi: c.provider_npi,
                })
                .collect(),
            members: self
                .members
                .into_iter()
                .map(|m| Member {
                    member_id: m.member_id,
                    birth_date: m.birth_date,
                    first_name: m.first_name,
                    last_name: m.last_name,
                    group_number: m.group_number,
                    plan: m.plan,
                    coverage_start: m.coverage_start,
                    coverage_end: m.coverage_end,
                })
                .collect(),
            scenarios,
            v3_idle_timeout_seconds: self.portal_v3.idle_timeout_seconds,
        })
    }
}

fn compile_scenario(s: RawScenario) -> Result<Scenario, String> {
    if s.code.is_none() && s.member.is_none() {
        return Err("needs `code` or `member`".into());
    }
    if let Some(code) = &s.code {
        codes::check_procedure(code).map_err(|e| format!("code: {e}"))?;
    }
    let crd = match s.crd.as_deref() {
        None => None,
        Some(c) => Some(CrdAnswer::parse(c).ok_or_else(|| {
            format!("crd: unknown answer `{c}` (expected auth-needed, no-auth, conditional, satisfied or not-covered)")
        })?),
    };
    let Some(name) = s.outcome.clone() else {
        if crd.is_none() {
            return Err("needs `outcome`, `crd` or both".into());
        }
        return Ok(Scenario {
            description: s.description.unwrap_or_default(),
            code: s.code,
            member: s.member,
            outcome: None,
            crd,
        });
    };
    let missing = |field: &str| format!("outcome `{name}` needs `{field}`");
    let outcome = match name.as_str() {
        "approve" => Outcome::Approve {
            after_seconds: s.after_seconds.unwrap_or(0),
        },
        "pend" => Outcome::Pend {
            information_requested: s
                .information_requested
                .clone()
                .ok_or_else(|| missing("information_requested"))?,
            approve_after_seconds: s
                .approve_after_information_seconds
                .ok_or_else(|| missing("approve_after_information_seconds"))?,
        },
        "deny" => Outcome::Deny {
            reason_code: s.reason_code.clone().ok_or_else(|| missing("reason_code"))?,
            reason_text: s.reason_text.clone().ok_or_else(|| missing("reason_text"))?,
        },
        "partial" => Outcome::Partial {
            approved_units: s.approved_units.ok_or_else(|| missing("approved_units"))?,
        },
        other => {
            return Err(format!(
                "unknown outcome `{other}` (expected approve, pend, deny or partial)"
            ))
        }
    };
    Ok(Scenario {
        description: s.description.unwrap_or_default(),
        code: s.code,
        member: s.member,
        outcome: Some(outcome),
        crd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_demo_config_compiles() {
        let c = SandboxConfig::default_demo();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.members.len(), 6);
        assert_eq!(c.scenarios.len(), 6);
    }

    #[test]
    fn the_shipped_file_is_the_built_in_demo() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox.toml");
        let from_file = SandboxConfig::from_toml_file(path).unwrap();
        let demo = SandboxConfig::default_demo();
        assert_eq!(format!("{from_file:?}"), format!("{demo:?}"));
    }

    #[test]
    fn crd_answers_are_checked_and_a_rule_needs_an_outcome_or_one() {
        let text = r#"
            [payer]
            name = "X"
            [[scenarios]]
            code = "73560"
            crd = "maybe"
            [[scenarios]]
            code = "73721"
            [[scenarios]]
            code = "72148"
            crd = "no-auth"
        "#;
        let err = SandboxConfig::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains("scenarios[0]: crd: unknown answer `maybe`"), "{err}");
        assert!(err.contains("scenarios[1]: needs `outcome`, `crd` or both"), "{err}");
        assert!(!err.contains("scenarios[2]"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            [payer]
            name = "X"
            [[accounts]]
            username = "a"
            password = "p"
            totp_seed = "not base32 !"
            provider_npi = "1234567890"
            provider_name = "A"
            [[scenarios]]
            code = "73721"
            outcome = "deny"
        "#;
        let err = SandboxConfig::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains("totp_seed"), "{err}");
        assert!(err.contains("provider_npi"), "{err}");
        assert!(err.contains("reason_code"), "{err}");
    }
}
