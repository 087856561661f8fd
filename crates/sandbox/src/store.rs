//! The payer's record of prior-authorization requests, shared by the portal and the API.
//!
//! Every lookup the portal, API or admin makes on a hot path goes through an index
//! (reference, member, provider, claim identifier, submission count, due time), so the
//! sandbox stays fast with thousands of requests.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Outcome, Scenario};

/// A request's status, shown with the portal's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InReview,
    Pended,
    Approved,
    PartiallyApproved,
    Denied,
    Cancelled,
    Expired,
}

impl Status {
    /// The wording the portal shows.
    pub fn label(self) -> &'static str {
        match self {
            Status::InReview => "In Review",
            Status::Pended => "Pended - Additional Information Requested",
            Status::Approved => "Approved",
            Status::PartiallyApproved => "Partially Approved",
            Status::Denied => "Denied",
            Status::Cancelled => "Cancelled",
            Status::Expired => "Expired",
        }
    }

    /// Whether a decision letter exists for this status.
    pub fn has_letter(self) -> bool {
        matches!(self, Status::Approved | Status::PartiallyApproved | Status::Denied)
    }

    /// Whether the payer has not decided yet.
    pub fn is_open(self) -> bool {
        matches!(self, Status::InReview | Status::Pended)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How the request reached the payer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Portal,
    Api,
}

/// X12 306 review action codes used per service line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ReviewAction {
    /// Certified in total.
    A1,
    /// Partially certified.
    A2,
    /// Not certified (denied).
    A3,
    /// Pended.
    A4,
    /// Modified.
    A6,
    /// Cancelled.
    C,
}

impl ReviewAction {
    pub fn code(self) -> &'static str {
        match self {
            ReviewAction::A1 => "A1",
            ReviewAction::A2 => "A2",
            ReviewAction::A3 => "A3",
            ReviewAction::A4 => "A4",
            ReviewAction::A6 => "A6",
            ReviewAction::C => "C",
        }
    }

    pub fn display(self) -> &'static str {
        match self {
            ReviewAction::A1 => "Certified in total",
            ReviewAction::A2 => "Certified - partial",
            ReviewAction::A3 => "Not Certified",
            ReviewAction::A4 => "Pended",
            ReviewAction::A6 => "Modified",
            ReviewAction::C => "Cancelled",
        }
    }
}

/// One requested procedure (CPT/HCPCS) with its units, and what was granted.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceLine {
    pub code: String,
    pub units: u32,
    pub approved_units: Option<u32>,
    pub action: ReviewAction,
}

/// A document uploaded with the request.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub file_name: String,
    pub content_type: String,
    pub size_bytes: usize,
    pub uploaded_at: DateTime<Utc>,
}

/// A specific denial reason: payer code and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenialReason {
    pub code: String,
    pub text: String,
}

/// One entry of a request's status history.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEvent {
    pub at: DateTime<Utc>,
    pub status: Status,
    pub note: String,
}

/// A prior-authorization request as the payer holds it.
#[derive(Debug, Clone, Serialize)]
pub struct AuthRequest {
    /// Index in the store; internal.
    #[serde(skip)]
    pub id: usize,
    /// The payer's reference number, `SBX-` + 8 digits.
    pub reference: String,
    pub channel: Channel,
    /// Portal username or API client id.
    pub submitted_by: String,
    pub provider_npi: String,
    pub provider_name: String,
    pub member_id: String,
    pub member_name: String,
    pub request_type: String,
    /// `standard` or `urgent`.
    pub urgency: String,
    pub setting: String,
    pub lines: Vec<ServiceLine>,
    pub diagnoses: Vec<String>,
    pub service_start: NaiveDate,
    pub service_end: NaiveDate,
    pub servicing_npi: String,
    pub attachments: Vec<Attachment>,
    pub submitted_at: DateTime<Utc>,
    pub status: Status,
    pub status_label: &'static str,
    pub decided_at: Option<DateTime<Utc>>,
    pub auth_number: Option<String>,
    pub valid_from: Option<NaiveDate>,
    pub valid_to: Option<NaiveDate>,
    pub denial: Option<DenialReason>,
    pub information_requested: Option<String>,
    pub information_received_at: Option<DateTime<Utc>>,
    /// When a timed decision is due, if one is scheduled.
    pub decision_due_at: Option<DateTime<Utc>>,
    /// The PAS Claim.identifier value, for requests that came through the API.
    pub claim_identifier: Option<String>,
    pub history: Vec<StatusEvent>,
    /// Seconds from information arrival to approval, from a `pend` scenario.
    #[serde(skip)]
    approve_after_information: Option<u64>,
}

