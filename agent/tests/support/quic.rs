//! A test aggregator's building blocks, shared by the agent's tests that need one: a QUIC
//! endpoint with mutual TLS against the test's fleet CA, the hello/welcome of the real protocol
//! (`ServerConn`), and the acknowledgement of one batch. Each test decides when to acknowledge
//! and what to record.

use fleetwatch_agent::transport::{read_frame, write_frame};
use fleetwatch_common::codec::{self, FrameLimits};
use fleetwatch_common::pki::{self, Validity};
use fleetwatch_common::protocol::{AckStatus, ServerConn, ServerParams};
use fleetwatch_common::tls::{self, RefusalReason};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A QUIC server endpoint on a free loopback port, with a server certificate issued from the
/// fleet CA in `pki_dir`, accepting agents with certificates from that CA.
pub fn endpoint(pki_dir: &Path) -> quinn::Endpoint {
    let server = pki::issue_server(pki_dir, "localhost", Validity::days(1)).unwrap();
    let refusals: Arc<dyn Fn(RefusalReason) + Send + Sync> = Arc::new(|_| {});
    let (tls, _verifier) = tls::server_config(
        &pki_dir.join("ca.pem"),
        &server.cert,
        &server.key,
        None,
        refusals,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(64u32.into());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Answers the agent's hello on the connection's first stream; the protocol state for the
/// batch streams that follow, or `None` when the agent went away first.
pub async fn handshake(
    conn: &quinn::Connection,
    max_in_flight: u32,
) -> Option<Arc<Mutex<ServerConn>>> {
    let limits = FrameLimits::default();
    let params = ServerParams {
        max_in_flight,
        max_payload_bytes: limits.max_payload_bytes,
    };
    let server = Arc::new(Mutex::new(ServerConn::new("test-host", params)));
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let hello = read_frame(&mut recv, &limits).await.ok()?;
    let welcome = server
        .lock()
        .unwrap()
        .on_control(hello, fleetwatch_common::model::now_ms(), 0)
        .unwrap();
    write_frame(&mut send, &codec::encode(&welcome).unwrap())
        .await
        .ok()?;
    Some(server)
}

/// Acknowledges batch `seq` as applied on its stream, and keeps the stream until the agent
/// has read the acknowledgement.
pub async fn acknowledge(server: &Mutex<ServerConn>, send: &mut quinn::SendStream, seq: u64) {
    let ack = server.lock().unwrap().finish_batch(seq, AckStatus::Applied);
    let _ = write_frame(send, &codec::encode(&ack).unwrap()).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}
