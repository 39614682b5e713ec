//! Dashboards defined in configuration: one TOML file per dashboard (panels of PromQL queries)
//! in `[dashboards] dir`, or the examples shipped in `configs/dashboards/`, compiled in, when no
//! directory is set. A file that is invalid is refused with its path and the key at fault, and
//! counted (`fleetwatch_dashboard_errors_total`); the other files still load. Reloaded on SIGHUP.

use crate::metrics::Metrics;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Panel types the dashboard draws.
pub const PANEL_TYPES: [&str; 6] = ["line", "area", "bar", "stat", "table", "gauge"];

/// Units a panel's values may have: `percent` is a 0..1 ratio shown as %, `percent100` is
/// already 0..100.
pub const UNITS: [&str; 7] = [
    "short",
    "percent",
    "percent100",
    "bytes",
    "bytes/s",
    "seconds",
    "ops/s",
];

/// The example dashboards of `configs/dashboards/`, compiled in: what the aggregator serves
/// when `[dashboards] dir` is not set.
pub const BUILTIN: [(&str, &str); 5] = [
    (
        "fleet-hosts.toml",
        include_str!("../../configs/dashboards/fleet-hosts.toml"),
    ),
    (
        "job-queues.toml",
        include_str!("../../configs/dashboards/job-queues.toml"),
    ),
    (
        "workers.toml",
        include_str!("../../configs/dashboards/workers.toml"),
    ),
    (
        "http-service.toml",
        include_str!("../../configs/dashboards/http-service.toml"),
    ),
    (
        "message-streaming.toml",
        include_str!("../../configs/dashboards/message-streaming.toml"),
    ),
];

/// A dashboard (also the API's JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dashboard {
    /// Its id in URLs: the file's stem unless the file sets one.
    pub id: String,
    /// Its title.
    pub title: String,
    /// What it shows.
    pub description: String,
    /// Its panels, in the file's order.
    pub panels: Vec<Panel>,
}

/// A panel: one chart, stat, gauge or table of PromQL queries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Panel {
    /// Its title.
    pub title: String,
    /// One of [`PANEL_TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// One of [`UNITS`].
    pub unit: String,
    /// Columns of a 12-column grid, 1 to 12.
    pub width: u8,
    /// Lower bound of the axis or gauge, if fixed.
    pub min: Option<f64>,
    /// Upper bound of the axis or gauge, if fixed.
    pub max: Option<f64>,
    /// Values from which the panel takes a color, ascending.
    pub thresholds: Vec<Threshold>,
    /// Its queries.
    pub queries: Vec<PanelQuery>,
}

/// A threshold: from `value` up, the panel shows `color`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    /// Where it starts.
    pub value: f64,
    /// A color name (`red`) or `#rgb` / `#rrggbb`.
    pub color: String,
}

/// One PromQL query of a panel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanelQuery {
    /// The expression.
    pub expr: String,
    /// The series' name in the legend; `{{label}}` is replaced by the label's value.
    pub legend: String,
}

/// A refused file (also the API's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[error("{file}: {error}")]
pub struct DashboardError {
    /// The file (or directory) at fault.
    pub file: String,
    /// What is wrong, naming the key.
    pub error: String,
}

/// The dashboards of one load, and the files refused.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DashboardSet {
    /// Valid dashboards, in file-name order (the shipped order for the compiled-in ones).
    pub dashboards: Vec<Dashboard>,
    /// Refused files.
    pub errors: Vec<DashboardError>,
}

impl DashboardSet {
    /// The dashboard with `id`.
    pub fn get(&self, id: &str) -> Option<&Dashboard> {
        self.dashboards.iter().find(|d| d.id == id)
    }

