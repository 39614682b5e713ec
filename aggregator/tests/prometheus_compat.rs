//! Compatibility with a real Prometheus (Debian's 2.42):
//!
//! - the same samples reach Prometheus through fleetwatch's remote write and fleetwatch through
//!   an agent's QUIC link; a corpus covering every function, aggregation and operator fleetwatch
//!   documents is run through both HTTP APIs (instant and range) and must give the same label
//!   sets and values;
//! - `promtool query instant` and `promtool query range` work against fleetwatch;
//! - a Prometheus scraping `/federate` receives a real agent's series with their host label.

mod support;

use fleetwatch_common::model::{Batch, Label, Lane, MetricKind, Sample, Series, SeriesSamples};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{free_tcp_port, http_get_with, peer_binary, urlencode, Fleet, Proc, TOKEN};

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 200;

/// A deterministic pseudo-random sequence in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Data {
    series: Vec<(Series, MetricKind, Vec<Sample>)>,
}

impl Data {
    fn add(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        kind: MetricKind,
        values: Vec<Option<f64>>,
        t0: i64,
    ) {
        let samples = values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| {
                v.map(|value| Sample {
                    timestamp_ms: t0 + i as i64 * STEP_MS,
                    value,
                })
            })
            .collect();
        let labels: Vec<Label> = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
        self.series.push((Series::new(name, labels), kind, samples));
    }

    fn total(&self) -> usize {
        self.series.iter().map(|s| s.2.len()).sum()
    }

    /// Ten-minute slices of every series, in time order.
    fn batches(&self, t0: i64) -> Vec<Batch> {
        let slice = 10 * 60 * 1000;
        let end = t0 + POINTS * STEP_MS;
        let mut out = Vec::new();
        let mut from = t0;
        while from < end {
            let to = from + slice;
            let mut b = Batch::new(Lane::Metrics, to.min(end));
            for (series, kind, samples) in &self.series {
                let part: Vec<Sample> = samples
                    .iter()
                    .copied()
                    .filter(|s| s.timestamp_ms >= from && s.timestamp_ms < to)
                    .collect();
                if !part.is_empty() {
                    b.metrics.push(SeriesSamples {
                        series: series.clone(),
                        kind: *kind,
                        samples: part,
                    });
                }
            }
            out.push(b);
            from = to;
        }
        out
    }
}

fn counter(rng: &mut Lcg, scale: f64, reset_at: Option<usize>) -> Vec<Option<f64>> {
    let mut v = 0.0;
    (0..POINTS as usize)
        .map(|i| {
            if Some(i) == reset_at {
                v = 0.0;
            }
            v += (rng.next() * scale * 10.0).round() / 10.0;
            Some(v)
        })
        .collect()
}

