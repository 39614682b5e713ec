//! From alerts to notifications, Alertmanager's way, inside the aggregator: silenced and
//! inhibited alerts are muted; the rest are routed to receivers by label matchers and grouped
//! by labels; a group is first notified after `group_wait`, again when it changes (not before
//! `group_interval`), and repeated after `repeat_interval` while it fires — unless every firing
//! alert in it is acknowledged. Resolutions are notified once.
//!
//! Sending happens on one task per receiver with retries and backoff (`deliver.rs`; HTTP
//! payloads in `receivers.rs`, SMTP in `email.rs`), so a slow or dead receiver never delays
//! rule evaluation. What was notified (the notification log) is saved
//! with the silences and acknowledgements in `DATA/alerting/state.json` before anything is
//! sent, so a restart repeats nothing.

mod deliver;
pub mod email;
pub mod matcher;
pub mod receivers;

use crate::config::{AlertingConfig, ReceiverConfig};
use crate::metrics::Metrics;
use crate::rules::lifecycle::{Alert, AlertState};
use promql_parser::label::Matcher;
use receivers::{fingerprint, Notification};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// A silence: alerts matching every matcher are not notified between its start and end.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Silence {
    /// Its id.
    pub id: String,
    /// Label matchers as written.
    pub matchers: Vec<String>,
    /// Start (ms).
    pub starts_at_ms: i64,
    /// End (ms); expiring sets it to now.
    pub ends_at_ms: i64,
    /// Who made it.
    pub created_by: String,
    /// Why.
    pub comment: String,
}

impl Silence {
    /// Whether it mutes now.
    pub fn active(&self, now: i64) -> bool {
        self.starts_at_ms <= now && now < self.ends_at_ms
    }
}

/// An acknowledgement of a firing alert: no repeats until it resolves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ack {
    /// Who.
    pub by: String,
    /// When (ms).
    pub at_ms: i64,
    /// Why.
    pub comment: String,
}

/// What was last notified for a group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct LogEntry {
    firing: BTreeSet<String>,
    sent_ms: i64,
}

/// One entry of the alert history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryEntry {
    /// When (ms).
    pub at_ms: i64,
    /// The alert's fingerprint.
    pub fingerprint: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// What happened: `firing`, `resolved`, `acknowledged`, `silenced`, `notified:RECEIVER`.
    pub event: String,
    /// Detail (who acknowledged, the silence id...).
    pub detail: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    silences: Vec<Silence>,
    acks: BTreeMap<String, Ack>,
    log: BTreeMap<String, LogEntry>,
    history: VecDeque<HistoryEntry>,
    /// Alert fingerprint → last state seen (for the history).
    seen: BTreeMap<String, String>,
}

/// A sent or failed notification, for the API.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// Receiver.
    pub receiver: String,
    /// Group key.
    pub group_key: String,
    /// Alerts in it.
    pub alerts: usize,
    /// Decided at (ms).
    pub at_ms: i64,
    /// `sent` or `failed`.
    pub result: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last error, if any.
    pub error: String,
}

const HISTORY_MAX: usize = 10_000;
const DELIVERIES_MAX: usize = 1000;

struct Route {
    receiver: String,
    matchers: Vec<Matcher>,
    group_by: Vec<String>,
    continue_: bool,
}

struct Inhibit {
    source: Vec<Matcher>,
    target: Vec<Matcher>,
    equal: Vec<String>,
}

/// A group being built: receiver, grouping labels, alerts.
type Pending = (String, BTreeMap<String, String>, Vec<Alert>);

/// Per group: when its next flush may happen.
#[derive(Debug, Clone, Copy)]
struct Timer {
    next_flush_ms: i64,
}

/// The notifier.
pub struct Notifier {
    config: AlertingConfig,
    routes: Vec<Route>,
    inhibits: Vec<Inhibit>,
    path: PathBuf,
    state: Mutex<Saved>,
    timers: Mutex<HashMap<String, Timer>>,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Notification>>>,
    deliveries: Mutex<VecDeque<Delivery>>,
    metrics: Metrics,
}

fn ms(s: f64) -> i64 {
    (s * 1000.0) as i64
}

