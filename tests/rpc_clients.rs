//! `tessera serve` driven by SPDK's own client (`spdk-rpc`, PyPI package `spdk`) and by
//! `tessera rpc`: pools and disks under SPDK's lvol methods, snapshots, clones, inflate,
//! decouple, resize, delete, NVMe-oF — checking the replies.

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn config(nbd_port: u16) -> String {
    format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: Malloc0, size: 256MiB}}\n  - {{type: malloc, name: Malloc1, size: 64MiB, block_size: 512}}\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n"
    )
}

/// Calls `spdk-rpc -s SOCKET args...` and returns its stdout.
fn spdk(tool: &Path, socket: &Path, args: &[&str]) -> String {
    run_ok(Command::new(tool).arg("-s").arg(socket).args(args))
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn lvol<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no lvol {name} in {list}"))
}

#[test]
fn spdk_rpc_manages_lvols() {
    let tool = spdk_rpc();
    let srv = Serve::start_yaml(&config(free_port()));
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);

    let v = json(&rpc(&["spdk_get_version"]));
    assert!(v["version"].as_str().unwrap().starts_with("tessera"), "{v}");
    let methods = json(&rpc(&["rpc_get_methods"]));
    assert!(
        methods
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "bdev_lvol_create")
    );

    let uuid = rpc(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "pool0",
        "-c",
        "1048576",
    ])
    .trim()
    .to_string();
    assert_eq!(uuid.len(), 36, "{uuid}");
    let lvs = json(&rpc(&["bdev_lvol_get_lvstores", "-l", "pool0"]));
    assert_eq!(lvs[0]["uuid"], uuid.as_str());
    assert_eq!(lvs[0]["base_bdev"], "Malloc0");
    assert_eq!(lvs[0]["cluster_size"], 1 << 20);
    assert_eq!(lvs[0]["block_size"], 4096);
    assert!(lvs[0]["free_clusters"].as_u64().unwrap() > 200);

    // Thin by name, thick by lvstore UUID. As SPDK, the bdev is named by the lvol's
    // UUID, which the call returns.
    let vd0 = rpc(&["bdev_lvol_create", "-l", "pool0", "-t", "vd0", "64"])
        .trim()
        .to_string();
    assert_eq!(uuid::Uuid::parse_str(&vd0).unwrap().to_string(), vd0);
    let thick0 = rpc(&["bdev_lvol_create", "-u", &uuid, "thick0", "8"])
        .trim()
        .to_string();
    assert_eq!(thick0.len(), 36, "{thick0}");
    let lvs = json(&rpc(&["bdev_lvol_get_lvstores", "-u", &uuid]));
    let free_after_thick = lvs[0]["free_clusters"].as_u64().unwrap();

    let snap0 = rpc(&["bdev_lvol_snapshot", "pool0/vd0", "snap0"]);
    let clone0 = rpc(&["bdev_lvol_clone", snap0.trim(), "clone0"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols", "-l", "pool0"]));
    assert_eq!(lvol(&lvols, "snap0")["is_snapshot"], true);
    assert_eq!(lvol(&lvols, "clone0")["is_clone"], true);
    assert_eq!(lvol(&lvols, "clone0")["parent"], "snap0");
    assert_eq!(lvol(&lvols, "vd0")["is_thin_provisioned"], true);
    assert_eq!(lvol(&lvols, "thick0")["is_thin_provisioned"], false);
    assert_eq!(lvol(&lvols, "vd0")["alias"], "pool0/vd0");
    assert_eq!(lvol(&lvols, "vd0")["uuid"], vd0.as_str());
    assert_eq!(lvol(&lvols, "snap0")["uuid"], snap0.trim());
    assert_eq!(lvol(&lvols, "clone0")["uuid"], clone0.trim());
    assert_eq!(lvol(&lvols, "vd0")["lvs"]["uuid"], uuid.as_str());

    // Inflate: the clone stands alone afterwards.
    rpc(&["bdev_lvol_inflate", "pool0/clone0"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone0")["is_clone"], false);
    assert_eq!(lvol(&lvols, "clone0")["parent"], Value::Null);

    // Decouple: a clone of a snapshot in a chain moves up to the older snapshot.
    rpc(&["bdev_lvol_snapshot", "vd0", "snap1"]);
    rpc(&["bdev_lvol_clone", "snap1", "clone1"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "snap1")["parent"], "snap0");
    rpc(&["bdev_lvol_decouple_parent", "pool0/clone1"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone1")["parent"], "snap0");

    // bdev_get_bdevs by alias, in SPDK's shape.
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "pool0/vd0"]));
    assert_eq!(b[0]["name"], vd0.as_str());
    assert_eq!(b[0]["uuid"], vd0.as_str());
    assert_eq!(b[0]["aliases"][0], "pool0/vd0");
    assert_eq!(b[0]["product_name"], "Logical Volume");
    assert_eq!(b[0]["num_blocks"], 64 * 256);
    assert_eq!(
        b[0]["driver_specific"]["lvol"]["lvol_store_uuid"],
        uuid.as_str()
    );
    assert_eq!(b[0]["supported_io_types"]["unmap"], true);
    let all = json(&rpc(&["bdev_get_bdevs"]));
    let m0 = all
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "Malloc0")
        .unwrap();
    assert_eq!(m0["claimed"], true);
    assert_eq!(m0["product_name"], "Malloc disk");

    rpc(&["bdev_lvol_resize", "pool0/vd0", "128"]);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "vd0"]));
    assert_eq!(b[0]["num_blocks"], 128 * 256);
    rpc(&["bdev_lvol_set_read_only", "pool0/thick0"]);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "thick0"]));
    assert_eq!(b[0]["read_only"], true);
    assert_eq!(b[0]["supported_io_types"]["write"], false);

    rpc(&["bdev_lvol_delete", "pool0/clone0"]);
    rpc(&["bdev_lvol_delete", "thick0"]);
    let lvs = json(&rpc(&["bdev_lvol_get_lvstores", "-l", "pool0"]));
    assert!(lvs[0]["free_clusters"].as_u64().unwrap() > free_after_thick);

    // Errors come back as SPDK error objects; spdk-rpc exits non-zero and prints them.
    let out = run_fails(
        Command::new(&tool)
            .arg("-s")
            .arg(&s)
            .args(["bdev_lvol_delete", "pool0/nope"]),
    );
    // SPDK's text for -19 first, then which.
    assert!(
        out.contains("-19")
            && out.contains("No such device: lvol")
            && out.contains("does not exist"),
        "{out}"
    );
    let out = run_fails(Command::new(&tool).arg("-s").arg(&s).args([
        "bdev_lvol_create",
        "-l",
        "nopool",
        "x",
        "8",
    ]));
    assert!(
        out.contains("-19")
            && out.contains("No such device: lvstore \\\"nopool\\\" does not exist"),
        "{out}"
    );
    let out = run_fails(Command::new(&tool).arg("-s").arg(&s).args([
        "bdev_lvol_create",
        "-l",
        "pool0",
        "vd0",
        "8",
    ]));
    assert!(out.contains("-17"), "{out}");
    let out = run_fails(Command::new(&tool).arg("-s").arg(&s).args([
        "bdev_lvol_create_lvstore",
        "Malloc9",
        "poolx",
    ]));
    assert!(out.contains("-19") && out.contains("Malloc9"), "{out}");

    // A bdev in use by a pool cannot be deleted; the pool can, then the bdev.
    let out = run_fails(
        Command::new(&tool)
            .arg("-s")
            .arg(&s)
            .args(["bdev_malloc_delete", "Malloc0"]),
    );
    assert!(out.contains("-16"), "{out}");
    rpc(&["bdev_lvol_delete_lvstore", "-l", "pool0"]);
    assert_eq!(
        json(&rpc(&["bdev_lvol_get_lvstores"])),
        serde_json::json!([])
    );
    rpc(&["bdev_malloc_delete", "Malloc0"]);
    assert_eq!(
        rpc(&["bdev_malloc_create", "-b", "Malloc7", "16", "4096"]).trim(),
        "Malloc7"
    );
    rpc(&["bdev_null_create", "Null0", "1024", "512"]);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "Null0"]));
    assert_eq!(b[0]["num_blocks"], 1024 * 2048);
    rpc(&["bdev_null_delete", "Null0"]);
    srv.stop();
}

