//! Scraping a 10,000-series target: the fleetwatch agent against Prometheus, in the same run.
//!
//! Serves a generated exposition of `--series` series (counters, gauges and a histogram whose
//! values change at every request) on a loopback port; starts a fleetwatch aggregator, a
//! fleetwatch agent with one `[[scrape]]` target (host collection off, so the figure is the
//! scrape's) and Debian's Prometheus with the same target, both every `--interval` seconds;
//! samples each scraper's resident memory every second and its CPU time over the run after a
//! warm-up; prints both and the ratios, and checks that the aggregator holds the series.
//!
//! `cargo build --release --workspace && cargo run --release -p fleetwatch-benches --bin scrape_compare -- --seconds 180`

use anyhow::{bail, Context};
use clap::Parser;
use fleetwatch_benches::procfs::{cpu_seconds, free_port, status_kib};
use fleetwatch_common::pki;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Measures the agent's scrape against Prometheus'.
#[derive(Parser)]
struct Args {
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Seconds before measuring (both scrapers start and fill their caches).
    #[arg(long, default_value_t = 25)]
    warmup: u64,
    /// Series the target exposes.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Scrape interval of both, in seconds.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Prometheus binary.
    #[arg(long, default_value = "/usr/bin/prometheus")]
    prometheus: PathBuf,
    /// Directory with the release fleetwatch binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let f = std::fs::File::create(log)?;
    Ok(Proc(
        Command::new(bin)
            .args(args)
            .stdout(f.try_clone()?)
            .stderr(f)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ))
}

/// The exposition at request `n`: about `series` series, values moving with `n`.
fn exposition(series: usize, n: u64) -> String {
    let mut out = String::with_capacity(series * 80);
    // a histogram of 13 series per label set (11 buckets, sum, count): 20 % of the series
    let hist_sets = series / 5 / 13;
    let les = [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
    ];
    out.push_str("# HELP app_request_duration_seconds Request latency.\n# TYPE app_request_duration_seconds histogram\n");
    for i in 0..hist_sets {
        let labels = format!("route=\"/api/r{i}\",method=\"GET\"");
        for (b, le) in les.iter().enumerate() {
            let v = n * (b as u64 + 1) + i as u64;
            out.push_str(&format!(
                "app_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {v}\n"
            ));
        }
        out.push_str(&format!(
            "app_request_duration_seconds_sum{{{labels}}} {}\napp_request_duration_seconds_count{{{labels}}} {}\n",
            n as f64 * 0.37 + i as f64,
            n * 11 + i as u64
        ));
    }
    let rest = series - hist_sets * 13;
    // the rest: families of 100 series, half counters, half gauges
    let mut made = 0;
    let mut family = 0;
    while made < rest {
        let counter = family % 2 == 0;
        let name = if counter {
            format!("app_events_{family}_total")
        } else {
            format!("app_level_{family}")
        };
        let kind = if counter { "counter" } else { "gauge" };
        out.push_str(&format!("# HELP {name} Generated.\n# TYPE {name} {kind}\n"));
        for j in 0..100.min(rest - made) {
            let v = if counter {
                (n * (j as u64 + 1)) as f64
            } else {
                ((n + j as u64) % 97) as f64 / 3.0
            };
            out.push_str(&format!(
                "{name}{{worker=\"w{j}\",queue=\"q{}\"}} {v}\n",
                j % 7
            ));
            made += 1;
        }
        family += 1;
    }
    out
}

/// Serves the exposition; counts requests per scraper (by User-Agent).
fn serve(
    listener: TcpListener,
    series: usize,
    agent_hits: Arc<AtomicU64>,
    prom_hits: Arc<AtomicU64>,
) {
    let n = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let (n, a, p) = (n.clone(), agent_hits.clone(), prom_hits.clone());
        std::thread::spawn(move || {
            let Ok(clone) = conn.try_clone() else { return };
            let mut reader = BufReader::new(clone);
            let mut line = String::new();
            let mut agent = false;
            while reader.read_line(&mut line).is_ok_and(|k| k > 0) && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("user-agent:") {
                    agent = lower.contains("fleetwatch");
                }
                line.clear();
            }
            if agent { &a } else { &p }.fetch_add(1, Ordering::SeqCst);
            let body = exposition(series, n.fetch_add(1, Ordering::SeqCst));
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        });
    }
}

