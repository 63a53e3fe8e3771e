//! The NBD server on the wire, through a raw TcpStream: the handshake's options and
//! errors, every request error, malformed and hostile input, pipelining, flush ordering
//! across connections, requests not aligned to the block size (read-modify-write, also
//! concurrent and overlapping), removal of exports and shutdown.

mod nbd_support;
mod process_support;

use nbd_support::*;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera::bdev::error::{ErrorBdev, FailRule, Trigger};
use tessera::bdev::{Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Deferred, IoKind, IoStatus};
use tessera::frontend::nbd::proto::*;
use tessera::frontend::nbd::{ConnState, NbdExport};
use tessera::reactor;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn modes() -> [Opts; 3] {
    [
        Opts::default(),
        Opts {
            structured: true,
            ..Opts::default()
        },
        Opts {
            structured: true,
            extended: true,
            ..Opts::default()
        },
    ]
}

fn one_disk() -> TestServer {
    TestServer::start(vec![NbdExport::new("disk", malloc("M0", 16))])
}

// ---------------------------------------------------------------------------------------
// Handshake.

#[test]
fn handshake_options_get_their_replies() {
    let srv = TestServer::start(vec![
        NbdExport::new("disk", malloc("M0", 16)).with_description("the disk"),
        NbdExport::new("other", malloc("M1", 8)),
    ]);
    let mut s = greet(srv.addr).unwrap();

    let r = option(&mut s, OPT_LIST, &[]).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].0, REP_SERVER);
    assert_eq!(r[0].1, encode_rep_server("disk", "the disk"));
    assert_eq!(r[1].1, encode_rep_server("other", ""));
    assert_eq!(r[2].0, REP_ACK);

    let r = option(&mut s, OPT_LIST, b"x").unwrap();
    assert_eq!(r[0].0, REP_ERR_INVALID, "LIST with data");

    let r = option(
        &mut s,
        OPT_INFO,
        &encode_info_request("disk", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]),
    )
    .unwrap();
    let infos: Vec<Info> = r
        .iter()
        .filter(|(t, _)| *t == REP_INFO)
        .map(|(_, d)| parse_info(d).unwrap())
        .collect();
    assert_eq!(r.last().unwrap().0, REP_ACK);
    let flags = infos
        .iter()
        .find_map(|i| match i {
            Info::Export { size_bytes, flags } => {
                assert_eq!(*size_bytes, 16 * MIB);
                Some(*flags)
            }
            _ => None,
        })
        .unwrap();
    for f in [
        TFLAG_HAS_FLAGS,
        TFLAG_SEND_FLUSH,
        TFLAG_SEND_FUA,
        TFLAG_SEND_TRIM,
        TFLAG_SEND_WRITE_ZEROES,
        TFLAG_CAN_MULTI_CONN,
    ] {
        assert_ne!(flags & f, 0, "flag {f:#x} in {flags:#x}");
    }
    assert_eq!(flags & (TFLAG_READ_ONLY | TFLAG_SEND_DF), 0, "{flags:#x}");
    assert!(infos.contains(&Info::Name("disk".into())));
    assert!(infos.contains(&Info::Description("the disk".into())));
    // Minimum 1: any byte range is served (unaligned ones by read-modify-write).
    assert!(infos.contains(&Info::BlockSize(BlockSizes {
        min_bytes: 1,
        preferred_bytes: 4096,
        max_bytes: 32 << 20
    })));

    let r = option(&mut s, OPT_GO, &encode_info_request("nope", &[])).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("nope"));

    // Malformed INFO data: the name length runs past the data.
    let mut bad = encode_info_request("disk", &[]);
    bad[3] = 200;
    let r = option(&mut s, OPT_GO, &bad).unwrap();
    assert_eq!(r[0].0, REP_ERR_INVALID);

    assert_eq!(option(&mut s, 99, b"abc").unwrap()[0].0, REP_ERR_UNSUP);
    assert_eq!(
        option(&mut s, OPT_STARTTLS, &[]).unwrap()[0].0,
        REP_ERR_POLICY
    );

    // Metadata contexts need structured replies first.
    let q = encode_meta_context_request("disk", &[]);
    assert_eq!(
        option(&mut s, OPT_LIST_META_CONTEXT, &q).unwrap()[0].0,
        REP_ERR_INVALID
    );
    assert_eq!(
        option(&mut s, OPT_STRUCTURED_REPLY, &[]).unwrap()[0].0,
        REP_ACK
    );
    for queries in [&[][..], &["base:"][..], &["base:allocation", "qemu:x"][..]] {
        let r = option(
            &mut s,
            OPT_LIST_META_CONTEXT,
            &encode_meta_context_request("disk", queries),
        )
        .unwrap();
        // An empty query lists every context: qemu:allocation-depth too.
        let n = if queries.is_empty() { 3 } else { 2 };
        assert_eq!(r.len(), n, "{queries:?}");
        assert_eq!(
            r[0],
            (
                REP_META_CONTEXT,
                encode_meta_context(0, META_BASE_ALLOCATION)
            )
        );
        if queries.is_empty() {
            assert_eq!(
                r[1],
                (
                    REP_META_CONTEXT,
                    encode_meta_context(0, META_ALLOCATION_DEPTH)
                )
            );
        }
    }
    let r = option(
        &mut s,
        OPT_LIST_META_CONTEXT,
        &encode_meta_context_request("disk", &["qemu:dirty-bitmap:x"]),
    )
    .unwrap();
    assert_eq!(r, vec![(REP_ACK, vec![])], "unknown namespaces are ignored");
    let r = option(
        &mut s,
        OPT_SET_META_CONTEXT,
        &encode_meta_context_request("disk", &["base:"]),
    )
    .unwrap();
    assert_eq!(r, vec![(REP_ACK, vec![])], "`base:` selects nothing");
    let r = option(
        &mut s,
        OPT_SET_META_CONTEXT,
        &encode_meta_context_request("disk", &["nocolon"]),
    )
    .unwrap();
    assert_eq!(r[0].0, REP_ERR_INVALID);
    let r = option(
        &mut s,
        OPT_SET_META_CONTEXT,
        &encode_meta_context_request("nope", &["base:allocation"]),
    )
    .unwrap();
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    // A query count that cannot fit the data.
    let mut bad = encode_meta_context_request("disk", &[]);
    let n = bad.len();
    bad[n - 1] = 9;
    assert_eq!(
        option(&mut s, OPT_SET_META_CONTEXT, &bad).unwrap()[0].0,
        REP_ERR_INVALID
    );

    assert_eq!(
        option(&mut s, OPT_EXTENDED_HEADERS, &[]).unwrap()[0].0,
        REP_ACK
    );
    assert_eq!(
        option(&mut s, OPT_STRUCTURED_REPLY, &[]).unwrap()[0].0,
        REP_ERR_EXT_HEADER_REQD
    );

    let r = option(&mut s, OPT_ABORT, &[]).unwrap();
    assert_eq!(r[0].0, REP_ACK);
    assert!(closed_within(&mut s, Duration::from_secs(5)));
}

