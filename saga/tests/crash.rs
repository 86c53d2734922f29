//! The crash matrix: an orchestrator with 1,000 sagas in flight SIGKILLs itself at a chosen
//! point (before a step is sent, after it is sent but before its reply is logged, after the
//! reply is logged, in the middle of compensation, during a retry's backoff); a new one resumes
//! from the SQLite log. Every saga must end completed or compensated, and every participant's
//! effect must have happened exactly once (the participants count them; their inbox turns
//! repeated keys into repeated replies). Over TCP, NATS and RabbitMQ.

#[path = "common/participants.rs"]
mod participants;
#[cfg(feature = "postgres")]
#[path = "common/postgres.rs"]
mod pg;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use participants::*;
use switchboard::Client;
use switchboard_saga::log::{SagaLog, SqliteLog};
use switchboard_saga::{Filter, Orchestrator, Probe, Status, Transition};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const SAGAS: usize = 1_000;
const POINTS: [&str; 5] = [
    "before_send",
    "after_send",
    "after_reply",
    "mid_compensation",
    "in_backoff",
];

/// True when `probe` is the crash point `point` (the charge is step 1).
fn at_point(point: &str, probe: &Probe<'_>) -> bool {
    matches!(
        (point, probe),
        (
            "before_send",
            Probe::Logged {
                transition: Transition::StepSent { step: 1, .. },
                ..
            },
        ) | (
            "after_send",
            Probe::Answered {
                step: 1,
                compensation: false,
                ..
            },
        ) | (
            "after_reply",
            Probe::Logged {
                transition: Transition::StepReplied { step: 1, .. },
                ..
            },
        ) | (
            "mid_compensation",
            Probe::Logged {
                transition: Transition::CompensationSent { .. },
                ..
            },
        ) | (
            "in_backoff",
            Probe::Logged {
                transition: Transition::StepRetrying { .. },
                ..
            },
        )
    )
}

fn order(i: usize) -> Order {
    Order::new(1 + (i % 5) as u32, 100 + i as u64)
}

/// The orchestrator process: runs sagas `<prefix>-0..SAGAS` (starting again ids that exist is a
/// no-op), SIGKILLs itself at `SB_SAGA_KILL_AT` if set, prints DONE when every saga ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the crash tests as a child process"]
async fn orchestrator_child_process() {
    let (Ok(db), Ok(url), Ok(prefix)) = (
        std::env::var("SB_SAGA_DB").or_else(|_| std::env::var("SB_SAGA_PG_SCHEMA")),
        std::env::var("SB_SAGA_URL"),
        std::env::var("SB_SAGA_PREFIX"),
    ) else {
        return;
    };
    let kill_at = std::env::var("SB_SAGA_KILL_AT").ok();
    match std::env::var("SB_SAGA_PG_SCHEMA") {
        #[cfg(feature = "postgres")]
        Ok(schema) => {
            let log = pg::log_in(&schema, LEASE).await.expect("PostgreSQL answers");
            run_orchestrator(log, &url, &prefix, kill_at).await
        }
        _ => run_orchestrator(SqliteLog::open(&db).unwrap(), &url, &prefix, kill_at).await,
    }
}

/// How long a replica's leases last in the replica test.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
const LEASE: Duration = Duration::from_secs(1);

