//! The head: recent samples in memory, compressed in Gorilla chunks, with an inverted index from
//! label pairs to series. Samples may arrive in any order: those older than a series' newest
//! go to a small sorted out-of-order buffer that is merged into the chunks when it fills.

use super::chunk::{ChunkIter, ChunkWriter};
use fleetwatch_common::model::{MetricKind, Sample, Series, SeriesSamples};
use promql_parser::label::Matcher;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Samples per chunk before it is closed.
pub const CHUNK_SAMPLES: u32 = 240;
/// Out-of-order samples buffered per series before they are merged into its chunks.
const OOO_MERGE_AT: usize = 240;

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

#[derive(Debug, Clone)]
struct ClosedChunk {
    bytes: Box<[u8]>,
    count: u32,
    mint: i64,
    maxt: i64,
}

impl ClosedChunk {
    fn from_writer(w: &ChunkWriter) -> Self {
        ClosedChunk {
            bytes: w.bytes().into(),
            count: w.count(),
            mint: w.first_t(),
            maxt: w.last_t(),
        }
    }
}

#[derive(Debug)]
struct MemSeries {
    series: Series,
    kind: MetricKind,
    chunks: Vec<ClosedChunk>,
    open: ChunkWriter,
    /// Sorted by timestamp, one per timestamp; wins over chunk samples with the same time.
    ooo: Vec<Sample>,
    samples: usize,
}

impl MemSeries {
    fn max_t(&self) -> Option<i64> {
        if self.open.count() > 0 {
            Some(self.open.last_t())
        } else {
            self.chunks.last().map(|c| c.maxt)
        }
    }

    fn min_t(&self) -> Option<i64> {
        let chunk = self
            .chunks
            .first()
            .map(|c| c.mint)
            .or((self.open.count() > 0).then(|| self.open.first_t()));
        let ooo = self.ooo.first().map(|s| s.timestamp_ms);
        match (chunk, ooo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn in_chunks(&self, t: i64) -> bool {
        let in_range = |mint: i64, maxt: i64| mint <= t && t <= maxt;
        self.chunks
            .iter()
            .filter(|c| in_range(c.mint, c.maxt))
            .any(|c| ChunkIter::new(&c.bytes, c.count).any(|(ts, _)| ts == t))
            || (self.open.count() > 0
                && in_range(self.open.first_t(), self.open.last_t())
                && self.open.iter().any(|(ts, _)| ts == t))
    }

    /// Inserts one sample; true when it replaced one at the same timestamp.
    fn insert(&mut self, s: Sample) -> bool {
        match self.max_t() {
            Some(max) if s.timestamp_ms <= max => {
                let replaced = match self
                    .ooo
                    .binary_search_by_key(&s.timestamp_ms, |x| x.timestamp_ms)
                {
                    Ok(i) => {
                        self.ooo[i] = s;
                        return true;
                    }
                    Err(i) => {
                        let replaced = self.in_chunks(s.timestamp_ms);
                        self.ooo.insert(i, s);
                        replaced
                    }
                };
                if !replaced {
                    self.samples += 1;
                }
                if self.ooo.len() >= OOO_MERGE_AT {
                    self.merge_ooo();
                }
                replaced
            }
            _ => {
                self.open.append(s.timestamp_ms, s.value);
                self.samples += 1;
                if self.open.count() >= CHUNK_SAMPLES {
                    self.chunks.push(ClosedChunk::from_writer(&self.open));
                    self.open = ChunkWriter::default();
                }
                false
            }
        }
    }

    /// Every sample, merged and in order.
    fn all(&self) -> Vec<Sample> {
        self.range(i64::MIN, i64::MAX)
    }

    /// Samples in `[start, end]`, in order.
    fn range(&self, start: i64, end: i64) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut take = |it: ChunkIter<'_>| {
            out.extend(
                it.filter(|(t, _)| *t >= start && *t <= end)
                    .map(|(t, v)| Sample {
                        timestamp_ms: t,
                        value: v,
                    }),
            )
        };
        for c in &self.chunks {
            if c.maxt >= start && c.mint <= end {
                take(ChunkIter::new(&c.bytes, c.count));
            }
        }
        if self.open.count() > 0 && self.open.last_t() >= start && self.open.first_t() <= end {
            take(self.open.iter());
        }
        let lo = self.ooo.partition_point(|s| s.timestamp_ms < start);
        let hi = self.ooo.partition_point(|s| s.timestamp_ms <= end);
        if lo < hi {
            out = merge(out, &self.ooo[lo..hi]);
        }
        out
    }

