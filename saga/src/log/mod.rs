//! The saga log: every transition of every saga, written before the orchestrator acts on it.
//!
//! A saga's entries are numbered from 1 without gaps; a write names the last entry its writer
//! saw, so two writers of one saga cannot both succeed (the second gets
//! [`Error::Conflict`](crate::Error::Conflict)). Backends: [`MemoryLog`] (tests),
//! [`SqliteLog`] (one file, the embedded default) and `PgLog` (feature `postgres`: several
//! orchestrator replicas, one lease per saga).

use std::collections::HashSet;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;

mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryLog;
#[cfg(feature = "postgres")]
pub use postgres::PgLog;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteLog;

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Running its steps forwards.
    Running,
    /// Undoing its completed steps after one failed.
    Compensating,
    /// Every step done.
    Completed,
    /// Every completed step undone.
    Compensated,
    /// Parked until an operator retries, skips or aborts it: a compensation (or a step past
    /// the pivot) kept failing.
    Stuck,
    /// Ended by an operator.
    Aborted,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 6] = [
        Status::Running,
        Status::Compensating,
        Status::Completed,
        Status::Compensated,
        Status::Stuck,
        Status::Aborted,
    ];

    /// True once nothing more will happen to the saga.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Compensated | Status::Aborted)
    }

    /// True while an orchestrator should be running it.
    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Compensating)
    }

    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Compensating => "compensating",
            Status::Completed => "completed",
            Status::Compensated => "compensated",
            Status::Stuck => "stuck",
            Status::Aborted => "aborted",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transition of a saga. Times are milliseconds since the Unix epoch, so timers survive
/// restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transition {
    /// The saga was started with this state.
    Started {
        /// The saga's name (its definition).
        saga: String,
        /// Its initial state.
        state: Value,
        /// When the whole saga must be past its pivot.
        deadline: Option<u64>,
    },
    /// A step's attempt is about to be sent.
    StepSent {
        /// The step's index.
        step: u32,
        /// Its attempt, from 1.
        attempt: u32,
        /// When the step gives up (set by its first attempt).
        deadline: Option<u64>,
    },
    /// A step replied; the state after it.
    StepReplied {
        /// The step's index.
        step: u32,
        /// Its reply, kept for its compensation.
        reply: Value,
        /// The saga's state with the reply applied.
        state: Value,
    },
    /// A step's attempt failed in a way worth retrying; the next waits until `wake_at`.
    StepRetrying {
        /// The step's index.
        step: u32,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// When the next attempt is sent.
        wake_at: u64,
    },
    /// A step failed for good (a business error, or its deadline): compensation begins.
    StepFailed {
        /// The step's index.
        step: u32,
        /// Why.
        error: String,
    },
    /// A compensation's attempt is about to be sent.
    CompensationSent {
        /// The compensated step's index.
        step: u32,
        /// Its attempt, from 1.
        attempt: u32,
    },
    /// A compensation's attempt failed; the next waits until `wake_at`.
    CompensationRetrying {
        /// The compensated step's index.
        step: u32,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: String,
        /// When the next attempt is sent.
        wake_at: u64,
    },
    /// A step was undone.
    CompensationDone {
        /// The compensated step's index.
        step: u32,
    },
    /// Every step done.
    Completed,
    /// Every completed step undone.
    Compensated,
    /// Parked for an operator.
    Stuck {
        /// The step (or compensation) that kept failing.
        step: u32,
        /// Its last error.
        error: String,
    },
    /// An operator asked for the parked work to be tried again.
    Retried,
    /// An operator skipped the parked step or compensation: it counts as done.
    Skipped {
        /// The step skipped.
        step: u32,
    },
    /// An operator ended the saga.
    Aborted {
        /// Why, as the operator said.
        reason: String,
    },
}

impl Transition {
    /// The name stored in the log's `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Transition::Started { .. } => "started",
            Transition::StepSent { .. } => "step_sent",
            Transition::StepReplied { .. } => "step_replied",
            Transition::StepRetrying { .. } => "step_retrying",
            Transition::StepFailed { .. } => "step_failed",
            Transition::CompensationSent { .. } => "compensation_sent",
            Transition::CompensationRetrying { .. } => "compensation_retrying",
            Transition::CompensationDone { .. } => "compensation_done",
            Transition::Completed => "completed",
            Transition::Compensated => "compensated",
            Transition::Stuck { .. } => "stuck",
            Transition::Retried => "retried",
            Transition::Skipped { .. } => "skipped",
            Transition::Aborted { .. } => "aborted",
        }
    }
}

/// A logged transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its number in the saga's log, from 1.
    pub seq: u64,
    /// When it was written (ms since the Unix epoch).
    pub at: u64,
    /// What happened.
    pub transition: Transition,
}

