//! Money: what a request is expected to be worth, in US dollars, held as
//! whole cents (never a float, so sums are exact).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::codes::quoted;

/// An amount of US dollars in whole cents, never negative: `1250.00` is
/// 125 000 cents. Built by [`Usd::parse_expected`] (what a practice wrote)
/// or [`Usd::from_cents`] (what the ledger stored); written `1250.00`.
///
/// Not PHI, but a practice's business all the same: `Debug` does not show
/// it, so logging a case does not log what it is worth.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

/// The most one request is taken to be worth: above the list price of any
/// single service a practice asks a payer to approve (the dearest gene
/// therapies list near $4 million), so a larger figure is a typo — a value
/// in cents written in the dollars column, a digit too many.
pub const MAX_EXPECTED: Usd = Usd(10_000_000 * 100);

const HOW: &str = "write dollars and cents like 1250.00 (digits, at most 2 decimals, no thousands separators)";

impl Usd {
    pub const ZERO: Usd = Usd(0);

    /// The amount of `cents` cents; None when negative.
    pub fn from_cents(cents: i64) -> Option<Usd> {
        (cents >= 0).then_some(Usd(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// The sum, held at `i64::MAX` cents (ninety quadrillion dollars): a
    /// sum of expected amounts, each at most [`MAX_EXPECTED`], cannot reach
    /// it before nine hundred million requests.
    pub fn saturating_add(self, other: Usd) -> Usd {
        Usd(self.0.saturating_add(other.0))
    }

    /// An expected amount as a practice writes it: `1250`, `1250.5`,
    /// `1250.00`, optionally after a `$`. Refused: negative, more than two
    /// decimals, anything but digits and one point, more than
    /// [`MAX_EXPECTED`].
    pub fn parse_expected(s: &str) -> Result<Usd, String> {
        let amount = parse(s)?;
        if amount > MAX_EXPECTED {
            return Err(format!(
                "{} is more than {MAX_EXPECTED}, the most one request is taken to be worth; check the figure",
                quoted(s.trim())
            ));
        }
        Ok(amount)
    }

    /// `$1,250.00`: the amount as people read it.
    pub fn dollars(self) -> String {
        let whole = (self.0 / 100).to_string();
        let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        format!("${grouped}.{:02}", self.0 % 100)
    }
}

/// A decimal amount of dollars with at most two decimals, of any size that
/// fits.
fn parse(s: &str) -> Result<Usd, String> {
    let t = s.trim();
    let unsigned = t.strip_prefix('-').unwrap_or(t);
    let bare = unsigned.strip_prefix('$').unwrap_or(unsigned).trim_start();
    let (whole, fraction) = bare.split_once('.').unwrap_or((bare, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let number = digits(whole) && (fraction.is_empty() && !bare.ends_with('.') || digits(fraction));
    if !number {
        return Err(format!("{} is not an amount in US dollars; {HOW}", quoted(t)));
    }
    if unsigned.len() != t.len() {
        return Err(format!("{} is negative; an expected amount is 0 or more", quoted(t)));
    }
    if fraction.len() > 2 {
        return Err(format!("{} has more than 2 decimals; {HOW}", quoted(t)));
    }
    let too_large = || format!("{} is too large an amount; check the figure", quoted(t));
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    whole
        .checked_mul(100)
        .and_then(|c| c.checked_add(cents))
        .map(Usd)
        .ok_or_else(too_large)
}

impl fmt::Display for Usd {
    /// `1250.00`: how CSV and JSON write it, and intake reads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl fmt::Debug for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Usd(…)")
    }
}

/// As its `Display`: a JSON string, exact where a JSON number is a float.
impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What `Serialize` wrote (the ledger's own JSON, validated when it came
/// in).
impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An amount as a record holds it, before it is checked: a JSON string, or
/// a JSON number written back as its shortest exact decimal (`1250.1` for
/// `1250.10`; `12.345` stays `12.345` and is refused for its decimals).
/// Null is no amount.
pub(crate) fn deserialize_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Raw;
    impl serde::de::Visitor<'_> for Raw {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an amount in US dollars, like \"1250.00\"")
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cents(s: &str) -> Result<i64, String> {
        Usd::parse_expected(s).map(Usd::cents)
    }

    #[test]
    fn amounts_are_read_exactly_as_cents() {
        assert_eq!(cents("1250.00"), Ok(125_000));
        assert_eq!(cents("1250"), Ok(125_000));
        assert_eq!(cents(" 1250.5 "), Ok(125_050));
        assert_eq!(cents("$0.07"), Ok(7));
        assert_eq!(cents("0"), Ok(0));
        assert_eq!(cents("10000000.00"), Ok(1_000_000_000));
        assert_eq!(Usd::from_cents(125_050).unwrap().to_string(), "1250.50");
        assert_eq!(Usd::from_cents(7).unwrap().to_string(), "0.07");
        assert_eq!(Usd::from_cents(123_456_789).unwrap().dollars(), "$1,234,567.89");
        assert_eq!(Usd::from_cents(99_900).unwrap().dollars(), "$999.00");
        assert_eq!(Usd::from_cents(-1), None);
    }

    #[test]
    fn bad_amounts_say_what_is_wrong() {
        let why = |s: &str| cents(s).unwrap_err();
        assert!(why("-5.00").contains("`-5.00` is negative"), "{}", why("-5.00"));
        assert!(why("12.345").contains("`12.345` has more than 2 decimals"));
        for s in ["abc", "1,250.00", "12.", ".5", "1e3", "", "1.2.3", "--5", "12 50"] {
            assert!(why(s).contains("is not an amount in US dollars"), "{s}: {}", why(s));
        }
        assert!(why("10000000.01").contains("is more than 10000000.00"));
        assert!(why("99999999999999999999999").contains("too large"));
    }

    #[test]
    fn debug_does_not_show_the_amount() {
        assert_eq!(format!("{:?}", Usd::from_cents(125_000)), "Some(Usd(…))");
    }
}
