//! Notification delay: a real aggregator process, a condition pushed through the agent's
//! shipper, and the time until the notification reaches a webhook served here.

use crate::data::Rng;
use crate::procs::{free_tcp_port, free_udp_port, spawn, tail, wait_ready};
use crate::Args;
use anyhow::{bail, Context};
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
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A webhook receiver: the time (ms) each firing alert's `queue` label first arrived.
pub(crate) async fn webhook(
    listener: tokio::net::TcpListener,
    tx: tokio::sync::mpsc::UnboundedSender<(String, i64)>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                let at = now_ms();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    for a in v["alerts"].as_array().into_iter().flatten() {
                        if a["status"] == "firing" {
                            if let Some(q) = a["labels"]["queue"].as_str() {
                                let _ = tx.send((q.to_string(), at));
                            }
                        }
                    }
                }
                if write
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

pub(crate) async fn delay_bench(dir: &Path, args: &Args) -> anyhow::Result<Vec<f64>> {
    let bin = std::env::current_exe()?
        .parent()
        .map(|d| d.join("fleetwatch-aggregator"))
        .filter(|p| p.is_file())
        .context("fleetwatch-aggregator not found beside this program: cargo build --release -p fleetwatch-aggregator")?;
    let p = dir.join("pki");
    pki::init(&p, "bench CA")?;
    let server = pki::issue_server(&p, "localhost", pki::Validity::days(1))?;
    let agent = pki::issue_agent(&p, "bench-app", pki::Validity::days(1))?;
    std::fs::write(dir.join("token"), "bench-token-0123456789abcdef\n")?;
    std::fs::write(
        dir.join("delay-rules.yml"),
        format!(
            "groups:\n  - name: delay\n    interval: {}s\n    rules:\n      - alert: QueueBacklog\n        expr: queue_length > 500\n        for: {}s\n",
            args.interval_seconds, args.for_seconds
        ),
    )?;
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_port = hook.local_addr()?.port();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(webhook(hook, tx));
    let (quic, http) = (free_udp_port()?, free_tcp_port()?);
    let config = dir.join("aggregator.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
[quic]
listen = "127.0.0.1:{quic}"
ca = "{p}/ca.pem"
cert = "{cert}"
key = "{key}"
crl = "{p}/crl.pem"
[http]
listen = "127.0.0.1:{http}"
admin_token_file = "{token}"
metrics_public = true
[rules]
files = ["{rules}"]
[alerting]
default_receiver = "hook"
group_by = ["alertname", "queue"]
group_wait_seconds = 0.0
group_interval_seconds = 1.0
repeat_interval_seconds = 3600.0
[[alerting.receivers]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
"#,
            data = dir.join("aggregator").display(),
            p = p.display(),
            cert = server.cert.display(),
            key = server.key.display(),
            token = dir.join("token").display(),
            rules = dir.join("delay-rules.yml").display(),
        ),
    )?;
    let log = dir.join("aggregator.log");
    let mut agg = spawn(
        &bin,
        &["run".into(), "-c".into(), config.display().to_string()],
        &log,
    )?;
    wait_ready(&mut agg, &format!("http://127.0.0.1:{http}/readyz"), &log).await?;

    let buffer = Arc::new(Buffer::open(&dir.join("buffer"), BufferConfig::default())?);
    let wake = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let shipper = Shipper {
        link: AggregatorLink {
            addresses: vec![format!("127.0.0.1:{quic}")],
            server_name: "localhost".into(),
            ca: p.join("ca.pem"),
            cert: agent.cert,
            key: agent.key,
            ..Default::default()
        },
        buffer: buffer.clone(),
        metrics: AgentMetrics::new(),
        facts: HostFacts::default(),
        wake: wake.clone(),
    };
    let shipping = tokio::spawn(shipper.run(stopped));

    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ now_ms() as u64);
    let mut delays = Vec::new();
    let interval_ms = args.interval_seconds as f64 * 1000.0;
    for trial in 0..args.trials {
        // a random phase against the evaluation schedule
        tokio::time::sleep(Duration::from_millis((rng.unit() * interval_ms) as u64)).await;
        let queue = format!("q{trial}");
        let t0 = now_ms();
        let mut batch = Batch::new(Lane::Metrics, t0);
        batch.metrics.push(SeriesSamples {
            series: Series::new("queue_length", [Label::new("queue", queue.clone())]),
            kind: MetricKind::Gauge,
            samples: vec![Sample {
                timestamp_ms: t0,
                value: 900.0,
            }],
        });
        buffer.push(Lane::Metrics, t0, |seq| {
            batch.seq = seq;
            codec::encode(&Message::Batch(batch))
        })?;
        wake.notify_one();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.for_seconds + 60);
        let arrived = loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((q, at))) if q == queue => break at,
                Ok(Some(_)) => continue,
                _ => bail!(
                    "trial {trial}: no notification within {} s; aggregator log:\n{}",
                    args.for_seconds + 60,
                    tail(&log)
                ),
            }
        };
        let delay = (arrived - t0) as f64 / 1000.0;
        println!(
            "trial {trial}: condition true → notification received {delay:.3} s later ({:.3} s after `for`)",
            delay - args.for_seconds as f64
        );
        delays.push(delay - args.for_seconds as f64);
    }
    let _ = stop.send(true);
    let _ = shipping.await;
    // SAFETY: SIGTERM to our own child, not yet reaped.
    if let Some(pid) = agg.id() {
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), agg.wait()).await;
    Ok(delays)
}
