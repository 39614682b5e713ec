//! What a target remembers between scrapes: the scrape cache (from a line's series text to the
//! series already built from it, as Prometheus' scrape cache does, so an unchanged line costs
//! one hash lookup) and which series the last scrape had, for staleness markers and
//! `scrape_series_added`.

use super::parse::{self, Format, ParseError, SampleLine, Visitor};
use super::{apply_target_labels, target_labels, STALE_NAN};
use crate::config::ScrapeTarget;
use fleetwatch_common::model::{Label, MetricKind, Sample, Series, SeriesSamples};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

/// No entry: the end of a hash chain.
const NONE: u32 = u32::MAX;

/// One series the cache holds.
#[derive(Debug)]
struct Entry {
    series: Series,
    /// `series` hashed, to find it again from another text without hashing it twice.
    hash: u64,
    /// The next entry whose series has the same hash, or [`NONE`].
    next: u32,
    /// Its kind at its last occurrence without its own timestamp (for its staleness marker).
    kind: MetricKind,
    /// The last scrape in which it occurred without its own timestamp (0: none): the series
    /// that staleness follows, as Prometheus does.
    tracked: u64,
    /// The last scrape in which it occurred at all; an entry not in the latest is dropped.
    touched: u64,
}

/// A series text the cache knows.
#[derive(Debug)]
struct Text {
    /// Index of its entry.
    entry: u32,
    /// The last scrape in which it occurred; a text not in the latest is dropped.
    touched: u64,
}

/// A target's memory between scrapes. It holds only what the latest successful scrape
/// exposed (each series once, plus each way of writing it that the body used), so it does not
/// grow with series churn.
#[derive(Debug)]
pub struct TargetState {
    /// The target's own labels (`job`, `instance`, configured ones).
    labels: Vec<Label>,
    honor_labels: bool,
    /// Numbers successful scrapes; the current one while a body is read.
    iteration: u64,
    /// Series text as exposed → its entry.
    texts: HashMap<Box<str>, Text>,
    /// Built series; `None` slots are listed in `free`.
    entries: Vec<Option<Entry>>,
    free: Vec<u32>,
    /// Hash of a series → first entry of that hash (the rest chained through `Entry::next`).
    by_hash: HashMap<u64, u32>,
    hasher: RandomState,
}

/// Where a read sample's series is.
#[derive(Debug)]
enum Found<'a> {
    /// A cached entry.
    Entry(u32),
    /// A text not cached: its name and labels, to build the series from.
    New {
        text: &'a str,
        name: &'a str,
        labels: Vec<Label>,
    },
}

/// A sample of a read body.
#[derive(Debug)]
struct Row<'a> {
    found: Found<'a>,
    value: f64,
    timestamp_ms: Option<i64>,
    kind: MetricKind,
}

/// A body that was read without error, to be turned into series by [`Scraped::on_success`]
/// (it holds the state, so nothing changes the cache in between).
#[derive(Debug)]
pub struct Scraped<'s, 'a> {
    state: &'s mut TargetState,
    rows: Vec<Row<'a>>,
}

impl Scraped<'_, '_> {
    /// Samples in the body.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the body had no samples.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Turns the body into series: the samples with target labels, staleness markers for
    /// series that disappeared, and the report series; then drops from the cache what the body
    /// no longer has.
    pub fn on_success(
        self,
        target: &ScrapeTarget,
        timestamp_ms: i64,
        duration: Duration,
    ) -> Vec<SeriesSamples> {
        let state = self.state;
        state.iteration += 1;
        let now = state.iteration;
        let count = self.rows.len();
        let mut out = Vec::with_capacity(count + 8);
        let mut added = 0;
        for row in self.rows {
            let index = match row.found {
                Found::Entry(index) => index,
                Found::New { text, name, labels } => state.insert(text, name, labels),
            };
            let Some(entry) = state
                .entries
                .get_mut(index as usize)
                .and_then(Option::as_mut)
            else {
                continue; // unreachable: texts point at live entries
            };
            entry.touched = now;
            let ts = match row.timestamp_ms {
                Some(t) if target.honor_timestamps => t,
                _ => timestamp_ms,
            };
            // As Prometheus: series with their own timestamps get no staleness markers.
            if row.timestamp_ms.is_none() || !target.honor_timestamps {
                if entry.tracked != now {
                    if entry.tracked != now - 1 {
                        added += 1;
                    }
                    entry.tracked = now;
                }
                entry.kind = row.kind;
            }
            out.push(SeriesSamples {
                series: entry.series.clone(),
                kind: row.kind,
                samples: vec![Sample {
                    timestamp_ms: ts,
                    value: row.value,
                }],
            });
        }
        // tracked in the previous scrape and not in this one: disappeared
        out.extend(state.stale_markers(now - 1, timestamp_ms));
        state.evict(now);
        out.extend(report_series(
            &state.labels,
            timestamp_ms,
            Report {
                up: true,
                duration,
                scraped: count,
                added,
            },
        ));
        out
    }
}

