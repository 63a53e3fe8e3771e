//! The `tessera` command: parse, load the config, call into the library.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use tessera::bdev::Bdev;
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::null::NullBdev;
use tessera::bdev::uring::{UringBdev, UringOptions};
use tessera::bench::{BenchConfig, Workload};
use tessera::config::{Config, embedded_default};
use tessera::reactor::{CoreList, IdlePolicy};
use tessera::target::Target;
use tessera::util::parse_size;

#[derive(Parser)]
#[command(name = "tessera", version = tessera_version(), about = "Userspace polled-mode block-storage engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn tessera_version() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (git ",
        env!("TESSERA_GIT_REV"),
        ")"
    )
}

#[derive(Subcommand)]
enum Command {
    /// Run a target until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Benchmark a bdev (bdevperf-like).
    Bench(BenchArgs),
    /// Check a closed pool offline (like thin_check); exits non-zero on any problem.
    Check(CheckArgs),
    /// Call a JSON-RPC method of a running target:
    /// `tessera rpc [-s SOCKET] METHOD [--param value ...] [--json '{...}']`.
    Rpc(RpcArgs),
    /// Write a snapshot's changed blocks since `--from` (or all its data) to stdout as a
    /// send stream, read over NBD from the source target; or, with `--nvmf`, have the
    /// source target copy them to a remote NVMe/TCP namespace.
    Send(SendArgs),
    /// Apply a send stream from stdin to a disk over NBD, then take the stream's
    /// snapshot; refuses unless the disk's latest snapshot is the stream's base.
    Receive(ReceiveArgs),
    /// Crash-test workload: writes to a disk of a file-backed pool until killed.
    #[command(hide = true)]
    CrashWriter(CrashWriterArgs),
    /// Run the deterministic simulator: one seed (`--seed N`, to replay a failure) or
    /// many (`--seeds COUNT`); exits non-zero if any seed fails.
    Sim(SimArgs),
}

#[derive(Args)]
struct SimArgs {
    /// Run this one seed and print its report (and every event with --verbose).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds, from --from on.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of --seeds.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Waves of concurrent operations per seed.
    #[arg(long, default_value_t = tessera::sim::SimOptions::default().waves)]
    waves: usize,
    /// Threads running seeds at once (default: the number of CPUs).
    #[arg(long, short = 'j')]
    jobs: Option<usize>,
    /// Print every event of the run.
    #[arg(long)]
    verbose: bool,
    /// Run the crash-point sweeps instead (all, or those whose name contains this).
    #[arg(long, num_args = 0..=1, default_missing_value = "")]
    sweep: Option<String>,
    /// Power-loss patterns tried per crash point of a sweep.
    #[arg(long, default_value_t = 2)]
    loss_patterns: u64,
}

#[derive(Args)]
struct SendArgs {
    /// The source target's JSON-RPC socket.
    #[arg(long = "rpc", default_value = tessera::rpc::DEFAULT_SOCKET)]
    rpc_socket: PathBuf,
    /// The source target's NBD server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd: String,
    /// The base snapshot (an incremental send); without it, every block holding data.
    #[arg(long)]
    from: Option<String>,
    /// Instead of a stream on stdout: have the source target copy the blocks to a remote
    /// NVMe/TCP namespace, given as SPDK's transport ID:
    /// 'trtype:tcp adrfam:ipv4 traddr:ADDR trsvcid:PORT subnqn:NQN [hostnqn:NQN] [ns:N]'.
    #[arg(long, value_name = "TRID", conflicts_with = "connections")]
    nvmf: Option<String>,
    /// With --nvmf: the namespace ID (default: the subsystem's only namespace).
    #[arg(long, requires = "nvmf")]
    nsid: Option<u32>,
    /// With --nvmf: seconds the copy may make no progress before send gives up.
    #[arg(long, default_value_t = 60.0, requires = "nvmf")]
    stall_limit: f64,
    /// Bytes per second at most (with a unit: 100MiB).
    #[arg(long)]
    limit: Option<String>,
    /// Skip the runs before this byte offset (after an interrupted receive).
    #[arg(long, default_value = "0")]
    resume_from: String,
    /// NBD connections reading the snapshot at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: u16,
    /// The snapshot to send (name, pool/name or UUID).
    snapshot: String,
}

