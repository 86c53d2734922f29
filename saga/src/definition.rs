//! What a user declares: a saga as an ordered list of typed steps, each a typed client call
//! with its compensation, checked at compile time: before the pivot every step can be undone,
//! after it every step is retried until it succeeds.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchboard::{Client, Error as CallError, Message, RpcError};

/// What a saga's state must be: it is written to the log after every step.
pub trait SagaState: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaState for T {}

/// The builder's place before the pivot: only compensatable steps, or the pivot.
#[derive(Debug, Clone, Copy)]
pub enum BeforePivot {}
/// The builder's place after the pivot: only retriable steps.
#[derive(Debug, Clone, Copy)]
pub enum AfterPivot {}

/// A step with neither a compensation nor `.retriable()`: it can only be the pivot.
#[derive(Debug, Clone, Copy)]
pub struct Plain;
/// A step retried until it succeeds (after the pivot, or as the pivot).
#[derive(Debug, Clone, Copy)]
pub struct Retriable;
/// A step with a compensation.
pub struct Compensated<S> {
    undo: Arc<UndoFn<S>>,
}

/// Headers a step's attempt carries.
pub(crate) type Headers = Vec<(&'static str, String)>;

fn codec(context: &str, source: serde_json::Error) -> CallError {
    CallError::Codec {
        context: context.into(),
        source,
    }
}

/// How a step (or a compensation) is retried and when it gives up.
#[derive(Clone)]
pub struct StepPolicy {
    pub(crate) attempt_timeout: Duration,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) business: Arc<dyn Fn(&RpcError) -> bool + Send + Sync>,
}

impl std::fmt::Debug for StepPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPolicy")
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Default for StepPolicy {
    fn default() -> Self {
        StepPolicy {
            attempt_timeout: Duration::from_secs(5),
            deadline: None,
            max_attempts: 10,
            backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            business: Arc::new(|_| true),
        }
    }
}

impl StepPolicy {
    /// The wait before the attempt after attempt `n` (from 1): random between half and all of
    /// `min(max, base × 2ⁿ⁻¹)`.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let (base, max) = self.backoff;
        let cap = base.saturating_mul(1u32 << n.saturating_sub(1).min(20)).min(max);
        cap / 2 + cap.mul_f64(fastrand::f64() / 2.0)
    }
}

/// What kind of step a definition holds, once built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Undone by its compensation when a later step fails.
    Compensatable,
    /// The point of no return: once it succeeded the saga completes.
    Pivot,
    /// Retried until it succeeds.
    Retriable,
}

/// One step: a typed call whose request is built from the saga's state.
///
/// ```
/// use switchboard::{Client, MessageDef, pattern};
/// use switchboard_saga::Step;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Order { sku: String, reservation: Option<u64> }
/// const RESERVE: MessageDef<String, u64> = MessageDef::new(pattern!("inventory.reserve"));
/// const RELEASE: MessageDef<u64, ()> = MessageDef::new(pattern!("inventory.release"));
///
/// # fn demo(inventory: Client) {
/// let reserve = Step::new("reserve", &inventory, RESERVE, |o: &Order| o.sku.clone())
///     .on_reply(|o, id| o.reservation = Some(*id))
///     .compensate(RELEASE, |_o, id| *id);
/// # let _ = reserve; }
/// ```
pub struct Step<S, M: Message, K> {
    name: &'static str,
    client: Client,
    pattern: M,
    input: Arc<InputFn<S, M::Request>>,
    on_reply: Arc<OnReplyFn<S, M::Reply>>,
    policy: StepPolicy,
    kind: K,
}

