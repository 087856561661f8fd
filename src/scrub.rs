//! Scrubbing text precert did not write before it is shown to people.
//!
//! PHI that precert holds as data masks itself by its type (`phi`). Text
//! from outside — a payer's denial reason or pend request, a portal's error
//! wording, a failure message quoting either — may repeat the patient in
//! any form: the member ID as imported or as the payer prints it, the name
//! as the payer spells it, the birth date. [`Scrubber::scrub`] masks what
//! such text can say about a person before it goes into mail or onto a
//! page:
//!
//! - **dates** in every common form (`04/12/1961`, `4/12/61`, `1961-04-12`,
//!   `April 12, 1961`, `12 Apr 1961`, `April 1961`, `Apr 12`), and whatever
//!   follows a birth-date label (`DOB`, `D.O.B.`, `date of birth`, `born`);
//! - **phone numbers** (toll-free ones stay: they belong to businesses, and
//!   the payer's line is worth reading), **SSN-shaped numbers** and
//!   **e-mail addresses**;
//! - **identifier-like tokens**: six or more letters and digits of which at
//!   least four are digits (`SBX100200305`, `W123456789`, `1EG4-TE5-MK73`).
//!   Payer reason codes (`CLIN-06`, `ADM-01`), CPT/HCPCS codes (`73721`,
//!   `E0601`) and unit counts are too short or have too few digits to look
//!   like one; ICD-10 codes written with their dot (`M25.561`), procedure
//!   codes with modifiers (`73721-RT`), amounts (`1250.00`) and the tokens a
//!   caller knows are not PHI (the case's own codes and references, see
//!   [`Scrubber::for_case`]) stay too;
//! - **names**: the patient's as imported (given and family, any case), and
//!   the payer's spelling of them: capitalised words standing where a name
//!   stands — after `member`, `patient`, `Mr.`, `Ms.`, `for` and the like,
//!   right after an identifier (`SBX100200305 (Teresa Vasquez)`), or two or
//!   more in a row that are not common payer words (`Not Covered`, `Prior
//!   Authorization`, `Medical Necessity` stay). A payer's heading may be
//!   over-masked; a name should not leak.
//!
//! The raw text stays in the ledger only (`precert cases show --phi`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::case::CaseRecord;

/// What stands in for a masked date.
pub const DATE: &str = "[date]";
/// … a phone number.
pub const PHONE: &str = "[phone]";
/// … an SSN-shaped number.
pub const SSN: &str = "[ssn]";
/// … an e-mail address.
pub const EMAIL: &str = "[email]";
/// … an identifier-like token.
pub const ID: &str = "[id]";
/// … a name (a run of name words becomes one).
pub const NAME: &str = "[name]";

/// How the case's own patient appears in scrubbed text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reveal {
    /// As the mail's patient line shows them: the name as initials
    /// (`Okafor` → `O.`), the member ID as its last four (`********0301`).
    Masked,
    /// Not at all: `[name]`, `[id]`.
    Hidden,
    /// As imported (a practice that shows patients in full). Birth dates
    /// and other people's identifiers are masked still.
    Full,
}

/// Masks PHI in quoted payer or portal text; see the module docs for the
/// rules. `scrub` is a pure function of the text and what the scrubber was
/// told about the case.
#[derive(Clone, Debug, Default)]
pub struct Scrubber {
    own: Option<Own>,
    /// Tokens known not to be PHI, upper-case.
    keep: HashSet<String>,
}

#[derive(Clone, Debug)]
struct Own {
    reveal: Reveal,
    /// The member ID's letters and digits, upper-case.
    member_id: String,
    /// What the member ID becomes.
    member_id_as: String,
    /// The name's parts, upper-case, at least two letters each.
    names: Vec<String>,
}

impl Scrubber {
    /// A scrubber that knows nothing of the case (text about a payer, not a
    /// patient).
    pub fn new() -> Scrubber {
        Scrubber::default()
    }

    /// A scrubber for text about `case`: its patient's name and member ID
    /// appear as `reveal` says, and the case's own codes and references
    /// (procedure and diagnosis codes, NPIs, tax IDs, the case reference,
    /// the payer's reference, the auth number, the denial code) stay
    /// readable.
    pub fn for_case(case: &CaseRecord, reveal: Reveal) -> Scrubber {
        let d = &case.data;
        let p = &d.patient;
        let mut names = Vec::new();
        for part in [p.name.expose_given(), p.name.expose_family()] {
            for word in part.split(|c: char| c.is_whitespace() || c == ',') {
                let pieces = std::iter::once(word).chain(word.split('-'));
                for piece in pieces {
                    let piece = piece.trim_matches(|c: char| !c.is_alphanumeric());
                    if piece.chars().count() >= 2 {
                        names.push(piece.to_uppercase());
                    }
                }
            }
        }
        let member_id_as = match reveal {
            Reveal::Masked => p.member_id.masked(),
            Reveal::Hidden => ID.to_owned(),
            Reveal::Full => p.member_id.expose().to_owned(),
        };
        let mut s = Scrubber {
            own: Some(Own {
                reveal,
                member_id: letters_and_digits(p.member_id.expose()),
                member_id_as,
                names,
            }),
            keep: HashSet::new(),
        };
        s = s.keep(&d.case_ref);
        for l in &d.service_lines {
            s = s.keep(l.code.as_str());
            let mods: String = l.modifiers.iter().map(|m| format!("-{}", m.as_str())).collect();
            s = s.keep(&format!("{}{mods}", l.code.as_str()));
        }
        for dx in &d.diagnoses {
            s = s.keep(dx.as_str()).keep(&dx.as_str().replace('.', ""));
        }
        for pr in [&d.requesting_provider, &d.servicing_provider] {
            s = s.keep(pr.npi.as_str()).keep(pr.tax_id.as_str());
        }
        if let Some(r) = &case.payer_ref {
            s = s.keep(r);
        }
        if let Some(dec) = &case.decision {
            if let Some(a) = &dec.auth_number {
                s = s.keep(a);
            }
            // The payer's code field holds a code, but only a code's shape
            // is trusted: a payer that put the member ID there gets it masked.
            if let Some(c) = dec.denial.as_ref().and_then(|r| r.code.as_deref()) {
                if code_shaped(c) {
                    s = s.keep(c);
                }
            }
        }
        s
    }

