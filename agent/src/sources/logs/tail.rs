//! Following the files of one file source: finding them by glob, reading new lines, joining
//! multi-line records, and following rotation — by rename (the old file is read to its end,
//! then released), by copy-truncate (a file that shrank or whose first bytes changed restarts at
//! 0; its copy, recognised by fingerprint, continues where the original was) — and deletion
//! (read to the end, then closed, so no descriptor leaks).
//!
//! Files are known by (device, inode); the tailer hands out records together with the
//! checkpoints that say how far each file has been turned into records ([`Chunk`]).

use super::checkpoint::{CheckpointUpdate, FileCheckpoint, FileId, Fingerprint, FINGERPRINT_BYTES};
use super::config::{FileSource, LogsConfig, StartAt};
use super::glob::{Exclude, Glob};
use super::parse::{self, Bounds, Raw};
use super::Clock;
use crate::buffer::BufferError;
use crate::config::secs;
use crate::metrics::AgentMetrics;
use fleetwatch_common::model::LogRecord;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Bytes read from a file at once.
const READ_BYTES: usize = 256 * 1024;
/// A read round stops taking lines once a chunk holds this many records (the rest next round).
pub const CHUNK_RECORDS: usize = 1024;
/// How long a truncated file's old position is remembered to place its copy.
const CANDIDATE_TTL: Duration = Duration::from_secs(120);

/// Records and the checkpoints that cover them, handed to the collector together.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Records, in the order read per file.
    pub records: Vec<LogRecord>,
    /// Checkpoint changes (latest per key).
    pub checkpoints: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Chunk {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.checkpoints.is_empty()
    }

    /// The checkpoint changes as a list.
    pub fn take_checkpoints(&mut self) -> Vec<CheckpointUpdate> {
        std::mem::take(&mut self.checkpoints).into_iter().collect()
    }
}

/// Which lines start a record.
#[derive(Debug, Clone)]
enum StartRule {
    /// A line matching this starts a record.
    Pattern(regex::bytes::Regex),
    /// Default: a line starting with a space or tab, or `Caused by`, continues the record.
    Indented,
}

impl StartRule {
    fn starts_record(&self, line: &[u8]) -> bool {
        match self {
            StartRule::Pattern(re) => re.is_match(line),
            StartRule::Indented => {
                !(line.starts_with(b" ")
                    || line.starts_with(b"\t")
                    || line.starts_with(b"Caused by"))
            }
        }
    }
}

/// Lines per second, refilled continuously, a second's worth of burst.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// `per_second` lines per second; 0 is no limit.
    pub fn new(per_second: u64) -> Self {
        Self {
            per_second: per_second as f64,
            tokens: per_second as f64,
            last: Instant::now(),
        }
    }

    /// Takes one line's token; false when over the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A record being assembled from lines.
#[derive(Debug)]
struct Pending {
    /// File offset of its first byte.
    start: u64,
    bytes: Vec<u8>,
    /// Length before any cut.
    full_len: usize,
    /// When its first line was read (its timestamp unless it carries one).
    read_ns: i64,
}

/// One open file.
#[derive(Debug)]
struct Tracked {
    id: FileId,
    /// The `source` of its records: the path it was first found under.
    source: String,
    file: File,
    /// Next byte to read.
    pos: u64,
    /// Offset where `line` starts.
    line_start: u64,
    /// The incomplete line read so far (at most `max_line_bytes` of it).
    line: Vec<u8>,
    /// Its full length.
    line_len: usize,
    pending: Option<Pending>,
    fp: Fingerprint,
    /// The offset in the last checkpoint handed out.
    sent: Option<u64>,
    /// Where reading started (0 after a truncation): the way back when no position was saved.
    origin: u64,
    last_data: Instant,
    /// Since when no matched path leads to it (renamed away or deleted).
    orphan_since: Option<Instant>,
    /// Size at the last look.
    size: u64,
}

impl Tracked {
    /// The start of the first byte not yet in a record.
    fn committed(&self) -> u64 {
        self.pending.as_ref().map_or(self.line_start, |p| p.start)
    }

    fn checkpoint(&self) -> FileCheckpoint {
        FileCheckpoint {
            fingerprint: self.fp,
            offset: self.committed(),
            path: self.source.clone(),
        }
    }
}

