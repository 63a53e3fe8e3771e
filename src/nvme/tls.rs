//! NVMe/TCP's TLS keys (NVMe/TCP Transport Specification 1.0c §3.6.1, and TP 8018 for
//! identity version 1), as SPDK (`nvme_tcp.h`) and libnvme compute them; shared by the
//! target and the initiator. Pure: the TLS connection itself is in the reactor (`tls`).
//!
//! - The configured PSK in the interchange format `NVMeTLSkey-1:hh:<base64(key ||
//!   crc32(key))>:` ([`ConfiguredPsk`]): `hh` is `01` (SHA-256, a 32-byte key), `02`
//!   (SHA-384, a 48-byte key) or `00` (no hash: the configured PSK is the retained PSK,
//!   32 or 48 bytes).
//! - The retained PSK ([`ConfiguredPsk::retained`]): HKDF with the key's hash, an empty
//!   salt, the configured PSK as input key and HkdfLabel(L, "HostNQN", host NQN) as info
//!   (TLS 1.3's `HKDF-Expand-Label` encoding: a big-endian u16 length, then the label
//!   "tls13 HostNQN" and the context, each behind a length byte).
//! - The cipher suite follows the key's length: 32 bytes TLS_AES_128_GCM_SHA256, 48
//!   bytes TLS_AES_256_GCM_SHA384 ([`Suite`]); its hash is the identity's `hh`.
//! - The PSK identity ([`Identity`]): version 0 `NVMe0R<hh> <hostnqn> <subnqn>`, version 1
//!   `NVMe1R<hh> <hostnqn> <subnqn> <digest>` where the digest is base64(HMAC-H(retained
//!   PSK, hostnqn || " " || subnqn || " NVMe-over-Fabrics")).
//! - The TLS PSK ([`tls_psk`]): HKDF with the suite's hash over the retained PSK, info
//!   HkdfLabel(L, "nvme-tls-psk", context), the context being the whole identity for
//!   version 0 (SPDK, libnvme) and `<hh> <digest>` for version 1 (libnvme).
//! - Secure channel concatenation (NVMe base specification 2.1 §8.3.4.5.9, TP 8018):
//!   after DH-HMAC-CHAP with a DH group, both sides compute the generated PSK
//!   ([`GeneratedPsk`]) = HMAC-H(KS, C1 || C2), H the exchange's hash, KS = H(g^xy mod p)
//!   the session key, C1 the controller's challenge and C2 the host's. It plays the
//!   retained PSK's part: its digest as above, the identity `NVMe1G<hh> <hostnqn>
//!   <subnqn> <digest>` (version 1, `G` for generated) and the TLS PSK with context
//!   `<hh> <digest>`, as the Linux kernel's `nvme_auth_generate_psk`,
//!   `nvme_auth_generate_digest` and `nvme_auth_derive_tls_psk` compute them. Only
//!   SHA-256 and SHA-384 have a TLS suite, so the exchange must use one of them.
//!
//! Nothing here logs; no error carries key material; keys are zeroed when dropped.

use super::auth::HashId;
use super::dhchap::hmac_parts;
use super::key_format::{self, KeyTextError};
use base64::Engine;
use zeroize::Zeroizing;

/// Why an `NVMeTLSkey-1:` key is refused. No variant holds any of the key's material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PskFormatError {
    #[error("not a TLS PSK in the interchange format: it does not start with `NVMeTLSkey-1:`")]
    Prefix,
    #[error("TLS PSK: hash `{0}` is not 00 (none), 01 (SHA-256) or 02 (SHA-384)")]
    Hash(String),
    #[error("TLS PSK: the base64 part does not end with `:`")]
    Terminator,
    #[error("TLS PSK: text follows the closing `:`")]
    Trailing,
    #[error("TLS PSK: the key is not valid base64")]
    Base64,
    #[error(
        "TLS PSK: {decoded} bytes decoded; hash {hash} takes a key of {want} bytes plus its 4-byte CRC-32"
    )]
    Length {
        hash: String,
        decoded: usize,
        want: &'static str,
    },
    #[error("TLS PSK: CRC-32 mismatch (stored {stored:08x}, computed {computed:08x})")]
    Crc { stored: u32, computed: u32 },
}

