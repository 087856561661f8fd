//! The engine's browser sessions: how many are open, which are idle, and
//! closing idle ones.
//!
//! One headless Chromium session holds about half a gigabyte (bench/README,
//! "Browser memory"), so `webdriver.max_sessions` bounds the sessions
//! **open**, idle ones included, not only those in use: a run that needs a
//! new session when the cap is reached closes the least recently used idle
//! session of another payer account first. An idle session of the run's own
//! account is reused as it is (it is logged in). Idle sessions are closed
//! after `webdriver.idle_close_secs` by a task of the pool's own, so closing
//! needs no job; chromedriver itself stays (a few megabytes) for the next
//! session.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::PortalSession;

/// A payer account: (playbook, practice).
pub(super) type Account = (String, String);

pub(super) struct Pool {
    state: Mutex<State>,
    /// `webdriver.max_sessions`.
    cap: usize,
    /// `webdriver.idle_close_secs`; zero: the pool closes nothing on its
    /// own (the daemon closes an account's sessions when its job ends).
    idle_close: Duration,
    /// Sessions open (idle + in use), for `Engine::sessions_open` and for
    /// whoever waits for a count.
    open: watch::Sender<usize>,
    /// A session went idle: the closer looks at its deadline.
    went_idle: Arc<Notify>,
    /// Ends the closer with the pool.
    stop: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Oldest first.
    idle: Vec<Idle>,
    /// Sessions taken by runs (each a `Slot`), including one being opened.
    in_use: usize,
    closer_started: bool,
}

struct Idle {
    account: Account,
    session: PortalSession,
    since: Instant,
}

impl State {
    fn open(&self) -> usize {
        self.idle.len() + self.in_use
    }
}

/// A run's place among the open sessions, with the caps' permits it holds:
/// counted as open until it is given back with its session
/// ([`Pool::give_back`]) or dropped (its session was closed or never
/// opened). The count goes down before the permits are released, so a run
/// waiting for them never sees the cap taken by a session already gone.
pub(super) struct Slot {
    pool: Arc<Pool>,
    counted: bool,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counted {
            let mut state = self.pool.state.lock().expect("session pool lock");
            state.in_use -= 1;
            self.pool.publish(&state);
        }
    }
}

/// What [`Pool::take`] found for a run.
pub(super) struct Taken {
    pub slot: Slot,
    /// An idle session of the run's account, logged in: reuse it.
    pub reused: Option<PortalSession>,
    /// Idle sessions of other accounts, taken out to make room under the
    /// cap: the caller closes them before it opens a new one.
    pub evicted: Vec<PortalSession>,
}

impl Pool {
    pub fn new(cap: u32, idle_close: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            state: Mutex::new(State::default()),
            cap: cap as usize,
            idle_close,
            open: watch::channel(0).0,
            went_idle: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        })
    }

    fn publish(&self, state: &State) {
        self.open.send_replace(state.open());
    }

    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    pub fn watch_open(&self) -> watch::Receiver<usize> {
        self.open.subscribe()
    }

    /// A place for a run of `account` (the caller holds the caps' permits):
    /// its account's most recently used idle session if there is one, else
    /// room for a new one — the least recently used idle sessions of other
    /// accounts are taken out until the open sessions, the new one
    /// included, are within the cap.
    pub fn take(self: &Arc<Self>, account: &Account, permits: (OwnedSemaphorePermit, OwnedSemaphorePermit)) -> Taken {
        let mut state = self.state.lock().expect("session pool lock");
        state.in_use += 1;
        let slot = Slot {
            pool: self.clone(),
            counted: true,
            _permits: permits,
        };
        let mut evicted = Vec::new();
        let reused = match state.idle.iter().rposition(|i| &i.account == account) {
            Some(at) => Some(state.idle.remove(at).session),
            None => {
                // The global permit bounds the sessions in use by the cap, so
                // there is always an idle one to take out while above it.
                while state.open() > self.cap && !state.idle.is_empty() {
                    evicted.push(state.idle.remove(0).session);
                }
                None
            }
        };
        self.publish(&state);
        Taken { slot, reused, evicted }
    }

    /// Keeps a run's session, logged in, for the next run of its account.
    pub fn give_back(&self, mut slot: Slot, account: Account, session: PortalSession) {
        let mut state = self.state.lock().expect("session pool lock");
        state.in_use -= 1;
        slot.counted = false;
        state.idle.push(Idle {
            account,
            session,
            since: Instant::now(),
        });
        self.publish(&state);
        let start_closer = !self.idle_close.is_zero() && !std::mem::replace(&mut state.closer_started, true);
        drop(state);
        if start_closer {
            tokio::spawn(close_when_idle(
                Arc::downgrade(&slot.pool),
                self.went_idle.clone(),
                self.stop.clone(),
            ));
        }
        self.went_idle.notify_one();
    }

    /// Takes out the idle sessions of one account (`None`: of every
    /// account), for the caller to close.
    pub fn take_idle(&self, account: Option<&Account>) -> Vec<PortalSession> {
        let mut state = self.state.lock().expect("session pool lock");
        let (out, keep) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|i| account.is_none_or(|a| &i.account == a));
        state.idle = keep;
        self.publish(&state);
        out.into_iter().map(|i: Idle| i.session).collect()
    }

    /// Takes out the sessions idle for `idle_close` by `now`; and when the
    /// next one will be.
    fn take_expired(&self, now: Instant) -> (Vec<PortalSession>, Option<Instant>) {
        let mut state = self.state.lock().expect("session pool lock");
        let (out, keep): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|i| i.since + self.idle_close <= now);
        state.idle = keep;
        self.publish(&state);
        let next = state.idle.iter().map(|i| i.since + self.idle_close).min();
        (out.into_iter().map(|i| i.session).collect(), next)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The closer: closes each session idle for `idle_close`, waking at the
/// next deadline or when a session goes idle. It holds the pool only while
/// it closes, and ends with it.
async fn close_when_idle(pool: Weak<Pool>, went_idle: Arc<Notify>, stop: CancellationToken) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let (expired, next) = pool.take_expired(Instant::now());
            for s in expired {
                let _ = s.client.close().await;
                tracing::debug!(idle_close_s = pool.idle_close.as_secs(), "Idle browser session closed.");
            }
            next
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = went_idle.notified() => {}
            () = sleep => {}
        }
    }
}
