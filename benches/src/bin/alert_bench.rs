//! Alerting speed (issue 4, "How fast"), two measurements in one run:
//!
//! 1. **Rule evaluation.** `--rules` (1,000) alerting and recording rules of the shapes fleets
//!    run (CPU, memory, filesystem full and predicted full, error ratio, p99 latency, host
//!    down, queue backlog, network, load per CPU) in groups of `--group-size` (50), over
//!    `--series` (10,000) node_exporter-like and application series with 10 minutes of 15 s
//!    samples. fleetwatch: the store and `RuleManager` in this process, the time of cycles in
//!    which every group is evaluated once. Prometheus (Debian's, unless `--skip-prometheus`):
//!    the same samples as blocks made by `promtool tsdb create-blocks-from openmetrics`, the
//!    same rule file, and the sum over groups of `prometheus_rule_group_last_duration_seconds`.
//! 2. **Notification delay.** A real `fleetwatch-aggregator` process (built beside this
//!    program) with a rule `for: --for-seconds` (10) in a group evaluated every
//!    `--interval-seconds` (5), `group_wait` 0 and a webhook receiver served by this program.
//!    Each trial pushes a new series over the condition through the agent's shipper (QUIC,
//!    mutual TLS) at a random phase of the evaluation interval, and times its arrival at the
//!    webhook; reported minus `for`, against the target of one interval plus at most 1 s.
//!
//! ```sh
//! cargo build --release -p fleetwatch-aggregator -p fleetwatch-benches
//! ./target/release/alert_bench
//! ```

use anyhow::{bail, ensure, Context};
use clap::Parser;
use fleetwatch_agent::buffer::{Buffer, BufferConfig};
use fleetwatch_agent::config::AggregatorLink;
use fleetwatch_agent::metrics::AgentMetrics;
use fleetwatch_agent::shipper::Shipper;
use fleetwatch_aggregator::metrics::Metrics;
use fleetwatch_aggregator::rules::RuleManager;
use fleetwatch_aggregator::store::{Storage, StoreConfig};
use fleetwatch_common::codec;
use fleetwatch_common::model::{
    now_ms, Batch, HostFacts, Label, Lane, MetricKind, Sample, Series, SeriesSamples,
};
use fleetwatch_common::pki;
use fleetwatch_common::protocol::Message;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Alerting speed: rule evaluation against Prometheus, and condition-to-notification delay.
#[derive(Parser)]
struct Args {
    /// Series in the store (100 per simulated host).
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Rules in the rule file.
    #[arg(long, default_value_t = 1_000)]
    rules: usize,
    /// Rules per group.
    #[arg(long, default_value_t = 50)]
    group_size: usize,
    /// Measured evaluation cycles (after one warm-up cycle), on each side.
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Run fleetwatch's side of the evaluation only.
    #[arg(long)]
    skip_prometheus: bool,
    /// Skip the evaluation measurement.
    #[arg(long)]
    skip_eval: bool,
    /// Skip the notification-delay measurement.
    #[arg(long)]
    skip_delay: bool,
    /// Notification-delay trials.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// The delay rule's `for`, seconds.
    #[arg(long, default_value_t = 10)]
    for_seconds: u64,
    /// The delay rule's group interval, seconds.
    #[arg(long, default_value_t = 5)]
    interval_seconds: u64,
    /// Keep the temporary directory.
    #[arg(long)]
    keep: bool,
}

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 41; // 10 minutes of 15 s samples
const PER_HOST: usize = 100;
const EVAL_INTERVAL: &str = "15s";

/// xorshift64*: deterministic data for the same arguments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Data

/// One series and how it moves: a counter adds `step` (± 10 %) per sample, a gauge wanders
/// around `base` by `step`.
struct Def {
    series: Series,
    counter: bool,
    base: f64,
    step: f64,
}

fn def(
    name: &str,
    host: &str,
    extra: &[(&str, String)],
    counter: bool,
    base: f64,
    step: f64,
) -> Def {
    let labels = [("host", host.to_string()), ("job", "node".to_string())]
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (*k, v.clone())))
        .map(|(k, v)| Label::new(k, v));
    Def {
        series: Series::new(name, labels),
        counter,
        base,
        step,
    }
}

