//! Outgoing mail: building a rendered message and handing it to the
//! configured transport (`.eml` files in a folder, or SMTP).
//!
//! A message's Message-ID is chosen by the caller and stable per escalation
//! step, so a resend after a crash is recognisable: the file transport
//! overwrites the same file, and a receiving mail system can deduplicate.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{MailSettings, MailTransport, SmtpTls};

/// How long one SMTP connection or command may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle pooled SMTP connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// At most this many SMTP connections at once.
const POOL_MAX: u32 = 2;

/// One message as precert's outbox stores it (already rendered).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutgoingMail {
    /// Without angle brackets, e.g. "esc-12.1.0@lakeside-ortho.precert" —
    /// stable per escalation step, so a resend after a crash is recognisable.
    pub message_id: String,
    /// Optional threading: the Message-ID (no brackets) this one follows
    /// (reminders reply to the first mail).
    pub in_reply_to: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A message that cannot be built, or a mail configuration that cannot be
/// used. Never holds a message body or a secret.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid `{field}` address `{address}`: {reason}")]
    Address {
        field: &'static str,
        address: String,
        reason: String,
    },
    #[error("invalid {field} `{value}`: {reason}")]
    MessageId {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("cannot build the message: {0}")]
    Build(String),
    #[error("mail configuration: {0}")]
    Config(String),
}

/// Whether trying again later can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendErrorKind {
    /// Connection, I/O, timeout, or an SMTP 4xx reply: try again later.
    Transient,
    /// An SMTP 5xx reply, or a message that cannot be sent as it is.
    Permanent,
}

/// Why a message was not delivered. `message` holds server replies and I/O
/// errors only, never the message's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendError {
    pub kind: SendErrorKind,
    pub message: String,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SendErrorKind::Transient => "transient",
            SendErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} mail delivery failure: {}", self.message)
    }
}

impl std::error::Error for SendError {}

impl SendError {
    fn permanent(message: impl Into<String>) -> Self {
        SendError {
            kind: SendErrorKind::Permanent,
            message: message.into(),
        }
    }

    fn transient(message: impl Into<String>) -> Self {
        SendError {
            kind: SendErrorKind::Transient,
            message: message.into(),
        }
    }
}

/// Where a message went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Written to this `.eml` file.
    File { path: PathBuf },
    /// Accepted by the SMTP server with this reply, e.g. `250 OK`.
    Smtp { reply: String },
}

impl fmt::Display for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Delivered::File { path } => write!(f, "written to {}", path.display()),
            Delivered::Smtp { reply } => write!(f, "accepted by the SMTP server: {reply}"),
        }
    }
}

/// Builds the message: `multipart/alternative` (text/plain then text/html,
/// both UTF-8), with the caller's Message-ID, threading headers, Date and
/// `Auto-Submitted: auto-generated` (RFC 3834).
pub fn build(from: &str, mail: &OutgoingMail, date: DateTime<Utc>) -> Result<Message, MailError> {
    check_message_id("message_id", &mail.message_id)?;
    let mut builder = Message::builder()
        .from(mailbox("from", from)?)
        .message_id(Some(format!("<{}>", mail.message_id)))
        .date(date.into())
        .subject(mail.subject.clone())
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".to_owned(),
        ));
    if let Some(parent) = &mail.in_reply_to {
        check_message_id("in_reply_to", parent)?;
        builder = builder
            .in_reply_to(format!("<{parent}>"))
            .references(format!("<{parent}>"));
    }
    for address in &mail.to {
        builder = builder.to(mailbox("to", address)?);
    }
    for address in &mail.cc {
        builder = builder.cc(mailbox("cc", address)?);
    }
    if mail.to.is_empty() && mail.cc.is_empty() {
        return Err(MailError::Build(
            "the message has no recipient (to and cc are empty)".into(),
        ));
    }
    builder
        .multipart(MultiPart::alternative_plain_html(mail.text.clone(), mail.html.clone()))
        .map_err(|e| MailError::Build(e.to_string()))
}

fn mailbox(field: &'static str, address: &str) -> Result<Mailbox, MailError> {
    address.trim().parse::<Mailbox>().map_err(|e| MailError::Address {
        field,
        address: address.to_owned(),
        reason: e.to_string(),
    })
}

