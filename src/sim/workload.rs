//! The workload and the run: waves of concurrent operations chosen by the seed, faults,
//! crashes, reopens, and the oracle's checks after each.

use super::model::{self, DiskModel, Existence, Modification, Possible, Tag, WaveEffects};
use super::storage::Faults;
use super::world::{Driven, GOLDEN_SEGMENTS, Layout, Pending, World, golden_tag};
use super::{Failure, Report};
use crate::bdev::{Bdev, BdevIo, IoBuf, IoStatus};
use crate::vdisk::{CowPolicy, PoolOptions, VDisk, VdiskError};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How long one wave may take (simulated) before the simulator calls it a hang.
const WAVE_LIMIT: Duration = Duration::from_secs(120);
/// Time limit of the quiesces the workload takes.
const QUIESCE_LIMIT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Waves of concurrent operations per run.
    pub waves: usize,
    /// Print every event as it happens.
    pub verbose: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            waves: 60,
            verbose: false,
        }
    }
}

/// Runs the simulation of `seed`. A panic inside the engine is a failure too.
pub fn run(seed: u64, opts: &SimOptions) -> Result<Report, Failure> {
    let log = Rc::new(RefCell::new(Log {
        lines: std::collections::VecDeque::new(),
        verbose: opts.verbose,
        hasher: std::collections::hash_map::DefaultHasher::new(),
    }));
    let l2 = log.clone();
    let opts = opts.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let mut sim = Sim::new(seed, opts, l2);
        let r = sim.run();
        r.map(|mut rep| {
            rep.digest = sim.log.borrow().hasher.finish();
            rep
        })
    }));
    let fail = |what: String| Failure {
        seed,
        what,
        last_events: log.borrow().lines.iter().cloned().collect(),
        replay: format!("cargo run --release -- sim --seed {seed} --verbose"),
    };
    match r {
        Ok(Ok(rep)) => Ok(rep),
        Ok(Err(what)) => Err(fail(what)),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            Err(fail(format!("panic: {msg}")))
        }
    }
}

pub(super) struct Log {
    pub(super) lines: std::collections::VecDeque<String>,
    pub(super) verbose: bool,
    pub(super) hasher: std::collections::hash_map::DefaultHasher,
}

/// One operation of a wave.
#[derive(Clone, Debug)]
pub(super) enum Op {
    Read {
        disk: String,
        block: u64,
        n: u64,
    },
    /// Writes tags `first..first + n` (write), or zeros (write-zeroes, unmap).
    Modify {
        kind: ModKind,
        disk: String,
        block: u64,
        n: u64,
        fua: bool,
        first: Tag,
    },
    Flush {
        disk: String,
    },
    Create {
        name: String,
        blocks: u64,
        thin: bool,
    },
    Snapshot {
        pairs: Vec<(String, String)>,
    },
    Clone {
        snapshot: String,
        name: String,
    },
    /// A clone of the golden image outside the pool (`bdev_lvol_clone_bdev`).
    CloneBdev {
        name: String,
    },
    /// The disk reads the golden image where it holds nothing
    /// (`bdev_lvol_set_parent_bdev`).
    SetParentBdev {
        disk: String,
    },
    /// The disk becomes a clone of `parent`, a snapshot of the pool of its size
    /// (`bdev_lvol_set_parent`).
    SetParent {
        disk: String,
        parent: String,
    },
    Delete {
        disk: String,
    },
    Resize {
        disk: String,
        blocks: u64,
    },
    SetReadOnly {
        disk: String,
        ro: bool,
    },
    Split {
        disk: String,
        decouple: bool,
    },
    CowPolicy {
        disk: String,
        policy: CowPolicy,
    },
    Quiesce {
        disks: Vec<String>,
        hold: Duration,
    },
    /// Waits until the disk's split or decouple job has ended.
    WaitJob {
        disk: String,
    },
    /// Renames a disk (`bdev_lvol_rename`).
    Rename {
        disk: String,
        new_name: String,
    },
    /// Renames the pool (`bdev_lvol_rename_lvstore`).
    RenamePool {
        name: String,
    },
    /// Reverts a disk to a snapshot of its family in place (`tessera_lvol_revert`).
    Revert {
        disk: String,
        snapshot: String,
    },
    /// Grows the data device by `segments` segments, then the pool onto them
    /// (`bdev_lvol_grow_lvstore`).
    Grow {
        segments: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ModKind {
    Write,
    WriteZeroes,
    Unmap,
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Modify {
                kind: ModKind::Write,
                ..
            } => "write",
            Op::Modify {
                kind: ModKind::WriteZeroes,
                ..
            } => "write_zeroes",
            Op::Modify {
                kind: ModKind::Unmap,
                ..
            } => "unmap",
            Op::Flush { .. } => "flush",
            Op::Create { .. } => "create",
            Op::Snapshot { .. } => "snapshot",
            Op::Clone { .. } => "clone",
            Op::CloneBdev { .. } => "clone_bdev",
            Op::SetParentBdev { .. } => "set_parent_bdev",
            Op::SetParent { .. } => "set_parent",
            Op::Delete { .. } => "delete",
            Op::Resize { .. } => "resize",
            Op::SetReadOnly { .. } => "set_read_only",
            Op::Split { .. } => "split",
            Op::CowPolicy { .. } => "set_cow_policy",
            Op::Quiesce { .. } => "quiesce",
            Op::WaitJob { .. } => "wait_job",
            Op::Rename { .. } => "rename",
            Op::RenamePool { .. } => "rename_pool",
            Op::Revert { .. } => "revert",
            Op::Grow { .. } => "grow_pool",
        }
    }

    fn is_data(&self) -> bool {
        matches!(self, Op::Read { .. } | Op::Modify { .. } | Op::Flush { .. })
    }
}

/// Results of control operations.
enum CtlValue {
    Disks(Vec<Arc<VDisk>>),
    Id(u64),
    Unit,
}

type CtlResult = Result<CtlValue, VdiskError>;

enum Progress {
    /// A data request in flight (its completion carries the op's index as tag).
    Io,
    Ctl(Pending<CtlResult>),
    /// A quiesce in force until the time given; then activated.
    Held {
        id: u64,
        until: Duration,
    },
    Activating(Pending<CtlResult>),
    Done(Outcome),
}

#[derive(Debug)]
enum Outcome {
    Io(IoStatus),
    Ctl(Result<(), CtlError>),
    /// Not finished when the power failed.
    Lost,
}

struct Running {
    op: Op,
    progress: Progress,
}

/// The seeded choices that stay fixed for a run.
pub(super) struct Setup {
    pub(super) layout: Layout,
    /// Bytes of each simulated disk (data container, then the metadata bdev).
    pub(super) media_bytes: Vec<u64>,
    pub(super) data_segments: u64,
    pub(super) faults: Vec<Faults>,
    pub(super) p_crash_mid: f64,
    pub(super) p_crash_between: f64,
    pub(super) p_reopen: f64,
    pub(super) p_rot: f64,
    pub(super) p_control: f64,
    /// Data requests are issued beyond the disk's end now and then.
    pub(super) p_out_of_range: f64,
}

pub(super) struct Sim {
    pub(super) seed: u64,
    pub(super) opts: SimOptions,
    pub(super) rng: fastrand::Rng,
    pub(super) setup: Setup,
    pub(super) world: Option<World>,
    pub(super) model: BTreeMap<String, DiskModel>,
    pub(super) next_tag: Tag,
    pub(super) next_name: u64,
    pub(super) log: Rc<RefCell<Log>>,
    pub(super) report: Report,
    /// Metadata damage (bit rot, misdirected writes) was injected: open and check may
    /// refuse, with a precise error.
    pub(super) damage: bool,
    /// The pool refused further changes (a metadata write failed): the next wave
    /// starts with a power loss.
    pub(super) pool_failed: bool,
    /// Resizes and read-only changes lost in a power failure: (disk, value either way).
    pub(super) uncertain_size: BTreeMap<String, (u64, u64)>,
    pub(super) uncertain_ro: BTreeMap<String, bool>,
    /// Acknowledged set_parents, disk → parent (`None`: set_parent_bdev, the golden
    /// image), until another operation touches either: after a recovery the disk must
    /// have that parent.
    pub(super) acked_parent: BTreeMap<String, Option<String>>,
    /// Disk renames lost in a power failure: old name → new name (either may be there,
    /// never both, never neither).
    pub(super) uncertain_rename: BTreeMap<String, String>,
    /// Reverts lost in a power failure: disk → the snapshot's contents. The disk holds
    /// all of its old contents or all of the snapshot's, never a mix.
    pub(super) uncertain_revert: BTreeMap<String, Vec<Possible>>,
    /// Reverts lost in a power failure whose disk kept its size: disk → (its old
    /// contents, the snapshot's). The model allows either per block until the reads
    /// after recovery have pinned every block; then all must be one side's.
    pub(super) revert_to_settle: BTreeMap<String, (Vec<Possible>, Vec<Possible>)>,
    /// The pool's name as acknowledged, and the one a rename lost in a power failure may
    /// have given it.
    pub(super) pool_name: String,
    pub(super) pool_name_maybe: Option<String>,
    /// Resizes acknowledged in the current wave, applied after its writes.
    pub(super) resized: BTreeMap<String, u64>,
    /// The pool's data segments as acknowledged, and what a grow lost in a power
    /// failure may have made them; the data segments a grow of this wave must give.
    pub(super) pool_segments: u64,
    pub(super) pool_segments_maybe: Option<u64>,
    pub(super) grow_expect: Option<u64>,
    /// Segments of the data container not used for data (label, metadata).
    pub(super) reserved_segments: u64,
    /// Life number (power losses and reopens).
    pub(super) life: u64,
    /// The devices may fail requests beyond the configured faults (a crash-point
    /// sweep's write budget): failures that only a device fault explains are allowed.
    pub(super) device_faults: bool,
}

