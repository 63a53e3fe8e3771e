//! The budget and the waiting requests, on manual reactors and a manual clock: exact
//! counts per timeslice, on one core and shared by two.

use super::*;
use crate::bdev::null::NullBdev;
use crate::bdev::{BdevRegistry, Channel, IoBuf, IoSink};
use crate::reactor::ManualReactors;

/// Records each completion: (core, tag, status).
#[derive(Default)]
struct Log(RefCell<Vec<(usize, u64, IoStatus)>>);

impl IoSink for Log {
    fn io_done(&self, io: BdevIo, status: IoStatus) {
        let core = reactor::current_core().unwrap_or(usize::MAX);
        self.0.borrow_mut().push((core, io.tag, status));
    }
}

impl Log {
    fn count(&self) -> usize {
        self.0.borrow().len()
    }
    fn on(&self, core: usize) -> Vec<u64> {
        self.0
            .borrow()
            .iter()
            .filter(|(c, _, _)| *c == core)
            .map(|(_, t, _)| *t)
            .collect()
    }
}

fn bdev(name: &str) -> Arc<dyn Bdev> {
    NullBdev::create(name, 1 << 20, 4096, None).unwrap()
}

/// Runs `set_limits` on core 0 of `m` to its end.
fn set(m: &ManualReactors, b: &Arc<dyn Bdev>, update: QosUpdate) -> QosLimits {
    let out: Rc<RefCell<Option<Result<QosLimits, String>>>> = Rc::default();
    let (o, b, cores) = (out.clone(), b.clone(), m.cores().clone());
    m.enter(0, || {
        reactor::spawn_local(async move {
            let r = set_limits(&cores, &b, update, Duration::from_secs(5)).await;
            *o.borrow_mut() = Some(r.map_err(|e| e.to_string()));
        })
        .detach();
    });
    m.run_until_idle(1000);
    out.borrow_mut()
        .take()
        .expect("set_limits answered")
        .unwrap()
}

fn iops(n: u64) -> QosUpdate {
    let mut u = QosUpdate::default();
    u.0[RW_IOPS] = Some(n);
    u
}

/// Submits `n` 4 KiB requests of `kind` on `core`, tags `from..from + n`.
fn submit(
    m: &ManualReactors,
    core: usize,
    ch: &Channel,
    log: &Rc<Log>,
    kind: IoKind,
    from: u64,
    n: u64,
) {
    m.enter(core, || {
        for t in from..from + n {
            let io = match kind {
                IoKind::Read => BdevIo::read(t, 1, IoBuf::new(4096)),
                _ => BdevIo::write(t, 1, IoBuf::new(4096)),
            };
            ch.submit(io.on_complete(log.clone(), t));
        }
    });
}

fn channel(m: &ManualReactors, core: usize, b: &Arc<dyn Bdev>) -> Channel {
    m.enter(core, || Channel::get(b).unwrap())
}

/// 5000 I/Os per second is 5 a timeslice, for both cores together; what waits goes in
/// submission order on each core as the timeslices pass, a late refill adds the shares
/// of the timeslices that passed (up to its cap), and removing the limit submits what
/// still waits at once.
#[test]
fn the_budget_is_shared_by_the_cores_and_refilled_each_timeslice() {
    let m = ManualReactors::new(2).unwrap();
    let b = bdev("qos-shared");
    let log = Rc::new(Log::default());
    let (c0, c1) = (channel(&m, 0, &b), channel(&m, 1, &b));
    assert_eq!(set(&m, &b, iops(5000)).rw_ios_per_sec, 5000);
    submit(&m, 0, &c0, &log, IoKind::Read, 0, 20);
    submit(&m, 1, &c1, &log, IoKind::Read, 100, 20);
    m.run_until_idle(1000);
    assert_eq!(log.count(), 5, "one timeslice: 5 of 40");
    for k in 1..=3 {
        m.advance(TIMESLICE);
        m.run_until_idle(1000);
        assert_eq!(log.count(), 5 + 5 * k, "after {k} more timeslices");
    }
    // Three timeslices at once: three shares.
    m.advance(TIMESLICE * 3);
    m.run_until_idle(1000);
    assert_eq!(log.count(), 35);
    // A long silence gives at most MAX_CATCHUP_SLICES shares.
    submit(&m, 0, &c0, &log, IoKind::Write, 200, 100);
    m.advance(TIMESLICE * 1000);
    m.run_until_idle(1000);
    assert_eq!(log.count(), 35 + 5 * MAX_CATCHUP_SLICES as usize);
    // In submission order on each core.
    for core in [0, 1] {
        let reads: Vec<u64> = log.on(core).into_iter().filter(|t| *t < 200).collect();
        let mut sorted = reads.clone();
        sorted.sort();
        assert_eq!(reads, sorted, "core {core}");
    }
    // Off: everything still waiting goes now, and nothing waits any more.
    let off = set(&m, &b, iops(0));
    assert!(off.is_unlimited());
    assert_eq!(log.count(), 140);
    assert!(log.0.borrow().iter().all(|(_, _, s)| s.is_success()));
    submit(&m, 1, &c1, &log, IoKind::Write, 500, 1000);
    m.run_until_idle(1000);
    assert_eq!(log.count(), 1140);
    assert!(
        !m.enter(1, || core_state(&*b)).engaged(),
        "back to the straight path"
    );
}

