//! The host summary the fleet overview shows beside each host: CPU, memory, swap and disk use,
//! network traffic, load and firing alerts. One PromQL instant query per figure, grouped by
//! `host`, so one pass costs the same handful of queries for the whole fleet; the fleet's pass
//! is shared by the host list and the live feed and served until it is
//! [`FLEET_PASS_MAX_AGE_MS`] old (firing alerts are counted afresh on every request).

use super::{Fleet, HostView};
use crate::metrics::Metrics;
use crate::promql::{self, QueryError, QueryValue, SeriesSource, Settings};
use crate::rules::lifecycle::{Alert, AlertState};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How long the whole fleet's figures are served before a new pass: agents send host metrics
/// every 10 s by default, so a fresher pass would mostly compute the same answer again, and a
/// pass over 2,000 hosts costs about a second of CPU (`summary_bench`).
pub const FLEET_PASS_MAX_AGE_MS: i64 = 5_000;

/// Filesystem types that hold no data of their own (memory-backed, layered or read-only
/// images); the agent already leaves out proc, sysfs and the like.
const NOT_STORAGE_FSTYPES: &str = "tmpfs|ramfs|devtmpfs|overlay|squashfs|iso9660";

/// A figure of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// 1 − idle share of CPU time over the last minute, 0..1.
    Cpu,
    /// 1 − MemAvailable / MemTotal.
    Memory,
    /// 1 − SwapFree / SwapTotal (none without swap).
    Swap,
    /// The fullest filesystem's 1 − avail / size.
    Disk,
    /// Bytes received per second over the last minute, every interface but `lo`.
    NetRx,
    /// Bytes sent per second over the last minute, every interface but `lo`.
    NetTx,
    /// The 1-minute load average.
    Load1,
}

impl Figure {
    /// Every figure, in the order the queries run.
    pub const ALL: [Figure; 7] = [
        Figure::Cpu,
        Figure::Memory,
        Figure::Swap,
        Figure::Disk,
        Figure::NetRx,
        Figure::NetTx,
        Figure::Load1,
    ];

    /// Its field in the summary's JSON.
    pub fn field(self) -> &'static str {
        match self {
            Figure::Cpu => "cpu_ratio",
            Figure::Memory => "memory_ratio",
            Figure::Swap => "swap_ratio",
            Figure::Disk => "disk_ratio",
            Figure::NetRx => "net_rx_bytes_per_second",
            Figure::NetTx => "net_tx_bytes_per_second",
            Figure::Load1 => "load1",
        }
    }

    /// The PromQL query giving the figure for every host at once (one element per host), or
    /// for `host` alone. Aggregations by `host` keep a host's figure right when the same metric
    /// also comes from a scraped node_exporter: ratios of sums, maxima, and per-device maxima
    /// before the sum.
    pub fn query(self, host: Option<&str>) -> String {
        let s = |name: &str, matchers: &str| selector(name, matchers, host);
        let fs = format!("fstype!~\"{NOT_STORAGE_FSTYPES}\"");
        match self {
            // Every CPU spends one second per second in some mode, so the idle share of CPU
            // time is the idle rate averaged over CPUs (node_exporter's dashboards' formula); it
            // reads one series per CPU instead of eight.
            Figure::Cpu => format!(
                "clamp(1 - avg by (host) (rate({}[1m])), 0, 1)",
                s("node_cpu_seconds_total", "mode=\"idle\""),
            ),
            Figure::Memory => format!(
                "1 - max by (host) ({}) / max by (host) ({})",
                s("node_memory_MemAvailable_bytes", ""),
                s("node_memory_MemTotal_bytes", ""),
            ),
            Figure::Swap => format!(
                "1 - max by (host) ({}) / (max by (host) ({}) > 0)",
                s("node_memory_SwapFree_bytes", ""),
                s("node_memory_SwapTotal_bytes", ""),
            ),
            Figure::Disk => format!(
                "max by (host) (1 - {} / ({} > 0))",
                s("node_filesystem_avail_bytes", &fs),
                s("node_filesystem_size_bytes", &fs),
            ),
            Figure::NetRx | Figure::NetTx => {
                let direction = if self == Figure::NetRx {
                    "receive"
                } else {
                    "transmit"
                };
                format!(
                    "sum by (host) (max by (host, device) (rate({}[1m])))",
                    s(
                        &format!("node_network_{direction}_bytes_total"),
                        "device!=\"lo\""
                    ),
                )
            }
            Figure::Load1 => format!("max by (host) ({})", s("node_load1", "")),
        }
    }
}

