//! `[logs]` in the aggregator's configuration: how long log records are kept, how much disk
//! they may take, and how much is buffered in memory before it is compressed to disk.

use serde::Deserialize;

/// Settings of the log store.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogStoreConfig {
    /// Hours log records are kept, by their timestamp (whole segments go once their newest
    /// record is this old).
    pub retention_hours: f64,
    /// Most bytes the log segments may take on disk; the segments with the oldest records go
    /// first beyond it. 0: no limit.
    pub max_bytes: u64,
    /// Bytes of records (before compression) buffered in memory before they are compressed
    /// into a segment file. Buffered records are durable in the write-ahead log meanwhile.
    pub buffer_bytes: u64,
}

impl Default for LogStoreConfig {
    fn default() -> Self {
        Self {
            retention_hours: 168.0,
            max_bytes: 0,
            buffer_bytes: 8 * 1024 * 1024,
        }
    }
}

impl LogStoreConfig {
    /// Checks values the types can not: the key and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(self.retention_hours.is_finite() && self.retention_hours > 0.0) {
            return Err((
                "logs.retention_hours",
                "must be a positive number of hours".into(),
            ));
        }
        if self.buffer_bytes == 0 || self.buffer_bytes > 256 * 1024 * 1024 {
            return Err((
                "logs.buffer_bytes",
                "must be between 1 and 268435456 (256 MiB)".into(),
            ));
        }
        Ok(())
    }

    /// Retention in nanoseconds.
    pub fn retention_ns(&self) -> i64 {
        (self.retention_hours * 3_600e9).min(i64::MAX as f64 / 2.0) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        assert!(LogStoreConfig::default().validate().is_ok());
        let c = LogStoreConfig {
            retention_hours: 0.0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "logs.retention_hours");
        let c = LogStoreConfig {
            buffer_bytes: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "logs.buffer_bytes");
    }
}
