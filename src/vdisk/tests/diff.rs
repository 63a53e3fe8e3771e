//! Changed and allocated blocks (`diff.rs`) against a model: random writes, unmaps
//! and snapshots, then the diff of every pair of snapshots (and of each snapshot and
//! the live disk) must hold every block whose content differs and nothing outside the
//! granules written or unmapped between them (or, where layers may have been merged,
//! outside the segments written or unmapped between them); before and after a reopen.

use super::*;
use crate::vdisk::diff::{Allocation, BlockRange};

/// The seed: `TESSERA_SEED` to replay one, else the time.
fn seed() -> u64 {
    let seed = std::env::var("TESSERA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (TESSERA_SEED={seed} replays it)");
    seed
}

/// What the disk held when a snapshot was taken: per block, the number of the write
/// that wrote it (0: reads as zeros); and per granule, the rounds that wrote or
/// unmapped it (bit `r`: round `r`).
#[derive(Clone)]
struct Model {
    blocks: Vec<u32>,
    touched: Vec<u32>,
}

/// Every page of `changed_ranges`, `max_runs` at a time, as a set of blocks.
fn changed(pool: &Pool, base: &str, target: &str, max_runs: usize) -> Vec<bool> {
    let mut out = Vec::new();
    let mut from = 0;
    let mut pages = 0;
    loop {
        let page = block_on(pool.changed_ranges(base, target, from, max_runs)).unwrap();
        assert!(page.runs.len() <= max_runs);
        for r in &page.runs {
            assert!(
                r.offset_blocks >= from,
                "runs in order, from the page's start"
            );
            mark(&mut out, r);
            from = r.offset_blocks + r.num_blocks;
        }
        pages += 1;
        match page.next_offset_blocks {
            Some(n) => {
                assert!(n >= from);
                from = n;
            }
            None => break,
        }
        assert!(pages < 100_000, "pagination does not end");
    }
    out
}

fn mark(out: &mut Vec<bool>, r: &BlockRange) {
    let end = (r.offset_blocks + r.num_blocks) as usize;
    if out.len() < end {
        out.resize(end, false);
    }
    for (b, seen) in out
        .iter_mut()
        .enumerate()
        .take(end)
        .skip(r.offset_blocks as usize)
    {
        assert!(!*seen, "block {b} reported twice");
        *seen = true;
    }
}