/// `name{matchers}`, with `host="..."` added when a host is given.
fn selector(name: &str, matchers: &str, host: Option<&str>) -> String {
    let mut all: Vec<String> = Vec::new();
    if let Some(h) = host {
        // a PromQL string literal: backslashes and quotes escaped
        all.push(format!(
            "host=\"{}\"",
            h.replace('\\', "\\\\").replace('"', "\\\"")
        ));
    }
    if !matchers.is_empty() {
        all.push(matchers.to_string());
    }
    if all.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", all.join(","))
    }
}

/// One host's summary; `None` (JSON null) for a figure the host has no data for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSummary {
    /// 1 − idle share of CPU time over the last minute (0..1).
    pub cpu_ratio: Option<f64>,
    /// 1 − MemAvailable / MemTotal (0..1).
    pub memory_ratio: Option<f64>,
    /// 1 − SwapFree / SwapTotal (0..1); null when the host has no swap.
    pub swap_ratio: Option<f64>,
    /// The fullest real filesystem's 1 − avail / size (0..1).
    pub disk_ratio: Option<f64>,
    /// Bytes received per second over the last minute (all interfaces but `lo`).
    pub net_rx_bytes_per_second: Option<f64>,
    /// Bytes sent per second over the last minute (all interfaces but `lo`).
    pub net_tx_bytes_per_second: Option<f64>,
    /// The 1-minute load average.
    pub load1: Option<f64>,
    /// Firing alerts whose `host` label is this host.
    pub alerts_firing: u64,
    /// The instant the figures are of (ms since the epoch): a fleet pass is reused for up to
    /// [`FLEET_PASS_MAX_AGE_MS`].
    pub at_ms: i64,
}

impl HostSummary {
    fn set(&mut self, figure: Figure, v: f64) {
        let slot = match figure {
            Figure::Cpu => &mut self.cpu_ratio,
            Figure::Memory => &mut self.memory_ratio,
            Figure::Swap => &mut self.swap_ratio,
            Figure::Disk => &mut self.disk_ratio,
            Figure::NetRx => &mut self.net_rx_bytes_per_second,
            Figure::NetTx => &mut self.net_tx_bytes_per_second,
            Figure::Load1 => &mut self.load1,
        };
        *slot = v.is_finite().then_some(v);
    }
}

/// The summaries of one pass, by host, and the figures whose query failed.
#[derive(Debug, Default)]
pub struct Summaries {
    /// Host → summary; a host with no data and no alerts is absent.
    pub hosts: HashMap<String, HostSummary>,
    /// Figures left out of every summary, with why.
    pub failures: Vec<(Figure, QueryError)>,
    /// The instant of the pass.
    pub at_ms: i64,
}

impl Summaries {
    /// The summary of `host` (every figure null, no alerts, when it has none).
    pub fn of(&self, host: &str) -> HostSummary {
        self.hosts
            .get(host)
            .cloned()
            .unwrap_or_else(|| HostSummary {
                at_ms: self.at_ms,
                ..HostSummary::default()
            })
    }
}

/// Evaluates every figure over `source` at `now_ms` for every host (or for `host` alone), and
/// counts `alerts` firing per host.
pub fn summarize(
    source: &dyn SeriesSource,
    alerts: &[Alert],
    host: Option<&str>,
    now_ms: i64,
) -> Summaries {
    let mut out = figures(source, host, now_ms);
    count_firing(&mut out, alerts, host);
    out
}

/// Every figure over `source` at `now_ms` for every host (or for `host` alone), without alerts.
fn figures(source: &dyn SeriesSource, host: Option<&str>, now_ms: i64) -> Summaries {
    let mut out = Summaries {
        at_ms: now_ms,
        ..Summaries::default()
    };
    for figure in Figure::ALL {
        match promql::instant(source, Settings::default(), &figure.query(host), now_ms) {
            Ok(QueryValue::Vector { elems, .. }) => {
                for (labels, v) in elems {
                    if let Some(host) = promql::label_value(&labels, "host") {
                        out.hosts
                            .entry(host.to_string())
                            .or_insert_with(|| HostSummary {
                                at_ms: now_ms,
                                ..HostSummary::default()
                            })
                            .set(figure, v);
                    }
                }
            }
            Ok(_) => out.failures.push((
                figure,
                QueryError::Execution("the query did not give an instant vector".into()),
            )),
            Err(e) => out.failures.push((figure, e)),
        }
    }
    out
}

