//! The crash matrix: an orchestrator with 1,000 sagas in flight SIGKILLs itself at a chosen
//! point (before a step is sent, after it is sent but before its reply is logged, after the
//! reply is logged, in the middle of compensation, during a retry's backoff); a new one resumes
//! from the SQLite log. Every saga must end completed or compensated, and every participant's
//! effect must have happened exactly once (the participants count them; their inbox turns
//! repeated keys into repeated replies). Over TCP, NATS and RabbitMQ.

#[path = "common/participants.rs"]
mod participants;

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
        std::env::var("SB_SAGA_DB"),
        std::env::var("SB_SAGA_URL"),
        std::env::var("SB_SAGA_PREFIX"),
    ) else {
        return;
    };
    let kill_at = std::env::var("SB_SAGA_KILL_AT").ok();
    // Far enough in that many sagas are at every stage; compensations are fewer.
    let nth = if kill_at.as_deref() == Some("mid_compensation") {
        30
    } else {
        200
    };
    let seen = AtomicUsize::new(0);
    let client = Client::connect(&url).await.unwrap();
    let orchestrator = Orchestrator::builder(SqliteLog::open(&db).unwrap())
        .claim_every(Duration::from_millis(100))
        .observe(move |probe| {
            if let Some(point) = &kill_at
                && at_point(point, probe)
                && seen.fetch_add(1, Ordering::SeqCst) + 1 == nth
            {
                // SAFETY: kill(2) on our own pid; nothing is touched after it.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        })
        .build();
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
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "orchestrator_child_process", "--ignored", "--nocapture"])
        .env("SB_SAGA_DB", db)
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
        let effects: HashMap<String, usize> = books.applied.lock().unwrap().iter().fold(HashMap::new(), |mut m, e| {
            *m.entry(e.clone()).or_default() += 1;
            m
        });
        let count = |pattern: &str, key: String| effects.get(&format!("{pattern} {key}")).copied().unwrap_or(0);
        for i in 0..SAGAS {
            let id = format!("{point}-{i}");
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
