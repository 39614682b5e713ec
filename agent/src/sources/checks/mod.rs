//! Health checks: the services a host's applications depend on (HTTP, TCP, a command, Redis,
//! PostgreSQL), each run on its own interval with a timeout, judged against thresholds into
//! healthy / degraded / unhealthy, and turned into a [`CheckResult`] plus series.
//!
//! One `[[checks]]` table of `agent.toml` is one [`CheckConfig`]: common keys (name, interval,
//! timeout) and exactly one kind sub-table (`[checks.http]`, `[checks.tcp]`, ...). [`validate`]
//! refuses a bad list with the check's name and the problem; [`run`] runs every check until
//! shutdown and sends each result, with its series and the host's overall status, to the
//! collector.

pub mod command;
pub mod http;
pub mod postgres;
pub mod redis;
pub mod series;
pub mod tcp;
pub mod threshold;

use fleetwatch_common::model::{now_ms, CheckResult, CheckStatus, Label, SeriesSamples};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::debug;

pub use series::{status_value, HOST_HEALTH_METRIC, STATUS_METRIC};

/// Longest check name (it becomes the `check` label).
pub const MAX_NAME_BYTES: usize = 128;

/// One health check: the `[[checks]]` table in `agent.toml`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Unique name on this host; the `check` label of its series. Letters, digits, `_ . : -`.
    pub name: String,
    /// Seconds between runs (default 30).
    #[serde(default = "default_interval")]
    pub interval_seconds: f64,
    /// Seconds one run may take before it counts as unhealthy (default 10, at most the interval).
    #[serde(default = "default_timeout")]
    pub timeout_seconds: f64,
    /// An HTTP(S) request.
    pub http: Option<http::HttpCheck>,
    /// A TCP connect.
    pub tcp: Option<tcp::TcpCheck>,
    /// A program run without a shell.
    pub command: Option<command::CommandCheck>,
    /// A Redis server.
    pub redis: Option<redis::RedisCheck>,
    /// A PostgreSQL server.
    pub postgres: Option<postgres::PostgresCheck>,
}

fn default_interval() -> f64 {
    30.0
}

fn default_timeout() -> f64 {
    10.0
}

