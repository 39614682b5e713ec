//! The agent's configuration: one struct per component, TOML through the `config` crate, with
//! `FLEETWATCH_AGENT__SECTION__KEY` environment overrides.

use crate::sources::checks::{self, CheckConfig};
use crate::sources::logs::config::LogsConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole agent configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Where the agent keeps its buffer and state.
    pub data_dir: PathBuf,
    /// How to reach the aggregators and prove who we are.
    pub aggregator: AggregatorLink,
    /// Host metrics collection.
    pub host: HostConfig,
    /// Batching of collected data.
    pub batch: BatchConfig,
    /// The durable buffer.
    pub buffer: BufferSettings,
    /// Prometheus scrape targets (`[[scrape]]` tables).
    pub scrape: Vec<ScrapeTarget>,
    /// The local push listener for custom metrics.
    pub push: PushConfig,
    /// Health checks (`[[checks]]` tables).
    pub checks: Vec<CheckConfig>,
    /// Log sources: files by glob, the journal (`[logs]`, `[[logs.files]]`).
    pub logs: LogsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/fleetwatch/agent"),
            aggregator: AggregatorLink::default(),
            host: HostConfig::default(),
            batch: BatchConfig::default(),
            buffer: BufferSettings::default(),
            scrape: Vec::new(),
            push: PushConfig::default(),
            checks: Vec::new(),
            logs: LogsConfig::default(),
        }
    }
}

/// The link to the aggregators.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorLink {
    /// Aggregator addresses (`host:port`), tried in order; the agent fails over to the next one.
    pub addresses: Vec<String>,
    /// Name in the aggregator's certificate; empty means the host part of the address.
    pub server_name: String,
    /// The fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// This agent's certificate (PEM); its name is the agent's identity.
    pub cert: PathBuf,
    /// This agent's private key (PEM).
    pub key: PathBuf,
    /// Batches in flight at once.
    pub max_in_flight: usize,
    /// How long to wait for an acknowledgement, in seconds.
    pub ack_timeout_seconds: f64,
    /// First reconnect delay, in seconds (doubles up to the maximum, with jitter).
    pub backoff_min_seconds: f64,
    /// Longest reconnect delay, in seconds.
    pub backoff_max_seconds: f64,
}

impl Default for AggregatorLink {
    fn default() -> Self {
        Self {
            addresses: vec!["127.0.0.1:4740".into()],
            server_name: String::new(),
            ca: PathBuf::from("/etc/fleetwatch/pki/ca.pem"),
            cert: PathBuf::from("/etc/fleetwatch/pki/agent.pem"),
            key: PathBuf::from("/etc/fleetwatch/pki/agent.key"),
            max_in_flight: 8,
            ack_timeout_seconds: 30.0,
            backoff_min_seconds: 0.5,
            backoff_max_seconds: 30.0,
        }
    }
}

/// Host metrics collection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// Collect host metrics at all.
    pub enabled: bool,
    /// Seconds between collections.
    pub interval_seconds: f64,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_seconds: 10.0,
        }
    }
}

/// Batching: a batch is sealed when it holds `max_items` or is `max_wait_seconds` old.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Samples and records in one batch.
    pub max_items: usize,
    /// Seconds a batch may wait for more data before it is sealed.
    pub max_wait_seconds: f64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_items: 10_000,
            max_wait_seconds: 1.0,
        }
    }
}

/// The durable buffer's bounds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BufferSettings {
    /// Most bytes kept; beyond it the oldest batches are dropped (and counted).
    pub max_bytes: u64,
    /// Oldest batch kept, in hours; older ones are dropped (and counted).
    pub max_age_hours: f64,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// While connected to an aggregator, a sealed log batch waits (at most 5 s) as long as the
    /// buffer holds more than this many bytes: a file read faster than the aggregator takes it
    /// stays in the file, at its checkpoint, instead of piling up in the buffer (whose memory
    /// grows with what it holds). Without a connection nothing waits and the buffer takes the
    /// backlog up to `max_bytes`. Between 64 KiB and `max_bytes` when set; unset, 4 MiB or half
    /// of `max_bytes`, whichever is less ([`BufferSettings::log_backlog_limit`]).
    pub log_backlog_bytes: Option<u64>,
}

/// The default of `buffer.log_backlog_bytes` (unless half of `max_bytes` is less).
pub const DEFAULT_LOG_BACKLOG_BYTES: u64 = 4 << 20;

