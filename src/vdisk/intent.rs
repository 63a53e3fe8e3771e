//! The intent log in memory: what the controller appends to it, when, and how open
//! replays it (the on-disk format is `meta/log.rs`).
//!
//! **Why.** A commit (a checkpoint, `commit.rs`) writes every table page changed since
//! the last one: on a big disk written at random, thousands of pages. A flush or a
//! snapshot needs only the changes made since the last durable point to be durable, so
//! they append those as records to a ring of log pages — one write with force-unit-access
//! to the ring and one to its mirror, after a flush of the data containers that have a
//! volatile cache — and
//! checkpoints run in the background: when the records past the last one grow with
//! what the pool maps ([`IntentLog::wants_checkpoint`]), every few seconds,
//! and at close. Open loads the last checkpoint and replays the log after it.
//!
//! **What is logged.** Every table edit (`Controller::set_extents`) as a splice record
//! holding the new extents; every fill changed since the last append as a fill record
//! (its segment's bits, read after the data they describe was written, and written after
//! the data containers were flushed), logged every few milliseconds and before each
//! append, its written leaf copied as it is logged so that the next checkpoint rewrites
//! it; every other change to the directory (disk records,
//! new disks sharing an existing table, deleted disks, the pool's counters) as found by
//! comparing the directory with a mirror of what the log says at each change
//! (`CtlState::changed`). A change no record describes (a new disk with a table of its
//! own, a table replaced other than by a splice, a splice too big for a page) makes the
//! next durable point a checkpoint instead: correct, only slower.
//!
//! **Invariants.** Records are appended in the order the changes were made; appends are
//! packed one at a time and may be written side by side, but an append is acknowledged
//! only once it and every append packed before it are durable; a checkpoint
//! captured at LSN `c` holds the effect of every record below `c` and names `c` in its
//! superblock; the ring never overwrites a page at or after the replay start of the
//! superblock in force; open appends from the end of the log it replayed, after erasing
//! every page past that end that carries a sequence number at or beyond it (what is
//! left of an append the crash tore), so no page written before the crash is ever taken
//! for a new one. The replayed changes stay in the log until the next checkpoint, which
//! runs in the background like any other: open writes nothing unless a torn append left
//! pages to erase.

use super::controller::{Controller, CtlState};
use super::map::{DirtyFill, Extent, Fills};
use super::meta::directory::DiskRecord;
use super::meta::log::{self, LogRecord};
use super::meta::superblock::LogArea;
use super::meta::{MetaError, NO_PAGE, PAGE_BYTES};
use super::table::{self, Node};
use crate::bdev::{Bdev, IoStatus};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::task::{Poll, Waker};

/// Most pages of a log (64 MiB). A checkpoint is asked for long before the ring is full
/// ([`IntentLog::wants_checkpoint`]): at half of it only on pools that map more than
/// ~4 TiB.
pub const MAX_LOG_PAGES: u64 = 16384;
/// Pages of records the log may hold past its last checkpoint whatever the pool maps
/// (8 MiB: ~550 K packed records, ~0.25 s of replay at open).
const REPLAY_FLOOR_PAGES: u64 = 2048;
/// Past the floor, a page of records per this many segments in use: about half a
/// record per segment (a page holds ~270 packed records), ~0.2 s of replay per TiB
/// mapped in 1 MiB segments.
///
/// **Why it grows with the pool.** Under scattered writes every leaf of the tables is
/// changed between two checkpoints, and a checkpoint writes every changed leaf: its
/// cost follows the tables' size. Checkpointing every so many records made the
/// checkpoints' share of each record grow with the tables; letting the records between
/// two checkpoints grow with what the pool maps keeps it constant, and keeps the replay
/// at open within a time per TiB mapped.
const SEGMENTS_PER_REPLAY_PAGE: u64 = 512;
/// A log takes at most this fraction of the node area.
const LOG_SHARE: u64 = 16;
/// Records waiting beyond this start an append without a flush asking for one: what a
/// flush or a snapshot has to write stays small under a stream of mapping changes.
const APPEND_AHEAD_BYTES: usize = 16 << 10;
/// A checkpoint runs at least this often while changes wait (bounds the replay).
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Pages of records a log of `ring_pages` holds past its last checkpoint before it asks
/// for the next, in a pool with `segments_in_use` segments in use (see
/// [`SEGMENTS_PER_REPLAY_PAGE`]): at most half the ring.
pub fn replay_bound(ring_pages: u64, segments_in_use: u64) -> u64 {
    let bound = REPLAY_FLOOR_PAGES.max(segments_in_use / SEGMENTS_PER_REPLAY_PAGE);
    bound.min(ring_pages / 2).max(1)
}

/// Pages of the log of a pool whose node area has `node_pages` pages, or 0 for none.
pub fn log_pages_for(node_pages: u64) -> u64 {
    let n = (node_pages / LOG_SHARE).min(MAX_LOG_PAGES);
    if n < super::meta::superblock::MIN_LOG_PAGES {
        0
    } else {
        n
    }
}

/// A disk as the log last described it.
#[derive(Clone)]
struct Mirrored {
    rec: DiskRecord,
    root: usize,
}

fn root_key(root: &Option<Arc<Node>>) -> usize {
    root.as_ref().map_or(0, |r| Arc::as_ptr(r) as usize)
}

fn masked(rec: &DiskRecord) -> DiskRecord {
    DiskRecord {
        root_page: NO_PAGE,
        ..rec.clone()
    }
}

/// The controller's log state.
pub(crate) struct IntentLog {
    pub area: LogArea,
    /// The sequence number of the next page appended.
    pub next_seq: u64,
    /// The LSN of the next record pushed.
    pub next_lsn: u64,
    /// Records not yet appended, in groups (one per change, kept on one page); the
    /// first has LSN `pending_lsn`.
    pending: log::RecordGroups,
    pending_lsn: u64,
    /// The replay start of the superblock in force: pages from here on are not reused.
    pub durable_seq: u64,
    /// `CtlState::changes` when something changed that no record describes: durable
    /// points checkpoint until a checkpoint that captured it is durable.
    pub unloggable_at: Option<u64>,
    /// `CtlState::changes` covered by the last durable append.
    pub durable_changes: u64,
    mirror: BTreeMap<u64, Mirrored>,
    counters: (u64, u64),
    /// Records the open replayed.
    pub replayed_at_open: u64,
    /// When the last checkpoint was captured.
    pub last_checkpoint: crate::reactor::Nanos,
    /// An append started by [`IntentLog::wants_append`] is on its way.
    ahead_scheduled: bool,
    /// Group commit of appends: one packs at a time (see [`Controller::make_durable`]);
    /// those packed are written side by side and acknowledged in order.
    packing: bool,
    in_flight: VecDeque<InFlight>,
    /// Durable-point requests made; the last one an append packed after covers.
    requested: u64,
    packed: u64,
    /// The last request acknowledged (its append and every one before it are done),
    /// and how the last append acknowledged ended.
    done: u64,
    last: Option<IoStatus>,
    waiters: Vec<Waker>,
}

