//! The TCP check: connect to `address` (name or IP, with port); unhealthy when the connection
//! fails, degraded or unhealthy when connecting takes longer than the latency thresholds.

use super::series::seconds_text;
use super::threshold::{Direction, Threshold};
use super::{error_chain, Probe};
use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;
use std::time::Instant;

/// `[checks.tcp]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    /// `host:port` to connect to (`[::1]:5432` for IPv6).
    pub address: String,
    /// Seconds to connect: above `warn` degraded, above `critical` unhealthy.
    #[serde(default)]
    pub latency_seconds: Threshold,
}

impl TcpCheck {
    pub(super) fn validate(&self) -> Result<(), String> {
        let port = self
            .address
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty())
            .and_then(|(_, p)| p.parse::<u16>().ok());
        if port.is_none() {
            return Err(format!("tcp.address {:?} is not host:port", self.address));
        }
        self.latency_seconds
            .validate("tcp.latency_seconds", Direction::Above)
    }

    pub(super) async fn probe(&self) -> Probe {
        let started = Instant::now();
        match tokio::net::TcpStream::connect(&self.address).await {
            Ok(stream) => {
                let took = started.elapsed().as_secs_f64();
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| self.address.clone());
                drop(stream);
                let status = self.latency_seconds.judge(took, Direction::Above);
                let mut findings = Vec::new();
                if status != CheckStatus::Healthy {
                    findings.push((status, format!("connect took {} s", seconds_text(took))));
                }
                Probe::from_findings(
                    findings,
                    format!("connected to {peer} in {} s", seconds_text(took)),
                    Vec::new(),
                )
            }
            Err(error) => Probe::unhealthy(format!(
                "connecting to {}: {}",
                self.address,
                error_chain(&error)
            )),
        }
    }
}
