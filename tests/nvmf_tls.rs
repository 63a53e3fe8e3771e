//! NVMe/TCP TLS 1.3 with a PSK (NVMe/TCP 1.0c §3.6) against real peers: SPDK's host
//! (`bdevperf` with `bdev_nvme_attach_controller … psk`, keys from its keyring) on
//! tessera's secure-channel listener with a `:01:` (TLS_AES_128_GCM_SHA256) and a `:02:`
//! (TLS_AES_256_GCM_SHA384) key; tessera's initiator against SPDK's `nvmf_tgt` and
//! against tessera's own listener (identity versions 0 and 1). Refusals: a wrong PSK, a
//! host without a PSK, a plain host on the secure listener, garbage instead of a
//! ClientHello, a stalled handshake, a malformed key file; the target keeps serving the
//! others, and no key material appears in logs, replies or `save_config`.

mod process_support;
mod rpc_common;
mod spdk_support;

use rpc_common::{Serve, free_port, qemu_io};
use serde_json::{Value, json};
use spdk_support::{APP, Background, NO_HUGE, assert_verified, assert_verified_at, bdevperf, tool};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera::nvme::auth::HashId;
use tessera::nvme::tls::ConfiguredPsk;

const NQN: &str = "nqn.2026-11.io.tessera:tls";
const PLAIN_NQN: &str = "nqn.2026-11.io.tessera:plain";
const H256: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-0000-4000-8000-000000000001";
const H384: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-0000-4000-8000-000000000002";
const NOPSK: &str = "nqn.2014-08.org.nvmexpress:uuid:7a1b2c3d-0000-4000-8000-000000000003";

/// A key file of mode 0600 holding a TLS PSK in the interchange format; its path and
/// text.
fn key_file(
    dir: &Path,
    name: &str,
    hash: Option<HashId>,
    len: usize,
    seed: u8,
) -> (PathBuf, String) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect();
    let text = ConfiguredPsk::format(hash, &bytes).to_string();
    let p = dir.join(format!("{name}.key"));
    // No newline: SPDK takes the file's whole text as the key.
    std::fs::write(&p, &text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (p, text)
}

/// A bdevperf config: SPDK's keyring with `key`, one controller as `hostnqn`, with
/// `psk` when given.
fn bdevperf_config(
    dir: &Path,
    name: &str,
    port: u16,
    hostnqn: &str,
    key: Option<&Path>,
) -> PathBuf {
    match key {
        Some(k) => spdk_support::bdevperf_config(
            dir,
            name,
            port,
            NQN,
            hostnqn,
            &[("k", k)],
            &[("psk", "k")],
        ),
        None => spdk_support::bdevperf_config(dir, name, port, NQN, hostnqn, &[], &[]),
    }
}

/// Runs a short bdevperf expected to fail to attach; returns its output.
fn refused(cfg: &Path, log: PathBuf) -> String {
    spdk_support::refused(cfg, log, "error")
}