/// The most appends written side by side.
const MAX_APPENDS_IN_FLIGHT: usize = 4;

/// An append packed and not yet acknowledged.
struct InFlight {
    /// The sequence number of its first page (of the next page, if it has none).
    first_seq: u64,
    /// The last durable-point request made before it packed: it covers that one and
    /// every one before.
    covers: u64,
    /// `CtlState::changes` when it packed.
    changes: u64,
    /// It packed while the one before it was still in flight: it is durable only if
    /// that one is.
    behind: bool,
    /// How its own writes ended, once they did.
    ended: Option<Result<(), IoStatus>>,
}

impl IntentLog {
    /// The log of a pool just opened, `area` as the superblock in force has it (or
    /// fresh), appending from `next_seq` (see the invariants) once a checkpoint made
    /// that position the replay start.
    pub fn new(area: LogArea, next_seq: u64, next_lsn: u64, st: &CtlState) -> IntentLog {
        let mut l = IntentLog {
            area,
            next_seq,
            next_lsn,
            pending: Default::default(),
            pending_lsn: next_lsn,
            durable_seq: area.replay_seq,
            unloggable_at: None,
            durable_changes: 0,
            mirror: BTreeMap::new(),
            counters: (st.generation, st.next_disk_id),
            replayed_at_open: 0,
            last_checkpoint: crate::reactor::now(),
            ahead_scheduled: false,
            packing: false,
            in_flight: VecDeque::new(),
            requested: 0,
            packed: 0,
            done: 0,
            last: None,
            waiters: Vec::new(),
        };
        for d in st.disks.values() {
            l.mirror.insert(
                d.rec.id,
                Mirrored {
                    rec: masked(&d.rec),
                    root: root_key(&d.root),
                },
            );
        }
        l
    }

    /// Appends the records of one change (one page at most, else the change is
    /// unloggable).
    fn push_group(&mut self, changes: u64, group: Vec<Vec<u8>>) {
        if group.is_empty() {
            return;
        }
        if !log::group_fits(&group) {
            self.unloggable(changes, "a change whose records exceed a log page");
            return;
        }
        self.next_lsn += group.len() as u64;
        self.pending.push(&group);
    }

    /// Logs the fill of `seg` holding `words`, encoded in place.
    fn push_fill(&mut self, seg: u64, words: [u64; 4]) {
        let packed = self.area.packed;
        self.next_lsn += 1;
        self.pending
            .push_one(|b| log::encode_fill_into(b, seg, words, packed));
    }

    fn unloggable(&mut self, changes: u64, why: &str) {
        tracing::debug!(
            why,
            "a change the log does not describe: the next durable point checkpoints"
        );
        self.unloggable_at = Some(changes);
    }

    /// After `set_extents` changed `disk`'s table, leaving `root`: `encode(out, packed)`
    /// appends the change's record to `out` ([`log::encode_splice_into`], in the packed
    /// encoding if `packed`), or answers false if it does not fit a page.
    pub fn splice(
        &mut self,
        changes: u64,
        disk: u64,
        encode: impl FnOnce(&mut Vec<u8>, bool) -> bool,
        root: &Option<Arc<Node>>,
    ) {
        let packed = self.area.packed;
        if self.pending.push_one_if(|out| encode(out, packed)) {
            self.next_lsn += 1;
        } else {
            self.unloggable(changes, "a splice larger than a log page");
        }
        if let Some(m) = self.mirror.get_mut(&disk) {
            m.root = root_key(root);
        }
    }

    /// A disk's table was rebuilt with the same content (the checkpoint copies leaves).
    pub fn same_table(&mut self, disk: u64, root: &Option<Arc<Node>>) {
        if let Some(m) = self.mirror.get_mut(&disk) {
            m.root = root_key(root);
        }
    }

    /// Records what changed in the directory since the last look.
    pub fn directory_changed(&mut self, st: &CtlState) {
        let changes = st.changes;
        let mut group = Vec::new();
        // New and changed disks first: a new disk may share the table of one deleted
        // in the same look.
        for d in st.disks.values() {
            let rec = masked(&d.rec);
            let root = root_key(&d.root);
            match self.mirror.get(&d.rec.id).cloned() {
                None => {
                    let share = if root == 0 {
                        Some(0)
                    } else {
                        self.mirror
                            .iter()
                            .find(|(_, m)| m.root == root)
                            .map(|(id, _)| *id)
                    };
                    match share {
                        Some(share_root_of) => group.push(log::encode(&LogRecord::PutDisk {
                            rec: rec.clone(),
                            share_root_of,
                        })),
                        None => self.unloggable(changes, "a new disk with a table of its own"),
                    }
                }
                Some(m) => {
                    if m.rec != rec {
                        group.push(log::encode(&LogRecord::PutDisk {
                            rec: rec.clone(),
                            share_root_of: 0,
                        }));
                    }
                    if m.root != root {
                        self.unloggable(changes, "a table replaced other than by a splice");
                    }
                }
            }
            self.mirror.insert(d.rec.id, Mirrored { rec, root });
        }
        let gone: Vec<u64> = (self.mirror.keys())
            .filter(|id| !st.disks.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.mirror.remove(&id);
            group.push(log::encode(&LogRecord::DropDisk { id }));
        }
        let counters = (st.generation, st.next_disk_id);
        if counters != self.counters {
            self.counters = counters;
            group.push(log::encode(&LogRecord::Counters {
                generation: counters.0,
                next_disk_id: counters.1,
            }));
        }
        self.push_group(changes, group);
    }

    /// What the log was not told of the directory (for the simulator's audit,
    /// `audit.rs`): each disk whose record or table is not what the log last recorded
    /// of it, and counters that moved. Changes reach the log as they are made
    /// ([`CtlState::changed`], the splices); one that did not would be lost at a power
    /// failure. Nothing while a change the log cannot describe waits for a checkpoint.
    pub(crate) fn unlogged(&self, st: &CtlState) -> Vec<String> {
        if self.unloggable_at.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for d in st.disks.values() {
            match self.mirror.get(&d.rec.id) {
                None => out.push(format!("disk `{}` is not in the log", d.rec.name)),
                Some(m) if m.rec != masked(&d.rec) => out.push(format!(
                    "disk `{}`: the log has its record as {:?}, it is {:?}",
                    d.rec.name, m.rec, d.rec
                )),
                Some(m) if m.root != root_key(&d.root) => out.push(format!(
                    "disk `{}`: its table changed since the log last recorded it",
                    d.rec.name
                )),
                Some(_) => {}
            }
        }
        for id in self.mirror.keys().filter(|id| !st.disks.contains_key(id)) {
            out.push(format!("disk {id}, deleted, is still in the log"));
        }
        if self.counters != (st.generation, st.next_disk_id) {
            out.push(format!(
                "the log has the counters (generation, next disk id) as {:?}, they are {:?}",
                self.counters,
                (st.generation, st.next_disk_id)
            ));
        }
        out
    }

