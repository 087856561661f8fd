//! The durable job queue and the cron fires that feed it, on a real ledger
//! (each test runs on SQLite and on PostgreSQL: `NAME::sqlite`,
//! `NAME::postgres`) and an injected clock: leases that expire, fencing tokens that
//! refuse a stale worker, retries with backoff, dead jobs that put their
//! case in front of a person, and schedules that fire each slot once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use precert::case::CaseStatus;
use precert::config::Job;
use precert::queue::{
    CaseEscalation, ExpiredOutcome, FailOutcome, Failure, FireOutcome, JobState, LeaseFilter, NewJob, Queue,
    RetryPolicy, Scheduler,
};
use precert::store::Ledger;
use precert::tz::Tz;

use super::postgres::{both_backends, Backend, TestDb};

const TTL: Duration = Duration::from_secs(300);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap()
}

fn mins(n: i64) -> chrono::Duration {
    chrono::Duration::minutes(n)
}

async fn queue(p: &TestDb) -> Queue {
    Queue::new(p.ledger().await)
}

fn any() -> LeaseFilter {
    LeaseFilter::default()
}

both_backends!(
    #[tokio::test]
    an_expired_lease_is_requeued_and_the_stale_workers_late_result_is_refused
);
async fn an_expired_lease_is_requeued_and_the_stale_workers_late_result_is_refused(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let id = q
        .enqueue(&NewJob::new(Job::Poll, "lakeside-ortho", t0()).payer("sandbox"), t0())
        .await
        .unwrap();

    // Worker A takes the job, then stalls (a hung portal page).
    let a = q.lease("worker-a", TTL, &any(), t0()).await.unwrap().unwrap();
    assert_eq!((a.id, a.attempt), (id, 1));
    assert!(
        q.lease("worker-b", TTL, &any(), t0()).await.unwrap().is_none(),
        "one job, one worker"
    );

    // Inside its lease nothing is re-queued, and A may renew.
    assert!(q.requeue_expired(t0() + mins(4)).await.unwrap().is_empty());
    let renewed = q.renew(&a.lease, TTL, t0() + mins(4)).await.unwrap();
    assert_eq!(renewed.expires_at, t0() + mins(9));

    // A goes silent; its lease runs out and the job goes back in the queue.
    let expired = q.requeue_expired(t0() + mins(10)).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(
        (expired[0].job_id, &expired[0].outcome),
        (id, &ExpiredOutcome::Requeued)
    );
    let rec = q.get(id).await.unwrap();
    assert_eq!(rec.state, JobState::Queued);
    assert_eq!(rec.last_error.as_deref(), Some("the lease held by worker-a expired"));

    // Worker B takes it over under a new fencing token.
    let b = q
        .lease("worker-b", TTL, &any(), t0() + mins(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.id, b.attempt), (id, 2));
    assert!(b.lease.token > a.lease.token);

    // A wakes up and tries to commit: every write is refused.
    let late = q.complete(&a.lease, t0() + mins(11)).await.unwrap_err();
    assert!(late.is_lease_lost(), "{late}");
    assert!(q
        .renew(&renewed, TTL, t0() + mins(11))
        .await
        .unwrap_err()
        .is_lease_lost());
    assert!(q
        .fail(&a.lease, &Failure::retry("timeout"), t0() + mins(11))
        .await
        .unwrap_err()
        .is_lease_lost());
    assert_eq!(
        q.get(id).await.unwrap().state,
        JobState::Leased,
        "A's refused writes changed nothing"
    );

    // B's result is the one that counts.
    q.complete(&b.lease, t0() + mins(12)).await.unwrap();
    let rec = q.get(id).await.unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Done, 2));
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    workers_racing_for_jobs_never_get_the_same_one
);
async fn workers_racing_for_jobs_never_get_the_same_one(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(
            q.enqueue(&NewJob::new(Job::Poll, "lakeside-ortho", t0()).payer("sandbox"), t0())
                .await
                .unwrap(),
        );
    }
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(job) = q
                    .lease(&format!("worker-{w}"), TTL, &LeaseFilter::default(), t0())
                    .await
                    .unwrap()
                {
                    got.push(job.id);
                }
                got
            })
        })
        .collect();
    let mut leased = Vec::new();
    for w in workers {
        leased.extend(w.await.unwrap());
    }
    leased.sort();
    assert_eq!(leased, ids, "every job leased exactly once");
}

