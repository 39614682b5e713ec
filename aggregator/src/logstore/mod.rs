//! The log store: agents' log records by stream (host, source, service, level), buffered in
//! memory, then sorted and compressed into segment files of per-stream chunks; an index from
//! labels and time to chunks; retention by time and size; searches, counts and a live tail.
//!
//! Durability: a batch's records are in the store's write-ahead log (fsync) before the batch
//! is acknowledged, and reach this store through [`crate::store::LogSink`] once they are. The
//! buffer is written to a segment (temporary file, fsync, rename) when it reaches
//! `buffer_bytes`, and always before the store removes log segments (a head flush). After a
//! crash the write-ahead log is replayed into the buffer, skipping the batches that segments
//! written since the last log cut already hold (each segment's footer lists its batches), so a
//! record is neither lost nor stored twice.

pub mod chunk;
pub mod config;
pub mod index;
pub mod query;
pub mod segment;

pub use config::LogStoreConfig;

use crate::metrics::Metrics;
use chunk::StoredRecord;
use fleetwatch_common::model::{
    Label, LogLevel, LogRecord, MetricKind, Sample, Series, SeriesSamples,
};
use index::{Pending, Segment, StreamKey, Streams};
use query::{Found, LogFilter, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::broadcast;
use tracing::{error, info, warn};

/// The log-derived counter every stored record increments.
pub const RECORDS_SERIES: &str = "fleetwatch_log_records_total";

/// How many batches of new records a live-tail client may fall behind.
pub const TAIL_CAPACITY: usize = 1024;

/// Records of one applied batch, for the live tail.
#[derive(Debug)]
pub struct TailBatch {
    /// The records with their labels.
    pub records: Vec<Found>,
}

/// A log store failure.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// A segment could not be written or read.
    #[error(transparent)]
    Segment(#[from] segment::SegmentError),
    /// The saved state could not be written or read.
    #[error("log store state {0}: {1}")]
    State(PathBuf, String),
}

/// What the log store keeps besides its segments (`state.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedState {
    /// Segments up to this number hold no batch the write-ahead log still has.
    wal_free_upto: u64,
    /// Highest segment number ever given.
    max_id: u64,
    /// Records of segments retention removed, by (host, source, level): the log-derived
    /// counter never goes down.
    retired: Vec<(String, String, LogLevel, u64)>,
    /// Segments being removed (their records are in `retired` already).
    removing: Vec<u64>,
}

type TotalKey = (String, String, LogLevel);

struct Inner {
    streams: Streams,
    pending: Pending,
    /// Full buffers waiting to be written to segments, oldest first (still read by queries).
    queue: Vec<Arc<Pending>>,
    /// The write-ahead log epoch appends belong to now (a log cut starts the next).
    epoch: u64,
    /// The epoch the last log cut started.
    cut_epoch: u64,
    segments: Vec<Arc<Segment>>,
    /// Records ever stored, by (host, source, level).
    totals: HashMap<TotalKey, u64>,
    retired: HashMap<TotalKey, u64>,
    /// Batches of segments the write-ahead log may still hold: skipped by the replay.
    replay_skip: HashSet<(String, u64)>,
    wal_free_upto: u64,
    /// The newest segment when the store last asked for everything to be persisted.
    cut_candidate: Option<u64>,
    /// Segments whose file could not be removed (retried, never counted again).
    removing: Vec<u64>,
}

/// Disk and buffer figures, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogStats {
    /// Segment files.
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Records buffered in memory.
    pub buffered_records: u64,
}

/// The log store.
pub struct LogStore {
    dir: PathBuf,
    config: LogStoreConfig,
    metrics: Metrics,
    inner: RwLock<Inner>,
    /// One segment write at a time.
    sealer: Mutex<()>,
    next_id: AtomicU64,
    tail: broadcast::Sender<Arc<TailBatch>>,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LogStoreError> {
    let err = |e: std::io::Error| LogStoreError::State(path.to_path_buf(), e.to_string());
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        segment::sync_dir(dir)?;
    }
    Ok(())
}

