//! Signed acknowledgement links for escalation mail.
//!
//! A supervisor acknowledges from the mail by following
//! `PUBLIC_URL/ack/TOKEN`: the console asks them to sign in (if they have
//! not), shows what they are acknowledging and acknowledges it when they
//! confirm (a form with the session's CSRF token). The token is
//! `ID.EXPIRES.NONCE.MAC`: the escalation's number, the link's end (Unix
//! seconds), 12 random bytes, and an HMAC-SHA256 over the three with a key
//! only the ledger holds (`console_keys`, made on first use). It carries no
//! patient data and no member ID; the escalation's number confirms nothing
//! to someone who cannot sign in. Each link works once: its nonce is
//! recorded when it is used (`console_used_links`).

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::store::{Ledger, StoreError};

/// The name of the signing key in `console_keys`.
const KEY_NAME: &str = "ack_link";

/// The key that signs acknowledgement links. `Debug` does not show it.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey([REDACTED])")
    }
}

impl LinkKey {
    /// The ledger's key, made (32 random bytes) by whichever process asks
    /// first, so every daemon and console on one ledger share it.
    pub async fn of(ledger: &Ledger) -> Result<LinkKey, StoreError> {
        let mut fresh = [0u8; 32];
        getrandom::getrandom(&mut fresh).expect("the OS has randomness");
        let stored = ledger
            .console_key(KEY_NAME, &data_encoding::BASE64.encode(&fresh))
            .await?;
        let bytes = data_encoding::BASE64
            .decode(stored.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| StoreError::Corrupt {
                id: 0,
                reason: format!("console_keys.{KEY_NAME} is not 32 bytes of base64"),
            })?;
        Ok(LinkKey(bytes))
    }

    #[cfg(test)]
    fn fixed(byte: u8) -> LinkKey {
        LinkKey([byte; 32])
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(b"precert-ack-v1.");
        mac.update(body.as_bytes());
        mac
    }

    /// A token acknowledging escalation `id`, usable until `expires`.
    pub fn ack_token(&self, id: i64, expires: DateTime<Utc>) -> String {
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).expect("the OS has randomness");
        let body = format!(
            "{id}.{}.{}",
            expires.timestamp(),
            data_encoding::BASE64URL_NOPAD.encode(&nonce)
        );
        let tag = self.mac(&body).finalize().into_bytes();
        format!("{body}.{}", data_encoding::BASE64URL_NOPAD.encode(&tag))
    }

    /// What a token says, if this key signed it and it has not expired.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<AckLink, LinkError> {
        let mut parts = token.split('.');
        let (Some(id), Some(exp), Some(nonce), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::Invalid);
        };
        let tag = data_encoding::BASE64URL_NOPAD
            .decode(tag.as_bytes())
            .map_err(|_| LinkError::Invalid)?;
        // Checked in constant time by the hmac crate.
        self.mac(&format!("{id}.{exp}.{nonce}"))
            .verify_slice(&tag)
            .map_err(|_| LinkError::Invalid)?;
        let escalation_id = id.parse().map_err(|_| LinkError::Invalid)?;
        let expires_at = exp
            .parse::<i64>()
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .ok_or(LinkError::Invalid)?;
        if expires_at <= now {
            return Err(LinkError::Expired { at: expires_at });
        }
        Ok(AckLink {
            escalation_id,
            expires_at,
            nonce: nonce.to_owned(),
        })
    }
}

/// A verified acknowledgement link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckLink {
    pub escalation_id: i64,
    pub expires_at: DateTime<Utc>,
    /// Recorded when the link is used, so it works once.
    pub nonce: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkError {
    /// Not a link this console made (altered, cut short, another key).
    Invalid,
    Expired {
        at: DateTime<Utc>,
    },
}

/// The address of an acknowledgement link.
pub fn ack_url(public_url: &str, token: &str) -> String {
    format!("{public_url}/ack/{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_until_it_expires_and_not_when_altered_or_signed_by_another_key() {
        let key = LinkKey::fixed(7);
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let exp = now + chrono::Duration::hours(72);
        let token = key.ack_token(41, exp);
        let link = key.verify(&token, now).unwrap();
        assert_eq!((link.escalation_id, link.expires_at), (41, exp));
        assert_ne!(key.ack_token(41, exp), token, "each link has its own nonce");
        assert_eq!(key.verify(&token, exp), Err(LinkError::Expired { at: exp }));
        assert_eq!(LinkKey::fixed(8).verify(&token, now), Err(LinkError::Invalid));
        // Another escalation's number with the same signature is refused.
        let forged = token.replacen("41.", "42.", 1);
        assert_eq!(key.verify(&forged, now), Err(LinkError::Invalid));
        // So is a later expiry.
        let later = token.replacen(&exp.timestamp().to_string(), &(exp.timestamp() + 3600).to_string(), 1);
        assert_eq!(key.verify(&later, now), Err(LinkError::Invalid));
        for junk in ["", "41", "41.1.2", "a.b.c.d", &format!("{token}.x")] {
            assert_eq!(key.verify(junk, now), Err(LinkError::Invalid), "{junk}");
        }
        assert!(
            token.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "URL-safe: {token}"
        );
    }
}