#[derive(Args)]
struct ReceiveArgs {
    /// The destination target's JSON-RPC socket.
    #[arg(long = "rpc", default_value = tessera::rpc::DEFAULT_SOCKET)]
    rpc_socket: PathBuf,
    /// The destination target's NBD server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd: String,
    /// The disk to apply the stream to (name, pool/name or UUID).
    disk: String,
}

#[derive(Args)]
struct CheckArgs {
    /// Files or block devices holding the pool (its containers and metadata bdev).
    paths: Vec<PathBuf>,
    /// Instead of paths: a config file whose pool `--pool` to check.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// The pool of `--config` to check.
    #[arg(long)]
    pool: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RpcArgs {
    /// JSON-RPC socket path.
    #[arg(short = 's', long = "rpc-socket", default_value = tessera::rpc::DEFAULT_SOCKET)]
    rpc_socket: PathBuf,
    /// Seconds to wait for the answer (with --wait: for the job's progress to move).
    #[arg(short = 't', long, default_value_t = 60.0)]
    timeout: f64,
    /// Follow the job the method starts or waits for (a copy, split or decouple) to its
    /// end: a progress bar on a terminal, a line a second otherwise.
    #[arg(long)]
    wait: bool,
    /// The method (`rpc_get_methods` lists them).
    method: String,
    /// Parameters: `--name value` (`--lvs-name` and `--lvs_name` alike; a value is JSON
    /// when it parses as JSON, else a string), a bare `--flag` for true, and
    /// `--json '{...}'` for an object of parameters.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PARAMS"
    )]
    params: Vec<String>,
}

#[derive(Args)]
struct CrashWriterArgs {
    #[arg(long)]
    pool_file: PathBuf,
    #[arg(long, default_value = "vd0")]
    disk: String,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    start: u64,
    #[arg(long)]
    progress: PathBuf,
    #[arg(long, default_value_t = 8)]
    qd: usize,
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration: tessera's YAML, or SPDK's JSON format (as `save_config` writes
    /// it). Without it: the embedded default under --data-dir.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Where the embedded default keeps its data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// JSON-RPC socket path.
    #[arg(
        short = 's',
        long = "rpc-socket",
        default_value = tessera::rpc::DEFAULT_SOCKET
    )]
    rpc_socket: PathBuf,
    /// Cores to run reactors on, overriding the config's `cores` (as SPDK's `-m`):
    /// `0`, `0,1`, `0-3` or a mask such as `0x3`.
    #[arg(long, short = 'm')]
    cores: Option<String>,
    /// Idle policy of the reactors, overriding the config's `idle`: busy or adaptive.
    #[arg(long)]
    idle: Option<String>,
    /// Let this group (a name or a gid) use the RPC socket too (mode 0660); without it
    /// the socket is the owner's alone (mode 0600).
    #[arg(long)]
    rpc_group: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// The bdev: `null:SIZE`, `malloc:SIZE`, `uring:PATH[:SIZE]`, or a bdev name from --config.
    #[arg(long)]
    bdev: String,
    /// A config file (YAML or SPDK JSON, as for `serve`) whose bdevs --bdev can name.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// randread, randwrite, read, write or randrw.
    #[arg(long, short = 'w', default_value = "randread")]
    workload: String,
    /// Percentage of reads for randrw.
    #[arg(long, short = 'M', default_value_t = 50)]
    rwmix: u8,
    /// Request size (bytes, or with a unit).
    #[arg(long, short = 'o', default_value = "4096")]
    bs: String,
    /// Requests in flight per core.
    #[arg(long, short = 'q', default_value_t = 32)]
    qd: usize,
    /// Run time in seconds.
    #[arg(long, short = 't', default_value_t = 5.0)]
    seconds: f64,
    /// Cores: `0`, `0,1`, `0-3` or a mask such as `0x3`.
    #[arg(long, short = 'm', default_value = "0")]
    cores: String,
    /// busy or adaptive.
    #[arg(long, default_value = "busy")]
    idle: String,
    /// Block size of a `null:`/`malloc:` bdev.
    #[arg(long, default_value_t = 4096)]
    block_size: u32,
    /// Limit the accessed range to the first bytes of the bdev.
    #[arg(long)]
    range: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Random workloads visit each offset exactly once, then the run ends (first-write
    /// measurements).
    #[arg(long)]
    once: bool,
    /// Go on after a failed I/O (else the run stops at the first, as fio and bdevperf
    /// do); latency percentiles count the I/Os that succeeded either way.
    #[arg(long)]
    continue_on_error: bool,
    /// Snapshot the disk under test at these seconds into the run (e.g. `2,4`).
    #[arg(long, value_delimiter = ',')]
    snapshot_at: Vec<f64>,
    /// Flush the bdev under test at these seconds into the run (e.g. `2,2.5,3`); the
    /// report's `snapshots` list then holds the flushes (not combined with
    /// --snapshot-at).
    #[arg(long, value_delimiter = ',')]
    flush_at: Vec<f64>,
    /// Compare --bdev with this bdev (same forms as --bdev): each runs --seconds in all,
    /// in --rounds slices taken in turn, and the report gives each one's IOPS per slice
    /// and the median of the per-round ratios.
    #[arg(long)]
    compare: Option<String>,
    /// Rounds of a --compare run (one slice of each bdev per round).
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// I/O statistics while measuring: `on` (the default, as `serve` counts), `off`, or
    /// `histogram` (on, with a latency histogram of the bdev under test, as
    /// `bdev_enable_histogram` turns on).
    #[arg(long, default_value = "on")]
    stats: String,
    /// Rate limits on the bdev under test, as `bdev_set_qos_limit` sets them (SPDK's
    /// names): `rw_ios_per_sec=20000`, `rw_mbytes_per_sec=`, `r_mbytes_per_sec=`,
    /// `w_mbytes_per_sec=` (MiB/s), comma-separated.
    #[arg(long, value_delimiter = ',')]
    qos: Vec<String>,
}