#[test]
fn export_name_and_default_export() {
    let srv = one_disk();
    // Old-style NBD_OPT_EXPORT_NAME, with and without the 124 zero bytes.
    for no_zeroes in [true, false] {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        read_exact(&mut s, GREETING_LEN).unwrap();
        let cflags = FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 };
        s.write_all(&cflags.to_be_bytes()).unwrap();
        let mut o = Vec::new();
        encode_option(&mut o, OPT_EXPORT_NAME, b"disk");
        s.write_all(&o).unwrap();
        let r = read_exact(&mut s, 10).unwrap();
        assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), 16 * MIB);
        if !no_zeroes {
            assert_eq!(read_exact(&mut s, 124).unwrap(), vec![0u8; 124]);
        }
        let mut c = RawClient {
            s,
            reply: ReplyMode::Simple,
            size: 16 * MIB,
            flags: 0,
            block_sizes: None,
        };
        assert_eq!(c.write(4096, &[7u8; 4096]).unwrap().error, 0);
        assert_eq!(c.read(4096, 4096).unwrap().data, vec![7u8; 4096]);
        c.disconnect().unwrap();
    }
    // An unknown name cannot be refused politely: the connection closes.
    let mut s = greet(srv.addr).unwrap();
    let mut o = Vec::new();
    encode_option(&mut o, OPT_EXPORT_NAME, b"nope");
    s.write_all(&o).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // The empty name is the default export when there is only one.
    let mut c = RawClient::connect(srv.addr, "", Opts::default()).unwrap();
    assert_eq!(c.size, 16 * MIB);
    assert_eq!(c.read(4096, 4096).unwrap().data, vec![7u8; 4096]);
}

#[test]
fn handshake_violations_close_the_connection() {
    let srv = one_disk();
    // Unknown client flags.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    read_exact(&mut s, GREETING_LEN).unwrap();
    s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // Bad option magic.
    let mut s = greet(srv.addr).unwrap();
    s.write_all(&[0x55; 16]).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // An option too large to be honest.
    let mut s = greet(srv.addr).unwrap();
    let mut o = Vec::new();
    o.extend_from_slice(&IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&OPT_GO.to_be_bytes());
    o.extend_from_slice(&(64u32 << 20).to_be_bytes());
    s.write_all(&o).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)));
    // A large-but-skippable option is refused, and the handshake goes on.
    let mut s = greet(srv.addr).unwrap();
    let r = option(&mut s, OPT_INFO, &vec![0u8; 100_000]).unwrap();
    assert_eq!(r[0].0, REP_ERR_TOO_BIG);
    let r = option(&mut s, OPT_GO, &encode_info_request("disk", &[])).unwrap();
    assert_eq!(r.last().unwrap().0, REP_ACK);
    let stats = srv.server().stats();
    assert!(stats.handshakes_failed >= 3, "{stats:?}");
}

// ---------------------------------------------------------------------------------------
// Requests.

#[test]
fn io_round_trips_in_every_reply_mode() {
    let srv = one_disk();
    for (i, o) in modes().into_iter().enumerate() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        assert_eq!(c.size, 16 * MIB);
        let data = pattern(i as u64, 64 * 1024);
        let off = i as u64 * MIB;
        assert_eq!(c.write(off, &data).unwrap().error, 0);
        let r = c.read(off, data.len() as u64).unwrap();
        assert_eq!(r.error, 0);
        assert!(r.data == data);
        // A large write, most of it read straight into the request buffer.
        let big = pattern(100 + i as u64, 4 * MIB as usize);
        assert_eq!(c.write(8 * MIB, &big).unwrap().error, 0);
        assert!(c.read(8 * MIB, 4 * MIB).unwrap().data == big);
        // FUA write, flush, trim, write-zeroes, zero-length requests.
        assert_eq!(
            c.call(CMD_WRITE, CMD_FLAG_FUA, off, 4096, &[1u8; 4096])
                .unwrap()
                .error,
            0
        );
        assert_eq!(c.flush().unwrap().error, 0);
        assert_eq!(c.call(CMD_TRIM, 0, off + 4096, 4096, &[]).unwrap().error, 0);
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, off + 8192, 8192, &[])
                .unwrap()
                .error,
            0
        );
        let r = c.read(off, 16384).unwrap();
        assert_eq!(&r.data[..4096], &[1u8; 4096][..]);
        assert!(r.data[4096..].iter().all(|&b| b == 0));
        let r = c.read(off, 0).unwrap();
        assert_eq!((r.error, r.data.len()), (0, 0));
        assert_eq!(c.write(off, &[]).unwrap().error, 0);
        c.disconnect().unwrap();
    }
    let stats = srv.server().stats();
    assert_eq!(stats.in_state(ConnState::Transmission), 0, "{stats:?}");
}

#[test]
fn out_of_range_requests_get_einval_and_the_connection_survives() {
    let srv = one_disk();
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        let size = c.size;
        for (off, len) in [
            (size, 4096),
            (size - 4096, 8192),
            (u64::MAX - 4095, 4096),
            (size - 1, 2),
            (u64::MAX, 1),
        ] {
            let r = c.read(off, len).unwrap();
            assert_eq!(r.error, NBD_EINVAL, "read {off}+{len} ({o:?})");
            if o.structured {
                assert!(r.message.contains("beyond the end"), "{}", r.message);
            }
        }
        assert_eq!(
            c.call(CMD_TRIM, 0, size, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_TRIM, 0, size - 100, 101, &[]).unwrap().error,
            NBD_EINVAL,
            "unaligned trim beyond the end"
        );
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, size - 100, 101, &[])
                .unwrap()
                .error,
            NBD_ENOSPC,
            "unaligned write-zeroes beyond the end"
        );
        assert_eq!(c.read(MIB + 1, 1).unwrap().error, 0, "a one-byte read");
        assert_eq!(
            c.read(1, 32 * MIB + 1).unwrap().error,
            NBD_EOVERFLOW,
            "unaligned read above the maximum block size"
        );
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, size - 4096, 8192, &[])
                .unwrap()
                .error,
            NBD_ENOSPC
        );
        assert_eq!(
            c.read(0, (32 * MIB) + 4096).unwrap().error,
            NBD_EOVERFLOW,
            "read above the maximum block size"
        );
        // Still serving.
        assert_eq!(c.read(0, 4096).unwrap().error, 0);
    }
}

