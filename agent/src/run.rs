//! Starting, reloading and stopping a whole agent: buffer, collector, shipper and the sources
//! (host, scrape targets, health checks, push listener, log sources). Used by the `fleetwatch-agent` binary and by the
//! aggregator's `demo`.
//!
//! The buffer, the collector and the shipper live as long as the agent; sources come and go
//! with the configuration ([`RunningAgent::reload`]), so a reload never touches buffered data.

use crate::buffer::{Buffer, BufferConfig};
use crate::collector::{self, Collected, Output};
use crate::config::{AgentConfig, AggregatorLink, ConfigError, HostConfig, ScrapeTarget};
use crate::metrics::AgentMetrics;
use crate::shipper::Shipper;
use crate::sources::checks::{self, CheckConfig, CheckOutput};
use crate::sources::host::HostSource;
use crate::sources::logs::LogSources;
use crate::sources::push::PushListener;
use crate::sources::scrape;
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// A running scrape target's task and its configuration channel (`None` removes it).
struct ScrapeTask {
    config: watch::Sender<Option<ScrapeTarget>>,
    task: JoinHandle<()>,
}

/// The running health checks: their own stop signal, the checks task and the task that
/// forwards their output to the collector.
struct ChecksTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    forward: JoinHandle<()>,
}

impl ChecksTask {
    fn start(checks: Vec<CheckConfig>, out: Output) -> ChecksTask {
        let (stop, stop_rx) = watch::channel(false);
        let (tx, mut rx) = mpsc::channel::<CheckOutput>(64);
        let task = tokio::spawn(checks::run(checks, tx, stop_rx));
        let forward = tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                let collected = Collected::Checks {
                    results: o.results,
                    series: o.series,
                };
                if out.send(collected).await.is_err() {
                    return;
                }
            }
        });
        ChecksTask {
            stop,
            task,
            forward,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        // the checks' sender is gone: the forwarder delivers what is left and ends
        let _ = tokio::time::timeout(Duration::from_secs(10), self.forward).await;
    }
}

/// A running agent.
pub struct RunningAgent {
    shutdown: watch::Sender<bool>,
    /// The configuration in force (keys that need a restart keep their start-up values).
    config: AgentConfig,
    out: Output,
    host: watch::Sender<HostConfig>,
    link: watch::Sender<AggregatorLink>,
    scrapes: BTreeMap<String, ScrapeTask>,
    push: Option<PushListener>,
    checks: Option<ChecksTask>,
    logs: Option<LogSources>,
    host_task: JoinHandle<()>,
    collector: JoinHandle<()>,
    shipper: JoinHandle<()>,
    /// Its metrics.
    pub metrics: AgentMetrics,
    /// Its buffer.
    pub buffer: Arc<Buffer>,
}

