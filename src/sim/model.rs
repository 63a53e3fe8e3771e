//! The simulator's oracle: what every block of every disk may hold.
//!
//! A block's value is a *tag*: 0 for zeros, else the unique number of one block-write
//! (every byte pattern the workload writes encodes its tag, see [`pattern`]). The model
//! keeps, per block, the set of tags the block may hold now, the set it may hold after
//! a power loss as of the last completed flush (`durable`), and the tags written since
//! (`since`). Operations run in **waves**: every operation of a wave may overlap every
//! other, waves do not overlap. So a read may return any tag possible before its wave
//! or written in its wave; after the wave a block written once (successfully) holds
//! that tag, a block written several times any of them, and a block whose write failed
//! either its old or its new tag.
//!
//! A power loss widens each block to `durable ∪ since` — its tag at the last completed
//! flush, or any tag written later — and nothing else. A read then pins the block to
//! what it returned.

use std::collections::{BTreeMap, BTreeSet};

/// A block's value: 0 is zeros, anything else the tag of one block-write.
pub type Tag = u64;

/// The tags a block may hold.
pub type Possible = BTreeSet<Tag>;

/// How sure the model is that a disk exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existence {
    /// Its creation was acknowledged (and its deletion was not attempted).
    Yes,
    /// Its creation or deletion was in flight when the power failed.
    Maybe,
}

/// One disk as the model knows it.
#[derive(Clone, Debug)]
pub struct DiskModel {
    pub name: String,
    pub snapshot: bool,
    pub read_only: bool,
    pub exists: Existence,
    pub now: Vec<Possible>,
    pub durable: Vec<Possible>,
    pub since: Vec<Possible>,
    /// The disk it was cloned or snapshotted from (lineage, for choosing operations).
    pub parent: Option<String>,
    /// Its blocks nothing wrote read through to the golden image (an external-snapshot
    /// clone, its snapshots and their clones).
    pub external: bool,
    /// The name the disk's family started with: a disk snapshotted or cloned from
    /// another, or given another as its parent, joins that one's family, and no
    /// operation takes it out (a superset of the disks that may read through it).
    pub family: String,
}

impl DiskModel {
    /// A new disk of `blocks` zero blocks.
    pub fn zeroed(name: &str, blocks: u64) -> DiskModel {
        let z: Possible = [0].into();
        DiskModel {
            name: name.into(),
            snapshot: false,
            read_only: false,
            exists: Existence::Yes,
            now: vec![z.clone(); blocks as usize],
            durable: vec![z; blocks as usize],
            since: vec![Possible::new(); blocks as usize],
            parent: None,
            external: false,
            family: name.into(),
        }
    }