impl BufferSettings {
    /// The log backlog pacing limit: `log_backlog_bytes`, or by default 4 MiB or half of
    /// `max_bytes`, whichever is less (a small buffer must not refuse the default).
    pub fn log_backlog_limit(&self) -> u64 {
        self.log_backlog_bytes
            .unwrap_or(DEFAULT_LOG_BACKLOG_BYTES.min(self.max_bytes / 2))
    }
}

impl Default for BufferSettings {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_age_hours: 24.0,
            cache_bytes: 4 * 1024 * 1024,
            log_backlog_bytes: None,
        }
    }
}

/// One Prometheus scrape target (`[[scrape]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScrapeTarget {
    /// The `job` label of everything scraped from this target.
    pub job: String,
    /// Name of the target in the agent's own metrics and logs (`target` label); defaults to
    /// `job`, and must be unique among targets.
    #[serde(default)]
    pub name: String,
    /// The URL to scrape, `http://` or `https://`.
    pub url: String,
    /// Seconds between scrapes.
    #[serde(default = "default_scrape_interval")]
    pub interval_seconds: f64,
    /// Seconds a scrape may take, at most the interval; unset, 10 or the interval if shorter
    /// (as Prometheus).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
    /// Labels added to every series of this target (they may override `job` and `instance`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Keep the target's own labels when they clash with ours (otherwise theirs become
    /// `exported_<name>`), as Prometheus' `honor_labels`.
    #[serde(default)]
    pub honor_labels: bool,
    /// Use the timestamps the target exposes (Prometheus' `honor_timestamps`).
    #[serde(default = "yes")]
    pub honor_timestamps: bool,
    /// Largest response body accepted, in bytes; a larger one fails the scrape.
    #[serde(default = "default_scrape_body")]
    pub max_body_bytes: u64,
}

fn default_scrape_interval() -> f64 {
    15.0
}
fn default_scrape_body() -> u64 {
    64 * 1024 * 1024
}
fn yes() -> bool {
    true
}

impl ScrapeTarget {
    /// The scrape timeout in seconds: `timeout_seconds`, else 10 or the interval if shorter.
    pub fn timeout(&self) -> f64 {
        self.timeout_seconds
            .unwrap_or(self.interval_seconds.min(10.0))
    }

    /// The name used in the agent's own metrics: `name`, else `job`.
    pub fn target_name(&self) -> &str {
        if self.name.is_empty() {
            &self.job
        } else {
            &self.name
        }
    }
}

/// The push listener: local programs send custom metrics to `POST /v1/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Run the listener at all.
    pub enabled: bool,
    /// Address to listen on; loopback unless you mean to accept pushes from other hosts.
    pub listen: String,
    /// Largest request body, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    /// Most labels on one pushed series.
    pub max_labels: usize,
    /// Most series in one request.
    pub max_series: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9465".into(),
            max_body_bytes: 1024 * 1024,
            max_labels: 32,
            max_series: 10_000,
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
    #[error("{key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A health check is invalid.
    #[error("{0}")]
    Checks(String),
    /// A log source is invalid.
    #[error("{0}")]
    Logs(String),
    /// A scrape target is invalid.
    #[error("scrape target {target:?}: {message}")]
    Scrape {
        /// The target's name.
        target: String,
        /// What is wrong with it.
        message: String,
    },
}

fn positive(key: &'static str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!("must be a positive number of seconds, got {v}"),
        })
    }
}

