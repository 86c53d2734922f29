//! OpenTelemetry tracing on every transport, asserted on the spans a real exporter sends to
//! an OTLP collector in this process (examples/collector): one trace from a caller's span
//! through a service, a call that service makes and an event, with the names, kinds and
//! attributes pinned per transport; one trace across NestJS 12 and Rust, both ways, with the
//! NestJS side traced by examples/nestjs-tracing; and export over OTLP/HTTP set up from the
//! `OTEL_*` variables, to an HTTP collector in this process.

// Each transport's cases need its feature: `--features telemetry,brokers,grpc` runs them all.
#![cfg(feature = "telemetry")]

mod common;

use std::future::IntoFuture;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::nest::{self, NestServer};
use serde_json::{Value, json};

use example_collector::{Collector, SpanRecord};
use switchboard::prelude::*;
use switchboard::telemetry::Telemetry;
use tracing::Instrument;

/// The collector and the exporter, on a runtime of their own that outlives every test's.
struct Observed {
    collector: Collector,
    telemetry: Telemetry,
}

fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let collector = Collector::start("127.0.0.1:0").await.unwrap();
                let telemetry = switchboard::telemetry::builder("traced-tests")
                    .endpoint(&collector.endpoint)
                    .init()
                    .expect("telemetry starts");
                tx.send(Observed { collector, telemetry }).unwrap();
                std::future::pending::<()>().await
            })
        });
        rx.recv().unwrap()
    })
}

/// Every span exported so far once `done` holds of them (ours flushed meanwhile); `None` if
/// it does not within `within`.
async fn exported(within: Duration, done: impl Fn(&[SpanRecord]) -> bool) -> Option<Vec<SpanRecord>> {
    let observed = observed();
    let flush = || {
        let _ = observed.telemetry.flush();
    };
    observed.collector.wait_for(within, flush, done).await
}

/// The client `front` calls, set once the service's URL is known.
#[derive(Clone, Default)]
struct Downstream(Arc<OnceLock<Client>>);

#[message_pattern("traced.front")]
async fn front(n: i64, State(down): State<Downstream>) -> RpcResult<i64> {
    tracing::info!(n, "front calls add_one");
    let client = down.0.get().expect("the downstream client is set");
    Ok(client.send(ADD_ONE, n).await?)
}

#[message_pattern("traced.add_one")]
async fn add_one(n: i64) -> i64 {
    n + 1
}

#[event_pattern("traced.seen")]
async fn seen(n: i64) {
    let _work = tracing::info_span!("inner work", n).entered();
}

#[message_pattern("traced.fails")]
async fn fails() -> RpcResult<()> {
    Err(RpcError::new("no such thing"))
}

/// What every transport must export, `{s}` being its `messaging.system`: the caller's span,
/// the request's spans (and those of the call its handler makes) under it, the event's, a
/// handler's own span under its message's, and a failed call marked as such.
const EXPECTED: &str = "\
case {s} [internal]
  send traced.fails [client] error.type=rpc_error messaging.destination.name=traced.fails messaging.message.body.size=4 messaging.operation.name=send messaging.operation.type=send messaging.system={s} !error
    process traced.fails [server] error.type=rpc_error messaging.destination.name=traced.fails messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request !error
  send traced.front [client] messaging.destination.name=traced.front messaging.message.body.size=2 messaging.operation.name=send messaging.operation.type=send messaging.system={s}
    process traced.front [server] messaging.destination.name=traced.front messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request
      send traced.add_one [client] messaging.destination.name=traced.add_one messaging.message.body.size=2 messaging.operation.name=send messaging.operation.type=send messaging.system={s}
        process traced.add_one [server] messaging.destination.name=traced.add_one messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=request
  send traced.seen [producer] messaging.destination.name=traced.seen messaging.message.body.size=1 messaging.operation.name=emit messaging.operation.type=send messaging.system={s}
    process traced.seen [consumer] messaging.destination.name=traced.seen messaging.operation.name=process messaging.operation.type=process messaging.system={s} switchboard.kind=event link=parent
      inner work [internal]
