//! Seeded fault injection: a plan of [`Fault`]s per pattern ([`Faults`]), applied to every
//! message a service receives by a `tower` layer ([`FaultLayer`]).
//!
//! Each pattern has its own random sequence, seeded from the plan's seed and the pattern's
//! route, and draws from it once per rule for each of its messages, in the order they arrive.
//! So the same seed gives the same decisions for the same messages, however the messages of
//! other patterns interleave with them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service};

use crate::error::RpcError;
use crate::service::{Kind, Payload, Reply, Request, Route, RouteFuture};

/// How long a message held back for reordering waits for its window to fill, by default.
const DEFAULT_HOLD: Duration = Duration::from_millis(100);
/// How long a dropped request without a deadline is held before it is answered as timed out.
const DROP_WITHOUT_DEADLINE: Duration = Duration::from_secs(30);
/// Decisions kept in the log; later ones are counted, not kept.
const LOG_LIMIT: usize = 100_000;

/// What to do to some of a pattern's messages: drop, delay, duplicate, reorder, or fail them.
///
/// A fault applies to every message of its pattern unless narrowed by
/// [`probability`](Self::probability), [`nth`](Self::nth), [`first`](Self::first) or
/// [`after`](Self::after); the count is of the pattern's messages as they arrive, from 1.
///
/// ```
/// use std::time::Duration;
/// use switchboard::RpcError;
/// use switchboard::testing::Fault;
///
/// let flaky = Fault::fail(RpcError::unavailable("try again")).probability(0.3);
/// let first_two_lost = Fault::drop().first(2);
/// let third_late = Fault::delay(Duration::from_secs(2)).nth(3);
/// let shuffled = Fault::reorder(4);
/// # let _ = (flaky, first_two_lost, third_late, shuffled, Fault::duplicate());
/// ```
#[derive(Debug, Clone)]
pub struct Fault {
    action: Planned,
    probability: f64,
    from: u64,
    to: Option<u64>,
}

#[derive(Debug, Clone)]
enum Planned {
    Drop,
    Delay(Duration),
    Duplicate,
    Reorder { window: usize, hold: Duration },
    Fail(RpcError),
}

impl Fault {
    fn of(action: Planned) -> Self {
        Fault {
            action,
            probability: 1.0,
            from: 1,
            to: None,
        }
    }

    /// The message is lost: a request is never answered (its caller times out, at its
    /// deadline, on virtual time under a paused clock), an event is never handled.
    pub fn drop() -> Self {
        Self::of(Planned::Drop)
    }

    /// The message reaches its handler `delay` later (on tokio's clock, so instantly under a
    /// paused one).
    pub fn delay(delay: Duration) -> Self {
        Self::of(Planned::Delay(delay))
    }

    /// The message reaches its handler twice. A request's caller gets the first reply; the
    /// second copy is handled all the same (an at-least-once broker's redelivery).
    pub fn duplicate() -> Self {
        Self::of(Planned::Duplicate)
    }

    /// Messages are held back until `window` of them have arrived (or the first has waited
    /// 100 ms, see [`hold`](Self::hold)), then handed on in a shuffled order that is never
    /// the order they came in. Every message arrives.
    pub fn reorder(window: usize) -> Self {
        Self::of(Planned::Reorder {
            window: window.max(1),
            hold: DEFAULT_HOLD,
        })
    }

    /// The message is answered with `error` without reaching its handler (for an event:
    /// the listeners are not called, and an acknowledging broker would deliver it again).
    pub fn fail(error: RpcError) -> Self {
        Self::of(Planned::Fail(error))
    }

    /// Applies to each message it covers with probability `p` (0 to 1), drawn from the
    /// pattern's seeded sequence.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        self
    }

    /// Applies to the `n`th message of the pattern only (counting from 1).
    pub fn nth(mut self, n: u64) -> Self {
        self.from = n.max(1);
        self.to = Some(n.max(1));
        self
    }

    /// Applies to the first `n` messages of the pattern only.
    pub fn first(mut self, n: u64) -> Self {
        self.to = Some(n);
        self
    }

    /// Applies from the message after the `n`th on.
    pub fn after(mut self, n: u64) -> Self {
        self.from = n.saturating_add(1);
        self
    }

    /// For [`reorder`](Self::reorder): how long the first message held back waits for the
    /// window to fill before what is held is handed on anyway (100 ms by default), so that
    /// a lone request is late, not lost.
    pub fn hold(mut self, hold: Duration) -> Self {
        if let Planned::Reorder { hold: h, .. } = &mut self.action {
            *h = hold;
        }
        self
    }

    fn covers(&self, n: u64) -> bool {
        n >= self.from && self.to.is_none_or(|to| n <= to)
    }
}