#[test]
fn spdk_rpc_configures_nvmf_and_attaches_to_it() {
    let tool = spdk_rpc();
    let srv = Serve::start_yaml(&config(free_port()));
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);
    let nqn = "nqn.2016-06.io.spdk:cnode1";
    let port = free_port().to_string();

    rpc(&["bdev_lvol_create_lvstore", "Malloc0", "pool0"]);
    rpc(&["bdev_lvol_create", "-l", "pool0", "-t", "vd0", "32"]);
    rpc(&["nvmf_create_transport", "-t", "TCP", "-q", "64"]);
    let t = json(&rpc(&["nvmf_get_transports"]));
    assert_eq!(t[0]["trtype"], "TCP");
    assert_eq!(t[0]["max_queue_depth"], 64);
    rpc(&[
        "nvmf_create_subsystem",
        nqn,
        "-a",
        "-s",
        "SPDK0001",
        "-m",
        "8",
    ]);
    rpc(&["nvmf_subsystem_add_ns", nqn, "pool0/vd0"]);
    rpc(&[
        "nvmf_subsystem_add_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    let subs = json(&rpc(&["nvmf_get_subsystems", nqn]));
    assert_eq!(subs[0]["serial_number"], "SPDK0001");
    let vd0 = json(&rpc(&["bdev_get_bdevs", "-b", "pool0/vd0"]))[0]["name"].clone();
    assert_eq!(subs[0]["namespaces"][0]["bdev_name"], vd0);
    assert_eq!(subs[0]["listen_addresses"][0]["trsvcid"], port.as_str());

    // tessera's NVMe/TCP initiator attaches to the target it is part of.
    let names = rpc(&[
        "bdev_nvme_attach_controller",
        "-b",
        "Nvme0",
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
        "-n",
        nqn,
    ]);
    assert_eq!(names.trim(), "Nvme0n1");
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "Nvme0n1"]));
    assert_eq!(b[0]["num_blocks"], 32 * 256);
    let ctrlrs = json(&rpc(&["nvmf_subsystem_get_controllers", nqn]));
    assert_eq!(ctrlrs.as_array().unwrap().len(), 1);
    let c = json(&rpc(&["bdev_nvme_get_controllers", "-n", "Nvme0"]));
    assert_eq!(c[0]["ctrlrs"][0]["trid"]["subnqn"], nqn);
    // The namespace's bdev is in use.
    let out = run_fails(
        Command::new(&tool)
            .arg("-s")
            .arg(&s)
            .args(["bdev_lvol_delete", "vd0"]),
    );
    assert!(out.contains("-16"), "{out}");
    rpc(&["bdev_nvme_detach_controller", "Nvme0"]);

    rpc(&[
        "nvmf_subsystem_add_host",
        nqn,
        "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427",
    ]);
    rpc(&["nvmf_subsystem_allow_any_host", nqn, "--no-allow-any-host"]);
    let subs = json(&rpc(&["nvmf_get_subsystems", nqn]));
    assert_eq!(subs[0]["allow_any_host"], false);
    assert_eq!(subs[0]["hosts"].as_array().unwrap().len(), 1);
    rpc(&[
        "nvmf_subsystem_remove_listener",
        nqn,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port,
    ]);
    rpc(&["nvmf_subsystem_remove_ns", nqn, "1"]);
    rpc(&["nvmf_delete_subsystem", nqn]);
    let out = run_fails(
        Command::new(&tool)
            .arg("-s")
            .arg(&s)
            .args(["nvmf_delete_subsystem", nqn]),
    );
    assert!(out.contains("-19"), "{out}");
    // Released: the disk can go now.
    rpc(&["bdev_lvol_delete", "vd0"]);
    srv.stop();
}

