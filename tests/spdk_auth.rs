//! DH-HMAC-CHAP against SPDK's own host (v25.09, `../shared/spdk`): `bdevperf` with
//! `bdev_nvme_attach_controller` naming `dhchap_key` / `dhchap_ctrlr_key` of its
//! keyring, against `tessera serve` whose hosts name keys of tessera's keyring (set in
//! the YAML and by RPC). One-way and bidirectional authentication run a verify workload;
//! a wrong key, a missing key, a wrong controller key and a host that is not allowed are
//! each refused with what SPDK's host reports, while a good host keeps running I/O; and
//! no key material shows in the target's log, its RPC replies or `save_config`.

mod process_support;
mod rpc_common;
mod spdk_support;

use rpc_common::{Serve, free_port};
use serde_json::{Value, json};
use spdk_support::{Background, assert_verified, bdevperf};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera::nvme::auth::HashId;
use tessera::nvme::dhchap::DhchapKey;

const NQN: &str = "nqn.2026-11.io.tessera:auth";
const ONE_WAY: &str = "nqn.2014-08.org.nvmexpress:uuid:0a1b2c3d-0000-4000-8000-000000000001";
const BIDIR: &str = "nqn.2014-08.org.nvmexpress:uuid:0a1b2c3d-0000-4000-8000-000000000002";
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:0a1b2c3d-0000-4000-8000-000000000003";

/// A key file of mode 0600 holding a `DHHC-1` secret; returns its path and text.
fn key_file(dir: &Path, name: &str, hash: HashId, seed: u8) -> (PathBuf, String) {
    let bytes: Vec<u8> = (0..hash.digest_len())
        .map(|i| (i as u8).wrapping_mul(73).wrapping_add(seed))
        .collect();
    let text = DhchapKey::format(Some(hash), &bytes).to_string();
    let p = dir.join(format!("{name}.key"));
    std::fs::write(&p, format!("{text}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (p, text)
}

/// A bdevperf config: SPDK's keyring with `keys`, one controller as `hostnqn` with the
/// keys named.
fn bdevperf_config(
    dir: &Path,
    name: &str,
    port: u16,
    hostnqn: &str,
    keys: &[(&str, &Path)],
    dhchap_key: Option<&str>,
    dhchap_ctrlr_key: Option<&str>,
) -> PathBuf {
    let params: Vec<(&str, &str)> = [
        ("dhchap_key", dhchap_key),
        ("dhchap_ctrlr_key", dhchap_ctrlr_key),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k, v?)))
    .collect();
    spdk_support::bdevperf_config(dir, name, port, NQN, hostnqn, keys, &params)
}

/// Runs a short bdevperf expected to fail to attach; returns its output.
fn refused(cfg: &Path, log: PathBuf) -> String {
    spdk_support::refused(cfg, log, "error response")
}

