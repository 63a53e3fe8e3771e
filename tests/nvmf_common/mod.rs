//! Shared pieces of the NVMe/TCP integration tests: a target and an initiator on the
//! same reactors (through real loopback sockets), and a raw host that speaks PDUs by
//! hand for the bad-input tests.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::nvme::{AttachParams, NvmeHost};
use tessera::bdev::{Bdev, BdevRegistry, Channel, IoBuf, IoStatus};
use tessera::frontend::nvmf::{
    CreateSubsystemParams, ListenAddressParams, NamespaceParams, NvmfTarget, TransportOptions,
};
use tessera::nvme::pdu::{self, Frame, Header, Limits, Receiver};
use tessera::nvme::spec::{self, ConnectData, Cqe, Sqe};
use tessera::reactor::{CoreList, Cores, IdlePolicy, ReactorConfig, ReactorSet, block_on};

pub const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555";

/// Reactors, a target and a host in one process.
pub struct Env {
    pub reactors: Option<ReactorSet>,
    pub cores: Cores,
    pub bdevs: BdevRegistry,
    pub target: NvmfTarget,
    pub host_bdevs: BdevRegistry,
    pub host: NvmeHost,
    /// The target's keyring (DH-HMAC-CHAP keys).
    pub keyring: Arc<tessera::keyring::Keyring>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.target.shutdown();
        if let Some(mut r) = self.reactors.take() {
            r.shutdown();
        }
    }
}

pub fn start(n_cores: usize, opts: TransportOptions) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mut cfg = ReactorConfig::new(CoreList::first(n_cores), IdlePolicy::Adaptive);
    cfg.pin = false;
    let reactors = ReactorSet::start(cfg).expect("reactors start");
    let cores = reactors.cores().clone();
    let bdevs = BdevRegistry::new();
    let keyring = Arc::new(tessera::keyring::Keyring::default());
    let target = NvmfTarget::new(cores.clone(), bdevs.clone(), keyring.clone());
    target.nvmf_create_transport("TCP", opts).unwrap();
    Env {
        reactors: Some(reactors),
        cores,
        bdevs,
        target,
        host_bdevs: BdevRegistry::new(),
        host: NvmeHost::new(),
        keyring,
    }
}

impl Env {
    /// Writes a `DHHC-1` key of `len` bytes made from `seed` to `dir/name.key` (mode
    /// 0600) and adds it to the keyring as `name`; the key's text.
    pub fn add_dhchap_key(
        &self,
        dir: &std::path::Path,
        name: &str,
        seed: u8,
        len: usize,
    ) -> String {
        use std::os::unix::fs::PermissionsExt;
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let text = tessera::nvme::dhchap::DhchapKey::format(
            Some(tessera::nvme::auth::HashId::Sha256),
            &bytes,
        )
        .to_string();
        let p = dir.join(format!("{name}.key"));
        std::fs::write(&p, format!("{text}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        self.keyring.add_file_key(name, &p).unwrap();
        text
    }

    pub fn malloc(&self, name: &str, size_bytes: u64, block_size: u32) -> Arc<dyn Bdev> {
        let b: Arc<dyn Bdev> =
            MallocBdev::create(name, size_bytes / block_size as u64, block_size, None).unwrap();
        self.bdevs.add(b.clone()).unwrap();
        b
    }

    /// A subsystem open to any host (or only to `hosts`) with `bdevs` as namespaces
    /// 1, 2, …, listening on a free port.
    pub fn subsystem(&self, nqn: &str, bdevs: &[&str], hosts: Option<&[&str]>) -> SocketAddr {
        self.target
            .nvmf_create_subsystem(CreateSubsystemParams {
                serial_number: Some("TESSERA-TEST-1".into()),
                ..subsystem_params(nqn, hosts.is_none())
            })
            .unwrap();
        for h in hosts.unwrap_or(&[]) {
            self.target.nvmf_subsystem_add_host(nqn, h).unwrap();
        }
        for b in bdevs {
            self.target
                .nvmf_subsystem_add_ns(
                    nqn,
                    NamespaceParams {
                        bdev_name: b.to_string(),
                        nsid: None,
                        uuid: None,
                    },
                )
                .unwrap();
        }
        self.target
            .nvmf_subsystem_add_listener(nqn, loopback())
            .unwrap()
    }

    pub fn attach(&self, name: &str, addr: SocketAddr, nqn: &str, digests: bool) -> Vec<String> {
        let mut p = AttachParams::new(name, "127.0.0.1", &addr.port().to_string(), nqn);
        p.hdgst = digests;
        p.ddgst = digests;
        p.hostnqn = Some(HOSTNQN.into());
        self.host
            .attach_controller(&self.cores, &self.host_bdevs, p)
            .expect("attach")
    }

    /// Runs `f` as a task on `core` and waits for it.
    pub fn on<R, F, Fut>(&self, core: usize, f: F) -> R
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        block_on(self.cores.spawn_on(core, f)).expect("core runs")
    }
}

/// A recognisable pattern for block `lba` of a given seed.
/// `nvmf_create_subsystem`'s parameters for `nqn` with SPDK's defaults, open to any
/// host or not.
pub fn subsystem_params(nqn: &str, allow_any_host: bool) -> CreateSubsystemParams {
    CreateSubsystemParams {
        nqn: nqn.into(),
        serial_number: None,
        model_number: None,
        allow_any_host,
        max_namespaces: None,
    }
}

/// A TCP listen address on 127.0.0.1 at a port the system picks.
pub fn loopback() -> ListenAddressParams {
    ListenAddressParams {
        trtype: "TCP".into(),
        adrfam: None,
        traddr: "127.0.0.1".into(),
        trsvcid: "0".into(),
    }
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn write(bdev: &Arc<dyn Bdev>, off_blocks: u64, data: &[u8]) -> Result<(), IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    ch.write(off_blocks, IoBuf::from_slice(data)).await
}

pub async fn read(bdev: &Arc<dyn Bdev>, off_blocks: u64, len: usize) -> Result<Vec<u8>, IoStatus> {
    let ch = Channel::get(bdev).map_err(|_| IoStatus::InternalError)?;
    let n = len as u64 / bdev.block_size() as u64;
    ch.read(off_blocks, n).await.map(|b| b.to_vec())
}

/// Waits until `f` holds (or panics after `secs`).
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// A host that speaks NVMe/TCP PDUs by hand, to send what a good host never would.
pub struct RawHost {
    pub s: TcpStream,
    pub lim: Limits,
    buf: Vec<u8>,
    next_cid: u16,
}

/// What the raw host received.
#[derive(Debug)]
pub enum Got {
    Pdu(Frame, Vec<u8>),
    Closed,
}

impl RawHost {
    pub fn connect(addr: SocketAddr) -> RawHost {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        RawHost {
            s,
            lim: Limits::initial(),
            buf: Vec::new(),
            next_cid: 1,
        }
    }