";

async fn traced(system: &str, server_url: &str, client_url: impl FnOnce(&str) -> String) {
    let observed = observed();
    let down = Downstream::default();
    let server = Microservice::new()
        .with_state(down.clone())
        .handler(FRONT)
        .handler(ADD_ONE)
        .handler(SEEN)
        .handler(FAILS)
        .listen(server_url)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{system}: the service starts ({e}); run scripts/brokers.sh"));
    let url = client_url(server.local_url());
    down.0.set(Client::connect(&url).await.unwrap()).unwrap();
    let client = Client::connect(&url).await.unwrap();

    let root = tracing::info_span!("case", otel.name = format!("case {system}"));
    async {
        assert_eq!(client.send(FRONT, 41).await.unwrap(), 42);
        client.emit(SEEN, 7).await.unwrap();
        client.send(FAILS, ()).await.unwrap_err();
    }
    .instrument(root)
    .await;

    let root_name = format!("case {system}");
    let spans = exported(Duration::from_secs(20), |spans| {
        render(spans, &root_name).is_some_and(|t| t.lines().count() >= 10)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{system}: the spans did not arrive within 20 s: {:#?}",
            observed.collector.spans()
        )
    });
    let tree = render(&spans, &root_name).unwrap();
    let mut expected = EXPECTED.replace("{s}", system);
    if system == "mem" {
        // In-process requests hand their payloads over as values, never encoded.
        for line in [
            "send traced.fails [client]",
            "send traced.front [client]",
            "send traced.add_one [client]",
        ] {
            let at = expected.find(line).unwrap();
            let end = at + expected[at..].find('\n').unwrap();
            let cut = expected[at..end]
                .replace(" messaging.message.body.size=2", "")
                .replace(" messaging.message.body.size=4", "");
            expected.replace_range(at..end, &cut);
        }
    }
    assert_eq!(tree, expected, "{system}: spans as exported:\n{tree}");

    // Every span of the trace is this service's.
    let trace = &spans.iter().find(|s| s.name == root_name).unwrap().trace_id;
    assert!(
        spans
            .iter()
            .filter(|s| &s.trace_id == trace)
            .all(|s| s.service == "traced-tests")
    );
    server.shutdown().await.unwrap();
}

/// The trace whose root is named `root` as a tree (see `example_collector::render`), with
/// the messaging and error attributes; `None` until the root has arrived.
fn render(spans: &[SpanRecord], root: &str) -> Option<String> {
    let root = spans.iter().find(|s| s.name == root)?;
    let tree = example_collector::render(spans, &root.trace_id, |k| {
        k.starts_with("messaging.") || k.starts_with("error.") || k.starts_with("switchboard.")
    });
    Some(tree.replace(" (traced-tests)", ""))
}

fn same(url: &str) -> String {
    url.to_owned()
}

#[tokio::test]
async fn in_process() {
    traced("mem", "mem://traced", same).await;
}

#[tokio::test]
async fn tcp() {
    traced("tcp", "tcp://127.0.0.1:0", same).await;
}