/// A saga as its log's index row says: what `list` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The saga's id.
    pub id: String,
    /// Its definition's name.
    pub saga: String,
    /// Where it is.
    pub status: Status,
    /// Its last entry's number.
    pub seq: u64,
    /// When it started (ms since the Unix epoch).
    pub created_at: u64,
    /// When its last entry was written.
    pub updated_at: u64,
    /// When its timer (a retry's backoff) fires, if one is set.
    pub wake_at: Option<u64>,
}

/// A saga with its whole log: what `load` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The index row.
    pub summary: Summary,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
}

/// A write: entries appended after `after` (0 for a new saga, whose first entry must be
/// [`Transition::Started`]) and the index row's new status and timer.
#[derive(Debug, Clone)]
pub struct Write {
    /// The saga.
    pub id: String,
    /// The last entry the writer saw.
    pub after: u64,
    /// What happened, in order.
    pub transitions: Vec<Transition>,
    /// The status after them.
    pub status: Status,
    /// The timer after them.
    pub wake_at: Option<u64>,
}

impl Write {
    /// The definition a new saga's `started` entry names (empty for later writes).
    pub(crate) fn saga_name(&self) -> &str {
        match self.transitions.first() {
            Some(Transition::Started { saga, .. }) => saga,
            _ => "",
        }
    }
}

/// Which sagas `list` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these statuses (all when empty).
    pub statuses: Vec<Status>,
    /// Only this definition.
    pub saga: Option<String>,
    /// At most this many (100 when 0).
    pub limit: usize,
}

impl Filter {
    /// At most `limit` sagas, newest first.
    pub fn limit(&self) -> usize {
        if self.limit == 0 { 100 } else { self.limit }
    }

    /// True if `s` passes.
    pub fn matches(&self, s: &Summary) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&s.status))
            && self.saga.as_deref().is_none_or(|name| name == s.saga)
    }
}

/// Where sagas are written. Every backend passes the same contract tests (`saga/tests/log.rs`).
pub trait SagaLog: Clone + Send + Sync + 'static {
    /// Writes `write` for the executor `owner`, atomically. Fails with
    /// [`Error::Conflict`](crate::Error::Conflict) when the saga's last entry is not
    /// `write.after` (another writer got there first, or the saga does not exist), or when
    /// `owner` no longer holds the saga's lease; with [`Error::Exists`](crate::Error::Exists)
    /// when a new saga's id is taken.
    fn write(&self, owner: &str, write: Write) -> impl Future<Output = Result<()>> + Send;

    /// One saga with its log.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<Record>>> + Send;

    /// Sagas by status and name, newest first.
    fn list(&self, filter: Filter) -> impl Future<Output = Result<Vec<Summary>>> + Send;

    /// Up to `limit` active sagas (running or compensating) that `owner` may run now, with their
    /// logs, oldest first, excluding `running` (those it runs already). On PostgreSQL each is
    /// leased to `owner`; on SQLite the first claim locks the file to this process.
    fn claim(
        &self,
        owner: &str,
        limit: usize,
        running: &HashSet<String>,
    ) -> impl Future<Output = Result<Vec<Record>>> + Send;

    /// How long a lease lasts, where sagas are leased: the orchestrator renews its leases
    /// three times per lease.
    fn lease(&self) -> Option<std::time::Duration> {
        None
    }

    /// Keeps `owner`'s leases of `ids` alive; returns those it lost. Nothing to do where sagas
    /// are not leased.
    fn renew(&self, owner: &str, ids: &[String]) -> impl Future<Output = Result<Vec<String>>> + Send {
        let _ = (owner, ids);
        async { Ok(Vec::new()) }
    }

    /// Gives up `owner`'s lease of `id` (it finished or parked).
    fn release(&self, owner: &str, id: &str) -> impl Future<Output = Result<()>> + Send {
        let _ = (owner, id);
        async { Ok(()) }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Checks what every backend refuses alike: an empty write, a new saga not starting with
/// `Started`, a `Started` anywhere else, an empty or overlong id.
pub(crate) fn validate(write: &Write) -> Result<&str> {
    use crate::error::Error;
    if write.id.is_empty() || write.id.len() > MAX_ID_LEN {
        return Err(Error::Invalid(format!(
            "a saga id must be 1 to {MAX_ID_LEN} bytes, not {}",
            write.id.len()
        )));
    }
    if write.transitions.is_empty() {
        return Err(Error::Invalid("a write needs at least one transition".into()));
    }
    let starts = write
        .transitions
        .iter()
        .enumerate()
        .filter(|(_, t)| matches!(t, Transition::Started { .. }));
    for (i, _) in starts {
        if i != 0 || write.after != 0 {
            return Err(Error::Invalid("`started` can only be a saga's first entry".into()));
        }
    }
    let name = write.saga_name();
    if write.after == 0 && !matches!(write.transitions[0], Transition::Started { .. }) {
        return Err(Error::Invalid("a new saga's first entry must be `started`".into()));
    }
    Ok(name)
}

/// The longest saga id accepted.
pub const MAX_ID_LEN: usize = 200;
