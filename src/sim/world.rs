//! One life of the simulated machine: reactors on a manual clock, the simulated disks,
//! the pool on them, and the means to drive both from the simulator's one thread.
//! A power loss ends a life; the next one starts from what the disks' media kept.

use super::storage::{DiskStats, Faults, SimDisk};
use crate::bdev::{Bdev, BdevIo, Channel, IoSink, IoStatus};
use crate::reactor::ManualReactors;
use crate::vdisk::{Pool, PoolOptions, VDisk, VdiskError};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How the pool's disks are laid out; kept across lives.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Block size of the data containers (and of the pool's disks).
    pub block_size: u32,
    /// Block size of a separate metadata bdev: 512 bytes, so that a power loss can tear
    /// a metadata page.
    pub meta_block_size: u32,
    /// (name, uuid) of each data container, then of the metadata bdev if separate.
    pub names: Vec<(String, uuid::Uuid)>,
    pub separate_metadata: bool,
    pub opts: PoolOptions,
    pub cores: usize,
    pub ctl_core: usize,
}

/// Completions of the workload's requests, in the order they arrived.
#[derive(Default)]
pub struct Completions {
    pub done: RefCell<Vec<(u64, BdevIo, IoStatus)>>,
}

impl IoSink for Completions {
    fn io_done(&self, io: BdevIo, status: IoStatus) {
        self.done.borrow_mut().push((io.tag, io, status));
    }
}

/// A pool's separate metadata bdev, if it has one.
pub type MetaBdev = Option<Arc<dyn Bdev>>;

/// A future the simulator polls by hand.
pub type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One life of the machine.
pub struct World {
    pub mr: ManualReactors,
    /// Data containers, then the metadata bdev if separate.
    pub disks: Vec<Arc<SimDisk>>,
    pub pool: Option<Pool>,
    pub sink: Rc<Completions>,
    /// The pool's disks as bdevs, by name.
    pub vdisks: BTreeMap<String, Arc<VDisk>>,
    /// The golden image external-snapshot clones read through to (`esnap.rs`): outside
    /// the pool, never written, the same in every life ([`golden_tag`]).
    pub golden: Arc<SimDisk>,
    pub rng: fastrand::Rng,
    /// The channels the workload opened, by (core, bdev id): a channel lives while
    /// someone holds it, as a front end's connection holds its own.
    channels: RefCell<BTreeMap<(usize, u64), Channel>>,
}

impl Drop for World {
    /// Channels go on their own cores, while the reactors still exist.
    fn drop(&mut self) {
        let chans = std::mem::take(&mut *self.channels.borrow_mut());
        for ((core, _), ch) in chans {
            self.mr.enter(core, || drop(ch));
        }
        let disks: Vec<&Arc<SimDisk>> = self.disks.iter().chain([&self.golden]).collect();
        super::storage::drop_queued(&disks, &|core, f| self.mr.enter(core, f));
        self.vdisks.clear();
        self.pool = None;
    }
}

/// Segments of the golden image.
pub const GOLDEN_SEGMENTS: u64 = 3;

/// The tag block `b` of the golden image holds: far above the workload's tags.
pub fn golden_tag(b: u64) -> u64 {
    (1 << 62) + b
}

/// The golden image of `layout`: block `b` holds [`golden_tag`]`(b)`; its UUID follows
/// the first container's, so it is the same bdev in every life.
fn golden(layout: &Layout) -> Arc<SimDisk> {
    let bs = layout.block_size as usize;
    let blocks = GOLDEN_SEGMENTS * layout.opts.segment_bytes / bs as u64;
    let mut medium = vec![0u8; blocks as usize * bs];
    for (b, chunk) in medium.chunks_mut(bs).enumerate() {
        super::model::pattern(golden_tag(b as u64), chunk);
    }
    let u = uuid::Uuid::from_u128(layout.names[0].1.as_u128() ^ 0x0060_1de2);
    SimDisk::new("golden", u, layout.block_size, medium, Faults::default(), 7)
        .expect("golden image geometry")
}

