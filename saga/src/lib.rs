//! Sagas for Switchboard: a declared, ordered list of typed steps, each a typed client call
//! with its compensation, run by an orchestrator that logs every transition before acting on
//! it, so a process killed at any point resumes each saga where it was, and every participant
//! sees each step once per idempotency key.
//!
//! - [`Saga`] and [`Step`] declare the steps; the compiler rejects a step without a
//!   compensation before the pivot and a step after it that is not retriable.
//! - [`Orchestrator`] runs them from a [`log::SagaLog`]: [`log::SqliteLog`] (one file, the
//!   embedded default), `log::postgres::PgLog` (feature `postgres`, several replicas, one
//!   lease per saga) or [`log::MemoryLog`] (tests).
//! - Every attempt carries `idempotency-key: saga:<id>:<step>` (the same on every attempt and
//!   after a restart; `:compensate` appended for the undo), `sb-saga`, `sb-saga-step` and
//!   `sb-attempt`. Participants deduplicate with [`Inbox`], so a retried step has its effect
//!   once.

#![warn(missing_docs)]

pub mod definition;
pub mod error;
pub mod log;
pub mod orchestrator;
mod progress;
mod run;

pub use definition::{AfterPivot, BeforePivot, Saga, SagaState, Step, StepKind};
pub use error::{Error, Result};
pub use log::{Filter, Status, Transition};
pub use orchestrator::{Orchestrator, OrchestratorBuilder, Outcome, Probe, SAGA_STUCK, Sagas, StuckSaga};
pub use run::{SAGA_HEADER, STEP_HEADER};
pub use switchboard_eventstore::Inbox;
