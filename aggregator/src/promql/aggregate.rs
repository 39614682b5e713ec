//! Aggregation operators (`sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`,
//! `topk`, `bottomk`, `quantile`, `count_values`) with `by`/`without`, as Prometheus computes them.

use super::eval::Evaluator;
use super::value::{self, Elem, Evaluated, Labels, Vector};
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
    let Evaluated::Vector(steps) = ev.eval(&agg.expr)? else {
        return Err(QueryError::BadData(format!(
            "expected an instant vector in aggregation {}",
            token::TokenType::new(op)
        )));
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
    Ok(Evaluated::Vector(out))
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub fn format_go_float(v: f64) -> String {
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

struct Group {
    labels: Labels,
    value: f64,
    mean: f64,
    count: u64,
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
        let Some(&gi) = index.get(&key) else {
            let labels: Labels = key
                .iter()
                .map(|(n, v)| fleetwatch_common::model::Label::new(n, v))
                .collect();
            index.insert(key, groups.len());
            groups.push(Group {
                labels,
                value: match op {
                    token::T_STDDEV | token::T_STDVAR => 0.0,
                    token::T_GROUP => 1.0,
                    _ => e.value,
                },
                mean: e.value,
                count: 1,
                members: if matches!(op, token::T_TOPK | token::T_BOTTOMK | token::T_QUANTILE) {
                    vec![e]
                } else {
                    Vec::new()
                },
            });
            continue;
        };
        let g = &mut groups[gi];
        let v = e.value;
        match op {
            token::T_SUM => g.value += v,
            token::T_AVG => {
                g.count += 1;
                let n = g.count as f64;
                if g.mean.is_infinite() {
                    if v.is_infinite() && (g.mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                g.mean += v / n - g.mean / n;
            }
            token::T_MAX => {
                if g.value < v || g.value.is_nan() {
                    g.value = v
                }
            }
            token::T_MIN => {
                if g.value > v || g.value.is_nan() {
                    g.value = v
                }
            }
            token::T_COUNT | token::T_COUNT_VALUES => g.count += 1,
            token::T_STDDEV | token::T_STDVAR => {
                g.count += 1;
                let delta = v - g.mean;
                g.mean += delta / g.count as f64;
                g.value += delta * (v - g.mean);
            }
            token::T_TOPK | token::T_BOTTOMK | token::T_QUANTILE => g.members.push(e),
            token::T_GROUP => {}
            other => {
                return Err(QueryError::BadData(format!(
                    "aggregation {} is not supported",
                    token::TokenType::new(other)
                )))
            }
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for mut g in groups {
        let value = match op {
            token::T_AVG => g.mean,
            token::T_COUNT | token::T_COUNT_VALUES => g.count as f64,
            token::T_STDVAR => g.value / g.count as f64,
            token::T_STDDEV => (g.value / g.count as f64).sqrt(),
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
            _ => g.value,
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