/// The same life cycle through `tessera rpc`.
#[test]
fn tessera_rpc_manages_lvols() {
    let srv = Serve::start_yaml(&config(free_port()));
    let rpc = |args: &[&str]| {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["rpc", "-s"])
                .arg(&srv.socket)
                .args(args),
        )
    };
    let uuid = rpc(&[
        "bdev_lvol_create_lvstore",
        "--bdev-name",
        "Malloc0",
        "--lvs_name",
        "pool0",
    ]);
    assert_eq!(uuid.trim().len(), 36);
    let vd0 = rpc(&[
        "bdev_lvol_create",
        "--lvol-name",
        "vd0",
        "--size-in-mib",
        "64",
        "--thin-provision",
        "--lvs-name",
        "pool0",
    ])
    .trim()
    .to_string();
    assert_eq!(vd0.len(), 36, "{vd0}");
    let snap0 = rpc(&[
        "bdev_lvol_snapshot",
        "--json",
        r#"{"lvol_name": "pool0/vd0", "snapshot_name": "snap0"}"#,
    ]);
    assert_eq!(snap0.trim().len(), 36, "{snap0}");
    rpc(&[
        "bdev_lvol_clone",
        "--snapshot-name",
        "snap0",
        "--clone-name",
        "clone0",
    ]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols", "--lvs-name", "pool0"]));
    assert_eq!(lvol(&lvols, "clone0")["parent"], "snap0");
    rpc(&["bdev_lvol_inflate", "--name", "clone0"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone0")["parent"], Value::Null);
    // Consistency group and quiesce: tessera's own.
    let snaps = json(&rpc(&[
        "tessera_snapshot_group",
        "--json",
        r#"{"snapshots": [{"lvol_name": "vd0", "snapshot_name": "g-vd0"}, {"lvol_name": "clone0", "snapshot_name": "g-clone0"}]}"#,
    ]));
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(
        snaps,
        serde_json::json!([
            lvol(&lvols, "g-vd0")["uuid"],
            lvol(&lvols, "g-clone0")["uuid"]
        ])
    );
    let q = json(&rpc(&[
        "tessera_quiesce",
        "--names",
        r#"["vd0", "clone0"]"#,
        "--timeout-ms",
        "2000",
    ]));
    rpc(&[
        "tessera_activate",
        "--quiesce-id",
        &q["quiesce_id"].to_string(),
    ]);
    rpc(&[
        "tessera_set_cow_policy",
        "--name",
        "vd0",
        "--cow-policy",
        "copy-out",
    ]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "vd0")["cow_policy"], "copy-out");
    assert_eq!(
        json(&rpc(&["tessera_split_progress"])),
        serde_json::json!([])
    );
    rpc(&["bdev_lvol_delete", "--name", "clone0"]);

    // An error response: non-zero exit and the message on stderr.
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["rpc", "-s"])
            .arg(&srv.socket)
            .args(["bdev_lvol_delete", "--name", "nope"]),
        std::time::Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lvol \"nope\" does not exist") && err.contains("code -19"),
        "{err}"
    );
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["rpc", "-s"])
            .arg(&srv.socket)
            .args([
                "bdev_lvol_create",
                "--lvol-name",
                "x",
                "--size-in-mib",
                "big",
                "--lvs-name",
                "pool0",
            ]),
        std::time::Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"size_in_mib\": expected an integer") && err.contains("-32602"),
        "{err}"
    );
    // NBD through tessera's own methods.
    let exp = json(&rpc(&[
        "nbd_start_export",
        "--bdev-name",
        "pool0/vd0",
        "--name",
        "disk0",
    ]));
    assert_eq!(exp["bdev"], vd0.as_str());
    let exports = json(&rpc(&["nbd_get_exports"]));
    assert_eq!(exports[0]["name"], "disk0");
    rpc(&["nbd_stop_export", "--name", "disk0"]);
    srv.stop();
}

