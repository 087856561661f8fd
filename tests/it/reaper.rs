//! No browser outlives precert. A killed `precert run` takes its chromedriver
//! and Chromium with it; what survives anyway (its guard killed first) is
//! reaped by the next command, one that needs no browser; and no browser
//! profile is left in the data directory or the temporary directory, after
//! a normal run or after a crash and the reap.
//!
//! Real processes throughout: the precert binary, chromedriver and headless
//! Chromium, observed through `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use precert_sandbox::{Sandbox, SandboxConfig};

use super::support::{stderr, stdout, Project};

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone)]
pub(super) struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub comm: String,
}

/// Every running process (zombies have ended and are left out).
pub(super) fn processes() -> Vec<Proc> {
    let mut all = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
        if matches!(f[0], "Z" | "X" | "x") {
            continue;
        }
        all.push(Proc {
            pid,
            ppid: f[1].parse().unwrap(),
            pgrp: f[2].parse().unwrap(),
            comm: text[open + 1..close].to_owned(),
        });
    }
    all
}

/// Running processes of the driver whose folder is `DATA/run/profiles/ID`:
/// `PRECERT_BROWSER=ID` in their environment, or Chromium with its profile
/// in that folder (Chromium's helpers overwrite their environment with
/// their title).
pub(super) fn of_driver(id: &str) -> Vec<Proc> {
    let mark = format!("PRECERT_BROWSER={id}");
    let folder = format!("/run/profiles/{id}/");
    processes()
        .into_iter()
        .filter(|p| {
            let env = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
            let cmdline =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default())
                    .into_owned();
            env.split(|b| *b == 0).any(|v| v == mark.as_bytes())
                || (cmdline.contains("--user-data-dir=") && cmdline.contains(&folder))
        })
        .collect()
}

pub(super) fn in_group(pgid: i32) -> Vec<Proc> {
    processes().into_iter().filter(|p| p.pgrp == pgid).collect()
}