/// A control operation's error, and whether it says the pool itself failed (which
/// only an injected fault may explain). Any other error — no space for data or for
/// metadata (`NoSpace`, `NoMetadataSpace`), a drain or quiesce that ran out of time
/// (`DrainTimeout`, `QuiesceTimeout`), a lock still held (`Busy`) — is a refusal: a
/// legitimate outcome that must have changed nothing, which the model then checks (no
/// snapshot or disk appears, a deleted disk keeps its data, a size or flag stays).
#[derive(Debug)]
struct CtlError {
    msg: String,
    pool_level: bool,
    /// Refused because the pool had already failed (`PoolFailed`, asked before the
    /// operation changes anything): it did nothing, whatever a power loss does.
    refused_failed: bool,
}

fn ctl_error(e: &VdiskError) -> CtlError {
    CtlError {
        msg: e.to_string(),
        pool_level: matches!(
            e,
            VdiskError::PoolFailed(_) | VdiskError::Io { .. } | VdiskError::Meta(_)
        ),
        refused_failed: matches!(e, VdiskError::PoolFailed(_)),
    }
}

impl Sim {
    pub(super) fn new(seed: u64, opts: SimOptions, log: Rc<RefCell<Log>>) -> Sim {
        let mut rng = fastrand::Rng::with_seed(seed);
        let setup = Self::choose_setup(&mut rng);
        Self::with_setup(seed, opts, log, setup, rng)
    }

    /// A simulation of a chosen machine (the crash-point sweeps fix theirs).
    pub(super) fn with_setup(
        seed: u64,
        opts: SimOptions,
        log: Rc<RefCell<Log>>,
        setup: Setup,
        rng: fastrand::Rng,
    ) -> Sim {
        let pool_name = setup.layout.opts.name.clone();
        Sim {
            seed,
            opts,
            rng,
            setup,
            world: None,
            model: BTreeMap::new(),
            next_tag: 1,
            next_name: 0,
            log,
            report: Report {
                seed,
                ..Default::default()
            },
            damage: false,
            pool_failed: false,
            uncertain_size: BTreeMap::new(),
            uncertain_ro: BTreeMap::new(),
            acked_parent: BTreeMap::new(),
            uncertain_rename: BTreeMap::new(),
            uncertain_revert: BTreeMap::new(),
            revert_to_settle: BTreeMap::new(),
            pool_name,
            pool_name_maybe: None,
            resized: BTreeMap::new(),
            pool_segments: 0,
            pool_segments_maybe: None,
            grow_expect: None,
            reserved_segments: 0,
            life: 0,
            device_faults: false,
        }
    }

    fn choose_setup(rng: &mut fastrand::Rng) -> Setup {
        let block_size = if rng.u8(0..5) == 0 { 4096 } else { 512 };
        let segment_bytes = [64u64 << 10, 128 << 10, 256 << 10][rng.usize(0..3)];
        // Now and then a pool small enough to fill up.
        let data_segments = if rng.u8(0..4) == 0 {
            rng.u64(12..=30)
        } else {
            rng.u64(30..=100)
        };
        let separate_metadata = rng.u8(0..10) < 7;
        let cores = rng.usize(2..=3);
        let ctl_core = rng.usize(0..cores);
        let faulty = rng.u8(0..10) < 6;
        let errors = faulty && rng.bool();
        let data_faults = Faults {
            latency_max_us: rng.u64(0..=300),
            read_error: if errors { rng.f64() * 0.01 } else { 0.0 },
            write_error: if errors { rng.f64() * 0.006 } else { 0.0 },
            misdirect: 0.0,
            misdirect_range: None,
        };
        let tight_meta = rng.u8(0..10) == 0;
        let meta_bytes: u64 = if tight_meta {
            (64 << 10) + 4096 * rng.u64(80..=120)
        } else {
            (64 << 10) + 4096 * rng.u64(300..=1200)
        };
        let misdirect = faulty && separate_metadata && rng.u8(0..4) == 0;
        let meta_faults = Faults {
            latency_max_us: rng.u64(0..=300),
            read_error: if errors { rng.f64() * 0.002 } else { 0.0 },
            write_error: if errors { rng.f64() * 0.002 } else { 0.0 },
            misdirect: if misdirect { 0.003 } else { 0.0 },
            // Pages only: a lost superblock write goes undetected by design (the
            // previous commit stays in force), see the module doc.
            misdirect_range: misdirect.then_some((64 << 10)..meta_bytes),
        };
        let mut names = vec![("sim-data0".to_string(), uuid::Uuid::from_u64_pair(1, 1))];
        let mut faults = vec![data_faults];
        let mut opts = PoolOptions::new("simpool");
        opts.segment_bytes = segment_bytes;
        opts.cow_policy = if rng.bool() {
            CowPolicy::Redirect
        } else {
            CowPolicy::CopyOut
        };
        if separate_metadata {
            names.push(("sim-meta".to_string(), uuid::Uuid::from_u64_pair(2, 2)));
            faults.push(meta_faults);
        } else {
            let meta_segs = if tight_meta { 1 } else { rng.u64(2..=6) };
            opts.metadata_bytes = Some(meta_segs * segment_bytes.max(512 << 10));
        }
        let mut media_bytes = vec![data_segments * segment_bytes];
        if separate_metadata {
            // The label's segment is reserved too.
            media_bytes[0] += segment_bytes;
            media_bytes.push(meta_bytes);
        } else {
            let meta = opts.metadata_bytes.unwrap_or(0).div_ceil(segment_bytes) * segment_bytes;
            media_bytes[0] += segment_bytes + meta;
        }
        Setup {
            media_bytes,
            data_segments,
            layout: Layout {
                block_size,
                meta_block_size: 512,
                names,
                separate_metadata,
                opts,
                cores,
                ctl_core,
            },
            faults,
            p_crash_mid: if faulty { 0.06 } else { 0.03 },
            p_crash_between: 0.02,
            p_reopen: 0.02,
            p_rot: if faulty { 0.15 } else { 0.0 },
            p_control: 0.4,
            p_out_of_range: 0.03,
        }
    }

    pub(super) fn event(&self, s: String) {
        let mut l = self.log.borrow_mut();
        s.hash(&mut l.hasher);
        if l.verbose {
            eprintln!("[{}] {s}", self.seed);
        }
        l.lines.push_back(s);
        if l.lines.len() > 40 {
            l.lines.pop_front();
        }
    }

    pub(super) fn world(&mut self) -> &mut World {
        self.world.as_mut().expect("a life is running")
    }

    /// The first life: empty disks, a new pool.
    pub(super) fn first_life(&mut self) -> Result<(), String> {
        self.event(format!(
            "setup: {} cores (controller {}), {}-byte blocks, {} KiB segments, {} data segments, metadata {}, faults {:?}",
            self.setup.layout.cores,
            self.setup.layout.ctl_core,
            self.setup.layout.block_size,
            self.setup.layout.opts.segment_bytes >> 10,
            self.setup.data_segments,
            if self.setup.layout.separate_metadata {
                format!("separate ({} KiB)", self.setup.media_bytes[1] >> 10)
            } else {
                "on the data container".into()
            },
            self.setup.faults
        ));
        let media: Vec<Vec<u8>> = self
            .setup
            .media_bytes
            .iter()
            .copied()
            .map(|n| vec![0u8; n as usize])
            .collect();
        let w = World::new(&self.setup.layout, media, &self.setup.faults, self.seed);
        self.world = Some(w);
        let layout = self.setup.layout.clone();
        // The pool is made on healthy devices (an injected error while formatting only
        // fails the creation); the faults start with the workload.
        let healthy: Vec<Faults> = (self.setup.faults.iter())
            .map(|f| Faults {
                latency_max_us: f.latency_max_us,
                ..Default::default()
            })
            .collect();
        for (d, f) in self.world().disks.iter().zip(healthy) {
            d.set_faults(f);
        }
        let made = self
            .world()
            .create_pool(&layout)
            .map_err(|e| format!("creating the pool: {e}"));
        let faults = self.setup.faults.clone();
        for (d, f) in self.world().disks.iter().zip(faults) {
            d.set_faults(f);
        }
        made?;
        let data = self.world().pool.as_ref().expect("pool made").space().0;
        self.pool_segments = data;
        self.reserved_segments = self.device_segments() - data;
        Ok(())
    }

    /// Segments of the data device now.
    fn device_segments(&mut self) -> u64 {
        let seg = self.setup.layout.opts.segment_bytes;
        let d: Arc<dyn Bdev> = self.world().disks[0].clone();
        d.num_blocks() * d.block_size() as u64 / seg
    }

    fn run(&mut self) -> Result<Report, String> {
        self.first_life()?;
        // A few disks to start with.
        let n = self.rng.usize(1..=3);
        for _ in 0..n {
            let op = self.gen_create();
            self.run_wave(vec![op], None)?;
        }
        for wave in 0..self.opts.waves {
            self.report.waves = wave + 1;
            if self.report.detected.is_some() {
                break;
            }
            if self.pool_failed {
                self.power_loss("the pool failed")?;
                continue;
            }
            let r = self.rng.f64();
            if r < self.setup.p_crash_between {
                self.power_loss("between waves")?;
                continue;
            } else if r < self.setup.p_crash_between + self.setup.p_reopen {
                self.clean_reopen()?;
                continue;
            }
            let ops = self.gen_wave();
            let crash_at = (self.rng.f64() < self.setup.p_crash_mid).then(|| self.rng.u64(1..=600));
            self.run_wave(ops, crash_at)?;
            if !self.pool_failed && self.report.detected.is_none() {
                self.audit("after a wave", false)?;
            }
        }
        if self.report.detected.is_none() {
            self.finish()?;
        }
        self.report.sim_ms += self
            .world
            .as_ref()
            .map_or(0, |w| w.now().as_millis() as u64);
        Ok(std::mem::take(&mut self.report))
    }

