//! The collector: sources run as tasks and send what they collect over one channel; the
//! collector gathers it into batches (sealed by size or by age) and writes each batch durably
//! to the buffer, waking the shipper. The host source's loop lives here too.
//!
//! Log records go into their own batches (lane `Logs`), each carrying the checkpoints of the
//! records it holds ("file F read to X"), written in the same buffer transaction: the position
//! of a source never gets ahead of, or behind, the records in the buffer.

use crate::buffer::Buffer;
use crate::config::{secs, BatchConfig, HostConfig};
use crate::metrics::AgentMetrics;
use crate::sources::host::HostSource;
use fleetwatch_common::codec;
use fleetwatch_common::model::{now_ms, Batch, CheckResult, Lane, LogRecord, SeriesSamples};
use fleetwatch_common::protocol::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, warn};

/// Gathers items into batches: sealed when `max_items` is reached or the oldest item waited
/// `max_wait`.
#[derive(Debug)]
pub struct Batcher {
    max_items: usize,
    max_wait: Duration,
    current: Option<(Instant, Batch)>,
    /// Items in `current`, kept as they are added (counting the batch each time would be
    /// quadratic in its size).
    items: usize,
}

impl Batcher {
    /// A batcher with the given bounds.
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        Self {
            max_items: max_items.max(1),
            max_wait,
            current: None,
            items: 0,
        }
    }

    /// Adds series; returns the batches that became full.
    pub fn add_metrics(&mut self, series: Vec<SeriesSamples>, now: Instant) -> Vec<Batch> {
        let mut sealed = Vec::new();
        for ss in series {
            let n = ss.samples.len();
            self.current_batch(now).metrics.push(ss);
            self.items += n;
            self.seal_if_full(&mut sealed);
        }
        sealed
    }

    /// Adds check results; returns the batches that became full.
    pub fn add_checks(&mut self, results: Vec<CheckResult>, now: Instant) -> Vec<Batch> {
        let mut sealed = Vec::new();
        for r in results {
            self.current_batch(now).checks.push(r);
            self.items += 1;
            self.seal_if_full(&mut sealed);
        }
        sealed
    }

    fn current_batch(&mut self, now: Instant) -> &mut Batch {
        if self.current.is_none() {
            self.items = 0;
        }
        &mut self
            .current
            .get_or_insert_with(|| (now, Batch::new(Lane::Metrics, now_ms())))
            .1
    }

    fn seal_if_full(&mut self, sealed: &mut Vec<Batch>) {
        if self.current.is_some() && self.items >= self.max_items {
            if let Some((_, b)) = self.current.take() {
                sealed.push(b);
            }
        }
    }

    /// The current batch, if it waited long enough (or `force`).
    pub fn take_due(&mut self, now: Instant, force: bool) -> Option<Batch> {
        match &self.current {
            Some((since, _)) if force || now.duration_since(*since) >= self.max_wait => {
                self.current.take().map(|(_, b)| b)
            }
            _ => None,
        }
    }

    /// When the current batch falls due.
    pub fn due_at(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .map(|(since, _)| *since + self.max_wait)
    }
}

/// Bytes of log messages and fields in one batch at most (well under the frame limits).
pub const MAX_LOG_BATCH_BYTES: usize = 1024 * 1024;

/// Checkpoint changes: key to new value (`None` removes), the latest per key.
pub type Checkpoints = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A sealed log batch and the checkpoints to write with it; `batch` is `None` for checkpoints
/// that cover no new record (all earlier records are already in the buffer).
#[derive(Debug)]
pub struct SealedLogs {
    /// The records.
    pub batch: Option<Batch>,
    /// The positions they reach.
    pub checkpoints: Checkpoints,
}

/// Gathers log records into `Logs` batches, sealed by count, bytes or age, each with the
/// checkpoints handed in with its records.
///
/// A batch's record list is the emptied list of an earlier batch handed back by
/// [`LogBatcher::recycle`] when there is one: a list grown afresh for each batch (up to ~1 MiB
/// at 16,384 records) was new memory to fault in every time.
#[derive(Debug)]
pub struct LogBatcher {
    max_items: usize,
    max_wait: Duration,
    current: Option<(Instant, Batch, Checkpoints)>,
    bytes: usize,
    /// An empty record list with room, for the next batch.
    spare: Vec<LogRecord>,
}

