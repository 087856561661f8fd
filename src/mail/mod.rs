//! Outgoing mail: building a rendered message and handing it to the
//! configured transport (`.eml` files in a folder, or SMTP).
//!
//! A message's Message-ID is chosen by the caller and stable per escalation
//! step, so a resend after a crash is recognisable: the file transport
//! overwrites the same file, and a receiving mail system can deduplicate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransportBuilder, PoolConfig};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{MailSettings, MailTransport, SmtpTls};

/// How long one SMTP connection or command may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an idle pooled SMTP connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// At most this many SMTP connections at once.
const POOL_MAX: u32 = 4;

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
/// it: the SMTP transport pools its connections (at most 4, idle ones closed
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
        /// `host:port`, for messages.
        server: String,
        host: String,
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
                ca_file,
            } => {
                // The pool starts its idle-cleanup task on the current runtime.
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(MailError::Config(
                        "the SMTP mailer must be created inside a Tokio runtime".into(),
                    ));
                }
                let plain: AsyncSmtpTransportBuilder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host);
                let builder = match tls {
                    SmtpTls::Implicit => plain.tls(Tls::Wrapper(tls_parameters(host, ca_file.as_deref())?)),
                    SmtpTls::StartTls => plain.tls(Tls::Required(tls_parameters(host, ca_file.as_deref())?)),
                    SmtpTls::None => plain,
                };
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
                    host: host.clone(),
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
            Transport::Smtp { smtp, server, host } => {
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
                    Err(e) => Err(classify(server, host, &e)),
                }
            }
        }
    }
}

/// TLS for `host`: the public (webpki) roots plus, with `ca_file`, its
/// certificates.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, MailError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(path) = ca_file {
        for certificate in read_ca_file(path).map_err(MailError::Config)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| MailError::Config(format!("TLS for SMTP server {host}: {}", error_chain(&e))))
}

/// Reads `mail.smtp.ca_file`: one or more PEM certificates
/// (`-----BEGIN CERTIFICATE-----`), each usable as a trust anchor. Other PEM
/// sections are ignored. The error says why, with the path.
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut ders: Vec<Vec<u8>> = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (&mut body, line) {
            (None, "-----BEGIN CERTIFICATE-----") => body = Some(String::new()),
            (Some(b64), "-----END CERTIFICATE-----") => {
                let n = ders.len() + 1;
                let der = data_encoding::BASE64
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("{shown}: certificate {n} is not valid base64: {e}"))?;
                ders.push(der);
                body = None;
            }
            (Some(_), l) if l.starts_with("-----") => {
                return Err(format!(
                    "{shown}: certificate {} has no END CERTIFICATE line",
                    ders.len() + 1
                ));
            }
            (Some(b64), l) => b64.push_str(l),
            (None, _) => {}
        }
    }
    if body.is_some() {
        return Err(format!(
            "{shown}: certificate {} has no END CERTIFICATE line",
            ders.len() + 1
        ));
    }
    if ders.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block)"
        ));
    }
    let mut certificates = Vec::with_capacity(ders.len());
    for (i, der) in ders.into_iter().enumerate() {
        let certificate = Certificate::from_der(der).map_err(|e| format!("{shown}: certificate {}: {e}", i + 1))?;
        // Building a trust store parses the certificate as rustls will.
        TlsParameters::builder("localhost".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(certificate.clone())
            .build()
            .map_err(|e| {
                // rustls words it as about a peer; only the reason is useful here.
                let chain = error_chain(&e);
                let reason = chain.rsplit(": ").next().unwrap_or(&chain).to_owned();
                format!(
                    "{shown}: certificate {} is not a usable X.509 CA certificate ({reason})",
                    i + 1
                )
            })?;
        certificates.push(certificate);
    }
    Ok(certificates)
}

/// Errors where no SMTP reply said no: the connection, I/O, TLS, a timeout.
fn is_connection_level(e: &lettre::transport::smtp::Error) -> bool {
    e.status().is_none() && !e.is_client() && !e.is_transport_shutdown()
}

/// Permanent: a 5xx reply, or a message this server cannot take as it is
/// (non-ASCII without SMTPUTF8/8BITMIME). Everything else, including TLS and
/// certificate failures, no STARTTLS, no usable AUTH mechanism — problems an
/// administrator can fix — is transient, so the mail is kept and retried.
fn classify(server: &str, host: &str, e: &lettre::transport::smtp::Error) -> SendError {
    let chain = error_chain(e);
    let message = match tls_problem(&chain, host) {
        Some(problem) => format!("SMTP server {server}: {problem} ({chain})"),
        None => format!("SMTP server {server}: {chain}"),
    };
    // A refused login (530, 534, 535, 538) is the relay's verdict on our
    // configuration, not on this message: every mail would fail alike. It
    // waits in the outbox until the credentials are fixed, like a TLS
    // problem, instead of being given up.
    let auth_refused = e
        .status()
        .is_some_and(|c| matches!(c.to_string().as_str(), "530" | "534" | "535" | "538"));
    let message = if auth_refused {
        format!("{message}; check mail.smtp.username and mail.smtp.password")
    } else {
        message
    };
    if auth_refused {
        SendError::transient(message)
    } else if e.is_permanent() || (e.is_client() && chain.contains("non-ascii")) {
        SendError::permanent(message)
    } else {
        SendError::transient(message)
    }
}

/// A plain-words reading of rustls' certificate errors (which lettre reports
/// as connection errors, e.g. `invalid peer certificate: UnknownIssuer`).
fn tls_problem(chain: &str, host: &str) -> Option<String> {
    let problem = if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
        "TLS: the server's certificate is not trusted (unknown issuer); if the relay uses a private CA, set mail.smtp.ca_file to its certificate".to_owned()
    } else if chain.contains("NotValidForName") {
        format!("TLS: the server's certificate is not valid for `{host}`; set mail.smtp.host to a name the certificate covers")
    } else if chain.contains("Expired") || chain.contains("NotValidYet") {
        "TLS: the server's certificate is expired or not yet valid".to_owned()
    } else if chain.contains("invalid peer certificate") {
        "TLS: the server's certificate is not trusted".to_owned()
    } else if chain.contains("STARTTLS is not supported") {
        "the server does not offer STARTTLS; use mail.smtp.tls = \"implicit\" if it speaks TLS from the start"
            .to_owned()
    } else if chain.contains("corrupt message") || chain.contains("InvalidContentType") {
        "TLS handshake failed; does the server speak implicit TLS on this port (else mail.smtp.tls = \"starttls\")?"
            .to_owned()
    } else {
        return None;
    };
    Some(problem)
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
    // lettre wraps a TLS handshake failure as a connection error twice.
    text.replace("Connection error: Connection error: ", "Connection error: ")
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
