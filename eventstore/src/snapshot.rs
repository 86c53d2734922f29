//! Snapshots: an aggregate's state at a revision, stamped with the shape of the code that
//! wrote it.

use std::fmt;

use bytes::Bytes;

/// A stream's state at `revision`, as JSON, stamped with `schema`: a hash of the aggregate's
/// type and version, so a snapshot written by other code is ignored instead of trusted.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream.
    pub stream: String,
    /// The revision of the last event folded into it.
    pub revision: u64,
    /// The stamp of the code that wrote it.
    pub schema: String,
    /// The state, as JSON.
    pub data: Bytes,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("stream", &self.stream)
            .field("revision", &self.revision)
            .field("schema", &self.schema)
            .field("data_len", &self.data.len())
            .finish()
    }
}
