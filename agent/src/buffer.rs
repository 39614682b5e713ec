//! The agent's durable, bounded batch buffer on sled.
//!
//! Keys are sequence numbers (8 bytes big-endian, so iteration is in sequence order); values are
//! `[lane tag][created_ms i64 BE][frame]`. Sequence numbers start at 1 and are never reused, also
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
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::warn;

const NEXT_SEQ_KEY: &[u8] = b"next_seq";
const VALUE_HEADER: usize = 9;

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

fn parse(seq: u64, v: &[u8]) -> Option<Entry> {
    if v.len() < VALUE_HEADER {
        return None;
    }
    let lane = Lane::from_tag(v[0])?;
    let created_ms = i64::from_be_bytes(v[1..9].try_into().ok()?);
    Some(Entry {
        seq,
        lane,
        created_ms,
        frame: v[VALUE_HEADER..].to_vec(),
    })
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
        let buffer = Buffer {
            path: path.to_path_buf(),
            db,
            data,
            meta,
            checkpoints,
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
            match key_seq(&k).and_then(|s| parse(s, &v)) {
                Some(_) => {
                    bytes += v.len() as u64;
                    count += 1;
                }
                None => bad.push(k),
            }
        }
        for k in bad {
            buffer.data.remove(k).map_err(err)?;
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
        let mut value = Vec::with_capacity(VALUE_HEADER + frame.len());
        value.push(lane.tag());
        value.extend_from_slice(&created_ms.to_be_bytes());
        value.extend_from_slice(&frame);
        let size = value.len() as u64;
        if size > self.config.max_bytes {
            return Err(BufferError::TooLarge(size, self.config.max_bytes));
        }
        let key = seq.to_be_bytes();
        let next = (seq + 1).to_be_bytes();
        (&self.data, &self.meta, &self.checkpoints)
            .transaction(|(data, meta, cps)| {
                data.insert(&key, value.as_slice())?;
                meta.insert(NEXT_SEQ_KEY, &next)?;
                for (k, v) in checkpoints {
                    match v {
                        Some(v) => cps.insert(k.as_slice(), v.as_slice())?,
                        None => cps.remove(k.as_slice())?,
                    };
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => self.err(e),
                TransactionError::Abort(()) => {
                    self.err(sled::Error::Unsupported("transaction aborted".into()))
                }
            })?;
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut dropped = Dropped::default();
        while self.bytes.load(Ordering::Relaxed) > self.config.max_bytes {
            let Some((k, v)) = self.data.first().map_err(|e| self.err(e))? else {
                break;
            };
            if key_seq(&k) == Some(seq) {
                break;
            }
            if self.data.remove(&k).map_err(|e| self.err(e))?.is_some() {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                dropped.batches += 1;
                dropped.bytes += v.len() as u64;
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
                for (k, v) in checkpoints {
                    match v {
                        Some(v) => cps.insert(k.as_slice(), v.as_slice())?,
                        None => cps.remove(k.as_slice())?,
                    };
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => self.err(e),
                TransactionError::Abort(()) => {
                    self.err(sled::Error::Unsupported("transaction aborted".into()))
                }
            })?;
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
        match parse(seq, &v) {
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
        match self
            .data
            .remove(seq.to_be_bytes())
            .map_err(|e| self.err(e))?
        {
            Some(v) => {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops entries created before `now_ms - max_age`.
    pub fn expire(&self, now_ms: i64) -> Result<Dropped, BufferError> {
        let cutoff = now_ms - self.config.max_age.as_millis() as i64;
        let mut dropped = Dropped::default();
        let mut old = Vec::new();
        for item in self.data.iter() {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match key_seq(&k).and_then(|s| parse(s, &v)) {
                Some(e) if e.created_ms < cutoff => old.push(e.seq),
                // Sequence order is creation order: stop at the first young entry.
                Some(_) => break,
                None => {}
            }
        }
        for seq in old {
            if let Some(v) = self
                .data
                .remove(seq.to_be_bytes())
                .map_err(|e| self.err(e))?
            {
                self.bytes.fetch_sub(v.len() as u64, Ordering::Relaxed);
                self.count.fetch_sub(1, Ordering::Relaxed);
                dropped.batches += 1;
                dropped.bytes += v.len() as u64;
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
