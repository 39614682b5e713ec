//! The alert lifecycle of one alerting rule, as Prometheus runs it: per label set, inactive →
//! pending (while `for` has not elapsed) → firing → resolved, with `keep_firing_for` holding a
//! firing alert after its condition clears. Resolved alerts are kept for 15 minutes so that
//! their resolution can be notified.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long a resolved alert is kept.
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60_000;

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds, `for` has not elapsed.
    Pending,
    /// Firing.
    Firing,
    /// Was firing, no longer.
    Inactive,
}

impl AlertState {
    /// Prometheus' name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Inactive => "inactive",
        }
    }
}

/// One alert of a rule: a label set and where it is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Labels: the result's (without `__name__`), the rule's, and `alertname`.
    pub labels: BTreeMap<String, String>,
    /// Annotations, rendered at the last evaluation.
    pub annotations: BTreeMap<String, String>,
    /// Where it is.
    pub state: AlertState,
    /// When the condition started to hold (ms).
    pub active_at_ms: i64,
    /// When it started firing (ms).
    pub fired_at_ms: Option<i64>,
    /// When it resolved (ms).
    pub resolved_at_ms: Option<i64>,
    /// Since when the condition no longer holds while `keep_firing_for` keeps it firing.
    pub keep_firing_since_ms: Option<i64>,
    /// The expression's value at the last evaluation where it held.
    pub value: f64,
    /// Last evaluation time (ms).
    pub last_eval_ms: i64,
}

/// A result of the rule's expression at one evaluation: its alert labels, annotations, value.
pub struct Active {
    /// Alert labels.
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

#[cfg(test)]
impl Alert {
    /// An alert named `name` on `host` in `state`, everything else zero (for unit tests).
    pub(crate) fn for_test(name: &str, host: &str, state: AlertState) -> Alert {
        Alert {
            labels: BTreeMap::from([
                ("alertname".to_string(), name.to_string()),
                ("host".to_string(), host.to_string()),
            ]),
            annotations: BTreeMap::new(),
            state,
            active_at_ms: 0,
            fired_at_ms: None,
            resolved_at_ms: None,
            keep_firing_since_ms: None,
            value: 1.0,
            last_eval_ms: 0,
        }
    }
}

/// The key of an alert among a rule's alerts.
pub fn key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Advances a rule's alerts to evaluation time `now` given what the expression returned.
pub fn step(
    alerts: &mut BTreeMap<String, Alert>,
    active: Vec<Active>,
    now: i64,
    for_ms: i64,
    keep_firing_for_ms: i64,
) {
    let mut seen = std::collections::BTreeSet::new();
    for a in active {
        let k = key(&a.labels);
        seen.insert(k.clone());
        match alerts.get_mut(&k) {
            Some(existing) if existing.state != AlertState::Inactive => {
                existing.value = a.value;
                existing.annotations = a.annotations;
                existing.keep_firing_since_ms = None;
                existing.last_eval_ms = now;
            }
            _ => {
                alerts.insert(
                    k,
                    Alert {
                        labels: a.labels,
                        annotations: a.annotations,
                        state: AlertState::Pending,
                        active_at_ms: now,
                        fired_at_ms: None,
                        resolved_at_ms: None,
                        keep_firing_since_ms: None,
                        value: a.value,
                        last_eval_ms: now,
                    },
                );
            }
        }
    }
    alerts.retain(|k, a| {
        if seen.contains(k) {
            return true;
        }
        match a.state {
            AlertState::Pending => false,
            AlertState::Inactive => now - a.resolved_at_ms.unwrap_or(now) < RESOLVED_RETENTION_MS,
            AlertState::Firing => {
                if keep_firing_for_ms > 0 {
                    let since = *a.keep_firing_since_ms.get_or_insert(now);
                    if now - since < keep_firing_for_ms {
                        a.last_eval_ms = now;
                        return true;
                    }
                }
                a.state = AlertState::Inactive;
                a.resolved_at_ms = Some(now);
                a.keep_firing_since_ms = None;
                a.last_eval_ms = now;
                true
            }
        }
    });
    for a in alerts.values_mut() {
        if a.state == AlertState::Pending && now - a.active_at_ms >= for_ms {
            a.state = AlertState::Firing;
            a.fired_at_ms = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(host: &str) -> Active {
        Active {
            labels: [
                ("alertname".to_string(), "Down".to_string()),
                ("host".into(), host.into()),
            ]
            .into(),
            annotations: BTreeMap::new(),
            value: 1.0,
        }
    }

    fn states(alerts: &BTreeMap<String, Alert>) -> Vec<(String, AlertState)> {
        alerts
            .values()
            .map(|a| (a.labels["host"].clone(), a.state))
            .collect()
    }

    #[test]
    fn pending_firing_resolved() {
        let mut alerts = BTreeMap::new();
        step(&mut alerts, vec![active("a")], 0, 120_000, 0);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Pending)]);
        step(&mut alerts, vec![active("a")], 60_000, 120_000, 0);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Pending)]);
        step(&mut alerts, vec![active("a")], 120_000, 120_000, 0);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Firing)]);
        assert_eq!(alerts.values().next().unwrap().active_at_ms, 0);
        step(&mut alerts, vec![], 180_000, 120_000, 0);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Inactive)]);
        // kept for notification, then dropped
        step(
            &mut alerts,
            vec![],
            180_000 + RESOLVED_RETENTION_MS,
            120_000,
            0,
        );
        assert!(alerts.is_empty());
    }

    #[test]
    fn a_pending_alert_that_clears_is_dropped_and_restarts_its_wait() {
        let mut alerts = BTreeMap::new();
        step(&mut alerts, vec![active("a")], 0, 120_000, 0);
        step(&mut alerts, vec![], 60_000, 120_000, 0);
        assert!(alerts.is_empty());
        step(&mut alerts, vec![active("a")], 90_000, 120_000, 0);
        step(&mut alerts, vec![active("a")], 180_000, 120_000, 0);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Pending)]);
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let mut alerts = BTreeMap::new();
        step(&mut alerts, vec![active("a")], 0, 0, 300_000);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Firing)]);
        step(&mut alerts, vec![], 60_000, 0, 300_000);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Firing)]);
        step(&mut alerts, vec![], 359_000, 0, 300_000);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Firing)]);
        step(&mut alerts, vec![], 360_000, 0, 300_000);
        assert_eq!(states(&alerts), vec![("a".into(), AlertState::Inactive)]);
    }
}
