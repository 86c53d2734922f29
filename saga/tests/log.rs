//! The saga log contract: every backend passes the same cases.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;
use switchboard_saga::Error;
use switchboard_saga::log::{Filter, MemoryLog, SagaLog, SqliteLog, Status, Transition, Write};

#[cfg(feature = "postgres")]
#[path = "common/postgres.rs"]
mod pg;

fn started(saga: &str) -> Transition {
    Transition::Started {
        saga: saga.into(),
        state: json!({"n": 1}),
        deadline: None,
    }
}

fn new(id: &str, saga: &str) -> Write {
    Write {
        id: id.into(),
        after: 0,
        transitions: vec![started(saga)],
        status: Status::Running,
        wake_at: None,
    }
}

fn next(id: &str, after: u64, transitions: Vec<Transition>, status: Status) -> Write {
    Write {
        id: id.into(),
        after,
        transitions,
        status,
        wake_at: None,
    }
}

fn every_transition() -> Vec<Transition> {
    vec![
        Transition::StepSent {
            step: 0,
            attempt: 1,
            deadline: Some(17),
        },
        Transition::StepRetrying {
            step: 0,
            attempt: 1,
            error: "refused".into(),
            wake_at: 99,
        },
        Transition::StepReplied {
            step: 0,
            reply: json!({"id": "r-1"}),
            state: json!({"n": 2, "é": "ü"}),
        },
        Transition::StepFailed {
            step: 1,
            error: "declined".into(),
        },
        Transition::CompensationSent { step: 0, attempt: 1 },
        Transition::CompensationRetrying {
            step: 0,
            attempt: 1,
            error: "down".into(),
            wake_at: 5,
        },
        Transition::Stuck {
            step: 0,
            error: "still down".into(),
        },
        Transition::Retried,
        Transition::Skipped { step: 0 },
        Transition::CompensationDone { step: 0 },
        Transition::Compensated,
    ]
}

async fn writes_then_loads_in_order(log: impl SagaLog) {
    log.write("me", new("s-1", "order")).await.unwrap();
    let rest = every_transition();
    log.write("me", next("s-1", 1, rest.clone(), Status::Compensated))
        .await
        .unwrap();
    let record = log.load("s-1").await.unwrap().expect("stored");
    assert_eq!(record.summary.id, "s-1");
    assert_eq!(record.summary.saga, "order");
    assert_eq!(record.summary.status, Status::Compensated);
    assert_eq!(record.summary.seq, 1 + rest.len() as u64);
    let seqs: Vec<u64> = record.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=1 + rest.len() as u64).collect::<Vec<_>>());
    let mut want = vec![started("order")];
    want.extend(rest);
    let got: Vec<Transition> = record.entries.into_iter().map(|e| e.transition).collect();
    assert_eq!(got, want);
    assert!(record.summary.created_at > 0 && record.summary.updated_at >= record.summary.created_at);
}

async fn missing_saga_loads_as_none(log: impl SagaLog) {
    assert!(log.load("nobody").await.unwrap().is_none());
}

async fn stale_write_is_a_conflict(log: impl SagaLog) {
    log.write("me", new("s-1", "order")).await.unwrap();
    log.write("me", next("s-1", 1, vec![Transition::Completed], Status::Completed))
        .await
        .unwrap();
    let stale = log
        .write("me", next("s-1", 1, vec![Transition::Completed], Status::Completed))
        .await;
    assert!(matches!(&stale, Err(Error::Conflict(id)) if id == "s-1"), "{stale:?}");
    let ahead = log
        .write("me", next("s-1", 7, vec![Transition::Completed], Status::Completed))
        .await;
    assert!(matches!(ahead, Err(Error::Conflict(_))), "{ahead:?}");
    assert_eq!(
        log.load("s-1").await.unwrap().unwrap().entries.len(),
        2,
        "nothing written by refused writes"
    );
}

async fn writing_to_a_missing_saga_is_a_conflict(log: impl SagaLog) {
    let r = log
        .write("me", next("ghost", 1, vec![Transition::Completed], Status::Completed))
        .await;
    assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}");
    assert!(log.load("ghost").await.unwrap().is_none());
}

async fn starting_an_existing_id_is_refused(log: impl SagaLog) {
    log.write("me", new("s-1", "order")).await.unwrap();
    let again = log.write("me", new("s-1", "other")).await;
    assert!(matches!(&again, Err(Error::Exists(id)) if id == "s-1"), "{again:?}");
    assert_eq!(log.load("s-1").await.unwrap().unwrap().summary.saga, "order");
}

async fn malformed_writes_are_invalid(log: impl SagaLog) {
    let invalid = |r: Result<(), Error>| matches!(r, Err(Error::Invalid(_)));
    assert!(invalid(
        log.write("me", next("s-1", 0, vec![Transition::Completed], Status::Completed))
            .await
    ));
    assert!(invalid(log.write("me", next("s-1", 0, vec![], Status::Running)).await));
    assert!(invalid(log.write("me", new("", "order")).await));
    assert!(invalid(log.write("me", new(&"x".repeat(201), "order")).await));
    log.write("me", new("s-1", "order")).await.unwrap();
    assert!(invalid(
        log.write("me", next("s-1", 1, vec![started("order")], Status::Running))
            .await
    ));
    assert!(invalid(log.write("me", next("s-1", 1, vec![], Status::Running)).await));
    let twice = vec![started("order"), started("order")];
    assert!(invalid(log.write("me", next("s-2", 0, twice, Status::Running)).await));
    assert_eq!(log.load("s-1").await.unwrap().unwrap().entries.len(), 1);
    assert!(log.load("s-2").await.unwrap().is_none());
}

