//! Subsystems, their namespaces and hosts, and the state a controller shares across the
//! cores of its queue pairs.
//!
//! A [`Subsystem`] is shared (`Arc`) by the control plane and every queue pair that
//! connected to it. Its mutable parts sit behind mutexes that only the control plane and
//! connection setup take. The I/O path reads the namespace table through a generation
//! counter: a queue pair keeps its own copy of the table (with this core's bdev
//! channels) and refreshes it only when [`Subsystem::ns_generation`] moved.
//!
//! A controller's state is owned by its admin queue pair, on that queue pair's core
//! ([`super::ctrlr`]). What its I/O queue pairs on other cores need lives in
//! [`CtrlrShared`]: identity, the CC/CSTS registers as atomics, the "failed" flag, and the
//! table of connected I/O queues (taken only when queues connect and disconnect).

use crate::bdev::Bdev;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// Checks the form of an NQN: `nqn.yyyy-mm.<reverse domain>[:<anything>]` or the UUID
/// form, 11 to 223 bytes.
pub fn check_nqn(nqn: &str) -> Result<(), String> {
    if nqn.len() < 11 || nqn.len() > 223 {
        return Err(format!("`{nqn}` is not 11 to 223 bytes long"));
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err(format!("`{nqn}` does not start with `nqn.`"));
    };
    let date = rest.as_bytes();
    let date_ok = date.len() > 8
        && date[..4].iter().all(u8::is_ascii_digit)
        && date[4] == b'-'
        && date[5..7].iter().all(u8::is_ascii_digit)
        && date[7] == b'.';
    if !date_ok {
        return Err(format!(
            "`{nqn}` does not continue with a date `yyyy-mm.` after `nqn.`"
        ));
    }
    if nqn.contains('\0') {
        return Err(format!("`{nqn}` contains a NUL byte"));
    }
    Ok(())
}

/// What kind of subsystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubsystemKind {
    /// The discovery service.
    Discovery,
    /// Storage: namespaces behind I/O controllers.
    Nvme,
}

/// A namespace: one bdev under an NSID.
pub struct Namespace {
    pub nsid: u32,
    pub bdev: Arc<dyn Bdev>,
    pub uuid: Uuid,
    /// Namespace globally unique identifier (the UUID's bytes).
    pub nguid: [u8; 16],
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("nsid", &self.nsid)
            .field("bdev", &self.bdev.name())
            .field("uuid", &self.uuid)
            .finish()
    }
}

/// A listen address, SPDK style.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ListenAddress {
    pub trtype: String,
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
    /// TLS required before ICReq (SPDK's `secure_channel`).
    #[serde(skip)]
    pub secure_channel: bool,
    /// Secure channel concatenation (tessera's `secure_concat`): a host may
    /// authenticate over plain TCP asking for a generated TLS PSK and come back with
    /// TLS keyed by it; with `secure_channel`, plain TCP serves nothing else.
    #[serde(skip)]
    pub secure_concat: bool,
    /// The listener's own connection limits (tessera's).
    #[serde(skip)]
    pub limits: super::config::ListenerLimits,
}

/// Per-queue-pair I/O counters, written by the queue pair's core only (relaxed stores),
/// summed by the admin core for the SMART log.
#[derive(Default, Debug)]
pub struct QpairStats {
    pub read_commands: AtomicU64,
    pub write_commands: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub media_errors: AtomicU64,
}

impl QpairStats {
    /// Adds one to a counter this core alone writes.
    #[inline]
    pub fn bump(c: &AtomicU64, by: u64) {
        c.store(c.load(Ordering::Relaxed) + by, Ordering::Relaxed);
    }

    fn add_to(&self, t: &mut StatTotals) {
        t.read_commands += self.read_commands.load(Ordering::Relaxed);
        t.write_commands += self.write_commands.load(Ordering::Relaxed);
        t.read_bytes += self.read_bytes.load(Ordering::Relaxed);
        t.write_bytes += self.write_bytes.load(Ordering::Relaxed);
        t.media_errors += self.media_errors.load(Ordering::Relaxed);
    }
}

/// Sums of [`QpairStats`].
#[derive(Default, Debug, Clone, Copy)]
pub struct StatTotals {
    pub read_commands: u64,
    pub write_commands: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub media_errors: u64,
}

