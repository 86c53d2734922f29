//! Running one saga: decide the next action from its progress, log it, act, log the outcome.
//! Nothing is sent before the log says it will be, and nothing is decided twice: a resumed saga
//! continues from its folded log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use switchboard::Error as CallError;
use switchboard::resilience::{ATTEMPT_HEADER, IDEMPOTENCY_KEY_HEADER};

use crate::definition::{ErasedStep, Headers, SagaState, StepKind, StepPolicy};
use crate::error::Error;
use crate::log::{SagaLog, Status, Transition, Write, now_ms};
use crate::orchestrator::{Def, Probe, Shared};
use crate::progress::Progress;

/// The header naming the saga an attempt belongs to.
pub const SAGA_HEADER: &str = "sb-saga";
/// The header naming the step (`reserve`, or `reserve:compensate`).
pub const STEP_HEADER: &str = "sb-saga-step";

/// Why a run stopped before its saga ended.
pub(crate) enum Stop {
    /// Someone else writes this saga now (or the orchestrator stopped).
    Lost,
}

/// How an attempt's error counts.
enum Failure {
    /// The participant said no: the step fails.
    Business,
    /// Worth another attempt.
    Retry,
    /// Nothing will make it work (the reply does not decode): park for an operator.
    Fatal,
}

fn classify(e: &CallError, policy: &StepPolicy) -> Failure {
    match e {
        CallError::Rpc(rpc) if rpc.is_unavailable() || rpc.is_deadline_exceeded() => Failure::Retry,
        CallError::Rpc(rpc) if (policy.business)(rpc) => Failure::Business,
        CallError::Codec { .. } | CallError::InvalidData { .. } | CallError::TooLarge { .. } => Failure::Fatal,
        _ => Failure::Retry,
    }
}

pub(crate) struct Run<S, L> {
    pub(crate) id: String,
    pub(crate) def: Arc<Def<S>>,
    pub(crate) shared: Arc<Shared<L>>,
    pub(crate) progress: Progress,
    pub(crate) state: S,
    pub(crate) lost: Arc<std::sync::atomic::AtomicBool>,
    /// Transitions applied to `progress` but written with the next write (a reply goes out
    /// with the next step's `step_sent`: still logged before that step is sent).
    pub(crate) pending: Vec<Transition>,
}

impl<S: SagaState, L: SagaLog> Run<S, L> {
    /// Runs until the saga ends, is parked, or is lost.
    pub(crate) async fn run(mut self) {
        let span = tracing::info_span!("saga", saga = self.def.name, id = %self.id);
        let _ = tracing::Instrument::instrument(
            async {
                loop {
                    let step = match self.progress.status {
                        Status::Running => self.forward().await,
                        Status::Compensating => self.compensate().await,
                        _ => break,
                    };
                    if let Err(Stop::Lost) = step {
                        tracing::info!("no longer running this saga here");
                        return;
                    }
                }
            },
            span,
        )
        .await;
        self.shared.ended(&self.id, &self.progress, &self.def).await;
    }

    fn step(&self, i: usize) -> &ErasedStep<S> {
        &self.def.steps[i]
    }

