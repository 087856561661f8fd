//! Outgoing mail against real receivers: `.eml` files read back by Python's
//! `email` package, and a real SMTP server (aiosmtpd) that is restarted and
//! stopped under the mailer.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use precert::config::{MailSettings, MailTransport, Secret, SecretRef, SmtpTls};
use precert::mail::{Delivered, Mailer, OutgoingMail, SendErrorKind};

use super::smtp::{parse_eml_file, ReceivedMail, ServerTls, SmtpOptions, SmtpServer};
use super::support::Project;

const FROM: &str = "precert@lakeside-ortho.example";
const WAIT: Duration = Duration::from_secs(20);

fn mail(step: &str) -> OutgoingMail {
    OutgoingMail {
        message_id: format!("esc-12.{step}@lakeside-ortho.precert"),
        in_reply_to: None,
        to: vec![
            "billing@lakeside-ortho.example".into(),
            "dr.mueller@lakeside-ortho.example".into(),
        ],
        cc: vec!["office@lakeside-ortho.example".into()],
        subject: format!("Müller – décision en attente ({step})"),
        text: "Frau Müller: décision en attente — 3 Tage.\nCase 12.\n".into(),
        html: "<p>Frau <b>Müller</b>: décision en attente — 3 Tage.</p>".into(),
    }
}

fn smtp_settings(port: u16) -> MailSettings {
    MailSettings {
        operations: Vec::new(),
        from: FROM.into(),
        transport: MailTransport::Smtp {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            ca_file: None,
        },
    }
}

const USER: &str = "precert";
const PASSWORD: &str = "Relay-Pa55word-2026";

/// A TLS server with AUTH, and the settings to reach it (right password,
/// its CA trusted).
fn tls_server(tls: ServerTls) -> (SmtpServer, MailSettings) {
    let server = SmtpServer::start_with_options(SmtpOptions {
        tls,
        auth: Some((USER.into(), PASSWORD.into())),
    });
    let settings = tls_settings(&server, tls, PASSWORD, Some(server.ca_pem_path()));
    (server, settings)
}

fn tls_settings(server: &SmtpServer, tls: ServerTls, password: &str, ca_file: Option<PathBuf>) -> MailSettings {
    let password = Secret::resolved(
        SecretRef::Env("PRECERT_TEST_SMTP_PASSWORD".into()),
        secrecy::SecretString::from(password.to_owned()),
    );
    MailSettings {
        operations: Vec::new(),
        from: FROM.into(),
        transport: MailTransport::Smtp {
            // A DNS name for STARTTLS, an IP address for implicit TLS: both are in the certificate.
            host: if tls == ServerTls::Implicit {
                "127.0.0.1"
            } else {
                "localhost"
            }
            .into(),
            port: server.port(),
            tls: match tls {
                ServerTls::None => SmtpTls::None,
                ServerTls::StartTls => SmtpTls::StartTls,
                ServerTls::Implicit => SmtpTls::Implicit,
            },
            username: Some(USER.into()),
            password: Some(password),
            ca_file,
        },
    }
}

/// Everything a reader of `sent` should see in `got`.
/// Sends `sent` over SMTP (the server says 250) and returns what the
/// server stored, checked against it.
async fn deliver_one(mailer: &Mailer, server: &SmtpServer, sent: &OutgoingMail) -> Vec<ReceivedMail> {
    let delivered = mailer.send(sent, Utc::now()).await.unwrap();
    assert!(
        matches!(&delivered, Delivered::Smtp { reply } if reply.starts_with("250")),
        "{delivered:?}"
    );
    let got = server.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_same(&got[0], sent);
    got
}