/// Why a reload was refused. The running configuration is kept in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid.
    #[error("invalid configuration, keeping the running one: {0}")]
    Invalid(#[from] ConfigError),
    /// The new configuration is valid but could not be put in place.
    #[error("could not apply the new configuration, keeping the running one: {0}")]
    Apply(String),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReloadSummary {
    /// Human-readable changes, for example `scrape target "node" added`.
    pub changes: Vec<String>,
    /// Keys that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl RunningAgent {
    /// The address the push listener is bound to, when it runs.
    pub fn push_address(&self) -> Option<SocketAddr> {
        self.push.as_ref().map(|p| p.addr)
    }

    /// The configuration in force.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Re-reads `path` and applies it ([`RunningAgent::reload`]); an invalid file is refused.
    /// Logs the outcome and counts it in `fleetwatch_agent_config_reloads_total{result}`.
    pub async fn reload_from(&mut self, path: &Path) -> Result<ReloadSummary, ReloadError> {
        let result = match AgentConfig::load(path) {
            Ok(config) => self.reload(config).await,
            Err(e) => Err(ReloadError::Invalid(e)),
        };
        let label = match &result {
            Ok(summary) => {
                info!(file = %path.display(), changes = ?summary.changes, "configuration reloaded");
                if !summary.needs_restart.is_empty() {
                    warn!(keys = ?summary.needs_restart, "these settings changed but take effect only after a restart of the agent; the running values are kept");
                }
                "applied"
            }
            Err(e @ ReloadError::Invalid(_)) => {
                error!(file = %path.display(), error = %e, "configuration reload refused");
                "invalid"
            }
            Err(e @ ReloadError::Apply(_)) => {
                error!(file = %path.display(), error = %e, "configuration reload failed");
                "failed"
            }
        };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        result
    }

    /// Applies a new configuration: scrape targets, health checks, the push listener, the host
    /// interval and
    /// the aggregator link (addresses, certificate, key and CA files, which are re-read) change
    /// in place; the buffer and its data stay. `data_dir`, `buffer` and `batch` need a restart.
    pub async fn reload(&mut self, new: AgentConfig) -> Result<ReloadSummary, ReloadError> {
        new.validate()?;
        let mut summary = ReloadSummary::default();
        // The one step that can fail goes first, so that a failure changes nothing.
        let new_push = self.prepare_push(&new, &mut summary)?;
        if let Some(listener) = new_push {
            if let Some(old) = std::mem::replace(&mut self.push, listener) {
                old.stop().await;
            }
            self.metrics
                .push_listener_up
                .set(i64::from(self.push.is_some()));
        }
        self.reload_scrapes(&new.scrape, &mut summary);
        if self.config.checks != new.checks {
            if let Some(old) = self.checks.take() {
                old.stop().await;
            }
            if !new.checks.is_empty() {
                self.checks = Some(ChecksTask::start(new.checks.clone(), self.out.clone()));
            }
            summary
                .changes
                .push(format!("health checks ({} configured)", new.checks.len()));
        }
        if self.config.logs != new.logs {
            self.restart_logs(&new.logs).await;
            summary.changes.push(format!(
                "log sources ({} file sources, journald {})",
                new.logs.files.len(),
                if new.logs.journald.enabled {
                    "on"
                } else {
                    "off"
                }
            ));
        }
        if self.config.host != new.host {
            summary.changes.push("host collection".into());
            self.host.send_replace(new.host.clone());
        }
        if self.config.aggregator != new.aggregator {
            summary.changes.push("aggregator link".into());
        }
        // Always: the certificate files may have new contents under the same names.
        self.link.send_replace(new.aggregator.clone());

        let mut applied = new;
        if applied.data_dir != self.config.data_dir {
            summary.needs_restart.push("data_dir");
            applied.data_dir = self.config.data_dir.clone();
        }
        if applied.buffer != self.config.buffer {
            summary.needs_restart.push("buffer");
            applied.buffer = self.config.buffer.clone();
        }
        if applied.batch != self.config.batch {
            summary.needs_restart.push("batch");
            applied.batch = self.config.batch.clone();
        }
        self.config = applied;
        Ok(summary)
    }

    /// Stops the log sources, has the collector write what they handed over (records and
    /// positions) to the buffer, then starts the sources of `cfg`, which resume from there.
    async fn restart_logs(&mut self, cfg: &crate::sources::logs::config::LogsConfig) {
        stop_logs(self.logs.take()).await;
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.out.send(Collected::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
        self.logs = start_logs(cfg, &self.buffer, &self.out, &self.metrics);
    }

    /// `Some(new listener or None)` when the listener must change; binds a new address before
    /// the old listener is stopped.
    fn prepare_push(
        &mut self,
        new: &AgentConfig,
        summary: &mut ReloadSummary,
    ) -> Result<Option<Option<PushListener>>, ReloadError> {
        let old = &self.config.push;
        if *old == new.push && (self.push.is_some() || !new.push.enabled) {
            return Ok(None);
        }
        match (&self.push, new.push.enabled) {
            (Some(running), true) if old.listen == new.push.listen => {
                running.set_config(&new.push);
                summary.changes.push("push listener limits".into());
                Ok(None)
            }
            (_, true) => {
                let listener =
                    PushListener::start(&new.push, self.out.clone(), self.metrics.clone())
                        .map_err(|e| {
                            ReloadError::Apply(format!("push listener on {}: {e}", new.push.listen))
                        })?;
                summary
                    .changes
                    .push(format!("push listener on {}", listener.addr));
                Ok(Some(Some(listener)))
            }
            (_, false) => {
                summary.changes.push("push listener stopped".into());
                Ok(Some(None))
            }
        }
    }

    fn reload_scrapes(&mut self, targets: &[ScrapeTarget], summary: &mut ReloadSummary) {
        let wanted: BTreeMap<String, &ScrapeTarget> = targets
            .iter()
            .map(|t| (t.target_name().to_string(), t))
            .collect();
        let gone: Vec<String> = self
            .scrapes
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            if let Some(task) = self.scrapes.remove(&name) {
                // the task writes staleness markers and ends
                task.config.send_replace(None);
                summary
                    .changes
                    .push(format!("scrape target {name:?} removed"));
            }
        }
        for (name, target) in wanted {
            match self.scrapes.get(&name) {
                Some(task) if !task.task.is_finished() => {
                    if task.config.borrow().as_ref() != Some(target) {
                        task.config.send_replace(Some(target.clone()));
                        summary
                            .changes
                            .push(format!("scrape target {name:?} changed"));
                    }
                }
                _ => {
                    self.scrapes
                        .insert(name.clone(), self.spawn_scrape(target.clone()));
                    summary
                        .changes
                        .push(format!("scrape target {name:?} added"));
                }
            }
        }
    }

    fn spawn_scrape(&self, target: ScrapeTarget) -> ScrapeTask {
        let (config, rx) = watch::channel(Some(target));
        let task = tokio::spawn(scrape::run(
            rx,
            self.out.clone(),
            self.metrics.clone(),
            self.shutdown.subscribe(),
        ));
        ScrapeTask { config, task }
    }

    /// Stops the sources, seals what they collected into the buffer and closes the connection.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        if let Some(push) = self.push {
            push.stop().await;
        }
        if let Some(checks) = self.checks {
            checks.stop().await;
        }
        // Log threads check their stop flag at least every 250 ms, but one may be handing a
        // chunk to a collector that is slow to take it: bounded like the tasks below.
        let _ = tokio::time::timeout(Duration::from_secs(10), stop_logs(self.logs)).await;
        let wait = |t: JoinHandle<()>| tokio::time::timeout(Duration::from_secs(10), t);
        for (_, s) in self.scrapes {
            let _ = wait(s.task).await;
        }
        let _ = wait(self.host_task).await;
        // every source's sender is gone: the collector seals its last batch and ends
        drop(self.out);
        let _ = wait(self.collector).await;
        let _ = wait(self.shipper).await;
        let _ = self.buffer.flush();
    }
}

