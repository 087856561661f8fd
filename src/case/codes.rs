//! Identifiers and clinical codes, parsed at the edge.
//!
//! Each type can only be built through `parse`, so a value inside precert has
//! already passed its check. Errors are short reasons; the caller adds the
//! field name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value failed its check. The caller knows the field.
pub type Reason = String;

/// Characters of a refused value that a message shows; the rest is counted.
const SHOWN_CHARS: usize = 40;

/// A value as an error message shows it: in backticks, cut after 40
/// characters with its size (`` `AAAA…` (5242880 bytes) ``) so that a
/// multi-megabyte cell does not come back whole, and with control and
/// invisible formatting characters escaped (`\0`, `\u{200b}`) so that what
/// made the value wrong can be seen and nothing reaches the terminal raw.
/// Cuts between characters, never inside one.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(4 * SHOWN_CHARS) + 2);
    out.push('`');
    let mut chars = value.chars();
    for c in chars.by_ref().take(SHOWN_CHARS) {
        push_visible(&mut out, c);
    }
    if chars.next().is_some() {
        out.push_str(&format!("…` ({} bytes)", value.len()));
    } else {
        out.push('`');
    }
    out
}

/// Pushes `c`, escaped when it would be invisible or act on the terminal:
/// control characters, zero-width and bidirectional formatting characters
/// and the byte-order mark.
pub(crate) fn push_visible(out: &mut String, c: char) {
    let invisible = c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}');
    if invisible {
        out.extend(c.escape_debug());
    } else {
        out.push(c);
    }
}

/// A National Provider Identifier: ten digits, the last a Luhn check digit
/// computed over `80840` followed by the first nine (CMS NPI standard).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Npi(String);