    // ----- operation choice -----

    pub(super) fn live_disks(&self) -> Vec<String> {
        self.model
            .values()
            .filter(|d| d.exists == Existence::Yes)
            .map(|d| d.name.clone())
            .collect()
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.usize(0..v.len())].clone())
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("{prefix}{}", self.next_name)
    }

    fn seg_blocks(&self) -> u64 {
        self.setup.layout.opts.segment_bytes / self.setup.layout.block_size as u64
    }

    fn gen_create(&mut self) -> Op {
        let segs = self.rng.u64(1..=8);
        let mut blocks = segs * self.seg_blocks();
        if self.rng.u8(0..4) == 0 {
            blocks -= self.rng.u64(1..self.seg_blocks());
        }
        Op::Create {
            name: self.new_name("d"),
            blocks,
            thin: self.rng.u8(0..5) != 0,
        }
    }

    fn gen_data(&mut self, disks: &[String]) -> Option<Op> {
        let disk = self.pick(disks)?;
        let size = self.model[&disk].blocks();
        let n = match self.rng.u8(0..4) {
            0 => self.rng.u64(1..=self.seg_blocks().min(256) * 2),
            _ => self.rng.u64(1..=8),
        };
        // Now and then a request that runs past the end (it must fail).
        let (block, n) = if self.rng.f64() < self.setup.p_out_of_range {
            (size.saturating_sub(n / 2), n)
        } else {
            let n = n.min(size);
            (self.rng.u64(0..=size - n), n)
        };
        let fua = self.rng.u8(0..5) == 0;
        Some(match self.rng.u8(0..20) {
            0..=7 => Op::Read { disk, block, n },
            8..=14 => {
                let first = self.next_tag;
                self.next_tag += n;
                Op::Modify {
                    kind: ModKind::Write,
                    disk,
                    block,
                    n,
                    fua,
                    first,
                }
            }
            15 => Op::Modify {
                kind: ModKind::WriteZeroes,
                disk,
                block,
                n,
                fua,
                first: 0,
            },
            16 => Op::Modify {
                kind: ModKind::Unmap,
                disk,
                block,
                n,
                fua,
                first: 0,
            },
            _ => Op::Flush { disk },
        })
    }

    fn gen_control(&mut self) -> Option<Op> {
        let live = self.live_disks();
        let writable: Vec<String> = live
            .iter()
            .filter(|d| !self.model[*d].snapshot)
            .cloned()
            .collect();
        let read_only: Vec<String> = live
            .iter()
            .filter(|d| self.model[*d].read_only)
            .cloned()
            .collect();
        Some(match self.rng.u8(0..29) {
            0..=1 => {
                if live.len() >= 10 {
                    return None;
                }
                self.gen_create()
            }
            2..=6 => {
                if live.len() >= 12 {
                    return None;
                }
                let mut pairs = Vec::new();
                let k = if self.rng.u8(0..4) == 0 { 2 } else { 1 };
                let mut w = writable.clone();
                self.rng.shuffle(&mut w);
                for o in w.into_iter().take(k) {
                    let s = self.new_name("s");
                    pairs.push((o, s));
                }
                if pairs.is_empty() {
                    return None;
                }
                Op::Snapshot { pairs }
            }
            7..=9 => {
                if live.len() >= 12 {
                    return None;
                }
                let snapshot = self.pick(&read_only)?;
                let name = self.new_name("c");
                Op::Clone { snapshot, name }
            }
            10..=12 => {
                if live.len() <= 1 {
                    return None;
                }
                Op::Delete {
                    disk: self.pick(&live)?,
                }
            }
            13..=15 => {
                let disk = self.pick(&writable)?;
                let cur = self.model[&disk].blocks();
                let sb = self.seg_blocks();
                let blocks = match self.rng.u8(0..4) {
                    0 => cur + self.rng.u64(1..=sb * 2),
                    1 => (cur / 2).max(1),
                    2 => (self.rng.u64(1..=5) * sb)
                        .saturating_sub(self.rng.u64(0..sb))
                        .max(1),
                    _ => self.rng.u64(1..=6) * sb,
                };
                Op::Resize { disk, blocks }
            }
            16..=17 => {
                let disk = self.pick(&writable)?;
                let ro = !self.model[&disk].read_only;
                Op::SetReadOnly { disk, ro }
            }
            18..=19 => {
                // Mostly disks with a parent to split from (a snapshot, or the golden
                // image: a split copies it in).
                let children: Vec<String> = writable
                    .iter()
                    .filter(|d| self.model[*d].parent.is_some() || self.model[*d].external)
                    .cloned()
                    .collect();
                let disk = if children.is_empty() || self.rng.u8(0..5) == 0 {
                    self.pick(&writable)?
                } else {
                    self.pick(&children)?
                };
                Op::Split {
                    disk,
                    decouple: self.rng.bool(),
                }
            }
            20 => {
                let disk = self.pick(&writable)?;
                let policy = if self.rng.bool() {
                    CowPolicy::Redirect
                } else {
                    CowPolicy::CopyOut
                };
                Op::CowPolicy { disk, policy }
            }
            24..=25 => {
                // A snapshot of the disk's family (lineage through the model's parents):
                // the engine refuses others, and a refusal changes nothing.
                let disk = self.pick(&writable)?;
                let root = self.family_root(&disk);
                let snaps: Vec<String> = live
                    .iter()
                    .filter(|s| self.model[*s].snapshot && self.family_root(s) == root)
                    .cloned()
                    .collect();
                let snapshot = self.pick(&snaps)?;
                Op::Revert { disk, snapshot }
            }
            26 => {
                let disk = self.pick(&live)?;
                let new_name = self.new_name("n");
                Op::Rename { disk, new_name }
            }
            21 => Op::Grow {
                segments: self.rng.u64(1..=40),
            },
            27 => {
                if live.len() >= 12 {
                    return None;
                }
                let name = self.new_name("e");
                Op::CloneBdev { name }
            }
            28 => {
                if self.rng.u8(0..4) == 0 {
                    // A snapshot: it and every disk reading through it read the golden
                    // image below their own layers.
                    let disk = self.pick(&read_only)?;
                    return Some(Op::SetParentBdev { disk });
                }
                let disk = self.pick(&writable)?;
                if self.rng.bool() {
                    return Some(Op::SetParentBdev { disk });
                }
                // Sometimes a snapshot: it and every disk reading through it.
                let disk = if self.rng.u8(0..4) == 0 {
                    self.pick(&read_only)?
                } else {
                    disk
                };
                // A snapshot of the disk's size (the engine refuses others).
                let blocks = self.model[&disk].blocks();
                let snaps: Vec<String> = read_only
                    .iter()
                    .filter(|s| self.model[*s].snapshot && self.model[*s].blocks() == blocks)
                    .cloned()
                    .collect();
                let parent = self.pick(&snaps)?;
                Op::SetParent { disk, parent }
            }
            _ => {
                let mut w = live.clone();
                self.rng.shuffle(&mut w);
                let k = self.rng.usize(1..=2).min(w.len());
                if k == 0 {
                    return None;
                }
                let hold = if self.rng.u8(0..6) == 0 {
                    QUIESCE_LIMIT + Duration::from_millis(self.rng.u64(1..=500))
                } else {
                    Duration::from_micros(self.rng.u64(10..=20_000))
                };
                Op::Quiesce {
                    disks: w.into_iter().take(k).collect(),
                    hold,
                }
            }
        })
    }

    /// The oldest ancestor of `disk` through the model's parent links.
    fn family_root(&self, disk: &str) -> String {
        let mut at = disk.to_string();
        for _ in 0..=self.model.len() {
            match self.model.get(&at).and_then(|d| d.parent.clone()) {
                Some(p) if self.model.contains_key(&p) => at = p,
                _ => break,
            }
        }
        at
    }

    fn gen_wave(&mut self) -> Vec<Op> {
        let live = self.live_disks();
        let mut ops = Vec::new();
        let n = self.rng.usize(1..=12);
        for _ in 0..n {
            if let Some(op) = self.gen_data(&live) {
                ops.push(op);
            }
        }
        if self.rng.f64() < self.setup.p_control {
            let k = if self.rng.u8(0..5) == 0 { 2 } else { 1 };
            let mut busy: BTreeSet<String> = BTreeSet::new();
            for _ in 0..k {
                if let Some(op) = self.gen_control() {
                    // One control operation per disk and wave keeps the model exact.
                    let mut names = control_disks(&op);
                    // A snapshot given an external parent changes what the disks
                    // reading through it read too: none of them shares the wave.
                    if let Op::SetParentBdev { disk } | Op::SetParent { disk, .. } = &op
                        && self.model.get(disk).is_some_and(|m| m.read_only)
                    {
                        let also = names.clone();
                        names = self.lineage_of(disk);
                        names.extend(also);
                        ops.retain(|o| {
                            !o.is_data()
                                || !data_disk(o).is_some_and(|d| names.iter().any(|n| n == d))
                        });
                    }
                    if names.iter().any(|n| busy.contains(n)) {
                        continue;
                    }
                    busy.extend(names);
                    // A revert or a rename changes what the disk's name reads as a
                    // whole: no data operation on it shares the wave.
                    if let Op::Revert { disk, .. }
                    | Op::Rename { disk, .. }
                    | Op::SetParentBdev { disk }
                    | Op::SetParent { disk, .. } = &op
                    {
                        ops.retain(|o| !o.is_data() || data_disk(o) != Some(disk.as_str()));
                    }
                    ops.push(op);
                }
            }
        }
        self.rng.shuffle(&mut ops);
        ops
    }

    // ----- running a wave -----

    fn bdev_of(&self, disk: &str) -> Option<Arc<dyn Bdev>> {
        self.world
            .as_ref()?
            .vdisks
            .get(disk)
            .map(|v| v.clone() as Arc<dyn Bdev>)
    }

    fn start(&mut self, i: usize, op: &Op) -> Progress {
        let bs = self.setup.layout.block_size as usize;
        let cores = self.setup.layout.cores;
        let core = self.rng.usize(0..cores);
        if op.is_data() {
            let disk = match op {
                Op::Read { disk, .. } | Op::Modify { disk, .. } | Op::Flush { disk } => disk,
                _ => unreachable!(),
            };
            let Some(bdev) = self.bdev_of(disk) else {
                return Progress::Done(Outcome::Io(IoStatus::Aborted));
            };
            let io = match op {
                Op::Read { block, n, .. } => BdevIo::read(*block, *n, IoBuf::new(*n as usize * bs)),
                Op::Modify {
                    kind,
                    block,
                    n,
                    fua,
                    first,
                    ..
                } => {
                    let io = match kind {
                        ModKind::Write => {
                            let mut buf = IoBuf::new(*n as usize * bs);
                            for k in 0..*n as usize {
                                model::pattern(first + k as u64, &mut buf[k * bs..(k + 1) * bs]);
                            }
                            BdevIo::write(*block, *n, buf)
                        }
                        ModKind::WriteZeroes => BdevIo::write_zeroes(*block, *n),
                        ModKind::Unmap => BdevIo::unmap(*block, *n),
                    };
                    io.with_fua(*fua)
                }
                Op::Flush { .. } => BdevIo::flush(),
                _ => unreachable!(),
            };
            self.world().submit(core, &bdev, io, i as u64);
            return Progress::Io;
        }
        let pool = self
            .world
            .as_ref()
            .and_then(|w| w.pool.clone())
            .expect("pool open");
        let fut: Pending<CtlResult> = match op.clone() {
            Op::Create { name, blocks, thin } => {
                let bytes = blocks * bs as u64;
                Box::pin(async move {
                    pool.create_disk(&name, bytes, thin)
                        .await
                        .map(|d| CtlValue::Disks(vec![d]))
                })
            }
            Op::Snapshot { pairs } => Box::pin(async move {
                pool.snapshot(pairs, QUIESCE_LIMIT)
                    .await
                    .map(CtlValue::Disks)
            }),
            Op::SetParentBdev { disk } => {
                let golden: Arc<dyn Bdev> = self.world().golden.clone();
                Box::pin(async move {
                    pool.set_external_parent(&disk, golden)
                        .await
                        .map(|_| CtlValue::Unit)
                })
            }
            Op::SetParent { disk, parent } => Box::pin(async move {
                pool.set_parent(&disk, &parent)
                    .await
                    .map(|_| CtlValue::Unit)
            }),
            Op::CloneBdev { name } => {
                let golden: Arc<dyn Bdev> = self.world().golden.clone();
                Box::pin(async move {
                    pool.clone_bdev(golden, &name)
                        .await
                        .map(|d| CtlValue::Disks(vec![d]))
                })
            }
            Op::Clone { snapshot, name } => Box::pin(async move {
                pool.clone_disk(&snapshot, &name)
                    .await
                    .map(|d| CtlValue::Disks(vec![d]))
            }),
            Op::Delete { disk } => {
                Box::pin(async move { pool.delete_disk(&disk).await.map(|_| CtlValue::Unit) })
            }
            Op::Resize { disk, blocks } => {
                let bytes = blocks * bs as u64;
                Box::pin(
                    async move { pool.resize_disk(&disk, bytes).await.map(|_| CtlValue::Unit) },
                )
            }
            Op::SetReadOnly { disk, ro } => {
                Box::pin(async move { pool.set_read_only(&disk, ro).await.map(|_| CtlValue::Unit) })
            }
            Op::Split { disk, decouple } => Box::pin(async move {
                let r = if decouple {
                    pool.decouple(&disk).await
                } else {
                    pool.split(&disk).await
                };
                r.map(|_| CtlValue::Unit)
            }),
            Op::CowPolicy { disk, policy } => Box::pin(async move {
                pool.set_cow_policy(&disk, policy)
                    .await
                    .map(|_| CtlValue::Unit)
            }),
            Op::Quiesce { disks, .. } => {
                Box::pin(async move { pool.quiesce(disks, QUIESCE_LIMIT).await.map(CtlValue::Id) })
            }
            Op::Rename { disk, new_name } => Box::pin(async move {
                pool.rename_disk(&disk, &new_name)
                    .await
                    .map(|_| CtlValue::Unit)
            }),
            Op::RenamePool { name } => {
                Box::pin(async move { pool.rename(&name).await.map(|_| CtlValue::Unit) })
            }
            Op::Grow { segments } => {
                // The device grows now (as `truncate` and `bdev_uring_rescan` do), the
                // pool with the operation. Past what its space map counts, the grow is
                // refused and the size stays.
                let seg = self.setup.layout.opts.segment_bytes;
                self.world().disks[0].grow(segments * seg);
                let total = self.device_segments();
                self.grow_expect = Some(if total <= pool.max_segments() {
                    total - self.reserved_segments
                } else {
                    self.pool_segments
                });
                Box::pin(async move { pool.grow().await.map(|_| CtlValue::Unit) })
            }
            Op::Revert { disk, snapshot } => Box::pin(async move {
                pool.revert_disk(&disk, &snapshot)
                    .await
                    .map(|_| CtlValue::Unit)
            }),
            Op::WaitJob { disk } => Box::pin(async move {
                loop {
                    let list = pool.list().await?;
                    if list.iter().all(|d| d.name != disk || d.job.is_none()) {
                        return Ok(CtlValue::Unit);
                    }
                }
            }),
            _ => unreachable!(),
        };
        Progress::Ctl(fut)
    }

    /// Runs `ops` concurrently to the end (or to a power loss after `crash_at` steps).
    pub(super) fn run_wave(&mut self, ops: Vec<Op>, crash_at: Option<u64>) -> Result<(), String> {
        let names: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        self.event(format!("wave: {}", names.join("; ")));
        // What a read may see: before the wave, or anything the wave writes.
        let mut planned: BTreeMap<String, WaveEffects> = BTreeMap::new();
        for op in &ops {
            if let Op::Modify {
                kind,
                disk,
                block,
                n,
                first,
                fua,
            } = op
            {
                let fx = planned.entry(disk.clone()).or_default();
                for k in 0..*n {
                    let tag = if *kind == ModKind::Write {
                        first + k
                    } else {
                        0
                    };
                    fx.mods.entry(block + k).or_default().push(Modification {
                        tag,
                        ok: false,
                        fua: *fua,
                    });
                }
            }
        }
        let before: BTreeMap<String, Vec<Possible>> = self
            .model
            .iter()
            .map(|(k, d)| (k.clone(), d.now.clone()))
            .collect();
        let mut running: Vec<Running> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let progress = self.start(i, op);
            running.push(Running {
                op: op.clone(),
                progress,
            });
        }
        let start = self.world().now();
        let mut steps = 0u64;
        let mut crashed = false;
        let mut failure: Option<String> = None;
        let bs = self.setup.layout.block_size as usize;
        loop {
            let work = self.world().step();
            self.audit_reads()?;
            // Completions of data requests.
            let done: Vec<_> = std::mem::take(&mut *self.world().sink.done.borrow_mut());
            for (tag, io, status) in done {
                let i = tag as usize;
                if let Op::Read { disk, block, n } = &running[i].op
                    && status.is_success()
                    && failure.is_none()
                {
                    let mut data = vec![0u8; *n as usize * bs];
                    io.copy_out(0, &mut data);
                    let fx = planned.entry(disk.clone()).or_default();
                    for k in 0..*n {
                        let b = block + k;
                        let got = model::tag_of(&data[k as usize * bs..(k as usize + 1) * bs]);
                        let Some(prev) = before.get(disk).and_then(|v| v.get(b as usize)) else {
                            continue;
                        };
                        let allowed = fx.allowed(prev, b);
                        match got {
                            Some(t) if allowed.contains(&t) => {
                                (b, t).hash(&mut self.log.borrow_mut().hasher);
                                fx.seen.push((b, t))
                            }
                            Some(t) => {
                                failure = Some(format!(
                                    "read of `{disk}` block {b} returned tag {t:#x}; allowed {}",
                                    model::show(&allowed)
                                ))
                            }
                            None => {
                                failure = Some(format!(
                                    "read of `{disk}` block {b} returned data no write wrote (allowed {})",
                                    model::show(&allowed)
                                ))
                            }
                        }
                    }
                }
                (i, status as u8).hash(&mut self.log.borrow_mut().hasher);
                running[i].progress = Progress::Done(Outcome::Io(status));
            }
            // Control operations.
            let now = self.world().now();
            let mut cx = Context::from_waker(Waker::noop());
            for r in running.iter_mut() {
                let next = match &mut r.progress {
                    Progress::Ctl(f) => match f.as_mut().poll(&mut cx) {
                        Poll::Ready(res) => Some(self.ctl_done(&r.op, res)),
                        Poll::Pending => None,
                    },
                    Progress::Held { id, until } if now >= *until => {
                        let pool = self.world.as_ref().and_then(|w| w.pool.clone());
                        let id = *id;
                        pool.map(|p| {
                            let f: Pending<CtlResult> =
                                Box::pin(
                                    async move { p.activate(id).await.map(|_| CtlValue::Unit) },
                                );
                            Progress::Activating(f)
                        })
                    }
                    Progress::Activating(f) => match f.as_mut().poll(&mut cx) {
                        Poll::Ready(res) => Some(Progress::Done(Outcome::Ctl(match res {
                            Ok(_) => Ok(()),
                            Err(VdiskError::QuiesceTimeout(_)) => Ok(()),
                            Err(e) => Err(ctl_error(&e)),
                        }))),
                        Poll::Pending => None,
                    },
                    _ => None,
                };
                if let Some(n) = next {
                    r.progress = n;
                }
            }
            if let Some(f) = failure.take() {
                return Err(f);
            }
            steps += 1;
            if running
                .iter()
                .all(|r| matches!(r.progress, Progress::Done(_)))
            {
                break;
            }
            if crash_at.is_some_and(|c| steps >= c) {
                crashed = true;
                break;
            }
            self.world().tick(work > 0);
            if self.world().now() - start > WAVE_LIMIT {
                let stuck: Vec<String> = running
                    .iter()
                    .filter(|r| !matches!(r.progress, Progress::Done(_)))
                    .map(|r| format!("{:?}", r.op))
                    .collect();
                return Err(format!(
                    "hang: still running after {} s of simulated time: {}",
                    WAVE_LIMIT.as_secs(),
                    stuck.join("; ")
                ));
            }
        }
        for r in running.iter_mut() {
            if !matches!(r.progress, Progress::Done(_)) {
                r.progress = Progress::Done(Outcome::Lost);
            }
        }
        self.apply_wave(&running, planned, &before)?;
        if crashed {
            self.power_loss("inside a wave")?;
        }
        Ok(())
    }

    /// A control operation finished.
    fn ctl_done(&mut self, op: &Op, res: CtlResult) -> Progress {
        let name = op.name();
        self.report.control_ops += 1;
        let e = self.report.control.entry(name).or_default();
        e.0 += 1;
        if res.is_ok() {
            e.1 += 1;
        }
        match (&op, res) {
            (Op::Quiesce { hold, .. }, Ok(CtlValue::Id(id))) => {
                let until = self.world().now() + *hold;
                Progress::Held { id, until }
            }
            (_, Ok(CtlValue::Disks(ds))) => {
                for d in ds {
                    let n = d.disk_name();
                    self.world().vdisks.insert(n, d);
                }
                Progress::Done(Outcome::Ctl(Ok(())))
            }
            (_, Ok(_)) => Progress::Done(Outcome::Ctl(Ok(()))),
            (_, Err(e)) => {
                if matches!(e, VdiskError::PoolFailed(_)) {
                    self.pool_failed = true;
                }
                Progress::Done(Outcome::Ctl(Err(ctl_error(&e))))
            }
        }
    }

    /// Checks each outcome and moves the model on.
    fn apply_wave(
        &mut self,
        running: &[Running],
        mut planned: BTreeMap<String, WaveEffects>,
        before: &BTreeMap<String, Vec<Possible>>,
    ) -> Result<(), String> {
        // Disks a control operation of this wave touched: their data requests may fail
        // in ways that depend on the order (deleted, shrunk, made read-only).
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for r in running {
            if !r.op.is_data() {
                touched.extend(control_disks(&r.op));
            }
        }
        let faults_on = self.faults_on();
        for r in running {
            let Progress::Done(outcome) = &r.progress else {
                continue;
            };
            self.report.data_ops += r.op.is_data() as u64;
            let (disk, status) = match (&r.op, outcome) {
                (
                    Op::Read { disk, .. } | Op::Modify { disk, .. } | Op::Flush { disk },
                    Outcome::Io(s),
                ) => (disk.clone(), Some(*s)),
                (
                    Op::Read { disk, .. } | Op::Modify { disk, .. } | Op::Flush { disk },
                    Outcome::Lost,
                ) => (disk.clone(), None),
                _ => continue,
            };
            let Some(m) = self.model.get(&disk) else {
                continue;
            };
            let size = m.blocks();
            let ro = m.read_only;
            let (block, n) = match &r.op {
                Op::Read { block, n, .. } | Op::Modify { block, n, .. } => (*block, *n),
                _ => (0, 0),
            };
            let out_of_range = n > 0 && block + n > size;
            if let Some(st) = status {
                let excused = touched.contains(&disk) || self.pool_failed;
                let ok = match (st, &r.op) {
                    (IoStatus::Success, Op::Modify { .. }) if ro && !excused => {
                        return Err(format!("{:?} to read-only `{disk}` succeeded", r.op));
                    }
                    (IoStatus::Success, _) if out_of_range && !excused => {
                        return Err(format!(
                            "{:?} beyond the end of `{disk}` ({size} blocks) succeeded",
                            r.op
                        ));
                    }
                    (IoStatus::Success, _) => true,
                    (IoStatus::LbaOutOfRange, _) if out_of_range || excused => false,
                    (IoStatus::WriteProtected, Op::Modify { .. }) if ro || excused => false,
                    (IoStatus::CapacityExceeded, Op::Modify { .. }) => {
                        self.report.no_space += 1;
                        false
                    }
                    (IoStatus::MediaError, _) if faults_on || self.damage || excused => false,
                    (IoStatus::Aborted, _) if excused => false,
                    (IoStatus::Aborted | IoStatus::MediaError, _) if faults_on => {
                        // A metadata write failed and the pool with it (or a request
                        // met an injected error): the operator restarts the target.
                        self.pool_failed = true;
                        false
                    }
                    (st, op) => {
                        return Err(format!(
                            "{op:?} on `{disk}` failed with {st:?} (no fault explains it)"
                        ));
                    }
                };
                if let Op::Flush { .. } = r.op
                    && ok
                {
                    planned.entry(disk.clone()).or_default().flushed = true;
                }
                if let Op::Modify {
                    block,
                    n,
                    first,
                    kind,
                    ..
                } = &r.op
                    && ok
                    && let Some(fx) = planned.get_mut(&disk)
                {
                    for k in 0..*n {
                        let tag = if *kind == ModKind::Write {
                            first + k
                        } else {
                            0
                        };
                        if let Some(ms) = fx.mods.get_mut(&(block + k)) {
                            for mo in ms.iter_mut().filter(|mo| mo.tag == tag) {
                                mo.ok = true;
                            }
                        }
                    }
                }
            }
        }
        // Control operations, in the order they were generated (one per disk).
        let mut deleted = Vec::new();
        for r in running {
            let Progress::Done(outcome) = &r.progress else {
                continue;
            };
            let res: Option<&Result<(), CtlError>> = match outcome {
                Outcome::Ctl(res) => Some(res),
                Outcome::Lost => None,
                Outcome::Io(_) => continue,
            };
            let ok = matches!(res, Some(Ok(())));
            // Not finished when the power failed, or failed because the pool did (a
            // metadata write failed): it may or may not have taken effect.
            let mut lost = res.is_none();
            if let Some(Err(e)) = res {
                self.event(format!("{} failed: {}", r.op.name(), e.msg));
                if e.pool_level && !faults_on && !self.damage {
                    return Err(format!(
                        "{:?} failed: {} (no injected fault explains it)",
                        r.op, e.msg
                    ));
                }
                if e.pool_level {
                    // A refusal of the failed pool changed nothing: it must not stand
                    // for an earlier change of the same disk that may be lost (a shrink
                    // whose commit failed, then a grow refused).
                    lost = !e.refused_failed;
                    self.pool_failed = true;
                }
            }
            let touched = control_disks(&r.op);
            self.acked_parent.retain(|d, p| {
                !touched.contains(d) && p.as_ref().is_none_or(|p| !touched.contains(p))
            });
            match (&r.op, ok) {
                (Op::SetParent { disk, parent }, true) => {
                    self.acked_parent.insert(disk.clone(), Some(parent.clone()));
                }
                (Op::SetParentBdev { disk }, true) => {
                    self.acked_parent.insert(disk.clone(), None);
                }
                _ => {}
            }
            match &r.op {
                Op::Create { name, blocks, .. } if ok || lost => {
                    let mut d = DiskModel::zeroed(name, *blocks);
                    if lost {
                        d.exists = Existence::Maybe;
                    }
                    self.model.insert(name.clone(), d);
                }
                Op::Snapshot { pairs } if ok || lost => {
                    for (o, s) in pairs {
                        let content = self.content_during(o, before, &planned);
                        let mut d = DiskModel::copy_of(s, content, o, true);
                        d.external = self.model.get(o).is_some_and(|m| m.external);
                        if let Some(m) = self.model.get(o) {
                            d.family = m.family.clone();
                        }
                        if lost {
                            d.exists = Existence::Maybe;
                        }
                        self.model.insert(s.clone(), d);
                    }
                }
                Op::SetParentBdev { disk }
                    if (ok || lost) && self.model.get(disk).is_some_and(|m| m.read_only) =>
                {
                    // A snapshot (or a read-only disk) and every disk that reads through
                    // it: what each holds keeps its value, the rest reads the golden
                    // image now. The model knows lineage, not which disk reads through
                    // which, nor which blocks each holds: every block of every disk of
                    // the snapshot's lineage may read the golden image (zeros past its
                    // end) until a read pins it. Durable when acknowledged; either, when
                    // lost.
                    let golden_blocks = GOLDEN_SEGMENTS * self.seg_blocks();
                    for name in self.lineage_of(disk) {
                        if let Some(d) = self.model.get_mut(&name) {
                            for b in 0..d.now.len() {
                                let g = b as u64;
                                let below = if g < golden_blocks { golden_tag(g) } else { 0 };
                                for p in [&mut d.now[b], &mut d.durable[b], &mut d.since[b]] {
                                    p.insert(below);
                                }
                            }
                            d.external = true;
                        }
                    }
                }
                Op::SetParentBdev { disk } if ok || lost => {
                    // Blocks the disk holds keep their value; the others read the golden
                    // image now (zeros past its end): those that read as zeros before,
                    // and, of a disk that read through to a parent snapshot (a clone, a
                    // disk with snapshots) or the golden image, any block. The model does not know which blocks
                    // are held (a granule written in part holds the rest), so a block
                    // that may not be may be either until a read pins it. Durable when
                    // acknowledged; either, when lost.
                    let golden_blocks = GOLDEN_SEGMENTS * self.seg_blocks();
                    // A snapshot of the disk names it as its lineage parent.
                    let snapshotted = self
                        .model
                        .values()
                        .any(|m| m.parent.as_deref() == Some(disk.as_str()));
                    if let Some(d) = self.model.get_mut(disk) {
                        let lineage = d.parent.is_some() || d.external || snapshotted;
                        for b in 0..d.now.len() {
                            let g = b as u64;
                            let below = if g < golden_blocks { golden_tag(g) } else { 0 };
                            for p in [&mut d.now[b], &mut d.durable[b], &mut d.since[b]] {
                                if lineage || p.contains(&0) {
                                    p.insert(below);
                                }
                            }
                        }
                        d.external = true;
                        if ok {
                            d.parent = None;
                        }
                    }
                }
                Op::SetParent { disk, parent } if ok || lost => {
                    // What the disk holds keeps its value, the rest reads the parent's:
                    // the model does not know which blocks the disk holds (a granule it
                    // wrote part of holds the rest), so each block may be either until a
                    // read pins it. A snapshot (or a read-only disk) changes what every
                    // disk reading through it reads: each of its family may read the
                    // parent's (or the golden image, if the parent reads it). Durable
                    // when acknowledged; either, when lost.
                    let theirs = before.get(parent).cloned().unwrap_or_default();
                    let external = self.model.get(parent).is_some_and(|m| m.external);
                    let snapshot = self.model.get(disk).is_some_and(|m| m.read_only);
                    let changed = if snapshot {
                        self.lineage_of(disk)
                    } else {
                        vec![disk.clone()]
                    };
                    // One family from now on (the disk's old one joins too).
                    if let (Some(from), Some(to)) = (
                        self.model.get(disk).map(|m| m.family.clone()),
                        self.model.get(parent).map(|m| m.family.clone()),
                    ) {
                        for m in self.model.values_mut() {
                            if m.family == from {
                                m.family = to.clone();
                            }
                        }
                    }
                    let golden_blocks = GOLDEN_SEGMENTS * self.seg_blocks();
                    for name in &changed {
                        let Some(d) = self.model.get_mut(name) else {
                            continue;
                        };
                        for b in 0..d.now.len() {
                            let mut add: Vec<Tag> = theirs
                                .get(b)
                                .map(|t| t.iter().copied().collect())
                                .unwrap_or_default();
                            if snapshot && external {
                                let g = b as u64;
                                add.push(if g < golden_blocks { golden_tag(g) } else { 0 });
                            }
                            d.now[b].extend(add.iter().copied());
                            d.durable[b].extend(add.iter().copied());
                        }
                        if name == disk && ok {
                            d.parent = Some(parent.clone());
                            d.external = external;
                        } else {
                            d.external |= external;
                        }
                    }
                }
                Op::CloneBdev { name } if ok || lost => {
                    let blocks = GOLDEN_SEGMENTS * self.seg_blocks();
                    let mut d = DiskModel::zeroed(name, blocks);
                    d.external = true;
                    for b in 0..blocks as usize {
                        let p: Possible = [golden_tag(b as u64)].into();
                        d.now[b] = p.clone();
                        d.durable[b] = p;
                    }
                    if lost {
                        d.exists = Existence::Maybe;
                    }
                    self.model.insert(name.clone(), d);
                }
                Op::Clone { snapshot, name } if ok || lost => {
                    let content = before.get(snapshot).cloned().unwrap_or_default();
                    let mut d = DiskModel::copy_of(name, content, snapshot, false);
                    d.external = self.model.get(snapshot).is_some_and(|m| m.external);
                    if let Some(m) = self.model.get(snapshot) {
                        d.family = m.family.clone();
                    }
                    if lost {
                        d.exists = Existence::Maybe;
                    }
                    self.model.insert(name.clone(), d);
                }
                Op::Delete { disk } => {
                    if ok {
                        deleted.push(disk.clone());
                    } else if lost && let Some(d) = self.model.get_mut(disk) {
                        d.exists = Existence::Maybe;
                    }
                }
                Op::Resize { disk, blocks } => {
                    if lost {
                        let old = self.model.get(disk).map_or(0, |d| d.blocks());
                        self.uncertain_size.insert(disk.clone(), (old, *blocks));
                    } else if ok {
                        self.pending_resize(disk, *blocks);
                    }
                }
                Op::SetReadOnly { disk, ro } => {
                    if lost {
                        self.uncertain_ro.insert(disk.clone(), *ro);
                    } else if ok && let Some(d) = self.model.get_mut(disk) {
                        d.read_only = *ro;
                    }
                }
                Op::Rename { disk, new_name } => {
                    if lost {
                        self.uncertain_rename.insert(disk.clone(), new_name.clone());
                    } else if ok {
                        self.rename_in_model(disk, new_name);
                    }
                }
                Op::RenamePool { name } => {
                    if lost {
                        self.pool_name_maybe = Some(name.clone());
                    } else if ok {
                        self.pool_name = name.clone();
                    }
                }
                Op::Grow { .. } => {
                    let expect = self.grow_expect.take().unwrap_or(self.pool_segments);
                    if lost {
                        self.pool_segments_maybe = Some(expect);
                    } else {
                        // Done or refused (past the space map's room): the size is
                        // what the model says, at once.
                        let now = self.world().pool.as_ref().expect("pool open").space().0;
                        let want = if ok { expect } else { self.pool_segments };
                        if now != want {
                            return Err(format!(
                                "the pool has {now} data segments after {} ({}); the model \
                                 says {want}",
                                r.op.name(),
                                if ok { "acknowledged" } else { "refused" }
                            ));
                        }
                        self.pool_segments = now;
                    }
                }
                Op::Revert { disk, snapshot } if ok || lost => {
                    let content = before.get(snapshot).cloned().unwrap_or_default();
                    if lost {
                        self.uncertain_revert.insert(disk.clone(), content);
                    } else if let Some(d) = self.model.get_mut(disk) {
                        // Durable when acknowledged: the snapshot's contents, whole.
                        d.now = content.clone();
                        d.durable = content;
                        d.since = vec![Possible::new(); d.now.len()];
                        d.parent = Some(snapshot.clone());
                    }
                }
                _ => {}
            }
        }
        for (disk, fx) in &planned {
            if let Some(d) = self.model.get_mut(disk) {
                d.end_wave(fx);
            }
        }
        for d in deleted {
            self.model.remove(&d);
            if let Some(w) = self.world.as_mut()
                && let Some(v) = w.vdisks.remove(&d)
            {
                w.forget((v as Arc<dyn Bdev>).id());
            }
        }
        // Resizes apply after the wave's writes (a shrink drops what they wrote beyond).
        let sizes: Vec<(String, u64)> = std::mem::take(&mut self.resized).into_iter().collect();
        let golden_blocks = GOLDEN_SEGMENTS * self.seg_blocks();
        for (disk, blocks) in sizes {
            if let Some(d) = self.model.get_mut(&disk) {
                resize_model(d, blocks, golden_blocks);
            }
        }
        Ok(())
    }
}

