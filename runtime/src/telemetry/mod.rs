//! OpenTelemetry tracing (feature `telemetry`): one trace across services, transports and
//! NestJS peers.
//!
//! With the feature on, every call a [`Client`](crate::Client) sends or emits and every
//! message a service handles is a span named after OpenTelemetry's messaging conventions
//! ([`span`]): `send <route>` on the caller (CLIENT for a request, PRODUCER for an event),
//! `process <route>` on the service (SERVER, or CONSUMER linked to its producer). Their W3C
//! context (`traceparent`, `tracestate`, `baggage`) travels in each transport's headers, so a
//! handler's own `tracing` spans nest under the caller's trace and a call it makes continues
//! it. Switchboard records and exports its own spans itself (fixed-size records, encoded
//! straight into OTLP on a thread of their own); the application's `tracing` spans go
//! through `tracing-opentelemetry` and the OpenTelemetry SDK, to the same collector. Before
//! [`init`] (or [`Builder::layer`]), no span is made.
//!
//! [`init`] sets all of it up in one line, exporting over OTLP (gRPC unless
//! `OTEL_EXPORTER_OTLP_PROTOCOL` says `http/protobuf` or `http/json`) and logging to stderr:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317,
//! // or :4318 over HTTP), OTEL_EXPORTER_OTLP_HEADERS, OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER
//! // and RUST_LOG are honoured, and the `_TRACES_` variants of the `OTEL_EXPORTER_OTLP_` ones.
//! // An https endpoint is reached over TLS, trusting the CA certificates in the file
//! // OTEL_EXPORTER_OTLP_CERTIFICATE names (else the system's), with the client certificate
//! // and key of OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY if set (mutual TLS).
//! let telemetry = switchboard::telemetry::init("users")?;
//! // … serve …
//! telemetry.shutdown(); // exports what is left
//! # Ok(()) }
//! ```
//!
//! A service with a subscriber of its own adds [`Builder::layer`] to it instead. Set tracing
//! up before starting services: a service decides when it starts whether its routes make
//! spans (none when no subscriber records them or the sampler samples nothing).

use std::time::Duration;
use std::{fmt, str::FromStr};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::error::{Error, Result};

mod bridge;
mod current;
pub(crate) mod encode;
mod export;
mod observe;
mod otlp_http;
pub(crate) mod propagation;
pub(crate) mod record;
mod sampler;
pub mod span;
mod tls;

pub(crate) use observe::observe;

/// Sets up tracing for a service named `service` with the defaults: spans exported in
/// batches over OTLP (gRPC, or HTTP as `OTEL_EXPORTER_OTLP_PROTOCOL` says), logs to stderr
/// filtered by `RUST_LOG` (default `info`), as the process's global subscriber. Call it inside
/// a Tokio runtime, once.
pub fn init(service: &str) -> Result<Telemetry> {
    builder(service).init()
}

/// Makes `span` continue the trace whose W3C context (`traceparent`, `tracestate`, `baggage`) is
/// in `headers`: for work that starts from something Switchboard did not receive itself, such as
/// an HTTP request at a gateway or a trace id given on a command line. Calls made inside `span`
/// then join that trace. `false`, and `span` left as it was, when the headers hold no valid
/// context, no OpenTelemetry layer records `span`, or it has started already (been entered).
///
/// ```
/// use switchboard::Headers;
///
/// let mut headers = Headers::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// let span = tracing::info_span!("checkout");
/// // Nothing records spans in this example (no `telemetry::init`), so there is nothing to join.
/// assert!(!switchboard::telemetry::continue_trace(&span, &headers));
/// ```
pub fn continue_trace(span: &tracing::Span, headers: &crate::service::Headers) -> bool {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    let parent = propagation::extract(headers);
    parent.span().span_context().is_valid() && span.set_parent(parent).is_ok()
}

