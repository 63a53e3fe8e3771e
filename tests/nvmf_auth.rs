//! DH-HMAC-CHAP on the target, from a raw host that speaks the PDUs and the
//! authentication messages by hand (the host side of the exchange is written here with
//! tessera's pure codec and crypto; interop with SPDK's own host is tests/spdk_auth.rs):
//! nothing but AUTH_Send/AUTH_Receive before authentication, out-of-order, truncated and
//! malformed messages each refused cleanly while the target keeps serving, a stalled
//! exchange dropped, the digest/group restriction, re-authentication and key rotation.

mod nvmf_common;

use nvmf_common::{HOSTNQN, RawHost, start};
use std::time::{Duration, Instant};
use tessera::frontend::nvmf::TransportOptions;
use tessera::nvme::auth::{self, DhGroup, FailureReason, HashId, auth_id};
use tessera::nvme::dhchap::{self, DhKey, DhchapKey, ResponseInputs};
use tessera::nvme::spec::{self, Cqe, Status};

const NQN: &str = "nqn.2026-11.io.tessera:auth";
const OPEN_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-3333-4444-555555555555";

/// The reason of an AUTH_Failure1 message, or panics.
fn failure1(msg: &[u8]) -> FailureReason {
    assert_eq!(
        msg.get(1),
        Some(&auth_id::FAILURE1),
        "not AUTH_Failure1: {msg:?}"
    );
    let f = auth::decode_failure(msg).unwrap();
    assert_eq!(f.rc, auth::FAILURE_RC);
    FailureReason::from_code(f.rce).unwrap()
}

fn negotiate_msg(tid: u16, hashes: &[HashId], groups: &[DhGroup]) -> Vec<u8> {
    let mut v = Vec::new();
    auth::encode_negotiate(&mut v, tid, hashes, groups);
    v
}

/// The host's side of DH-HMAC-CHAP. `Ok` with the challenge's digest and group, or the
/// failure the target answered with.
fn authenticate(
    h: &mut RawHost,
    hostnqn: &str,
    key: &str,
    ctrl_key: Option<&str>,
    groups: &[DhGroup],
) -> Result<(HashId, DhGroup), FailureReason> {
    authenticate_probed(h, hostnqn, key, ctrl_key, groups, None).map(|(r, _)| r)
}