/// Reads a body against the cache: known texts become entry indices (marked as occurring in
/// this scrape), others come with their parsed labels.
struct Reader<'s, 'a> {
    texts: &'s mut HashMap<Box<str>, Text>,
    iteration: u64,
    /// The entry `is_known` found for the line being parsed.
    pending: Option<u32>,
    rows: Vec<Row<'a>>,
}

impl<'a> Visitor<'a> for Reader<'_, 'a> {
    fn is_known(&mut self, series_text: &'a str) -> bool {
        self.pending = self.texts.get_mut(series_text).map(|t| {
            t.touched = self.iteration;
            t.entry
        });
        self.pending.is_some()
    }

    fn sample(&mut self, line: SampleLine<'a>) {
        let found = match (self.pending.take(), line.labels) {
            (Some(entry), _) => Found::Entry(entry),
            (None, labels) => match self.texts.get_mut(line.series_text) {
                // a line without labels (not asked about), or one seen earlier in this body
                Some(t) => {
                    t.touched = self.iteration;
                    Found::Entry(t.entry)
                }
                None => Found::New {
                    text: line.series_text,
                    name: line.name,
                    labels: labels.unwrap_or_default(),
                },
            },
        };
        self.rows.push(Row {
            found,
            value: line.value,
            timestamp_ms: line.timestamp_ms,
            kind: line.kind,
        });
    }
}

/// The outcome of one scrape, as numbers for the report series.
#[derive(Debug, Clone, Copy)]
struct Report {
    up: bool,
    duration: Duration,
    scraped: usize,
    added: usize,
}

