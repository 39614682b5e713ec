//! The log API: `/api/logs/query` (records by time range, labels, line and field filters, in
//! pages with a cursor), `/api/logs/counts` (records per level over time, for charts),
//! `/api/logs/labels` and `/api/logs/label/{name}/values`. The filter parameters are shared
//! with the live feed's `logs` topic. Searches run on blocking threads.

use super::query::{parse_duration, parse_time_named};
use super::ApiError;
use crate::logstore::index::{level_name, parse_level, LABELS};
use crate::logstore::query::{self, CountQuery, Found, Key, Literal, LogFilter, LogQuery};
use crate::promql;
use crate::state::AppState;
use axum::extract::{Path, Query, State};
use axum::Json;
use base64::Engine;
use fleetwatch_common::model::now_ms;
use promql_parser::parser::{self, Expr};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Request parameters in order, repeated keys kept.
type Params = Vec<(String, String)>;

/// The filter parameters (query, counts and the live tail).
pub(super) const FILTER_PARAMS: [&str; 7] = [
    "selector",
    "min_level",
    "contains",
    "not_contains",
    "regex",
    "not_regex",
    "field",
];

/// Most records one page may hold.
const MAX_LIMIT: usize = 5000;
/// Most buckets of a counts query (as Prometheus' points per series).
const MAX_BUCKETS: i64 = 11_000;
/// Largest compiled regular expression of a line filter.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

const NS_PER_MS: i64 = 1_000_000;

fn problem(name: &str, what: impl std::fmt::Display) -> String {
    format!("invalid parameter \"{name}\": {what}")
}

fn bad(name: &str, what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_data(problem(name, what))
}

fn regex(name: &str, v: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(v)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            problem(
                name,
                format!("{v:?} is not a valid regular expression: {e}"),
            )
        })
}

/// Builds the filter from its parameters; any parameter neither a filter one nor in `others`
/// is refused by name (the message says which and why).
pub(super) fn parse_filter(params: &Params, others: &[&str]) -> Result<LogFilter, String> {
    let mut f = LogFilter::default();
    let mut selector_seen = false;
    for (k, v) in params {
        match k.as_str() {
            "selector" => {
                if selector_seen {
                    return Err(problem(k, "given twice; put every matcher in one selector"));
                }
                selector_seen = true;
                if v.trim().is_empty() {
                    continue;
                }
                let vs = match parser::parse(v) {
                    Ok(Expr::VectorSelector(vs)) if vs.name.is_none() => vs,
                    Ok(_) => {
                        return Err(problem(
                            k,
                            format!("{v:?} is not a label selector such as {{host=\"web-1\",level=~\"error|critical\"}}"),
                        ))
                    }
                    Err(e) => return Err(problem(k, format!("{v:?}: {e}"))),
                };
                let matchers =
                    promql::selector_matchers(&vs).map_err(|e| problem(k, format!("{e:?}")))?;
                for m in &matchers {
                    if !LABELS.contains(&m.name.as_str()) {
                        return Err(problem(
                            k,
                            format!(
                                "unknown label {:?}: log streams have the labels host, level, service and source (use field= for other fields)",
                                m.name
                            ),
                        ));
                    }
                }
                f.matchers = matchers;
            }
            "min_level" => {
                f.min_level = Some(parse_level(v).ok_or_else(|| {
                    problem(
                        k,
                        format!("{v:?} is not a level (trace, debug, info, warn, error, critical)"),
                    )
                })?);
            }
            "contains" | "not_contains" => {
                if v.is_empty() {
                    return Err(problem(k, "must not be empty"));
                }
                let into = if k == "contains" {
                    &mut f.contains
                } else {
                    &mut f.not_contains
                };
                into.push(Literal::new(v));
            }
            "regex" => f.regex.push(regex(k, v)?),
            "not_regex" => f.not_regex.push(regex(k, v)?),
            "field" => match v.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    f.fields.push((key.to_string(), value.to_string()))
                }
                _ => {
                    return Err(problem(
                        k,
                        format!("{v:?} is not NAME=VALUE (for example field=trace_id=4bf92f35)"),
                    ))
                }
            },
            other if others.contains(&other) => {}
            other => {
                let mut known: Vec<&str> = FILTER_PARAMS.to_vec();
                known.extend_from_slice(others);
                return Err(format!(
                    "unknown parameter \"{other}\"; the parameters are {}",
                    known.join(", ")
                ));
            }
        }
    }
    Ok(f)
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// `start` and `end` in ns: `end` defaults to now, `start` to an hour before `end`.
fn range(params: &Params) -> Result<(i64, i64), ApiError> {
    let end = match param(params, "end") {
        Some(s) => parse_time_named(s, "end")?,
        None => now_ms(),
    };
    let start = match param(params, "start") {
        Some(s) => parse_time_named(s, "start")?,
        None => end - 3_600_000,
    };
    if start > end {
        return Err(bad("end", "must not be before start"));
    }
    Ok((
        start.saturating_mul(NS_PER_MS),
        end.saturating_mul(NS_PER_MS).saturating_add(NS_PER_MS - 1),
    ))
}