/// The OpenTelemetry context of the message this code handles (its `process` span, and the
/// baggage it came with); outside a handler, [`opentelemetry::Context::current`]. Inside a
/// handler the message's span is current for Switchboard's calls and for `tracing` spans, but
/// it is not attached as OpenTelemetry's current context (that would cost every message an
/// allocation): code that propagates by hand (an HTTP call with its own propagator) or hands
/// the context to a spawned task asks for it here.
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
///
/// // Outside a handler, and with nothing current: no span.
/// let cx = switchboard::telemetry::current_context();
/// assert!(!cx.span().span_context().is_valid());
/// ```
pub fn current_context() -> opentelemetry::Context {
    current::innermost(|message| message.map(current::Current::otel)).unwrap_or_else(opentelemetry::Context::current)
}

/// Tracing for a service named `service` (unless `OTEL_SERVICE_NAME` names it), to configure.
pub fn builder(service: &str) -> Builder {
    Builder {
        service: service.to_owned(),
        endpoint: None,
        protocol: None,
        each_span: false,
    }
}

/// How spans travel to the collector: the values of `OTEL_EXPORTER_OTLP_PROTOCOL`.
///
/// ```
/// use switchboard::telemetry::Protocol;
///
/// assert_eq!("http/protobuf".parse::<Protocol>().unwrap(), Protocol::HttpProtobuf);
/// assert_eq!(Protocol::Grpc.to_string(), "grpc");
/// assert!("http".parse::<Protocol>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// `grpc`: OTLP/gRPC, to port 4317 by default. The default protocol.
    Grpc,
    /// `http/protobuf`: OTLP/HTTP (`POST /v1/traces`, HTTP/1.1) with protobuf bodies, to port
    /// 4318 by default.
    HttpProtobuf,
    /// `http/json`: OTLP/HTTP with JSON bodies.
    HttpJson,
}

impl Protocol {
    fn named(name: &str) -> Option<Protocol> {
        [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson]
            .into_iter()
            .find(|p| p.as_str() == name.trim())
    }

    /// The name `OTEL_EXPORTER_OTLP_PROTOCOL` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    /// `grpc`, `http/protobuf` or `http/json`, as the OpenTelemetry specification spells them.
    fn from_str(s: &str) -> Result<Self> {
        Protocol::named(s).ok_or_else(|| config(unknown_protocol(s)))
    }
}

fn unknown_protocol(name: &str) -> String {
    format!(
        "unknown OTLP protocol `{}`: expected grpc, http/protobuf or http/json",
        crate::text::for_log(name)
    )
}

/// Configures tracing; made by [`builder`]. Its `Debug` shows the endpoint without a password.
#[derive(Clone)]
pub struct Builder {
    service: String,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    each_span: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("service", &self.service)
            .field("endpoint", &self.endpoint.as_deref().map(crate::transport::redact))
            .field("protocol", &self.protocol)
            .field("each_span", &self.each_span)
            .finish()
    }
}

impl Builder {
    /// The collector to export to, instead of `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or the protocol's default. Over HTTP this is the whole
    /// URL spans are posted to, path included (`http://localhost:4318/v1/traces`), as the
    /// `_TRACES_` variable is; `OTEL_EXPORTER_OTLP_ENDPOINT` is a base that `/v1/traces` is
    /// appended to.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// The protocol to export with, instead of `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` or gRPC. HTTP is HTTP/1.1, over TLS to an `https`
    /// endpoint (as gRPC is).
    ///
    /// ```no_run
    /// use switchboard::telemetry::{self, Protocol};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let telemetry = telemetry::builder("users")
    ///     .protocol(Protocol::HttpProtobuf)
    ///     .endpoint("http://127.0.0.1:4318/v1/traces")
    ///     .init()?;
    /// # drop(telemetry); Ok(()) }
    /// ```
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Exports each span as it ends instead of in batches: for tests and short-lived
    /// commands, where a batch could be cut off at exit.
    pub fn export_each_span(mut self) -> Self {
        self.each_span = true;
        self
    }