both_backends!(
    #[tokio::test]
    a_job_given_back_unrun_keeps_its_attempts
);
async fn a_job_given_back_unrun_keeps_its_attempts(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let id = q
        .enqueue(&NewJob::new(Job::Submit, "lakeside-ortho", t0()).payer("sandbox"), t0())
        .await
        .unwrap();
    let job = q.lease("w", TTL, &any(), t0()).await.unwrap().unwrap();
    // The payer's limit was reached between lease and start: back it goes.
    q.release(&job.lease, t0() + mins(1), t0()).await.unwrap();
    let rec = q.get(id).await.unwrap();
    assert_eq!(
        (rec.state, rec.attempts, rec.run_at),
        (JobState::Queued, 0, t0() + mins(1))
    );
    assert!(q.release(&job.lease, t0(), t0()).await.unwrap_err().is_lease_lost());
    let again = q.lease("w", TTL, &any(), t0() + mins(1)).await.unwrap().unwrap();
    assert_eq!(again.attempt, 1);
}

both_backends!(
    #[tokio::test]
    a_crashed_daemons_work_resumes_after_a_restart
);
async fn a_crashed_daemons_work_resumes_after_a_restart(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let id = q
        .enqueue(
            &NewJob::new(Job::Letters, "valley-imaging", t0()).payer("sandbox"),
            t0(),
        )
        .await
        .unwrap();
    q.lease("daemon-1", TTL, &any(), t0()).await.unwrap().unwrap();
    // The daemon dies: no complete, no fail, the connection closes.
    q.ledger().close().await;
    drop(q);

    // A new daemon opens the same ledger after the lease ran out.
    let q = queue(&p).await;
    let later = t0() + mins(30);
    assert!(
        q.lease("daemon-2", TTL, &any(), later).await.unwrap().is_none(),
        "still leased until re-queued"
    );
    let expired = q.requeue_expired(later).await.unwrap();
    assert_eq!(expired.iter().map(|e| e.job_id).collect::<Vec<_>>(), vec![id]);
    let job = q.lease("daemon-2", TTL, &any(), later).await.unwrap().unwrap();
    assert_eq!((job.id, job.attempt, job.kind), (id, 2, Job::Letters));
}

both_backends!(
    #[tokio::test]
    jobs_wait_for_their_time_and_for_their_payer
);
async fn jobs_wait_for_their_time_and_for_their_payer(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let later = q
        .enqueue(
            &NewJob::new(Job::Poll, "lakeside-ortho", t0() + mins(60)).payer("sandbox"),
            t0(),
        )
        .await
        .unwrap();
    let busy = q
        .enqueue(
            &NewJob::new(Job::Poll, "lakeside-ortho", t0()).payer("sandbox-pas"),
            t0(),
        )
        .await
        .unwrap();
    let digest = q
        .enqueue(&NewJob::new(Job::Digest, "lakeside-ortho", t0()), t0())
        .await
        .unwrap();
    // Another practice's binding under the same key (it may run another
    // playbook) is not held back by lakeside's.
    let elsewhere = q
        .enqueue(
            &NewJob::new(Job::Poll, "valley-imaging", t0()).payer("sandbox-pas"),
            t0(),
        )
        .await
        .unwrap();

    // lakeside's sandbox-pas is at its limit: its job waits; the
    // practice-wide digest does not.
    let skip = LeaseFilter {
        skip: vec![("lakeside-ortho".into(), "sandbox-pas".into())],
    };
    let first = q.lease("w", TTL, &skip, t0()).await.unwrap().unwrap();
    assert_eq!(first.id, digest);
    assert_eq!(q.lease("w", TTL, &skip, t0()).await.unwrap().unwrap().id, elsewhere);
    assert!(
        q.lease("w", TTL, &skip, t0()).await.unwrap().is_none(),
        "the later job is not due yet"
    );
    assert_eq!(q.lease("w", TTL, &any(), t0()).await.unwrap().unwrap().id, busy);
    assert_eq!(
        q.lease("w", TTL, &any(), t0() + mins(60)).await.unwrap().unwrap().id,
        later
    );
}

