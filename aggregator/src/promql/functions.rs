//! PromQL functions, computed as Prometheus 2.x computes them (extrapolation in `rate`,
//! `increase` and `delta`; linear regression for `deriv` and `predict_linear`; bucket
//! interpolation in `histogram_quantile`).

use super::aggregate::quantile;
use super::eval::{check_unique, selector_matchers, unparen, Evaluator, RangeInput, Shaped};
use super::value::{self, Elem, Evaluated, Labels, RangeSeries, Vector};
use super::QueryError;
use fleetwatch_common::model::{Label, Sample};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use std::collections::HashMap;

/// What a range function sees for one series at one step.
struct Window<'a> {
    samples: &'a [Sample],
    /// The window's start and end (inclusive), after `offset` and `@`.
    start: i64,
    end: i64,
    range_ms: i64,
    /// The step's evaluation time.
    t: i64,
    /// The step index, for per-step scalar parameters.
    k: usize,
}

/// Evaluates a function call at every step.
pub(super) fn call(ev: &Evaluator<'_>, call: &Call) -> Result<Evaluated, QueryError> {
    Ok(ev.unshape(call_shaped(ev, call)?))
}

/// Evaluates a function call at every step: the range functions series-major, the others step
/// by step.
pub(super) fn call_shaped(ev: &Evaluator<'_>, call: &Call) -> Result<Shaped, QueryError> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
    match range_call(ev, name, &args)? {
        Some(out) => Ok(out),
        None => Ok(Shaped::Other(step_call(ev, name, &args)?)),
    }
}

