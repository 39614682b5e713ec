//! The agent's own metrics (`fleetwatch_agent_*`), declared in one place. They ship with the
//! host's data on every collection, so the fleet sees each agent's buffer, drops and retries.

use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Every metric the agent keeps about itself.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    /// Batches written to the buffer.
    pub batches_buffered: IntCounter,
    /// Batches dropped from the buffer (full or too old), by reason.
    pub buffer_dropped_batches: IntCounterVec,
    /// Bytes dropped from the buffer, by reason.
    pub buffer_dropped_bytes: IntCounterVec,
    /// Batches in the buffer now.
    pub buffer_batches: IntGauge,
    /// Bytes in the buffer now.
    pub buffer_bytes: IntGauge,
    /// Batches the aggregator acknowledged, by result (applied, duplicate, partial, rejected).
    pub batches_acked: IntCounterVec,
    /// Items the aggregator refused inside partly accepted batches.
    pub items_refused: IntCounter,
    /// Batch sends that failed and will be retried.
    pub send_retries: IntCounter,
    /// Connection attempts that failed, by reason.
    pub connect_failures: IntCounterVec,
    /// Connections established.
    pub connections: IntCounter,
    /// 1 while connected to an aggregator.
    pub connected: IntGauge,
    /// Batches in flight now.
    pub in_flight: IntGauge,
    /// Agent clock minus aggregator clock.
    pub clock_skew_seconds: Gauge,
    /// Round trip to the aggregator at the last hello.
    pub rtt_seconds: Gauge,
    /// Collections that produced data, by source.
    pub collections: IntCounterVec,
    /// Seconds until the agent's certificate expires.
    pub cert_expiry_seconds: Gauge,
    /// Scrapes done, by target.
    pub scrapes: IntCounterVec,
    /// Scrapes that failed, by target and reason.
    pub scrape_failures: IntCounterVec,
    /// Push requests, by format (json, text) and result (accepted, rejected).
    pub push_requests: IntCounterVec,
    /// Push requests rejected, by reason.
    pub push_rejections: IntCounterVec,
    /// Samples accepted by the push listener.
    pub push_samples: IntCounter,
    /// 1 while the push listener is listening.
    pub push_listener_up: IntGauge,
    /// Configuration reloads, by result (applied, invalid, failed).
    pub config_reloads: IntCounterVec,
    /// Log lines read, by source.
    pub log_lines_read: IntCounterVec,
    /// Log records handed to the buffer, by source (`push` for pushed records, `journald`).
    pub log_records: IntCounterVec,
    /// Log records cut to fit, by source and reason (line, fields, value).
    pub log_truncated: IntCounterVec,
    /// Log records dropped over a source's rate limit, by source.
    pub log_rate_limited: IntCounterVec,
    /// Log records with invalid UTF-8 (kept lossily), by source.
    pub log_invalid_utf8: IntCounterVec,
    /// Files open now, by source.
    pub log_files_watched: IntGaugeVec,
    /// Rotations seen, by source and kind (rename, delete, truncate, copytruncate).
    pub log_rotations: IntCounterVec,
    /// Bytes in watched files past the position last handed to the buffer, by source.
    pub log_checkpoint_lag_bytes: IntGaugeVec,
    /// Log source failures, by source and reason (open, read, unavailable, exited, parse).
    pub log_source_errors: IntCounterVec,
}