/// The 100 series of one host; `busy` (0..1) drives CPU, memory, load, traffic and latency.
fn host_defs(h: usize, rng: &mut Rng) -> Vec<Def> {
    let host = format!("host-{h:04}");
    let busy = rng.unit();
    let mut d = Vec::with_capacity(PER_HOST);
    for cpu in 0..4 {
        for mode in [
            "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
        ] {
            let share = match mode {
                "idle" => 1.0 - 0.9 * busy,
                "user" => 0.6 * busy,
                "system" => 0.25 * busy,
                _ => 0.05 * busy / 6.0,
            };
            let labels = [("cpu", cpu.to_string()), ("mode", mode.to_string())];
            d.push(def(
                "node_cpu_seconds_total",
                &host,
                &labels,
                true,
                1e5 * rng.unit(),
                15.0 * share,
            ));
        }
    }
    let total = 16e9;
    d.push(def(
        "node_memory_MemTotal_bytes",
        &host,
        &[],
        false,
        total,
        0.0,
    ));
    let used = 0.3 + 0.68 * busy;
    d.push(def(
        "node_memory_MemAvailable_bytes",
        &host,
        &[],
        false,
        total * (1.0 - used),
        5e6,
    ));
    for (i, mount) in ["/", "/var", "/home", "/srv", "/boot"].iter().enumerate() {
        let size = 1e11;
        let l = [
            ("mountpoint", mount.to_string()),
            ("device", format!("sda{i}")),
        ];
        let free = size * (0.02 + 0.8 * rng.unit());
        // a few fill up fast: predicted full within hours
        let fill = if rng.unit() < 0.05 { -2e6 * 15.0 } else { -1e3 };
        d.push(def(
            "node_filesystem_size_bytes",
            &host,
            &l,
            false,
            size,
            0.0,
        ));
        d.push(def(
            "node_filesystem_avail_bytes",
            &host,
            &l,
            true,
            free,
            fill,
        ));
        d.push(def(
            "node_filesystem_files_free",
            &host,
            &l,
            false,
            1e6,
            10.0,
        ));
    }
    for dev in ["eth0", "eth1", "lo", "docker0"] {
        let l = [("device", dev.to_string())];
        d.push(def(
            "node_network_receive_bytes_total",
            &host,
            &l,
            true,
            1e9 * rng.unit(),
            1.5e7 * busy * rng.unit(),
        ));
        d.push(def(
            "node_network_transmit_bytes_total",
            &host,
            &l,
            true,
            1e9 * rng.unit(),
            1e7 * busy * rng.unit(),
        ));
    }
    for (name, f) in [
        ("node_load1", 9.0),
        ("node_load5", 8.0),
        ("node_load15", 7.0),
    ] {
        d.push(def(name, &host, &[], false, f * busy, 0.2));
    }
    let up = if rng.unit() < 0.01 { 0.0 } else { 1.0 };
    d.push(def("up", &host, &[], false, up, 0.0));
    let error_ratio = 0.1 * rng.unit() * rng.unit();
    for route in ["/api/jobs", "/api/queues", "/api/workers", "/login"] {
        let rate = 15.0 * (5.0 + 100.0 * busy);
        for (status, share) in [("200", 1.0 - error_ratio), ("500", error_ratio)] {
            let l = [("route", route.to_string()), ("status", status.to_string())];
            d.push(def(
                "http_requests_total",
                &host,
                &l,
                true,
                1e6 * rng.unit(),
                rate * share,
            ));
        }
    }
    for route in ["/api/jobs", "/api/queues"] {
        let per_step = 15.0 * (5.0 + 100.0 * busy);
        let scale = 0.05 + 0.5 * busy; // seconds: the latency's spread
        for le in ["0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"] {
            let bound: f64 = le.parse().unwrap_or(f64::INFINITY);
            let cdf = 1.0 - (-bound / scale).exp();
            let l = [("route", route.to_string()), ("le", le.to_string())];
            d.push(def(
                "http_request_duration_seconds_bucket",
                &host,
                &l,
                true,
                0.0,
                per_step * cdf,
            ));
        }
        let l = [("route", route.to_string())];
        d.push(def(
            "http_request_duration_seconds_sum",
            &host,
            &l,
            true,
            0.0,
            per_step * scale,
        ));
        d.push(def(
            "http_request_duration_seconds_count",
            &host,
            &l,
            true,
            0.0,
            per_step,
        ));
    }
    for q in [
        "emails", "exports", "imports", "reports", "webhooks", "billing",
    ] {
        d.push(def(
            "queue_length",
            &host,
            &[("queue", q.to_string())],
            false,
            1000.0 * rng.unit().powi(4),
            20.0,
        ));
    }
    for dev in ["sda", "sdb"] {
        d.push(def(
            "node_disk_io_time_seconds_total",
            &host,
            &[("device", dev.to_string())],
            true,
            1e4,
            15.0 * busy * 0.5,
        ));
    }
    d.push(def(
        "node_context_switches_total",
        &host,
        &[],
        true,
        1e9,
        15.0 * 2e4 * (0.1 + busy),
    ));
    d.push(def("node_forks_total", &host, &[], true, 1e6, 15.0 * 20.0));
    d.push(def("node_boot_time_seconds", &host, &[], false, 1.7e9, 0.0));
    debug_assert_eq!(d.len(), PER_HOST);
    d
}

