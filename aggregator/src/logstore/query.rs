//! Log queries over a snapshot of the store: streams chosen by label matchers, chunks by time,
//! records by line filters (contains, not contains, regex) and field filters; pages in a total
//! order with a cursor, and counts by level over time.
//!
//! The order is by (timestamp, host, batch sequence number, position in the batch), a key no
//! two records share and that a record keeps for its life: a cursor is the key of the last
//! record of a page, and the next page starts strictly after it, so pages neither repeat nor
//! skip records however many arrive meanwhile.

use super::chunk::{ChunkView, StoredRecord};
use super::index::{Segment, StreamKey};
use super::segment;
use crate::metrics::Metrics;
use fleetwatch_common::model::LogLevel;
use promql_parser::label::Matcher;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tracing::warn;

/// A substring, searched with the regex crate's literal search (SIMD memmem).
#[derive(Debug, Clone)]
pub struct Literal {
    text: String,
    finder: regex::bytes::Regex,
}

impl Literal {
    /// A literal for `text`.
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            // an escaped literal always compiles
            finder: regex::bytes::Regex::new(&regex::escape(text))
                .unwrap_or_else(|_| unreachable!("escaped literal")),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn is_in(&self, hay: &[u8]) -> bool {
        self.finder.is_match(hay)
    }
}

/// Which records a query or a live tail wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Label matchers on host, source, service and level (all must match).
    pub matchers: Vec<Matcher>,
    /// Only records at least this severe (`unknown` never is).
    pub min_level: Option<LogLevel>,
    /// The message contains each of these.
    pub contains: Vec<Literal>,
    /// The message contains none of these.
    pub not_contains: Vec<Literal>,
    /// The message matches each of these.
    pub regex: Vec<regex::bytes::Regex>,
    /// The message matches none of these.
    pub not_regex: Vec<regex::bytes::Regex>,
    /// Field equals value, each (`host`, `source`, `service` and `level` compare the labels).
    pub fields: Vec<(String, String)>,
}

impl LogFilter {
    /// Whether a stream's labels can hold wanted records.
    pub fn stream_matches(&self, s: &StreamKey) -> bool {
        self.matchers
            .iter()
            .all(|m| m.is_match(s.label(&m.name).unwrap_or("")))
            && self
                .min_level
                .is_none_or(|min| s.level != LogLevel::Unknown && s.level >= min)
            && self
                .fields
                .iter()
                .all(|(k, v)| s.label(k).is_none_or(|l| l == v))
    }

    fn has_line_filters(&self) -> bool {
        !(self.contains.is_empty()
            && self.not_contains.is_empty()
            && self.regex.is_empty()
            && self.not_regex.is_empty())
    }

    fn record_fields(&self) -> impl Iterator<Item = &(String, String)> {
        self.fields
            .iter()
            .filter(|(k, _)| !super::index::LABELS.contains(&k.as_str()))
    }

    fn needs_fields(&self) -> bool {
        self.record_fields().next().is_some()
    }

    /// Whether a message passes the line filters (`skip_first_contains`: already checked).
    fn message_matches(&self, msg: &[u8], skip_first_contains: bool) -> bool {
        let skip = usize::from(skip_first_contains);
        self.contains.iter().skip(skip).all(|l| l.is_in(msg))
            && !self.not_contains.iter().any(|l| l.is_in(msg))
            && self.regex.iter().all(|r| r.is_match(msg))
            && !self.not_regex.iter().any(|r| r.is_match(msg))
    }

    fn fields_match(&self, fields: &[(String, String)]) -> bool {
        self.record_fields()
            .all(|(k, v)| fields.iter().any(|(fk, fv)| fk == k && fv == v))
    }

    /// Whether a record of a matching stream is wanted (used for buffered records and the
    /// live tail; chunks are searched column-wise).
    pub fn record_matches(&self, r: &StoredRecord) -> bool {
        self.message_matches(r.message.as_bytes(), false) && self.fields_match(&r.fields)
    }
}

/// A record's place in the total order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Timestamp (ns).
    pub ts: i64,
    /// Host.
    pub host: String,
    /// Batch sequence number.
    pub seq: u64,
    /// Position in the batch.
    pub idx: u32,
}

fn cmp_key(ts: i64, host: &str, seq: u64, idx: u32, k: &Key) -> Ordering {
    ts.cmp(&k.ts)
        .then_with(|| host.cmp(&k.host))
        .then_with(|| seq.cmp(&k.seq))
        .then_with(|| idx.cmp(&k.idx))
}

