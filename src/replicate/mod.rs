//! Incremental send and receive between two targets: `tessera send` and `tessera
//! receive`, clients of a target's RPC socket and NBD server.
//!
//! **send** asks the source target which runs of blocks to send —
//! `tessera_lvol_get_changed_ranges` between the base and the target snapshot, or
//! `tessera_lvol_get_allocated_ranges`'s `data` runs of the target snapshot for a full
//! send — exports the target snapshot read-only over NBD under a temporary name, reads
//! the runs and writes them as a [`stream`] (header, data records, end record).
//!
//! **receive** reads a stream, checks that the destination disk's latest snapshot (its
//! parent) is the stream's base — by UUID: a received snapshot is taken with its
//! source's UUID (`bdev_lvol_snapshot`'s `uuid`, as ZFS keeps a snapshot's GUID across
//! send and receive), so a snapshot that merely carries the base's name is refused —
//! exports the disk under a temporary name, writes every record at its offset, flushes,
//! and only after the end record and the flush takes the snapshot of the stream's target
//! name and UUID. An interrupted receive leaves the disk changed and no snapshot taken;
//! the writes are idempotent, so receiving the same stream again (or the send's tail
//! from an offset, `--resume-from`) completes it. A stream whose target snapshot (by
//! UUID) is already the disk's latest is acknowledged and not applied again. As bdevs
//! are known by their UUIDs, a stream cannot be received into the target that sent it
//! (the snapshot's UUID is taken there): that is refused before anything is written.

pub mod nbd_client;
pub mod nvmf;
pub mod stream;

use crate::rpc::RpcClient;
use crate::rpc::client::ClientError;
use nbd_client::{NbdClient, NbdClientError};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stream::{Decoder, Encoder, Header, Record, StreamError};
use uuid::Uuid;