impl TargetState {
    /// An empty state for `target` (its labels are fixed for the state's life: a target whose
    /// labels change gets a new state, after [`TargetState::on_removed`]).
    pub fn new(target: &ScrapeTarget) -> TargetState {
        TargetState {
            labels: target_labels(target),
            honor_labels: target.honor_labels,
            iteration: 1,
            texts: HashMap::new(),
            entries: Vec::new(),
            free: Vec::new(),
            by_hash: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    /// The target's own labels.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// Whether a target configured as `target` has the labels this state was made for.
    pub fn fits(&self, target: &ScrapeTarget) -> bool {
        self.honor_labels == target.honor_labels && self.labels == target_labels(target)
    }

    /// Parses a body, looking up each line's series text in the cache so that only new texts
    /// have their labels parsed. An invalid line fails the whole body and changes nothing a
    /// later scrape depends on.
    pub fn read<'s, 'a>(
        &'s mut self,
        body: &'a str,
        format: Format,
    ) -> Result<Scraped<'s, 'a>, ParseError> {
        let mut reader = Reader {
            texts: &mut self.texts,
            iteration: self.iteration + 1,
            pending: None,
            rows: Vec::with_capacity(self.entries.len() - self.free.len()),
        };
        parse::visit(body, format, &mut reader)?;
        let rows = reader.rows;
        Ok(Scraped { state: self, rows })
    }

    /// A failed scrape: `up` 0 and staleness markers for everything the target had. The
    /// cache is kept (the next body is likely the same), the tracking is not.
    pub fn on_failure(&mut self, timestamp_ms: i64, duration: Duration) -> Vec<SeriesSamples> {
        let mut out = self.stale_markers(self.iteration, timestamp_ms);
        for entry in self.entries.iter_mut().flatten() {
            entry.tracked = 0;
        }
        out.extend(report_series(
            &self.labels,
            timestamp_ms,
            Report {
                up: false,
                duration,
                scraped: 0,
                added: 0,
            },
        ));
        out
    }

    /// The target was removed: staleness markers for its series and its report series; the
    /// state is emptied.
    pub fn on_removed(&mut self, timestamp_ms: i64) -> Vec<SeriesSamples> {
        let mut out = self.stale_markers(self.iteration, timestamp_ms);
        self.texts = HashMap::new();
        self.entries = Vec::new();
        self.free = Vec::new();
        self.by_hash = HashMap::new();
        for r in report_series(
            &self.labels,
            timestamp_ms,
            Report {
                up: false,
                duration: Duration::ZERO,
                scraped: 0,
                added: 0,
            },
        ) {
            out.push(SeriesSamples {
                samples: vec![Sample {
                    timestamp_ms,
                    value: STALE_NAN,
                }],
                ..r
            });
        }
        out
    }

    /// Series the cache holds.
    pub fn cached_series(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Series texts the cache holds (a series may be written in more than one way).
    pub fn cached_texts(&self) -> usize {
        self.texts.len()
    }

    /// Entry slots allocated, used or free: at most the series of two consecutive scrapes.
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The entry for a text not cached: the series built from its labels, shared with any
    /// other text that gives the same series.
    fn insert(&mut self, text: &str, name: &str, labels: Vec<Label>) -> u32 {
        if let Some(t) = self.texts.get_mut(text) {
            // the same new text twice in one body
            t.touched = self.iteration;
            return t.entry;
        }
        let series = apply_target_labels(name, labels, &self.labels, self.honor_labels);
        let hash = self.hasher.hash_one(&series);
        let head = self.by_hash.get(&hash).copied().unwrap_or(NONE);
        let mut at = head;
        let index = loop {
            if at == NONE {
                let entry = Entry {
                    series,
                    hash,
                    next: head,
                    kind: MetricKind::Untyped,
                    tracked: 0,
                    touched: 0,
                };
                let index = match self.free.pop() {
                    Some(i) => {
                        self.entries[i as usize] = Some(entry);
                        i
                    }
                    None => {
                        self.entries.push(Some(entry));
                        (self.entries.len() - 1) as u32
                    }
                };
                self.by_hash.insert(hash, index);
                break index;
            }
            match &self.entries[at as usize] {
                Some(e) if e.series == series => break at,
                Some(e) => at = e.next,
                None => at = NONE,
            }
        };
        self.texts.insert(
            text.into(),
            Text {
                entry: index,
                touched: self.iteration,
            },
        );
        index
    }

    /// Drops the entries and texts that scrape `now` did not have.
    fn evict(&mut self, now: u64) {
        for index in 0..self.entries.len() {
            let Some(entry) = &self.entries[index] else {
                continue;
            };
            if entry.touched == now {
                continue;
            }
            let (hash, next) = (entry.hash, entry.next);
            // unlink from its hash chain
            if self.by_hash.get(&hash) == Some(&(index as u32)) {
                if next == NONE {
                    self.by_hash.remove(&hash);
                } else {
                    self.by_hash.insert(hash, next);
                }
            } else {
                let mut at = self.by_hash.get(&hash).copied().unwrap_or(NONE);
                while let Some(e) = self.entries.get_mut(at as usize).and_then(Option::as_mut) {
                    if e.next == index as u32 {
                        e.next = next;
                        break;
                    }
                    at = e.next;
                }
            }
            self.entries[index] = None;
            self.free.push(index as u32);
        }
        let entries = &self.entries;
        self.texts.retain(|_, t| {
            t.touched == now && entries.get(t.entry as usize).is_some_and(Option::is_some)
        });
    }

    /// Staleness markers for the entries tracked in scrape `iteration` and not since.
    fn stale_markers(&self, iteration: u64, timestamp_ms: i64) -> Vec<SeriesSamples> {
        self.entries
            .iter()
            .flatten()
            .filter(|e| e.tracked == iteration && iteration > 0)
            .map(|e| SeriesSamples {
                series: e.series.clone(),
                kind: e.kind,
                samples: vec![Sample {
                    timestamp_ms,
                    value: STALE_NAN,
                }],
            })
            .collect()
    }
}

fn report_series(labels: &[Label], timestamp_ms: i64, r: Report) -> Vec<SeriesSamples> {
    [
        ("up", if r.up { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", r.duration.as_secs_f64()),
        ("scrape_samples_scraped", r.scraped as f64),
        ("scrape_samples_post_metric_relabeling", r.scraped as f64),
        ("scrape_series_added", r.added as f64),
    ]
    .into_iter()
    .map(|(name, value)| SeriesSamples {
        series: Series::new(name, labels.iter().cloned()),
        kind: MetricKind::Gauge,
        samples: vec![Sample {
            timestamp_ms,
            value,
        }],
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> ScrapeTarget {
        ScrapeTarget {
            job: "app".into(),
            name: String::new(),
            url: "http://h:1/metrics".into(),
            interval_seconds: 1.0,
            timeout_seconds: None,
            labels: Default::default(),
            honor_labels: false,
            honor_timestamps: true,
            max_body_bytes: 1 << 20,
        }
    }

    fn scrape(st: &mut TargetState, body: &str, ts: i64) -> Vec<SeriesSamples> {
        st.read(body, Format::PrometheusText).unwrap().on_success(
            &target(),
            ts,
            Duration::from_millis(3),
        )
    }

    fn find<'a>(out: &'a [SeriesSamples], name: &str) -> &'a SeriesSamples {
        out.iter()
            .find(|s| s.series.name == name)
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    }

    fn stale(out: &[SeriesSamples]) -> Vec<String> {
        let mut names: Vec<String> = out
            .iter()
            .filter(|s| s.samples[0].value.to_bits() == STALE_NAN.to_bits())
            .map(|s| {
                let labels: Vec<String> = s
                    .series
                    .labels
                    .iter()
                    .filter(|l| l.name != "job" && l.name != "instance")
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                format!("{}{{{}}}", s.series.name, labels.join(","))
            })
            .collect();
        names.sort();
        names
    }

    fn added(out: &[SeriesSamples]) -> f64 {
        find(out, "scrape_series_added").samples[0].value
    }

    #[test]
    fn disappeared_series_get_staleness_markers_and_failures_mark_all() {
        let mut st = TargetState::new(&target());
        let first = scrape(&mut st, "# TYPE a gauge\na 1\nb 1\nc 1 5\n", 1000);
        let up = find(&first, "up");
        assert_eq!(up.samples[0].value, 1.0);
        assert_eq!(up.series.label("job"), Some("app"));
        assert_eq!(added(&first), 2.0);
        assert_eq!(
            find(&first, "c").samples[0].timestamp_ms,
            5,
            "exposed timestamps are honoured"
        );
        assert_eq!(find(&first, "a").kind, MetricKind::Gauge);

        let second = scrape(&mut st, "a 1\n", 2000);
        let b = find(&second, "b");
        assert_eq!(b.samples[0].value.to_bits(), STALE_NAN.to_bits());
        assert_eq!(b.samples[0].timestamp_ms, 2000);
        assert!(
            second.iter().all(|s| s.series.name != "c"),
            "timestamped series are not marked"
        );
        assert_eq!(added(&second), 0.0);

        let failed = st.on_failure(3000, Duration::ZERO);
        let a = find(&failed, "a");
        assert_eq!(a.samples[0].value.to_bits(), STALE_NAN.to_bits());
        assert_eq!(a.kind, MetricKind::Untyped, "the kind of its last sample");
        assert_eq!(find(&failed, "up").samples[0].value, 0.0);
        assert_eq!(
            st.on_failure(4000, Duration::ZERO).len(),
            5,
            "only report series"
        );
        let back = scrape(&mut st, "a 1\n", 5000);
        assert_eq!(added(&back), 1.0, "after a failure every series is new");
        assert!(stale(&back).is_empty());
    }

    #[test]
    fn cached_lines_give_the_same_series_and_values_as_parsed_ones() {
        let body = |n: u32| {
            format!(
                "# TYPE req histogram\n\
                 req_bucket{{route=\"/a\",le=\"1\"}} {n}\n\
                 req_bucket{{route=\"/a\",le=\"+Inf\"}} {}\n\
                 req_sum{{route=\"/a\"}} 1.5\n\
                 req_count{{route=\"/a\"}} {}\n\
                 odd{{v=\"a}}\\\"b\\\\\",job=\"theirs\",empty=\"\"}} {n}\n\
                 plain {n}\n",
                n + 1,
                n + 1
            )
        };
        let mut st = TargetState::new(&target());
        let first = scrape(&mut st, &body(1), 1000);
        let second = scrape(&mut st, &body(2), 2000);
        assert_eq!(st.cached_series(), 6);
        let mut fresh = TargetState::new(&target());
        let expected = scrape(&mut fresh, &body(2), 2000);
        for (got, want) in second.iter().zip(&expected) {
            assert_eq!(got.series, want.series);
            if got.series.name == "scrape_series_added" {
                continue; // 0 against 6: the only difference
            }
            assert_eq!(got.kind, want.kind);
            assert_eq!(got.samples, want.samples);
        }
        assert_eq!(second.len(), expected.len());
        let odd = find(&second, "odd");
        assert_eq!(odd.series.label("v"), Some("a}\"b\\"));
        assert_eq!(odd.series.label("exported_job"), Some("theirs"));
        assert_eq!(odd.series.label("job"), Some("app"));
        assert_eq!(odd.samples[0].value, 2.0);
        assert_eq!(find(&second, "req_bucket").kind, MetricKind::Counter);
        assert_eq!(find(&first, "plain").samples[0].value, 1.0);
        assert_eq!(find(&second, "plain").samples[0].value, 2.0);
        assert_eq!(added(&first), 6.0);
        assert_eq!(added(&second), 0.0);
    }

    #[test]
    fn changed_label_set_is_a_new_series_and_the_old_one_goes_stale() {
        let mut st = TargetState::new(&target());
        scrape(&mut st, "m{a=\"1\",b=\"x\"} 1\nkeep 1\n", 1000);
        let out = scrape(&mut st, "m{a=\"1\",b=\"y\"} 1\nkeep 1\n", 2000);
        let m = find(&out, "m");
        assert_eq!(m.series.label("b"), Some("y"));
        assert_eq!(m.samples[0].value, 1.0);
        assert_eq!(stale(&out), vec!["m{a=1,b=x}"]);
        assert_eq!(added(&out), 1.0);
        assert_eq!(st.cached_series(), 2);
        assert_eq!(st.cached_texts(), 2);
    }

    #[test]
    fn the_same_series_written_differently_is_not_marked_stale() {
        let mut st = TargetState::new(&target());
        scrape(&mut st, "m{a=\"1\",b=\"2\"} 1\n", 1000);
        // labels reordered, a trailing comma, an empty label: the same series
        let out = scrape(&mut st, "m{b=\"2\", a=\"1\",c=\"\",} 2\n", 2000);
        assert!(stale(&out).is_empty(), "{:?}", stale(&out));
        assert_eq!(added(&out), 0.0);
        assert_eq!(find(&out, "m").samples[0].value, 2.0);
        assert_eq!(st.cached_series(), 1);
        assert_eq!(st.cached_texts(), 1, "the old way of writing it is dropped");
        // both ways in one body: one series, two samples, no marker later
        let out = scrape(
            &mut st,
            "m{a=\"1\",b=\"2\"} 3\nm{b=\"2\",a=\"1\"} 4\n",
            3000,
        );
        assert_eq!(out.iter().filter(|s| s.series.name == "m").count(), 2);
        assert_eq!(st.cached_series(), 1);
        assert_eq!(st.cached_texts(), 2);
        let out = scrape(&mut st, "m{b=\"2\",a=\"1\"} 5\n", 4000);
        assert!(stale(&out).is_empty());
    }

    #[test]
    fn cache_does_not_grow_when_series_churn() {
        let mut st = TargetState::new(&target());
        for round in 0..50u32 {
            let mut body = String::from("steady 1\n");
            for i in 0..20 {
                body.push_str(&format!("churn{{id=\"{round}-{i}\"}} 1\n"));
            }
            let out = scrape(&mut st, &body, 1000 * i64::from(round + 1));
            if round > 0 {
                assert_eq!(stale(&out).len(), 20, "round {round}");
                assert_eq!(added(&out), 20.0);
            }
            assert_eq!(st.cached_series(), 21);
            assert_eq!(st.cached_texts(), 21);
            assert!(st.slots() <= 42, "{} slots", st.slots());
            assert!(st.by_hash.len() <= 21);
        }
    }

    #[test]
    fn disappearing_series_is_marked_once_and_forgotten() {
        let mut st = TargetState::new(&target());
        scrape(&mut st, "a{x=\"1\"} 1\nb{x=\"1\"} 1\n", 1000);
        let out = scrape(&mut st, "a{x=\"1\"} 1\n", 2000);
        assert_eq!(stale(&out), vec!["b{x=1}"]);
        assert_eq!(find(&out, "b").samples[0].timestamp_ms, 2000);
        assert_eq!(st.cached_series(), 1);
        let out = scrape(&mut st, "a{x=\"1\"} 1\n", 3000);
        assert!(stale(&out).is_empty());
        // it comes back: new again
        let out = scrape(&mut st, "a{x=\"1\"} 1\nb{x=\"1\"} 1\n", 4000);
        assert_eq!(added(&out), 1.0);
        assert!(stale(&out).is_empty());
    }

    #[test]
    fn a_bad_body_changes_nothing() {
        let mut st = TargetState::new(&target());
        scrape(&mut st, "a{x=\"1\"} 1\nb{x=\"1\"} 1\n", 1000);
        let err = st
            .read("b{x=\"1\"} 1\nc{y=\"2\"} 1\nd{ 1\n", Format::PrometheusText)
            .unwrap_err();
        assert_eq!(err.line, 3);
        let out = scrape(&mut st, "a{x=\"1\"} 1\nb{x=\"1\"} 1\n", 2000);
        assert!(stale(&out).is_empty());
        assert_eq!(added(&out), 0.0);
        assert_eq!(st.cached_series(), 2);
        assert_eq!(st.cached_texts(), 2);
    }

    #[test]
    fn removal_marks_series_and_report_series_and_empties_the_cache() {
        let mut st = TargetState::new(&target());
        scrape(&mut st, "a 1\nb{x=\"1\"} 1\n", 1000);
        let out = st.on_removed(2000);
        assert_eq!(
            stale(&out),
            vec![
                "a{}",
                "b{x=1}",
                "scrape_duration_seconds{}",
                "scrape_samples_post_metric_relabeling{}",
                "scrape_samples_scraped{}",
                "scrape_series_added{}",
                "up{}"
            ]
        );
        assert_eq!(st.cached_series(), 0);
        assert_eq!(st.cached_texts(), 0);
    }

    #[test]
    fn hash_chains_survive_eviction() {
        // entries sharing a hash are chained; force that by hand and evict the middle one
        let mut st = TargetState::new(&target());
        scrape(&mut st, "a 1\nb 1\nc 1\n", 1000);
        let (a, b, c) = (0u32, 1u32, 2u32);
        let h = 42;
        st.by_hash.clear();
        for (i, next) in [(a, NONE), (b, a), (c, b)] {
            let e = st.entries[i as usize].as_mut().unwrap();
            e.hash = h;
            e.next = next;
        }
        st.by_hash.insert(h, c);
        scrape(&mut st, "a 1\nc 1\n", 2000);
        assert_eq!(st.by_hash.get(&h), Some(&c));
        assert_eq!(st.entries[c as usize].as_ref().unwrap().next, a);
        scrape(&mut st, "a 1\n", 3000);
        assert_eq!(st.by_hash.get(&h), Some(&a));
        scrape(&mut st, "b 1\n", 4000);
        assert!(!st.by_hash.contains_key(&h));
        assert_eq!(st.cached_series(), 1);
    }
}
