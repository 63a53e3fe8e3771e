//! Bad input from raw TCP hosts: each gets the specification's answer (a status, or a
//! C2HTermReq and a closed connection), nothing is written, and the target keeps
//! serving the well-behaved initiator.

mod nvmf_common;

use nvmf_common::*;
use std::sync::Arc;
use std::time::Duration;
use tessera::bdev::Bdev;
use tessera::frontend::nvmf::TransportOptions;
use tessera::nvme::pdu::{self, Header, PduType, fes, flags};
use tessera::nvme::spec::{self, Sqe, Status};

const NQN: &str = "nqn.2016-06.io.tessera:bad";
const OTHER_HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:99999999-0000-0000-0000-000000000000";

struct Setup {
    env: Env,
    addr: std::net::SocketAddr,
    backing: Arc<dyn Bdev>,
    good: Arc<dyn Bdev>,
}

/// A target whose only allowed host is [`HOSTNQN`], a good initiator on it, and known
/// contents in block 0..16.
fn setup() -> Setup {
    let env = start(2, TransportOptions::default());
    let backing = env.malloc("M0", 16 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], Some(&[HOSTNQN]));
    env.attach("Nvme0", addr, NQN, false);
    let good = env.host_bdevs.get("Nvme0n1").unwrap();
    let g = good.clone();
    env.on(0, move || async move {
        write(&g, 0, &pattern(65536, 42)).await.unwrap()
    });
    Setup {
        env,
        addr,
        backing,
        good,
    }
}

impl Setup {
    /// The good host still reads and writes, and blocks 0..16 hold what it wrote.
    fn still_serving(&self) {
        let g = self.good.clone();
        let back = self.env.on(1, move || async move {
            write(&g, 100, &pattern(8192, 7)).await.unwrap();
            assert_eq!(read(&g, 100, 8192).await.unwrap(), pattern(8192, 7));
            read(&g, 0, 65536).await.unwrap()
        });
        assert!(back == pattern(65536, 42), "bad input changed data");
        let b = self.backing.clone();
        let direct = self
            .env
            .on(0, move || async move { read(&b, 0, 65536).await.unwrap() });
        assert!(direct == pattern(65536, 42));
    }
}

fn term_req(seen: &[Header]) -> pdu::TermReq {
    match seen.first() {
        Some(Header::C2HTermReq(t)) => *t,
        other => panic!("expected a C2HTermReq, got {other:?}"),
    }
}

#[test]
fn unknown_pdu_type_gets_term_req_and_close() {
    let s = setup();
    let mut h = RawHost::connect(s.addr);
    h.ic(false, false);
    let mut b = vec![0u8; 72];
    b[0] = 0x0e;
    b[2] = 72;
    b[4..8].copy_from_slice(&72u32.to_le_bytes());
    h.send(&b);
    let t = term_req(&h.expect_closed(5));
    assert_eq!((t.fes, t.fei), (fes::INVALID_HEADER_FIELD, 0));
    s.still_serving();
}

#[test]
fn capsule_before_icreq_is_a_sequence_error() {
    let s = setup();
    let mut h = RawHost::connect(s.addr);
    let mut v = Vec::new();
    pdu::put_capsule_cmd(
        &mut v,
        &spec::connect_sqe(1, 0, 31, 0, 0).0,
        0,
        false,
        false,
        0,
    );
    h.send(&v);
    let t = term_req(&h.expect_closed(5));
    assert_eq!(t.fes, fes::PDU_SEQUENCE_ERROR);
    s.still_serving();
}

#[test]
fn oversized_and_truncated_pdus() {
    let s = setup();
    // Claims 1 MiB of in-capsule data: beyond the 8 KiB admin limit.
    let mut h = RawHost::connect(s.addr);
    h.ic(false, false);
    let mut v = Vec::new();
    pdu::put_capsule_cmd(&mut v, &Sqe::new(0x01, 1).0, 1 << 20, false, false, 0);
    h.send(&v);
    let t = term_req(&h.expect_closed(5));
    assert_eq!(t.fes, fes::DATA_LIMIT_EXCEEDED);
    // A wrong header length.
    let mut h = RawHost::connect(s.addr);
    h.ic(false, false);
    let mut v = Vec::new();
    pdu::put_capsule_cmd(&mut v, &Sqe::new(0x01, 1).0, 0, false, false, 0);
    v[2] = 80;
    h.send(&v);
    let t = term_req(&h.expect_closed(5));
    assert_eq!((t.fes, t.fei), (fes::INVALID_HEADER_FIELD, 2));
    // A truncated capsule, then the host goes away: nothing happens, nothing breaks.
    let mut h = RawHost::connect(s.addr);
    h.ic(false, false);
    let mut v = Vec::new();
    pdu::put_capsule_cmd(
        &mut v,
        &spec::connect_sqe(1, 0, 31, 0, 0).0,
        1024,
        false,
        false,
        0,
    );
    v.extend_from_slice(&[0u8; 300]);
    h.send(&v);
    drop(h);
    s.still_serving();
}