/// The longest an RPC call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Runs asked per page.
const PAGE_RANGES: usize = 65_536;
/// The longest data record `send` writes (a run is cut into records of this size).
const RECORD_BYTES: u64 = 1 << 20;
/// Read requests in flight on each of send's NBD connections.
const SEND_WINDOW: usize = 4;
/// Records a send connection may have read ahead of the stream's writer.
const SEND_READ_AHEAD: usize = 4;
/// How often a progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Why a send or a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("RPC {method}: {cause}")]
    Rpc {
        method: &'static str,
        cause: ClientError,
    },
    #[error("RPC {method}: {message} (code {code})")]
    RpcFailed {
        method: &'static str,
        code: i32,
        message: String,
    },
    #[error("RPC {method}: unexpected answer: {answer}")]
    BadAnswer {
        method: &'static str,
        answer: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Nbd(#[from] NbdClientError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Trid(#[from] nvmf::TridError),
    #[error("{what}: {cause}")]
    Io {
        what: &'static str,
        cause: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, ReplicateError>;

/// A target's RPC socket.
struct Rpc {
    client: RpcClient,
    socket: PathBuf,
}

impl Rpc {
    fn connect(socket: &std::path::Path) -> Result<Rpc> {
        let client =
            RpcClient::connect(socket, RPC_TIMEOUT).map_err(|cause| ReplicateError::Rpc {
                method: "connect",
                cause,
            })?;
        Ok(Rpc {
            client,
            socket: socket.to_path_buf(),
        })
    }

    fn call(&mut self, method: &'static str, params: Value) -> Result<Value> {
        match self.client.call(method, Some(params)) {
            Err(cause) => Err(ReplicateError::Rpc { method, cause }),
            Ok(Err(e)) => Err(ReplicateError::RpcFailed {
                method,
                code: e.code,
                message: e.message,
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

/// What `bdev_lvol_get_lvols` says of one lvol.
#[derive(Clone, Debug)]
struct Lvol {
    name: String,
    uuid: Uuid,
    pool_uuid: Uuid,
    pool_name: String,
    /// A snapshot (tessera's `kind`; SPDK's `is_snapshot` also says so of a read-only
    /// lvol that has clones).
    is_snapshot: bool,
    /// Created as a disk (not a snapshot or a clone): tessera's `kind`.
    is_disk: bool,
    parent: Option<String>,
    block_size: u32,
    size: u64,
}

fn lvols(rpc: &mut Rpc) -> Result<Vec<Lvol>> {
    const M: &str = "bdev_lvol_get_lvols";
    let v = rpc.call(M, json!({}))?;
    let bad = || ReplicateError::BadAnswer {
        method: M,
        answer: v.to_string().chars().take(200).collect(),
    };
    let list = v.as_array().ok_or_else(bad)?;
    let mut out = Vec::new();
    for l in list {
        let s = |k: &str| l[k].as_str().map(str::to_string);
        let uuid = |v: &Value| v.as_str().and_then(|u| Uuid::parse_str(u).ok());
        let block_size = l["block_size"].as_u64().ok_or_else(bad)?;
        out.push(Lvol {
            name: s("name").ok_or_else(bad)?,
            uuid: uuid(&l["uuid"]).ok_or_else(bad)?,
            pool_uuid: uuid(&l["lvs"]["uuid"]).ok_or_else(bad)?,
            pool_name: l["lvs"]["name"].as_str().unwrap_or_default().to_string(),
            is_snapshot: l["kind"] == "snapshot",
            is_disk: l["kind"] == "disk",
            parent: s("parent"),
            block_size: u32::try_from(block_size).map_err(|_| bad())?,
            size: l["num_blocks"].as_u64().ok_or_else(bad)? * block_size,
        });
    }
    Ok(out)
}

/// The lvol `name` names: its name, `pool/name` or its UUID.
fn find<'a>(all: &'a [Lvol], name: &str) -> Option<&'a Lvol> {
    all.iter().find(|l| {
        l.uuid.to_string() == name
            || l.name == name
            || format!("{}/{}", l.pool_name, l.name) == name
    })
}

/// The lvol named `name` in `pool` (parents are named within their pool).
fn in_pool<'a>(all: &'a [Lvol], pool: Uuid, name: &str) -> Option<&'a Lvol> {
    all.iter().find(|l| l.pool_uuid == pool && l.name == name)
}

/// The name (alias if it has one) of the bdev of the target whose UUID is `u`, if any.
fn bdev_with_uuid(rpc: &mut Rpc, u: Uuid) -> Result<Option<String>> {
    const M: &str = "bdev_get_bdevs";
    let v = rpc.call(M, json!({}))?;
    let list = v.as_array().ok_or_else(|| ReplicateError::BadAnswer {
        method: M,
        answer: v.to_string().chars().take(200).collect(),
    })?;
    Ok(list
        .iter()
        .find(|b| b["uuid"].as_str().and_then(|s| Uuid::parse_str(s).ok()) == Some(u))
        .map(|b| {
            b["aliases"][0]
                .as_str()
                .or(b["name"].as_str())
                .unwrap_or_default()
                .to_string()
        }))
}

/// An NBD export made for one send or receive, stopped when dropped.
struct TempExport {
    socket: PathBuf,
    name: String,
}

impl TempExport {
    fn start(rpc: &mut Rpc, bdev: &Lvol, read_only: bool, role: &str) -> Result<TempExport> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("tessera-{role}-{}-{nanos}", std::process::id());
        rpc.call(
            "nbd_start_export",
            json!({"bdev_name": bdev.uuid.to_string(), "name": name, "read_only": read_only}),
        )?;
        Ok(TempExport {
            socket: rpc.socket.clone(),
            name,
        })
    }
}

impl Drop for TempExport {
    fn drop(&mut self) {
        let r = Rpc::connect(&self.socket)
            .and_then(|mut rpc| rpc.call("nbd_stop_export", json!({"name": self.name})));
        if let Err(e) = r {
            tracing::warn!(export = %self.name, "could not stop the temporary NBD export: {e}");
        }
    }
}

/// Prints a progress line at most every [`PROGRESS_EVERY`], and throttles to a rate.
struct Progress<'a> {
    verb: &'static str,
    out: &'a mut dyn Write,
    t0: Instant,
    last: Instant,
    total: Option<u64>,
    done: u64,
    limit: Option<u64>,
}

impl<'a> Progress<'a> {
    /// Progress of `verb` (of `total` bytes if known, within `limit` bytes per second),
    /// starting now.
    fn start(
        verb: &'static str,
        out: &'a mut dyn Write,
        total: Option<u64>,
        limit: Option<u64>,
    ) -> Progress<'a> {
        let now = Instant::now();
        Progress {
            verb,
            out,
            t0: now,
            last: now,
            total,
            done: 0,
            limit,
        }
    }

    fn line(&mut self) {
        let secs = self.t0.elapsed().as_secs_f64().max(1e-6);
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let of = match self.total {
            Some(t) if t > 0 => format!(
                " of {:.1} MiB ({:.0}%)",
                mib(t),
                self.done as f64 * 100.0 / t as f64
            ),
            Some(_) => " of 0.0 MiB (100%)".to_string(),
            None => String::new(),
        };
        let _ = writeln!(
            self.out,
            "tessera {}: {:.1} MiB{of}, {:.1} MiB/s",
            self.verb,
            mib(self.done),
            mib(self.done) / secs
        );
    }

    fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if let Some(limit) = self.limit.filter(|l| *l > 0) {
            let due = Duration::from_secs_f64(self.done as f64 / limit as f64);
            let spent = self.t0.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.line();
        }
    }
}