/// [`authenticate`], with `probe`: a count of another connection's completed commands.
/// Returns also how far the count moved during each of the two commands that wait for
/// the target's DH computations: the AUTH_Receive of the challenge (the target's key
/// pair) and the AUTH_Send of the reply (the shared secret).
fn authenticate_probed(
    h: &mut RawHost,
    hostnqn: &str,
    key: &str,
    ctrl_key: Option<&str>,
    groups: &[DhGroup],
    probe: Option<&std::sync::atomic::AtomicU64>,
) -> Result<((HashId, DhGroup), [u64; 2]), FailureReason> {
    let count = || probe.map_or(0, |p| p.load(std::sync::atomic::Ordering::Acquire));
    let tid = 9;
    let c = h.auth_send(&negotiate_msg(tid, &HashId::ALL, groups));
    assert!(c.status().is_success(), "negotiate: {}", c.status());
    let before = count();
    let (c, msg) = h.auth_recv();
    let during_challenge = count() - before;
    assert!(c.status().is_success(), "challenge: {}", c.status());
    if msg[0] == auth::auth_type::COMMON {
        return Err(failure1(&msg));
    }
    let ch = auth::decode_challenge(&msg).unwrap();
    let (secret, public) = if ch.dhgroup == DhGroup::Null {
        (None, Vec::new())
    } else {
        let k = DhKey::generate(ch.dhgroup).unwrap();
        (Some(k.derive(ch.dhv).unwrap()), k.public().to_vec())
    };
    let key = DhchapKey::parse(key.as_bytes()).unwrap();
    let rval = dhchap::response(
        &key,
        ch.cval,
        &ResponseInputs {
            hash: ch.hash,
            kind: "HostHost",
            seqnum: ch.seqnum,
            tid,
            scc: 0,
            nqn1: hostnqn,
            nqn2: NQN,
            dh_secret: secret.as_deref().map(|s| &s[..]),
        },
    );
    let hl = ch.hash.digest_len();
    let my_cval = vec![0x5a; hl];
    let expected = ctrl_key.map(|k| {
        dhchap::response(
            &DhchapKey::parse(k.as_bytes()).unwrap(),
            &my_cval,
            &ResponseInputs {
                hash: ch.hash,
                kind: "Controller",
                seqnum: 77,
                tid,
                scc: 0,
                nqn1: NQN,
                nqn2: hostnqn,
                dh_secret: secret.as_deref().map(|s| &s[..]),
            },
        )
    });
    let mut reply = Vec::new();
    let zero = vec![0; hl];
    auth::encode_reply(
        &mut reply,
        &auth::Reply {
            tid,
            hl,
            cvalid: ctrl_key.is_some(),
            seqnum: if ctrl_key.is_some() { 77 } else { 0 },
            rval: &rval,
            cval: if ctrl_key.is_some() { &my_cval } else { &zero },
            dhv: &public,
        },
    );
    let (hash, group) = (ch.hash, ch.dhgroup);
    let before = count();
    let c = h.auth_send(&reply);
    let during_reply = count() - before;
    assert!(c.status().is_success(), "reply: {}", c.status());
    let (c, msg) = h.auth_recv();
    assert!(c.status().is_success(), "success1: {}", c.status());
    if msg[0] == auth::auth_type::COMMON {
        return Err(failure1(&msg));
    }
    let s1 = auth::decode_success1(&msg).unwrap();
    if let Some(exp) = expected {
        assert_eq!(s1.rval, Some(&exp[..]), "the controller's response");
        let mut s2 = Vec::new();
        auth::encode_success2(&mut s2, tid);
        assert!(h.auth_send(&s2).status().is_success());
    }
    Ok(((hash, group), [during_challenge, during_reply]))
}

/// IC and Connect of an admin queue as `hostnqn`; returns the completion.
fn connect_admin(addr: std::net::SocketAddr, hostnqn: &str, kato_ms: u32) -> (RawHost, Cqe) {
    let mut h = RawHost::connect(addr);
    h.ic(false, false);
    let c = h.connect_cmd(NQN, hostnqn, 0, 0xffff, kato_ms);
    assert!(c.status().is_success(), "connect: {}", c.status());
    (h, c)
}

const ATR: u32 = 1 << 17;

struct Setup {
    env: nvmf_common::Env,
    _dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    key: String,
    ctrl_key: String,
}

fn setup() -> Setup {
    setup_on(2)
}

