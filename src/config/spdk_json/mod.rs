//! SPDK's JSON configuration format, both ways: a [`Config`] as the method calls that
//! rebuild it (`framework_get_config`, `save_config`), and such a file read back into a
//! [`Config`] (`tessera serve --config x.json`, `tessera bench --config x.json`).
//!
//! ```json
//! {"subsystems": [
//!   {"subsystem": "bdev", "config": [
//!     {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}},
//!     {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "Malloc0", "lvs_name": "pool0"}}]}],
//!  "tessera": {"cores": [0, 1], "idle": "adaptive"}}
//! ```
//!
//! A file is a list of method calls. The parameters of the calls that create or set up
//! an object are defined here, one module per subsystem ([`bdev`], [`lvol`], [`nvmf`],
//! [`nbd`]), decoded by [`params`]; the JSON-RPC methods of the same names decode the
//! very same structs, so a file is refused for the same reasons, in the same words, as
//! the calls. An error names the file, the line of the call, its place and the
//! parameter. Tuning calls
//! of SPDK subsystems tessera does not have (`*_set_options`, `nvmf_set_config`, …) are
//! skipped, so a file written by SPDK's `save_config` loads as long as the objects it
//! creates are ones tessera has. The `tessera` member of the root object (cores, idle
//! policy) is tessera's own; SPDK ignores members it does not know there.
//!
//! Written files refer to a logical volume by SPDK's `lvs_name/lvol_name` alias (SPDK
//! names lvol bdevs by UUID), so `spdk_tgt --json` can load them too when they use only
//! SPDK's methods; reading keeps the names as given (an alias, a UUID or a bare lvol
//! name), which the target resolves as it resolves every bdev name.

use super::{
    BdevConfig, CloneConfig, Config, ConfigError, LvolStep, PoolConfig, QosConfig, SnapshotConfig,
};
use crate::frontend::nbd::{NbdConfig, NbdExportConfig};
use crate::frontend::nvmf::{ListenerConfig, NamespaceConfig, NvmfConfig, SubsystemConfig};
use crate::reactor::{CoreList, IdlePolicy};
use crate::vdisk::CowPolicy;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Value, json};

pub mod bdev;
pub mod lvol;
pub mod nbd;
pub mod nvmf;
pub mod params;

/// The subsystems, each with those it depends on (`framework_get_subsystems`).
pub const SUBSYSTEMS: &[(&str, &[&str])] = &[
    ("keyring", &[]),
    ("bdev", &[]),
    ("nvmf", &["bdev", "keyring"]),
    ("nbd", &["bdev"]),
];

/// `keyring_file_add_key`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFileParams {
    pub name: String,
    pub path: std::path::PathBuf,
}

fn call(method: &str, params: Value) -> Value {
    json!({"method": method, "params": params})
}

/// `bdev_lvol_snapshot`'s parameters for snapshot `s` of `lvol_name` (with its UUID,
/// tessera's parameter, when the configuration has one).
fn snapshot_params(lvol_name: String, s: &SnapshotConfig) -> Value {
    let mut p = json!({"lvol_name": lvol_name, "snapshot_name": s.name});
    if let Some(u) = s.uuid {
        p["uuid"] = json!(u.to_string());
    }
    p
}

/// The pool a disk, snapshot or clone of `cfg` (by name or `pool/disk` alias) lives in.
fn pool_of<'a>(cfg: &'a Config, name: &str) -> Option<&'a str> {
    cfg.lvol_pool(name)
}

/// `lvs/lvol` for a disk of `cfg`, the name itself for any other bdev.
fn bdev_ref(cfg: &Config, name: &str) -> String {
    match pool_of(cfg, name) {
        Some(_) if name.contains('/') => name.to_string(),
        Some(p) => format!("{p}/{name}"),
        None => name.to_string(),
    }
}

fn is_plain_lvstore(p: &PoolConfig) -> bool {
    p.bdevs.len() == 1
        && p.metadata_bdev.is_none()
        && p.metadata_size.is_none()
        && p.cow_policy == CowPolicy::default()
        && p.controller_core.is_none()
}

/// The calls that make disk `d`: `bdev_lvol_create`, or for an external snapshot's
/// clone `bdev_lvol_clone_bdev` (of the bdev's size) and `bdev_lvol_resize` to its own.
fn disk_calls(d: &crate::config::DiskConfig) -> Vec<Value> {
    let mut size = json!({});
    if d.size.0.is_multiple_of(1 << 20) {
        size["size_in_mib"] = json!(d.size.0 >> 20);
    } else {
        size["size"] = json!(d.size.0);
    }
    // tessera's `lvol_uuid`: the lvol is made again with its UUID (see `lvol::lvol_uuid`).
    let uuid = d.uuid.map(|u| u.to_string());
    if let Some(x) = &d.external_snapshot {
        let mut p = json!({"bdev": x, "lvs_name": d.pool, "clone_name": d.name});
        if let Some(u) = &uuid {
            p["lvol_uuid"] = json!(u);
        }
        let mut out = vec![call("bdev_lvol_clone_bdev", p)];
        if d.size.0 > 0 {
            size["name"] = json!(format!("{}/{}", d.pool, d.name));
            out.push(call("bdev_lvol_resize", size));
        }
        return out;
    }
    let mut p = json!({"lvs_name": d.pool, "lvol_name": d.name, "thin_provision": d.thin});
    for (k, v) in size.as_object().into_iter().flatten() {
        p[k] = v.clone();
    }
    if let Some(u) = uuid {
        p["lvol_uuid"] = json!(u);
    }
    vec![call("bdev_lvol_create", p)]
}

