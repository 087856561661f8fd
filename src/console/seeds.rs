//! Console users' TOTP seeds, sealed at rest with a key the ledger does
//! not hold.
//!
//! The key is 32 random bytes (base64) in `console-totp.key` in the data
//! directory, made `0600` by the first console that starts without one. A
//! seed is stored as `v1:` and base64 of a random 96-bit nonce followed by
//! the seed sealed with ChaCha20-Poly1305 (ring's AEAD, already built for
//! rustls), the user's name its associated data: a copy of the ledger alone
//! (a backup, a replica, a leaked dump) does not give anyone's codes, and a
//! sealed seed moved to another user's row does not open.
//!
//! At start ([`prepare`]) the console checks the key against every sealed
//! seed and seals the seeds stored before sealing existed (base32 text), so
//! no user loses their TOTP. A missing or wrong key stops the console with
//! an error naming the file, never a sign-in that silently fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

use axum::http::StatusCode;
use axum::response::Response;

use super::auth::Viewer;
use super::pages::message;
use super::App;
use crate::store::{private_dir, Ledger, StoreError};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "console-totp.key";

/// How a sealed seed begins (a stored seed without it is a plain base32
/// seed from before sealing).
const SEALED: &str = "v1:";

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SeedKeyError {
    #[error("cannot read the console's TOTP key {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the console's TOTP key {} is not a key: it must hold 32 bytes in base64 ({reason})", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("cannot create the console's TOTP key {}: {source}", path.display())]
    Create { path: PathBuf, source: std::io::Error },
    #[error(
        "the console's TOTP key {} is missing, but the ledger holds TOTP seeds sealed with it (users: {names}): \
         restore the file from a backup or copy it from the daemon that made it; or remove their two-step \
         sign-in with `precert users remove-totp NAME`, and they set it up again",
        path.display()
    )]
    Missing { path: PathBuf, names: String },
    #[error(
        "the console's TOTP key {} does not open the TOTP seeds of users {names}: it is not the key they were \
         sealed with. Put the right key file back, or remove their two-step sign-in with \
         `precert users remove-totp NAME`, and they set it up again",
        path.display()
    )]
    Wrong { path: PathBuf, names: String },
    #[error("cannot check the console's TOTP seeds: {0}")]
    Store(#[from] StoreError),
}

/// Why a stored seed cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("the TOTP seed of user {user} does not open with the console's key {}", path.display())]
pub struct SeedError {
    pub user: String,
    pub path: PathBuf,
}

/// The key that seals TOTP seeds.
pub struct SeedKey {
    key: LessSafeKey,
    path: PathBuf,
}

impl std::fmt::Debug for SeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeedKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn aad(user: &str) -> String {
    format!("precert console totp seed of {user}")
}

impl SeedKey {
    fn from_bytes(bytes: &[u8], path: PathBuf) -> SeedKey {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key");
        SeedKey {
            key: LessSafeKey::new(unbound),
            path,
        }
    }

    /// The key in `path`, if the file exists.
    fn read(path: &Path) -> Result<Option<SeedKey>, SeedKeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SeedKeyError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let malformed = |reason: String| SeedKeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let bytes = data_encoding::BASE64
            .decode(text.trim().as_bytes())
            .map_err(|e| malformed(e.to_string()))?;
        if bytes.len() != KEY_LEN {
            return Err(malformed(format!("it holds {} bytes", bytes.len())));
        }
        Ok(Some(SeedKey::from_bytes(&bytes, path.to_owned())))
    }

    /// Makes a new key in `path` (`0600`, its folder `0700`), unless another
    /// process made one first: then that one is read.
    fn create(path: &Path) -> Result<SeedKey, SeedKeyError> {
        let create = |source| SeedKeyError::Create {
            path: path.to_owned(),
            source,
        };
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| create(std::io::Error::other(e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        private_dir(dir).map_err(create)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(dir)
            .map_err(create)?;
        writeln!(tmp, "{}", data_encoding::BASE64.encode(&bytes)).map_err(create)?;
        tmp.as_file().sync_all().map_err(create)?;
        // tempfile makes the file 0600; never replace a key someone made.
        match tmp.persist_noclobber(path) {
            Ok(_) => Ok(SeedKey::from_bytes(&bytes, path.to_owned())),
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                SeedKey::read(path)?.ok_or_else(|| create(e.error))
            }
            Err(e) => Err(create(e.error)),
        }
    }

    /// Seals a base32 seed for `user`, as it is stored.
    pub fn seal(&self, user: &str, seed: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut nonce).expect("the OS has randomness");
        let mut sealed = seed.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(user).as_bytes()),
                &mut sealed,
            )
            .expect("a seed fits ChaCha20-Poly1305");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED}{}", data_encoding::BASE64.encode(&out))
    }

    /// The base32 seed of `user` from its stored form (a seed stored before
    /// sealing existed is read as it is).
    pub fn open(&self, user: &str, stored: &str) -> Result<String, SeedError> {
        let Some(sealed) = stored.strip_prefix(SEALED) else {
            return Ok(stored.to_owned());
        };
        let wrong = || SeedError {
            user: user.to_owned(),
            path: self.path.clone(),
        };
        let mut bytes = data_encoding::BASE64.decode(sealed.as_bytes()).map_err(|_| wrong())?;
        if bytes.len() < NONCE_LEN {
            return Err(wrong());
        }
        let mut body = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| wrong())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(user).as_bytes()), &mut body)
            .map_err(|_| wrong())?;
        String::from_utf8(plain.to_vec()).map_err(|_| wrong())
    }

    /// Where the key is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The answer when a user's stored seed does not open: the server's
