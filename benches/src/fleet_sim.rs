//! The fleet simulator: many hosts, each a real QUIC connection with mutual TLS and its own agent
//! certificate from the fleet CA, speaking the agent's protocol (hello, then batches of host
//! metrics, each acknowledged) to a real aggregator.
//!
//! A host's metrics are this machine's own, read once by the agent's host source (the same
//! series names, labels and kinds a real agent sends: CPU time per mode, memory, swap,
//! filesystems, disk I/O, network, load, ...), then given each simulated host its own CPU,
//! memory and disk use, traffic and load, with counters that grow from round to round so that
//! rates work.

use anyhow::{bail, Context};
use fleetwatch_agent::sources::host::HostSource;
use fleetwatch_agent::transport::{read_frame, write_frame};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{now_ms, Batch, HostFacts, Lane, MetricKind, SeriesSamples};
use fleetwatch_common::pki;
use fleetwatch_common::protocol::{AckStatus, ClientConn, Message};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// What to simulate and where.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How many hosts (`sim-00000`, `sim-00001`, ...).
    pub hosts: usize,
    /// The aggregator's QUIC address.
    pub aggregator: SocketAddr,
    /// The name on the aggregator's certificate.
    pub server_name: String,
    /// The fleet CA's directory (`pki init`): certificates are issued there.
    pub pki_dir: PathBuf,
    /// Seconds between two batches of a host (a real agent's host interval).
    pub interval: Duration,
    /// Hosts connecting at once.
    pub connect_concurrency: usize,
}

/// Counters of a running simulation.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Hosts welcomed by the aggregator.
    pub connected: AtomicU64,
    /// Batches acknowledged as stored (applied, duplicate or partial).
    pub batches_acked: AtomicU64,
    /// Samples in those batches.
    pub samples_sent: AtomicU64,
    /// Batches rejected, sends that failed, connections lost.
    pub errors: AtomicU64,
}

/// A running simulation; [`Simulation::stop`] closes every connection.
pub struct Simulation {
    /// Its counters.
    pub stats: Arc<SimStats>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    endpoint: quinn::Endpoint,
}

