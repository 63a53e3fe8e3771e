//! The set of bdevs of a running target, by name. Control-plane only: the I/O path
//! holds `Arc<dyn Bdev>` and channels, never the registry.

use super::{Bdev, BdevError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Entry {
    bdev: Option<Arc<dyn Bdev>>,
    claims: Vec<String>,
}

/// Named bdevs, with claims (a pool or an export using a bdev keeps it from deletion).
#[derive(Default, Clone)]
pub struct BdevRegistry {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl BdevRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `bdev`; fails if the name is taken.
    pub fn add(&self, bdev: Arc<dyn Bdev>) -> Result<(), BdevError> {
        let mut m = self.lock();
        let name = bdev.name().to_string();
        if m.contains_key(&name) {
            return Err(BdevError::Exists(name));
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

    /// The bdev called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        self.lock()
            .get(name)
            .and_then(|e| e.bdev.clone())
            .ok_or_else(|| BdevError::NotFound(name.to_string()))
    }

    /// True if a bdev is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Every bdev, by name.
    pub fn list(&self) -> Vec<Arc<dyn Bdev>> {
        self.lock()
            .values()
            .filter_map(|e| e.bdev.clone())
            .collect()
    }

    /// Marks `name` as used by `by`.
    pub fn claim(&self, name: &str, by: &str) -> Result<(), BdevError> {
        let mut m = self.lock();
        let e = m
            .get_mut(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        e.claims.push(by.to_string());
        Ok(())
    }

    /// Removes one claim of `by` on `name`.
    pub fn release(&self, name: &str, by: &str) {
        if let Some(e) = self.lock().get_mut(name)
            && let Some(i) = e.claims.iter().position(|c| c == by)
        {
            e.claims.remove(i);
        }
    }

    /// Who uses `name`.
    pub fn claims(&self, name: &str) -> Vec<String> {
        self.lock()
            .get(name)
            .map(|e| e.claims.clone())
            .unwrap_or_default()
    }

    /// Removes `name` if nobody claims it, and returns it.
    pub fn remove(&self, name: &str) -> Result<Arc<dyn Bdev>, BdevError> {
        let mut m = self.lock();
        let e = m
            .get(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        if let Some(by) = e.claims.first() {
            return Err(BdevError::Claimed {
                name: name.to_string(),
                by: by.clone(),
            });
        }
        let e = m.remove(name).expect("present");
        let bdev = e.bdev.expect("registered bdevs are present");
        drop(m);
        bdev.on_remove();
        Ok(bdev)
    }
}
