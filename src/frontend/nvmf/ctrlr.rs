//! Controllers: Connect (admin and I/O queues), and the admin command set — properties
//! (CAP, VS, CC, CSTS with the enable and shutdown handshakes), Identify, Get Log Page,
//! Get/Set Features, Keep Alive, Asynchronous Event Request, Abort.
//!
//! A [`Controller`] is created by the Connect of an admin queue and owned by that admin
//! queue pair, on its core. I/O queue pairs on other cores reach it only through
//! [`CtrlrShared`] (atomics, and a mutex taken at connect/disconnect) and by messages:
//! [`send_ns_changed`] and [`fail_controller`] post closures to the owning core.

use super::config::TransportOptions;
use super::qpair;
use super::subsystem::{CtrlrShared, IoQpairRef, QpairStats, Subsystem, SubsystemKind};
use super::target::TargetShared;
use crate::nvme::pages::{
    self, ErrorLogEntry, IdentifyController, IdentifyNamespace, SmartLog, cntrltype,
};
use crate::nvme::spec::{
    Command, ConnectData, Status, cns, connect_cmd_offset, connect_data_offset, fid, lid, prop,
};
use crate::reactor::{Cores, Nanos};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Most Asynchronous Event Requests outstanding (AERL + 1).
pub(crate) const MAX_AERS: usize = 4;
/// Error log entries kept (ELPE + 1).
const ERROR_LOG_LEN: usize = 16;
/// Keep-alive granularity reported in KAS (100 ms units): 1 s.
const KAS_100MS: u16 = 10;
/// NVMe version reported in VS: 1.3.
const VERSION: u32 = 0x0001_0300;

/// Asynchronous event: notice / namespace attribute changed / changed namespace log.
pub(crate) const AEN_NS_ATTRIBUTE_CHANGED: u32 = 0x02 | ((lid::CHANGED_NS_LIST as u32) << 16);
/// Asynchronous Event Configuration: namespace attribute notices.
const AEC_NS_ATTRIBUTE: u32 = 1 << 8;

/// A failed Connect: the status and the command-specific dword 0 (for Connect Invalid
/// Parameters: the byte offset of the bad field and whether it is in the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnectError {
    pub status: Status,
    pub dw0: u32,
}

impl ConnectError {
    fn param_in_cmd(offset: u16) -> ConnectError {
        ConnectError {
            status: Status::CONNECT_INVALID_PARAMETERS,
            dw0: offset as u32,
        }
    }
    fn param_in_data(offset: u16) -> ConnectError {
        ConnectError {
            status: Status::CONNECT_INVALID_PARAMETERS,
            dw0: offset as u32 | 1 << 16,
        }
    }
    fn status(status: Status) -> ConnectError {
        ConnectError { status, dw0: 0 }
    }
}

/// What a successful Connect made of the queue pair.
pub(crate) enum Role {
    Admin(Box<Controller>),
    Io(IoRole),
}

/// An I/O queue pair's link to its controller.
pub(crate) struct IoRole {
    pub shared: Arc<CtrlrShared>,
    pub stats: Arc<QpairStats>,
}

/// What Connect needs to know about the queue pair.
pub(crate) struct ConnectCtx<'a> {
    pub target: &'a TargetShared,
    pub opts: &'a TransportOptions,
    pub core: usize,
    pub qpair_id: u64,
    pub now: Nanos,
    /// The (host NQN, subsystem NQN) of the PSK identity the connection's TLS
    /// handshake admitted; `None` on a plain connection.
    pub tls: Option<(&'a str, &'a str)>,
    /// That identity is of a PSK secure channel concatenation generated.
    pub tls_generated: bool,
    /// A plain connection to a listener that requires TLS and does concatenation: only
    /// an admin queue whose host authenticates (to generate its PSK) may connect.
    pub plain_restricted: bool,
}