fn dataset(t0: i64) -> Data {
    let mut rng = Lcg(42);
    let mut d = Data { series: Vec::new() };
    let c = MetricKind::Counter;
    let g = MetricKind::Gauge;
    for (inst, code, scale, reset) in [
        ("a", "200", 50.0, Some(120)),
        ("b", "200", 30.0, None),
        ("a", "500", 3.0, None),
        ("b", "500", 1.0, Some(60)),
    ] {
        let v = counter(&mut rng, scale, reset);
        d.add(
            "compat_requests_total",
            &[("job", "api"), ("instance", inst), ("code", code)],
            c,
            v,
            t0,
        );
    }
    for inst in ["a", "b"] {
        for (mode, scale) in [("idle", 14.0), ("user", 5.0), ("system", 1.0)] {
            let v = counter(&mut rng, scale, None);
            d.add(
                "compat_cpu_seconds_total",
                &[("instance", inst), ("mode", mode)],
                c,
                v,
                t0,
            );
        }
        for (room, base) in [("x", 20.0), ("y", 23.0)] {
            let phase = rng.next() * 6.0;
            let v = (0..POINTS)
                .map(|i| Some(base + 3.0 * ((i as f64 / 17.0) + phase).sin() + (rng.next() - 0.5)))
                .collect();
            d.add(
                "compat_temperature",
                &[("instance", inst), ("room", room)],
                g,
                v,
                t0,
            );
        }
        // cumulative histogram buckets
        let bounds = ["0.05", "0.1", "0.5", "1", "+Inf"];
        let mut counts = [0.0f64; 5];
        let mut per_bucket: Vec<Vec<Option<f64>>> = vec![Vec::new(); 5];
        let mut sum = Vec::new();
        let mut total = 0.0;
        for _ in 0..POINTS {
            for _ in 0..(3 + (rng.next() * 10.0) as usize) {
                let x = rng.next().powi(3) * 1.5;
                total += x;
                for (k, b) in [0.05, 0.1, 0.5, 1.0, f64::INFINITY].iter().enumerate() {
                    if x <= *b {
                        counts[k] += 1.0;
                    }
                }
            }
            for k in 0..5 {
                per_bucket[k].push(Some(counts[k]));
            }
            sum.push(Some(total));
        }
        for (k, le) in bounds.iter().enumerate() {
            d.add(
                "compat_latency_seconds_bucket",
                &[("instance", inst), ("le", le)],
                c,
                per_bucket[k].clone(),
                t0,
            );
        }
        d.add(
            "compat_latency_seconds_count",
            &[("instance", inst)],
            c,
            per_bucket[4].clone(),
            t0,
        );
        d.add(
            "compat_latency_seconds_sum",
            &[("instance", inst)],
            c,
            sum,
            t0,
        );
    }
    d.add(
        "compat_info",
        &[("instance", "a"), ("version", "1.2")],
        g,
        vec![Some(1.0); POINTS as usize],
        t0,
    );
    d.add(
        "compat_info",
        &[("instance", "b"), ("version", "1.3")],
        g,
        vec![Some(1.0); POINTS as usize],
        t0,
    );
    // a queue that stops reporting for 7.5 minutes (past the 5-minute lookback), then resumes
    let q = (0..POINTS as usize)
        .map(|i| (!(80..110).contains(&i)).then_some((i % 37) as f64 * 20.0))
        .collect();
    d.add("compat_queue_length", &[("instance", "a")], g, q, t0);
    // a series that ends early
    let short = (0..POINTS as usize)
        .map(|i| (i < 50).then_some(i as f64))
        .collect();
    d.add("compat_short", &[("instance", "a")], g, short, t0);
    d
}

