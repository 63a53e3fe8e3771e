//! Pool images for the fuzzers and the metadata damage tests: a small real pool built
//! once on a RAM disk ([`base_images`]), an editor that crafts pages and keeps the
//! pointers above them consistent ([`PoolImage`]), and opening or checking an image
//! on manual reactors with a bound on the work ([`open_image`], [`check_image`]).

use crate::bdev::malloc::MallocBdev;
use crate::bdev::{Bdev, Channel, IoBuf};
use crate::reactor::ManualReactors;
use crate::vdisk::check::CheckReport;
use crate::vdisk::meta::directory::{self, DiskRecord};
use crate::vdisk::meta::node;
use crate::vdisk::meta::space_map;
use crate::vdisk::meta::superblock::{self, Superblock};
use crate::vdisk::meta::{BlockPtr, MetaError, PAGE_BYTES, PageKind, SUPERBLOCK_OFFSET};
use crate::vdisk::{Pool, PoolOptions, VdiskError};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// Block size of the image's RAM disk.
pub const BLOCK_BYTES: u32 = 4096;
/// Segment size of the image's pool (the smallest a pool takes).
pub const SEGMENT_BYTES: u64 = 64 << 10;
/// Size of the image's RAM disk: 384 segments.
pub const DISK_BYTES: u64 = 384 * SEGMENT_BYTES;
/// Metadata area of the image's pool: 24 segments, 384 pages: room, within the
/// metadata budget (which counts what each change may cost at most, and a fill's pages
/// until two commits after it), for the builder's batches of 200 and 120 uncommitted
/// extents without a commit forced between them.
pub const METADATA_BYTES: u64 = 24 * SEGMENT_BYTES;
/// [`METADATA_BYTES`] in 4 KiB pages.
pub const METADATA_PAGES: u64 = METADATA_BYTES / 4096;
/// The bytes of the image that hold metadata (label segment and metadata segments):
/// everything a fuzzer or a damage test changes. The rest is data.
pub const META_PREFIX_BYTES: usize = (SEGMENT_BYTES + METADATA_BYTES) as usize;

/// Polls of the reactors an operation on an image may take before it counts as a hang.
const MAX_POLLS: usize = 2_000_000;

/// Drives `fut` and the reactors of `mr` until it finishes; `None` if it did not within
/// [`MAX_POLLS`] (a hang).
pub fn drive<T>(mr: &ManualReactors, fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let cores = mr.cores().len();
    for _ in 0..MAX_POLLS {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Some(v);
        }
        let work: usize = (0..cores).map(|c| mr.poll(c)).sum();
        if work == 0 {
            // Idle: let timers (background commits) come due.
            mr.advance(Duration::from_millis(5));
        }
    }
    None
}

fn ram_disk(name: &str) -> Arc<dyn Bdev> {
    MallocBdev::create(name, DISK_BYTES / BLOCK_BYTES as u64, BLOCK_BYTES, None)
        .expect("a RAM disk for a pool image")
}

/// A RAM disk holding `image` (its metadata prefix; the data area reads as zeros).
fn load_disk(mr: &ManualReactors, image: &[u8]) -> Arc<dyn Bdev> {
    let bdev = ram_disk("image");
    let n = image.len().min(DISK_BYTES as usize) / BLOCK_BYTES as usize * BLOCK_BYTES as usize;
    let data = IoBuf::from_slice(&image[..n]);
    let b = bdev.clone();
    let h = mr.cores().spawn_on(0, move || async move {
        let ch = Channel::get(&b).expect("a channel");
        ch.write(0, data).await
    });
    drive(mr, h)
        .expect("writing a RAM disk finishes")
        .expect("the reactor runs")
        .expect("a RAM disk write succeeds");
    bdev
}

/// The whole content of `bdev` (the first `len` bytes).
fn read_disk(mr: &ManualReactors, bdev: &Arc<dyn Bdev>, len: usize) -> Vec<u8> {
    let b = bdev.clone();
    let h = mr.cores().spawn_on(0, move || async move {
        let ch = Channel::get(&b).expect("a channel");
        ch.read(0, len as u64 / BLOCK_BYTES as u64).await
    });
    let buf = drive(mr, h)
        .expect("reading a RAM disk finishes")
        .expect("the reactor runs")
        .expect("a RAM disk read succeeds");
    buf.to_vec()
}

/// What opening an image gave.
#[derive(Debug)]
pub enum Opened {
    /// Open succeeded; the pool then closed (committing) and the offline check of what
    /// it left is this report.
    Opened {
        disks: Vec<String>,
        after_close: CheckReport,
    },
    /// Open refused.
    Refused(VdiskError),
}

