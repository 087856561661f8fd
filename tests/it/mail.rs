//! Outgoing mail against real receivers: `.eml` files read back by Python's
//! `email` package, and a real SMTP server (aiosmtpd) that is restarted and
//! stopped under the mailer.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use precert::config::{MailSettings, MailTransport, SmtpTls};
use precert::mail::{Delivered, Mailer, OutgoingMail, SendErrorKind};

use super::smtp::{parse_eml_file, ReceivedMail, SmtpServer};

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
        from: FROM.into(),
        transport: MailTransport::Smtp {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
        },
    }
}

/// Everything a reader of `sent` should see in `got`.
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
    let delivered = mailer.send(&sent, Utc::now()).await.unwrap();
    assert!(
        matches!(&delivered, Delivered::Smtp { reply } if reply.starts_with("250")),
        "{delivered:?}"
    );

    let got = server.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_same(&got[0], &sent);
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