/// The corpus: every query runs as an instant query at several times and (unless marked
/// instant-only) as a range query.
fn corpus() -> Vec<(&'static str, bool)> {
    let range = true;
    let instant_only = false;
    vec![
        // selectors: all four matchers, offset, @, staleness, literals
        ("compat_temperature", range),
        ("compat_temperature{room=\"x\"}", range),
        ("compat_temperature{room!=\"x\"}", range),
        ("compat_temperature{room=~\"x|y\", instance!~\"b\"}", range),
        ("compat_temperature offset 5m", range),
        ("compat_temperature @ end()", range),
        ("compat_queue_length", range),
        ("compat_short", range),
        ("1 + 2 * 3", range),
        ("2 ^ 3 ^ 2", range),
        ("compat_temperature[2m]", instant_only),
        ("compat_requests_total[5m] offset 10m", instant_only),
        // rate family
        ("rate(compat_requests_total[5m])", range),
        ("rate(compat_requests_total[1m])", range),
        ("irate(compat_requests_total[5m])", range),
        ("increase(compat_requests_total[10m])", range),
        ("delta(compat_temperature[10m])", range),
        ("idelta(compat_temperature[5m])", range),
        ("deriv(compat_temperature[10m])", range),
        ("predict_linear(compat_temperature[10m], 3600)", range),
        ("rate(compat_requests_total[5m] offset 3m)", range),
        ("changes(compat_queue_length[10m])", range),
        ("resets(compat_requests_total[30m])", range),
        // *_over_time
        ("avg_over_time(compat_temperature[5m])", range),
        ("min_over_time(compat_temperature[5m])", range),
        ("max_over_time(compat_temperature[5m])", range),
        ("sum_over_time(compat_temperature[5m])", range),
        ("count_over_time(compat_queue_length[5m])", range),
        ("quantile_over_time(0.9, compat_temperature[10m])", range),
        ("stddev_over_time(compat_temperature[10m])", range),
        ("stdvar_over_time(compat_temperature[10m])", range),
        ("last_over_time(compat_queue_length[10m])", range),
        ("present_over_time(compat_short[5m])", range),
        ("absent_over_time(compat_short[5m])", range),
        ("absent_over_time(compat_nothing{job=\"x\"}[5m])", range),
        // histograms
        ("histogram_quantile(0.9, sum by (le) (rate(compat_latency_seconds_bucket[5m])))", range),
        ("histogram_quantile(0.5, rate(compat_latency_seconds_bucket[5m]))", range),
        ("histogram_quantile(0.99, sum by (le, instance) (rate(compat_latency_seconds_bucket[10m])))", range),
        ("rate(compat_latency_seconds_sum[5m]) / rate(compat_latency_seconds_count[5m])", range),
        // absent, math, clamps, labels, time
        ("absent(compat_nothing{job=\"x\", env=\"prod\"})", range),
        ("absent(compat_temperature)", range),
        ("clamp(compat_temperature, 19, 22)", range),
        ("clamp_min(compat_temperature, 21)", range),
        ("clamp_max(compat_temperature, 21)", range),
        ("abs(compat_temperature - 22)", range),
        ("round(compat_temperature)", range),
        ("round(compat_temperature, 0.5)", range),
        ("ceil(compat_temperature)", range),
        ("floor(compat_temperature)", range),
        ("sqrt(compat_temperature)", range),
        ("exp(compat_temperature / 10)", range),
        ("ln(compat_temperature)", range),
        ("label_replace(compat_temperature, \"r\", \"$1-z\", \"room\", \"(.*)\")", range),
        ("label_replace(compat_temperature, \"room\", \"\", \"room\", \"x\")", range),
        ("label_join(compat_temperature, \"ir\", \"-\", \"instance\", \"room\")", range),
        ("time()", range),
        ("vector(1)", range),
        ("vector(time())", range),
        ("scalar(sum(compat_temperature))", range),
        ("scalar(compat_temperature)", range),
        ("timestamp(compat_queue_length)", range),
        ("sort(compat_temperature)", instant_only),
        ("sort_desc(compat_temperature)", instant_only),
        ("hour(vector(time()))", range),
        ("day_of_week()", range),
        // aggregations
        ("sum(compat_temperature)", range),
        ("sum by (instance) (rate(compat_requests_total[5m]))", range),
        ("avg without (room) (compat_temperature)", range),
        ("min by (room) (compat_temperature)", range),
        ("max(compat_temperature)", range),
        ("count by (mode) (compat_cpu_seconds_total)", range),
        ("stddev(compat_temperature)", range),
        ("stdvar by (room) (compat_temperature)", range),
        ("topk(2, compat_temperature)", range),
        ("bottomk(1, compat_temperature) by (instance)", range),
        ("quantile(0.5, compat_temperature)", range),
        ("quantile by (instance) (0.25, compat_temperature)", range),
        ("count_values(\"value\", floor(compat_temperature))", range),
        ("group by (instance) (compat_cpu_seconds_total)", range),
        // binary operators
        ("compat_temperature * 2", range),
        ("2 - compat_temperature", range),
        ("compat_temperature % 3", range),
        ("compat_temperature ^ 0.5", range),
        ("-compat_temperature", range),
        ("compat_temperature > 22", range),
        ("22 < compat_temperature", range),
        ("compat_temperature > bool 22", range),
        ("compat_temperature <= 21", range),
        ("compat_temperature != 20", range),
        ("1 > bool 2", range),
        ("compat_temperature{room=\"x\"} - ignoring(room) compat_temperature{room=\"y\"}", range),
        ("compat_temperature{room=\"x\"} / on(instance) compat_temperature{room=\"y\"}", range),
        ("rate(compat_requests_total{code=\"500\"}[5m]) / ignoring(code) rate(compat_requests_total{code=\"200\"}[5m])", range),
        ("sum by (instance) (rate(compat_requests_total[5m])) * on(instance) group_left(version) compat_info", range),
        ("compat_info + on(instance) group_right compat_temperature", range),
        ("compat_temperature * on(instance) group_left(version) compat_info", range),
        ("compat_temperature > on(instance) group_left compat_temperature{room=\"x\"}", range),
        ("compat_temperature and compat_temperature{room=\"x\"}", range),
        ("compat_temperature or compat_queue_length", range),
        ("compat_temperature unless compat_temperature{instance=\"a\"}", range),
        ("compat_temperature and on(instance) compat_info{version=\"1.2\"}", range),
        ("compat_queue_length > bool on() group_left vector(100)", range),
        ("sum by (instance) (rate(compat_cpu_seconds_total{mode!=\"idle\"}[5m])) / sum by (instance) (rate(compat_cpu_seconds_total[5m]))", range),
        // subqueries
        ("max_over_time(rate(compat_requests_total[5m])[15m:1m])", range),
        ("avg_over_time(compat_temperature[10m:30s])", range),
        ("min_over_time(sum(compat_temperature)[10m:])", range),
        ("rate(compat_requests_total[5m])[10m:1m]", instant_only),
        ("max_over_time(deriv(compat_temperature[5m])[20m:2m] offset 5m)", range),
    ]
}

