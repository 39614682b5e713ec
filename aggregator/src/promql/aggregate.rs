//! Aggregation operators (`sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`,
//! `topk`, `bottomk`, `quantile`, `count_values`) with `by`/`without`, as Prometheus computes them.

use super::eval::{Evaluator, Shaped};
use super::format::format_go_float;
use super::value::{self, Elem, Evaluated, Labels, RangeSeries, Vector};
use super::QueryError;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{AggregateExpr, LabelModifier};
use std::collections::HashMap;

/// The parameter of `topk`, `bottomk`, `quantile` (a scalar per step) or `count_values` (a label
/// name).
enum Param {
    None,
    Scalar(Vec<f64>),
    Label(String),
}

/// Evaluates an aggregation at every step.
pub(super) fn aggregate(ev: &Evaluator<'_>, agg: &AggregateExpr) -> Result<Evaluated, QueryError> {
    Ok(ev.unshape(aggregate_shaped(ev, agg)?))
}

/// Evaluates an aggregation at every step: series-major when both the operator allows it (one
/// running value per group and step) and its operand comes series-major, step by step
/// otherwise.
pub(super) fn aggregate_shaped(
    ev: &Evaluator<'_>,
    agg: &AggregateExpr,
) -> Result<Shaped, QueryError> {
    let op = agg.op.id();
    if matches!(op, token::T_LIMITK | token::T_LIMIT_RATIO) {
        return Err(QueryError::BadData(format!(
            "aggregation {} is not supported",
            token::TokenType::new(op)
        )));
    }
    let (without, mut grouping) = match &agg.modifier {
        Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
        None => (false, Vec::new()),
    };
    let param = match &agg.param {
        None => Param::None,
        Some(p) => match ev.eval(p)? {
            Evaluated::Scalar(v) => Param::Scalar(v),
            Evaluated::String(s) => Param::Label(s),
            Evaluated::Vector(_) => {
                return Err(QueryError::BadData(format!(
                    "expected a scalar or string parameter for {}",
                    token::TokenType::new(op)
                )))
            }
        },
    };
    if op == token::T_COUNT_VALUES {
        let Param::Label(name) = &param else {
            return Err(QueryError::BadData(
                "count_values needs a string label name as its parameter".into(),
            ));
        };
        if !valid_label_name(name) {
            return Err(QueryError::Execution(format!(
                "invalid label name {name:?}"
            )));
        }
        if !without {
            grouping.push(name.clone());
        }
    }
    let running = matches!(
        op,
        token::T_SUM
            | token::T_AVG
            | token::T_MIN
            | token::T_MAX
            | token::T_COUNT
            | token::T_GROUP
            | token::T_STDDEV
            | token::T_STDVAR
    );
    let operand = if running {
        ev.eval_shaped(&agg.expr)?
    } else {
        Shaped::Other(ev.eval(&agg.expr)?)
    };
    let steps = match operand {
        Shaped::Series(series) => {
            return Ok(Shaped::Series(aggregate_series(
                ev, op, without, &grouping, series,
            )))
        }
        Shaped::Other(Evaluated::Vector(steps)) => steps,
        Shaped::Other(_) => {
            return Err(QueryError::BadData(format!(
                "expected an instant vector in aggregation {}",
                token::TokenType::new(op)
            )))
        }
    };
    let mut out = Vec::with_capacity(steps.len());
    for (k, vec) in steps.into_iter().enumerate() {
        let scalar = match &param {
            Param::Scalar(v) => v[k],
            _ => 0.0,
        };
        let label = match &param {
            Param::Label(s) => s.as_str(),
            _ => "",
        };
        out.push(aggregate_step(op, without, &grouping, scalar, label, vec)?);
    }
    Ok(Shaped::Other(Evaluated::Vector(out)))
}

/// The running value of one group at one step for `sum`, `avg`, `min`, `max`, `count`,
/// `group`, `stddev`, `stdvar` and `count_values`, folded one element at a time in the order
/// Prometheus folds them.
#[derive(Debug, Clone, Copy, Default)]
struct Running {
    /// Elements folded in (0: none yet).
    count: u64,
    value: f64,
    mean: f64,
}