#[cfg(feature = "grpc")]
#[tokio::test]
async fn grpc() {
    traced("grpc", "grpc://127.0.0.1:0", same).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis() {
    traced("redis", "redis://127.0.0.1:6379", same).await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn nats() {
    traced("nats", "nats://127.0.0.1:4222", same).await;
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt() {
    traced("mqtt", "mqtt://127.0.0.1:1883", same).await;
}

#[cfg(feature = "amqp")]
#[tokio::test]
async fn rabbitmq() {
    traced("rabbitmq", "amqp://127.0.0.1:5672?queue=sb-traced&durable=false", same).await;
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka() {
    let cluster = switchboard::transport::kafka::KafkaMock::start().expect("librdkafka's mock cluster starts");
    let url = format!("kafka://{}?session_timeout_ms=6000", cluster.bootstrap());
    traced("kafka", &url, same).await;
}

#[derive(Deserialize)]
struct Relay {
    url: String,
    pattern: String,
    data: Value,
}

/// Calls `pattern` at `url`: the Rust hop between two NestJS services.
#[message_pattern("traced.nest.relay")]
async fn nest_relay(relay: Relay) -> RpcResult<Value> {
    let client = Client::connect(&relay.url).await?;
    Ok(client.send_raw::<Value>(relay.pattern.as_str(), relay.data).await?)
}

#[message_pattern("traced.nest.add")]
async fn nest_add(n: i64) -> i64 {
    n + 1
}

/// The spans of `trace` once it holds `chain` (each (service, name) the child of the one
/// before), flushing ours meanwhile; panics with what arrived otherwise.
async fn chain(trace: &str, chain: &[(&str, &str, &str)]) -> Vec<SpanRecord> {
    let observed = observed();
    let holds = |spans: &[SpanRecord]| {
        let mut parent: Option<&SpanRecord> = None;
        for (service, name, kind) in chain {
            let found = spans.iter().find(|s| {
                s.trace_id == trace
                    && s.service == *service
                    && s.name == *name
                    && s.kind == *kind
                    && parent.is_none_or(|p| s.parent == p.span_id)
            });
            match found {
                Some(s) => parent = Some(s),
                None => return false,
            }
        }
        true
    };
    exported(Duration::from_secs(30), holds).await.unwrap_or_else(|| {
        panic!(
            "trace {trace} does not hold {chain:?}; as received:\n{}",
            observed.collector.tree(trace, |k| k == "messaging.system")
        )
    })
}

/// A NestJS 12 client → a Switchboard service → a NestJS 12 service, on `url`'s transport
/// (`tcp://127.0.0.1:0` for a port each): one trace, each hop the child of the one before.
async fn nest_to_rust_to_nest(url: &str) {
    nest_rust_nest(url, url, json!(7)).await;
}

/// [`nest_to_rust_to_nest`] with the NestJS services on `nest_url`, the Switchboard one on
/// `rust_url`, relaying `data`: the trace's id and spans, `None` without NestJS 12 (skipped).
async fn nest_rust_nest(nest_url: &str, rust_url: &str, data: serde_json::Value) -> Option<(String, Vec<SpanRecord>)> {
    if !nest::nest_installed(12, nest_url) {
        return None;
    }
    let endpoint = observed().collector.endpoint.clone();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let nest_b = NestServer::start_with(12, nest_url, &["--trace", "nest-b"], &env).await;
    let rust = Microservice::new()
        .handler(NEST_RELAY)
        .listen(rust_url)
        .start()
        .await
        .unwrap();
    let ops = [
        nest::send(
            json!("traced.nest.relay"),
            json!({"url": nest_b.url(), "pattern": "echo", "data": data}),
        ),
        json!({"op": "traceparent"}),
    ];
    let results = nest::nest_client_with(12, rust.local_url(), &ops, &["--trace", "nest-client"], &env).await;
    assert_eq!(results[0], json!({ "ok": [data] }), "{results:?}");
    let traceparent = results[1]["ok"].as_str().unwrap_or_else(|| panic!("{results:?}"));
    let trace = traceparent.split('-').nth(1).unwrap().to_owned();
    let spans = chain(
        &trace,
        &[
            ("nest-client", "send traced.nest.relay", "client"),
            ("traced-tests", "process traced.nest.relay", "server"),
            ("traced-tests", "send echo", "client"),
            ("nest-b", "process echo", "server"),
        ],
    )
    .await;
    rust.shutdown().await.unwrap();
    Some((trace, spans))
}

/// A Switchboard client → a NestJS 12 service → a Switchboard service: one trace.
async fn rust_to_nest_to_rust(url: &str, system: &str) {
    if !nest::nest_installed(12, url) {
        return;
    }
    let endpoint = observed().collector.endpoint.clone();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let nest_a = NestServer::start_with(12, url, &["--trace", "nest-a"], &env).await;
    let rust = Microservice::new().handler(NEST_ADD).listen(url).start().await.unwrap();
    let client = Client::connect(nest_a.url()).await.unwrap();
    let root_name = format!("reverse {system}");
    let root = tracing::info_span!("case", otel.name = root_name.as_str());
    let relay = json!({"url": rust.local_url(), "pattern": "traced.nest.add", "data": 1});
    // A call is sent when first polled, so an instrumented call is in its span.
    let relayed: Value = client
        .send_raw("relay", relay)
        .into_future()
        .instrument(root)
        .await
        .unwrap();
    assert_eq!(relayed, json!(2));
    let spans = exported(Duration::from_secs(20), |spans| {
        spans.iter().any(|s| s.name == root_name)
    })
    .await
    .expect("the root span is exported");
    let trace = spans.iter().find(|s| s.name == root_name).unwrap().trace_id.clone();
    chain(
        &trace,
        &[
            ("traced-tests", root_name.as_str(), "internal"),
            ("traced-tests", "send relay", "client"),
            ("nest-a", "process relay", "server"),
            ("nest-a", "send traced.nest.add", "client"),
            ("traced-tests", "process traced.nest.add", "server"),
        ],
    )
    .await;
    rust.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_tcp() {
    nest_to_rust_to_nest("tcp://127.0.0.1:0").await;
    rust_to_nest_to_rust("tcp://127.0.0.1:0", "tcp").await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_redis() {
    nest_to_rust_to_nest("redis://127.0.0.1:6379").await;
    rust_to_nest_to_rust("redis://127.0.0.1:6379", "redis").await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_nats() {
    nest_to_rust_to_nest("nats://127.0.0.1:4222").await;
    rust_to_nest_to_rust("nats://127.0.0.1:4222", "nats").await;
}

/// Kafka, whose NestJS serializer drops `metadata`: the context travels as record headers both
/// ways (examples/nestjs-tracing wraps the NestJS client's payload as a Kafka message with
/// headers; its interceptor reads them from `KafkaContext`). A NestJS 12 client → a Switchboard
/// service → a NestJS 12 service, on librdkafka's mock cluster: one trace. (The NestJS peer's
/// `relay` does not speak Kafka, so the reverse trip is the Rust → NestJS hop of this one.)
#[cfg(feature = "kafka")]
#[tokio::test]
async fn one_trace_across_nestjs_and_rust_over_kafka() {
    let cluster = switchboard::transport::kafka::KafkaMock::start().expect("librdkafka's mock cluster starts");
    let url = |group: &str| format!("kafka://{}?group={group}&max_wait_ms=100", cluster.bootstrap());
    // An object: NestJS's Kafka parser reads a bare number in a reply as text.
    let Some((trace, spans)) = nest_rust_nest(&url("traced-nest"), &url("traced-rust"), json!({"n": 7})).await else {
        return;
    };
    let kafka = |s: &&SpanRecord| s.trace_id == trace && s.name != "client send";
    assert!(
        spans
            .iter()
            .filter(kafka)
            .all(|s| s.attributes.get("messaging.system").map(String::as_str) == Some("kafka")),
        "{spans:#?}"
    );
}

/// A pattern nobody serves is the sender's text: its span is named `process (unmatched)`, so
/// senders cannot grow the set of span names; the text stays, escaped, as its destination.
#[tokio::test]
async fn unmatched_patterns_share_one_span_name() {
    observed(); // tracing set up before the service starts
    let server = Microservice::new()
        .handler(ADD_ONE)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    let root = tracing::info_span!("case", otel.name = "case unmatched");
    let err = async { client.send_raw::<Value>("traced.nobody\n", json!(1)).await }
        .instrument(root)
        .await
        .unwrap_err();
    assert!(matches!(err, switchboard::Error::NoHandler { .. }), "{err}");
    let spans = exported(Duration::from_secs(20), |spans| {
        render(spans, "case unmatched").is_some_and(|t| t.lines().count() >= 3)
    })
    .await
    .expect("the spans arrive");
    let tree = render(&spans, "case unmatched").unwrap();
    assert!(
        tree.contains(
            "process (unmatched) [server] error.type=no_handler messaging.destination.name=traced.nobody\\n "
        ),
        "{tree}"
    );
    server.shutdown().await.unwrap();
}

// OTLP over HTTP. The exporter is set up from `OTEL_*` variables, so each case runs its calls
// in a child process (this test binary, the same test, with `SB_OTLP_CHILD` set) whose spans
// reach an OTLP/HTTP collector in this process.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// What the child does, in `SB_OTLP_CHILD`: `calls` (tracing from `init`), `each` (exporting
/// each span as it ends) or `bad` (`init` must refuse the protocol).
const CHILD: &str = "SB_OTLP_CHILD";
/// A token in `OTEL_EXPORTER_OTLP_HEADERS`: it must reach the collector and nothing else.
const TOKEN: &str = "hunter2-otlp";

/// One POST the collector received.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    content_type: String,
    authorization: String,
    user_agent: String,
}

/// An OTLP/HTTP collector (HTTP/1.1, `application/x-protobuf` or `application/json`): every
/// POST on any path, and the spans of those it could decode.
#[derive(Clone, Default)]
struct HttpCollector {
    posts: Arc<std::sync::Mutex<Vec<Post>>>,
    spans: Arc<std::sync::Mutex<Vec<SpanRecord>>>,
}

impl HttpCollector {
    /// Listens on a free port; its `http://127.0.0.1:<port>`.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(collector.clone().serve(stream));
            }
        });
        base
    }

    /// Listens over TLS on a free port, with `pki`'s server certificate, and takes only
    /// clients with a certificate from its CA; its `https://localhost:<port>`.
    async fn start_tls(&self, pki: &Pki) -> String {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, server::WebPkiClientVerifier};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(pem_certs(&pki.ca_pem).remove(0)).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(pem_certs(&pki.server_cert), key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let collector = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (collector, acceptor) = (collector.clone(), acceptor.clone());
                tokio::spawn(async move {
                    // A client the verifier refuses ends here: nothing is posted.
                    if let Ok(tls) = acceptor.accept(stream).await {
                        collector.serve(tls).await;
                    }
                });
            }
        });
        base
    }

    async fn serve<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let collector = self.clone();
            async move { Ok::<_, std::convert::Infallible>(collector.receive(req).await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    }

    async fn receive(&self, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let post = Post {
            path: req.uri().path().to_owned(),
            content_type: header("content-type"),
            authorization: header("authorization"),
            user_agent: header("user-agent"),
        };
        let answer = |status: u16, body: &'static [u8]| {
            hyper::Response::builder()
                .status(status)
                .header("content-type", post.content_type.as_str())
                .body(Full::new(Bytes::from_static(body)))
                .unwrap()
        };
        if req.method() != hyper::Method::POST {
            return answer(405, b"");
        }
        let Ok(body) = Limited::new(req.into_body(), 16 << 20).collect().await else {
            return answer(413, b"");
        };
        let body = body.to_bytes();
        let decoded = match post.content_type.as_str() {
            "application/x-protobuf" => ExportTraceServiceRequest::decode(body).ok(),
            "application/json" => serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok(),
            _ => None,
        };
        self.posts.lock().unwrap().push(post.clone());
        let Some(request) = decoded else {
            return answer(400, b"");
        };
        self.spans.lock().unwrap().extend(example_collector::records(request));
        // An empty ExportTraceServiceResponse: no bytes in protobuf, `{}` in JSON.
        match post.content_type.as_str() {
            "application/json" => answer(200, b"{}"),
            _ => answer(200, b""),
        }
    }
}

