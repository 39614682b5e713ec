//! Turning one raw log line (or a joined multi-line record) into a [`LogRecord`]: JSON objects
//! into fields with the well-known ones promoted, plain text with its level detected (words
//! such as `ERROR` or `warn`, a syslog `<PRI>`), invalid UTF-8 kept lossily and marked, and
//! every size kept within the aggregator's limits (cut, marked and reported in [`Marks`]).

use fleetwatch_common::model::{LogLevel, LogRecord};
use serde_json::{Map, Value};

/// Marker field: the line was not valid UTF-8 (invalid bytes became U+FFFD).
pub const MARK_INVALID_UTF8: &str = "fleetwatch.invalid_utf8";
/// Marker field: the line held control characters other than tab (binary data, NUL bytes).
pub const MARK_BINARY: &str = "fleetwatch.binary";
/// Marker field: the message was cut at `max_line_bytes`.
pub const MARK_TRUNCATED: &str = "fleetwatch.truncated";
/// Marker field: the line's length in bytes before it was cut.
pub const MARK_ORIGINAL_BYTES: &str = "fleetwatch.original_bytes";
/// Marker field: how many structured fields were dropped (over `max_fields`).
pub const MARK_FIELDS_DROPPED: &str = "fleetwatch.fields_dropped";
/// Marker field: how many field values were cut at `max_field_bytes`.
pub const MARK_VALUES_CUT: &str = "fleetwatch.values_cut";

/// Bounds applied to one record.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Longest message, in bytes.
    pub max_message_bytes: usize,
    /// Most fields from the record itself (markers and source labels come on top).
    pub max_fields: usize,
    /// Longest field value, in bytes.
    pub max_field_bytes: usize,
}

/// What had to be changed to make a record fit or be safe; each is also a marker field.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// Invalid UTF-8 was replaced.
    pub invalid_utf8: bool,
    /// The message was cut.
    pub truncated: bool,
    /// Fields dropped over the limit.
    pub fields_dropped: usize,
    /// Field values cut.
    pub values_cut: usize,
}

/// A raw record as read: its bytes (already cut at the line limit by the reader) and its length
/// before the cut, when it was cut.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    /// The bytes kept.
    pub bytes: &'a [u8],
    /// The full length, when longer than `bytes`.
    pub cut_from: Option<usize>,
}

/// Cuts `s` to at most `max` bytes at a character boundary; true when it cut.
pub fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// Parses one record. `read_ns` is the time it was read (used when the line has no timestamp
/// of its own); `extra` are the source's configured fields, added unless the line has its own.
pub fn parse(
    raw: Raw<'_>,
    source: &str,
    read_ns: i64,
    extra: &[(String, String)],
    bounds: &Bounds,
) -> (LogRecord, Marks) {
    let mut marks = Marks::default();
    let mut bytes = raw.bytes;
    while let [rest @ .., b'\r' | b'\n'] = bytes {
        bytes = rest;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            marks.invalid_utf8 = true;
            String::from_utf8_lossy(bytes)
        }
    };
    let binary = text.bytes().any(|b| b < 0x20 && b != b'\t' && b != b'\n');
    let mut rec = LogRecord {
        timestamp_ns: read_ns,
        source: source.to_string(),
        level: LogLevel::Unknown,
        message: String::new(),
        fields: Vec::new(),
    };
    let parsed_json = if raw.cut_from.is_none() && text.trim_start().starts_with('{') {
        serde_json::from_str::<Map<String, Value>>(&text).ok()
    } else {
        None
    };
    match parsed_json {
        Some(obj) => from_json(obj, &text, &mut rec, bounds, &mut marks),
        None => from_text(&text, &mut rec),
    }
    if cut(&mut rec.message, bounds.max_message_bytes) || raw.cut_from.is_some() {
        marks.truncated = true;
    }
    for (k, v) in extra {
        if !rec.fields.iter().any(|(f, _)| f == k) {
            rec.fields.push((k.clone(), v.clone()));
        }
    }
    let mark = |rec: &mut LogRecord, k: &str, v: String| rec.fields.push((k.to_string(), v));
    if marks.invalid_utf8 {
        mark(&mut rec, MARK_INVALID_UTF8, "true".into());
    }
    if binary {
        mark(&mut rec, MARK_BINARY, "true".into());
    }
    if marks.truncated {
        mark(&mut rec, MARK_TRUNCATED, "true".into());
        let original = raw.cut_from.unwrap_or(bytes.len());
        mark(&mut rec, MARK_ORIGINAL_BYTES, original.to_string());
    }
    if marks.fields_dropped > 0 {
        mark(
            &mut rec,
            MARK_FIELDS_DROPPED,
            marks.fields_dropped.to_string(),
        );
    }
    if marks.values_cut > 0 {
        mark(&mut rec, MARK_VALUES_CUT, marks.values_cut.to_string());
    }
    (rec, marks)
}

