//! Connections refused at accept (over a connection limit), logged without flooding the
//! log: per limit the first at once, then at most one line a second with the count
//! refused meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct RefusalLog {
    /// Per limit name: when its last line was logged, and how many were not since.
    by_limit: HashMap<&'static str, (Instant, u64)>,
}

impl RefusalLog {
    /// A refusal under `limit`: `Some(refused and not logged since the last line)` when
    /// this one is to be logged, `None` when it is only counted.
    pub(crate) fn note(&mut self, limit: &'static str) -> Option<u64> {
        let now = Instant::now();
        let suppressed = match self.by_limit.get_mut(limit) {
            Some((last, n)) if now.duration_since(*last) < Duration::from_secs(1) => {
                *n += 1;
                return None;
            }
            Some((_, n)) => std::mem::take(n),
            None => 0,
        };
        self.by_limit.insert(limit, (now, 0));
        Some(suppressed)
    }
}
