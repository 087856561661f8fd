//! Console users and roles, kept in the ledger: `precert users
//! add|list|disable|enable|reset-password` calls these.
//!
//! Roles: an `admin` sees every practice; a `supervisor` or an `operator`
//! sees only the practices they are given. All three act on the cases they
//! see (acknowledge, set status, record a decision, submit again); only an
//! admin manages users.

use std::fmt;
use std::str::FromStr;

use super::auth;
use crate::config::Settings;
use crate::store::{ConsoleUser, Ledger, StoreError};

/// The shortest password accepted.
pub const MIN_PASSWORD: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Supervisor,
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Supervisor => "supervisor",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UserError;
    fn from_str(s: &str) -> Result<Self, UserError> {
        match s.trim() {
            "admin" => Ok(Role::Admin),
            "supervisor" => Ok(Role::Supervisor),
            "operator" => Ok(Role::Operator),
            other => Err(UserError::Role(other.to_owned())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("`{0}` is not a role; use admin, supervisor or operator")]
    Role(String),
    #[error("`{0}` is not a user name: use 1 to 64 lower-case letters, digits, `.`, `_` or `-`")]
    Name(String),
    #[error("the password is too short: use at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("no practice `{0}` in the configuration")]
    Practice(String),
    #[error("a {0} needs at least one practice (--practice ID)")]
    NoPractice(Role),
    #[error("an admin sees every practice; leave out --practice")]
    AdminPractice,
    #[error("a user named `{0}` exists already")]
    Exists(String),
    #[error("no user named `{0}`")]
    NoSuchUser(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(UserError::Name(name.to_owned()))
    }
}

fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(UserError::ShortPassword);
    }
    Ok(())
}

/// Adds a user with a role, the practices they see and a password.
pub async fn add(
    ledger: &Ledger,
    settings: &Settings,
    name: &str,
    role: Role,
    practices: &[String],
    password: &str,
) -> Result<(), UserError> {
    check_name(name)?;
    check_password(password)?;
    check_access(settings, role, practices)?;
    let hash = auth::hash_password(password).map_err(UserError::Hash)?;
    if !ledger.add_console_user(name, role.as_str(), practices, &hash).await? {
        return Err(UserError::Exists(name.to_owned()));
    }
    Ok(())
}

fn check_access(settings: &Settings, role: Role, practices: &[String]) -> Result<(), UserError> {
    match role {
        Role::Admin if !practices.is_empty() => return Err(UserError::AdminPractice),
        Role::Supervisor | Role::Operator if practices.is_empty() => return Err(UserError::NoPractice(role)),
        _ => {}
    }
    for p in practices {
        if settings.practice(p).is_none() {
            return Err(UserError::Practice(p.clone()));
        }
    }
    Ok(())
}

/// Gives a user another role or other practices; their sessions end, so
/// the change holds at once.
pub async fn set_access(
    ledger: &Ledger,
    settings: &Settings,
    name: &str,
    role: Role,
    practices: &[String],
) -> Result<(), UserError> {
    check_access(settings, role, practices)?;
    if !ledger.set_console_user_access(name, role.as_str(), practices).await? {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(())
}

/// Removes a user's TOTP (a lost phone): they sign in with the password
/// alone until they enrol again.
pub async fn clear_totp(ledger: &Ledger, name: &str) -> Result<(), UserError> {
    if !ledger.set_console_totp(name, None).await? {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(())
}

/// Sets a new password; every session of the user ends.
pub async fn reset_password(ledger: &Ledger, name: &str, password: &str) -> Result<(), UserError> {
    check_password(password)?;
    let hash = auth::hash_password(password).map_err(UserError::Hash)?;
    if !ledger.set_console_password(name, &hash).await? {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(())
}

/// Disables (or enables again) a user; disabling ends their sessions.
pub async fn set_disabled(ledger: &Ledger, name: &str, disabled: bool) -> Result<(), UserError> {
    if !ledger.set_console_user_disabled(name, disabled).await? {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    Ok(())
}

pub async fn list(ledger: &Ledger) -> Result<Vec<ConsoleUser>, UserError> {
    Ok(ledger.console_users().await?)
}