fn start_logs(
    cfg: &crate::sources::logs::config::LogsConfig,
    buffer: &Arc<Buffer>,
    out: &Output,
    metrics: &AgentMetrics,
) -> Option<LogSources> {
    (!cfg.files.is_empty() || cfg.journald.enabled)
        .then(|| LogSources::start(cfg, buffer.clone(), out.clone(), metrics.clone()))
}

async fn stop_logs(logs: Option<LogSources>) {
    if let Some(logs) = logs {
        let _ = tokio::task::spawn_blocking(move || logs.stop()).await;
    }
}

/// Opens the buffer and starts the collector, the shipper and the sources.
pub fn start(config: AgentConfig) -> anyhow::Result<RunningAgent> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let buffer_path = config.data_dir.join("buffer");
    let buffer = Arc::new(
        Buffer::open(
            &buffer_path,
            BufferConfig {
                max_bytes: config.buffer.max_bytes,
                max_age: Duration::from_secs_f64(config.buffer.max_age_hours * 3600.0),
                cache_bytes: config.buffer.cache_bytes,
            },
        )
        .with_context(|| format!("opening the buffer at {}", buffer_path.display()))?,
    );
    let metrics = AgentMetrics::new();
    let wake = Arc::new(Notify::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (out, input) = mpsc::channel::<Collected>(collector::CHANNEL_CAPACITY);
    // A listener that can not bind does not stop the agent (collection and the buffer matter
    // more): the error is logged, `fleetwatch_agent_push_listener_up` stays 0, and the next
    // reload tries again.
    let push = if config.push.enabled {
        match PushListener::start(&config.push, out.clone(), metrics.clone()) {
            Ok(listener) => Some(listener),
            Err(e) => {
                error!(listen = %config.push.listen, error = %e, "cannot start the push listener (push.listen; push.enabled = false turns it off); running without it, SIGHUP retries");
                None
            }
        }
    } else {
        None
    };
    metrics.push_listener_up.set(i64::from(push.is_some()));
    let facts = HostSource::new().facts();
    let (link, link_rx) = watch::channel(config.aggregator.clone());
    let shipper = Shipper {
        link: config.aggregator.clone(),
        buffer: buffer.clone(),
        metrics: metrics.clone(),
        facts,
        wake: wake.clone(),
    };
    let (host, host_rx) = watch::channel(config.host.clone());
    let collector = tokio::spawn(collector::run(
        config.batch.clone(),
        config.buffer.log_backlog_limit(),
        buffer.clone(),
        metrics.clone(),
        wake,
        input,
    ));
    let host_task = tokio::spawn(collector::run_host(
        host_rx,
        out.clone(),
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let shipper = tokio::spawn(shipper.run_reloadable(shutdown_rx, link_rx));
    let checks =
        (!config.checks.is_empty()).then(|| ChecksTask::start(config.checks.clone(), out.clone()));
    let logs = start_logs(&config.logs, &buffer, &out, &metrics);
    let mut agent = RunningAgent {
        shutdown,
        config: config.clone(),
        out,
        host,
        link,
        scrapes: BTreeMap::new(),
        push,
        checks,
        logs,
        host_task,
        collector,
        shipper,
        metrics,
        buffer,
    };
    let mut summary = ReloadSummary::default();
    agent.reload_scrapes(&config.scrape, &mut summary);
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> AgentConfig {
        let mut c = AgentConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        // nothing listens there: batches stay in the buffer
        c.aggregator.addresses = vec!["127.0.0.1:9".into()];
        c.push.listen = "127.0.0.1:0".into();
        c.host.interval_seconds = 0.05;
        c.batch.max_wait_seconds = 0.01;
        c
    }

    #[tokio::test]
    async fn reload_applies_sources_and_refuses_what_it_can_not_apply() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let mut agent = start(cfg.clone()).unwrap();
        let push = agent.push_address().unwrap();
        while agent.buffer.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let mut next = cfg.clone();
        next.scrape.push(ScrapeTarget {
            job: "app".into(),
            name: String::new(),
            url: "http://127.0.0.1:9/metrics".into(),
            interval_seconds: 1.0,
            timeout_seconds: None,
            labels: Default::default(),
            honor_labels: false,
            honor_timestamps: true,
            max_body_bytes: 1024,
        });
        next.buffer.max_bytes *= 2;
        let summary = agent.reload(next.clone()).await.unwrap();
        assert_eq!(
            summary.changes,
            vec!["scrape target \"app\" added".to_string()]
        );
        assert_eq!(summary.needs_restart, vec!["buffer"]);
        assert_eq!(
            agent.config().buffer,
            cfg.buffer,
            "the running buffer settings stay"
        );

        // a taken address: refused, the running listener and targets stay
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut bad = next.clone();
        bad.scrape.clear();
        bad.push.listen = taken.local_addr().unwrap().to_string();
        let err = agent.reload(bad).await.unwrap_err();
        assert!(matches!(err, ReloadError::Apply(_)), "{err}");
        assert_eq!(agent.push_address(), Some(push));
        assert_eq!(agent.config().scrape.len(), 1);

        // an invalid file: refused and counted
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[host]\ninterval_seconds = 0\n").unwrap();
        let err = agent.reload_from(&file).await.unwrap_err();
        assert!(err.to_string().contains("host.interval_seconds"), "{err}");
        assert_eq!(
            agent
                .metrics
                .config_reloads
                .with_label_values(&["invalid"])
                .get(),
            1
        );

        // removing the target and stopping the listener
        let mut off = next.clone();
        off.scrape.clear();
        off.push.enabled = false;
        let summary = agent.reload(off).await.unwrap();
        assert!(summary
            .changes
            .contains(&"scrape target \"app\" removed".to_string()));
        assert!(agent.push_address().is_none());
        assert!(std::net::TcpStream::connect(push).is_err());
        let buffered = agent.buffer.len();
        assert!(
            buffered > 0,
            "the buffer kept its batches through every reload"
        );
        agent.stop().await;
    }
}
