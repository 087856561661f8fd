//! Helpers shared by the benchmark binaries: percentiles, a small table
//! printer, a throw-away precert project, and where the other binaries are.
//!
//! Every benchmark works on 127.0.0.1 only, with synthetic data, a bounded
//! amount of work and a deadline, and stops by itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository root (this crate lives in `bench/`).
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The sample practices' secrets (synthetic; the sandbox payer's values).
pub const SECRETS: &[(&str, &str)] = &[
    ("LAKESIDE_SANDBOX_PASSWORD", "Sandbox-Lakeside-2026"),
    ("LAKESIDE_SANDBOX_TOTP_SEED", "JBSWY3DPEHPK3PXP"),
    ("LAKESIDE_SANDBOX_CLIENT_SECRET", "sandbox-lakeside-client-secret"),
    ("VALLEY_SANDBOX_PASSWORD", "Sandbox-Valley-2026"),
    ("VALLEY_SANDBOX_TOTP_SEED", "KRSXG5CTMVRXEZLU"),
];

/// A set of measured durations, summarised as the tables print them.
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new() -> Samples {
        Samples(Vec::new())
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn values(&self) -> &[Duration] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }

    /// The nearest-rank percentile `p` (0–100); zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn median(&self) -> Duration {
        self.percentile(50.0)
    }

    pub fn p90(&self) -> Duration {
        self.percentile(90.0)
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99.0)
    }

    pub fn max(&self) -> Duration {
        self.0.iter().max().copied().unwrap_or_default()
    }
}

impl FromIterator<Duration> for Samples {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Samples {
        Samples(iter.into_iter().collect())
    }
}

/// Milliseconds with two decimals, the unit of every table.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// A plain-text table: a header row, then rows, columns right-aligned
/// except the first.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Table {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let cols = self.header.len();
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n{}", self.title);
        let line = |cells: &Vec<String>| {
            let parts: Vec<String> = (0..cols)
                .map(|c| {
                    let s = cells.get(c).map_or("", String::as_str);
                    if c == 0 {
                        format!("{s:<w$}", w = width[c])
                    } else {
                        format!("{s:>w$}", w = width[c])
                    }
                })
                .collect();
            println!("| {} |", parts.join(" | "));
        };
        line(&self.header);
        // A Markdown table: the first column left-aligned, the others right.
        let sep: String = width
            .iter()
            .enumerate()
            .map(|(c, w)| {
                if c == 0 {
                    format!(":{}|", "-".repeat(w + 1))
                } else {
                    format!("{}:|", "-".repeat(w + 1))
                }
            })
            .collect();
        println!("|{sep}");
        for r in &self.rows {
            line(r);
        }
    }
}

/// Another binary of this workspace, built into the same target directory
/// (`cargo build --release -p precert -p precert-sandbox -p precert-bench`).
pub fn sibling_exe(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} is not built; run `cargo build --release -p precert -p precert-sandbox -p precert-bench` first",
        path.display()
    );
    Ok(path)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A temporary precert project: copies of the repository's `config/`,