impl AuthRequest {
    pub fn codes(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.code.as_str()).collect()
    }

    pub fn approved_units_total(&self) -> Option<u32> {
        if matches!(
            self.status,
            Status::Approved | Status::PartiallyApproved | Status::Expired
        ) {
            Some(self.lines.iter().filter_map(|l| l.approved_units).sum())
        } else {
            None
        }
    }
}

/// What a new request carries, from the portal wizard or a PAS bundle.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub channel: Channel,
    pub submitted_by: String,
    pub provider_npi: String,
    pub provider_name: String,
    pub member_id: String,
    pub member_name: String,
    pub request_type: String,
    pub urgency: String,
    pub setting: String,
    /// (code, units) per service line.
    pub lines: Vec<(String, u32)>,
    pub diagnoses: Vec<String>,
    pub service_start: NaiveDate,
    pub service_end: NaiveDate,
    pub servicing_npi: String,
    pub attachments: Vec<Attachment>,
    pub claim_identifier: Option<String>,
}

/// A decision made by the admin API or a scenario rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Deny {
        reason_code: String,
        reason_text: String,
    },
    Pend {
        information_requested: String,
    },
    /// Approve `approved_units` of the line with `code` (the first line if absent);
    /// other lines are approved in full.
    Partial {
        approved_units: u32,
        #[serde(default)]
        code: Option<String>,
    },
    Cancel,
    Expire,
}

/// A status change, reported so subscribers can be notified.
#[derive(Debug, Clone)]
pub struct Transition {
    pub id: usize,
    pub from: Status,
    pub to: Status,
}

/// Why a store operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no request with reference {0}")]
    NotFound(String),
    #[error("request {0} is not pended for information")]
    NotPended(String),
}

/// Scenario rules indexed by member and by code; the first rule in file order wins.
#[derive(Debug, Clone, Default)]
pub struct Scenarios {
    rules: Vec<Scenario>,
    by_member: HashMap<String, usize>,
    by_code: HashMap<String, usize>,
}

impl Scenarios {
    pub fn new(rules: Vec<Scenario>) -> Self {
        let mut by_member = HashMap::new();
        let mut by_code = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            if let Some(m) = &r.member {
                by_member.entry(m.clone()).or_insert(i);
            } else if let Some(c) = &r.code {
                by_code.entry(c.clone()).or_insert(i);
            }
        }
        Self {
            rules,
            by_member,
            by_code,
        }
    }

    /// The rule that says what the CRD service answers about one order:
    /// the member's rule with a `crd` answer, else the first code rule
    /// with one for the order's code.
    pub fn crd_for(&self, member_id: &str, code: &str) -> Option<&Scenario> {
        self.rules
            .iter()
            .find(|r| r.crd.is_some() && r.member.as_deref() == Some(member_id))
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.crd.is_some() && r.member.is_none() && r.code.as_deref() == Some(code))
            })
    }

    /// The rule for a request, with the code it matched on (if by code).
    fn find(&self, member_id: &str, codes: &[&str]) -> Option<(&Scenario, Option<String>)> {
        if let Some(&i) = self.by_member.get(member_id) {
            let rule = &self.rules[i];
            return Some((rule, rule.code.clone()));
        }
        codes
            .iter()
            .filter_map(|c| self.by_code.get(*c).map(|&i| (i, c)))
            .min_by_key(|(i, _)| *i)
            .map(|(i, c)| (&self.rules[i], Some((*c).to_string())))
    }
}

