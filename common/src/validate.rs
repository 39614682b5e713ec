//! Batch validation: the limits the aggregator enforces on what an agent sends, and the rewrite
//! that takes the `host` label away from the payload.
//!
//! A breach that concerns the batch as a whole rejects it; a breach in one series or record
//! drops that item only, and the acknowledgement says how many items were dropped and why.

use crate::model::{Batch, CheckResult, Series};
use thiserror::Error;

/// The label the aggregator sets from the agent's certificate.
pub const HOST_LABEL: &str = "host";
/// Where a payload's own `host` label is moved to (Prometheus' `exported_` convention).
pub const EXPORTED_HOST_LABEL: &str = "exported_host";

/// Limits on one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Series in one batch.
    pub max_series_per_batch: usize,
    /// Samples, log records and check results in one batch.
    pub max_items_per_batch: usize,
    /// Labels on one series.
    pub max_labels_per_series: usize,
    /// Bytes in a metric name.
    pub max_metric_name_bytes: usize,
    /// Bytes in a label name.
    pub max_label_name_bytes: usize,
    /// Bytes in a label value.
    pub max_label_value_bytes: usize,
    /// Bytes in a log message.
    pub max_log_message_bytes: usize,
    /// Structured fields on one log record.
    pub max_log_fields: usize,
    /// Bytes in a check result's name.
    pub max_check_name_bytes: usize,
    /// Bytes in a check result's detail.
    pub max_check_detail_bytes: usize,
    /// How far in the future (aggregator clock) a timestamp may be.
    pub max_future_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series_per_batch: 100_000,
            max_items_per_batch: 1_000_000,
            max_labels_per_series: 64,
            max_metric_name_bytes: 256,
            max_label_name_bytes: 128,
            max_label_value_bytes: 2048,
            max_log_message_bytes: 1024 * 1024,
            max_log_fields: 256,
            max_check_name_bytes: 128,
            max_check_detail_bytes: 4096,
            max_future_ms: 10 * 60 * 1000,
        }
    }
}

/// Why a batch or an item in it was refused. The text goes back to the agent and into logs.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Breach {
    /// Too many series in the batch.
    #[error("batch has {0} series, limit is {1}")]
    TooManySeries(usize, usize),
    /// Too many items in the batch.
    #[error("batch has {0} items, limit is {1}")]
    TooManyItems(usize, usize),
    /// Bad metric name.
    #[error("invalid metric name {0:?}")]
    MetricName(String),
    /// Metric name too long.
    #[error("metric name of {0} bytes starting {1:?} exceeds {2} bytes")]
    MetricNameTooLong(usize, String, usize),
    /// Too many labels on one series.
    #[error("series {0} has {1} labels, limit is {2}")]
    TooManyLabels(String, usize, usize),
    /// Bad label name.
    #[error("series {0} has invalid label name {1:?}")]
    LabelName(String, String),
    /// Label name too long.
    #[error("series {0} has a label name of {1} bytes, limit is {2}")]
    LabelNameTooLong(String, usize, usize),
    /// Label value too long.
    #[error("series {0} label {1} has a value of {2} bytes, limit is {3}")]
    LabelValueTooLong(String, String, usize, usize),
    /// Duplicate label name.
    #[error("series {0} has label {1} twice")]
    DuplicateLabel(String, String),
    /// A timestamp too far ahead.
    #[error("series {0} has a sample {1} ms in the future (agent clock ahead?)")]
    FutureSample(String, i64),
    /// Log message too long.
    #[error("log record from {0} has a message of {1} bytes, limit is {2}")]
    LogTooLong(String, usize, usize),
    /// Too many fields on a log record.
    #[error("log record from {0} has {1} fields, limit is {2}")]
    TooManyFields(String, usize, usize),
    /// A check result's name is empty, too long or holds control characters.
    #[error("check result name {0:?} is invalid: 1 to {1} bytes without control characters")]
    CheckName(String, usize),
    /// A check result's detail is too long.
    #[error("check result {0} has a detail of {1} bytes, limit is {2}")]
    CheckDetailTooLong(String, usize, usize),
    /// A check result's duration is negative or not a number.
    #[error("check result {0} has an invalid duration {1}")]
    CheckDuration(String, String),
    /// A check result's timestamp is too far ahead.
    #[error("check result {0} is {1} ms in the future (agent clock ahead?)")]
    FutureCheck(String, i64),
    /// The host already has as many series as it may; new ones are refused.
    #[error("host {0} is at its limit of {1} series; {2} new series refused")]
    TooManySeriesForHost(String, usize, u64),
    /// The store already holds as many active series as it may; new ones are refused.
    #[error(
        "the store is at its limit of {0} active series; {1} new series from this batch refused"
    )]
    TooManySeriesTotal(usize, u64),
}