/// Two pools each with a disk `vd0`, as SPDK allows: exported over NBD from the YAML by
/// `pool/vd0` and by UUID, seen by `spdk-rpc` under SPDK's names, and benchmarked by
/// `tessera bench --bdev p0/vd0` and by UUID. A bare `vd0` is refused wherever it is
/// given, with both candidates named.
#[test]
fn two_pools_each_with_a_vd0_are_exported_and_benchmarked_by_alias_and_uuid() {
    let tool = spdk_rpc();
    let u1 = "6f1d6a52-9c1e-4c1b-8f0e-2a4d1d0b7a01";
    let base = format!(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: malloc, name: M0, size: 64MiB}}\n  - {{type: malloc, name: M1, size: 64MiB}}\npools:\n  - {{name: p0, bdevs: [M0]}}\n  - {{name: p1, bdevs: [M1]}}\ndisks:\n  - {{name: vd0, pool: p0, size: 16MiB, thin: true}}\n  - {{name: vd0, pool: p1, size: 32MiB, thin: true, uuid: {u1}}}\n"
    );
    let with_nbd = |port: u16, exports: &str| {
        format!("{base}nbd:\n  listen: 127.0.0.1:{port}\n  exports: [{exports}]\n")
    };
    let port = free_port();
    let srv = Serve::start_yaml(&with_nbd(
        port,
        &format!("{{name: a, bdev: p0/vd0}}, {{name: b, bdev: {u1}}}"),
    ));
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);

    // SPDK's shape: each lvol bdev is named by its UUID, with its alias.
    let b0 = json(&rpc(&["bdev_get_bdevs", "-b", "p0/vd0"]));
    let b1 = json(&rpc(&["bdev_get_bdevs", "-b", "p1/vd0"]));
    assert_eq!(b1[0]["name"], u1);
    assert_eq!(b1[0]["aliases"], serde_json::json!(["p1/vd0"]));
    assert_eq!(b0[0]["aliases"], serde_json::json!(["p0/vd0"]));
    assert_eq!(b0[0]["num_blocks"], 16 * 256);
    assert_eq!(b1[0]["num_blocks"], 32 * 256);
    let v0 = b0[0]["name"].as_str().unwrap().to_string();
    assert_ne!(v0, u1);
    let out =
        run_fails(
            Command::new(&tool)
                .arg("-s")
                .arg(&s)
                .args(["bdev_get_bdevs", "-b", "vd0"]),
        );
    assert!(
        out.contains("-19") && out.contains("`p0/vd0`") && out.contains("`p1/vd0`"),
        "{out}"
    );
    let exports = srv.call("nbd_get_exports", Value::Null);
    let bdev_of = |name: &str| {
        exports
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no export {name}: {exports}"))["bdev"]
            .clone()
    };
    assert_eq!(bdev_of("a"), v0.as_str());
    assert_eq!(bdev_of("b"), u1);
    // Two disks: what is written through one export is not in the other.
    qemu_io(port, "a", &["write -P 0x5a 0 64k"]);
    qemu_io(port, "a", &["read -P 0x5a 0 64k"]);
    qemu_io(port, "b", &["read -P 0 0 64k", "write -P 0x33 1M 4k"]);
    qemu_io(port, "a", &["read -P 0 1M 4k"]);
    // A namespace by alias and one by UUID.
    let nqn = "nqn.2016-06.io.spdk:two";
    rpc(&["nvmf_create_subsystem", nqn, "-a"]);
    rpc(&["nvmf_subsystem_add_ns", nqn, "p0/vd0"]);
    rpc(&["nvmf_subsystem_add_ns", nqn, u1]);
    let subs = json(&rpc(&["nvmf_get_subsystems", nqn]));
    assert_eq!(subs[0]["namespaces"][0]["bdev_name"], v0.as_str());
    assert_eq!(subs[0]["namespaces"][1]["bdev_name"], u1);
    let out = run_fails(Command::new(&tool).arg("-s").arg(&s).args([
        "nvmf_subsystem_add_ns",
        nqn,
        "vd0",
    ]));
    assert!(out.contains("ambiguous"), "{out}");
    srv.stop();

    // A bare `vd0` in the YAML: refused at start, naming both.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bare.yaml");
    std::fs::write(&cfg, with_nbd(free_port(), "{name: c, bdev: vd0}")).unwrap();
    let out = run(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .arg("-s")
            .arg(dir.path().join("s.sock")),
        std::time::Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ambiguous") && err.contains("`p0/vd0`") && err.contains("`p1/vd0`"),
        "{err}"
    );

    // tessera bench, by alias and by UUID; a bare name is refused.
    let cfg = dir.path().join("pools.yaml");
    std::fs::write(&cfg, &base).unwrap();
    let bench = |bdev: &str| {
        run(
            Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["bench", "--config"])
                .arg(&cfg)
                .args(["--bdev", bdev, "-t", "0.3", "-q", "4", "--idle", "adaptive"])
                .args(["-w", "randwrite", "--json"]),
            std::time::Duration::from_secs(60),
        )
    };
    for (spec, alias) in [("p0/vd0", "p0/vd0"), (u1, "p1/vd0")] {
        let out = bench(spec);
        assert!(
            out.status.success(),
            "bench --bdev {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(r["bdev"], alias, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["iops"].as_f64().unwrap() > 0.0, "{r}");
    }
    let out = bench("vd0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ambiguous") && err.contains("`p1/vd0`"),
        "{err}"
    );
}

