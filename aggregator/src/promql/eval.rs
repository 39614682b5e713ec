//! The evaluator: walks a parsed expression over every step of an evaluation range, the way
//! Prometheus' engine does (lookback and staleness for instant selectors, inclusive range
//! windows, `offset` and `@`, subqueries aligned to their step).

use super::value::{self, Elem, Evaluated, Labels, RangeSeries, Vector};
use super::{aggregate, binary, functions, QueryError};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

/// What a selection is for, so that a store may answer from downsampled data where the result
/// would not change visibly: the query's step, and the range function reading it (with its
/// window) if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SelectHints {
    /// Step between evaluations, ms (0 for an instant query).
    pub step_ms: i64,
    /// The function applied to a range selection (`rate`, `max_over_time`...).
    pub func: Option<&'static str>,
    /// The range selection's window, ms (0 for an instant selector).
    pub range_ms: i64,
}

/// Where the evaluator reads series from.
pub trait SeriesSource {
    /// Series matching every matcher, with their samples in `[start_ms, end_ms]` in timestamp
    /// order (staleness markers included).
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        hints: &SelectHints,
    ) -> Vec<RangeSeries>;
}

/// The subquery step when the query gives none (Prometheus' default evaluation interval).
pub(super) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Evaluation settings shared by a query and its subqueries.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How far back an instant selector looks for a sample (Prometheus: 5 minutes).
    pub lookback_ms: i64,
    /// Most samples a query may load before it is refused.
    pub max_samples: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lookback_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
        }
    }
}

/// Evaluates expressions at `start, start + step, ..., end`.
pub(super) struct Evaluator<'a> {
    source: &'a dyn SeriesSource,
    settings: Settings,
    start: i64,
    end: i64,
    step: i64,
    /// The top-level query's start and end, for `@ start()` and `@ end()`.
    query_start: i64,
    query_end: i64,
    loaded: &'a Cell<usize>,
}

/// A range input (matrix selector or subquery) with how each step windows it.
pub(super) struct RangeInput {
    /// The series with their samples.
    pub series: Vec<RangeSeries>,
    /// Window length.
    pub range_ms: i64,
    /// Fixed evaluation time from `@`, if any.
    pub at_ms: Option<i64>,
    /// Offset.
    pub offset_ms: i64,
}

impl RangeInput {
    /// The end of the window for step time `t`.
    pub(super) fn window_end(&self, t: i64) -> i64 {
        self.at_ms.unwrap_or(t) - self.offset_ms
    }
}

/// An expression's value in the shape its node produces most cheaply. Selectors, range
/// functions and the common aggregations compute one series at a time over all steps
/// (series-major), which saves building a vector per step and regrouping it into series for a
/// range query's result; every other node works step by step.
pub(super) enum Shaped {
    /// Series with a sample, stamped with the step's time, at each step where they have a
    /// value; no two share a label set.
    Series(Vec<RangeSeries>),
    /// Any value, step-major.
    Other(Evaluated),
}

/// Milliseconds of a duration.
pub(super) fn ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
        None => 0,
    }
}

/// The matchers of a selector, with the metric name as a `__name__` matcher.
pub fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::BadData(
            "\"or\" inside a selector's braces is not supported".into(),
        ));
    }
    let mut out = vs.matchers.matchers.clone();
    if let Some(name) = &vs.name {
        out.push(Matcher::new(MatchOp::Equal, value::NAME, name));
    }
    Ok(out)
}

/// Removes any number of parentheses around an expression.
pub(super) fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

impl<'a> Evaluator<'a> {
    /// An evaluator for the steps `start..=end` every `step` ms.
    pub(super) fn new(
        source: &'a dyn SeriesSource,
        settings: Settings,
        start: i64,
        end: i64,
        step: i64,
        loaded: &'a Cell<usize>,
    ) -> Self {
        Evaluator {
            source,
            settings,
            start,
            end,
            step: step.max(1),
            query_start: start,
            query_end: end,
            loaded,
        }
    }

