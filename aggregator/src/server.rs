//! Starting a whole aggregator: store replay, fleet state, the QUIC listener, the HTTP API and
//! the background tasks (the `up` series, retention, revocation list reloads, fleet flushes,
//! the log store's retention and log-derived series).

use crate::config::AggregatorConfig;
use crate::fleet::Fleet;
use crate::ingest::{self, Connections};
use crate::metrics::Metrics;
use crate::state::{AppState, Tokens};
use crate::store::Storage;
use anyhow::Context;
use fleetwatch_common::model::now_ms;
use fleetwatch_common::tls::{self, RefusalReason};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A running aggregator.
pub struct RunningAggregator {
    /// Shared state.
    pub state: Arc<AppState>,
    /// Where agents connect.
    pub quic_addr: SocketAddr,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningAggregator {
    /// Stops listening, closes agent connections and flushes the fleet state.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        self.endpoint
            .close(ingest::close_code::SHUTDOWN.into(), b"aggregator stopping");
        for t in self.tasks {
            t.abort();
        }
        self.state.fleet.flush();
        // a flush or compaction already running on a blocking thread finishes before we return
        let store = self.state.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.wait_for_maintenance()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Reads a token file (first line, trimmed).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(
        token.len() >= 16,
        "token in {} is shorter than 16 characters",
        path.display()
    );
    Ok(token)
}

/// Starts every part of the aggregator.
pub async fn start(config: AggregatorConfig) -> anyhow::Result<RunningAggregator> {
    let tokens = Tokens {
        admin: Some(read_token(&config.http.admin_token_file)?),
        viewer: if config.http.viewer_token_file.as_os_str().is_empty() {
            None
        } else {
            Some(read_token(&config.http.viewer_token_file)?)
        },
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let metrics = Metrics::new();

    let store_dir = config.data_dir.join("store");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("creating {}", store_dir.display()))?;
    let store_config = config.store.store_config();
    let dir = store_dir.clone();
    let logs_dir = config.data_dir.join("logs");
    let logs = Arc::new(
        crate::logstore::LogStore::open(&logs_dir, config.logs.clone(), metrics.clone())
            .with_context(|| format!("opening the log store in {}", logs_dir.display()))?,
    );
    let sink: Arc<dyn crate::store::LogSink> = logs.clone();
    let (store, replayed) = tokio::task::spawn_blocking(move || {
        Storage::open_with_logs(&dir, store_config, Some(sink))
    })
    .await
    .context("store task")?
    .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    info!(records = replayed, "store open");
    let fleet = Fleet::open(
        &config.data_dir.join("fleet"),
        config.fleet.stale_after_seconds as i64 * 1000,
        config.fleet.down_after_seconds as i64 * 1000,
    )
    .with_context(|| {
        format!(
            "opening fleet state in {}",
            config.data_dir.join("fleet").display()
        )
    })?;

    let refusals_metric = metrics.clients_refused.clone();
    let refusals: Arc<dyn Fn(RefusalReason) + Send + Sync> =
        Arc::new(move |reason: RefusalReason| {
            refusals_metric.with_label_values(&[reason.as_str()]).inc();
        });
    let crl = (!config.quic.crl.as_os_str().is_empty()).then_some(config.quic.crl.as_path());
    let (tls_config, verifier) = tls::server_config(
        &config.quic.ca,
        &config.quic.cert,
        &config.quic.key,
        crl,
        refusals,
    )
    .context("building the QUIC TLS configuration")?;
    let quic_tls = quinn::crypto::rustls::QuicServerConfig::try_from(tls_config)
        .context("TLS config unusable for QUIC")?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_tls));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams((config.quic.max_in_flight * 2 + 1).into());
    transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
        30_000,
    ))));
    server_config.transport_config(Arc::new(transport));
    let quic_listen: SocketAddr = config
        .quic
        .listen
        .parse()
        .with_context(|| format!("quic.listen {:?}", config.quic.listen))?;
    let endpoint = quinn::Endpoint::server(server_config, quic_listen)
        .with_context(|| format!("listening for agents on {quic_listen}"))?;
    let quic_addr = endpoint.local_addr().context("QUIC local address")?;

    let http_listen = config.http.listen.clone();
    let listener = tokio::net::TcpListener::bind(&http_listen)
        .await
        .with_context(|| format!("listening for HTTP on {http_listen}"))?;
    let http_addr = listener.local_addr().context("HTTP local address")?;

    let rules = crate::rules::RuleManager::open(
        config.rules.files.clone(),
        (config.rules.evaluation_interval_seconds * 1000.0) as i64,
        &config.data_dir,
        metrics.clone(),
    )
    .map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("invalid rule files:\n{}", lines.join("\n"))
    })?;
    let notifier = Arc::new(
        crate::notify::Notifier::new(config.alerting.clone(), &config.data_dir, metrics.clone())
            .map_err(|e| anyhow::anyhow!("alerting: {e}"))?,
    );
    let state = Arc::new(AppState::new(
        Arc::new(store),
        Arc::new(fleet),
        metrics,
        config.clone(),
        tokens,
        Arc::new(rules),
        notifier.clone(),
        logs,
    ));
    let connections = Arc::new(Connections::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(ingest::serve(
        endpoint.clone(),
        state.clone(),
        connections.clone(),
    )));
    let app = crate::http::app(state.clone());
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.changed().await;
        });
        if let Err(error) = serve.await {
            warn!(%error, "HTTP server stopped");
        }
    }));
    tasks.push(tokio::spawn(background(state.clone())));
    tasks.push(tokio::spawn(store_maintenance(state.clone())));
    tasks.extend(notifier.start());
    tasks.push(tokio::spawn(rule_evaluation(state.clone())));
    tasks.push(tokio::spawn(live_hosts(state.clone())));
    tasks.push(tokio::spawn(log_maintenance(state.clone())));
    for rw in &config.remote_write {
        tasks.push(tokio::spawn(crate::remote_write::run(
            state.clone(),
            rw.clone(),
            shutdown_rx.clone(),
        )));
    }
    let crl_path = config.quic.crl.clone();
    let st = state.clone();
    tasks.push(tokio::spawn(async move {
        if crl_path.as_os_str().is_empty() {
            return;
        }
        let mut last = modified(&crl_path);
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = modified(&crl_path);
            if now == last {
                continue;
            }
            last = now;
            match verifier.reload() {
                Ok(()) => {
                    st.metrics.crl_reloads.with_label_values(&["ok"]).inc();
                    let closed = connections.close_revoked(|c| verifier.is_revoked(c));
                    info!(closed = ?closed, "revocation list reloaded");
                }
                Err(error) => {
                    st.metrics.crl_reloads.with_label_values(&["error"]).inc();
                    warn!(%error, "revocation list not reloaded; keeping the previous one");
                }
            }
        }
    }));
    state.set_ready();
    info!(%quic_addr, %http_addr, "aggregator ready");
    Ok(RunningAggregator {
        state,
        quic_addr,
        http_addr,
        endpoint,
        shutdown,
        tasks,
    })
}