both_backends!(
    #[tokio::test]
    retries_back_off_exponentially_with_jitter_inside_its_bounds
);
async fn retries_back_off_exponentially_with_jitter_inside_its_bounds(backend: Backend) {
    let p = TestDb::new(backend).await;
    let policy = RetryPolicy {
        base: Duration::from_secs(60),
        max: Duration::from_secs(3600),
        jitter: 0.2,
    };
    // Jitter from a script: the low end, the high end, the middle, repeated.
    let draws = [0.0, 0.999_999, 0.5];
    let n = Arc::new(AtomicUsize::new(0));
    let counter = n.clone();
    let q = queue(&p)
        .await
        .with_retry_policy(policy)
        .with_jitter(Arc::new(move || draws[counter.fetch_add(1, Ordering::SeqCst) % 3]));
    let id = q
        .enqueue(
            &NewJob::new(Job::Poll, "lakeside-ortho", t0())
                .payer("sandbox")
                .max_attempts(10),
            t0(),
        )
        .await
        .unwrap();

    let mut now = t0();
    let mut waits = Vec::new();
    for attempt in 1..=8u32 {
        let job = q.lease("w", TTL, &any(), now).await.unwrap().unwrap();
        assert_eq!(job.attempt, attempt);
        let FailOutcome::Retrying { run_at, .. } = q
            .fail(&job.lease, &Failure::retry("HTTP 503 from the portal"), now)
            .await
            .unwrap()
        else {
            panic!("a retryable failure with attempts left is retried");
        };
        let wait = (run_at - now).to_std().unwrap();
        let (lo, hi) = policy.bounds(attempt);
        assert!(
            lo <= wait && wait <= hi,
            "attempt {attempt}: {wait:?} not in {lo:?}..={hi:?}"
        );
        // Not a moment before run_at.
        assert!(q
            .lease("w", TTL, &any(), run_at - chrono::Duration::seconds(1))
            .await
            .unwrap()
            .is_none());
        waits.push(wait);
        now = run_at;
    }
    // 60 s doubling: 1, 2, 4, 8, 16, 32 min, then capped at the hour.
    assert_eq!(waits[0], Duration::from_secs(48), "the low end of 60 s ± 20 %");
    assert!(waits[1] > Duration::from_secs(143) && waits[1] <= Duration::from_secs(144));
    assert_eq!(waits[2], Duration::from_secs(240));
    for pair in waits[..6].windows(2) {
        assert!(pair[1] > pair[0], "grows: {waits:?}");
    }
    let (lo, hi) = policy.bounds(8);
    assert_eq!(
        (lo, hi),
        (Duration::from_secs(2880), Duration::from_secs(4320)),
        "capped, then jittered"
    );
    assert_eq!(
        q.get(id).await.unwrap().last_error.as_deref(),
        Some("HTTP 503 from the portal")
    );

    // With the OS's randomness the waits spread over the range.
    let spread: std::collections::BTreeSet<Duration> = (0..50)
        .map(|_| policy.delay(3, precert::queue::os_jitter()()))
        .collect();
    assert!(spread.len() > 40, "jitter spreads retries: {spread:?}");
    let (lo, hi) = policy.bounds(3);
    assert!(spread.iter().all(|d| lo <= *d && *d <= hi));
}

