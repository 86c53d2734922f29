//! The health of a running service, as its transports see it.
//!
//! A service is **live** while it serves: every transport's `serve` is running (one that
//! stopped on its own, before shutdown, makes the service not live). It is **ready** while
//! it is live, every transport takes messages, and it is not shutting down. A transport takes
//! messages once bound, or, when it has a [`Listener::ready`](super::Listener::ready) flag
//! (the brokers), while that flag is up: broker transports lower it when they lose their
//! connection and raise it again once they are connected and subscribed.
//!
//! A service may add checks of its own ([`HealthCheck`](crate::server::HealthCheck): a
//! database, a downstream service): it is ready only while each passed its last run.
//!
//! Nothing here is on a message's path: the state is the transports' own flags and the checks'
//! last results, read when someone asks (the `switchboard.health` pattern, the HTTP endpoint,
//! gRPC health).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures_util::future::select_all;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Shutdown;

/// The pattern every service answers with its [`HealthReport`] (a string pattern), unless it
/// serves that pattern itself. A service with a [name](crate::Microservice::name) also
/// answers `switchboard.health.<name>`: on a shared broker, the first service to answer
/// answers `switchboard.health`, so ask the named form for one service.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::server::{HEALTH_PATTERN, HealthReport};
///
/// #[message_pattern("ping")]
/// async fn ping() -> &'static str {
///     "pong"
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().name("pinger").handler(PING).listen("mem://health-doc").start().await?;
/// let client = Client::connect("mem://health-doc").await?;
/// let health: HealthReport = client.send_raw(HEALTH_PATTERN, ()).await?;
/// assert!(health.ready);
/// let named: HealthReport = client.send_raw("switchboard.health.pinger", ()).await?;
/// assert_eq!(named.name.as_deref(), Some("pinger"));
/// server.shutdown().await
/// # }
/// ```
pub const HEALTH_PATTERN: &str = "switchboard.health";

/// The named health pattern of a service called `name`: `switchboard.health.<name>`.
pub fn health_pattern_of(name: &str) -> String {
    format!("{HEALTH_PATTERN}.{name}")
}

/// The health of a running service: cheap to clone, and read when asked (nothing is
/// computed per message). Get one from
/// [`RunningServer::health`](crate::RunningServer::health).
///
/// ```
/// use switchboard::prelude::*;
///
/// #[message_pattern("ping")]
/// async fn ping() -> &'static str {
///     "pong"
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new().handler(PING).listen("tcp://127.0.0.1:0").start().await?;
/// let health = server.health();
/// assert!(health.is_live() && health.is_ready());
/// assert_eq!(health.report().transports[0].url, server.local_url());
/// server.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct Health(Arc<Inner>);

struct Inner {
    name: Option<Arc<str>>,
    /// Raised once shutdown begins.
    draining: watch::Receiver<bool>,
    /// The service's transports, set once they are bound.
    transports: OnceLock<Vec<Probe>>,
    /// The service's own checks, set once they run.
    checks: OnceLock<Vec<CheckProbe>>,
}

/// What is known of one of the service's own checks.
struct CheckProbe {
    name: String,
    /// Why it is not ready (its last run failed, or it has not run yet); `None` while ready.
    failing: watch::Receiver<Option<String>>,
}

impl CheckProbe {
    fn is_ready(&self) -> bool {
        self.failing.borrow().is_none()
    }
}

/// The sending side of a check's state, for the task that runs it.
pub(crate) struct CheckState(watch::Sender<Option<String>>);

impl CheckState {
    /// Records a run's result; true when readiness changed (only that wakes a
    /// [`HealthWatch`]: a new reason for the same failure is no news).
    pub(crate) fn set(&self, result: std::result::Result<(), String>) -> bool {
        let failing = result.err();
        self.0.send_if_modified(|was| {
            let flipped = was.is_some() != failing.is_some();
            *was = failing;
            flipped
        })
    }

    /// Why the check is not ready, if it is not.
    pub(crate) fn failing(&self) -> Option<String> {
        self.0.borrow().clone()
    }
}

/// Something a [`HealthWatch`] follows.
enum Source {
    Flag(watch::Receiver<bool>),
    Check(watch::Receiver<Option<String>>),
}

impl Source {
    async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        match self {
            Source::Flag(rx) => rx.changed().await,
            Source::Check(rx) => rx.changed().await,
        }
    }
}

/// What is known of one transport.
struct Probe {
    /// Its URL, without a password.
    url: String,
    /// Its own ready flag, if it has one.
    ready: Option<watch::Receiver<bool>>,
    /// Up while its `serve` runs.
    serving: watch::Receiver<bool>,
}