/// A plan of faults per pattern, with the seed of its random draws.
///
/// Patterns are named by their route, as [`Context::route`](crate::Context::route) shows it:
/// `math.add` for a string pattern, `{"cmd":"get_user"}` for an object pattern (written in
/// any key order), or `DESCRIPTOR.route()`. A pattern's rules are tried in the order given;
/// the first that applies to a message decides it.
///
/// ```
/// use switchboard::RpcError;
/// use switchboard::testing::{Fault, Faults};
///
/// let faults = Faults::seeded(42)
///     .on("math.add", Fault::fail(RpcError::unavailable("busy")).probability(0.3))
///     .on(r#"{"cmd":"get_user"}"#, Fault::drop().first(2));
/// assert_eq!(faults.seed(), 42);
/// ```
#[derive(Debug, Clone)]
pub struct Faults {
    seed: u64,
    rules: Vec<(String, Fault)>,
}

impl Faults {
    /// An empty plan whose draws follow `seed`.
    pub fn seeded(seed: u64) -> Self {
        Faults {
            seed,
            rules: Vec::new(),
        }
    }

    /// Adds `fault` for the messages of `pattern`.
    pub fn on(mut self, pattern: impl AsRef<str>, fault: Fault) -> Self {
        self.rules.push((route_of(pattern.as_ref()), fault));
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The plan as a `tower` layer for a service's routes (`Microservice::layer`), with
    /// its log of decisions. [`TestService`](super::TestService) applies it for you, in front
    /// of the service's event order; as a layer of a service it runs inside that order, so
    /// the events of a pattern that is not `concurrent` cannot be reordered there (they are
    /// handed on after the hold, one by one).
    ///
    /// ```
    /// use switchboard::prelude::*;
    /// use switchboard::testing::{Action, Fault, Faults};
    ///
    /// #[message_pattern("ping")]
    /// async fn ping() -> String {
    ///     "pong".into()
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> switchboard::Result<()> {
    /// let faults = Faults::seeded(7).on("ping", Fault::fail(RpcError::new("no")).nth(2)).layer();
    /// let server = Microservice::new().handler(PING).layer(faults.clone()).listen("mem://faults-layer-doc").start().await?;
    /// let client = Client::connect("mem://faults-layer-doc").await?;
    /// assert!(client.send(PING, ()).await.is_ok());
    /// assert!(client.send(PING, ()).await.is_err());
    /// assert_eq!(faults.decisions()[1].action, Action::Fail(RpcError::new("no")));
    /// server.shutdown().await
    /// # }
    /// ```
    pub fn layer(self) -> FaultLayer {
        FaultLayer {
            plan: Arc::new(Plan {
                seed: self.seed,
                rules: self.rules,
                patterns: Mutex::new(HashMap::new()),
                log: Mutex::new(Log::default()),
            }),
        }
    }
}

/// The route a pattern given as text names: NestJS's normalisation of it.
pub(crate) fn route_of(pattern: &str) -> String {
    switchboard_pattern::route_of_str(pattern.to_owned())
}

/// What the plan did to one message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Action {
    /// Handed on untouched.
    Pass,
    /// Lost.
    Drop,
    /// Handed on after this long.
    Delay(Duration),
    /// Handed on twice.
    Duplicate,
    /// Held back and handed on in a shuffled order.
    Reorder,
    /// Answered with this error instead of its handler.
    Fail(RpcError),
}

impl Action {
    /// True for anything but [`Action::Pass`].
    pub fn is_fault(&self) -> bool {
        *self != Action::Pass
    }
}

/// One decision of the plan: the `n`th message of `route` (from 1) and what was done to it.
/// Its `Display` is one line, to print a run's decisions.
///
/// ```
/// use switchboard::prelude::*;
/// use switchboard::testing::{Action, Fault, Faults, TestService};
///
/// #[event_pattern("tick")]
/// async fn tick(n: u32) {}
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = TestService::new(Microservice::new().handler(TICK))
///     .faults(Faults::seeded(42).on("tick", Fault::duplicate().probability(0.5)))
///     .start()
///     .await?;
/// for n in 0..4 {
///     svc.client().emit(TICK, n).await?;
/// }
/// let decisions = svc.decisions_for("tick");
/// for d in &decisions {
///     println!("{d}");
/// }
/// // Seed 42 gives this sequence, on every machine and every run.
/// let lines: Vec<String> = decisions.iter().map(ToString::to_string).collect();
/// assert_eq!(lines, ["tick #1: pass", "tick #2: pass", "tick #3: duplicate", "tick #4: duplicate"]);
/// assert_eq!(decisions[2].action, Action::Duplicate);
/// assert_eq!(svc.wait_handled("tick", 6).await?.len(), 6);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Decision {
    /// The pattern's route.
    pub route: String,
    /// The message's number among the pattern's messages, from 1.
    pub n: u64,
    /// What was done to it.
    pub action: Action,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} #{}: ", self.route, self.n)?;
        match &self.action {
            Action::Pass => f.write_str("pass"),
            Action::Drop => f.write_str("drop"),
            Action::Delay(d) => write!(f, "delay {d:?}"),
            Action::Duplicate => f.write_str("duplicate"),
            Action::Reorder => f.write_str("reorder"),
            Action::Fail(e) => write!(f, "fail {}", e.value()),
        }
    }
}

