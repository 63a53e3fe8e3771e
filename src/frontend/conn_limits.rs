//! Connection limits of the front ends' acceptors: a permit counts an open connection
//! against a total and its source address's share until dropped, and refusals are
//! logged without flooding the log (per limit the first at once, then at most one line
//! a second with the count refused meanwhile).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections open now by source address (taken at accept and close only).
pub(crate) type HostCounts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// One open connection, counted against a total and its source address's count until
/// dropped.
pub(crate) struct ConnPermit {
    total: Arc<AtomicU32>,
    hosts: HostCounts,
    ip: IpAddr,
}

impl ConnPermit {
    /// Counts a new connection from `ip` against `total` (at most `max_total`, the
    /// limit's name and value) and `hosts` (at most `max_host` from one address), or
    /// names the limit it is over and its value. Only the acceptor takes permits, so
    /// load-then-add does not race.
    pub(crate) fn take(
        total: &Arc<AtomicU32>,
        max_total: (&'static str, u32),
        hosts: &HostCounts,
        max_host: (&'static str, u32),
        ip: IpAddr,
    ) -> Result<ConnPermit, (&'static str, u32)> {
        if total.load(Ordering::Acquire) >= max_total.1 {
            return Err(max_total);
        }
        {
            let mut m = hosts.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= max_host.1 {
                return Err(max_host);
            }
            *n += 1;
        }
        total.fetch_add(1, Ordering::AcqRel);
        Ok(ConnPermit {
            total: total.clone(),
            hosts: hosts.clone(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        let mut m = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

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

    /// Logs a connection from `peer` to the listener at `local` refused at accept under
    /// `limit` (`value`), rate-limited as [`RefusalLog::note`] says; `message` names
    /// the front end and what the connection never reached.
    pub(crate) fn refused(
        &mut self,
        local: Option<SocketAddr>,
        peer: SocketAddr,
        limit: &'static str,
        value: u32,
        message: &'static str,
    ) {
        if let Some(suppressed) = self.note(limit) {
            let listener = local.map_or_else(|| "?".to_string(), |a| a.to_string());
            tracing::warn!(%listener, %peer, limit, value, suppressed, "{message}");
        }
    }
}
