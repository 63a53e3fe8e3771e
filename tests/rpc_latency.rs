//! An RPC round trip that does no I/O answers within 1 ms at the median, with the
//! reactors in adaptive idle mode (parked in epoll_wait between requests: the socket's
//! readiness wakes them).

mod rpc_common;

use rpc_common::*;
use serde_json::json;
use std::time::{Duration, Instant};

fn p50_us(
    client: &mut tessera::rpc::RpcClient,
    method: &str,
    params: Option<serde_json::Value>,
) -> f64 {
    for _ in 0..20 {
        client.call(method, params.clone()).unwrap().unwrap();
    }
    let mut t: Vec<Duration> = (0..500)
        .map(|_| {
            let t0 = Instant::now();
            client.call(method, params.clone()).unwrap().unwrap();
            t0.elapsed()
        })
        .collect();
    t.sort();
    let p50 = t[t.len() / 2].as_secs_f64() * 1e6;
    let p99 = t[t.len() * 99 / 100].as_secs_f64() * 1e6;
    eprintln!(
        "{method}: p50 {p50:.0} us, p99 {p99:.0} us over {} calls",
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
    // Let the reactors go idle (park) first.
    std::thread::sleep(Duration::from_millis(200));
    let a = p50_us(&mut c, "spdk_get_version", None);
    let b = p50_us(&mut c, "bdev_get_bdevs", None);
    let n = c.call("bdev_get_bdevs", None).unwrap().unwrap();
    assert_eq!(n.as_array().unwrap().len(), 4);
    let d = p50_us(&mut c, "bdev_get_bdevs", Some(json!({"name": "pool0/vd0"})));
    for (what, us) in [
        ("spdk_get_version", a),
        ("bdev_get_bdevs", b),
        ("bdev_get_bdevs vd0", d),
    ] {
        assert!(us <= 1000.0, "{what}: p50 {us:.0} us is above 1 ms");
    }
    srv.stop();
}
