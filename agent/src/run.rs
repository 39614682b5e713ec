//! Starting and stopping a whole agent: buffer, collector and shipper. Used by the
//! `fleetwatch-agent` binary and by the aggregator's `demo`.

use crate::buffer::{Buffer, BufferConfig};
use crate::config::AgentConfig;
use crate::metrics::AgentMetrics;
use crate::shipper::Shipper;
use crate::sources::host::HostSource;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// A running agent.
pub struct RunningAgent {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Its metrics.
    pub metrics: AgentMetrics,
    /// Its buffer.
    pub buffer: Arc<Buffer>,
}

impl RunningAgent {
    /// Stops collecting, seals the current batch into the buffer and closes the connection.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = self.buffer.flush();
    }
}

/// Opens the buffer and starts the collector and the shipper.
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
    let (shutdown, rx) = watch::channel(false);
    let facts = HostSource::new().facts();
    let shipper = Shipper {
        link: config.aggregator.clone(),
        buffer: buffer.clone(),
        metrics: metrics.clone(),
        facts,
        wake: wake.clone(),
    };
    let tasks = vec![
        tokio::spawn(crate::collector::run(
            config,
            buffer.clone(),
            metrics.clone(),
            wake,
            rx.clone(),
        )),
        tokio::spawn(shipper.run(rx)),
    ];
    Ok(RunningAgent {
        shutdown,
        tasks,
        metrics,
        buffer,
    })
}