/// `tessera send`.
pub struct SendOptions {
    pub rpc_socket: PathBuf,
    /// The source target's NBD server, `HOST:PORT`.
    pub nbd: String,
    /// The base snapshot; `None` for a full send.
    pub from: Option<String>,
    /// The snapshot to send.
    pub snapshot: String,
    /// Bytes per second, at most.
    pub limit: Option<u64>,
    /// Skip the runs before this byte offset (a multiple of the block size).
    pub resume_from: u64,
    /// NBD connections reading the snapshot at once (at least 1).
    pub connections: usize,
}

/// What a send wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendSummary {
    pub records: u64,
    pub bytes: u64,
}

/// The snapshot `snapshot` to send and the base snapshot `from` (of its pool), if any.
fn snapshots_to_send(
    all: &[Lvol],
    snapshot: &str,
    from: Option<&str>,
) -> Result<(Lvol, Option<Lvol>)> {
    let target = find(all, snapshot)
        .ok_or_else(|| ReplicateError::Refused(format!("snapshot `{snapshot}` does not exist")))?
        .clone();
    if !target.is_snapshot {
        return Err(ReplicateError::Refused(format!(
            "`{snapshot}` is not a snapshot (send takes snapshots: take one with bdev_lvol_snapshot)"
        )));
    }
    let base = match from {
        None => None,
        Some(f) => {
            let b = find(all, f).ok_or_else(|| {
                ReplicateError::Refused(format!("--from: snapshot `{f}` does not exist"))
            })?;
            if !b.is_snapshot || b.pool_uuid != target.pool_uuid {
                return Err(ReplicateError::Refused(format!(
                    "--from: `{f}` is not a snapshot of the pool of `{snapshot}`"
                )));
            }
            Some(b.clone())
        }
    };
    Ok((target, base))
}

