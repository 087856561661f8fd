//! Identifiers and clinical codes, parsed at the edge.
//!
//! Each type can only be built through `parse`, so a value inside precert has
//! already passed its check. Errors are short reasons; the caller adds the
//! field name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value failed its check. The caller knows the field.
pub type Reason = String;

/// A National Provider Identifier: ten digits, the last a Luhn check digit
/// computed over `80840` followed by the first nine (CMS NPI standard).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Npi(String);

impl Npi {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim();
        if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{s}` is not an NPI: an NPI is exactly 10 digits"));
        }
        let expected = npi_check_digit(&s[..9]);
        let actual = s.as_bytes()[9] - b'0';
        if expected != actual {
            return Err(format!(
                "`{s}` fails the NPI check digit (expected {expected}, found {actual}); check for a typo"
            ));
        }
        Ok(Npi(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Luhn check digit over the prefix `80840` and nine NPI digits.
fn npi_check_digit(first_nine: &str) -> u8 {
    let digits = "80840".bytes().chain(first_nine.bytes()).map(|b| u32::from(b - b'0'));
    // The check digit will sit to the right, so the rightmost payload digit is
    // the first to be doubled.
    let payload: Vec<u32> = digits.collect();
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// An ICD-10-CM diagnosis code, kept upper-case with its dot (`M17.11`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Icd10(String);

impl Icd10 {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim().to_ascii_uppercase();
        let (head, tail) = match s.split_once('.') {
            Some((h, t)) => (h.to_owned(), t.to_owned()),
            None if s.len() > 3 => (s[..3].to_owned(), s[3..].to_owned()),
            None => (s.clone(), String::new()),
        };
        let h = head.as_bytes();
        let head_ok =
            h.len() == 3 && h[0].is_ascii_uppercase() && h[1].is_ascii_digit() && h[2].is_ascii_alphanumeric();
        let tail_ok = tail.len() <= 4 && tail.bytes().all(|b| b.is_ascii_alphanumeric());
        let dot_without_tail = s.contains('.') && tail.is_empty();
        if !head_ok || !tail_ok || dot_without_tail {
            return Err(format!(
                "`{}` is not an ICD-10-CM code: expected a letter, a digit, a letter or digit, then optionally `.` and 1-4 letters or digits (e.g. M17.11)",
                raw.trim()
            ));
        }
        Ok(if tail.is_empty() {
            Icd10(head)
        } else {
            Icd10(format!("{head}.{tail}"))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A procedure code: CPT (Category I: five digits; II/III: four digits and
/// `F`/`T`) or HCPCS Level II (a letter and four digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProcedureCode {
    code: String,
    system: CodeSystem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSystem {
    Cpt,
    Hcpcs,
}

impl ProcedureCode {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim().to_ascii_uppercase();
        let b = s.as_bytes();
        let cpt = b.len() == 5
            && b[..4].iter().all(u8::is_ascii_digit)
            && (b[4].is_ascii_digit() || matches!(b[4], b'F' | b'T'));
        let hcpcs = b.len() == 5 && b[0].is_ascii_uppercase() && b[1..].iter().all(u8::is_ascii_digit);
        let system = if cpt {
            Some(CodeSystem::Cpt)
        } else if hcpcs {
            Some(CodeSystem::Hcpcs)
        } else {
            None
        };
        match system {
            Some(system) => Ok(ProcedureCode { code: s, system }),
            None => Err(format!(
                "`{}` is neither a CPT code (5 digits, or 4 digits and F/T) nor a HCPCS Level II code (a letter and 4 digits)",
                raw.trim()
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.code
    }

    pub fn system(&self) -> CodeSystem {
        self.system
    }
}

/// A two-character procedure modifier (`RT`, `59`, `GP`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Modifier(String);

impl Modifier {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim().to_ascii_uppercase();
        if s.len() == 2 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Modifier(s))
        } else {
            Err(format!(
                "`{}` is not a modifier: expected two letters or digits",
                raw.trim()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A US employer identification number, kept as `12-3456789`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TaxId(String);

impl TaxId {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let digits: String = raw.trim().chars().filter(|c| *c != '-').collect();
        let dash_ok = match raw.trim().find('-') {
            None => true,
            Some(i) => i == 2 && raw.trim().matches('-').count() == 1,
        };
        if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) || !dash_ok {
            return Err(format!(
                "`{}` is not a tax ID: expected 9 digits, written 12-3456789 or 123456789",
                raw.trim()
            ));
        }
        Ok(TaxId(format!("{}-{}", &digits[..2], &digits[2..])))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A two-letter US state or territory code.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UsState(String);

const STATES: &[&str] = &[
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA", "KS", "KY", "LA",
    "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "OH", "OK", "OR",
    "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA", "WV", "WI", "WY", "AS", "GU", "MP", "PR", "VI",
];

impl UsState {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim().to_ascii_uppercase();
        if STATES.contains(&s.as_str()) {
            Ok(UsState(s))
        } else {
            Err(format!(
                "`{}` is not a US state or territory code (e.g. IL, WA, PR)",
                raw.trim()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Implements `Display`, `TryFrom<String>` (for serde) and `From<T> for
/// String` for the string newtypes above.
macro_rules! string_newtype {
    ($($t:ty => $get:expr),* $(,)?) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let get: fn(&$t) -> &str = $get;
                f.write_str(get(self))
            }
        }
        impl TryFrom<String> for $t {
            type Error = Reason;
            fn try_from(s: String) -> Result<Self, Reason> {
                <$t>::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    )*};
}

