//! What payers publish about themselves (CMS-0057-F: yearly approval and
//! denial rates and median decision times), one small file per payer and
//! year, `PAYER-YEAR.toml`, shown beside the practice's own figures:
//!
//! ```toml
//! source = "https://payer.example/prior-auth-metrics-2026"
//! approval_rate = 91.2                  # percent of decided requests
//! denial_rate = 8.8                     # percent
//! median_decision_hours_standard = 96.0
//! median_decision_hours_urgent = 20.5
//! ```
//!
//! Every key is optional but at least one figure must be there; unknown
//! keys, wrong types and impossible values are errors naming the file and
//! line.

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::de::{DeTable, DeValue};

/// One payer's published figures for one year.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub payer: String,
    pub year: i32,
    pub file: PathBuf,
    /// Where the figures were published (a URL or a document's name).
    pub source: Option<String>,
    /// Percent of decided requests approved (in full or partly).
    pub approval_rate: Option<f64>,
    /// Percent of decided requests denied.
    pub denial_rate: Option<f64>,
    pub median_decision_hours_standard: Option<f64>,
    pub median_decision_hours_urgent: Option<f64>,
}

/// A problem in a published-figures file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct PublishedError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

const KEYS: [&str; 5] = [
    "source",
    "approval_rate",
    "denial_rate",
    "median_decision_hours_standard",
    "median_decision_hours_urgent",
];

/// Every `*.toml` of `dir`, read and checked; a missing directory is no
/// files. Files with problems are left out, each problem returned.
pub fn load_dir(dir: &Path) -> (Vec<Published>, Vec<PublishedError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, errors),
        Err(e) => {
            errors.push(PublishedError {
                file: dir.to_owned(),
                line: None,
                message: format!("cannot read the directory: {e}"),
            });
            return (out, errors);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse(&file, &text) {
                Ok(p) => out.push(p),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(PublishedError {
                file: file.clone(),
                line: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (out, errors)
}

/// The payer and year a file name says: `PAYER-YEAR.toml` (the payer may
/// itself contain `-`).
fn name_parts(file: &Path) -> Option<(String, i32)> {
    let stem = file.file_stem()?.to_str()?;
    let (payer, year) = stem.rsplit_once('-')?;
    let year: i32 = year.parse().ok()?;
    (!payer.is_empty() && (1900..=9999).contains(&year)).then(|| (payer.to_owned(), year))
}

/// One file's figures, or every problem in it.
pub fn parse(file: &Path, text: &str) -> Result<Published, Vec<PublishedError>> {
    let line_of = |at: usize| Some(text[..at.min(text.len())].matches('\n').count() + 1);
    let err = |line: Option<usize>, message: String| PublishedError {
        file: file.to_owned(),
        line,
        message,
    };
    let Some((payer, year)) = name_parts(file) else {
        return Err(vec![err(
            None,
            "the file name must be PAYER-YEAR.toml (for example sandbox-2026.toml)".into(),
        )]);
    };
    let table =
        DeTable::parse(text).map_err(|e| vec![err(e.span().and_then(|s| line_of(s.start)), e.message().to_owned())])?;
    let mut p = Published {
        payer,
        year,
        file: file.to_owned(),
        source: None,
        approval_rate: None,
        denial_rate: None,
        median_decision_hours_standard: None,
        median_decision_hours_urgent: None,
    };
    let mut errors = Vec::new();
    for (key, value) in table.get_ref().iter() {
        let name: &str = key.get_ref().as_ref();
        let line = line_of(key.span().start);
        if name == "source" {
            match value.get_ref().as_str() {
                Some(s) => p.source = Some(s.to_owned()),
                None => errors.push(err(line, "source: must be text (a URL or a document's name)".into())),
            }
            continue;
        }
        let slot = match name {
            "approval_rate" => &mut p.approval_rate,
            "denial_rate" => &mut p.denial_rate,
            "median_decision_hours_standard" => &mut p.median_decision_hours_standard,
            "median_decision_hours_urgent" => &mut p.median_decision_hours_urgent,
            other => {
                let near = KEYS
                    .iter()
                    .filter(|k| strsim::levenshtein(k, other) <= 3)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .next()
                    .unwrap_or_default();
                errors.push(err(
                    line,
                    format!("unknown key `{other}`{near}; expected one of: {}", KEYS.join(", ")),
                ));
                continue;
            }
        };
        let number = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok().map(|v| v as f64),
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
            _ => None,
        };
        let rate = name.ends_with("_rate");
        match number {
            Some(v) if !v.is_finite() || v < 0.0 => {
                errors.push(err(line, format!("{name}: {v} must be a number of 0 or more")))
            }
            Some(v) if rate && v > 100.0 => errors.push(err(
                line,
                format!("{name}: {v} is a percent and must be between 0 and 100"),
            )),
            Some(v) => *slot = Some(v),
            None => errors.push(err(
                line,
                format!(
                    "{name}: must be a number ({}), not {}",
                    if rate { "a percent" } else { "hours" },
                    value.get_ref().type_str()
                ),
            )),
        }
    }
    if let (Some(a), Some(d)) = (p.approval_rate, p.denial_rate) {
        if a + d > 100.0 + 1e-9 {
            errors.push(err(
                None,
                format!("approval_rate {a} and denial_rate {d} add up to more than 100"),
            ));
        }
    }
    let figures = [
        p.approval_rate,
        p.denial_rate,
        p.median_decision_hours_standard,
        p.median_decision_hours_urgent,
    ];
    if errors.is_empty() && figures.iter().all(Option::is_none) {
        errors.push(err(None, "no figures: set at least one of approval_rate, denial_rate, median_decision_hours_standard, median_decision_hours_urgent".into()));
    }
    if errors.is_empty() {
        Ok(p)
    } else {
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(errors)
    }
}

/// The payer's figures for `year`, else its latest earlier year's (payers
/// publish a year's figures during the next).
pub fn for_payer<'a>(all: &'a [Published], payer: &str, year: i32) -> Option<&'a Published> {
    all.iter()
        .filter(|p| p.payer == payer && p.year <= year)
        .max_by_key(|p| p.year)
}

