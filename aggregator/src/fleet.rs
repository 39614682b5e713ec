//! Fleet state: every agent ever seen, first and last seen, version, host facts, clock skew and
//! status (up / stale / down). Kept in sled so that it survives restarts; the `up{host}` series is
//! made from it.

use fleetwatch_common::model::{HostFacts, Label, MetricKind, Sample, Series, SeriesSamples};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::RwLock;

/// A host's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// Data arrived within `stale_after`.
    Up,
    /// No data for `stale_after`, but within `down_after`.
    Stale,
    /// No data for `down_after`.
    Down,
}

impl HostStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Up => "up",
            HostStatus::Stale => "stale",
            HostStatus::Down => "down",
        }
    }
}

/// What the aggregator knows about one host (also the API's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Identity from the agent's certificate.
    pub host: String,
    /// First contact, ms since the epoch.
    pub first_seen_ms: i64,
    /// Last batch or hello, ms since the epoch.
    pub last_seen_ms: i64,
    /// Agent version from its hello.
    pub agent_version: String,
    /// Host facts from its hello.
    pub facts: HostFacts,
    /// Agent clock minus aggregator clock at the last hello.
    pub clock_skew_ms: i64,
    /// Batches buffered on the agent at its last hello.
    pub backlog_batches: u64,
    /// Whether a connection is open now (not persisted as truth: false after a restart).
    #[serde(default)]
    pub connected: bool,
}

/// A host with its computed status.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    /// The record.
    #[serde(flatten)]
    pub record: HostRecord,
    /// Status now.
    pub status: HostStatus,
}

/// The fleet.
pub struct Fleet {
    db: sled::Tree,
    hosts: RwLock<BTreeMap<String, HostRecord>>,
    stale_after_ms: i64,
    down_after_ms: i64,
}

impl Fleet {
    /// Opens the fleet state under `dir`.
    pub fn open(dir: &Path, stale_after_ms: i64, down_after_ms: i64) -> Result<Self, sled::Error> {
        let db = fleetwatch_agent::buffer::open_sled(dir, 4 * 1024 * 1024)?;
        let tree = db.open_tree("hosts")?;
        let mut hosts = BTreeMap::new();
        for item in tree.iter() {
            let (_, v) = item?;
            match serde_json::from_slice::<HostRecord>(&v) {
                Ok(mut rec) => {
                    rec.connected = false;
                    hosts.insert(rec.host.clone(), rec);
                }
                Err(error) => tracing::warn!(%error, "skipping an unreadable fleet record"),
            }
        }
        Ok(Self {
            db: tree,
            hosts: RwLock::new(hosts),
            stale_after_ms,
            down_after_ms,
        })
    }

    fn persist(&self, rec: &HostRecord) {
        match serde_json::to_vec(rec) {
            Ok(bytes) => {
                if let Err(error) = self.db.insert(rec.host.as_bytes(), bytes) {
                    tracing::warn!(%error, host = %rec.host, "could not persist fleet record");
                }
            }
            Err(error) => tracing::warn!(%error, "could not encode fleet record"),
        }
    }

    /// An agent said hello.
    pub fn on_hello(
        &self,
        host: &str,
        version: &str,
        facts: HostFacts,
        skew_ms: i64,
        backlog: u64,
        now_ms: i64,
    ) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        let rec = hosts.entry(host.to_string()).or_insert_with(|| HostRecord {
            host: host.to_string(),
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            agent_version: String::new(),
            facts: HostFacts::default(),
            clock_skew_ms: 0,
            backlog_batches: 0,
            connected: true,
        });
        rec.last_seen_ms = now_ms;
        rec.agent_version = version.to_string();
        rec.facts = facts;
        rec.clock_skew_ms = skew_ms;
        rec.backlog_batches = backlog;
        rec.connected = true;
        self.persist(rec);
    }

    /// Data arrived from `host`.
    pub fn on_data(&self, host: &str, now_ms: i64) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = hosts.get_mut(host) {
            rec.last_seen_ms = now_ms;
        }
    }

    /// The connection of `host` closed.
    pub fn on_disconnect(&self, host: &str) {
        let mut hosts = self.hosts.write().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = hosts.get_mut(host) {
            rec.connected = false;
            self.persist(rec);
        }
    }

    /// Writes last-seen times to disk (called periodically).
    pub fn flush(&self) {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        for rec in hosts.values() {
            self.persist(rec);
        }
        let _ = self.db.flush();
    }

    fn status(&self, rec: &HostRecord, now_ms: i64) -> HostStatus {
        let age = now_ms - rec.last_seen_ms;
        if age <= self.stale_after_ms {
            HostStatus::Up
        } else if age <= self.down_after_ms {
            HostStatus::Stale
        } else {
            HostStatus::Down
        }
    }

    /// Every host with its status.
    pub fn list(&self, now_ms: i64) -> Vec<HostView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .map(|r| HostView {
                record: r.clone(),
                status: self.status(r, now_ms),
            })
            .collect()
    }

    /// One host.
    pub fn get(&self, host: &str, now_ms: i64) -> Option<HostView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).map(|r| HostView {
            record: r.clone(),
            status: self.status(r, now_ms),
        })
    }

    /// The synthesized `up{host}` series: 1 while up, 0 when stale or down.
    pub fn up_series(&self, now_ms: i64) -> Vec<SeriesSamples> {
        self.list(now_ms)
            .into_iter()
            .map(|h| SeriesSamples {
                series: Series::new("up", [Label::new("host", h.record.host)]),
                kind: MetricKind::Gauge,
                samples: vec![Sample {
                    timestamp_ms: now_ms,
                    value: if h.status == HostStatus::Up { 1.0 } else { 0.0 },
                }],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_last_seen_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let f = Fleet::open(dir.path(), 30_000, 90_000).unwrap();
            f.on_hello(
                "web-1",
                "0.1.0",
                HostFacts {
                    cpu_count: 4,
                    ..Default::default()
                },
                5,
                0,
                1_000,
            );
            assert_eq!(f.get("web-1", 2_000).unwrap().status, HostStatus::Up);
            assert_eq!(f.get("web-1", 60_000).unwrap().status, HostStatus::Stale);
            assert_eq!(f.get("web-1", 100_000).unwrap().status, HostStatus::Down);
            let up = f.up_series(100_000);
            assert_eq!(up[0].samples[0].value, 0.0);
            f.on_data("web-1", 99_000);
            assert_eq!(f.up_series(100_000)[0].samples[0].value, 1.0);
            f.flush();
        }
        let f = Fleet::open(dir.path(), 30_000, 90_000).unwrap();
        let h = f.get("web-1", 99_500).unwrap();
        assert_eq!(h.record.facts.cpu_count, 4);
        assert_eq!(h.record.first_seen_ms, 1_000);
        assert_eq!(h.record.last_seen_ms, 99_000);
        assert!(!h.record.connected);
    }
}
