//! Configuration errors name the file and the key, all at once; secrets are
//! read from where the configuration says and never printed.

use std::os::unix::fs::PermissionsExt;

use precert::config::{self, Secrets};
use secrecy::ExposeSecret;

use super::support::{stderr, stdout, Project};

fn errors_of(project: &Project, secrets: Secrets) -> Vec<String> {
    match config::load(&project.config_path(), secrets) {
        Ok(_) => panic!("the configuration should not load"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_sample_configuration_passes_check() {
    let p = Project::new();
    let out = p.precert(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("lakeside-ortho") && text.contains("valley-imaging"),
        "{text}"
    );
    assert!(text.contains("configuration ok: 2 practice(s)"), "{text}");
}

#[test]
fn a_missing_file_is_named_and_exits_2_as_the_readme_says() {
    let p = Project::new();
    // README: 2 for "failures to run (unreadable file, …)".
    for args in [&["check"][..], &["cases", "list"][..]] {
        let out = p
            .command(args)
            .arg("--config")
            .arg(p.path("nowhere.toml"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("nowhere.toml: configuration file not found"), "{err}");
        // Nothing else is checked without it: no noise about practices.
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_configuration_that_does_not_check_exits_1_in_every_command() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("mask_phi = true", "mask_phi = true\ncolour = \"blue\"");
    p.write("config/precert.toml", &text);
    // README: 1 for "a configuration that does not check".
    for args in [&["check"][..], &["cases", "list"][..]] {
        let out = p.precert(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("colour"), "{}", stderr(&out));
    }
}

#[test]
fn an_unknown_key_is_named_with_its_file_and_line() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.config_path())
        .unwrap()
        .replace("mask_phi = true", "mask_phi = true\ncolour = \"blue\"");
    p.write("config/precert.toml", &text);
    let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
    let errors = errors_of(&p, Secrets::Skip);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].ends_with(&format!(
            "precert.toml: log.colour: unknown key (line {line}); the keys here are format, level, mask_phi"
        )),
        "{errors:?}"
    );
}

#[test]
fn an_unknown_key_in_a_nested_table_is_named_once() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.config_path()).unwrap()
        + "\n[mail.smtp]\nhost = \"localhost\"\nfrom = \"x@y.example\"\n";
    p.write("config/precert.toml", &text);
    let line = text.lines().count();
    let errors = errors_of(&p, Secrets::Skip);
    let unknown: Vec<&String> = errors.iter().filter(|e| e.contains("unknown key")).collect();
    assert_eq!(unknown.len(), 1, "{errors:?}");
    assert!(
        unknown[0].contains(&format!(
            "precert.toml: mail.smtp.from: unknown key (line {line}); the keys here are host, port"
        )),
        "{errors:?}"
    );
    // Reading went on past it, so the table's other problem shows too.
    assert!(
        errors
            .iter()
            .any(|e| e.contains("mail.smtp: is set but mail.transport is `file`")),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn check_prints_every_unknown_key_of_a_practice_in_one_run_with_a_suggestion() {
    let p = Project::new();
    let file = "config/practices/valley-imaging.toml";
    // Five typos, one per kind of table: the top, an array of tables, a
    // table, a payer and a secret reference.
    let text = std::fs::read_to_string(p.path(file))
        .unwrap()
        .replace("timezone =", "timzone =")
        .replace(
            "name = \"Valley Imaging Center\"\naddress",
            "nmae = \"Valley Imaging Center\"\naddress",
        )
        .replace("supervisors =", "supervisor =")
        .replace("account =", "acount =")
        .replace("password = { env =", "password = { evn =");
    p.write(file, &text);
    let line = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        format!(
            "valley-imaging.toml: timzone: unknown key (line {}); did you mean `timezone`?",
            line("timzone")
        ),
        format!(
            "valley-imaging.toml: locations[0].nmae: unknown key (line {}); did you mean `name`?",
            line("nmae")
        ),
        format!(
            "valley-imaging.toml: contacts.supervisor: unknown key (line {}); did you mean `supervisors`?",
            line("supervisor")
        ),
        format!(
            "valley-imaging.toml: payers.sandbox.acount: unknown key (line {}); did you mean `account`?",
            line("acount")
        ),
        format!(
            "valley-imaging.toml: payers.sandbox.secrets.password.evn: unknown key (line {}); did you mean `env`?",
            line("secrets.password")
        ),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    // Each typo is read as the key it resembles, so nothing else is
    // reported (no "timezone is required"), and the count is said once.
    assert_eq!(err.lines().count(), 6, "{err}");
    assert!(err.ends_with("5 problems found\n"), "{err}");
    assert!(!err.contains("problem(s)"), "{err}");
}

#[test]
fn an_unknown_key_without_a_close_one_lists_the_keys_and_other_problems_still_show() {
    let p = Project::new();
    let file = "config/practices/valley-imaging.toml";
    let text = std::fs::read_to_string(p.path(file))
        .unwrap()
        .replace("[contacts]", "[contacts]\npager = \"555-0100\"")
        .replace("1679576722", "1679576723");
    p.write(file, &text);
    let errors = errors_of(&p, Secrets::Skip);
    assert!(
        errors.iter().any(|e| e.contains(
            "valley-imaging.toml: contacts.pager: unknown key (line 16); the keys here are supervisors, managers, operations"
        )),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("npi: `1679576723` fails the NPI check digit")),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), 2, "{errors:#?}");
}