/// Runs `test` (this very test) again in a child process with only `env` of the `OTEL_*`
/// variables, and what it prints; panics if it does not end within 60 s.
async fn child(test: &str, mode: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        // Everything the child logs is looked through for the token.
        .env("RUST_LOG", "trace")
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the child ends within 60 s")
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, printed)
}

/// In the child: tracing set up from the environment, then over TCP the calls of [`EXPECTED`]
/// but the event (whose handling could outlast the exit), in a root span `case tcp`; the spans
/// are exported when `Telemetry` is dropped at the end.
async fn child_calls(mode: &str) {
    let telemetry = match mode {
        "each" => switchboard::telemetry::builder("traced-tests")
            .export_each_span()
            .init(),
        _ => switchboard::telemetry::init("traced-tests"),
    }
    .expect("telemetry starts from the environment");
    assert_eq!(format!("{telemetry:?}"), "Telemetry { .. }");
    let down = Downstream::default();
    let server = Microservice::new()
        .with_state(down.clone())
        .handler(FRONT)
        .handler(ADD_ONE)
        .handler(FAILS)
        .listen("tcp://127.0.0.1:0")
        .start()
        .await
        .unwrap();
    down.0.set(Client::connect(server.local_url()).await.unwrap()).unwrap();
    let client = Client::connect(server.local_url()).await.unwrap();
    async {
        assert_eq!(client.send(FRONT, 41).await.unwrap(), 42);
        client.send(FAILS, ()).await.unwrap_err();
    }
    .instrument(tracing::info_span!("case", otel.name = "case tcp"))
    .await;
    server.shutdown().await.unwrap();
    telemetry.shutdown();
}

