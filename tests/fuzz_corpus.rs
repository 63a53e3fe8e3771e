//! The fuzz corpora, replayed on stable: every file of `fuzz/corpus/NAME/` goes through
//! the body of fuzz target NAME (`tessera::fuzzing`, the function the libFuzzer target
//! in `fuzz/fuzz_targets/NAME.rs` calls). A panic, or an input that takes more than a
//! few seconds, fails the target's test with the file named.
//!
//! The seeds were written by `write_seed_corpora` below (valid samples of each input
//! format and edge cases around them):
//! `cargo nextest run --test fuzz_corpus --run-ignored only`
//! rewrites them; files libFuzzer adds (`cargo +nightly fuzz run NAME` in `fuzz/`) are
//! replayed alike once committed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera::fuzzing::{TARGETS, Target};

/// Longest one input may take (the pool image target opens, closes and checks pools).
const SLOW: Duration = Duration::from_secs(20);

fn corpus_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
}

/// Feeds every corpus file of `name` to its target.
fn replay(name: &str) {
    let f = target(name);
    let dir = corpus_dir(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 12,
        "the corpus of `{name}` has only {} inputs",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let t0 = Instant::now();
        let r = std::panic::catch_unwind(|| f(&data));
        let took = t0.elapsed();
        let file = path.file_name().unwrap().to_string_lossy();
        if r.is_err() {
            failures.push(format!("{name}/{file}: panicked (message above)"));
        } else if took > SLOW {
            failures.push(format!("{name}/{file}: took {took:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus_and_a_libfuzzer_target() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        assert!(corpus_dir(name).is_dir(), "no corpus for `{name}`");
        let src = std::fs::read_to_string(targets.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz target `{name}`: {e}"));
        assert!(
            src.contains(&format!("tessera::fuzzing::{name}(data)")),
            "fuzz/fuzz_targets/{name}.rs does not call tessera::fuzzing::{name}"
        );
    }
    let files = std::fs::read_dir(&targets).unwrap().count();
    assert_eq!(files, TARGETS.len(), "a fuzz target missing from TARGETS");
}

macro_rules! corpus_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

corpus_tests!(
    nvmf_pdu,
    nvmf_command,
    nbd_request,
    nbd_option,
    vdisk_meta,
    config_yaml,
    config_spdk_json,
    rpc_request,
    pool_open,
    send_stream,
    nvmf_auth,
);

// ---------------------------------------------------------------------------------
// The seeds.

struct Seeds {
    dir: PathBuf,
    n: usize,
    /// Write the seeds (`TESSERA_WRITE_CORPUS=1`) instead of checking the committed ones.
    write: bool,
}

impl Seeds {
    fn new(name: &str) -> Seeds {
        let dir = corpus_dir(name);
        let write = std::env::var_os("TESSERA_WRITE_CORPUS").is_some_and(|v| v == "1");
        if write {
            if dir.exists() {
                for e in std::fs::read_dir(&dir).unwrap() {
                    let p = e.unwrap().path();
                    if p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with("seed-")
                    {
                        std::fs::remove_file(p).unwrap();
                    }
                }
            }
            std::fs::create_dir_all(&dir).unwrap();
        }
        Seeds { dir, n: 0, write }
    }

    fn add(&mut self, what: &str, data: impl AsRef<[u8]>) {
        self.n += 1;
        let path = self.dir.join(format!("seed-{:02}-{what}", self.n));
        if self.write {
            std::fs::write(path, data).unwrap();
            return;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; regenerate the corpora: TESSERA_WRITE_CORPUS=1 cargo nextest run \
                 --release --test fuzz_corpus committed_seed_corpora_are_up_to_date",
                path.display()
            )
        });
        // Same length, not same bytes: some seeds hold fresh UUIDs and times.
        assert!(
            committed.len() == data.as_ref().len(),
            "{} is not what the seed builder makes now; regenerate the corpora: \
             TESSERA_WRITE_CORPUS=1 cargo nextest run --release --test fuzz_corpus \
             committed_seed_corpora_are_up_to_date",
            path.display()
        );
    }
}

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}
fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// An NVMe/TCP common header.
fn ch(ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut v = vec![ty, flags, hlen, pdo];
    v.extend_from_slice(&le32(plen));
    v
}

fn sqe(opcode: u8, cid: u16, nsid: u32, cdw: &[(usize, u32)]) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0] = opcode;
    b[2..4].copy_from_slice(&le16(cid));
    b[4..8].copy_from_slice(&le32(nsid));
    for &(n, v) in cdw {
        b[n * 4..n * 4 + 4].copy_from_slice(&le32(v));
    }
    b
}

