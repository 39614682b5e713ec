//! Pacing of log batches while connected (`buffer.log_backlog_bytes`): an agent tails a file
//! that is read much faster than its aggregator acknowledges, over real mutual-TLS QUIC on
//! loopback. The test's aggregator speaks the real protocol (the `ServerConn` state machine,
//! frames from the agent's transport) and acknowledges one batch at a time, slowly. The
//! agent's buffer must stay within the bound the whole time, and every line must arrive once,
//! in order.

mod support;

use fleetwatch_agent::config::AgentConfig;
use fleetwatch_agent::run;
use fleetwatch_agent::sources::logs::config::{FileSource, StartAt};
use fleetwatch_agent::transport::read_frame;
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::Lane;
use fleetwatch_common::pki::{self, Validity};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the test's aggregator received: log messages by batch sequence number (a batch sent
/// twice is kept once, as the real aggregator does), and the largest frame.
#[derive(Default)]
struct Received {
    logs: BTreeMap<u64, Vec<String>>,
    largest_frame: usize,
}

/// A QUIC server that accepts one agent at a time and acknowledges its batches one after the
/// other, each after `ack_delay`.
async fn slow_aggregator(
    pki_dir: &Path,
    ack_delay: Duration,
) -> (SocketAddr, Arc<Mutex<Received>>, quinn::Endpoint) {
    let endpoint = support::quic::endpoint(pki_dir);
    let addr = endpoint.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Received::default()));
    let (ep, rx) = (endpoint.clone(), received.clone());
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            serve(conn, ack_delay, rx.clone()).await;
        }
    });
    (addr, received, endpoint)
}

async fn serve(conn: quinn::Connection, ack_delay: Duration, received: Arc<Mutex<Received>>) {
    let Some(server) = support::quic::handshake(&conn, 8).await else {
        return;
    };
    let limits = FrameLimits::default();
    // One batch at a time: the aggregator is the bottleneck.
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let (server, received, gate) = (server.clone(), received.clone(), one_at_a_time.clone());
        tokio::spawn(async move {
            let _turn = gate.lock().await;
            let Ok(message) = read_frame(&mut recv, &limits).await else {
                return;
            };
            let size = codec::encode(&message).map(|f| f.len()).unwrap_or(0);
            let batch = server.lock().unwrap().on_batch_stream(message).unwrap();
            tokio::time::sleep(ack_delay).await;
            {
                let mut r = received.lock().unwrap();
                r.largest_frame = r.largest_frame.max(size);
                if batch.lane == Lane::Logs {
                    r.logs
                        .entry(batch.seq)
                        .or_insert_with(|| batch.logs.iter().map(|l| l.message.clone()).collect());
                }
            }
            support::quic::acknowledge(&server, &mut send, batch.seq).await;
        });
    }
}

const LINES: usize = 12_000;
const LIMIT: u64 = 256 * 1024;

/// Line `n`: its number and 180 bytes that compress poorly, so frames are about as large as
/// the text (a backlog in the file is then a backlog of bytes in the buffer).
fn line(n: usize) -> String {
    let mut x = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut noise = String::with_capacity(180);
    while noise.len() < 180 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push_str(&format!("{x:016x}"));
    }
    noise.truncate(180);
    format!("line {n:06} {noise}\n")
}

/// A file read far faster than the aggregator acknowledges: while connected the buffer never
/// holds more than `buffer.log_backlog_bytes` plus the one batch written after the wait (without
/// the pacing it takes most of the file), and every line arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_backlog_stays_in_the_file_not_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki_dir = d.join("pki");
    pki::init(&pki_dir, "test CA").unwrap();
    let agent_cert = pki::issue_agent(&pki_dir, "test-host", Validity::days(1)).unwrap();
    let (addr, received, endpoint) = slow_aggregator(&pki_dir, Duration::from_millis(40)).await;

    let logs = d.join("logs");
    std::fs::create_dir(&logs).unwrap();
    let mut c = AgentConfig {
        data_dir: d.join("agent"),
        ..Default::default()
    };
    c.aggregator.addresses = vec![addr.to_string()];
    c.aggregator.server_name = "localhost".into();
    c.aggregator.ca = pki_dir.join("ca.pem");
    c.aggregator.cert = agent_cert.cert;
    c.aggregator.key = agent_cert.key;
    c.push.enabled = false;
    c.host.enabled = false;
    c.host.interval_seconds = 3600.0;
    c.buffer.log_backlog_bytes = Some(LIMIT);
    // Batches of 200 lines (about 40 KB): many batches, so a backlog builds up quickly.
    c.batch.max_items = 200;
    c.batch.max_wait_seconds = 0.05;
    c.logs.scan_interval_seconds = 0.1;
    c.logs.read_interval_seconds = 0.05;
    c.logs.files = vec![FileSource {
        name: "app".into(),
        paths: vec![format!("{}/*.log", logs.display())],
        exclude: Vec::new(),
        start_at: StartAt::Beginning,
        multiline_start: None,
        labels: BTreeMap::new(),
        max_line_bytes: 256 * 1024,
        rate_limit_lines_per_second: 0,
    }];
    c.validate().unwrap();
    let agent = run::start(c).unwrap();

    // Connected, and the start-up batch of the agent's own metrics delivered: from here on the
    // buffer holds log batches only.
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.metrics.connected.get() != 1 || !agent.buffer.is_empty() {
        assert!(Instant::now() < deadline, "the agent did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text: String = (0..LINES).map(line).collect();
    let tmp = d.join("app.tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.sync_all().unwrap();
    // Appears whole at once: the agent finds all of it at its next scan.
    std::fs::rename(&tmp, logs.join("app.log")).unwrap();

    let mut peak = 0u64;
    let mut samples = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let delivered: usize = received.lock().unwrap().logs.values().map(Vec::len).sum();
        if delivered >= LINES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {delivered} of {LINES} lines delivered"
        );
        if agent.metrics.connected.get() == 1 {
            peak = peak.max(agent.buffer.stats().bytes);
            samples += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        agent.metrics.connections.get(),
        1,
        "the agent reconnected during the test"
    );
    let (largest_frame, messages): (usize, Vec<String>) = {
        let r = received.lock().unwrap();
        (
            r.largest_frame,
            r.logs.values().flatten().cloned().collect(),
        )
    };
    agent.stop().await;
    endpoint.close(0u32.into(), b"done");
    // The wait ends once the buffer is at most LIMIT; then one batch (plus its head) goes in.
    let bound = LIMIT + largest_frame as u64 + 64;
    println!(
        "buffer peak {peak} bytes over {samples} samples (bound {bound}: limit {LIMIT} + largest frame {largest_frame})"
    );
    assert!(samples > 0);
    assert!(
        peak <= bound,
        "while connected the buffer held {peak} bytes, over the bound of {bound}"
    );
    // Every line once, in order (sequence numbers follow the file's order here: one file).
    assert_eq!(messages.len(), LINES, "lines delivered more than once");
    for (n, m) in messages.iter().enumerate() {
        assert_eq!(
            format!("{m}\n"),
            line(n),
            "line {n} missing, repeated or out of order"
        );
    }
}
