//! Metrics as Prometheus renders them: messages handled and calls made per transport,
//! route and outcome, latency histograms with their buckets, in-flight gauges, reconnects,
//! and the resilience signals (retries, circuit transitions, sheds, fallbacks).

#![cfg(all(feature = "metrics", feature = "http", feature = "redis"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use switchboard::prelude::*;
use switchboard::resilience::{CircuitBreaker, Policy, Retry};

#[message_pattern("metered.ok")]
async fn ok(n: i64) -> i64 {
    n
}

#[message_pattern("metered.fail")]
async fn fail() -> RpcResult<()> {
    Err(RpcError::new("no such thing"))
}

static FAILURES_LEFT: AtomicUsize = AtomicUsize::new(0);

/// Unavailable while `FAILURES_LEFT` counts down, then answers.
#[message_pattern("metered.flaky")]
async fn flaky(n: i64) -> RpcResult<i64> {
    if FAILURES_LEFT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| left.checked_sub(1))
        .is_ok()
    {
        return Err(RpcError::unavailable("not now"));
    }
    Ok(n)
}

#[message_pattern("metered.limited", rate = "1/h")]
async fn limited() {}

#[event_pattern("metered.evt")]
async fn evt(_n: i64) {}

fn service() -> Microservice {
    Microservice::new()
        .handler(OK)
        .handler(FAIL)
        .handler(FLAKY)
        .handler(LIMITED)
        .handler(EVT)
}

/// A sample's value: the line of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        (metric == name && all).then(|| value.parse().unwrap())
    })
}

async fn scrape_until(what: &str, done: impl Fn(&str) -> bool) -> String {
    for _ in 0..200 {
        let text = switchboard::metrics::render().expect("installed");
        if done(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{what} not in the metrics within 5 s:\n{}",
        switchboard::metrics::render().unwrap()
    );
}

/// The recorder, installed once for the tests of this binary (they run at once).
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| switchboard::metrics::install().unwrap());
}

