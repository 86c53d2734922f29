//! [`Bulkhead`] (concurrency with a bounded queue, shedding past it) and [`RateLimit`]
//! (GCRA). Each is one limit for every service it wraps: clone it onto several transports
//! or clients and they share it, unlike a per-connection limiter.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::{Guarded, Rejection};

/// At most `max` calls at once; up to `queue` more wait (each at most `max_wait`, and never
/// past its deadline); any further call is refused at once ([`Rejection::Overloaded`]):
/// load shedding instead of an unbounded backlog.
///
/// ```
/// use std::time::Duration;
/// use switchboard::prelude::*;
/// use switchboard::resilience::Bulkhead;
///
/// # #[message_pattern("report")]
/// # async fn report() -> u32 { 1 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// // 32 reports at a time, 64 waiting at most 1 s, the rest refused as UNAVAILABLE.
/// let limit = Bulkhead::new(32).queue(64).max_wait(Duration::from_secs(1));
/// let server = Microservice::new().handler(REPORT).layer(limit).listen("mem://bulkhead-doc").start().await?;
/// # server.shutdown().await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Bulkhead {
    slots: Arc<Slots>,
    queue: usize,
    max_wait: Duration,
}

/// The calls in, and those waiting; a counter, so the way in and out is one atomic step.
#[derive(Debug)]
struct Slots {
    max: usize,
    busy: AtomicUsize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// A call's place in a [`Bulkhead`], given back when dropped.
pub(super) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
        if self.0.waiting.load(Ordering::Acquire) > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// Counts a waiting call out however its wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// At most `max` calls at once, none waiting.
    pub fn new(max: usize) -> Self {
        Bulkhead {
            slots: Arc::new(Slots {
                max: max.max(1),
                busy: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
            queue: 0,
            max_wait: Duration::MAX,
        }
    }

    /// Up to `n` calls wait for a slot (0: none; the default).
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n;
        self
    }

    /// A waiting call gives up after `d` (by default it waits until its deadline).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }
}

impl<S> Layer<S> for Bulkhead {
    type Service = Limited<S, Bulkhead>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limit: self.clone(),
        }
    }
}

/// A service behind a [`Bulkhead`] or a [`RateLimit`].
#[derive(Clone, Debug)]
pub struct Limited<S, L> {
    inner: S,
    limit: L,
}

impl<S, R> Service<R> for Limited<S, Bulkhead>
where
    R: Guarded,
    S: Service<R, Response = R::Response, Error = R::Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = BoxFuture<'static, Result<R::Response, R::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if let Some(permit) = self.limit.try_enter() {
            let call = self.inner.call(req);
            return async move {
                let outcome = call.await;
                drop(permit);
                outcome
            }
            .boxed();
        }
        // The service that was made ready for this call is kept for it.
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let limit = self.limit.clone();
        async move {
            match limit.wait(req.deadline()).await {
                Ok(permit) => {
                    let outcome = inner.call(req).await;
                    drop(permit);
                    outcome
                }
                Err(why) => R::reject(req.route(), why),
            }
        }
        .boxed()
    }
}

impl Bulkhead {
    /// A slot now, if one is free.
    pub(super) fn try_enter(&self) -> Option<Slot> {
        let s = &self.slots;
        s.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < s.max).then_some(n + 1))
            .ok()
            .map(|_| Slot(s.clone()))
    }

    /// A slot after waiting in the queue (until `max_wait` or `deadline`), or
    /// [`Rejection::Overloaded`] when the queue is full or the wait too long.
    pub(super) async fn wait(&self, deadline: Option<Instant>) -> Result<Slot, Rejection> {
        let s = &self.slots;
        let queued = s
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            return Err(Rejection::Overloaded);
        }
        let _waiting = Waiting(&s.waiting);
        let now = Instant::now();
        let never = now + Duration::from_secs(86_400 * 365);
        let give_up = now
            .checked_add(self.max_wait)
            .unwrap_or(never)
            .min(deadline.unwrap_or(never));
        loop {
            // Registered before looking, so a slot freed in between wakes this wait.
            let freed = s.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_enter() {
                return Ok(slot);
            }
            if tokio::time::timeout_at(give_up, freed).await.is_err() {
                return Err(Rejection::Overloaded);
            }
        }
    }
}

/// At most `n` calls per period, with bursts of up to `burst` (GCRA, as `governor` does it),
/// shared by every clone: one limit for all the connections and transports it wraps. A
/// call over the limit is refused at once ([`Rejection::RateLimited`], `UNAVAILABLE` on a
/// server) unless it may wait ([`max_wait`](Self::max_wait)) for its slot.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::resilience::RateLimit;
///
/// # #[message_pattern("search")]
/// # async fn search() -> u32 { 1 }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> switchboard::Result<()> {
/// let limit = RateLimit::per_second(200);
/// let server = Microservice::new()
///     .handler(SEARCH)
///     .layer(limit.clone())
///     .listen("mem://rate-doc-a")
///     .listen("mem://rate-doc-b") // both transports share the 200 calls a second
///     .start()
///     .await?;
/// # server.shutdown().await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RateLimit {
    gcra: Arc<Gcra>,
    max_wait: Duration,
}

