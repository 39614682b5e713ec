//! The `[logs]` section: file sources by glob (`[[logs.files]]`), the journald source and the
//! limits every log record obeys, with their checks.

use fleetwatch_common::validate::Limits;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Fields the agent itself may add to a record (markers such as `fleetwatch.truncated`); the
/// rest of the aggregator's field limit is left to the record's own fields.
pub const RESERVED_FIELDS: usize = 16;

/// Where to start reading a file (or the journal) the agent has no checkpoint for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From its first byte.
    Beginning,
    /// From its end: only what is written from now on.
    #[default]
    End,
}

/// The whole `[logs]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// File sources (`[[logs.files]]`).
    pub files: Vec<FileSource>,
    /// The systemd journal (`[logs.journald]`).
    pub journald: JournaldConfig,
    /// Seconds between two looks for new files matching the globs.
    pub scan_interval_seconds: f64,
    /// Seconds between two reads of a file that had nothing new.
    pub read_interval_seconds: f64,
    /// Seconds a multi-line record waits for a continuation line before it is sent.
    pub multiline_flush_seconds: f64,
    /// Seconds a file that was deleted or renamed away (no longer at any matched path) is kept
    /// open once read to its end, in case its writer adds a last line; then it is closed.
    pub release_after_seconds: f64,
    /// Most structured fields kept from one record (the rest are dropped, marked and counted);
    /// at most the aggregator's limit minus the agent's own markers.
    pub max_fields: usize,
    /// Longest field value kept, in bytes (longer ones are cut, marked and counted).
    pub max_field_bytes: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        Self {
            files: Vec::new(),
            journald: JournaldConfig::default(),
            scan_interval_seconds: 1.0,
            read_interval_seconds: 0.25,
            multiline_flush_seconds: 0.5,
            release_after_seconds: 3.0,
            max_fields: 128,
            max_field_bytes: 16 * 1024,
        }
    }
}

/// One file source (`[[logs.files]]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    /// Name in the agent's metrics (`source` label) and logs; defaults to the first path.
    #[serde(default)]
    pub name: String,
    /// Paths or globs (`*`, `?`, `[abc]` within one path component; `**` for any depth).
    pub paths: Vec<String>,
    /// Globs of paths not to read, matched against the whole path (`*.gz`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where to start in a file found at the agent's start that has no checkpoint; files that
    /// appear later are always read from their beginning.
    #[serde(default)]
    pub start_at: StartAt,
    /// A regular expression matching the first line of a record; other lines continue the
    /// record before them. Unset: a line starting with a space or a tab, or with `Caused by`,
    /// continues the record before it.
    #[serde(default)]
    pub multiline_start: Option<String>,
    /// Fields added to every record of this source (`service = "api"` sets the service).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Longest line (or multi-line record) kept, in bytes; longer ones are truncated, marked
    /// `fleetwatch.truncated=true` and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Lines per second read from this source at most; more are dropped and counted. 0: no
    /// limit.
    #[serde(default)]
    pub rate_limit_lines_per_second: u64,
}

fn default_max_line_bytes() -> usize {
    256 * 1024
}

impl FileSource {
    /// The name in metrics: `name`, else the first path.
    pub fn source_name(&self) -> &str {
        if self.name.is_empty() {
            self.paths.first().map(String::as_str).unwrap_or("")
        } else {
            &self.name
        }
    }
}

/// The journald source (`[logs.journald]`), read through `journalctl -o json --follow`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JournaldConfig {
    /// Read the journal at all (skipped, logged once and counted, where `journalctl` is missing
    /// or finds no journal).
    pub enabled: bool,
    /// Where to start without a saved cursor.
    pub start_at: StartAt,
    /// Only these units (`_SYSTEMD_UNIT`); empty: all.
    pub units: Vec<String>,
    /// The `journalctl` program.
    pub journalctl: String,
    /// Entries per second at most; more are dropped and counted. 0: no limit.
    pub rate_limit_lines_per_second: u64,
}

impl Default for JournaldConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            start_at: StartAt::End,
            units: Vec::new(),
            journalctl: "journalctl".into(),
            rate_limit_lines_per_second: 0,
        }
    }
}