impl Running {
    /// Folds in the element `v`.
    fn add(&mut self, op: TokenId, v: f64) {
        if self.count == 0 {
            *self = Running {
                count: 1,
                value: match op {
                    token::T_STDDEV | token::T_STDVAR => 0.0,
                    token::T_GROUP => 1.0,
                    _ => v,
                },
                mean: v,
            };
            return;
        }
        self.count += 1;
        match op {
            token::T_SUM => self.value += v,
            token::T_AVG => {
                let n = self.count as f64;
                if self.mean.is_infinite() {
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                self.mean += v / n - self.mean / n;
            }
            token::T_MAX if self.value < v || self.value.is_nan() => self.value = v,
            token::T_MIN if self.value > v || self.value.is_nan() => self.value = v,
            token::T_STDDEV | token::T_STDVAR => {
                let delta = v - self.mean;
                self.mean += delta / self.count as f64;
                self.value += delta * (v - self.mean);
            }
            // count and count_values count; group stays 1
            _ => {}
        }
    }

    /// The aggregate of the elements folded in.
    fn result(&self, op: TokenId) -> f64 {
        match op {
            token::T_AVG => self.mean,
            token::T_COUNT | token::T_COUNT_VALUES => self.count as f64,
            token::T_STDVAR => self.value / self.count as f64,
            token::T_STDDEV => (self.value / self.count as f64).sqrt(),
            _ => self.value,
        }
    }
}

/// `sum`, `avg`, `min`, `max`, `count`, `group`, `stddev` and `stdvar` over series-major input:
/// each series' group is found once, not once per step, and its samples are folded into the
/// group's value at each step. At every step the elements are folded in series order, as
/// [`aggregate_step`] folds a step's vector, so the results are the same to the bit.
fn aggregate_series(
    ev: &Evaluator<'_>,
    op: TokenId,
    without: bool,
    grouping: &[String],
    series: Vec<RangeSeries>,
) -> Vec<RangeSeries> {
    let steps = ev.steps();
    let mut index: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<Running>)> = Vec::new();
    for s in series {
        let key = value::signature(&s.labels, !without, grouping);
        let gi = match index.get(&key) {
            Some(&gi) => gi,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((group_labels(key), vec![Running::default(); steps]));
                groups.len() - 1
            }
        };
        let at = &mut groups[gi].1;
        for x in &s.samples {
            at[ev.step_index(x.timestamp_ms)].add(op, x.value);
        }
    }
    groups
        .into_iter()
        .map(|(labels, at)| RangeSeries {
            labels,
            samples: at
                .iter()
                .enumerate()
                .filter(|(_, r)| r.count > 0)
                .map(|(k, r)| fleetwatch_common::model::Sample {
                    timestamp_ms: ev.step_time(k),
                    value: r.result(op),
                })
                .collect(),
        })
        .filter(|s| !s.samples.is_empty())
        .collect()
}

/// A group's label set from its signature.
fn group_labels(key: Vec<(String, String)>) -> Labels {
    key.into_iter()
        .map(|(n, v)| fleetwatch_common::model::Label::new(n, v))
        .collect()
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Group {
    labels: Labels,
    running: Running,
    /// The elements, for `topk`, `bottomk` and `quantile`.
    members: Vec<Elem>,
}

fn aggregate_step(
    op: TokenId,
    without: bool,
    grouping: &[String],
    param: f64,
    value_label: &str,
    vec: Vector,
) -> Result<Vector, QueryError> {
    let keeps_members = matches!(op, token::T_TOPK | token::T_BOTTOMK | token::T_QUANTILE);
    if !keeps_members
        && !matches!(
            op,
            token::T_SUM
                | token::T_AVG
                | token::T_MIN
                | token::T_MAX
                | token::T_COUNT
                | token::T_COUNT_VALUES
                | token::T_GROUP
                | token::T_STDDEV
                | token::T_STDVAR
        )
    {
        return Err(QueryError::BadData(format!(
            "aggregation {} is not supported",
            token::TokenType::new(op)
        )));
    }
    let k = if matches!(op, token::T_TOPK | token::T_BOTTOMK) {
        if !(param.is_finite() && param.abs() < 9.2e18) {
            return Err(QueryError::Execution(format!(
                "Scalar value {param} overflows int64"
            )));
        }
        let k = param as i64;
        if k < 1 {
            return Ok(Vec::new());
        }
        k as usize
    } else {
        0
    };
    let mut index: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for mut e in vec {
        if op == token::T_COUNT_VALUES {
            e.labels = value::with_label(&e.labels, value_label, &format_go_float(e.value));
        }
        let key = value::signature(&e.labels, !without, grouping);
        let gi = match index.get(&key) {
            Some(&gi) => gi,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group {
                    labels: group_labels(key),
                    running: Running::default(),
                    members: Vec::new(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[gi];
        g.running.add(op, e.value);
        if keeps_members {
            g.members.push(e);
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        let value = match op {
            token::T_QUANTILE => {
                let values: Vec<f64> = g.members.iter().map(|e| e.value).collect();
                quantile(param, values)
            }
            token::T_TOPK | token::T_BOTTOMK => {
                let top = op == token::T_TOPK;
                // NaN ranks last either way, as in Prometheus' heaps
                g.members
                    .sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if top => b.value.total_cmp(&a.value),
                        _ => a.value.total_cmp(&b.value),
                    });
                g.members.truncate(k);
                out.extend(g.members);
                continue;
            }
            _ => g.running.result(op),
        };
        out.push(Elem {
            labels: g.labels,
            value,
        });
    }
    Ok(out)
}

/// Prometheus' quantile: linear interpolation between the closest ranks.
pub(super) fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}