fn bdev_calls(cfg: &Config) -> Vec<Value> {
    let mut out = Vec::new();
    for b in &cfg.bdevs {
        out.push(match b {
            BdevConfig::Malloc {
                name,
                size,
                block_size,
                uuid,
            }
            | BdevConfig::Null {
                name,
                size,
                block_size,
                uuid,
            } => {
                let method = if matches!(b, BdevConfig::Malloc { .. }) {
                    "bdev_malloc_create"
                } else {
                    "bdev_null_create"
                };
                let mut p = json!({
                    "name": name,
                    "num_blocks": size.0 / (*block_size).max(1) as u64,
                    "block_size": block_size,
                });
                if let Some(u) = uuid {
                    p["uuid"] = json!(u);
                }
                call(method, p)
            }
            BdevConfig::Uring {
                name,
                path,
                block_size,
                uuid,
                ..
            } => {
                let mut p = json!({"name": name, "filename": path});
                if let Some(bs) = block_size {
                    p["block_size"] = json!(bs);
                }
                if let Some(u) = uuid {
                    p["uuid"] = json!(u);
                }
                call("bdev_uring_create", p)
            }
            BdevConfig::Error {
                name,
                base,
                volatile_cache,
            } => {
                let mut p = json!({"base_name": base});
                if *name != format!("EE_{base}") {
                    p["name"] = json!(name);
                }
                if *volatile_cache {
                    p["volatile_cache"] = json!(true);
                }
                call("bdev_error_create", p)
            }
        });
    }
    for n in &cfg.nvme {
        let mut p = json!({
            "name": n.name, "trtype": n.trtype, "traddr": n.traddr, "trsvcid": n.trsvcid,
            "subnqn": n.subnqn, "hdgst": n.hdgst, "ddgst": n.ddgst,
        });
        if let Some(a) = &n.adrfam {
            p["adrfam"] = json!(a);
        }
        if let Some(h) = &n.hostnqn {
            p["hostnqn"] = json!(h);
        }
        if let Some(k) = n.keep_alive_timeout_ms {
            p["keep_alive_timeout_ms"] = json!(k);
        }
        if let Some(q) = n.io_queue_depth {
            p["io_queue_depth"] = json!(q);
        }
        // Key names only: the keys stay in their files.
        if let Some(k) = &n.dhchap_key {
            p["dhchap_key"] = json!(k);
        }
        if let Some(k) = &n.dhchap_ctrlr_key {
            p["dhchap_ctrlr_key"] = json!(k);
        }
        if let Some(k) = &n.psk {
            p["psk"] = json!(k);
        }
        if let Some(v) = n.psk_identity_version {
            p["psk_identity_version"] = json!(v);
        }
        if n.secure_concat {
            p["secure_concat"] = json!(true);
        }
        out.push(call("bdev_nvme_attach_controller", p));
    }
    for p in &cfg.pools {
        out.push(if is_plain_lvstore(p) {
            call(
                "bdev_lvol_create_lvstore",
                json!({"bdev_name": p.bdevs[0], "lvs_name": p.name, "cluster_sz": p.segment_size.0}),
            )
        } else {
            call(
                "tessera_pool_create",
                serde_json::to_value(p).unwrap_or(Value::Null),
            )
        });
    }
    // Disks, snapshots and clones, each after what it needs (its origin, or the lvol of
    // another lvstore an external snapshot's clone reads).
    for step in cfg.lvol_order() {
        match step {
            LvolStep::Disk(d) => out.extend(disk_calls(d)),
            LvolStep::Snapshot(s) => out.push(call(
                "bdev_lvol_snapshot",
                snapshot_params(bdev_ref(cfg, &s.disk), s),
            )),
            LvolStep::Clone(c) => out.push(call(
                "bdev_lvol_clone",
                json!({"snapshot_name": bdev_ref(cfg, &c.snapshot), "clone_name": c.name}),
            )),
        }
    }
    let flags = cfg
        .disks
        .iter()
        .map(|d| (&d.name, d.read_only, d.cow_policy))
        .chain(
            cfg.clones
                .iter()
                .map(|c| (&c.name, c.read_only, c.cow_policy)),
        );
    for (name, read_only, cow_policy) in flags {
        if read_only {
            out.push(call(
                "bdev_lvol_set_read_only",
                json!({"name": bdev_ref(cfg, name)}),
            ));
        }
        if cow_policy == Some(CowPolicy::CopyOut) {
            out.push(call(
                "tessera_set_cow_policy",
                json!({"name": bdev_ref(cfg, name), "cow_policy": CowPolicy::CopyOut}),
            ));
        }
    }
    for q in &cfg.qos {
        let l = q.limits();
        if l.is_unlimited() {
            continue;
        }
        // As SPDK writes it: the limits that are on.
        let mut p = json!({"name": bdev_ref(cfg, &q.bdev)});
        for (name, v) in crate::bdev::qos::NAMES.iter().zip(l.to_array()) {
            if v > 0 {
                p[*name] = json!(v);
            }
        }
        out.push(call("bdev_set_qos_limit", p));
    }
    out.push(call("bdev_wait_for_examine", json!({})));
    out
}

