//! Model-based randomized test of the mapping layer (proptest): random sequences of
//! writes, reads, unmaps, write-zeroes, grows, flushes, close/reopen and simulated power
//! loss — plus snapshots, clones, splits (interrupted by reopen and power loss),
//! decouples and deletes — issued on two cores at once and checked against a plain
//! in-memory model.
//!
//! The model keeps, per block of every disk, the set of values the block may hold
//! (several values when concurrent writes raced, or after a power loss); every read
//! must return one of them and then pins the block to what it returned. A power loss
//! (the error bdev's volatile cache drops, or half-destages, what no completed flush
//! covered) widens each block to "its value at the last completed flush, or any value
//! written after it". Structural operations (create, snapshot, clone, delete, grow) are
//! followed by a flush, so whether a disk exists is always known. At the end every disk
//! is deleted: the pool's free space must come back whole, and `check` must be clean.

use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tessera::bdev::error::ErrorBdev;
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::{Bdev, BdevIo, Channel, IoBuf, IoStatus};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

const DISK_BLOCKS: u64 = 512;

#[derive(Clone, Debug)]
enum DataOp {
    Write { disk: usize, block: u64, n: u64 },
    Read { disk: usize, block: u64, n: u64 },
    Unmap { disk: usize, block: u64, n: u64 },
    WriteZeroes { disk: usize, block: u64, n: u64 },
}

#[derive(Clone, Debug)]
enum Op {
    /// Data operations issued together, alternating between the two cores.
    Batch(Vec<DataOp>),
    Flush,
    Grow {
        disk: usize,
        blocks: u64,
    },
    Reopen,
    PowerLoss {
        partial: bool,
    },
    Snapshot {
        disk: usize,
    },
    Clone {
        disk: usize,
    },
    Split {
        disk: usize,
        decouple: bool,
    },
    Delete {
        disk: usize,
    },
}