fn nvmf_pdu_seeds() {
    use tessera::nvme::pdu::*;
    let mut s = Seeds::new("nvmf_pdu");
    let with = |cfg: u8, body: &[u8]| {
        let mut v = vec![cfg];
        v.extend_from_slice(body);
        v
    };
    let mut ic = Vec::new();
    put_ic_req(
        &mut ic,
        &IcReq {
            pfv: 0,
            hpda: 0,
            header_digest: false,
            data_digest: false,
            maxr2t: 0,
        },
    );
    s.add("icreq", with(0, &ic));
    let mut icd = Vec::new();
    put_ic_req(
        &mut icd,
        &IcReq {
            pfv: 0,
            hpda: 3,
            header_digest: true,
            data_digest: true,
            maxr2t: 15,
        },
    );
    s.add("icreq-digests", with(6, &icd));
    let mut icr = Vec::new();
    put_ic_resp(
        &mut icr,
        &IcResp {
            pfv: 0,
            cpda: 0,
            header_digest: false,
            data_digest: false,
            maxh2cdata: 131072,
        },
    );
    s.add("icresp-to-host", with(1, &icr));
    for (cfg, what, data_len, hd, dd) in [
        (0u8, "capsule-read", 0usize, false, false),
        (8, "capsule-write-inline", 4096, false, false),
        (6, "capsule-write-digests", 512, true, true),
    ] {
        let cmd = sqe(if data_len > 0 { 1 } else { 2 }, 7, 1, &[(10, 0), (12, 0)]);
        let mut v = Vec::new();
        let n = put_capsule_cmd(&mut v, &cmd, data_len, hd, dd, 0);
        assert!(n > 0);
        v.resize(v.len() + data_len + if dd { 4 } else { 0 }, 0xab);
        s.add(what, with(cfg, &v));
    }
    let mut cr = Vec::new();
    put_capsule_resp(&mut cr, &[0u8; 16], false);
    s.add("capsule-resp", with(1, &cr));
    let mut r2t = Vec::new();
    put_r2t(
        &mut r2t,
        &R2t {
            cccid: 3,
            ttag: 1,
            r2to: 0,
            r2tl: 8192,
        },
        false,
    );
    s.add("r2t", with(1, &r2t));
    let mut h2c = ch(6, 0x04, 24, 24, 24 + 4096);
    h2c.extend_from_slice(&le16(3));
    h2c.extend_from_slice(&le16(1));
    h2c.extend_from_slice(&le32(0));
    h2c.extend_from_slice(&le32(4096));
    h2c.extend_from_slice(&[0; 4]);
    h2c.resize(24 + 4096, 0x5a);
    s.add("h2c-data-last", with(0, &h2c));
    let mut term = Vec::new();
    put_term_req(
        &mut term,
        PduType::H2CTermReq,
        &TermReq { fes: 2, fei: 0 },
        &[1; 40],
    );
    s.add("h2c-term-req", with(0, &term));
    // Edge cases: truncated, lengths past the end, unknown type, a stream of several.
    s.add("empty", [0u8]);
    s.add("truncated-header", with(0, &ic[..5]));
    s.add("plen-huge", with(0, &ch(4, 0, 72, 0, u32::MAX)));
    s.add("hlen-over-plen", with(0, &ch(4, 0, 200, 0, 72)));
    s.add("unknown-type", with(0, &ch(0x7f, 0, 8, 0, 8)));
    s.add("pdo-before-header", with(8, &ch(4, 0x04, 72, 8, 4096 + 72)));
    let mut stream = ic.clone();
    let mut c2 = Vec::new();
    put_capsule_cmd(&mut c2, &sqe(0, 1, 1, &[]), 0, false, false, 0);
    stream.extend_from_slice(&c2);
    stream.extend_from_slice(&c2);
    s.add("stream-icreq-two-capsules", with(0, &stream));
    let mut bad_digest = Vec::new();
    put_capsule_resp(&mut bad_digest, &[1u8; 16], true);
    let n = bad_digest.len();
    bad_digest[n - 1] ^= 0xff;
    s.add("bad-header-digest", with(3, &bad_digest));
}

fn nvmf_command_seeds() {
    let mut s = Seeds::new("nvmf_command");
    s.add("identify-controller", sqe(0x06, 1, 0, &[(10, 1)]));
    s.add("identify-namespace", sqe(0x06, 2, 1, &[(10, 0)]));
    s.add("identify-ns-list", sqe(0x06, 3, 0, &[(10, 2)]));
    s.add("identify-ns-descriptors", sqe(0x06, 4, 1, &[(10, 3)]));
    s.add(
        "get-log-smart",
        sqe(0x02, 5, 0xffff_ffff, &[(10, 0x007f_0002)]),
    );
    s.add("get-log-discovery", sqe(0x02, 6, 0, &[(10, 0x00ff_0070)]));
    s.add(
        "set-features-queues",
        sqe(0x09, 7, 0, &[(10, 7), (11, 0x0003_0003)]),
    );
    s.add("keep-alive", sqe(0x18, 8, 0, &[]));
    s.add("async-event", sqe(0x0c, 9, 0, &[]));
    let mut fabrics = sqe(0x7f, 10, 0, &[]);
    fabrics[4] = 0x01; // connect
    let data = tessera::nvme::spec::ConnectData {
        hostid: [7; 16],
        cntlid: 0xffff,
        subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
        hostnqn: "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3ccc4ff".into(),
    };
    let mut connect = fabrics.to_vec();
    s.add("fabrics-connect-sqe", &connect);
    s.add("connect-data", data.encode());
    connect.extend_from_slice(&data.encode()[64..]);
    s.add("connect-sqe-and-data", &connect);
    let mut prop_get = sqe(0x7f, 11, 0, &[(11, 0x14)]);
    prop_get[4] = 0x04;
    s.add("fabrics-property-get", prop_get);
    s.add("read", sqe(0x02, 12, 1, &[(10, 100), (12, 7)]));
    s.add("write-fua", sqe(0x01, 13, 1, &[(10, 0), (12, 0x4000_0000)]));
    s.add("flush", sqe(0x00, 14, 1, &[]));
    s.add("write-zeroes", sqe(0x08, 15, 1, &[(10, 8), (12, 255)]));
    let mut dsm = sqe(0x09, 16, 1, &[(10, 1), (11, 4)]).to_vec();
    for (len, lba) in [(8u32, 0u64), (u32::MAX, u64::MAX)] {
        let mut r = [0u8; 16];
        r[4..8].copy_from_slice(&le32(len));
        r[8..16].copy_from_slice(&lba.to_le_bytes());
        dsm.extend_from_slice(&r);
    }
    s.add("dsm-deallocate-ranges", dsm);
    let mut page = vec![0u8; 4096];
    page[..2].copy_from_slice(&le16(0x1b36));
    page[24..64].copy_from_slice(&[b'x'; 40]);
    s.add("identify-page", page);
    s.add("short", [0x06, 0, 1]);
    s.add(
        "cqe",
        [0u8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 7, 0, 0x03, 0x40],
    );
    s.add("all-ones", [0xffu8; 1024]);
}