    /// Adds a token known not to be PHI (a code, a reference). An empty or
    /// whitespace-holding value is ignored: tokens have neither.
    pub fn keep(mut self, token: &str) -> Scrubber {
        let t = token.trim();
        if !t.is_empty() && !t.contains(char::is_whitespace) {
            self.keep.insert(t.to_uppercase());
        }
        self
    }

    /// The text with every date, phone number, SSN, e-mail address,
    /// identifier-like token and name masked.
    pub fn scrub(&self, text: &str) -> String {
        let mut kept = Vec::new();
        let masked = mask_patterns(text, &mut kept);
        let named = self.mask_tokens(&masked);
        restore(&named, &kept)
    }

    fn mask_tokens(&self, text: &str) -> String {
        let toks = tokens(text);
        let gap = |i: usize| -> &str {
            let from = if i == 0 { 0 } else { toks[i - 1].1 };
            &text[from..toks[i].0]
        };
        let classes: Vec<Class> = toks.iter().map(|&(a, b)| self.classify(&text[a..b])).collect();
        // An identifier: one masked here, or one masked before the text
        // reached us (`********0301`, `[id]`).
        let is_id = |i: usize| match &classes[i] {
            Class::Id | Class::OwnId => true,
            _ => gap(i).ends_with('*') || (gap(i).ends_with('[') && &text[toks[i].0..toks[i].1] == "id"),
        };
        let mut out: Vec<Option<String>> = vec![None; toks.len()];
        // Tokens whose `[name]` merges into the one before (with the gap).
        let mut merged = vec![false; toks.len()];
        for (i, c) in classes.iter().enumerate() {
            match c {
                Class::Id => out[i] = Some(ID.to_owned()),
                Class::OwnId => out[i] = self.own.as_ref().map(|o| o.member_id_as.clone()),
                _ => {}
            }
        }
        let mut i = 0;
        while i < toks.len() {
            if !classes[i].in_name() {
                i += 1;
                continue;
            }
            let mut j = i;
            while j + 1 < toks.len() && classes[j + 1].in_name() && joins(gap(j + 1), &classes[j]) {
                j += 1;
            }
            let group = i..=j;
            let words = group.clone().filter(|&k| classes[k].is_word()).count();
            let members = j - i + 1;
            let own = group.clone().any(|k| matches!(classes[k], Class::OwnName));
            let cued = i > 0 && (classes[i - 1] == Class::Cue || is_id(i - 1)) && cue_gap(gap(i));
            let mask = words >= 1 && (own || members >= 2 || cued);
            let mut prev_name = false;
            for k in group {
                let tok = &text[toks[k].0..toks[k].1];
                let repl = match (&classes[k], mask) {
                    (Class::OwnName, _) => Some(self.own_name(tok, &text[toks[k].1..])),
                    (Class::Name | Class::Initial, true) => Some(NAME.to_owned()),
                    _ => None,
                };
                let is_name = repl.as_deref() == Some(NAME);
                merged[k] = is_name && prev_name;
                prev_name = is_name;
                out[k] = repl;
            }
            i = j + 1;
        }
        let mut s = String::with_capacity(text.len());
        let mut at = 0;
        for (k, &(a, b)) in toks.iter().enumerate() {
            if !merged[k] {
                s.push_str(&text[at..a]);
                match &out[k] {
                    Some(r) => s.push_str(r),
                    None => s.push_str(&text[a..b]),
                }
            }
            at = b;
        }
        s.push_str(&text[at..]);
        s
    }

    /// What one of the patient's own name words becomes.
    fn own_name(&self, tok: &str, rest: &str) -> String {
        match self.own.as_ref().map(|o| o.reveal) {
            Some(Reveal::Full) => tok.to_owned(),
            Some(Reveal::Masked) => {
                let initial: String = tok
                    .chars()
                    .next()
                    .map(|c| c.to_uppercase().collect())
                    .unwrap_or_default();
                // "… Okafor." becomes "… O.", not "O..".
                if rest.starts_with('.') {
                    initial
                } else {
                    format!("{initial}.")
                }
            }
            Some(Reveal::Hidden) | None => NAME.to_owned(),
        }
    }

