//! The exposition parser: Prometheus text format 0.0.4 and OpenMetrics 1.0 text, one pass over
//! the lines, into samples with their metric type.
//!
//! Written here rather than taken from openmetrics-parser 0.4: that crate's Prometheus grammar
//! accepts only lower-case metric names (node_exporter's `node_memory_MemTotal_bytes` fails the
//! whole scrape), no `:` in names, requires every sample of a family to carry the same label
//! names, and checks duplicates by a linear scan per sample (quadratic on a 10,000-series family).

use fleetwatch_common::model::{Label, MetricKind};
use std::collections::HashMap;

/// Which text format a body is in, chosen by the response's `Content-Type` as Prometheus does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4` (and anything not OpenMetrics).
    PrometheusText,
    /// `application/openmetrics-text`.
    OpenMetrics,
}

impl Format {
    /// The format for a `Content-Type` header value.
    pub fn from_content_type(content_type: &str) -> Format {
        let media = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media == "application/openmetrics-text" {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::PrometheusText => "prometheus",
            Format::OpenMetrics => "openmetrics",
        }
    }
}

/// The `Accept` header Prometheus 2.x sends: OpenMetrics preferred, the text format accepted.
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// One parsed sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSample {
    /// The sample's metric name (for example `http_requests_bucket`).
    pub name: String,
    /// Its labels as exposed, in exposition order, empty values left out.
    pub labels: Vec<Label>,
    /// The value.
    pub value: f64,
    /// The exposition's own timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Its type, from the family's `# TYPE` line.
    pub kind: MetricKind,
}

/// A line that is not valid in the format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// The family types of both formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl FamilyType {
    fn parse(word: &str, format: Format) -> Option<FamilyType> {
        Some(match (word, format) {
            ("counter", _) => FamilyType::Counter,
            ("gauge", _) => FamilyType::Gauge,
            ("histogram", _) => FamilyType::Histogram,
            ("summary", _) => FamilyType::Summary,
            ("untyped", Format::PrometheusText) | ("unknown", Format::OpenMetrics) => {
                FamilyType::Unknown
            }
            ("gaugehistogram", Format::OpenMetrics) => FamilyType::GaugeHistogram,
            ("info", Format::OpenMetrics) => FamilyType::Info,
            ("stateset", Format::OpenMetrics) => FamilyType::StateSet,
            _ => return None,
        })
    }

    /// The kind of a sample whose name is the family name plus `suffix` (`""` for none), or
    /// `None` when that suffix does not belong to this type.
    fn kind_for(self, suffix: &str) -> Option<MetricKind> {
        use MetricKind::{Counter, Gauge, Untyped};
        Some(match (self, suffix) {
            (FamilyType::Counter, "" | "_total") => Counter,
            (FamilyType::Gauge, "") => Gauge,
            (FamilyType::Histogram, "_bucket" | "_count" | "_sum") => Counter,
            (FamilyType::Summary, "_count" | "_sum") => Counter,
            (FamilyType::Summary, "") => Gauge,
            (FamilyType::Counter | FamilyType::Histogram | FamilyType::Summary, "_created") => {
                Gauge
            }
            (FamilyType::GaugeHistogram, "_bucket" | "_gcount" | "_gsum") => Gauge,
            (FamilyType::Info, "_info") => Gauge,
            (FamilyType::StateSet, "") => Gauge,
            (FamilyType::Unknown, "") => Untyped,
            _ => return None,
        })
    }
}

const SUFFIXES: [&str; 8] = [
    "_total", "_bucket", "_count", "_sum", "_created", "_gcount", "_gsum", "_info",
];

/// One sample line as [`visit`] hands it over.
#[derive(Debug)]
pub struct SampleLine<'a> {
    /// The sample's metric name.
    pub name: &'a str,
    /// The series as written: the name and the label block up to its `}`, the part of the line
    /// before the value. Equal texts always parse to equal names and labels.
    pub series_text: &'a str,
    /// The labels as exposed (empty values left out), or `None` when the visitor said it knew
    /// `series_text` already, so they were not parsed again.
    pub labels: Option<Vec<Label>>,
    /// The value.
    pub value: f64,
    /// The exposition's own timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Its type, from the family's `# TYPE` line.
    pub kind: MetricKind,
}

