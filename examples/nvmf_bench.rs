//! `tessera bench` through the NVMe/TCP initiator, until `tessera bench --config` can
//! attach `bdev_nvme` controllers: attaches a remote namespace as a bdev on its own
//! reactors and runs the in-process benchmark against it.
//!
//! ```sh
//! cargo run --release --example nvmf_bench -- --cpu 1 --port 4420 \
//!     --subnqn nqn.2016-06.io.tessera:null --workload randread --qd 64 --seconds 5
//! ```

use tessera::bdev::{Bdev, BdevRegistry};
use tessera::bench::{BenchConfig, Workload};
use tessera::frontend::nvmf::initiator::{AttachParams, NvmeHost};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let cpus: CoreList = arg(&args, "--cpu", "1").parse()?;
    let idle = if arg(&args, "--idle", "busy") == "busy" {
        IdlePolicy::Busy
    } else {
        IdlePolicy::Adaptive
    };
    let reactors = ReactorSet::start(ReactorConfig::new(cpus, idle))?;
    let registry = BdevRegistry::new();
    let host = NvmeHost::new();
    let mut p = AttachParams::new(
        "Nvme0",
        &arg(&args, "--traddr", "127.0.0.1"),
        &arg(&args, "--port", "4420"),
        &arg(&args, "--subnqn", "nqn.2016-06.io.tessera:null"),
    );
    p.hdgst = args.iter().any(|a| a == "--hdgst");
    p.ddgst = args.iter().any(|a| a == "--ddgst");
    let names = host
        .attach_controller(reactors.cores(), &registry, p)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bdev: std::sync::Arc<dyn Bdev> = registry.get(&names[0])?;
    let cfg = BenchConfig {
        workload: Workload::parse(&arg(&args, "--workload", "randread"), 50)
            .map_err(anyhow::Error::msg)?,
        bs: tessera::util::parse_size(&arg(&args, "--bs", "4096")).map_err(anyhow::Error::msg)?
            as usize,
        qd: arg(&args, "--qd", "64").parse()?,
        seconds: arg(&args, "--seconds", "5").parse()?,
        range_bytes: tessera::util::parse_size(&arg(&args, "--range", "0"))
            .map_err(anyhow::Error::msg)?,
        ..Default::default()
    };
    let report = tessera::bench::run(reactors.cores(), bdev, &cfg, Vec::new())?;
    if args.iter().any(|a| a == "--json") {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    host.detach_controller(&registry, "Nvme0")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(reactors);
    Ok(())
}
