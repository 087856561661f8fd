//! The extra sessions of a per-case poll (`max_sessions` > 1): each one a
//! session slot of the payer's in the ledger and, with a cap on the grid's
//! browsers (`webdriver.cluster_sessions`), one of the grid's — so several
//! daemons, and `precert run … --all` beside them, never open more sessions
//! to a portal than its playbook allows.

use chrono::Utc;

use crate::store::{Ledger, SlotLease};

/// How long a slot is held without renewal (renewed every third of it).
pub(super) const SLOT_TTL: chrono::Duration = chrono::Duration::seconds(120);

/// The name under which the cluster's browser sessions are counted in the
/// ledger's session slots (no playbook id starts with `@`).
pub(super) const BROWSER_SLOTS: &str = "@webdriver";

/// Slots held for extra sessions.
#[derive(Default)]
pub struct SessionSlots {
    leases: Vec<SlotLease>,
    sessions: usize,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

/// The name a process holds slots under: `HOST-PID` (a slot held by a
/// process of this host that is gone is free at once).
pub fn holder() -> String {
    format!("{}-{}", super::hostname(), std::process::id())
}

impl SessionSlots {
    /// Claims up to `want` sessions' slots of `playbook` (at most `cap`
    /// across the cluster) and of the grid (`grid`), without waiting: as
    /// many as are free now.
    pub async fn claim(
        ledger: &Ledger,
        holder: &str,
        playbook: &str,
        cap: u32,
        grid: Option<u32>,
        want: u32,
    ) -> SessionSlots {
        let mut out = SessionSlots::default();
        for _ in 0..want {
            let mut claimed = Vec::new();
            for (name, cap) in std::iter::once((playbook, cap)).chain(grid.map(|c| (BROWSER_SLOTS, c))) {
                match ledger.claim_payer_slot(name, cap, holder, SLOT_TTL, Utc::now()).await {
                    Ok(Some(s)) => claimed.push(s),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(slots = name, error = %e, "Cannot claim a session slot.");
                        break;
                    }
                }
            }
            if claimed.len() < 1 + usize::from(grid.is_some()) {
                release(ledger, &claimed).await;
                break;
            }
            out.leases.extend(claimed);
            out.sessions += 1;
        }
        out
    }

    /// The sessions claimed.
    pub fn sessions(&self) -> usize {
        self.sessions
    }

    /// Renews the slots in the background until `release`.
    pub fn keep_renewed(&mut self, ledger: &Ledger) {
        let (ledger, leases) = (ledger.clone(), self.leases.clone());
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep((SLOT_TTL / 3).to_std().unwrap_or_default()).await;
                renew(&ledger, &leases).await;
            }
        }));
    }

    /// The leases, for a holder that renews and releases them with its own.
    pub(super) fn into_leases(mut self) -> Vec<SlotLease> {
        std::mem::take(&mut self.leases)
    }

    /// Gives the slots back.
    pub async fn release(mut self, ledger: &Ledger) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        release(ledger, &self.leases).await;
    }
}

impl Drop for SessionSlots {
    fn drop(&mut self) {
        // Not released: the slots free themselves when they run out.
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

/// Extends held slots (one lost is said; the run goes on).
pub(super) async fn renew(ledger: &Ledger, leases: &[SlotLease]) {
    for s in leases {
        match ledger.renew_payer_slot(s, SLOT_TTL, Utc::now()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(playbook = %s.playbook, "The payer session slot was lost (it ran out)."),
            Err(e) => tracing::warn!(playbook = %s.playbook, error = %e, "Payer slot renewal failed."),
        }
    }
}

/// Gives slots back (one that cannot be frees itself when it runs out).
pub(super) async fn release(ledger: &Ledger, leases: &[SlotLease]) {
    for s in leases {
        if let Err(e) = ledger.release_payer_slot(s).await {
            tracing::warn!(slots = %s.playbook, error = %e, "Cannot give a session slot back; it frees itself when it runs out.");
        }
    }
}
