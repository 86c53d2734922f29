//! [`Retry`]: tries a failed call again, when that is safe and worth it.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use crate::error::Error;
use crate::service::{Idempotent, Kind, Outbound, Replies, Tried};

/// The header carrying an attempt's number (`1` for the first) on a call that may be retried.
pub const ATTEMPT_HEADER: &str = "sb-attempt";
/// The header carrying a call's idempotency key: one random value per call, the same on
/// every attempt, so a server can recognise a repeat. A key set by the caller is kept.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Retries a client's failed requests with exponential backoff and full jitter.
///
/// Only a request that is safe to repeat ([`Idempotent`]), only after a retryable error
/// ([`Error::is_retryable`]: the connection failed, the attempt timed out, the service
/// answered `UNAVAILABLE`; never a handler's own error unless [`retry_if`](Self::retry_if)
/// says so), at most `max_attempts` times in all (3), and only while the retry budget
/// allows: retries may add at most 20 % to the retryable calls made over the last 10 s,
/// plus 10 a second (tower's [`TpsBudget`]), so a failing service does not get a storm. A wait that
/// would end past the call's deadline is not started. Each attempt carries
/// [`ATTEMPT_HEADER`] and [`IDEMPOTENCY_KEY_HEADER`], and the attempts share a [`Tried`]
/// record, so a discovered client sends a retry to an instance not tried yet.
///
/// The wait before attempt `n + 1` is random between zero and `min(max_delay, base × 2ⁿ⁻¹)`
/// (100 ms and 2 s by default).
#[derive(Clone)]
pub struct Retry {
    max_attempts: u32,
    base: Duration,
    max_delay: Duration,
    any_call: bool,
    retry_if: Arc<dyn Fn(&Error) -> bool + Send + Sync>,
    budget: Arc<TpsBudget>,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("base", &self.base)
            .field("max_delay", &self.max_delay)
            .field("any_call", &self.any_call)
            .finish_non_exhaustive()
    }
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    /// 3 attempts, 100 ms base, 2 s cap, the default budget.
    pub fn new() -> Self {
        Retry {
            max_attempts: 3,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            any_call: false,
            retry_if: Arc::new(Error::is_retryable),
            budget: Arc::new(TpsBudget::default()),
        }
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// The backoff: the first wait is at most `base`, each next one doubles, up to `max`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max_delay = max.max(base);
        self
    }

    /// Which errors are worth another attempt (by default [`Error::is_retryable`]).
    pub fn retry_if(mut self, f: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.retry_if = Arc::new(f);
        self
    }

    /// Retries every request, not only those marked [`Idempotent`]: for a client whose
    /// calls are all safe to repeat.
    pub fn any_call(mut self) -> Self {
        self.any_call = true;
        self
    }

    /// The retry budget: over the last `ttl` (1 to 60 s), retries may be `ratio` of the
    /// calls (0.2 is 20 %), plus `min_per_sec` a second. Out-of-range values are clamped.
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, ratio: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1000.0) };
        self.budget = Arc::new(TpsBudget::new(ttl, min_per_sec.min(i32::MAX as u32 - 1), ratio));
        self
    }

    /// The wait before the attempt after attempt `n`.
    fn delay(&self, n: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << (n - 1).min(30)).min(self.max_delay);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(..=nanos))
    }
}

impl<S> Layer<S> for Retry {
    type Service = RetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.clone(),
        }
    }
}

/// A client service behind a [`Retry`].
#[derive(Clone, Debug)]
pub struct RetryService<S> {
    inner: S,
    retry: Retry,
}

