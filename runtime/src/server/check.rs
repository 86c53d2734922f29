//! Readiness checks of a service's own (a database, a cache, a service it depends on), run on a
//! timer of their own, so that asking for the service's health never waits on them.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::task::JoinSet;

use crate::transport::Shutdown;
use crate::transport::health::{CheckState, Health};

/// How often a check runs unless [`HealthCheck::every`] says otherwise.
const DEFAULT_EVERY: Duration = Duration::from_secs(10);
/// How long a run may take unless [`HealthCheck::timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a failed run's error kept in the report.
const ERROR_MAX: usize = 300;

type Run = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A readiness check of the service's own, added with
/// [`Microservice::health_check`](crate::Microservice::health_check): a service is ready only
/// while each of its checks passed its last run (and, as before, every transport takes
/// messages). Checks run when the service starts (`start` returns once each has run) and then
/// every 10 s ([`every`](Self::every)), each run bounded by 2 s ([`timeout`](Self::timeout)),
/// in the background: the health pattern, the HTTP endpoint, gRPC health and registries read
/// their last result. A check is
/// not ready until its first run has passed; a failure is logged once when it starts and its
/// error shown in the [`HealthReport`](crate::server::HealthReport) (so keep secrets out of
/// it), a recovery logged once.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use switchboard::prelude::*;
/// use switchboard::server::{HealthCheck, HealthReport};
///
/// #[message_pattern("ping")]
/// async fn ping() -> &'static str {
///     "pong"
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let database_up = Arc::new(AtomicBool::new(true));
/// let up = database_up.clone();
/// let check = HealthCheck::new("database", move || {
///     let up = up.load(Ordering::Relaxed);
///     async move { if up { Ok(()) } else { Err("connection refused") } }
/// });
/// // `start` returns once every check has run once.
/// let server = Microservice::new().handler(PING).health_check(check).listen("mem://checked").start().await?;
/// let client = Client::connect("mem://checked").await?;
/// let health: HealthReport = client.send_raw("switchboard.health", ()).await?;
/// assert!(health.ready && health.checks[0].ready);
///
/// database_up.store(false, Ordering::Relaxed); // seen at the check's next run
/// server.shutdown().await
/// # }
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    name: String,
    every: Duration,
    timeout: Duration,
    run: Run,
}

impl fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCheck")
            .field("name", &self.name)
            .field("every", &self.every)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HealthCheck {
    /// A check named `name` that passes when `check`'s future gives `Ok`; an `Err`'s text is
    /// the reason shown.
    pub fn new<F, Fut, E>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let run: Run = Arc::new(move || check().map(|result| result.map_err(|e| cut(e.to_string()))).boxed());
        HealthCheck {
            name: name.into(),
            every: DEFAULT_EVERY,
            timeout: DEFAULT_TIMEOUT,
            run,
        }
    }

    /// How long between the end of one run and the start of the next (default 10 s; at least
    /// 10 ms).
    pub fn every(mut self, every: Duration) -> Self {
        self.every = every.max(Duration::from_millis(10));
        self
    }

    /// How long a run may take before it counts as failed (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One run: its result, a timeout, or a panic, as a reason.
    async fn run_once(&self) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, AssertUnwindSafe((self.run)()).catch_unwind()).await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(format!(
                "the check panicked: {}",
                cut(crate::error::panic_message(&*panic))
            )),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// At most [`ERROR_MAX`] bytes of `text`, cut at a character.
fn cut(mut text: String) -> String {
    if text.len() > ERROR_MAX {
        text.truncate(text.floor_char_boundary(ERROR_MAX));
        text.push('…');
    }
    text
}

/// The checks of a service, known to its health (not ready) but not run yet.
pub(crate) struct Pending(Vec<(HealthCheck, CheckState)>);

/// Makes `checks` part of `health`, each not ready until it has run.
pub(crate) fn register(checks: Vec<HealthCheck>, health: &Health) -> Pending {
    let states = health.watch_checks(checks.iter().map(|c| c.name.clone()).collect());
    Pending(checks.into_iter().zip(states).collect())
}

