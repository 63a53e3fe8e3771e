//! Directory pages: the chain of disk records (name, size, kind, parent, table root,
//! running job) that lists a pool's virtual disks.

use super::{
    BlockPtr, HEADER_BYTES, MAX_DISK_BLOCKS, MAX_VSEG, MetaError, PAGE_BYTES, PageHeader, PageKind,
    Reader, Writer, decode_header, new_page, read_name, seal,
};
use uuid::Uuid;

/// Disk records per directory page.
pub const DIR_RECORDS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / DISK_RECORD_BYTES;

/// Encoded size of a disk record.
pub(super) const DISK_RECORD_BYTES: usize = 320;

/// How a disk came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskKind {
    /// Created empty (thin or fully allocated).
    Disk = 0,
    /// A read-only point-in-time copy.
    Snapshot = 1,
    /// A writable copy of a snapshot.
    Clone = 2,
}

/// A background job recorded in a disk's record so that it resumes after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobRecord {
    None,
    /// Split (inflate): copy everything shared, then forget the parent.
    Split {
        cursor: u64,
    },
    /// Decouple: copy what is shared with the parent but not the grandparent.
    Decouple {
        cursor: u64,
    },
}

/// The bdev outside the pool that an external-snapshot clone (SPDK's esnap clone) reads
/// through to where no layer of its own holds a block: by UUID (what open looks for)
/// and name (for the operator; the name it had when the clone was made or re-parented).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExternalBase {
    pub uuid: Uuid,
    pub name: String,
}

/// Widest name an [`ExternalBase`] record holds (its length byte, then the bytes).
pub const EXTERNAL_NAME_WIDTH: usize = 64;

/// Flag bit of a record that names an external base (after the fixed fields). Builds
/// before external snapshots refuse such a record ("unknown flags"), so a pool holding
/// one is never read as if its disks read zeros where they read the external bdev.
const FLAG_EXTERNAL: u8 = 4;

/// Offset of the external base inside a record (just past the fields of format 2).
const EXTERNAL_AT: usize = 224;

/// One virtual disk in the pool's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord {
    pub id: u64,
    pub uuid: Uuid,
    pub name: String,
    pub size_blocks: u64,
    pub kind: DiskKind,
    pub read_only: bool,
    pub thin: bool,
    /// The disk this one shares data with (a snapshot's origin chain, a clone's
    /// snapshot), or 0.
    pub parent: u64,
    /// Generation of the last snapshot taken of this disk (or of its creation as a
    /// clone): extents born at or before it are shared, not writable.
    pub snap_gen: u64,
    pub created_gen: u64,
    pub root_page: u64,
    /// Copy-on-write policy (0 redirect, 1 copy-out).
    pub cow_policy: u8,
    pub job: JobRecord,
    pub created_unix: u64,
    /// The external bdev this disk's blocks fall through to where no layer holds them
    /// (an esnap clone, its snapshots and their clones), or `None`: zeros.
    pub external: Option<ExternalBase>,
}

/// A decoded directory page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryPage {
    /// The transaction that wrote the page.
    pub txn: u64,
    pub records: Vec<DiskRecord>,
    /// Each record's table root ([`BlockPtr::NONE`] for an empty table); `roots[i].page`
    /// is `records[i].root_page`.
    pub roots: Vec<BlockPtr>,
    /// The next page of the chain, or [`BlockPtr::NONE`].
    pub next: BlockPtr,
}

pub(super) fn encode_disk(w: &mut Writer<'_>, d: &DiskRecord, root: &BlockPtr) {
    let start = w.at;
    w.u64(d.id);
    w.bytes(d.uuid.as_bytes());
    w.name(&d.name, 128);
    w.u64(d.size_blocks);
    w.u8(d.kind as u8);
    w.u8(d.read_only as u8
        | (d.thin as u8) << 1
        | if d.external.is_some() {
            FLAG_EXTERNAL
        } else {
            0
        });
    w.u64(d.parent);
    w.u64(d.snap_gen);
    w.u64(d.created_gen);
    root.write(w);
    w.u8(d.cow_policy);
    let (job, cursor) = match d.job {
        JobRecord::None => (0u8, 0u64),
        JobRecord::Split { cursor } => (1, cursor),
        JobRecord::Decouple { cursor } => (2, cursor),
    };
    w.u8(job);
    w.u64(cursor);
    w.u64(d.created_unix);
    debug_assert_eq!(w.at - start, EXTERNAL_AT);
    if let Some(x) = &d.external {
        w.bytes(x.uuid.as_bytes());
        w.name(&x.name, EXTERNAL_NAME_WIDTH);
    }
    w.at = start + DISK_RECORD_BYTES;
}

