//! The orchestrator over real participants (in-process transport): completion, compensation in
//! reverse and in parallel, retries, deadlines, parking and operator commands, resuming.

#[path = "common/participants.rs"]
mod participants;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use participants::*;
use switchboard::prelude::*;
use switchboard::{Client, RunningServer};
use switchboard_saga::log::{MemoryLog, SagaLog, SqliteLog};
use switchboard_saga::{Error, Filter, Orchestrator, Probe, Saga, Status, Step, StuckSaga, Transition};

static NEXT: AtomicU32 = AtomicU32::new(0);

struct Fixture {
    books: Shared,
    client: Client,
    _server: RunningServer,
}

async fn fixture() -> Fixture {
    let url = format!("mem://saga-participants-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let books = Shared::default();
    let server = participants(books.clone(), &url).start().await.unwrap();
    let client = Client::connect(&url).await.unwrap();
    Fixture {
        books,
        client,
        _server: server,
    }
}

fn orchestrator<L: SagaLog>(log: L) -> Orchestrator<L> {
    Orchestrator::builder(log)
        .claim_every(Duration::from_millis(50))
        .build()
}

#[tokio::test]
async fn a_saga_completes_with_every_reply_in_its_state() {
    let f = fixture().await;
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    o.start();
    let done = orders.run("o-1", Order::new(2, 50)).await.unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        (done.state.reservation, done.state.payment, done.state.shipment),
        (Some(1002), Some(2050), Some(3000))
    );
    assert_eq!(
        f.books.order(),
        ["inventory.reserve", "payment.charge", "shipping.ship"]
    );
    assert_eq!(
        f.books.applied("inventory.reserve"),
        ["inventory.reserve saga:o-1:reserve"]
    );
    assert_eq!(f.books.attempts.lock().unwrap()["saga:o-1:charge"], ["1"]);
    let record = o.show("o-1").await.unwrap();
    let kinds: Vec<&str> = record.entries.iter().map(|e| e.transition.kind()).collect();
    assert_eq!(
        kinds,
        [
            "started",
            "step_sent",
            "step_replied",
            "step_sent",
            "step_replied",
            "step_sent",
            "step_replied",
            "completed"
        ]
    );
}

