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

    // Thin by name, thick by lvstore UUID.
    assert_eq!(
        rpc(&["bdev_lvol_create", "-l", "pool0", "-t", "vd0", "64"]).trim(),
        "vd0"
    );
    assert_eq!(
        rpc(&["bdev_lvol_create", "-u", &uuid, "thick0", "8"]).trim(),
        "thick0"
    );
    let lvs = json(&rpc(&["bdev_lvol_get_lvstores", "-u", &uuid]));
    let free_after_thick = lvs[0]["free_clusters"].as_u64().unwrap();

    assert_eq!(
        rpc(&["bdev_lvol_snapshot", "pool0/vd0", "snap0"]).trim(),
        "snap0"
    );
    assert_eq!(
        rpc(&["bdev_lvol_clone", "pool0/snap0", "clone0"]).trim(),
        "clone0"
    );
    let lvols = json(&rpc(&["bdev_lvol_get_lvols", "-l", "pool0"]));
    assert_eq!(lvol(&lvols, "snap0")["is_snapshot"], true);
    assert_eq!(lvol(&lvols, "clone0")["is_clone"], true);
    assert_eq!(lvol(&lvols, "clone0")["parent"], "snap0");
    assert_eq!(lvol(&lvols, "vd0")["is_thin_provisioned"], true);
    assert_eq!(lvol(&lvols, "thick0")["is_thin_provisioned"], false);
    assert_eq!(lvol(&lvols, "vd0")["alias"], "pool0/vd0");
    assert_eq!(lvol(&lvols, "vd0")["lvs"]["uuid"], uuid.as_str());

    // Inflate: the clone stands alone afterwards.
    rpc(&["bdev_lvol_inflate", "pool0/clone0"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone0")["is_clone"], false);
    assert_eq!(lvol(&lvols, "clone0")["parent"], Value::Null);

    // Decouple: a clone of a snapshot in a chain moves up to the older snapshot.
    assert_eq!(rpc(&["bdev_lvol_snapshot", "vd0", "snap1"]).trim(), "snap1");
    assert_eq!(
        rpc(&["bdev_lvol_clone", "snap1", "clone1"]).trim(),
        "clone1"
    );
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "snap1")["parent"], "snap0");
    rpc(&["bdev_lvol_decouple_parent", "pool0/clone1"]);
    let lvols = json(&rpc(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone1")["parent"], "snap0");

    // bdev_get_bdevs by alias, in SPDK's shape.
    let b = json(&rpc(&["bdev_get_bdevs", "-b", "pool0/vd0"]));
    assert_eq!(b[0]["name"], "vd0");
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
    assert!(
        out.contains("-19") && out.contains("does not exist"),
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
        out.contains("-19") && out.contains("lvstore \\\"nopool\\\" does not exist"),
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
    assert_eq!(subs[0]["namespaces"][0]["bdev_name"], "vd0");
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
    assert_eq!(
        rpc(&[
            "bdev_lvol_create",
            "--lvol-name",
            "vd0",
            "--size-in-mib",
            "64",
            "--thin-provision",
            "--lvs-name",
            "pool0"
        ])
        .trim(),
        "vd0"
    );
    assert_eq!(
        rpc(&[
            "bdev_lvol_snapshot",
            "--json",
            r#"{"lvol_name": "pool0/vd0", "snapshot_name": "snap0"}"#
        ])
        .trim(),
        "snap0"
    );
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
    assert_eq!(snaps, serde_json::json!(["g-vd0", "g-clone0"]));
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
    assert_eq!(exp["bdev"], "vd0");
    let exports = json(&rpc(&["nbd_get_exports"]));
    assert_eq!(exports[0]["name"], "disk0");
    rpc(&["nbd_stop_export", "--name", "disk0"]);
    srv.stop();
}