/// `--qos`'s `name=value` pairs as a change of limits.
fn parse_qos(pairs: &[String]) -> Result<tessera::bdev::qos::QosUpdate> {
    use tessera::bdev::qos::{NAMES, QosUpdate};
    let mut u = QosUpdate::default();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--qos `{p}`: expected NAME=VALUE"))?;
        let i = NAMES
            .iter()
            .position(|n| *n == k)
            .with_context(|| format!("--qos `{p}`: `{k}` is not one of {}", NAMES.join(", ")))?;
        let v: u64 = v
            .parse()
            .with_context(|| format!("--qos `{p}`: `{v}` is not a whole number"))?;
        u.0[i] = Some(v);
    }
    Ok(u)
}

/// Standard error for the logs, dropping what cannot be written. A log line must never
/// take a reactor down: when stderr is a pipe whose reader went away (a log collector
/// restarted, `| head`), the writer's error would make tracing-subscriber report it with
/// `eprintln!`, which panics on the same broken pipe, on whichever thread logged.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn main() {
    let cli = Cli::parse();
    // The simulator opens and crashes pools thousands of times: its logs only on demand.
    let default_level = match cli.command {
        Command::Sim(_) => "off",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // Colours only on a terminal: a log file or a journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Bench(a) => bench(a),
        Command::Check(a) => check(a),
        Command::Rpc(a) => rpc(a),
        Command::Send(a) => send(a),
        Command::Receive(a) => receive(a),
        Command::CrashWriter(a) => crash_writer(a),
        Command::Sim(a) => sim(a),
    };
    if let Err(e) = result {
        eprintln!("tessera: {e:#}");
        std::process::exit(1);
    }
}