#[tokio::test]
async fn a_declined_pivot_releases_the_reservation() {
    let f = fixture().await;
    f.books.script("payment.charge", [Act::Decline]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    let done = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert!(
        done.error.as_deref().unwrap().contains("payment.charge declined"),
        "{:?}",
        done.error
    );
    assert_eq!(f.books.order(), ["inventory.reserve", "inventory.release"]);
    assert_eq!(
        f.books.applied("inventory.release"),
        ["inventory.release saga:o-1:reserve:compensate"]
    );
    assert_eq!(
        f.books.deliveries.lock().unwrap()["saga:o-1:charge"],
        1,
        "a business error is not retried"
    );
}

fn three_steps(c: &Client, parallel: bool) -> Saga<Order, switchboard_saga::AfterPivot> {
    let saga = compensating_order(c).pivot(Step::new("ship", c, SHIP, |o: &Order| o.payment.unwrap_or(0)));
    if parallel { saga.parallel_compensation() } else { saga }
}

#[tokio::test]
async fn compensations_run_in_reverse_order() {
    let f = fixture().await;
    f.books.script("shipping.ship", [Act::Decline]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(three_steps(&f.client, false));
    let done = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(
        f.books.order(),
        [
            "inventory.reserve",
            "payment.charge",
            "payment.refund",
            "inventory.release"
        ]
    );
}

#[tokio::test]
async fn parallel_compensation_undoes_every_step_once() {
    let f = fixture().await;
    f.books.script("shipping.ship", [Act::Decline]);
    // The refund is slow: in order, the release would wait for it.
    f.books
        .script("payment.refund", [Act::Slow(Duration::from_millis(300))]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(three_steps(&f.client, true));
    let done = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(
        f.books.order(),
        [
            "inventory.reserve",
            "payment.charge",
            "inventory.release",
            "payment.refund"
        ],
        "the release did not wait for the slow refund"
    );
    let record = o.show("o-1").await.unwrap();
    let sent: Vec<u64> = record
        .entries
        .iter()
        .filter(|e| matches!(e.transition, Transition::CompensationSent { .. }))
        .map(|e| e.seq)
        .collect();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1], sent[0] + 1, "both compensations logged together");
}

#[tokio::test]
async fn unavailable_participants_are_retried_with_one_key() {
    let f = fixture().await;
    f.books
        .script("inventory.reserve", [Act::Unavailable, Act::Unavailable]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    let done = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(f.books.attempts.lock().unwrap()["saga:o-1:reserve"], ["1", "2", "3"]);
    assert_eq!(f.books.applied("inventory.reserve").len(), 1);
    let record = o.show("o-1").await.unwrap();
    let retries = record
        .entries
        .iter()
        .filter(|e| matches!(e.transition, Transition::StepRetrying { .. }))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test]
async fn a_compensation_failing_three_times_then_succeeding_compensates() {
    let f = fixture().await;
    f.books.script("payment.charge", [Act::Decline]);
    f.books.script("inventory.release", [Act::Unavailable; 3]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    let done = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(f.books.deliveries.lock().unwrap()["saga:o-1:reserve:compensate"], 4);
    assert_eq!(f.books.applied("inventory.release").len(), 1);
}

/// Participants that record `saga.stuck` events.
#[derive(Clone, Default)]
struct Alerts(Arc<Mutex<Vec<StuckSaga>>>);

#[event_pattern("saga.stuck")]
async fn stuck_alert(stuck: StuckSaga, State(alerts): State<Alerts>) {
    alerts.0.lock().unwrap().push(stuck);
}

#[tokio::test]
async fn a_compensation_that_never_succeeds_parks_the_saga_until_an_operator_retries() {
    let f = fixture().await;
    let alerts = Alerts::default();
    let url = format!("mem://saga-alerts-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let _ops = Microservice::new()
        .with_state(alerts.clone())
        .handler(STUCK_ALERT)
        .listen(&url)
        .start()
        .await
        .unwrap();
    f.books.script("payment.charge", [Act::Decline]);
    f.books.script("inventory.release", [Act::Unavailable; 5]);
    let o = Orchestrator::builder(MemoryLog::new())
        .notify(Client::connect(&url).await.unwrap())
        .build();
    let orders = o.register(order_saga(&f.client));
    let parked = orders.run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(parked.status, Status::Stuck);
    assert!(parked.error.unwrap().contains("busy"));
    let stuck = Filter {
        statuses: vec![Status::Stuck],
        ..Filter::default()
    };
    assert_eq!(o.list(stuck).await.unwrap().len(), 1);
    for _ in 0..100 {
        if !alerts.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let alert = alerts
        .0
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("saga.stuck was emitted");
    assert_eq!(
        (alert.id.as_str(), alert.saga.as_str(), alert.step.as_str()),
        ("o-1", "order", "reserve")
    );
    assert!(f.books.applied("inventory.release").is_empty());

    // The participant is back: the operator retries.
    o.retry("o-1").await.unwrap();
    let done = orders.wait("o-1").await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(f.books.applied("inventory.release").len(), 1);
    let again = o.retry("o-1").await;
    assert!(matches!(again, Err(Error::WrongStatus { .. })), "{again:?}");
}

#[tokio::test]
async fn an_operator_can_skip_or_abort_a_parked_saga() {
    let f = fixture().await;
    f.books.script("payment.charge", [Act::Decline, Act::Decline]);
    f.books.script("inventory.release", [Act::Unavailable; 10]);
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    assert_eq!(
        orders.run("skip", Order::new(1, 10)).await.unwrap().status,
        Status::Stuck
    );
    assert_eq!(
        orders.run("abort", Order::new(1, 10)).await.unwrap().status,
        Status::Stuck
    );
    o.skip("skip").await.unwrap();
    assert_eq!(orders.wait("skip").await.unwrap().status, Status::Compensated);
    o.abort("abort", "refunded by hand").await.unwrap();
    let aborted = orders.wait("abort").await.unwrap();
    assert_eq!(
        (aborted.status, aborted.error.as_deref()),
        (Status::Aborted, Some("refunded by hand"))
    );
    assert!(f.books.applied("inventory.release").is_empty());
    let record = o.show("skip").await.unwrap();
    assert!(
        record
            .entries
            .iter()
            .any(|e| e.transition == Transition::Skipped { step: 0 })
    );
}

#[tokio::test]
async fn a_step_past_its_deadline_fails_and_compensates() {
    let f = fixture().await;
    f.books.script("payment.charge", [Act::Unavailable; 1000]);
    let c = &f.client;
    let saga = Saga::<Order>::new("order")
        .step(
            Step::new("reserve", c, RESERVE, |o: &Order| o.qty)
                .on_reply(|o, r| o.reservation = Some(*r))
                .compensate(RELEASE, |_, r| *r),
        )
        .pivot(
            Step::new("charge", c, CHARGE, |o: &Order| o.amount)
                .backoff(QUICK, QUICK)
                .max_attempts(1000)
                .deadline(Duration::from_millis(300)),
        );
    let o = orchestrator(MemoryLog::new());
    let done = o.register(saga).run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert_eq!(f.books.order(), ["inventory.reserve", "inventory.release"]);
    let charges = f.books.deliveries.lock().unwrap()["saga:o-1:charge"];
    assert!(
        (2..1000).contains(&charges),
        "retried until the deadline, then gave up: {charges}"
    );
}

#[tokio::test]
async fn a_saga_past_its_deadline_compensates() {
    let f = fixture().await;
    f.books
        .script("payment.charge", [Act::Slow(Duration::from_secs(2)); 100]);
    let c = &f.client;
    let saga = Saga::<Order>::new("order")
        .step(
            Step::new("reserve", c, RESERVE, |o: &Order| o.qty)
                .on_reply(|o, r| o.reservation = Some(*r))
                .compensate(RELEASE, |_, r| *r),
        )
        .pivot(Step::new("charge", c, CHARGE, |o: &Order| o.amount).backoff(QUICK, QUICK))
        .deadline(Duration::from_millis(400));
    let o = orchestrator(MemoryLog::new());
    let done = o.register(saga).run("o-1", Order::new(1, 10)).await.unwrap();
    assert_eq!(done.status, Status::Compensated);
    assert!(done.error.unwrap().contains("deadline"));
    assert_eq!(f.books.order(), ["inventory.reserve", "inventory.release"]);
}

#[tokio::test]
async fn starting_an_id_twice_starts_one_saga() {
    let f = fixture().await;
    let o = orchestrator(MemoryLog::new());
    let orders = o.register(order_saga(&f.client));
    orders.start("o-1", Order::new(1, 10)).await.unwrap();
    orders.start("o-1", Order::new(9, 99)).await.unwrap();
    let done = orders.wait("o-1").await.unwrap();
    assert_eq!(done.state.qty, 1);
    assert_eq!(f.books.applied("inventory.reserve").len(), 1);
    let other = o.register(Saga::<Order>::new("refund").pivot(Step::new("x", &f.client, SHIP, |_: &Order| 0)));
    assert!(matches!(
        other.start("o-1", Order::default()).await,
        Err(Error::Exists(_))
    ));
}

/// An orchestrator stopped right after a reply was logged; another on the same log finishes
/// the saga without repeating an effect: the charge it may have sent goes again with its key
/// (in process; the SIGKILL tests are in `crash.rs`).
#[tokio::test]
async fn a_new_orchestrator_resumes_where_the_log_says() {
    let f = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sagas.db");
    {
        let log = SqliteLog::open(&path).unwrap();
        let stop = Arc::new(Mutex::new(None::<Orchestrator<SqliteLog>>));
        let stopper = stop.clone();
        let o = Orchestrator::builder(log)
            .observe(move |p| {
                if let Probe::Logged {
                    transition: Transition::StepReplied { step: 0, .. },
                    ..
                } = p
                    && let Some(o) = stopper.lock().unwrap().as_ref()
                {
                    o.shutdown();
                }
            })
            .build();
        *stop.lock().unwrap() = Some(o.clone());
        let orders = o.register(order_saga(&f.client));
        orders.start("o-1", Order::new(1, 10)).await.unwrap();
        for _ in 0..200 {
            if o.show("o-1").await.unwrap().entries.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(o.show("o-1").await.unwrap().summary.status, Status::Running);
        // The reply went to the log with the charge's `step_sent`: the charge may be out.
        assert!(f.books.applied("payment.charge").len() <= 1);
    }
    // Another process would be refused the file while the first holds it; here the first
    // orchestrator's log is dropped with it.
    let log = SqliteLog::open(&path).unwrap();
    let o = orchestrator(log);
    let orders = o.register(order_saga(&f.client));
    o.start();
    let done = orders.wait("o-1").await.unwrap();
    assert_eq!(done.status, Status::Completed);
    assert_eq!(
        f.books.order(),
        ["inventory.reserve", "payment.charge", "shipping.ship"]
    );
}
