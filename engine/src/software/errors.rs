//! The record of failed sequence numbers of one channel.

use std::collections::BTreeSet;

/// Failures kept exactly; beyond this many, the oldest are folded into a conservative
/// summary (see [`ErrorLog::contains`]).
const EXACT_CAPACITY: usize = 4096;
/// When folding, failures this far behind the newest one are folded.
const KEEP_WINDOW: u64 = 1 << 16;

/// Failed sequence numbers: exact for recent ones, conservative for old ones, bounded in
/// memory.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    exact: BTreeSet<u64>,
    /// Every failure below this was folded away ...
    folded_below: u64,
    /// ... and the largest of them was this (0: none).
    folded_max: u64,
}

impl ErrorLog {
    pub(crate) fn insert(&mut self, seq: u64) {
        self.exact.insert(seq);
        if self.exact.len() > EXACT_CAPACITY {
            let cutoff = seq.saturating_sub(KEEP_WINDOW);
            let kept = self.exact.split_off(&cutoff);
            if let Some(&max) = self.exact.last() {
                self.folded_max = self.folded_max.max(max);
            }
            self.folded_below = self.folded_below.max(cutoff);
            self.exact = kept;
        }
    }

    /// Whether `seq` failed. For a sequence older than the exact window this may say
    /// `true` for one that succeeded (never the reverse): a caller then redoes a copy that
    /// was fine, which is harmless, whereas trusting a failed one would not be.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.exact.contains(&seq) || (seq < self.folded_below && seq <= self.folded_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_failures_are_exact() {
        let mut log = ErrorLog::default();
        log.insert(3);
        log.insert(7);
        assert!(log.contains(3) && log.contains(7));
        assert!(!log.contains(4));
    }

    #[test]
    fn folding_never_reports_a_failure_as_success() {
        let mut log = ErrorLog::default();
        let failures: Vec<u64> = (0..10_000u64).map(|i| i * 50 + 1).collect();
        for &f in &failures {
            log.insert(f);
        }
        assert!(log.exact.len() <= EXACT_CAPACITY + 1);
        for &f in &failures {
            assert!(log.contains(f), "failure {f} lost");
        }
        // A recent success stays a success.
        assert!(!log.contains(failures[failures.len() - 1] + 1));
    }
}
