//! Binary operators: arithmetic, comparison (filtering or `bool`) and set operators, with
//! Prometheus' vector matching (`on`/`ignoring`, `group_left`/`group_right`).

use super::eval::{check_unique, Evaluator};
use super::value::{self, Elem, Evaluated, Labels, Vector};
use super::QueryError;
use promql_parser::label::Labels as NameList;
use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use std::collections::{HashMap, HashSet};

/// How two vectors are matched.
struct Matching {
    card: Card,
    /// `on(...)` when true, `ignoring(...)` (or nothing) when false.
    on: bool,
    names: Vec<String>,
    /// `group_left(...)`/`group_right(...)` labels copied from the "one" side.
    include: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    OneToOne,
    ManyToOne,
    OneToMany,
}

fn names(l: &NameList) -> Vec<String> {
    l.labels.clone()
}

fn matching(b: &BinaryExpr) -> Matching {
    let Some(m) = &b.modifier else {
        return Matching {
            card: Card::OneToOne,
            on: false,
            names: Vec::new(),
            include: Vec::new(),
        };
    };
    let (on, names_) = match &m.matching {
        Some(LabelModifier::Include(l)) => (true, names(l)),
        Some(LabelModifier::Exclude(l)) => (false, names(l)),
        None => (false, Vec::new()),
    };
    let (card, include) = match &m.card {
        VectorMatchCardinality::ManyToOne(l) => (Card::ManyToOne, names(l)),
        VectorMatchCardinality::OneToMany(l) => (Card::OneToMany, names(l)),
        _ => (Card::OneToOne, Vec::new()),
    };
    Matching {
        card,
        on,
        names: names_,
        include,
    }
}

fn is_comparison(op: TokenId) -> bool {
    matches!(
        op,
        token::T_EQLC | token::T_NEQ | token::T_GTR | token::T_LSS | token::T_GTE | token::T_LTE
    )
}

fn is_set(op: TokenId) -> bool {
    matches!(op, token::T_LAND | token::T_LOR | token::T_LUNLESS)
}

/// Arithmetic drops the metric name; comparisons keep it.
fn drops_name(op: TokenId) -> bool {
    matches!(
        op,
        token::T_ADD
            | token::T_SUB
            | token::T_MUL
            | token::T_DIV
            | token::T_POW
            | token::T_MOD
            | token::T_ATAN2
    )
}

/// `(value, keep)` of `l op r` as Prometheus' vectorElemBinop: comparisons return the left value
/// and whether the comparison holds.
fn elem_op(op: TokenId, l: f64, r: f64) -> Result<(f64, bool), QueryError> {
    Ok(match op {
        token::T_ADD => (l + r, true),
        token::T_SUB => (l - r, true),
        token::T_MUL => (l * r, true),
        token::T_DIV => (l / r, true),
        token::T_POW => (l.powf(r), true),
        token::T_MOD => (l % r, true),
        token::T_ATAN2 => (l.atan2(r), true),
        token::T_EQLC => (l, l == r),
        token::T_NEQ => (l, l != r),
        token::T_GTR => (l, l > r),
        token::T_LSS => (l, l < r),
        token::T_GTE => (l, l >= r),
        token::T_LTE => (l, l <= r),
        other => {
            return Err(QueryError::BadData(format!(
                "operator {} is not defined between these operands",
                token::TokenType::new(other)
            )))
        }
    })
}

/// Evaluates a binary expression at every step.
pub(super) fn binary(ev: &Evaluator<'_>, b: &BinaryExpr) -> Result<Evaluated, QueryError> {
    let op = b.op.id();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let lhs = ev.eval(&b.lhs)?;
    let rhs = ev.eval(&b.rhs)?;
    match (lhs, rhs) {
        (Evaluated::Scalar(l), Evaluated::Scalar(r)) => {
            let mut out = Vec::with_capacity(l.len());
            for (a, c) in l.into_iter().zip(r) {
                let (v, keep) = elem_op(op, a, c)?;
                out.push(if is_comparison(op) {
                    if keep {
                        1.0
                    } else {
                        0.0
                    }
                } else {
                    v
                });
            }
            Ok(Evaluated::Scalar(out))
        }
        (Evaluated::Vector(l), Evaluated::Scalar(r)) => {
            vector_scalar(op, l, &r, false, return_bool)
        }
        (Evaluated::Scalar(l), Evaluated::Vector(r)) => vector_scalar(op, r, &l, true, return_bool),
        (Evaluated::Vector(l), Evaluated::Vector(r)) => {
            let m = matching(b);
            let mut out = Vec::with_capacity(l.len());
            for (lv, rv) in l.into_iter().zip(r) {
                out.push(if is_set(op) {
                    set_op(op, lv, rv, &m)
                } else {
                    vector_vector(op, lv, rv, &m, return_bool)?
                });
            }
            check_unique(&out)?;
            Ok(Evaluated::Vector(out))
        }
        _ => Err(QueryError::BadData(format!(
            "binary expression must contain only scalar and instant vector types: {b}"
        ))),
    }
}

