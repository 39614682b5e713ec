//! The bench's series and samples: 100 node_exporter-like and application series per simulated
//! host, 10 minutes of 15 s samples, deterministic; as batches for fleetwatch's store and as
//! OpenMetrics for promtool.

use anyhow::Context;
use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use std::io::Write as _;
use std::path::Path;

pub(crate) const STEP_MS: i64 = 15_000;
pub(crate) const POINTS: i64 = 41; // 10 minutes of 15 s samples
pub(crate) const PER_HOST: usize = 100;

/// xorshift64*: deterministic data for the same arguments.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One series and how it moves: a counter adds `step` (± 10 %) per sample, a gauge wanders
/// around `base` by `step`.
pub(crate) struct Def {
    pub(crate) series: Series,
    pub(crate) counter: bool,
    pub(crate) base: f64,
    pub(crate) step: f64,
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
pub(crate) struct Dataset {
    pub(crate) defs: Vec<Def>,
    /// `values[k][i]`: series i at point k.
    pub(crate) values: Vec<Vec<f64>>,
    /// Timestamp of point k.
    pub(crate) times: Vec<i64>,
}

impl Dataset {
    pub(crate) fn new(series: usize, end_ms: i64) -> Self {
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

    pub(crate) fn samples(&self) -> usize {
        self.defs.len() * POINTS as usize
    }

    /// One batch of every series per sample time.
    pub(crate) fn batches(&self) -> Vec<(i64, Vec<SeriesSamples>)> {
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
    pub(crate) fn write_openmetrics(&self, path: &Path) -> anyhow::Result<()> {
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