/// A record found, with its stream's labels.
#[derive(Debug, Clone)]
pub struct Found {
    /// Labels.
    pub stream: Arc<StreamKey>,
    /// The record.
    pub record: StoredRecord,
}

impl Found {
    /// Its key.
    pub fn key(&self) -> Key {
        Key {
            ts: self.record.timestamp_ns,
            host: self.stream.host.clone(),
            seq: self.record.seq,
            idx: self.record.idx,
        }
    }

    fn cmp(&self, other: &Found) -> Ordering {
        let (a, b) = (&self.record, &other.record);
        a.timestamp_ns
            .cmp(&b.timestamp_ns)
            .then_with(|| self.stream.host.cmp(&other.stream.host))
            .then_with(|| a.seq.cmp(&b.seq))
            .then_with(|| a.idx.cmp(&b.idx))
    }
}

/// A page query.
#[derive(Debug, Clone)]
pub struct LogQuery {
    /// Which records.
    pub filter: LogFilter,
    /// Oldest timestamp wanted (ns, inclusive).
    pub start_ns: i64,
    /// Newest timestamp wanted (ns, inclusive).
    pub end_ns: i64,
    /// Newest first (else oldest first).
    pub newest_first: bool,
    /// Records per page.
    pub limit: usize,
    /// Start strictly after this record (a cursor).
    pub after: Option<Key>,
}

impl LogQuery {
    fn wanted(&self, ts: i64, host: &str, seq: u64, idx: u32) -> bool {
        if ts < self.start_ns || ts > self.end_ns {
            return false;
        }
        match &self.after {
            None => true,
            Some(k) => {
                let o = cmp_key(ts, host, seq, idx, k);
                if self.newest_first {
                    o == Ordering::Less
                } else {
                    o == Ordering::Greater
                }
            }
        }
    }
}

/// One page of records, in the query's order, and the cursor of the next page (when the page
/// is full).
#[derive(Debug)]
pub struct Page {
    /// The records.
    pub records: Vec<Found>,
    /// Where the next page starts.
    pub next: Option<Key>,
}

/// What a query reads: stream labels, the segments, and buffered records already filtered by
/// stream and record (not yet by time).
pub struct Snapshot {
    /// Every stream by id.
    pub streams: Vec<Arc<StreamKey>>,
    /// Segments on disk.
    pub segments: Vec<Arc<Segment>>,
    /// Buffered records that pass the filter.
    pub buffered: Vec<Found>,
    /// For read failures.
    pub metrics: Metrics,
}

/// Open segment files of one query.
struct Files(HashMap<u64, Option<std::fs::File>>);

impl Files {
    fn chunk(&mut self, seg: &Segment, i: usize, metrics: &Metrics) -> Option<ChunkView> {
        let file = self
            .0
            .entry(seg.id)
            .or_insert_with(|| std::fs::File::open(&seg.path).ok());
        // a segment removed by retention since the snapshot: its records are gone
        let file = file.as_ref()?;
        let result = segment::read_chunk(file, &seg.path, &seg.chunks[i])
            .map_err(|e| e.to_string())
            .and_then(|f| ChunkView::decode(&f).map_err(|e| e.to_string()));
        match result {
            Ok(v) => Some(v),
            Err(error) => {
                metrics.logstore_read_errors.inc();
                warn!(%error, segment = seg.id, "log chunk unreadable; left out of the query");
                None
            }
        }
    }
}

/// Records of `view` that pass `filter` (stream already matched), in chunk order, among
/// `candidates` (indices in time range and past the cursor).
fn scan(view: &ChunkView, filter: &LogFilter, candidates: &[usize]) -> Vec<usize> {
    let mut hit = None;
    if let Some(first) = filter.contains.first() {
        // one pass over all messages, back to back, as grep over a file
        let msgs = view.messages();
        let offs = view.offsets();
        let mut marks = vec![false; view.len()];
        let (mut pos, mut r) = (0usize, 0usize);
        while pos < msgs.len() {
            let Some(m) = first.finder.find_at(msgs, pos) else {
                break;
            };
            while offs[r + 1] <= m.start() {
                r += 1;
            }
            if m.end() <= offs[r + 1] {
                marks[r] = true;
                pos = offs[r + 1];
                r += 1;
                if r >= view.len() {
                    break;
                }
            } else {
                pos = m.start() + 1; // the hit spans two messages
            }
        }
        hit = Some(marks);
    }
    let fields = if filter.needs_fields() {
        match view.field_offsets() {
            Ok(f) => Some(f),
            Err(_) => return Vec::new(),
        }
    } else {
        None
    };
    candidates
        .iter()
        .copied()
        .filter(|&i| {
            hit.as_ref().is_none_or(|h| h[i])
                && filter.message_matches(view.message(i), hit.is_some())
                && fields
                    .as_ref()
                    .is_none_or(|f| filter.fields_match(&view.fields(f, i)))
        })
        .collect()
}