/// An I/O queue pair as its controller knows it.
#[derive(Clone)]
pub(crate) struct IoQpairRef {
    pub core: usize,
    pub qpair_id: u64,
    pub stats: Arc<QpairStats>,
}

/// What a controller shares with its I/O queue pairs on other cores.
pub struct CtrlrShared {
    pub cntlid: u16,
    pub subsystem: Arc<Subsystem>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Core of the admin queue pair (the owner of the controller).
    pub core: usize,
    /// Id of the admin queue pair on that core.
    pub admin_qpair_id: u64,
    /// Controller Configuration register.
    pub cc: AtomicU32,
    /// Controller Status register.
    pub csts: AtomicU32,
    /// Set once when the controller is torn down; queue pairs that see it close.
    pub failed: AtomicBool,
    /// I/O queues granted by Set Features (Number of Queues).
    pub num_io_queues: AtomicU32,
    /// The admin queue pair has authenticated (or had no need to): I/O queues may
    /// connect.
    pub authenticated: AtomicBool,
    /// Keep Alive Timeout of the admin queue's Connect (0: none); also bounds each step
    /// of an authentication.
    pub kato_ms: u32,
    /// The admin queue came over TLS: so must the I/O queues.
    pub tls: bool,
    pub(crate) io_qpairs: Mutex<BTreeMap<u16, IoQpairRef>>,
    /// Counters of I/O queue pairs that have gone.
    pub(crate) retired: Mutex<StatTotals>,
    /// The DH-HMAC-CHAP record of each queue's queue pair, by queue ID
    /// (`nvmf_subsystem_get_qpairs` reports it).
    pub(crate) auth: Mutex<BTreeMap<u16, QpairAuthRecord>>,
}

/// The DH-HMAC-CHAP record of the queue pair connected on one queue: its latest
/// successful transaction's digest and group, and how many re-authentications of the
/// enabled queue pair succeeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QpairAuthRecord {
    pub digest: &'static str,
    pub dhgroup: &'static str,
    pub reauthentications: u64,
}

impl CtrlrShared {
    pub(crate) fn io_qpairs(&self) -> MutexGuard<'_, BTreeMap<u16, IoQpairRef>> {
        self.io_qpairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counter totals over every I/O queue pair, past and present.
    pub fn totals(&self) -> StatTotals {
        let mut t = *self.retired.lock().unwrap_or_else(|p| p.into_inner());
        for q in self.io_qpairs().values() {
            q.stats.add_to(&mut t);
        }
        t
    }

    /// Records a successful DH-HMAC-CHAP transaction on queue `qid`: the first of its
    /// queue pair, or (`reauth`) a re-authentication of the enabled queue pair.
    pub(crate) fn record_auth(
        &self,
        qid: u16,
        digest: &'static str,
        dhgroup: &'static str,
        reauth: bool,
    ) {
        let mut m = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        let r = m.entry(qid).or_default();
        r.digest = digest;
        r.dhgroup = dhgroup;
        if reauth {
            r.reauthentications += 1;
        } else {
            r.reauthentications = 0;
        }
    }

    /// Forgets the record of queue `qid` (a new queue pair connects on it).
    pub(crate) fn clear_auth(&self, qid: u16) {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&qid);
    }

    /// The DH-HMAC-CHAP record of queue `qid`, if it authenticated.
    pub fn auth_record(&self, qid: u16) -> Option<QpairAuthRecord> {
        self.auth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&qid)
            .copied()
    }

    /// Forgets I/O queue `qid`, keeping its counters.
    pub(crate) fn detach_io_qpair(&self, qid: u16, qpair_id: u64) {
        let removed = {
            let mut m = self.io_qpairs();
            match m.get(&qid) {
                Some(r) if r.qpair_id == qpair_id => m.remove(&qid),
                _ => None,
            }
        };
        if let Some(r) = removed {
            let mut t = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            r.stats.add_to(&mut t);
        }
    }

    /// True when CC.EN = 1 and CSTS.RDY = 1 and no shutdown is under way.
    pub fn ready(&self) -> bool {
        self.cc.load(Ordering::Acquire) & 1 == 1
            && self.csts.load(Ordering::Acquire) & 1 == 1
            && !self.failed.load(Ordering::Acquire)
    }
}

/// A controller as its subsystem lists it.
#[derive(Clone)]
pub(crate) struct CtrlrEntry {
    pub shared: Arc<CtrlrShared>,
}