/// The child's trace as the collector got it, once its root and six spans under it arrived
/// (they have when the child exits; the wait only bounds a slow machine).
async fn child_trace(collector: &HttpCollector) -> String {
    child_trace_of(|| collector.spans.lock().unwrap().clone()).await
}

/// [`child_trace`] of the spans `received` returns.
async fn child_trace_of(received: impl Fn() -> Vec<SpanRecord>) -> String {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let spans = received();
        let tree = render(&spans, "case tcp");
        if tree.as_ref().is_some_and(|t| t.lines().count() >= 7) || tokio::time::Instant::now() > until {
            return tree.unwrap_or_else(|| panic!("no root span arrived: {spans:#?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The request part of [`EXPECTED`] over TCP.
fn expected_over_tcp() -> String {
    EXPECTED
        .replace("{s}", "tcp")
        .lines()
        .take(7)
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf` and the generic endpoint (to which
/// `/v1/traces` is appended): the spans of a call over TCP, its handler's call and a failed
/// call arrive as one trace with each span under its parent; the headers of
/// `OTEL_EXPORTER_OTLP_HEADERS` reach the collector and nothing the child prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_protobuf() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_calls(&mode).await;
    }
    let collector = HttpCollector::default();
    let base = collector.start().await;
    let headers = format!("authorization=Bearer%20{TOKEN},x-tenant=acme");
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_EXPORTER_OTLP_HEADERS", headers.as_str()),
    ];
    // Batched (`init`), and each span exported from the thread that ends it.
    for mode in ["calls", "each"] {
        collector.spans.lock().unwrap().clear();
        let (status, printed) = child("otlp_over_http_protobuf", mode, &env).await;
        assert!(status.success(), "{mode}: the child failed:\n{printed}");
        assert!(!printed.contains(TOKEN), "{mode}: the token was printed:\n{printed}");
        assert!(
            printed.contains("front calls add_one"),
            "{mode}: the child logs at trace:\n{printed}"
        );
        let tree = child_trace(&collector).await;
        assert_eq!(tree, expected_over_tcp(), "{mode}: spans as exported:\n{tree}");
    }
    let posts = collector.posts.lock().unwrap().clone();
    assert!(!posts.is_empty());
    for post in posts {
        assert_eq!(post.path, "/v1/traces", "{post:?}");
        assert_eq!(post.content_type, "application/x-protobuf", "{post:?}");
        assert_eq!(post.authorization, format!("Bearer {TOKEN}"), "{post:?}");
        // The SDK's exports (the application's spans) and Switchboard's own.
        assert!(
            post.user_agent.starts_with("OTel-OTLP-Exporter-Rust/") || post.user_agent.starts_with("switchboard/"),
            "{post:?}"
        );
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json` and the per-signal endpoint, used as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_json() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_calls(&mode).await;
    }
    let collector = HttpCollector::default();
    let endpoint = format!("{}/collect/traces", collector.start().await);
    let env = [
        // The per-signal variables win over the generic ones.
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        // Switchboard's spans in the logs too: a handler's lines carry its message's trace id.
        ("RUST_LOG", "trace,switchboard::telemetry=info"),
    ];
    let (status, printed) = child("otlp_over_http_json", "calls", &env).await;
    assert!(status.success(), "the child failed:\n{printed}");
    let tree = child_trace(&collector).await;
    assert_eq!(tree, expected_over_tcp(), "spans as exported:\n{tree}");
    let spans = collector.spans.lock().unwrap().clone();
    let trace = &spans.iter().find(|s| s.name == "case tcp").unwrap().trace_id;
    let plain = strip_ansi(&printed);
    let line = plain
        .lines()
        .find(|l| l.contains("front calls add_one"))
        .unwrap_or_else(|| panic!("the handler's line is missing:\n{plain}"));
    assert!(
        line.contains(&format!("trace_id={trace}")) && line.contains("process traced.front"),
        "{line}"
    );
    for post in collector.posts.lock().unwrap().iter() {
        assert_eq!(post.path, "/collect/traces", "{post:?}");
        assert_eq!(post.content_type, "application/json", "{post:?}");
    }
}

/// `text` without its terminal colours.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                chars.by_ref().find(|&c| c == 'm');
            }
            c => plain.push(c),
        }
    }
    plain
}