impl Notifier {
    /// Builds the notifier from validated settings, restoring saved state from `data_dir`.
    pub fn new(
        config: AlertingConfig,
        data_dir: &std::path::Path,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    receiver: r.receiver.clone(),
                    matchers: matcher::parse_all(&r.matchers)?,
                    group_by: r
                        .group_by
                        .clone()
                        .unwrap_or_else(|| config.group_by.clone()),
                    continue_: r.continue_,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let inhibits = config
            .inhibit_rules
            .iter()
            .map(|i| {
                Ok(Inhibit {
                    source: matcher::parse_all(&i.source_matchers)?,
                    target: matcher::parse_all(&i.target_matchers)?,
                    equal: i.equal.clone(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let path = data_dir.join("alerting").join("state.json");
        let state: Saved = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Self {
            config,
            routes,
            inhibits,
            path,
            state: Mutex::new(state),
            timers: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            deliveries: Mutex::new(VecDeque::new()),
            metrics,
        })
    }

    /// Starts one sending task per receiver.
    pub fn start(self: &std::sync::Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for r in &self.config.receivers {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.insert(r.name.clone(), tx);
            tasks.push(tokio::spawn(deliver::deliver(self.clone(), r.clone(), rx)));
        }
        tasks
    }

    fn receiver(&self, name: &str) -> Option<&ReceiverConfig> {
        self.config.receivers.iter().find(|r| r.name == name)
    }

    /// Per inhibition rule, the firing alerts that match its source matchers, by the values of
    /// its `equal` labels: found once per pass, so that muting stays linear in the alerts.
    fn inhibitors<'a>(&self, all: &'a [Alert]) -> Vec<Inhibitors<'a>> {
        self.inhibits
            .iter()
            .map(|i| {
                let mut by_key: Inhibitors<'a> = HashMap::new();
                for src in all.iter().filter(|src| {
                    src.state == AlertState::Firing && matcher::matches(&i.source, &src.labels)
                }) {
                    by_key
                        .entry(equal_key(&i.equal, &src.labels))
                        .or_default()
                        .push(&src.labels);
                }
                by_key
            })
            .collect()
    }

    /// Why an alert is muted now, if it is.
    fn muted(
        &self,
        a: &Alert,
        silences: &[ActiveSilence],
        inhibitors: &[Inhibitors<'_>],
    ) -> Option<String> {
        for (id, m) in silences {
            if matcher::matches(m, &a.labels) {
                return Some(format!("silence {id}"));
            }
        }
        for (i, sources) in self.inhibits.iter().zip(inhibitors) {
            if sources.is_empty() || !matcher::matches(&i.target, &a.labels) {
                continue;
            }
            // an alert does not inhibit itself
            let inhibited = sources
                .get(&equal_key(&i.equal, &a.labels))
                .is_some_and(|s| s.iter().any(|labels| **labels != a.labels));
            if inhibited {
                return Some("inhibited".into());
            }
        }
        None
    }

    /// The (receiver, group_by) pairs an alert goes to.
    fn route(&self, a: &Alert) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for r in &self.routes {
            if matcher::matches(&r.matchers, &a.labels) {
                out.push((r.receiver.clone(), r.group_by.clone()));
                if !r.continue_ {
                    return out;
                }
            }
        }
        if out.is_empty() && !self.config.default_receiver.is_empty() {
            out.push((
                self.config.default_receiver.clone(),
                self.config.group_by.clone(),
            ));
        }
        out
    }

    /// Decides what to notify given every alert (pending ones are ignored) at `now`, and queues
    /// it. Never blocks on a receiver.
    pub fn process(&self, alerts: &[Alert], now: i64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        // history of state changes, and acknowledgements end with their alert
        for a in alerts.iter().filter(|a| a.state != AlertState::Pending) {
            let fp = fingerprint(&a.labels);
            let now_state = if a.state == AlertState::Firing {
                "firing"
            } else {
                "resolved"
            };
            if state.seen.get(&fp).map(String::as_str) != Some(now_state) {
                state.seen.insert(fp.clone(), now_state.into());
                push_history(&mut state, now, &fp, &a.labels, now_state, "");
                changed = true;
            }
            if a.state == AlertState::Inactive && state.acks.remove(&fp).is_some() {
                changed = true;
            }
        }
        let live: BTreeSet<String> = alerts.iter().map(|a| fingerprint(&a.labels)).collect();
        let before = state.seen.len();
        state.seen.retain(|fp, _| live.contains(fp));
        changed |= state.seen.len() != before;
        state
            .silences
            .retain(|s| s.ends_at_ms > now - 7 * 86_400_000);

        // group what is not muted
        let mut groups: BTreeMap<String, Pending> = BTreeMap::new();
        let silences = active_silences(&state.silences, now);
        let inhibitors = self.inhibitors(alerts);
        for a in alerts.iter().filter(|a| a.state != AlertState::Pending) {
            if self.muted(a, &silences, &inhibitors).is_some() {
                continue;
            }
            for (receiver, group_by) in self.route(a) {
                let labels: BTreeMap<String, String> = group_by
                    .iter()
                    .filter_map(|l| a.labels.get(l).map(|v| (l.clone(), v.clone())))
                    .collect();
                let key = format!("{receiver}:{}", crate::rules::lifecycle::key(&labels));
                groups
                    .entry(key)
                    .or_insert_with(|| (receiver.clone(), labels, Vec::new()))
                    .2
                    .push(a.clone());
            }
        }
        let mut timers = self.timers.lock().unwrap_or_else(|p| p.into_inner());
        timers.retain(|k, _| groups.contains_key(k));
        let mut to_send = Vec::new();
        for (key, (receiver, group_labels, group_alerts)) in groups {
            let Some(r) = self.receiver(&receiver) else {
                continue;
            };
            let am = r.kind == "alertmanager";
            let (wait, interval, repeat) = if am {
                (0, 0, 60_000)
            } else {
                (
                    ms(self.config.group_wait_seconds),
                    ms(self.config.group_interval_seconds),
                    ms(self.config.repeat_interval_seconds),
                )
            };
            let timer = timers.entry(key.clone()).or_insert(Timer {
                next_flush_ms: now + wait,
            });
            if now < timer.next_flush_ms {
                continue;
            }
            let entry = state.log.get(&key).cloned().unwrap_or_default();
            let firing: BTreeSet<String> = group_alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .map(|a| fingerprint(&a.labels))
                .collect();
            // a resolution is notified once, and only for what was notified firing
            let resolved: Vec<&Alert> = group_alerts
                .iter()
                .filter(|a| {
                    a.state == AlertState::Inactive
                        && entry.firing.contains(&fingerprint(&a.labels))
                })
                .collect();
            let all_acked = firing.iter().all(|fp| state.acks.contains_key(fp));
            let new_firing = firing != entry.firing && !firing.is_subset(&entry.firing);
            let repeat_due = !firing.is_empty() && !all_acked && now - entry.sent_ms >= repeat;
            let send_resolved = r.send_resolved && !resolved.is_empty();
            if !(new_firing || repeat_due || send_resolved) {
                if firing != entry.firing {
                    // alerts left without a notified resolution: remember the smaller set
                    state.log.insert(
                        key.clone(),
                        LogEntry {
                            firing: firing.clone(),
                            sent_ms: entry.sent_ms,
                        },
                    );
                    changed = true;
                }
                timer.next_flush_ms = now + interval;
                continue;
            }
            let mut notified: Vec<Alert> = group_alerts
                .iter()
                .filter(|a| a.state == AlertState::Firing)
                .cloned()
                .collect();
            if r.send_resolved {
                notified.extend(resolved.into_iter().cloned());
            }
            for a in &notified {
                push_history(
                    &mut state,
                    now,
                    &fingerprint(&a.labels),
                    &a.labels,
                    &format!("notified:{receiver}"),
                    "",
                );
            }
            state.log.insert(
                key.clone(),
                LogEntry {
                    firing,
                    sent_ms: now,
                },
            );
            changed = true;
            timer.next_flush_ms = now + interval;
            to_send.push(Notification {
                receiver,
                group_key: key,
                group_labels,
                alerts: notified,
                at_ms: now,
                external_url: self.config.external_url.clone(),
            });
        }
        // groups with nothing firing left need no log entry
        state
            .log
            .retain(|k, e| !e.firing.is_empty() || timers.contains_key(k));
        drop(timers);
        if changed {
            if let Err(error) = save(&self.path, &state) {
                warn!(%error, "alerting state not saved");
            }
        }
        drop(state);
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for n in to_send {
            if let Some(q) = queues.get(&n.receiver) {
                let _ = q.send(n);
            }
        }
    }

    /// Acknowledges the firing alert with `fp`.
    pub fn acknowledge(
        &self,
        fp: &str,
        labels: &BTreeMap<String, String>,
        by: &str,
        comment: &str,
        now: i64,
    ) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.acks.insert(
            fp.to_string(),
            Ack {
                by: by.into(),
                at_ms: now,
                comment: comment.into(),
            },
        );
        push_history(
            &mut state,
            now,
            fp,
            labels,
            "acknowledged",
            &format!("{by}: {comment}"),
        );
        if let Err(error) = save(&self.path, &state) {
            warn!(%error, "alerting state not saved");
        }
    }

    /// The acknowledgement of an alert, if any.
    pub fn ack_of(&self, fp: &str) -> Option<Ack> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acks
            .get(fp)
            .cloned()
    }