/// A level named by a word, in any case (`warn`, `WARNING`, `Error`, `fatal`, `crit`...).
pub fn level_from_word(w: &str) -> Option<LogLevel> {
    let up = w.to_ascii_uppercase();
    Some(match up.as_str() {
        "TRACE" | "TRC" => LogLevel::Trace,
        "DEBUG" | "DBG" => LogLevel::Debug,
        "INFO" | "INF" | "NOTICE" => LogLevel::Info,
        "WARN" | "WARNING" | "WRN" => LogLevel::Warn,
        "ERROR" | "ERR" | "ERRO" => LogLevel::Error,
        "FATAL" | "CRITICAL" | "CRIT" | "PANIC" | "EMERG" | "EMERGENCY" | "ALERT" => {
            LogLevel::Critical
        }
        _ => return None,
    })
}

/// The level of a syslog severity (0 emergency … 7 debug), as journald's `PRIORITY`.
pub fn level_from_syslog(severity: u8) -> LogLevel {
    match severity {
        0..=2 => LogLevel::Critical,
        3 => LogLevel::Error,
        4 => LogLevel::Warn,
        5 | 6 => LogLevel::Info,
        _ => LogLevel::Debug,
    }
}

/// How far into a plain-text line level words are looked for.
const LEVEL_SCAN_BYTES: usize = 160;

fn from_text(text: &str, rec: &mut LogRecord) {
    let mut body = text;
    if let Some((pri, rest)) = syslog_pri(text) {
        rec.level = level_from_syslog(pri % 8);
        rec.fields
            .push(("syslog.facility".into(), (pri / 8).to_string()));
        body = rest;
    } else {
        rec.level = detect_level(text);
    }
    rec.message = body.to_string();
}

/// `<PRI>` at the start of a syslog line.
fn syslog_pri(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let end = rest.find('>')?;
    if end == 0 || end > 3 {
        return None;
    }
    let pri: u8 = rest[..end].parse().ok()?;
    (pri <= 191).then(|| (pri, &rest[end + 1..]))
}

/// The first level word near the start of a plain-text line. Three-letter abbreviations
/// (`ERR`, `INF`, `WRN`, `DBG`, `TRC`) count only in capitals, as a word like "err" or "inf" in
/// a sentence is not a level.
pub fn detect_level(text: &str) -> LogLevel {
    let mut end = text.len().min(LEVEL_SCAN_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    for word in head.split(|c: char| !c.is_ascii_alphabetic()) {
        if word.len() < 3 || word.len() > 11 {
            continue;
        }
        if word.len() == 3 && word.bytes().any(|b| b.is_ascii_lowercase()) {
            continue;
        }
        if let Some(level) = level_from_word(word) {
            return level;
        }
    }
    LogLevel::Unknown
}

/// Well-known names: a JSON key (after flattening nested objects with dots) and the field
/// name it is stored under.
fn canonical(key: &str) -> Option<&'static str> {
    Some(match key {
        "service" | "service.name" | "service_name" | "serviceName" => "service",
        "module" | "logger" | "logger_name" | "loggerName" | "target" => "module",
        "operation" | "op" | "operation_name" => "operation",
        "trace_id" | "traceId" | "trace.id" | "traceid" | "dd.trace_id" => "trace_id",
        "span_id" | "spanId" | "span.id" | "spanid" | "dd.span_id" => "span_id",
        "correlation_id" | "correlationId" | "correlation.id" => "correlation_id",
        "user_id" | "userId" | "user.id" => "user_id",
        "organization_id" | "organizationId" | "organization.id" | "org_id" | "orgId" => {
            "organization_id"
        }
        "error" | "err" | "error.message" | "error_message" | "exception.message" => {
            "error.message"
        }
        "error.type" | "error_type" | "error.kind" | "exception.type" | "exc_type" => "error.type",
        "error.stack"
        | "stack"
        | "stack_trace"
        | "stacktrace"
        | "exception"
        | "exception.stacktrace"
        | "exc_info"
        | "error.stack_trace" => "error.stack",
        _ => return None,
    })
}

