//! The aggregator's configuration: one struct per component, TOML through the `config` crate,
//! with `FLEETWATCH_AGGREGATOR__SECTION__KEY` environment overrides.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole aggregator configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Where the store and fleet state live.
    pub data_dir: PathBuf,
    /// The QUIC listener for agents.
    pub quic: QuicConfig,
    /// The HTTP API.
    pub http: HttpConfig,
    /// Limits on what agents send.
    pub limits: LimitsConfig,
    /// Fleet status thresholds.
    pub fleet: FleetConfig,
    /// The store.
    pub store: StoreSettings,
    /// Prometheus remote-write endpoints the store's samples are forwarded to.
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Alerting and recording rules.
    pub rules: RulesConfig,
    /// Where alerts are sent.
    pub alerting: AlertingConfig,
    /// The log store.
    pub logs: crate::logstore::LogStoreConfig,
    /// Dashboards defined in configuration.
    pub dashboards: DashboardsConfig,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/fleetwatch/aggregator"),
            quic: QuicConfig::default(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            fleet: FleetConfig::default(),
            store: StoreSettings::default(),
            remote_write: Vec::new(),
            rules: RulesConfig::default(),
            alerting: AlertingConfig::default(),
            logs: crate::logstore::LogStoreConfig::default(),
            dashboards: DashboardsConfig::default(),
        }
    }
}

/// Dashboards defined in configuration (`crate::dashboards`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardsConfig {
    /// Directory of dashboard files (`*.toml`, one dashboard each), re-read on SIGHUP; a
    /// relative path is taken from the configuration file's directory. Empty: the example
    /// dashboards of `configs/dashboards/`, compiled into the binary.
    pub dir: PathBuf,
}

/// The QUIC listener and its certificates.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Address to listen on for agents.
    pub listen: String,
    /// The fleet CA certificate (PEM): only agents with certificates it signed get in.
    pub ca: PathBuf,
    /// The aggregator's certificate (PEM).
    pub cert: PathBuf,
    /// The aggregator's private key (PEM).
    pub key: PathBuf,
    /// The CA's revocation list (PEM), re-read when it changes. Empty: no revocation list.
    pub crl: PathBuf,
    /// Batch streams each agent may have open at once.
    pub max_in_flight: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4740".into(),
            ca: PathBuf::from("/etc/fleetwatch/pki/ca.pem"),
            cert: PathBuf::from("/etc/fleetwatch/pki/server.pem"),
            key: PathBuf::from("/etc/fleetwatch/pki/server.key"),
            crl: PathBuf::from("/etc/fleetwatch/pki/crl.pem"),
            max_in_flight: 16,
        }
    }
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: String,
    /// File holding the admin bearer token (one line).
    pub admin_token_file: PathBuf,
    /// File holding a read-only (viewer) bearer token; empty for none.
    pub viewer_token_file: PathBuf,
    /// Serve `/metrics` without a token (for a Prometheus that scrapes the aggregator).
    pub metrics_public: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4741".into(),
            admin_token_file: PathBuf::from("/etc/fleetwatch/admin.token"),
            viewer_token_file: PathBuf::new(),
            metrics_public: false,
        }
    }
}

/// Limits on what agents send; a breach is refused with a reason and counted.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest frame payload, bytes (compressed).
    pub max_frame_bytes: u32,
    /// Series in one batch.
    pub max_series_per_batch: usize,
    /// Labels on one series.
    pub max_labels_per_series: usize,
    /// Bytes in a label name.
    pub max_label_name_bytes: usize,
    /// Bytes in a label value.
    pub max_label_value_bytes: usize,
    /// Series one host may have in the store; new series beyond it are refused.
    pub max_series_per_host: usize,
    /// Active series (in the in-memory head) the whole store may hold; new series beyond it
    /// are refused, counted and reported to the agent, never fatal.
    pub max_series_total: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = fleetwatch_common::validate::Limits::default();
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            max_series_per_batch: l.max_series_per_batch,
            max_labels_per_series: l.max_labels_per_series,
            max_label_name_bytes: l.max_label_name_bytes,
            max_label_value_bytes: l.max_label_value_bytes,
            max_series_per_host: 20_000,
            max_series_total: 2_000_000,
        }
    }
}

impl LimitsConfig {
    /// The validation limits these settings describe.
    pub fn validation(&self) -> fleetwatch_common::validate::Limits {
        fleetwatch_common::validate::Limits {
            max_series_per_batch: self.max_series_per_batch,
            max_labels_per_series: self.max_labels_per_series,
            max_label_name_bytes: self.max_label_name_bytes,
            max_label_value_bytes: self.max_label_value_bytes,
            ..Default::default()
        }
    }
}

