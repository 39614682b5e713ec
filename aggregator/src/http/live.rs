//! `GET /api/fleet/live`: the live feed over WebSocket. The client gets a snapshot of what it
//! subscribed to, then the hub's messages (`crate::live`); it may change its topics by sending
//! `{"subscribe": ["hosts", "alerts"]}`. A client that falls behind is told how many messages it
//! missed; one that stops reading for [`SEND_TIMEOUT`] is disconnected. The `logs` topic sends
//! new log records that pass the client's filter (the log API's filter parameters, in the URL
//! or as `"logs": {...}` beside `"subscribe"`), one message per applied batch.

use super::logs_api::{parse_filter, record_json};
use super::ApiError;
use crate::fleet::summary::summarized_hosts;
use crate::live::{self, LiveMessage, Topic};
use crate::logstore::query::LogFilter;
use crate::logstore::TailBatch;
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use fleetwatch_common::model::now_ms;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};

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
                    "unknown topic {name:?}: the topics are hosts, alerts and logs"
                ))
            }
        }
    }
    Ok(topics)
}

/// The upgrade: `?topics=hosts,alerts,logs` (default: hosts and alerts), with the log filter's
/// parameters when `logs` is among them.
pub(super) async fn live(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let topics = match params.iter().find(|(k, _)| k == "topics") {
        Some((_, v)) => parse_topics(v.split(',')).map_err(ApiError::bad_data)?,
        None => Topic::DEFAULT.into_iter().collect(),
    };
    let filter = if topics.contains(&Topic::Logs) {
        parse_filter(&params, &["topics", "access_token"]).map_err(ApiError::bad_data)?
    } else {
        LogFilter::default()
    };
    Ok(ws
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, state, topics, filter)))
}

type LogReceiver = broadcast::Receiver<Arc<TailBatch>>;

/// The next batch of new log records, or never without a logs subscription.
async fn next_logs(rx: &mut Option<LogReceiver>) -> Result<Arc<TailBatch>, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The `logs` message of the records of `batch` that `filter` wants (none: nothing to send).
fn logs_message(batch: &TailBatch, filter: &LogFilter) -> Option<String> {
    let records: Vec<Value> = batch
        .records
        .iter()
        .filter(|f| filter.stream_matches(&f.stream) && filter.record_matches(&f.record))
        .map(record_json)
        .collect();
    (!records.is_empty()).then(|| json!({ "type": "logs", "records": records }).to_string())
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

/// The first message, built on a blocking thread (the hosts' summaries read the store).
async fn snapshot(state: &Arc<AppState>, topics: &HashSet<Topic>) -> String {
    let want_hosts = topics.contains(&Topic::Hosts);
    let want_alerts = topics.contains(&Topic::Alerts);
    let state = state.clone();
    let built = tokio::task::spawn_blocking(move || {
        let now = now_ms();
        let alerts = state.rules.alerts();
        let hosts = want_hosts
            .then(|| summarized_hosts(&state.fleet, &*state.store, &alerts, &state.metrics, now));
        live::snapshot(hosts.as_deref(), want_alerts.then_some(&alerts[..]), now)
    })
    .await;
    built.unwrap_or_else(|e| {
        json!({ "type": "error", "error": format!("snapshot failed: {e}") }).to_string()
    })
}

async fn serve(
    mut socket: WebSocket,
    state: Arc<AppState>,
    mut topics: HashSet<Topic>,
    mut filter: LogFilter,
) {
    state.metrics.live_clients.inc();
    let _guard = ClientGuard(state.clone());
    // subscribe before the snapshot so that nothing between the two is missed
    let mut rx = state.live.subscribe();
    let mut logs_rx = topics
        .contains(&Topic::Logs)
        .then(|| state.logs.subscribe());
    if !send(&mut socket, &snapshot(&state, &topics).await).await {
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
            batch = next_logs(&mut logs_rx) => match batch {
                Ok(batch) => {
                    if let Some(text) = logs_message(&batch, &filter) {
                        if !send(&mut socket, &text).await {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    state.metrics.live_missed.inc_by(missed);
                    let note = json!({ "type": "lagged", "topic": "logs", "missed": missed }).to_string();
                    if !send(&mut socket, &note).await {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let reply = match subscription(&text) {
                        Ok((new, new_filter)) => {
                            topics = new;
                            filter = new_filter;
                            if !topics.contains(&Topic::Logs) {
                                logs_rx = None;
                            } else if logs_rx.is_none() {
                                logs_rx = Some(state.logs.subscribe());
                            }
                            let mut names: Vec<&str> = topics.iter().map(|t| t.as_str()).collect();
                            names.sort_unstable();
                            json!({ "type": "subscribed", "topics": names }).to_string()
                        }
                        Err(error) => {
                            state.metrics.live_refused.inc();
                            json!({ "type": "error", "error": error }).to_string()
                        }
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

/// A client's `{"subscribe": [...], "logs": {"selector": "...", "contains": ["..."], ...}}`:
/// its topics and its log filter (each filter parameter a string or a list of strings).
fn subscription(text: &str) -> Result<(HashSet<Topic>, LogFilter), String> {
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
    let topics = parse_topics(names.into_iter())?;
    let mut params = Vec::new();
    match v.get("logs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, val) in map {
                let values = match val {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or(format!("logs.{k}: values are strings"))?,
                    _ => return Err(format!("logs.{k}: a string or a list of strings")),
                };
                params.extend(values.into_iter().map(|s| (k.clone(), s)));
            }
        }
        Some(_) => return Err("\"logs\" is an object of filter parameters".into()),
    }
    let filter = parse_filter(&params, &[])?;
    Ok((topics, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_name_their_topics_and_refuse_unknown_ones() {
        assert_eq!(
            subscription(r#"{"subscribe":["alerts"]}"#).unwrap().0,
            HashSet::from([Topic::Alerts])
        );
        assert!(subscription(r#"{"subscribe":["weather"]}"#)
            .unwrap_err()
            .contains("unknown topic \"weather\""));
        let (topics, filter) = subscription(
            r#"{"subscribe":["logs"],"logs":{"selector":"{host=\"a\"}","contains":["x","y"]}}"#,
        )
        .unwrap();
        assert_eq!(topics, HashSet::from([Topic::Logs]));
        assert_eq!(filter.contains.len(), 2);
        assert!(
            subscription(r#"{"subscribe":["logs"],"logs":{"min_level":"loud"}}"#)
                .unwrap_err()
                .contains("min_level")
        );
        assert!(subscription("hello").unwrap_err().contains("JSON"));
        assert!(subscription(r#"{"subscribe":[1]}"#).is_err());
    }
}
