//! Starting, reloading and stopping a whole agent: buffer, collector, shipper and the sources
//! (host, scrape targets, push listener). Used by the `fleetwatch-agent` binary and by the
//! aggregator's `demo`.
//!
//! The buffer, the collector and the shipper live as long as the agent; sources come and go
//! with the configuration ([`RunningAgent::reload`]), so a reload never touches buffered data.

use crate::buffer::{Buffer, BufferConfig};
use crate::collector::{self, Collected, Output};
use crate::config::{AgentConfig, AggregatorLink, ConfigError, HostConfig, ScrapeTarget};
use crate::metrics::AgentMetrics;
use crate::shipper::Shipper;
use crate::sources::host::HostSource;
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

    /// Applies a new configuration: scrape targets, the push listener, the host interval and
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
        }
        self.reload_scrapes(&new.scrape, &mut summary);
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

    /// `Some(new listener or None)` when the listener must change; binds a new address before
    /// the old listener is stopped.
    fn prepare_push(
        &mut self,
        new: &AgentConfig,
        summary: &mut ReloadSummary,
    ) -> Result<Option<Option<PushListener>>, ReloadError> {
        let old = &self.config.push;
        if *old == new.push {
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
    let push = if config.push.enabled {
        Some(
            PushListener::start(&config.push, out.clone(), metrics.clone()).with_context(
                || {
                    format!(
                        "starting the push listener on {} (push.listen; set push.enabled = false to run without it)",
                        config.push.listen
                    )
                },
            )?,
        )
    } else {
        None
    };
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
    let mut agent = RunningAgent {
        shutdown,
        config: config.clone(),
        out,
        host,
        link,
        scrapes: BTreeMap::new(),
        push,
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