/// A protocol `init` does not know is an error naming the variable and the choices (the SDK
/// alone would fall back to its default without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_otlp_protocol_fails_init() {
    if std::env::var(CHILD).is_ok() {
        return child_init_fails();
    }
    let env = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml")];
    let printed = init_refusal("an_unknown_otlp_protocol_fails_init", &env).await;
    assert!(
        printed.contains(
            "init: invalid telemetry: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: unknown OTLP protocol `http/xml`: \
             expected grpc, http/protobuf or http/json"
        ),
        "{printed}"
    );
}

/// In the child: `init` must refuse the environment; what it said is printed.
fn child_init_fails() {
    let err = switchboard::telemetry::init("traced-tests").unwrap_err();
    assert!(matches!(err, switchboard::Error::InvalidConfig { .. }), "{err:?}");
    println!("init: {err}");
}

/// What a child of `test` with `env` printed, once [`child_init_fails`] passed in it.
async fn init_refusal(test: &str, env: &[(&str, &str)]) -> String {
    let (status, printed) = child(test, "bad", env).await;
    assert!(status.success(), "the child failed:\n{printed}");
    printed
}

/// A header gRPC cannot carry fails `init` with an error, not a panic (the exporter's runtime
/// was dropped inside the caller's), and its value is not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_grpc_cannot_carry_fails_init() {
    if std::env::var(CHILD).is_ok() {
        return child_init_fails();
    }
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-token=s3cret%0Aline"),
    ];
    let printed = init_refusal("a_header_grpc_cannot_carry_fails_init", &env).await;
    assert!(
        printed.contains("init: invalid telemetry: OTEL_EXPORTER_OTLP_HEADERS holds a header gRPC cannot carry")
            && !printed.contains("s3cret"),
        "{printed}"
    );
}

