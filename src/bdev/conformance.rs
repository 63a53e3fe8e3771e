//! The bdev conformance suite, run over every backend: data round trips (single and
//! vectored), flush, unmap and write-zeroes, and the status of each kind of bad request.
//! Backend-specific tests (the error bdev's rules and power-loss mode) follow.

use super::error::{ErrorBdev, FailRule, Trigger};
use super::malloc::MallocBdev;
use super::null::NullBdev;
use super::uring::{UringBdev, UringOptions};
use super::*;
use crate::reactor::{IdlePolicy, ReactorSet, block_on};
use std::cell::Cell;
use std::time::Duration;

fn reactors(idle: IdlePolicy) -> ReactorSet {
    ReactorSet::for_tests(1, idle)
}

fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
    idle: IdlePolicy,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    let set = reactors(idle);
    block_on(set.cores().spawn_on(0, f)).unwrap()
}

fn pattern(seed: u64, len: usize) -> IoBuf {
    let mut b = IoBuf::new(len);
    let mut rng = fastrand::Rng::with_seed(seed);
    rng.fill(&mut b);
    b
}

/// Compares buffers, reporting the first difference instead of both buffers.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: {} != {}",
            got[i], want[i]
        );
    }
}

/// What a backend keeps: null keeps nothing.
#[derive(Clone, Copy, PartialEq)]
enum Keeps {
    Data,
    Nothing,
}