fn assert_same(got: &ReceivedMail, sent: &OutgoingMail) {
    assert!(got.defects.is_empty(), "defects {:?} in\n{}", got.defects, got.raw);
    assert_eq!(got.content_type, "multipart/alternative", "{}", got.raw);
    assert_eq!(got.message_id, sent.message_id);
    assert_eq!(got.subject, sent.subject);
    assert_eq!(got.from, FROM);
    assert_eq!(got.to, sent.to);
    assert_eq!(got.cc, sent.cc);
    assert_eq!(
        got.text.as_deref().map(|t| t.replace("\r\n", "\n")),
        Some(sent.text.clone())
    );
    assert_eq!(
        got.html.as_deref().map(|t| t.trim_end().to_owned()),
        Some(sent.html.clone())
    );
    assert_eq!(got.header("Auto-Submitted"), Some("auto-generated"));
    // text/plain comes first: the last alternative is the preferred one.
    let plain = got.raw.find("text/plain").expect("a text/plain part");
    let html = got.raw.find("text/html").expect("a text/html part");
    assert!(plain < html, "{}", got.raw);
}

#[tokio::test]
async fn file_transport_writes_one_private_eml_per_message_id() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("outbox");
    let mailer = Mailer::new(&MailSettings {
        operations: Vec::new(),
        from: FROM.into(),
        transport: MailTransport::File { dir: dir.clone() },
    })
    .unwrap();
    let mut sent = mail("1.0");
    sent.in_reply_to = Some("esc-12.0.0@lakeside-ortho.precert".into());
    let date = Utc.with_ymd_and_hms(2026, 3, 2, 9, 30, 0).unwrap();

    let delivered = mailer.send(&sent, date).await.unwrap();
    let path = dir.join("esc-12.1.0_lakeside-ortho.precert.eml");
    assert_eq!(delivered, Delivered::File { path: path.clone() });
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

    let got = parse_eml_file(&path);
    assert_same(&got, &sent);
    assert_eq!(got.header("In-Reply-To"), Some("<esc-12.0.0@lakeside-ortho.precert>"));
    assert_eq!(got.header("References"), Some("<esc-12.0.0@lakeside-ortho.precert>"));
    assert_eq!(got.header("Date"), Some("Mon, 02 Mar 2026 09:30:00 +0000"));

    // A resend (after a crash, say) overwrites the same file.
    mailer.send(&sent, date).await.unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![path.file_name().unwrap().to_owned()]);
}

