//! [`Microservice`]: serves a set of handlers on one or more transports.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::registry::{Handler, Registry};
use crate::transport::{self, Shutdown};

/// How long `start` waits for a broker transport to be ready (subscribed) before it returns.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Default time in-flight requests get to finish on shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A service: handlers plus the transports they are served on.
///
/// ```ignore
/// Microservice::from_registry()            // every handler linked into this binary
///     .listen("tcp://127.0.0.1:3001")      // several listens make a hybrid app
///     .run().await                         // until Ctrl-C or SIGTERM, then drains
/// ```
#[derive(Debug)]
#[must_use = "a Microservice does nothing until `run` or `start` is awaited"]
pub struct Microservice {
    registry: Registry,
    urls: Vec<String>,
    shutdown_timeout: Duration,
}

impl Default for Microservice {
    fn default() -> Self {
        Self::new()
    }
}

impl Microservice {
    /// A service of every `#[message_pattern]` and `#[event_pattern]` handler linked into
    /// this binary.
    pub fn from_registry() -> Self {
        Microservice {
            registry: Registry::collect(),
            ..Self::new()
        }
    }

    /// A service of no handlers yet; add them with [`handler`](Self::handler).
    pub fn new() -> Self {
        Microservice {
            registry: Registry::new(),
            urls: Vec::new(),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }

    /// Adds one handler: `Microservice::new().handler(get_user).handler(create_user)`.
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.registry.add(handler.entry());
        self
    }

    /// Serves on the transport named by `url`: `mem://name`, `tcp://host:port`, …
    pub fn listen(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// How long in-flight requests get to finish on shutdown (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Binds every transport and starts serving in the background; returns once every transport
    /// takes messages.
    pub async fn start(self) -> Result<RunningServer> {
        if self.urls.is_empty() {
            return Err(Error::Registry(
                "no transport to serve on: call .listen(\"tcp://127.0.0.1:3001\") or similar".into(),
            ));
        }
        let dispatcher = Dispatcher::new(self.registry.routes()?);
        let mut listeners = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            listeners.push(transport::bind(url).await?);
        }
        let (stop, shutdown) = Shutdown::new();
        let mut tasks = JoinSet::new();
        let mut urls = Vec::with_capacity(listeners.len());
        let mut readiness = Vec::new();
        for listener in listeners {
            let url = listener.local_url();
            readiness.extend(listener.ready().map(|ready| (url.clone(), ready)));
            tasks.spawn(supervise(
                url.clone(),
                listener.serve(dispatcher.clone(), shutdown.clone()),
                shutdown.clone(),
            ));
            urls.push(url);
        }
        for (url, mut ready) in readiness {
            match tokio::time::timeout(READY_WAIT, ready.wait_for(|&up| up)).await {
                Ok(Ok(_)) => {}
                // `serve` ended before it was ready: report why.
                Ok(Err(_)) => {
                    if let Some(Ok(Err(e))) = tasks.join_next().await {
                        return Err(e);
                    }
                }
                Err(_) => tracing::warn!(%url, "not ready to take messages after {READY_WAIT:?}; serving anyway"),
            }
        }
        // Logged once every transport takes messages (a broker's subscriptions are in place).
        for url in &urls {
            tracing::info!(%url, handlers = self.registry.entries().len(), "listening");
        }
        for entry in self.registry.entries() {
            tracing::debug!(route = entry.route, kind = ?entry.kind, handler = %entry.location(), "serving");
        }
        Ok(RunningServer {
            urls,
            stop,
            tasks,
            shutdown_timeout: self.shutdown_timeout,
        })
    }

    /// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<()> {
        let mut server = self.start().await?;
        tokio::select! {
            () = signal => tracing::info!("shutting down"),
            Some(result) = server.tasks.join_next() => {
                // A transport stopped on its own (`supervise` made that an error): report it
                // and stop the rest.
                let _ = server.shutdown().await;
                return match result {
                    Ok(outcome) => outcome,
                    Err(e) => Err(Error::Protocol(format!("a transport task failed: {e}"))),
                };
            }
        }
        server.shutdown().await
    }
}

/// A started service. Dropping it stops serving at once; [`shutdown`](Self::shutdown)
/// lets in-flight requests finish.
#[derive(Debug)]
pub struct RunningServer {
    urls: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<()>>,
    shutdown_timeout: Duration,
}

impl RunningServer {
    /// The URLs served, with real ports where port 0 was asked for.
    pub fn local_urls(&self) -> &[String] {
        &self.urls
    }

    /// The first URL served.
    pub fn local_url(&self) -> &str {
        &self.urls[0]
    }

    /// Stops taking new messages, waits for in-flight ones (up to the shutdown timeout),
    /// then closes every transport.
    pub async fn shutdown(mut self) -> Result<()> {
        self.stop.send_replace(true);
        let drain = async {
            let mut first_error = None;
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok(Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                    Ok(Ok(())) => {}
                    Err(e) => tracing::error!(error = %e, "a transport task failed while shutting down"),
                }
            }
            first_error.map_or(Ok(()), Err)
        };
        match tokio::time::timeout(self.shutdown_timeout, drain).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(timeout = ?self.shutdown_timeout, "in-flight requests did not finish in time; closing anyway");
                self.tasks.abort_all();
                Ok(())
            }
        }
    }
}

/// Runs a transport's `serve`; a panic, or an end before shutdown, becomes
/// [`Error::TransportStopped`], so that `run_until` fails instead of returning `Ok`.
async fn supervise(url: String, serve: impl Future<Output = Result<()>>, shutdown: Shutdown) -> Result<()> {
    let stopped = |reason: String| Error::TransportStopped {
        url: url.clone(),
        reason,
    };
    match AssertUnwindSafe(serve).catch_unwind().await {
        Ok(Ok(())) if !shutdown.is_down() => Err(stopped("it ended without being asked to".into())),
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            tracing::error!(%url, %reason, "the transport panicked");
            Err(stopped(format!("it panicked: {reason}")))
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_transport_that_panics_or_ends_on_its_own_is_an_error() {
        let (stop, shutdown) = Shutdown::new();
        let url = || "tcp://127.0.0.1:1".to_owned();

        let panicked = supervise(url(), async { panic!("boom") }, shutdown.clone()).await;
        let err = panicked.unwrap_err().to_string();
        assert_eq!(err, "the transport at tcp://127.0.0.1:1 stopped: it panicked: boom");

        let ended = supervise(url(), async { Ok(()) }, shutdown.clone()).await;
        assert!(matches!(ended, Err(Error::TransportStopped { .. })), "{ended:?}");

        stop.send_replace(true);
        supervise(url(), async { Ok(()) }, shutdown.clone())
            .await
            .expect("ending after shutdown is how a transport stops");
        let failed = supervise(url(), async { Err(Error::Closed) }, shutdown).await;
        assert!(matches!(failed, Err(Error::Closed)), "{failed:?}");
    }
}
