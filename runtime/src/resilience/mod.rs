//! Resilience: what keeps a failing or overloaded service from taking its callers down.
//!
//! Each policy is a `tower` layer, usable on its own on either end (a [`Microservice::layer`]
//! or [`ClientBuilder::layer`]) or all together, in one fixed order, through [`Policy`]:
//!
//! ```text
//! caller ─▶ bulkhead ─▶ rate limit ─▶ circuit breaker ─▶ retry (with budget) ─▶ attempt timeout ─▶ transport
//! ```
//!
//! so an attempt that times out is a failure the breaker counts, a retry never bypasses the
//! breaker or the limits, and a refused call costs no network round trip. The call's own
//! deadline ([`Call::timeout`]) covers all of it, and [`Call::fallback`] answers when the
//! service could not.
//!
//! - [`CircuitBreaker`]: failure rate and slow-call rate over a sliding window, or
//!   consecutive failures; open for a time that may grow; half-open with a few probes;
//!   one circuit per pattern ([`CircuitBreaker::try_enter`] and [`CircuitBreaker::detached`]
//!   let a balancer keep one per pattern and instance, as `switchboard-discovery` does).
//! - [`Retry`]: exponential backoff with full jitter, a retry budget, retryable errors only
//!   ([`Error::is_retryable`]), idempotent calls only; each attempt carries its number and
//!   a stable idempotency key in its headers, and its attempts (and hedges) share a [`Tried`]
//!   record, so a balancer sends a later attempt to another instance.
//! - [`Timeout`]: a limit per attempt (on a client) or per handler call (on a server).
//! - [`Bulkhead`]: at most N calls at once, a bounded queue, load shedding past it.
//! - [`RateLimit`]: a GCRA limit shared by every connection and transport it is given to.
//!
//! ```
//! use std::time::Duration;
//! use switchboard::prelude::*;
//! use switchboard::resilience::{CircuitBreaker, Policy, Retry};
//!
//! # #[message_pattern("quote")]
//! # async fn quote() -> u32 { 42 }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> switchboard::Result<()> {
//! # let server = Microservice::new().handler(QUOTE).listen("mem://quotes-doc").start().await?;
//! let quotes = Client::builder("mem://quotes-doc")
//!     .timeout(Duration::from_secs(5))
//!     .layer(
//!         Policy::new()
//!             .attempt_timeout(Duration::from_secs(1))
//!             .retry(Retry::new().max_attempts(3))
//!             .circuit_breaker(CircuitBreaker::new().consecutive_failures(5).open_for(Duration::from_secs(30))),
//!     )
//!     .build()?;
//! let price = quotes.send(QUOTE, ()).idempotent().fallback(0).await?;
//! assert_eq!(price, 42);
//! # server.shutdown().await
//! # }
//! ```
//!
//! [`Microservice::layer`]: crate::Microservice::layer
//! [`ClientBuilder::layer`]: crate::ClientBuilder::layer
//! [`Call::timeout`]: crate::Call::timeout
//! [`Call::fallback`]: crate::Call::fallback
//! [`Error::is_retryable`]: crate::Error::is_retryable

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, RpcError};
use crate::service::{Outbound, Replies, Reply, Request};

mod breaker;
mod limit;
pub(crate) mod policy;
mod retry;
mod timeout;

pub use crate::error::Rejection;
pub use crate::service::{Idempotent, Tried};
pub use breaker::{CircuitBreaker, CircuitBreakerService, CircuitPass, CircuitState};
pub use limit::{Bulkhead, Limited, RateLimit};
pub use policy::{Policy, PolicyService};
pub use retry::{ATTEMPT_HEADER, IDEMPOTENCY_KEY_HEADER, Retry, RetryService};
pub use timeout::{Timeout, TimeoutService};

/// A call as the resilience layers see it, on either end: [`Request`] on a server,
/// [`Outbound`] on a client. It says how to refuse a call and what counts as a failure.
pub trait Guarded: Send + 'static {
    /// What the service answers.
    type Response: Send + 'static;
    /// What the service fails with.
    type Error: Send + 'static;

    /// The call's route (a circuit breaker keeps one circuit per route).
    fn route(&self) -> &Cow<'static, str>;

    /// When the caller stops waiting, if known.
    fn deadline(&self) -> Option<Instant>;

    /// The answer to a call refused with `why`: an [`Error::Rejected`] on a client, an
    /// [`RpcError::unavailable`] reply on a server (its caller may retry it).
    fn reject(route: &str, why: Rejection) -> Result<Self::Response, Self::Error>;

    /// The answer to a call that did not finish within `after`.
    fn timed_out(route: &str, after: Duration) -> Result<Self::Response, Self::Error>;

    /// True when the outcome means the service could not answer (what a breaker counts
    /// as a failure): a transport error, a timeout, an `UNAVAILABLE` reply; not a
    /// handler's own error.
    fn failed(outcome: &Result<Self::Response, Self::Error>) -> bool;
}

impl Guarded for Outbound {
    type Response = Replies;
    type Error = Error;

    fn route(&self) -> &Cow<'static, str> {
        &self.route
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }

    fn reject(route: &str, reason: Rejection) -> Result<Replies, Error> {
        crate::signal::shed("client", route, reason.kind());
        Err(Error::Rejected {
            pattern: route.to_owned(),
            reason,
        })
    }

    fn timed_out(route: &str, after: Duration) -> Result<Replies, Error> {
        Err(Error::Timeout {
            pattern: route.to_owned(),
            after,
        })
    }

    fn failed(outcome: &Result<Replies, Error>) -> bool {
        match outcome {
            Ok(replies) => replies
                .first_error()
                .is_some_and(|e| e.is_unavailable() || e.is_deadline_exceeded()),
            Err(e) => e.is_unavailable(),
        }
    }
}

impl Guarded for Request {
    type Response = Reply;
    type Error = std::convert::Infallible;

    fn route(&self) -> &Cow<'static, str> {
        self.context().route_cow()
    }

    fn deadline(&self) -> Option<Instant> {
        self.context().deadline()
    }

    fn reject(route: &str, why: Rejection) -> Result<Reply, Self::Error> {
        crate::signal::shed("server", route, why.kind());
        let message = format!("{route} is unavailable: {why}");
        Ok(Reply::error(match why {
            Rejection::DeadlineExceeded => RpcError::deadline_exceeded(message),
            _ => RpcError::unavailable(message),
        }))
    }

    fn timed_out(route: &str, after: Duration) -> Result<Reply, Self::Error> {
        Ok(Reply::error(RpcError::deadline_exceeded(format!(
            "{route} did not answer within {after:?}"
        ))))
    }

    fn failed(outcome: &Result<Reply, Self::Error>) -> bool {
        match outcome {
            Ok(reply) => reply
                .as_error()
                .is_some_and(|e| e.is_unavailable() || e.is_deadline_exceeded()),
            Err(never) => match *never {},
        }
    }
}
