//! The live feed: what a dashboard sees change without reloading. One hub per aggregator sends
//! every connected client (WebSocket, `http/live.rs`) the fleet's hosts with their summaries
//! (`fleet/summary.rs`, computed only while someone listens) every two seconds and
//! alert events as they happen: state changes seen by the rule evaluation, acknowledgements and
//! silences. Messages go through a bounded broadcast channel, encoded once: a slow client misses
//! messages (and is told how many), it never slows the hub or the rule evaluation. New log
//! records (the `logs` topic) come from the log store's own bounded channel and are filtered per
//! client (`http/live.rs`).

use crate::fleet::summary::SummarizedHost;
use crate::metrics::Metrics;
use crate::notify::receivers::fingerprint;
use crate::rules::lifecycle::{Alert, AlertState};
use crate::rules::rfc3339;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// How many messages a client may fall behind before it misses some.
pub const CHANNEL_CAPACITY: usize = 1024;

/// How often the hosts are sent.
pub const HOSTS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What a message is about; clients choose the topics they want.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The fleet's hosts and their status.
    Hosts,
    /// Alert state changes, acknowledgements, silences.
    Alerts,
    /// New log records matching the client's filter.
    Logs,
}

impl Topic {
    /// The name clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Hosts => "hosts",
            Topic::Alerts => "alerts",
            Topic::Logs => "logs",
        }
    }

    /// Parses a client's topic name.
    pub fn parse(name: &str) -> Option<Topic> {
        match name {
            "hosts" => Some(Topic::Hosts),
            "alerts" => Some(Topic::Alerts),
            "logs" => Some(Topic::Logs),
            _ => None,
        }
    }

    /// Every topic.
    pub const ALL: [Topic; 3] = [Topic::Hosts, Topic::Alerts, Topic::Logs];

    /// The topics of a client that names none (logs only when asked for, with a filter).
    pub const DEFAULT: [Topic; 2] = [Topic::Hosts, Topic::Alerts];
}

/// One message, already encoded as JSON text.
#[derive(Debug, Clone)]
pub struct LiveMessage {
    /// Its topic.
    pub topic: Topic,
    /// The JSON text sent to clients.
    pub text: Arc<str>,
}

/// The hub.
pub struct LiveHub {
    tx: broadcast::Sender<LiveMessage>,
    /// Alert fingerprint → state at the last observation; `None` before the first one.
    seen: Mutex<Option<HashMap<String, AlertState>>>,
    metrics: Metrics,
}

impl LiveHub {
    /// A hub with no clients.
    pub fn new(metrics: Metrics) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL_CAPACITY);
        Self {
            tx,
            seen: Mutex::new(None),
            metrics,
        }
    }

    /// A new client's receiver.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveMessage> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (the hosts are not encoded for nobody).
    pub fn has_clients(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn publish(&self, topic: Topic, value: Value) {
        self.metrics
            .live_messages
            .with_label_values(&[topic.as_str()])
            .inc();
        // no receiver is not an error: the message is simply not needed
        let _ = self.tx.send(LiveMessage {
            topic,
            text: value.to_string().into(),
        });
    }

    /// Sends the hosts with their summaries (every [`HOSTS_INTERVAL`]).
    pub fn publish_hosts(&self, hosts: &[SummarizedHost], now: i64) {
        self.publish(Topic::Hosts, hosts_message(hosts, now));
    }

    /// Compares the alerts with the last observation and sends an event for each change:
    /// `pending`, `firing`, `resolved`, and `cleared` (a pending alert whose condition stopped
    /// before its `for` elapsed). The first observation (after a start) only records.
    pub fn observe_alerts(&self, alerts: &[Alert], now: i64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let current: HashMap<String, (AlertState, &Alert)> = alerts
            .iter()
            .map(|a| (fingerprint(&a.labels), (a.state, a)))
            .collect();
        if let Some(before) = seen.as_ref() {
            for (fp, (state, alert)) in &current {
                let event = match (before.get(fp), state) {
                    (None | Some(AlertState::Inactive), AlertState::Pending) => "pending",
                    (
                        None | Some(AlertState::Pending | AlertState::Inactive),
                        AlertState::Firing,
                    ) => "firing",
                    (Some(AlertState::Firing | AlertState::Pending), AlertState::Inactive) => {
                        "resolved"
                    }
                    _ => continue,
                };
                self.publish(Topic::Alerts, alert_event(event, fp, alert, "", now));
            }
            for (fp, state) in before {
                if *state == AlertState::Pending && !current.contains_key(fp) {
                    self.publish(
                        Topic::Alerts,
                        json!({ "type": "alert", "event": "cleared", "at": rfc3339(now), "fingerprint": fp }),
                    );
                }
            }
        }
        *seen = Some(current.into_iter().map(|(fp, (s, _))| (fp, s)).collect());
    }

    /// Sends an operator's action on an alert (`acknowledged`) with its detail.
    pub fn alert_action(&self, event: &str, alert: &Alert, detail: &str, now: i64) {
        let fp = fingerprint(&alert.labels);
        self.publish(Topic::Alerts, alert_event(event, &fp, alert, detail, now));
    }

    /// Sends a silence's creation (`silence_created`) or expiry (`silence_expired`).
    pub fn silence_event(&self, event: &str, id: &str, matchers: &[String], now: i64) {
        self.publish(
            Topic::Alerts,
            json!({ "type": "silence", "event": event, "at": rfc3339(now), "id": id, "matchers": matchers }),
        );
    }
}