/// `samples/` and `playbooks/`, and its own `data/` (removed on drop).
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    pub fn new() -> anyhow::Result<Project> {
        let dir = tempfile::tempdir()?;
        for d in ["config", "samples", "playbooks"] {
            copy_dir(&Path::new(REPO).join(d), &dir.path().join(d))?;
        }
        Ok(Project { dir })
    }

    /// With `keep`, leaves the directory in place (it is removed otherwise)
    /// and says where it is.
    pub fn keep_if(self, keep: bool) {
        if keep {
            println!("\nThe project is kept in {}", self.dir.keep().display());
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("config/precert.toml")
    }

    /// Points every practice's `sandbox` and `sandbox-pas` payers at a running
    /// sandbox.
    pub fn use_sandbox(&self, base_url: &str) -> anyhow::Result<()> {
        for practice in ["lakeside-ortho", "valley-imaging"] {
            let path = self.path(&format!("config/practices/{practice}.toml"));
            let text = std::fs::read_to_string(&path)?;
            let mut text = text;
            for table in ["[payers.sandbox]\n", "[payers.sandbox-pas]\n"] {
                text = text.replacen(table, &format!("{table}base_url = \"{base_url}\"\n"), 1);
            }
            std::fs::write(&path, text)?;
        }
        Ok(())
    }

    /// A practice `id` (the sample practice's NPI and people) whose payer
    /// `sandbox` is bound to the PAS playbook at `base`, client `lakeside-pas`,
    /// with `schedules` (the body of its `[schedules]` table).
    pub fn pas_practice(&self, id: &str, base: &str, schedules: &str) -> anyhow::Result<()> {
        let template = std::fs::read_to_string(Path::new(REPO).join("config/practices/lakeside-ortho.toml"))?;
        let head = template
            .split("[payers.sandbox]")
            .next()
            .filter(|h| h.len() < template.len())
            .ok_or_else(|| anyhow::anyhow!("the sample practice has no [payers.sandbox]"))?
            .replacen("id = \"lakeside-ortho\"", &format!("id = \"{id}\""), 1)
            .replacen("timezone = \"America/Chicago\"", "timezone = \"UTC\"", 1);
        std::fs::write(
            self.path(&format!("config/practices/{id}.toml")),
            format!(
                "{head}[payers.sandbox]\nplaybook = \"sandbox-pas\"\nbase_url = \"{base}\"\n\
                 account = {{ client_id = \"lakeside-pas\" }}\n\
                 secrets.client_secret = {{ env = \"LAKESIDE_SANDBOX_CLIENT_SECRET\" }}\n\n[schedules]\n{schedules}"
            ),
        )?;
        Ok(())
    }

    /// Every practice of the project (the samples included) with `schedules`
    /// (the body of its `[schedules]` table), the rest of its file kept.
    pub fn set_schedules(&self, schedules: &str) -> anyhow::Result<()> {
        for e in std::fs::read_dir(self.path("config/practices"))? {
            let path = e?.path();
            let text = std::fs::read_to_string(&path)?;
            let Some((head, tail)) = text.split_once("[schedules]") else {
                anyhow::bail!("{}: no [schedules]", path.display());
            };
            let rest = tail
                .split_once("\n[")
                .map(|(_, r)| format!("\n[{r}"))
                .unwrap_or_default();
            std::fs::write(&path, format!("{head}[schedules]\n{schedules}{rest}"))?;
        }
        Ok(())
    }

    /// `precert --config … ARGS` with the sample secrets set.
    pub fn precert(&self) -> anyhow::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(sibling_exe("precert")?);
        cmd.arg("--config").arg(self.config_path()).current_dir(self.dir.path());
        for (k, v) in SECRETS {
            cmd.env(k, v);
        }
        cmd.env_remove("PRECERT_LOG").env_remove("CREDENTIALS_DIRECTORY");
        Ok(cmd)
    }
}

/// A synthetic NPI: nine digits from `seed`, then the Luhn check digit over
/// `80840` + those nine (the CMS rule the intake checks).
pub fn synthetic_npi(seed: u32) -> String {
    let first_nine = format!("1{:08}", seed % 100_000_000);
    let digits: Vec<u32> = "80840"
        .bytes()
        .chain(first_nine.bytes())
        .map(|b| u32::from(b - b'0'))
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| if i % 2 == 0 { (d * 2) % 10 + (d * 2) / 10 } else { d })
        .sum();
    format!("{first_nine}{}", (10 - sum % 10) % 10)
}

/// The case-file header `precert cases import` reads.
pub const CSV_HEADER: &str = "practice_id,case_id,patient_first_name,patient_last_name,patient_birth_date,patient_member_id,patient_group_number,coverage_payer,coverage_plan,coverage_plan_type,coverage_state,requesting_provider_name,requesting_provider_npi,requesting_provider_location,servicing_provider_name,servicing_provider_npi,servicing_provider_location,service_lines,diagnoses,service_start,service_end,setting,urgency,attachments,precert_required";

