//! The Go-template subset Prometheus rule labels and annotations use: `{{ $labels.host }}`,
//! `{{ $value }}`, `{{ .Labels.x }}`, `{{ .Value }}`, pipelines (`{{ $value | humanize }}`) and
//! the functions `humanize`, `humanize1024`, `humanizePercentage`, `humanizeDuration`,
//! `printf`, `toUpper`, `toLower`. Anything else is refused when the rule file loads.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Arg {
    Label(String),
    Labels,
    Value,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, PartialEq)]
struct Command {
    func: Option<String>,
    args: Vec<Arg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Vec<Command>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

const FUNCS: [&str; 7] = [
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "printf",
    "toUpper",
    "toLower",
];

fn tokens(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut lit = String::from("\"");
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => lit.push('\n'),
                        Some('t') => lit.push('\t'),
                        Some(x) => lit.push(x),
                        None => return Err("unterminated string".into()),
                    },
                    Some('"') => break,
                    Some(x) => lit.push(x),
                    None => return Err("unterminated string".into()),
                }
            }
            out.push(lit);
        } else if c == '|' {
            chars.next();
            out.push("|".into());
        } else {
            let mut word = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() || x == '|' || x == '"' {
                    break;
                }
                word.push(x);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

fn arg(tok: &str) -> Result<Arg, String> {
    if let Some(lit) = tok.strip_prefix('"') {
        return Ok(Arg::Str(lit.to_string()));
    }
    if tok == "$value" || tok == ".Value" {
        return Ok(Arg::Value);
    }
    if tok == "$labels" || tok == ".Labels" {
        return Ok(Arg::Labels);
    }
    for prefix in ["$labels.", ".Labels."] {
        if let Some(name) = tok.strip_prefix(prefix) {
            return Ok(Arg::Label(name.to_string()));
        }
    }
    if let Some(_rest) = tok.strip_prefix("$externalLabels") {
        return Ok(Arg::Str(String::new()));
    }
    tok.parse::<f64>()
        .map(Arg::Num)
        .map_err(|_| format!("unsupported template term {tok:?}"))
}

fn parse_action(inner: &str) -> Result<Vec<Command>, String> {
    let toks = tokens(inner)?;
    let mut commands = Vec::new();
    for part in toks.split(|t| t == "|") {
        let Some((first, rest)) = part.split_first() else {
            return Err("empty pipeline stage".into());
        };
        if FUNCS.contains(&first.as_str()) {
            commands.push(Command {
                func: Some(first.clone()),
                args: rest.iter().map(|t| arg(t)).collect::<Result<_, _>>()?,
            });
        } else {
            if !rest.is_empty() {
                return Err(format!("unsupported template function {first:?}"));
            }
            commands.push(Command {
                func: None,
                args: vec![arg(first)?],
            });
        }
    }
    Ok(commands)
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let mut before = &rest[..start];
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed action in {text:?}"))?;
            let mut inner = &after[..end];
            if let Some(i) = inner.strip_prefix('-') {
                before = before.trim_end();
                inner = i;
            }
            let mut trim_next = false;
            if let Some(i) = inner.strip_suffix('-') {
                inner = i;
                trim_next = true;
            }
            if !before.is_empty() {
                parts.push(Part::Text(before.to_string()));
            }
            let inner = inner.trim();
            if !inner.starts_with("/*") {
                parts.push(Part::Action(
                    parse_action(inner).map_err(|e| format!("{e} in {text:?}"))?,
                ));
            }
            rest = &after[end + 2..];
            if trim_next {
                rest = rest.trim_start();
            }
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template {
            parts,
            source: text.to_string(),
        })
    }

    /// The text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders with an alert's labels and value.
    pub fn render(&self, labels: &BTreeMap<String, String>, value: f64) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Action(cmds) => {
                    let mut prev: Option<Val> = None;
                    for c in cmds {
                        let mut args: Vec<Val> =
                            c.args.iter().map(|a| resolve(a, labels, value)).collect();
                        if let Some(p) = prev.take() {
                            args.push(p);
                        }
                        prev = Some(match &c.func {
                            None => args.pop().unwrap_or(Val::S(String::new())),
                            Some(f) => call(f, args),
                        });
                    }
                    if let Some(v) = prev {
                        out.push_str(&v.text());
                    }
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
enum Val {
    S(String),
    F(f64),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::S(s) => s.clone(),
            Val::F(f) => go_float(*f),
        }
    }

    fn num(&self) -> f64 {
        match self {
            Val::F(f) => *f,
            Val::S(s) => s.trim().parse().unwrap_or(f64::NAN),
        }
    }
}

fn resolve(a: &Arg, labels: &BTreeMap<String, String>, value: f64) -> Val {
    match a {
        Arg::Label(n) => Val::S(labels.get(n).cloned().unwrap_or_default()),
        Arg::Labels => Val::S(
            labels
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Arg::Value => Val::F(value),
        Arg::Str(s) => Val::S(s.clone()),
        Arg::Num(n) => Val::F(*n),
    }
}

/// Go's `%v` of a float64 (strconv 'g' with the shortest precision, as Prometheus prints
/// `$value`).
fn go_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let exp = if v == 0.0 {
        0
    } else {
        v.abs().log10().floor() as i32
    };
    // Go's %v: shortest digits, exponent form below 1e-4 or from 1e6 on
    if !(-4..6).contains(&exp) {
        let s = format!("{v:e}");
        // Rust: 1.5e21, Go: 1.5e+21
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e:0>2}"),
            Some((m, e)) => format!("{m}e-{:0>2}", &e[1..]),
            None => s,
        }
    } else {
        format!("{v}")
    }
}