/// Opens the pool of `image` (a pool on one RAM disk) on manual reactors; if it opens,
/// lists its disks, closes it and checks what it left. Panics if anything hangs.
pub fn open_image(image: &[u8]) -> Opened {
    let mr = ManualReactors::new(1).expect("manual reactors");
    let bdev = load_disk(&mr, image);
    let cores = mr.cores().clone();
    let b = bdev.clone();
    let r =
        drive(&mr, async move { Pool::open(&cores, 0, vec![b]).await }).expect("pool open hung");
    let pool = match r {
        Ok(p) => p,
        Err(e) => return Opened::Refused(e),
    };
    let disks = drive(&mr, pool.list())
        .expect("listing the disks hung")
        .expect("listing the disks of an open pool")
        .into_iter()
        .map(|d| d.name)
        .collect();
    drive(&mr, pool.close())
        .expect("closing the pool hung")
        .expect("closing the pool");
    drop(pool);
    let after_close = check_disk(&mr, bdev);
    Opened::Opened { disks, after_close }
}

fn check_disk(mr: &ManualReactors, bdev: Arc<dyn Bdev>) -> CheckReport {
    let h = mr
        .cores()
        .spawn_on(0, move || crate::vdisk::check::check(vec![bdev]));
    drive(mr, h)
        .expect("the check hung")
        .expect("the reactor runs")
}

/// The offline check of the pool of `image`. Panics if it hangs.
pub fn check_image(image: &[u8]) -> CheckReport {
    let mr = ManualReactors::new(1).expect("manual reactors");
    let bdev = load_disk(&mr, image);
    check_disk(&mr, bdev)
}

/// Images of one small pool after each of its last commits, oldest first (each
/// [`META_PREFIX_BYTES`] long): a thin disk `vd0` with more extents than a leaf holds
/// (so its table has an internal node), a snapshot `snap`, a clone `work` with writes
/// of its own, an empty disk `empty`. Built once per process.
pub fn base_images() -> &'static [Vec<u8>] {
    static IMAGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    IMAGES.get_or_init(build_images)
}

/// The newest of [`base_images`].
pub fn base_image() -> &'static [u8] {
    base_images().last().expect("images")
}

fn build_images() -> Vec<Vec<u8>> {
    let mr = ManualReactors::new(1).expect("manual reactors");
    let bdev = ram_disk("base");
    let cores = mr.cores().clone();
    let mut opts = PoolOptions::new("fuzz");
    opts.segment_bytes = SEGMENT_BYTES;
    opts.metadata_bytes = Some(METADATA_BYTES);
    let b = bdev.clone();
    let pool = drive(&mr, async move {
        Pool::create(&cores, 0, vec![b], None, opts).await
    })
    .expect("pool create hung")
    .expect("pool create");
    let run = |fut: std::pin::Pin<Box<dyn Future<Output = Result<(), VdiskError>> + Send>>| {
        drive(&mr, fut)
            .expect("a pool operation hung")
            .expect("a pool operation");
    };
    let seg_blocks = SEGMENT_BYTES / BLOCK_BYTES as u64;
    let write = |disk: &str, blocks: Vec<u64>, v: u8| {
        let p = pool.clone();
        let disk = disk.to_string();
        let h = mr.cores().spawn_on(0, move || async move {
            let d: Arc<dyn Bdev> = p.disk(&disk).await.expect("the disk");
            let ch = Channel::get(&d).expect("a channel");
            for b in blocks {
                let mut buf = IoBuf::new(BLOCK_BYTES as usize);
                buf.fill(v);
                ch.write(b, buf).await.expect("a write");
            }
        });
        drive(&mr, h)
            .expect("writes hung")
            .expect("the reactor runs");
    };
    let mut images = Vec::new();
    let mut keep = |mr: &ManualReactors| {
        images.push(read_disk(mr, &bdev, META_PREFIX_BYTES));
    };
    let p = pool.clone();
    run(Box::pin(async move {
        p.create_disk("vd0", 400 * SEGMENT_BYTES, true)
            .await
            .map(drop)
    }));
    // Every other segment: 200 extents, more than a leaf holds, so the table grows an
    // internal node; then 120 more in a second pass.
    write("vd0", (0..200).map(|s| 2 * s * seg_blocks).collect(), 1);
    let p = pool.clone();
    run(Box::pin(async move { p.commit().await }));
    keep(&mr);
    write(
        "vd0",
        (0..120).map(|s| (2 * s + 1) * seg_blocks + 3).collect(),
        2,
    );
    let p = pool.clone();
    run(Box::pin(async move {
        p.snapshot(vec![("vd0".into(), "snap".into())], Duration::from_secs(5))
            .await
            .map(drop)
    }));
    // A snapshot only appends to the log: a checkpoint, so that each image kept is a
    // commit of its own.
    let p = pool.clone();
    run(Box::pin(async move { p.commit().await }));
    keep(&mr);
    let p = pool.clone();
    run(Box::pin(async move {
        p.clone_disk("snap", "work").await.map(drop)
    }));
    write("work", vec![1, seg_blocks * 4 + 2], 3);
    write("vd0", vec![5], 4);
    let p = pool.clone();
    run(Box::pin(async move {
        p.create_disk("empty", 4 * SEGMENT_BYTES, true)
            .await
            .map(drop)
    }));
    let p = pool.clone();
    run(Box::pin(async move { p.commit().await }));
    keep(&mr);
    let p = pool.clone();
    run(Box::pin(async move { p.close().await }));
    keep(&mr);
    images
}