both_backends!(
    #[tokio::test]
    a_payers_retry_after_is_respected
);
async fn a_payers_retry_after_is_respected(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await.with_jitter(Arc::new(|| 0.5));
    q.enqueue(
        &NewJob::new(Job::Submit, "lakeside-ortho", t0()).payer("sandbox-pas"),
        t0(),
    )
    .await
    .unwrap();
    let job = q.lease("w", TTL, &any(), t0()).await.unwrap().unwrap();
    let failure = Failure::Retry {
        reason: "HTTP 429".into(),
        not_before: Some(Duration::from_secs(3600)),
    };
    let FailOutcome::Retrying { run_at, .. } = q.fail(&job.lease, &failure, t0()).await.unwrap() else {
        panic!("retried");
    };
    assert_eq!(run_at, t0() + mins(60));
}

both_backends!(
    #[tokio::test]
    a_failure_that_retrying_cannot_fix_is_not_retried
);
async fn a_failure_that_retrying_cannot_fix_is_not_retried(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let id = q
        .enqueue(&NewJob::new(Job::Poll, "lakeside-ortho", t0()).payer("sandbox"), t0())
        .await
        .unwrap();
    let job = q.lease("w", TTL, &any(), t0()).await.unwrap().unwrap();
    let out = q
        .fail(
            &job.lease,
            &Failure::fatal("HTTP 400: the payer refuses the request"),
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        FailOutcome::Dead {
            attempts: 1,
            case: None
        }
    );
    let rec = q.get(id).await.unwrap();
    assert_eq!((rec.state, rec.attempts, rec.max_attempts), (JobState::Dead, 1, 5));
    assert!(q.lease("w", TTL, &any(), t0() + mins(600)).await.unwrap().is_none());
}

async fn imported_case(p: &TestDb) -> (Ledger, i64) {
    let ledger = p.ledger().await.with_clock(Arc::new(t0));
    assert!(p.import(&ledger, "samples/cases.csv").await.invalid.is_empty());
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    assert_eq!(case.status, CaseStatus::Ready);
    (ledger, case.id)
}