fn modified(path: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Every 5 s: the `up` series, the fleet state flush and the store gauges.
async fn background(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let now = now_ms();
        let store = state.store.clone();
        let up = state.fleet.up_series(now);
        for status in ["up", "stale", "down"] {
            state.metrics.hosts.with_label_values(&[status]).set(0);
        }
        for h in state.fleet.list(now) {
            state
                .metrics
                .hosts
                .with_label_values(&[h.status.as_str()])
                .inc();
        }
        let fleet = state.fleet.clone();
        let result = tokio::task::spawn_blocking(move || {
            fleet.flush();
            if !up.is_empty() {
                store.append_system(up, now)?;
            }
            Ok::<_, crate::store::StoreError>(())
        })
        .await;
        if let Ok(Err(error)) = result {
            state.metrics.store_errors.inc();
            warn!(%error, "background store work failed");
        }
        let s = state.store.stats();
        state.metrics.store_series.set(s.series as i64);
        state.metrics.store_samples.set(s.samples as i64);
        state
            .metrics
            .store_replaced_samples
            .set(s.replaced_samples as i64);
        state.metrics.wal_bytes.set(s.wal_bytes as i64);
        state.metrics.store_blocks.set(s.blocks as i64);
        state.metrics.store_block_bytes.set(s.block_bytes as i64);
        state
            .metrics
            .store_size_evictions
            .set(s.size_evictions as i64);
    }
}

/// Flushes, compaction and retention of the store, on their own task so that a long flush
/// never delays the `up` series or the fleet state.
async fn store_maintenance(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let store = state.store.clone();
        let result = tokio::task::spawn_blocking(move || store.maintain(now_ms())).await;
        if let Ok(Err(error)) = result {
            state.metrics.store_errors.inc();
            warn!(%error, "store maintenance failed");
        }
    }
}

/// Every 10 s: the log-derived `fleetwatch_log_records_total` series into the store, log
/// retention, and the log store's gauges.
async fn log_maintenance(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let st = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            let series = st.logs.records_series(now);
            let appended = if series.is_empty() {
                Ok(())
            } else {
                st.store.append_system(series, now)
            };
            (appended, st.logs.retention(now.saturating_mul(1_000_000)))
        })
        .await;
        if let Ok((appended, retention)) = result {
            if let Err(error) = appended {
                state.metrics.store_errors.inc();
                warn!(%error, "log-derived series not stored");
            }
            if let Err(error) = retention {
                state.metrics.logstore_write_errors.inc();
                warn!(%error, "log retention failed; retried in 10 s");
            }
        }
        let s = state.logs.stats();
        state.metrics.logstore_segments.set(s.segments as i64);
        state.metrics.logstore_bytes.set(s.bytes as i64);
        state
            .metrics
            .logstore_buffered_records
            .set(s.buffered_records as i64);
    }
}

/// Sends the fleet's hosts with their summaries to the live feed's clients every two seconds
/// (when there are any: the summary is computed only then).
async fn live_hosts(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(crate::live::HOSTS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if state.live.has_clients() {
            let st = state.clone();
            // the summary's queries read the store: off the async threads
            let _ = tokio::task::spawn_blocking(move || {
                let now = now_ms();
                let hosts = crate::fleet::summary::summarized_hosts(
                    &st.fleet,
                    &*st.store,
                    &st.rules.alerts(),
                    &st.metrics,
                    now,
                );
                st.live.publish_hosts(&hosts, now);
            })
            .await;
        }
    }
}

/// Evaluates the rule groups that are due and decides notifications, four times a second at
/// most, on a blocking thread (a slow query never blocks ingest or HTTP; sending is the
/// notifier's receiver tasks').
async fn rule_evaluation(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            st.rules.evaluate_due(&st.store, now);
            let alerts = st.rules.alerts();
            st.notifier.process(&alerts, now);
            st.live.observe_alerts(&alerts, now);
        })
        .await;
    }
}
