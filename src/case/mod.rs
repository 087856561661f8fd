//! The case: one request for pre-certification, from intake to decision.
//!
//! Everything here is already validated: `intake` is the only way in from
//! outside, and the ledger stores these types as they are.

pub mod amount;
pub mod codes;
pub mod status;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub use amount::Usd;
pub use codes::{CodeSystem, Icd10, Modifier, Npi, ProcedureCode, TaxId, UsState};
pub use status::CaseStatus;

use crate::phi::{MemberId, PersonName};

/// The data of a case as the practice supplied it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseData {
    pub practice_id: String,
    /// The practice's own case ID: the idempotency key within a practice.
    pub case_ref: String,
    pub patient: Patient,
    pub coverage: Coverage,
    pub requesting_provider: Provider,
    pub servicing_provider: Provider,
    pub service_lines: Vec<ServiceLine>,
    pub diagnoses: Vec<Icd10>,
    pub service_dates: DateRange,
    pub setting: Setting,
    pub urgency: Urgency,
    pub attachments: Vec<Attachment>,
    /// What the practice expects the requested services to be worth (an
    /// optional intake field); `None` is unknown, never zero. Reports sum
    /// it over the requests at risk; it goes to no payer. Absent from the
    /// stored JSON when unknown, so cases stored before it existed read
    /// back, and import again, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_amount: Option<Usd>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Patient {
    pub name: PersonName,
    pub birth_date: NaiveDate,
    pub member_id: MemberId,
    pub group_number: Option<String>,
}

/// Masks what identifies the patient: the name and member ID mask
/// themselves, and only the birth year shows.
impl fmt::Debug for Patient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Patient")
            .field("name", &self.name)
            .field("birth_year", &chrono::Datelike::year(&self.birth_date))
            .field("member_id", &self.member_id)
            .field("group_number", &self.group_number)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// The payer's id in precert: the practice's payer binding and playbook.
    pub payer: String,
    pub plan: String,
    pub plan_type: PlanType,
    pub state: UsState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provider {
    pub name: String,
    pub npi: Npi,
    pub tax_id: TaxId,
    /// The id of one of the practice's service locations.
    pub location: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceLine {
    pub code: ProcedureCode,
    pub units: u32,
    pub modifiers: Vec<Modifier>,
}

/// An inclusive range of dates, start never after end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateRange {
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// A clinical document kept in the data directory with the case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file's name as supplied (no directories).
    pub file_name: String,
    /// Where precert keeps its copy, relative to the data directory.
    pub stored_path: PathBuf,
    pub media_type: String,
    pub bytes: u64,
    pub sha256: String,
}

macro_rules! keyword_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal $(| $alias:literal)*),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vm])* $variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let k = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
                match k.as_str() {
                    $($text $(| $alias)* => Ok($name::$variant),)*
                    _ => Err(format!(
                        "`{}` is not one of: {}",
                        s.trim(),
                        $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
        }
    };
}

keyword_enum! {
    /// Where the service happens; payers review inpatient stays differently.
    Setting {
        Outpatient = "outpatient",
        Inpatient = "inpatient",
        Office = "office",
        Home = "home",
        AmbulatorySurgery = "ambulatory_surgery" | "asc",
        Emergency = "emergency",
    }
}

keyword_enum! {
    /// Urgent requests must be decided within 72 hours, standard within 7
    /// calendar days (CMS-0057-F).
    Urgency {
        Standard = "standard",
        Urgent = "urgent" | "expedited",
    }
}

keyword_enum! {
    /// The kind of plan, which decides which regulator's deadlines apply.
    PlanType {
        Commercial = "commercial",
        MedicareAdvantage = "medicare_advantage" | "ma",
        Medicare = "medicare",
        Medicaid = "medicaid",
        Chip = "chip",
        Marketplace = "marketplace" | "exchange",
        Other = "other",
    }
}

/// What the payer decided, as read from its portal, API or letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub auth_number: Option<String>,
    pub valid: Option<DateRange>,
    /// Approved units per requested line, in the order of the case's lines.
    pub lines: Vec<LineDecision>,
    pub conditions: Option<String>,
    pub denial: Option<DenialReason>,
    pub decided_at: DateTime<Utc>,
    /// Where the decision was read: `portal:sandbox`, `api:sandbox`,
    /// `manual:user`.
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineDecision {
    pub code: ProcedureCode,
    pub requested_units: u32,
    pub approved_units: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialReason {
    pub code: Option<String>,
    pub text: String,
}

/// A case as the ledger holds it.
#[derive(Clone, Debug)]
pub struct CaseRecord {
    pub id: i64,
    pub status: CaseStatus,
    pub data: CaseData,
    pub decision: Option<Decision>,
    /// The payer's reference for the submitted request.
    pub payer_ref: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CaseRecord {
    /// `practice/case_ref`, the key people use.
    pub fn key(&self) -> String {
        format!("{}/{}", self.data.practice_id, self.data.case_ref)
    }
}