#[test]
fn spdk_host_authenticates_one_way_and_bidirectionally_and_bad_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (host_key, host_text) = key_file(&d, "host", HashId::Sha256, 1);
    let (ctrl_key, ctrl_text) = key_file(&d, "ctrl", HashId::Sha512, 2);
    let (bidir_key, bidir_text) = key_file(&d, "bidir", HashId::Sha384, 3);
    let (wrong_key, _) = key_file(&d, "wrong", HashId::Sha256, 4);
    let (wrong_ctrl, _) = key_file(&d, "wrongctrl", HashId::Sha512, 5);
    let port = free_port();
    // The one-way host's key comes from the YAML; the bidirectional host's by RPC.
    let yaml = format!(
        r#"cores: [0]
keys:
  - {{name: hostkey, path: {host}}}
bdevs:
  - {{type: malloc, name: M0, size: 64MiB}}
  - {{type: malloc, name: M1, size: 64MiB}}
nvmf:
  subsystems:
    - nqn: {NQN}
      allow_any_host: false
      hosts: [{ONE_WAY}]
      dhchap: {{{ONE_WAY}: {{dhchap_key: hostkey}}}}
      listeners: [{{address: 127.0.0.1, port: {port}}}]
      namespaces: [{{bdev: M0, nsid: 1}}]
"#,
        host = host_key.display()
    );
    let cfg = d.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    srv.call(
        "keyring_file_add_key",
        json!({"name": "bidirkey", "path": bidir_key}),
    );
    srv.call(
        "keyring_file_add_key",
        json!({"name": "ctrlkey", "path": ctrl_key}),
    );
    srv.call(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": BIDIR, "dhchap_key": "bidirkey", "dhchap_ctrlr_key": "ctrlkey"}),
    );
    // A controller key without a host key, or a key that is not in the keyring: refused.
    let e = srv.call_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": STRANGER, "dhchap_ctrlr_key": "ctrlkey"}),
    );
    assert!(e.to_string().contains("requires dhchap_key"), "{e}");
    let e = srv.call_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": STRANGER, "dhchap_key": "nosuchkey"}),
    );
    assert!(e.to_string().contains("nosuchkey"), "{e}");
    // A key file that is not a valid secret: refused, naming the fault (not the key).
    let bad = d.join("badcrc.key");
    let mut text = DhchapKey::format(Some(HashId::Sha256), &[8; 32]).to_string();
    text.replace_range(40..41, if &text[40..41] == "A" { "B" } else { "A" });
    std::fs::write(&bad, &text).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    srv.call(
        "keyring_file_add_key",
        json!({"name": "badcrc", "path": bad}),
    );
    let e = srv.call_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": STRANGER, "dhchap_key": "badcrc"}),
    );
    assert!(e.to_string().contains("CRC-32 does not match"), "{e}");
    assert!(!e.to_string().contains(&text[10..40]), "{e}");

    // One-way: SPDK's host proves itself with its key.
    let one_way = bdevperf_config(
        &d,
        "one_way",
        port,
        ONE_WAY,
        &[("k", &host_key)],
        Some("k"),
        None,
    );
    let (ok, out) = bdevperf(&one_way, 3, d.join("one_way.log")).wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    // Bidirectional, restricted to SHA-256 and ffdhe2048 by nvmf_set_config first, then
    // with everything allowed (SHA-512 and ffdhe8192 are picked).
    srv.call(
        "nvmf_set_config",
        json!({"dhchap_digests": ["sha256"], "dhchap_dhgroups": ["ffdhe2048"]}),
    );
    let bidir = bdevperf_config(
        &d,
        "bidir",
        port,
        BIDIR,
        &[("k", &bidir_key), ("c", &ctrl_key)],
        Some("k"),
        Some("c"),
    );
    let (ok, out) = bdevperf(&bidir, 3, d.join("bidir1.log")).wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    let log = srv.log_text();
    assert!(
        log.contains("digest=\"sha256\" dhgroup=\"ffdhe2048\""),
        "{log}"
    );
    srv.call(
        "nvmf_set_config",
        json!({"dhchap_digests": ["sha256", "sha384", "sha512"],
               "dhchap_dhgroups": ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"]}),
    );

    // A good host runs I/O through every refusal below.
    let good = bdevperf(&bidir, 14, d.join("good.log"));
    std::thread::sleep(Duration::from_secs(2));

    // A wrong host key: the target answers AUTH_Failure1, authentication failed.
    let cfg = bdevperf_config(
        &d,
        "wrong",
        port,
        ONE_WAY,
        &[("k", &wrong_key)],
        Some("k"),
        None,
    );
    let out = refused(&cfg, d.join("wrong.log"));
    assert!(
        out.contains("received AUTH_failure1: rc=1, rce=1 (authentication failed)"),
        "{out}"
    );
    // No key on a host that must authenticate: SPDK's host cannot answer ATR.
    let cfg = bdevperf_config(&d, "missing", port, ONE_WAY, &[], None, None);
    let out = refused(&cfg, d.join("missing.log"));
    assert!(out.contains("missing DH-HMAC-CHAP key"), "{out}");
    // A wrong controller key: SPDK's host finds our response wrong.
    let cfg = bdevperf_config(
        &d,
        "wrongctrl",
        port,
        BIDIR,
        &[("k", &bidir_key), ("c", &wrong_ctrl)],
        Some("k"),
        Some("c"),
    );
    let out = refused(&cfg, d.join("wrongctrl.log"));
    assert!(out.contains("controller challenge mismatch"), "{out}");
    // A host that is not allowed: Connect Invalid Host (SCT 1h, SC 84h).
    let cfg = bdevperf_config(
        &d,
        "stranger",
        port,
        STRANGER,
        &[("k", &host_key)],
        Some("k"),
        None,
    );
    let out = refused(&cfg, d.join("stranger.log"));
    assert!(
        out.contains("Connect command completed with error: sct 1, sc 132"),
        "{out}"
    );
    // A controller key on a host the target knows only one-way: SPDK's host asks us to
    // prove ourselves and we have no key: authentication failed.
    let cfg = bdevperf_config(
        &d,
        "noctrl",
        port,
        ONE_WAY,
        &[("k", &host_key), ("c", &ctrl_key)],
        Some("k"),
        Some("c"),
    );
    let out = refused(&cfg, d.join("noctrl.log"));
    assert!(
        out.contains("received AUTH_failure1: rc=1, rce=1 (authentication failed)"),
        "{out}"
    );

    let (ok, out) = good.wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    let log = srv.log_text();
    assert!(log.contains("challenge response mismatch"), "{log}");
    assert!(
        log.contains("ctrlr authentication failed: rc=1, rce=1"),
        "{log}"
    );
    assert!(log.contains("missing DH-HMAC-CHAP ctrlr key"), "{log}");

    // No key material anywhere: the secrets, their base64 parts, their decoded bytes.
    let replies = [
        srv.call("nvmf_get_subsystems", Value::Null),
        srv.call("keyring_get_keys", Value::Null),
        srv.call("save_config", Value::Null),
    ];
    let saved = replies[2].to_string();
    assert!(saved.contains("\"dhchap_key\":\"bidirkey\""), "{saved}");
    assert!(
        saved.contains("\"dhchap_ctrlr_key\":\"ctrlkey\""),
        "{saved}"
    );
    let log = srv.stop();
    for text in [&host_text, &ctrl_text, &bidir_text] {
        let b64 = &text[10..text.len() - 1];
        let raw = DhchapKey::parse(text.as_bytes()).unwrap();
        assert!(raw.key_len() >= 32);
        for hay in [log.clone(), replies.iter().map(Value::to_string).collect()] {
            assert!(!hay.contains(b64), "key material in output");
            assert!(!hay.contains(&b64[..16]), "key material in output");
        }
    }
}

/// SPDK's nvmf_tgt whose subsystem admits `ONE_WAY` with `key0` and `BIDIR` with `key1`
/// and controller key `ckey1` (keys of SPDK's own keyring), a 64 MiB malloc namespace.
fn spdk_target_with_keys(dir: &Path, port: u16, keys: &[(&str, &Path)]) -> Background {
    let keyring: Vec<Value> = keys
        .iter()
        .map(|(n, p)| json!({"method": "keyring_file_add_key", "params": {"name": n, "path": p}}))
        .collect();
    let cfg = json!({"subsystems": [
        {"subsystem": "keyring", "config": keyring},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create",
             "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem",
             "params": {"nqn": NQN, "allow_any_host": false, "serial_number": "SPDK-AUTH-1"}},
            {"method": "nvmf_subsystem_add_ns",
             "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_host",
             "params": {"nqn": NQN, "host": ONE_WAY, "dhchap_key": "key0"}},
            {"method": "nvmf_subsystem_add_host",
             "params": {"nqn": NQN, "host": BIDIR, "dhchap_key": "key1",
                        "dhchap_ctrlr_key": "ckey1"}},
            {"method": "nvmf_subsystem_add_listener",
             "params": {"nqn": NQN,
                        "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                                           "traddr": "127.0.0.1",
                                           "trsvcid": port.to_string()}}}]}]});
    spdk_support::nvmf_tgt(dir, port, &cfg)
}

