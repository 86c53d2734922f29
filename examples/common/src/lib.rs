//! What every example service's `main` shares: its logs and traces, and the transports it
//! listens on.

/// `--listen URL`, repeatable: the transports a service serves on (several make a hybrid
/// service). Flatten it into a service's own arguments.
#[derive(clap::Args, Debug)]
pub struct Listen {
    /// Transport URL to serve on; repeat for a hybrid service.
    #[arg(long = "listen")]
    urls: Vec<String>,
}

impl Listen {
    /// The URLs given, or `default` when none was.
    pub fn or(self, default: &str) -> Vec<String> {
        if self.urls.is_empty() {
            vec![default.to_owned()]
        } else {
            self.urls
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); with `OTEL_EXPORTER_OTLP_ENDPOINT`
/// set, also exports the service's spans there (named `service`). Keep what it returns until
/// the end of `main`: dropping it exports the last spans.
pub fn init(service: &str) -> Option<switchboard::telemetry::Telemetry> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        match switchboard::telemetry::init(service) {
            Ok(telemetry) => return Some(telemetry),
            Err(e) => eprintln!("tracing not exported: {e}"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    None
}