impl Simulation {
    /// Issues a certificate per host, reads this machine's host metrics as the template (two
    /// readings a second apart, so CPU use is known), and starts every host: each connects,
    /// says hello, sends a batch stamped one interval ago and one now (so rates are known at
    /// once), then one per interval until stopped.
    pub async fn start(config: SimConfig) -> anyhow::Result<Simulation> {
        if config.hosts == 0 {
            bail!("a simulation needs at least one host");
        }
        let mut source = HostSource::new();
        let mut facts = source.facts();
        source.collect(now_ms());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let template = Arc::new(source.collect(now_ms()));
        if template.is_empty() {
            bail!("the host source read no metrics from this machine");
        }

        let dir = config.pki_dir.clone();
        let hosts = config.hosts;
        let issued = tokio::task::spawn_blocking(move || {
            (0..hosts)
                .map(|i| {
                    let name = host_name(i);
                    pki::issue_agent(&dir, &name, pki::Validity::days(2))
                        .with_context(|| format!("issuing the certificate of {name}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await??;

        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let stats = Arc::new(SimStats::default());
        let (stop, stopped) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(config.connect_concurrency.max(1)));
        let ca = config.pki_dir.join("ca.pem");
        let mut tasks = Vec::with_capacity(hosts);
        facts.cpu_count = facts.cpu_count.max(1);
        for (i, cert) in issued.into_iter().enumerate() {
            let tls = fleetwatch_common::tls::client_config(&ca, &cert.cert, &cert.key)
                .map_err(|e| anyhow::anyhow!("client TLS for {}: {e}", host_name(i)))?;
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
            let mut client = quinn::ClientConfig::new(Arc::new(quic));
            let mut transport = quinn::TransportConfig::default();
            transport.keep_alive_interval(Some(Duration::from_secs(5)));
            client.transport_config(Arc::new(transport));
            let host = SimHost {
                index: i,
                facts: HostFacts {
                    hostname: host_name(i),
                    ..facts.clone()
                },
                template: template.clone(),
                interval: config.interval,
            };
            let endpoint = endpoint.clone();
            let stats = stats.clone();
            let stopped = stopped.clone();
            let gate = gate.clone();
            let server_name = config.server_name.clone();
            let addr = config.aggregator;
            tasks.push(tokio::spawn(async move {
                let result = host
                    .run(
                        &endpoint,
                        client,
                        addr,
                        &server_name,
                        &gate,
                        &stats,
                        stopped,
                    )
                    .await;
                if let Err(error) = result {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{}: {error:#}", host_name(i));
                }
            }));
        }
        Ok(Simulation {
            stats,
            stop,
            tasks,
            endpoint,
        })
    }

    /// Waits until every host has been welcomed and has had `batches` batches acknowledged in
    /// all, or `timeout` passes (an error saying how far it got).
    pub async fn wait_for(
        &self,
        hosts: u64,
        batches: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.stats.connected.load(Ordering::Relaxed);
            let b = self.stats.batches_acked.load(Ordering::Relaxed);
            if c >= hosts && b >= batches {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "after {timeout:?}: {c} of {hosts} hosts connected, {b} of {batches} batches acknowledged, {} errors",
                    self.stats.errors.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes every host's connection and waits for the hosts to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.endpoint.close(0u32.into(), b"simulation over");
        self.endpoint.wait_idle().await;
    }
}

/// The name (and certificate identity) of simulated host `i`.
pub fn host_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// A number in [0, 1) fixed by `i` and `salt` (splitmix64).
fn unit(i: usize, salt: u64) -> f64 {
    let mut z = (i as u64)
        .wrapping_add(salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

struct SimHost {
    index: usize,
    facts: HostFacts,
    template: Arc<Vec<SeriesSamples>>,
    interval: Duration,
}

impl SimHost {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        self,
        endpoint: &quinn::Endpoint,
        client: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        gate: &Semaphore,
        stats: &SimStats,
        mut stopped: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let limits = FrameLimits::default();
        let (conn, _control) = {
            let _slot = gate.acquire().await?;
            let conn = endpoint
                .connect_with(client, addr, server_name)?
                .await
                .context("QUIC handshake")?;
            let (mut send, mut recv) = conn.open_bi().await?;
            let mut state = ClientConn::new(0, 1);
            let hello = state.hello(env!("CARGO_PKG_VERSION"), self.facts.clone(), now_ms(), 0);
            write_frame(&mut send, &codec::encode(&hello)?).await?;
            let welcome =
                tokio::time::timeout(Duration::from_secs(30), read_frame(&mut recv, &limits))
                    .await
                    .context("waiting for the welcome")??;
            state.on_welcome(welcome, now_ms())?;
            stats.connected.fetch_add(1, Ordering::Relaxed);
            // The control stream stays open for the connection's life, as an agent's does.
            (conn, (send, recv))
        };
        let interval_ms = self.interval.as_millis() as i64;
        let start = now_ms();
        let mut seq = 0u64;
        // One batch an interval ago, one now, then one per interval.
        let mut round = 0u64;
        let mut at = start - interval_ms;
        loop {
            seq += 1;
            let batch = self.batch(seq, round, at);
            let samples = batch.metrics.len() as u64;
            let frame = codec::encode(&Message::Batch(batch))?;
            let (mut send, mut recv) = conn.open_bi().await?;
            write_frame(&mut send, &frame).await?;
            let _ = send.finish();
            match read_frame(&mut recv, &limits).await? {
                Message::Ack(ack) => match ack.status {
                    AckStatus::Applied | AckStatus::Duplicate | AckStatus::Partial { .. } => {
                        stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                        stats.samples_sent.fetch_add(samples, Ordering::Relaxed);
                    }
                    AckStatus::Rejected { reason } => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: batch {seq} rejected: {reason}", self.facts.hostname);
                    }
                },
                other => bail!("expected an acknowledgement, got a {}", other.kind()),
            }
            round += 1;
            at = start + (round as i64 - 1) * interval_ms;
            let wait = (at - now_ms()).max(0) as u64;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                _ = stopped.changed() => break,
            }
            if *stopped.borrow() {
                break;
            }
        }
        conn.close(0u32.into(), b"done");
        Ok(())
    }

    /// This host's batch of round `round`, stamped `at`: the template's series with this
    /// host's own figures.
    fn batch(&self, seq: u64, round: u64, at: i64) -> Batch {
        let i = self.index;
        let secs = round as f64 * self.interval.as_secs_f64();
        // This host's CPU use drifts a little from round to round around its own level.
        let busy = (0.03 + 0.9 * unit(i, 1) + 0.05 * (unit(i, 100 + round) - 0.5)).clamp(0.0, 1.0);
        let memory = 0.15 + 0.8 * unit(i, 2);
        let disk = 0.05 + 0.9 * unit(i, 3);
        let rx_per_s = 1e3 + 5e7 * unit(i, 4).powi(3);
        let tx_per_s = 1e3 + 2e7 * unit(i, 5).powi(3);
        let cpus = self.facts.cpu_count as f64;
        let mut batch = Batch::new(Lane::Metrics, at);
        batch.seq = seq;
        batch.metrics = self
            .template
            .iter()
            .map(|s| {
                let base = s.samples.last().map(|x| x.value).unwrap_or(0.0);
                let name = s.series.name.as_str();
                let value = match name {
                    "node_cpu_seconds_total" => {
                        let share = match s.series.label("mode") {
                            Some("idle") => 1.0 - busy,
                            Some("user") => busy * 0.7,
                            Some("system") => busy * 0.3,
                            _ => 0.0,
                        };
                        base + secs * share
                    }
                    "fleetwatch_cpu_usage_ratio" | "fleetwatch_cpu_core_usage_ratio" => busy,
                    "node_memory_MemAvailable_bytes" => {
                        self.gauge("node_memory_MemTotal_bytes") * (1.0 - memory)
                    }
                    "fleetwatch_memory_usage_ratio" => memory,
                    "node_filesystem_avail_bytes" => self.fs_size(s) * (1.0 - disk),
                    "fleetwatch_filesystem_usage_ratio" => disk,
                    "node_network_receive_bytes_total" => base + secs * rx_per_s,
                    "node_network_transmit_bytes_total" => base + secs * tx_per_s,
                    "node_load1" | "node_load5" | "node_load15" => busy * cpus * 1.2,
                    "node_time_seconds" => at as f64 / 1000.0,
                    _ if s.kind == MetricKind::Counter => base + secs,
                    _ => base,
                };
                let mut out = s.clone();
                for sample in &mut out.samples {
                    sample.timestamp_ms = at;
                    sample.value = value;
                }
                out
            })
            .collect();
        batch
    }

    fn gauge(&self, name: &str) -> f64 {
        self.template
            .iter()
            .find(|s| s.series.name == name)
            .and_then(|s| s.samples.last())
            .map(|x| x.value)
            .unwrap_or(0.0)
    }

    /// The size of the filesystem of `avail` (same labels).
    fn fs_size(&self, avail: &SeriesSamples) -> f64 {
        self.template
            .iter()
            .find(|s| {
                s.series.name == "node_filesystem_size_bytes"
                    && s.series.labels == avail.series.labels
            })
            .and_then(|s| s.samples.last())
            .map(|x| x.value)
            .unwrap_or(0.0)
    }
}
