//! Prometheus' query API: `/api/v1/query`, `/api/v1/query_range`, `/api/v1/series`,
//! `/api/v1/labels`, `/api/v1/label/NAME/values`, `/api/v1/metadata` and
//! `/api/v1/status/buildinfo`, with Prometheus' parameters (GET query string or POST form),
//! JSON and error envelopes. Evaluation is [`crate::promql`]'s, on a blocking thread.

use super::ApiError;
use crate::promql::{self, Labels, QueryValue, Settings};
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use fleetwatch_common::model::{now_ms, MetricKind};
use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Prometheus' default lookback for instant vectors.
pub(crate) const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Request parameters in order, repeated keys (`match[]`) kept.
type Params = Vec<(String, String)>;

/// A POST's parameters as Prometheus reads them (Go's `Request.Form`): the form body's, then
/// the URL's — so a parameter in both takes the body's value, and `match[]` collects from both
/// (Grafana puts its "custom query parameters" in the URL even when it POSTs).
fn post_params(mut body: Params, url: Params) -> Params {
    body.extend(url);
    body
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// Parses Prometheus' time parameter: Unix seconds (float) or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Result<i64, ApiError> {
    parse_time_named(s, "time")
}

pub(crate) fn parse_time_named(s: &str, name: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        ApiError::bad_data(format!(
            "invalid parameter \"{name}\": cannot parse {s:?} to a valid timestamp"
        ))
    })
}

/// Parses a duration parameter: float seconds or a Prometheus duration such as `1m30s`.
pub(crate) fn parse_duration(s: &str, name: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_data(format!(
            "invalid parameter \"{name}\": cannot parse {s:?} to a valid duration"
        ))
    };
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs * 1000.0 < i64::MAX as f64 {
            return Ok((secs * 1000.0).round() as i64);
        }
        return Err(bad());
    }
    crate::rules::file::parse_duration(s).ok_or_else(bad)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to milliseconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut i = 19;
    let mut frac_ms = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = s.get(start..i)?;
        let padded = format!("{:0<3}", &digits[..digits.len().min(3)]);
        frac_ms = padded.parse().ok()?;
    }
    let offset_min = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz.get(1..3)?.parse::<i64>().ok()? * 60 + tz.get(4..6)?.parse::<i64>().ok()?)
        }
        _ => return None,
    };
    // days from civil (Howard Hinnant's algorithm)
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se - offset_min * 60) * 1000) + frac_ms)
}

pub(crate) use crate::promql::format_value;

fn labels_json(labels: &Labels) -> Value {
    let mut m = serde_json::Map::new();
    for l in labels.iter() {
        m.insert(l.name.clone(), Value::String(l.value.clone()));
    }
    Value::Object(m)
}

/// Appends `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // writing into a Vec cannot fail
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_labels(out: &mut Vec<u8>, labels: &Labels) {
    out.push(b'{');
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, &l.name);
        out.push(b':');
        push_str(out, &l.value);
    }
    out.push(b'}');
}

/// `[seconds, "value"]`, as Prometheus writes a sample.
fn push_point(out: &mut Vec<u8>, ts_ms: i64, v: f64) {
    out.push(b'[');
    promql::push_timestamp(out, ts_ms);
    out.extend_from_slice(b",\"");
    promql::push_go_float(out, v);
    out.extend_from_slice(b"\"]");
}

