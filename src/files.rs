//! Files that may hold PHI: written atomically, readable by the owner
//! alone, named safely, identified by their SHA-256.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::store::private_dir;

/// Writes a file readable by its owner alone, atomically: a temporary file
/// in the same folder, synced, then renamed into place.
pub fn write_private(target: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".incoming-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    // tempfile creates files 0600 already; the rename keeps the mode.
    tmp.persist(target).map_err(|e| e.error)?;
    Ok(())
}

/// A file or folder name made of letters, digits, `.`, `-` and `_` only.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The largest letter precert keeps, downloaded from a payer or attached by
/// a person in the console.
pub const MAX_LETTER_BYTES: usize = 50 * 1024 * 1024;

/// The smallest file that can be a letter (a PDF's header and trailer).
pub const MIN_LETTER_BYTES: usize = 64;

/// Where a letter is kept, relative to the data directory: beside the
/// case's other letters, named by its content, so the same letter is one
/// file however it arrived.
pub fn letter_path(practice: &str, case_ref: &str, sha256: &str, kind: &str) -> std::path::PathBuf {
    std::path::PathBuf::from("letters")
        .join(practice)
        .join(safe_name(case_ref))
        .join(format!("{}-{}.pdf", &sha256[..12], safe_name(kind)))
}
