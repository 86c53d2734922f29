//! A small OTLP/gRPC trace collector: it keeps every span exporters send it, so the demo can
//! print a trace as a tree and tests can assert on real exported parent, child and link ids.
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() {
//! let collector = example_collector::Collector::start("127.0.0.1:0").await.unwrap();
//! // OTEL_EXPORTER_OTLP_ENDPOINT=<collector.endpoint> for the services, then:
//! for trace in collector.trace_ids() {
//!     print!("{}", collector.tree(&trace, |_| true));
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

mod count;

/// One exported span, with ids as lowercase hex.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent: String,
    pub name: String,
    /// `client`, `server`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    pub error: bool,
}

#[derive(Clone, Default)]
struct Store {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    /// Spans received.
    received: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let n: usize = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.spans.lock().unwrap().extend(records(request));
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The spans of an export request (decoded from OTLP/gRPC, or from an OTLP/HTTP body by
/// whoever received it), as records.
pub fn records(request: ExportTraceServiceRequest) -> Vec<SpanRecord> {
    let mut records = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(value)
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            records.push(SpanRecord {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                kind: match span.kind {
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "internal",
                },
                attributes: span.attributes.iter().map(|kv| (kv.key.clone(), value(kv))).collect(),
                links: span.links.iter().map(|l| (hex(&l.trace_id), hex(&l.span_id))).collect(),
                error: span.status.is_some_and(|s| s.code == 2),
            });
        }
    }
    records
}

fn value(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running collector.
#[derive(Clone)]
pub struct Collector {
    /// `http://127.0.0.1:<port>`, for an exporter.
    pub endpoint: String,
    store: Store,
}

impl Collector {
    /// Listens on `addr` (`127.0.0.1:0` for a free port), serving on the current runtime.
    pub async fn start(addr: &str) -> std::io::Result<Collector> {
        Self::serve(addr, false).await
    }

    /// A collector that only counts the spans it receives (for load: nothing is kept).
    pub async fn counting(addr: &str) -> std::io::Result<Collector> {
        Self::serve(addr, true).await
    }

    /// How many spans were received.
    pub fn received(&self) -> u64 {
        self.store.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A collector over TLS (`https://localhost:<port>`, for a certificate that names
    /// `localhost`): its certificate chain and key, and the CA whose certificates clients must
    /// present (mutual TLS), all PEM.
    pub async fn start_tls(addr: &str, cert: &str, key: &str, client_ca: &str) -> std::io::Result<Collector> {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(client_ca));
        Self::serve_with(addr, false, Some(tls)).await
    }

    async fn serve(addr: &str, count_only: bool) -> std::io::Result<Collector> {
        Self::serve_with(addr, count_only, None).await
    }

    async fn serve_with(addr: &str, count_only: bool, tls: Option<ServerTlsConfig>) -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let endpoint = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://{}", listener.local_addr()?),
        };
        let store = Store::default();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).map_err(std::io::Error::other)?;
        }
        // As real collectors do: without it, each answer waits out a delayed ACK (40 ms).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        match count_only {
            true => tokio::spawn(
                server
                    .add_service(count::Counting(store.received.clone()))
                    .serve_with_incoming(incoming),
            ),
            false => tokio::spawn(
                server
                    .add_service(TraceServiceServer::new(store.clone()))
                    .serve_with_incoming(incoming),
            ),
        };
        Ok(Collector { endpoint, store })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.store.spans.lock().unwrap().clone()
    }

    /// The trace ids received so far, in the order their first span arrived.
    pub fn trace_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for s in self.store.spans.lock().unwrap().iter() {
            if !ids.contains(&s.trace_id) {
                ids.push(s.trace_id.clone());
            }
        }
        ids
    }

    /// The spans once `done` holds of them, calling `flush` (the exporter's, if in this
    /// process) between looks; `None` if it does not within `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        flush: impl Fn(),
        done: impl Fn(&[SpanRecord]) -> bool,
    ) -> Option<Vec<SpanRecord>> {
        let until = tokio::time::Instant::now() + within;
        loop {
            flush();
            let spans = self.spans();
            if done(&spans) {
                return Some(spans);
            }
            if tokio::time::Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The trace `trace_id` as an indented tree, children by name: each span with its
    /// service, kind and the attributes `show` keeps, `!error` for an error status and
    /// `link=parent` when it links to its parent.
    pub fn tree(&self, trace_id: &str, show: impl Fn(&str) -> bool) -> String {
        render(&self.spans(), trace_id, show)
    }
}

/// See [`Collector::tree`].
pub fn render(spans: &[SpanRecord], trace_id: &str, show: impl Fn(&str) -> bool) -> String {
    let trace: Vec<&SpanRecord> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let ids: Vec<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    for s in &trace {
        // A span whose parent is not here (still in flight, or in a process that does not
        // export) is shown as a root.
        let parent = if ids.contains(&s.parent.as_str()) {
            s.parent.as_str()
        } else {
            ""
        };
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by(|a, b| (&a.name, &a.service).cmp(&(&b.name, &b.service)));
    }
    let mut out = String::new();
    let mut stack: Vec<(&SpanRecord, usize)> = children.get("").into_iter().flatten().rev().map(|s| (*s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        let mut line = format!("{}{} [{}] ({})", "  ".repeat(depth), span.name, span.kind, span.service);
        for (k, v) in &span.attributes {
            if show(k) {
                line.push_str(&format!(" {k}={v}"));
            }
        }
        if span.error {
            line.push_str(" !error");
        }
        if span.links.iter().any(|(t, s)| t == &span.trace_id && s == &span.parent) {
            line.push_str(" link=parent");
        }
        out.push_str(&line);
        out.push('\n');
        for child in children.get(span.span_id.as_str()).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    out
}