/// `bdev_lvol_rename` and `bdev_lvol_rename_lvstore` through `spdk-rpc`: SPDK's
/// parameters, results and error codes; an exported disk is renamed under its export
/// (the bdev, named by UUID, stays; its alias changes, as in SPDK); the names are
/// durable (a restart finds them).
#[test]
fn spdk_rpc_renames_lvols_and_lvstores() {
    let tool = spdk_rpc();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("data.img");
    let port = free_port();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {{type: uring, name: F0, path: {}, size: 64MiB}}\n  - {{type: malloc, name: M1, size: 64MiB}}\nnbd:\n  listen: 127.0.0.1:{port}\n",
            img.display()
        ),
    )
    .unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));

    rpc(&["bdev_lvol_create_lvstore", "F0", "lvs0"]);
    rpc(&["bdev_lvol_create_lvstore", "M1", "lvs1"]);
    let vd0 = rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vd0", "16"])
        .trim()
        .to_string();
    rpc(&["bdev_lvol_create", "-l", "lvs0", "-t", "vd2", "8"]);
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "lvs0/vd0", "name": "e0"}),
    );
    qemu_io(port, "e0", &["write -P 0x77 0 64k"]);

    // Renamed under its export: the export goes on serving the same disk.
    // spdk-rpc prints nothing for these (SPDK answers `true`).
    rpc(&["bdev_lvol_rename", "lvs0/vd0", "vd1"]);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "lvs0/vd1"]));
    assert_eq!(b[0]["name"], vd0.as_str());
    assert_eq!(b[0]["aliases"], serde_json::json!(["lvs0/vd1"]));
    assert!(fails(&["bdev_get_bdevs", "-b", "lvs0/vd0"]).contains("-19"));
    qemu_io(port, "e0", &["read -P 0x77 0 64k"]);
    // By UUID; to the same name (no change, as in SPDK).
    assert_eq!(
        srv.call(
            "bdev_lvol_rename",
            serde_json::json!({"old_name": vd0, "new_name": "vd1"})
        ),
        Value::Bool(true)
    );
    // Refused: SPDK's codes (-19 for no such lvol, -32602 for a refused rename).
    let out = fails(&["bdev_lvol_rename", "lvs0/nope", "x"]);
    assert!(out.contains("-19"), "{out}");
    let out = fails(&["bdev_lvol_rename", "M1", "x"]);
    assert!(
        out.contains("-19") && out.contains("not a logical volume"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_rename", "lvs0/vd1", "vd2"]);
    assert!(
        out.contains("-32602") && out.contains("`vd2`") && out.contains("already exists"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_rename", "lvs0/vd1", "a/b"]);
    assert!(out.contains("-32602") && out.contains("a/b"), "{out}");
    let e = srv.call_err(
        "bdev_lvol_rename",
        serde_json::json!({"old_name": "lvs0/vd1"}),
    );
    assert!(e.code == -32602 && e.message.contains("new_name"), "{e}");

    // The lvstore: its lvols' aliases follow.
    rpc(&["bdev_lvol_rename_lvstore", "lvs0", "lvs9"]);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "lvs9/vd1"]));
    assert_eq!(b[0]["name"], vd0.as_str());
    let lvs = json(&rpc(&["bdev_lvol_get_lvstores", "-l", "lvs9"]));
    assert_eq!(lvs[0]["base_bdev"], "F0");
    let lvols = json(&rpc(&["bdev_lvol_get_lvols", "-l", "lvs9"]));
    assert_eq!(lvol(&lvols, "vd1")["alias"], "lvs9/vd1");
    qemu_io(port, "e0", &["read -P 0x77 0 64k"]);
    let out = fails(&["bdev_lvol_rename_lvstore", "lvs0", "x"]);
    assert!(
        out.contains("-2") && out.contains("Lvol store lvs0 not found"),
        "{out}"
    );
    let out = fails(&["bdev_lvol_rename_lvstore", "lvs9", "lvs1"]);
    assert!(
        out.contains("-32602") && out.contains("already exists"),
        "{out}"
    );
    let e = srv.call_err(
        "bdev_lvol_rename_lvstore",
        serde_json::json!({"old_name": 7, "new_name": "x"}),
    );
    assert!(e.code == -32602 && e.message.contains("old_name"), "{e}");
    // Its base bdev is still held, under the new name.
    let f0 = json(&rpc(&["bdev_get_bdevs", "-b", "F0"]));
    assert_eq!(f0[0]["claimed_by"], serde_json::json!(["pool `lvs9`"]));
    srv.call("nbd_stop_export", serde_json::json!({"name": "e0"}));
    rpc(&["bdev_lvol_delete_lvstore", "-l", "lvs1"]);
    srv.stop();

    // Restarted on the same file: the new names.
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "lvs9/vd1"]));
    assert_eq!(b[0]["name"], vd0.as_str());
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvols.as_array().unwrap().len(), 2, "{lvols}");
    assert_eq!(lvol(&lvols, "vd2")["alias"], "lvs9/vd2");
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "vd1", "name": "e1"}),
    );
    qemu_io(port, "e1", &["read -P 0x77 0 64k"]);
    srv.stop();
}