/// A TLS 1.3 cipher suite NVMe/TCP allows, with its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// TLS_AES_128_GCM_SHA256 (identity hash `01`).
    Aes128GcmSha256,
    /// TLS_AES_256_GCM_SHA384 (identity hash `02`).
    Aes256GcmSha384,
}

impl Suite {
    /// The suite's hash.
    pub fn hash(self) -> HashId {
        match self {
            Suite::Aes128GcmSha256 => HashId::Sha256,
            Suite::Aes256GcmSha384 => HashId::Sha384,
        }
    }

    /// The identity's hash specifier.
    pub fn id(self) -> u8 {
        match self {
            Suite::Aes128GcmSha256 => 1,
            Suite::Aes256GcmSha384 => 2,
        }
    }

    /// The suite of an identity's hash specifier.
    pub fn from_id(id: u8) -> Option<Suite> {
        match id {
            1 => Some(Suite::Aes128GcmSha256),
            2 => Some(Suite::Aes256GcmSha384),
            _ => None,
        }
    }

    /// The TLS 1.3 cipher suite's IANA name (OpenSSL's too).
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes128GcmSha256 => "TLS_AES_128_GCM_SHA256",
            Suite::Aes256GcmSha384 => "TLS_AES_256_GCM_SHA384",
        }
    }

    /// The suite's code point (RFC 8446 B.4).
    pub fn code(self) -> [u8; 2] {
        match self {
            Suite::Aes128GcmSha256 => [0x13, 0x01],
            Suite::Aes256GcmSha384 => [0x13, 0x02],
        }
    }

    /// Key (and hash output) length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes128GcmSha256 => 32,
            Suite::Aes256GcmSha384 => 48,
        }
    }
}

/// A configured PSK (the interchange format decoded).
#[derive(Clone)]
pub struct ConfiguredPsk {
    /// The hash that makes the retained PSK (`None`: `00`, used as it is).
    hash: Option<HashId>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ConfiguredPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConfiguredPsk({} bytes, hash {:?})",
            self.key.len(),
            self.hash
        )
    }
}

impl ConfiguredPsk {
    /// Parses a key file's text: `NVMeTLSkey-1:hh:<base64>:`, optionally followed by
    /// white space (a newline).
    pub fn parse(text: &[u8]) -> Result<ConfiguredPsk, PskFormatError> {
        let (hash, key) = key_format::parse(b"NVMeTLSkey-1:", text, |hh| match hh {
            "00" => Some((None, &[32, 48][..])),
            "01" => Some((Some(HashId::Sha256), &[32][..])),
            "02" => Some((Some(HashId::Sha384), &[48][..])),
            _ => None,
        })
        .map_err(|e| match e {
            KeyTextError::Prefix => PskFormatError::Prefix,
            KeyTextError::Hash(shown) => PskFormatError::Hash(
                shown
                    .iter()
                    .map(|&c| if c.is_ascii_graphic() { c as char } else { '?' })
                    .collect(),
            ),
            KeyTextError::Terminator => PskFormatError::Terminator,
            KeyTextError::Trailing => PskFormatError::Trailing,
            KeyTextError::Base64 => PskFormatError::Base64,
            KeyTextError::Length { hh, decoded } => PskFormatError::Length {
                want: match hh.as_str() {
                    "00" => "32 or 48",
                    "01" => "32",
                    _ => "48",
                },
                hash: hh,
                decoded,
            },
            KeyTextError::Crc { stored, computed } => PskFormatError::Crc { stored, computed },
        })?;
        Ok(ConfiguredPsk { hash, key })
    }

    /// Formats a key in the interchange format (for tests and key generation).
    pub fn format(hash: Option<HashId>, key: &[u8]) -> Zeroizing<String> {
        let hh = match hash {
            None => 0,
            Some(HashId::Sha256) => 1,
            Some(HashId::Sha384) => 2,
            Some(HashId::Sha512) => 3,
        };
        key_format::format("NVMeTLSkey-1:", hh, key)
    }

    /// The cipher suite this key is used with (by its length).
    pub fn suite(&self) -> Suite {
        if self.key.len() == 48 {
            Suite::Aes256GcmSha384
        } else {
            Suite::Aes128GcmSha256
        }
    }