impl<S, M> Step<S, M, Plain>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A step named `name` (unique in its saga, part of its idempotency key) calling `pattern`
    /// through `client` with the request `input` builds from the state.
    pub fn new(
        name: &'static str,
        client: &Client,
        pattern: M,
        input: impl Fn(&S) -> M::Request + Send + Sync + 'static,
    ) -> Self {
        Step {
            name,
            client: client.clone(),
            pattern,
            input: Arc::new(input),
            on_reply: Arc::new(|_, _| {}),
            policy: StepPolicy::default(),
            kind: Plain,
        }
    }

    /// Undoes the step with `pattern` on the same client, its request built from the state and
    /// this step's reply. Only a step that replied is compensated.
    pub fn compensate<C>(
        self,
        pattern: C,
        input: impl Fn(&S, &M::Reply) -> C::Request + Send + Sync + 'static,
    ) -> Step<S, M, Compensated<S>>
    where
        C: Message,
        C::Request: Serialize + Send + 'static,
        C::Reply: DeserializeOwned + Send + 'static,
    {
        let undo = move |client: &Client, state: &S, reply: &Value, headers: Headers, timeout: Duration| {
            let reply = match serde_json::from_value::<M::Reply>(reply.clone()) {
                Ok(reply) => reply,
                Err(e) => return async move { Err(codec("the logged reply does not decode", e)) }.boxed(),
            };
            let mut call = client.send(pattern, input(state, &reply)).timeout(timeout);
            for (name, value) in headers {
                call = call.header(name, value);
            }
            async move { call.await.map(drop) }.boxed()
        };
        Step {
            name: self.name,
            client: self.client,
            pattern: self.pattern,
            input: self.input,
            on_reply: self.on_reply,
            policy: self.policy,
            kind: Compensated { undo: Arc::new(undo) },
        }
    }

    /// Retries the step until it succeeds (or its attempts run out, when the saga is parked as
    /// stuck for an operator). What a step after the pivot must be.
    pub fn retriable(self) -> Step<S, M, Retriable> {
        Step {
            name: self.name,
            client: self.client,
            pattern: self.pattern,
            input: self.input,
            on_reply: self.on_reply,
            policy: StepPolicy {
                max_attempts: u32::MAX,
                ..self.policy
            },
            kind: Retriable,
        }
    }
}

impl<S, M: Message, K> Step<S, M, K> {
    /// Puts the reply into the state (where later steps and the saga's outcome see it).
    pub fn on_reply(mut self, f: impl Fn(&mut S, &M::Reply) + Send + Sync + 'static) -> Self {
        self.on_reply = Arc::new(f);
        self
    }

    /// How long one attempt may take (5 s).
    pub fn attempt_timeout(mut self, d: Duration) -> Self {
        self.policy.attempt_timeout = d;
        self
    }

    /// How long the step may take over all its attempts, from the first (no limit). Past it a
    /// step before or at the pivot fails and the saga compensates.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.policy.deadline = Some(d);
        self
    }

    /// At most `n` attempts (10; unlimited for a retriable step).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n.max(1);
        self
    }

    /// The backoff between attempts: from `base`, doubling, at most `max` (100 ms, 10 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.policy.backoff = (base, max.max(base));
        self
    }

    /// Which of the participant's own errors are business errors that fail the step (all, by
    /// default). The others are retried like transport errors.
    pub fn business_errors(mut self, f: impl Fn(&RpcError) -> bool + Send + Sync + 'static) -> Self {
        self.policy.business = Arc::new(f);
        self
    }
}

/// A built step, its types erased.
pub(crate) struct ErasedStep<S> {
    pub(crate) name: &'static str,
    pub(crate) kind: StepKind,
    pub(crate) policy: StepPolicy,
    pub(crate) call: Box<CallFn<S>>,
    pub(crate) apply: Box<ApplyFn<S>>,
    pub(crate) undo: Option<Box<ErasedUndoFn<S>>>,
}

impl<S, M, K> Step<S, M, K>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn erase(self, kind: StepKind, undo: Option<Arc<UndoFn<S>>>) -> ErasedStep<S> {
        let (client, pattern, input) = (self.client.clone(), self.pattern, self.input);
        let call = move |state: &S, headers: Headers, timeout: Duration| {
            let mut call = client.send(pattern, input(state)).timeout(timeout);
            for (name, value) in headers {
                call = call.header(name, value);
            }
            async move {
                let reply: M::Reply = call.await?;
                serde_json::to_value(&reply).map_err(|e| codec("the reply does not encode", e))
            }
            .boxed()
        };
        let on_reply = self.on_reply;
        let apply = move |state: &mut S, reply: &Value| {
            let reply: M::Reply = serde_json::from_value(reply.clone())?;
            on_reply(state, &reply);
            Ok(())
        };
        let client = self.client;
        ErasedStep {
            name: self.name,
            kind,
            policy: self.policy,
            call: Box::new(call),
            apply: Box::new(apply),
            undo: undo.map(|undo| {
                Box::new(move |state: &S, reply: &Value, headers: Headers, timeout: Duration| {
                    undo(&client, state, reply, headers, timeout)
                })
                    as Box<
                        dyn Fn(&S, &Value, Headers, Duration) -> BoxFuture<'static, Result<(), CallError>>
                            + Send
                            + Sync,
                    >
            }),
        }
    }
}

