//! Secrets named by the configuration and read from where it says.
//!
//! A configuration file never holds a secret's value, only where to find it:
//! an environment variable, a file readable by the service user alone, or a
//! systemd credential (`LoadCredential=` → `$CREDENTIALS_DIRECTORY/NAME`).
//! Values live in `secrecy::SecretString`, which prints as `[REDACTED]`.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// The raw form in a configuration file: `{ env = "VAR" }`,
/// `{ file = "/path" }` or `{ credential = "name" }`. A bare string is parsed
/// too, only to refuse it with a helpful message.
#[derive(Clone, Debug)]
pub enum RawSecret {
    Ref(RawSecretRef),
    Inline(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub credential: Option<String>,
}

const REF_KEYS: &[&str] = &["env", "file", "credential"];

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = RawSecret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "where to read the secret: { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" }",
                )
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret::Inline(v.to_owned()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawSecret, A::Error> {
                RawSecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(RawSecret::Ref)
            }
        }
        // Asked for as a struct (the configuration's reader answers a string
        // as a string), so that every unknown key in it is reported like any
        // other (`config::unknown`), not as "no variant matched".
        de.deserialize_struct("RawSecretRef", REF_KEYS, Either)
    }
}

/// Where a secret comes from, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Credential(String),
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(v) => write!(f, "environment variable {v}"),
            SecretRef::File(p) => write!(f, "file {}", p.display()),
            SecretRef::Credential(n) => write!(f, "systemd credential {n}"),
        }
    }
}

impl RawSecret {
    /// Checks the reference's shape. `base` resolves relative file paths.
    pub fn compile(&self, base: &Path) -> Result<SecretRef, String> {
        let r = match self {
            RawSecret::Inline(_) => {
                return Err(
                    "a secret's value cannot be written in a configuration file; name where to read it: \
                     { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" } (systemd LoadCredential=)"
                        .into(),
                )
            }
            RawSecret::Ref(r) => r,
        };
        match (&r.env, &r.file, &r.credential) {
            (Some(v), None, None) if !v.trim().is_empty() => Ok(SecretRef::Env(v.trim().to_owned())),
            (None, Some(p), None) if !p.as_os_str().is_empty() => Ok(SecretRef::File(base.join(p))),
            (None, None, Some(n)) if valid_credential_name(n) => Ok(SecretRef::Credential(n.clone())),
            (None, None, Some(n)) => Err(format!(
                "`{n}` is not a valid credential name (letters, digits, `.`, `_`, `-`; no `/`)"
            )),
            _ => Err("name exactly one of `env`, `file` or `credential`, and not empty".into()),
        }
    }
}

fn valid_credential_name(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl SecretRef {
    /// Reads the secret. Surrounding white space (a file's trailing newline)
    /// is dropped. Errors say where it looked, never what it found.
    pub fn resolve(&self) -> Result<SecretString, String> {
        let value = match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => return Err(format!("environment variable {var} is not set")),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {var} is not valid UTF-8"))
                }
            },
            SecretRef::File(path) => read_secret_file(path)?,
            SecretRef::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "systemd credential {name} cannot be read: $CREDENTIALS_DIRECTORY is not set \
                         (run under systemd with LoadCredential={name}:/path, or use {{ env = ... }} or {{ file = ... }})"
                    )
                })?;
                read_secret_file(&Path::new(&dir).join(name))?
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{self} is empty"));
        }
        Ok(SecretString::from(value.to_owned()))
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("secret file {} is not a regular file", path.display()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "secret file {} is readable by others (mode {mode:04o}); make it readable by the service user alone: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}

/// A secret as settings hold it: its reference always, its value once
/// resolved. Commands that never use secrets (`cases list`) load settings
/// without resolving them, so an operator's shell needs no credentials.
#[derive(Clone)]
pub struct Secret {
    pub reference: SecretRef,
    value: Option<SecretString>,
}

impl Secret {
    pub fn unresolved(reference: SecretRef) -> Self {
        Secret { reference, value: None }
    }

    pub fn resolved(reference: SecretRef, value: SecretString) -> Self {
        Secret {
            reference,
            value: Some(value),
        }
    }

    /// The value, or why it is not available.
    pub fn value(&self) -> Result<&SecretString, String> {
        match &self.value {
            Some(v) => Ok(v),
            None => self::unresolved_error(&self.reference),
        }
    }
}

fn unresolved_error<T>(r: &SecretRef) -> Result<T, String> {
    Err(format!("the secret from {r} was not loaded for this command"))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.value.is_some() {
            "[REDACTED]"
        } else {
            "[not loaded]"
        };
        write!(f, "Secret({}, {state})", self.reference)
    }
}
