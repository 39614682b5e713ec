//! The push listener: a loopback HTTP endpoint (axum) where local programs send custom metrics,
//! `POST /v1/metrics` as JSON or in the Prometheus / OpenMetrics text format. Accepted samples go
//! to the collector like any source's; invalid input gets a 4xx naming the problem, is counted,
//! and takes nothing from the request into the buffer.
//!
//! `POST /v1/logs` takes log records (a JSON object, an array of objects, or one object per
//! line) read by the same parser and limits as log files ([`crate::sources::logs::parse_pushed`]).
//!
//! The router is built by [`router`].

use crate::collector::{Collected, Output};
use crate::config::PushConfig;
use crate::metrics::AgentMetrics;
use crate::sources::scrape::parse::{self, Format};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use fleetwatch_common::model::{now_ms, Label, MetricKind, Sample, Series, SeriesSamples};
use fleetwatch_common::validate::{is_label_name, is_metric_name, Limits};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What the handlers share.
pub struct PushState {
    /// Where accepted samples go.
    pub out: Output,
    /// Counters.
    pub metrics: AgentMetrics,
    /// Limits, replaced on reload.
    pub config: RwLock<PushConfig>,
}

/// Why a push was refused: the HTTP status, a short reason for the metric, and the message
/// the client sees.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PushError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl PushError {
    fn bad(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason,
            message: message.into(),
        }
    }

    /// The short reason (`fleetwatch_agent_push_rejected_total{reason}`).
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({"status": "error", "reason": self.reason, "error": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The push routes over `state`: `POST /v1/metrics`.
pub fn router(state: Arc<PushState>) -> Router {
    Router::new()
        .route("/v1/metrics", post(push_metrics))
        .route("/v1/logs", post(push_logs))
        .with_state(state)
}

/// The body format a `Content-Type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    Text(Format),
}

impl BodyFormat {
    fn label(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Text(_) => "text",
        }
    }
}

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, PushError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "text/plain" => Ok(BodyFormat::Text(Format::PrometheusText)),
        "application/openmetrics-text" => Ok(BodyFormat::Text(Format::OpenMetrics)),
        _ => Err(PushError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "content_type",
            message: format!(
                "Content-Type {ct:?} is not supported: send application/json, text/plain (Prometheus text format) or application/openmetrics-text"
            ),
        }),
    }
}

async fn push_metrics(
    State(state): State<Arc<PushState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = match state.config.read() {
        Ok(c) => c.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let format = body_format(&headers);
    let format_label = format.as_ref().map(|f| f.label()).unwrap_or("unknown");
    let result = match format {
        Ok(format) => {
            let length = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            read_and_parse(body, length, format, &config, now_ms()).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(series) => {
            let n = series.iter().map(|s| s.samples.len()).sum::<usize>();
            if state.out.send(Collected::Metrics(series)).await.is_err() {
                let e = PushError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    reason: "stopping",
                    message: "the agent is stopping; send again later".into(),
                };
                return reject(&state, format_label, e);
            }
            state.metrics.push_samples.inc_by(n as u64);
            state
                .metrics
                .push_requests
                .with_label_values(&[format_label, "accepted"])
                .inc();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({"status": "success", "accepted": n})),
            )
                .into_response()
        }
        Err(e) => reject(&state, format_label, e),
    }
}

async fn push_logs(
    State(state): State<Arc<PushState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let config = match state.config.read() {
        Ok(c) => c.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if !matches!(
        media.as_str(),
        "application/json" | "application/x-ndjson" | "application/jsonl"
    ) {
        let e = PushError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "content_type",
            message: format!(
                "Content-Type {ct:?} is not supported for logs: send application/json (an object or an array of objects) or application/x-ndjson (one object per line)"
            ),
        };
        return reject(&state, "logs", e);
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = match read_body(body, length, &config).await {
        Ok(b) => b,
        Err(e) => return reject(&state, "logs", e),
    };
    let parsed = match crate::sources::logs::parse_pushed(&bytes, crate::sources::logs::now_ns()) {
        Ok(p) => p,
        Err(e) => return reject(&state, "logs", PushError::bad(e.reason, e.message)),
    };
    let n = parsed.len();
    let mut records = Vec::with_capacity(n);
    for (rec, marks) in parsed {
        crate::sources::logs::count_marks(&state.metrics, "push", &marks);
        records.push(rec);
    }
    let sent = state
        .out
        .send(Collected::Logs {
            records,
            checkpoints: Vec::new(),
            queued: None,
        })
        .await;
    if sent.is_err() {
        let e = PushError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "stopping",
            message: "the agent is stopping; send again later".into(),
        };
        return reject(&state, "logs", e);
    }
    state
        .metrics
        .log_records
        .with_label_values(&["push"])
        .inc_by(n as u64);
    state
        .metrics
        .push_requests
        .with_label_values(&["logs", "accepted"])
        .inc();
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"status": "success", "accepted": n})),
    )
        .into_response()
}