async fn conformance(bdev: Arc<dyn Bdev>, keeps: Keeps) {
    let ch = Channel::get(&bdev).unwrap();
    let bs = bdev.block_size() as usize;
    let nb = bdev.num_blocks();

    // Round trips at the start, the middle and the very end, 1 and 8 blocks.
    for (i, &(off, n)) in [(0u64, 1u64), (nb / 2, 8), (nb - 8, 8), (nb - 1, 1)]
        .iter()
        .enumerate()
    {
        let data = pattern(i as u64, n as usize * bs);
        let expect = data.to_vec();
        ch.write(off, data).await.unwrap();
        let got = ch.read(off, n).await.unwrap();
        if keeps == Keeps::Data {
            assert_same(
                &got,
                &expect,
                &format!("{}: round trip at {off}+{n}", bdev.name()),
            );
        }
    }

    // Vectored write of three buffers, vectored read into two.
    let parts = [pattern(10, bs), pattern(11, 2 * bs), pattern(12, bs)];
    let mut whole = Vec::new();
    for p in &parts {
        whole.extend_from_slice(p);
    }
    let (_, st) = ch
        .io(BdevIo::writev(16, 4, parts.into_iter().collect()))
        .await;
    assert_eq!(st, IoStatus::Success);
    let (mut io, st) = ch
        .io(BdevIo::readv(
            16,
            4,
            vec![IoBuf::new(3 * bs), IoBuf::new(bs)],
        ))
        .await;
    assert_eq!(st, IoStatus::Success);
    if keeps == Keeps::Data {
        let bufs = io.take_bufs();
        let got: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        assert_same(
            &got,
            &whole,
            &format!("{}: vectored round trip", bdev.name()),
        );
    }

    ch.flush().await.unwrap();

    // Unmap and write-zeroes.
    ch.write(32, pattern(20, 4 * bs)).await.unwrap();
    ch.write_zeroes(32, 2).await.unwrap();
    ch.unmap(34, 2).await.unwrap();
    if keeps == Keeps::Data {
        let got = ch.read(32, 2).await.unwrap();
        assert!(
            got.iter().all(|&b| b == 0),
            "{}: write-zeroes reads zeros",
            bdev.name()
        );
        if bdev.unmap_reads_zeroes() {
            let got = ch.read(34, 2).await.unwrap();
            assert!(
                got.iter().all(|&b| b == 0),
                "{}: unmap reads zeros",
                bdev.name()
            );
        }
    }

    // Bad requests, each with its status, none reaching the backend.
    let cases: Vec<(BdevIo, IoStatus, &str)> = vec![
        (
            BdevIo::read(nb, 1, IoBuf::new(bs)),
            IoStatus::LbaOutOfRange,
            "read past the end",
        ),
        (
            BdevIo::write(nb - 1, 2, IoBuf::new(2 * bs)),
            IoStatus::LbaOutOfRange,
            "write across the end",
        ),
        (
            BdevIo::read(u64::MAX, 2, IoBuf::new(2 * bs)),
            IoStatus::LbaOutOfRange,
            "offset overflow",
        ),
        (
            BdevIo::unmap(nb, 1),
            IoStatus::LbaOutOfRange,
            "unmap past the end",
        ),
        (
            BdevIo::write_zeroes(1, nb),
            IoStatus::LbaOutOfRange,
            "write-zeroes past the end",
        ),
        (
            BdevIo::read(0, 0, IoBuf::new(0)),
            IoStatus::InvalidField,
            "zero blocks",
        ),
        (
            BdevIo::read(0, 2, IoBuf::new(bs)),
            IoStatus::InvalidField,
            "buffer shorter than the range",
        ),
        (
            BdevIo::write(0, 1, IoBuf::new(2 * bs)),
            IoStatus::InvalidField,
            "buffer longer than the range",
        ),
        (
            BdevIo::unmap(0, 0),
            IoStatus::InvalidField,
            "zero-length unmap",
        ),
    ];
    for (io, want, what) in cases {
        let (_, st) = ch.io(io).await;
        assert_eq!(st, want, "{}: {what}", bdev.name());
    }
    if bdev.buf_align() > 1 {
        // A buffer that starts off alignment.
        let mut b = IoBuf::new(2 * bs);
        let p = b.as_mut_ptr();
        // SAFETY: the iovec lies inside `b`, which outlives the request (awaited below).
        let io = unsafe {
            BdevIo::from_raw_iovs(
                IoKind::Read,
                0,
                1,
                &[libc::iovec {
                    iov_base: p.add(1).cast(),
                    iov_len: bs,
                }],
            )
        };
        let (_, st) = ch.io(io).await;
        assert_eq!(
            st,
            IoStatus::InvalidField,
            "{}: misaligned buffer",
            bdev.name()
        );
        drop(b);
    }

    // Completions never run inside submit.
    struct Flag(Cell<bool>);
    impl IoSink for Flag {
        fn io_done(&self, _io: BdevIo, _s: IoStatus) {
            self.0.set(true);
        }
    }
    let flag = Rc::new(Flag(Cell::new(false)));
    ch.submit(BdevIo::read(0, 1, IoBuf::new(bs)).on_complete(flag.clone(), 0));
    assert!(!flag.0.get(), "{}: completed inline", bdev.name());
    ch.submit(BdevIo::read(nb, 1, IoBuf::new(bs)).on_complete(flag.clone(), 0));
    assert!(!flag.0.get(), "{}: refused inline", bdev.name());
    while !flag.0.get() {
        crate::reactor::yield_now().await;
    }

    // A request whose channel is let go right after submission still completes, with
    // its data written.
    if keeps == Keeps::Data {
        flag.0.set(false);
        let other = Channel::get(&bdev).unwrap();
        drop(ch);
        let lone = Channel::get(&bdev).unwrap();
        drop(other);
        lone.submit(BdevIo::write(2, 1, pattern(77, bs)).on_complete(flag.clone(), 0));
        drop(lone);
        while !flag.0.get() {
            crate::reactor::yield_now().await;
        }
        let got = Channel::get(&bdev).unwrap().read(2, 1).await.unwrap();
        assert_same(
            &got,
            &pattern(77, bs),
            "write completed after its channel was dropped",
        );
    }
    let ch = Channel::get(&bdev).unwrap();

    // Read-only bdevs refuse modifications.
    bdev.props().set_read_only(true);
    let (_, st) = ch.io(BdevIo::write(0, 1, IoBuf::new(bs))).await;
    assert_eq!(
        st,
        IoStatus::WriteProtected,
        "{}: write to read-only",
        bdev.name()
    );
    let (_, st) = ch.io(BdevIo::unmap(0, 1)).await;
    assert_eq!(st, IoStatus::WriteProtected);
    assert!(ch.read(0, 1).await.is_ok());
    bdev.props().set_read_only(false);
}