/// What [`visit`] calls for the sample lines of a body.
pub trait Visitor<'a> {
    /// Whether this label block was seen (and parsed) before; if so the labels are not parsed
    /// and the line comes with `labels: None`. Only asked for lines that have a label block.
    fn is_known(&mut self, series_text: &'a str) -> bool;
    /// One valid sample line, in body order.
    fn sample(&mut self, line: SampleLine<'a>);
}

/// Parses a whole exposition. Any invalid line fails the whole body, as in Prometheus.
pub fn parse(text: &str, format: Format) -> Result<Vec<ParsedSample>, ParseError> {
    struct Collect(Vec<ParsedSample>);
    impl Visitor<'_> for Collect {
        fn is_known(&mut self, _: &str) -> bool {
            false
        }
        fn sample(&mut self, line: SampleLine<'_>) {
            self.0.push(ParsedSample {
                name: line.name.to_string(),
                labels: line.labels.unwrap_or_default(),
                value: line.value,
                timestamp_ms: line.timestamp_ms,
                kind: line.kind,
            });
        }
    }
    let mut samples = Collect(Vec::new());
    visit(text, format, &mut samples)?;
    Ok(samples.0)
}

/// Reads a whole exposition in one pass, handing each sample line to `visitor`; returns the
/// number of samples. Any invalid line fails the whole body (the visitor may have seen the
/// lines before it).
pub fn visit<'a>(
    text: &'a str,
    format: Format,
    visitor: &mut impl Visitor<'a>,
) -> Result<usize, ParseError> {
    let mut types: HashMap<&str, FamilyType> = HashMap::new();
    // consecutive samples mostly share a name (histogram buckets, a family's label sets)
    let mut last_kind: Option<(&str, MetricKind)> = None;
    let mut count = 0;
    let mut eof = false;
    for (index, raw) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let err = |message: String| ParseError {
            line: line_no,
            message,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if eof {
            if line.is_empty() && index + 1 == text.split('\n').count() {
                continue;
            }
            return Err(err("content after # EOF".into()));
        }
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, [' ', '\t']);
            match (words.next(), format) {
                (Some("EOF"), Format::OpenMetrics) if comment.trim() == "EOF" => eof = true,
                (Some("TYPE"), _) => {
                    let name = words.next().unwrap_or("");
                    let word = words.next().unwrap_or("").trim();
                    if !is_metric_name(name) {
                        return Err(err(format!("invalid metric name {name:?} in # TYPE")));
                    }
                    let Some(t) = FamilyType::parse(word, format) else {
                        return Err(err(format!("unknown metric type {word:?} for {name}")));
                    };
                    if types.insert(name, t).is_some() {
                        return Err(err(format!("second # TYPE line for {name}")));
                    }
                    last_kind = None;
                }
                (Some("HELP" | "UNIT"), _) => {
                    let name = words.next().unwrap_or("");
                    if !is_metric_name(name) {
                        return Err(err(format!("invalid metric name {name:?} in a comment")));
                    }
                }
                _ => {}
            }
            continue;
        }
        let mut sample = parse_sample(line, format, visitor).map_err(err)?;
        sample.kind = match last_kind {
            Some((name, kind)) if name == sample.name => kind,
            _ => {
                let kind = kind_of(&types, sample.name);
                last_kind = Some((sample.name, kind));
                kind
            }
        };
        visitor.sample(sample);
        count += 1;
    }
    if format == Format::OpenMetrics && !eof {
        return Err(ParseError {
            line: text.lines().count(),
            message: "OpenMetrics body does not end with # EOF".into(),
        });
    }
    Ok(count)
}

fn kind_of(types: &HashMap<&str, FamilyType>, name: &str) -> MetricKind {
    if let Some(kind) = types.get(name).and_then(|t| t.kind_for("")) {
        return kind;
    }
    for suffix in SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(kind) = types.get(base).and_then(|t| t.kind_for(suffix)) {
                return kind;
            }
        }
    }
    MetricKind::Untyped
}