/// Go's `%.{p}g`.
fn fmt_g(v: f64, p: usize) -> String {
    if v.is_nan() || v.is_infinite() {
        return go_float(v);
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    let p = p.max(1);
    let s = if exp < -4 || exp >= p as i32 {
        let s = format!("{:.*e}", p - 1, v);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = if m.contains('.') {
            m.trim_end_matches('0').trim_end_matches('.')
        } else {
            m
        };
        let e: i32 = e.parse().unwrap_or(0);
        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    s
}

fn humanize(v: f64, base: f64, big: &[&str], small: &[&str]) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    let mut x = v;
    if x.abs() >= 1.0 {
        let mut prefix = "";
        for p in big {
            if x.abs() < base {
                break;
            }
            prefix = p;
            x /= base;
        }
        format!("{}{prefix}", fmt_g(x, 4))
    } else {
        let mut prefix = "";
        for p in small {
            if x.abs() >= 1.0 {
                break;
            }
            prefix = p;
            x *= base;
        }
        format!("{}{prefix}", fmt_g(x, 4))
    }
}

fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    if v == 0.0 {
        return "0s".into();
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let mut secs = v.abs() as i64;
        let days = secs / 86_400;
        secs %= 86_400;
        let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
        return if days > 0 {
            format!("{sign}{days}d {h}h {m}m {s}s")
        } else if h > 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m > 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", fmt_g(v.abs(), 4))
        };
    }
    let mut x = v;
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if x.abs() >= 1.0 {
            break;
        }
        prefix = p;
        x *= 1000.0;
    }
    format!("{}{prefix}s", fmt_g(x, 4))
}

fn printf(args: Vec<Val>) -> String {
    let Some((fmt, rest)) = args.split_first() else {
        return String::new();
    };
    let fmt = fmt.text();
    let mut out = String::new();
    let mut vals = rest.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = String::new();
        while let Some(&x) = chars.peek() {
            spec.push(x);
            chars.next();
            if x.is_ascii_alphabetic() || x == '%' {
                break;
            }
        }
        let verb = spec.chars().last().unwrap_or('v');
        let precision: Option<usize> = spec
            .split_once('.')
            .and_then(|(_, p)| p.trim_end_matches(verb).parse().ok());
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(v) = vals.next() else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        out.push_str(&match verb {
            'd' => format!("{}", v.num() as i64),
            'f' => format!("{:.*}", precision.unwrap_or(6), v.num()),
            'e' => format!("{:.*e}", precision.unwrap_or(6), v.num()),
            'g' => match precision {
                Some(p) => fmt_g(v.num(), p),
                None => go_float(v.num()),
            },
            'q' => format!("{:?}", v.text()),
            _ => v.text(),
        });
    }
    out
}

fn call(f: &str, args: Vec<Val>) -> Val {
    let n = || args.last().map_or(f64::NAN, Val::num);
    Val::S(match f {
        "humanize" => humanize(
            n(),
            1000.0,
            &["k", "M", "G", "T", "P", "E", "Z", "Y"],
            &["m", "u", "n", "p", "f", "a", "z", "y"],
        ),
        "humanize1024" => humanize(
            n(),
            1024.0,
            &["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"],
            &[],
        ),
        "humanizePercentage" => format!("{}%", fmt_g(n() * 100.0, 4)),
        "humanizeDuration" => humanize_duration(n()),
        "printf" => printf(args),
        "toUpper" => args
            .last()
            .map(Val::text)
            .unwrap_or_default()
            .to_uppercase(),
        "toLower" => args
            .last()
            .map(Val::text)
            .unwrap_or_default()
            .to_lowercase(),
        _ => String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, value: f64) -> String {
        let labels: BTreeMap<String, String> = [
            ("host".to_string(), "web-1".to_string()),
            ("job".into(), "api".into()),
        ]
        .into();
        Template::parse(t).unwrap().render(&labels, value)
    }

    #[test]
    fn prometheus_examples_render_as_prometheus_does() {
        assert_eq!(render("{{ $labels.host }} is down", 0.0), "web-1 is down");
        assert_eq!(render("{{ .Labels.job }}: {{ .Value }}", 0.5), "api: 0.5");
        assert_eq!(render("{{ $value }}", 1234567.0), "1.234567e+06");
        assert_eq!(render("{{ humanize $value }}", 1234567.0), "1.235M");
        assert_eq!(render("{{ $value | humanize }}", 0.0012), "1.2m");
        assert_eq!(render("{{ humanize1024 $value }}", 1048576.0), "1Mi");
        assert_eq!(
            render("{{ $value | humanizePercentage }}", 0.9234),
            "92.34%"
        );
        assert_eq!(
            render("{{ humanizeDuration $value }}", 93784.0),
            "1d 2h 3m 4s"
        );
        assert_eq!(render("{{ printf \"%.1f\" $value }}%", 91.26), "91.3%");
        assert_eq!(render("{{- $labels.job -}} x", 0.0), "apix");
        assert!(Template::parse("{{ range $labels }}").is_err());
        assert!(Template::parse("{{ $labels.host ").is_err());
    }
}
