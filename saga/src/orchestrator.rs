//! The orchestrator: runs sagas from a log, resumes the ones a crashed process left, and lets an
//! operator list, show, retry, skip or abort them.

use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard::{Client, EventDef, pattern};
use tokio::sync::{oneshot, watch};

use crate::definition::{ErasedStep, SagaState, StepPolicy};
use crate::error::{Error, Result};
use crate::log::{Filter, Record, SagaLog, Status, Summary, Transition, Write};
use crate::progress::Progress;
use crate::run::Run;

/// What an orchestrator tells its observers ([`OrchestratorBuilder::observe`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Probe<'a> {
    /// A transition was logged (acknowledged by the log).
    Logged {
        /// The saga.
        id: &'a str,
        /// What was logged.
        transition: &'a Transition,
    },
    /// A step's (or compensation's) attempt came back; its outcome is not logged yet.
    Answered {
        /// The saga.
        id: &'a str,
        /// The step's index.
        step: usize,
        /// True for a compensation.
        compensation: bool,
    },
}

/// The event an orchestrator emits when a saga is parked ([`SAGA_STUCK`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StuckSaga {
    /// The saga's id.
    pub id: String,
    /// Its definition's name.
    pub saga: String,
    /// The step (or compensation) that kept failing.
    pub step: String,
    /// Its last error.
    pub error: String,
}

/// `saga.stuck`: emitted through [`OrchestratorBuilder::notify`]'s client when a saga is parked.
pub const SAGA_STUCK: EventDef<StuckSaga> = EventDef::new(pattern!("saga.stuck"));

type Observer = Arc<dyn Fn(&Probe<'_>) + Send + Sync>;

/// How a finished or parked saga ended, with its state.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<S> {
    /// The saga's id.
    pub id: String,
    /// How it ended (or [`Status::Stuck`]).
    pub status: Status,
    /// Its state after the last step that replied.
    pub state: S,
    /// The error that made it compensate or park, if any.
    pub error: Option<String>,
}

/// A saga's definition with its types erased but its state type kept.
pub(crate) struct Def<S> {
    pub(crate) name: &'static str,
    pub(crate) steps: Vec<ErasedStep<S>>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) parallel_compensation: bool,
    pub(crate) compensation: StepPolicy,
}

/// Resumes sagas of one definition.
trait Resume<L>: Send + Sync {
    fn resume(self: Arc<Self>, shared: Arc<Shared<L>>, id: String, progress: Progress) -> Result<()>;
}

impl<S: SagaState, L: SagaLog> Resume<L> for Def<S> {
    fn resume(self: Arc<Self>, shared: Arc<Shared<L>>, id: String, progress: Progress) -> Result<()> {
        let state: S = serde_json::from_value(progress.state.clone()).map_err(|source| Error::Json {
            id: id.clone(),
            what: "the logged state does not decode".into(),
            source,
        })?;
        if progress.next > self.steps.len() || progress.undo.iter().any(|u| u.step >= self.steps.len()) {
            return Err(Error::Corrupt {
                id,
                what: format!("the log names steps that the saga `{}` does not have", self.name),
            });
        }
        let Some(lost) = shared.track(&id) else {
            return Ok(());
        };
        let run = Run {
            id,
            def: self,
            shared,
            progress,
            state,
            lost,
            pending: Vec::new(),
        };
        tokio::spawn(run.run());
        Ok(())
    }
}

/// What every run of one orchestrator shares.
pub(crate) struct Shared<L> {
    pub(crate) log: L,
    pub(crate) owner: String,
    defs: RwLock<HashMap<&'static str, Arc<dyn Resume<L>>>>,
    /// Sagas running here, with the flag that tells them they were lost.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Option<Progress>>>>>,
    observers: Vec<Observer>,
    notify: Option<Client>,
    pub(crate) stop: watch::Sender<bool>,
    claim_every: Duration,
    max_running: usize,
    started: AtomicBool,
}

impl<L: SagaLog> Shared<L> {
    pub(crate) fn observe(&self, probe: Probe<'_>) {
        for o in &self.observers {
            o(&probe);
        }
    }