/// [`setup`] with the target on `cores` reactors.
fn setup_on(cores: usize) -> Setup {
    let env = start(cores, TransportOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let key = env.add_dhchap_key(dir.path(), "k1", 1, 32);
    let ctrl_key = env.add_dhchap_key(dir.path(), "c1", 2, 48);
    env.malloc("M0", 1 << 20, 512);
    let addr = env.subsystem(NQN, &["M0"], Some(&[HOSTNQN, OPEN_HOST]));
    env.target
        .nvmf_subsystem_set_keys(NQN, HOSTNQN, Some("k1".into()), Some("c1".into()))
        .unwrap();
    Setup {
        env,
        _dir: dir,
        addr,
        key,
        ctrl_key,
    }
}

/// A host that needs no authentication reads block 0: the target is serving.
fn still_serving(addr: std::net::SocketAddr) {
    let (mut h, c) = connect_admin(addr, OPEN_HOST, 0);
    assert_eq!(
        c.dw0 & ATR,
        0,
        "a host without keys is not asked to authenticate"
    );
    h.enable();
    let cid = h.cid();
    h.capsule(
        spec::with_transport_sgl(spec::identify_sqe(cid, spec::cns::CONTROLLER, 0), 4096),
        None,
    );
    let (c, data) = h.response(None);
    assert!(c.status().is_success());
    assert_eq!(data.len(), 4096);
}

#[test]
fn nothing_but_authentication_runs_before_it_succeeds() {
    let s = setup();
    let (mut h, c) = connect_admin(s.addr, HOSTNQN, 0);
    assert_ne!(
        c.dw0 & ATR,
        0,
        "Connect asks for authentication (AUTHREQ.ATR)"
    );
    let cntlid = c.dw0 as u16;
    // Property Get, Property Set, Identify: Authentication Required (SCT 1h, SC 91h).
    for sqe in [
        spec::property_get_sqe(h.cid(), spec::prop::CAP, true),
        spec::property_set_sqe(h.cid(), spec::prop::CC, 0x46_0001, false),
        spec::with_transport_sgl(spec::identify_sqe(h.cid(), spec::cns::CONTROLLER, 0), 4096),
    ] {
        h.capsule(sqe, None);
        let (c, data) = h.response(None);
        assert_eq!(c.status(), Status::AUTH_REQUIRED);
        assert!(data.is_empty());
    }
    // An I/O queue of the unauthenticated controller: Connect Invalid Parameters, QID.
    let mut io = RawHost::connect(s.addr);
    io.ic(false, false);
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, spec::connect_cmd_offset::QID as u32);
    drop(io);
    // After authentication (bidirectional) the controller works, and its I/O queue
    // must authenticate too.
    let (hash, group) =
        authenticate(&mut h, HOSTNQN, &s.key, Some(&s.ctrl_key), &DhGroup::ALL).unwrap();
    assert_eq!((hash, group), (HashId::Sha512, DhGroup::Ffdhe8192));
    h.enable();
    let cid = h.cid();
    h.capsule(
        spec::set_features_sqe(cid, spec::fid::NUMBER_OF_QUEUES, 0x0003_0003),
        None,
    );
    assert!(h.response(None).0.status().is_success());
    let mut io = RawHost::connect(s.addr);
    io.ic(false, false);
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "I/O connect: {}", c.status());
    assert_ne!(c.dw0 & ATR, 0);
    let cid = io.cid();
    io.capsule(
        spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 1, false), 512),
        None,
    );
    assert_eq!(io.response(None).0.status(), Status::AUTH_REQUIRED);
    authenticate(&mut io, HOSTNQN, &s.key, None, &[DhGroup::Null]).unwrap();
    let cid = io.cid();
    io.capsule(
        spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 1, false), 512),
        None,
    );
    let (c, data) = io.response(None);
    assert!(c.status().is_success());
    assert_eq!(data.len(), 512);
}

/// Connects as the keyed host and sends `msgs` (AUTH_Send) then one AUTH_Receive;
/// expects AUTH_Failure1 with `reason` and the connection closed soon after.
fn expect_failure(s: &Setup, msgs: &[Vec<u8>], reason: FailureReason) {
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
    for m in msgs {
        let c = h.auth_send(m);
        assert!(
            c.status().is_success(),
            "AUTH_Send answers success: {}",
            c.status()
        );
    }
    let (c, msg) = h.auth_recv();
    assert!(c.status().is_success());
    assert_eq!(failure1(&msg), reason, "for {msgs:?}");
    let t = Instant::now();
    h.expect_closed(5);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed after AUTH_Failure1"
    );
}