both_backends!(
    #[tokio::test]
    a_job_out_of_attempts_is_dead_and_its_case_goes_to_a_person
);
async fn a_job_out_of_attempts_is_dead_and_its_case_goes_to_a_person(backend: Backend) {
    let p = TestDb::new(backend).await;
    let (ledger, case_id) = imported_case(&p).await;
    let q = Queue::new(ledger.clone()).with_jitter(Arc::new(|| 0.0));
    let id = q
        .enqueue(
            &NewJob::new(Job::Submit, "lakeside-ortho", t0())
                .payer("sandbox")
                .case(case_id)
                .max_attempts(3),
            t0(),
        )
        .await
        .unwrap();

    let mut now = t0();
    for attempt in 1..=3u32 {
        let job = q.lease("w", TTL, &any(), now).await.unwrap().unwrap();
        assert_eq!(job.case_id, Some(case_id));
        let out = q
            .fail(
                &job.lease,
                &Failure::retry("the portal's upload page did not load"),
                now,
            )
            .await
            .unwrap();
        match out {
            FailOutcome::Retrying { run_at, .. } if attempt < 3 => now = run_at,
            FailOutcome::Dead { attempts, case } if attempt == 3 => {
                assert_eq!(attempts, 3);
                assert_eq!(
                    case,
                    Some(CaseEscalation::Moved {
                        case_id,
                        from: CaseStatus::Ready
                    })
                );
            }
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(q.get(id).await.unwrap().state, JobState::Dead);
    assert_eq!(ledger.get(case_id).await.unwrap().status, CaseStatus::NeedsAttention);
    let last = ledger.events(case_id).await.unwrap().pop().unwrap();
    assert_eq!(last.actor, format!("job:submit#{id}"));
    assert_eq!(last.to_status, Some(CaseStatus::NeedsAttention));
    assert_eq!(
        last.detail["note"],
        format!("job submit#{id} gave up after 3 attempts: the portal's upload page did not load")
    );
}

both_backends!(
    #[tokio::test]
    a_job_that_keeps_crashing_the_daemon_dies_and_escalates_its_case
);
async fn a_job_that_keeps_crashing_the_daemon_dies_and_escalates_its_case(backend: Backend) {
    let p = TestDb::new(backend).await;
    let (ledger, case_id) = imported_case(&p).await;
    let q = Queue::new(ledger.clone());
    let id = q
        .enqueue(
            &NewJob::new(Job::Submit, "lakeside-ortho", t0())
                .payer("sandbox")
                .case(case_id)
                .max_attempts(2),
            t0(),
        )
        .await
        .unwrap();
    let mut now = t0();
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        q.lease("w", TTL, &any(), now).await.unwrap().unwrap();
        // The worker never reports back.
        now += mins(6);
        outcomes.extend(q.requeue_expired(now).await.unwrap().into_iter().map(|e| e.outcome));
    }
    assert_eq!(
        outcomes,
        vec![
            ExpiredOutcome::Requeued,
            ExpiredOutcome::Dead {
                case: Some(CaseEscalation::Moved {
                    case_id,
                    from: CaseStatus::Ready
                })
            }
        ]
    );
    let rec = q.get(id).await.unwrap();
    assert_eq!((rec.state, rec.attempts), (JobState::Dead, 2));
    assert_eq!(
        rec.last_error.as_deref(),
        Some("the lease held by w expired on its last attempt")
    );
    assert_eq!(ledger.get(case_id).await.unwrap().status, CaseStatus::NeedsAttention);
}

// --- cron fires -------------------------------------------------------------

/// What the library logs while a guard is alive (this thread only; tokio
/// tests run on one).
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn chicago(d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Tz::named("America/Chicago")
        .expect("tzdata has America/Chicago")
        .with_ymd_and_hms(2026, 12, d, h, mi, 0)
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn poll_reports(reports: &[precert::queue::FireReport]) -> Vec<&precert::queue::FireReport> {
    reports
        .iter()
        .filter(|r| r.practice == "lakeside-ortho" && r.job == Job::Poll)
        .collect()
}

both_backends!(
    #[tokio::test]
    after_downtime_a_missed_nightly_poll_runs_once
);
async fn after_downtime_a_missed_nightly_poll_runs_once(backend: Backend) {
    let p = TestDb::new(backend).await;
    let q = queue(&p).await;
    let practices = p.project.settings().practices;
    let s = Scheduler::new(q.clone(), &practices).unwrap();

    // First start, Tuesday 12:00 in Chicago: schedules are only noted.
    let first = s.tick(chicago(1, 12, 0)).await.unwrap();
    assert!(first.iter().all(|r| r.outcome == FireOutcome::Baseline));
    assert_eq!(first.len(), 10, "five jobs for each of the two practices");
    assert!(q.list(None).await.unwrap().is_empty());

    // The daemon is down from Tuesday afternoon until Friday 09:10: the
    // 02:00 polls of Wednesday, Thursday and Friday were missed.
    let reports = s.tick(chicago(4, 9, 10)).await.unwrap();
    let poll = poll_reports(&reports);
    assert_eq!(poll.len(), 1);
    assert_eq!(poll[0].slot, chicago(4, 2, 0));
    assert_eq!(poll[0].missed, 2);
    let FireOutcome::Fired { enqueued, skipped } = &poll[0].outcome else {
        panic!("{:?}", poll[0]);
    };
    assert_eq!(enqueued.len(), 2, "one poll per payer: sandbox and sandbox-pas");
    assert!(skipped.is_empty());
    let polls: Vec<_> = q
        .list(Some("lakeside-ortho"))
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == Job::Poll)
        .collect();
    let mut payers: Vec<_> = polls.iter().map(|j| j.payer.clone().unwrap()).collect();
    payers.sort();
    assert_eq!(payers, ["sandbox", "sandbox-pas"]);
    assert!(polls
        .iter()
        .all(|j| j.state == JobState::Queued && j.run_at == chicago(4, 9, 10)));

    // A tick a minute later owes nothing more for the poll.
    assert!(poll_reports(&s.tick(chicago(4, 9, 11)).await.unwrap()).is_empty());
}

both_backends!(
    #[tokio::test]
    a_restart_does_not_fire_a_slot_twice
);
async fn a_restart_does_not_fire_a_slot_twice(backend: Backend) {
    let p = TestDb::new(backend).await;
    let practices = p.project.settings().practices;
    let q = queue(&p).await;
    Scheduler::new(q.clone(), &practices)
        .unwrap()
        .tick(chicago(1, 12, 0))
        .await
        .unwrap();
    let fired = Scheduler::new(q.clone(), &practices)
        .unwrap()
        .tick(chicago(2, 2, 0))
        .await
        .unwrap();
    assert_eq!(poll_reports(&fired).len(), 1);
    let jobs_before = q.list(None).await.unwrap().len();
    q.ledger().close().await;

    // The daemon restarts in the same minute, with a fresh scheduler.
    let q = queue(&p).await;
    let again = Scheduler::new(q.clone(), &practices)
        .unwrap()
        .tick(chicago(2, 2, 0))
        .await
        .unwrap();
    assert!(poll_reports(&again).is_empty(), "{again:?}");
    let later = Scheduler::new(q.clone(), &practices)
        .unwrap()
        .tick(chicago(2, 2, 5))
        .await
        .unwrap();
    assert!(poll_reports(&later).is_empty(), "{later:?}");
    assert_eq!(q.list(None).await.unwrap().len(), jobs_before);
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    schedulers_racing_for_a_slot_fire_it_once
);
async fn schedulers_racing_for_a_slot_fire_it_once(backend: Backend) {
    let p = TestDb::new(backend).await;
    let practices = p.project.settings().practices;
    let q = queue(&p).await;
    Scheduler::new(q.clone(), &practices)
        .unwrap()
        .tick(chicago(1, 12, 0))
        .await
        .unwrap();
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let s = Scheduler::new(q.clone(), &practices).unwrap();
            tokio::spawn(async move { s.tick(chicago(2, 2, 0)).await.unwrap() })
        })
        .collect();
    let mut fired = 0;
    for r in racers {
        for report in r.await.unwrap() {
            if report.practice == "lakeside-ortho" && report.job == Job::Poll {
                if let FireOutcome::Fired { .. } = report.outcome {
                    fired += 1;
                }
            }
        }
    }
    assert_eq!(fired, 1);
    let polls = q
        .list(Some("lakeside-ortho"))
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == Job::Poll)
        .count();
    assert_eq!(polls, 2, "one poll per payer, once");
}

