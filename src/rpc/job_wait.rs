//! `tessera rpc --wait`: follows the background job a call started (or, for a call that
//! itself waits for one, the job it waits for) until it ends, with a progress bar on a
//! terminal (percentage, rate, time left) and a plain line a second otherwise.
//!
//! - Copies: `bdev_lvol_start_shallow_copy` and `tessera_lvol_start_diff_copy` answer
//!   an `operation_id`; `bdev_lvol_check_shallow_copy` is polled until its state is
//!   "complete" or "error".
//! - Splits: `tessera_split_start` starts one and answers at once;
//!   `bdev_lvol_inflate` and `bdev_lvol_decouple_parent` answer when theirs ends.
//!   `tessera_split_progress` of the lvol is polled (on a second connection while a
//!   waiting call runs) until the lvol has no job; a split that ended with the lvol
//!   still a clone was cancelled or failed.
//!
//! Nothing waits forever: a job whose progress does not move for the stall limit (the
//! call's `--timeout`) ends the wait with an error naming the job and where it stood.

use super::client::{ClientError, RpcClient};
use super::error::RpcError;
use serde_json::{Value, json};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a job's progress is asked.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed (not on a terminal).
const LINE_EVERY: Duration = Duration::from_secs(1);

/// Why waiting for a job failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("--wait: {method} starts no job to wait for (it takes {})", WAITABLE.join(", "))]
    NotAJob { method: String },
    #[error("{method}: {cause}")]
    Transport {
        method: &'static str,
        cause: ClientError,
    },
    #[error("{method}: {} (code {})", .error.message, .error.code)]
    Failed { method: String, error: RpcError },
    #[error("{method}: unexpected answer {answer}")]
    BadAnswer {
        method: &'static str,
        answer: String,
    },
    #[error("{job}: no progress in {stalled:?} (at {done} of {total} bytes)")]
    Stalled {
        job: String,
        stalled: Duration,
        done: u64,
        total: u64,
    },
    #[error("{job} failed: {error}")]
    JobFailed { job: String, error: String },
    #[error("{job}: interrupted (a signal)")]
    Interrupted { job: String },
    #[error("{job} ended without completing (cancelled, or failed: the target's log says why)")]
    Unfinished { job: String },
}

/// The methods `--wait` follows.
pub const WAITABLE: &[&str] = &[
    "bdev_lvol_start_shallow_copy",
    "tessera_lvol_start_diff_copy",
    "tessera_split_start",
    "bdev_lvol_inflate",
    "bdev_lvol_decouple_parent",
];

/// Where a job stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    done: u64,
    total: u64,
}

/// Shows a job's progress: a bar on a terminal, lines otherwise.
struct Display<'a> {
    job: String,
    bar: Option<indicatif::ProgressBar>,
    out: &'a mut dyn Write,
    t0: Instant,
    last_line: Option<Instant>,
}

impl<'a> Display<'a> {
    fn new(job: String, terminal: bool, out: &'a mut dyn Write) -> Display<'a> {
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:32}] {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(job.clone());
            b
        });
        Display {
            job,
            bar,
            out,
            t0: Instant::now(),
            last_line: None,
        }
    }

    fn show(&mut self, p: Progress) {
        if p.total == 0 {
            // Nothing known yet (a job not started) or nothing to do.
            return;
        }
        if let Some(b) = &self.bar {
            b.set_length(p.total);
            b.set_position(p.done);
            return;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < LINE_EVERY) {
            return;
        }
        self.last_line = Some(Instant::now());
        let secs = self.t0.elapsed().as_secs_f64();
        // The job's average since the call (it started then).
        let rate = if secs > 0.0 {
            p.done as f64 / secs
        } else {
            0.0
        };
        let mib = |b: f64| b / f64::from(1 << 20);
        let percent = if p.total == 0 {
            100.0
        } else {
            p.done as f64 * 100.0 / p.total as f64
        };
        let left = if rate > 0.0 {
            format!(
                ", {:.0} s left",
                p.total.saturating_sub(p.done) as f64 / rate
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            "{}: {percent:.1}% ({:.1} of {:.1} MiB), {:.1} MiB/s{left}",
            self.job,
            mib(p.done as f64),
            mib(p.total as f64),
            mib(rate)
        );
    }

    fn finish(&mut self, p: Option<Progress>, outcome: &str) {
        if let Some(b) = self.bar.take() {
            if let Some(p) = p {
                b.set_length(p.total);
                b.set_position(p.done);
            }
            b.finish_and_clear();
        }
        let _ = writeln!(
            self.out,
            "{}: {outcome} in {:.1} s",
            self.job,
            self.t0.elapsed().as_secs_f64()
        );
    }
}

