//! The engine's state in memory — the controller's tables, space map, records and log
//! mirror, and every agent's view — checked against the rules the offline check
//! (`scan.rs`) verifies on disk. The simulator calls it without a turn of any reactor:
//! after every recovery (what an open rebuilt from a checkpoint and a replayed log,
//! before anything runs on it), after every wave, and at every step of a wave for the
//! agents' reads. A change that leaves the state wrong fails at the step that made it,
//! not later, when a read happens to show it, or never.
//!
//! - The intent log was told every change of the directory, the tables and the counters.
//! - No disk's last snapshot took the pool's next generation or a later one, and no disk
//!   was created nor extent born after it: the next snapshot takes that generation, and
//!   an extent born after it would stay writable in place under the snapshot.
//! - Every segment is counted as often as distinct leaves reference it (and per layer of
//!   each); a segment counted that no leaf references is a leak. While the pool runs, a
//!   count may be above the references (a replaced table's segments are released once
//!   the agents let go of it), never below: a count that reaches zero while a leaf still
//!   references the segment frees it for reuse.
//! - No segment has two owners: a segment a disk may write in place (the top layer of an
//!   extent born after its last snapshot) is referenced by one leaf, of that disk only.
//! - What an agent would write in place (its view, the extents beside it, the states laid
//!   over it), the controller's table maps there, writable by that disk: an agent whose
//!   view lags a change that took a segment from it writes where the controller no
//!   longer looks, or into a segment it may give to another disk.
//! - No segment an agent would read from is free to be allocated: a segment is handed
//!   out again only once every agent's view has let go of it.
//! - Every page a written table node, the directory or the log is stored in is
//!   allocated and stores that one thing; after a recovery, nothing else is allocated.
//! - Every changed fill reaches the next checkpoint (`map::DirtyFill`): its segment has
//!   an entry queued, and a written leaf that holds it is the one the first entry
//!   copies; no written leaf holds a segment noted as allocated for a fault since the
//!   last checkpoint began (a change of its fill would copy no leaf). A fill lost this
//!   way shows only after a checkpoint and a crash, in a read of that granule.

use super::agent::Claims;
use super::alloc::{PageUse, RESERVED};
use super::controller::{Controller, CtlState, DiskCtl};
use super::map::{DirtyFill, ExtentState};
use super::meta::NO_PAGE;
use super::table::{Node, NodeKind};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Every node under `root` not in `seen`, once each.
fn nodes<'a>(root: &'a Arc<Node>, seen: &mut HashSet<*const Node>, out: &mut Vec<&'a Node>) {
    if !seen.insert(Arc::as_ptr(root)) {
        return;
    }
    out.push(root.as_ref());
    if let NodeKind::Internal { children, .. } = &root.kind {
        for c in children {
            nodes(c, seen, out);
        }
    }
}

/// The metadata pages (see the module's text): every page a written node of a table
/// is stored in (its page, a leaf's second page, the internal node written over a root
/// leaf of two pages), every directory page and every page of the log is allocated,
/// and holds that one thing only; a page freed while something still stored there is
/// allocated again, and the next checkpoint overwrites what the committed state reads.
/// `just_opened`: no table is waiting to be released, so an allocated page that holds
/// none of these is a leak.
fn audit_pages(st: &CtlState, just_opened: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    for d in st.disks.values() {
        if let Some(r) = &d.root {
            nodes(r, &mut seen, &mut all);
        }
    }
    let mut holds: HashMap<u64, String> = HashMap::new();
    let mut hold = |page: u64, what: String, problems: &mut Vec<String>| {
        let used = st.space.page_use(page);
        if used != PageUse::Used {
            problems.push(format!(
                "page {page} holds {what}, but the space map has it {used:?}"
            ));
        }
        if let Some(other) = holds.insert(page, what.clone()) {
            problems.push(format!("page {page} holds both {other} and {what}"));
        }
    };
    for n in all {
        let p = n.page();
        if p == NO_PAGE {
            continue;
        }
        let what = match &n.kind {
            NodeKind::Leaf { extents } => {
                format!(
                    "a leaf (from segment {})",
                    extents.iter().next().map_or(0, |e| e.vseg)
                )
            }
            NodeKind::Internal { .. } => "an internal node".to_string(),
        };
        if let Some(o) = n.overflow() {
            hold(o.page, format!("the second page of {what}"), &mut problems);
        }
        if let Some((l, _, _)) = n.lift() {
            hold(l, format!("the node over {what}"), &mut problems);
        }
        hold(p, what, &mut problems);
    }
    for &p in &st.dir_pages {
        hold(p, "a directory page".to_string(), &mut problems);
    }
    if let Some(l) = &st.log {
        for p in l.area.all_pages() {
            hold(p, "a page of the log".to_string(), &mut problems);
        }
    }
    if just_opened {
        let leaked: Vec<u64> = (st.space.node_area())
            .filter(|p| st.space.page_use(*p) == PageUse::Used && !holds.contains_key(p))
            .take(8)
            .collect();
        for p in leaked {
            problems.push(format!(
                "page {p} is allocated, but nothing is stored there"
            ));
        }
    }
    problems
}

