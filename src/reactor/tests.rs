use super::*;
use std::sync::atomic::AtomicU32;

fn start(n: usize, idle: IdlePolicy) -> ReactorSet {
    ReactorSet::for_tests(n, idle)
}

#[test]
fn messages_keep_per_sender_order() {
    let set = start(2, IdlePolicy::Adaptive);
    let cores = set.cores().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let senders: Vec<_> = (0..4u64)
        .map(|s| {
            let cores = cores.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for i in 0..5000u64 {
                    let seen = seen.clone();
                    cores
                        .send(1, move || seen.lock().unwrap().push((s, i)))
                        .unwrap();
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    block_on(cores.call(1, || ())).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4 * 5000, "no message lost");
    for s in 0..4 {
        let order: Vec<u64> = seen
            .iter()
            .filter(|(x, _)| *x == s)
            .map(|(_, i)| *i)
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "sender {s} out of order"
        );
    }
}

#[test]
fn no_message_lost_under_many_concurrent_senders_between_cores() {
    let set = start(2, IdlePolicy::Adaptive);
    let cores = set.cores().clone();
    let count = Arc::new(AtomicU64::new(0));
    // Reactors and outside threads all send to both cores at once.
    let mut threads = Vec::new();
    for t in 0..6 {
        let cores = cores.clone();
        let count = count.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..20_000 {
                let c = count.clone();
                cores
                    .send((t + i) % 2, move || {
                        c.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
            }
        }));
    }
    for core in 0..2 {
        let count = count.clone();
        let c2 = cores.clone();
        cores
            .send(core, move || {
                for i in 0..20_000 {
                    let c = count.clone();
                    c2.send(i % 2, move || {
                        c.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                }
            })
            .unwrap();
    }
    for t in threads {
        t.join().unwrap();
    }
    // Two rounds of barriers: everything sent before is run by then.
    block_on(cores.for_each_core_async(|_| {})).unwrap();
    block_on(cores.for_each_core_async(|_| {})).unwrap();
    assert_eq!(count.load(Ordering::Relaxed), 6 * 20_000 + 2 * 20_000);
}

#[test]
fn for_each_core_runs_everywhere_and_completes_exactly_once() {
    let set = start(2, IdlePolicy::Busy);
    let cores = set.cores().clone();
    for _ in 0..200 {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicU32::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let ran2 = ran.clone();
        let done2 = done.clone();
        cores
            .for_each_core(
                move |core| {
                    assert_eq!(current_core(), Some(core));
                    ran2.lock().unwrap().push(core)
                },
                move || {
                    done2.fetch_add(1, Ordering::SeqCst);
                    tx.send(()).unwrap();
                },
            )
            .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        std::thread::sleep(Duration::from_micros(50));
        assert_eq!(done.load(Ordering::SeqCst), 1);
        let mut r = ran.lock().unwrap().clone();
        r.sort();
        assert_eq!(r, vec![0, 1]);
    }
}

#[test]
fn shutdown_runs_pending_messages_and_joins() {
    let mut set = start(2, IdlePolicy::Adaptive);
    let cores = set.cores().clone();
    let count = Arc::new(AtomicU64::new(0));
    for i in 0..10_000 {
        let c = count.clone();
        cores
            .send(i % 2, move || {
                c.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
    }
    // A task that never finishes and a poller must not keep shutdown from completing.
    cores
        .send(0, || {
            spawn_local(std::future::pending::<()>()).detach();
            std::mem::forget(register_poller(|| 0));
        })
        .unwrap();
    set.shutdown();
    assert_eq!(count.load(Ordering::Relaxed), 10_000);
    assert_eq!(cores.send(0, || {}), Err(SendError { core: 0 }));
    let r = block_on(cores.call(1, || 5));
    assert_eq!(r, Err(SendError { core: 1 }));
}

#[test]
fn tasks_timers_and_cross_core_wakeups() {
    let set = start(2, IdlePolicy::Adaptive);
    let cores = set.cores().clone();
    // A task on core 0 awaits a value produced on core 1.
    let c2 = cores.clone();
    let out = block_on(cores.spawn_on(0, move || async move {
        let t0 = now();
        sleep(Duration::from_millis(20)).await;
        let slept = now().since(t0);
        let v = c2
            .call(1, || current_core().unwrap() * 10 + 7)
            .await
            .unwrap();
        (slept, v, current_core().unwrap())
    }))
    .unwrap();
    assert!(out.0 >= Duration::from_millis(20), "slept {:?}", out.0);
    assert_eq!(out.1, 17);
    assert_eq!(out.2, 0);
}

#[test]
fn adaptive_policy_parks_when_idle() {
    let set = start(1, IdlePolicy::Adaptive);
    let cores = set.cores().clone();
    std::thread::sleep(Duration::from_millis(100));
    let before = cores.stats()[0].idle;
    let cpu0 = block_on(cores.call(0, thread_cpu_time)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let cpu1 = block_on(cores.call(0, thread_cpu_time)).unwrap();
    let after = cores.stats()[0].idle;
    // A spinning reactor would burn ~300 ms of CPU and millions of idle loops.
    assert!(
        cpu1 - cpu0 < Duration::from_millis(30),
        "idle reactor used {:?}",
        cpu1 - cpu0
    );
    assert!(after - before < 100_000, "idle loops {}", after - before);
    // And it still answers promptly.
    let t = std::time::Instant::now();
    block_on(cores.call(0, || ())).unwrap();
    assert!(t.elapsed() < Duration::from_millis(100));
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn a_task_spawned_first_runs_before_the_ready_ones_when_woken_and_last_when_it_yields() {
    let m = ManualReactors::new(1).unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (tx, rx) = futures_channel::oneshot::channel::<()>();
    m.enter(0, || {
        let l = log.clone();
        spawn_local_first(async move {
            l.borrow_mut().push("F0");
            let _ = rx.await;
            l.borrow_mut().push("F1");
            yield_now().await;
            l.borrow_mut().push("F2");
        })
        .detach();
        let l = log.clone();
        spawn_local(async move {
            l.borrow_mut().push("a");
            yield_now().await;
            l.borrow_mut().push("a");
        })
        .detach();
        let l = log.clone();
        spawn_local(async move {
            let _ = tx.send(());
            l.borrow_mut().push("s");
        })
        .detach();
        let l = log.clone();
        spawn_local(async move {
            l.borrow_mut().push("b");
        })
        .detach();
    });
    m.run_until_idle(100);
    // Spawned first, F runs before `a`, `s` and `b`, which were ready before it; woken
    // by `s`, it runs next, ahead of `b`; its own yield puts it behind `a`.
    assert_eq!(*log.borrow(), vec!["F0", "a", "s", "F1", "b", "a", "F2"]);
}

#[test]
fn manual_reactors_are_deterministic() {
    let m = ManualReactors::new(3).unwrap();
    let log = Rc::new(RefCell::new(Vec::new()));
    let l2 = log.clone();
    m.enter(0, || {
        spawn_local(async move {
            l2.borrow_mut().push("start");
            sleep(Duration::from_secs(10)).await;
            l2.borrow_mut().push("woke");
        })
        .detach();
    });
    m.run_until_idle(100);
    assert_eq!(*log.borrow(), vec!["start"]);
    m.advance(Duration::from_secs(9));
    m.run_until_idle(100);
    assert_eq!(*log.borrow(), vec!["start"]);
    m.advance(Duration::from_secs(1));
    m.run_until_idle(100);
    assert_eq!(*log.borrow(), vec!["start", "woke"]);
    // Messages between manual cores are delivered when the target is polled.
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    m.cores()
        .for_each_core(
            |_| {},
            move || {
                h.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    m.run_until_idle(100);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn pollers_run_every_iteration_and_can_unregister_themselves() {
    let m = ManualReactors::new(1).unwrap();
    let calls = Rc::new(Cell::new(0));
    let handle: Rc<RefCell<Option<PollerHandle>>> = Rc::new(RefCell::new(None));
    let (c, h) = (calls.clone(), handle.clone());
    m.enter(0, || {
        *handle.borrow_mut() = Some(register_poller(move || {
            c.set(c.get() + 1);
            if c.get() == 3 {
                // Unregister from inside, then register a replacement in the freed slot.
                h.borrow_mut().take();
                std::mem::forget(register_poller(|| 0));
            }
            1
        }));
    });
    for _ in 0..10 {
        m.poll(0);
    }
    assert_eq!(calls.get(), 3);
}

/// A panic inside a reactor ends the process (SIGABRT) instead of leaving the callers
/// that wait on that core hanging. The panicking part runs in a child process: this
/// same test, re-run with `TESSERA_REACTOR_PANIC_CHILD` set.
#[test]
fn a_panicking_reactor_aborts_the_process_instead_of_hanging() {
    use std::os::unix::process::ExitStatusExt;
    const CHILD: &str = "TESSERA_REACTOR_PANIC_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let set = ReactorSet::for_tests(2, IdlePolicy::Busy);
        set.cores()
            .send(1, || panic!("deliberate panic on core 1"))
            .expect("send");
        // Without the abort this waits forever: core 1 never answers.
        let _ = block_on(set.cores().call(1, || 7));
        std::thread::sleep(std::time::Duration::from_secs(30));
        std::process::exit(0);
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args([
            "reactor::tests::a_panicking_reactor_aborts_the_process_instead_of_hanging",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child hung after its reactor panicked");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut err)
        .expect("read stderr");
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "child should abort; status {status:?}, stderr:\n{err}"
    );
    assert!(
        err.contains("reactor 1 panicked: deliberate panic on core 1"),
        "stderr names the core and the panic:\n{err}"
    );
}

/// Dropping a `ManualReactors` drops the futures of its tasks still pending, and with
/// them what they hold: a task held only through its own state (its waker kept in
/// something its future owns, as a task waiting on its pool's state is), and a task
/// woken from another core that still waits in its core's mailbox.
#[test]
fn dropping_manual_reactors_drops_the_pending_tasks_and_what_they_hold() {
    struct Owned {
        waker: RefCell<Option<Waker>>,
    }
    let m = ManualReactors::new(2).unwrap();
    // Core 0: a task waiting on a state it owns, its waker kept in that state.
    let in_cycle = m.enter(0, || {
        let st = Rc::new(Owned {
            waker: RefCell::new(None),
        });
        let weak = Rc::downgrade(&st);
        spawn_local(std::future::poll_fn(move |cx| {
            *st.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }))
        .detach();
        weak
    });
    // Core 1: a task whose waker is handed out; woken from core 0 below, it waits in
    // core 1's mailbox.
    let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
    let w2 = waker.clone();
    let in_mailbox = m.enter(1, || {
        let st = Rc::new(Owned {
            waker: RefCell::new(None),
        });
        let weak = Rc::downgrade(&st);
        spawn_local(std::future::poll_fn(move |cx| {
            let _hold = &st;
            *w2.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }))
        .detach();
        weak
    });
    m.run_until_idle(10);
    m.enter(0, || {
        if let Some(w) = waker.lock().unwrap().take() {
            w.wake();
        }
    });
    assert!(in_cycle.upgrade().is_some() && in_mailbox.upgrade().is_some());
    drop(m);
    assert!(
        in_cycle.upgrade().is_none(),
        "a pending task held by its own state outlived its reactors"
    );
    assert!(
        in_mailbox.upgrade().is_none(),
        "a task woken from another core outlived its reactors"
    );
}
