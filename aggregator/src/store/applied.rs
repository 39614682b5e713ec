//! Which batches each agent has had applied: the deduplication that makes delivery exactly once
//! in storage. Per agent, every sequence number up to a watermark is applied, plus a sparse set
//! above it (live-first delivery applies batches out of order).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// Applied sequence numbers of one agent.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSeqs {
    /// Every sequence number `<= low` is applied (or was never issued: sequence numbers start at 1).
    pub low: u64,
    /// Applied sequence numbers above `low + 1`.
    pub above: BTreeSet<u64>,
}

impl AppliedSeqs {
    /// Whether `seq` was applied.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.low || self.above.contains(&seq)
    }

    /// Records `seq` as applied; false if it already was.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.contains(seq) {
            return false;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
        true
    }

    /// Forgets gaps: the agent dropped those batches (buffer full) and will never send them.
    /// Keeps the set small; called with the oldest sequence number an agent can still send.
    pub fn advance_to(&mut self, floor: u64) {
        if floor > self.low + 1 {
            self.low = floor - 1;
            self.above = self.above.split_off(&floor);
            while self.above.remove(&(self.low + 1)) {
                self.low += 1;
            }
        }
    }
}

/// Applied sequence numbers of every agent.
pub type AppliedMap = HashMap<String, AppliedSeqs>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_inserts_compact_into_the_watermark() {
        let mut a = AppliedSeqs::default();
        assert!(a.insert(3));
        assert!(a.insert(1));
        assert!(!a.insert(3));
        assert_eq!(a.low, 1);
        assert!(a.insert(2));
        assert_eq!(a.low, 3);
        assert!(a.above.is_empty());
        assert!(a.contains(2) && !a.contains(4));
    }

    #[test]
    fn advance_skips_dropped_batches() {
        let mut a = AppliedSeqs::default();
        a.insert(10);
        a.insert(12);
        a.advance_to(10);
        assert_eq!(a.low, 10);
        assert_eq!(a.above.iter().copied().collect::<Vec<_>>(), vec![12]);
    }
}