impl Probe {
    fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    fn is_ready(&self) -> bool {
        self.is_serving() && self.ready.as_ref().is_none_or(|r| *r.borrow())
    }
}

/// Held while a transport's `serve` runs: dropped (the serve ended, failed, panicked or was
/// aborted), the transport counts as stopped.
pub(crate) struct Serving(watch::Sender<bool>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("name", &self.name())
            .field("live", &self.is_live())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Health {
    /// The health of a service named `name` that begins shutting down when `shutdown` fires,
    /// with no transport yet.
    pub(crate) fn new(name: Option<&str>, shutdown: &Shutdown) -> Self {
        Health(Arc::new(Inner {
            name: name.map(Arc::from),
            draining: shutdown.0.clone(),
            transports: OnceLock::new(),
            checks: OnceLock::new(),
        }))
    }

    /// Records the service's own checks by name, not ready until each has passed; the returned
    /// states, in the same order, are for the tasks that run them. Only the first call counts.
    pub(crate) fn watch_checks(&self, names: Vec<String>) -> Vec<CheckState> {
        let mut states = Vec::with_capacity(names.len());
        let probes = names
            .into_iter()
            .map(|name| {
                let (state, failing) = watch::channel(Some("not run yet".to_owned()));
                states.push(CheckState(state));
                CheckProbe { name, failing }
            })
            .collect();
        let _ = self.0.checks.set(probes);
        states
    }

    fn checks(&self) -> &[CheckProbe] {
        self.0.checks.get().map_or(&[], Vec::as_slice)
    }

    /// Records the service's transports (each URL with its ready flag, if any); the
    /// returned guards, in the same order, are held by each transport's serving task. Only
    /// the first call counts.
    pub(crate) fn watch_transports(&self, transports: Vec<(String, Option<watch::Receiver<bool>>)>) -> Vec<Serving> {
        let mut guards = Vec::with_capacity(transports.len());
        let probes = transports
            .into_iter()
            .map(|(url, ready)| {
                let (serving, rx) = watch::channel(true);
                guards.push(Serving(serving));
                Probe {
                    url: super::redact(&url),
                    ready,
                    serving: rx,
                }
            })
            .collect();
        let _ = self.0.transports.set(probes);
        guards
    }

    fn transports(&self) -> &[Probe] {
        self.0.transports.get().map_or(&[], Vec::as_slice)
    }

    /// The service's name, if it was given one ([`Microservice::name`](crate::Microservice::name)).
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.0.draining.borrow()
    }

    /// True while the service serves: no transport has stopped on its own (during shutdown
    /// the transports stop one by one, and the service is still live until it is down).
    pub fn is_live(&self) -> bool {
        self.is_draining() || self.transports().iter().all(Probe::is_serving)
    }

    /// True while every transport takes messages, each of the service's own checks passed its
    /// last run, and the service is not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self.transports().iter().all(Probe::is_ready)
            && self.checks().iter().all(CheckProbe::is_ready)
    }

    /// The state of the service and of each transport, as the health pattern and the HTTP
    /// endpoint answer it.
    pub fn report(&self) -> HealthReport {
        let transports: Vec<TransportHealth> = self
            .transports()
            .iter()
            .map(|t| TransportHealth {
                url: t.url.clone(),
                ready: t.is_ready(),
            })
            .collect();
        let checks: Vec<CheckHealth> = self
            .checks()
            .iter()
            .map(|c| {
                let error = c.failing.borrow().clone();
                CheckHealth {
                    name: c.name.clone(),
                    ready: error.is_none(),
                    error,
                }
            })
            .collect();
        let live = self.is_live();
        let ready = !self.is_draining() && transports.iter().all(|t| t.ready) && checks.iter().all(|c| c.ready);
        HealthReport {
            status: if live && ready {
                HealthStatus::Ok
            } else {
                HealthStatus::Unavailable
            },
            live,
            ready,
            transports,
            checks,
            name: self.name().map(str::to_owned),
        }
    }

    /// The report as JSON.
    pub(crate) fn to_json(&self) -> Bytes {
        // A struct of strings and booleans: serialising it cannot fail.
        Bytes::from(serde_json::to_vec(&self.report()).unwrap_or_default())
    }

    /// Something to wait on for the next change of this health (gRPC's `Watch` and a
    /// discovery registration follow it).
    pub fn subscribe(&self) -> HealthWatch {
        let mut sources = vec![Source::Flag(self.0.draining.clone())];
        for t in self.transports() {
            sources.push(Source::Flag(t.serving.clone()));
            sources.extend(t.ready.clone().map(Source::Flag));
        }
        sources.extend(self.checks().iter().map(|c| Source::Check(c.failing.clone())));
        HealthWatch { sources }
    }
}