fn record_bytes(r: &LogRecord) -> usize {
    64 + r.message.len()
        + r.source.len()
        + r.fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum::<usize>()
}

impl LogBatcher {
    /// A batcher with the given bounds.
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        Self {
            max_items: max_items.max(1),
            max_wait,
            current: None,
            bytes: 0,
            spare: Vec::new(),
        }
    }

    /// Takes back a sealed batch's record list, emptied, as the next batch's. A list less than
    /// a quarter full in its last batch is dropped rather than kept (the logs slowed down).
    pub fn recycle(&mut self, mut records: Vec<LogRecord>, used: usize) {
        if used.saturating_mul(4) >= records.capacity()
            && records.capacity() > self.spare.capacity()
        {
            records.clear();
            self.spare = records;
        }
    }

    /// Adds records and the checkpoints that cover them; returns what must be written now.
    ///
    /// Records that come with checkpoints (a log source's chunk) go into one batch whole: the
    /// batch is sealed before them if they would not fit, and after them if they filled it. A
    /// chunk split over two batches would leave its first part in a batch saved with the
    /// position from before the chunk, so a crash between the two writes would read that part
    /// again. A batch may so exceed its bounds by one chunk (a source's chunk is one read of at
    /// most 256 KiB, far under the frame limits). Records without checkpoints (pushed logs) are
    /// split at the bounds.
    pub fn add(
        &mut self,
        records: Vec<LogRecord>,
        checkpoints: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        now: Instant,
    ) -> Vec<SealedLogs> {
        let mut sealed = Vec::new();
        let whole = !checkpoints.is_empty();
        if whole {
            let bytes: usize = records.iter().map(record_bytes).sum();
            let fits = self.current.as_ref().is_none_or(|(_, batch, _)| {
                self.bytes + bytes <= MAX_LOG_BATCH_BYTES
                    && batch.logs.len() + records.len() <= self.max_items
            });
            if !fits {
                sealed.extend(self.take_due(now, true));
            }
        }
        for r in records {
            let size = record_bytes(&r);
            if !whole && self.current.is_some() && self.bytes + size > MAX_LOG_BATCH_BYTES {
                sealed.extend(self.take_due(now, true));
            }
            let spare = &mut self.spare;
            let (_, batch, _) = self.current.get_or_insert_with(|| {
                let mut batch = Batch::new(Lane::Logs, now_ms());
                batch.logs = std::mem::take(spare);
                (now, batch, Checkpoints::new())
            });
            if batch.logs.is_empty() {
                self.bytes = 0;
            }
            batch.logs.push(r);
            self.bytes += size;
            if !whole && batch.logs.len() >= self.max_items {
                sealed.extend(self.take_due(now, true));
            }
        }
        if !whole {
            return sealed;
        }
        // The checkpoints go with the batch holding the last of these records: the current
        // one, else the one just sealed, else (no records) on their own.
        let target = match (&mut self.current, sealed.last_mut()) {
            (Some((_, _, cps)), _) => cps,
            (None, Some(last)) => &mut last.checkpoints,
            (None, None) => {
                sealed.push(SealedLogs {
                    batch: None,
                    checkpoints: Checkpoints::new(),
                });
                &mut sealed.last_mut().expect("just pushed").checkpoints
            }
        };
        target.extend(checkpoints);
        let full = self.current.as_ref().is_some_and(|(_, batch, _)| {
            self.bytes >= MAX_LOG_BATCH_BYTES || batch.logs.len() >= self.max_items
        });
        if full {
            sealed.extend(self.take_due(now, true));
        }
        sealed
    }

    /// The current batch, if it waited long enough (or `force`).
    pub fn take_due(&mut self, now: Instant, force: bool) -> Option<SealedLogs> {
        match &self.current {
            Some((since, _, _)) if force || now.duration_since(*since) >= self.max_wait => {
                self.bytes = 0;
                self.current
                    .take()
                    .map(|(_, batch, checkpoints)| SealedLogs {
                        batch: Some(batch),
                        checkpoints,
                    })
            }
            _ => None,
        }
    }

    /// When the current batch falls due.
    pub fn due_at(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .map(|(since, _, _)| *since + self.max_wait)
    }
}

