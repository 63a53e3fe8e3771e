//! Pieces the benchmark programs in `bench/` share.
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use tessera::bdev::{Bdev, BdevIo, Channel, IoBuf, IoSink, IoStatus};
use tessera::reactor::{Cores, block_on};

/// Counts completions; every request must succeed.
struct Done(Cell<u64>);

impl IoSink for Done {
    fn io_done(&self, _io: BdevIo, status: IoStatus) {
        assert_eq!(status, IoStatus::Success);
        self.0.set(self.0.get() + 1);
    }
}

/// Maps every one of the `segs` 1 MiB segments of `disk` (4 KiB blocks) by writing one
/// block into each, 64 writes in flight, from core 0.
pub fn write_every_segment(cores: &Cores, disk: &Arc<dyn Bdev>, segs: u64) {
    let d = disk.clone();
    block_on(cores.spawn_on(0, move || async move {
        let ch = Channel::get(&d).unwrap();
        let sink = Rc::new(Done(Cell::new(0)));
        let mut issued = 0u64;
        while sink.0.get() < segs {
            while issued < segs && issued - sink.0.get() < 64 {
                ch.submit(
                    BdevIo::write(issued * 256, 1, IoBuf::new(4096))
                        .on_complete(sink.clone(), issued),
                );
                issued += 1;
            }
            tessera::reactor::yield_now().await;
        }
    }))
    .unwrap();
}
