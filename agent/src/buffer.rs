//! The agent's durable, bounded batch buffer on sled.
//!
//! Keys are sequence numbers (8 bytes big-endian, so iteration is in sequence order); values are
//! `[lane tag | 0x80][created_ms i64 BE][frame length u64 BE]`, and the frame itself is kept in
//! the `batch_chunks` tree in pieces of [`CHUNK_BYTES`] under `seq ++ index (u32 BE)`, written and
//! removed in the same transaction as its head. Small pieces keep every sled node under sled's
//! blob threshold (a quarter of its 512 KiB segment): a node holding 1 MiB frames went to a blob
//! file that sled 0.34 never deleted once the node was rewritten, and the log segments pointing at
//! them were never reclaimed, so disk use and the memory sled keeps per segment grew with every
//! batch ever shipped. Entries written by older versions (`[lane tag][created_ms][frame]`, the
//! frame inline) are still read and removed. Sequence numbers start at 1 and are never reused, also
//! across restarts and after the buffer emptied: the next one is stored in the same transaction
//! as the entry. A push returns once sled has flushed (fsync), so a batch "in the buffer"
//! survives `kill -9`. Bounds: bytes (oldest dropped first) and age; every drop is counted and
//! logged. sled stays behind this type so it can be measured and replaced in one place.
//!
//! Sources that read from a position (log files, the journal) keep it in a third tree,
//! `checkpoints`, written in the same transaction as the batch holding the records up to that
//! position ([`Buffer::push_with_checkpoints`]): after a crash the buffer holds either both the
//! records and the position past them, or neither.

use fleetwatch_common::model::Lane;
use fleetwatch_common::protocol::PendingBatches;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::warn;

const NEXT_SEQ_KEY: &[u8] = b"next_seq";
const VALUE_HEADER: usize = 9;
/// Head value length of a chunked entry: lane tag, created_ms, frame length.
const CHUNKED_HEADER: usize = 17;
/// Marks a head whose frame is in the chunk tree.
const CHUNKED_FLAG: u8 = 0x80;
/// Bytes of a frame per chunk: 17 of them (a full sled leaf) stay well below sled's blob
/// threshold of 128 KiB.
pub const CHUNK_BYTES: usize = 4096;

/// Bounds and cache.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// Most value bytes kept.
    pub max_bytes: u64,
    /// Oldest entry kept.
    pub max_age: Duration,
    /// sled page cache.
    pub cache_bytes: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            cache_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One buffered batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Sequence number.
    pub seq: u64,
    /// Lane.
    pub lane: Lane,
    /// When it was sealed.
    pub created_ms: i64,
    /// The encoded frame.
    pub frame: Vec<u8>,
}

/// What one call dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Batches.
    pub batches: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Totals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BufferStats {
    /// Batches held.
    pub batches: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Dropped for space since open.
    pub dropped_batches_total: u64,
    /// Bytes dropped for space since open.
    pub dropped_bytes_total: u64,
    /// Dropped for age since open.
    pub expired_batches_total: u64,
    /// Unreadable entries removed since open.
    pub corrupt_entries_total: u64,
}

/// A buffer failure.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// sled failed.
    #[error("buffer at {0}: {1}")]
    Sled(PathBuf, sled::Error),
    /// The frame could not be made.
    #[error("encoding batch {0}: {1}")]
    Encode(u64, String),
    /// A single batch larger than the whole buffer.
    #[error("batch of {0} bytes is larger than the buffer's limit of {1} bytes")]
    TooLarge(u64, u64),
}

/// The buffer.
pub struct Buffer {
    path: PathBuf,
    db: sled::Db,
    data: sled::Tree,
    meta: sled::Tree,
    checkpoints: sled::Tree,
    chunks: sled::Tree,
    config: BufferConfig,
    bytes: AtomicU64,
    count: AtomicU64,
    dropped_batches: AtomicU64,
    dropped_bytes: AtomicU64,
    expired: AtomicU64,
    corrupt: AtomicU64,
    push_lock: Mutex<()>,
    last_warn: Mutex<Option<Instant>>,
}