both_backends!(
    #[tokio::test]
    a_slot_whose_previous_run_is_still_going_is_skipped
);
async fn a_slot_whose_previous_run_is_still_going_is_skipped(backend: Backend) {
    let p = TestDb::new(backend).await;
    let practices = p.project.settings().practices;
    let q = queue(&p).await;
    let s = Scheduler::new(q.clone(), &practices).unwrap();
    s.tick(chicago(1, 12, 0)).await.unwrap();
    s.tick(chicago(2, 2, 0)).await.unwrap();

    // The sandbox poll finishes; the sandbox-pas poll is still running when
    // the next night's slot comes.
    let filter = LeaseFilter::default();
    let mut done = None;
    while let Some(job) = q.lease("w", TTL, &filter, chicago(2, 2, 1)).await.unwrap() {
        if job.kind == Job::Poll && job.payer.as_deref() == Some("sandbox") {
            q.complete(&job.lease, chicago(2, 2, 2)).await.unwrap();
            done = Some(job.id);
        } else {
            q.renew(&job.lease, Duration::from_secs(48 * 3600), chicago(2, 2, 2))
                .await
                .unwrap();
        }
    }
    assert!(done.is_some());

    let log = Log::default();
    let reports = {
        let _guard = log.capture();
        s.tick(chicago(3, 2, 0)).await.unwrap()
    };
    let poll = poll_reports(&reports);
    let FireOutcome::Fired { enqueued, skipped } = &poll[0].outcome else {
        panic!("{poll:?}");
    };
    assert_eq!(skipped, &vec![Some("sandbox-pas".to_owned())]);
    assert_eq!(enqueued.len(), 1);
    assert_eq!(q.get(enqueued[0]).await.unwrap().payer.as_deref(), Some("sandbox"));
    // The log says which payer was skipped, and why.
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("Slot skipped") && l.contains("job=poll"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("practice=lakeside-ortho") && line.contains("job=poll") && line.contains("payer=\"sandbox-pas\""),
        "{line}"
    );
    assert!(
        line.contains("the previous run of this job is still queued or running"),
        "{line}"
    );
    // The skipped slot is recorded, so it is not tried again at the next tick.
    assert!(poll_reports(&s.tick(chicago(3, 2, 1)).await.unwrap()).is_empty());
}

