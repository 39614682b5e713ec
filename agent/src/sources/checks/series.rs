//! From check results to series: `fleetwatch_check_status` and
//! `fleetwatch_check_duration_seconds` per check, the check's own values, and the host's
//! overall `fleetwatch_host_health_status`.
//!
//! Status encoding: one gauge, 0 healthy, 1 degraded, 2 unhealthy. Higher is worse, so the
//! worst of many is `max`, "not healthy" is `> 0` and "unhealthy" is `== 2` in alert rules.

use super::Value;
use fleetwatch_common::model::{
    CheckResult, CheckStatus, Label, MetricKind, Sample, Series, SeriesSamples,
};

/// The per-check status series.
pub const STATUS_METRIC: &str = "fleetwatch_check_status";
/// The per-check duration series.
pub const DURATION_METRIC: &str = "fleetwatch_check_duration_seconds";
/// The host's overall status: the worst latest status of its checks.
pub const HOST_HEALTH_METRIC: &str = "fleetwatch_host_health_status";
/// Longest detail kept in a result, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// The status as a series value: 0 healthy, 1 degraded, 2 unhealthy.
pub fn status_value(status: CheckStatus) -> f64 {
    match status {
        CheckStatus::Healthy => 0.0,
        CheckStatus::Degraded => 1.0,
        CheckStatus::Unhealthy => 2.0,
    }
}

fn gauge(name: &str, labels: Vec<Label>, timestamp_ms: i64, value: f64) -> SeriesSamples {
    SeriesSamples {
        series: Series::new(name, labels),
        kind: MetricKind::Gauge,
        samples: vec![Sample {
            timestamp_ms,
            value,
        }],
    }
}

/// Status, duration and the probe's values of one result.
pub(super) fn check_series(
    result: &CheckResult,
    kind: &str,
    values: &[Value],
) -> Vec<SeriesSamples> {
    let ts = result.timestamp_ms;
    let base = || {
        vec![
            Label::new("check", result.name.clone()),
            Label::new("kind", kind),
        ]
    };
    let mut out = vec![
        gauge(STATUS_METRIC, base(), ts, status_value(result.status)),
        gauge(DURATION_METRIC, base(), ts, result.duration_seconds),
    ];
    for v in values {
        let mut labels = vec![Label::new("check", result.name.clone())];
        labels.extend(v.labels.iter().cloned());
        out.push(gauge(v.name, labels, ts, v.value));
    }
    out
}

/// `fleetwatch_host_health_status` with the given worst status.
pub(super) fn host_health(status: CheckStatus, timestamp_ms: i64) -> SeriesSamples {
    gauge(
        HOST_HEALTH_METRIC,
        Vec::new(),
        timestamp_ms,
        status_value(status),
    )
}

/// `detail` cut to [`MAX_DETAIL_BYTES`] at a character boundary, with `…` when cut.
pub(super) fn bounded_detail(detail: &str) -> String {
    if detail.len() <= MAX_DETAIL_BYTES {
        return detail.to_string();
    }
    let mut end = MAX_DETAIL_BYTES - '…'.len_utf8();
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &detail[..end])
}

/// Seconds for people: `0.012`, `1.5`, `30`.
pub(super) fn seconds_text(s: f64) -> String {
    let text = format!("{s:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_string()
}
