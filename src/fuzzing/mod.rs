//! The bodies of the fuzz targets, one function per target of `fuzz/fuzz_targets/`
//! (each target is one line that calls its function here), so that the same code runs
//! under libFuzzer (`cargo +nightly fuzz run NAME`, in `fuzz/`) and as a corpus replay
//! on stable Rust (`tests/fuzz_corpus.rs` feeds every file of `fuzz/corpus/NAME/` to
//! [`TARGETS`]). Each function must return for any input; a panic is a finding.
//!
//! [`image`] holds the pool images the `pool_open` target mutates; the metadata damage
//! tests use it too.

pub mod image;

use crate::bdev::IoStatus;
use crate::config::Config;
use crate::config::spdk_json;
use crate::frontend::nbd::check::{Command, ExportLimits, Verdict, check_request};
use crate::frontend::nbd::proto::{
    FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, HeaderMode, OPTION_HEADER_LEN, parse_client_flags,
    parse_option, parse_option_header, parse_request,
};
use crate::frontend::nbd::unaligned::{Plan, Step};
use crate::nvme::pages;
use crate::nvme::pdu::{self, Decoded, Limits, Receiver};
use crate::nvme::spec::{self, ConnectData, Cqe, QueueKind, Sqe};
use crate::rpc::methods::{METHODS, check_params};
use crate::rpc::protocol::{Frame, Framer, Incoming, encode, parse_frame};
use crate::vdisk::meta::{self, BlockPtr, PAGE_BYTES, label::Label, superblock::Superblock};
use std::collections::BTreeSet;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("nvmf_pdu", nvmf_pdu),
    ("nvmf_command", nvmf_command),
    ("nbd_request", nbd_request),
    ("nbd_option", nbd_option),
    ("vdisk_meta", vdisk_meta),
    ("config_yaml", config_yaml),
    ("config_spdk_json", config_spdk_json),
    ("rpc_request", rpc_request),
    ("pool_open", pool_open),
    ("send_stream", send_stream),
    ("nvmf_auth", nvmf_auth),
];

/// The in-band authentication messages and `DHHC-1` secrets: the first byte picks the
/// hash length a reply is decoded with; the rest is one message (or a key file). No
/// decoder may panic, and what one accepts must lie within the input.
pub fn nvmf_auth(data: &[u8]) {
    use crate::nvme::auth;
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let hl = [32, 48, 64][sel as usize % 3];
    let _ = auth::decode_header(msg);
    if let Ok(n) = auth::decode_negotiate(msg) {
        assert!(n.hashes.len() <= 30 && n.dhgroups.len() <= 30);
        assert_eq!(n.sc_c, msg[6]);
    }
    if let Ok(r) = auth::decode_reply(msg, hl) {
        assert_eq!((r.rval.len(), r.cval.len()), (hl, hl));
        assert_eq!(auth::DHCHAP_HEADER_LEN + 2 * hl + r.dhv.len(), msg.len());
        let mut again = Vec::new();
        auth::encode_reply(&mut again, &r);
        assert_eq!(auth::decode_reply(&again, hl).as_ref(), Ok(&r));
    }
    if let Ok(r) = auth::decode_reply_scc(msg, hl, true) {
        assert_eq!(auth::DHCHAP_HEADER_LEN + 2 * hl + r.dhv.len(), msg.len());
    }
    if let Ok(c) = auth::decode_challenge(msg) {
        assert_eq!(c.cval.len(), c.hash.digest_len());
        assert!(auth::DHCHAP_HEADER_LEN + c.cval.len() + c.dhv.len() <= msg.len());
        let mut out = vec![0u8; auth::MAX_MESSAGE_LEN.max(msg.len())];
        let n = auth::encode_challenge(&mut out, &c).expect("a decoded challenge encodes");
        assert_eq!(auth::decode_challenge(&out[..n]).as_ref(), Ok(&c));
    }
    if let Ok(s) = auth::decode_success1(msg) {
        assert!(s.rval.is_none_or(|r| r.len() == s.hl));
    }
    let _ = auth::decode_success2(msg);
    let _ = auth::decode_failure(msg);
    if let Ok(k) = crate::nvme::dhchap::DhchapKey::parse(msg) {
        assert!(matches!(k.key_len(), 32 | 48 | 64));
    }
}