/// When a host counts as stale or down.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Seconds without data after which a host is stale.
    pub stale_after_seconds: u64,
    /// Seconds without data after which a host is down (`up` 0).
    pub down_after_seconds: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            stale_after_seconds: 30,
            down_after_seconds: 90,
        }
    }
}

/// The store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// Hours of raw samples kept.
    pub retention_hours: f64,
    /// Hours of 5-minute and 1-hour rollups kept (for long charts).
    pub rollup_retention_hours: f64,
    /// Most bytes the store may take on disk (blocks and log); the oldest blocks are removed
    /// beyond it. 0: no limit.
    pub max_bytes: u64,
    /// Minutes of data the in-memory head collects before it is written into blocks.
    pub flush_minutes: f64,
    /// Hours of data in one block.
    pub block_hours: f64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            retention_hours: 30.0 * 24.0,
            rollup_retention_hours: 365.0 * 24.0,
            max_bytes: 0,
            flush_minutes: 30.0,
            block_hours: 2.0,
        }
    }
}

impl StoreSettings {
    /// The store's settings these describe.
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            retention_ms: (self.retention_hours * 3_600_000.0) as i64,
            rollup_retention_ms: (self.rollup_retention_hours * 3_600_000.0) as i64,
            max_bytes: self.max_bytes,
            flush_after_ms: (self.flush_minutes * 60_000.0) as i64,
            block_ms: (self.block_hours * 3_600_000.0) as i64,
            ..Default::default()
        }
    }
}

/// Alerting and recording rules (Prometheus rule files).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Rule files: paths, directories (their `*.yml` and `*.yaml`) or `DIR/*.rules.yml`
    /// patterns. Reloaded on SIGHUP and `POST /api/admin/rules/reload`.
    pub files: Vec<PathBuf>,
    /// Interval of groups that give none, seconds.
    pub evaluation_interval_seconds: f64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            evaluation_interval_seconds: 60.0,
        }
    }
}

/// Notification routing (Alertmanager's model): alerts are grouped by labels, routed to
/// receivers by matchers, silenced, inhibited and acknowledged before anything is sent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Receiver of alerts no route matches (empty: they are not sent).
    pub default_receiver: String,
    /// Labels that make one notification group.
    pub group_by: Vec<String>,
    /// Wait before a new group's first notification, seconds (to gather its alerts).
    pub group_wait_seconds: f64,
    /// Wait before notifying a changed group again, seconds.
    pub group_interval_seconds: f64,
    /// Wait before repeating an unchanged, unacknowledged firing group, seconds.
    pub repeat_interval_seconds: f64,
    /// Receivers.
    pub receivers: Vec<ReceiverConfig>,
    /// Routes, first match wins unless `continue`.
    pub routes: Vec<RouteConfig>,
    /// Inhibition: a firing source alert mutes matching target alerts.
    pub inhibit_rules: Vec<InhibitConfig>,
    /// URL put in notifications as the place to look (the dashboard).
    pub external_url: String,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            default_receiver: String::new(),
            group_by: vec!["alertname".into(), "host".into()],
            group_wait_seconds: 30.0,
            group_interval_seconds: 300.0,
            repeat_interval_seconds: 4.0 * 3600.0,
            receivers: Vec::new(),
            routes: Vec::new(),
            inhibit_rules: vec![InhibitConfig {
                source_matchers: vec!["alertname=\"HostDown\"".into()],
                target_matchers: vec!["alertname!=\"HostDown\"".into()],
                equal: vec!["host".into()],
            }],
            external_url: String::new(),
        }
    }
}

