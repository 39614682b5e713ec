//! `/api/v1/query`: Prometheus' instant query API over the first store. This store answers
//! series selectors (instant and range vectors, with all four matcher kinds, `offset` and `@`)
//! and literals; full PromQL evaluation arrives with the time-series store.

use super::ApiError;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::{Form, Json};
use fleetwatch_common::model::{now_ms, Sample, Series};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, AtModifier, Expr, Offset, VectorSelector};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Prometheus' default lookback for instant vectors.
pub(crate) const LOOKBACK_MS: i64 = 5 * 60 * 1000;

/// Query parameters, as Prometheus names them.
#[derive(Debug, Deserialize)]
pub(super) struct QueryParams {
    query: Option<String>,
    time: Option<String>,
}

/// Parses Prometheus' time parameter: Unix seconds (float) or RFC 3339.
pub(crate) fn parse_time(s: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() {
            return Ok((secs * 1000.0).round() as i64);
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        ApiError::bad_data(format!(
            "invalid parameter \"time\": cannot parse {s:?} to a valid timestamp"
        ))
    })
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

/// Prometheus' float formatting in JSON results.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn metric_json(series: &Series) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("__name__".into(), Value::String(series.name.clone()));
    for l in &series.labels {
        m.insert(l.name.clone(), Value::String(l.value.clone()));
    }
    Value::Object(m)
}

fn point(ts_ms: i64, v: f64) -> Value {
    json!([ts_ms as f64 / 1000.0, format_value(v)])
}

/// The evaluation time of a selector after `@` and `offset`.
fn selector_time(vs: &VectorSelector, eval_ms: i64) -> i64 {
    let base = match &vs.at {
        Some(AtModifier::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        },
        // a single instant query: start and end are the evaluation time
        Some(AtModifier::Start) | Some(AtModifier::End) | None => eval_ms,
    };
    match &vs.offset {
        Some(Offset::Pos(d)) => base - d.as_millis() as i64,
        Some(Offset::Neg(d)) => base + d.as_millis() as i64,
        None => base,
    }
}

fn matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, ApiError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(ApiError::bad_data(
            "\"or\" inside a selector is not supported",
        ));
    }
    let mut out = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        out.push(Matcher::new(MatchOp::Equal, "__name__", name));
    }
    Ok(out)
}

/// Evaluates `query` at `eval_ms` into Prometheus' `data` object.
pub(crate) fn evaluate(state: &AppState, query: &str, eval_ms: i64) -> Result<Value, ApiError> {
    let expr = parser::parse(query)
        .map_err(|e| ApiError::bad_data(format!("invalid parameter \"query\": {e}")))?;
    let t = eval_ms as f64 / 1000.0;
    match expr {
        Expr::VectorSelector(vs) => {
            let at = selector_time(&vs, eval_ms);
            let result: Vec<Value> = state
                .store
                .select(&matchers(&vs)?, at - LOOKBACK_MS + 1, at)
                .into_iter()
                .filter_map(|(series, _, samples)| latest(&samples).map(|s| (series, s)))
                .map(|(series, s)| json!({ "metric": metric_json(&series), "value": point(eval_ms, s.value) }))
                .collect();
            Ok(json!({ "resultType": "vector", "result": result }))
        }
        Expr::MatrixSelector(ms) => {
            let at = selector_time(&ms.vs, eval_ms);
            let range = ms.range.as_millis() as i64;
            let result: Vec<Value> = state
                .store
                .select(&matchers(&ms.vs)?, at - range + 1, at)
                .into_iter()
                .map(|(series, _, samples)| {
                    let values: Vec<Value> = samples.iter().map(|s| point(s.timestamp_ms, s.value)).collect();
                    json!({ "metric": metric_json(&series), "values": values })
                })
                .collect();
            Ok(json!({ "resultType": "matrix", "result": result }))
        }
        Expr::NumberLiteral(n) => Ok(json!({ "resultType": "scalar", "result": [t, format_value(n.val)] })),
        Expr::StringLiteral(s) => Ok(json!({ "resultType": "string", "result": [t, s.val] })),
        Expr::Paren(p) => evaluate(state, &p.expr.to_string(), eval_ms),
        other => Err(ApiError::bad_data(format!(
            "this aggregator evaluates series selectors and literals; {:?} expressions need the PromQL engine (not in this version): {other}",
            expr_kind(&other)
        ))),
    }
}

fn expr_kind(e: &Expr) -> &'static str {
    match e {
        Expr::Aggregate(_) => "aggregation",
        Expr::Unary(_) => "unary",
        Expr::Binary(_) => "binary",
        Expr::Subquery(_) => "subquery",
        Expr::Call(_) => "function call",
        _ => "other",
    }
}

/// The newest sample unless it is a staleness marker.
fn latest(samples: &[Sample]) -> Option<Sample> {
    samples
        .last()
        .copied()
        .filter(|s| !is_stale_marker(s.value))
}

/// Prometheus' staleness marker NaN (0x7ff0000000000002).
pub(crate) fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == 0x7ff0_0000_0000_0002
}

fn run(state: &AppState, params: QueryParams) -> Result<Json<Value>, ApiError> {
    let query = params
        .query
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": missing query"))?;
    let eval_ms = match params.time.as_deref() {
        Some(t) if !t.is_empty() => parse_time(t)?,
        _ => now_ms(),
    };
    let data = evaluate(state, &query, eval_ms)?;
    Ok(Json(json!({ "status": "success", "data": data })))
}

/// `GET /api/v1/query`.
pub(super) async fn instant(
    State(state): State<Arc<AppState>>,
    Query(params): Query<QueryParams>,
) -> Result<Json<Value>, ApiError> {
    run(&state, params)
}

/// `POST /api/v1/query` (form-encoded, as Grafana sends it).
pub(super) async fn instant_form(
    State(state): State<Arc<AppState>>,
    Form(params): Form<QueryParams>,
) -> Result<Json<Value>, ApiError> {
    run(&state, params)
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
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }
}
