//! A VFS over the default one that writes a commit's WAL frames with one `pwrite`.
//!
//! SQLite writes every WAL frame as two calls, its 24-byte header and its page: a group of
//! appends dirties six to eight pages, so a commit was some fifteen system calls, a third of
//! the writer thread's time. Here the WAL file keeps writes that continue one another in a
//! buffer and hands them to the file in one call when the commit frame's page is written
//! (its header says it is one: a non-zero database size, the WAL format's commit mark). Other
//! connections see a commit only after that (SQLite publishes it in the WAL index after the
//! frames are written), and this connection flushes before it reads, syncs, truncates or asks
//! the size of the WAL, before a write that does not continue the buffer, and at 1 MiB. So the
//! file receives the same bytes in the same order, only in fewer calls: an append that
//! returned is in the operating system's hands exactly as before. (Where the database does
//! not promise power-safe overwrites, `psow=0`, SQLite pads commits with frames written in
//! pieces; there nothing is kept.) Only a writer thread's connection opens through it (the
//! store's, the saga log's, by `open_writer`); every other file is the default VFS's own.

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open with.
pub(super) const NAME: &CStr = c"switchboard-wal-batch";

/// A buffer this size is written at once even without a commit.
const FLUSH_AT: usize = 1 << 20;

/// The most one call writes: the default VFS writes less than 128 KiB a call (it masks the
/// length), so a longer buffer goes in pieces.
const PIECE: usize = 1 << 16;

/// `SQLITE_POWERSAFE_OVERWRITE` as the bundled SQLite is built (its default).
const POWER_SAFE_DEFAULT: c_int = 1;

/// A frame header: page number, database size after a commit (0 otherwise), salts, checksum.
const FRAME_HEADER: usize = 24;

/// Registers the VFS (once) for writer connections to open with.
pub(super) fn register() -> rusqlite::Result<()> {
    static REGISTERED: OnceLock<Result<(), c_int>> = OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which lives as long as the
        // process; ours is leaked, so it does too, as `sqlite3_vfs_register` requires.
        unsafe {
            let base = ffi::sqlite3_vfs_find(std::ptr::null());
            if base.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                szOsFile: (BASE_AT + (*base).szOsFile as usize) as c_int,
                pNext: std::ptr::null_mut(),
                zName: NAME.as_ptr(),
                pAppData: base.cast(),
                xOpen: Some(open),
                ..*base
            }));
            match ffi::sqlite3_vfs_register(vfs, 0) {
                ffi::SQLITE_OK => Ok(()),
                rc => Err(rc),
            }
        }
    });
    registered.map_err(|rc| {
        rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some("cannot register the WAL-batching VFS".into()))
    })
}

/// An open WAL file: the default VFS's file after it, at [`BASE_AT`].
#[repr(C)]
struct WalFile {
    /// First, as in every `sqlite3_file`.
    methods: *const ffi::sqlite3_io_methods,
    base: *mut ffi::sqlite3_file,
    /// Bytes for the file from `at` on, not written yet.
    pending: Vec<u8>,
    at: i64,
    /// The last write was a commit frame's header: its page ends the commit.
    commit_page_next: bool,
    /// Writes are kept: false where the database does not promise power-safe overwrites, where
    /// SQLite pads a commit to a sector with frames written in pieces around a sync.
    batch: bool,
}

const BASE_AT: usize = std::mem::size_of::<WalFile>().next_multiple_of(16);

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: `pAppData` is the default VFS (set in `register`); SQLite gives `file` our
    // `szOsFile` bytes, room for a `WalFile` and the default VFS's file after it.
    unsafe {
        let base_vfs: *mut ffi::sqlite3_vfs = (*vfs).pAppData.cast();
        let Some(base_open) = (*base_vfs).xOpen else {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_CANTOPEN;
        };
        if flags & ffi::SQLITE_OPEN_WAL == 0 {
            // Not a WAL: the default VFS's own file, in place, with its own methods.
            return base_open(base_vfs, name, file, flags, out_flags);
        }
        let base = file.cast::<u8>().add(BASE_AT).cast::<ffi::sqlite3_file>();
        let rc = base_open(base_vfs, name, base, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            if let Some(close) = (*base).pMethods.as_ref().and_then(|m| m.xClose) {
                close(base);
            }
            (*file).pMethods = std::ptr::null();
            return rc;
        }
        // SQLite pads when the database file does not promise power-safe overwrites, which on
        // Unix is its `psow` URI parameter (on unless the library was built otherwise); a
        // WAL's name answers for its database's parameters.
        let power_safe = ffi::sqlite3_uri_boolean(name, c"psow".as_ptr(), POWER_SAFE_DEFAULT) != 0;
        file.cast::<WalFile>().write(WalFile {
            methods: &METHODS,
            base,
            pending: Vec::new(),
            at: 0,
            commit_page_next: false,
            batch: power_safe,
        });
        ffi::SQLITE_OK
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: SQLite maps no WAL into memory and keeps no shared memory on it.
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// # Safety
/// `file` is a `WalFile` that `open` made and `close` has not dropped.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    unsafe { &mut *file.cast::<WalFile>() }
}

