//! Logs carry neither secrets nor unmasked member IDs or patient names,
//! even at the most verbose level and in JSON.

use super::support::{stderr, Project, SECRETS};

#[test]
fn logs_hold_no_secret_and_no_unmasked_phi() {
    let p = Project::new();
    let mut logs = String::new();
    let steps: &[(&[&str], &str)] = &[
        (&["check"], "json"),
        (&["check"], "human"),
        (&["cases", "import", "samples/cases.csv"], "json"),
        (&["cases", "import", "samples/cases.json"], "human"),
        (
            &[
                "cases",
                "set-status",
                "VI-88122",
                "needs_attention",
                "--note",
                "member inactive",
            ],
            "json",
        ),
        (&["cases", "set-status", "VI-88122", "cancelled"], "human"),
        (&["cases", "show", "VI-88122"], "json"),
        (&["cases", "list"], "human"),
    ];
    for (args, format) in steps {
        let out = p
            .command(args)
            .env("PRECERT_LOG", "trace")
            .env("PRECERT__LOG__FORMAT", format)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        logs.push_str(&stderr(&out));
        logs.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    // The logs did say something about the cases and the configuration.
    assert!(logs.contains("Case imported."), "{logs}");
    assert!(logs.contains("Configuration loaded."), "{logs}");
    assert!(logs.contains("********0301"), "member IDs appear masked: {logs}");
    assert!(logs.contains("[REDACTED]"), "secrets appear redacted: {logs}");
    for (_, secret) in SECRETS {
        assert!(!logs.contains(secret), "a secret leaked into the logs: {secret}");
    }
    for phi in [
        "SBX100200301",
        "SBX100200304",
        "Marsh",
        "Abara",
        "Lindqvist",
        "1961-04-12",
    ] {
        assert!(!logs.contains(phi), "PHI leaked into the logs: {phi}");
    }
}