/// Where published figures are kept: `reports/published/` in the project
/// (beside `config/`, where `playbooks/` and `data/` are by default).
pub fn default_dir(config_file: &Path) -> PathBuf {
    let config_dir = config_file.parent().unwrap_or(Path::new("."));
    let project = config_dir.parent().unwrap_or(config_dir);
    project.join("reports").join("published")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_reads_and_a_bad_one_names_its_lines() {
        let ok = parse(
            Path::new("reports/published/sandbox-pas-2026.toml"),
            "source = \"x\"\napproval_rate = 91.5\ndenial_rate = 8\nmedian_decision_hours_urgent = 20\n",
        )
        .unwrap();
        assert_eq!((ok.payer.as_str(), ok.year), ("sandbox-pas", 2026));
        assert_eq!(ok.approval_rate, Some(91.5));
        assert_eq!(ok.denial_rate, Some(8.0));
        let bad = parse(
            Path::new("sandbox-2026.toml"),
            "approval_rate = 191\n\naproval_rate = 3\ndenial_rate = \"high\"\n",
        )
        .unwrap_err();
        let text: Vec<String> = bad.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            text,
            [
                "sandbox-2026.toml:1: approval_rate: 191 is a percent and must be between 0 and 100",
                "sandbox-2026.toml:3: unknown key `aproval_rate` (did you mean `approval_rate`?); expected one of: source, approval_rate, denial_rate, median_decision_hours_standard, median_decision_hours_urgent",
                "sandbox-2026.toml:4: denial_rate: must be a number (a percent), not string",
            ]
        );
        let syntax = parse(Path::new("sandbox-2026.toml"), "approval_rate = 9\ndenial_rate = = 2\n").unwrap_err();
        assert_eq!(syntax[0].line, Some(2), "{:?}", syntax);
        assert!(parse(Path::new("sandbox.toml"), "approval_rate = 9\n").is_err());
    }
}