    /// True if enough records wait that an append should start now: a flush or a
    /// snapshot then finds at most this much to write.
    pub fn wants_append(&self) -> bool {
        self.pending.bytes() >= APPEND_AHEAD_BYTES && self.idle() && !self.ahead_scheduled
    }

    /// True if no append packs or writes.
    fn idle(&self) -> bool {
        !self.packing && self.in_flight.is_empty()
    }

    /// Where the next append's pages say the log was durable below: the first page of
    /// the oldest append not yet acknowledged, or its own.
    fn durable_below(&self) -> u64 {
        self.in_flight
            .front()
            .map_or(self.next_seq, |a| a.first_seq)
    }

    /// Takes the appends at the front that ended, in order: an append behind one that
    /// failed fails too (replay stops at the first page missing). Returns true if any
    /// was acknowledged.
    fn acknowledge(&mut self) -> bool {
        let mut any = false;
        while self.in_flight.front().is_some_and(|a| a.ended.is_some()) {
            let a = self.in_flight.pop_front().expect("checked");
            let ended = a.ended.expect("checked");
            let r = match (a.behind, self.last) {
                (true, Some(e)) => Err(e),
                _ => ended,
            };
            if r.is_ok() {
                self.durable_changes = self.durable_changes.max(a.changes);
            }
            self.last = r.err();
            self.done = self.done.max(a.covers);
            any = true;
        }
        any
    }

    /// Bytes of records waiting for the next append.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes()
    }

    /// Pages in use from the replay start in force.
    pub fn used(&self) -> u64 {
        self.next_seq.saturating_sub(self.durable_seq)
    }

    /// True if a checkpoint should run now, in a pool with `segments_in_use` segments
    /// in use.
    pub fn wants_checkpoint(&self, segments_in_use: u64) -> bool {
        self.used() >= replay_bound(self.area.pages, segments_in_use)
            || self.unloggable_at.is_some()
            || crate::reactor::now().since(self.last_checkpoint) >= CHECKPOINT_INTERVAL
    }

    /// A checkpoint captured now: where its replay starts. Fills logged before are in
    /// the leaves it writes.
    pub fn captured(&mut self) -> (u64, u64) {
        self.last_checkpoint = crate::reactor::now();
        (self.next_seq, self.next_lsn)
    }

    /// The checkpoint that captured `(seq, lsn)` and `changes` is durable.
    pub fn checkpointed(&mut self, seq: u64, lsn: u64, changes: u64) {
        self.durable_seq = self.durable_seq.max(seq);
        self.area.replay_seq = self.durable_seq;
        self.area.replay_lsn = lsn;
        if self.unloggable_at.is_some_and(|u| u <= changes) {
            self.unloggable_at = None;
        }
        self.durable_changes = self.durable_changes.max(changes);
        // Records below the checkpoint need no appending.
        let (mut k, mut at) = (0, self.pending_lsn);
        for n in self.pending.records_per_group() {
            if at + n > lsn {
                break;
            }
            at += n;
            k += 1;
        }
        self.pending_lsn = at;
        self.pending.drop_first(k);
    }
}

impl CtlState {
    /// Counts a change; the log records what it changed in the directory.
    pub(crate) fn changed(&mut self) {
        self.changes += 1;
        if let Some(mut log) = self.log.take() {
            log.directory_changed(self);
            self.log = Some(log);
        }
    }
}

/// What an append found to do.
enum Append {
    /// Pages to write (place, bytes), covering changes up to the count.
    Pages(Vec<(u64, Vec<u8>)>, u64),
    /// The ring has no room: a checkpoint instead.
    Full,
}