    /// The hash of the retained-PSK derivation (`None`: `00`).
    pub fn hash(&self) -> Option<HashId> {
        self.hash
    }

    /// The retained PSK for `hostnqn`.
    pub fn retained(&self, hostnqn: &str) -> Zeroizing<Vec<u8>> {
        match self.hash {
            None => self.key.clone(),
            Some(h) => hkdf_label(h, &self.key, b"HostNQN", hostnqn.as_bytes(), self.key.len()),
        }
    }
}

/// HKDF-Extract with an empty salt, then HKDF-Expand with TLS 1.3's HkdfLabel(`len`,
/// "tls13 " || `label`, `context`) as info, `out` bytes long (at most one hash block).
fn hkdf_label(
    h: HashId,
    ikm: &[u8],
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Zeroizing<Vec<u8>> {
    // An empty salt is a key of zeros for HMAC (RFC 5869 §2.2).
    let prk = hmac_parts(h, &[], &[ikm]);
    let mut info = Vec::with_capacity(4 + 6 + label.len() + context.len());
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut out = hmac_parts(h, &prk, &[&info, &[1u8]]);
    out.truncate(len);
    out
}

/// Why a PSK identity is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("PSK identity does not start with `NVMe0R`, `NVMe1R` or `NVMe1G`")]
    Prefix,
    #[error("PSK identity: hash `{0}` is not 01 (SHA-256) or 02 (SHA-384)")]
    Hash(String),
    #[error("PSK identity: expected {want} fields separated by spaces, found {found}")]
    Fields { want: usize, found: usize },
    #[error("PSK identity is not UTF-8")]
    Utf8,
}

/// A PSK identity, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// 0 (NVMe/TCP 1.0c) or 1 (TP 8018: with the PSK digest).
    pub version: u8,
    pub suite: Suite,
    pub hostnqn: String,
    pub subnqn: String,
    /// The PSK digest (base64), version 1 only.
    pub digest: Option<String>,
    /// A generated PSK (`NVMe1G…`, secure channel concatenation) rather than a
    /// retained one (`NVMe0R…`/`NVMe1R…`).
    pub generated: bool,
}

impl Identity {
    /// The identity the host presents with `psk` (`version` 0 or 1).
    pub fn new(version: u8, psk: &ConfiguredPsk, hostnqn: &str, subnqn: &str) -> Identity {
        let suite = psk.suite();
        let digest = (version == 1).then(|| {
            let retained = psk.retained(hostnqn);
            psk_digest(suite, &retained, hostnqn, subnqn)
        });
        Identity {
            version,
            suite,
            hostnqn: hostnqn.into(),
            subnqn: subnqn.into(),
            digest,
            generated: false,
        }
    }

    /// Parses an identity as a host sends it.
    pub fn parse(raw: &[u8]) -> Result<Identity, IdentityError> {
        let s = std::str::from_utf8(raw).map_err(|_| IdentityError::Utf8)?;
        let (version, generated) = match s.get(..6) {
            Some("NVMe0R") => (0, false),
            Some("NVMe1R") => (1, false),
            Some("NVMe1G") => (1, true),
            _ => return Err(IdentityError::Prefix),
        };
        let hh = s.get(6..8).ok_or(IdentityError::Hash(String::new()))?;
        let suite = match hh {
            "01" => Suite::Aes128GcmSha256,
            "02" => Suite::Aes256GcmSha384,
            _ => {
                let shown: String = hh.chars().filter(|c| c.is_ascii_graphic()).collect();
                return Err(IdentityError::Hash(shown));
            }
        };
        let rest = s.get(8..).unwrap_or("");
        let fields: Vec<&str> = rest.split(' ').collect();
        let want = if version == 0 { 3 } else { 4 };
        // The first field is empty: the prefix is followed by a space.
        if fields.len() != want || !fields[0].is_empty() || fields[1..].iter().any(|f| f.is_empty())
        {
            return Err(IdentityError::Fields {
                want: want - 1,
                found: fields.iter().filter(|f| !f.is_empty()).count(),
            });
        }
        Ok(Identity {
            version,
            suite,
            hostnqn: fields[1].into(),
            subnqn: fields[2].into(),
            digest: (version == 1).then(|| fields[3].to_string()),
            generated,
        })
    }

