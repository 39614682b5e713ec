//! Alerts fire at the same evaluation as Prometheus's on the same data. The same rule file and
//! the same 31 minutes of samples go through fleetwatch's store and rule manager, evaluated once
//! a minute; the firing alerts fleetwatch finds at every evaluation (labels and rendered
//! annotations) are written as the expectations of a `promtool test rules` file, and Prometheus's
//! own rule engine (promtool, Debian's `prometheus`) must find exactly those alerts at exactly
//! those evaluations. The data covers `for`, a pending alert that clears, `keep_firing_for`,
//! a recording rule feeding an alert, rate over a counter reset, `absent` against the lookback,
//! a staleness marker, and `$value` / `humanize` in annotations.

mod support;

use fleetwatch_aggregator::metrics::Metrics;
use fleetwatch_aggregator::rules::lifecycle::AlertState;
use fleetwatch_aggregator::rules::RuleManager;
use fleetwatch_aggregator::store::{Storage, StoreConfig};
use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::Command;
use support::peer_binary;

const RULES: &str = r#"groups:
  - name: compat
    rules:
      - record: job:http_requests:rate2m
        expr: sum by (job) (rate(http_requests_total[2m]))
      - alert: HighRequestRate
        expr: job:http_requests:rate2m > 2
        for: 3m
        labels:
          severity: warning
        annotations:
          summary: "{{ $labels.job }} serves {{ $value }} requests/s"
          description: "{{ humanize $value }} per second"
      - alert: QueueBacklog
        expr: queue_length > 500
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: "queue {{ $labels.queue }} holds {{ $value }} items"
      - alert: InstanceDown
        expr: up == 0
        for: 2m
        keep_firing_for: 3m
        labels:
          severity: critical
        annotations:
          summary: "{{ $labels.instance }} of {{ $labels.job }} is down"
      - alert: HeartbeatMissing
        expr: absent(heartbeat_total{job="cron"})
        for: 1m
      - alert: WorkerBusy
        expr: worker_busy == 1
        for: 2m
        labels:
          worker: "{{ $labels.worker }}"
"#;

/// Minutes of data and evaluations (0 ..= MINUTES).
const MINUTES: usize = 30;

/// One sample per minute: a value, nothing (`_`), or a staleness marker.
#[derive(Clone, Copy)]
enum Point {
    Value(f64),
    Missing,
    Stale,
}

struct InputSeries {
    name: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    points: Vec<Point>,
}

fn series(
    name: &'static str,
    labels: &[(&'static str, &'static str)],
    f: impl Fn(usize) -> Point,
) -> InputSeries {
    InputSeries {
        name,
        labels: labels.to_vec(),
        points: (0..=MINUTES).map(f).collect(),
    }
}

fn input() -> Vec<InputSeries> {
    use Point::*;
    // a counter's value at minute i given its per-minute increase
    let counter =
        |per_minute: fn(usize) -> f64| move |i: usize| (0..i).map(per_minute).sum::<f64>();
    let api_a = counter(|i| if (10..20).contains(&i) { 150.0 } else { 30.0 });
    let web_c = counter(|_| 20.0);
    vec![
        series(
            "http_requests_total",
            &[("job", "api"), ("instance", "a")],
            move |i| Value(api_a(i)),
        ),
        series(
            "http_requests_total",
            &[("job", "api"), ("instance", "b")],
            |i| Value(60.0 * i as f64),
        ),
        // a counter reset at minute 15
        series(
            "http_requests_total",
            &[("job", "web"), ("instance", "c")],
            move |i| {
                Value(if i < 15 {
                    web_c(i)
                } else {
                    web_c(i - 15) + 5.0
                })
            },
        ),
        series("queue_length", &[("queue", "orders")], |i| {
            Value(match i {
                0..=4 => 100.0,
                5..=16 => 600.0,
                _ => 50.0,
            })
        }),
        // over the threshold for three minutes only: pending, never firing
        series("queue_length", &[("queue", "mail")], |i| {
            Value(if (8..=10).contains(&i) { 700.0 } else { 10.0 })
        }),
        series("up", &[("job", "node"), ("instance", "n1")], |i| {
            Value(if (12..=15).contains(&i) { 0.0 } else { 1.0 })
        }),
        series("up", &[("job", "node"), ("instance", "n2")], |_| Value(1.0)),
        // the last heartbeat at minute 19; absent() once the lookback has passed it
        series("heartbeat_total", &[("job", "cron")], |i| {
            if i <= 19 {
                Value(i as f64)
            } else {
                Missing
            }
        }),
        // gone at once at minute 10 (a staleness marker), not after the lookback
        series("worker_busy", &[("worker", "w1")], |i| match i {
            0..=9 => Value(1.0),
            10 => Stale,
            _ => Missing,
        }),
        series("worker_busy", &[("worker", "w2")], |i| {
            Value(if i >= 20 { 1.0 } else { 0.0 })
        }),
    ]
}

const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Firing alerts per evaluation minute, per alert name: (labels without alertname, annotations).
type Firing = BTreeMap<(usize, String), Vec<(BTreeMap<String, String>, BTreeMap<String, String>)>>;