/// Series of a matrix result: sorted label pairs to (time, value) points.
type MatrixSeries = BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>>;

/// A query result in comparable form.
#[derive(Debug)]
enum Shape {
    Scalar(f64, f64),
    Vector(Vec<(BTreeMap<String, String>, f64)>),
    Matrix(MatrixSeries),
    Other,
}

fn value_of(v: &Value) -> f64 {
    match v.as_str().unwrap_or("NaN") {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        s => s.parse().unwrap_or(f64::NAN),
    }
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn shape(body: &str) -> Result<Shape, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    let data = &v["data"];
    let result = &data["result"];
    Ok(match data["resultType"].as_str() {
        Some("scalar") => Shape::Scalar(result[0].as_f64().unwrap_or(0.0), value_of(&result[1])),
        Some("vector") => Shape::Vector(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (labels_of(&e["metric"]), value_of(&e["value"][1])))
                .collect(),
        ),
        Some("matrix") => Shape::Matrix(
            result
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let points = e["values"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_f64().unwrap(), value_of(&p[1])))
                        .collect();
                    (labels_of(&e["metric"]).into_iter().collect(), points)
                })
                .collect(),
        ),
        _ => Shape::Other,
    })
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-3)
}

/// Differences between fleetwatch's (`ours`) and Prometheus' (`theirs`) results, if any.
fn compare(ours: &Shape, theirs: &Shape, ordered: bool) -> Option<String> {
    match (ours, theirs) {
        (Shape::Scalar(t1, a), Shape::Scalar(t2, b)) => {
            (!(close(*t1, *t2) && close(*a, *b))).then(|| format!("scalar {a}@{t1} vs {b}@{t2}"))
        }
        (Shape::Vector(a), Shape::Vector(b)) => {
            let (mut a2, mut b2) = (a.clone(), b.clone());
            if !ordered {
                a2.sort_by(|x, y| x.0.cmp(&y.0));
                b2.sort_by(|x, y| x.0.cmp(&y.0));
            }
            if a2.len() != b2.len() {
                return Some(format!(
                    "{} elements vs {}: {a2:?} vs {b2:?}",
                    a2.len(),
                    b2.len()
                ));
            }
            for (x, y) in a2.iter().zip(&b2) {
                if x.0 != y.0 || !close(x.1, y.1) {
                    return Some(format!("{x:?} vs {y:?}"));
                }
            }
            None
        }
        (Shape::Matrix(a), Shape::Matrix(b)) => {
            let ka: Vec<_> = a.keys().collect();
            let kb: Vec<_> = b.keys().collect();
            if ka != kb {
                return Some(format!("series {ka:?} vs {kb:?}"));
            }
            for (k, pa) in a {
                let pb = &b[k];
                if pa.len() != pb.len() {
                    return Some(format!(
                        "{k:?}: {} points vs {}: {pa:?} vs {pb:?}",
                        pa.len(),
                        pb.len()
                    ));
                }
                for (x, y) in pa.iter().zip(pb) {
                    if !close(x.0, y.0) || !close(x.1, y.1) {
                        return Some(format!("{k:?}: point {x:?} vs {y:?}"));
                    }
                }
            }
            None
        }
        _ => Some(format!("{ours:?} vs {theirs:?}")),
    }
}