/// tessera's initiator as the host of DH-HMAC-CHAP, against SPDK's nvmf_tgt: one-way
/// and bidirectional attach (`bdev_nvme_attach_controller` naming keys of tessera's
/// keyring) and carry I/O (qemu-io through an NBD export of the namespace); a wrong
/// host key, a wrong controller key and no key at all are each refused with -EACCES
/// and the reason; no key material in the log, RPC replies or `save_config`.
#[test]
fn tessera_host_authenticates_to_spdk_nvmf_tgt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k0, k0_text) = key_file(&d, "k0", HashId::Sha256, 11);
    let (k1, k1_text) = key_file(&d, "k1", HashId::Sha384, 12);
    let (ck1, ck1_text) = key_file(&d, "ck1", HashId::Sha512, 13);
    let (wrong, _) = key_file(&d, "wrong", HashId::Sha256, 14);
    let spdk_port = free_port();
    let _peer = spdk_target_with_keys(
        &d,
        spdk_port,
        &[("key0", &k0), ("key1", &k1), ("ckey1", &ck1)],
    );
    let nbd_port = free_port();
    let srv = Serve::start_yaml(&format!(
        "cores: [0]\nidle: adaptive\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n"
    ));
    for (name, path) in [("k0", &k0), ("k1", &k1), ("ck1", &ck1), ("wrong", &wrong)] {
        srv.call("keyring_file_add_key", json!({"name": name, "path": path}));
    }
    let attach = |name: &str, host: &str, key: Option<&str>, ckey: Option<&str>| {
        let mut p = json!({"name": name, "trtype": "TCP", "adrfam": "IPv4",
            "traddr": "127.0.0.1", "trsvcid": spdk_port.to_string(), "subnqn": NQN,
            "hostnqn": host});
        if let Some(k) = key {
            p["dhchap_key"] = json!(k);
        }
        if let Some(k) = ckey {
            p["dhchap_ctrlr_key"] = json!(k);
        }
        p
    };

    // One-way, then bidirectional: each attaches and carries I/O.
    for (ctrl, host, key, ckey, pattern) in [
        ("OneWay", ONE_WAY, "k0", None, 0x5a),
        ("Bidir", BIDIR, "k1", Some("ck1"), 0xa5),
    ] {
        let names = srv.call(
            "bdev_nvme_attach_controller",
            attach(ctrl, host, Some(key), ckey),
        );
        assert_eq!(names, json!([format!("{ctrl}n1")]), "{names}");
        srv.call(
            "nbd_start_export",
            json!({"bdev_name": format!("{ctrl}n1"), "name": ctrl}),
        );
        let uri = format!("nbd://127.0.0.1:{nbd_port}/{ctrl}");
        spdk_support::qemu_io(&uri, &format!("write -P {pattern:#x} 1M 256k"));
        spdk_support::qemu_io(&uri, &format!("read -P {pattern:#x} 1M 256k"));
        srv.call("nbd_stop_export", json!({"name": ctrl}));
    }
    let saved = srv.call("save_config", Value::Null).to_string();
    assert!(saved.contains("\"dhchap_ctrlr_key\":\"ck1\""), "{saved}");

    // Refused: a wrong host key (SPDK's target answers AUTH_Failure1), a wrong
    // controller key (its answer does not match), no key where one is required.
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        attach("Wrong", ONE_WAY, Some("wrong"), None),
    );
    assert!(
        e.code == -libc::EACCES && e.message.contains("authentication failed"),
        "{e:?}"
    );
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        attach("WrongCtrl", BIDIR, Some("k1"), Some("wrong")),
    );
    assert!(
        e.code == -libc::EACCES && e.message.contains("controller's response does not match"),
        "{e:?}"
    );
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        attach("NoKey", ONE_WAY, None, None),
    );
    assert!(
        e.code == -libc::EACCES && e.message.contains("requires DH-HMAC-CHAP"),
        "{e:?}"
    );
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        attach("Missing", ONE_WAY, Some("nosuchkey"), None),
    );
    assert!(e.message.contains("nosuchkey"), "{e:?}");
    let ctrls = srv
        .call("bdev_nvme_get_controllers", Value::Null)
        .to_string();
    assert!(
        ctrls.contains("OneWay") && ctrls.contains("Bidir") && !ctrls.contains("Wrong"),
        "{ctrls}"
    );

    let replies = [
        srv.call("bdev_nvme_get_controllers", Value::Null)
            .to_string(),
        srv.call("save_config", Value::Null).to_string(),
    ];
    let log = srv.stop();
    for text in [&k0_text, &k1_text, &ck1_text] {
        let b64 = &text[10..text.len() - 1];
        for hay in [&log, &replies[0], &replies[1]] {
            assert!(!hay.contains(&b64[..16]), "key material in output");
        }
    }
}

