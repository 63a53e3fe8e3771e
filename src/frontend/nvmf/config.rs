//! The `nvmf:` section of the YAML configuration, and the TCP transport options
//! (`nvmf_create_transport`'s parameters, with SPDK's names and defaults).
//!
//! ```yaml
//! nvmf:
//!   transport: {max_queue_depth: 128, in_capsule_data_size: 4096, io_unit_size: 131072}
//!   subsystems:
//!     - nqn: nqn.2016-06.io.tessera:vd0
//!       serial_number: TESSERA0001
//!       allow_any_host: true
//!       listeners: [{address: 127.0.0.1, port: 4420}]
//!       namespaces: [{bdev: vd0, nsid: 1}]
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Options of the TCP transport.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TransportOptions {
    /// Most commands outstanding per I/O queue pair (CAP.MQES + 1).
    pub max_queue_depth: u32,
    /// Most I/O queue pairs per controller.
    pub max_io_qpairs_per_ctrlr: u32,
    /// Most data a command capsule may carry on an I/O queue, in bytes.
    pub in_capsule_data_size: u32,
    /// Most data one command may transfer, in bytes (MDTS).
    pub max_io_size: u32,
    /// Most data per H2CData PDU (MAXH2CDATA), in bytes.
    pub io_unit_size: u32,
    /// Most commands outstanding on an admin queue.
    pub max_aq_depth: u32,
    /// End a successful read with a SUCCESS C2HData PDU instead of a response capsule:
    /// always when the host disabled SQ flow control; otherwise (as SPDK's target does,
    /// whatever the host asked) while the host's last-seen SQ head is less than a quarter
    /// of the queue behind. `false` sends a response capsule after every read.
    pub c2h_success: bool,
    /// Most TCP connections (queue pairs, admin and I/O) open at once on one listen
    /// address (tessera's): the next one is closed at once, before its ICReq.
    pub max_connections_per_listener: u32,
    /// Most TCP connections open at once from one source IP address, across every
    /// listener (tessera's): the next one is closed at once, before its ICReq.
    pub max_connections_per_host: u32,
    /// How long a client of a secure-channel (or concatenation) listener has to finish
    /// its TLS handshake, in milliseconds (tessera's): past it the connection is closed
    /// and the refusal logged with how many bytes the client had sent.
    pub tls_handshake_timeout_ms: u32,
}

/// The TLS handshake's time limit when not configured.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS: u32 = 10_000;

/// Connections per listener when not configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: u32 = 1024;
/// Connections per source address when not configured.
pub const DEFAULT_MAX_CONNECTIONS_PER_HOST: u32 = 128;

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131072,
            io_unit_size: 131072,
            max_aq_depth: 128,
            c2h_success: true,
            max_connections_per_listener: DEFAULT_MAX_CONNECTIONS_PER_LISTENER,
            max_connections_per_host: DEFAULT_MAX_CONNECTIONS_PER_HOST,
            tls_handshake_timeout_ms: DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

impl TransportOptions {
    /// Checks the options; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=65536).contains(&self.max_queue_depth) {
            return Err(format!(
                "max_queue_depth: {} is not between 2 and 65536",
                self.max_queue_depth
            ));
        }
        if !(32..=4096).contains(&self.max_aq_depth) {
            return Err(format!(
                "max_aq_depth: {} is not between 32 and 4096",
                self.max_aq_depth
            ));
        }
        if !(1..=65534).contains(&self.max_io_qpairs_per_ctrlr) {
            return Err(format!(
                "max_io_qpairs_per_ctrlr: {} is not between 1 and 65534",
                self.max_io_qpairs_per_ctrlr
            ));
        }
        if !self.in_capsule_data_size.is_multiple_of(16) || self.in_capsule_data_size > 1 << 20 {
            return Err(format!(
                "in_capsule_data_size: {} is not a multiple of 16 up to 1 MiB",
                self.in_capsule_data_size
            ));
        }
        if !self.max_io_size.is_power_of_two() || !(4096..=1 << 30).contains(&self.max_io_size) {
            return Err(format!(
                "max_io_size: {} is not a power of two between 4 KiB and 1 GiB",
                self.max_io_size
            ));
        }
        if self.io_unit_size < crate::nvme::pdu::MIN_MAXH2CDATA
            || !self.io_unit_size.is_multiple_of(4)
        {
            return Err(format!(
                "io_unit_size: {} is below 4096 or not a multiple of 4",
                self.io_unit_size
            ));
        }
        for (name, v) in [
            (
                "max_connections_per_listener",
                self.max_connections_per_listener,
            ),
            ("max_connections_per_host", self.max_connections_per_host),
        ] {
            if !(1..=1 << 20).contains(&v) {
                return Err(format!("{name}: {v} is not between 1 and 1048576"));
            }
        }
        if !(100..=600_000).contains(&self.tls_handshake_timeout_ms) {
            return Err(format!(
                "tls_handshake_timeout_ms: {} is not between 100 and 600000",
                self.tls_handshake_timeout_ms
            ));
        }
        Ok(())
    }
}