/// Every series' value at each of the `POINTS` sample times.
struct Dataset {
    defs: Vec<Def>,
    /// `values[k][i]`: series i at point k.
    values: Vec<Vec<f64>>,
    /// Timestamp of point k.
    times: Vec<i64>,
}

impl Dataset {
    fn new(series: usize, end_ms: i64) -> Self {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let hosts = series.div_ceil(PER_HOST);
        let defs: Vec<Def> = (0..hosts).flat_map(|h| host_defs(h, &mut rng)).collect();
        let mut current: Vec<f64> = defs.iter().map(|d| d.base).collect();
        let mut values = Vec::with_capacity(POINTS as usize);
        for _ in 0..POINTS {
            for (v, d) in current.iter_mut().zip(&defs) {
                if d.counter {
                    *v = (*v + d.step * (0.9 + 0.2 * rng.unit())).max(0.0);
                } else if d.step > 0.0 {
                    *v = (*v + d.step * (rng.unit() - 0.5)).max(0.0);
                }
            }
            // whole numbers like most exported values; load averages keep their fractions
            let point = current.iter().zip(&defs).map(|(v, d)| {
                if d.series.name.starts_with("node_load") {
                    *v
                } else {
                    v.round()
                }
            });
            values.push(point.collect::<Vec<f64>>());
        }
        let times = (0..POINTS)
            .map(|k| end_ms - (POINTS - 1 - k) * STEP_MS)
            .collect();
        Self {
            defs,
            values,
            times,
        }
    }

    fn samples(&self) -> usize {
        self.defs.len() * POINTS as usize
    }

    /// One batch of every series per sample time.
    fn batches(&self) -> Vec<(i64, Vec<SeriesSamples>)> {
        (0..POINTS as usize)
            .map(|k| {
                let t = self.times[k];
                let metrics = self
                    .defs
                    .iter()
                    .zip(&self.values[k])
                    .map(|(d, &v)| SeriesSamples {
                        series: d.series.clone(),
                        kind: if d.counter {
                            MetricKind::Counter
                        } else {
                            MetricKind::Gauge
                        },
                        samples: vec![Sample {
                            timestamp_ms: t,
                            value: v,
                        }],
                    })
                    .collect();
                (t, metrics)
            })
            .collect()
    }