    fn classify(&self, tok: &str) -> Class {
        let upper = tok.to_uppercase();
        if let Some(own) = &self.own {
            if letters_and_digits(tok) == own.member_id {
                return Class::OwnId;
            }
        }
        if self.keep.contains(&upper) {
            return Class::Other;
        }
        if id_like(tok) && !harmless_code(tok) {
            return Class::Id;
        }
        if !tok
            .chars()
            .all(|c| c.is_alphabetic() || c == '-' || c == '\'' || c == '’')
        {
            return Class::Other;
        }
        if let Some(own) = &self.own {
            let bare = upper
                .strip_suffix("'S")
                .or_else(|| upper.strip_suffix("’S"))
                .unwrap_or(&upper);
            let hit = |w: &str| own.names.iter().any(|n| n == w);
            if hit(bare) || bare.split('-').any(hit) {
                return Class::OwnName;
            }
        }
        if CUES.contains(upper.as_str()) {
            return Class::Cue;
        }
        let first_upper = tok.chars().next().is_some_and(char::is_uppercase);
        if !first_upper {
            return Class::Other;
        }
        if tok.chars().count() == 1 {
            return Class::Initial;
        }
        if allowed(&upper) {
            return Class::Other;
        }
        Class::Name
    }
}

/// Scrubs text that is about no particular case.
pub fn scrub(text: &str) -> String {
    Scrubber::new().scrub(text)
}

/// Whether a value has the shape of a payer's reason code — `CLIN-06`,
/// `ADM-01`, `ELIG-0001`, `N130`, `CO-197`, `A3`, `197`: letters, an
/// optional `-` or `.`, at most four digits (or three digits alone).
pub fn code_shaped(code: &str) -> bool {
    static CODE: LazyLock<Regex> = LazyLock::new(|| re(r"^(?:[A-Z]{1,6}(?:[-.]?[0-9]{1,4}[A-Z]?)?|[0-9]{1,3})$"));
    CODE.is_match(code.trim())
}

/// A payer's reason code fit for a page nobody logs in to see: the shape
/// of a code ([`code_shaped`]) that does not also look like an identifier
/// (`CLIN-06` yes, `ELIG-0001` no). `None` for anything else (free text,
/// or a value that could identify someone).
pub fn payer_code(code: &str) -> Option<&str> {
    let c = code.trim();
    (code_shaped(c) && !id_like(c)).then_some(c)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Class {
    /// The patient's own member ID.
    OwnId,
    /// Another identifier-like token.
    Id,
    /// One of the patient's own name words.
    OwnName,
    /// A capitalised word that is not a common payer word.
    Name,
    /// A single capital letter (a middle initial, inside a name only).
    Initial,
    /// A word after which a name often stands.
    Cue,
    Other,
}

impl Class {
    fn in_name(&self) -> bool {
        matches!(self, Class::OwnName | Class::Name | Class::Initial)
    }

    fn is_word(&self) -> bool {
        matches!(self, Class::OwnName | Class::Name)
    }
}

/// Whether two name words belong to one name: a space between them, a
/// comma (`Vasquez, Teresa`), or an initial's dot (`T. Vasquez`).
fn joins(gap: &str, before: &Class) -> bool {
    let rest = gap
        .strip_prefix(',')
        .or_else(|| gap.strip_prefix('.').filter(|_| *before == Class::Initial))
        .unwrap_or(gap);
    !rest.is_empty() && rest.len() <= 3 && rest.chars().all(char::is_whitespace)
}

/// Whether what stands between a cue (or an identifier) and a word still
/// ties them: `member Vasquez`, `Mr. Vasquez`, `Patient: Vasquez`,
/// `SBX100200305 (Teresa`, `[id] (Teresa`.
fn cue_gap(gap: &str) -> bool {
    !gap.is_empty() && gap.len() <= 4 && gap.chars().all(|c| c.is_whitespace() || ".:,#-(]".contains(c))
}

/// Letters and digits, upper-case: `1eg4-te5-mk73` → `1EG4TE5MK73`.
fn letters_and_digits(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_uppercase)
        .collect()
}

/// Six or more letters and digits, at least four of them digits.
fn id_like(tok: &str) -> bool {
    let alnum = tok.chars().filter(|c| c.is_alphanumeric()).count();
    let digits = tok.chars().filter(char::is_ascii_digit).count();
    alnum >= 6 && digits >= 4
}

/// Code shapes that look like identifiers by count but identify nobody:
/// ICD-10 codes with their dot, procedure codes with modifiers, amounts.
fn harmless_code(tok: &str) -> bool {
    static SHAPES: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"^(?:[A-Za-z][0-9][0-9A-Za-z]\.[0-9A-Za-z]{1,4}|(?:[0-9]{4}[0-9A-Za-z]|[A-Za-z][0-9]{4})(?:-[0-9A-Za-z]{2})+|[0-9]+\.[0-9]{2})$",
        )
        .expect("code shapes")
    });
    SHAPES.is_match(tok)
}

/// Runs of letters and digits, joined by an inner `-`, `.` or apostrophe
/// (`1EG4-TE5-MK73`, `M25.561`, `O'Brien`): byte ranges.
fn tokens(s: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].1.is_alphanumeric() {
            i += 1;
            continue;
        }
        let start = chars[i].0;
        let mut j = i + 1;
        loop {
            if j < chars.len() && chars[j].1.is_alphanumeric() {
                j += 1;
            } else if j + 1 < chars.len() && "-.'’".contains(chars[j].1) && chars[j + 1].1.is_alphanumeric() {
                j += 2;
            } else {
                break;
            }
        }
        out.push((start, chars.get(j).map_or(s.len(), |c| c.0)));
        i = j;
    }
    out
}

// ---- patterns: dates, phones, SSNs, e-mail ----------------------------------

const MONTH: &str = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)";
const DAY: &str = r"\d{1,2}(?:st|nd|rd|th)?";
const YEAR: &str = r"(?:\d{4}|'\d{2}|\d{2})";