#[test]
fn out_of_order_truncated_and_malformed_messages_are_refused_and_the_target_serves_on() {
    let s = setup();
    let good = negotiate_msg(1, &HashId::ALL, &DhGroup::ALL);
    // AUTH_Receive before anything: incorrect protocol message.
    expect_failure(&s, &[], FailureReason::IncorrectProtocolMessage);
    // A reply, a success2 or a failure2 before the negotiation.
    let mut reply = Vec::new();
    auth::encode_reply(
        &mut reply,
        &auth::Reply {
            tid: 1,
            hl: 32,
            cvalid: false,
            seqnum: 0,
            rval: &[0; 32],
            cval: &[0; 32],
            dhv: &[],
        },
    );
    expect_failure(
        &s,
        &[reply.clone()],
        FailureReason::IncorrectProtocolMessage,
    );
    let mut s2 = Vec::new();
    auth::encode_success2(&mut s2, 1);
    expect_failure(&s, &[s2], FailureReason::IncorrectProtocolMessage);
    // Two negotiations.
    expect_failure(
        &s,
        &[good.clone(), good.clone()],
        FailureReason::IncorrectProtocolMessage,
    );
    // Truncated: a negotiation cut short, a 3-byte message.
    expect_failure(&s, &[good[..40].to_vec()], FailureReason::IncorrectPayload);
    expect_failure(&s, &[good[..3].to_vec()], FailureReason::IncorrectPayload);
    // Malformed: secure channel concatenation, no DH-HMAC-CHAP descriptor, unknown
    // hashes only, an unknown message type.
    let mut scc = good.clone();
    scc[6] = 1;
    expect_failure(&s, &[scc], FailureReason::SccMismatch);
    let mut proto = good.clone();
    proto[8] = 7;
    expect_failure(&s, &[proto], FailureReason::ProtocolUnusable);
    let mut hashes = good.clone();
    hashes[12..15].copy_from_slice(&[9, 10, 11]);
    expect_failure(&s, &[hashes], FailureReason::HashUnusable);
    expect_failure(
        &s,
        &[vec![5, 5, 0, 0, 1, 0, 0, 0]],
        FailureReason::IncorrectProtocolMessage,
    );
    // A reply of the wrong hash length after a proper challenge.
    {
        let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
        assert!(h.auth_send(&good).status().is_success());
        let (_, ch) = h.auth_recv();
        assert_eq!(auth::decode_challenge(&ch).unwrap().hash, HashId::Sha512);
        assert!(h.auth_send(&reply).status().is_success());
        let (_, msg) = h.auth_recv();
        assert_eq!(failure1(&msg), FailureReason::IncorrectPayload);
        h.expect_closed(5);
    }
    // A wrong response: authentication failed.
    {
        let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
        let wrong = DhchapKey::format(Some(HashId::Sha256), &[7; 32]).to_string();
        assert_eq!(
            authenticate(&mut h, HOSTNQN, &wrong, None, &[DhGroup::Ffdhe2048]),
            Err(FailureReason::Failed)
        );
        h.expect_closed(5);
    }
    // A DH value out of range (p - 1 and above): the target's computation of the
    // shared secret (on a worker thread) refuses it, authentication failed.
    {
        let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
        let neg = negotiate_msg(1, &[HashId::Sha256], &[DhGroup::Ffdhe2048]);
        assert!(h.auth_send(&neg).status().is_success());
        let (_, ch) = h.auth_recv();
        let ch = auth::decode_challenge(&ch).unwrap();
        assert_eq!(ch.dhgroup, DhGroup::Ffdhe2048);
        let mut bad = Vec::new();
        auth::encode_reply(
            &mut bad,
            &auth::Reply {
                tid: 1,
                hl: 32,
                cvalid: false,
                seqnum: 0,
                rval: &[0; 32],
                cval: &[0; 32],
                dhv: &[0xff; 256],
            },
        );
        assert!(h.auth_send(&bad).status().is_success());
        let (_, msg) = h.auth_recv();
        assert_eq!(failure1(&msg), FailureReason::Failed);
        h.expect_closed(5);
    }
    // SECP, SPSP or a length that disagrees with the transfer: Invalid Field, DNR.
    {
        let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
        let mut sqe = spec::auth_sqe(h.cid(), true, good.len() as u32);
        sqe.0[43] = 0xea;
        h.capsule(sqe, Some(&good));
        assert_eq!(h.response(None).0.status(), Status::INVALID_FIELD);
        let mut sqe = spec::auth_sqe(h.cid(), true, 10);
        sqe.0[41] = 1;
        h.capsule(sqe, Some(&good));
        assert_eq!(h.response(None).0.status(), Status::INVALID_FIELD);
        // The exchange itself is untouched by those and still succeeds.
        authenticate(&mut h, HOSTNQN, &s.key, None, &[DhGroup::Null]).unwrap();
        h.enable();
    }
    // And all along the target served everyone else.
    still_serving(s.addr);
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
    authenticate(
        &mut h,
        HOSTNQN,
        &s.key,
        Some(&s.ctrl_key),
        &[DhGroup::Ffdhe3072],
    )
    .unwrap();
    h.enable();
}

