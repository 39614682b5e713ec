//! Prometheus rule files evaluated over the store: recording rules write series, alerting rules
//! run the alert lifecycle and write `ALERTS` and `ALERTS_FOR_STATE` like Prometheus. Alert
//! state is saved after every group evaluation (`DATA/rules/state.json`) and restored on start
//! and on reload, so a restart neither loses an alert nor starts its `for` again.

pub mod file;
pub mod lifecycle;
pub mod template;

use crate::promql::{self, QueryValue, Settings};
use crate::store::Storage;
use file::{Group, RuleError, RuleKind};
use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use lifecycle::{Active, Alert, AlertState};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use tracing::{info, warn};

/// Health of a rule at its last evaluation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleHealth {
    /// `ok`, `err` or `unknown` (not evaluated yet).
    pub health: &'static str,
    /// The last error.
    pub last_error: String,
    /// Last evaluation time (ms; 0: never).
    pub last_eval_ms: i64,
    /// Seconds the last evaluation took.
    pub eval_seconds: f64,
}

/// A group with its runtime state.
#[derive(Debug, Clone)]
pub struct GroupState {
    /// The group as loaded.
    pub group: Group,
    /// Per rule: health.
    pub health: Vec<RuleHealth>,
    /// Per rule: alerts by key.
    pub alerts: Vec<BTreeMap<String, Alert>>,
    /// When it was last evaluated (ms).
    pub last_eval_ms: i64,
    /// Seconds the last evaluation took.
    pub eval_seconds: f64,
}

fn rule_key(group: &str, rule: &str, index: usize) -> String {
    format!("{group}\u{1f}{index}\u{1f}{rule}")
}

/// Saved alert state: rule key → alerts.
type Saved = BTreeMap<String, BTreeMap<String, Alert>>;

/// Loads, evaluates and reports the rules.
pub struct RuleManager {
    patterns: Vec<PathBuf>,
    default_interval_ms: i64,
    state_path: PathBuf,
    groups: RwLock<Vec<GroupState>>,
    /// One evaluation pass at a time (evaluation and reload).
    running: Mutex<()>,
    metrics: crate::metrics::Metrics,
}

impl RuleManager {
    /// Loads the rule files named by `patterns` and the saved alert state in `data_dir`.
    pub fn open(
        patterns: Vec<PathBuf>,
        default_interval_ms: i64,
        data_dir: &Path,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, Vec<RuleError>> {
        let state_path = data_dir.join("rules").join("state.json");
        let saved: Saved = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let groups = Self::load(&patterns, default_interval_ms)?;
        let states = Self::attach(groups, &saved);
        Ok(Self {
            patterns,
            default_interval_ms,
            state_path,
            groups: RwLock::new(states),
            running: Mutex::new(()),
            metrics,
        })
    }

    fn load(patterns: &[PathBuf], default_interval_ms: i64) -> Result<Vec<Group>, Vec<RuleError>> {
        let files = file::expand(patterns).map_err(|e| vec![e])?;
        file::load_all(&files, default_interval_ms)
    }

    /// Gives each rule the alerts saved under its key.
    fn attach(groups: Vec<Group>, saved: &Saved) -> Vec<GroupState> {
        groups
            .into_iter()
            .map(|g| {
                let alerts = g
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        saved
                            .get(&rule_key(&g.name, r.name(), i))
                            .cloned()
                            .unwrap_or_default()
                    })
                    .collect();
                let health = vec![
                    RuleHealth {
                        health: "unknown",
                        ..Default::default()
                    };
                    g.rules.len()
                ];
                GroupState {
                    group: g,
                    health,
                    alerts,
                    last_eval_ms: 0,
                    eval_seconds: 0.0,
                }
            })
            .collect()
    }

    fn snapshot(&self) -> Saved {
        let mut saved = Saved::new();
        for g in self.groups.read().unwrap_or_else(|p| p.into_inner()).iter() {
            for (i, r) in g.group.rules.iter().enumerate() {
                if !g.alerts[i].is_empty() {
                    saved.insert(rule_key(&g.group.name, r.name(), i), g.alerts[i].clone());
                }
            }
        }
        saved
    }

    /// Re-reads the rule files. An invalid set is refused and the running rules are kept;
    /// alert state carries over to rules that keep their group, position and name.
    pub fn reload(&self) -> Result<usize, Vec<RuleError>> {
        let _run = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let groups = match Self::load(&self.patterns, self.default_interval_ms) {
            Ok(g) => g,
            Err(errors) => {
                self.metrics
                    .rule_reloads
                    .with_label_values(&["refused"])
                    .inc();
                return Err(errors);
            }
        };
        let saved = self.snapshot();
        let mut states = Self::attach(groups, &saved);
        // keep evaluation times so groups do not all run at once after a reload
        let old = self.groups.read().unwrap_or_else(|p| p.into_inner());
        for s in &mut states {
            if let Some(o) = old.iter().find(|o| o.group.name == s.group.name) {
                s.last_eval_ms = o.last_eval_ms;
            }
        }
        drop(old);
        let n = states.iter().map(|g| g.group.rules.len()).sum();
        *self.groups.write().unwrap_or_else(|p| p.into_inner()) = states;
        self.metrics.rule_reloads.with_label_values(&["ok"]).inc();
        info!(rules = n, "rules reloaded");
        Ok(n)
    }

    /// Evaluates every group whose interval has elapsed at `now`, writes their series, and
    /// saves the alert state. Blocking.
    pub fn evaluate_due(&self, store: &Storage, now: i64) {
        let _run = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let due: Vec<usize> = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .enumerate()
            .filter(|(_, g)| now - g.last_eval_ms >= g.group.interval_ms)
            .map(|(i, _)| i)
            .collect();
        if due.is_empty() {
            return;
        }
        for i in due {
            let group = self.groups.read().unwrap_or_else(|p| p.into_inner())[i].clone();
            let evaluated = evaluate_group(group, store, now, &self.metrics);
            self.groups.write().unwrap_or_else(|p| p.into_inner())[i] = evaluated;
        }
        if let Err(error) = self.save() {
            warn!(%error, "alert state not saved");
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&self.snapshot()).map_err(std::io::Error::other)?;
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.state_path)
    }

    /// The groups with their state, for the API.
    pub fn groups(&self) -> Vec<GroupState> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every pending, firing or recently resolved alert with its rule's group.
    pub fn alerts(&self) -> Vec<Alert> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|g| g.alerts.iter().flat_map(|a| a.values().cloned()))
            .collect()
    }
}

