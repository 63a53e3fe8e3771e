//! A stand-alone NVMe/TCP target for benchmarks and manual tests, until `tessera serve`
//! reads the `nvmf:` section of its YAML configuration.
//!
//! ```sh
//! cargo run --release --example nvmf_target -- --cpu 0 --port 4420 --busy
//! ```
//!
//! Exports two subsystems on 127.0.0.1:PORT: `nqn.2016-06.io.tessera:null` (a null bdev)
//! and `nqn.2016-06.io.tessera:malloc` (a RAM disk), open to any host. Runs until SIGINT
//! or SIGTERM.

use std::sync::Arc;
use tessera::bdev::malloc::MallocBdev;
use tessera::bdev::null::NullBdev;
use tessera::bdev::{Bdev, BdevRegistry};
use tessera::frontend::nvmf::{
    CreateSubsystemParams, ListenAddressParams, NamespaceParams, NvmfTarget, TransportOptions,
};
use tessera::reactor::{CoreList, IdlePolicy, ReactorConfig, ReactorSet};
use tessera::util::parse_size;

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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let cpus: CoreList = arg(&args, "--cpu", "0").parse()?;
    let port = arg(&args, "--port", "4420");
    let addr = arg(&args, "--addr", "127.0.0.1");
    let null_bytes = parse_size(&arg(&args, "--null-size", "1T")).map_err(anyhow::Error::msg)?;
    let malloc_bytes =
        parse_size(&arg(&args, "--malloc-size", "1G")).map_err(anyhow::Error::msg)?;
    let idle = if args.iter().any(|a| a == "--busy") {
        IdlePolicy::Busy
    } else {
        IdlePolicy::Adaptive
    };
    let reactors = ReactorSet::start(ReactorConfig::new(cpus, idle))?;
    let bdevs = BdevRegistry::new();
    let null: Arc<dyn Bdev> = NullBdev::create("Null0", null_bytes / 4096, 4096, None)?;
    let malloc: Arc<dyn Bdev> = MallocBdev::create("Malloc0", malloc_bytes / 4096, 4096, None)?;
    bdevs.add(null)?;
    bdevs.add(malloc)?;
    let target = NvmfTarget::new(reactors.cores().clone(), bdevs);
    target.nvmf_create_transport("TCP", TransportOptions::default())?;
    for (nqn, bdev) in [
        ("nqn.2016-06.io.tessera:null", "Null0"),
        ("nqn.2016-06.io.tessera:malloc", "Malloc0"),
    ] {
        target.nvmf_create_subsystem(CreateSubsystemParams {
            nqn: nqn.into(),
            serial_number: Some("TESSERA0001".into()),
            model_number: None,
            allow_any_host: true,
            max_namespaces: None,
        })?;
        target.nvmf_subsystem_add_ns(
            nqn,
            NamespaceParams {
                bdev_name: bdev.into(),
                nsid: Some(1),
                uuid: None,
            },
        )?;
        let bound = target.nvmf_subsystem_add_listener(
            nqn,
            ListenAddressParams {
                trtype: "TCP".into(),
                adrfam: None,
                traddr: addr.clone(),
                trsvcid: port.clone(),
            },
        )?;
        eprintln!("{nqn} -> {bdev} on {bound}");
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    eprintln!("ready");
    signals.forever().next();
    target.shutdown();
    drop(reactors);
    Ok(())
}