const LEVEL_KEYS: [&str; 6] = [
    "level",
    "lvl",
    "severity",
    "log.level",
    "levelname",
    "loglevel",
];
const MESSAGE_KEYS: [&str; 4] = ["message", "msg", "@message", "event"];
const TIME_KEYS: [&str; 6] = ["timestamp", "time", "ts", "@timestamp", "datetime", "date"];

fn from_json(
    mut obj: Map<String, Value>,
    text: &str,
    rec: &mut LogRecord,
    bounds: &Bounds,
    marks: &mut Marks,
) {
    for k in LEVEL_KEYS {
        if let Some(v) = obj.get(k) {
            let level = match v {
                Value::String(s) => level_from_word(s.trim()),
                Value::Number(n) => n.as_u64().map(level_from_number),
                _ => None,
            };
            if let Some(level) = level {
                rec.level = level;
                obj.remove(k);
                break;
            }
        }
    }
    for k in MESSAGE_KEYS {
        if let Some(Value::String(_)) = obj.get(k) {
            if let Some(Value::String(m)) = obj.remove(k) {
                rec.message = m;
            }
            break;
        }
    }
    if rec.message.is_empty() {
        rec.message = text.trim().to_string();
    }
    for k in TIME_KEYS {
        if let Some(ns) = obj.get(k).and_then(timestamp_ns) {
            rec.timestamp_ns = ns;
            obj.remove(k);
            break;
        }
    }
    // Flatten, then put the well-known fields first so that a limit never drops them.
    let mut flat: Vec<(String, String)> = Vec::new();
    let mut total = 0usize;
    let keep = bounds.max_fields;
    let (first, rest): (Vec<_>, Vec<_>) = obj.into_iter().partition(|(k, _)| {
        canonical(k).is_some()
            || matches!(
                k.as_str(),
                "error"
                    | "exception"
                    | "service"
                    | "trace"
                    | "span"
                    | "user"
                    | "organization"
                    | "correlation"
                    | "dd"
            )
    });
    for (k, v) in first.into_iter().chain(rest) {
        flatten(k, v, 0, &mut flat, &mut total, keep * 4);
    }
    let mut known: Vec<(String, String)> = Vec::new();
    let mut other: Vec<(String, String)> = Vec::new();
    for (k, v) in flat {
        match canonical(&k) {
            Some(c) if !known.iter().any(|(n, _)| n == c) => known.push((c.to_string(), v)),
            _ => other.push((k, v)),
        }
    }
    let count = known.len() + other.len();
    marks.fields_dropped = total - count;
    let mut fields: Vec<(String, String)> = known.into_iter().chain(other).collect();
    if fields.len() > keep {
        marks.fields_dropped += fields.len() - keep;
        fields.truncate(keep);
    }
    for (k, v) in &mut fields {
        if cut(v, bounds.max_field_bytes) {
            marks.values_cut += 1;
        }
        cut(k, 128);
    }
    rec.fields = fields;
}

/// bunyan/pino numeric levels (10 trace … 60 fatal), or a syslog severity (0 … 7).
fn level_from_number(n: u64) -> LogLevel {
    match n {
        0..=7 => level_from_syslog(n as u8),
        10..=19 => LogLevel::Trace,
        20..=29 => LogLevel::Debug,
        30..=39 => LogLevel::Info,
        40..=49 => LogLevel::Warn,
        50..=59 => LogLevel::Error,
        _ => LogLevel::Critical,
    }
}

