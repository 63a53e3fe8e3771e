//! Serve from YAML, change the target over RPC, save the running configuration in both
//! formats (SPDK's JSON through `save_config` — and through SPDK's own client, which must
//! be installed — and tessera's YAML through `tessera_save_config`), restart from each file:
//! the same bdevs, pools, disks, snapshots, clones and exports. Disks of a pool on a file
//! keep their data across the restarts (the pool is found again on its bdev); disks of a
//! RAM pool come back empty, as RAM does.

#[path = "nbd_support/mod.rs"]
mod nbd_support;
mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What must survive a restart, comparable. A disk's bdev is named by its UUID, which
/// an SPDK file does not keep (SPDK's `bdev_lvol_create` has no place for it): bdevs are
/// compared by their `pool/disk` alias where they have one.
fn state(srv: &Serve) -> Value {
    let all = srv.call("bdev_get_bdevs", Value::Null);
    let shown: BTreeMap<String, Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let n = b["name"].as_str().unwrap().to_string();
            (n, b["aliases"].get(0).cloned().unwrap_or(b["name"].clone()))
        })
        .collect();
    let show = |v: &Value| {
        v.as_str()
            .and_then(|n| shown.get(n))
            .cloned()
            .unwrap_or(v.clone())
    };
    let mut bdevs: Vec<Value> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            json!({
                "name": show(&b["name"]), "product_name": b["product_name"],
                "num_blocks": b["num_blocks"], "block_size": b["block_size"],
                "read_only": b["read_only"], "aliases": b["aliases"],
            })
        })
        .collect();
    bdevs.sort_by_key(|b| b["name"].as_str().unwrap().to_string());
    let mut lvols: Vec<Value> = srv
        .call("bdev_lvol_get_lvols", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            json!({
                "name": l["name"], "lvs": l["lvs"]["name"], "is_snapshot": l["is_snapshot"],
                "is_clone": l["is_clone"], "parent": l["parent"], "num_blocks": l["num_blocks"],
                "thin": l["is_thin_provisioned"], "read_only": l["read_only"],
                "cow_policy": l["cow_policy"],
            })
        })
        .collect();
    lvols.sort_by_key(|l| l["name"].as_str().unwrap().to_string());
    let lvstores: BTreeMap<String, Value> = srv
        .call("bdev_lvol_get_lvstores", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                json!({"base_bdevs": s["base_bdevs"], "cluster_size": s["cluster_size"]}),
            )
        })
        .collect();
    let nbd = srv.call("nbd_get_exports", Value::Null);
    let nbd: Vec<Value> = nbd
        .as_array()
        .unwrap()
        .iter()
        .map(|e| json!({"name": e["name"], "bdev": show(&e["bdev"]), "read_only": e["read_only"]}))
        .collect();
    let nvmf: Vec<Value> = srv
        .call("nvmf_get_subsystems", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let ns: Vec<Value> = s["namespaces"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| json!([n["nsid"], show(&n["bdev_name"])]))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "nqn": s["nqn"], "allow_any_host": s["allow_any_host"], "hosts": s["hosts"],
                "listen": s["listen_addresses"], "namespaces": ns,
                "serial_number": s["serial_number"],
            })
        })
        .collect();
    json!({"bdevs": bdevs, "lvols": lvols, "lvstores": lvstores, "nbd": nbd, "nvmf": nvmf,
        "transports": srv.call("nvmf_get_transports", Value::Null)})
}

fn nbd_write(port: u16, export: &str, data: &[u8]) {
    let mut c = nbd_support::RawClient::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        export,
        Default::default(),
    )
    .unwrap();
    assert_eq!(c.write(0, data).unwrap().error, 0);
    assert_eq!(c.flush().unwrap().error, 0);
    c.disconnect().unwrap();
}

fn nbd_read(port: u16, export: &str, len: usize) -> Vec<u8> {
    let mut c = nbd_support::RawClient::connect(
        format!("127.0.0.1:{port}").parse().unwrap(),
        export,
        Default::default(),
    )
    .unwrap();
    let r = c.read(0, len as u64).unwrap();
    assert_eq!(r.error, 0);
    c.disconnect().unwrap();
    r.data
}

fn restart(file: &Path) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    Serve::start_file(dir, file)
}