    /// The identity's text.
    pub fn encode(&self) -> String {
        match &self.digest {
            Some(d) => format!(
                "NVMe1{}{:02} {} {} {d}",
                if self.generated { 'G' } else { 'R' },
                self.suite.id(),
                self.hostnqn,
                self.subnqn
            ),
            None => format!(
                "NVMe0R{:02} {} {}",
                self.suite.id(),
                self.hostnqn,
                self.subnqn
            ),
        }
    }

    /// The TLS PSK for this identity from the retained PSK.
    pub fn tls_psk(&self, retained: &[u8]) -> Zeroizing<Vec<u8>> {
        let context = match &self.digest {
            None => self.encode(),
            Some(d) => format!("{:02} {d}", self.suite.id()),
        };
        tls_psk(self.suite, retained, context.as_bytes())
    }
}

/// The PSK digest of identity version 1: base64(HMAC-H(retained, hostnqn || " " ||
/// subnqn || " NVMe-over-Fabrics")).
pub fn psk_digest(suite: Suite, retained: &[u8], hostnqn: &str, subnqn: &str) -> String {
    let mac = hmac_parts(
        suite.hash(),
        retained,
        &[
            hostnqn.as_bytes(),
            b" ",
            subnqn.as_bytes(),
            b" NVMe-over-Fabrics",
        ],
    );
    base64::engine::general_purpose::STANDARD.encode(&mac[..])
}

/// The TLS PSK: HKDF with the suite's hash over the retained PSK, labelled
/// "nvme-tls-psk" with `context`, as long as the retained PSK.
pub fn tls_psk(suite: Suite, retained: &[u8], context: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = hkdf_label(
        suite.hash(),
        retained,
        b"nvme-tls-psk",
        context,
        retained.len(),
    );
    out.truncate(suite.key_len());
    out
}

/// The PSK secure channel concatenation generates (NVMe base specification 2.1
/// §8.3.4.5.9): HMAC-H(KS, C1 || C2). Kept by the target for the host's TLS
/// reconnection (in memory only), by the host for its TLS queue pairs. Zeroed on drop;
/// `Debug` shows no key.
#[derive(Clone)]
pub struct GeneratedPsk {
    suite: Suite,
    psk: Zeroizing<Vec<u8>>,
    /// base64(HMAC-H(psk, hostnqn " " subnqn " NVMe-over-Fabrics")): public (it is in
    /// the identity).
    digest: String,
}

impl std::fmt::Debug for GeneratedPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GeneratedPsk({})", self.suite.name())
    }
}

/// Why no PSK can be generated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "secure channel concatenation needs SHA-256 or SHA-384 (a TLS cipher suite's hash); the exchange used {0}"
    )]
    Hash(&'static str),
    #[error("challenges of {c1} and {c2} bytes where the hash takes {want}")]
    ChallengeLength { c1: usize, c2: usize, want: usize },
}

impl GeneratedPsk {
    /// The generated PSK of an exchange with hash `hash`, session key `ks` (H(g^xy mod
    /// p)), the controller's challenge `c1` and the host's `c2`, for `hostnqn` and
    /// `subnqn`.
    pub fn new(
        hash: HashId,
        ks: &[u8],
        c1: &[u8],
        c2: &[u8],
        hostnqn: &str,
        subnqn: &str,
    ) -> Result<GeneratedPsk, GenerateError> {
        let suite = match hash {
            HashId::Sha256 => Suite::Aes128GcmSha256,
            HashId::Sha384 => Suite::Aes256GcmSha384,
            HashId::Sha512 => return Err(GenerateError::Hash(hash.name())),
        };
        let want = hash.digest_len();
        if c1.len() != want || c2.len() != want {
            return Err(GenerateError::ChallengeLength {
                c1: c1.len(),
                c2: c2.len(),
                want,
            });
        }
        let psk = hmac_parts(hash, ks, &[c1, c2]);
        let digest = psk_digest(suite, &psk, hostnqn, subnqn);
        Ok(GeneratedPsk { suite, psk, digest })
    }

