//! Fault injection for the exactly-once tests: `PRECERT_FAULT` names a point
//! of a submission at which the process SIGKILLs itself, as a crash or the
//! unit's `KillMode=control-group` would end it. Unset, nothing happens.
//!
//! | value | the process dies |
//! |---|---|
//! | `kill-after-step:N` | after the Nth step of the `submit` action finished (nested steps count, in the order they finish) |
//! | `kill-at-intent` | after the intent is in the ledger, before the request is sent |
//! | `kill-after-commit` | right after the step that sends the request |
//! | `kill-after-response` | PAS: after the payer answered `$submit`, before the answer is recorded |

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    AfterStep(u32),
    AtIntent,
    AfterCommit,
    AfterResponse,
}

fn configured() -> Option<Point> {
    static POINT: OnceLock<Option<Point>> = OnceLock::new();
    *POINT.get_or_init(|| {
        let v = std::env::var("PRECERT_FAULT").ok()?;
        match v.trim() {
            "kill-at-intent" => Some(Point::AtIntent),
            "kill-after-commit" => Some(Point::AfterCommit),
            "kill-after-response" => Some(Point::AfterResponse),
            other => other
                .strip_prefix("kill-after-step:")
                .and_then(|n| n.parse().ok())
                .map(Point::AfterStep),
        }
    })
}

fn die() {
    // SAFETY: signalling ourselves; nothing runs after this.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

fn hit(point: Point) {
    if configured() == Some(point) {
        die();
    }
}

/// The `n`th step of `submit` finished.
pub(super) fn after_step(n: u32) {
    hit(Point::AfterStep(n));
}

/// The intent is recorded; the request is not sent yet.
pub(crate) fn at_intent() {
    hit(Point::AtIntent);
}

/// The request was sent; its answer is not recorded yet.
pub(super) fn after_commit() {
    hit(Point::AfterCommit);
}

/// PAS: the payer's answer arrived and is not recorded yet.
pub(crate) fn after_response() {
    hit(Point::AfterResponse);
}
