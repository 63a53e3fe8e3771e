//! I/O statistics and latency histograms with SPDK's names (`lib/bdev/bdev_rpc.c`):
//! `bdev_get_iostat`, `bdev_reset_iostat`, `bdev_enable_histogram`,
//! `bdev_get_histogram`. The counting is [`crate::bdev::stats`]'s; these gather it from
//! every core (by message, within [`STATS_TIMEOUT`]) and answer in SPDK's shape.

use super::{Ctx, RpcResult};
use crate::bdev::stats::{self, HistogramOpts, IoStat, Query, ResetMode, StatsError};
use crate::bdev::{Bdev, IoKind};
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// How long the cores have to answer a statistics request.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

impl From<StatsError> for RpcError {
    fn from(e: StatsError) -> RpcError {
        match e {
            StatsError::Timeout { .. } => RpcError::errno(libc::ETIMEDOUT, e.to_string()),
            StatsError::Stopped => RpcError::errno(libc::ESHUTDOWN, e.to_string()),
        }
    }
}

fn einval(msg: impl Into<String>) -> RpcError {
    RpcError::errno(libc::EINVAL, msg)
}

/// SPDK's `reset_mode`/`mode` values.
fn reset_mode(field: &str, v: Option<&str>, default: ResetMode) -> Result<ResetMode, RpcError> {
    match v {
        None => Ok(default),
        Some(s) => ResetMode::parse(s).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "\"{field}\": \"{s}\" is not one of all, maxmin, error, none"
            ))
        }),
    }
}

/// The bdevs `names` designate (name, alias, UUID or unambiguous lvol name).
fn bdevs_named(ctx: &Ctx, names: &[String]) -> Result<Vec<Arc<dyn Bdev>>, RpcError> {
    names
        .iter()
        .map(|n| Ok(ctx.target.bdevs().get(n)?))
        .collect()
}

/// Every core's statistics of `bdevs` (or of every bdev), forgetting those of deleted
/// bdevs.
async fn gather(
    ctx: &Ctx,
    bdevs: Option<&[Arc<dyn Bdev>]>,
    reset: ResetMode,
) -> Result<Vec<stats::CoreSnapshot>, RpcError> {
    let live: HashSet<u64> = ctx.target.bdevs().list().iter().map(|b| b.id()).collect();
    let q = Query {
        bdevs: bdevs.map(|l| l.iter().map(|b| b.id()).collect()),
        live: Some(live),
        reset,
        with_histograms: false,
    };
    Ok(stats::collect(ctx.target.cores(), q, STATS_TIMEOUT).await?)
}

/// `bdev_get_iostat`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetIostatParams {
    /// One bdev (SPDK's older parameter, still sent by its older clients).
    #[serde(default)]
    pub name: Option<String>,
    /// Bdevs (SPDK's newer parameter, `spdk-rpc bdev_get_iostat --names a,b`).
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// Per core, for one bdev.
    #[serde(default)]
    pub per_channel: Option<bool>,
    /// What to reset once read: `all`, `maxmin`, `error`, `none` (default).
    #[serde(default)]
    pub reset_mode: Option<String>,
}

pub async fn bdev_get_iostat(ctx: Rc<Ctx>, p: GetIostatParams) -> RpcResult {
    let reset = reset_mode("reset_mode", p.reset_mode.as_deref(), ResetMode::None)?;
    let names = match (p.name, p.names) {
        (Some(_), Some(_)) => return Err(einval("give \"name\" or \"names\", not both")),
        (Some(n), None) => Some(vec![n]),
        (None, names) => names,
    };
    let per_channel = p.per_channel.unwrap_or(false);
    if per_channel && names.as_ref().is_none_or(|n| n.len() != 1) {
        return Err(einval(
            "\"per_channel\" needs exactly one bdev in \"name\" or \"names\"",
        ));
    }
    let bdevs = match &names {
        Some(n) => bdevs_named(&ctx, n)?,
        None => ctx.target.bdevs().list(),
    };
    let snaps = gather(&ctx, names.is_some().then_some(&bdevs[..]), reset).await?;
    let head = |mut v: Value| {
        v["tick_rate"] = json!(crate::reactor::tick_rate());
        v["ticks"] = json!(crate::reactor::ticks());
        v
    };
    if per_channel {
        let b = &bdevs[0];
        let channels: Vec<Value> = snaps
            .iter()
            .filter(|s| s.bdev == b.id())
            .map(|s| {
                let mut v = s.stat.to_json();
                v["thread_id"] = json!(s.core + 1);
                v
            })
            .collect();
        return Ok(head(json!({"name": b.name(), "channels": channels})));
    }
    let mut sums: BTreeMap<u64, IoStat> = BTreeMap::new();
    for s in &snaps {
        sums.entry(s.bdev).or_default().add(&s.stat);
    }
    let list: Vec<Value> = bdevs
        .iter()
        .map(|b| {
            let mut v = sums.remove(&b.id()).unwrap_or_default().to_json();
            v["name"] = json!(b.name());
            v
        })
        .collect();
    Ok(head(json!({"bdevs": list})))
}

/// `bdev_reset_iostat`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetIostatParams {
    /// One bdev; every bdev without it.
    #[serde(default)]
    pub name: Option<String>,
    /// `all` (default), `maxmin`, `error` or `none`.
    #[serde(default)]
    pub mode: Option<String>,
}