both_backends!(
    #[tokio::test]
    the_scheduler_wakes_for_the_next_slot_of_any_practice
);
async fn the_scheduler_wakes_for_the_next_slot_of_any_practice(backend: Backend) {
    let p = TestDb::new(backend).await;
    let s = Scheduler::new(queue(&p).await, &p.project.settings().practices).unwrap();
    // Tuesday 23:10 in Chicago is 21:10 in Los Angeles; the next slot is
    // anyone's midnight escalations run in Chicago (00:00 CST).
    assert_eq!(s.next_wake(chicago(1, 23, 10)), Some(chicago(2, 0, 0)));
}

both_backends!(
    #[tokio::test]
    a_payers_session_slots_are_shared_by_every_daemon_on_the_ledger
);
/// The cluster-wide half of `max_sessions`: slots in the ledger, taken by
/// whichever daemon asks first, fenced by a token, free again when given
/// back or run out.
async fn a_payers_session_slots_are_shared_by_every_daemon_on_the_ledger(backend: Backend) {
    let p = TestDb::new(backend).await;
    let (one, two) = (p.ledger().await, p.ledger().await);
    let ttl = chrono::Duration::seconds(120);
    let a = one
        .claim_payer_slot("sandbox", 2, "host-a-1", ttl, t0())
        .await
        .unwrap()
        .unwrap();
    let b = two
        .claim_payer_slot("sandbox", 2, "host-b-1", ttl, t0())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.slot, b.slot);
    assert!(
        one.claim_payer_slot("sandbox", 2, "host-a-1", ttl, t0())
            .await
            .unwrap()
            .is_none(),
        "both slots are held"
    );
    // Another playbook's slots are its own.
    assert!(one
        .claim_payer_slot("sandbox-pas", 1, "host-a-1", ttl, t0())
        .await
        .unwrap()
        .is_some());
    assert_eq!(one.payer_slots_held("sandbox", t0()).await.unwrap(), 2);

    // Given back: the next claim gets it with a new token; the old grant can
    // neither renew nor free it.
    one.release_payer_slot(&a).await.unwrap();
    let c = two
        .claim_payer_slot("sandbox", 2, "host-b-1", ttl, t0())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.slot, c.token), (a.slot, a.token + 1));
    assert!(!one.renew_payer_slot(&a, ttl, t0()).await.unwrap());
    one.release_payer_slot(&a).await.unwrap();
    assert_eq!(
        one.payer_slots_held("sandbox", t0()).await.unwrap(),
        2,
        "a stale release frees nothing"
    );

    // A holder that stops renewing loses its slot when it runs out.
    assert!(two.renew_payer_slot(&b, ttl, t0() + mins(1)).await.unwrap());
    let later = t0() + mins(4);
    let d = one
        .claim_payer_slot("sandbox", 2, "host-a-1", ttl, later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.slot, 0, "the first slot is free again");
    assert_eq!(one.payer_slots_held("sandbox", later).await.unwrap(), 1);
}
