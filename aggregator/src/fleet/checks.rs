//! Health-check state per host: the latest result of every check with its detail, when its
//! status began, and a short history of status changes. Pure data and rules; the fleet
//! ([`super::Fleet`]) keeps it in memory and in sled.
//!
//! Results are taken in timestamp order: one older than the latest already known for its check
//! (a backlog drained after fresh data) changes neither the latest nor the transitions; its
//! series are still stored.

use fleetwatch_common::model::{CheckResult, CheckStatus};
use serde::{Deserialize, Serialize};

/// Status changes kept per check.
pub const MAX_TRANSITIONS: usize = 20;

/// A check's or a host's health. Ordered from least to most severe after `Unknown`, so the
/// worst of several known statuses is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Nothing known: no checks, or every check's latest result is stale.
    Unknown,
    /// Working as expected.
    Healthy,
    /// Working, but past a warning threshold.
    Degraded,
    /// Not working.
    Unhealthy,
}

impl From<CheckStatus> for Health {
    fn from(s: CheckStatus) -> Self {
        match s {
            CheckStatus::Healthy => Health::Healthy,
            CheckStatus::Degraded => Health::Degraded,
            CheckStatus::Unhealthy => Health::Unhealthy,
        }
    }
}

impl Health {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// One status change of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Time of the first result with the new status, ms since the epoch (agent clock).
    pub timestamp_ms: i64,
    /// Status before (`unknown` for a check's first result).
    pub from: Health,
    /// Status after.
    pub to: Health,
    /// The detail of the result that changed it.
    pub detail: String,
}

/// What the aggregator knows about one check of one host (persisted, and the API's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckState {
    /// The check's name.
    pub name: String,
    /// Latest status.
    pub status: Health,
    /// Time of the latest result, ms since the epoch (agent clock).
    pub timestamp_ms: i64,
    /// How long the latest run took.
    pub duration_seconds: f64,
    /// The latest result's detail.
    pub detail: String,
    /// Since when the status has been what it is (first result with it).
    pub since_ms: i64,
    /// Gap between the last two results, ms (0 until there are two): the check's cadence.
    pub interval_ms: i64,
    /// Recent status changes, oldest first, at most [`MAX_TRANSITIONS`].
    pub transitions: Vec<Transition>,
}

impl CheckState {
    /// The state after a check's first result.
    pub fn new(r: &CheckResult) -> Self {
        let status = Health::from(r.status);
        Self {
            name: r.name.clone(),
            status,
            timestamp_ms: r.timestamp_ms,
            duration_seconds: r.duration_seconds,
            detail: r.detail.clone(),
            since_ms: r.timestamp_ms,
            interval_ms: 0,
            transitions: vec![Transition {
                timestamp_ms: r.timestamp_ms,
                from: Health::Unknown,
                to: status,
                detail: r.detail.clone(),
            }],
        }
    }

    /// Takes a newer result; returns false (and changes nothing) for one not newer than the
    /// latest.
    pub fn apply(&mut self, r: &CheckResult) -> bool {
        if r.timestamp_ms <= self.timestamp_ms {
            return false;
        }
        let status = Health::from(r.status);
        if status != self.status {
            self.transitions.push(Transition {
                timestamp_ms: r.timestamp_ms,
                from: self.status,
                to: status,
                detail: r.detail.clone(),
            });
            if self.transitions.len() > MAX_TRANSITIONS {
                let extra = self.transitions.len() - MAX_TRANSITIONS;
                self.transitions.drain(..extra);
            }
            self.since_ms = r.timestamp_ms;
        }
        self.interval_ms = r.timestamp_ms - self.timestamp_ms;
        self.status = status;
        self.timestamp_ms = r.timestamp_ms;
        self.duration_seconds = r.duration_seconds;
        self.detail = r.detail.clone();
        true
    }

    /// Stale: no result for three of its intervals and at least `min_ms` (the fleet's down
    /// time). A stale check (removed from the agent, or its host down) does not count in the
    /// host's health.
    pub fn is_stale(&self, now_ms: i64, min_ms: i64) -> bool {
        now_ms - self.timestamp_ms > min_ms.max(self.interval_ms.saturating_mul(3))
    }
}

