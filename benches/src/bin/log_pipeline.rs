//! Log pipeline throughput: lines per second from a file, through one agent process (tail,
//! parse, sled buffer with fsync per batch, QUIC with mutual TLS), into the aggregator's
//! write-ahead log and log store, with the agent's CPU time and peak resident memory. In the
//! same run, two physical limits of this machine: `cat FILE > /dev/null` and a plain loopback
//! TCP copy of the same file.
//!
//! `cargo build --release -p fleetwatch-agent && cargo run --release -p fleetwatch-benches --bin log_pipeline -- --lines 2000000`

use clap::Parser;
use fleetwatch_benches::procfs::{cpu_seconds, status_kib};
use fleetwatch_common::model::now_ms;
use fleetwatch_common::pki;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Log pipeline throughput.
#[derive(Parser)]
struct Args {
    /// Lines in the file.
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 200)]
    line_bytes: usize,
}

fn write_file(path: &Path, lines: u64, width: usize) -> anyhow::Result<u64> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
    let mut total = 0u64;
    for i in 0..lines {
        let mut l = format!(
            "2024-05-01T12:{:02}:{:02}.{:06}Z {} worker-{} processed job {} in queue mail attempt {} ",
            (i / 60_000_000) % 60,
            (i / 1_000_000) % 60,
            i % 1_000_000,
            levels[(i % 6) as usize],
            i % 16,
            i,
            i % 3
        );
        while l.len() < width - 1 {
            l.push(char::from(b'a' + (l.len() % 26) as u8));
        }
        l.truncate(width - 1);
        l.push('\n');
        w.write_all(l.as_bytes())?;
        total += l.len() as u64;
    }
    w.flush()?;
    Ok(total)
}

fn cat_seconds(path: &Path) -> anyhow::Result<f64> {
    let t = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("cat '{}' > /dev/null", path.display()))
        .status()?;
    anyhow::ensure!(status.success(), "cat failed");
    Ok(t.elapsed().as_secs_f64())
}

fn tcp_copy_seconds(path: &Path) -> anyhow::Result<f64> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sink = std::thread::spawn(move || -> u64 {
        let Ok((mut s, _)) = listener.accept() else {
            return 0;
        };
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let t = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut s = std::net::TcpStream::connect(addr)?;
    std::io::copy(&mut f, &mut s)?;
    drop(s);
    let _ = sink.join();
    Ok(t.elapsed().as_secs_f64())
}

fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .map(|d| d.join("fleetwatch-agent"))
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release -p fleetwatch-agent",
        bin.display()
    );
    Ok(bin)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.line_bytes >= 64, "--line-bytes must be at least 64");
    let agent_bin = agent_binary()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let file = d.join("app.log");
    let bytes = write_file(&file, args.lines, args.line_bytes)?;
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "{} lines of {} bytes ({mib:.0} MiB) in {}",
        args.lines,
        args.line_bytes,
        file.display()
    );
    let cat = cat_seconds(&file)?;
    let tcp = tcp_copy_seconds(&file)?;

    let p = d.join("pki");
    pki::init(&p, "bench CA")?;
    let server = pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    let agent = pki::issue_agent(&p, "bench-host", pki::Validity::days(1))?;
    std::fs::write(d.join("token"), "bench-token-0123456789abcdef\n")?;
    let cfg = fleetwatch_benches::loopback::aggregator_config(
        &d.join("agg"),
        &p,
        server,
        &d.join("token"),
    );
    let agg = fleetwatch_aggregator::server::start(cfg).await?;

    let agent_toml = d.join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            r#"data_dir = "{data}"
[aggregator]
addresses = ["{quic}"]
server_name = "localhost"
ca = "{ca}"
cert = "{cert}"
key = "{key}"
[host]
enabled = false
interval_seconds = 60.0
[push]
enabled = false
[batch]
max_items = 10000
max_wait_seconds = 0.2
[[logs.files]]
name = "bench"
paths = ["{file}"]
start_at = "beginning"
"#,
            data = d.join("agent").display(),
            quic = agg.quic_addr,
            ca = p.join("ca.pem").display(),
            cert = agent.cert.display(),
            key = agent.key.display(),
            file = file.display(),
        ),
    )?;
    let stored = |agg: &fleetwatch_aggregator::server::RunningAggregator| -> u64 {
        agg.state
            .logs
            .records_series(now_ms())
            .iter()
            .flat_map(|s| s.samples.iter().map(|x| x.value as u64))
            .sum()
    };
    let log = std::fs::File::create(d.join("agent.log"))?;
    let start = Instant::now();
    let mut child = std::process::Command::new(&agent_bin)
        .args(["run", "-c"])
        .arg(&agent_toml)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let mut last_print = Instant::now();
    let deadline = start + Duration::from_secs(1800);
    // The largest VmRSS sampled, with its anonymous (heap, stacks) and file-backed (the
    // binary's pages) parts at that moment.
    let (mut rss_max, mut anon_at_max, mut file_at_max) = (0u64, 0u64, 0u64);
    loop {
        let n = stored(&agg);
        let rss = status_kib(pid, "VmRSS:").unwrap_or(0);
        if rss > rss_max {
            rss_max = rss;
            anon_at_max = status_kib(pid, "RssAnon:").unwrap_or(0);
            file_at_max = status_kib(pid, "RssFile:").unwrap_or(0);
        }
        if n >= args.lines {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("only {n} of {} lines stored after 30 minutes", args.lines);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!("  {:.0} s: {n} lines stored", start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let hwm = status_kib(pid, "VmHWM:").unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    agg.stop().await;

    let rate = args.lines as f64 / secs;
    let cat_rate = args.lines as f64 / cat;
    let tcp_rate = args.lines as f64 / tcp;
    println!();
    println!(
        "file -> agent -> QUIC -> aggregator log store: {} lines in {secs:.2} s = {rate:.0} lines/s ({:.1} MiB/s)",
        args.lines,
        mib / secs
    );
    println!(
        "agent: {cpu:.2} s CPU ({:.0}% of one core), peak RSS {:.1} MiB (VmHWM; sampled max VmRSS {:.1} MiB = {:.1} anonymous + {:.1} file-backed)",
        100.0 * cpu / secs,
        hwm as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        anon_at_max as f64 / 1024.0,
        file_at_max as f64 / 1024.0
    );
    println!(
        "baselines: cat > /dev/null {cat_rate:.0} lines/s ({:.0} MiB/s), loopback TCP copy {tcp_rate:.0} lines/s ({:.0} MiB/s)",
        mib / cat,
        mib / tcp
    );
    println!(
        "ratios: pipeline / cat = {:.4}, pipeline / TCP copy = {:.4}",
        rate / cat_rate,
        rate / tcp_rate
    );
    println!(
        "target: >= 100000 lines/s with the agent under 50 MiB resident: {}",
        if rate >= 100_000.0 && hwm < 50 * 1024 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
