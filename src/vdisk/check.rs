//! The offline consistency check behind `tessera check` (like `thin_check`): reads every
//! label, superblock, directory, table, space-map index and space-map page of a closed
//! pool and reports every problem it finds with its location, instead of stopping at
//! the first.
//!
//! The walk is `scan.rs`, the one open uses: what the checker reports as an error, open
//! refuses (but for a damaged space map, which open rebuilds from the tables). It
//! verifies checksums, page self-addresses, pools and kinds; every pointer against the
//! page it finds (the transaction that wrote it and its checksum: stale and misdirected
//! pages); that no page serves two purposes; key order and that extents stay inside
//! their node's span; that every segment a table references exists and is not reserved;
//! that each segment is referenced exactly as often as the space map says (once per
//! distinct leaf); and that no segment has two owners — a segment that a disk may write
//! (its writable top layer) is referenced by that one leaf only. The intent log after
//! the checkpoint is read to its end: a damaged page followed by a later append is an
//! error (`intent::read_log`).

use super::load::read_label;
use super::meta::label::Label;
use super::scan::{self, Mode};
use crate::bdev::Bdev;
use serde::Serialize;
use std::sync::Arc;

/// What the check found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub pool: String,
    pub txn: u64,
    pub disks: usize,
    pub node_pages: usize,
    pub extents: usize,
    pub segments_referenced: usize,
    /// Records of the intent log after the checkpoint (what open replays).
    pub log_records: u64,
    /// Every problem, each naming where it is.
    pub errors: Vec<String>,
    /// Observations that are not corruption (a torn superblock slot after a crash).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True when no error was found.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the pool held by `bdevs` (its containers and metadata bdev). Must run on a
/// reactor. The pool must not be open.
pub async fn check(bdevs: Vec<Arc<dyn Bdev>>) -> CheckReport {
    let mut r = CheckReport::default();
    let mut labelled: Vec<(Arc<dyn Bdev>, Label)> = Vec::new();
    for b in &bdevs {
        match read_label(b).await {
            Ok(Some(l)) => labelled.push((b.clone(), l)),
            Ok(None) => r
                .errors
                .push(format!("bdev `{}`: no tessera label at byte 0", b.name())),
            Err(e) => r.errors.push(format!("bdev `{}`: {e}", b.name())),
        }
    }
    let root = match scan::read_root(&labelled, Mode::Check).await {
        Ok(root) => root,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    r.errors.extend(root.errors.iter().map(|e| e.to_string()));
    r.notes.extend(root.notes.iter().cloned());
    r.pool = root.sb.pool_name.clone();
    r.txn = root.sb.txn;
    let found = scan::scan(&root.meta_bdev, &root.sb, Mode::Check).await;
    r.disks = found.records.len();
    r.node_pages = found.nodes.len();
    r.extents = found.extents;
    r.segments_referenced = found.counts.referenced();
    r.errors.extend(found.errors.iter().map(|e| e.to_string()));
    r.errors
        .extend(found.space_map_errors.iter().map(|e| e.to_string()));
    r.notes.extend(found.notes);
    // The intent log after the checkpoint: readable to its end, or damaged.
    if let Some(area) = &root.sb.log {
        match super::intent::read_log(
            &root.meta_bdev,
            root.sb.meta_first_byte,
            &root.sb.pool_uuid,
            root.sb.total_segments(),
            area,
        )
        .await
        {
            Ok(read) => {
                for (place, why) in &read.repaired {
                    r.notes.push(format!(
                        "log page {place} is damaged ({why}); its copy in the log's mirror \
                         is intact (open replays from it)"
                    ));
                }
                let pages = read.pages;
                let records = pages.records_from(area.replay_lsn);
                r.log_records = records;
                if records > 0 {
                    r.notes.push(format!(
                        "the log holds {records} records after the checkpoint in {} pages \
                         (open replays them)",
                        pages.len()
                    ));
                }
            }
            Err(e) => r.errors.push(e.to_string()),
        }
    }
    r
}