/// The DH exponentiations run off the reactor. On a one-core target, one connection
/// sends Property Get back to back while another re-authenticates again and again with
/// ffdhe8192: in each transaction two of its commands wait for an exponentiation of
/// several milliseconds on the target (the challenge's key pair, the reply's shared
/// secret). Were they computed on the reactor, the other connection could complete
/// nothing while they wait (a command or two at most, taken in the same turn); off it,
/// it goes on completing commands. Each waiting command during which the other
/// connection completed fewer than 5 counts as blocked; at most a quarter may be (a
/// shared machine's scheduling), and the other connection's longest command is
/// reported beside the exponentiation's time.
#[test]
fn ffdhe8192_authentications_do_not_stall_other_queue_pairs_on_the_reactor() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = setup_on(1);
    let t_exp = (0..3)
        .map(|_| {
            let t = Instant::now();
            DhKey::generate(DhGroup::Ffdhe8192).unwrap();
            t.elapsed()
        })
        .min()
        .unwrap();
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
    authenticate(&mut h, HOSTNQN, &s.key, None, &[DhGroup::Ffdhe8192]).unwrap();
    h.enable();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let (addr, stop2, done2) = (s.addr, stop.clone(), done.clone());
    let probe = std::thread::spawn(move || {
        let (mut p, _) = connect_admin(addr, OPEN_HOST, 0);
        let mut longest = Duration::ZERO;
        while !stop2.load(Ordering::Acquire) {
            let cid = p.cid();
            let t = Instant::now();
            p.capsule(spec::property_get_sqe(cid, spec::prop::CSTS, false), None);
            assert!(p.response(None).0.status().is_success());
            longest = longest.max(t.elapsed());
            done2.fetch_add(1, Ordering::Release);
        }
        longest
    });
    while done.load(Ordering::Acquire) < 100 {
        std::thread::sleep(Duration::from_millis(5));
    }
    const TRANSACTIONS: usize = 10;
    let mut during = Vec::new();
    for _ in 0..TRANSACTIONS {
        let (negotiated, d) = authenticate_probed(
            &mut h,
            HOSTNQN,
            &s.key,
            None,
            &[DhGroup::Ffdhe8192],
            Some(&done),
        )
        .unwrap();
        assert_eq!(negotiated, (HashId::Sha512, DhGroup::Ffdhe8192));
        during.extend(d);
    }
    stop.store(true, Ordering::Release);
    let longest = probe.join().unwrap();
    let blocked = during.iter().filter(|n| **n < 5).count();
    eprintln!(
        "ffdhe8192 exponentiation {t_exp:?}; the other connection's commands completed \
         while a command waited for one: {during:?}; its longest command {longest:?}"
    );
    assert!(
        blocked <= during.len() / 4,
        "the other connection was blocked during {blocked} of the {} commands that waited \
         for a DH computation (completed {during:?}); its longest command took {longest:?}, \
         an ffdhe8192 exponentiation {t_exp:?}",
        during.len()
    );
    let q = s.env.target.nvmf_subsystem_get_qpairs(NQN).unwrap();
    let a = &q.as_array().unwrap()[0]["auth"];
    assert_eq!(a["dhgroup"], "ffdhe8192", "{q}");
    assert_eq!(a["reauthentications"], TRANSACTIONS, "{q}");
}

