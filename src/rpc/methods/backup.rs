//! What backup and replication tools ask of a virtual disk (`vdisk::diff`): which
//! blocks hold data (`tessera_lvol_get_allocated_ranges`), and which differ between a
//! snapshot and a later snapshot or the live disk (`tessera_lvol_get_changed_ranges`).
//! Both answer a page of runs at a time, in blocks and in bytes; a page that did not
//! reach the end says where the next one starts (`next_offset_blocks`).

use super::{Ctx, RpcResult};
use crate::rpc::error::RpcError;
use crate::vdisk::diff::{BlockRange, RunsPage};
use serde::Deserialize;
use serde_json::{Value, json};
use std::rc::Rc;

/// Runs a page holds unless told (`max_ranges`).
const DEFAULT_MAX_RANGES: usize = 1024;
/// The most runs a page may hold.
const MAX_RANGES: usize = 65_536;

/// `tessera_lvol_get_changed_ranges`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangedRangesParams {
    /// The older side: a snapshot (or any lvol of the same lvstore).
    pub base: String,
    /// The newer side: a later snapshot, or the live lvol.
    pub target: String,
    #[serde(default)]
    pub offset_blocks: u64,
    #[serde(default)]
    pub max_ranges: Option<usize>,
}

/// `tessera_lvol_get_allocated_ranges`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocatedRangesParams {
    pub name: String,
    #[serde(default)]
    pub offset_blocks: u64,
    #[serde(default)]
    pub max_ranges: Option<usize>,
}

fn max_ranges(n: Option<usize>) -> Result<usize, RpcError> {
    match n.unwrap_or(DEFAULT_MAX_RANGES) {
        n @ 1..=MAX_RANGES => Ok(n),
        n => Err(RpcError::einval(format!(
            "max_ranges: {n} is not between 1 and {MAX_RANGES}"
        ))),
    }
}

fn range_json(r: &BlockRange, block_size: u64) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("offset_blocks".into(), json!(r.offset_blocks));
    m.insert("num_blocks".into(), json!(r.num_blocks));
    m.insert("offset".into(), json!(r.offset_blocks * block_size));
    m.insert("length".into(), json!(r.num_blocks * block_size));
    m
}

fn page_json<T>(
    page: &RunsPage<T>,
    block_size: u64,
    f: impl Fn(&T) -> serde_json::Map<String, Value>,
) -> Value {
    json!({
        "block_size": block_size,
        "ranges": page.runs.iter().map(|r| Value::Object(f(r))).collect::<Vec<_>>(),
        "next_offset_blocks": page.next_offset_blocks,
    })
}

pub async fn tessera_lvol_get_changed_ranges(ctx: Rc<Ctx>, p: ChangedRangesParams) -> RpcResult {
    let max = max_ranges(p.max_ranges)?;
    let (pool, base) = ctx.resolve_lvol(&p.base).await?;
    let (target_pool, target) = ctx.resolve_lvol(&p.target).await?;
    if pool.uuid() != target_pool.uuid() {
        return Err(RpcError::einval(format!(
            "base: \"{}\" is in lvstore \"{}\", target \"{}\" in \"{}\"",
            p.base,
            pool.name(),
            p.target,
            target_pool.name()
        )));
    }
    let bdev = ctx.target.bdevs().get(&p.target)?;
    check_offset(p.offset_blocks, bdev.num_blocks())?;
    let page = pool
        .changed_ranges(&base, &target, p.offset_blocks, max)
        .await?;
    let bs = u64::from(bdev.block_size());
    Ok(page_json(&page, bs, |r| range_json(r, bs)))
}

pub async fn tessera_lvol_get_allocated_ranges(
    ctx: Rc<Ctx>,
    p: AllocatedRangesParams,
) -> RpcResult {
    let max = max_ranges(p.max_ranges)?;
    let (pool, disk) = ctx.resolve_lvol(&p.name).await?;
    let bdev = ctx.target.bdevs().get(&p.name)?;
    check_offset(p.offset_blocks, bdev.num_blocks())?;
    let page = pool.allocated_ranges(&disk, p.offset_blocks, max).await?;
    let bs = u64::from(bdev.block_size());
    Ok(page_json(&page, bs, |(r, kind)| {
        let mut m = range_json(r, bs);
        m.insert("state".into(), json!(kind));
        m
    }))
}

fn check_offset(offset: u64, num_blocks: u64) -> Result<(), RpcError> {
    if offset > num_blocks {
        return Err(RpcError::einval(format!(
            "offset_blocks: {offset} is past the lvol's {num_blocks} blocks"
        )));
    }
    Ok(())
}