impl Breach {
    /// A stable short name for the metric label `reason`.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Breach::TooManySeries(..) => "too_many_series",
            Breach::TooManyItems(..) => "too_many_items",
            Breach::MetricName(..) | Breach::MetricNameTooLong(..) => "metric_name",
            Breach::TooManyLabels(..) => "too_many_labels",
            Breach::LabelName(..) | Breach::LabelNameTooLong(..) | Breach::DuplicateLabel(..) => {
                "label_name"
            }
            Breach::LabelValueTooLong(..) => "label_value_too_long",
            Breach::FutureSample(..) => "future_timestamp",
            Breach::LogTooLong(..) => "log_too_long",
            Breach::TooManyFields(..) => "too_many_fields",
            Breach::CheckName(..) => "check_name",
            Breach::CheckDetailTooLong(..) => "check_detail_too_long",
            Breach::CheckDuration(..) => "check_duration",
            Breach::FutureCheck(..) => "future_timestamp",
            Breach::TooManySeriesForHost(..) => "series_per_host",
            Breach::TooManySeriesTotal(..) => "series_total",
        }
    }
}

/// The result of validating a batch that was not rejected as a whole.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Items dropped.
    pub dropped_items: u64,
    /// Every breach, one per dropped series or record.
    pub breaches: Vec<Breach>,
}