#[test]
fn wrong_header_digest_terminates() {
    let s = setup();
    let mut h = RawHost::connect(s.addr);
    h.ic(true, false);
    let mut v = Vec::new();
    pdu::put_capsule_cmd(
        &mut v,
        &spec::connect_sqe(1, 0, 31, 0, 0).0,
        0,
        true,
        false,
        0,
    );
    v[72] ^= 0xff; // corrupt the header digest
    h.send(&v);
    let t = term_req(&h.expect_closed(5));
    assert_eq!(t.fes, fes::HEADER_DIGEST_ERROR);
    s.still_serving();
}

/// A raw admin + I/O queue pair on the subsystem, as the allowed host.
fn raw_io(s: &Setup, dd: bool) -> (RawHost, RawHost) {
    let (admin, cntlid) = RawHost::admin(s.addr, NQN, 0);
    let mut io = RawHost::connect(s.addr);
    io.ic(false, dd);
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "I/O connect: {}", c.status());
    (admin, io)
}

#[test]
fn wrong_data_digest_fails_the_command_and_writes_nothing() {
    let s = setup();
    let (_admin, mut io) = raw_io(&s, true);
    let cid = io.cid();
    let mut sqe = spec::rw_sqe(cid, spec::io_opc::WRITE, 1, 0, 1, false);
    sqe.set_sgl(spec::SglDesc {
        address: 0,
        length: 4096,
        kind: spec::sgl::IN_CAPSULE,
    });
    let mut v = Vec::new();
    pdu::put_capsule_cmd(&mut v, &sqe.0, 4096, false, true, 0);
    v.extend_from_slice(&[0xee; 4096]);
    v.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    io.send(&v);
    let (c, _) = io.response(None);
    assert_eq!(c.cid, cid);
    assert_eq!(c.status(), Status::TRANSIENT_TRANSPORT_ERROR);
    // The connection stays usable: a correct write of the same block is refused only
    // because we do not send it; a read returns the old data.
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 1, false), 4096);
    io.capsule(sqe, None);
    let (c, data) = io.response(None);
    assert!(c.status().is_success());
    assert_eq!(data, pattern(65536, 42)[..4096].to_vec());
    s.still_serving();
}

#[test]
fn unknown_opcodes_bad_namespaces_and_ranges_get_their_status() {
    let s = setup();
    let (mut admin, mut io) = raw_io(&s, false);
    let cid = io.cid();
    io.capsule(Sqe::new(0x7e, cid), None);
    assert_eq!(io.response(None).0.status(), Status::INVALID_OPCODE);
    // An admin opcode on the I/O queue is unknown there.
    let cid = io.cid();
    io.capsule(spec::identify_sqe(cid, spec::cns::CONTROLLER, 0), None);
    assert_eq!(io.response(None).0.status(), Status::INVALID_OPCODE);
    let cid = io.cid();
    io.capsule(Sqe::new(0x7e, cid), None);
    assert_eq!(io.response(None).0.status(), Status::INVALID_OPCODE);
    let cid = admin.cid();
    admin.capsule(Sqe::new(0x55, cid), None);
    assert_eq!(admin.response(None).0.status(), Status::INVALID_OPCODE);
    // Namespace 7 does not exist.
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 7, 0, 1, false), 4096);
    io.capsule(sqe, None);
    assert_eq!(io.response(None).0.status(), Status::INVALID_NAMESPACE);
    // Past the end of the namespace.
    let n = s.backing.num_blocks();
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, n, 1, false), 4096);
    io.capsule(sqe, None);
    assert_eq!(io.response(None).0.status(), Status::LBA_OUT_OF_RANGE);
    // A write whose SGL length disagrees with its block count.
    let cid = io.cid();
    let mut sqe = spec::rw_sqe(cid, spec::io_opc::WRITE, 1, 0, 2, false);
    sqe.set_sgl(spec::SglDesc {
        address: 0,
        length: 4096,
        kind: spec::sgl::IN_CAPSULE,
    });
    let mut v = Vec::new();
    pdu::put_capsule_cmd(&mut v, &sqe.0, 4096, false, false, 0);
    v.extend_from_slice(&[0xee; 4096]);
    io.send(&v);
    assert_eq!(
        io.response(None).0.status(),
        Status::SGL_DATA_LENGTH_INVALID
    );
    // Too big for MDTS.
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(
        spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 64, false),
        256 << 10,
    );
    io.capsule(sqe, None);
    assert_eq!(
        io.response(None).0.status(),
        Status::SGL_DATA_LENGTH_INVALID
    );
    s.still_serving();
}