type InputFn<S, R> = dyn Fn(&S) -> R + Send + Sync;
type OnReplyFn<S, R> = dyn Fn(&mut S, &R) + Send + Sync;
type CallFn<S> = dyn Fn(&S, Headers, Duration) -> BoxFuture<'static, Result<Value, CallError>> + Send + Sync;
type ApplyFn<S> = dyn Fn(&mut S, &Value) -> Result<(), serde_json::Error> + Send + Sync;
type ErasedUndoFn<S> = dyn Fn(&S, &Value, Headers, Duration) -> BoxFuture<'static, Result<(), CallError>> + Send + Sync;
type UndoFn<S> =
    dyn Fn(&Client, &S, &Value, Headers, Duration) -> BoxFuture<'static, Result<(), CallError>> + Send + Sync;

mod sealed {
    pub trait Sealed {}
}

/// A step that may come before the pivot: one with a compensation.
#[diagnostic::on_unimplemented(
    message = "a step without a compensation cannot come before the pivot",
    label = "this step cannot be undone if a later step fails",
    note = "add `.compensate(PATTERN, |state, reply| ..)` to it, or make it the point of no return with `.pivot(..)`"
)]
pub trait CompensatableStep<S>: sealed::Sealed {
    #[doc(hidden)]
    fn into_erased(self) -> ErasedStepBox<S>;
}

/// A step that may be the pivot: one without a compensation.
#[diagnostic::on_unimplemented(
    message = "a pivot cannot have a compensation",
    label = "this step can be undone, so it is not a point of no return",
    note = "add it before the pivot with `.step(..)`; the pivot is the first step that cannot be undone"
)]
pub trait PivotStep<S>: sealed::Sealed {
    #[doc(hidden)]
    fn into_erased(self) -> ErasedStepBox<S>;
}

/// A step that may come after the pivot: a retriable one.
#[diagnostic::on_unimplemented(
    message = "a step after the pivot must be retriable",
    label = "past the pivot nothing is undone, so this step must eventually succeed",
    note = "mark it `.retriable()` (it is then retried until it succeeds, or parked for an operator)"
)]
pub trait RetriableStep<S>: sealed::Sealed {
    #[doc(hidden)]
    fn into_erased(self) -> ErasedStepBox<S>;
}

/// A built step (opaque).
#[doc(hidden)]
pub struct ErasedStepBox<S>(pub(crate) ErasedStep<S>);

impl<S, M: Message, K> sealed::Sealed for Step<S, M, K> {}

impl<S, M> CompensatableStep<S> for Step<S, M, Compensated<S>>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_erased(self) -> ErasedStepBox<S> {
        let undo = self.kind.undo.clone();
        let step = Step {
            name: self.name,
            client: self.client,
            pattern: self.pattern,
            input: self.input,
            on_reply: self.on_reply,
            policy: self.policy,
            kind: (),
        };
        ErasedStepBox(step.erase(StepKind::Compensatable, Some(undo)))
    }
}

impl<S, M> PivotStep<S> for Step<S, M, Plain>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_erased(self) -> ErasedStepBox<S> {
        ErasedStepBox(self.erase(StepKind::Pivot, None))
    }
}

impl<S, M> PivotStep<S> for Step<S, M, Retriable>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_erased(self) -> ErasedStepBox<S> {
        ErasedStepBox(self.erase(StepKind::Pivot, None))
    }
}

impl<S, M> RetriableStep<S> for Step<S, M, Retriable>
where
    S: SagaState,
    M: Message,
    M::Request: Serialize + Send + Sync + 'static,
    M::Reply: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn into_erased(self) -> ErasedStepBox<S> {
        ErasedStepBox(self.erase(StepKind::Retriable, None))
    }
}

