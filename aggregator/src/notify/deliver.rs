//! The sending side of the notifier: one task per receiver takes its notifications in order
//! and delivers each with retries and exponential backoff, whatever carries it (HTTP for
//! webhook, Alertmanager, Slack and PagerDuty; SMTP for email). Every attempt and every result
//! is counted, and each delivery lands in the notification log the API shows.

use super::email::Mailer;
use super::receivers::{self, Notification};
use super::{Delivery, Notifier, DELIVERIES_MAX};
use crate::config::ReceiverConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// How a receiver's notifications travel.
enum Channel {
    Http(reqwest::Client),
    Email(Box<Mailer>),
}

/// One request or message of a notification (PagerDuty sends one request per alert).
enum Outgoing {
    Http {
        url: String,
        body: serde_json::Value,
    },
    Email(Box<lettre::Message>),
}

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    error: String,
    retry: bool,
}

impl Channel {
    fn open(r: &ReceiverConfig) -> Result<Self, String> {
        if r.kind == "email" {
            return Ok(Channel::Email(Box::new(Mailer::new(r)?)));
        }
        reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(r.timeout_seconds))
            .user_agent(concat!("fleetwatch-aggregator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(Channel::Http)
            .map_err(|e| format!("receiver {:?}: no HTTP client: {e}", r.name))
    }

    fn outgoing(&self, r: &ReceiverConfig, n: &Notification) -> Result<Vec<Outgoing>, String> {
        match self {
            Channel::Http(_) => Ok(receivers::requests(r, n)
                .into_iter()
                .map(|(url, body)| Outgoing::Http { url, body })
                .collect()),
            Channel::Email(m) => Ok(vec![Outgoing::Email(Box::new(m.message(n)?))]),
        }
    }

    async fn send(&self, out: &Outgoing) -> Result<(), Failure> {
        match (self, out) {
            (Channel::Http(client), Outgoing::Http { url, body }) => {
                let request = client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .body(body.to_string());
                match request.send().await {
                    Ok(resp) if resp.status().is_success() => Ok(()),
                    Ok(resp) => Err(Failure {
                        error: format!("HTTP {}", resp.status()),
                        // a 4xx other than 429 will not get better
                        retry: !(resp.status().is_client_error() && resp.status().as_u16() != 429),
                    }),
                    Err(e) => Err(Failure {
                        error: e.to_string(),
                        retry: true,
                    }),
                }
            }
            (Channel::Email(mailer), Outgoing::Email(m)) => {
                mailer.send(m).await.map_err(|e| Failure {
                    error: e.message,
                    retry: e.retry,
                })
            }
            _ => Err(Failure {
                error: "internal: message and channel of different kinds".into(),
                retry: false,
            }),
        }
    }
}

/// Sends a receiver's notifications in order, each with retries and backoff.
pub(super) async fn deliver(
    n: Arc<Notifier>,
    r: ReceiverConfig,
    mut rx: mpsc::UnboundedReceiver<Notification>,
) {
    let channel = Channel::open(&r);
    if let Err(error) = &channel {
        warn!(receiver = %r.name, %error, "receiver can not send; its notifications will fail");
    }
    while let Some(note) = rx.recv().await {
        let (attempts, error) = match &channel {
            Ok(c) => match c.outgoing(&r, &note) {
                Ok(pending) => attempt_all(&n, &r, c, pending).await,
                Err(error) => (0, Some(error)),
            },
            Err(error) => (0, Some(error.clone())),
        };
        let result = if error.is_none() { "sent" } else { "failed" };
        n.metrics
            .notifications
            .with_label_values(&[r.name.as_str(), result])
            .inc();
        if let Some(error) = &error {
            warn!(receiver = %r.name, group = %note.group_key, %error, attempts, "notification failed");
        }
        let mut d = n.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        d.push_back(Delivery {
            receiver: r.name.clone(),
            group_key: note.group_key.clone(),
            alerts: note.alerts.len(),
            at_ms: note.at_ms,
            result: result.into(),
            attempts,
            error: error.unwrap_or_default(),
        });
        while d.len() > DELIVERIES_MAX {
            d.pop_front();
        }
    }
}

/// Sends what is pending until all of it went or `max_attempts` rounds were made; returns
/// the rounds made and the last error if something did not go.
async fn attempt_all(
    n: &Notifier,
    r: &ReceiverConfig,
    channel: &Channel,
    mut pending: Vec<Outgoing>,
) -> (u32, Option<String>) {
    let max = r.max_attempts.max(1);
    let mut attempts = 0;
    let mut error = String::new();
    let mut backoff = Duration::from_secs(1);
    let mut give_up = false;
    while !pending.is_empty() && attempts < max && !give_up {
        attempts += 1;
        n.metrics
            .notification_attempts
            .with_label_values(&[r.name.as_str()])
            .inc();
        let mut left = Vec::new();
        for out in pending {
            if let Err(f) = channel.send(&out).await {
                error = f.error;
                give_up |= !f.retry;
                left.push(out);
            }
        }
        pending = left;
        if !pending.is_empty() && attempts < max && !give_up {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
    (attempts, (!pending.is_empty()).then_some(error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertingConfig;
    use crate::metrics::Metrics;
    use crate::rules::lifecycle::{Alert, AlertState};

    #[tokio::test]
    async fn a_receiver_that_can_not_send_fails_each_notification_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let config = AlertingConfig {
            default_receiver: "mail".into(),
            group_wait_seconds: 0.0,
            receivers: vec![ReceiverConfig {
                name: "mail".into(),
                kind: "email".into(),
                smtp_host: "smtp.example.com".into(),
                from: "alerts@example.com".into(),
                to: vec!["ops@example.com".into()],
                username: "alerts".into(),
                password_env: "FLEETWATCH_TEST_NEVER_SET_PASSWORD".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let metrics = Metrics::new();
        let n = Arc::new(Notifier::new(config, dir.path(), metrics.clone()).unwrap());
        let _tasks = n.start();
        let firing = Alert {
            labels: [("alertname".to_string(), "Down".to_string())].into(),
            annotations: Default::default(),
            state: AlertState::Firing,
            active_at_ms: 0,
            fired_at_ms: Some(0),
            resolved_at_ms: None,
            keep_firing_since_ms: None,
            value: 1.0,
            last_eval_ms: 0,
        };
        n.process(&[firing], 1000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while n.deliveries().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "no delivery logged");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let d = &n.deliveries()[0];
        assert_eq!((d.result.as_str(), d.attempts), ("failed", 0));
        assert!(
            d.error.contains("FLEETWATCH_TEST_NEVER_SET_PASSWORD"),
            "{}",
            d.error
        );
        assert_eq!(
            metrics
                .notifications
                .with_label_values(&["mail", "failed"])
                .get(),
            1
        );
    }
}
