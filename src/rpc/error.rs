//! JSON-RPC error objects, and the one place where every error of the engine is given
//! its JSON-RPC code (as Mayastor's `jsonrpc.rs` does).
//!
//! Codes follow SPDK: the JSON-RPC 2.0 codes for protocol-level failures (-32700 parse
//! error, -32600 invalid request, -32601 method not found, -32602 invalid params,
//! -32603 internal error) and a negative errno for an operation that failed (`-ENODEV`
//! for something that does not exist, `-EEXIST` for a duplicate name, `-EBUSY` for a
//! bdev in use, `-ENOSPC` for a full pool, `-EINVAL` for a request that makes no sense).

use crate::bdev::BdevError;
use crate::bdev::nvme::HostError;
use crate::config::spdk_json::params::ParamError;
use crate::frontend::nbd::NbdError;
use crate::frontend::nvmf::NvmfError;
use crate::target::TargetError;
use crate::vdisk::VdiskError;

/// Invalid JSON was received.
pub const PARSE_ERROR: i32 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i32 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i32 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i32 = -32602;
/// Internal JSON-RPC error.
pub const INTERNAL_ERROR: i32 = -32603;

/// A JSON-RPC error object: a code and a message naming what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

/// SPDK's message for -ENODEV (`strerror(ENODEV)`).
pub const NO_SUCH_DEVICE: &str = "No such device";

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    /// -32700.
    pub fn parse(message: impl Into<String>) -> RpcError {
        RpcError::new(PARSE_ERROR, message)
    }

    /// -32600.
    pub fn invalid_request(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_REQUEST, message)
    }

    /// -32601, naming the method.
    pub fn method_not_found(method: &str) -> RpcError {
        RpcError::new(METHOD_NOT_FOUND, format!("method \"{method}\" not found"))
    }

    /// -32602.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// -32603.
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }

    /// `-errno` with a message. A -ENODEV message starts with SPDK's text for it, "No
    /// such device" (SPDK answers its `strerror` and nothing more), then says what.
    pub fn errno(errno: i32, message: impl Into<String>) -> RpcError {
        let message = message.into();
        if errno == libc::ENODEV && !message.starts_with(NO_SUCH_DEVICE) {
            return RpcError::new(-errno, format!("{NO_SUCH_DEVICE}: {message}"));
        }
        RpcError::new(-errno, message)
    }

    /// -ENODEV: `what` does not exist.
    pub fn no_such(what: impl std::fmt::Display) -> RpcError {
        RpcError::errno(libc::ENODEV, format!("{what} does not exist"))
    }

    /// -EINVAL.
    pub fn einval(message: impl Into<String>) -> RpcError {
        RpcError::errno(libc::EINVAL, message)
    }

    /// The error as the JSON object of a response.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code, "message": self.message})
    }
}

fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl From<BdevError> for RpcError {
    fn from(e: BdevError) -> RpcError {
        match e {
            BdevError::NotFound(name) => RpcError::no_such(format!("bdev \"{name}\"")),
            BdevError::Exists(name) => {
                RpcError::errno(libc::EEXIST, format!("bdev \"{name}\" already exists"))
            }
            BdevError::InvalidParam { .. } => RpcError::einval(e.to_string()),
            BdevError::Io { ref cause, .. } => RpcError::errno(io_errno(cause), e.to_string()),
            BdevError::Claimed { .. } => RpcError::errno(libc::EBUSY, e.to_string()),
            BdevError::Channel { .. } => RpcError::errno(libc::EIO, e.to_string()),
            // No bdev has this name (SPDK resolves no bare lvol names at all): -ENODEV,
            // with the candidates.
            BdevError::Ambiguous { .. } => RpcError::errno(libc::ENODEV, e.to_string()),
        }
    }
}

