//! Process-level crash test: a `tessera crash-writer` process writes, unmaps and flushes
//! on a file-backed pool and is killed with SIGKILL at random moments, many rounds.
//! After each kill, `tessera check` must pass on the pool file, and every block must
//! hold what the operations durable at the last completed flush left (or what a later
//! operation wrote) — never anything else.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;
use tessera::bdev::Bdev;
use tessera::bdev::uring::{UringBdev, UringOptions};
use tessera::bench::crash::{self, Content};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet, block_on};
use tessera::vdisk::{Pool, PoolOptions};

const DISK_BLOCKS: u64 = 16384; // 64 MiB
const SEG_BLOCKS: u64 = 256;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn reactors() -> ReactorSet {
    let mut cfg = ReactorConfig::new(CoreList::first(1), IdlePolicy::Adaptive);
    cfg.pin = false;
    ReactorSet::start(cfg).unwrap()
}

fn read_all(file: &Path) -> Vec<Content> {
    let set = reactors();
    let bdev: Arc<dyn Bdev> =
        UringBdev::create("v", file, None, None, None, UringOptions::default()).unwrap();
    let pool =
        block_on(Pool::open(set.cores(), 0, vec![bdev])).expect("pool opens after the crash");
    let disk: Arc<dyn Bdev> = block_on(pool.disk("vd0")).unwrap();
    let out = block_on(set.cores().spawn_on(0, move || async move {
        let ch = tessera::bdev::Channel::get(&disk).unwrap();
        let mut out = Vec::new();
        for chunk in 0..DISK_BLOCKS / 256 {
            let buf = ch.read(chunk * 256, 256).await.unwrap();
            for k in 0..256 {
                out.push(crash::classify(
                    &buf[k * 4096..(k + 1) * 4096],
                    chunk * 256 + k as u64,
                ));
            }
        }
        out
    }))
    .unwrap();
    block_on(pool.close()).unwrap();
    out
}

#[test]
fn kill_9_at_random_moments_keeps_flushed_data_and_a_clean_pool() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.img");
    {
        let set = reactors();
        let bdev: Arc<dyn Bdev> = UringBdev::create(
            "c",
            &file,
            None,
            Some(256 << 20),
            None,
            UringOptions::default(),
        )
        .unwrap();
        let pool = block_on(Pool::create(
            set.cores(),
            0,
            vec![bdev],
            None,
            PoolOptions::new("crash"),
        ))
        .unwrap();
        block_on(pool.create_disk("vd0", DISK_BLOCKS * 4096, true)).unwrap();
        block_on(pool.close()).unwrap();
    }
    let rounds: u64 = std::env::var("TESSERA_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let seed = 0xc4a5_4000 + rounds;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut baseline = vec![Content::Zero; DISK_BLOCKS as usize];
    let mut start = 0u64;
    let progress = dir.path().join("progress");
    let exe = env!("CARGO_BIN_EXE_tessera");
    for round in 0..rounds {
        let _ = std::fs::remove_file(&progress);
        let child = Command::new(exe)
            .args(["crash-writer", "--pool-file"])
            .arg(&file)
            .args([
                "--seed",
                &seed.to_string(),
                "--start",
                &start.to_string(),
                "--progress",
            ])
            .arg(&progress)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        std::thread::sleep(Duration::from_millis(rng.u64(150..1200)));
        child.0.kill().unwrap(); // SIGKILL
        let status = child.0.wait().unwrap();
        assert!(
            status.code().is_none(),
            "round {round}: the writer exited on its own: {status:?}"
        );
        let (durable, issued) = std::fs::read_to_string(&progress)
            .ok()
            .and_then(|t| {
                let mut it = t.split_whitespace().map(|x| x.parse::<u64>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((start, start));
        // The offline check passes on the crashed pool.
        let out = Command::new(exe).arg("check").arg(&file).output().unwrap();
        assert!(
            out.status.success(),
            "round {round}: tessera check failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Every block holds what it may.
        let bound = issued + 200_000;
        let contents = read_all(&file);
        let mut it = contents.into_iter();
        baseline = crash::verify(seed, start, durable, bound, &baseline, SEG_BLOCKS, |_| {
            it.next().unwrap()
        })
        .unwrap_or_else(|e| panic!("round {round} (durable {durable}, issued ≥ {issued}): {e}"));
        eprintln!(
            "round {round}: {} operations durable, ≥ {issued} issued",
            durable - start
        );
        start = bound;
    }
    // The check also runs clean after a normal close.
    let out = Command::new(exe).arg("check").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
