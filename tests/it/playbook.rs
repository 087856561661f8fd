//! `precert check` reads every playbook and reports each problem with
//! file:line:col; the shipped playbooks pass.

use super::support::{stderr, stdout, Project};

const GOOD: &str = r##"payer:
  id: acme
  name: Acme Health
  channel: web
  base_url: https://portal.acme.example
credentials: [username, password]
outcomes:
  "Pending Review": pending
  "More Info Needed": pended_for_info
  "Approved": approved
  "Partial": partially_approved
  "Denied": denied
  "Cancelled": cancelled
  "Expired": expired
actions:
  login:
    - navigate: "{{ payer.base_url }}/login"
    - fill: { selector: "#user", value: "{{ account.username }}" }
    - fill: { selector: "#pass", value: "{{ secrets.password }}" }
    - click: "#go"
  submit:
    - click: "#send"
      commit: true
    - extract: { selector: "#ref", into: reference }
    - outcome: { status: "Pending Review", reference: "{{ vars.reference }}" }
  poll_status:
    - navigate: "{{ payer.base_url }}/status/{{ case.payer_reference }}"
    - outcome: { status: "Approved" }
  download_letter:
    - download: { selector: "a.letter", kind: letter }
  find_existing:
    - navigate: "{{ payer.base_url }}/search"
"##;

fn check_with(p: &Project, name: &str, text: &str) -> (bool, String) {
    p.write(&format!("playbooks/{name}"), text);
    let out = p.precert(&["check"]);
    (out.status.success(), stderr(&out))
}

#[test]
fn the_shipped_playbooks_pass_check() {
    let p = Project::new();
    let out = p.precert(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("playbook sandbox "), "{}", stdout(&out));
    assert!(stdout(&out).contains("2 playbook(s)"), "{}", stdout(&out));
}

#[test]
fn a_good_playbook_passes() {
    let p = Project::new();
    let (ok, err) = check_with(&p, "acme.yaml", GOOD);
    assert!(ok, "{err}");
}

