//! PromQL evaluation over the store: instant and range queries with Prometheus 2.x semantics
//! (5-minute lookback and staleness markers, inclusive range windows, `offset` and `@`,
//! subqueries, extrapolated `rate`). Parsing is the promql-parser crate's; everything after
//! the AST is here.
//!
//! Every node yields a value at every evaluation step, so a range query and an instant query
//! (one step) take the same path. Selectors, range functions and the common aggregations work
//! series-major (one series over all steps at a time, straight into a range query's result);
//! the other nodes work step-major (one vector per step).

mod aggregate;
mod binary;
mod eval;
mod format;
mod functions;
mod value;

#[cfg(test)]
mod tests;

pub use eval::{selector_matchers, SelectHints, SeriesSource, Settings};
pub use format::{format_go_float as format_value, push_go_float, push_timestamp};
pub use functions::civil_from_days;
pub use value::{get as label_value, is_stale_marker, Labels, RangeSeries};

use eval::{scalar_series, to_series, unparen, Evaluator, Shaped};
use promql_parser::parser::{self, Expr};
use std::cell::Cell;
use value::Evaluated;

/// Most points a range query may return per series (Prometheus' limit).
pub const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Why a query failed, in Prometheus' error classes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The query or its parameters are wrong (HTTP 400, `bad_data`).
    #[error("{0}")]
    BadData(String),
    /// The query is valid but cannot be evaluated on this data (HTTP 422, `execution`).
    #[error("{0}")]
    Execution(String),
}

/// A query result, shaped as the Prometheus API returns it.
#[derive(Debug, Clone)]
pub enum QueryValue {
    /// A scalar at a time.
    Scalar {
        /// Evaluation time (ms).
        t: i64,
        /// Its value.
        v: f64,
    },
    /// A string at a time.
    String {
        /// Evaluation time (ms).
        t: i64,
        /// Its value.
        v: String,
    },
    /// An instant vector at a time, in evaluation order.
    Vector {
        /// Evaluation time (ms).
        t: i64,
        /// The elements.
        elems: Vec<(Labels, f64)>,
    },
    /// Series with points, sorted by labels.
    Matrix(Vec<RangeSeries>),
}

/// The engine's label set of a stored series.
pub fn labels_of(series: &fleetwatch_common::model::Series) -> Labels {
    value::from_series(&series.name, &series.labels)
}

fn parse(query: &str) -> Result<Expr, QueryError> {
    parser::parse(query).map_err(|e| QueryError::BadData(format!("parse error: {e}")))
}

/// Checks a query's syntax.
pub fn check(query: &str) -> Result<(), QueryError> {
    parse(query).map(|_| ())
}

/// Evaluates `query` at `t_ms`.
pub fn instant(
    source: &dyn SeriesSource,
    settings: Settings,
    query: &str,
    t_ms: i64,
) -> Result<QueryValue, QueryError> {
    let expr = parse(query)?;
    let loaded = Cell::new(0);
    let ev = Evaluator::new(source, settings, t_ms, t_ms, 1, &loaded);
    match unparen(&expr) {
        // a range vector is the whole query: its raw samples
        e @ (Expr::MatrixSelector(_) | Expr::Subquery(_)) => {
            let input = ev.eval_range_input(e, None)?;
            let end = input.window_end(t_ms);
            let start = end - input.range_ms;
            let mut series: Vec<RangeSeries> = input
                .series
                .into_iter()
                .map(|mut s| {
                    s.samples
                        .retain(|x| x.timestamp_ms >= start && x.timestamp_ms <= end);
                    s
                })
                .filter(|s| !s.samples.is_empty())
                .collect();
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            Ok(QueryValue::Matrix(series))
        }
        e => Ok(match ev.eval(e)? {
            Evaluated::Scalar(v) => QueryValue::Scalar { t: t_ms, v: v[0] },
            Evaluated::String(v) => QueryValue::String { t: t_ms, v },
            Evaluated::Vector(mut steps) => QueryValue::Vector {
                t: t_ms,
                elems: steps
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.labels, e.value))
                    .collect(),
            },
        }),
    }
}

/// Evaluates `query` at `start, start + step, ..., end` into a matrix.
pub fn range(
    source: &dyn SeriesSource,
    settings: Settings,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
) -> Result<QueryValue, QueryError> {
    if end_ms < start_ms {
        return Err(QueryError::BadData(
            "invalid parameter \"end\": end timestamp must not be before start time".into(),
        ));
    }
    if step_ms <= 0 {
        return Err(QueryError::BadData(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if (end_ms - start_ms) / step_ms >= MAX_POINTS_PER_SERIES {
        return Err(QueryError::BadData(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
        ));
    }
    let expr = parse(query)?;
    let kind = match unparen(&expr) {
        Expr::MatrixSelector(_) | Expr::Subquery(_) => Some("range vector"),
        Expr::StringLiteral(_) => Some("string"),
        _ => None,
    };
    if let Some(kind) = kind {
        return Err(QueryError::BadData(format!(
            "invalid expression type \"{kind}\" for range query, must be Scalar or instant Vector"
        )));
    }
    let loaded = Cell::new(0);
    let ev = Evaluator::new(source, settings, start_ms, end_ms, step_ms, &loaded);
    let times = ev.times();
    Ok(QueryValue::Matrix(match ev.eval_shaped(&expr)? {
        Shaped::Series(mut series) => {
            series.sort_by(|a, b| a.labels.cmp(&b.labels));
            series
        }
        Shaped::Other(Evaluated::Scalar(values)) => vec![scalar_series(&times, values)],
        Shaped::Other(Evaluated::Vector(steps)) => to_series(&times, steps),
        Shaped::Other(Evaluated::String(_)) => return Err(QueryError::BadData(
            "invalid expression type \"string\" for range query, must be Scalar or instant Vector"
                .into(),
        )),
    }))
}