fn secs(ms: i64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn start_prometheus(
    dir: &std::path::Path,
    name: &str,
    config: &str,
    extra: &[&str],
) -> (Proc, u16) {
    let bin = "prometheus";
    let port = free_tcp_port();
    let cfg = dir.join(format!("{name}.yml"));
    std::fs::write(&cfg, config).unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let proc = Proc::spawn(
        "prometheus",
        Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("{name}-data")).display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_get_with(port, "/-/ready", "").is_ok_and(|(c, _)| c == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready:\n{}",
            std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, port)
}

fn get(port: u16, path: &str) -> String {
    let (code, body) = http_get_with(port, path, TOKEN).unwrap();
    assert!(
        code == 200 || code == 400 || code == 422,
        "{path}: HTTP {code}: {body}"
    );
    body
}

fn scalar_result(port: u16, query: &str, t_ms: i64) -> Option<f64> {
    let body = get(
        port,
        &format!(
            "/api/v1/query?query={}&time={}",
            urlencode(query),
            secs(t_ms)
        ),
    );
    match shape(&body) {
        Ok(Shape::Vector(v)) if v.len() == 1 => Some(v[0].1),
        _ => None,
    }
}

#[test]
fn query_results_match_prometheus() {
    if peer_binary("prometheus", "prometheus").is_none()
        || peer_binary("promtool", "prometheus").is_none()
    {
        return;
    }
    let fleet = Fleet::new();
    let (_prom, prom_port) = start_prometheus(
        fleet.dir.path(),
        "prometheus",
        "global:\n  scrape_interval: 15s\n  evaluation_interval: 1m\n",
        &["--web.enable-remote-write-receiver"],
    );
    fleet.add_aggregator_config(&format!(
        "[[remote_write]]\nname = \"prometheus\"\nurl = \"http://127.0.0.1:{prom_port}/api/v1/write\"\nmax_samples_per_send = 20000\n"
    ));
    let _agg = fleet.start_aggregator();

    // samples from 55 minutes ago on, every 15 s, so all are inside Prometheus' 1 h head window
    let now = fleetwatch_common::model::now_ms();
    let t0 = (now - 55 * 60 * 1000) / STEP_MS * STEP_MS;
    let data = dataset(t0);
    let total = data.total() as f64;
    support::ship_in_order(&fleet, "compat", data.batches(t0));

    let end = t0 + (POINTS - 1) * STEP_MS;
    // one sum per metric name: count_over_time drops names, so one selector over all names
    // would hold duplicate label sets
    let names: std::collections::BTreeSet<&str> =
        data.series.iter().map(|s| s.0.name.as_str()).collect();
    let count_q = names
        .iter()
        .map(|n| format!("sum(count_over_time({n}[1h]))"))
        .collect::<Vec<_>>()
        .join(" + ");
    fleet.wait_for(
        "every sample in fleetwatch and in Prometheus",
        Duration::from_secs(60),
        || {
            scalar_result(fleet.http_port, &count_q, end + 1000) == Some(total)
                && scalar_result(prom_port, &count_q, end + 1000) == Some(total)
        },
    );
    assert_eq!(
        fleet.own_metric(
            "fleetwatch_remote_write_samples_total{remote=\"prometheus\",result=\"rejected\"}"
        ),
        0.0
    );

    let minute = 60_000;
    let instants = [
        t0 + 40 * minute,
        t0 + 26 * minute + 7_500,
        t0 + 49 * minute + 1,
        end + 3 * minute,
    ];
    let ranges = [
        (t0 + 10 * minute, end + 3 * minute, 60_000),
        (t0 + 3 * minute + 7_000, t0 + 47 * minute, 37_000),
    ];
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut both_failed = Vec::new();
    let mut empty = 0;
    for (query, as_range) in corpus() {
        let ordered = query.starts_with("sort");
        let mut paths: Vec<String> = instants
            .iter()
            .map(|t| format!("/api/v1/query?query={}&time={}", urlencode(query), secs(*t)))
            .collect();
        if as_range {
            paths.extend(ranges.iter().map(|(s, e, st)| {
                format!(
                    "/api/v1/query_range?query={}&start={}&end={}&step={}",
                    urlencode(query),
                    secs(*s),
                    secs(*e),
                    secs(*st)
                )
            }));
        }
        for path in paths {
            let ours = shape(&get(fleet.http_port, &path));
            if matches!(&ours, Ok(Shape::Vector(v)) if v.is_empty())
                || matches!(&ours, Ok(Shape::Matrix(m)) if m.is_empty())
            {
                empty += 1;
            }
            let theirs = shape(&get(prom_port, &path));
            compared += 1;
            let diff = match (&ours, &theirs) {
                (Ok(a), Ok(b)) => compare(a, b, ordered),
                (Err(a), Err(b)) => {
                    both_failed.push(format!("{path}: {a}"));
                    (a.split(':').next() != b.split(':').next())
                        .then(|| format!("errors differ: {a} vs {b}"))
                }
                (a, b) => Some(format!("{a:?} vs {b:?}")),
            };
            if let Some(d) = diff {
                failures.push(format!("{path}\n    {d}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {compared} results differ from Prometheus:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // no query in the corpus is meant to fail, and only the absent() family may be empty
    assert!(
        both_failed.is_empty(),
        "queries failed in both:\n{}",
        both_failed.join("\n")
    );
    eprintln!("{compared} results equal to Prometheus' ({empty} empty)");

    // promtool against fleetwatch, with the token as the Basic-auth password
    let url = format!("http://fleetwatch:{TOKEN}@127.0.0.1:{}", fleet.http_port);
    let out = Command::new("promtool")
        .args(["query", "instant", "--time", &secs(end)])
        .arg(&url)
        .arg("sum by (instance) (compat_temperature)")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool query instant: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("instance=\"a\"") && text.contains("instance=\"b\""),
        "{text}"
    );
    let out = Command::new("promtool")
        .args([
            "query",
            "range",
            "--start",
            &secs(t0 + 10 * minute),
            "--end",
            &secs(end),
            "--step",
            "1m",
        ])
        .arg(&url)
        .arg("rate(compat_requests_total{instance=\"a\",code=\"200\"}[5m])")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool query range: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.matches(" @[").count() > 30, "{text}");
}

#[test]
fn prometheus_federates_the_fleet() {
    if peer_binary("prometheus", "prometheus").is_none() {
        return;
    }
    let fleet = Fleet::new();
    let _agg = fleet.start_aggregator();
    fleet.agent_config("fed-host", 1.0, "");
    let _agent = fleet.start_agent("fed-host");
    let config = format!(
        r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: fleetwatch
    honor_labels: true
    metrics_path: /federate
    params:
      'match[]': ['{{host!=""}}']
    authorization:
      credentials_file: {token}
    static_configs:
      - targets: ['127.0.0.1:{port}']
"#,
        token = fleet.path("admin.token").display(),
        port = fleet.http_port
    );
    let (_prom, prom_port) = start_prometheus(fleet.dir.path(), "federating", &config, &[]);
    fleet.wait_for("the agent's series in the federating Prometheus", Duration::from_secs(60), || {
        let now = fleetwatch_common::model::now_ms();
        let body = get(prom_port, &format!("/api/v1/query?query={}&time={}", urlencode("count by (host) (node_load1) or count by (host) (up{job=\"fleetwatch\",host=\"fed-host\"})"), secs(now)));
        matches!(shape(&body), Ok(Shape::Vector(v)) if v.iter().any(|(l, _)| l.get("host").map(String::as_str) == Some("fed-host")))
    });
    // the host's metrics arrive with their host label, and fleetwatch's up series with it
    let now = fleetwatch_common::model::now_ms();
    let body = get(
        prom_port,
        &format!(
            "/api/v1/query?query={}&time={}",
            urlencode("{host=\"fed-host\", __name__=~\"node_.+|fleetwatch_.+\"}"),
            secs(now)
        ),
    );
    let Ok(Shape::Vector(v)) = shape(&body) else {
        panic!("{body}")
    };
    assert!(v.len() > 20, "only {} series federated: {body}", v.len());
    let up = scalar_result(prom_port, "up{host=\"fed-host\"}", now);
    assert_eq!(up, Some(1.0), "fleetwatch's up series for the host");
}
