//! QUIC ingest: accepts agents with certificates from the fleet CA, takes each agent's identity
//! from its certificate, validates and deduplicates its batches, writes them durably and only
//! then acknowledges. A malformed frame or a protocol violation closes that agent's connection
//! with a logged reason; other agents are not affected.

use crate::state::AppState;
use fleetwatch_agent::transport::{read_frame, write_frame, FrameReadError};
use fleetwatch_common::codec::{self, CodecError, FrameLimits};
use fleetwatch_common::model::{now_ms, CheckResult};
use fleetwatch_common::pki;
use fleetwatch_common::protocol::{AckStatus, ServerConn, ServerParams};
use fleetwatch_common::validate::validate_batch;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Application close codes sent to agents.
pub mod close_code {
    /// Normal shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// A frame could not be decoded or was too large.
    pub const MALFORMED: u32 = 1;
    /// The agent broke the protocol.
    pub const PROTOCOL: u32 = 2;
    /// The agent's certificate was revoked.
    pub const REVOKED: u32 = 3;
    /// The certificate carries no usable identity.
    pub const IDENTITY: u32 = 4;
}

/// Open agent connections, so that a revocation can close them.
#[derive(Default)]
pub struct Connections {
    open: Mutex<HashMap<usize, (String, CertificateDer<'static>, quinn::Connection)>>,
}

impl Connections {
    /// Closes every connection whose certificate `revoked` says is revoked; returns the hosts.
    pub fn close_revoked(&self, revoked: impl Fn(&CertificateDer<'static>) -> bool) -> Vec<String> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut closed = Vec::new();
        for (host, cert, conn) in open.values() {
            if revoked(cert) {
                conn.close(close_code::REVOKED.into(), b"certificate revoked");
                closed.push(host.clone());
            }
        }
        closed
    }
}

/// Accepts agents on `endpoint` until it is closed.
pub async fn serve(endpoint: quinn::Endpoint, state: Arc<AppState>, connections: Arc<Connections>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            handle_connection(incoming, state, connections).await;
        });
    }
}

fn frame_error_reason(e: &FrameReadError) -> &'static str {
    match e {
        FrameReadError::Stream(_) => "stream",
        FrameReadError::Codec(CodecError::TooLarge { .. }) => "frame_too_large",
        FrameReadError::Codec(_) => "malformed_frame",
    }
}

async fn handle_connection(
    incoming: quinn::Incoming,
    state: Arc<AppState>,
    connections: Arc<Connections>,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            let text = error.to_string();
            // Certificate problems were counted by the verifier with their reason; a client
            // that sent none never reaches it.
            if text.contains("no certificate")
                || text.contains("NoCertificatesPresented")
                || text.contains("CertificateRequired")
            {
                state
                    .metrics
                    .clients_refused
                    .with_label_values(&["no_certificate"])
                    .inc();
            }
            state
                .metrics
                .protocol_errors
                .with_label_values(&["handshake"])
                .inc();
            info!(%remote, %error, "agent handshake failed");
            return;
        }
    };
    let cert = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned());
    let identity = cert.as_ref().map(|c| pki::identity_from_cert_der(c));
    let (host, cert) = match (identity, cert) {
        (Some(Ok(host)), Some(cert)) => (host, cert),
        (identity, _) => {
            warn!(%remote, ?identity, "agent certificate has no usable name; closing");
            state
                .metrics
                .clients_refused
                .with_label_values(&["no_identity"])
                .inc();
            conn.close(
                close_code::IDENTITY.into(),
                b"certificate has no usable name",
            );
            return;
        }
    };
    let id = conn.stable_id();
    connections
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, (host.clone(), cert, conn.clone()));
    state.metrics.connections.inc();
    state.metrics.connected_agents.inc();
    debug!(%remote, %host, "agent connected");
    if let Err((code, reason)) = run_connection(&conn, &host, &state).await {
        warn!(%remote, %host, %reason, "closing agent connection");
        conn.close(code.into(), reason.as_bytes());
    }
    connections
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    state.metrics.connected_agents.dec();
    state.fleet.on_disconnect(&host);
}