fn reject(state: &PushState, format: &str, e: PushError) -> Response {
    state
        .metrics
        .push_requests
        .with_label_values(&[format, "rejected"])
        .inc();
    state
        .metrics
        .push_rejections
        .with_label_values(&[e.reason])
        .inc();
    e.into_response()
}

async fn read_and_parse(
    body: Body,
    content_length: Option<u64>,
    format: BodyFormat,
    config: &PushConfig,
    now: i64,
) -> Result<Vec<SeriesSamples>, PushError> {
    let bytes = read_body(body, content_length, config).await?;
    parse_body(&bytes, format, config, now)
}

/// The request body, at most `max_body_bytes` (413 beyond).
async fn read_body(
    body: Body,
    content_length: Option<u64>,
    config: &PushConfig,
) -> Result<axum::body::Bytes, PushError> {
    let too_large = || PushError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        reason: "body_too_large",
        message: format!(
            "request body is larger than push.max_body_bytes ({} bytes)",
            config.max_body_bytes
        ),
    };
    if content_length.is_some_and(|n| n > config.max_body_bytes as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, config.max_body_bytes)
        .await
        .map_err(|e| {
            // http-body-util's LengthLimitError, which axum does not export
            let over_limit =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.to_string().contains("length limit exceeded"));
            if over_limit {
                too_large()
            } else {
                PushError::bad("body", format!("reading the request body: {e}"))
            }
        })
}

/// Parses and checks a whole request body; any invalid item refuses the whole request.
fn parse_body(
    bytes: &[u8],
    format: BodyFormat,
    config: &PushConfig,
    now: i64,
) -> Result<Vec<SeriesSamples>, PushError> {
    let series = match format {
        BodyFormat::Json => parse_json(bytes, config, now)?,
        BodyFormat::Text(f) => parse_text(bytes, f, config, now)?,
    };
    if series.is_empty() {
        return Err(PushError::bad("empty", "the request holds no samples"));
    }
    if series.len() > config.max_series {
        return Err(PushError::bad(
            "too_many_series",
            format!(
                "the request holds {} series, push.max_series is {}",
                series.len(),
                config.max_series
            ),
        ));
    }
    Ok(series)
}

const JSON_FIELDS: [&str; 5] = ["name", "value", "labels", "type", "timestamp"];