/// The namespaces of a subsystem at one generation.
#[derive(Default, Debug)]
pub struct NsTable {
    pub by_nsid: BTreeMap<u32, Arc<Namespace>>,
}

/// The DH-HMAC-CHAP keys of a host, by their keyring names (SPDK's `dhchap_key` and
/// `dhchap_ctrlr_key`). The material is read from the keyring at each authentication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostKeys {
    pub dhchap_key: Option<String>,
    pub dhchap_ctrlr_key: Option<String>,
    /// The TLS PSK (SPDK's `psk`, a key in the interchange format): the host may connect
    /// through a secure-channel listener with it.
    pub psk: Option<String>,
}

impl HostKeys {
    fn is_empty(&self) -> bool {
        self.dhchap_key.is_none() && self.psk.is_none()
    }
}

/// A subsystem.
pub struct Subsystem {
    pub nqn: String,
    pub kind: SubsystemKind,
    pub serial_number: String,
    pub model_number: String,
    pub max_namespaces: u32,
    allow_any_host: AtomicBool,
    hosts: Mutex<BTreeSet<String>>,
    /// DH-HMAC-CHAP keys of hosts that must authenticate (names in the keyring).
    host_keys: Mutex<BTreeMap<String, HostKeys>>,
    /// Last DH-HMAC-CHAP sequence number handed out (0: none yet).
    auth_seqnum: Mutex<u32>,
    /// The TLS PSK each host's latest secure channel concatenation generated, for its
    /// TLS reconnection: in memory only, never shown; replaced by the host's next
    /// concatenation, dropped when the host or its keys change.
    generated_psks: Mutex<BTreeMap<String, crate::nvme::tls::GeneratedPsk>>,
    listeners: Mutex<Vec<ListenAddress>>,
    ns: Mutex<Arc<NsTable>>,
    ns_gen: AtomicU64,
    ctrlrs: Mutex<BTreeMap<u16, CtrlrEntry>>,
    next_cntlid: Mutex<u16>,
    /// Set when the subsystem is deleted: new connections are refused.
    pub(crate) deleted: AtomicBool,
}