fn describe(procs: &[Proc]) -> String {
    procs
        .iter()
        .map(|p| format!("{} {}", p.pid, p.comm))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits (bounded) until `done` holds.
pub(super) async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `precert run` with a browser open on a portal that never answers, so
/// that it stays there until the test is done with it.
struct Stuck {
    p: Project,
    child: Child,
    /// The connection the browser opened, held open, never answered.
    _portal: tokio::net::TcpStream,
    /// The process group of chromedriver and Chromium.
    pgid: i32,
    /// The driver's id: its folder's name.
    id: String,
    /// The profile folder of the run's driver.
    root: PathBuf,
    /// precert's own TMPDIR.
    tmp: PathBuf,
}

async fn stuck_run() -> Stuck {
    let portal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = Project::new();
    p.use_sandbox(&format!("http://{}", portal.local_addr().unwrap()));
    let out = p.precert(&["cases", "import", "samples/cases.csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tmp = p.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = p.command(&["run", "sandbox", "submit", "--case", "LO-2026-1001"]);
    cmd.env("TMPDIR", &tmp).stdout(Stdio::null()).stderr(Stdio::null());
    let child = cmd.spawn().unwrap();
    let (conn, _) = tokio::time::timeout(Duration::from_secs(60), portal.accept())
        .await
        .expect("the browser reaches the portal")
        .unwrap();
    let me = child.id() as i32;
    let chromedriver = processes()
        .into_iter()
        .find(|p| p.ppid == me && p.comm == "chromedriver")
        .expect("chromedriver is precert's child");
    let pgid = chromedriver.pgrp;
    let profiles = entries(&p.path("data/run/profiles"));
    assert_eq!(profiles.len(), 1, "one driver, one profile folder: {profiles:?}");
    let root = p.path("data/run/profiles").join(&profiles[0]);
    Stuck {
        id: profiles[0].clone(),
        p,
        child,
        _portal: conn,
        pgid,
        root,
        tmp,
    }
}

impl Stuck {
    fn kill(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_precert_takes_its_chromedriver_and_chromium_with_it() {
    let mut s = stuck_run().await;
    let before = in_group(s.pgid);
    assert!(
        before.iter().any(|p| p.comm == "chromedriver") && before.iter().any(|p| p.comm == "chromium"),
        "chromedriver and Chromium run in one group: {}",
        describe(&before)
    );
    let ours = of_driver(&s.id);
    assert!(
        before.iter().all(|b| ours.iter().any(|o| o.pid == b.pid)),
        "every process of the group is known as the driver's: {} of {}",
        describe(&ours),
        describe(&before)
    );
    // Chromium writes its profile and temporary files in the driver's folder.
    let chromium = before.iter().find(|p| p.comm == "chromium").unwrap();
    let cmdline = String::from_utf8(std::fs::read(format!("/proc/{}/cmdline", chromium.pid)).unwrap()).unwrap();
    assert!(
        cmdline.contains(&format!("--user-data-dir={}", s.root.display())),
        "{cmdline}"
    );
    eprintln!(
        "before SIGKILL: {} processes in group {}: {}",
        before.len(),
        s.pgid,
        describe(&before)
    );

    let killed = std::time::Instant::now();
    s.kill();
    until(
        Duration::from_secs(10),
        "chromedriver and Chromium end with precert",
        || in_group(s.pgid).is_empty() && of_driver(&s.id).is_empty(),
    )
    .await;
    eprintln!(
        "no process of the group or the driver left {:?} after SIGKILL",
        killed.elapsed()
    );

    // The crash left the profile; the next command, which needs no browser,
    // removes it.
    assert!(s.root.is_dir());
    let out = s.p.precert(&["cases", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("LO-2026-1001"));
    assert!(!s.root.exists(), "the dead run's profile is removed");
    assert_eq!(entries(&s.p.path("data/run/profiles")), Vec::<String>::new());
    assert_eq!(entries(&s.tmp), Vec::<String>::new(), "nothing in TMPDIR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_that_survive_their_precert_are_reaped_by_the_next_command() {
    let mut s = stuck_run().await;
    // Without its guard (killed here, as the OOM killer might), the group
    // outlives precert: chromedriver dies by its parent-death signal, but
    // Chromium does not die with chromedriver.
    let me = s.child.id() as i32;
    let guard = in_group(s.pgid)
        .into_iter()
        .find(|p| p.ppid == me && p.comm == "sh")
        .expect("the guard leads the group");
    assert_eq!(guard.pid, s.pgid);
    // SAFETY: signalling a process of the test's own precert.
    unsafe { libc::kill(guard.pid, libc::SIGKILL) };
    until(Duration::from_secs(10), "the guard ends", || {
        !in_group(s.pgid).iter().any(|p| p.pid == guard.pid)
    })
    .await;
    s.kill();
    until(Duration::from_secs(10), "chromedriver ends with precert", || {
        !in_group(s.pgid).iter().any(|p| p.comm == "chromedriver")
    })
    .await;
    let left = in_group(s.pgid);
    assert!(
        left.iter().any(|p| p.comm == "chromium"),
        "Chromium outlives chromedriver: {}",
        describe(&left)
    );
    eprintln!("left by the dead precert: {}", describe(&left));

    let out = s.p.precert(&["cases", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("left by an earlier precert process"),
        "{}",
        stderr(&out)
    );
    // The reap waits for the processes it killed before it returns.
    assert_eq!(describe(&in_group(s.pgid)), "", "no process of the group is left");
    assert_eq!(describe(&of_driver(&s.id)), "", "no process of the driver is left");
    assert!(!s.root.exists(), "the dead run's profile is removed");
    assert_eq!(entries(&s.tmp), Vec::<String>::new(), "nothing in TMPDIR");

    // A second command finds nothing to do, and says nothing.
    let out = s.p.precert(&["cases", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("earlier precert"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ends_normally_leaves_no_profile_in_data_or_tmp() {
    let sandbox = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0")
        .await
        .unwrap();
    let p = Project::new();
    p.use_sandbox(&sandbox.base_url());
    assert!(p.precert(&["cases", "import", "samples/cases.csv"]).status.success());
    let tmp = p.path("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = p.command(&["run", "sandbox", "submit", "--case", "LO-2026-1001"]);
    cmd.env("TMPDIR", &tmp);
    // The subprocess blocks a thread; the sandbox serves on the other.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(sandbox.submissions().len(), 1, "the run used the browser");
    assert_eq!(entries(&p.path("data/run/profiles")), Vec::<String>::new());
    assert_eq!(entries(&tmp), Vec::<String>::new(), "nothing in TMPDIR");
    sandbox.shutdown().await;
}
