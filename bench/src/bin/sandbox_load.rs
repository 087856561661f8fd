//! The sandbox under load: thousands of PAS `Claim/$submit`s (the hot path:
//! OAuth bearer check, Bundle parsing, scenario rules, indices, response
//! Bundle) one after another, with latency percentiles per 1 000-request
//! bucket, client-side and from the sandbox's own request log; then the
//! portal's reads (worklist pages, status search, `$inquire`) with a small
//! and a large store; then throughput with a few concurrent clients.
//!
//! Everything goes to an in-process sandbox on 127.0.0.1; the counts are
//! fixed and a deadline stops the run early (the table says so).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use precert_bench::{ms, Samples, Table, REPO};
use precert_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use serde_json::{json, Value};

/// `$submit`s before the first read measurement (not counted in the load).
const WARMUP: usize = 25;
/// Sequential `$submit`s of the load phase.
const LOAD: usize = 5_000;
const BUCKET: usize = 1_000;
/// Requests and clients of the concurrent phase.
const CONCURRENT: usize = 2_000;
const CLIENTS: usize = 4;
/// Each read is repeated this many times per store size.
const READS: usize = 100;
/// The whole benchmark stops starting new work after this long.
const DEADLINE: Duration = Duration::from_secs(110);

/// Active members and their birth dates, plus the inactive one (denied at once).
const MEMBERS: &[(&str, &str)] = &[
    ("SBX100200301", "1961-04-12"),
    ("SBX100200302", "1975-09-30"),
    ("SBX100200303", "1988-02-14"),
    ("SBX100200304", "1950-12-01"),
    ("SBX100200305", "1969-07-22"),
    ("SBX100200306", "1992-11-05"),
];
/// One code per scenario: timed approval, denial, partial, approval, no rule, pend.
const CODES: &[(&str, u32)] = &[
    ("73721", 1),
    ("72148", 1),
    ("97110", 12),
    ("E0601", 1),
    ("70553", 1),
    ("27447", 1),
];

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    template: Value,
}

impl Api {
    /// The conformant Da Vinci PAS example, rewritten for request `i`: a
    /// sandbox member, a scenario code, a service date and a unique Claim
    /// identifier (so a pended request is never answered by a later one).
    fn bundle(&self, i: usize) -> String {
        let (member, _) = MEMBERS[i % MEMBERS.len()];
        let (code, units) = CODES[(i / MEMBERS.len()) % CODES.len()];
        let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).expect("a date") + chrono::Days::new((i % 28) as u64);
        let mut b = self.template.clone();
        for e in b["entry"].as_array_mut().expect("a Bundle") {
            let r = &mut e["resource"];
            match r["resourceType"].as_str().unwrap_or_default() {
                "Patient" => r["identifier"][0]["value"] = json!(member),
                "Coverage" => r["subscriberId"] = json!(member),
                "Claim" => {
                    let item = &mut r["item"][0];
                    item["productOrService"] =
                        json!({"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": code}]});
                    item["quantity"] = json!({ "value": units });
                    item["servicedDate"] = json!(date.to_string());
                    r["identifier"][0]["value"] = json!(format!("BENCH-{i:06}"));
                }
                _ => {}
            }
        }
        b.to_string()
    }

    /// Sends one `$submit` and reads the whole answer; returns the time and
    /// the `SBX-` reference.
    async fn submit(&self, body: String) -> anyhow::Result<(Duration, String)> {
        let t0 = Instant::now();
        let r = self
            .http
            .post(format!("{}/fhir/Claim/$submit", self.base))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body)
            .send()
            .await?;
        let status = r.status();
        let bytes = r.bytes().await?;
        let took = t0.elapsed();
        if !status.is_success() {
            bail!("$submit answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        let v: Value = serde_json::from_slice(&bytes)?;
        let reference = v["entry"][0]["resource"]["id"]
            .as_str()
            .context("a ClaimResponse id")?
            .to_owned();
        Ok((took, reference))
    }
}

async fn token(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "lakeside-pas"),
            ("client_secret", "sandbox-lakeside-client-secret"),
        ])
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "token: {}", r.status());
    let v: Value = r.json().await?;
    Ok(v["access_token"].as_str().context("an access token")?.to_owned())
}

/// Logs into the portal as Lakeside (password, then TOTP) and returns the
/// session cookie.
async fn portal_session(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let r = http
        .post(format!("{base}/portal/login"))
        .form(&[("username", "lakeside.precert"), ("password", "Sandbox-Lakeside-2026")])
        .send()
        .await?;
    let cookie = r
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("SBXSESSION="))
        .and_then(|v| v.split(';').next())
        .context("a session cookie after login")?
        .to_owned();
    let code = precert_sandbox::totp::current_code("JBSWY3DPEHPK3PXP").context("a TOTP code")?;
    let r = http
        .post(format!("{base}/portal/mfa"))
        .header(COOKIE, &cookie)
        .form(&[("code", code.as_str())])
        .send()
        .await?;
    let to = r.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("");
    anyhow::ensure!(to == "/portal/home", "MFA did not reach home ({} → {to})", r.status());
    Ok(cookie)
}