fn data_op() -> impl Strategy<Value = DataOp> {
    let span = (0usize..8, 0u64..DISK_BLOCKS + 64, 1u64..48);
    prop_oneof![
        6 => span.clone().prop_map(|(disk, block, n)| DataOp::Write { disk, block, n }),
        4 => span.clone().prop_map(|(disk, block, n)| DataOp::Read { disk, block, n }),
        1 => span.clone().prop_map(|(disk, block, n)| DataOp::Unmap { disk, block, n: n * 4 }),
        1 => span.prop_map(|(disk, block, n)| DataOp::WriteZeroes { disk, block, n }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => proptest::collection::vec(data_op(), 1..6).prop_map(Op::Batch),
        3 => Just(Op::Flush),
        1 => (0usize..8, 1u64..200).prop_map(|(disk, blocks)| Op::Grow { disk, blocks }),
        1 => Just(Op::Reopen),
        2 => any::<bool>().prop_map(|partial| Op::PowerLoss { partial }),
        2 => (0usize..8).prop_map(|disk| Op::Snapshot { disk }),
        2 => (0usize..8).prop_map(|disk| Op::Clone { disk }),
        1 => (0usize..8, any::<bool>()).prop_map(|(disk, decouple)| Op::Split { disk, decouple }),
        1 => (0usize..8).prop_map(|disk| Op::Delete { disk }),
    ]
}

/// What a block may hold: 0 is zeros, anything else the tag of a write.
type Possible = BTreeSet<u64>;

#[derive(Clone, Debug)]
struct DiskModel {
    name: String,
    read_only: bool,
    now: Vec<Possible>,
    /// Values possible at the last completed flush.
    durable: Vec<Possible>,
    /// Values written since the last completed flush.
    since: Vec<Possible>,
}

impl DiskModel {
    fn new(name: &str, blocks: u64) -> Self {
        let z: Possible = [0].into();
        DiskModel {
            name: name.into(),
            read_only: false,
            now: vec![z.clone(); blocks as usize],
            durable: vec![z; blocks as usize],
            since: vec![Possible::new(); blocks as usize],
        }
    }
    fn blocks(&self) -> u64 {
        self.now.len() as u64
    }
}

struct Env {
    set: ReactorSet,
    bases: Vec<Arc<ErrorBdev>>,
    bs: usize,
    seg: u64,
    pool: Pool,
    disks: Vec<DiskModel>,
    next_tag: u64,
    next_name: u64,
}

fn block_of(tag: u64, bs: usize) -> Vec<u8> {
    let mut v = vec![0u8; bs];
    for c in v.chunks_mut(8) {
        c.copy_from_slice(&tag.to_le_bytes());
    }
    v
}

fn tag_of(data: &[u8]) -> Option<u64> {
    let t = u64::from_le_bytes(data[..8].try_into().unwrap());
    data.chunks(8).all(|c| c == t.to_le_bytes()).then_some(t)
}

impl Env {
    /// Two data containers; with `separate_meta`, a third bdev holds the metadata.
    fn new(bs: u32, seg: u64, separate_meta: bool) -> Env {
        let mut cfg = ReactorConfig::new(CoreList::first(2), IdlePolicy::Adaptive);
        cfg.pin = false;
        let set = ReactorSet::start(cfg).unwrap();
        let bases: Vec<Arc<ErrorBdev>> = (0..if separate_meta { 3 } else { 2 })
            .map(|i| {
                let m =
                    MallocBdev::create(&format!("m{i}"), (24 << 20) / bs as u64, bs, None).unwrap();
                ErrorBdev::create(&format!("e{i}"), m, true).unwrap()
            })
            .collect();
        let mut opts = PoolOptions::new("model");
        opts.segment_bytes = seg;
        opts.metadata_bytes = Some(2 << 20);
        let mut containers: Vec<Arc<dyn Bdev>> =
            bases.iter().map(|b| b.clone() as Arc<dyn Bdev>).collect();
        let meta = separate_meta.then(|| containers.pop().unwrap());
        let pool = block_on(Pool::create(set.cores(), 0, containers, meta, opts)).unwrap();
        let mut env = Env {
            set,
            bases,
            bs: bs as usize,
            seg,
            pool,
            disks: Vec::new(),
            next_tag: 1,
            next_name: 0,
        };
        block_on(env.pool.create_disk("d0", DISK_BLOCKS * bs as u64, true)).unwrap();
        env.disks.push(DiskModel::new("d0", DISK_BLOCKS));
        env.flush();
        env
    }

    fn pick(&self, i: usize) -> Option<usize> {
        (!self.disks.is_empty()).then(|| i % self.disks.len())
    }

    fn flush(&mut self) {
        block_on(self.pool.commit()).unwrap();
        for d in &mut self.disks {
            d.durable = d.now.clone();
            d.since.iter_mut().for_each(|s| s.clear());
        }
    }

    fn bdev(&self, name: &str) -> Arc<dyn Bdev> {
        block_on(self.pool.disk(name)).unwrap()
    }

    fn reopen(&mut self) {
        let bdevs: Vec<Arc<dyn Bdev>> = self
            .bases
            .iter()
            .map(|b| b.clone() as Arc<dyn Bdev>)
            .collect();
        self.pool = block_on(Pool::open(self.set.cores(), 0, bdevs)).expect("reopen");
        let names: BTreeSet<String> = block_on(self.pool.list())
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        let want: BTreeSet<String> = self.disks.iter().map(|d| d.name.clone()).collect();
        assert_eq!(names, want, "the disks after reopening");
    }

    fn batch(&mut self, ops: &[DataOp]) -> Result<(), TestCaseError> {
        // Plan: resolve disks, clip ranges, assign tags.
        struct Planned {
            name: String,
            kind: u8,
            block: u64,
            n: u64,
            tag: u64,
            expect_err: Option<IoStatus>,
        }
        let mut plan = Vec::new();
        for op in ops {
            let (disk, block, n, kind) = match *op {
                DataOp::Write { disk, block, n } => (disk, block, n, 0u8),
                DataOp::Read { disk, block, n } => (disk, block, n, 1),
                DataOp::Unmap { disk, block, n } => (disk, block, n, 2),
                DataOp::WriteZeroes { disk, block, n } => (disk, block, n, 3),
            };
            let Some(di) = self.pick(disk) else { continue };
            let d = &self.disks[di];
            let out_of_range = block + n > d.blocks();
            let expect_err = if d.read_only && kind != 1 {
                Some(IoStatus::WriteProtected)
            } else if out_of_range {
                Some(IoStatus::LbaOutOfRange)
            } else {
                None
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            plan.push(Planned {
                name: d.name.clone(),
                kind,
                block,
                n,
                tag,
                expect_err,
            });
        }
        // Model: during the batch a block may hold its old values or any value written
        // to it by the batch.
        for p in &plan {
            if p.expect_err.is_some() || p.kind == 1 {
                continue;
            }
            let di = self.disks.iter().position(|d| d.name == p.name).unwrap();
            let v = if p.kind == 0 { p.tag } else { 0 };
            for b in p.block..p.block + p.n {
                self.disks[di].now[b as usize].insert(v);
                self.disks[di].since[b as usize].insert(v);
            }
        }
        // After the batch, a block holds one of the values the batch wrote to it.
        let mut writes_per_block: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        for p in &plan {
            if p.expect_err.is_none() && p.kind != 1 {
                for b in p.block..p.block + p.n {
                    writes_per_block
                        .entry((p.name.clone(), b))
                        .or_default()
                        .push(if p.kind == 0 { p.tag } else { 0 });
                }
            }
        }
        // Issue everything at once, alternating cores.
        let bs = self.bs;
        let handles: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let bdev = self.bdev(&p.name);
                let (kind, block, n, tag) = (p.kind, p.block, p.n, p.tag);
                self.set.cores().spawn_on(i % 2, move || async move {
                    let ch = Channel::get(&bdev).unwrap();
                    let io = match kind {
                        0 => {
                            let mut buf = IoBuf::new(n as usize * bs);
                            for k in 0..n as usize {
                                buf[k * bs..(k + 1) * bs].copy_from_slice(&block_of(tag, bs));
                            }
                            BdevIo::write(block, n, buf)
                        }
                        1 => BdevIo::read(block, n, IoBuf::new(n as usize * bs)),
                        2 => BdevIo::unmap(block, n),
                        _ => BdevIo::write_zeroes(block, n),
                    };
                    let (mut io, st) = ch.io(io).await;
                    let data = if kind == 1 && st.is_success() {
                        io.take_buf().map(|b| b.to_vec())
                    } else {
                        None
                    };
                    (st, data)
                })
            })
            .collect();
        let results: Vec<(IoStatus, Option<Vec<u8>>)> =
            handles.into_iter().map(|h| block_on(h).unwrap()).collect();
        // Check statuses and reads.
        let mut read_values: Vec<(String, u64, u64)> = Vec::new();
        for (p, (st, data)) in plan.iter().zip(results) {
            match p.expect_err {
                Some(e) => prop_assert_eq!(st, e, "{} {}+{} kind {}", p.name, p.block, p.n, p.kind),
                None => prop_assert_eq!(
                    st,
                    IoStatus::Success,
                    "{} {}+{} kind {}",
                    p.name,
                    p.block,
                    p.n,
                    p.kind
                ),
            }
            if let Some(data) = data {
                for k in 0..p.n {
                    let blk = &data[k as usize * bs..(k as usize + 1) * bs];
                    let t = tag_of(blk);
                    prop_assert!(
                        t.is_some(),
                        "{} block {}: torn or foreign data",
                        p.name,
                        p.block + k
                    );
                    read_values.push((p.name.clone(), p.block + k, t.unwrap()));
                }
            }
        }
        for (name, b, t) in &read_values {
            let di = self.disks.iter().position(|d| &d.name == name).unwrap();
            let ok = self.disks[di].now[*b as usize].contains(t);
            prop_assert!(
                ok,
                "{} block {}: read {} but the model allows {:?}",
                name,
                b,
                t,
                self.disks[di].now[*b as usize]
            );
        }
        // Settle: a block written exactly once in the batch now holds that value; a block
        // written several times holds one of them; reads pin their block when it was not
        // written in the batch.
        for ((name, b), vals) in &writes_per_block {
            let di = self.disks.iter().position(|d| &d.name == name).unwrap();
            self.disks[di].now[*b as usize] = vals.iter().copied().collect();
        }
        for (name, b, t) in read_values {
            if writes_per_block.contains_key(&(name.clone(), b)) {
                continue;
            }
            let di = self.disks.iter().position(|d| d.name == name).unwrap();
            self.disks[di].now[b as usize] = [t].into();
        }
        Ok(())
    }

    fn verify_all(&mut self) -> Result<(), TestCaseError> {
        let bs = self.bs;
        for di in 0..self.disks.len() {
            let name = self.disks[di].name.clone();
            let bdev = self.bdev(&name);
            let n = self.disks[di].blocks();
            let data = block_on(self.set.cores().spawn_on(1, move || async move {
                let ch = Channel::get(&bdev).unwrap();
                ch.read(0, n).await.map(|b| b.to_vec())
            }))
            .unwrap();
            prop_assert!(
                data.is_ok(),
                "{name}: full read failed: {:?}",
                data.as_ref().err()
            );
            let data = data.unwrap();
            for b in 0..n as usize {
                let t = tag_of(&data[b * bs..(b + 1) * bs]);
                prop_assert!(t.is_some(), "{name} block {b}: torn data");
                let t = t.unwrap();
                prop_assert!(
                    self.disks[di].now[b].contains(&t),
                    "{name} block {b}: holds {t}, model allows {:?}",
                    self.disks[di].now[b]
                );
                self.disks[di].now[b] = [t].into();
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Batch(ops) => self.batch(ops)?,
            Op::Flush => self.flush(),
            Op::Grow { disk, blocks } => {
                let Some(di) = self.pick(*disk) else {
                    return Ok(());
                };
                let d = &self.disks[di];
                let new = d.blocks() + blocks;
                let r = block_on(self.pool.resize_disk(&d.name, new * self.bs as u64));
                if d.read_only {
                    prop_assert!(r.is_err(), "a snapshot must not grow");
                } else {
                    prop_assert!(r.is_ok(), "grow: {:?}", r);
                    let d = &mut self.disks[di];
                    let z: Possible = [0].into();
                    d.now.resize(new as usize, z.clone());
                    d.durable.resize(new as usize, z);
                    d.since.resize(new as usize, Possible::new());
                    self.flush();
                }
            }
            Op::Reopen => {
                block_on(self.pool.close()).unwrap();
                self.reopen();
                for d in &mut self.disks {
                    d.durable = d.now.clone();
                    d.since.iter_mut().for_each(|s| s.clear());
                }
            }
            Op::PowerLoss { partial } => {
                block_on(self.pool.crash_stop()).unwrap();
                // Let anything the crashed controller still had queued settle.
                std::thread::sleep(Duration::from_millis(5));
                for (i, b) in self.bases.iter().enumerate() {
                    if *partial {
                        let b2 = b.clone();
                        block_on(self.set.cores().spawn_on(0, move || async move {
                            b2.power_loss_partial(0.5, i as u64 + 7).await
                        }))
                        .unwrap();
                    } else {
                        b.power_loss();
                    }
                }
                self.reopen();
                for d in &mut self.disks {
                    for b in 0..d.now.len() {
                        let mut p = d.durable[b].clone();
                        p.extend(d.since[b].iter().copied());
                        d.now[b] = p;
                    }
                }
                self.verify_all()?;
                for d in &mut self.disks {
                    d.durable = d.now.clone();
                    d.since.iter_mut().for_each(|s| s.clear());
                }
                // What was read is not necessarily durable yet: a flush makes it so.
                self.flush();
            }
            Op::Snapshot { disk } => {
                let Some(di) = self.pick(*disk) else {
                    return Ok(());
                };
                let origin = self.disks[di].name.clone();
                let name = format!("s{}", self.next_name);
                self.next_name += 1;
                let r = block_on(
                    self.pool
                        .snapshot(vec![(origin.clone(), name.clone())], Duration::from_secs(5)),
                );
                if self.disks[di].read_only {
                    prop_assert!(r.is_err(), "snapshot of a snapshot must be refused");
                } else {
                    prop_assert!(r.is_ok(), "snapshot: {:?}", r.err());
                    let mut m = self.disks[di].clone();
                    m.name = name;
                    m.read_only = true;
                    self.disks.push(m);
                    self.flush();
                }
            }
            Op::Clone { disk } => {
                let Some(di) = self.pick(*disk) else {
                    return Ok(());
                };
                let snap = self.disks[di].name.clone();
                let name = format!("c{}", self.next_name);
                self.next_name += 1;
                let r = block_on(self.pool.clone_disk(&snap, &name));
                if !self.disks[di].read_only {
                    prop_assert!(r.is_err(), "a clone of a writable disk must be refused");
                } else {
                    prop_assert!(r.is_ok(), "clone: {:?}", r.err());
                    let mut m = self.disks[di].clone();
                    m.name = name;
                    m.read_only = false;
                    self.disks.push(m);
                    self.flush();
                }
            }
            Op::Split { disk, decouple } => {
                let Some(di) = self.pick(*disk) else {
                    return Ok(());
                };
                let name = self.disks[di].name.clone();
                let r = if *decouple {
                    block_on(self.pool.decouple(&name))
                } else {
                    block_on(self.pool.split(&name))
                };
                // Refused without a parent, on a snapshot, or while another job runs.
                let _ = r;
            }
            Op::Delete { disk } => {
                let Some(di) = self.pick(*disk) else {
                    return Ok(());
                };
                if self.disks.len() == 1 {
                    return Ok(());
                }
                let name = self.disks[di].name.clone();
                match block_on(self.pool.delete_disk(&name)) {
                    Ok(()) => {
                        self.disks.remove(di);
                        self.flush();
                    }
                    Err(tessera::vdisk::VdiskError::Busy(_)) => {}
                    Err(e) => prop_assert!(false, "delete {name}: {e}"),
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), TestCaseError> {
        self.verify_all()?;
        // Let running jobs end, then delete everything.
        for _ in 0..500 {
            let l = block_on(self.pool.list()).unwrap();
            if l.iter().all(|d| d.job.is_none()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.verify_all()?;
        let mut names: Vec<String> = self.disks.iter().map(|d| d.name.clone()).collect();
        while !names.is_empty() {
            let before = names.len();
            names.retain(|n| block_on(self.pool.delete_disk(n)).is_err());
            prop_assert!(names.len() < before, "cannot delete {:?}", names);
        }
        block_on(self.pool.commit()).unwrap();
        block_on(self.pool.commit()).unwrap();
        let (data, _) = self.pool.space();
        let (free, pending) = block_on(self.pool.free_space()).unwrap();
        prop_assert_eq!(
            (free, pending),
            (data, 0),
            "segments leaked (segment size {})",
            self.seg
        );
        block_on(self.pool.close()).unwrap();
        let bdevs: Vec<Arc<dyn Bdev>> = self
            .bases
            .iter()
            .map(|b| b.clone() as Arc<dyn Bdev>)
            .collect();
        let report = block_on(self.set.cores().spawn_on(0, move || async move {
            tessera::vdisk::check::check(bdevs).await
        }))
        .unwrap();
        prop_assert!(report.clean(), "check: {:#?}", report.errors);
        Ok(())
    }
}

fn run(ops: Vec<Op>, bs: u32, seg: u64, separate_meta: bool) -> Result<(), TestCaseError> {
    let mut env = Env::new(bs, seg, separate_meta);
    for (i, op) in ops.iter().enumerate() {
        env.apply(op)
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
    }
    env.finish()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 200, .. ProptestConfig::default() })]

    /// 4 KiB blocks, 64 KiB segments (16 one-block granules), metadata on its own bdev.
    #[test]
    fn model_4k_blocks_64k_segments(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, 4096, 64 << 10, true)?;
    }

    /// 512-byte blocks, 1 MiB segments: 4 KiB granules of 8 blocks, so writes of parts of
    /// a granule take the materialise path.
    #[test]
    fn model_512_blocks_1m_segments(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, 512, 1 << 20, false)?;
    }
}
