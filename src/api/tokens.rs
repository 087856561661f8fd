//! API tokens: `pct_KEY_SECRET`. KEY (12 hex digits) is public and finds
//! the token's row; SECRET (32 random bytes, URL-safe base64) is kept only
//! as its SHA-256 and compared in constant time. The whole token is shown
//! once, when it is created, and never logged.

use crate::store::{Ledger, StoreError, SyncCursor, TokenScope};

const PREFIX: &str = "pct_";

/// A token just created: the only time its secret exists outside the
/// client that holds it.
pub struct NewToken {
    pub id: i64,
    /// `pct_KEY_SECRET`, to hand to the practice's system.
    pub token: String,
    pub key_id: String,
}

/// The hash a secret is stored and compared as.
pub fn secret_hash(secret: &str) -> String {
    crate::files::sha256_hex(secret.as_bytes())
}

/// `pct_KEY_SECRET` → (KEY, SECRET), or None when it has not that shape.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (key, secret) = rest.split_once('_')?;
    let key_ok = key.len() == 12 && key.bytes().all(|b| b.is_ascii_hexdigit());
    (key_ok && !secret.is_empty()).then_some((key, secret))
}

/// Creates a token for a practice and stores its hash.
pub async fn create(
    ledger: &Ledger,
    practice: &str,
    name: &str,
    scope: TokenScope,
    created_by: &str,
) -> Result<NewToken, StoreError> {
    let mut key = [0u8; 6];
    getrandom::getrandom(&mut key).expect("the OS has randomness");
    let key_id = data_encoding::HEXLOWER.encode(&key);
    let secret = crate::console::auth::random_token();
    let id = ledger
        .create_api_token(&key_id, &secret_hash(&secret), practice, name, scope, created_by)
        .await?;
    Ok(NewToken {
        id,
        token: format!("{PREFIX}{key_id}_{secret}"),
        key_id,
    })
}

/// A sync cursor as the API hands it out: opaque URL-safe text.
pub fn encode_cursor(c: &SyncCursor) -> String {
    data_encoding::BASE64URL_NOPAD.encode(format!("{}|{}", c.updated_at, c.id).as_bytes())
}

/// A cursor back, or None when it is not one this API gave.
pub fn decode_cursor(s: &str) -> Option<SyncCursor> {
    let bytes = data_encoding::BASE64URL_NOPAD.decode(s.trim().as_bytes()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once('|')?;
    crate::store::parse_time(at).ok()?;
    Some(SyncCursor {
        updated_at: at.to_owned(),
        id: id.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_splits_into_its_key_and_secret() {
        assert_eq!(split("pct_0123456789ab_s3cr-et_x"), Some(("0123456789ab", "s3cr-et_x")));
        assert_eq!(split("pct_0123_secret"), None);
        assert_eq!(split("bearer"), None);
        assert_eq!(split("pct_0123456789ab_"), None);
    }

    #[test]
    fn a_cursor_round_trips_and_a_forged_one_is_refused() {
        let c = SyncCursor {
            updated_at: "2026-12-01T15:00:00.000000Z".into(),
            id: 42,
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("not-a-cursor"), None);
    }
}