/// The runs (in bytes) a send covers, from `from` on.
fn send_runs(
    rpc: &mut Rpc,
    base: Option<&Lvol>,
    target: &Lvol,
    from: u64,
) -> Result<Vec<(u64, u64)>> {
    let bs = u64::from(target.block_size);
    let mut runs = Vec::new();
    let mut offset_blocks = from / bs;
    loop {
        let (method, params) = match base {
            Some(b) => (
                "tessera_lvol_get_changed_ranges",
                json!({"base": b.uuid.to_string(), "target": target.uuid.to_string(),
                       "offset_blocks": offset_blocks, "max_ranges": PAGE_RANGES}),
            ),
            None => (
                "tessera_lvol_get_allocated_ranges",
                json!({"name": target.uuid.to_string(), "offset_blocks": offset_blocks,
                       "max_ranges": PAGE_RANGES}),
            ),
        };
        let v = rpc.call(method, params)?;
        let bad = || ReplicateError::BadAnswer {
            method,
            answer: v.to_string().chars().take(200).collect(),
        };
        for r in v["ranges"].as_array().ok_or_else(bad)? {
            if base.is_none() && r["state"] != "data" {
                continue;
            }
            let off = r["offset_blocks"].as_u64().ok_or_else(bad)? * bs;
            let len = r["num_blocks"].as_u64().ok_or_else(bad)? * bs;
            // A run that starts before `from` (the page's first) is cut there.
            let (off, len) = if off < from {
                (from, (off + len).saturating_sub(from))
            } else {
                (off, len)
            };
            if len > 0 {
                runs.push((off, len));
            }
        }
        match v["next_offset_blocks"].as_u64() {
            Some(n) if n > offset_blocks => offset_blocks = n,
            Some(_) => return Err(bad()),
            None => return Ok(runs),
        }
    }
}