    /// Adds a silence; returns its id.
    pub fn silence(&self, mut s: Silence) -> Result<String, String> {
        matcher::parse_all(&s.matchers)?;
        if s.matchers.is_empty() {
            return Err("a silence needs at least one matcher".into());
        }
        if s.ends_at_ms <= s.starts_at_ms {
            return Err("a silence must end after it starts".into());
        }
        let bytes: [u8; 8] = rand::random();
        s.id = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let id = s.id.clone();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        info!(id = %s.id, by = %s.created_by, matchers = ?s.matchers, "silence created");
        state.silences.push(s);
        save(&self.path, &state).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// Ends a silence now. False when there is no such silence.
    pub fn expire(&self, id: &str, now: i64) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = state.silences.iter_mut().find(|s| s.id == id) else {
            return false;
        };
        s.ends_at_ms = s.ends_at_ms.min(now);
        if let Err(error) = save(&self.path, &state) {
            warn!(%error, "alerting state not saved");
        }
        true
    }

    /// Silences, newest first.
    pub fn silences(&self) -> Vec<Silence> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .silences
            .clone();
        s.reverse();
        s
    }

    /// Why each of `alerts` is muted (silenced or inhibited by one of `all`), for the API:
    /// the active silences and the inhibiting alerts are found once for the whole list.
    pub fn muted_reasons(&self, alerts: &[&Alert], all: &[Alert], now: i64) -> Vec<Option<String>> {
        let silences = active_silences(
            &self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .silences,
            now,
        );
        let inhibitors = self.inhibitors(all);
        alerts
            .iter()
            .map(|a| self.muted(a, &silences, &inhibitors))
            .collect()
    }

    /// The alert history, newest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .history
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    /// Recent deliveries, newest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .cloned()
            .collect()
    }
}