/// Prometheus' success envelope around a query result, written straight to JSON text: a range
/// query over a thousand series has hundreds of thousands of points, and building a `Value`
/// per point cost more than evaluating the query. The buffer is sized up front from the number
/// of points so that it is written once, not grown and copied.
fn data_json(value: QueryValue) -> Vec<u8> {
    const PREFIX: &[u8] = br#"{"status":"success","data":"#;
    let capacity = match &value {
        QueryValue::Matrix(series) => series
            .iter()
            .map(|s| 64 * s.labels.len() + 40 * s.samples.len() + 32)
            .sum::<usize>(),
        QueryValue::Vector { elems, .. } => elems.len() * 256,
        _ => 0,
    };
    let mut out = Vec::with_capacity(PREFIX.len() + capacity + 64);
    out.extend_from_slice(PREFIX);
    match value {
        QueryValue::Scalar { t, v } => {
            out.extend_from_slice(br#"{"resultType":"scalar","result":"#);
            push_point(&mut out, t, v);
        }
        QueryValue::String { t, v } => {
            out.extend_from_slice(br#"{"resultType":"string","result":["#);
            promql::push_timestamp(&mut out, t);
            out.push(b',');
            push_str(&mut out, &v);
            out.push(b']');
        }
        QueryValue::Vector { t, elems } => {
            out.extend_from_slice(br#"{"resultType":"vector","result":["#);
            for (i, (l, v)) in elems.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(br#"{"metric":"#);
                push_labels(&mut out, l);
                out.extend_from_slice(br#","value":"#);
                push_point(&mut out, t, *v);
                out.push(b'}');
            }
            out.push(b']');
        }
        QueryValue::Matrix(series) => {
            out.extend_from_slice(br#"{"resultType":"matrix","result":["#);
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(br#"{"metric":"#);
                push_labels(&mut out, &s.labels);
                out.extend_from_slice(br#","values":["#);
                // a series' value often repeats from point to point (a constant series, a
                // step shorter than the scrape interval): its text is copied, not formatted
                let mut last: Option<(u64, std::ops::Range<usize>)> = None;
                for (j, p) in s.samples.iter().enumerate() {
                    if j > 0 {
                        out.push(b',');
                    }
                    out.push(b'[');
                    promql::push_timestamp(&mut out, p.timestamp_ms);
                    out.extend_from_slice(b",\"");
                    let bits = p.value.to_bits();
                    match &last {
                        Some((b, text)) if *b == bits => out.extend_from_within(text.clone()),
                        _ => {
                            let from = out.len();
                            promql::push_go_float(&mut out, p.value);
                            last = Some((bits, from..out.len()));
                        }
                    }
                    out.extend_from_slice(b"\"]");
                }
                out.extend_from_slice(b"]}");
            }
            out.push(b']');
        }
    }
    out.extend_from_slice(b"}}");
    out
}

fn settings() -> Settings {
    Settings {
        lookback_ms: LOOKBACK_MS,
        ..Settings::default()
    }
}

fn required_query(params: &Params) -> Result<String, ApiError> {
    param(params, "query")
        .filter(|q| !q.trim().is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": missing query"))
}

/// Runs CPU-bound evaluation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("query task failed: {e}")))?
}

fn success(data: Value) -> Json<Value> {
    Json(json!({ "status": "success", "data": data }))
}

/// Prometheus' warning when `limit` cut a list short.
const TRUNCATED: &str = "results truncated due to limit";

/// The `limit` parameter of the series, label names and label values endpoints: at most this
/// many entries (0 or absent: all of them), as Prometheus 2.54+ reads it. Grafana sends it.
fn limit_param(params: &Params) -> Result<Option<usize>, ApiError> {
    let Some(l) = param(params, "limit") else {
        return Ok(None);
    };
    match l.parse::<i64>() {
        Ok(0) => Ok(None),
        Ok(n) if n > 0 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Ok(_) => Err(ApiError::bad_data(
            "invalid parameter \"limit\": limit must be non-negative",
        )),
        Err(_) => Err(ApiError::bad_data(format!(
            "invalid parameter \"limit\": {l:?} is not a whole number"
        ))),
    }
}

/// A list answer cut to `limit`, with Prometheus' warning when entries were left out.
fn limited(mut list: Vec<Value>, limit: Option<usize>) -> Json<Value> {
    match limit {
        Some(n) if list.len() > n => {
            list.truncate(n);
            Json(json!({ "status": "success", "data": list, "warnings": [TRUNCATED] }))
        }
        _ => success(Value::Array(list)),
    }
}

/// A complete success body from [`data_json`] as a JSON response.
fn success_raw(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Evaluates `query` at `eval_ms` into Prometheus' success body (envelope and `data`).
pub(crate) fn evaluate(state: &AppState, query: &str, eval_ms: i64) -> Result<Vec<u8>, ApiError> {
    Ok(data_json(promql::instant(
        state.store.as_ref(),
        settings(),
        query,
        eval_ms,
    )?))
}

async fn run_instant(state: Arc<AppState>, params: Params) -> Result<Response, ApiError> {
    let query = required_query(&params)?;
    let eval_ms = match param(&params, "time") {
        Some(t) => parse_time(t)?,
        None => now_ms(),
    };
    blocking(move || evaluate(&state, &query, eval_ms))
        .await
        .map(success_raw)
}

async fn run_range(state: Arc<AppState>, params: Params) -> Result<Response, ApiError> {
    let query = required_query(&params)?;
    let start = parse_time_named(
        param(&params, "start")
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"start\": missing"))?,
        "start",
    )?;
    let end = parse_time_named(
        param(&params, "end")
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"end\": missing"))?,
        "end",
    )?;
    let step = parse_duration(
        param(&params, "step")
            .ok_or_else(|| ApiError::bad_data("invalid parameter \"step\": missing"))?,
        "step",
    )?;
    blocking(move || {
        Ok(data_json(promql::range(
            state.store.as_ref(),
            settings(),
            &query,
            start,
            end,
            step,
        )?))
    })
    .await
    .map(success_raw)
}

/// `GET /api/v1/query`.
pub(super) async fn instant(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    run_instant(state, params).await
}

/// `POST /api/v1/query` (form-encoded, as Grafana sends it).
pub(super) async fn instant_form(
    State(state): State<Arc<AppState>>,
    Query(url): Query<Params>,
    Form(body): Form<Params>,
) -> Result<Response, ApiError> {
    run_instant(state, post_params(body, url)).await
}

/// `GET /api/v1/query_range`.
pub(super) async fn range(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    run_range(state, params).await
}

/// `POST /api/v1/query_range`.
pub(super) async fn range_form(
    State(state): State<Arc<AppState>>,
    Query(url): Query<Params>,
    Form(body): Form<Params>,
) -> Result<Response, ApiError> {
    run_range(state, post_params(body, url)).await
}

/// The `match[]` selectors of a request as matcher lists.
fn match_params(params: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    params
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, sel)| match parser::parse(sel) {
            Ok(Expr::VectorSelector(vs)) => Ok(promql::selector_matchers(&vs)?),
            Ok(_) => Err(ApiError::bad_data(format!(
                "invalid parameter \"match[]\": {sel:?} is not a series selector"
            ))),
            Err(e) => Err(ApiError::bad_data(format!(
                "invalid parameter \"match[]\": {sel:?}: {e}"
            ))),
        })
        .collect()
}

