//! An RPC round trip that does no I/O answers within 1 ms at the median, with the
//! reactors in adaptive idle mode (parked in epoll_wait between requests: the socket's
//! readiness wakes them).

mod process_support;
mod rpc_common;

use rpc_common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// p50 of `calls` round trips; with `gap`, the client pauses that long before each call
/// (long enough for an adaptive reactor to stop spinning and park).
fn p50_us(
    client: &mut tessera::rpc::RpcClient,
    method: &str,
    params: Option<serde_json::Value>,
    calls: usize,
    gap: Option<Duration>,
) -> f64 {
    for _ in 0..20 {
        client.call(method, params.clone()).unwrap().unwrap();
    }
    let mut t: Vec<Duration> = (0..calls)
        .map(|_| {
            if let Some(g) = gap {
                std::thread::sleep(g);
            }
            let t0 = Instant::now();
            client.call(method, params.clone()).unwrap().unwrap();
            t0.elapsed()
        })
        .collect();
    t.sort();
    let p50 = t[t.len() / 2].as_secs_f64() * 1e6;
    let p99 = t[t.len() * 99 / 100].as_secs_f64() * 1e6;
    eprintln!(
        "{method}{}: p50 {p50:.0} us, p99 {p99:.0} us over {} calls",
        if gap.is_some() {
            " (reactor parked)"
        } else {
            ""
        },
        t.len()
    );
    p50
}

#[test]
fn round_trip_p50_is_below_a_millisecond() {
    let srv = Serve::start_yaml(
        "cores: [0, 1]\nidle: adaptive\nbdevs:\n  - {type: malloc, name: Malloc0, size: 64MiB}\n  - {type: null, name: Null0, size: 1GiB}\n  - {type: null, name: Null1, size: 1GiB}\npools:\n  - {name: pool0, bdevs: [Malloc0]}\ndisks:\n  - {name: vd0, pool: pool0, size: 32MiB}\n",
    );
    let mut c = srv.client();
    let n = c.call("bdev_get_bdevs", None).unwrap().unwrap();
    assert_eq!(n.as_array().unwrap().len(), 4);
    // Back to back (the reactor spins between calls), then with a pause before each
    // call so that it parks in epoll_wait and the request's readiness must wake it.
    let park = Some(Duration::from_millis(2));
    let measured = [
        (
            "spdk_get_version",
            p50_us(&mut c, "spdk_get_version", None, 500, None),
        ),
        (
            "bdev_get_bdevs",
            p50_us(&mut c, "bdev_get_bdevs", None, 500, None),
        ),
        (
            "bdev_get_bdevs vd0",
            p50_us(
                &mut c,
                "bdev_get_bdevs",
                Some(json!({"name": "pool0/vd0"})),
                500,
                None,
            ),
        ),
        (
            "spdk_get_version, parked",
            p50_us(&mut c, "spdk_get_version", None, 250, park),
        ),
        (
            "bdev_get_bdevs, parked",
            p50_us(&mut c, "bdev_get_bdevs", None, 250, park),
        ),
    ];
    let reactors = c.call("framework_get_reactors", None).unwrap().unwrap();
    assert_eq!(reactors["reactors"][0]["in_interrupt"], true);
    for (what, us) in measured {
        assert!(us <= 1000.0, "{what}: p50 {us:.0} us is above 1 ms");
    }
    srv.stop();
}
