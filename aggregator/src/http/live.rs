//! `GET /api/fleet/live`: the live feed over WebSocket. The client gets a snapshot of what it
//! subscribed to, then the hub's messages (`crate::live`); it may change its topics by sending
//! `{"subscribe": ["hosts", "alerts"]}`. A client that falls behind is told how many messages it
//! missed; one that stops reading for [`SEND_TIMEOUT`] is disconnected.

use super::ApiError;
use crate::live::{self, LiveMessage, Topic};
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use fleetwatch_common::model::now_ms;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Longest a client may take to take one message.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server pings an idle client.
const PING_INTERVAL: Duration = Duration::from_secs(30);

/// Largest message a client may send (a subscription is a few bytes).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

fn parse_topics<'a>(names: impl Iterator<Item = &'a str>) -> Result<HashSet<Topic>, String> {
    let mut topics = HashSet::new();
    for name in names.map(str::trim).filter(|n| !n.is_empty()) {
        match Topic::parse(name) {
            Some(t) => {
                topics.insert(t);
            }
            None => {
                return Err(format!(
                    "unknown topic {name:?}: the topics are hosts and alerts"
                ))
            }
        }
    }
    Ok(topics)
}

/// The upgrade: `?topics=hosts,alerts` (default: all).
pub(super) async fn live(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let topics = match params.iter().find(|(k, _)| k == "topics") {
        Some((_, v)) => parse_topics(v.split(',')).map_err(ApiError::bad_data)?,
        None => Topic::ALL.into_iter().collect(),
    };
    Ok(ws
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, state, topics)))
}

/// Counts a connected client while it lives.
struct ClientGuard(Arc<AppState>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.metrics.live_clients.dec();
    }
}

async fn send(socket: &mut WebSocket, text: &str) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

fn snapshot(state: &AppState, topics: &HashSet<Topic>) -> String {
    let now = now_ms();
    let hosts = topics
        .contains(&Topic::Hosts)
        .then(|| state.fleet.list(now));
    let alerts = topics
        .contains(&Topic::Alerts)
        .then(|| state.rules.alerts());
    live::snapshot(hosts.as_deref(), alerts.as_deref(), now)
}

async fn serve(mut socket: WebSocket, state: Arc<AppState>, mut topics: HashSet<Topic>) {
    state.metrics.live_clients.inc();
    let _guard = ClientGuard(state.clone());
    // subscribe before the snapshot so that nothing between the two is missed
    let mut rx = state.live.subscribe();
    if !send(&mut socket, &snapshot(&state, &topics)).await {
        return;
    }
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Ok(LiveMessage { topic, text }) => {
                    if topics.contains(&topic) && !send(&mut socket, &text).await {
                        return;
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    state.metrics.live_missed.inc_by(missed);
                    let note = json!({ "type": "lagged", "missed": missed }).to_string();
                    if !send(&mut socket, &note).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match subscription(&text) {
                        Ok(new) => {
                            topics = new;
                            let mut names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
                            names.sort_unstable();
                            json!({ "type": "subscribed", "topics": names }).to_string()
                        }
                        Err(error) => json!({ "type": "error", "error": error }).to_string(),
                    };
                    if !send(&mut socket, &reply).await {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                let sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Ping(Vec::new().into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
}

/// A client's `{"subscribe": [...]}`.
fn subscription(text: &str) -> Result<HashSet<Topic>, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("a message must be JSON: {e}"))?;
    let list = v
        .get("subscribe")
        .and_then(Value::as_array)
        .ok_or("send {\"subscribe\": [\"hosts\", \"alerts\"]}")?;
    let names = list
        .iter()
        .map(|n| n.as_str().ok_or("topics are strings"))
        .collect::<Result<Vec<_>, _>>()?;
    parse_topics(names.into_iter())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_topics_and_refuse_unknown_ones() {
        assert_eq!(
            subscription(r#"{"subscribe":["alerts"]}"#).unwrap(),
            HashSet::from([Topic::Alerts])
        );
        assert!(subscription(r#"{"subscribe":["logs"]}"#)
            .unwrap_err()
            .contains("unknown topic \"logs\""));
        assert!(subscription("hello").unwrap_err().contains("JSON"));
        assert!(subscription(r#"{"subscribe":[1]}"#).is_err());
    }
}
