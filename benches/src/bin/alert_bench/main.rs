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

mod data;
mod delay;
mod eval;
mod procs;
mod rules;

use clap::Parser;
use data::Dataset;
use delay::delay_bench;
use eval::{fleetwatch_eval, prometheus_eval, EvalResult, PromResult};
use fleetwatch_common::model::now_ms;
use rules::rule_file;

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

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
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
    row(
        "notifier pass after a tick, every alert firing: the first (all new), CPU s",
        ours.notify_first,
        None,
    );
    row(
        "notifier pass after a tick, every alert firing: later passes (median of 5), CPU s",
        ours.notify_steady,
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
