#![cfg(all(feature = "http", feature = "grpc", feature = "brokers"))]
//! Health: the `switchboard.health` pattern on every transport, the HTTP endpoint
//! (`Microservice::health_http`), gRPC health checking, and the broker transports' readiness
//! when they lose their broker and get it back.
//!
//! The brokers are the ones `scripts/brokers.sh` starts on 127.0.0.1; a broker is taken away
//! by a TCP proxy in front of it that the test stops (closing every connection through it)
//! and starts again on the same port. Kafka runs on librdkafka's mock cluster in this process.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use switchboard::prelude::*;
use switchboard::server::{HEALTH_PATTERN, Health, HealthCheck, HealthReport, HealthStatus};
use switchboard::transport::grpc::tonic_health::pb::health_check_response::ServingStatus;
use switchboard::transport::grpc::tonic_health::pb::health_client::HealthClient;
use switchboard::transport::grpc::tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use switchboard::transport::grpc::{self, tonic};
use switchboard::transport::kafka::KafkaMock;
use switchboard::transport::{Listener, Shutdown, redact};
use switchboard::{Error, Router, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

const REDIS: &str = "127.0.0.1:6379";
const NATS: &str = "127.0.0.1:4222";
const MQTT: &str = "127.0.0.1:1883";
const AMQP: &str = "127.0.0.1:5672";
const FIX: &str = "run scripts/brokers.sh";

/// A name no other test (or run) uses on a shared broker.
fn unique(what: &str) -> String {
    format!("health-{what}-{}", std::process::id())
}

/// True when `what` answers on `addr`; otherwise fails under CI (or skips loudly).
async fn broker_up(what: &str, addr: &str) -> bool {
    let up = TcpStream::connect(addr).await.is_ok();
    if !up {
        common::missing(&format!("{what} on {addr}"), FIX);
    }
    up
}

/// Waits until `check` holds, asking every 100 ms for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 30 s");
}

/// The report a ready service named `name` gives, serving on `urls`.
fn ready_report(urls: &[String], name: Option<&str>) -> Value {
    let transports: Vec<Value> = urls.iter().map(|u| json!({"url": redact(u), "ready": true})).collect();
    let mut report = json!({"status": "ok", "live": true, "ready": true, "transports": transports});
    if let Some(name) = name {
        report["name"] = json!(name);
    }
    report
}

// ---------------------------------------------------------------------------------------
// The pattern on every transport.

/// Serves `echo` on `url` as a service named `name`, and checks that a client on the same
/// transport gets its health: the named pattern answers this service's report exactly; the
/// plain one too where only this service can answer it (`exact`), and otherwise the report
/// of some service (on a shared broker the first to answer does).
async fn pattern_answers(url: &str, name: &str, exact: bool) {
    let server = Microservice::new()
        .name(name)
        .handler(common::ECHO)
        .listen(url)
        .start()
        .await
        .expect("the service starts");
    let client = Client::connect(server.local_url())
        .await
        .expect("a client connects")
        .with_timeout(Duration::from_secs(10));
    let expected = ready_report(server.local_urls(), Some(name));

    let named: Value = client
        .send_raw(format!("{HEALTH_PATTERN}.{name}"), ())
        .await
        .expect("the named health pattern answers");
    assert_eq!(named, expected, "on {url}");
    let plain: Value = client
        .send_raw(HEALTH_PATTERN, ())
        .await
        .expect("switchboard.health answers");
    if exact {
        assert_eq!(plain, expected, "on {url}");
    } else {
        let some: HealthReport = serde_json::from_value(plain.clone()).expect("a health report");
        assert_eq!(some.status == HealthStatus::Ok, some.live && some.ready, "{plain}");
    }
    // The service's own patterns are untouched.
    let echoed: Value = client.send_raw("echo", json!({"a": 1})).await.expect("echo answers");
    assert_eq!(echoed, json!({"a": 1}));
    client.close().await;
    server.shutdown().await.expect("a clean shutdown");
}

#[tokio::test]
async fn pattern_over_mem() {
    pattern_answers("mem://health-pattern", &unique("mem"), true).await;
}

#[tokio::test]
async fn pattern_over_tcp() {
    pattern_answers("tcp://127.0.0.1:0", &unique("tcp"), true).await;
}

#[tokio::test]
async fn pattern_over_grpc() {
    pattern_answers("grpc://127.0.0.1:0", &unique("grpc"), true).await;
}

