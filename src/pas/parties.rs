//! The resources a PAS Claim references: the patient and their coverage,
//! the insurer, the requesting organization and practitioner, the servicing
//! provider, and the attached documents.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::bundle::{BundleError, Context};
use super::fhir::*;
use super::resources::*;
use crate::case::{Attachment, CaseData, Provider};

const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const COVERAGE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/coverage-class";
const X12_98: &str = "https://codesystem.x12.org/005010/98";
/// The IRS's OID for employer identification numbers (tax IDs).
const TAX_ID_SYSTEM: &str = "urn:oid:2.16.840.1.113883.4.4";

/// A UUID (version 5 layout) from the case's key and a resource's role.
pub(super) fn uuid(case: &CaseData, role: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    for part in [case.practice_id.as_str(), "/", case.case_ref.as_str(), "/", role] {
        h.update(part.as_bytes());
    }
    let h = h.finalize();
    let mut b: [u8; 16] = h[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    // 8-4-4-4-12 hex digits.
    let mut id = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(x >> 4)]));
        id.push(char::from(HEX[usize::from(x & 0x0f)]));
    }
    id
}

/// The Bundle's entries as they are added.
pub(super) struct Entries(pub Vec<BundleEntry>);

impl Entries {
    /// Adds a resource under `urn:uuid:ID` and returns the reference to it.
    pub(super) fn add(&mut self, id: &str, resource: Resource) -> Reference {
        let url = format!("urn:uuid:{id}");
        self.0.push(BundleEntry {
            full_url: url.clone(),
            resource,
        });
        reference(&url)
    }
}

fn npi_and_tax(npi: &str, tax_id: &str) -> Vec<Identifier> {
    let mut tax = identifier(TAX_ID_SYSTEM, tax_id);
    tax.kind = Some(concept(V2_0203, "TAX"));
    vec![identifier(NPI, npi), tax]
}

/// References to the parties of a request, each already in the Bundle.
pub(super) struct Parties {
    pub patient: Reference,
    pub insurer: Reference,
    /// The practice, as requesting Organization (`Claim.provider`).
    pub requestor: Reference,
    pub coverage: Reference,
    /// The requesting Practitioner (orders the services).
    pub requester: Reference,
    /// Whoever provides the services.
    pub performer: Reference,
}

impl Parties {
    pub(super) fn add(case: &CaseData, ctx: &Context<'_>, e: &mut Entries) -> Parties {
        let p = &case.patient;
        let patient_id = uuid(case, "Patient");
        let mut member = identifier(
            &format!("urn:precert:payer:{}:member-id", case.coverage.payer),
            p.member_id.expose(),
        );
        member.kind = Some(concept(V2_0203, "MB"));
        let patient = e.add(
            &patient_id,
            Resource::Patient(Patient {
                id: Some(patient_id.clone()),
                meta: meta("profile-beneficiary"),
                identifier: vec![member],
                name: vec![HumanName {
                    text: None,
                    family: Some(p.name.expose_family().into()),
                    given: vec![p.name.expose_given().into()],
                }],
                birth_date: Some(p.birth_date.to_string()),
            }),
        );

        let insurer_id = uuid(case, "Insurer");
        let insurer_name = ctx.insurer_name.unwrap_or(&case.coverage.payer);
        let insurer = e.add(
            &insurer_id,
            organization(&insurer_id, "profile-insurer", "PR", insurer_name, Vec::new()),
        );

        let practice = ctx.practice;
        let org_id = uuid(case, "Requestor");
        let mut requestor_org = organization(
            &org_id,
            "profile-requestor",
            "X3",
            &practice.name,
            npi_and_tax(practice.npi.as_str(), practice.tax_id.as_str()),
        );
        let location = practice.location(&case.requesting_provider.location);
        if let (Resource::Organization(o), Some(address)) =
            (&mut requestor_org, location.and_then(|l| l.address.clone()))
        {
            o.address = vec![Address { text: Some(address) }];
        }
        let requestor = e.add(&org_id, requestor_org);

        let coverage_id = uuid(case, "Coverage");
        let class = match &p.group_number {
            Some(g) => CoverageClass {
                kind: Some(concept(COVERAGE_CLASS, "group")),
                value: Some(g.clone()),
                name: Some(case.coverage.plan.clone()),
            },
            None => CoverageClass {
                kind: Some(concept(COVERAGE_CLASS, "plan")),
                value: Some(case.coverage.plan.clone()),
                name: None,
            },
        };
        let coverage = e.add(
            &coverage_id,
            Resource::Coverage(Coverage {
                id: Some(coverage_id.clone()),
                meta: meta("profile-coverage"),
                status: Some("active".into()),
                subscriber_id: Some(p.member_id.expose().into()),
                beneficiary: Some(patient.clone()),
                payor: vec![insurer.clone()],
                class: vec![class],
            }),
        );

        let requester = practitioner(case, e, "Requester", &case.requesting_provider);
        // The servicing provider is the practice itself, the requesting
        // practitioner, or another organization (a surgery center, a lab).
        let servicing = &case.servicing_provider;
        let performer = if servicing.npi == practice.npi {
            requestor.clone()
        } else if servicing.npi == case.requesting_provider.npi {
            requester.clone()
        } else {
            let id = uuid(case, "Servicing");
            let ids = npi_and_tax(servicing.npi.as_str(), servicing.tax_id.as_str());
            e.add(&id, organization(&id, "profile-requestor", "SJ", &servicing.name, ids))
        };

        Parties {
            patient,
            insurer,
            requestor,
            coverage,
            requester,
            performer,
        }
    }
}

fn organization(id: &str, profile: &str, kind: &str, name: &str, ids: Vec<Identifier>) -> Resource {
    Resource::Organization(Organization {
        id: Some(id.into()),
        meta: meta(profile),
        identifier: ids,
        active: Some(true),
        kind: vec![concept(X12_98, kind)],
        name: Some(name.into()),
        address: Vec::new(),
    })
}

fn practitioner(case: &CaseData, e: &mut Entries, role: &str, p: &Provider) -> Reference {
    let id = uuid(case, role);
    e.add(
        &id,
        Resource::Practitioner(Practitioner {
            id: Some(id.clone()),
            meta: meta("profile-practitioner"),
            identifier: npi_and_tax(p.npi.as_str(), p.tax_id.as_str()),
            name: vec![HumanName {
                text: Some(p.name.clone()),
                ..HumanName::default()
            }],
        }),
    )
}

pub(super) fn document(
    key: &str,
    id: &str,
    a: &Attachment,
    data_dir: &Path,
    patient: &Reference,
) -> Result<Resource, BundleError> {
    let path = data_dir.join(&a.stored_path);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Attachment {
        case: key.into(),
        file: a.file_name.clone(),
        path: path.clone(),
        source,
    })?;
    let digest = crate::files::sha256_hex(&bytes);
    if digest != a.sha256 {
        return Err(BundleError::AttachmentChanged {
            case: key.into(),
            file: a.file_name.clone(),
        });
    }
    Ok(Resource::DocumentReference(DocumentReference {
        id: Some(id.into()),
        meta: None,
        status: Some("current".into()),
        subject: Some(patient.clone()),
        description: Some(a.file_name.clone()),
        content: vec![DocumentContent {
            attachment: Some(FhirAttachment {
                content_type: Some(a.media_type.clone()),
                data: Some(data_encoding::BASE64.encode(&bytes)),
                title: Some(a.file_name.clone()),
                size: Some(bytes.len() as u64),
            }),
        }],
    }))
}
