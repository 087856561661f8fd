//! The PAS request Bundle for a case: the `Claim` first, then every resource
//! it references, modelled on the Da Vinci PAS examples.
//!
//! Resource ids are UUIDs derived from the case's key and the resource's role,
//! so the same case always yields the same references; only the Bundle's own
//! identifier and the timestamps change between submissions.

use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};

use super::fhir::*;
use super::parties::{document, uuid, Entries, Parties};
use super::resources::*;
use crate::case::{CaseData, CodeSystem, ServiceLine, Setting, Urgency};
use crate::config::Practice;

/// The system of the Claim identifier that carries the practice's case ID;
/// the payer echoes it in the ClaimResponse, which is how an answer finds its
/// case again.
pub const CASE_ID_SYSTEM: &str = "urn:precert:case-id";
const SUBMISSION_SYSTEM: &str = "urn:precert:submission";
const CLAIM_TYPE: &str = "http://terminology.hl7.org/CodeSystem/claim-type";
const PRIORITY: &str = "http://terminology.hl7.org/CodeSystem/processpriority";
const LEVEL_OF_SERVICE: &str = "http://codesystem.x12.org/005010/1338";
const CERTIFICATION_TYPE: &str = "http://codesystem.x12.org/005010/1322";
const PAS_TEMP_CODES: &str = "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASTempCodes";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("case {case}: attachment {file}: cannot read {}: {source}", path.display())]
    Attachment {
        case: String,
        file: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("case {case}: attachment {file} changed since import (its SHA-256 no longer matches)")]
    AttachmentChanged { case: String, file: String },
}

/// What goes into a request besides the case itself.
pub struct Context<'a> {
    pub practice: &'a Practice,
    /// Where the case's attachments are kept (`Settings::data_dir`).
    pub data_dir: &'a Path,
    /// The insurer's name as the practice's payer binding gives it
    /// (`account.payer_name`); the payer's id otherwise.
    pub insurer_name: Option<&'a str>,
    pub now: DateTime<Utc>,
}

/// The `Claim/$submit` Bundle, with every attachment's content inline.
pub fn request_bundle(case: &CaseData, ctx: &Context<'_>) -> Result<Bundle, BundleError> {
    build(case, ctx, true)
}

/// The `Claim/$inquire` Bundle: the same Claim, its business identifier and
/// the resources it references, without the documents (the payer has them).
pub fn inquiry_bundle(case: &CaseData, ctx: &Context<'_>) -> Bundle {
    build(case, ctx, false).expect("an inquiry reads no files")
}

/// The orders of a case (a ServiceRequest or DeviceRequest per service
/// line) and the parties they reference (Patient, Coverage, insurer,
/// requesting Organization and Practitioner, servicing provider), as the
/// PAS request has them, without the Claim: what a Da Vinci CRD request
/// sends (`crate::crd::request`). Each entry's `fullUrl` is `urn:uuid:ID`
/// and its resource's id is ID.
pub fn order_entries(case: &CaseData, ctx: &Context<'_>) -> Vec<BundleEntry> {
    let mut entries = inquiry_bundle(case, ctx).entry;
    entries.retain(|e| !matches!(e.resource, Resource::Claim(_)));
    entries
}

fn code_system(line: &ServiceLine) -> &'static str {
    match line.code.system() {
        CodeSystem::Cpt => CPT,
        CodeSystem::Hcpcs => HCPCS,
    }
}

/// HCPCS E-codes are durable medical equipment, ordered by a DeviceRequest.
fn is_device(line: &ServiceLine) -> bool {
    line.code.system() == CodeSystem::Hcpcs && line.code.as_str().starts_with('E')
}

/// The CMS place-of-service code for a setting.
fn place_of_service(setting: Setting) -> &'static str {
    match setting {
        Setting::Office => "11",
        Setting::Home => "12",
        Setting::Inpatient => "21",
        Setting::Outpatient => "22",
        Setting::Emergency => "23",
        Setting::AmbulatorySurgery => "24",
    }
}

/// Facility stays and surgery are billed on institutional claims; the rest
/// on professional ones.
fn claim_type(setting: Setting) -> &'static str {
    match setting {
        Setting::Inpatient | Setting::AmbulatorySurgery => "institutional",
        _ => "professional",
    }
}

fn period(case: &CaseData) -> Period {
    Period {
        start: Some(case.service_dates.start.to_string()),
        end: Some(case.service_dates.end.to_string()),
    }
}

