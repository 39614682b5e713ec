//! Prometheus rule files, unchanged: `groups:` of alerting and recording rules. Loading checks
//! everything Prometheus' `promtool check rules` checks (YAML shape, unknown keys, PromQL,
//! durations, label names, templates) and names the file, the line and the reason.

use super::template::Template;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A rule file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    groups: Vec<RawGroup>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    record: Option<String>,
    #[serde(default)]
    alert: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    keep_firing_for: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What a rule does.
#[derive(Debug, Clone)]
pub enum RuleKind {
    /// Stores the expression's result as series named `record`.
    Record(String),
    /// Fires an alert named `alert` while the expression returns anything.
    Alert {
        /// The alert name.
        name: String,
        /// How long the condition must hold before firing, ms.
        for_ms: i64,
        /// How long a firing alert keeps firing after the condition clears, ms.
        keep_firing_for_ms: i64,
        /// Annotation templates.
        annotations: BTreeMap<String, Template>,
    },
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// What it does.
    pub kind: RuleKind,
    /// The PromQL expression.
    pub expr: String,
    /// Labels added to its results (templates for alerts).
    pub labels: BTreeMap<String, Template>,
    /// Where it was written, for messages.
    pub line: usize,
}

impl Rule {
    /// The record or alert name.
    pub fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Record(n) => n,
            RuleKind::Alert { name, .. } => name,
        }
    }
}

/// One validated group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Evaluation interval, ms.
    pub interval_ms: i64,
    /// Most alerts or series one rule may produce (0: no limit).
    pub limit: u64,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// A problem in a rule file: file, line and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct RuleError {
    /// The file.
    pub file: String,
    /// The line (1-based; 0 when unknown).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Parses a Prometheus duration (`30s`, `1h30m`, `2d`).
pub fn parse_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0i64;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "y" => 31_536_000_000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Lines where each group's rules start (`- alert:`/`- record:` list items), per group in
/// order: serde_yaml gives no positions for values, so messages find them in the text.
fn rule_lines(text: &str) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let item = t.strip_prefix("- ").map(str::trim_start);
        if let Some(item) = item {
            if item.starts_with("name:") {
                groups.push(Vec::new());
                continue;
            }
        }
        let key = item.unwrap_or(t);
        if key.starts_with("alert:") || key.starts_with("record:") || key.starts_with("expr:") {
            if let Some(g) = groups.last_mut() {
                // one entry per rule: the first of its keys that starts the list item
                if item.is_some() {
                    g.push(i + 1);
                }
            }
        }
    }
    groups
}