/// Writes the stream of `opts` to `out`, progress lines to `progress`.
pub fn send(opts: &SendOptions, out: impl Write, progress: &mut dyn Write) -> Result<SendSummary> {
    let mut rpc = Rpc::connect(&opts.rpc_socket)?;
    let all = lvols(&mut rpc)?;
    let (target, base) = snapshots_to_send(&all, &opts.snapshot, opts.from.as_deref())?;
    for n in [Some(&target.name), base.as_ref().map(|b| &b.name)]
        .into_iter()
        .flatten()
    {
        if n.len() > stream::MAX_NAME_BYTES {
            return Err(ReplicateError::Refused(format!(
                "snapshot name `{n}` is longer than the stream's {} bytes",
                stream::MAX_NAME_BYTES
            )));
        }
    }
    let bs = u64::from(target.block_size);
    if !opts.resume_from.is_multiple_of(bs) || opts.resume_from > target.size {
        return Err(ReplicateError::Refused(format!(
            "--resume-from: {} is not a multiple of the block size {bs} within the snapshot's {} bytes",
            opts.resume_from, target.size
        )));
    }
    // The disk the snapshot is of: the lvol created as a disk (not a snapshot, not a
    // clone) whose ancestors include it.
    let descends = |l: &Lvol| {
        let mut p = l.parent.clone();
        let mut hops = 0;
        while let Some(name) = p {
            if name == target.name {
                return true;
            }
            hops += 1;
            if hops > all.len() {
                return false;
            }
            p = in_pool(&all, l.pool_uuid, &name).and_then(|x| x.parent.clone());
        }
        false
    };
    let disk_uuid = all
        .iter()
        .find(|l| l.pool_uuid == target.pool_uuid && l.is_disk && descends(l))
        .map_or(Uuid::nil(), |l| l.uuid);
    let runs = send_runs(&mut rpc, base.as_ref(), &target, opts.resume_from)?;
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let header = Header {
        pool_uuid: target.pool_uuid,
        disk_uuid,
        base: base.as_ref().map(|b| (b.uuid, b.name.clone())),
        target_uuid: target.uuid,
        target_name: target.name.clone(),
        block_size: target.block_size,
        size: target.size,
        start: opts.resume_from,
    };
    let export = TempExport::start(&mut rpc, &target, true, "send")?;
    let conns = opts.connections.max(1);
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let nbd = NbdClient::connect(&opts.nbd, &export.name)?;
        if nbd.size() != target.size {
            return Err(ReplicateError::Refused(format!(
                "the NBD export of `{}` is {} bytes, the RPC says {}",
                target.name,
                nbd.size(),
                target.size
            )));
        }
        clients.push(nbd);
    }
    let io = |cause| ReplicateError::Io {
        what: "writing the stream",
        cause,
    };
    let mut enc =
        Encoder::new(std::io::BufWriter::with_capacity(1 << 20, out), &header).map_err(io)?;
    let mut p = Progress::start("send", progress, Some(total), opts.limit);
    // The stream's records in order; connection `c` reads records c, c + conns, ...
    // with a window of requests in flight, and the writer takes them from the
    // connections in turn, so the stream keeps its order (which `--resume-from` relies
    // on) while the reads overlap.
    let records: Vec<(u64, usize)> = runs
        .iter()
        .flat_map(|&(off, len)| {
            (off..off + len)
                .step_by(RECORD_BYTES as usize)
                .map(move |at| (at, RECORD_BYTES.min(off + len - at) as usize))
        })
        .collect();
    let free = std::sync::Mutex::new(Vec::<Vec<u8>>::new());
    std::thread::scope(|sc| -> Result<()> {
        let mut readers = Vec::with_capacity(conns);
        for (c, mut nbd) in clients.into_iter().enumerate() {
            type Read = std::result::Result<(u64, Vec<u8>), NbdClientError>;
            let (tx, rx) = std::sync::mpsc::sync_channel::<Read>(SEND_READ_AHEAD);
            let mine: Vec<(u64, usize)> = records.iter().copied().skip(c).step_by(conns).collect();
            let free = &free;
            sc.spawn(move || {
                match nbd.read_records(&mine, SEND_WINDOW, free, |off, buf| {
                    tx.send(Ok((off, buf))).is_ok()
                }) {
                    Ok(()) => nbd.disconnect(),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
            readers.push(rx);
        }
        for (i, &(want, len)) in records.iter().enumerate() {
            let (off, buf) = match readers[i % conns].recv() {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(ReplicateError::Refused(format!(
                        "NBD connection {} of the send ended before the record at byte {want}",
                        i % conns
                    )));
                }
            };
            if off != want || buf.len() != len {
                return Err(ReplicateError::Refused(format!(
                    "NBD connection {} read {} bytes at {off} where the record is {len} bytes at {want}",
                    i % conns,
                    buf.len()
                )));
            }
            enc.data(off, &buf).map_err(io)?;
            p.add(len as u64);
            if let Ok(mut f) = free.lock() {
                f.push(buf);
            }
        }
        Ok(())
    })?;
    let (_, records, bytes) = enc.finish().map_err(io)?;
    p.line();
    drop(export);
    Ok(SendSummary { records, bytes })
}

/// `tessera receive`.
pub struct ReceiveOptions {
    pub rpc_socket: PathBuf,
    /// The destination target's NBD server, `HOST:PORT`.
    pub nbd: String,
    /// The disk to apply the stream to.
    pub disk: String,
}

/// What a receive did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// The records were written and the snapshot taken.
    Applied { records: u64, bytes: u64 },
    /// The disk's latest snapshot already was the stream's target: nothing done.
    AlreadyReceived,
}

