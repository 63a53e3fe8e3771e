//! `tessera send --nvmf TRID`: a snapshot's changed blocks since `--from` (or all its
//! blocks holding data) copied by the source target itself to a remote NVMe/TCP
//! namespace — another tessera target, SPDK's `nvmf_tgt`, any NVMe-oF target.
//!
//! Through the source target's RPC socket: attach the remote controller under a
//! temporary name (`bdev_nvme_attach_controller`), check that the chosen namespace has
//! the snapshot's block size and size, start `tessera_lvol_start_diff_copy` (from
//! `--resume-from`, within `--limit`), follow it with `bdev_lvol_check_shallow_copy`
//! (the progress display of `tessera rpc --wait`), and detach the controller — also when
//! anything failed; SIGINT or SIGTERM cancels the copy (`tessera_lvol_cancel_copy`)
//! first, so that the controller can be detached. Nothing waits forever: every RPC call has a time limit, and a copy
//! whose progress does not move for the stall limit ends the wait with an error (the
//! copy's own reads and writes have a time limit of their own, so a dead remote fails
//! the copy first). A failed copy reports how far it got: `--resume-from` that byte
//! sends the rest.
//!
//! The transport ID is SPDK's string, as its tools take it (`spdk_nvme_perf -r`):
//! `trtype:tcp adrfam:ipv4 traddr:10.0.0.2 trsvcid:4420 subnqn:nqn.… [hostnqn:nqn.…]
//! [ns:N]`, keys in any case, `key:value` or `key=value`, separated by spaces.

use super::{ReplicateError, Result, Rpc, lvols, snapshots_to_send};
use crate::rpc::job_wait::{self, WaitError};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Why a transport ID string was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TridError {
    #[error(
        "--nvmf: `{0}` is not KEY:VALUE (a transport ID is `trtype:tcp traddr:ADDR trsvcid:PORT subnqn:NQN`)"
    )]
    NotPair(String),
    #[error(
        "--nvmf: unknown key `{0}` (known: trtype, adrfam, traddr, trsvcid, subnqn, hostnqn, ns)"
    )]
    UnknownKey(String),
    #[error("--nvmf: `{0}` is given twice")]
    Twice(String),
    #[error("--nvmf: no `{0}`")]
    Missing(&'static str),
    #[error("--nvmf: {key}: {reason}")]
    BadValue { key: &'static str, reason: String },
}

/// An NVMe/TCP transport ID: where the remote namespace is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportId {
    pub adrfam: Option<String>,
    pub traddr: String,
    pub trsvcid: String,
    pub subnqn: String,
    pub hostnqn: Option<String>,
    /// `ns:N`, as SPDK's tools take it.
    pub nsid: Option<u32>,
}

impl TransportId {
    /// Parses SPDK's `key:value ...` form (see the module documentation).
    pub fn parse(s: &str) -> std::result::Result<TransportId, TridError> {
        let mut seen: Vec<String> = Vec::new();
        let (mut adrfam, mut traddr, mut trsvcid, mut subnqn, mut hostnqn, mut nsid) =
            (None, None, None, None, None, None);
        for pair in s.split_whitespace() {
            let at = pair
                .find([':', '='])
                .ok_or_else(|| TridError::NotPair(pair.to_string()))?;
            let (key, value) = (pair[..at].to_ascii_lowercase(), &pair[at + 1..]);
            if value.is_empty() {
                return Err(TridError::NotPair(pair.to_string()));
            }
            if seen.contains(&key) {
                return Err(TridError::Twice(key));
            }
            seen.push(key.clone());
            match key.as_str() {
                "trtype" => {
                    if !value.eq_ignore_ascii_case("tcp") {
                        return Err(TridError::BadValue {
                            key: "trtype",
                            reason: format!("`{value}` is not supported (only tcp)"),
                        });
                    }
                }
                "adrfam" => {
                    if !["ipv4", "ipv6"].contains(&value.to_ascii_lowercase().as_str()) {
                        return Err(TridError::BadValue {
                            key: "adrfam",
                            reason: format!("`{value}` is not ipv4 or ipv6"),
                        });
                    }
                    adrfam = Some(value.to_string());
                }
                "traddr" => traddr = Some(value.to_string()),
                "trsvcid" => {
                    value.parse::<u16>().map_err(|_| TridError::BadValue {
                        key: "trsvcid",
                        reason: format!("`{value}` is not a TCP port"),
                    })?;
                    trsvcid = Some(value.to_string());
                }
                "subnqn" => subnqn = Some(value.to_string()),
                "hostnqn" => hostnqn = Some(value.to_string()),
                "ns" => {
                    nsid = Some(
                        value
                            .parse::<u32>()
                            .ok()
                            .filter(|n| *n > 0 && *n != u32::MAX)
                            .ok_or_else(|| TridError::BadValue {
                                key: "ns",
                                reason: format!("`{value}` is not a namespace ID"),
                            })?,
                    );
                }
                _ => return Err(TridError::UnknownKey(key)),
            }
        }
        Ok(TransportId {
            adrfam,
            traddr: traddr.ok_or(TridError::Missing("traddr"))?,
            trsvcid: trsvcid.unwrap_or_else(|| "4420".to_string()),
            subnqn: subnqn.ok_or(TridError::Missing("subnqn"))?,
            hostnqn,
            nsid,
        })
    }
}

