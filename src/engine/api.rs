//! Runs for `channel: api` payers, without a browser: a playbook of `http`
//! steps, or precert's own PAS client for a playbook with `api: pas`.
//!
//! Both end like a portal run: the payer's answer goes through the same
//! ledger rules, and a failure is classified the same way (a refused
//! request needs a person, an outage is tried again later).

use serde_json::json;

use super::{Engine, EngineError, FailureKind, Observation, RunReport, StepFailure, Trace};
use crate::case::{CaseRecord, CaseStatus};
use crate::config::{PayerBinding, Practice};
use crate::pas::{self, Applied, ClientError, Endpoint, PasClient, PasError};
use crate::playbook::{Action, Loc, Playbook};
use crate::store::{Actor, EventKind, Ledger, SubmitLease};

impl Engine {
    /// An `http`-step playbook: login (when the playbook has one), the
    /// action, the answer applied. No chromedriver is started.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_api(
        &self,
        action: Action,
        case: &CaseRecord,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
        actor: &Actor,
        lease: Option<&SubmitLease>,
        ledger: &Ledger,
    ) -> Result<RunReport, EngineError> {
        let _payer = self.payer_permit(playbook).await;
        let ctx = self.context(Some(case), practice, binding, playbook)?;
        let trace = Trace {
            echo: self.echo,
            ..Trace::default()
        };
        let mut interp = self.interp(None, playbook, &case.data.practice_id, ctx, trace);
        let result = async {
            // An API has no session to keep: `login` (when there is one)
            // runs before every action, e.g. to fetch a token into a
            // variable.
            if let Some(login) = playbook.actions.get(&Action::Login) {
                interp.trace.note("-- login".into());
                interp.run_steps(login).await?;
            }
            if action == Action::Submit {
                self.arm_commit(&mut interp, lease, case, actor);
                if lease.is_some_and(|l| l.took_over.is_some()) && self.reconcile(&mut interp, playbook, case).await? {
                    return Ok(());
                }
                interp.observations.clear();
            }
            interp.trace.note(format!("-- {action}"));
            // No second attempt of the whole action here: each request
            // already waited out throttling and retried 5xx answers within
            // the retry policy; what still fails goes back to the job queue.
            interp.count_steps = action == Action::Submit;
            interp.run_steps(&playbook.actions[&action]).await
        }
        .await;
        // A dry run that reached the commit step ended as planned.
        let result = match result {
            Err(_) if interp.stopped_before.is_some() => Ok(()),
            other => other,
        };
        let mut trace = std::mem::take(&mut interp.trace);
        trace.stopped_before = interp.stopped_before;
        let throttled = interp.throttled;
        let result = result.map(|()| (interp.observations, interp.downloads));
        let artifacts = match &result {
            Err(failure) => {
                self.save_artifacts(
                    None,
                    &case.data.practice_id,
                    &case.data.case_ref,
                    action,
                    failure,
                    &trace,
                )
                .await
            }
            Ok(_) => None,
        };
        let mut report = if self.dry_run {
            super::dry_report(action, case, result, artifacts, &mut trace)
        } else {
            self.conclude(action, case, playbook, result, artifacts, actor, ledger)
                .await?
        };
        if report.failure.is_some() {
            report.not_before = throttled;
        }
        Ok(report)
    }

    /// A payer whose playbook says `api: pas`: precert's Da Vinci PAS client
    /// submits (`Claim/$submit`) and polls (`Claim/$inquire`). Only the
    /// practice's binding decides whether a case goes this way or through
    /// the portal.
    pub(super) async fn run_pas(
        &self,
        action: Action,
        case: &CaseRecord,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
        actor: &Actor,
    ) -> Result<RunReport, EngineError> {
        if !matches!(action, Action::Submit | Action::PollStatus) {
            return Err(EngineError::Setup(format!(
                "playbook {} speaks Da Vinci PAS, which submits and inquires (submit, poll_status); {action} is not part of it",
                playbook.id
            )));
        }
        if action == Action::Submit && !matches!(case.status, CaseStatus::Ready | CaseStatus::Submitting) {
            return Err(EngineError::NotApplicable(format!(
                "case {} is {}, not ready to submit",
                case.key(),
                case.status
            )));
        }
        if action == Action::PollStatus
            && case.payer_ref.is_none()
            && matches!(case.status, CaseStatus::New | CaseStatus::Required | CaseStatus::Ready)
        {
            // Asking the payer about a request never sent would read its
            // "not found" as a refusal.
            return Err(EngineError::NotApplicable(format!(
                "case {} has not been submitted yet (submit it first)",
                case.key()
            )));
        }
        let super::Owned {
            lease,
            ledger,
            case,
            _renewing,
        } = self.own(action, case.clone(), actor).await?;
        let case = &case;
        let report = self
            .run_pas_owned(
                action,
                case,
                practice,
                binding,
                playbook,
                actor,
                lease.as_ref(),
                &ledger,
            )
            .await;
        if let Some(l) = &lease {
            let _ = self.ledger.release_submission(l).await;
        }
        match report {
            Err(EngineError::Store(e)) if e.is_stale_lease() => {
                let detail =
                    json!({ "action": action.as_str(), "result": "stale", "channel": "pas", "message": e.to_string() });
                self.stale(action, case, actor, &e, detail).await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_pas_owned(
        &self,
        action: Action,
        case: &CaseRecord,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
        actor: &Actor,
        lease: Option<&SubmitLease>,
        ledger: &Ledger,
    ) -> Result<RunReport, EngineError> {
        let client = self
            .pas_client(practice, binding, playbook, &case.data.coverage.payer)
            .await?;
        let _payer = self.payer_permit(playbook).await;
        let ctx = pas::Context {
            practice,
            data_dir: &self.settings.data_dir,
            insurer_name: binding.account.get("payer_name").map(String::as_str),
            now: self.ledger.now(),
        };
        let result = match (action, lease) {
            (Action::Submit, Some(lease)) => {
                let asked_first = if lease.took_over.is_some() {
                    // An earlier run took the case and may have sent it
                    // before it stopped: the payer is asked first, by the
                    // Claim's identifier (the case).
                    match pas::inquire_case(ledger, &client, &ctx, case, actor, None).await {
                        // The payer never received it: send it now.
                        Err(PasError::Client(ClientError::Rejected { status: 404, .. })) => None,
                        other => Some(other),
                    }
                } else {
                    None
                };
                match asked_first {
                    Some(answer) => answer,
                    None => pas::submit_owned(ledger, lease, &client, &ctx, case, actor).await,
                }
            }
            _ => pas::inquire_case(ledger, &client, &ctx, case, actor, Some(&self.stamps)).await,
        };
        match result {
            Ok(applied) => {
                // (`pas::apply` recorded the payer's reference.)
                // An inquiry that found nothing new was stamped on the case
                // (`last_polled_at`) and writes nothing else.
                let unchanged = action != Action::Submit && !applied.recorded && applied.from == applied.to;
                if !unchanged {
                    self.ledger
                        .append_event(
                            case.id,
                            EventKind::Run,
                            actor,
                            &json!({ "action": action.as_str(), "result": "ok", "channel": "pas" }),
                        )
                        .await?;
                }
                Ok(RunReport {
                    action,
                    case_id: case.id,
                    status: if unchanged {
                        applied.to
                    } else {
                        self.ledger.get(case.id).await?.status
                    },
                    failure: None,
                    artifacts: None,
                    observations: vec![observation(&applied)],
                    letters: 0,
                    not_before: None,
                    partial: None,
                    dry_run: None,
                })
            }
            Err(PasError::Store(e)) => Err(e.into()),
            Err(e @ PasError::NotReady { .. }) => Err(EngineError::NotApplicable(e.to_string())),
            Err(e) => {
                let not_before = match &e {
                    PasError::Client(ClientError::Throttled { retry_after }) => Some(*retry_after),
                    _ => None,
                };
                let failure = pas_failure(e);
                let now = self.ledger.get(case.id).await?;
                self.ledger
                    .append_event(
                        case.id,
                        EventKind::Run,
                        actor,
                        &json!({ "action": action.as_str(), "result": failure.kind.as_str(), "channel": "pas", "message": failure.message }),
                    )
                    .await?;
                // `submit_case` has already put a failed submission where it
                // belongs (ready again, or needs_attention); a refused
                // inquiry still needs a person.
                let attention = matches!(failure.kind, FailureKind::NeedsHuman | FailureKind::PortalChanged);
                if attention
                    && now.status != CaseStatus::NeedsAttention
                    && now.status.can_move_to(CaseStatus::NeedsAttention)
                {
                    let note = format!("{action} {}: {}", failure.kind.as_str(), failure.message);
                    ledger
                        .transition(case.id, CaseStatus::NeedsAttention, actor, Some(&note))
                        .await?;
                }
                tracing::warn!(
                    case_id = case.id,
                    action = action.as_str(),
                    kind = failure.kind.as_str(),
                    "PAS exchange failed."
                );
                Ok(RunReport {
                    action,
                    case_id: case.id,
                    status: self.ledger.get(case.id).await?.status,
                    failure: Some(failure),
                    artifacts: None,
                    observations: Vec::new(),
                    letters: 0,
                    not_before,
                    partial: None,
                    dry_run: None,
                })
            }
        }
    }

    /// One PAS client per payer account, kept so its token serves every run
    /// (and the daemon's subscription notifications).
    pub async fn pas_client(
        &self,
        practice: &Practice,
        binding: &PayerBinding,
        playbook: &Playbook,
        payer_key: &str,
    ) -> Result<std::sync::Arc<PasClient>, EngineError> {
        // One client per binding: a practice may bind one playbook under
        // two keys with different endpoints or credentials.
        let key = (practice.id.clone(), payer_key.to_owned());
        let mut clients = self.pas_clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let base = binding.base_url.as_deref().unwrap_or(&playbook.base_url);
        let endpoint =
            Endpoint::from_binding(payer_key, binding, Some(base)).map_err(|e| EngineError::Setup(e.to_string()))?;
        let client = std::sync::Arc::new(
            PasClient::new(endpoint, self.api_policy.clone()).map_err(|e| EngineError::Setup(e.to_string()))?,
        );
        clients.insert(key, client.clone());
        Ok(client)
    }

    pub(super) async fn payer_permit(&self, playbook: &Playbook) -> tokio::sync::OwnedSemaphorePermit {
        self.per_payer
            .get(&playbook.id)
            .cloned()
            .expect("a semaphore per playbook")
            .acquire_owned()
            .await
            .expect("semaphores are never closed")
    }
}

/// The PAS answer in the shape a playbook's `outcome` step gives.
fn observation(a: &Applied) -> Observation {
    let o = &a.outcome;
    Observation {
        status: a.to,
        wording: o.disposition.clone().unwrap_or_else(|| o.status.as_str().to_owned()),
        candidate: None,
        reference: o.claim_response.clone(),
        auth_number: o.auth_number.clone(),
        valid_from: None,
        valid_to: None,
        approved_units: None,
        decision_date: None,
        denial_reason: None,
        request: None,
        reason: None,
    }
}

fn pas_failure(e: PasError) -> StepFailure {
    let kind = match &e {
        PasError::Client(c) => super::http::client_kind(c),
        // The payer's answer cannot be read.
        PasError::Decode(_) => FailureKind::PortalChanged,
        // The case cannot become a request (an attachment is unreadable).
        PasError::Bundle(_) => FailureKind::NeedsHuman,
        _ => FailureKind::Fatal,
    };
    let message = match e {
        PasError::Client(c) => super::http::client_message(c),
        other => other.to_string(),
    };
    StepFailure {
        kind,
        at: Loc::default(),
        keyword: "pas",
        message,
    }
}