fn nvmf_calls(cfg: &Config) -> Vec<Value> {
    let Some(n) = &cfg.nvmf else {
        return Vec::new();
    };
    let mut t = serde_json::to_value(&n.transport).unwrap_or_else(|_| json!({}));
    t["trtype"] = json!("TCP");
    // tessera's handshake limit only when set otherwise (SPDK's nvmf_tgt knows no such
    // parameter).
    if n.transport.tls_handshake_timeout_ms
        == crate::frontend::nvmf::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS
        && let Some(o) = t.as_object_mut()
    {
        o.remove("tls_handshake_timeout_ms");
    }
    let mut out = vec![call("nvmf_create_transport", t)];
    for s in &n.subsystems {
        out.push(call(
            "nvmf_create_subsystem",
            json!({
                "nqn": s.nqn, "serial_number": s.serial_number, "model_number": s.model_number,
                "allow_any_host": s.allow_any_host, "max_namespaces": s.max_namespaces,
            }),
        ));
        for l in &s.listeners {
            let ipv6 = l.address.contains(':');
            let mut params = json!({"nqn": s.nqn, "listen_address": {
                "trtype": "TCP", "adrfam": if ipv6 { "IPv6" } else { "IPv4" },
                "traddr": l.address, "trsvcid": l.port.to_string(),
            }});
            if l.secure_channel {
                params["secure_channel"] = json!(true);
            }
            if l.secure_concat {
                params["secure_concat"] = json!(true);
            }
            if let Some(n) = l.max_connections {
                params["max_connections"] = json!(n);
            }
            if let Some(n) = l.max_connections_per_host {
                params["max_connections_per_host"] = json!(n);
            }
            out.push(call("nvmf_subsystem_add_listener", params));
        }
        for h in &s.hosts {
            let mut params = json!({"nqn": s.nqn, "host": h});
            if let Some(k) = s.psk.get(h) {
                params["psk"] = json!(k);
            }
            if let Some(k) = s.dhchap.get(h) {
                params["dhchap_key"] = json!(k.dhchap_key);
                if let Some(c) = &k.dhchap_ctrlr_key {
                    params["dhchap_ctrlr_key"] = json!(c);
                }
            }
            out.push(call("nvmf_subsystem_add_host", params));
        }
        for ns in &s.namespaces {
            let mut spec = json!({"bdev_name": bdev_ref(cfg, &ns.bdev)});
            if let Some(id) = ns.nsid {
                spec["nsid"] = json!(id);
            }
            if let Some(u) = ns.uuid {
                spec["uuid"] = json!(u);
            }
            out.push(call(
                "nvmf_subsystem_add_ns",
                json!({"nqn": s.nqn, "namespace": spec}),
            ));
        }
    }
    out
}

fn nbd_calls(cfg: &Config) -> Vec<Value> {
    let Some(n) = &cfg.nbd else {
        return Vec::new();
    };
    let mut start = json!({
        "listen": n.listen,
        "max_connections": n.max_connections,
        "max_connections_per_host": n.max_connections_per_host,
        "max_buffer_bytes": n.max_buffer_bytes,
        "buffer_wait_timeout_ms": n.buffer_wait_timeout_ms,
    });
    // File names only, never their contents.
    if !n.tls.is_off() {
        start["tls"] = json!(n.tls);
        for (k, v) in [
            ("tls_cert", &n.tls_cert),
            ("tls_key", &n.tls_key),
            ("tls_ca", &n.tls_ca),
            ("tls_psk_file", &n.tls_psk_file),
        ] {
            if let Some(path) = v {
                start[k] = json!(path);
            }
        }
        if !n.tls_authz.is_empty() {
            start["tls_authz"] = json!(n.tls_authz);
        }
    }
    let mut out = vec![call("nbd_server_start", start)];
    for e in &n.exports {
        let mut p = json!({"name": e.name, "bdev_name": bdev_ref(cfg, &e.bdev)});
        if e.read_only {
            p["read_only"] = json!(true);
        }
        if !e.description.is_empty() {
            p["description"] = json!(e.description);
        }
        out.push(call("nbd_start_export", p));
    }
    out
}

/// The keys: their names and files, never their material.
fn keyring_calls(cfg: &Config) -> Vec<Value> {
    cfg.keys
        .iter()
        .map(|k| {
            call(
                "keyring_file_add_key",
                json!({"name": k.name, "path": k.path}),
            )
        })
        .collect()
}

/// The calls that rebuild subsystem `name` of `cfg` (`None`: no such subsystem).
pub fn subsystem_config(cfg: &Config, name: &str) -> Option<Vec<Value>> {
    match name {
        "keyring" => Some(keyring_calls(cfg)),
        "bdev" => Some(bdev_calls(cfg)),
        "nvmf" => Some(nvmf_calls(cfg)),
        "nbd" => Some(nbd_calls(cfg)),
        _ => None,
    }
}

/// The whole configuration document.
pub fn document(cfg: &Config) -> Value {
    let subsystems: Vec<Value> = SUBSYSTEMS
        .iter()
        .map(|(name, _)| json!({"subsystem": name, "config": subsystem_config(cfg, name)}))
        .collect();
    json!({
        "subsystems": subsystems,
        "tessera": {"cores": cfg.cores, "idle": cfg.idle},
    })
}

/// Methods of a configuration file that tessera skips: tuning of SPDK subsystems it
/// does not have, and calls that only wait.
pub fn is_ignored(method: &str) -> bool {
    method.ends_with("_set_options")
        || method.ends_with("_set_opts")
        || matches!(
            method,
            "bdev_wait_for_examine"
                | "bdev_examine"
                | "bdev_nvme_set_hotplug"
                | "nvmf_set_config"
                | "nvmf_set_max_subsystems"
                | "nvmf_set_crdt"
                | "framework_set_scheduler"
                | "sock_set_default_impl"
                | "framework_start_init"
        )
}

/// One call of a configuration document.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Where it is: `subsystems[0].config[3]`.
    pub location: String,
    /// Its line in the file (0 when unknown).
    pub line: usize,
    pub method: String,
    pub params: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFields {
    method: String,
    #[serde(default)]
    params: Option<Value>,
}

