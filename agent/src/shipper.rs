//! The shipper: sends buffered batches to an aggregator over QUIC with mutual TLS, several in
//! flight, deleting a batch only once the aggregator acknowledged it. Live batches go before the
//! backlog after an outage (see [`ClientConn`]); connection failures back off exponentially with
//! jitter and fail over across the configured aggregator addresses.

use crate::buffer::Buffer;
use crate::config::{secs, AggregatorLink};
use crate::metrics::AgentMetrics;
use crate::transport::{read_frame, write_frame, FrameReadError};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::model::{now_ms, HostFacts};
use fleetwatch_common::protocol::{AckOutcome, ClientConn, Message, ProtocolViolation};
use fleetwatch_common::tls;
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

/// Why a session with an aggregator ended.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The TLS configuration could not be built (certificate missing, say).
    #[error("tls: {0}")]
    Tls(String),
    /// Address resolution failed.
    #[error("resolving {0}: {1}")]
    Resolve(String, String),
    /// Could not start connecting.
    #[error("connect to {0}: {1}")]
    Connect(String, quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a frame failed.
    #[error("read: {0}")]
    Read(#[from] FrameReadError),
    /// The aggregator broke the protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolViolation),
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The buffer failed.
    #[error("buffer: {0}")]
    Buffer(String),
}

impl ShipError {
    /// Short reason for the `connect_failures` counter.
    fn reason(&self) -> &'static str {
        match self {
            ShipError::Tls(_) => "tls_config",
            ShipError::Resolve(..) => "resolve",
            ShipError::Connect(..) => "connect",
            ShipError::Connection(_) => "connection",
            ShipError::Write(_) | ShipError::Read(_) => "stream",
            ShipError::Protocol(_) => "protocol",
            ShipError::Timeout(_) => "timeout",
            ShipError::Buffer(_) => "buffer",
        }
    }
}

/// Exponential backoff with jitter: each failure doubles the ceiling, the delay is drawn
/// between half the ceiling and the ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=ceiling - half)
    }

    /// Back to the minimum after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Everything the shipper needs.
pub struct Shipper {
    /// Where to ship and how.
    pub link: AggregatorLink,
    /// The buffer to drain.
    pub buffer: Arc<Buffer>,
    /// Counters.
    pub metrics: AgentMetrics,
    /// Host facts for the hello.
    pub facts: HostFacts,
    /// Notified when a batch is buffered.
    pub wake: Arc<Notify>,
}

/// How a session ended without an error.
enum SessionEnd {
    /// The agent is stopping.
    Shutdown,
    /// The link or the credentials changed: connect again now.
    Reconfigured,
}