/// An inhibition rule's firing source alerts (their labels) by the values of its `equal` labels.
type Inhibitors<'a> = HashMap<Vec<Option<&'a str>>, Vec<&'a BTreeMap<String, String>>>;

fn equal_key<'a>(equal: &[String], labels: &'a BTreeMap<String, String>) -> Vec<Option<&'a str>> {
    equal
        .iter()
        .map(|l| labels.get(l).map(String::as_str))
        .collect()
}

/// A silence in force, its matchers parsed once per pass rather than once per alert.
type ActiveSilence = (String, Vec<Matcher>);

fn active_silences(silences: &[Silence], now: i64) -> Vec<ActiveSilence> {
    silences
        .iter()
        .filter(|s| s.active(now))
        .filter_map(|s| Some((s.id.clone(), matcher::parse_all(&s.matchers).ok()?)))
        .collect()
}

fn push_history(
    state: &mut Saved,
    at_ms: i64,
    fp: &str,
    labels: &BTreeMap<String, String>,
    event: &str,
    detail: &str,
) {
    state.history.push_back(HistoryEntry {
        at_ms,
        fingerprint: fp.into(),
        labels: labels.clone(),
        event: event.into(),
        detail: detail.into(),
    });
    while state.history.len() > HISTORY_MAX {
        state.history.pop_front();
    }
}

