//! The aggregator's own metrics (`fleetwatch_*`), declared in one place and served at `/metrics`.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the aggregator keeps about itself.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Agent connections accepted.
    pub connections: IntCounter,
    /// Agents connected now.
    pub connected_agents: IntGauge,
    /// Clients refused at the TLS handshake, by reason.
    pub clients_refused: IntCounterVec,
    /// Connections closed for a protocol or frame error, by reason.
    pub protocol_errors: IntCounterVec,
    /// Batches answered, by result (applied, duplicate, partial, rejected).
    pub batches: IntCounterVec,
    /// Samples stored.
    pub samples_ingested: IntCounter,
    /// Items refused by validation or limits, by reason.
    pub items_refused: IntCounterVec,
    /// Check results stored, by status.
    pub check_results: IntCounterVec,
    /// Time from receiving a batch to acknowledging it (durable).
    pub apply_seconds: Histogram,
    /// Store errors (a batch not acknowledged).
    pub store_errors: IntCounter,
    /// Series in the store.
    pub store_series: IntGauge,
    /// Samples in the store.
    pub store_samples: IntGauge,
    /// Samples that arrived for a timestamp already stored.
    pub store_replaced_samples: IntGauge,
    /// Bytes in the write-ahead log.
    pub wal_bytes: IntGauge,
    /// Persisted blocks.
    pub store_blocks: IntGauge,
    /// Bytes of persisted blocks.
    pub store_block_bytes: IntGauge,
    /// Blocks removed by the size limit since start.
    pub store_size_evictions: IntGauge,
    /// Hosts by status.
    pub hosts: IntGaugeVec,
    /// HTTP requests, by route pattern and status code.
    pub http_requests: IntCounterVec,
    /// Revocation list reloads, by result.
    pub crl_reloads: IntCounterVec,
    /// Samples forwarded by remote write, by endpoint and result (sent, rejected).
    pub remote_write_samples: IntCounterVec,
    /// Remote-write requests, by endpoint and HTTP status (or `error` with no response).
    pub remote_write_requests: IntCounterVec,
    /// Remote-write retries, by endpoint.
    pub remote_write_retries: IntCounterVec,
    /// Times retention removed logged samples before an endpoint had them, by endpoint.
    pub remote_write_skipped: IntCounterVec,
    /// Newest sample timestamp an endpoint has accepted, by endpoint.
    pub remote_write_last_sent: IntGaugeVec,
    /// Rule reloads, by result (ok, refused).
    pub rule_reloads: IntCounterVec,
    /// Rule evaluations that failed (query error, wrong result type, over the group limit), by group.
    pub rule_evaluation_failures: IntCounterVec,
    /// Notifications, by receiver and result (sent, failed).
    pub notifications: IntCounterVec,
    /// Notification delivery attempts, by receiver.
    pub notification_attempts: IntCounterVec,
    /// Live-feed messages published, by topic.
    pub live_messages: IntCounterVec,
    /// Live-feed clients connected now.
    pub live_clients: IntGauge,
    /// Live-feed messages a slow client missed.
    pub live_missed: IntCounter,
    /// Messages from live-feed clients that were refused (not JSON, unknown topic).
    pub live_refused: IntCounter,
    /// Log records stored since start.
    pub logstore_records: IntCounter,
    /// Log segment files.
    pub logstore_segments: IntGauge,
    /// Bytes of log segment files.
    pub logstore_bytes: IntGauge,
    /// Log records buffered in memory (durable in the write-ahead log).
    pub logstore_buffered_records: IntGauge,
    /// Log segments removed by retention, by reason (time, size).
    pub logstore_removed_segments: IntCounterVec,
    /// Log segments or chunks that could not be read.
    pub logstore_read_errors: IntCounter,
    /// Log segment or state writes that failed (retried).
    pub logstore_write_errors: IntCounter,
    /// Host summary figures that could not be computed, by figure.
    pub host_summary_failures: IntCounterVec,
    /// Dashboard files refused (unreadable, invalid), counted at every load.
    pub dashboard_errors: IntCounter,
    /// Dashboards loaded now.
    pub dashboards: IntGauge,
}