#[test]
fn an_unknown_step_is_reported_at_its_line_and_column() {
    let p = Project::new();
    let text = GOOD.replace(r##"    - click: "#go""##, r##"    - clik: "#go""##);
    let (ok, err) = check_with(&p, "acme.yaml", &text);
    assert!(!ok);
    let file = p.path("playbooks/acme.yaml").display().to_string();
    assert!(
        err.contains(&format!("{file}:20:7: unknown key `clik`; did you mean `click`?")),
        "{err}"
    );
}

/// Where `needle` is in `text`, as `line:col` (from 1).
fn at(text: &str, needle: &str) -> String {
    let (n, line) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"));
    format!("{}:{}", n + 1, line.find(needle).unwrap() + 1)
}

#[test]
fn every_unknown_key_of_a_playbook_is_reported_in_one_run() {
    let p = Project::new();
    let text = GOOD
        .replace("  channel: web", "  chanel: web")
        .replace("credentials: [", "vendor: acme\ncredentials: [")
        .replace(r##"fill: { selector: "#user""##, r##"fill: { selectr: "#user""##)
        .replace(r##"    - click: "#go""##, r##"    - clik: "#go""##)
        .replace("      commit: true", "      comit: true")
        .replace("into: reference }", "intoo: reference }");
    let (ok, err) = check_with(&p, "acme.yaml", &text);
    assert!(!ok);
    let f = p.path("playbooks/acme.yaml").display().to_string();
    for (needle, message) in [
        ("chanel", "unknown key `chanel`; did you mean `channel`?"),
        (
            "vendor",
            "unknown key `vendor`; the keys here are payer, credentials, detect, outcomes, actions",
        ),
        ("selectr", "unknown key `selectr`; did you mean `selector`?"),
        ("clik", "unknown key `clik`; did you mean `click`?"),
        ("comit", "unknown key `comit`; did you mean `commit`?"),
        ("intoo", "unknown key `intoo`; did you mean `into`?"),
    ] {
        let line = format!("{f}:{}: {message}", at(&text, needle));
        assert!(err.contains(&line), "missing {line:?} in:\n{err}");
    }
    // Each typo was read as the key it resembles: no "missing field
    // `selector`", no step without a step key; and one count.
    assert_eq!(err.lines().count(), 7, "{err}");
    assert!(err.ends_with("6 problems found\n"), "{err}");
}

#[test]
fn semantic_problems_are_all_reported_with_file_line_and_column() {
    let p = Project::new();
    let text = GOOD
        .replace("{{ account.username }}", "{{ account.user_name }}")
        .replace(r##"selector: "#pass""##, r##"selector: "#pass[""##)
        .replace("{{ case.payer_reference }}", "{{ case.payer_ref }}")
        .replace(r#"  "Expired": expired"#, "")
        .replace(
            "  find_existing:\n    - navigate: \"{{ payer.base_url }}/search\"\n",
            "",
        )
        .replace(
            "into: reference }\n    - outcome: { status: \"Pending Review\", reference: \"{{ vars.reference }}\" }",
            "into: reference }\n    - outcome: { status: \"Pending Review\", reference: \"{{ vars.referense }}\" }",
        );
    let (ok, err) = check_with(&p, "acme.yaml", &text);
    assert!(!ok);
    let f = p.path("playbooks/acme.yaml").display().to_string();
    for needle in [
        format!("{f}:16:3: missing action: find_existing"),
        format!("{f}:18:41: undefined variable `account.user_name` (list the name under `credentials:`)"),
        format!("{f}:19:25: `#pass[` is not a CSS selector"),
        format!("{f}:25:55: undefined variable `vars.referense` (no earlier step sets it)"),
        format!("{f}:27:17: undefined variable `case.payer_ref`"),
    ] {
        assert!(err.contains(&needle), "missing {needle:?} in:\n{err}");
    }
    assert!(err.contains("5 problems found"), "{err}");
    // A status the portal never shows may be left out of the map.
    assert!(!err.contains(":8:3:"), "{err}");
}

#[test]
fn a_practice_bound_to_a_missing_playbook_or_credential_is_reported() {
    let p = Project::new();
    std::fs::remove_file(p.path("playbooks/sandbox-pas.yaml")).unwrap();
    let text = std::fs::read_to_string(p.path("playbooks/sandbox.yaml")).unwrap();
    p.write(
        "playbooks/sandbox.yaml",
        &text.replace(
            "credentials: [username, password, totp_seed]",
            "credentials: [username, password, totp_seed, pin]",
        ),
    );
    let out = p.precert(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("lakeside-ortho.toml: payers.sandbox-pas: no playbook `sandbox-pas`"),
        "{err}"
    );
    assert!(err.contains("valley-imaging.toml: payers.sandbox: playbook sandbox needs credential `pin`: set account.pin or secrets.pin"), "{err}");
}

#[test]
fn templates_inside_selectors_are_checked_as_they_render_and_loops_take_expressions() {
    let p = Project::new();
    let text = GOOD.replace(
        r##"    - click: "#go""##,
        r##"    - click: "#go"
    - set: { code: "123456", codes: "a,b" }
    - for_each:
        list: vars.code
        as: digit
        steps:
          - fill: { selector: "#otp input:nth-of-type({{ index }})", value: "{{ digit }}" }
    - for_each:
        list: "vars.codes | split(',')"
        steps:
          - click: "li[data-code={{ item }}] > button, [value='{{ item }}']"
    - click: "{% if vars.code %}#with{% else %}#without{% endif %}""##,
    );
    let (ok, err) = check_with(&p, "acme.yaml", &text);
    assert!(ok, "{err}");

    let bad = GOOD.replace(
        r##"    - click: "#go""##,
        r##"    - click: "li:nth-of-type({{ case.id }}) [value=two words]"
    - for_each:
        list: vars.nothing
        steps:
          - click: "#x""##,
    );
    let (ok, err) = check_with(&p, "acme.yaml", &bad);
    assert!(!ok);
    let f = p.path("playbooks/acme.yaml").display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:20:14: `li:nth-of-type({{{{ case.id }}}}) [value=two words]` is not a CSS selector \
             (with sample values: `li:nth-of-type(0) [value=two words]`): unexpected text at this point"
        )),
        "{err}"
    );
    assert!(!err.contains("report this to the developer"), "{err}");
    assert!(
        err.contains(&format!(
            "{f}:22:15: undefined variable `vars.nothing` (no earlier step sets it)"
        )),
        "{err}"
    );
}

/// `fetch` is checked like every step: its URL, what it reads into, and
/// that its steps read the fetched page (no browser action inside it).
#[test]
fn fetch_steps_are_checked() {
    let p = Project::new();
    let good = GOOD.replace(
        r##"    - outcome: { status: "Approved" }"##,
        r##"    - fetch:
        url: "/api/status/{{ case.payer_reference }}"
        into: answer
    - fetch:
        url: "{{ payer.base_url }}/status/{{ case.payer_reference }}"
        steps:
          - extract: { label: "Status", into: status }
          - if: { present: "#pended" }
            then:
              - extract: { selector: "#pended", into: request }
    - outcome: { status: "{{ vars.status }}", request: "{{ vars.answer }}" }"##,
    );
    let (ok, err) = check_with(&p, "acme.yaml", &good);
    assert!(ok, "{err}");

    let bad = GOOD.replace(
        r##"    - outcome: { status: "Approved" }"##,
        r##"    - fetch:
        url: "status.json"
        into: answer
    - fetch:
        url: "/status"
        steps:
          - click: "#more"
    - fetch:
        url: "/status"
    - outcome: { status: "Approved" }"##,
    );
    let (ok, err) = check_with(&p, "acme.yaml", &bad);
    assert!(!ok);
    let f = p.path("playbooks/acme.yaml").display().to_string();
    assert!(
        err.contains(&format!(
            "{f}:{}: url `status.json` is not an http(s) URL, a path on the payer's base URL",
            at(&bad, "\"status.json")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{f}:{}: `click` is not a read: inside `fetch`",
            at(&bad, "click: \"#more\"")
        )),
        "{err}"
    );
    assert!(
        err.contains("fetch needs `into` (a JSON answer into a variable) or `steps`"),
        "{err}"
    );
}