/// Reads checkpoints saved earlier (from the buffer).
pub type Lookup<'a> = &'a dyn Fn(&[u8]) -> Option<Vec<u8>>;

/// Reads checkpoints saved earlier, telling "none saved" from "could not read" (`Err`).
pub type FallibleLookup<'a> = &'a dyn Fn(&[u8]) -> Result<Option<Vec<u8>>, BufferError>;

/// The files of one file source.
pub struct FileTailer {
    name: String,
    globs: Vec<Glob>,
    excludes: Vec<Exclude>,
    start_at: StartAt,
    rule: StartRule,
    extra: Vec<(String, String)>,
    bounds: Bounds,
    max_line: usize,
    flush_after: Duration,
    release_after: Duration,
    rate: RateLimit,
    metrics: AgentMetrics,
    /// Open files by order of discovery.
    files: BTreeMap<u64, Tracked>,
    by_id: HashMap<FileId, u64>,
    next_order: u64,
    scanned: bool,
    /// (fingerprint before truncation, position then, when): where a copy of that file starts.
    candidates: Vec<(Fingerprint, u64, Instant)>,
    /// New files that are copies of a file being read; read only once that file is truncated.
    held: HashSet<FileId>,
    /// Open failures already logged.
    warned: HashSet<PathBuf>,
    /// The buffer [`FileTailer::read`] reads into, kept between rounds.
    read_buf: Vec<u8>,
}

fn file_id(m: &std::fs::Metadata) -> FileId {
    FileId {
        dev: m.dev(),
        ino: m.ino(),
    }
}

impl FileTailer {
    /// A tailer for `source` under the `[logs]` settings `logs`.
    pub fn new(
        source: &FileSource,
        logs: &LogsConfig,
        metrics: AgentMetrics,
    ) -> Result<Self, String> {
        let globs = source
            .paths
            .iter()
            .map(|p| Glob::new(p))
            .collect::<Result<_, _>>()?;
        let excludes = source
            .exclude
            .iter()
            .map(|p| Exclude::new(p))
            .collect::<Result<_, _>>()?;
        let rule = match &source.multiline_start {
            Some(re) => StartRule::Pattern(
                regex::bytes::Regex::new(re).map_err(|e| format!("multiline_start: {e}"))?,
            ),
            None => StartRule::Indented,
        };
        Ok(Self {
            name: source.source_name().to_string(),
            globs,
            excludes,
            start_at: source.start_at,
            rule,
            extra: source
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            bounds: Bounds {
                max_message_bytes: source.max_line_bytes,
                max_fields: logs.max_fields,
                max_field_bytes: logs.max_field_bytes,
            },
            max_line: source.max_line_bytes,
            flush_after: secs(logs.multiline_flush_seconds),
            release_after: secs(logs.release_after_seconds),
            rate: RateLimit::new(source.rate_limit_lines_per_second),
            metrics,
            files: BTreeMap::new(),
            by_id: HashMap::new(),
            next_order: 0,
            scanned: false,
            candidates: Vec::new(),
            held: HashSet::new(),
            warned: HashSet::new(),
            read_buf: Vec::new(),
        })
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Files open now.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    fn matched_paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .globs
            .iter()
            .flat_map(Glob::expand)
            .filter(|p| !self.excludes.iter().any(|e| e.matches(p)))
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }

    /// Looks for files: opens new ones (at their checkpoint, at `start_at` on the first scan,
    /// else at their beginning), notices files no matched path leads to any more, checks open
    /// files for truncation. Checkpoints for new files go into `out`.
    pub fn scan(&mut self, now: Instant, lookup: Lookup<'_>, out: &mut Chunk) {
        self.candidates
            .retain(|(_, _, at)| now.duration_since(*at) < CANDIDATE_TTL);
        let mut seen: HashSet<FileId> = HashSet::new();
        let mut fresh: Vec<(PathBuf, File, FileId, u64)> = Vec::new();
        for path in self.matched_paths() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = file_id(&meta);
            if !seen.insert(id) || self.by_id.contains_key(&id) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => fresh.push((path, f, id, meta.len())),
                Err(e) => {
                    self.metrics
                        .log_source_errors
                        .with_label_values(&[&self.name, "open"])
                        .inc();
                    if self.warned.insert(path.clone()) {
                        tracing::warn!(source = %self.name, path = %path.display(), error = %e, "cannot open a log file; retrying at every scan");
                    }
                }
            }
        }
        // Open files: truncated in place? grown past their fingerprint?
        let orders: Vec<u64> = self.files.keys().copied().collect();
        for order in orders {
            self.check_truncation(order, now, out);
        }
        // Files with a checkpoint first, so that a truncated file's old position is known
        // before its copy is placed.
        let mut unknown = Vec::new();
        for (path, file, id, size) in fresh {
            let saved = lookup(&id.key()).and_then(|v| FileCheckpoint::decode(&v));
            match saved {
                Some(cp) => {
                    let same = cp.fingerprint.matches(&file).unwrap_or(false) && cp.offset <= size;
                    if same {
                        self.track(cp.path.clone(), file, id, cp.offset, now, out);
                    } else {
                        if cp.fingerprint.is_full() {
                            self.candidates.push((cp.fingerprint, cp.offset, now));
                        }
                        self.count_rotation("truncate");
                        self.track(path.display().to_string(), file, id, 0, now, out);
                    }
                }
                None => unknown.push((path, file, id, size)),
            }
        }
        for (path, file, id, size) in unknown {
            let fp = Fingerprint::of(&file, FINGERPRINT_BYTES)
                .unwrap_or(Fingerprint { len: 0, hash: 0 });
            let start = if fp.is_full() {
                if let Some(i) = self.candidates.iter().position(|(c, _, _)| *c == fp) {
                    let (_, at, _) = self.candidates.remove(i);
                    self.held.remove(&id);
                    self.count_rotation("copytruncate");
                    Some(at.min(size))
                } else if self.files.values().any(|t| t.fp == fp) {
                    // a copy of a file being read: wait until that one is truncated
                    self.held.insert(id);
                    continue;
                } else {
                    None
                }
            } else {
                None
            };
            let start = start.unwrap_or(match (self.scanned, self.start_at) {
                (false, StartAt::End) => size,
                _ => 0,
            });
            self.held.remove(&id);
            self.track(path.display().to_string(), file, id, start, now, out);
        }
        self.held.retain(|id| seen.contains(id));
        for t in self.files.values_mut() {
            if seen.contains(&t.id) {
                t.orphan_since = None;
            } else if t.orphan_since.is_none() {
                t.orphan_since = Some(now);
                let deleted = t.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true);
                let kind = if deleted { "delete" } else { "rename" };
                self.metrics
                    .log_rotations
                    .with_label_values(&[&self.name, kind])
                    .inc();
            }
        }
        self.scanned = true;
        self.metrics
            .log_files_watched
            .with_label_values(&[&self.name])
            .set(self.files.len() as i64);
    }

    fn count_rotation(&self, kind: &str) {
        self.metrics
            .log_rotations
            .with_label_values(&[&self.name, kind])
            .inc();
    }

    fn track(
        &mut self,
        source: String,
        file: File,
        id: FileId,
        start: u64,
        now: Instant,
        out: &mut Chunk,
    ) {
        let fp =
            Fingerprint::of(&file, FINGERPRINT_BYTES).unwrap_or(Fingerprint { len: 0, hash: 0 });
        let t = Tracked {
            id,
            source,
            file,
            pos: start,
            line_start: start,
            line: Vec::new(),
            line_len: 0,
            pending: None,
            fp,
            sent: None,
            origin: start,
            last_data: now,
            orphan_since: None,
            size: 0,
        };
        let order = self.next_order;
        self.next_order += 1;
        self.by_id.insert(id, order);
        self.files.insert(order, t);
        self.checkpoint(order, out);
    }

    fn checkpoint(&mut self, order: u64, out: &mut Chunk) {
        if let Some(t) = self.files.get_mut(&order) {
            let committed = t.committed();
            if t.sent != Some(committed) {
                t.sent = Some(committed);
                out.checkpoints
                    .insert(t.id.key(), Some(t.checkpoint().encode()));
            }
        }
    }

    /// Goes back to the positions saved in the buffer (after a buffer write failed, once every
    /// record handed over is written or dropped): each open file is read again from its saved
    /// offset, or from where reading started when none was saved; what was read past it and
    /// not yet made a record is forgotten. Returns the bytes to read again, or `Err` (nothing
    /// changed) when a saved position could not be read: the buffer failed again.
    pub fn rewind(&mut self, lookup: FallibleLookup<'_>) -> Result<u64, BufferError> {
        let mut saved_all = Vec::with_capacity(self.files.len());
        for t in self.files.values() {
            saved_all.push(lookup(&t.id.key())?);
        }
        let mut again = 0;
        for (t, saved) in self.files.values_mut().zip(saved_all) {
            let size = t.file.metadata().map(|m| m.len()).unwrap_or(0);
            let saved = saved
                .and_then(|v| FileCheckpoint::decode(&v))
                .filter(|cp| cp.offset <= size && cp.fingerprint.matches(&t.file).unwrap_or(false));
            let (to, sent) = match saved {
                Some(cp) => (cp.offset, Some(cp.offset)),
                None => (t.origin.min(size), None),
            };
            again += t.pos.saturating_sub(to);
            t.pos = to;
            t.line_start = to;
            t.line.clear();
            t.line_len = 0;
            t.pending = None;
            t.sent = sent;
        }
        if again > 0 {
            tracing::info!(source = %self.name, bytes = again, "reading again what did not reach the buffer");
        }
        Ok(again)
    }

    /// A file that shrank below what was read, or whose first bytes changed, was truncated
    /// (copy-truncate rotation): what was pending is sent, its old position is remembered for
    /// its copy, and it is read again from 0.
    fn check_truncation(&mut self, order: u64, now: Instant, out: &mut Chunk) {
        let Some(t) = self.files.get_mut(&order) else {
            return;
        };
        let size = t.file.metadata().map(|m| m.len()).unwrap_or(t.pos);
        let rewritten = t.fp.len > 0 && !t.fp.matches(&t.file).unwrap_or(true);
        if size >= t.pos && !rewritten {
            if !t.fp.is_full() && size > u64::from(t.fp.len) {
                if let Ok(fp) = Fingerprint::of(&t.file, FINGERPRINT_BYTES) {
                    t.fp = fp;
                    t.sent = None;
                }
            }
            return;
        }
        self.emit_pending(order, now, out);
        let Some(t) = self.files.get_mut(&order) else {
            return;
        };
        if t.fp.is_full() {
            self.candidates.push((t.fp, t.line_start, now));
        }
        t.pos = 0;
        t.origin = 0;
        t.line_start = 0;
        t.line.clear();
        t.line_len = 0;
        t.fp =
            Fingerprint::of(&t.file, FINGERPRINT_BYTES).unwrap_or(Fingerprint { len: 0, hash: 0 });
        t.sent = None;
        self.count_rotation("truncate");
        self.checkpoint(order, out);
        // a copy held back may start now
        if !self.held.is_empty() {
            self.held.clear();
        }
    }

    /// Reads what is new in every open file (stopping once `out` holds [`CHUNK_RECORDS`]
    /// records); returns the bytes read.
    pub fn read(&mut self, now: Instant, clock: &mut Clock, out: &mut Chunk) -> u64 {
        let mut total = 0;
        let orders: Vec<u64> = self.files.keys().copied().collect();
        // One read buffer for the tailer's life: a fresh 256 KiB buffer per round is a fresh
        // mapping (above the allocator's mmap threshold) whose pages fault in on every read.
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(READ_BYTES, 0);
        for order in orders {
            self.check_truncation(order, now, out);
            loop {
                if out.records.len() >= CHUNK_RECORDS {
                    break;
                }
                let Some(t) = self.files.get_mut(&order) else {
                    break;
                };
                let n = match t.file.read_at_pos(&mut buf, t.pos) {
                    Ok(n) => n,
                    Err(e) => {
                        self.metrics
                            .log_source_errors
                            .with_label_values(&[&self.name, "read"])
                            .inc();
                        tracing::warn!(source = %self.name, path = %t.source, error = %e, "reading a log file failed; retrying");
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                t.pos += n as u64;
                t.last_data = now;
                total += n as u64;
                self.consume(order, n, &buf, clock, now, out);
            }
            self.checkpoint(order, out);
        }
        self.read_buf = buf;
        total
    }

    /// Splits `buf[..n]` (read at the file's previous position) into lines.
    fn consume(
        &mut self,
        order: u64,
        n: usize,
        buf: &[u8],
        clock: &mut Clock,
        now: Instant,
        out: &mut Chunk,
    ) {
        let Some(t) = self.files.get(&order) else {
            return;
        };
        let base = t.pos - n as u64;
        self.consume_rest(order, &buf[..n], base, clock, now, out, 0);
    }

    #[allow(clippy::too_many_arguments)]
    fn consume_rest(
        &mut self,
        order: u64,
        mut rest: &[u8],
        mut at: u64,
        clock: &mut Clock,
        now: Instant,
        out: &mut Chunk,
        mut lines: u64,
    ) {
        let max = self.max_line;
        while !rest.is_empty() {
            let Some(t) = self.files.get_mut(&order) else {
                return;
            };
            match rest.iter().position(|&b| b == b'\n') {
                None => {
                    let room = max.saturating_sub(t.line.len());
                    t.line.extend_from_slice(&rest[..rest.len().min(room)]);
                    t.line_len += rest.len();
                    break;
                }
                Some(i) => {
                    let end = at + i as u64 + 1;
                    lines += 1;
                    let start = t.line_start;
                    t.line_start = end;
                    if t.line_len == 0 {
                        let keep = i.min(max);
                        self.feed(order, &rest[..keep], i, start, clock, now, out);
                    } else {
                        let room = max.saturating_sub(t.line.len());
                        t.line.extend_from_slice(&rest[..i.min(room)]);
                        let full = t.line_len + i;
                        let bytes = std::mem::take(&mut t.line);
                        t.line_len = 0;
                        self.feed(order, &bytes, full, start, clock, now, out);
                    }
                    rest = &rest[i + 1..];
                    at = end;
                }
            }
        }
        self.metrics
            .log_lines_read
            .with_label_values(&[&self.name])
            .inc_by(lines);
    }

    /// One complete line (`bytes`, cut from `full` bytes) starting at `start`.
    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        order: u64,
        bytes: &[u8],
        full: usize,
        start: u64,
        clock: &mut Clock,
        now: Instant,
        out: &mut Chunk,
    ) {
        let trimmed = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let starts = self.rule.starts_record(trimmed);
        let Some(t) = self.files.get_mut(&order) else {
            return;
        };
        if trimmed.is_empty() && full <= 1 {
            // blank lines are not records
            if t.pending.is_none() {
                return;
            }
            if let Some(p) = &mut t.pending {
                p.full_len += 1;
            }
            return;
        }
        match &mut t.pending {
            Some(p) if !starts => {
                p.full_len += 1 + full;
                let room = self.max_line.saturating_sub(p.bytes.len());
                if room > 0 {
                    p.bytes.push(b'\n');
                    let room = room - 1;
                    p.bytes
                        .extend_from_slice(&trimmed[..trimmed.len().min(room)]);
                }
            }
            _ => {
                self.emit_pending(order, now, out);
                let Some(t) = self.files.get_mut(&order) else {
                    return;
                };
                t.pending = Some(Pending {
                    start,
                    bytes: trimmed.to_vec(),
                    full_len: full,
                    read_ns: clock.stamp(),
                });
            }
        }
    }

    /// Turns the file's pending record into a record (or a counted drop over the rate limit).
    fn emit_pending(&mut self, order: u64, now: Instant, out: &mut Chunk) {
        let Some(t) = self.files.get_mut(&order) else {
            return;
        };
        let Some(p) = t.pending.take() else {
            return;
        };
        if !self.rate.allow(now) {
            self.metrics
                .log_rate_limited
                .with_label_values(&[&self.name])
                .inc();
            return;
        }
        let cut_from =
            (p.full_len > p.bytes.len() && p.full_len > self.max_line).then_some(p.full_len);
        let (rec, marks) = parse::parse(
            Raw {
                bytes: &p.bytes,
                cut_from,
            },
            &t.source,
            p.read_ns,
            &self.extra,
            &self.bounds,
        );
        super::count_marks(&self.metrics, &self.name, &marks);
        out.records.push(rec);
    }

    /// Sends multi-line records that waited long enough, and closes files that were renamed
    /// away or deleted once they were read to the end and stayed quiet for `release_after`.
    pub fn tick(&mut self, now: Instant, out: &mut Chunk) {
        let orders: Vec<u64> = self.files.keys().copied().collect();
        for order in orders {
            let Some(t) = self.files.get_mut(&order) else {
                continue;
            };
            if t.pending.is_some() && now.duration_since(t.last_data) >= self.flush_after {
                self.emit_pending(order, now, out);
                self.checkpoint(order, out);
            }
            let Some(t) = self.files.get_mut(&order) else {
                continue;
            };
            t.size = t.file.metadata().map(|m| m.len()).unwrap_or(t.pos);
            let release = t.orphan_since.is_some_and(|since| {
                t.pos >= t.size && now.duration_since(since.max(t.last_data)) >= self.release_after
            });
            if release {
                self.release(order, now, out);
            }
        }
        let lag: u64 = self
            .files
            .values()
            .map(|t| t.size.saturating_sub(t.committed()))
            .sum();
        self.metrics
            .log_checkpoint_lag_bytes
            .with_label_values(&[&self.name])
            .set(lag as i64);
    }

    fn release(&mut self, order: u64, now: Instant, out: &mut Chunk) {
        self.emit_pending(order, now, out);
        if let Some(t) = self.files.get_mut(&order) {
            if !t.line.is_empty() {
                // a last line without a newline: nothing will complete it now
                t.pending = Some(Pending {
                    start: t.line_start,
                    bytes: std::mem::take(&mut t.line),
                    full_len: t.line_len,
                    read_ns: super::now_ns(),
                });
                self.emit_pending(order, now, out);
            }
        }
        if let Some(t) = self.files.remove(&order) {
            self.by_id.remove(&t.id);
            out.checkpoints.insert(t.id.key(), None);
            tracing::debug!(source = %self.name, path = %t.source, "released a rotated or deleted log file");
        }
        self.metrics
            .log_files_watched
            .with_label_values(&[&self.name])
            .set(self.files.len() as i64);
    }
}

