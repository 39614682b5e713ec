//! Path globs for file sources: `*`, `?` and `[...]` within one path component, `**` for any
//! number of directories. Expanded by walking only the directories the pattern can reach.

use regex::Regex;
use std::path::{Path, PathBuf};

/// Deepest directory walk of a `**` component.
const MAX_DEPTH: usize = 16;

/// One compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Pattern(Regex),
    AnyDepth,
}

fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// A regular expression matching what the glob component `pat` matches (`/` never matches).
fn component_regex(pat: &str) -> Result<Regex, regex::Error> {
    let mut re = String::from("^");
    let mut chars = pat.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                let mut class = String::new();
                let mut closed = false;
                if matches!(chars.peek(), Some('!') | Some('^')) {
                    chars.next();
                    class.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        closed = true;
                        break;
                    }
                    if c == '\\' || c == '[' {
                        class.push('\\');
                    }
                    class.push(c);
                }
                if closed {
                    re.push('[');
                    re.push_str(&class);
                    re.push(']');
                } else {
                    re.push_str(&regex::escape(&format!("[{class}")));
                }
            }
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    Regex::new(&re)
}

impl Glob {
    /// Compiles an absolute glob.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let mut parts = Vec::new();
        for comp in pattern.split('/').filter(|c| !c.is_empty()) {
            parts.push(if comp == "**" {
                Part::AnyDepth
            } else if has_magic(comp) {
                Part::Pattern(component_regex(comp).map_err(|e| format!("glob {pattern:?}: {e}"))?)
            } else {
                Part::Literal(comp.to_string())
            });
        }
        Ok(Glob { parts })
    }

    /// The regular files matching, sorted.
    pub fn expand(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(Path::new("/"), &self.parts, 0, &mut out);
        out.sort();
        out.dedup();
        out
    }
}

fn walk(dir: &Path, parts: &[Part], depth: usize, out: &mut Vec<PathBuf>) {
    let Some((first, rest)) = parts.split_first() else {
        if std::fs::metadata(dir).is_ok_and(|m| m.is_file()) {
            out.push(dir.to_path_buf());
        }
        return;
    };
    match first {
        Part::Literal(name) => {
            let p = dir.join(name);
            if rest.is_empty() || p.is_dir() {
                walk(&p, rest, depth, out);
            }
        }
        Part::Pattern(re) => {
            for entry in read_dir_sorted(dir) {
                if let Some(name) = entry.file_name().and_then(|n| n.to_str()) {
                    if re.is_match(name) {
                        walk(&entry, rest, depth, out);
                    }
                }
            }
        }
        Part::AnyDepth => {
            walk(dir, rest, depth, out);
            if depth < MAX_DEPTH {
                for entry in read_dir_sorted(dir) {
                    let is_dir = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.is_dir());
                    if is_dir {
                        walk(&entry, parts, depth + 1, out);
                    }
                }
            }
        }
    }
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// An exclude pattern: with a `/` it matches the whole path, otherwise the file name.
#[derive(Debug, Clone)]
pub struct Exclude {
    whole_path: bool,
    re: Regex,
}

impl Exclude {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<Exclude, String> {
        let whole_path = pattern.contains('/');
        let re = if whole_path {
            // `*` may not cross `/` here either; `**` may.
            let parts: Vec<String> = pattern
                .split('/')
                .map(|c| {
                    if c == "**" {
                        Ok(".*".to_string())
                    } else {
                        component_regex(c).map(|r| {
                            r.as_str()
                                .trim_start_matches('^')
                                .trim_end_matches('$')
                                .to_string()
                        })
                    }
                })
                .collect::<Result<_, _>>()
                .map_err(|e| format!("exclude {pattern:?}: {e}"))?;
            Regex::new(&format!("^{}$", parts.join("/")))
                .map_err(|e| format!("exclude {pattern:?}: {e}"))?
        } else {
            component_regex(pattern).map_err(|e| format!("exclude {pattern:?}: {e}"))?
        };
        Ok(Exclude { whole_path, re })
    }

    /// True when `path` is excluded.
    pub fn matches(&self, path: &Path) -> bool {
        if self.whole_path {
            path.to_str().is_some_and(|p| self.re.is_match(p))
        } else {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| self.re.is_match(n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_expand_to_matching_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in [
            "a.log",
            "b.log",
            "c.txt",
            "sub/d.log",
            "sub/deep/e.log",
            "a.log.1",
        ] {
            let p = d.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        }
        let names = |pat: &str| -> Vec<String> {
            Glob::new(&format!("{}/{pat}", d.display()))
                .unwrap()
                .expand()
                .iter()
                .map(|p| p.strip_prefix(d).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(names("*.log"), ["a.log", "b.log"]);
        assert_eq!(names("a.log*"), ["a.log", "a.log.1"]);
        assert_eq!(names("[ab].log"), ["a.log", "b.log"]);
        assert_eq!(names("[!a].log"), ["b.log"]);
        assert_eq!(names("?.txt"), ["c.txt"]);
        assert_eq!(
            names("**/*.log"),
            ["a.log", "b.log", "sub/d.log", "sub/deep/e.log"]
        );
        assert_eq!(names("c.txt"), ["c.txt"]);
        assert!(names("missing/*.log").is_empty());
        let ex = Exclude::new("*.1").unwrap();
        assert!(ex.matches(&d.join("a.log.1")) && !ex.matches(&d.join("a.log")));
        let ex = Exclude::new("/var/log/**/secret*").unwrap();
        assert!(ex.matches(Path::new("/var/log/x/y/secret.log")));
        assert!(!ex.matches(Path::new("/var/log/x/public.log")));
    }
}