/// One sample line (its kind is set by the caller).
fn parse_sample<'a>(
    line: &'a str,
    format: Format,
    visitor: &mut impl Visitor<'a>,
) -> Result<SampleLine<'a>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("invalid metric name at {:?}", short(line)));
    }
    let has_block = line[name_end..].starts_with('{');
    let (series_end, labels) = if has_block {
        // A label block seen before parsed without error to the same labels: skip it. The
        // quick scan only finds where it may end; an unknown text is parsed in full.
        match label_block_end(&line[name_end + 1..]).map(|n| name_end + 1 + n) {
            Some(end) if visitor.is_known(&line[..end]) => (end, None),
            _ => {
                let mut labels = Vec::new();
                let rest = parse_labels(&line[name_end + 1..], &mut labels, name)?;
                (line.len() - rest.len(), Some(labels))
            }
        }
    } else {
        (name_end, Some(Vec::new()))
    };
    let rest = &line[series_end..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return Err(if has_block {
            format!("{name}: expected a space before the value")
        } else {
            format!("invalid metric name at {:?}", short(line))
        });
    }
    let rest = rest.trim_start_matches([' ', '\t']);
    let (value_part, after_value) = split_word(rest);
    if value_part.is_empty() {
        return Err(format!("{name}: missing value"));
    }
    let value = parse_float(value_part)
        .ok_or_else(|| format!("{name}: invalid value {:?}", short(value_part)))?;
    let after_value = after_value.trim_start_matches([' ', '\t']);
    let (ts_part, after_ts) = if after_value.starts_with('#') {
        ("", after_value)
    } else {
        split_word(after_value)
    };
    let timestamp_ms = if ts_part.is_empty() {
        None
    } else {
        Some(
            parse_timestamp(ts_part, format)
                .ok_or_else(|| format!("{name}: invalid timestamp {:?}", short(ts_part)))?,
        )
    };
    let tail = after_ts.trim_start_matches([' ', '\t']);
    if !tail.is_empty() {
        // OpenMetrics exemplars (` # {...} value [ts]`) are accepted and left out.
        if !(format == Format::OpenMetrics && tail.starts_with("# {")) {
            return Err(format!(
                "{name}: unexpected text {:?} after the value",
                short(tail)
            ));
        }
    }
    Ok(SampleLine {
        name,
        series_text: &line[..series_end],
        labels,
        value,
        timestamp_ms,
        kind: MetricKind::Untyped,
    })
}

