//! Remote write out: forwards every sample the store makes durable to Prometheus remote-write
//! receivers (Prometheus, VictoriaMetrics, Mimir, Thanos receive...), one task per endpoint.
//!
//! The durable queue is the store's write-ahead log itself: each endpoint keeps its position in
//! the log (`DATA/remote_write/NAME.position`), reads whole batches from there, sends them as a
//! snappy-compressed `WriteRequest`, and moves its position only after a 2xx. A 5xx, a 429 or
//! no answer is retried with exponential backoff, forever, without skipping; any other 4xx means
//! the receiver refuses the data for good, so it is counted as rejected and skipped. Delivery
//! is at least once: a crash between a send and the position write resends one request, which
//! receivers accept (identical samples are not errors).
//!
//! A new endpoint starts at the end of the log: it gets what arrives from then on.

pub mod proto;

use crate::config::RemoteWriteConfig;
use crate::state::AppState;
use crate::store::Lsn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often an idle endpoint looks for new log records.
const POLL: Duration = Duration::from_millis(200);

fn position_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join("remote_write")
        .join(format!("{name}.position"))
}

fn load_position(path: &Path) -> Option<Lsn> {
    let text = std::fs::read_to_string(path).ok()?;
    let (segment, offset) = text.trim().split_once(':')?;
    Some(Lsn {
        segment: segment.parse().ok()?,
        offset: offset.parse().ok()?,
    })
}

fn save_position(path: &Path, lsn: Lsn) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("position.tmp");
    std::fs::write(&tmp, format!("{}:{}\n", lsn.segment, lsn.offset))?;
    std::fs::rename(&tmp, path)
}

fn client(cfg: &RemoteWriteConfig) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(cfg.timeout_seconds))
        .user_agent(concat!("fleetwatch-aggregator/", env!("CARGO_PKG_VERSION")));
    if !cfg.tls_ca_file.as_os_str().is_empty() {
        let pem = std::fs::read(&cfg.tls_ca_file).map_err(|e| {
            anyhow::anyhow!(
                "remote_write {}: {}: {e}",
                cfg.name,
                cfg.tls_ca_file.display()
            )
        })?;
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(builder.build()?)
}

/// What one send attempt came to.
enum Outcome {
    Sent,
    /// The receiver refuses this data for good (4xx other than 429).
    Rejected(u16, String),
    /// Worth retrying (5xx, 429, no answer).
    Retry(String),
}

async fn send(
    client: &reqwest::Client,
    cfg: &RemoteWriteConfig,
    token: Option<&str>,
    body: Vec<u8>,
    state: &AppState,
) -> Outcome {
    let mut req = client
        .post(&cfg.url)
        .header("Content-Encoding", "snappy")
        .header("Content-Type", "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .body(body);
    for (k, v) in &cfg.headers {
        req = req.header(k, v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let requests = &state.metrics.remote_write_requests;
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            requests
                .with_label_values(&[cfg.name.as_str(), &code.to_string()])
                .inc();
            if resp.status().is_success() {
                Outcome::Sent
            } else {
                let text = resp.text().await.unwrap_or_default();
                let text = text.trim().chars().take(512).collect::<String>();
                if code == 429 || code >= 500 {
                    Outcome::Retry(format!("HTTP {code}: {text}"))
                } else {
                    Outcome::Rejected(code, text)
                }
            }
        }
        Err(e) => {
            requests
                .with_label_values(&[cfg.name.as_str(), "error"])
                .inc();
            Outcome::Retry(e.to_string())
        }
    }
}

/// Runs one endpoint until `shutdown` turns true.
pub async fn run(
    state: Arc<AppState>,
    cfg: RemoteWriteConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match client(&cfg) {
        Ok(c) => c,
        Err(error) => {
            warn!(remote = %cfg.name, %error, "remote write disabled: cannot build its client");
            return;
        }
    };
    let token = if cfg.bearer_token_file.as_os_str().is_empty() {
        None
    } else {
        match std::fs::read_to_string(&cfg.bearer_token_file) {
            Ok(t) => Some(t.trim().to_string()),
            Err(error) => {
                warn!(remote = %cfg.name, file = %cfg.bearer_token_file.display(), %error, "remote write disabled: cannot read its bearer token");
                return;
            }
        }
    };
    let path = position_path(&state.config.data_dir, &cfg.name);
    let mut position = match load_position(&path) {
        Some(p) => p,
        None => {
            let end = state.store.log_end();
            if let Err(error) = save_position(&path, end) {
                warn!(remote = %cfg.name, %error, "cannot write the remote-write position");
            }
            end
        }
    };
    info!(remote = %cfg.name, url = %cfg.url, ?position, "remote write started");
    let m = &state.metrics;
    let name = cfg.name.as_str();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let store = state.store.clone();
        let max = cfg.max_samples_per_send;
        let read = tokio::task::spawn_blocking(move || store.read_log(position, max)).await;
        let (series, next, skipped) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(error)) => {
                warn!(remote = name, %error, "remote write cannot read the log; retrying");
                if sleep_or_stop(&mut shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if skipped {
            m.remote_write_skipped.with_label_values(&[name]).inc();
            warn!(
                remote = name,
                "retention removed log records this endpoint had not received"
            );
        }
        let samples: usize = series.iter().map(|s| s.samples.len()).sum();
        if samples > 0 {
            let body = proto::encode(&proto::write_request(&series));
            let newest = series
                .iter()
                .flat_map(|s| s.samples.iter().map(|x| x.timestamp_ms))
                .max()
                .unwrap_or(0);
            let mut backoff = Duration::from_millis(cfg.min_backoff_ms);
            loop {
                match send(&client, &cfg, token.as_deref(), body.clone(), &state).await {
                    Outcome::Sent => {
                        m.remote_write_samples
                            .with_label_values(&[name, "sent"])
                            .inc_by(samples as u64);
                        let gauge = m.remote_write_last_sent.with_label_values(&[name]);
                        gauge.set(gauge.get().max(newest / 1000));
                        break;
                    }
                    Outcome::Rejected(code, text) => {
                        m.remote_write_samples
                            .with_label_values(&[name, "rejected"])
                            .inc_by(samples as u64);
                        warn!(remote = name, code, reason = %text, samples, "receiver rejected samples; skipping them");
                        break;
                    }
                    Outcome::Retry(reason) => {
                        m.remote_write_retries.with_label_values(&[name]).inc();
                        warn!(remote = name, %reason, retry_in = ?backoff, "remote write failed; retrying");
                        if sleep_or_stop(&mut shutdown, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_millis(cfg.max_backoff_ms));
                    }
                }
            }
        }
        if next != position {
            position = next;
            if let Err(error) = save_position(&path, position) {
                warn!(remote = name, %error, "cannot write the remote-write position");
            }
        }
        if samples == 0 && sleep_or_stop(&mut shutdown, POLL).await {
            return;
        }
    }
}

/// Sleeps; true when shutdown was asked for meanwhile.
async fn sleep_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = position_path(dir.path(), "vm");
        assert_eq!(load_position(&p), None);
        let lsn = Lsn {
            segment: 3,
            offset: 4096,
        };
        save_position(&p, lsn).unwrap();
        assert_eq!(load_position(&p), Some(lsn));
    }
}