/// Byte limits count bytes, reads and writes each under their own limit: 1 MiB/s is
/// 1048 bytes a timeslice, so a 4 KiB read goes every fourth timeslice (an overrun is
/// taken from the next ones); writes under a write limit of 2 MiB/s go at twice that
/// rate, independently; and the rw limit holds both.
#[test]
fn byte_limits_count_bytes_per_direction() {
    let m = ManualReactors::new(1).unwrap();
    let b = bdev("qos-bytes");
    let log = Rc::new(Log::default());
    let ch = channel(&m, 0, &b);
    let mut u = QosUpdate::default();
    u.0[R_BPS] = Some(1);
    u.0[W_BPS] = Some(2);
    set(&m, &b, u);
    submit(&m, 0, &ch, &log, IoKind::Read, 0, 1000);
    submit(&m, 0, &ch, &log, IoKind::Write, 10_000, 1000);
    m.run_until_idle(1000);
    for _ in 0..1000 {
        m.advance(TIMESLICE);
        m.run_until_idle(1000);
    }
    let done = log.on(0);
    let reads = done.iter().filter(|t| **t < 10_000).count() as f64;
    let writes = done.len() as f64 - reads;
    // One second: 1 MiB of reads (256 of 4 KiB), 2 MiB of writes (512).
    assert!((reads - 256.0).abs() <= 2.0, "{reads} reads");
    assert!((writes - 512.0).abs() <= 2.0, "{writes} writes");
    // Now one rw limit of 1 MiB/s for both (the others off).
    let mut u = QosUpdate::default();
    u.0[R_BPS] = Some(0);
    u.0[W_BPS] = Some(0);
    u.0[RW_BPS] = Some(1);
    let l = set(&m, &b, u);
    assert_eq!((l.rw_mbytes_per_sec, l.r_mbytes_per_sec), (1, 0));
    let before = log.count();
    for _ in 0..1000 {
        m.advance(TIMESLICE);
        m.run_until_idle(1000);
    }
    let both = (log.count() - before) as f64;
    assert!((both - 256.0).abs() <= 2.0, "{both} requests under 1 MiB/s");
}

/// Nothing waits forever: requests waiting on a channel that was dropped still go as
/// the budget allows; a drain waits for them; when the bdev is deleted, those still
/// waiting complete with `Aborted`.
#[test]
fn waiting_requests_outlive_their_channel_and_abort_when_the_bdev_goes() {
    let m = ManualReactors::new(1).unwrap();
    let reg = BdevRegistry::new();
    let b = bdev("qos-gone");
    reg.add(b.clone()).unwrap();
    let log = Rc::new(Log::default());
    let ch = channel(&m, 0, &b);
    set(&m, &b, iops(1000));
    submit(&m, 0, &ch, &log, IoKind::Write, 0, 10);
    m.run_until_idle(100);
    assert_eq!(log.count(), 1);
    let drained = Rc::new(Cell::new(false));
    let d = drained.clone();
    let wait = m
        .enter(0, || ch.drained())
        .expect("null channels track drains");
    m.enter(0, || {
        reactor::spawn_local(async move {
            wait.await;
            d.set(true);
        })
        .detach()
    });
    drop(ch);
    m.run_until_idle(100);
    for _ in 0..4 {
        m.advance(TIMESLICE);
        m.run_until_idle(100);
    }
    assert_eq!(log.count(), 5, "the dropped channel's requests go on");
    assert!(!drained.get(), "5 still wait");
    reg.remove("qos-gone").unwrap();
    m.advance(TIMESLICE / 10);
    m.run_until_idle(100);
    let l = log.0.borrow();
    assert_eq!(l.len(), 10);
    assert!(l[..5].iter().all(|(_, _, s)| *s == IoStatus::Success));
    assert!(
        l[5..].iter().all(|(_, _, s)| *s == IoStatus::Aborted),
        "{l:?}"
    );
    drop(l);
    m.run_until_idle(100);
    assert!(drained.get(), "the drain ended with the queue");
    assert_eq!(m.enter(0, || core_state(&*b)).waiting(), 0);
}

/// SPDK's normalisation: an I/O limit rounds up to a multiple of 1000, a MiB/s limit
/// above the largest is lowered to it, a limit not given stays, 0 removes.
#[test]
fn updates_merge_and_round_as_spdk_does() {
    let (l, notes) = iops(1500).apply(QosLimits::default());
    assert_eq!(l.rw_ios_per_sec, 2000);
    assert_eq!(notes.len(), 1);
    assert_eq!(iops(1).apply(QosLimits::default()).0.rw_ios_per_sec, 1000);
    let mut u = QosUpdate::default();
    u.0[W_BPS] = Some(u64::MAX - 1);
    let (l2, _) = u.apply(l);
    assert_eq!(
        (l2.rw_ios_per_sec, l2.w_mbytes_per_sec),
        (2000, MAX_MBYTES_PER_SEC)
    );
    let (l3, _) = iops(0).apply(l2);
    assert_eq!(
        (l3.rw_ios_per_sec, l3.w_mbytes_per_sec),
        (0, MAX_MBYTES_PER_SEC)
    );
    assert!(QosUpdate::default().is_empty());
    assert_eq!(
        l3.to_json(),
        serde_json::json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
            "r_mbytes_per_sec": 0, "w_mbytes_per_sec": MAX_MBYTES_PER_SEC})
    );
}