/// A decoded head value: where the frame is and how many bytes the entry counts for.
struct Head<'a> {
    lane: Lane,
    created_ms: i64,
    /// The frame, when stored inline (older versions).
    inline: Option<&'a [u8]>,
    /// The frame's length.
    frame_len: u64,
}

impl Head<'_> {
    /// Bytes counted against `max_bytes`: the same for both layouts.
    fn size(&self) -> u64 {
        VALUE_HEADER as u64 + self.frame_len
    }
}

fn parse_head(v: &[u8]) -> Option<Head<'_>> {
    if v.len() < VALUE_HEADER {
        return None;
    }
    let created_ms = i64::from_be_bytes(v[1..9].try_into().ok()?);
    if v[0] & CHUNKED_FLAG != 0 {
        if v.len() != CHUNKED_HEADER {
            return None;
        }
        return Some(Head {
            lane: Lane::from_tag(v[0] & !CHUNKED_FLAG)?,
            created_ms,
            inline: None,
            frame_len: u64::from_be_bytes(v[9..17].try_into().ok()?),
        });
    }
    Some(Head {
        lane: Lane::from_tag(v[0])?,
        created_ms,
        inline: Some(&v[VALUE_HEADER..]),
        frame_len: (v.len() - VALUE_HEADER) as u64,
    })
}