fn sim(a: SimArgs) -> Result<()> {
    if let Some(filter) = &a.sweep {
        let t0 = std::time::Instant::now();
        let mut failed = 0;
        for sc in tessera::sim::sweep::scenarios() {
            if !sc.name.contains(filter.as_str()) {
                continue;
            }
            match tessera::sim::sweep::sweep(&sc, a.loss_patterns, a.verbose) {
                Ok(r) => println!(
                    "{:48} {:4} crash points ({} writes)",
                    r.name, r.points, r.writes
                ),
                Err(f) => {
                    failed += 1;
                    eprintln!("{f}");
                }
            }
        }
        println!("sweeps took {:.1} s", t0.elapsed().as_secs_f64());
        if failed > 0 {
            bail!("{failed} sweeps failed");
        }
        return Ok(());
    }
    let opts = tessera::sim::SimOptions {
        waves: a.waves,
        verbose: a.verbose,
    };
    if let Some(seed) = a.seed {
        let t0 = std::time::Instant::now();
        return match tessera::sim::run(seed, &opts) {
            Ok(r) => {
                println!(
                    "seed {seed} passed in {:.2} s: {r:#?}",
                    t0.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Err(f) => bail!("{f}"),
        };
    }
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let done = std::sync::atomic::AtomicU64::new(0);
    let total = a.seeds;
    let sum = tessera::sim::run_many(a.from, a.seeds, jobs, &opts, &|seed, r| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if let Err(f) = r {
            eprintln!("{f}");
        } else if n.is_multiple_of(100) || n == total {
            eprintln!("{n}/{total} seeds run (last: {seed})");
        }
    });
    println!(
        "{} seeds ({}..{}): {} passed ({} ended with injected damage detected), {} failed, in {:.1} s ({:.2} seeds/s on {jobs} threads)",
        a.seeds,
        a.from,
        a.from + a.seeds,
        sum.passed,
        sum.detected,
        sum.failures.len(),
        sum.elapsed.as_secs_f64(),
        sum.rate()
    );
    let t = &sum.totals;
    println!(
        "passing runs did: {} waves, {} data requests, {} control operations, {} power losses, {} clean reopens, {} blocks verified after recovery; faults: {} read errors, {} write errors, {} misdirected writes, {} bit rots, {} writes refused for space; {:.0} s simulated",
        t.waves,
        t.data_ops,
        t.control_ops,
        t.crashes,
        t.clean_reopens,
        t.blocks_verified,
        t.read_errors,
        t.write_errors,
        t.misdirected,
        t.bit_rot,
        t.no_space,
        t.sim_ms as f64 / 1000.0
    );
    for (op, (n, ok)) in &t.control {
        println!("  {op:16} {n:7} run, {ok:7} succeeded");
    }
    if !sum.failures.is_empty() {
        let seeds: Vec<String> = sum.failures.iter().map(|f| f.seed.to_string()).collect();
        bail!("failing seeds: {}", seeds.join(" "));
    }
    Ok(())
}

fn send(a: SendArgs) -> Result<()> {
    let size = |what: &str, v: &str| -> Result<u64> {
        parse_size(v)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{what}: `{v}`"))
    };
    let limit = a.limit.as_deref().map(|l| size("--limit", l)).transpose()?;
    let resume_from = size("--resume-from", &a.resume_from)?;
    if let Some(trid) = a.nvmf {
        let stall = std::time::Duration::try_from_secs_f64(a.stall_limit).map_err(|_| {
            anyhow::anyhow!(
                "--stall-limit: `{}` is not a duration in seconds",
                a.stall_limit
            )
        })?;
        let opts = tessera::replicate::nvmf::NvmfSendOptions {
            rpc_socket: a.rpc_socket,
            trid,
            nsid: a.nsid,
            from: a.from.clone(),
            snapshot: a.snapshot.clone(),
            limit,
            resume_from,
            stall,
            terminal: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        };
        let s = tessera::replicate::nvmf::send_nvmf(&opts, &mut std::io::stderr())?;
        let what = match &a.from {
            Some(f) => format!("the changes of `{}` since `{f}`", a.snapshot),
            None => format!("the blocks of `{}` holding data", a.snapshot),
        };
        let _ = writeln!(
            std::io::stderr(),
            "tessera send: {what}: {} bytes copied to namespace {} (copy {})",
            s.bytes,
            s.nsid,
            s.operation_id
        );
        return Ok(());
    }
    let opts = tessera::replicate::SendOptions {
        rpc_socket: a.rpc_socket,
        nbd: a.nbd,
        from: a.from,
        snapshot: a.snapshot,
        limit,
        resume_from,
        connections: usize::from(a.connections),
    };
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("stdout is a terminal: pipe the stream into `tessera receive` or a file");
    }
    let s = tessera::replicate::send(&opts, std::io::stdout().lock(), &mut std::io::stderr())?;
    let _ = writeln!(
        std::io::stderr(),
        "tessera send: {} records, {} data bytes",
        s.records,
        s.bytes
    );
    Ok(())
}