    /// The suite the TLS connection uses.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The PSK digest (public: the identity carries it).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The identity the host offers: `NVMe1G<hh> <hostnqn> <subnqn> <digest>`.
    pub fn identity(&self, hostnqn: &str, subnqn: &str) -> Identity {
        Identity {
            version: 1,
            suite: self.suite,
            hostnqn: hostnqn.into(),
            subnqn: subnqn.into(),
            digest: Some(self.digest.clone()),
            generated: true,
        }
    }

    /// The TLS PSK: HKDF over the generated PSK, context `<hh> <digest>`.
    pub fn tls_psk(&self) -> Zeroizing<Vec<u8>> {
        let context = format!("{:02} {}", self.suite.id(), self.digest);
        tls_psk(self.suite, &self.psk, context.as_bytes())
    }

    /// The generated PSK itself (for tests against outside vectors).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &[u8] {
        &self.psk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPDK's unit-test key (test/unit/lib/nvmf/tcp.c).
    const SPDK_KEY: &[u8] = b"NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:";

    /// HKDF computed by OpenSSL's own HKDF (EVP_PKEY_HKDF, extract and expand, empty
    /// salt), as SPDK calls it: an independent implementation to check ours against.
    fn openssl_hkdf(md: &openssl::md::MdRef, ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
        use openssl::pkey::Id;
        use openssl::pkey_ctx::PkeyCtx;
        let mut ctx = PkeyCtx::new_id(Id::HKDF).unwrap();
        ctx.derive_init().unwrap();
        ctx.set_hkdf_md(md).unwrap();
        ctx.set_hkdf_key(ikm).unwrap();
        ctx.set_hkdf_salt(&[]).unwrap();
        ctx.add_hkdf_info(info).unwrap();
        let mut out = vec![0; len];
        let n = ctx.derive(Some(&mut out)).unwrap();
        out.truncate(n);
        out
    }

    fn label_info(len: usize, label: &str, ctx: &str) -> Vec<u8> {
        let mut v = (len as u16).to_be_bytes().to_vec();
        v.push(label.len() as u8);
        v.extend_from_slice(label.as_bytes());
        v.push(ctx.len() as u8);
        v.extend_from_slice(ctx.as_bytes());
        v
    }