const FIRST: &[&str] = &[
    "Avery", "Blake", "Casey", "Drew", "Emerson", "Finley", "Harper", "Jordan",
];
const LAST: &[&str] = &[
    "Marsh",
    "Okafor",
    "Lindqvist",
    "Kowalski",
    "Tate",
    "Abara",
    "Nguyen",
    "Silva",
];
/// (service lines, diagnoses, setting), after the sample cases.
const SERVICES: &[(&str, &str, &str)] = &[
    ("73721-RT*1", "M25.561;M17.11", "outpatient"),
    ("27447-RT*1", "M17.11", "inpatient"),
    ("97110-GP*12", "M25.561", "office"),
    ("72148*1", "M54.16;M51.26", "outpatient"),
    ("E0601*1", "G47.33", "home"),
    ("70553*1", "R51.9", "outpatient"),
];

/// `n` synthetic cases for the sample practice `lakeside-ortho`, payer
/// `sandbox`, services in December 2026, every tenth urgent.
pub fn synthetic_csv(n: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(n * 400);
    out.push_str(CSV_HEADER);
    out.push('\n');
    for i in 0..n {
        let requesting = synthetic_npi(i as u32);
        let servicing = synthetic_npi(50_000_000 + i as u32);
        assert!(precert::case::Npi::parse(&requesting).is_ok() && precert::case::Npi::parse(&servicing).is_ok());
        let (lines, dx, setting) = SERVICES[i % SERVICES.len()];
        let birth = format!("{}-{:02}-{:02}", 1940 + i % 60, 1 + i % 12, 1 + i % 28);
        let start = format!("2026-12-{:02}", 1 + i % 28);
        let urgency = if i % 10 == 0 { "urgent" } else { "standard" };
        let _ = writeln!(
            out,
            "lakeside-ortho,SYN-{i:06},{},{},{birth},SYN{i:09},GRP-4410,sandbox,Sandbox Advantage PPO,medicare_advantage,IL,\"Synthetic Provider {}, MD\",{requesting},main,Synthetic Imaging {},{servicing},main,{lines},{dx},{start},{start},{setting},{urgency},,yes",
            FIRST[i % FIRST.len()],
            LAST[(i / FIRST.len()) % LAST.len()],
            i % 97,
            i % 13,
        );
    }
    out
}

/// The body of a `[schedules]` table where only submit and poll fire
/// (every other job on 1 January, 00:00).
pub fn schedules(submit: &str, poll: &str) -> String {
    let never = "0 0 1 1 *";
    format!(
        "submit = \"{submit}\"\npoll = \"{poll}\"\nletters = \"{never}\"\nescalations = \"{never}\"\ndigest = \"{never}\"\n"
    )
}

/// `n` synthetic brain-MRI requests (CPT 70553, which no sandbox scenario
/// decides, so they stay pending) spread over the practices `pas-0` ..
/// `pas-{practices - 1}`: `synthetic_csv` with those practices and services.
pub fn pas_csv(n: usize, practices: usize) -> anyhow::Result<String> {
    let mut csv = String::with_capacity(n * 400);
    for (i, line) in synthetic_csv(n).lines().enumerate() {
        if i == 0 {
            csv.push_str(line);
        } else {
            let row = line.replacen("lakeside-ortho,", &format!("pas-{},", (i - 1) % practices), 1);
            let mut cells: Vec<String> = row.split(',').map(str::to_owned).collect();
            // service_lines, diagnoses, setting — after the quoted provider name's comma.
            let at = cells
                .iter()
                .position(|c| c.contains('*'))
                .ok_or_else(|| anyhow::anyhow!("row {i}: no service line"))?;
            cells[at] = "70553*1".into();
            cells[at + 1] = "R51.9".into();
            cells[at + 4] = "outpatient".into();
            csv.push_str(&cells.join(","));
        }
        csv.push('\n');
    }
    Ok(csv)
}