#[tokio::test]
async fn messages_calls_latency_reconnects_and_resilience_are_counted() {
    install();
    let server = service()
        .listen("tcp://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let http = server.http_addr().unwrap();
    let url = server.local_url().to_owned();
    let client = Client::connect(&url).await.unwrap();
    for n in 0..3 {
        assert_eq!(client.send(OK, n).await.unwrap(), n);
    }
    client.send(FAIL, ()).await.unwrap_err();
    client
        .send_raw::<serde_json::Value>("metered.nobody", json!(1))
        .await
        .unwrap_err();
    client.emit(EVT, 1).await.unwrap();
    client.emit(EVT, 2).await.unwrap();
    client.send(LIMITED, ()).await.unwrap();
    client.send(LIMITED, ()).await.unwrap_err();

    let handled = |route: &'static str, kind: &'static str, outcome: &'static str| {
        [
            ("transport", "tcp"),
            ("route", route),
            ("kind", kind),
            ("outcome", outcome),
        ]
    };
    let text = scrape_until("two events", |t| {
        sample(
            t,
            "switchboard_messages_handled_total",
            &handled("metered.evt", "event", "ok"),
        ) == Some(2.0)
    })
    .await;
    let h = "switchboard_messages_handled_total";
    assert_eq!(
        sample(&text, h, &handled("metered.ok", "request", "ok")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, h, &handled("metered.fail", "request", "rpc_error")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, h, &handled("(unmatched)", "request", "no_handler")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, h, &handled("metered.limited", "request", "ok")),
        Some(1.0)
    );
    // The rate limit's refusal is the handler's route answering `UNAVAILABLE`, and a shed.
    assert_eq!(
        sample(&text, h, &handled("metered.limited", "request", "unavailable")),
        Some(1.0)
    );
    let shed = [
        ("side", "server"),
        ("route", "metered.limited"),
        ("reason", "rate_limited"),
    ];
    assert_eq!(sample(&text, "switchboard_shed_total", &shed), Some(1.0));

    // What Prometheus scrapes is the same text.
    let scraped = scrape(http).await;
    assert!(scraped.starts_with("HTTP/1.1 200 OK"), "{scraped}");
    assert!(scraped.contains("content-type: text/plain; version=0.0.4"), "{scraped}");
    let body = scraped.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        sample(body, h, &handled("metered.ok", "request", "ok")),
        Some(3.0),
        "{body}"
    );

    // A histogram with real buckets: OpenTelemetry's, and five below them.
    let ok_route = [("transport", "tcp"), ("route", "metered.ok"), ("kind", "request")];
    let d = "switchboard_message_handle_duration_seconds";
    assert_eq!(sample(&text, &format!("{d}_count"), &ok_route), Some(3.0));
    let les: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{d}_bucket")) && l.contains("route=\"metered.ok\""))
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = switchboard::metrics::BUCKETS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_owned()])
        .collect();
    assert_eq!(les, expected, "{text}");
    assert_eq!(
        sample(&text, &format!("{d}_bucket"), &[ok_route[1], ("le", "+Inf")]),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "switchboard_messages_in_flight", &[("route", "metered.ok")]),
        Some(0.0)
    );

    // The caller's side.
    let called = |route: &'static str, outcome: &'static str| {
        [
            ("transport", "tcp"),
            ("route", route),
            ("kind", "request"),
            ("outcome", outcome),
        ]
    };
    let c = "switchboard_calls_total";
    assert_eq!(sample(&text, c, &called("metered.ok", "ok")), Some(3.0));
    assert_eq!(sample(&text, c, &called("metered.fail", "rpc_error")), Some(1.0));
    assert_eq!(
        sample(&text, c, &called("metered.nobody", "no_handler")),
        Some(1.0),
        "{text}"
    );
    let events = [
        ("transport", "tcp"),
        ("route", "metered.evt"),
        ("kind", "event"),
        ("outcome", "ok"),
    ];
    assert_eq!(sample(&text, c, &events), Some(2.0));
    assert_eq!(
        sample(
            &text,
            "switchboard_call_duration_seconds_count",
            &[("route", "metered.ok")]
        ),
        Some(3.0)
    );

    // Retries, then a circuit that opens, sheds and falls back.
    FAILURES_LEFT.store(2, Ordering::SeqCst);
    let retrying = Client::builder(&url)
        .layer(
            Policy::new().retry(
                Retry::new()
                    .max_attempts(3)
                    .backoff(Duration::from_millis(1), Duration::from_millis(2)),
            ),
        )
        .connect()
        .await
        .unwrap();
    assert_eq!(retrying.send(FLAKY, 5).idempotent().await.unwrap(), 5);
    let breaker = CircuitBreaker::new().failure_rate(None).consecutive_failures(1);
    let guarded = Client::builder(&url)
        .layer(Policy::new().circuit_breaker(breaker))
        .connect()
        .await
        .unwrap();
    FAILURES_LEFT.store(1, Ordering::SeqCst);
    guarded.send(FLAKY, 1).await.unwrap_err();
    assert_eq!(guarded.send(FLAKY, 1).fallback(-1).await.unwrap(), -1);
    let text = switchboard::metrics::render().unwrap();
    let flaky_route = [("route", "metered.flaky")];
    assert_eq!(
        sample(&text, "switchboard_retries_total", &flaky_route),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "switchboard_circuit_state", &flaky_route), Some(2.0));
    assert_eq!(
        sample(
            &text,
            "switchboard_circuit_transitions_total",
            &[flaky_route[0], ("to", "open")]
        ),
        Some(1.0)
    );
    let shed = [
        ("side", "client"),
        ("route", "metered.flaky"),
        ("reason", "circuit_open"),
    ];
    assert_eq!(sample(&text, "switchboard_shed_total", &shed), Some(1.0));
    assert_eq!(sample(&text, "switchboard_fallbacks_total", &flaky_route), Some(1.0));

    // The service restarts on the same port: the client's next call reconnects.
    let port = url.rsplit(':').next().unwrap().to_owned();
    server.shutdown().await.unwrap();
    client.send(OK, 1).await.unwrap_err();
    let again = service()
        .listen(format!("tcp://127.0.0.1:{port}"))
        .start()
        .await
        .unwrap();
    let mut answered = false;
    for _ in 0..100 {
        if client.send(OK, 1).await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "the client reconnects to the restarted service");
    let text = switchboard::metrics::render().unwrap();
    assert!(
        sample(&text, "switchboard_reconnects_total", &[("transport", "tcp")]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    again.shutdown().await.unwrap();

    // Another transport, its own series.
    let redis = service()
        .listen("redis://127.0.0.1:6379")
        .start()
        .await
        .expect("Redis on 127.0.0.1:6379: run scripts/brokers.sh");
    let over_redis = Client::connect("redis://127.0.0.1:6379").await.unwrap();
    over_redis.send(OK, 1).await.unwrap();
    let text = switchboard::metrics::render().unwrap();
    let redis_ok = [
        ("transport", "redis"),
        ("route", "metered.ok"),
        ("kind", "request"),
        ("outcome", "ok"),
    ];
    assert_eq!(sample(&text, h, &redis_ok), Some(1.0), "{text}");
    assert_eq!(sample(&text, c, &redis_ok), Some(1.0));
    redis.shutdown().await.unwrap();
}

/// `GET /metrics` on the service's HTTP endpoint: the whole response.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).await.unwrap();
    answer
}

/// Closed until the NATS test below opens it.
#[cfg(feature = "nats")]
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

#[cfg(feature = "nats")]
#[event_pattern("metered.gated")]
async fn gated(_n: u64) {
    let _ = GATE.acquire().await.map(|p| p.forget());
}

/// A NATS server that falls behind: async-nats keeps `subscription_capacity` messages of a
/// subscription and drops the next ones; each is counted.
#[cfg(feature = "nats")]
#[tokio::test]
async fn messages_a_nats_subscription_drops_are_counted() {
    const NATS: &str = "nats://127.0.0.1:4222";
    if tokio::net::TcpStream::connect("127.0.0.1:4222").await.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "NATS on 4222 is missing: run scripts/brokers.sh"
        );
        return;
    }
    install();
    let server = Microservice::new()
        .handler(GATED)
        .listen(format!("{NATS}?max_in_flight=1&subscription_capacity=1000"))
        .start()
        .await
        .unwrap();
    let client = Client::connect(NATS).await.unwrap();
    let sent = 3_000u64;
    for n in 0..sent {
        client.emit(GATED, n).await.unwrap();
    }
    let dropped = [("transport", "nats"), ("reason", "slow_consumer")];
    // With async-nats's default capacity (65,536) none would be dropped. Not every drop is
    // counted: async-nats reports each on a channel of its own that holds 128.
    let text = scrape_until("messages dropped", |t| {
        sample(t, "switchboard_messages_dropped_total", &dropped).is_some_and(|n| n >= 1.0)
    })
    .await;
    let n = sample(&text, "switchboard_messages_dropped_total", &dropped).unwrap();
    assert!(
        n <= (sent - 1_000) as f64,
        "{n} of {sent} dropped, more than did not fit"
    );
    GATE.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    client.close().await;
    server.shutdown().await.unwrap();
}
