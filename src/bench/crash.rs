//! A crash-test workload with durable progress, and the verifier for it.
//!
//! The writer issues a deterministic sequence of operations (from a seed): 4 KiB and
//! 64 KiB writes whose blocks record (block, operation index), unmaps of single blocks
//! and of whole segments. It never has two overlapping operations in flight, flushes
//! often, and after each completed flush records in a progress file (written and
//! fsync'd) the index below which every operation had completed before the flush was
//! submitted — so those are durable. Kill it at any moment; then
//! [`verify`] checks every block: it must hold what the last durable operation on it
//! left (or, if none touched it, what it held before), or what a later operation wrote
//! — never anything else.

use crate::bdev::{Bdev, BdevIo, Channel, IoBuf, IoStatus};
use crate::reactor;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

const MAGIC: u32 = 0x7e55_c0de;

/// One operation of the sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `blocks` blocks starting at `block`.
    Write { block: u64, blocks: u64 },
    /// Unmap `blocks` blocks starting at `block`.
    Unmap { block: u64, blocks: u64 },
}

impl Op {
    /// The blocks the operation touches.
    pub fn range(&self) -> (u64, u64) {
        match *self {
            Op::Write { block, blocks } | Op::Unmap { block, blocks } => (block, blocks),
        }
    }
}

/// Operation `i` of the sequence for `seed` over a disk of `disk_blocks` blocks with
/// segments of `segment_blocks` blocks.
pub fn op(seed: u64, i: u64, disk_blocks: u64, segment_blocks: u64) -> Op {
    let mut r = fastrand::Rng::with_seed(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
    match r.u32(0..100) {
        0..80 => Op::Write {
            block: r.u64(0..disk_blocks),
            blocks: 1,
        },
        80..90 => {
            let blocks = 16.min(disk_blocks);
            Op::Write {
                block: r.u64(0..disk_blocks - blocks + 1),
                blocks,
            }
        }
        90..97 => Op::Unmap {
            block: r.u64(0..disk_blocks),
            blocks: 1,
        },
        _ => {
            let segs = disk_blocks / segment_blocks;
            Op::Unmap {
                block: r.u64(0..segs.max(1)) * segment_blocks,
                blocks: segment_blocks.min(disk_blocks),
            }
        }
    }
}

/// The contents written by operation `i` to `block`.
pub fn block_data(block: u64, i: u64, bs: usize) -> Vec<u8> {
    let mut b = vec![0u8; bs];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[4..12].copy_from_slice(&block.to_le_bytes());
    b[12..20].copy_from_slice(&i.to_le_bytes());
    let mut r = fastrand::Rng::with_seed(block ^ (i << 20));
    r.fill(&mut b[20..]);
    b
}

/// What a block holds: zeros, the data of operation `i`, or something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    Zero,
    Op(u64),
    Foreign,
}

/// Decodes a block read back from `block`.
pub fn classify(data: &[u8], block: u64) -> Content {
    if data.iter().all(|&x| x == 0) {
        return Content::Zero;
    }
    if data.len() < 20 || data[0..4] != MAGIC.to_le_bytes() {
        return Content::Foreign;
    }
    let b = u64::from_le_bytes(data[4..12].try_into().expect("8 bytes"));
    let i = u64::from_le_bytes(data[12..20].try_into().expect("8 bytes"));
    if b != block || block_data(block, i, data.len()) != data {
        return Content::Foreign;
    }
    Content::Op(i)
}

