//! The shipped systemd unit is one systemd accepts.

use std::path::Path;
use std::process::Command;

use super::support::REPO;

#[test]
fn the_service_unit_passes_systemd_analyze_verify() {
    let shipped = std::fs::read_to_string(Path::new(REPO).join("systemd/precert.service")).unwrap();
    // The shipped unit names the installed binary; verify wants ExecStart to
    // exist, so the copy under test names the one cargo built.
    let exec = "ExecStart=/usr/bin/precert --config /etc/precert/precert.toml daemon";
    assert!(
        shipped.lines().any(|l| l == exec),
        "the shipped unit runs /usr/bin/precert"
    );
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "KillMode=control-group",
        "User=precert",
        "StateDirectory=precert",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/precert",
        "NoNewPrivileges=yes",
    ] {
        assert!(shipped.lines().any(|l| l == line), "the unit says {line}");
    }
    assert!(shipped.lines().any(|l| l.starts_with("WatchdogSec=")));
    // Chromium's JIT needs writable executable memory.
    assert!(!shipped.lines().any(|l| l.starts_with("MemoryDenyWriteExecute")));

    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("precert.service");
    let built = exec.replace("/usr/bin/precert", env!("CARGO_BIN_EXE_precert"));
    std::fs::write(&unit, shipped.replace(exec, &built)).unwrap();

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