impl Npi {
    pub fn parse(raw: &str) -> Result<Self, Reason> {
        let s = raw.trim();
        // Digits are ASCII, so once they are checked every byte is a digit
        // and no index below can fall inside a character.
        let digits: Option<[u8; 10]> = s
            .as_bytes()
            .try_into()
            .ok()
            .filter(|d: &[u8; 10]| d.iter().all(u8::is_ascii_digit));
        let Some(digits) = digits else {
            return Err(format!("{} is not an NPI: an NPI is exactly 10 digits", quoted(s)));
        };
        let expected = npi_check_digit(&digits[..9]);
        let actual = digits[9] - b'0';
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

/// The Luhn check digit over the prefix `80840` and nine NPI digits (ASCII).
fn npi_check_digit(first_nine: &[u8]) -> u8 {
    let digits = b"80840".iter().chain(first_nine).map(|b| u32::from(b - b'0'));
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
        match icd10_parts(&s) {
            Some((head, "")) => Ok(Icd10(head.to_owned())),
            Some((head, tail)) => Ok(Icd10(format!("{head}.{tail}"))),
            None => Err(format!(
                "{} is not an ICD-10-CM code: expected a letter, a digit, a letter or digit, then optionally `.` and 1-4 letters or digits (e.g. M17.11)",
                quoted(raw.trim())
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The category (`M17`) and the rest (`11`) of an upper-cased ICD-10-CM
/// code, dotted or not; None when it is not one. Works on characters, so any
/// text is safe to pass: a non-ASCII character is simply not a code character.
fn icd10_parts(s: &str) -> Option<(&str, &str)> {
    let (head, tail) = match s.split_once('.') {
        // A dot needs something after it (`M17.` is a typo, not `M17`).
        Some((_, "")) => return None,
        Some(parts) => parts,
        // Undotted: the category is the first three characters. Splitting
        // inside a character is refused by `split_at_checked`; such a
        // value is not a code anyway.
        None => s.split_at_checked(3).unwrap_or((s, "")),
    };
    let mut h = head.chars();
    let head_ok = matches!(
        (h.next(), h.next(), h.next(), h.next()),
        (Some(a), Some(b), Some(c), None)
            if a.is_ascii_uppercase() && b.is_ascii_digit() && c.is_ascii_alphanumeric()
    );
    let tail_ok = tail.len() <= 4 && tail.bytes().all(|b| b.is_ascii_alphanumeric());
    (head_ok && tail_ok).then_some((head, tail))
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
        // Five bytes, compared as bytes: a non-ASCII character's bytes are
        // neither digits nor letters, so it fails without any slicing.
        let system = match s.as_bytes() {
            [a, b, c, d, e] if [a, b, c, d].iter().all(|x| x.is_ascii_digit()) => {
                (e.is_ascii_digit() || matches!(e, b'F' | b'T')).then_some(CodeSystem::Cpt)
            }
            [a, rest @ ..] if rest.len() == 4 && a.is_ascii_uppercase() && rest.iter().all(u8::is_ascii_digit) => {
                Some(CodeSystem::Hcpcs)
            }
            _ => None,
        };
        match system {
            Some(system) => Ok(ProcedureCode { code: s, system }),
            None => Err(format!(
                "{} is neither a CPT code (5 digits, or 4 digits and F/T) nor a HCPCS Level II code (a letter and 4 digits)",
                quoted(raw.trim())
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
                "{} is not a modifier: expected two letters or digits",
                quoted(raw.trim())
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
        let s = raw.trim();
        // Only ASCII digits and dashes from here, so byte positions are
        // character positions and the split below is on a boundary.
        let ascii_ok = s.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        let digits: String = s.chars().filter(|c| *c != '-').collect();
        let dash_ok = match s.find('-') {
            None => true,
            Some(i) => i == 2 && s.matches('-').count() == 1,
        };
        match digits.split_at_checked(2) {
            Some((prefix, serial)) if ascii_ok && dash_ok && digits.len() == 9 => {
                Ok(TaxId(format!("{prefix}-{serial}")))
            }
            _ => Err(format!(
                "{} is not a tax ID: expected 9 digits, written 12-3456789 or 123456789",
                quoted(s)
            )),
        }
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
                "{} is not a US state or territory code (e.g. IL, WA, PR)",
                quoted(raw.trim())
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

    /// Every parser, fed text that is not ASCII at every position of a
    /// valid value, or a control character, or megabytes: an error, never a
    /// panic, and a message of bounded length.
    #[test]
    fn any_text_is_refused_without_panicking() {
        let valid = [
            "1234567893",
            "M17.11",
            "M2AX",
            "S72001A",
            "73721",
            "0275T",
            "E0601",
            "RT",
            "12-3456789",
            "123456789",
            "IL",
        ];
        let inserts = ["é", "🦀", "\0", "\u{200b}", "\u{301}", "ﬀ"];
        let mut inputs = vec![String::new(), "é".into(), "ééé".into(), "x".repeat(5 << 20)];
        for insert in inserts {
            inputs.push(insert.repeat((5 << 20) / insert.len()));
            for v in valid {
                for (i, _) in v.char_indices().chain([(v.len(), ' ')]) {
                    inputs.push(format!("{}{insert}{}", &v[..i], &v[i..]));
                }
            }
        }
        type Check = fn(&str) -> Result<(), Reason>;
        let parsers: [(&str, Check); 6] = [
            ("npi", |s| Npi::parse(s).map(drop)),
            ("icd10", |s| Icd10::parse(s).map(drop)),
            ("procedure", |s| ProcedureCode::parse(s).map(drop)),
            ("modifier", |s| Modifier::parse(s).map(drop)),
            ("tax id", |s| TaxId::parse(s).map(drop)),
            ("state", |s| UsState::parse(s).map(drop)),
        ];
        for input in &inputs {
            for (name, parse) in parsers {
                if let Err(reason) = parse(input) {
                    assert!(reason.len() < 600, "{name}: {} bytes of message", reason.len());
                    assert!(!reason.contains('\0'), "{name}: a raw NUL in {reason:?}");
                } else {
                    // Only ASCII can be a code; a combining mark or an
                    // emoji must never slip through.
                    assert!(input.trim().is_ascii(), "{name} accepted {input:?}");
                }
            }
        }
        // The value from the fault-injection run that used to panic.
        assert!(Icd10::parse("M2éX")
            .unwrap_err()
            .starts_with("`M2éX` is not an ICD-10-CM code"));
    }

    #[test]
    fn refused_values_are_shown_short_and_visible() {
        assert_eq!(quoted("M2éX"), "`M2éX`");
        assert_eq!(quoted("A\0B\u{1b}[2J\u{200b}"), "`A\\0B\\u{1b}[2J\\u{200b}`");
        let long = "é".repeat(5 << 20);
        assert_eq!(quoted(&long), format!("`{}…` ({} bytes)", "é".repeat(40), 10 << 20));
        assert_eq!(quoted(&"x".repeat(40)), format!("`{}`", "x".repeat(40)));
        let err = Npi::parse(&"9".repeat(5 << 20)).unwrap_err();
        assert!(err.starts_with("`9999"), "{err}");
        assert!(err.contains("…` (5242880 bytes) is not an NPI"), "{err}");
    }
}
