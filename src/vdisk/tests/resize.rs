//! Resizing and creating: the sizes create and resize accept.
//!
//! Every wait here has a time limit ([`within`]): a deadlock fails the test instead of
//! hanging the run.

use super::*;
use std::future::Future;
use std::time::Instant;

/// How long any one step may take.
const LIMIT: Duration = Duration::from_secs(20);

/// Waits for `fut` on this (non-reactor) thread for at most [`LIMIT`]: a deadlock fails
/// the test, naming `what`, instead of hanging it.
fn within<F: Future>(what: &str, fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = Instant::now() + LIMIT;
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let now = Instant::now();
        assert!(now < deadline, "{what}: still running after {LIMIT:?}");
        std::thread::park_timeout((deadline - now).min(Duration::from_millis(20)));
    }
}

/// Runs `f` on core `core`, for at most [`LIMIT`].
fn on_core<T: Send + 'static, F: Future<Output = T> + 'static>(
    set: &ReactorSet,
    core: usize,
    what: &str,
    f: impl FnOnce() -> F + Send + 'static,
) -> T {
    within(what, set.cores().spawn_on(core, f)).unwrap()
}

fn resize(pool: &Pool, name: &str, blocks: u64) -> Result<(), VdiskError> {
    let bs = pool.block_size() as u64;
    within(
        &format!("resizing `{name}` to {blocks} blocks"),
        pool.resize_disk(name, blocks * bs),
    )
}

fn disk_of(pool: &Pool, name: &str) -> Arc<dyn Bdev> {
    within("looking a disk up", pool.disk(name)).unwrap()
}

fn check_clean(set: &ReactorSet, bdevs: Vec<Arc<dyn Bdev>>) {
    let report = on_core(set, 0, "checking the pool", move || async move {
        check::check(bdevs).await
    });
    assert!(report.clean(), "{:#?}", report.errors);
}

/// Create and resize accept exactly the sizes (and names) opening the pool accepts: the
/// largest disk is created, a disk is resized to it, both survive a reopen; one block
/// more is refused with an error naming the field and the limit, and the pool still
/// opens.
#[test]
fn create_and_resize_refuse_sizes_that_open_would_refuse() {
    let set = reactors(2);
    // 512-byte blocks: the largest disk and one block more are both sizes in bytes.
    let m = MallocBdev::create("m0", (64 << 20) / 512, 512, None).unwrap();
    let pool = new_pool(&set, m.clone());
    let largest = meta::MAX_DISK_BLOCKS - 1;
    let limit = (largest * 512).to_string();
    let refused = |r: Result<(), VdiskError>, what: &str| match r {
        Err(VdiskError::InvalidParam {
            field: "size",
            reason,
        }) => assert!(
            reason.contains(&limit),
            "{what}: the message names the limit ({limit} bytes): {reason}"
        ),
        other => panic!("{what} past the largest disk size: {other:?}"),
    };
    within("create", pool.create_disk("big", largest * 512, true)).unwrap();
    refused(
        within(
            "create",
            pool.create_disk("bigger", (largest + 1) * 512, true),
        )
        .map(|_| ()),
        "create",
    );
    refused(
        within("create", pool.create_disk("biggest", u64::MAX - 511, true)).map(|_| ()),
        "create",
    );
    within("create", pool.create_disk("vd0", 1 << 20, true)).unwrap();
    resize(&pool, "vd0", largest).unwrap();
    refused(resize(&pool, "vd0", largest + 1), "resize");
    // Names: 127 bytes is the longest a directory record holds.
    let longest = format!("{}a", "é".repeat(63));
    assert_eq!(longest.len(), 127);
    within("create", pool.create_disk(&longest, 1 << 20, true)).unwrap();
    match within("create", pool.create_disk(&"é".repeat(64), 1 << 20, true)) {
        Err(VdiskError::InvalidParam { field: "name", .. }) => {}
        other => panic!("a 128-byte name: {:?}", other.map(|_| ())),
    }
    // The last blocks of the largest disk work.
    let d = disk_of(&pool, "big");
    let b = on_core(&set, 1, "writing the last blocks", move || async move {
        write_byte(&d, largest - 8, 0x77).await.unwrap();
        read_byte(&d, largest - 1).await
    });
    assert_eq!(b, 0x77);
    within("close", pool.close()).unwrap();
    let pool = within("open", Pool::open(set.cores(), 0, vec![m.clone()])).unwrap();
    let info = within("list", pool.list()).unwrap();
    let size = |n: &str| info.iter().find(|i| i.name == n).map(|i| i.size_bytes);
    assert_eq!(size("big"), Some(largest * 512));
    assert_eq!(size("vd0"), Some(largest * 512));
    assert_eq!(size(&longest), Some(1 << 20));
    assert_eq!(size("bigger"), None);
    let d = disk_of(&pool, "big");
    let b = on_core(&set, 1, "reading the last block", move || async move {
        read_byte(&d, largest - 1).await
    });
    assert_eq!(b, 0x77);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![m]);
}

/// Two creates of one name at once (a fully allocated disk is zeroed before it is
/// added): one disk, one `Exists` — a directory with a name twice fails `tessera check`.
#[test]
fn concurrent_creates_of_one_name_make_one_disk() {
    let set = reactors(2);
    let base = malloc("m0", 64);
    let pool = new_pool(&set, base.clone());
    let a = pool.create_disk("twin", 8 << 20, false);
    let b = pool.create_disk("twin", 8 << 20, false);
    let (a, b) = (within("create", a), within("create", b));
    assert!(
        a.is_ok() != b.is_ok(),
        "one create succeeds: {:?} / {:?}",
        a.map(|_| ()),
        b.map(|_| ())
    );
    let e = a.err().or(b.err()).unwrap();
    assert!(matches!(e, VdiskError::Exists(_)), "{e}");
    let info = within("list", pool.list()).unwrap();
    assert_eq!(info.iter().filter(|i| i.name == "twin").count(), 1);
    within("close", pool.close()).unwrap();
    check_clean(&set, vec![base]);
}