/// Key of the per-member, per-code, per-service-date submission count.
type CountKey = (String, String, NaiveDate);

/// The request store with its indices.
#[derive(Debug, Default)]
pub struct Store {
    requests: Vec<AuthRequest>,
    by_reference: HashMap<String, usize>,
    by_member: HashMap<String, Vec<usize>>,
    by_provider: HashMap<String, Vec<usize>>,
    by_claim: HashMap<(String, String), usize>,
    counts: HashMap<CountKey, u32>,
    due: BTreeMap<(DateTime<Utc>, usize), Decision>,
    /// Granted authorizations by last valid day; they expire the day after.
    expiries: BTreeMap<(NaiveDate, usize), ()>,
}

/// The first reference and authorization numbers; arbitrary, to look like a real payer's.
const FIRST_REFERENCE: usize = 26_040_117;
const FIRST_AUTH: usize = 73_100_452;

impl Store {
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn get(&self, id: usize) -> Option<&AuthRequest> {
        self.requests.get(id)
    }

    pub fn all(&self) -> &[AuthRequest] {
        &self.requests
    }

    pub fn by_reference(&self, reference: &str) -> Option<&AuthRequest> {
        self.by_reference.get(reference.trim()).map(|&i| &self.requests[i])
    }

    pub fn id_of(&self, reference: &str) -> Option<usize> {
        self.by_reference.get(reference.trim()).copied()
    }

    pub fn by_member(&self, member_id: &str) -> impl Iterator<Item = &AuthRequest> {
        self.by_member
            .get(member_id.trim())
            .into_iter()
            .flatten()
            .map(|&i| &self.requests[i])
    }