impl AgentMetrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are static and valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        Self {
            batches_buffered: reg!(IntCounter::new("fleetwatch_agent_batches_buffered_total", "Batches written to the durable buffer.")),
            buffer_dropped_batches: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_buffer_dropped_batches_total", "Batches dropped before delivery, by reason: full and expired (oldest dropped for the bounds), disk_full and io_error (the buffer could not write them), too_large, encode."), &["reason"])),
            buffer_dropped_bytes: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_buffer_dropped_bytes_total", "Bytes dropped from the buffer before delivery, by reason."), &["reason"])),
            buffer_batches: reg!(IntGauge::new("fleetwatch_agent_buffer_batches", "Batches waiting in the buffer.")),
            buffer_bytes: reg!(IntGauge::new("fleetwatch_agent_buffer_bytes", "Bytes waiting in the buffer.")),
            batches_acked: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_batches_acked_total", "Batches answered by the aggregator, by result."), &["result"])),
            items_refused: reg!(IntCounter::new("fleetwatch_agent_items_refused_total", "Samples or records the aggregator refused inside partly accepted batches.")),
            send_retries: reg!(IntCounter::new("fleetwatch_agent_send_retries_total", "Batch sends that failed and go again.")),
            connect_failures: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_connect_failures_total", "Failed connection attempts, by reason."), &["reason"])),
            connections: reg!(IntCounter::new("fleetwatch_agent_connections_total", "Connections established to an aggregator.")),
            connected: reg!(IntGauge::new("fleetwatch_agent_connected", "1 while connected to an aggregator.")),
            in_flight: reg!(IntGauge::new("fleetwatch_agent_batches_in_flight", "Batches sent and not yet acknowledged.")),
            clock_skew_seconds: reg!(Gauge::new("fleetwatch_agent_clock_skew_seconds", "Agent clock minus aggregator clock at the last hello.")),
            rtt_seconds: reg!(Gauge::new("fleetwatch_agent_rtt_seconds", "Round trip to the aggregator at the last hello.")),
            collections: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_collections_total", "Collection passes, by source."), &["source"])),
            cert_expiry_seconds: reg!(Gauge::new("fleetwatch_agent_certificate_expiry_seconds", "Seconds until the agent's certificate expires.")),
            scrapes: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_scrapes_total", "Scrapes of Prometheus targets, by target."), &["target"])),
            scrape_failures: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_scrape_failures_total", "Failed scrapes, by target and reason (connect, timeout, http_status, body_too_large, parse, request)."), &["target", "reason"])),
            push_requests: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_push_requests_total", "Requests to the push listener, by format and result."), &["format", "result"])),
            push_rejections: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_push_rejected_total", "Push requests rejected, by reason."), &["reason"])),
            push_samples: reg!(IntCounter::new("fleetwatch_agent_push_samples_total", "Samples accepted by the push listener.")),
            push_listener_up: reg!(IntGauge::new("fleetwatch_agent_push_listener_up", "1 while the push listener is listening, 0 when it is off or could not bind.")),
            config_reloads: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_config_reloads_total", "Configuration reloads (SIGHUP), by result (applied, invalid, failed)."), &["result"])),
            log_lines_read: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_lines_read_total", "Log lines read, by source."), &["source"])),
            log_records: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_records_total", "Log records handed to the buffer, by source (push for pushed records, journald)."), &["source"])),
            log_truncated: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_truncated_total", "Log records cut to fit the limits, by source and reason (line, fields, value)."), &["source", "reason"])),
            log_rate_limited: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_rate_limited_total", "Log records dropped over the source's rate limit, by source."), &["source"])),
            log_invalid_utf8: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_invalid_utf8_total", "Log records holding invalid UTF-8 (kept with U+FFFD, marked fleetwatch.invalid_utf8), by source."), &["source"])),
            log_files_watched: reg!(IntGaugeVec::new(Opts::new("fleetwatch_agent_log_files_watched", "Log files open now, by source."), &["source"])),
            log_rotations: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_rotations_total", "Log file rotations seen, by source and kind (rename, delete, truncate, copytruncate)."), &["source", "kind"])),
            log_checkpoint_lag_bytes: reg!(IntGaugeVec::new(Opts::new("fleetwatch_agent_log_checkpoint_lag_bytes", "Bytes in watched log files past the position last handed to the buffer, by source."), &["source"])),
            log_source_errors: reg!(IntCounterVec::new(Opts::new("fleetwatch_agent_log_source_errors_total", "Log source failures, by source and reason (open, read, unavailable, exited)."), &["source", "reason"])),
            registry,
        }
    }

    /// The registry (for tests and a local `/metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric as samples stamped `now_ms`, ready to ship.
    pub fn snapshot(&self, now_ms: i64) -> Vec<SeriesSamples> {
        let mut out = Vec::new();
        for family in self.registry.gather() {
            let kind = match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => MetricKind::Counter,
                prometheus::proto::MetricType::GAUGE => MetricKind::Gauge,
                _ => MetricKind::Untyped,
            };
            for m in family.get_metric() {
                let value = match kind {
                    MetricKind::Counter => m.get_counter().get_value(),
                    MetricKind::Gauge => m.get_gauge().get_value(),
                    MetricKind::Untyped => continue,
                };
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| Label::new(l.name(), l.value()));
                out.push(SeriesSamples {
                    series: Series::new(family.name(), labels),
                    kind,
                    samples: vec![Sample {
                        timestamp_ms: now_ms,
                        value,
                    }],
                });
            }
        }
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_carries_labelled_counters() {
        let m = AgentMetrics::new();
        m.batches_acked.with_label_values(&["applied"]).inc_by(3);
        m.buffer_bytes.set(42);
        let snap = m.snapshot(7);
        let acked = snap
            .iter()
            .find(|s| s.series.name == "fleetwatch_agent_batches_acked_total")
            .unwrap();
        assert_eq!(acked.series.label("result"), Some("applied"));
        assert_eq!(acked.kind, MetricKind::Counter);
        assert_eq!(acked.samples[0].value, 3.0);
        assert!(snap.iter().any(
            |s| s.series.name == "fleetwatch_agent_buffer_bytes" && s.samples[0].value == 42.0
        ));
    }
}