impl WalFile {
    fn base_methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: the default VFS opened `base` successfully, so its methods are set.
        unsafe { &*(*self.base).pMethods }
    }

    /// Writes what is pending, in one call up to [`PIECE`] bytes.
    fn flush(&mut self) -> c_int {
        let Some(write) = self.base_methods().xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = ffi::SQLITE_OK;
        let mut at = self.at;
        for piece in self.pending.chunks(PIECE) {
            // SAFETY: `base` is open; the piece is its length in bytes (at most `PIECE`).
            rc = unsafe { write(self.base, piece.as_ptr().cast(), piece.len() as c_int, at) };
            #[cfg(test)]
            tests::WRITES.with(|n| n.set(n.get() + 1));
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += piece.len() as i64;
        }
        self.pending.clear();
        self.commit_page_next = false;
        rc
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file it opened once; the `WalFile` is dropped here.
    unsafe {
        let wal = wal(file);
        let flushed = wal.flush();
        let closed = wal
            .base_methods()
            .xClose
            .map_or(ffi::SQLITE_OK, |close| close(wal.base));
        std::ptr::drop_in_place(file.cast::<WalFile>());
        (*file).pMethods = std::ptr::null();
        if flushed != ffi::SQLITE_OK { flushed } else { closed }
    }
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: as `wal`; the arguments are SQLite's own, passed on.
    unsafe {
        let wal = wal(file);
        match wal.flush() {
            ffi::SQLITE_OK => match wal.base_methods().xRead {
                Some(read) => read(wal.base, buf, amount, offset),
                None => ffi::SQLITE_IOERR_READ,
            },
            rc => rc,
        }
    }
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    // SAFETY: as `wal`; SQLite's `data` holds `amount` bytes.
    unsafe {
        let wal = wal(file);
        if !wal.pending.is_empty() && offset != wal.at + wal.pending.len() as i64 {
            let rc = wal.flush();
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        let data = std::slice::from_raw_parts(data.cast::<u8>(), amount.max(0) as usize);
        if wal.pending.is_empty() {
            wal.at = offset;
        }
        wal.pending.extend_from_slice(data);
        let ends_commit = wal.commit_page_next;
        wal.commit_page_next = data.len() == FRAME_HEADER && data[4..8] != [0; 4];
        if ends_commit || wal.pending.len() >= FLUSH_AT || !wal.batch {
            wal.flush()
        } else {
            ffi::SQLITE_OK
        }
    }
}

/// A method that flushes, then calls the default file's.
macro_rules! flushed_then {
    ($name:ident, $method:ident, $($arg:ident: $ty:ty),*) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: as `wal`; the arguments are SQLite's own, passed on.
            unsafe {
                let wal = wal(file);
                match wal.flush() {
                    ffi::SQLITE_OK => match wal.base_methods().$method {
                        Some(f) => f(wal.base, $($arg),*),
                        None => ffi::SQLITE_NOTFOUND,
                    },
                    rc => rc,
                }
            }
        }
    };
}

/// A method passed on as it is.
macro_rules! passed_on {
    ($name:ident, $method:ident, $default:expr, $($arg:ident: $ty:ty),*) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file, $($arg: $ty),*) -> c_int {
            // SAFETY: as `wal`; the arguments are SQLite's own, passed on.
            unsafe {
                let wal = wal(file);
                wal.base_methods().$method.map_or($default, |f| f(wal.base, $($arg),*))
            }
        }
    };
}

