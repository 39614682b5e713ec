//! The data model shared by the agent and the aggregator: series, samples, log records, check
//! results, host facts, and the batch that carries them from one agent to the aggregator.
//!
//! These are wire types (they derive `Serialize`); their encoding lives in [`crate::codec`].

use serde::{Deserialize, Serialize};

/// One label: a name and a value, Prometheus conventions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// Label name, `[a-zA-Z_][a-zA-Z0-9_]*`.
    pub name: String,
    /// Label value, any UTF-8.
    pub value: String,
}

impl Label {
    /// A label from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// A series identity: metric name plus labels. Labels are kept sorted by name and unique.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series {
    /// The metric name, `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    pub name: String,
    /// Labels, sorted by name, without `__name__`.
    pub labels: Vec<Label>,
}

impl Series {
    /// A series with its labels sorted by name; a later duplicate name replaces an earlier one.
    pub fn new(name: impl Into<String>, labels: impl IntoIterator<Item = Label>) -> Self {
        let mut labels: Vec<Label> = labels.into_iter().collect();
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        // keep the last occurrence of each name
        let mut out: Vec<Label> = Vec::with_capacity(labels.len());
        for l in labels {
            match out.last_mut() {
                Some(prev) if prev.name == l.name => *prev = l,
                _ => out.push(l),
            }
        }
        Self {
            name: name.into(),
            labels: out,
        }
    }

    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }

    /// Sets (or replaces) a label, keeping the labels sorted.
    pub fn set_label(&mut self, name: &str, value: impl Into<String>) {
        match self.labels.binary_search_by(|l| l.name.as_str().cmp(name)) {
            Ok(i) => self.labels[i].value = value.into(),
            Err(i) => self.labels.insert(i, Label::new(name, value)),
        }
    }

    /// Removes a label and returns its value.
    pub fn remove_label(&mut self, name: &str) -> Option<String> {
        let i = self.labels.iter().position(|l| l.name == name)?;
        Some(self.labels.remove(i).value)
    }
}

/// One observation: milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch (the Prometheus resolution).
    pub timestamp_ms: i64,
    /// The value.
    pub value: f64,
}

/// The Prometheus metric type of a series, carried so that federation can print `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing count (name ends in `_total`).
    Counter,
    /// Type not known (for example scraped without metadata).
    #[default]
    Untyped,
}

impl MetricKind {
    /// The word Prometheus uses in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Gauge => "gauge",
            MetricKind::Counter => "counter",
            MetricKind::Untyped => "untyped",
        }
    }
}

/// Samples of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSamples {
    /// Which series.
    pub series: Series,
    /// Its type.
    pub kind: MetricKind,
    /// Its samples, in any order.
    pub samples: Vec<Sample>,
}

/// Severity of a log record, ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LogLevel {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// An operation failed.
    Error,
    /// The program or a component cannot go on.
    Critical,
    /// No level could be determined.
    Unknown,
}

/// One log record as shipped by an agent. The host is not carried: the aggregator takes it from
/// the agent's certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// Where it came from: a file path, `journald`, or the name of the pushing application.
    pub source: String,
    /// Severity.
    pub level: LogLevel,
    /// The message text.
    pub message: String,
    /// Structured fields (parsed JSON, promoted well-known fields).
    pub fields: Vec<(String, String)>,
}

/// Outcome of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CheckStatus {
    /// Working as expected.
    Healthy,
    /// Working, but outside a warning threshold.
    Degraded,
    /// Not working.
    Unhealthy,
}

/// One result of one health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's configured name.
    pub name: String,
    /// Milliseconds since the Unix epoch when the check finished.
    pub timestamp_ms: i64,
    /// The outcome.
    pub status: CheckStatus,
    /// How long the check took.
    pub duration_seconds: f64,
    /// A human-readable detail (status code, error, value seen).
    pub detail: String,
}

/// Facts about the host an agent runs on, sent when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostFacts {
    /// The hostname the OS reports (informational; identity comes from the certificate).
    pub hostname: String,
    /// Operating system name and version, for example `Debian GNU/Linux 12`.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU architecture, for example `x86_64`.
    pub arch: String,
    /// Number of logical CPUs.
    pub cpu_count: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Boot time, seconds since the Unix epoch.
    pub boot_time_seconds: u64,
}

/// Which ordered stream of an agent's buffer a batch belongs to. Order is kept per lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Lane {
    /// Metric samples and check results.
    Metrics,
    /// Log records.
    Logs,
}

impl Lane {
    /// Every lane, in a fixed order.
    pub const ALL: [Lane; 2] = [Lane::Metrics, Lane::Logs];

    /// Stable one-byte tag (used in buffer keys).
    pub fn tag(self) -> u8 {
        match self {
            Lane::Metrics => 1,
            Lane::Logs => 2,
        }
    }

    /// The lane for a tag written by [`Lane::tag`].
    pub fn from_tag(tag: u8) -> Option<Lane> {
        match tag {
            1 => Some(Lane::Metrics),
            2 => Some(Lane::Logs),
            _ => None,
        }
    }

    /// A short name for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Metrics => "metrics",
            Lane::Logs => "logs",
        }
    }
}

/// What an agent ships: everything collected in one batching window, with the agent's sequence
/// number. Sequence numbers are unique per agent and never reused, across restarts too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Per-agent sequence number.
    pub seq: u64,
    /// The lane it was buffered in.
    pub lane: Lane,
    /// Agent clock when the batch was sealed, milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Metric samples.
    pub metrics: Vec<SeriesSamples>,
    /// Log records.
    pub logs: Vec<LogRecord>,
    /// Health check results.
    pub checks: Vec<CheckResult>,
}

impl Batch {
    /// An empty batch (sequence number to be assigned by the buffer).
    pub fn new(lane: Lane, created_ms: i64) -> Self {
        Self {
            seq: 0,
            lane,
            created_ms,
            metrics: Vec::new(),
            logs: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Number of samples, log records and check results.
    pub fn item_count(&self) -> usize {
        self.metrics.iter().map(|s| s.samples.len()).sum::<usize>()
            + self.logs.len()
            + self.checks.len()
    }

    /// True when the batch carries nothing.
    pub fn is_empty(&self) -> bool {
        self.item_count() == 0
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_labels_sorted_and_unique() {
        let s = Series::new(
            "x",
            [
                Label::new("b", "1"),
                Label::new("a", "2"),
                Label::new("b", "3"),
            ],
        );
        assert_eq!(s.labels, vec![Label::new("a", "2"), Label::new("b", "3")]);
    }

    #[test]
    fn set_and_remove_label_keep_order() {
        let mut s = Series::new("x", [Label::new("c", "1")]);
        s.set_label("a", "0");
        s.set_label("c", "2");
        assert_eq!(s.labels, vec![Label::new("a", "0"), Label::new("c", "2")]);
        assert_eq!(s.remove_label("a").as_deref(), Some("0"));
        assert_eq!(s.label("c"), Some("2"));
    }
}
