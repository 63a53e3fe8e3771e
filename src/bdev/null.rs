//! The `null` bdev: any size, no data. Writes are discarded, reads leave the buffer as
//! it is. It measures the cost of the stack itself.

use super::{Bdev, BdevChannel, BdevError, BdevIo, BdevProps, Deferred, IoStatus};
use std::rc::Rc;
use std::sync::Arc;
use uuid::Uuid;

/// A bdev that stores nothing.
pub struct NullBdev {
    props: BdevProps,
}

impl NullBdev {
    /// A null bdev of `num_blocks` blocks of `block_size` bytes.
    pub fn create(
        name: &str,
        num_blocks: u64,
        block_size: u32,
        uuid: Option<Uuid>,
    ) -> Result<Arc<NullBdev>, BdevError> {
        Ok(Arc::new(NullBdev {
            props: BdevProps::new(name, uuid, block_size, num_blocks, "Null disk")?,
        }))
    }
}

impl Bdev for NullBdev {
    fn props(&self) -> &BdevProps {
        &self.props
    }

    fn create_channel(self: Arc<Self>) -> Result<Rc<dyn BdevChannel>, BdevError> {
        Ok(Rc::new(NullChannel {
            deferred: Deferred::current(),
        }))
    }
}

struct NullChannel {
    deferred: Rc<Deferred>,
}

impl BdevChannel for NullChannel {
    #[inline]
    fn submit(&self, io: BdevIo) {
        self.deferred.complete(io, IoStatus::Success);
    }

    fn tracks_drain(&self) -> bool {
        true
    }

    fn drained(&self) -> Option<super::Drained> {
        Some(self.deferred.drained())
    }
}
