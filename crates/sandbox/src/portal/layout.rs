//! The wizard's element IDs and labels. Version 2 is the "changed portal" hazard: the same
//! pages with different IDs and labels, so automation can detect that the portal changed.

/// Element IDs and labels of one wizard layout. Version 2 is the "changed portal".
pub struct Layout {
    pub member_id: (&'static str, &'static str),
    pub member_dob: (&'static str, &'static str),
    pub lookup: (&'static str, &'static str),
    pub continue_to_service: (&'static str, &'static str),
    pub request_type: (&'static str, &'static str),
    pub urgency: (&'static str, &'static str, &'static str),
    pub setting: (&'static str, &'static str),
    /// Prefixes of the per-row code and units inputs (`{prefix}{row}`, rows from 1).
    pub code_prefix: (&'static str, &'static str),
    pub units_prefix: (&'static str, &'static str),
    pub diagnoses: (&'static str, &'static str),
    pub start_date: (&'static str, &'static str),
    pub end_date: (&'static str, &'static str),
    pub servicing_npi: (&'static str, &'static str),
    pub attestation: (&'static str, &'static str),
    pub service_submit: (&'static str, &'static str),
    pub frame: &'static str,
    pub file: (&'static str, &'static str),
    pub upload: (&'static str, &'static str),
    pub attachments_continue: (&'static str, &'static str),
    pub submit: (&'static str, &'static str),
}

pub const LAYOUT_V1: Layout = Layout {
    member_id: ("member-id", "Member ID"),
    member_dob: ("member-dob", "Date of Birth"),
    lookup: ("member-lookup-submit", "Check Eligibility"),
    continue_to_service: ("continue-to-service", "Continue"),
    request_type: ("request-type", "Request Type"),
    urgency: ("urgency", "urgency-standard", "urgency-urgent"),
    setting: ("service-setting", "Place of Service"),
    code_prefix: ("cpt-code-", "CPT/HCPCS Code"),
    units_prefix: ("units-", "Units"),
    diagnoses: ("diagnosis-codes", "ICD-10 Diagnosis Codes"),
    start_date: ("service-start-date", "Service Start Date"),
    end_date: ("service-end-date", "Service End Date"),
    servicing_npi: ("servicing-npi", "Servicing Provider NPI"),
    attestation: (
        "attestation",
        "I attest that the information provided is true and accurate.",
    ),
    service_submit: ("service-continue", "Continue"),
    frame: "attachments-frame",
    file: ("attachment-file", "Clinical document"),
    upload: ("attachment-upload", "Upload"),
    attachments_continue: ("attachments-continue", "Continue to Review"),
    submit: ("submit-request", "Submit Request"),
};

pub const LAYOUT_V2: Layout = Layout {
    member_id: ("subscriberId", "Subscriber ID"),
    member_dob: ("patientBirthDate", "Patient Birth Date"),
    lookup: ("btnVerifyCoverage", "Verify Coverage"),
    continue_to_service: ("btnNextStep", "Next"),
    request_type: ("authCategory", "Authorization Category"),
    urgency: ("priority", "priority-routine", "priority-expedited"),
    setting: ("serviceLocation", "Service Location"),
    code_prefix: ("procCode_", "Procedure Code"),
    units_prefix: ("qty_", "Quantity"),
    diagnoses: ("dxCodes", "Diagnosis (ICD-10-CM)"),
    start_date: ("fromDate", "From"),
    end_date: ("toDate", "Through"),
    servicing_npi: ("renderingNpi", "Rendering Provider NPI"),
    attestation: (
        "certifyInfo",
        "I certify the above is correct and supported by the medical record.",
    ),
    service_submit: ("btnSaveService", "Save & Next"),
    frame: "docUploadFrame",
    file: ("docFile", "Supporting documentation"),
    upload: ("btnAttach", "Attach File"),
    attachments_continue: ("btnToSummary", "Next: Summary"),
    submit: ("btnSubmitAuth", "Send to Health Plan"),
};

pub fn layout(version: u8) -> &'static Layout {
    if version == 2 {
        &LAYOUT_V2
    } else {
        &LAYOUT_V1
    }
}