#[test]
fn a_write_that_fails_validation_never_touches_the_bdev() {
    let bdev = malloc("M0", 16);
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev)]);
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        let size = c.size;
        let junk = vec![0xeeu8; 8192];
        // Beyond the end: ENOSPC; the part inside the export is untouched.
        assert_eq!(c.write(size - 4096, &junk).unwrap().error, NBD_ENOSPC);
        // Unaligned, one byte beyond the end: ENOSPC, and its block is untouched.
        assert_eq!(
            c.write(size - 1000, &junk[..1001]).unwrap().error,
            NBD_ENOSPC
        );
        // Flags of other commands: EINVAL, payload consumed.
        assert_eq!(
            c.call(CMD_WRITE, CMD_FLAG_NO_HOLE, 0, 4096, &junk[..4096])
                .unwrap()
                .error,
            NBD_EINVAL
        );
        let r = c.read(size - 4096, 4096).unwrap();
        assert!(r.data.iter().all(|&b| b == 0), "last block untouched");
        let r = c.read(0, 8192).unwrap();
        assert!(r.data.iter().all(|&b| b == 0), "first blocks untouched");
    }
    // Above the maximum payload: compact headers consume it and answer EINVAL...
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let huge = vec![0xddu8; (32 * MIB + 4096) as usize];
    assert_eq!(c.write(0, &huge).unwrap().error, NBD_EINVAL);
    assert_eq!(c.read(0, 4096).unwrap().data, vec![0u8; 4096]);
    // ...extended headers close the connection (proto.md).
    let mut c = RawClient::connect(
        srv.addr,
        "disk",
        Opts {
            structured: true,
            extended: true,
            meta: false,
        },
    )
    .unwrap();
    c.send(CMD_WRITE, 0, 9, 0, 64 * MIB, &[]).unwrap();
    assert!(closed_within(&mut c.s, Duration::from_secs(5)));
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    assert_eq!(c.read(0, 4096).unwrap().data, vec![0u8; 4096]);
}

#[test]
fn unknown_commands_and_flags_get_einval() {
    let srv = TestServer::start(vec![NbdExport::new("disk", ThinBdev::create("T0", 4))]);
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        assert_eq!(c.call(99, 0, 0, 4096, &[]).unwrap().error, NBD_EINVAL);
        assert_eq!(
            c.call(CMD_CACHE, 0, 0, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_RESIZE, 0, 0, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_READ, 1 << 9, 0, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_READ, CMD_FLAG_REQ_ONE, 0, 4096, &[])
                .unwrap()
                .error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 4096, &[])
                .unwrap()
                .error,
            NBD_EINVAL,
            "fast zero is not advertised"
        );
        let df = c.call(CMD_READ, CMD_FLAG_DF, 0, 4096, &[]).unwrap();
        if o.structured {
            assert_eq!(
                (df.error, df.data.len(), df.chunks),
                (0, 4096, 1),
                "DF: one chunk"
            );
        } else {
            assert_eq!(df.error, NBD_EINVAL, "DF needs structured replies");
        }
        assert_eq!(
            c.call(CMD_FLUSH, 0, 0, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_BLOCK_STATUS, 0, 0, 4096, &[]).unwrap().error,
            NBD_EINVAL,
            "no metadata context selected"
        );
        assert_eq!(c.read(0, 4096).unwrap().error, 0);
    }
}

#[test]
fn pipelined_requests_are_all_answered() {
    let srv = one_disk();
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        // 200 writes and reads in one burst; replies may come in any order.
        let mut burst = Vec::new();
        let mut lens = HashMap::new();
        for i in 0..100u64 {
            let data = pattern(i, 4096);
            encode_request(
                &mut burst,
                c.mode(),
                &RequestHeader {
                    flags: 0,
                    kind: CMD_WRITE,
                    cookie: 1000 + i,
                    offset_bytes: i * 4096,
                    len_bytes: 4096,
                },
            );
            burst.extend_from_slice(&data);
        }
        c.s.write_all(&burst).unwrap();
        let mut seen = BTreeMap::new();
        for _ in 0..100 {
            let r = c.recv(|_| 0).unwrap();
            assert_eq!(r.error, 0);
            seen.insert(r.cookie, ());
        }
        assert_eq!(seen.len(), 100);
        burst.clear();
        for i in 0..100u64 {
            encode_request(
                &mut burst,
                c.mode(),
                &RequestHeader {
                    flags: 0,
                    kind: CMD_READ,
                    cookie: 5000 + i,
                    offset_bytes: i * 4096,
                    len_bytes: 4096,
                },
            );
            lens.insert(5000 + i, 4096usize);
        }
        c.s.write_all(&burst).unwrap();
        for _ in 0..100 {
            let r = c.recv(|cookie| lens[&cookie]).unwrap();
            assert_eq!(r.error, 0);
            assert!(
                r.data == pattern(r.cookie - 5000, 4096),
                "cookie {}",
                r.cookie
            );
        }
    }
}

#[test]
fn read_only_export_answers_eperm() {
    let srv = TestServer::start(vec![
        NbdExport::new("ro", ThinBdev::create("T0", 4)).with_read_only(true),
    ]);
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "ro", o).unwrap();
        assert_ne!(c.flags & TFLAG_READ_ONLY, 0);
        assert_eq!(c.write(0, &[1u8; 4096]).unwrap().error, NBD_EPERM);
        assert_eq!(c.call(CMD_TRIM, 0, 0, 4096, &[]).unwrap().error, NBD_EPERM);
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, 0, 4096, &[]).unwrap().error,
            NBD_EPERM
        );
        let r = c.read(0, 4096).unwrap();
        assert_eq!(r.error, 0);
        assert_eq!(r.data, vec![0u8; 4096]);
        assert_eq!(c.flush().unwrap().error, 0);
    }
}