    /// OpenMetrics for `promtool tsdb create-blocks-from openmetrics`.
    fn write_openmetrics(&self, path: &Path) -> anyhow::Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let names: Vec<String> = self
            .defs
            .iter()
            .map(|d| {
                let labels: Vec<String> = d
                    .series
                    .labels
                    .iter()
                    .map(|l| format!("{}=\"{}\"", l.name, l.value))
                    .collect();
                format!("{}{{{}}}", d.series.name, labels.join(","))
            })
            .collect();
        for (k, t) in self.times.iter().enumerate() {
            for (name, v) in names.iter().zip(&self.values[k]) {
                writeln!(w, "{name} {v} {}.{:03}", t / 1000, t % 1000)?;
            }
        }
        writeln!(w, "# EOF")?;
        w.flush()?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Rule `i` of the file: twelve shapes, thresholds varied so that some fire and some do not.
fn rule(i: usize) -> String {
    let v = i / 12;
    let alert = |name: &str, expr: String, for_: &str, summary: &str| {
        format!(
            "      - alert: {name}{v}\n        expr: '{expr}'\n        for: {for_}\n        labels:\n          severity: {}\n        annotations:\n          summary: \"{summary}\"\n",
            if v % 3 == 0 { "critical" } else { "warning" }
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

fn rule_file(rules: usize, group_size: usize) -> String {
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

// ---------------------------------------------------------------------------------------------
// Child processes

/// A child process that dies with this program (PR_SET_PDEATHSIG) and when its handle drops.
fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::File::create(log)?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdout(f.try_clone()?)
        .stderr(f)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the child when the
    // spawning thread exits.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Waits for `url` to answer 2xx while `child` runs.
async fn wait_ready(child: &mut Child, url: &str, log: &Path) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{url}: the process exited ({status}); its log:\n{}",
                tail(log)
            );
        }
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "{url} not ready after 120 s:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Evaluation

/// CPU time (user + system) of the calling thread, seconds.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

struct EvalResult {
    /// Per measured cycle: wall time of the whole cycle, seconds.
    wall: Vec<f64>,
    /// Per measured cycle: CPU time of the cycle, seconds.
    cpu: Vec<f64>,
    /// Per measured cycle: sum of the groups' own durations, seconds.
    group_sum: Vec<f64>,
    /// Pending or firing alerts after the last cycle.
    alerts: usize,
    /// Rules whose last evaluation failed.
    unhealthy: Vec<String>,
}

fn fleetwatch_eval(
    dir: &Path,
    data: &Dataset,
    rules: &Path,
    cycles: usize,
) -> anyhow::Result<EvalResult> {
    let config = StoreConfig {
        sync: false,
        ..Default::default()
    };
    let (store, _) = Storage::open(&dir.join("store"), config)?;
    let load = Instant::now();
    for (t, metrics) in data.batches() {
        store.append_system(metrics, t)?;
    }
    println!(
        "fleetwatch: {} samples of {} series loaded in {:.1} s",
        data.samples(),
        data.defs.len(),
        load.elapsed().as_secs_f64()
    );
    let manager = RuleManager::open(
        vec![rules.to_path_buf()],
        15_000,
        &dir.join("rules-state"),
        Metrics::new(),
    )
    .map_err(|errors| {
        let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the rule file did not load:\n{}", all.join("\n"))
    })?;
    let end = *data.times.last().unwrap_or(&0);
    let mut result = EvalResult {
        wall: Vec::new(),
        cpu: Vec::new(),
        group_sum: Vec::new(),
        alerts: 0,
        unhealthy: Vec::new(),
    };
    for k in 0..=cycles {
        let now = end + k as i64 * STEP_MS;
        let started = Instant::now();
        let cpu0 = thread_cpu_seconds();
        manager.evaluate_due(&store, now);
        let cpu = thread_cpu_seconds() - cpu0;
        let wall = started.elapsed().as_secs_f64();
        let groups = manager.groups();
        ensure!(
            groups.iter().all(|g| g.last_eval_ms == now),
            "not every group was evaluated in cycle {k}"
        );
        let sum: f64 = groups.iter().map(|g| g.eval_seconds).sum();
        println!(
            "fleetwatch: cycle {k}{}: {cpu:.3} s CPU, {wall:.3} s wall, {sum:.3} s summed over {} groups",
            if k == 0 { " (warm-up)" } else { "" },
            groups.len()
        );
        if k > 0 {
            result.wall.push(wall);
            result.cpu.push(cpu);
            result.group_sum.push(sum);
        }
        if k == cycles {
            result.unhealthy = groups
                .iter()
                .flat_map(|g| {
                    g.group
                        .rules
                        .iter()
                        .zip(&g.health)
                        .filter(|(_, h)| h.health != "ok")
                        .map(|(r, h)| format!("{}: {}", r.name(), h.last_error))
                        .collect::<Vec<_>>()
                })
                .collect();
        }
    }
    result.alerts = manager
        .alerts()
        .iter()
        .filter(|a| a.state != fleetwatch_aggregator::rules::lifecycle::AlertState::Inactive)
        .count();
    Ok(result)
}

/// What Prometheus did, per measured cycle (the first skipped).
struct PromResult {
    /// Sum of `prometheus_rule_group_last_duration_seconds` over the groups.
    group_sum: Vec<f64>,
    /// `process_cpu_seconds_total` used from one completed cycle to the next.
    cpu: Vec<f64>,
    /// Pending or firing alerts at the end.
    alerts: usize,
    /// Its version line.
    version: String,
}

/// Runs Prometheus on the same samples and rules and reads its rule-group metrics at each
/// completed cycle (every group's iteration count went up).
async fn prometheus_eval(
    dir: &Path,
    data: &Dataset,
    rules: &Path,
    groups: usize,
    cycles: usize,
) -> anyhow::Result<PromResult> {
    let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
        bail!("prometheus or promtool not on PATH: apt-get install -y prometheus");
    };
    let version = std::process::Command::new(&prometheus)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    let check = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(rules)
        .output()?;
    ensure!(
        check.status.success(),
        "promtool check rules refused the file:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let om = dir.join("data.om");
    data.write_openmetrics(&om)?;
    let tsdb = dir.join("prometheus");
    std::fs::create_dir_all(&tsdb)?;
    let made = std::process::Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&tsdb)
        .output()?;
    ensure!(
        made.status.success(),
        "promtool create-blocks-from failed:\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  evaluation_interval: {EVAL_INTERVAL}\nrule_files:\n  - {}\n",
            rules.display()
        ),
    )?;
    let port = free_tcp_port()?;
    let log = dir.join("prometheus.log");
    let mut child = spawn(
        &prometheus,
        &[
            format!("--config.file={}", cfg.display()),
            format!("--storage.tsdb.path={}", tsdb.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--storage.tsdb.retention.time=400d".into(),
        ],
        &log,
    )?;
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&mut child, &format!("{base}/-/ready"), &log).await?;
    let client = reqwest::Client::new();
    let mut sums = Vec::new();
    let mut cpus = Vec::new();
    let mut last_cpu = f64::NAN;
    let mut seen_cycle = 0;
    let deadline = Instant::now() + Duration::from_secs(300 + 120 * cycles as u64);
    while sums.len() < cycles {
        ensure!(
            Instant::now() < deadline,
            "Prometheus did not complete {cycles} cycles in time:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let mut iterations = BTreeMap::new();
        let mut durations = BTreeMap::new();
        let mut cpu = f64::NAN;
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(rest) = series.strip_prefix("prometheus_rule_group_iterations_total{") {
                iterations.insert(rest.to_string(), value);
            } else if let Some(rest) =
                series.strip_prefix("prometheus_rule_group_last_duration_seconds{")
            {
                durations.insert(rest.to_string(), value);
            } else if series == "process_cpu_seconds_total" {
                cpu = value;
            }
        }
        if iterations.len() < groups {
            continue;
        }
        let done = iterations.values().cloned().fold(f64::INFINITY, f64::min) as usize;
        if done > seen_cycle {
            // CPU per cycle: between two consecutive completed cycles
            let per_cycle = (cpu - last_cpu) / (done - seen_cycle) as f64;
            seen_cycle = done;
            last_cpu = cpu;
            let sum: f64 = durations.values().sum();
            println!(
                "Prometheus: cycle {}{}: {per_cycle:.3} s CPU, {sum:.3} s summed over {} groups",
                done - 1,
                if done == 1 { " (warm-up)" } else { "" },
                durations.len()
            );
            if done >= 2 {
                sums.push(sum);
                cpus.push(per_cycle);
            }
        }
    }
    let body = client
        .get(format!("{base}/api/v1/alerts"))
        .send()
        .await?
        .text()
        .await?;
    let alerts: serde_json::Value = serde_json::from_str(&body)?;
    let n = alerts["data"]["alerts"].as_array().map_or(0, Vec::len);
    let _ = child.kill().await;
    Ok(PromResult {
        group_sum: sums,
        cpu: cpus,
        alerts: n,
        version,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. Notification delay

/// A webhook receiver: the time (ms) each firing alert's `queue` label first arrived.
async fn webhook(
    listener: tokio::net::TcpListener,
    tx: tokio::sync::mpsc::UnboundedSender<(String, i64)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let at = now_ms();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    for a in v["alerts"].as_array().into_iter().flatten() {
                        if a["status"] == "firing" {
                            if let Some(q) = a["labels"]["queue"].as_str() {
                                let _ = tx.send((q.to_string(), at));
                            }
                        }
                    }
                }
                if write
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

async fn delay_bench(dir: &Path, args: &Args) -> anyhow::Result<Vec<f64>> {
    let bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("fleetwatch-aggregator"))
        .filter(|p| p.is_file())
        .context("fleetwatch-aggregator not found beside this program: cargo build --release -p fleetwatch-aggregator")?;
    let p = dir.join("pki");
    pki::init(&p, "bench CA")?;
    let server = pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    let agent = pki::issue_agent(&p, "bench-app", pki::Validity::days(1))?;
    std::fs::write(dir.join("token"), "bench-token-0123456789abcdef\n")?;
    std::fs::write(
        dir.join("delay-rules.yml"),
        format!(
            "groups:\n  - name: delay\n    interval: {}s\n    rules:\n      - alert: QueueBacklog\n        expr: queue_length > 500\n        for: {}s\n",
            args.interval_seconds, args.for_seconds
        ),
    )?;
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_port = hook.local_addr()?.port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(webhook(hook, tx));
    let (quic, http) = (free_udp_port()?, free_tcp_port()?);
    let config = dir.join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
[quic]
listen = "127.0.0.1:{quic}"
ca = "{p}/ca.pem"
cert = "{cert}"
key = "{key}"
crl = "{p}/crl.pem"
[http]
listen = "127.0.0.1:{http}"
admin_token_file = "{token}"
metrics_public = true
[rules]
files = ["{rules}"]
[alerting]
default_receiver = "hook"
group_by = ["alertname", "queue"]
group_wait_seconds = 0.0
group_interval_seconds = 1.0
repeat_interval_seconds = 3600.0
[[alerting.receivers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
"#,
            data = dir.join("aggregator").display(),
            p = p.display(),
            cert = server.cert.display(),
            key = server.key.display(),
            token = dir.join("token").display(),
            rules = dir.join("delay-rules.yml").display(),
        ),
    )?;
    let log = dir.join("aggregator.log");
    let mut agg = spawn(
        &bin,
        &["run".into(), "-c".into(), config.display().to_string()],
        &log,
    )?;
    wait_ready(&mut agg, &format!("http://127.0.0.1:{http}/readyz"), &log).await?;

    let buffer = Arc::new(Buffer::open(&dir.join("buffer"), BufferConfig::default())?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shipper = Shipper {
        link: AggregatorLink {
            addresses: vec![format!("127.0.0.1:{quic}")],
            server_name: "localhost".into(),
            ca: p.join("ca.pem"),
            cert: agent.cert,
            key: agent.key,
            ..Default::default()
        },
        buffer: buffer.clone(),
        metrics: AgentMetrics::new(),
        facts: HostFacts::default(),
        wake: wake.clone(),
    };
    let shipping = tokio::spawn(shipper.run(stopped));

    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ now_ms() as u64);
    let mut delays = Vec::new();
    let interval_ms = args.interval_seconds as f64 * 1000.0;
    for trial in 0..args.trials {
        // a random phase against the evaluation schedule
        tokio::time::sleep(Duration::from_millis((rng.unit() * interval_ms) as u64)).await;
        let queue = format!("q{trial}");
        let t0 = now_ms();
        let mut batch = Batch::new(Lane::Metrics, t0);
        batch.metrics.push(SeriesSamples {
            series: Series::new("queue_length", [Label::new("queue", queue.clone())]),
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: t0,
                value: 900.0,
            }],
        });
        buffer.push(Lane::Metrics, t0, |seq| {
            batch.seq = seq;
            codec::encode(&Message::Batch(batch))
        })?;
        wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.for_seconds + 60);
        let arrived = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((q, at))) if q == queue => break at,
                Ok(Some(_)) => continue,
                _ => bail!(
                    "trial {trial}: no notification within {} s; aggregator log:\n{}",
                    args.for_seconds + 60,
                    tail(&log)
                ),
            }
        };
        let delay = (arrived - t0) as f64 / 1000.0;
        println!(
            "trial {trial}: condition true → notification received {delay:.3} s later ({:.3} s after `for`)",
            delay - args.for_seconds as f64
        );
        delays.push(delay - args.for_seconds as f64);
    }
    let _ = stop.send(true);
    let _ = shipping.await;
    // SAFETY: SIGTERM to our own child, not yet reaped.
    if let Some(pid) = agg.id() {
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), agg.wait()).await;
    Ok(delays)
}