/// Runs the data and the rules through fleetwatch; returns the firing alerts per evaluation.
fn fleetwatch_alerts(dir: &std::path::Path, base_ms: i64) -> Firing {
    let (store, _) = Storage::open(&dir.join("store"), StoreConfig::default()).unwrap();
    let metrics = input()
        .into_iter()
        .map(|s| SeriesSamples {
            series: Series::new(s.name, s.labels.iter().map(|(k, v)| Label::new(*k, *v))),
            kind: MetricKind::Gauge,
            samples: s
                .points
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let value = match p {
                        Point::Value(v) => *v,
                        Point::Stale => f64::from_bits(STALE_NAN),
                        Point::Missing => return None,
                    };
                    Some(Sample {
                        timestamp_ms: base_ms + i as i64 * 60_000,
                        value,
                    })
                })
                .collect(),
        })
        .collect();
    store.append_system(metrics, base_ms).unwrap();
    std::fs::write(dir.join("rules.yml"), RULES).unwrap();
    let rules = RuleManager::open(vec![dir.join("rules.yml")], 60_000, dir, Metrics::new())
        .expect("the rule file loads");
    let mut firing = Firing::new();
    for minute in 0..=MINUTES {
        rules.evaluate_due(&store, base_ms + minute as i64 * 60_000);
        for a in rules.alerts() {
            if a.state != AlertState::Firing {
                continue;
            }
            let mut labels = a.labels.clone();
            let name = labels.remove("alertname").unwrap_or_default();
            firing
                .entry((minute, name))
                .or_default()
                .push((labels, a.annotations.clone()));
        }
    }
    firing
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn promtool_test_file(firing: &Firing) -> String {
    let mut out = String::new();
    writeln!(out, "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:").unwrap();
    for s in input() {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={}", yaml_string(v)))
            .collect();
        let values: Vec<String> = s
            .points
            .iter()
            .map(|p| match p {
                Point::Value(v) => format!("{v}"),
                Point::Missing => "_".into(),
                Point::Stale => "stale".into(),
            })
            .collect();
        writeln!(
            out,
            "      - series: {}\n        values: {}",
            yaml_string(&format!("{}{{{}}}", s.name, labels.join(", "))),
            yaml_string(&values.join(" "))
        )
        .unwrap();
    }
    writeln!(out, "    alert_rule_test:").unwrap();
    let names = [
        "HighRequestRate",
        "QueueBacklog",
        "InstanceDown",
        "HeartbeatMissing",
        "WorkerBusy",
    ];
    for minute in 0..=MINUTES {
        for name in names {
            writeln!(
                out,
                "      - eval_time: {minute}m\n        alertname: {name}"
            )
            .unwrap();
            match firing.get(&(minute, name.to_string())) {
                None => writeln!(out, "        exp_alerts: []").unwrap(),
                Some(alerts) => {
                    writeln!(out, "        exp_alerts:").unwrap();
                    for (labels, annotations) in alerts {
                        writeln!(out, "          - exp_labels:").unwrap();
                        for (k, v) in labels {
                            writeln!(out, "              {k}: {}", yaml_string(v)).unwrap();
                        }
                        writeln!(out, "            exp_annotations:").unwrap();
                        for (k, v) in annotations {
                            writeln!(out, "              {k}: {}", yaml_string(v)).unwrap();
                        }
                    }
                }
            }
        }
    }
    out
}

/// The minutes at which `name` fired in fleetwatch, for the sanity checks below.
fn minutes_firing(firing: &Firing, name: &str) -> Vec<usize> {
    firing
        .keys()
        .filter(|(_, n)| n == name)
        .map(|(m, _)| *m)
        .collect()
}

#[test]
fn alerts_fire_at_the_same_evaluations_as_prometheus() {
    let Some(_) = peer_binary("promtool", "prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // a minute boundary an hour ago: recent enough for the store's retention
    let now = fleetwatch_common::model::now_ms();
    let base_ms = (now - 3_600_000) / 60_000 * 60_000;
    let firing = fleetwatch_alerts(dir.path(), base_ms);

    // the comparison means something only if every rule fires at some minutes and not others
    for name in [
        "HighRequestRate",
        "QueueBacklog",
        "InstanceDown",
        "HeartbeatMissing",
        "WorkerBusy",
    ] {
        let minutes = minutes_firing(&firing, name);
        assert!(
            !minutes.is_empty() && minutes.len() <= MINUTES,
            "{name} fired at {minutes:?}"
        );
    }
    // a few expectations worked out by hand, so that a bug both engines shared would show
    assert_eq!(
        minutes_firing(&firing, "QueueBacklog"),
        (10..=16).collect::<Vec<_>>()
    );
    assert_eq!(
        minutes_firing(&firing, "InstanceDown"),
        (14..=18).collect::<Vec<_>>(),
        "fires after 2m, kept firing 3m after the condition clears at 16"
    );
    assert!(
        !firing.iter().any(|((_, n), alerts)| n == "QueueBacklog"
            && alerts.iter().any(|(l, _)| l["queue"] == "mail")),
        "the mail queue was over the threshold for less than its `for`"
    );
    assert_eq!(
        minutes_firing(&firing, "WorkerBusy").first(),
        Some(&2),
        "w1 fires after its 2m"
    );

    let test_file = dir.path().join("rules_test.yml");
    std::fs::write(&test_file, promtool_test_file(&firing)).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&test_file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Prometheus disagrees with fleetwatch's alerts (\"exp\" is fleetwatch, \"got\" is Prometheus):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