fn parse_json(
    bytes: &[u8],
    config: &PushConfig,
    now: i64,
) -> Result<Vec<SeriesSamples>, PushError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| PushError::bad("json", format!("invalid JSON: {e}")))?;
    let items = match doc {
        Value::Array(items) => items,
        Value::Object(_) => vec![doc],
        _ => {
            return Err(PushError::bad(
                "json",
                "expected a JSON object or an array of objects",
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| json_item(i, item, config, now))
        .collect()
}

fn json_item(
    index: usize,
    item: &Value,
    config: &PushConfig,
    now: i64,
) -> Result<SeriesSamples, PushError> {
    let at = |m: String| format!("item {index}: {m}");
    let obj = item
        .as_object()
        .ok_or_else(|| PushError::bad("json", at("expected an object".into())))?;
    if let Some(k) = obj.keys().find(|k| !JSON_FIELDS.contains(&k.as_str())) {
        return Err(PushError::bad(
            "json",
            at(format!(
                "unknown field {k:?} (fields are name, value, labels, type, timestamp)"
            )),
        ));
    }
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(PushError::bad(
                "metric_name",
                at("name must be a string".into()),
            ))
        }
        None => return Err(PushError::bad("metric_name", at("name is missing".into()))),
    };
    let kind = match obj.get("type") {
        None => MetricKind::Gauge,
        Some(Value::String(t)) if t == "gauge" => MetricKind::Gauge,
        Some(Value::String(t)) if t == "counter" => MetricKind::Counter,
        Some(other) => {
            return Err(PushError::bad(
                "type",
                at(format!(
                    "{name}: type {other} is not \"gauge\" or \"counter\""
                )),
            ))
        }
    };
    let value = match obj.get("value") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(other) => {
            return Err(PushError::bad(
                "value",
                at(format!("{name}: value must be a JSON number, got {other}")),
            ))
        }
        None => {
            return Err(PushError::bad(
                "value",
                at(format!("{name}: value is missing")),
            ))
        }
    };
    let mut labels = Vec::new();
    match obj.get("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Value::String(v) = v else {
                    return Err(PushError::bad(
                        "label_value",
                        at(format!("{name}: label {k:?} must have a string value")),
                    ));
                };
                labels.push(Label::new(k, v));
            }
        }
        Some(_) => {
            return Err(PushError::bad(
                "json",
                at(format!("{name}: labels must be an object of strings")),
            ))
        }
    }
    let timestamp_ms = match obj.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
        Some(other) => {
            return Err(PushError::bad(
                "timestamp",
                at(format!(
                    "{name}: timestamp must be an integer number of milliseconds since the Unix epoch, got {other}"
                )),
            ))
        }
    };
    checked_series(name, labels, kind, value, timestamp_ms, config, now).map_err(|e| PushError {
        message: at(e.message),
        ..e
    })
}

fn parse_text(
    bytes: &[u8],
    format: Format,
    config: &PushConfig,
    now: i64,
) -> Result<Vec<SeriesSamples>, PushError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| PushError::bad("text", "the body is not UTF-8"))?;
    let samples = parse::parse(text, format)
        .map_err(|e| PushError::bad("text", format!("invalid {} text: {e}", format.as_str())))?;
    samples
        .into_iter()
        .map(|s| {
            checked_series(
                &s.name,
                s.labels,
                s.kind,
                s.value,
                s.timestamp_ms,
                config,
                now,
            )
        })
        .collect()
}

/// One pushed sample, checked against the limits the aggregator enforces (so that a push the
/// agent accepted is not refused later) and the push listener's own.
fn checked_series(
    name: &str,
    labels: Vec<Label>,
    kind: MetricKind,
    value: f64,
    timestamp_ms: Option<i64>,
    config: &PushConfig,
    now: i64,
) -> Result<SeriesSamples, PushError> {
    let limits = Limits::default();
    if !is_metric_name(name) {
        return Err(PushError::bad(
            "metric_name",
            format!("invalid metric name {name:?}: use [a-zA-Z_:][a-zA-Z0-9_:]*"),
        ));
    }
    if name.len() > limits.max_metric_name_bytes {
        return Err(PushError::bad(
            "metric_name",
            format!(
                "metric name of {} bytes exceeds {} bytes",
                name.len(),
                limits.max_metric_name_bytes
            ),
        ));
    }
    if labels.len() > config.max_labels {
        return Err(PushError::bad(
            "too_many_labels",
            format!(
                "{name} has {} labels, push.max_labels is {}",
                labels.len(),
                config.max_labels
            ),
        ));
    }
    for l in &labels {
        if !is_label_name(&l.name) || l.name.len() > limits.max_label_name_bytes {
            return Err(PushError::bad(
                "label_name",
                format!(
                    "{name}: invalid label name {:?}: use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __",
                    l.name
                ),
            ));
        }
        if l.value.len() > limits.max_label_value_bytes {
            return Err(PushError::bad(
                "label_value",
                format!(
                    "{name}: label {} has a value of {} bytes, the limit is {}",
                    l.name,
                    l.value.len(),
                    limits.max_label_value_bytes
                ),
            ));
        }
    }
    if kind == MetricKind::Counter && !(value.is_finite() && value >= 0.0) {
        return Err(PushError::bad(
            "value",
            format!("{name}: a counter must be a finite number ≥ 0, got {value}"),
        ));
    }
    if let Some(ts) = timestamp_ms {
        if ts <= 0 || ts > now + limits.max_future_ms {
            return Err(PushError::bad(
                "timestamp",
                format!(
                    "{name}: timestamp {ts} is not a time in milliseconds since the Unix epoch up to 10 minutes ahead"
                ),
            ));
        }
    }
    Ok(SeriesSamples {
        series: Series::new(name, labels),
        kind,
        samples: vec![Sample {
            timestamp_ms: timestamp_ms.unwrap_or(now),
            value,
        }],
    })
}