/// Waits until the server's log holds `what` (the log is written as things happen).
fn wait_log(srv: &Serve, what: &str, limit: Duration) -> String {
    let end = Instant::now() + limit;
    loop {
        let log = srv.log_text();
        if log.contains(what) {
            return log;
        }
        assert!(Instant::now() < end, "the log never said `{what}`:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn spdk_host_reads_and_writes_through_tls_with_both_suites_and_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k256, t256) = key_file(&d, "k256", Some(HashId::Sha256), 32, 1);
    let (k384, t384) = key_file(&d, "k384", Some(HashId::Sha384), 48, 2);
    let (wrong, _) = key_file(&d, "wrong", Some(HashId::Sha256), 32, 3);
    let port = free_port();
    let plain_port = free_port();
    // The SHA-256 host's PSK from the YAML, the SHA-384 host's by RPC.
    let yaml = format!(
        r#"cores: [0]
keys:
  - {{name: k256, path: {k256}}}
bdevs:
  - {{type: malloc, name: M0, size: 64MiB}}
  - {{type: malloc, name: M1, size: 64MiB}}
nvmf:
  subsystems:
    - nqn: {NQN}
      allow_any_host: false
      hosts: [{H256}, {NOPSK}]
      psk: {{{H256}: k256}}
      listeners: [{{address: 127.0.0.1, port: {port}, secure_channel: true}}]
      namespaces: [{{bdev: M0, nsid: 1}}]
    - nqn: {PLAIN_NQN}
      allow_any_host: true
      listeners: [{{address: 127.0.0.1, port: {plain_port}}}]
      namespaces: [{{bdev: M1, nsid: 1}}]
"#,
        k256 = k256.display()
    );
    let cfg = d.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    srv.call(
        "keyring_file_add_key",
        json!({"name": "k384", "path": k384}),
    );
    srv.call(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": H384, "psk": "k384"}),
    );
    // A secure channel for a subsystem that lets any host in: refused, as SPDK does.
    let e = srv.call_err(
        "nvmf_subsystem_add_listener",
        json!({"nqn": PLAIN_NQN, "secure_channel": true, "listen_address":
               {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": free_port().to_string()}}),
    );
    assert!(e.to_string().contains("allow_any_host"), "{e}");

    // SPDK's host with the SHA-256 key: TLS_AES_128_GCM_SHA256.
    let c = bdevperf_config(&d, "h256", port, H256, Some(&k256));
    let (ok, out) = bdevperf(&c, 3, d.join("h256.log")).wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    let log = srv.log_text();
    assert!(
        log.contains("suite=\"TLS_AES_128_GCM_SHA256\"")
            && log.contains(&format!("identity=NVMe0R01 {H256} {NQN}")),
        "{log}"
    );
    // With the SHA-384 key: TLS_AES_256_GCM_SHA384.
    let c = bdevperf_config(&d, "h384", port, H384, Some(&k384));
    let (ok, out) = bdevperf(&c, 3, d.join("h384.log")).wait(Duration::from_secs(90));
    assert_verified(ok, &out);
    let log = srv.log_text();
    assert!(
        log.contains("suite=\"TLS_AES_256_GCM_SHA384\"")
            && log.contains(&format!("identity=NVMe0R02 {H384} {NQN}")),
        "{log}"
    );

    // While a good host runs I/O, the bad ones are refused.
    let good = bdevperf(
        &bdevperf_config(&d, "good", port, H256, Some(&k256)),
        12,
        d.join("good.log"),
    );
    std::thread::sleep(Duration::from_secs(2));
    // A wrong PSK: the handshake fails (the keys differ: the Finished check fails).
    refused(
        &bdevperf_config(&d, "wrong", port, H256, Some(&wrong)),
        d.join("wrong.log"),
    );
    wait_log(
        &srv,
        "NVMe/TCP TLS: connection refused",
        Duration::from_secs(5),
    );
    // A host the target has no PSK for.
    refused(
        &bdevperf_config(&d, "nopsk", port, NOPSK, Some(&k256)),
        d.join("nopsk.log"),
    );
    wait_log(
        &srv,
        &format!("host `{NOPSK}` has no PSK for subsystem"),
        Duration::from_secs(5),
    );
    // A plain host (no TLS: a downgrade attempt) on the secure listener.
    refused(
        &bdevperf_config(&d, "plain", port, H256, None),
        d.join("plain.log"),
    );
    let (ok, out) = good.wait(Duration::from_secs(60));
    assert_verified(ok, &out);

    // The discovery log (read through the plain listener) says which listener needs a
    // secure channel. SPDK's identify connects with a host NQN of its own: the secure
    // subsystem lets any host see it meanwhile (allowed after the listener exists, as in
    // SPDK; the listener still admits PSK hosts only).
    srv.call(
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NQN, "allow_any_host": true}),
    );
    let trid = format!(
        "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:{plain_port} subnqn:nqn.2014-08.org.nvmexpress.discovery hostnqn:{H256}"
    );
    let out = spdk_support::run_ok(
        tool("spdk_nvme_identify").args(NO_HUGE).args(["-r", &trid]),
        Duration::from_secs(60),
    );
    // The value of the "Secure Channel:" line of the entry of `nqn`.
    let secure = |nqn: &str| -> String {
        let e = out
            .split("Discovery Log Entry")
            .find(|e| e.contains(&format!("{nqn}\n")))
            .unwrap_or_else(|| panic!("no entry for {nqn}:\n{out}"));
        e.lines()
            .find_map(|l| l.trim().strip_prefix("Secure Channel:"))
            .unwrap_or_else(|| panic!("no Secure Channel line:\n{e}"))
            .trim()
            .to_string()
    };
    assert_eq!(secure(NQN), "Required", "{out}");
    assert_eq!(secure(PLAIN_NQN), "Not Required", "{out}");
    srv.call(
        "nvmf_subsystem_allow_any_host",
        json!({"nqn": NQN, "allow_any_host": false}),
    );

    // Key names, never key material, in replies, save_config and the log.
    let subs = srv.call("nvmf_get_subsystems", json!({}));
    let saved = srv.call("save_config", json!({}));
    let saved_text = saved.to_string();
    assert!(
        saved_text.contains("\"psk\":\"k384\"") && saved_text.contains("\"psk\":\"k256\""),
        "{saved_text}"
    );
    assert!(
        saved_text.contains("\"secure_channel\":true"),
        "{saved_text}"
    );
    let log = srv.stop();
    for t in [&t256, &t384] {
        let body = &t[16..40];
        for (what, text) in [
            ("log", &log),
            ("save_config", &saved_text),
            ("nvmf_get_subsystems", &subs.to_string()),
        ] {
            assert!(!text.contains(body), "key material in the {what}");
        }
    }
}

/// The TLS path at a deep queue: the target gathers small PDUs into TLS records, and
/// a large PDU spans several. SPDK's host writes and reads back every block (`-w
/// verify`) at queue depth 128 through TLS, with 4 KiB I/O (several PDUs a record) and
/// 128 KiB I/O (a PDU over several records, data straight from the I/O buffer): a
/// record or PDU lost, doubled or out of order is bad data or a broken connection, and
/// the run fails.
#[test]
fn spdk_host_verifies_every_block_through_tls_at_queue_depth_128() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k256, _) = key_file(&d, "k256", Some(HashId::Sha256), 32, 1);
    let port = free_port();
    let yaml = format!(
        r#"cores: [0]
keys:
  - {{name: k256, path: {k256}}}
bdevs:
  - {{type: malloc, name: M0, size: 256MiB}}
nvmf:
  subsystems:
    - nqn: {NQN}
      hosts: [{H256}]
      psk: {{{H256}: k256}}
      listeners: [{{address: 127.0.0.1, port: {port}, secure_channel: true}}]
      namespaces: [{{bdev: M0, nsid: 1}}]
"#,
        k256 = k256.display()
    );
    let cfg = d.join("config.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let srv = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let c = bdevperf_config(&d, "h256", port, H256, Some(&k256));
    for bs in ["4096", "131072"] {
        let (ok, out) = Background::spawn(
            tool("bdevperf")
                .args(APP)
                .args(NO_HUGE)
                .args(["-m", "0x2", "--json"])
                .arg(&c)
                .args(["-q", "128", "-o", bs, "-w", "verify", "-t", "5"]),
            d.join(format!("verify{bs}.log")),
        )
        .wait(Duration::from_secs(120));
        if bs == "4096" {
            assert_verified(ok, &out);
        } else {
            // SPDK's host writes 64 KiB and more through TLS at about 40 a second, against
            // SPDK's nvmf_tgt as against tessera (its H2C data), so barely a rate is asked
            // here: every block read back must match, with no failed I/O.
            assert_verified_at(ok, &out, 5.0);
        }
    }
    let log = srv.log_text();
    assert!(!log.contains("TLS read failed"), "{log}");
}

/// `tessera serve` with an NBD export of `bdev` and the keys given.
fn initiator(d: &Path, name: &str, keys: &[(&str, &Path)]) -> (Serve, u16) {
    let nbd = free_port();
    let keys: String = keys
        .iter()
        .map(|(n, p)| format!("  - {{name: {n}, path: {}}}\n", p.display()))
        .collect();
    let yaml = format!("cores: [0]\nkeys:\n{keys}nbd:\n  listen: 127.0.0.1:{nbd}\n");
    let cfg = d.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).unwrap();
    (Serve::start_file(tempfile::tempdir().unwrap(), &cfg), nbd)
}

fn attach(
    srv: &Serve,
    name: &str,
    port: u16,
    hostnqn: &str,
    psk: &str,
    version: Option<u8>,
) -> Value {
    let mut p = json!({"name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
           "trsvcid": port.to_string(), "subnqn": NQN, "hostnqn": hostnqn, "psk": psk});
    if let Some(v) = version {
        p["psk_identity_version"] = json!(v);
    }
    srv.call("bdev_nvme_attach_controller", p)
}

/// Writes a pattern through NBD onto `bdev` and reads it back.
fn write_read(srv: &Serve, nbd: u16, bdev: &str, pattern: u8) {
    srv.call("nbd_start_export", json!({"bdev_name": bdev, "name": bdev}));
    qemu_io(
        nbd,
        bdev,
        &[
            &format!("write -P {pattern} 0 1M"),
            &format!("write -P {} 3M 64k", pattern + 1),
        ],
    );
    qemu_io(
        nbd,
        bdev,
        &[
            &format!("read -P {pattern} 0 1M"),
            &format!("read -P {} 3M 64k", pattern + 1),
        ],
    );
    srv.call("nbd_stop_export", json!({"name": bdev}));
}

#[test]
fn tessera_initiator_does_tls_against_spdk_nvmf_tgt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k256, _) = key_file(&d, "k256", Some(HashId::Sha256), 32, 7);
    let port = free_port();
    let cfg = json!({"subsystems": [
        {"subsystem": "keyring", "config": [
            {"method": "keyring_file_add_key", "params": {"name": "k", "path": k256}}]},
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 16384, "block_size": 4096}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": NQN, "allow_any_host": false}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": NQN, "secure_channel": true,
                "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port.to_string()}}},
            {"method": "nvmf_subsystem_add_host", "params": {"nqn": NQN, "host": H256, "psk": "k"}}]}]});
    let tgt = spdk_support::nvmf_tgt(&d, port, &cfg);
    let (srv, nbd) = initiator(&d, "init", &[("k", &k256)]);
    let names = attach(&srv, "Tls0", port, H256, "k", None);
    assert!(names.to_string().contains("Tls0n1"), "{names}");
    write_read(&srv, nbd, "Tls0n1", 0x5a);
    let log = srv.log_text();
    assert!(
        log.contains("NVMe/TCP TLS handshake done (host side)"),
        "{log}"
    );
    // SPDK's target refuses identity version 1 (spdk#3838): the attach fails, named.
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        json!({"name": "Tls1", "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": port.to_string(), "subnqn": NQN, "hostnqn": H256, "psk": "k",
               "psk_identity_version": 1}),
    );
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    srv.call("bdev_nvme_detach_controller", json!({"name": "Tls0"}));
    let text = tgt.stop(Duration::from_secs(5));
    assert!(
        text.contains("NVMe1R01"),
        "SPDK's target did not see the version 1 identity:\n{text}"
    );
}