impl Pending {
    /// Runs every check once, together, then each on its timer until `shutdown`; the tasks
    /// end with the returned set.
    pub(crate) async fn start(self, shutdown: &Shutdown) -> JoinSet<()> {
        futures_util::future::join_all(self.0.iter().map(|(check, state)| async move {
            record(check, state, check.run_once().await, true);
        }))
        .await;
        let mut tasks = JoinSet::new();
        for (check, state) in self.0 {
            let mut shutdown = shutdown.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => return,
                        _ = tokio::time::sleep(check.every) => {}
                    }
                    record(&check, &state, check.run_once().await, false);
                }
            });
        }
        tasks
    }
}

/// Records a run's result, and logs a change (the `first` run's failure is one: the check was
/// not ready before it, but nobody heard why).
fn record(check: &HealthCheck, state: &CheckState, result: Result<(), String>, first: bool) {
    let changed = state.set(result);
    let failing = state.failing();
    if changed || (first && failing.is_some()) {
        match failing {
            None => tracing::info!(check = %check.name, "health check passes"),
            Some(e) => {
                tracing::warn!(check = %check.name, error = %crate::text::for_log(&e), "health check fails: not ready")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::server::HealthStatus;

    #[test]
    fn long_errors_are_cut_at_a_character() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(400);
        let cut = cut(long);
        assert!(cut.len() <= ERROR_MAX + '…'.len_utf8() && cut.ends_with('…'), "{cut}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_is_ready_while_its_checks_pass() {
        let (stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        health.watch_transports(Vec::new());
        // Fails on its second and third runs; the third never answers.
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let flaky = HealthCheck::new("database", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    1 => Err("connection refused".to_owned()),
                    2 => std::future::pending().await,
                    _ => Ok(()),
                }
            }
        })
        .every(Duration::from_secs(1))
        .timeout(Duration::from_millis(100));
        let always = HealthCheck::new("cache", || async { Ok::<_, String>(()) });
        let report = health.report();
        assert!(report.ready && report.checks.is_empty(), "{report:?}");

        let pending = register(vec![flaky, always], &health);
        // Not ready before the first runs.
        let report = health.report();
        assert!(
            !report.ready && report.status == HealthStatus::Unavailable,
            "{report:?}"
        );
        assert_eq!(report.checks[0].error.as_deref(), Some("not run yet"));

        // Ready once they ran.
        let _tasks = pending.start(&shutdown).await;
        let mut changes = health.subscribe();
        assert!(health.is_ready(), "{:?}", health.report());
        let json = serde_json::to_value(health.report()).unwrap();
        assert_eq!(
            json["checks"],
            serde_json::json!([{"name": "database", "ready": true}, {"name": "cache", "ready": true}])
        );

        // The second run fails: not ready, with its reason, and watchers hear of it (a watch
        // may also wake for what changed before it was made: the first runs).
        tokio::time::timeout(Duration::from_secs(5), async {
            while health.is_ready() {
                changes.changed().await;
            }
        })
        .await
        .unwrap();
        let report = health.report();
        assert!(!report.ready && report.live, "{report:?}");
        assert_eq!(report.checks[0].error.as_deref(), Some("connection refused"));
        assert!(report.checks[1].ready);

        // The third never answers: still not ready, now for its timeout.
        tokio::time::sleep(Duration::from_millis(1150)).await;
        assert_eq!(
            health.report().checks[0].error.as_deref(),
            Some("no answer within 100ms")
        );

        // The fourth passes.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(health.is_ready(), "{:?}", health.report());
        assert_eq!(runs.load(Ordering::SeqCst), 4);

        // Shutdown ends the runs.
        stop.send_replace(true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }

    fn explode() -> Result<(), String> {
        panic!("oops")
    }

    #[tokio::test]
    async fn a_panicking_check_is_a_failure() {
        let (_stop, shutdown) = Shutdown::new();
        let health = Health::new(None, &shutdown);
        let check = HealthCheck::new("boom", || async { explode() });
        let _tasks = register(vec![check], &health).start(&shutdown).await;
        let report = health.report();
        assert_eq!(
            report.checks[0].error.as_deref(),
            Some("the check panicked: oops"),
            "{report:?}"
        );
    }
}