/// A running push listener.
pub struct PushListener {
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// The state its handlers share (limits are replaced on reload).
    pub state: Arc<PushState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl PushListener {
    /// Binds `config.listen` and serves the push routes until [`PushListener::stop`].
    pub fn start(
        config: &PushConfig,
        out: Output,
        metrics: AgentMetrics,
    ) -> std::io::Result<PushListener> {
        let listener = std::net::TcpListener::bind(&config.listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = Arc::new(PushState {
            out,
            metrics,
            config: RwLock::new(config.clone()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if let Err(error) = served {
                warn!(%error, "push listener failed");
            }
        });
        info!(%addr, "push listener ready");
        Ok(PushListener {
            addr,
            state,
            stop,
            task,
        })
    }

    /// Replaces the limits (the address stays).
    pub fn set_config(&self, config: &PushConfig) {
        match self.state.config.write() {
            Ok(mut c) => *c = config.clone(),
            Err(poisoned) => *poisoned.into_inner() = config.clone(),
        }
    }

    /// Stops accepting, lets requests in progress finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.task).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn json(body: &str) -> Result<Vec<SeriesSamples>, PushError> {
        parse_body(
            body.as_bytes(),
            BodyFormat::Json,
            &PushConfig::default(),
            NOW,
        )
    }

    #[test]
    fn json_object_and_array() {
        let one =
            json(r#"{"name":"active_subscriptions","value":42,"labels":{"plan":"pro"}}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].series.label("plan"), Some("pro"));
        assert_eq!(one[0].kind, MetricKind::Gauge);
        assert_eq!(
            one[0].samples[0],
            Sample {
                timestamp_ms: NOW,
                value: 42.0
            }
        );
        let many = json(r#"[{"name":"a_total","value":1,"type":"counter","timestamp":1699999999000},{"name":"b","value":-2.5}]"#).unwrap();
        assert_eq!(many[0].kind, MetricKind::Counter);
        assert_eq!(many[0].samples[0].timestamp_ms, 1_699_999_999_000);
        assert_eq!(many[1].samples[0].value, -2.5);
    }

    #[test]
    fn every_kind_of_invalid_json_is_named() {
        for (body, reason, text) in [
            (r#"{"name":"a","value":1"#, "json", "invalid JSON"),
            (r#"42"#, "json", "expected a JSON object"),
            (
                r#"{"name":"a b","value":1}"#,
                "metric_name",
                "invalid metric name",
            ),
            (r#"{"value":1}"#, "metric_name", "name is missing"),
            (
                r#"{"name":"a","value":1,"labels":{"1x":"v"}}"#,
                "label_name",
                "invalid label name",
            ),
            (
                r#"{"name":"a","value":1,"labels":{"__x":"v"}}"#,
                "label_name",
                "invalid label name",
            ),
            (
                r#"{"name":"a","value":"NaN"}"#,
                "value",
                "must be a JSON number",
            ),
            (
                r#"{"name":"a","value":-1,"type":"counter"}"#,
                "value",
                "counter must be",
            ),
            (
                r#"{"name":"a","value":1,"type":"histogram"}"#,
                "type",
                "is not \"gauge\"",
            ),
            (
                r#"{"name":"a","value":1,"timestamp":"now"}"#,
                "timestamp",
                "milliseconds",
            ),
            (
                r#"{"name":"a","value":1,"timestamp":9999999999999}"#,
                "timestamp",
                "10 minutes",
            ),
            (
                r#"{"name":"a","value":1,"colour":"red"}"#,
                "json",
                "unknown field",
            ),
            (r#"[]"#, "empty", "no samples"),
            (
                r#"[{"name":"ok","value":1},{"name":"a","value":1,"labels":{"a":1}}]"#,
                "label_value",
                "item 1",
            ),
        ] {
            let e = json(body).unwrap_err();
            assert_eq!(e.reason(), reason, "{body}: {e}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains(text), "{body}: {e}");
        }
        let labels: Vec<String> = (0..40).map(|i| format!("\"l{i}\":\"v\"")).collect();
        let e = json(&format!(
            r#"{{"name":"a","value":1,"labels":{{{}}}}}"#,
            labels.join(",")
        ))
        .unwrap_err();
        assert_eq!(e.reason(), "too_many_labels", "{e}");
    }

    #[test]
    fn text_format_is_parsed_and_checked() {
        let cfg = PushConfig::default();
        let ok = parse_body(
            b"# TYPE jobs_done_total counter\njobs_done_total{queue=\"mail\"} 12\nrevenue 3.5 1699999999000\n",
            BodyFormat::Text(Format::PrometheusText),
            &cfg,
            NOW,
        )
        .unwrap();
        assert_eq!(ok[0].kind, MetricKind::Counter);
        assert_eq!(ok[1].samples[0].timestamp_ms, 1_699_999_999_000);
        let e = parse_body(
            b"# TYPE c counter\nc +Inf\n",
            BodyFormat::Text(Format::PrometheusText),
            &cfg,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "value");
        let e = parse_body(
            b"c{ 1\n",
            BodyFormat::Text(Format::PrometheusText),
            &cfg,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "text");
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn content_type_decides_the_format() {
        let mut h = HeaderMap::new();
        assert_eq!(
            body_format(&h).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        h.insert(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4".parse().unwrap(),
        );
        assert_eq!(
            body_format(&h).unwrap(),
            BodyFormat::Text(Format::PrometheusText)
        );
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Json);
    }

    #[tokio::test]
    async fn listener_accepts_rejects_and_limits_body_size() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let metrics = AgentMetrics::new();
        let cfg = PushConfig {
            listen: "127.0.0.1:0".into(),
            max_body_bytes: 200,
            ..Default::default()
        };
        let listener = PushListener::start(&cfg, tx, metrics.clone()).unwrap();
        let url = format!("http://{}/v1/metrics", listener.addr);
        let client = reqwest::Client::new();
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(r#"{"name":"x","value":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        match rx.recv().await.unwrap() {
            Collected::Metrics(s) => assert_eq!(s[0].series.name, "x"),
            other => panic!("{other:?}"),
        }
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"name":"x","value":1,"labels":{{"a":"{}"}}}}"#,
                "v".repeat(300)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("max_body_bytes"),
            "{body}"
        );
        let r = client.post(&url).body("x 1").send().await.unwrap();
        assert_eq!(r.status(), 415);
        assert_eq!(
            metrics
                .push_rejections
                .with_label_values(&["body_too_large"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .push_requests
                .with_label_values(&["json", "accepted"])
                .get(),
            1
        );
        assert!(rx.try_recv().is_err(), "rejected requests send nothing");
        let logs = format!("http://{}/v1/logs", listener.addr);
        let r = client
            .post(&logs)
            .header("content-type", "application/x-ndjson")
            .body("{\"msg\":\"a\",\"trace_id\":\"t\"}\n{\"msg\":\"b\"}\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        match rx.recv().await.unwrap() {
            Collected::Logs {
                records,
                checkpoints,
                ..
            } => {
                assert_eq!(records.len(), 2);
                assert_eq!(records[0].source, "push");
                assert!(checkpoints.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let r = client
            .post(&logs)
            .header("content-type", "application/json")
            .body("[{\"level\":\"info\"}]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(body["reason"], "message", "{body}");
        assert_eq!(
            metrics
                .push_requests
                .with_label_values(&["logs", "rejected"])
                .get(),
            1
        );
        assert_eq!(metrics.log_records.with_label_values(&["push"]).get(), 2);
        listener.stop().await;
    }
}