#[test]
fn every_problem_in_a_practice_is_reported_at_once() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("config/practices/valley-imaging.toml"))
        .unwrap()
        .replace("America/Los_Angeles", "America/Springfield")
        .replace("1679576722", "1679576723")
        .replace("\"0 1,4 * * *\"", "\"0 25 * * *\"")
        .replace("it.ops@valley-imaging.example", "it.ops-at-valley");
    p.write("config/practices/valley-imaging.toml", &text);
    let errors = errors_of(&p, Secrets::Skip);
    let file = "valley-imaging.toml";
    for needle in [
        format!("{file}: timezone: `America/Springfield` is not an IANA time zone"),
        format!("{file}: npi: `1679576723` fails the NPI check digit"),
        format!("{file}: schedules.poll: `0 25 * * *` is not a valid cron expression: hour `25` is out of range: hours are 0-23"),
        format!("{file}: contacts.operations[0]: `it.ops-at-valley` is not an e-mail address"),
    ] {
        assert!(
            errors.iter().any(|e| e.contains(&needle)),
            "missing {needle:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), 4, "{errors:#?}");
}

/// Time zones come from the system's tzdata (`src/tz.rs`): a machine
/// without it is told so, per practice, and `TZDIR` points elsewhere.
#[test]
fn a_machine_without_tzdata_is_told_to_install_it() {
    let p = Project::new();
    let empty = p.path("no-tzdata");
    std::fs::create_dir_all(&empty).unwrap();
    let out = p.command(&["check"]).env("TZDIR", &empty).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    for file in ["lakeside-ortho.toml", "valley-imaging.toml"] {
        assert!(
            err.lines().any(|l| l.contains(file)
                && l.contains("timezone: time zones are read from the system's time zone database")
                && l.contains("install tzdata, or set TZDIR")),
            "{file} in {err}"
        );
    }
    // A copy of the two zones the practices name is enough.
    for zone in ["America/Chicago", "America/Los_Angeles"] {
        let to = empty.join(zone);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::path::Path::new("/usr/share/zoneinfo").join(zone), &to).unwrap();
    }
    let out = p.command(&["check"]).env("TZDIR", &empty).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_unresolvable_secret_is_reported_with_where_it_was_looked_for() {
    let p = Project::new();
    let out = p
        .command(&["check"])
        .env_remove("VALLEY_SANDBOX_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("valley-imaging.toml: payers.sandbox.secrets.password: environment variable VALLEY_SANDBOX_PASSWORD is not set"),
        "{err}"
    );
    // The other secrets resolved and are not reported, nor printed.
    assert_eq!(err.matches("is not set").count(), 1, "{err}");
    assert!(!err.contains("Sandbox-Lakeside-2026"), "{err}");

    let out = p
        .command(&["check"])
        .env("VALLEY_SANDBOX_PASSWORD", "")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("environment variable VALLEY_SANDBOX_PASSWORD is empty"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_secret_written_in_the_file_is_refused() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.path("config/practices/valley-imaging.toml"))
        .unwrap()
        .replace(
            "secrets.password = { env = \"VALLEY_SANDBOX_PASSWORD\" }",
            "secrets.password = \"hunter2\"",
        );
    p.write("config/practices/valley-imaging.toml", &text);
    let errors = errors_of(&p, Secrets::Resolve);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("payers.sandbox.secrets.password: a secret's value cannot be written")),
        "{errors:#?}"
    );
    assert!(!errors.iter().any(|e| e.contains("hunter2")), "{errors:#?}");
}