async fn run_orchestrator<L: SagaLog>(log: L, url: &str, prefix: &str, kill_at: Option<String>) {
    // Far enough in that many sagas are at every stage; compensations are fewer.
    let nth = if kill_at.as_deref() == Some("mid_compensation") {
        30
    } else {
        200
    };
    let seen = AtomicUsize::new(0);
    let client = Client::connect(url).await.unwrap();
    let mut builder = Orchestrator::builder(log)
        .claim_every(Duration::from_millis(100))
        .observe(move |probe| {
            if let Some(point) = &kill_at
                && at_point(point, probe)
                && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth
            {
                // SAFETY: kill(2) on our own pid; nothing is touched after it.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        });
    if let Ok(owner) = std::env::var("SB_SAGA_OWNER") {
        builder = builder.owner(owner);
    }
    let orchestrator = builder.build();
    let orders = orchestrator.register(order_saga(&client));
    orchestrator.start();
    println!("READY");
    let runs: Vec<_> = (0..SAGAS)
        .map(|i| {
            let orders = orders.clone();
            let id = format!("{prefix}-{i}");
            tokio::spawn(async move { orders.run(id, order(i)).await.unwrap().status })
        })
        .collect();
    for run in runs {
        let status = run.await.unwrap();
        assert!(matches!(status, Status::Completed | Status::Compensated), "{status}");
    }
    println!("DONE");
    std::future::pending::<()>().await;
}

fn child(db: &Path, url: &str, prefix: &str, kill_at: Option<&str>) -> tokio::process::Child {
    child_with(url, prefix, kill_at, &[("SB_SAGA_DB", db.to_str().unwrap())])
}

fn child_with(url: &str, prefix: &str, kill_at: Option<&str>, envs: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "orchestrator_child_process", "--ignored", "--nocapture"])
        .envs(envs.iter().copied())
        .env("SB_SAGA_URL", url)
        .env("SB_SAGA_PREFIX", prefix)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(point) = kill_at {
        cmd.env("SB_SAGA_KILL_AT", point);
    }
    cmd.spawn().unwrap()
}

/// Runs the whole matrix with participants served on `url`.
async fn crash_matrix(url: &str) {
    let books = Arc::new(Books {
        rules: true,
        ..Books::default()
    });
    let _server = participants(books.clone(), url).start().await.unwrap();
    for point in POINTS {
        books.raw.lock().unwrap().clear();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sagas.db");
        // The first orchestrator dies at the point.
        let mut first = child(&db, url, point, Some(point));
        let status = tokio::time::timeout(Duration::from_secs(180), first.wait())
            .await
            .unwrap_or_else(|_| panic!("{point}: the orchestrator neither finished nor died in 180 s"))
            .unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{point}: killed itself at the point ({status})"
        );
        let log = SqliteLog::open(&db).unwrap();
        let everything = Filter {
            limit: 10 * SAGAS,
            ..Filter::default()
        };
        let before = log.list(everything.clone()).await.unwrap();
        assert!(
            before.iter().any(|s| s.status.is_active()),
            "{point}: sagas were in flight at the kill"
        );

        // The second resumes them and starts the ones never started.
        let mut second = child(&db, url, point, None);
        let mut lines = BufReader::new(second.stdout.take().unwrap()).lines();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{point}: the sagas did not end within 180 s of the restart"))
                .unwrap()
                .unwrap_or_else(|| panic!("{point}: the second orchestrator exited"));
            if line.trim() == "DONE" {
                break;
            }
        }
        second.kill().await.unwrap();

        let after = log.list(everything).await.unwrap();
        assert_eq!(after.len(), SAGAS, "{point}: every saga is in the log");
        check_effects(&books, point, &after);
        if point == "after_send" {
            // The kill came between a charge's reply and its logging: that charge was sent
            // again after the restart (a second `step_sent`), and still charged once above.
            let mut resent = 0;
            for i in 0..SAGAS {
                let record = log.load(&format!("{point}-{i}")).await.unwrap().unwrap();
                let sent = record
                    .entries
                    .iter()
                    .filter(|e| matches!(e.transition, Transition::StepSent { step: 1, .. }));
                resent += usize::from(sent.count() > 1);
            }
            assert!(resent > 0, "some charge was sent again after the kill");
        }
    }
}

/// Every saga `<prefix>-i` ended as its order says, and each of its effects happened once.
fn check_effects(books: &Books, prefix: &str, after: &[switchboard_saga::log::Summary]) {
    let effects: HashMap<String, usize> = books.applied.lock().unwrap().iter().fold(HashMap::new(), |mut m, e| {
        *m.entry(e.clone()).or_default() += 1;
        m
    });
    let count = |pattern: &str, key: String| effects.get(&format!("{pattern} {key}")).copied().unwrap_or(0);
    for i in 0..SAGAS {
        let id = format!("{prefix}-{i}");
        let summary = after.iter().find(|s| s.id == id).unwrap();
        let once = [
            count("inventory.reserve", format!("saga:{id}:reserve")),
            count("payment.charge", format!("saga:{id}:charge")),
            count("shipping.ship", format!("saga:{id}:ship")),
            count("inventory.release", format!("saga:{id}:reserve:compensate")),
        ];
        let want = if declined(order(i).amount) {
            assert_eq!(summary.status, Status::Compensated, "{id}");
            [1, 0, 0, 1]
        } else {
            assert_eq!(summary.status, Status::Completed, "{id}");
            [1, 1, 1, 0]
        };
        assert_eq!(once, want, "{id}: effects reserve, charge, ship, release");
    }
}

