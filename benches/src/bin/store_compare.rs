//! Storage side by side (issue 3): fleetwatch's store against Prometheus 2.42 and
//! VictoriaMetrics 1.79 (Debian's `prometheus` and `victoria-metrics` packages), all three
//! loaded with the same generated samples in the same run.
//!
//! Measures, for each system, with the ratio fleetwatch / peer:
//! - ingest: samples per second from the first request until the last one is acknowledged;
//! - disk: bytes per sample after ingest, and after 30 days of history are loaded too;
//! - query latency: `query_range` over the last hour and over the history window, median of
//!   `--runs` runs after one warm-up.
//!
//! Prometheus and VictoriaMetrics run as child processes on free loopback ports with data in a
//! temporary directory, and are killed by PID when the program ends (also on error). fleetwatch
//! runs in this process: an aggregator (`server::start`) fed by the agent's `Shipper` from a
//! pre-filled buffer, over QUIC with mutual TLS, as in `pipeline.rs`. Nothing here asserts a
//! speed: the program prints a table and the issue's targets next to it.
//!
//! `cargo run --release -p fleetwatch-benches --bin store_compare -- --series 1000`

use anyhow::{bail, ensure, Context};
use clap::Parser;
use fleetwatch_agent::buffer::{Buffer, BufferConfig};
use fleetwatch_agent::config::AggregatorLink;
use fleetwatch_agent::metrics::AgentMetrics;
use fleetwatch_agent::shipper::Shipper;
use fleetwatch_aggregator::config::AggregatorConfig;
use fleetwatch_aggregator::remote_write::proto;
use fleetwatch_aggregator::server::{self, RunningAggregator};
use fleetwatch_benches::procfs::free_port;
use fleetwatch_common::codec;
use fleetwatch_common::model::{
    now_ms, Batch, HostFacts, Label, Lane, MetricKind, Sample, Series, SeriesSamples,
};
use fleetwatch_common::pki;
use fleetwatch_common::protocol::Message;
use std::io::Write;
use std::ops::Range;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Side-by-side storage benchmark: fleetwatch, Prometheus, VictoriaMetrics.
#[derive(Parser)]
struct Args {
    /// Series (20 per simulated host: node_exporter-like counters and gauges).
    #[arg(long, default_value_t = 1000)]
    series: usize,
    /// Minutes of 15 s samples ingested, ending now (at most 60: Prometheus' head window).
    #[arg(long, default_value_t = 60)]
    ingest_minutes: u64,
    /// Days of history loaded before the long-range queries.
    #[arg(long, default_value_t = 30)]
    history_days: u64,
    /// Interval of the history samples, seconds.
    #[arg(long, default_value_t = 600)]
    history_interval_seconds: u64,
    /// Skip loading history and the long-range queries.
    #[arg(long)]
    skip_history: bool,
    /// Random delay of each scrape after its schedule, 0 to this many milliseconds (0: every
    /// timestamp on the host's 15 s schedule, as Prometheus' scraper snaps them within 2 ms).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Seconds of data (across all series) in one ingest batch / remote-write request.
    #[arg(long, default_value_t = 60)]
    batch_seconds: u64,
    /// Seconds of data (across all series) in one history batch / remote-write request.
    #[arg(long, default_value_t = 3600)]
    history_batch_seconds: u64,
    /// Batches / requests in flight per system. Above 1, every batch is split by series into
    /// this many shards, each shard sent in time order (Prometheus refuses out-of-order samples),
    /// and fleetwatch's shipper gets the same batches with this window.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Timed runs per query, after one warm-up run; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keep VictoriaMetrics' response cache on (off by default: the same query is repeated).
    #[arg(long)]
    vm_cache: bool,
    /// Give up on fleetwatch's history load after this many seconds (reported, not fatal).
    #[arg(long, default_value_t = 1200)]
    history_timeout_seconds: u64,
    /// fleetwatch's `store.block_hours` (default: the aggregator's default).
    #[arg(long)]
    fw_block_hours: Option<f64>,
    /// Keep the temporary directory (data, logs, OpenMetrics files) and print its path.
    #[arg(long)]
    keep: bool,
    /// Where the temporary directory goes (default: the system's).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Prometheus binary.
    #[arg(long, default_value = "/usr/bin/prometheus")]
    prometheus: PathBuf,
    /// promtool binary.
    #[arg(long, default_value = "/usr/bin/promtool")]
    promtool: PathBuf,
    /// VictoriaMetrics binary.
    #[arg(long, default_value = "/usr/bin/victoria-metrics")]
    victoria_metrics: PathBuf,
}

// ---------------------------------------------------------------------------------------------
// Data generator

/// Series per simulated host.
const PER_HOST: usize = 20;
/// Ingest interval, milliseconds.
const INGEST_STEP_MS: i64 = 15_000;
/// The host label fleetwatch's aggregator sets from the agent certificate; the peers get it
/// explicitly so all three hold identical label sets.
const HOST: &str = "bench-host";
const GIB: i64 = 1 << 30;

/// splitmix64: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly standard normal (Irwin-Hall of 4, scaled to unit variance).
    fn normal(&mut self) -> f64 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) * 3f64.sqrt()
    }
}

/// Metric name, extra labels and type of series `j` of a host: 11 counters and 9 gauges. Eight
/// change at (almost) every sample (CPU idle and user time, network and disk bytes, available
/// memory, load, running processes, forks), four now and then (iowait and steal time, free
/// disk space, temperature) and eight never (nice time, error, drop and discard counters that
/// stay put, sizes, boot time). That is busier than node_exporter on the build machine, where
/// 26 % of the series changed between two scrapes 15 s apart.
fn series_def(j: usize) -> (&'static str, Vec<(&'static str, &'static str)>, MetricKind) {
    use MetricKind::{Counter, Gauge};
    let cpu = |mode| vec![("cpu", "0"), ("mode", mode)];
    let eth0 = || vec![("device", "eth0")];
    let root = || {
        vec![
            ("device", "/dev/vda1"),
            ("fstype", "ext4"),
            ("mountpoint", "/"),
        ]
    };
    match j {
        0 => ("node_cpu_seconds_total", cpu("idle"), Counter),
        1 => ("node_cpu_seconds_total", cpu("user"), Counter),
        2 => ("node_network_receive_bytes_total", eth0(), Counter),
        3 => (
            "node_disk_written_bytes_total",
            vec![("device", "vda")],
            Counter,
        ),
        4 => ("node_memory_MemAvailable_bytes", vec![], Gauge),
        5 => ("node_load1", vec![], Gauge),
        6 => ("node_procs_running", vec![], Gauge),
        7 => ("node_cpu_seconds_total", cpu("iowait"), Counter),
        8 => ("node_cpu_seconds_total", cpu("steal"), Counter),
        9 => ("node_filesystem_avail_bytes", root(), Gauge),
        10 => (
            "node_hwmon_temp_celsius",
            vec![("chip", "coretemp"), ("sensor", "temp1")],
            Gauge,
        ),
        11 => ("node_cpu_seconds_total", cpu("nice"), Counter),
        12 => ("node_network_receive_errs_total", eth0(), Counter),
        13 => ("node_network_transmit_drop_total", eth0(), Counter),
        14 => (
            "node_disk_discards_completed_total",
            vec![("device", "vda")],
            Counter,
        ),
        15 => ("node_memory_MemTotal_bytes", vec![], Gauge),
        16 => ("node_filesystem_size_bytes", root(), Gauge),
        17 => ("node_filesystem_files", root(), Gauge),
        18 => ("node_boot_time_seconds", vec![], Gauge),
        _ => ("node_forks_total", vec![], Counter),
    }
}