impl Controller {
    /// The broken rules, each naming where (none: the state is sound). `just_opened`:
    /// no release is pending, so counts must equal the references, and a segment
    /// counted that no leaf references is a leak.
    pub(crate) fn audit(&self, just_opened: bool) -> Vec<String> {
        let st = self.st.borrow();
        let mut problems = Vec::new();
        let generation = st.generation;
        if let Some(log) = &st.log {
            problems.extend(log.unlogged(&st));
        }
        // The leaves of each disk, and how many disks reach each leaf.
        let mut per_disk: Vec<(&DiskCtl, Vec<&Node>)> = Vec::new();
        let mut disks_of_leaf: HashMap<*const Node, usize> = HashMap::new();
        for d in st.disks.values() {
            if d.rec.snap_gen >= generation {
                problems.push(format!(
                    "disk `{}`: its last snapshot took generation {}, not before the pool's \
                     next, {generation}",
                    d.rec.name, d.rec.snap_gen
                ));
            }
            if d.rec.created_gen > generation {
                problems.push(format!(
                    "disk `{}`: created in generation {}, after the pool's next, {generation}",
                    d.rec.name, d.rec.created_gen
                ));
            }
            let mut mine = Vec::new();
            if let Some(r) = &d.root {
                nodes(r, &mut HashSet::new(), &mut mine);
                mine.retain(|n| matches!(n.kind, NodeKind::Leaf { .. }));
            }
            for l in &mine {
                *disks_of_leaf.entry(*l as *const Node).or_default() += 1;
            }
            per_disk.push((d, mine));
        }
        // References: once per distinct leaf, per layer.
        let mut counted: HashMap<u64, u32> = HashMap::new();
        let mut done: HashSet<*const Node> = HashSet::new();
        for (d, mine) in &per_disk {
            for l in mine {
                let NodeKind::Leaf { extents } = &l.kind else {
                    continue;
                };
                let first_time = done.insert(*l as *const Node);
                for e in extents.iter() {
                    if e.birth.get() > generation {
                        problems.push(format!(
                            "disk `{}`, segment {}: born in generation {}, after the pool's \
                             next, {generation}",
                            d.rec.name,
                            e.vseg,
                            e.birth.get()
                        ));
                    }
                    if first_time {
                        for s in e.segments() {
                            *counted.entry(s).or_default() += 1;
                        }
                    }
                }
            }
        }
        let mut segs: Vec<(&u64, &u32)> = counted.iter().collect();
        segs.sort();
        for (&s, &n) in segs {
            let have = st.space.refs(s);
            if have == RESERVED || have < n || (just_opened && have != n) {
                problems.push(format!(
                    "segment {s}: referenced by {n} leaves, counted {}",
                    if have == RESERVED {
                        "as reserved".to_string()
                    } else {
                        have.to_string()
                    }
                ));
            }
        }
        for s in (0..st.space.total_segments()).filter(|_| just_opened) {
            let have = st.space.refs(s);
            if have != 0 && have != RESERVED && !counted.contains_key(&s) {
                problems.push(format!(
                    "segment {s}: counted {have} but no leaf references it"
                ));
            }
        }
        // One owner for every segment written in place.
        let mut owners: HashMap<u64, (&str, u64)> = HashMap::new();
        for (d, mine) in &per_disk {
            for l in mine {
                let NodeKind::Leaf { extents } = &l.kind else {
                    continue;
                };
                let shared = disks_of_leaf[&(*l as *const Node)] > 1;
                for e in extents.iter() {
                    if e.state == ExtentState::Error || e.birth.get() <= d.rec.snap_gen {
                        continue;
                    }
                    let Some(top) = e.layers.first() else {
                        continue;
                    };
                    let run = if e.is_plain() { e.len as u64 } else { 1 };
                    for i in 0..run {
                        let (s, v) = (top.seg() + i, e.vseg + i);
                        if shared {
                            problems.push(format!(
                                "disk `{}` may write segment {s} (at {v}) in place, in a leaf \
                                 another disk's table holds",
                                d.rec.name
                            ));
                        }
                        if let Some((o, ov)) = owners.insert(s, (d.rec.name.as_str(), v)) {
                            problems.push(format!(
                                "segment {s} has two owners: writable by `{o}` at {ov} and by \
                                 `{}` at {v}",
                                d.rec.name
                            ));
                        }
                        if counted[&s] != 1 {
                            problems.push(format!(
                                "disk `{}` may write segment {s} (at {v}) in place, but {} \
                                 leaves reference it",
                                d.rec.name, counted[&s]
                            ));
                        }
                    }
                }
            }
        }
        problems.extend(self.audit_fills(&per_disk));
        problems.extend(audit_pages(&st, just_opened));
        problems
    }