/// The host's health from its checks: the worst status of the checks that are not stale;
/// unknown when there are none.
pub fn host_health<'a>(
    checks: impl IntoIterator<Item = &'a CheckState>,
    now_ms: i64,
    min_stale_ms: i64,
) -> Health {
    checks
        .into_iter()
        .filter(|c| !c.is_stale(now_ms, min_stale_ms))
        .map(|c| c.status)
        .max()
        .unwrap_or(Health::Unknown)
}

/// A check as the API shows it: its state and whether it is stale.
#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    /// The state.
    #[serde(flatten)]
    pub state: CheckState,
    /// No result for a while; not counted in the host's health.
    pub stale: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(ts: i64, status: CheckStatus, detail: &str) -> CheckResult {
        CheckResult {
            name: "redis".into(),
            timestamp_ms: ts,
            status,
            duration_seconds: 0.01,
            detail: detail.into(),
        }
    }

    #[test]
    fn transitions_record_changes_only_and_stay_bounded() {
        let mut s = CheckState::new(&result(1_000, CheckStatus::Healthy, "ok"));
        assert!(s.apply(&result(2_000, CheckStatus::Healthy, "ok")));
        assert_eq!(s.transitions.len(), 1);
        assert!(s.apply(&result(3_000, CheckStatus::Degraded, "list votes has 600")));
        assert_eq!(s.since_ms, 3_000);
        assert_eq!(s.interval_ms, 1_000);
        let t = s.transitions.last().unwrap();
        assert_eq!((t.from, t.to), (Health::Healthy, Health::Degraded));
        assert_eq!(t.detail, "list votes has 600");
        for i in 0..50 {
            let st = if i % 2 == 0 {
                CheckStatus::Unhealthy
            } else {
                CheckStatus::Healthy
            };
            s.apply(&result(4_000 + i * 1_000, st, "flap"));
        }
        assert_eq!(s.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(s.transitions.last().unwrap().timestamp_ms, 53_000);
    }

    #[test]
    fn older_result_changes_nothing() {
        let mut s = CheckState::new(&result(5_000, CheckStatus::Unhealthy, "down"));
        let before = s.clone();
        assert!(!s.apply(&result(4_000, CheckStatus::Healthy, "old")));
        assert!(!s.apply(&result(5_000, CheckStatus::Healthy, "same time")));
        assert_eq!(s, before);
    }

    #[test]
    fn host_health_is_the_worst_fresh_check() {
        let healthy = CheckState::new(&result(100_000, CheckStatus::Healthy, ""));
        let degraded = CheckState::new(&result(100_000, CheckStatus::Degraded, ""));
        let old_unhealthy = CheckState::new(&result(1_000, CheckStatus::Unhealthy, ""));
        assert_eq!(host_health([], 100_000, 90_000), Health::Unknown);
        assert_eq!(host_health([&healthy], 100_000, 90_000), Health::Healthy);
        assert_eq!(
            host_health([&healthy, &degraded], 100_000, 90_000),
            Health::Degraded
        );
        // The unhealthy result is 99 s old: stale, not counted.
        assert_eq!(
            host_health([&healthy, &old_unhealthy], 100_000, 90_000),
            Health::Healthy
        );
        assert_eq!(
            host_health([&healthy, &old_unhealthy], 50_000, 90_000),
            Health::Unhealthy
        );
        assert_eq!(
            serde_json::to_string(&Health::Unhealthy).unwrap(),
            "\"unhealthy\""
        );
    }

    #[test]
    fn a_slow_check_is_stale_after_three_of_its_intervals() {
        let mut s = CheckState::new(&result(0, CheckStatus::Healthy, ""));
        s.apply(&result(600_000, CheckStatus::Healthy, ""));
        assert!(!s.is_stale(600_000 + 1_500_000, 90_000));
        assert!(s.is_stale(600_000 + 1_800_001, 90_000));
    }
}
