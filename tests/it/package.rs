//! The Debian package installs and runs as `systemd/README.md` says: built
//! with cargo-deb, installed with `dpkg -i` into this machine (as root, as
//! CI runs), then a practice added with its secrets as systemd credentials,
//! `precert check` and `precert cases import` run as the service user
//! against the packaged layout.
//!
//! The package is made from the debug binary the tests just built
//! (`cargo deb --no-build --profile dev --fast`): a release build costs
//! ten minutes and more on two cores, and what is tested here is the
//! packaging — files, modes, owners, conffiles, maintainer scripts,
//! defaults — not the optimiser. A release package is the same command
//! without `--profile dev` after `cargo build --release --workspace`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::support::REPO;

/// The credential names the shipped example practice reads, with the
/// sandbox payer's synthetic values.
const CREDENTIALS: &[(&str, &str)] = &[
    ("lakeside-sandbox-password", "Sandbox-Lakeside-2026"),
    ("lakeside-sandbox-totp-seed", "JBSWY3DPEHPK3PXP"),
    ("lakeside-sandbox-client-secret", "sandbox-lakeside-client-secret"),
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `precert` from the package, as the `precert` user: the service's
/// identity, its group's read access to /etc/precert and nothing more.
fn as_service(credentials: &Path, args: &[&str]) -> Output {
    run(Command::new("setpriv")
        .args([
            "--reuid=precert",
            "--regid=precert",
            "--init-groups",
            "/usr/bin/precert",
        ])
        .args(["--config", "/etc/precert/precert.toml"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("CREDENTIALS_DIRECTORY", credentials)
        .current_dir("/"))
}

fn build_package(out_dir: &Path) -> PathBuf {
    let out = Command::new("cargo")
        .current_dir(REPO)
        .args(["deb", "-p", "precert", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(out_dir)
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo deb failed (scripts/test installs cargo-deb):\n{stderr}"
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or(""));
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{stderr}");
    deb
}

fn mode(path: &str) -> (u32, String, String) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let name = |cmd: &str, id: u32| {
        let out = run(Command::new("getent").args([cmd, &id.to_string()]));
        String::from_utf8_lossy(&out.stdout)
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned()
    };
    (
        meta.permissions().mode() & 0o7777,
        name("passwd", meta.uid()),
        name("group", meta.gid()),
    )
}

#[test]
fn the_package_installs_and_a_practice_imports_cases_as_the_service_user() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the package test installs into this machine with dpkg -i: run it as root, as CI does"
    );
    let work = tempfile::tempdir().unwrap();
    let deb = build_package(work.path());

    // What is in it, before it goes anywhere.
    let contents = String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout).into_owned();
    for path in [
        "./usr/bin/precert",
        "./usr/share/precert/playbooks/sandbox.yaml",
        "./usr/share/precert/playbooks/sandbox-pas.yaml",
        "./usr/share/precert/playbooks/sandbox.requirements.yaml",
        "./usr/share/precert/playbooks/sandbox-imaging-codes.csv",
        "./etc/precert/precert.toml",
        "./usr/lib/systemd/system/precert.service",
        "./usr/lib/sysusers.d/precert.conf",
        "./usr/lib/tmpfiles.d/precert.conf",
        "./usr/share/doc/precert/examples/practice.toml",
        "./usr/share/doc/precert/examples/credentials.conf",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} in\n{contents}");
    }
    let control = String::from_utf8_lossy(&run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Depends")).stdout)
        .into_owned();
    assert!(
        control.contains("chromium,") && control.contains("chromium-driver") && control.contains("tzdata"),
        "{control}"
    );

    run(Command::new("dpkg").arg("-i").arg(&deb));

    // The maintainer scripts made the user and the directories.
    run(Command::new("getent").args(["passwd", "precert"]));
    assert_eq!(mode("/var/lib/precert"), (0o700, "precert".into(), "precert".into()));
    assert_eq!(mode("/etc/precert"), (0o750, "root".into(), "precert".into()));
    assert_eq!(mode("/etc/precert/practices"), (0o750, "root".into(), "precert".into()));
    assert_eq!(mode("/etc/precert/credentials"), (0o700, "root".into(), "root".into()));
    assert_eq!(
        mode("/etc/precert/precert.toml"),
        (0o640, "root".into(), "precert".into())
    );
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "precert"]));
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/precert/precert.toml"),
        "precert.toml is a conffile"
    );

    // A practice, as systemd/README.md says: the example copied, its
    // secrets in root's credential files, handed to the service the way
    // LoadCredential= does (a private copy, 0400, owned by the service
    // user, named by $CREDENTIALS_DIRECTORY).
    run(Command::new("install")
        .args(["-m", "0640", "-g", "precert"])
        .arg("/usr/share/doc/precert/examples/practice.toml")
        .arg("/etc/precert/practices/lakeside-ortho.toml"));
    let loaded = work.path().join("credentials");
    std::fs::create_dir(&loaded).unwrap();
    for (name, value) in CREDENTIALS {
        let at_rest = format!("/etc/precert/credentials/{name}");
        std::fs::write(&at_rest, value).unwrap();
        std::fs::set_permissions(&at_rest, std::fs::Permissions::from_mode(0o600)).unwrap();
        run(Command::new("install")
            .args(["-m", "0400", "-o", "precert", "-g", "precert", &at_rest])
            .arg(loaded.join(name)));
    }
    run(Command::new("chown").arg("precert:precert").arg(&loaded));
    std::fs::set_permissions(&loaded, std::fs::Permissions::from_mode(0o500)).unwrap();
    // The work folder is root's (0700): the service user must reach the
    // credentials and the case file through it, as through /run.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711)).unwrap();

    let check = as_service(&loaded, &["check"]);
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(said.contains("data directory  /var/lib/precert"), "{said}");
    assert!(said.contains("playbook sandbox "), "{said}");
    assert!(
        said.contains("configuration ok: 1 practice(s), 2 playbook(s)"),
        "{said}"
    );

    // The practice's cases from the samples, with their attachments.
    let cases = work.path().join("cases");
    std::fs::create_dir(&cases).unwrap();
    let sample = std::fs::read_to_string(format!("{REPO}/samples/cases.csv")).unwrap();
    let mine: Vec<&str> = sample
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || l.starts_with("lakeside-ortho,"))
        .map(|(_, l)| l)
        .collect();
    std::fs::write(cases.join("cases.csv"), mine.join("\n") + "\n").unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(format!("{REPO}/samples/documents"))
        .arg(&cases));
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(&cases));
    let import = as_service(&loaded, &["cases", "import", cases.join("cases.csv").to_str().unwrap()]);
    let said = String::from_utf8_lossy(&import.stdout).into_owned();
    // A second run of this test finds them imported before: unchanged.
    assert!(said.contains("3 record(s)") && said.contains("0 invalid"), "{said}");

    let list = as_service(&loaded, &["cases", "list"]);
    let said = String::from_utf8_lossy(&list.stdout).into_owned();
    for case in ["LO-2026-1001", "LO-2026-1002", "LO-2026-1003"] {
        assert!(said.contains(&format!("lakeside-ortho/{case}")), "{said}");
    }
    // The ledger and the attachments are the service user's alone.
    assert_eq!(
        mode("/var/lib/precert/precert.db"),
        (0o600, "precert".into(), "precert".into())
    );
    assert_eq!(
        mode("/var/lib/precert/attachments"),
        (0o700, "precert".into(), "precert".into())
    );
}
