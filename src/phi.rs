//! Protected health information that must not leak into logs.
//!
//! `MemberId` and `PersonName` mask themselves in `Display` and `Debug`, so a
//! stray `%case.patient.member_id` in a log line shows `****0301`, not the ID.
//! Code that must send the real value (a portal form, a PAS bundle, the
//! operator's own terminal) calls `expose()`, which is easy to grep for.
//!
//! Masking can be turned off for a debugging session (`log.mask_phi = false`);
//! it is a process-wide switch because log lines are formatted far from the
//! place that read the configuration.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

static REVEAL_IN_LOGS: AtomicBool = AtomicBool::new(false);

/// Shows PHI unmasked in `Display`/`Debug` output from now on. Only the
/// logging setup calls this, and only when the configuration asks for it.
pub fn reveal_in_logs(reveal: bool) {
    REVEAL_IN_LOGS.store(reveal, Ordering::Relaxed);
}

fn revealed() -> bool {
    REVEAL_IN_LOGS.load(Ordering::Relaxed)
}

/// Masks all but the last four characters: `SBX100200301` → `********0301`.
/// Values of four characters or fewer are masked whole.
pub fn mask_id(value: &str) -> String {
    let n = value.chars().count();
    if n <= 4 {
        return "*".repeat(n.max(4));
    }
    let tail: String = value.chars().skip(n - 4).collect();
    format!("{}{}", "*".repeat(n - 4), tail)
}

/// A payer's member ID. Payer-specific: required, never guessed at.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberId(String);

impl MemberId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.len() > 80 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("must be at most 80 characters with no spaces or control characters".into());
        }
        Ok(MemberId(s.to_owned()))
    }

    /// The real member ID, for the payer and the operator's own screen.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn masked(&self) -> String {
        mask_id(&self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if revealed() {
            f.write_str(&self.0)
        } else {
            f.write_str(&self.masked())
        }
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

impl TryFrom<String> for MemberId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        MemberId::parse(&s)
    }
}

impl From<MemberId> for String {
    fn from(m: MemberId) -> String {
        m.0
    }
}

/// A patient's name. Masked to initials in logs (`A. M.`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonName {
    given: String,
    family: String,
}

impl PersonName {
    pub fn parse(given: &str, family: &str) -> Result<Self, (&'static str, String)> {
        let check = |field: &'static str, v: &str| -> Result<String, (&'static str, String)> {
            let v = v.trim();
            if v.is_empty() {
                Err((field, "is empty".into()))
            } else if v.chars().count() > 100 || v.chars().any(char::is_control) {
                Err((
                    field,
                    "must be at most 100 characters with no control characters".into(),
                ))
            } else {
                Ok(v.to_owned())
            }
        };
        Ok(PersonName {
            given: check("first_name", given)?,
            family: check("last_name", family)?,
        })
    }

    pub fn expose_given(&self) -> &str {
        &self.given
    }

    pub fn expose_family(&self) -> &str {
        &self.family
    }

    /// `Given Family`, unmasked.
    pub fn expose_full(&self) -> String {
        format!("{} {}", self.given, self.family)
    }

    /// Initials, the minimum necessary to tell cases apart on a list.
    pub fn initials(&self) -> String {
        let first = |s: &str| {
            s.chars()
                .next()
                .map(|c| c.to_uppercase().to_string())
                .unwrap_or_default()
        };
        format!("{}. {}.", first(&self.given), first(&self.family))
    }
}

impl fmt::Display for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if revealed() {
            f.write_str(&self.expose_full())
        } else {
            f.write_str(&self.initials())
        }
    }
}

impl fmt::Debug for PersonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonName({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_and_names_are_masked_in_debug_and_display() {
        let m = MemberId::parse("SBX100200301").unwrap();
        assert_eq!(m.to_string(), "********0301");
        assert_eq!(format!("{m:?}"), "MemberId(********0301)");
        assert_eq!(m.expose(), "SBX100200301");
        assert_eq!(mask_id("abc"), "****");
        let n = PersonName::parse("avery", "Marsh").unwrap();
        assert_eq!(n.to_string(), "A. M.");
        assert!(!format!("{n:?}").contains("Marsh"));
    }
}
