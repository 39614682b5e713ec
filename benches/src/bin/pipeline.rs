//! Pipeline throughput: samples per second one agent pushes from its sled buffer through QUIC
//! with mutual TLS into an aggregator's fsynced write-ahead log and index, on loopback.
//!
//! Fills an agent buffer with `--batches` batches of `--samples` samples each, starts an
//! aggregator and the agent's shipper in this process, and times until the buffer is empty.
//!
//! `cargo run --release -p fleetwatch-benches --bin pipeline -- --batches 2000 --samples 1000`

use clap::Parser;
use fleetwatch_agent::buffer::{Buffer, BufferConfig};
use fleetwatch_agent::config::AggregatorLink;
use fleetwatch_agent::metrics::AgentMetrics;
use fleetwatch_agent::shipper::Shipper;
use fleetwatch_common::codec;
use fleetwatch_common::model::{
    now_ms, Batch, HostFacts, Label, Lane, MetricKind, Sample, Series, SeriesSamples,
};
use fleetwatch_common::pki;
use fleetwatch_common::protocol::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pipeline throughput.
#[derive(Parser)]
struct Args {
    /// Batches to ship.
    #[arg(long, default_value_t = 2000)]
    batches: u64,
    /// Samples per batch.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 8)]
    window: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let p = d.join("pki");
    pki::init(&p, "bench CA")?;
    let server = pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    let agent = pki::issue_agent(&p, "bench-host", pki::Validity::days(1))?;
    std::fs::write(d.join("token"), "bench-token-0123456789abcdef\n")?;

    let buffer = Arc::new(Buffer::open(
        &d.join("buffer"),
        BufferConfig {
            max_bytes: 8 << 30,
            ..Default::default()
        },
    )?);
    let t0 = now_ms() - 3_600_000;
    let fill = Instant::now();
    for b in 0..args.batches {
        let mut batch = Batch::new(Lane::Metrics, t0);
        for s in 0..args.samples {
            batch.metrics.push(SeriesSamples {
                series: Series::new(
                    "bench_metric",
                    [Label::new("series", (s % 500).to_string())],
                ),
                kind: MetricKind::Gauge,
                samples: vec![Sample {
                    timestamp_ms: t0 + b as i64 * 1000 + (s / 500) as i64,
                    value: s as f64,
                }],
            });
        }
        buffer.push(Lane::Metrics, t0, |seq| {
            batch.seq = seq;
            codec::encode(&Message::Batch(batch))
        })?;
    }
    println!("filled {} batches in {:?}", args.batches, fill.elapsed());

    let mut cfg = fleetwatch_benches::loopback::aggregator_config(
        &d.join("agg"),
        &p,
        server,
        &d.join("token"),
    );
    cfg.limits.max_series_per_host = 1_000_000;
    let agg = fleetwatch_aggregator::server::start(cfg).await?;
    let link = AggregatorLink {
        addresses: vec![agg.quic_addr.to_string()],
        server_name: "localhost".into(),
        ca: p.join("ca.pem"),
        cert: agent.cert,
        key: agent.key,
        max_in_flight: args.window,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let shipper = Shipper {
        link,
        buffer: buffer.clone(),
        metrics: AgentMetrics::new(),
        facts: HostFacts::default(),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    let start = Instant::now();
    let task = tokio::spawn(shipper.run(rx));
    while !buffer.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = args.batches as f64 * args.samples as f64;
    println!(
        "shipped {} samples in {} batches in {secs:.2} s: {:.0} samples/s, {:.0} batches/s (window {}, fsync per batch)",
        total as u64,
        args.batches,
        total / secs,
        args.batches as f64 / secs,
        args.window
    );
    let _ = tx.send(true);
    let _ = task.await;
    agg.stop().await;
    Ok(())
}
