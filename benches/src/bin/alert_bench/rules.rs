//! The bench's rule file: twelve shapes of alerting and recording rules that fleets run,
//! thresholds varied so that some alerts fire and most do not, in groups at 15 s.

pub(crate) const EVAL_INTERVAL: &str = "15s";

/// Rule `i` of the file: twelve shapes, thresholds varied so that some fire and some do not.
pub(crate) fn rule(i: usize) -> String {
    let v = i / 12;
    let alert = |name: &str, expr: String, for_: &str, summary: &str| {
        format!(
            "      - alert: {name}{v}\n        expr: '{expr}'\n        for: {for_}\n        labels:\n          severity: {}\n        annotations:\n          summary: \"{summary}\"\n",
            if v.is_multiple_of(3) { "critical" } else { "warning" }
        )
    };
    let record =
        |name: &str, expr: &str| format!("      - record: {name}{v}\n        expr: '{expr}'\n");
    match i % 12 {
        0 => alert(
            "CpuHigh",
            format!("100 * (1 - avg by (host) (rate(node_cpu_seconds_total{{mode=\"idle\"}}[5m]))) > {}", 80 + v % 15),
            "5m",
            "{{ $labels.host }} CPU at {{ humanize $value }}%",
        ),
        1 => record("host:cpu_busy:ratio", "1 - avg by (host) (rate(node_cpu_seconds_total{mode=\"idle\"}[5m]))"),
        2 => alert(
            "MemoryHigh",
            format!("(1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes) * 100 > {}", 90 + v % 8),
            "2m",
            "{{ $labels.host }} memory at {{ humanize $value }}%",
        ),
        3 => alert(
            "FilesystemFull",
            format!("100 * (1 - node_filesystem_avail_bytes / node_filesystem_size_bytes) > {}", 90 + v % 8),
            "5m",
            "{{ $labels.mountpoint }} on {{ $labels.host }} is {{ humanize $value }}% full",
        ),
        4 => alert(
            "FilesystemFillingUp",
            format!("predict_linear(node_filesystem_avail_bytes[10m], {}) < 0", 3600 * (1 + v % 8)),
            "5m",
            "{{ $labels.mountpoint }} on {{ $labels.host }} fills up soon",
        ),
        5 => record("host_route:http_requests:rate5m", "sum by (host, route) (rate(http_requests_total[5m]))"),
        6 => alert(
            "ErrorRatioHigh",
            format!(
                "sum by (host) (rate(http_requests_total{{status=\"500\"}}[5m])) / sum by (host) (rate(http_requests_total[5m])) > {}",
                0.05 + 0.005 * (v % 10) as f64
            ),
            "5m",
            "{{ $labels.host }} answers {{ humanizePercentage $value }} errors",
        ),
        7 => record(
            "route:http_request_duration_seconds:p99_",
            "histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket[5m])))",
        ),
        8 => alert(
            "HostDown",
            "up{job=\"node\"} == 0".to_string(),
            "2m",
            "{{ $labels.host }} sends no data",
        ),
        9 => alert(
            "QueueBacklog",
            format!("avg_over_time(queue_length[5m]) > {}", 500 + 10 * (v % 40)),
            "5m",
            "queue {{ $labels.queue }} on {{ $labels.host }} holds {{ $value }} items",
        ),
        10 => alert(
            "NetworkReceiveHigh",
            format!("rate(node_network_receive_bytes_total[5m]) > {}", 8e5 + 2e4 * (v % 10) as f64),
            "5m",
            "{{ $labels.device }} on {{ $labels.host }} receives {{ humanize $value }}B/s",
        ),
        _ => alert(
            "LoadPerCpuHigh",
            format!(
                "node_load5 / on (host) count by (host) (node_cpu_seconds_total{{mode=\"idle\"}}) > {}",
                1.6 + 0.02 * (v % 20) as f64
            ),
            "10m",
            "{{ $labels.host }} load per CPU {{ $value }}",
        ),
    }
}

pub(crate) fn rule_file(rules: usize, group_size: usize) -> String {
    let mut out = String::from("groups:\n");
    for (g, start) in (0..rules).step_by(group_size.max(1)).enumerate() {
        out.push_str(&format!(
            "  - name: bench-{g:03}\n    interval: {EVAL_INTERVAL}\n    rules:\n"
        ));
        for i in start..(start + group_size).min(rules) {
            out.push_str(&rule(i));
        }
    }
    out
}