/// Writes a sealed batch to the buffer (durably) and wakes the shipper.
pub async fn store_batch(
    buffer: &Arc<Buffer>,
    metrics: &AgentMetrics,
    wake: &Notify,
    batch: Batch,
) {
    store(buffer, metrics, wake, batch, Vec::new()).await;
}

/// The longest a log batch waits for the backlog to drain (an aggregator that is connected but
/// does not acknowledge must not stall the agent).
const LOG_BACKLOG_WAIT: Duration = Duration::from_secs(5);

/// Writes sealed log records with their checkpoints in one buffer transaction (or the
/// checkpoints alone). While connected, a batch first waits for the shipper as long as the
/// buffer holds more than `backlog_bytes` (`buffer.log_backlog_bytes`): a file read faster than
/// the aggregator takes it stays in the file (its position in the checkpoint) rather than in the
/// buffer, whose sled cache grows with what it holds. Without a connection nothing waits: the
/// buffer takes the backlog up to its bounds.
///
/// Returns the batch's record list, emptied, and how many records it held, for
/// [`LogBatcher::recycle`].
pub async fn store_logs(
    buffer: &Arc<Buffer>,
    metrics: &AgentMetrics,
    wake: &Notify,
    backlog_bytes: u64,
    sealed: SealedLogs,
) -> Option<(Vec<LogRecord>, usize)> {
    let checkpoints: Vec<_> = sealed.checkpoints.into_iter().collect();
    match sealed.batch {
        Some(batch) => {
            let deadline = Instant::now() + LOG_BACKLOG_WAIT;
            while metrics.connected.get() == 1
                && buffer.stats().bytes > backlog_bytes
                && buffer.is_open()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            store(buffer, metrics, wake, batch, checkpoints).await
        }
        None => {
            let buf = buffer.clone();
            match tokio::task::spawn_blocking(move || buf.save_checkpoints(&checkpoints)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    warn!(%error, "could not save log positions; records may be read again after a restart")
                }
                Err(error) => warn!(%error, "buffer task failed"),
            }
            None
        }
    }
}

/// Writes `batch`; returns its log record list, emptied (records dropped on the blocking
/// thread), and how many records it held.
async fn store(
    buffer: &Arc<Buffer>,
    metrics: &AgentMetrics,
    wake: &Notify,
    mut batch: Batch,
    checkpoints: Vec<(Vec<u8>, Option<Vec<u8>>)>,
) -> Option<(Vec<LogRecord>, usize)> {
    let lane = batch.lane;
    let created_ms = now_ms();
    batch.created_ms = created_ms;
    let buf = buffer.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut message = Message::Batch(batch);
        let result = buf.push_with_checkpoints(lane, created_ms, &checkpoints, |seq| {
            if let Message::Batch(batch) = &mut message {
                batch.seq = seq;
            }
            codec::encode(&message)
        });
        let records = match message {
            Message::Batch(batch) => {
                let mut logs = batch.logs;
                let used = logs.len();
                logs.clear();
                Some((logs, used))
            }
            _ => None,
        };
        (result, records)
    })
    .await;
    let (result, records) = match joined {
        Ok((result, records)) => (Ok(result), records),
        Err(error) => (Err(error), None),
    };
    match result {
        Ok(Ok((_seq, dropped))) => {
            metrics.batches_buffered.inc();
            if dropped.batches > 0 {
                metrics
                    .buffer_dropped_batches
                    .with_label_values(&["full"])
                    .inc_by(dropped.batches);
                metrics
                    .buffer_dropped_bytes
                    .with_label_values(&["full"])
                    .inc_by(dropped.bytes);
            }
            wake.notify_one();
        }
        Ok(Err(error)) => {
            // Counted, never silent. Log file and journal records in it are read again: their
            // positions were in the same failed write, and the sources rewind to the saved ones.
            let reason = error.reason();
            metrics
                .buffer_dropped_batches
                .with_label_values(&[reason])
                .inc();
            if error.is_unavailable() {
                debug!(%error, reason, "batch dropped: the buffer is closed");
            } else {
                warn!(%error, reason, "could not buffer a batch; dropped (counted in fleetwatch_agent_buffer_dropped_batches_total)");
            }
        }
        Err(error) => warn!(%error, "buffer task failed"),
    }
    let stats = buffer.stats();
    metrics.buffer_batches.set(stats.batches as i64);
    metrics.buffer_bytes.set(stats.bytes as i64);
    records
}