#[test]
fn h2c_data_with_a_bad_transfer_tag_terminates() {
    let s = setup();
    let (_admin, mut io) = raw_io(&s, false);
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(
        spec::rw_sqe(cid, spec::io_opc::WRITE, 1, 0, 16, false),
        65536,
    );
    io.capsule(sqe, None);
    let r = match io.recv() {
        Got::Pdu(f, _) => match f.header {
            Header::R2T(r) => r,
            h => panic!("expected R2T, got {h:?}"),
        },
        Got::Closed => panic!("closed"),
    };
    let mut v = Vec::new();
    pdu::put_data_hdr(
        &mut v,
        PduType::H2CData,
        &pdu::DataHdr {
            cccid: cid,
            ttag: r.ttag.wrapping_add(50),
            datao: 0,
            datal: 4096,
            last: false,
            success: false,
        },
        false,
        false,
        0,
    );
    v.extend_from_slice(&[0xee; 4096]);
    io.send(&v);
    let t = term_req(&io.expect_closed(5));
    assert_eq!((t.fes, t.fei), (fes::INVALID_HEADER_FIELD, 10));
    s.still_serving();
}

#[test]
fn h2c_data_out_of_range_terminates() {
    let s = setup();
    let (_admin, mut io) = raw_io(&s, false);
    let cid = io.cid();
    let sqe =
        spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::WRITE, 1, 0, 2, false), 8192);
    io.capsule(sqe, None);
    let r = match io.recv() {
        Got::Pdu(f, _) => match f.header {
            Header::R2T(r) => r,
            h => panic!("expected R2T, got {h:?}"),
        },
        Got::Closed => panic!("closed"),
    };
    let mut v = Vec::new();
    pdu::put_data_hdr(
        &mut v,
        PduType::H2CData,
        &pdu::DataHdr {
            cccid: cid,
            ttag: r.ttag,
            datao: 4096,
            datal: 8192,
            last: true,
            success: false,
        },
        false,
        false,
        0,
    );
    v.extend_from_slice(&[0xee; 8192]);
    io.send(&v);
    let t = term_req(&io.expect_closed(5));
    assert_eq!(t.fes, fes::DATA_OUT_OF_RANGE);
    s.still_serving();
}

#[test]
fn connect_to_unknown_nqn_from_unknown_host_or_with_bad_queue_ids() {
    let s = setup();
    // Unknown subsystem: Connect Invalid Parameters, the subnqn field of the data.
    let mut h = RawHost::connect(s.addr);
    h.ic(false, false);
    let c = h.connect_cmd("nqn.2016-06.io.tessera:nope", HOSTNQN, 0, 0xffff, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, 256 | 1 << 16);
    // A host not on the list.
    let c = h.connect_cmd(NQN, OTHER_HOST, 0, 0xffff, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_HOST);
    // No host NQN at all (what SPDK's host tools send unless told one): not on the list.
    let c = h.connect_cmd(NQN, "", 0, 0xffff, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_HOST);
    // An I/O queue for a controller that does not exist.
    let c = h.connect_cmd(NQN, HOSTNQN, 1, 0x1234, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, 16 | 1 << 16);
    // Commands before a successful Connect are out of sequence.
    let cid = h.cid();
    h.capsule(spec::identify_sqe(cid, spec::cns::CONTROLLER, 0), None);
    assert_eq!(h.response(None).0.status(), Status::COMMAND_SEQUENCE_ERROR);
    // I/O queue IDs beyond what Set Features granted, and a QID used twice.
    let (mut admin, cntlid) = RawHost::admin(s.addr, NQN, 0);
    let cid = admin.cid();
    admin.capsule(
        spec::set_features_sqe(cid, spec::fid::NUMBER_OF_QUEUES, 0),
        None,
    );
    let (c, _) = admin.response(None);
    assert!(c.status().is_success());
    assert_eq!(c.dw0, 0, "one I/O queue granted");
    let mut io = RawHost::connect(s.addr);
    io.ic(false, false);
    let c = io.connect_cmd(NQN, HOSTNQN, 2, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, 42, "the QID field of the command");
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success());
    let mut io2 = RawHost::connect(s.addr);
    io2.ic(false, false);
    let c = io2.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    // Another host may not join this controller.
    let c = io2.connect_cmd(NQN, OTHER_HOST, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_HOST);
    s.still_serving();
}