#[test]
fn tessera_initiator_and_target_do_tls_with_identity_v0_and_v1_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let (k384, _) = key_file(&d, "k384", Some(HashId::Sha384), 48, 9);
    let (k00, _) = key_file(&d, "k00", None, 32, 11);
    let port = free_port();
    let yaml = format!(
        r#"cores: [0, 1]
keys:
  - {{name: k384, path: {k384}}}
  - {{name: k00, path: {k00}}}
bdevs:
  - {{type: malloc, name: M0, size: 64MiB}}
nvmf:
  subsystems:
    - nqn: {NQN}
      hosts: [{H384}, {H256}]
      psk: {{{H384}: k384, {H256}: k00}}
      listeners: [{{address: 127.0.0.1, port: {port}, secure_channel: true}}]
      namespaces: [{{bdev: M0, nsid: 1}}]
"#,
        k384 = k384.display(),
        k00 = k00.display()
    );
    let cfg = d.join("target.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let tgt = Serve::start_file(tempfile::tempdir().unwrap(), &cfg);
    let (srv, nbd) = initiator(&d, "init", &[("k384", &k384), ("k00", &k00)]);
    attach(&srv, "V0", port, H384, "k384", None);
    write_read(&srv, nbd, "V0n1", 0x11);
    attach(&srv, "V1", port, H384, "k384", Some(1));
    write_read(&srv, nbd, "V1n1", 0x21);
    // A `:00:` key (used as it is, no retained-PSK hash).
    attach(&srv, "Z", port, H256, "k00", None);
    write_read(&srv, nbd, "Zn1", 0x31);
    let log = tgt.log_text();
    assert!(
        log.contains(&format!("identity=NVMe1R02 {H384} {NQN} ")),
        "{log}"
    );
    assert!(
        log.contains(&format!("identity=NVMe0R01 {H256} {NQN}")),
        "{log}"
    );

    // Garbage instead of a ClientHello: closed at once.
    let mut g = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let t = Instant::now();
    let n = g.read(&mut buf).unwrap_or(0);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "garbage was not refused at once"
    );
    // (An alert may come back before the close; never a ServerHello.)
    assert!(n == 0 || buf[0] == 0x15, "answered {:?}", &buf[..n]);
    // A plain NVMe/TCP ICReq: closed at once too.
    let mut p = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut icreq = [0u8; 128];
    icreq[1] = 128;
    icreq[2] = 128;
    icreq[4] = 128;
    p.write_all(&icreq).unwrap();
    let n = p.read(&mut buf).unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "answered {:?}", &buf[..n]);
    // A stalled handshake (half a record header): closed at the time limit, named.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0x16, 0x03]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let t = Instant::now();
    // Meanwhile the admitted hosts go on.
    write_read(&srv, nbd, "V1n1", 0x41);
    let n = s.read(&mut buf).unwrap_or(usize::MAX);
    let waited = t.elapsed();
    assert!(n == 0, "the stalled connection got {n} bytes");
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    wait_log(
        &tgt,
        "TLS handshake not finished within 10s",
        Duration::from_secs(2),
    );

    // A malformed key file: refused by name and fault, at add_host and at attach.
    let bad = d.join("bad.key");
    let mut text = ConfiguredPsk::format(Some(HashId::Sha256), &[8; 32]).to_string();
    text.replace_range(30..31, if &text[30..31] == "A" { "B" } else { "A" });
    std::fs::write(&bad, &text).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    for s in [&tgt, &srv] {
        s.call("keyring_file_add_key", json!({"name": "bad", "path": bad}));
    }
    let e = tgt.call_err(
        "nvmf_subsystem_add_host",
        json!({"nqn": NQN, "host": NOPSK, "psk": "bad"}),
    );
    assert!(e.to_string().contains("CRC-32 mismatch"), "{e}");
    assert!(!e.to_string().contains(&text[16..30]), "{e}");
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        json!({"name": "B", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port.to_string(),
               "subnqn": NQN, "hostnqn": H384, "psk": "bad"}),
    );
    assert!(
        e.to_string().contains("TLS PSK `bad`") && e.to_string().contains("CRC-32"),
        "{e}"
    );
    // A key removed from the target's keyring: the host's next connection is refused.
    tgt.call("keyring_file_remove_key", json!({"name": "k00"}));
    let e = srv.call_err(
        "bdev_nvme_attach_controller",
        json!({"name": "Z2", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port.to_string(),
               "subnqn": NQN, "hostnqn": H256, "psk": "k00"}),
    );
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    wait_log(&tgt, "key `k00` does not exist", Duration::from_secs(5));
    // Still serving.
    write_read(&srv, nbd, "V0n1", 0x51);
    let saved = srv.call("save_config", json!({})).to_string();
    assert!(saved.contains("\"psk\":\"k384\""), "{saved}");
}