/// What a source hands to the collector.
#[derive(Debug)]
pub enum Collected {
    /// Metric samples.
    Metrics(Vec<SeriesSamples>),
    /// Health-check results and the series made from them.
    Checks {
        /// The results, shipped in `Batch::checks`.
        results: Vec<CheckResult>,
        /// The series made from them, shipped in `Batch::metrics`.
        series: Vec<SeriesSamples>,
    },
    /// Log records and the source positions they reach.
    Logs {
        /// The records, shipped in `Batch::logs` (lane `Logs`).
        records: Vec<LogRecord>,
        /// Checkpoint changes written with the batch holding the last of `records`.
        checkpoints: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        /// The sender's count of records in the channel, decreased by the collector when it
        /// takes them (log sources wait while it is high, which bounds the agent's memory).
        queued: Option<Arc<std::sync::atomic::AtomicUsize>>,
    },
    /// Seal and write everything gathered so far, then answer (before log sources restart,
    /// so that they read their latest positions from the buffer).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sending side every source holds.
pub type Output = mpsc::Sender<Collected>;

/// Room in the channel from the sources to the collector, in messages; a full channel makes
/// the sources (and push requests) wait rather than drop.
pub const CHANNEL_CAPACITY: usize = 256;

/// Runs the batcher until every [`Output`] is dropped: seals batches by size or age and writes
/// them to the buffer (log batches paced by `log_backlog_bytes`, see [`store_logs`]), and
/// expires old batches from the buffer.
pub async fn run(
    batch: BatchConfig,
    log_backlog_bytes: u64,
    buffer: Arc<Buffer>,
    metrics: AgentMetrics,
    wake: Arc<Notify>,
    mut input: mpsc::Receiver<Collected>,
) {
    let mut batcher = Batcher::new(batch.max_items, secs(batch.max_wait_seconds));
    let mut logs = LogBatcher::new(batch.max_items, secs(batch.max_wait_seconds));
    let mut expire = tokio::time::interval(Duration::from_secs(60));
    loop {
        let due = batcher.due_at();
        let logs_due = logs.due_at();
        tokio::select! {
            received = input.recv() => {
                let sealed = match received {
                    Some(Collected::Metrics(series)) => batcher.add_metrics(series, Instant::now()),
                    Some(Collected::Checks { results, series }) => {
                        let mut sealed = batcher.add_checks(results, Instant::now());
                        sealed.extend(batcher.add_metrics(series, Instant::now()));
                        sealed
                    }
                    Some(Collected::Logs { records, checkpoints, queued }) => {
                        if let Some(q) = queued {
                            q.fetch_sub(records.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                        for s in logs.add(records, checkpoints, Instant::now()) {
                            if let Some((list, used)) = store_logs(&buffer, &metrics, &wake, log_backlog_bytes, s).await {
                                logs.recycle(list, used);
                            }
                        }
                        Vec::new()
                    }
                    Some(Collected::Flush(done)) => {
                        if let Some(batch) = batcher.take_due(Instant::now(), true) {
                            store_batch(&buffer, &metrics, &wake, batch).await;
                        }
                        if let Some(s) = logs.take_due(Instant::now(), true) {
                            store_logs(&buffer, &metrics, &wake, log_backlog_bytes, s).await;
                        }
                        let _ = done.send(());
                        Vec::new()
                    }
                    None => {
                        if let Some(batch) = batcher.take_due(Instant::now(), true) {
                            store_batch(&buffer, &metrics, &wake, batch).await;
                        }
                        if let Some(s) = logs.take_due(Instant::now(), true) {
                            store_logs(&buffer, &metrics, &wake, log_backlog_bytes, s).await;
                        }
                        return;
                    }
                };
                for batch in sealed {
                    store_batch(&buffer, &metrics, &wake, batch).await;
                }
            }
            _ = sleep_until(due) => {
                if let Some(batch) = batcher.take_due(Instant::now(), false) {
                    store_batch(&buffer, &metrics, &wake, batch).await;
                }
            }
            _ = sleep_until(logs_due) => {
                if let Some(s) = logs.take_due(Instant::now(), false) {
                    if let Some((list, used)) = store_logs(&buffer, &metrics, &wake, log_backlog_bytes, s).await {
                        logs.recycle(list, used);
                    }
                }
            }
            _ = expire.tick() => {
                let buf = buffer.clone();
                if let Ok(Ok(dropped)) = tokio::task::spawn_blocking(move || buf.expire(now_ms())).await {
                    if dropped.batches > 0 {
                        metrics.buffer_dropped_batches.with_label_values(&["expired"]).inc_by(dropped.batches);
                        metrics.buffer_dropped_bytes.with_label_values(&["expired"]).inc_by(dropped.bytes);
                    }
                }
            }
        }
    }
}

/// Collects host metrics (when enabled) and the agent's own metrics every
/// `host.interval_seconds`, following changes of the host configuration, until `shutdown`.
pub async fn run_host(
    mut config: watch::Receiver<HostConfig>,
    out: Output,
    metrics: AgentMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut host = HostSource::new();
    let mut current = config.borrow_and_update().clone();
    let mut tick = tokio::time::interval(secs(current.interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = now_ms();
                let mut series = Vec::new();
                if current.enabled {
                    series = host.collect(now);
                    metrics.collections.with_label_values(&["host"]).inc();
                }
                series.extend(metrics.snapshot(now));
                if out.send(Collected::Metrics(series)).await.is_err() {
                    return;
                }
            }
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = config.borrow_and_update().clone();
                if next.interval_seconds != current.interval_seconds {
                    let period = secs(next.interval_seconds);
                    tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
                current = next;
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::{MetricKind, Sample, Series};

    fn ss(n: usize) -> SeriesSamples {
        SeriesSamples {
            series: Series::new("m", []),
            kind: MetricKind::Gauge,
            samples: vec![
                Sample {
                    timestamp_ms: 0,
                    value: 0.0
                };
                n
            ],
        }
    }

    #[test]
    fn batch_sealed_by_size() {
        let mut b = Batcher::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let sealed = b.add_metrics(vec![ss(6), ss(6), ss(3)], now);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].item_count(), 12);
        assert!(b.take_due(now, false).is_none());
        assert_eq!(b.take_due(now, true).unwrap().item_count(), 3);
    }

    #[test]
    fn batch_sealed_by_age() {
        let mut b = Batcher::new(1000, Duration::from_millis(100));
        let t0 = Instant::now();
        assert!(b.add_metrics(vec![ss(1)], t0).is_empty());
        assert!(b.take_due(t0, false).is_none());
        assert!(b.take_due(t0 + Duration::from_millis(150), false).is_some());
        assert!(b.due_at().is_none());
    }

    fn rec(m: &str) -> LogRecord {
        LogRecord {
            timestamp_ns: 1,
            source: "s".into(),
            level: fleetwatch_common::model::LogLevel::Info,
            message: m.into(),
            fields: Vec::new(),
        }
    }

    fn cp(k: &str, v: &str) -> (Vec<u8>, Option<Vec<u8>>) {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    #[test]
    fn log_checkpoints_travel_with_the_batch_of_their_last_record() {
        let mut b = LogBatcher::new(3, Duration::from_secs(60));
        let now = Instant::now();
        // 2 records: batch not full, the checkpoint waits with it
        assert!(b
            .add(vec![rec("a"), rec("b")], vec![cp("f", "2")], now)
            .is_empty());
        // 2 more do not fit: the batch is sealed before them with its checkpoint, and the
        // chunk goes whole into the next batch with its own (never split over two batches,
        // so a crash between the two writes can not read part of it again)
        let sealed = b.add(vec![rec("c"), rec("d")], vec![cp("f", "4")], now);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].batch.as_ref().unwrap().logs.len(), 2);
        assert_eq!(sealed[0].checkpoints[&b"f".to_vec()], Some(b"2".to_vec()));
        let last = b.take_due(now, true).unwrap();
        assert_eq!(last.batch.as_ref().unwrap().lane, Lane::Logs);
        assert_eq!(last.batch.as_ref().unwrap().logs.len(), 2);
        assert_eq!(last.checkpoints[&b"f".to_vec()], Some(b"4".to_vec()));
        // a chunk larger than a batch stays whole, sealed at once with its checkpoint
        let sealed = b.add(
            vec![rec("1"), rec("2"), rec("3"), rec("4")],
            vec![cp("f", "11")],
            now,
        );
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].batch.as_ref().unwrap().logs.len(), 4);
        assert_eq!(sealed[0].checkpoints[&b"f".to_vec()], Some(b"11".to_vec()));
        // exactly filling a batch: the checkpoint goes with the sealed batch
        let sealed = b.add(vec![rec("e"), rec("f"), rec("g")], vec![cp("f", "7")], now);
        assert_eq!(sealed[0].checkpoints[&b"f".to_vec()], Some(b"7".to_vec()));
        // no records, nothing pending: the checkpoint alone
        let sealed = b.add(vec![], vec![cp("g", "1")], now);
        assert!(sealed[0].batch.is_none());
        assert!(b.due_at().is_none());
        // a batch is sealed by bytes too
        let big = "x".repeat(MAX_LOG_BATCH_BYTES / 2);
        let mut b = LogBatcher::new(1000, Duration::from_secs(60));
        let sealed = b.add(vec![rec(&big), rec(&big), rec(&big)], vec![], now);
        assert_eq!(sealed.len(), 2);
        assert!(sealed
            .iter()
            .all(|s| s.batch.as_ref().unwrap().logs.len() == 1));
    }