fn nbd_request_seeds() {
    use tessera::frontend::nbd::proto::*;
    let mut s = Seeds::new("nbd_request");
    let req = |mode: HeaderMode, kind: u16, flags: u16, off: u64, len: u64| {
        let mut v = Vec::new();
        encode_request(
            &mut v,
            mode,
            &RequestHeader {
                flags,
                kind,
                cookie: 0x1122,
                offset_bytes: off,
                len_bytes: len,
            },
        );
        v
    };
    let knobs = |k0: u8, size_mib: u8, bs: u8| vec![k0, size_mib.saturating_sub(1), bs, 0];
    let compact = HeaderMode::Compact;
    let ext = HeaderMode::Extended;
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_READ, 0, 0, 4096));
    s.add("read", v);
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_WRITE, CMD_FLAG_FUA, 4096, 4096));
    v.resize(v.len() + 4096, 0xcd);
    v.extend(req(compact, CMD_FLUSH, 0, 0, 0));
    s.add("write-fua-then-flush", v);
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_TRIM, 0, 0, 1 << 20));
    v.extend(req(compact, CMD_WRITE_ZEROES, 0, 1 << 20, 1 << 20));
    s.add("trim-and-write-zeroes", v);
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_BLOCK_STATUS, 0, 0, 64 << 20));
    s.add("block-status", v);
    let mut v = knobs(0b111111, 64, 3);
    v.extend(req(ext, CMD_WRITE, 0, 0, 8192));
    v.resize(v.len() + 8192, 1);
    v.extend(req(ext, CMD_READ, 0, 8192, 8192));
    s.add("extended-write-read", v);
    let mut v = knobs(0b111110, 1, 3);
    v.extend(req(compact, CMD_READ, 0, (1 << 20) - 512, 4096));
    s.add("read-past-end", v);
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_READ, 0, 100, 4096));
    s.add("unaligned-offset", v);
    let mut v = knobs(0b000010, 64, 3);
    v.extend(req(compact, CMD_WRITE, 0, 0, 4096));
    s.add("write-read-only", v);
    let mut v = knobs(0, 64, 3);
    v.extend(req(compact, CMD_READ, 0, 0, 64 << 20));
    s.add("read-too-large", v);
    let mut v = knobs(0, 64, 3);
    v.extend(req(compact, 99, 0xffff, u64::MAX, u64::MAX));
    s.add("unknown-command-all-flags", v);
    let mut v = knobs(0, 64, 3);
    v.extend(req(compact, CMD_DISC, 0, 0, 0));
    v.extend(req(compact, CMD_READ, 0, 0, 4096));
    s.add("disconnect-then-read", v);
    let mut v = knobs(0, 64, 3);
    v.extend([0x25, 0x60, 0x95, 0x14, 0, 0, 0, 0]);
    s.add("bad-magic", v);
    s.add("knobs-only", [0xffu8, 0xff, 0xff, 0xff]);
    let mut v = knobs(1, 64, 3);
    v.extend(req(ext, CMD_WRITE, 1 << 5, 0, u64::MAX));
    s.add("extended-payload-len-huge", v);
    let mut v = knobs(0b111110, 64, 3);
    v.extend(req(compact, CMD_WRITE, CMD_FLAG_FUA, 4095, 3000));
    v.resize(v.len() + 3000, 0xab);
    v.extend(req(compact, CMD_WRITE_ZEROES, 0, 1, (1 << 20) + 5));
    v.extend(req(compact, CMD_TRIM, 0, 7, 100));
    v.extend(req(compact, CMD_BLOCK_STATUS, 0, 1023, 1));
    s.add("unaligned-write-zeroes-trim-status", v);
}