    async fn forward(&mut self) -> Result<(), Stop> {
        let i = self.progress.next;
        if i >= self.def.steps.len() {
            return self.log(vec![Transition::Completed]).await;
        }
        let now = now_ms();
        let step = self.step(i);
        let (kind, name, policy) = (step.kind, step.name, step.policy.clone());
        if kind != StepKind::Retriable && self.progress.deadline.is_some_and(|d| now >= d) {
            return self.fail(i, "the saga's deadline passed".into()).await;
        }
        if let Some(wake) = self.progress.wake_at.filter(|w| *w > now) {
            return self.sleep_until(wake).await;
        }
        let attempt = self.progress.attempts + 1;
        let deadline = self
            .progress
            .step_deadline
            .or(policy.deadline.map(|d| now + d.as_millis() as u64));
        if deadline.is_some_and(|d| now >= d) {
            return self.give_up(i, kind, "the step's deadline passed".into()).await;
        }
        self.log(vec![Transition::StepSent {
            step: i as u32,
            attempt,
            deadline,
        }])
        .await?;
        let mut limit = policy.attempt_timeout;
        let until = [deadline, self.progress.deadline.filter(|_| kind != StepKind::Retriable)];
        for at in until.into_iter().flatten() {
            limit = limit.min(Duration::from_millis(at.saturating_sub(now_ms()).max(1)));
        }
        let headers = self.headers(name, "", attempt);
        let result = (self.step(i).call)(&self.state, headers, limit).await;
        self.shared.observe(Probe::Answered {
            id: &self.id,
            step: i,
            compensation: false,
        });
        match result {
            Ok(reply) => self.replied(i, reply).await,
            Err(e) => match classify(&e, &policy) {
                Failure::Business if kind != StepKind::Retriable => self.fail(i, e.to_string()).await,
                Failure::Fatal => self.park(i, e.to_string()).await,
                _ => {
                    let wake = now_ms() + policy.backoff(attempt).as_millis() as u64;
                    let used = attempt - self.progress.floor;
                    if used >= policy.max_attempts || deadline.is_some_and(|d| wake >= d) {
                        self.give_up(i, kind, e.to_string()).await
                    } else {
                        self.log(vec![Transition::StepRetrying {
                            step: i as u32,
                            attempt,
                            error: e.to_string(),
                            wake_at: wake,
                        }])
                        .await
                    }
                }
            },
        }
    }

    async fn replied(&mut self, i: usize, reply: Value) -> Result<(), Stop> {
        let mut state = self.state.clone();
        let fits = (self.step(i).apply)(&mut state, &reply).and_then(|()| serde_json::to_value(&state));
        let json = match fits {
            Ok(json) => json,
            Err(e) => return self.park(i, format!("the reply does not fit the state: {e}")).await,
        };
        let replied = Transition::StepReplied {
            step: i as u32,
            reply,
            state: json,
        };
        if i + 1 == self.def.steps.len() {
            self.log(vec![replied, Transition::Completed]).await?;
        } else {
            self.progress.apply(&replied);
            self.pending.push(replied);
        }
        self.state = state;
        Ok(())
    }

    /// The step failed for good: a retriable one parks the saga, others start compensation.
    async fn give_up(&mut self, i: usize, kind: StepKind, error: String) -> Result<(), Stop> {
        if kind == StepKind::Retriable {
            self.park(i, error).await
        } else {
            self.fail(i, error).await
        }
    }

    async fn fail(&mut self, i: usize, error: String) -> Result<(), Stop> {
        let failed = Transition::StepFailed { step: i as u32, error };
        let mut after = self.progress.clone();
        after.apply(&failed);
        let mut ts = vec![failed];
        if after.undo.is_empty() {
            ts.push(Transition::Compensated);
        }
        self.log(ts).await
    }

    async fn park(&mut self, i: usize, error: String) -> Result<(), Stop> {
        tracing::warn!(step = self.step(i).name, %error, "saga parked for an operator");
        self.log(vec![Transition::Stuck { step: i as u32, error }]).await
    }

