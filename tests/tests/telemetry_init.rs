//! `telemetry::init` called while an earlier one runs: the second fails (the process has its
//! global subscriber) and starts nothing, and the first's spans keep going to its collector.
//! A test binary of its own: a process sets its global subscriber once.

#![cfg(feature = "telemetry")]

use std::time::Duration;

use example_collector::Collector;
use switchboard::prelude::*;

#[message_pattern("reinit.add")]
async fn add(n: i64) -> i64 {
    n + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_init_fails_and_the_first_keeps_exporting() {
    let first = Collector::start("127.0.0.1:0").await.unwrap();
    let telemetry = switchboard::telemetry::builder("reinit-first")
        .endpoint(&first.endpoint)
        .init()
        .expect("the first init");
    let second = Collector::start("127.0.0.1:0").await.unwrap();
    let err = switchboard::telemetry::builder("reinit-second")
        .endpoint(&second.endpoint)
        .init()
        .expect_err("a second global subscriber");
    assert!(err.to_string().contains("already set"), "{err}");

    let server = Microservice::new()
        .handler(ADD)
        .listen("mem://reinit")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://reinit").await.unwrap();
    assert_eq!(client.send(ADD, 1).await.unwrap(), 2);
    let flush = || {
        let _ = telemetry.flush();
    };
    let spans = first
        .wait_for(Duration::from_secs(10), flush, |spans| {
            spans.iter().any(|s| s.name == "process reinit.add")
        })
        .await;
    assert!(
        spans.is_some(),
        "the first collector has the call's spans: {:?}",
        first.spans()
    );
    assert!(
        spans.unwrap().iter().all(|s| s.service == "reinit-first"),
        "every span is the first exporter's"
    );
    assert!(
        second.spans().is_empty(),
        "the failed init exported nothing: {:?}",
        second.spans()
    );
    server.shutdown().await.unwrap();
}
