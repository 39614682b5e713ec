//! The Redis check: connect, read `INFO` (uptime, memory used) and the length (`LLEN`) of
//! named list keys, such as job queues, each against its own warn / critical thresholds: a
//! backlog of 600 with `warn = 500` is degraded.

use super::threshold::{Direction, Threshold};
use super::{error_chain, Probe, Value};
use fleetwatch_common::model::CheckStatus;
use serde::Deserialize;

/// `[checks.redis]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisCheck {
    /// `redis://[user:password@]host:port[/db]`, `rediss://` is not supported; a Unix socket is
    /// `redis+unix:///run/redis/redis.sock`.
    pub url: String,
    /// `used_memory` in bytes: above `warn` degraded, above `critical` unhealthy.
    #[serde(default)]
    pub memory_bytes: Threshold,
    /// List keys whose length (`LLEN`) is watched.
    #[serde(default)]
    pub lists: Vec<RedisList>,
}

/// One watched list key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisList {
    /// The key.
    pub key: String,
    /// Length above which the check is degraded.
    pub warn: Option<f64>,
    /// Length above which the check is unhealthy.
    pub critical: Option<f64>,
}

impl RedisList {
    fn threshold(&self) -> Threshold {
        Threshold {
            warn: self.warn,
            critical: self.critical,
        }
    }
}

impl RedisCheck {
    pub(super) fn validate(&self) -> Result<(), String> {
        let client = ::redis::Client::open(self.url.as_str())
            .map_err(|e| format!("redis.url {:?}: {e}", redact(&self.url)))?;
        drop(client);
        if self.url.starts_with("rediss://") {
            return Err(
                "redis.url: rediss:// (TLS) is not supported; use redis:// on loopback \
                        or a Unix socket"
                    .into(),
            );
        }
        self.memory_bytes
            .validate("redis.memory_bytes", Direction::Above)?;
        let mut seen = std::collections::HashSet::new();
        for list in &self.lists {
            if list.key.is_empty() {
                return Err("redis.lists: a key is empty".into());
            }
            if !seen.insert(&list.key) {
                return Err(format!("redis.lists: key {:?} is listed twice", list.key));
            }
            list.threshold()
                .validate(&format!("redis.lists[{:?}]", list.key), Direction::Above)?;
        }
        Ok(())
    }

    pub(super) async fn probe(&self) -> Probe {
        let target = redact(&self.url);
        let client = match ::redis::Client::open(self.url.as_str()) {
            Ok(c) => c,
            Err(e) => return Probe::unhealthy(format!("redis {target}: {}", error_chain(&e))),
        };
        let mut con = match client.get_multiplexed_async_connection().await {
            Ok(c) => c,
            Err(e) => {
                return Probe::unhealthy(format!("connecting to {target}: {}", error_chain(&e)))
            }
        };
        let info: String = match ::redis::cmd("INFO").query_async(&mut con).await {
            Ok(i) => i,
            Err(e) => return Probe::unhealthy(format!("INFO on {target}: {}", error_chain(&e))),
        };
        let mut values = Vec::new();
        let mut findings = Vec::new();
        let mut summary = format!("redis {target} up");
        if let Some(uptime) = info_field(&info, "uptime_in_seconds") {
            values.push(Value::new("fleetwatch_check_redis_uptime_seconds", uptime));
            summary.push_str(&format!(" {uptime} s"));
        }
        if let Some(used) = info_field(&info, "used_memory") {
            values.push(Value::new("fleetwatch_check_redis_memory_used_bytes", used));
            let status = self.memory_bytes.judge(used, Direction::Above);
            if status != CheckStatus::Healthy {
                findings.push((status, format!("memory used {used} bytes")));
            }
            summary.push_str(&format!(", {used} bytes used"));
        }
        for list in &self.lists {
            match ::redis::cmd("LLEN")
                .arg(&list.key)
                .query_async::<i64>(&mut con)
                .await
            {
                Ok(len) => {
                    let len = len as f64;
                    values.push(
                        Value::new("fleetwatch_check_redis_list_length", len)
                            .with_label("key", list.key.clone()),
                    );
                    let status = list.threshold().judge(len, Direction::Above);
                    if status != CheckStatus::Healthy {
                        let limit = match status {
                            CheckStatus::Unhealthy => list.critical,
                            _ => list.warn,
                        }
                        .unwrap_or_default();
                        findings.push((
                            status,
                            format!("list {:?} has {len} items (above {limit})", list.key),
                        ));
                    }
                    summary.push_str(&format!(", {} {len}", list.key));
                }
                Err(e) => findings.push((
                    CheckStatus::Unhealthy,
                    format!("LLEN {:?}: {}", list.key, error_chain(&e)),
                )),
            }
        }
        Probe::from_findings(findings, summary, values)
    }
}

/// A numeric field of `INFO` output (`name:value` lines).
pub(super) fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines().find_map(|line| {
        let (k, v) = line.trim_end().split_once(':')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

/// The URL without its password, for details and logs.
pub(super) fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}