fn nbd_option_seeds() {
    use tessera::frontend::nbd::proto::*;
    let mut s = Seeds::new("nbd_option");
    let flags = |f: u32| f.to_be_bytes().to_vec();
    let fixed = u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    let opt = |o: u32, data: &[u8]| {
        let mut v = Vec::new();
        encode_option(&mut v, o, data);
        v
    };
    let mut v = flags(fixed);
    v.extend(opt(OPT_GO, &encode_info_request("vd0", &[0, 3])));
    s.add("go-vd0", v);
    let mut v = flags(fixed);
    v.extend(opt(OPT_INFO, &encode_info_request("", &[])));
    s.add("info-default-export", v);
    let mut v = flags(fixed);
    v.extend(opt(OPT_LIST, &[]));
    v.extend(opt(OPT_STRUCTURED_REPLY, &[]));
    v.extend(opt(OPT_EXTENDED_HEADERS, &[]));
    s.add("list-structured-extended", v);
    let mut v = flags(fixed);
    v.extend(opt(
        OPT_SET_META_CONTEXT,
        &encode_meta_context_request("vd0", &["base:allocation"]),
    ));
    v.extend(opt(
        OPT_LIST_META_CONTEXT,
        &encode_meta_context_request("vd0", &["base:", "qemu:dirty-bitmap:x"]),
    ));
    s.add("meta-contexts", v);
    let mut v = flags(fixed);
    v.extend(opt(OPT_EXPORT_NAME, b"vd0"));
    s.add("export-name", v);
    let mut v = flags(fixed);
    v.extend(opt(OPT_STARTTLS, &[]));
    v.extend(opt(OPT_ABORT, &[]));
    s.add("starttls-abort", v);
    s.add("flags-unknown-bits", flags(0xffff_ffff));
    s.add("flags-zero", flags(0));
    let mut v = flags(fixed);
    v.extend_from_slice(&[0, 0, 0, OPT_GO as u8]);
    v.extend(opt(OPT_GO, &[0, 0, 0, 9, b'a']));
    s.add("go-name-length-past-end", v);
    let mut v = flags(fixed);
    v.extend(opt(OPT_GO, &encode_info_request("vd0", &[0; 40])));
    s.add("go-many-info-requests", v);
    let mut v = flags(fixed);
    v.extend(opt(0x1234, &[1, 2, 3]));
    s.add("unknown-option", v);
    let mut v = flags(fixed);
    let mut o = opt(OPT_INFO, &[]);
    let n = o.len();
    o[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    v.extend(o);
    s.add("option-length-huge", v);
    let mut v = flags(fixed);
    v.extend(opt(
        OPT_SET_META_CONTEXT,
        &[0, 0, 0, 3, b'v', b'd', b'0', 0xff, 0xff, 0xff, 0xff],
    ));
    s.add("meta-context-count-huge", v);
}

fn vdisk_meta_seeds() {
    use tessera::fuzzing::image::{PoolImage, base_image};
    use tessera::vdisk::meta::PageKind;
    let mut s = Seeds::new("vdisk_meta");
    let img = PoolImage::parse(base_image()).unwrap();
    s.add("label", &img.bytes[..4096]);
    let at = PoolImage::slot_offset(img.slot);
    s.add("superblock", &img.bytes[at..at + 4096]);
    for kind in [
        PageKind::Internal,
        PageKind::Leaf,
        PageKind::Directory,
        PageKind::SpaceMap,
        PageKind::SpaceMapIndex,
    ] {
        let p = *img.pages(kind).last().unwrap();
        let page = img.page(p);
        s.add(&format!("{kind:?}-page").to_lowercase(), page);
        // The same payload forged into a valid header of this kind (byte 1 says
        // which; byte 0 the page index).
        let code = match kind {
            PageKind::Internal => 0u8,
            // The image's leaves are packed ones (`PoolImage` files both as leaves).
            PageKind::Leaf | PageKind::PackedLeaf => 6,
            PageKind::Directory => 2,
            PageKind::SpaceMapIndex => 3,
            PageKind::SpaceMap => 4,
            PageKind::Log => 5,
        };
        let mut forged = page.to_vec();
        forged[0] = p as u8;
        forged[1] = code << 1 | 1;
        s.add(&format!("{kind:?}-forged").to_lowercase(), forged);
    }
    // A log page: a splice, a fill, a disk record, a delete and the counters.
    let packed_log = {
        use tessera::vdisk::meta::directory::{DiskKind, DiskRecord, JobRecord};
        use tessera::vdisk::meta::log::{self, LogRecord};
        use tessera::vdisk::meta::node::RawExtent;
        let rec = DiskRecord {
            id: 2,
            uuid: uuid::Uuid::from_u128(2),
            name: "vd1".into(),
            size_blocks: 1 << 20,
            kind: DiskKind::Clone,
            read_only: false,
            thin: true,
            parent: 1,
            snap_gen: 3,
            created_gen: 3,
            root_page: tessera::vdisk::meta::NO_PAGE,
            cow_policy: 1,
            job: JobRecord::Split { cursor: 4 },
            created_unix: 1_764_800_000,
            external: None,
        };
        let records: Vec<Vec<LogRecord>> = vec![
            vec![LogRecord::Splice {
                disk: rec.id,
                from: 3,
                to: 5,
                extents: vec![RawExtent {
                    vseg: 3,
                    len: 1,
                    error: false,
                    birth: 2,
                    layers: vec![(7, Some([1, 0, 0, 1 << 63]))].into(),
                }],
            }],
            vec![
                LogRecord::Fill {
                    seg: 7,
                    words: [3, 0, 0, 1 << 63],
                },
                LogRecord::PutDisk {
                    rec,
                    share_root_of: 0,
                },
                LogRecord::DropDisk { id: 9 },
                LogRecord::Counters {
                    generation: 4,
                    next_disk_id: 10,
                },
            ],
        ];
        let groups: Vec<Vec<Vec<u8>>> = records
            .iter()
            .map(|g| g.iter().map(log::encode).collect())
            .collect();
        let place = 40u64;
        let pool = uuid::Uuid::from_u128(0x7e55);
        let mut page = log::pack(&log::RecordGroups::of(&groups), 12, 30, place, 64, &pool)
            .remove(0)
            .1;
        page[0] = place as u8;
        page[1] = 5 << 1 | 1;
        s.add("log-forged", page);
        // The same records with the splice and the fill packed (superblock version 5).
        let packed: Vec<Vec<Vec<u8>>> = records
            .iter()
            .map(|g| g.iter().map(|r| log::encode_packed(r).unwrap()).collect())
            .collect();
        let mut page = log::pack(&log::RecordGroups::of(&packed), 12, 30, place, 64, &pool)
            .remove(0)
            .1;
        page[0] = place as u8;
        page[1] = 5 << 1 | 1;
        page
    };
    s.add("empty", []);
    s.add("zeros", [0u8; 4096]);
    s.add("ones", [0xffu8; 4096]);
    // A leaf in the wide encoding builds still read, and its payload forged as one.
    {
        use tessera::vdisk::map::{Extent, Fills, Layer};
        use tessera::vdisk::meta::node::encode_wide_leaf;
        let fills = Fills::new(64);
        fills.fresh(9).set_range(5, 20);
        let mut e = Extent::full(40, 9, 3);
        e.layers[0] = Layer::partial(e.layers[0].seg());
        let exts = [Extent::full(0, 7, 1), Extent::run(3, 4, 10, 2), e];
        let mut wide = encode_wide_leaf(11, 2, &img.sb.pool_uuid, &exts, &fills);
        s.add("wide-leaf-page", &wide);
        wide[0] = 11;
        wide[1] = 1 << 1 | 1;
        s.add("wide-leaf-forged", &wide);
    }
    let mut huge_count = img.page(img.pages(PageKind::Leaf)[0]).to_vec();
    huge_count[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    huge_count[1] = 3;
    s.add("leaf-forged-count-huge", huge_count);
    let mut v1 = img.bytes[..4096].to_vec();
    v1[8] = 1;
    s.add("label-version-1", v1);
    s.add("short-superblock", &img.bytes[at..at + 100]);
    s.add("log-packed-forged", packed_log);
}

fn config_yaml_seeds() {
    let mut s = Seeds::new("config_yaml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("spdk-config");
    for f in ["default.yaml", "example.yaml"] {
        s.add(f, std::fs::read(root.join(f)).unwrap());
    }
    let docs = [
        ("minimal", "cores: [0]\n"),
        ("mask", "cores: \"0x3\"\nidle: busy\n"),
        (
            "bdevs",
            "bdevs:\n  - {type: malloc, name: M0, size: 64MiB, block_size: 512}\n  - {type: null, name: N0, size: 1TiB}\n  - {type: error, name: E0, base: M0, volatile_cache: true}\n",
        ),
        (
            "uring",
            "bdevs:\n  - {type: uring, name: d0, path: /tmp/x.img, size: 1GiB, options: {queue_depth: 128, fixed_files: true, sqpoll: false, iopoll: false}}\n",
        ),
        (
            "pool-disk",
            "bdevs:\n  - {type: malloc, name: M0, size: 1GiB}\npools:\n  - {name: p0, bdevs: [M0], segment_size: 4MiB, cow_policy: copy-out}\ndisks:\n  - {name: vd0, pool: p0, size: 100MiB, thin: false}\n",
        ),
        (
            "bad-size",
            "bdevs:\n  - {type: malloc, name: M0, size: 12XB}\n",
        ),
        ("unknown-field", "cores: [0]\nfrobnicate: 1\n"),
        (
            "dup-names",
            "bdevs:\n  - {type: malloc, name: M0, size: 1MiB}\n  - {type: malloc, name: M0, size: 1MiB}\n",
        ),
        (
            "dangling-refs",
            "pools:\n  - {name: p0, bdevs: [nope]}\ndisks:\n  - {name: d, pool: none, size: 1GiB}\n",
        ),
        (
            "nbd-nvmf",
            "nbd:\n  listen: 127.0.0.1:10809\n  exports: [{name: a, bdev: b}]\nnvmf:\n  subsystems:\n    - nqn: nqn.2016-06.io.spdk:cnode1\n      listeners: [{address: 127.0.0.1, port: 4420}]\n      namespaces: [{bdev: vd0, nsid: 1}]\n",
        ),
        ("anchors", "a: &x [0]\ncores: *x\n"),
        ("deep", &"[".repeat(200)),
        ("tab-indent", "cores:\n\t- 0\n"),
        ("huge-number", "cores: [99999999999999999999999]\n"),
        ("empty", ""),
    ];
    for (what, d) in docs {
        s.add(what, d);
    }
}

fn config_spdk_json_seeds() {
    let mut s = Seeds::new("config_spdk_json");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("spdk-config");
    s.add(
        "example-spdk.json",
        std::fs::read(root.join("example-spdk.json")).unwrap(),
    );
    let docs = [
        ("empty-subsystems", r#"{"subsystems": []}"#),
        (
            "bdev-malloc",
            r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 262144, "block_size": 4096}}]}]}"#,
        ),
        (
            "lvstore-lvol",
            r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 65536, "block_size": 4096}}, {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "M0", "lvs_name": "lvs0", "cluster_sz": 1048576}}, {"method": "bdev_lvol_create", "params": {"lvol_name": "vd0", "size_in_mib": 64, "lvs_name": "lvs0", "thin_provision": true}}]}]}"#,
        ),
        (
            "nvmf",
            r#"{"subsystems": [{"subsystem": "nvmf", "config": [{"method": "nvmf_create_transport", "params": {"trtype": "TCP"}}, {"method": "nvmf_create_subsystem", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": true}}, {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "4420"}}}]}]}"#,
        ),
        (
            "unknown-method",
            r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_frob", "params": {}}]}]}"#,
        ),
        (
            "wrong-types",
            r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": 7, "num_blocks": "x"}}]}]}"#,
        ),
        (
            "null-config",
            r#"{"subsystems": [{"subsystem": "bdev", "config": null}]}"#,
        ),
        ("not-an-object", "[1, 2, 3]"),
        ("truncated", r#"{"subsystems": [{"subsystem": "bdev", "con"#),
        (
            "huge-numbers",
            r#"{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {"name": "M", "num_blocks": 18446744073709551615, "block_size": 4294967295}}]}]}"#,
        ),
        ("deep", &"[".repeat(300)),
        ("empty", ""),
    ];
    for (what, d) in docs {
        s.add(what, d);
    }
}

