//! A real SMTP server for tests: Debian's `python3-aiosmtpd` as a child
//! process, storing every message in a Maildir (`aiosmtpd.handlers.Mailbox`).
//! Messages are read back with an independent parser, Python's `email`
//! package (`policy.default`), so a test sees what a mail client would.
//!
//! The Mailbox handler re-serialises each message through Python's `email`
//! package and adds `X-Peer`, `X-MailFrom` and `X-RcptTo` (the envelope);
//! `raw` is therefore close to, not byte-for-byte, what the client sent.
//!
//! `start`/`start_with` run `python3 -m aiosmtpd` (plain SMTP, aiosmtpd's
//! CLI options). `start_with_options` runs `tests/smtp_server.py` (the same
//! aiosmtpd, through its `Controller`) for STARTTLS, implicit TLS and AUTH,
//! with a throwaway CA and a `localhost`/127.0.0.1 certificate made by the
//! `openssl` CLI in the server's temporary directory (`ca_pem_path()`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PYTHON: &str = "/usr/bin/python3";
const OPENSSL: &str = "/usr/bin/openssl";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// How the server protects the connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerTls {
    /// Plain SMTP.
    #[default]
    None,
    /// STARTTLS offered, and required before AUTH and MAIL.
    StartTls,
    /// TLS from the first byte (SMTPS); no greeting in clear.
    Implicit,
}

/// What `tests/smtp_server.py` should demand.
#[derive(Clone, Debug, Default)]
pub struct SmtpOptions {
    pub tls: ServerTls,
    /// AUTH PLAIN/LOGIN with this user and password, required before MAIL;
    /// anything else gets `535`.
    pub auth: Option<(String, String)>,
}