/// A listener of a subsystem.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// IPv4 or IPv6 address.
    pub address: String,
    /// TCP port (4420 is NVMe/TCP's).
    pub port: u16,
    /// TLS 1.3 with a PSK before ICReq on every connection (SPDK's `secure_channel`);
    /// only hosts with a `psk` are admitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_channel: bool,
    /// Secure channel concatenation (tessera's): a host with a `dhchap_key` may
    /// authenticate over plain TCP asking for a generated TLS PSK (SC_C NEWTLSPSK) and
    /// reconnect with TLS keyed by it. With `secure_channel` it is required: plain TCP
    /// serves nothing but that authentication; without, plain TCP is served as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_concat: bool,
    /// Most TCP connections open at once on this listener (tessera's; a connection
    /// counts against this and the transport's `max_connections_per_listener`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Most TCP connections open at once on this listener from one source IP address
    /// (tessera's; on top of the transport's `max_connections_per_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_host: Option<u32>,
}

impl ListenerConfig {
    /// The listener's own connection limits.
    pub fn limits(&self) -> ListenerLimits {
        ListenerLimits {
            max_connections: self.max_connections,
            max_connections_per_host: self.max_connections_per_host,
        }
    }
}

/// A listener's own connection limits (tessera's): a connection counts against these
/// and the transport's `max_connections_per_listener` / `max_connections_per_host`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerLimits {
    /// Most TCP connections open at once on this listener.
    pub max_connections: Option<u32>,
    /// Most TCP connections open at once on this listener from one source IP address.
    pub max_connections_per_host: Option<u32>,
}

impl ListenerLimits {
    /// Checks the limits: the field in error and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (name, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_host", self.max_connections_per_host),
        ] {
            if let Some(v) = v
                && !(1..=1 << 20).contains(&v)
            {
                return Err((name, format!("{v} is not between 1 and 1048576")));
            }
        }
        Ok(())
    }

    /// Checks the limits; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|(f, why)| format!("{f}: {why}"))
    }

    /// True when neither limit is set.
    pub fn is_empty(&self) -> bool {
        *self == ListenerLimits::default()
    }
}

/// A namespace of a subsystem.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// The bdev behind the namespace.
    pub bdev: String,
    /// Namespace ID (the lowest free one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<u32>,
    /// UUID reported for the namespace (the bdev's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<Uuid>,
}

fn default_model() -> String {
    DEFAULT_MODEL_NUMBER.to_string()
}

fn default_serial() -> String {
    DEFAULT_SERIAL_NUMBER.to_string()
}

fn default_max_namespaces() -> u32 {
    DEFAULT_MAX_NAMESPACES
}

/// Model number when none is given.
pub const DEFAULT_MODEL_NUMBER: &str = "tessera Controller";
/// Serial number when none is given (SPDK's default).
pub const DEFAULT_SERIAL_NUMBER: &str = "00000000000000000000";
/// Namespace limit when none is given.
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;

/// A subsystem.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    pub nqn: String,
    #[serde(default = "default_serial")]
    pub serial_number: String,
    #[serde(default = "default_model")]
    pub model_number: String,
    #[serde(default)]
    pub allow_any_host: bool,
    /// Host NQNs allowed to connect (with `allow_any_host: false`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Hosts (of `hosts`) that must authenticate with DH-HMAC-CHAP: host NQN → the
    /// names of their keys in the keyring (`keys:`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dhchap: std::collections::BTreeMap<String, HostKeysConfig>,
    /// Hosts (of `hosts`) that may connect through a secure-channel listener: host NQN →
    /// the name of their TLS PSK in the keyring (`keys:`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub psk: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_max_namespaces")]
    pub max_namespaces: u32,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
}

/// A host's DH-HMAC-CHAP keys, by name (SPDK's `dhchap_key`, `dhchap_ctrlr_key`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostKeysConfig {
    pub dhchap_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhchap_ctrlr_key: Option<String>,
}

/// The whole `nvmf:` section.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NvmfConfig {
    #[serde(default)]
    pub transport: TransportOptions,
    #[serde(default)]
    pub subsystems: Vec<SubsystemConfig>,
}

