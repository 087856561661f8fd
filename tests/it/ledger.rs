//! The ledger: the status graph is enforced, every change is in the event
//! log in the same transaction, and the log cannot be rewritten — on SQLite
//! and on PostgreSQL alike (each test runs on both: `NAME::sqlite`,
//! `NAME::postgres`). What the command line shows is checked on SQLite, the
//! backend the sample configuration names.

use chrono::{NaiveDate, TimeZone, Utc};
use precert::case::{CaseStatus, DateRange, Decision, DenialReason, LineDecision};
use precert::store::{Actor, EventKind, ImportOutcome, StoreError};

use super::postgres::{both_backends, Backend, TestDb};

async fn imported(backend: Backend) -> (TestDb, precert::store::Ledger, i64) {
    let db = TestDb::new(backend).await;
    let ledger = db.ledger().await;
    let report = db.import(&ledger, "samples/cases.csv").await;
    assert!(report.invalid.is_empty(), "{:?}", report.invalid);
    let case = ledger.find("lakeside-ortho", "LO-2026-1001").await.unwrap().unwrap();
    (db, ledger, case.id)
}

both_backends!(
    #[tokio::test]
    an_illegal_transition_is_refused_and_writes_nothing
);
async fn an_illegal_transition_is_refused_and_writes_nothing(backend: Backend) {
    let (db, ledger, id) = imported(backend).await;
    let before = ledger.events(id).await.unwrap().len();
    let err = ledger
        .transition(id, CaseStatus::Approved, &Actor::user("test"), None)
        .await
        .unwrap_err();
    assert!(err.is_illegal_transition(), "{err}");
    assert_eq!(
        err.to_string(),
        "case lakeside-ortho/LO-2026-1001 cannot move from ready to approved (from ready it may move to: submitting, needs_attention, cancelled)"
    );
    assert_eq!(ledger.get(id).await.unwrap().status, CaseStatus::Ready);
    assert_eq!(ledger.events(id).await.unwrap().len(), before);

    // The same through the CLI: exit 1, a clear message.
    if backend != Backend::Sqlite {
        return;
    }
    let out = db.project.precert(&["cases", "set-status", "LO-2026-1001", "denied"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot move from ready to denied"));
}

both_backends!(
    #[tokio::test]
    every_change_lands_in_the_event_log
);
async fn every_change_lands_in_the_event_log(backend: Backend) {
    let (db, ledger, id) = imported(backend).await;
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap();
    let ledger = ledger.with_clock(std::sync::Arc::new(move || t0));
    let job = Actor::job("submit", 7);
    ledger.transition(id, CaseStatus::Submitting, &job, None).await.unwrap();
    ledger
        .transition(id, CaseStatus::Pending, &job, Some("reference SBX-1001"))
        .await
        .unwrap();
    ledger
        .append_event(
            id,
            EventKind::Run,
            &Actor::job("poll", 8),
            &serde_json::json!({ "action": "poll_status", "result": "In Review" }),
        )
        .await
        .unwrap();
    let decision = Decision {
        auth_number: Some("AUTH-778812".into()),
        valid: Some(DateRange {
            start: NaiveDate::from_ymd_opt(2026, 12, 8).unwrap(),
            end: NaiveDate::from_ymd_opt(2027, 3, 8).unwrap(),
        }),
        lines: vec![LineDecision {
            code: precert::case::ProcedureCode::parse("73721").unwrap(),
            requested_units: 1,
            approved_units: 1,
        }],
        conditions: None,
        denial: None,
        decided_at: t0,
        source: "portal:sandbox".into(),
    };
    ledger
        .record_decision(id, &decision, CaseStatus::Approved, &Actor::job("poll", 9))
        .await
        .unwrap();

    let case = ledger.get(id).await.unwrap();
    assert_eq!(case.status, CaseStatus::Approved);
    assert_eq!(case.decision.as_ref(), Some(&decision));
    assert_eq!(case.updated_at, t0);

    let trail: Vec<(String, Option<CaseStatus>, Option<CaseStatus>, String)> = ledger
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.kind, e.from_status, e.to_status, e.actor))
        .collect();
    use CaseStatus::*;
    let s = |k: &str, f: Option<CaseStatus>, t: Option<CaseStatus>, a: &str| (k.to_owned(), f, t, a.to_owned());
    let user = Actor::current_user();
    assert_eq!(
        trail,
        [
            s("imported", None, Some(New), user.as_str()),
            s("status_changed", Some(New), Some(Required), user.as_str()),
            s("status_changed", Some(Required), Some(Ready), user.as_str()),
            s("status_changed", Some(Ready), Some(Submitting), "job:submit#7"),
            s("status_changed", Some(Submitting), Some(Pending), "job:submit#7"),
            s("run", None, None, "job:poll#8"),
            s("decision_recorded", Some(Pending), Some(Approved), "job:poll#9"),
        ]
    );

    // A decision whose status the graph forbids is refused whole.
    let denial = Decision {
        denial: Some(DenialReason {
            code: Some("CLIN-06".into()),
            text: "Not documented.".into(),
        }),
        ..decision
    };
    let err = ledger
        .record_decision(id, &denial, Denied, &Actor::job("poll", 10))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert_eq!(ledger.get(id).await.unwrap().decision.unwrap().denial, None);

    // The CLI shows the decision and the timeline.
    ledger.close().await;
    if backend != Backend::Sqlite {
        return;
    }
    let out = db.project.precert(&["cases", "show", "lakeside-ortho/LO-2026-1001"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("decision     auth AUTH-778812  valid 2026-12-08 to 2027-03-08"),
        "{text}"
    );
    assert!(text.contains("pending → approved"), "{text}");
    assert!(
        text.contains("member ********0301") && !text.contains("SBX100200301"),
        "{text}"
    );
}

both_backends!(
    #[tokio::test]
    the_event_log_is_append_only_in_the_database_itself
);
async fn the_event_log_is_append_only_in_the_database_itself(backend: Backend) {
    let (_db, ledger, _) = imported(backend).await;
    let mut refused = vec![
        "UPDATE case_events SET actor = 'someone-else'",
        "DELETE FROM case_events",
    ];
    if backend == Backend::Postgres {
        refused.push("TRUNCATE case_events CASCADE");
    }
    for sql in refused {
        let err = ledger.execute_raw(sql).await.unwrap_err();
        assert!(err.to_string().contains("case_events is append-only"), "{sql}: {err}");
    }
}

#[tokio::test]
async fn the_ledger_file_is_private_and_in_wal_mode() {
    let (test, ledger, _) = imported(Backend::Sqlite).await;
    let db = test.project.settings().data_dir.join("precert.db");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(db.parent().unwrap()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // While a connection is open, WAL mode keeps a -wal file beside it.
    assert!(db.with_file_name("precert.db-wal").exists());
    ledger.close().await;
}

both_backends!(
    #[tokio::test]
    importing_the_same_case_twice_in_process_is_recognised
);
async fn importing_the_same_case_twice_in_process_is_recognised(backend: Backend) {
    let (_db, ledger, id) = imported(backend).await;
    let case = ledger.get(id).await.unwrap();
    let again = ledger
        .import_case(&case.data, Some(true), &Actor::user("test"))
        .await
        .unwrap();
    assert_eq!(again, ImportOutcome::Unchanged { id });
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    four_importers_of_one_file_store_each_case_once
);
async fn four_importers_of_one_file_store_each_case_once(backend: Backend) {
    // Four `cases import` of the same file at once (four people, or a
    // retried upload), each with its own connections: every case is
    // created by one of them and found by the others.
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let imports: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let ledger = db.ledger().await;
                let report = db.import(&ledger, "samples/cases.csv").await;
                ledger.close().await;
                report
            })
        })
        .collect();
    let mut reports = Vec::new();
    for i in imports {
        reports.push(i.await.unwrap());
    }
    let ledger = db.ledger().await;
    let created: usize = reports.iter().map(|r| r.created).sum();
    let unchanged: usize = reports.iter().map(|r| r.unchanged).sum();
    let cases = ledger.list(&Default::default()).await.unwrap();
    assert!(!cases.is_empty());
    assert_eq!(created, cases.len(), "each case created once");
    assert_eq!(unchanged, 3 * cases.len(), "and found by the three others");
    for c in &cases {
        let imported = ledger
            .events(c.id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.kind == "imported")
            .count();
        assert_eq!(imported, 1, "{}", c.data.case_ref);
    }
}