/// The NVMe/TCP PDU codec: any bytes, either direction, any negotiated digests and
/// limits. The decoder must never panic, and a frame it accepts must lie within the PDU
/// length it declares.
pub fn nvmf_pdu(data: &[u8]) {
    let Some((&cfg, bytes)) = data.split_first() else {
        return;
    };
    let rx = if cfg & 1 == 0 {
        Receiver::Controller
    } else {
        Receiver::Host
    };
    let lim = Limits {
        header_digest: cfg & 2 != 0,
        data_digest: cfg & 4 != 0,
        max_in_capsule_len: if cfg & 8 != 0 { 8192 } else { 4096 },
        max_data_len: if cfg & 16 != 0 { 131072 } else { 4096 },
    };
    if let Ok(Decoded::Frame(f)) = pdu::decode_header(bytes, rx, &lim) {
        assert!(f.header_len <= f.total_len || f.total_len >= pdu::SHORT_HLEN);
        assert!(f.data_offset + f.data_len <= f.total_len);
    }
    // Walk a stream of PDUs as a receiver would.
    let mut rest = bytes;
    while let Ok((p, n)) = pdu::decode_pdu(rest, rx, &lim) {
        assert!(n > 0 && n <= rest.len());
        assert_eq!(p.data.len(), p.frame.data_len);
        rest = &rest[n..];
    }
}

/// The NVMe command decoders: SQEs on the admin and I/O queues, Connect data, Dataset
/// Management ranges, and the Identify / log page decoders the initiator uses.
pub fn nvmf_command(data: &[u8]) {
    if data.len() >= 64 {
        let mut b = [0u8; 64];
        b.copy_from_slice(&data[..64]);
        let sqe = Sqe(b);
        let _ = spec::decode_command(&sqe, QueueKind::Admin);
        let _ = spec::decode_command(&sqe, QueueKind::Io);
        let _ = sqe.data_direction();
        let _ = sqe.sgl();
    }
    if data.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[..16]);
        let c = Cqe::decode(&b);
        assert_eq!(Cqe::decode(&c.encode()), c);
        let _ = IoStatus::from_nvme(c.status());
    }
    if let Ok(d) = ConnectData::decode(data) {
        assert_eq!(ConnectData::decode(&d.encode()), Ok(d));
    }
    let _ = spec::decode_dsm_ranges(data).count();
    let _ = pages::IdentifyController::decode(data);
    let _ = pages::IdentifyNamespace::decode(data).map(|n| n.block_size());
    let _ = pages::decode_ns_list(data);
    let _ = pages::decode_ns_descriptors(data);
    let _ = pages::decode_discovery_log(data);
    let _ = pages::SmartLog::decode(data);
}