// OTLP over TLS, to collectors that take only clients with a certificate from their CA.

/// A CA, a server certificate for `localhost` and a client certificate, both signed by the
/// CA; the CA and the client's files written to a directory of their own.
struct Pki {
    _dir: tempfile::TempDir,
    ca_pem: String,
    server_cert: String,
    server_key: String,
    ca_path: String,
    client_cert_path: String,
    client_key_path: String,
    /// A line of the client key's PEM: it must never be printed.
    client_key_line: String,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "switchboard test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &*ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("traced-tests", ExtendedKeyUsagePurpose::ClientAuth);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };
        Pki {
            ca_path: write("ca.pem", &ca.pem()),
            client_cert_path: write("client.pem", &client_cert),
            client_key_path: write("client-key.pem", &client_key),
            client_key_line: client_key.lines().nth(1).unwrap().to_owned(),
            ca_pem: ca.pem(),
            server_cert,
            server_key,
            _dir: dir,
        }
    }

    /// The variables that name the CA and the client's certificate and key.
    fn env(&self) -> [(&'static str, &str); 3] {
        [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", self.ca_path.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", self.client_cert_path.as_str()),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", self.client_key_path.as_str()),
        ]
    }
}

fn pem_certs(pem: &str) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// OTLP/HTTP to an `https` endpoint with the CA and a client certificate from the
/// `OTEL_EXPORTER_OTLP_*` variables: the trace arrives whole, and nothing of the key is
/// printed. Without the CA (the system's roots do not know it) the collector gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_https_with_a_client_certificate() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_calls(&mode).await;
    }
    let pki = Pki::new();
    let collector = HttpCollector::default();
    let base = collector.start_tls(&pki).await;
    let protocol = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str());

    let mut env = vec![protocol, endpoint];
    env.extend(pki.env());
    let (status, printed) = child("otlp_over_https_with_a_client_certificate", "calls", &env).await;
    assert!(status.success(), "the child failed:\n{printed}");
    assert!(
        !printed.contains(&pki.client_key_line),
        "the key was printed:\n{printed}"
    );
    let tree = child_trace(&collector).await;
    assert_eq!(tree, expected_over_tcp(), "spans as exported:\n{tree}");

    // The collector's certificate is not trusted: the child still runs, its spans go nowhere.
    collector.posts.lock().unwrap().clear();
    let env = [protocol, endpoint, pki.env()[1], pki.env()[2]];
    let (status, printed) = child("otlp_over_https_with_a_client_certificate", "calls", &env).await;
    assert!(status.success(), "the child failed:\n{printed}");
    // The child exported (and failed) before it exited: nothing can still arrive.
    assert!(collector.posts.lock().unwrap().is_empty());
}