#[tokio::test]
async fn pattern_over_redis() {
    if broker_up("Redis", REDIS).await {
        pattern_answers(&format!("redis://{REDIS}"), &unique("redis"), false).await;
    }
}

#[tokio::test]
async fn pattern_over_nats() {
    if broker_up("NATS", NATS).await {
        pattern_answers(&format!("nats://{NATS}"), &unique("nats"), false).await;
    }
}

#[tokio::test]
async fn pattern_over_mqtt() {
    if broker_up("Mosquitto", MQTT).await {
        pattern_answers(&format!("mqtt://{MQTT}"), &unique("mqtt"), false).await;
    }
}

#[tokio::test]
async fn pattern_over_amqp() {
    if broker_up("RabbitMQ", AMQP).await {
        // A queue of its own: only this service reads it.
        let url = format!("amqp://{AMQP}?queue=sb-test-health-pattern&durable=false");
        pattern_answers(&url, &unique("amqp"), true).await;
    }
}

#[tokio::test]
async fn pattern_over_kafka() {
    // A cluster of its own: only this service consumes its topics.
    let cluster = KafkaMock::start().expect("librdkafka's mock cluster starts");
    let url = format!("kafka://{}?group=health&max_wait_ms=10", cluster.bootstrap());
    pattern_answers(&url, "health-kafka", true).await;
}

#[message_pattern("switchboard.health")]
async fn my_health() -> &'static str {
    "my own"
}

/// A service that handles `switchboard.health` itself answers it; the named form is still
/// the built-in one.
#[tokio::test]
async fn a_service_serving_the_pattern_answers_it_itself() {
    let server = Microservice::new()
        .name("mine")
        .handler(MY_HEALTH)
        .listen("mem://health-mine")
        .start()
        .await
        .unwrap();
    let client = Client::connect("mem://health-mine").await.unwrap();
    let plain: String = client.send_raw(HEALTH_PATTERN, ()).await.unwrap();
    assert_eq!(plain, "my own");
    let named: Value = client.send_raw("switchboard.health.mine", ()).await.unwrap();
    assert_eq!(named, ready_report(server.local_urls(), Some("mine")));
    server.shutdown().await.unwrap();
}

/// Where a broker's permissions leave the health subjects out, the pattern can be turned off:
/// nothing subscribes to it then, and the HTTP endpoint still answers.
#[tokio::test]
async fn the_pattern_can_be_turned_off() {
    let server = Microservice::new()
        .name("quiet")
        .handler(common::ECHO)
        .health_pattern(false)
        .listen("tcp://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    for pattern in [HEALTH_PATTERN, "switchboard.health.quiet"] {
        let asked = client.send_raw::<Value>(pattern, ()).await;
        assert!(matches!(asked, Err(Error::NoHandler { .. })), "{pattern}: {asked:?}");
    }
    let (status, body) = http(server.http_addr().unwrap(), "GET", "/health").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        ready_report(server.local_urls(), Some("quiet"))
    );
    server.shutdown().await.unwrap();
}

/// The built-in patterns are not handlers: a service of none is still refused.
#[tokio::test]
async fn a_service_of_no_handlers_is_still_refused() {
    let started = Microservice::new()
        .name("empty")
        .listen("mem://health-empty")
        .start()
        .await;
    assert!(matches!(started, Err(Error::NoHandlers)), "{started:?}");
    let router = Microservice::new().into_router();
    assert!(matches!(router, Err(Error::NoHandlers)), "{router:?}");
}