    #[test]
    fn parses_spdk_key_and_names_each_fault() {
        let k = ConfiguredPsk::parse(SPDK_KEY).unwrap();
        assert_eq!(k.suite(), Suite::Aes128GcmSha256);
        assert_eq!(k.hash(), Some(HashId::Sha256));
        assert!(
            ConfiguredPsk::parse(
                b"NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:\n"
            )
            .is_ok()
        );
        assert_eq!(
            ConfiguredPsk::parse(b"DHHC-1:01:abc:").unwrap_err(),
            PskFormatError::Prefix
        );
        assert_eq!(
            ConfiguredPsk::parse(b"NVMeTLSkey-1:03:abc:").unwrap_err(),
            PskFormatError::Hash("03".into())
        );
        assert_eq!(
            ConfiguredPsk::parse(b"NVMeTLSkey-1:01:VRLbtnN9AQb2").unwrap_err(),
            PskFormatError::Terminator
        );
        assert_eq!(
            ConfiguredPsk::parse(b"NVMeTLSkey-1:01:!!!!:").unwrap_err(),
            PskFormatError::Base64
        );
        assert_eq!(
            ConfiguredPsk::parse(
                b"NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrZ:x"
            )
            .unwrap_err(),
            PskFormatError::Trailing
        );
        // A CRC flipped: the last base64 character changed.
        assert!(matches!(
            ConfiguredPsk::parse(
                b"NVMeTLSkey-1:01:VRLbtnN9AQb2WXW3c9+wEf/DRLz0QuLdbYvEhwtdWwNf9LrY:"
            )
            .unwrap_err(),
            PskFormatError::Crc { .. }
        ));
        // A 48-byte key with hash 01.
        let long = ConfiguredPsk::format(Some(HashId::Sha256), &[7; 48]);
        assert!(matches!(
            ConfiguredPsk::parse(long.as_bytes()).unwrap_err(),
            PskFormatError::Length { decoded: 52, .. }
        ));
        // Errors carry no key material.
        let e = ConfiguredPsk::parse(long.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&long[16..30]), "{e}");
        for (h, n) in [(None, 32), (None, 48), (Some(HashId::Sha384), 48)] {
            let t = ConfiguredPsk::format(h, &vec![9; n]);
            let k = ConfiguredPsk::parse(t.as_bytes()).unwrap();
            assert_eq!(k.key.len(), n);
            assert_eq!(k.hash(), h);
        }
    }

    #[test]
    fn derivations_match_openssl_hkdf_as_spdk_calls_it() {
        let host = "nqn.2016-06.io.spdk:host1";
        let sub = "nqn.2016-06.io.spdk:cnode1";
        for (hash, n, md) in [
            (HashId::Sha256, 32, openssl::md::Md::sha256()),
            (HashId::Sha384, 48, openssl::md::Md::sha384()),
        ] {
            let key: Vec<u8> = (0..n as u8).collect();
            let psk =
                ConfiguredPsk::parse(ConfiguredPsk::format(Some(hash), &key).as_bytes()).unwrap();
            let retained = psk.retained(host);
            let want = openssl_hkdf(md, &key, &label_info(n, "tls13 HostNQN", host), n);
            assert_eq!(&retained[..], &want[..]);
            let id = Identity::new(0, &psk, host, sub);
            assert_eq!(
                id.encode(),
                format!("NVMe0R{:02} {host} {sub}", psk.suite().id())
            );
            let tls = id.tls_psk(&retained);
            let want = openssl_hkdf(
                md,
                &retained,
                &label_info(n, "tls13 nvme-tls-psk", &id.encode()),
                n,
            );
            assert_eq!(&tls[..], &want[..]);
            // Version 1: the digest, and the context `hh digest`.
            let id1 = Identity::new(1, &psk, host, sub);
            let d = id1.digest.clone().unwrap();
            let mac = openssl::sign::Signer::new(
                if n == 32 {
                    openssl::hash::MessageDigest::sha256()
                } else {
                    openssl::hash::MessageDigest::sha384()
                },
                &openssl::pkey::PKey::hmac(&retained).unwrap(),
            )
            .and_then(|mut s| {
                s.update(format!("{host} {sub} NVMe-over-Fabrics").as_bytes())?;
                s.sign_to_vec()
            })
            .unwrap();
            assert_eq!(d, base64::engine::general_purpose::STANDARD.encode(mac));
            let tls1 = id1.tls_psk(&retained);
            let ctx = format!("{:02} {d}", psk.suite().id());
            let want = openssl_hkdf(md, &retained, &label_info(n, "tls13 nvme-tls-psk", &ctx), n);
            assert_eq!(&tls1[..], &want[..]);
            assert_eq!(Identity::parse(id1.encode().as_bytes()).unwrap(), id1);
            assert_eq!(Identity::parse(id.encode().as_bytes()).unwrap(), id);
        }
        // `00`: the configured key is the retained key.
        let raw = [5u8; 48];
        let psk = ConfiguredPsk::parse(ConfiguredPsk::format(None, &raw).as_bytes()).unwrap();
        assert_eq!(&psk.retained(host)[..], &raw[..]);
        assert_eq!(psk.suite(), Suite::Aes256GcmSha384);
    }

    #[test]
    fn identity_parse_names_each_fault() {
        assert_eq!(
            Identity::parse(b"NVMe2R01 a b").unwrap_err(),
            IdentityError::Prefix
        );
        assert_eq!(
            Identity::parse(b"NVMe0R03 a b").unwrap_err(),
            IdentityError::Hash("03".into())
        );
        assert!(matches!(
            Identity::parse(b"NVMe0R01 a").unwrap_err(),
            IdentityError::Fields { want: 2, .. }
        ));
        assert!(matches!(
            Identity::parse(b"NVMe1R01 a b").unwrap_err(),
            IdentityError::Fields { want: 3, .. }
        ));
        assert_eq!(
            Identity::parse(&[0xff, 0xfe]).unwrap_err(),
            IdentityError::Utf8
        );
        assert!(Identity::parse(b"NVMe0R01  a b").is_err());
    }
}