impl Controller {
    /// Makes everything written and changed before the call durable: by appending to
    /// the log (a checkpoint when the pool has none, or when the log cannot describe a
    /// change made).
    ///
    /// Group commit: one call at a time packs the records waiting into an append (the
    /// calls made before it packs wait for that one); appends packed are written side by
    /// side, up to [`MAX_APPENDS_IN_FLIGHT`], and acknowledged in order — an append is
    /// durable once it and every one before it are. So a snapshot's append does not
    /// wait behind a background append's writes, only for them to complete. Each page
    /// names the first page of the oldest append not acknowledged when it was packed
    /// ([`log::pack_behind`]): replay takes a page past a torn append for that append's
    /// leftovers, not for damage.
    pub(crate) async fn make_durable(&self) -> Result<(), IoStatus> {
        let logging = {
            let st = self.st.borrow();
            st.log.as_ref().is_some_and(|l| l.unloggable_at.is_none())
        };
        // A closing pool's last word is its close's checkpoint.
        let logging = logging && !self.stopping.get();
        if !logging {
            return self.commit().await;
        }
        let ticket = {
            let mut st = self.st.borrow_mut();
            let l = st.log.as_mut().expect("checked");
            l.requested += 1;
            l.requested
        };
        enum Turn {
            Done,
            Pack,
        }
        loop {
            let turn = std::future::poll_fn(|cx| {
                let mut st = self.st.borrow_mut();
                let Some(l) = st.log.as_mut() else {
                    return Poll::Ready(None);
                };
                if l.done >= ticket {
                    Poll::Ready(Some(Turn::Done))
                } else if l.packed < ticket
                    && !l.packing
                    && l.in_flight.len() < MAX_APPENDS_IN_FLIGHT
                {
                    l.packing = true;
                    Poll::Ready(Some(Turn::Pack))
                } else {
                    l.waiters.push(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            match turn {
                None => return self.commit().await,
                Some(Turn::Done) => {
                    return match self.st.borrow().log.as_ref().and_then(|l| l.last) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
                Some(Turn::Pack) => self.append_once().await,
            }
        }
    }

    /// Wakes the durable-point calls waiting (see [`Controller::make_durable`]).
    fn wake_log_waiters(&self) {
        let waiters = match self.st.borrow_mut().log.as_mut() {
            Some(l) => std::mem::take(&mut l.waiters),
            None => Vec::new(),
        };
        for w in waiters {
            w.wake();
        }
    }

    /// Ends the packing turn of [`Controller::append_once`]: the append (its first page,
    /// the changes it covers) joins those in flight, and the next call may pack.
    /// Returns what names the append: the last request it covers (each append covers
    /// more than the one before).
    fn packed(&self, first_seq: u64, changes: u64) -> u64 {
        let covers = match self.st.borrow_mut().log.as_mut() {
            Some(l) => {
                let behind = !l.in_flight.is_empty();
                l.in_flight.push_back(InFlight {
                    first_seq,
                    covers: l.requested,
                    changes,
                    behind,
                    ended: None,
                });
                l.packed = l.requested;
                l.packing = false;
                l.requested
            }
            None => 0,
        };
        self.wake_log_waiters();
        covers
    }

    /// Records how the writes of the append `covers` names ended, and acknowledges
    /// those it completes.
    fn append_ended(&self, covers: u64, r: Result<(), IoStatus>) {
        let (acked, checkpoint) = {
            let mut st = self.st.borrow_mut();
            let in_use = st.space.segments_in_use();
            let Some(l) = st.log.as_mut() else {
                return;
            };
            if let Some(a) = l.in_flight.iter_mut().find(|a| a.covers == covers) {
                a.ended = Some(r);
            }
            let acked = l.acknowledge();
            (
                acked,
                acked && l.last.is_none() && l.wants_checkpoint(in_use),
            )
        };
        if checkpoint {
            self.checkpoint_soon();
        }
        if acked {
            self.wake_log_waiters();
        }
    }

    /// One append, the caller holding the packing turn: the changed fills become
    /// records, the records pages (in the turn); then the data containers are flushed
    /// (the fills' data first) and the pages written with force-unit-access, beside the
    /// appends already in flight.
    /// How it ended reaches the callers through the acknowledgement, in order.
    async fn append_once(&self) {
        // Its first page: only the packing turn, held here, moves the log's end.
        let first = self.st.borrow().log.as_ref().map_or(0, |l| l.next_seq);
        let (covers, r) = match self.pack_append().await {
            Ok(Append::Pages(pages, changes)) => {
                let covers = self.packed(first, changes);
                (covers, self.write_append(pages).await)
            }
            Ok(Append::Full) => {
                // Covers every request made so far: it checkpoints what changed before.
                let covers = self.packed(first, 0);
                (covers, self.commit().await)
            }
            Err(e) => (self.packed(first, 0), Err(e)),
        };
        self.append_ended(covers, r);
    }

    /// The packing half of [`Controller::append_once`].
    async fn pack_append(&self) -> Result<Append, IoStatus> {
        self.meta_writes_refused()?;
        if self.stopping.get() {
            return Ok(Append::Full);
        }
        self.log_dirty_fills_in_turns().await;
        // The pool may have failed, crashed or begun to close during those turns.
        self.meta_writes_refused()?;
        if self.stopping.get() {
            return Ok(Append::Full);
        }
        // Those changed since (during the turns above), at once: the append covers every
        // change made before it packs.
        self.log_dirty_fills();
        let mut st = self.st.borrow_mut();
        let changes = st.changes;
        let l = st.log.as_mut().expect("appends run with a log");
        if l.unloggable_at.is_some() {
            return Ok(Append::Full);
        }
        if l.pending.is_empty() {
            return Ok(Append::Pages(Vec::new(), changes));
        }
        let pages = log::pack_behind(
            &l.pending,
            l.next_seq,
            l.pending_lsn,
            l.area.first_page,
            l.area.pages,
            &self.shared.uuid,
            l.durable_below(),
        );
        // What replay will read back must decode: a record the decoder refused would end
        // the log there, silently.
        #[cfg(debug_assertions)]
        for (place, b) in &pages {
            if let Err(e) =
                log::decode_log_page(b, *place, &self.shared.uuid, self.shared.total_segments())
            {
                panic!("a log page this build wrote does not decode: {e}");
            }
        }
        if l.next_seq + pages.len() as u64 > l.durable_seq + l.area.pages {
            tracing::debug!(pool = %self.shared.name, "the log has no room for an append: a checkpoint instead");
            return Ok(Append::Full);
        }
        l.next_seq += pages.len() as u64;
        l.pending_lsn = l.next_lsn;
        l.pending.clear();
        Ok(Append::Pages(l.area.with_mirror_copies(pages), changes))
    }

    /// The writing half of [`Controller::append_once`].
    async fn write_append(&self, pages: Vec<(u64, Vec<u8>)>) -> Result<(), IoStatus> {
        if let Err(e) = self.flush_containers().await {
            return Err(self.fail(format!("flushing the data containers failed: {e:?}")));
        }
        // Written with force-unit-access: durable as each write completes, with no
        // flush after them to wait for. The mirror's copies go in the same batch: the
        // append is acknowledged when both rings hold it.
        if !pages.is_empty() {
            self.log_writing.set(self.log_writing.get() + 1);
            let r = self.write_pages(&pages, true).await;
            self.log_writing.set(self.log_writing.get() - 1);
            if let Err(e) = r {
                return Err(self.fail(format!("appending to the log failed: {e:?}")));
            }
        }
        Ok(())
    }

    /// Why no append or checkpoint may run now: the pool failed, or is closed (or
    /// crashed).
    pub(crate) fn meta_writes_refused(&self) -> Result<(), IoStatus> {
        let st = self.st.borrow();
        if let Some(f) = &st.failed {
            tracing::debug!(pool = %self.shared.name, failed = %f, "metadata write refused");
            return Err(IoStatus::MediaError);
        }
        if st.closed {
            return Err(IoStatus::Aborted);
        }
        Ok(())
    }

    /// Starts an append in the background if enough records wait (see
    /// [`IntentLog::wants_append`]).
    pub(crate) fn append_if_due(&self) {
        {
            let mut st = self.st.borrow_mut();
            match st.log.as_mut() {
                Some(l) if l.wants_append() => l.ahead_scheduled = true,
                _ => return,
            }
        }
        let me = self.rc();
        crate::reactor::spawn_local(async move {
            if let Some(l) = me.st.borrow_mut().log.as_mut() {
                l.ahead_scheduled = false;
                // Appends ahead go one at a time: one under way since, and the next
                // change asks again.
                if !l.idle() {
                    return;
                }
            }
            if let Err(e) = me.make_durable().await {
                tracing::warn!(pool = %me.shared.name, status = ?e, "background append failed");
            }
        })
        .detach();
    }

    /// Starts a checkpoint in the background unless one runs.
    pub(crate) fn checkpoint_soon(&self) {
        if self.commit_state.borrow().running {
            return;
        }
        let me = self.rc();
        crate::reactor::spawn_local(async move {
            if let Err(e) = me.commit().await {
                tracing::warn!(pool = %me.shared.name, status = ?e, "background checkpoint failed");
            }
        })
        .detach();
    }

    /// Turns the fills changed since they were last looked at into records, and copies
    /// the written leaves that hold them. Returns true if it copied any.
    pub(crate) fn log_dirty_fills(&self) -> bool {
        self.log_dirty_fills_upto(usize::MAX)
    }

    /// [`Controller::log_dirty_fills`] for the fills queued when called, a few at a time
    /// with a yield whenever a turn of the core ([`super::commit::TURN`]) is spent: each
    /// batch copies the written leaves its fills are in, and under a stream of first
    /// writes hundreds may be queued. Returns early if the pool closes meanwhile.
    pub(crate) async fn log_dirty_fills_in_turns(&self) {
        /// Changed fills logged between two looks at the clock.
        const FILLS_PER_BATCH: usize = 16;
        if self.st.borrow().log.is_none() {
            return;
        }
        let mut left = self.shared.dirty_fills.len();
        let mut turn = crate::reactor::Slice::new(super::commit::TURN);
        while left > 0 {
            self.log_dirty_fills_upto(FILLS_PER_BATCH);
            left = left.saturating_sub(FILLS_PER_BATCH);
            if left > 0 && turn.spent() {
                turn.next_turn().await;
                if self.st.borrow().closed {
                    return;
                }
            }
        }
    }

    /// [`Controller::log_dirty_fills`] for the first `most` changed fills queued.
    fn log_dirty_fills_upto(&self, most: usize) -> bool {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        if st.log.is_none() {
            return false;
        }
        let mut changed = Vec::new();
        let mut taken = 0;
        while taken < most
            && let Some(q) = self.shared.dirty_fills.pop()
        {
            taken += 1;
            // Whichever entry of the segment comes first takes the change, also one
            // queued where the segment no longer is (see [`DirtyFill`]): the record holds
            // the fill's bits as they are now.
            if self.shared.fills.take_dirty(q.seg) {
                changed.push(q);
            }
        }
        let l = st.log.as_mut().expect("checked above");
        // The logged fills' segments, by disk: their leaves, if written, are copied below.
        let mut copy: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for DirtyFill { seg, disk, vseg } in changed {
            l.push_fill(seg, self.shared.fills.get(seg).words());
            // A fill in a leaf not yet written reaches the next checkpoint with that leaf
            // (or a copy of it, shared or not); one in a written leaf needs the leaf
            // copied, now: a snapshot or a clone that shares the table later shares the
            // copy, which the next checkpoint writes. A segment allocated for a fault
            // since the last checkpoint began is in no written leaf.
            if !self.shared.fills.allocated_since_checkpoint(seg) {
                copy.entry(disk).or_default().insert(vseg);
            }
        }
        super::commit::copy_written_leaves(st, copy)
    }

    /// Waits (until `deadline`) for the append under way, if any.
    pub(crate) async fn appends_idle(&self, deadline: crate::reactor::Nanos) {
        while self.st.borrow().log.as_ref().is_some_and(|l| !l.idle()) {
            if crate::reactor::now() >= deadline {
                tracing::warn!(pool = %self.shared.name, "a log append is still under way");
                return;
            }
            crate::reactor::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// True if changes wait to be made durable (by the log or a checkpoint).
    pub(crate) fn undurable_changes(&self) -> bool {
        let st = self.st.borrow();
        let durable = st.log.as_ref().map_or(st.committed_changes, |l| {
            l.durable_changes.max(st.committed_changes)
        });
        st.changes != durable
    }
}

/// The log's state found at open.
pub(crate) struct Replayed {
    /// Records applied.
    pub records: u64,
    /// Segments whose fills the records changed.
    pub fills_changed: std::collections::HashSet<u64>,
    /// Pages read that held records.
    pub pages: u64,
    /// The LSN after the last record found.
    pub next_lsn: u64,
}

/// What replay changes: the tables and records of the disks, the space, the fills by
/// segment, the pool's counters.
pub(crate) struct ReplayState<'a> {
    pub disks: &'a mut BTreeMap<u64, (DiskRecord, Option<Arc<Node>>)>,
    pub space: &'a mut super::alloc::Space,
    pub fills: &'a Fills,
    pub generation: &'a mut u64,
    pub next_disk_id: &'a mut u64,
}

/// Copies every leaf, in every table, that holds a layer on one of `segs` (segments
/// whose fills the replay changed): a leaf read from the checkpoint keeps its page, and
/// the next checkpoint would not write the bits the log gave its fills. Returns how many
/// extents with such layers sat in written leaves.
pub(crate) fn rewrite_leaves_holding(
    disks: &mut BTreeMap<u64, (DiskRecord, Option<Arc<Node>>)>,
    space: &mut super::alloc::Space,
    segs: &std::collections::HashSet<u64>,
) -> u64 {
    let mut copied = 0;
    for (_, root) in disks.values_mut() {
        let Some(r) = root.clone() else { continue };
        let mut hits: Vec<u64> = Vec::new();
        r.visit_from(0, &mut |e: &Extent| {
            if e.layers
                .iter()
                .any(|l| l.is_partial() && segs.contains(&l.seg()))
            {
                hits.push(e.vseg);
            }
            true
        });
        copied += table::copy_written_leaves(root, &hits, space) as u64;
    }
    copied
}

/// The log's pages that follow each other from the replay start, in order, as read:
/// their bytes and headers. Each decoded once when read (that is the check that it
/// belongs to the log); the replay decodes them again one at a time as it applies them,
/// so the records of a long log are never all decoded at once. They were ~200 bytes
/// each, and a reopen replaying 386 K records held 83 MB of them, whose holes stayed
/// in the heap among the tables built beside them.
pub(crate) struct LogPages {
    /// The pages' bytes, [`PAGE_BYTES`] each.
    bytes: Vec<u8>,
    /// Each page's place and header.
    heads: Vec<(u64, log::LogHead)>,
    /// The pool's segments, which bound the segments records name.
    total_segments: u64,
}

impl LogPages {
    /// Pages held.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// True if no page follows the replay start.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// Records held at or after `lsn`.
    pub fn records_from(&self, lsn: u64) -> u64 {
        self.heads
            .iter()
            .map(|(_, h)| {
                let end = h.first_lsn + h.count as u64;
                end.saturating_sub(lsn.max(h.first_lsn))
            })
            .sum()
    }

    fn push(&mut self, place: u64, head: log::LogHead, b: &[u8]) {
        self.bytes.extend_from_slice(b);
        self.heads.push((place, head));
    }

    /// The `k`-th page, decoded.
    fn decode(&self, k: usize) -> Result<log::LogPage, ReplayError> {
        let (place, head) = self.heads[k];
        let b = &self.bytes[k * PAGE_BYTES..(k + 1) * PAGE_BYTES];
        log::decode_log_records(b, place, head, self.total_segments).map_err(|e| {
            ReplayError::Damaged {
                page: place,
                seq: head.seq,
                why: format!("it decoded when read, and not when replayed: {e}"),
            }
        })
    }
}

/// What [`read_log`] found in the ring.
pub(crate) struct LogRead {
    /// The pages that follow each other from the replay start, in order.
    pub pages: LogPages,
    /// The sequence number of the first page past them: where appends go on.
    pub end_seq: u64,
    /// The LSN the next page must start at to continue them (the replay LSN if none).
    pub end_lsn: u64,
    /// The places (in the log and in its mirror) of the pages past the end that carry a
    /// sequence number at or beyond it: what is left of an append the crash tore. Open
    /// erases them before it appends.
    pub stale: Vec<u64>,
    /// Pages of the log taken from the mirror, the first ring's copy being damaged:
    /// (the damaged page's place, why it was refused).
    pub repaired: Vec<(u64, String)>,
}

/// One page of the ring as read: its place and, if it decodes, its header.
struct Seen {
    place: u64,
    head: Option<log::LogHead>,
}

/// Reads the log from the replay start of `area`: the pages that follow each other from
/// there (sequence numbers and LSNs continuing) up to the end of the log — the first
/// page that is not the next one (unwritten, stale, or torn by the crash). Only those
/// pages' records are decoded; of the others, the header. Where the log has a mirror,
/// a page of the first ring that is not the next one is looked for in the mirror
/// before the log is taken to end there: a bit flipped in the page an append wrote last,
/// or a write of it that landed elsewhere, would otherwise look like a torn append and
/// lose acknowledged records unseen.
///
/// Damage is told from the end: every page names the sequence number below which the
/// log was durable when it was written (its append's first page, or that of the oldest
/// append still being written beside it). Past a torn append lie pages of that append,
/// or of appends written beside it, which name a sequence number at or below the bad
/// page. A valid page beyond the first bad page that names one above it means the bad
/// page was durable, and acknowledged, once: an error, not the end.
pub(crate) async fn read_log(
    meta: &Arc<dyn Bdev>,
    meta_first_byte: u64,
    pool: &uuid::Uuid,
    total_segments: u64,
    area: &LogArea,
) -> Result<LogRead, ReplayError> {
    const CHUNK: u64 = 64;
    let mut out = LogRead {
        pages: LogPages {
            bytes: Vec::new(),
            heads: Vec::new(),
            total_segments,
        },
        end_seq: area.replay_seq,
        end_lsn: area.replay_lsn,
        stale: Vec::new(),
        repaired: Vec::new(),
    };
    let read = |first: u64, n: u64| async move {
        super::load::read_bytes(
            meta,
            meta_first_byte + first * PAGE_BYTES as u64,
            n as usize * PAGE_BYTES,
        )
        .await
        .map_err(|status| ReplayError::Read {
            page: first,
            status,
        })
    };
    // The pages past the end, in sequence order from it: each ring's copy.
    let mut beyond: Vec<[Option<Seen>; 2]> = Vec::new();
    let mut seq = area.replay_seq;
    while seq < area.replay_seq + area.pages {
        let place = seq % area.pages;
        let n = CHUNK
            .min(area.pages - place)
            .min(area.replay_seq + area.pages - seq);
        // The log's ring, then its mirror's: the first page of this chunk, its pages.
        let mut rings = Vec::with_capacity(2);
        for first in std::iter::once(area.first_page).chain(area.mirror) {
            rings.push((first + place, read(first + place, n).await?));
        }
        for k in 0..n {
            let at = k as usize * PAGE_BYTES;
            let copy = |r: usize| {
                let (first, buf) = rings.get(r)?;
                Some((first + k, &buf.as_slice()[at..at + PAGE_BYTES]))
            };
            let seen = |r: usize, head: Option<log::LogHead>| {
                copy(r).map(|(place, _)| Seen { place, head })
            };
            let head_of =
                |r: usize| copy(r).and_then(|(place, b)| log::decode_log_head(b, place, pool).ok());
            if !beyond.is_empty() {
                beyond.push([seen(0, head_of(0)), seen(1, head_of(1))]);
                continue;
            }
            // The first copy that is the next page of the log; each header decoded once.
            let mut next = None;
            let mut heads = [None, None];
            let mut refused = Vec::new();
            for (r, head) in heads.iter_mut().enumerate().take(rings.len()) {
                let (place, b) = copy(r).expect("a ring read");
                let decoded = match log::decode_log_head(b, place, pool) {
                    Err(e) => Err(e.to_string()),
                    Ok(h) => {
                        *head = Some(h);
                        if h.seq != seq + k {
                            Err(format!(
                                "it holds page {} of the log, not {}",
                                h.seq,
                                seq + k
                            ))
                        } else {
                            log::decode_log_records(b, place, h, total_segments)
                                .map_err(|e| e.to_string())
                        }
                    }
                };
                match decoded {
                    Ok(p) => {
                        let head = head.expect("a decoded page has a header");
                        let continues = match out.pages.is_empty() {
                            true => p.first_lsn <= area.replay_lsn,
                            false => p.first_lsn == out.end_lsn,
                        };
                        if !continues {
                            return Err(ReplayError::Damaged {
                                page: place,
                                seq: p.seq,
                                why: format!(
                                    "its records start at {}, not at {} where the log stands",
                                    p.first_lsn, out.end_lsn
                                ),
                            });
                        }
                        next = Some((p, place, head, b));
                        break;
                    }
                    Err(why) => refused.push((place, why)),
                }
            }
            let Some((p, place, head, b)) = next else {
                beyond.push([seen(0, heads[0]), seen(1, heads[1])]);
                continue;
            };
            // Taken from the mirror: the log's own copy was refused.
            out.repaired.extend(refused);
            out.end_seq = p.seq + 1;
            out.end_lsn = p.first_lsn + p.records.len() as u64;
            out.pages.push(place, head, b);
        }
        seq += n;
    }
    let end_seq = out.end_seq;
    for (k, seen) in beyond.iter().enumerate().skip(1) {
        for s in seen.iter().flatten() {
            if let Some(h) = &s.head
                && h.seq == end_seq + k as u64
                && h.batch > end_seq
            {
                let first = beyond[0][0].as_ref().expect("the log's own ring");
                let why = match &first.head {
                    None => "it does not decode".to_string(),
                    Some(q) if q.seq != end_seq => {
                        format!("it holds page {} of an older lap", q.seq)
                    }
                    Some(_) => "its records do not decode".to_string(),
                };
                let mirror = match area.mirror {
                    Some(_) => " (nor does its mirror's copy)",
                    None => "",
                };
                return Err(ReplayError::Damaged {
                    page: first.place,
                    seq: end_seq,
                    why: format!(
                        "{why}{mirror}; yet page {} of a later append follows it (page {})",
                        h.seq, s.place
                    ),
                });
            }
        }
    }
    out.stale = beyond
        .iter()
        .flatten()
        .flatten()
        .filter(|s| s.head.is_some_and(|h| h.seq >= end_seq))
        .map(|s| s.place)
        .collect();
    Ok(out)
}

/// Applies every record of `pages` at or after the replay LSN of `area` onto `s`, in
/// order (splices in batches: `PendingSplices`). A record that does not apply (a disk it
/// names is missing) is an error: the log and the checkpoint disagree.
pub(crate) fn replay(
    pages: LogPages,
    area: &LogArea,
    mut s: ReplayState<'_>,
) -> Result<Replayed, ReplayError> {
    let mut out = Replayed {
        records: 0,
        fills_changed: Default::default(),
        pages: 0,
        next_lsn: area.replay_lsn,
    };
    let mut splices = PendingSplices::default();
    for k in 0..pages.len() {
        let p = pages.decode(k)?;
        let page = area.first_page + (area.replay_seq + k as u64) % area.pages;
        out.pages += 1;
        for (i, r) in p.records.into_iter().enumerate() {
            let lsn = p.first_lsn + i as u64;
            if lsn < area.replay_lsn {
                continue;
            }
            apply(r, &mut s, &mut splices, &mut out.fills_changed)
                .map_err(|why| ReplayError::Record { lsn, page, why })?;
            out.records += 1;
            out.next_lsn = lsn + 1;
        }
    }
    splices.apply(s.disks, s.space);
    Ok(out)
}

/// The splices replayed since the last record that needs the tables as they stand (a
/// new disk sharing a table, a deleted disk): per disk, the ranges they replaced and what
/// they hold now, a later splice overriding what it overlaps. Applied in one pass per
/// table (`table::replace`), so a leaf that many records change is rebuilt once, not
/// once a record.
///
/// Held as two flat vectors, not a map of ranges each with its own vector of extents: a
/// long log's splices were ~386 K small allocations alive until the pass, and the leaves
/// the pass built landed in the holes between them, which stayed in the heap once they
/// were freed (~11 MB resident after the open, on a 1.2 M-extent pool).
#[derive(Default)]
struct PendingSplices {
    /// In log order.
    ranges: Vec<PendingRange>,
    extents: Vec<Extent>,
}

/// A splice of [`PendingSplices`]: `[from, to)` of `disk` replaced by `n` extents from
/// `at` in its `extents`.
#[derive(Clone, Copy)]
struct PendingRange {
    disk: u64,
    from: u64,
    to: u64,
    at: usize,
    n: usize,
    /// Its place in log order.
    seq: usize,
}

impl PendingSplices {
    fn add(&mut self, disk: u64, from: u64, to: u64, exts: impl IntoIterator<Item = Extent>) {
        let at = self.extents.len();
        self.extents.extend(exts);
        let n = self.extents.len() - at;
        self.ranges.push(PendingRange {
            disk,
            from,
            to,
            at,
            n,
            seq: self.ranges.len(),
        });
    }

    fn apply(
        &mut self,
        disks: &mut BTreeMap<u64, (DiskRecord, Option<Arc<Node>>)>,
        space: &mut super::alloc::Space,
    ) {
        self.take_edits(|disk, edits| {
            let (_, root) = disks
                .get_mut(&disk)
                .expect("a splice names a disk it checked");
            table::replace(root, edits, space);
        });
    }

    /// Empties the splices into `f`, once per disk: the edits (sorted, disjoint) that
    /// leave its table as the splices applied one at a time would.
    fn take_edits(&mut self, mut f: impl FnMut(u64, &[table::Edit<'_>])) {
        let mut ranges = std::mem::take(&mut self.ranges);
        let extents = std::mem::take(&mut self.extents);
        // By disk and start; a stable sort, so ranges with the same start stay in log
        // order.
        ranges.sort_by_key(|r| (r.disk, r.from));
        for group in ranges.chunk_by(|a, b| a.disk == b.disk) {
            let edit = |from, to, exts| table::Edit {
                from,
                to,
                extents: std::borrow::Cow::Borrowed(exts),
            };
            let resolved;
            let edits: Vec<table::Edit<'_>> = if group.windows(2).all(|w| w[0].to <= w[1].from) {
                group
                    .iter()
                    .map(|r| edit(r.from, r.to, &extents[r.at..r.at + r.n]))
                    .collect()
            } else {
                resolved = later_overrides(group, &extents);
                resolved
                    .iter()
                    .map(|(&from, (to, exts))| edit(from, *to, exts))
                    .collect()
            };
            f(group[0].disk, &edits);
        }
    }
}

/// The ranges of one disk's overlapping splices as they stand once each has overridden
/// what it overlaps of those before it: range start → (range end, extents).
fn later_overrides(
    group: &[PendingRange],
    extents: &[Extent],
) -> BTreeMap<u64, (u64, Vec<Extent>)> {
    let mut in_order: Vec<&PendingRange> = group.iter().collect();
    in_order.sort_by_key(|r| r.seq);
    let mut ranges: BTreeMap<u64, (u64, Vec<Extent>)> = BTreeMap::new();
    for r in in_order {
        let (from, to) = (r.from, r.to);
        // The ranges it overlaps, kept only outside [from, to); they are consecutive.
        let overlapping: Vec<u64> = ranges
            .range(..to)
            .rev()
            .take_while(|(_, (end, _))| *end > from)
            .map(|(&start, _)| start)
            .collect();
        for start in overlapping {
            let (end, old) = ranges.remove(&start).expect("listed");
            if start < from {
                ranges.insert(start, (from, table::clip(&old, start, from)));
            }
            if end > to {
                ranges.insert(to, (end, table::clip(&old, to, end)));
            }
        }
        ranges.insert(from, (to, extents[r.at..r.at + r.n].to_vec()));
    }
    ranges
}

fn apply(
    r: LogRecord,
    s: &mut ReplayState<'_>,
    splices: &mut PendingSplices,
    changed: &mut std::collections::HashSet<u64>,
) -> Result<(), String> {
    let (disks, space, fills) = (&mut *s.disks, &mut *s.space, s.fills);
    if matches!(r, LogRecord::PutDisk { .. } | LogRecord::DropDisk { .. }) {
        splices.apply(disks, space);
    }
    match r {
        LogRecord::Splice {
            disk,
            from,
            to,
            extents,
        } => {
            let exts: Vec<Extent> = extents
                .iter()
                .map(|raw| {
                    raw.build(|seg, words| {
                        let f = fills.get(seg);
                        if f.words() != words {
                            f.store_words(words);
                            changed.insert(seg);
                        }
                    })
                })
                .collect();
            for e in &exts {
                for seg in e.segments() {
                    if space.refs(seg) == super::alloc::RESERVED {
                        return Err(format!("the splice references reserved segment {seg}"));
                    }
                }
            }
            if !disks.contains_key(&disk) {
                return Err(format!("a splice of disk {disk}, which is not in the pool"));
            }
            // The pool's generation is never below a birth it holds, or the next
            // snapshot would take that generation and leave the extent writable in
            // place under it. A generation taken is logged at once
            // (`CtlState::take_generation`), ahead of any extent born in it; a log
            // written before that was so may hold such an extent without the counter.
            for e in &exts {
                *s.generation = (*s.generation).max(e.birth.get());
            }
            splices.add(disk, from, to, exts);
        }
        LogRecord::Fill { seg, words } => {
            let f = fills.get(seg);
            if f.words() != words {
                f.store_words(words);
                changed.insert(seg);
            }
        }
        LogRecord::PutDisk { rec, share_root_of } => match disks.get_mut(&rec.id) {
            Some((old, _)) => *old = rec,
            None => {
                let root = if share_root_of == 0 {
                    None
                } else {
                    let (_, r) = disks.get(&share_root_of).ok_or_else(|| {
                        format!(
                            "disk {} shares the table of disk {share_root_of}, which is not \
                             in the pool",
                            rec.id
                        )
                    })?;
                    r.clone()
                };
                if let Some(r) = &root {
                    r.retain();
                }
                disks.insert(rec.id, (rec, root));
            }
        },
        LogRecord::DropDisk { id } => {
            let (_, mut root) = disks
                .remove(&id)
                .ok_or_else(|| format!("a delete of disk {id}, which is not in the pool"))?;
            table::set_root(&mut root, None, space);
        }
        LogRecord::Counters {
            generation: g,
            next_disk_id: n,
        } => {
            if g == 0 || g > super::map::MAX_GENERATION + 1 {
                return Err(format!("counters name generation {g}, not a generation"));
            }
            // Never back: a splice replayed before it may hold a later birth.
            *s.generation = (*s.generation).max(g);
            *s.next_disk_id = n;
        }
    }
    Ok(())
}

/// Why the log could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading log page {page} failed: {status:?}")]
    Read { page: u64, status: IoStatus },
    #[error("log record {lsn} (page {page}) does not apply to the checkpoint: {why}")]
    Record { lsn: u64, page: u64, why: String },
    #[error("log page {page} (sequence {seq}) is damaged: {why}")]
    Damaged { page: u64, seq: u64, why: String },
}

impl From<ReplayError> for MetaError {
    fn from(e: ReplayError) -> MetaError {
        MetaError::Field {
            page: match &e {
                ReplayError::Read { page, .. }
                | ReplayError::Record { page, .. }
                | ReplayError::Damaged { page, .. } => *page,
            },
            field: "log",
            reason: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The records a checkpoint leaves behind grow with the segments in use, from 8 MiB
    /// of pages, up to half the ring; a small ring checkpoints at half full, as before.
    #[test]
    fn the_replay_bound_grows_with_the_segments_in_use_up_to_half_the_ring() {
        assert_eq!(replay_bound(MAX_LOG_PAGES, 0), REPLAY_FLOOR_PAGES);
        assert_eq!(replay_bound(MAX_LOG_PAGES, 1 << 20), REPLAY_FLOOR_PAGES);
        // 2 M segments (2 TiB in 1 MiB segments): a page per 512.
        assert_eq!(replay_bound(MAX_LOG_PAGES, 2 << 20), 4096);
        assert_eq!(replay_bound(MAX_LOG_PAGES, 64 << 20), MAX_LOG_PAGES / 2);
        assert_eq!(replay_bound(4096, 2 << 20), 2048);
        assert_eq!(replay_bound(100, 0), 50);
        assert_eq!(replay_bound(1, 0), 1);
    }

    /// A replayed splice holds an extent born in a generation that no counters' record
    /// reached (an operation took the generation, and the power failed before its
    /// records were durable, while another disk's write fault was): the pool's
    /// generation comes out at that birth at least, and a counters' record replayed
    /// later does not take it back. Below it, the next snapshot would take the
    /// extent's generation and leave it writable in place under the snapshot
    /// (simulator seed 72010).
    #[test]
    fn replay_never_leaves_the_generation_below_a_birth_it_holds() {
        use super::super::meta::directory::{DiskKind, JobRecord};
        use super::super::meta::node::RawExtent;
        let rec = DiskRecord {
            id: 1,
            uuid: uuid::Uuid::new_v4(),
            name: "d1".into(),
            size_blocks: 1024,
            kind: DiskKind::Disk,
            read_only: false,
            thin: true,
            parent: 0,
            snap_gen: 4,
            created_gen: 1,
            root_page: NO_PAGE,
            cow_policy: 0,
            job: JobRecord::None,
            created_unix: 0,
            external: None,
        };
        let mut disks = BTreeMap::from([(1, (rec, None))]);
        let mut space = super::super::alloc::Space::new(&[64], &[0], 1, 0, 1);
        let fills = Fills::new(64);
        let (mut generation, mut next_disk_id) = (5, 2);
        let mut state = ReplayState {
            disks: &mut disks,
            space: &mut space,
            fills: &fills,
            generation: &mut generation,
            next_disk_id: &mut next_disk_id,
        };
        let mut splices = PendingSplices::default();
        let mut changed = std::collections::HashSet::new();
        let splice = LogRecord::Splice {
            disk: 1,
            from: 3,
            to: 4,
            extents: vec![RawExtent {
                vseg: 3,
                len: 1,
                error: false,
                birth: 6,
                layers: [(7, None)].into_iter().collect(),
            }],
        };
        apply(splice, &mut state, &mut splices, &mut changed).unwrap();
        assert_eq!(*state.generation, 6, "raised to the splice's birth");
        let counters = LogRecord::Counters {
            generation: 5,
            next_disk_id: 2,
        };
        apply(counters, &mut state, &mut splices, &mut changed).unwrap();
        assert_eq!(
            *state.generation, 6,
            "an older counters' record does not lower it"
        );
    }

    /// Expands extents to (vseg → physical segment) pairs.
    fn expand(exts: &[Extent], into: &mut BTreeMap<u64, u64>) {
        for e in exts {
            for i in 0..u64::from(e.len) {
                into.insert(e.vseg + i, e.layers[0].seg() + i);
            }
        }
    }

    proptest! {
        /// Splices gathered for one pass (a later one overriding what it overlaps) leave
        /// the table that applying them one at a time leaves: the ranges stay disjoint
        /// and each maps what the last splice over it said.
        #[test]
        fn pending_splices_keep_the_last_word_on_every_segment(
            ops in proptest::collection::vec((0u64..600, 1u64..80, 0u8..3), 1..80),
        ) {
            let mut pending = PendingSplices::default();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut next_seg = 10_000u64;
            for (from, len, kind) in ops {
                let to = from + len;
                let exts: Vec<Extent> = match kind {
                    0 => vec![],
                    1 => {
                        let e = Extent::run(from, len as u16, next_seg, 1);
                        next_seg += len;
                        vec![e]
                    }
                    _ => (from..to)
                        .step_by(2)
                        .map(|v| {
                            next_seg += 1;
                            Extent::full(v, next_seg, 1)
                        })
                        .collect(),
                };
                for v in from..to {
                    model.remove(&v);
                }
                expand(&exts, &mut model);
                pending.add(7, from, to, exts);
            }
            let mut got = BTreeMap::new();
            let mut ok = true;
            let mut disks = Vec::new();
            pending.take_edits(|disk, edits| {
                disks.push(disk);
                let mut prev_end = 0;
                for ed in edits {
                    ok &= ed.from >= prev_end && ed.from < ed.to;
                    ok &= ed.extents.iter().all(|e| e.vseg >= ed.from && e.end() <= ed.to);
                    prev_end = ed.to;
                    expand(&ed.extents, &mut got);
                }
            });
            prop_assert!(ok, "ranges overlap, are empty, or hold extents outside them");
            prop_assert_eq!(disks, vec![7]);
            prop_assert_eq!(got, model);
            prop_assert!(pending.ranges.is_empty() && pending.extents.is_empty());
        }
    }
}