#[derive(Debug)]
struct Gcra {
    origin: Instant,
    /// Nanoseconds between calls at the sustained rate.
    interval: u64,
    /// How far ahead of the schedule a burst may run, in nanoseconds.
    tolerance: u64,
    /// Theoretical arrival time of the next call, in nanoseconds since `origin`.
    tat: AtomicU64,
}

impl RateLimit {
    /// `n` calls per `period`, in bursts of at most `n`.
    pub fn new(n: u32, period: Duration) -> Self {
        let n = n.max(1);
        let interval = u64::try_from(period.as_nanos() / u128::from(n))
            .unwrap_or(u64::MAX)
            .max(1);
        RateLimit {
            gcra: Arc::new(Gcra {
                origin: Instant::now(),
                interval,
                tolerance: interval.saturating_mul(u64::from(n - 1)),
                tat: AtomicU64::new(0),
            }),
            max_wait: Duration::ZERO,
        }
    }

    /// `n` calls per second.
    pub fn per_second(n: u32) -> Self {
        Self::new(n, Duration::from_secs(1))
    }

    /// Bursts of at most `n` calls (at least 1; by default the number per period).
    pub fn burst(self, n: u32) -> Self {
        let g = &self.gcra;
        RateLimit {
            gcra: Arc::new(Gcra {
                origin: g.origin,
                interval: g.interval,
                tolerance: g.interval.saturating_mul(u64::from(n.max(1) - 1)),
                tat: AtomicU64::new(0),
            }),
            max_wait: self.max_wait,
        }
    }

    /// A call over the limit waits up to `d` for its slot instead of being refused.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Takes a slot, waiting for it if it is within `max_wait`, or refuses.
    pub(super) async fn admit(&self) -> Result<(), Rejection> {
        match self.take(Instant::now()) {
            Ok(wait) if wait.is_zero() => Ok(()),
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(retry_after) => Err(Rejection::RateLimited { retry_after }),
        }
    }

    /// Takes a slot now, or one within `max_wait` (then returns how long to wait for it),
    /// or says when the next one would be free.
    pub(super) fn take(&self, now: Instant) -> Result<Duration, Duration> {
        let g = &self.gcra;
        let now = u64::try_from(now.saturating_duration_since(g.origin).as_nanos()).unwrap_or(u64::MAX);
        let max_wait = u64::try_from(self.max_wait.as_nanos()).unwrap_or(u64::MAX);
        let mut tat = g.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            // The earliest this call conforms: when it is at most `tolerance` ahead.
            let conforms_at = start.saturating_sub(g.tolerance);
            let wait = conforms_at.saturating_sub(now);
            if wait > max_wait {
                return Err(Duration::from_nanos(wait));
            }
            match g.tat.compare_exchange_weak(
                tat,
                start.saturating_add(g.interval),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Duration::from_nanos(wait)),
                Err(current) => tat = current,
            }
        }
    }
}

impl<S> Layer<S> for RateLimit {
    type Service = Limited<S, RateLimit>;

    fn layer(&self, inner: S) -> Self::Service {
        Limited {
            inner,
            limit: self.clone(),
        }
    }
}

impl<S, R> Service<R> for Limited<S, RateLimit>
where
    R: Guarded,
    S: Service<R, Response = R::Response, Error = R::Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = R::Response;
    type Error = R::Error;
    type Future = BoxFuture<'static, Result<R::Response, R::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), R::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.limit.take(Instant::now()) {
            Ok(wait) if wait.is_zero() => self.inner.call(req).boxed(),
            Ok(wait) => {
                let mut inner = self.inner.clone();
                std::mem::swap(&mut inner, &mut self.inner);
                async move {
                    tokio::time::sleep(wait).await;
                    inner.call(req).await
                }
                .boxed()
            }
            Err(retry_after) => {
                std::future::ready(R::reject(req.route(), Rejection::RateLimited { retry_after })).boxed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gcra_allows_the_burst_then_the_rate() {
        let limit = RateLimit::per_second(5);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(limit.take(now), Ok(Duration::ZERO));
        }
        let Err(after) = limit.take(now) else {
            panic!("the sixth call in the same instant must be refused")
        };
        assert_eq!(after, Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(limit.take(Instant::now()), Ok(Duration::ZERO));
        assert!(limit.take(Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_long_run_the_rate_holds() {
        let limit = RateLimit::per_second(5).burst(1);
        let mut taken = 0;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            for _ in 0..100 {
                taken += usize::from(limit.take(Instant::now()).is_ok());
            }
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(taken, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_may_wait_for_its_slot() {
        let limit = RateLimit::per_second(10).burst(1).max_wait(Duration::from_millis(250));
        let now = Instant::now();
        assert_eq!(limit.take(now), Ok(Duration::ZERO));
        assert_eq!(limit.take(now), Ok(Duration::from_millis(100)));
        assert_eq!(limit.take(now), Ok(Duration::from_millis(200)));
        assert_eq!(limit.take(now), Err(Duration::from_millis(300)));
    }
}