/// A receiver: where and how notifications go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Its name, used by routes.
    pub name: String,
    /// `webhook` (Alertmanager's webhook payload), `alertmanager` (its v2 API), `slack`
    /// (incoming webhook), `pagerduty` (Events API v2), `email` (SMTP).
    pub kind: String,
    /// The URL: the webhook, the Alertmanager base URL, the Slack hook, the PagerDuty events
    /// endpoint (default <https://events.pagerduty.com/v2/enqueue>).
    #[serde(default)]
    pub url: String,
    /// PagerDuty routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Also notify resolutions.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Attempts per notification before it is counted as failed.
    #[serde(default = "five")]
    pub max_attempts: u32,
    /// Seconds before one attempt is abandoned.
    #[serde(default = "ten")]
    pub timeout_seconds: f64,
    /// Email: the SMTP server's host name (also the name its TLS certificate must carry).
    #[serde(default)]
    pub smtp_host: String,
    /// Email: the SMTP port (default 587, or 465 with `implicit_tls`).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// Email: STARTTLS on a plain connection: `required` (default; no TLS, no mail),
    /// `opportunistic` (when the server offers it) or `none`.
    #[serde(default)]
    pub starttls: StartTls,
    /// Email: TLS from the first byte (SMTPS, usually port 465) instead of STARTTLS.
    #[serde(default)]
    pub implicit_tls: bool,
    /// Email: CA certificates (PEM) trusted for the SMTP server besides the public roots
    /// (for a private CA); empty for none.
    #[serde(default)]
    pub tls_ca_file: PathBuf,
    /// Email: SMTP login; empty to send without authentication.
    #[serde(default)]
    pub username: String,
    /// Email: the password itself (prefer `password_file` or `password_env`).
    #[serde(default)]
    pub password: String,
    /// Email: a file holding the password (trailing newline ignored), read at start.
    #[serde(default)]
    pub password_file: PathBuf,
    /// Email: an environment variable holding the password, read at start.
    #[serde(default)]
    pub password_env: String,
    /// Email: the sender, `alerts@example.com` or `Fleet alerts <alerts@example.com>`.
    #[serde(default)]
    pub from: String,
    /// Email: the recipients.
    #[serde(default)]
    pub to: Vec<String>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            kind: "webhook".into(),
            url: String::new(),
            routing_key: String::new(),
            send_resolved: yes(),
            max_attempts: five(),
            timeout_seconds: ten(),
            smtp_host: String::new(),
            smtp_port: None,
            starttls: StartTls::default(),
            implicit_tls: false,
            tls_ca_file: PathBuf::new(),
            username: String::new(),
            password: String::new(),
            password_file: PathBuf::new(),
            password_env: String::new(),
            from: String::new(),
            to: Vec::new(),
        }
    }
}

/// When an email receiver upgrades its SMTP connection with STARTTLS.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// Always; a server that does not offer it gets no mail.
    #[default]
    Required,
    /// When the server offers it, else in clear.
    Opportunistic,
    /// Never (a local relay).
    None,
}

fn yes() -> bool {
    true
}
fn five() -> u32 {
    5
}
fn ten() -> f64 {
    10.0
}

/// A route: alerts matching every matcher go to `receiver`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Receiver name.
    pub receiver: String,
    /// Label matchers, PromQL style: `severity="critical"`, `host=~"db-.*"`.
    #[serde(default)]
    pub matchers: Vec<String>,
    /// Grouping for this route (default: the top-level `group_by`).
    #[serde(default)]
    pub group_by: Option<Vec<String>>,
    /// Go on to later routes after matching.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
}

/// An inhibition rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InhibitConfig {
    /// Matchers of the muting (firing) alert.
    pub source_matchers: Vec<String>,
    /// Matchers of the muted alerts.
    pub target_matchers: Vec<String>,
    /// Labels that must be equal on both.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// One remote-write endpoint (`[[remote_write]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteConfig {
    /// A short name: the `remote` label of its metrics and the name of its position file.
    pub name: String,
    /// The receiver's URL, for example `http://victoria:8428/api/v1/write`.
    pub url: String,
    /// File holding a bearer token sent with every request; empty for none.
    pub bearer_token_file: PathBuf,
    /// Extra HTTP headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// CA certificate (PEM) to trust for an `https` URL besides the system's; empty for none.
    pub tls_ca_file: PathBuf,
    /// Seconds before a request is abandoned and retried.
    pub timeout_seconds: f64,
    /// Samples per request, at most (whole logged batches are never split).
    pub max_samples_per_send: usize,
    /// First retry delay, milliseconds; doubles up to `max_backoff_ms`.
    pub min_backoff_ms: u64,
    /// Longest retry delay, milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RemoteWriteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            bearer_token_file: PathBuf::new(),
            headers: Default::default(),
            tls_ca_file: PathBuf::new(),
            timeout_seconds: 30.0,
            max_samples_per_send: 5000,
            min_backoff_ms: 100,
            max_backoff_ms: 10_000,
        }
    }
}