fn vector_scalar(
    op: TokenId,
    steps: Vec<Vector>,
    scalars: &[f64],
    scalar_on_left: bool,
    return_bool: bool,
) -> Result<Evaluated, QueryError> {
    if is_set(op) {
        return Err(QueryError::BadData(format!(
            "set operator {} not allowed in binary scalar expression",
            token::TokenType::new(op)
        )));
    }
    let mut out = Vec::with_capacity(steps.len());
    for (vec, &s) in steps.into_iter().zip(scalars) {
        let mut step = Vec::with_capacity(vec.len());
        for e in vec {
            let (l, r) = if scalar_on_left {
                (s, e.value)
            } else {
                (e.value, s)
            };
            let (mut v, mut keep) = elem_op(op, l, r)?;
            // a comparison keeps the vector's value even when the scalar is on the left
            if is_comparison(op) && scalar_on_left {
                v = r;
            }
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            if keep {
                let labels = if drops_name(op) || return_bool {
                    value::drop_name(&e.labels)
                } else {
                    e.labels
                };
                step.push(Elem { labels, value: v });
            }
        }
        out.push(step);
    }
    check_unique(&out)?;
    Ok(Evaluated::Vector(out))
}

fn sig(labels: &[fleetwatch_common::model::Label], m: &Matching) -> Vec<(String, String)> {
    value::signature(labels, m.on, &m.names)
}

fn vector_vector(
    op: TokenId,
    lhs: Vector,
    rhs: Vector,
    m: &Matching,
    return_bool: bool,
) -> Result<Vector, QueryError> {
    // one-to-many is many-to-one with the sides swapped
    let (many, one) = if m.card == Card::OneToMany {
        (rhs, lhs)
    } else {
        (lhs, rhs)
    };
    let mut one_by_sig: HashMap<Vec<(String, String)>, &Elem> = HashMap::new();
    for e in &one {
        if let Some(prev) = one_by_sig.insert(sig(&e.labels, m), e) {
            let side = if m.card == Card::OneToMany {
                "left"
            } else {
                "right"
            };
            return Err(QueryError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                display_sig(&sig(&e.labels, m)),
                value::display(&prev.labels),
                value::display(&e.labels)
            )));
        }
    }
    let mut matched: HashMap<Vec<(String, String)>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for e in &many {
        let s = sig(&e.labels, m);
        let Some(other) = one_by_sig.get(&s) else {
            continue;
        };
        let (l, r) = if m.card == Card::OneToMany {
            (other.value, e.value)
        } else {
            (e.value, other.value)
        };
        let (mut v, keep) = elem_op(op, l, r)?;
        if return_bool {
            v = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let mut labels = result_labels(&e.labels, &other.labels, op, m);
        if return_bool {
            labels = value::drop_name(&labels);
        }
        let seen = matched.entry(s).or_default();
        if m.card == Card::OneToOne {
            if !seen.is_empty() {
                return Err(QueryError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                ));
            }
            seen.insert(labels.clone());
        } else if !seen.insert(labels.clone()) {
            return Err(QueryError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".into(),
            ));
        }
        out.push(Elem { labels, value: v });
    }
    Ok(out)
}

fn display_sig(s: &[(String, String)]) -> String {
    let inner: Vec<String> = s.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The result's labels: the "many" side's, less the name for arithmetic, reduced to the
/// matching labels for one-to-one, plus `group_x` labels from the "one" side.
fn result_labels(many: &Labels, one: &Labels, op: TokenId, m: &Matching) -> Labels {
    let mut labels = if drops_name(op) {
        value::drop_name(many)
    } else {
        many.clone()
    };
    if m.card == Card::OneToOne {
        labels = if m.on {
            value::keep_only(&labels, &m.names)
        } else {
            value::remove(&labels, &m.names)
        };
    }
    for name in &m.include {
        labels = value::with_label(&labels, name, value::get(one, name).unwrap_or(""));
    }
    labels
}

fn set_op(op: TokenId, lhs: Vector, rhs: Vector, m: &Matching) -> Vector {
    match op {
        token::T_LAND => {
            if lhs.is_empty() || rhs.is_empty() {
                return Vec::new();
            }
            let right: HashSet<_> = rhs.iter().map(|e| sig(&e.labels, m)).collect();
            lhs.into_iter()
                .filter(|e| right.contains(&sig(&e.labels, m)))
                .collect()
        }
        token::T_LOR => {
            let left: HashSet<_> = lhs.iter().map(|e| sig(&e.labels, m)).collect();
            let mut out = lhs;
            out.extend(
                rhs.into_iter()
                    .filter(|e| !left.contains(&sig(&e.labels, m))),
            );
            out
        }
        _ => {
            let right: HashSet<_> = rhs.iter().map(|e| sig(&e.labels, m)).collect();
            lhs.into_iter()
                .filter(|e| !right.contains(&sig(&e.labels, m)))
                .collect()
        }
    }
}