#[tokio::test]
async fn bad_address_is_a_permanent_error_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let mailer = Mailer::new(&MailSettings {
        operations: Vec::new(),
        from: FROM.into(),
        transport: MailTransport::File {
            dir: tmp.path().join("outbox"),
        },
    })
    .unwrap();
    let mut bad = mail("1.0");
    bad.cc.push("not an address".into());
    let e = mailer.send(&bad, Utc::now()).await.unwrap_err();
    assert_eq!(e.kind, SendErrorKind::Permanent);
    assert!(
        e.message.contains("`cc`") && e.message.contains("not an address"),
        "{e}"
    );
    assert!(!e.message.contains("Tage"), "the body leaked into the error: {e}");
    assert!(!tmp.path().join("outbox").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivers_both_parts_to_every_recipient() {
    let server = SmtpServer::start();
    let mailer = Mailer::new(&smtp_settings(server.port())).unwrap();
    let sent = mail("1.0");
    let got = deliver_one(&mailer, &server, &sent).await;
    assert_eq!(got[0].envelope_from, FROM);
    let mut rcpt = got[0].envelope_to.clone();
    rcpt.sort();
    let mut want: Vec<String> = sent.to.iter().chain(&sent.cc).cloned().collect();
    want.sort();
    assert_eq!(rcpt, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_survives_a_pooled_connection_the_server_dropped() {
    let mut server = SmtpServer::start();
    let mailer = Mailer::new(&smtp_settings(server.port())).unwrap();
    mailer.send(&mail("1.0"), Utc::now()).await.unwrap();
    server.wait_for(1, WAIT);

    // The pool now holds a connection to a process that is gone.
    server.restart();
    mailer.send(&mail("1.1"), Utc::now()).await.unwrap();

    let got = server.wait_for(2, WAIT);
    let mut ids: Vec<&str> = got.iter().map(|m| m.message_id.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["esc-12.1.0@lakeside-ortho.precert", "esc-12.1.1@lakeside-ortho.precert"]
    );
    // And a third goes through the connection the second one opened.
    mailer.send(&mail("1.2"), Utc::now()).await.unwrap();
    assert_eq!(server.wait_for(3, WAIT).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_server_down_is_transient_and_recovers() {
    let mut server = SmtpServer::start();
    let mailer = Mailer::new(&smtp_settings(server.port())).unwrap();
    mailer.send(&mail("1.0"), Utc::now()).await.unwrap();
    server.wait_for(1, WAIT);

    server.stop();
    let e = mailer.send(&mail("1.1"), Utc::now()).await.unwrap_err();
    assert_eq!(e.kind, SendErrorKind::Transient, "{e}");
    let port = server.port().to_string();
    assert!(
        e.message.contains(&port) && e.message.to_lowercase().contains("refused"),
        "{e}"
    );
    assert!(!e.message.contains("Müller") && !e.message.contains("Tage"), "{e}");

    server.restart();
    mailer.send(&mail("1.1"), Utc::now()).await.unwrap();
    let got = server.wait_for(2, WAIT);
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].message_id, "esc-12.1.1@lakeside-ortho.precert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_5xx_is_permanent() {
    // aiosmtpd refuses message data over its SIZE limit with 552.
    let server = SmtpServer::start_with(&["-s", "2000"]);
    let mailer = Mailer::new(&smtp_settings(server.port())).unwrap();
    let mut big = mail("1.0");
    big.text = "Müller ".repeat(1000);
    let e = mailer.send(&big, Utc::now()).await.unwrap_err();
    assert_eq!(e.kind, SendErrorKind::Permanent, "{e}");
    assert!(e.message.contains("552"), "{e}");
    assert!(!e.message.contains("Müller"), "{e}");
    assert!(server.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_auth_and_a_private_ca_delivers() {
    let (server, settings) = tls_server(ServerTls::StartTls);
    let mailer = Mailer::new(&settings).unwrap();
    let sent = mail("1.0");
    deliver_one(&mailer, &server, &sent).await;
    // The pooled, authenticated TLS connection carries a second message.
    mailer.send(&mail("1.1"), Utc::now()).await.unwrap();
    assert_eq!(server.wait_for(2, WAIT).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_smtp_password_waits_for_a_fix_and_is_not_in_the_error() {
    let (server, _) = tls_server(ServerTls::StartTls);
    let wrong = "Wrong-Pa55word-9";
    let settings = tls_settings(&server, ServerTls::StartTls, wrong, Some(server.ca_pem_path()));
    let mailer = Mailer::new(&settings).unwrap();
    let e = mailer.send(&mail("1.0"), Utc::now()).await.unwrap_err();
    assert_eq!(e.kind, SendErrorKind::Transient, "{e}");
    assert!(
        e.message.contains("535") && e.message.to_lowercase().contains("authentication"),
        "{e}"
    );
    for secret in [wrong, PASSWORD] {
        assert!(
            !e.message.contains(secret) && !format!("{e:?}").contains(secret),
            "{e:?}"
        );
    }
    assert!(server.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_before_auth_is_refused() {
    // The server really requires AUTH: without credentials, MAIL gets 530.
    let (server, mut settings) = tls_server(ServerTls::StartTls);
    if let MailTransport::Smtp { username, password, .. } = &mut settings.transport {
        *username = None;
        *password = None;
    }
    let e = Mailer::new(&settings)
        .unwrap()
        .send(&mail("1.0"), Utc::now())
        .await
        .unwrap_err();
    assert!(e.message.contains("530"), "{e}");
    assert!(server.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_with_auth_and_a_private_ca_delivers() {
    let (server, settings) = tls_server(ServerTls::Implicit);
    let mailer = Mailer::new(&settings).unwrap();
    deliver_one(&mailer, &server, &mail("1.0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_transient_and_says_so() {
    for tls in [ServerTls::StartTls, ServerTls::Implicit] {
        let (server, _) = tls_server(tls);
        let settings = tls_settings(&server, tls, PASSWORD, None);
        let e = Mailer::new(&settings)
            .unwrap()
            .send(&mail("1.0"), Utc::now())
            .await
            .unwrap_err();
        assert_eq!(e.kind, SendErrorKind::Transient, "{tls:?}: {e}");
        assert!(e.message.contains("certificate is not trusted"), "{tls:?}: {e}");
        assert!(e.message.contains("mail.smtp.ca_file"), "{tls:?}: {e}");
        assert!(!e.message.contains(PASSWORD), "{e}");
        assert!(server.messages().is_empty());
    }
}

/// Loads the project's config with `[mail.smtp]` using `ca_file`.
fn load_with_ca_file(project: &Project, ca_file: &str) -> Result<precert::config::Settings, String> {
    let path = project.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("transport = \"file\""));
    let text = text.replace("transport = \"file\"", "transport = \"smtp\"")
        + &format!("\n[mail.smtp]\nhost = \"smtp.example.org\"\nport = 587\nca_file = \"{ca_file}\"\n");
    std::fs::write(&path, text).unwrap();
    precert::config::load(&path, precert::config::Secrets::Skip).map_err(|e| e.to_string())
}

#[test]
fn config_ca_file_is_resolved_and_checked_at_load() {
    // A real CA certificate, relative to the config file's directory.
    let server = SmtpServer::start_with_options(SmtpOptions {
        tls: ServerTls::StartTls,
        auth: None,
    });
    let project = Project::new();
    std::fs::copy(server.ca_pem_path(), project.path("config/smtp-ca.pem")).unwrap();
    let settings = load_with_ca_file(&project, "smtp-ca.pem").unwrap_or_else(|e| panic!("{e}"));
    match &settings.mail.transport {
        MailTransport::Smtp { ca_file, .. } => {
            assert_eq!(ca_file.as_deref(), Some(project.path("config/smtp-ca.pem").as_path()))
        }
        other => panic!("{other:?}"),
    }

    // Several certificates (a bundle) and other PEM sections are fine.
    let project = Project::new();
    let ca = std::fs::read_to_string(server.ca_pem_path()).unwrap();
    let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    project.write("config/bundle.pem", &format!("{key}{ca}{ca}"));
    load_with_ca_file(&project, "bundle.pem").unwrap_or_else(|e| panic!("{e}"));

    // Missing.
    let project = Project::new();
    let e = load_with_ca_file(&project, "/nonexistent/smtp-ca.pem").unwrap_err();
    assert!(
        e.contains("mail.smtp.ca_file") && e.contains("/nonexistent/smtp-ca.pem"),
        "{e}"
    );
    assert!(e.to_lowercase().contains("no such file"), "{e}");

    // Not PEM: a private key only, and garbage.
    let project = Project::new();
    project.write(
        "config/key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );
    let e = load_with_ca_file(&project, "key.pem").unwrap_err();
    assert!(
        e.contains("mail.smtp.ca_file") && e.contains("no PEM certificate"),
        "{e}"
    );

    let project = Project::new();
    project.write(
        "config/bad.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let e = load_with_ca_file(&project, "bad.pem").unwrap_err();
    assert!(e.contains("mail.smtp.ca_file") && e.contains("base64"), "{e}");

    // Valid base64, but not a certificate.
    let project = Project::new();
    project.write(
        "config/notcert.pem",
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    );
    let e = load_with_ca_file(&project, "notcert.pem").unwrap_err();
    assert!(
        e.contains("mail.smtp.ca_file") && e.contains("certificate 1 is not a usable X.509"),
        "{e}"
    );
}