/// Encodes a directory page holding `disks` (at most [`DIR_RECORDS_PER_PAGE`]) with
/// their table roots, and the pointer to the next page of the chain.
pub fn encode_directory(
    page: u64,
    txn: u64,
    pool: &Uuid,
    next: BlockPtr,
    disks: &[DiskRecord],
    roots: &[BlockPtr],
) -> Vec<u8> {
    debug_assert!(disks.len() <= DIR_RECORDS_PER_PAGE);
    debug_assert_eq!(disks.len(), roots.len());
    let h = PageHeader {
        kind: PageKind::Directory,
        count: disks.len() as u32,
        page,
        txn,
        next,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for (d, root) in disks.iter().zip(roots) {
        debug_assert_eq!(d.root_page, root.page);
        encode_disk(&mut w, d, root);
    }
    seal(&mut b);
    b
}

/// Decodes a directory page: its records with their roots, and the next page of the
/// chain. Every pointer lies inside the metadata area and was written by a transaction
/// not after this page's.
pub fn decode_directory(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    meta_pages: u64,
) -> Result<DirectoryPage, MetaError> {
    let h = decode_header(b, page, pool, PageKind::Directory)?;
    let bad = |field, reason: String| MetaError::Field {
        page,
        field,
        reason,
    };
    if h.count as usize > DIR_RECORDS_PER_PAGE {
        return Err(bad("count", format!("{} records", h.count)));
    }
    let ptr_ok =
        |p: &BlockPtr| p.is_none() || (p.page < meta_pages && p.txn >= 1 && p.txn <= h.txn);
    if !ptr_ok(&h.next) {
        return Err(bad(
            "next",
            format!(
                "pointer to page {} of transaction {} (metadata pages {meta_pages}, this \
                 page's transaction {})",
                h.next.page, h.next.txn, h.txn
            ),
        ));
    }
    let mut out = Vec::new();
    let mut roots = Vec::new();
    for i in 0..h.count as usize {
        let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES + i * DISK_RECORD_BYTES);
        let (rec, root) = read_disk(&mut r, i).map_err(|(field, reason)| bad(field, reason))?;
        if !ptr_ok(&root) {
            return Err(bad(
                "root",
                format!(
                    "record {i}: pointer to page {} of transaction {} (metadata pages \
                     {meta_pages}, this page's transaction {})",
                    root.page, root.txn, h.txn
                ),
            ));
        }
        out.push(rec);
        roots.push(root);
    }
    Ok(DirectoryPage {
        txn: h.txn,
        records: out,
        roots,
        next: h.next,
    })
}

/// Reads disk record `i` (its table root pointer beside it), as [`encode_disk`] wrote
/// it. An error names the field and why.
pub(super) fn read_disk(
    r: &mut Reader<'_>,
    i: usize,
) -> Result<(DiskRecord, BlockPtr), (&'static str, String)> {
    let err = |field: &'static str, reason: String| (field, reason);
    let t = || format!("record {i} truncated");
    let id = r.u64().ok_or_else(|| err("id", t()))?;
    let uuid = r.uuid().ok_or_else(|| err("uuid", t()))?;
    let name = read_name(r, 128)
        .ok_or_else(|| err("name", t()))?
        .map_err(|e| err("name", format!("record {i}: {e}")))?;
    let size_blocks = r.u64().ok_or_else(|| err("size_blocks", t()))?;
    let kind = match r.u8().ok_or_else(|| err("kind", t()))? {
        0 => DiskKind::Disk,
        1 => DiskKind::Snapshot,
        2 => DiskKind::Clone,
        x => return Err(err("kind", format!("record {i}: unknown kind {x}"))),
    };
    let flags = r.u8().ok_or_else(|| err("flags", t()))?;
    let parent = r.u64().ok_or_else(|| err("parent", t()))?;
    let snap_gen = r.u64().ok_or_else(|| err("snap_gen", t()))?;
    let created_gen = r.u64().ok_or_else(|| err("created_gen", t()))?;
    let root = BlockPtr::read(r).ok_or_else(|| err("root", t()))?;
    let cow_policy = r.u8().ok_or_else(|| err("cow_policy", t()))?;
    let job = r.u8().ok_or_else(|| err("job", t()))?;
    let cursor = r.u64().ok_or_else(|| err("job", t()))?;
    let created_unix = r.u64().ok_or_else(|| err("created_unix", t()))?;
    if size_blocks == 0 || size_blocks >= MAX_DISK_BLOCKS {
        return Err(err(
            "size_blocks",
            format!("record {i}: {size_blocks} blocks is not a disk size"),
        ));
    }
    if flags > 3 | FLAG_EXTERNAL {
        return Err(err(
            "flags",
            format!("record {i}: unknown flags {flags:#x}"),
        ));
    }
    if id == 0 || name.is_empty() {
        return Err(err("id", format!("record {i} has no id or name")));
    }
    if cow_policy > 1 {
        return Err(err(
            "cow_policy",
            format!("record {i}: unknown policy {cow_policy}"),
        ));
    }
    let job = match job {
        0 => JobRecord::None,
        1 => JobRecord::Split { cursor },
        2 => JobRecord::Decouple { cursor },
        x => return Err(err("job", format!("record {i}: unknown job {x}"))),
    };
    if job != JobRecord::None && cursor >= MAX_VSEG {
        return Err(err(
            "job",
            format!("record {i}: cursor {cursor} lies beyond any disk"),
        ));
    }
    let external = if flags & FLAG_EXTERNAL != 0 {
        let xu = r.uuid().ok_or_else(|| err("external_uuid", t()))?;
        let xn = read_name(r, EXTERNAL_NAME_WIDTH)
            .ok_or_else(|| err("external_name", t()))?
            .map_err(|e| err("external_name", format!("record {i}: {e}")))?;
        if xu.is_nil() {
            return Err(err(
                "external_uuid",
                format!("record {i}: an external base with the nil UUID"),
            ));
        }
        if xu == uuid {
            return Err(err(
                "external_uuid",
                format!("record {i}: the disk's own UUID {uuid} as its external base"),
            ));
        }
        Some(ExternalBase { uuid: xu, name: xn })
    } else {
        None
    };
    let rec = DiskRecord {
        id,
        uuid,
        name,
        size_blocks,
        kind,
        read_only: flags & 1 != 0,
        thin: flags & 2 != 0,
        parent,
        snap_gen,
        created_gen,
        root_page: root.page,
        cow_policy,
        job,
        created_unix,
        external,
    };
    Ok((rec, root))
}
