//! What every example service's `main` shares: its logs and the transports it listens on.

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

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
}