/// Resizes `d` in the model: new blocks are zeros, or for a disk that reads through to
/// the golden image (`golden_blocks` long), the golden image's blocks.
fn resize_model(d: &mut DiskModel, blocks: u64, golden_blocks: u64) {
    if d.external {
        d.resize_over(
            blocks,
            |b| if b < golden_blocks { golden_tag(b) } else { 0 },
        );
    } else {
        d.resize(blocks);
    }
}

/// The disk a data operation is about.
fn data_disk(op: &Op) -> Option<&str> {
    match op {
        Op::Read { disk, .. } | Op::Modify { disk, .. } | Op::Flush { disk } => Some(disk),
        _ => None,
    }
}

/// The disks a control operation is about.
fn control_disks(op: &Op) -> Vec<String> {
    match op {
        Op::Create { name, .. } => vec![name.clone()],
        Op::Snapshot { pairs } => pairs
            .iter()
            .flat_map(|(o, s)| [o.clone(), s.clone()])
            .collect(),
        Op::Clone { snapshot, name } => vec![snapshot.clone(), name.clone()],
        Op::CloneBdev { name } => vec![name.clone()],
        Op::SetParentBdev { disk } => vec![disk.clone()],
        Op::SetParent { disk, parent } => vec![disk.clone(), parent.clone()],
        Op::Delete { disk }
        | Op::Resize { disk, .. }
        | Op::SetReadOnly { disk, .. }
        | Op::Split { disk, .. }
        | Op::CowPolicy { disk, .. } => vec![disk.clone()],
        Op::Quiesce { disks, .. } => disks.clone(),
        Op::WaitJob { disk } => vec![disk.clone()],
        Op::Rename { disk, new_name } => vec![disk.clone(), new_name.clone()],
        Op::RenamePool { .. } => Vec::new(),
        // No disk, but one grow a wave: each grows the device before it runs.
        Op::Grow { .. } => vec!["<grow>".into()],
        Op::Revert { disk, snapshot } => vec![disk.clone(), snapshot.clone()],
        Op::Read { .. } | Op::Modify { .. } | Op::Flush { .. } => Vec::new(),
    }
}

