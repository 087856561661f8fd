//! Escalations: the rules that decide a person must act (`rules`), the
//! mail that tells them (`render`), and the sender that delivers the
//! ledger's outbox with retries (`send_due`, `sender`).
//!
//! Status-driven escalations (denied, pended, partially approved, needs
//! attention) open inside the ledger transaction of the status change,
//! through [`Escalator`] as the ledger's [`EscalationHook`]. Time-driven
//! ones (a deadline near or past, a service date near, a missing letter)
//! open in the `escalations` job's scan; so do status-driven ones the hook
//! missed (cases from before escalations were configured).

pub mod render;
pub mod rules;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;

use crate::case::CaseRecord;
use crate::config::{Practice, Settings};
use crate::mail::{Mailer, OutgoingMail, SendErrorKind};
use crate::playbook::{Action, Playbook};
use crate::store::{
    Advance, ClaimedMail, Escalation, EscalationHook, Ledger, NewEscalation, NextCheck, RulesCursor, SendOutcome, Step,
    StoreError,
};
use render::MailContext;
use rules::{PatientDetails, RuleSet};

macro_rules! reasons {
    ($($v:ident = $s:literal, $title:literal, $sev:literal, $aud:ident;)*) => {
        /// Why an escalation opened.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason { $($v),* }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$v),*];
            pub fn as_str(self) -> &'static str { match self { $(Reason::$v => $s),* } }
            /// A heading for subjects and digests.
            pub fn title(self) -> &'static str { match self { $(Reason::$v => $title),* } }
            /// Higher is more urgent.
            pub fn severity(self) -> i64 { match self { $(Reason::$v => $sev),* } }
            /// Who hears of it first.
            pub fn audience(self) -> Audience { match self { $(Reason::$v => Audience::$aud),* } }
        }

        impl FromStr for Reason {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s { $($s => Ok(Reason::$v),)* o => Err(format!("`{o}` is not an escalation reason")) }
            }
        }
    };
}

reasons! {
    Denied = "denied", "Denied", 90, Supervisors;
    Stalled = "stalled", "Past the payer's deadline", 85, Supervisors;
    ServiceDateNear = "service_date_near", "Service date near without approval", 80, Supervisors;
    PendedForInfo = "pended_for_info", "More information requested", 70, Supervisors;
    NeedsAttention = "needs_attention", "Automation needs a person", 60, Operations;
    PayerPaused = "payer_paused", "Payer paused after repeated failures", 60, Operations;
    PracticeDisabled = "practice_disabled", "Practice disabled: its configuration does not check", 65, Operations;
    PartiallyApproved = "partially_approved", "Partially approved", 50, Supervisors;
    StallWarning = "stall_warning", "Nearing the payer's deadline", 40, Supervisors;
    LetterMissing = "letter_missing", "Decision without its letter", 30, Supervisors;
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an escalation goes to first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Supervisors, then managers.
    Supervisors,
    /// The operations contacts (automation is failing).
    Operations,
}

impl Audience {
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Supervisors => "supervisors",
            Audience::Operations => "operations",
        }
    }
}

impl FromStr for Audience {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "supervisors" => Ok(Audience::Supervisors),
            "operations" => Ok(Audience::Operations),
            o => Err(format!("`{o}` is not an audience")),
        }
    }
}

/// The addresses at each level of an audience: (to, cc).
fn levels(practice: &Practice, audience: Audience) -> Vec<(Vec<String>, Vec<String>)> {
    let c = &practice.contacts;
    match audience {
        Audience::Supervisors => {
            let mut l = vec![(c.supervisors.clone(), Vec::new())];
            if !c.managers.is_empty() {
                l.push((c.managers.clone(), c.supervisors.clone()));
            }
            l
        }
        Audience::Operations => vec![(c.operations.clone(), Vec::new())],
    }
}

/// Cases the scan reads and schedules at a time.
const SCAN_PAGE: usize = 500;

/// Bumped when what the time-based rules find (or when) changes, so that
/// every case is looked at again by the new rules.
const RULES_VERSION: &str = "rules-v1";

/// What a scan did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanCount {
    /// Cases that were due for a look.
    pub cases: usize,
    /// Escalations opened.
    pub opened: usize,
}

/// The escalation rules over one configuration: the ledger's hook, the
/// scan, reminders and digests.
pub struct Escalator {
    settings: Arc<Settings>,
    /// `practice/payer` pairs whose playbook downloads letters.
    letters: BTreeSet<String>,
    wake: Arc<Notify>,
    /// Signs the acknowledgement links in mail (`console::links`); without
    /// it mail points at the console's inbox instead.
    link_key: Option<crate::console::links::LinkKey>,
}