/// Where a pointer to a page sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    /// The superblock's directory pointer.
    SuperDirectory,
    /// The superblock's space-map index pointer `j`.
    SuperSmIndex(usize),
    /// A directory page's next pointer.
    DirNext(u64),
    /// The root pointer of record `k` of a directory page.
    DirRoot(u64, usize),
    /// Child `i` of an internal node.
    Child(u64, usize),
    /// Entry `k` of a space-map index page.
    SmIndexEntry(u64, usize),
}

/// A pool image (the metadata prefix of a pool on one RAM disk) with the map of its
/// pages and of the pointers to them, for crafting damage: [`PoolImage::replace_page`]
/// writes a page and makes every pointer above it (up to the superblock) match it, so
/// that the page's own fields are what open and check have to judge.
#[derive(Clone)]
pub struct PoolImage {
    pub bytes: Vec<u8>,
    /// The superblock in force.
    pub sb: Superblock,
    /// Its slot: 0 (A) or 1 (B).
    pub slot: usize,
    /// Every page the superblock reaches, with its kind.
    pub kinds: BTreeMap<u64, PageKind>,
    parents: HashMap<u64, Vec<Parent>>,
}

impl PoolImage {
    /// Maps the pages of `bytes` (which must be a healthy image).
    pub fn parse(bytes: &[u8]) -> Result<PoolImage, MetaError> {
        let at = SUPERBLOCK_OFFSET as usize;
        let picked = superblock::pick(
            &bytes[at..at + PAGE_BYTES],
            &bytes[at + PAGE_BYTES..at + 2 * PAGE_BYTES],
            None,
        )?;
        let mut img = PoolImage {
            bytes: bytes.to_vec(),
            slot: if picked.slot == "A" { 0 } else { 1 },
            sb: picked.sb,
            kinds: BTreeMap::new(),
            parents: HashMap::new(),
        };
        let sb = img.sb.clone();
        let pool = sb.pool_uuid;
        let mut ptr = sb.directory;
        let mut parent = Parent::SuperDirectory;
        let mut roots = Vec::new();
        while !ptr.is_none() {
            img.add(ptr.page, PageKind::Directory, parent);
            let d =
                directory::decode_directory(img.page(ptr.page), ptr.page, &pool, sb.meta_pages)?;
            for (k, r) in d.roots.iter().enumerate() {
                if !r.is_none() {
                    roots.push((r.page, Parent::DirRoot(ptr.page, k)));
                }
            }
            parent = Parent::DirNext(ptr.page);
            ptr = d.next;
        }
        let mut todo = roots;
        while let Some((p, parent)) = todo.pop() {
            let seen = img.kinds.contains_key(&p);
            let b = img.page(p).to_vec();
            if b[4] == PageKind::Internal as u8 {
                img.add(p, PageKind::Internal, parent);
                if !seen {
                    let entries = node::decode_internal(&b, p, &pool, sb.meta_pages)?;
                    for (i, (_, c)) in entries.iter().enumerate() {
                        todo.push((c.page, Parent::Child(p, i)));
                    }
                }
            } else {
                img.add(p, PageKind::Leaf, parent);
            }
        }
        for (j, ip) in sb.sm_index.iter().enumerate() {
            img.add(ip.page, PageKind::SpaceMapIndex, Parent::SuperSmIndex(j));
            let entries = space_map::decode_sm_index(
                img.page(ip.page),
                ip.page,
                &pool,
                j as u64,
                sb.sm_pages,
            )?;
            for (k, e) in entries.iter().enumerate() {
                img.add(e.page, PageKind::SpaceMap, Parent::SmIndexEntry(ip.page, k));
            }
        }
        Ok(img)
    }

    fn add(&mut self, page: u64, kind: PageKind, parent: Parent) {
        self.kinds.insert(page, kind);
        let ps = self.parents.entry(page).or_default();
        if !ps.contains(&parent) {
            ps.push(parent);
        }
    }

    /// Byte offset of metadata page `page` in the image.
    pub fn offset(&self, page: u64) -> usize {
        (self.sb.meta_first_byte + page * PAGE_BYTES as u64) as usize
    }