/// [`Faults`] as a `tower` layer: for `Microservice::layer`, or around any service of
/// [`Request`]s (see [`Faults::layer`] for an example). Cheap to clone; clones share the
/// plan's state and log.
#[derive(Clone)]
pub struct FaultLayer {
    plan: Arc<Plan>,
}

impl fmt::Debug for FaultLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("seed", &self.plan.seed)
            .field("rules", &self.plan.rules)
            .finish_non_exhaustive()
    }
}

impl FaultLayer {
    /// Every decision so far, in the order they were taken (each pattern's in the order its
    /// messages arrived). Patterns with no rule are not logged. At most 100,000 are kept.
    pub fn decisions(&self) -> Vec<Decision> {
        self.plan.log.lock().expect("fault log lock").kept.clone()
    }

    /// The decisions for the messages of `pattern`, in the order they arrived.
    pub fn decisions_for(&self, pattern: &str) -> Vec<Decision> {
        let route = route_of(pattern);
        let log = self.plan.log.lock().expect("fault log lock");
        log.kept.iter().filter(|d| d.route == route).cloned().collect()
    }

    /// The plan's seed.
    pub fn seed(&self) -> u64 {
        self.plan.seed
    }
}

impl<S> Layer<S> for FaultLayer
where
    S: Service<Request, Response = Reply> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    type Service = FaultService;

    fn layer(&self, inner: S) -> FaultService {
        FaultService {
            inner: Route::new(inner),
            plan: self.plan.clone(),
        }
    }
}

/// The service [`FaultLayer`] makes: decides each message's fate, then hands it on (or not).
/// Its future is boxed; it is always ready.
#[derive(Clone)]
pub struct FaultService {
    inner: Route,
    plan: Arc<Plan>,
}

impl fmt::Debug for FaultService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultService")
    }
}

impl Service<Request> for FaultService {
    type Response = Reply;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.plan.apply(&self.inner, req).into()
    }
}

struct Plan {
    seed: u64,
    rules: Vec<(String, Fault)>,
    patterns: Mutex<HashMap<String, PatternState>>,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    kept: Vec<Decision>,
    /// Decisions past the limit, counted only.
    over: u64,
}

/// One pattern's draws and what it holds back for reordering.
struct PatternState {
    rng: Rng,
    seen: u64,
    held: Vec<Held>,
    /// Bumped at every release, so a hold timer of an earlier batch does nothing.
    batch: u64,
}

/// A message held back for reordering (the `n`th of its pattern), and where to send its
/// handler's future.
struct Held {
    n: u64,
    req: Request,
    tx: oneshot::Sender<BoxFuture<'static, Reply>>,
}