#[test]
fn malloc_conforms() {
    run(IdlePolicy::Adaptive, || async {
        let b = MallocBdev::create("m0", 4096, 512, None).unwrap();
        conformance(b, Keeps::Data).await;
        let b = MallocBdev::create("m1", 1024, 4096, None).unwrap();
        conformance(b, Keeps::Data).await;
    });
}

#[test]
fn null_conforms() {
    run(IdlePolicy::Busy, || async {
        let b = NullBdev::create("n0", 1 << 40, 4096, None).unwrap();
        conformance(b, Keeps::Nothing).await;
    });
}

#[test]
fn uring_conforms_with_each_option_set() {
    let dir = tempfile::tempdir().unwrap();
    let opts = [
        UringOptions::default(),
        UringOptions {
            fixed_files: false,
            ..Default::default()
        },
        UringOptions {
            fixed_buffers: true,
            ..Default::default()
        },
        UringOptions {
            sqpoll: true,
            ..Default::default()
        },
        UringOptions {
            direct: false,
            ..Default::default()
        },
    ];
    for (i, o) in opts.into_iter().enumerate() {
        for idle in [IdlePolicy::Adaptive, IdlePolicy::Busy] {
            let path = dir.path().join(format!("u{i}-{idle:?}.img"));
            let o = o.clone();
            run(idle, move || async move {
                let b =
                    UringBdev::create("u0", &path, None, Some(16 << 20), None, o.clone()).unwrap();
                let bdev: Arc<dyn Bdev> = b;
                conformance(bdev.clone(), Keeps::Data).await;
                // Registered buffers are handed out when enabled.
                let ch = Channel::get(&bdev).unwrap();
                let bs = bdev.block_size() as usize;
                let mut buf = ch.alloc_buf(bs);
                assert_eq!(buf.arena().is_some(), o.fixed_buffers);
                let data = pattern(99, bs);
                buf.copy_from_slice(&data);
                ch.write(7, buf).await.unwrap();
                assert_same(
                    &ch.read(7, 1).await.unwrap(),
                    &data,
                    "fixed-buffer round trip",
                );
            });
        }
    }
}

#[test]
fn uring_rejects_bad_options_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.img");
    let e = UringBdev::create("u", &missing, None, None, None, UringOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let o = UringOptions {
        queue_depth: 100,
        ..Default::default()
    };
    let e = UringBdev::create("u", &missing, None, Some(1 << 20), None, o)
        .err()
        .unwrap();
    assert!(e.to_string().contains("queue_depth"), "{e}");
}

#[test]
fn error_bdev_conforms_in_both_modes() {
    run(IdlePolicy::Adaptive, || async {
        for volatile in [false, true] {
            let m = MallocBdev::create("em", 2048, 4096, None).unwrap();
            let e = ErrorBdev::create("e0", m, volatile).unwrap();
            conformance(e, Keeps::Data).await;
        }
    });
}