impl Escalator {
    /// `wake` is notified whenever mail is queued; the sender waits on it.
    pub fn new(settings: Arc<Settings>, playbooks: &[Playbook], wake: Arc<Notify>) -> Escalator {
        let mut letters = BTreeSet::new();
        for p in &settings.practices {
            for (key, b) in &p.payers {
                if playbooks
                    .iter()
                    .any(|pb| pb.id == b.playbook && pb.actions.contains_key(&Action::DownloadLetter))
                {
                    letters.insert(format!("{}/{key}", p.id));
                }
            }
        }
        Escalator {
            settings,
            letters,
            wake,
            link_key: None,
        }
    }

    /// Mail carries signed, single-use acknowledgement links made with this
    /// key (the ledger's: `LinkKey::of`).
    pub fn with_link_key(mut self, key: crate::console::links::LinkKey) -> Escalator {
        self.link_key = Some(key);
        self
    }

    fn practice(&self, id: &str) -> Option<&Practice> {
        self.settings.practice(id)
    }

    fn rules(&self, practice: &Practice, key: &rules::RuleKey<'_>) -> RuleSet {
        rules::rules_for(&self.settings.escalations, &practice.escalations, key)
    }

    fn case_rules(&self, practice: &Practice, case: &CaseRecord) -> RuleSet {
        let coverage = &case.data.coverage;
        self.rules(
            practice,
            &rules::RuleKey {
                payer: &coverage.payer,
                state: coverage.state.as_str(),
                plan_type: coverage.plan_type.as_str(),
            },
        )
    }

    fn domain(&self) -> &str {
        self.settings.mail.domain()
    }

    fn new_escalation(
        &self,
        practice: &Practice,
        case: Option<&CaseRecord>,
        payer: Option<String>,
        f: rules::Finding,
        rules: &RuleSet,
        now: DateTime<Utc>,
    ) -> NewEscalation {
        let mut detail = f.detail;
        if let (Some(c), serde_json::Value::Object(m)) = (case, &mut detail) {
            m.insert("state".into(), c.data.coverage.state.as_str().into());
            m.insert("plan_type".into(), c.data.coverage.plan_type.as_str().into());
        }
        NewEscalation {
            practice_id: practice.id.clone(),
            case_id: case.map(|c| c.id),
            payer,
            reason: f.reason,
            audience: f.reason.audience(),
            severity: f.reason.severity(),
            due_at: f.due_at,
            summary: f.summary,
            detail,
            // A warning needs no reminders: the deadline itself follows.
            next_action_at: (f.reason != Reason::StallWarning)
                .then(|| now + Duration::hours(rules.reminder_hours.into())),
            repeat_window: Duration::hours(rules.repeat_window_hours.into()),
        }
    }

    /// A hash of everything the time-based rules of a practice depend on
    /// besides its cases: the rule layers, the time zone, which payers'
    /// playbooks fetch letters, and the rules' own version. The ledger keeps
    /// it: when it changes, every case is looked at again.
    pub fn rules_fingerprint(&self, practice: &Practice) -> String {
        let letters: Vec<&String> = self
            .letters
            .iter()
            .filter(|l| l.split_once('/').is_some_and(|(p, _)| p == practice.id))
            .collect();
        let text = format!(
            "{RULES_VERSION}|{:?}|{:?}|{}|{letters:?}",
            self.settings.escalations, practice.escalations, practice.timezone
        );
        crate::files::sha256_hex(text.as_bytes())
    }

    /// Evaluates the rules on the practice's cases that are due for a look
    /// (their `next_check_at` has come: a change, or a time a rule can start
    /// to hold), a page at a time, and opens what is due (an escalation
    /// already open is left alone); each case then gets its next look.
    /// Memory is one page's, whatever the ledger's size. Returns how many
    /// opened.
    pub async fn scan(&self, ledger: &Ledger, practice_id: &str) -> Result<usize, StoreError> {
        Ok(self.scan_counted(ledger, practice_id).await?.opened)
    }

