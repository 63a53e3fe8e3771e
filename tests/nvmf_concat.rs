//! Secure channel concatenation (NVMe base specification 2.1 §8.3.4.5.9, as the Linux
//! kernel does it and SPDK does not): tessera's initiator authenticates its admin queue
//! over plain TCP with DH-HMAC-CHAP asking for a generated TLS PSK (SC_C NEWTLSPSK),
//! then connects its admin queue again and an I/O queue per core with TLS keyed by that
//! PSK, against tessera's target, and what it writes reads back. Refusals, each with
//! its reason: a host trying TLS with an old generated PSK (a newer concatenation
//! replaced it), plain TCP queues to a listener that requires TLS (an I/O queue, a host
//! without a key, a negotiation without SC_C, any command but authentication), SC_C
//! with the null DH group, and SC_C on a listener without `secure_concat`.

mod nvmf_common;

use nvmf_common::{HOSTNQN, RawHost, start};
use tessera::bdev::nvme::AttachParams;
use tessera::bdev::nvme::auth::{DhchapHostKeys, HostKeys};
use tessera::bdev::{Channel, IoBuf};
use tessera::frontend::nvmf::subsystem::HostKeys as TargetHostKeys;
use tessera::frontend::nvmf::{
    ListenerLimits, ListenerSecurity, NamespaceParams, TransportOptions,
};
use tessera::nvme::auth::{self, DhGroup, FailureReason, HashId, auth_id, sc_c};
use tessera::nvme::dhchap::DhchapKey;
use tessera::nvme::spec::{self, Status};

const NQN: &str = "nqn.2026-11.io.tessera:concat";
const OPEN: &str = "nqn.2026-11.io.tessera:concat-optional";
const OTHER: &str = "nqn.2026-11.io.tessera:no-concat";
const NOKEY: &str = "nqn.2014-08.org.nvmexpress:uuid:99999999-0000-4000-8000-00000000000c";

struct Setup {
    env: nvmf_common::Env,
    _dir: tempfile::TempDir,
    /// The listener of `NQN`: TLS required, concatenation.
    addr: std::net::SocketAddr,
    /// The listener of `OPEN`: plain TCP served, concatenation too.
    open_addr: std::net::SocketAddr,
    /// The listener of `OTHER`: plain, no concatenation.
    other_addr: std::net::SocketAddr,
    key: String,
    ctrl_key: String,
}

/// A subsystem `nqn` with a 1 MiB namespace on `bdev`, hosts `HOSTNQN` (keys `k1`,
/// `c1`) and `NOKEY`, listening with `sec` on a free port.
fn subsystem(
    env: &nvmf_common::Env,
    nqn: &str,
    bdev: &str,
    sec: ListenerSecurity,
) -> std::net::SocketAddr {
    let t = &env.target;
    env.malloc(bdev, 1 << 20, 512);
    t.nvmf_create_subsystem(nvmf_common::subsystem_params(nqn, false))
        .unwrap();
    t.nvmf_subsystem_add_host_with_keys(
        nqn,
        HOSTNQN,
        TargetHostKeys {
            dhchap_key: Some("k1".into()),
            dhchap_ctrlr_key: Some("c1".into()),
            psk: None,
        },
    )
    .unwrap();
    t.nvmf_subsystem_add_host(nqn, NOKEY).unwrap();
    t.nvmf_subsystem_add_ns(
        nqn,
        NamespaceParams {
            bdev_name: bdev.into(),
            nsid: None,
            uuid: None,
        },
    )
    .unwrap();
    t.nvmf_subsystem_add_listener_sec(nqn, nvmf_common::loopback(), sec, ListenerLimits::default())
        .unwrap()
}