/// The blocks that changed between a snapshot and its disk, and what a disk's blocks
/// hold, over RPC (`tessera_lvol_get_changed_ranges`, `_allocated_ranges`, paginated)
/// and over NBD (`nbdinfo --map=qemu:dirty-bitmap:<snapshot>`), on a `tessera serve`
/// with the writes made by qemu-io; bad parameters refused with the field named.
#[test]
fn changed_and_allocated_ranges_over_rpc_and_nbd() {
    let port = free_port();
    let srv = Serve::start_yaml(&config(port));
    srv.call(
        "bdev_lvol_create_lvstore",
        serde_json::json!({"bdev_name": "Malloc0", "lvs_name": "lvs0"}),
    );
    srv.call(
        "bdev_lvol_create",
        serde_json::json!({"lvol_name": "vd0", "size_in_mib": 16, "lvs_name": "lvs0", "thin_provision": true}),
    );
    srv.call(
        "nbd_start_export",
        serde_json::json!({"bdev_name": "lvs0/vd0", "name": "e0"}),
    );
    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    qemu_io(port, "e0", &["write -P 0x11 0 64k", "write -P 0x12 1M 4k"]);
    srv.call(
        "bdev_lvol_snapshot",
        serde_json::json!({"lvol_name": "lvs0/vd0", "snapshot_name": "s1"}),
    );
    qemu_io(port, "e0", &["write -P 0x22 32k 8k", "write -P 0x23 5M 8k"]);

    let ranges = |v: &Value| -> Vec<(u64, u64)> {
        v["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
            .collect()
    };
    let all = srv.call(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "lvs0/s1", "target": "lvs0/vd0"}),
    );
    assert_eq!(ranges(&all), [(32 * K, 8 * K), (5 * M, 8 * K)], "{all}");
    assert_eq!(all["block_size"], 4096);
    assert_eq!(all["next_offset_blocks"], Value::Null);
    assert_eq!(all["ranges"][0]["offset_blocks"], 8);
    assert_eq!(all["ranges"][0]["num_blocks"], 2);
    // A page at a time.
    let p1 = srv.call(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "s1", "target": "vd0", "max_ranges": 1}),
    );
    assert_eq!(ranges(&p1), [(32 * K, 8 * K)], "{p1}");
    let next = p1["next_offset_blocks"].as_u64().expect("a next page");
    let p2 = srv.call(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "s1", "target": "vd0", "max_ranges": 1, "offset_blocks": next}),
    );
    assert_eq!(ranges(&p2), [(5 * M, 8 * K)], "{p2}");
    assert_eq!(p2["next_offset_blocks"], Value::Null);
    // The snapshot against itself: nothing.
    let none = srv.call(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "s1", "target": "s1"}),
    );
    assert_eq!(ranges(&none), []);

    // What the snapshot holds: data where written, zeros in its mapped segments, holes.
    let alloc = srv.call(
        "tessera_lvol_get_allocated_ranges",
        serde_json::json!({"name": "lvs0/s1"}),
    );
    let states: Vec<(u64, u64, String)> = alloc["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["offset"].as_u64().unwrap(),
                r["length"].as_u64().unwrap(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, String)> = [
        (0, 64 * K, "data"),
        (64 * K, M - 64 * K, "zero"),
        (M, 4 * K, "data"),
        (M + 4 * K, M - 4 * K, "zero"),
        (2 * M, 14 * M, "hole"),
    ]
    .into_iter()
    .map(|(o, l, s)| (o, l, s.to_string()))
    .collect();
    assert_eq!(states, want, "{alloc}");

    // Over NBD: the same changed blocks, as qemu's dirty bitmap. Each connection opens
    // fresh channels of the disk and the snapshot, which learn their tables from the
    // controller: the first query must not come before that (it would answer "all
    // changed"), so a few connections are tried.
    for _ in 0..8 {
        let map = run_ok(
            Command::new("nbdinfo")
                .arg("--map=qemu:dirty-bitmap:lvs0/s1")
                .arg(format!("nbd://127.0.0.1:{port}/e0")),
        );
        let dirty: Vec<(u64, u64)> = map
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f[2] == "1")
            .map(|f| (f[0].parse().unwrap(), f[1].parse().unwrap()))
            .collect();
        assert_eq!(dirty, [(32 * K, 8 * K), (5 * M, 8 * K)], "{map}");
    }

    // Refused, with the field named.
    let e = srv.call_err(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "s1", "target": "vd0", "max_ranges": 0}),
    );
    assert!(e.code == -22 && e.message.contains("max_ranges"), "{e:?}");
    let e = srv.call_err(
        "tessera_lvol_get_changed_ranges",
        serde_json::json!({"base": "nope", "target": "vd0"}),
    );
    assert!(e.code == -19 && e.message.contains("nope"), "{e:?}");
    let e = srv.call_err(
        "tessera_lvol_get_allocated_ranges",
        serde_json::json!({"name": "vd0", "offset_blocks": 1u64 << 40}),
    );
    assert!(
        e.code == -22 && e.message.contains("offset_blocks"),
        "{e:?}"
    );
    let e = srv.call_err(
        "tessera_lvol_get_allocated_ranges",
        serde_json::json!({"name": "vd0", "bogus": 1}),
    );
    assert!(e.message.contains("bogus"), "{e:?}");
}

