//! `DATA/run/`: where each chromedriver precert starts keeps its browser
//! profiles and its process group, and the reaper that removes what a dead
//! precert left there.
//!
//! ```text
//! DATA/run/profiles/PID-XXXXXX/   one per Driver, 0700 (PID: precert's, for people)
//!     lock                        locked (flock) by the owning precert while it runs
//!     pgid                        the process group (the guard's id)
//!     tmp/                        TMPDIR of chromedriver and Chromium
//!     config/                     their XDG_CONFIG_HOME (crashpad's database)
//!     session-*/                  a session's --user-data-dir, with downloads/
//! ```
//!
//! A profile holds what Chromium saves of the portal: form entries (member
//! IDs, the portal user name, diagnoses), cookies, cached pages. It is
//! removed when its `Driver` ends, and by the next precert command after a
//! crash. Whether its owner still runs is asked of the lock, which the
//! kernel releases when a process ends however it ends: no process ids to be
//! fooled by, and it holds across hosts that share the data directory.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procs;

/// How long the reaper waits for SIGKILLed processes to be gone before it
/// removes their profile.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Takes the exclusive lock on `file` if nobody holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock(2) on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// A driver's folder under `DATA/run/profiles/`, locked while it lives.
pub(super) struct ProfileRoot {
    id: String,
    path: PathBuf,
    _lock: File,
}

impl ProfileRoot {
    pub fn create(data_dir: &Path) -> io::Result<ProfileRoot> {
        let profiles = data_dir.join("run").join("profiles");
        crate::store::private_dir(&data_dir.join("run"))?;
        crate::store::private_dir(&profiles)?;
        // A new folder (0700), never one a dead process left.
        let path = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&profiles)?
            .keep();
        // Until the lock exists the reaper leaves the folder alone; a crash
        // right here leaves an empty folder.
        let lock = File::create(path.join("lock"))?;
        if !try_lock(&lock) {
            return Err(io::Error::other("the new profile folder is locked by another process"));
        }
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ProfileRoot { id, path, _lock: lock })
    }

    /// The mark its processes carry (`PRECERT_BROWSER`), and its folder name.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record_group(&self, pgid: i32) -> io::Result<()> {
        std::fs::write(self.path.join("pgid"), format!("{pgid}\n"))
    }

    /// Kills whatever of this driver is still alive, then removes the folder.
    pub fn end(&self, pgid: Option<i32>) {
        procs::kill_all(&self.id, pgid, KILL_WAIT);
        remove(&self.path);
    }
}

fn remove(path: &Path) -> bool {
    match std::fs::remove_dir_all(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot remove a browser profile.");
            false
        }
    }
}

/// What `reap_orphans` found and removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Browser processes (chromedriver, Chromium, the guard) killed.
    pub processes: usize,
    /// Process groups of earlier versions' records killed.
    pub groups: usize,
    /// Profile folders removed.
    pub profiles: usize,
}

/// Kills the browsers a dead precert left and removes their profiles: every
/// `DATA/run/profiles/*` whose owner has ended, the records earlier versions
/// wrote (`DATA/run/chromedriver-PGID.pgid`) and their profiles in the
/// temporary directory (`precert-browser-*`). What belongs to a live precert
/// (the daemon, a `precert run` next door) is left alone.
///
/// Cheap when there is nothing to do: three directory reads, and one open
/// and `flock` per running driver.
pub fn reap_orphans(data_dir: &Path) -> Reaped {
    let run = data_dir.join("run");
    let mut reaped = Reaped::default();
    reap_profiles(&run.join("profiles"), &mut reaped);
    reap_old_records(&run, &mut reaped);
    reap_old_tmp_profiles(&std::env::temp_dir(), &mut reaped);
    if reaped != Reaped::default() {
        tracing::warn!(
            processes = reaped.processes,
            groups = reaped.groups,
            profiles = reaped.profiles,
            "Killed browsers and removed profiles left by an earlier precert process."
        );
    }
    reaped
}

fn reap_profiles(dir: &Path, reaped: &mut Reaped) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let root = e.path();
        match File::open(root.join("lock")) {
            Ok(lock) if !try_lock(&lock) => continue,
            Ok(_) => {}
            // No lock file: a folder being created (for microseconds), or
            // one a crash or a failed removal left without its lock.
            Err(_) if !abandoned(&root) => continue,
            Err(_) => {}
        }
        let id = e.file_name().to_string_lossy().into_owned();
        let pgid = std::fs::read_to_string(root.join("pgid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        reaped.processes += procs::kill_all(&id, pgid, KILL_WAIT);
        if remove(&root) {
            reaped.profiles += 1;
        }
    }
}

/// A folder without a lock for a minute is no driver's: one takes its lock
/// right after creating it.
fn abandoned(root: &Path) -> bool {
    std::fs::metadata(root)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(60)))
}

/// `chromedriver-PGID.pgid` holding the owner's process id, from versions
/// before profiles moved under `DATA/run/`. Their processes carry no mark,
/// so a group is killed only while one of its live members is chromedriver
/// or Chromium (the id may have been reused).
fn reap_old_records(run: &Path, reaped: &mut Reaped) {
    let Ok(entries) = std::fs::read_dir(run) else {
        return;
    };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pgid) = name
            .strip_prefix("chromedriver-")
            .and_then(|s| s.strip_suffix(".pgid"))
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let owner: Option<i32> = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if owner.is_some_and(procs::pid_alive) {
            continue;
        }
        if pgid > 1 && procs::group_is_browser(pgid) {
            // SAFETY: kill(2) on a group that is still a browser's.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            reaped.groups += 1;
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// Earlier versions kept profiles in `TMPDIR/precert-browser-*`, and left
/// them there after a crash. They name no owner, so they are removed only
/// while no earlier precert can be running: no chromedriver without the
/// mark on this machine, and no live process naming the folder. Each must
/// also be this user's.
fn reap_old_tmp_profiles(tmp: &Path, reaped: &mut Reaped) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let old: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("precert-browser-"))
        .map(|e| e.path())
        .collect();
    if old.is_empty() || procs::unmarked_chromedriver_running() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for path in old {
        let mine = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if mine && !procs::path_in_use(&path) && remove(&path) {
            reaped.profiles += 1;
        }
    }
}
