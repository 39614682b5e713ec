//! A segmented, checksummed write-ahead log with group commit: the aggregator acknowledges a
//! batch only after [`Wal::append`] has returned, so nothing acknowledged is lost to a crash.
//!
//! Records are opaque, non-empty byte strings framed as `[len u32 LE][crc32 of payload u32 LE]
//! [payload]` in segment files `DIR/00000000000000000001.wal`, … (20 digits: lexical order is
//! numeric order). How it stays durable:
//!
//! - `append` writes under a mutex, then waits until an fdatasync covers its bytes: one waiting
//!   thread syncs for every record written so far and the others return without syncing again
//!   (group commit).
//! - A segment is fdatasynced before the next one is created (even with `sync: false`), and the
//!   directory is fsynced after a segment file is created or removed. Only the last segment can
//!   therefore hold a torn write.
//! - `open` replays every intact record in order. Damage in the last segment (short header,
//!   zero or oversized length, short payload, checksum mismatch) is a torn tail: the file is
//!   truncated there with a warning. The same damage in an earlier segment is corruption: the
//!   rest of that segment is skipped with an error log and counted, and replay goes on.
//! - Appends after `open` go to a new segment (or to the last one if it is empty, so repeated
//!   opens do not pile up empty files): segments other than the active one are never written.
//! - After a failed fsync the log refuses further appends ([`WalError::Failed`]): the kernel
//!   may have dropped the unsynced pages, so a later successful fsync would prove nothing.

mod segment;
#[cfg(test)]
mod tests;

use segment::{encode, list_segments, scan, segment_path, sync_dir, HEADER};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tracing::{error, warn};

/// Largest record accepted by [`Wal::append`]: 256 MiB.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// The append buffer is dropped after a record that made it grow past this, so one huge record
/// does not pin its size in memory.
const KEEP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Settings of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Size at which the active segment is closed and a new one started. A record that would
    /// take the active segment past it goes to a new segment; a record larger than it gets a
    /// segment of its own. Default 64 MiB.
    pub segment_bytes: u64,
    /// fdatasync before [`Wal::append`] returns, so a returned record survives a crash. With
    /// `false` records reach the disk when the kernel writes them back, at a segment change, or
    /// when the `Wal` is dropped. Default `true`.
    pub sync: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            sync: true,
        }
    }
}

/// A record's position: its segment number and the byte offset of its header in that segment.
///
/// Ordered by `(segment, offset)`, which is append order. [`Wal::remove_before`] takes one and
/// keeps the segment it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn {
    /// Segment number, from the segment's file name.
    pub segment: u64,
    /// Byte offset of the record's header in the segment file.
    pub offset: u64,
}

/// What [`Wal::open`] found while replaying.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStats {
    /// Intact records passed to the callback.
    pub records: u64,
    /// Segment files read.
    pub segments: u64,
    /// Bytes cut from the last segment's torn tail.
    pub truncated_bytes: u64,
    /// Earlier segments whose rest was skipped because of corruption.
    pub corrupt_segments: u64,
    /// Bytes skipped in those corrupt segments (left on disk for inspection).
    pub corrupt_bytes: u64,
}

/// A write-ahead log failure.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file system operation failed.
    #[error("write-ahead log i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record over [`MAX_RECORD_BYTES`].
    #[error("record of {len} bytes exceeds the write-ahead log limit of {MAX_RECORD_BYTES} bytes (256 MiB): send smaller batches")]
    TooLarge {
        /// The record's length.
        len: usize,
    },
    /// An empty record: the framing reserves length 0 to detect zero-filled torn tails.
    #[error("empty record: the write-ahead log stores only non-empty records")]
    Empty,
    /// An earlier write or fsync failed and left the log's durability unknown.
    #[error("write-ahead log in {dir} takes no more appends after a failed write or fsync; restart to recover its records by replay")]
    Failed {
        /// The log's directory.
        dir: PathBuf,
    },
}