/// Handles Connect: `qid`, `sqsize` (0's based) and `kato_ms` from the command,
/// `data` the 1024 bytes of Connect data.
pub(crate) fn connect(
    ctx: &ConnectCtx<'_>,
    recfmt: u16,
    qid: u16,
    sqsize: u16,
    kato_ms: u32,
    data: &[u8],
) -> Result<Role, ConnectError> {
    if recfmt != 0 {
        return Err(ConnectError::status(Status::CONNECT_INCOMPATIBLE_FORMAT));
    }
    let d = ConnectData::decode(data).map_err(|b| ConnectError::param_in_data(b.offset))?;
    let sub = ctx
        .target
        .subsystem(&d.subnqn)
        .filter(|s| !s.deleted.load(Ordering::Acquire))
        .ok_or_else(|| {
            tracing::info!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "connect to unknown subsystem");
            ConnectError::param_in_data(connect_data_offset::SUBNQN)
        })?;
    if !sub.host_allowed(&d.hostnqn) {
        tracing::warn!(subnqn = %d.subnqn, hostnqn = %d.hostnqn, "connect from a host that is not allowed");
        return Err(ConnectError::status(Status::CONNECT_INVALID_HOST));
    }
    if let Some((host, subnqn)) = ctx.tls
        && (host != d.hostnqn || subnqn != d.subnqn)
    {
        tracing::warn!(
            subnqn = %d.subnqn, hostnqn = %d.hostnqn, tls_host = host, tls_subnqn = subnqn,
            "connect names another host or subsystem than its TLS PSK identity"
        );
        return Err(ConnectError::status(Status::CONNECT_INVALID_HOST));
    }
    if ctx.plain_restricted && (qid != 0 || !sub.host_auth_required(&d.hostnqn)) {
        tracing::warn!(
            subnqn = %d.subnqn, hostnqn = %d.hostnqn, qid,
            "connect over plain TCP to a listener that requires TLS: only an admin queue \
             whose host authenticates for secure channel concatenation may"
        );
        return Err(ConnectError::status(Status::CONNECT_INVALID_HOST));
    }
    if sqsize == 0 {
        return Err(ConnectError::param_in_cmd(connect_cmd_offset::SQSIZE));
    }
    if qid == 0 {
        if sqsize as u32 > ctx.opts.max_aq_depth - 1 {
            return Err(ConnectError::param_in_cmd(connect_cmd_offset::SQSIZE));
        }
        if d.cntlid != 0xffff {
            return Err(ConnectError::param_in_data(connect_data_offset::CNTLID));
        }
        let max_io = if sub.kind == SubsystemKind::Discovery {
            0
        } else {
            ctx.opts.max_io_qpairs_per_ctrlr
        };
        let shared = sub
            .add_ctrlr(|cntlid| {
                Arc::new(CtrlrShared {
                    cntlid,
                    subsystem: sub.clone(),
                    hostnqn: d.hostnqn.clone(),
                    hostid: d.hostid,
                    core: ctx.core,
                    admin_qpair_id: ctx.qpair_id,
                    cc: AtomicU32::new(0),
                    csts: AtomicU32::new(0),
                    failed: AtomicBool::new(false),
                    num_io_queues: AtomicU32::new(max_io),
                    authenticated: AtomicBool::new(
                        (!sub.host_auth_required(&d.hostnqn) || ctx.tls_generated)
                            && !ctx.plain_restricted,
                    ),
                    kato_ms,
                    tls: ctx.tls.is_some(),
                    io_qpairs: Default::default(),
                    retired: Default::default(),
                    auth: Default::default(),
                })
            })
            .ok_or(ConnectError::status(Status::CONNECT_CONTROLLER_BUSY))?;
        tracing::info!(
            subnqn = %sub.nqn, hostnqn = %d.hostnqn, cntlid = shared.cntlid, kato_ms,
            "controller created"
        );
        return Ok(Role::Admin(Box::new(Controller::new(
            shared, kato_ms, ctx.now, ctx.opts,
        ))));
    }
    // An I/O queue of an existing controller.
    if sub.kind == SubsystemKind::Discovery {
        return Err(ConnectError::param_in_cmd(connect_cmd_offset::QID));
    }
    let shared = sub
        .ctrlr(d.cntlid)
        .ok_or_else(|| ConnectError::param_in_data(connect_data_offset::CNTLID))?;
    if shared.hostnqn != d.hostnqn {
        return Err(ConnectError::param_in_data(connect_data_offset::HOSTNQN));
    }
    if shared.tls != ctx.tls.is_some() {
        tracing::warn!(
            subnqn = %sub.nqn, hostnqn = %d.hostnqn, cntlid = shared.cntlid, qid,
            admin_tls = shared.tls,
            "I/O queue connect refused: its connection is {} but its controller's admin queue's is {}",
            if ctx.tls.is_some() { "TLS" } else { "plain TCP" },
            if shared.tls { "TLS" } else { "plain TCP" }
        );
        return Err(ConnectError::status(Status::CONNECT_INVALID_HOST));
    }
    if !shared.authenticated.load(Ordering::Acquire) {
        // SPDK: the admin queue pair is not active yet ("Inactive admin qpair").
        tracing::error!(
            subnqn = %sub.nqn, hostnqn = %d.hostnqn, cntlid = shared.cntlid, qid,
            "I/O queue connect before the controller authenticated"
        );
        return Err(ConnectError::param_in_cmd(connect_cmd_offset::QID));
    }
    if !shared.ready() {
        return Err(ConnectError::status(Status::COMMAND_SEQUENCE_ERROR));
    }
    if qid as u32 > ctx.opts.max_io_qpairs_per_ctrlr {
        // Beyond max_qpairs_per_ctrlr, as SPDK (ctrlr.c, "Requested QID %u but Max QID
        // is %u"): Invalid Queue Identifier (with DNR here, which SPDK leaves clear:
        // retrying cannot help).
        tracing::warn!(
            subnqn = %sub.nqn, hostnqn = %d.hostnqn, cntlid = shared.cntlid, qid,
            max_io_qpairs_per_ctrlr = ctx.opts.max_io_qpairs_per_ctrlr,
            "I/O queue connect refused: above the controller's queue pair limit"
        );
        return Err(ConnectError::status(Status::INVALID_QUEUE_ID));
    }
    if qid as u32 > shared.num_io_queues.load(Ordering::Acquire) {
        // Beyond what Set Features (Number of Queues) granted.
        return Err(ConnectError::param_in_cmd(connect_cmd_offset::QID));
    }
    if sqsize as u32 > ctx.opts.max_queue_depth - 1 {
        return Err(ConnectError::param_in_cmd(connect_cmd_offset::SQSIZE));
    }
    let stats = Arc::new(QpairStats::default());
    {
        let mut m = shared.io_qpairs();
        if m.contains_key(&qid) {
            return Err(ConnectError::param_in_cmd(connect_cmd_offset::QID));
        }
        m.insert(
            qid,
            IoQpairRef {
                core: ctx.core,
                qpair_id: ctx.qpair_id,
                stats: stats.clone(),
            },
        );
    }
    // A new queue pair of this queue ID: the record of a previous one goes.
    shared.clear_auth(qid);
    tracing::debug!(
        cntlid = shared.cntlid,
        qid,
        core = ctx.core,
        "I/O queue connected"
    );
    Ok(Role::Io(IoRole { shared, stats }))
}