    #[test]
    fn log_batches_reuse_the_record_list_of_an_earlier_batch() {
        let mut b = LogBatcher::new(100, Duration::from_secs(60));
        let now = Instant::now();
        let first: Vec<_> = (0..100).map(|i| rec(&i.to_string())).collect();
        let mut sealed = b.add(first, vec![], now);
        let list = sealed.remove(0).batch.unwrap().logs;
        let (capacity, ptr) = (list.capacity(), list.as_ptr());
        assert!(capacity >= 100);
        b.recycle(list, 100);
        assert!(b.add(vec![rec("next")], vec![], now).is_empty());
        let next = b.take_due(now, true).unwrap().batch.unwrap().logs;
        assert_eq!((next.capacity(), next.as_ptr()), (capacity, ptr));
        assert_eq!(next.len(), 1);
        // A list mostly unused in its last batch is not kept.
        b.recycle(next, 1);
        assert!(b.add(vec![rec("slow")], vec![], now).is_empty());
        assert!(
            b.take_due(now, true)
                .unwrap()
                .batch
                .unwrap()
                .logs
                .capacity()
                < capacity
        );
    }

    #[test]
    fn check_results_share_batches_with_metrics() {
        let mut b = Batcher::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let result = CheckResult {
            name: "db".into(),
            timestamp_ms: 1,
            status: fleetwatch_common::model::CheckStatus::Healthy,
            duration_seconds: 0.1,
            detail: String::new(),
        };
        assert!(b.add_metrics(vec![ss(1)], now).is_empty());
        let sealed = b.add_checks(vec![result.clone(), result.clone(), result], now);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].checks.len(), 2);
        assert_eq!(sealed[0].metrics.len(), 1);
        assert_eq!(b.take_due(now, true).unwrap().checks.len(), 1);
    }
}
