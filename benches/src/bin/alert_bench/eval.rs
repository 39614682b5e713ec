//! Rule evaluation: one cycle of every group in fleetwatch's rule manager over its store, and
//! in Prometheus over the same samples, measured in CPU time and group durations.

use crate::data::{Dataset, STEP_MS};
use crate::procs::{free_tcp_port, on_path, spawn, tail, wait_ready};
use crate::rules::EVAL_INTERVAL;
use anyhow::{bail, ensure};
use fleetwatch_aggregator::config::{AlertingConfig, ReceiverConfig};
use fleetwatch_aggregator::metrics::Metrics;
use fleetwatch_aggregator::notify::Notifier;
use fleetwatch_aggregator::rules::RuleManager;
use fleetwatch_aggregator::store::{Storage, StoreConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// CPU time (user + system) of the calling thread, seconds.
pub(crate) fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) } != 0 {
        return f64::NAN;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

pub(crate) struct EvalResult {
    /// Per measured cycle: wall time of the whole cycle, seconds.
    pub(crate) wall: Vec<f64>,
    /// Per measured cycle: CPU time of the cycle, seconds.
    pub(crate) cpu: Vec<f64>,
    /// Per measured cycle: sum of the groups' own durations, seconds.
    pub(crate) group_sum: Vec<f64>,
    /// Pending or firing alerts after the last cycle.
    pub(crate) alerts: usize,
    /// Rules whose last evaluation failed.
    pub(crate) unhealthy: Vec<String>,
    /// CPU seconds of the notifier's pass over every alert, all made firing (silences,
    /// inhibition, routing, grouping, the notification log), that follows each evaluation
    /// tick: the first pass, which finds every alert new, then the median of later passes.
    pub(crate) notify_first: f64,
    /// See `notify_first`.
    pub(crate) notify_steady: f64,
}

pub(crate) fn fleetwatch_eval(
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
        notify_first: f64::NAN,
        notify_steady: f64::NAN,
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
    let alerts = manager.alerts();
    result.alerts = alerts
        .iter()
        .filter(|a| a.state != fleetwatch_aggregator::rules::lifecycle::AlertState::Inactive)
        .count();
    // the notifier's pass, as the aggregator runs it after each tick (receivers not started:
    // what would be sent is decided, logged and dropped)
    let notifier = Notifier::new(
        AlertingConfig {
            default_receiver: "hook".into(),
            group_wait_seconds: 0.0,
            receivers: vec![ReceiverConfig {
                name: "hook".into(),
                url: "http://127.0.0.1:9/hook".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        &dir.join("notify-state"),
        Metrics::new(),
    )
    .map_err(anyhow::Error::msg)?;
    // every alert firing (the rules' `for` has not run out yet): the notifier's worst case
    let firing: Vec<_> = alerts
        .into_iter()
        .map(|mut a| {
            a.state = fleetwatch_aggregator::rules::lifecycle::AlertState::Firing;
            a.fired_at_ms = Some(a.active_at_ms);
            a
        })
        .collect();
    let last = end + cycles as i64 * STEP_MS;
    let mut passes = Vec::new();
    for i in 0..6 {
        let cpu0 = thread_cpu_seconds();
        notifier.process(&firing, last + i * 250);
        passes.push(thread_cpu_seconds() - cpu0);
    }
    result.notify_first = passes[0];
    result.notify_steady = crate::median(&passes[1..]);
    println!(
        "fleetwatch: notifier pass over {} firing alerts: first {:.3} s CPU, then {:.3} s",
        firing.len(),
        result.notify_first,
        result.notify_steady
    );
    Ok(result)
}

/// What Prometheus did, per measured cycle (the first skipped).
pub(crate) struct PromResult {
    /// Sum of `prometheus_rule_group_last_duration_seconds` over the groups.
    pub(crate) group_sum: Vec<f64>,
    /// `process_cpu_seconds_total` used from one completed cycle to the next.
    pub(crate) cpu: Vec<f64>,
    /// Pending or firing alerts at the end.
    pub(crate) alerts: usize,
    /// Its version line.
    pub(crate) version: String,
}

/// Runs Prometheus on the same samples and rules and reads its rule-group metrics at each
/// completed cycle (every group's iteration count went up).
pub(crate) async fn prometheus_eval(
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