#[tokio::test]
async fn a_name_that_is_no_valid_subject_or_topic_is_refused() {
    let long = "x".repeat(201);
    for bad in [
        "",
        "a b",
        ".users",
        "users.",
        "a..b",
        "users*",
        "users>",
        "#",
        "ünï",
        long.as_str(),
    ] {
        let started = Microservice::new()
            .name(bad)
            .handler(common::ECHO)
            .listen("mem://health-bad-name")
            .start()
            .await;
        assert!(
            matches!(
                &started,
                Err(Error::InvalidConfig {
                    what: "service name",
                    ..
                })
            ),
            "{bad:?}: {started:?}"
        );
    }
    let ok = Microservice::new()
        .name("users-v2.eu_1")
        .handler(common::ECHO)
        .listen("mem://health-good-name")
        .start()
        .await
        .expect("a valid name");
    assert_eq!(ok.service_name(), Some("users-v2.eu_1"));
    ok.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The HTTP endpoint.

/// `method path` on a new connection to `addr`, as curl would send it; the status and body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr)
        .await
        .expect("the health endpoint takes connections");
    conn.write_all(format!("{method} {path} HTTP/1.1\r\nhost: test\r\naccept: */*\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("an answer, then the end");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, body.to_owned())
}

#[tokio::test]
async fn http_endpoint_answers_health_on_its_paths_and_nothing_else() {
    let server = Microservice::new()
        .name("web")
        .handler(common::ECHO)
        .listen("tcp://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().expect("an HTTP endpoint");
    assert_ne!(addr.port(), 0, "port 0 resolved");
    let expected = ready_report(server.local_urls(), Some("web"));
    for path in ["/health", "/health/ready", "/health/live", "/health?verbose=1"] {
        let (status, body) = http(addr, "GET", path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), expected, "{path}");
    }
    // The same report as the pattern's.
    let client = Client::connect(server.local_url()).await.unwrap();
    let over_tcp: Value = client.send_raw(HEALTH_PATTERN, ()).await.unwrap();
    assert_eq!(over_tcp, expected);

    assert_eq!(http(addr, "HEAD", "/health").await, (200, String::new()));
    for (method, path, want) in [
        ("POST", "/health", 405),
        ("DELETE", "/health/live", 405),
        ("GET", "/", 404),
        ("GET", "/metrics", 404),
        ("GET", "/health/", 404),
        ("GET", "/healthz", 404),
        ("POST", "/anything", 404),
    ] {
        assert_eq!(http(addr, method, path).await.0, want, "{method} {path}");
    }
    server.shutdown().await.unwrap();
}

/// A handler that stays in flight until released: what keeps a shutdown draining.
#[derive(Clone)]
struct Gate {
    entered: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Self {
        Gate {
            entered: Arc::new(Semaphore::new(0)),
            release: Arc::new(Semaphore::new(0)),
        }
    }

    async fn wait_entered(&self) {
        self.entered.acquire().await.unwrap().forget();
    }
}

#[message_pattern("health.held")]
async fn held(State(gate): State<Gate>) -> String {
    gate.entered.add_permits(1);
    gate.release.acquire().await.unwrap().forget();
    "released".into()
}

/// Starts a held call on `url`; returns once its handler runs, with its reply to come.
async fn hold(url: &str, gate: &Gate) -> JoinHandle<switchboard::Result<String>> {
    let client = Client::connect(url)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    let call = tokio::spawn(async move { client.send_raw::<String>("health.held", ()).await });
    gate.wait_entered().await;
    call
}

#[tokio::test]
async fn while_draining_the_endpoint_says_503_and_it_stops_with_the_service() {
    let gate = Gate::new();
    let server = Microservice::new()
        .with_state(gate.clone())
        .handler(HELD)
        .listen("tcp://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    let health = server.health();
    let call = hold(server.local_url(), &gate).await;
    assert_eq!(http(addr, "GET", "/health/ready").await.0, 200);

    let shutdown = tokio::spawn(server.shutdown());
    eventually("not ready once shutdown began", || async { health.is_draining() }).await;
    let (status, body) = http(addr, "GET", "/health").await;
    assert_eq!(status, 503, "{body}");
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (report.status, report.live, report.ready),
        (HealthStatus::Unavailable, true, false)
    );
    assert_eq!(http(addr, "GET", "/health/ready").await.0, 503);
    assert_eq!(http(addr, "GET", "/health/live").await.0, 200, "draining is still live");

    gate.release.add_permits(1);
    assert_eq!(
        call.await.unwrap().unwrap(),
        "released",
        "the request in flight finished"
    );
    shutdown.await.unwrap().expect("a clean shutdown");
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the endpoint stops with the service: {refused:?}");
}

/// A transport of its own whose `serve` ends (before shutdown) when told to.
struct Quitter {
    quit: tokio::sync::oneshot::Receiver<()>,
}

impl Listener for Quitter {
    fn local_url(&self) -> String {
        "quitter://here".into()
    }

    fn serve(self: Box<Self>, _router: Router, _shutdown: Shutdown) -> BoxFuture<'static, switchboard::Result<()>> {
        Box::pin(async move {
            let _ = self.quit.await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_transport_that_stops_on_its_own_makes_the_service_not_live() {
    let (quit, quitting) = tokio::sync::oneshot::channel();
    let server = Microservice::new()
        .handler(common::ECHO)
        .serve_on(Quitter { quit: quitting })
        .listen("tcp://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    assert_eq!(http(addr, "GET", "/health/live").await.0, 200);
    quit.send(()).unwrap();
    let health = server.health();
    eventually("not live once a transport stopped", || async { !health.is_live() }).await;
    assert_eq!(http(addr, "GET", "/health/live").await.0, 503);
    let (status, body) = http(addr, "GET", "/health").await;
    assert_eq!(status, 503);
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    let ready: Vec<(&str, bool)> = report.transports.iter().map(|t| (t.url.as_str(), t.ready)).collect();
    assert_eq!(
        ready,
        [("quitter://here", false), (server.local_urls()[1].as_str(), true)]
    );
    // The transport's end is reported by shutdown, as `run` would.
    assert!(matches!(server.shutdown().await, Err(Error::TransportStopped { .. })));
}

/// A client that sends half a request head and then nothing is cut off by the head timeout
/// (10 s of the paused clock, before the connection's 15 s deadline), without holding anyone
/// else up. The clock is paused: it moves only when every task waits, straight to the next
/// timer, so the times below are exact and take no real time.
#[tokio::test(start_paused = true)]
async fn a_slow_client_is_cut_off() {
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen("mem://health-slow")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    let began = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: slow\r\nx-trickle: ")
        .await
        .unwrap();
    assert_eq!(
        http(addr, "GET", "/health").await.0,
        200,
        "others are answered meanwhile"
    );
    // Closed (or reset) once its head timer fires, with nothing written back.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "still open after 60 s (of the paused clock)");
    let cut_after = began.elapsed();
    assert!(
        answer.is_empty(),
        "cut off without an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        cut_after >= Duration::from_secs(10) && cut_after < Duration::from_secs(15),
        "cut off by the 10 s head timeout, not later: {cut_after:?}"
    );
    assert_eq!(
        http(addr, "GET", "/health").await.0,
        200,
        "and the endpoint still answers"
    );
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// A broker that goes away: not ready, then ready again.

/// A TCP proxy to a broker, which the test takes away (closing every connection through
/// it) and brings back on the same port.
struct Proxy {
    port: u16,
    target: &'static str,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(target: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Proxy {
            port,
            target,
            task: Some(tokio::spawn(forward(listener, target))),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes the port and every connection through it.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("the proxy's port again");
        self.task = Some(tokio::spawn(forward(listener, self.target)));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn forward(listener: TcpListener, target: &'static str) {
    let mut conns = JoinSet::new();
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        conns.spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// The ready flag of the transport at `index` in a service's report.
fn transport_ready(health: &Health, index: usize) -> bool {
    health.report().transports[index].ready
}

/// Serves `echo` on `url` (a broker behind `proxy`); checks that the service is not ready
/// once the broker is away, and ready again once it is back.
async fn readiness_follows_the_broker(url: String, proxy: &mut Proxy) {
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen(&url)
        .start()
        .await
        .expect("the service starts");
    let health = server.health();
    assert!(health.is_ready(), "{:?}", health.report());
    proxy.stop().await;
    eventually(&format!("{url}: not ready once the broker is away"), || async {
        !health.is_ready()
    })
    .await;
    let report = health.report();
    assert_eq!(
        (report.status, report.live),
        (HealthStatus::Unavailable, true),
        "{report:?}"
    );
    assert!(!transport_ready(&health, 0));
    proxy.restart().await;
    eventually(&format!("{url}: ready once the broker is back"), || async {
        health.is_ready()
    })
    .await;
    // And it takes messages again.
    let client = Client::connect(server.local_url()).await.unwrap();
    let echoed: Value = client
        .with_timeout(Duration::from_secs(10))
        .send_raw("echo", 7)
        .await
        .expect("served again");
    assert_eq!(echoed, json!(7));
    client.close().await;
    server.shutdown().await.unwrap();
}

/// Redis away: `/health` is 503 and gRPC health `NOT_SERVING` (the gRPC transport itself is
/// fine, the service is not ready); back: 200 and `SERVING`.
#[tokio::test]
async fn redis_away_is_503_and_not_serving_then_back() {
    if !broker_up("Redis", REDIS).await {
        return;
    }
    let mut proxy = Proxy::start(REDIS).await;
    let server = Microservice::new()
        .name(unique("away"))
        .handler(common::ECHO)
        .listen("grpc://127.0.0.1:0")
        .listen(format!("redis://{}", proxy.addr()))
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    let mut grpc = HealthClient::new(grpc::channel(server.local_url()).await.unwrap());
    assert_eq!(http(addr, "GET", "/health").await.0, 200);
    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::Serving));

    proxy.stop().await;
    eventually("503 once Redis is away", || async {
        http(addr, "GET", "/health").await.0 == 503
    })
    .await;
    let (_, body) = http(addr, "GET", "/health").await;
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    let ready: Vec<bool> = report.transports.iter().map(|t| t.ready).collect();
    assert_eq!(ready, [true, false], "gRPC is fine, Redis is not: {body}");
    assert_eq!(http(addr, "GET", "/health/live").await.0, 200, "still live");
    eventually("NOT_SERVING once Redis is away", || {
        let mut grpc = grpc.clone();
        async move { check(&mut grpc, "").await == Ok(ServingStatus::NotServing) }
    })
    .await;

    proxy.restart().await;
    eventually("200 once Redis is back", || async {
        http(addr, "GET", "/health").await.0 == 200
    })
    .await;
    eventually("SERVING once Redis is back", || {
        let mut grpc = grpc.clone();
        async move { check(&mut grpc, "").await == Ok(ServingStatus::Serving) }
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn nats_readiness_follows_its_connection() {
    if broker_up("NATS", NATS).await {
        let mut proxy = Proxy::start(NATS).await;
        readiness_follows_the_broker(format!("nats://{}", proxy.addr()), &mut proxy).await;
    }
}

#[tokio::test]
async fn mqtt_readiness_follows_its_connection() {
    if broker_up("Mosquitto", MQTT).await {
        let mut proxy = Proxy::start(MQTT).await;
        readiness_follows_the_broker(format!("mqtt://{}", proxy.addr()), &mut proxy).await;
    }
}

#[tokio::test]
async fn amqp_readiness_follows_its_connection() {
    if broker_up("RabbitMQ", AMQP).await {
        let mut proxy = Proxy::start(AMQP).await;
        let url = format!("amqp://{}?queue=sb-test-health-ready&durable=false", proxy.addr());
        readiness_follows_the_broker(url, &mut proxy).await;
    }
}

#[tokio::test]
async fn redis_readiness_follows_its_connection() {
    if broker_up("Redis", REDIS).await {
        let mut proxy = Proxy::start(REDIS).await;
        readiness_follows_the_broker(format!("redis://{}", proxy.addr()), &mut proxy).await;
    }
}

#[tokio::test]
async fn kafka_readiness_follows_its_broker() {
    // A proxy would not do: Kafka clients connect to the address the broker advertises.
    let cluster = Arc::new(KafkaMock::start().expect("librdkafka's mock cluster starts"));
    let set_up = |up: bool| {
        let cluster = cluster.clone();
        tokio::task::spawn_blocking(move || cluster.set_up(up).expect("mock broker up/down"))
    };
    let url = format!("kafka://{}?group=health&session_timeout_ms=6000", cluster.bootstrap());
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen(&url)
        .start()
        .await
        .expect("the service starts");
    let health = server.health();
    assert!(health.is_ready(), "{:?}", health.report());
    set_up(false).await.unwrap();
    eventually("not ready once the broker is down", || async { !health.is_ready() }).await;
    assert!(health.is_live());
    set_up(true).await.unwrap();
    eventually("ready once the broker is up", || async { health.is_ready() }).await;
    server.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// gRPC health checking.

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Code> {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| s.code())
}

/// The next status of a `Watch` stream (`None` when it ended), within 30 s.
async fn next(watch: &mut tonic::Streaming<HealthCheckResponse>) -> Option<ServingStatus> {
    let next = tokio::time::timeout(Duration::from_secs(30), watch.next()).await;
    next.expect("a status, or the end, within 30 s")
        .map(|r| r.expect("a status, not an error").status())
}

#[tokio::test]
async fn grpc_health_is_serving_then_not_serving_once_shutdown_begins() {
    let gate = Gate::new();
    let server = Microservice::new()
        .name("heroes")
        .with_state(gate.clone())
        .handler(HELD)
        .listen("grpc://127.0.0.1:0")
        // A watch left open would hold the drain this long: the test would notice.
        .shutdown_timeout(Duration::from_secs(600))
        .start()
        .await
        .unwrap();
    let url = server.local_url().to_owned();
    let mut grpc = HealthClient::new(grpc::channel(&url).await.unwrap());
    for service in ["", "heroes", "switchboard.Switchboard"] {
        assert_eq!(
            check(&mut grpc, service).await,
            Ok(ServingStatus::Serving),
            "{service:?}"
        );
    }
    assert_eq!(check(&mut grpc, "villains").await, Err(tonic::Code::NotFound));
    let mut watch = grpc
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut watch).await, Some(ServingStatus::Serving));

    let call = hold(&url, &gate).await;
    let health = server.health();
    let shutdown = tokio::spawn(server.shutdown());
    assert_eq!(
        next(&mut watch).await,
        Some(ServingStatus::NotServing),
        "while draining"
    );
    assert!(health.is_draining() && !health.is_ready());
    assert_eq!(
        next(&mut watch).await,
        None,
        "the watch ends, so the drain does not wait for it"
    );
    gate.release.add_permits(1);
    assert_eq!(call.await.unwrap().unwrap(), "released");
    tokio::time::timeout(Duration::from_secs(60), shutdown)
        .await
        .expect("the drain did not wait for the watch")
        .unwrap()
        .expect("a clean shutdown");
}

/// `RunningServer` outlives nothing: dropped, its endpoint closes too.
#[tokio::test]
async fn dropping_the_server_closes_the_endpoint() {
    let server: RunningServer = Microservice::new()
        .handler(common::ECHO)
        .listen("mem://health-dropped")
        .health_http("127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    assert_eq!(http(addr, "GET", "/health").await.0, 200);
    drop(server);
    eventually("the port closed", || async { TcpStream::connect(addr).await.is_err() }).await;
}

// ---------------------------------------------------------------------------------------
// Checks of the service's own.

/// `PING` to the Redis at `addr` on a new connection, `+PONG` expected.
async fn redis_ping(addr: &str) -> Result<(), String> {
    let mut conn = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    conn.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut answer = [0u8; 7];
    conn.read_exact(&mut answer)
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    match &answer {
        b"+PONG\r\n" => Ok(()),
        other => Err(format!("answered {:?}", String::from_utf8_lossy(other))),
    }
}

/// A service whose own check pings Redis (through a proxy the test takes away): ready at
/// once (`start` ran the check), not ready while Redis is away though its transport is (503
/// on `/health/ready` with the check's reason, still live, gRPC health NOT_SERVING), ready
/// again when Redis is back.
#[tokio::test]
async fn a_check_of_the_service_s_own_follows_its_dependency() {
    if !broker_up("Redis", REDIS).await {
        return;
    }
    let mut proxy = Proxy::start(REDIS).await;
    let target = proxy.addr();
    let redis = HealthCheck::new("redis", move || {
        let target = target.clone();
        async move { redis_ping(&target).await }
    })
    .every(Duration::from_millis(100))
    .timeout(Duration::from_secs(2));
    let server = Microservice::new()
        .handler(common::ECHO)
        .listen("grpc://127.0.0.1:0")
        .health_http("127.0.0.1:0")
        .health_check(redis)
        .start()
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    let (status, body) = http(addr, "GET", "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["checks"], json!([{"name": "redis", "ready": true}]), "{report}");
    let mut grpc = HealthClient::new(grpc::channel(server.local_url()).await.unwrap());
    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::Serving));

    proxy.stop().await;
    eventually("not ready without Redis", || async {
        http(addr, "GET", "/health/ready").await.0 == 503
    })
    .await;
    let (_, body) = http(addr, "GET", "/health").await;
    let report: HealthReport = serde_json::from_str(&body).unwrap();
    assert!(report.live && !report.ready && report.transports[0].ready, "{report:?}");
    assert!(!report.checks[0].ready, "{report:?}");
    assert!(
        report.checks[0].error.as_deref().is_some_and(|e| !e.is_empty()),
        "{report:?}"
    );
    assert_eq!(http(addr, "GET", "/health/live").await.0, 200);
    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::NotServing));

    proxy.restart().await;
    eventually("ready with Redis back", || async {
        http(addr, "GET", "/health/ready").await.0 == 200
    })
    .await;
    assert_eq!(check(&mut grpc, "").await, Ok(ServingStatus::Serving));
    server.shutdown().await.unwrap();
}