impl Sim {
    /// `disk` and every disk of its family in the model (`DiskModel::family`): a
    /// superset of the disks that read through it.
    fn lineage_of(&self, disk: &str) -> Vec<String> {
        let Some(family) = self.model.get(disk).map(|m| &m.family) else {
            return vec![disk.to_string()];
        };
        let mut out = vec![disk.to_string()];
        out.extend(
            self.model
                .values()
                .filter(|m| &m.family == family && m.name != disk)
                .map(|m| m.name.clone()),
        );
        out
    }

    /// Moves disk `old` of the model (and of the world) to `new`.
    fn rename_in_model(&mut self, old: &str, new: &str) {
        if let Some(mut d) = self.model.remove(old) {
            d.name = new.to_string();
            self.model.insert(new.to_string(), d);
        }
        for d in self.model.values_mut() {
            if d.parent.as_deref() == Some(old) {
                d.parent = Some(new.to_string());
            }
        }
        if let Some(w) = self.world.as_mut()
            && let Some(v) = w.vdisks.remove(old)
        {
            w.vdisks.insert(new.to_string(), v);
        }
    }

    /// What `origin` may hold at some moment of the wave: before it, or written in it.
    fn content_during(
        &self,
        origin: &str,
        before: &BTreeMap<String, Vec<Possible>>,
        planned: &BTreeMap<String, WaveEffects>,
    ) -> Vec<Possible> {
        let Some(prev) = before.get(origin) else {
            return Vec::new();
        };
        match planned.get(origin) {
            Some(fx) => prev
                .iter()
                .enumerate()
                .map(|(b, p)| fx.allowed(p, b as u64))
                .collect(),
            None => prev.clone(),
        }
    }