/// Nested objects become dotted keys (up to depth 8), arrays and deeper values their JSON
/// text. Stops storing after `cap` entries but keeps counting in `total`.
fn flatten(
    key: String,
    v: Value,
    depth: usize,
    out: &mut Vec<(String, String)>,
    total: &mut usize,
    cap: usize,
) {
    match v {
        Value::Object(map) if depth < 8 && !map.is_empty() => {
            for (k, v) in map {
                flatten(format!("{key}.{k}"), v, depth + 1, out, total, cap);
            }
        }
        other => {
            *total += 1;
            if out.len() < cap {
                let s = match other {
                    Value::String(s) => s,
                    Value::Null => String::new(),
                    v => v.to_string(),
                };
                out.push((key, s));
            }
        }
    }
}

/// A timestamp from JSON: RFC 3339 text, or a number of seconds, milliseconds, microseconds or
/// nanoseconds since the Unix epoch (told apart by size).
pub fn timestamp_ns(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => rfc3339_ns(s.trim()),
        Value::Number(n) if n.is_i64() => {
            let i = n.as_i64()?;
            let ns = match i {
                ..=0 => return None,
                1..100_000_000_000 => i.checked_mul(1_000_000_000)?,
                100_000_000_000..100_000_000_000_000 => i.checked_mul(1_000_000)?,
                100_000_000_000_000..100_000_000_000_000_000 => i.checked_mul(1_000)?,
                _ => i,
            };
            Some(ns)
        }
        Value::Number(n) => {
            let f = n.as_f64()?;
            if !(f.is_finite() && f > 0.0) {
                return None;
            }
            let scale = if f < 1e11 {
                1e9
            } else if f < 1e14 {
                1e6
            } else if f < 1e17 {
                1e3
            } else {
                1.0
            };
            // whole and fractional parts apart, so that the fraction keeps its precision
            let whole = f.trunc() * scale;
            let frac = (f.fract() * scale).round();
            (whole + frac < i64::MAX as f64).then(|| whole as i64 + frac as i64)
        }
        _ => None,
    }
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time (`2024-05-01T12:00:00.123Z`,
/// `+02:00` offsets, a space instead of `T`).
pub fn rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                frac_ns = frac_ns * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = (i - start).min(9);
        if digits == 0 {
            return None;
        }
        frac_ns *= 10i64.pow(9 - digits as u32);
    }
    let offset_s = match &s[i..] {
        "Z" | "z" | "" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let oh: i64 = tz.get(1..3)?.parse().ok()?;
            let om: i64 = tz.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        max_message_bytes: 1000,
        max_fields: 20,
        max_field_bytes: 100,
    };

    fn p(line: &[u8]) -> (LogRecord, Marks) {
        parse(
            Raw {
                bytes: line,
                cut_from: None,
            },
            "/var/log/app.log",
            7,
            &[],
            &B,
        )
    }

    fn field<'a>(r: &'a LogRecord, k: &str) -> Option<&'a str> {
        r.fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn json_promotes_the_well_known_fields() {
        let (r, m) = p(br#"{"timestamp":"2024-05-01T12:00:00.5Z","level":"warning","service":"billing","module":"invoices","operation":"charge","msg":"card declined","traceId":"4bf92f35","span_id":"00f0","correlation_id":"c-1","user_id":"u-9","organization_id":"o-3","error":{"message":"declined","stack":"at x\nat y","type":"CardError"},"metadata":{"queue":"mail","attempt":3}}"#);
        assert_eq!(m, Marks::default());
        assert_eq!(r.level, LogLevel::Warn);
        assert_eq!(r.message, "card declined");
        assert_eq!(r.timestamp_ns, 1_714_564_800_500_000_000);
        for (k, v) in [
            ("service", "billing"),
            ("module", "invoices"),
            ("operation", "charge"),
            ("trace_id", "4bf92f35"),
            ("span_id", "00f0"),
            ("correlation_id", "c-1"),
            ("user_id", "u-9"),
            ("organization_id", "o-3"),
            ("error.message", "declined"),
            ("error.stack", "at x\nat y"),
            ("error.type", "CardError"),
            ("metadata.queue", "mail"),
            ("metadata.attempt", "3"),
        ] {
            assert_eq!(field(&r, k), Some(v), "{k}: {:?}", r.fields);
        }
        assert!(field(&r, "level").is_none() && field(&r, "msg").is_none());
    }

    #[test]
    fn plain_text_levels_and_syslog_priority() {
        for (line, level) in [
            ("2024-05-01 12:00:00 ERROR db: timeout", LogLevel::Error),
            ("[warn] disk almost full", LogLevel::Warn),
            ("level=debug msg=hello", LogLevel::Debug),
            ("I 12:00 INF started", LogLevel::Info),
            ("FATAL: out of memory", LogLevel::Critical),
            ("CRITICAL something", LogLevel::Critical),
            ("trace: entering", LogLevel::Trace),
            ("nothing to see, information desk err", LogLevel::Unknown),
        ] {
            assert_eq!(p(line.as_bytes()).0.level, level, "{line}");
        }
        let (r, _) = p(b"<11>Jan  1 00:00:00 host app: failed");
        assert_eq!(r.level, LogLevel::Error);
        assert_eq!(r.message, "Jan  1 00:00:00 host app: failed");
        assert_eq!(field(&r, "syslog.facility"), Some("1"));
        assert_eq!(r.timestamp_ns, 7);
    }

    #[test]
    fn invalid_utf8_and_nul_are_kept_and_marked() {
        let (r, m) = p(b"bad \xff\xfe bytes\x00 and nul\r\n");
        assert!(m.invalid_utf8);
        assert_eq!(r.message, "bad \u{fffd}\u{fffd} bytes\0 and nul");
        assert_eq!(field(&r, MARK_INVALID_UTF8), Some("true"));
        assert_eq!(field(&r, MARK_BINARY), Some("true"));
    }

    #[test]
    fn limits_cut_and_mark() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let line = format!(r#"{{"msg":"wide","trace_id":"t1",{}}}"#, keys.join(","));
        let (r, m) = p(line.as_bytes());
        assert_eq!(r.message, "wide");
        assert_eq!(
            field(&r, "trace_id"),
            Some("t1"),
            "promoted fields come first"
        );
        assert_eq!(m.fields_dropped, 10_001 - 20);
        assert_eq!(r.fields.len(), 21);
        assert_eq!(field(&r, MARK_FIELDS_DROPPED), Some("9981"));
        let (r, m) = p(format!(r#"{{"msg":"v","big":"{}"}}"#, "x".repeat(500)).as_bytes());
        assert_eq!(m.values_cut, 1);
        assert_eq!(field(&r, "big").unwrap().len(), 100);
        let long = vec![b'a'; 300];
        let (r, m) = parse(
            Raw {
                bytes: &long,
                cut_from: Some(10_000_000),
            },
            "s",
            1,
            &[("service".into(), "api".into())],
            &B,
        );
        assert!(m.truncated);
        assert_eq!(r.message.len(), 300);
        assert_eq!(field(&r, MARK_ORIGINAL_BYTES), Some("10000000"));
        assert_eq!(field(&r, "service"), Some("api"));
        // lossy replacement can grow a line: still within the message limit
        let (r, m) = p(&[0xffu8; 900]);
        assert!(m.truncated && r.message.len() <= 1000);
    }

    #[test]
    fn timestamps_in_every_form() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(
            rfc3339_ns("2024-05-01T14:00:00.000000001+02:00"),
            Some(1_714_564_800_000_000_001)
        );
        assert_eq!(rfc3339_ns("2024-13-01T00:00:00Z"), None);
        assert_eq!(rfc3339_ns("yesterday"), None);
        assert_eq!(
            timestamp_ns(&serde_json::json!(1_714_564_800)),
            Some(1_714_564_800_000_000_000)
        );
        assert_eq!(
            timestamp_ns(&serde_json::json!(1_714_564_800_123i64)),
            Some(1_714_564_800_123_000_000)
        );
        let (r, _) = p(br#"{"ts":1714564800.25,"msg":"x","level":50}"#);
        assert_eq!(r.timestamp_ns, 1_714_564_800_250_000_000);
        assert_eq!(r.level, LogLevel::Error);
    }
}
