//! [`Policy`]: the client's resilience layers, composed in the one order that makes sense.

use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Bulkhead, CircuitBreaker, Guarded, RateLimit, Rejection, Retry, Timeout};
use crate::client::ClientService;
use crate::error::Error;
use crate::service::{Outbound, Replies};

/// A client's resilience policy, for [`ClientBuilder::layer`](crate::ClientBuilder::layer).
/// Whatever is configured is applied in this order, outermost first:
///
/// 1. the deadline: a call whose deadline has already passed is refused;
/// 2. the [`Bulkhead`], then the [`RateLimit`]: the caller's own limits;
/// 3. the [`CircuitBreaker`]: an open circuit refuses the call without a round trip;
/// 4. the [`Retry`], within its budget;
/// 5. the per-attempt [`Timeout`], so a timed-out attempt is a failure the breaker counts
///    and the retry may repeat;
/// 6. the transport.
///
/// The call's deadline ([`Call::timeout`](crate::Call::timeout)) covers everything.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    bulkhead: Option<Bulkhead>,
    rate: Option<RateLimit>,
    breaker: Option<CircuitBreaker>,
    retry: Option<Retry>,
    attempt_timeout: Option<Duration>,
}

impl Policy {
    /// No policy yet: calls go straight through (past the deadline check).
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits this client's calls in flight.
    pub fn bulkhead(mut self, b: Bulkhead) -> Self {
        self.bulkhead = Some(b);
        self
    }

    /// Limits this client's call rate.
    pub fn rate_limit(mut self, r: RateLimit) -> Self {
        self.rate = Some(r);
        self
    }

    /// Stops calling a pattern that keeps failing.
    pub fn circuit_breaker(mut self, b: CircuitBreaker) -> Self {
        self.breaker = Some(b);
        self
    }

    /// Retries retryable failures of idempotent calls.
    pub fn retry(mut self, r: Retry) -> Self {
        self.retry = Some(r);
        self
    }

    /// Gives up on an attempt after `d` (the call's deadline still bounds the whole call).
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }
}

impl Layer<ClientService> for Policy {
    type Service = ClientService;

    fn layer(&self, transport: ClientService) -> ClientService {
        let mut s = transport;
        if let Some(d) = self.attempt_timeout {
            s = ClientService::new(Timeout::new(d).layer(s));
        }
        if let Some(r) = &self.retry {
            s = ClientService::new(r.layer(s));
        }
        if let Some(b) = &self.breaker {
            s = ClientService::new(b.layer(s));
        }
        if let Some(r) = &self.rate {
            s = ClientService::new(r.layer(s));
        }
        if let Some(b) = &self.bulkhead {
            s = ClientService::new(b.layer(s));
        }
        ClientService::new(DeadlineCheck(s))
    }
}

/// Refuses a call whose deadline has passed before anything else is done for it.
#[derive(Clone)]
struct DeadlineCheck(ClientService);

impl Service<Outbound> for DeadlineCheck {
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies, Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        if out.deadline <= Instant::now() {
            return std::future::ready(Outbound::reject(&out.route, Rejection::DeadlineExceeded)).boxed();
        }
        self.0.call(out)
    }
}