/// Applies the stream read from `input` to the disk of `opts`.
pub fn receive(
    opts: &ReceiveOptions,
    input: impl Read,
    progress: &mut dyn Write,
) -> Result<ReceiveOutcome> {
    let mut dec = Decoder::new(std::io::BufReader::with_capacity(1 << 20, input))?;
    let h = dec.header().clone();
    let mut rpc = Rpc::connect(&opts.rpc_socket)?;
    let all = lvols(&mut rpc)?;
    let disk = find(&all, &opts.disk)
        .ok_or_else(|| ReplicateError::Refused(format!("disk `{}` does not exist", opts.disk)))?
        .clone();
    if disk.is_snapshot {
        return Err(ReplicateError::Refused(format!(
            "`{}` is a snapshot: receive into a disk",
            opts.disk
        )));
    }
    if disk.block_size != h.block_size || disk.size != h.size {
        return Err(ReplicateError::Refused(format!(
            "disk `{}` has {} bytes of {}-byte blocks, the stream's snapshot `{}` {} bytes of {}-byte blocks (create or resize the disk to match)",
            opts.disk, disk.size, disk.block_size, h.target_name, h.size, h.block_size
        )));
    }
    let latest = disk
        .parent
        .as_deref()
        .and_then(|p| in_pool(&all, disk.pool_uuid, p))
        .filter(|p| p.is_snapshot);
    // Snapshots are matched by UUID: a received snapshot has its source's (as ZFS keeps
    // a snapshot's GUID), so a snapshot that merely carries the base's name is not
    // taken for it.
    if latest.is_some_and(|l| l.uuid == h.target_uuid) {
        return Ok(ReceiveOutcome::AlreadyReceived);
    }
    let base_uuid = h.base.as_ref().map(|(u, _)| *u);
    if latest.map(|l| l.uuid) != base_uuid {
        let want = match &h.base {
            Some((u, n)) => format!("the stream's base is snapshot `{n}` (UUID {u})"),
            None => "the stream is a full send, which needs a disk without snapshots".into(),
        };
        let has = match latest {
            Some(l) => format!("its latest snapshot is `{}` (UUID {})", l.name, l.uuid),
            None => "it has no snapshot".into(),
        };
        return Err(ReplicateError::Refused(format!(
            "disk `{}`: {has}, but {want}: receive the streams in order",
            opts.disk
        )));
    }
    if let Some(b) = bdev_with_uuid(&mut rpc, h.target_uuid)? {
        return Err(ReplicateError::Refused(format!(
            "the stream's snapshot `{}` has UUID {}, which bdev `{b}` of the destination \
             target already has: the received snapshot keeps its source's UUID, so receive \
             into another target than the source's",
            h.target_name, h.target_uuid
        )));
    }
    if let Some(l) = in_pool(&all, disk.pool_uuid, &h.target_name) {
        return Err(ReplicateError::Refused(format!(
            "an lvol named `{}` already exists in the destination pool (UUID {})",
            h.target_name, l.uuid
        )));
    }
    let export = TempExport::start(&mut rpc, &disk, false, "receive")?;
    let mut nbd = NbdClient::connect(&opts.nbd, &export.name)?;
    let mut p = Progress::start("receive", progress, None, None);
    let mut applied_to = h.start;
    let interrupted = |e: ReplicateError, at: u64| {
        ReplicateError::Refused(format!(
            "{e}; the disk is written up to byte {at} of the stream's range and no snapshot \
             was taken: receive the same stream again (or `send --resume-from {at}`)"
        ))
    };
    let (records, bytes) = loop {
        match dec.next_record() {
            Ok(Some(Record::Data { offset, data })) => {
                nbd.write_at(offset, &data)
                    .map_err(|e| interrupted(e.into(), applied_to))?;
                applied_to = offset + data.len() as u64;
                p.add(data.len() as u64);
            }
            Ok(Some(Record::End { records, bytes })) => {
                // Nothing may follow the end record.
                if let Err(e) = dec.next_record() {
                    return Err(interrupted(e.into(), applied_to));
                }
                break (records, bytes);
            }
            Ok(None) => {
                let e = StreamError::Truncated {
                    at: dec.position(),
                    field: "end record",
                };
                return Err(interrupted(e.into(), applied_to));
            }
            Err(e) => return Err(interrupted(e.into(), applied_to)),
        }
    };
    nbd.flush().map_err(|e| interrupted(e.into(), applied_to))?;
    nbd.disconnect();
    drop(export);
    p.line();
    rpc.call(
        "bdev_lvol_snapshot",
        json!({"lvol_name": disk.uuid.to_string(), "snapshot_name": h.target_name,
               "uuid": h.target_uuid.to_string()}),
    )?;
    Ok(ReceiveOutcome::Applied { records, bytes })
}
