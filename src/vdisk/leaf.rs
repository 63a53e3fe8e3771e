//! A table leaf's extents (see `table`): the extents the leaf was built with, shared
//! by every copy made of it since, and the few extents inserted into its gaps since.
//!
//! The table is copy-on-write: every change to a leaf builds a new leaf. A leaf holds
//! up to about two hundred extents, and a first write into a fresh segment adds one;
//! copying them all was most of the cost of a write fault. An edit that only fills gaps
//! (what first writes do) builds a leaf that shares the old one's `base` and copies its
//! `added` extents, at most [`MAX_ADDED`] of them. Any other edit, or one that would
//! pass [`MAX_ADDED`] or the leaf's budget, rebuilds the leaf whole with one `base` and
//! no `added` (the table's general path): once in `MAX_ADDED` first writes into a leaf.
//!
//! Readers see one sorted sequence: [`LeafExtents::iter`] merges the two, and a lookup
//! searches `base`, then `added` if it has any. The leaf is written to metadata as that
//! sequence, so the page format does not know about the split.

use super::map::Extent;
use super::search;
use super::table::{Edit, LEAF_BUDGET_BYTES, extent_budget};
use std::sync::Arc;

/// Most extents a leaf holds beside its `base`. A first write into a leaf copies about
/// half of them and one in this many copies the whole leaf: with leaves of ~200
/// extents, the two costs are about equal near 20.
pub const MAX_ADDED: usize = 24;

/// A leaf's extents: sorted, non-overlapping.
#[derive(Debug)]
pub struct LeafExtents {
    /// Shared with the leaves this one was copied from.
    base: Arc<[Extent]>,
    /// The first and last starts of `base`: a search reads them here, beside the
    /// pointer to `base`, instead of from its two ends (two more cache lines of a cold
    /// leaf, see [`starting_upto`]).
    base_ends: (u64, u64),
    /// Sorted; each lies in a gap between extents of `base`.
    added: Vec<Extent>,
    /// The sum of the extents' [`extent_budget`].
    budget: usize,
}

impl LeafExtents {
    /// Extents (sorted, non-overlapping) whose budgets sum to `budget`.
    pub fn with_budget(extents: Vec<Extent>, budget: usize) -> LeafExtents {
        debug_assert_eq!(budget, extents.iter().map(extent_budget).sum::<usize>());
        LeafExtents {
            base_ends: ends(&extents),
            base: extents.into(),
            added: Vec::new(),
            budget,
        }
    }

    /// Number of extents.
    #[inline]
    pub fn len(&self) -> usize {
        self.base.len() + self.added.len()
    }

