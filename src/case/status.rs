//! The life of a case as a state machine with explicit transitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a case stands. Stored by its `as_str()` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// Imported; nobody has decided yet whether the payer wants a pre-cert.
    New,
    /// The payer requires pre-certification for this service.
    Required,
    /// No pre-certification needed; nothing more to do.
    NotRequired,
    /// Complete and waiting for the submit job.
    Ready,
    /// A submission is under way (the intent is recorded before the final
    /// click, so a crash here is recoverable without a second submission).
    Submitting,
    /// Submitted; the payer is reviewing.
    Pending,
    /// The payer asked for more information.
    PendedForInfo,
    Approved,
    PartiallyApproved,
    Denied,
    Cancelled,
    /// An approval's validity ran out, or the payer closed the request.
    Expired,
    /// Automation cannot finish this case; a person must look at it.
    NeedsAttention,
}

use CaseStatus::*;

impl CaseStatus {
    pub const ALL: [CaseStatus; 13] = [
        New,
        Required,
        NotRequired,
        Ready,
        Submitting,
        Pending,
        PendedForInfo,
        Approved,
        PartiallyApproved,
        Denied,
        Cancelled,
        Expired,
        NeedsAttention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            New => "new",
            Required => "required",
            NotRequired => "not_required",
            Ready => "ready",
            Submitting => "submitting",
            Pending => "pending",
            PendedForInfo => "pended_for_info",
            Approved => "approved",
            PartiallyApproved => "partially_approved",
            Denied => "denied",
            Cancelled => "cancelled",
            Expired => "expired",
            NeedsAttention => "needs_attention",
        }
    }

    /// The payer has the request (it answered, or is reviewing it).
    pub fn is_payer_state(self) -> bool {
        matches!(self, Pending | PendedForInfo | Approved | PartiallyApproved | Denied)
    }

    /// The statuses this one may move to. The whole graph lives here, so a
    /// reader can check it against the payer workflow in one place.
    pub fn next(self) -> &'static [CaseStatus] {
        match self {
            New => &[Required, NotRequired, NeedsAttention, Cancelled],
            // A payer's rules can change, or a human can correct the call.
            Required => &[Ready, NotRequired, NeedsAttention, Cancelled],
            NotRequired => &[Required, Cancelled],
            Ready => &[Submitting, NeedsAttention, Cancelled],
            // Back to ready when the submission failed before the final
            // click; straight to a decision when an API decides at once.
            Submitting => &[
                Ready,
                Pending,
                PendedForInfo,
                Approved,
                PartiallyApproved,
                Denied,
                NeedsAttention,
            ],
            Pending => &[
                PendedForInfo,
                Approved,
                PartiallyApproved,
                Denied,
                Cancelled,
                Expired,
                NeedsAttention,
            ],
            // Pending again once the requested information went in.
            PendedForInfo => &[
                Pending,
                Approved,
                PartiallyApproved,
                Denied,
                Cancelled,
                Expired,
                NeedsAttention,
            ],
            Approved => &[Expired, Cancelled],
            // Resubmission (with more documents) for what was not granted.
            PartiallyApproved => &[Ready, Expired, Cancelled],
            Denied => &[Ready, Cancelled],
            Cancelled | Expired => &[],
            // A person resolves what automation could not and puts the case
            // back where it belongs.
            NeedsAttention => &[
                Required,
                NotRequired,
                Ready,
                Pending,
                PendedForInfo,
                Approved,
                PartiallyApproved,
                Denied,
                Cancelled,
                Expired,
            ],
        }
    }

    pub fn can_move_to(self, to: CaseStatus) -> bool {
        self.next().contains(&to)
    }

    /// No transition leaves this status.
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }

    /// The payer has not decided yet and the case is with the payer.
    pub fn is_awaiting_payer(self) -> bool {
        matches!(self, Pending | PendedForInfo)
    }

    /// Case data may still change by re-import: nothing has gone to a payer.
    pub fn is_before_submission(self) -> bool {
        matches!(self, New | Required | NotRequired | Ready)
    }
}

impl fmt::Display for CaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a case status; expected one of: {list}", list = CaseStatus::ALL.map(|s| s.as_str()).join(", "))]
pub struct UnknownStatus(pub String);

impl FromStr for CaseStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CaseStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s.trim())
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in CaseStatus::ALL {
            assert_eq!(s.as_str().parse::<CaseStatus>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert!("approve".parse::<CaseStatus>().is_err());
    }

    #[test]
    fn the_main_path_is_allowed_and_shortcuts_are_not() {
        let path = [
            New,
            Required,
            Ready,
            Submitting,
            Pending,
            PendedForInfo,
            Approved,
            Expired,
        ];
        for w in path.windows(2) {
            assert!(w[0].can_move_to(w[1]), "{} -> {}", w[0], w[1]);
        }
        assert!(!New.can_move_to(Approved));
        assert!(!Ready.can_move_to(Pending), "a case is submitted before it is pending");
        assert!(!Denied.can_move_to(Approved));
        assert!(Cancelled.is_final() && Expired.is_final());
        for s in CaseStatus::ALL {
            assert!(!s.can_move_to(s), "{s} must not move to itself");
            assert!(!s.can_move_to(New), "nothing goes back to new");
        }
    }
}
