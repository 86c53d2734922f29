//! [`Policy`]: the client's resilience layers, composed in the one order that makes sense.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Bulkhead, CircuitBreaker, Guarded, RateLimit, Rejection, Retry};
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
        ClientService::new(PolicyService {
            policy: Arc::new(self.clone()),
            transport,
        })
    }
}

/// A [`Policy`] around a client's transport: every step in one future (one allocation
/// for all of them, not one per layer).
#[derive(Clone)]
struct PolicyService {
    policy: Arc<Policy>,
    transport: ClientService,
}

impl Service<Outbound> for PolicyService {
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies, Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        let (p, transport) = (self.policy.clone(), self.transport.clone());
        async move {
            let refuse = |route: &str, why| Outbound::reject(route, why);
            if out.deadline <= Instant::now() {
                return refuse(&out.route, Rejection::DeadlineExceeded);
            }
            let _slot = match &p.bulkhead {
                None => None,
                Some(b) => match b.try_enter() {
                    Some(slot) => Some(slot),
                    None => match b.wait(Some(out.deadline)).await {
                        Ok(slot) => Some(slot),
                        Err(why) => return refuse(&out.route, why),
                    },
                },
            };
            if let Some(r) = &p.rate
                && let Err(why) = r.admit().await
            {
                return refuse(&out.route, why);
            }
            let pass = match &p.breaker {
                None => None,
                Some(b) => match b.enter(&out.route) {
                    Ok(pass) => Some(pass),
                    Err(why) => return refuse(&out.route, why),
                },
            };
            let attempt = |out: Outbound| attempt(&transport, out, p.attempt_timeout);
            let outcome = match &p.retry {
                Some(r) if r.applies_to(&out) => r.run(out, attempt).await,
                Some(r) => {
                    r.count_call();
                    attempt(out).await
                }
                None => attempt(out).await,
            };
            if let Some(pass) = pass {
                pass.finish(Outbound::failed(&outcome));
            }
            outcome
        }
        .boxed()
    }
}

/// One attempt through the transport, within the per-attempt timeout.
fn attempt(
    transport: &ClientService,
    out: Outbound,
    limit: Option<Duration>,
) -> BoxFuture<'static, Result<Replies, Error>> {
    let Some(limit) = limit else {
        return transport.call(out);
    };
    let route = out.route.clone();
    let call = transport.call(out);
    async move {
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Outbound::timed_out(&route, limit),
        }
    }
    .boxed()
}