fn receive(a: ReceiveArgs) -> Result<()> {
    let opts = tessera::replicate::ReceiveOptions {
        rpc_socket: a.rpc_socket,
        nbd: a.nbd,
        disk: a.disk,
    };
    let r = tessera::replicate::receive(&opts, std::io::stdin().lock(), &mut std::io::stderr())?;
    let msg = match r {
        tessera::replicate::ReceiveOutcome::Applied { records, bytes } => {
            format!("{records} records, {bytes} data bytes applied; snapshot taken")
        }
        tessera::replicate::ReceiveOutcome::AlreadyReceived => {
            "the disk's latest snapshot already is the stream's: nothing to do".to_string()
        }
    };
    let _ = writeln!(std::io::stderr(), "tessera receive: {msg}");
    Ok(())
}

fn one_core() -> Result<tessera::reactor::ReactorSet> {
    let mut cfg = tessera::reactor::ReactorConfig::new(CoreList::first(1), IdlePolicy::Adaptive);
    cfg.pin = false;
    Ok(tessera::reactor::ReactorSet::start(cfg)?)
}

fn check(a: CheckArgs) -> Result<()> {
    let reactors = one_core()?;
    let registry = tessera::bdev::BdevRegistry::new();
    let bdevs: Vec<Arc<dyn Bdev>> = match (&a.config, &a.pool) {
        (Some(cfg), Some(pool)) => {
            let config = Config::load(cfg)?;
            let p = config
                .pools
                .iter()
                .find(|p| &p.name == pool)
                .with_context(|| format!("--pool `{pool}` is not a pool of {}", cfg.display()))?;
            let mut out = Vec::new();
            for b in &config.bdevs {
                let bdev = tessera::target::create_bdev(b, &registry)?;
                registry.add(bdev.clone())?;
                if p.bdevs.contains(&b.name().to_string())
                    || p.metadata_bdev.as_deref() == Some(b.name())
                {
                    out.push(bdev);
                }
            }
            out
        }
        (None, None) if !a.paths.is_empty() => a
            .paths
            .iter()
            .enumerate()
            .map(|(i, p)| -> Result<Arc<dyn Bdev>> {
                Ok(UringBdev::create(
                    &format!("check{i}"),
                    p,
                    None,
                    None,
                    None,
                    UringOptions::default(),
                )?)
            })
            .collect::<Result<_>>()?,
        _ => bail!("give the pool's files or devices, or --config FILE --pool NAME"),
    };
    let report = tessera::reactor::block_on(reactors.cores().spawn_on(0, move || async move {
        tessera::vdisk::check::check(bdevs).await
    }))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "pool `{}`: transaction {}, {} disks, {} node pages, {} extents, {} segments referenced",
            report.pool,
            report.txn,
            report.disks,
            report.node_pages,
            report.extents,
            report.segments_referenced
        );
        for n in &report.notes {
            println!("note: {n}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
        println!("{}", if report.clean() { "clean" } else { "CORRUPT" });
    }
    if !report.clean() {
        std::process::exit(2);
    }
    Ok(())
}

fn crash_writer(a: CrashWriterArgs) -> Result<()> {
    let reactors = one_core()?;
    let bdev: Arc<dyn Bdev> = UringBdev::create(
        "crash0",
        &a.pool_file,
        None,
        None,
        None,
        UringOptions::default(),
    )?;
    let pool =
        tessera::reactor::block_on(tessera::vdisk::Pool::open(reactors.cores(), 0, vec![bdev]))?;
    let disk: Arc<dyn Bdev> = tessera::reactor::block_on(pool.disk(&a.disk))?;
    let (seed, start, progress, qd) = (a.seed, a.start, a.progress.clone(), a.qd);
    tessera::reactor::block_on(reactors.cores().spawn_on(0, move || async move {
        tessera::bench::crash::run_writer(disk, seed, start, progress, qd).await
    }))?;
    Ok(())
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("tessera")
}