#[test]
fn a_host_without_an_nqn_connects_where_any_host_is_allowed() {
    // SPDK's host tools (spdk_nvme_perf, spdk_nvme_identify) send an empty host NQN
    // unless told one; SPDK's target accepts it when the subsystem allows any host.
    let s = setup();
    const OPEN: &str = "nqn.2016-06.io.tessera:open";
    let addr = s.env.subsystem(OPEN, &["M0"], None);
    let (mut admin, cntlid) = RawHost::admin_as(addr, OPEN, "", 0);
    let cid = admin.cid();
    admin.capsule(
        spec::set_features_sqe(cid, spec::fid::NUMBER_OF_QUEUES, 0),
        None,
    );
    assert!(admin.response(None).0.status().is_success());
    let mut io = RawHost::connect(addr);
    io.ic(false, false);
    // Its I/O queues must come from the same (empty) host NQN.
    let c = io.connect_cmd(OPEN, HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    assert_eq!(c.dw0, 512 | 1 << 16, "the host NQN field of the data");
    let c = io.connect_cmd(OPEN, "", 1, cntlid, 0);
    assert!(c.status().is_success(), "{}", c.status());
    s.still_serving();
}

#[test]
fn keep_alive_expiry_tears_the_controller_down() {
    let s = setup();
    let (mut admin, cntlid) = RawHost::admin(s.addr, NQN, 600);
    // Keep-alives within the timeout keep it.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        let cid = admin.cid();
        admin.capsule(Sqe::new(spec::admin_opc::KEEP_ALIVE, cid), None);
        assert!(admin.response(None).0.status().is_success());
    }
    let mut io = RawHost::connect(s.addr);
    io.ic(false, false);
    assert!(
        io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0)
            .status()
            .is_success()
    );
    // Then silence: the target closes both queues.
    let t0 = std::time::Instant::now();
    admin.expect_closed(5);
    io.expect_closed(5);
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "closed after {:?}",
        t0.elapsed()
    );
    // The controller is gone: its ID is refused.
    let mut again = RawHost::connect(s.addr);
    again.ic(false, false);
    let c = again.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert_eq!(c.status(), Status::CONNECT_INVALID_PARAMETERS);
    // The initiator sends its own keep-alives and is unaffected.
    assert!(!s.env.host.controller("Nvme0").unwrap().is_failed());
    s.still_serving();
}

