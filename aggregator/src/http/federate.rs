//! `/federate`: the latest sample of every series matching `match[]`, in the Prometheus text
//! format, for a Prometheus that scrapes the fleet.

use super::query::LOOKBACK_MS;
use super::ApiError;
use crate::promql::is_stale_marker;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fleetwatch_common::model::{now_ms, MetricKind, Sample, Series};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders series with their latest samples in the text format, one `# TYPE` per family.
pub(crate) fn render(series: &[(Series, MetricKind, Sample)]) -> String {
    let mut out = String::new();
    let mut last_family: Option<&str> = None;
    for (s, kind, sample) in series {
        if last_family != Some(s.name.as_str()) {
            let _ = writeln!(out, "# TYPE {} {}", s.name, kind.as_str());
            last_family = Some(&s.name);
        }
        out.push_str(&s.name);
        if !s.labels.is_empty() {
            out.push('{');
            for (i, l) in s.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}=\"{}\"", l.name, escape(&l.value));
            }
            out.push('}');
        }
        let _ = writeln!(
            out,
            " {} {}",
            super::query::format_value(sample.value),
            sample.timestamp_ms
        );
    }
    out
}

/// `GET /federate?match[]=SELECTOR...`.
pub(super) async fn federate(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let selectors: Vec<&String> = params
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| v)
        .collect();
    if selectors.is_empty() {
        return Err(ApiError::bad_data(
            "at least one match[] selector is required",
        ));
    }
    let now = now_ms();
    let mut found: BTreeMap<Series, (MetricKind, Sample)> = BTreeMap::new();
    for sel in selectors {
        let vs = match parser::parse(sel) {
            Ok(Expr::VectorSelector(vs)) => vs,
            Ok(_) => {
                return Err(ApiError::bad_data(format!(
                    "match[] {sel:?} is not a series selector"
                )))
            }
            Err(e) => return Err(ApiError::bad_data(format!("match[] {sel:?}: {e}"))),
        };
        let mut matchers = vs.matchers.matchers.clone();
        if let Some(name) = &vs.name {
            matchers.push(Matcher::new(MatchOp::Equal, "__name__", name));
        }
        for (series, kind, samples) in state.store.select(&matchers, now - LOOKBACK_MS, now) {
            if let Some(last) = samples.last().filter(|s| !is_stale_marker(s.value)) {
                found.insert(series, (kind, *last));
            }
        }
    }
    let rows: Vec<_> = found.into_iter().map(|(s, (k, v))| (s, k, v)).collect();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&rows),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::Label;

    #[test]
    fn text_format_escapes_and_groups() {
        let rows = vec![
            (
                Series::new("a_total", [Label::new("host", "x\"y")]),
                MetricKind::Counter,
                Sample {
                    timestamp_ms: 5,
                    value: 1.5,
                },
            ),
            (
                Series::new("a_total", [Label::new("host", "z")]),
                MetricKind::Counter,
                Sample {
                    timestamp_ms: 6,
                    value: 2.0,
                },
            ),
        ];
        assert_eq!(
            render(&rows),
            "# TYPE a_total counter\na_total{host=\"x\\\"y\"} 1.5 5\na_total{host=\"z\"} 2 6\n"
        );
    }
}