fn entry_of(v: Value, location: String, line: usize) -> Result<Entry, String> {
    let f: EntryFields = params::decode_value(v).map_err(|e| format!("{location}: {e}"))?;
    if f.params
        .as_ref()
        .is_some_and(|p| !p.is_object() && !p.is_null())
    {
        return Err(format!("{location}: \"params\" must be an object"));
    }
    Ok(Entry {
        location,
        line,
        method: f.method,
        params: f.params.filter(|p| !p.is_null()),
    })
}

/// The calls of a parsed document, in order (batch arrays flattened).
pub fn entries(doc: &Value) -> Result<Vec<Entry>, String> {
    let subs = doc
        .get("subsystems")
        .and_then(Value::as_array)
        .ok_or("\"subsystems\": expected an array")?;
    let mut out = Vec::new();
    for (i, s) in subs.iter().enumerate() {
        let config = match s.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(c)) => c,
            Some(_) => return Err(format!("subsystems[{i}].config: expected an array")),
        };
        for (j, e) in config.iter().enumerate() {
            let loc = format!("subsystems[{i}].config[{j}]");
            match e {
                Value::Array(batch) => {
                    for (k, b) in batch.iter().enumerate() {
                        out.push(entry_of(b.clone(), format!("{loc}[{k}]"), 0)?);
                    }
                }
                e => out.push(entry_of(e.clone(), loc, 0)?),
            }
        }
    }
    Ok(out)
}

/// True if `text` looks like SPDK's JSON format: an object with a `subsystems` member.
pub fn is_spdk_json(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{')
        && serde_json::from_str::<Value>(t)
            .ok()
            .is_some_and(|v| v.get("subsystems").is_some())
}

#[derive(Deserialize)]
struct RawDoc<'a> {
    #[serde(borrow)]
    subsystems: Vec<&'a RawValue>,
    #[serde(default)]
    tessera: Option<TesseraSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubsystem<'a> {
    #[allow(dead_code)]
    subsystem: String,
    #[serde(borrow, default)]
    config: Option<Vec<&'a RawValue>>,
}

/// tessera's member of the root object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TesseraSection {
    #[serde(default)]
    cores: Option<CoreList>,
    #[serde(default)]
    idle: Option<IdlePolicy>,
}

/// The calls of a document's text, with their lines.
fn entries_with_lines(text: &str) -> Result<(Vec<Entry>, Option<TesseraSection>), (usize, String)> {
    let line_of = |raw: &RawValue| {
        let off = (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
        text[..off.min(text.len())].matches('\n').count() + 1
    };
    let doc: RawDoc = serde_json::from_str(text).map_err(|e| (e.line(), e.to_string()))?;
    let mut out = Vec::new();
    for (i, s) in doc.subsystems.iter().enumerate() {
        let sub: RawSubsystem = serde_json::from_str(s.get())
            .map_err(|e| (line_of(s), format!("subsystems[{i}]: {e}")))?;
        for (j, e) in sub.config.unwrap_or_default().iter().enumerate() {
            let loc = format!("subsystems[{i}].config[{j}]");
            let items: Vec<(&RawValue, String)> = if e.get().trim_start().starts_with('[') {
                let batch: Vec<&RawValue> = serde_json::from_str(e.get())
                    .map_err(|err| (line_of(e), format!("{loc}: {err}")))?;
                batch
                    .into_iter()
                    .enumerate()
                    .map(|(k, b)| (b, format!("{loc}[{k}]")))
                    .collect()
            } else {
                vec![(*e, loc)]
            };
            for (raw, loc) in items {
                let line = line_of(raw);
                let v: Value =
                    serde_json::from_str(raw.get()).map_err(|err| (line, err.to_string()))?;
                out.push(entry_of(v, loc, line).map_err(|m| (line, m))?);
            }
        }
    }
    Ok((out, doc.tessera))
}

fn decode<T: DeserializeOwned>(params: &Option<Value>) -> Result<T, String> {
    params::decode(params.clone()).map_err(|e| e.to_string())
}

/// A reference to a disk of `cfg` as the target will resolve it: an `lvs/lvol` alias
/// becomes the bare lvol name when no other pool of `cfg` has a disk so named (so a file
/// written by SPDK reads as the YAML would say it), and stays an alias otherwise.
fn disk_ref(cfg: &Config, name: &str) -> String {
    let (Some(lvs), lvol) = split_alias(cfg, name) else {
        return name.to_string();
    };
    // Each disk of `cfg` with its pool (a snapshot's and a clone's is their origin's).
    let mut named = cfg
        .disks
        .iter()
        .map(|d| (&d.name, Some(d.pool.as_str())))
        .chain(
            cfg.snapshots
                .iter()
                .map(|s| (&s.name, pool_of(cfg, &s.disk))),
        )
        .chain(
            cfg.clones
                .iter()
                .map(|c| (&c.name, pool_of(cfg, &c.snapshot))),
        );
    let elsewhere = named.any(|(n, p)| n == lvol && p.is_some_and(|p| p != lvs));
    if elsewhere {
        name.to_string()
    } else {
        lvol.to_string()
    }
}

/// The (pool, disk name) of a name or an `lvs/lvol` alias naming a pool of `cfg`.
fn split_alias<'a>(cfg: &Config, name: &'a str) -> (Option<&'a str>, &'a str) {
    if let Some((lvs, lvol)) = name.split_once('/')
        && cfg.pools.iter().any(|p| p.name == lvs)
    {
        return (Some(lvs), lvol);
    }
    (None, name)
}