flushed_then!(truncate, xTruncate, size: i64);
flushed_then!(sync, xSync, flags: c_int);
flushed_then!(file_size, xFileSize, size: *mut i64);
flushed_then!(file_control, xFileControl, op: c_int, arg: *mut c_void);
passed_on!(lock, xLock, ffi::SQLITE_OK, level: c_int);
passed_on!(unlock, xUnlock, ffi::SQLITE_OK, level: c_int);
passed_on!(check_reserved_lock, xCheckReservedLock, ffi::SQLITE_OK, out: *mut c_int);
passed_on!(sector_size, xSectorSize, 4096,);
passed_on!(device_characteristics, xDeviceCharacteristics, 0,);

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use rusqlite::{Connection, OpenFlags};

    use super::*;

    thread_local! {
        /// Writes this thread's connections made to a WAL file through the VFS.
        pub(super) static WRITES: Cell<usize> = const { Cell::new(0) };
    }

    fn writes() -> usize {
        WRITES.with(Cell::get)
    }

    /// A writer through the VFS and a reader through the default one, on one WAL database.
    fn pair(dir: &tempfile::TempDir) -> (Connection, Connection) {
        pair_with(dir, "", "NORMAL")
    }

    /// [`pair`], the writer opened with URI parameters `query` and `synchronous`.
    fn pair_with(dir: &tempfile::TempDir, query: &str, synchronous: &str) -> (Connection, Connection) {
        register().unwrap();
        let path = dir.path().join("t.db");
        let uri = format!("file:{}{query}", path.display());
        let flags = OpenFlags::default() | OpenFlags::SQLITE_OPEN_URI;
        let writer = Connection::open_with_flags_and_vfs(&uri, flags, NAME).unwrap();
        writer
            .execute_batch(&format!(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous};
                 CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v TEXT NOT NULL);
                 CREATE INDEX t_k ON t (k);"
            ))
            .unwrap();
        (writer, Connection::open(&path).unwrap())
    }

    fn assert_intact(conn: &Connection) {
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    fn insert(conn: &Connection, from: i64, n: i64) {
        let tx = conn.unchecked_transaction().unwrap();
        for id in from..from + n {
            // Keys spread over the index: each row dirties a page of its own.
            let k = format!("{:08}", (id * 7919) % 100_003);
            tx.execute("INSERT INTO t (id, k, v) VALUES (?1, ?2, ?3)", (id, k, "x".repeat(300)))
                .unwrap();
        }
        tx.commit().unwrap();
    }

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_commit_reaches_the_wal_in_one_write_and_is_seen_at_once_by_another_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = pair(&dir);
        insert(&writer, 0, 100);
        for round in 1..=20 {
            let before = writes();
            // A few rows: several pages (table, index), some 20 KiB of frames.
            insert(&writer, round * 1000, 4);
            assert_eq!(writes() - before, 1, "round {round}: one write for the commit");
            assert_eq!(
                count(&reader),
                100 + 4 * round,
                "round {round}: the commit is visible when it returns"
            );
        }
    }

    #[test]
    fn a_commit_longer_than_a_piece_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = pair(&dir);
        let before = writes();
        insert(&writer, 0, 2000); // about 700 KiB of frames
        let made = writes() - before;
        assert!((700 * 1024 / PIECE..2000).contains(&made), "{made} writes");
        assert_eq!(count(&reader), 2000);
        assert_intact(&reader);
    }

    #[test]
    fn a_transaction_that_spills_reads_back_its_own_pages_and_rolls_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = pair(&dir);
        // A cache of 10 pages: a long transaction writes frames before its commit, reads them
        // back, and writes some pages again.
        writer.execute_batch("PRAGMA cache_size = 10").unwrap();
        insert(&writer, 0, 3000);
        let sum: i64 = reader.query_row("SELECT sum(id) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(sum, (0..3000).sum::<i64>());

        let tx = writer.unchecked_transaction().unwrap();
        tx.execute("UPDATE t SET v = 'changed'", []).unwrap();
        tx.execute("DELETE FROM t WHERE id % 2 = 0", []).unwrap();
        assert_eq!(count(&tx), 1500, "the transaction reads its own spilled pages");
        tx.rollback().unwrap();
        assert_eq!(count(&writer), 3000);
        let changed: i64 = reader
            .query_row("SELECT count(*) FROM t WHERE v = 'changed'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(changed, 0);
        assert_intact(&writer);
        assert_intact(&reader);
    }

    #[test]
    fn without_power_safe_overwrites_each_write_goes_through_and_padded_commits_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = pair_with(&dir, "?psow=0", "FULL");
        for round in 0..20 {
            let before = writes();
            insert(&writer, round * 10, 3);
            assert!(
                writes() - before > 2,
                "round {round}: frames written as SQLite writes them"
            );
            assert_eq!(count(&reader), 3 * (round + 1));
        }
        assert_intact(&reader);
    }

    #[test]
    fn what_was_committed_is_there_after_the_connections_close() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, reader) = pair(&dir);
            for round in 0..50 {
                insert(&writer, round * 10, 3);
            }
            writer.execute_batch("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
            insert(&writer, 10_000, 3);
            drop(reader);
        }
        let conn = Connection::open(dir.path().join("t.db")).unwrap();
        assert_eq!(count(&conn), 153);
    }
}