/// Whether a future finished, within the simulated time allowed.
pub enum Driven<T> {
    Done(T),
    /// Still pending after the time limit.
    Hung,
}

impl World {
    /// A new life whose disks hold `media` (one per name of `layout`).
    pub fn new(layout: &Layout, media: Vec<Vec<u8>>, faults: &[Faults], seed: u64) -> World {
        let mr = ManualReactors::new(layout.cores).expect("manual reactors");
        let disks = layout
            .names
            .iter()
            .zip(media)
            .zip(faults)
            .enumerate()
            .map(|(i, (((name, uuid), medium), f))| {
                let meta = layout.separate_metadata && i + 1 == layout.names.len();
                SimDisk::new(
                    name,
                    *uuid,
                    if meta {
                        layout.meta_block_size
                    } else {
                        layout.block_size
                    },
                    medium,
                    f.clone(),
                    seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
                .expect("sim disk geometry")
            })
            .collect();
        World {
            mr,
            disks,
            pool: None,
            sink: Rc::new(Completions::default()),
            vdisks: BTreeMap::new(),
            golden: golden(layout),
            rng: fastrand::Rng::with_seed(seed),
            channels: RefCell::new(BTreeMap::new()),
        }
    }

    /// The disks as bdevs: containers and, if separate, the metadata bdev.
    pub fn bdevs(&self, layout: &Layout) -> (Vec<Arc<dyn Bdev>>, MetaBdev) {
        let mut all: Vec<Arc<dyn Bdev>> = self
            .disks
            .iter()
            .map(|d| d.clone() as Arc<dyn Bdev>)
            .collect();
        let meta = layout
            .separate_metadata
            .then(|| all.pop().expect("metadata disk"));
        (all, meta)
    }

    /// Polls every core once, in a random order; returns the work done.
    pub fn step(&mut self) -> usize {
        let n = self.mr.cores().len();
        let mut order: Vec<usize> = (0..n).collect();
        self.rng.shuffle(&mut order);
        order.into_iter().map(|c| self.mr.poll(c)).sum()
    }

    /// Moves the manual clock on: a little while there is work, more when idle (so
    /// that timers — background commits, time limits — come due).
    pub fn tick(&mut self, worked: bool) {
        let d = if worked {
            Duration::from_micros(self.rng.u64(0..=20))
        } else {
            Duration::from_micros(self.rng.u64(100..=50_000))
        };
        self.mr.advance(d);
    }

    /// Simulated time now.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.mr.cores().clock().now().0)
    }