/// Compiles a pattern. Case-insensitive ones use `(?i-u)`: ASCII case
/// folding (dates and labels are ASCII; the crate is built without Unicode
/// case tables).
fn re(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("scrub pattern: {e}"))
}

static EMAIL_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"));

/// A birth-date label and what follows it (up to three date pieces).
static DOB_RE: LazyLock<Regex> = LazyLock::new(|| {
    let piece = format!(r"(?:\d{{1,8}}(?:st|nd|rd|th)?|{MONTH}\.?)");
    re(&format!(
        r"(?i-u)\b(?P<label>d\.?\s?o\.?\s?b\b\.?|date\s+of\s+birth\b|birth\s?date\b|born(?:\s+on)?\b)(?P<sep>\s*[:#=-]?\s*)(?P<value>{piece}(?:[\s/.,-]{{1,3}}{piece}){{0,2}})"
    ))
});

/// Dates with a year: ISO (with a time), numeric, with a month's name.
static DATE_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        concat!(
            r"(?i-u)\b(?:",
            r"\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}(?:[T ]\d{{1,2}}:\d{{2}}(?::\d{{2}}(?:\.\d+)?)?(?:Z|[+-]\d{{2}}:?\d{{2}})?)?",
            r"|\d{{1,2}}/\d{{1,2}}/(?:\d{{4}}|\d{{2}})",
            r"|\d{{1,2}}-\d{{1,2}}-(?:\d{{4}}|\d{{2}})",
            r"|\d{{1,2}}\.\d{{1,2}}\.(?:\d{{4}}|\d{{2}})",
            r"|{m}\.?\s+{d},?\s+{y}",
            r"|{d}(?:\s+of)?[\s-]+{m}\.?,?[\s-]+{y}",
            r"|{m}\.?,?\s+\d{{4}}",
            r")\b"
        ),
        m = MONTH,
        d = DAY,
        y = YEAR
    ))
});

/// A month's name and a day without a year (`Apr 12`, `12 April`); the
/// month must be capitalised, so that "may 12" in a sentence stays.
static DAY_MONTH_RE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?i-u)\b(?:(?P<m1>{MONTH})\.?\s+{DAY}|{DAY}(?:\s+of)?\s+(?P<m2>{MONTH}))\b"
    ))
});

