//! Connection limits of the front ends' acceptors: a permit counts an open connection
//! against a total and its source address's shares (the transport's, the listener's)
//! until dropped, and refusals are logged without flooding the log (per limit the first
//! at once, then at most one line a second with the count refused meanwhile).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections open now by source address (taken at accept and close only).
pub(crate) type HostCounts = Arc<Mutex<HashMap<IpAddr, u32>>>;

/// A limit: its name (as the configuration spells it) and value.
pub(crate) type Limit = (&'static str, u32);

/// One open connection, counted against a total and its source address's count in
/// each of some maps until dropped.
pub(crate) struct ConnPermit {
    total: Arc<AtomicU32>,
    hosts: Vec<HostCounts>,
    ip: IpAddr,
}

impl ConnPermit {
    /// Counts a new connection from `ip` against `total` (below every limit of
    /// `max_total`) and against each of `hosts` (below its limit of connections from one
    /// address), or names the first limit it is over and its value. Only the acceptor
    /// core takes permits, so load-then-add does not race.
    pub(crate) fn take(
        total: &Arc<AtomicU32>,
        max_total: &[Limit],
        hosts: &[(&HostCounts, Limit)],
        ip: IpAddr,
    ) -> Result<ConnPermit, Limit> {
        let open = total.load(Ordering::Acquire);
        if let Some(l) = max_total.iter().find(|l| open >= l.1) {
            return Err(*l);
        }
        for (m, limit) in hosts {
            let m = m.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&ip).copied().unwrap_or(0) >= limit.1 {
                return Err(*limit);
            }
        }
        for (m, _) in hosts {
            *m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(ip)
                .or_insert(0) += 1;
        }
        total.fetch_add(1, Ordering::AcqRel);
        Ok(ConnPermit {
            total: total.clone(),
            hosts: hosts.iter().map(|(m, _)| (*m).clone()).collect(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
        for hosts in &self.hosts {
            let mut m = hosts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.ip);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permit_counts_against_every_limit_and_names_the_one_it_is_over() {
        let total = Arc::new(AtomicU32::new(0));
        let (transport, listener) = (HostCounts::default(), HostCounts::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let take = |ip| {
            ConnPermit::take(
                &total,
                &[("per_listener", 10), ("max_connections", 3)],
                &[
                    (&transport, ("transport_per_host", 5)),
                    (&listener, ("listener_per_host", 2)),
                ],
                ip,
            )
        };
        let p1 = take(a).unwrap();
        let p2 = take(a).unwrap();
        assert_eq!(take(a).err(), Some(("listener_per_host", 2)));
        // The refusal counted nothing.
        assert_eq!(transport.lock().unwrap()[&a], 2);
        let p3 = take(b).unwrap();
        assert_eq!(take(b).err(), Some(("max_connections", 3)));
        drop(p1);
        assert_eq!(listener.lock().unwrap()[&a], 1);
        let p4 = take(b).unwrap();
        drop((p2, p3, p4));
        assert_eq!(total.load(Ordering::Relaxed), 0);
        assert!(transport.lock().unwrap().is_empty() && listener.lock().unwrap().is_empty());
    }
}
