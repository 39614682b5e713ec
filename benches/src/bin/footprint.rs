//! Agent footprint against node_exporter, measured in the same run.
//!
//! Starts a fleetwatch aggregator and an idle fleetwatch agent collecting every 10 s, and
//! Debian's node_exporter scraped every 10 s by this program; samples each process's resident
//! memory (VmRSS) every second and its CPU time at the end; prints both and the ratios.
//!
//! `cargo build --release --workspace && cargo run --release -p fleetwatch-benches --bin footprint -- --seconds 120`

use anyhow::{bail, Context};
use clap::Parser;
use fleetwatch_benches::procfs::{cpu_seconds, free_port, status_kib};
use fleetwatch_common::pki;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Measures the idle agent against node_exporter.
#[derive(Parser)]
struct Args {
    /// How long to measure.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// node_exporter binary.
    #[arg(long, default_value = "/usr/bin/prometheus-node-exporter")]
    node_exporter: PathBuf,
    /// Directory with the release fleetwatch binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> anyhow::Result<usize> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.node_exporter.exists() {
        bail!(
            "{} not found: apt-get install prometheus-node-exporter",
            args.node_exporter.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let p = d.join("pki");
    pki::init(&p, "bench CA")?;
    pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    pki::issue_agent(&p, "bench-host", pki::Validity::days(1))?;
    std::fs::write(d.join("token"), "bench-token-0123456789abcdef\n")?;
    let (quic, http, ne) = (free_port()?, free_port()?, free_port()?);
    std::fs::write(
        d.join("agg.toml"),
        format!(
            "data_dir = \"{d}/agg\"\n[quic]\nlisten = \"127.0.0.1:{quic}\"\nca = \"{p}/ca.pem\"\ncert = \"{p}/servers/localhost.pem\"\nkey = \"{p}/servers/localhost.key\"\ncrl = \"{p}/crl.pem\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token_file = \"{d}/token\"\n",
            d = d.display(),
            p = p.display()
        ),
    )?;
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "data_dir = \"{d}/agent\"\n[aggregator]\naddresses = [\"127.0.0.1:{quic}\"]\nserver_name = \"localhost\"\nca = \"{p}/ca.pem\"\ncert = \"{p}/agents/bench-host.pem\"\nkey = \"{p}/agents/bench-host.key\"\n[host]\ninterval_seconds = 10.0\n",
            d = d.display(),
            p = p.display()
        ),
    )?;
    let agg_bin = args.bin_dir.join("fleetwatch-aggregator");
    let agent_bin = args.bin_dir.join("fleetwatch-agent");
    let _agg = spawn(
        &agg_bin,
        &["run", "-c", &d.join("agg.toml").to_string_lossy()],
        &d.join("agg.log"),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let agent = spawn(
        &agent_bin,
        &["run", "-c", &d.join("agent.toml").to_string_lossy()],
        &d.join("agent.log"),
    )?;
    let node = spawn(
        &args.node_exporter,
        &[&format!("--web.listen-address=127.0.0.1:{ne}")],
        &d.join("ne.log"),
    )?;
    let (agent_pid, node_pid) = (agent.0.id(), node.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let (a_cpu0, n_cpu0) = (
        cpu_seconds(agent_pid).unwrap_or(0.0),
        cpu_seconds(node_pid).unwrap_or(0.0),
    );
    let start = Instant::now();
    let mut next_scrape = start;
    let (mut a_rss, mut n_rss) = (Vec::new(), Vec::new());
    while start.elapsed() < Duration::from_secs(args.seconds) {
        if Instant::now() >= next_scrape {
            scrape(ne).context("scraping node_exporter")?;
            next_scrape += Duration::from_secs(10);
        }
        a_rss.extend(status_kib(agent_pid, "VmRSS:"));
        n_rss.extend(status_kib(node_pid, "VmRSS:"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let a_cpu = cpu_seconds(agent_pid).unwrap_or(0.0) - a_cpu0;
    let n_cpu = cpu_seconds(node_pid).unwrap_or(0.0) - n_cpu0;
    let avg = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0;
    let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    println!("footprint over {secs:.0} s, 10 s interval (agent collecting+shipping, node_exporter scraped)");
    println!(
        "{:<16} {:>12} {:>12} {:>14}",
        "", "avg RSS MiB", "max RSS MiB", "CPU % of core"
    );
    println!(
        "{:<16} {:>12.1} {:>12.1} {:>14.3}",
        "fleetwatch-agent",
        avg(&a_rss),
        max(&a_rss),
        100.0 * a_cpu / secs
    );
    println!(
        "{:<16} {:>12.1} {:>12.1} {:>14.3}",
        "node_exporter",
        avg(&n_rss),
        max(&n_rss),
        100.0 * n_cpu / secs
    );
    println!(
        "ratio agent/node_exporter: RSS {:.2}, CPU {:.2}",
        avg(&a_rss) / avg(&n_rss),
        a_cpu / n_cpu.max(1e-9)
    );
    Ok(())
}
