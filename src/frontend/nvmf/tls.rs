//! The target's side of NVMe/TCP TLS (a `secure_channel` listener): the server context,
//! and the look-up that admits a host by the PSK identity it offers. A host is admitted
//! only if the identity names a subsystem that listens here with a secure channel, the
//! host is one of its hosts with a `psk`, the key in the keyring parses, its suite is
//! the identity's, and (identity version 1) the PSK digest matches. Each refusal says
//! which of these failed; none carries key material.
//!
//! An identity of a generated PSK (`NVMe1G…`, secure channel concatenation) is admitted
//! when it names a subsystem that listens here with `secure_concat`, a host of it with a
//! `dhchap_key`, and that host's latest concatenation generated a PSK whose digest is
//! the identity's; the TLS PSK comes from that generated PSK. An older or a wrong one is
//! refused.
//!
//! The discovery subsystem answers on every listener, a secure one included: an
//! identity naming the discovery NQN is admitted when its host has a `psk` with a
//! subsystem that listens here with a secure channel (the first such subsystem in NQN
//! order whose key has the identity's suite); that key keys the discovery connection.

use super::target::TargetShared;
use crate::nvme::tls::{ConfiguredPsk, Identity, Suite};
use crate::reactor::tls::{CipherSuite, Psk, TlsError};
use std::net::SocketAddr;

/// The cipher suite of an NVMe/TCP suite.
pub(crate) fn cipher_suite(s: Suite) -> CipherSuite {
    CipherSuite {
        name: s.name(),
        code: s.code(),
    }
}

/// A server context offering both NVMe/TCP suites (SHA-384's first, as SPDK).
pub(crate) fn server_context() -> Result<openssl::ssl::SslContext, TlsError> {
    crate::reactor::tls::server_context(&[
        cipher_suite(Suite::Aes256GcmSha384),
        cipher_suite(Suite::Aes128GcmSha256),
    ])
}

/// The key for `raw_identity` offered on a connection to `local`, or why there is none.
pub(crate) fn lookup(
    target: &TargetShared,
    local: SocketAddr,
    raw_identity: &[u8],
) -> Result<Psk, String> {
    let id = Identity::parse(raw_identity).map_err(|e| e.to_string())?;
    if id.generated {
        return lookup_generated(target, local, &id);
    }
    let listens_here = |sub: &super::subsystem::Subsystem| {
        sub.listeners().into_iter().any(|l| {
            (l.secure_channel || l.secure_concat)
                && l.trsvcid == local.port().to_string()
                && l.traddr
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip == local.ip() || ip.is_unspecified())
        })
    };
    let psk_of = |sub: &super::subsystem::Subsystem| {
        sub.hosts()
            .contains(&id.hostnqn)
            .then(|| sub.host_keys(&id.hostnqn).and_then(|k| k.psk))
            .flatten()
    };
    let name = if id.subnqn == crate::nvme::spec::DISCOVERY_NQN {
        // Discovery: the host's key of a subsystem that listens here securely.
        let all: Vec<String> = target
            .subsystems()
            .into_iter()
            .filter(|s| listens_here(s))
            .filter_map(|s| psk_of(&s))
            .collect();
        let Some(first) = all.first() else {
            return Err(format!(
                "host `{}` has no PSK for a subsystem with a secure-channel listener at {local} (discovery)",
                id.hostnqn
            ));
        };
        let suite_of = |name: &String| {
            let secret = target.keyring.read(name).ok()?;
            Some(ConfiguredPsk::parse(secret.expose()).ok()?.suite())
        };
        all.iter()
            .find(|n| suite_of(n) == Some(id.suite))
            .unwrap_or(first)
            .clone()
    } else {
        let sub = target
            .subsystem(&id.subnqn)
            .ok_or_else(|| format!("PSK identity names unknown subsystem `{}`", id.subnqn))?;
        if !listens_here(&sub) {
            return Err(format!(
                "subsystem `{}` has no secure-channel listener at {local}",
                id.subnqn
            ));
        }
        psk_of(&sub).ok_or_else(|| {
            format!(
                "host `{}` has no PSK for subsystem `{}`",
                id.hostnqn, id.subnqn
            )
        })?
    };
    let secret = target
        .keyring
        .read(&name)
        .map_err(|e| format!("PSK of host `{}`: {e}", id.hostnqn))?;
    let psk = ConfiguredPsk::parse(secret.expose())
        .map_err(|e| format!("key `{name}` of host `{}`: {e}", id.hostnqn))?;
    if psk.suite() != id.suite {
        return Err(format!(
            "PSK identity asks for {} but key `{name}` is for {}",
            id.suite.name(),
            psk.suite().name()
        ));
    }
    let retained = psk.retained(&id.hostnqn);
    if let Some(d) = &id.digest {
        let want = crate::nvme::tls::psk_digest(id.suite, &retained, &id.hostnqn, &id.subnqn);
        if !crate::nvme::dhchap::equal_ct(want.as_bytes(), d.as_bytes()) {
            return Err(format!(
                "PSK digest of the version 1 identity does not match key `{name}`"
            ));
        }
    }
    Ok(Psk {
        key: id.tls_psk(&retained),
        suite: cipher_suite(id.suite),
    })
}

/// Whether `sub` listens at `local` with secure channel concatenation.
fn concat_here(sub: &super::subsystem::Subsystem, local: SocketAddr) -> bool {
    sub.listeners().into_iter().any(|l| {
        l.secure_concat
            && l.trsvcid == local.port().to_string()
            && l.traddr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip == local.ip() || ip.is_unspecified())
    })
}

/// The key of an identity of a generated PSK (`NVMe1G…`), or why there is none. The
/// messages name no key material (nor the digest).
fn lookup_generated(
    target: &TargetShared,
    local: SocketAddr,
    id: &Identity,
) -> Result<Psk, String> {
    let sub = target
        .subsystem(&id.subnqn)
        .ok_or_else(|| format!("PSK identity names unknown subsystem `{}`", id.subnqn))?;
    if !concat_here(&sub, local) {
        return Err(format!(
            "subsystem `{}` has no listener with secure channel concatenation at {local}",
            id.subnqn
        ));
    }
    if !sub.hosts().contains(&id.hostnqn) || !sub.host_auth_required(&id.hostnqn) {
        return Err(format!(
            "host `{}` is not a host of `{}` with a DH-HMAC-CHAP key",
            id.hostnqn, id.subnqn
        ));
    }
    let g = sub.generated_psk(&id.hostnqn).ok_or_else(|| {
        format!(
            "no generated PSK for host `{}` in `{}` (secure channel concatenation: authenticate first)",
            id.hostnqn, id.subnqn
        )
    })?;
    if g.suite() != id.suite {
        return Err(format!(
            "the generated PSK identity asks for {} but the host's generated PSK is for {}",
            id.suite.name(),
            g.suite().name()
        ));
    }
    let offered = id.digest.as_deref().unwrap_or("");
    if !crate::nvme::dhchap::equal_ct(offered.as_bytes(), g.digest().as_bytes()) {
        return Err(format!(
            "the PSK digest of host `{}`'s generated identity is not that of its latest generated PSK (an old or a wrong one)",
            id.hostnqn
        ));
    }
    Ok(Psk {
        key: g.tls_psk(),
        suite: cipher_suite(g.suite()),
    })
}