/// Sets each host's `alerts_firing` from `alerts` (for `host` alone when given).
fn count_firing(out: &mut Summaries, alerts: &[Alert], host: Option<&str>) {
    for s in out.hosts.values_mut() {
        s.alerts_firing = 0;
    }
    for a in alerts.iter().filter(|a| a.state == AlertState::Firing) {
        match a.labels.get("host") {
            Some(h) if host.is_none_or(|want| want == h) => {
                let at_ms = out.at_ms;
                out.hosts
                    .entry(h.clone())
                    .or_insert_with(|| HostSummary {
                        at_ms,
                        ..HostSummary::default()
                    })
                    .alerts_firing += 1;
            }
            _ => {}
        }
    }
}

/// The last fleet pass, shared by everyone who asks within [`FLEET_PASS_MAX_AGE_MS`]; one pass
/// runs at a time, and those who asked meanwhile take its result.
#[derive(Default)]
pub struct FleetPass {
    last: Mutex<Option<Arc<Summaries>>>,
    running: Mutex<()>,
}

impl FleetPass {
    fn fresh(&self, now_ms: i64) -> Option<Arc<Summaries>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|s| (0..FLEET_PASS_MAX_AGE_MS).contains(&(now_ms - s.at_ms)))
            .cloned()
    }

    /// The figures of every host, from a pass at most [`FLEET_PASS_MAX_AGE_MS`] old (a new
    /// one when the last is older; its failed figures logged and counted once).
    pub fn get(&self, source: &dyn SeriesSource, metrics: &Metrics, now_ms: i64) -> Arc<Summaries> {
        if let Some(s) = self.fresh(now_ms) {
            return s;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = self.fresh(now_ms) {
            return s;
        }
        let pass = Arc::new(figures(source, None, now_ms));
        report_failures(&pass, metrics);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(pass.clone());
        pass
    }
}

/// A host with its summary, as `GET /api/fleet/hosts` and the live feed send it.
#[derive(Debug, Clone, Serialize)]
pub struct SummarizedHost {
    /// Record, status and health.
    #[serde(flatten)]
    pub view: HostView,
    /// The figures.
    pub summary: HostSummary,
}

/// Every host of `fleet` with its summary, in the fleet's order: the figures of the fleet's
/// shared pass, the firing alerts of now. A failed figure is null for every host, logged and
/// counted (`fleetwatch_host_summary_failures_total`) once per pass.
pub fn summarized_hosts(
    fleet: &Fleet,
    source: &dyn SeriesSource,
    alerts: &[Alert],
    metrics: &Metrics,
    now_ms: i64,
) -> Vec<SummarizedHost> {
    let pass = fleet.summary_pass.get(source, metrics, now_ms);
    let mut summaries = Summaries {
        hosts: pass.hosts.clone(),
        failures: Vec::new(),
        at_ms: pass.at_ms,
    };
    count_firing(&mut summaries, alerts, None);
    fleet
        .list(now_ms)
        .into_iter()
        .map(|view| SummarizedHost {
            summary: summaries.of(&view.record.host),
            view,
        })
        .collect()
}

