//! RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30 s), the MFA
//! codes payer portals ask for. The seed is a base32 secret.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The code for `unix_time`, or why the seed is unusable.
pub fn code(seed_base32: &str, unix_time: u64) -> Result<String, String> {
    let cleaned: String = seed_base32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect::<String>()
        .to_ascii_uppercase();
    let cleaned = cleaned.trim_end_matches('=');
    let key = data_encoding::BASE32_NOPAD
        .decode(cleaned.as_bytes())
        .map_err(|_| "the TOTP seed is not base32 (letters A-Z and digits 2-7)".to_owned())?;
    let counter = unix_time / 30;
    let mut mac = Hmac::<Sha1>::new_from_slice(&key).map_err(|_| "the TOTP seed is empty".to_owned())?;
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = (digest[19] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    Ok(format!("{:06}", binary % 1_000_000))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890", 8 digits
        // truncated to our 6 (the last six of the published values).
        let seed = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        for (t, expected) in [
            (59, "287082"),
            (1111111109, "081804"),
            (1234567890, "005924"),
            (2000000000, "279037"),
        ] {
            assert_eq!(super::code(&seed, t).unwrap(), expected, "t={t}");
        }
        assert!(super::code("not base32!", 0).is_err());
    }
}