#[test]
fn admin_commands_answer_like_the_spec() {
    let s = setup();
    let (mut admin, _) = raw_io(&s, false);
    // Property Get CAP: MQES = 127, NVM command set.
    let cid = admin.cid();
    admin.capsule(spec::property_get_sqe(cid, spec::prop::CAP, true), None);
    let (c, _) = admin.response(None);
    let cap = c.dw0 as u64 | (c.dw1 as u64) << 32;
    assert_eq!(cap & 0xffff, 127);
    assert_ne!(cap & (1 << 37), 0);
    // A 4-byte read of the 8-byte CAP is an invalid field.
    let cid = admin.cid();
    admin.capsule(spec::property_get_sqe(cid, spec::prop::CAP, false), None);
    assert_eq!(admin.response(None).0.status(), Status::INVALID_FIELD);
    // Unknown log page; SMART log counts the good host's writes.
    let cid = admin.cid();
    admin.capsule(spec::get_log_page_sqe(cid, 0x42, 0, 512, 0), None);
    assert_eq!(admin.response(None).0.status(), Status::INVALID_LOG_PAGE);
    let cid = admin.cid();
    admin.capsule(
        spec::get_log_page_sqe(cid, spec::lid::SMART_HEALTH, 0xffff_ffff, 512, 0),
        None,
    );
    let (c, d) = admin.response(None);
    assert!(c.status().is_success());
    let smart = tessera::nvme::pages::SmartLog::decode(&d).unwrap();
    assert_eq!(smart.temperature_k, 298);
    // Too many AERs.
    for _ in 0..4 {
        let cid = admin.cid();
        admin.capsule(Sqe::new(spec::admin_opc::ASYNC_EVENT_REQUEST, cid), None);
    }
    let cid = admin.cid();
    admin.capsule(Sqe::new(spec::admin_opc::ASYNC_EVENT_REQUEST, cid), None);
    let (c, _) = admin.response(None);
    assert_eq!(c.cid, cid);
    assert_eq!(c.status(), Status::AER_LIMIT_EXCEEDED);
    // Abort says "not aborted".
    let cid = admin.cid();
    let mut sqe = Sqe::new(spec::admin_opc::ABORT, cid);
    sqe.set_cdw(10, 1 | 5 << 16);
    admin.capsule(sqe, None);
    let (c, _) = admin.response(None);
    assert!(c.status().is_success());
    assert_eq!(c.dw0 & 1, 1);
    // Identify of an inactive namespace is zeros; of namespace 0 an error.
    let cid = admin.cid();
    admin.capsule(spec::identify_sqe(cid, spec::cns::NAMESPACE, 5), None);
    let (c, d) = admin.response(None);
    assert!(c.status().is_success());
    assert!(d.iter().all(|&b| b == 0));
    let cid = admin.cid();
    admin.capsule(spec::identify_sqe(cid, spec::cns::NAMESPACE, 0), None);
    assert_eq!(admin.response(None).0.status(), Status::INVALID_NAMESPACE);
    // Shutdown completes and takes the I/O queues down.
    let cid = admin.cid();
    admin.capsule(
        spec::property_set_sqe(cid, spec::prop::CC, 0x46_4001, false),
        None,
    );
    assert!(admin.response(None).0.status().is_success());
    let cid = admin.cid();
    admin.capsule(spec::property_get_sqe(cid, spec::prop::CSTS, false), None);
    let (c, _) = admin.response(None);
    assert_eq!((c.dw0 >> 2) & 3, 2, "shutdown complete");
    let _ = flags::HDGSTF;
    s.still_serving();
}

#[test]
fn media_errors_become_unrecovered_read_error_and_write_fault() {
    use tessera::bdev::error::{ErrorBdev, FailRule, Trigger};
    use tessera::bdev::{IoKind, IoStatus};
    let env = start(1, TransportOptions::default());
    let base = env.malloc("M0", 4 << 20, 4096);
    let eb = ErrorBdev::create("E0", base, false).unwrap();
    let e: Arc<dyn Bdev> = eb.clone();
    env.bdevs.add(e).unwrap();
    let addr = env.subsystem(NQN, &["E0"], None);
    let (_admin, cntlid) = RawHost::admin(addr, NQN, 0);
    let mut io = RawHost::connect(addr);
    io.ic(false, false);
    assert!(
        io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0)
            .status()
            .is_success()
    );
    for kind in [IoKind::Read, IoKind::Write] {
        eb.inject(FailRule {
            kinds: vec![kind],
            trigger: Trigger::Nth(1),
            status: IoStatus::MediaError,
        });
    }
    let cid = io.cid();
    let sqe = spec::with_transport_sgl(spec::rw_sqe(cid, spec::io_opc::READ, 1, 0, 1, false), 4096);
    io.capsule(sqe, None);
    let (c, data) = io.response(None);
    assert_eq!(c.status(), Status::UNRECOVERED_READ_ERROR);
    assert!(data.is_empty(), "no data for a failed read");
    let cid = io.cid();
    io.capsule(
        spec::rw_sqe(cid, spec::io_opc::WRITE, 1, 0, 1, false),
        Some(&[1u8; 4096]),
    );
    assert_eq!(io.response(None).0.status(), Status::WRITE_FAULT);
    // The initiator reports them as media errors.
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    eb.inject(FailRule {
        kinds: vec![IoKind::Read],
        trigger: Trigger::Nth(1),
        status: IoStatus::MediaError,
    });
    let st = env.on(0, move || async move { read(&nb, 0, 4096).await });
    assert_eq!(st, Err(IoStatus::MediaError));
}