/// One simulated host. A slowly wandering "busy" level (mean-reverting random walk around a
/// per-host base; most hosts mostly idle) drives CPU time, disk writes, load, temperature and
/// running processes; the network rate wanders on its own (log-normal random walk); available
/// memory drifts in whole pages; the filesystem fills in whole blocks now and then, with a
/// daily clean-up. Counters start from a random uptime of 1 to 61 days and keep
/// node_exporter's resolution (CPU seconds in 1/100 s, bytes as integers).
struct HostGen {
    rng: Rng,
    offset_ms: i64,
    base_busy: f64,
    busy: f64,
    /// idle, user, iowait, steal, nice; 1/100 s.
    cpu_ticks: [u64; 5],
    net_base: f64,
    net_rate: f64,
    net: u64,
    written: u64,
    mem_total: i64,
    mem_base: i64,
    mem: i64,
    load1: f64,
    procs: f64,
    fs_size: i64,
    fs_avail: i64,
    temp: f64,
    constants: [f64; 5],
    forks: u64,
}

impl HostGen {
    fn new(h: usize) -> Self {
        let mut rng = Rng((h as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
        let uptime = 86_400.0 * (1.0 + 60.0 * rng.unit());
        let base_busy = 0.03 + 0.6 * rng.unit().powi(2);
        let fr = [
            1.0 - base_busy,
            0.7 * base_busy,
            0.01 * base_busy,
            0.0005,
            0.0001,
        ];
        let cpu_ticks = fr.map(|f| (f * uptime * 100.0 * (0.9 + 0.2 * rng.unit())) as u64);
        let net_base = 10f64.powf(3.0 + 3.0 * rng.unit());
        let mem_total = [4, 8, 16, 32][(rng.next() % 4) as usize] * GIB - 187 * 4096 * 64;
        let mem_base = (mem_total as f64 * (0.3 + 0.5 * rng.unit())) as i64 / 4096 * 4096;
        let fs_size = [50, 100, 200][(rng.next() % 3) as usize] * GIB - 37 * 4096 * 1024;
        let fs_avail = (fs_size as f64 * (0.3 + 0.5 * rng.unit())) as i64 / 4096 * 4096;
        let errs = ((rng.next() % 3) * (rng.next() % 50)) as f64;
        let drops = (rng.next() % 1000) as f64;
        Self {
            offset_ms: (rng.unit() * 14_000.0) as i64,
            base_busy,
            busy: base_busy,
            cpu_ticks,
            net_base,
            net_rate: net_base,
            net: (net_base * uptime) as u64,
            written: ((20_000.0 + 2e6 * base_busy) * uptime) as u64 / 4096 * 4096,
            mem_total,
            mem_base,
            mem: mem_base,
            load1: 2.0 * base_busy,
            procs: 1.0,
            fs_size,
            fs_avail,
            temp: 40.0 + 35.0 * base_busy,
            constants: [
                errs,
                drops,
                0.0,
                (fs_size / 16384) as f64,
                (1_700_000_000.0 - uptime).round(),
            ],
            forks: (uptime * 2.0) as u64,
            rng,
        }
    }

    /// Advances the host by `dt` seconds.
    fn step(&mut self, dt: f64) {
        let r = &mut self.rng;
        let k = (dt / 15.0).sqrt();
        // Chance that something happening now and then happened within `dt`.
        let now_and_then =
            |r: &mut Rng, per_15s: f64| r.unit() < 1.0 - (1.0 - per_15s).powf(dt / 15.0);
        self.busy += (self.base_busy - self.busy) * (dt / 1800.0).min(1.0) + 0.03 * k * r.normal();
        self.busy = self.busy.clamp(0.01, 0.97);
        let user = self.busy * 0.7 * (1.0 + 0.1 * r.normal()).max(0.0);
        let idle = (1.0 - user - self.busy * 0.3).max(0.0);
        // USER_HZ ticks: node_exporter reports CPU time in 1/100 s.
        self.cpu_ticks[0] += (idle * dt * 100.0).round() as u64;
        self.cpu_ticks[1] += (user * dt * 100.0).round() as u64;
        for (i, p) in [(2, 0.2 * self.busy), (3, 0.05)] {
            if now_and_then(r, p) {
                self.cpu_ticks[i] += 1 + r.next() % 3;
            }
        }
        let ln = self.net_rate.ln();
        let ln = ln + (self.net_base.ln() - ln) * (dt / 3600.0).min(1.0) + 0.1 * k * r.normal();
        self.net_rate = ln.exp();
        self.net += (self.net_rate * dt * (1.0 + 0.2 * r.normal()).max(0.0)).round() as u64;
        let write_rate = 20_000.0 + 2e6 * self.busy;
        self.written +=
            (write_rate * dt * (1.0 + 0.5 * r.normal()).max(0.0) / 4096.0).round() as u64 * 4096;
        let pages = (self.mem_base - self.mem) as f64 / 4096.0 * (dt / 7200.0).min(1.0)
            + 2000.0 * k * r.normal();
        self.mem =
            (self.mem + pages.round() as i64 * 4096).clamp(self.mem_total / 20, self.mem_total);
        let a = (-dt / 60.0).exp();
        self.load1 =
            self.load1 * a + 2.0 * self.busy * (1.0 + 0.3 * r.normal()).max(0.0) * (1.0 - a);
        self.procs = (1.0 + self.busy * 6.0 * r.unit()).round();
        if now_and_then(r, 0.3) {
            self.fs_avail -= (1.0 + r.unit() * dt * 1_000.0 / 4096.0).round() as i64 * 4096;
        }
        if now_and_then(r, 15.0 / 86_400.0) {
            self.fs_avail += GIB; // log rotation
        }
        self.fs_avail = self.fs_avail.clamp(GIB, self.fs_size);
        let a = (-dt / 300.0).exp();
        self.temp = self.temp * a + (40.0 + 35.0 * self.busy) * (1.0 - a);
        self.forks += (dt * 2.0 * (1.0 + 0.5 * r.normal()).max(0.0)).round() as u64;
    }

    fn value(&self, j: usize) -> f64 {
        match j {
            0 | 1 => self.cpu_ticks[j] as f64 / 100.0,
            2 => self.net as f64,
            3 => self.written as f64,
            4 => self.mem as f64,
            5 => (self.load1 * 100.0).round() / 100.0,
            6 => self.procs,
            7 | 8 => self.cpu_ticks[j - 5] as f64 / 100.0,
            9 => self.fs_avail as f64,
            10 => self.temp.round(),
            11 => self.cpu_ticks[4] as f64 / 100.0,
            12..=14 => self.constants[j - 12],
            15 => self.mem_total as f64,
            16 => self.fs_size as f64,
            17 => self.constants[3],
            18 => self.constants[4],
            _ => self.forks as f64,
        }
    }
}

/// Every sample of the run: history points (if any), then the ingest window.
struct Dataset {
    fw_series: Vec<Series>,
    peer_series: Vec<Series>,
    kinds: Vec<MetricKind>,
    /// Nominal time of each point.
    times: Vec<i64>,
    /// Sample timestamp of each point for each host: nominal + the host's scrape offset (0-14
    /// s) + optional jitter (`--jitter-ms`).
    stamps: Vec<Vec<i64>>,
    /// Value of each point for each series.
    values: Vec<Vec<f64>>,
    /// Points before the ingest window.
    n_hist: usize,
}

impl Dataset {
    fn generate(series: usize, times: Vec<i64>, n_hist: usize, jitter_ms: u64) -> Self {
        let hosts = series.div_ceil(PER_HOST);
        let mut fw_series = Vec::with_capacity(series);
        let mut peer_series = Vec::with_capacity(series);
        let mut kinds = Vec::with_capacity(series);
        for i in 0..series {
            let (name, extra, kind) = series_def(i % PER_HOST);
            let mut labels = vec![
                Label::new("instance", format!("node-{:04}:9100", i / PER_HOST)),
                Label::new("job", "node"),
            ];
            labels.extend(extra.into_iter().map(|(k, v)| Label::new(k, v)));
            fw_series.push(Series::new(name, labels.clone()));
            labels.push(Label::new("host", HOST));
            peer_series.push(Series::new(name, labels));
            kinds.push(kind);
        }
        let mut stamps = vec![vec![0i64; hosts]; times.len()];
        let mut values = vec![vec![0f64; series]; times.len()];
        for h in 0..hosts {
            let mut g = HostGen::new(h);
            let mut prev = times.first().copied().unwrap_or(0);
            for (k, &t) in times.iter().enumerate() {
                g.step(((t - prev) as f64 / 1000.0).max(1.0));
                prev = t;
                stamps[k][h] = t + g.offset_ms + (g.rng.next() % (jitter_ms + 1)) as i64;
                for j in 0..PER_HOST.min(series - h * PER_HOST) {
                    values[k][h * PER_HOST + j] = g.value(j);
                }
            }
        }
        Self {
            fw_series,
            peer_series,
            kinds,
            times,
            stamps,
            values,
            n_hist,
        }
    }

    fn n_series(&self) -> usize {
        self.kinds.len()
    }

    fn hist(&self) -> Range<usize> {
        0..self.n_hist
    }

    fn ingest(&self) -> Range<usize> {
        self.n_hist..self.times.len()
    }

    fn samples_in(&self, points: &Range<usize>) -> u64 {
        (points.len() * self.n_series()) as u64
    }

    /// Oldest and newest sample timestamp of `points`.
    fn stamp_range(&self, points: &Range<usize>) -> (i64, i64) {
        let lo = self.stamps[points.start].iter().min().copied().unwrap_or(0);
        let hi = self.stamps[points.end - 1]
            .iter()
            .max()
            .copied()
            .unwrap_or(0);
        (lo, hi)
    }

    /// The batches: consecutive points grouped by `batch_ms` of nominal time, each group split
    /// into `shards` by series index. Send order: group by group, shard by shard.
    fn plans(&self, points: Range<usize>, batch_ms: i64, shards: usize) -> Vec<Plan> {
        let mut out = Vec::new();
        let t0 = self.times[points.start.min(self.times.len() - 1)];
        let mut k = points.start;
        while k < points.end {
            let key = (self.times[k] - t0) / batch_ms;
            let mut e = k + 1;
            while e < points.end && (self.times[e] - t0) / batch_ms == key {
                e += 1;
            }
            for shard in 0..shards {
                out.push(Plan {
                    shard,
                    points: k..e,
                });
            }
            k = e;
        }
        out
    }

    /// The samples of one batch, with fleetwatch's labels (`peer` false) or the peers' (`host`
    /// label included).
    fn batch(&self, plan: &Plan, shards: usize, peer: bool) -> Vec<SeriesSamples> {
        (plan.shard..self.n_series())
            .step_by(shards)
            .map(|i| SeriesSamples {
                series: if peer {
                    self.peer_series[i].clone()
                } else {
                    self.fw_series[i].clone()
                },
                kind: self.kinds[i],
                samples: plan
                    .points
                    .clone()
                    .map(|k| Sample {
                        timestamp_ms: self.stamps[k][i / PER_HOST],
                        value: self.values[k][i],
                    })
                    .collect(),
            })
            .collect()
    }

    /// Writes `points` as OpenMetrics for `promtool tsdb create-blocks-from openmetrics`.
    fn write_openmetrics(&self, points: Range<usize>, path: &Path) -> anyhow::Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let names: Vec<String> = self
            .peer_series
            .iter()
            .map(|s| {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|l| format!("{}=\"{}\"", l.name, l.value))
                    .collect();
                format!("{}{{{}}}", s.name, labels.join(","))
            })
            .collect();
        for k in points {
            for (i, name) in names.iter().enumerate() {
                let ts = self.stamps[k][i / PER_HOST];
                writeln!(
                    w,
                    "{name} {} {}.{:03}",
                    self.values[k][i],
                    ts / 1000,
                    ts % 1000
                )?;
            }
        }
        writeln!(w, "# EOF")?;
        w.flush()?;
        Ok(())
    }
}

