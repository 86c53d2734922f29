//! What only the PostgreSQL log does: leases, claims by several replicas, fencing, and errors
//! that never show the password.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_saga::Error;
use switchboard_saga::log::postgres::sqlx;
use switchboard_saga::log::{PgLog, SagaLog, Status, Transition, Write};

#[path = "common/postgres.rs"]
mod pg;

const LONG: Duration = Duration::from_secs(30);

fn new(id: &str) -> Write {
    let started = Transition::Started {
        saga: "order".into(),
        state: json!({}),
        deadline: None,
    };
    next(id, 0, started, Status::Running)
}

fn next(id: &str, after: u64, transition: Transition, status: Status) -> Write {
    Write {
        id: id.into(),
        after,
        transitions: vec![transition],
        status,
        wake_at: None,
    }
}

fn sent(attempt: u32) -> Transition {
    Transition::StepSent {
        step: 0,
        attempt,
        deadline: None,
    }
}

fn ids(records: &[switchboard_saga::log::Record]) -> Vec<&str> {
    records.iter().map(|r| r.summary.id.as_str()).collect()
}

/// Two replicas (logs on one schema) of which the first writes leases lasting `lease`.
async fn replicas(lease: Duration) -> Option<(PgLog, PgLog)> {
    let schema = pg::fresh_schema();
    Some((pg::log_in(&schema, lease).await?, pg::log_in(&schema, LONG).await?))
}