fn total_key(s: &StreamKey) -> TotalKey {
    (s.host.clone(), s.source.clone(), s.level)
}

impl LogStore {
    /// Opens the store in `dir` (created if missing): reads every segment's footer. Records the
    /// write-ahead log still holds come back through [`crate::store::LogSink::append`] when the
    /// store replays it.
    pub fn open(
        dir: &Path,
        config: LogStoreConfig,
        metrics: Metrics,
    ) -> Result<Self, LogStoreError> {
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir)
            .map_err(|e| LogStoreError::State(seg_dir.clone(), e.to_string()))?;
        let state_path = dir.join("state.json");
        let saved: SavedState = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| LogStoreError::State(state_path.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
            Err(e) => return Err(LogStoreError::State(state_path, e.to_string())),
        };
        for id in &saved.removing {
            let p = segment::path(&seg_dir, *id);
            if p.exists() {
                std::fs::remove_file(&p)
                    .map_err(|e| LogStoreError::State(p.clone(), e.to_string()))?;
            }
        }
        let mut streams = Streams::default();
        let mut segments = Vec::new();
        let mut replay_skip = HashSet::new();
        let mut totals: HashMap<TotalKey, u64> = HashMap::new();
        let retired: HashMap<TotalKey, u64> = saved
            .retired
            .into_iter()
            .map(|(h, s, l, n)| ((h, s, l), n))
            .collect();
        for (k, n) in &retired {
            *totals.entry(k.clone()).or_default() += n;
        }
        let ids = segment::list(&seg_dir)?;
        for &id in &ids {
            match segment::open(&seg_dir, id, &mut streams) {
                Ok(opened) => {
                    for c in &opened.segment.chunks {
                        *totals.entry(total_key(streams.key(c.stream))).or_default() +=
                            u64::from(c.count);
                    }
                    if id > saved.wal_free_upto {
                        replay_skip.extend(opened.batches);
                    }
                    segments.push(Arc::new(opened.segment));
                }
                Err(segment::SegmentError::Damaged { path, what }) => {
                    // its batches, if the log still has them, come back by replay
                    metrics.logstore_read_errors.inc();
                    error!(path = %path.display(), %what, "log segment damaged; set aside as .damaged");
                    let _ = std::fs::rename(&path, path.with_extension("damaged"));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let max_id = ids.last().copied().unwrap_or(0).max(saved.max_id);
        if !segments.is_empty() {
            info!(
                segments = segments.len(),
                streams = streams.all().len(),
                "log store opened"
            );
        }
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            metrics,
            inner: RwLock::new(Inner {
                streams,
                pending: Pending {
                    epoch: 1,
                    ..Pending::default()
                },
                queue: Vec::new(),
                epoch: 1,
                cut_epoch: 0,
                segments,
                totals,
                retired,
                replay_skip,
                wal_free_upto: saved.wal_free_upto,
                cut_candidate: None,
                removing: Vec::new(),
            }),
            sealer: Mutex::new(()),
            next_id: AtomicU64::new(max_id + 1),
            tail,
        })
    }

    fn segments_dir(&self) -> PathBuf {
        self.dir.join("segments")
    }