#[test]
fn block_status_reports_holes_zeros_and_data() {
    let srv = TestServer::start(vec![NbdExport::new("thin", ThinBdev::create("T0", 4))]);
    for (i, extended) in [false, true].into_iter().enumerate() {
        let o = Opts {
            structured: true,
            extended,
            meta: true,
        };
        let mut c = RawClient::connect(srv.addr, "thin", o).unwrap();
        let base = i as u64 * MIB;
        assert_eq!(c.write(base, &[9u8; 16384]).unwrap().error, 0);
        assert_eq!(
            c.call(
                CMD_WRITE_ZEROES,
                CMD_FLAG_NO_HOLE,
                base + 32 * KIB,
                16 * KIB,
                &[]
            )
            .unwrap()
            .error,
            0
        );
        assert_eq!(c.write(base + 64 * KIB, &[9u8; 16384]).unwrap().error, 0);
        // Without NO_HOLE the server may unmap: the bdev reads unmapped blocks as zeros.
        assert_eq!(
            c.call(CMD_WRITE_ZEROES, 0, base + 64 * KIB, 16 * KIB, &[])
                .unwrap()
                .error,
            0
        );
        let r = c.call(CMD_BLOCK_STATUS, 0, base, 128 * KIB, &[]).unwrap();
        assert_eq!(r.error, 0);
        let got: Vec<(u64, u32)> = r.extents.iter().map(|e| (e.len_bytes, e.flags)).collect();
        assert_eq!(
            got,
            vec![
                (16 * KIB, 0),
                (16 * KIB, STATE_HOLE | STATE_ZERO),
                (16 * KIB, STATE_ZERO),
                (80 * KIB, STATE_HOLE | STATE_ZERO),
            ]
        );
        let r = c
            .call(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, base, 128 * KIB, &[])
            .unwrap();
        assert_eq!(r.extents.len(), 1);
        assert_eq!(r.extents[0].len_bytes, 16 * KIB);
        // Unaligned: the extents start at the offset and end at the end of the range.
        let r = c
            .call(CMD_BLOCK_STATUS, 0, base + 100, 20_000, &[])
            .unwrap();
        assert_eq!(r.error, 0);
        let got: Vec<(u64, u32)> = r.extents.iter().map(|e| (e.len_bytes, e.flags)).collect();
        assert_eq!(
            got,
            vec![
                (16 * KIB - 100, 0),
                (20_000 - (16 * KIB - 100), STATE_HOLE | STATE_ZERO)
            ]
        );
        let r = c.call(CMD_BLOCK_STATUS, 0, base + 5, 1, &[]).unwrap();
        assert_eq!(r.error, 0);
        assert_eq!(
            r.extents,
            vec![Extent {
                len_bytes: 1,
                flags: 0
            }]
        );
        let size = c.size;
        assert_eq!(
            c.call(CMD_BLOCK_STATUS, 0, size, 4096, &[]).unwrap().error,
            NBD_EINVAL
        );
        assert_eq!(
            c.call(CMD_BLOCK_STATUS, 0, 0, 0, &[]).unwrap().error,
            NBD_EINVAL
        );
    }
}

#[test]
fn bdev_errors_map_to_nbd_errors() {
    let inner = malloc("M0", 4);
    let eb = ErrorBdev::create("E0", inner, false).unwrap();
    eb.inject(FailRule {
        kinds: vec![IoKind::Read],
        trigger: Trigger::Nth(1),
        status: IoStatus::MediaError,
    });
    let srv = TestServer::start(vec![NbdExport::new("e", eb.clone())]);
    let mut c = RawClient::connect(
        srv.addr,
        "e",
        Opts {
            structured: true,
            ..Opts::default()
        },
    )
    .unwrap();
    let r = c.read(0, 4096).unwrap();
    assert_eq!(r.error, NBD_EIO);
    assert!(r.message.contains("media error"), "{}", r.message);
    assert_eq!(
        c.read(0, 4096).unwrap().error,
        0,
        "only the first read fails"
    );
    eb.inject(FailRule {
        kinds: vec![IoKind::Write],
        trigger: Trigger::Nth(1),
        status: IoStatus::CapacityExceeded,
    });
    assert_eq!(c.write(0, &[1u8; 4096]).unwrap().error, NBD_ENOSPC);
}

// ---------------------------------------------------------------------------------------
// Hostile and broken clients.

#[test]
fn bad_request_magic_closes_only_that_connection() {
    let srv = one_disk();
    for o in modes() {
        let mut good = RawClient::connect(srv.addr, "disk", o).unwrap();
        let mut bad = RawClient::connect(srv.addr, "disk", o).unwrap();
        bad.s.write_all(&[0x42u8; 64]).unwrap();
        assert!(closed_within(&mut bad.s, Duration::from_secs(5)));
        assert_eq!(good.write(0, &[3u8; 4096]).unwrap().error, 0);
        assert_eq!(good.read(0, 4096).unwrap().data, vec![3u8; 4096]);
    }
    assert!(srv.server().stats().protocol_errors >= 3);
}

#[test]
fn clients_that_vanish_mid_request_leave_the_server_healthy() {
    let srv = one_disk();
    // Half a header.
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    c.s.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    // A write header and half its payload.
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut buf = Vec::new();
    encode_request(
        &mut buf,
        HeaderMode::Compact,
        &RequestHeader {
            flags: 0,
            kind: CMD_WRITE,
            cookie: 1,
            offset_bytes: 0,
            len_bytes: 1 << 20,
        },
    );
    buf.extend_from_slice(&[0xaa; 300_000]);
    c.s.write_all(&buf).unwrap();
    drop(c);
    // Reads whose replies have nowhere to go.
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    for i in 0..32 {
        c.send(CMD_READ, 0, i, 0, 1 << 20, &[]).unwrap();
    }
    drop(c);
    // Mid-handshake.
    let mut s = greet(srv.addr).unwrap();
    s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    drop(s);
    // Everything is cleaned up, and the half write never landed.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let st = srv.server().stats();
            st.in_state(ConnState::Transmission) == 0
                && st.in_state(ConnState::Draining) == 0
                && st.in_state(ConnState::Negotiating) == 0
        }),
        "{:?}",
        srv.server().stats()
    );
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    assert_eq!(c.read(0, 4096).unwrap().data, vec![0u8; 4096]);
}

