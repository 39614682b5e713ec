//! Downsampling: per series and bucket (5 minutes, 1 hour), the minimum, maximum, average and
//! last value, stored as four series told apart by the `__rollup__` label. A query whose step
//! is wide enough reads the rollup that answers its function the way the raw data would, up to
//! the bucket's resolution: `max_over_time` the maxima, `min_over_time` the minima, a plain
//! selector or `avg_over_time` the averages, the counter functions (`rate`, `increase`...) the
//! last values. Functions a rollup cannot answer (`sum_over_time`, `count_over_time`,
//! quantiles, `changes`...) always read raw samples.

use super::super::promql::SelectHints;
use fleetwatch_common::model::{Label, MetricKind, Sample, Series};

/// Rollup bucket widths, finest first.
pub const RESOLUTIONS: [i64; 2] = [5 * 60_000, 3_600_000];

/// Rollups are written only where raw data has at least this many samples per series and
/// bucket: below it the four aggregates would take more room than the samples they summarise.
pub const MIN_DENSITY: f64 = 8.0;

/// The label that tells the four aggregates of a rollup apart.
pub const LABEL: &str = "__rollup__";

/// How a selection should be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Preferred resolution (0: raw).
    pub resolution_ms: i64,
    /// The aggregate to read from rollups; `None` when only raw samples answer correctly.
    pub aggregate: Option<&'static str>,
}

/// Picks the resolution and aggregate for a selection: the coarsest rollup at most a fifth of
/// the step and (for range functions) at most half the window, so each window still holds
/// several rollup points; plain selectors use 5-minute rollups at most, as their lookback is 5
/// minutes.
pub fn choose(hints: &SelectHints) -> Choice {
    let aggregate = match hints.func {
        None | Some("avg_over_time") => Some("avg"),
        Some("max_over_time") => Some("max"),
        Some("min_over_time") => Some("min"),
        Some(
            "rate" | "increase" | "irate" | "delta" | "idelta" | "deriv" | "predict_linear"
            | "last_over_time" | "present_over_time" | "absent_over_time",
        ) => Some("last"),
        Some(_) => None,
    };
    let resolution_ms = match aggregate {
        None => 0,
        Some(_) if hints.func.is_none() && hints.step_ms >= 5 * RESOLUTIONS[0] => RESOLUTIONS[0],
        Some(_) if hints.func.is_none() => 0,
        Some(_) => RESOLUTIONS
            .iter()
            .rev()
            .copied()
            .find(|&r| r * 5 <= hints.step_ms && r * 2 <= hints.range_ms)
            .unwrap_or(0),
    };
    Choice {
        resolution_ms,
        aggregate,
    }
}

/// The rollups of `series` at `resolution_ms`: four series per input, each point stamped
/// with the time of the bucket's last sample. Staleness markers are left out.
pub fn rollup(
    series: Vec<(Series, MetricKind, Vec<Sample>)>,
    resolution_ms: i64,
) -> Vec<(Series, MetricKind, Vec<Sample>)> {
    let mut out = Vec::with_capacity(series.len() * 4);
    for (s, kind, samples) in series {
        let mut aggs: [Vec<Sample>; 4] = Default::default();
        let mut i = 0;
        let samples: Vec<Sample> = samples
            .into_iter()
            .filter(|x| !crate::promql::is_stale_marker(x.value))
            .collect();
        while i < samples.len() {
            let bucket = samples[i].timestamp_ms.div_euclid(resolution_ms);
            let end = i + samples[i..]
                .partition_point(|x| x.timestamp_ms.div_euclid(resolution_ms) == bucket);
            let part = &samples[i..end];
            let t = part[part.len() - 1].timestamp_ms;
            let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
            for x in part {
                min = min.min(x.value);
                max = max.max(x.value);
                sum += x.value;
            }
            let values = [
                min,
                max,
                sum / part.len() as f64,
                part[part.len() - 1].value,
            ];
            for (agg, v) in aggs.iter_mut().zip(values) {
                agg.push(Sample {
                    timestamp_ms: t,
                    value: v,
                });
            }
            i = end;
        }
        for (name, points) in ["min", "max", "avg", "last"].into_iter().zip(aggs) {
            let mut labels = s.labels.clone();
            labels.push(Label::new(LABEL, name));
            out.push((Series::new(s.name.clone(), labels), kind, points));
        }
    }
    out
}

/// Removes the rollup label from a series read from a rollup block.
pub fn strip(mut s: Series) -> Series {
    s.labels.retain(|l| l.name != LABEL);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(step_s: i64, func: Option<&'static str>, range_s: i64) -> SelectHints {
        SelectHints {
            step_ms: step_s * 1000,
            func,
            range_ms: range_s * 1000,
        }
    }

    #[test]
    fn choice_follows_step_window_and_function() {
        assert_eq!(choose(&hints(15, None, 0)).resolution_ms, 0);
        assert_eq!(choose(&hints(3600, None, 0)).resolution_ms, 300_000);
        assert_eq!(
            choose(&hints(3600, Some("rate"), 3600)).resolution_ms,
            300_000
        );
        assert_eq!(
            choose(&hints(6 * 3600, Some("max_over_time"), 6 * 3600)).resolution_ms,
            3_600_000
        );
        assert_eq!(choose(&hints(6 * 3600, Some("rate"), 300)).resolution_ms, 0);
        assert_eq!(
            choose(&hints(6 * 3600, Some("sum_over_time"), 86_400)),
            Choice {
                resolution_ms: 0,
                aggregate: None
            }
        );
        assert_eq!(
            choose(&hints(6 * 3600, Some("max_over_time"), 86_400)).aggregate,
            Some("max")
        );
    }

    #[test]
    fn buckets_aggregate_and_skip_staleness_markers() {
        let s = Series::new("m", [Label::new("host", "a")]);
        let pts = [(0, 1.0), (100_000, 3.0), (200_000, 2.0), (300_000, 10.0)];
        let mut samples: Vec<Sample> = pts
            .iter()
            .map(|&(t, v)| Sample {
                timestamp_ms: t,
                value: v,
            })
            .collect();
        samples.insert(
            3,
            Sample {
                timestamp_ms: 250_000,
                value: f64::from_bits(0x7ff0_0000_0000_0002),
            },
        );
        let out = rollup(vec![(s, MetricKind::Gauge, samples)], 300_000);
        assert_eq!(out.len(), 4);
        let get = |agg: &str| {
            out.iter()
                .find(|(s, _, _)| s.labels.iter().any(|l| l.name == LABEL && l.value == agg))
                .map(|(_, _, v)| {
                    v.iter()
                        .map(|x| (x.timestamp_ms, x.value))
                        .collect::<Vec<_>>()
                })
                .unwrap()
        };
        assert_eq!(get("min"), vec![(200_000, 1.0), (300_000, 10.0)]);
        assert_eq!(get("max"), vec![(200_000, 3.0), (300_000, 10.0)]);
        assert_eq!(get("avg"), vec![(200_000, 2.0), (300_000, 10.0)]);
        assert_eq!(get("last"), vec![(200_000, 2.0), (300_000, 10.0)]);
        assert_eq!(
            strip(out[0].0.clone()).labels,
            vec![Label::new("host", "a")]
        );
    }
}