    /// A disk whose blocks may hold `content` (a snapshot or a clone); what it holds is
    /// durable already (the operation commits).
    pub fn copy_of(name: &str, content: Vec<Possible>, parent: &str, snapshot: bool) -> DiskModel {
        let n = content.len();
        DiskModel {
            name: name.into(),
            snapshot,
            read_only: snapshot,
            exists: Existence::Yes,
            durable: content.clone(),
            now: content,
            since: vec![Possible::new(); n],
            parent: Some(parent.into()),
            external: false,
            family: name.into(),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.now.len() as u64
    }

    /// Changes the size: new blocks are zeros.
    pub fn resize(&mut self, blocks: u64) {
        let z: Possible = [0].into();
        let n = blocks as usize;
        self.now.resize(n, z.clone());
        self.durable.resize(n, z);
        self.since.resize(n, Possible::new());
    }

    /// Changes the size of a disk whose blocks nothing wrote read through to the golden
    /// image (an external snapshot): a new block `b` reads `below(b)` (the golden
    /// image's tag, zeros past its end) — or zeros, where the disk holds zeros it made
    /// before it read through (a shrink's cleared tail, say), which the model does not
    /// track.
    pub fn resize_over(&mut self, blocks: u64, below: impl Fn(u64) -> Tag) {
        let old = self.now.len() as u64;
        self.resize(blocks);
        for b in old..blocks {
            let mut p: Possible = [0].into();
            p.insert(below(b));
            self.now[b as usize] = p.clone();
            self.durable[b as usize] = p;
        }
    }

    /// After a power loss: each block holds its tag at the last completed flush or one
    /// written since.
    pub fn power_loss(&mut self) {
        for b in 0..self.now.len() {
            let mut p = std::mem::take(&mut self.durable[b]);
            p.extend(std::mem::take(&mut self.since[b]));
            self.now[b] = p.clone();
            self.durable[b] = p;
        }
    }
}

/// A modification of one block inside a wave.
#[derive(Clone, Copy, Debug)]
pub struct Modification {
    pub tag: Tag,
    pub ok: bool,
    pub fua: bool,
}

/// What one wave did to one disk, per block.
#[derive(Default, Debug)]
pub struct WaveEffects {
    pub mods: BTreeMap<u64, Vec<Modification>>,
    /// Blocks a read pinned: (block, tag seen) — valid only where nothing was modified.
    pub seen: Vec<(u64, Tag)>,
    /// A flush of the disk completed in the wave.
    pub flushed: bool,
}

impl WaveEffects {
    /// The tags a read in this wave may see at `block`: before the wave, or written in it.
    pub fn allowed(&self, before: &Possible, block: u64) -> Possible {
        let mut p = before.clone();
        if let Some(ms) = self.mods.get(&block) {
            p.extend(ms.iter().map(|m| m.tag));
        }
        p
    }
}

impl DiskModel {
    /// Applies a finished wave's effects.
    pub fn end_wave(&mut self, fx: &WaveEffects) {
        if fx.flushed {
            // Everything that completed before the wave is durable now; what the wave
            // wrote may or may not be.
            for b in 0..self.now.len() {
                self.durable[b] = self.now[b].clone();
                self.since[b].clear();
            }
        }
        for &(b, tag) in &fx.seen {
            if (b as usize) < self.now.len() && !fx.mods.contains_key(&b) {
                self.now[b as usize] = [tag].into();
            }
        }
        for (&b, ms) in &fx.mods {
            let b = b as usize;
            if b >= self.now.len() {
                continue;
            }
            let succeeded: Possible = ms.iter().filter(|m| m.ok).map(|m| m.tag).collect();
            let failed: Possible = ms.iter().filter(|m| !m.ok).map(|m| m.tag).collect();
            let mut now = if succeeded.is_empty() {
                self.now[b].clone()
            } else {
                succeeded.clone()
            };
            now.extend(failed.iter().copied());
            self.now[b] = now;
            // Durability: a FUA write alone in its wave is durable; everything else
            // may be lost until a flush.
            let fua_alone = ms.len() == 1 && ms[0].ok && ms[0].fua;
            if fua_alone {
                self.durable[b] = [ms[0].tag].into();
                self.since[b].clear();
            } else {
                self.since[b].extend(ms.iter().map(|m| m.tag));
                if ms.iter().any(|m| m.fua && m.ok) {
                    // Durable, but so may be the others of the wave.
                    self.durable[b].extend(ms.iter().map(|m| m.tag));
                }
            }
        }
    }
}

/// The byte pattern of tag `tag` in a block of `len` bytes: the tag in every 8 bytes.
pub fn pattern(tag: Tag, out: &mut [u8]) {
    for c in out.chunks_mut(8) {
        c.copy_from_slice(&tag.to_le_bytes()[..c.len()]);
    }
}

/// The tag a block holds, or `None` if its bytes are no tag's pattern (data that was
/// never written).
pub fn tag_of(block: &[u8]) -> Option<Tag> {
    let t = u64::from_le_bytes(block.get(..8)?.try_into().ok()?);
    block
        .chunks(8)
        .all(|c| c == &t.to_le_bytes()[..c.len()])
        .then_some(t)
}

/// Formats a set of tags briefly.
pub fn show(p: &Possible) -> String {
    let v: Vec<String> = p.iter().take(6).map(|t| format!("{t:#x}")).collect();
    if p.len() > 6 {
        format!("{{{}, … {} in all}}", v.join(", "), p.len())
    } else {
        format!("{{{}}}", v.join(", "))
    }
}
