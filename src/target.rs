//! A running target: the reactors, the bdevs, and everything built on them from a
//! [`Config`]. `tessera serve` and `tessera bench --config` both start one.

use crate::bdev::error::ErrorBdev;
use crate::bdev::malloc::MallocBdev;
use crate::bdev::null::NullBdev;
use crate::bdev::uring::UringBdev;
use crate::bdev::{Bdev, BdevError, BdevRegistry};
use crate::config::{BdevConfig, Config};
use crate::reactor::{Cores, ReactorConfig, ReactorError, ReactorSet};
use std::sync::Arc;

/// Why a target could not start.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("reactors: {0}")]
    Reactor(#[from] ReactorError),
    #[error("{0}")]
    Bdev(#[from] BdevError),
}

/// A running target.
pub struct Target {
    reactors: ReactorSet,
    bdevs: BdevRegistry,
    config: Config,
}

impl Target {
    /// Starts reactors and creates everything `config` describes.
    pub fn start(config: Config) -> Result<Target, TargetError> {
        let reactors = ReactorSet::start(ReactorConfig::new(config.cores.clone(), config.idle))?;
        let target = Target {
            reactors,
            bdevs: BdevRegistry::new(),
            config: config.clone(),
        };
        for b in &config.bdevs {
            target.create_bdev(b)?;
        }
        Ok(target)
    }

    /// Creates a base bdev and registers it.
    pub fn create_bdev(&self, cfg: &BdevConfig) -> Result<Arc<dyn Bdev>, BdevError> {
        if self.bdevs.contains(cfg.name()) {
            return Err(BdevError::Exists(cfg.name().to_string()));
        }
        let bdev = create_bdev(cfg, &self.bdevs)?;
        self.bdevs.add(bdev.clone())?;
        tracing::info!(
            bdev = bdev.name(),
            product = bdev.product_name(),
            num_blocks = bdev.num_blocks(),
            block_size = bdev.block_size(),
            "bdev created"
        );
        Ok(bdev)
    }

    /// The cores the target runs on.
    pub fn cores(&self) -> &Cores {
        self.reactors.cores()
    }

    /// The bdevs of the target.
    pub fn bdevs(&self) -> &BdevRegistry {
        &self.bdevs
    }

    /// The configuration the target started from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Stops everything and joins the reactors.
    pub fn shutdown(mut self) {
        self.reactors.shutdown();
    }
}

/// Builds a base bdev from its configuration (`error` bdevs look their base up in
/// `registry`).
pub fn create_bdev(cfg: &BdevConfig, registry: &BdevRegistry) -> Result<Arc<dyn Bdev>, BdevError> {
    let blocks = |name: &str, size: u64, bs: u32| {
        if bs == 0 || !size.is_multiple_of(bs as u64) {
            return Err(BdevError::InvalidParam {
                name: name.to_string(),
                field: "size",
                reason: format!("{size} bytes is not a multiple of the block size {bs}"),
            });
        }
        Ok(size / bs as u64)
    };
    Ok(match cfg {
        BdevConfig::Malloc {
            name,
            size,
            block_size,
            uuid,
        } => MallocBdev::create(name, blocks(name, size.0, *block_size)?, *block_size, *uuid)?,
        BdevConfig::Null {
            name,
            size,
            block_size,
            uuid,
        } => NullBdev::create(name, blocks(name, size.0, *block_size)?, *block_size, *uuid)?,
        BdevConfig::Uring {
            name,
            path,
            size,
            block_size,
            uuid,
            options,
        } => UringBdev::create(
            name,
            path,
            *block_size,
            size.map(|s| s.0),
            *uuid,
            options.clone(),
        )?,
        BdevConfig::Error {
            name,
            base,
            volatile_cache,
        } => ErrorBdev::create(name, registry.get(base)?, *volatile_cache)?,
    })
}