/// Positioned reads on a file.
trait ReadAtPos {
    fn read_at_pos(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize>;
}

impl ReadAtPos for File {
    fn read_at_pos(&self, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        loop {
            match self.read_at(buf, pos) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn source(glob: String) -> FileSource {
        FileSource {
            name: "app".into(),
            paths: vec![glob],
            exclude: Vec::new(),
            start_at: StartAt::Beginning,
            multiline_start: None,
            labels: BTreeMap::new(),
            max_line_bytes: 1024,
            rate_limit_lines_per_second: 0,
        }
    }

    /// Reads what is there, the last line included (its multi-line wait is over).
    fn read_all(t: &mut FileTailer, clock: &mut Clock) -> Vec<String> {
        let now = Instant::now();
        let mut chunk = Chunk::default();
        t.read(now, clock, &mut chunk);
        t.tick(now + Duration::from_secs(60), &mut chunk);
        chunk.records.into_iter().map(|r| r.message).collect()
    }

    /// After a failed buffer write the tailer goes back to the position saved in the buffer
    /// (lines past it are read again), or to where it started when none was saved; when the
    /// saved position can not be read it stays where it is.
    #[test]
    fn rewind_reads_again_from_the_saved_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = File::create(dir.path().join("a.log")).unwrap();
        for i in 0..10 {
            writeln!(f, "line {i}").unwrap();
        }
        let glob = format!("{}/*.log", dir.path().display());
        let mut t =
            FileTailer::new(&source(glob), &LogsConfig::default(), AgentMetrics::new()).unwrap();
        let mut clock = Clock::default();
        let mut first = Chunk::default();
        t.scan(Instant::now(), &|_| None, &mut first);
        let lines: Vec<String> = (0..10).map(|i| format!("line {i}")).collect();
        assert_eq!(read_all(&mut t, &mut clock), lines);
        let (key, value) = first.checkpoints.into_iter().next().unwrap();
        let start = FileCheckpoint::decode(&value.unwrap()).unwrap();
        // saved with the batch of lines 0-3 ("line N\n" is 7 bytes)
        let saved = FileCheckpoint {
            offset: 28,
            ..start
        }
        .encode();

        let closed = |_: &[u8]| Err(BufferError::Encode(0, "closed".into()));
        assert!(t.rewind(&closed).is_err());
        assert!(read_all(&mut t, &mut clock).is_empty(), "nothing moved");

        let lookup = |k: &[u8]| Ok((k == key.as_slice()).then(|| saved.clone()));
        assert_eq!(t.rewind(&lookup).unwrap(), 70 - 28);
        assert_eq!(read_all(&mut t, &mut clock), lines[4..]);

        assert_eq!(t.rewind(&|_| Ok(None)).unwrap(), 70);
        assert_eq!(read_all(&mut t, &mut clock), lines);
    }
}
