//! The systemd journal as a log source, read through `journalctl -o json --follow`, resuming
//! after the cursor saved with the last shipped entry. `PRIORITY` gives the level,
//! `SYSLOG_IDENTIFIER` (else the unit) the service; a message that is a JSON object is parsed
//! like a JSON log line. Where `journalctl` is missing or finds no journal the source is skipped,
//! logged once and counted (`fleetwatch_agent_log_source_errors_total{source="journald",
//! reason="unavailable"}`).

use super::checkpoint::JOURNALD_KEY;
use super::config::{JournaldConfig, StartAt};
use super::parse::{self, Bounds, Raw};
use super::tail::{Chunk, RateLimit, CHUNK_RECORDS};
use super::{count_marks, nap, Sink};
use crate::buffer::Buffer;
use fleetwatch_common::model::{LogLevel, LogRecord};
use serde_json::{Map, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Longest journal message kept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The `source` of journal records.
pub const SOURCE: &str = "journald";

/// Why the journal can not be read here.
pub fn unavailable(journalctl: &str) -> Option<String> {
    match Command::new(journalctl)
        .args(["--header", "--no-pager"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("cannot run {journalctl:?}: {e}")),
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if text.contains("No journal files") {
                Some("journalctl finds no journal files (no systemd journal on this host, or no permission to read it)".into())
            } else if !out.status.success() {
                Some(format!(
                    "journalctl --header failed ({}): {}",
                    out.status,
                    text.lines().next().unwrap_or("")
                ))
            } else {
                None
            }
        }
    }
}

/// The `journalctl` arguments: after `cursor`, else from the start or the end.
pub fn arguments(cfg: &JournaldConfig, cursor: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["-o", "json", "--follow", "--no-pager", "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    match (cursor, cfg.start_at) {
        (Some(c), _) => args.push(format!("--after-cursor={c}")),
        (None, StartAt::Beginning) => args.push("--lines=all".into()),
        (None, StartAt::End) => args.push("--lines=0".into()),
    }
    for u in &cfg.units {
        args.push(format!("--unit={u}"));
    }
    args
}

fn text_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::String(s) => Some(s.clone().into_bytes()),
        // binary data: an array of byte values
        Value::Array(items) => items
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect(),
        _ => None,
    }
}

/// One journal entry (a line of `journalctl -o json`) as a record, with its cursor.
pub fn entry(line: &str, bounds: &Bounds) -> Option<(LogRecord, parse::Marks, String)> {
    let obj: Map<String, Value> = serde_json::from_str(line).ok()?;
    let cursor = obj.get("__CURSOR")?.as_str()?.to_string();
    let message = obj.get("MESSAGE").and_then(text_of).unwrap_or_default();
    let ts_us: Option<i64> = obj
        .get("__REALTIME_TIMESTAMP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    let read_ns = ts_us.map_or_else(super::now_ns, |us| us.saturating_mul(1000));
    let mut extra: Vec<(String, String)> = Vec::new();
    let get = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let unit = get("_SYSTEMD_UNIT");
    let ident = get("SYSLOG_IDENTIFIER");
    if let Some(service) = ident.clone().or_else(|| {
        unit.as_ref()
            .map(|u| u.trim_end_matches(".service").to_string())
    }) {
        extra.push(("service".into(), service));
    }
    if let Some(u) = unit {
        extra.push(("unit".into(), u));
    }
    if let Some(i) = ident {
        extra.push(("syslog_identifier".into(), i));
    }
    if let Some(p) = get("_PID") {
        extra.push(("pid".into(), p));
    }
    let cut = message.len() > bounds.max_message_bytes;
    let keep = &message[..message.len().min(bounds.max_message_bytes)];
    let (mut rec, marks) = parse::parse(
        Raw {
            bytes: keep,
            cut_from: cut.then_some(message.len()),
        },
        SOURCE,
        read_ns,
        &extra,
        bounds,
    );
    if let Some(p) = get("PRIORITY").and_then(|p| p.parse::<u8>().ok()) {
        // the journal's priority is the level, unless a JSON message named one itself
        let json_level =
            keep.trim_ascii_start().starts_with(b"{") && rec.level != LogLevel::Unknown;
        if !json_level {
            rec.level = parse::level_from_syslog(p);
        }
    }
    Some((rec, marks, cursor))
}

/// Runs the journal source until `stop`: (re)starts `journalctl` after the saved cursor and
/// hands entries to the collector with the cursor of the last one.
pub fn run(cfg: &JournaldConfig, bounds: Bounds, buffer: &Buffer, sink: &Sink, stop: &AtomicBool) {
    let metrics = &sink.metrics;
    if let Some(why) = unavailable(&cfg.journalctl) {
        tracing::warn!(reason = %why, "journald log source skipped");
        metrics
            .log_source_errors
            .with_label_values(&[SOURCE, "unavailable"])
            .inc();
        return;
    }
    let mut rate = RateLimit::new(cfg.rate_limit_lines_per_second);
    let mut warned_exit = false;
    while !stop.load(Ordering::Relaxed) {
        let cursor = buffer
            .checkpoint(JOURNALD_KEY)
            .ok()
            .flatten()
            .map(|c| String::from_utf8_lossy(&c).into_owned());
        let args = arguments(cfg, cursor.as_deref());
        let mut child = match Command::new(&cfg.journalctl)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                metrics
                    .log_source_errors
                    .with_label_values(&[SOURCE, "exited"])
                    .inc();
                tracing::warn!(error = %e, "cannot start journalctl; retrying in 5 s");
                nap(Duration::from_secs(5), stop);
                continue;
            }
        };
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return;
        };
        let (tx, rx) = mpsc::sync_channel::<String>(4096);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let failures = buffer.failures();
        let ended = follow(&rx, &bounds, &mut rate, sink, stop, &|| {
            buffer.failures() != failures
        });
        let _ = child.kill();
        let _ = child.wait();
        drop(rx);
        let _ = reader.join();
        match ended {
            Ended::Stopped => return,
            // A buffer write failed: start again after the cursor saved in the buffer.
            Ended::Rewind => {
                if !super::settle_after_failure(SOURCE, buffer, sink, stop) {
                    return;
                }
                continue;
            }
            Ended::Exited => {}
        }
        metrics
            .log_source_errors
            .with_label_values(&[SOURCE, "exited"])
            .inc();
        if !warned_exit {
            warned_exit = true;
            tracing::warn!("journalctl ended; restarting it after the saved cursor in 5 s");
        }
        nap(Duration::from_secs(5), stop);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Stopped,
    Exited,
    /// A buffer write failed since journalctl started.
    Rewind,
}