    /// The rules that carry a changed fill to the next checkpoint (see [`DirtyFill`]): a
    /// written leaf holds no segment noted as allocated since the last checkpoint began
    /// (a change of its fill would copy no leaf, and no checkpoint would write it); a
    /// dirty fill has an entry queued; and the written leaves that hold a dirty fill's
    /// segment are the one its first entry copies when it takes the change.
    fn audit_fills(&self, per_disk: &[(&DiskCtl, Vec<&Node>)]) -> Vec<String> {
        let fills = &self.shared.fills;
        let mut problems = Vec::new();
        // The queue in order, put back as it was: the audit runs on one thread, without
        // a turn of any reactor, so nothing pushes or pops meanwhile.
        let mut queued = Vec::new();
        while let Some(q) = self.shared.dirty_fills.pop() {
            queued.push(q);
        }
        for q in &queued {
            self.shared.dirty_fills.push(*q);
        }
        let mut first: HashMap<u64, DirtyFill> = HashMap::new();
        for q in queued {
            first.entry(q.seg).or_insert(q);
        }
        let mut seen: HashSet<*const Node> = HashSet::new();
        for (d, mine) in per_disk {
            for l in mine.iter().filter(|l| l.page() != NO_PAGE) {
                let NodeKind::Leaf { extents } = &l.kind else {
                    continue;
                };
                let first_time = seen.insert(*l as *const Node);
                for e in extents.iter() {
                    for s in e.segments().filter(|_| first_time) {
                        if fills.marks(s).1 {
                            problems.push(format!(
                                "segment {s} (at {} of `{}`): in a written leaf, but noted as \
                                 allocated for a fault since the last checkpoint began",
                                e.vseg, d.rec.name
                            ));
                        }
                    }
                    for top in e.layers.iter().filter(|l| l.is_partial()) {
                        let s = top.seg();
                        if !fills.marks(s).0 {
                            continue;
                        }
                        // A dirty fill with no entry is reported below, once.
                        let Some(q) = first.get(&s) else { continue };
                        if !(q.disk == d.rec.id
                            && e.len == 1
                            && (e.vseg..e.end()).contains(&q.vseg))
                        {
                            problems.push(format!(
                                "segment {s} (at {} of `{}`): its fill changed since it was \
                                 logged and a written leaf holds it, but its first entry \
                                 copies the leaf at {} of disk {}",
                                e.vseg, d.rec.name, q.vseg, q.disk
                            ));
                        }
                    }
                }
            }
        }
        // Every dirty fill needs its entry, whether a written leaf holds it or not.
        let mut dirty_unqueued: Vec<u64> = (fills.dirty_segments().into_iter())
            .filter(|s| !first.contains_key(s))
            .collect();
        dirty_unqueued.truncate(8);
        for s in dirty_unqueued {
            problems.push(format!(
                "segment {s}: its fill changed since it was logged, and no entry is queued"
            ));
        }
        problems
    }
}

impl Controller {
    /// The disks with agents, and the cores those agents run on.
    pub(crate) fn agents(&self) -> Vec<(u64, Vec<usize>)> {
        let st = self.st.borrow();
        (st.disks.values())
            .map(|d| (d.rec.id, d.agents.iter().copied().collect()))
            .collect()
    }

    /// What the agent on `core` of disk `disk` would read from must not be free, at any
    /// moment. With `settled` (no operation under way: a snapshot takes the right to
    /// write in place before its agents learn it, safely, as no other disk shares the
    /// segments yet), what it would write in place must be the top layer the disk's
    /// table maps there, writable by the disk.
    pub(crate) fn audit_claims(
        &self,
        disk: u64,
        core: usize,
        claims: &Claims,
        settled: bool,
    ) -> Vec<String> {
        let st = self.st.borrow();
        let mut problems = Vec::new();
        // The disks and their agents were listed in the same call, without a turn.
        let Some(d) = st.disks.get(&disk) else {
            return problems;
        };
        for &(vseg, phys) in &claims.read_from {
            let reserved = st.space.refs(phys) == RESERVED;
            if reserved || st.space.allocatable(phys) {
                problems.push(format!(
                    "the agent on core {core} of `{}` would read segment {phys} at {vseg}, \
                     which is {}",
                    d.rec.name,
                    if reserved {
                        "reserved"
                    } else {
                        "free to be allocated"
                    }
                ));
            }
        }
        if !settled {
            return problems;
        }
        for &(vseg, phys) in &claims.write_in_place {
            let table = d.root.as_ref().and_then(|r| r.lookup(vseg));
            let why = match table {
                None => Some("maps nothing there".to_string()),
                Some(e) if e.state != ExtentState::Mapped => Some(format!("has it {:?}", e.state)),
                Some(e) => {
                    let seg = e.at(vseg).layers[0].seg();
                    if seg != phys {
                        Some(format!("maps segment {seg} there"))
                    } else if e.birth.get() <= d.rec.snap_gen {
                        Some(format!(
                            "shares it (born in generation {}, the disk's last snapshot took {})",
                            e.birth.get(),
                            d.rec.snap_gen
                        ))
                    } else {
                        None
                    }
                }
            };
            if let Some(why) = why {
                problems.push(format!(
                    "the agent on core {core} of `{}` would write segment {phys} in place at \
                     {vseg}; the controller's table {why}",
                    d.rec.name
                ));
            }
        }
        problems
    }
}
