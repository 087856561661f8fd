//! The FHIR R4 resources of a PAS exchange, as far as precert uses them.

use serde::{Deserialize, Serialize};

use super::fhir::*;

/// A resource in a Bundle, tagged by `resourceType` as FHIR JSON is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resourceType")]
#[allow(clippy::large_enum_variant)] // built once per request; boxing buys nothing
pub enum Resource {
    Claim(Claim),
    Patient(Patient),
    Coverage(Coverage),
    Practitioner(Practitioner),
    Organization(Organization),
    ServiceRequest(ServiceRequest),
    DeviceRequest(DeviceRequest),
    DocumentReference(DocumentReference),
}

fhir_struct!(Bundle {
    id: Option<String>,
    meta: Option<Meta>,
    identifier: Option<Identifier>,
    #[serde(rename = "type")]
    kind: Option<String>,
    timestamp: Option<String>,
    entry: Vec<BundleEntry>,
});

/// The derive cannot add the constant `resourceType`; this wrapper does, in
/// first place, where people reading the JSON look for it.
#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(rename = "resourceType")]
    kind: &'static str,
    #[serde(flatten)]
    bundle: &'a Bundle,
}

impl Bundle {
    /// The Bundle as FHIR JSON writes it (`resourceType` first), to
    /// serialise straight into a request body.
    pub fn fhir(&self) -> impl Serialize + '_ {
        self.tagged()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.tagged()).expect("a bundle serialises")
    }

    /// Indented FHIR JSON, fields in their FHIR order.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.tagged()).expect("a bundle serialises")
    }

    fn tagged(&self) -> Tagged<'_> {
        Tagged {
            kind: "Bundle",
            bundle: self,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    pub full_url: String,
    pub resource: Resource,
}

fhir_struct!(Claim {
    id: Option<String>,
    meta: Option<Meta>,
    extension: Vec<Extension>,
    identifier: Vec<Identifier>,
    status: Option<String>,
    #[serde(rename = "type")]
    kind: Option<CodeableConcept>,
    #[serde(rename = "use")]
    use_: Option<String>,
    patient: Option<Reference>,
    created: Option<String>,
    insurer: Option<Reference>,
    provider: Option<Reference>,
    priority: Option<CodeableConcept>,
    care_team: Vec<ClaimCareTeam>,
    supporting_info: Vec<ClaimSupportingInfo>,
    diagnosis: Vec<ClaimDiagnosis>,
    insurance: Vec<ClaimInsurance>,
    item: Vec<ClaimItem>,
});

fhir_struct!(ClaimCareTeam {
    sequence: Option<u32>,
    provider: Option<Reference>,
    role: Option<CodeableConcept>,
});

fhir_struct!(ClaimSupportingInfo {
    sequence: Option<u32>,
    category: Option<CodeableConcept>,
    value_reference: Option<Reference>,
});

fhir_struct!(ClaimDiagnosis {
    sequence: Option<u32>,
    diagnosis_codeable_concept: Option<CodeableConcept>,
});

fhir_struct!(ClaimInsurance {
    sequence: Option<u32>,
    focal: Option<bool>,
    coverage: Option<Reference>,
});

fhir_struct!(ClaimItem {
    extension: Vec<Extension>,
    sequence: Option<u32>,
    care_team_sequence: Vec<u32>,
    diagnosis_sequence: Vec<u32>,
    information_sequence: Vec<u32>,
    product_or_service: Option<CodeableConcept>,
    modifier: Vec<CodeableConcept>,
    serviced_period: Option<Period>,
    location_codeable_concept: Option<CodeableConcept>,
    quantity: Option<Quantity>,
});

fhir_struct!(Patient {
    id: Option<String>,
    meta: Option<Meta>,
    identifier: Vec<Identifier>,
    name: Vec<HumanName>,
    birth_date: Option<String>,
});

fhir_struct!(Coverage {
    id: Option<String>,
    meta: Option<Meta>,
    status: Option<String>,
    subscriber_id: Option<String>,
    beneficiary: Option<Reference>,
    payor: Vec<Reference>,
    class: Vec<CoverageClass>,
});

