//! The initiator bdev against the target, over loopback TCP, on two reactors.

mod nvmf_common;

use nvmf_common::*;
use std::sync::Arc;
use std::time::Duration;
use tessera::bdev::nvme::{self as initiator, AttachParams};
use tessera::bdev::{Bdev, BdevIo, Channel, IoStatus};
use tessera::frontend::nvmf::{NamespaceParams, TransportOptions};
use tessera::nvme::pages::disc;

const NQN: &str = "nqn.2016-06.io.tessera:test";

fn round_trips(env: &Env, bdev: &Arc<dyn Bdev>, core: usize, seed: u64) {
    let b = bdev.clone();
    let bs = b.block_size() as usize;
    env.on(core, move || async move {
        for (i, len) in [bs, 8 * bs, 64 << 10, 256 << 10, 1 << 20]
            .into_iter()
            .enumerate()
        {
            let off = (i as u64 * 512 + seed * 4096) % (b.num_blocks() - (len / bs) as u64);
            let data = pattern(len, seed * 100 + i as u64);
            write(&b, off, &data).await.expect("write");
            let back = read(&b, off, len).await.expect("read");
            assert!(
                back == data,
                "{len} bytes at block {off} read back differently"
            );
        }
    });
}

#[test]
fn connect_identify_and_round_trip_from_two_cores() {
    let env = start(2, TransportOptions::default());
    let backing = env.malloc("M0", 64 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    let names = env.attach("Nvme0", addr, NQN, false);
    assert_eq!(names, vec!["Nvme0n1".to_string()]);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    assert_eq!(nb.block_size(), 4096);
    assert_eq!(nb.num_blocks(), backing.num_blocks());
    assert_eq!(
        nb.uuid(),
        backing.uuid(),
        "the namespace UUID is the bdev's"
    );
    let c = env.host.controller("Nvme0").unwrap();
    assert_eq!(c.identify().serial_number, "TESSERA-TEST-1");
    assert_eq!(c.identify().subnqn, NQN);
    assert_eq!(c.num_io_queues(), 2);
    // Data written through the target is on the backing bdev, and back.
    round_trips(&env, &nb, 0, 1);
    round_trips(&env, &nb, 1, 2);
    let be = backing.clone();
    let direct = env.on(0, move || async move { read(&be, 0, 4096).await.unwrap() });
    let nb2 = nb.clone();
    let remote = env.on(1, move || async move { read(&nb2, 0, 4096).await.unwrap() });
    assert_eq!(direct, remote);
    // The target lists the controller with both I/O queues.
    let ctrls = env.target.nvmf_subsystem_get_controllers(NQN).unwrap();
    assert_eq!(ctrls.as_array().unwrap().len(), 1, "{ctrls}");
    assert_eq!(ctrls[0]["num_io_qpairs"], 2, "{ctrls}");
    assert_eq!(ctrls[0]["hostnqn"], HOSTNQN);
}

#[test]
fn digests_on_with_512_byte_blocks() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 16 << 20, 512);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, true);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    assert_eq!(nb.block_size(), 512);
    round_trips(&env, &nb, 0, 3);
    round_trips(&env, &nb, 1, 4);
}