both_backends!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    importers_of_one_set_of_cases_in_opposite_orders_store_each_once
);
async fn importers_of_one_set_of_cases_in_opposite_orders_store_each_once(backend: Backend) {
    // Two files with the same 300 cases, one the other reversed, imported
    // twice each at once: on PostgreSQL each importer waits for rows the
    // others have just written, in opposite orders, which the database
    // breaks by aborting one of them. The aborted batch is tried again; no
    // importer fails and every case is created once.
    const CASES: usize = 300;
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let forward = super::postgres::many_cases_csv(CASES);
    let mut lines: Vec<&str> = forward.lines().collect();
    lines[1..].reverse();
    db.project.write("samples/forward.csv", &forward);
    db.project.write("samples/backward.csv", &(lines.join("\n") + "\n"));
    let imports: Vec<_> = ["forward", "backward", "forward", "backward"]
        .into_iter()
        .map(|name| {
            let db = db.clone();
            tokio::spawn(async move {
                let ledger = db.ledger().await;
                let report = db.import(&ledger, &format!("samples/{name}.csv")).await;
                ledger.close().await;
                report
            })
        })
        .collect();
    let mut created = 0;
    let mut unchanged = 0;
    for i in imports {
        let report = i.await.unwrap();
        assert!(report.invalid.is_empty(), "{:?}", report.invalid);
        created += report.created;
        unchanged += report.unchanged;
    }
    assert_eq!(created, CASES, "each case created once");
    assert_eq!(unchanged, 3 * CASES, "and found by the three others");
    let ledger = db.ledger().await;
    assert_eq!(ledger.list(&Default::default()).await.unwrap().len(), CASES);
}