impl WalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The append side, under one mutex.
struct Writer {
    /// The active segment, shared with a syncing thread.
    file: Arc<File>,
    /// Its number.
    segment: u64,
    /// Its length.
    offset: u64,
    /// Bytes appended since open, over all segments: the group-commit position.
    written: u64,
    /// Older segments still on disk: number → bytes.
    sealed: BTreeMap<u64, u64>,
    /// Reused framing buffer.
    buf: Vec<u8>,
}

/// Group-commit state, under its own mutex (never taken while holding it: the writer's).
struct SyncState {
    /// `Writer::written` covered by a finished fdatasync.
    synced: u64,
    /// A thread is syncing now.
    syncing: bool,
}

/// A segmented write-ahead log; see the module docs. Shared by reference across threads.
pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    writer: Mutex<Writer>,
    sync_state: Mutex<SyncState>,
    synced_cv: Condvar,
    failed: AtomicBool,
    fsyncs: AtomicU64,
}

/// Locks a mutex, going on after a panic elsewhere: the state it guards stays consistent
/// because nothing in this module panics while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens segment `n` for appending, creating it, and makes its directory entry durable.
fn create_segment(dir: &Path, n: u64) -> Result<File, WalError> {
    let path = segment_path(dir, n);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| WalError::io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

fn next_segment(dir: &Path, n: u64) -> Result<u64, WalError> {
    n.checked_add(1)
        .ok_or_else(|| WalError::io(dir, std::io::Error::other("segment numbers are exhausted")))
}

impl Wal {
    /// Opens the log in `dir` (creating it), replays every intact record in order through `f`,
    /// truncates a torn tail of the last segment, and starts a fresh segment for appends.
    ///
    /// Corruption in an earlier segment is logged, counted in [`ReplayStats::corrupt_segments`]
    /// and skipped; only I/O errors fail the open.
    pub fn open(
        dir: &Path,
        config: WalConfig,
        mut f: impl FnMut(Lsn, &[u8]),
    ) -> Result<(Wal, ReplayStats), WalError> {
        let existed = dir.is_dir();
        std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
        if !existed {
            let parent = match dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            sync_dir(parent)?;
        }
        let segments = list_segments(dir)?;
        let mut stats = ReplayStats::default();
        let mut sealed = BTreeMap::new();
        for (i, &n) in segments.iter().enumerate() {
            let path = segment_path(dir, n);
            let found = scan(&path, n, &mut f)?;
            stats.records += found.records;
            stats.segments += 1;
            let mut size = found.len;
            if let Some(damage) = found.damage {
                let bad = found.len - found.good;
                if i + 1 == segments.len() {
                    warn!(segment = %path.display(), at = found.good, cut = bad, reason = %damage,
                        "truncating a torn write-ahead log tail");
                    let io = |e| WalError::io(&path, e);
                    let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
                    file.set_len(found.good).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    stats.truncated_bytes += bad;
                    size = found.good;
                } else {
                    error!(segment = %path.display(), at = found.good, skipped = bad, reason = %damage,
                        "corrupt write-ahead log segment: the records after this offset are lost");
                    stats.corrupt_segments += 1;
                    stats.corrupt_bytes += bad;
                }
            }
            sealed.insert(n, size);
        }
        let active = match segments.last() {
            Some(&n) if sealed.get(&n) == Some(&0) => {
                sealed.remove(&n);
                n
            }
            Some(&n) => next_segment(dir, n)?,
            None => 1,
        };
        let file = create_segment(dir, active)?;
        let wal = Wal {
            dir: dir.to_path_buf(),
            config,
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                segment: active,
                offset: 0,
                written: 0,
                sealed,
                buf: Vec::new(),
            }),
            sync_state: Mutex::new(SyncState {
                synced: 0,
                syncing: false,
            }),
            synced_cv: Condvar::new(),
            failed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
        };
        Ok((wal, stats))
    }

    /// Appends one record and returns its position. When it returns `Ok` the record is durable
    /// (fdatasynced), unless [`WalConfig::sync`] is off. Concurrent appenders share fsyncs.
    pub fn append(&self, record: &[u8]) -> Result<Lsn, WalError> {
        let (lsn, end) = self.write_record(record)?;
        if self.config.sync {
            self.sync_upto(end)?;
        }
        Ok(lsn)
    }

    /// Appends one record without waiting for it to be durable: a later [`Wal::sync`] (or any
    /// synced append) covers it. For many small records of which only the last must wait.
    pub fn append_unsynced(&self, record: &[u8]) -> Result<Lsn, WalError> {
        self.write_record(record).map(|(lsn, _)| lsn)
    }

    /// Waits until everything appended so far is durable (unless [`WalConfig::sync`] is off).
    pub fn sync(&self) -> Result<(), WalError> {
        let end = lock(&self.writer).written;
        if self.config.sync {
            self.sync_upto(end)?;
        }
        Ok(())
    }

    /// Writes a record into the active segment: its position and the bytes written in all.
    fn write_record(&self, record: &[u8]) -> Result<(Lsn, u64), WalError> {
        if record.is_empty() {
            return Err(WalError::Empty);
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge { len: record.len() });
        }
        let (lsn, end) = {
            let mut guard = lock(&self.writer);
            let w = &mut *guard;
            self.check_failed()?;
            let size = (HEADER + record.len()) as u64;
            if w.offset > 0 && w.offset + size > self.config.segment_bytes {
                self.rotate(w)?;
            }
            w.buf.clear();
            encode(&mut w.buf, record);
            if let Err(e) = (&*w.file).write_all(&w.buf) {
                let path = segment_path(&self.dir, w.segment);
                // Cut a partial write off, or the next record would land behind garbage and
                // be lost with it at replay.
                if let Err(undo) = w.file.set_len(w.offset) {
                    self.failed.store(true, Ordering::SeqCst);
                    error!(segment = %path.display(), error = %undo,
                        "cannot cut a failed write-ahead log write; refusing further appends");
                }
                return Err(WalError::io(&path, e));
            }
            if w.buf.capacity() > KEEP_BUFFER_BYTES {
                w.buf = Vec::new();
            }
            let lsn = Lsn {
                segment: w.segment,
                offset: w.offset,
            };
            w.offset += size;
            w.written += size;
            (lsn, w.written)
        };
        Ok((lsn, end))
    }

    fn check_failed(&self) -> Result<(), WalError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(WalError::Failed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Seals the active segment (fdatasync) and starts the next one. Sealing first means every
    /// record in an older segment is durable, so group commit only ever syncs the active one.
    fn rotate(&self, w: &mut Writer) -> Result<(), WalError> {
        let result = w.file.sync_data();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.failed.store(true, Ordering::SeqCst);
            return Err(WalError::io(&segment_path(&self.dir, w.segment), e));
        }
        let next = next_segment(&self.dir, w.segment)?;
        let file = create_segment(&self.dir, next)?;
        w.sealed.insert(w.segment, w.offset);
        w.file = Arc::new(file);
        w.segment = next;
        w.offset = 0;
        Ok(())
    }

    /// Group commit: returns once an fdatasync has covered `end` bytes of appends. The first
    /// waiter to find no sync running syncs everything written so far, for everybody.
    fn sync_upto(&self, end: u64) -> Result<(), WalError> {
        let mut st = lock(&self.sync_state);
        loop {
            if st.synced >= end {
                return Ok(());
            }
            self.check_failed()?;
            if !st.syncing {
                break;
            }
            st = self.synced_cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.syncing = true;
        drop(st);
        // Everything written before this point is in the active segment or a sealed one.
        let (target, segment, file) = {
            let w = lock(&self.writer);
            (w.written, w.segment, Arc::clone(&w.file))
        };
        let result = file.sync_data();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        let mut st = lock(&self.sync_state);
        st.syncing = false;
        if result.is_ok() {
            st.synced = st.synced.max(target);
        }
        drop(st);
        self.synced_cv.notify_all();
        result.map_err(|e| WalError::io(&segment_path(&self.dir, segment), e))
    }

    /// Deletes the segments entirely before `lsn`, that is every segment numbered below
    /// `lsn.segment`, never the active one. Returns how many were removed.
    pub fn remove_before(&self, lsn: Lsn) -> Result<u64, WalError> {
        let doomed: Vec<u64> = {
            let mut w = lock(&self.writer);
            let bound = lsn.segment.min(w.segment);
            let keep = w.sealed.split_off(&bound);
            std::mem::replace(&mut w.sealed, keep).into_keys().collect()
        };
        let mut removed = 0;
        for (i, &n) in doomed.iter().enumerate() {
            let path = segment_path(&self.dir, n);
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Keep accounting for what is still on disk.
                    let mut w = lock(&self.writer);
                    for &n in &doomed[i..] {
                        let size =
                            std::fs::metadata(segment_path(&self.dir, n)).map_or(0, |m| m.len());
                        w.sealed.insert(n, size);
                    }
                    return Err(WalError::io(&path, e));
                }
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Reads records from `from` on, in append order, passing each to `f` until it returns
    /// false or the end of what has been written. Returns where the next read starts and
    /// whether `from` named a segment already removed (the reader then starts at the oldest
    /// segment left). A tailing reader: the active segment may grow between calls; a partial
    /// record at its end is read next time.
    pub fn read_from(
        &self,
        from: Lsn,
        mut f: impl FnMut(Lsn, &[u8]) -> bool,
    ) -> Result<(Lsn, bool), WalError> {
        let active = lock(&self.writer).segment;
        let segments: Vec<u64> = list_segments(&self.dir)?
            .into_iter()
            .filter(|&n| n >= from.segment && n <= active)
            .collect();
        let skipped = segments.first().is_some_and(|&n| n > from.segment);
        let mut next = from;
        let mut stopped = false;
        for n in segments {
            let start = if n == from.segment { from.offset } else { 0 };
            let found =
                segment::scan_from(&segment_path(&self.dir, n), n, start, &mut |lsn, bytes| {
                    let more = f(lsn, bytes);
                    stopped |= !more;
                    more
                })?;
            next = Lsn {
                segment: n,
                offset: found.good,
            };
            if stopped || n == active {
                break;
            }
            // a sealed segment read to its end (or to damage): go on with the next
            next = Lsn {
                segment: n + 1,
                offset: 0,
            };
        }
        Ok((next, skipped))
    }

    /// Seals the active segment when it holds anything and starts the next one, returning
    /// where that begins: everything before it can then be removed whole
    /// ([`Wal::remove_before`]). For a caller that keeps appends out meanwhile (the store's
    /// flush does), the returned position is exactly the end of what was written.
    pub fn cut(&self) -> Result<Lsn, WalError> {
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        self.check_failed()?;
        if w.offset > 0 {
            self.rotate(w)?;
        }
        Ok(Lsn {
            segment: w.segment,
            offset: w.offset,
        })
    }

    /// Where the next append goes: the end of the log.
    pub fn end(&self) -> Lsn {
        let w = lock(&self.writer);
        Lsn {
            segment: w.segment,
            offset: w.offset,
        }
    }

    /// Total bytes of the segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        let w = lock(&self.writer);
        w.sealed.values().sum::<u64>() + w.offset
    }

    /// Number of segment files on disk, the active one included.
    pub fn segments(&self) -> usize {
        lock(&self.writer).sealed.len() + 1
    }

    /// fdatasyncs issued on segments since open (not counting directory syncs). Compared with
    /// the number of appends it shows group commit at work.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

impl Drop for Wal {
    /// Without per-append sync, a clean shutdown still makes every appended record durable.
    fn drop(&mut self) {
        if self.config.sync || self.failed.load(Ordering::SeqCst) {
            return;
        }
        let w = self.writer.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = w.file.sync_data() {
            let path = segment_path(&self.dir, w.segment);
            warn!(segment = %path.display(), %error, "write-ahead log sync at close failed");
        }
    }
}
