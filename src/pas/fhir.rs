//! The FHIR R4 data types and resources the PAS channel writes and reads.
//!
//! Hand-written rather than taken from a FHIR crate: the generated R4 crates
//! carry every resource of the specification and take minutes to compile on
//! two cores, while PAS needs a dozen. Fields are the R4 names; what precert
//! never sends is left out, and readers (`decode`) tolerate anything extra.

use serde::{Deserialize, Serialize};

pub const PAS: &str = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition";
pub const X12_306: &str = "https://codesystem.x12.org/005010/306";
pub const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
pub const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
pub const CPT: &str = "http://www.ama-assn.org/go/cpt";
pub const HCPCS: &str = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets";
pub const POS: &str = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set";

/// `Option`-typed fields are left out of the JSON when empty, as FHIR wants
/// (an element present with no value is invalid).
macro_rules! fhir_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            $($(#[$fm])* #[serde(default, skip_serializing_if = "crate::pas::fhir::is_empty")] pub $field: $ty,)*
        }
    };
}

/// Whether a field has nothing to say: `None`, an empty list.
#[doc(hidden)]
pub fn is_empty<T: IsEmpty>(v: &T) -> bool {
    v.is_empty()
}

#[doc(hidden)]
pub trait IsEmpty {
    fn is_empty(&self) -> bool;
}

impl<T> IsEmpty for Option<T> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }
}

impl<T> IsEmpty for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

fhir_struct!(Meta { profile: Vec<String> });

fhir_struct!(Coding {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
});

fhir_struct!(CodeableConcept {
    coding: Vec<Coding>,
    text: Option<String>,
});

fhir_struct!(Reference {
    reference: Option<String>,
    identifier: Option<Box<Identifier>>,
    display: Option<String>,
});

fhir_struct!(Identifier {
    #[serde(rename = "type")]
    kind: Option<CodeableConcept>,
    system: Option<String>,
    value: Option<String>,
    assigner: Option<Reference>,
});

fhir_struct!(Period {
    start: Option<String>,
    end: Option<String>,
});

fhir_struct!(Quantity {
    value: Option<f64>,
    unit: Option<String>,
    system: Option<String>,
    code: Option<String>,
});

fhir_struct!(HumanName {
    text: Option<String>,
    family: Option<String>,
    given: Vec<String>,
});

fhir_struct!(Address { text: Option<String> });

fhir_struct!(
    /// An extension with the value types PAS uses; nested extensions for
    /// complex ones such as `reviewAction`.
    Extension {
        url: Option<String>,
        extension: Vec<Extension>,
        value_string: Option<String>,
        value_code: Option<String>,
        value_boolean: Option<bool>,
        value_date: Option<String>,
        value_codeable_concept: Option<CodeableConcept>,
        value_reference: Option<Reference>,
        value_period: Option<Period>,
        value_quantity: Option<Quantity>,
        value_identifier: Option<Identifier>,
    }
);

impl Extension {
    /// The first nested extension whose URL is `url` or ends with `/url`.
    pub fn sub(&self, url: &str) -> Option<&Extension> {
        find_ext(&self.extension, url)
    }
}

/// The first extension whose URL is `url` or ends with `/url` (PAS
/// extensions are absolute, their parts relative).
pub fn find_ext<'a>(list: &'a [Extension], url: &str) -> Option<&'a Extension> {
    list.iter().find(|e| {
        e.url
            .as_deref()
            .is_some_and(|u| u == url || u.strip_suffix(url).is_some_and(|p| p.ends_with('/')))
    })
}

pub fn coding(system: &str, code: &str) -> Coding {
    Coding {
        system: Some(system.into()),
        code: Some(code.into()),
        display: None,
    }
}

pub fn concept(system: &str, code: &str) -> CodeableConcept {
    CodeableConcept {
        coding: vec![coding(system, code)],
        text: None,
    }
}

pub fn reference(url: &str) -> Reference {
    Reference {
        reference: Some(url.into()),
        ..Reference::default()
    }
}

pub fn identifier(system: &str, value: &str) -> Identifier {
    Identifier {
        system: Some(system.into()),
        value: Some(value.into()),
        ..Identifier::default()
    }
}

pub fn meta(profile: &str) -> Option<Meta> {
    Some(Meta {
        profile: vec![format!("{PAS}/{profile}")],
    })
}

pub fn ext(url: &str) -> Extension {
    Extension {
        url: Some(url.into()),
        ..Extension::default()
    }
}

impl CodeableConcept {
    /// The code of the first coding in `system`, or of the first coding at
    /// all when `system` is `None`.
    pub fn code_in(&self, system: Option<&str>) -> Option<&str> {
        self.coding
            .iter()
            .find(|c| system.is_none() || c.system.as_deref() == system)
            .and_then(|c| c.code.as_deref())
    }

    /// Human words for the concept: its text, else a coding's display.
    pub fn words(&self) -> Option<&str> {
        self.text
            .as_deref()
            .or_else(|| self.coding.iter().find_map(|c| c.display.as_deref()))
    }
}