/// One batch: a run of points, one shard of the series.
struct Plan {
    shard: usize,
    points: Range<usize>,
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A command whose process the kernel kills when this program dies, even by a signal that
/// skips the drop guards.
fn child_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when the
    // thread that spawned it (the main thread, which spawns every child) exits.
    unsafe {
        cmd.pre_exec(|| {
            // prctl is variadic and the kernel reads a full word: pass one.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A child process, killed by PID when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let f = std::fs::File::create(log)?;
        let child = child_command(bin)
            .args(args)
            .stdout(f.try_clone()?)
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} ({})", name, bin.display()))?;
        Ok(Self {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_ready(client: &reqwest::Client, url: &str, p: &mut Proc) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("{} exited ({status}); its log:\n{}", p.name, p.log_tail());
        }
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready at {url} after 120 s; its log:\n{}",
                p.name,
                p.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn first_line_of(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

fn prometheus_args(cfg: &Path, data: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--config.file={}", cfg.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--web.enable-remote-write-receiver".into(),
        "--storage.tsdb.retention.time=400d".into(),
    ]
}

/// Runs promtool to turn an OpenMetrics file into blocks in `out`; returns how long it took.
fn promtool_blocks(
    promtool: &Path,
    input: &Path,
    out: &Path,
    max_block: &str,
    log: &Path,
) -> anyhow::Result<Duration> {
    std::fs::create_dir_all(out)?;
    let start = Instant::now();
    let o = child_command(promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(format!("--max-block-duration={max_block}"))
        .arg(input)
        .arg(out)
        .output()
        .with_context(|| format!("running {}", promtool.display()))?;
    let took = start.elapsed();
    let mut text = o.stdout.clone();
    text.extend_from_slice(&o.stderr);
    std::fs::write(log, &text)?;
    ensure!(
        o.status.success(),
        "promtool failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&text)
    );
    Ok(took)
}

// ---------------------------------------------------------------------------------------------
// Disk

/// (allocated bytes as `du` counts them, apparent bytes) of everything under `p`.
fn disk_usage(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return (0, 0); // vanished while walking (a merge removed it)
    };
    let mut total = (md.blocks() * 512, md.len());
    if md.is_dir() {
        total.1 = 0;
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let (a, b) = disk_usage(&e.path());
                total.0 += a;
                total.1 += b;
            }
        }
    }
    total
}

/// Prometheus' data directory without its query log (`queries.active`, 20 kB) and lock file.
fn prom_store(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name() != "queries.active" && e.file_name() != "lock")
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Prometheus' block directories (everything but the WAL, the head chunks and the lock files).
fn prom_block_dirs(dir: &Path) -> Vec<PathBuf> {
    prom_store(dir)
        .into_iter()
        .filter(|p| p.is_dir() && !p.ends_with("wal") && !p.ends_with("chunks_head"))
        .collect()
}

/// Directories directly under `dir`.
fn count_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| rd.flatten().filter(|e| e.path().is_dir()).count())
}

