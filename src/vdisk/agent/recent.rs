//! The extents an agent keeps beside its view: those the controller set for write
//! faults since it built the view ([`AgentCmd::AddExtents`](crate::vdisk::msg::AgentCmd)),
//! read before the view ("recent inserts read beside the table").
//!
//! **Why.** A burst of first writes resolves its faults in batches. Pushing a whole new
//! view per batch made the controller copy the table's paths again for every batch (the
//! previous view shared them) and made every agent drop its previous view (walking the
//! old copies). The controller sends each batch's extents instead, and a whole view
//! once the extents sent since the last one pass a bound (`views.rs`).
//!
//! **Versions.** Each entry carries the version of the view it extends: the disk's view
//! version when the controller sent it, read after it set the extents in its table. So
//! every view of a higher version was built from a table that held the entry's extent
//! (or something newer there), and an agent
//! - drops, on a new view of version `V`, the entries of versions below `V`;
//! - ignores extents whose version is below its view's (that view holds them);
//! - keeps the others, also those of a version above its view's (a view it has not
//!   applied yet; they are newer than the view it has).
//!
//! **Order on a core.** Commands reach a core in the order the controller sent them,
//! but a blocking command runs before the ready tasks of earlier ones
//! (`Cores::spawn_on_with`): a blocking view push can run before the extents sent
//! before it. Those extents then carry a version below the view's and are ignored,
//! which is right: the pushed view was built after they were set. Extents are never
//! sent blocking, so they never run before a view sent earlier; a view that arrives
//! late (older than the agent's) is ignored by the agent, and its entries stay.
//!
//! Entries are one-segment extents (what write faults set), hashed by virtual segment:
//! the I/O path looks one segment up per request (a miss, for a first write), where an
//! ordered map of a few thousand entries costs a descent of several nodes. The range
//! walks (block status over a range is per segment too; the entries, a diff) sort what
//! they need.

use crate::vdisk::map::{Extent, lay_over};
use crate::vdisk::table::Node;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// The extents set by write faults since the agent's view, with their versions.
#[derive(Default, Debug)]
pub(crate) struct Recent {
    by_vseg: FxHashMap<u64, (u64, Extent)>,
}

impl Recent {
    /// Number of extents kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_vseg.len()
    }

    /// Keeps `extents` (one segment each) as extending view `version`, unless the
    /// agent's view, of version `view_version`, is newer (it holds them).
    pub(crate) fn add(&mut self, version: u64, view_version: Option<u64>, extents: &[Extent]) {
        if view_version.is_some_and(|v| version < v) {
            return;
        }
        for e in extents {
            debug_assert_eq!(e.len, 1, "write faults set one-segment extents");
            self.by_vseg.insert(e.vseg, (version, e.clone()));
        }
    }

    /// A view of version `version` was applied: drops what it holds.
    pub(crate) fn view_applied(&mut self, version: u64) {
        if !self.by_vseg.is_empty() {
            self.by_vseg.retain(|_, (v, _)| *v >= version);
        }
    }

    /// The extent kept at `vseg`, if any.
    #[inline]
    pub(crate) fn get(&self, vseg: u64) -> Option<&Extent> {
        self.by_vseg.get(&vseg).map(|(_, e)| e)
    }

    /// The extent covering `vseg`: the one kept here, else the one in the table under
    /// `root`.
    #[inline]
    pub(crate) fn lookup<'a>(
        &'a self,
        root: Option<&'a Arc<Node>>,
        vseg: u64,
    ) -> Option<&'a Extent> {
        if !self.by_vseg.is_empty()
            && let Some(e) = self.get(vseg)
        {
            return Some(e);
        }
        root.and_then(|r| r.lookup(vseg))
    }

    /// The kept extents that start in `[from, to)`, in order.
    pub(crate) fn range(&self, from: u64, to: u64) -> Vec<&Extent> {
        let mut out: Vec<&Extent> = (self.by_vseg.iter())
            .filter(|&(&v, _)| v >= from && v < to)
            .map(|(_, (_, e))| e)
            .collect();
        out.sort_unstable_by_key(|e| e.vseg);
        out
    }

    /// Calls `f` on every extent ending after `vseg`, in order, as the table under
    /// `root` with the kept extents laid over it shows them (a run of the table that a
    /// kept extent cuts is shown in parts), until it returns false.
    pub(crate) fn visit_from(
        &self,
        root: Option<&Arc<Node>>,
        vseg: u64,
        f: &mut dyn FnMut(&Extent) -> bool,
    ) {
        let mut kept = self.range(vseg, u64::MAX).into_iter().peekable();
        if let Some(r) = root
            && !r.visit_from(vseg, &mut |e| lay_over(e, vseg, &mut kept, &mut |p| f(&p)))
        {
            return;
        }
        for k in kept {
            if !f(k) {
                return;
            }
        }
    }
}
