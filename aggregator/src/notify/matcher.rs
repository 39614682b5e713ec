//! Label matchers as Alertmanager and PromQL write them: `name="v"`, `name!="v"`,
//! `name=~"re"`, `name!~"re"` (regexes fully anchored; a missing label matches as "").

use promql_parser::label::Matcher;
use promql_parser::parser::{self, Expr};
use std::collections::BTreeMap;

/// Parses one matcher.
pub fn parse(text: &str) -> Result<Matcher, String> {
    // a guard matcher lets a lone negative matcher (`a!="x"`) through PromQL's rule that a
    // selector needs one non-empty matcher
    match parser::parse(&format!("{{__guard__=\"1\",{text}}}")) {
        Ok(Expr::VectorSelector(vs)) if vs.matchers.matchers.len() == 2 && vs.name.is_none() => {
            Ok(vs.matchers.matchers[1].clone())
        }
        Ok(_) => Err(format!("{text:?} is not one label matcher")),
        Err(e) => Err(format!("{text:?} is not a label matcher: {e}")),
    }
}

/// Parses several matchers.
pub fn parse_all(texts: &[String]) -> Result<Vec<Matcher>, String> {
    texts.iter().map(|t| parse(t)).collect()
}

/// Whether `labels` satisfy every matcher.
pub fn matches(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers
        .iter()
        .all(|m| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_kinds() {
        let l: BTreeMap<String, String> = [("host".to_string(), "db-1".to_string())].into();
        assert!(matches(&[parse("host=\"db-1\"").unwrap()], &l));
        assert!(matches(&[parse("host=~\"db-.*\"").unwrap()], &l));
        assert!(!matches(&[parse("host!~\"db-.*\"").unwrap()], &l));
        assert!(matches(&[parse("severity!=\"critical\"").unwrap()], &l));
        assert!(matches(&[parse("alertname!=\"HostDown\"").unwrap()], &l));
        assert!(parse("host").is_err());
        assert!(parse("a=\"1\",b=\"2\"").is_err());
    }
}
