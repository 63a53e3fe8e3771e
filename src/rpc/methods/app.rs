//! The application methods: version, method list, reactors, and the configuration
//! (`framework_get_subsystems` and `framework_get_config` are what SPDK's client-side
//! `save_config` calls; `save_config` and `load_config` also exist server-side here).

use super::{Ctx, METHODS, NoParams, RpcResult, call_boxed};
use crate::config::spdk_json;
use crate::rpc::error::RpcError;
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::rc::Rc;

pub async fn spdk_get_version(_ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split(['.', '-']);
    let mut num = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let (major, minor, patch) = (num(), num(), num());
    Ok(json!({
        "version": crate::version(),
        "fields": {
            "major": major,
            "minor": minor,
            "patch": patch,
            "suffix": "",
            "commit": env!("TESSERA_GIT_REV"),
        }
    }))
}

/// `rpc_get_methods`: every method is callable at any time (there is no startup state).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetMethodsParams {
    #[serde(default)]
    pub current: bool,
    #[serde(default)]
    pub include_aliases: bool,
}

pub async fn rpc_get_methods(_ctx: Rc<Ctx>, _p: GetMethodsParams) -> RpcResult {
    let mut m: Vec<&str> = METHODS.to_vec();
    m.sort_unstable();
    Ok(json!(m))
}

/// `framework_get_reactors`. `busy` and `idle` count poll-loop iterations (SPDK counts
/// TSC ticks); `in_interrupt` is true when idle reactors park (adaptive idle policy).
pub async fn framework_get_reactors(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    let adaptive = ctx.target.config().idle == crate::reactor::IdlePolicy::Adaptive;
    let reactors: Vec<Value> = ctx
        .target
        .cores()
        .stats()
        .into_iter()
        .map(|s| {
            json!({
                "lcore": s.lcore,
                "core": s.core,
                "busy": s.busy,
                "idle": s.idle,
                "in_interrupt": adaptive,
                "irq_count": 0,
                "sys_stat": 0,
                "usr_stat": 0,
                "lw_threads": [{
                    "name": format!("reactor_{}", s.core),
                    "id": s.core + 1,
                    "cpumask": format!("{:x}", 1u128 << (s.lcore.min(127))),
                    "elapsed": s.busy + s.idle,
                }],
            })
        })
        .collect();
    Ok(json!({
        "tick_rate": 1_000_000_000u64,
        "pid": std::process::id(),
        "reactors": reactors,
    }))
}

pub async fn framework_get_subsystems(_ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    Ok(Value::Array(
        spdk_json::SUBSYSTEMS
            .iter()
            .map(|(name, deps)| json!({"subsystem": name, "depends_on": deps}))
            .collect(),
    ))
}

/// `framework_get_config`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetConfigParams {
    pub name: String,
    /// Accepted; tessera never batches its configuration.
    #[serde(default)]
    pub with_batches: bool,
}

pub async fn framework_get_config(ctx: Rc<Ctx>, p: GetConfigParams) -> RpcResult {
    let cfg = ctx.target.running_config().await?;
    spdk_json::subsystem_config(&cfg, &p.name)
        .map(Value::Array)
        .ok_or_else(|| {
            RpcError::invalid_params(format!(
                "\"name\": subsystem \"{}\" does not exist (bdev, nvmf, nbd)",
                p.name
            ))
        })
}

/// `save_config`: the whole running configuration in SPDK's JSON format (what
/// `spdk_rpc save_config` assembles from `framework_get_config`).
pub async fn save_config(ctx: Rc<Ctx>, _p: NoParams) -> RpcResult {
    let cfg = ctx.target.running_config().await?;
    Ok(spdk_json::document(&cfg))
}

/// `load_config`: an SPDK JSON configuration, replayed method by method through the
/// same handlers. Tuning methods of SPDK's own subsystems (`*_set_options`, …) are
/// skipped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadConfigParams {
    pub subsystems: Vec<Value>,
    /// tessera's part of the document (cores, idle policy): fixed at start, ignored here.
    #[serde(default)]
    pub tessera: Option<Value>,
}

pub async fn load_config(ctx: Rc<Ctx>, p: LoadConfigParams) -> RpcResult {
    let doc = json!({"subsystems": p.subsystems});
    let entries = spdk_json::entries(&doc).map_err(RpcError::invalid_params)?;
    let mut done = 0;
    for e in entries {
        if spdk_json::is_ignored(&e.method) {
            continue;
        }
        call_boxed(ctx.clone(), e.method.clone(), e.params)
            .await
            .map_err(|err| {
                RpcError::new(
                    err.code,
                    format!("{} ({}): {}", e.location, e.method, err.message),
                )
            })?;
        done += 1;
    }
    Ok(json!({"methods_called": done}))
}

/// `tessera_save_config`: the running configuration as tessera's YAML, returned, or
/// written to `path` (atomically: a temporary file renamed over it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveYamlParams {
    #[serde(default)]
    pub path: Option<PathBuf>,
}

pub async fn tessera_save_config(ctx: Rc<Ctx>, p: SaveYamlParams) -> RpcResult {
    let yaml = ctx.target.running_config().await?.to_yaml();
    let Some(path) = p.path else {
        return Ok(Value::String(yaml));
    };
    let tmp = path.with_extension("tmp-save");
    std::fs::write(&tmp, yaml.as_bytes())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            RpcError::errno(
                e.raw_os_error().unwrap_or(libc::EIO),
                format!("\"path\": cannot write {}: {e}", path.display()),
            )
        })?;
    Ok(json!({"path": path}))
}