/// Writes checkpoint changes (a value, or `None` to remove the key) inside a transaction.
fn apply_checkpoints(
    cps: &TransactionalTree,
    checkpoints: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<(), ConflictableTransactionError<()>> {
    for (k, v) in checkpoints {
        match v {
            Some(v) => cps.insert(k.as_slice(), v.as_slice())?,
            None => cps.remove(k.as_slice())?,
        };
    }
    Ok(())
}

fn chunk_key(seq: u64, index: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&seq.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Opens sled, waiting briefly if a previous handle in this process is still releasing its file
/// lock (sled's flusher thread outlives the handle for a moment).
pub fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let result = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .open();
        match result {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn key_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

impl Buffer {
    /// Opens (or creates) the buffer at `path`.
    pub fn open(path: &Path, config: BufferConfig) -> Result<Buffer, BufferError> {
        let err = |e| BufferError::Sled(path.to_path_buf(), e);
        let db = open_sled(path, config.cache_bytes).map_err(err)?;
        let data = db.open_tree("batches").map_err(err)?;
        let meta = db.open_tree("meta").map_err(err)?;
        let checkpoints = db.open_tree("checkpoints").map_err(err)?;
        let chunks = db.open_tree("batch_chunks").map_err(err)?;
        let buffer = Buffer {
            path: path.to_path_buf(),
            db,
            data,
            meta,
            checkpoints,
            chunks,
            config,
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            dropped_batches: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            push_lock: Mutex::new(()),
            last_warn: Mutex::new(None),
        };
        let (mut bytes, mut count) = (0u64, 0u64);
        let mut bad = Vec::new();
        for item in buffer.data.iter() {
            let (k, v) = item.map_err(err)?;
            match key_seq(&k).zip(parse_head(&v)) {
                Some((_, head)) => {
                    bytes += head.size();
                    count += 1;
                }
                None => bad.push(k),
            }
        }
        for k in bad {
            buffer.data.remove(&k).map_err(err)?;
            if let Some(seq) = key_seq(&k) {
                buffer.remove_chunks(seq).map_err(err)?;
            }
            buffer.corrupt.fetch_add(1, Ordering::Relaxed);
            warn!(path = %path.display(), "removed an unreadable buffer entry");
        }
        buffer.bytes.store(bytes, Ordering::Relaxed);
        buffer.count.store(count, Ordering::Relaxed);
        Ok(buffer)
    }

    fn err(&self, e: sled::Error) -> BufferError {
        BufferError::Sled(self.path.clone(), e)
    }

    fn next_seq(&self) -> Result<u64, BufferError> {
        let stored = self.meta.get(NEXT_SEQ_KEY).map_err(|e| self.err(e))?;
        let from_meta = stored.and_then(|v| key_seq(&v)).unwrap_or(1);
        // Never below what the data holds (in case meta was lost).
        let from_data = self.newest_seq() + 1;
        Ok(from_meta.max(from_data).max(1))
    }

    /// Assigns the next sequence number, stores `encode(seq)` durably, then drops the oldest
    /// entries while over `max_bytes`.
    pub fn push<E: std::fmt::Display>(
        &self,
        lane: Lane,
        created_ms: i64,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, E>,
    ) -> Result<(u64, Dropped), BufferError> {
        self.push_with_checkpoints(lane, created_ms, &[], encode)
    }

    /// [`Buffer::push`], writing `checkpoints` (key, new value or `None` to remove) in the same
    /// transaction as the batch.
    pub fn push_with_checkpoints<E: std::fmt::Display>(
        &self,
        lane: Lane,
        created_ms: i64,
        checkpoints: &[(Vec<u8>, Option<Vec<u8>>)],
        encode: impl FnOnce(u64) -> Result<Vec<u8>, E>,
    ) -> Result<(u64, Dropped), BufferError> {
        let _guard = self.push_lock.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.next_seq()?;
        let frame = encode(seq).map_err(|e| BufferError::Encode(seq, e.to_string()))?;
        let mut head = Vec::with_capacity(CHUNKED_HEADER);
        head.push(lane.tag() | CHUNKED_FLAG);
        head.extend_from_slice(&created_ms.to_be_bytes());
        head.extend_from_slice(&(frame.len() as u64).to_be_bytes());
        let size = (VALUE_HEADER + frame.len()) as u64;
        if size > self.config.max_bytes {
            return Err(BufferError::TooLarge(size, self.config.max_bytes));
        }
        let key = seq.to_be_bytes();
        let next = (seq + 1).to_be_bytes();
        (&self.data, &self.meta, &self.checkpoints, &self.chunks)
            .transaction(|(data, meta, cps, chunks)| {
                data.insert(&key, head.as_slice())?;
                for (i, piece) in frame.chunks(CHUNK_BYTES).enumerate() {
                    chunks.insert(&chunk_key(seq, i as u32), piece)?;
                }
                meta.insert(NEXT_SEQ_KEY, &next)?;
                apply_checkpoints(cps, checkpoints)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_err(e))?;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut dropped = Dropped::default();
        while self.bytes.load(Ordering::Relaxed) > self.config.max_bytes {
            let Some((k, _)) = self.data.first().map_err(|e| self.err(e))? else {
                break;
            };
            let Some(oldest) = key_seq(&k).filter(|&s| s != seq) else {
                break;
            };
            if let Some(size) = self.remove_entry(oldest)? {
                dropped.batches += 1;
                dropped.bytes += size;
            }
        }
        self.db.flush().map_err(|e| self.err(e))?;
        if dropped.batches > 0 {
            self.dropped_batches
                .fetch_add(dropped.batches, Ordering::Relaxed);
            self.dropped_bytes
                .fetch_add(dropped.bytes, Ordering::Relaxed);
            self.warn_drop("full", dropped);
        }
        Ok((seq, dropped))
    }

    /// A failed sled transaction as a buffer error (our transactions never abort on purpose).
    fn tx_err(&self, e: TransactionError<()>) -> BufferError {
        match e {
            TransactionError::Storage(e) => self.err(e),
            TransactionError::Abort(()) => {
                self.err(sled::Error::Unsupported("transaction aborted".into()))
            }
        }
    }

    fn warn_drop(&self, reason: &str, d: Dropped) {
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(
                reason,
                batches = d.batches,
                bytes = d.bytes,
                dropped_batches_total = self.dropped_batches.load(Ordering::Relaxed) + self.expired.load(Ordering::Relaxed),
                "buffer dropped its oldest batches (counted in fleetwatch_agent_buffer_dropped_batches_total)"
            );
        }
    }

    /// Writes checkpoint changes without a batch (a position that moved past records that were
    /// dropped on purpose, or a new file's starting point), durably.
    pub fn save_checkpoints(
        &self,
        checkpoints: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<(), BufferError> {
        self.checkpoints
            .transaction(|cps| {
                apply_checkpoints(cps, checkpoints)?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_err(e))?;
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A saved checkpoint.
    pub fn checkpoint(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BufferError> {
        Ok(self
            .checkpoints
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// The number of saved checkpoints.
    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.len()
    }

    /// The entry `seq`, if still buffered.
    pub fn get(&self, seq: u64) -> Result<Option<Entry>, BufferError> {
        let Some(v) = self.data.get(seq.to_be_bytes()).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        match self.read_entry(seq, &v)? {
            Some(e) => Ok(Some(e)),
            None => {
                self.remove(seq)?;
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                warn!(seq, "removed an unreadable buffer entry");
                Ok(None)
            }
        }
    }

    /// Removes an acknowledged batch; false if it was not there.
    pub fn remove(&self, seq: u64) -> Result<bool, BufferError> {
        Ok(self.remove_entry(seq)?.is_some())
    }

    /// The frame of a head value: inline, or gathered from its chunks (`None` when they are
    /// missing or do not add up).
    fn read_entry(&self, seq: u64, v: &[u8]) -> Result<Option<Entry>, BufferError> {
        let Some(head) = parse_head(v) else {
            return Ok(None);
        };
        let frame = match head.inline {
            Some(frame) => frame.to_vec(),
            None => {
                let mut frame = Vec::with_capacity(head.frame_len as usize);
                for (i, item) in self.chunk_range(seq).enumerate() {
                    let (k, piece) = item.map_err(|e| self.err(e))?;
                    if k.as_ref() != chunk_key(seq, i as u32) {
                        return Ok(None);
                    }
                    frame.extend_from_slice(&piece);
                }
                if frame.len() as u64 != head.frame_len {
                    return Ok(None);
                }
                frame
            }
        };
        Ok(Some(Entry {
            seq,
            lane: head.lane,
            created_ms: head.created_ms,
            frame,
        }))
    }

    fn chunk_range(&self, seq: u64) -> sled::Iter {
        self.chunks
            .range(chunk_key(seq, 0)..=chunk_key(seq, u32::MAX))
    }

    /// Removes the chunks of `seq` (an entry whose head is already gone or unreadable).
    fn remove_chunks(&self, seq: u64) -> Result<(), sled::Error> {
        for item in self.chunk_range(seq) {
            let (k, _) = item?;
            self.chunks.remove(k)?;
        }
        Ok(())
    }

    /// Removes the entry `seq` with its chunks in one transaction and updates the totals;
    /// the bytes it counted for, `None` if it was not there.
    fn remove_entry(&self, seq: u64) -> Result<Option<u64>, BufferError> {
        let key = seq.to_be_bytes();
        let Some(v) = self.data.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let pieces = match parse_head(&v) {
            Some(Head {
                inline: None,
                frame_len,
                ..
            }) => frame_len.div_ceil(CHUNK_BYTES as u64),
            _ => 0,
        };
        let removed = (&self.data, &self.chunks)
            .transaction(|(data, chunks)| {
                let removed = data.remove(&key)?;
                if removed.is_some() {
                    for i in 0..pieces {
                        chunks.remove(&chunk_key(seq, i as u32))?;
                    }
                }
                Ok::<_, ConflictableTransactionError<()>>(removed)
            })
            .map_err(|e| self.tx_err(e))?;
        let Some(v) = removed else {
            return Ok(None);
        };
        let size = match parse_head(&v) {
            Some(head) => head.size(),
            None => {
                self.remove_chunks(seq).map_err(|e| self.err(e))?;
                v.len() as u64
            }
        };
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Ok(Some(size))
    }

    /// Drops entries created before `now_ms - max_age`.
    pub fn expire(&self, now_ms: i64) -> Result<Dropped, BufferError> {
        let cutoff = now_ms - self.config.max_age.as_millis() as i64;
        let mut dropped = Dropped::default();
        let mut old = Vec::new();
        for item in self.data.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match key_seq(&k).zip(parse_head(&v)) {
                Some((seq, head)) if head.created_ms < cutoff => old.push(seq),
                // Sequence order is creation order: stop at the first young entry.
                Some(_) => break,
                None => {}
            }
        }
        for seq in old {
            if let Some(size) = self.remove_entry(seq)? {
                dropped.batches += 1;
                dropped.bytes += size;
            }
        }
        if dropped.batches > 0 {
            self.expired.fetch_add(dropped.batches, Ordering::Relaxed);
            self.warn_drop("expired", dropped);
        }
        Ok(dropped)
    }

    /// Highest buffered sequence number, 0 when empty.
    pub fn newest_seq(&self) -> u64 {
        self.data
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| key_seq(&k))
            .unwrap_or(0)
    }

    /// Totals.
    pub fn stats(&self) -> BufferStats {
        BufferStats {
            batches: self.count.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped_batches_total: self.dropped_batches.load(Ordering::Relaxed),
            dropped_bytes_total: self.dropped_bytes.load(Ordering::Relaxed),
            expired_batches_total: self.expired.load(Ordering::Relaxed),
            corrupt_entries_total: self.corrupt.load(Ordering::Relaxed),
        }
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed) as usize
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flushes sled to disk.
    pub fn flush(&self) -> Result<(), BufferError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }
}

impl PendingBatches for Buffer {
    fn first_after(&self, seq: u64) -> Option<u64> {
        let start = seq.checked_add(1)?.to_be_bytes();
        self.data
            .range(start..)
            .next()
            .and_then(|r| r.ok())
            .and_then(|(k, _)| key_seq(&k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn cfg(max_bytes: u64) -> BufferConfig {
        BufferConfig {
            max_bytes,
            max_age: Duration::from_secs(3600),
            cache_bytes: 1 << 20,
        }
    }

    fn push(b: &Buffer, lane: Lane, bytes: &[u8]) -> (u64, Dropped) {
        b.push(lane, 0, |_| Ok::<_, String>(bytes.to_vec()))
            .unwrap()
    }

    #[test]
    fn sequence_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        {
            let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
            assert_eq!(push(&b, Lane::Metrics, b"a").0, 1);
            assert_eq!(push(&b, Lane::Logs, b"b").0, 2);
            assert!(b.remove(1).unwrap());
            assert!(b.remove(2).unwrap());
            assert!(b.is_empty());
        }
        let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
        assert_eq!(push(&b, Lane::Metrics, b"c").0, 3);
        let start = Instant::now();
        for _ in 0..20 {
            push(&b, Lane::Metrics, &[7u8; 4096]);
        }
        println!(
            "push of a 4 KiB batch: {:?} each (fsync included)",
            start.elapsed() / 20
        );
    }

    #[test]
    fn full_buffer_drops_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(&dir.path().join("b"), cfg(10 * (VALUE_HEADER as u64 + 100))).unwrap();
        for _ in 0..25 {
            push(&b, Lane::Metrics, &[1u8; 100]);
        }
        let s = b.stats();
        assert_eq!(s.batches, 10);
        assert_eq!(s.dropped_batches_total, 15);
        assert_eq!(b.first_after(0), Some(16));
        assert_eq!(b.newest_seq(), 25);
    }

    #[test]
    fn expiry_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(&dir.path().join("b"), cfg(1 << 20)).unwrap();
        b.push(Lane::Metrics, 1_000, |_| Ok::<_, String>(vec![1]))
            .unwrap();
        b.push(Lane::Metrics, 5_000_000, |_| Ok::<_, String>(vec![2]))
            .unwrap();
        let d = b.expire(1_000 + 3_600_000 + 1).unwrap();
        assert_eq!(d.batches, 1);
        assert_eq!(b.first_after(0), Some(2));
        assert_eq!(b.stats().expired_batches_total, 1);
    }

    #[test]
    fn a_corrupt_entry_is_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        {
            let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
            push(&b, Lane::Metrics, b"ok");
            b.data.insert(5u64.to_be_bytes(), &[99u8][..]).unwrap();
            b.flush().unwrap();
        }
        let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
        assert_eq!(b.stats().corrupt_entries_total, 1);
        assert_eq!(b.len(), 1);
        assert_eq!(b.get(1).unwrap().unwrap().frame, b"ok");
    }

    #[test]
    fn checkpoints_are_written_with_their_batch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        {
            let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
            let cps = vec![(b"f1".to_vec(), Some(b"100".to_vec()))];
            b.push_with_checkpoints(Lane::Logs, 0, &cps, |_| {
                Ok::<_, String>(b"records".to_vec())
            })
            .unwrap();
            // a failed encode writes neither the batch nor the checkpoint
            let moved = vec![(b"f1".to_vec(), Some(b"200".to_vec()))];
            assert!(b
                .push_with_checkpoints(Lane::Logs, 0, &moved, |_| Err::<Vec<u8>, _>("no"))
                .is_err());
            b.save_checkpoints(&[(b"f2".to_vec(), Some(b"7".to_vec()))])
                .unwrap();
        }
        let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
        assert_eq!(b.checkpoint(b"f1").unwrap().as_deref(), Some(&b"100"[..]));
        assert_eq!(b.checkpoint(b"f2").unwrap().as_deref(), Some(&b"7"[..]));
        assert_eq!(b.len(), 1);
        b.save_checkpoints(&[(b"f2".to_vec(), None)]).unwrap();
        assert_eq!(b.checkpoint(b"f2").unwrap(), None);
        assert_eq!(b.checkpoint_count(), 1);
    }

    fn dir_bytes(p: &Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            };
        }
        total
    }

    /// Large batches pushed and acknowledged one after the other leave no sled blob files and
    /// keep the files bounded (sled 0.34 never deleted the blob of a rewritten node, so 1 MiB
    /// batches stored inline grew the directory by about 2 MiB per batch, forever).
    #[test]
    fn acknowledged_large_batches_do_not_grow_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let b = Buffer::open(&p, cfg(64 << 20)).unwrap();
        let frame: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut after_warmup = 0;
        for i in 0..400u64 {
            let cps = vec![(b"f".to_vec(), Some(i.to_be_bytes().to_vec()))];
            let (seq, _) = b
                .push_with_checkpoints(Lane::Logs, 0, &cps, |_| Ok::<_, String>(frame.clone()))
                .unwrap();
            if seq > 4 {
                assert_eq!(b.get(seq - 4).unwrap().unwrap().frame, frame);
                assert!(b.remove(seq - 4).unwrap());
            }
            if i == 50 {
                after_warmup = dir_bytes(&p);
            }
        }
        let blobs = std::fs::read_dir(p.join("blobs")).map_or(0, |d| d.count());
        assert_eq!(blobs, 0, "sled blob files left behind");
        // 350 more batches of 300 KB went through: 100 MB if nothing were reclaimed.
        let end = dir_bytes(&p);
        assert!(
            end < after_warmup + (16 << 20),
            "buffer files grew from {after_warmup} to {end} bytes"
        );
        assert_eq!(b.len(), 4);
        assert_eq!(b.stats().bytes, 4 * (VALUE_HEADER + frame.len()) as u64);
    }

    /// An entry written by an older version (frame inline in the head value) is read, counted
    /// and removed like a chunked one.
    #[test]
    fn inline_entries_from_older_versions_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        {
            let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
            let mut v = vec![Lane::Logs.tag()];
            v.extend_from_slice(&7i64.to_be_bytes());
            v.extend_from_slice(b"old frame");
            b.data.insert(3u64.to_be_bytes(), v).unwrap();
            b.flush().unwrap();
        }
        let b = Buffer::open(&p, cfg(1 << 20)).unwrap();
        assert_eq!(b.stats().bytes, (VALUE_HEADER + 9) as u64);
        let e = b.get(3).unwrap().unwrap();
        assert_eq!(
            (e.lane, e.created_ms, &e.frame[..]),
            (Lane::Logs, 7, &b"old frame"[..])
        );
        assert_eq!(push(&b, Lane::Metrics, &[5u8; 10_000]).0, 4);
        assert_eq!(b.get(4).unwrap().unwrap().frame, vec![5u8; 10_000]);
        assert!(b.remove(3).unwrap());
        assert!(b.remove(4).unwrap());
        assert_eq!(b.stats().bytes, 0);
        assert_eq!(b.chunks.len(), 0);
    }

    /// A chunked entry missing a chunk is unreadable: removed and counted, not returned short.
    #[test]
    fn a_chunked_entry_missing_a_chunk_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let b = Buffer::open(&dir.path().join("b"), cfg(1 << 20)).unwrap();
        let seq = push(&b, Lane::Logs, &[1u8; 3 * CHUNK_BYTES]).0;
        b.chunks.remove(chunk_key(seq, 1)).unwrap();
        assert_eq!(b.get(seq).unwrap(), None);
        assert_eq!(b.stats().corrupt_entries_total, 1);
        assert!(b.is_empty());
        assert_eq!(b.chunks.len(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(bool, usize),
        Remove(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), 1usize..300).prop_map(|(l, n)| Op::Push(l, n)),
            2 => (0usize..50).prop_map(Op::Remove),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Nothing acknowledged to the buffer is lost (unless reported dropped, oldest first),
        /// across reopens; order per lane is kept.
        #[test]
        fn model(ops in prop::collection::vec(op(), 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("b");
            let max = 2_000u64;
            let mut b = Buffer::open(&p, cfg(max)).unwrap();
            let mut model: BTreeMap<u64, (Lane, Vec<u8>)> = BTreeMap::new();
            let mut counter = 0u8;
            for op in ops {
                match op {
                    Op::Push(logs, n) => {
                        counter = counter.wrapping_add(1);
                        let lane = if logs { Lane::Logs } else { Lane::Metrics };
                        let bytes = vec![counter; n];
                        let (seq, dropped) = push(&b, lane, &bytes);
                        prop_assert!(model.keys().all(|&k| k < seq));
                        model.insert(seq, (lane, bytes));
                        let mut expect = Dropped::default();
                        let mut total: u64 = model.values().map(|(_, v)| (v.len() + VALUE_HEADER) as u64).sum();
                        while total > max {
                            let (&k, (_, v)) = model.iter().next().unwrap();
                            total -= (v.len() + VALUE_HEADER) as u64;
                            expect.batches += 1;
                            expect.bytes += (v.len() + VALUE_HEADER) as u64;
                            model.remove(&k);
                        }
                        prop_assert_eq!(dropped, expect);
                        prop_assert!(b.stats().bytes <= max);
                    }
                    Op::Remove(i) => {
                        if let Some(&k) = model.keys().nth(i % model.len().max(1)) {
                            model.remove(&k);
                            prop_assert!(b.remove(k).unwrap());
                        }
                    }
                    Op::Reopen => {
                        drop(b);
                        b = Buffer::open(&p, cfg(max)).unwrap();
                    }
                }
                // everything in the model is there, in order, with its bytes
                let mut seq = 0;
                let mut seen = Vec::new();
                while let Some(next) = b.first_after(seq) {
                    seq = next;
                    let e = b.get(seq).unwrap().unwrap();
                    seen.push((e.seq, e.lane, e.frame));
                }
                let want: Vec<_> = model.iter().map(|(k, (l, v))| (*k, *l, v.clone())).collect();
                prop_assert_eq!(seen, want);
            }
        }
    }
}