#[test]
fn many_clients_keep_being_served_while_one_sends_garbage() {
    let srv = one_disk();
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let garbage = std::thread::spawn(move || {
        let mut n = 0u64;
        let mut rng = 0x1234_5678u64;
        while !s2.load(Ordering::Relaxed) {
            n += 1;
            let junk: Vec<u8> = (0..512)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            if n.is_multiple_of(2) {
                // Garbage instead of a handshake.
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&junk);
                }
            } else if let Ok(mut c) = RawClient::connect(addr, "disk", Opts::default()) {
                // Garbage instead of requests.
                let _ = c.s.write_all(&junk);
                let mut b = [0u8; 64];
                let _ = c.s.read(&mut b);
            }
        }
        n
    });
    let workers: Vec<_> = (0..6u64)
        .map(|w| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(
                    addr,
                    "disk",
                    Opts {
                        structured: w % 2 == 0,
                        extended: w % 3 == 0,
                        meta: false,
                    },
                )
                .unwrap();
                let region = w * 2 * MIB;
                for round in 0..150u64 {
                    // Eight writes in flight, then eight reads.
                    let mut burst = Vec::new();
                    for k in 0..8u64 {
                        encode_request(
                            &mut burst,
                            c.mode(),
                            &RequestHeader {
                                flags: 0,
                                kind: CMD_WRITE,
                                cookie: k,
                                offset_bytes: region + ((round * 8 + k) % 512) * 4096,
                                len_bytes: 4096,
                            },
                        );
                        burst.extend_from_slice(&pattern(w << 32 | round << 8 | k, 4096));
                    }
                    c.s.write_all(&burst).unwrap();
                    for _ in 0..8 {
                        assert_eq!(c.recv(|_| 0).unwrap().error, 0);
                    }
                    for k in 0..8u64 {
                        c.send(
                            CMD_READ,
                            0,
                            k,
                            region + ((round * 8 + k) % 512) * 4096,
                            4096,
                            &[],
                        )
                        .unwrap();
                    }
                    for _ in 0..8 {
                        let r = c.recv(|_| 4096).unwrap();
                        assert_eq!(r.error, 0);
                        assert!(r.data == pattern(w << 32 | round << 8 | r.cookie, 4096));
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    for w in workers {
        w.join().expect("a well-behaved client failed");
    }
    stop.store(true, Ordering::Relaxed);
    let garbage_conns = garbage.join().unwrap();
    assert!(
        garbage_conns > 10,
        "the garbage client ran ({garbage_conns})"
    );
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(srv.server().stats().protocol_errors > 0);
}

// ---------------------------------------------------------------------------------------
// Flush ordering.

#[test]
fn flush_on_one_connection_covers_writes_replied_on_another() {
    let base = malloc("M0", 4);
    let eb = ErrorBdev::create("E0", base, true).unwrap();
    let srv = TestServer::start(vec![NbdExport::new("disk", eb.clone())]);
    // Round-robin puts the two connections on different cores.
    let mut a = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut b = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    assert_ne!(a.flags & TFLAG_CAN_MULTI_CONN, 0);
    assert_eq!(a.write(5 * 4096, &[5u8; 4096]).unwrap().error, 0);
    assert_eq!(b.flush().unwrap().error, 0);
    assert_eq!(a.write(9 * 4096, &[9u8; 4096]).unwrap().error, 0);
    assert_eq!(eb.power_loss(), 1, "the unflushed write was still volatile");
    assert_eq!(a.read(5 * 4096, 4096).unwrap().data, vec![5u8; 4096]);
    assert_eq!(b.read(9 * 4096, 4096).unwrap().data, vec![0u8; 4096]);
}

/// A bdev whose writes reach its cache only when they complete (after a delay), and
/// whose flush persists what its cache holds at submission: a flush submitted before a
/// write completed does not cover it. A FUA write is durable when it completes. Reads
/// complete at once: a read submitted while a write is delayed sees the old data.
struct LaggyBdev {
    props: BdevProps,
    delay: Duration,
    cache: Mutex<BTreeMap<u64, Vec<u8>>>,
    durable: Mutex<BTreeMap<u64, Vec<u8>>>,
}

impl Bdev for LaggyBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }
    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new(LaggyChannel(self)))
    }
    fn supports(&self, kind: IoKind) -> bool {
        matches!(kind, IoKind::Read | IoKind::Write | IoKind::Flush)
    }
}

struct LaggyChannel(Arc<LaggyBdev>);

impl BdevChannel for LaggyChannel {
    fn submit(&self, mut io: BdevIo) {
        let b = self.0.clone();
        let bs = 4096usize;
        match io.kind {
            IoKind::Write => {
                reactor::spawn_local(async move {
                    reactor::sleep(b.delay).await;
                    let mut c = b.cache.lock().unwrap();
                    for i in 0..io.num_blocks {
                        let mut d = vec![0u8; bs];
                        io.copy_out(i as usize * bs, &mut d);
                        if io.flags.fua {
                            b.durable
                                .lock()
                                .unwrap()
                                .insert(io.offset_blocks + i, d.clone());
                        }
                        c.insert(io.offset_blocks + i, d);
                    }
                    drop(c);
                    io.complete(IoStatus::Success);
                })
                .detach();
            }
            IoKind::Flush => {
                let snapshot = b.cache.lock().unwrap().clone();
                b.durable.lock().unwrap().extend(snapshot);
                Deferred::current().complete(io, IoStatus::Success);
            }
            _ => {
                let c = b.cache.lock().unwrap();
                for i in 0..io.num_blocks {
                    match c.get(&(io.offset_blocks + i)) {
                        Some(d) => io.copy_in(i as usize * bs, d),
                        None => io.zero_fill(i as usize * bs, bs),
                    }
                }
                drop(c);
                Deferred::current().complete(io, IoStatus::Success);
            }
        }
    }
}