#[test]
fn large_writes_go_through_r2t_and_split_by_mdts() {
    let opts = TransportOptions {
        in_capsule_data_size: 4096,
        io_unit_size: 32 << 10,
        max_io_size: 1 << 20,
        ..Default::default()
    };
    let env = start(2, opts);
    env.malloc("M0", 64 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    let b = nb.clone();
    env.on(1, move || async move {
        // 1 MiB: one command, one R2T, 32 H2CData PDUs. 3 MiB + 4 KiB: four commands.
        for (off, len) in [(0u64, 1usize << 20), (1000, (3 << 20) + 4096)] {
            let data = pattern(len, off);
            write(&b, off, &data).await.unwrap();
            assert!(read(&b, off, len).await.unwrap() == data);
        }
    });
}

#[test]
fn several_queues_on_several_cores_in_parallel() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 64 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    let handles: Vec<_> = (0..2)
        .map(|core| {
            let b = nb.clone();
            env.cores.spawn_on(core, move || async move {
                // 32 requests in flight per core, each core in its own half.
                let ch = Channel::get(&b).unwrap();
                let base = core as u64 * 8192;
                let mut tasks = Vec::new();
                for i in 0..32u64 {
                    let ch = ch.clone();
                    tasks.push(tessera::reactor::spawn_local(async move {
                        for round in 0..8u64 {
                            let off = base + i * 64 + round * 4;
                            let data = pattern(16384, off);
                            ch.write(off, tessera::bdev::IoBuf::from_slice(&data))
                                .await
                                .unwrap();
                            let back = ch.read(off, 4).await.unwrap();
                            assert!(back.as_slice() == &data[..]);
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            })
        })
        .collect();
    for h in handles {
        tessera::reactor::block_on(h).unwrap();
    }
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let env = start(1, TransportOptions::default());
    env.malloc("M0", 16 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    assert!(nb.unmap_reads_zeroes());
    let b = nb.clone();
    env.on(0, move || async move {
        let ch = Channel::get(&b).unwrap();
        let data = pattern(64 << 10, 7);
        write(&b, 100, &data).await.unwrap();
        ch.flush().await.unwrap();
        ch.unmap(100, 4).await.unwrap();
        ch.write_zeroes(108, 4).await.unwrap();
        let back = read(&b, 100, 64 << 10).await.unwrap();
        assert!(
            back[..16384].iter().all(|&x| x == 0),
            "deallocated blocks read zeros"
        );
        assert_eq!(&back[16384..32768], &data[16384..32768]);
        assert!(
            back[32768..49152].iter().all(|&x| x == 0),
            "zeroed blocks read zeros"
        );
        assert_eq!(&back[49152..], &data[49152..]);
        // Out of range: the target's LBA Out of Range comes back as the bdev status.
        let n = b.num_blocks();
        let (_, st) = ch
            .io(BdevIo::read(n - 1, 1, tessera::bdev::IoBuf::new(4096)))
            .await;
        assert_eq!(st, IoStatus::Success);
    });
}

#[test]
fn read_only_namespace_refuses_writes_as_write_protected() {
    let env = start(1, TransportOptions::default());
    let backing = env.malloc("M0", 16 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    let b = nb.clone();
    env.on(0, move || async move {
        write(&b, 0, &pattern(4096, 1)).await.unwrap()
    });
    // The backing bdev turns read-only after the host attached, so the host still sends
    // writes and the target must refuse them.
    backing.props().set_read_only(true);
    let b = nb.clone();
    let st = env.on(
        0,
        move || async move { write(&b, 0, &pattern(4096, 2)).await },
    );
    assert_eq!(st, Err(IoStatus::WriteProtected));
    let b = nb.clone();
    let back = env.on(0, move || async move { read(&b, 0, 4096).await.unwrap() });
    assert_eq!(back, pattern(4096, 1), "the refused write changed nothing");
}

#[test]
fn namespace_added_at_run_time_raises_the_async_event() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 16 << 20, 4096);
    env.malloc("M1", 8 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let c = env.host.controller("Nvme0").unwrap();
    assert!(c.async_events().is_empty());
    let nsid = env
        .target
        .nvmf_subsystem_add_ns(
            NQN,
            NamespaceParams {
                bdev_name: "M1".into(),
                nsid: None,
                uuid: None,
            },
        )
        .unwrap();
    assert_eq!(nsid, 2);
    wait_for(5, "the AER completion", || !c.async_events().is_empty());
    let ev = &c.async_events()[0];
    assert_eq!(ev.event_type, 2, "a notice");
    assert_eq!(ev.info, 0, "namespace attribute changed");
    assert_eq!(ev.log_page, 4, "changed namespace list");
    assert_eq!(ev.changed_nsids, vec![2]);
    // Removing it raises another event (the log was read, so notices are unmasked).
    env.target.nvmf_subsystem_remove_ns(NQN, 2).unwrap();
    wait_for(5, "the second AER completion", || {
        c.async_events().len() == 2
    });
    assert_eq!(c.async_events()[1].changed_nsids, vec![2]);
    // A resize of namespace 1, announced through the hook, reaches the host's bdev.
    let m0 = env.bdevs.get("M0").unwrap();
    let half = m0.num_blocks() / 2;
    m0.props().set_num_blocks(half);
    assert_eq!(env.target.notify_bdev_resized("M0"), 1);
    wait_for(5, "the third AER completion", || {
        c.async_events().len() == 3
    });
    assert_eq!(c.async_events()[2].changed_nsids, vec![1]);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    wait_for(5, "the host bdev to shrink", || nb.num_blocks() == half);
}

#[test]
fn host_disconnecting_mid_io_is_cleaned_up_and_others_go_on() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 16 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    // A raw host connects an admin and an I/O queue, starts a 128 KiB write (the target
    // answers with an R2T) and vanishes.
    let (admin, cntlid) = RawHost::admin(addr, NQN, 0);
    let mut io = RawHost::connect(addr);
    io.ic(false, false);
    let c = io.connect_cmd(NQN, HOSTNQN, 1, cntlid, 0);
    assert!(c.status().is_success(), "{}", c.status());
    let cid = io.cid();
    let sqe = tessera::nvme::spec::with_transport_sgl(
        tessera::nvme::spec::rw_sqe(cid, 0x01, 1, 0, 32, false),
        128 << 10,
    );
    io.capsule(sqe, None);
    match io.recv() {
        Got::Pdu(f, _) => assert!(matches!(f.header, tessera::nvme::pdu::Header::R2T(_))),
        Got::Closed => panic!("closed"),
    }
    assert_eq!(
        env.target
            .nvmf_subsystem_get_controllers(NQN)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(io);
    drop(admin.s.shutdown(std::net::Shutdown::Both));
    wait_for(5, "the raw host's controller to go", || {
        env.target
            .nvmf_subsystem_get_controllers(NQN)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
            == 1
    });
    // The initiator's controller goes on.
    round_trips(&env, &nb, 1, 9);
}

#[test]
fn discovery_lists_every_subsystem_listener() {
    let env = start(1, TransportOptions::default());
    env.malloc("M0", 4 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    let port = addr.port().to_string();
    let entries = env.on(0, move || async move {
        initiator::discover("127.0.0.1", &port, HOSTNQN, Default::default())
            .await
            .unwrap()
    });
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].subnqn, NQN);
    assert_eq!(entries[0].trtype, disc::TRTYPE_TCP);
    assert_eq!(entries[0].traddr, "127.0.0.1");
    assert_eq!(entries[0].trsvcid, addr.port().to_string());
}

#[test]
fn detach_fails_later_io_and_attach_again_works() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 4 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    env.attach("Nvme0", addr, NQN, false);
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    round_trips(&env, &nb, 0, 5);
    env.host
        .detach_controller(&env.host_bdevs, "Nvme0")
        .unwrap();
    assert!(env.host_bdevs.get("Nvme0n1").is_err());
    let b = nb.clone();
    let st = env.on(0, move || async move { read(&b, 0, 4096).await });
    assert!(st.is_err(), "I/O after detach fails");
    wait_for(5, "the target to drop the controller", || {
        env.target
            .nvmf_subsystem_get_controllers(NQN)
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty()
    });
    let mut p = AttachParams::new("Nvme1", "127.0.0.1", &addr.port().to_string(), NQN);
    p.keep_alive_timeout_ms = Some(2000);
    env.host
        .attach_controller(&env.cores, &env.host_bdevs, p)
        .unwrap();
    let nb = env.host_bdevs.get("Nvme1n1").unwrap();
    round_trips(&env, &nb, 1, 6);
    // Keep-alives keep it alive past its KATO.
    std::thread::sleep(Duration::from_millis(2500));
    round_trips(&env, &nb, 0, 7);
    assert!(!env.host.controller("Nvme1").unwrap().is_failed());
}

/// A TCP proxy in front of `target` whose answers can be held back: while `hold` is
/// set, nothing travels from the target to the host.
fn holding_proxy(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let h = hold.clone();
    std::thread::spawn(move || {
        for host in l.incoming() {
            let Ok(host) = host else { return };
            let Ok(tgt) = TcpStream::connect(target) else {
                return;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream, hold: Option<Arc<AtomicBool>>| {
                std::thread::spawn(move || {
                    let mut b = vec![0u8; 64 << 10];
                    loop {
                        match from.read(&mut b) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                // What arrives while held waits here.
                                while hold.as_ref().is_some_and(|h| h.load(Ordering::Acquire)) {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                                if to.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            pipe(host.try_clone().unwrap(), tgt.try_clone().unwrap(), None);
            pipe(tgt, host, Some(h.clone()));
        }
    });
    (addr, hold)
}

#[test]
fn a_keep_alive_in_flight_at_detach_does_not_fail_the_controller() {
    let env = start(2, TransportOptions::default());
    env.malloc("M0", 4 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    let (proxy, hold) = holding_proxy(addr);
    let mut p = AttachParams::new("Nvme0", "127.0.0.1", &proxy.port().to_string(), NQN);
    // A keep alive every 100 ms; the target's KATO (1 s) outlives the test's hold.
    p.keep_alive_timeout_ms = Some(1000);
    p.hostnqn = Some(HOSTNQN.into());
    env.host
        .attach_controller(&env.cores, &env.host_bdevs, p)
        .unwrap();
    let ctrlr = env.host.controller("Nvme0").unwrap();
    let nb = env.host_bdevs.get("Nvme0n1").unwrap();
    round_trips(&env, &nb, 0, 8);
    // Hold the target's answers past a keep-alive period: one is in flight.
    hold.store(true, std::sync::atomic::Ordering::Release);
    std::thread::sleep(Duration::from_millis(700));
    assert!(!ctrlr.is_failed(), "a held answer is not a failure yet");
    env.host
        .detach_controller(&env.host_bdevs, "Nvme0")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !ctrlr.is_failed(),
        "the keep alive that our own detach cut short marked the controller lost"
    );
    hold.store(false, std::sync::atomic::Ordering::Release);
}

/// How 100 one-block reads, one at a time on a raw I/O queue of 32 entries connected
/// with `cattr`, end: `true` for a SUCCESS C2HData PDU, `false` for a response capsule
/// (whose SQ head must be the current one).
fn read_endings(opts: TransportOptions, cattr: u8) -> Vec<bool> {
    use tessera::nvme::pdu::Header;
    use tessera::nvme::spec;
    let env = start(1, opts);
    env.malloc("M0", 1 << 20, 4096);
    let addr = env.subsystem(NQN, &["M0"], None);
    let (_admin, cntlid) = RawHost::admin(addr, NQN, 0);
    let mut io = RawHost::connect(addr);
    io.ic(false, false);
    let c = io.connect_with(NQN, HOSTNQN, 1, cntlid, 0, cattr);
    assert!(c.status().is_success(), "{}", c.status());
    let mut sent = 1u16; // the Connect
    let mut endings = Vec::new();
    for i in 0..100u64 {
        let cid = io.cid();
        io.capsule(
            spec::with_transport_sgl(spec::rw_sqe(cid, 0x02, 1, i % 256, 1, false), 4096),
            None,
        );
        sent += 1;
        let mut data = 0;
        let ending = loop {
            match io.recv() {
                Got::Pdu(f, d) => match f.header {
                    Header::C2HData(h) => {
                        assert_eq!(h.cccid, cid);
                        data += d.len();
                        if h.success {
                            break true;
                        }
                    }
                    Header::CapsuleResp(c) => {
                        let cqe = spec::Cqe::decode(&c);
                        assert!(cqe.status().is_success(), "{}", cqe.status());
                        assert_eq!(cqe.cid, cid);
                        assert_eq!(cqe.sqhd, sent % 32, "the response carries an old SQ head");
                        break false;
                    }
                    h => panic!("unexpected {h:?}"),
                },
                Got::Closed => panic!("closed"),
            }
        };
        assert_eq!(data, 4096);
        endings.push(ending);
    }
    endings
}

fn longest_run_of_success(endings: &[bool]) -> usize {
    endings.split(|&e| !e).map(<[bool]>::len).max().unwrap_or(0)
}

#[test]
fn reads_skip_the_response_capsule_but_keep_the_hosts_sq_head_fresh() {
    // The host disabled SQ flow control: no response capsule after a read.
    let e = read_endings(
        TransportOptions::default(),
        tessera::nvme::spec::CATTR_DISABLE_SQ_FLOW_CONTROL,
    );
    assert!(e.iter().all(|&s| s), "{e:?}");
    // It did not (SPDK's host tools): SUCCESS, but a capsule with the current head
    // before the host's view falls a quarter of the queue (8 of 32) behind.
    let e = read_endings(TransportOptions::default(), 0);
    assert_eq!(longest_run_of_success(&e), 7, "{e:?}");
    assert!(e.iter().filter(|&&s| s).count() >= 85, "{e:?}");
    // c2h_success off: a capsule after every read.
    let off = TransportOptions {
        c2h_success: false,
        ..TransportOptions::default()
    };
    let e = read_endings(off, tessera::nvme::spec::CATTR_DISABLE_SQ_FLOW_CONTROL);
    assert!(e.iter().all(|&s| !s), "{e:?}");
}
