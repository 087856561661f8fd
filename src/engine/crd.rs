//! CRD runs: asking a payer's Da Vinci CRD service whether a `new` case
//! needs a pre-cert (`crate::crd`), with one client per binding (its token
//! and discovered service kept across runs) and the playbook's per-payer
//! session cap, like every other exchange with the payer.

use std::sync::Arc;

use super::Engine;
use crate::case::CaseRecord;
use crate::crd::{self, Asked, CrdClient, CrdError};
use crate::pas::{self, ClientError, Endpoint};
use crate::store::Actor;

fn setup(message: String) -> CrdError {
    CrdError::Client(ClientError::Config(message))
}

impl Engine {
    /// Whether the case's payer binding runs a playbook that declares a
    /// CRD service.
    pub fn crd_enabled(&self, case: &CaseRecord) -> bool {
        self.binding(case).is_ok_and(|(_, _, p)| p.crd.is_some())
    }

    /// Asks the payer's CRD service about a `new` case and records the
    /// answer (`crd::ask`). A binding without a CRD service is a
    /// configuration error (`ClientError::Config`).
    pub async fn ask_crd(&self, case_id: i64, actor: &Actor) -> Result<Asked, CrdError> {
        let case = self.ledger.get(case_id).await?;
        let (practice, binding, playbook) = self.binding(&case).map_err(|e| setup(e.to_string()))?;
        let client = self.crd_client(&case).await?;
        let _payer = self.payer_permit(playbook).await;
        let ctx = pas::Context {
            practice,
            data_dir: &self.settings.data_dir,
            insurer_name: binding.account.get("payer_name").map(String::as_str),
            now: self.ledger.now(),
        };
        crd::ask(&self.ledger, &client, &ctx, &case, actor).await
    }

    /// The CRD client of a case's binding, made once.
    async fn crd_client(&self, case: &CaseRecord) -> Result<Arc<CrdClient>, CrdError> {
        let (practice, binding, playbook) = self.binding(case).map_err(|e| setup(e.to_string()))?;
        let payer_key = &case.data.coverage.payer;
        let Some(svc) = &playbook.crd else {
            return Err(setup(format!(
                "playbook {} declares no CRD service (`crd:`)",
                playbook.id
            )));
        };
        let key = (practice.id.clone(), payer_key.clone());
        let mut clients = self.crd_clients.lock().await;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let auth = if svc.oauth2 {
            let base = binding.base_url.as_deref().unwrap_or(&playbook.base_url);
            Some(Endpoint::from_binding(payer_key, binding, Some(base))?)
        } else {
            None
        };
        // The binding may move the service (`account.crd_url`); a CRD path
        // under the playbook's base_url moves with the binding's base_url.
        let moved;
        let base = match (binding.account.get("crd_url"), &binding.base_url) {
            (Some(u), _) => Some(u.as_str()),
            (None, Some(b)) if svc.url.starts_with(&playbook.base_url) => {
                moved = format!("{}{}", b.trim_end_matches('/'), &svc.url[playbook.base_url.len()..]);
                Some(moved.as_str())
            }
            _ => None,
        };
        let client = Arc::new(CrdClient::new(svc, base, auth, self.api_policy.clone())?);
        clients.insert(key, client.clone());
        Ok(client)
    }
}