fn save(path: &std::path::Path, state: &Saved) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(state).map_err(std::io::Error::other)?,
    )?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReceiverConfig;

    fn alert(state: AlertState, host: &str) -> Alert {
        Alert {
            labels: [
                ("alertname".to_string(), "Down".to_string()),
                ("host".into(), host.into()),
            ]
            .into(),
            annotations: BTreeMap::new(),
            state,
            active_at_ms: 0,
            fired_at_ms: Some(0),
            resolved_at_ms: (state == AlertState::Inactive).then_some(0),
            keep_firing_since_ms: None,
            value: 1.0,
            last_eval_ms: 0,
        }
    }

    fn notifier(dir: &std::path::Path) -> (Notifier, mpsc::UnboundedReceiver<Notification>) {
        let config = AlertingConfig {
            default_receiver: "hook".into(),
            group_wait_seconds: 1.0,
            group_interval_seconds: 1.0,
            repeat_interval_seconds: 10.0,
            receivers: vec![ReceiverConfig {
                name: "hook".into(),
                kind: "webhook".into(),
                url: "http://127.0.0.1:1/".into(),
                max_attempts: 1,
                timeout_seconds: 1.0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let n = Notifier::new(config, dir, Metrics::new()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        n.queues.lock().unwrap().insert("hook".into(), tx);
        (n, rx)
    }

    #[test]
    fn a_firing_host_down_inhibits_only_its_own_host_and_not_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (n, _rx) = notifier(dir.path());
        let mut cpu_a = alert(AlertState::Firing, "a");
        cpu_a.labels.insert("alertname".into(), "CpuHigh".into());
        let mut cpu_b = cpu_a.clone();
        cpu_b.labels.insert("host".into(), "b".into());
        let mut down_a = alert(AlertState::Firing, "a");
        down_a.labels.insert("alertname".into(), "HostDown".into());
        let all = [cpu_a.clone(), cpu_b.clone(), down_a.clone()];
        assert_eq!(
            n.muted_reasons(&[&cpu_a, &cpu_b, &down_a], &all, 0),
            vec![Some("inhibited".to_string()), None, None]
        );
        // a pending HostDown inhibits nothing
        down_a.state = AlertState::Pending;
        let all = [cpu_a.clone(), down_a];
        assert_eq!(n.muted_reasons(&[&cpu_a], &all, 0), vec![None]);
    }

    #[test]
    fn group_wait_repeat_ack_resolve_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (n, mut rx) = notifier(dir.path());
        let firing = [alert(AlertState::Firing, "a")];
        n.process(&firing, 0);
        assert!(rx.try_recv().is_err(), "group_wait first");
        n.process(&firing, 1000);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.alerts.len(), 1);
        n.process(&firing, 2000);
        assert!(
            rx.try_recv().is_err(),
            "unchanged: no resend before repeat_interval"
        );
        n.process(&firing, 11_000);
        assert!(rx.try_recv().is_ok(), "repeat");
        // a restart (new notifier on the same state) sends nothing new
        drop(n);
        let (n, mut rx) = notifier(dir.path());
        n.process(&firing, 12_000);
        n.process(&firing, 13_500);
        assert!(rx.try_recv().is_err(), "no duplicate after restart");
        // acknowledged: no repeat
        let fp = fingerprint(&firing[0].labels);
        n.acknowledge(&fp, &firing[0].labels, "ana", "", 14_000);
        n.process(&firing, 25_000);
        assert!(rx.try_recv().is_err(), "acknowledged");
        // resolved: notified once
        let resolved = [alert(AlertState::Inactive, "a")];
        n.process(&resolved, 26_000);
        let r = rx.try_recv().unwrap();
        assert_eq!(r.alerts[0].state, AlertState::Inactive);
        n.process(&resolved, 28_000);
        assert!(rx.try_recv().is_err(), "resolution sent once");
        assert!(
            n.ack_of(&fp).is_none(),
            "the acknowledgement ends with the alert"
        );
    }
}