    /// True if the devices may fail requests (injected errors, a write budget).
    fn faults_on(&self) -> bool {
        self.device_faults
            || self
                .setup
                .faults
                .iter()
                .any(|f| f.read_error > 0.0 || f.write_error > 0.0)
    }

    fn pending_resize(&mut self, disk: &str, blocks: u64) {
        self.resized.insert(disk.to_string(), blocks);
    }

    fn note_stats(&mut self, w: &World) {
        self.report.sim_ms += w.now().as_millis() as u64;
        let s = w.stats();
        self.report.read_errors += s.read_errors;
        self.report.write_errors += s.write_errors;
        self.report.misdirected += s.misdirected;
        if s.misdirected > 0 {
            self.damage = true;
        }
    }

    /// Power fails: every disk keeps what its medium holds, with unflushed writes kept,
    /// dropped or torn; the metadata may rot; the next life recovers.
    pub(super) fn power_loss(&mut self, why: &str) -> Result<(), String> {
        self.report.crashes += 1;
        let w = self.world.take().expect("a life is running");
        self.note_stats(&w);
        let mut media = Vec::new();
        for d in &w.disks {
            self.report.torn_or_dropped_writes += (d.unflushed_bytes() > 0) as u64;
            media.push(d.power_loss(&mut self.rng));
        }
        if self.rng.f64() < self.setup.p_rot {
            // One bit of the metadata flips: mostly in a page written lately (live
            // metadata), else anywhere in the label or the metadata pages. Not in the
            // superblock slots: a damaged newest slot looks like one torn by a crash,
            // and open rightly falls back to the other (the damage tests cover it).
            let l = &self.setup.layout;
            let i = if l.separate_metadata {
                media.len() - 1
            } else {
                0
            };
            let (lo, hi) = if l.separate_metadata {
                (64u64 << 10, media[i].len() as u64)
            } else {
                (
                    l.opts.segment_bytes,
                    l.opts.segment_bytes + l.opts.metadata_bytes.unwrap_or(0),
                )
            };
            let recent: Vec<(u64, u64)> = w.disks[i]
                .recently_landed()
                .into_iter()
                .filter(|&(o, n)| o >= lo && o + n <= hi)
                .collect();
            let at = match self.rng.u8(0..10) {
                0 => self.rng.u64(0..4096),
                1..=6 if !recent.is_empty() => {
                    let (o, n) = recent[self.rng.usize(0..recent.len())];
                    self.rng.u64(o..o + n)
                }
                _ => self.rng.u64(lo..hi),
            } as usize;
            let bit = self.rng.u8(0..8);
            media[i][at] ^= 1 << bit;
            self.damage = true;
            self.report.bit_rot += 1;
            self.event(format!("bit rot: byte {at} bit {bit} of disk {i}"));
        }
        drop(w);
        for d in self.model.values_mut() {
            d.power_loss();
        }
        self.pool_failed = false;
        self.event(format!("power loss ({why})"));
        self.reopen(media)
    }