/// `start`/`end` of the metadata endpoints; all time when absent.
fn time_bounds(params: &Params) -> Result<(i64, i64), ApiError> {
    let start = match param(params, "start") {
        Some(s) => parse_time_named(s, "start")?,
        None => i64::MIN / 4,
    };
    let end = match param(params, "end") {
        Some(s) => parse_time_named(s, "end")?,
        None => i64::MAX / 4,
    };
    Ok((start, end))
}

/// Every series with data in the bounds matching any of `selectors` (everything when there is
/// none), deduplicated and sorted.
fn matching_series(
    state: &AppState,
    selectors: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> BTreeMap<Labels, MetricKind> {
    let everything = vec![vec![Matcher::new(
        promql_parser::label::MatchOp::Re(regex::Regex::new("^(?:.+)$").expect("valid")),
        "__name__",
        ".+",
    )]];
    let selectors = if selectors.is_empty() {
        &everything
    } else {
        selectors
    };
    let mut out = BTreeMap::new();
    for matchers in selectors {
        for (series, kind, _) in state.store.select(matchers, start, end) {
            out.insert(promql::labels_of(&series), kind);
        }
    }
    out
}

async fn run_series(state: Arc<AppState>, params: Params) -> Result<Json<Value>, ApiError> {
    let selectors = match_params(&params)?;
    if selectors.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = time_bounds(&params)?;
    let limit = limit_param(&params)?;
    blocking(move || {
        let found = matching_series(&state, &selectors, start, end);
        Ok(found.keys().map(labels_json).collect())
    })
    .await
    .map(|list| limited(list, limit))
}

/// `GET /api/v1/series`.
pub(super) async fn series(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    run_series(state, params).await
}

/// `POST /api/v1/series`.
pub(super) async fn series_form(
    State(state): State<Arc<AppState>>,
    Query(url): Query<Params>,
    Form(body): Form<Params>,
) -> Result<Json<Value>, ApiError> {
    run_series(state, post_params(body, url)).await
}

async fn run_labels(state: Arc<AppState>, params: Params) -> Result<Json<Value>, ApiError> {
    let selectors = match_params(&params)?;
    let (start, end) = time_bounds(&params)?;
    let limit = limit_param(&params)?;
    blocking(move || {
        let names: BTreeSet<String> = matching_series(&state, &selectors, start, end)
            .keys()
            .flat_map(|l| l.iter().map(|l| l.name.clone()).collect::<Vec<_>>())
            .collect();
        Ok(names.into_iter().map(Value::String).collect())
    })
    .await
    .map(|list| limited(list, limit))
}

/// `GET /api/v1/labels`.
pub(super) async fn labels(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    run_labels(state, params).await
}

/// `POST /api/v1/labels`.
pub(super) async fn labels_form(
    State(state): State<Arc<AppState>>,
    Query(url): Query<Params>,
    Form(body): Form<Params>,
) -> Result<Json<Value>, ApiError> {
    run_labels(state, post_params(body, url)).await
}

/// `GET /api/v1/label/{name}/values`.
pub(super) async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let selectors = match_params(&params)?;
    let (start, end) = time_bounds(&params)?;
    let limit = limit_param(&params)?;
    blocking(move || {
        let values: BTreeSet<String> = matching_series(&state, &selectors, start, end)
            .keys()
            .filter_map(|l| crate::promql::label_value(l, &name).map(str::to_string))
            .collect();
        Ok(values.into_iter().map(Value::String).collect())
    })
    .await
    .map(|list| limited(list, limit))
}