both_backends!(
    #[tokio::test]
    a_requirement_decision_moves_a_new_case_once_and_cites_its_source
);
async fn a_requirement_decision_moves_a_new_case_once_and_cites_its_source(backend: Backend) {
    use precert::store::RequirementDecision;
    let (_db, ledger, id) = imported(backend).await;
    let actor = Actor::system("requirements");
    let mut data = ledger.get(id).await.unwrap().data;
    let mut ids = Vec::new();
    for case_ref in ["LO-2026-9001", "LO-2026-9002"] {
        data.case_ref = case_ref.into();
        let outcome = ledger.import_case(&data, None, &actor).await.unwrap();
        assert!(matches!(outcome, ImportOutcome::Created { .. }), "{outcome:?}");
        let case = ledger.find("lakeside-ortho", case_ref).await.unwrap().unwrap();
        assert_eq!(case.status, CaseStatus::New);
        ids.push(case.id);
    }
    let rule = |required| RequirementDecision {
        required,
        source: "rules".into(),
        detail: serde_json::json!({ "rule": "mri-knee", "version": "2026-10-01" }),
    };
    let moved = ledger.decide_requirement(ids[0], &rule(true), &actor).await.unwrap();
    assert_eq!(moved, Some(CaseStatus::Ready));
    let moved = ledger.decide_requirement(ids[1], &rule(false), &actor).await.unwrap();
    assert_eq!(moved, Some(CaseStatus::NotRequired));
    // A second decision on a case already decided writes nothing.
    let before = ledger.events(ids[0]).await.unwrap().len();
    assert_eq!(
        ledger.decide_requirement(ids[0], &rule(false), &actor).await.unwrap(),
        None
    );
    assert_eq!(ledger.events(ids[0]).await.unwrap().len(), before);
    assert_eq!(ledger.get(ids[0]).await.unwrap().status, CaseStatus::Ready);

    let events = ledger.events(ids[0]).await.unwrap();
    let decided = events
        .iter()
        .find(|e| e.kind == EventKind::RequirementDecided.as_str())
        .expect("a requirement_decided event");
    assert_eq!(decided.detail["source"], "rules");
    assert_eq!(decided.detail["rule"], "mri-knee");
    assert_eq!(decided.detail["required"], true);
    let path: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::StatusChanged.as_str())
        .filter_map(|e| e.to_status)
        .collect();
    assert_eq!(path, [CaseStatus::Required, CaseStatus::Ready]);
}