/// problem, logged with the file to look at, and said as such.
pub fn unusable(app: &App, viewer: Option<&Viewer>, e: &SeedError) -> Response {
    tracing::error!(user = %e.user, key = %e.path.display(), "Console: a TOTP seed does not open with the key.");
    message(
        app,
        viewer,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Two-step sign-in cannot be checked",
        "The console cannot read your two-step sign-in key: its key file is not the one your key was \
         stored with. Nothing was counted against your account. Tell your administrator (the console's log names the file).",
    )
}

/// The console's seed key at start: read from the data directory (made
/// there when missing and no seed needs it), checked against every sealed
/// seed in the ledger; seeds stored before sealing are sealed now.
pub async fn prepare(ledger: &Ledger, data_dir: &Path) -> Result<SeedKey, SeedKeyError> {
    let path = data_dir.join(KEY_FILE);
    let seeds = ledger.console_totp_seeds().await?;
    let sealed = |(_, s): &&(String, String)| s.starts_with(SEALED);
    let key = match SeedKey::read(&path)? {
        Some(k) => k,
        None if seeds.iter().any(|s| sealed(&s)) => {
            let names: Vec<&str> = seeds.iter().filter(sealed).map(|(n, _)| n.as_str()).collect();
            return Err(SeedKeyError::Missing {
                path,
                names: names.join(", "),
            });
        }
        None => SeedKey::create(&path)?,
    };
    let wrong: Vec<&str> = seeds
        .iter()
        .filter(|(name, stored)| key.open(name, stored).is_err())
        .map(|(n, _)| n.as_str())
        .collect();
    if !wrong.is_empty() {
        return Err(SeedKeyError::Wrong {
            path,
            names: wrong.join(", "),
        });
    }
    for (name, stored) in seeds.iter().filter(|s| !sealed(s)) {
        if ledger
            .reseal_console_totp(name, stored, &key.seal(name, stored))
            .await?
        {
            tracing::info!(user = %name, "Console: a TOTP seed stored in plain text is now sealed.");
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_seed_opens_for_its_user_only_and_with_its_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = SeedKey::create(&dir.path().join(KEY_FILE)).unwrap();
        let seed = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
        let stored = key.seal("sam", seed);
        assert!(stored.starts_with(SEALED) && !stored.contains(seed));
        assert_ne!(stored, key.seal("sam", seed), "a fresh nonce each time");
        assert_eq!(key.open("sam", &stored).unwrap(), seed);
        assert!(key.open("olive", &stored).is_err(), "bound to its user");
        assert_eq!(key.open("sam", seed).unwrap(), seed, "a plain seed reads as it is");
        let other = SeedKey::create(&tempfile::tempdir().unwrap().path().join(KEY_FILE)).unwrap();
        assert!(other.open("sam", &stored).is_err());
    }

    #[test]
    fn the_key_file_is_made_once_readable_by_the_owner_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(KEY_FILE);
        let made = SeedKey::create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = SeedKey::create(&path).unwrap();
        let stored = made.seal("ada", "SEED");
        assert_eq!(again.open("ada", &stored).unwrap(), "SEED", "the first key is kept");
        std::fs::write(&path, "short\n").unwrap();
        let e = SeedKey::read(&path).unwrap_err().to_string();
        assert!(e.contains(KEY_FILE) && e.contains("32 bytes"), "{e}");
    }
}
