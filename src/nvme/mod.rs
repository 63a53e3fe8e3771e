//! NVMe and NVMe/TCP as data: the codecs the target (`frontend/nvmf/`) and the initiator
//! (`bdev/nvme/`) share. Pure and total — no I/O, no state, nothing from the rest of the
//! crate — and fuzzed (`fuzz/fuzz_targets/nvmf_*.rs`).
//!
//! - [`spec`]: submission and completion queue entries, status codes, the decoder of the
//!   commands the target serves (fabrics, admin, NVM I/O) and the encoders of those the
//!   initiator sends.
//! - [`pages`]: Identify data and log pages.
//! - [`pdu`]: the NVMe/TCP PDUs (headers, digests, limits).
//! - [`auth`]: in-band authentication messages (AUTH_Send/AUTH_Receive data).
//! - [`dhchap`]: DH-HMAC-CHAP's key format, key transformation, responses and
//!   finite-field Diffie-Hellman.
//! - [`key_format`]: the interchange shape both key kinds share
//!   (`PREFIX:hh:<base64(key || crc32)>:`), parsed and formatted once.
//! - [`tls`]: NVMe/TCP TLS keys: the PSK interchange format, retained and TLS PSK
//!   derivation, PSK identities.

pub mod auth;
pub mod dhchap;
mod ffdhe;
pub mod key_format;
pub mod pages;
pub mod pdu;
pub mod spec;
pub mod tls;