/// Features the host can set.
struct Features {
    volatile_write_cache: bool,
    async_event_config: u32,
    num_queues_set: bool,
}

/// The outcome of an admin command.
pub(crate) enum AdminDone {
    /// Complete now with this status, dwords 0 and 1, and `data_len` bytes of the
    /// buffer to return.
    Now {
        status: Status,
        dw0: u32,
        dw1: u32,
        data_len: u32,
    },
    /// An Asynchronous Event Request: held until an event occurs.
    HoldAer,
}

impl AdminDone {
    fn status(status: Status) -> AdminDone {
        AdminDone::Now {
            status,
            dw0: 0,
            dw1: 0,
            data_len: 0,
        }
    }
    fn dw0(dw0: u32) -> AdminDone {
        AdminDone::Now {
            status: Status::SUCCESS,
            dw0,
            dw1: 0,
            data_len: 0,
        }
    }
    fn data(data_len: u32) -> AdminDone {
        AdminDone::Now {
            status: Status::SUCCESS,
            dw0: 0,
            dw1: 0,
            data_len,
        }
    }
}

/// A controller, owned by its admin queue pair.
pub(crate) struct Controller {
    pub shared: Arc<CtrlrShared>,
    /// Keep Alive Timeout in ms (0: disabled).
    pub kato_ms: u32,
    /// When the last Keep Alive arrived.
    pub last_keep_alive: Nanos,
    feat: Features,
    /// Request slots of outstanding Asynchronous Event Requests.
    aers: Vec<u16>,
    /// Events waiting for an AER.
    pending_events: VecDeque<u32>,
    /// Namespace notices are masked until the changed namespace log is read.
    ns_notice_masked: bool,
    changed_ns: Vec<u32>,
    errors: VecDeque<ErrorLogEntry>,
    error_count: u64,
    max_io_size: u32,
    in_capsule_data_size: u32,
    max_queue_depth: u32,
    max_io_qpairs: u32,
}