#[test]
fn error_bdev_fails_nth_every_kth_and_a_fraction() {
    run(IdlePolicy::Adaptive, || async {
        let m = MallocBdev::create("em", 1024, 4096, None).unwrap();
        let e = ErrorBdev::create("e0", m, false).unwrap();
        let bdev: Arc<dyn Bdev> = e.clone();
        let ch = Channel::get(&bdev).unwrap();
        e.inject(FailRule {
            kinds: vec![IoKind::Read],
            trigger: Trigger::Nth(3),
            status: IoStatus::MediaError,
        });
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(ch.read(0, 1).await.err());
        }
        assert_eq!(
            got,
            vec![None, None, Some(IoStatus::MediaError), None, None, None]
        );
        // Writes are not affected by a read rule.
        assert!(ch.write(0, IoBuf::new(4096)).await.is_ok());
        e.clear_rules();
        e.inject(FailRule {
            kinds: vec![IoKind::Write],
            trigger: Trigger::EveryKth(2),
            status: IoStatus::CapacityExceeded,
        });
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(ch.write(0, IoBuf::new(4096)).await.err());
        }
        assert_eq!(
            got,
            vec![
                None,
                Some(IoStatus::CapacityExceeded),
                None,
                Some(IoStatus::CapacityExceeded)
            ]
        );
        e.clear_rules();
        e.inject(FailRule {
            kinds: vec![IoKind::Read],
            trigger: Trigger::Fraction(0.25),
            status: IoStatus::Aborted,
        });
        let mut failed = 0;
        for _ in 0..2000 {
            if ch.read(0, 1).await.err() == Some(IoStatus::Aborted) {
                failed += 1;
            }
        }
        assert!(
            (350..650).contains(&failed),
            "{failed} of 2000 failed at 25%"
        );
        e.clear_rules();
        // Latency.
        e.set_latency(IoKind::Read, Duration::from_millis(5));
        let t = std::time::Instant::now();
        ch.read(0, 1).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(5));
        e.set_latency(IoKind::Read, Duration::ZERO);
    });
}

#[test]
fn power_loss_drops_exactly_the_unflushed_writes() {
    run(IdlePolicy::Adaptive, || async {
        let m = MallocBdev::create("pm", 256, 4096, None).unwrap();
        let base: Arc<dyn Bdev> = m.clone();
        let e = ErrorBdev::create("pe", m, true).unwrap();
        let bdev: Arc<dyn Bdev> = e.clone();
        let ch = Channel::get(&bdev).unwrap();
        let base_ch = Channel::get(&base).unwrap();
        let block = |v: u8| IoBuf::from_slice(&[v; 4096]);
        // Generation 1: blocks 0..8 written and flushed.
        for b in 0..8 {
            ch.write(b, block(1)).await.unwrap();
        }
        // Nothing reached the medium before the flush.
        assert!(base_ch.read(0, 1).await.unwrap().iter().all(|&x| x == 0));
        ch.flush().await.unwrap();
        assert_eq!(e.unflushed_blocks(), 0);
        // Generation 2: overwrite 0..4, write 8..12, unmap 6; no flush.
        for b in 0..4 {
            ch.write(b, block(2)).await.unwrap();
        }
        for b in 8..12 {
            ch.write(b, block(2)).await.unwrap();
        }
        ch.unmap(6, 1).await.unwrap();
        // Reads see the held writes.
        assert!(ch.read(0, 1).await.unwrap().iter().all(|&x| x == 2));
        assert!(ch.read(6, 1).await.unwrap().iter().all(|&x| x == 0));
        assert_eq!(e.unflushed_blocks(), 9);
        assert_eq!(e.power_loss(), 9);
        // After the loss: exactly the flushed state.
        for b in 0..12u64 {
            let want = if b < 8 { 1 } else { 0 };
            let got = ch.read(b, 1).await.unwrap();
            assert!(got.iter().all(|&x| x == want), "block {b} after power loss");
        }
        // Partial loss: some held writes land, the rest vanish; nothing else changes.
        for b in 0..8 {
            ch.write(b, block(3)).await.unwrap();
        }
        let (kept, dropped) = e.power_loss_partial(0.5, 7).await;
        assert_eq!(kept + dropped, 8);
        assert!(kept > 0 && dropped > 0);
        let mut threes = 0;
        for b in 0..8u64 {
            let got = ch.read(b, 1).await.unwrap();
            assert!(got.iter().all(|&x| x == got[0]) && (got[0] == 1 || got[0] == 3));
            threes += (got[0] == 3) as usize;
        }
        assert_eq!(threes, kept);
    });
}

