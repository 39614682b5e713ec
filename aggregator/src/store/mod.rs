//! The aggregator's time-series store. Every accepted batch goes to the write-ahead log (fsync
//! before the acknowledgement), then into the in-memory head (Gorilla chunks, inverted index).
//! Periodically the head is flushed into persisted blocks, one per time window, and the log
//! before the flush point is removed; on start, blocks are opened and the log after the flush
//! point is replayed into a new head, so nothing acknowledged is lost across a crash.
//! Deduplication by (agent, sequence number) is decided under the same per-agent lock as the
//! write, which makes storage exactly once.
//!
//! Blocks of the same window (a backlog flushed after live data) are merged by compaction;
//! complete windows get 5-minute and 1-hour rollups (see [`crate::tsdb::rollup`]), kept longer
//! than raw samples; retention removes whole blocks by age and, with a size limit, oldest first.

pub mod applied;

use crate::tsdb::block::{self, Block, BlockMeta};
use crate::tsdb::head::{self, Head};
use crate::tsdb::rollup;
pub use crate::wal::Lsn;
use crate::wal::{Wal, WalConfig};
use applied::{AppliedMap, AppliedSeqs};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{Batch, MetricKind, Sample, Series, SeriesSamples};
use promql_parser::label::Matcher;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tracing::{info, warn};

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long raw samples are kept, in milliseconds.
    pub retention_ms: i64,
    /// How long rollups (5-minute and 1-hour) are kept, in milliseconds.
    pub rollup_retention_ms: i64,
    /// Most bytes of blocks and log together; the oldest blocks go first beyond it. 0: no limit.
    pub max_bytes: u64,
    /// fsync before acknowledging (turn off only for benchmarks of the rest of the pipeline).
    pub sync: bool,
    /// Width of a block's time window, milliseconds.
    pub block_ms: i64,
    /// The head is flushed into blocks when its oldest record is this old (ms)...
    pub flush_after_ms: i64,
    /// ...or when it holds this many samples.
    pub flush_samples: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            retention_ms: 30 * 86_400_000,
            rollup_retention_ms: 365 * 86_400_000,
            max_bytes: 0,
            sync: true,
            block_ms: 2 * 3_600_000,
            flush_after_ms: 30 * 60_000,
            flush_samples: 4_000_000,
        }
    }
}

fn system_record(metrics: Vec<SeriesSamples>, now_ms: i64) -> WalRecord {
    let mut batch = Batch::new(fleetwatch_common::model::Lane::Metrics, now_ms);
    batch.metrics = metrics;
    WalRecord {
        host: String::new(),
        seq: 0,
        received_ms: now_ms,
        batch,
    }
}

/// Where the log records of stored batches go (the log store). The store hands them over once
/// they are durable in its log, hands them over again when it replays the log at start, and
/// lets the sink persist them before it removes log segments.
pub trait LogSink: Send + Sync {
    /// A batch's log records, durable in the log (`replayed`: read back at start).
    fn append(
        &self,
        host: &str,
        seq: u64,
        logs: &[fleetwatch_common::model::LogRecord],
        replayed: bool,
    );
    /// The log was cut (under the write gate): later records are in the new part.
    fn log_cut(&self);
    /// Make every record from before the cut durable on its own side.
    fn persist(&self) -> Result<(), String>;
    /// The log before the cut is removed.
    fn log_removed(&self);
}

/// What the store did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Written durably.
    Applied,
    /// Applied before; nothing written.
    Duplicate,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write-ahead log failed.
    #[error("write-ahead log: {0}")]
    Wal(#[from] crate::wal::WalError),
    /// A record could not be encoded.
    #[error("encoding a record: {0}")]
    Encode(#[from] codec::CodecError),
    /// The deduplication checkpoint could not be written or read.
    #[error("checkpoint {0}: {1}")]
    Checkpoint(PathBuf, String),
    /// A block could not be written, read or removed.
    #[error("block: {0}")]
    Block(String),
    /// The log store could not persist its records (the log is kept).
    #[error("log store: {0}")]
    Logs(String),
}

/// One log record: an applied batch from an agent, or series the aggregator made (`seq` 0).
#[derive(Debug, Serialize, Deserialize)]
struct WalRecord {
    host: String,
    seq: u64,
    received_ms: i64,
    batch: Batch,
}

/// Counts since start, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreStats {
    /// Series in the head (active series).
    pub series: usize,
    /// Samples held, head and blocks.
    pub samples: usize,
    /// Samples that arrived for a timestamp already held, counted over the whole log since the
    /// last start (0 with exactly-once delivery: a batch applied twice would show here).
    pub replaced_samples: u64,
    /// Bytes in the log.
    pub wal_bytes: u64,
    /// Persisted blocks.
    pub blocks: usize,
    /// Bytes of persisted blocks.
    pub block_bytes: u64,
    /// Blocks removed by the size limit since start.
    pub size_evictions: u64,
}

/// The store.
pub struct Storage {
    dir: PathBuf,
    wal: Wal,
    /// Writers hold it shared across log append and head insert; a flush takes it exclusively
    /// to cut the log and swap the head at one consistent point.
    gate: RwLock<()>,
    head: RwLock<Head>,
    /// Received time of the head's oldest record (i64::MAX when empty).
    head_since: AtomicI64,
    /// A head being written into blocks, still read by queries until its blocks exist.
    flushing: RwLock<Option<Arc<Head>>>,
    blocks: RwLock<Vec<Arc<Block>>>,
    next_seq: AtomicU64,
    /// One flush, compaction or retention pass at a time.
    maintenance: Mutex<()>,
    applied: Mutex<HashMap<String, Arc<Mutex<AppliedSeqs>>>>,
    replaced: AtomicU64,
    evictions: AtomicU64,
    checkpoint: PathBuf,
    config: StoreConfig,
    logs: Option<Arc<dyn LogSink>>,
}