    /// [`Escalator::scan`], with how many cases it looked at.
    pub async fn scan_counted(&self, ledger: &Ledger, practice_id: &str) -> Result<ScanCount, StoreError> {
        let mut count = ScanCount::default();
        let Some(practice) = self.practice(practice_id) else {
            return Ok(count);
        };
        if ledger
            .rules_changed(practice_id, &self.rules_fingerprint(practice))
            .await?
        {
            tracing::info!(practice = %practice_id, "Escalation rules new or changed: every open case is looked at again.");
        }
        let now = ledger.now();
        let tz = practice.timezone;
        let mut cursor = RulesCursor::default();
        loop {
            let page = ledger.cases_due_for_rules(practice_id, now, &cursor, SCAN_PAGE).await?;
            let Some(last) = page.last() else { break };
            cursor = last.cursor.clone();
            // Most findings are already open (a denial stays denied): skip
            // those without a write transaction each.
            let ids: Vec<i64> = page.iter().map(|c| c.case.id).collect();
            let active = ledger.active_escalation_keys(&ids).await?;
            let mut checks = Vec::with_capacity(page.len());
            for c in &page {
                count.cases += 1;
                let rules = self.case_rules(practice, &c.case);
                let payer = c.case.data.coverage.payer.clone();
                let letters = self.letters.contains(&format!("{practice_id}/{payer}"));
                let mut found = rules::by_time(c, &rules, tz, letters, now);
                if let Some(f) = rules::on_status(&c.case, c.submitted_at, None, &rules, tz, now) {
                    found.push(f);
                }
                if found.iter().any(|f| f.reason == Reason::Stalled) {
                    ledger
                        .resolve_escalation_key(
                            &format!("case:{}:{}", c.case.id, Reason::StallWarning.as_str()),
                            "the deadline passed: a stall escalation follows",
                        )
                        .await?;
                }
                let mut next = rules::next_check(c, &rules, tz, letters, now);
                for f in found {
                    let new = self.new_escalation(practice, Some(&c.case), Some(payer.clone()), f, &rules, now);
                    if active.contains(&new.dedupe_key()) {
                        continue;
                    }
                    if ledger.open_escalation(&new).await?.is_some() {
                        count.opened += 1;
                    } else {
                        // Kept quiet by a recent one's repeat window (or
                        // opened by another daemon): look again next scan.
                        let soon = now + Duration::microseconds(1);
                        next = Some(next.map_or(soon, |n| n.min(soon)));
                    }
                }
                checks.push(NextCheck {
                    case_id: c.case.id,
                    version: c.version,
                    at: next,
                });
            }
            ledger.set_next_checks(&checks).await?;
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        Ok(count)
    }

    /// Sends due reminders and moves unacknowledged escalations to the next
    /// level. Returns the steps taken.
    pub async fn advance(&self, ledger: &Ledger) -> Result<usize, StoreError> {
        let now = ledger.now();
        let policy = |e: &Escalation| -> Option<Advance> {
            let practice = self.practice(&e.practice_id)?;
            let text = |k: &str| e.detail.get(k).and_then(|v| v.as_str()).unwrap_or_default();
            let key = rules::RuleKey {
                payer: e.payer.as_deref().unwrap_or_default(),
                state: text("state"),
                plan_type: text("plan_type"),
            };
            let rules = self.rules(practice, &key);
            let top = levels(practice, e.audience).len().saturating_sub(1) as u32;
            let step = if e.reminders >= rules.reminders_before_next_level && e.level < top {
                Step::NextLevel(e.level + 1)
            } else {
                Step::Reminder(e.reminders + 1)
            };
            Some(Advance {
                step,
                next: Some(now + Duration::hours(rules.reminder_hours.into())),
            })
        };
        ledger.advance_escalations(&policy).await
    }

    /// Queues each supervisor's digest of the practice's active escalations
    /// for the schedule slot `slot`. Returns the mails queued (a slot run
    /// twice queues nothing the second time).
    pub async fn digest(&self, ledger: &Ledger, practice_id: &str, slot: &str) -> Result<usize, StoreError> {
        let Some(practice) = self.practice(practice_id) else {
            return Ok(0);
        };
        let active = ledger.escalations(Some(practice_id), false).await?;
        let mut queued = 0;
        for to in &practice.contacts.supervisors {
            let console = &self.settings.console.public_url;
            if let Some(mail) = render::digest_mail(practice, &active, to, slot, ledger.now(), self.domain(), console) {
                if ledger.queue_mail(practice_id, "digest", &mail).await? {
                    queued += 1;
                }
            }
        }
        Ok(queued)
    }

    /// A payer's circuit opened (or closed again): tells (or stops
    /// reminding) the operations contacts of every practice using it.
    pub async fn payer_alert(
        &self,
        ledger: &Ledger,
        playbook: &crate::ids::PlaybookId,
        opened: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = ledger.now();
        for practice in &self.settings.practices {
            for (key, b) in &practice.payers {
                if b.playbook != playbook.as_str() {
                    continue;
                }
                let rules = self.rules(
                    practice,
                    &rules::RuleKey {
                        payer: key,
                        ..Default::default()
                    },
                );
                match opened {
                    Some(why) => {
                        let f = rules::Finding {
                            reason: Reason::PayerPaused,
                            due_at: None,
                            // The summary is listed in digests and on the
                            // command line: the failure's wording is
                            // scrubbed (the detail keeps it for the mail,
                            // which scrubs it when rendering).
                            summary: format!("payer {key} paused for {}: {}", practice.id, crate::scrub::scrub(why)),
                            detail: serde_json::json!({ "why": why }),
                        };
                        let new = self.new_escalation(practice, None, Some(key.clone()), f, &rules, now);
                        ledger.open_escalation(&new).await?;
                    }
                    None => {
                        let key = format!("payer:{}:{key}:{}", practice.id, Reason::PayerPaused.as_str());
                        ledger.resolve_escalation_key(&key, "the payer works again").await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Tells operations that a practice is left out because its
    /// configuration does not check (its own `contacts.operations` when its
    /// file can be read that far, else `[mail] operations`). One open
    /// escalation per practice; nobody to tell leaves it in the log and
    /// `/metrics` only.
    pub async fn practice_disabled(
        &self,
        ledger: &Ledger,
        disabled: &crate::config::DisabledPractice,
    ) -> Result<Option<i64>, StoreError> {
        let recipients = if disabled.operations.is_empty() {
            self.settings.mail.operations.clone()
        } else {
            disabled.operations.clone()
        };
        let problems: Vec<String> = disabled.problems.iter().map(ToString::to_string).collect();
        let n = problems.len();
        let now = ledger.now();
        let new = NewEscalation {
            practice_id: disabled.id.clone(),
            case_id: None,
            payer: None,
            reason: Reason::PracticeDisabled,
            audience: Audience::Operations,
            severity: Reason::PracticeDisabled.severity(),
            due_at: None,
            summary: format!(
                "practice {} disabled: {n} configuration problem{} (its cases wait)",
                disabled.id,
                if n == 1 { "" } else { "s" }
            ),
            detail: serde_json::json!({
                "file": disabled.file.display().to_string(),
                "problems": problems,
                "recipients": recipients,
            }),
            next_action_at: Some(now + Duration::hours(24)),
            repeat_window: Duration::zero(),
        };
        ledger.open_escalation(&new).await
    }

    /// A practice runs again (a reload fixed it): its `practice_disabled`
    /// escalation, if any, is resolved.
    pub async fn practice_enabled(&self, ledger: &Ledger, practice_id: &str) -> Result<bool, StoreError> {
        let key = format!("payer:{practice_id}:-:{}", Reason::PracticeDisabled.as_str());
        ledger
            .resolve_escalation_key(&key, "the configuration checks again; the practice runs")
            .await
    }

    fn link(&self, practice: &Practice, case: &CaseRecord) -> Option<String> {
        let template = practice
            .escalations
            .case_link
            .clone()
            .or_else(|| self.settings.escalations.case_link.clone())
            .unwrap_or_else(|| format!("{}/cases/{{practice}}/{{case_ref}}", self.settings.console.public_url));
        let encode = crate::console::encode_component;
        Some(
            template
                .replace("{practice}", &encode(&practice.id))
                .replace("{case_ref}", &encode(&case.data.case_ref))
                .replace("{case_id}", &case.id.to_string()),
        )
    }
}

impl EscalationHook for Escalator {
    fn on_status(
        &self,
        case: &CaseRecord,
        submitted_at: Option<DateTime<Utc>>,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Vec<NewEscalation> {
        let Some(practice) = self.practice(&case.data.practice_id) else {
            return Vec::new();
        };
        let rules = self.case_rules(practice, case);
        rules::on_status(case, submitted_at, note, &rules, practice.timezone, now)
            .map(|f| {
                let payer = Some(case.data.coverage.payer.clone());
                self.new_escalation(practice, Some(case), payer, f, &rules, now)
            })
            .into_iter()
            .collect()
    }

    fn render(
        &self,
        esc: &Escalation,
        case: Option<&CaseRecord>,
        step: Step,
        now: DateTime<Utc>,
    ) -> Option<OutgoingMail> {
        if esc.reason == Reason::PracticeDisabled {
            // The practice is not in the running configuration: its mail
            // names what it can without it.
            return render::practice_disabled_mail(esc, step, self.domain(), now);
        }
        let practice = self.practice(&esc.practice_id)?;
        let levels = levels(practice, esc.audience);
        let (to, cc) = levels.get(esc.level as usize).or(levels.last())?.clone();
        if to.is_empty() {
            return None;
        }
        let details = practice
            .escalations
            .patient_details
            .or(self.settings.escalations.patient_details)
            .unwrap_or(PatientDetails::Minimum);
        let console = &self.settings.console.public_url;
        let ack = self.link_key.as_ref().map(|key| {
            let until = now + Duration::from_std(self.settings.console.ack_link_valid).unwrap_or(Duration::hours(72));
            let token = key.ack_token(esc.id, until);
            (crate::console::links::ack_url(console, &token), until)
        });
        let ctx = MailContext {
            practice,
            patient_details: details,
            link: case.and_then(|c| self.link(practice, c)),
            console,
            ack,
            domain: self.domain(),
            to,
            cc,
        };
        Some(render::escalation_mail(esc, case, step, &ctx, now))
    }

    fn mail_queued(&self) {
        self.wake.notify_one();
    }
}

/// How long a sender's claim on a mail lasts (a sender that died mid-send
/// gives it back after this).
const CLAIM: Duration = Duration::minutes(5);

/// The wait before attempt `n + 1` after `n` failed: 30 s doubling, at most
/// an hour, with up to 20 % jitter.
pub fn backoff(attempts: u32) -> Duration {
    let base = 30i64
        .saturating_mul(1i64 << attempts.saturating_sub(1).min(7))
        .min(3600);
    let mut b = [0u8; 2];
    let _ = getrandom::getrandom(&mut b);
    let jitter = i64::from(u16::from_le_bytes(b)) % (base / 5 + 1);
    Duration::seconds(base + jitter)
}

/// What one round of sending did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendRound {
    pub sent: usize,
    pub failed: usize,
    /// A transient failure stopped the round: try again at this time.
    pub retry_at: Option<DateTime<Utc>>,
}

/// Mails in flight at once: one per pooled SMTP connection (each send
/// waits on the network, not on the CPU).
const PARALLEL: usize = 4;

/// Sends every mail that is due now, oldest first, a few at a time. A
/// transient failure ends the round (the server is down: the rest waits for
/// the retry rather than each failing in turn).
pub async fn send_due(ledger: &Ledger, mailer: &Mailer) -> Result<SendRound, StoreError> {
    let mut round = SendRound::default();
    loop {
        let mut batch = Vec::with_capacity(PARALLEL);
        while batch.len() < PARALLEL {
            match ledger.claim_mail(CLAIM).await? {
                Some(claimed) => batch.push(claimed),
                None => break,
            }
        }
        if batch.is_empty() {
            return Ok(round);
        }
        let mut flights = tokio::task::JoinSet::new();
        for claimed in batch {
            let (ledger, mailer) = (ledger.clone(), mailer.clone());
            flights.spawn(async move {
                let outcome = deliver(&ledger, &mailer, &claimed).await;
                ledger.finish_mail(&claimed, &outcome).await.map(|()| outcome)
            });
        }
        while let Some(joined) = flights.join_next().await {
            // A panic in a flight is a bug: let it surface here.
            let outcome = joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
            match outcome {
                SendOutcome::Sent => round.sent += 1,
                SendOutcome::Failed { .. } => round.failed += 1,
                SendOutcome::Retry { at, .. } => {
                    round.failed += 1;
                    round.retry_at = Some(round.retry_at.map_or(at, |r| r.min(at)));
                }
            }
        }
        if round.retry_at.is_some() {
            return Ok(round);
        }
    }
}

async fn deliver(ledger: &Ledger, mailer: &Mailer, claimed: &ClaimedMail) -> SendOutcome {
    let now = ledger.now();
    match mailer.send(&claimed.mail, now).await {
        Ok(_) => {
            tracing::info!(
                outbox_id = claimed.id,
                message_id = %claimed.mail.message_id,
                recipients = claimed.mail.to.len() + claimed.mail.cc.len(),
                "Mail sent."
            );
            SendOutcome::Sent
        }
        Err(e) if e.kind == SendErrorKind::Permanent => {
            tracing::error!(outbox_id = claimed.id, error = %e, "Mail refused for good; see `precert outbox`.");
            SendOutcome::Failed { error: e.to_string() }
        }
        Err(e) => {
            let at = now + backoff(claimed.attempts);
            tracing::warn!(outbox_id = claimed.id, attempts = claimed.attempts, error = %e, retry_at = %at, "Mail not sent; it will be retried.");
            SendOutcome::Retry {
                at,
                error: e.to_string(),
            }
        }
    }
}