type Violation = (u32, String);

async fn run_connection(
    conn: &quinn::Connection,
    host: &str,
    state: &Arc<AppState>,
) -> Result<(), Violation> {
    let limits = FrameLimits {
        max_payload_bytes: state.config.limits.max_frame_bytes,
        max_decoded_bytes: state.config.limits.max_frame_bytes.saturating_mul(8),
    };
    let params = ServerParams {
        max_in_flight: state.config.quic.max_in_flight,
        max_payload_bytes: limits.max_payload_bytes,
    };
    let server = Arc::new(Mutex::new(ServerConn::new(host, params)));

    let (mut send, mut recv) =
        match tokio::time::timeout(Duration::from_secs(10), conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                state
                    .metrics
                    .protocol_errors
                    .with_label_values(&["no_hello"])
                    .inc();
                return Err((close_code::PROTOCOL, "no hello within 10 s".into()));
            }
        };
    let hello = read_frame(&mut recv, &limits).await.map_err(|e| {
        state
            .metrics
            .protocol_errors
            .with_label_values(&[frame_error_reason(&e)])
            .inc();
        (close_code::MALFORMED, format!("reading hello: {e}"))
    })?;
    let now = now_ms();
    let rtt_ms = conn.rtt().as_millis() as i64;
    let welcome = {
        let mut s = server.lock().unwrap_or_else(|p| p.into_inner());
        let welcome = s.on_control(hello, now, rtt_ms).map_err(|e| {
            state
                .metrics
                .protocol_errors
                .with_label_values(&["protocol"])
                .inc();
            (close_code::PROTOCOL, e.to_string())
        })?;
        if let Some(h) = s.hello() {
            state.fleet.on_hello(
                host,
                &h.agent_version,
                h.facts.clone(),
                s.clock_skew_ms(),
                h.backlog_batches,
                now,
            );
        }
        welcome
    };
    let frame = codec::encode(&welcome).map_err(|e| (close_code::PROTOCOL, e.to_string()))?;
    if write_frame(&mut send, &frame).await.is_err() {
        return Ok(());
    }
    // Up right away, not at the next tick.
    let store = state.store.clone();
    let up = state
        .fleet
        .up_series(now)
        .into_iter()
        .filter(|s| s.series.label("host") == Some(host))
        .collect();
    let _ = tokio::task::spawn_blocking(move || store.append_system(up, now)).await;

    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<Violation>(1);
    loop {
        tokio::select! {
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let state = state.clone();
                    let server = server.clone();
                    let host = host.to_string();
                    let fail = fail_tx.clone();
                    tokio::spawn(async move {
                        if let Err(v) = handle_batch(send, recv, &host, &server, &state, &limits).await {
                            let _ = fail.try_send(v);
                        }
                    });
                }
                Err(_) => return Ok(()),
            },
            Some(violation) = fail_rx.recv() => return Err(violation),
        }
    }
}