fn call(client: &mut RpcClient, method: &'static str, params: Value) -> Result<Value, WaitError> {
    match client.call(method, Some(params)) {
        Err(cause) => Err(WaitError::Transport { method, cause }),
        Ok(Err(error)) => Err(WaitError::Failed {
            method: method.to_string(),
            error,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

fn bad(method: &'static str, v: &Value) -> WaitError {
    WaitError::BadAnswer {
        method,
        answer: v.to_string().chars().take(200).collect(),
    }
}

/// What a poll of a job found.
enum Step {
    /// Running, here.
    Going(Progress),
    /// Ended, here.
    Ended(Progress),
    /// Gone (ended since the last poll).
    Gone,
}

/// Polls `poll` until the job ended, failing if its progress does not move for
/// `stall`. Returns the last progress seen.
fn follow(
    display: &mut Display<'_>,
    stall: Duration,
    mut poll: impl FnMut() -> Result<Step, WaitError>,
) -> Result<Option<Progress>, WaitError> {
    let mut last: Option<Progress> = None;
    let mut moved = Instant::now();
    loop {
        let p = match poll()? {
            Step::Gone => return Ok(last),
            Step::Ended(p) => {
                display.show(p);
                return Ok(Some(p));
            }
            Step::Going(p) => p,
        };
        if last != Some(p) {
            moved = Instant::now();
            last = Some(p);
        }
        display.show(p);
        if moved.elapsed() > stall {
            return Err(WaitError::Stalled {
                job: display.job.clone(),
                stalled: stall,
                done: p.done,
                total: p.total,
            });
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Calls `method` with `params` on the target at `socket` and follows the job it
/// starts (or waits for) to its end, showing progress on `out` (a bar when `terminal`).
/// Returns the call's answer; a job that failed, was cancelled or stalled for `stall`
/// is an error.
pub fn call_and_wait(
    socket: &Path,
    timeout: Duration,
    method: &str,
    params: Option<Value>,
    terminal: bool,
    out: &mut dyn Write,
) -> Result<Value, WaitError> {
    let Some(&method) = WAITABLE.iter().find(|m| **m == method) else {
        return Err(WaitError::NotAJob {
            method: method.to_string(),
        });
    };
    let connect = |timeout| {
        RpcClient::connect(socket, timeout).map_err(|cause| WaitError::Transport { method, cause })
    };
    let params = params.unwrap_or_else(|| json!({}));
    match method {
        "bdev_lvol_start_shallow_copy" | "tessera_lvol_start_diff_copy" => {
            let mut client = connect(timeout)?;
            let answer = call(&mut client, method, params)?;
            let id = answer["operation_id"]
                .as_u64()
                .ok_or_else(|| bad(method, &answer))?;
            follow_copy(&mut client, id, timeout, terminal, out)?;
            Ok(answer)
        }
        _ => {
            let name = params["name"]
                .as_str()
                .ok_or_else(|| WaitError::Failed {
                    method: method.to_string(),
                    error: RpcError::invalid_params("missing field `name`"),
                })?
                .to_string();
            let decouple = method == "bdev_lvol_decouple_parent" || params["decouple"] == true;
            let job = format!("{} of {name}", if decouple { "decouple" } else { "split" });
            // A call that answers when its job ends runs on a thread of its own (with no
            // time limit of its own: the stall limit bounds the wait); the progress is
            // asked on a second connection.
            let waiting = (method != "tessera_split_start").then(|| {
                let (socket, params) = (socket.to_path_buf(), params.clone());
                std::thread::spawn(move || -> Result<Value, WaitError> {
                    let mut c = RpcClient::connect(&socket, Duration::from_secs(365 * 86_400))
                        .map_err(|cause| WaitError::Transport { method, cause })?;
                    call(&mut c, method, params)
                })
            });
            let mut client = connect(timeout)?;
            let answer = match &waiting {
                None => Some(call(&mut client, method, params.clone())?),
                Some(_) => None,
            };
            let mut display = Display::new(job.clone(), terminal, out);
            const PROGRESS: &str = "tessera_split_progress";
            let mut started = waiting.is_none();
            let mut cluster: Option<u64> = None;
            let t0 = Instant::now();
            let last = follow(&mut display, timeout, || {
                let v = call(&mut client, PROGRESS, json!({"name": name}))?;
                let list = v.as_array().ok_or_else(|| bad(PROGRESS, &v))?;
                let Some(j) = list.first() else {
                    // Before a waiting call's job shows up, the lvol has none yet.
                    let call_ended = waiting.as_ref().is_none_or(|w| w.is_finished());
                    if started || call_ended || t0.elapsed() > timeout {
                        return Ok(Step::Gone);
                    }
                    return Ok(Step::Going(Progress { done: 0, total: 0 }));
                };
                started = true;
                let cb = match cluster {
                    Some(c) => c,
                    None => *cluster.insert(cluster_bytes(&mut client, j)?),
                };
                let bytes = |k: &str| -> Result<u64, WaitError> {
                    let clusters = j[k].as_u64().ok_or_else(|| bad(PROGRESS, &v))?;
                    Ok(clusters.saturating_mul(cb))
                };
                Ok(Step::Going(Progress {
                    done: bytes("done_clusters")?,
                    total: bytes("total_clusters")?,
                }))
            })?;
            let answer = match waiting {
                Some(w) => w
                    .join()
                    .unwrap_or_else(|_| Err(WaitError::Unfinished { job: job.clone() }))?,
                None => answer.unwrap_or(Value::Null),
            };
            if !decouple {
                const LVOLS: &str = "bdev_lvol_get_lvols";
                let v = call(&mut client, LVOLS, json!({}))?;
                let still_clone = v.as_array().ok_or_else(|| bad(LVOLS, &v))?.iter().any(|l| {
                    l["is_clone"] == true
                        && (l["uuid"] == name.as_str()
                            || l["name"] == name.as_str()
                            || format!(
                                "{}/{}",
                                l["lvs"]["name"].as_str().unwrap_or_default(),
                                l["name"].as_str().unwrap_or_default()
                            ) == name)
                });
                if still_clone {
                    return Err(WaitError::Unfinished { job });
                }
            }
            display.finish(last, "complete");
            Ok(answer)
        }
    }
}

/// Follows copy `id` (of `bdev_lvol_start_shallow_copy` or
/// `tessera_lvol_start_diff_copy`) to its end, showing progress on `out` (a bar when
/// `terminal`); its last `bdev_lvol_check_shallow_copy` answer once complete. A copy
/// that failed, or whose progress did not move for `stall`, is an error.
pub fn follow_copy(
    client: &mut RpcClient,
    id: u64,
    stall: Duration,
    terminal: bool,
    out: &mut dyn Write,
) -> Result<Value, WaitError> {
    follow_copy_until(client, id, stall, terminal, out, &AtomicBool::new(false))
}

/// [`follow_copy`], ending with [`WaitError::Interrupted`] once `interrupted` is set
/// (by a signal handler), the copy left running.
pub fn follow_copy_until(
    client: &mut RpcClient,
    id: u64,
    stall: Duration,
    terminal: bool,
    out: &mut dyn Write,
    interrupted: &AtomicBool,
) -> Result<Value, WaitError> {
    let mut display = Display::new(format!("copy {id}"), terminal, out);
    let mut state = Value::Null;
    const CHECK: &str = "bdev_lvol_check_shallow_copy";
    let job = display.job.clone();
    let last = follow(&mut display, stall, || {
        if interrupted.load(Ordering::Relaxed) {
            return Err(WaitError::Interrupted { job: job.clone() });
        }
        state = call(client, CHECK, json!({"operation_id": id}))?;
        let (Some(done), Some(total)) = (
            state["copied_bytes"].as_u64(),
            state["total_bytes"].as_u64(),
        ) else {
            return Err(bad(CHECK, &state));
        };
        let p = Progress { done, total };
        Ok(if state["state"] == "in progress" {
            Step::Going(p)
        } else {
            Step::Ended(p)
        })
    })?;
    match state["state"].as_str() {
        Some("complete") => {
            display.finish(last, "complete");
            Ok(state)
        }
        Some("error") => Err(WaitError::JobFailed {
            job: display.job.clone(),
            error: state["error"].as_str().unwrap_or("unknown").to_string(),
        }),
        _ => Err(bad(CHECK, &state)),
    }
}

/// The cluster size of the lvstore a split progress entry names.
fn cluster_bytes(client: &mut RpcClient, entry: &Value) -> Result<u64, WaitError> {
    const STORES: &str = "bdev_lvol_get_lvstores";
    let v = call(
        client,
        STORES,
        json!({"lvs_name": entry["lvs_name"].as_str().unwrap_or_default()}),
    )?;
    v[0]["cluster_size"].as_u64().ok_or_else(|| bad(STORES, &v))
}
