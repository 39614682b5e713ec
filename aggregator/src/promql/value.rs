//! The values the evaluator passes between nodes: label sets, instant vectors per step, and the
//! series of a range input.

use fleetwatch_common::model::{Label, Sample};
use std::sync::Arc;

/// The metric-name label.
pub(super) const NAME: &str = "__name__";

/// A label set sorted by name, `__name__` included when the series has one. Shared between
/// steps and nodes, so copies are cheap.
pub type Labels = Arc<[Label]>;

/// One element of an instant vector.
#[derive(Debug, Clone)]
pub(super) struct Elem {
    /// Its label set.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

/// An instant vector at one step.
pub(super) type Vector = Vec<Elem>;

/// The result of evaluating an expression over every step of the evaluation range.
#[derive(Debug, Clone)]
pub(super) enum Evaluated {
    /// A scalar per step.
    Scalar(Vec<f64>),
    /// An instant vector per step.
    Vector(Vec<Vector>),
    /// A string literal (the same at every step).
    String(String),
}

/// A series with raw samples, the input of the range functions and of range-vector results.
#[derive(Debug, Clone)]
pub struct RangeSeries {
    /// Its label set.
    pub labels: Labels,
    /// Samples in timestamp order.
    pub samples: Vec<Sample>,
}

/// Builds a label set from a metric name and labels sorted by name.
pub(super) fn from_series(name: &str, labels: &[Label]) -> Labels {
    let mut out: Vec<Label> = Vec::with_capacity(labels.len() + 1);
    out.push(Label::new(NAME, name));
    out.extend(labels.iter().cloned());
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.into()
}

/// The value of label `name`, if set.
pub fn get<'a>(labels: &'a [Label], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

/// The label set without `__name__`.
pub(super) fn drop_name(labels: &Labels) -> Labels {
    if get(labels, NAME).is_none() {
        return labels.clone();
    }
    labels.iter().filter(|l| l.name != NAME).cloned().collect()
}

/// The label set with `name` set to `value`; an empty value removes the label, as in Prometheus.
pub(super) fn with_label(labels: &[Label], name: &str, value: &str) -> Labels {
    let mut out: Vec<Label> = labels.iter().filter(|l| l.name != name).cloned().collect();
    if !value.is_empty() {
        out.push(Label::new(name, value));
        out.sort_by(|a, b| a.name.cmp(&b.name));
    }
    out.into()
}

/// Only the labels named in `names`.
pub(super) fn keep_only(labels: &[Label], names: &[String]) -> Labels {
    labels
        .iter()
        .filter(|l| names.contains(&l.name))
        .cloned()
        .collect()
}

/// Every label but those named in `names`.
pub(super) fn remove(labels: &[Label], names: &[String]) -> Labels {
    labels
        .iter()
        .filter(|l| !names.contains(&l.name))
        .cloned()
        .collect()
}

/// A key identifying the labels selected by `on`/`ignoring`-style matching: with `include`,
/// only the named labels; otherwise every label but the named ones and `__name__`.
pub(super) fn signature(
    labels: &[Label],
    include: bool,
    names: &[String],
) -> Vec<(String, String)> {
    labels
        .iter()
        .filter(|l| {
            let named = names.contains(&l.name);
            if include {
                named
            } else {
                !named && l.name != NAME
            }
        })
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

/// Prometheus' label-set text, `{a="1", b="2"}`, for error messages.
pub(super) fn display(labels: &[Label]) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// Prometheus' staleness marker NaN (0x7ff0000000000002).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == 0x7ff0_0000_0000_0002
}
