//! The drop folder (`[intake] dir`, `docs/intake.md`): a practice system
//! writes a CSV or JSON file of its cases there; the daemon imports it with
//! the file import ([`super::import_file_limited`]) and moves it to `done/`
//! or `failed/` with a report beside it.
//!
//! A file is read only when it looks finished: its name neither starts
//! with `.` nor ends with `.tmp`, and its size and modification time are
//! the same at two looks in a row (a writer still appending changes one of
//! them). A file is imported once in effect even if precert stops between
//! the import and the move: it is then imported again at the next look, and
//! the import is idempotent by practice + case ID (unchanged cases write
//! nothing).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{import_file_limited, AttachmentRule, Context, Format, ImportReport, IntakeError, Limits};
use crate::config::{Practice, Settings};
use crate::store::{Actor, Ledger};

/// Where a file went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub file: PathBuf,
    pub report: PathBuf,
    pub done: bool,
}

/// What the folder watcher remembers between looks: each waiting file's
/// size and modification time when it was last seen.
#[derive(Debug, Default)]
pub struct Watch {
    seen: HashMap<PathBuf, (u64, Option<SystemTime>)>,
    /// Folders that could not be read at the last look: said once, not at
    /// every look, until they can be read again.
    unreadable: HashSet<PathBuf>,
}

/// Whether a name is one the convention says not to read yet.
pub fn is_partial(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}

impl Watch {
    /// Looks at a practice's folder once: imports and moves each file that
    /// was already there, unchanged, at the last look. Files that cannot be
    /// handled now (the ledger unavailable) stay for the next look.
    pub async fn scan(&mut self, practice: &Practice, settings: &Settings, ledger: &Ledger) -> Vec<Moved> {
        let Some(dir) = &practice.intake.dir else {
            return Vec::new();
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => {
                if self.unreadable.remove(dir) {
                    tracing::info!(practice = %practice.id, dir = %dir.display(), "The drop folder can be read again.");
                }
                e
            }
            Err(e) => {
                if self.unreadable.insert(dir.clone()) {
                    tracing::error!(practice = %practice.id, dir = %dir.display(), error = %e, "Cannot read the drop folder; looking again at each scan.");
                }
                return Vec::new();
            }
        };
        let mut ready = Vec::new();
        let mut present = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || is_partial(&name) {
                continue;
            }
            let path = entry.path();
            let now = (meta.len(), meta.modified().ok());
            present.push(path.clone());
            if self.seen.insert(path.clone(), now) == Some(now) {
                ready.push(path);
            }
        }
        // Forget files of this folder that are gone (moved away by hand).
        let present: HashSet<PathBuf> = present.into_iter().collect();
        self.seen.retain(|p, _| !p.starts_with(dir) || present.contains(p));
        ready.sort();
        let mut moved = Vec::new();
        for path in ready {
            match take(&path, dir, practice, settings, ledger).await {
                Ok(m) => {
                    self.seen.remove(&path);
                    tracing::info!(practice = %practice.id, file = %m.file.display(), done = m.done, "Drop folder: file imported and moved.");
                    moved.push(m);
                }
                Err(e) => {
                    tracing::error!(practice = %practice.id, file = %path.display(), error = %e, "Drop folder: the file stays for the next look.");
                }
            }
        }
        moved
    }
}

/// Imports one file and moves it with its report. An error leaves the
/// file where it is (nothing was moved).
async fn take(
    path: &Path,
    dir: &Path,
    practice: &Practice,
    settings: &Settings,
    ledger: &Ledger,
) -> Result<Moved, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = match Format::from_path(path) {
        None => Err(format!("{name}: not a .csv or .json file; nothing was imported")),
        Some(format) => {
            let ctx = Context {
                settings,
                default_practice: Some(&practice.id),
                base_dir: dir,
                today: chrono::Utc::now().date_naive(),
            };
            let limits = Limits {
                practice: Some(&practice.id),
                attachments: AttachmentRule::Inside,
            };
            let actor = Actor::system("intake-folder");
            match import_file_limited(path, format, &ctx, &limits, ledger, &actor, |_, _| {}).await {
                Ok(report) => Ok(report),
                // The ledger is unavailable: try again later, move nothing.
                Err(IntakeError::Store(e)) => return Err(e.to_string()),
                Err(e) => Err(format!("{e:#}")),
            }
        }
    };
    let done = matches!(&result, Ok(r) if r.is_clean());
    let target_dir = dir.join(if done { "done" } else { "failed" });
    crate::store::private_dir(&target_dir).map_err(|e| format!("cannot create {}: {e}", target_dir.display()))?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let file = target_dir.join(format!("{stamp}-{name}"));
    let report_path = target_dir.join(format!("{stamp}-{name}.report.txt"));
    let text = report_text(&name, &practice.id, &result);
    crate::files::write_private(&report_path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    std::fs::rename(path, &file).map_err(|e| format!("cannot move it to {}: {e}", file.display()))?;
    restrict(&file);
    Ok(Moved {
        file,
        report: report_path,
        done,
    })
}

#[cfg(unix)]
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(file = %path.display(), error = %e, "Drop folder: cannot make the file private.");
    }
}

#[cfg(not(unix))]
fn restrict(_: &Path) {}

/// The report beside a moved file: the counts, then each refused record
/// with its line, case ID, field and reason: the messages `precert cases
/// import` prints, which may quote a refused value, so the report is
/// written 0600 like the file itself.
pub fn report_text(name: &str, practice: &str, result: &Result<ImportReport, String>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "file: {name}");
    let _ = writeln!(out, "practice: {practice}");
    let _ = writeln!(out, "imported at: {}", crate::store::ts(chrono::Utc::now()));
    match result {
        Err(e) => {
            let _ = writeln!(out, "result: refused whole; nothing was imported");
            let _ = writeln!(out, "reason: {e}");
        }
        Ok(r) => {
            let _ = writeln!(
                out,
                "result: {} record(s): {} created, {} updated, {} unchanged, {} refused",
                r.records,
                r.created,
                r.updated,
                r.unchanged,
                r.invalid.len()
            );
            for p in &r.invalid {
                let case = p
                    .case_ref
                    .as_deref()
                    .map(|c| format!(" (case {c})"))
                    .unwrap_or_default();
                for e in &p.errors {
                    let _ = writeln!(out, "refused: line {}{case}: {e}", p.line);
                }
            }
        }
    }
    out
}