/// Resolves [`changed`](Self::changed) when anything a [`Health`] is made of changes.
pub struct HealthWatch {
    sources: Vec<Source>,
}

impl std::fmt::Debug for HealthWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthWatch")
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl HealthWatch {
    /// Waits for the next change (for ever, once every source is gone).
    pub async fn changed(&mut self) {
        loop {
            if self.sources.is_empty() {
                return std::future::pending().await;
            }
            let (changed, at, _) = select_all(self.sources.iter_mut().map(|rx| Box::pin(rx.changed()))).await;
            match changed {
                Ok(()) => return,
                // Its sender is gone: its last value stays as it is.
                Err(_) => {
                    self.sources.swap_remove(at);
                }
            }
        }
    }
}

/// What the health pattern and the HTTP endpoint answer:
/// `{"status":"ok"|"unavailable","live":bool,"ready":bool,"transports":[{"url":…,"ready":bool}]}`,
/// and `"name"` when the service has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// `ok` when live and ready, `unavailable` otherwise.
    pub status: HealthStatus,
    /// True while the service serves.
    pub live: bool,
    /// True while every transport takes messages and the service is not shutting down.
    pub ready: bool,
    /// Each transport, in the order they were listened on.
    pub transports: Vec<TransportHealth>,
    /// The service's own checks ([`HealthCheck`](crate::server::HealthCheck)), in the order
    /// they were added; absent when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckHealth>,
    /// The service's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A [`HealthReport`]'s verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Live and ready.
    Ok,
    /// Not ready (starting, a broker away, shutting down) or not live.
    Unavailable,
}

/// One transport in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TransportHealth {
    /// The URL it serves, without a password.
    pub url: String,
    /// True while it takes messages.
    pub ready: bool,
}

/// One of the service's own checks in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CheckHealth {
    /// The check's name.
    pub name: String,
    /// True while its last run passed.
    pub ready: bool,
    /// Why it is not ready: its last run's error, `no answer within …`, or `not run yet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn ready_while_every_transport_is_and_not_while_draining() {
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(Some("users"), &shutdown);
        let (broker, broker_ready) = watch::channel(false);
        let guards = health.watch_transports(vec![
            ("tcp://127.0.0.1:1".into(), None),
            ("redis://u:secret@127.0.0.1:2".into(), Some(broker_ready)),
        ]);
        let report = health.report();
        assert_eq!(report.status, HealthStatus::Unavailable);
        assert!(report.live && !report.ready);
        assert!(report.transports[0].ready && !report.transports[1].ready);
        assert_eq!(report.transports[1].url, "redis://u:***@127.0.0.1:2");

        broker.send_replace(true);
        assert!(health.is_ready());
        let json: serde_json::Value = serde_json::from_slice(&health.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "status": "ok", "live": true, "ready": true, "name": "users",
                "transports": [
                    {"url": "tcp://127.0.0.1:1", "ready": true},
                    {"url": "redis://u:***@127.0.0.1:2", "ready": true},
                ],
            })
        );

        // A broker transport that loses its connection, then one that stops on its own.
        broker.send_replace(false);
        assert!(!health.is_ready() && health.is_live());
        broker.send_replace(true);
        let mut guards = guards.into_iter();
        drop(guards.next());
        assert!(
            !health.is_ready() && !health.is_live(),
            "a stopped transport is neither"
        );
        assert!(!health.report().transports[0].ready);

        // Draining: not ready, still live.
        stop.send_replace(true);
        assert!(health.is_draining() && health.is_live() && !health.is_ready());
        assert_eq!(health.report().status, HealthStatus::Unavailable);
    }

    #[test]
    fn without_a_name_the_report_has_none_and_without_transports_it_is_ready() {
        let (_stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let json: serde_json::Value = serde_json::from_slice(&health.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "ok", "live": true, "ready": true, "transports": []})
        );
    }

    #[tokio::test]
    async fn the_watch_wakes_on_every_change_and_survives_closed_sources() {
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let (broker, ready) = watch::channel(true);
        let guards = health.watch_transports(vec![("nats://127.0.0.1:1".into(), Some(ready))]);
        let mut watch = health.subscribe();
        assert!(watch.changed().now_or_never().is_none(), "nothing changed yet");

        broker.send_replace(false);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a lowered ready flag wakes the watch");
        drop(broker);
        assert!(
            watch.changed().now_or_never().is_none(),
            "a closed source is dropped, not a change every poll"
        );
        drop(guards);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a transport that stops wakes the watch");
        stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("draining wakes the watch");
        assert!(!health.is_ready());
    }
}