    /// Drives `fut` (and the reactors) until it finishes or `limit` of simulated time
    /// passed.
    pub fn drive<T>(&mut self, mut fut: Pending<T>, limit: Duration) -> Driven<T> {
        let start = self.now();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Driven::Done(v);
            }
            let work = self.step();
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Driven::Done(v);
            }
            self.tick(work > 0);
            if self.now() - start > limit {
                return Driven::Hung;
            }
        }
    }

    /// Creates the pool (first life).
    pub fn create_pool(&mut self, layout: &Layout) -> Result<(), VdiskError> {
        let (containers, meta) = self.bdevs(layout);
        let cores = self.mr.cores().clone();
        let opts = layout.opts.clone();
        let ctl = layout.ctl_core;
        let fut: Pending<Result<Pool, VdiskError>> =
            Box::pin(async move { Pool::create(&cores, ctl, containers, meta, opts).await });
        match self.drive(fut, Duration::from_secs(60)) {
            Driven::Done(r) => {
                self.pool = Some(r?);
                Ok(())
            }
            Driven::Hung => Err(VdiskError::Busy("pool create hung".into())),
        }
    }

    /// Opens the pool from the disks (a later life).
    pub fn open_pool(&mut self, layout: &Layout) -> Result<(), VdiskError> {
        let bdevs: Vec<Arc<dyn Bdev>> = self
            .disks
            .iter()
            .map(|d| d.clone() as Arc<dyn Bdev>)
            .collect();
        let cores = self.mr.cores().clone();
        let ctl = layout.ctl_core;
        let fut: Pending<Result<Pool, VdiskError>> =
            Box::pin(async move { Pool::open(&cores, ctl, bdevs).await });
        match self.drive(fut, Duration::from_secs(60)) {
            Driven::Done(r) => {
                self.pool = Some(r?);
                self.attach_golden()
            }
            Driven::Hung => Err(VdiskError::Busy("pool open hung".into())),
        }
    }

    /// Hands the opened pool the golden image, as the target does when its bdev is
    /// there: its external-snapshot clones stop being degraded.
    fn attach_golden(&mut self) -> Result<(), VdiskError> {
        let Some(pool) = self.pool.clone() else {
            return Ok(());
        };
        let g: Arc<dyn Bdev> = self.golden.clone();
        let fut: Pending<Result<Vec<String>, VdiskError>> =
            Box::pin(async move { pool.attach_external(g).await });
        match self.drive(fut, Duration::from_secs(60)) {
            Driven::Done(r) => r.map(|_| ()),
            Driven::Hung => Err(VdiskError::Busy("attaching the golden image hung".into())),
        }
    }

    /// The offline check of the disks (the pool must not be open).
    pub fn check(&mut self) -> crate::vdisk::check::CheckReport {
        let bdevs: Vec<Arc<dyn Bdev>> = self
            .disks
            .iter()
            .map(|d| d.clone() as Arc<dyn Bdev>)
            .collect();
        let core = 0;
        let cores = self.mr.cores().clone();
        let fut: Pending<_> = Box::pin(async move {
            cores
                .spawn_on(core, move || crate::vdisk::check::check(bdevs))
                .await
        });
        match self.drive(fut, Duration::from_secs(60)) {
            Driven::Done(Ok(r)) => r,
            Driven::Done(Err(_)) | Driven::Hung => crate::vdisk::check::CheckReport {
                errors: vec!["the check did not finish".into()],
                ..Default::default()
            },
        }
    }

    /// Submits `io` to `bdev` on `core`; its completion lands in [`World::sink`] with `tag`.
    pub fn submit(&self, core: usize, bdev: &Arc<dyn Bdev>, io: BdevIo, tag: u64) {
        let sink: Rc<dyn IoSink> = self.sink.clone();
        let key = (core, bdev.id());
        self.mr.enter(core, || {
            let mut chans = self.channels.borrow_mut();
            let ch = match chans.get(&key) {
                Some(c) => c.clone(),
                None => match Channel::get(bdev) {
                    Ok(c) => {
                        chans.insert(key, c.clone());
                        c
                    }
                    Err(_) => return sink.io_done(io, IoStatus::InternalError),
                },
            };
            drop(chans);
            ch.submit(io.on_complete(sink, tag));
        });
    }

    /// Closes the workload's channels to `bdev` (a deleted disk).
    pub fn forget(&self, bdev_id: u64) {
        let gone: Vec<((usize, u64), Channel)> = {
            let mut chans = self.channels.borrow_mut();
            let keys: Vec<_> = chans.keys().filter(|k| k.1 == bdev_id).copied().collect();
            keys.into_iter()
                .filter_map(|k| chans.remove(&k).map(|c| (k, c)))
                .collect()
        };
        for ((core, _), ch) in gone {
            self.mr.enter(core, || drop(ch));
        }
    }

    /// What the simulated disks did, summed.
    pub fn stats(&self) -> DiskStats {
        let mut s = DiskStats::default();
        for d in &self.disks {
            let x = d.stats();
            s.reads += x.reads;
            s.writes += x.writes;
            s.flushes += x.flushes;
            s.read_errors += x.read_errors;
            s.write_errors += x.write_errors;
            s.misdirected += x.misdirected;
            s.dead_refusals += x.dead_refusals;
        }
        s
    }
}