fn evaluate_group(
    mut g: GroupState,
    store: &Storage,
    now: i64,
    metrics: &crate::metrics::Metrics,
) -> GroupState {
    let started = std::time::Instant::now();
    let mut out: Vec<SeriesSamples> = Vec::new();
    for (i, rule) in g.group.rules.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let result = promql::instant(store, Settings::default(), &rule.expr, now);
        let health = &mut g.health[i];
        health.last_eval_ms = now;
        let elems = match result {
            Ok(QueryValue::Vector { elems, .. }) => elems,
            Ok(QueryValue::Scalar { v, .. }) if matches!(rule.kind, RuleKind::Record(_)) => {
                vec![(promql::Labels::from(Vec::new()), v)]
            }
            Ok(_) => {
                health.health = "err";
                metrics
                    .rule_evaluation_failures
                    .with_label_values(&[g.group.name.as_str()])
                    .inc();
                health.last_error = "the expression must return an instant vector".into();
                continue;
            }
            Err(e) => {
                health.health = "err";
                metrics
                    .rule_evaluation_failures
                    .with_label_values(&[g.group.name.as_str()])
                    .inc();
                health.last_error = e.to_string();
                warn!(group = %g.group.name, rule = rule.name(), error = %e, "rule evaluation failed");
                continue;
            }
        };
        if g.group.limit > 0 && elems.len() as u64 > g.group.limit {
            health.health = "err";
            metrics
                .rule_evaluation_failures
                .with_label_values(&[g.group.name.as_str()])
                .inc();
            health.last_error = format!(
                "{} results exceed the group's limit of {}",
                elems.len(),
                g.group.limit
            );
            continue;
        }
        health.health = "ok";
        health.last_error.clear();
        let plain = |labels: &promql::Labels| -> BTreeMap<String, String> {
            labels
                .iter()
                .filter(|l| l.name != "__name__")
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect()
        };
        match &rule.kind {
            RuleKind::Record(name) => {
                for (labels, v) in elems {
                    let mut l = plain(&labels);
                    for (k, t) in &rule.labels {
                        l.insert(k.clone(), t.render(&l, v));
                    }
                    out.push(series(name, &l, now, v));
                }
            }
            RuleKind::Alert {
                name,
                for_ms,
                keep_firing_for_ms,
                annotations,
            } => {
                let active = elems
                    .into_iter()
                    .map(|(labels, v)| {
                        let base = plain(&labels);
                        let mut l = base.clone();
                        for (k, t) in &rule.labels {
                            l.insert(k.clone(), t.render(&base, v));
                        }
                        l.insert("alertname".into(), name.clone());
                        let annotations = annotations
                            .iter()
                            .map(|(k, t)| (k.clone(), t.render(&base, v)))
                            .collect();
                        Active {
                            labels: l,
                            annotations,
                            value: v,
                        }
                    })
                    .collect();
                lifecycle::step(&mut g.alerts[i], active, now, *for_ms, *keep_firing_for_ms);
                for a in g.alerts[i]
                    .values()
                    .filter(|a| a.state != AlertState::Inactive)
                {
                    let mut l = a.labels.clone();
                    l.insert("alertstate".into(), a.state.as_str().into());
                    out.push(series("ALERTS", &l, now, 1.0));
                    out.push(series(
                        "ALERTS_FOR_STATE",
                        &a.labels,
                        now,
                        a.active_at_ms as f64 / 1000.0,
                    ));
                }
            }
        }
        // stored before the next rule runs, as Prometheus commits each rule's results: a
        // later rule of the group sees this one's output of the same evaluation
        if !out.is_empty() {
            if let Err(error) = store.append_system_unsynced(std::mem::take(&mut out), now) {
                warn!(group = %g.group.name, %error, "rule results not stored");
            }
        }
        health.eval_seconds = t0.elapsed().as_secs_f64();
    }
    if let Err(error) = store.sync_log() {
        warn!(group = %g.group.name, %error, "rule results not made durable");
    }
    g.last_eval_ms = now;
    g.eval_seconds = started.elapsed().as_secs_f64();
    g
}

fn series(name: &str, labels: &BTreeMap<String, String>, t: i64, v: f64) -> SeriesSamples {
    SeriesSamples {
        series: Series::new(name, labels.iter().map(|(k, v)| Label::new(k, v))),
        kind: MetricKind::Gauge,
        samples: vec![Sample {
            timestamp_ms: t,
            value: v,
        }],
    }
}

/// An alert as Prometheus' API shows it: labels, annotations, state, `activeAt`, value.
pub fn alert_json(a: &Alert) -> serde_json::Value {
    serde_json::json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at_ms),
        "value": promql::format_value(a.value),
    })
}

/// RFC 3339 with milliseconds, UTC, as Prometheus prints times in its API.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = crate::promql::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_like_prometheus() {
        assert_eq!(rfc3339(1_700_000_000_250), "2023-11-14T22:13:20.250Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