impl Controller {
    fn new(shared: Arc<CtrlrShared>, kato_ms: u32, now: Nanos, opts: &TransportOptions) -> Self {
        Controller {
            shared,
            kato_ms,
            last_keep_alive: now,
            feat: Features {
                volatile_write_cache: true,
                async_event_config: AEC_NS_ATTRIBUTE,
                num_queues_set: false,
            },
            aers: Vec::new(),
            pending_events: VecDeque::new(),
            ns_notice_masked: false,
            changed_ns: Vec::new(),
            errors: VecDeque::new(),
            error_count: 0,
            max_io_size: opts.max_io_size,
            in_capsule_data_size: opts.in_capsule_data_size,
            max_queue_depth: opts.max_queue_depth,
            max_io_qpairs: opts.max_io_qpairs_per_ctrlr,
        }
    }

    fn subsystem(&self) -> &Arc<Subsystem> {
        &self.shared.subsystem
    }

    fn is_discovery(&self) -> bool {
        self.subsystem().kind == SubsystemKind::Discovery
    }

    /// True when the keep-alive timer ran out at `now`.
    pub(crate) fn keep_alive_expired(&self, now: Nanos) -> bool {
        self.kato_ms > 0
            && now.since(self.last_keep_alive) > Duration::from_millis(self.kato_ms as u64)
    }

    /// Records a failed command in the error log.
    pub(crate) fn log_error(&mut self, sqid: u16, cid: u16, status: Status, nsid: u32, lba: u64) {
        self.error_count += 1;
        if self.errors.len() == ERROR_LOG_LEN {
            self.errors.pop_back();
        }
        self.errors.push_front(ErrorLogEntry {
            error_count: self.error_count,
            sqid,
            cid,
            status_field: status.to_field(),
            lba,
            nsid,
        });
    }

    /// A namespace changed: remember it and raise the event (returns the AER slot to
    /// complete with [`AEN_NS_ATTRIBUTE_CHANGED`], if one is outstanding).
    pub(crate) fn ns_changed(&mut self, nsid: u32) -> Option<(u16, u32)> {
        if !self.changed_ns.contains(&nsid) {
            self.changed_ns.push(nsid);
        }
        if self.feat.async_event_config & AEC_NS_ATTRIBUTE == 0 || self.ns_notice_masked {
            return None;
        }
        if !self.pending_events.contains(&AEN_NS_ATTRIBUTE_CHANGED) {
            self.pending_events.push_back(AEN_NS_ATTRIBUTE_CHANGED);
        }
        self.next_event()
    }

    /// Pairs a pending event with an outstanding AER.
    fn next_event(&mut self) -> Option<(u16, u32)> {
        if self.aers.is_empty() {
            return None;
        }
        let ev = self.pending_events.pop_front()?;
        if ev == AEN_NS_ATTRIBUTE_CHANGED {
            self.ns_notice_masked = true;
        }
        Some((self.aers.remove(0), ev))
    }

