//! The NBD server driven by real clients written by others: qemu-img, qemu-io, nbdinfo,
//! nbdcopy, fio's nbd engine, and ext4 over nbdfuse + a loop device.

mod nbd_support;

use nbd_support::*;
use std::process::Command;
use std::time::Duration;
use tessera::frontend::nbd::NbdExport;

const T: Duration = Duration::from_secs(120);

#[test]
fn qemu_io_writes_and_reads_patterns() {
    if !have("qemu-io") {
        return;
    }
    let srv = TestServer::start(vec![NbdExport::new("disk", malloc("M0", 64))]);
    let uri = srv.uri("disk");
    let out = run_ok(
        Command::new("qemu-io").args([
            "-f", "raw",
            "-c", "write -P 0xab 0 64k",
            "-c", "write -P 0xcd 1M 128k",
            "-c", "read -P 0xab 0 64k",
            "-c", "read -P 0xcd 1M 128k",
            "-c", "read -P 0 64k 64k",
            &uri,
        ]),
        T,
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), 3, "{out}");
}
