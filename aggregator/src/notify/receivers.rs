//! What each kind of HTTP receiver is sent: Alertmanager's webhook payload (version 4), its v2
//! `POST /api/v2/alerts`, a Slack incoming-webhook message, PagerDuty Events v2 (one trigger or
//! resolve per alert, deduplicated by the alert's fingerprint); and the title that Slack and
//! email share.

use crate::config::ReceiverConfig;
use crate::rules::lifecycle::{Alert, AlertState};
use crate::rules::rfc3339;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// One notification: a group's alerts for one receiver.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The receiver's name.
    pub receiver: String,
    /// The group's key.
    pub group_key: String,
    /// The grouping labels' values.
    pub group_labels: BTreeMap<String, String>,
    /// Firing and newly resolved alerts.
    pub alerts: Vec<Alert>,
    /// When it was decided (ms).
    pub at_ms: i64,
    /// Where to look (the dashboard URL).
    pub external_url: String,
}

/// A stable fingerprint of an alert's labels (hex), as used for acknowledgements and
/// PagerDuty's dedup key.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    // FNV-1a 64 over "name\xffvalue\xff" pairs: stable across runs and versions
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn status(a: &Alert) -> &'static str {
    if a.state == AlertState::Inactive {
        "resolved"
    } else {
        "firing"
    }
}

fn ends_at(a: &Alert) -> String {
    a.resolved_at_ms
        .filter(|_| a.state == AlertState::Inactive)
        .map(rfc3339)
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into())
}

fn common<'a>(
    maps: impl Iterator<Item = &'a BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let mut it = maps;
    let Some(first) = it.next() else {
        return BTreeMap::new();
    };
    let mut out = first.clone();
    for m in it {
        out.retain(|k, v| m.get(k) == Some(v));
    }
    out
}

/// Alertmanager's webhook payload, version 4.
pub fn webhook_payload(n: &Notification) -> Value {
    let firing = n.alerts.iter().any(|a| a.state != AlertState::Inactive);
    json!({
        "version": "4",
        "groupKey": n.group_key,
        "truncatedAlerts": 0,
        "status": if firing { "firing" } else { "resolved" },
        "receiver": n.receiver,
        "groupLabels": n.group_labels,
        "commonLabels": common(n.alerts.iter().map(|a| &a.labels)),
        "commonAnnotations": common(n.alerts.iter().map(|a| &a.annotations)),
        "externalURL": n.external_url,
        "alerts": n.alerts.iter().map(|a| json!({
            "status": status(a),
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.active_at_ms),
            "endsAt": ends_at(a),
            "generatorURL": n.external_url,
            "fingerprint": fingerprint(&a.labels),
        })).collect::<Vec<_>>(),
    })
}

/// Alertmanager's v2 API body: firing alerts end a few minutes ahead (refreshed while they
/// fire), resolved ones at their resolution.
pub fn alertmanager_payload(n: &Notification) -> Value {
    Value::Array(
        n.alerts
            .iter()
            .map(|a| {
                let ends = if a.state == AlertState::Inactive {
                    ends_at(a)
                } else {
                    rfc3339(n.at_ms + 4 * 60_000)
                };
                json!({
                    "labels": a.labels,
                    "annotations": a.annotations,
                    "startsAt": rfc3339(a.active_at_ms),
                    "endsAt": ends,
                    "generatorURL": n.external_url,
                })
            })
            .collect(),
    )
}

/// Alertmanager's default title (email subject, Slack header): `[FIRING:2] HostDown web-1
/// (critical)` — the status with the number firing, the grouping labels' values, then the
/// values of the other labels all the alerts share.
pub fn title(n: &Notification) -> String {
    let firing = n
        .alerts
        .iter()
        .filter(|a| a.state != AlertState::Inactive)
        .count();
    let mut t = if firing > 0 {
        format!("[FIRING:{firing}]")
    } else {
        "[RESOLVED]".to_string()
    };
    for v in n.group_labels.values() {
        t.push(' ');
        t.push_str(v);
    }
    let rest: Vec<String> = common(n.alerts.iter().map(|a| &a.labels))
        .into_iter()
        .filter(|(k, _)| !n.group_labels.contains_key(k))
        .map(|(_, v)| v)
        .collect();
    if !rest.is_empty() {
        t.push_str(&format!(" ({})", rest.join(" ")));
    }
    t
}

/// A Slack message: one line per alert under the title.
pub fn slack_payload(n: &Notification) -> Value {
    let mut text = title(n);
    for a in &n.alerts {
        let summary = a
            .annotations
            .get("summary")
            .cloned()
            .unwrap_or_else(|| crate::rules::lifecycle::key(&a.labels));
        text.push_str(&format!("\n• {}: {summary}", status(a)));
    }
    json!({ "text": text })
}

/// PagerDuty Events v2: one event per alert.
pub fn pagerduty_events(n: &Notification, routing_key: &str) -> Vec<Value> {
    n.alerts
        .iter()
        .map(|a| {
            let severity = match a.labels.get("severity").map(String::as_str) {
                Some("critical") => "critical",
                Some("error") => "error",
                Some("info") => "info",
                _ => "warning",
            };
            let summary = a
                .annotations
                .get("summary")
                .cloned()
                .unwrap_or_else(|| a.labels.get("alertname").cloned().unwrap_or_default());
            json!({
                "routing_key": routing_key,
                "event_action": if a.state == AlertState::Inactive { "resolve" } else { "trigger" },
                "dedup_key": fingerprint(&a.labels),
                "payload": {
                    "summary": summary,
                    "source": a.labels.get("host").cloned().unwrap_or_else(|| "fleetwatch".into()),
                    "severity": severity,
                    "custom_details": { "labels": a.labels, "annotations": a.annotations },
                },
            })
        })
        .collect()
}

/// The HTTP requests (URL, JSON body) that deliver `n` to `r`.
pub fn requests(r: &ReceiverConfig, n: &Notification) -> Vec<(String, Value)> {
    match r.kind.as_str() {
        "alertmanager" => vec![(
            format!("{}/api/v2/alerts", r.url.trim_end_matches('/')),
            alertmanager_payload(n),
        )],
        "slack" => vec![(r.url.clone(), slack_payload(n))],
        "pagerduty" => {
            let url = if r.url.is_empty() {
                "https://events.pagerduty.com/v2/enqueue".to_string()
            } else {
                r.url.clone()
            };
            pagerduty_events(n, &r.routing_key)
                .into_iter()
                .map(|e| (url.clone(), e))
                .collect()
        }
        _ => vec![(r.url.clone(), webhook_payload(n))],
    }
}