/// The kind sub-table a check has.
#[derive(Debug, Clone, Copy)]
enum Kind<'a> {
    Http(&'a http::HttpCheck),
    Tcp(&'a tcp::TcpCheck),
    Command(&'a command::CommandCheck),
    Redis(&'a redis::RedisCheck),
    Postgres(&'a postgres::PostgresCheck),
}

impl Kind<'_> {
    fn label(self) -> &'static str {
        match self {
            Kind::Http(_) => "http",
            Kind::Tcp(_) => "tcp",
            Kind::Command(_) => "command",
            Kind::Redis(_) => "redis",
            Kind::Postgres(_) => "postgres",
        }
    }
}

impl CheckConfig {
    fn kind(&self) -> Result<Kind<'_>, String> {
        let mut kinds = Vec::new();
        if let Some(c) = &self.http {
            kinds.push(Kind::Http(c));
        }
        if let Some(c) = &self.tcp {
            kinds.push(Kind::Tcp(c));
        }
        if let Some(c) = &self.command {
            kinds.push(Kind::Command(c));
        }
        if let Some(c) = &self.redis {
            kinds.push(Kind::Redis(c));
        }
        if let Some(c) = &self.postgres {
            kinds.push(Kind::Postgres(c));
        }
        match kinds.as_slice() {
            [one] => Ok(*one),
            [] => Err(
                "has no kind: add one of [checks.http], [checks.tcp], [checks.command], \
                 [checks.redis], [checks.postgres]"
                    .into(),
            ),
            many => Err(format!(
                "has {} kinds ({}); a check has exactly one",
                many.len(),
                many.iter()
                    .map(|k| k.label())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// `http`, `tcp`, `command`, `redis` or `postgres` (the `kind` label), if exactly one is set.
    pub fn kind_label(&self) -> Option<&'static str> {
        self.kind().ok().map(Kind::label)
    }

    fn timeout(&self) -> Duration {
        Duration::try_from_secs_f64(self.timeout_seconds).unwrap_or(Duration::from_secs(10))
    }

    fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.interval_seconds).unwrap_or(Duration::from_secs(30))
    }

    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(format!(
                "name must be 1 to {MAX_NAME_BYTES} bytes, got {}",
                name.len()
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
        {
            return Err(format!(
                "name may hold letters, digits and _ . : - only, found {c:?}"
            ));
        }
        if !(self.interval_seconds.is_finite() && self.interval_seconds > 0.0) {
            return Err(format!(
                "interval_seconds must be a positive number, got {}",
                self.interval_seconds
            ));
        }
        if !(self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0) {
            return Err(format!(
                "timeout_seconds must be a positive number, got {}",
                self.timeout_seconds
            ));
        }
        if self.timeout_seconds > self.interval_seconds {
            return Err(format!(
                "timeout_seconds ({}) must not exceed interval_seconds ({})",
                self.timeout_seconds, self.interval_seconds
            ));
        }
        match self.kind()? {
            Kind::Http(c) => c.validate(),
            Kind::Tcp(c) => c.validate(),
            Kind::Command(c) => c.validate(),
            Kind::Redis(c) => c.validate(),
            Kind::Postgres(c) => c.validate(),
        }
    }
}

/// Checks every check and the list as a whole (unique names). The error names the check (by
/// position and name) and the problem.
pub fn validate(checks: &[CheckConfig]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for (i, c) in checks.iter().enumerate() {
        let at = if c.name.is_empty() {
            format!("checks[{i}]")
        } else {
            format!("checks[{i}] ({:?})", c.name)
        };
        c.validate().map_err(|e| format!("{at}: {e}"))?;
        if !seen.insert(c.name.as_str()) {
            return Err(format!(
                "{at}: the name is used by an earlier check; names must be unique"
            ));
        }
    }
    Ok(())
}

/// What one finished check run produces: its result, and its series plus the host's overall
/// `fleetwatch_host_health_status`, all stamped with the result's time.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutput {
    /// The result (one per output today; a list so that a batch can carry several).
    pub results: Vec<CheckResult>,
    /// Series from the results and the host's overall status.
    pub series: Vec<SeriesSamples>,
}

/// What a kind's probe found: a status, a detail for people, and values that become series.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Probe {
    pub(crate) status: CheckStatus,
    pub(crate) detail: String,
    pub(crate) values: Vec<Value>,
}

/// One measured value of a probe: a series name, extra labels (beside `check`) and the value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Value {
    pub(crate) name: &'static str,
    pub(crate) labels: Vec<Label>,
    pub(crate) value: f64,
}

impl Probe {
    /// An unhealthy probe with no values.
    pub(crate) fn unhealthy(detail: impl Into<String>) -> Self {
        Self {
            status: CheckStatus::Unhealthy,
            detail: detail.into(),
            values: Vec::new(),
        }
    }

    /// Builds a probe from findings: the status is the worst finding's, the detail lists the
    /// findings that are not healthy first, then `summary`.
    pub(crate) fn from_findings(
        findings: Vec<(CheckStatus, String)>,
        summary: String,
        values: Vec<Value>,
    ) -> Self {
        let status = findings
            .iter()
            .map(|(s, _)| *s)
            .max()
            .unwrap_or(CheckStatus::Healthy);
        let mut problems: Vec<String> = findings
            .into_iter()
            .filter(|(s, _)| *s != CheckStatus::Healthy)
            .map(|(_, text)| text)
            .collect();
        problems.push(summary);
        Self {
            status,
            detail: problems.join("; "),
            values,
        }
    }
}

impl Value {
    pub(crate) fn new(name: &'static str, value: f64) -> Self {
        Self {
            name,
            labels: Vec::new(),
            value,
        }
    }

    pub(crate) fn with_label(mut self, name: &str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(name, value));
        self
    }
}

/// An error with its causes, `outer: inner: innermost`, for details.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// A check made ready to run: clients built and patterns compiled once.
enum Prober {
    Http(http::HttpProber),
    Tcp(tcp::TcpCheck),
    Command(command::CommandCheck),
    Redis(redis::RedisCheck),
    Postgres(postgres::PostgresCheck),
    /// Could not be made ready (for example the CA file vanished): every run reports this.
    Broken(String),
}