impl From<VdiskError> for RpcError {
    fn from(e: VdiskError) -> RpcError {
        let msg = e.to_string();
        match e {
            VdiskError::Bdev(b) => b.into(),
            VdiskError::NotFound(name) => RpcError::no_such(format!("lvol \"{name}\"")),
            VdiskError::Exists(what) => {
                RpcError::errno(libc::EEXIST, format!("{what} already exists"))
            }
            VdiskError::HoldsPool { .. } | VdiskError::UuidTaken { .. } => {
                RpcError::errno(libc::EEXIST, msg)
            }
            VdiskError::InvalidParam { .. } => RpcError::einval(msg),
            VdiskError::ReadOnly(_) => RpcError::errno(libc::EPERM, msg),
            VdiskError::NoSpace { .. }
            | VdiskError::NoMetadataSpace { .. }
            | VdiskError::GrowLimit { .. } => RpcError::errno(libc::ENOSPC, msg),
            VdiskError::Busy(_) => RpcError::errno(libc::EBUSY, msg),
            VdiskError::QuiesceTimeout(_) | VdiskError::DrainTimeout(_) => {
                RpcError::errno(libc::ETIMEDOUT, msg)
            }
            VdiskError::Stopped => RpcError::errno(libc::ESHUTDOWN, msg),
            VdiskError::NoPool(_) => RpcError::errno(libc::ENODEV, msg),
            VdiskError::Meta(_) | VdiskError::Io { .. } | VdiskError::PoolFailed(_) => {
                RpcError::errno(libc::EIO, msg)
            }
        }
    }
}

impl From<NvmfError> for RpcError {
    fn from(e: NvmfError) -> RpcError {
        let msg = e.to_string();
        match e {
            NvmfError::Bdev(b) => b.into(),
            NvmfError::NoTransport(_) | NvmfError::NoSubsystem(_) | NvmfError::NoListener(_) => {
                RpcError::errno(libc::ENODEV, msg)
            }
            NvmfError::TransportExists(_) | NvmfError::SubsystemExists(_) => {
                RpcError::errno(libc::EEXIST, msg)
            }
            NvmfError::InvalidParam { .. } => RpcError::invalid_params(msg),
            NvmfError::UnsupportedTransport(_)
            | NvmfError::Namespace { .. }
            | NvmfError::Discovery => RpcError::einval(msg),
            NvmfError::Listen { ref cause, .. } => RpcError::errno(io_errno(cause), msg),
        }
    }
}

impl From<NbdError> for RpcError {
    fn from(e: NbdError) -> RpcError {
        let msg = e.to_string();
        match e {
            NbdError::Bind { ref cause, .. } => RpcError::errno(io_errno(cause), msg),
            NbdError::ExportExists(_) => RpcError::errno(libc::EEXIST, msg),
            NbdError::NoSuchExport(_) => RpcError::errno(libc::ENODEV, msg),
            NbdError::InvalidAddress { .. }
            | NbdError::InvalidExportName { .. }
            | NbdError::Config { .. } => RpcError::einval(msg),
            NbdError::Stopped => RpcError::errno(libc::ESHUTDOWN, msg),
            NbdError::Reactor(_) => RpcError::internal(msg),
            NbdError::Io(ref source) => RpcError::errno(io_errno(source), msg),
        }
    }
}

impl From<HostError> for RpcError {
    fn from(e: HostError) -> RpcError {
        let msg = e.to_string();
        match e {
            HostError::Connect { .. } => RpcError::errno(libc::ECONNREFUSED, msg),
            HostError::ConnectionLost(_) | HostError::Terminated { .. } => {
                RpcError::errno(libc::ECONNRESET, msg)
            }
            HostError::Controller(..) => RpcError::errno(libc::ENODEV, msg),
            HostError::Auth(_) | HostError::Reauth { .. } => RpcError::errno(libc::EACCES, msg),
            HostError::ConnectRejected(_) | HostError::Protocol(_) | HostError::Status(_) => {
                RpcError::errno(libc::EIO, msg)
            }
        }
    }
}