fn rpc_request_seeds() {
    let mut s = Seeds::new("rpc_request");
    let reqs = [
        (
            0u8,
            "get-version",
            r#"{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}"#,
        ),
        (
            3,
            "bdev-get-bdevs",
            r#"{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "params": {"name": "Malloc0"}, "id": 2}"#,
        ),
        (
            5,
            "malloc-create",
            r#"{"jsonrpc": "2.0", "method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 1024, "block_size": 512}, "id": 3}"#,
        ),
        (
            7,
            "lvol-snapshot",
            r#"{"jsonrpc": "2.0", "method": "bdev_lvol_snapshot", "params": {"lvol_name": "vd0", "snapshot_name": "s0"}, "id": "x"}"#,
        ),
        (
            9,
            "lvol-clone",
            r#"{"jsonrpc": "2.0", "method": "bdev_lvol_clone", "params": {"snapshot_name": "s0", "clone_name": "c0"}, "id": null}"#,
        ),
        (
            11,
            "nvmf-subsystem",
            r#"{"jsonrpc": "2.0", "method": "nvmf_create_subsystem", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": true}, "id": 4}"#,
        ),
        (
            13,
            "batch",
            r#"[{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}, {"jsonrpc": "2.0", "method": "save_config"}]"#,
        ),
        (
            1,
            "notification",
            r#"{"jsonrpc": "2.0", "method": "bdev_get_bdevs"}"#,
        ),
        (
            2,
            "unknown-method",
            r#"{"jsonrpc": "2.0", "method": "frobnicate", "id": 5}"#,
        ),
        (
            4,
            "wrong-params",
            r#"{"jsonrpc": "2.0", "method": "bdev_malloc_create", "params": {"num_blocks": "lots"}, "id": 6}"#,
        ),
        (
            6,
            "params-array",
            r#"{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "params": [1, 2], "id": 7}"#,
        ),
        (
            8,
            "not-jsonrpc-2",
            r#"{"jsonrpc": "1.0", "method": "spdk_get_version", "id": 8}"#,
        ),
        (10, "empty-batch", "[]"),
        (
            12,
            "two-frames",
            r#"{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 2}"#,
        ),
        (
            14,
            "strings-with-braces",
            r#"{"jsonrpc": "2.0", "method": "bdev_get_bdevs", "params": {"name": "}{]["}, "id": "\"}"}"#,
        ),
        (
            16,
            "unbalanced",
            r#"{"jsonrpc": "2.0", "method": "x", "params": {"a": [1, 2}, "id": 1}"#,
        ),
        (
            0,
            "garbage-before",
            r#"xx{"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1}"#,
        ),
        (1, "deep", &"[".repeat(500)),
    ];
    for (knobs, what, body) in reqs {
        let mut v = vec![knobs];
        v.extend_from_slice(body.as_bytes());
        s.add(what, v);
    }
    let mut big = vec![0u8];
    big.extend_from_slice(br#"{"jsonrpc": "2.0", "method": "x", "params": {"a": ""#);
    big.resize(70 << 10, b'a');
    s.add("over-the-size-limit", big);
}

/// `pool_open` inputs: `[flags, (op, a, b, len, bytes...)...]` (see
/// `tessera::fuzzing::pool_open`). Blocks: 0 label, 1/2 superblock slots, 3 + k page k.
fn pool_open_seeds() {
    use tessera::fuzzing::image::{PoolImage, base_image};
    use tessera::vdisk::meta::PageKind;
    let img = PoolImage::parse(base_image()).unwrap();
    let leaf = img.pages(PageKind::Leaf)[0] as u8;
    let leaf2 = img.pages(PageKind::Leaf)[5] as u8;
    let node = img.pages(PageKind::Internal)[0] as u8;
    let dir = img.pages(PageKind::Directory)[0] as u8;
    let sm = img.pages(PageKind::SpaceMap)[0] as u8;
    let index = img.pages(PageKind::SpaceMapIndex)[0] as u8;
    let newest = 1 + img.slot as u8;
    let older = 2 - img.slot as u8;
    let mut s = Seeds::new("pool_open");
    let flip =
        |block: u8, at: usize, bit: u8| vec![3 | bit << 2, block, (at / 16) as u8, (at % 16) as u8];
    let patch = |block: u8, at: usize, bytes: &[u8]| {
        let mut v = vec![0, block, (at / 16) as u8, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    };
    let ops = |flags: u8, parts: &[Vec<u8>]| {
        let mut v = vec![flags];
        for p in parts {
            v.extend_from_slice(p);
        }
        v
    };
    s.add("intact", [0u8]);
    s.add("intact-resealed", [1u8]);
    s.add("flip-label", ops(0, &[flip(0, 40, 1)]));
    s.add("flip-newest-superblock", ops(0, &[flip(newest, 30, 0)]));
    s.add(
        "flip-both-superblocks",
        ops(0, &[flip(newest, 30, 0), flip(older, 30, 0)]),
    );
    s.add("flip-leaf", ops(0, &[flip(3 + leaf, 100, 3)]));
    s.add("flip-internal", ops(0, &[flip(3 + node, 80, 5)]));
    s.add("flip-directory", ops(0, &[flip(3 + dir, 90, 7)]));
    s.add("flip-space-map", ops(0, &[flip(3 + sm, 200, 2)]));
    s.add("flip-index", ops(0, &[flip(3 + index, 70, 1)]));
    s.add(
        "misdirect-leaf-onto-leaf",
        ops(0, &[vec![1, leaf, leaf2, 0]]),
    );
    s.add(
        "misdirect-leaf-onto-directory",
        ops(0, &[vec![1, leaf, dir, 0]]),
    );
    s.add(
        "misdirect-index-onto-space-map",
        ops(0, &[vec![1, index, sm, 0]]),
    );
    s.add("lost-write-directory", ops(0, &[vec![2, dir, 0, 0]]));
    s.add("lost-write-space-map", ops(0, &[vec![2, sm, 0, 0]]));
    s.add("lost-write-internal", ops(0, &[vec![2, node, 1, 0]]));
    // Resealed and repointed: the crafted fields themselves must be caught.
    let seg_of_first_extent = 64 + 8 + 4 + 1 + 1 + 8; // header, vseg, len, state, nlayers, birth
    s.add(
        "crafted-leaf-segment-reserved",
        ops(1, &[patch(3 + leaf, 80, &[0; 16])]),
    );
    s.add(
        "crafted-leaf-segment-huge",
        ops(1, &[patch(3 + leaf, 80, &[0xff; 8])]),
    );
    let _ = seg_of_first_extent;
    s.add(
        "crafted-leaf-count",
        ops(
            1,
            &[patch(3 + leaf, 0, &{
                let mut h = img.page(leaf as u64)[..16].to_vec();
                h[12..16].copy_from_slice(&500u32.to_le_bytes());
                h
            })],
        ),
    );
    s.add(
        "crafted-internal-key",
        ops(1, &[patch(3 + node, 64 + 28, &[0xff; 8])]),
    );
    s.add(
        "crafted-internal-child",
        ops(1, &[patch(3 + node, 64 + 28 + 8, &[0; 8])]),
    );
    s.add(
        "crafted-directory-record",
        ops(1, &[patch(3 + dir, 64, &[9; 8])]),
    );
    s.add(
        "crafted-directory-size",
        ops(1, &[patch(3 + dir, 64 + 8 + 16 + 128, &[0; 8])]),
    );
    s.add(
        "crafted-superblock-sm-pages",
        ops(1, &[patch(newest, 80, &[0; 8])]),
    );
    s.add(
        "crafted-superblock-meta-pages",
        ops(1, &[patch(newest, 64, &[0xff; 8])]),
    );
    s.add(
        "crafted-superblock-containers",
        ops(1, &[patch(newest, 272, &[0xff; 16])]),
    );
    s.add(
        "crafted-label-segment-size",
        ops(1, &[patch(0, 48, &[0, 0, 2, 0])]),
    );
    s.add(
        "crafted-space-map-counts",
        ops(1, &[patch(3 + sm, 96, &[7; 64])]),
    );
    s.add(
        "crafted-index-entry",
        ops(1, &[patch(3 + index, 64, &[5; 8])]),
    );
    s.add("zero-page-leaf", ops(1, &[patch(3 + leaf, 64, &[0; 255])]));
    s.add("truncated-ops", [0u8, 0, 3]);
}

/// The committed seeds are what the builders above make (every one there, of the same length; with
/// `TESSERA_WRITE_CORPUS=1`, this writes them instead).
#[test]
fn committed_seed_corpora_are_up_to_date() {
    nvmf_pdu_seeds();
    nvmf_command_seeds();
    nbd_request_seeds();
    nbd_option_seeds();
    vdisk_meta_seeds();
    config_yaml_seeds();
    config_spdk_json_seeds();
    rpc_request_seeds();
    pool_open_seeds();
    send_stream_seeds();
    nvmf_auth_seeds();
}

fn nvmf_auth_seeds() {
    use tessera::nvme::auth::{self, DhGroup, HashId};
    use tessera::nvme::dhchap::DhchapKey;
    let mut s = Seeds::new("nvmf_auth");
    let with = |sel: u8, m: &[u8]| {
        let mut v = vec![sel];
        v.extend_from_slice(m);
        v
    };
    let mut neg = Vec::new();
    auth::encode_negotiate(&mut neg, 1, &HashId::ALL, &DhGroup::ALL);
    s.add("negotiate", with(0, &neg));
    s.add("negotiate-truncated", with(0, &neg[..40]));
    let mut ch = vec![0u8; 4096];
    let n = auth::encode_challenge(
        &mut ch,
        &auth::Challenge {
            tid: 1,
            hash: HashId::Sha384,
            dhgroup: DhGroup::Ffdhe2048,
            seqnum: 7,
            cval: &[3; 48],
            dhv: &[4; 256],
        },
    )
    .unwrap();
    s.add("challenge", with(1, &ch[..n]));
    let mut reply = Vec::new();
    auth::encode_reply(
        &mut reply,
        &auth::Reply {
            tid: 1,
            hl: 64,
            cvalid: true,
            seqnum: 9,
            rval: &[1; 64],
            cval: &[2; 64],
            dhv: &[5; 512],
        },
    );
    s.add("reply-sha512", with(2, &reply));
    let mut s1 = vec![0u8; 80];
    let n = auth::encode_success1(
        &mut s1,
        &auth::Success1 {
            tid: 1,
            hl: 64,
            rval: Some(&[6; 64]),
        },
    )
    .unwrap();
    s.add("success1", with(2, &s1[..n]));
    let mut s2 = Vec::new();
    auth::encode_success2(&mut s2, 1);
    s.add("success2", with(0, &s2));
    let mut f = [0u8; 8];
    auth::encode_failure(
        &mut f,
        auth::auth_id::FAILURE2,
        1,
        auth::FailureReason::Failed,
    );
    s.add("failure2", with(0, &f));
    let key = DhchapKey::format(Some(HashId::Sha256), &[9; 32]);
    s.add("dhhc-key", with(0, key.as_bytes()));
    let key = DhchapKey::format(None, &[10; 64]);
    s.add("dhhc-key-64-untransformed", with(0, key.as_bytes()));
    let mut bad = DhchapKey::format(Some(HashId::Sha512), &[11; 48]).to_string();
    bad.replace_range(12..13, "Z");
    s.add("dhhc-key-bad-crc", with(0, bad.as_bytes()));
    let mut f1 = [0u8; 8];
    auth::encode_failure(
        &mut f1,
        auth::auth_id::FAILURE1,
        2,
        auth::FailureReason::IncorrectPayload,
    );
    s.add("failure1", with(0, &f1));
    let mut r0 = Vec::new();
    auth::encode_reply(
        &mut r0,
        &auth::Reply {
            tid: 1,
            hl: 32,
            cvalid: false,
            seqnum: 0,
            rval: &[1; 32],
            cval: &[0; 32],
            dhv: &[],
        },
    );
    s.add("reply-sha256-null", with(0, &r0));
    let mut scc = neg.clone();
    scc[6] = 1;
    s.add("negotiate-scc", with(0, &scc));
    s.add("challenge-truncated", with(1, &ch[..40]));
}

fn send_stream_seeds() {
    use tessera::replicate::stream::{Encoder, Header};
    use uuid::Uuid;
    let mut s = Seeds::new("send_stream");
    let header = |base: bool, block_size: u32, start: u64| Header {
        pool_uuid: Uuid::from_u128(0x1111),
        disk_uuid: Uuid::from_u128(0x2222),
        base: base.then(|| (Uuid::from_u128(0x3333), "s1".to_string())),
        target_uuid: Uuid::from_u128(0x4444),
        target_name: "s2".into(),
        block_size,
        size: 1 << 20,
        start,
    };
    let stream = |h: &Header, recs: &[(u64, usize, u8)]| {
        let mut e = Encoder::new(Vec::new(), h).unwrap();
        for &(off, len, fill) in recs {
            e.data(off, &vec![fill; len]).unwrap();
        }
        e.finish().unwrap().0
    };
    let with = |knobs: u8, b: &[u8]| {
        let mut v = vec![knobs];
        v.extend_from_slice(b);
        v
    };
    let full = stream(&header(false, 4096, 0), &[(0, 4096, 1), (8192, 8192, 2)]);
    let incr = stream(&header(true, 512, 0), &[(512, 512, 3), (4096, 1024, 4)]);
    s.add("full", with(0, &full));
    s.add("incremental", with(5, &incr));
    s.add("empty", with(1, &stream(&header(true, 4096, 0), &[])));
    s.add(
        "resumed",
        with(7, &stream(&header(true, 4096, 65536), &[(65536, 4096, 5)])),
    );
    s.add("header-only", with(2, &header(false, 4096, 0).encode()));
    s.add("truncated-record", with(3, &full[..full.len() - 30]));
    let mut bad = full.clone();
    bad[200] ^= 1;
    s.add("bad-data-crc", with(4, &bad));
    let mut bad = full.clone();
    bad[8] = 2;
    s.add("version-2", with(6, &bad));
    s.add(
        "overlap",
        with(
            8,
            &stream(&header(false, 4096, 0), &[(8192, 4096, 1), (4096, 8192, 1)]),
        ),
    );
    s.add(
        "past-end",
        with(
            9,
            &stream(&header(false, 4096, 0), &[((1 << 20) - 4096, 8192, 1)]),
        ),
    );
    let mut trailing = incr.clone();
    trailing.push(0);
    s.add("trailing", with(10, &trailing));
    s.add("bad-block-size", with(11, &header(false, 1000, 0).encode()));
    s.add("garbage", with(12, b"TSSEND\r\n\x01\x00garbage"));
}
