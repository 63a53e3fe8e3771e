//! Fuzzes the NVMe command decoders: SQEs on the admin and I/O queues, Connect data,
//! Dataset Management ranges, and the Identify / log page decoders the initiator uses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::bdev::IoStatus;
use tessera::nvme::pages;
use tessera::nvme::spec::{self, ConnectData, Cqe, QueueKind, Sqe};

fuzz_target!(|data: &[u8]| {
    if data.len() >= 64 {
        let mut b = [0u8; 64];
        b.copy_from_slice(&data[..64]);
        let sqe = Sqe(b);
        let _ = spec::decode_command(&sqe, QueueKind::Admin);
        let _ = spec::decode_command(&sqe, QueueKind::Io);
        let _ = sqe.data_direction();
        let _ = sqe.sgl();
    }
    if data.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[..16]);
        let c = Cqe::decode(&b);
        assert_eq!(Cqe::decode(&c.encode()), c);
        let _ = IoStatus::from_nvme(c.status());
    }
    if let Ok(d) = ConnectData::decode(data) {
        assert_eq!(ConnectData::decode(&d.encode()), Ok(d));
    }
    let _ = spec::decode_dsm_ranges(data).count();
    let _ = pages::IdentifyController::decode(data);
    let _ = pages::IdentifyNamespace::decode(data).map(|n| n.block_size());
    let _ = pages::decode_ns_list(data);
    let _ = pages::decode_ns_descriptors(data);
    let _ = pages::decode_discovery_log(data);
    let _ = pages::SmartLog::decode(data);
});
