//! The in-process aggregator the whole-system benches start: loopback listeners on free ports,
//! mutual TLS against the bench's fleet CA, one admin token file.

use fleetwatch_aggregator::config::AggregatorConfig;
use fleetwatch_common::pki::IssuedPaths;
use std::path::Path;

/// An aggregator configuration storing under `data_dir`, with the fleet CA (and its revocation
/// list) in `pki_dir`, the server certificate `server`, and the admin token in `token_file`;
/// everything else at its defaults for the bench to change.
pub fn aggregator_config(
    data_dir: &Path,
    pki_dir: &Path,
    server: IssuedPaths,
    token_file: &Path,
) -> AggregatorConfig {
    let mut cfg = AggregatorConfig {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    cfg.quic.listen = "127.0.0.1:0".into();
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.quic.ca = pki_dir.join("ca.pem");
    cfg.quic.cert = server.cert;
    cfg.quic.key = server.key;
    cfg.quic.crl = pki_dir.join("crl.pem");
    cfg.http.admin_token_file = token_file.to_path_buf();
    cfg
}
