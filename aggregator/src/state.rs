//! The state the aggregator's tasks share: store, fleet, metrics, settings, dashboards.

use crate::config::AggregatorConfig;
use crate::dashboards::Dashboards;
use crate::fleet::Fleet;
use crate::live::LiveHub;
use crate::logstore::LogStore;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::rules::RuleManager;
use crate::store::Storage;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Bearer tokens and their roles.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// Full access.
    pub admin: Option<String>,
    /// Read-only access.
    pub viewer: Option<String>,
}

/// Shared by ingest, HTTP and background tasks.
pub struct AppState {
    /// The store.
    pub store: Arc<Storage>,
    /// The fleet.
    pub fleet: Arc<Fleet>,
    /// Own metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: AggregatorConfig,
    /// API tokens.
    pub tokens: Tokens,
    /// Alerting and recording rules.
    pub rules: Arc<RuleManager>,
    /// Alert notifications, silences, acknowledgements.
    pub notifier: Arc<Notifier>,
    /// The live feed.
    pub live: Arc<LiveHub>,
    /// The log store (also reached by the store, which hands it every batch's records).
    pub logs: Arc<LogStore>,
    /// The dashboards defined in configuration.
    pub dashboards: Arc<Dashboards>,
    ready: AtomicBool,
}

impl AppState {
    /// New state, not yet ready.
    #[allow(clippy::too_many_arguments)] // one handle per shared part
    pub fn new(
        store: Arc<Storage>,
        fleet: Arc<Fleet>,
        metrics: Metrics,
        config: AggregatorConfig,
        tokens: Tokens,
        rules: Arc<RuleManager>,
        notifier: Arc<Notifier>,
        logs: Arc<LogStore>,
    ) -> Self {
        let live = Arc::new(LiveHub::new(metrics.clone()));
        let dashboards = Arc::new(Dashboards::open(
            config.dashboards.dir.clone(),
            metrics.clone(),
        ));
        Self {
            live,
            dashboards,
            store,
            fleet,
            metrics,
            config,
            tokens,
            rules,
            notifier,
            logs,
            ready: AtomicBool::new(false),
        }
    }

    /// Marks the aggregator ready (store replayed, listeners up).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether `/readyz` says yes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}
