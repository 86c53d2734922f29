//! [`Timeout`]: a limit on each attempt (client) or each handler call (server).

use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};

use super::Guarded;

/// Gives up on a call after a time: on a client, each attempt (the call's own deadline,
/// [`Call::timeout`](crate::Call::timeout), covers every attempt and the waits between
/// them); on a server, the handler, which is then dropped and its caller answered with a
/// `DEADLINE_EXCEEDED` error (a Switchboard client reports it as [`Error::Timeout`]). The
/// call's deadline still applies when it is sooner.
///
/// [`Error::Timeout`]: crate::Error::Timeout
///
/// ```
/// use std::time::Duration;
/// use switchboard::prelude::*;
/// use switchboard::resilience::Timeout;
///
/// #[message_pattern("slow")]
/// async fn slow() -> u32 {
///     tokio::time::sleep(Duration::from_secs(60)).await;
///     1
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let server = Microservice::new()
///     .handler(SLOW)
///     .layer(Timeout::new(Duration::from_millis(50)))
///     .listen("mem://timeout-doc")
///     .start()
///     .await?;
/// let client = Client::connect("mem://timeout-doc").await?;
/// let err = client.send(SLOW, ()).await.unwrap_err();
/// assert!(matches!(err, switchboard::Error::Timeout { .. }), "{err}");
/// # server.shutdown().await
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// At most `after` per call.
    pub fn new(after: Duration) -> Self {
        Timeout { after }
    }
}

impl<S> Layer<S> for Timeout {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            after: self.after,
        }
    }
}

/// A service behind a [`Timeout`].
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    after: Duration,
}

impl<S, R> Service<R> for TimeoutService<S>
where
    R: Guarded,
    S: Service<R, Response = R::Response, Error = R::Error>,
    S::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = BoxFuture<'static, Result<R::Response, R::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let route = req.route().clone();
        let after = self.after;
        let call = self.inner.call(req);
        async move {
            match tokio::time::timeout(after, call).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::debug!(pattern = &*route, ?after, "attempt timed out");
                    R::timed_out(&route, after)
                }
            }
        }
        .boxed()
    }
}
