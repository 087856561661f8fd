//! Who is asking: passwords (Argon2id), sessions (a random token in an
//! `HttpOnly`, `SameSite=Strict` cookie, its SHA-256 in the ledger, idle and
//! absolute expiry), CSRF tokens, and the sign-in lockout.
//!
//! Sign-in failures are counted per account in the ledger (a locked account
//! stays locked across restarts) and per client address in memory (one
//! address guessing many names). Whatever the reason a sign-in is refused,
//! the page says the same thing, so it does not tell which names exist.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};

use super::users::Role;
use super::App;
use crate::store::ConsoleUser;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "precert_session";
/// The cookie that carries the sign-in form's CSRF token (no session yet).
pub const LOGIN_COOKIE: &str = "precert_login";

/// Failed sign-ins one client address may make per window, whatever the
/// names it tries.
const ADDRESS_FAILURES: u32 = 20;
const ADDRESS_WINDOW: Duration = Duration::minutes(15);

/// A hash to verify against when the name is unknown, so an unknown name
/// takes as long to refuse as a wrong password.
static DUMMY_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("not a password anyone has").expect("hashing works"));

/// Hashes a password with Argon2id (the crate's defaults: 19 MiB, two
/// passes) and a random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for the salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` is the one `hash` was made from.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends the time a verification takes, for an unknown name.
pub fn verify_nobody(password: &str) {
    let _ = verify_password(&DUMMY_HASH, password);
}

/// A new TOTP seed: 20 random bytes (RFC 4226's recommended length), as
/// the base32 authenticator apps take.
pub fn new_totp_seed() -> String {
    let mut bytes = [0u8; 20];
    getrandom::getrandom(&mut bytes).expect("the OS has randomness");
    data_encoding::BASE32_NOPAD.encode(&bytes)
}

/// The time step (30 s) a six-digit `code` is good for at `now` with this
/// seed, allowing one step of clock drift either way.
pub fn totp_step(seed: &str, code: &str, now: DateTime<Utc>) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now.timestamp().div_euclid(30);
    [step, step - 1, step + 1].into_iter().find(|s| {
        u64::try_from(*s)
            .ok()
            .and_then(|s| crate::totp::code(seed, s * 30).ok())
            .is_some_and(|expected| same_secret(&expected, &code))
    })
}

/// 32 random bytes, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS has randomness");
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

pub fn token_hash(token: &str) -> String {
    crate::files::sha256_hex(token.as_bytes())
}

/// Compares two secrets in time that depends on their length only.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, and `Secure` when
/// the console is reached over https. `max_age` 0 removes the cookie.
pub fn set_cookie(name: &str, value: &str, path: &str, secure: bool, max_age: Option<i64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).expect("cookie values are URL-safe base64")
}

/// The client's address: the listener's peer, unless that peer is a
/// trusted proxy (`console.trusted_proxies`); then the last address in
/// `X-Forwarded-For` that is not a trusted proxy (proxies append the
/// address they saw, so everything left of the first untrusted one may
/// have been written by the client and is not believed).
pub fn remote(parts: &Parts, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())?;
    Some(client_ip(peer, &parts.headers, trusted))
}

/// `remote`'s rule, apart from the request.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Every X-Forwarded-For header, in order, as one list.
    let chain: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in chain.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    break;
                }
            }
            // A value that is not an address ends what can be believed.
            Err(_) => break,
        }
    }
    client
}

/// An IPv4 address mapped into IPv6 (`::ffff:10.0.0.1`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Failed sign-ins per client address, in memory.
#[derive(Default)]
pub struct AddressThrottle {
    failures: std::sync::Mutex<HashMap<IpAddr, (u32, DateTime<Utc>)>>,
}

impl AddressThrottle {
    /// Whether this address may try to sign in now.
    pub fn allows(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        let map = self.failures.lock().expect("throttle lock");
        match map.get(&ip) {
            Some((n, since)) if now - *since < ADDRESS_WINDOW => *n < ADDRESS_FAILURES,
            _ => true,
        }
    }

    pub fn failed(&self, ip: IpAddr, now: DateTime<Utc>) {
        let mut map = self.failures.lock().expect("throttle lock");
        map.retain(|_, (_, since)| now - *since < ADDRESS_WINDOW);
        let e = map.entry(ip).or_insert((0, now));
        e.0 += 1;
    }
}

/// The signed-in user of a request. Extracting it refuses (with a redirect
/// to the sign-in page) a request without a live session.
#[derive(Clone, Debug)]
pub struct Viewer {
    pub user: ConsoleUser,
    pub role: Role,
    pub csrf: String,
    pub token_hash: String,
    pub remote: Option<String>,
}

impl Viewer {
    pub fn name(&self) -> &str {
        &self.user.name
    }

    /// Whether the viewer may see this practice's cases.
    pub fn sees(&self, practice: &str) -> bool {
        self.role == Role::Admin || self.user.practices.iter().any(|p| p == practice)
    }

    /// The practices the viewer may see; `None` for all.
    pub fn allowed(&self) -> Option<Vec<String>> {
        (self.role != Role::Admin).then(|| self.user.practices.clone())
    }

    /// Whether a form's CSRF token is this session's.
    pub fn csrf_ok(&self, token: &str) -> bool {
        same_secret(&self.csrf, token)
    }
}

/// Why a request has no viewer: it is sent to the sign-in page.
pub struct SignInFirst {
    next: String,
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        let to = if self.next.is_empty() || self.next == "/" {
            "/login".to_owned()
        } else {
            format!("/login?next={}", super::view::encode_component(&self.next))
        };
        Redirect::to(&to).into_response()
    }
}