both_backends!(
    #[tokio::test]
    a_pas_subscription_is_claimed_by_one_daemon_replaced_once_and_removed_only_by_its_configuration
);
async fn a_pas_subscription_is_claimed_by_one_daemon_replaced_once_and_removed_only_by_its_configuration(
    backend: Backend,
) {
    use precert::store::SubscriptionClaim::{Busy, Current, NotOurs, Taken};
    let (_db, ledger, _) = imported(backend).await;
    let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 15, 0, 0).unwrap();
    let ttl = chrono::Duration::seconds(60);
    let route = "lakeside-ortho/sandbox";
    // Two daemons start together: one registers, the other waits.
    assert_eq!(
        ledger
            .claim_subscription(route, "f1", true, "a-1", ttl, t0)
            .await
            .unwrap(),
        Taken { old: None }
    );
    assert_eq!(
        ledger
            .claim_subscription(route, "f1", true, "b-2", ttl, t0)
            .await
            .unwrap(),
        Busy { holder: "a-1".into() }
    );
    assert_eq!(ledger.subscription_token(route).await.unwrap(), None);
    assert!(ledger
        .complete_subscription(route, "a-1", "f1", "sub-1", "hash-1", t0)
        .await
        .unwrap());
    assert_eq!(
        ledger.subscription_token(route).await.unwrap().as_deref(),
        Some("hash-1")
    );
    assert_eq!(
        ledger
            .claim_subscription(route, "f1", true, "b-2", ttl, t0)
            .await
            .unwrap(),
        Current
    );
    // A retry pass of a daemon on another configuration leaves it alone; a
    // reload to it replaces it once.
    assert_eq!(
        ledger
            .claim_subscription(route, "f2", false, "b-2", ttl, t0)
            .await
            .unwrap(),
        NotOurs
    );
    assert_eq!(
        ledger
            .claim_subscription(route, "f2", true, "b-2", ttl, t0)
            .await
            .unwrap(),
        Taken {
            old: Some("sub-1".into())
        }
    );
    // A holder whose lease ran out loses the route to the next one, and its
    // late completion is refused.
    let later = t0 + chrono::Duration::seconds(61);
    assert_eq!(
        ledger
            .claim_subscription(route, "f2", true, "a-1", ttl, later)
            .await
            .unwrap(),
        Taken {
            old: Some("sub-1".into())
        }
    );
    assert!(!ledger
        .complete_subscription(route, "b-2", "f2", "sub-2", "hash-2", later)
        .await
        .unwrap());
    assert!(ledger
        .complete_subscription(route, "a-1", "f2", "sub-3", "hash-3", later)
        .await
        .unwrap());
    // Only the configuration that registered it removes it.
    assert_eq!(
        ledger
            .claim_subscription_removal(route, "f1", "b-2", ttl, later)
            .await
            .unwrap(),
        NotOurs
    );
    assert_eq!(
        ledger
            .claim_subscription_removal(route, "f2", "b-2", ttl, later)
            .await
            .unwrap(),
        Taken {
            old: Some("sub-3".into())
        }
    );
    ledger.forget_subscription(route, "b-2").await.unwrap();
    assert!(ledger.subscriptions().await.unwrap().is_empty());
}

