//! The aggregator's first store: every accepted batch goes to a write-ahead log (fsync before
//! the acknowledgement), then into an in-memory index that answers selector queries. On start
//! the log is replayed, so nothing acknowledged is lost across a crash. Deduplication by
//! (agent, sequence number) lives here too, decided under the same per-agent lock as the write,
//! which makes storage exactly once.
//!
//! This store is deliberately small: the time-series store with compressed chunks replaces it
//! behind the same methods (`apply`, `append_system`, `select`, `maintain`).

pub mod applied;

use crate::tsdb::head::Head;
pub use crate::wal::Lsn;
use crate::wal::{Wal, WalConfig};
use applied::{AppliedMap, AppliedSeqs};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{Batch, MetricKind, Sample, Series, SeriesSamples};
use promql_parser::label::Matcher;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tracing::{info, warn};

/// Settings of the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long samples are kept, in milliseconds.
    pub retention_ms: i64,
    /// fsync before acknowledging (turn off only for benchmarks of the rest of the pipeline).
    pub sync: bool,
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
    /// Series held.
    pub series: usize,
    /// Samples held.
    pub samples: usize,
    /// Samples that arrived for a timestamp already held, counted over the whole log since the
    /// last start (0 with exactly-once delivery: a batch applied twice would show here).
    pub replaced_samples: u64,
    /// Bytes in the log.
    pub wal_bytes: u64,
}

/// The store.
pub struct Storage {
    wal: Wal,
    index: RwLock<Head>,
    applied: Mutex<HashMap<String, Arc<Mutex<AppliedSeqs>>>>,
    marks: Mutex<VecDeque<(i64, Lsn)>>,
    replaced: std::sync::atomic::AtomicU64,
    checkpoint: PathBuf,
    config: StoreConfig,
}