fn serve(a: ServeArgs) -> Result<()> {
    let mut config = match &a.config {
        Some(path) => Config::load(path)?,
        None => {
            let dir = a.data_dir.clone().unwrap_or_else(default_data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create data directory {}", dir.display()))?;
            tracing::info!(data_dir = %dir.display(), "no --config: running the embedded default");
            embedded_default(&dir)
        }
    };
    if let Some(c) = &a.cores {
        config.cores = c.parse().context("--cores")?;
    }
    if let Some(i) = &a.idle {
        config.idle = i.parse().map_err(anyhow::Error::msg).context("--idle")?;
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let access = match &a.rpc_group {
        None => tessera::rpc::SocketAccess::Owner,
        Some(g) => tessera::rpc::SocketAccess::Group(
            tessera::rpc::server::group_id(g).context("--rpc-group")?,
        ),
    };
    for w in config.exposure_warnings() {
        tracing::warn!("{w}");
    }
    let target = Target::start(config)?;
    let server =
        match tessera::rpc::RpcServer::start_with_access(target.clone(), &a.rpc_socket, access) {
            Ok(s) => s,
            Err(e) => {
                target.shutdown();
                return Err(e.into());
            }
        };
    let metrics = match a
        .metrics
        .as_deref()
        .map(|m| tessera::rpc::metrics::MetricsServer::start(target.clone(), m))
    {
        Some(Err(e)) => {
            server.stop();
            target.shutdown();
            return Err(e.into());
        }
        Some(Ok(m)) => Some(m),
        None => None,
    };
    tracing::info!(cores = %target.config().cores, "tessera is serving; SIGINT or SIGTERM stops it");
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    if let Some(m) = metrics {
        m.stop();
    }
    server.stop();
    target.shutdown();
    tracing::info!("stopped cleanly");
    Ok(())
}

fn rpc(a: RpcArgs) -> Result<()> {
    let params = tessera::rpc::client::params_from_args(&a.params).map_err(anyhow::Error::msg)?;
    let timeout = std::time::Duration::try_from_secs_f64(a.timeout)
        .map_err(|_| anyhow::anyhow!("--timeout: `{}` is not a duration in seconds", a.timeout))?;
    if a.wait {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let answer = tessera::rpc::job_wait::call_and_wait(
            &a.rpc_socket,
            timeout,
            &a.method,
            params,
            terminal,
            &mut std::io::stderr(),
        );
        match answer {
            Ok(serde_json::Value::String(s)) => println!("{s}"),
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            Err(e) => {
                eprintln!("tessera rpc: {e}");
                std::process::exit(1);
            }
        }
        return Ok(());
    }
    let mut client = tessera::rpc::RpcClient::connect(&a.rpc_socket, timeout)?;
    match client.call(&a.method, params)? {
        Ok(serde_json::Value::String(s)) => println!("{s}"),
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
        Err(e) => {
            eprintln!("tessera rpc: {}: {} (code {})", a.method, e.message, e.code);
            std::process::exit(1);
        }
    }
    Ok(())
}

/// The bdev a `bench` argument names: `null:SIZE`, `malloc:SIZE`, `uring:PATH[:SIZE]`
/// (created under the name `label-KIND`), or a bdev of the target.
fn bench_bdev(spec: &str, label: &str, block_size: u32, target: &Target) -> Result<Arc<dyn Bdev>> {
    Ok(match spec.split_once(':') {
        Some(("null", size)) => {
            let bytes = parse_size(size).map_err(anyhow::Error::msg)?;
            NullBdev::create(
                &format!("{label}-null"),
                bytes / block_size as u64,
                block_size,
                None,
            )?
        }
        Some(("malloc", size)) => {
            let bytes = parse_size(size).map_err(anyhow::Error::msg)?;
            MallocBdev::create(
                &format!("{label}-malloc"),
                bytes / block_size as u64,
                block_size,
                None,
            )?
        }
        Some(("uring", rest)) => {
            let (path, size) = match rest.rsplit_once(':') {
                Some((p, s)) if parse_size(s).is_ok() => {
                    (p, Some(parse_size(s).map_err(anyhow::Error::msg)?))
                }
                _ => (rest, None),
            };
            UringBdev::create(
                &format!("{label}-uring"),
                path.as_ref(),
                None,
                size,
                None,
                UringOptions::default(),
            )?
        }
        Some((kind, _)) => {
            bail!("--bdev `{spec}`: unknown kind `{kind}` (null, malloc, uring, or a bdev name)")
        }
        None => target
            .bdevs()
            .get(spec)
            .with_context(|| format!("--bdev `{spec}`"))?,
    })
}

fn bench(a: BenchArgs) -> Result<()> {
    let workload = Workload::parse(&a.workload, a.rwmix).map_err(anyhow::Error::msg)?;
    let cores: CoreList = a.cores.parse()?;
    let idle: IdlePolicy = a.idle.parse().map_err(anyhow::Error::msg)?;
    let bs = parse_size(&a.bs).map_err(anyhow::Error::msg)? as usize;
    let range_bytes = match &a.range {
        Some(r) => parse_size(r).map_err(anyhow::Error::msg)?,
        None => 0,
    };
    let mut config = match &a.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.cores = cores;
    config.idle = idle;
    let histogram = match a.stats.as_str() {
        "on" => false,
        "off" => {
            tessera::bdev::stats::set_enabled(false);
            false
        }
        "histogram" => true,
        other => bail!("--stats: `{other}` is not one of on, off, histogram"),
    };
    let qos = parse_qos(&a.qos)?;
    let target = Target::start(config)?;
    let bdev = bench_bdev(&a.bdev, "bench", a.block_size, &target)?;
    if !qos.is_empty() {
        let l = tessera::reactor::block_on(target.set_qos_of(bdev.clone(), qos))
            .with_context(|| format!("--qos on `{}`", bdev.display_name()))?;
        tracing::info!(bdev = %bdev.display_name(), ?l, "bench: rate limits");
    }
    if histogram {
        let (cores, id) = (target.cores().clone(), bdev.id());
        tessera::reactor::block_on(target.cores().spawn_on(0, move || async move {
            tessera::bdev::stats::set_histogram(
                &cores,
                id,
                Some(Default::default()),
                std::time::Duration::from_secs(5),
            )
            .await
        }))
        .map_err(|e| anyhow::anyhow!("--stats histogram: {e}"))??;
    }
    let cfg = BenchConfig {
        workload,
        bs,
        qd: a.qd,
        seconds: a.seconds,
        range_bytes,
        once: a.once,
        continue_on_error: a.continue_on_error,
        ..Default::default()
    };
    if let Some(other) = &a.compare {
        if !a.snapshot_at.is_empty() || !a.flush_at.is_empty() {
            bail!("--snapshot-at and --flush-at cannot be combined with --compare");
        }
        let reference = bench_bdev(other, "bench-ref", a.block_size, &target)?;
        let report = tessera::bench::compare(target.cores(), bdev, reference, &cfg, a.rounds)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.to_text());
        }
        target.shutdown();
        return Ok(());
    }
    let mut actions: Vec<(f64, tessera::bench::TimedAction)> = Vec::new();
    for (i, &at) in a.snapshot_at.iter().enumerate() {
        let disk = bdev.name().to_string();
        let t = target.clone();
        let (_, vd) = tessera::reactor::block_on(t.disk(&disk)).with_context(|| {
            format!(
                "--snapshot-at: `{}` is not a virtual disk",
                bdev.display_name()
            )
        })?;
        let short = vd.disk_name();
        actions.push((
            at,
            Arc::new(move || {
                let name = format!("{short}-bench-snap{i}");
                let t0 = std::time::Instant::now();
                let r = tessera::reactor::block_on(t.snapshot(
                    vec![(disk.clone(), name)],
                    std::time::Duration::from_secs(5),
                ));
                let took = t0.elapsed();
                let error = r.err().map(|e| e.to_string());
                if let Some(e) = &error {
                    eprintln!("snapshot at {at} s failed: {e}");
                }
                (took, error)
            }),
        ));
    }
    if !a.flush_at.is_empty() && !a.snapshot_at.is_empty() {
        bail!("--flush-at cannot be combined with --snapshot-at (one list of timed actions)");
    }
    for &at in &a.flush_at {
        let b = bdev.clone();
        let cores = target.cores().clone();
        actions.push((
            at,
            Arc::new(move || {
                let b = b.clone();
                let t0 = std::time::Instant::now();
                let r = tessera::reactor::block_on(cores.spawn_on(0, move || async move {
                    let ch = tessera::bdev::Channel::get(&b).map_err(|e| e.to_string())?;
                    ch.flush().await.map_err(|s| format!("flush failed: {s:?}"))
                }));
                let error = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(e) => Some(e.to_string()),
                };
                (t0.elapsed(), error)
            }),
        ));
    }
    let report = tessera::bench::run(target.cores(), bdev, &cfg, actions)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if let Some(first) = report.first_error
        && !a.continue_on_error
    {
        // Not `eprintln!`: a closed stderr must not stop the command.
        let _ = writeln!(
            std::io::stderr(),
            "tessera bench: stopped at the first failed I/O ({first:?}); the figures are of \
             the run until then (--continue-on-error goes on)"
        );
    }
    target.shutdown();
    Ok(())
}