/// `spdk-rpc -s SOCK ARGS…` within 60 s: its success and its output.
fn spdk_call(sock: &Path, args: &[&str]) -> (bool, String) {
    let out = spdk_support::run(
        std::process::Command::new(rpc_common::spdk_rpc())
            .arg("-s")
            .arg(sock)
            .args(args),
        Duration::from_secs(60),
    );
    (out.status.success(), spdk_support::text_of(&out))
}

/// Waits until bdevperf on `sock` has its controller `Nvme0` attached.
fn wait_attached(sock: &Path, proc_: &mut Background) {
    let t0 = std::time::Instant::now();
    loop {
        if sock.exists() && spdk_call(sock, &["bdev_nvme_get_controllers", "-n", "Nvme0"]).0 {
            return;
        }
        assert!(proc_.is_running(), "bdevperf ended:\n{}", proc_.text());
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "bdevperf did not attach within 60 s:\n{}",
            proc_.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `auth` records of tessera's queue pairs of the subsystem (one per queue pair).
fn auth_records(srv: &Serve) -> Vec<Value> {
    let q = srv.call("nvmf_subsystem_get_qpairs", json!({"nqn": NQN}));
    q.as_array().unwrap().to_vec()
}

/// Key rotation with SPDK's host (its `bdev_nvme_set_keys`, SPDK v25.09): bdevperf,
/// attached bidirectionally, runs `-w verify`; mid-run tessera's keys for the host
/// change (`nvmf_subsystem_set_keys`), then bdevperf's (`keyring_file_add_key` and
/// `bdev_nvme_set_keys` through its RPC socket): every one of its queue pairs
/// re-authenticates on tessera (tessera counts the transactions in
/// `nvmf_subsystem_get_qpairs`) and verify finishes with no error. Then a second
/// bdevperf rotates alone to a key tessera does not have: SPDK reports the failure
/// (tessera's AUTH_Failure1, authentication failed), while another host verifies on.
#[test]
fn spdk_host_re_authenticates_with_rotated_keys_and_a_wrong_key_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k1, _) = key_file(&d, "k1", HashId::Sha256, 11);
    let (c1, _) = key_file(&d, "c1", HashId::Sha384, 12);
    let (k2, k2_text) = key_file(&d, "k2", HashId::Sha512, 13);
    let (c2, c2_text) = key_file(&d, "c2", HashId::Sha256, 14);
    let (wrong, _) = key_file(&d, "wrong", HashId::Sha256, 15);
    let (other, _) = key_file(&d, "other", HashId::Sha256, 16);
    let port = free_port();
    let yaml = format!(
        r#"cores: [0]
bdevs:
  - {{type: malloc, name: M0, size: 64MiB}}
nvmf:
  subsystems:
    - nqn: {NQN}
      allow_any_host: false
      hosts: [{BIDIR}, {ONE_WAY}]
      listeners: [{{address: 127.0.0.1, port: {port}}}]
      namespaces: [{{bdev: M0, nsid: 1}}]
"#
    );
    let cfg = d.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    for (n, p) in [
        ("k1", &k1),
        ("c1", &c1),
        ("k2", &k2),
        ("c2", &c2),
        ("other", &other),
    ] {
        srv.call("keyring_file_add_key", json!({"name": n, "path": p}));
    }
    srv.call(
        "nvmf_subsystem_set_keys",
        json!({"nqn": NQN, "host": BIDIR, "dhchap_key": "k1", "dhchap_ctrlr_key": "c1"}),
    );
    srv.call(
        "nvmf_subsystem_set_keys",
        json!({"nqn": NQN, "host": ONE_WAY, "dhchap_key": "other"}),
    );

    // bdevperf with the first keys, verifying for 12 s.
    let sock = d.join("bperf.sock");
    let cfg = bdevperf_config(
        &d,
        "rotate",
        port,
        BIDIR,
        &[("k", &k1), ("c", &c1)],
        Some("k"),
        Some("c"),
    );
    let mut run = spdk_support::bdevperf_with_rpc(&cfg, 12, &sock, d.join("rotate.log"));
    wait_attached(&sock, &mut run);
    std::thread::sleep(Duration::from_secs(2));
    let before = auth_records(&srv);
    assert!(before.len() >= 2, "admin and I/O queue pairs: {before:?}");
    for q in &before {
        assert_eq!(q["auth"]["reauthentications"], 0, "{q}");
    }

    // Rotate on tessera, then on bdevperf.
    srv.call(
        "nvmf_subsystem_set_keys",
        json!({"nqn": NQN, "host": BIDIR, "dhchap_key": "k2", "dhchap_ctrlr_key": "c2"}),
    );
    for (n, p) in [("k2", &k2), ("c2", &c2)] {
        let (ok, out) = spdk_call(&sock, &["keyring_file_add_key", n, p.to_str().unwrap()]);
        assert!(ok, "{out}");
    }
    let (ok, out) = spdk_call(
        &sock,
        &[
            "bdev_nvme_set_keys",
            "Nvme0",
            "--dhchap-key",
            "k2",
            "--dhchap-ctrlr-key",
            "c2",
        ],
    );
    assert!(ok, "bdev_nvme_set_keys on bdevperf: {out}");
    let after = auth_records(&srv);
    assert_eq!(
        after.len(),
        before.len(),
        "no queue pair reconnected: {after:?}"
    );
    for q in &after {
        assert_eq!(q["auth"]["reauthentications"], 1, "{q}");
    }
    let (ok, out) = run.wait(Duration::from_secs(90));
    assert_verified(ok, &out);

    // Another host verifies while a second bdevperf of BIDIR rotates alone to a key
    // tessera does not have.
    let other_cfg = bdevperf_config(
        &d,
        "other",
        port,
        ONE_WAY,
        &[("k", &other)],
        Some("k"),
        None,
    );
    let good = bdevperf(&other_cfg, 10, d.join("other.log"));
    let cfg = bdevperf_config(
        &d,
        "rotated",
        port,
        BIDIR,
        &[("k", &k2), ("c", &c2)],
        Some("k"),
        Some("c"),
    );
    let sock2 = d.join("bperf2.sock");
    let mut bad = spdk_support::bdevperf_with_rpc(&cfg, 10, &sock2, d.join("bad.log"));
    wait_attached(&sock2, &mut bad);
    let (ok, out) = spdk_call(
        &sock2,
        &["keyring_file_add_key", "w", wrong.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let (ok, out) = spdk_call(
        &sock2,
        &[
            "bdev_nvme_set_keys",
            "Nvme0",
            "--dhchap-key",
            "w",
            "--dhchap-ctrlr-key",
            "c",
        ],
    );
    assert!(!ok, "a key tessera does not have must fail: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    let log = bad.stop(Duration::from_secs(5));
    assert!(
        log.contains("received AUTH_failure1: rc=1, rce=1 (authentication failed)"),
        "{log}"
    );
    let (ok, out) = good.wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    let tlog = srv.stop();
    assert!(tlog.contains("re-authentication requested"), "{tlog}");
    for text in [&k2_text, &c2_text] {
        let b64 = &text[10..text.len() - 1];
        assert!(!tlog.contains(&b64[..16]), "key material in tessera's log");
    }
}

/// The peers (host-side ports) of SPDK's queue pairs of the subsystem, each with its
/// `auth` state: the same set before and after means no queue pair reconnected.
fn spdk_qpairs(sock: &Path) -> Vec<(String, String)> {
    let (ok, out) = spdk_call(sock, &["nvmf_subsystem_get_qpairs", NQN]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let mut q: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["peer_address"]["trsvcid"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string(),
                q["auth"]["state"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect();
    q.sort();
    q
}

/// tessera's `bdev_nvme_set_keys` against SPDK's nvmf_tgt: attached bidirectionally,
/// the keys rotate on SPDK's target (`nvmf_subsystem_set_keys`) and then on tessera
/// through its RPC; tessera's queue pairs re-authenticate with SPDK's target without
/// reconnecting (the same peer ports, each `auth` completed) and the data written
/// before reads back after. A host key SPDK's target does not accept: -EACCES naming
/// queue 0 and SPDK's reason; no key material in the reply or the log.
#[test]
fn tessera_host_re_authenticates_to_spdk_nvmf_tgt_with_bdev_nvme_set_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k0, _) = key_file(&d, "k0", HashId::Sha256, 21);
    let (k1, _) = key_file(&d, "k1", HashId::Sha384, 22);
    let (ck1, _) = key_file(&d, "ck1", HashId::Sha512, 23);
    let (k2, k2_text) = key_file(&d, "k2", HashId::Sha256, 24);
    let (ck2, ck2_text) = key_file(&d, "ck2", HashId::Sha384, 25);
    let (wrong, wrong_text) = key_file(&d, "wrong", HashId::Sha256, 26);
    let spdk_port = free_port();
    let _peer = spdk_target_with_keys(
        &d,
        spdk_port,
        &[("key0", &k0), ("key1", &k1), ("ckey1", &ck1)],
    );
    let spdk_sock = d.join("spdk.sock");
    let nbd_port = free_port();
    let srv = Serve::start_yaml(&format!(
        "cores: [0]\nidle: adaptive\nnbd:\n  listen: 127.0.0.1:{nbd_port}\n"
    ));
    for (name, path) in [
        ("k1", &k1),
        ("ck1", &ck1),
        ("k2", &k2),
        ("ck2", &ck2),
        ("wrong", &wrong),
    ] {
        srv.call("keyring_file_add_key", json!({"name": name, "path": path}));
    }
    srv.call(
        "bdev_nvme_attach_controller",
        json!({"name": "Bidir", "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
               "trsvcid": spdk_port.to_string(), "subnqn": NQN, "hostnqn": BIDIR,
               "dhchap_key": "k1", "dhchap_ctrlr_key": "ck1"}),
    );
    srv.call(
        "nbd_start_export",
        json!({"bdev_name": "Bidirn1", "name": "Bidir"}),
    );
    let uri = format!("nbd://127.0.0.1:{nbd_port}/Bidir");
    spdk_support::qemu_io(&uri, "write -P 0x3c 2M 256k");
    let before = spdk_qpairs(&spdk_sock);
    assert!(before.len() >= 2, "admin and I/O queue pairs: {before:?}");
    assert!(before.iter().all(|(_, a)| a == "completed"), "{before:?}");

    // Rotate on SPDK's target, then on tessera.
    for (n, p) in [("key2", &k2), ("ckey2", &ck2)] {
        let (ok, out) = spdk_call(
            &spdk_sock,
            &["keyring_file_add_key", n, p.to_str().unwrap()],
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = spdk_call(
        &spdk_sock,
        &[
            "nvmf_subsystem_set_keys",
            NQN,
            BIDIR,
            "--dhchap-key",
            "key2",
            "--dhchap-ctrlr-key",
            "ckey2",
        ],
    );
    assert!(ok, "{out}");
    let r = srv.call(
        "bdev_nvme_set_keys",
        json!({"name": "Bidir", "dhchap_key": "k2", "dhchap_ctrlr_key": "ck2"}),
    );
    assert_eq!(r, json!(true));
    let after = spdk_qpairs(&spdk_sock);
    assert_eq!(after, before, "a queue pair reconnected");
    spdk_support::qemu_io(&uri, "read -P 0x3c 2M 256k");
    let saved = srv.call("save_config", Value::Null).to_string();
    assert!(saved.contains("\"dhchap_ctrlr_key\":\"ck2\""), "{saved}");

    // A host key SPDK's target does not accept.
    let e = srv.call_err(
        "bdev_nvme_set_keys",
        json!({"name": "Bidir", "dhchap_key": "wrong", "dhchap_ctrlr_key": "ck2"}),
    );
    assert!(
        e.code == -libc::EACCES
            && e.message.contains("re-authentication of queue 0 failed")
            && e.message.contains("authentication failed"),
        "{e:?}"
    );
    let refusal = e.message;
    // A controller key without a host key is refused, as SPDK does.
    let e = srv.call_err(
        "bdev_nvme_set_keys",
        json!({"name": "Bidir", "dhchap_ctrlr_key": "ck2"}),
    );
    assert!(e.message.contains("requires dhchap_key"), "{e:?}");
    let log = srv.stop();
    for text in [&k2_text, &ck2_text, &wrong_text] {
        let b64 = &text[10..text.len() - 1];
        assert!(!log.contains(&b64[..16]), "key material in the log");
        assert!(!refusal.contains(&b64[..16]), "key material in the reply");
    }
}