#[test]
fn a_stalled_authentication_is_dropped_after_the_keep_alive_timeout() {
    let s = setup();
    // Connect with KATO 1 s and never authenticate: closed after about a second.
    let (mut h, c) = connect_admin(s.addr, HOSTNQN, 1000);
    assert_ne!(c.dw0 & ATR, 0);
    let t = Instant::now();
    h.expect_closed(10);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // Stalling after the negotiation too.
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 1000);
    assert!(
        h.auth_send(&negotiate_msg(1, &HashId::ALL, &DhGroup::ALL))
            .status()
            .is_success()
    );
    let t = Instant::now();
    h.expect_closed(10);
    assert!(t.elapsed() < Duration::from_secs(5));
    still_serving(s.addr);
}

#[test]
fn digests_and_groups_can_be_restricted() {
    let s = setup();
    s.env
        .target
        .set_dhchap_allowed(
            Some(&["sha256".into()]),
            Some(&["ffdhe2048".into(), "null".into()]),
        )
        .unwrap();
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
    assert_eq!(
        authenticate(&mut h, HOSTNQN, &s.key, Some(&s.ctrl_key), &DhGroup::ALL),
        Ok((HashId::Sha256, DhGroup::Ffdhe2048))
    );
    // A host offering only groups that are not allowed: DH group unusable.
    let only = negotiate_msg(1, &HashId::ALL, &[DhGroup::Ffdhe4096]);
    expect_failure(&s, &[only], FailureReason::DhGroupUnusable);
    let only = negotiate_msg(1, &[HashId::Sha384], &DhGroup::ALL);
    expect_failure(&s, &[only], FailureReason::HashUnusable);
    assert!(
        s.env
            .target
            .set_dhchap_allowed(Some(&["md5".into()]), None)
            .is_err()
    );
}

#[test]
fn re_authentication_and_key_rotation_keep_the_connection() {
    let s = setup();
    let (mut h, _) = connect_admin(s.addr, HOSTNQN, 0);
    authenticate(&mut h, HOSTNQN, &s.key, None, &[DhGroup::Null]).unwrap();
    h.enable();
    // Rotate the host key: the connected queue pair stays; re-authentication on it uses
    // the new key.
    let dir = tempfile::tempdir().unwrap();
    let new_key = s.env.add_dhchap_key(dir.path(), "k2", 9, 64);
    s.env
        .target
        .nvmf_subsystem_set_keys(NQN, HOSTNQN, Some("k2".into()), None)
        .unwrap();
    let cid = h.cid();
    h.capsule(spec::property_get_sqe(cid, spec::prop::CSTS, false), None);
    assert!(h.response(None).0.status().is_success());
    authenticate(
        &mut h,
        HOSTNQN,
        &new_key,
        Some(&s.ctrl_key),
        &[DhGroup::Ffdhe2048],
    )
    .unwrap();
    let cid = h.cid();
    h.capsule(spec::property_get_sqe(cid, spec::prop::CSTS, false), None);
    assert!(h.response(None).0.status().is_success());
    // A new connection with the old key fails, with the new one succeeds.
    let (mut old, _) = connect_admin(s.addr, HOSTNQN, 0);
    assert_eq!(
        authenticate(&mut old, HOSTNQN, &s.key, None, &[DhGroup::Null]),
        Err(FailureReason::Failed)
    );
    let (mut new, _) = connect_admin(s.addr, HOSTNQN, 0);
    authenticate(&mut new, HOSTNQN, &new_key, None, &[DhGroup::Null]).unwrap();
    // A removed key: the host cannot authenticate.
    s.env.keyring.remove_key("k2").unwrap();
    let (mut gone, _) = connect_admin(s.addr, HOSTNQN, 0);
    assert_eq!(
        authenticate(&mut gone, HOSTNQN, &new_key, None, &[DhGroup::Null]),
        Err(FailureReason::Failed)
    );
}

