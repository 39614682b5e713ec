//! Log search against grep: stores `--lines` realistic log lines (about 200 bytes each, 8 hosts,
//! 3 sources, 6 levels) in the aggregator's log store in this process, writes the same lines as
//! raw text, then times a substring search in the store (the count of matches over everything,
//! and the first page of 100, newest first) against `grep -c -F` over the raw text, in the same
//! run, and prints the ratios.
//!
//! `cargo run --release -p fleetwatch-benches --bin log_query -- --lines 10000000`

use clap::Parser;
use fleetwatch_aggregator::logstore::query::{self, CountQuery, Literal, LogFilter, LogQuery};
use fleetwatch_aggregator::logstore::{LogStore, LogStoreConfig};
use fleetwatch_aggregator::metrics::Metrics;
use fleetwatch_common::model::{LogLevel, LogRecord};
use std::io::Write;
use std::time::Instant;

/// Log search against grep.
#[derive(Parser)]
struct Args {
    /// Log lines to store.
    #[arg(long, default_value_t = 10_000_000)]
    lines: u64,
    /// Lines per batch.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Timed runs of each query (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Working directory (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// The needle: in about one line in a thousand.
const NEEDLE: &str = "connection reset by peer";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const ROUTES: [&str; 8] = [
    "/api/v1/orders",
    "/api/v1/users",
    "/api/v1/invoices",
    "/api/v1/queues/emails/jobs",
    "/healthz",
    "/api/v1/subscriptions",
    "/api/v1/search",
    "/api/v1/reports/daily",
];

/// One line of about 200 bytes, and its level.
fn line(rng: &mut Rng, n: u64) -> (String, LogLevel) {
    let r = rng.below(1000);
    let route = ROUTES[rng.below(8) as usize];
    let trace = rng.next();
    let (level, text) = if r == 0 {
        (
            LogLevel::Error,
            format!(
                "upstream request failed: {NEEDLE} while proxying GET {route}/{} to 10.0.{}.{}:8080 after {} ms; retrying",
                n % 100_000,
                rng.below(256),
                rng.below(256),
                rng.below(3000)
            ),
        )
    } else if r < 20 {
        (
            LogLevel::Warn,
            format!(
                "slow request: POST {route} took {} ms (threshold 1000 ms) user_id=u{} organization_id=o{}",
                1000 + rng.below(4000),
                rng.below(50_000),
                rng.below(500)
            ),
        )
    } else {
        let level = if r < 300 {
            LogLevel::Debug
        } else {
            LogLevel::Info
        };
        (
            level,
            format!(
                "request completed method=GET path={route}/{} status={} duration_ms={} bytes={} user_id=u{} organization_id=o{}",
                rng.below(1_000_000),
                [200, 200, 200, 201, 204, 304, 404][rng.below(7) as usize],
                rng.below(900),
                rng.below(100_000),
                rng.below(50_000),
                rng.below(500)
            ),
        )
    };
    let mut text = format!("{text} trace_id={trace:016x}");
    while text.len() < 200 {
        text.push_str(" pad");
    }
    text.truncate(200);
    (text, level)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let store = LogStore::open(&dir.join("logs"), LogStoreConfig::default(), Metrics::new())?;
    let raw_path = dir.join("raw.log");
    let mut raw = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&raw_path)?);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t0: i64 = 1_700_000_000_000_000_000;
    let sources = ["/var/log/app.log", "/var/log/syslog", "worker"];
    let started = Instant::now();
    let mut seq = [0u64; 8];
    let mut n = 0u64;
    let mut raw_bytes = 0u64;
    while n < args.lines {
        let host = (n / args.batch % 8) as usize;
        seq[host] += 1;
        let count = args.batch.min(args.lines - n);
        let mut logs = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let (text, level) = line(&mut rng, n);
            raw.write_all(text.as_bytes())?;
            raw.write_all(b"\n")?;
            raw_bytes += text.len() as u64 + 1;
            logs.push(LogRecord {
                // 10,000 lines a second across the fleet
                timestamp_ns: t0 + n as i64 * 100_000,
                source: sources[(n % 3) as usize].into(),
                level,
                message: text,
                fields: Vec::new(),
            });
            n += 1;
        }
        store.append(&format!("host-{host}"), seq[host], &logs, false);
        if n % 1_000_000 < args.batch {
            eprintln!(
                "stored {n} lines ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.persist()?;
    raw.flush()?;
    drop(raw);
    let ingest_s = started.elapsed().as_secs_f64();
    let stats = store.stats();

    let filter = LogFilter {
        contains: vec![Literal::new(NEEDLE)],
        ..Default::default()
    };
    let end = t0 + args.lines as i64 * 100_000;
    let cq = CountQuery {
        filter: filter.clone(),
        start_ns: t0,
        end_ns: end,
        step_ns: end - t0 + 1,
    };
    let pq = LogQuery {
        filter: filter.clone(),
        start_ns: t0,
        end_ns: end,
        newest_first: true,
        limit: 100,
        after: None,
    };
    // warm the page cache for both sides
    let _ = std::fs::read(&raw_path).map(|b| b.len());
    let mut count = 0u64;
    let mut count_times = Vec::new();
    let mut page_times = Vec::new();
    let mut grep_times = Vec::new();
    let mut grep_count = 0u64;
    for _ in 0..args.runs {
        let t = Instant::now();
        let snap = store.snapshot(&cq.filter, cq.start_ns, cq.end_ns);
        count = query::counts(&snap, &cq).values().flatten().sum();
        count_times.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let snap = store.snapshot(&pq.filter, pq.start_ns, pq.end_ns);
        let page = query::page(&snap, &pq);
        page_times.push(t.elapsed().as_secs_f64());
        assert_eq!(page.records.len(), 100.min(count as usize));
        let t = Instant::now();
        let out = std::process::Command::new("grep")
            .env("LC_ALL", "C")
            .args(["-c", "-F", NEEDLE])
            .arg(&raw_path)
            .output()?;
        grep_times.push(t.elapsed().as_secs_f64());
        grep_count = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    }
    anyhow::ensure!(
        count == grep_count,
        "the store counted {count} matches, grep {grep_count}"
    );
    let (c, p, g) = (median(count_times), median(page_times), median(grep_times));
    println!("lines stored:            {}", args.lines);
    println!(
        "ingest (in-process):     {:.1} s, {:.0} lines/s",
        ingest_s,
        args.lines as f64 / ingest_s
    );
    println!(
        "raw text:                {:.0} MiB; store on disk {:.0} MiB in {} segments ({:.1}x smaller)",
        raw_bytes as f64 / 1048576.0,
        stats.bytes as f64 / 1048576.0,
        stats.segments,
        raw_bytes as f64 / stats.bytes.max(1) as f64
    );
    println!("matches of {NEEDLE:?}: {count} (grep -c: {grep_count})");
    println!(
        "count of matches:        {:.3} s (median of {})",
        c, args.runs
    );
    println!("first page of 100:       {:.4} s", p);
    println!("grep -c -F (LC_ALL=C):   {:.3} s", g);
    println!("ratio count / grep:      {:.2}", c / g);
    println!("ratio first page / grep: {:.4}", p / g);
    Ok(())
}