#[test]
fn flush_waits_for_the_writes_in_flight_before_it() {
    let bdev = laggy(Duration::from_millis(100));
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev.clone())]);
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    // Write and flush in one burst, without waiting for the write's reply.
    c.send(CMD_WRITE, 0, 1, 3 * 4096, 4096, &[3u8; 4096])
        .unwrap();
    c.send(CMD_FLUSH, 0, 2, 0, 0, &[]).unwrap();
    let mut order = Vec::new();
    for _ in 0..2 {
        let r = c.recv(|_| 0).unwrap();
        assert_eq!(r.error, 0);
        order.push(r.cookie);
    }
    assert_eq!(order, vec![1, 2], "the flush completes after the write");
    assert_eq!(
        bdev.durable.lock().unwrap().get(&3),
        Some(&vec![3u8; 4096]),
        "the flush covered the write that was in flight when it arrived"
    );
}

// ---------------------------------------------------------------------------------------
// Requests not aligned to the block size.

/// A model of the disk: what every byte must read as.
struct Model(Vec<u8>);

impl Model {
    fn write(&mut self, c: &mut RawClient, off: u64, data: &[u8]) {
        let r = c.write(off, data).unwrap();
        assert_eq!(r.error, 0, "write {off}+{}: {}", data.len(), r.message);
        self.0[off as usize..off as usize + data.len()].copy_from_slice(data);
    }

    fn zero(&mut self, c: &mut RawClient, flags: u16, off: u64, len: u64) {
        let r = c.call(CMD_WRITE_ZEROES, flags, off, len, &[]).unwrap();
        assert_eq!(r.error, 0, "write-zeroes {off}+{len}: {}", r.message);
        self.0[off as usize..(off + len) as usize].fill(0);
    }

    fn check(&self, c: &mut RawClient, off: u64, len: u64) {
        let r = c.read(off, len).unwrap();
        assert_eq!(r.error, 0, "read {off}+{len}: {}", r.message);
        assert!(
            r.data == self.0[off as usize..(off + len) as usize],
            "read {off}+{len} differs from what was written"
        );
    }
}

#[test]
fn unaligned_reads_writes_and_zeroes_in_every_reply_mode() {
    // 4 KiB blocks; a thin bdev, so write-zeroes without NO_HOLE may unmap.
    let srv = TestServer::start(vec![NbdExport::new("thin", ThinBdev::create("T0", 4))]);
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "thin", o).unwrap();
        assert_eq!(c.block_sizes.map(|b| b.min_bytes), Some(1));
        let mut m = Model(vec![0u8; c.size as usize]);
        m.write(&mut c, 0, &pattern(1, 256 * KIB as usize));
        // Inside one block, at its ends, across one and many boundaries, one byte.
        for (i, (off, len)) in [
            (1024, 1024),
            (0, 512),
            (3584, 512),
            (4095, 2),
            (511, 10_000),
            (8193, 1),
            (12_000, 100_000),
            (65_536 + 7, 4096),
        ]
        .into_iter()
        .enumerate()
        {
            m.write(&mut c, off, &pattern(100 + i as u64, len));
            m.check(&mut c, 0, 256 * KIB);
            m.check(&mut c, off, len as u64);
            m.check(&mut c, off.saturating_sub(3), len as u64 + 6);
        }
        // FUA unaligned write.
        let r = c
            .call(CMD_WRITE, CMD_FLAG_FUA, 5000, 3, &[7, 8, 9])
            .unwrap();
        assert_eq!(r.error, 0);
        m.0[5000..5003].copy_from_slice(&[7, 8, 9]);
        // Write-zeroes: inside a block, across blocks (with and without NO_HOLE), large.
        m.zero(&mut c, 0, 100, 200);
        m.zero(&mut c, CMD_FLAG_NO_HOLE, 4000, 9000);
        m.zero(&mut c, 0, 20_000 + 1, 100_000);
        m.zero(&mut c, CMD_FLAG_FUA, 130_000, 4096);
        m.check(&mut c, 0, 256 * KIB);
        // A trim runs on the whole blocks inside its range and leaves the rest alone.
        m.write(&mut c, 160 * KIB, &pattern(7, 64 * KIB as usize));
        let r = c.call(CMD_TRIM, 0, 160 * KIB + 1, 3 * 4096, &[]).unwrap();
        assert_eq!(r.error, 0);
        let r = c.read(160 * KIB, 4096).unwrap();
        assert!(
            r.data == m.0[160 * KIB as usize..][..4096],
            "the head block is kept"
        );
        let r = c.read(160 * KIB + 3 * 4096, 4096).unwrap();
        assert!(
            r.data == m.0[(160 * KIB + 3 * 4096) as usize..][..4096],
            "the tail block is kept"
        );
        // A trim without a whole block inside does nothing.
        let r = c.call(CMD_TRIM, 0, 200 * KIB + 1, 4096, &[]).unwrap();
        assert_eq!(r.error, 0);
        m.check(&mut c, 200 * KIB, 8 * KIB);
        c.disconnect().unwrap();
    }
    let stats = srv.server().stats();
    assert!(stats.unaligned >= 3 * 12, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

fn laggy(delay: Duration) -> Arc<LaggyBdev> {
    Arc::new(LaggyBdev {
        props: BdevProps::new("L0", None, 4096, 256, "Laggy test disk").unwrap(),
        delay,
        cache: Mutex::new(BTreeMap::new()),
        durable: Mutex::new(BTreeMap::new()),
    })
}

/// Reads block `b` of a laggy bdev's cache (zeros if never written).
fn cached(bdev: &LaggyBdev, b: u64) -> Vec<u8> {
    bdev.cache
        .lock()
        .unwrap()
        .get(&b)
        .cloned()
        .unwrap_or_else(|| vec![0u8; 4096])
}

/// Two unaligned writes of different bytes into one 4 KiB block, in flight together:
/// each reads the block, merges its bytes and writes the block back. Unless the second
/// waits for the first, both read the block as it was and the later write drops the
/// earlier one's bytes. The bdev delays writes (not reads), so the window is wide.
#[test]
fn concurrent_overlapping_unaligned_writes_keep_each_others_bytes() {
    let bdev = laggy(Duration::from_millis(30));
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev.clone())]);
    for o in modes() {
        let mut c = RawClient::connect(srv.addr, "disk", o).unwrap();
        c.read(0, 4096).unwrap();
        // Pipelined on one connection.
        let block = 3u64;
        let (x, y) = (block * 4096 + 100, block * 4096 + 1000);
        c.send(CMD_WRITE, 0, 1, x, 100, &[0xaa; 100]).unwrap();
        c.send(CMD_WRITE, 0, 2, y, 100, &[0xbb; 100]).unwrap();
        for _ in 0..2 {
            assert_eq!(c.recv(|_| 0).unwrap().error, 0);
        }
        let mut want = vec![0u8; 4096];
        want[100..200].fill(0xaa);
        want[1000..1100].fill(0xbb);
        let r = c.read(block * 4096, 4096).unwrap();
        assert!(r.data == want, "both writes' bytes are there ({o:?})");
        // Across block boundaries: the second write's head block is the first's tail.
        let (x, y) = (5 * 4096 + 4000, 6 * 4096 + 200);
        c.send(CMD_WRITE, 0, 3, x, 200, &[0xcc; 200]).unwrap();
        c.send(CMD_WRITE, 0, 4, y, 4096, &[0xdd; 4096]).unwrap();
        for _ in 0..2 {
            assert_eq!(c.recv(|_| 0).unwrap().error, 0);
        }
        let r = c.read(5 * 4096, 3 * 4096).unwrap();
        let mut want = vec![0u8; 3 * 4096];
        want[4000..4200].fill(0xcc);
        want[4096 + 200..4096 + 200 + 4096].fill(0xdd);
        assert!(r.data == want, "both writes' bytes are there ({o:?})");
        for b in [3, 5, 6, 7] {
            bdev.cache.lock().unwrap().remove(&b);
        }
        c.disconnect().unwrap();
    }
    // On two connections (round-robin puts them on different cores).
    let mut a = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut b = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    for round in 0..8u64 {
        let block = 10 + round;
        a.send(CMD_WRITE, 0, 1, block * 4096 + 7, 9, &[0x11; 9])
            .unwrap();
        b.send(CMD_WRITE, 0, 2, block * 4096 + 3000, 999, &[0x22; 999])
            .unwrap();
        assert_eq!(a.recv(|_| 0).unwrap().error, 0);
        assert_eq!(b.recv(|_| 0).unwrap().error, 0);
        let mut want = vec![0u8; 4096];
        want[7..16].fill(0x11);
        want[3000..3999].fill(0x22);
        assert!(
            cached(&bdev, block) == want,
            "round {round}: both writes' bytes"
        );
    }
    // The second write of each pair waited for the first's lock (counted once the
    // connections have closed and folded their counters).
    a.disconnect().unwrap();
    b.disconnect().unwrap();
    let stats = srv.server().stats();
    assert!(stats.range_lock_waits >= 3 * 2 + 8, "{stats:?}");
}