    /// A clean shutdown and restart: the pool closes (committing), nothing is lost.
    pub(super) fn clean_reopen(&mut self) -> Result<(), String> {
        let pool = self.world().pool.clone().expect("pool open");
        let fut: Pending<Result<(), VdiskError>> = Box::pin(async move { pool.close().await });
        match self.world().drive(fut, WAVE_LIMIT) {
            Driven::Done(Ok(())) => {}
            Driven::Done(Err(e)) => {
                let faults_on = self.faults_on();
                if faults_on || self.damage {
                    self.event(format!("close failed: {e}"));
                    return self.power_loss("close failed");
                }
                return Err(format!("closing the pool failed: {e}"));
            }
            Driven::Hung => return Err("hang: closing the pool".into()),
        }
        self.report.clean_reopens += 1;
        let w = self.world.take().expect("a life is running");
        self.note_stats(&w);
        let mut media = Vec::new();
        for d in &w.disks {
            if d.unflushed_bytes() > 0 {
                return Err(format!(
                    "closing the pool left {} bytes unflushed on `{}`",
                    d.unflushed_bytes(),
                    (d.clone() as Arc<dyn Bdev>).name()
                ));
            }
            media.push(d.medium());
        }
        drop(w);
        for d in self.model.values_mut() {
            for b in 0..d.now.len() {
                d.durable[b] = d.now[b].clone();
                d.since[b].clear();
            }
        }
        self.event("clean close and reopen".into());
        self.reopen(media)
    }

    /// Starts the next life from `media`: offline check, open, reconcile, verify.
    fn reopen(&mut self, media: Vec<Vec<u8>>) -> Result<(), String> {
        self.life += 1;
        let layout = self.setup.layout.clone();
        let seed = self.seed ^ self.life.wrapping_mul(0x2545_f491_4f6c_dd1d);
        // Recovery runs without injected faults; they resume afterwards.
        let quiet = vec![Faults::default(); self.setup.faults.len()];
        let mut w = World::new(&layout, media, &quiet, seed);
        let report = w.check();
        if !report.clean() {
            self.world = Some(w);
            if self.damage {
                self.event(format!("check detected the damage: {:?}", report.errors));
                self.report.detected = Some(format!("check: {}", report.errors.join("; ")));
                return Ok(());
            }
            return Err(format!(
                "`tessera check` after recovery found: {}",
                report.errors.join("; ")
            ));
        }
        if let Err(e) = w.open_pool(&layout) {
            self.world = Some(w);
            if self.damage {
                self.event(format!("open refused the damaged pool: {e}"));
                self.report.detected = Some(format!("open: {e}"));
                return Ok(());
            }
            return Err(format!("opening the pool after recovery failed: {e}"));
        }
        self.world = Some(w);
        self.audit("after recovery", true)?;
        self.reconcile()?;
        self.verify_all()?;
        self.settle_reverts()?;
        for (d, f) in self
            .world()
            .disks
            .clone()
            .iter()
            .zip(self.setup.faults.clone())
        {
            d.set_faults(f);
        }
        Ok(())
    }

