//! [`PatternOptions`]: what a pattern declares beyond itself, once, for both ends: the limits
//! its server keeps and how its typed callers call it.

use std::time::Duration;

use super::EventOrder;

/// A pattern's declared policy, written in its attribute
/// (`#[message_pattern("charge", idempotent, retries = 2, timeout = "2s", concurrency = 32, rate = "200/s")]`)
/// or on a hand-written descriptor ([`MessageDef::with_options`](crate::MessageDef::with_options)).
///
/// - The server wraps the handler in a [`RateLimit`](crate::resilience::RateLimit), then a
///   [`Bulkhead`](crate::resilience::Bulkhead) of `concurrency` calls (with as many again
///   waiting), then a [`Timeout`](crate::resilience::Timeout).
/// - A typed caller ([`Client::send`](crate::Client::send)) gives the call `timeout` as its
///   deadline, marks it [`Idempotent`](crate::resilience::Idempotent) when it is, and retries
///   it `retries` times (with the client's retry budget) after a retryable failure.
/// - An event pattern's events are handled one after another in arrival order, unless it is
///   declared [`concurrent`](Self::concurrent) (`#[event_pattern("x", concurrent)]`) or
///   ordered per [`key`](Self::key) (`#[event_pattern("x", key = "orderId")]`).
///
/// `retries` needs `idempotent`: the attribute refuses it otherwise, and so does
/// [`retries`](Self::retries) in a constant.
///
/// ```
/// use std::time::Duration;
/// use switchboard::{MessageDef, PatternOptions, pattern};
///
/// // A NestJS service's pattern, declared by hand with the same policy.
/// const QUOTE: MessageDef<String, f64> = MessageDef::new(pattern!("quote"))
///     .with_options(PatternOptions::new().idempotent().retries(2).timeout(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PatternOptions {
    timeout: Option<Duration>,
    concurrency: Option<u32>,
    rate: Option<(u32, Duration)>,
    idempotent: bool,
    retries: u32,
    order: EventOrder,
}

impl PatternOptions {
    /// Nothing declared.
    pub const fn new() -> Self {
        PatternOptions {
            timeout: None,
            concurrency: None,
            rate: None,
            idempotent: false,
            retries: 0,
            order: EventOrder::InOrder,
        }
    }

    /// The handler's time limit, and its typed callers' deadline.
    pub const fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// At most `n` calls of the handler at once (at least 1).
    pub const fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = Some(if n == 0 { 1 } else { n });
        self
    }

    /// At most `n` calls of the handler per `per`, for all its transports together.
    pub const fn rate(mut self, n: u32, per: Duration) -> Self {
        self.rate = Some((if n == 0 { 1 } else { n }, per));
        self
    }

    /// A repeated call does no harm: callers may retry and hedge it.
    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Typed callers retry a retryable failure up to `n` times. Needs
    /// [`idempotent`](Self::idempotent) first (a compile error in a constant otherwise).
    pub const fn retries(mut self, n: u32) -> Self {
        assert!(
            self.idempotent,
            "`retries` repeats a call, which is only safe for an idempotent pattern: call `.idempotent()` first"
        );
        self.retries = n;
        self
    }

    /// An event pattern's events are handled concurrently, as they arrive, instead of one
    /// after another.
    pub const fn concurrent(mut self) -> Self {
        self.order = EventOrder::Concurrent;
        self
    }

    /// An event pattern's events are handled in arrival order among those whose payload has
    /// the same value in the top-level field `field`, and concurrently across values.
    pub const fn key(mut self, field: &'static str) -> Self {
        self.order = EventOrder::ByKey(field);
        self
    }

    /// How the pattern's events are handled.
    pub const fn get_order(&self) -> EventOrder {
        self.order
    }

    /// The declared time limit.
    pub const fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The declared concurrency limit.
    pub const fn get_concurrency(&self) -> Option<u32> {
        self.concurrency
    }

    /// The declared rate limit: calls per period.
    pub const fn get_rate(&self) -> Option<(u32, Duration)> {
        self.rate
    }

    /// Whether a repeated call does no harm.
    pub const fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// How many times typed callers retry.
    pub const fn get_retries(&self) -> u32 {
        self.retries
    }

    /// These options with the fields given replacing the declared ones; retries only where
    /// the pattern is idempotent.
    pub(crate) fn overridden(
        mut self,
        timeout: Option<Duration>,
        concurrency: Option<u32>,
        rate: Option<(u32, Duration)>,
        retries: Option<u32>,
    ) -> Self {
        self.timeout = timeout.or(self.timeout);
        self.concurrency = concurrency.or(self.concurrency);
        self.rate = rate.or(self.rate);
        if self.idempotent {
            self.retries = retries.unwrap_or(self.retries);
        }
        self
    }

    /// True when nothing is declared.
    pub const fn is_empty(&self) -> bool {
        self.timeout.is_none()
            && self.concurrency.is_none()
            && self.rate.is_none()
            && !self.idempotent
            && matches!(self.order, EventOrder::InOrder)
    }
}

/// Marks a call as safe to repeat, in its extensions ([`Call::idempotent`](crate::Call::idempotent)
/// puts it there); only such calls are retried, unless the [`Retry`](crate::resilience::Retry) is told
/// [`any_call`](crate::resilience::Retry::any_call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotent;