both_backends!(
    #[tokio::test]
    stamps_written_together_mark_each_case_still_in_its_status_with_its_own_time
);
async fn stamps_written_together_mark_each_case_still_in_its_status_with_its_own_time(backend: Backend) {
    let (db, ledger, _) = imported(backend).await;
    let actor = Actor::user("test");
    let mut ids = Vec::new();
    for case in ["LO-2026-1001", "LO-2026-1002", "LO-2026-1003"] {
        let id = ledger.find("lakeside-ortho", case).await.unwrap().unwrap().id;
        ledger
            .transition(id, CaseStatus::Submitting, &actor, None)
            .await
            .unwrap();
        ledger.transition(id, CaseStatus::Pending, &actor, None).await.unwrap();
        ids.push(id);
    }
    let events: Vec<usize> = futures_util::future::join_all(ids.iter().map(|id| ledger.events(*id)))
        .await
        .into_iter()
        .map(|e| e.unwrap().len())
        .collect();
    let t = |s| Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, s).unwrap();
    let stamps = precert::store::PollStamps::default();
    for (i, id) in ids.iter().enumerate() {
        stamps.push(*id, CaseStatus::Pending, t(i as u32));
    }
    // The third moved on before the stamps were written: it keeps none.
    ledger
        .transition(ids[2], CaseStatus::Approved, &actor, None)
        .await
        .unwrap();
    assert_eq!(stamps.flush(&ledger).await.unwrap(), 2);
    assert_eq!(ledger.last_polled(ids[0]).await.unwrap(), Some(t(0)));
    assert_eq!(ledger.last_polled(ids[1]).await.unwrap(), Some(t(1)));
    assert_eq!(ledger.last_polled(ids[2]).await.unwrap(), None);
    // Nothing was left to write, and a stamp is no event.
    assert_eq!(stamps.flush(&ledger).await.unwrap(), 0);
    for (id, before) in ids[..2].iter().zip(&events) {
        assert_eq!(ledger.events(*id).await.unwrap().len(), *before);
    }
    // More than one statement's worth (300 a statement): the two cases
    // are stamped by each of the three.
    let many: Vec<_> = (0..650).map(|k| (ids[k % 2], CaseStatus::Pending, t(10))).collect();
    assert_eq!(ledger.mark_polled_many(&many).await.unwrap(), 6);
    assert_eq!(ledger.last_polled(ids[1]).await.unwrap(), Some(t(10)));
    drop(db);
}