    /// Ids of the provider's requests, oldest first.
    pub fn provider_ids(&self, npi: &str) -> &[usize] {
        self.by_provider.get(npi).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn by_claim_identifier(&self, client: &str, identifier: &str) -> Option<&AuthRequest> {
        self.by_claim
            .get(&(client.to_string(), identifier.to_string()))
            .map(|&i| &self.requests[i])
    }

    /// How many requests were submitted for this member, code and service start date.
    pub fn count(&self, member_id: &str, code: &str, service_date: NaiveDate) -> u32 {
        self.counts
            .get(&(member_id.to_string(), code.to_string(), service_date))
            .copied()
            .unwrap_or(0)
    }

    /// Records a new request and applies the first matching scenario rule.
    pub fn submit(&mut self, new: NewRequest, now: DateTime<Utc>, scenarios: &Scenarios) -> (usize, Vec<Transition>) {
        let id = self.requests.len();
        let reference = format!("SBX-{}", FIRST_REFERENCE + id);
        for (code, _) in &new.lines {
            *self
                .counts
                .entry((new.member_id.clone(), code.clone(), new.service_start))
                .or_default() += 1;
        }
        let request = AuthRequest {
            id,
            reference: reference.clone(),
            channel: new.channel,
            submitted_by: new.submitted_by,
            provider_npi: new.provider_npi.clone(),
            provider_name: new.provider_name,
            member_id: new.member_id.clone(),
            member_name: new.member_name,
            request_type: new.request_type,
            urgency: new.urgency,
            setting: new.setting,
            lines: new
                .lines
                .into_iter()
                .map(|(code, units)| ServiceLine {
                    code,
                    units,
                    approved_units: None,
                    action: ReviewAction::A4,
                })
                .collect(),
            diagnoses: new.diagnoses,
            service_start: new.service_start,
            service_end: new.service_end,
            servicing_npi: new.servicing_npi,
            attachments: new.attachments,
            submitted_at: now,
            status: Status::InReview,
            status_label: Status::InReview.label(),
            decided_at: None,
            auth_number: None,
            valid_from: None,
            valid_to: None,
            denial: None,
            information_requested: None,
            information_received_at: None,
            decision_due_at: None,
            claim_identifier: new.claim_identifier.clone(),
            history: vec![StatusEvent {
                at: now,
                status: Status::InReview,
                note: "Request received.".into(),
            }],
            approve_after_information: None,
        };
        self.by_reference.insert(reference, id);
        self.by_member.entry(new.member_id.clone()).or_default().push(id);
        self.by_provider.entry(new.provider_npi).or_default().push(id);
        if let Some(ident) = new.claim_identifier {
            self.by_claim.insert((request.submitted_by.clone(), ident), id);
        }
        let codes: Vec<String> = request.lines.iter().map(|l| l.code.clone()).collect();
        self.requests.push(request);

        let mut transitions = Vec::new();
        let code_refs: Vec<&str> = codes.iter().map(String::as_str).collect();
        let rule = scenarios
            .find(&new.member_id, &code_refs)
            .and_then(|(r, c)| r.outcome.clone().map(|o| (o, c)));
        match rule {
            Some((Outcome::Approve { after_seconds: 0 }, _)) => {
                transitions.extend(self.apply(id, Decision::Approve, now));
            }
            Some((Outcome::Approve { after_seconds }, _)) => {
                self.schedule(id, now + secs(after_seconds), Decision::Approve);
            }
            Some((
                Outcome::Pend {
                    information_requested,
                    approve_after_seconds,
                },
                _,
            )) => {
                self.requests[id].approve_after_information = Some(approve_after_seconds);
                transitions.extend(self.apply(id, Decision::Pend { information_requested }, now));
            }
            Some((
                Outcome::Deny {
                    reason_code,
                    reason_text,
                },
                _,
            )) => transitions.extend(self.apply(
                id,
                Decision::Deny {
                    reason_code,
                    reason_text,
                },
                now,
            )),
            Some((Outcome::Partial { approved_units }, code)) => {
                transitions.extend(self.apply(id, Decision::Partial { approved_units, code }, now))
            }
            None => {}
        }
        (id, transitions)
    }

    fn schedule(&mut self, id: usize, at: DateTime<Utc>, decision: Decision) {
        self.unschedule(id);
        self.due.insert((at, id), decision);
        self.requests[id].decision_due_at = Some(at);
    }

    fn unschedule(&mut self, id: usize) {
        if let Some(at) = self.requests[id].decision_due_at.take() {
            self.due.remove(&(at, id));
        }
    }

    /// Decides a request by reference (admin API).
    pub fn decide(
        &mut self,
        reference: &str,
        decision: Decision,
        now: DateTime<Utc>,
    ) -> Result<Vec<Transition>, StoreError> {
        let id = self
            .id_of(reference)
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))?;
        Ok(self.apply(id, decision, now).into_iter().collect())
    }

    /// Records that the information a pended request waits for has arrived; the request
    /// goes back to review and, under a `pend` scenario, is approved after its delay.
    pub fn information_received(
        &mut self,
        reference: &str,
        attachments: Vec<Attachment>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Transition>, StoreError> {
        let id = self
            .id_of(reference)
            .ok_or_else(|| StoreError::NotFound(reference.to_string()))?;
        if self.requests[id].status != Status::Pended {
            return Err(StoreError::NotPended(reference.to_string()));
        }
        let r = &mut self.requests[id];
        r.attachments.extend(attachments);
        r.information_received_at = Some(now);
        let from = r.status;
        set_status(r, Status::InReview, now, "Additional information received.");
        if let Some(after) = r.approve_after_information {
            self.schedule(id, now + secs(after), Decision::Approve);
        }
        Ok(vec![Transition {
            id,
            from,
            to: Status::InReview,
        }])
    }

    /// Applies every scheduled decision due at or before `now`.
    pub fn run_due(&mut self, now: DateTime<Utc>) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), decision) = entry.remove_entry();
            self.requests[id].decision_due_at = None;
            out.extend(self.apply(id, decision, now));
        }
        let today = now.date_naive();
        while let Some(entry) = self.expiries.first_entry() {
            if entry.key().0 >= today {
                break;
            }
            let ((_, id), ()) = entry.remove_entry();
            out.extend(self.apply(id, Decision::Expire, now));
        }
        out
    }

    /// Applies every scheduled decision now, however far off it is.
    pub fn run_all_scheduled(&mut self, now: DateTime<Utc>) -> Vec<Transition> {
        let mut out = Vec::new();
        while let Some(((_, id), decision)) = self.due.pop_first() {
            self.requests[id].decision_due_at = None;
            out.extend(self.apply(id, decision, now));
        }
        out
    }

    /// When the next scheduled decision is due.
    pub fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.keys().next().map(|(at, _)| *at)
    }

    fn apply(&mut self, id: usize, decision: Decision, now: DateTime<Utc>) -> Option<Transition> {
        self.unschedule(id);
        if let Some(valid_to) = self.requests[id].valid_to {
            self.expiries.remove(&(valid_to, id));
        }
        let auth_number = format!("SHP{}", FIRST_AUTH + id);
        let r = &mut self.requests[id];
        let from = r.status;
        let to = match decision {
            Decision::Approve => {
                for l in &mut r.lines {
                    l.approved_units = Some(l.units);
                    l.action = ReviewAction::A1;
                }
                grant(r, auth_number, now);
                set_status(r, Status::Approved, now, "Approved as requested.");
                Status::Approved
            }
            Decision::Partial { approved_units, code } => {
                let target = code
                    .as_deref()
                    .and_then(|c| r.lines.iter().position(|l| l.code == c))
                    .unwrap_or(0);
                for (i, l) in r.lines.iter_mut().enumerate() {
                    if i == target && approved_units < l.units {
                        l.approved_units = Some(approved_units);
                        l.action = ReviewAction::A6;
                    } else {
                        l.approved_units = Some(l.units);
                        l.action = ReviewAction::A1;
                    }
                }
                grant(r, auth_number, now);
                // Granting at least what was asked is a full approval, not a partial one.
                if r.lines.iter().any(|l| l.action == ReviewAction::A6) {
                    let note = format!("Partially approved: {approved_units} units.");
                    set_status(r, Status::PartiallyApproved, now, &note);
                    Status::PartiallyApproved
                } else {
                    set_status(r, Status::Approved, now, "Approved as requested.");
                    Status::Approved
                }
            }
            Decision::Deny {
                reason_code,
                reason_text,
            } => {
                for l in &mut r.lines {
                    l.approved_units = Some(0);
                    l.action = ReviewAction::A3;
                }
                r.decided_at = Some(now);
                r.auth_number = None;
                r.valid_from = None;
                r.valid_to = None;
                let note = format!("Denied: {reason_code} {reason_text}");
                r.denial = Some(DenialReason {
                    code: reason_code,
                    text: reason_text,
                });
                set_status(r, Status::Denied, now, &note);
                Status::Denied
            }
            Decision::Pend { information_requested } => {
                for l in &mut r.lines {
                    l.action = ReviewAction::A4;
                }
                let note = format!("Additional information requested: {information_requested}");
                r.information_requested = Some(information_requested);
                set_status(r, Status::Pended, now, &note);
                Status::Pended
            }
            Decision::Cancel => {
                for l in &mut r.lines {
                    l.action = ReviewAction::C;
                }
                set_status(r, Status::Cancelled, now, "Cancelled.");
                Status::Cancelled
            }
            Decision::Expire => {
                set_status(r, Status::Expired, now, "Authorization expired.");
                Status::Expired
            }
        };
        if matches!(to, Status::Approved | Status::PartiallyApproved) {
            if let Some(valid_to) = self.requests[id].valid_to {
                self.expiries.insert((valid_to, id), ());
            }
        }
        (from != to).then_some(Transition { id, from, to })
    }
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

