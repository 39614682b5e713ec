//! The log store's index: streams (one per label set host, source, service, level), the chunks
//! of each segment file with their stream and time range, and the in-memory buffer of records
//! not yet compressed. Queries pick streams by label matchers, then chunks by time.

use super::chunk::StoredRecord;
use fleetwatch_common::model::LogLevel;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The labels of a stream: what a selector matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    /// From the agent's certificate.
    pub host: String,
    /// File path, `journald`, or the pushing application.
    pub source: String,
    /// The record's promoted `service` field; empty without one.
    pub service: String,
    /// Severity.
    pub level: LogLevel,
}

/// The label names a selector may use.
pub const LABELS: [&str; 4] = ["host", "level", "service", "source"];

/// The level's label value.
pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "critical",
        LogLevel::Unknown => "unknown",
    }
}

/// A level from its label value (`warning`, `fatal` and `err` accepted too).
pub fn parse_level(name: &str) -> Option<LogLevel> {
    Some(match name.to_ascii_lowercase().as_str() {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" | "warning" => LogLevel::Warn,
        "error" | "err" => LogLevel::Error,
        "critical" | "fatal" => LogLevel::Critical,
        "unknown" => LogLevel::Unknown,
        _ => return None,
    })
}

impl StreamKey {
    /// A label's value by name.
    pub fn label(&self, name: &str) -> Option<&str> {
        match name {
            "host" => Some(&self.host),
            "source" => Some(&self.source),
            "service" => Some(&self.service),
            "level" => Some(level_name(self.level)),
            _ => None,
        }
    }
}

/// Streams by id; ids are handed out in order and never reused while the process runs.
#[derive(Debug, Default)]
pub struct Streams {
    keys: Vec<Arc<StreamKey>>,
    ids: HashMap<Arc<StreamKey>, u32>,
}

impl Streams {
    /// The id of `key`, new if never seen.
    pub fn intern(&mut self, key: StreamKey) -> u32 {
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        let id = self.keys.len() as u32;
        let key = Arc::new(key);
        self.keys.push(key.clone());
        self.ids.insert(key, id);
        id
    }

    /// The labels of stream `id`.
    pub fn key(&self, id: u32) -> &Arc<StreamKey> {
        &self.keys[id as usize]
    }

    /// Every stream, by id.
    pub fn all(&self) -> &[Arc<StreamKey>] {
        &self.keys
    }
}

/// Where one chunk is, and what it holds.
#[derive(Debug, Clone)]
pub struct ChunkRef {
    /// Its stream.
    pub stream: u32,
    /// Oldest and newest record (ns).
    pub min_ts: i64,
    /// Newest record (ns).
    pub max_ts: i64,
    /// Records in it.
    pub count: u32,
    /// Byte offset of its frame in the segment file.
    pub offset: u64,
    /// Frame length.
    pub len: u32,
    /// crc32 of the frame.
    pub crc: u32,
}

/// A segment file on disk: chunks of every stream that was buffered when it was written.
#[derive(Debug)]
pub struct Segment {
    /// Its number (file name); later segments have higher numbers.
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// File size.
    pub bytes: u64,
    /// Oldest record (ns).
    pub min_ts: i64,
    /// Newest record (ns).
    pub max_ts: i64,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
    /// The write-ahead log epoch of its records (0: from before this start).
    pub epoch: u64,
}

/// Records buffered in memory (durable in the write-ahead log), per stream in arrival order.
#[derive(Debug, Default)]
pub struct Pending {
    /// Stream id → records.
    pub streams: HashMap<u32, Vec<StoredRecord>>,
    /// (host, sequence number) of every batch in it.
    pub batches: Vec<(String, u64)>,
    /// Sum of [`StoredRecord::raw_len`].
    pub raw_bytes: u64,
    /// Records held.
    pub records: u64,
    /// The write-ahead log epoch its records were appended in (a log cut starts a new one).
    pub epoch: u64,
}

impl Pending {
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.records == 0 && self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_through_their_names() {
        for l in [
            LogLevel::Trace,
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
            LogLevel::Critical,
            LogLevel::Unknown,
        ] {
            assert_eq!(parse_level(level_name(l)), Some(l));
        }
        assert_eq!(parse_level("WARNING"), Some(LogLevel::Warn));
        assert_eq!(parse_level("loud"), None);
    }

    #[test]
    fn streams_are_interned_once() {
        let mut s = Streams::default();
        let k = StreamKey {
            host: "a".into(),
            source: "/var/log/x".into(),
            service: String::new(),
            level: LogLevel::Info,
        };
        let id = s.intern(k.clone());
        assert_eq!(s.intern(k.clone()), id);
        assert_eq!(s.key(id).label("level"), Some("info"));
        assert_eq!(s.key(id).label("other"), None);
    }
}