/// The functions of a range vector, series-major; `None` for any other function.
fn range_call(
    ev: &Evaluator<'_>,
    name: &'static str,
    args: &[&Expr],
) -> Result<Option<Shaped>, QueryError> {
    let out = match name {
        "rate" => range_fn(ev, name, args[0], true, |w| {
            extrapolated_rate(w, true, true)
        })?,
        "increase" => range_fn(ev, name, args[0], true, |w| {
            extrapolated_rate(w, true, false)
        })?,
        "delta" => range_fn(ev, name, args[0], true, |w| {
            extrapolated_rate(w, false, false)
        })?,
        "irate" => range_fn(ev, name, args[0], true, |w| instant_value(w, true))?,
        "idelta" => range_fn(ev, name, args[0], true, |w| instant_value(w, false))?,
        "deriv" => range_fn(ev, name, args[0], true, |w| {
            (w.samples.len() >= 2)
                .then(|| linear_regression(w.samples, w.samples[0].timestamp_ms).0)
        })?,
        "predict_linear" => {
            let secs = scalar_arg(ev, args[1])?;
            range_fn(ev, name, args[0], true, |w| {
                (w.samples.len() >= 2).then(|| {
                    let (slope, intercept) = linear_regression(w.samples, w.t);
                    intercept + slope * secs[w.k]
                })
            })?
        }
        "changes" => range_fn(ev, name, args[0], true, |w| {
            Some(
                w.samples
                    .windows(2)
                    .filter(|p| {
                        p[1].value != p[0].value && !(p[0].value.is_nan() && p[1].value.is_nan())
                    })
                    .count() as f64,
            )
        })?,
        "resets" => range_fn(ev, name, args[0], true, |w| {
            Some(
                w.samples
                    .windows(2)
                    .filter(|p| p[1].value < p[0].value)
                    .count() as f64,
            )
        })?,
        "avg_over_time" => range_fn(ev, name, args[0], true, |w| Some(avg(w.samples)))?,
        "sum_over_time" => range_fn(ev, name, args[0], true, |w| {
            Some(kahan(w.samples.iter().map(|s| s.value)))
        })?,
        "count_over_time" => range_fn(ev, name, args[0], true, |w| Some(w.samples.len() as f64))?,
        "min_over_time" => range_fn(ev, name, args[0], true, |w| {
            Some(extreme(w.samples, |a, b| b < a))
        })?,
        "max_over_time" => range_fn(ev, name, args[0], true, |w| {
            Some(extreme(w.samples, |a, b| b > a))
        })?,
        "last_over_time" => range_fn(ev, name, args[0], false, |w| {
            w.samples.last().map(|s| s.value)
        })?,
        "present_over_time" => range_fn(ev, name, args[0], true, |_| Some(1.0))?,
        "stddev_over_time" => range_fn(ev, name, args[0], true, |w| {
            Some(variance(w.samples).sqrt())
        })?,
        "stdvar_over_time" => range_fn(ev, name, args[0], true, |w| Some(variance(w.samples)))?,
        "quantile_over_time" => {
            let q = scalar_arg(ev, args[0])?;
            range_fn(ev, name, args[1], true, |w| {
                Some(quantile(
                    q[w.k],
                    w.samples.iter().map(|s| s.value).collect(),
                ))
            })?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// The functions of instant vectors and scalars, step by step.
fn step_call(
    ev: &Evaluator<'_>,
    name: &'static str,
    args: &[&Expr],
) -> Result<Evaluated, QueryError> {
    let out = match name {
        "absent_over_time" => absent_over_time(ev, args[0])?,
        "absent" => absent(ev, args[0])?,
        "abs" => map_values(ev, args[0], f64::abs)?,
        "ceil" => map_values(ev, args[0], f64::ceil)?,
        "floor" => map_values(ev, args[0], f64::floor)?,
        "exp" => map_values(ev, args[0], f64::exp)?,
        "ln" => map_values(ev, args[0], f64::ln)?,
        "log2" => map_values(ev, args[0], f64::log2)?,
        "log10" => map_values(ev, args[0], f64::log10)?,
        "sqrt" => map_values(ev, args[0], f64::sqrt)?,
        "sgn" => map_values(ev, args[0], |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        })?,
        "sin" => map_values(ev, args[0], f64::sin)?,
        "cos" => map_values(ev, args[0], f64::cos)?,
        "tan" => map_values(ev, args[0], f64::tan)?,
        "asin" => map_values(ev, args[0], f64::asin)?,
        "acos" => map_values(ev, args[0], f64::acos)?,
        "atan" => map_values(ev, args[0], f64::atan)?,
        "sinh" => map_values(ev, args[0], f64::sinh)?,
        "cosh" => map_values(ev, args[0], f64::cosh)?,
        "tanh" => map_values(ev, args[0], f64::tanh)?,
        "asinh" => map_values(ev, args[0], f64::asinh)?,
        "acosh" => map_values(ev, args[0], f64::acosh)?,
        "atanh" => map_values(ev, args[0], f64::atanh)?,
        "deg" => map_values(ev, args[0], f64::to_degrees)?,
        "rad" => map_values(ev, args[0], f64::to_radians)?,
        "round" => {
            let to = match args.get(1) {
                Some(a) => scalar_arg(ev, a)?,
                None => vec![1.0; ev.steps()],
            };
            map_values_k(ev, args[0], |v, k| {
                let inv = 1.0 / to[k];
                (v * inv + 0.5).floor() / inv
            })?
        }
        "clamp" => {
            let (lo, hi) = (scalar_arg(ev, args[1])?, scalar_arg(ev, args[2])?);
            let mut steps = vector_arg(ev, args[0])?;
            for (k, vec) in steps.iter_mut().enumerate() {
                if hi[k] < lo[k] {
                    vec.clear();
                }
                for e in vec.iter_mut() {
                    e.labels = value::drop_name(&e.labels);
                    e.value = lo[k].max(hi[k].min(e.value));
                }
            }
            Evaluated::Vector(steps)
        }
        "clamp_min" => {
            let lo = scalar_arg(ev, args[1])?;
            map_values_k(ev, args[0], |v, k| lo[k].max(v))?
        }
        "clamp_max" => {
            let hi = scalar_arg(ev, args[1])?;
            map_values_k(ev, args[0], |v, k| hi[k].min(v))?
        }
        "time" => Evaluated::Scalar(ev.times().iter().map(|&t| t as f64 / 1000.0).collect()),
        "pi" => Evaluated::Scalar(vec![std::f64::consts::PI; ev.steps()]),
        "vector" => {
            let s = scalar_arg(ev, args[0])?;
            Evaluated::Vector(
                s.into_iter()
                    .map(|v| {
                        vec![Elem {
                            labels: Labels::from(Vec::new()),
                            value: v,
                        }]
                    })
                    .collect(),
            )
        }
        "scalar" => Evaluated::Scalar(
            vector_arg(ev, args[0])?
                .into_iter()
                .map(|v| if v.len() == 1 { v[0].value } else { f64::NAN })
                .collect(),
        ),
        "timestamp" => timestamp(ev, args[0])?,
        "sort" | "sort_desc" => {
            let desc = name == "sort_desc";
            let mut steps = vector_arg(ev, args[0])?;
            for vec in &mut steps {
                vec.sort_by(|a, b| {
                    // NaN sorts last in both directions, as in Prometheus
                    match (a.value.is_nan(), b.value.is_nan()) {
                        (true, true) => std::cmp::Ordering::Equal,
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        _ if desc => b.value.total_cmp(&a.value),
                        _ => a.value.total_cmp(&b.value),
                    }
                });
            }
            return Ok(Evaluated::Vector(steps));
        }
        "label_replace" => label_replace(ev, args)?,
        "label_join" => label_join(ev, args)?,
        "histogram_quantile" => histogram_quantile(ev, args[0], args[1])?,
        "minute" | "hour" | "day_of_month" | "day_of_week" | "day_of_year" | "days_in_month"
        | "month" | "year" => date_fn(ev, name, args.first().copied())?,
        other => {
            return Err(QueryError::BadData(format!(
                "function {other:?} is not supported by this engine"
            )))
        }
    };
    if let Evaluated::Vector(steps) = &out {
        check_unique(steps)?;
    }
    Ok(out)
}

fn scalar_arg(ev: &Evaluator<'_>, e: &Expr) -> Result<Vec<f64>, QueryError> {
    match ev.eval(e)? {
        Evaluated::Scalar(v) => Ok(v),
        _ => Err(QueryError::BadData(format!(
            "expected type scalar in call to function, got {e}"
        ))),
    }
}

fn vector_arg(ev: &Evaluator<'_>, e: &Expr) -> Result<Vec<Vector>, QueryError> {
    match ev.eval(e)? {
        Evaluated::Vector(v) => Ok(v),
        _ => Err(QueryError::BadData(format!(
            "expected type instant vector in call to function, got {e}"
        ))),
    }
}

fn string_arg(e: &Expr) -> Result<String, QueryError> {
    match unparen(e) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        other => Err(QueryError::BadData(format!(
            "expected type string in call to function, got {other}"
        ))),
    }
}

/// Applies `f` to every element, dropping the metric name.
fn map_values(
    ev: &Evaluator<'_>,
    arg: &Expr,
    f: impl Fn(f64) -> f64,
) -> Result<Evaluated, QueryError> {
    map_values_k(ev, arg, |v, _| f(v))
}

fn map_values_k(
    ev: &Evaluator<'_>,
    arg: &Expr,
    f: impl Fn(f64, usize) -> f64,
) -> Result<Evaluated, QueryError> {
    let mut steps = vector_arg(ev, arg)?;
    for (k, vec) in steps.iter_mut().enumerate() {
        for e in vec.iter_mut() {
            e.labels = value::drop_name(&e.labels);
            e.value = f(e.value, k);
        }
    }
    Ok(Evaluated::Vector(steps))
}

/// Applies a range function to every series' window at every step, series by series.
fn range_fn(
    ev: &Evaluator<'_>,
    func: &'static str,
    arg: &Expr,
    drop_name: bool,
    f: impl Fn(&Window<'_>) -> Option<f64>,
) -> Result<Shaped, QueryError> {
    let input = ev.eval_range_input(arg, Some(func))?;
    let times = ev.times();
    let mut out: Vec<RangeSeries> = Vec::with_capacity(input.series.len());
    for s in &input.series {
        let mut points = Vec::with_capacity(times.len());
        for_each_window(&input, &s.samples, &times, |k, t, start, end, samples| {
            let w = Window {
                samples,
                start,
                end,
                range_ms: input.range_ms,
                t,
                k,
            };
            if let Some(v) = f(&w) {
                points.push(Sample {
                    timestamp_ms: t,
                    value: v,
                });
            }
        });
        if points.is_empty() {
            continue;
        }
        let labels = if drop_name {
            value::drop_name(&s.labels)
        } else {
            s.labels.clone()
        };
        out.push(RangeSeries {
            labels,
            samples: points,
        });
    }
    ev.distinct(out)
}

/// Calls `f(step, t, window_start, window_end, samples)` for every step whose window holds a
/// sample.
fn for_each_window(
    input: &RangeInput,
    samples: &[Sample],
    times: &[i64],
    mut f: impl FnMut(usize, i64, i64, i64, &[Sample]),
) {
    let (mut lo, mut hi) = (0usize, 0usize);
    for (k, &t) in times.iter().enumerate() {
        let end = input.window_end(t);
        let start = end - input.range_ms;
        if input.at_ms.is_some() {
            lo = 0;
            hi = 0;
        }
        while lo < samples.len() && samples[lo].timestamp_ms < start {
            lo += 1;
        }
        if hi < lo {
            hi = lo;
        }
        while hi < samples.len() && samples[hi].timestamp_ms <= end {
            hi += 1;
        }
        if lo < hi {
            f(k, t, start, end, &samples[lo..hi]);
        }
    }
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated to its edges
/// unless a series starts or ends inside it (Prometheus' extrapolatedRate).
fn extrapolated_rate(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (first, last) = (s[0], s[s.len() - 1]);
    let mut result = last.value - first.value;
    if is_counter {
        let mut prev = 0.0;
        for x in s {
            if x.value < prev {
                result += prev;
            }
            prev = x.value;
        }
    }
    let mut to_start = (first.timestamp_ms - w.start) as f64 / 1000.0;
    let to_end = (w.end - last.timestamp_ms) as f64 / 1000.0;
    let sampled = (last.timestamp_ms - first.timestamp_ms) as f64 / 1000.0;
    let avg_step = sampled / (s.len() - 1) as f64;
    if is_counter && result > 0.0 && first.value >= 0.0 {
        let to_zero = sampled * (first.value / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_step * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_step / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_step / 2.0
    };
    result *= interval / sampled;
    if is_rate {
        result /= w.range_ms as f64 / 1000.0;
    }
    Some(result)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_value(w: &Window<'_>, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (prev, last) = (s[s.len() - 2], s[s.len() - 1]);
    let mut result = last.value - prev.value;
    if is_rate && last.value < prev.value {
        result = last.value; // counter reset
    }
    let interval = last.timestamp_ms - prev.timestamp_ms;
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

fn kahan_add(x: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + x;
    let c = if sum.abs() >= x.abs() {
        c + ((sum - t) + x)
    } else {
        c + ((x - t) + sum)
    };
    (t, c)
}

fn kahan(values: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut c) = (0.0, 0.0);
    for v in values {
        (sum, c) = kahan_add(v, sum, c);
    }
    if sum.is_infinite() {
        sum
    } else {
        sum + c
    }
}

fn avg(s: &[Sample]) -> f64 {
    let (mut mean, mut c, mut count) = (0.0f64, 0.0f64, 0.0f64);
    for x in s {
        count += 1.0;
        if mean.is_infinite() {
            if x.value.is_infinite() && (mean > 0.0) == (x.value > 0.0) {
                continue;
            }
            if !x.value.is_infinite() && !x.value.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_add(x.value / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

fn extreme(s: &[Sample], better: impl Fn(f64, f64) -> bool) -> f64 {
    let mut best = s[0].value;
    for x in &s[1..] {
        if better(best, x.value) || best.is_nan() {
            best = x.value;
        }
    }
    best
}

fn variance(s: &[Sample]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0f64, 0.0f64, 0.0f64);
    for x in s {
        count += 1.0;
        let delta = x.value - mean;
        mean += delta / count;
        aux += delta * (x.value - mean);
    }
    aux / count
}

/// Least-squares slope and intercept, with x in seconds relative to `intercept_ms`.
fn linear_regression(s: &[Sample], intercept_ms: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init = s[0].value;
    let mut const_y = true;
    for (i, x) in s.iter().enumerate() {
        if const_y && i > 0 && x.value != init {
            const_y = false;
        }
        n += 1.0;
        let xv = (x.timestamp_ms - intercept_ms) as f64 / 1000.0;
        (sx, cx) = kahan_add(xv, sx, cx);
        (sy, cy) = kahan_add(x.value, sy, cy);
        (sxy, cxy) = kahan_add(xv * x.value, sxy, cxy);
        (sx2, cx2) = kahan_add(xv * xv, sx2, cx2);
    }
    if const_y {
        if init.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

/// Labels for `absent()`: the selector's equality matchers, except names matched twice.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match unparen(e) {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(m) => &m.vs,
        _ => return Labels::from(Vec::new()),
    };
    let Ok(matchers) = selector_matchers(vs) else {
        return Labels::from(Vec::new());
    };
    let mut out: Vec<Label> = Vec::new();
    let mut ambiguous: Vec<&str> = Vec::new();
    for m in &matchers {
        if m.name == value::NAME || !matches!(m.op, MatchOp::Equal) {
            continue;
        }
        if out.iter().any(|l| l.name == m.name) {
            ambiguous.push(&m.name);
        } else {
            out.push(Label::new(&m.name, &m.value));
        }
    }
    out.retain(|l| !ambiguous.contains(&l.name.as_str()));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.into()
}

/// One element with `labels` and value 1 at every step where `steps` is empty.
fn absent_where_empty(steps: Vec<Vector>, labels: Labels) -> Evaluated {
    Evaluated::Vector(
        steps
            .into_iter()
            .map(|v| {
                if v.is_empty() {
                    vec![Elem {
                        labels: labels.clone(),
                        value: 1.0,
                    }]
                } else {
                    Vec::new()
                }
            })
            .collect(),
    )
}

fn absent(ev: &Evaluator<'_>, arg: &Expr) -> Result<Evaluated, QueryError> {
    Ok(absent_where_empty(vector_arg(ev, arg)?, absent_labels(arg)))
}

fn absent_over_time(ev: &Evaluator<'_>, arg: &Expr) -> Result<Evaluated, QueryError> {
    let shaped = range_fn(ev, "absent_over_time", arg, true, |_| Some(1.0))?;
    let Evaluated::Vector(steps) = ev.unshape(shaped) else {
        unreachable!("range_fn returns vectors")
    };
    Ok(absent_where_empty(steps, absent_labels(arg)))
}

/// `timestamp()`: a selector's samples report their own time; anything else the step time.
fn timestamp(ev: &Evaluator<'_>, arg: &Expr) -> Result<Evaluated, QueryError> {
    if let Expr::VectorSelector(vs) = unparen(arg) {
        let mut series = ev.eval_selector_series_with(vs, |s| s.timestamp_ms as f64 / 1000.0)?;
        for s in &mut series {
            s.labels = value::drop_name(&s.labels);
        }
        return Ok(Evaluated::Vector(ev.steps_of(series)));
    }
    let times = ev.times();
    let mut steps = vector_arg(ev, arg)?;
    for (vec, &t) in steps.iter_mut().zip(&times) {
        for e in vec.iter_mut() {
            e.labels = value::drop_name(&e.labels);
            e.value = t as f64 / 1000.0;
        }
    }
    Ok(Evaluated::Vector(steps))
}

/// Compiles a PromQL regex: fully anchored, as in Prometheus.
fn anchored_regex(re: &str) -> Result<regex::Regex, QueryError> {
    regex::Regex::new(&format!("^(?s:{re})$")).map_err(|e| {
        QueryError::BadData(format!(
            "invalid regular expression in label_replace(): {re}: {e}"
        ))
    })
}

fn check_label_name(name: &str, func: &str) -> Result<(), QueryError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(QueryError::BadData(format!(
            "invalid destination label name in {func}(): {name}"
        )))
    }
}

fn label_replace(ev: &Evaluator<'_>, args: &[&Expr]) -> Result<Evaluated, QueryError> {
    let dst = string_arg(args[1])?;
    let replacement = string_arg(args[2])?;
    let src = string_arg(args[3])?;
    let re = anchored_regex(&string_arg(args[4])?)?;
    check_label_name(&dst, "label_replace")?;
    let mut steps = vector_arg(ev, args[0])?;
    let mut cache: HashMap<Labels, Labels> = HashMap::new();
    for vec in &mut steps {
        for e in vec.iter_mut() {
            if let Some(l) = cache.get(&e.labels) {
                e.labels = l.clone();
                continue;
            }
            let src_value = value::get(&e.labels, &src).unwrap_or("");
            let new = match re.captures(src_value) {
                Some(caps) => {
                    let mut res = String::new();
                    caps.expand(&replacement, &mut res);
                    value::with_label(&e.labels, &dst, &res)
                }
                None => e.labels.clone(),
            };
            cache.insert(e.labels.clone(), new.clone());
            e.labels = new;
        }
    }
    Ok(Evaluated::Vector(steps))
}

fn label_join(ev: &Evaluator<'_>, args: &[&Expr]) -> Result<Evaluated, QueryError> {
    let dst = string_arg(args[1])?;
    let sep = string_arg(args[2])?;
    let srcs: Vec<String> = args[3..]
        .iter()
        .map(|a| string_arg(a))
        .collect::<Result<_, _>>()?;
    check_label_name(&dst, "label_join")?;
    let mut steps = vector_arg(ev, args[0])?;
    for vec in &mut steps {
        for e in vec.iter_mut() {
            let joined: Vec<&str> = srcs
                .iter()
                .map(|s| value::get(&e.labels, s).unwrap_or(""))
                .collect();
            e.labels = value::with_label(&e.labels, &dst, &joined.join(&sep));
        }
    }
    Ok(Evaluated::Vector(steps))
}

/// `histogram_quantile(q, buckets)`: per label set without `le`, interpolated inside the
/// bucket holding the rank.
fn histogram_quantile(ev: &Evaluator<'_>, q: &Expr, v: &Expr) -> Result<Evaluated, QueryError> {
    let q = scalar_arg(ev, q)?;
    let steps = vector_arg(ev, v)?;
    let le = vec!["le".to_string()];
    let mut out = Vec::with_capacity(steps.len());
    for (k, vec) in steps.into_iter().enumerate() {
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
        for e in vec {
            let Some(bound) = value::get(&e.labels, "le").and_then(parse_bound) else {
                continue;
            };
            let key = value::remove(&value::drop_name(&e.labels), &le);
            let gi = *index.entry(key.clone()).or_insert_with(|| {
                groups.push((key, Vec::new()));
                groups.len() - 1
            });
            groups[gi].1.push((bound, e.value));
        }
        out.push(
            groups
                .into_iter()
                .map(|(labels, buckets)| Elem {
                    labels,
                    value: bucket_quantile(q[k], buckets),
                })
                .collect(),
        );
    }
    Ok(Evaluated::Vector(out))
}

fn parse_bound(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        return f64::NAN;
    }
    // merge buckets with the same bound, then force counts to be monotonic
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (bound, count) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => merged.push((bound, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    if merged.len() < 2 {
        return f64::NAN;
    }
    let observations = merged[merged.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..merged.len() - 1].partition_point(|x| x.1 < rank);
    if b == merged.len() - 1 {
        return merged[merged.len() - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// The date functions, in UTC, over a vector (default: `vector(time())`).
fn date_fn(ev: &Evaluator<'_>, name: &str, arg: Option<&Expr>) -> Result<Evaluated, QueryError> {
    let f = |secs: f64| -> f64 {
        let t = secs.floor() as i64;
        let days = t.div_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_days = [
            31,
            if leap { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        match name {
            "minute" => (t.rem_euclid(3600) / 60) as f64,
            "hour" => (t.rem_euclid(86_400) / 3600) as f64,
            "day_of_month" => d as f64,
            "day_of_week" => (days + 4).rem_euclid(7) as f64,
            "day_of_year" => (month_days[..(m - 1) as usize].iter().sum::<i64>() + d) as f64,
            "days_in_month" => month_days[(m - 1) as usize] as f64,
            "month" => m as f64,
            _ => y as f64,
        }
    };
    match arg {
        Some(a) => map_values(ev, a, f),
        None => Ok(Evaluated::Vector(
            ev.times()
                .into_iter()
                .map(|t| {
                    vec![Elem {
                        labels: Labels::from(Vec::new()),
                        value: f(t as f64 / 1000.0),
                    }]
                })
                .collect(),
        )),
    }
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01 (Howard Hinnant).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