/// Lowest and highest dynamic controller IDs (SPDK's defaults).
pub const MIN_CNTLID: u16 = 1;
pub const MAX_CNTLID: u16 = 0xffef;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Subsystem {
    pub(crate) fn new(
        nqn: &str,
        kind: SubsystemKind,
        serial_number: &str,
        model_number: &str,
        max_namespaces: u32,
        allow_any_host: bool,
    ) -> Subsystem {
        Subsystem {
            nqn: nqn.to_string(),
            kind,
            serial_number: serial_number.to_string(),
            model_number: model_number.to_string(),
            max_namespaces,
            allow_any_host: AtomicBool::new(allow_any_host),
            hosts: Mutex::new(BTreeSet::new()),
            host_keys: Mutex::new(BTreeMap::new()),
            auth_seqnum: Mutex::new(0),
            generated_psks: Mutex::new(BTreeMap::new()),
            listeners: Mutex::new(Vec::new()),
            ns: Mutex::new(Arc::new(NsTable::default())),
            ns_gen: AtomicU64::new(1),
            ctrlrs: Mutex::new(BTreeMap::new()),
            next_cntlid: Mutex::new(MIN_CNTLID),
            deleted: AtomicBool::new(false),
        }
    }

    /// Whether any host may connect.
    pub fn allow_any_host(&self) -> bool {
        self.allow_any_host.load(Ordering::Acquire)
    }

    pub(crate) fn set_allow_any_host(&self, on: bool) {
        self.allow_any_host.store(on, Ordering::Release);
    }

    /// Whether `hostnqn` may connect.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.kind == SubsystemKind::Discovery
            || self.allow_any_host()
            || lock(&self.hosts).contains(hostnqn)
    }

    /// The allowed hosts.
    pub fn hosts(&self) -> Vec<String> {
        lock(&self.hosts).iter().cloned().collect()
    }

    pub(crate) fn add_host(&self, host: &str) -> bool {
        lock(&self.hosts).insert(host.to_string())
    }

    pub(crate) fn remove_host(&self, host: &str) -> bool {
        lock(&self.host_keys).remove(host);
        lock(&self.generated_psks).remove(host);
        lock(&self.hosts).remove(host)
    }

    /// Sets (or clears, with both `None`) the DH-HMAC-CHAP keys of `host`.
    pub(crate) fn set_host_keys(&self, host: &str, keys: HostKeys) {
        // New keys: a PSK generated with the old ones no longer admits the host.
        lock(&self.generated_psks).remove(host);
        let mut m = lock(&self.host_keys);
        if keys.is_empty() {
            m.remove(host);
        } else {
            m.insert(host.to_string(), keys);
        }
    }

    /// The DH-HMAC-CHAP keys of `host` (`None`: it need not authenticate).
    pub fn host_keys(&self, host: &str) -> Option<HostKeys> {
        lock(&self.host_keys).get(host).cloned()
    }

    /// Whether `host` must authenticate (SPDK: a host with a DH-HMAC-CHAP key).
    pub fn host_auth_required(&self, host: &str) -> bool {
        lock(&self.host_keys)
            .get(host)
            .is_some_and(|k| k.dhchap_key.is_some())
    }

    /// Keeps the PSK `host`'s secure channel concatenation generated (replacing an
    /// older one).
    pub(crate) fn set_generated_psk(&self, host: &str, psk: crate::nvme::tls::GeneratedPsk) {
        lock(&self.generated_psks).insert(host.to_string(), psk);
    }

    /// The PSK `host`'s latest secure channel concatenation generated.
    pub(crate) fn generated_psk(&self, host: &str) -> Option<crate::nvme::tls::GeneratedPsk> {
        lock(&self.generated_psks).get(host).cloned()
    }

    /// The next DH-HMAC-CHAP sequence number: random at first, then counting, never 0.
    pub(crate) fn next_auth_seqnum(&self) -> Result<u32, crate::nvme::dhchap::DhError> {
        let mut n = lock(&self.auth_seqnum);
        if *n == 0 {
            let mut b = [0u8; 4];
            crate::nvme::dhchap::random_bytes(&mut b)?;
            *n = u32::from_le_bytes(b);
        }
        *n = n.wrapping_add(1).max(1);
        Ok(*n)
    }

    /// The listen addresses.
    pub fn listeners(&self) -> Vec<ListenAddress> {
        lock(&self.listeners).clone()
    }

    pub(crate) fn add_listener(&self, a: ListenAddress) -> bool {
        let mut l = lock(&self.listeners);
        if l.contains(&a) {
            return false;
        }
        l.push(a);
        true
    }

    pub(crate) fn remove_listener(&self, a: &ListenAddress) -> bool {
        let mut l = lock(&self.listeners);
        let before = l.len();
        l.retain(|x| x != a);
        l.len() != before
    }

    /// The namespace table now.
    pub fn namespaces(&self) -> Arc<NsTable> {
        lock(&self.ns).clone()
    }

    /// Changes whenever a namespace is added or removed.
    #[inline]
    pub fn ns_generation(&self) -> u64 {
        self.ns_gen.load(Ordering::Acquire)
    }

    /// The table and its generation, consistently.
    pub(crate) fn namespaces_with_generation(&self) -> (Arc<NsTable>, u64) {
        let t = lock(&self.ns);
        (t.clone(), self.ns_gen.load(Ordering::Acquire))
    }

    /// Adds a namespace; `nsid` 0 picks the lowest free NSID.
    pub(crate) fn add_namespace(
        &self,
        nsid: u32,
        bdev: Arc<dyn Bdev>,
        uuid: Option<Uuid>,
    ) -> Result<u32, String> {
        let mut t = lock(&self.ns);
        let nsid = if nsid == 0 {
            (1..=self.max_namespaces)
                .find(|n| !t.by_nsid.contains_key(n))
                .ok_or_else(|| format!("all {} namespaces are in use", self.max_namespaces))?
        } else {
            nsid
        };
        if nsid > self.max_namespaces {
            return Err(format!(
                "nsid {nsid} is above max_namespaces {}",
                self.max_namespaces
            ));
        }
        if t.by_nsid.contains_key(&nsid) {
            return Err(format!("nsid {nsid} is already in use"));
        }
        let uuid = uuid.unwrap_or_else(|| bdev.uuid());
        let mut by_nsid = t.by_nsid.clone();
        by_nsid.insert(
            nsid,
            Arc::new(Namespace {
                nsid,
                bdev,
                uuid,
                nguid: *uuid.as_bytes(),
            }),
        );
        *t = Arc::new(NsTable { by_nsid });
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        Ok(nsid)
    }

    /// Removes a namespace and returns it.
    pub(crate) fn remove_namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        let mut t = lock(&self.ns);
        let mut by_nsid = t.by_nsid.clone();
        let ns = by_nsid.remove(&nsid)?;
        *t = Arc::new(NsTable { by_nsid });
        self.ns_gen.fetch_add(1, Ordering::AcqRel);
        Some(ns)
    }

    /// Allocates a controller ID and registers the controller built by `make`.
    pub(crate) fn add_ctrlr(
        &self,
        make: impl FnOnce(u16) -> Arc<CtrlrShared>,
    ) -> Option<Arc<CtrlrShared>> {
        let mut m = lock(&self.ctrlrs);
        let mut next = lock(&self.next_cntlid);
        for _ in MIN_CNTLID..=MAX_CNTLID {
            let id = *next;
            *next = if id >= MAX_CNTLID { MIN_CNTLID } else { id + 1 };
            if let std::collections::btree_map::Entry::Vacant(e) = m.entry(id) {
                let shared = make(id);
                e.insert(CtrlrEntry {
                    shared: shared.clone(),
                });
                return Some(shared);
            }
        }
        None
    }

    /// The controller with `cntlid`.
    pub(crate) fn ctrlr(&self, cntlid: u16) -> Option<Arc<CtrlrShared>> {
        lock(&self.ctrlrs).get(&cntlid).map(|e| e.shared.clone())
    }

    /// Every controller.
    pub(crate) fn ctrlrs(&self) -> Vec<Arc<CtrlrShared>> {
        lock(&self.ctrlrs)
            .values()
            .map(|e| e.shared.clone())
            .collect()
    }

    pub(crate) fn remove_ctrlr(&self, cntlid: u16) {
        lock(&self.ctrlrs).remove(&cntlid);
    }
}

