//! The testing kit (`switchboard::testing`, feature `testing`), used as a user would: faults
//! observed from the caller's side, virtual time under a paused clock, the records.
//!
//! Times asserted here are tokio's virtual clock (paused), which moves only to the next timer
//! when nothing can run: they are exact to the timer wheel's millisecond, never wall time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use switchboard::error::Rejection;
use switchboard::prelude::*;
use switchboard::resilience::{CircuitBreaker, Policy};
use switchboard::testing::{Action, Fault, Faults, Harness, Outcome, TestService};
use switchboard::{Error, Kind, Message};
use tokio::time::Instant;

#[message_pattern("echo")]
async fn echo(n: u32) -> u32 {
    n
}

#[message_pattern("other")]
async fn other(n: u32) -> u32 {
    n
}

#[event_pattern("noted")]
async fn noted(_n: u32) {}

#[message_pattern("slow")]
async fn slow(secs: u64) -> u64 {
    tokio::time::sleep(Duration::from_secs(secs)).await;
    secs
}

#[message_pattern({ cmd = "quote" }, idempotent, retries = 2)]
async fn quote(item: String) -> String {
    format!("{item}: 42")
}

#[message_pattern("count")]
async fn count(n: u32) -> ReplyStream<u32> {
    ReplyStream::iter(1..=n)
}

#[event_pattern("hidden")]
async fn hidden(_n: u32, State(calls): State<Calls>) {
    calls.0.lock().unwrap().push("hidden");
}

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<&'static str>>>);

async fn serve(faults: Faults) -> Harness {
    TestService::new(
        Microservice::new()
            .handler(ECHO)
            .handler(OTHER)
            .handler(NOTED)
            .handler(SLOW),
    )
    .faults(faults)
    .start()
    .await
    .expect("the service starts")
}