impl AgentConfig {
    /// Loads `path` (TOML) with environment overrides (`FLEETWATCH_AGENT__HOST__INTERVAL_SECONDS`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let loaded: AgentConfig = load_toml(path, "FLEETWATCH_AGENT", &["aggregator.addresses"])
            .map_err(|message| ConfigError::Load {
                path: path.display().to_string(),
                message,
            })?;
        loaded.validate()?;
        Ok(loaded)
    }

    /// Checks values the types can not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.aggregator.addresses.is_empty() {
            return Err(ConfigError::Invalid {
                key: "aggregator.addresses",
                message: "at least one aggregator address is needed".into(),
            });
        }
        for a in &self.aggregator.addresses {
            if a.rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(ConfigError::Invalid {
                    key: "aggregator.addresses",
                    message: format!("{a:?} is not host:port"),
                });
            }
        }
        positive("host.interval_seconds", self.host.interval_seconds)?;
        positive("batch.max_wait_seconds", self.batch.max_wait_seconds)?;
        positive(
            "aggregator.ack_timeout_seconds",
            self.aggregator.ack_timeout_seconds,
        )?;
        positive(
            "aggregator.backoff_min_seconds",
            self.aggregator.backoff_min_seconds,
        )?;
        positive(
            "aggregator.backoff_max_seconds",
            self.aggregator.backoff_max_seconds,
        )?;
        positive("buffer.max_age_hours", self.buffer.max_age_hours)?;
        if self.aggregator.max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                key: "aggregator.max_in_flight",
                message: "must be at least 1".into(),
            });
        }
        if self.buffer.max_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "buffer.max_bytes",
                message: format!("{} is below the minimum of 64 KiB", self.buffer.max_bytes),
            });
        }
        if let Some(bytes) = self.buffer.log_backlog_bytes {
            if bytes < 64 * 1024 || bytes > self.buffer.max_bytes {
                return Err(ConfigError::Invalid {
                    key: "buffer.log_backlog_bytes",
                    message: format!(
                        "{bytes} is not between 64 KiB and buffer.max_bytes ({})",
                        self.buffer.max_bytes
                    ),
                });
            }
        }
        self.validate_scrape()?;
        checks::validate(&self.checks).map_err(ConfigError::Checks)?;
        crate::sources::logs::config::validate(&self.logs).map_err(ConfigError::Logs)?;
        if self.push.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "push.listen",
                message: format!("{:?} is not ip:port", self.push.listen),
            });
        }
        if self.push.max_body_bytes == 0 || self.push.max_labels == 0 || self.push.max_series == 0 {
            return Err(ConfigError::Invalid {
                key: "push",
                message: "max_body_bytes, max_labels and max_series must be at least 1".into(),
            });
        }
        Ok(())
    }

    fn validate_scrape(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.scrape {
            let name = t.target_name().to_string();
            let bad = |message: String| ConfigError::Scrape {
                target: name.clone(),
                message,
            };
            if t.job.is_empty() {
                return Err(bad("job must not be empty".into()));
            }
            if !seen.insert(name.clone()) {
                return Err(bad(
                    "two targets have this name; give each a distinct `name`".into(),
                ));
            }
            match reqwest::Url::parse(&t.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                Ok(u) => {
                    return Err(bad(format!(
                        "url {:?}: scheme must be http or https, with a host (got {:?})",
                        t.url,
                        u.scheme()
                    )))
                }
                Err(e) => return Err(bad(format!("url {:?}: {e}", t.url))),
            }
            for (key, v) in [
                ("interval_seconds", t.interval_seconds),
                ("timeout_seconds", t.timeout()),
            ] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(format!("{key} must be a positive number, got {v}")));
                }
            }
            if t.timeout() > t.interval_seconds {
                return Err(bad(format!(
                    "timeout_seconds ({}) is longer than interval_seconds ({})",
                    t.timeout(),
                    t.interval_seconds
                )));
            }
            for name in t.labels.keys() {
                if !fleetwatch_common::validate::is_label_name(name) {
                    return Err(bad(format!("invalid label name {name:?}")));
                }
            }
            if t.max_body_bytes == 0 {
                return Err(bad("max_body_bytes must be at least 1".into()));
            }
        }
        Ok(())
    }
}

/// Reads a TOML file into `T` with environment overrides `PREFIX__SECTION__KEY`; `list_keys`
/// take comma-separated lists. Shared by the agent's and the aggregator's configuration.
pub fn load_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    env_prefix: &str,
    list_keys: &[&str],
) -> Result<T, String> {
    let mut env = config::Environment::with_prefix(env_prefix)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true);
    if !list_keys.is_empty() {
        env = env.list_separator(",");
        for key in list_keys {
            env = env.with_list_parse_key(key);
        }
    }
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize::<T>())
        .map_err(|e| e.to_string())
}