/// Logs and counts the figures of a pass that failed.
pub fn report_failures(summaries: &Summaries, metrics: &Metrics) {
    for (figure, error) in &summaries.failures {
        metrics
            .host_summary_failures
            .with_label_values(&[figure.field()])
            .inc();
        tracing::warn!(%error, figure = figure.field(), "host summary figure not computed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::{labels_of, RangeSeries, SelectHints};
    use crate::tsdb::head::matches;
    use fleetwatch_common::model::{Label, Sample, Series};
    use promql_parser::label::Matcher;

    /// Series in memory, matched as the store matches them.
    struct Mem(Vec<(Series, Vec<Sample>)>);

    impl SeriesSource for Mem {
        fn select(
            &self,
            matchers: &[Matcher],
            start_ms: i64,
            end_ms: i64,
            _hints: &SelectHints,
        ) -> Vec<RangeSeries> {
            self.0
                .iter()
                .filter(|(series, _)| matches(series, matchers))
                .map(|(series, samples)| RangeSeries {
                    labels: labels_of(series),
                    samples: samples
                        .iter()
                        .filter(|x| x.timestamp_ms >= start_ms && x.timestamp_ms <= end_ms)
                        .copied()
                        .collect(),
                })
                .collect()
        }
    }

    struct Host<'a> {
        name: &'a str,
        series: &'a mut Vec<(Series, Vec<Sample>)>,
    }

    impl Host<'_> {
        /// A series whose value at second `t` (0, 15, 30, 45, 60) is `f(t)`.
        fn add(&mut self, name: &str, labels: &[(&str, &str)], f: impl Fn(f64) -> f64) {
            let mut l: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            l.push(Label::new("host", self.name));
            let samples = (0..=4)
                .map(|i| Sample {
                    timestamp_ms: i * 15_000,
                    value: f(i as f64 * 15.0),
                })
                .collect();
            self.series.push((Series::new(name, l), samples));
        }
    }

    fn alert(host: &str, state: AlertState) -> Alert {
        Alert::for_test("X", host, state)
    }

    #[test]
    fn figures_per_host_with_null_for_what_a_host_lacks() {
        let mut all = Vec::new();
        let mut web = Host {
            name: "web-1",
            series: &mut all,
        };
        // two CPUs: 3 of every 4 seconds idle
        for cpu in ["0", "1"] {
            web.add(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", "idle")],
                |t| t * 0.75,
            );
            web.add(
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", "user")],
                |t| t * 0.25,
            );
        }
        web.add("node_memory_MemTotal_bytes", &[], |_| 1000.0);
        web.add("node_memory_MemAvailable_bytes", &[], |_| 400.0);
        web.add("node_memory_SwapTotal_bytes", &[], |_| 0.0);
        web.add("node_memory_SwapFree_bytes", &[], |_| 0.0);
        let fs = |mount: &'static str, fstype: &'static str| {
            [
                ("device", "sda1"),
                ("fstype", fstype),
                ("mountpoint", mount),
            ]
        };
        web.add("node_filesystem_size_bytes", &fs("/", "ext4"), |_| 100.0);
        web.add("node_filesystem_avail_bytes", &fs("/", "ext4"), |_| 70.0);
        web.add("node_filesystem_size_bytes", &fs("/data", "xfs"), |_| 100.0);
        web.add("node_filesystem_avail_bytes", &fs("/data", "xfs"), |_| 10.0);
        // a full tmpfs is not a full disk
        web.add("node_filesystem_size_bytes", &fs("/run", "tmpfs"), |_| 10.0);
        web.add("node_filesystem_avail_bytes", &fs("/run", "tmpfs"), |_| 0.0);
        for (dev, rate) in [("eth0", 100.0), ("eth1", 50.0), ("lo", 1e6)] {
            web.add(
                "node_network_receive_bytes_total",
                &[("device", dev)],
                |t| t * rate,
            );
            web.add(
                "node_network_transmit_bytes_total",
                &[("device", dev)],
                |t| t * rate * 2.0,
            );
        }
        web.add("node_load1", &[], |_| 1.5);
        let mut db = Host {
            name: "db-1",
            series: &mut all,
        };
        db.add("node_load1", &[], |_| 0.25);
        db.add("node_memory_SwapTotal_bytes", &[], |_| 200.0);
        db.add("node_memory_SwapFree_bytes", &[], |_| 150.0);
        let source = Mem(all);
        let alerts = [
            alert("web-1", AlertState::Firing),
            alert("web-1", AlertState::Pending),
            alert("db-1", AlertState::Firing),
            alert("db-1", AlertState::Firing),
        ];
        let s = summarize(&source, &alerts, None, 60_000);
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        let web = s.of("web-1");
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(web.cpu_ratio, 0.25), "{web:?}");
        assert!(close(web.memory_ratio, 0.6), "{web:?}");
        assert_eq!(web.swap_ratio, None, "no swap: null");
        assert!(close(web.disk_ratio, 0.9), "{web:?}");
        assert!(close(web.net_rx_bytes_per_second, 150.0), "{web:?}");
        assert!(close(web.net_tx_bytes_per_second, 300.0), "{web:?}");
        assert_eq!(web.load1, Some(1.5));
        assert_eq!(web.alerts_firing, 1);
        let db = s.of("db-1");
        assert!(close(db.swap_ratio, 0.25), "{db:?}");
        assert_eq!(db.cpu_ratio, None);
        assert_eq!(db.alerts_firing, 2);
        let nobody = s.of("nobody");
        assert_eq!(
            nobody,
            HostSummary {
                at_ms: 60_000,
                ..HostSummary::default()
            }
        );
        let json = serde_json::to_value(&nobody).unwrap();
        assert!(json["cpu_ratio"].is_null() && json["alerts_firing"] == 0);
        // one host alone: the same figures, nobody else's
        let one = summarize(&source, &alerts, Some("web-1"), 60_000);
        assert_eq!(one.hosts.len(), 1);
        assert_eq!(one.of("web-1"), web);
    }

    #[test]
    fn every_figure_query_parses_also_for_an_awkward_host_name() {
        for f in Figure::ALL {
            for host in [None, Some("web-1"), Some(r#"we"ird\host"#)] {
                let q = f.query(host);
                promql::check(&q).unwrap_or_else(|e| panic!("{}: {q}: {e}", f.field()));
            }
        }
        assert_eq!(
            Figure::Load1.query(Some(r#"a"b"#)),
            r#"max by (host) (node_load1{host="a\"b"})"#
        );
    }
}
