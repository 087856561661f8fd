//! RFC 6238 time-based one-time passwords (SHA-1, 6 digits, 30-second step), as the
//! portal's MFA page expects them. Public so tests and clients can compute codes.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The step length in seconds.
pub const STEP_SECONDS: u64 = 30;

/// Decodes a base32 seed (RFC 4648 alphabet, case-insensitive, padding and spaces optional).
pub fn decode_seed(seed: &str) -> Option<Vec<u8>> {
    let cleaned: String = seed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if cleaned.is_empty() {
        return None;
    }
    data_encoding::BASE32_NOPAD.decode(cleaned.as_bytes()).ok()
}

/// The 6-digit code for counter value `counter` (RFC 4226 HOTP).
fn hotp(key: &[u8], counter: u64) -> u32 {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let bin = (u32::from(digest[offset] & 0x7f) << 24)
        | (u32::from(digest[offset + 1]) << 16)
        | (u32::from(digest[offset + 2]) << 8)
        | u32::from(digest[offset + 3]);
    bin % 1_000_000
}

/// The code for `seed` at `unix_seconds`, zero-padded to 6 digits; `None` for a bad seed.
pub fn code_at(seed: &str, unix_seconds: u64) -> Option<String> {
    let key = decode_seed(seed)?;
    Some(format!("{:06}", hotp(&key, unix_seconds / STEP_SECONDS)))
}

/// The code for `seed` now.
pub fn current_code(seed: &str) -> Option<String> {
    code_at(seed, now_unix())
}

/// Whether `code` is valid for `seed` at `unix_seconds`, allowing one step of clock skew.
pub fn verify(seed: &str, code: &str, unix_seconds: u64) -> bool {
    let Some(key) = decode_seed(seed) else {
        return false;
    };
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let step = unix_seconds / STEP_SECONDS;
    [step.saturating_sub(1), step, step + 1]
        .iter()
        .any(|&c| format!("{:06}", hotp(&key, c)) == code)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 vectors (seed "12345678901234567890"), last 6 digits.
    #[test]
    fn rfc6238_vectors() {
        let seed = data_encoding::BASE32_NOPAD.encode(b"12345678901234567890");
        assert_eq!(code_at(&seed, 59).unwrap(), "287082");
        assert_eq!(code_at(&seed, 1_111_111_109).unwrap(), "081804");
        assert_eq!(code_at(&seed, 1_234_567_890).unwrap(), "005924");
        assert_eq!(code_at(&seed, 20_000_000_000).unwrap(), "353130");
    }

    #[test]
    fn one_step_of_skew_is_accepted_two_are_not() {
        let seed = "JBSWY3DPEHPK3PXP";
        let t = 1_800_000_000;
        let code = code_at(seed, t).unwrap();
        assert!(verify(seed, &code, t + STEP_SECONDS));
        assert!(verify(seed, &code, t - STEP_SECONDS));
        assert!(!verify(seed, &code, t + 3 * STEP_SECONDS));
    }
}
