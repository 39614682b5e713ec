//! The fleet overview's host summary (issue 7): how long one pass over the whole fleet takes,
//! the way the aggregator computes it for `GET /api/fleet/hosts` and for every live-feed
//! `hosts` message (seven PromQL instant queries grouped by `host`), against the same figures
//! asked host by host (seven queries with a `host` matcher per host) in the same run.
//!
//! The store (`Storage`, fsync off) in this process holds `--hosts` hosts, each with the series
//! the agent's host source collects on this machine (`HostSource::collect`: CPU, memory,
//! filesystems, disks, network, load, processes), its CPU counters spread over `--cpus` CPUs,
//! sampled every `--interval-seconds` for the last `--minutes`, ending now. Values differ per
//! host (deterministic). Nothing here asserts a speed: the program prints a table.
//!
//! `cargo run --release -p fleetwatch-benches --bin summary_bench -- --hosts 2000`

use anyhow::Context;
use clap::Parser;
use fleetwatch_agent::sources::host::HostSource;
use fleetwatch_aggregator::fleet::summary::{summarize, Figure};
use fleetwatch_aggregator::promql::{self, Settings};
use fleetwatch_aggregator::store::{Storage, StoreConfig};
use fleetwatch_common::model::{now_ms, Label, MetricKind, Sample, Series, SeriesSamples};
use std::time::Instant;

/// Host summary over a simulated fleet: one grouped pass against per-host queries.
#[derive(Parser)]
struct Args {
    /// Hosts in the fleet.
    #[arg(long, default_value_t = 2000)]
    hosts: usize,
    /// CPUs per host (node_cpu_seconds_total has 8 modes per CPU).
    #[arg(long, default_value_t = 8)]
    cpus: usize,
    /// Seconds between samples (the agent's default host interval is 10).
    #[arg(long, default_value_t = 10)]
    interval_seconds: i64,
    /// Minutes of samples, ending now.
    #[arg(long, default_value_t = 5)]
    minutes: i64,
    /// Timed fleet passes after one warm-up; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// The agent's host series on this machine, CPU counters spread over `cpus` CPUs.
fn template(cpus: usize) -> Vec<SeriesSamples> {
    let mut source = HostSource::new();
    source.collect(now_ms() - 1000);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let collected = source.collect(now_ms());
    let mut out: Vec<SeriesSamples> = collected
        .into_iter()
        .filter(|s| {
            !matches!(
                s.series.name.as_str(),
                "node_cpu_seconds_total" | "fleetwatch_cpu_core_usage_ratio"
            )
        })
        .collect();
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    for cpu in 0..cpus {
        let cpu = cpu.to_string();
        for mode in MODES {
            out.push(SeriesSamples {
                series: Series::new(
                    "node_cpu_seconds_total",
                    [Label::new("cpu", cpu.as_str()), Label::new("mode", mode)],
                ),
                kind: MetricKind::Counter,
                samples: vec![Sample {
                    timestamp_ms: 0,
                    value: 0.0,
                }],
            });
        }
        out.push(SeriesSamples {
            series: Series::new(
                "fleetwatch_cpu_core_usage_ratio",
                [Label::new("cpu", cpu.as_str())],
            ),
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: 0,
                value: 0.0,
            }],
        });
    }
    out
}

/// Host `h`'s samples at step `i` (time `t`): counters grow at a per-host, per-series rate,
/// gauges wander around their template value.
fn host_samples(tpl: &[SeriesSamples], h: usize, i: i64, t: i64) -> Vec<SeriesSamples> {
    let host = format!("host-{h:05}");
    tpl.iter()
        .enumerate()
        .map(|(k, s)| {
            let mut labels = s.series.labels.clone();
            labels.push(Label::new("host", host.as_str()));
            let seed = ((h * 7919 + k * 104_729) % 1000) as f64 / 1000.0;
            let base = s.samples.first().map_or(0.0, |x| x.value);
            let value = match s.kind {
                MetricKind::Counter => base + (1.0 + seed * 100.0) * i as f64,
                _ => base * (0.5 + seed) + (i % 3) as f64 * seed,
            };
            SeriesSamples {
                series: Series::new(s.series.name.clone(), labels),
                kind: s.kind,
                samples: vec![Sample {
                    timestamp_ms: t,
                    value,
                }],
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir().context("temporary directory")?;
    let (store, _) = Storage::open(
        &dir.path().join("store"),
        StoreConfig {
            sync: false,
            ..Default::default()
        },
    )?;
    let tpl = template(args.cpus);
    let now = now_ms();
    let steps = args.minutes * 60 / args.interval_seconds;
    let load = Instant::now();
    let mut samples = 0usize;
    for i in 0..=steps {
        let t = now - (steps - i) * args.interval_seconds * 1000;
        let batch: Vec<SeriesSamples> = (0..args.hosts)
            .flat_map(|h| host_samples(&tpl, h, i, t))
            .collect();
        samples += batch.len();
        store.append_system(batch, t)?;
    }
    println!(
        "{} hosts x {} series (the agent's host series on this machine, {} CPUs), {} samples every {} s over {} min, loaded in {:.1} s",
        args.hosts,
        tpl.len(),
        args.cpus,
        samples,
        args.interval_seconds,
        args.minutes,
        load.elapsed().as_secs_f64()
    );

    let at = now;
    let warm = summarize(&store, &[], None, at);
    anyhow::ensure!(
        warm.failures.is_empty(),
        "figures failed: {:?}",
        warm.failures
    );
    let complete = warm
        .hosts
        .values()
        .filter(|s| s.cpu_ratio.is_some() && s.memory_ratio.is_some() && s.disk_ratio.is_some())
        .count();
    let mut fleet_pass = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t0 = Instant::now();
        let s = summarize(&store, &[], None, at);
        fleet_pass.push(t0.elapsed().as_secs_f64());
        anyhow::ensure!(s.hosts.len() == warm.hosts.len(), "passes disagree");
    }
    let fleet_median = median(fleet_pass);
    let mut per_figure = Vec::new();
    for f in Figure::ALL {
        let q = f.query(None);
        let t0 = Instant::now();
        promql::instant(&store, Settings::default(), &q, at)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.field()))?;
        per_figure.push((f.field(), t0.elapsed().as_secs_f64()));
    }

    let t0 = Instant::now();
    for h in 0..args.hosts {
        let host = format!("host-{h:05}");
        let one = summarize(&store, &[], Some(&host), at);
        anyhow::ensure!(
            one.of(&host) == warm.of(&host),
            "{host}: per-host figures differ from the fleet pass"
        );
    }
    let per_host = t0.elapsed().as_secs_f64();

    println!(
        "hosts with CPU, memory and disk figures: {complete} of {}",
        args.hosts
    );
    println!();
    println!("| host summary, {} hosts | seconds |", args.hosts);
    println!("|---|--:|");
    println!(
        "| one fleet pass: 7 queries grouped by host (median of {}) | {fleet_median:.3} |",
        args.runs.max(1)
    );
    for (field, secs) in &per_figure {
        println!("| of which {field} | {secs:.3} |");
    }
    println!(
        "| the same figures host by host: 7 queries x {} hosts | {per_host:.3} |",
        args.hosts
    );
    println!(
        "| fleet pass / host by host | {:.3} |",
        fleet_median / per_host
    );
    println!(
        "| fleet pass / the live feed's 2 s interval | {:.3} |",
        fleet_median / 2.0
    );
    Ok(())
}