/// The keyring as SPDK's client drives it: a key named in the YAML and one added with
/// `keyring_file_add_key` are listed by `keyring_get_keys` and saved by `save_config`
/// (JSON) and `tessera_save_config` (YAML) as name and path; a file readable by others,
/// a relative path, a missing file, a name taken and an unknown key are refused with
/// SPDK's codes; the key material is in no reply, saved configuration or log line.
#[test]
fn spdk_rpc_manages_keys_and_never_shows_their_material() {
    use std::os::unix::fs::PermissionsExt;
    let tool = spdk_rpc();
    let dir = tempfile::tempdir().unwrap();
    let secret = "NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";
    let key_file = |name: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::write(&p, secret).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p.display().to_string()
    };
    let (yaml_key, key0, open) = (
        key_file("yaml.key", 0o600),
        key_file("key0.key", 0o400),
        key_file("open.key", 0o644),
    );
    let srv = Serve::start_yaml(&format!(
        "keys:\n  - {{name: yamlkey, path: {yaml_key}}}\n{}",
        config(free_port())
    ));
    let s = srv.socket.clone();
    let rpc = |args: &[&str]| spdk(&tool, &s, args);
    let fails = |args: &[&str]| run_fails(Command::new(&tool).arg("-s").arg(&s).args(args));
    let mut seen = String::new();

    seen += &rpc(&["keyring_file_add_key", "key0", &key0]);
    let keys = rpc(&["keyring_get_keys"]);
    seen += &keys;
    let keys = json(&keys);
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["key0", "yamlkey"], "{keys}");
    assert_eq!(keys[0]["path"], key0.as_str(), "{keys}");
    assert_eq!(keys[0]["module"], "keyring_file", "{keys}");

    for (args, code, text) in [
        (
            vec!["keyring_file_add_key", "key1", &open],
            "-1",
            "mode 0644",
        ),
        (
            vec!["keyring_file_add_key", "key1", "relative.key"],
            "-1",
            "absolute",
        ),
        (
            vec!["keyring_file_add_key", "key1", "/nonexistent/key"],
            "-2",
            "No such file",
        ),
        (
            vec!["keyring_file_add_key", "key0", &key0],
            "-17",
            "File exists",
        ),
        (
            vec!["keyring_file_remove_key", "nokey"],
            "-126",
            "Required key not available",
        ),
    ] {
        let out = fails(&args);
        assert!(
            out.contains(&format!("\"code\": {code}")) && out.contains(text),
            "{args:?}: {out}"
        );
        seen += &out;
    }

    // Saved as name and path, both ways.
    let saved = rpc(&["save_config"]);
    let doc = json(&saved);
    let keyring = doc["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == "keyring")
        .unwrap_or_else(|| panic!("no keyring subsystem in {saved}"));
    let added: Vec<&str> = keyring["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["method"], "keyring_file_add_key", "{c}");
            c["params"]["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(added, ["key0", "yamlkey"], "{keyring}");
    seen += &saved;
    let yaml = srv.call("tessera_save_config", serde_json::json!({}));
    let yaml = yaml.as_str().unwrap_or_default().to_string();
    assert!(yaml.contains("keys:") && yaml.contains(&yaml_key), "{yaml}");
    seen += &yaml;

    seen += &rpc(&["keyring_file_remove_key", "key0"]);
    let keys = json(&rpc(&["keyring_get_keys"]));
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    seen += &srv.stop();
    assert!(
        !seen.contains(secret),
        "the key material was shown:\n{seen}"
    );
    assert!(
        seen.contains("key added"),
        "the log has no key lines:\n{seen}"
    );
}