/// Seconds as a `Duration`, saturating on nonsense.
pub fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v).unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let path = dir.join("agent.toml");
        let cfg = AgentConfig::load(&path).unwrap();
        assert!(!cfg.aggregator.addresses.is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[host]\nintervall_seconds = 3\n").unwrap();
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("intervall_seconds"), "{err}");
        assert!(err.contains("a.toml"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[buffer]\nmax_age_hours = 2.0\n").unwrap();
        // A key no other test sets, so parallel tests are not affected.
        std::env::set_var("FLEETWATCH_AGENT__BUFFER__CACHE_BYTES", "1234567");
        let cfg = AgentConfig::load(&p).unwrap();
        std::env::remove_var("FLEETWATCH_AGENT__BUFFER__CACHE_BYTES");
        assert_eq!(cfg.buffer.cache_bytes, 1_234_567);
        assert_eq!(cfg.buffer.max_age_hours, 2.0);
    }

    #[test]
    fn scrape_and_check_tables_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[[scrape]]\njob = \"node\"\nurl = \"http://127.0.0.1:9100/metrics\"\nlabels = { team = \"a\" }\n\
             [[checks]]\nname = \"db\"\n[checks.tcp]\naddress = \"127.0.0.1:5432\"\n",
        )
        .unwrap();
        let cfg = AgentConfig::load(&p).unwrap();
        assert_eq!(cfg.scrape[0].interval_seconds, 15.0);
        assert_eq!(cfg.scrape[0].labels["team"], "a");
        assert_eq!(cfg.checks[0].name, "db");
        for (text, want) in [
            ("[[scrape]]\njob = \"a\"\nurl = \"ftp://x/\"\n", "scheme must be http"),
            ("[[scrape]]\njob = \"a\"\nurl = \"http://x/\"\ntimeout_seconds = 20.0\n", "longer than interval"),
            ("[[scrape]]\njob = \"a\"\nurl = \"http://x/\"\n[[scrape]]\njob = \"a\"\nurl = \"http://y/\"\n", "distinct `name`"),
            ("[[scrape]]\njob = \"a\"\nurl = \"http://x/\"\nlabels = { \"1a\" = \"v\" }\n", "invalid label name"),
            ("[[scrape]]\njob = \"a\"\nurl = \"http://x/\"\nintervall = 1\n", "intervall"),
            ("[push]\nlisten = \"localhost\"\n", "push.listen"),
            ("[[checks]]\nname = \"db\"\n", "db"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = AgentConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn log_sources_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[logs]\nscan_interval_seconds = 2.0\n[logs.journald]\nenabled = true\n\
             [[logs.files]]\nname = \"app\"\npaths = [\"/var/log/app/*.log\"]\nstart_at = \"beginning\"\n\
             multiline_start = \"^\\\\d{4}-\"\nlabels = { service = \"api\" }\nrate_limit_lines_per_second = 500\n",
        )
        .unwrap();
        let cfg = AgentConfig::load(&p).unwrap();
        let f = &cfg.logs.files[0];
        assert_eq!(f.source_name(), "app");
        assert_eq!(f.start_at, crate::sources::logs::config::StartAt::Beginning);
        assert_eq!(f.multiline_start.as_deref(), Some("^\\d{4}-"));
        assert_eq!(f.labels["service"], "api");
        assert!(cfg.logs.journald.enabled);
        for (text, want) in [
            ("[[logs.files]]\npaths = [\"x.log\"]\n", "must be absolute"),
            (
                "[[logs.files]]\npaths = [\"/x.log\"]\nstart_at = \"middle\"\n",
                "middle",
            ),
            (
                "[[logs.files]]\npaths = [\"/x.log\"]\nmax_line_bytes = 99999999\n",
                "max_line_bytes",
            ),
            ("[logs]\nmax_fields = 5000\n", "logs.max_fields"),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = AgentConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[aggregator]\naddresses = [\"nohost\"]\n").unwrap();
        let err = AgentConfig::load(&p).unwrap_err().to_string();
        assert!(err.contains("aggregator.addresses"), "{err}");
        for text in [
            "[buffer]\nlog_backlog_bytes = 1000\n",
            "[buffer]\nmax_bytes = 1048576\nlog_backlog_bytes = 2097152\n",
        ] {
            std::fs::write(&p, text).unwrap();
            let err = AgentConfig::load(&p).unwrap_err().to_string();
            assert!(err.contains("buffer.log_backlog_bytes"), "{text}: {err}");
        }
        std::fs::write(&p, "[buffer]\nlog_backlog_bytes = 65536\n").unwrap();
        assert_eq!(
            AgentConfig::load(&p).unwrap().buffer.log_backlog_limit(),
            65536
        );
        // unset, it fits a small buffer instead of refusing it
        std::fs::write(&p, "[buffer]\nmax_bytes = 131072\n").unwrap();
        assert_eq!(
            AgentConfig::load(&p).unwrap().buffer.log_backlog_limit(),
            65536
        );
    }
}