/// OTLP/gRPC (the default protocol) to an `https` endpoint, with the same variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_grpc_tls_with_a_client_certificate() {
    if let Ok(mode) = std::env::var(CHILD) {
        return child_calls(&mode).await;
    }
    let pki = Pki::new();
    let collector = Collector::start_tls("127.0.0.1:0", &pki.server_cert, &pki.server_key, &pki.ca_pem)
        .await
        .unwrap();
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str())];
    env.extend(pki.env());
    let (status, printed) = child("otlp_over_grpc_tls_with_a_client_certificate", "calls", &env).await;
    assert!(status.success(), "the child failed:\n{printed}");
    assert!(
        !printed.contains(&pki.client_key_line),
        "the key was printed:\n{printed}"
    );
    let tree = child_trace_of(|| collector.spans()).await;
    assert_eq!(tree, expected_over_tcp(), "spans as exported:\n{tree}");
}

/// An `https` endpoint whose CA file holds no certificate fails `init`, naming the variable,
/// over gRPC (whose own TLS would read the file only when it first connects) as over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_without_a_certificate_fails_init() {
    if std::env::var(CHILD).is_ok() {
        return child_init_fails();
    }
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_string_lossy().into_owned();
    for protocol in ["grpc", "http/protobuf"] {
        let env = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://localhost:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", junk.as_str()),
        ];
        let printed = init_refusal("a_ca_file_without_a_certificate_fails_init", &env).await;
        assert!(
            printed.contains(
                "init: invalid telemetry: OTEL_EXPORTER_OTLP_CERTIFICATE: no certificate in PEM form in the file"
            ),
            "{protocol}: {printed}"
        );
    }
}