/// RFC 3339 in UTC with nanoseconds.
pub(super) fn rfc3339_ns(ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = promql::civil_from_days(secs.div_euclid(86_400));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ts_ns.rem_euclid(1_000_000_000)
    )
}

/// A record as the API and the live feed show it.
pub(super) fn record_json(f: &Found) -> Value {
    let mut fields = Map::new();
    for (k, v) in &f.record.fields {
        fields.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "time": rfc3339_ns(f.record.timestamp_ns),
        "timestamp_ns": f.record.timestamp_ns.to_string(),
        "host": f.stream.host,
        "source": f.stream.source,
        "service": f.stream.service,
        "level": level_name(f.stream.level),
        "message": f.record.message,
        "fields": fields,
    })
}

const CURSOR_ENGINE: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The opaque cursor: the last record's key and the direction.
fn encode_cursor(k: &Key, newest_first: bool) -> String {
    let d = if newest_first { 'n' } else { 'o' };
    CURSOR_ENGINE.encode(format!("1:{d}:{}:{}:{}:{}", k.ts, k.seq, k.idx, k.host))
}

fn decode_cursor(s: &str, newest_first: bool) -> Result<Key, ApiError> {
    let invalid = || {
        bad(
            "cursor",
            "not a cursor this API gave (pass the last page's cursor unchanged)",
        )
    };
    let bytes = CURSOR_ENGINE.decode(s).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(6, ':');
    let (Some("1"), Some(d), Some(ts), Some(seq), Some(idx), Some(host)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(invalid());
    };
    if (d == "n") != newest_first {
        return Err(bad(
            "cursor",
            "it was made for the other direction; keep direction as on the first page",
        ));
    }
    Ok(Key {
        ts: ts.parse().map_err(|_| invalid())?,
        seq: seq.parse().map_err(|_| invalid())?,
        idx: idx.parse().map_err(|_| invalid())?,
        host: host.to_string(),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("log query task failed: {e}")))
}