/// Fails when `CI` is set and `addr` does not answer; otherwise says why it skips.
fn reachable(addr: &str, what: &str) -> bool {
    if std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} does not answer at {addr} (CI is set, so this fails): start it with scripts/brokers.sh");
    }
    eprintln!("SKIPPED: {what} does not answer at {addr}; start it with scripts/brokers.sh");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_orchestrators_lose_nothing_and_repeat_no_effect_over_tcp() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    crash_matrix(&format!("tcp://127.0.0.1:{port}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_orchestrators_lose_nothing_and_repeat_no_effect_over_nats() {
    if reachable("127.0.0.1:4222", "NATS") {
        crash_matrix("nats://127.0.0.1:4222").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_orchestrators_lose_nothing_and_repeat_no_effect_over_rabbitmq() {
    if reachable("127.0.0.1:5672", "RabbitMQ") {
        crash_matrix("amqp://127.0.0.1:5672?queue=sb-saga-crash&durable=false").await;
    }
}

/// Reads `child`'s output until it prints DONE.
async fn until_done(child: &mut tokio::process::Child, what: &str) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what}: the sagas did not end within 180 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: the orchestrator exited"));
        if line.trim() == "DONE" {
            return;
        }
    }
}

/// Two replicas share a PostgreSQL log and start the same 1,000 sagas; one SIGKILLs itself
/// after 200 charges came back. The other takes over the dead one's sagas when their leases
/// expire: every saga ends, every effect happens once, and no attempt of any step was ever
/// sent by both replicas (each attempt number reaches the participant at most once).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgres_one_killed_run_every_saga_once() {
    let schema = pg::fresh_schema();
    // Creates the schema (or skips, having said why, when PostgreSQL is missing outside CI).
    let Some(log) = pg::log_in(&schema, LEASE).await else {
        return;
    };
    let books = Arc::new(Books {
        rules: true,
        ..Books::default()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _server = participants(books.clone(), &url).start().await.unwrap();
    let replica = |owner: &str, kill: Option<&str>| {
        child_with(
            &url,
            "replicas",
            kill,
            &[("SB_SAGA_PG_SCHEMA", &schema), ("SB_SAGA_OWNER", owner)],
        )
    };
    let mut doomed = replica("replica-a", Some("after_send"));
    let mut survivor = replica("replica-b", None);
    let status = tokio::time::timeout(Duration::from_secs(180), doomed.wait())
        .await
        .expect("replica A dies within 180 s")
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "replica A killed itself ({status})"
    );
    until_done(&mut survivor, "replica B").await;
    survivor.kill().await.unwrap();

    let all = log
        .list(Filter {
            limit: 10 * SAGAS,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), SAGAS, "every saga is in the log");
    check_effects(&books, "replicas", &all);
    // Replica B finished charges replica A had sent (a second `step_sent` for the charge).
    let mut taken_over = 0;
    for i in 0..SAGAS {
        let record = log.load(&format!("replicas-{i}")).await.unwrap().unwrap();
        let sent = record
            .entries
            .iter()
            .filter(|e| matches!(e.transition, Transition::StepSent { step: 1, .. }));
        taken_over += usize::from(sent.count() > 1);
    }
    assert!(taken_over > 0, "replica B took over sagas replica A was running");
    let mut attempts: HashMap<(String, String), usize> = HashMap::new();
    for (key, attempt) in books.raw.lock().unwrap().iter() {
        *attempts.entry((key.clone(), attempt.clone())).or_default() += 1;
    }
    let twice: Vec<_> = attempts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "attempts sent twice (two replicas ran one saga): {twice:?}"
    );
}