impl std::fmt::Debug for Subsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subsystem")
            .field("nqn", &self.nqn)
            .field("kind", &self.kind)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::null::NullBdev;
    use crate::nvme::spec::DISCOVERY_NQN;

    #[test]
    fn nqn_forms() {
        assert!(check_nqn("nqn.2016-06.io.spdk:cnode1").is_ok());
        assert!(check_nqn(DISCOVERY_NQN).is_ok());
        assert!(
            check_nqn("nqn.2014-08.org.nvmexpress:uuid:0f8fad5b-d9cb-469f-a165-70867728950e")
                .is_ok()
        );
        assert!(check_nqn("iqn.2016-06.io.spdk:x").is_err());
        assert!(check_nqn("nqn.16-06.io.spdk:x").is_err());
        assert!(check_nqn("nqn.").is_err());
    }

    #[test]
    fn namespaces_bump_the_generation_and_pick_free_nsids() {
        let s = Subsystem::new(
            "nqn.2016-06.io.t:a",
            SubsystemKind::Nvme,
            "s",
            "m",
            4,
            false,
        );
        let b = NullBdev::create("n0", 8, 512, None).unwrap();
        let g0 = s.ns_generation();
        assert_eq!(s.add_namespace(0, b.clone(), None), Ok(1));
        assert_eq!(s.add_namespace(3, b.clone(), None), Ok(3));
        assert_eq!(s.add_namespace(0, b.clone(), None), Ok(2));
        assert!(s.add_namespace(3, b.clone(), None).is_err());
        assert!(s.add_namespace(5, b.clone(), None).is_err());
        assert!(s.ns_generation() > g0);
        assert_eq!(s.namespaces().by_nsid[&1].uuid, b.props_uuid());
        assert!(s.remove_namespace(2).is_some());
        assert!(s.remove_namespace(2).is_none());
        assert!(!s.host_allowed("nqn.2014-08.org.x:h"));
        s.add_host("nqn.2014-08.org.x:h");
        assert!(s.host_allowed("nqn.2014-08.org.x:h"));
    }

    trait PropsUuid {
        fn props_uuid(&self) -> Uuid;
    }
    impl PropsUuid for Arc<NullBdev> {
        fn props_uuid(&self) -> Uuid {
            let b: Arc<dyn Bdev> = self.clone();
            b.uuid()
        }
    }
}