#[test]
fn save_config_in_both_formats_restarts_the_same_target() {
    let (nbd_port, nvmf_port, nvmf_port2) = (free_port(), free_port(), free_port());
    let files = tempfile::tempdir().unwrap();
    let img = files.path().join("u0.img");
    let srv = Serve::start_yaml(&format!(
        "cores: [0, 1]
idle: adaptive
bdevs:
  - {{type: malloc, name: Malloc0, size: 128MiB}}
  - {{type: uring, name: U0, path: {img}, size: 128MiB}}
pools:
  - {{name: pool0, bdevs: [Malloc0]}}
  - {{name: upool, bdevs: [U0], segment_size: 256KiB}}
disks:
  - {{name: vd0, pool: pool0, size: 32MiB}}
nbd:
  listen: 127.0.0.1:{nbd_port}
  exports: [{{name: vd0, bdev: vd0}}]
nvmf:
  subsystems:
    - nqn: nqn.2016-06.io.tessera:one
      allow_any_host: true
      listeners: [{{address: 127.0.0.1, port: {nvmf_port}}}]
      namespaces: [{{bdev: vd0, nsid: 1}}]
",
        img = img.display()
    ));

    // Change things over RPC.
    srv.call(
        "bdev_lvol_resize",
        json!({"name": "vd0", "size_in_mib": 48}),
    );
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "pool0/vd0", "snapshot_name": "s0"}),
    );
    srv.call(
        "bdev_lvol_clone",
        json!({"snapshot_name": "s0", "clone_name": "c0"}),
    );
    srv.call(
        "tessera_set_cow_policy",
        json!({"name": "c0", "cow_policy": "copy-out"}),
    );
    srv.call("bdev_lvol_set_read_only", json!({"name": "pool0/c0"}));
    srv.call(
        "bdev_lvol_create",
        json!({"lvol_name": "vd2", "size_in_mib": 8, "lvs_name": "pool0", "thin_provision": true}),
    );
    srv.call(
        "tessera_set_read_only",
        json!({"name": "vd2", "read_only": true}),
    );
    // The file-backed pool: a disk with data, a snapshot, a clone, a snapshot of the
    // clone and a clone of that.
    srv.call(
        "bdev_lvol_create",
        json!({"lvol_name": "vd1", "size_in_mib": 16, "lvs_name": "upool", "thin_provision": true}),
    );
    srv.call("nbd_start_export", json!({"bdev_name": "upool/vd1"}));
    let data = nbd_support::pattern(42, 64 << 10);
    nbd_write(nbd_port, "vd1", &data);
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "vd1", "snapshot_name": "s1"}),
    );
    srv.call(
        "bdev_lvol_clone",
        json!({"snapshot_name": "upool/s1", "clone_name": "c1"}),
    );
    srv.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": "c1", "snapshot_name": "s2"}),
    );
    srv.call(
        "bdev_lvol_clone",
        json!({"snapshot_name": "s2", "clone_name": "c2"}),
    );
    // More base bdevs, exports, a second subsystem.
    srv.call(
        "bdev_malloc_create",
        json!({"name": "Malloc1", "num_blocks": 4096, "block_size": 4096}),
    );
    srv.call(
        "bdev_null_create",
        json!({"name": "Null0", "num_blocks": 1 << 20, "block_size": 512}),
    );
    srv.call("bdev_error_create", json!({"base_name": "Malloc1"}));
    srv.call("nbd_start_export", json!({"bdev_name": "pool0/c0", "name": "clone-export", "read_only": true, "description": "c0"}));
    let nqn2 = "nqn.2016-06.io.tessera:two";
    srv.call(
        "nvmf_create_subsystem",
        json!({"nqn": nqn2, "serial_number": "TWO"}),
    );
    srv.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn2, "namespace": {"bdev_name": "upool/c2", "nsid": 3}}),
    );
    srv.call(
        "nvmf_subsystem_add_ns",
        json!({"nqn": nqn2, "namespace": {"bdev_name": "EE_Malloc1"}}),
    );
    srv.call("nvmf_subsystem_add_listener", json!({"nqn": nqn2, "listen_address": {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": nvmf_port2.to_string()}}));
    srv.call("nvmf_subsystem_add_host", json!({"nqn": nqn2, "host": "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001"}));
    let before = state(&srv);

    // Save: SPDK's JSON, through our method and through SPDK's client; our YAML.
    let json_file = files.path().join("saved.json");
    let saved = srv.call("save_config", Value::Null);
    std::fs::write(&json_file, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
    let out = run_ok(
        Command::new(spdk_rpc())
            .arg("-s")
            .arg(&srv.socket)
            .arg("save_config"),
    );
    let theirs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(theirs["subsystems"], saved["subsystems"]);
    let yaml_file = files.path().join("saved.yaml");
    let r = srv.call("tessera_save_config", json!({"path": yaml_file}));
    assert_eq!(r["path"], yaml_file.to_str().unwrap());
    let yaml = srv.call("tessera_save_config", Value::Null);
    assert_eq!(
        yaml.as_str().unwrap(),
        std::fs::read_to_string(&yaml_file).unwrap()
    );
    srv.stop();

    for file in [&yaml_file, &json_file] {
        let srv = restart(file);
        let after = state(&srv);
        assert_eq!(
            after,
            before,
            "restart from {}:\n{}",
            file.display(),
            std::fs::read_to_string(file).unwrap()
        );
        // The file-backed pool kept its data; its clones see the snapshot's.
        assert_eq!(nbd_read(nbd_port, "vd1", data.len()), data);
        srv.call("nbd_start_export", json!({"bdev_name": "c2"}));
        assert_eq!(nbd_read(nbd_port, "c2", data.len()), data);
        srv.call("nbd_stop_export", json!({"name": "c2"}));
        srv.stop();
    }
}