/// Times `n` GETs of `path` (with the session cookie), reading each body.
async fn time_gets(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    n: usize,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<(Samples, usize)> {
    let mut s = Samples::new();
    let mut bytes = 0;
    for i in 0..n {
        let t0 = Instant::now();
        let r = http
            .get(format!("{base}{}", path(i)))
            .header(COOKIE, cookie)
            .send()
            .await?;
        let status = r.status();
        let body = r.bytes().await?;
        s.push(t0.elapsed());
        anyhow::ensure!(status.is_success(), "GET {} answered {status}", path(i));
        bytes = body.len();
    }
    Ok((s, bytes))
}

/// The reads a person (or the engine) does on the portal and the API.
async fn reads(
    api: &Api,
    sbx: &SandboxHandle,
    cookie: &str,
    refs: &[String],
    label: &str,
    t: &mut Table,
) -> anyhow::Result<()> {
    let (http, base) = (&api.http, api.base.as_str());
    let pages = refs.len().div_ceil(25);
    let stored = sbx.submissions().len();
    let mut add = |what: String, (s, bytes): (Samples, usize)| {
        t.row(vec![
            format!("{label} ({stored} stored): {what}"),
            s.len().to_string(),
            ms(s.median()),
            ms(s.p90()),
            ms(s.max()),
            format!("{:.1}", bytes as f64 / 1024.0),
        ]);
    };
    let mut at = vec![1, pages.div_ceil(2), pages];
    at.dedup();
    for page in at {
        let r = time_gets(http, base, cookie, READS, |_| format!("/portal/worklist?page={page}")).await?;
        add(format!("worklist page {page} of {pages}"), r);
    }
    let r = time_gets(http, base, cookie, READS, |i| {
        format!("/portal/api/status?reference={}", refs[(i * 37) % refs.len()])
    })
    .await?;
    add("status search by reference (JSON)".into(), r);
    let r = time_gets(http, base, cookie, READS, |i| {
        format!("/portal/status?reference={}", refs[(i * 37) % refs.len()])
    })
    .await?;
    add("status page by reference (HTML shell)".into(), r);
    let (member, dob) = MEMBERS[0];
    let r = time_gets(http, base, cookie, READS / 5, |_| {
        format!("/portal/api/status?member_id={member}&birth_date={dob}")
    })
    .await?;
    add(format!("status search by member ({member}, JSON)"), r);

    let mut s = Samples::new();
    let mut bytes = 0;
    for i in 0..READS {
        let body = json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [{ "resource": {
                "resourceType": "Claim", "use": "preauthorization",
                "identifier": [{ "value": refs[(i * 37) % refs.len()] }]
            }}]
        })
        .to_string();
        let t0 = Instant::now();
        let r = http
            .post(format!("{base}/fhir/Claim/$inquire"))
            .header(AUTHORIZATION, format!("Bearer {}", api.token))
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body)
            .send()
            .await?;
        let status = r.status();
        let b = r.bytes().await?;
        s.push(t0.elapsed());
        anyhow::ensure!(status.is_success(), "$inquire answered {status}");
        bytes = b.len();
    }
    add("$inquire by reference (API)".into(), (s, bytes));
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    let fixture = std::path::Path::new(REPO).join("../shared/fhir-examples/conformant_pas_bundle_v110.json");
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(&fixture).with_context(|| format!("reading {}", fixture.display()))?,
    )?;
    let sbx = Sandbox::start(SandboxConfig::default_demo(), "127.0.0.1:0").await?;
    let base = sbx.base_url();
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let api = Api {
        token: token(&http, &base).await?,
        http,
        base,
        template,
    };
    let cookie = portal_session(&api.http, &api.base).await?;

    let mut refs = Vec::with_capacity(WARMUP + LOAD + CONCURRENT);
    for i in 0..WARMUP {
        refs.push(api.submit(api.bundle(i)).await?.1);
    }
    let mut reads_table = Table::new(
        &format!(
            "Portal and API reads, Lakeside's requests in the store ({READS} sequential GETs each; by member: {}; ms)",
            READS / 5
        ),
        &["read", "n", "median", "p90", "max", "KiB"],
    );
    reads(&api, &sbx, &cookie, &refs, "small", &mut reads_table).await?;

    // The load: sequential, so each latency is one request alone.
    let log_before = sbx.request_log().len();
    let mut client_lat = Samples::new();
    let mut buckets: Vec<(Samples, Duration)> = Vec::new();
    let load_started = Instant::now();
    let mut bucket = (Samples::new(), Instant::now());
    let mut stopped_early = false;
    for i in WARMUP..WARMUP + LOAD {
        if started.elapsed() > DEADLINE {
            stopped_early = true;
            break;
        }
        let body = api.bundle(i);
        let (took, reference) = api.submit(body).await?;
        refs.push(reference);
        client_lat.push(took);
        bucket.0.push(took);
        if bucket.0.len() == BUCKET {
            buckets.push((std::mem::take(&mut bucket.0), bucket.1.elapsed()));
            bucket.1 = Instant::now();
        }
    }
    if !bucket.0.is_empty() {
        buckets.push((std::mem::take(&mut bucket.0), bucket.1.elapsed()));
    }
    let load_wall = load_started.elapsed();
    let server: Vec<Duration> = sbx.request_log()[log_before..]
        .iter()
        .filter(|e| e.path == "/fhir/Claim/$submit")
        .map(|e| Duration::from_secs_f64(e.latency_ms / 1000.0))
        .collect();

    let mut t =
        Table::new(
            &format!(
            "PAS $submit under sequential load: {} requests after {WARMUP} warm-up, per {BUCKET}-request bucket (ms){}",
            client_lat.len(),
            if stopped_early { " — STOPPED AT THE DEADLINE" } else { "" }
        ),
            &[
                "requests",
                "client p50",
                "client p90",
                "client p99",
                "client max",
                "server p50",
                "server p90",
                "req/s",
            ],
        );
    let mut done = 0;
    for (s, wall) in &buckets {
        let mut srv = Samples::new();
        for d in server.iter().skip(done).take(s.len()) {
            srv.push(*d);
        }
        t.row(vec![
            format!("{}–{}", WARMUP + done + 1, WARMUP + done + s.len()),
            ms(s.median()),
            ms(s.p90()),
            ms(s.p99()),
            ms(s.max()),
            ms(srv.median()),
            ms(srv.p90()),
            format!("{:.0}", s.len() as f64 / wall.as_secs_f64()),
        ]);
        done += s.len();
    }
    let mut all_srv = Samples::new();
    server.iter().for_each(|d| all_srv.push(*d));
    t.row(vec![
        "all".into(),
        ms(client_lat.median()),
        ms(client_lat.p90()),
        ms(client_lat.p99()),
        ms(client_lat.max()),
        ms(all_srv.median()),
        ms(all_srv.p90()),
        format!("{:.0}", client_lat.len() as f64 / load_wall.as_secs_f64()),
    ]);
    t.print();

    reads(&api, &sbx, &cookie, &refs, "large", &mut reads_table).await?;
    reads_table.print();

    // Throughput with a few clients at once (same connection pool).
    if started.elapsed() < DEADLINE {
        let api = std::sync::Arc::new(api);
        let first = WARMUP + LOAD;
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = Samples::new();
                let mut i = first + c;
                while i < first + CONCURRENT {
                    if started.elapsed() > DEADLINE {
                        break;
                    }
                    s.push(api.submit(api.bundle(i)).await?.0);
                    i += CLIENTS;
                }
                anyhow::Ok(s)
            }));
        }
        let mut client = Samples::new();
        for task in tasks {
            for d in task.await??.values() {
                client.push(*d);
            }
        }
        let wall = t0.elapsed();
        // The newest log entries are this phase's requests.
        let mut server = Samples::new();
        let log = sbx.request_log();
        for e in log.iter().rev().take(client.len()) {
            server.push(Duration::from_secs_f64(e.latency_ms / 1000.0));
        }
        let all = client;
        let mut t = Table::new(
            &format!(
                "PAS $submit throughput with {CLIENTS} concurrent clients ({} requests)",
                all.len()
            ),
            &["measure", "value"],
        );
        t.row(vec!["wall time (s)".into(), format!("{:.2}", wall.as_secs_f64())]);
        t.row(vec![
            "throughput (req/s)".into(),
            format!("{:.0}", all.len() as f64 / wall.as_secs_f64()),
        ]);
        t.row(vec!["client latency p50 (ms)".into(), ms(all.median())]);
        t.row(vec!["client latency p90 (ms)".into(), ms(all.p90())]);
        t.row(vec!["server latency p50 (ms)".into(), ms(server.median())]);
        t.row(vec!["server latency p90 (ms)".into(), ms(server.p90())]);
        t.row(vec![
            "requests in the store at the end".into(),
            sbx.submissions().len().to_string(),
        ]);
        t.print();
    }
    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
    sbx.shutdown().await;
    Ok(())
}