    /// Executes an admin command (not Connect). `data` is the command's data buffer
    /// (already holding host data for host-to-controller commands, sized for the
    /// transfer otherwise). `slot` identifies the request for AERs.
    pub(crate) fn execute(
        &mut self,
        cmd: &Command,
        slot: u16,
        data: &mut [u8],
        target: &TargetShared,
        cores: &Cores,
        now: Nanos,
    ) -> AdminDone {
        match *cmd {
            Command::PropertyGet {
                eight_bytes,
                offset,
            } => self.property_get(eight_bytes, offset),
            Command::PropertySet {
                eight_bytes,
                offset,
                value,
            } => self.property_set(eight_bytes, offset, value, cores),
            Command::Connect { .. } => AdminDone::status(Status::COMMAND_SEQUENCE_ERROR),
            Command::Disconnect => AdminDone::status(Status::INVALID_OPCODE),
            _ if !self.shared.ready() && !matches!(cmd, Command::KeepAlive) => {
                // Only properties before CC.EN = 1 (and after shutdown).
                AdminDone::status(Status::COMMAND_SEQUENCE_ERROR)
            }
            Command::Identify { cns, nsid, .. } => self.identify(cns, nsid, data),
            Command::GetLogPage {
                lid,
                rae,
                len_bytes,
                offset_bytes,
                nsid,
                ..
            } => self.get_log_page(lid, rae, len_bytes, offset_bytes, nsid, data, target),
            Command::GetFeatures { fid, sel, .. } => self.get_features(fid, sel),
            Command::SetFeatures { fid, save, cdw11 } => self.set_features(fid, save, cdw11, now),
            Command::KeepAlive => {
                self.last_keep_alive = now;
                AdminDone::status(Status::SUCCESS)
            }
            Command::AsyncEventRequest => {
                if self.aers.len() >= MAX_AERS {
                    return AdminDone::status(Status::AER_LIMIT_EXCEEDED);
                }
                self.aers.push(slot);
                AdminDone::HoldAer
            }
            // Commands complete too fast to be caught: answer "not aborted" (dw0 bit 0).
            Command::Abort { .. } => AdminDone::dw0(1),
            _ => AdminDone::status(Status::INVALID_OPCODE),
        }
    }

    /// After an AER was held: an event may already be waiting for it.
    pub(crate) fn poll_event(&mut self) -> Option<(u16, u32)> {
        self.next_event()
    }

    fn cap(&self) -> u64 {
        let mqes = (self.max_queue_depth - 1) as u64 & 0xffff;
        mqes | 1 << 16 // CQR: contiguous queues required
            | 30u64 << 24 // TO: 15 s
            | 1u64 << 37 // CSS: NVM command set
    }

    fn property_get(&self, eight: bool, offset: u32) -> AdminDone {
        let (value, size8) = match offset {
            prop::CAP => (self.cap(), true),
            prop::VS => (VERSION as u64, false),
            prop::CC => (self.shared.cc.load(Ordering::Acquire) as u64, false),
            prop::CSTS => (self.shared.csts.load(Ordering::Acquire) as u64, false),
            _ => return AdminDone::status(Status::INVALID_FIELD),
        };
        if eight != size8 {
            return AdminDone::status(Status::INVALID_FIELD);
        }
        AdminDone::Now {
            status: Status::SUCCESS,
            dw0: value as u32,
            dw1: (value >> 32) as u32,
            data_len: 0,
        }
    }

    fn property_set(&mut self, eight: bool, offset: u32, value: u64, cores: &Cores) -> AdminDone {
        if offset != prop::CC || eight {
            return AdminDone::status(Status::INVALID_FIELD);
        }
        let new = value as u32;
        let old = self.shared.cc.swap(new, Ordering::AcqRel);
        let en = |v: u32| v & 1 == 1;
        let shn = |v: u32| (v >> 14) & 3;
        if shn(new) != 0 && shn(old) == 0 {
            // Shutdown: stop the I/O queues; the shutdown completes at once.
            tracing::info!(cntlid = self.shared.cntlid, "controller shutdown");
            self.close_io_qpairs(cores, "controller shutdown");
            let csts = self.shared.csts.load(Ordering::Acquire);
            self.shared
                .csts
                .store((csts & !(3 << 2)) | 2 << 2, Ordering::Release);
        }
        if en(new) && !en(old) {
            self.shared.csts.fetch_or(1, Ordering::AcqRel);
            self.shared.csts.fetch_and(!(3 << 2), Ordering::AcqRel);
        } else if !en(new) && en(old) {
            // Controller reset: the I/O queues go, the admin queue stays.
            tracing::info!(cntlid = self.shared.cntlid, "controller reset");
            self.close_io_qpairs(cores, "controller reset");
            self.shared.csts.store(0, Ordering::Release);
            self.feat.num_queues_set = false;
        }
        AdminDone::status(Status::SUCCESS)
    }