    /// The controller's state in memory against the rules of the offline check
    /// (`vdisk/audit.rs`), without a turn of any reactor: the run goes on as it would.
    /// `just_opened`: no release pending.
    fn audit(&mut self, when: &str, just_opened: bool) -> Result<(), String> {
        let w = self.world();
        let pool = w.pool.clone().expect("pool open");
        let core = pool.shared.ctl_core;
        let Some(mut problems) = w.mr.enter(core, || pool.audit(just_opened)) else {
            return Err(format!("no controller to audit {when}"));
        };
        let mr = &w.mr;
        let agents = pool.audit_agents(&|core, f: &mut dyn FnMut()| mr.enter(core, f), true);
        problems.extend(agents.unwrap_or_default());
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the controller's state {when} breaks the check's rules: {}",
            problems.join("; ")
        ))
    }

    /// No segment an agent would read from is free to be allocated: checked at every
    /// step of a wave, without a turn of any reactor.
    fn audit_reads(&mut self) -> Result<(), String> {
        let w = self.world();
        let Some(pool) = w.pool.clone() else {
            return Ok(());
        };
        let mr = &w.mr;
        match pool.audit_agents(&|core, f: &mut dyn FnMut()| mr.enter(core, f), false) {
            Some(problems) if !problems.is_empty() => Err(format!(
                "an agent's view during a wave: {}",
                problems.join("; ")
            )),
            _ => Ok(()),
        }
    }

    /// The pool's disks after recovery against the model.
    fn reconcile(&mut self) -> Result<(), String> {
        let pool = self.world().pool.clone().expect("pool open");
        let bs = self.setup.layout.block_size as u64;
        let golden_blocks = GOLDEN_SEGMENTS * self.seg_blocks();
        let p2 = pool.clone();
        let fut: Pending<_> = Box::pin(async move { p2.list().await });
        let infos = match self.world().drive(fut, WAVE_LIMIT) {
            Driven::Done(Ok(v)) => v,
            Driven::Done(Err(e)) => return Err(format!("listing the disks after recovery: {e}")),
            Driven::Hung => return Err("hang: listing the disks".into()),
        };
        let found: BTreeMap<String, crate::vdisk::DiskInfo> =
            infos.into_iter().map(|i| (i.name.clone(), i)).collect();
        let golden: Arc<dyn Bdev> = self.world().golden.clone();
        let golden_uuid = golden.uuid();
        for (disk, parent) in std::mem::take(&mut self.acked_parent) {
            let Some(info) = found.get(&disk) else {
                continue;
            };
            let external = info.external.as_ref().map(|x| x.uuid);
            match parent {
                Some(parent) if info.parent.as_deref() != Some(parent.as_str()) => {
                    return Err(format!(
                        "`{disk}` was made a clone of `{parent}` (acknowledged); after recovery its parent is {:?}",
                        info.parent
                    ));
                }
                None if info.parent.is_some() || external != Some(golden_uuid) => {
                    return Err(format!(
                        "`{disk}` was given the golden image as its parent (acknowledged); after recovery its parent is {:?}, its external snapshot {external:?}",
                        info.parent
                    ));
                }
                _ => {}
            }
        }
        // A rename the power failure interrupted: the disk has one of its names.
        for (old, new) in std::mem::take(&mut self.uncertain_rename) {
            if found.contains_key(&new) && !found.contains_key(&old) {
                self.rename_in_model(&old, &new);
            }
        }
        let name = pool.name();
        if name != self.pool_name {
            if self.pool_name_maybe.as_deref() == Some(name.as_str()) {
                self.pool_name = name;
            } else {
                return Err(format!(
                    "the pool is called `{name}` after recovery; the model says `{}`{}",
                    self.pool_name,
                    self.pool_name_maybe
                        .as_ref()
                        .map(|m| format!(" (or `{m}`)"))
                        .unwrap_or_default()
                ));
            }
        }
        self.pool_name_maybe = None;
        // A grow the power failure interrupted: the old size or the new one.
        let segments = pool.space().0;
        if segments != self.pool_segments {
            if self.pool_segments_maybe == Some(segments) {
                self.pool_segments = segments;
            } else {
                return Err(format!(
                    "the pool has {segments} data segments after recovery; the model says {}{}",
                    self.pool_segments,
                    self.pool_segments_maybe
                        .map(|m| format!(" (or {m})"))
                        .unwrap_or_default()
                ));
            }
        }
        self.pool_segments_maybe = None;
        for (disk, snap) in std::mem::take(&mut self.uncertain_revert) {
            let (Some(info), Some(d)) = (found.get(&disk), self.model.get_mut(&disk)) else {
                continue;
            };
            let blocks = info.size_bytes / bs;
            let (old_n, snap_n) = (d.blocks(), snap.len() as u64);
            if blocks == snap_n && blocks != old_n {
                // Its size says reverted; the reads below check the contents whole.
                d.now = snap.clone();
                d.durable = snap;
                d.since = vec![Possible::new(); blocks as usize];
            } else if blocks == old_n && blocks == snap_n {
                let old = d.now.clone();
                for (b, p) in d.now.iter_mut().enumerate() {
                    p.extend(snap[b].iter().copied());
                }
                d.durable = d.now.clone();
                self.revert_to_settle.insert(disk, (old, snap));
            } else if blocks != old_n {
                return Err(format!(
                    "`{disk}` has {blocks} blocks after recovery from a revert; it had \
                     {old_n}, the snapshot {snap_n}"
                ));
            }
        }
        let names: Vec<String> = self.model.keys().cloned().collect();
        for name in names {
            let d = self.model.get_mut(&name).expect("listed");
            match (d.exists, found.get(&name)) {
                (Existence::Yes, None) => {
                    return Err(format!("acknowledged disk `{name}` is gone after recovery"));
                }
                (Existence::Maybe, None) => {
                    self.model.remove(&name);
                }
                (_, Some(info)) => {
                    d.exists = Existence::Yes;
                    let blocks = info.size_bytes / bs;
                    if blocks != d.blocks() {
                        match self.uncertain_size.get(&name) {
                            Some(&(old, new)) if blocks == old || blocks == new => {
                                resize_model(d, blocks, golden_blocks)
                            }
                            _ => {
                                return Err(format!(
                                    "`{name}` has {blocks} blocks after recovery; the model says {}",
                                    d.blocks()
                                ));
                            }
                        }
                    }
                    if info.read_only != d.read_only {
                        if self.uncertain_ro.get(&name) == Some(&info.read_only) {
                            d.read_only = info.read_only;
                        } else {
                            return Err(format!(
                                "`{name}` is {}read-only after recovery; the model says otherwise",
                                if info.read_only { "" } else { "not " }
                            ));
                        }
                    }
                }
            }
        }
        for name in found.keys() {
            if !self.model.contains_key(name) {
                return Err(format!("disk `{name}` appeared that was never created"));
            }
        }
        self.uncertain_size.clear();
        self.uncertain_ro.clear();
        let fut: Pending<_> = Box::pin(async move { pool.disks().await });
        let disks = match self.world().drive(fut, WAVE_LIMIT) {
            Driven::Done(Ok(v)) => v,
            Driven::Done(Err(e)) => return Err(format!("listing the disks: {e}")),
            Driven::Hung => return Err("hang: listing the disks".into()),
        };
        let w = self.world();
        w.vdisks.clear();
        for d in disks {
            let n = d.disk_name();
            w.vdisks.insert(n, d);
        }
        Ok(())
    }

    /// After the reads that follow a recovery pinned every block: a disk whose revert
    /// the power failure interrupted holds its old contents or the snapshot's, whole.
    fn settle_reverts(&mut self) -> Result<(), String> {
        for (disk, (old, snap)) in std::mem::take(&mut self.revert_to_settle) {
            let Some(d) = self.model.get_mut(&disk) else {
                continue;
            };
            let within = |side: &[Possible]| d.now.iter().zip(side).all(|(n, s)| n.is_subset(s));
            let (was_old, was_snap) = (within(&old), within(&snap));
            if !was_old && !was_snap {
                let b = (0..d.now.len())
                    .find(|&b| !d.now[b].is_subset(&old[b]))
                    .unwrap_or(0);
                let c = (0..d.now.len())
                    .find(|&b| !d.now[b].is_subset(&snap[b]))
                    .unwrap_or(0);
                return Err(format!(
                    "`{disk}` after recovery from a revert is a mix: block {b} holds {} (not \
                     its old {}), block {c} holds {} (not the snapshot's {})",
                    model::show(&d.now[b]),
                    model::show(&old[b]),
                    model::show(&d.now[c]),
                    model::show(&snap[c])
                ));
            }
            self.event(format!(
                "`{disk}` after recovery from a revert: {}",
                if was_old {
                    "the old contents"
                } else {
                    "the snapshot's"
                }
            ));
        }
        Ok(())
    }

    /// Reads every block of every disk and checks it.
    pub(super) fn verify_all(&mut self) -> Result<(), String> {
        let mut ops = Vec::new();
        for d in self.model.values() {
            let mut b = 0;
            while b < d.blocks() {
                let n = (d.blocks() - b).min(64);
                ops.push(Op::Read {
                    disk: d.name.clone(),
                    block: b,
                    n,
                });
                self.report.blocks_verified += n;
                b += n;
            }
        }
        for chunk in ops.chunks(16) {
            self.run_wave(chunk.to_vec(), None)?;
        }
        Ok(())
    }

    /// The end of a run: verify, delete everything, and check that every segment came
    /// back and the metadata is clean.
    pub(super) fn finish(&mut self) -> Result<(), String> {
        if self.pool_failed {
            self.power_loss("the pool failed")?;
            if self.report.detected.is_some() {
                return Ok(());
            }
        }
        self.verify_all()?;
        let pool = self.world().pool.clone().expect("pool open");
        let names: Vec<String> = self.model.keys().cloned().collect();
        for name in names {
            let mut tries = 0;
            loop {
                let p = pool.clone();
                let n = name.clone();
                let fut: Pending<_> = Box::pin(async move {
                    let _ = p.cancel_split(&n).await;
                    p.delete_disk(&n).await
                });
                match self.world().drive(fut, WAVE_LIMIT) {
                    Driven::Done(Ok(())) => break,
                    Driven::Done(Err(VdiskError::Busy(_))) if tries < 20 => {
                        tries += 1;
                        let idle: Pending<()> = Box::pin(std::future::pending());
                        let _ = self.world().drive(idle, Duration::from_millis(200));
                    }
                    Driven::Done(Err(e)) => {
                        let faults_on = self.faults_on();
                        if faults_on || self.damage {
                            self.event(format!("final delete failed: {e}"));
                            return Ok(());
                        }
                        return Err(format!("deleting `{name}` at the end: {e}"));
                    }
                    Driven::Hung => return Err(format!("hang: deleting `{name}`")),
                }
            }
            self.model.remove(&name);
        }
        for _ in 0..2 {
            let p = pool.clone();
            let fut: Pending<_> = Box::pin(async move { p.commit().await });
            if let Driven::Done(Err(e)) = self.world().drive(fut, WAVE_LIMIT) {
                // An injected write error may fail the last commits too (the deletes
                // above are excused alike).
                if self.faults_on() || self.damage {
                    self.event(format!("final commit failed: {e}"));
                    return Ok(());
                }
                return Err(format!("committing at the end: {e}"));
            }
        }
        let p = pool.clone();
        let fut: Pending<_> = Box::pin(async move { p.free_space().await });
        let (free, pending) = match self.world().drive(fut, WAVE_LIMIT) {
            Driven::Done(Ok(v)) => v,
            other => {
                return Err(format!(
                    "free space at the end: {}",
                    match other {
                        Driven::Done(Err(e)) => e.to_string(),
                        _ => "hang".into(),
                    }
                ));
            }
        };
        let total = pool.space().0;
        if free + pending != total || pending != 0 {
            return Err(format!(
                "leak: after deleting every disk and committing, {free} of {total} segments are free ({pending} waiting)"
            ));
        }
        let p = pool.clone();
        let fut: Pending<_> = Box::pin(async move { p.close().await });
        if let Driven::Done(Err(e)) = self.world().drive(fut, WAVE_LIMIT) {
            return Err(format!("closing at the end: {e}"));
        }
        let w = self.world.take().expect("life");
        self.note_stats(&w);
        let media: Vec<Vec<u8>> = w.disks.iter().map(|d| d.medium()).collect();
        drop(w);
        let quiet = vec![Faults::default(); self.setup.faults.len()];
        let mut w = World::new(&self.setup.layout, media, &quiet, self.seed);
        let report = w.check();
        if !report.clean() && !self.damage {
            return Err(format!(
                "`tessera check` at the end: {}",
                report.errors.join("; ")
            ));
        }
        self.world = Some(w);
        Ok(())
    }
}