/// tessera's own initiator as the host: with the host key and the controller key it
/// authenticates its admin queue and the I/O queue of each core (bidirectionally), and
/// reads back what it wrote on both cores; with a wrong host key or none the attach
/// fails naming why, and with a wrong controller key it refuses the target.
#[test]
fn tessera_initiator_authenticates_every_queue_pair() {
    use tessera::bdev::nvme::AttachParams;
    use tessera::bdev::nvme::auth::{DhchapHostKeys, HostKeys};
    use tessera::bdev::{Channel, IoBuf};
    let s = setup();
    let parse = |t: &str| DhchapKey::parse(t.as_bytes()).unwrap();
    let wrong = DhchapKey::format(Some(HashId::Sha256), &[7; 32]).to_string();
    let attach = |name: &str, keys: DhchapHostKeys| {
        let mut p = AttachParams::new(name, "127.0.0.1", &s.addr.port().to_string(), NQN);
        p.hostnqn = Some(HOSTNQN.into());
        p.dhchap = keys;
        s.env
            .host
            .attach_controller(&s.env.cores, &s.env.host_bdevs, p)
    };
    let names = attach(
        "Auth0",
        DhchapHostKeys::new(HostKeys {
            key: parse(&s.key),
            ctrlr_key: Some(parse(&s.ctrl_key)),
        }),
    )
    .expect("attach with the right keys");
    assert_eq!(names, ["Auth0n1"]);
    let nb = s.env.host_bdevs.get("Auth0n1").unwrap();
    for core in 0..2usize {
        let b = nb.clone();
        s.env.on(core, move || async move {
            let ch = Channel::get(&b).unwrap();
            let data = vec![0x40 + core as u8; 4096];
            ch.write(core as u64 * 8, IoBuf::from_slice(&data))
                .await
                .unwrap();
            let back = ch.read(core as u64 * 8, 8).await.unwrap();
            assert_eq!(back.as_slice(), &data[..], "core {core}");
        });
    }

    let e = attach(
        "Auth1",
        DhchapHostKeys::new(HostKeys {
            key: parse(&wrong),
            ctrlr_key: None,
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("authentication failed"), "{e}");
    let e = attach("Auth2", DhchapHostKeys::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("requires DH-HMAC-CHAP"), "{e}");
    let e = attach(
        "Auth3",
        DhchapHostKeys::new(HostKeys {
            key: parse(&s.key),
            ctrlr_key: Some(parse(&wrong)),
        }),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("controller's response does not match"), "{e}");
    still_serving(s.addr);
}

/// `bdev_nvme_set_keys` on tessera's initiator: attached bidirectionally with I/O
/// running on both cores (each write read back and compared), the keys are rotated on
/// the target (`nvmf_subsystem_set_keys`) and then on the host; every queue pair (the
/// admin queue and each core's I/O queue) runs a new transaction with the new keys
/// without disconnecting — the target counts one re-authentication on each — and the
/// I/O goes on with no error. Then a host key the target does not accept: the
/// re-authentication fails naming the queue and the controller's reason (AUTH_Failure1,
/// "authentication failed"), with no key material in the error.
#[test]
fn tessera_initiator_re_authenticates_every_queue_pair_while_io_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use tessera::bdev::nvme::AttachParams;
    use tessera::bdev::nvme::auth::{DhchapHostKeys, HostKeys};
    use tessera::bdev::{Channel, IoBuf};
    let s = setup();
    let parse = |t: &str| DhchapKey::parse(t.as_bytes()).unwrap();
    let keys = |k: &str, c: &str| {
        DhchapHostKeys::new(HostKeys {
            key: parse(k),
            ctrlr_key: Some(parse(c)),
        })
    };
    let mut p = AttachParams::new("Re0", "127.0.0.1", &s.addr.port().to_string(), NQN);
    p.hostnqn = Some(HOSTNQN.into());
    p.dhchap = keys(&s.key, &s.ctrl_key);
    s.env
        .host
        .attach_controller(&s.env.cores, &s.env.host_bdevs, p)
        .expect("attach with the right keys");
    let nb = s.env.host_bdevs.get("Re0n1").unwrap();

    // I/O on both cores until told to stop: write 4 KiB, read it back, compare.
    let stop = Arc::new(AtomicBool::new(false));
    let ops: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let workers: Vec<_> = (0..2usize)
        .map(|core| {
            let (b, stop, ops) = (nb.clone(), stop.clone(), ops[core].clone());
            s.env.cores.spawn_on(core, move || async move {
                let ch = Channel::get(&b).map_err(|e| e.to_string())?;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let lba = (core as u64 * 64 + (i % 8) * 8) % 2048;
                    let data = vec![(i as u8) ^ (core as u8 * 0x55); 4096];
                    ch.write(lba, IoBuf::from_slice(&data))
                        .await
                        .map_err(|e| format!("core {core} write {i}: {e:?}"))?;
                    let back = ch
                        .read(lba, 8)
                        .await
                        .map_err(|e| format!("core {core} read {i}: {e:?}"))?;
                    if back.as_slice() != &data[..] {
                        return Err(format!("core {core}: block {lba} read back wrong"));
                    }
                    i += 1;
                    ops.fetch_add(1, Ordering::Release);
                }
                Ok::<u64, String>(i)
            })
        })
        .collect();
    let total = |ops: &[Arc<AtomicU64>]| -> Vec<u64> {
        ops.iter().map(|o| o.load(Ordering::Acquire)).collect()
    };
    let wait_ops = |from: Vec<u64>, what: &str| {
        let t0 = Instant::now();
        while total(&ops).iter().zip(&from).any(|(n, f)| *n < f + 200) {
            assert!(t0.elapsed() < Duration::from_secs(30), "{what}: I/O stalls");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_ops(vec![0, 0], "before the rotation");

    // Rotate on the target, then on the host.
    let dir = tempfile::tempdir().unwrap();
    let key2 = s.env.add_dhchap_key(dir.path(), "k2", 21, 48);
    let ctrl2 = s.env.add_dhchap_key(dir.path(), "c2", 22, 64);
    s.env
        .target
        .nvmf_subsystem_set_keys(NQN, HOSTNQN, Some("k2".into()), Some("c2".into()))
        .unwrap();
    let at_rotation = total(&ops);
    let n = s
        .env
        .host
        .set_keys("Re0", keys(&key2, &ctrl2))
        .expect("re-authentication with the new keys");
    assert_eq!(n, 3, "the admin queue and the I/O queue of each core");
    wait_ops(at_rotation, "after the rotation");

    // The target saw each queue pair authenticate once and re-authenticate once.
    let q = s.env.target.nvmf_subsystem_get_qpairs(NQN).unwrap();
    let q = q.as_array().unwrap();
    assert_eq!(q.len(), 3, "{q:?}");
    for qp in q {
        let a = &qp["auth"];
        assert_eq!(a["reauthentications"], 1, "{qp}");
        assert_eq!(a["state"], "completed", "{qp}");
    }

    stop.store(true, Ordering::Release);
    for (core, w) in workers.into_iter().enumerate() {
        let r = tessera::reactor::block_on(w).expect("core runs");
        let n = r.unwrap_or_else(|e| panic!("I/O failed during re-authentication: {e}"));
        assert!(n >= 400, "core {core}: {n} I/O");
    }

    // A host key the target does not accept: the admin queue's re-authentication fails
    // with the controller's reason, and nothing of the key shows.
    let wrong = DhchapKey::format(Some(HashId::Sha256), &[7; 32]).to_string();
    let e = s
        .env
        .host
        .set_keys("Re0", keys(&wrong, &ctrl2))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, tessera::bdev::nvme::HostError::Reauth { qid: 0, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("AUTH_Failure1") && msg.contains("authentication failed"),
        "{msg}"
    );
    for secret in [&wrong, &ctrl2, &key2] {
        let body = secret.split(':').nth(2).unwrap();
        assert!(!msg.contains(body), "key material in the error: {msg}");
    }
    still_serving(s.addr);
}
