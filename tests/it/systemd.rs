//! The shipped systemd unit: one systemd accepts, hardened to a low
//! `systemd-analyze security` exposure, and Chromium still runs under its
//! system-call, namespace and address-family filters.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::REPO;

const EXEC: &str = "ExecStart=/usr/bin/precert --config /etc/precert/precert.toml daemon";

fn shipped() -> String {
    std::fs::read_to_string(Path::new(REPO).join("systemd/precert.service")).unwrap()
}

/// The shipped unit names the installed binary; systemd-analyze wants
/// ExecStart to exist, so the copy under test names the one cargo built.
fn unit_under_test(dir: &Path) -> PathBuf {
    let shipped = shipped();
    assert!(
        shipped.lines().any(|l| l == EXEC),
        "the shipped unit runs /usr/bin/precert"
    );
    let unit = dir.join("precert.service");
    let built = EXEC.replace("/usr/bin/precert", env!("CARGO_BIN_EXE_precert"));
    std::fs::write(&unit, shipped.replace(EXEC, &built)).unwrap();
    unit
}

/// The unit's values for a key, in order (`SystemCallFilter=` may repeat).
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let shipped = shipped();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "KillMode=control-group",
        "User=precert",
        "StateDirectory=precert",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateMounts=yes",
        "SystemCallFilter=@system-service",
    ] {
        assert!(shipped.lines().any(|l| l == line), "the unit says {line}");
    }
    assert!(shipped.lines().any(|l| l.starts_with("WatchdogSec=")));
    // Chromium's JIT needs writable, then executable memory.
    assert!(!shipped.lines().any(|l| l.starts_with("MemoryDenyWriteExecute")));

    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (scripts/test installs the systemd package)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // verify exits 0 on some warnings; the unit should have none about itself.
    let about_unit: Vec<&str> = stderr.lines().filter(|l| l.contains("precert.service")).collect();
    assert!(about_unit.is_empty(), "{about_unit:#?}");
}

/// Was 3.8 ("OK") before the system-call filter, private mounts, the
/// namespace ban and the private user namespace;
/// what is left is the network (the payers are on it), AF_UNIX, W+X memory
/// for V8 and the host's root directory.
#[test]
fn the_service_unit_scores_a_low_systemd_analyze_security_exposure() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let overall = stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|l| l.split("Overall exposure level for precert.service:").nth(1))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{stdout}\n{stderr}"));
    let score: f64 = overall
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{overall}"));
    assert!(
        score <= 1.5,
        "exposure {score} (was 3.8; the issue asks ≤ 2.5):\n{stdout}"
    );
}

/// Headless Chromium, started as precert starts it, renders a page that
/// runs JavaScript under the unit's `SystemCallFilter=` (expanded by
/// systemd-analyze itself), `SystemCallErrorNumber=`, `RestrictNamespaces=`
/// and `RestrictAddressFamilies=`, installed with libseccomp
/// (`tests/unit_seccomp.py`), as an unprivileged user with no new
/// privileges, and with `/proc` mounted as `ProtectProc=` and
/// `ProcSubset=` mount it. What this cannot show without systemd as PID 1
/// (`PrivateUsers=`, the read-only file system) is in systemd/README.md.
#[test]
fn chromium_renders_a_page_under_the_units_filters() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "mounting a private /proc needs root: run as root, as CI does"
    );
    let unit = shipped();
    // As systemd reads the lines: the first says allow-list or deny-list,
    // each later one adds (`name`) or takes away (`~name`).
    let mut allowed = std::collections::BTreeSet::new();
    for (i, v) in values(&unit, "SystemCallFilter").into_iter().enumerate() {
        let (deny, names) = match v.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, v),
        };
        assert!(i > 0 || !deny, "the first SystemCallFilter= line is an allow-list");
        let mut calls = Vec::new();
        for name in names.split_whitespace() {
            expand_set(name, &mut calls);
        }
        for call in calls {
            if deny {
                allowed.remove(&call);
            } else {
                allowed.insert(call);
            }
        }
    }
    assert!(allowed.len() > 300 && !allowed.contains("mount"), "{allowed:?}");
    let errno = values(&unit, "SystemCallErrorNumber").join("");
    assert_eq!(errno, "EPERM");
    assert_eq!(values(&unit, "RestrictNamespaces"), ["yes"]);
    let families = values(&unit, "RestrictAddressFamilies").join(" ");

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let page = dir.path().join("page.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><p id=out>static</p><script>\
         let n = 0; for (let i = 0; i < 2e6; i++) { n = (n + i * 7) % 1000003; }\
         document.getElementById('out').textContent = 'computed ' + n;</script></body></html>",
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let policy = dir.path().join("policy.json");
    std::fs::write(
        &policy,
        serde_json::json!({
            "allow": allowed,
            "errno": errno,
            "families": families.split_whitespace().collect::<Vec<_>>(),
        })
        .to_string(),
    )
    .unwrap();
    // ProtectProc= and ProcSubset= are options of the unit's /proc.
    let mut proc_options = vec![format!("hidepid={}", values(&unit, "ProtectProc").join(""))];
    if values(&unit, "ProcSubset") == ["pid"] {
        proc_options.push("subset=pid".into());
    }
    // A mount and PID namespace of its own, so the /proc mounted for it is
    // the unit's and nobody else's; then the filter, then Chromium.
    let script = format!(
        "mount -t proc -o {proc_options} proc /proc && \
         exec setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all \
         /usr/bin/python3 {helper} {policy} /usr/bin/chromium --headless=new --no-sandbox --disable-gpu \
         --disable-dev-shm-usage --disable-background-networking --disable-component-update --disable-sync \
         --no-first-run --disable-crash-reporter --user-data-dir={profile} --dump-dom file://{page}",
        proc_options = proc_options.join(","),
        helper = Path::new(REPO).join("tests/unit_seccomp.py").display(),
        policy = policy.display(),
        profile = profile.display(),
        page = page.display(),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
        ])
        .env("HOME", dir.path())
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("computed "),
        "Chromium under the unit's filters ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The system calls a `SystemCallFilter=` name stands for: itself, or a
/// `@group`'s members as `systemd-analyze syscall-filter` lists them
/// (nested groups expanded in turn).
fn expand_set(set: &str, calls: &mut Vec<String>) {
    if !set.starts_with('@') {
        calls.push(set.to_owned());
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", set])
        .output()
        .expect("systemd-analyze runs");
    assert!(out.status.success(), "systemd-analyze syscall-filter {set}");
    let listing = String::from_utf8_lossy(&out.stdout);
    // The first line names the group; its members are indented.
    for member in listing
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        expand_set(member, calls);
    }
}