/// `GET /api/logs/query`: one page of records.
pub(super) async fn query(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let filter = parse_filter(&params, &["start", "end", "direction", "limit", "cursor"])
        .map_err(ApiError::bad_data)?;
    let (start_ns, end_ns) = range(&params)?;
    let newest_first = match param(&params, "direction").unwrap_or("newest") {
        "newest" | "backward" => true,
        "oldest" | "forward" => false,
        other => {
            return Err(bad(
                "direction",
                format!("{other:?} is neither newest nor oldest"),
            ))
        }
    };
    let limit = match param(&params, "limit") {
        None => 100,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "limit",
                    format!("{s:?} is not a number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let after = param(&params, "cursor")
        .map(|c| decode_cursor(c, newest_first))
        .transpose()?;
    let q = LogQuery {
        filter,
        start_ns,
        end_ns,
        newest_first,
        limit,
        after,
    };
    let logs = state.logs.clone();
    let page = blocking(move || {
        let snap = logs.snapshot(&q.filter, q.start_ns, q.end_ns);
        query::page(&snap, &q)
    })
    .await?;
    let records: Vec<Value> = page.records.iter().map(record_json).collect();
    Ok(Json(json!({
        "status": "success",
        "data": {
            "records": records,
            "cursor": page.next.map(|k| encode_cursor(&k, newest_first)),
        }
    })))
}

/// `GET /api/logs/counts`: matching records per level in buckets of `step`.
pub(super) async fn counts(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    let filter = parse_filter(&params, &["start", "end", "step"]).map_err(ApiError::bad_data)?;
    let (start_ns, end_ns) = range(&params)?;
    let step_ms = match param(&params, "step") {
        Some(s) => parse_duration(s, "step")?,
        None => ((end_ns - start_ns) / NS_PER_MS / 60).max(1000),
    };
    if step_ms <= 0 {
        return Err(bad("step", "must be positive"));
    }
    let step_ns = step_ms.saturating_mul(NS_PER_MS);
    if (end_ns - start_ns) / step_ns >= MAX_BUCKETS {
        return Err(bad(
            "step",
            format!("more than {MAX_BUCKETS} buckets; use a larger step or a shorter range"),
        ));
    }
    let q = CountQuery {
        filter,
        start_ns,
        end_ns,
        step_ns,
    };
    let logs = state.logs.clone();
    let counts = blocking(move || {
        let snap = logs.snapshot(&q.filter, q.start_ns, q.end_ns);
        query::counts(&snap, &q)
    })
    .await?;
    let secs = |ns: i64| ns as f64 / 1e9;
    let series: Vec<Value> = counts
        .into_iter()
        .map(|(level, buckets)| {
            let values: Vec<Value> = buckets
                .iter()
                .enumerate()
                .map(|(i, n)| json!([secs(start_ns + i as i64 * step_ns), n]))
                .collect();
            json!({ "level": level_name(level), "total": buckets.iter().sum::<u64>(), "values": values })
        })
        .collect();
    Ok(Json(json!({
        "status": "success",
        "data": { "step": secs(step_ns), "series": series }
    })))
}

/// `GET /api/logs/labels`: the label names of log streams.
pub(super) async fn labels() -> Json<Value> {
    Json(json!({ "status": "success", "data": LABELS }))
}

/// `GET /api/logs/label/{name}/values?start=&end=`: values among streams with records then.
pub(super) async fn label_values(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<Value>, ApiError> {
    if !LABELS.contains(&name.as_str()) {
        return Err(ApiError::bad_data(format!(
            "unknown label {name:?}: log streams have the labels host, level, service and source"
        )));
    }
    for (k, _) in &params {
        if k != "start" && k != "end" {
            return Err(ApiError::bad_data(format!(
                "unknown parameter \"{k}\"; the parameters are start, end"
            )));
        }
    }
    let (start_ns, end_ns) = match (param(&params, "start"), param(&params, "end")) {
        (None, None) => (i64::MIN, i64::MAX),
        _ => range(&params)?,
    };
    let values = state.logs.label_values(&name, start_ns, end_ns);
    Ok(Json(json!({ "status": "success", "data": values })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn error_of(r: Result<LogFilter, String>) -> String {
        r.unwrap_err()
    }

    #[test]
    fn filters_parse_and_bad_ones_name_their_parameter() {
        let f = parse_filter(
            &p(&[
                ("selector", r#"{host="web-1",level=~"error|critical"}"#),
                ("contains", "timeout"),
                ("field", "trace_id=abc"),
                ("min_level", "warning"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(f.matchers.len(), 2);
        assert_eq!(f.fields, vec![("trace_id".to_string(), "abc".to_string())]);
        for (params, needle) in [
            (
                p(&[("selector", "{zone=\"a\"}")]),
                "\"selector\": unknown label \"zone\"",
            ),
            (p(&[("selector", "up{host=\"a\"}")]), "\"selector\""),
            (p(&[("selector", "{host=")]), "\"selector\""),
            (p(&[("min_level", "loud")]), "\"min_level\""),
            (p(&[("regex", "(")]), "\"regex\""),
            (p(&[("not_regex", "[")]), "\"not_regex\""),
            (p(&[("field", "novalue")]), "\"field\""),
            (p(&[("contains", "")]), "\"contains\""),
            (p(&[("trace_id", "x")]), "unknown parameter \"trace_id\""),
        ] {
            let e = error_of(parse_filter(&params, &[]));
            assert!(e.contains(needle), "{params:?}: {e}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_the_other_direction() {
        let k = Key {
            ts: 1_700_000_000_123_456_789,
            host: "web:1".into(),
            seq: 42,
            idx: 7,
        };
        let c = encode_cursor(&k, true);
        assert_eq!(decode_cursor(&c, true).unwrap(), k);
        assert!(format!("{:?}", decode_cursor(&c, false).unwrap_err()).contains("direction"));
        assert!(format!("{:?}", decode_cursor("garbage!", true).unwrap_err()).contains("cursor"));
    }

    #[test]
    fn times_print_with_nanoseconds() {
        assert_eq!(rfc3339_ns(1_000_000_001), "1970-01-01T00:00:01.000000001Z");
    }
}
