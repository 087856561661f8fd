//! Reading a PAS request Bundle.

use chrono::NaiveDate;
use serde_json::Value;

/// The parts of a PAS request Bundle the sandbox uses.
pub(super) struct ParsedClaim {
    pub(super) member_id: String,
    pub(super) member_name: String,
    pub(super) claim_identifier: Option<String>,
    pub(super) urgency: String,
    pub(super) lines: Vec<(String, u32)>,
    pub(super) diagnoses: Vec<String>,
    pub(super) start: NaiveDate,
    pub(super) end: NaiveDate,
    pub(super) servicing_npi: String,
    pub(super) request_type: String,
}

/// Finds the entry a `Type/id` (or absolute) reference points at.
fn resolve<'a>(bundle: &'a Value, reference: &str) -> Option<&'a Value> {
    let entries = bundle.get("entry")?.as_array()?;
    entries.iter().find_map(|e| {
        let r = e.get("resource")?;
        let full = e.get("fullUrl").and_then(Value::as_str).unwrap_or("");
        let typed = format!(
            "{}/{}",
            r.get("resourceType")?.as_str()?,
            r.get("id").and_then(Value::as_str).unwrap_or("")
        );
        (full == reference || typed == reference || full.ends_with(&format!("/{reference}"))).then_some(r)
    })
}

pub(super) fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => cur.get(i)?,
            Err(_) => cur.get(*p)?,
        };
    }
    cur.as_str()
}

fn date_of(s: Option<&str>) -> Option<NaiveDate> {
    let s = s?;
    NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d").ok()
}

/// The Claim of a PAS Bundle (first entry), or every problem found.
pub(super) fn claim_of(bundle: &Value) -> Result<&Value, Vec<String>> {
    let mut errors = Vec::new();
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        errors.push("Bundle: resourceType must be \"Bundle\".".to_string());
        return Err(errors);
    }
    let entries = bundle.get("entry").and_then(Value::as_array).filter(|e| !e.is_empty());
    let Some(entries) = entries else {
        errors.push(
            "Bundle.entry: a PAS request Bundle must contain at least the Claim and the resources it references."
                .into(),
        );
        return Err(errors);
    };
    let claim = &entries[0]["resource"];
    if claim.get("resourceType").and_then(Value::as_str) != Some("Claim") {
        errors.push("Bundle.entry[0]: the first entry must be a Claim.".into());
        return Err(errors);
    }
    Ok(claim)
}

pub(super) fn parse_submit(bundle: &Value, today: NaiveDate) -> Result<ParsedClaim, Vec<String>> {
    let claim = claim_of(bundle)?;
    let mut errors = Vec::new();
    if claim.get("use").and_then(Value::as_str) != Some("preauthorization") {
        errors.push("Claim.use: must be \"preauthorization\".".into());
    }
    let patient = str_at(claim, &["patient", "reference"]).and_then(|r| resolve(bundle, r));
    if patient.is_none() {
        errors.push("Claim.patient: must reference a Patient in the Bundle.".into());
    }
    let coverage = str_at(claim, &["insurance", "0", "coverage", "reference"]).and_then(|r| resolve(bundle, r));
    if coverage.is_none() {
        errors.push("Claim.insurance[0].coverage: must reference a Coverage in the Bundle.".into());
    }
    if str_at(claim, &["insurer", "reference"])
        .and_then(|r| resolve(bundle, r))
        .is_none()
    {
        errors.push("Claim.insurer: must reference an Organization in the Bundle.".into());
    }
    let provider = str_at(claim, &["provider", "reference"]).and_then(|r| resolve(bundle, r));
    if provider.is_none() {
        errors.push("Claim.provider: must reference an Organization or Practitioner in the Bundle.".into());
    }
    let items = claim.get("item").and_then(Value::as_array).filter(|i| !i.is_empty());
    if items.is_none() {
        errors.push("Claim.item: at least one item is required.".into());
    }
    let mut lines = Vec::new();
    let mut start = None;
    let mut end = None;
    for (i, item) in items.into_iter().flatten().enumerate() {
        let Some(code) = str_at(item, &["productOrService", "coding", "0", "code"]) else {
            errors.push(format!(
                "Claim.item[{i}].productOrService: a coding with a code is required."
            ));
            continue;
        };
        let requested = item
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|e| str_at(e, &["url"]).is_some_and(|u| u.ends_with("extension-requestedService")))
            .and_then(|e| str_at(e, &["valueReference", "reference"]))
            .and_then(|r| resolve(bundle, r));
        let units = item
            .pointer("/quantity/value")
            .or_else(|| requested.and_then(|r| r.pointer("/quantityQuantity/value")))
            .and_then(Value::as_f64)
            .map(|v| v.max(1.0) as u32)
            .unwrap_or(1);
        let s = date_of(str_at(item, &["servicedDate"]))
            .or_else(|| date_of(str_at(item, &["servicedPeriod", "start"])))
            .or_else(|| requested.and_then(|r| date_of(str_at(r, &["occurrenceDateTime"]))))
            .or_else(|| requested.and_then(|r| date_of(str_at(r, &["occurrencePeriod", "start"]))));
        let e = date_of(str_at(item, &["servicedPeriod", "end"]))
            .or_else(|| requested.and_then(|r| date_of(str_at(r, &["occurrencePeriod", "end"]))));
        start = start.or(s);
        end = end.or(e).or(s);
        lines.push((code.to_string(), units));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let (patient, coverage) = (patient.unwrap_or(&Value::Null), coverage.unwrap_or(&Value::Null));
    let member_id = str_at(coverage, &["subscriberId"])
        .or_else(|| str_at(coverage, &["identifier", "0", "value"]))
        .or_else(|| str_at(patient, &["identifier", "0", "value"]))
        .unwrap_or("")
        .to_string();
    if member_id.is_empty() {
        return Err(vec![
            "Coverage.subscriberId or Patient.identifier: the member ID is required.".into(),
        ]);
    }
    let member_name = format!(
        "{} {}",
        str_at(patient, &["name", "0", "given", "0"]).unwrap_or(""),
        str_at(patient, &["name", "0", "family"]).unwrap_or("")
    )
    .trim()
    .to_string();
    let urgent = claim
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|e| {
            str_at(e, &["url"]).is_some_and(|u| u.ends_with("extension-levelOfServiceCode"))
                && str_at(e, &["valueCodeableConcept", "coding", "0", "code"]) == Some("U")
        })
        || str_at(claim, &["priority", "coding", "0", "code"]) == Some("stat");
    let diagnoses = claim
        .get("diagnosis")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| str_at(d, &["diagnosisCodeableConcept", "coding", "0", "code"]))
        .map(str::to_string)
        .collect();
    let servicing_npi = claim
        .pointer("/careTeam/0/provider/reference")
        .and_then(Value::as_str)
        .and_then(|r| resolve(bundle, r))
        .or(provider)
        .and_then(|p| str_at(p, &["identifier", "0", "value"]))
        .unwrap_or("")
        .to_string();
    let start = start.unwrap_or(today);
    Ok(ParsedClaim {
        member_id,
        member_name,
        claim_identifier: str_at(claim, &["identifier", "0", "value"]).map(str::to_string),
        urgency: if urgent { "urgent" } else { "standard" }.into(),
        lines,
        diagnoses,
        start,
        end: end.unwrap_or(start).max(start),
        servicing_npi,
        request_type: str_at(claim, &["type", "coding", "0", "code"])
            .unwrap_or("professional")
            .to_string(),
    })
}