/// NBD transmission input: a stream of request headers (and payloads) as a client may
/// send them, parsed and validated the way a connection does, against export limits
/// drawn from the first bytes.
pub fn nbd_request(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (knobs, mut stream) = data.split_at(4);
    let mode = if knobs[0] & 1 != 0 {
        HeaderMode::Extended
    } else {
        HeaderMode::Compact
    };
    let limits = ExportLimits {
        size_bytes: (knobs[1] as u64 + 1) << 20,
        block_size: 512 << (knobs[2] % 8),
        max_payload_bytes: 32 << 20,
        read_only: knobs[0] & 2 != 0,
        can_trim: knobs[0] & 4 != 0,
        can_write_zeroes: knobs[0] & 8 != 0,
        chunked: knobs[0] & 16 != 0 || mode == HeaderMode::Extended,
        block_status: knobs[0] & 32 != 0,
        mode,
    };
    loop {
        match parse_request(stream, mode) {
            Ok(Some((h, n))) => {
                stream = &stream[n..];
                let verdict = check_request(&h, &limits);
                if let Verdict::Close { .. } = verdict {
                    return;
                }
                if let Verdict::Run(cmd) = verdict {
                    run_unaligned_plan(cmd, &limits);
                }
                // Skip the payload the request carries, as the connection does.
                let skip = h.payload_len(mode).min(stream.len() as u64) as usize;
                stream = &stream[skip..];
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Walks the read-modify-write of an unaligned write or write-zeroes the way a
/// connection does (merging into buffers of the sizes it uses): it ends within five
/// steps, stays inside the covering blocks and never panics.
fn run_unaligned_plan(cmd: Command, limits: &ExportLimits) {
    let (span, zeroes) = match cmd {
        Command::WriteUnaligned { span, .. } => (span, false),
        Command::WriteZeroesUnaligned { span, .. } => (span, true),
        Command::ReadUnaligned(span) | Command::BlockStatus { span, .. } => {
            assert!(span.num_blocks >= 1 && span.head_bytes < limits.block_size);
            return;
        }
        _ => return,
    };
    let plan = Plan {
        span,
        block_size: limits.block_size,
        zeroes,
    };
    let bs = limits.block_size as usize;
    assert!(span.offset_blocks + span.num_blocks <= limits.size_bytes / bs as u64);
    let mut edge = vec![0u8; bs];
    // A write's buffer covers its blocks (at most the maximum payload and two blocks);
    // a write-zeroes has none.
    let mut buf = if zeroes {
        Vec::new()
    } else {
        vec![0u8; span.covering_bytes(limits.block_size) as usize]
    };
    let mut step = None;
    for _ in 0..5 {
        let Some(next) = plan.next(step) else {
            return;
        };
        if matches!(next, Step::ReadHead | Step::ReadTail) {
            assert!(plan.merge(next, &mut edge, &mut buf), "{plan:?} {next:?}");
        }
        if next == Step::ZeroMiddle {
            let (m, n) = plan.middle();
            assert!(m >= span.offset_blocks && m + n <= span.offset_blocks + span.num_blocks);
        }
        step = Some(next);
    }
    assert_eq!(plan.next(step), None, "{plan:?} takes more than five steps");
}

/// NBD handshake input: client flags, option headers and option data, parsed the way
/// the handshake does.
pub fn nbd_option(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let flags = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
    let _ = parse_client_flags(flags, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    // The option code from the next four bytes, the rest as its data.
    if data.len() >= 8 {
        let option = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) % 16;
        let _ = parse_option(option, &data[8..]);
    }
    // And as a stream of options with their own headers.
    let mut stream = &data[4..];
    while let Ok(Some(h)) = parse_option_header(stream) {
        stream = &stream[OPTION_HEADER_LEN..];
        let len = (h.len_bytes as usize).min(stream.len());
        let _ = parse_option(h.option, &stream[..len]);
        stream = &stream[len..];
    }
}

/// The decoders of a pool's on-disk metadata: labels, superblocks, and table,
/// directory, space-map and space-map index pages. Whatever the bytes (valid checksums
/// included: half of the inputs are forged into pages with valid headers), decoding
/// must never panic, and what decodes must re-encode to a page that decodes the same.
pub fn vdisk_meta(data: &[u8]) {
    let mut page = vec![0u8; PAGE_BYTES];
    let pool = uuid::Uuid::from_u128(0x7e55);
    let n = data.len().min(PAGE_BYTES);
    page[..n].copy_from_slice(&data[..n]);
    let _ = Label::decode(&page, "fuzz");
    if let Ok(sb) = Superblock::decode(&page, "A") {
        assert_eq!(Superblock::decode(&sb.encode(), "A").as_ref(), Ok(&sb));
    }
    let _ = meta::superblock::pick(&page, &page, Some(pool));
    let index = u64::from(data.first().copied().unwrap_or(0));
    // Half of the inputs become pages with valid headers, to reach the payload decoders.
    if data.len() > 1 && data[1] & 1 == 1 {
        let kind = match data[1] >> 1 & 7 {
            0 => meta::PageKind::Internal,
            1 => meta::PageKind::Leaf,
            2 => meta::PageKind::Directory,
            3 => meta::PageKind::SpaceMapIndex,
            5 => meta::PageKind::Log,
            6 => meta::PageKind::PackedLeaf,
            _ => meta::PageKind::SpaceMap,
        };
        page = meta::forge_page(data, kind, index, &pool);
    }
    let txn = BlockPtr::of(&page).txn;
    if let Ok(exts) = meta::node::decode_leaf(&page, index, &pool, 1 << 20) {
        // Round trip: the extents encode into the same page.
        let again = meta::node::encode_raw_leaf(index, txn, &pool, &exts);
        assert_eq!(
            meta::node::decode_leaf(&again, index, &pool, 1 << 20).as_ref(),
            Ok(&exts)
        );
    }
    if let Ok(entries) = meta::node::decode_internal(&page, index, &pool, 1 << 20) {
        let again = meta::node::encode_internal(index, txn, &pool, &entries);
        assert_eq!(
            meta::node::decode_internal(&again, index, &pool, 1 << 20).as_ref(),
            Ok(&entries)
        );
    }
    if let Ok(d) = meta::directory::decode_directory(&page, index, &pool, 1 << 20) {
        let again = image::encode_dir(index, &pool, &d);
        assert_eq!(
            meta::directory::decode_directory(&again, index, &pool, 1 << 20).as_ref(),
            Ok(&d)
        );
    }
    if let Ok(p) = meta::log::decode_log_page(&page, index, &pool, 1 << 20) {
        // Round trip: the records pack into the same page, each in the shorter of its
        // two encodings (a page may mix them; neither is longer than what was read).
        let recs: Vec<Vec<Vec<u8>>> = p
            .records
            .iter()
            .map(|r| vec![meta::log::encode_shortest(r)])
            .collect();
        let again = meta::log::pack(
            &meta::log::RecordGroups::of(&recs),
            p.seq,
            p.first_lsn,
            index,
            1,
            &pool,
        );
        assert_eq!(again.len(), usize::from(!recs.is_empty()));
        if let Some((_, b)) = again.first() {
            let q = meta::log::decode_log_page(b, index, &pool, 1 << 20).expect("repacked");
            assert_eq!(
                (q.seq, q.first_lsn, &q.records),
                (p.seq, p.first_lsn, &p.records)
            );
        }
    }
    let _ = meta::space_map::decode_space_map(&page, index, &pool, index);
    if let Ok(ptrs) = meta::space_map::decode_sm_index(&page, index, &pool, 0, 1 << 12) {
        let again = meta::space_map::encode_sm_index(index, txn, &pool, 0, &ptrs);
        assert_eq!(
            meta::space_map::decode_sm_index(&again, index, &pool, 0, 1 << 12).as_ref(),
            Ok(&ptrs)
        );
    }
}

/// The YAML configuration parser: any text gives a config or an error that names the
/// file; a config that parses serialises to YAML that parses the same.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml") {
        Ok(c) => {
            let again = Config::parse(&c.to_yaml(), "again.yaml").expect("a saved config parses");
            assert_eq!(again, c);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.yaml")),
    }
}

/// The reader of SPDK's JSON configuration format: any text gives a config or an error
/// naming the file; a config read back from the document written for it is the same.
pub fn config_spdk_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse_spdk_json(text, "fuzz.json") {
        Ok(c) => {
            let doc = serde_json::to_string(&spdk_json::document(&c)).expect("JSON");
            let again =
                spdk_json::parse_document(&doc, "again.json").expect("a saved config reads");
            assert_eq!(again.bdevs, c.bdevs);
            assert_eq!(again.pools, c.pools);
            assert_eq!(again.snapshots, c.snapshots);
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.json")),
    }
}

/// The JSON-RPC request path short of the handlers: the framer (fed in chunks of a size
/// the input picks), frame parsing, request checks, and parameter decoding for the named
/// method and for another one the input picks; every frame is one balanced object or
/// array within the size limit, and every error has a code.
pub fn rpc_request(data: &[u8]) {
    const LIMIT: usize = 64 << 10;
    let Some((&knobs, data)) = data.split_first() else {
        return;
    };
    let chunk = (knobs as usize % 17) + 1;
    let other = METHODS[knobs as usize % METHODS.len()];
    let mut f = Framer::new(LIMIT);
    for piece in data.chunks(chunk) {
        f.push(piece);
        loop {
            match f.next_frame() {
                Frame::Incomplete => break,
                Frame::Fatal(e) => {
                    assert!(e.to_error().code < 0);
                    return;
                }
                Frame::Complete(frame) => {
                    assert!(frame.len() <= LIMIT);
                    let (first, last) = (frame[0], frame[frame.len() - 1]);
                    assert!(matches!((first, last), (b'{', b'}') | (b'[', b']')));
                    let reqs = match parse_frame(&frame) {
                        Err(resp) => {
                            let _ = encode(&resp.to_json());
                            continue;
                        }
                        Ok(Incoming::Single(r)) => vec![r],
                        Ok(Incoming::Batch(rs)) => rs,
                    };
                    for r in reqs {
                        match r {
                            Ok(req) => {
                                if let Some(Err(e)) = check_params(&req.method, req.params.clone())
                                {
                                    assert!(e.code < 0 && !e.message.is_empty());
                                }
                                if let Some(Err(e)) = check_params(other, req.params) {
                                    assert!(e.code < 0 && !e.message.is_empty());
                                }
                            }
                            Err(resp) => {
                                assert!(resp.result.is_err());
                                let _ = encode(&resp.to_json());
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A block of a pool image a `pool_open` input touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Block {
    Label,
    Slot(usize),
    Page(u64),
}

/// Opens a pool from a mutated image of a small real pool ([`image::base_images`]):
/// the check and open must not panic or hang whatever the bytes; open refusing is fine.
/// And they must agree: a pool the check finds clean opens, and a pool that opens is
/// clean (for the check) once it has closed.
///
/// Input: a flags byte, then operations of 4 bytes `[op, a, b, len]` (and `len` bytes
/// for a patch); blocks are 0 the label, 1 and 2 the superblock slots, 3 + k metadata
/// page k (modulo the pool's pages):
/// - `op % 4 == 0`: write the `len` bytes at byte `16 × b` of block `a`;
/// - `op % 4 == 1`: copy page `a` over page `b` (a misdirected write);
/// - `op % 4 == 2`: page `a` goes back to its version of the base image `b` (an older
///   commit: a lost write);
/// - `op % 4 == 3`: flip bit `op / 4 % 8` of byte `16 × b + len % 16` of block `a`.
///
/// With flag bit 0, every block touched is then resealed (its checksum recomputed) and
/// every pointer above a touched page made to match it (up to the superblock), so that
/// the crafted fields themselves must be caught.
pub fn pool_open(data: &[u8]) {
    let Some((&flags, mut ops)) = data.split_first() else {
        return;
    };
    let bases = image::base_images();
    let mut img = image::PoolImage::parse(bases.last().expect("an image")).expect("the base image");
    let pages = img.sb.meta_pages;
    let block = |a: u8| match a {
        0 => Block::Label,
        1 | 2 => Block::Slot(a as usize - 1),
        k => Block::Page((k as u64 - 3) % pages),
    };
    let page = |a: u8| (a as u64) % pages;
    let start = |img: &image::PoolImage, b: Block| match b {
        Block::Label => 0,
        Block::Slot(s) => image::PoolImage::slot_offset(s),
        Block::Page(p) => img.offset(p),
    };
    let mut touched = BTreeSet::new();
    while let [op, a, b, len, rest @ ..] = ops {
        ops = rest;
        match op % 4 {
            0 => {
                let n = (*len as usize).min(ops.len());
                let blk = block(*a);
                let off = 16 * *b as usize;
                let n = n.min(PAGE_BYTES - off);
                let at = start(&img, blk) + off;
                img.bytes[at..at + n].copy_from_slice(&ops[..n]);
                ops = &ops[(*len as usize).min(ops.len())..];
                touched.insert(blk);
            }
            1 => {
                let from = img.page(page(*a)).to_vec();
                img.set_page(page(*b), &from);
                touched.insert(Block::Page(page(*b)));
            }
            2 => {
                let older = &bases[*b as usize % bases.len()];
                let p = page(*a);
                let at = img.offset(p);
                let old = older[at..at + PAGE_BYTES].to_vec();
                img.set_page(p, &old);
                touched.insert(Block::Page(p));
            }
            _ => {
                let blk = block(*a);
                let at = start(&img, blk) + 16 * *b as usize + (*len as usize % 16);
                img.bytes[at] ^= 1 << (op / 4 % 8);
                touched.insert(blk);
            }
        }
    }
    if flags & 1 == 1 {
        for &blk in &touched {
            let at = start(&img, blk);
            meta::reseal(&mut img.bytes[at..at + PAGE_BYTES]);
            if let Block::Page(p) = blk {
                img.repoint(p);
            }
        }
    }
    let report = image::check_image(&img.bytes);
    match image::open_image(&img.bytes) {
        image::Opened::Refused(e) => assert!(
            !report.clean(),
            "the check found the pool clean, but open refused it: {e}"
        ),
        image::Opened::Opened { after_close, .. } => assert!(
            after_close.clean(),
            "open accepted a pool that, once closed, fails the check: {:?} (before: {:?})",
            after_close.errors,
            report.errors
        ),
    }
}

/// The send stream decoder (`replicate::stream`), on the whole input in memory and
/// streamed in reads of a size the first byte picks: both agree, and a stream either
/// decodes is the encoder's own bytes of what it decoded.
pub fn send_stream(data: &[u8]) {
    use crate::replicate::stream::{Decoder, Encoder, Record, decode_all};
    struct Chunked<'a>(&'a [u8], usize);
    impl std::io::Read for Chunked<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(b.len()).min(self.0.len());
            b[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let Some((&knobs, bytes)) = data.split_first() else {
        return;
    };
    let whole = decode_all(bytes);
    let streamed = Decoder::new(Chunked(bytes, knobs as usize % 13 + 1)).and_then(|mut d| {
        let h = d.header().clone();
        let mut v = Vec::new();
        while let Some(r) = d.next_record()? {
            v.push(r);
        }
        Ok((h, v))
    });
    match whole {
        Ok((h, recs)) => {
            let (sh, srecs) = streamed.expect("the streamed decoder refused what decode_all took");
            assert_eq!((&sh, &srecs), (&h, &recs));
            let mut e = Encoder::new(Vec::new(), &h).expect("encode to memory");
            for r in &recs {
                if let Record::Data { offset, data } = r {
                    e.data(*offset, data).expect("encode to memory");
                }
            }
            assert_eq!(e.finish().expect("encode to memory").0, bytes);
        }
        Err(e) => {
            assert!(
                streamed.is_err(),
                "the streamed decoder took what decode_all refused"
            );
            assert!(e.to_string().starts_with("send stream"));
        }
    }
}