    /// Metadata page `page`.
    pub fn page(&self, page: u64) -> &[u8] {
        let at = self.offset(page);
        &self.bytes[at..at + PAGE_BYTES]
    }

    /// Overwrites metadata page `page` with `b` and nothing else (damage).
    pub fn set_page(&mut self, page: u64, b: &[u8]) {
        let at = self.offset(page);
        self.bytes[at..at + PAGE_BYTES].copy_from_slice(&b[..PAGE_BYTES]);
    }

    /// Byte offset of a superblock slot (0: A, 1: B).
    pub fn slot_offset(slot: usize) -> usize {
        SUPERBLOCK_OFFSET as usize + slot * PAGE_BYTES
    }

    /// Writes `sb` into its slot of the image (by its transaction's parity).
    pub fn set_superblock(&mut self, sb: &Superblock) {
        let at = Self::slot_offset((sb.txn % 2) as usize);
        self.bytes[at..at + PAGE_BYTES].copy_from_slice(&sb.encode());
    }

    /// Pages of a kind the superblock reaches.
    pub fn pages(&self, kind: PageKind) -> Vec<u64> {
        self.kinds
            .iter()
            .filter(|(_, k)| **k == kind)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Where the pointers to `page` sit.
    pub fn parents(&self, page: u64) -> &[Parent] {
        self.parents.get(&page).map_or(&[], |v| v)
    }

    /// Writes `b` as page `page` and updates every pointer to it (and those above) so
    /// that they verify it: a crafted page that only its own fields can give away.
    pub fn replace_page(&mut self, page: u64, b: &[u8]) {
        self.set_page(page, b);
        self.repoint(page);
    }

    /// Makes every pointer to `page` (and, recursively, to the pages holding them, up to
    /// the superblock in force) match the page's current bytes. A parent that does not
    /// decode any more is left alone.
    pub fn repoint(&mut self, page: u64) {
        self.repoint_depth(page, 0);
    }

    fn repoint_depth(&mut self, page: u64, depth: usize) {
        if depth > 64 {
            return;
        }
        let now = BlockPtr::of(self.page(page));
        let pool = self.sb.pool_uuid;
        let mp = self.sb.meta_pages;
        for parent in self.parents(page).to_vec() {
            let changed = match parent {
                Parent::SuperDirectory => {
                    self.sb.directory = now;
                    let sb = self.sb.clone();
                    self.set_superblock(&sb);
                    None
                }
                Parent::SuperSmIndex(j) => {
                    self.sb.sm_index[j] = now;
                    let sb = self.sb.clone();
                    self.set_superblock(&sb);
                    None
                }
                Parent::DirNext(q) | Parent::DirRoot(q, _) => {
                    let Ok(mut d) = directory::decode_directory(self.page(q), q, &pool, mp) else {
                        continue;
                    };
                    match parent {
                        Parent::DirNext(_) => d.next = now,
                        Parent::DirRoot(_, k) => {
                            d.roots[k] = now;
                            d.records[k].root_page = now.page;
                        }
                        _ => unreachable!(),
                    }
                    Some((q, encode_dir(q, &pool, &d)))
                }
                Parent::Child(q, i) => {
                    let txn = BlockPtr::of(self.page(q)).txn;
                    let Ok(mut entries) = node::decode_internal(self.page(q), q, &pool, mp) else {
                        continue;
                    };
                    entries[i].1 = now;
                    Some((q, node::encode_internal(q, txn, &pool, &entries)))
                }
                Parent::SmIndexEntry(q, k) => {
                    let b = self.page(q);
                    let txn = BlockPtr::of(b).txn;
                    let j = u64::from_le_bytes(b[40..48].try_into().expect("8 bytes"));
                    let Ok(mut entries) =
                        space_map::decode_sm_index(b, q, &pool, j, self.sb.sm_pages)
                    else {
                        continue;
                    };
                    entries[k] = now;
                    Some((q, space_map::encode_sm_index(q, txn, &pool, j, &entries)))
                }
            };
            if let Some((q, b)) = changed {
                self.set_page(q, &b);
                self.repoint_depth(q, depth + 1);
            }
        }
    }
}

/// Re-encodes a decoded directory page as page `page`.
pub fn encode_dir(page: u64, pool: &uuid::Uuid, d: &directory::DirectoryPage) -> Vec<u8> {
    directory::encode_directory(page, d.txn, pool, d.next, &d.records, &d.roots)
}

/// The records of every directory page of `img`, with the page holding each.
pub fn records(img: &PoolImage) -> Vec<(u64, DiskRecord)> {
    img.pages(PageKind::Directory)
        .into_iter()
        .flat_map(|p| {
            directory::decode_directory(img.page(p), p, &img.sb.pool_uuid, img.sb.meta_pages)
                .map(|d| d.records)
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (p, r))
        })
        .collect()
}