/// 200 calls of `echo` through a plan failing 30 % of them: which ones failed, as the caller
/// saw it.
async fn failures(seed: u64) -> Vec<bool> {
    let svc = serve(Faults::seeded(seed).on("echo", Fault::fail(RpcError::new("boom")).probability(0.3))).await;
    let client = svc.client();
    let mut failed = Vec::new();
    for n in 0..200 {
        match client.send(ECHO, n).await {
            Ok(v) => {
                assert_eq!(v, n);
                failed.push(false);
            }
            Err(e) => {
                assert_eq!(e.as_rpc(), Some(&RpcError::new("boom")), "{e}");
                failed.push(true);
            }
        }
    }
    // The plan's log says the same, message by message.
    let logged: Vec<bool> = svc.decisions_for("echo").iter().map(|d| d.action.is_fault()).collect();
    assert_eq!(logged, failed);
    let passed = failed.iter().filter(|f| !**f).count();
    assert_eq!(
        svc.handled("echo").len(),
        passed,
        "only the calls that passed reach the handler"
    );
    svc.shutdown().await.unwrap();
    failed
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_failure_sequence() {
    let first = failures(42).await;
    assert_eq!(failures(42).await, first);
    assert_ne!(failures(43).await, first, "another seed, another sequence");
    let failed = first.iter().filter(|f| **f).count();
    assert!((30..=90).contains(&failed), "{failed} of 200 failed at p = 0.3");
}

/// `echo`'s decisions, with or without `other` called at the same time.
async fn echo_sequence(with_other: bool) -> Vec<Action> {
    let faults = Faults::seeded(7)
        .on("echo", Fault::fail(RpcError::new("e")).probability(0.5))
        .on("other", Fault::fail(RpcError::new("o")).probability(0.5));
    let svc = serve(faults).await;
    let busy = with_other.then(|| {
        let client = svc.client();
        tokio::spawn(async move {
            for n in 0..300 {
                let _ = client.send(OTHER, n).await;
                tokio::task::yield_now().await;
            }
        })
    });
    let client = svc.client();
    for n in 0..100 {
        let _ = client.send(ECHO, n).await;
        tokio::task::yield_now().await;
    }
    if let Some(busy) = busy {
        busy.await.unwrap();
        assert_eq!(svc.decisions_for("other").len(), 300);
    }
    svc.decisions_for("echo").into_iter().map(|d| d.action).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_patterns_do_not_change_a_patterns_sequence() {
    let alone = echo_sequence(false).await;
    assert_eq!(alone.len(), 100);
    assert!(alone.iter().any(Action::is_fault) && !alone.iter().all(Action::is_fault));
    assert_eq!(echo_sequence(true).await, alone);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_times_out_on_virtual_time() {
    let svc = serve(Faults::seeded(1).on("echo", Fault::drop().first(1))).await;
    let client = svc.client();
    let start = Instant::now();
    let err = client.send(ECHO, 1).timeout(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    assert!(
        svc.handled("echo").is_empty(),
        "a dropped request never reaches its handler"
    );
    assert_eq!(client.send(ECHO, 2).await.unwrap(), 2, "only the first is dropped");
    assert_eq!(svc.decisions_for("echo")[0].action, Action::Drop);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_event_is_never_handled() {
    let svc = serve(Faults::seeded(1).on("noted", Fault::drop().nth(1))).await;
    let client = svc.client();
    client.emit(NOTED, 1).await.unwrap();
    client.emit(NOTED, 2).await.unwrap();
    let handled = svc.wait_handled("noted", 1).await.unwrap();
    assert_eq!(handled[0].payload, 2);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let err = svc.wait_handled("noted", 2).await.unwrap_err();
    assert_eq!((err.expected, err.got), (2, 1));
    assert_eq!(
        err.to_string(),
        "waited 10s for 2 handled message(s) of `noted`, but 1 were handled; handled so far: noted ×1"
    );
    assert_eq!(svc.emitted("noted").len(), 2, "both were emitted");
}

#[tokio::test(start_paused = true)]
async fn a_duplicated_message_is_handled_twice() {
    let faults = Faults::seeded(1)
        .on("noted", Fault::duplicate().nth(1))
        .on("echo", Fault::duplicate());
    let svc = serve(faults).await;
    let client = svc.client();
    client.emit(NOTED, 1).await.unwrap();
    client.emit(NOTED, 2).await.unwrap();
    let handled = svc.wait_handled("noted", 3).await.unwrap();
    let payloads: Vec<_> = handled.iter().map(|h| h.payload.clone()).collect();
    assert_eq!(payloads, [1, 1, 2]);

    assert_eq!(client.send(ECHO, 7).await.unwrap(), 7, "the caller gets one reply");
    let echoed = svc.wait_handled("echo", 2).await.unwrap();
    assert!(echoed.iter().all(|h| h.payload == 7 && h.reply() == Some(&json!(7))));
    assert_eq!(svc.sent("echo").len(), 1);
}

/// The order 20 events were handled in, through a reorder window of 4.
async fn reordered(seed: u64) -> Vec<u32> {
    let svc = serve(Faults::seeded(seed).on("noted", Fault::reorder(4))).await;
    let client = svc.client();
    for n in 1..=20 {
        client.emit(NOTED, n).await.unwrap();
    }
    let handled = svc.wait_handled("noted", 20).await.unwrap();
    handled.iter().map(|h| h.payload_as::<u32>().unwrap()).collect()
}

#[tokio::test(start_paused = true)]
async fn reordered_events_all_arrive_in_another_order() {
    let order = reordered(5).await;
    let sent: Vec<u32> = (1..=20).collect();
    assert_ne!(order, sent, "handled in another order than sent");
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, sent, "every event arrives, once");
    for (i, window) in order.chunks(4).enumerate() {
        let mut window = window.to_vec();
        window.sort();
        assert_eq!(window, sent[i * 4..i * 4 + 4], "no event moves out of its window");
    }
    assert_eq!(reordered(5).await, order, "the same seed, the same order");
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_held_for_reordering_is_late_not_lost() {
    let svc = serve(Faults::seeded(1).on("echo", Fault::reorder(8).hold(Duration::from_secs(1)))).await;
    let start = Instant::now();
    assert_eq!(svc.client().send(ECHO, 3).await.unwrap(), 3);
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_message_reaches_its_handler_later_on_virtual_time() {
    let svc = serve(Faults::seeded(1).on("echo", Fault::delay(Duration::from_secs(2)).nth(1))).await;
    let client = svc.client();
    let start = Instant::now();
    assert_eq!(client.send(ECHO, 1).await.unwrap(), 1);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let (sent, handled) = (&svc.sent("echo")[0], &svc.handled("echo")[0]);
    let late = handled.at - sent.at;
    assert!(
        late >= Duration::from_secs(2) && late < Duration::from_secs(3),
        "{late:?}"
    );
    let start = Instant::now();
    assert_eq!(client.send(ECHO, 2).await.unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::ZERO, "the second is not delayed");
}

#[tokio::test(start_paused = true)]
async fn a_failed_message_answers_the_given_error_without_its_handler() {
    let conflict = RpcError::from_value(json!({"status": "error", "message": "taken", "code": 409}));
    let faults = Faults::seeded(1)
        .on("echo", Fault::fail(conflict.clone()))
        .on("hidden", Fault::fail(RpcError::new("lost")).first(1));
    let calls = Calls::default();
    let svc = TestService::new(
        Microservice::new()
            .with_state(calls.clone())
            .handler(ECHO)
            .handler(HIDDEN),
    )
    .faults(faults)
    .start()
    .await
    .unwrap();
    let err = svc.client().send(ECHO, 1).await.unwrap_err();
    assert_eq!(err.as_rpc(), Some(&conflict));
    assert!(svc.handled("echo").is_empty());

    svc.client().emit(HIDDEN, 1).await.unwrap();
    svc.client().emit(HIDDEN, 2).await.unwrap();
    svc.wait_handled("hidden", 1).await.unwrap();
    assert_eq!(
        *calls.0.lock().unwrap(),
        ["hidden"],
        "the failed event's listener never ran"
    );
    let decided: Vec<String> = svc.decisions().iter().map(ToString::to_string).collect();
    assert_eq!(
        decided,
        [
            r#"echo #1: fail {"status":"error","message":"taken","code":409}"#,
            r#"hidden #1: fail {"status":"error","message":"lost"}"#,
            "hidden #2: pass",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_30_s_open_circuit_passes_on_virtual_time() {
    let svc = serve(Faults::seeded(1).on("echo", Fault::fail(RpcError::unavailable("down")).first(3))).await;
    let breaker = CircuitBreaker::new()
        .failure_rate(None)
        .consecutive_failures(3)
        .open_for(Duration::from_secs(30));
    let client = svc
        .client_builder()
        .layer(Policy::new().circuit_breaker(breaker))
        .build()
        .unwrap();
    for n in 0..3 {
        let err = client.send(ECHO, n).await.unwrap_err();
        assert!(err.as_rpc().is_some_and(RpcError::is_unavailable), "{err}");
    }
    let refused = client.send(ECHO, 3).await.unwrap_err();
    assert!(
        matches!(
            refused,
            Error::Rejected {
                reason: Rejection::CircuitOpen { .. },
                ..
            }
        ),
        "{refused}"
    );
    assert_eq!(svc.sent("echo").len(), 3, "an open circuit sends nothing");

    let start = Instant::now();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(client.send(ECHO, 4).await.is_err(), "still open after 29 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(client.send(ECHO, 5).await.unwrap(), 5, "the probe after 30 s closes it");
    assert_eq!(start.elapsed(), Duration::from_secs(30));
    assert_eq!(svc.handled("echo").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_5_s_timeout_passes_on_virtual_time() {
    let svc = serve(Faults::seeded(1)).await;
    let start = Instant::now();
    let err = svc
        .client()
        .send(SLOW, 60)
        .timeout(Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    // The handler was dropped at its caller's deadline: it never answered.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(svc.handled("slow").iter().all(|h| h.reply().is_none()));
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_on_virtual_time_with_one_key() {
    let svc = TestService::new(Microservice::new().handler(QUOTE))
        .faults(Faults::seeded(9).on(QUOTE.route(), Fault::fail(RpcError::unavailable("busy")).first(2)))
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    assert_eq!(svc.client().send(QUOTE, "tea".to_string()).await.unwrap(), "tea: 42");
    assert!(start.elapsed() > Duration::ZERO, "the retries waited (virtual time)");
    let sent = svc.sent(r#"{"cmd":"quote"}"#);
    let attempts: Vec<_> = sent.iter().map(|s| s.header("sb-attempt").unwrap()).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let key = sent[0].header("idempotency-key").unwrap();
    assert!(sent.iter().all(|s| s.header("idempotency-key") == Some(key)));
    assert_eq!(svc.handled(QUOTE.route()).len(), 1);
}

#[message_pattern("front")]
async fn front(n: u32, State(backend): State<Client>) -> RpcResult<u32> {
    Ok(backend.send(ECHO, n + 1).await? * 10)
}

#[tokio::test(start_paused = true)]
async fn the_records_say_what_was_sent_emitted_and_handled() {
    let backend = serve(Faults::seeded(1)).await;
    let frontend = TestService::new(Microservice::new().with_state(backend.client()).handler(FRONT))
        .start()
        .await
        .unwrap();
    let client = frontend.client();
    assert_eq!(client.send(FRONT, 4).header("tenant", "acme").await.unwrap(), 50);

    let sent = frontend.sent("front");
    assert_eq!(
        (sent.len(), sent[0].kind, &sent[0].payload),
        (1, Kind::Request, &json!(4))
    );
    assert_eq!(sent[0].header("tenant"), Some("acme"));
    let handled = frontend.handled("front");
    assert_eq!(handled[0].header("tenant"), Some("acme"));
    assert_eq!(handled[0].payload_as::<u32>().unwrap(), 4);
    assert_eq!(handled[0].outcome, Outcome::Replied(vec![json!(50)]));
    // `Debug` names the headers, as `Headers` does, and shows no value (one may be a token).
    for shown in [format!("{:?}", sent[0]), format!("{:?}", handled[0])] {
        assert!(shown.contains("\"tenant\"") && !shown.contains("acme"), "{shown}");
    }
    // The call the handler made to the backend, through the backend's harness client.
    let called = backend.sent("echo");
    assert_eq!((called.len(), &called[0].payload), (1, &json!(5)));
    assert_eq!(backend.handled("echo")[0].reply(), Some(&json!(5)));

    backend.client().emit(NOTED, 9).await.unwrap();
    backend.wait_handled("noted", 1).await.unwrap();
    assert_eq!(backend.emitted("noted")[0].payload, 9);
    assert!(backend.sent("noted").is_empty(), "an event is emitted, not sent");
    let all: Vec<_> = backend
        .handled_all()
        .iter()
        .map(|h| (h.route.clone(), h.kind))
        .collect();
    assert_eq!(
        all,
        [("echo".to_string(), Kind::Request), ("noted".to_string(), Kind::Event)]
    );
    assert_eq!(backend.handled("noted")[0].outcome, Outcome::Replied(vec![]));
    assert_eq!(backend.sent_all().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn streams_errors_and_unknown_patterns_are_recorded() {
    let svc = TestService::new(Microservice::new().handler(COUNT))
        .start()
        .await
        .unwrap();
    let client = svc.client();
    let values: Vec<u32> = client
        .send(COUNT, 3)
        .stream()
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(values, [1, 2, 3]);
    let counted = svc.wait_handled("count", 1).await.unwrap();
    assert_eq!(counted[0].outcome, Outcome::Replied(vec![json!(1), json!(2), json!(3)]));

    let err = client.send_raw::<u32>("missing", 1).await.unwrap_err();
    assert!(matches!(err, Error::NoHandler { .. }), "{err}");
    assert_eq!(svc.handled("missing")[0].outcome, Outcome::NoHandler);

    let err = client.send_raw::<u32>("count", "not a number").await.unwrap_err();
    let handled = svc.handled("count");
    assert_eq!(handled[1].payload, "not a number");
    assert_eq!(handled[1].error(), err.as_rpc());
}

#[tokio::test(start_paused = true)]
async fn patterns_are_named_in_any_key_order() {
    let svc = TestService::new(Microservice::new().handler(QUOTE))
        .faults(Faults::seeded(1).on(r#"{ "cmd": "quote" }"#, Fault::fail(RpcError::new("x")).nth(1)))
        .start()
        .await
        .unwrap();
    assert!(svc.client().send(QUOTE, "a".to_string()).await.is_err());
    assert_eq!(svc.decisions_for(r#"{"cmd":"quote"}"#).len(), 1);
    assert_eq!(svc.sent(QUOTE.route()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn calls_of_any_client_are_faulted_and_recorded_values_included() {
    // A client without layers hands its payload over as a value, and takes its reply so.
    let svc = serve(Faults::seeded(1).on("echo", Fault::duplicate().nth(1))).await;
    let plain = Client::connect(svc.url()).await.unwrap();
    assert_eq!(plain.send(ECHO, 11).await.unwrap(), 11);
    let handled = svc.wait_handled("echo", 2).await.unwrap();
    assert!(
        handled.iter().all(|h| h.payload == 11 && h.reply() == Some(&json!(11))),
        "{handled:?}"
    );
    assert!(
        svc.sent("echo").is_empty(),
        "only the harness's clients are recorded as senders"
    );
}