impl From<ParamError> for RpcError {
    fn from(e: ParamError) -> RpcError {
        match e {
            ParamError::Invalid(msg) => RpcError::invalid_params(msg),
            ParamError::Unsupported(msg) => RpcError::einval(msg),
            ParamError::NoSuch(what) => RpcError::no_such(what),
        }
    }
}

/// SPDK's keyring answers `-errno` with `strerror`; ours says which key and why after it.
impl From<crate::keyring::KeyError> for RpcError {
    fn from(e: crate::keyring::KeyError) -> RpcError {
        let errno = e.errno();
        let text = std::io::Error::from_raw_os_error(errno).to_string();
        let text = text.split(" (os error").next().unwrap_or(&text);
        RpcError::errno(errno, format!("{text}: {e}"))
    }
}

impl From<crate::bdev::qos::QosError> for RpcError {
    fn from(e: crate::bdev::qos::QosError) -> RpcError {
        use crate::bdev::qos::QosError;
        match e {
            // SPDK's answer to a change while another is under way (-EAGAIN, through
            // `rpc_bdev_set_qos_limit_complete`).
            QosError::Busy(_) => RpcError::invalid_params(format!(
                "Failed to configure rate limit: Resource temporarily unavailable ({e})"
            )),
            QosError::Timeout { .. } => RpcError::errno(libc::ETIMEDOUT, e.to_string()),
            QosError::Stopped(_) => RpcError::errno(libc::ESHUTDOWN, e.to_string()),
        }
    }
}

impl From<TargetError> for RpcError {
    fn from(e: TargetError) -> RpcError {
        match e {
            TargetError::Nbd(e) => e.into(),
            TargetError::Nvmf(e) => e.into(),
            TargetError::Nvme(e) => e.into(),
            TargetError::Bdev(e) => e.into(),
            TargetError::Vdisk(e) => e.into(),
            TargetError::Reactor(e) => RpcError::internal(format!("reactors: {e}")),
            TargetError::Key(e) => e.into(),
            TargetError::NoSuchPool(name) => RpcError::no_such(format!("lvstore \"{name}\"")),
            TargetError::Invalid(msg) => RpcError::einval(msg),
            TargetError::Refused { errno, msg } => RpcError::errno(errno, msg),
            TargetError::Qos(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_spdk() {
        let e: RpcError = BdevError::NotFound("Malloc9".into()).into();
        assert_eq!(e.code, -libc::ENODEV);
        assert_eq!(e.message, "No such device: bdev \"Malloc9\" does not exist");
        let e: RpcError = TargetError::Bdev(BdevError::Exists("M0".into())).into();
        assert_eq!(e.code, -17);
        let e: RpcError = VdiskError::NoSpace { need: 2, free: 1 }.into();
        assert_eq!(e.code, -28);
        let e: RpcError = TargetError::Vdisk(VdiskError::Bdev(BdevError::Claimed {
            name: "M0".into(),
            by: "pool `p`".into(),
        }))
        .into();
        assert_eq!(e.code, -16);
        assert_eq!(RpcError::method_not_found("x").code, METHOD_NOT_FOUND);
        let e: RpcError = ParamError::invalid("missing parameter \"name\"").into();
        assert_eq!(e.code, INVALID_PARAMS);
        assert_eq!(e.message, "missing parameter \"name\"");
        let e: RpcError = ParamError::unsupported("\"psk\" is not supported by tessera").into();
        assert_eq!(e.code, -libc::EINVAL);
        let e: RpcError = ParamError::NoSuch("NVMe-oF target \"t\"".into()).into();
        assert_eq!(e.code, -libc::ENODEV);
        assert_eq!(
            e.message,
            "No such device: NVMe-oF target \"t\" does not exist"
        );
        // Every -ENODEV answer starts with SPDK's text, once.
        let e: RpcError = VdiskError::NoPool("p9".into()).into();
        assert!(e.message.starts_with("No such device: "), "{}", e.message);
        let e = RpcError::errno(libc::ENODEV, "No such device: x");
        assert_eq!(e.message, "No such device: x");
    }
}