    pub fn send(&mut self, b: &[u8]) {
        let _ = self.s.write_all(b);
    }

    /// ICReq/ICResp.
    pub fn ic(&mut self, hd: bool, dd: bool) -> pdu::IcResp {
        let mut v = Vec::new();
        pdu::put_ic_req(
            &mut v,
            &pdu::IcReq {
                pfv: 0,
                hpda: 0,
                header_digest: hd,
                data_digest: dd,
                maxr2t: 0,
            },
        );
        self.send(&v);
        match self.recv() {
            Got::Pdu(f, _) => match f.header {
                Header::IcResp(r) => {
                    self.lim = Limits {
                        header_digest: r.header_digest,
                        data_digest: r.data_digest,
                        max_in_capsule_len: 0,
                        max_data_len: u32::MAX,
                    };
                    r
                }
                h => panic!("expected ICResp, got {h:?}"),
            },
            Got::Closed => panic!("closed instead of ICResp"),
        }
    }

    /// The next PDU (or the end of the connection).
    pub fn recv(&mut self) -> Got {
        loop {
            match pdu::decode_pdu(&self.buf, Receiver::Host, &self.lim) {
                Ok((p, n)) => {
                    let out = Got::Pdu(p.frame, p.data.to_vec());
                    self.buf.drain(..n);
                    return out;
                }
                Err(pdu::DecodeError::NeedMore(_)) => {}
                Err(e) => panic!("bad PDU from the target: {e}"),
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Receives until a CapsuleResp (answering R2Ts with `h2c` data; collecting C2H
    /// data). Returns the CQE and the data read.
    pub fn response(&mut self, h2c: Option<&[u8]>) -> (Cqe, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            match self.recv() {
                Got::Pdu(f, d) => match f.header {
                    Header::CapsuleResp(c) => return (Cqe::decode(&c), data),
                    Header::C2HData(h) => {
                        data.extend_from_slice(&d);
                        if h.success {
                            return (Cqe::default(), data);
                        }
                    }
                    Header::R2T(r) => {
                        let src = h2c.expect("an R2T only for writes");
                        let chunk = &src[r.r2to as usize..(r.r2to + r.r2tl) as usize];
                        let mut v = Vec::new();
                        pdu::put_data_hdr(
                            &mut v,
                            pdu::PduType::H2CData,
                            &pdu::DataHdr {
                                cccid: r.cccid,
                                ttag: r.ttag,
                                datao: r.r2to,
                                datal: r.r2tl,
                                last: true,
                                success: false,
                            },
                            self.lim.header_digest,
                            self.lim.data_digest,
                            0,
                        );
                        v.extend_from_slice(chunk);
                        if self.lim.data_digest {
                            v.extend_from_slice(&pdu::crc32c(chunk).to_le_bytes());
                        }
                        self.send(&v);
                    }
                    h => panic!("unexpected {h:?}"),
                },
                Got::Closed => panic!("connection closed while waiting for a response"),
            }
        }
    }

    pub fn cid(&mut self) -> u16 {
        self.next_cid = self.next_cid.wrapping_add(1).max(1);
        self.next_cid
    }

    /// Sends an AUTH_Send command carrying `msg`; its completion.
    pub fn auth_send(&mut self, msg: &[u8]) -> Cqe {
        let cid = self.cid();
        self.capsule(spec::auth_sqe(cid, true, msg.len() as u32), Some(msg));
        self.response(None).0
    }

    /// Sends an AUTH_Receive command for up to 4 KiB; its completion and the message.
    pub fn auth_recv(&mut self) -> (Cqe, Vec<u8>) {
        let cid = self.cid();
        self.capsule(
            spec::with_transport_sgl(spec::auth_sqe(cid, false, 4096), 4096),
            None,
        );
        self.response(None)
    }

    /// Sends a capsule with optional in-capsule data.
    pub fn capsule(&mut self, mut sqe: Sqe, in_capsule: Option<&[u8]>) {
        if let Some(d) = in_capsule {
            sqe.set_sgl(spec::SglDesc {
                address: 0,
                length: d.len() as u32,
                kind: spec::sgl::IN_CAPSULE,
            });
        }
        let mut v = Vec::new();
        let n = in_capsule.map_or(0, <[u8]>::len);
        pdu::put_capsule_cmd(
            &mut v,
            &sqe.0,
            n,
            self.lim.header_digest,
            self.lim.data_digest,
            0,
        );
        if let Some(d) = in_capsule {
            v.extend_from_slice(d);
            if self.lim.data_digest {
                v.extend_from_slice(&pdu::crc32c(d).to_le_bytes());
            }
        }
        self.send(&v);
    }

    /// Connect; returns the completion.
    pub fn connect_cmd(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        kato_ms: u32,
    ) -> Cqe {
        self.connect_with(subnqn, hostnqn, qid, cntlid, kato_ms, 0)
    }

    /// Connect with Connect Attributes `cattr`, on a queue of 32 entries.
    pub fn connect_with(
        &mut self,
        subnqn: &str,
        hostnqn: &str,
        qid: u16,
        cntlid: u16,
        kato_ms: u32,
        cattr: u8,
    ) -> Cqe {
        let cid = self.cid();
        let sqe = spec::connect_sqe(cid, qid, 31, cattr, kato_ms);
        let data = ConnectData {
            hostid: [9; 16],
            cntlid,
            subnqn: subnqn.into(),
            hostnqn: hostnqn.into(),
        }
        .encode();
        self.capsule(sqe, Some(&data));
        self.response(None).0
    }

    /// Property Set CC.EN = 1.
    pub fn enable(&mut self) {
        let cid = self.cid();
        self.capsule(
            spec::property_set_sqe(cid, spec::prop::CC, 0x46_0001, false),
            None,
        );
        let (c, _) = self.response(None);
        assert!(c.status().is_success(), "enable: {}", c.status());
    }

    /// A whole admin connection: IC, Connect, enable. Returns the controller ID.
    pub fn admin(addr: SocketAddr, subnqn: &str, kato_ms: u32) -> (RawHost, u16) {
        RawHost::admin_as(addr, subnqn, HOSTNQN, kato_ms)
    }

    /// [`RawHost::admin`] as host `hostnqn`.
    pub fn admin_as(addr: SocketAddr, subnqn: &str, hostnqn: &str, kato_ms: u32) -> (RawHost, u16) {
        let mut h = RawHost::connect(addr);
        h.ic(false, false);
        let c = h.connect_cmd(subnqn, hostnqn, 0, 0xffff, kato_ms);
        assert!(c.status().is_success(), "connect: {}", c.status());
        h.enable();
        (h, c.dw0 as u16)
    }

    /// Expects the target to close the connection within `secs` (skipping PDUs).
    pub fn expect_closed(&mut self, secs: u64) -> Vec<Header> {
        self.s
            .set_read_timeout(Some(Duration::from_secs(secs)))
            .unwrap();
        let mut seen = Vec::new();
        loop {
            match self.recv() {
                Got::Closed => return seen,
                Got::Pdu(f, _) => seen.push(f.header),
            }
        }
    }
}