fn setup() -> Setup {
    let env = start(2, TransportOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let key = env.add_dhchap_key(dir.path(), "k1", 1, 32);
    let ctrl_key = env.add_dhchap_key(dir.path(), "c1", 2, 32);
    let required = ListenerSecurity {
        secure_channel: true,
        secure_concat: true,
    };
    let addr = subsystem(&env, NQN, "M0", required);
    let open_addr = subsystem(
        &env,
        OPEN,
        "M1",
        ListenerSecurity {
            secure_channel: false,
            secure_concat: true,
        },
    );
    let other_addr = subsystem(&env, OTHER, "M2", ListenerSecurity::default());
    Setup {
        env,
        _dir: dir,
        addr,
        open_addr,
        other_addr,
        key,
        ctrl_key,
    }
}

fn keys(s: &Setup, bidirectional: bool) -> DhchapHostKeys {
    let parse = |t: &str| DhchapKey::parse(t.as_bytes()).unwrap();
    DhchapHostKeys::new(HostKeys {
        key: parse(&s.key),
        ctrlr_key: bidirectional.then(|| parse(&s.ctrl_key)),
    })
}

fn attach(
    s: &Setup,
    name: &str,
    addr: std::net::SocketAddr,
    nqn: &str,
    k: DhchapHostKeys,
) -> Result<Vec<String>, String> {
    let mut p = AttachParams::new(name, "127.0.0.1", &addr.port().to_string(), nqn);
    p.hostnqn = Some(HOSTNQN.into());
    p.dhchap = k;
    p.secure_concat = true;
    s.env
        .host
        .attach_controller(&s.env.cores, &s.env.host_bdevs, p)
        .map_err(|e| e.to_string())
}

/// Writes a block on `core` through `bdev` and reads it back: `Err` with the I/O
/// error when it fails.
fn write_read(s: &Setup, bdev: &str, core: usize, lba: u64, pattern: u8) -> Result<(), String> {
    let b = s.env.host_bdevs.get(bdev).unwrap();
    s.env.on(core, move || async move {
        let ch = Channel::get(&b).map_err(|e| e.to_string())?;
        let data = vec![pattern; 4096];
        ch.write(lba, IoBuf::from_slice(&data))
            .await
            .map_err(|e| format!("write: {e:?}"))?;
        let back = ch.read(lba, 8).await.map_err(|e| format!("read: {e:?}"))?;
        if back.as_slice() != &data[..] {
            return Err("read back something else".into());
        }
        Ok(())
    })
}

/// Sends an AUTH_Negotiate with `scc` and `groups`; the reason of the AUTH_Failure1
/// that follows, or `None` when a challenge came.
fn negotiate(h: &mut RawHost, scc: u8, groups: &[DhGroup]) -> Option<FailureReason> {
    let mut v = Vec::new();
    auth::encode_negotiate_scc(&mut v, 1, scc, &[HashId::Sha256, HashId::Sha384], groups);
    assert!(h.auth_send(&v).status().is_success());
    let (c, msg) = h.auth_recv();
    assert!(c.status().is_success(), "{}", c.status());
    (msg[1] == auth_id::FAILURE1)
        .then(|| FailureReason::from_code(auth::decode_failure(&msg).unwrap().rce).unwrap())
}

/// A plain admin queue of `HOSTNQN` (asked to authenticate).
fn plain_admin(addr: std::net::SocketAddr, nqn: &str) -> RawHost {
    let mut h = RawHost::connect(addr);
    h.ic(false, false);
    let c = h.connect_cmd(nqn, HOSTNQN, 0, 0xffff, 0);
    assert!(c.status().is_success(), "connect: {}", c.status());
    assert_ne!(c.dw0 & (1 << 17), 0, "AUTHREQ.ATR");
    h
}

#[test]
fn tessera_initiator_concatenates_and_its_tls_queue_pairs_carry_the_io() {
    let s = setup();
    // One-way and bidirectional: the admin queue authenticates over plain TCP, then the
    // admin queue and each core's I/O queue connect with TLS keyed by the generated PSK
    // (the listener serves nothing else over plain TCP: the I/O is the proof).
    assert_eq!(
        attach(&s, "C0", s.addr, NQN, keys(&s, false)).unwrap(),
        ["C0n1"]
    );
    for core in 0..2 {
        write_read(&s, "C0n1", core, core as u64 * 8, 0x30 + core as u8).unwrap();
    }
    assert_eq!(
        attach(&s, "C1", s.addr, NQN, keys(&s, true)).unwrap(),
        ["C1n1"]
    );
    write_read(&s, "C1n1", 0, 64, 0x41).unwrap();
    // `bdev_nvme_set_keys`: the TLS admin queue re-authenticates with SC_C
    // REPLACETLSPSK; the next I/O queue (core 1's) connects with the replaced PSK.
    assert_eq!(s.env.host.set_keys("C1", keys(&s, true)).unwrap(), 1);
    write_read(&s, "C1n1", 1, 72, 0x42).unwrap();
    write_read(&s, "C1n1", 0, 80, 0x43).unwrap();
    // On a listener that serves plain TCP too.
    assert_eq!(
        attach(&s, "C2", s.open_addr, OPEN, keys(&s, false)).unwrap(),
        ["C2n1"]
    );
    write_read(&s, "C2n1", 1, 8, 0x52).unwrap();
    // The target did not ask the TLS queue pairs to authenticate again, and shows
    // nothing of the PSK.
    let q = s
        .env
        .target
        .nvmf_subsystem_get_qpairs(NQN)
        .unwrap()
        .to_string();
    assert!(!q.contains("psk") && !q.contains("NVMe1G"), "{q}");
    let saved = serde_json::to_string(&s.env.target.to_config()).unwrap();
    assert!(saved.contains("\"secure_concat\":true"), "{saved}");
    assert!(!saved.contains("NVMe1G"), "{saved}");
}

#[test]
fn an_old_generated_psk_is_refused_after_a_newer_concatenation() {
    let s = setup();
    attach(&s, "Old", s.addr, NQN, keys(&s, false)).unwrap();
    // Core 0's I/O queue connects now, with the first generated PSK.
    write_read(&s, "Oldn1", 0, 0, 0x11).unwrap();
    // A second concatenation of the host replaces the PSK on the target.
    attach(&s, "New", s.addr, NQN, keys(&s, false)).unwrap();
    write_read(&s, "Newn1", 0, 8, 0x22).unwrap();
    // The first controller's I/O queue on core 1 would connect with the old PSK: its TLS
    // handshake is refused, the I/O fails.
    let e = write_read(&s, "Oldn1", 1, 16, 0x33).unwrap_err();
    assert!(!e.is_empty());
    // What connected before goes on; the new one works on both cores.
    write_read(&s, "Oldn1", 0, 24, 0x44).unwrap();
    write_read(&s, "Newn1", 1, 32, 0x55).unwrap();
}

#[test]
fn plain_tcp_to_a_listener_that_requires_tls_only_authenticates_for_concatenation() {
    let s = setup();
    attach(&s, "T", s.addr, NQN, keys(&s, false)).unwrap();
    write_read(&s, "Tn1", 0, 0, 0x61).unwrap();
    let cntlid = s.env.host.controller("T").unwrap().cntlid();

    // A plain I/O queue for the TLS controller: Connect Invalid Host.
    let mut io = RawHost::connect(s.addr);
    io.ic(false, false);
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_HOST);
    // On a listener that serves plain TCP, a plain I/O queue for a controller whose
    // admin queue is TLS is refused the same way.
    attach(&s, "O", s.open_addr, OPEN, keys(&s, false)).unwrap();
    let open_cntlid = s.env.host.controller("O").unwrap().cntlid();
    let mut io = RawHost::connect(s.open_addr);
    io.ic(false, false);
    let c = io.connect_cmd(OPEN, HOSTNQN, 2, open_cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_HOST);
    // A host without a DH-HMAC-CHAP key cannot even connect its admin queue there.
    let mut nk = RawHost::connect(s.addr);
    nk.ic(false, false);
    assert_eq!(
        nk.connect_cmd(NQN, NOKEY, 0, 0xffff, 0).status(),
        Status::CONNECT_INVALID_HOST
    );
    // A plain admin queue that negotiates without SC_C: secure channel concatenation
    // mismatch. And a command other than authentication: Authentication Required.
    let mut h = plain_admin(s.addr, NQN);
    let cid = h.cid();
    h.capsule(spec::property_get_sqe(cid, spec::prop::CAP, true), None);
    assert_eq!(h.response(None).0.status(), Status::AUTH_REQUIRED);
    assert_eq!(
        negotiate(&mut h, sc_c::NOSC, &DhGroup::ALL),
        Some(FailureReason::SccMismatch)
    );
    // SC_C with the null DH group only: mismatch too (no secret for the PSK).
    let mut h = plain_admin(s.addr, NQN);
    assert_eq!(
        negotiate(&mut h, sc_c::NEWTLSPSK, &[DhGroup::Null]),
        Some(FailureReason::SccMismatch)
    );
    // REPLACETLSPSK on a plain connection, or a reserved value: mismatch.
    let mut h = plain_admin(s.addr, NQN);
    assert_eq!(
        negotiate(&mut h, sc_c::REPLACETLSPSK, &DhGroup::ALL),
        Some(FailureReason::SccMismatch)
    );
    // NEWTLSPSK with a DH group: the challenge comes.
    let mut h = plain_admin(s.addr, NQN);
    assert_eq!(negotiate(&mut h, sc_c::NEWTLSPSK, &DhGroup::ALL), None);
    // SC_C on a listener without secure_concat: mismatch.
    let mut h = plain_admin(s.other_addr, OTHER);
    assert_eq!(
        negotiate(&mut h, sc_c::NEWTLSPSK, &DhGroup::ALL),
        Some(FailureReason::SccMismatch)
    );
    // The initiator against a target that allows only the null group: the attach fails
    // with the controller's reason.
    s.env
        .target
        .set_dhchap_allowed(None, Some(&["null".to_string()]))
        .unwrap();
    let e = attach(&s, "N", s.addr, NQN, keys(&s, false)).unwrap_err();
    assert!(e.contains("secure channel concatenation mismatch"), "{e}");
    // The TLS controller carried on through all of it.
    write_read(&s, "Tn1", 0, 8, 0x62).unwrap();
}