    /// Adds the records of an agent's batch (durable in the write-ahead log). `replayed`: read
    /// back from the log at start (skipped if a segment has them; not sent to the live tail).
    /// Writes a segment when the buffer is full. Blocking.
    pub fn append(&self, host: &str, seq: u64, logs: &[LogRecord], replayed: bool) {
        if logs.is_empty() {
            return;
        }
        let tail = !replayed && self.tail.receiver_count() > 0;
        let mut live = Vec::new();
        let full = {
            let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
            if replayed && inner.replay_skip.contains(&(host.to_string(), seq)) {
                return;
            }
            for (i, rec) in logs.iter().enumerate() {
                let mut fields = rec.fields.clone();
                let service = match fields.iter().position(|(k, _)| k == "service") {
                    Some(at) => fields.remove(at).1,
                    None => String::new(),
                };
                let key = StreamKey {
                    host: host.to_string(),
                    source: rec.source.clone(),
                    service,
                    level: rec.level,
                };
                *inner.totals.entry(total_key(&key)).or_default() += 1;
                let sid = inner.streams.intern(key);
                let stored = StoredRecord {
                    timestamp_ns: rec.timestamp_ns,
                    seq,
                    idx: i as u32,
                    message: rec.message.clone(),
                    fields,
                };
                if tail {
                    live.push(Found {
                        stream: inner.streams.key(sid).clone(),
                        record: stored.clone(),
                    });
                }
                inner.pending.raw_bytes += stored.raw_len() as u64;
                inner.pending.records += 1;
                inner.pending.streams.entry(sid).or_default().push(stored);
            }
            inner.pending.batches.push((host.to_string(), seq));
            inner.pending.raw_bytes >= self.config.buffer_bytes
        };
        if !replayed {
            self.metrics.logstore_records.inc_by(logs.len() as u64);
        }
        if tail {
            self.metrics
                .live_messages
                .with_label_values(&["logs"])
                .inc();
            let _ = self.tail.send(Arc::new(TailBatch { records: live }));
        }
        if full {
            // a failure leaves the records buffered (and in the write-ahead log): retried
            if let Err(error) = self.seal(false) {
                warn!(%error, "log segment not written; records stay buffered");
            }
        }
    }