/// Counts completions; on the first one, asks the channel for a drain and records how
/// many requests had completed when it resolved.
struct DrainProbe {
    ch: Channel,
    done: Rc<Cell<u64>>,
    asked: Cell<bool>,
    at_drain: Rc<Cell<Option<u64>>>,
}

impl IoSink for DrainProbe {
    fn io_done(&self, _io: BdevIo, status: IoStatus) {
        assert_eq!(status, IoStatus::Success);
        self.done.set(self.done.get() + 1);
        if !self.asked.replace(true) {
            // Inside the pass that completes the batch, nothing queued for a later one.
            let drained = self.ch.drained().expect("tracks drains");
            let (at, done) = (self.at_drain.clone(), self.done.clone());
            crate::reactor::spawn_local(async move {
                drained.await;
                at.set(Some(done.get()));
            })
            .detach();
        }
    }
}

/// `drained` resolves only once every request submitted before it completed, whether
/// asked between passes or from inside one; at once when nothing is queued.
async fn drains_after_every_earlier_request(bdev: Arc<dyn Bdev>) {
    let ch = Channel::get(&bdev).unwrap();
    assert!(ch.tracks_drain(), "{} tracks drains", bdev.name());
    // Idle: resolves without waiting for a pass.
    let idle = ch.drained().unwrap();
    let mut cx = std::task::Context::from_waker(Waker::noop());
    assert!(std::pin::pin!(idle).poll(&mut cx).is_ready());

    let at_drain = Rc::new(Cell::new(None));
    let probe = Rc::new(DrainProbe {
        ch: ch.clone(),
        done: Rc::new(Cell::new(0)),
        asked: Cell::new(true),
        at_drain: at_drain.clone(),
    });
    let bs = bdev.block_size() as usize;
    // Between passes: 16 queued, then the drain, then 16 more.
    for i in 0..16 {
        ch.submit(BdevIo::write(i, 1, IoBuf::new(bs)).on_complete(probe.clone(), i));
    }
    let drained = ch.drained().unwrap();
    for i in 16..32 {
        ch.submit(BdevIo::write(i, 1, IoBuf::new(bs)).on_complete(probe.clone(), i));
    }
    drained.await;
    assert!(
        probe.done.get() >= 16,
        "{}: drained with {} of the 16 earlier requests done",
        bdev.name(),
        probe.done.get()
    );
    while probe.done.get() < 32 {
        crate::reactor::yield_now().await;
    }
    // From inside a pass: the first completion of a batch of 8 asks.
    probe.asked.set(false);
    for i in 0..8 {
        ch.submit(BdevIo::read(i, 1, IoBuf::new(bs)).on_complete(probe.clone(), i));
    }
    while at_drain.get().is_none() {
        crate::reactor::yield_now().await;
    }
    assert_eq!(
        at_drain.get(),
        Some(40),
        "{}: drained before the batch it was asked in completed",
        bdev.name()
    );
}

#[test]
fn malloc_null_and_error_channels_tell_when_they_drained() {
    run(IdlePolicy::Busy, || async {
        drains_after_every_earlier_request(MallocBdev::create("m0", 64, 4096, None).unwrap()).await;
        drains_after_every_earlier_request(NullBdev::create("n0", 64, 4096, None).unwrap()).await;
        for volatile in [false, true] {
            let m = MallocBdev::create("em", 64, 4096, None).unwrap();
            let e = ErrorBdev::create("e0", m, volatile).unwrap();
            // Writes complete 2 ms late and reads start 1 ms late, so a drain that did
            // not wait for them would show.
            e.set_latency(IoKind::Write, Duration::from_millis(2));
            e.set_submit_delay(IoKind::Read, Duration::from_millis(1));
            drains_after_every_earlier_request(e).await;
        }
    });
}

#[test]
fn uring_channel_tells_when_it_drained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drain.img");
    run(IdlePolicy::Busy, move || async move {
        let b =
            UringBdev::create("u0", &path, None, Some(1 << 20), None, Default::default()).unwrap();
        drains_after_every_earlier_request(b).await;
    });
}