/// An aligned write and an unaligned one into the same block, in flight together, in
/// both orders: the aligned write is never undone by the read-modify-write's copy of
/// the block as it was.
#[test]
fn aligned_and_unaligned_writes_to_one_block_do_not_undo_each_other() {
    let bdev = laggy(Duration::from_millis(30));
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev.clone())]);
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    // Aligned first (sent to the bdev without a lock: no read-modify-write in progress),
    // then unaligned: the read-modify-write waits for it.
    c.send(CMD_WRITE, 0, 1, 8 * 4096, 4096, &[0x33; 4096])
        .unwrap();
    c.send(CMD_WRITE, 0, 2, 8 * 4096 + 10, 10, &[0x44; 10])
        .unwrap();
    for _ in 0..2 {
        assert_eq!(c.recv(|_| 0).unwrap().error, 0);
    }
    let mut want = vec![0x33u8; 4096];
    want[10..20].fill(0x44);
    assert!(
        cached(&bdev, 8) == want,
        "the unaligned write merged into the aligned one"
    );
    // Unaligned first, then aligned into its tail block: the aligned write waits for
    // the lock, so the tail block ends up all its own.
    c.send(CMD_WRITE, 0, 3, 20 * 4096 + 4000, 200, &[0x55; 200])
        .unwrap();
    c.send(CMD_WRITE, 0, 4, 21 * 4096, 4096, &[0x66; 4096])
        .unwrap();
    for _ in 0..2 {
        assert_eq!(c.recv(|_| 0).unwrap().error, 0);
    }
    let mut head = vec![0u8; 4096];
    head[4000..].fill(0x55);
    assert!(cached(&bdev, 20) == head);
    assert!(
        cached(&bdev, 21) == vec![0x66u8; 4096],
        "the aligned write is whole"
    );
}

/// An aligned write in flight on one connection (sent to the bdev without a lock: no
/// read-modify-write was in progress) and an unaligned write into the same block on
/// another connection: the read-modify-write waits until every other connection of
/// the export has seen it start and finished what it sent before.
#[test]
fn a_read_modify_write_waits_for_lock_free_writes_of_other_connections() {
    let bdev = laggy(Duration::from_millis(50));
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev.clone())]);
    let mut a = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut b = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    // An idle third connection must not hold the read-modify-write up.
    let _idle = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    for round in 0..4u64 {
        let block = 30 + round;
        a.send(CMD_WRITE, 0, 1, block * 4096, 4096, &[0x99; 4096])
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        b.send(CMD_WRITE, 0, 2, block * 4096 + 10, 10, &[0xaa; 10])
            .unwrap();
        assert_eq!(a.recv(|_| 0).unwrap().error, 0);
        assert_eq!(b.recv(|_| 0).unwrap().error, 0);
        let mut want = vec![0x99u8; 4096];
        want[10..20].fill(0xaa);
        assert!(
            cached(&bdev, block) == want,
            "round {round}: the aligned write was undone"
        );
    }
}

/// A flush covers an unaligned write in flight when it arrived; a FUA unaligned write
/// is durable when it is answered.
#[test]
fn flush_and_fua_cover_unaligned_writes() {
    let bdev = laggy(Duration::from_millis(50));
    let srv = TestServer::start(vec![NbdExport::new("disk", bdev.clone())]);
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    c.send(CMD_WRITE, 0, 1, 2 * 4096 + 1, 4096, &[0x77; 4096])
        .unwrap();
    c.send(CMD_FLUSH, 0, 2, 0, 0, &[]).unwrap();
    let mut order = Vec::new();
    for _ in 0..2 {
        let r = c.recv(|_| 0).unwrap();
        assert_eq!(r.error, 0);
        order.push(r.cookie);
    }
    assert_eq!(order, vec![1, 2], "the flush completes after the write");
    let durable = bdev.durable.lock().unwrap().clone();
    let mut b2 = vec![0x77u8; 4096];
    b2[0] = 0;
    assert_eq!(
        durable.get(&2),
        Some(&b2),
        "the flush covered the head block"
    );
    assert_eq!(
        durable.get(&3).map(|b| b[0]),
        Some(0x77),
        "and the tail block"
    );
    let r = c
        .call(CMD_WRITE, CMD_FLAG_FUA, 40 * 4096 + 5, 5, &[0x88; 5])
        .unwrap();
    assert_eq!(r.error, 0);
    let durable = bdev.durable.lock().unwrap().clone();
    assert_eq!(
        durable.get(&40).map(|b| b[5..10].to_vec()),
        Some(vec![0x88; 5])
    );
}