both_backends!(
    #[tokio::test]
    a_case_read_in_place_is_the_case_the_ledger_reads
);
/// `cases show` reads a SQLite ledger in place (SQLite's C API on the
/// calling thread, no pool) and PostgreSQL through the pool: every part of a
/// case (record, timeline, letters, last poll, lease, escalations) reads
/// alike either way, by every kind of name, and the command prints it.
async fn a_case_read_in_place_is_the_case_the_ledger_reads(backend: Backend) {
    use precert::escalate::Reason;
    use precert::store::{case_view_in_place, CaseName, Lookup};

    let (db, ledger, id) = imported(backend).await;
    let letter = precert::store::Letter {
        kind: "letter".into(),
        stored_path: "letters/lakeside-ortho/LO-2026-1001/approval.pdf".into(),
        sha256: "ab".repeat(32),
        bytes: 1234,
        media_type: "application/pdf".into(),
        fetched_at: None,
    };
    assert!(ledger.add_letter(id, &letter, &Actor::job("letters", 3)).await.unwrap());
    let lease = ledger.claim_submission(id, &Actor::job("submit", 4)).await.unwrap();
    assert!(ledger.mark_polled(id, CaseStatus::Submitting).await.unwrap());
    // Two escalations: one with every optional time and text set, one
    // with none.
    ledger
        .execute_raw(&format!(
            "INSERT INTO escalations (practice_id, case_id, payer, reason, dedupe_key, audience, level, state, \
             severity, due_at, summary, detail, opened_at, sends, reminders, last_sent_at, next_action_at, \
             acknowledged_at, acknowledged_by, note, closed_at) VALUES \
             ('lakeside-ortho', {id}, 'sandbox', 'stalled', 'case:{id}:stalled', 'supervisors', 1, 'acknowledged', \
              85, '2026-12-20T09:00:00.000000Z', 'lakeside-ortho/LO-2026-1001: past the deadline', '{{\"days\":9}}', \
              '2026-12-10T09:00:00.000000Z', 3, 1, '2026-12-11T09:00:00.000000Z', '2026-12-12T09:00:00.000000Z', \
              '2026-12-11T10:00:00.000000Z', 'supervisor@lakeside.example', 'calling the payer', NULL), \
             ('lakeside-ortho', {id}, NULL, 'letter_missing', 'case:{id}:letter_missing', 'supervisors', 0, 'open', \
              30, NULL, 'lakeside-ortho/LO-2026-1001: no letter', '{{}}', '2026-12-11T09:00:00.000000Z', 0, 0, \
              NULL, NULL, NULL, NULL, NULL, NULL)"
        ))
        .await
        .unwrap();
    let escalation_ids = ledger.case_escalations(id).await.unwrap();
    let (second, first) = (escalation_ids[0].id, escalation_ids[1].id);

    let case_ref = "LO-2026-1001";
    let key = CaseName::parse("lakeside-ortho/LO-2026-1001");
    assert_eq!(
        key,
        CaseName::Key {
            practice: "lakeside-ortho",
            case_ref
        }
    );
    let Lookup::Found(view) = ledger.case_view(&key).await.unwrap() else {
        panic!("the case is not found by its key");
    };
    assert_eq!(view.case.id, id);
    assert_eq!(view.case.status, CaseStatus::Submitting);
    let events = ledger.events(id).await.unwrap();
    assert_eq!(view.events.len(), events.len());
    assert_eq!(
        view.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert_eq!(view.letters.len(), 1);
    assert_eq!(view.letters[0].sha256, letter.sha256);
    assert_eq!(view.letters[0].bytes, 1234);
    assert!(view.letters[0].fetched_at.is_some());
    assert_eq!(view.last_polled, ledger.last_polled(id).await.unwrap());
    assert!(view.last_polled.is_some());
    let owner = view.owner.as_ref().expect("the lease's holder");
    assert_eq!(owner.token, lease.token);
    assert!(owner.holder.starts_with("job:submit#4"), "{}", owner.holder);
    // Newest first.
    assert_eq!(
        view.escalations.iter().map(|e| e.id).collect::<Vec<_>>(),
        [second, first]
    );
    let stalled = &view.escalations[1];
    assert_eq!(stalled.reason, Reason::Stalled);
    assert_eq!(
        stalled.due_at,
        Some(Utc.with_ymd_and_hms(2026, 12, 20, 9, 0, 0).unwrap())
    );
    assert_eq!(stalled.payer.as_deref(), Some("sandbox"));
    assert_eq!((stalled.level, stalled.sends, stalled.reminders), (1, 3, 1));
    assert_eq!(stalled.acknowledged_by.as_deref(), Some("supervisor@lakeside.example"));
    assert_eq!(stalled.note.as_deref(), Some("calling the payer"));
    assert_eq!(stalled.detail, serde_json::json!({ "days": 9 }));
    assert!(stalled.last_sent_at.is_some() && stalled.next_action_at.is_some() && stalled.acknowledged_at.is_some());
    let missing = &view.escalations[0];
    assert_eq!(missing.reason, Reason::LetterMissing);
    assert_eq!(
        (missing.due_at, missing.last_sent_at, missing.closed_at),
        (None, None, None)
    );
    assert_eq!((missing.payer.as_deref(), missing.note.as_deref()), (None, None));

    // By number and by reference alone: the same case; a name nobody has.
    for name in [id.to_string(), case_ref.to_owned()] {
        let Lookup::Found(other) = ledger.case_view(&CaseName::parse(&name)).await.unwrap() else {
            panic!("{name} is not found");
        };
        assert_eq!(format!("{other:?}"), format!("{view:?}"), "{name}");
    }
    assert!(matches!(
        ledger.case_view(&CaseName::parse("lakeside-ortho/NOPE")).await.unwrap(),
        Lookup::Missing
    ));

    // In place: SQLite alone, each read the same.
    match backend {
        Backend::Sqlite => {
            for name in [key, CaseName::Id(id), CaseName::Ref(case_ref)] {
                let Some(Lookup::Found(in_place)) = case_view_in_place(&db.url, &name).await.unwrap() else {
                    panic!("{name:?} is not read in place");
                };
                assert_eq!(format!("{in_place:?}"), format!("{view:?}"), "{name:?}");
            }
            assert!(matches!(
                case_view_in_place(&db.url, &CaseName::Id(id + 1_000_000))
                    .await
                    .unwrap(),
                Some(Lookup::Missing)
            ));
        }
        Backend::Postgres => assert!(case_view_in_place(&db.url, &key).await.unwrap().is_none()),
    }
    ledger.close().await;

    // The command prints every part.
    let out = db
        .project
        .command(&["cases", "show", "lakeside-ortho/LO-2026-1001"])
        .env("PRECERT__DATABASE_URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for part in [
        "status       submitting",
        "ready → submitting",
        "last asked   ",
        "being submitted by job:submit#4",
        "  escalations",
        &format!("#{first:<5} stalled"),
        &format!("#{second:<5} letter_missing"),
    ] {
        assert!(text.contains(part), "no `{part}` in:\n{text}");
    }
    // The oldest escalation first, as the timeline.
    assert!(
        text.find(" stalled ").unwrap() < text.find(" letter_missing ").unwrap(),
        "{text}"
    );
    // What a read leaves beside a SQLite file is its owner's alone.
    if backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt;
        let file = db.project.settings().data_dir.join("precert.db");
        for suffix in ["", "-wal", "-shm"] {
            let p = std::path::PathBuf::from(format!("{}{suffix}", file.display()));
            if let Ok(m) = std::fs::metadata(&p) {
                assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
            }
        }
    }
}