fn hosts_message(hosts: &[SummarizedHost], now: i64) -> Value {
    json!({ "type": "hosts", "at": rfc3339(now), "hosts": hosts })
}

fn alert_event(event: &str, fp: &str, a: &Alert, detail: &str, now: i64) -> Value {
    let mut v = crate::rules::alert_json(a);
    v["type"] = "alert".into();
    v["event"] = event.into();
    v["at"] = rfc3339(now).into();
    v["fingerprint"] = fp.into();
    if a.state == AlertState::Inactive {
        v["state"] = "resolved".into();
    }
    if !detail.is_empty() {
        v["detail"] = detail.into();
    }
    v
}

/// The first message a client gets: everything it subscribed to, as it is now.
pub fn snapshot(hosts: Option<&[SummarizedHost]>, alerts: Option<&[Alert]>, now: i64) -> String {
    let mut v = json!({ "type": "snapshot", "at": rfc3339(now) });
    if let Some(hosts) = hosts {
        v["hosts"] = json!(hosts);
    }
    if let Some(alerts) = alerts {
        v["alerts"] = alerts
            .iter()
            .map(|a| {
                let mut j = crate::rules::alert_json(a);
                j["fingerprint"] = fingerprint(&a.labels).into();
                if a.state == AlertState::Inactive {
                    j["state"] = "resolved".into();
                }
                j
            })
            .collect::<Vec<_>>()
            .into();
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(host: &str, state: AlertState) -> Alert {
        Alert::for_test("HostDown", host, state)
    }

    fn events(rx: &mut broadcast::Receiver<LiveMessage>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let v: Value = serde_json::from_str(&m.text).unwrap();
            out.push((
                v["event"].as_str().unwrap().to_string(),
                v["labels"]["host"].as_str().unwrap_or("").to_string(),
            ));
        }
        out
    }

    #[test]
    fn alert_state_changes_become_events_and_the_first_observation_only_records() {
        let hub = LiveHub::new(Metrics::new());
        let mut rx = hub.subscribe();
        hub.observe_alerts(&[alert("a", AlertState::Firing)], 0);
        assert!(events(&mut rx).is_empty(), "a restart is not an event");
        hub.observe_alerts(
            &[
                alert("a", AlertState::Firing),
                alert("b", AlertState::Pending),
            ],
            1,
        );
        assert_eq!(events(&mut rx), vec![("pending".into(), "b".into())]);
        hub.observe_alerts(
            &[
                alert("a", AlertState::Inactive),
                alert("b", AlertState::Firing),
            ],
            2,
        );
        let mut got = events(&mut rx);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("firing".into(), "b".into()),
                ("resolved".into(), "a".into())
            ]
        );
        hub.observe_alerts(&[alert("c", AlertState::Pending)], 3);
        assert_eq!(events(&mut rx), vec![("pending".into(), "c".into())]);
        hub.observe_alerts(&[], 4);
        assert_eq!(events(&mut rx), vec![("cleared".into(), "".into())]);
    }
}