/// A hash of the CA, certificate and key files' contents, to notice rotated files.
fn credentials_fingerprint(link: &AggregatorLink) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [&link.ca, &link.cert, &link.key] {
        std::fs::read(path).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

fn server_name(link: &AggregatorLink, address: &str) -> String {
    if !link.server_name.is_empty() {
        return link.server_name.clone();
    }
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

impl Shipper {
    /// Ships until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let (_keep, links) = watch::channel(self.link.clone());
        self.run_reloadable(shutdown, links).await
    }

    /// Ships until `shutdown` turns true, following the link configuration in `links`: a new
    /// address list, or certificate, key or CA files whose contents changed, end the current
    /// session and the next connection uses them (certificate rotation without a restart).
    pub async fn run_reloadable(
        mut self,
        mut shutdown: watch::Receiver<bool>,
        mut links: watch::Receiver<AggregatorLink>,
    ) {
        let endpoint = match quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))) {
            Ok(e) => e,
            Err(error) => {
                warn!(%error, "cannot open a UDP socket for QUIC; shipping disabled");
                return;
            }
        };
        self.link = links.borrow_and_update().clone();
        let mut backoff = self.backoff();
        let mut index = 0usize;
        // The session watches for the stop once connected; this ends it during the handshake
        // too (up to 15 s against an address that does not answer).
        let mut stop = shutdown.clone();
        while !*shutdown.borrow() {
            let address = self.link.addresses[index % self.link.addresses.len()].clone();
            let ended = tokio::select! {
                ended = self.session(&endpoint, &address, &mut backoff, &mut shutdown, &mut links) => ended,
                _ = stop.wait_for(|stopping| *stopping) => Ok(SessionEnd::Shutdown),
            };
            match ended {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::Reconfigured) => {
                    self.metrics.connected.set(0);
                    self.metrics.in_flight.set(0);
                    info!("reconnecting with the new aggregator link or credentials");
                    backoff = self.backoff();
                    index = 0;
                }
                Err(error) => {
                    self.metrics.connected.set(0);
                    self.metrics.in_flight.set(0);
                    self.metrics
                        .connect_failures
                        .with_label_values(&[error.reason()])
                        .inc();
                    let delay = backoff.next_delay();
                    warn!(%error, aggregator = %address, retry_in = ?delay, "aggregator session ended");
                    index += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => {}
                        changed = links.changed(), if links.has_changed().is_ok() => {
                            if changed.is_ok() {
                                // try the new configuration at once
                                self.link = links.borrow_and_update().clone();
                                backoff = self.backoff();
                                index = 0;
                            }
                        }
                    }
                }
            }
        }
        // Not connected any more: nothing may wait for this shipper (the collector paces log
        // batches while connected).
        self.metrics.connected.set(0);
        self.metrics.in_flight.set(0);
        endpoint.close(0u32.into(), b"agent stopping");
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            secs(self.link.backoff_min_seconds),
            secs(self.link.backoff_max_seconds),
        )
    }

    async fn session(
        &mut self,
        endpoint: &quinn::Endpoint,
        address: &str,
        backoff: &mut Backoff,
        shutdown: &mut watch::Receiver<bool>,
        links: &mut watch::Receiver<AggregatorLink>,
    ) -> Result<SessionEnd, ShipError> {
        let credentials = credentials_fingerprint(&self.link);
        let tls = tls::client_config(&self.link.ca, &self.link.cert, &self.link.key)
            .map_err(|e| ShipError::Tls(e.to_string()))?;
        if let Some(expiry) = fleetwatch_common::pki::load_certs(&self.link.cert)
            .ok()
            .and_then(|certs| fleetwatch_common::pki::cert_not_after(certs.first()?).ok())
        {
            let left = match expiry.duration_since(std::time::SystemTime::now()) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            self.metrics.cert_expiry_seconds.set(left);
        }
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ShipError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))));
        client_config.transport_config(Arc::new(transport));
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|e| ShipError::Resolve(address.into(), e.to_string()))?
            .next()
            .ok_or_else(|| ShipError::Resolve(address.into(), "no addresses".into()))?;
        let name = server_name(&self.link, address);
        let connecting = endpoint
            .connect_with(client_config, addr, &name)
            .map_err(|e| ShipError::Connect(address.into(), e))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| ShipError::Timeout("the QUIC handshake"))??;

        let limits = FrameLimits::default();
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut client = ClientConn::new(self.buffer.newest_seq(), self.link.max_in_flight);
        let hello = client.hello(
            env!("CARGO_PKG_VERSION"),
            self.facts.clone(),
            now_ms(),
            self.buffer.len() as u64,
        );
        write_frame(&mut send, &encode(&hello)?).await?;
        let welcome = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv, &limits))
            .await
            .map_err(|_| ShipError::Timeout("the aggregator's welcome"))??;
        let session = client.on_welcome(welcome, now_ms())?.clone();
        self.metrics.connections.inc();
        self.metrics.connected.set(1);
        self.metrics
            .clock_skew_seconds
            .set(session.clock_skew_ms as f64 / 1000.0);
        self.metrics.rtt_seconds.set(session.rtt_ms as f64 / 1000.0);
        info!(
            aggregator = %address,
            identity = %session.welcome.host,
            backlog = self.buffer.len(),
            clock_skew_ms = session.clock_skew_ms,
            "connected"
        );
        backoff.reset();

        let ack_timeout = secs(self.link.ack_timeout_seconds);
        let (done_tx, mut done_rx) =
            mpsc::channel::<(u64, Result<Message, ShipError>)>(client.window() * 2 + 1);
        // Acknowledged batches the buffer could not remove (closed after a disk error): removed
        // once it is back. The aggregator drops a batch it has applied, should one go again.
        let mut unremoved: Vec<u64> = Vec::new();
        loop {
            if !unremoved.is_empty() && self.buffer.is_open() {
                unremoved.retain(|&seq| self.buffer.remove(seq).is_err());
            }
            while let Some(seq) = client.next_to_send(&*self.buffer) {
                let entry = match self.buffer.get(seq) {
                    Ok(Some(entry)) => entry,
                    Ok(None) => {
                        // Dropped (full or expired) since it was listed.
                        client.forget(seq);
                        continue;
                    }
                    Err(error) => {
                        // The buffer is closed after a disk error: keep the connection, send
                        // this batch again once it is back.
                        debug!(%error, seq, "cannot read a buffered batch; retrying");
                        client.on_failed(seq);
                        break;
                    }
                };
                let conn = conn.clone();
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let result =
                        tokio::time::timeout(ack_timeout, send_batch(&conn, &entry.frame, &limits))
                            .await
                            .unwrap_or(Err(ShipError::Timeout("an acknowledgement")));
                    let _ = done.send((seq, result)).await;
                });
            }
            self.metrics.in_flight.set(client.in_flight() as i64);
            tokio::select! {
                Some((seq, result)) = done_rx.recv() => match result {
                    Ok(message) => {
                        if let Some(seq) = self.on_ack(client.on_ack(message)?) {
                            unremoved.push(seq);
                        }
                    }
                    Err(error) => {
                        client.on_failed(seq);
                        self.metrics.send_retries.inc();
                        debug!(%error, seq, "batch send failed; will retry");
                        if let Some(reason) = conn.close_reason() {
                            return Err(ShipError::Connection(reason));
                        }
                    }
                },
                _ = self.wake.notified() => {}
                reason = conn.closed() => return Err(ShipError::Connection(reason)),
                _ = shutdown.changed() => {
                    conn.close(0u32.into(), b"agent stopping");
                    return Ok(SessionEnd::Shutdown);
                }
                changed = links.changed(), if links.has_changed().is_ok() => {
                    if changed.is_err() {
                        continue;
                    }
                    let next = links.borrow_and_update().clone();
                    if next != self.link || credentials_fingerprint(&next) != credentials {
                        conn.close(0u32.into(), b"agent reconfigured");
                        self.link = next;
                        return Ok(SessionEnd::Reconfigured);
                    }
                }
                // Batches may appear without a wake (for example after a failed send).
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Counts an acknowledgement and removes its batch; the batch's number when the buffer
    /// could not remove it now.
    fn on_ack(&self, outcome: AckOutcome) -> Option<u64> {
        let (seq, result) = match outcome {
            AckOutcome::Delivered { seq, duplicate } => {
                (seq, if duplicate { "duplicate" } else { "applied" })
            }
            AckOutcome::Partial {
                seq,
                dropped,
                reason,
            } => {
                self.metrics.items_refused.inc_by(dropped);
                warn!(seq, dropped, %reason, "aggregator refused part of a batch");
                (seq, "partial")
            }
            AckOutcome::Rejected { seq, reason } => {
                warn!(seq, %reason, "aggregator rejected a batch");
                (seq, "rejected")
            }
        };
        self.metrics
            .batches_acked
            .with_label_values(&[result])
            .inc();
        match self.buffer.remove(seq) {
            Ok(_) => None,
            Err(error) => {
                debug!(%error, seq, "cannot remove an acknowledged batch now; retrying");
                Some(seq)
            }
        }
    }
}

fn encode(message: &Message) -> Result<Vec<u8>, ShipError> {
    codec::encode(message).map_err(|e| ShipError::Buffer(e.to_string()))
}

async fn send_batch(
    conn: &quinn::Connection,
    frame: &[u8],
    limits: &FrameLimits,
) -> Result<Message, ShipError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, frame).await?;
    let _ = send.finish();
    Ok(read_frame(&mut recv, limits).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(2));
        }
        let late = b.next_delay();
        assert!(late >= Duration::from_secs(1), "{late:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn server_name_defaults_to_address_host() {
        let link = AggregatorLink::default();
        assert_eq!(server_name(&link, "agg.example:4740"), "agg.example");
        assert_eq!(server_name(&link, "[::1]:4740"), "::1");
        let named = AggregatorLink {
            server_name: "x".into(),
            ..link
        };
        assert_eq!(server_name(&named, "1.2.3.4:1"), "x");
    }
}