/// A SQLite ledger whose schema is not this precert's is never read in
/// place: `cases show` opens the ledger as every command does, which says
/// the schema is newer (or migrates an older one) instead of reading rows
/// it may not understand.
#[tokio::test]
async fn a_ledger_of_another_schema_is_not_read_in_place() {
    use precert::store::{case_view_in_place, CaseName};

    let (db, ledger, _) = imported(Backend::Sqlite).await;
    let key = CaseName::parse("lakeside-ortho/LO-2026-1001");
    assert!(case_view_in_place(&db.url, &key).await.unwrap().is_some());
    ledger
        .execute_raw(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (99999, 'from a later precert', TRUE, x'00', 0)",
        )
        .await
        .unwrap();
    ledger.close().await;
    assert!(case_view_in_place(&db.url, &key).await.unwrap().is_none());
    let out = db.project.precert(&["cases", "show", "lakeside-ortho/LO-2026-1001"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the ledger's schema is newer than this precert"), "{err}");

    // No file, or no SQLite file: nothing read in place.
    let missing = format!("sqlite://{}", db.project.path("data/none.db").display());
    assert!(case_view_in_place(&missing, &key).await.unwrap().is_none());
    assert!(!db.project.path("data/none.db").exists());
    assert!(case_view_in_place("sqlite::memory:", &key).await.unwrap().is_none());
    // A file that is not a ledger is not read in place either: the ledger's
    // open says what it is.
    let garbage = db.project.path("data/garbage.db");
    std::fs::write(&garbage, b"not a database, only text").unwrap();
    let url = format!("sqlite://{}", garbage.display());
    assert!(case_view_in_place(&url, &key).await.unwrap().is_none());
    // ... and refused at once, by name, before sqlx would retry its
    // connection for the pool's 30 seconds.
    let started = std::time::Instant::now();
    let out = db
        .project
        .command(&["cases", "show", "lakeside-ortho/LO-2026-1001"])
        .env("PRECERT__DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{} is not a SQLite database", garbage.display())),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read(&garbage).unwrap(), b"not a database, only text");
}
