//! [`Policy`]: the client's resilience layers, composed in the one order that makes sense.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, Either, FutureExt};
use std::future::Future;
use std::task::{Context as TaskContext, Poll};
use tokio::time::Instant;

use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use super::limit::Slot;
use super::{Bulkhead, CircuitBreaker, Guarded, IDEMPOTENCY_KEY_HEADER, Idempotent, RateLimit, Rejection, Retry};
use crate::error::Error;
use crate::service::{Kind, Outbound, Replies, Tried};

/// A client's resilience policy, for [`ClientBuilder::layer`](crate::ClientBuilder::layer).
/// Whatever is configured is applied in this order, outermost first:
///
/// 1. the deadline: a call whose deadline has already passed is refused;
/// 2. the [`Bulkhead`], then the [`RateLimit`]: the caller's own limits;
/// 3. the [`CircuitBreaker`]: an open circuit refuses the call without a round trip;
/// 4. the [`Retry`], within its budget;
/// 5. the per-attempt [`Timeout`](super::Timeout), so a timed-out attempt is a failure the
///    breaker counts and the retry may repeat;
/// 6. the hedge: an idempotent attempt with no answer after a delay is sent once more (on a
///    discovered client, to another instance: see [`Tried`]), and the first good answer wins
///    (within a budget of its own, as the retry's);
/// 7. the transport.
///
/// The call's deadline ([`Call::timeout`](crate::Call::timeout)) covers everything.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    bulkhead: Option<Bulkhead>,
    rate: Option<RateLimit>,
    breaker: Option<CircuitBreaker>,
    retry: Option<Retry>,
    attempt_timeout: Option<Duration>,
    hedge: Option<Hedge>,
}

/// When to send an attempt a second time, and how many second attempts may be sent.
#[derive(Clone)]
struct Hedge {
    after: Duration,
    budget: Arc<TpsBudget>,
}

impl std::fmt::Debug for Hedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
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

    /// Hedges idempotent requests: an attempt with no answer after `after` is sent again,
    /// and the first good answer wins (the other is dropped). Second attempts may add at most
    /// 20 % to the hedged calls over 10 s, plus 10 a second, as the retry budget, so a slow
    /// service does not get twice the load. Only calls marked idempotent are hedged. On a
    /// discovered client the second attempt goes to another instance than the first
    /// ([`Tried`]).
    pub fn hedge(mut self, after: Duration) -> Self {
        self.hedge = Some(Hedge {
            after,
            budget: Arc::new(TpsBudget::default()),
        });
        self
    }
}

impl<S> Layer<S> for Policy {
    type Service = PolicyService<S>;

    fn layer(&self, transport: S) -> PolicyService<S> {
        PolicyService {
            policy: Arc::new(self.clone()),
            transport,
        }
    }
}

/// A client's transport (or the layers over it) under a [`Policy`].
#[derive(Clone, Debug)]
pub struct PolicyService<S> {
    policy: Arc<Policy>,
    transport: S,
}

impl<S> Service<Outbound> for PolicyService<S>
where
    S: Service<Outbound, Response = Replies, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies, Error>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        // Each attempt readies its own copy of the transport.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        self.policy.call(&self.transport, out).whole()
    }
}

impl<S> PolicyService<S>
where
    S: Service<Outbound, Response = Replies, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    /// Calls through the policy without a clone of it; a single attempt comes back as the
    /// transport's own future with what it holds, for a caller that polls it itself.
    pub(crate) fn start(&self, out: Outbound) -> Started<Attempt<S>> {
        self.policy.call(&self.transport, out)
    }
}

/// The transport's future for one attempt.
pub(crate) type Attempt<S> = Either<<S as Service<Outbound>>::Future, BoxFuture<'static, Result<Replies, Error>>>;

/// A call through a [`Policy`], as it starts.
pub(crate) enum Started<F> {
    /// One attempt: the transport's future, and what the call holds until it ends (whoever
    /// polls it counts the outcome through that, and keeps to its timeout).
    Held(F, Held),
    /// Anything else (refused, waiting, retried, hedged): one future of its own.
    Whole(BoxFuture<'static, Result<Replies, Error>>),
}

impl<F: Future<Output = Result<Replies, Error>> + Send + 'static> Started<F> {
    /// The call as one future that keeps to everything itself.
    pub(crate) fn whole(self) -> BoxFuture<'static, Result<Replies, Error>> {
        match self {
            Started::Held(call, held) => held.around(call),
            Started::Whole(call) => call,
        }
    }
}

/// How a call fares at the policy's limits.
enum Admission {
    /// In, holding its bulkhead slot if there is one; the clock when it was read.
    Now(Option<Slot>, Option<Instant>),
    /// In after a wait for its rate slot (taken already).
    After(Option<Slot>, Duration),
    /// The bulkhead makes it wait (the rate limit is not asked yet).
    Later,
    Refused(Rejection),
}