fn subsystem<'a>(cfg: &'a mut Config, nqn: &str) -> Result<&'a mut SubsystemConfig, String> {
    cfg.nvmf
        .as_mut()
        .and_then(|n| n.subsystems.iter_mut().find(|s| s.nqn == nqn))
        .ok_or_else(|| format!("subsystem \"{nqn}\" is not created above (nvmf_create_subsystem)"))
}

fn disk_mut<'a>(
    cfg: &'a mut Config,
    name: &str,
) -> Result<&'a mut crate::config::DiskConfig, String> {
    let (pool, n) = split_alias(cfg, name);
    cfg.disks
        .iter_mut()
        .find(|d| d.name == n && pool.is_none_or(|p| p == d.pool))
        .ok_or_else(|| format!("\"{name}\" is not an lvol created above with bdev_lvol_create"))
}

/// The read-only flag and copy-on-write policy of a disk or clone of `cfg`.
fn flags_mut<'a>(
    cfg: &'a mut Config,
    name: &str,
) -> Result<(&'a mut bool, &'a mut Option<CowPolicy>), String> {
    let (pool, n) = split_alias(cfg, name);
    let clone_pool: Vec<Option<String>> = cfg
        .clones
        .iter()
        .map(|c| pool_of(cfg, &c.snapshot).map(str::to_string))
        .collect();
    if let Some(d) = cfg
        .disks
        .iter_mut()
        .find(|d| d.name == n && pool.is_none_or(|p| p == d.pool))
    {
        return Ok((&mut d.read_only, &mut d.cow_policy));
    }
    if let Some(c) = cfg
        .clones
        .iter_mut()
        .zip(clone_pool)
        .find(|(c, cp)| c.name == n && pool.is_none_or(|p| cp.as_deref() == Some(p)))
        .map(|(c, _)| c)
    {
        return Ok((&mut c.read_only, &mut c.cow_policy));
    }
    Err(format!("\"{name}\" is not an lvol or clone created above"))
}

