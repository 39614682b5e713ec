//! Log sources: files by glob ([`tail`]), the systemd journal ([`journald`]) and records pushed
//! by local programs (parsed here for the push listener's `POST /v1/logs`). Every record goes
//! through [`parse`], and reaches the collector together with the checkpoints that say how far
//! its source has been read ([`checkpoint`]), so both land in the buffer in one transaction.
//!
//! File and journal sources run on threads of their own (blocking file and pipe reads), and
//! stop at a flag; what they read but did not hand over is read again at the next start.

pub mod checkpoint;
pub mod config;
pub mod glob;
pub mod journald;
pub mod parse;
pub mod tail;

use crate::buffer::Buffer;
use crate::collector::{Collected, Output};
use crate::config::secs;
use crate::metrics::AgentMetrics;
use config::LogsConfig;
use fleetwatch_common::model::LogRecord;
use parse::{Bounds, Marks, Raw};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tail::{Chunk, FileTailer};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Read times for records: the wall clock, but strictly increasing within one source, so that
/// records read one after the other sort in that order at the aggregator.
#[derive(Debug, Default)]
pub struct Clock {
    last: i64,
}

impl Clock {
    /// The next timestamp.
    pub fn stamp(&mut self) -> i64 {
        self.last = now_ns().max(self.last + 1);
        self.last
    }
}

/// Counts what [`parse::parse`] had to change.
pub fn count_marks(metrics: &AgentMetrics, source: &str, marks: &Marks) {
    if marks.invalid_utf8 {
        metrics.log_invalid_utf8.with_label_values(&[source]).inc();
    }
    if marks.truncated {
        metrics
            .log_truncated
            .with_label_values(&[source, "line"])
            .inc();
    }
    if marks.fields_dropped > 0 {
        metrics
            .log_truncated
            .with_label_values(&[source, "fields"])
            .inc();
    }
    if marks.values_cut > 0 {
        metrics
            .log_truncated
            .with_label_values(&[source, "value"])
            .inc();
    }
}

/// Records at most in the channel to the collector from all log sources: beyond it a source
/// waits (so a fast file does not fill the agent's memory ahead of the buffer).
pub const MAX_QUEUED_RECORDS: usize = 8192;

/// Where log sources hand their chunks, with the shared count of records in flight.
#[derive(Clone)]
pub struct Sink {
    out: Output,
    queued: Arc<AtomicUsize>,
    metrics: AgentMetrics,
}

