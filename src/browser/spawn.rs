//! Starting chromedriver so that it, and every Chromium it starts, dies with
//! precert — however precert ends, SIGKILL included.
//!
//! Two mechanisms, because neither alone is enough:
//!
//! - **The guard.** `/bin/sh` reading a pipe whose only writer is precert
//!   leads a new process group; chromedriver joins it, and Chromium, which
//!   chromedriver starts, stays in it. When precert ends, the kernel closes
//!   the pipe, `read` sees end-of-file, and the guard kills its whole group,
//!   itself included. This is what ends Chromium: it does not inherit a
//!   parent-death signal (fork clears it) and it keeps running when
//!   chromedriver dies.
//! - **A parent-death signal on chromedriver** (`PR_SET_PDEATHSIG`,
//!   SIGKILL), so chromedriver dies with precert even if the guard has been
//!   killed. The kernel sends it when the *thread* that forked the child ends,
//!   not the process (prctl(2)), and tokio's workers and blocking threads
//!   come and go. So every fork happens on one thread that lives as long as
//!   the process (`spawner`).
//!
//! Both carry `PRECERT_BROWSER=ID` in their environment, which Chromium's
//! browser process and crashpad's handlers inherit (Chromium's other
//! processes overwrite theirs with their title, and are known by their
//! `--user-data-dir`): the reaper tells a driver's processes from whatever
//! may have reused their ids by it.

use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::sync::OnceLock;

use tokio::process::{Child, ChildStdin, Command};

use super::reap::ProfileRoot;

/// The environment variable that marks a browser's processes.
pub(super) const MARK: &str = "PRECERT_BROWSER";

/// Waits for end-of-file on its standard input, then kills its process
/// group. It never writes, and ignores lines (precert sends none).
const GUARD_SCRIPT: &str = "while read -r line; do :; done; kill -9 0";

type Job = Box<dyn FnOnce() + Send>;

/// The thread every browser process is forked from. It blocks on a channel
/// whose sender is a static, so it ends only with the process.
fn spawner() -> io::Result<&'static mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    if let Some(tx) = SPAWNER.get() {
        return Ok(tx);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("precert-spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    // Two first callers at once: the loser's thread ends with its channel.
    Ok(SPAWNER.get_or_init(|| tx))
}

/// Runs `f` on the spawner thread, inside the caller's tokio runtime (tokio
/// reaps the children it spawns there).
async fn on_spawner<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    let gone = || io::Error::other("the browser spawner thread is gone");
    let runtime = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner()?
        .send(Box::new(move || {
            let _entered = runtime.enter();
            let _ = tx.send(f());
        }))
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())
}

/// chromedriver and the guard of its process group.
pub(super) struct Group {
    pub pgid: i32,
    pub guard: Child,
    /// The guard's standard input. Dropping it (or precert ending) makes
    /// the guard kill the group.
    pub _lifeline: ChildStdin,
    pub chromedriver: Child,
}

/// Starts the guard, then chromedriver in the guard's process group, with
/// temporary files (`TMPDIR`) and configuration (`XDG_CONFIG_HOME`) inside
/// the driver's profile root, so that nothing Chromium writes lands in
/// `/tmp` or the home directory.
pub(super) async fn start(chromedriver: &Path, port: u16, root: &ProfileRoot) -> io::Result<Group> {
    let chromedriver = chromedriver.to_owned();
    let id = root.id().to_owned();
    let tmp = root.path().join("tmp");
    let config = root.path().join("config");
    crate::store::private_dir(&tmp)?;
    crate::store::private_dir(&config)?;
    on_spawner(move || {
        let mut guard = Command::new("/bin/sh");
        guard
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .env(MARK, &id)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut guard = guard.spawn()?;
        let lifeline = guard
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("the guard has no stdin"))?;
        let pgid = guard.id().ok_or_else(|| io::Error::other("the guard ended at once"))? as i32;

        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .env(MARK, &id)
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", &config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(pgid)
            .kill_on_drop(true);
        // SAFETY: getpid is async-signal-safe; the closure below runs in the
        // child between fork and exec and only calls prctl and getppid
        // (async-signal-safe) and builds errors without allocating.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // precert ended between fork and prctl: the signal will
                // never come, so do not start at all.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let chromedriver = cmd.spawn()?;
        Ok(Group {
            pgid,
            guard,
            _lifeline: lifeline,
            chromedriver,
        })
    })
    .await?
}