/// Chunks of matching streams overlapping `[start, end]`: (segment, chunk index).
fn chunks_in(
    snap: &Snapshot,
    filter: &LogFilter,
    start: i64,
    end: i64,
) -> Vec<(Arc<Segment>, usize)> {
    let wanted: Vec<bool> = snap
        .streams
        .iter()
        .map(|s| filter.stream_matches(s))
        .collect();
    let mut out = Vec::new();
    for seg in &snap.segments {
        if seg.max_ts < start || seg.min_ts > end {
            continue;
        }
        for (i, c) in seg.chunks.iter().enumerate() {
            if wanted.get(c.stream as usize).copied().unwrap_or(false)
                && c.max_ts >= start
                && c.min_ts <= end
            {
                out.push((seg.clone(), i));
            }
        }
    }
    out
}

/// One page of `q`.
pub fn page(snap: &Snapshot, q: &LogQuery) -> Page {
    let limit = q.limit.max(1);
    let better = |a: &Found, b: &Found| {
        if q.newest_first {
            b.cmp(a)
        } else {
            a.cmp(b)
        }
    };
    let mut results: Vec<Found> = snap
        .buffered
        .iter()
        .filter(|f| {
            q.wanted(
                f.record.timestamp_ns,
                &f.stream.host,
                f.record.seq,
                f.record.idx,
            )
        })
        .cloned()
        .collect();
    results.sort_by(better);
    results.truncate(limit);
    let mut chunks = chunks_in(snap, &q.filter, q.start_ns, q.end_ns);
    if let Some(k) = &q.after {
        chunks.retain(|(s, i)| {
            let c = &s.chunks[*i];
            if q.newest_first {
                c.min_ts <= k.ts
            } else {
                c.max_ts >= k.ts
            }
        });
    }
    if q.newest_first {
        chunks.sort_by_key(|(s, i)| std::cmp::Reverse(s.chunks[*i].max_ts));
    } else {
        chunks.sort_by_key(|(s, i)| s.chunks[*i].min_ts);
    }
    let mut files = Files(HashMap::new());
    for (seg, i) in chunks {
        let c = &seg.chunks[i];
        if results.len() >= limit {
            let worst = &results[results.len() - 1].record;
            // nothing in this chunk (or any later one) can beat the page's last record
            if (q.newest_first && c.max_ts < worst.timestamp_ns)
                || (!q.newest_first && c.min_ts > worst.timestamp_ns)
            {
                break;
            }
        }
        let Some(view) = files.chunk(&seg, i, &snap.metrics) else {
            continue;
        };
        let stream = snap.streams[c.stream as usize].clone();
        let candidates: Vec<usize> = (0..view.len())
            .filter(|&j| q.wanted(view.timestamps[j], &stream.host, view.seqs[j], view.idx[j]))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let matched = scan(&view, &q.filter, &candidates);
        if matched.is_empty() {
            continue;
        }
        let fo = match view.field_offsets() {
            Ok(f) => f,
            Err(_) => continue,
        };
        results.extend(matched.into_iter().map(|j| Found {
            stream: stream.clone(),
            record: view.record(&fo, j),
        }));
        results.sort_by(better);
        results.truncate(limit);
    }
    let next = (results.len() >= limit).then(|| results[results.len() - 1].key());
    Page {
        records: results,
        next,
    }
}

/// A counts query: matching records per level in buckets of `step_ns` from `start_ns`.
#[derive(Debug, Clone)]
pub struct CountQuery {
    /// Which records.
    pub filter: LogFilter,
    /// First bucket's start (ns).
    pub start_ns: i64,
    /// Last timestamp counted (ns, inclusive).
    pub end_ns: i64,
    /// Bucket width (ns, > 0).
    pub step_ns: i64,
}

impl CountQuery {
    /// Buckets in the range.
    pub fn buckets(&self) -> usize {
        ((self.end_ns - self.start_ns) / self.step_ns + 1).max(0) as usize
    }

    fn bucket(&self, ts: i64) -> Option<usize> {
        (ts >= self.start_ns && ts <= self.end_ns)
            .then(|| ((ts - self.start_ns) / self.step_ns) as usize)
    }
}

/// Counts per level and bucket.
pub type Counts = BTreeMap<LogLevel, Vec<u64>>;