    async fn compensate(&mut self) -> Result<(), Stop> {
        let pending = &self.progress.undo;
        let chosen = if self.def.parallel_compensation {
            &pending[..]
        } else {
            &pending[..pending.len().min(1)]
        };
        if chosen.is_empty() {
            return self.log(vec![Transition::Compensated]).await;
        }
        let now = now_ms();
        let ready: Vec<_> = chosen
            .iter()
            .filter(|u| u.wake_at.is_none_or(|w| w <= now))
            .cloned()
            .collect();
        if ready.is_empty() {
            let wake = chosen.iter().filter_map(|u| u.wake_at).min().unwrap_or(now);
            return self.sleep_until(wake).await;
        }
        let sent = ready
            .iter()
            .map(|u| Transition::CompensationSent {
                step: u.step as u32,
                attempt: u.attempts + 1,
            })
            .collect();
        self.log(sent).await?;
        let policy = self.def.compensation.clone();
        let calls = ready.iter().map(|u| {
            let step = self.step(u.step);
            let headers = self.headers(step.name, ":compensate", u.attempts + 1);
            let reply = self.progress.replies.get(&u.step).cloned().unwrap_or(Value::Null);
            let undo = step
                .undo
                .as_ref()
                .map(|undo| undo(&self.state, &reply, headers, policy.attempt_timeout));
            async move {
                match undo {
                    Some(call) => call.await,
                    None => Ok(()),
                }
            }
        });
        let results = join_all(calls).await;
        let mut ts = Vec::new();
        let mut stuck = None;
        for (u, result) in ready.iter().zip(results) {
            self.shared.observe(Probe::Answered {
                id: &self.id,
                step: u.step,
                compensation: true,
            });
            let attempt = u.attempts + 1;
            match result {
                Ok(()) => ts.push(Transition::CompensationDone { step: u.step as u32 }),
                Err(e) if attempt - u.floor >= policy.max_attempts && stuck.is_none() => {
                    stuck = Some(Transition::Stuck {
                        step: u.step as u32,
                        error: e.to_string(),
                    });
                }
                Err(e) => ts.push(Transition::CompensationRetrying {
                    step: u.step as u32,
                    attempt,
                    error: e.to_string(),
                    wake_at: now_ms() + policy.backoff(attempt).as_millis() as u64,
                }),
            }
        }
        let mut after = self.progress.clone();
        ts.iter().for_each(|t| after.apply(t));
        match stuck {
            Some(stuck) => ts.push(stuck),
            None if after.undo.is_empty() => ts.push(Transition::Compensated),
            None => {}
        }
        self.log(ts).await
    }

    fn headers(&self, step: &str, suffix: &str, attempt: u32) -> Headers {
        vec![
            (IDEMPOTENCY_KEY_HEADER, format!("saga:{}:{step}{suffix}", self.id)),
            (SAGA_HEADER, self.id.clone()),
            (STEP_HEADER, format!("{step}{suffix}")),
            (ATTEMPT_HEADER, attempt.to_string()),
        ]
    }

    async fn sleep_until(&self, wake: u64) -> Result<(), Stop> {
        let wait = Duration::from_millis(wake.saturating_sub(now_ms()));
        let mut stop = self.shared.stop.subscribe();
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(Stop::Lost),
        }
    }

    /// Logs `ts` and applies them. A write that fails for a reason other than a conflict (the
    /// database is down) is tried again until it succeeds or the orchestrator stops.
    async fn log(&mut self, ts: Vec<Transition>) -> Result<(), Stop> {
        let mut after = self.progress.clone();
        ts.iter().for_each(|t| after.apply(t));
        let mut ts = ts;
        if !self.pending.is_empty() {
            ts.splice(0..0, std::mem::take(&mut self.pending));
        }
        let wake_at = match after.status {
            Status::Running => after.wake_at,
            Status::Compensating => after.undo.iter().filter_map(|u| u.wake_at).min(),
            _ => None,
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            if self.lost.load(Ordering::Acquire) || *self.shared.stop.borrow() {
                return Err(Stop::Lost);
            }
            let write = Write {
                id: self.id.clone(),
                after: self.progress.seq,
                transitions: ts.clone(),
                status: after.status,
                wake_at,
            };
            match self.shared.log.write(&self.shared.owner, write).await {
                Ok(()) => break,
                Err(Error::Conflict(_)) => return Err(Stop::Lost),
                Err(e) => {
                    tracing::warn!(error = %e, "the saga log refused a write; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        after.seq = self.progress.seq + ts.len() as u64;
        self.progress = after;
        for t in &ts {
            self.shared.observe(Probe::Logged {
                id: &self.id,
                transition: t,
            });
        }
        Ok(())
    }
}