impl<S> Service<Outbound> for RetryService<S>
where
    S: Service<Outbound, Response = Replies, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Replies;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Replies, Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, out: Outbound) -> Self::Future {
        if !self.retry.applies_to(&out) {
            return self.inner.call(out).boxed();
        }
        let retry = self.retry.clone();
        let mut inner = self.inner.clone();
        std::mem::swap(&mut inner, &mut self.inner);
        let spare = inner.clone();
        let mut ready = Some(inner);
        async move {
            retry
                .run(out, move |attempt| match ready.take() {
                    // The first attempt goes to the service made ready for this call.
                    Some(mut inner) => inner.call(attempt).boxed(),
                    None => {
                        let mut inner = spare.clone();
                        async move { inner.ready().await?.call(attempt).await }.boxed()
                    }
                })
                .await
        }
        .boxed()
    }
}

impl Retry {
    /// True for a call this retries: a request, marked idempotent (or any, if so configured).
    pub(super) fn applies_to(&self, out: &Outbound) -> bool {
        out.kind == Kind::Request
            && self.max_attempts > 1
            && (self.any_call || out.extensions.get::<Idempotent>().is_some())
    }

    /// Makes attempts of `out` with `attempt` until one succeeds, fails for good, or the
    /// attempts, the budget or the deadline run out. The call must be one this
    /// [`applies_to`](Self::applies_to).
    pub(super) async fn run<F>(&self, mut out: Outbound, mut attempt: F) -> Result<Replies, Error>
    where
        F: FnMut(Outbound) -> BoxFuture<'static, Result<Replies, Error>>,
    {
        self.budget.deposit();
        if out.headers.get(IDEMPOTENCY_KEY_HEADER).is_none() {
            out.headers.insert(IDEMPOTENCY_KEY_HEADER, idempotency_key());
        }
        // Shared by the attempts, so a balancer sends a retry to another instance.
        Tried::attach(&mut out);
        // The first attempt shares the call's headers as they are (no copy of the map).
        out.headers.insert(ATTEMPT_HEADER, "1");
        let mut n = 1;
        loop {
            let mut this = out.clone();
            if n > 1 {
                this.headers.insert(ATTEMPT_HEADER, n.to_string());
            }
            let outcome = attempt(this).await;
            let worth_it = match &outcome {
                Ok(replies) => replies
                    .first_error()
                    .is_some_and(|e| e.is_unavailable() || e.is_deadline_exceeded()),
                Err(e) => (self.retry_if)(e),
            };
            if !worth_it || n >= self.max_attempts {
                return outcome;
            }
            let wait = self.delay(n);
            if Instant::now() + wait >= out.deadline {
                return outcome;
            }
            if !self.budget.withdraw() {
                tracing::debug!(pattern = &*out.route, attempt = n, "retry budget spent; not retrying");
                return outcome;
            }
            tracing::debug!(pattern = &*out.route, attempt = n, ?wait, "retrying");
            crate::signal::retried(&out.route);
            tokio::time::sleep(wait).await;
            n += 1;
        }
    }
}

/// A fresh idempotency key: 128 random bits as 32 lowercase hex digits (without the
/// formatting machinery, which costs more than the rest of a retried call's set-up).
pub(super) fn idempotency_key() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let digits: Vec<u8> = (0..32).rev().map(|i| HEX[((bits >> (i * 4)) & 0xf) as usize]).collect();
    String::from_utf8(digits).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idempotency_key_is_32_hex_digits_and_fresh() {
        let (a, b) = (idempotency_key(), idempotency_key());
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
            "{a}"
        );
        assert_ne!(a, b);
        let bits = u128::from_str_radix(&a, 16).expect("hex");
        assert_eq!(format!("{bits:032x}"), a);
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let retry = Retry::new().backoff(Duration::from_millis(100), Duration::from_millis(500));
        for n in 1..=6 {
            let ceiling = Duration::from_millis([100, 200, 400, 500, 500, 500][n as usize - 1]);
            let waits: Vec<_> = (0..200).map(|_| retry.delay(n)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "attempt {n}: {waits:?}");
            // Full jitter spreads over the whole range, not around the ceiling.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "attempt {n}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "attempt {n}");
        }
    }
}