/// Where the label block that `s` continues (after its `{`) may end: the byte after the first
/// `}` outside a quoted value. Only a guess for a cache lookup; [`parse_labels`] decides.
fn label_block_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Parses `a="1",b="2"}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut Vec<Label>,
    metric: &str,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        let lname = &s[..name_end];
        if !is_label_name(lname) {
            return Err(format!(
                "{metric}: invalid label name at {:?}",
                short(&s[..s.len().min(name_end.max(1))])
            ));
        }
        s = s[name_end..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("{metric}: expected = after label {lname}"))?
            .trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("{metric}: label {lname} value is not quoted"))?;
        let (value, rest) = parse_quoted(s)
            .ok_or_else(|| format!("{metric}: label {lname} value is not terminated"))?;
        if labels.iter().any(|l| l.name == lname) {
            return Err(format!("{metric}: label {lname} appears twice"));
        }
        // Prometheus: an empty value is the same as no label.
        if !value.is_empty() {
            labels.push(Label::new(lname, value));
        }
        s = rest.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err(format!("{metric}: expected , or }} after label {lname}"));
        }
    }
}

/// A quoted string body up to its closing quote, unescaping `\\`, `\"` and `\n`.
fn parse_quoted(s: &str) -> Option<(String, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut out: Option<String> = None;
    let mut start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let value = match out {
                    Some(mut o) => {
                        o.push_str(&s[start..i]);
                        o
                    }
                    None => s[..i].to_string(),
                };
                return Some((value, &s[i + 1..]));
            }
            b'\\' if i + 1 < bytes.len() => {
                let o = out.get_or_insert_with(String::new);
                o.push_str(&s[start..i]);
                match bytes[i + 1] {
                    b'n' => o.push('\n'),
                    b'\\' => o.push('\\'),
                    b'"' => o.push('"'),
                    _ => o.push_str(&s[i..i + 2]),
                }
                i += 2;
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// A float as Go's `ParseFloat` reads the exposition's values (`+Inf`, `-Inf`, `NaN`).
fn parse_float(s: &str) -> Option<f64> {
    if s.contains('_') {
        return None;
    }
    s.parse::<f64>().ok()
}

fn parse_timestamp(s: &str, format: Format) -> Option<i64> {
    match format {
        // milliseconds, an integer
        Format::PrometheusText => s.parse::<i64>().ok(),
        // seconds, possibly fractional
        Format::OpenMetrics => {
            let secs = parse_float(s)?;
            secs.is_finite().then(|| (secs * 1000.0).round() as i64)
        }
    }
}

fn is_metric_name(name: &str) -> bool {
    fleetwatch_common::validate::is_metric_name(name)
}

/// A label name as the exposition allows it (`__` names are reserved for Prometheus itself).
fn is_label_name(name: &str) -> bool {
    fleetwatch_common::validate::is_label_name(name)
}

fn short(s: &str) -> &str {
    let mut end = s.len().min(60);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &ParsedSample) -> Vec<(&str, &str)> {
        s.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect()
    }

    #[test]
    fn prometheus_text_with_types_and_escapes() {
        let text = "# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.\n\
# TYPE node_memory_MemTotal_bytes gauge\n\
node_memory_MemTotal_bytes 1.6e+10\n\
# TYPE http_requests_total counter\n\
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
http_requests_total{method=\"get\", code=\"4\\\"0\\\\0\\n\",} 3\n\
# TYPE rpc_duration_seconds summary\n\
rpc_duration_seconds{quantile=\"0.5\"} 4773\n\
rpc_duration_seconds_sum 1.7560473e+07\n\
rpc_duration_seconds_count 2693\n\
# TYPE req histogram\n\
req_bucket{le=\"+Inf\"} 7\n\
req_sum NaN\n\
job:rate:5m{empty=\"\"} -Inf\n\
\n";
        let s = parse(text, Format::PrometheusText).unwrap();
        assert_eq!(s.len(), 9);
        assert_eq!(s[0].name, "node_memory_MemTotal_bytes");
        assert_eq!(s[0].kind, MetricKind::Gauge);
        assert_eq!(s[0].value, 1.6e10);
        assert_eq!(s[1].kind, MetricKind::Counter);
        assert_eq!(s[1].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(labels(&s[1]), vec![("method", "post"), ("code", "200")]);
        assert_eq!(
            labels(&s[2]),
            vec![("method", "get"), ("code", "4\"0\\0\n")]
        );
        assert_eq!(s[3].kind, MetricKind::Gauge, "summary quantile");
        assert_eq!(s[4].kind, MetricKind::Counter, "summary sum");
        assert_eq!(s[5].kind, MetricKind::Counter, "summary count");
        assert_eq!(s[6].kind, MetricKind::Counter, "histogram bucket");
        assert!(s[7].value.is_nan());
        assert_eq!(s[8].name, "job:rate:5m");
        assert_eq!(s[8].kind, MetricKind::Untyped);
        assert!(s[8].labels.is_empty(), "empty label values are dropped");
        assert_eq!(s[8].value, f64::NEG_INFINITY);
    }

    #[test]
    fn openmetrics_with_eof_exemplars_and_second_timestamps() {
        let text = "# TYPE foo counter\n\
# UNIT foo seconds\n\
foo_total 17.0 1520879607.789 # {trace_id=\"KOO5S4vxi0o\"} 0.67\n\
foo_created 1520872607.123\n\
# TYPE build info\n\
build_info{version=\"1\"} 1\n\
# TYPE q gaugehistogram\n\
q_gcount 3\n\
# EOF\n";
        let s = parse(text, Format::OpenMetrics).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].kind, MetricKind::Counter);
        assert_eq!(s[0].timestamp_ms, Some(1_520_879_607_789));
        assert_eq!(s[1].kind, MetricKind::Gauge);
        assert_eq!(s[2].kind, MetricKind::Gauge);
        assert_eq!(s[3].kind, MetricKind::Gauge);
    }

    #[test]
    fn openmetrics_needs_eof_and_nothing_after_it() {
        let err = parse("a 1\n", Format::OpenMetrics).unwrap_err();
        assert!(err.message.contains("# EOF"), "{err}");
        let err = parse("a 1\n# EOF\nb 2\n", Format::OpenMetrics).unwrap_err();
        assert_eq!(err.line, 3);
    }

    #[test]
    fn invalid_lines_name_the_line_and_problem() {
        for (text, want) in [
            ("a{b=\"1\" 2\n", "expected , or }"),
            ("a{b=1} 2\n", "not quoted"),
            ("a{b=\"1} 2\n", "not terminated"),
            ("a{1b=\"x\"} 2\n", "invalid label name"),
            ("a{b=\"x\",b=\"y\"} 2\n", "twice"),
            ("a xyz\n", "invalid value"),
            ("a 1 1.5\n", "invalid timestamp"),
            ("a 1 2 3\n", "unexpected text"),
            ("a\n", "missing value"),
            ("# TYPE a bogus\n", "unknown metric type"),
            ("# TYPE a gauge\n# TYPE a gauge\n", "second # TYPE"),
            ("9a 1\n", "invalid metric name"),
            ("a-b 1\n", "invalid metric name"),
        ] {
            let err = parse(&format!("ok 1\n{text}"), Format::PrometheusText).unwrap_err();
            assert_eq!(err.line, 1 + text.lines().count(), "{text}: {err}");
            assert!(err.message.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn content_type_selects_the_format() {
        assert_eq!(
            Format::from_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_content_type("text/plain; version=0.0.4"),
            Format::PrometheusText
        );
        assert_eq!(Format::from_content_type(""), Format::PrometheusText);
    }

    #[test]
    fn known_series_texts_skip_labels_but_not_checks() {
        struct Knows(Vec<String>, Vec<(String, Option<usize>, f64)>);
        impl<'a> Visitor<'a> for Knows {
            fn is_known(&mut self, text: &'a str) -> bool {
                self.0.iter().any(|k| k == text)
            }
            fn sample(&mut self, line: SampleLine<'a>) {
                let labels = line.labels.map(|l| l.len());
                self.1
                    .push((line.series_text.to_string(), labels, line.value));
            }
        }
        let known = vec!["a{x=\"}\\\"\"}".to_string(), "b{y=\"1\"}".to_string()];
        let mut v = Knows(known.clone(), Vec::new());
        let body = "a{x=\"}\\\"\"} 1\nb{y=\"1\"}  2 5\nc{z=\"1\"} 3\nd 4\n";
        assert_eq!(visit(body, Format::PrometheusText, &mut v).unwrap(), 4);
        assert_eq!(
            v.1,
            vec![
                (known[0].clone(), None, 1.0),
                (known[1].clone(), None, 2.0),
                ("c{z=\"1\"}".to_string(), Some(1), 3.0),
                ("d".to_string(), Some(0), 4.0),
            ]
        );
        // a known text does not excuse the rest of the line
        let mut v = Knows(known, Vec::new());
        let err = visit("b{y=\"1\"} x\n", Format::PrometheusText, &mut v).unwrap_err();
        assert!(err.message.contains("invalid value"), "{err}");
        let err = visit("b{y=\"1\"}2\n", Format::PrometheusText, &mut v).unwrap_err();
        assert!(err.message.contains("expected a space"), "{err}");
    }

    #[test]
    fn comments_and_crlf_are_accepted() {
        let s = parse("# just a comment\r\na 1\r\n#\n", Format::PrometheusText).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].value, 1.0);
    }
}