impl Policy {
    /// One call through every step: admitted at once in the common case, so its future
    /// holds only what the attempt needs.
    fn call<S: Inner>(self: &Arc<Self>, transport: &S, out: Outbound) -> Started<Attempt<S>> {
        let later = match self.admit_now(&out) {
            Admission::Now(slot, now) => return self.guarded(transport, out, slot, now),
            Admission::Refused(why) => std::future::ready(Outbound::reject(&out.route, why)).boxed(),
            Admission::After(slot, wait) => {
                let (policy, transport) = (self.clone(), transport.clone());
                async move {
                    tokio::time::sleep(wait).await;
                    policy.guarded(&transport, out, slot, None).whole().await
                }
                .boxed()
            }
            Admission::Later => {
                let (policy, transport) = (self.clone(), transport.clone());
                async move {
                    let slot = match &policy.bulkhead {
                        None => None,
                        Some(b) => match b.try_enter() {
                            Some(slot) => Some(slot),
                            None => match b.wait(Some(out.deadline)).await {
                                Ok(slot) => Some(slot),
                                Err(why) => return Outbound::reject(&out.route, why),
                            },
                        },
                    };
                    if let Some(r) = &policy.rate
                        && let Err(why) = r.admit().await
                    {
                        return Outbound::reject(&out.route, why);
                    }
                    policy.guarded(&transport, out, slot, None).whole().await
                }
                .boxed()
            }
        };
        Started::Whole(later)
    }

    /// The deadline, the bulkhead and the rate limit, without waiting.
    fn admit_now(&self, out: &Outbound) -> Admission {
        let needs_clock = self.rate.is_some();
        let now = needs_clock.then(Instant::now);
        if now.is_some_and(|now| out.deadline <= now) {
            return Admission::Refused(Rejection::DeadlineExceeded);
        }
        let slot = match &self.bulkhead {
            None => None,
            Some(b) => match b.try_enter() {
                Some(slot) => Some(slot),
                None => return Admission::Later,
            },
        };
        if let (Some(r), Some(now)) = (&self.rate, now) {
            match r.take(now) {
                Ok(wait) if wait.is_zero() => {}
                Ok(wait) => return Admission::After(slot, wait),
                Err(retry_after) => return Admission::Refused(Rejection::RateLimited { retry_after }),
            }
        }
        Admission::Now(slot, now)
    }

    /// The breaker, the retry and the attempts, for an admitted call (`now`: the clock, if
    /// the admission read it).
    fn guarded<S: Inner>(
        &self,
        transport: &S,
        out: Outbound,
        slot: Option<Slot>,
        now: Option<Instant>,
    ) -> Started<Attempt<S>> {
        let pass = match &self.breaker {
            None => None,
            Some(b) => match b.enter_until(&out.route, Some(out.deadline)) {
                Ok(pass) => Some(pass),
                Err(why) => return Started::Whole(std::future::ready(Outbound::reject(&out.route, why)).boxed()),
            },
        };
        let retried = self.retry.as_ref().filter(|r| r.applies_to(&out));
        let hedged = self.hedge.is_some() && out.kind == Kind::Request && out.extensions.get::<Idempotent>().is_some();
        if retried.is_none() && !hedged {
            // The common case: one attempt. Its timeout needs no timer when the call's
            // deadline comes first (the call ends then, and the breaker counts a call dropped
            // at its deadline as timed out); when it comes first, its timer is the only one
            // the call needs.
            let limit = self.attempt_timeout.and_then(|limit| {
                let at = now.unwrap_or_else(Instant::now) + limit;
                (at < out.deadline).then(|| Limit {
                    at,
                    after: limit,
                    route: out.route.clone(),
                })
            });
            return Started::Held(
                start(transport, out),
                Held {
                    pass,
                    _slot: slot,
                    limit,
                },
            );
        }
        let (transport, limit, hedge) = (transport.clone(), self.attempt_timeout, self.hedge.clone());
        let attempt = move |out: Outbound| attempt(&transport, out, limit, hedge.as_ref());
        let call = match retried {
            Some(r) => {
                let r = r.clone();
                async move { r.run(out, attempt).await }.boxed()
            }
            None => attempt(out),
        };
        let held = Held {
            pass,
            _slot: slot,
            limit: None,
        };
        Started::Whole(held.around(call))
    }
}

/// A single attempt's timeout: when it ends the attempt, and how it is named in the error.
struct Limit {
    at: Instant,
    after: Duration,
    route: std::borrow::Cow<'static, str>,
}

/// What an admitted call holds until it ends: its breaker pass (its outcome is counted),
/// its bulkhead slot, and its attempt's timeout when that comes before the call's deadline.
pub(crate) struct Held {
    pass: Option<super::breaker::Pass>,
    // Freed when the call ends, with the rest.
    _slot: Option<Slot>,
    limit: Option<Limit>,
}

