//! OpenTelemetry tracing (feature `telemetry`): one trace across services, transports and
//! NestJS peers.
//!
//! With the feature on, every call a [`Client`](crate::Client) sends or emits and every
//! message a service handles is a `tracing` span named after OpenTelemetry's messaging
//! conventions ([`span`]): `send <route>` on the caller (CLIENT for a request, PRODUCER for
//! an event), `process <route>` on the service (SERVER, or CONSUMER linked to its producer).
//! Their W3C context (`traceparent`, `tracestate`, `baggage`) travels in each transport's
//! headers, so a handler's own spans and logs nest under the caller's trace and a call it
//! makes continues it. Without a subscriber that records them, the spans cost a check.
//!
//! [`init`] sets all of it up in one line, exporting over OTLP/gRPC and logging to stderr:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4317), OTEL_SERVICE_NAME,
//! // OTEL_TRACES_SAMPLER and RUST_LOG are honoured.
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

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::error::{Error, Result};

mod observe;
pub(crate) mod propagation;
pub mod span;

pub(crate) use observe::observe;

/// Sets up tracing for a service named `service` with the defaults: spans exported in
/// batches over OTLP/gRPC, logs to stderr filtered by `RUST_LOG` (default `info`), as the
/// process's global subscriber. Call it inside a Tokio runtime, once.
pub fn init(service: &str) -> Result<Telemetry> {
    builder(service).init()
}

/// Tracing for a service named `service` (unless `OTEL_SERVICE_NAME` names it), to configure.
pub fn builder(service: &str) -> Builder {
    Builder {
        service: service.to_owned(),
        endpoint: None,
        each_span: false,
    }
}

/// Configures tracing; made by [`builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    service: String,
    endpoint: Option<String>,
    each_span: bool,
}

impl Builder {
    /// The OTLP/gRPC collector to export to, instead of `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `http://localhost:4317`.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Exports each span as it ends instead of in batches: for tests and short-lived
    /// commands, where a batch could be cut off at exit.
    pub fn export_each_span(mut self) -> Self {
        self.each_span = true;
        self
    }

    /// The tracer provider and a `tracing` layer that records spans with it, for a
    /// subscriber of your own.
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
        let provider = self.provider()?;
        let tracer: SdkTracer = provider.tracer("switchboard");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok((layer, Telemetry { provider }))
    }

    /// Installs the global subscriber: the OpenTelemetry layer, and logs to stderr filtered by
    /// `RUST_LOG` (default `info`). The logs leave out Switchboard's own spans unless
    /// `RUST_LOG` names them (`switchboard::telemetry=info` puts each message's span, with its
    /// `trace_id`, before the lines logged inside it): formatting every span's fields for a log
    /// line costs more than the rest of a message's handling.
    pub fn init(self) -> Result<Telemetry> {
        let (otel, telemetry) = self.layer::<Registry>()?;
        let filter = match std::env::var("RUST_LOG") {
            Ok(directives) if directives.contains(span::TARGET) => EnvFilter::new(directives),
            Ok(directives) => EnvFilter::new(format!("{directives},{}=off", span::TARGET)),
            Err(_) => EnvFilter::new(format!("info,{}=off", span::TARGET)),
        };
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        Registry::default().with(otel).with(logs).try_init().map_err(|e| {
            config(format!(
                "a global tracing subscriber is already set ({e}); add `builder(…).layer()` to it instead"
            ))
        })?;
        Ok(telemetry)
    }

    fn provider(self) -> Result<SdkTracerProvider> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(url) = self.endpoint {
            exporter = exporter.with_endpoint(url);
        }
        let exporter = exporter.build().map_err(|e| config(e.to_string()))?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or(self.service);
        let resource = Resource::builder().with_service_name(service).build();
        // The SDK reads OTEL_TRACES_SAMPLER itself; when it samples nothing, spans are not
        // even made (each would cost a span in the subscriber for nothing).
        let never = std::env::var("OTEL_TRACES_SAMPLER").is_ok_and(|s| s.trim() == "always_off");
        span::NEVER_SAMPLED.store(never, std::sync::atomic::Ordering::Relaxed);
        let builder = SdkTracerProvider::builder().with_resource(resource);
        Ok(match self.each_span {
            true => builder.with_simple_exporter(exporter),
            false => builder.with_batch_exporter(exporter),
        }
        .build())
    }
}

fn config(reason: String) -> Error {
    Error::InvalidConfig {
        what: "telemetry",
        reason,
    }
}

/// The running tracer provider. Dropping it exports the spans still buffered (at most 5 s).
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports every span ended so far.
    pub fn flush(&self) -> Result<()> {
        self.provider.force_flush().map_err(|e| config(e.to_string()))
    }

    /// Exports what is left and stops exporting.
    pub fn shutdown(self) {
        // Drop does it.
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::debug!(error = %e, "telemetry shutdown");
        }
    }
}