    /// The tracer provider and a `tracing` layer that records spans with it, for a
    /// subscriber of your own. Switchboard's own spans are exported from then on.
    ///
    /// ```no_run
    /// use tracing_subscriber::layer::SubscriberExt;
    /// use tracing_subscriber::util::SubscriberInitExt;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (otel, telemetry) = switchboard::telemetry::builder("users").layer()?;
    /// tracing_subscriber::registry().with(otel).with(tracing_subscriber::fmt::layer()).try_init()?;
    /// # drop(telemetry); Ok(()) }
    /// ```
    pub fn layer<S>(self) -> Result<(impl Layer<S>, Telemetry)>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let (provider, recorder) = self.start()?;
        let tracer: SdkTracer = provider.tracer("switchboard");
        // Switchboard's log spans (`span::TARGET`) are for the logs: its spans are exported
        // by its own recorder.
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target(span::TARGET, tracing_subscriber::filter::LevelFilter::OFF)
            .with_default(tracing_subscriber::filter::LevelFilter::INFO);
        let layer = bridge::Bridge(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_threads(false),
        )
        .with_filter(spans);
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok((layer, Telemetry { provider, recorder }))
    }

    /// Installs the global subscriber: the OpenTelemetry layer, and logs to stderr filtered by
    /// `RUST_LOG` (default `info`). The logs leave out Switchboard's own spans unless
    /// `RUST_LOG` names them (`switchboard::telemetry=info` puts each message's span, with its
    /// `trace_id`, before the lines logged inside it): formatting every span's fields for a log
    /// line costs more than the rest of a message's handling.
    pub fn init(self) -> Result<Telemetry> {
        // Checked first, so a call that cannot install its subscriber starts no exporter: its
        // recorder would take the running one's place (and its spans) until it stopped.
        if tracing::dispatcher::has_been_set() {
            return Err(already_set("it was set before"));
        }
        let (otel, telemetry) = self.layer::<Registry>()?;
        let filter = match std::env::var("RUST_LOG") {
            Ok(directives) if directives.contains(span::TARGET) => EnvFilter::new(directives),
            Ok(directives) => EnvFilter::new(format!("{directives},{}=off", span::TARGET)),
            Err(_) => EnvFilter::new(format!("info,{}=off", span::TARGET)),
        };
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        Registry::default()
            .with(otel)
            .with(logs)
            .try_init()
            .map_err(|e| already_set(&e.to_string()))?;
        Ok(telemetry)
    }

    /// The SDK's provider, for the application's spans, and Switchboard's recorder (`None`
    /// when the sampler samples nothing: then no span is made at all), both exporting to the
    /// same collector the same way.
    fn start(self) -> Result<(SdkTracerProvider, Option<&'static export::Recorder>)> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        // The SDK's errors quote the endpoint as given, user info included.
        let given = self
            .endpoint
            .clone()
            .or_else(|| signal_var(&env, "ENDPOINT").map(|(_, url)| url))
            .map(|url| url.trim().to_owned());
        let scrub = |e: opentelemetry_otlp::ExporterBuildError| {
            let message = e.to_string();
            config(match &given {
                Some(url) if !url.is_empty() => message.replace(url.as_str(), &crate::transport::redact(url)),
                _ => message,
            })
        };
        let sampler = sampler::Sampler::from_env(&env)?;
        let headers = export::headers(&env);
        let (exporter, sender) = match protocol(self.protocol, &env)? {
            Protocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig;
                let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_protocol(opentelemetry_otlp::Protocol::Grpc);
                // The SDK reads the endpoint variables itself; the certificates are ours to read.
                let endpoint = given
                    .clone()
                    .filter(|url| !url.is_empty())
                    .unwrap_or_else(|| "http://localhost:4317".to_owned());
                let mut tls = None;
                if is_https(&endpoint) {
                    let files = tls::TlsFiles::from_env(&env)?;
                    // tonic reads the files only when it connects: checked here, so that
                    // `init` fails on a file that holds no certificate or key.
                    if !files.is_empty() {
                        files.rustls()?;
                    }
                    exporter = exporter.with_tls_config(files.tonic());
                    tls = Some(files.tonic());
                }
                if let Some(url) = self.endpoint {
                    exporter = exporter.with_endpoint(url);
                }
                let sender = export::Sender::Grpc {
                    endpoint,
                    tls,
                    headers,
                    timeout: timeout(&env),
                };
                (exporter.build(), sender)
            }
            http => {
                use opentelemetry_otlp::WithHttpConfig;
                let url = http_endpoint(self.endpoint.as_deref(), &env)?;
                let tls = match is_https(&url) {
                    true => Some(tls::TlsFiles::from_env(&env)?.rustls()?),
                    false => None,
                };
                let client = otlp_http::OtlpHttpClient::start(timeout(&env), tls)
                    .map_err(|e| config(format!("cannot start the OTLP/HTTP exporter's thread: {e}")))?;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(match http {
                        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                        _ => opentelemetry_otlp::Protocol::HttpBinary,
                    })
                    .with_endpoint(url.clone())
                    .with_http_client(client.clone())
                    .build();
                let sender = export::Sender::Http(export::Http {
                    url,
                    json: http == Protocol::HttpJson,
                    client,
                    headers,
                });
                (exporter, sender)
            }
        };
        let exporter = exporter.map_err(scrub)?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or(self.service);
        let resource = Resource::builder().with_service_name(service).build();
        let recorder = match sampler.never() {
            true => None,
            false => {
                let attributes: Vec<(String, String)> = resource
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect();
                let batching = export::Batching::from_env(&env, self.each_span);
                Some(export::start(
                    sampler,
                    batching,
                    encode::Encoder::new(&attributes),
                    sender,
                )?)
            }
        };
        let builder = SdkTracerProvider::builder()
            .with_resource(resource)
            .with_sampler(sampler.sdk());
        let provider = match self.each_span {
            true => builder.with_simple_exporter(exporter),
            false => builder.with_batch_exporter(exporter),
        }
        .build();
        Ok((provider, recorder))
    }
}