impl Sink {
    /// Hands records and checkpoints to the collector, counting the records; waits while
    /// [`MAX_QUEUED_RECORDS`] are queued; false once the collector is gone or `stop` is set.
    fn send(&self, source: &str, mut chunk: Chunk, stop: &AtomicBool) -> bool {
        while self.queued.load(Ordering::Relaxed) >= MAX_QUEUED_RECORDS {
            if stop.load(Ordering::Relaxed) || self.out.is_closed() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let n = chunk.records.len();
        let checkpoints = chunk.take_checkpoints();
        self.queued.fetch_add(n, Ordering::Relaxed);
        let ok = self
            .out
            .blocking_send(Collected::Logs {
                records: chunk.records,
                checkpoints,
                queued: Some(self.queued.clone()),
            })
            .is_ok();
        if ok {
            self.metrics
                .log_records
                .with_label_values(&[source])
                .inc_by(n as u64);
        } else {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
        ok
    }
}

/// Sleeps `d` in short steps, returning early once `stop` is set.
fn nap(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// The running log sources.
pub struct LogSources {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LogSources {
    /// Starts a thread per file source and one for the journal (when enabled). Positions are
    /// read from `buffer`'s checkpoints. A source whose globs do not compile is skipped (the
    /// configuration check refuses such files before this).
    pub fn start(
        cfg: &LogsConfig,
        buffer: Arc<Buffer>,
        out: Output,
        metrics: AgentMetrics,
    ) -> LogSources {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let sink = Sink {
            out,
            queued: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        };
        for source in &cfg.files {
            let tailer = match FileTailer::new(source, cfg, metrics.clone()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!(source = source.source_name(), error = %e, "log source not started");
                    continue;
                }
            };
            let (buffer, sink, stop) = (buffer.clone(), sink.clone(), stop.clone());
            let timing = (
                secs(cfg.scan_interval_seconds),
                secs(cfg.read_interval_seconds),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("logs-{}", tailer.name()))
                .spawn(move || run_files(tailer, timing, &buffer, &sink, &stop));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => tracing::error!(error = %e, "cannot start a log source thread"),
            }
        }
        if cfg.journald.enabled {
            let (jcfg, buffer, sink, stop2) = (
                cfg.journald.clone(),
                buffer.clone(),
                sink.clone(),
                stop.clone(),
            );
            let bounds = bounds_for(cfg, journald::MAX_MESSAGE_BYTES);
            let spawned = std::thread::Builder::new()
                .name("logs-journald".into())
                .spawn(move || journald::run(&jcfg, bounds, &buffer, &sink, &stop2));
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => tracing::error!(error = %e, "cannot start the journald thread"),
            }
        }
        LogSources { stop, threads }
    }

    /// Stops every source and waits for its thread (blocking; call from `spawn_blocking`).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Parse bounds for a source under `cfg`.
pub fn bounds_for(cfg: &LogsConfig, max_message_bytes: usize) -> Bounds {
    Bounds {
        max_message_bytes,
        max_fields: cfg.max_fields,
        max_field_bytes: cfg.max_field_bytes,
    }
}

/// After a buffer write failed (a full disk): waits until every record already handed to the
/// collector is written or dropped (a flush), so that the positions saved in the buffer are
/// final, then until the buffer takes writes again. The caller then goes back to the saved
/// positions: records in failed writes are read again, none twice. False once `stop` is set
/// or the collector is gone.
pub(super) fn settle_after_failure(
    name: &str,
    buffer: &Buffer,
    sink: &Sink,
    stop: &AtomicBool,
) -> bool {
    let (done, mut answered) = tokio::sync::oneshot::channel();
    if sink.out.blocking_send(Collected::Flush(done)).is_err() {
        return false;
    }
    loop {
        match answered.try_recv() {
            Ok(()) | Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    tracing::info!(
        source = name,
        "log source paused until the buffer takes writes again; it then reads on from its saved position"
    );
    while !buffer.is_available() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        nap(Duration::from_millis(250), stop);
    }
    !stop.load(Ordering::Relaxed)
}

fn run_files(
    mut tailer: FileTailer,
    (scan_every, read_every): (Duration, Duration),
    buffer: &Buffer,
    sink: &Sink,
    stop: &AtomicBool,
) {
    let lookup = |k: &[u8]| buffer.checkpoint(k).ok().flatten();
    let mut clock = Clock::default();
    let mut last_scan: Option<Instant> = None;
    let name = tailer.name().to_string();
    let mut failures = buffer.failures();
    while !stop.load(Ordering::Relaxed) {
        if buffer.failures() != failures {
            if !settle_after_failure(&name, buffer, sink, stop) {
                return;
            }
            let saved = |k: &[u8]| buffer.checkpoint(k);
            if tailer.rewind(&saved).is_ok() {
                failures = buffer.failures();
            }
            // else the buffer failed again: settle again before reading on
            continue;
        }
        let now = Instant::now();
        let mut chunk = Chunk::default();
        if last_scan.is_none_or(|t| now.duration_since(t) >= scan_every) {
            tailer.scan(now, &lookup, &mut chunk);
            last_scan = Some(now);
        }
        let read = tailer.read(now, &mut clock, &mut chunk);
        tailer.tick(now, &mut chunk);
        if !chunk.is_empty() && !sink.send(&name, chunk, stop) {
            return;
        }
        if read == 0 {
            nap(read_every, stop);
        }
    }
}

/// Most records in one `POST /v1/logs`.
pub const MAX_PUSHED_RECORDS: usize = 10_000;
/// Longest pushed message, in bytes.
pub const MAX_PUSHED_MESSAGE_BYTES: usize = 256 * 1024;

/// Why pushed logs were refused: a short reason (for the metric) and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedLogsError {
    /// Short reason.
    pub reason: &'static str,
    /// What is wrong, naming the item.
    pub message: String,
}

/// Parses pushed logs: a JSON object, an array of objects, or NDJSON (one object per line).
/// Each object is read like a JSON log line (`message`/`msg`, `level`, `timestamp`, well-known
/// fields promoted, others kept as fields; a `fields` object is merged in); `source` or `app`
/// names the pushing application (default `push`). Any invalid item refuses the whole body.
pub fn parse_pushed(body: &[u8], read_ns: i64) -> Result<Vec<(LogRecord, Marks)>, PushedLogsError> {
    let bad = |reason, message: String| PushedLogsError { reason, message };
    let text = std::str::from_utf8(body)
        .map_err(|e| bad("json", format!("the body is not UTF-8: {e}")))?;
    let items: Vec<serde_json::Value> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items,
        Ok(v @ serde_json::Value::Object(_)) => vec![v],
        Ok(_) => {
            return Err(bad(
                "json",
                "expected a JSON object, an array of objects or one object per line".into(),
            ))
        }
        Err(whole) => {
            let mut items = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v = serde_json::from_str(line).map_err(|e| {
                    if i == 0 {
                        bad("json", format!("invalid JSON: {whole}"))
                    } else {
                        bad("json", format!("line {}: invalid JSON: {e}", i + 1))
                    }
                })?;
                items.push(v);
            }
            items
        }
    };
    if items.is_empty() {
        return Err(bad("empty", "the request holds no log records".into()));
    }
    if items.len() > MAX_PUSHED_RECORDS {
        return Err(bad(
            "too_many_records",
            format!(
                "the request holds {} records, at most {MAX_PUSHED_RECORDS}",
                items.len()
            ),
        ));
    }
    let defaults = LogsConfig::default();
    let bounds = bounds_for(&defaults, MAX_PUSHED_MESSAGE_BYTES);
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let serde_json::Value::Object(mut obj) = item else {
            return Err(bad("json", format!("item {i}: expected an object")));
        };
        let has_message = ["message", "msg"]
            .iter()
            .any(|k| matches!(obj.get(*k), Some(serde_json::Value::String(_))));
        if !has_message {
            return Err(bad(
                "message",
                format!("item {i}: \"message\" (a string) is missing"),
            ));
        }
        let source = match obj.remove("source").or_else(|| obj.remove("app")) {
            None => "push".to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
            Some(other) => {
                return Err(bad(
                    "source",
                    format!("item {i}: source must be a string of 1 to 256 bytes, got {other}"),
                ))
            }
        };
        match obj.remove("fields") {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(fields)) => {
                for (k, v) in fields {
                    obj.entry(k).or_insert(v);
                }
            }
            Some(_) => return Err(bad("fields", format!("item {i}: fields must be an object"))),
        }
        if let Some(ts) = obj
            .get("timestamp")
            .filter(|v| parse::timestamp_ns(v).is_none_or(|ns| ns <= 0))
        {
            return Err(bad(
                "timestamp",
                format!("item {i}: timestamp {ts} is not RFC 3339 text or a number of seconds, milliseconds or nanoseconds since the Unix epoch"),
            ));
        }
        let line = serde_json::Value::Object(obj).to_string();
        let (rec, marks) = parse::parse(
            Raw {
                bytes: line.as_bytes(),
                cut_from: None,
            },
            &source,
            read_ns + i as i64,
            &[],
            &bounds,
        );
        out.push((rec, marks));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetwatch_common::model::LogLevel;

    #[test]
    fn pushed_logs_in_every_shape() {
        let one = parse_pushed(
            br#"{"message":"paid","level":"info","trace_id":"t1","source":"billing-api","fields":{"amount":"12"}}"#,
            5,
        )
        .unwrap();
        let (r, _) = &one[0];
        assert_eq!(r.source, "billing-api");
        assert_eq!(r.level, LogLevel::Info);
        assert!(r.fields.contains(&("trace_id".into(), "t1".into())));
        assert!(r.fields.contains(&("amount".into(), "12".into())));
        let arr = parse_pushed(br#"[{"msg":"a"},{"msg":"b","level":"error"}]"#, 5).unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[1].0.level, LogLevel::Error);
        assert_eq!(arr[0].0.source, "push");
        let nd = parse_pushed(
            b"{\"msg\":\"a\"}\n\n{\"msg\":\"b\",\"timestamp\":\"2024-05-01T00:00:00Z\"}\n",
            5,
        )
        .unwrap();
        assert_eq!(nd[1].0.timestamp_ns, 1_714_521_600_000_000_000);
        for (body, reason, text) in [
            (&b"{\"msg\":"[..], "json", "invalid JSON"),
            (b"{\"msg\":\"a\"}\n{oops}", "json", "line 2"),
            (b"42", "json", "expected a JSON object"),
            (b"[]", "empty", "no log records"),
            (b"[{\"level\":\"info\"}]", "message", "item 0"),
            (
                b"[{\"msg\":\"a\",\"source\":7}]",
                "source",
                "source must be",
            ),
            (
                b"[{\"msg\":\"a\",\"fields\":[1]}]",
                "fields",
                "fields must be",
            ),
            (
                b"[{\"msg\":\"a\",\"timestamp\":\"soon\"}]",
                "timestamp",
                "RFC 3339",
            ),
            (b"\xff", "json", "not UTF-8"),
        ] {
            let e = parse_pushed(body, 5).unwrap_err();
            assert_eq!(e.reason, reason, "{e:?}");
            assert!(e.message.contains(text), "{e:?}");
        }
    }
}