async fn status_and_timer_follow_the_last_write(log: impl SagaLog) {
    log.write("me", new("s-1", "order")).await.unwrap();
    let retrying = Transition::StepRetrying {
        step: 0,
        attempt: 1,
        error: "x".into(),
        wake_at: 1234,
    };
    let mut w = next("s-1", 1, vec![retrying], Status::Running);
    w.wake_at = Some(1234);
    log.write("me", w).await.unwrap();
    let s = log.load("s-1").await.unwrap().unwrap().summary;
    assert_eq!((s.status, s.wake_at, s.seq), (Status::Running, Some(1234), 2));
    let stuck = Transition::Stuck {
        step: 0,
        error: "x".into(),
    };
    log.write("me", next("s-1", 2, vec![stuck], Status::Stuck))
        .await
        .unwrap();
    let s = log.load("s-1").await.unwrap().unwrap().summary;
    assert_eq!((s.status, s.wake_at, s.seq), (Status::Stuck, None, 3));
}

async fn list_filters_newest_first(log: impl SagaLog) {
    for i in 0..6 {
        log.write(
            "me",
            new(&format!("s-{i}"), if i % 2 == 0 { "order" } else { "refund" }),
        )
        .await
        .unwrap();
        // Distinct creation times, so "newest first" is defined.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    log.write("me", next("s-0", 1, vec![Transition::Completed], Status::Completed))
        .await
        .unwrap();
    let ids = |v: Vec<switchboard_saga::log::Summary>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(log.list(Filter::default()).await.unwrap()),
        ["s-5", "s-4", "s-3", "s-2", "s-1", "s-0"]
    );
    let orders = Filter {
        saga: Some("order".into()),
        ..Filter::default()
    };
    assert_eq!(ids(log.list(orders).await.unwrap()), ["s-4", "s-2", "s-0"]);
    let done = Filter {
        statuses: vec![Status::Completed],
        ..Filter::default()
    };
    assert_eq!(ids(log.list(done).await.unwrap()), ["s-0"]);
    let both = Filter {
        statuses: vec![Status::Completed, Status::Running],
        limit: 2,
        ..Filter::default()
    };
    assert_eq!(ids(log.list(both).await.unwrap()), ["s-5", "s-4"]);
    let none = Filter {
        statuses: vec![Status::Stuck],
        ..Filter::default()
    };
    assert!(log.list(none).await.unwrap().is_empty());
}

async fn claim_returns_active_sagas_oldest_first(log: impl SagaLog) {
    for i in 0..5 {
        log.write("me", new(&format!("s-{i}"), "order")).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    log.write("me", next("s-0", 1, vec![Transition::Completed], Status::Completed))
        .await
        .unwrap();
    let stuck = Transition::Stuck {
        step: 0,
        error: "x".into(),
    };
    log.write("me", next("s-1", 1, vec![stuck], Status::Stuck))
        .await
        .unwrap();
    let failed = Transition::StepFailed {
        step: 0,
        error: "no".into(),
    };
    log.write("me", next("s-2", 1, vec![failed], Status::Compensating))
        .await
        .unwrap();
    let running: HashSet<String> = ["s-3".to_string()].into();
    let claimed = log.claim("me", 10, &running).await.unwrap();
    let ids: Vec<&str> = claimed.iter().map(|r| r.summary.id.as_str()).collect();
    assert_eq!(ids, ["s-2", "s-4"], "active, not running here, oldest first");
    assert_eq!(claimed[0].entries.len(), 2, "with their logs");
    let one = log.claim("me", 1, &HashSet::new()).await.unwrap();
    assert_eq!(one.len(), 1);
}

async fn racing_writers_of_one_saga_have_one_winner(log: impl SagaLog) {
    log.write("me", new("s-1", "order")).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (log, barrier) = (log.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let t = Transition::StepSent {
                    step: 0,
                    attempt: i,
                    deadline: None,
                };
                log.write("me", next("s-1", 1, vec![t], Status::Running)).await
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(Error::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(log.load("s-1").await.unwrap().unwrap().entries.len(), 2);
}

async fn many_sagas_written_at_once_are_all_stored(log: impl SagaLog) {
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                let id = format!("s-{i}");
                log.write("me", new(&id, "order")).await?;
                let sent = Transition::StepSent {
                    step: 0,
                    attempt: 1,
                    deadline: None,
                };
                log.write("me", next(&id, 1, vec![sent], Status::Running)).await?;
                log.write("me", next(&id, 2, vec![Transition::Completed], Status::Completed))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let done = Filter {
        statuses: vec![Status::Completed],
        limit: 1000,
        ..Filter::default()
    };
    assert_eq!(log.list(done).await.unwrap().len(), 500);
    assert_eq!(log.load("s-499").await.unwrap().unwrap().entries.len(), 3);
}

macro_rules! contract {
    ($make:expr) => {
        contract!(@cases $make;
            writes_then_loads_in_order,
            missing_saga_loads_as_none,
            stale_write_is_a_conflict,
            writing_to_a_missing_saga_is_a_conflict,
            starting_an_existing_id_is_refused,
            malformed_writes_are_invalid,
            status_and_timer_follow_the_last_write,
            list_filters_newest_first,
            claim_returns_active_sagas_oldest_first,
            racing_writers_of_one_saga_have_one_winner,
            many_sagas_written_at_once_are_all_stored,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (log, _guard) = $make;
                super::$case(log).await;
            }
        )*
    };
}

mod memory {
    use super::*;
    contract!((MemoryLog::new(), ()));
}

mod sqlite {
    use super::*;
    contract!({
        let dir = tempfile::tempdir().unwrap();
        (SqliteLog::open(dir.path().join("sagas.db")).unwrap(), dir)
    });
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    contract!({
        match pg::log().await {
            Some(log) => (log, ()),
            None => return,
        }
    });
}