/// True for a valid Prometheus metric name.
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True for a valid Prometheus label name that is not reserved (`__` prefix).
pub fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn short(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn check_series(series: &Series, limits: &Limits) -> Result<(), Breach> {
    let name = &series.name;
    if name.len() > limits.max_metric_name_bytes {
        return Err(Breach::MetricNameTooLong(
            name.len(),
            short(name),
            limits.max_metric_name_bytes,
        ));
    }
    if !is_metric_name(name) {
        return Err(Breach::MetricName(short(name)));
    }
    if series.labels.len() > limits.max_labels_per_series {
        return Err(Breach::TooManyLabels(
            name.clone(),
            series.labels.len(),
            limits.max_labels_per_series,
        ));
    }
    for (i, label) in series.labels.iter().enumerate() {
        if label.name.len() > limits.max_label_name_bytes {
            return Err(Breach::LabelNameTooLong(
                name.clone(),
                label.name.len(),
                limits.max_label_name_bytes,
            ));
        }
        if !is_label_name(&label.name) {
            return Err(Breach::LabelName(name.clone(), short(&label.name)));
        }
        if label.value.len() > limits.max_label_value_bytes {
            return Err(Breach::LabelValueTooLong(
                name.clone(),
                label.name.clone(),
                label.value.len(),
                limits.max_label_value_bytes,
            ));
        }
        if i > 0 && series.labels[i - 1].name >= label.name {
            return Err(Breach::DuplicateLabel(name.clone(), label.name.clone()));
        }
    }
    Ok(())
}

/// Validates `batch` in place: drops the items that break a limit, moves a payload `host` label
/// to `exported_host` and sets `host` to `host`. Returns `Err` when the batch as a whole breaks
/// a limit (nothing is to be stored).
pub fn validate_batch(
    batch: &mut Batch,
    host: &str,
    limits: &Limits,
    now_ms: i64,
) -> Result<Report, Breach> {
    if batch.metrics.len() > limits.max_series_per_batch {
        return Err(Breach::TooManySeries(
            batch.metrics.len(),
            limits.max_series_per_batch,
        ));
    }
    let items = batch.item_count();
    if items > limits.max_items_per_batch {
        return Err(Breach::TooManyItems(items, limits.max_items_per_batch));
    }
    let mut report = Report::default();
    let horizon = now_ms.saturating_add(limits.max_future_ms);
    batch.metrics.retain_mut(|ss| {
        // Labels arrive sorted from our agents, but the wire does not guarantee it.
        ss.series.labels.sort_by(|a, b| a.name.cmp(&b.name));
        if let Err(breach) = check_series(&ss.series, limits) {
            report.dropped_items += ss.samples.len().max(1) as u64;
            report.breaches.push(breach);
            return false;
        }
        let before = ss.samples.len();
        ss.samples.retain(|s| s.timestamp_ms <= horizon);
        if ss.samples.len() < before {
            let late = ss.samples.len();
            report.dropped_items += (before - late) as u64;
            report.breaches.push(Breach::FutureSample(
                ss.series.name.clone(),
                horizon - now_ms,
            ));
        }
        if let Some(v) = ss.series.remove_label(HOST_LABEL) {
            ss.series.set_label(EXPORTED_HOST_LABEL, v);
        }
        ss.series.set_label(HOST_LABEL, host);
        !ss.samples.is_empty()
    });
    batch.logs.retain(|rec| {
        let breach = if rec.message.len() > limits.max_log_message_bytes {
            Some(Breach::LogTooLong(
                short(&rec.source),
                rec.message.len(),
                limits.max_log_message_bytes,
            ))
        } else if rec.fields.len() > limits.max_log_fields {
            Some(Breach::TooManyFields(
                short(&rec.source),
                rec.fields.len(),
                limits.max_log_fields,
            ))
        } else {
            None
        };
        match breach {
            Some(b) => {
                report.dropped_items += 1;
                report.breaches.push(b);
                false
            }
            None => true,
        }
    });
    batch
        .checks
        .retain(|check| match check_result_breach(check, limits, now_ms) {
            Some(b) => {
                report.dropped_items += 1;
                report.breaches.push(b);
                false
            }
            None => true,
        });
    Ok(report)
}

fn check_result_breach(check: &CheckResult, limits: &Limits, now_ms: i64) -> Option<Breach> {
    let name = &check.name;
    if name.is_empty()
        || name.len() > limits.max_check_name_bytes
        || name.chars().any(char::is_control)
    {
        return Some(Breach::CheckName(short(name), limits.max_check_name_bytes));
    }
    if check.detail.len() > limits.max_check_detail_bytes {
        return Some(Breach::CheckDetailTooLong(
            name.clone(),
            check.detail.len(),
            limits.max_check_detail_bytes,
        ));
    }
    if !(check.duration_seconds.is_finite() && check.duration_seconds >= 0.0) {
        return Some(Breach::CheckDuration(
            name.clone(),
            check.duration_seconds.to_string(),
        ));
    }
    if check.timestamp_ms > now_ms.saturating_add(limits.max_future_ms) {
        return Some(Breach::FutureCheck(
            name.clone(),
            check.timestamp_ms - now_ms,
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn batch_with(series: Series) -> Batch {
        let mut b = Batch::new(Lane::Metrics, 0);
        b.metrics.push(SeriesSamples {
            series,
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: 1_000,
                value: 1.0,
            }],
        });
        b
    }

    #[test]
    fn host_label_comes_from_identity_not_payload() {
        let mut b = batch_with(Series::new("m", [Label::new("host", "evil")]));
        let report = validate_batch(&mut b, "web-1", &Limits::default(), 1_000).unwrap();
        assert_eq!(report.dropped_items, 0);
        let s = &b.metrics[0].series;
        assert_eq!(s.label("host"), Some("web-1"));
        assert_eq!(s.label("exported_host"), Some("evil"));
    }

    #[test]
    fn huge_label_value_drops_the_series_with_a_reason() {
        let mut b = batch_with(Series::new("m", [Label::new("path", "x".repeat(10_000))]));
        b.metrics
            .push(batch_with(Series::new("ok", [])).metrics.remove(0));
        let report = validate_batch(&mut b, "h", &Limits::default(), 1_000).unwrap();
        assert_eq!(report.dropped_items, 1);
        assert_eq!(report.breaches[0].reason_label(), "label_value_too_long");
        assert!(report.breaches[0].to_string().contains("10000 bytes"));
        assert_eq!(b.metrics.len(), 1);
        assert_eq!(b.metrics[0].series.name, "ok");
    }

    #[test]
    fn invalid_names_are_refused() {
        assert!(!is_metric_name("1abc"));
        assert!(!is_metric_name(""));
        assert!(is_metric_name("node_load1"));
        assert!(!is_label_name("__name__"));
        assert!(!is_label_name("a-b"));
        let mut b = batch_with(Series::new("bad-name", []));
        let r = validate_batch(&mut b, "h", &Limits::default(), 0).unwrap();
        assert_eq!(r.breaches, vec![Breach::MetricName("bad-name".into())]);
    }

    #[test]
    fn too_many_series_rejects_the_batch() {
        let limits = Limits {
            max_series_per_batch: 1,
            ..Limits::default()
        };
        let mut b = batch_with(Series::new("a", []));
        b.metrics.push(b.metrics[0].clone());
        assert_eq!(
            validate_batch(&mut b, "h", &limits, 0),
            Err(Breach::TooManySeries(2, 1))
        );
    }

    #[test]
    fn future_samples_are_dropped() {
        let mut b = batch_with(Series::new("a", []));
        b.metrics[0].samples.push(Sample {
            timestamp_ms: 10_000_000,
            value: 2.0,
        });
        let r = validate_batch(&mut b, "h", &Limits::default(), 1_000).unwrap();
        assert_eq!(r.dropped_items, 1);
        assert_eq!(b.metrics[0].samples.len(), 1);
    }

    #[test]
    fn bad_check_results_are_dropped_with_a_reason() {
        let ok = CheckResult {
            name: "redis".into(),
            timestamp_ms: 1_000,
            status: CheckStatus::Degraded,
            duration_seconds: 0.1,
            detail: "list votes has 600 items".into(),
        };
        let mut b = Batch::new(Lane::Metrics, 0);
        b.checks = vec![
            ok.clone(),
            CheckResult {
                name: "x".repeat(300),
                ..ok.clone()
            },
            CheckResult {
                name: "tab\there".into(),
                ..ok.clone()
            },
            CheckResult {
                detail: "d".repeat(5000),
                ..ok.clone()
            },
            CheckResult {
                duration_seconds: f64::NAN,
                ..ok.clone()
            },
            CheckResult {
                timestamp_ms: 10_000_000,
                ..ok.clone()
            },
        ];
        let r = validate_batch(&mut b, "h", &Limits::default(), 1_000).unwrap();
        assert_eq!(b.checks, vec![ok]);
        assert_eq!(r.dropped_items, 5);
        let reasons: Vec<_> = r.breaches.iter().map(Breach::reason_label).collect();
        assert_eq!(
            reasons,
            [
                "check_name",
                "check_name",
                "check_detail_too_long",
                "check_duration",
                "future_timestamp"
            ]
        );
        assert!(r.breaches[2].to_string().contains("5000 bytes"));
        assert!(r.breaches[4]
            .to_string()
            .contains("9999000 ms in the future"));
    }
}