    /// Marks `id` as running here; `None` if it already is.
    fn track(&self, id: &str) -> Option<Arc<AtomicBool>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(id) {
            return None;
        }
        let lost = Arc::new(AtomicBool::new(false));
        running.insert(id.to_owned(), lost.clone());
        Some(lost)
    }

    /// A run stopped: it ended, parked, or was lost.
    pub(crate) async fn ended<S>(&self, id: &str, progress: &Progress, def: &Def<S>) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        if progress.status == Status::Stuck
            && let (Some(client), Some(step)) = (&self.notify, progress.parked_step())
        {
            let stuck = StuckSaga {
                id: id.to_owned(),
                saga: def.name.to_owned(),
                step: def.steps.get(step).map_or("?", |s| s.name).to_owned(),
                error: progress.error.clone().unwrap_or_default(),
            };
            if let Err(e) = client.emit(SAGA_STUCK, stuck).await {
                tracing::warn!(error = %e, "could not emit saga.stuck");
            }
        }
        if progress.status.is_active() {
            // Lost to another writer: waiters here look in the log.
            self.wake(id, None);
        } else {
            if let Err(e) = self.log.release(&self.owner, id).await {
                tracing::warn!(error = %e, "could not release the saga's lease");
            }
            self.wake(id, Some(progress));
        }
    }

    /// Hands waiters the saga's final progress (so they need not read the log), or `None` to
    /// make them read it.
    fn wake(&self, id: &str, ended: Option<&Progress>) {
        let waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(ended.cloned());
        }
    }

    fn runs_here(&self, id: &str) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    fn resume(self: &Arc<Self>, record: Record) {
        let id = record.summary.id.clone();
        let resumed = match Progress::fold(&record.entries) {
            None => Err(Error::Corrupt {
                id: id.clone(),
                what: "its log does not start with `started`".into(),
            }),
            Some(progress) => {
                let def = self
                    .defs
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(progress.saga.as_str())
                    .cloned();
                match def {
                    Some(def) => def.resume(self.clone(), id.clone(), progress),
                    None => Err(Error::UnknownSaga(progress.saga)),
                }
            }
        };
        if let Err(e) = resumed {
            tracing::error!(saga = %id, error = %e, "cannot resume this saga");
        }
    }

    /// Claims and resumes sagas, and renews leases, until stopped.
    async fn claim_loop(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let renew_every = self.log.lease().map(|lease| lease / 3);
        let mut renewed = tokio::time::Instant::now();
        loop {
            let running: HashSet<String> = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .cloned()
                .collect();
            if renew_every.is_some_and(|every| renewed.elapsed() >= every) {
                renewed = tokio::time::Instant::now();
                let ids: Vec<String> = running.iter().cloned().collect();
                match self.log.renew(&self.owner, &ids).await {
                    Ok(lost) => {
                        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                        for id in lost {
                            if let Some(flag) = running.get(&id) {
                                flag.store(true, Ordering::Release);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not renew saga leases"),
                }
            }
            let room = self.max_running.saturating_sub(running.len());
            if room > 0 {
                match self.log.claim(&self.owner, room, &running).await {
                    Ok(records) => records.into_iter().for_each(|r| self.resume(r)),
                    Err(e) => tracing::warn!(error = %e, "could not claim sagas"),
                }
            }
            let pause = renew_every.map_or(self.claim_every, |every| every.min(self.claim_every));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Runs sagas from a [`SagaLog`]. Register definitions with [`register`](Self::register), then
/// [`start`](Self::start) it: it resumes every saga the log says is running or compensating
/// (those a killed process left, or, on PostgreSQL, those whose lease expired) and keeps
/// looking for more. Clones share the orchestrator.
///
/// ```
/// use switchboard::{Client, Microservice, MessageDef, pattern, message_pattern};
/// use switchboard_saga::{Orchestrator, Saga, Status, Step, log::MemoryLog};
///
/// #[message_pattern("inventory.reserve")]
/// async fn reserve(qty: u32) -> u64 { qty as u64 * 10 }
/// #[message_pattern("inventory.release")]
/// async fn release(_id: u64) {}
///
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// struct Order { qty: u32, reservation: u64 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let _inventory = Microservice::new().handler(RESERVE).handler(RELEASE).listen("mem://inventory-doc").start().await?;
/// let inventory = Client::connect("mem://inventory-doc").await?;
/// let saga = Saga::<Order>::new("order").pivot(
///     Step::new("reserve", &inventory, RESERVE, |o: &Order| o.qty).on_reply(|o, id| o.reservation = *id),
/// );
/// let orchestrator = Orchestrator::builder(MemoryLog::new()).build();
/// let orders = orchestrator.register(saga);
/// orchestrator.start();
/// let done = orders.run("order-1", Order { qty: 3, reservation: 0 }).await?;
/// assert_eq!((done.status, done.state.reservation), (Status::Completed, 30));
/// # Ok(()) }
/// ```
pub struct Orchestrator<L> {
    shared: Arc<Shared<L>>,
}

impl<L> Clone for Orchestrator<L> {
    fn clone(&self) -> Self {
        Orchestrator {
            shared: self.shared.clone(),
        }
    }
}

impl<L> std::fmt::Debug for Orchestrator<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("owner", &self.shared.owner)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Orchestrator`].
pub struct OrchestratorBuilder<L> {
    log: L,
    owner: String,
    observers: Vec<Observer>,
    notify: Option<Client>,
    claim_every: Duration,
    max_running: usize,
}

impl<L: SagaLog> OrchestratorBuilder<L> {
    /// This executor's name in leases (a random one by default). Replicas need distinct names.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// Calls `f` on every logged transition and every answered attempt (tests use it to kill
    /// the process at a chosen point; services to count).
    pub fn observe(mut self, f: impl Fn(&Probe<'_>) + Send + Sync + 'static) -> Self {
        self.observers.push(Arc::new(f));
        self
    }

    /// Emits [`SAGA_STUCK`] through `client` when a saga is parked.
    pub fn notify(mut self, client: Client) -> Self {
        self.notify = Some(client);
        self
    }

    /// How often the log is asked for sagas to resume (and leases renewed): 1 s.
    pub fn claim_every(mut self, d: Duration) -> Self {
        self.claim_every = d.max(Duration::from_millis(10));
        self
    }

    /// At most `n` sagas resumed at once by this orchestrator (10,000). New sagas are not limited.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = n.max(1);
        self
    }

    /// The orchestrator, not started yet.
    pub fn build(self) -> Orchestrator<L> {
        Orchestrator {
            shared: Arc::new(Shared {
                log: self.log,
                owner: self.owner,
                defs: RwLock::new(HashMap::new()),
                running: Mutex::new(HashMap::new()),
                waiters: Mutex::new(HashMap::new()),
                observers: self.observers,
                notify: self.notify,
                stop: watch::channel(false).0,
                claim_every: self.claim_every,
                max_running: self.max_running,
                started: AtomicBool::new(false),
            }),
        }
    }
}

impl<L: SagaLog> Orchestrator<L> {
    /// An orchestrator over `log`.
    pub fn builder(log: L) -> OrchestratorBuilder<L> {
        OrchestratorBuilder {
            log,
            owner: format!("orchestrator-{}", uuid::Uuid::new_v4().simple()),
            observers: Vec::new(),
            notify: None,
            claim_every: Duration::from_secs(1),
            max_running: 10_000,
        }
    }

    /// Registers a definition (by its name: a saga in the log runs under the definition of
    /// the same name) and returns the handle that starts sagas of it.
    pub fn register<S: SagaState, P>(&self, saga: crate::Saga<S, P>) -> Sagas<S, L> {
        let def = Arc::new(Def {
            name: saga.name,
            steps: saga.steps,
            deadline: saga.deadline,
            parallel_compensation: saga.parallel_compensation,
            compensation: saga.compensation,
        });
        self.shared
            .defs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(def.name, def.clone());
        Sagas {
            orchestrator: self.clone(),
            def,
            _state: PhantomData,
        }
    }

    /// Starts resuming sagas from the log, now and every [`claim_every`](OrchestratorBuilder::claim_every).
    /// Register every definition first. Calling it again does nothing.
    pub fn start(&self) {
        if !self.shared.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(self.shared.clone().claim_loop());
        }
    }

    /// Stops running sagas here (they stay in the log, where a restart resumes them).
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }

    /// The log.
    pub fn log(&self) -> &L {
        &self.shared.log
    }

    /// Sagas by status and definition, newest first.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Summary>> {
        self.shared.log.list(filter).await
    }

    /// One saga with its whole log.
    pub async fn show(&self, id: &str) -> Result<Record> {
        self.shared
            .log
            .load(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.into()))
    }

    /// Tries a parked saga's failing step or compensation again, with a fresh set of attempts.
    pub async fn retry(&self, id: &str) -> Result<()> {
        self.operate(id, "only a stuck saga can be retried", |_| Transition::Retried)
            .await
    }

    /// Counts a parked saga's failing step (past the pivot) or compensation as done, and goes on.
    pub async fn skip(&self, id: &str) -> Result<()> {
        self.operate(id, "only a stuck saga can be skipped", |p| Transition::Skipped {
            step: p.parked_step().unwrap_or(0) as u32,
        })
        .await
    }

    /// Ends a parked saga as it is.
    pub async fn abort(&self, id: &str, reason: &str) -> Result<()> {
        let reason = reason.to_owned();
        self.operate(id, "only a stuck saga can be aborted", move |_| Transition::Aborted {
            reason: reason.clone(),
        })
        .await
    }

    async fn operate(&self, id: &str, what: &'static str, t: impl Fn(&Progress) -> Transition) -> Result<()> {
        let record = self.show(id).await?;
        let mut progress = Progress::fold(&record.entries).ok_or_else(|| Error::Corrupt {
            id: id.into(),
            what: "its log does not start with `started`".into(),
        })?;
        if progress.status != Status::Stuck {
            return Err(Error::WrongStatus {
                id: id.into(),
                status: progress.status,
                what,
            });
        }
        let t = t(&progress);
        progress.apply(&t);
        let write = Write {
            id: id.into(),
            after: record.summary.seq,
            transitions: vec![t],
            status: progress.status,
            wake_at: None,
        };
        self.shared.log.write(&self.shared.owner, write).await?;
        tracing::info!(saga = %id, status = %progress.status, "operator command logged");
        if progress.status.is_active() {
            let here = self
                .shared
                .defs
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(progress.saga.as_str());
            match self.shared.log.load(id).await? {
                Some(record) if here => self.shared.resume(record),
                // Not run here (a command-line operator): free for the orchestrator that runs
                // the log to claim.
                _ => self.shared.log.release(&self.shared.owner, id).await?,
            }
        } else {
            self.shared.wake(id, Some(&progress));
        }
        Ok(())
    }
}

/// Starts and awaits sagas of one definition (from [`Orchestrator::register`]).
pub struct Sagas<S, L> {
    orchestrator: Orchestrator<L>,
    def: Arc<Def<S>>,
    _state: PhantomData<fn() -> S>,
}

impl<S, L> Clone for Sagas<S, L> {
    fn clone(&self) -> Self {
        Sagas {
            orchestrator: self.orchestrator.clone(),
            def: self.def.clone(),
            _state: PhantomData,
        }
    }
}

impl<S: SagaState, L: SagaLog> Sagas<S, L> {
    /// Starts saga `id` with `state` and returns once its start is logged. Starting an id
    /// that exists already (a retried request) does nothing and succeeds, if it is a saga of
    /// this definition.
    pub async fn start(&self, id: impl Into<String>, state: S) -> Result<()> {
        let id = id.into();
        let shared = &self.orchestrator.shared;
        let json = serde_json::to_value(&state).map_err(|source| Error::Json {
            id: id.clone(),
            what: "the state does not encode".into(),
            source,
        })?;
        let deadline = self.def.deadline.map(|d| crate::log::now_ms() + d.as_millis() as u64);
        let started = Transition::Started {
            saga: self.def.name.into(),
            state: json,
            deadline,
        };
        let write = Write {
            id: id.clone(),
            after: 0,
            transitions: vec![started.clone()],
            status: Status::Running,
            wake_at: None,
        };
        match shared.log.write(&shared.owner, write).await {
            Ok(()) => {}
            Err(Error::Exists(_)) => {
                let record = self.orchestrator.show(&id).await?;
                return if record.summary.saga == self.def.name {
                    Ok(())
                } else {
                    Err(Error::Exists(id))
                };
            }
            Err(e) => return Err(e),
        }
        shared.observe(Probe::Logged {
            id: &id,
            transition: &started,
        });
        let progress = Progress::fold(&[crate::log::Entry {
            seq: 1,
            at: 0,
            transition: started,
        }])
        .expect("a started transition folds");
        self.def.clone().resume(shared.clone(), id, progress)
    }

    /// Waits until saga `id` ends or is parked, and returns how.
    pub async fn wait(&self, id: &str) -> Result<Outcome<S>> {
        let shared = &self.orchestrator.shared;
        loop {
            let (tx, rx) = oneshot::channel();
            {
                let mut waiters = shared.waiters.lock().unwrap_or_else(|e| e.into_inner());
                let here = waiters.entry(id.to_owned()).or_default();
                here.retain(|w| !w.is_closed());
                here.push(tx);
            }
            // A saga running here hands its end to the waiter; others are read from the log
            // (and polled, for runs in another replica).
            let here = shared.runs_here(id);
            if !here && let Some(outcome) = self.outcome(id).await? {
                return Ok(outcome);
            }
            let patience = if here {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(1)
            };
            if let Ok(Ok(Some(ended))) = tokio::time::timeout(patience, rx).await {
                return outcome_of(id, ended);
            }
        }
    }

    /// Starts saga `id` and waits for its outcome.
    pub async fn run(&self, id: impl Into<String>, state: S) -> Result<Outcome<S>> {
        let id = id.into();
        self.start(id.clone(), state).await?;
        self.wait(&id).await
    }

    /// The outcome of saga `id` if it ended or is parked.
    pub async fn outcome(&self, id: &str) -> Result<Option<Outcome<S>>> {
        let record = self.orchestrator.show(id).await?;
        let progress = Progress::fold(&record.entries).ok_or_else(|| Error::Corrupt {
            id: id.into(),
            what: "its log does not start with `started`".into(),
        })?;
        if progress.status.is_active() {
            return Ok(None);
        }
        outcome_of(id, progress).map(Some)
    }
}

fn outcome_of<S: SagaState>(id: &str, progress: Progress) -> Result<Outcome<S>> {
    let state = serde_json::from_value(progress.state).map_err(|source| Error::Json {
        id: id.into(),
        what: "the logged state does not decode".into(),
        source,
    })?;
    Ok(Outcome {
        id: id.into(),
        status: progress.status,
        state,
        error: progress.error,
    })
}