const LIMITS: FrameLimits = FrameLimits {
    max_payload_bytes: u32::MAX,
    max_decoded_bytes: u32::MAX,
};

fn read_flushed(path: &Path) -> Option<Lsn> {
    let text = std::fs::read_to_string(path).ok()?;
    let (segment, offset) = text.trim().split_once(':')?;
    Some(Lsn {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Samples per series and `resolution_ms` bucket in a raw block.
fn raw_density(meta: &BlockMeta, resolution_ms: i64) -> f64 {
    let buckets = ((meta.maxt - meta.mint) / resolution_ms).max(1) as f64;
    meta.samples as f64 / (meta.series.max(1) as f64 * buckets)
}

/// Merges the same series from several sources, oldest source first: on equal timestamps the
/// newer source's sample wins.
fn merge_sources(
    sources: Vec<Vec<(Series, MetricKind, Vec<Sample>)>>,
) -> Vec<(Series, MetricKind, Vec<Sample>)> {
    if sources.len() == 1 {
        return sources.into_iter().next().unwrap_or_default();
    }
    // each series' pieces, in the sources' order (a later one wins on equal timestamps)
    let mut by_series: BTreeMap<Series, (MetricKind, Vec<Vec<Sample>>)> = BTreeMap::new();
    for source in sources {
        for (s, kind, samples) in source {
            if samples.is_empty() {
                continue;
            }
            match by_series.get_mut(&s) {
                Some(entry) => {
                    entry.0 = kind;
                    entry.1.push(samples);
                }
                None => {
                    by_series.insert(s, (kind, vec![samples]));
                }
            }
        }
    }
    by_series
        .into_iter()
        .map(|(s, (k, pieces))| (s, k, merge_pieces(pieces)))
        .collect()
}

/// One series' samples from its pieces (each sorted; a later piece wins on equal timestamps).
/// Pieces from blocks of different windows do not overlap: sorted by start time they are
/// concatenated once, whatever order the blocks were written in (history loaded after live
/// data has older windows in newer blocks). Overlapping pieces are merged in order.
fn merge_pieces(mut pieces: Vec<Vec<Sample>>) -> Vec<Sample> {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let start = |p: &Vec<Sample>| p.first().map_or(i64::MAX, |s| s.timestamp_ms);
    let end = |p: &Vec<Sample>| p.last().map_or(i64::MIN, |s| s.timestamp_ms);
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| start(&pieces[i]));
    let disjoint = order
        .windows(2)
        .all(|w| end(&pieces[w[0]]) < start(&pieces[w[1]]));
    if disjoint {
        let mut out = Vec::with_capacity(pieces.iter().map(Vec::len).sum());
        for i in order {
            out.append(&mut pieces[i]);
        }
        return out;
    }
    pieces
        .into_iter()
        .fold(Vec::new(), |acc, piece| head::merge(acc, &piece))
}

impl Storage {
    /// Opens the store in `dir`: its blocks, then the log after the last flush replayed into
    /// the head. Returns the store and the log records replayed into the head.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Self, u64), StoreError> {
        Self::open_with_logs(dir, config, None)
    }

    /// [`Self::open`], handing every batch's log records to `logs` (replayed ones too).
    pub fn open_with_logs(
        dir: &Path,
        config: StoreConfig,
        logs: Option<Arc<dyn LogSink>>,
    ) -> Result<(Self, u64), StoreError> {
        let checkpoint = dir.join("applied.json");
        let mut applied: AppliedMap = match std::fs::read(&checkpoint) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Checkpoint(checkpoint.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppliedMap::new(),
            Err(e) => return Err(StoreError::Checkpoint(checkpoint.clone(), e.to_string())),
        };
        let blocks = block::open_all(&dir.join("blocks")).map_err(StoreError::Block)?;
        let next_seq = blocks.last().map_or(1, |b| b.meta.seq + 1);
        let flushed = read_flushed(&dir.join("flushed")).unwrap_or(Lsn {
            segment: 0,
            offset: 0,
        });
        let mut head = Head::default();
        let mut head_since = i64::MAX;
        let mut bad = 0u64;
        let mut replaced = 0u64;
        let mut replayed = 0u64;
        let (wal, stats) = Wal::open(
            &dir.join("wal"),
            WalConfig {
                sync: config.sync,
                ..WalConfig::default()
            },
            |lsn, bytes| match codec::decode_value::<WalRecord>(bytes, &LIMITS) {
                Ok(rec) => {
                    if rec.seq != 0 {
                        applied.entry(rec.host.clone()).or_default().insert(rec.seq);
                    }
                    if let Some(sink) = &logs {
                        sink.append(&rec.host, rec.seq, &rec.batch.logs, true);
                    }
                    if lsn < flushed {
                        return; // already in blocks
                    }
                    head_since = head_since.min(rec.received_ms);
                    replayed += 1;
                    for ss in &rec.batch.metrics {
                        replaced += head.insert(ss).replaced;
                    }
                }
                Err(error) => {
                    bad += 1;
                    warn!(%error, ?lsn, "skipping an unreadable log record");
                }
            },
        )?;
        if stats.records > 0 || !blocks.is_empty() {
            info!(
                records = stats.records,
                replayed,
                unreadable = bad,
                head_series = head.series_count(),
                blocks = blocks.len(),
                "store opened"
            );
        }
        let store = Self {
            dir: dir.to_path_buf(),
            wal,
            gate: RwLock::new(()),
            head: RwLock::new(head),
            head_since: AtomicI64::new(head_since),
            flushing: RwLock::new(None),
            blocks: RwLock::new(blocks.into_iter().map(Arc::new).collect()),
            next_seq: AtomicU64::new(next_seq),
            maintenance: Mutex::new(()),
            applied: Mutex::new(
                applied
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
                    .collect(),
            ),
            replaced: replaced.into(),
            evictions: AtomicU64::new(0),
            checkpoint,
            config,
            logs,
        };
        Ok((store, replayed))
    }

    fn host_applied(&self, host: &str) -> Arc<Mutex<AppliedSeqs>> {
        let mut map = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(host.to_string()).or_default().clone()
    }

    /// Applies an agent's validated batch exactly once. Blocking (fsync): call from a blocking
    /// thread.
    pub fn apply(
        &self,
        host: &str,
        batch: Batch,
        received_ms: i64,
    ) -> Result<ApplyOutcome, StoreError> {
        let applied = self.host_applied(host);
        // Held across the write: a resend of the same batch waits here, then sees it applied.
        let mut applied = applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied.contains(batch.seq) {
            return Ok(ApplyOutcome::Duplicate);
        }
        let seq = batch.seq;
        self.write(
            WalRecord {
                host: host.to_string(),
                seq,
                received_ms,
                batch,
            },
            true,
        )?;
        applied.insert(seq);
        Ok(ApplyOutcome::Applied)
    }

    /// Stores series the aggregator made itself (such as `up`). Blocking.
    pub fn append_system(
        &self,
        metrics: Vec<SeriesSamples>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(system_record(metrics, now_ms), true)
    }

    /// Stores series the aggregator made itself at once (queryable when this returns) without
    /// waiting for the log's fsync: [`Storage::sync_log`] makes them durable. Rule evaluation
    /// uses it so that each rule's results are visible to the next rule of its group without
    /// an fsync per rule.
    pub fn append_system_unsynced(
        &self,
        metrics: Vec<SeriesSamples>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(system_record(metrics, now_ms), false)
    }

    /// Waits until everything stored so far is durable in the log.
    pub fn sync_log(&self) -> Result<(), StoreError> {
        Ok(self.wal.sync()?)
    }

    fn write(&self, record: WalRecord, sync: bool) -> Result<(), StoreError> {
        let bytes = codec::encode_value(&record)?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if sync {
            self.wal.append(&bytes)?;
        } else {
            self.wal.append_unsynced(&bytes)?;
        }
        if let Some(sink) = &self.logs {
            let r = &record;
            sink.append(&r.host, r.seq, &r.batch.logs, false);
        }
        self.head_since
            .fetch_min(record.received_ms, Ordering::Relaxed);
        let mut head = self.head.write().unwrap_or_else(|p| p.into_inner());
        for ss in &record.batch.metrics {
            let st = head.insert(ss);
            self.replaced.fetch_add(st.replaced, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Series matching `matchers` with their samples in `[start_ms, end_ms]`, merged over the
    /// blocks and the head, all raw.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Series, MetricKind, Vec<Sample>)> {
        self.select_hinted(
            matchers,
            start_ms,
            end_ms,
            &crate::promql::SelectHints::default(),
        )
    }

    /// Like [`Self::select`], reading rollups where `hints` allow it (see
    /// [`crate::tsdb::rollup::choose`]) and for windows whose raw samples are past retention.
    pub fn select_hinted(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        hints: &crate::promql::SelectHints,
    ) -> Vec<(Series, MetricKind, Vec<Sample>)> {
        let choice = rollup::choose(hints);
        let blocks: Vec<Arc<Block>> = self
            .blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|b| b.meta.maxt > start_ms && b.meta.mint <= end_ms)
            .cloned()
            .collect();
        // per window: the wanted rollup if there is one, else raw, else the finest rollup
        let mut windows: BTreeMap<(i64, i64), Vec<Arc<Block>>> = BTreeMap::new();
        for b in blocks {
            windows
                .entry((b.meta.mint, b.meta.maxt))
                .or_default()
                .push(b);
        }
        let mut chosen: Vec<(Arc<Block>, Option<&'static str>)> = Vec::new();
        for (_, group) in windows {
            // empty rollup blocks (written by earlier versions) only marked sparse windows
            let at = |res: i64| {
                group
                    .iter()
                    .filter(move |b| b.meta.resolution_ms == res && (res == 0 || b.meta.series > 0))
            };
            let wanted = (choice.resolution_ms > 0)
                .then(|| at(choice.resolution_ms).max_by_key(|b| b.meta.seq))
                .flatten();
            if let (Some(b), Some(agg)) = (wanted, choice.aggregate) {
                chosen.push((b.clone(), Some(agg)));
            } else if at(0).next().is_some() {
                chosen.extend(at(0).map(|b| (b.clone(), None)));
            } else if let Some(agg) = choice.aggregate {
                if let Some(b) = rollup::RESOLUTIONS
                    .iter()
                    .find_map(|&r| at(r).max_by_key(|b| b.meta.seq))
                {
                    chosen.push((b.clone(), Some(agg)));
                }
            }
        }
        chosen.sort_by_key(|(b, _)| b.meta.seq);
        let mut sources = Vec::with_capacity(chosen.len() + 2);
        for (b, agg) in chosen {
            let found = match agg {
                None => b.select(matchers, start_ms, end_ms),
                Some(agg) => {
                    let mut m = matchers.to_vec();
                    m.push(Matcher::new(
                        promql_parser::label::MatchOp::Equal,
                        rollup::LABEL,
                        agg,
                    ));
                    b.select(&m, start_ms, end_ms).map(|v| {
                        v.into_iter()
                            .map(|(s, k, x)| (rollup::strip(s), k, x))
                            .collect()
                    })
                }
            };
            match found {
                Ok(found) => sources.push(found),
                Err(error) => {
                    warn!(%error, "block unreadable; its samples are left out of this query")
                }
            }
        }
        let flushing = self
            .flushing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(f) = flushing {
            sources.push(f.select(matchers, start_ms, end_ms));
        }
        sources.push(
            self.head
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .select(matchers, start_ms, end_ms),
        );
        sources.retain(|s| !s.is_empty());
        merge_sources(sources)
    }

    /// Drops the series of `batch` that are new while `host` holds `per_host` active series
    /// (series in the head) or the store holds `total`; returns the samples dropped for each
    /// limit.
    pub fn drop_new_series_over(
        &self,
        host: &str,
        batch: &mut Batch,
        per_host: usize,
        total: usize,
    ) -> (u64, u64) {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        let mut host_room = per_host.saturating_sub(head.series_for_host(host));
        let mut total_room = total.saturating_sub(head.series_count());
        let (mut over_host, mut over_total) = (0u64, 0u64);
        batch.metrics.retain(|ss| {
            if head.contains(&ss.series) {
                return true;
            }
            if host_room == 0 {
                over_host += ss.samples.len() as u64;
                return false;
            }
            if total_room == 0 {
                over_total += ss.samples.len() as u64;
                return false;
            }
            host_room -= 1;
            total_room -= 1;
            true
        });
        (over_host, over_total)
    }

    /// Active series (in the head) of `host`.
    pub fn series_for_host(&self, host: &str) -> usize {
        self.head
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .series_for_host(host)
    }

    /// Periodic work: flushes the head into blocks when it is old or large enough, merges
    /// blocks of the same window, and applies retention by time and size. Blocking.
    pub fn maintain(&self, now_ms: i64) -> Result<(), StoreError> {
        let since = self.head_since.load(Ordering::Relaxed);
        let samples = self
            .head
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .sample_count();
        if samples > 0
            && (samples >= self.config.flush_samples
                || now_ms.saturating_sub(since) >= self.config.flush_after_ms)
        {
            self.flush()?;
        }
        self.compact(now_ms)?;
        self.downsample(now_ms)?;
        self.retention(now_ms)
    }

    /// Computes the rollups of every complete window whose raw block has none yet (or changed
    /// since, after a backlog was compacted in).
    fn downsample(&self, now_ms: i64) -> Result<(), StoreError> {
        let _m = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let blocks: Vec<Arc<Block>> = self
            .blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for raw in blocks
            .iter()
            .filter(|b| b.meta.resolution_ms == 0 && b.meta.maxt <= now_ms - self.config.block_ms)
        {
            let same_window =
                |b: &&Arc<Block>| b.meta.mint == raw.meta.mint && b.meta.maxt == raw.meta.maxt;
            if blocks
                .iter()
                .filter(same_window)
                .filter(|b| b.meta.resolution_ms == 0)
                .count()
                > 1
            {
                continue; // compaction first
            }
            for res in rollup::RESOLUTIONS {
                let existing: Vec<&Arc<Block>> = blocks
                    .iter()
                    .filter(same_window)
                    .filter(|b| b.meta.resolution_ms == res)
                    .collect();
                // a rollup pays only where it summarises several samples per bucket; sparser
                // data is read (and kept) raw, decided from the raw block's counts each pass.
                // (Earlier versions wrote an empty marker block for such windows: removed.)
                if raw_density(&raw.meta, res) < rollup::MIN_DENSITY {
                    let markers: Vec<Arc<Block>> = existing
                        .iter()
                        .filter(|b| b.meta.series == 0)
                        .map(|b| Arc::clone(b))
                        .collect();
                    if !markers.is_empty() {
                        self.replace_blocks(&markers, None)?;
                    }
                    continue;
                }
                if existing.iter().any(|b| b.meta.source_seq == raw.meta.seq) {
                    continue;
                }
                let series = rollup::rollup(raw.all().map_err(StoreError::Block)?, res);
                let meta = BlockMeta {
                    seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
                    mint: raw.meta.mint,
                    maxt: raw.meta.maxt,
                    resolution_ms: res,
                    series: 0,
                    samples: 0,
                    bytes: 0,
                    source_seq: raw.meta.seq,
                    format: block::FORMAT,
                };
                let b = block::write(&self.dir.join("blocks"), meta, series)
                    .map_err(StoreError::Block)?;
                let existing: Vec<Arc<Block>> = existing.into_iter().cloned().collect();
                self.replace_blocks(&existing, Some(b))?;
            }
        }
        Ok(())
    }

    /// Waits until a flush, compaction or retention pass in progress has finished. Blocking.
    pub fn wait_for_maintenance(&self) {
        drop(self.maintenance.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Writes the whole head into blocks and removes the log before that point. Blocking.
    pub fn flush(&self) -> Result<(), StoreError> {
        let _m = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let (old, cut) = {
            let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
            // a new segment from here, so that the whole log before it goes once flushed
            let cut = self.wal.cut()?;
            if let Some(sink) = &self.logs {
                sink.log_cut();
            }
            let old = std::mem::take(&mut *self.head.write().unwrap_or_else(|p| p.into_inner()));
            self.head_since.store(i64::MAX, Ordering::Relaxed);
            let old = Arc::new(old);
            *self.flushing.write().unwrap_or_else(|p| p.into_inner()) = Some(old.clone());
            (old, cut)
        };
        let w = self.config.block_ms;
        let mut windows: BTreeMap<i64, Vec<(Series, MetricKind, Vec<Sample>)>> = BTreeMap::new();
        for (series, kind, samples) in old.all_series() {
            let mut start = 0;
            while start < samples.len() {
                let window = samples[start].timestamp_ms.div_euclid(w) * w;
                let end = start + samples[start..].partition_point(|s| s.timestamp_ms < window + w);
                windows.entry(window).or_default().push((
                    series.clone(),
                    kind,
                    samples[start..end].to_vec(),
                ));
                start = end;
            }
        }
        let written = windows.len();
        for (window, series) in windows {
            let b = self.write_block(window, window + w, 0, series)?;
            self.blocks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(b));
        }
        *self.flushing.write().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(sink) = &self.logs {
            sink.persist().map_err(StoreError::Logs)?;
        }
        // the deduplication state of the records about to go, then the flush point, then them
        self.write_checkpoint()?;
        write_atomic(
            &self.dir.join("flushed"),
            format!("{}:{}\n", cut.segment, cut.offset).as_bytes(),
        )
        .map_err(|e| StoreError::Checkpoint(self.dir.join("flushed"), e))?;
        let removed = self.wal.remove_before(cut)?;
        if let Some(sink) = &self.logs {
            sink.log_removed();
        }
        info!(
            blocks = written,
            samples = old.sample_count(),
            log_segments_removed = removed,
            "head flushed"
        );
        Ok(())
    }

    fn write_block(
        &self,
        mint: i64,
        maxt: i64,
        resolution_ms: i64,
        series: Vec<(Series, MetricKind, Vec<Sample>)>,
    ) -> Result<Block, StoreError> {
        let meta = BlockMeta {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            mint,
            maxt,
            resolution_ms,
            series: 0,
            samples: 0,
            bytes: 0,
            source_seq: 0,
            format: block::FORMAT,
        };
        block::write(&self.dir.join("blocks"), meta, series).map_err(StoreError::Block)
    }

    /// Merges blocks that share a window into one, and raw blocks of a day that ended at least a
    /// block width ago into one day block (fewer, larger blocks: one index per day instead of
    /// twelve, and chunks long enough that their first sample's cost is spread); a backlog of
    /// that day arriving later is merged in the same way. Rollups of windows a day block
    /// replaced are removed and computed again for the day.
    fn compact(&self, now_ms: i64) -> Result<(), StoreError> {
        let _m = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let day = 86_400_000;
        let snapshot: Vec<Arc<Block>> = self
            .blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut groups: BTreeMap<(i64, i64, i64), Vec<Arc<Block>>> = BTreeMap::new();
        for b in &snapshot {
            let m = &b.meta;
            let day_start = m.mint.div_euclid(day) * day;
            let target = if m.resolution_ms == 0
                && self.config.block_ms < day
                && m.maxt <= day_start + day
                && day_start + day <= now_ms - self.config.block_ms
            {
                (day_start, day_start + day, 0)
            } else {
                (m.mint, m.maxt, m.resolution_ms)
            };
            groups.entry(target).or_default().push(b.clone());
        }
        for ((mint, maxt, res), group) in groups {
            if group.len() == 1 && (group[0].meta.mint, group[0].meta.maxt) == (mint, maxt) {
                continue;
            }
            let mut sources = Vec::new();
            for b in &group {
                sources.push(b.all().map_err(StoreError::Block)?);
            }
            let merged = self.write_block(mint, maxt, res, merge_sources(sources))?;
            self.replace_blocks(&group, Some(merged))?;
            info!(
                window_start = mint,
                window_end = maxt,
                merged = group.len(),
                "blocks compacted"
            );
        }
        // rollups of windows now inside a larger raw block are stale
        let blocks: Vec<Arc<Block>> = self
            .blocks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stale: Vec<Arc<Block>> = blocks
            .iter()
            .filter(|r| {
                r.meta.resolution_ms > 0
                    && blocks.iter().any(|raw| {
                        raw.meta.resolution_ms == 0
                            && raw.meta.mint <= r.meta.mint
                            && r.meta.maxt <= raw.meta.maxt
                            && (raw.meta.mint, raw.meta.maxt) != (r.meta.mint, r.meta.maxt)
                    })
            })
            .cloned()
            .collect();
        if !stale.is_empty() {
            self.replace_blocks(&stale, None)?;
        }
        Ok(())
    }

    /// Swaps `old` blocks for `new` (if any) and removes the old directories.
    fn replace_blocks(&self, old: &[Arc<Block>], new: Option<Block>) -> Result<(), StoreError> {
        let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
        blocks.retain(|b| !old.iter().any(|g| Arc::ptr_eq(b, g)));
        if let Some(b) = new {
            blocks.push(Arc::new(b));
        }
        blocks.sort_by_key(|b| b.meta.seq);
        drop(blocks);
        for b in old {
            std::fs::remove_dir_all(&b.dir)
                .map_err(|e| StoreError::Block(format!("{}: {e}", b.dir.display())))?;
        }
        Ok(())
    }

    /// Removes blocks past the retention time, then the oldest blocks while over the size
    /// limit, and trims the head.
    fn retention(&self, now_ms: i64) -> Result<(), StoreError> {
        let _m = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        let cutoff = now_ms - self.config.retention_ms;
        self.head
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .trim_before(cutoff);
        let mut doomed = Vec::new();
        {
            let mut blocks = self.blocks.write().unwrap_or_else(|p| p.into_inner());
            let rollup_cutoff = now_ms - self.config.rollup_retention_ms;
            blocks.retain(|b| {
                let keep = if b.meta.resolution_ms == 0 {
                    // raw data too sparse for 5-minute rollups stands in for them
                    let sparse = raw_density(&b.meta, rollup::RESOLUTIONS[0]) < rollup::MIN_DENSITY;
                    b.meta.maxt > if sparse { rollup_cutoff } else { cutoff }
                } else {
                    b.meta.maxt > rollup_cutoff
                };
                if !keep {
                    doomed.push(b.clone());
                }
                keep
            });
            if self.config.max_bytes > 0 {
                let mut total: u64 =
                    blocks.iter().map(|b| b.meta.bytes).sum::<u64>() + self.wal.disk_bytes();
                let mut by_age: Vec<Arc<Block>> = blocks.clone();
                by_age.sort_by_key(|b| (b.meta.mint, b.meta.seq));
                for b in by_age {
                    if total <= self.config.max_bytes {
                        break;
                    }
                    total = total.saturating_sub(b.meta.bytes);
                    blocks.retain(|x| !Arc::ptr_eq(x, &b));
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        window_start = b.meta.mint,
                        bytes = b.meta.bytes,
                        "store over its size limit: oldest block removed"
                    );
                    doomed.push(b);
                }
            }
        }
        for b in doomed {
            std::fs::remove_dir_all(&b.dir)
                .map_err(|e| StoreError::Block(format!("{}: {e}", b.dir.display())))?;
        }
        Ok(())
    }

    fn write_checkpoint(&self) -> Result<(), StoreError> {
        let snapshot: AppliedMap = self
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                )
            })
            .collect();
        let bytes = serde_json::to_vec(&snapshot)
            .map_err(|e| StoreError::Checkpoint(self.checkpoint.clone(), e.to_string()))?;
        write_atomic(&self.checkpoint, &bytes)
            .map_err(|e| StoreError::Checkpoint(self.checkpoint.clone(), e))
    }

    /// The end of the log: where the next batch will be written.
    pub fn log_end(&self) -> Lsn {
        self.wal.end()
    }

    /// The metric samples logged from `from` on, in the order they were made durable, whole
    /// records until about `max_samples`. Returns them, where the next read starts, and whether
    /// part of the log had already been removed. Blocking.
    pub fn read_log(
        &self,
        from: Lsn,
        max_samples: usize,
    ) -> Result<(Vec<SeriesSamples>, Lsn, bool), StoreError> {
        let mut out = Vec::new();
        let mut samples = 0usize;
        let mut resume = None;
        let (end, skipped) = self.wal.read_from(from, |lsn, bytes| {
            if samples >= max_samples {
                resume = Some(lsn);
                return false;
            }
            match codec::decode_value::<WalRecord>(bytes, &LIMITS) {
                Ok(rec) => {
                    samples += rec
                        .batch
                        .metrics
                        .iter()
                        .map(|s| s.samples.len())
                        .sum::<usize>();
                    out.extend(rec.batch.metrics);
                }
                Err(error) => warn!(%error, ?lsn, "skipping an unreadable log record"),
            }
            true
        })?;
        Ok((out, resume.unwrap_or(end), skipped))
    }

    /// Counts for the metrics.
    pub fn stats(&self) -> StoreStats {
        let head = self.head.read().unwrap_or_else(|p| p.into_inner());
        let blocks = self.blocks.read().unwrap_or_else(|p| p.into_inner());
        StoreStats {
            series: head.series_count(),
            samples: head.sample_count()
                + blocks
                    .iter()
                    .map(|b| b.meta.samples as usize)
                    .sum::<usize>(),
            replaced_samples: self.replaced.load(Ordering::Relaxed),
            wal_bytes: self.wal.disk_bytes(),
            blocks: blocks.len(),
            block_bytes: blocks.iter().map(|b| b.meta.bytes).sum(),
            size_evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// The agent batches in a store's log in the order they were made durable: (host, seq,
/// oldest sample ms, newest sample ms). For tests and diagnostics; run it on a stopped store.
pub fn arrival_order(dir: &Path) -> Result<Vec<(String, u64, i64, i64)>, StoreError> {
    let mut out = Vec::new();
    Wal::open(&dir.join("wal"), WalConfig::default(), |_, bytes| {
        if let Ok(rec) = codec::decode_value::<WalRecord>(bytes, &LIMITS) {
            if rec.seq == 0 {
                return;
            }
            let times = rec
                .batch
                .metrics
                .iter()
                .flat_map(|s| s.samples.iter().map(|x| x.timestamp_ms));
            let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
            out.push((rec.host, rec.seq, lo, hi));
        }
    })?;
    Ok(out)
}

impl crate::promql::SeriesSource for Storage {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        hints: &crate::promql::SelectHints,
    ) -> Vec<crate::promql::RangeSeries> {
        self.select_hinted(matchers, start_ms, end_ms, hints)
            .into_iter()
            .map(|(series, _, samples)| crate::promql::RangeSeries {
                labels: crate::promql::labels_of(&series),
                samples,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {

    fn pts(ts: &[(i64, f64)]) -> Vec<Sample> {
        ts.iter()
            .map(|&(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            })
            .collect()
    }

    #[test]
    fn pieces_of_windows_written_out_of_time_order_come_back_in_order() {
        // the live window's block first, then older days loaded later
        let got = merge_pieces(vec![
            pts(&[(500, 5.0), (600, 6.0)]),
            pts(&[(100, 1.0), (200, 2.0)]),
            pts(&[(300, 3.0)]),
        ]);
        assert_eq!(
            got,
            pts(&[(100, 1.0), (200, 2.0), (300, 3.0), (500, 5.0), (600, 6.0)])
        );
        // overlapping pieces: merged, the later piece winning on equal timestamps
        let got = merge_pieces(vec![
            pts(&[(100, 1.0), (200, 2.0)]),
            pts(&[(200, 20.0), (300, 30.0)]),
        ]);
        assert_eq!(got, pts(&[(100, 1.0), (200, 20.0), (300, 30.0)]));
    }
    use super::*;
    use fleetwatch_common::model::{Label, Lane};
    use promql_parser::label::MatchOp;

    fn batch(seq: u64, t: i64) -> Batch {
        let mut b = Batch::new(Lane::Metrics, t);
        b.seq = seq;
        b.metrics.push(SeriesSamples {
            series: Series::new("m", [Label::new("host", "a")]),
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: t,
                value: seq as f64,
            }],
        });
        b
    }

    fn all(store: &Storage) -> Vec<Sample> {
        store
            .select(
                &[Matcher::new(MatchOp::Equal, "__name__", "m")],
                0,
                i64::MAX,
            )
            .into_iter()
            .flat_map(|(_, _, s)| s)
            .collect()
    }

    #[test]
    fn duplicates_are_dropped_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention_ms: i64::MAX / 4,
            ..Default::default()
        };
        {
            let (s, _) = Storage::open(dir.path(), cfg.clone()).unwrap();
            assert_eq!(
                s.apply("a", batch(2, 2000), 1).unwrap(),
                ApplyOutcome::Applied
            );
            assert_eq!(
                s.apply("a", batch(1, 1000), 1).unwrap(),
                ApplyOutcome::Applied
            );
            assert_eq!(
                s.apply("a", batch(2, 2000), 1).unwrap(),
                ApplyOutcome::Duplicate
            );
            // the same sequence number from another agent is another batch
            assert_eq!(
                s.apply("b", batch(2, 2500), 1).unwrap(),
                ApplyOutcome::Applied
            );
        }
        let (s, replayed) = Storage::open(dir.path(), cfg).unwrap();
        assert_eq!(replayed, 3);
        assert_eq!(
            s.apply("a", batch(1, 1000), 1).unwrap(),
            ApplyOutcome::Duplicate
        );
        assert_eq!(all(&s).len(), 3);
        assert_eq!(s.stats().replaced_samples, 0);
    }

    #[test]
    fn retention_removes_old_samples_and_keeps_dedup_state() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            retention_ms: 3_600_000,
            rollup_retention_ms: 3_600_000,
            sync: false,
            block_ms: 60_000,
            ..Default::default()
        };
        let (s, _) = Storage::open(dir.path(), cfg.clone()).unwrap();
        s.apply("a", batch(1, 0), 0).unwrap();
        s.apply("a", batch(2, 7_200_000), 7_200_000).unwrap();
        s.maintain(7_200_000).unwrap();
        assert_eq!(all(&s).len(), 1);
        drop(s);
        let (s, _) = Storage::open(dir.path(), cfg).unwrap();
        assert_eq!(
            s.apply("a", batch(1, 0), 8_000_000).unwrap(),
            ApplyOutcome::Duplicate
        );
    }

    fn series_batch(seq: u64, name: &str, times: &[i64]) -> Batch {
        let mut b = Batch::new(Lane::Metrics, times[0]);
        b.seq = seq;
        b.metrics.push(SeriesSamples {
            series: Series::new(name, [Label::new("host", "a")]),
            kind: MetricKind::Gauge,
            samples: times
                .iter()
                .map(|&t| Sample {
                    timestamp_ms: t,
                    value: t as f64,
                })
                .collect(),
        });
        b
    }

    fn times_of(store: &Storage, name: &str) -> Vec<i64> {
        store
            .select(
                &[Matcher::new(MatchOp::Equal, "__name__", name)],
                i64::MIN,
                i64::MAX,
            )
            .into_iter()
            .flat_map(|(_, _, s)| s.into_iter().map(|x| x.timestamp_ms))
            .collect()
    }

    #[test]
    fn flushed_blocks_and_replayed_log_hold_everything_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            block_ms: 3_600_000,
            ..Default::default()
        };
        let hour = 3_600_000;
        {
            let (s, _) = Storage::open(dir.path(), cfg.clone()).unwrap();
            s.apply(
                "a",
                series_batch(1, "m", &[hour, hour + 1000, 2 * hour + 5]),
                0,
            )
            .unwrap();
            let before = s.stats().wal_bytes;
            s.flush().unwrap();
            assert_eq!(s.stats().blocks, 2, "one block per window");
            assert!(s.stats().wal_bytes < before, "the flushed log is removed");
            s.apply("a", series_batch(2, "m", &[3 * hour]), 0).unwrap();
            assert_eq!(
                times_of(&s, "m"),
                vec![hour, hour + 1000, 2 * hour + 5, 3 * hour]
            );
        }
        let (s, replayed) = Storage::open(dir.path(), cfg).unwrap();
        assert_eq!(
            replayed, 1,
            "only the record after the flush point is replayed"
        );
        assert_eq!(
            times_of(&s, "m"),
            vec![hour, hour + 1000, 2 * hour + 5, 3 * hour]
        );
        assert_eq!(
            s.apply("a", series_batch(1, "m", &[hour]), 0).unwrap(),
            ApplyOutcome::Duplicate
        );
        assert_eq!(s.stats().replaced_samples, 0);
    }

    #[test]
    fn a_backlog_older_than_flushed_data_is_merged_and_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            block_ms: 3_600_000,
            ..Default::default()
        };
        let (s, _) = Storage::open(dir.path(), cfg).unwrap();
        // live data first, flushed; then the backlog for the same hour arrives
        s.apply("a", series_batch(1, "m", &[30_000, 40_000]), 0)
            .unwrap();
        s.flush().unwrap();
        s.apply("a", series_batch(2, "m", &[10_000, 20_000, 40_000]), 0)
            .unwrap();
        s.flush().unwrap();
        assert_eq!(
            s.stats().blocks,
            2,
            "two overlapping blocks before compaction"
        );
        assert_eq!(times_of(&s, "m"), vec![10_000, 20_000, 30_000, 40_000]);
        s.compact(0).unwrap();
        assert_eq!(s.stats().blocks, 1);
        assert_eq!(times_of(&s, "m"), vec![10_000, 20_000, 30_000, 40_000]);
        assert_eq!(s.stats().samples, 4);
    }

    #[test]
    fn size_limit_removes_the_oldest_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            block_ms: 60_000,
            max_bytes: 1,
            ..Default::default()
        };
        let (s, _) = Storage::open(dir.path(), cfg).unwrap();
        s.apply("a", series_batch(1, "m", &[0, 60_000, 120_000]), 0)
            .unwrap();
        s.flush().unwrap();
        assert_eq!(s.stats().blocks, 3);
        s.retention(200_000).unwrap();
        assert_eq!(s.stats().blocks, 0);
        assert_eq!(s.stats().size_evictions, 3);
        assert!(times_of(&s, "m").is_empty());
    }

    #[test]
    fn complete_windows_get_rollups_that_wide_steps_read() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        let cfg = StoreConfig {
            block_ms: 2 * hour,
            retention_ms: 10 * hour,
            rollup_retention_ms: 100 * hour,
            ..Default::default()
        };
        let (s, _) = Storage::open(dir.path(), cfg).unwrap();
        // four hours at 15 s, value = minute of the hour
        let times: Vec<i64> = (0..4 * 240).map(|i| i * 15_000).collect();
        let mut b = series_batch(1, "m", &times);
        for x in &mut b.metrics[0].samples {
            x.value = ((x.timestamp_ms / 60_000) % 60) as f64;
        }
        s.apply("a", b, 0).unwrap();
        s.flush().unwrap();
        s.maintain(6 * hour).unwrap();
        let res: Vec<i64> = s
            .blocks
            .read()
            .unwrap()
            .iter()
            .map(|b| b.meta.resolution_ms)
            .collect();
        assert_eq!(res.iter().filter(|&&r| r == 0).count(), 2);
        assert_eq!(res.iter().filter(|&&r| r == 300_000).count(), 2);
        assert_eq!(res.iter().filter(|&&r| r == 3_600_000).count(), 2);
        let m = [Matcher::new(MatchOp::Equal, "__name__", "m")];
        let raw = s.select(&m, 0, 4 * hour);
        assert_eq!(raw[0].2.len(), 960);
        let wide = crate::promql::SelectHints {
            step_ms: 6 * hour,
            func: Some("max_over_time"),
            range_ms: 6 * hour,
        };
        let maxima = s.select_hinted(&m, 0, 4 * hour, &wide);
        assert_eq!(maxima[0].0, Series::new("m", [Label::new("host", "a")]));
        assert_eq!(maxima[0].2.len(), 4, "one point per hour");
        assert!(maxima[0].2.iter().all(|x| x.value == 59.0));
        // raw samples past retention: a plain selection reads the 5-minute averages
        s.maintain(15 * hour).unwrap();
        let averaged = s.select(&m, 0, 4 * hour);
        assert_eq!(averaged[0].2.len(), 48, "twelve 5-minute points per hour");
        assert_eq!(averaged[0].2[0].value, 2.0);
    }

    #[test]
    fn series_limits_refuse_new_series_only() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Storage::open(dir.path(), StoreConfig::default()).unwrap();
        s.apply("a", series_batch(1, "m1", &[1]), 0).unwrap();
        let mut b = series_batch(2, "m1", &[2]);
        b.metrics.extend(series_batch(2, "m2", &[2]).metrics);
        b.metrics.extend(series_batch(2, "m3", &[2, 3]).metrics);
        // per host: one more series fits, the third is refused; a known series always passes
        let mut per_host = b.clone();
        assert_eq!(s.drop_new_series_over("a", &mut per_host, 2, 100), (2, 0));
        assert_eq!(per_host.metrics.len(), 2);
        // in total: the store holds one series, room for none more
        let mut total = b.clone();
        assert_eq!(s.drop_new_series_over("a", &mut total, 100, 1), (0, 3));
        assert_eq!(total.metrics.len(), 1);
    }

    #[test]
    fn old_windows_merge_into_day_blocks_and_sparse_data_is_kept_raw() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 3_600_000;
        let day = 24 * hour;
        let cfg = StoreConfig {
            block_ms: 2 * hour,
            retention_ms: 2 * day,
            rollup_retention_ms: 100 * day,
            ..Default::default()
        };
        let (s, _) = Storage::open(dir.path(), cfg).unwrap();
        // one day at 10 minutes: too sparse for rollups
        let times: Vec<i64> = (0..144).map(|i| i * 600_000).collect();
        s.apply("a", series_batch(1, "m", &times), 0).unwrap();
        s.flush().unwrap();
        assert_eq!(s.stats().blocks, 12);
        s.maintain(3 * day).unwrap();
        let blocks = s.blocks.read().unwrap().clone();
        let raw: Vec<_> = blocks
            .iter()
            .filter(|b| b.meta.resolution_ms == 0)
            .collect();
        assert_eq!(raw.len(), 1, "one day block");
        assert_eq!((raw[0].meta.mint, raw[0].meta.maxt), (0, day));
        assert!(
            blocks
                .iter()
                .filter(|b| b.meta.resolution_ms > 0)
                .all(|b| b.meta.series == 0),
            "no rollups of sparse data"
        );
        let m = [Matcher::new(MatchOp::Equal, "__name__", "m")];
        assert_eq!(times_of(&s, "m"), times);
        let wide = crate::promql::SelectHints {
            step_ms: 6 * hour,
            func: Some("max_over_time"),
            range_ms: 6 * hour,
        };
        assert_eq!(
            s.select_hinted(&m, 0, day, &wide)[0].2.len(),
            144,
            "read raw"
        );
        // past raw retention the sparse raw block stands in for rollups
        s.maintain(10 * day).unwrap();
        assert_eq!(times_of(&s, "m").len(), 144);
    }
}