pub async fn bdev_reset_iostat(ctx: Rc<Ctx>, p: ResetIostatParams) -> RpcResult {
    let mode = reset_mode("mode", p.mode.as_deref(), ResetMode::All)?;
    let bdevs = match &p.name {
        Some(n) => Some(bdevs_named(&ctx, std::slice::from_ref(n))?),
        None => None,
    };
    if mode != ResetMode::None {
        gather(&ctx, bdevs.as_deref(), mode).await?;
    }
    Ok(Value::Bool(true))
}

/// `bdev_enable_histogram`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnableHistogramParams {
    pub name: String,
    pub enable: bool,
    /// Only this I/O type (SPDK's names: `read`, `write`, `unmap`, `flush`,
    /// `write_zeroes`); every type without it.
    #[serde(default)]
    pub opc: Option<String>,
    /// Buckets per power-of-two range: `2^granularity` (default 7, at most 16).
    #[serde(default)]
    pub granularity: Option<u32>,
    /// Latencies below (default 1000 ns) count in the first bucket.
    #[serde(default)]
    pub min_nsec: Option<u64>,
    /// Latencies from (default 120 s) count in the last bucket.
    #[serde(default)]
    pub max_nsec: Option<u64>,
}

/// SPDK's I/O type names (`spdk_bdev_get_io_type`) that tessera never issues.
const SPDK_ONLY_IO_TYPES: &[&str] = &[
    "reset",
    "nvme_admin",
    "nvme_io",
    "nvme_io_md",
    "zcopy",
    "get_zone_info",
    "zone_management",
    "zone_append",
    "compare",
    "compare_and_write",
    "abort",
    "seek_hole",
    "seek_data",
    "copy",
    "nvme_iov_md",
];

fn io_type(opc: &str) -> Result<IoKind, RpcError> {
    Ok(match opc {
        "read" => IoKind::Read,
        "write" => IoKind::Write,
        "unmap" => IoKind::Unmap,
        "flush" => IoKind::Flush,
        "write_zeroes" => IoKind::WriteZeroes,
        other if SPDK_ONLY_IO_TYPES.contains(&other) => {
            return Err(RpcError::internal(format!(
                "Invalid Io type: \"opc\": tessera's bdevs never serve \"{other}\" \
                 (read, write, unmap, flush, write_zeroes)"
            )));
        }
        other => {
            return Err(RpcError::internal(format!(
                "Invalid Io type: \"opc\": \"{other}\" is not an I/O type \
                 (read, write, unmap, flush, write_zeroes)"
            )));
        }
    })
}

pub async fn bdev_enable_histogram(ctx: Rc<Ctx>, p: EnableHistogramParams) -> RpcResult {
    let b = ctx.target.bdevs().get(&p.name)?;
    let opts = if p.enable {
        let d = HistogramOpts::default();
        let o = HistogramOpts {
            granularity: p.granularity.unwrap_or(d.granularity),
            min_nsec: p.min_nsec.unwrap_or(d.min_nsec),
            max_nsec: p.max_nsec.unwrap_or(d.max_nsec),
            opc: p.opc.as_deref().map(io_type).transpose()?,
        };
        if o.granularity > stats::MAX_GRANULARITY {
            // -ENOMEM, SPDK's code for a histogram it cannot allocate: SPDK does not
            // bound the granularity but sizes the histogram from it
            // (`spdk_histogram_data_alloc_sized_ext`), and the allocation fails. SPDK
            // v25.09 (`spdk_tgt`, here) answers the enable `true` all the same and
            // -ENOMEM at the next `bdev_get_histogram` (granularity 30 and 40; 17 is
            // allocated); tessera refuses at once, with SPDK's code.
            return Err(RpcError::errno(
                libc::ENOMEM,
                format!(
                    "\"granularity\": {} is above {}: no histogram of 2^{} buckets per \
                     range",
                    o.granularity,
                    stats::MAX_GRANULARITY,
                    o.granularity
                ),
            ));
        }
        if o.min_nsec >= o.max_nsec {
            return Err(einval(format!(
                "\"min_nsec\" ({}) must be below \"max_nsec\" ({})",
                o.min_nsec, o.max_nsec
            )));
        }
        Some(o)
    } else {
        None
    };
    stats::set_histogram(ctx.target.cores(), b.id(), opts, STATS_TIMEOUT).await?;
    Ok(Value::Bool(true))
}

/// `bdev_get_histogram`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetHistogramParams {
    pub name: String,
}

pub async fn bdev_get_histogram(ctx: Rc<Ctx>, p: GetHistogramParams) -> RpcResult {
    let b = ctx.target.bdevs().get(&p.name)?;
    let Some(h) = stats::histogram(ctx.target.cores(), b.id(), STATS_TIMEOUT).await? else {
        // SPDK answers -ENOMEM here (it cannot size a histogram it never had).
        return Err(RpcError::errno(
            libc::ENOMEM,
            format!(
                "bdev \"{}\" never had a histogram: bdev_enable_histogram first",
                p.name
            ),
        ));
    };
    Ok(json!({
        "histogram": h.encode(),
        "granularity": h.granularity,
        "min_range": h.min_range,
        "max_range": h.max_range,
        "tsc_rate": crate::reactor::tick_rate(),
    }))
}