async fn owner_of(log: &PgLog, id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT owner FROM sb_sagas WHERE id = $1")
        .bind(id)
        .fetch_one(log.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_at_once_never_get_the_same_saga() {
    let Some((a, b)) = replicas(LONG).await else { return };
    for i in 0..200 {
        let id = format!("s-{i:03}");
        a.write("starter", new(&id)).await.unwrap();
        a.release("starter", &id).await.unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let claimer = |log: PgLog, owner: &'static str| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = HashSet::new();
            loop {
                let claimed = log.claim(owner, 50, &mine).await.unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                mine.extend(claimed.into_iter().map(|r| r.summary.id));
            }
        })
    };
    let (a, b) = (claimer(a, "a"), claimer(b, "b"));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(
        a.is_disjoint(&b),
        "claimed by both: {:?}",
        a.intersection(&b).collect::<Vec<_>>()
    );
    assert_eq!(a.len() + b.len(), 200, "every saga claimed once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_others_off_until_it_expires() {
    let Some((short, long)) = replicas(Duration::from_millis(300)).await else {
        return;
    };
    // Owner a starts the saga with a long lease: nothing expires before these checks, however
    // slow the machine.
    long.write("a", new("s-1")).await.unwrap();
    assert!(
        long.claim("b", 10, &HashSet::new()).await.unwrap().is_empty(),
        "leased to a"
    );
    let r = long.write("b", next("s-1", 1, sent(1), Status::Running)).await;
    assert!(matches!(&r, Err(Error::Conflict(id)) if id == "s-1"), "{r:?}");

    // a renews for 300 ms only, then stops renewing: b gets the saga once the lease expired.
    assert!(short.renew("a", &["s-1".into()]).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let claimed = long.claim("b", 10, &HashSet::new()).await.unwrap();
    assert_eq!(ids(&claimed), ["s-1"]);
    assert_eq!(claimed[0].entries.len(), 1, "with its log");
    assert_eq!(owner_of(&long, "s-1").await.as_deref(), Some("b"));

    // a is fenced off: its writes conflict and its renewal reports the saga lost.
    let r = long.write("a", next("s-1", 1, sent(1), Status::Running)).await;
    assert!(matches!(r, Err(Error::Conflict(_))), "{r:?}");
    assert_eq!(long.renew("a", &["s-1".into()]).await.unwrap(), ["s-1"]);
    long.write("b", next("s-1", 1, sent(1), Status::Running)).await.unwrap();
    assert!(long.renew("b", &["s-1".into()]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_lets_anyone_claim() {
    let Some(log) = pg::log().await else { return };
    log.write("a", new("s-1")).await.unwrap();
    log.release("b", "s-1").await.unwrap();
    assert!(
        log.claim("c", 10, &HashSet::new()).await.unwrap().is_empty(),
        "b held nothing to release"
    );
    log.release("a", "s-1").await.unwrap();
    assert_eq!(owner_of(&log, "s-1").await, None);
    assert_eq!(ids(&log.claim("c", 10, &HashSet::new()).await.unwrap()), ["s-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reclaims_its_sagas_after_a_restart() {
    let Some(log) = pg::log().await else { return };
    log.write("a", new("s-1")).await.unwrap();
    let running: HashSet<String> = ["s-1".to_string()].into();
    assert!(
        log.claim("a", 10, &running).await.unwrap().is_empty(),
        "runs it already"
    );
    assert_eq!(ids(&log.claim("a", 10, &HashSet::new()).await.unwrap()), ["s-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_and_finished_sagas_are_leased_to_no_one() {
    let Some(log) = pg::log().await else { return };
    log.write("a", new("s-1")).await.unwrap();
    let stuck = Transition::Stuck {
        step: 0,
        error: "down".into(),
    };
    log.write("a", next("s-1", 1, stuck, Status::Stuck)).await.unwrap();
    assert_eq!(owner_of(&log, "s-1").await, None);
    assert!(
        log.claim("b", 10, &HashSet::new()).await.unwrap().is_empty(),
        "stuck is not claimed"
    );
    // An operator in another process retries it, and holds it then.
    log.write("operator", next("s-1", 2, Transition::Retried, Status::Running))
        .await
        .unwrap();
    assert_eq!(owner_of(&log, "s-1").await.as_deref(), Some("operator"));
    log.write("operator", next("s-1", 3, Transition::Completed, Status::Completed))
        .await
        .unwrap();
    assert_eq!(owner_of(&log, "s-1").await, None);
    assert!(log.claim("b", 10, &HashSet::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_entries_are_json_errors() {
    let Some(log) = pg::log().await else { return };
    log.write("a", new("s-1")).await.unwrap();
    sqlx::query("UPDATE sb_saga_log SET data = '{\"kind\": \"nonsense\"}' WHERE id = 's-1'")
        .execute(log.pool())
        .await
        .unwrap();
    let r = log.load("s-1").await;
    assert!(matches!(&r, Err(Error::Json { id, .. }) if id == "s-1"), "{r:?}");
    let r = log.claim("a", 10, &HashSet::new()).await;
    assert!(matches!(r, Err(Error::Json { .. })), "{r:?}");
}

fn assert_hidden(what: &str, shown: &str) {
    assert!(!shown.contains("s3cret"), "{what} shows the password: {shown}");
}

#[tokio::test]
async fn errors_and_debug_never_show_the_password() {
    let builder = PgLog::builder("postgres://postgres:s3cret@127.0.0.1:1/x").acquire_timeout(Duration::from_secs(1));
    assert_hidden("the builder", &format!("{builder:?}"));
    let e = builder.connect().await.expect_err("nothing listens on port 1");
    assert_hidden("the error", &format!("{e} {e:?}"));

    // With a server: the password is masked where the server's own message holds it.
    let Some(log) = pg::log().await else { return };
    let with_password = pg::url().replacen('@', ":s3cret@", 1);
    let (base, _) = with_password.rsplit_once('/').unwrap();
    let e = PgLog::builder(format!("{base}/s3cret"))
        .connect()
        .await
        .expect_err("no such database");
    assert_hidden("the server's error", &format!("{e} {e:?}"));
    assert!(e.to_string().contains("***"), "{e}");
    let schema = log.schema().to_owned();
    let log = PgLog::builder(with_password).schema(schema).connect().await.unwrap();
    assert_hidden("the log", &format!("{log:?}"));
}