// ---------------------------------------------------------------------------------------
// Control plane.

#[test]
fn removing_an_export_closes_its_connections_only() {
    let srv = TestServer::start(vec![
        NbdExport::new("a", malloc("M0", 4)),
        NbdExport::new("b", malloc("M1", 4)),
    ]);
    let mut ca = RawClient::connect(srv.addr, "a", Opts::default()).unwrap();
    let mut cb = RawClient::connect(srv.addr, "b", Opts::default()).unwrap();
    assert_eq!(ca.write(0, &[1u8; 4096]).unwrap().error, 0);
    let exports = srv.server().exports();
    assert_eq!(exports.len(), 2);
    assert_eq!(exports[0].connections, 1);
    let closing = srv.server().remove_export("a").unwrap();
    reactor::block_on(closing);
    assert!(closed_within(&mut ca.s, Duration::from_secs(5)));
    assert_eq!(cb.read(0, 4096).unwrap().error, 0);
    assert!(RawClient::connect(srv.addr, "a", Opts::default()).is_err());
    assert!(srv.server().remove_export("a").is_err());
    assert_eq!(srv.server().exports().len(), 1);
    // Re-adding works.
    srv.server()
        .add_export(NbdExport::new("a", malloc("M2", 4)))
        .unwrap();
    let mut ca = RawClient::connect(srv.addr, "a", Opts::default()).unwrap();
    assert_eq!(ca.read(0, 4096).unwrap().data, vec![0u8; 4096]);
    assert!(
        srv.server()
            .add_export(NbdExport::new("a", malloc("M3", 4)))
            .is_err()
    );
}

#[test]
fn stop_closes_connections_and_the_listener() {
    let mut srv = one_disk();
    let mut c = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut idle = greet(srv.addr).unwrap();
    assert_eq!(c.read(0, 4096).unwrap().error, 0);
    let addr = srv.addr;
    let t = Instant::now();
    srv.server.take().unwrap().stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(closed_within(&mut c.s, Duration::from_secs(5)));
    assert!(closed_within(&mut idle, Duration::from_secs(5)));
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed");
}

#[test]
fn server_from_config_looks_bdevs_up_by_name() {
    use tessera::bdev::BdevRegistry;
    use tessera::frontend::nbd::{NbdConfig, NbdServer};
    let reactors = reactors();
    let registry = BdevRegistry::new();
    registry.add(malloc("Malloc0", 8)).unwrap();
    let small = tessera::bdev::malloc::MallocBdev::create("Small", 2048, 512, None).unwrap();
    registry.add(small).unwrap();
    let cfg: NbdConfig = serde_yaml_ng::from_str(
        "listen: \"127.0.0.1:0\"\nexports:\n  - {name: vd0, bdev: Malloc0, description: first}\n  - {name: small, bdev: Small, read_only: true}\n",
    )
    .unwrap();
    let server = NbdServer::from_config(reactors.cores(), &cfg, &registry).unwrap();
    let exports = server.exports();
    assert_eq!(exports.len(), 2);
    let small = exports.iter().find(|e| e.name == "small").unwrap();
    assert_eq!(
        (small.bdev.as_str(), small.block_size, small.size_bytes),
        ("Small", 512, MIB)
    );
    assert!(small.read_only);
    let json = serde_json::to_value(&exports).unwrap();
    assert_eq!(json[1]["description"], "first", "{json}");
    // 512-byte blocks: the minimum block size is 1, the preferred 4096.
    let mut c = RawClient::connect(server.local_addr(), "small", Opts::default()).unwrap();
    assert_eq!(
        c.block_sizes,
        Some(BlockSizes {
            min_bytes: 1,
            preferred_bytes: 4096,
            max_bytes: 32 << 20
        })
    );
    assert_eq!(c.read(512, 512).unwrap().error, 0);
    let r = c.read(100, 512).unwrap();
    assert_eq!((r.error, r.data.len()), (0, 512), "an unaligned read");
    // A missing bdev is named with its field.
    let bad: NbdConfig =
        serde_yaml_ng::from_str("listen: \"127.0.0.1:0\"\nexports: [{name: x, bdev: Nope}]\n")
            .unwrap();
    let err = NbdServer::from_config(reactors.cores(), &bad, &registry)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("nbd.exports[0].bdev") && err.contains("Nope"),
        "{err}"
    );
    server.stop();
}

#[test]
fn a_client_that_does_not_read_its_replies_does_not_stall_others() {
    let srv = one_disk();
    // Both connections on the same core (round-robin over two cores: 1st and 3rd).
    let mut slow = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let _other_core = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    let mut fast = RawClient::connect(srv.addr, "disk", Opts::default()).unwrap();
    // 64 MiB of read replies that nobody reads: the server's socket buffer fills up.
    let mut burst = Vec::new();
    for i in 0..64u64 {
        encode_request(
            &mut burst,
            HeaderMode::Compact,
            &RequestHeader {
                flags: 0,
                kind: CMD_READ,
                cookie: i,
                offset_bytes: (i % 16) * MIB,
                len_bytes: MIB,
            },
        );
    }
    slow.s.write_all(&burst).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    for i in 0..200u64 {
        let data = pattern(i, 4096);
        assert_eq!(fast.write((i % 64) * 4096, &data).unwrap().error, 0);
        assert!(fast.read((i % 64) * 4096, 4096).unwrap().data == data);
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The slow client still gets everything once it reads.
    for _ in 0..64 {
        let r = slow.recv(|_| MIB as usize).unwrap();
        assert_eq!((r.error, r.data.len()), (0, MIB as usize));
    }
}