impl Prober {
    fn new(config: &CheckConfig) -> Self {
        match config.kind() {
            Ok(Kind::Http(c)) => match http::HttpProber::new(c) {
                Ok(p) => Prober::Http(p),
                Err(e) => Prober::Broken(e),
            },
            Ok(Kind::Tcp(c)) => Prober::Tcp(c.clone()),
            Ok(Kind::Command(c)) => Prober::Command(c.clone()),
            Ok(Kind::Redis(c)) => Prober::Redis(c.clone()),
            Ok(Kind::Postgres(c)) => Prober::Postgres(c.clone()),
            Err(e) => Prober::Broken(e),
        }
    }

    async fn probe(&self, timeout: Duration) -> Probe {
        match self {
            Prober::Http(p) => p.probe().await,
            Prober::Tcp(c) => c.probe().await,
            Prober::Command(c) => c.probe().await,
            Prober::Redis(c) => c.probe().await,
            Prober::Postgres(c) => c.probe(timeout).await,
            Prober::Broken(e) => Probe::unhealthy(format!("check can not run: {e}")),
        }
    }
}

/// Runs `config` once, bounded by its timeout, and returns its result and series.
pub async fn run_once(config: &CheckConfig) -> (CheckResult, Vec<SeriesSamples>) {
    let prober = Prober::new(config);
    run_prober(config, &prober).await
}

async fn run_prober(config: &CheckConfig, prober: &Prober) -> (CheckResult, Vec<SeriesSamples>) {
    let timeout = config.timeout();
    let started = Instant::now();
    let probe = match tokio::time::timeout(timeout, prober.probe(timeout)).await {
        Ok(p) => p,
        Err(_) => Probe::unhealthy(format!(
            "timed out after {} s",
            series::seconds_text(timeout.as_secs_f64())
        )),
    };
    let duration = started.elapsed().as_secs_f64();
    let result = CheckResult {
        name: config.name.clone(),
        timestamp_ms: now_ms(),
        status: probe.status,
        duration_seconds: duration,
        detail: series::bounded_detail(&probe.detail),
    };
    let kind = config.kind_label().unwrap_or("unknown");
    let series = series::check_series(&result, kind, &probe.values);
    (result, series)
}

async fn run_check(config: CheckConfig, tx: mpsc::Sender<(CheckResult, Vec<SeriesSamples>)>) {
    let prober = Prober::new(&config);
    let mut tick = tokio::time::interval(config.interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (result, series) = run_prober(&config, &prober).await;
        debug!(check = %result.name, status = ?result.status, detail = %result.detail, "check ran");
        if tx.send((result, series)).await.is_err() {
            return;
        }
    }
}

/// Runs every check on its own interval (the first run at once) until `shutdown` turns true
/// or `out` is closed. Each finished run is sent as one [`CheckOutput`] holding its result, its
/// series and the host's overall status (the worst latest status of all checks). A run that is
/// cut short by shutdown is not reported; a command it started is killed with its process group.
pub async fn run(
    checks: Vec<CheckConfig>,
    out: mpsc::Sender<CheckOutput>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::channel(checks.len().max(1) * 2);
    let mut tasks = JoinSet::new();
    for config in checks {
        tasks.spawn(run_check(config, tx.clone()));
    }
    drop(tx);
    let mut latest: BTreeMap<String, CheckStatus> = BTreeMap::new();
    while !*shutdown.borrow() {
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = shutdown.changed() => break,
        };
        let Some((result, mut series)) = next else {
            // No checks configured: nothing to run, wait for shutdown.
            let _ = shutdown.wait_for(|stop| *stop).await;
            break;
        };
        latest.insert(result.name.clone(), result.status);
        if let Some(host) = latest.values().copied().max() {
            series.push(series::host_health(host, result.timestamp_ms));
        }
        let output = CheckOutput {
            results: vec![result],
            series,
        };
        tokio::select! {
            sent = out.send(output) => if sent.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests;