fn add(into: &mut Counts, level: LogLevel, bucket: usize, n: u64, buckets: usize) {
    into.entry(level).or_insert_with(|| vec![0; buckets])[bucket] += n;
}

/// Counts of `q`, the chunks searched on every core.
pub fn counts(snap: &Snapshot, q: &CountQuery) -> Counts {
    let buckets = q.buckets();
    let mut total = Counts::new();
    for f in &snap.buffered {
        if let Some(b) = q.bucket(f.record.timestamp_ns) {
            add(&mut total, f.stream.level, b, 1, buckets);
        }
    }
    let chunks = chunks_in(snap, &q.filter, q.start_ns, q.end_ns);
    let plain = !q.filter.has_line_filters() && !q.filter.needs_fields();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(chunks.len().max(1));
    let parts: Vec<Counts> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let chunks = &chunks;
                scope.spawn(move || {
                    let mut part = Counts::new();
                    let mut files = Files(HashMap::new());
                    for (seg, i) in chunks.iter().skip(t).step_by(threads) {
                        let c = &seg.chunks[*i];
                        let level = snap.streams[c.stream as usize].level;
                        // a chunk inside one bucket needs no reading when nothing else filters
                        if plain {
                            if let (Some(a), Some(b)) = (q.bucket(c.min_ts), q.bucket(c.max_ts)) {
                                if a == b {
                                    add(&mut part, level, a, u64::from(c.count), buckets);
                                    continue;
                                }
                            }
                        }
                        let Some(view) = files.chunk(seg, *i, &snap.metrics) else {
                            continue;
                        };
                        let candidates: Vec<usize> = (0..view.len())
                            .filter(|&j| q.bucket(view.timestamps[j]).is_some())
                            .collect();
                        let matched = if plain {
                            candidates
                        } else {
                            scan(&view, &q.filter, &candidates)
                        };
                        for j in matched {
                            if let Some(b) = q.bucket(view.timestamps[j]) {
                                add(&mut part, level, b, 1, buckets);
                            }
                        }
                    }
                    part
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    for part in parts {
        for (level, v) in part {
            let into = total.entry(level).or_insert_with(|| vec![0; buckets]);
            for (a, b) in into.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use promql_parser::label::MatchOp;

    fn stream(host: &str, level: LogLevel) -> StreamKey {
        StreamKey {
            host: host.into(),
            source: "app".into(),
            service: "api".into(),
            level,
        }
    }

    #[test]
    fn stream_filters_use_labels_levels_and_label_fields() {
        let f = LogFilter {
            matchers: vec![Matcher::new(MatchOp::Equal, "host", "web-1")],
            min_level: Some(LogLevel::Warn),
            ..Default::default()
        };
        assert!(f.stream_matches(&stream("web-1", LogLevel::Error)));
        assert!(!f.stream_matches(&stream("web-1", LogLevel::Info)));
        assert!(!f.stream_matches(&stream("web-1", LogLevel::Unknown)));
        assert!(!f.stream_matches(&stream("web-2", LogLevel::Error)));
        let f = LogFilter {
            fields: vec![("service".into(), "billing".into())],
            ..Default::default()
        };
        assert!(!f.stream_matches(&stream("web-1", LogLevel::Error)));
    }

    #[test]
    fn a_hit_across_two_messages_is_not_a_match() {
        let recs: Vec<StoredRecord> = ["abc", "def", "xdefx", ""]
            .iter()
            .enumerate()
            .map(|(i, m)| StoredRecord {
                timestamp_ns: i as i64,
                seq: 1,
                idx: i as u32,
                message: m.to_string(),
                fields: vec![("k".into(), i.to_string())],
            })
            .collect();
        let frame = super::super::chunk::encode(&recs.iter().collect::<Vec<_>>()).unwrap();
        let view = ChunkView::decode(&frame).unwrap();
        let all = [0, 1, 2, 3];
        let f = |c: &str| LogFilter {
            contains: vec![Literal::new(c)],
            ..Default::default()
        };
        assert_eq!(scan(&view, &f("cd"), &all), Vec::<usize>::new());
        assert_eq!(scan(&view, &f("def"), &all), vec![1, 2]);
        assert_eq!(scan(&view, &f("def"), &[2, 3]), vec![2]);
        let mut g = f("def");
        g.not_contains.push(Literal::new("x"));
        assert_eq!(scan(&view, &g, &all), vec![1]);
        let g = LogFilter {
            fields: vec![("k".into(), "2".into())],
            regex: vec![regex::bytes::Regex::new("^x").unwrap()],
            ..Default::default()
        };
        assert_eq!(scan(&view, &g, &all), vec![2]);
    }
}