fn follow(
    rx: &mpsc::Receiver<String>,
    bounds: &Bounds,
    rate: &mut RateLimit,
    sink: &Sink,
    stop: &AtomicBool,
    buffer_failed: &dyn Fn() -> bool,
) -> Ended {
    let metrics = &sink.metrics;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ended::Stopped;
        }
        if buffer_failed() {
            return Ended::Rewind;
        }
        let mut chunk = Chunk::default();
        let mut cursor = None;
        let mut exited = false;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let mut next = Some(line);
                while let Some(line) = next.take() {
                    metrics.log_lines_read.with_label_values(&[SOURCE]).inc();
                    match entry(&line, bounds) {
                        Some((rec, marks, c)) => {
                            cursor = Some(c);
                            if rate.allow(std::time::Instant::now()) {
                                count_marks(metrics, SOURCE, &marks);
                                chunk.records.push(rec);
                            } else {
                                metrics.log_rate_limited.with_label_values(&[SOURCE]).inc();
                            }
                        }
                        None => metrics
                            .log_source_errors
                            .with_label_values(&[SOURCE, "parse"])
                            .inc(),
                    }
                    if chunk.records.len() < CHUNK_RECORDS {
                        match rx.try_recv() {
                            Ok(l) => next = Some(l),
                            Err(mpsc::TryRecvError::Empty) => {}
                            Err(mpsc::TryRecvError::Disconnected) => exited = true,
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ended::Exited,
        }
        if let Some(c) = cursor {
            chunk
                .checkpoints
                .insert(JOURNALD_KEY.to_vec(), Some(c.into_bytes()));
        }
        if !chunk.is_empty() && !sink.send(SOURCE, chunk, stop) {
            return Ended::Stopped;
        }
        if exited {
            return Ended::Exited;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        max_message_bytes: 1000,
        max_fields: 50,
        max_field_bytes: 1000,
    };

    #[test]
    fn journal_entries_become_records() {
        let line = r#"{"__CURSOR":"s=abc;i=1","__REALTIME_TIMESTAMP":"1714564800000001","PRIORITY":"3","_SYSTEMD_UNIT":"nginx.service","SYSLOG_IDENTIFIER":"nginx","_PID":"42","MESSAGE":"upstream timed out"}"#;
        let (r, _, cursor) = entry(line, &B).unwrap();
        assert_eq!(cursor, "s=abc;i=1");
        assert_eq!(r.source, "journald");
        assert_eq!(r.level, LogLevel::Error);
        assert_eq!(r.timestamp_ns, 1_714_564_800_000_001_000);
        assert_eq!(r.message, "upstream timed out");
        assert!(r.fields.contains(&("service".into(), "nginx".into())));
        assert!(r.fields.contains(&("unit".into(), "nginx.service".into())));
        // binary message, JSON message
        let bin = r#"{"__CURSOR":"c2","MESSAGE":[104,105,255],"PRIORITY":"6","_SYSTEMD_UNIT":"app.service"}"#;
        let (r, m, _) = entry(bin, &B).unwrap();
        assert!(m.invalid_utf8);
        assert_eq!(r.message, "hi\u{fffd}");
        assert!(r.fields.contains(&("service".into(), "app".into())));
        let json = r#"{"__CURSOR":"c3","MESSAGE":"{\"msg\":\"x\",\"level\":\"warn\",\"trace_id\":\"t\"}","PRIORITY":"6"}"#;
        let (r, _, _) = entry(json, &B).unwrap();
        assert_eq!(r.level, LogLevel::Warn);
        assert!(r.fields.contains(&("trace_id".into(), "t".into())));
        assert!(entry("not json", &B).is_none());
    }

    #[test]
    fn arguments_resume_after_the_cursor() {
        let cfg = JournaldConfig {
            units: vec!["nginx.service".into()],
            ..Default::default()
        };
        let a = arguments(&cfg, Some("s=1"));
        assert!(a.contains(&"--after-cursor=s=1".to_string()));
        assert!(a.contains(&"--unit=nginx.service".to_string()));
        assert!(arguments(&cfg, None).contains(&"--lines=0".to_string()));
    }

    #[test]
    fn a_missing_program_is_reported() {
        let why = unavailable("/nonexistent/journalctl").unwrap();
        assert!(why.contains("cannot run"), "{why}");
    }
}