impl NvmfConfig {
    /// Checks what can be checked without the bdevs: options, NQNs, duplicates.
    pub fn validate(&self) -> Result<(), String> {
        self.transport
            .validate()
            .map_err(|e| format!("transport.{e}"))?;
        let mut nqns = std::collections::HashSet::new();
        for (i, s) in self.subsystems.iter().enumerate() {
            crate::frontend::nvmf::subsystem::check_nqn(&s.nqn)
                .map_err(|e| format!("subsystems[{i}].nqn: {e}"))?;
            if let Some(h) = s.psk.keys().find(|h| !s.hosts.contains(h)) {
                return Err(format!(
                    "subsystems[{i}].psk: `{h}` has a PSK but is not in hosts"
                ));
            }
            if s.allow_any_host && s.listeners.iter().any(|l| l.secure_channel) {
                return Err(format!(
                    "subsystems[{i}]: a secure_channel listener cannot serve a subsystem with allow_any_host (SPDK refuses it too)"
                ));
            }
            if let Some(h) = s.dhchap.keys().find(|h| !s.hosts.contains(h)) {
                return Err(format!(
                    "subsystems[{i}].dhchap: `{h}` has keys but is not in hosts"
                ));
            }
            if !nqns.insert(&s.nqn) {
                return Err(format!("subsystems[{i}].nqn: `{}` is used twice", s.nqn));
            }
            let mut nsids = std::collections::HashSet::new();
            for (j, ns) in s.namespaces.iter().enumerate() {
                if let Some(n) = ns.nsid
                    && (n == 0 || n > s.max_namespaces || !nsids.insert(n))
                {
                    return Err(format!(
                        "subsystems[{i}].namespaces[{j}].nsid: {n} is 0, above max_namespaces {} or used twice",
                        s.max_namespaces
                    ));
                }
            }
            for (j, h) in s.hosts.iter().enumerate() {
                crate::frontend::nvmf::subsystem::check_nqn(h)
                    .map_err(|e| format!("subsystems[{i}].hosts[{j}]: {e}"))?;
            }
            for (j, l) in s.listeners.iter().enumerate() {
                if l.address.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!(
                        "subsystems[{i}].listeners[{j}].address: `{}` is not an IP address",
                        l.address
                    ));
                }
                l.limits()
                    .validate()
                    .map_err(|e| format!("subsystems[{i}].listeners[{j}].{e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_fields() {
        let c: NvmfConfig = serde_yaml_ng::from_str(
            "transport: {in_capsule_data_size: 8192}\nsubsystems:\n  - nqn: nqn.2016-06.io.tessera:a\n    allow_any_host: true\n    listeners: [{address: 127.0.0.1, port: 4420}]\n    namespaces: [{bdev: M0, nsid: 1}]\n",
        )
        .unwrap();
        assert_eq!(c.transport.in_capsule_data_size, 8192);
        assert_eq!(c.transport.max_queue_depth, 128);
        assert_eq!(c.subsystems[0].namespaces[0].nsid, Some(1));
        assert_eq!(c.subsystems[0].model_number, DEFAULT_MODEL_NUMBER);
        c.validate().unwrap();
        let e = serde_yaml_ng::from_str::<NvmfConfig>("subsystems:\n  - {nqn: x, colour: red}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let bad = NvmfConfig {
            subsystems: vec![SubsystemConfig {
                nqn: "bad".into(),
                serial_number: default_serial(),
                model_number: default_model(),
                allow_any_host: true,
                hosts: vec![],
                dhchap: Default::default(),
                psk: Default::default(),
                max_namespaces: 32,
                listeners: vec![],
                namespaces: vec![],
            }],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("subsystems[0].nqn"));
        assert_eq!(c.transport.max_connections_per_listener, 1024);
        assert_eq!(c.transport.max_connections_per_host, 128);
        let zero: NvmfConfig =
            serde_yaml_ng::from_str("transport: {max_connections_per_host: 0}\n").unwrap();
        let e = zero.validate().unwrap_err();
        assert!(
            e.starts_with("transport.max_connections_per_host: 0 is not between"),
            "{e}"
        );
    }

    #[test]
    fn listener_limits_parse_and_are_checked_with_the_field_named() {
        let yaml = |limits: &str| {
            format!(
                "subsystems:\n  - nqn: nqn.2016-06.io.tessera:a\n    allow_any_host: true\n    listeners: [{{address: 127.0.0.1, port: 4420{limits}}}]\n"
            )
        };
        let c: NvmfConfig =
            serde_yaml_ng::from_str(&yaml(", max_connections: 8, max_connections_per_host: 2"))
                .unwrap();
        c.validate().unwrap();
        let l = &c.subsystems[0].listeners[0];
        assert_eq!(
            l.limits(),
            ListenerLimits {
                max_connections: Some(8),
                max_connections_per_host: Some(2)
            }
        );
        // Written back as read; absent ones stay absent.
        let again: NvmfConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let plain: NvmfConfig = serde_yaml_ng::from_str(&yaml("")).unwrap();
        assert!(plain.subsystems[0].listeners[0].limits().is_empty());
        let listener = serde_yaml_ng::to_string(&plain.subsystems[0].listeners[0]).unwrap();
        assert!(!listener.contains("max_connections"), "{listener}");
        let c: NvmfConfig =
            serde_yaml_ng::from_str(&yaml(", max_connections_per_host: 0")).unwrap();
        assert_eq!(
            c.validate().unwrap_err(),
            "subsystems[0].listeners[0].max_connections_per_host: 0 is not between 1 and 1048576"
        );
        let e = serde_yaml_ng::from_str::<NvmfConfig>(&yaml(", max_conns: 3")).unwrap_err();
        assert!(e.to_string().contains("max_conns"), "{e}");
    }
}