/// One running aiosmtpd; killed on drop.
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    /// Extra aiosmtpd arguments, e.g. `["-s", "2000"]` (a SIZE limit).
    extra: Vec<String>,
    /// `Some` when run through `tests/smtp_server.py`.
    options: Option<SmtpOptions>,
    /// Holds `Maildir/` (the messages), `server.log` (aiosmtpd's output) and,
    /// with TLS, `ca.pem`, `server.pem`, `server.key`.
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts on a free loopback port and waits until it greets.
    pub fn start() -> SmtpServer {
        SmtpServer::start_with(&[])
    }

    /// As `start`, with extra aiosmtpd arguments (`-s SIZE`, `-u`, ...).
    pub fn start_with(extra: &[&str]) -> SmtpServer {
        SmtpServer::launch(extra.iter().map(|a| a.to_string()).collect(), None)
    }

    /// Starts `tests/smtp_server.py` with TLS and/or AUTH on a free loopback
    /// port and waits until it is ready (greets; for implicit TLS, accepts).
    pub fn start_with_options(options: SmtpOptions) -> SmtpServer {
        SmtpServer::launch(Vec::new(), Some(options))
    }

    fn launch(extra: Vec<String>, options: Option<SmtpOptions>) -> SmtpServer {
        let dir = tempfile::Builder::new().prefix("precert-smtp-").tempdir().unwrap();
        if options.as_ref().is_some_and(|o| o.tls != ServerTls::None) {
            make_certificates(dir.path());
        }
        let mut server = SmtpServer {
            child: None,
            port: 0,
            extra,
            options,
            dir,
        };
        let mut last = String::new();
        // A free port can be taken by someone else before aiosmtpd binds it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("aiosmtpd did not start: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("Maildir")
    }

    /// The throwaway CA that issued the server's certificate (PEM); exists
    /// only with TLS.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Kills the server and reaps it; its port is free afterwards.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops, then starts again on the same port with the same Maildir, and
    /// waits until it greets.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!("aiosmtpd did not restart on port {}: {e}", self.port);
        }
    }

    /// Every message in the Maildir, oldest first, parsed.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir().join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let meta = entry.metadata().unwrap();
                if meta.is_file() {
                    files.push((meta.modified().unwrap(), entry.file_name(), entry.path()));
                }
            }
        }
        files.sort();
        let paths: Vec<PathBuf> = files.into_iter().map(|(_, _, p)| p).collect();
        parse_files(&paths)
    }

    /// Polls until at least `n` messages are in, or panics with what is there.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            if Instant::now() >= deadline {
                let ids: Vec<(&str, &str)> = got
                    .iter()
                    .map(|m| (m.message_id.as_str(), m.subject.as_str()))
                    .collect();
                panic!(
                    "waited {timeout:?} for {n} message(s) on port {}, have {}: {ids:?}\nserver log:\n{}",
                    self.port,
                    got.len(),
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// What aiosmtpd printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let listen = format!("127.0.0.1:{}", self.port);
        let mut command = Command::new(PYTHON);
        match &self.options {
            None => {
                command
                    .args(["-m", "aiosmtpd", "-n"])
                    .args(&self.extra)
                    .args(["-l", &listen, "-c", "aiosmtpd.handlers.Mailbox"])
                    .arg(self.maildir());
            }
            Some(options) => {
                command
                    .args([SCRIPT, "--listen", &listen, "--maildir"])
                    .arg(self.maildir());
                let flag = match options.tls {
                    ServerTls::None => None,
                    ServerTls::StartTls => Some("--starttls"),
                    ServerTls::Implicit => Some("--smtps"),
                };
                if let Some(flag) = flag {
                    command
                        .arg(flag)
                        .arg(self.dir.path().join("server.pem"))
                        .arg(self.dir.path().join("server.key"));
                }
                if let Some((user, password)) = &options.auth {
                    command.arg("--auth").arg(format!("{user}:{password}"));
                }
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {PYTHON} (aiosmtpd): {e}"))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("aiosmtpd exited with {status}; log:\n{}", self.log()));
            }
            let implicit = self.options.as_ref().is_some_and(|o| o.tls == ServerTls::Implicit);
            let ready = if implicit {
                TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
            } else {
                greets(addr)
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(format!(
                    "no SMTP greeting within {READY_TIMEOUT:?}; log:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects and reads a `220` greeting (so it is aiosmtpd answering, not
/// merely a socket that accepts).
fn greets(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let ok = BufReader::new(&stream).read_line(&mut line).is_ok() && line.starts_with("220");
    let _ = std::io::Write::write_all(&mut &stream, b"QUIT\r\n");
    ok
}

/// A throwaway CA (`ca.pem`) and a server certificate it issued for
/// `localhost` and 127.0.0.1 (`server.pem`, `server.key`), P-256, in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new(OPENSSL)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=precert test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One message as Python's `email` package (`policy.default`) reads it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct ReceivedMail {
    pub raw: String,
    /// Without angle brackets.
    pub message_id: String,
    /// Decoded.
    pub subject: String,
    /// The From address (addr-spec).
    pub from: String,
    /// Addr-specs.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    /// The top-level content type, e.g. `multipart/alternative`.
    pub content_type: String,
    /// The decoded text/plain body, if any.
    pub text: Option<String>,
    /// The decoded text/html body, if any.
    pub html: Option<String>,
    /// Every defect Python found, in the message, its parts and its headers.
    pub defects: Vec<String>,
    /// Top-level headers in order, values decoded.
    pub headers: Vec<(String, String)>,
    /// The SMTP envelope (from aiosmtpd's `X-MailFrom`/`X-RcptTo`); empty
    /// for `.eml` files.
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
}

impl ReceivedMail {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const PARSER: &str = r#"
import email, email.policy, json, sys

def addrs(msg, name):
    out = []
    for h in msg.get_all(name) or []:
        out.extend(a.addr_spec for a in getattr(h, 'addresses', ()))
    return out

def text_of(msg, kind):
    part = msg.get_body((kind,))
    return None if part is None else part.get_content()

def parse(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    defects = []
    for part in msg.walk():
        defects.extend(f"{type(d).__name__}: {d}" for d in part.defects)
        for name, value in part.items():
            defects.extend(f"{name}: {type(d).__name__}: {d}" for d in getattr(value, 'defects', ()))
    mid = str(msg.get('Message-ID', '')).strip()
    if mid.startswith('<') and mid.endswith('>'):
        mid = mid[1:-1]
    frm = addrs(msg, 'From')
    rcpt = str(msg.get('X-RcptTo', '') or '')
    return {
        'raw': raw.decode('utf-8', 'replace'),
        'message_id': mid,
        'subject': str(msg.get('Subject', '')),
        'from': frm[0] if frm else '',
        'to': addrs(msg, 'To'),
        'cc': addrs(msg, 'Cc'),
        'content_type': msg.get_content_type(),
        'text': text_of(msg, 'plain'),
        'html': text_of(msg, 'html'),
        'defects': defects,
        'headers': [[n, str(v)] for n, v in msg.items()],
        'envelope_from': str(msg.get('X-MailFrom', '') or ''),
        'envelope_to': [r.strip() for r in rcpt.split(',') if r.strip()],
    }

if sys.argv[1:] == ['-']:
    raws = [sys.stdin.buffer.read()]
else:
    raws = [open(p, 'rb').read() for p in sys.argv[1:]]
json.dump([parse(r) for r in raws], sys.stdout)
"#;

fn run_parser(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Vec<ReceivedMail> {
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(PARSER)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON}: {e}"));
    if let Some(bytes) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Python mail parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "unreadable parser output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn parse_files(paths: &[PathBuf]) -> Vec<ReceivedMail> {
    if paths.is_empty() {
        return Vec::new();
    }
    let args: Vec<&std::ffi::OsStr> = paths.iter().map(|p| p.as_os_str()).collect();
    run_parser(&args, None)
}

/// Parses one message, e.g. an `.eml` file written by the file transport.
pub fn parse_eml(bytes: &[u8]) -> ReceivedMail {
    run_parser(&[std::ffi::OsStr::new("-")], Some(bytes)).pop().unwrap()
}

/// Parses the `.eml` file at `path`.
pub fn parse_eml_file(path: &Path) -> ReceivedMail {
    parse_files(&[path.to_path_buf()]).pop().unwrap()
}
