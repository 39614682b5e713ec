//! The time-series storage engine under [`crate::store`]: Gorilla-compressed chunks, the
//! in-memory head with its inverted index, persisted blocks and downsampled rollups.

pub mod block;
pub mod chunk;
pub mod head;
pub mod packed;
pub mod rollup;

use promql_parser::label::{MatchOp, Matcher};
use std::collections::HashMap;

/// Label-pair postings: (name, value) → ascending series ids.
pub type Postings = HashMap<(String, String), Vec<u32>>;

/// The series ids that can match `matchers`: the intersection of the postings of their
/// non-empty equality matchers (empty when one has no list); `None` when there is no such
/// matcher and every series is a candidate.
pub fn candidate_ids(postings: &Postings, matchers: &[Matcher]) -> Option<Vec<u32>> {
    let mut lists: Vec<&Vec<u32>> = Vec::new();
    for m in matchers {
        // an empty value matches series without the label: no posting list for it
        if matches!(m.op, MatchOp::Equal) && !m.value.is_empty() {
            match postings.get(&(m.name.clone(), m.value.clone())) {
                Some(list) => lists.push(list),
                None => return Some(Vec::new()),
            }
        }
    }
    lists.sort_by_key(|l| l.len());
    let (first, rest) = lists.split_first()?;
    Some(
        first
            .iter()
            .copied()
            .filter(|id| rest.iter().all(|l| l.binary_search(id).is_ok()))
            .collect(),
    )
}