/// A problem in `[logs]`, naming the key.
pub fn validate(cfg: &LogsConfig) -> Result<(), String> {
    let limits = Limits::default();
    for (key, v) in [
        ("logs.scan_interval_seconds", cfg.scan_interval_seconds),
        ("logs.read_interval_seconds", cfg.read_interval_seconds),
        ("logs.multiline_flush_seconds", cfg.multiline_flush_seconds),
        ("logs.release_after_seconds", cfg.release_after_seconds),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(format!(
                "{key}: must be a positive number of seconds, got {v}"
            ));
        }
    }
    let most_fields = limits.max_log_fields - RESERVED_FIELDS;
    if cfg.max_fields == 0 || cfg.max_fields > most_fields {
        return Err(format!(
            "logs.max_fields: {} is not between 1 and {most_fields} (the aggregator keeps {} fields, the agent's markers need {RESERVED_FIELDS})",
            cfg.max_fields, limits.max_log_fields
        ));
    }
    if cfg.max_field_bytes < 64 || cfg.max_field_bytes > limits.max_log_message_bytes {
        return Err(format!(
            "logs.max_field_bytes: {} is not between 64 and {}",
            cfg.max_field_bytes, limits.max_log_message_bytes
        ));
    }
    let mut names = std::collections::HashSet::new();
    for f in &cfg.files {
        let name = f.source_name().to_string();
        let bad = |m: String| Err(format!("logs.files {name:?}: {m}"));
        if f.paths.is_empty() || f.paths.iter().any(|p| p.trim().is_empty()) {
            return bad("paths must list at least one path or glob, none empty".into());
        }
        if let Some(p) = f.paths.iter().find(|p| !p.starts_with('/')) {
            return bad(format!("path {p:?} must be absolute"));
        }
        if !names.insert(name.clone()) {
            return bad("two file sources have this name; give each a distinct `name`".into());
        }
        if let Some(re) = &f.multiline_start {
            if let Err(e) = regex::Regex::new(re) {
                return bad(format!("multiline_start {re:?}: {e}"));
            }
        }
        if f.max_line_bytes < 256 || f.max_line_bytes > limits.max_log_message_bytes {
            return bad(format!(
                "max_line_bytes {} is not between 256 and {} (the aggregator's limit on a message)",
                f.max_line_bytes, limits.max_log_message_bytes
            ));
        }
        if f.labels.len() > RESERVED_FIELDS / 2 {
            return bad(format!(
                "{} labels, at most {}",
                f.labels.len(),
                RESERVED_FIELDS / 2
            ));
        }
        if let Some(k) = f.labels.keys().find(|k| k.is_empty() || k.len() > 128) {
            return bad(format!("label name {k:?} must be 1 to 128 bytes"));
        }
    }
    if cfg.journald.journalctl.trim().is_empty() {
        return Err("logs.journald.journalctl: must name a program".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(paths: &[&str]) -> FileSource {
        FileSource {
            name: String::new(),
            paths: paths.iter().map(|s| s.to_string()).collect(),
            exclude: Vec::new(),
            start_at: StartAt::End,
            multiline_start: None,
            labels: BTreeMap::new(),
            max_line_bytes: default_max_line_bytes(),
            rate_limit_lines_per_second: 0,
        }
    }

    #[test]
    fn bad_values_name_the_source_and_key() {
        let ok = LogsConfig {
            files: vec![source(&["/var/log/*.log"])],
            ..Default::default()
        };
        assert_eq!(validate(&ok), Ok(()));
        let mut c = ok.clone();
        c.files[0].paths = vec!["relative.log".into()];
        assert!(validate(&c).unwrap_err().contains("must be absolute"));
        let mut c = ok.clone();
        c.files[0].multiline_start = Some("(".into());
        assert!(validate(&c).unwrap_err().contains("multiline_start"));
        let mut c = ok.clone();
        c.files[0].max_line_bytes = 2 * 1024 * 1024;
        assert!(validate(&c).unwrap_err().contains("max_line_bytes"));
        let mut c = ok.clone();
        c.files.push(c.files[0].clone());
        assert!(validate(&c).unwrap_err().contains("distinct"));
        let mut c = ok;
        c.max_fields = 10_000;
        assert!(validate(&c).unwrap_err().contains("logs.max_fields"));
    }
}