    /// The step times.
    pub(super) fn times(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.steps());
        let mut t = self.start;
        while t <= self.end {
            out.push(t);
            t += self.step;
        }
        out
    }

    /// How many steps.
    pub(super) fn steps(&self) -> usize {
        if self.end < self.start {
            0
        } else {
            ((self.end - self.start) / self.step) as usize + 1
        }
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            Some(AtModifier::At(t)) => Some(match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            }),
            Some(AtModifier::Start) => Some(self.query_start),
            Some(AtModifier::End) => Some(self.query_end),
            None => None,
        }
    }

    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        func: Option<&'static str>,
        range_ms: i64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        let hints = SelectHints {
            step_ms: if self.end > self.start { self.step } else { 0 },
            func,
            range_ms,
        };
        let series = self.source.select(matchers, start, end, &hints);
        let n: usize = series.iter().map(|s| s.samples.len()).sum();
        let total = self.loaded.get() + n;
        self.loaded.set(total);
        if total > self.settings.max_samples {
            return Err(QueryError::Execution(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            ));
        }
        Ok(series)
    }

    /// Evaluates `expr` at every step.
    pub(super) fn eval(&self, expr: &Expr) -> Result<Evaluated, QueryError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Evaluated::Scalar(vec![n.val; self.steps()])),
            Expr::StringLiteral(s) => Ok(Evaluated::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Evaluated::Scalar(v) => Ok(Evaluated::Scalar(v.into_iter().map(|x| -x).collect())),
                Evaluated::Vector(steps) => {
                    let out: Vec<Vector> = steps
                        .into_iter()
                        .map(|vec| {
                            vec.into_iter()
                                .map(|e| Elem {
                                    labels: value::drop_name(&e.labels),
                                    value: -e.value,
                                })
                                .collect()
                        })
                        .collect();
                    check_unique(&out)?;
                    Ok(Evaluated::Vector(out))
                }
                Evaluated::String(_) => Err(QueryError::BadData(
                    "unary expression only allowed on expressions of type scalar or instant vector"
                        .into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Evaluated::Vector(self.eval_selector(vs)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => Err(QueryError::BadData(
                "a range vector is only allowed as a function argument or as the whole query"
                    .into(),
            )),
            Expr::Call(call) => functions::call(self, call),
            Expr::Aggregate(agg) => aggregate::aggregate(self, agg),
            Expr::Binary(b) => binary::binary(self, b),
            Expr::Extension(_) => Err(QueryError::BadData(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// An instant selector at every step: the newest sample within the lookback window, unless
    /// it is a staleness marker.
    pub(super) fn eval_selector(&self, vs: &VectorSelector) -> Result<Vec<Vector>, QueryError> {
        Ok(self.steps_of(self.eval_selector_series(vs)?))
    }

    /// Evaluates `expr` at every step, series-major where its node computes that way.
    pub(super) fn eval_shaped(&self, expr: &Expr) -> Result<Shaped, QueryError> {
        match expr {
            Expr::Paren(p) => self.eval_shaped(&p.expr),
            Expr::VectorSelector(vs) => Ok(Shaped::Series(self.eval_selector_series(vs)?)),
            Expr::Call(call) => functions::call_shaped(self, call),
            Expr::Aggregate(agg) => aggregate::aggregate_shaped(self, agg),
            e => Ok(Shaped::Other(self.eval(e)?)),
        }
    }

    /// A shaped value as one value per step.
    pub(super) fn unshape(&self, v: Shaped) -> Evaluated {
        match v {
            Shaped::Series(series) => Evaluated::Vector(self.steps_of(series)),
            Shaped::Other(v) => v,
        }
    }

    /// The time of step `k`.
    pub(super) fn step_time(&self, k: usize) -> i64 {
        self.start + k as i64 * self.step
    }

    /// The index of the step at time `t` (a step time of this evaluator).
    pub(super) fn step_index(&self, t: i64) -> usize {
        ((t - self.start) / self.step) as usize
    }

    /// Series-major values as one vector per step, each step's elements in series order.
    pub(super) fn steps_of(&self, series: Vec<RangeSeries>) -> Vec<Vector> {
        let mut out: Vec<Vector> = vec![Vec::new(); self.steps()];
        for s in series {
            for x in &s.samples {
                out[self.step_index(x.timestamp_ms)].push(Elem {
                    labels: s.labels.clone(),
                    value: x.value,
                });
            }
        }
        out
    }

    /// Series-major values whose label sets may repeat (a range function dropped the metric
    /// name): kept series-major when they do not; otherwise step-major, refused when two
    /// elements of one step have the same labels as Prometheus does.
    pub(super) fn distinct(&self, series: Vec<RangeSeries>) -> Result<Shaped, QueryError> {
        let mut seen = std::collections::HashSet::with_capacity(series.len());
        if series.iter().all(|s| seen.insert(&s.labels)) {
            return Ok(Shaped::Series(series));
        }
        let steps = self.steps_of(series);
        check_unique(&steps)?;
        Ok(Shaped::Other(Evaluated::Vector(steps)))
    }

    /// An instant selector series-major: for each selected series, a sample at every step
    /// where its newest sample within the lookback window is not a staleness marker.
    pub(super) fn eval_selector_series(
        &self,
        vs: &VectorSelector,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        self.eval_selector_series_with(vs, |s| s.value)
    }

    /// Like [`Self::eval_selector_series`], with `value_of` the chosen sample's value at a step
    /// (its timestamp for `timestamp()`).
    pub(super) fn eval_selector_series_with(
        &self,
        vs: &VectorSelector,
        value_of: impl Fn(&fleetwatch_common::model::Sample) -> f64,
    ) -> Result<Vec<RangeSeries>, QueryError> {
        let matchers = selector_matchers(vs)?;
        let at = self.at_ms(&vs.at);
        let off = offset_ms(&vs.offset);
        let steps = self.steps();
        if steps == 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = match at {
            Some(a) => (a - off, a - off),
            None => (self.start - off, self.end - off),
        };
        let lookback = self.settings.lookback_ms;
        // a sample answers at most this many steps
        let per_sample = (lookback / self.step) as usize + 1;
        let selected = self.select(&matchers, lo - lookback, hi, None, 0)?;
        let mut out = Vec::with_capacity(selected.len());
        for s in selected {
            let mut points =
                Vec::with_capacity(steps.min(s.samples.len().saturating_mul(per_sample)));
            let mut next = 0;
            for k in 0..steps {
                let t = self.step_time(k);
                let r = at.unwrap_or(t) - off;
                while next < s.samples.len() && s.samples[next].timestamp_ms <= r {
                    next += 1;
                }
                let Some(sample) = next.checked_sub(1).map(|i| s.samples[i]) else {
                    continue;
                };
                if sample.timestamp_ms < r - lookback || value::is_stale_marker(sample.value) {
                    continue;
                }
                points.push(fleetwatch_common::model::Sample {
                    timestamp_ms: t,
                    value: value_of(&sample),
                });
            }
            if !points.is_empty() {
                out.push(RangeSeries {
                    labels: s.labels,
                    samples: points,
                });
            }
        }
        Ok(out)
    }

    /// A matrix selector or subquery, loaded for every step's window, to be read by `func`.
    pub(super) fn eval_range_input(
        &self,
        expr: &Expr,
        func: Option<&'static str>,
    ) -> Result<RangeInput, QueryError> {
        match unparen(expr) {
            Expr::MatrixSelector(m) => {
                let matchers = selector_matchers(&m.vs)?;
                let at = self.at_ms(&m.vs.at);
                let off = offset_ms(&m.vs.offset);
                let range = ms(&m.range);
                let (lo, hi) = match at {
                    Some(a) => (a - off, a - off),
                    None => (self.start - off, self.end - off),
                };
                let mut series = self.select(&matchers, lo - range, hi, func, range)?;
                for s in &mut series {
                    s.samples.retain(|x| !value::is_stale_marker(x.value));
                }
                series.retain(|s| !s.samples.is_empty());
                Ok(RangeInput {
                    series,
                    range_ms: range,
                    at_ms: at,
                    offset_ms: off,
                })
            }
            Expr::Subquery(sq) => self.eval_subquery(sq),
            other => Err(QueryError::BadData(format!(
                "expected a range vector (a selector with [range] or a subquery), got {other}"
            ))),
        }
    }

    fn eval_subquery(&self, sq: &SubqueryExpr) -> Result<RangeInput, QueryError> {
        let step = sq
            .step
            .as_ref()
            .map(ms)
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
        let at = self.at_ms(&sq.at);
        let off = offset_ms(&sq.offset);
        let range = ms(&sq.range);
        let (lo, hi) = match at {
            Some(a) => (a - off, a - off),
            None => (self.start - off, self.end - off),
        };
        // the first step-aligned time at or after the earliest window start
        let first = lo - range;
        let mut inner_start = step * first.div_euclid(step);
        if inner_start < first {
            inner_start += step;
        }
        let inner = Evaluator {
            start: inner_start,
            end: hi,
            step,
            ..*self
        };
        let times = inner.times();
        let series = match inner.eval_shaped(&sq.expr)? {
            Shaped::Series(mut series) => {
                series.sort_by(|a, b| a.labels.cmp(&b.labels));
                series
            }
            Shaped::Other(Evaluated::Scalar(values)) => vec![scalar_series(&times, values)],
            Shaped::Other(Evaluated::Vector(steps)) => to_series(&times, steps),
            Shaped::Other(Evaluated::String(_)) => {
                return Err(QueryError::BadData(
                    "subquery is only allowed on instant vector or scalar".into(),
                ))
            }
        };
        Ok(RangeInput {
            series,
            range_ms: range,
            at_ms: at,
            offset_ms: off,
        })
    }
}

/// A scalar per step as one series without labels.
pub(super) fn scalar_series(times: &[i64], values: Vec<f64>) -> RangeSeries {
    RangeSeries {
        labels: Labels::from(Vec::new()),
        samples: times
            .iter()
            .zip(values)
            .map(|(&t, v)| fleetwatch_common::model::Sample {
                timestamp_ms: t,
                value: v,
            })
            .collect(),
    }
}

/// Hashes an address: label sets are looked up by the address of their shared allocation.
#[derive(Default)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Numbers the distinct label sets of a query's steps. Most elements share their label set's
/// allocation from step to step (a selected series, a function's cached output), so a set is
/// found by its address and hashed by content only the first time an address is seen.
#[derive(Default)]
struct LabelIds {
    by_address: HashMap<usize, usize, std::hash::BuildHasherDefault<AddressHasher>>,
    by_content: HashMap<Labels, usize>,
    /// Every label set seen, so that no address is freed and reused while numbered.
    kept: Vec<Labels>,
}

impl LabelIds {
    /// The number of `labels`' content (new numbers from 0 up).
    fn id(&mut self, labels: &Labels) -> usize {
        let address = std::sync::Arc::as_ptr(labels) as *const u8 as usize;
        if let Some(&id) = self.by_address.get(&address) {
            return id;
        }
        let next = self.by_content.len();
        let id = *self.by_content.entry(labels.clone()).or_insert(next);
        self.by_address.insert(address, id);
        self.kept.push(labels.clone());
        id
    }
}

/// Regroups per-step vectors into series, ordered by labels.
pub(super) fn to_series(times: &[i64], steps: Vec<Vector>) -> Vec<RangeSeries> {
    let mut ids = LabelIds::default();
    let mut series: Vec<RangeSeries> = Vec::new();
    for (&t, vec) in times.iter().zip(steps) {
        for e in vec {
            let id = ids.id(&e.labels);
            if id == series.len() {
                series.push(RangeSeries {
                    labels: e.labels,
                    samples: Vec::new(),
                });
            }
            series[id].samples.push(fleetwatch_common::model::Sample {
                timestamp_ms: t,
                value: e.value,
            });
        }
    }
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    series
}

/// Prometheus refuses a result in which two elements of one step have the same labels.
pub(super) fn check_unique(steps: &[Vector]) -> Result<(), QueryError> {
    let mut ids = LabelIds::default();
    // the step in which each label set was last seen
    let mut seen_in: Vec<usize> = Vec::new();
    for (step, vec) in steps.iter().enumerate() {
        if vec.len() < 2 {
            continue;
        }
        for e in vec {
            let id = ids.id(&e.labels);
            if id == seen_in.len() {
                seen_in.push(usize::MAX);
            }
            if seen_in[id] == step {
                return Err(QueryError::Execution(
                    "vector cannot contain metrics with the same labelset".into(),
                ));
            }
            seen_in[id] = step;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::value::Elem;
    use fleetwatch_common::model::Label;

    fn labels(host: &str) -> Labels {
        Labels::from(vec![Label::new("host", host)])
    }

    fn elem(labels: &Labels, value: f64) -> Elem {
        Elem {
            labels: labels.clone(),
            value,
        }
    }

    #[test]
    fn equal_label_sets_in_separate_allocations_are_one_series_and_a_duplicate() {
        let a = labels("a");
        let a_again = labels("a");
        let b = labels("b");
        let steps = vec![
            vec![elem(&b, 1.0), elem(&a, 2.0)],
            vec![elem(&a_again, 3.0)],
        ];
        let series = to_series(&[10, 20], steps);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels, a);
        assert_eq!(
            series[0]
                .samples
                .iter()
                .map(|s| (s.timestamp_ms, s.value))
                .collect::<Vec<_>>(),
            vec![(10, 2.0), (20, 3.0)]
        );
        assert!(check_unique(&[
            vec![elem(&a, 1.0), elem(&b, 2.0)],
            vec![elem(&a, 1.0), elem(&b, 2.0)]
        ])
        .is_ok());
        assert!(check_unique(&[vec![elem(&a, 1.0), elem(&a_again, 2.0)]]).is_err());
    }
}