    /// Rewrites the chunks with the out-of-order samples merged in.
    fn merge_ooo(&mut self) {
        let all = self.all();
        self.ooo.clear();
        self.rebuild(&all);
    }

    fn rebuild(&mut self, sorted: &[Sample]) {
        self.chunks.clear();
        self.open = ChunkWriter::default();
        for s in sorted {
            self.open.append(s.timestamp_ms, s.value);
            if self.open.count() >= CHUNK_SAMPLES {
                self.chunks.push(ClosedChunk::from_writer(&self.open));
                self.open = ChunkWriter::default();
            }
        }
        self.samples = sorted.len();
    }
}

/// Merges sorted `base` with sorted `overrides`; on equal timestamps the override wins.
pub fn merge(mut base: Vec<Sample>, overrides: &[Sample]) -> Vec<Sample> {
    // the common cases of reading blocks in time order: one side empty, or the overrides
    // entirely after (or before) the base — linear, and the base's allocation is reused
    match (
        base.last(),
        overrides.first(),
        overrides.last(),
        base.first(),
    ) {
        (_, None, _, _) => return base,
        (None, _, _, _) => return overrides.to_vec(),
        (Some(last), Some(first), _, _) if last.timestamp_ms < first.timestamp_ms => {
            base.extend_from_slice(overrides);
            return base;
        }
        (_, _, Some(o_last), Some(b_first)) if o_last.timestamp_ms < b_first.timestamp_ms => {
            let mut out = overrides.to_vec();
            out.extend_from_slice(&base);
            return out;
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(base.len() + overrides.len());
    let mut o = overrides.iter().peekable();
    for s in base {
        while let Some(x) = o.next_if(|x| x.timestamp_ms < s.timestamp_ms) {
            out.push(*x);
        }
        if let Some(x) = o.next_if(|x| x.timestamp_ms == s.timestamp_ms) {
            out.push(*x);
        } else {
            out.push(s);
        }
    }
    out.extend(o.copied());
    out
}

fn series_hash(s: &Series) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// True when `series` satisfies every matcher (`__name__` matches the metric name; a missing
/// label matches as the empty string, as in Prometheus).
pub fn matches(series: &Series, matchers: &[Matcher]) -> bool {
    matchers.iter().all(|m| {
        let value = if m.name == "__name__" {
            series.name.as_str()
        } else {
            series
                .labels
                .iter()
                .find(|l| l.name == m.name)
                .map(|l| l.value.as_str())
                .unwrap_or("")
        };
        m.is_match(value)
    })
}

/// The in-memory part of the store.
#[derive(Debug, Default)]
pub struct Head {
    series: Vec<Option<MemSeries>>,
    by_hash: HashMap<u64, Vec<u32>>,
    /// Label pair (name, value) → ids of series with it, ascending; `__name__` included.
    postings: super::Postings,
    per_host: HashMap<String, usize>,
    free: Vec<u32>,
    live: usize,
    samples: usize,
}

impl Head {
    fn id_of(&self, s: &Series) -> Option<u32> {
        self.by_hash
            .get(&series_hash(s))?
            .iter()
            .copied()
            .find(|&id| {
                self.series[id as usize]
                    .as_ref()
                    .is_some_and(|m| m.series == *s)
            })
    }

    fn pairs(s: &Series) -> impl Iterator<Item = (String, String)> + '_ {
        std::iter::once(("__name__".to_string(), s.name.clone()))
            .chain(s.labels.iter().map(|l| (l.name.clone(), l.value.clone())))
    }

    fn create(&mut self, s: &Series, kind: MetricKind) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.series.push(None);
                (self.series.len() - 1) as u32
            }
        };
        self.series[id as usize] = Some(MemSeries {
            series: s.clone(),
            kind,
            chunks: Vec::new(),
            open: ChunkWriter::default(),
            ooo: Vec::new(),
            samples: 0,
        });
        self.by_hash.entry(series_hash(s)).or_default().push(id);
        for pair in Self::pairs(s) {
            let list = self.postings.entry(pair).or_default();
            let at = list.partition_point(|&x| x < id);
            list.insert(at, id);
        }
        if let Some(host) = s.labels.iter().find(|l| l.name == "host") {
            *self.per_host.entry(host.value.clone()).or_default() += 1;
        }
        self.live += 1;
        id
    }

    fn delete(&mut self, id: u32) {
        let Some(m) = self.series[id as usize].take() else {
            return;
        };
        if let Some(ids) = self.by_hash.get_mut(&series_hash(&m.series)) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_hash.remove(&series_hash(&m.series));
            }
        }
        for pair in Self::pairs(&m.series) {
            if let Some(list) = self.postings.get_mut(&pair) {
                list.retain(|&x| x != id);
                if list.is_empty() {
                    self.postings.remove(&pair);
                }
            }
        }
        if let Some(host) = m.series.labels.iter().find(|l| l.name == "host") {
            if let Some(n) = self.per_host.get_mut(&host.value) {
                *n = n.saturating_sub(1);
            }
        }
        self.samples -= m.samples;
        self.live -= 1;
        self.free.push(id);
    }

    /// Inserts samples of one series.
    pub fn insert(&mut self, ss: &SeriesSamples) -> InsertStats {
        let mut stats = InsertStats::default();
        let id = match self.id_of(&ss.series) {
            Some(id) => id,
            None => {
                stats.new_series = 1;
                self.create(&ss.series, ss.kind)
            }
        };
        let m = self.series[id as usize].as_mut().expect("live id");
        m.kind = ss.kind;
        let before = m.samples;
        for s in &ss.samples {
            if m.insert(*s) {
                stats.replaced += 1;
            } else {
                stats.added += 1;
            }
        }
        self.samples = self.samples + m.samples - before;
        stats
    }

    /// Drops samples before `cutoff_ms` and series left empty.
    pub fn trim_before(&mut self, cutoff_ms: i64) {
        let mut empty = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            let Some(m) = slot else { continue };
            if m.min_t().is_some_and(|t| t >= cutoff_ms) {
                continue;
            }
            let kept = m.range(cutoff_ms, i64::MAX);
            let before = m.samples;
            m.ooo.clear();
            m.rebuild(&kept);
            self.samples = self.samples + m.samples - before;
            if kept.is_empty() {
                empty.push(id as u32);
            }
        }
        for id in empty {
            self.delete(id);
        }
    }

    /// Ids of series that can match: the intersection of the postings of the equality
    /// matchers, or every series when there is none.
    fn candidates(&self, matchers: &[Matcher]) -> Vec<u32> {
        super::candidate_ids(&self.postings, matchers).unwrap_or_else(|| {
            (0..self.series.len() as u32)
                .filter(|&id| self.series[id as usize].is_some())
                .collect()
        })
    }

    /// Every series matching, with its samples in `[start_ms, end_ms]` (series without samples
    /// there left out).
    pub fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Series, MetricKind, Vec<Sample>)> {
        let mut out = Vec::new();
        for id in self.candidates(matchers) {
            let Some(m) = &self.series[id as usize] else {
                continue;
            };
            if !matches(&m.series, matchers) {
                continue;
            }
            let samples = m.range(start_ms, end_ms);
            if !samples.is_empty() {
                out.push((m.series.clone(), m.kind, samples));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Every series with all its samples, for persisting.
    pub fn all_series(&self) -> impl Iterator<Item = (&Series, MetricKind, Vec<Sample>)> {
        self.series
            .iter()
            .flatten()
            .map(|m| (&m.series, m.kind, m.all()))
    }

    /// Series held.
    pub fn series_count(&self) -> usize {
        self.live
    }

    /// Samples held.
    pub fn sample_count(&self) -> usize {
        self.samples
    }

    /// Series of `host`.
    pub fn series_for_host(&self, host: &str) -> usize {
        self.per_host.get(host).copied().unwrap_or(0)
    }

    /// Whether the series exists.
    pub fn contains(&self, series: &Series) -> bool {
        self.id_of(series).is_some()
    }

    /// Bytes of compressed chunk data held (excluding out-of-order buffers).
    pub fn chunk_bytes(&self) -> usize {
        self.series
            .iter()
            .flatten()
            .map(|m| m.chunks.iter().map(|c| c.bytes.len()).sum::<usize>() + m.open.bytes().len())
            .sum()
    }
}

#[cfg(test)]
mod tests {

    fn reference_merge(base: &[Sample], overrides: &[Sample]) -> Vec<Sample> {
        let mut m: std::collections::BTreeMap<i64, f64> =
            base.iter().map(|s| (s.timestamp_ms, s.value)).collect();
        m.extend(overrides.iter().map(|s| (s.timestamp_ms, s.value)));
        m.into_iter()
            .map(|(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn merge_matches_a_map_of_timestamps(
            a in proptest::collection::btree_set(0i64..200, 0..40),
            b in proptest::collection::btree_set(0i64..200, 0..40),
            shift in 0i64..300,
        ) {
            let base: Vec<Sample> = a.iter().map(|&t| Sample { timestamp_ms: t, value: 1.0 }).collect();
            let over: Vec<Sample> = b.iter().map(|&t| Sample { timestamp_ms: t + shift, value: 2.0 }).collect();
            let got = merge(base.clone(), &over);
            let want = reference_merge(&base, &over);
            proptest::prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                proptest::prop_assert_eq!(g.timestamp_ms, w.timestamp_ms);
                proptest::prop_assert_eq!(g.value, w.value);
            }
            // and with the sides swapped (overrides before the base)
            let got = merge(over.clone(), &base);
            let want = reference_merge(&over, &base);
            proptest::prop_assert_eq!(got.len(), want.len());
        }
    }
    use super::*;
    use fleetwatch_common::model::Label;
    use promql_parser::label::MatchOp;
    use proptest::prelude::*;

    fn ss(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> SeriesSamples {
        SeriesSamples {
            series: Series::new("m", labels.iter().map(|(n, v)| Label::new(*n, *v))),
            kind: MetricKind::Gauge,
            samples: samples
                .iter()
                .map(|&(t, v)| Sample {
                    timestamp_ms: t,
                    value: v,
                })
                .collect(),
        }
    }

    fn eq(name: &str, value: &str) -> Matcher {
        Matcher::new(MatchOp::Equal, name, value)
    }

    #[test]
    fn postings_select_and_trim() {
        let mut h = Head::default();
        h.insert(&ss(&[("host", "a"), ("x", "1")], &[(1, 1.0), (2, 2.0)]));
        h.insert(&ss(&[("host", "b"), ("x", "1")], &[(1, 3.0)]));
        assert_eq!(h.select(&[eq("x", "1")], 0, 10).len(), 2);
        assert_eq!(
            h.select(&[eq("host", "a"), eq("__name__", "m")], 0, 10)
                .len(),
            1
        );
        assert!(h.select(&[eq("host", "c")], 0, 10).is_empty());
        assert_eq!(h.select(&[eq("nolabel", "")], 0, 10).len(), 2);
        assert_eq!(h.series_for_host("a"), 1);
        h.trim_before(2);
        assert_eq!(h.series_count(), 1);
        assert_eq!(h.sample_count(), 1);
        assert_eq!(h.series_for_host("b"), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the arrival order, a series reads back sorted with one sample per
        /// timestamp, the last written value winning, and `replaced` counts the repeats.
        #[test]
        fn any_order_reads_back_sorted(writes in proptest::collection::vec((0i64..2000, -1e6f64..1e6), 1..700)) {
            let mut h = Head::default();
            let mut model = std::collections::BTreeMap::new();
            let mut replaced = 0;
            for (t, v) in &writes {
                let st = h.insert(&ss(&[("host", "a")], &[(*t, *v)]));
                replaced += st.replaced;
                if model.insert(*t, *v).is_some() {
                    prop_assert_eq!(st.replaced, 1);
                }
            }
            let got = h.select(&[eq("host", "a")], i64::MIN, i64::MAX);
            let got: Vec<(i64, f64)> = got[0].2.iter().map(|s| (s.timestamp_ms, s.value)).collect();
            let want: Vec<(i64, f64)> = model.into_iter().collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(h.sample_count(), want.len());
            prop_assert_eq!(replaced as usize, writes.len() - want.len());
        }
    }
}