/// `init`'s error when the process has a global subscriber already.
fn already_set(why: &str) -> Error {
    config(format!(
        "a global tracing subscriber is already set ({why}); add `builder(…).layer()` to it instead"
    ))
}

/// The protocol chosen in code, else by `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else by
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, else gRPC; a value it does not know is an error naming the
/// variable (the SDK would silently fall back).
fn protocol(chosen: Option<Protocol>, env: &dyn Fn(&str) -> Option<String>) -> Result<Protocol> {
    if let Some(chosen) = chosen {
        return Ok(chosen);
    }
    match signal_var(env, "PROTOCOL") {
        Some((var, value)) => {
            Protocol::named(&value).ok_or_else(|| config(format!("{var}: {}", unknown_protocol(&value))))
        }
        None => Ok(Protocol::Grpc),
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_<name>` if it is set, else `OTEL_EXPORTER_OTLP_<name>`: the
/// variable's name and value.
fn signal_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|var| env(&var).map(|value| (var, value)))
}

/// The URL spans are posted to over HTTP, after the specification: the one chosen in code or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as they are, else `OTEL_EXPORTER_OTLP_ENDPOINT` with
/// `/v1/traces` appended, else `http://localhost:4318/v1/traces`; `http` or `https`.
fn http_endpoint(chosen: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
    let (url, from) = match (chosen, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        (Some(url), _) => (url.trim().to_owned(), "the endpoint"),
        (None, Some(url)) => (url.trim().to_owned(), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(base) => (
                format!("{}/v1/traces", base.trim().trim_end_matches('/')),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            None => ("http://localhost:4318/v1/traces".to_owned(), "the default"),
        },
    };
    // The URL is not echoed: it may carry user info.
    let uri: http::Uri = url
        .parse()
        .map_err(|_| config(format!("{from} is not a URL (OTLP over HTTP)")))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(url),
        _ => Err(config(format!(
            "{from} must be an http:// or https:// URL with a host (OTLP over HTTP)"
        ))),
    }
}

/// Whether the collector at `url` is reached over TLS.
fn is_https(url: &str) -> bool {
    url.trim()
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), as the
/// SDK reads them; 10 s otherwise.
fn timeout(env: &dyn Fn(&str) -> Option<String>) -> Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .into_iter()
        .find_map(|var| env(var)?.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

fn config(reason: String) -> Error {
    Error::InvalidConfig {
        what: "telemetry",
        reason,
    }
}

/// The running exporters. Dropping it exports the spans still buffered (at most 5 s).
pub struct Telemetry {
    provider: SdkTracerProvider,
    recorder: Option<&'static export::Recorder>,
}

// The provider's own Debug reaches the exporter and its headers (`OTEL_EXPORTER_OTLP_HEADERS`
// carries tokens): none of it is shown.
impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Exports every span ended so far.
    pub fn flush(&self) -> Result<()> {
        let ours = self.recorder.map_or(Ok(()), |r| r.flush(Duration::from_secs(30)));
        self.provider.force_flush().map_err(|e| config(e.to_string()))?;
        ours
    }

    /// Switchboard's spans dropped so far: they ended faster than they could be exported (more
    /// than `OTEL_BSP_MAX_QUEUE_SIZE` waiting), or the collector refused or could not be
    /// reached.
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let telemetry = switchboard::telemetry::init("users")?;
    /// // … serve …
    /// if telemetry.dropped() > 0 {
    ///     eprintln!("raise OTEL_BSP_MAX_QUEUE_SIZE: {} spans dropped", telemetry.dropped());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.recorder.map_or(0, |r| r.dropped())
    }

    /// Exports what is left and stops exporting.
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder {
            recorder.stop(Duration::from_secs(5));
        }
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::debug!(error = %e, "telemetry shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `vars` alone (for this module's tests and its submodules').
    pub(super) fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn continue_trace_joins_a_valid_context_before_the_span_starts() {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let provider = SdkTracerProvider::builder().build();
        let subscriber = Registry::default().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = crate::service::Headers::new();
            headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
            let span = tracing::info_span!("gateway");
            assert!(continue_trace(&span, &headers));
            let trace = span.context().span().span_context().trace_id();
            assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");

            // No context, a broken one, or a span already started: left as it was.
            let other = tracing::info_span!("other");
            assert!(!continue_trace(&other, &crate::service::Headers::new()));
            let mut broken = crate::service::Headers::new();
            broken.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01");
            assert!(!continue_trace(&other, &broken));
            let own = other.context().span().span_context().trace_id();
            assert!(!continue_trace(&other, &headers));
            assert_ne!(own.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        });
    }

    /// Inside a handled message, its span; once a context is attached inside, that one.
    #[test]
    fn the_current_context_is_the_handled_message_s() {
        use opentelemetry::trace::TraceContextExt as _;
        let message = current::Current {
            span: record::SpanContext {
                trace_id: [7; 16],
                span_id: [8; 8],
                flags: record::SAMPLED,
                trace_state: None,
                remote: false,
            },
            base: None,
        };
        current::within(&message, || {
            let cx = current_context();
            assert_eq!(cx.span().span_context().span_id().to_bytes(), [8; 8]);
            assert!(cx.span().span_context().is_sampled());
            let inner = opentelemetry::Context::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes([7; 16]),
                opentelemetry::trace::SpanId::from_bytes([9; 8]),
                opentelemetry::trace::TraceFlags::SAMPLED,
                false,
                Default::default(),
            ));
            let _attached = inner.attach();
            assert_eq!(current_context().span().span_context().span_id().to_bytes(), [9; 8]);
        });
        assert!(!current_context().span().span_context().is_valid());
    }

    #[test]
    fn protocol_from_code_then_traces_variable_then_generic_then_grpc() {
        let both = [
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(protocol(Some(Protocol::Grpc), &env(&both)).unwrap(), Protocol::Grpc);
        assert_eq!(protocol(None, &env(&both)).unwrap(), Protocol::HttpJson);
        assert_eq!(protocol(None, &env(&both[1..])).unwrap(), Protocol::HttpProtobuf);
        assert_eq!(protocol(None, &env(&[])).unwrap(), Protocol::Grpc);
    }

    #[test]
    fn an_unknown_protocol_names_its_variable_and_the_choices() {
        let bad = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml\u{202e}")];
        let err = protocol(None, &env(&bad)).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid telemetry: OTEL_EXPORTER_OTLP_PROTOCOL: unknown OTLP protocol `http/xml\\u{202e}`: \
             expected grpc, http/protobuf or http/json"
        );
        assert!("HTTP/protobuf".parse::<Protocol>().is_err());
        for p in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
        }
    }

    #[test]
    fn http_endpoints_follow_the_specification() {
        let traces = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/custom");
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let at = |chosen, vars: &[(&str, &str)]| http_endpoint(chosen, &env(vars)).unwrap();
        // Chosen in code and the per-signal variable: as they are.
        assert_eq!(
            at(Some("http://code:1/v1/traces"), &[traces, base]),
            "http://code:1/v1/traces"
        );
        assert_eq!(at(None, &[traces, base]), "http://traces:4318/custom");
        // The generic one is a base.
        assert_eq!(at(None, &[base]), "http://collector:4318/v1/traces");
        let slash = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/prefix/");
        assert_eq!(at(None, &[slash]), "http://collector:4318/prefix/v1/traces");
        assert_eq!(at(None, &[]), "http://localhost:4318/v1/traces");
    }

    #[test]
    fn garbage_endpoints_are_refused_without_echoing_them() {
        let err = |url: &str| {
            http_endpoint(None, &env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)]))
                .unwrap_err()
                .to_string()
        };
        let https = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector:4318/v1/traces");
        assert_eq!(
            http_endpoint(None, &env(&[https])).unwrap(),
            "https://collector:4318/v1/traces"
        );
        assert!(is_https(" HTTPS://collector") && !is_https("http://collector"));
        let garbage = err("not a url hunter2");
        assert!(
            garbage.contains("is not a URL") && !garbage.contains("hunter2"),
            "{garbage}"
        );
        assert!(err("grpc://collector:4317").contains("must be an http:// or https:// URL"));
        assert!(err("/v1/traces").contains("must be an http:// or https:// URL"));
    }

    /// A password in a gRPC endpoint stays out of the SDK's error and of the builder's `Debug`.
    #[tokio::test]
    async fn a_grpc_endpoint_s_password_is_not_echoed() {
        let chosen = builder("svc")
            .endpoint("https://u:p^ss@collector:4317")
            .protocol(Protocol::Grpc);
        let shown = format!("{chosen:?}");
        assert!(
            shown.contains("u:***@collector:4317") && !shown.contains("p^ss"),
            "{shown}"
        );
        let err = chosen.start().err().expect("not a URI").to_string();
        assert!(err.contains("u:***@collector:4317") && !err.contains("p^ss"), "{err}");
    }

    #[test]
    fn timeouts_in_milliseconds() {
        assert_eq!(timeout(&env(&[])), Duration::from_secs(10));
        assert_eq!(
            timeout(&env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])),
            Duration::from_millis(2500)
        );
        let both = [
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "7"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ];
        assert_eq!(timeout(&env(&both)), Duration::from_millis(7));
        assert_eq!(
            timeout(&env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])),
            Duration::from_secs(10)
        );
    }

    /// The exporter's headers (tokens) stay out of `Debug`, though the SDK's own shows them.
    #[test]
    fn debug_shows_no_header() {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let client = otlp_http::OtlpHttpClient::start(Duration::from_secs(1), None).unwrap();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint("http://127.0.0.1:9/v1/traces")
            .with_headers([("authorization".to_owned(), "Bearer hunter2".to_owned())].into())
            .with_http_client(client)
            .build()
            .unwrap();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter).build();
        assert!(
            format!("{provider:?}").contains("hunter2"),
            "the case this guards against"
        );
        let telemetry = Telemetry {
            provider,
            recorder: None,
        };
        assert_eq!(format!("{telemetry:?}"), "Telemetry { .. }");
    }
}
