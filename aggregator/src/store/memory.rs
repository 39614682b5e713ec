//! The in-memory sample index of the first store: every series with its samples in timestamp
//! order, out-of-order inserts accepted, trimmed to the retention window.

use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use promql_parser::label::Matcher;
use std::collections::HashMap;

/// One series' data.
#[derive(Debug, Clone)]
pub struct SeriesData {
    /// Its type.
    pub kind: MetricKind,
    /// Samples sorted by timestamp, one per timestamp.
    pub samples: Vec<Sample>,
}

/// What an insert did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InsertStats {
    /// Samples added.
    pub added: u64,
    /// Samples that replaced one at the same timestamp.
    pub replaced: u64,
    /// Series created.
    pub new_series: u64,
}

/// Series by metric name, then by label set.
#[derive(Debug, Default)]
pub struct MemIndex {
    by_name: HashMap<String, HashMap<Vec<Label>, SeriesData>>,
    per_host: HashMap<String, usize>,
    series: usize,
    samples: usize,
}

/// True when `series` satisfies every matcher (`__name__` matches the metric name; a missing
/// label matches as the empty string, as in Prometheus).
pub fn matches(name: &str, labels: &[Label], matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| {
        let value = if m.name == "__name__" {
            name
        } else {
            labels
                .iter()
                .find(|l| l.name == m.name)
                .map(|l| l.value.as_str())
                .unwrap_or("")
        };
        m.is_match(value)
    })
}

impl MemIndex {
    /// Inserts samples of one series.
    pub fn insert(&mut self, ss: &SeriesSamples) -> InsertStats {
        let mut stats = InsertStats::default();
        let by_labels = self.by_name.entry(ss.series.name.clone()).or_default();
        let data = by_labels
            .entry(ss.series.labels.clone())
            .or_insert_with(|| {
                stats.new_series = 1;
                SeriesData {
                    kind: ss.kind,
                    samples: Vec::new(),
                }
            });
        if ss.kind != MetricKind::Untyped {
            data.kind = ss.kind;
        }
        for s in &ss.samples {
            let samples = &mut data.samples;
            match samples.last() {
                Some(last) if last.timestamp_ms < s.timestamp_ms => samples.push(*s),
                None => samples.push(*s),
                _ => match samples.binary_search_by_key(&s.timestamp_ms, |x| x.timestamp_ms) {
                    Ok(i) => {
                        samples[i] = *s;
                        stats.replaced += 1;
                        continue;
                    }
                    Err(i) => samples.insert(i, *s),
                },
            }
            stats.added += 1;
        }
        if stats.new_series > 0 {
            if let Some(host) = ss.series.label("host") {
                *self.per_host.entry(host.to_string()).or_default() += 1;
            }
        }
        self.series += stats.new_series as usize;
        self.samples += stats.added as usize;
        stats
    }

    /// Removes samples older than `cutoff_ms`, and series left empty.
    pub fn trim_before(&mut self, cutoff_ms: i64) {
        let mut removed_samples = 0;
        let mut removed_series = 0;
        let per_host = &mut self.per_host;
        self.by_name.retain(|_, by_labels| {
            by_labels.retain(|labels, data| {
                let keep_from = data.samples.partition_point(|s| s.timestamp_ms < cutoff_ms);
                removed_samples += keep_from;
                data.samples.drain(..keep_from);
                let keep = !data.samples.is_empty();
                removed_series += usize::from(!keep);
                if !keep {
                    if let Some(host) = labels.iter().find(|l| l.name == "host") {
                        if let Some(n) = per_host.get_mut(&host.value) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
                keep
            });
            !by_labels.is_empty()
        });
        self.samples -= removed_samples;
        self.series -= removed_series;
    }

    /// Every series matching, with its samples in `[start_ms, end_ms]`.
    pub fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Series, MetricKind, Vec<Sample>)> {
        let name_eq = matchers.iter().find_map(|m| {
            (m.name == "__name__" && matches!(m.op, promql_parser::label::MatchOp::Equal))
                .then_some(m.value.as_str())
        });
        let mut out = Vec::new();
        let mut visit = |name: &String, by_labels: &HashMap<Vec<Label>, SeriesData>| {
            for (labels, data) in by_labels {
                if !matches(name, labels, matchers) {
                    continue;
                }
                let lo = data.samples.partition_point(|s| s.timestamp_ms < start_ms);
                let hi = data.samples.partition_point(|s| s.timestamp_ms <= end_ms);
                if lo < hi {
                    out.push((
                        Series {
                            name: name.clone(),
                            labels: labels.clone(),
                        },
                        data.kind,
                        data.samples[lo..hi].to_vec(),
                    ));
                }
            }
        };
        match name_eq {
            Some(name) => {
                if let Some((k, v)) = self.by_name.get_key_value(name) {
                    visit(k, v);
                }
            }
            None => self.by_name.iter().for_each(|(k, v)| visit(k, v)),
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Series held.
    pub fn series_count(&self) -> usize {
        self.series
    }

    /// Samples held.
    pub fn sample_count(&self) -> usize {
        self.samples
    }

    /// Series whose `host` label is `host`.
    pub fn series_for_host(&self, host: &str) -> usize {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    /// Whether the series exists.
    pub fn contains(&self, series: &Series) -> bool {
        self.by_name
            .get(&series.name)
            .is_some_and(|m| m.contains_key(&series.labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::label::MatchOp;

    fn ss(name: &str, host: &str, points: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            series: Series::new(name, [Label::new("host", host)]),
            kind: MetricKind::Gauge,
            samples: points
                .iter()
                .map(|&(t, v)| Sample {
                    timestamp_ms: t,
                    value: v,
                })
                .collect(),
        }
    }

    #[test]
    fn out_of_order_samples_are_sorted_and_same_timestamp_replaces() {
        let mut idx = MemIndex::default();
        idx.insert(&ss("m", "a", &[(10, 1.0), (30, 3.0)]));
        let st = idx.insert(&ss("m", "a", &[(20, 2.0), (30, 4.0)]));
        assert_eq!(
            st,
            InsertStats {
                added: 1,
                replaced: 1,
                new_series: 0
            }
        );
        let got = idx.select(&[Matcher::new(MatchOp::Equal, "__name__", "m")], 0, 100);
        let ts: Vec<_> = got[0].2.iter().map(|s| (s.timestamp_ms, s.value)).collect();
        assert_eq!(ts, vec![(10, 1.0), (20, 2.0), (30, 4.0)]);
    }

    #[test]
    fn select_by_matchers_and_time() {
        let mut idx = MemIndex::default();
        idx.insert(&ss("m", "a", &[(10, 1.0)]));
        idx.insert(&ss("m", "b", &[(10, 1.0), (50, 5.0)]));
        idx.insert(&ss("n", "a", &[(10, 1.0)]));
        let expr = promql_parser::parser::parse(r#"{host=~"b|c"}"#).unwrap();
        let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
            panic!()
        };
        let got = idx.select(&vs.matchers.matchers, 40, 60);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.label("host"), Some("b"));
        assert_eq!(idx.series_for_host("a"), 2);
        idx.trim_before(20);
        assert_eq!(idx.series_count(), 1);
        assert_eq!(idx.sample_count(), 1);
    }
}
