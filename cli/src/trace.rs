//! `call`, `emit` and each command of the REPL as spans of a trace, exported over OTLP when an
//! endpoint is configured the standard way (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, with the other `OTEL_*` variables); without one,
//! nothing is set up and nothing is sent.

use switchboard::Headers;
use switchboard::telemetry::Telemetry;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The exporter, while one runs.
pub struct Exporter(Option<Telemetry>);

/// Starts exporting if an OTLP endpoint is configured and `OTEL_SDK_DISABLED` is not `true`.
/// A configuration that does not work is reported on stderr, and the command runs untraced.
/// Inside the runtime: the exporter's client is built on it.
pub fn start() -> Exporter {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if disabled || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
        return Exporter(None);
    }
    let started = switchboard::telemetry::builder("switchboard-cli")
        .layer::<Registry>()
        .map_err(|e| e.to_string())
        .and_then(|(layer, telemetry)| {
            Registry::default()
                .with(layer)
                .try_init()
                .map(|()| telemetry)
                .map_err(|e| e.to_string())
        });
    match started {
        Ok(telemetry) => Exporter(Some(telemetry)),
        Err(e) => {
            eprintln!("switchboard: not exporting spans: {e}");
            Exporter(None)
        }
    }
}

impl Exporter {
    /// Sends the spans still buffered; a failure is reported on stderr, not in the exit code
    /// (the command itself did what it did).
    pub async fn finish(self) {
        let Some(telemetry) = self.0 else { return };
        // Blocking, and the gRPC exporter needs the runtime driven meanwhile.
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = telemetry.flush().map_err(|e| e.to_string());
            telemetry.shutdown();
            flushed
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = flushed {
            eprintln!("switchboard: could not export the spans: {e}");
        }
    }
}

/// The span a command's call runs in: the root of a new trace, or, given a `traceparent`
/// (`--trace-id`), a part of that trace. Disabled, at no cost, when nothing exports.
pub fn command(name: &str, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!("switchboard", otel.name = name, otel.kind = "internal");
    if let Some(traceparent) = traceparent {
        let mut headers = Headers::new();
        headers.insert("traceparent", traceparent);
        switchboard::telemetry::continue_trace(&span, &headers);
    }
    span
}