    fn close_io_qpairs(&self, cores: &Cores, reason: &'static str) {
        let qs: Vec<IoQpairRef> = self.shared.io_qpairs().values().cloned().collect();
        for q in qs {
            qpair::send_kill(cores, q.core, q.qpair_id, reason);
        }
    }

    fn identify(&self, cns: u8, nsid: u32, data: &mut [u8]) -> AdminDone {
        let page = match cns {
            cns::CONTROLLER => self.identify_controller().encode(),
            cns::NAMESPACE | cns::NS_ID_DESCRIPTORS | cns::ACTIVE_NS_LIST
                if self.is_discovery() =>
            {
                return AdminDone::status(Status::INVALID_FIELD);
            }
            cns::NAMESPACE => {
                if nsid == 0 || nsid > self.subsystem().max_namespaces {
                    return AdminDone::status(Status::INVALID_NAMESPACE);
                }
                match self.subsystem().namespaces().by_nsid.get(&nsid) {
                    // An inactive NSID reads as zeros.
                    None => vec![0u8; pages::PAGE_LEN],
                    Some(ns) => {
                        let b = &ns.bdev;
                        let blocks = b.num_blocks();
                        IdentifyNamespace {
                            nsze: blocks,
                            ncap: blocks,
                            nuse: blocks,
                            nsfeat: 0,
                            dlfeat: if b.unmap_reads_zeroes() { 0x09 } else { 0x08 },
                            nsattr: b.read_only() as u8,
                            nguid: ns.nguid,
                            eui64: [0; 8],
                            lbads: b.block_size().trailing_zeros() as u8,
                        }
                        .encode()
                    }
                }
            }
            cns::ACTIVE_NS_LIST => {
                if nsid >= 0xffff_fffe {
                    return AdminDone::status(Status::INVALID_NAMESPACE);
                }
                let t = self.subsystem().namespaces();
                pages::encode_ns_list(t.by_nsid.keys().copied(), nsid)
            }
            cns::NS_ID_DESCRIPTORS => match self.subsystem().namespaces().by_nsid.get(&nsid) {
                None => return AdminDone::status(Status::INVALID_NAMESPACE),
                Some(ns) => pages::encode_ns_descriptors(&ns.nguid, ns.uuid.as_bytes()),
            },
            _ => return AdminDone::status(Status::INVALID_FIELD),
        };
        AdminDone::data(copy_page(&page, 0, data))
    }