/// Loads and checks one rule file.
pub fn load(path: &Path, default_interval_ms: i64) -> Result<Vec<Group>, Vec<RuleError>> {
    let file = path.display().to_string();
    let err = |line: usize, reason: String| RuleError {
        file: file.clone(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| vec![err(0, e.to_string())])?;
    let raw: RawFile = serde_yaml::from_str(&text).map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        vec![err(line, e.to_string())]
    })?;
    let lines = rule_lines(&text);
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for (gi, g) in raw.groups.into_iter().enumerate() {
        let group_line = text
            .lines()
            .position(|l| {
                l.trim_start().trim_start_matches("- ").trim_start() == format!("name: {}", g.name)
                    || l.contains(&format!("name: \"{}\"", g.name))
            })
            .map_or(0, |i| i + 1);
        if g.name.is_empty() {
            errors.push(err(group_line, "group name must not be empty".into()));
        }
        if !names.insert(g.name.clone()) {
            errors.push(err(
                group_line,
                format!("{:?}: repeated group name", g.name),
            ));
        }
        let interval_ms = match &g.interval {
            None => default_interval_ms,
            Some(i) => match parse_duration(i) {
                Some(ms) if ms > 0 => ms,
                _ => {
                    errors.push(err(
                        group_line,
                        format!("group {:?}: invalid interval {i:?}", g.name),
                    ));
                    default_interval_ms
                }
            },
        };
        let mut rules = Vec::new();
        for (ri, r) in g.rules.into_iter().enumerate() {
            let line = lines
                .get(gi)
                .and_then(|l| l.get(ri))
                .copied()
                .unwrap_or(group_line);
            match check_rule(r, line) {
                Ok(rule) => rules.push(rule),
                Err(reasons) => errors.extend(reasons.into_iter().map(|r| err(line, r))),
            }
        }
        groups.push(Group {
            name: g.name,
            file: path.to_path_buf(),
            interval_ms,
            limit: g.limit.unwrap_or(0),
            rules,
        });
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn check_rule(r: RawRule, line: usize) -> Result<Rule, Vec<String>> {
    let mut reasons = Vec::new();
    let which = r
        .alert
        .as_deref()
        .or(r.record.as_deref())
        .unwrap_or("?")
        .to_string();
    if let Err(e) = crate::promql::check(&r.expr) {
        reasons.push(format!("{which}: could not parse expression: {e}"));
    }
    let mut labels = BTreeMap::new();
    for (k, v) in &r.labels {
        if !valid_label_name(k) {
            reasons.push(format!("{which}: invalid label name: {k}"));
        }
        match Template::parse(v) {
            Ok(t) => {
                labels.insert(k.clone(), t);
            }
            Err(e) => reasons.push(format!("{which}: label {k}: {e}")),
        }
    }
    let duration = |name: &str, v: &Option<String>, reasons: &mut Vec<String>| match v {
        None => 0,
        Some(s) => parse_duration(s).unwrap_or_else(|| {
            reasons.push(format!("{which}: invalid {name} duration {s:?}"));
            0
        }),
    };
    let kind = match (&r.alert, &r.record) {
        (Some(_), Some(_)) => {
            reasons.push("only one of 'record' and 'alert' must be set".into());
            None
        }
        (None, None) => {
            reasons.push("one of 'record' or 'alert' must be set".into());
            None
        }
        (None, Some(record)) => {
            if !valid_metric_name(record) {
                reasons.push(format!("invalid recording rule name: {record}"));
            }
            if r.for_.is_some() || r.keep_firing_for.is_some() || !r.annotations.is_empty() {
                reasons.push(format!("{record}: invalid field 'for', 'keep_firing_for' or 'annotations' in recording rule"));
            }
            Some(RuleKind::Record(record.clone()))
        }
        (Some(alert), None) => {
            if !valid_label_name(&alert.replace(':', "_")) || alert.is_empty() {
                reasons.push(format!("invalid alert name: {alert}"));
            }
            let for_ms = duration("for", &r.for_, &mut reasons);
            let keep_firing_for_ms = duration("keep_firing_for", &r.keep_firing_for, &mut reasons);
            let mut annotations = BTreeMap::new();
            for (k, v) in &r.annotations {
                if !valid_label_name(k) {
                    reasons.push(format!("{alert}: invalid annotation name: {k}"));
                }
                match Template::parse(v) {
                    Ok(t) => {
                        annotations.insert(k.clone(), t);
                    }
                    Err(e) => reasons.push(format!("{alert}: annotation {k}: {e}")),
                }
            }
            Some(RuleKind::Alert {
                name: alert.clone(),
                for_ms,
                keep_firing_for_ms,
                annotations,
            })
        }
    };
    match kind {
        Some(kind) if reasons.is_empty() => Ok(Rule {
            kind,
            expr: r.expr,
            labels,
            line,
        }),
        _ => Err(reasons),
    }
}

/// Loads every file, collecting every problem of every file.
pub fn load_all(paths: &[PathBuf], default_interval_ms: i64) -> Result<Vec<Group>, Vec<RuleError>> {
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match load(p, default_interval_ms) {
            Ok(g) => groups.extend(g),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

/// Decides whether a file name in a directory is a rule file.
type NameFilter = Box<dyn Fn(&str) -> bool>;

/// The rule files named by `patterns`: files as given, a directory's `*.yml` and `*.yaml`, and
/// a `*` in the file-name part matched against the directory's entries. Sorted per pattern.
pub fn expand(patterns: &[PathBuf]) -> Result<Vec<PathBuf>, RuleError> {
    let mut out = Vec::new();
    for p in patterns {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (dir, matches): (PathBuf, NameFilter) = if p.is_dir() {
            (
                p.clone(),
                Box::new(|n: &str| n.ends_with(".yml") || n.ends_with(".yaml")),
            )
        } else if let Some((prefix, suffix)) = name.split_once('*') {
            let (prefix, suffix) = (prefix.to_string(), suffix.to_string());
            (
                p.parent().map(Path::to_path_buf).unwrap_or_default(),
                Box::new(move |n: &str| n.starts_with(&prefix) && n.ends_with(&suffix)),
            )
        } else {
            out.push(p.clone());
            continue;
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| RuleError {
            file: dir.display().to_string(),
            line: 0,
            reason: e.to_string(),
        })?;
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|f| f.is_file() && f.file_name().is_some_and(|n| matches(&n.to_string_lossy())))
            .collect();
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rules.yml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn a_valid_file_loads() {
        let (_d, p) = write(
            "groups:\n  - name: g\n    interval: 30s\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n      - alert: Down\n        expr: up == 0\n        for: 2m\n        keep_firing_for: 1m\n        labels:\n          severity: critical\n        annotations:\n          summary: \"{{ $labels.host }} is down ({{ $value }})\"\n",
        );
        let groups = load(&p, 60_000).unwrap();
        assert_eq!(groups[0].interval_ms, 30_000);
        assert_eq!(groups[0].rules.len(), 2);
        assert_eq!(groups[0].rules[1].line, 7);
        match &groups[0].rules[1].kind {
            RuleKind::Alert {
                for_ms,
                keep_firing_for_ms,
                ..
            } => {
                assert_eq!((*for_ms, *keep_firing_for_ms), (120_000, 60_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let (_d, p) = write(
            "groups:\n  - name: g\n    rules:\n      - alert: Ok\n        expr: up == 0\n      - alert: Bad\n        expr: sum(\n        for: soon\n",
        );
        let errors = load(&p, 60_000).unwrap_err();
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.contains("rules.yml:6:") && e.contains("could not parse expression")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.contains("rules.yml:6:") && e.contains("invalid for duration")),
            "{text:?}"
        );
        let (_d, p) =
            write("groups:\n  - name: g\n    rules:\n      - alert: X\n        exp: up\n");
        let errors = load(&p, 60_000).unwrap_err();
        assert!(
            errors[0].to_string().contains("unknown field `exp`"),
            "{errors:?}"
        );
        assert!(errors[0].line > 0);
    }
}