#[test]
fn secrets_come_from_files_and_systemd_credentials() {
    let p = Project::new();
    let creds = p.path("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("valley-portal"), "from-credential\n").unwrap();
    std::fs::set_permissions(creds.join("valley-portal"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let seed = p.write("secrets/valley-seed", "KRSXG5CTMVRXEZLU\n");
    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(p.path("config/practices/valley-imaging.toml"))
        .unwrap()
        .replace(
            "{ env = \"VALLEY_SANDBOX_PASSWORD\" }",
            "{ credential = \"valley-portal\" }",
        )
        .replace(
            "{ env = \"VALLEY_SANDBOX_TOTP_SEED\" }",
            "{ file = \"../../secrets/valley-seed\" }",
        );
    p.write("config/practices/valley-imaging.toml", &text);

    // Without $CREDENTIALS_DIRECTORY, and with a seed file others can read.
    let out = p.precert(&["check"]);
    let err = stderr(&out);
    assert!(err.contains("payers.sandbox.secrets.password: systemd credential valley-portal cannot be read: $CREDENTIALS_DIRECTORY is not set"), "{err}");
    assert!(
        err.contains("payers.sandbox.secrets.totp_seed: secret file") && err.contains("readable by others (mode 0644)"),
        "{err}"
    );

    std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = p
        .command(&["check"])
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // In-process: the values are there, and Debug does not show them.
    // SAFETY: this test's own process; nextest runs each test alone.
    unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", &creds) };
    for (k, v) in super::support::SECRETS {
        unsafe { std::env::set_var(k, v) };
    }
    let settings = config::load(&p.config_path(), Secrets::Resolve).unwrap();
    let valley = settings.practice("valley-imaging").unwrap();
    let secrets = &valley.payers["sandbox"].secrets;
    assert_eq!(secrets["password"].value().unwrap().expose_secret(), "from-credential");
    assert_eq!(
        secrets["totp_seed"].value().unwrap().expose_secret(),
        "KRSXG5CTMVRXEZLU"
    );
    let debug = format!("{settings:?}");
    assert!(debug.contains("[REDACTED]"), "{debug}");
    for needle in ["from-credential", "KRSXG5CTMVRXEZLU", "Sandbox-Lakeside-2026"] {
        assert!(!debug.contains(needle), "Debug output shows a secret: {needle}");
    }
}

#[test]
fn environment_variables_override_the_file() {
    let p = Project::new();
    let out = p
        .command(&["check"])
        .env("PRECERT__HTTP__LISTEN", "not-an-address")
        .env("PRECERT__WEBDRIVER__MAX_SESSIONS", "0")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("precert.toml: http.listen: `not-an-address` is not an address"),
        "{err}"
    );
    assert!(err.contains("webdriver.max_sessions: must be at least 1"), "{err}");

    let out = p.command(&["check"]).env("PRECERT__NO_SUCH_KEY", "1").output().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("precert.toml: no_such_key: unknown key (from the environment variable PRECERT__NO_SUCH_KEY)"),
        "{err}"
    );
}

#[test]
fn console_keys_are_checked_and_mail_links_follow_the_public_url() {
    let p = Project::new();
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    p.write(
        "config/precert.toml",
        &format!("{text}\n[console]\nack_link_hours = 0\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.internal\"]\n"),
    );
    let errors = errors_of(&p, Secrets::Skip);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("console.ack_link_hours") && e.contains("at least 1")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("console.trusted_proxies[1]") && e.contains("`proxy.internal` is not an IP address")),
        "{errors:?}"
    );
    // Without http.public_url, mail links reach the console's own listener;
    // with it, the proxy in front.
    let p = Project::new();
    assert_eq!(p.settings().console.public_url, "http://127.0.0.1:8623");
    let text = std::fs::read_to_string(p.config_path()).unwrap().replacen(
        "[http]\n",
        "[http]\npublic_url = \"https://precert.example.org/\"\n",
        1,
    );
    p.write("config/precert.toml", &text);
    let s = p.settings();
    assert_eq!(s.console.public_url, "https://precert.example.org");
    assert_eq!(s.console.ack_link_valid, std::time::Duration::from_secs(72 * 3600));
}