fn print_eval_table(args: &Args, series: usize, ours: &EvalResult, theirs: Option<&PromResult>) {
    let row = |what: &str, fw: f64, prom: Option<f64>| match prom {
        Some(p) => println!("| {what} | {fw:.3} | {p:.3} | **{:.2}** |", fw / p),
        None => println!("| {what} | {fw:.3} | | |"),
    };
    println!(
        "| one evaluation cycle: {} rules, {series} series (median of {} cycles) | fleetwatch | Prometheus | fw/prom |",
        args.rules, args.cycles
    );
    println!("|---|--:|--:|--:|");
    row(
        "CPU seconds",
        median(&ours.cpu),
        theirs.map(|t| median(&t.cpu)),
    );
    row(
        "sum of the groups' evaluation times, s (Prometheus runs groups concurrently)",
        median(&ours.group_sum),
        theirs.map(|t| median(&t.group_sum)),
    );
    row(
        "wall time, groups one after another, s",
        median(&ours.wall),
        None,
    );
    match theirs {
        Some(t) => {
            println!(
                "| alerts pending or firing after the run | {} | {} | |",
                ours.alerts, t.alerts
            );
            println!("Prometheus: {}", t.version);
        }
        None => println!(
            "| alerts pending or firing after the run | {} | | |",
            ours.alerts
        ),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = if args.keep {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    println!("working in {}", dir.display());

    if !args.skip_eval {
        let end = now_ms() / 1000 * 1000;
        let data = Dataset::new(args.series, end);
        let rules = dir.join("bench-rules.yml");
        std::fs::write(&rules, rule_file(args.rules, args.group_size))?;
        let groups = args.rules.div_ceil(args.group_size.max(1));
        println!(
            "evaluation: {} rules in {groups} groups over {} series ({} samples, 10 min at 15 s)",
            args.rules,
            data.defs.len(),
            data.samples()
        );
        let ours = fleetwatch_eval(&dir, &data, &rules, args.cycles)?;
        for problem in &ours.unhealthy {
            println!("fleetwatch: rule not healthy: {problem}");
        }
        let theirs = if args.skip_prometheus {
            None
        } else {
            match prometheus_eval(&dir, &data, &rules, groups, args.cycles).await {
                Ok(r) => Some(r),
                Err(e) => {
                    println!("Prometheus side skipped: {e:#}");
                    None
                }
            }
        };
        println!();
        print_eval_table(&args, data.defs.len(), &ours, theirs.as_ref());
        println!();
    }

    if !args.skip_delay {
        let delays = delay_bench(&dir, &args).await?;
        let target = args.interval_seconds as f64 + 1.0;
        let max = delays.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let min = delays.iter().cloned().fold(f64::INFINITY, f64::min);
        println!();
        println!(
            "notification delay minus `for` ({} s), {} trials, evaluation every {} s: min {min:.3} s, median {:.3} s, max {max:.3} s; target ≤ {target:.0} s (interval + 1 s): {}",
            args.for_seconds,
            delays.len(),
            args.interval_seconds,
            median(&delays),
            if max <= target { "met" } else { "NOT met" }
        );
    }
    Ok(())
}