/// `tessera send --nvmf`.
pub struct NvmfSendOptions {
    pub rpc_socket: PathBuf,
    /// The remote namespace's transport ID (SPDK's string).
    pub trid: String,
    /// The namespace (`--nsid`); else the transport ID's `ns:`, else the only one.
    pub nsid: Option<u32>,
    /// The base snapshot; `None` for a full send.
    pub from: Option<String>,
    /// The snapshot to send.
    pub snapshot: String,
    /// Bytes per second, at most.
    pub limit: Option<u64>,
    /// Skip the runs before this byte offset (a multiple of the block size).
    pub resume_from: u64,
    /// How long the copy may make no progress.
    pub stall: Duration,
    /// Progress as a bar (on a terminal) rather than lines.
    pub terminal: bool,
}

/// What a send to a namespace did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmfSendSummary {
    /// Bytes the copy wrote to the namespace.
    pub bytes: u64,
    pub nsid: u32,
    pub operation_id: u64,
}

/// The temporary controller of one send, detached when dropped (if not before).
struct Controller {
    socket: PathBuf,
    name: String,
    attached: bool,
}

impl Controller {
    fn detach(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        let mut rpc = Rpc::connect(&self.socket)?;
        rpc.call("bdev_nvme_detach_controller", json!({"name": self.name}))?;
        self.attached = false;
        Ok(())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!(controller = %self.name, "could not detach the remote controller: {e}");
        }
    }
}

