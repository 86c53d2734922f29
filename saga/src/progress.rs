//! A saga's progress, folded from its log: where it is, what is left to do, and when. The same
//! fold runs while a saga runs and when it resumes, so a resumed saga picks up exactly where
//! its log says it was.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::log::{Entry, Status, Transition};

/// Where one saga is.
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    pub(crate) saga: String,
    pub(crate) status: Status,
    pub(crate) seq: u64,
    /// The state after the last replied step.
    pub(crate) state: Value,
    pub(crate) deadline: Option<u64>,
    /// The next step forwards.
    pub(crate) next: usize,
    /// Attempts made of the next step (and the count an operator's retry starts again from).
    pub(crate) attempts: u32,
    pub(crate) floor: u32,
    pub(crate) step_deadline: Option<u64>,
    pub(crate) wake_at: Option<u64>,
    /// Replies of the steps that replied, by index.
    pub(crate) replies: BTreeMap<usize, Value>,
    /// Steps still to compensate, in the order they are undone, with their attempts so far,
    /// the floor an operator's retry set, and their timers.
    pub(crate) undo: Vec<Undo>,
    /// What the saga was doing when it was parked.
    pub(crate) parked_from: Status,
    /// The step (or compensation) that was parked.
    pub(crate) parked: Option<usize>,
    pub(crate) error: Option<String>,
}

/// A step to compensate.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Undo {
    pub(crate) step: usize,
    pub(crate) attempts: u32,
    pub(crate) floor: u32,
    pub(crate) wake_at: Option<u64>,
}

impl Progress {
    /// The progress after `entries`; `None` when they do not start with `Started`.
    pub(crate) fn fold(entries: &[Entry]) -> Option<Progress> {
        let (first, rest) = entries.split_first()?;
        let Transition::Started { saga, state, deadline } = &first.transition else {
            return None;
        };
        let mut p = Progress {
            saga: saga.clone(),
            status: Status::Running,
            seq: first.seq,
            state: state.clone(),
            deadline: *deadline,
            next: 0,
            attempts: 0,
            floor: 0,
            step_deadline: None,
            wake_at: None,
            replies: BTreeMap::new(),
            undo: Vec::new(),
            parked_from: Status::Running,
            parked: None,
            error: None,
        };
        for entry in rest {
            p.apply(&entry.transition);
            p.seq = entry.seq;
        }
        Some(p)
    }

    /// Applies one transition (one that was, or is about to be, logged).
    pub(crate) fn apply(&mut self, t: &Transition) {
        match t {
            Transition::Started { .. } => {}
            Transition::StepSent {
                step,
                attempt,
                deadline,
            } => {
                self.next = *step as usize;
                self.attempts = *attempt;
                self.step_deadline = *deadline;
                self.wake_at = None;
            }
            Transition::StepReplied { step, reply, state } => {
                self.replies.insert(*step as usize, reply.clone());
                self.state = state.clone();
                self.next = *step as usize + 1;
                (self.attempts, self.floor, self.step_deadline, self.wake_at) = (0, 0, None, None);
            }
            Transition::StepRetrying { error, wake_at, .. } => {
                self.wake_at = Some(*wake_at);
                self.error = Some(error.clone());
            }
            Transition::StepFailed { step, error } => {
                self.status = Status::Compensating;
                self.error = Some(error.clone());
                self.wake_at = None;
                // Steps that replied before the failed one, last first.
                self.undo = self
                    .replies
                    .keys()
                    .rev()
                    .filter(|s| **s < *step as usize)
                    .map(|&step| Undo {
                        step,
                        attempts: 0,
                        floor: 0,
                        wake_at: None,
                    })
                    .collect();
            }
            Transition::CompensationSent { step, attempt } => {
                if let Some(u) = self.undo_mut(*step) {
                    u.attempts = *attempt;
                    u.wake_at = None;
                }
            }
            Transition::CompensationRetrying {
                step, error, wake_at, ..
            } => {
                self.error = Some(error.clone());
                if let Some(u) = self.undo_mut(*step) {
                    u.wake_at = Some(*wake_at);
                }
            }
            Transition::CompensationDone { step } => self.undo.retain(|u| u.step != *step as usize),
            Transition::Completed => self.status = Status::Completed,
            Transition::Compensated => self.status = Status::Compensated,
            Transition::Stuck { step, error } => {
                self.parked_from = self.status;
                self.parked = Some(*step as usize);
                self.status = Status::Stuck;
                self.error = Some(error.clone());
            }
            Transition::Retried => {
                self.status = self.parked_from;
                self.floor = self.attempts;
                self.wake_at = None;
                for u in &mut self.undo {
                    (u.floor, u.wake_at) = (u.attempts, None);
                }
            }
            Transition::Skipped { step } => {
                self.status = self.parked_from;
                let step = *step as usize;
                if self.status == Status::Compensating {
                    self.undo.retain(|u| u.step != step);
                } else {
                    self.next = step + 1;
                    (self.attempts, self.floor, self.step_deadline, self.wake_at) = (0, 0, None, None);
                }
            }
            Transition::Aborted { reason } => {
                self.status = Status::Aborted;
                self.error = Some(reason.clone());
            }
        }
    }

    fn undo_mut(&mut self, step: u32) -> Option<&mut Undo> {
        self.undo.iter_mut().find(|u| u.step == step as usize)
    }

    /// The step an operator's skip would skip: the parked one.
    pub(crate) fn parked_step(&self) -> Option<usize> {
        self.parked.filter(|_| self.status == Status::Stuck)
    }
}
