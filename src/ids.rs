//! The two names a payer goes by, kept apart by type.
//!
//! - [`PayerKey`]: the key a practice binds a payer under (`[payers.KEY]` in
//!   its file). Cases, jobs, job leases, `/metrics` labels and escalations
//!   name the payer by it; it means something only together with its
//!   practice.
//! - [`PlaybookId`]: the playbook the binding runs (`playbook = "ID"`, by
//!   default the key itself). A payer's limits — session cap, pacing, circuit
//!   breaker — and its automation alerts belong to the playbook, because the
//!   portal behind it is one whichever practice uses it.
//!
//! Two practices may use different keys for one playbook; a key may name a
//! different playbook in each practice. Converting between them goes through
//! the practice's binding (`config::Practice::payers`), never by equality of
//! strings.

use std::fmt;

macro_rules! name {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(s: impl Into<String>) -> $ty {
                $ty(s.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $ty {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $ty {
            fn from(s: &str) -> $ty {
                $ty(s.to_owned())
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl From<&String> for $ty {
            fn from(s: &String) -> $ty {
                $ty(s.clone())
            }
        }

        impl From<String> for $ty {
            fn from(s: String) -> $ty {
                $ty(s)
            }
        }
    };
}

name!(
    /// A practice's key for a payer binding (see the module docs).
    PayerKey
);
name!(
    /// A playbook's id: what a payer's limits and alerts are keyed by.
    PlaybookId
);