/// Copies the snapshot of `opts` to the remote namespace; progress on `progress`.
pub fn send_nvmf(opts: &NvmfSendOptions, progress: &mut dyn Write) -> Result<NvmfSendSummary> {
    let trid = TransportId::parse(&opts.trid)?;
    let want_nsid = match (opts.nsid, trid.nsid) {
        (Some(a), Some(b)) if a != b => {
            return Err(ReplicateError::Refused(format!(
                "--nsid {a} and the transport ID's ns:{b} differ"
            )));
        }
        (a, b) => a.or(b),
    };
    let mut rpc = Rpc::connect(&opts.rpc_socket)?;
    let all = lvols(&mut rpc)?;
    let (target, base) = snapshots_to_send(&all, &opts.snapshot, opts.from.as_deref())?;
    let bs = u64::from(target.block_size);
    if !opts.resume_from.is_multiple_of(bs) || opts.resume_from > target.size {
        return Err(ReplicateError::Refused(format!(
            "--resume-from: {} is not a multiple of the block size {bs} within the snapshot's {} bytes",
            opts.resume_from, target.size
        )));
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("tessera-send-{}-{nanos}", std::process::id());
    let mut params = json!({"name": name, "trtype": "tcp", "traddr": trid.traddr,
                            "trsvcid": trid.trsvcid, "subnqn": trid.subnqn});
    if let Some(a) = &trid.adrfam {
        params["adrfam"] = json!(a);
    }
    if let Some(h) = &trid.hostnqn {
        params["hostnqn"] = json!(h);
    }
    let remote = format!("`{}` at {}:{}", trid.subnqn, trid.traddr, trid.trsvcid);
    const ATTACH: &str = "bdev_nvme_attach_controller";
    let names = rpc.call(ATTACH, params).map_err(|e| {
        ReplicateError::Refused(format!("attaching the remote controller of {remote}: {e}"))
    })?;
    let mut ctrl = Controller {
        socket: opts.rpc_socket.clone(),
        name: name.clone(),
        attached: true,
    };
    let r = copy_to(
        opts,
        &mut rpc,
        &names,
        &name,
        want_nsid,
        &remote,
        (&target, base.as_ref()),
        progress,
    );
    match (r, ctrl.detach()) {
        (Ok(s), Ok(())) => Ok(s),
        (Ok(_), Err(d)) => Err(ReplicateError::Refused(format!(
            "the copy completed, but the remote controller `{name}` could not be detached: {d}"
        ))),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => Err(ReplicateError::Refused(format!(
            "{e}; the remote controller `{name}` stays attached ({d}): detach it with \
             bdev_nvme_detach_controller once the copy has ended"
        ))),
    }
}

/// The copy itself, once the controller `ctrl` is attached (its bdevs `names`).
#[allow(clippy::too_many_arguments)] // the facts the caller already gathered
fn copy_to(
    opts: &NvmfSendOptions,
    rpc: &mut Rpc,
    names: &Value,
    ctrl: &str,
    want_nsid: Option<u32>,
    remote: &str,
    (target, base): (&super::Lvol, Option<&super::Lvol>),
    progress: &mut dyn Write,
) -> Result<NvmfSendSummary> {
    const ATTACH: &str = "bdev_nvme_attach_controller";
    let bad = |method, v: &Value| ReplicateError::BadAnswer {
        method,
        answer: v.to_string().chars().take(200).collect(),
    };
    // Namespaces as `<ctrl>n<nsid>`.
    let mut nsids = Vec::new();
    for n in names.as_array().ok_or_else(|| bad(ATTACH, names))? {
        let nsid = n
            .as_str()
            .and_then(|s| s.strip_prefix(ctrl))
            .and_then(|s| s.strip_prefix('n'))
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| bad(ATTACH, names))?;
        nsids.push(nsid);
    }
    nsids.sort_unstable();
    let list = || {
        let l: Vec<String> = nsids.iter().map(u32::to_string).collect();
        l.join(", ")
    };
    let nsid = match (want_nsid, nsids.as_slice()) {
        (_, []) => {
            return Err(ReplicateError::Refused(format!(
                "{remote} has no namespace to send to"
            )));
        }
        (Some(n), _) if !nsids.contains(&n) => {
            return Err(ReplicateError::Refused(format!(
                "{remote} has no namespace {n} (it has {})",
                list()
            )));
        }
        (Some(n), _) => n,
        (None, [one]) => *one,
        (None, _) => {
            return Err(ReplicateError::Refused(format!(
                "{remote} has namespaces {}: choose one with --nsid (or ns: in the transport ID)",
                list()
            )));
        }
    };
    let bdev = format!("{ctrl}n{nsid}");
    const BDEVS: &str = "bdev_get_bdevs";
    let v = rpc.call(BDEVS, json!({"name": bdev}))?;
    let (Some(rbs), Some(rblocks)) = (v[0]["block_size"].as_u64(), v[0]["num_blocks"].as_u64())
    else {
        return Err(bad(BDEVS, &v));
    };
    let bs = u64::from(target.block_size);
    if rbs != bs || rblocks * rbs != target.size {
        return Err(ReplicateError::Refused(format!(
            "namespace {nsid} of {remote} has {rblocks} blocks of {rbs} bytes ({} bytes), \
             snapshot `{}` {} blocks of {bs} bytes ({} bytes): the block sizes and sizes must \
             match",
            rblocks * rbs,
            target.name,
            target.size / bs,
            target.size
        )));
    }
    let mut params = json!({"target": target.uuid.to_string(), "dst_bdev_name": bdev,
                            "offset_blocks": opts.resume_from / bs,
                            "max_bytes_per_sec": opts.limit.unwrap_or(0)});
    if let Some(b) = base {
        params["base"] = json!(b.uuid.to_string());
    }
    // SIGINT and SIGTERM cancel the copy (and then the controller is detached) instead
    // of leaving it running with nobody to detach the controller after it.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).map_err(|cause| {
            ReplicateError::Io {
                what: "installing the signal handler",
                cause,
            }
        })?;
    }
    const START: &str = "tessera_lvol_start_diff_copy";
    let v = rpc.call(START, params)?;
    let id = v["operation_id"].as_u64().ok_or_else(|| bad(START, &v))?;
    let followed = job_wait::follow_copy_until(
        &mut rpc.client,
        id,
        opts.stall,
        opts.terminal,
        progress,
        &interrupted,
    );
    if followed.is_err() {
        cancel(rpc, id);
    }
    match followed {
        Ok(state) => {
            const CHECK: &str = "bdev_lvol_check_shallow_copy";
            let bytes = state["copied_bytes"]
                .as_u64()
                .ok_or_else(|| bad(CHECK, &state))?;
            Ok(NvmfSendSummary {
                bytes,
                nsid,
                operation_id: id,
            })
        }
        Err(e) => {
            // Where the copy stands: the offset to resume from, and whether it runs on.
            let state = rpc
                .call("bdev_lvol_check_shallow_copy", json!({"operation_id": id}))
                .ok();
            let next = state
                .as_ref()
                .and_then(|s| s["next_offset_blocks"].as_u64())
                .map(|b| b * bs);
            let running = state.as_ref().is_some_and(|s| s["state"] == "in progress");
            let mut msg = format!("copy {id} to namespace {nsid} of {remote}: {}", cause(&e));
            if let Some(at) = next {
                msg.push_str(&format!(
                    "; everything below byte {at} is copied: send again with --resume-from {at}"
                ));
            }
            if running {
                msg.push_str(" (the copy still runs on the source target)");
            }
            Err(ReplicateError::Refused(msg))
        }
    }
}