/// The path of a page opened by a link on another site (webmail, a chat):
/// the browser sends no `SameSite=Strict` cookie with it, so a person who is
/// signed in would be asked to sign in again. Such a request is answered
/// with `pages::reopen`, whose second request is same-site and carries the
/// cookie (and, without a session, goes to the sign-in page as any other).
/// Only a top-level GET of a path of this console (never `//host`) is
/// reopened, and the second request is same-origin: it cannot loop.
fn cross_site_navigation(parts: &Parts) -> Option<&str> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path();
    (parts.method == axum::http::Method::GET
        && header("sec-fetch-site") == Some("cross-site")
        && header("sec-fetch-mode") == Some("navigate")
        && path.starts_with('/')
        && !path.starts_with("//"))
    .then_some(path)
}

impl FromRequestParts<App> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let next = if parts.method == axum::http::Method::GET {
            parts.uri.path().to_owned()
        } else {
            String::new()
        };
        let refuse = || SignInFirst { next: next.clone() }.into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            if let Some(path) = cross_site_navigation(parts) {
                return Err(super::pages::reopen(app, path));
            }
            return Err(refuse());
        };
        let hash = token_hash(token);
        let ledger = &app.ledger;
        let session = match ledger.console_session(&hash).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(refuse()),
            Err(e) => return Err(super::unavailable(&e)),
        };
        let now = ledger.now();
        let idle = Duration::from_std(app.settings.console.session_idle).unwrap_or(Duration::minutes(30));
        if session.expires_at <= now || session.last_seen_at + idle <= now {
            let _ = ledger.end_console_session(&hash).await;
            return Err(refuse());
        }
        let user = match ledger.console_user(&session.user).await {
            Ok(Some(u)) if !u.disabled => u,
            Ok(_) => {
                let _ = ledger.end_console_session(&hash).await;
                return Err(refuse());
            }
            Err(e) => return Err(super::unavailable(&e)),
        };
        let Ok(role) = user.role.parse::<Role>() else {
            return Err(refuse());
        };
        // One write a minute at most: the idle clock need not be finer.
        if now - session.last_seen_at > Duration::minutes(1) {
            if let Err(e) = ledger.touch_console_session(&hash).await {
                return Err(super::unavailable(&e));
            }
        }
        Ok(Viewer {
            user,
            role,
            csrf: session.csrf,
            token_hash: hash,
            remote: remote(parts, &app.settings.console.trusted_proxies).map(|a| a.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn parts(method: &str, uri: &str, site: &str, mode: &str) -> Parts {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("sec-fetch-site", site)
            .header("sec-fetch-mode", mode)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn only_a_cross_site_top_level_get_of_a_console_path_is_reopened() {
        let reopened = |m, u, s, md| cross_site_navigation(&parts(m, u, s, md)).map(str::to_owned);
        assert_eq!(
            reopened("GET", "/ack/7.x.y", "cross-site", "navigate").as_deref(),
            Some("/ack/7.x.y")
        );
        assert_eq!(
            reopened("GET", "/cases/p/c?x=1", "cross-site", "navigate").as_deref(),
            Some("/cases/p/c")
        );
        assert_eq!(
            reopened("GET", "/ack/7", "same-origin", "navigate"),
            None,
            "the second request signs in"
        );
        assert_eq!(
            reopened("GET", "/ack/7", "none", "navigate"),
            None,
            "typed or from an app: cookie sent"
        );
        assert_eq!(reopened("GET", "/ack/7", "cross-site", "no-cors"), None, "not a page");
        assert_eq!(reopened("POST", "/ack/7", "cross-site", "navigate"), None);
        assert_eq!(reopened("GET", "//elsewhere.example/x", "cross-site", "navigate"), None);
    }

    #[test]
    fn a_totp_code_is_good_for_its_step_and_one_either_side() {
        use chrono::TimeZone;
        let seed = new_totp_seed();
        let now = Utc.timestamp_opt(1_800_000_015, 0).unwrap();
        let step = 1_800_000_015 / 30;
        let code_at = |s: i64| crate::totp::code(&seed, (s * 30) as u64).unwrap();
        assert_eq!(totp_step(&seed, &code_at(step), now), Some(step));
        assert_eq!(totp_step(&seed, &code_at(step - 1), now), Some(step - 1));
        assert_eq!(totp_step(&seed, &code_at(step + 1), now), Some(step + 1));
        assert_eq!(totp_step(&seed, &code_at(step - 2), now), None);
        let spaced = format!("{} {}", &code_at(step)[..3], &code_at(step)[3..]);
        assert_eq!(totp_step(&seed, &spaced, now), Some(step));
        assert_eq!(totp_step(&seed, "12345", now), None);
        assert_eq!(totp_step(&seed, "abcdef", now), None);
    }

    #[test]
    fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.1/32".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // Untrusted peer: its header is the client's own word, ignored.
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers(&["198.51.100.1"]), &trusted),
            ip("203.0.113.9")
        );
        // Through one trusted proxy.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
        // Two proxies, and a client that wrote its own X-Forwarded-For first:
        // the right-most untrusted address is the client.
        assert_eq!(
            client_ip(
                ip("10.1.2.3"),
                &headers(&["1.2.3.4, 198.51.100.7", "10.9.9.9"]),
                &trusted
            ),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(
            client_ip(ip("10.1.2.3"), &headers(&["nonsense, 10.0.0.5"]), &trusted),
            ip("10.0.0.5")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted), ip("10.1.2.3"));
        // Nothing trusted: the peer, whatever the header says.
        assert_eq!(
            client_ip(ip("127.0.0.1"), &headers(&["198.51.100.7"]), &[]),
            ip("127.0.0.1")
        );
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), &headers(&["198.51.100.7"]), &trusted),
            ip("198.51.100.7")
        );
    }
}