fn build(case: &CaseData, ctx: &Context<'_>, with_documents: bool) -> Result<Bundle, BundleError> {
    let stamp = ctx.now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let key = format!("{}/{}", case.practice_id, case.case_ref);
    let mut e = Entries(Vec::new());
    let claim_id = uuid(case, "Claim");
    // The Claim goes first; it is filled in once the references exist.
    e.0.push(BundleEntry {
        full_url: format!("urn:uuid:{claim_id}"),
        resource: Resource::Claim(Claim::default()),
    });

    let Parties {
        patient,
        insurer,
        requestor,
        coverage,
        requester,
        performer,
    } = Parties::add(case, ctx, &mut e);
    let diagnoses: Vec<CodeableConcept> = case.diagnoses.iter().map(|d| concept(ICD10CM, d.as_str())).collect();
    let mut items = Vec::new();
    for (i, line) in case.service_lines.iter().enumerate() {
        let n = i + 1;
        let id = uuid(case, &format!("Request{n}"));
        let code = concept(code_system(line), line.code.as_str());
        let resource = if is_device(line) {
            Resource::DeviceRequest(DeviceRequest {
                id: Some(id.clone()),
                meta: meta("profile-devicerequest"),
                status: Some("active".into()),
                intent: Some("order".into()),
                code_codeable_concept: Some(code.clone()),
                subject: Some(patient.clone()),
                occurrence_period: Some(period(case)),
                requester: Some(requester.clone()),
                performer: Some(performer.clone()),
                reason_code: diagnoses.clone(),
            })
        } else {
            Resource::ServiceRequest(ServiceRequest {
                id: Some(id.clone()),
                meta: meta("profile-servicerequest"),
                status: Some("active".into()),
                intent: Some("order".into()),
                code: Some(code.clone()),
                quantity_quantity: Some(units(line.units)),
                subject: Some(patient.clone()),
                occurrence_period: Some(period(case)),
                requester: Some(requester.clone()),
                performer: vec![performer.clone()],
                reason_code: diagnoses.clone(),
            })
        };
        let requested = e.add(&id, resource);
        let mut requested_ext = ext(&format!("{PAS}/extension-requestedService"));
        requested_ext.value_reference = Some(requested);
        let mut certification = ext(&format!("{PAS}/extension-certificationType"));
        certification.value_codeable_concept = Some(concept(CERTIFICATION_TYPE, "I"));
        items.push(ClaimItem {
            extension: vec![certification, requested_ext],
            sequence: Some(n as u32),
            care_team_sequence: vec![1, 2],
            // A Claim item points at up to four diagnoses.
            diagnosis_sequence: (1..=diagnoses.len().min(4) as u32).collect(),
            information_sequence: Vec::new(),
            product_or_service: Some(code),
            modifier: line
                .modifiers
                .iter()
                .map(|m| concept(code_system(line), m.as_str()))
                .collect(),
            serviced_period: Some(period(case)),
            location_codeable_concept: Some(concept(POS, place_of_service(case.setting))),
            quantity: Some(units(line.units)),
        });
    }

    let mut supporting = Vec::new();
    if with_documents {
        for (i, a) in case.attachments.iter().enumerate() {
            let id = uuid(case, &format!("Document{}", i + 1));
            let doc = document(&key, &id, a, ctx.data_dir, &patient)?;
            let r = e.add(&id, doc);
            supporting.push(ClaimSupportingInfo {
                sequence: Some(i as u32 + 1),
                category: Some(concept(PAS_TEMP_CODES, "additionalInformation")),
                value_reference: Some(r),
            });
        }
        let seqs: Vec<u32> = supporting.iter().filter_map(|s| s.sequence).collect();
        for item in &mut items {
            item.information_sequence = seqs.clone();
        }
    }

    let mut extension = Vec::new();
    if case.urgency == Urgency::Urgent {
        let mut level = ext(&format!("{PAS}/extension-levelOfServiceCode"));
        level.value_codeable_concept = Some(concept(LEVEL_OF_SERVICE, "U"));
        extension.push(level);
    }
    let mut case_id = identifier(CASE_ID_SYSTEM, &case.case_ref);
    case_id.assigner = Some(Reference {
        identifier: Some(Box::new(identifier(NPI, ctx.practice.npi.as_str()))),
        display: Some(ctx.practice.name.clone()),
        ..Reference::default()
    });
    e.0[0].resource = Resource::Claim(Claim {
        id: Some(claim_id),
        meta: meta("profile-claim"),
        extension,
        identifier: vec![case_id],
        status: Some("active".into()),
        kind: Some(concept(CLAIM_TYPE, claim_type(case.setting))),
        use_: Some("preauthorization".into()),
        patient: Some(patient),
        created: Some(stamp.clone()),
        insurer: Some(insurer),
        provider: Some(requestor),
        priority: Some(concept(
            PRIORITY,
            if case.urgency == Urgency::Urgent {
                "stat"
            } else {
                "normal"
            },
        )),
        care_team: vec![
            ClaimCareTeam {
                sequence: Some(1),
                provider: Some(performer),
                role: Some(concept(
                    "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                    "primary",
                )),
            },
            ClaimCareTeam {
                sequence: Some(2),
                provider: Some(requester),
                role: Some(concept(
                    "http://terminology.hl7.org/CodeSystem/claimcareteamrole",
                    "other",
                )),
            },
        ],
        supporting_info: supporting,
        diagnosis: diagnoses
            .into_iter()
            .enumerate()
            .map(|(i, d)| ClaimDiagnosis {
                sequence: Some(i as u32 + 1),
                diagnosis_codeable_concept: Some(d),
            })
            .collect(),
        insurance: vec![ClaimInsurance {
            sequence: Some(1),
            focal: Some(true),
            coverage: Some(coverage),
        }],
        item: items,
    });

    // A submission's own identifier: unique per sending, so a payer can tell
    // a retry of the same request from a new one.
    let submission = Sha256::digest(format!("{key}/{}", ctx.now.timestamp_nanos_opt().unwrap_or_default()));
    let submission: String = submission[..12].iter().map(|x| format!("{x:02x}")).collect();
    Ok(Bundle {
        id: None,
        meta: meta("profile-pas-request-bundle"),
        identifier: Some(identifier(SUBMISSION_SYSTEM, &submission)),
        kind: Some("collection".into()),
        timestamp: Some(stamp),
        entry: e.0,
    })
}

fn units(n: u32) -> Quantity {
    Quantity {
        value: Some(f64::from(n)),
        ..Quantity::default()
    }
}