/// What to do with a message.
enum Fate {
    Pass(Request),
    Drop(Request),
    Delay(Duration, Request),
    Duplicate(Request),
    Fail(RpcError),
    /// Held back; released (with these to release now, if the window is full; with a hold
    /// timer to start, if it is the first held).
    Held {
        rx: oneshot::Receiver<BoxFuture<'static, Reply>>,
        release: Vec<Held>,
        timer: Option<(Duration, u64)>,
    },
}

impl Plan {
    fn apply(self: &Arc<Self>, inner: &Route, req: Request) -> BoxFuture<'static, Reply> {
        if !self.rules.iter().any(|(r, _)| r == req.context().route()) {
            return inner.call(req);
        }
        let route = req.context().route().to_owned();
        match self.decide(&route, req) {
            Fate::Pass(req) => inner.call(req),
            Fate::Fail(e) => std::future::ready(Reply::error(e)).boxed(),
            Fate::Drop(req) => dropped(req),
            Fate::Delay(delay, req) => {
                let inner = inner.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    inner.call(req).await
                }
                .boxed()
            }
            Fate::Duplicate(req) => {
                let copy = copy_of(&req);
                let first = inner.call(req);
                match copy {
                    // Called now, so that an event's copy takes its turn right after it.
                    Some(copy) => {
                        let second = inner.call(copy);
                        tokio::spawn(async move {
                            let _ = second.await.drain().await;
                        });
                    }
                    None => {
                        tracing::warn!(route = %crate::text::for_log(&route), "a typed payload cannot be copied: handed on once, not duplicated")
                    }
                }
                first
            }
            Fate::Held { rx, release, timer } => {
                release_all(inner, release);
                if let Some((hold, batch)) = timer {
                    let (plan, inner, route) = (self.clone(), inner.clone(), route.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        let held = plan.take_held(&route, batch);
                        release_all(&inner, held);
                    });
                }
                async move {
                    match rx.await {
                        Ok(handled) => handled.await,
                        // The service stopped with it still held.
                        Err(_) => Reply::error(RpcError::unavailable("the service stopped")),
                    }
                }
                .boxed()
            }
        }
    }

    /// Decides the fate of a message of `route`, which has rules.
    fn decide(&self, route: &str, req: Request) -> Fate {
        let rules = self.rules.iter().filter(|(r, _)| r == route);
        let mut patterns = self.patterns.lock().expect("fault plan lock");
        let state = patterns.entry(route.to_owned()).or_insert_with(|| PatternState {
            rng: Rng::for_pattern(self.seed, route),
            seen: 0,
            held: Vec::new(),
            batch: 0,
        });
        state.seen += 1;
        let n = state.seen;
        let chosen = rules
            .map(|(_, fault)| fault)
            .filter(|fault| fault.covers(n))
            .find(|fault| state.rng.next_f64() < fault.probability);
        let (action, fate) = match chosen.map(|f| &f.action) {
            None => (Action::Pass, Fate::Pass(req)),
            Some(Planned::Drop) => (Action::Drop, Fate::Drop(req)),
            Some(Planned::Delay(d)) => (Action::Delay(*d), Fate::Delay(*d, req)),
            Some(Planned::Duplicate) => (Action::Duplicate, Fate::Duplicate(req)),
            Some(Planned::Fail(e)) => (Action::Fail(e.clone()), Fate::Fail(e.clone())),
            Some(Planned::Reorder { window, hold }) => {
                let (tx, rx) = oneshot::channel();
                state.held.push(Held { n, req, tx });
                let timer = (state.held.len() == 1).then_some((*hold, state.batch));
                let release = match state.held.len() >= *window {
                    true => shuffled(state),
                    false => Vec::new(),
                };
                (Action::Reorder, Fate::Held { rx, release, timer })
            }
        };
        drop(patterns);
        let mut log = self.log.lock().expect("fault log lock");
        match log.kept.len() < LOG_LIMIT {
            true => log.kept.push(Decision {
                route: route.to_owned(),
                n,
                action,
            }),
            false => {
                if log.over == 0 {
                    tracing::warn!("the fault plan's log is full ({LOG_LIMIT} decisions): later ones are not kept");
                }
                log.over += 1;
            }
        }
        fate
    }

    /// What `route` holds back, if it is still the batch a timer was started for.
    fn take_held(&self, route: &str, batch: u64) -> Vec<Held> {
        let mut patterns = self.patterns.lock().expect("fault plan lock");
        match patterns.get_mut(route) {
            Some(state) if state.batch == batch && !state.held.is_empty() => shuffled(state),
            _ => Vec::new(),
        }
    }
}