impl Metrics {
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
            connections: reg!(IntCounter::new("fleetwatch_ingest_connections_total", "Agent connections accepted.")),
            connected_agents: reg!(IntGauge::new("fleetwatch_ingest_connected_agents", "Agents connected now.")),
            clients_refused: reg!(IntCounterVec::new(Opts::new("fleetwatch_ingest_clients_refused_total", "Clients refused at the TLS handshake, by reason (no_certificate, unknown_ca, expired, revoked, not_yet_valid, invalid, handshake)."), &["reason"])),
            protocol_errors: reg!(IntCounterVec::new(Opts::new("fleetwatch_ingest_protocol_errors_total", "Agent connections closed for a malformed frame or a protocol violation, by reason."), &["reason"])),
            batches: reg!(IntCounterVec::new(Opts::new("fleetwatch_ingest_batches_total", "Batches answered, by result (applied, duplicate, partial, rejected)."), &["result"])),
            samples_ingested: reg!(IntCounter::new("fleetwatch_ingest_samples_total", "Samples stored.")),
            items_refused: reg!(IntCounterVec::new(Opts::new("fleetwatch_ingest_items_refused_total", "Samples and records refused by validation or limits, by reason."), &["reason"])),
            check_results: reg!(IntCounterVec::new(Opts::new("fleetwatch_ingest_check_results_total", "Health-check results stored, by status (healthy, degraded, unhealthy); refused ones are in fleetwatch_ingest_items_refused_total."), &["status"])),
            apply_seconds: reg!(Histogram::with_opts(HistogramOpts::new("fleetwatch_ingest_apply_seconds", "Time from receiving a batch to its durable acknowledgement.").buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]))),
            store_errors: reg!(IntCounter::new("fleetwatch_store_errors_total", "Batches not acknowledged because the store failed.")),
            store_series: reg!(IntGauge::new("fleetwatch_store_series", "Series in the store.")),
            store_samples: reg!(IntGauge::new("fleetwatch_store_samples", "Samples in the store.")),
            store_replaced_samples: reg!(IntGauge::new("fleetwatch_store_replaced_samples", "Samples that arrived for a timestamp already stored, since start (0 with exactly-once delivery).")),
            wal_bytes: reg!(IntGauge::new("fleetwatch_store_wal_bytes", "Bytes in the write-ahead log.")),
            store_blocks: reg!(IntGauge::new("fleetwatch_store_blocks", "Persisted blocks.")),
            store_block_bytes: reg!(IntGauge::new("fleetwatch_store_block_bytes", "Bytes of persisted blocks on disk.")),
            store_size_evictions: reg!(IntGauge::new("fleetwatch_store_size_evictions", "Blocks removed because the store reached store.max_bytes, since start.")),
            hosts: reg!(IntGaugeVec::new(Opts::new("fleetwatch_fleet_hosts", "Known hosts, by status (up, stale, down)."), &["status"])),
            http_requests: reg!(IntCounterVec::new(Opts::new("fleetwatch_http_requests_total", "HTTP requests, by route and status code."), &["route", "code"])),
            crl_reloads: reg!(IntCounterVec::new(Opts::new("fleetwatch_pki_crl_reloads_total", "Revocation list reloads, by result."), &["result"])),
            remote_write_samples: reg!(IntCounterVec::new(Opts::new("fleetwatch_remote_write_samples_total", "Samples forwarded by remote write, by endpoint and result (sent; rejected: the receiver answered 4xx)."), &["remote", "result"])),
            remote_write_requests: reg!(IntCounterVec::new(Opts::new("fleetwatch_remote_write_requests_total", "Remote-write requests, by endpoint and HTTP status code (error: no response)."), &["remote", "code"])),
            remote_write_retries: reg!(IntCounterVec::new(Opts::new("fleetwatch_remote_write_retries_total", "Remote-write requests retried after a 5xx, 429 or connection failure, by endpoint."), &["remote"])),
            remote_write_skipped: reg!(IntCounterVec::new(Opts::new("fleetwatch_remote_write_log_skips_total", "Times retention removed logged samples before the endpoint received them, by endpoint."), &["remote"])),
            rule_reloads: reg!(IntCounterVec::new(Opts::new("fleetwatch_rule_reloads_total", "Rule file reloads (SIGHUP or the admin API), by result (ok; refused: invalid files, the running rules kept)."), &["result"])),
            rule_evaluation_failures: reg!(IntCounterVec::new(Opts::new("fleetwatch_rule_evaluation_failures_total", "Rule evaluations that failed (query error, wrong result type, over the group's limit), by group."), &["group"])),
            notifications: reg!(IntCounterVec::new(Opts::new("fleetwatch_notifications_total", "Alert notifications, by receiver and result (sent; failed: every attempt failed)."), &["receiver", "result"])),
            notification_attempts: reg!(IntCounterVec::new(Opts::new("fleetwatch_notification_attempts_total", "Alert notification delivery attempts, by receiver (retries included)."), &["receiver"])),
            live_messages: reg!(IntCounterVec::new(Opts::new("fleetwatch_live_messages_total", "Messages published on the live WebSocket feed, by topic (hosts, alerts, logs)."), &["topic"])),
            live_clients: reg!(IntGauge::new("fleetwatch_live_clients", "WebSocket clients connected to the live feed now.")),
            live_refused: reg!(IntCounter::new("fleetwatch_live_refused_messages_total", "Messages from live-feed clients refused with an error reply (not JSON, not a subscription, unknown topic).")),
            live_missed: reg!(IntCounter::new("fleetwatch_live_missed_messages_total", "Live-feed messages that slow clients missed (they are told how many).")),
            logstore_records: reg!(IntCounter::new("fleetwatch_logstore_records_total", "Log records stored, since start.")),
            logstore_segments: reg!(IntGauge::new("fleetwatch_logstore_segments", "Log segment files.")),
            logstore_bytes: reg!(IntGauge::new("fleetwatch_logstore_bytes", "Bytes of log segment files on disk.")),
            logstore_buffered_records: reg!(IntGauge::new("fleetwatch_logstore_buffered_records", "Log records buffered in memory before compression (durable in the write-ahead log).")),
            logstore_removed_segments: reg!(IntCounterVec::new(Opts::new("fleetwatch_logstore_removed_segments_total", "Log segments removed by retention, by reason (time, size)."), &["reason"])),
            logstore_read_errors: reg!(IntCounter::new("fleetwatch_logstore_read_errors_total", "Log segments or chunks that could not be read (left out of queries; damaged segments set aside at start).")),
            logstore_write_errors: reg!(IntCounter::new("fleetwatch_logstore_write_errors_total", "Log segment or state writes that failed (records stay buffered and in the write-ahead log; retried).")),
            host_summary_failures: reg!(IntCounterVec::new(Opts::new("fleetwatch_host_summary_failures_total", "Host summary figures (cpu_ratio, memory_ratio...) whose query failed in a pass; they are null for every host in that pass."), &["figure"])),
            dashboard_errors: reg!(IntCounter::new("fleetwatch_dashboard_errors_total", "Dashboard files refused (unreadable, not TOML, unknown key, type or unit, bad width, a query that does not parse), counted at start and at every reload; the other files still load.")),
            dashboards: reg!(IntGauge::new("fleetwatch_dashboards", "Dashboards loaded now.")),
            remote_write_last_sent: reg!(IntGaugeVec::new(Opts::new("fleetwatch_remote_write_last_sent_timestamp_seconds", "Newest sample timestamp the endpoint has accepted, by endpoint."), &["remote"])),
            registry,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