/// Cancels copy `id` and waits (within [`CANCEL_LIMIT`]) for it to end, so that its
/// destination is released and the controller can be detached.
fn cancel(rpc: &mut Rpc, id: u64) {
    const CHECK: &str = "bdev_lvol_check_shallow_copy";
    if let Err(e) = rpc.call("tessera_lvol_cancel_copy", json!({"operation_id": id})) {
        tracing::warn!(operation_id = id, "could not cancel the copy: {e}");
        return;
    }
    let end = std::time::Instant::now() + CANCEL_LIMIT;
    while std::time::Instant::now() < end {
        match rpc.call(CHECK, json!({"operation_id": id})) {
            Ok(s) if s["state"] != "in progress" => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                tracing::warn!(operation_id = id, "{e}");
                return;
            }
        }
    }
}

/// How long a cancelled copy may take to end: its requests in flight have a 30 s time
/// limit each.
const CANCEL_LIMIT: Duration = Duration::from_secs(40);

/// A wait's error without its repeated job name.
fn cause(e: &WaitError) -> String {
    match e {
        WaitError::JobFailed { error, .. } => format!("failed: {error}"),
        WaitError::Interrupted { .. } => "interrupted (a signal): cancelled".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_ids_parse_as_spdk_writes_them_and_bad_ones_are_named() {
        let t = TransportId::parse(
            "trtype:TCP adrfam:IPv4 traddr:10.0.0.2 trsvcid:4421 subnqn:nqn.2016-06.io.spdk:cnode1 ns:2",
        )
        .unwrap();
        assert_eq!(
            t,
            TransportId {
                adrfam: Some("IPv4".into()),
                traddr: "10.0.0.2".into(),
                trsvcid: "4421".into(),
                subnqn: "nqn.2016-06.io.spdk:cnode1".into(),
                hostnqn: None,
                nsid: Some(2),
            }
        );
        let t = TransportId::parse("traddr=fe80::1 subnqn=nqn.x hostnqn:nqn.h").unwrap();
        assert_eq!((t.traddr.as_str(), t.trsvcid.as_str()), ("fe80::1", "4420"));
        assert_eq!(t.hostnqn.as_deref(), Some("nqn.h"));
        for (s, e) in [
            ("traddr 1.2.3.4", TridError::NotPair("traddr".into())),
            ("traddr: subnqn:x", TridError::NotPair("traddr:".into())),
            ("subnqn:x", TridError::Missing("traddr")),
            ("traddr:a", TridError::Missing("subnqn")),
            (
                "traddr:a traddr:b subnqn:x",
                TridError::Twice("traddr".into()),
            ),
            (
                "foo:1 traddr:a subnqn:x",
                TridError::UnknownKey("foo".into()),
            ),
        ] {
            assert_eq!(TransportId::parse(s), Err(e), "{s}");
        }
        for (s, key) in [
            ("trtype:rdma traddr:a subnqn:x", "trtype"),
            ("adrfam:ib traddr:a subnqn:x", "adrfam"),
            ("trsvcid:99999 traddr:a subnqn:x", "trsvcid"),
            ("ns:0 traddr:a subnqn:x", "ns"),
        ] {
            assert!(
                matches!(TransportId::parse(s), Err(TridError::BadValue { key: k, .. }) if k == key),
                "{s}"
            );
        }
    }
}
