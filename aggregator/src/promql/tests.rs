//! Engine tests over an in-memory source, with values worked out by hand from Prometheus'
//! definitions. Equality with a real Prometheus on a larger corpus is checked by the
//! `prometheus_compat` integration test.

use super::*;
use crate::tsdb::head::matches;
use fleetwatch_common::model::{Label, Sample, Series};
use promql_parser::label::Matcher;

struct Mem(Vec<(String, Vec<Label>, Vec<Sample>)>);

impl SeriesSource for Mem {
    fn select(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        _: &SelectHints,
    ) -> Vec<RangeSeries> {
        self.0
            .iter()
            .filter(|(n, l, _)| matches(&Series::new(n.clone(), l.clone()), matchers))
            .map(|(n, l, s)| RangeSeries {
                labels: value::from_series(n, l),
                samples: s
                    .iter()
                    .copied()
                    .filter(|x| x.timestamp_ms >= start && x.timestamp_ms <= end)
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect()
    }
}

/// `name{a="b"}` with `start+incr x count` values every `every_s` seconds from time 0.
fn series(
    name: &str,
    labels: &[(&str, &str)],
    every_s: i64,
    values: &[f64],
) -> (String, Vec<Label>, Vec<Sample>) {
    let mut l: Vec<Label> = labels.iter().map(|(n, v)| Label::new(*n, *v)).collect();
    l.sort();
    let samples = values
        .iter()
        .enumerate()
        .map(|(i, &v)| Sample {
            timestamp_ms: i as i64 * every_s * 1000,
            value: v,
        })
        .collect();
    (name.to_string(), l, samples)
}

fn ramp(start: f64, step: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| start + step * i as f64).collect()
}

fn fixture() -> Mem {
    Mem(vec![
        series(
            "http_requests_total",
            &[("path", "/foo"), ("job", "api")],
            60,
            &ramp(0.0, 10.0, 11),
        ),
        series(
            "http_requests_total",
            &[("path", "/bar"), ("job", "api")],
            60,
            &{
                let mut v = ramp(0.0, 10.0, 6);
                v.extend(ramp(0.0, 10.0, 5));
                v
            },
        ),
        series("temp", &[("room", "a")], 60, &[20.0, 21.0, 22.0, 23.0]),
        series("temp", &[("room", "b")], 60, &[30.0, 30.0, 30.0, 30.0]),
        series("req_bucket", &[("le", "0.1")], 60, &[0.0, 50.0]),
        series("req_bucket", &[("le", "1")], 60, &[0.0, 90.0]),
        series("req_bucket", &[("le", "+Inf")], 60, &[0.0, 100.0]),
    ])
}

fn vector(q: &str, t_s: i64) -> Vec<(String, f64)> {
    match instant(&fixture(), Settings::default(), q, t_s * 1000)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
    {
        QueryValue::Vector { elems, .. } => {
            let mut out: Vec<(String, f64)> = elems
                .into_iter()
                .map(|(l, v)| (value::display(&l), v))
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn one(q: &str, t_s: i64) -> f64 {
    let v = vector(q, t_s);
    assert_eq!(v.len(), 1, "{q}: {v:?}");
    v[0].1
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn rate_extrapolates_like_prometheus() {
    // 11 samples 60 s apart, +10 each: the window [0, 600] holds all, no extrapolation needed
    let v = one("rate(http_requests_total{path=\"/foo\"}[10m])", 600);
    assert!(close(v, 100.0 / 600.0), "{v}");
    // window [30, 330]: samples at 60..300 (5 samples, 240 s sampled); 30 s on each side is
    // under 1.1 × the 60 s average, so extrapolate to 300 s: 40 × 300/240 / 300
    let v = one("rate(http_requests_total{path=\"/foo\"}[5m])", 330);
    assert!(close(v, 40.0 * 300.0 / 240.0 / 300.0), "{v}");
    // increase over a reset: 50 (0..50) + 40 (0..40) with the reset adding the last value
    let v = one("increase(http_requests_total{path=\"/bar\"}[10m])", 600);
    assert!(close(v, 90.0), "{v}");
    assert!(close(
        one("resets(http_requests_total{path=\"/bar\"}[10m])", 600),
        1.0
    ));
}

#[test]
fn lookback_and_offset() {
    assert_eq!(one("temp{room=\"a\"}", 180), 23.0);
    assert_eq!(one("temp{room=\"a\"} offset 2m", 180), 21.0);
    assert_eq!(one("temp{room=\"a\"} @ 60", 10_000), 21.0);
    // 5-minute lookback: the last sample (180 s) is visible until 480 s inclusive
    assert_eq!(one("temp{room=\"a\"}", 480), 23.0);
    assert!(vector("temp{room=\"a\"}", 481).is_empty());
}

#[test]
fn aggregations_group_like_prometheus() {
    let v = vector("sum by (job) (http_requests_total)", 600);
    assert_eq!(v, vec![("{job=\"api\"}".to_string(), 140.0)]);
    assert_eq!(one("count(temp)", 180), 2.0);
    assert_eq!(one("avg(temp)", 180), 26.5);
    assert_eq!(one("max without (room) (temp)", 180), 30.0);
    let top = vector("topk(1, temp)", 180);
    assert_eq!(
        top,
        vec![("{__name__=\"temp\", room=\"b\"}".to_string(), 30.0)]
    );
    assert!(close(one("stddev(temp)", 180), 3.5));
    assert_eq!(one("quantile(0.5, temp)", 180), 26.5);
    let cv = vector("count_values(\"v\", temp)", 180);
    assert_eq!(
        cv,
        vec![
            ("{v=\"23\"}".to_string(), 1.0),
            ("{v=\"30\"}".to_string(), 1.0)
        ]
    );
}

#[test]
fn binary_matching() {
    let v = vector("temp - on(room) group_left temp", 180);
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|(_, x)| *x == 0.0));
    assert_eq!(vector("temp > 25", 180).len(), 1);
    assert_eq!(vector("temp > bool 25", 180).len(), 2);
    assert_eq!(
        one("temp{room=\"a\"} + ignoring(room) temp{room=\"b\"}", 180),
        53.0
    );
    assert_eq!(vector("temp and temp{room=\"a\"}", 180).len(), 1);
    assert_eq!(vector("temp unless temp{room=\"a\"}", 180).len(), 1);
    assert_eq!(vector("temp{room=\"a\"} or temp", 180).len(), 2);
    // many-to-many is refused with Prometheus' message
    let err = instant(&fixture(), Settings::default(), "temp + on() temp", 180_000).unwrap_err();
    assert!(
        matches!(err, QueryError::Execution(ref m) if m.contains("many-to-many")),
        "{err:?}"
    );
}

#[test]
fn functions() {
    // 50 of 100 at le=0.1, 90 at le=1: the 0.9 quantile is 1, the 0.7 quantile interpolates
    assert!(close(
        one("histogram_quantile(0.7, req_bucket)", 60),
        0.1 + 0.9 * (20.0 / 40.0)
    ));
    assert_eq!(one("histogram_quantile(0.99, req_bucket)", 60), 1.0);
    assert!(close(one("deriv(temp{room=\"a\"}[5m])", 180), 1.0 / 60.0));
    assert!(close(
        one("predict_linear(temp{room=\"a\"}[5m], 60)", 180),
        24.0
    ));
    assert_eq!(one("absent(nope{job=\"x\"})", 180), 1.0);
    assert_eq!(vector("absent(nope{job=\"x\"})", 180)[0].0, "{job=\"x\"}");
    assert_eq!(one("clamp_max(temp{room=\"b\"}, 10)", 180), 10.0);
    assert_eq!(one("round(temp{room=\"a\"} / 7, 0.5)", 180), 3.5);
    let lr = vector(
        "label_replace(temp, \"r\", \"x-$1\", \"room\", \"(.*)\")",
        180,
    );
    assert_eq!(lr[0].0, "{__name__=\"temp\", r=\"x-a\", room=\"a\"}");
    assert_eq!(one("scalar(temp{room=\"a\"}) * 2 + vector(1)", 180), 47.0);
    assert_eq!(one("timestamp(temp{room=\"a\"})", 200), 180.0);
    assert_eq!(one("max_over_time(temp{room=\"a\"}[1m:30s])", 180), 23.0);
    assert_eq!(one("count_over_time(temp{room=\"a\"}[2m])", 180), 3.0);
    assert_eq!(one("hour(vector(7200))", 0), 2.0);
    assert_eq!(one("day_of_week(vector(0))", 0), 4.0);
}

#[test]
fn range_query_steps_and_errors() {
    let QueryValue::Matrix(m) = range(
        &fixture(),
        Settings::default(),
        "temp{room=\"a\"}",
        0,
        240_000,
        60_000,
    )
    .unwrap() else {
        panic!("not a matrix")
    };
    let values: Vec<f64> = m[0].samples.iter().map(|s| s.value).collect();
    assert_eq!(values, vec![20.0, 21.0, 22.0, 23.0, 23.0]);
    let err = range(&fixture(), Settings::default(), "temp[5m]", 0, 60_000, 1000).unwrap_err();
    assert!(matches!(err, QueryError::BadData(_)));
    let err = range(&fixture(), Settings::default(), "temp", 0, 100_000_000, 1).unwrap_err();
    assert!(err.to_string().contains("11,000"));
    assert!(check("sum(").is_err());
}

#[test]
fn duplicate_labelsets_are_refused() {
    let src = Mem(vec![
        series("a", &[("x", "1")], 60, &[1.0]),
        series("b", &[("x", "1")], 60, &[2.0]),
    ]);
    // selecting both is fine: their names differ
    assert!(instant(&src, Settings::default(), "{x=\"1\"}", 0).is_ok());
    // a function drops the names, leaving two elements with the same labels
    let err = instant(&src, Settings::default(), "abs({x=\"1\"})", 0).unwrap_err();
    assert!(err.to_string().contains("same labelset"), "{err}");
    let err = instant(&src, Settings::default(), "-{x=\"1\"}", 0).unwrap_err();
    assert!(err.to_string().contains("same labelset"), "{err}");
}

#[test]
fn range_functions_dropping_names_refuse_overlaps_and_join_disjoint_series() {
    // `a` has samples from 0 to 4 min, `b` from 20 min to 24 min: same labels once the
    // names are gone
    let mut late = series("b", &[("x", "1")], 60, &[5.0, 6.0, 7.0, 8.0, 9.0]);
    for s in &mut late.2 {
        s.timestamp_ms += 20 * 60_000;
    }
    let src = Mem(vec![
        series("a", &[("x", "1")], 60, &ramp(1.0, 1.0, 5)),
        late,
    ]);
    // windows that see both at one step are refused, as Prometheus refuses them
    let err = range(
        &src,
        Settings::default(),
        "max_over_time({x=\"1\"}[30m])",
        0,
        24 * 60_000,
        60_000,
    )
    .unwrap_err();
    assert!(err.to_string().contains("same labelset"), "{err}");
    // windows that never see both make one series, in time order
    let QueryValue::Matrix(m) = range(
        &src,
        Settings::default(),
        "max_over_time({x=\"1\"}[2m])",
        0,
        24 * 60_000,
        60_000,
    )
    .unwrap() else {
        panic!("a range query returns a matrix")
    };
    assert_eq!(m.len(), 1);
    let times: Vec<i64> = m[0]
        .samples
        .iter()
        .map(|s| s.timestamp_ms / 60_000)
        .collect();
    assert_eq!(times, vec![0, 1, 2, 3, 4, 5, 6, 20, 21, 22, 23, 24]);
    assert_eq!(m[0].samples.last().map(|s| s.value), Some(9.0));
}

#[test]
fn range_query_aggregations_equal_instant_queries_at_each_step() {
    let src = fixture();
    for q in [
        "sum by (path) (rate(http_requests_total[5m]))",
        "avg without (path) (http_requests_total)",
        "avg by (room) (temp)",
        "stddev(http_requests_total)",
        "count(http_requests_total)",
        "max by (job) (http_requests_total)",
    ] {
        let QueryValue::Matrix(m) = range(&src, Settings::default(), q, 0, 600_000, 60_000)
            .unwrap_or_else(|e| panic!("{q}: {e}"))
        else {
            panic!("{q}: not a matrix")
        };
        assert!(!m.is_empty(), "{q}: no series");
        for t in (0..=600_000).step_by(60_000) {
            let QueryValue::Vector { elems, .. } =
                instant(&src, Settings::default(), q, t).unwrap()
            else {
                panic!("{q}: not a vector")
            };
            for (labels, v) in elems {
                let s = m.iter().find(|s| s.labels == labels).expect("same series");
                let p = s
                    .samples
                    .iter()
                    .find(|p| p.timestamp_ms == t)
                    .expect("step");
                assert_eq!(p.value.to_bits(), v.to_bits(), "{q} at {t}");
            }
        }
    }
}