    fn identify_controller(&self) -> IdentifyController {
        let s = self.subsystem();
        let discovery = self.is_discovery();
        let mdts = (self.max_io_size / 4096).trailing_zeros() as u8;
        IdentifyController {
            vid: 0,
            ssvid: 0,
            serial_number: s.serial_number.clone(),
            model_number: if discovery {
                "tessera discovery".into()
            } else {
                s.model_number.clone()
            },
            firmware_revision: env!("CARGO_PKG_VERSION").chars().take(8).collect(),
            mdts: if discovery { 0 } else { mdts },
            cntlid: self.shared.cntlid,
            version: VERSION,
            oaes: if discovery {
                0
            } else {
                pages::OAES_NS_ATTRIBUTE
            },
            cntrltype: if discovery {
                cntrltype::DISCOVERY
            } else {
                cntrltype::IO
            },
            acl: 3,
            aerl: (MAX_AERS - 1) as u8,
            lpa: 1 << 2, // extended data for Get Log Page
            elpe: (ERROR_LOG_LEN - 1) as u8,
            kas: KAS_100MS,
            sqes: if discovery { 0 } else { 0x66 },
            cqes: if discovery { 0 } else { 0x44 },
            maxcmd: self.max_queue_depth.min(0xffff) as u16,
            nn: if discovery { 0 } else { s.max_namespaces },
            oncs: if discovery {
                0
            } else {
                pages::oncs::DSM | pages::oncs::WRITE_ZEROES
            },
            // Present, and Flush with NSID FFFFFFFFh supported.
            vwc: if discovery { 0 } else { 0x07 },
            sgls: 1 | 1 << 20,
            subnqn: s.nqn.clone(),
            ioccsz: (64 + self.in_capsule_data_size) / 16,
            iorcsz: 1,
            icdoff: 0,
            msdbd: 1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn get_log_page(
        &mut self,
        lid: u8,
        rae: bool,
        len_bytes: u64,
        offset_bytes: u64,
        nsid: u32,
        data: &mut [u8],
        target: &TargetShared,
    ) -> AdminDone {
        let page = match lid {
            lid::DISCOVERY if self.is_discovery() => pages::encode_discovery_log(
                target.genctr.load(Ordering::Acquire),
                &target.discovery_entries(&self.shared.hostnqn),
            ),
            _ if self.is_discovery() => return AdminDone::status(Status::INVALID_LOG_PAGE),
            lid::ERROR => {
                let mut b = vec![0u8; ERROR_LOG_LEN * ErrorLogEntry::LEN];
                for (i, e) in self.errors.iter().enumerate() {
                    e.encode_into(&mut b[i * ErrorLogEntry::LEN..]);
                }
                b
            }
            lid::SMART_HEALTH => {
                if nsid != 0 && nsid != 0xffff_ffff {
                    return AdminDone::status(Status::INVALID_FIELD);
                }
                let t = self.shared.totals();
                SmartLog {
                    critical_warning: 0,
                    temperature_k: 273 + 25,
                    available_spare_pct: 100,
                    available_spare_threshold_pct: 10,
                    percentage_used: 0,
                    data_units_read: SmartLog::data_units(t.read_bytes),
                    data_units_written: SmartLog::data_units(t.write_bytes),
                    host_read_commands: t.read_commands as u128,
                    host_write_commands: t.write_commands as u128,
                    power_cycles: 1,
                    power_on_hours: 0,
                    unsafe_shutdowns: 0,
                    media_errors: t.media_errors as u128,
                    num_err_log_entries: self.error_count as u128,
                }
                .encode()
            }
            lid::FIRMWARE_SLOT => {
                let mut b = vec![0u8; 512];
                b[0] = 1; // active slot 1
                let fw: Vec<u8> = env!("CARGO_PKG_VERSION").bytes().take(8).collect();
                b[8..8 + fw.len()].copy_from_slice(&fw);
                b
            }
            lid::CHANGED_NS_LIST => {
                let b = pages::encode_changed_ns_list(&self.changed_ns);
                if !rae {
                    self.changed_ns.clear();
                    self.ns_notice_masked = false;
                }
                b
            }
            _ => return AdminDone::status(Status::INVALID_LOG_PAGE),
        };
        if !offset_bytes.is_multiple_of(4) || offset_bytes > page.len() as u64 {
            return AdminDone::status(Status::INVALID_FIELD);
        }
        let n = len_bytes.min(data.len() as u64) as usize;
        AdminDone::data(copy_page(&page, offset_bytes as usize, &mut data[..n]))
    }

    fn num_queues_dw0(&self) -> u32 {
        let n = self.shared.num_io_queues.load(Ordering::Acquire).max(1) - 1;
        n | n << 16
    }

    fn get_features(&self, f: u8, sel: u8) -> AdminDone {
        if sel == 3 {
            // Supported capabilities: changeable, not saveable.
            return AdminDone::dw0(1 << 2);
        }
        let v = match f {
            fid::ARBITRATION
            | fid::POWER_MANAGEMENT
            | fid::ERROR_RECOVERY
            | fid::INTERRUPT_COALESCING
            | fid::WRITE_ATOMICITY => 0,
            fid::TEMPERATURE_THRESHOLD => 273 + 70,
            fid::VOLATILE_WRITE_CACHE => self.feat.volatile_write_cache as u32,
            fid::NUMBER_OF_QUEUES => self.num_queues_dw0(),
            fid::ASYNC_EVENT_CONFIG => self.feat.async_event_config,
            fid::KEEP_ALIVE_TIMER => self.kato_ms,
            _ => return AdminDone::status(Status::INVALID_FIELD),
        };
        AdminDone::dw0(v)
    }

    fn set_features(&mut self, f: u8, save: bool, cdw11: u32, now: Nanos) -> AdminDone {
        if save {
            return AdminDone::status(Status::FEATURE_NOT_SAVEABLE);
        }
        match f {
            fid::VOLATILE_WRITE_CACHE => {
                self.feat.volatile_write_cache = cdw11 & 1 == 1;
                AdminDone::status(Status::SUCCESS)
            }
            fid::NUMBER_OF_QUEUES => {
                if self.is_discovery() {
                    return AdminDone::status(Status::INVALID_FIELD);
                }
                if !self.shared.io_qpairs().is_empty() {
                    return AdminDone::status(Status::COMMAND_SEQUENCE_ERROR);
                }
                let (nsqr, ncqr) = (cdw11 & 0xffff, cdw11 >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return AdminDone::status(Status::INVALID_FIELD);
                }
                let n = (nsqr.max(ncqr) + 1).min(self.max_io_qpairs);
                self.shared.num_io_queues.store(n, Ordering::Release);
                self.feat.num_queues_set = true;
                AdminDone::dw0(self.num_queues_dw0())
            }
            fid::ASYNC_EVENT_CONFIG => {
                self.feat.async_event_config = cdw11 & (AEC_NS_ATTRIBUTE | 0xff);
                AdminDone::status(Status::SUCCESS)
            }
            fid::KEEP_ALIVE_TIMER => {
                self.kato_ms = cdw11;
                self.last_keep_alive = now;
                AdminDone::status(Status::SUCCESS)
            }
            fid::TEMPERATURE_THRESHOLD | fid::ERROR_RECOVERY | fid::ARBITRATION => {
                AdminDone::status(Status::SUCCESS)
            }
            _ => AdminDone::status(Status::INVALID_FIELD),
        }
    }

    /// The controller goes away (its admin queue closed): mark it failed, forget it in
    /// its subsystem, and close its I/O queue pairs.
    pub(crate) fn teardown(&self, cores: &Cores, reason: &str) {
        self.shared.failed.store(true, Ordering::Release);
        self.shared.subsystem.remove_ctrlr(self.shared.cntlid);
        self.close_io_qpairs(cores, "controller gone");
        tracing::info!(
            cntlid = self.shared.cntlid, subnqn = %self.shared.subsystem.nqn, reason,
            "controller destroyed"
        );
    }
}

/// Copies `page[offset..]` into `out` (zero-filling what the page does not cover);
/// returns the bytes to send back.
fn copy_page(page: &[u8], offset: usize, out: &mut [u8]) -> u32 {
    let src = page.get(offset..).unwrap_or(&[]);
    let n = src.len().min(out.len());
    out[..n].copy_from_slice(&src[..n]);
    out[n..].fill(0);
    out.len() as u32
}

/// Posts "namespace `nsid` changed" to the controller's core.
pub(crate) fn send_ns_changed(cores: &Cores, c: &Arc<CtrlrShared>, nsid: u32) {
    let id = c.admin_qpair_id;
    let _ = cores.send(c.core, move || qpair::ns_changed(id, nsid));
}

/// Fails a controller from anywhere: its queue pairs close.
pub(crate) fn fail_controller(cores: &Cores, c: &Arc<CtrlrShared>, reason: &'static str) {
    c.failed.store(true, Ordering::Release);
    qpair::send_kill(cores, c.core, c.admin_qpair_id, reason);
    let qs: BTreeMap<u16, IoQpairRef> = c.io_qpairs().clone();
    for q in qs.values() {
        qpair::send_kill(cores, q.core, q.qpair_id, reason);
    }
}