/// A saga: its name (stored in the log, so resumed sagas find their definition), its steps in
/// order, and how it compensates. `P` is where the builder is ([`BeforePivot`] or
/// [`AfterPivot`]): it decides which steps may be added.
///
/// ```
/// use switchboard::{Client, MessageDef, pattern};
/// use switchboard_saga::{Saga, Step};
///
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// struct Order { reservation: u64, payment: u64 }
/// const RESERVE: MessageDef<(), u64> = MessageDef::new(pattern!("inventory.reserve"));
/// const RELEASE: MessageDef<u64, ()> = MessageDef::new(pattern!("inventory.release"));
/// const CHARGE: MessageDef<(), u64> = MessageDef::new(pattern!("payment.charge"));
/// const SHIP: MessageDef<u64, ()> = MessageDef::new(pattern!("shipping.ship"));
///
/// # fn demo(c: Client) {
/// let saga = Saga::<Order>::new("order")
///     .step(
///         Step::new("reserve", &c, RESERVE, |_: &Order| ())
///             .on_reply(|o, id| o.reservation = *id)
///             .compensate(RELEASE, |_, id| *id),
///     )
///     .pivot(Step::new("charge", &c, CHARGE, |_: &Order| ()).on_reply(|o, id| o.payment = *id))
///     .step(Step::new("ship", &c, SHIP, |o: &Order| o.payment).retriable());
/// # let _ = saga; }
/// ```
pub struct Saga<S, P = BeforePivot> {
    pub(crate) name: &'static str,
    pub(crate) steps: Vec<ErasedStep<S>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) parallel_compensation: bool,
    pub(crate) compensation: StepPolicy,
    _place: PhantomData<fn() -> P>,
}

impl<S: SagaState> Saga<S, BeforePivot> {
    /// An empty saga named `name`.
    pub fn new(name: &'static str) -> Self {
        Saga {
            name,
            steps: Vec::new(),
            deadline: None,
            parallel_compensation: false,
            compensation: StepPolicy::default(),
            _place: PhantomData,
        }
    }

    /// Adds a compensatable step.
    pub fn step(mut self, step: impl CompensatableStep<S>) -> Self {
        self.steps.push(step.into_erased().0);
        self
    }

    /// Adds the pivot, the point of no return: once it succeeded the saga no longer
    /// compensates, and every later step must be retriable.
    pub fn pivot(mut self, step: impl PivotStep<S>) -> Saga<S, AfterPivot> {
        self.steps.push(step.into_erased().0);
        self.place()
    }
}

impl<S: SagaState> Saga<S, AfterPivot> {
    /// Adds a retriable step after the pivot.
    pub fn step(mut self, step: impl RetriableStep<S>) -> Self {
        self.steps.push(step.into_erased().0);
        self
    }
}

impl<S, P> Saga<S, P> {
    fn place<Q>(self) -> Saga<S, Q> {
        Saga {
            name: self.name,
            steps: self.steps,
            deadline: self.deadline,
            parallel_compensation: self.parallel_compensation,
            compensation: self.compensation,
            _place: PhantomData,
        }
    }

    /// The saga must be past its pivot within `d` of its start, or it compensates. (After the
    /// pivot there is no going back: a saga whose retriable steps keep failing is parked as
    /// stuck when their attempts run out.)
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Compensates every completed step at once instead of one by one in reverse order.
    pub fn parallel_compensation(mut self) -> Self {
        self.parallel_compensation = true;
        self
    }

    /// How compensations are retried: at most `attempts` (10), backoff from `base` doubling
    /// to `max` (100 ms, 10 s), each attempt within `attempt_timeout` (5 s). Past the last
    /// attempt the saga is parked as stuck.
    pub fn compensation_retry(
        mut self,
        attempts: u32,
        base: Duration,
        max: Duration,
        attempt_timeout: Duration,
    ) -> Self {
        self.compensation.max_attempts = attempts.max(1);
        self.compensation.backoff = (base, max.max(base));
        self.compensation.attempt_timeout = attempt_timeout;
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its steps' names and kinds, in order.
    pub fn steps(&self) -> Vec<(&'static str, StepKind)> {
        self.steps.iter().map(|s| (s.name, s.kind)).collect()
    }
}