    /// Writes the queued buffers and the current one to new segments, oldest first. With
    /// `wait`, waits for a write in progress; without, returns at once if one is in progress.
    fn seal(&self, wait: bool) -> Result<(), LogStoreError> {
        let _sealer = if wait {
            self.sealer.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.sealer.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            }
        };
        self.seal_locked()
    }

    /// [`Self::seal`] with the sealer held. Buffers are written in the order they were filled,
    /// so segment numbers follow write-ahead log epochs.
    fn seal_locked(&self) -> Result<(), LogStoreError> {
        loop {
            let (buffer, keys) = {
                let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
                if !inner.pending.is_empty() {
                    let epoch = inner.epoch;
                    let mut full = std::mem::take(&mut inner.pending);
                    full.epoch = epoch;
                    inner.pending.epoch = epoch;
                    inner.queue.push(Arc::new(full));
                }
                let Some(buffer) = inner.queue.first().cloned() else {
                    return Ok(());
                };
                let keys: HashMap<u32, Arc<StreamKey>> = buffer
                    .streams
                    .keys()
                    .map(|&sid| (sid, inner.streams.key(sid).clone()))
                    .collect();
                (buffer, keys)
            };
            let id = self.next_id.fetch_add(1, Ordering::SeqCst);
            match segment::write(&self.segments_dir(), id, &buffer, &keys) {
                Ok(seg) => {
                    let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
                    inner.queue.retain(|p| !Arc::ptr_eq(p, &buffer));
                    inner.segments.push(Arc::new(seg));
                }
                Err(e) => {
                    // the buffer stays first in the queue (and in the write-ahead log): retried
                    self.metrics.logstore_write_errors.inc();
                    return Err(e.into());
                }
            }
        }
    }

    /// The store cut its write-ahead log: records appended from now on are in the new part.
    /// Called under the store's write gate, so no append is in progress. Cheap.
    pub fn log_cut(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if !inner.pending.is_empty() {
            let full = std::mem::take(&mut inner.pending);
            inner.queue.push(Arc::new(full));
        }
        inner.epoch += 1;
        inner.pending.epoch = inner.epoch;
        inner.cut_epoch = inner.epoch;
    }

    /// Writes everything buffered to segments (the store calls it after [`Self::log_cut`],
    /// before it removes the log before the cut). Blocking.
    pub fn persist(&self) -> Result<(), LogStoreError> {
        let _sealer = self.sealer.lock().unwrap_or_else(|p| p.into_inner());
        self.seal_locked()?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let cut = inner.cut_epoch;
        // segments are numbered in epoch order: every one up to this holds only records from
        // before the cut
        let newest = inner
            .segments
            .iter()
            .filter(|s| s.epoch < cut)
            .map(|s| s.id)
            .max();
        inner.cut_candidate = newest;
        Ok(())
    }

    /// The write-ahead log before the last cut is gone: the segments holding only records from
    /// before it may be removed by retention, and the replay's skip list is no longer needed.
    pub fn log_removed(&self) -> Result<(), LogStoreError> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let Some(c) = inner.cut_candidate.take() else {
            return Ok(());
        };
        inner.wal_free_upto = inner.wal_free_upto.max(c);
        inner.replay_skip = HashSet::new();
        self.save(&inner)
    }

    fn save(&self, inner: &Inner) -> Result<(), LogStoreError> {
        let state = SavedState {
            wal_free_upto: inner.wal_free_upto,
            max_id: self.next_id.load(Ordering::SeqCst).saturating_sub(1),
            retired: inner
                .retired
                .iter()
                .map(|((h, s, l), n)| (h.clone(), s.clone(), *l, *n))
                .collect(),
            removing: inner.removing.clone(),
        };
        let bytes = serde_json::to_vec(&state)
            .map_err(|e| LogStoreError::State(self.dir.join("state.json"), e.to_string()))?;
        write_atomic(&self.dir.join("state.json"), &bytes)
    }

    /// Removes segments whose newest record is older than the retention, then the segments with
    /// the oldest records while over `max_bytes`. Only segments the write-ahead log no longer
    /// covers go (so that a replay can not bring their records back). Blocking.
    pub fn retention(&self, now_ns: i64) -> Result<usize, LogStoreError> {
        let cutoff = now_ns.saturating_sub(self.config.retention_ns());
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let free = inner.wal_free_upto;
        let mut doomed: Vec<(Arc<Segment>, &'static str)> = Vec::new();
        for s in &inner.segments {
            if s.id <= free && s.max_ts < cutoff {
                doomed.push((s.clone(), "time"));
            }
        }
        if self.config.max_bytes > 0 {
            let mut total: u64 = inner
                .segments
                .iter()
                .filter(|s| !doomed.iter().any(|(d, _)| d.id == s.id))
                .map(|s| s.bytes)
                .sum();
            let mut by_age: Vec<Arc<Segment>> = inner
                .segments
                .iter()
                .filter(|s| s.id <= free && !doomed.iter().any(|(d, _)| d.id == s.id))
                .cloned()
                .collect();
            by_age.sort_by_key(|s| (s.max_ts, s.id));
            for s in by_age {
                if total <= self.config.max_bytes {
                    break;
                }
                total -= s.bytes;
                doomed.push((s, "size"));
            }
        }
        if doomed.is_empty() && inner.removing.is_empty() {
            return Ok(0);
        }
        for (s, _) in &doomed {
            for c in &s.chunks {
                let k = total_key(inner.streams.key(c.stream));
                *inner.retired.entry(k).or_default() += u64::from(c.count);
            }
            inner.removing.push(s.id);
        }
        inner
            .segments
            .retain(|s| !doomed.iter().any(|(d, _)| d.id == s.id));
        // counted as retired before the files go: a crash in between removes them at open
        self.save(&inner)?;
        let dir = self.segments_dir();
        let removing = std::mem::take(&mut inner.removing);
        for id in removing {
            let p = segment::path(&dir, id);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(error = %e, path = %p.display(), "log segment not removed; retried later");
                    inner.removing.push(id);
                }
            }
        }
        drop(inner);
        segment::sync_dir(&dir)?;
        for (s, reason) in &doomed {
            self.metrics
                .logstore_removed_segments
                .with_label_values(&[reason])
                .inc();
            info!(
                segment = s.id,
                bytes = s.bytes,
                reason,
                "log segment removed by retention"
            );
        }
        Ok(doomed.len())
    }

    /// What a query reads, taken at one instant: buffered records of matching streams in
    /// `[start_ns, end_ns]` that pass `filter`, and the segments.
    pub fn snapshot(&self, filter: &LogFilter, start_ns: i64, end_ns: i64) -> Snapshot {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut buffered = Vec::new();
        for p in inner.queue.iter().map(|p| &**p).chain([&inner.pending]) {
            for (&sid, recs) in &p.streams {
                let key = inner.streams.key(sid);
                if !filter.stream_matches(key) {
                    continue;
                }
                for r in recs {
                    if r.timestamp_ns >= start_ns
                        && r.timestamp_ns <= end_ns
                        && filter.record_matches(r)
                    {
                        buffered.push(Found {
                            stream: key.clone(),
                            record: r.clone(),
                        });
                    }
                }
            }
        }
        Snapshot {
            streams: inner.streams.all().to_vec(),
            segments: inner.segments.clone(),
            buffered,
            metrics: self.metrics.clone(),
        }
    }

    /// Values of label `name` among streams with records in `[start_ns, end_ns]`, sorted.
    pub fn label_values(&self, name: &str, start_ns: i64, end_ns: i64) -> Vec<String> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut ids = BTreeSet::new();
        for s in &inner.segments {
            if s.max_ts < start_ns || s.min_ts > end_ns {
                continue;
            }
            for c in &s.chunks {
                if c.max_ts >= start_ns && c.min_ts <= end_ns {
                    ids.insert(c.stream);
                }
            }
        }
        for p in inner.queue.iter().map(|p| &**p).chain([&inner.pending]) {
            for (&sid, recs) in &p.streams {
                if recs
                    .iter()
                    .any(|r| r.timestamp_ns >= start_ns && r.timestamp_ns <= end_ns)
                {
                    ids.insert(sid);
                }
            }
        }
        let values: BTreeSet<String> = ids
            .into_iter()
            .filter_map(|id| inner.streams.key(id).label(name).map(str::to_string))
            .filter(|v| !v.is_empty())
            .collect();
        values.into_iter().collect()
    }

    /// `fleetwatch_log_records_total{host,source,level}` at `now_ms`: every record ever
    /// stored, retention notwithstanding, so the counter never goes down across restarts.
    pub fn records_series(&self, now_ms: i64) -> Vec<SeriesSamples> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<SeriesSamples> = inner
            .totals
            .iter()
            .map(|((host, source, level), n)| SeriesSamples {
                series: Series::new(
                    RECORDS_SERIES,
                    [
                        Label::new("host", host.clone()),
                        Label::new("level", index::level_name(*level)),
                        Label::new("source", source.clone()),
                    ],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: now_ms,
                    value: *n as f64,
                }],
            })
            .collect();
        out.sort_by(|a, b| a.series.cmp(&b.series));
        out
    }

    /// A live-tail receiver: the records of every batch applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TailBatch>> {
        self.tail.subscribe()
    }

    /// Disk and buffer figures.
    pub fn stats(&self) -> LogStats {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        LogStats {
            segments: inner.segments.len(),
            bytes: inner.segments.iter().map(|s| s.bytes).sum(),
            buffered_records: inner.pending.records
                + inner.queue.iter().map(|p| p.records).sum::<u64>(),
        }
    }
}

impl crate::store::LogSink for LogStore {
    fn append(&self, host: &str, seq: u64, logs: &[LogRecord], replayed: bool) {
        LogStore::append(self, host, seq, logs, replayed)
    }

    fn log_cut(&self) {
        LogStore::log_cut(self)
    }

    fn persist(&self) -> Result<(), String> {
        LogStore::persist(self).map_err(|e| e.to_string())
    }

    fn log_removed(&self) {
        if let Err(error) = LogStore::log_removed(self) {
            self.metrics.logstore_write_errors.inc();
            warn!(%error, "log store state not saved; retention waits for the next flush");
        }
    }
}

#[cfg(test)]
mod tests;