/// A configuration problem, naming the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed.
    #[error("{path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl AggregatorConfig {
    /// Loads `path` (TOML) with environment overrides (`FLEETWATCH_AGGREGATOR__HTTP__LISTEN`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let cfg: AggregatorConfig =
            fleetwatch_agent::config::load_toml(path, "FLEETWATCH_AGGREGATOR", &[]).map_err(
                |message| ConfigError::Load {
                    path: path.display().to_string(),
                    message,
                },
            )?;
        let mut cfg = cfg;
        if !cfg.dashboards.dir.as_os_str().is_empty() && cfg.dashboards.dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.dashboards.dir = base.join(&cfg.dashboards.dir);
        }
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.display().to_string(),
                key,
                message,
            })?;
        Ok(cfg)
    }

    fn validate_alerting(&self) -> Result<(), (&'static str, String)> {
        let a = &self.alerting;
        for (key, v) in [
            ("alerting.group_wait_seconds", a.group_wait_seconds),
            ("alerting.group_interval_seconds", a.group_interval_seconds),
            (
                "alerting.repeat_interval_seconds",
                a.repeat_interval_seconds,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err((key, "must be a non-negative number of seconds".into()));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for r in &a.receivers {
            if !names.insert(r.name.as_str()) || r.name.is_empty() {
                return Err((
                    "alerting.receivers.name",
                    format!("{:?}: empty or used twice", r.name),
                ));
            }
            if !(r.timeout_seconds.is_finite() && r.timeout_seconds > 0.0) {
                return Err((
                    "alerting.receivers.timeout_seconds",
                    format!(
                        "receiver {:?}: must be a positive number of seconds",
                        r.name
                    ),
                ));
            }
            if r.max_attempts == 0 {
                return Err((
                    "alerting.receivers.max_attempts",
                    format!("receiver {:?}: must be at least 1", r.name),
                ));
            }
            match r.kind.as_str() {
                "webhook" | "alertmanager" | "slack" => {
                    if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                        return Err(("alerting.receivers.url", format!("receiver {:?} needs an http(s) url", r.name)));
                    }
                }
                "pagerduty" => {
                    if r.routing_key.is_empty() {
                        return Err(("alerting.receivers.routing_key", format!("receiver {:?} needs a routing_key", r.name)));
                    }
                }
                "email" => crate::notify::email::check(r)?,
                other => {
                    return Err((
                        "alerting.receivers.kind",
                        format!("receiver {:?}: unknown kind {other:?} (webhook, alertmanager, slack, pagerduty, email)", r.name),
                    ))
                }
            }
        }
        let known = |n: &str| names.contains(n);
        if !a.default_receiver.is_empty() && !known(&a.default_receiver) {
            return Err((
                "alerting.default_receiver",
                format!("{:?} is not a receiver", a.default_receiver),
            ));
        }
        for r in &a.routes {
            if !known(&r.receiver) {
                return Err((
                    "alerting.routes.receiver",
                    format!("{:?} is not a receiver", r.receiver),
                ));
            }
        }
        let matchers = a.routes.iter().flat_map(|r| r.matchers.iter()).chain(
            a.inhibit_rules
                .iter()
                .flat_map(|i| i.source_matchers.iter().chain(&i.target_matchers)),
        );
        for m in matchers {
            crate::notify::matcher::parse(m).map_err(|e| ("alerting matchers", e))?;
        }
        Ok(())
    }

    /// Checks values the types can not.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, addr) in [
            ("quic.listen", &self.quic.listen),
            ("http.listen", &self.http.listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err((key, format!("{addr:?} is not an IP:port address")));
            }
        }
        if self.fleet.down_after_seconds < self.fleet.stale_after_seconds {
            return Err((
                "fleet.down_after_seconds",
                "must not be below fleet.stale_after_seconds".into(),
            ));
        }
        if !(self.store.retention_hours.is_finite() && self.store.retention_hours > 0.0) {
            return Err((
                "store.retention_hours",
                "must be a positive number of hours".into(),
            ));
        }
        if !(self.store.rollup_retention_hours.is_finite()
            && self.store.rollup_retention_hours >= self.store.retention_hours)
        {
            return Err((
                "store.rollup_retention_hours",
                "must be a number of hours at least store.retention_hours".into(),
            ));
        }
        if !(self.store.flush_minutes.is_finite() && self.store.flush_minutes > 0.0) {
            return Err((
                "store.flush_minutes",
                "must be a positive number of minutes".into(),
            ));
        }
        if !(self.store.block_hours.is_finite()
            && self.store.block_hours >= 1.0 / 60.0
            && self.store.block_hours <= 24.0)
        {
            return Err((
                "store.block_hours",
                "must be between one minute (0.0167) and 24 hours".into(),
            ));
        }
        if self.quic.max_in_flight == 0 {
            return Err(("quic.max_in_flight", "must be at least 1".into()));
        }
        if !(self.rules.evaluation_interval_seconds.is_finite()
            && self.rules.evaluation_interval_seconds >= 0.1)
        {
            return Err((
                "rules.evaluation_interval_seconds",
                "must be at least 0.1".into(),
            ));
        }
        self.validate_alerting()?;
        self.logs.validate()?;
        let mut names = std::collections::BTreeSet::new();
        for rw in &self.remote_write {
            if rw.name.is_empty()
                || !rw
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err((
                    "remote_write.name",
                    format!(
                        "{:?} must be non-empty letters, digits, '_' or '-'",
                        rw.name
                    ),
                ));
            }
            if !names.insert(rw.name.as_str()) {
                return Err((
                    "remote_write.name",
                    format!("{:?} is used by two endpoints", rw.name),
                ));
            }
            if !(rw.url.starts_with("http://") || rw.url.starts_with("https://")) {
                return Err((
                    "remote_write.url",
                    format!(
                        "{:?} ({}) must be an http:// or https:// URL",
                        rw.url, rw.name
                    ),
                ));
            }
            if !(rw.timeout_seconds.is_finite() && rw.timeout_seconds > 0.0) {
                return Err(("remote_write.timeout_seconds", "must be positive".into()));
            }
            if rw.max_samples_per_send == 0 {
                return Err((
                    "remote_write.max_samples_per_send",
                    "must be at least 1".into(),
                ));
            }
            if rw.min_backoff_ms == 0 || rw.max_backoff_ms < rw.min_backoff_ms {
                return Err((
                    "remote_write.max_backoff_ms",
                    "backoffs must be positive with max_backoff_ms >= min_backoff_ms".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/aggregator.toml");
        AggregatorConfig::load(&p).unwrap();
    }

    #[test]
    fn errors_name_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agg.toml");
        std::fs::write(&p, "[http]\nlisten = \"nowhere\"\n").unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("agg.toml") && e.contains("http.listen"), "{e}");
        std::fs::write(&p, "[http]\nlisen = \"1\"\n").unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn dashboards_dir_is_relative_to_the_file_and_follows_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agg.toml");
        std::fs::write(&p, "[dashboards]\ndir = \"boards\"\n").unwrap();
        let cfg = AggregatorConfig::load(&p).unwrap();
        assert_eq!(cfg.dashboards.dir, dir.path().join("boards"));
        std::fs::write(&p, "").unwrap();
        assert!(AggregatorConfig::load(&p)
            .unwrap()
            .dashboards
            .dir
            .as_os_str()
            .is_empty());
        // only this test sets this variable
        std::env::set_var("FLEETWATCH_AGGREGATOR__DASHBOARDS__DIR", "/srv/boards");
        let cfg = AggregatorConfig::load(&p);
        std::env::remove_var("FLEETWATCH_AGGREGATOR__DASHBOARDS__DIR");
        assert_eq!(cfg.unwrap().dashboards.dir, Path::new("/srv/boards"));
    }

    #[test]
    fn email_receivers_parse_and_errors_name_the_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agg.toml");
        let receiver = |to: &str, starttls: &str| {
            format!(
                "[[alerting.receivers]]\nname = \"mail\"\nkind = \"email\"\nsmtp_host = \"smtp.example.com\"\nsmtp_port = 2525\nstarttls = \"{starttls}\"\nfrom = \"alerts@example.com\"\nto = [{to}]\n"
            )
        };
        std::fs::write(&p, receiver("\"ops@example.com\"", "opportunistic")).unwrap();
        let cfg = AggregatorConfig::load(&p).unwrap();
        let r = &cfg.alerting.receivers[0];
        assert_eq!(r.starttls, StartTls::Opportunistic);
        assert_eq!(r.smtp_port, Some(2525));
        assert_eq!(r.max_attempts, 5);
        std::fs::write(&p, receiver("\"ops@example.com\", \"nobody\"", "required")).unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("agg.toml")
                && e.contains("alerting.receivers.to")
                && e.contains("receiver \"mail\"")
                && e.contains("\"nobody\" is not an email address"),
            "{e}"
        );
        std::fs::write(&p, receiver("", "required")).unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("needs at least one to address"), "{e}");
        std::fs::write(&p, receiver("\"ops@example.com\"", "sometimes")).unwrap();
        let e = AggregatorConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
    }
}