impl Held {
    /// When the attempt's timeout ends the call, if it comes before the call's deadline.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.limit.as_ref().map(|l| l.at)
    }

    /// Counts the call's outcome and frees its slot.
    pub(crate) fn finish(mut self, outcome: &Result<Replies, Error>) {
        if let Some(pass) = self.pass.take() {
            pass.finish(Outbound::failed(outcome));
        }
    }

    /// The call's error once its attempt's timeout has passed, counted as a failure (to be
    /// called only when [`due`](Self::due) said when).
    pub(crate) fn timed_out(self) -> Error {
        let outcome = match &self.limit {
            Some(limit) => Outbound::timed_out(&limit.route, limit.after),
            None => Err(Error::Closed),
        };
        self.finish(&outcome);
        outcome.err().unwrap_or(Error::Closed)
    }

    /// `call` under what it holds, as one future.
    fn around<F>(self, call: F) -> BoxFuture<'static, Result<Replies, Error>>
    where
        F: Future<Output = Result<Replies, Error>> + Send + 'static,
    {
        Admitted {
            call,
            timer: None,
            held: Some(self),
        }
        .boxed()
    }
}

pin_project_lite::pin_project! {
    /// An admitted call as one future: under its attempt's timeout, counted by the breaker,
    /// holding the bulkhead slot until it ends.
    struct Admitted<F> {
        #[pin]
        call: F,
        // Armed when the call first waits (an answer ready at once needs no timer).
        #[pin]
        timer: Option<tokio::time::Sleep>,
        held: Option<Held>,
    }
}

impl<F: Future<Output = Result<Replies, Error>>> Future for Admitted<F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let held = this.held.take().expect("Admitted polled after it completed");
        if let Poll::Ready(outcome) = this.call.poll(cx) {
            held.finish(&outcome);
            return Poll::Ready(outcome);
        }
        if let Some(due) = held.due() {
            if this.timer.is_none() {
                this.timer.set(Some(tokio::time::sleep_until(due)));
            }
            if let Some(Poll::Ready(())) = this.timer.as_pin_mut().map(|t| t.poll(cx)) {
                return Poll::Ready(Err(held.timed_out()));
            }
        }
        *this.held = Some(held);
        Poll::Pending
    }
}

/// The transport's call of `out`, handed over now when the transport is ready at once (a
/// client's stack always is), else on the first poll.
fn start<S: Inner>(transport: &S, out: Outbound) -> Either<S::Future, BoxFuture<'static, Result<Replies, Error>>> {
    let mut transport = transport.clone();
    match transport.poll_ready(&mut TaskContext::from_waker(std::task::Waker::noop())) {
        Poll::Ready(Ok(())) => Either::Left(transport.call(out)),
        _ => Either::Right(transport.oneshot(out).boxed()),
    }
}

/// One attempt through the transport (hedged, if it is to be), within the per-attempt timeout.
fn attempt<S: Inner>(
    transport: &S,
    out: Outbound,
    limit: Option<Duration>,
    hedge: Option<&Hedge>,
) -> BoxFuture<'static, Result<Replies, Error>> {
    let hedge = hedge.filter(|_| out.kind == Kind::Request && out.extensions.get::<Idempotent>().is_some());
    let route = out.route.clone();
    let call = match hedge {
        Some(h) => hedged(transport, out, h.clone()),
        None => transport.clone().oneshot(out).boxed(),
    };
    let Some(limit) = limit else {
        return call;
    };
    async move {
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Outbound::timed_out(&route, limit),
        }
    }
    .boxed()
}

/// Sends `out`, and once more if no answer came within the hedge's delay; the first good
/// answer wins, and a failed one waits for the other. Both carry one idempotency key, and
/// one [`Tried`] record, so a balancer sends the second to another instance.
fn hedged<S: Inner>(transport: &S, mut out: Outbound, hedge: Hedge) -> BoxFuture<'static, Result<Replies, Error>> {
    if out.headers.get(IDEMPOTENCY_KEY_HEADER).is_none() {
        out.headers
            .insert(IDEMPOTENCY_KEY_HEADER, super::retry::idempotency_key());
    }
    Tried::attach(&mut out);
    let mut first = transport.clone().oneshot(out.clone()).boxed();
    let transport = transport.clone();
    async move {
        hedge.budget.deposit();
        tokio::select! {
            outcome = &mut first => return outcome,
            () = tokio::time::sleep(hedge.after) => {}
        }
        if !hedge.budget.withdraw() {
            return first.await;
        }
        tracing::debug!(pattern = &*out.route, after = ?hedge.after, "no answer yet; hedging");
        let second = transport.oneshot(out).boxed();
        let (outcome, other) = futures_util::future::select(first, second).await.factor_first();
        if Outbound::failed(&outcome) {
            other.await
        } else {
            outcome
        }
    }
    .boxed()
}

/// What the policy needs of the service it wraps: a client transport, or layers over one.
trait Inner:
    Service<Outbound, Response = Replies, Error = Error, Future: Send + 'static> + Clone + Send + Sync + 'static
{
}

impl<S> Inner for S where
    S: Service<Outbound, Response = Replies, Error = Error, Future: Send + 'static> + Clone + Send + Sync + 'static
{
}