impl Storage {
    /// Opens the store in `dir`, replaying the log. Returns the store and the records replayed.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<(Self, u64), StoreError> {
        let checkpoint = dir.join("applied.json");
        let mut applied: AppliedMap = match std::fs::read(&checkpoint) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Checkpoint(checkpoint.clone(), e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AppliedMap::new(),
            Err(e) => return Err(StoreError::Checkpoint(checkpoint.clone(), e.to_string())),
        };
        let mut index = Head::default();
        let mut bad = 0u64;
        let mut replaced = 0u64;
        let mut first_mark = None;
        let limits = FrameLimits {
            max_payload_bytes: u32::MAX,
            max_decoded_bytes: u32::MAX,
        };
        let (wal, stats) = Wal::open(
            &dir.join("wal"),
            WalConfig {
                sync: config.sync,
                ..WalConfig::default()
            },
            |lsn, bytes| match codec::decode_value::<WalRecord>(bytes, &limits) {
                Ok(rec) => {
                    first_mark.get_or_insert((rec.received_ms, lsn));
                    if rec.seq != 0 {
                        applied.entry(rec.host.clone()).or_default().insert(rec.seq);
                    }
                    for ss in &rec.batch.metrics {
                        replaced += index.insert(ss).replaced;
                    }
                }
                Err(error) => {
                    bad += 1;
                    warn!(%error, ?lsn, "skipping an unreadable log record");
                }
            },
        )?;
        if stats.records > 0 {
            info!(
                records = stats.records,
                unreadable = bad,
                series = index.series_count(),
                "store replayed"
            );
        }
        let store = Self {
            wal,
            index: RwLock::new(index),
            applied: Mutex::new(
                applied
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(Mutex::new(v))))
                    .collect(),
            ),
            marks: Mutex::new(first_mark.into_iter().collect()),
            replaced: replaced.into(),
            checkpoint,
            config,
        };
        Ok((store, stats.records))
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
        self.write(WalRecord {
            host: host.to_string(),
            seq,
            received_ms,
            batch,
        })?;
        applied.insert(seq);
        Ok(ApplyOutcome::Applied)
    }

    /// Stores series the aggregator made itself (such as `up`). Blocking.
    pub fn append_system(
        &self,
        metrics: Vec<SeriesSamples>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new(fleetwatch_common::model::Lane::Metrics, now_ms);
        batch.metrics = metrics;
        self.write(WalRecord {
            host: String::new(),
            seq: 0,
            received_ms: now_ms,
            batch,
        })
    }

    fn write(&self, record: WalRecord) -> Result<(), StoreError> {
        let bytes = codec::encode_value(&record)?;
        let lsn = self.wal.append(&bytes)?;
        {
            let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            if marks
                .back()
                .is_none_or(|(t, _)| record.received_ms - t >= 60_000)
            {
                marks.push_back((record.received_ms, lsn));
            }
        }
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        for ss in &record.batch.metrics {
            let st = index.insert(ss);
            self.replaced
                .fetch_add(st.replaced, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Series matching `matchers` with their samples in `[start_ms, end_ms]`.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Series, MetricKind, Vec<Sample>)> {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .select(matchers, start_ms, end_ms)
    }

    /// Drops the series of `batch` that are new for `host` once it holds `limit` series;
    /// returns the samples dropped.
    pub fn drop_new_series_over(&self, host: &str, batch: &mut Batch, limit: usize) -> u64 {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let mut room = limit.saturating_sub(index.series_for_host(host));
        let mut dropped = 0u64;
        batch.metrics.retain(|ss| {
            if index.contains(&ss.series) {
                return true;
            }
            if room > 0 {
                room -= 1;
                return true;
            }
            dropped += ss.samples.len() as u64;
            false
        });
        dropped
    }

    /// Series currently held for `host`.
    pub fn series_for_host(&self, host: &str) -> usize {
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .series_for_host(host)
    }

    /// Retention: drops samples older than the window and log segments nobody needs, after
    /// checkpointing the deduplication state those segments carried. Blocking.
    pub fn maintain(&self, now_ms: i64) -> Result<(), StoreError> {
        let cutoff = now_ms - self.config.retention_ms;
        self.index
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .trim_before(cutoff);
        let remove_before = {
            let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
            let mut last = None;
            while marks.len() > 1 && marks.get(1).is_some_and(|(t, _)| *t < cutoff) {
                last = marks.pop_front();
            }
            last.and_then(|_| marks.front().map(|(_, lsn)| *lsn))
        };
        if let Some(lsn) = remove_before {
            self.write_checkpoint()?;
            let removed = self.wal.remove_before(lsn)?;
            if removed > 0 {
                info!(segments = removed, "log segments past retention removed");
            }
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
        let err = |e: String| StoreError::Checkpoint(self.checkpoint.clone(), e);
        let bytes = serde_json::to_vec(&snapshot).map_err(|e| err(e.to_string()))?;
        let tmp = self.checkpoint.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| err(e.to_string()))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.checkpoint).map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    /// The end of the log: where the next batch will be written.
    pub fn log_end(&self) -> Lsn {
        self.wal.end()
    }

    /// The metric samples logged from `from` on, in the order they were made durable, whole
    /// records until about `max_samples`. Returns them, where the next read starts, and whether
    /// part of the log had already been removed by retention. Blocking.
    pub fn read_log(
        &self,
        from: Lsn,
        max_samples: usize,
    ) -> Result<(Vec<SeriesSamples>, Lsn, bool), StoreError> {
        let limits = FrameLimits {
            max_payload_bytes: u32::MAX,
            max_decoded_bytes: u32::MAX,
        };
        let mut out = Vec::new();
        let mut samples = 0usize;
        let mut resume = None;
        let (end, skipped) = self.wal.read_from(from, |lsn, bytes| {
            if samples >= max_samples {
                resume = Some(lsn);
                return false;
            }
            match codec::decode_value::<WalRecord>(bytes, &limits) {
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
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        StoreStats {
            series: index.series_count(),
            samples: index.sample_count(),
            replaced_samples: self.replaced.load(std::sync::atomic::Ordering::Relaxed),
            wal_bytes: self.wal.disk_bytes(),
        }
    }
}

/// The agent batches in a store's log in the order they were made durable: (host, seq,
/// oldest sample ms, newest sample ms). For tests and diagnostics; run it on a stopped store.
pub fn arrival_order(dir: &Path) -> Result<Vec<(String, u64, i64, i64)>, StoreError> {
    let limits = FrameLimits {
        max_payload_bytes: u32::MAX,
        max_decoded_bytes: u32::MAX,
    };
    let mut out = Vec::new();
    Wal::open(&dir.join("wal"), WalConfig::default(), |_, bytes| {
        if let Ok(rec) = codec::decode_value::<WalRecord>(bytes, &limits) {
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
    ) -> Vec<crate::promql::RangeSeries> {
        Storage::select(self, matchers, start_ms, end_ms)
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
            sync: true,
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
            sync: false,
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
}
