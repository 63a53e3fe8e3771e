//! The set of bdevs of a running target. Control-plane only: the I/O path holds
//! `Arc<dyn Bdev>` and channels, never the registry.
//!
//! Each bdev is kept under its unique name (a virtual disk's is its UUID, as SPDK names
//! lvol bdevs). [`BdevRegistry::get`] is the one resolver every consumer uses (RPC,
//! YAML and SPDK JSON configurations, `tessera bench`, NBD and NVMe-oF exports); it
//! resolves, in this order, as SPDK does and a little more:
//! 1. the name;
//! 2. an alias (`lvs_name/lvol_name` for a virtual disk; it follows renames);
//! 3. a UUID (any spelling `uuid` parses);
//! 4. a short name (a virtual disk's name within its pool), when exactly one bdev has
//!    it; when several do, [`BdevError::Ambiguous`] lists them.

use super::{Bdev, BdevError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Entry {
    bdev: Option<Arc<dyn Bdev>>,
    claims: Vec<String>,
}

/// Bdevs by unique name, with claims (a pool or an export using a bdev keeps it from
/// deletion).
#[derive(Default, Clone)]
pub struct BdevRegistry {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

/// The key of the entry `name` designates (see the module documentation).
fn key_of(m: &BTreeMap<String, Entry>, name: &str) -> Result<String, BdevError> {
    if m.contains_key(name) {
        return Ok(name.to_string());
    }
    let bdevs = || {
        m.iter()
            .filter_map(|(k, e)| e.bdev.as_ref().map(|b| (k, b)))
    };
    if let Some((k, _)) = bdevs().find(|(_, b)| b.aliases().iter().any(|a| a == name)) {
        return Ok(k.clone());
    }
    if let Ok(u) = uuid::Uuid::parse_str(name)
        && let Some((k, _)) = bdevs().find(|(_, b)| b.uuid() == u)
    {
        return Ok(k.clone());
    }
    let short: Vec<(&String, &Arc<dyn Bdev>)> = bdevs()
        .filter(|(_, b)| b.short_names().iter().any(|s| s == name))
        .collect();
    match short.as_slice() {
        [] => Err(BdevError::NotFound(name.to_string())),
        [(k, _)] => Ok((*k).clone()),
        many => Err(BdevError::Ambiguous {
            name: name.to_string(),
            candidates: many.iter().map(|(_, b)| b.display_name()).collect(),
        }),
    }
}

impl BdevRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `bdev`; fails if its name is taken (as a name or an alias).
    pub fn add(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let mut m = self.lock();
        let name = bdev.name().to_string();
        let taken = |n: &str| {
            m.contains_key(n)
                || m.values()
                    .filter_map(|e| e.bdev.as_ref())
                    .any(|b| b.aliases().iter().any(|a| a == n))
        };
        if taken(&name) {
            return Err(BdevError::Exists(name));
        }
        if let Some(a) = bdev.aliases().into_iter().find(|a| taken(a)) {
            return Err(BdevError::Exists(a));
        }
        m.insert(
            name,
            Entry {
                bdev: Some(bdev),
                claims: Vec::new(),
            },
        );
        Ok(())
    }

    /// The bdev `name` designates: its name, an alias, its UUID, or an unambiguous
    /// short name (the module documentation has the rules).
    pub fn get(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let m = self.lock();
        let k = key_of(&m, name)?;
        m.get(&k)
            .and_then(|e| e.bdev.clone())
            .ok_or(BdevError::NotFound(k))
    }

    /// The unique name of the bdev `name` designates (as [`BdevRegistry::get`]).
    pub fn resolve(&self, name: &str) -> Result<String, BdevError> {
        key_of(&self.lock(), name)
    }

    /// True if `name` designates a bdev (an ambiguous short name designates several).
    pub fn contains(&self, name: &str) -> bool {
        match key_of(&self.lock(), name) {
            Ok(_) | Err(BdevError::Ambiguous { .. }) => true,
            Err(_) => false,
        }
    }

    /// Every bdev, by name.
    pub fn list(&self) -> Vec<Arc<dyn Bdev>> {
        self.lock()
            .values()
            .filter_map(|e| e.bdev.clone())
            .collect()
    }

    /// Marks the bdev `name` designates as used by `by`; returns its unique name.
    pub fn claim(&self, name: &str, by: &str) -> Result<String, BdevError> {
        let mut m = self.lock();
        let k = key_of(&m, name)?;
        if let Some(e) = m.get_mut(&k) {
            e.claims.push(by.to_string());
        }
        Ok(k)
    }

    /// Removes one claim of `by` on the bdev `name` designates.
    pub fn release(&self, name: &str, by: &str) {
        let mut m = self.lock();
        if let Ok(k) = key_of(&m, name)
            && let Some(e) = m.get_mut(&k)
            && let Some(i) = e.claims.iter().position(|c| c == by)
        {
            e.claims.remove(i);
        }
    }

    /// Renames the claim `by` on the bdev `name` designates to `new_by`.
    pub fn rename_claim(&self, name: &str, by: &str, new_by: &str) {
        let mut m = self.lock();
        if let Ok(k) = key_of(&m, name)
            && let Some(e) = m.get_mut(&k)
            && let Some(c) = e.claims.iter_mut().find(|c| *c == by)
        {
            *c = new_by.to_string();
        }
    }

    /// Who uses the bdev `name` designates.
    pub fn claims(&self, name: &str) -> Vec<String> {
        let m = self.lock();
        key_of(&m, name)
            .ok()
            .and_then(|k| m.get(&k))
            .map(|e| e.claims.clone())
            .unwrap_or_default()
    }

    /// Removes the bdev `name` designates if nobody claims it, and returns it.
    pub fn remove(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let mut m = self.lock();
        let k = key_of(&m, name)?;
        let e = m.get(&k).ok_or_else(|| BdevError::NotFound(k.clone()))?;
        if let Some(by) = e.claims.first() {
            return Err(BdevError::Claimed {
                name: e
                    .bdev
                    .as_ref()
                    .map_or_else(|| k.clone(), |b| b.display_name()),
                by: by.clone(),
            });
        }
        let Some(bdev) = m.remove(&k).and_then(|e| e.bdev) else {
            return Err(BdevError::NotFound(k));
        };
        drop(m);
        bdev.props().qos.mark_removed();
        bdev.on_remove();
        Ok(bdev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::{BdevChannel, BdevProps};
    use std::rc::Rc;

    /// A bdev named by UUID with an alias and a short name, as a virtual disk is.
    struct Lvol {
        props: BdevProps,
        alias: String,
        short: String,
    }

    impl Bdev for Lvol {
        fn props(&self) -> &BdevProps {
            &self.props
        }
        fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
            Err(BdevError::Channel {
                name: self.alias.clone(),
                reason: "test bdev".into(),
            })
        }
        fn aliases(&self) -> Vec<String> {
            vec![self.alias.clone()]
        }
        fn short_names(&self) -> Vec<String> {
            vec![self.short.clone()]
        }
    }

    fn lvol(pool: &str, disk: &str) -> Arc<dyn Bdev> {
        let u = uuid::Uuid::new_v4();
        Arc::new(Lvol {
            props: BdevProps::new(&u.to_string(), Some(u), 512, 8, "Logical Volume").unwrap(),
            alias: format!("{pool}/{disk}"),
            short: disk.into(),
        })
    }

    #[test]
    fn resolves_names_aliases_uuids_and_unambiguous_short_names() {
        let r = BdevRegistry::new();
        let a = lvol("p0", "vd0");
        let b = lvol("p1", "vd0");
        let c = lvol("p1", "vd1");
        for x in [&a, &b, &c] {
            r.add(x.clone()).unwrap();
        }
        let same = |x: &Arc<dyn Bdev>, y: &Arc<dyn Bdev>| Arc::ptr_eq(x, y);
        assert!(same(&r.get("p0/vd0").unwrap(), &a));
        assert!(same(&r.get("p1/vd0").unwrap(), &b));
        assert!(same(&r.get(a.name()).unwrap(), &a));
        assert!(same(
            &r.get(&b.uuid().to_string().to_uppercase()).unwrap(),
            &b
        ));
        assert!(same(&r.get("vd1").unwrap(), &c));
        match r.get("vd0") {
            Err(e @ BdevError::Ambiguous { .. }) => {
                let m = e.to_string();
                assert!(m.contains("`p0/vd0`") && m.contains("`p1/vd0`"), "{m}");
            }
            other => panic!(
                "vd0 should be ambiguous: {:?}",
                other.map(|b| b.display_name())
            ),
        }
        assert!(matches!(r.get("p2/vd0"), Err(BdevError::NotFound(_))));
        // Claims follow the bdev whatever it is called.
        assert_eq!(r.claim("p1/vd0", "me").unwrap(), b.name());
        assert_eq!(r.claims(b.name()), vec!["me".to_string()]);
        assert!(matches!(r.remove("p1/vd0"), Err(BdevError::Claimed { .. })));
        r.release(&b.uuid().to_string(), "me");
        r.remove("p1/vd0").unwrap();
        assert!(same(&r.get("vd0").unwrap(), &a));
        // An alias is as taken as a name.
        assert!(matches!(r.add(lvol("p0", "vd0")), Err(BdevError::Exists(n)) if n == "p0/vd0"));
    }
}