/// Runs the writer against `disk` from operation `start` until killed, recording durable
/// progress in `progress` (an ASCII number, fsync'd). Must run on a reactor.
pub async fn run_writer(
    disk: Arc<dyn Bdev>,
    seed: u64,
    start: u64,
    progress: std::path::PathBuf,
    qd: usize,
) {
    let ch = Channel::get(&disk).expect("channel");
    let bs = disk.block_size() as usize;
    let nb = disk.num_blocks();
    let seg_blocks = 256;
    let next = Rc::new(Cell::new(start));
    let completed: Rc<RefCell<std::collections::BTreeSet<u64>>> = Rc::default();
    let low = Rc::new(Cell::new(start));
    let inflight: Rc<RefCell<HashMap<u64, (u64, u64)>>> = Rc::default();
    let tasks: Vec<_> = (0..qd)
        .map(|_| (ch.clone(), completed.clone(), low.clone(), inflight.clone()))
        .collect();
    for (ch, completed, low, inflight) in tasks {
        let next = next.clone();
        reactor::spawn_local(async move {
            loop {
                // Take the next operation unless it overlaps one in flight.
                let i = next.get();
                let o = op(seed, i, nb, seg_blocks);
                let (b, n) = o.range();
                let overlaps = inflight
                    .borrow()
                    .values()
                    .any(|&(ob, on)| b < ob + on && ob < b + n);
                if overlaps {
                    reactor::yield_now().await;
                    continue;
                }
                next.set(i + 1);
                inflight.borrow_mut().insert(i, (b, n));
                let st = match o {
                    Op::Write { block, blocks } => {
                        let mut buf = IoBuf::new(blocks as usize * bs);
                        for k in 0..blocks {
                            let d = block_data(block + k, i, bs);
                            buf[k as usize * bs..(k as usize + 1) * bs].copy_from_slice(&d);
                        }
                        ch.io(BdevIo::write(block, blocks, buf)).await.1
                    }
                    Op::Unmap { block, blocks } => ch.io(BdevIo::unmap(block, blocks)).await.1,
                };
                assert_eq!(st, IoStatus::Success, "operation {i} ({o:?}) failed");
                inflight.borrow_mut().remove(&i);
                let mut c = completed.borrow_mut();
                c.insert(i);
                let mut l = low.get();
                while c.remove(&l) {
                    l += 1;
                }
                low.set(l);
            }
        })
        .detach();
    }
    loop {
        reactor::sleep(std::time::Duration::from_millis(5)).await;
        let durable = low.get();
        if ch.flush().await.is_ok() {
            let text = format!("{durable} {}\n", next.get());
            let tmp = progress.with_extension("tmp");
            let ok = std::fs::write(&tmp, text)
                .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|_| std::fs::rename(&tmp, &progress))
                .and_then(|_| {
                    std::fs::File::open(progress.parent().unwrap_or(std::path::Path::new(".")))?
                        .sync_all()
                });
            if let Err(e) = ok {
                eprintln!("crash-writer: cannot record progress: {e}");
            }
        }
    }
}

/// For every block, what the disk held before a round.
pub type Baseline = Vec<Content>;

/// Checks `read(block)` for every block against the sequence: operations in
/// `start..durable` happened; operations in `durable..issued_bound` may have. Returns the
/// new baseline, or the first violation.
pub fn verify(
    seed: u64,
    start: u64,
    durable: u64,
    issued_bound: u64,
    baseline: &Baseline,
    segment_blocks: u64,
    mut read: impl FnMut(u64) -> Content,
) -> Result<Baseline, String> {
    let nb = baseline.len() as u64;
    let mut expect: Vec<Content> = baseline.clone();
    for i in start..durable {
        let o = op(seed, i, nb, segment_blocks);
        let (b, n) = o.range();
        for k in b..b + n {
            expect[k as usize] = match o {
                Op::Write { .. } => Content::Op(i),
                Op::Unmap { .. } => Content::Zero,
            };
        }
    }
    let touches = |i: u64, b: u64| {
        let (ob, on) = op(seed, i, nb, segment_blocks).range();
        b >= ob && b < ob + on
    };
    let mut now = Vec::with_capacity(nb as usize);
    for b in 0..nb {
        let got = read(b);
        let ok = got == expect[b as usize]
            || match got {
                // Written by a later operation that may have landed.
                Content::Op(i) => {
                    i >= durable
                        && i < issued_bound
                        && matches!(op(seed, i, nb, segment_blocks), Op::Write { .. })
                        && touches(i, b)
                }
                // Unmapped by a later operation.
                Content::Zero => (durable..issued_bound).any(|i| {
                    matches!(op(seed, i, nb, segment_blocks), Op::Unmap { .. }) && touches(i, b)
                }),
                Content::Foreign => false,
            };
        if !ok {
            return Err(format!(
                "block {b}: holds {got:?}; after operations {start}..{durable} it must hold {:?} \
                 or what one of the operations {durable}..{issued_bound} wrote",
                expect[b as usize]
            ));
        }
        now.push(got);
    }
    Ok(now)
}