string_newtype! {
    Npi => |v| &v.0,
    Icd10 => |v| &v.0,
    ProcedureCode => |v| &v.code,
    Modifier => |v| &v.0,
    TaxId => |v| &v.0,
    UsState => |v| &v.0,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npi_check_digit_follows_the_cms_standard() {
        // The worked example from the CMS NPI check-digit paper.
        assert!(Npi::parse("1234567893").is_ok());
        assert!(Npi::parse("1245319599").is_ok());
        assert!(Npi::parse("1679576722").is_ok());
        let err = Npi::parse("1234567890").unwrap_err();
        assert!(err.contains("check digit"), "{err}");
        assert!(Npi::parse("123456789").unwrap_err().contains("exactly 10 digits"));
        assert!(Npi::parse("12345678AB").is_err());
    }

    #[test]
    fn icd10_accepts_dotted_and_undotted_forms() {
        assert_eq!(Icd10::parse("m17.11").unwrap().as_str(), "M17.11");
        assert_eq!(Icd10::parse("C50911").unwrap().as_str(), "C50.911");
        assert_eq!(Icd10::parse("R51").unwrap().as_str(), "R51");
        assert_eq!(Icd10::parse("S72.001A").unwrap().as_str(), "S72.001A");
        for bad in ["", "M1", "17.11", "M17.", "M17.12345", "MM7.1"] {
            assert!(Icd10::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn procedure_codes_are_cpt_or_hcpcs() {
        assert_eq!(ProcedureCode::parse("73721").unwrap().system(), CodeSystem::Cpt);
        assert_eq!(ProcedureCode::parse("3008f").unwrap().as_str(), "3008F");
        assert_eq!(ProcedureCode::parse("0275T").unwrap().system(), CodeSystem::Cpt);
        assert_eq!(ProcedureCode::parse("E0601").unwrap().system(), CodeSystem::Hcpcs);
        for bad in ["7372", "737211", "EE601", "1234X", ""] {
            assert!(ProcedureCode::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn tax_ids_and_states() {
        assert_eq!(TaxId::parse("123456789").unwrap().as_str(), "12-3456789");
        assert_eq!(TaxId::parse("12-3456789").unwrap().as_str(), "12-3456789");
        assert!(TaxId::parse("123-456789").is_err());
        assert!(TaxId::parse("12345678").is_err());
        assert_eq!(UsState::parse("il").unwrap().as_str(), "IL");
        assert!(UsState::parse("XX").is_err());
        assert!(Modifier::parse("rt").is_ok());
        assert!(Modifier::parse("RTX").is_err());
    }
}