fhir_struct!(CoverageClass {
    #[serde(rename = "type")]
    kind: Option<CodeableConcept>,
    value: Option<String>,
    name: Option<String>,
});

fhir_struct!(Practitioner {
    id: Option<String>,
    meta: Option<Meta>,
    identifier: Vec<Identifier>,
    name: Vec<HumanName>,
});

fhir_struct!(Organization {
    id: Option<String>,
    meta: Option<Meta>,
    identifier: Vec<Identifier>,
    active: Option<bool>,
    #[serde(rename = "type")]
    kind: Vec<CodeableConcept>,
    name: Option<String>,
    address: Vec<Address>,
});

fhir_struct!(ServiceRequest {
    id: Option<String>,
    meta: Option<Meta>,
    status: Option<String>,
    intent: Option<String>,
    code: Option<CodeableConcept>,
    quantity_quantity: Option<Quantity>,
    subject: Option<Reference>,
    occurrence_period: Option<Period>,
    requester: Option<Reference>,
    performer: Vec<Reference>,
    reason_code: Vec<CodeableConcept>,
});

fhir_struct!(DeviceRequest {
    id: Option<String>,
    meta: Option<Meta>,
    status: Option<String>,
    intent: Option<String>,
    code_codeable_concept: Option<CodeableConcept>,
    subject: Option<Reference>,
    occurrence_period: Option<Period>,
    requester: Option<Reference>,
    performer: Option<Reference>,
    reason_code: Vec<CodeableConcept>,
});

fhir_struct!(DocumentReference {
    id: Option<String>,
    meta: Option<Meta>,
    status: Option<String>,
    subject: Option<Reference>,
    description: Option<String>,
    content: Vec<DocumentContent>,
});

fhir_struct!(DocumentContent { attachment: Option<FhirAttachment> });

fhir_struct!(FhirAttachment {
    content_type: Option<String>,
    data: Option<String>,
    title: Option<String>,
    size: Option<u64>,
});

// ---- What comes back ---------------------------------------------------------

fhir_struct!(
    /// A ClaimResponse as PAS fills it; everything precert does not read is
    /// ignored, so richer answers decode too.
    ClaimResponse {
        id: Option<String>,
        identifier: Vec<Identifier>,
        status: Option<String>,
        outcome: Option<String>,
        disposition: Option<String>,
        created: Option<String>,
        pre_auth_ref: Option<String>,
        pre_auth_period: Option<Period>,
        item: Vec<ResponseItem>,
        add_item: Vec<ResponseAddItem>,
        error: Vec<ResponseError>,
        process_note: Vec<ProcessNote>,
        communication_request: Vec<Reference>,
    }
);

fhir_struct!(ResponseItem {
    extension: Vec<Extension>,
    item_sequence: Option<u32>,
    adjudication: Vec<Adjudication>,
});

fhir_struct!(Adjudication {
    extension: Vec<Extension>,
    category: Option<CodeableConcept>,
    reason: Option<CodeableConcept>,
    value: Option<f64>,
});

fhir_struct!(ResponseAddItem {
    extension: Vec<Extension>,
    item_sequence: Vec<u32>,
    product_or_service: Option<CodeableConcept>,
    modifier: Vec<CodeableConcept>,
    quantity: Option<Quantity>,
    adjudication: Vec<Adjudication>,
});

fhir_struct!(ResponseError {
    extension: Vec<Extension>,
    item_sequence: Option<u32>,
    code: Option<CodeableConcept>,
});

fhir_struct!(ProcessNote { text: Option<String> });

fhir_struct!(OperationOutcome { issue: Vec<OutcomeIssue> });

fhir_struct!(OutcomeIssue {
    severity: Option<String>,
    code: Option<String>,
    details: Option<CodeableConcept>,
    diagnostics: Option<String>,
    expression: Vec<String>,
});

impl OutcomeIssue {
    /// What a person should read: the diagnostics, else the details.
    pub fn message(&self) -> String {
        let text = self
            .diagnostics
            .clone()
            .or_else(|| self.details.as_ref().and_then(|d| d.words().map(str::to_owned)))
            .unwrap_or_else(|| "no diagnostics given".into());
        match self.code.as_deref() {
            Some(code) => format!("{code}: {text}"),
            None => text,
        }
    }
}