fn run_model(block_size: u32, segment_bytes: u64, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let set = reactors(2);
    let base = MallocBdev::create("m0", (256 << 20) / block_size as u64, block_size, None).unwrap();
    let mut opts = PoolOptions::new("p0");
    opts.segment_bytes = segment_bytes;
    let pool = block_on(Pool::create(set.cores(), 0, vec![base.clone()], None, opts)).unwrap();
    let disk_bytes = 256u64 << 20;
    let disk: Arc<dyn Bdev> = block_on(pool.create_disk("vd0", disk_bytes, true)).unwrap();
    let nblocks = disk.num_blocks() as usize;
    let seg_blocks = segment_bytes / block_size as u64;
    let granule_blocks = (seg_blocks / 256).max(1) as usize;
    // Rounds enough for a segment's layers to be merged more than once (every two
    // rounds after its fourth).
    let rounds = 9;
    // Writes land in a few hundred segments at most (tables of several leaves), and
    // the pool holds a layer of each for every round, and a merged one for each merge.
    let segs_used = 600.min((240 << 20) / segment_bytes / (rounds + 4));
    let mut model = Model {
        blocks: vec![0; nblocks],
        touched: vec![0; nblocks.div_ceil(granule_blocks)],
    };
    let mut snaps: Vec<(String, Model)> = Vec::new();
    let mut write_no = 0u32;
    for round in 1..=rounds {
        let mut ops = Vec::new();
        for _ in 0..rng.usize(20..120) {
            let seg = rng.u64(0..segs_used) * (nblocks as u64 / seg_blocks / segs_used).max(1);
            let b = seg * seg_blocks + rng.u64(0..seg_blocks);
            let n = rng.u64(1..=8).min(nblocks as u64 - b);
            let unmap = rng.u8(0..8) == 0;
            if !unmap {
                write_no += 1;
            }
            ops.push((b, n, unmap, write_no));
        }
        for &(b, n, unmap, no) in &ops {
            for k in b..b + n {
                model.touched[k as usize / granule_blocks] |= 1 << round;
                model.blocks[k as usize] = if unmap { 0 } else { no };
            }
        }
        let d = disk.clone();
        let bs = block_size as usize;
        on(&set, 1, move || async move {
            let ch = Channel::get(&d).unwrap();
            for (b, n, unmap, no) in ops {
                if unmap {
                    ch.write_zeroes(b, n).await.unwrap();
                } else {
                    let mut buf = IoBuf::new(n as usize * bs);
                    for (i, c) in buf.chunks_mut(bs).enumerate() {
                        c.fill(0);
                        c[..4].copy_from_slice(&no.to_le_bytes());
                        c[4..12].copy_from_slice(&(b + i as u64).to_le_bytes());
                    }
                    ch.write(b, buf).await.unwrap();
                }
            }
        });
        if round < rounds {
            let name = format!("s{round}");
            block_on(pool.snapshot(vec![("vd0".into(), name.clone())], Duration::from_secs(5)))
                .unwrap();
            snaps.push((name, model.clone()));
        }
    }
    let live = ("vd0".to_string(), model.clone());
    let check_all = |pool: &Pool, when: &str| {
        let all: Vec<&(String, Model)> = snaps.iter().chain(std::iter::once(&live)).collect();
        for (i, (a, ma)) in all.iter().enumerate() {
            for (b, mb) in &all[i + 1..] {
                let max_runs = 1 + (i * 7) % 50;
                let got = changed(pool, a, b, max_runs);
                let round_a = i as u32 + 1;
                for k in 0..nblocks {
                    let reported = got.get(k).copied().unwrap_or(false);
                    if ma.blocks[k] != mb.blocks[k] {
                        assert!(reported, "{when}: {a}→{b}: block {k} changed, not reported");
                    }
                    if reported {
                        // Touched after `a` was taken, up to when `b` was: the granule.
                        // Where the two hold no common layer of a segment (its layers
                        // were merged after two or more rounds since `a`), the
                        // contents tell, which is exact too.
                        let since = |mask: u32| mask >> (round_a + 1) != 0;
                        let ok = since(mb.touched[k / granule_blocks]);
                        assert!(ok, "{when}: {a}→{b}: block {k} reported, untouched since");
                    }
                }
                // The same pairs the other way round.
                assert_eq!(
                    got,
                    changed(pool, b, a, 1000),
                    "{when}: {a}↔{b} not symmetric"
                );
            }
        }
        // Allocation of each: every written block is data; what is not data reads zeros.
        for (name, m) in &all {
            let mut from = 0;
            let mut covered = 0;
            loop {
                let page = block_on(pool.allocated_ranges(name, from, 17)).unwrap();
                for (r, kind) in &page.runs {
                    assert_eq!(
                        r.offset_blocks, covered,
                        "{when}: {name}: runs are contiguous"
                    );
                    covered += r.num_blocks;
                    for k in r.offset_blocks..r.offset_blocks + r.num_blocks {
                        if m.blocks[k as usize] != 0 {
                            assert_eq!(*kind, Allocation::Data, "{when}: {name}: block {k}");
                        }
                    }
                }
                match page.next_offset_blocks {
                    Some(n) => from = n,
                    None => break,
                }
            }
            assert_eq!(covered, nblocks as u64, "{when}: {name}: the whole disk");
        }
    };
    check_all(&pool, "open");
    block_on(pool.close()).unwrap();
    drop(disk);
    let pool = block_on(Pool::open(set.cores(), 0, vec![base.clone()])).unwrap();
    check_all(&pool, "reopened");
    block_on(pool.close()).unwrap();
}

#[test]
fn diff_matches_a_model_4k_blocks_64k_segments() {
    run_model(4096, 64 << 10, seed());
}

#[test]
fn diff_matches_a_model_512_blocks_1m_segments() {
    run_model(512, 1 << 20, seed());
}

/// Unknown disks are refused with their name.
#[test]
fn diff_of_an_unknown_disk_names_it() {
    let (set, _base, pool, _disk) = thin_disk(16 << 20);
    let e = block_on(pool.changed_ranges("vd0", "nope", 0, 10)).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = block_on(pool.allocated_ranges("gone", 0, 10)).unwrap_err();
    assert!(e.to_string().contains("gone"), "{e}");
    drop(set);
}