/// `GET /api/v1/metadata`: the type of every metric name (`metric` and `limit` honoured).
pub(super) async fn metadata(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let metric = param(&params, "metric").map(str::to_string);
    let limit = match param(&params, "limit") {
        Some(l) => Some(l.parse::<usize>().map_err(|_| {
            ApiError::bad_data(format!(
                "invalid parameter \"limit\": {l:?} is not a number"
            ))
        })?),
        None => None,
    };
    blocking(move || {
        let selectors = match &metric {
            Some(m) => vec![vec![Matcher::new(
                promql_parser::label::MatchOp::Equal,
                "__name__",
                m,
            )]],
            None => Vec::new(),
        };
        let mut by_name: BTreeMap<String, MetricKind> = BTreeMap::new();
        for (labels, kind) in matching_series(&state, &selectors, i64::MIN / 4, i64::MAX / 4) {
            if let Some(name) = crate::promql::label_value(&labels, "__name__") {
                by_name.entry(name.to_string()).or_insert(kind);
            }
        }
        let mut out = serde_json::Map::new();
        for (name, kind) in by_name.into_iter().take(limit.unwrap_or(usize::MAX)) {
            let kind = match kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
                MetricKind::Untyped => "unknown",
            };
            out.insert(name, json!([{ "type": kind, "help": "", "unit": "" }]));
        }
        Ok(Value::Object(out))
    })
    .await
    .map(success)
}

/// `GET /api/v1/status/buildinfo`.
pub(super) async fn buildinfo() -> Json<Value> {
    Json(json!({
        "status": "success",
        "data": {
            "version": env!("CARGO_PKG_VERSION"),
            "revision": option_env!("FLEETWATCH_GIT_REVISION").unwrap_or("unknown"),
            "branch": "",
            "buildUser": "",
            "buildDate": "",
            "goVersion": "",
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_like_prometheus() {
        assert_eq!(parse_time("1700000000.5").unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.250+01:00").unwrap(),
            1_700_000_000_250
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn durations_parse_like_prometheus() {
        assert_eq!(parse_duration("15", "step").unwrap(), 15_000);
        assert_eq!(parse_duration("0.5", "step").unwrap(), 500);
        assert_eq!(parse_duration("1m30s", "step").unwrap(), 90_000);
        assert_eq!(parse_duration("2h", "step").unwrap(), 7_200_000);
        assert!(parse_duration("1x", "step").is_err());
        assert!(parse_duration("", "step").is_err());
    }

    #[test]
    fn limit_reads_like_prometheus() {
        let p = |v: &str| vec![("limit".to_string(), v.to_string())];
        assert_eq!(limit_param(&Vec::new()).unwrap(), None);
        assert_eq!(limit_param(&p("0")).unwrap(), None);
        assert_eq!(limit_param(&p("40000")).unwrap(), Some(40_000));
        assert!(limit_param(&p("-1")).is_err());
        assert!(limit_param(&p("ten")).is_err());
    }

    #[test]
    fn a_list_cut_by_limit_says_so() {
        let list = || vec![json!("a"), json!("b"), json!("c")];
        assert_eq!(
            limited(list(), Some(2)).0,
            json!({ "status": "success", "data": ["a", "b"], "warnings": [TRUNCATED] })
        );
        // exactly the limit is not truncated
        assert_eq!(
            limited(list(), Some(3)).0,
            json!({ "status": "success", "data": ["a", "b", "c"] })
        );
        assert_eq!(limited(list(), None).0["data"], json!(["a", "b", "c"]));
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }
}
