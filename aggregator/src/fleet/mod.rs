//! Fleet state: every agent ever seen, first and last seen, version, host facts, clock skew,
//! status (up / stale / down), and the latest health-check results with the host's overall
//! health. Kept in sled so that it survives restarts; the `up{host}` series is made from it.
//! `summary.rs` adds each host's figures (CPU, memory, disk, network, load, firing alerts).

pub mod checks;
pub mod summary;

use checks::{CheckState, CheckView, Health};
use fleetwatch_common::model::{
    CheckResult, HostFacts, Label, MetricKind, Sample, Series, SeriesSamples,
};
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
    /// Health from its checks: the worst status of checks that are not stale; `unknown` when
    /// it has none.
    pub health: Health,
}

/// The fleet.
pub struct Fleet {
    db: sled::Tree,
    hosts: RwLock<BTreeMap<String, HostRecord>>,
    checks_db: sled::Tree,
    /// host → check name → state. Lock order: `hosts` before `checks`.
    checks: RwLock<BTreeMap<String, BTreeMap<String, CheckState>>>,
    stale_after_ms: i64,
    down_after_ms: i64,
    /// The host summary's last fleet-wide pass (`summary.rs`).
    pub(crate) summary_pass: summary::FleetPass,
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
        let checks_db = db.open_tree("checks")?;
        let mut checks: BTreeMap<String, BTreeMap<String, CheckState>> = BTreeMap::new();
        for item in checks_db.iter() {
            let (key, v) = item?;
            let host = key.split(|b| *b == 0).next().unwrap_or_default();
            match serde_json::from_slice::<CheckState>(&v) {
                Ok(state) => {
                    checks
                        .entry(String::from_utf8_lossy(host).into_owned())
                        .or_default()
                        .insert(state.name.clone(), state);
                }
                Err(error) => tracing::warn!(%error, "skipping an unreadable check record"),
            }
        }
        Ok(Self {
            db: tree,
            hosts: RwLock::new(hosts),
            checks_db,
            checks: RwLock::new(checks),
            stale_after_ms,
            down_after_ms,
            summary_pass: summary::FleetPass::default(),
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
        let _ = self.checks_db.flush();
    }

    /// Takes the check results of one applied batch from `host`: the latest result per check,
    /// status changes, persisted. Results older than the latest known for their check change
    /// nothing. Returns how many changed the state.
    pub fn on_checks(&self, host: &str, results: &[CheckResult]) -> usize {
        if results.is_empty() {
            return 0;
        }
        let mut all = self.checks.write().unwrap_or_else(|p| p.into_inner());
        let host_checks = all.entry(host.to_string()).or_default();
        let mut changed = 0;
        for r in results {
            let state = match host_checks.get_mut(&r.name) {
                Some(state) => {
                    if !state.apply(r) {
                        continue;
                    }
                    state
                }
                None => host_checks
                    .entry(r.name.clone())
                    .or_insert_with(|| CheckState::new(r)),
            };
            changed += 1;
            match serde_json::to_vec(state) {
                Ok(bytes) => {
                    if let Err(error) = self.checks_db.insert(check_key(host, &r.name), bytes) {
                        tracing::warn!(%error, %host, check = %r.name, "could not persist check state");
                    }
                }
                Err(error) => tracing::warn!(%error, "could not encode check state"),
            }
        }
        changed
    }

    /// The checks of `host` with their latest result and recent transitions, by name; `None`
    /// for a host never seen.
    pub fn checks(&self, host: &str, now_ms: i64) -> Option<Vec<CheckView>> {
        let known = self
            .hosts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(host);
        let all = self.checks.read().unwrap_or_else(|p| p.into_inner());
        let states = all.get(host);
        if !known && states.is_none() {
            return None;
        }
        Some(
            states
                .into_iter()
                .flat_map(|m| m.values())
                .map(|s| CheckView {
                    stale: s.is_stale(now_ms, self.down_after_ms),
                    state: s.clone(),
                })
                .collect(),
        )
    }

    fn health(
        &self,
        all: &BTreeMap<String, BTreeMap<String, CheckState>>,
        host: &str,
        now_ms: i64,
    ) -> Health {
        all.get(host)
            .map(|m| checks::host_health(m.values(), now_ms, self.down_after_ms))
            .unwrap_or(Health::Unknown)
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

    /// Every host with its status and health.
    pub fn list(&self, now_ms: i64) -> Vec<HostView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        hosts
            .values()
            .map(|r| HostView {
                record: r.clone(),
                status: self.status(r, now_ms),
                health: self.health(&checks, &r.host, now_ms),
            })
            .collect()
    }

    /// One host.
    pub fn get(&self, host: &str, now_ms: i64) -> Option<HostView> {
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner());
        let checks = self.checks.read().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).map(|r| HostView {
            record: r.clone(),
            status: self.status(r, now_ms),
            health: self.health(&checks, host, now_ms),
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

/// The sled key of a check: host, a zero byte, the check's name (neither holds a zero byte:
/// host names come from certificates, check names are validated).
fn check_key(host: &str, check: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(host.len() + 1 + check.len());
    key.extend_from_slice(host.as_bytes());
    key.push(0);
    key.extend_from_slice(check.as_bytes());
    key
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

    fn check(name: &str, ts: i64, status: fleetwatch_common::model::CheckStatus) -> CheckResult {
        CheckResult {
            name: name.into(),
            timestamp_ms: ts,
            status,
            duration_seconds: 0.002,
            detail: format!("{name} at {ts}"),
        }
    }

    #[test]
    fn check_state_and_host_health_survive_reopen() {
        use fleetwatch_common::model::CheckStatus::*;
        let dir = tempfile::tempdir().unwrap();
        {
            let f = Fleet::open(dir.path(), 30_000, 90_000).unwrap();
            f.on_hello("web-1", "0.1.0", HostFacts::default(), 0, 0, 1_000);
            f.on_hello("web-2", "0.1.0", HostFacts::default(), 0, 0, 1_000);
            assert_eq!(f.get("web-1", 1_000).unwrap().health, Health::Unknown);
            assert_eq!(f.checks("web-1", 1_000).unwrap().len(), 0);
            assert!(f.checks("nobody", 1_000).is_none());
            let n = f.on_checks(
                "web-1",
                &[check("redis", 2_000, Healthy), check("db", 2_000, Healthy)],
            );
            assert_eq!(n, 2);
            assert_eq!(f.get("web-1", 2_000).unwrap().health, Health::Healthy);
            f.on_checks("web-1", &[check("redis", 3_000, Degraded)]);
            assert_eq!(f.get("web-1", 3_000).unwrap().health, Health::Degraded);
            f.on_checks("web-1", &[check("db", 4_000, Unhealthy)]);
            let list = f.list(4_000);
            assert_eq!(list[0].health, Health::Unhealthy);
            assert_eq!(list[1].health, Health::Unknown);
            // An older result (a backlog) changes nothing.
            assert_eq!(f.on_checks("web-1", &[check("db", 2_500, Healthy)]), 0);
            f.flush();
        }
        let f = Fleet::open(dir.path(), 30_000, 90_000).unwrap();
        let checks = f.checks("web-1", 4_000).unwrap();
        assert_eq!(checks.len(), 2);
        let db = checks.iter().find(|c| c.state.name == "db").unwrap();
        assert_eq!(db.state.status, Health::Unhealthy);
        assert_eq!(db.state.detail, "db at 4000");
        assert_eq!(db.state.transitions.len(), 2);
        assert_eq!(db.state.transitions[1].from, Health::Healthy);
        assert!(!db.stale);
        assert_eq!(f.get("web-1", 4_000).unwrap().health, Health::Unhealthy);
        // No results for longer than the down time: stale, and the host's health is unknown.
        assert_eq!(f.get("web-1", 200_000).unwrap().health, Health::Unknown);
        assert!(f.checks("web-1", 200_000).unwrap()[0].stale);
        let json = serde_json::to_value(f.get("web-1", 4_000).unwrap()).unwrap();
        assert_eq!(json["health"], "unhealthy");
        assert_eq!(json["status"], "up");
    }
}