/// A disk figure: what was measured and how big it was.
struct Disk {
    du: u64,
    apparent: u64,
}

impl Disk {
    fn of(p: &Path) -> Self {
        Self::of_all(&[p.to_path_buf()])
    }
    fn of_all(paths: &[PathBuf]) -> Self {
        let (du, apparent) = paths
            .iter()
            .map(|p| disk_usage(p))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        Self { du, apparent }
    }
    fn apparent_per_sample(&self, samples: u64) -> f64 {
        self.apparent as f64 / samples as f64
    }
    fn per_sample(&self, samples: u64) -> f64 {
        self.du as f64 / samples as f64
    }
}

// ---------------------------------------------------------------------------------------------
// VictoriaMetrics

/// Sum of VictoriaMetrics' gauges that say work is pending (merges, unflushed rows).
async fn vm_pending(client: &reqwest::Client, base: &str) -> anyhow::Result<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("vm_active_merges")
                || l.starts_with("vm_active_force_merges")
                || l.starts_with("vm_pending_rows")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Flushes VictoriaMetrics' in-memory rows to disk, force-merges every partition, then waits
/// until no merge is active, nothing is pending and the data directory stopped changing.
async fn vm_persist(client: &reqwest::Client, base: &str, dir: &Path) -> anyhow::Result<()> {
    for path in ["/internal/force_flush", "/internal/force_merge"] {
        let r = client.get(format!("{base}{path}")).send().await?;
        ensure!(r.status().is_success(), "{path}: HTTP {}", r.status());
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut last, mut stable) = (0u64, 0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pending = vm_pending(client, base).await?;
        let du = disk_usage(dir).0;
        if pending == 0.0 && du == last {
            stable += 1;
            if stable >= 2 {
                return Ok(());
            }
        } else {
            stable = 0;
        }
        last = du;
    }
    println!("  warning: VictoriaMetrics still merging after 300 s; measuring anyway");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Loading

fn remote_write_body(samples: &[SeriesSamples]) -> Vec<u8> {
    proto::encode(&proto::write_request(samples))
}

/// Sends each shard's bodies in order (shards concurrently) as Prometheus remote write; returns
/// the time from the first request to the last acknowledgement.
async fn load_http(
    client: &reqwest::Client,
    url: &str,
    shards: Vec<Vec<Vec<u8>>>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for shard in shards {
        let (client, url) = (client.clone(), url.to_string());
        set.spawn(async move {
            for body in shard {
                let r = client
                    .post(&url)
                    .header("Content-Encoding", "snappy")
                    .header("Content-Type", "application/x-protobuf")
                    .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = r.status();
                if !status.is_success() {
                    let text = r.text().await.unwrap_or_default();
                    bail!("POST {url}: HTTP {status}: {}", text.trim());
                }
            }
            Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.context("sender task")??;
    }
    Ok(start.elapsed())
}

/// The in-process fleetwatch: aggregator configuration, the running aggregator, the agent side.
struct Fleetwatch {
    cfg: AggregatorConfig,
    agg: Option<RunningAggregator>,
    link: AggregatorLink,
    buffer: Arc<Buffer>,
    token: String,
}

impl Fleetwatch {
    async fn start(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let agg = server::start(self.cfg.clone())
            .await
            .context("starting the fleetwatch aggregator")?;
        self.link.addresses = vec![agg.quic_addr.to_string()];
        self.agg = Some(agg);
        Ok(t.elapsed())
    }

    fn base(&self) -> String {
        format!(
            "http://{}",
            self.agg.as_ref().expect("aggregator running").http_addr
        )
    }

    /// The benchmark's equivalent of VictoriaMetrics' force_flush + force_merge: writes the
    /// head into blocks (`Storage::flush`, which also drops the log before that point), then
    /// one round of `maintain` (compaction, rollups of complete windows, retention). Returns how
    /// long that took.
    async fn persist(&self) -> anyhow::Result<Duration> {
        let store = self
            .agg
            .as_ref()
            .expect("aggregator running")
            .state
            .store
            .clone();
        let t = Instant::now();
        tokio::task::spawn_blocking(move || {
            store.flush()?;
            store.maintain(now_ms())
        })
        .await
        .context("store flush task")?
        .context("flushing fleetwatch's store")?;
        Ok(t.elapsed())
    }

    /// Stops the aggregator and waits until every task let go of its state and its store (a
    /// maintenance round on a blocking thread outlives the aborted task), so the store is
    /// closed and nothing writes into its directory any more.
    async fn stop(&mut self) {
        let Some(agg) = self.agg.take() else { return };
        let state = agg.state.clone();
        agg.stop().await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (Arc::strong_count(&state) > 1 || Arc::strong_count(&state.store) > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if Arc::strong_count(&state) > 1 || Arc::strong_count(&state.store) > 1 {
            println!("  warning: fleetwatch's store still in use 120 s after stop");
        }
    }

    /// Fills the agent buffer with `batches` (sled, fsync per batch; not timed), then ships them
    /// through the agent's `Shipper` and times until the buffer is empty: every batch
    /// acknowledged after the aggregator's fsync. Err(text) if it stops making progress or
    /// runs past `timeout`.
    async fn load(
        &self,
        batches: impl Iterator<Item = Vec<SeriesSamples>>,
        timeout: Duration,
    ) -> anyhow::Result<Result<Duration, String>> {
        let created = now_ms();
        let mut n = 0usize;
        for metrics in batches {
            let mut batch = Batch::new(Lane::Metrics, created);
            batch.metrics = metrics;
            self.buffer.push(Lane::Metrics, created, |seq| {
                batch.seq = seq;
                codec::encode(&Message::Batch(batch))
            })?;
            n += 1;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        let shipper = Shipper {
            link: self.link.clone(),
            buffer: self.buffer.clone(),
            metrics: AgentMetrics::new(),
            facts: HostFacts::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
        };
        let start = Instant::now();
        let task = tokio::spawn(shipper.run(rx));
        let (mut left, mut progress_at) = (self.buffer.len(), Instant::now());
        let outcome = loop {
            if self.buffer.is_empty() {
                break Ok(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now_left = self.buffer.len();
            if now_left != left {
                (left, progress_at) = (now_left, Instant::now());
            }
            if progress_at.elapsed() > Duration::from_secs(60) || start.elapsed() > timeout {
                break Err(format!(
                    "{} of {n} batches acknowledged after {:.0} s; gave up",
                    n - now_left,
                    start.elapsed().as_secs_f64()
                ));
            }
        };
        let _ = tx.send(true);
        let _ = task.await;
        Ok(outcome)
    }
}

// ---------------------------------------------------------------------------------------------
// Queries

/// A query endpoint.
struct Target {
    base: String,
    token: Option<String>,
}

async fn api_get(
    client: &reqwest::Client,
    t: &Target,
    path: &str,
    params: &[(&str, String)],
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let mut req = client.get(format!("{}{path}", t.base)).query(params);
    if let Some(token) = &t.token {
        req = req.bearer_auth(token);
    }
    let start = Instant::now();
    let r = req.send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = start.elapsed();
    ensure!(
        status.is_success(),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    let v: serde_json::Value = serde_json::from_slice(&body).context("response is not JSON")?;
    ensure!(v["status"] == "success", "status {}", v["status"]);
    Ok((took, v))
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// A `query_range`'s median latency and what it returned.
struct QueryOutcome {
    median_ms: f64,
    series: usize,
    points: usize,
}

async fn time_query(
    client: &reqwest::Client,
    t: &Target,
    expr: &str,
    range: (i64, i64, u64),
    runs: usize,
) -> anyhow::Result<QueryOutcome> {
    let params = [
        ("query", expr.to_string()),
        ("start", secs(range.0)),
        ("end", secs(range.1)),
        ("step", range.2.to_string()),
    ];
    let (_, v) = api_get(client, t, "/api/v1/query_range", &params).await?;
    let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
    let points = result
        .iter()
        .map(|s| s["values"].as_array().map_or(0, |a| a.len()))
        .sum();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(api_get(client, t, "/api/v1/query_range", &params).await?.0);
    }
    times.sort();
    let median = if runs % 2 == 1 {
        times[runs / 2].as_secs_f64()
    } else {
        (times[runs / 2 - 1] + times[runs / 2]).as_secs_f64() / 2.0
    };
    Ok(QueryOutcome {
        median_ms: median * 1000.0,
        series: result.len(),
        points,
    })
}

/// How many samples of `names` a system holds from `from_ms` to `at_ms`: the sum over the
/// metric names of `sum(count_over_time(NAME{job="node"}[window]))` at `at_ms` (one name at a
/// time: a range function over several names would give duplicate label sets).
async fn count_samples(
    client: &reqwest::Client,
    t: &Target,
    names: &[&str],
    from_ms: i64,
    at_ms: i64,
) -> anyhow::Result<u64> {
    let window = (at_ms - from_ms) / 1000 + 60;
    let mut total = 0u64;
    for name in names {
        let params = [
            (
                "query",
                format!("sum(count_over_time({name}{{job=\"node\"}}[{window}s]))"),
            ),
            ("time", secs(at_ms)),
        ];
        let (_, v) = api_get(client, t, "/api/v1/query", &params).await?;
        let value = v["data"]["result"][0]["value"][1]
            .as_str()
            .unwrap_or("0")
            .parse::<f64>()
            .unwrap_or(0.0);
        total += value as u64;
    }
    Ok(total)
}

const NAMES: [&str; 3] = ["fleetwatch", "prometheus", "victoriametrics"];

/// Runs each query against the three systems, adds a row per query, warns when the systems
/// return different numbers of series.
async fn query_rows(
    client: &reqwest::Client,
    targets: &[Option<&Target>; 3],
    queries: &[(&str, u64)],
    (start, end): (i64, i64),
    label: &str,
    runs: usize,
    rows: &mut Vec<Row>,
) {
    for (expr, step) in queries {
        let mut v = [None; 3];
        let mut counts = [None; 3];
        for (i, t) in targets.iter().enumerate() {
            let Some(t) = t else { continue };
            match time_query(client, t, expr, (start, end, *step), runs).await {
                Ok(q) => {
                    v[i] = Some(q.median_ms);
                    counts[i] = Some((q.series, q.points));
                }
                Err(e) => println!("  warning: {} failed `{expr}`: {e:#}", NAMES[i]),
            }
        }
        let shown: Vec<String> = counts
            .iter()
            .zip(NAMES)
            .map(|(c, n)| match c {
                Some((s, p)) => format!("{n} {s} series/{p} points"),
                None => format!("{n} -"),
            })
            .collect();
        println!("  {label} `{expr}` step {step}s: {}", shown.join(", "));
        let series: Vec<usize> = counts.iter().flatten().map(|c| c.0).collect();
        if series.windows(2).any(|w| w[0] != w[1]) {
            println!("  warning: the systems returned different numbers of series for `{expr}`");
        }
        rows.push(Row {
            metric: format!("query {label} `{expr}` step {step}s, median ms"),
            unit: Unit::Ms,
            v,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Output

#[derive(Clone, Copy)]
enum Unit {
    PerSec,
    BytesPerSample,
    Ms,
}

struct Row {
    metric: String,
    unit: Unit,
    v: [Option<f64>; 3],
}

fn fmt_value(unit: Unit, v: Option<f64>) -> String {
    match (unit, v) {
        (_, None) => "-".into(),
        (Unit::PerSec, Some(x)) => format!("{x:.0}"),
        (Unit::BytesPerSample, Some(x)) => format!("{x:.3}"),
        (Unit::Ms, Some(x)) if x < 10.0 => format!("{x:.2}"),
        (Unit::Ms, Some(x)) => format!("{x:.1}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn print_table(rows: &[Row]) {
    let header = [
        "metric",
        "fleetwatch",
        "prometheus",
        "victoriametrics",
        "fw/prom",
        "fw/vm",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                fmt_value(r.unit, r.v[0]),
                fmt_value(r.unit, r.v[1]),
                fmt_value(r.unit, r.v[2]),
                ratio(r.v[0], r.v[1]),
                ratio(r.v[0], r.v[2]),
            ]
        })
        .collect();
    let mut w = header.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let line = |c: [&str; 6]| {
        let mut s = format!("| {:<w0$} |", c[0], w0 = w[0]);
        for i in 1..6 {
            s.push_str(&format!(" {:>wi$} |", c[i], wi = w[i]));
        }
        println!("{s}");
    };
    line(header);
    let dashes: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    println!(
        "|{}|",
        dashes
            .iter()
            .enumerate()
            .map(|(i, d)| if i == 0 {
                format!("-{d}-")
            } else {
                format!("-{d}:")
            })
            .collect::<Vec<_>>()
            .join("|")
    );
    for c in &cells {
        line([&c[0], &c[1], &c[2], &c[3], &c[4], &c[5]]);
    }
}

fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mib(b: u64) -> String {
    format!("{:.2} MiB", b as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------------------------

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.series >= 1, "--series must be at least 1");
    ensure!(
        (1..=60).contains(&args.ingest_minutes),
        "--ingest-minutes must be 1 to 60: Prometheus' head accepts samples within about an hour of its newest"
    );
    ensure!(
        args.batch_seconds >= 15,
        "--batch-seconds must be at least 15"
    );
    ensure!(
        args.history_batch_seconds >= args.history_interval_seconds,
        "--history-batch-seconds must be at least --history-interval-seconds"
    );
    ensure!(
        args.history_interval_seconds >= 15,
        "--history-interval-seconds must be at least 15"
    );
    ensure!(
        (1..=16).contains(&args.in_flight) && args.in_flight <= args.series,
        "--in-flight must be 1 to 16 and at most --series"
    );
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let history = !args.skip_history && args.history_days > 0;
    let t_run = Instant::now();
    let elapsed = move || format!("[{:7.1}s]", t_run.elapsed().as_secs_f64());

    println!("command: {}", command_line());
    println!(
        "machine: {} cores; peers: {}; victoria-metrics {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line_of(&args.prometheus, &["--version"]),
        // Debian's build reports an empty version: ask dpkg.
        first_line_of(
            Path::new("dpkg-query"),
            &[
                "--showformat=${Version} (Debian package)",
                "--show",
                "victoria-metrics"
            ]
        ),
    );

    // Temporary directory first, so it is dropped (deleted) after the child processes.
    let tmp = match &args.dir {
        Some(d) => tempfile::Builder::new()
            .prefix("store_compare.")
            .tempdir_in(d)?,
        None => tempfile::Builder::new()
            .prefix("store_compare.")
            .tempdir()?,
    };
    let (root, tmp_guard) = if args.keep {
        (tmp.keep(), None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    };

    // The data.
    let gen_start = Instant::now();
    let n_ing = (args.ingest_minutes * 60) as i64 * 1000 / INGEST_STEP_MS;
    let ingest_end = now_ms() / INGEST_STEP_MS * INGEST_STEP_MS - INGEST_STEP_MS;
    let ingest_first = ingest_end - (n_ing - 1) * INGEST_STEP_MS;
    let hist_iv = args.history_interval_seconds as i64 * 1000;
    let hist_from = ingest_end - args.history_days as i64 * 86_400_000;
    let mut times: Vec<i64> = Vec::new();
    if history {
        let mut t = (hist_from + hist_iv - 1).div_euclid(hist_iv) * hist_iv;
        while t < ingest_first {
            times.push(t);
            t += hist_iv;
        }
    }
    let n_hist = times.len();
    times.extend((0..n_ing).map(|k| ingest_first + k * INGEST_STEP_MS));
    let data = Dataset::generate(args.series, times, n_hist, args.jitter_ms);
    let (ing, hist) = (data.ingest(), data.hist());
    let ingest_samples = data.samples_in(&ing);
    let hist_samples = data.samples_in(&hist);
    let counters = data
        .kinds
        .iter()
        .filter(|k| **k == MetricKind::Counter)
        .count();
    println!(
        "data: {} series ({} counters, {} gauges, {} simulated hosts); ingest {} samples ({} min at 15 s); history {} samples ({} d at {} s); generated in {:.1} s",
        args.series,
        counters,
        args.series - counters,
        args.series.div_ceil(PER_HOST),
        ingest_samples,
        args.ingest_minutes,
        hist_samples,
        if history { args.history_days } else { 0 },
        args.history_interval_seconds,
        gen_start.elapsed().as_secs_f64()
    );
    println!("work dir: {}", root.display());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;

    // Prometheus.
    let prom_port = free_port()?;
    let prom_cfg = root.join("prometheus.yml");
    std::fs::write(&prom_cfg, "global:\n  scrape_interval: 15s\n")?;
    let prom_dir = root.join("prometheus-data");
    let prom_args = prometheus_args(&prom_cfg, &prom_dir, prom_port);
    let prom_base = format!("http://127.0.0.1:{prom_port}");
    let mut prom = Proc::spawn(
        "prometheus",
        &args.prometheus,
        &prom_args,
        &root.join("prometheus.log"),
    )?;

    // VictoriaMetrics.
    let vm_port = free_port()?;
    let vm_dir = root.join("victoria-data");
    let mut vm_args = vec![
        format!("-storageDataPath={}", vm_dir.display()),
        format!("-httpListenAddr=127.0.0.1:{vm_port}"),
        "-retentionPeriod=2y".into(),
        // Queries see the newest samples (the default hides the last 30 s).
        "-search.latencyOffset=0s".into(),
    ];
    if !args.vm_cache {
        vm_args.push("-search.disableCache".into());
    }
    let vm_base = format!("http://127.0.0.1:{vm_port}");
    let mut vm = Proc::spawn(
        "victoria-metrics",
        &args.victoria_metrics,
        &vm_args,
        &root.join("victoria-metrics.log"),
    )?;

    // fleetwatch.
    let pki_dir = root.join("pki");
    pki::init(&pki_dir, "bench CA")?;
    let server_cert = pki::issue_server(&pki_dir, "localhost", pki::Validity::days(2))?;
    let agent_cert = pki::issue_agent(&pki_dir, HOST, pki::Validity::days(2))?;
    let token = "bench-token-0123456789abcdef".to_string();
    std::fs::write(root.join("token"), format!("{token}\n"))?;
    let fw_dir = root.join("fleetwatch-data");
    let mut cfg = fleetwatch_benches::loopback::aggregator_config(
        &fw_dir,
        &pki_dir,
        server_cert,
        &root.join("token"),
    );
    cfg.limits.max_series_per_host = 10_000_000;
    cfg.store.retention_hours = (args.history_days * 24 + 48) as f64;
    if let Some(h) = args.fw_block_hours {
        cfg.store.block_hours = h;
    }
    cfg.limits.max_series_total = cfg.limits.max_series_total.max(10 * args.series);
    println!(
        "fleetwatch store: retention {} h, block {} h, flush after {} min",
        cfg.store.retention_hours, cfg.store.block_hours, cfg.store.flush_minutes
    );
    let mut fw = Fleetwatch {
        cfg,
        agg: None,
        link: AggregatorLink {
            addresses: Vec::new(),
            server_name: "localhost".into(),
            ca: pki_dir.join("ca.pem"),
            cert: agent_cert.cert,
            key: agent_cert.key,
            max_in_flight: args.in_flight,
            ..Default::default()
        },
        buffer: Arc::new(Buffer::open(
            &root.join("agent-buffer"),
            BufferConfig {
                max_bytes: 16 << 30,
                ..Default::default()
            },
        )?),
        token,
    };
    fw.start().await?;
    wait_ready(&client, &format!("{prom_base}/-/ready"), &mut prom).await?;
    wait_ready(&client, &format!("{vm_base}/health"), &mut vm).await?;
    println!("{} all three running", elapsed());

    let mut rows: Vec<Row> = Vec::new();
    let shards = args.in_flight;
    // What counts as each system's storage: fleetwatch's store directory (not its fleet
    // state), Prometheus' data directory but its query log and lock file, VictoriaMetrics'
    // data and index (not its caches, which it saves on shutdown).
    let fw_store = fw_dir.join("store");
    let vm_store = [vm_dir.join("data"), vm_dir.join("indexdb")];

    // ---- 1. Ingest -----------------------------------------------------------------------
    let plans = data.plans(ing.clone(), args.batch_seconds as i64 * 1000, shards);
    let mut bodies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); shards];
    for p in &plans {
        bodies[p.shard].push(remote_write_body(&data.batch(p, shards, true)));
    }
    println!(
        "{} ingest: {} batches of ~{} samples, {} in flight",
        elapsed(),
        plans.len(),
        ingest_samples as usize / plans.len().max(1),
        shards
    );
    let fw_ingest = fw
        .load(
            plans.iter().map(|p| data.batch(p, shards, false)),
            Duration::from_secs(600),
        )
        .await?
        .map_err(|e| anyhow::anyhow!("fleetwatch ingest: {e}"))?;
    let prom_ingest = load_http(
        &client,
        &format!("{prom_base}/api/v1/write"),
        bodies.clone(),
    )
    .await?;
    let vm_ingest = load_http(&client, &format!("{vm_base}/api/v1/write"), bodies).await?;
    let rate = |d: Duration| ingest_samples as f64 / d.as_secs_f64();
    println!(
        "{} ingest seconds: fleetwatch {:.3}, prometheus {:.3}, victoriametrics {:.3}",
        elapsed(),
        fw_ingest.as_secs_f64(),
        prom_ingest.as_secs_f64(),
        vm_ingest.as_secs_f64()
    );
    rows.push(Row {
        metric: format!(
            "ingest {}x{} min, samples/s until acked (higher is better)",
            args.series, args.ingest_minutes
        ),
        unit: Unit::PerSec,
        v: [
            Some(rate(fw_ingest)),
            Some(rate(prom_ingest)),
            Some(rate(vm_ingest)),
        ],
    });

    // ---- 2. Disk after ingest ------------------------------------------------------------
    vm_persist(&client, &vm_base, &vm_dir).await?;
    let vm_disk = Disk::of_all(&vm_store);
    let prom_disk = Disk::of_all(&prom_store(&prom_dir));
    let flushed = fw.persist().await?;
    fw.stop().await;
    let fw_disk = Disk::of(&fw_store);
    let fw_blocks = Disk::of(&fw_store.join("blocks"));
    let reopen = fw.start().await?;
    println!(
        "{} disk after ingest (du / apparent): fleetwatch {} / {} ({} in {} block directories, the rest log; flush + maintain {:.2} s, then stopped; reopened in {:.2} s), prometheus {} / {} (WAL + head as it stands, running), victoriametrics {} / {} (after force_flush + force_merge)",
        elapsed(),
        mib(fw_disk.du),
        mib(fw_disk.apparent),
        mib(fw_blocks.du),
        count_dirs(&fw_store.join("blocks")),
        flushed.as_secs_f64(),
        reopen.as_secs_f64(),
        mib(prom_disk.du),
        mib(prom_disk.apparent),
        mib(vm_disk.du),
        mib(vm_disk.apparent)
    );
    let om_ingest = root.join("ingest.om");
    data.write_openmetrics(ing.clone(), &om_ingest)?;
    let block_dir = root.join("promtool-ingest-blocks");
    promtool_blocks(
        &args.promtool,
        &om_ingest,
        &block_dir,
        "2h",
        &root.join("promtool-ingest.log"),
    )?;
    let block_disk = Disk::of(&block_dir);
    println!(
        "{} prometheus: the same ingest data as a 2 h block (promtool): {} / {}",
        elapsed(),
        mib(block_disk.du),
        mib(block_disk.apparent)
    );
    let mut fw_bps = (
        "after ingest".to_string(),
        fw_disk.per_sample(ingest_samples),
        fw_blocks.per_sample(ingest_samples),
    );
    rows.push(Row {
        metric: "disk after ingest, du bytes/sample (prom: WAL+head) (lower is better)".into(),
        unit: Unit::BytesPerSample,
        v: [
            Some(fw_disk.per_sample(ingest_samples)),
            Some(prom_disk.per_sample(ingest_samples)),
            Some(vm_disk.per_sample(ingest_samples)),
        ],
    });
    rows.push(Row {
        metric: "disk after ingest, apparent bytes/sample (prom: WAL+head)".into(),
        unit: Unit::BytesPerSample,
        v: [
            Some(fw_disk.apparent_per_sample(ingest_samples)),
            Some(prom_disk.apparent_per_sample(ingest_samples)),
            Some(vm_disk.apparent_per_sample(ingest_samples)),
        ],
    });
    rows.push(Row {
        metric: "disk after ingest, du bytes/sample in blocks (fw: block dirs only; prom: same data as a 2 h block)".into(),
        unit: Unit::BytesPerSample,
        v: [
            Some(fw_blocks.per_sample(ingest_samples)),
            Some(block_disk.per_sample(ingest_samples)),
            Some(vm_disk.per_sample(ingest_samples)),
        ],
    });

    let fw_target = |fw: &Fleetwatch| Target {
        base: fw.base(),
        token: Some(fw.token.clone()),
    };
    let prom_t = Target {
        base: prom_base.clone(),
        token: None,
    };
    let vm_t = Target {
        base: vm_base.clone(),
        token: None,
    };

    // Everything acknowledged must be visible.
    let mut metric_names: Vec<&str> = (0..PER_HOST).map(|j| series_def(j).0).collect();
    metric_names.sort_unstable();
    metric_names.dedup();
    let (ing_lo, ing_hi) = data.stamp_range(&ing);
    let fw_t = fw_target(&fw);
    let mut seen = Vec::new();
    for t in [&fw_t, &prom_t, &vm_t] {
        seen.push(
            match count_samples(&client, t, &metric_names, ing_lo, ing_hi).await {
                Ok(n) => n.to_string(),
                Err(e) => format!("error: {e:#}"),
            },
        );
    }
    println!(
        "{} samples visible after ingest (expected {ingest_samples}): fleetwatch {}, prometheus {}, victoriametrics {}",
        elapsed(),
        seen[0],
        seen[1],
        seen[2]
    );

    // ---- 3. Queries over the last hour ---------------------------------------------------
    let short = [
        ("{job=\"node\"}", 15),
        ("rate(node_cpu_seconds_total[5m])", 15),
        ("sum by (mode) (rate(node_cpu_seconds_total[5m]))", 60),
        ("sum by (instance) ({job=\"node\"})", 60),
    ];
    let label = format!("{}m", args.ingest_minutes);
    query_rows(
        &client,
        &[Some(&fw_t), Some(&prom_t), Some(&vm_t)],
        &short,
        (ingest_end - args.ingest_minutes as i64 * 60_000, ingest_end),
        &label,
        args.runs,
        &mut rows,
    )
    .await;
    println!("{} short-range queries done", elapsed());

    // ---- 4. History ----------------------------------------------------------------------
    let mut fw_has_history = false;
    if history {
        let hist_batch_ms = args.history_batch_seconds as i64 * 1000;
        let plans = data.plans(hist.clone(), hist_batch_ms, shards);
        println!(
            "{} history: {} batches of ~{} samples",
            elapsed(),
            plans.len(),
            hist_samples as usize / plans.len().max(1)
        );
        // Prometheus: blocks written offline by promtool, added to its data dir while stopped.
        let om_hist = root.join("history.om");
        data.write_openmetrics(hist.clone(), &om_hist)?;
        let hist_blocks = root.join("promtool-history-blocks");
        // Prometheus compacts up to 31 d (10 % of the retention, at most 31 d); promtool picks
        // the largest compaction range that fits (486 h), as Prometheus' compactor would.
        let promtool_time = promtool_blocks(
            &args.promtool,
            &om_hist,
            &hist_blocks,
            "744h",
            &root.join("promtool-history.log"),
        )?;
        let hist_block_disk = Disk::of(&hist_blocks);
        let _ = std::fs::remove_file(&om_hist);
        println!(
            "{} prometheus: promtool built history blocks in {:.1} s: {} ({:.3} bytes/sample)",
            elapsed(),
            promtool_time.as_secs_f64(),
            mib(hist_block_disk.du),
            hist_block_disk.per_sample(hist_samples)
        );
        prom.stop(Duration::from_secs(60));
        for e in std::fs::read_dir(&hist_blocks)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                std::fs::rename(e.path(), prom_dir.join(e.file_name()))?;
            }
        }
        prom = Proc::spawn(
            "prometheus",
            &args.prometheus,
            &prom_args,
            &root.join("prometheus-2.log"),
        )?;
        // Ready before the timed loads, so its start does not compete for the two cores.
        wait_ready(&client, &format!("{prom_base}/-/ready"), &mut prom).await?;

        // fleetwatch: old batches through the shipper.
        let fw_hist = fw
            .load(
                plans.iter().map(|p| data.batch(p, shards, false)),
                Duration::from_secs(args.history_timeout_seconds),
            )
            .await?;

        // VictoriaMetrics: remote write, the same batches (after fleetwatch: its background
        // merges would compete with fleetwatch's load).
        let mut bodies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); shards];
        for p in &plans {
            bodies[p.shard].push(remote_write_body(&data.batch(p, shards, true)));
        }
        let vm_hist = load_http(&client, &format!("{vm_base}/api/v1/write"), bodies).await?;
        match &fw_hist {
            Ok(d) => {
                fw_has_history = true;
                println!(
                    "{} history load seconds: fleetwatch {:.2}, victoriametrics {:.2} (prometheus: promtool offline {:.1})",
                    elapsed(),
                    d.as_secs_f64(),
                    vm_hist.as_secs_f64(),
                    promtool_time.as_secs_f64()
                );
            }
            Err(e) => println!("{} fleetwatch history load failed: {e}", elapsed()),
        }
        let hrate = |d: Duration| hist_samples as f64 / d.as_secs_f64();
        rows.push(Row {
            metric: "history load, samples/s until acked (higher is better; prom: n/a, promtool)"
                .into(),
            unit: Unit::PerSec,
            v: [
                fw_hist.as_ref().ok().map(|d| hrate(*d)),
                None,
                Some(hrate(vm_hist)),
            ],
        });

        // ---- 5. Disk after history -------------------------------------------------------
        let all = ingest_samples + hist_samples;
        vm_persist(&client, &vm_base, &vm_dir).await?;
        let vm_all = Disk::of_all(&vm_store);
        let prom_all = Disk::of_all(&prom_store(&prom_dir));
        let flushed = fw.persist().await?;
        fw.stop().await;
        let fw_all = Disk::of(&fw_store);
        let fw_all_blocks = Disk::of(&fw_store.join("blocks"));
        let reopen = fw.start().await?;
        println!(
            "{} disk after history (du / apparent): fleetwatch {} / {} ({} in {} block directories; flush + maintain {:.2} s; reopened in {:.2} s), prometheus {} / {}, victoriametrics {} / {}",
            elapsed(),
            mib(fw_all.du),
            mib(fw_all.apparent),
            mib(fw_all_blocks.du),
            count_dirs(&fw_store.join("blocks")),
            flushed.as_secs_f64(),
            reopen.as_secs_f64(),
            mib(prom_all.du),
            mib(prom_all.apparent),
            mib(vm_all.du),
            mib(vm_all.apparent)
        );
        if fw_has_history {
            fw_bps = (
                format!("after {} d history + ingest", args.history_days),
                fw_all.per_sample(all),
                fw_all_blocks.per_sample(all),
            );
        }
        rows.push(Row {
            metric: format!(
                "disk after {} d history + ingest, du bytes/sample (lower is better)",
                args.history_days
            ),
            unit: Unit::BytesPerSample,
            v: [
                fw_has_history.then(|| fw_all.per_sample(all)),
                Some(prom_all.per_sample(all)),
                Some(vm_all.per_sample(all)),
            ],
        });
        rows.push(Row {
            metric: format!(
                "disk after {} d history + ingest, apparent bytes/sample",
                args.history_days
            ),
            unit: Unit::BytesPerSample,
            v: [
                fw_has_history.then(|| fw_all.apparent_per_sample(all)),
                Some(prom_all.apparent_per_sample(all)),
                Some(vm_all.apparent_per_sample(all)),
            ],
        });
        let prom_blocks = Disk::of_all(&prom_block_dirs(&prom_dir));
        rows.push(Row {
            metric: format!(
                "disk after {} d history + ingest, du bytes/sample in blocks (fw, prom: block dirs only)",
                args.history_days
            ),
            unit: Unit::BytesPerSample,
            v: [
                fw_has_history.then(|| fw_all_blocks.per_sample(all)),
                Some(prom_blocks.per_sample(all)),
                Some(vm_all.per_sample(all)),
            ],
        });

        // ---- 6. Queries over the history window ------------------------------------------
        let (lo, hi) = (data.stamp_range(&hist).0, ing_hi);
        let fw_t = fw_target(&fw);
        let mut seen = Vec::new();
        for t in [&fw_t, &prom_t, &vm_t] {
            seen.push(
                match count_samples(&client, t, &metric_names, lo, hi).await {
                    Ok(n) => n.to_string(),
                    Err(e) => format!("error: {e:#}"),
                },
            );
        }
        println!(
            "{} samples visible after history (expected {all}): fleetwatch {}, prometheus {}, victoriametrics {}",
            elapsed(),
            seen[0],
            seen[1],
            seen[2]
        );
        let long = [
            ("{job=\"node\"}", 3600),
            ("sum by (mode) (rate(node_cpu_seconds_total[1h]))", 3600),
            ("avg_over_time(node_memory_MemAvailable_bytes[10m])", 600),
            ("rate(node_network_receive_bytes_total[1h])", 600),
        ];
        let label = format!("{}d", args.history_days);
        // Steps 15 s past whole hours: every host's history sample (at a multiple of the
        // history interval plus its scrape offset, under 15 s) lies within the 5 minute
        // lookback of an instant selector, so `{job="node"}` returns a point at every step.
        if 3_600_000 % hist_iv != 0 {
            println!("  note: the history interval does not divide 1 h: instant selectors over the history window miss steps");
        }
        let long_end = (ingest_end - 15_000).div_euclid(3_600_000) * 3_600_000 + 15_000;
        query_rows(
            &client,
            &[fw_has_history.then_some(&fw_t), Some(&prom_t), Some(&vm_t)],
            &long,
            (long_end - args.history_days as i64 * 86_400_000, long_end),
            &label,
            args.runs,
            &mut rows,
        )
        .await;
        println!("{} long-range queries done", elapsed());
    }

    // ---- Report --------------------------------------------------------------------------
    println!();
    println!("command: {}", command_line());
    println!(
        "{} series; ingest {} samples; history {} samples; queries: median of {} runs after 1 warm-up; {} in flight",
        args.series, ingest_samples, hist_samples, args.runs, shards
    );
    println!();
    print_table(&rows);
    println!();
    println!("acknowledged means: fleetwatch after fsync of its log; Prometheus after the head append and WAL write (no fsync); VictoriaMetrics after buffering in memory (flushed within about a second).");
    println!("ratios are fleetwatch / peer: above 1 is better for samples/s, below 1 is better for bytes and milliseconds.");
    let prom_rate = rows[0].v[1];
    let worst_latency = rows
        .iter()
        .filter(|r| matches!(r.unit, Unit::Ms))
        .filter_map(|r| Some(r.v[0]? / r.v[1]?))
        .fold(None::<f64>, |a, x| Some(a.map_or(x, |a| a.max(x))));
    println!("issue 3 targets (informational, this run):");
    println!(
        "  ingest at least Prometheus' rate: fw/prom {}",
        ratio(rows[0].v[0], prom_rate)
    );
    println!(
        "  at most 1.5 bytes per sample: fleetwatch {} on disk, {} in blocks ({})",
        fmt_value(Unit::BytesPerSample, Some(fw_bps.1)),
        fmt_value(Unit::BytesPerSample, Some(fw_bps.2)),
        fw_bps.0
    );
    println!(
        "  query latency no worse than Prometheus': worst fw/prom {}",
        worst_latency.map_or("-".into(), |x| format!("{x:.2}"))
    );

    fw.stop().await;
    prom.stop(Duration::from_secs(10));
    vm.stop(Duration::from_secs(10));
    drop(fw);
    match tmp_guard {
        Some(tmp) => {
            let path = tmp.keep();
            let mut result = std::fs::remove_dir_all(&path);
            for _ in 0..10 {
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                result = std::fs::remove_dir_all(&path);
            }
            if let Err(e) = result {
                println!("warning: could not remove {}: {e}", path.display());
            }
        }
        None => println!("kept {}", root.display()),
    }
    Ok(())
}