/// Applies one call to the configuration being built.
fn apply(cfg: &mut Config, e: &Entry) -> Result<(), String> {
    let p = &e.params;
    match e.method.as_str() {
        "bdev_malloc_create" => {
            let q: bdev::MallocCreateParams = decode(p)?;
            let name = q.name.clone().unwrap_or_else(|| {
                bdev::first_free(|n| cfg.bdevs.iter().any(|b| b.name() == n), "Malloc")
            });
            cfg.bdevs
                .push(q.to_config(name).map_err(|e| e.to_string())?);
        }
        "bdev_null_create" => {
            let q: bdev::NullCreateParams = decode(p)?;
            cfg.bdevs.push(q.to_config().map_err(|e| e.to_string())?);
        }
        "bdev_uring_create" => {
            let q: bdev::UringCreateParams = decode(p)?;
            cfg.bdevs.push(q.to_config());
        }
        "bdev_aio_create" => {
            let q: bdev::AioCreateParams = decode(p)?;
            cfg.bdevs.push(q.to_config().map_err(|e| e.to_string())?);
        }
        "bdev_error_create" => {
            let q: bdev::ErrorCreateParams = decode(p)?;
            cfg.bdevs.push(q.to_config().map_err(|e| e.to_string())?);
        }
        "bdev_nvme_attach_controller" => {
            let q: bdev::AttachControllerParams = decode(p)?;
            cfg.nvme.push(q.to_attach().map_err(|e| e.to_string())?);
        }
        "bdev_lvol_create_lvstore" => {
            let q: lvol::CreateLvstoreParams = decode(p)?;
            cfg.pools.push(q.to_config().map_err(|e| e.to_string())?);
        }
        "tessera_pool_create" => {
            let q: PoolConfig = decode(p)?;
            cfg.pools.push(q);
        }
        "bdev_lvol_create" => {
            let q: lvol::CreateLvolParams = decode(p)?;
            let pool = match (&q.lvs_name, &q.uuid) {
                (Some(n), None) => n.clone(),
                (None, Some(_)) => {
                    return Err(
                        "\"uuid\": name the lvstore with \"lvs_name\" in a configuration file"
                            .into(),
                    );
                }
                _ => return Err("give \"lvs_name\" (and not \"uuid\")".into()),
            };
            cfg.disks
                .push(q.to_config(&pool).map_err(|e| e.to_string())?);
        }
        "bdev_lvol_clone_bdev" => {
            let q: lvol::CloneBdevParams = decode(p)?;
            cfg.disks.push(q.to_config().map_err(|e| e.to_string())?);
        }
        "bdev_lvol_snapshot" => {
            let q: lvol::SnapshotParams = decode(p)?;
            let uuid = q.uuid().map_err(|e| e.to_string())?;
            let disk = disk_ref(cfg, &q.lvol_name);
            cfg.snapshots.push(SnapshotConfig {
                name: q.snapshot_name,
                disk,
                uuid,
            });
        }
        "bdev_lvol_clone" => {
            let q: lvol::CloneParams = decode(p)?;
            let snapshot = disk_ref(cfg, &q.snapshot_name);
            cfg.clones.push(CloneConfig {
                name: q.clone_name,
                snapshot,
                read_only: false,
                cow_policy: None,
            });
        }
        "bdev_lvol_set_read_only" => {
            let q: lvol::LvolNameParams = decode(p)?;
            let (_, n) = split_alias(cfg, &q.name);
            if !cfg.snapshots.iter().any(|s| s.name == n) {
                *flags_mut(cfg, &q.name)?.0 = true;
            }
        }
        "tessera_set_read_only" => {
            let q: lvol::ReadOnlyParams = decode(p)?;
            *flags_mut(cfg, &q.name)?.0 = q.read_only;
        }
        "tessera_set_cow_policy" => {
            let q: lvol::CowPolicyParams = decode(p)?;
            *flags_mut(cfg, &q.name)?.1 = Some(q.cow_policy);
        }
        "bdev_lvol_resize" => {
            let q: lvol::ResizeParams = decode(p)?;
            let bytes = lvol::size_bytes(q.size_in_mib, q.size).map_err(|e| e.to_string())?;
            disk_mut(cfg, &q.name)?.size = crate::config::Size(bytes);
        }
        "bdev_set_qos_limit" => {
            let q: bdev::SetQosLimitParams = decode(p)?;
            let update = q.to_update();
            if update.is_empty() {
                return Err("No rate limits specified".into());
            }
            let name = disk_ref(cfg, &q.name);
            let i = match cfg.qos.iter().position(|e| e.bdev == name) {
                Some(i) => i,
                None => {
                    cfg.qos.push(QosConfig::new(name, Default::default()));
                    cfg.qos.len() - 1
                }
            };
            let (l, _) = update.apply(cfg.qos[i].limits());
            cfg.qos[i] = QosConfig::new(cfg.qos[i].bdev.clone(), l);
        }
        "nvmf_create_transport" => {
            let q: nvmf::CreateTransportParams = decode(p)?;
            let opts = q.to_options().map_err(|e| e.to_string())?;
            cfg.nvmf.get_or_insert_with(NvmfConfig::default).transport = opts;
        }
        "nvmf_create_subsystem" => {
            let q: nvmf::CreateSubsystemRpcParams = decode(p)?;
            let s = q.to_params().map_err(|e| e.to_string())?;
            let n = cfg.nvmf.get_or_insert_with(NvmfConfig::default);
            let d = crate::frontend::nvmf::config::SubsystemConfig {
                nqn: s.nqn,
                serial_number: s
                    .serial_number
                    .unwrap_or_else(|| crate::frontend::nvmf::config::DEFAULT_SERIAL_NUMBER.into()),
                model_number: s
                    .model_number
                    .unwrap_or_else(|| crate::frontend::nvmf::config::DEFAULT_MODEL_NUMBER.into()),
                allow_any_host: s.allow_any_host,
                hosts: Vec::new(),
                dhchap: Default::default(),
                psk: Default::default(),
                max_namespaces: s
                    .max_namespaces
                    .filter(|&m| m != 0)
                    .unwrap_or(crate::frontend::nvmf::config::DEFAULT_MAX_NAMESPACES),
                listeners: Vec::new(),
                namespaces: Vec::new(),
            };
            n.subsystems.push(d);
        }
        "nvmf_subsystem_add_listener" => {
            let q: nvmf::ListenerParams = decode(p)?;
            let la = q.to_params().map_err(|e| e.to_string())?;
            let limits = q.limits().map_err(|e| e.to_string())?;
            let port: u16 = la.trsvcid.parse().map_err(|_| {
                format!(
                    "\"listen_address.trsvcid\": `{}` is not a TCP port",
                    la.trsvcid
                )
            })?;
            subsystem(cfg, &q.nqn)?.listeners.push(ListenerConfig {
                address: la.traddr,
                port,
                secure_channel: q.secure_channel.unwrap_or(false),
                secure_concat: q.secure_concat.unwrap_or(false),
                max_connections: limits.max_connections,
                max_connections_per_host: limits.max_connections_per_host,
            });
        }
        "nvmf_subsystem_add_ns" => {
            let q: nvmf::AddNsParams = decode(p)?;
            q.check().map_err(|e| e.to_string())?;
            let bdev = disk_ref(cfg, &q.namespace.bdev_name);
            subsystem(cfg, &q.nqn)?.namespaces.push(NamespaceConfig {
                bdev,
                nsid: q.namespace.nsid,
                uuid: q.namespace.uuid,
            });
        }
        "nvmf_subsystem_add_host" => {
            let q: nvmf::HostParams = decode(p)?;
            q.check().map_err(|e| e.to_string())?;
            let s = subsystem(cfg, &q.nqn)?;
            if let Some(k) = q.psk {
                s.psk.insert(q.host.clone(), k);
            }
            if let Some(k) = q.dhchap_key {
                s.dhchap.insert(
                    q.host.clone(),
                    crate::frontend::nvmf::config::HostKeysConfig {
                        dhchap_key: k,
                        dhchap_ctrlr_key: q.dhchap_ctrlr_key,
                    },
                );
            }
            s.hosts.push(q.host);
        }
        "nvmf_subsystem_allow_any_host" => {
            let q: nvmf::AllowAnyHostParams = decode(p)?;
            subsystem(cfg, &q.nqn)?.allow_any_host = q.allow_any_host;
        }
        "keyring_file_add_key" => {
            let q: KeyFileParams = decode(p)?;
            cfg.keys.push(crate::config::KeyConfig {
                name: q.name,
                path: q.path,
            });
        }
        "nbd_server_start" => {
            let q: nbd::ServerStartParams = decode(p)?;
            let n = cfg.nbd.get_or_insert_with(NbdConfig::default);
            let l = q.limits();
            n.set_tls_settings(q.tls());
            n.listen = q.listen;
            n.max_connections = l.max_connections;
            n.max_connections_per_host = l.max_connections_per_host;
            n.max_buffer_bytes = l.max_buffer_bytes;
            n.buffer_wait_timeout_ms = l.buffer_wait_timeout_ms;
        }
        "nbd_start_export" => {
            let q: nbd::StartExportParams = decode(p)?;
            let bdev = disk_ref(cfg, &q.bdev_name);
            cfg.nbd
                .get_or_insert_with(NbdConfig::default)
                .exports
                .push(NbdExportConfig {
                    name: q.name.unwrap_or_else(|| bdev.clone()),
                    bdev,
                    read_only: q.read_only,
                    description: q.description,
                });
        }
        "nbd_start_disk" => {
            // SPDK attaches the bdev to the kernel's /dev/nbdX; tessera serves it over
            // its NBD server instead, as an export named after the bdev.
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct StartDisk {
                bdev_name: String,
                #[serde(default)]
                nbd_device: Option<String>,
            }
            let q: StartDisk = decode(p)?;
            let bdev = disk_ref(cfg, &q.bdev_name);
            cfg.nbd
                .get_or_insert_with(NbdConfig::default)
                .exports
                .push(NbdExportConfig {
                    name: bdev.clone(),
                    bdev,
                    read_only: false,
                    description: q
                        .nbd_device
                        .map(|d| format!("SPDK nbd_start_disk {d}"))
                        .unwrap_or_default(),
                });
        }
        m if is_ignored(m) => {}
        m => {
            return Err(format!(
                "method \"{m}\" cannot be used in a configuration file (only methods that create or set up an object can)"
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Parses SPDK's JSON configuration format; `file` names it in errors.
    pub fn parse_spdk_json(text: &str, file: &str) -> Result<Config, ConfigError> {
        let cfg = parse_document(text, file)?;
        cfg.validate(file)?;
        Ok(cfg)
    }
}

/// Reads an SPDK JSON configuration into a [`Config`] (not yet validated).
pub fn parse_document(text: &str, file: &str) -> Result<Config, ConfigError> {
    let (entries, tessera) =
        entries_with_lines(text).map_err(|(line, message)| ConfigError::Parse {
            file: file.to_string(),
            line,
            column: 0,
            message,
        })?;
    let mut cfg = Config::default();
    if let Some(t) = tessera {
        if let Some(c) = t.cores {
            cfg.cores = c;
        }
        if let Some(i) = t.idle {
            cfg.idle = i;
        }
    }
    for e in &entries {
        apply(&mut cfg, e).map_err(|message| ConfigError::Parse {
            file: file.to_string(),
            line: e.line,
            column: 0,
            message: format!("{} ({}): {message}", e.location, e.method),
        })?;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
  "subsystems": [
    {"subsystem": "iobuf", "config": [{"method": "iobuf_set_options", "params": {"small_pool_count": 8192}}]},
    {"subsystem": "bdev", "config": [
      {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65535}},
      {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}},
      {"method": "bdev_lvol_create_lvstore", "params": {"bdev_name": "Malloc0", "lvs_name": "pool0", "cluster_sz": 1048576}},
      {"method": "bdev_lvol_create", "params": {"lvs_name": "pool0", "lvol_name": "vd0", "size_in_mib": 64, "thin_provision": true}},
      {"method": "bdev_lvol_snapshot", "params": {"lvol_name": "pool0/vd0", "snapshot_name": "snap0"}},
      {"method": "bdev_lvol_clone", "params": {"snapshot_name": "pool0/snap0", "clone_name": "clone0"}},
      {"method": "bdev_set_qos_limit", "params": {"name": "pool0/vd0", "rw_ios_per_sec": 1500}},
      {"method": "bdev_set_qos_limit", "params": {"name": "Malloc0", "r_mbytes_per_sec": 10}},
      {"method": "bdev_set_qos_limit", "params": {"name": "pool0/vd0", "w_mbytes_per_sec": 5}},
      {"method": "bdev_wait_for_examine"}
    ]},
    {"subsystem": "nvmf", "config": [
      {"method": "nvmf_create_transport", "params": {"trtype": "TCP", "max_queue_depth": 64,
        "max_qpairs_per_ctrlr": 5, "max_connections_per_host": 16}},
      {"method": "nvmf_create_subsystem", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1", "allow_any_host": true}},
      {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1",
        "listen_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "4420"}}},
      {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "nqn.2016-06.io.spdk:cnode1",
        "namespace": {"bdev_name": "pool0/vd0", "nsid": 1}}}
    ]},
    {"subsystem": "nbd", "config": [
      {"method": "nbd_server_start", "params": {"listen": "127.0.0.1:10809", "max_connections": 8}},
      {"method": "nbd_start_disk", "params": {"bdev_name": "pool0/clone0", "nbd_device": "/dev/nbd0"}}]}
  ]
}"#;

    #[test]
    fn reads_an_spdk_file() {
        assert!(is_spdk_json(SAMPLE));
        assert!(!is_spdk_json("cores: [0]\n"));
        let cfg = parse_document(SAMPLE, "x.json").unwrap();
        assert_eq!(cfg.bdevs.len(), 1);
        assert_eq!(cfg.pools[0].name, "pool0");
        assert_eq!(cfg.disks[0].size.0, 64 << 20);
        assert!(cfg.disks[0].thin);
        assert_eq!(cfg.snapshots[0].disk, "vd0");
        assert_eq!(cfg.clones[0].snapshot, "snap0");
        let n = cfg.nvmf.as_ref().unwrap();
        assert_eq!(n.transport.max_queue_depth, 64);
        // SPDK's max_qpairs_per_ctrlr counts the admin queue.
        assert_eq!(n.transport.max_io_qpairs_per_ctrlr, 4);
        assert_eq!(n.transport.max_connections_per_host, 16);
        assert_eq!(n.transport.max_connections_per_listener, 1024);
        let nbd = cfg.nbd.as_ref().unwrap();
        assert_eq!(
            (nbd.max_connections, nbd.max_connections_per_host),
            (8, 128)
        );
        assert_eq!(n.subsystems[0].namespaces[0].bdev, "vd0");
        assert_eq!(n.subsystems[0].listeners[0].port, 4420);
        assert_eq!(cfg.nbd.as_ref().unwrap().exports[0].bdev, "clone0");
        // Rate limits: a bdev's calls merge, the I/O limit rounded up as SPDK does.
        assert_eq!(cfg.qos.len(), 2);
        assert_eq!(cfg.qos[0].bdev, "vd0");
        assert_eq!(
            (cfg.qos[0].rw_ios_per_sec, cfg.qos[0].w_mbytes_per_sec),
            (2000, 5)
        );
        assert_eq!(
            (cfg.qos[1].bdev.as_str(), cfg.qos[1].r_mbytes_per_sec),
            ("Malloc0", 10)
        );
    }

    #[test]
    fn round_trips_through_the_document() {
        let cfg = parse_document(SAMPLE, "x.json").unwrap();
        let text = serde_json::to_string_pretty(&document(&cfg)).unwrap();
        let again = parse_document(&text, "y.json").unwrap();
        assert_eq!(again, cfg, "{text}");
    }

    /// The NBD server's TLS settings round-trip as file names (never their contents).
    #[test]
    fn nbd_tls_settings_round_trip_config_tls() {
        let with = SAMPLE.replace(
            r#""max_connections": 8}"#,
            r#""max_connections": 8, "tls": "required", "tls_cert": "/etc/t/cert.pem",
              "tls_key": "/etc/t/key.pem", "tls_ca": "/etc/t/ca.pem", "tls_authz": ["CN=a,O=B"]}"#,
        );
        let cfg = parse_document(&with, "x.json").unwrap();
        let n = cfg.nbd.as_ref().unwrap();
        assert_eq!(n.tls, crate::frontend::nbd::TlsMode::Required);
        assert_eq!(
            n.tls_key.as_deref(),
            Some(std::path::Path::new("/etc/t/key.pem"))
        );
        assert_eq!(n.tls_authz, vec!["CN=a,O=B".to_string()]);
        let text = serde_json::to_string_pretty(&document(&cfg)).unwrap();
        assert!(text.contains(r#""tls_key": "/etc/t/key.pem""#), "{text}");
        let again = parse_document(&text, "y.json").unwrap();
        assert_eq!(again, cfg, "{text}");
        // Off: no tls keys written at all.
        let cfg = parse_document(SAMPLE, "x.json").unwrap();
        let text = serde_json::to_string_pretty(&document(&cfg)).unwrap();
        assert!(!text.contains("tls"), "{text}");
    }

    /// A snapshot's UUID (tessera's `uuid` of `bdev_lvol_snapshot`) is read, written
    /// back, and bad text is refused naming it.
    #[test]
    fn a_snapshot_uuid_round_trips_and_bad_text_is_named() {
        let u = "0b5f3a6e-2a43-4c55-9a6e-5d1f0d0c7a11";
        let with = SAMPLE.replace(
            "\"snapshot_name\": \"snap0\"}",
            &format!("\"snapshot_name\": \"snap0\", \"uuid\": \"{u}\"}}"),
        );
        let cfg = parse_document(&with, "x.json").unwrap();
        assert_eq!(
            cfg.snapshots[0].uuid,
            Some(uuid::Uuid::parse_str(u).unwrap())
        );
        let text = serde_json::to_string_pretty(&document(&cfg)).unwrap();
        assert!(text.contains(u), "{text}");
        assert_eq!(parse_document(&text, "y.json").unwrap(), cfg);
        let bad = with.replace(u, "0b5f3a6e");
        let e = parse_document(&bad, "x.json").unwrap_err().to_string();
        assert!(
            e.contains("(bdev_lvol_snapshot)") && e.contains("\"uuid\": `0b5f3a6e` is not a UUID"),
            "{e}"
        );
    }

    #[test]
    fn the_two_examples_describe_the_same_target() {
        let yaml = Config::parse(
            include_str!("../../../spdk-config/example.yaml"),
            "example.yaml",
        )
        .unwrap();
        let mut json = Config::parse_spdk_json(
            include_str!("../../../spdk-config/example-spdk.json"),
            "example-spdk.json",
        )
        .unwrap();
        // SPDK's nbd_start_disk names a kernel device; tessera keeps it as the
        // export's description.
        let e = &mut json.nbd.as_mut().unwrap().exports[0];
        assert_eq!(e.description, "SPDK nbd_start_disk /dev/nbd0");
        e.description.clear();
        assert_eq!(json, yaml);
    }

    #[test]
    fn errors_name_file_line_and_parameter() {
        let bad = SAMPLE.replace("\"size_in_mib\": 64", "\"size_in_mib\": \"big\"");
        let e = parse_document(&bad, "x.json").unwrap_err().to_string();
        assert!(
            e.starts_with("x.json:8:")
                && e.contains("subsystems[1].config[3] (bdev_lvol_create)")
                && e.contains("\"size_in_mib\": expected an integer"),
            "{e}"
        );
        let bad = SAMPLE.replace(
            "\"lvol_name\": \"vd0\",",
            "\"lvol_name\": \"vd0\", \"colour\": 1,",
        );
        let e = parse_document(&bad, "x.json").unwrap_err().to_string();
        assert!(e.contains("unknown parameter \"colour\""), "{e}");
        let bad = SAMPLE.replace("bdev_wait_for_examine", "bdev_frobnicate");
        let e = parse_document(&bad, "x.json").unwrap_err().to_string();
        assert!(
            e.starts_with("x.json:14:") && e.contains("bdev_frobnicate"),
            "{e}"
        );
        let e = parse_document("{\"subsystems\": [", "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.json:1:"), "{e}");
    }
}