    /// True if the leaf holds no extent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sum of the extents' [`extent_budget`].
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The extents in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            a: &self.base,
            b: &self.added,
        }
    }

    /// The extents that end after `vseg`, in order.
    pub fn iter_from(&self, vseg: u64) -> Iter<'_> {
        let a = self.base.partition_point(|e| e.end() <= vseg);
        let b = self.added.partition_point(|e| e.end() <= vseg);
        Iter {
            a: &self.base[a..],
            b: &self.added[b..],
        }
    }

    /// The extent covering `vseg`, if any.
    #[inline]
    pub fn get(&self, vseg: u64) -> Option<&Extent> {
        covering(&self.base, self.base_ends, vseg).or_else(|| {
            if self.added.is_empty() {
                None
            } else {
                covering(&self.added, ends(&self.added), vseg)
            }
        })
    }

    /// Asks the core for the lines a [`LeafExtents::get`] of `vseg` reads, without
    /// waiting for them.
    #[inline]
    pub fn prefetch(&self, vseg: u64) {
        if self.base.len() >= search::MIN_GUESSED
            && let Ok(g) = search::guess(self.base.len(), self.base_ends, vseg)
        {
            search::prefetch_around(&self.base, g);
        }
        if let Some(e) = self.added.first() {
            search::prefetch(e);
        }
    }

    /// The last extent.
    pub fn last(&self) -> Option<&Extent> {
        match (self.base.last(), self.added.last()) {
            (Some(a), Some(b)) => Some(if a.vseg > b.vseg { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The `i`-th extent.
    pub fn nth(&self, i: usize) -> Option<&Extent> {
        if self.added.is_empty() {
            self.base.get(i)
        } else {
            self.iter().nth(i)
        }
    }

    /// These extents with the `edits` (sorted; each inside the leaf's span) applied, if
    /// every edit's range is a gap here, the extents they add fit beside `base`
    /// ([`MAX_ADDED`]) and the leaf stays within [`LEAF_BUDGET_BYTES`]; `None`
    /// otherwise (the caller rebuilds the leaf).
    pub fn with_inserted(&self, edits: &[Edit<'_>]) -> Option<LeafExtents> {
        let budget = self.inserted_budget(edits)?;
        let new = edits.iter().map(|e| e.extents.len()).sum::<usize>();
        let mut added = Vec::with_capacity(self.added.len() + new);
        let mut old = self.added.iter().peekable();
        for e in edits.iter().flat_map(|e| e.extents.iter()) {
            while let Some(o) = old.next_if(|o| o.vseg < e.vseg) {
                added.push(o.clone());
            }
            added.push(e.clone());
        }
        added.extend(old.cloned());
        Some(LeafExtents {
            base: self.base.clone(),
            base_ends: self.base_ends,
            added,
            budget,
        })
    }

    /// [`LeafExtents::with_inserted`] applied to these extents themselves (a leaf no
    /// one else sees, `table::replace`): true if done, false (nothing changed) where
    /// that returns `None`.
    pub fn insert_in_place(&mut self, edits: &[Edit<'_>]) -> bool {
        let Some(budget) = self.inserted_budget(edits) else {
            return false;
        };
        for e in edits.iter().flat_map(|e| e.extents.iter()) {
            let i = self.added.partition_point(|o| o.vseg < e.vseg);
            self.added.insert(i, e.clone());
        }
        self.budget = budget;
        true
    }

    /// The budget of these extents with the `edits` inserted, if
    /// [`LeafExtents::with_inserted`] accepts them.
    fn inserted_budget(&self, edits: &[Edit<'_>]) -> Option<usize> {
        let new = edits.iter().map(|e| e.extents.len()).sum::<usize>();
        if self.added.len() + new > MAX_ADDED {
            return None;
        }
        if !edits.iter().all(|ed| {
            is_gap(&self.base, self.base_ends, ed.from, ed.to)
                && is_gap(&self.added, ends(&self.added), ed.from, ed.to)
        }) {
            return None;
        }
        let budget = self.budget
            + edits
                .iter()
                .flat_map(|e| e.extents.iter())
                .map(extent_budget)
                .sum::<usize>();
        (budget <= LEAF_BUDGET_BYTES).then_some(budget)
    }
}

/// True if no extent of `exts` (sorted, non-overlapping) meets `[from, to)`: neither
/// the last extent starting at or before `from` (it may cover it) nor the first after
/// it (it may start before `to`). Found as a lookup finds an extent ([`starting_upto`]):
/// the leaf is cold when a write fault's edit comes to it.
fn is_gap(exts: &[Extent], ends: (u64, u64), from: u64, to: u64) -> bool {
    let i = starting_upto(exts, ends, from);
    (i == 0 || exts[i - 1].end() <= from) && exts.get(i).is_none_or(|e| e.vseg >= to)
}

/// The first and last starts of `exts` (sorted), for [`starting_upto`]; zeros where it
/// bisects instead (fewer than [`search::MIN_GUESSED`]), so that the small `added` run
/// a lookup searches costs no loads of its ends.
fn ends(exts: &[Extent]) -> (u64, u64) {
    match (exts.first(), exts.last()) {
        (Some(a), Some(b)) if exts.len() >= search::MIN_GUESSED => (a.vseg, b.vseg),
        _ => (0, 0),
    }
}

/// The extent of `exts` (sorted, first and last starts `ends`) covering `vseg`.
#[inline]
fn covering(exts: &[Extent], ends: (u64, u64), vseg: u64) -> Option<&Extent> {
    let i = starting_upto(exts, ends, vseg);
    if i == 0 {
        None
    } else {
        Some(&exts[i - 1]).filter(|e| e.contains(vseg))
    }
}

/// How many extents of `exts` (sorted; `ends` the starts of its first and last) start
/// at or before `vseg`: what `partition_point(|e| e.vseg <= vseg)` returns
/// ([`search::guessed_partition`]).
#[inline]
fn starting_upto(exts: &[Extent], ends: (u64, u64), vseg: u64) -> usize {
    search::guessed_partition(exts, |e| e.vseg, ends, vseg, |_| ())
}

/// A leaf's extents in order: the two sorted sequences merged.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    a: &'a [Extent],
    b: &'a [Extent],
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Extent;

    #[inline]
    fn next(&mut self) -> Option<&'a Extent> {
        let from_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x.vseg < y.vseg,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let side = if from_a { &mut self.a } else { &mut self.b };
        let (first, rest) = side.split_first()?;
        *side = rest;
        Some(first)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.a.len() + self.b.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vdisk::map::{ExtentState, Layer};
    use std::borrow::Cow;

    fn ext(vseg: u64) -> Extent {
        Extent {
            vseg,
            len: 1,
            state: ExtentState::Mapped,
            birth: 1.into(),
            layers: crate::vdisk::map::Layers::from_slice(&[Layer::partial(vseg + 1000)]),
        }
    }

    fn leaf(vsegs: &[u64]) -> LeafExtents {
        let exts: Vec<Extent> = vsegs.iter().map(|&v| ext(v)).collect();
        let budget = exts.iter().map(extent_budget).sum();
        LeafExtents::with_budget(exts, budget)
    }

    fn insert(l: &LeafExtents, v: u64) -> Option<LeafExtents> {
        let e = [ext(v)];
        l.with_inserted(&[Edit {
            from: v,
            to: v + 1,
            extents: Cow::Borrowed(&e),
        }])
    }

    proptest::proptest! {
        /// The interpolated search finds what a bisection finds, for extents spread
        /// evenly or bunched, and for keys before, between, on and after them.
        #[test]
        fn the_guessed_search_finds_what_bisection_finds(
            starts in proptest::collection::btree_set(0u64..1 << 40, 0..300),
            bunch in proptest::collection::btree_set(0u64..64, 0..40),
            probes in proptest::collection::vec(0u64..1 << 40, 1..50),
        ) {
            let mut all: std::collections::BTreeSet<u64> = starts;
            all.extend(bunch);
            let exts: Vec<Extent> = all.iter().map(|&v| ext(v)).collect();
            let keys = probes
                .into_iter()
                .chain(all.iter().flat_map(|&v| [v.saturating_sub(1), v, v + 1]));
            for v in keys {
                proptest::prop_assert_eq!(
                    starting_upto(&exts, ends(&exts), v),
                    exts.partition_point(|e| e.vseg <= v),
                    "key {}", v
                );
            }
        }
    }

    proptest::proptest! {
        /// `is_gap` answers what a look at every extent answers, for extents of several
        /// segments spread evenly or bunched, and ranges before, across and after them.
        #[test]
        fn is_gap_finds_what_a_scan_finds(
            starts in proptest::collection::btree_set(0u64..20_000, 0..300),
            lens in proptest::collection::vec(1u16..6, 300),
            probes in proptest::collection::vec((0u64..20_100, 1u64..8), 1..60),
        ) {
            let starts: Vec<u64> = starts.into_iter().collect();
            let exts: Vec<Extent> = (starts.iter().enumerate())
                .map(|(i, &v)| {
                    let room = starts.get(i + 1).map_or(u64::MAX, |&n| n - v);
                    let mut e = Extent::full(v, 1000 + v, 1);
                    e.len = (lens[i] as u64).min(room) as u16;
                    e
                })
                .collect();
            for (from, n) in probes {
                let to = from + n;
                let scan = exts.iter().all(|e| e.end() <= from || e.vseg >= to);
                proptest::prop_assert_eq!(is_gap(&exts, ends(&exts), from, to), scan, "[{}, {})", from, to);
            }
        }
    }

    fn vsegs(l: &LeafExtents) -> Vec<u64> {
        l.iter().map(|e| e.vseg).collect()
    }

    /// Inserts into gaps share the base and read back as one sorted sequence, by
    /// iteration, lookup, position and from a point on.
    #[test]
    fn inserts_into_gaps_read_as_one_sequence() {
        let base = leaf(&[10, 20, 30]);
        let mut l = insert(&base, 25).unwrap();
        for v in [5, 35, 15, 26] {
            l = insert(&l, v).unwrap();
        }
        assert!(Arc::ptr_eq(&l.base, &base.base), "the base is shared");
        assert_eq!(vsegs(&l), [5, 10, 15, 20, 25, 26, 30, 35]);
        assert_eq!(l.len(), 8);
        assert_eq!(l.budget(), l.iter().map(extent_budget).sum::<usize>());
        for v in [5, 10, 15, 20, 25, 26, 30, 35] {
            assert_eq!(l.get(v).map(|e| e.vseg), Some(v));
        }
        for v in [0, 6, 27, 36] {
            assert!(l.get(v).is_none());
        }
        assert_eq!(l.nth(4).map(|e| e.vseg), Some(25));
        assert_eq!(l.last().map(|e| e.vseg), Some(35));
        let from: Vec<u64> = l.iter_from(21).map(|e| e.vseg).collect();
        assert_eq!(from, [25, 26, 30, 35]);
    }

    /// An edit over an extent, a full `added` or a full budget is refused: the table
    /// rebuilds the leaf.
    #[test]
    fn edits_that_are_not_inserts_into_gaps_are_refused() {
        let base = leaf(&[10, 20]);
        assert!(insert(&base, 10).is_none(), "over an extent of the base");
        let l = insert(&base, 15).unwrap();
        assert!(insert(&l, 15).is_none(), "over an added extent");
        let wide = [ext(11)];
        let over = Edit {
            from: 11,
            to: 21,
            extents: Cow::Borrowed(&wide),
        };
        assert!(
            base.with_inserted(&[over]).is_none(),
            "a range that meets 20"
        );
        let mut l = base;
        for v in 0..MAX_ADDED as u64 {
            l = insert(&l, 100 + v).unwrap();
        }
        assert!(insert(&l, 1000).is_none(), "beyond MAX_ADDED");
        let per = extent_budget(&ext(5000));
        let full: Vec<u64> = (0..(LEAF_BUDGET_BYTES / per) as u64)
            .map(|v| 5000 + 2 * v)
            .collect();
        let l = leaf(&full);
        assert!(insert(&l, 4000).is_none(), "beyond the leaf budget");
    }
}