fn http_get(port: u16, path: &str, token: &str) -> anyhow::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.prometheus.exists() {
        bail!(
            "{} not found: apt-get install prometheus",
            args.prometheus.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let p = d.join("pki");
    pki::init(&p, "bench CA")?;
    pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    pki::issue_agent(&p, "bench-host", pki::Validity::days(1))?;
    let token = "bench-token-0123456789abcdef";
    std::fs::write(d.join("token"), format!("{token}\n"))?;
    let (quic, http, prom_port, push) = (free_port()?, free_port()?, free_port()?, free_port()?);

    let target = TcpListener::bind("127.0.0.1:0")?;
    let target_port = target.local_addr()?.port();
    let (agent_hits, prom_hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    {
        let (a, p) = (agent_hits.clone(), prom_hits.clone());
        let series = args.series;
        std::thread::spawn(move || serve(target, series, a, p));
    }

    std::fs::write(
        d.join("agg.toml"),
        format!(
            "data_dir = \"{d}/agg\"\n[quic]\nlisten = \"127.0.0.1:{quic}\"\nca = \"{p}/ca.pem\"\ncert = \"{p}/servers/localhost.pem\"\nkey = \"{p}/servers/localhost.key\"\ncrl = \"{p}/crl.pem\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token_file = \"{d}/token\"\n",
            d = d.display(),
            p = p.display()
        ),
    )?;
    let interval = args.interval;
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "data_dir = \"{d}/agent\"\n[aggregator]\naddresses = [\"127.0.0.1:{quic}\"]\nserver_name = \"localhost\"\nca = \"{p}/ca.pem\"\ncert = \"{p}/agents/bench-host.pem\"\nkey = \"{p}/agents/bench-host.key\"\n[host]\nenabled = false\ninterval_seconds = 10.0\n[push]\nlisten = \"127.0.0.1:{push}\"\n[[scrape]]\njob = \"bench\"\nurl = \"http://127.0.0.1:{target_port}/metrics\"\ninterval_seconds = {interval}.0\n",
            d = d.display(),
            p = p.display()
        ),
    )?;
    std::fs::write(
        d.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {interval}s\n  scrape_timeout: {interval}s\nscrape_configs:\n  - job_name: bench\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )?;

    let _agg = spawn(
        &args.bin_dir.join("fleetwatch-aggregator"),
        &[
            "run".into(),
            "-c".into(),
            d.join("agg.toml").display().to_string(),
        ],
        &d.join("agg.log"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let agent = spawn(
        &args.bin_dir.join("fleetwatch-agent"),
        &[
            "run".into(),
            "-c".into(),
            d.join("agent.toml").display().to_string(),
        ],
        &d.join("agent.log"),
    )?;
    let prom = spawn(
        &args.prometheus,
        &[
            format!("--config.file={}", d.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", d.join("prom").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &d.join("prometheus.log"),
    )?;
    let (agent_pid, prom_pid) = (agent.0.id(), prom.0.id());
    println!(
        "target: {} series, scraped every {interval} s by both; warming up {} s",
        args.series, args.warmup
    );
    std::thread::sleep(Duration::from_secs(args.warmup));
    let (a_cpu0, p_cpu0) = (
        cpu_seconds(agent_pid).context("agent exited")?,
        cpu_seconds(prom_pid).context("prometheus exited")?,
    );
    let (a_hits0, p_hits0) = (
        agent_hits.load(Ordering::SeqCst),
        prom_hits.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    let (mut a_rss, mut p_rss) = (Vec::new(), Vec::new());
    while start.elapsed() < Duration::from_secs(args.seconds) {
        a_rss.extend(status_kib(agent_pid, "VmRSS:"));
        p_rss.extend(status_kib(prom_pid, "VmRSS:"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let a_cpu = cpu_seconds(agent_pid).context("agent exited")? - a_cpu0;
    let p_cpu = cpu_seconds(prom_pid).context("prometheus exited")? - p_cpu0;
    let (a_peak, p_peak) = (
        status_kib(agent_pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        status_kib(prom_pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
    );
    let a_scrapes = agent_hits.load(Ordering::SeqCst) - a_hits0;
    let p_scrapes = prom_hits.load(Ordering::SeqCst) - p_hits0;
    let stored = http_get(
        http,
        "/api/v1/query?query=count(%7Bjob%3D%22bench%22%7D)",
        token,
    )?;
    let stored = stored
        .split("\"value\":[")
        .nth(1)
        .and_then(|v| v.split('"').nth(1))
        .unwrap_or("?")
        .to_string();

    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
    println!(
        "measured {secs:.0} s: agent {a_scrapes} scrapes, Prometheus {p_scrapes}; aggregator holds {stored} series of job=\"bench\""
    );
    println!(
        "{:<18} {:>12} {:>13} {:>13} {:>15}",
        "", "CPU seconds", "CPU % of core", "avg RSS MiB", "peak RSS MiB"
    );
    for (name, cpu, rss, peak) in [
        ("fleetwatch-agent", a_cpu, &a_rss, a_peak),
        ("prometheus", p_cpu, &p_rss, p_peak),
    ] {
        println!(
            "{name:<18} {cpu:>12.2} {:>13.2} {:>13.1} {peak:>15.1}",
            100.0 * cpu / secs,
            avg(rss)
        );
    }
    println!(
        "ratio agent/Prometheus: CPU {:.2}, avg RSS {:.2}, peak RSS {:.2}",
        a_cpu / p_cpu.max(1e-9),
        avg(&a_rss) / avg(&p_rss).max(1e-9),
        a_peak / p_peak.max(1e-9)
    );
    Ok(())
}