static SSN_RE: LazyLock<Regex> = LazyLock::new(|| re(r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"));

static PHONE_RE: LazyLock<Regex> =
    LazyLock::new(|| re(r"(?:\+?\b1[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b"));

/// The first of the private-use characters that stand for text kept aside
/// while tokens are masked (a toll-free number must not become an `[id]`).
const KEPT: u32 = 0xF0000;

fn mask_patterns(text: &str, kept: &mut Vec<String>) -> String {
    // Private-use characters from outside would collide with ours.
    let text: String = text
        .chars()
        .map(|c| {
            if (KEPT..=KEPT + 0xFFFD).contains(&u32::from(c)) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    let t = EMAIL_RE.replace_all(&text, EMAIL);
    let t = replace(t, &DOB_RE, |c| {
        if c["value"].contains(|ch: char| ch.is_ascii_digit()) {
            format!("{}{}{DATE}", &c["label"], &c["sep"])
        } else {
            c[0].to_owned()
        }
    });
    let t = replace(t, &DATE_RE, |_| DATE.to_owned());
    let t = replace(t, &DAY_MONTH_RE, |c| {
        let month = c.name("m1").or_else(|| c.name("m2")).map_or("", |m| m.as_str());
        if month.starts_with(char::is_uppercase) {
            DATE.to_owned()
        } else {
            c[0].to_owned()
        }
    });
    let t = replace(t, &SSN_RE, |_| SSN.to_owned());
    let t = replace(t, &PHONE_RE, |c| {
        let digits: String = c[0].chars().filter(char::is_ascii_digit).collect();
        let area = if digits.len() == 11 {
            &digits[1..4]
        } else {
            &digits[..3]
        };
        if ["800", "833", "844", "855", "866", "877", "888"].contains(&area) {
            kept.push(c[0].to_owned());
            char::from_u32(KEPT + kept.len() as u32 - 1).map_or_else(|| PHONE.to_owned(), String::from)
        } else {
            PHONE.to_owned()
        }
    });
    t.into_owned()
}

fn replace<'t>(text: Cow<'t, str>, re: &Regex, mut f: impl FnMut(&Captures<'_>) -> String) -> Cow<'t, str> {
    match re.replace_all(&text, |c: &Captures<'_>| f(c)) {
        Cow::Borrowed(_) => text,
        Cow::Owned(s) => Cow::Owned(s),
    }
}

fn restore(text: &str, kept: &[String]) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut s, c| {
        match u32::from(c).checked_sub(KEPT).and_then(|i| kept.get(i as usize)) {
            Some(k) => s.push_str(k),
            None => s.push(c),
        }
        s
    })
}

// ---- words --------------------------------------------------------------------

/// Words after which a name often stands (upper-case).
static CUES: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    [
        "MEMBER",
        "MEMBERS",
        "PATIENT",
        "PATIENTS",
        "PT",
        "MR",
        "MRS",
        "MS",
        "MISS",
        "MX",
        "DR",
        "FOR",
        "INSURED",
        "SUBSCRIBER",
        "BENEFICIARY",
        "ENROLLEE",
        "DEPENDENT",
        "CARDHOLDER",
        "CLAIMANT",
        "NAME",
        "NAMED",
        "RE",
        "DEAR",
    ]
    .into_iter()
    .collect()
});

/// Capitalised words payers and portals use that are not names
/// (upper-case). A run of them is not masked; they also split runs.
static ALLOWED: LazyLock<HashSet<&'static str>> = LazyLock::new(|| ALLOW_WORDS.split_whitespace().collect());

const ALLOW_WORDS: &str = "
    A AN THE AND OR BUT NOR OF IN ON AT TO BY AS PER VIA FROM WITH WITHOUT INTO ONTO OUT OVER UNDER UP
    IS ARE WAS WERE BE BEEN BEING HAS HAVE HAD DO DOES DID DONE CAN CANNOT COULD WILL WOULD SHALL SHOULD MAY
    MIGHT MUST NOT NO NON YES ALL ANY EACH EVERY SOME OTHER ONLY ALSO MORE LESS MOST THAN THEN THIS THAT THESE
    THOSE IT ITS WE OUR US YOU YOUR THEY THEIR THEM HE SHE HIS HER WHO WHOM WHICH WHAT WHEN WHERE WHY HOW
    IF ELSE UNTIL AFTER BEFORE SINCE WHILE WITHIN BETWEEN ABOUT ABOVE BELOW HERE THERE NOW NEW OLD
    PLEASE THANK THANKS SEE NOTE NOTES CALL CONTACT SEND SENT SUBMIT SUBMITTED SUBMISSION RESUBMIT UPLOAD UPLOADED
    ATTACH ATTACHED ATTACHMENT ATTACHMENTS PROVIDE PROVIDED REQUEST REQUESTS REQUESTED REQUESTING RECEIVED RECEIPT
    REVIEW REVIEWED REVIEWER UNDER PENDING PENDED PEND APPROVED APPROVAL APPROVE DENIED DENIAL DENY PARTIAL
    PARTIALLY MODIFIED CANCELLED CANCELED WITHDRAWN VOID VOIDED CLOSED OPEN COMPLETE COMPLETED INCOMPLETE
    MISSING REQUIRED REQUIRES NEEDED NEED ADDITIONAL INFORMATION INFO DOCUMENTATION DOCUMENTS DOCUMENT
    DOCUMENTED RECORDS RECORD CLINICAL MEDICAL MEDICALLY NECESSITY NECESSARY NOT COVERED COVERAGE COVER BENEFIT
    BENEFITS PLAN PLANS POLICY POLICIES CRITERIA CRITERION GUIDELINE GUIDELINES ELIGIBLE ELIGIBILITY INELIGIBLE
    ACTIVE INACTIVE TERMINATED TERMINATION EFFECTIVE EXPIRED EXPIRES VALID INVALID VERIFY VERIFIED VERIFICATION
    MATCH MISMATCH FOUND UNKNOWN UNABLE FAILED FAILURE ERROR ERRORS WARNING NOTICE ADVERSE DETERMINATION DECISION
    REASON REASONS CODE CODES STATUS SUMMARY DETAILS DETAIL RESULT RESULTS REFERENCE REF NUMBER TRACKING
    CONFIRMATION CASE CLAIM CLAIMS AUTHORIZATION AUTHORIZATIONS AUTH PRIOR PRE PRECERT PRECERTIFICATION
    CERTIFICATION NOTIFICATION REFERRAL REFERRING ORDERING RENDERING SERVICING PROVIDER PROVIDERS FACILITY
    PHYSICIAN PRACTITIONER NETWORK PARTICIPATING NONPARTICIPATING SERVICE SERVICES DATE DATES DAY DAYS WEEK
    WEEKS MONTH MONTHS YEAR YEARS HOUR HOURS BUSINESS CALENDAR DEADLINE DUE TODAY TOMORROW YESTERDAY
    URGENT EXPEDITED STANDARD ROUTINE EMERGENCY EMERGENT INPATIENT OUTPATIENT OBSERVATION OFFICE HOME HEALTH
    HOSPICE SKILLED NURSING FACILITY AMBULATORY SURGICAL SURGERY SURGERIES PROCEDURE PROCEDURES DIAGNOSIS
    DIAGNOSES MODIFIER UNIT UNITS QUANTITY VISIT VISITS LIMIT LIMITS EXCEEDED EXCEEDS FREQUENCY DUPLICATE
    LEVEL CARE SETTING SITE EXPERIMENTAL INVESTIGATIONAL COSMETIC CONSERVATIVE THERAPY THERAPIES TREATMENT
    PHYSICAL OCCUPATIONAL SPEECH REHABILITATION PROGRESS TRIAL DURABLE EQUIPMENT DME IMAGING RADIOLOGY MRI
    MRA CT PET SPECT ULTRASOUND XRAY X-RAY SCAN STUDY SLEEP LAB LABORATORY GENETIC TESTING TEST INJECTION
    INFUSION DRUG DRUGS PHARMACY MEDICATION FORMULARY LUMBAR CERVICAL THORACIC SPINE KNEE HIP SHOULDER ANKLE
    WRIST ELBOW HAND FOOT BRAIN HEAD NECK CHEST ABDOMEN PELVIS LEFT RIGHT BILATERAL CONTRAST ARTHROPLASTY
    TOTAL JOINT REPLACEMENT ARTHROSCOPY CPT HCPCS ICD ICD-10 ICD-10-CM NPI TIN EIN DOB ID MBI SSN HICN
    MEDICARE MEDICAID ADVANTAGE MARKETPLACE EXCHANGE COMMERCIAL MANAGED HMO PPO EPO POS PFFS SNP DSNP CHIP
    TRICARE BRONZE SILVER GOLD PLATINUM SANDBOX PAYER INSURER INSURANCE HEALTHPLAN UTILIZATION MANAGEMENT UM
    UR DEPARTMENT DEPT TEAM UNIT CUSTOMER SUPPORT HELP DESK CENTER CLINIC HOSPITAL GROUP MEDICAL DIRECTOR
    NURSE PEER PEER-TO-PEER APPEAL APPEALS RECONSIDERATION GRIEVANCE LETTER LETTERS FAX PHONE EMAIL MAIL
    PORTAL WEBSITE ONLINE LOGIN LOGOUT LOG SIGN SIGNED SESSION TIMEOUT TIMED PASSWORD USERNAME USER ACCOUNT
    LOCKED UNAUTHORIZED FORBIDDEN INTERNAL SERVER GATEWAY BAD UNAVAILABLE MAINTENANCE SCHEDULED TRY AGAIN
    LATER PAGE CONTINUE NEXT BACK CANCEL SEARCH LOOKUP FIRST LAST FINAL INITIAL CURRENT PREVIOUS FOLLOWING
    ADDRESS CITY STATE ZIP AGE SEX GENDER MALE FEMALE BIRTH DECEASED OK N/A NA TBD USA
    JANUARY FEBRUARY MARCH APRIL JUNE JULY AUGUST SEPTEMBER OCTOBER NOVEMBER DECEMBER
    JAN FEB MAR APR JUN JUL AUG SEP SEPT OCT NOV DEC
    MONDAY TUESDAY WEDNESDAY THURSDAY FRIDAY SATURDAY SUNDAY MON TUE TUES WED THU THUR THURS FRI SAT SUN
";

fn allowed(upper: &str) -> bool {
    let bare = upper
        .strip_suffix("'S")
        .or_else(|| upper.strip_suffix("’S"))
        .unwrap_or(upper);
    ALLOWED.contains(bare) || (bare.contains('-') && bare.split('-').all(|p| ALLOWED.contains(p) || CUES.contains(p)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::*;
    use crate::phi::{MemberId, PersonName};

    fn case(given: &str, family: &str, member_id: &str) -> CaseRecord {
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).expect("a valid date");
        let provider = Provider {
            name: "Valley Imaging Center".into(),
            npi: Npi::parse("1679576722").expect("valid"),
            tax_id: TaxId::parse("917654321").expect("valid"),
            location: "main".into(),
        };
        CaseRecord {
            id: 7,
            status: CaseStatus::Denied,
            data: CaseData {
                practice_id: "valley-imaging".into(),
                case_ref: "VI-88120".into(),
                patient: Patient {
                    name: PersonName::parse(given, family).expect("valid"),
                    birth_date: chrono::NaiveDate::from_ymd_opt(1961, 4, 12).expect("a valid date"),
                    member_id: MemberId::parse(member_id).expect("valid"),
                    group_number: Some("VHP-220".into()),
                },
                coverage: Coverage {
                    payer: "sandbox".into(),
                    plan: "Sandbox Health Marketplace Silver".into(),
                    plan_type: PlanType::Other,
                    state: UsState::parse("WA").expect("valid"),
                },
                requesting_provider: provider.clone(),
                servicing_provider: provider,
                service_lines: vec![ServiceLine {
                    code: ProcedureCode::parse("72148").expect("valid"),
                    units: 1,
                    modifiers: Vec::new(),
                }],
                diagnoses: vec![
                    Icd10::parse("M54.16").expect("valid"),
                    Icd10::parse("S72001A").expect("valid"),
                ],
                service_dates: DateRange { start: date, end: date },
                setting: Setting::Outpatient,
                urgency: Urgency::Urgent,
                attachments: Vec::new(),
                expected_amount: None,
            },
            decision: Some(Decision {
                auth_number: Some("SHP97110".into()),
                valid: None,
                lines: Vec::new(),
                conditions: None,
                denial: Some(DenialReason {
                    code: Some("ELIG-0001".into()),
                    text: "x".into(),
                }),
                decided_at: chrono::DateTime::UNIX_EPOCH,
                source: "portal:sandbox".into(),
            }),
            payer_ref: Some("SBX-REQ-000123".into()),
            created_at: chrono::DateTime::UNIX_EPOCH,
            updated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn drew(reveal: Reveal) -> Scrubber {
        Scrubber::for_case(&case("Drew", "Kowalski", "SBX100200305"), reveal)
    }

    /// Asserts the scrubbed text has none of `gone` and all of `kept`.
    #[track_caller]
    fn check(s: &Scrubber, text: &str, gone: &[&str], kept: &[&str]) -> String {
        let out = s.scrub(text);
        for g in gone {
            assert!(!out.contains(g), "`{g}` survived: {text:?} → {out:?}");
        }
        for k in kept {
            assert!(out.contains(k), "`{k}` lost: {text:?} → {out:?}");
        }
        out
    }

    #[test]
    fn the_two_reported_reasons_lose_birth_date_member_id_and_the_payers_spelling_of_the_name() {
        let s = drew(Reveal::Masked);
        let out = s.scrub("Member SBX100200305 (Teresa Vasquez) DOB 04/12/1961 not eligible");
        assert_eq!(out, "Member ********0305 ([name]) DOB [date] not eligible");
        let avery = Scrubber::for_case(&case("Avery", "Marsh", "SBX100200301"), Reveal::Masked);
        let out = avery.scrub("ADM-01: Not covered for member ********0301 (Margaret Okafor, DOB 04/12/1961)");
        assert_eq!(out, "ADM-01: Not covered for member ********0301 ([name], DOB [date])");
        let out = avery.scrub("ADM-01: Not covered for member SBX100200301 (Margaret Okafor, DOB 04/12/1961)");
        assert_eq!(out, "ADM-01: Not covered for member ********0301 ([name], DOB [date])");
    }

    #[test]
    fn dates_in_every_common_form_are_masked() {
        let s = Scrubber::new();
        for (text, date) in [
            ("born 04/12/1961.", "04/12/1961"),
            ("seen 4/12/61 last", "4/12/61"),
            ("on 1961-04-12 at", "1961-04-12"),
            ("at 2026-12-08T10:30:00Z ok", "2026-12-08T10:30:00Z"),
            ("on 1961/04/12 at", "1961/04/12"),
            ("on 04-12-1961 at", "04-12-1961"),
            ("on 12.04.1961 at", "12.04.1961"),
            ("on April 12, 1961 at", "April 12, 1961"),
            ("on Apr. 12 1961 at", "Apr. 12 1961"),
            ("on APRIL 12TH, 1961 at", "APRIL 12TH, 1961"),
            ("on 12 Apr 1961 at", "12 Apr 1961"),
            ("on 12-Apr-1961 at", "12-Apr-1961"),
            ("on the 12th of April, 1961", "12th of April, 1961"),
            ("since April 1961 the", "April 1961"),
            ("since Apr 12 the", "Apr 12"),
            ("since 12 April the", "12 April"),
        ] {
            let out = check(&s, text, &[date, "1961", "12"], &[DATE]);
            assert!(!out.contains("04"), "{out}");
        }
    }

    #[test]
    fn whatever_follows_a_birth_date_label_is_masked() {
        let s = Scrubber::new();
        for text in [
            "DOB: 04/12/1961",
            "dob 19610412",
            "D.O.B. 4-12-61",
            "Date of birth: April 12th, 1961",
            "birthdate=12 Apr 1961",
            "born on 4/12",
            "DOB 4.12",
        ] {
            check(&s, text, &["1961", "12", "0412"], &[DATE]);
        }
        // A label without a date after it is left alone.
        assert_eq!(s.scrub("DOB may be missing"), "DOB may be missing");
        // Only the date goes, not the rest of the sentence.
        assert_eq!(
            s.scrub("DOB 04/12/1961, 12 units requested"),
            "DOB [date], 12 units requested"
        );
    }

    #[test]
    fn words_that_only_look_like_dates_stay() {
        let s = Scrubber::new();
        for text in [
            "sleep study pages 2-4",
            "the payer may 12 months later review it",
            "Mayo Clinic notes",
            "Marsh 12",
            "version 1.5",
            "6 of 12 units approved",
            "in 2026 the plan",
        ] {
            assert_eq!(s.scrub(text), text);
        }
    }

    #[test]
    fn member_id_like_tokens_are_masked_and_codes_are_not() {
        let s = Scrubber::new();
        for id in [
            "SBX100200305",
            "W123456789",
            "1EG4-TE5-MK73",
            "1EG4TE5MK73",
            "123456789",
            "XJ4-0071-22",
            "GRP-4410",
            "ABC1234",
        ] {
            let out = check(&s, &format!("ID {id} not found"), &[id], &[ID]);
            assert_eq!(out, "ID [id] not found");
        }
        for code in [
            "CLIN-06",
            "ADM-01",
            "ELIG-01",
            "MEM-01",
            "CO-197",
            "N130",
            "73721",
            "E0601",
            "97110-GP",
            "27447-RT-59",
            "M25.561",
            "S72.001A",
            "Z00.00",
            "G0299",
            "A3",
            "1250.00",
            "12",
            "x12",
            "2026",
        ] {
            let text = format!("code {code} applies");
            assert_eq!(s.scrub(&text), text, "{code}");
        }
        // Only the token: the punctuation around it stays.
        assert_eq!(s.scrub("(W123456789)."), "([id]).");
    }

    #[test]
    fn the_cases_own_codes_and_references_stay_readable() {
        let s = drew(Reveal::Masked);
        let text = "Request SBX-REQ-000123 / case VI-88120: S72001A and M54.16 for 72148 by NPI 1679576722, \
                    auth SHP97110, code ELIG-0001";
        assert_eq!(s.scrub(text), text);
        // Others of the same shape do not.
        assert_eq!(s.scrub("S72002A by NPI 1679576723"), "[id] by NPI [id]");
        // A denial "code" that is not a code's shape is not trusted.
        let mut c = case("Drew", "Kowalski", "SBX100200305");
        if let Some(d) = c.decision.as_mut().and_then(|d| d.denial.as_mut()) {
            d.code = Some("W123456789".into());
        }
        assert_eq!(Scrubber::for_case(&c, Reveal::Masked).scrub("W123456789"), "[id]");
    }

    #[test]
    fn phone_numbers_ssns_and_email_addresses_are_masked_but_toll_free_lines_stay() {
        let s = Scrubber::new();
        check(&s, "call (509) 555-0142 now", &["555", "0142"], &[PHONE]);
        check(&s, "call 509-555-0142 now", &["555", "0142"], &[PHONE]);
        check(&s, "call +1 509.555.0142 now", &["555", "0142"], &[PHONE]);
        check(&s, "call 5095550142 now", &["5095550142"], &[ID]);
        check(&s, "SSN 123-45-6789 on file", &["6789"], &[SSN]);
        check(&s, "SSN 123 45 6789 on file", &["6789"], &[SSN]);
        check(
            &s,
            "mail teresa.vasquez@example.com now",
            &["teresa", "vasquez"],
            &[EMAIL],
        );
        let text = "Call utilization management at 1-800-555-0199 or (888) 555-0100.";
        assert_eq!(s.scrub(text), text);
    }

    #[test]
    fn the_patients_names_as_imported_are_masked_in_any_case() {
        let s = drew(Reveal::Masked);
        assert_eq!(s.scrub("KOWALSKI, DREW not found"), "K., D. not found");
        assert_eq!(s.scrub("drew kowalski's record"), "D. K. record");
        assert_eq!(s.scrub("patient Kowalski."), "patient K.");
        assert_eq!(s.scrub("Kowalski-Nowak family plan"), "K. family plan");
        let hidden = drew(Reveal::Hidden);
        assert_eq!(
            hidden.scrub("member SBX100200305 (Drew Kowalski) not found"),
            "member [id] ([name]) not found"
        );
        let full = drew(Reveal::Full);
        assert_eq!(
            full.scrub("member SBX100200305 (Drew Kowalski) DOB 04/12/1961 not found"),
            "member SBX100200305 (Drew Kowalski) DOB [date] not found"
        );
        // A given name made of two words, a hyphenated family name.
        let mary = Scrubber::for_case(&case("Mary Ann", "Smith-Jones", "SBX1"), Reveal::Masked);
        assert_eq!(mary.scrub("for MARY ANN SMITH-JONES"), "for M. A. S.");
        assert_eq!(mary.scrub("Jones, Mary"), "J., M.");
    }

    #[test]
    fn the_payers_spelling_of_a_name_is_masked_where_a_name_stands() {
        let s = Scrubber::new();
        for (text, want) in [
            (
                "Member SBX100200305 (Teresa Vasquez) not eligible",
                "Member [id] ([name]) not eligible",
            ),
            (
                "member [id] (Vasquez) not eligible",
                "member [id] ([name]) not eligible",
            ),
            (
                "member ********0305 (Vasquez) not eligible",
                "member ********0305 ([name]) not eligible",
            ),
            ("Patient Vasquez not eligible", "Patient [name] not eligible"),
            ("patient: Vasquez not eligible", "patient: [name] not eligible"),
            ("Request for Teresa denied", "Request for [name] denied"),
            ("Mr. Vasquez was not eligible", "Mr. [name] was not eligible"),
            ("Ms Vasquez was not eligible", "Ms [name] was not eligible"),
            (
                "Records show Teresa Vasquez is not eligible",
                "Records show [name] is not eligible",
            ),
            ("VASQUEZ, TERESA M not eligible", "[name] not eligible"),
            ("Teresa M. Vasquez not eligible", "[name] not eligible"),
            ("T. Vasquez not eligible", "[name] not eligible"),
            ("José Núñez not eligible", "[name] not eligible"),
            ("Seán O'Brien not eligible", "[name] not eligible"),
            ("insured Jo-Anne not found", "insured [name] not found"),
        ] {
            assert_eq!(s.scrub(text), want, "{text}");
        }
    }

    #[test]
    fn payer_wording_in_capitals_stays() {
        let s = Scrubber::new();
        for text in [
            "Not Covered",
            "NOT COVERED: Prior Authorization Required",
            "Denied for Medical Necessity",
            "Conservative therapy of at least 6 weeks is not documented.",
            "CLIN-06: Conservative therapy of six weeks is not documented",
            "Submit Additional Clinical Documentation for MRI Lumbar Spine",
            "Member Not Eligible on Date of Service",
            "Peer-to-Peer Review available; see the Adverse Determination Notice",
            "Internal Server Error (500)",
            "Session Expired. Please Log In Again",
            "Out-of-Network Provider",
            "portal changed: no #submit",
            "6 visits approved; re-request with progress notes",
            "payer sandbox paused after 5 portal failures",
            "The request is Pending Review",
        ] {
            assert_eq!(s.scrub(text), text);
        }
    }

    #[test]
    fn payer_codes_are_recognised_and_free_text_is_not() {
        for c in [
            "CLIN-06", "ADM-01", "ELIG-01", "N130", "CO-197", "A3", "197", " MEM-01 ",
        ] {
            assert_eq!(payer_code(c), Some(c.trim()), "{c}");
        }
        for c in [
            "SBX100200305",
            "ADM-0001X2",
            "Teresa Vasquez",
            "clin-06",
            "",
            "CLIN-06 see notes",
            "W123456789",
        ] {
            assert_eq!(payer_code(c), None, "{c}");
            assert!(!code_shaped(c), "{c}");
        }
        // A code's shape, but an identifier's count: kept in text about
        // its case, not shown on the case page.
        assert!(code_shaped("ELIG-0001"));
        assert_eq!(payer_code("ELIG-0001"), None);
    }

    #[test]
    fn private_use_characters_from_outside_cannot_pose_as_kept_text() {
        let s = Scrubber::new();
        let text = format!("a {} b 1-800-555-0199", char::from_u32(KEPT).unwrap());
        assert_eq!(s.scrub(&text), "a \u{FFFD} b 1-800-555-0199");
    }
}