fn grant(r: &mut AuthRequest, auth_number: String, now: DateTime<Utc>) {
    r.decided_at = Some(now);
    r.auth_number = Some(auth_number);
    r.valid_from = Some(r.service_start);
    // Authorizations run at least 90 days past the requested start, like most plans'.
    r.valid_to = Some(r.service_end.max(r.service_start + Duration::days(90)));
    r.denial = None;
}

fn set_status(r: &mut AuthRequest, status: Status, now: DateTime<Utc>, note: &str) {
    r.status = status;
    r.status_label = status.label();
    r.history.push(StatusEvent {
        at: now,
        status,
        note: note.to_string(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;

    fn new_request(member: &str, code: &str, units: u32) -> NewRequest {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        NewRequest {
            channel: Channel::Portal,
            submitted_by: "lakeside.precert".into(),
            provider_npi: "1245319599".into(),
            provider_name: "Lakeside Orthopedics".into(),
            member_id: member.into(),
            member_name: "X".into(),
            request_type: "procedure".into(),
            urgency: "standard".into(),
            setting: "outpatient".into(),
            lines: vec![(code.into(), units)],
            diagnoses: vec!["M17.11".into()],
            service_start: day,
            service_end: day,
            servicing_npi: "1245319599".into(),
            attachments: vec![],
            claim_identifier: None,
        }
    }

    fn scenarios() -> Scenarios {
        Scenarios::new(SandboxConfig::default_demo().scenarios)
    }

    #[test]
    fn demo_scenarios_decide_as_configured() {
        let mut s = Store::default();
        let now = Utc::now();
        let sc = scenarios();
        let (mri, _) = s.submit(new_request("SBX100200301", "73721", 1), now, &sc);
        let (tka, _) = s.submit(new_request("SBX100200302", "27447", 1), now, &sc);
        let (lumbar, _) = s.submit(new_request("SBX100200303", "72148", 1), now, &sc);
        let (pt, _) = s.submit(new_request("SBX100200305", "97110", 12), now, &sc);
        let (cpap, _) = s.submit(new_request("SBX100200306", "E0601", 1), now, &sc);
        let (other, _) = s.submit(new_request("SBX100200306", "99999", 1), now, &sc);
        assert_eq!(s.get(mri).unwrap().status, Status::InReview);
        assert_eq!(s.get(tka).unwrap().status, Status::Pended);
        assert_eq!(s.get(lumbar).unwrap().status, Status::Denied);
        assert_eq!(s.get(lumbar).unwrap().denial.as_ref().unwrap().code, "CLIN-06");
        assert_eq!(s.get(pt).unwrap().status, Status::PartiallyApproved);
        assert_eq!(s.get(pt).unwrap().approved_units_total(), Some(8));
        assert_eq!(s.get(cpap).unwrap().status, Status::Approved);

        assert!(s.run_due(now + Duration::seconds(19)).is_empty());
        let t = s.run_due(now + Duration::seconds(20));
        assert_eq!(t.len(), 1);
        assert_eq!(s.get(mri).unwrap().status, Status::Approved);

        let tka_ref = s.get(tka).unwrap().reference.clone();
        s.information_received(&tka_ref, vec![], now).unwrap();
        assert_eq!(s.get(tka).unwrap().status, Status::InReview);
        s.run_due(now + Duration::seconds(20));
        assert_eq!(s.get(tka).unwrap().status, Status::Approved);
        assert_eq!(s.get(other).unwrap().status, Status::InReview);
    }

    #[test]
    fn submissions_are_counted_per_member_code_and_date() {
        let mut s = Store::default();
        let sc = scenarios();
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        for _ in 0..3 {
            s.submit(new_request("SBX100200301", "99999", 1), Utc::now(), &sc);
        }
        assert_eq!(s.count("SBX100200301", "99999", day), 3);
        assert_eq!(s.count("SBX100200302", "99999", day), 0);

        // The same member and code on another date is another count.
        let later = day + Duration::days(7);
        let mut other = new_request("SBX100200301", "99999", 1);
        other.service_start = later;
        other.service_end = later;
        s.submit(other, Utc::now(), &sc);
        assert_eq!(s.count("SBX100200301", "99999", day), 3);
        assert_eq!(s.count("SBX100200301", "99999", later), 1);
        let starts: Vec<NaiveDate> = s.by_member("SBX100200301").map(|r| r.service_start).collect();
        assert_eq!(starts, vec![day, day, day, later]);
    }

    #[test]
    fn thousands_of_requests_stay_indexed() {
        let mut s = Store::default();
        let sc = scenarios();
        let now = Utc::now();
        for i in 0..5000 {
            let member = format!("M{}", i % 50);
            let code = if i % 2 == 0 { "73721" } else { "99999" };
            s.submit(new_request(&member, code, 1), now, &sc);
        }
        assert_eq!(s.len(), 5000);
        assert_eq!(s.provider_ids("1245319599").len(), 5000);
        assert_eq!(s.by_member("M7").count(), 100);
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(s.count("M0", "73721", day), 100);
        let last = s.get(4999).unwrap().reference.clone();
        assert_eq!(s.by_reference(&last).unwrap().id, 4999);
        assert_eq!(s.run_due(now + Duration::seconds(20)).len(), 2500);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn member_rules_win_over_code_rules_and_small_partials_are_full_approvals() {
        let mut rules = SandboxConfig::default_demo().scenarios;
        rules.push(Scenario {
            code: None,
            member: Some("SBX100200306".into()),
            description: String::new(),
            outcome: Some(Outcome::Deny {
                reason_code: "MEM-01".into(),
                reason_text: "Member rule.".into(),
            }),
            crd: None,
        });
        let sc = Scenarios::new(rules);
        let mut s = Store::default();
        let now = Utc::now();
        let (cpap, _) = s.submit(new_request("SBX100200306", "E0601", 1), now, &sc);
        assert_eq!(s.get(cpap).unwrap().denial.as_ref().unwrap().code, "MEM-01");
        let (pt, _) = s.submit(new_request("SBX100200305", "97110", 6), now, &sc);
        assert_eq!(s.get(pt).unwrap().status, Status::Approved);
        assert_eq!(s.get(pt).unwrap().lines[0].action, ReviewAction::A1);
    }

    #[test]
    fn approvals_expire_the_day_after_their_last_valid_day() {
        let mut s = Store::default();
        let now = Utc::now();
        let (cpap, _) = s.submit(new_request("SBX100200306", "E0601", 1), now, &scenarios());
        let valid_to = s.get(cpap).unwrap().valid_to.unwrap();
        let last_day = valid_to.and_hms_opt(12, 0, 0).unwrap().and_utc();
        assert!(s.run_due(last_day).is_empty());
        let t = s.run_due(last_day + Duration::days(1));
        assert_eq!(t.len(), 1);
        assert_eq!(s.get(cpap).unwrap().status, Status::Expired);
        assert_eq!(
            s.get(cpap)
                .unwrap()
                .auth_number
                .as_deref()
                .map(|a| a.starts_with("SHP")),
            Some(true)
        );
    }

    #[test]
    fn admin_decision_cancels_a_scheduled_one() {
        let mut s = Store::default();
        let now = Utc::now();
        let (id, _) = s.submit(new_request("SBX100200301", "73721", 1), now, &scenarios());
        let reference = s.get(id).unwrap().reference.clone();
        s.decide(
            &reference,
            Decision::Deny {
                reason_code: "X".into(),
                reason_text: "Y".into(),
            },
            now,
        )
        .unwrap();
        assert!(s.run_all_scheduled(now).is_empty());
        assert_eq!(s.get(id).unwrap().status, Status::Denied);
    }
}