async fn handle_batch(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    host: &str,
    server: &Mutex<ServerConn>,
    state: &Arc<AppState>,
    limits: &FrameLimits,
) -> Result<(), Violation> {
    let started = Instant::now();
    let message =
        match tokio::time::timeout(Duration::from_secs(60), read_frame(&mut recv, limits)).await {
            Ok(Ok(m)) => m,
            Ok(Err(FrameReadError::Stream(_))) => return Ok(()), // the agent gave up on this stream
            Ok(Err(e)) => {
                state
                    .metrics
                    .protocol_errors
                    .with_label_values(&[frame_error_reason(&e)])
                    .inc();
                return Err((close_code::MALFORMED, e.to_string()));
            }
            Err(_) => {
                state
                    .metrics
                    .protocol_errors
                    .with_label_values(&["stream_timeout"])
                    .inc();
                return Ok(());
            }
        };
    let mut batch = server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .on_batch_stream(message)
        .map_err(|e| {
            state
                .metrics
                .protocol_errors
                .with_label_values(&["protocol"])
                .inc();
            (close_code::PROTOCOL, e.to_string())
        })?;
    let seq = batch.seq;
    let now = now_ms();
    let status = match validate_batch(&mut batch, host, &state.config.limits.validation(), now) {
        Err(breach) => {
            state
                .metrics
                .items_refused
                .with_label_values(&[breach.reason_label()])
                .inc_by(batch.item_count() as u64);
            warn!(%host, seq, %breach, "batch rejected");
            AckStatus::Rejected {
                reason: breach.to_string(),
            }
        }
        Ok(mut report) => {
            let limits = &state.config.limits;
            let (over_host, over_total) = state.store.drop_new_series_over(
                host,
                &mut batch,
                limits.max_series_per_host,
                limits.max_series_total,
            );
            if over_host > 0 {
                report.dropped_items += over_host;
                report
                    .breaches
                    .push(fleetwatch_common::validate::Breach::TooManySeriesForHost(
                        host.to_string(),
                        limits.max_series_per_host,
                        over_host,
                    ));
            }
            if over_total > 0 {
                report.dropped_items += over_total;
                report
                    .breaches
                    .push(fleetwatch_common::validate::Breach::TooManySeriesTotal(
                        limits.max_series_total,
                        over_total,
                    ));
            }
            for b in &report.breaches {
                state
                    .metrics
                    .items_refused
                    .with_label_values(&[b.reason_label()])
                    .inc();
            }
            let samples: u64 = batch.metrics.iter().map(|s| s.samples.len() as u64).sum();
            // Check results go to the fleet once the batch is durable (a duplicate never does).
            let checks = batch.checks.clone();
            let store = state.store.clone();
            let owner = host.to_string();
            match tokio::task::spawn_blocking(move || store.apply(&owner, batch, now)).await {
                Ok(Ok(crate::store::ApplyOutcome::Applied)) => {
                    state.metrics.samples_ingested.inc_by(samples);
                    record_checks(state, host, &checks);
                    match report.breaches.first() {
                        Some(first) => AckStatus::Partial {
                            dropped: report.dropped_items,
                            reason: first.to_string(),
                        },
                        None => AckStatus::Applied,
                    }
                }
                Ok(Ok(crate::store::ApplyOutcome::Duplicate)) => AckStatus::Duplicate,
                result => {
                    // Not durable: no acknowledgement; the agent sends it again.
                    let error = match result {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    };
                    state.metrics.store_errors.inc();
                    warn!(%error, %host, seq, "store failed; batch not acknowledged");
                    let _ = send.reset(1u32.into());
                    server
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .forget_batch();
                    return Ok(());
                }
            }
        }
    };
    let result = match &status {
        AckStatus::Applied => "applied",
        AckStatus::Duplicate => "duplicate",
        AckStatus::Partial { .. } => "partial",
        AckStatus::Rejected { .. } => "rejected",
    };
    state.metrics.batches.with_label_values(&[result]).inc();
    state.fleet.on_data(host, now);
    let ack = server
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish_batch(seq, status);
    let frame = codec::encode(&ack).map_err(|e| (close_code::PROTOCOL, e.to_string()))?;
    let _ = write_frame(&mut send, &frame).await;
    let _ = send.finish();
    state
        .metrics
        .apply_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(())
}

/// Hands an applied batch's check results to the fleet and counts them by status.
fn record_checks(state: &AppState, host: &str, checks: &[CheckResult]) {
    if checks.is_empty() {
        return;
    }
    for c in checks {
        let status = crate::fleet::checks::Health::from(c.status);
        state
            .metrics
            .check_results
            .with_label_values(&[status.as_str()])
            .inc();
    }
    state.fleet.on_checks(host, checks);
}
