//! Searches of the sorted keys in a table's nodes: the starts of a leaf's extents, the
//! first segments of an internal node's children.
//!
//! On a big disk written at random the table is far larger than the cache, and a
//! descent is a chain of cache misses, each waited for before the next address is
//! known. These searches guess where a key sits from the ends (kept beside the node,
//! in a line the descent reads anyway), ask for the lines around the guess at once, and
//! gallop from it through lines already on their way.

/// Fewer keys than this are bisected: their lines are few, and a guess saves nothing.
pub const MIN_GUESSED: usize = 16;

/// How many of `items` (sorted by `key`; `ends` the keys of the first and the last)
/// have keys at or before `k`: what `partition_point(|x| key(x) <= k)` returns, found
/// from where `k` would sit if the keys were spread evenly between the first and the
/// last ([`guess`]), and galloping from there ([`gallop`]). A table's leaves and nodes
/// on a disk written at random are spread about evenly, so the answer lies a few items
/// from the guess: the cache lines around it are asked for at once
/// ([`prefetch_around`]), and the gallop finds them in the cache instead of waiting for
/// each in turn, where a bisection of two hundred items waits for seven or eight.
/// `also` is given the guess, to ask for lines of its own (an internal node's children's
/// pointers) before the gallop waits.
#[inline]
pub fn guessed_partition<T>(
    items: &[T],
    key: impl Fn(&T) -> u64,
    ends: (u64, u64),
    k: u64,
    also: impl FnOnce(usize),
) -> usize {
    if items.len() < MIN_GUESSED {
        return items.partition_point(|x| key(x) <= k);
    }
    debug_assert_eq!(ends, (key(&items[0]), key(&items[items.len() - 1])));
    match guess(items.len(), ends, k) {
        Ok(g) => {
            prefetch_around(items, g);
            also(g);
            gallop(items, key, g, k)
        }
        Err(i) => i,
    }
}

/// Where `k` would sit among `n` sorted keys (`n` ≥ 2; `(first, last)` the first and
/// the last) spread evenly: `Ok` with the guessed index, in `[0, n - 1)`, when `k` lies
/// at or after the first key and before the last; `Err` with the answer of
/// [`guessed_partition`] when it does not (0 before the first, `n` at or after the last).
#[inline]
pub fn guess(n: usize, (first, last): (u64, u64), k: u64) -> Result<usize, usize> {
    if k < first {
        return Err(0);
    }
    if k >= last {
        return Err(n);
    }
    // Here the first key is at or before `k` and the last after it, so last > first.
    Ok(((k - first) as u128 * (n - 1) as u128 / (last - first) as u128) as usize)
}

/// [`guessed_partition`] from the guess `g`, where `key(items[0]) <= k <
/// key(items[n - 1])`: the answer lies in `[1, n - 1]`.
#[inline]
pub fn gallop<T>(items: &[T], key: impl Fn(&T) -> u64, g: usize, k: u64) -> usize {
    let n = items.len();
    let mut step = 1;
    if key(&items[g]) <= k {
        // Above `g`: items[lo - 1] is at or before `k`.
        let mut lo = g + 1;
        loop {
            let hi = (g + step).min(n - 1);
            if key(&items[hi]) > k {
                return lo + items[lo..hi].partition_point(|x| key(x) <= k);
            }
            lo = hi + 1;
            step *= 2;
        }
    } else {
        // At or below `g`: items[hi] is after `k`.
        let mut hi = g;
        loop {
            let lo = g.saturating_sub(step);
            if key(&items[lo]) <= k {
                return lo + 1 + items[lo + 1..hi].partition_point(|x| key(x) <= k);
            }
            hi = lo;
            step *= 2;
        }
    }
}

/// Items on each side of a guess whose cache lines a search asks for at once: about
/// the spread of the guess over evenly spread keys (its error grows as the square root
/// of their number, ~6 for 150).
const PREFETCH_SPAN: usize = 8;

/// Asks the core for the cache lines of `items[g - PREFETCH_SPAN ..= g + PREFETCH_SPAN]`.
#[inline]
pub fn prefetch_around<T>(items: &[T], g: usize) {
    let lo = g.saturating_sub(PREFETCH_SPAN);
    let hi = (g + PREFETCH_SPAN).min(items.len() - 1);
    let line = (64 / std::mem::size_of::<T>().max(1)).max(1);
    for x in items[lo..=hi].iter().step_by(line) {
        prefetch(x);
    }
    prefetch(&items[hi]);
}

/// Asks the core to bring the cache line holding `*r` into its cache: for a search
/// that will read it soon, so that several misses overlap instead of each waited for
/// in turn. A hint only; a no-op off x86_64.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 processor has; a prefetch
        // reads nothing the program sees and cannot fault, and `r` is a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