    fn add(&mut self, file: String, stem: &str, text: &str) {
        let result = parse(stem, text).and_then(|d| match self.get(&d.id) {
            Some(_) => Err(format!(
                "id: {:?} is already the id of another dashboard",
                d.id
            )),
            None => Ok(d),
        });
        match result {
            Ok(d) => self.dashboards.push(d),
            Err(error) => self.errors.push(DashboardError { file, error }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DashboardFile {
    id: Option<String>,
    title: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    panels: Vec<PanelFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PanelFile {
    title: String,
    #[serde(rename = "type", default = "line")]
    kind: String,
    #[serde(default = "short")]
    unit: String,
    width: Option<i64>,
    min: Option<f64>,
    max: Option<f64>,
    #[serde(default)]
    thresholds: Vec<ThresholdFile>,
    #[serde(default)]
    queries: Vec<QueryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThresholdFile {
    value: f64,
    color: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryFile {
    expr: String,
    #[serde(default)]
    legend: String,
}

fn line() -> String {
    "line".into()
}

fn short() -> String {
    "short".into()
}

/// The line of byte offset `at` in `text`, from 1.
fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).unwrap_or(text).matches('\n').count() + 1
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_color(s: &str) -> bool {
    match s.strip_prefix('#') {
        Some(hex) => matches!(hex.len(), 3 | 6) && hex.chars().all(|c| c.is_ascii_hexdigit()),
        None => !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphabetic()),
    }
}

/// Parses and checks one dashboard file's text; `stem` is the id when the file sets none. The
/// error names the key (`panels[2].unit: ...`) or the line of a TOML error.
pub fn parse(stem: &str, text: &str) -> Result<Dashboard, String> {
    let file: DashboardFile = toml::from_str(text).map_err(|e| match e.span() {
        Some(span) => format!("line {}: {}", line_of(text, span.start), e.message()),
        None => e.message().to_string(),
    })?;
    let id = file.id.unwrap_or_else(|| stem.to_string());
    if !is_id(&id) {
        return Err(format!(
            "id: {id:?} must be 1 to 64 letters, digits, '-' or '_' (it goes in URLs)"
        ));
    }
    if file.panels.is_empty() {
        return Err("panels: a dashboard needs at least one [[panels]] table".into());
    }
    let mut panels = Vec::with_capacity(file.panels.len());
    for (i, p) in file.panels.into_iter().enumerate() {
        let key = |k: &str| format!("panels[{i}].{k}");
        if p.title.trim().is_empty() {
            return Err(format!("{}: must not be empty", key("title")));
        }
        if !PANEL_TYPES.contains(&p.kind.as_str()) {
            return Err(format!(
                "{}: unknown panel type {:?} (one of {})",
                key("type"),
                p.kind,
                PANEL_TYPES.join(", ")
            ));
        }
        if !UNITS.contains(&p.unit.as_str()) {
            return Err(format!(
                "{}: unknown unit {:?} (one of {})",
                key("unit"),
                p.unit,
                UNITS.join(", ")
            ));
        }
        let width = p.width.unwrap_or(6);
        if !(1..=12).contains(&width) {
            return Err(format!(
                "{}: {width} is not a width from 1 to 12 columns",
                key("width")
            ));
        }
        for (k, v) in [("min", p.min), ("max", p.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{}: must be a finite number", key(k)));
            }
        }
        if let (Some(min), Some(max)) = (p.min, p.max) {
            if min >= max {
                return Err(format!("{}: {max} is not above min {min}", key("max")));
            }
        }
        let mut thresholds = Vec::with_capacity(p.thresholds.len());
        for (j, t) in p.thresholds.into_iter().enumerate() {
            if !t.value.is_finite() {
                return Err(format!(
                    "{}: must be a finite number",
                    key(&format!("thresholds[{j}].value"))
                ));
            }
            if !is_color(&t.color) {
                return Err(format!(
                    "{}: {:?} is not a color name or #rgb / #rrggbb",
                    key(&format!("thresholds[{j}].color")),
                    t.color
                ));
            }
            if thresholds
                .last()
                .is_some_and(|prev: &Threshold| prev.value >= t.value)
            {
                return Err(format!(
                    "{}: thresholds must be in ascending order of value",
                    key(&format!("thresholds[{j}].value"))
                ));
            }
            thresholds.push(Threshold {
                value: t.value,
                color: t.color,
            });
        }
        if p.queries.is_empty() {
            return Err(format!(
                "{}: a panel needs at least one [[panels.queries]] table",
                key("queries")
            ));
        }
        let mut queries = Vec::with_capacity(p.queries.len());
        for (j, q) in p.queries.into_iter().enumerate() {
            let qkey = key(&format!("queries[{j}].expr"));
            if q.expr.trim().is_empty() {
                return Err(format!("{qkey}: must not be empty"));
            }
            promql_parser::parser::parse(&q.expr)
                .map_err(|e| format!("{qkey}: PromQL does not parse: {e}"))?;
            queries.push(PanelQuery {
                expr: q.expr,
                legend: q.legend,
            });
        }
        panels.push(Panel {
            title: p.title,
            kind: p.kind,
            unit: p.unit,
            width: width as u8,
            min: p.min,
            max: p.max,
            thresholds,
            queries,
        });
    }
    Ok(Dashboard {
        title: file
            .title
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| id.clone()),
        id,
        description: file.description,
        panels,
    })
}

/// Loads every `*.toml` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> DashboardSet {
    let mut set = DashboardSet::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            set.errors.push(DashboardError {
                file: dir.display().to_string(),
                error: format!("dashboards.dir: cannot read the directory: {e}"),
            });
            return set;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    for path in files {
        let name = path.display().to_string();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match std::fs::read_to_string(&path) {
            Ok(text) => set.add(name, &stem, &text),
            Err(e) => set.errors.push(DashboardError {
                file: name,
                error: format!("cannot read the file: {e}"),
            }),
        }
    }
    set
}

/// The compiled-in examples.
pub fn load_builtin() -> DashboardSet {
    let mut set = DashboardSet::default();
    for (name, text) in BUILTIN {
        let stem = name.trim_end_matches(".toml");
        set.add(format!("(built in) configs/dashboards/{name}"), stem, text);
    }
    set
}

/// Loads from `dir`, or the compiled-in examples when it is empty.
pub fn load(dir: &Path) -> DashboardSet {
    if dir.as_os_str().is_empty() {
        load_builtin()
    } else {
        load_dir(dir)
    }
}

/// The dashboards the aggregator serves now; [`Dashboards::reload`] replaces them whole.
pub struct Dashboards {
    dir: PathBuf,
    current: RwLock<Arc<DashboardSet>>,
    metrics: Metrics,
}

impl Dashboards {
    /// Loads the dashboards of `dir` (the compiled-in examples when empty), logging and counting
    /// refused files.
    pub fn open(dir: PathBuf, metrics: Metrics) -> Self {
        let d = Self {
            dir,
            current: RwLock::new(Arc::default()),
            metrics,
        };
        d.reload();
        d
    }

    /// Reads the files again; what loads replaces what was served. Refused files are logged,
    /// counted and listed.
    pub fn reload(&self) -> Arc<DashboardSet> {
        let set = Arc::new(load(&self.dir));
        for e in &set.errors {
            self.metrics.dashboard_errors.inc();
            tracing::warn!(file = %e.file, error = %e.error, "dashboard file refused");
        }
        self.metrics.dashboards.set(set.dashboards.len() as i64);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = set.clone();
        set
    }

    /// The dashboards now.
    pub fn current(&self) -> Arc<DashboardSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r##"
title = "Queues"
description = "Per queue"
[[panels]]
title = "Pending"
type = "stat"
unit = "short"
width = 3
thresholds = [{ value = 0, color = "green" }, { value = 100, color = "#e00" }]
[[panels.queries]]
expr = 'sum by (queue) (jobqueue_jobs{state="pending"})'
legend = "{{queue}}"
[[panels]]
title = "Rate"
[[panels.queries]]
expr = "rate(x_total[5m])"
"##;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let d = parse("queues", GOOD).unwrap();
        assert_eq!(d.id, "queues");
        assert_eq!(d.title, "Queues");
        assert_eq!(d.panels.len(), 2);
        assert_eq!(d.panels[0].width, 3);
        assert_eq!(d.panels[0].thresholds[1].color, "#e00");
        assert_eq!(d.panels[1].kind, "line");
        assert_eq!(d.panels[1].unit, "short");
        assert_eq!(d.panels[1].width, 6);
        assert_eq!(d.panels[1].queries[0].legend, "");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["panels"][0]["type"], "stat");
        assert!(json["panels"][1]["min"].is_null());
    }

    #[test]
    fn each_kind_of_mistake_names_its_key() {
        let cases = [
            (
                GOOD.replace("type = \"stat\"", "type = \"pie\""),
                "panels[0].type: unknown panel type \"pie\"",
            ),
            (
                GOOD.replace("unit = \"short\"", "unit = \"percentage\""),
                "panels[0].unit: unknown unit \"percentage\"",
            ),
            (
                GOOD.replace("width = 3", "width = 13"),
                "panels[0].width: 13 is not a width",
            ),
            (
                GOOD.replace("width = 3", "width = 0"),
                "panels[0].width: 0 is not a width",
            ),
            (
                GOOD.replace("expr = \"rate(x_total[5m])\"", "expr = \" \""),
                "panels[1].queries[0].expr: must not be empty",
            ),
            (
                GOOD.replace(
                    "expr = \"rate(x_total[5m])\"",
                    "expr = \"rate(x_total[5m]\"",
                ),
                "panels[1].queries[0].expr: PromQL does not parse: ",
            ),
            (
                GOOD.replace("width = 3", "widht = 3"),
                "unknown field `widht`",
            ),
            (
                GOOD.replace(
                    "legend = \"{{queue}}\"",
                    "legend = \"{{queue}}\"\ncolour = \"red\"",
                ),
                "unknown field `colour`",
            ),
            (
                GOOD.replace("description = ", "descr = "),
                "line 3: unknown field `descr`",
            ),
            (
                GOOD.replace("color = \"green\"", "color = \"green;x\""),
                "panels[0].thresholds[0].color",
            ),
            (
                GOOD.replace("value = 100", "value = -1"),
                "panels[0].thresholds[1].value: thresholds must be in ascending order",
            ),
            (
                "title = \"empty\"\n".to_string(),
                "panels: a dashboard needs at least one",
            ),
            (
                GOOD.replace("title = \"Queues\"", "id = \"a b\""),
                "id: \"a b\" must be",
            ),
        ];
        for (text, want) in cases {
            let e = parse("queues", &text).unwrap_err();
            assert!(e.contains(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn a_directory_loads_the_good_files_and_lists_the_refused_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            GOOD.replace("width = 3", "width = 20"),
        )
        .unwrap();
        // the same id twice: the second file (by name) is refused
        std::fs::write(
            dir.path().join("c.toml"),
            format!("id = \"a\"\n{}", GOOD.replace("title = \"Queues\"\n", "")),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a dashboard").unwrap();
        let set = load_dir(dir.path());
        assert_eq!(set.dashboards.len(), 1);
        assert_eq!(set.dashboards[0].id, "a");
        assert_eq!(set.errors.len(), 2, "{:?}", set.errors);
        assert!(set.errors[0].file.ends_with("b.toml"));
        assert!(set.errors[0].error.contains("panels[0].width"));
        assert!(set.errors[1].file.ends_with("c.toml"));
        assert!(set.errors[1].error.contains("already the id"));
        let missing = load_dir(&dir.path().join("nowhere"));
        assert!(missing.errors[0]
            .error
            .contains("cannot read the directory"));
    }

    #[test]
    fn reload_replaces_the_dashboards_and_counts_refusals() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.toml"), GOOD).unwrap();
        let metrics = Metrics::new();
        let d = Dashboards::open(dir.path().to_path_buf(), metrics.clone());
        assert_eq!(d.current().dashboards.len(), 1);
        std::fs::write(
            dir.path().join("b.toml"),
            GOOD.replace("unit = \"short\"", "unit = \"x\""),
        )
        .unwrap();
        std::fs::write(dir.path().join("c.toml"), GOOD).unwrap();
        let set = d.reload();
        assert_eq!(set.dashboards.len(), 2);
        assert_eq!(d.current().errors.len(), 1);
        assert_eq!(metrics.dashboard_errors.get(), 1);
        assert_eq!(metrics.dashboards.get(), 2);
    }

    #[test]
    fn every_shipped_file_is_compiled_in_and_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dashboards");
        let shipped = load_dir(&dir);
        assert!(shipped.errors.is_empty(), "{:?}", shipped.errors);
        let builtin = load_builtin();
        assert!(builtin.errors.is_empty(), "{:?}", builtin.errors);
        let mut a: Vec<&str> = shipped.dashboards.iter().map(|d| d.id.as_str()).collect();
        let mut b: Vec<&str> = builtin.dashboards.iter().map(|d| d.id.as_str()).collect();
        a.sort_unstable();
        b.sort_unstable();
        assert_eq!(a, b, "every file of configs/dashboards is in BUILTIN");
        assert_eq!(load(Path::new("")).dashboards.len(), BUILTIN.len());
    }
}
