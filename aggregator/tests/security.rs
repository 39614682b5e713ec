//! Who gets in: clients without a certificate, with one from another CA, expired or revoked are
//! refused and counted; a client sending malformed or oversized frames is disconnected while
//! other agents keep shipping.

mod support;

use fleetwatch_common::codec;
use fleetwatch_common::model::HostFacts;
use fleetwatch_common::pki;
use fleetwatch_common::protocol::{Hello, Message, ALPN};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn hello_frame() -> Vec<u8> {
    codec::encode(&Message::Hello(Hello {
        agent_version: "test".into(),
        facts: HostFacts::default(),
        sent_ms: 0,
        backlog_batches: 0,
    }))
    .unwrap()
}

/// Connects with `tls`, sends a hello, and returns whether a welcome came back.
async fn try_session(port: u16, tls: rustls::ClientConfig) -> Result<(), String> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let attempt = async {
        let conn = endpoint
            .connect(([127, 0, 0, 1], port).into(), "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&hello_frame())
            .await
            .map_err(|e| e.to_string())?;
        let m = fleetwatch_agent::transport::read_frame(&mut recv, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        match m {
            Message::Welcome(_) => Ok(()),
            other => Err(format!("unexpected {}", other.kind())),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or(Err("timeout".into()));
    endpoint.close(0u32.into(), b"");
    r
}

fn ring_client() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
}

fn roots(fleet: &Fleet) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::load_certs(&fleet.pki().join("ca.pem")).unwrap() {
        roots.add(c).unwrap();
    }
    roots
}

fn refused(fleet: &Fleet, reason: &str) -> f64 {
    fleet.own_metric(&format!(
        "fleetwatch_ingest_clients_refused_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn only_current_certificates_from_the_fleet_ca_get_in() {
    let fleet = Fleet::new();
    let agg = fleet.start_aggregator();
    let rt = runtime();
    let issued = pki::issue_agent(&fleet.pki(), "ok-1", pki::Validity::days(1)).unwrap();
    let ca = fleet.pki().join("ca.pem");
    let good = || fleetwatch_common::tls::client_config(&ca, &issued.cert, &issued.key).unwrap();
    rt.block_on(try_session(fleet.quic_port, good()))
        .expect("a valid agent is welcomed");

    // No certificate at all.
    let mut none = ring_client()
        .with_root_certificates(roots(&fleet))
        .with_no_client_auth();
    none.alpn_protocols = vec![ALPN.to_vec()];
    assert!(rt.block_on(try_session(fleet.quic_port, none)).is_err());
    fleet.wait_for("no_certificate count", Duration::from_secs(5), || {
        refused(&fleet, "no_certificate") >= 1.0
    });

    // A certificate from another CA.
    let other = tempfile::tempdir().unwrap();
    pki::init(other.path(), "other CA").unwrap();
    let foreign = pki::issue_agent(other.path(), "ok-1", pki::Validity::days(1)).unwrap();
    let cfg = fleetwatch_common::tls::client_config(&ca, &foreign.cert, &foreign.key).unwrap();
    assert!(rt.block_on(try_session(fleet.quic_port, cfg)).is_err());
    fleet.wait_for("unknown_ca count", Duration::from_secs(5), || {
        refused(&fleet, "unknown_ca") >= 1.0
    });

    // An expired certificate.
    let day = Duration::from_secs(86_400);
    let expired = pki::issue_agent(
        &fleet.pki(),
        "old-1",
        pki::Validity {
            not_before: SystemTime::now() - 10 * day,
            not_after: SystemTime::now() - day,
        },
    )
    .unwrap();
    let cfg = fleetwatch_common::tls::client_config(&ca, &expired.cert, &expired.key).unwrap();
    assert!(rt.block_on(try_session(fleet.quic_port, cfg)).is_err());
    fleet.wait_for("expired count", Duration::from_secs(5), || {
        refused(&fleet, "expired") >= 1.0
    });

    // Revoked while the aggregator runs: refused without a restart.
    pki::revoke(&fleet.pki(), "ok-1").unwrap();
    fleet.wait_for(
        "the revocation to take effect",
        Duration::from_secs(15),
        || rt.block_on(try_session(fleet.quic_port, good())).is_err(),
    );
    // counted once the aggregator has finished refusing the handshake
    fleet.wait_for("revoked count", Duration::from_secs(5), || {
        refused(&fleet, "revoked") >= 1.0
    });
    agg.stop();
}

#[test]
fn malformed_and_oversized_frames_disconnect_only_the_sender() {
    let fleet = Fleet::new();
    fleet.agent_config("good-1", 0.2, "");
    let agg = fleet.start_aggregator();
    let agent = fleet.start_agent("good-1");
    let count = || {
        fleet
            .sample_times("node_time_seconds{host=\"good-1\"}", "1h")
            .len()
    };
    fleet.wait_for("good agent data", Duration::from_secs(30), || count() >= 3);

    let rt = runtime();
    let bad = pki::issue_agent(&fleet.pki(), "bad-1", pki::Validity::days(1)).unwrap();
    let ca = fleet.pki().join("ca.pem");
    for (payload, reason) in [
        (b"this is not a frame at all".to_vec(), "malformed_frame"),
        (
            {
                let mut h = b"FW\x01\x00".to_vec();
                h.extend(u32::MAX.to_be_bytes());
                h.extend(u32::MAX.to_be_bytes());
                h
            },
            "frame_too_large",
        ),
    ] {
        let tls = fleetwatch_common::tls::client_config(&ca, &bad.cert, &bad.key).unwrap();
        let closed = rt.block_on(async {
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
            let conn = endpoint
                .connect(([127, 0, 0, 1], fleet.quic_port).into(), "localhost")
                .unwrap()
                .await
                .unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(&payload).await.unwrap();
            let _ = send.finish();
            tokio::time::timeout(Duration::from_secs(10), conn.closed()).await
        });
        let reason_text = format!(
            "{:?}",
            closed.expect("the aggregator closed the connection")
        );
        assert!(reason_text.contains("ApplicationClosed"), "{reason_text}");
        fleet.wait_for(reason, Duration::from_secs(5), || {
            fleet.own_metric(&format!(
                "fleetwatch_ingest_protocol_errors_total{{reason=\"{reason}\"}}"
            )) >= 1.0
        });
    }
    // The good agent kept shipping throughout.
    let before = count();
    fleet.wait_for("more good data", Duration::from_secs(15), || {
        count() > before + 3
    });
    agent.stop();
    agg.stop();
}
