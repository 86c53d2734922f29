//! A saga log in memory: for tests, and for sagas that need not survive the process.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{Entry, Filter, Record, SagaLog, Summary, Write, now_ms, validate};
use crate::error::{Error, Result};

/// Sagas in a map; clones share it.
///
/// ```
/// use switchboard_saga::log::{MemoryLog, SagaLog, Status, Transition, Write};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> switchboard_saga::Result<()> {
/// let log = MemoryLog::new();
/// let started = Transition::Started { saga: "order".into(), state: serde_json::json!({}), deadline: None };
/// let write = Write { id: "o-1".into(), after: 0, transitions: vec![started], status: Status::Running, wake_at: None };
/// log.write("me", write).await?;
/// assert_eq!(log.load("o-1").await?.unwrap().summary.seq, 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryLog {
    sagas: Arc<Mutex<HashMap<String, Record>>>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog").finish_non_exhaustive()
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.sagas.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SagaLog for MemoryLog {
    async fn write(&self, _owner: &str, write: Write) -> Result<()> {
        let name = validate(&write)?.to_owned();
        let at = now_ms();
        let mut sagas = self.lock();
        let record = match sagas.get_mut(&write.id) {
            Some(_) if write.after == 0 => return Err(Error::Exists(write.id)),
            Some(r) if r.summary.seq != write.after => return Err(Error::Conflict(write.id)),
            Some(r) => r,
            None if write.after != 0 => return Err(Error::Conflict(write.id)),
            None => sagas.entry(write.id.clone()).or_insert(Record {
                summary: Summary {
                    id: write.id.clone(),
                    saga: name,
                    status: write.status,
                    seq: 0,
                    created_at: at,
                    updated_at: at,
                    wake_at: None,
                },
                entries: Vec::new(),
            }),
        };
        for transition in write.transitions {
            record.summary.seq += 1;
            record.entries.push(Entry {
                seq: record.summary.seq,
                at,
                transition,
            });
        }
        record.summary.status = write.status;
        record.summary.updated_at = at;
        record.summary.wake_at = write.wake_at;
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<Option<Record>> {
        Ok(self.lock().get(id).cloned())
    }

    async fn list(&self, filter: Filter) -> Result<Vec<Summary>> {
        let sagas = self.lock();
        let mut found: Vec<Summary> = sagas
            .values()
            .map(|r| &r.summary)
            .filter(|s| filter.matches(s))
            .cloned()
            .collect();
        found.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        found.truncate(filter.limit());
        Ok(found)
    }

    async fn claim(&self, _owner: &str, limit: usize, running: &HashSet<String>) -> Result<Vec<Record>> {
        let sagas = self.lock();
        let mut found: Vec<Record> = sagas
            .values()
            .filter(|r| r.summary.status.is_active() && !running.contains(&r.summary.id))
            .cloned()
            .collect();
        found.sort_by(|a, b| (a.summary.created_at, &a.summary.id).cmp(&(b.summary.created_at, &b.summary.id)));
        found.truncate(limit);
        Ok(found)
    }
}
