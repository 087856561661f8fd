//! What `/proc` says: which live processes belong to a driver, and whether
//! a group is still a browser's (process ids are reused, and quickly:
//! `pid_max` may be 32768).

use std::path::Path;
use std::time::{Duration, Instant};

use super::spawn::MARK;

struct Stat {
    state: u8,
    pgrp: i32,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after it
    // start behind the last `)`: state (3), ppid, pgrp (5).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: *f.first()?.as_bytes().first()?,
        pgrp: f.get(2)?.parse().ok()?,
    })
}

/// A zombie has ended; only its exit status waits for its parent.
fn ended(state: u8) -> bool {
    matches!(state, b'Z' | b'X' | b'x')
}

/// Whether a process with this id is running (not a zombie). For records
/// that hold only a process id (written by earlier versions).
pub(super) fn pid_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !ended(s.state))
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Whether a process belongs to driver `id`: its environment holds
/// `PRECERT_BROWSER=id` (the guard, chromedriver, Chromium's browser process,
/// crashpad's handlers), or it is a Chromium whose profile is in the
/// driver's folder (Chromium's other processes overwrite their environment
/// with their title, but keep `--user-data-dir`).
fn belongs(pid: i32, id: &str) -> bool {
    let mark = format!("{MARK}={id}");
    if std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_bytes()))
    {
        return true;
    }
    // The title may join the arguments with spaces, and the data directory
    // may contain some: look for the flag and the folder, not one argument.
    let folder = format!("/run/profiles/{id}/");
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| contains(&c, b"--user-data-dir=") && contains(&c, folder.as_bytes()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Live processes of driver `id`, with their process group. precert itself
/// never belongs to one.
fn processes_of(id: &str) -> Vec<(i32, i32)> {
    let me = std::process::id() as i32;
    pids()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let s = stat(pid).filter(|s| !ended(s.state))?;
            // Another user's processes are unreadable: not ours anyway.
            belongs(pid, id).then_some((pid, s.pgrp))
        })
        .collect()
}

/// Kills every live process of driver `id` and waits (bounded) until none
/// is left. The group goes with one `kill(-pgid)`, which also catches a
/// process forked meanwhile — but only when one of its live members belongs
/// to the driver, so a group id that has been reused is never signalled. A
/// process outside the group is killed by itself. The number of processes
/// found at first.
pub(super) fn kill_all(id: &str, pgid: Option<i32>, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut found = None;
    // The group, once a process of the driver was seen in it: a process
    // that is exiting may no longer show its environment or command line
    // (its memory is being torn down) and yet not be a zombie; its group
    // still names it.
    let mut group = None;
    loop {
        let procs = processes_of(id);
        found.get_or_insert(procs.len());
        if group.is_none() {
            group = pgid.filter(|g| procs.iter().any(|(_, pg)| pg == g));
        }
        let group_left = group.is_some_and(|g| {
            let me = std::process::id() as i32;
            pids().any(|pid| pid != me && stat(pid).is_some_and(|s| s.pgrp == g && !ended(s.state)))
        });
        if procs.is_empty() && !group_left {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(id, left = procs.len(), "Browser processes outlived SIGKILL.");
            break;
        }
        if let Some(g) = group {
            // SAFETY: kill(2); the group is proven to be the browser's.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
        for (pid, _) in &procs {
            // SAFETY: kill(2) on a live process of the driver.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        // Waiting for the kernel to end them; bounded by `limit`.
        std::thread::sleep(Duration::from_millis(10));
    }
    found.unwrap_or(0)
}

/// Whether a live member of group `pgid` is chromedriver or Chromium (for
/// records of earlier versions, whose processes carry no mark).
pub(super) fn group_is_browser(pgid: i32) -> bool {
    pids().any(|pid| {
        stat(pid).is_some_and(|s| s.pgrp == pgid && !ended(s.state))
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("chrom"))
    })
}

/// Whether a chromedriver without the mark runs on this machine: one an
/// earlier precert started (or something else entirely).
pub(super) fn unmarked_chromedriver_running() -> bool {
    let mark = format!("{MARK}=");
    pids().any(|pid| {
        stat(pid).is_some_and(|s| !ended(s.state))
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "chromedriver")
            && std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| !env.split(|b| *b == 0).any(|v| v.starts_with(mark.as_bytes())))
    })
}

/// Whether a live process names `path` on its command line (a Chromium whose
/// `--user-data-dir` is in it).
pub(super) fn path_in_use(path: &Path) -> bool {
    let needle = path.as_os_str().as_encoded_bytes();
    pids().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
    })
}