/// Takes what `state` holds, in a shuffled order (never the order it came in when there are
/// two or more), and starts a new batch.
fn shuffled(state: &mut PatternState) -> Vec<Held> {
    let mut held = std::mem::take(&mut state.held);
    state.batch += 1;
    let len = held.len();
    for i in (1..len).rev() {
        let j = state.rng.below(i as u64 + 1) as usize;
        held.swap(i, j);
    }
    if len > 1 {
        // Unchanged by the shuffle: turn it round, so that a reorder always reorders.
        if held.windows(2).all(|w| w[0].n < w[1].n) {
            held.reverse();
        }
    }
    held
}

/// Hands each held message to the service, in the given order (an event takes its turn
/// now), and its handler's future to its waiting caller.
fn release_all(inner: &Route, held: Vec<Held>) {
    for Held { req, tx, .. } in held {
        let _ = tx.send(inner.call(req));
    }
}

/// A dropped message: an event is gone at once (accepted, never handled); a request is never
/// answered, until its deadline passes (or 30 s, without one), so that nothing waits forever.
fn dropped(req: Request) -> BoxFuture<'static, Reply> {
    if req.kind() == Kind::Event {
        return std::future::ready(Reply::empty()).boxed();
    }
    let until = req
        .context()
        .deadline()
        .unwrap_or_else(|| tokio::time::Instant::now() + DROP_WITHOUT_DEADLINE);
    async move {
        tokio::time::sleep_until(until).await;
        Reply::error(RpcError::deadline_exceeded("the message was dropped"))
    }
    .boxed()
}

/// A second copy of `req` (a value handed over in-process is encoded as JSON for the copy).
/// `None` for a payload that cannot be copied.
fn copy_of(req: &Request) -> Option<Request> {
    match req.payload() {
        Some(Payload::Local(v)) => Some(Request::new(
            req.address().clone(),
            Payload::Json(v.to_json().ok()?),
            req.context().clone(),
        )),
        // An encoded payload is shared; a typed one (gRPC's) is not copied.
        _ => req.try_clone(),
    }
}

/// SplitMix64: small, fast, and the same sequence on every platform and version, which a
/// reproducible plan needs (a crate's generator may change between releases).
struct Rng(u64);

impl Rng {
    fn for_pattern(seed: u64, route: &str) -> Self {
        // FNV-1a of the route, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in route.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Rng(seed ^ h);
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n), n > 0.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_sequence_depends_on_the_seed_and_the_route_only() {
        let draw = |seed, route| {
            let mut rng = Rng::for_pattern(seed, route);
            (0..8).map(|_| rng.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42, "a"), draw(42, "a"));
        assert_ne!(draw(42, "a"), draw(43, "a"));
        assert_ne!(draw(42, "a"), draw(42, "b"));
        let mut rng = Rng::for_pattern(1, "x");
        assert!((0..1000).map(|_| rng.next_f64()).all(|f| (0.0..1.0).contains(&f)));
    }

    #[test]
    fn counts_narrow_a_fault() {
        let f = Fault::drop().first(2);
        assert!(f.covers(1) && f.covers(2) && !f.covers(3));
        let f = Fault::drop().nth(3);
        assert!(!f.covers(2) && f.covers(3) && !f.covers(4));
        let f = Fault::drop().after(2);
        assert!(!f.covers(2) && f.covers(3) && f.covers(1000));
        assert_eq!(Fault::drop().probability(f64::NAN).probability, 0.0);
        assert_eq!(Fault::drop().probability(7.0).probability, 1.0);
    }

    #[test]
    fn patterns_are_named_by_their_route() {
        assert_eq!(route_of("math.add"), "math.add");
        assert_eq!(route_of(r#"{"id":1,"cmd":"x"}"#), r#"{"cmd":"x","id":1}"#);
    }
}