/// A Message-ID without brackets: `left@right`, printable ASCII, no spaces.
fn check_message_id(field: &'static str, id: &str) -> Result<(), MailError> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if !id.bytes().all(|b| b.is_ascii_graphic()) {
        Some("it must be printable ASCII without spaces")
    } else if id.contains(['<', '>']) {
        Some("write it without angle brackets")
    } else if !matches!(id.split_once('@'), Some((l, r)) if !l.is_empty() && !r.is_empty() && !r.contains('@')) {
        Some("it must look like `left@right`")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(MailError::MessageId {
            field,
            value: id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Sends messages through the configured transport. Build it once and keep
/// it: the SMTP transport pools its connections (at most 2, idle ones closed
/// after 60 s; 30 s timeout per connection/command). For SMTP, create it
/// inside a Tokio runtime. Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct Mailer {
    from: String,
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    File {
        dir: PathBuf,
    },
    Smtp {
        smtp: AsyncSmtpTransport<Tokio1Executor>,
        server: String,
    },
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let transport = match &self.transport {
            Transport::File { dir } => format!("file {}", dir.display()),
            Transport::Smtp { server, .. } => format!("smtp {server}"),
        };
        f.debug_struct("Mailer")
            .field("from", &self.from)
            .field("transport", &transport)
            .finish()
    }
}

impl Mailer {
    pub fn new(settings: &MailSettings) -> Result<Mailer, MailError> {
        mailbox("from", &settings.from)?;
        let transport = match &settings.transport {
            MailTransport::File { dir } => Transport::File { dir: dir.clone() },
            MailTransport::Smtp {
                host,
                port,
                tls,
                username,
                password,
            } => {
                // The pool starts its idle-cleanup task on the current runtime.
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(MailError::Config(
                        "the SMTP mailer must be created inside a Tokio runtime".into(),
                    ));
                }
                let builder: AsyncSmtpTransportBuilder = match tls {
                    SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
                    SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())),
                }
                .map_err(|e| MailError::Config(format!("SMTP server {host}: {e}")))?;
                let mut builder = builder
                    .port(*port)
                    .timeout(Some(SMTP_TIMEOUT))
                    .pool_config(PoolConfig::new().max_size(POOL_MAX).idle_timeout(POOL_IDLE));
                match (username, password) {
                    (Some(user), Some(password)) => {
                        let password = password.value().map_err(MailError::Config)?;
                        builder =
                            builder.credentials(Credentials::new(user.clone(), password.expose_secret().to_owned()));
                    }
                    (None, None) => {}
                    (Some(_), None) => return Err(MailError::Config("an SMTP username needs a password".into())),
                    (None, Some(_)) => return Err(MailError::Config("an SMTP password needs a username".into())),
                }
                Transport::Smtp {
                    smtp: builder.build(),
                    server: format!("{host}:{port}"),
                }
            }
        };
        Ok(Mailer {
            from: settings.from.clone(),
            transport,
        })
    }

    /// Builds and delivers one message. Envelope recipients are to + cc.
    pub async fn send(&self, mail: &OutgoingMail, date: DateTime<Utc>) -> Result<Delivered, SendError> {
        let message = build(&self.from, mail, date).map_err(|e| SendError::permanent(e.to_string()))?;
        match &self.transport {
            Transport::File { dir } => {
                let path = dir.join(format!("{}.eml", crate::files::safe_name(&mail.message_id)));
                let bytes = message.formatted();
                let target = path.clone();
                tokio::task::spawn_blocking(move || crate::files::write_private(&target, &bytes))
                    .await
                    .map_err(|e| SendError::transient(format!("writing {}: {e}", path.display())))?
                    .map_err(|e| SendError::transient(format!("writing {}: {e}", path.display())))?;
                Ok(Delivered::File { path })
            }
            Transport::Smtp { smtp, server } => {
                let first = smtp.send(message.clone()).await;
                let result = match first {
                    // A pooled connection the server has since closed: once more, at once,
                    // on a fresh connection (the broken one is not returned to the pool).
                    Err(e) if is_connection_level(&e) => smtp.send(message).await,
                    other => other,
                };
                match result {
                    Ok(response) => Ok(Delivered::Smtp {
                        reply: reply_text(response.code(), response.message()),
                    }),
                    Err(e) => Err(classify(server, &e)),
                }
            }
        }
    }
}

/// Errors where no SMTP reply said no: the connection, I/O, TLS, a timeout.
fn is_connection_level(e: &lettre::transport::smtp::Error) -> bool {
    e.status().is_none() && !e.is_client() && !e.is_transport_shutdown()
}

fn classify(server: &str, e: &lettre::transport::smtp::Error) -> SendError {
    let message = format!("SMTP server {server}: {}", error_chain(e));
    if e.is_permanent() || e.is_client() {
        SendError::permanent(message)
    } else {
        SendError::transient(message)
    }
}

/// The error and its sources, each once (lettre's Display already shows the
/// first source).
fn error_chain(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e).and_then(std::error::Error::source);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn reply_text<'a>(code: impl fmt::Display, lines: impl Iterator<Item = &'a str>) -> String {
    let lines: Vec<&str> = lines.collect();
    format!("{code} {}", lines.join(" / ")).trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail() -> OutgoingMail {
        OutgoingMail {
            message_id: "esc-1.0.0@clinic.precert".into(),
            in_reply_to: None,
            to: vec!["a@example.org".into()],
            cc: vec![],
            subject: "s".into(),
            text: "t".into(),
            html: "<p>h</p>".into(),
        }
    }

    #[test]
    fn bad_addresses_name_the_field() {
        let mut m = mail();
        m.cc = vec!["not an address".into()];
        let e = build("precert@example.org", &m, Utc::now()).unwrap_err().to_string();
        assert!(e.contains("`cc`") && e.contains("not an address"), "{e}");
        let e = build("nope", &mail(), Utc::now()).unwrap_err().to_string();
        assert!(e.contains("`from`") && e.contains("nope"), "{e}");
    }

    #[test]
    fn message_ids_are_checked() {
        for bad in ["", "<a@b>", "a b@c", "ab", "a@b\r\nBcc: x@y"] {
            let mut m = mail();
            m.message_id = bad.into();
            assert!(build("precert@example.org", &m, Utc::now()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers() {
        let mut m = mail();
        m.in_reply_to = Some("esc-1.0.0@x".into());
        let raw = String::from_utf8(build("precert@example.org", &m, Utc::now()).unwrap().formatted()).unwrap();
        for h in [
            "Message-ID: <esc-1.0.0@clinic.precert>",
            "In-Reply-To: <esc-1.0.0@x>",
            "References: <esc-1.0.0@x>",
            "Auto-Submitted: auto-generated",
            "multipart/alternative",
        ] {
            assert!(raw.contains(h), "{h} missing in\n{raw}");
        }
    }
}
