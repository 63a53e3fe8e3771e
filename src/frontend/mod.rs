//! Front ends: the protocols hosts use to reach bdevs. Every connection (NBD) or queue
//! pair (NVMe/TCP) belongs to one reactor; its I/O path takes no lock.

mod conn_limits;
pub mod nbd;
pub mod nvmf;
