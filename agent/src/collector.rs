//! The collector: runs the sources on their intervals, gathers what they produce into batches
//! (sealed by size or by age) and writes each batch durably to the buffer, waking the shipper.

use crate::buffer::Buffer;
use crate::config::{secs, AgentConfig};
use crate::metrics::AgentMetrics;
use crate::sources::host::HostSource;
use fleetwatch_common::codec;
use fleetwatch_common::model::{now_ms, Batch, Lane, SeriesSamples};
use fleetwatch_common::protocol::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::warn;

/// Gathers items into batches: sealed when `max_items` is reached or the oldest item waited
/// `max_wait`.
#[derive(Debug)]
pub struct Batcher {
    max_items: usize,
    max_wait: Duration,
    current: Option<(Instant, Batch)>,
}

impl Batcher {
    /// A batcher with the given bounds.
    pub fn new(max_items: usize, max_wait: Duration) -> Self {
        Self {
            max_items: max_items.max(1),
            max_wait,
            current: None,
        }
    }

    /// Adds series; returns the batches that became full.
    pub fn add_metrics(&mut self, series: Vec<SeriesSamples>, now: Instant) -> Vec<Batch> {
        let mut sealed = Vec::new();
        for ss in series {
            let n = ss.samples.len();
            let (_, batch) = self
                .current
                .get_or_insert_with(|| (now, Batch::new(Lane::Metrics, now_ms())));
            batch.metrics.push(ss);
            let _ = n;
            if batch.item_count() >= self.max_items {
                if let Some((_, b)) = self.current.take() {
                    sealed.push(b);
                }
            }
        }
        sealed
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

/// Writes a sealed batch to the buffer (durably) and wakes the shipper.
pub async fn store_batch(
    buffer: &Arc<Buffer>,
    metrics: &AgentMetrics,
    wake: &Notify,
    mut batch: Batch,
) {
    let lane = batch.lane;
    let created_ms = now_ms();
    batch.created_ms = created_ms;
    let buf = buffer.clone();
    let result = tokio::task::spawn_blocking(move || {
        buf.push(lane, created_ms, |seq| {
            batch.seq = seq;
            codec::encode(&Message::Batch(batch))
        })
    })
    .await;
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
        Ok(Err(error)) => warn!(%error, "could not buffer a batch; it is lost"),
        Err(error) => warn!(%error, "buffer task failed"),
    }
    let stats = buffer.stats();
    metrics.buffer_batches.set(stats.batches as i64);
    metrics.buffer_bytes.set(stats.bytes as i64);
}

/// Runs the host source and the batcher until `shutdown`.
pub async fn run(
    config: AgentConfig,
    buffer: Arc<Buffer>,
    metrics: AgentMetrics,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut host = HostSource::new();
    let mut batcher = Batcher::new(config.batch.max_items, secs(config.batch.max_wait_seconds));
    let mut tick = tokio::time::interval(secs(config.host.interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expire = tokio::time::interval(Duration::from_secs(60));
    loop {
        let due = batcher.due_at();
        tokio::select! {
            _ = tick.tick(), if config.host.enabled => {
                let now = now_ms();
                let mut series = host.collect(now);
                metrics.collections.with_label_values(&["host"]).inc();
                series.extend(metrics.snapshot(now));
                for batch in batcher.add_metrics(series, Instant::now()) {
                    store_batch(&buffer, &metrics, &wake, batch).await;
                }
            }
            _ = sleep_until(due) => {
                if let Some(batch) = batcher.take_due(Instant::now(), false) {
                    store_batch(&buffer, &metrics, &wake, batch).await;
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
            _ = shutdown.changed() => {
                if let Some(batch) = batcher.take_due(Instant::now(), true) {
                    store_batch(&buffer, &metrics, &wake, batch).await;
                }
                return;
            }
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
}
