//! DH-HMAC-CHAP's computations (NVMe Base Specification 2.x §8.13.5), as SPDK's
//! `lib/nvme/nvme_auth.c` does them, shared by the target and the initiator:
//!
//! - the secret representation `DHHC-1:hh:<base64(key || crc32(key))>:` ([`DhchapKey`]);
//!   `hh` says how the key is transformed before use: `00` not at all, `01`/`02`/`03`
//!   Kh = HMAC-SHA-256/384/512(key, NQN || "NVMe-over-Fabrics");
//! - the response ([`response`]): with the negotiated hash H, the challenge C (augmented
//!   to HMAC-H(H(g^xy mod p), C) when a DH group is used), R = HMAC-H(Kh, C || seqnum
//!   (LE32) || T_ID (LE16) || SC_C (u8) || "HostHost" or "Controller" || NQN1 || 0x00 ||
//!   NQN2), where for the host's response NQN1 is the host's NQN and Kh its key
//!   transformed with it, and for the controller's NQN1 is the subsystem's NQN;
//! - finite-field Diffie-Hellman over the RFC 7919 groups ([`DhKey`]): public values and
//!   the shared secret are big-endian, left-padded to the prime's length.
//!
//! Nothing here logs; errors never carry key material; secrets are zeroed when dropped,
//! the exponentiation's temporaries included (OpenSSL's secure `BIGNUM`s, see
//! [`DhKey`]).

use super::auth::{DhGroup, HashId};
use super::key_format::{self, KeyTextError};
use hmac::{Hmac, Mac};
use openssl::bn::{BigNum, BigNumContext};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// Why a `DHHC-1:` key is refused. No variant holds any of the key's material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("not a DH-HMAC-CHAP secret: it does not start with `DHHC-1:`")]
    Prefix,
    #[error(
        "bad hash identifier `{0}` after `DHHC-1:`: expected 00 (none), 01 (SHA-256), 02 (SHA-384) or 03 (SHA-512)"
    )]
    HashId(String),
    #[error("the secret does not end with `:` after its base64 part")]
    Terminator,
    #[error("unexpected bytes after the closing `:`")]
    Trailing,
    #[error("the secret's base64 part is not valid base64")]
    Base64,
    #[error(
        "the secret decodes to {0} bytes; expected 36, 52 or 68 (a 32-, 48- or 64-byte key and its CRC-32)"
    )]
    Length(usize),
    #[error(
        "the secret's CRC-32 does not match its key (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Crc { stored: u32, computed: u32 },
}

/// A parsed `DHHC-1:` secret: the key bytes and how to transform them. Zeroed on drop;
/// `Debug` shows neither.
pub struct DhchapKey {
    /// 0: no transformation; else the hash of the transformation.
    transform: Option<HashId>,
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DhchapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DhchapKey({} bytes, transform {:?})",
            self.key.len(),
            self.transform
        )
    }
}

impl DhchapKey {
    /// Parses a key file's text: `DHHC-1:hh:<base64>:`, optionally followed by white
    /// space (a newline).
    pub fn parse(text: &[u8]) -> Result<DhchapKey, KeyFormatError> {
        const LENS: &[usize] = &[32, 48, 64];
        let (transform, key) = key_format::parse(b"DHHC-1:", text, |hh| match hh {
            "00" => Some((None, LENS)),
            "01" => Some((Some(HashId::Sha256), LENS)),
            "02" => Some((Some(HashId::Sha384), LENS)),
            "03" => Some((Some(HashId::Sha512), LENS)),
            _ => None,
        })
        .map_err(|e| match e {
            KeyTextError::Prefix => KeyFormatError::Prefix,
            KeyTextError::Hash(shown) => {
                KeyFormatError::HashId(shown.iter().map(|&c| c as char).collect())
            }
            KeyTextError::Terminator => KeyFormatError::Terminator,
            KeyTextError::Trailing => KeyFormatError::Trailing,
            KeyTextError::Base64 => KeyFormatError::Base64,
            KeyTextError::Length { decoded, .. } => KeyFormatError::Length(decoded),
            KeyTextError::Crc { stored, computed } => KeyFormatError::Crc { stored, computed },
        })?;
        Ok(DhchapKey { transform, key })
    }

    /// Length of the key in bytes.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// The hash of the transformation (`None`: used as it is).
    pub fn transform_hash(&self) -> Option<HashId> {
        self.transform
    }

    /// The transformed key for `nqn`: the key itself (`00`), or HMAC-H(key, nqn ||
    /// "NVMe-over-Fabrics").
    pub fn transformed(&self, nqn: &str) -> Zeroizing<Vec<u8>> {
        match self.transform {
            None => self.key.clone(),
            Some(h) => hmac_parts(h, &self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        }
    }

    /// Formats a key as a `DHHC-1:` secret (for tests and key generation).
    pub fn format(transform: Option<HashId>, key: &[u8]) -> Zeroizing<String> {
        key_format::format("DHHC-1:", transform.map_or(0, |h| h as u8), key)
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32_ieee(b: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// HMAC-H(key, parts[0] || parts[1] || …).
pub fn hmac_parts(h: HashId, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    macro_rules! run {
        ($d:ty) => {{
            let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            Zeroizing::new(m.finalize().into_bytes().to_vec())
        }};
    }
    match h {
        HashId::Sha256 => run!(Sha256),
        HashId::Sha384 => run!(Sha384),
        HashId::Sha512 => run!(Sha512),
    }
}

/// H(data).
pub fn digest(h: HashId, data: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match h {
        HashId::Sha256 => Sha256::digest(data).to_vec(),
        HashId::Sha384 => Sha384::digest(data).to_vec(),
        HashId::Sha512 => Sha512::digest(data).to_vec(),
    })
}

/// What a response is computed over, besides the key and the challenge.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInputs<'a> {
    pub hash: HashId,
    /// `"HostHost"` for the host's response, `"Controller"` for the controller's.
    pub kind: &'a str,
    pub seqnum: u32,
    pub tid: u16,
    pub scc: u8,
    pub nqn1: &'a str,
    pub nqn2: &'a str,
    /// The DH shared secret (`None` for the null group).
    pub dh_secret: Option<&'a [u8]>,
}

/// The response to challenge `cval` with `key` (transformed here with `nqn1`).
pub fn response(key: &DhchapKey, cval: &[u8], i: &ResponseInputs<'_>) -> Zeroizing<Vec<u8>> {
    let caval = match i.dh_secret {
        Some(s) => hmac_parts(i.hash, &digest(i.hash, s), &[cval]),
        None => Zeroizing::new(cval.to_vec()),
    };
    let kh = key.transformed(i.nqn1);
    hmac_parts(
        i.hash,
        &kh,
        &[
            &caval,
            &i.seqnum.to_le_bytes(),
            &i.tid.to_le_bytes(),
            &[i.scc],
            i.kind.as_bytes(),
            i.nqn1.as_bytes(),
            &[0],
            i.nqn2.as_bytes(),
        ],
    )
}

/// Compares two byte strings in time independent of where they differ.
pub fn equal_ct(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), DhError> {
    getrandom::fill(buf).map_err(|e| DhError::Random(e.to_string()))
}

/// Why a DH computation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhError {
    #[error("the null DH group has no keys")]
    NullGroup,
    #[error("the peer's public value is {got} bytes; {group} values are 1 to {max}")]
    PeerLength {
        group: &'static str,
        got: usize,
        max: usize,
    },
    #[error("the peer's public value is out of range for {0} (it must be in 2..=p-2)")]
    PeerRange(&'static str),
    #[error("no random bytes: {0}")]
    Random(String),
    #[error("OpenSSL big-number arithmetic failed: {0}")]
    OpenSsl(String),
}

fn prime(g: DhGroup) -> Result<&'static BigNum, DhError> {
    static P: [OnceLock<BigNum>; 5] = [const { OnceLock::new() }; 5];
    let (i, hex) = match g {
        DhGroup::Null => return Err(DhError::NullGroup),
        DhGroup::Ffdhe2048 => (0, super::ffdhe::FFDHE2048),
        DhGroup::Ffdhe3072 => (1, super::ffdhe::FFDHE3072),
        DhGroup::Ffdhe4096 => (2, super::ffdhe::FFDHE4096),
        DhGroup::Ffdhe6144 => (3, super::ffdhe::FFDHE6144),
        DhGroup::Ffdhe8192 => (4, super::ffdhe::FFDHE8192),
    };
    if let Some(p) = P[i].get() {
        return Ok(p);
    }
    let p = BigNum::from_hex_str(hex).map_err(ssl)?;
    Ok(P[i].get_or_init(|| p))
}

fn ssl(e: openssl::error::ErrorStack) -> DhError {
    DhError::OpenSsl(e.to_string())
}

/// A secret number: in OpenSSL's secure heap when there is one, zeroed when freed
/// either way (`BN_FLG_SECURE` frees with `OPENSSL_secure_clear_free`), used in
/// constant time (`BN_FLG_CONSTTIME`: `BN_mod_exp` takes the constant-time
/// Montgomery ladder for such an exponent).
fn secret_bn(be: &[u8]) -> Result<BigNum, DhError> {
    let mut n = BigNum::new_secure().map_err(ssl)?;
    n.copy_from_slice(be).map_err(ssl)?;
    n.set_const_time();
    Ok(n)
}

/// Bits of the private exponent: at least twice the group's security strength (RFC 7919
/// §5.2 asks for 2× the strength: 225 bits for ffdhe2048 up to 400 for ffdhe8192).
const PRIVATE_BITS: usize = 512;

/// An ephemeral DH key pair in one of the RFC 7919 groups. The exponentiations are
/// OpenSSL's `BN_mod_exp` over secure, constant-time `BIGNUM`s with a secure `BN_CTX`
/// (its temporaries are cleared when freed); they take milliseconds for the large
/// groups, so the target and the initiator run them on worker threads, off their
/// reactors. `Send`; the private exponent is cleared on drop.
pub struct DhKey {
    group: DhGroup,
    x: BigNum,
    public: Vec<u8>,
}

impl std::fmt::Debug for DhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhKey({})", self.group.name())
    }
}

impl Drop for DhKey {
    fn drop(&mut self) {
        self.x.clear();
    }
}

impl DhKey {
    /// A fresh key pair.
    pub fn generate(group: DhGroup) -> Result<DhKey, DhError> {
        let mut x = Zeroizing::new(vec![0u8; PRIVATE_BITS / 8]);
        random_bytes(&mut x)?;
        x[0] |= 0x80;
        DhKey::from_private(group, &x)
    }

    /// The key pair of private exponent `x` (big-endian).
    pub fn from_private(group: DhGroup, x: &[u8]) -> Result<DhKey, DhError> {
        let p = prime(group)?;
        let x = secret_bn(x)?;
        let g = BigNum::from_u32(2).map_err(ssl)?;
        let mut ctx = BigNumContext::new_secure().map_err(ssl)?;
        let mut y = BigNum::new().map_err(ssl)?;
        y.mod_exp(&g, &x, p, &mut ctx).map_err(ssl)?;
        let public = y.to_vec_padded(group.value_len() as i32).map_err(ssl)?;
        Ok(DhKey { group, x, public })
    }

    /// The group of the key.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value g^x mod p, padded to the prime's length.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret peer^x mod p, padded to the prime's length (as OpenSSL's
    /// `EVP_PKEY_derive` with padding, which SPDK asks for).
    pub fn derive(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, DhError> {
        let p = prime(self.group)?;
        let max = self.group.value_len();
        if peer.is_empty() || peer.len() > max {
            return Err(DhError::PeerLength {
                group: self.group.name(),
                got: peer.len(),
                max,
            });
        }
        let y = BigNum::from_slice(peer).map_err(ssl)?;
        let two = BigNum::from_u32(2).map_err(ssl)?;
        let mut p_minus_2 = BigNum::from_slice(&p.to_vec()).map_err(ssl)?;
        p_minus_2.sub_word(2).map_err(ssl)?;
        if y < two || y > p_minus_2 {
            return Err(DhError::PeerRange(self.group.name()));
        }
        let mut ctx = BigNumContext::new_secure().map_err(ssl)?;
        let mut s = BigNum::new_secure().map_err(ssl)?;
        s.mod_exp(&y, &self.x, p, &mut ctx).map_err(ssl)?;
        let out = s.to_vec_padded(max as i32).map(Zeroizing::new);
        s.clear();
        out.map_err(ssl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed outside this code: Python's zlib, base64, hmac and hashlib for the
    // key format, the transformation and the response, following the inputs of SPDK's
    // `nvme_auth_get_key`, `nvme_auth_transform_key` and `spdk_nvme_dhchap_calculate`;
    // OpenSSL (through Python's `cryptography`) for DH. See `tests/dhchap_vectors.py`.
    include!("dhchap_vectors.rs");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn key_format_accepts_good_keys_and_names_each_fault() {
        let k = DhchapKey::parse(KEY_SHA256.as_bytes()).unwrap();
        assert_eq!(k.key_len(), 32);
        assert_eq!(k.transform_hash(), Some(HashId::Sha256));
        let with_newline = format!("{KEY_SHA256}\n");
        assert!(DhchapKey::parse(with_newline.as_bytes()).is_ok());
        assert_eq!(
            DhchapKey::parse(b"DHHC-2:00:abcd:").unwrap_err(),
            KeyFormatError::Prefix
        );
        let bad_hash = KEY_SHA256.replacen(":01:", ":04:", 1);
        assert_eq!(
            DhchapKey::parse(bad_hash.as_bytes()).unwrap_err(),
            KeyFormatError::HashId("04".into())
        );
        let no_end = KEY_SHA256.trim_end_matches(':');
        assert_eq!(
            DhchapKey::parse(no_end.as_bytes()).unwrap_err(),
            KeyFormatError::Terminator
        );
        assert_eq!(
            DhchapKey::parse(b"DHHC-1:00:!!!!:").unwrap_err(),
            KeyFormatError::Base64
        );
        // 16 bytes of key + CRC: 20 bytes.
        assert_eq!(
            DhchapKey::parse(KEY_SHORT.as_bytes()).unwrap_err(),
            KeyFormatError::Length(20)
        );
        assert!(matches!(
            DhchapKey::parse(KEY_BAD_CRC.as_bytes()).unwrap_err(),
            KeyFormatError::Crc { .. }
        ));
        let trailing = format!("{KEY_SHA256}x");
        assert_eq!(
            DhchapKey::parse(trailing.as_bytes()).unwrap_err(),
            KeyFormatError::Trailing
        );
        // The errors never show the key.
        let e = DhchapKey::parse(KEY_BAD_CRC.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&KEY_BAD_CRC[10..30]));
    }

    #[test]
    fn crc_and_format_match_zlib() {
        assert_eq!(crc32_ieee(b"123456789"), 0xcbf4_3926);
        let k = DhchapKey::parse(KEY_NONE.as_bytes()).unwrap();
        assert_eq!(&*DhchapKey::format(None, &k.key), KEY_NONE);
    }

    #[test]
    fn transformation_matches_the_vectors() {
        let k = DhchapKey::parse(KEY_SHA256.as_bytes()).unwrap();
        assert_eq!(
            &k.transformed(HOSTNQN)[..],
            &unhex(KEY_SHA256_TRANSFORMED)[..]
        );
        let k = DhchapKey::parse(KEY_SHA512.as_bytes()).unwrap();
        assert_eq!(
            &k.transformed(SUBNQN)[..],
            &unhex(KEY_SHA512_TRANSFORMED)[..]
        );
        let k = DhchapKey::parse(KEY_NONE.as_bytes()).unwrap();
        assert_eq!(&k.transformed(HOSTNQN)[..], &k.key[..]);
    }

    #[test]
    fn responses_match_the_vectors() {
        let k = DhchapKey::parse(KEY_SHA256.as_bytes()).unwrap();
        let cval = unhex(CVAL32);
        let r = response(
            &k,
            &cval,
            &ResponseInputs {
                hash: HashId::Sha256,
                kind: "HostHost",
                seqnum: 0x1234_5678,
                tid: 7,
                scc: 0,
                nqn1: HOSTNQN,
                nqn2: SUBNQN,
                dh_secret: None,
            },
        );
        assert_eq!(&r[..], &unhex(RESP_HOST_SHA256_NULL)[..]);
        let ck = DhchapKey::parse(KEY_SHA512.as_bytes()).unwrap();
        let secret = unhex(DH2048_SECRET);
        let cval48 = unhex(CVAL48);
        let r = response(
            &ck,
            &cval48,
            &ResponseInputs {
                hash: HashId::Sha384,
                kind: "Controller",
                seqnum: 42,
                tid: 0x0102,
                scc: 0,
                nqn1: SUBNQN,
                nqn2: HOSTNQN,
                dh_secret: Some(&secret),
            },
        );
        assert_eq!(&r[..], &unhex(RESP_CTRL_SHA384_DH2048)[..]);
    }

    #[test]
    fn dh_matches_openssl() {
        let a = DhKey::from_private(DhGroup::Ffdhe2048, &unhex(DH2048_X)).unwrap();
        assert_eq!(a.public(), &unhex(DH2048_PUB)[..]);
        let s = a.derive(&unhex(DH2048_PEER)).unwrap();
        assert_eq!(&s[..], &unhex(DH2048_SECRET)[..]);
        assert!(a.derive(&[1]).is_err());
        assert!(a.derive(&[0xff; 256]).is_err());
        assert!(a.derive(&[0; 257]).is_err());
        assert!(a.derive(&[]).is_err());
    }

    /// Secure channel concatenation: the Linux kernel's own KUnit vectors (its
    /// `nvme_auth_generate_psk`, `_generate_digest`, `_derive_tls_psk`, with the
    /// session key given directly), then a whole chain from the ffdhe2048 exchange:
    /// KS = H(g^xy mod p), the host's response with SC_C NEWTLSPSK, the generated PSK,
    /// its digest, the `NVMe1G` identity and the TLS PSK (Python, tests/dhchap_vectors.py).
    #[test]
    fn concatenation_matches_the_kernel_and_the_vectors() {
        use crate::nvme::tls::{GeneratedPsk, Identity, Suite};
        for (hash, psk, digest, tls) in [
            (
                HashId::Sha256,
                KUNIT_SHA256_PSK,
                KUNIT_SHA256_DIGEST,
                KUNIT_SHA256_TLS_PSK,
            ),
            (
                HashId::Sha384,
                KUNIT_SHA384_PSK,
                KUNIT_SHA384_DIGEST,
                KUNIT_SHA384_TLS_PSK,
            ),
        ] {
            let n = hash.digest_len();
            let skey: Vec<u8> = (0..n).map(|i| b'A' + i as u8).collect();
            let c1: Vec<u8> = (0..n as u8).collect();
            let c2: Vec<u8> = (0..n).map(|i| 0xff - i as u8).collect();
            let g = GeneratedPsk::new(hash, &skey, &c1, &c2, "hostnqn", "subsysnqn").unwrap();
            assert_eq!(g.raw(), &unhex(psk)[..], "{}", hash.name());
            assert_eq!(g.digest(), digest);
            assert_eq!(&g.tls_psk()[..], &unhex(tls)[..]);
        }
        // SHA-512 has no TLS suite (the kernel refuses it too).
        assert!(GeneratedPsk::new(HashId::Sha512, &[1; 64], &[2; 64], &[3; 64], "h", "s").is_err());
        assert!(GeneratedPsk::new(HashId::Sha256, &[1; 32], &[2; 31], &[3; 32], "h", "s").is_err());

        let secret = unhex(DH2048_SECRET);
        let k = DhchapKey::parse(KEY_SHA256.as_bytes()).unwrap();
        let cval48 = unhex(CVAL48);
        let r = response(
            &k,
            &cval48,
            &ResponseInputs {
                hash: HashId::Sha384,
                kind: "HostHost",
                seqnum: 7,
                tid: 3,
                scc: crate::nvme::auth::sc_c::NEWTLSPSK,
                nqn1: HOSTNQN,
                nqn2: SUBNQN,
                dh_secret: Some(&secret),
            },
        );
        assert_eq!(&r[..], &unhex(RESP_HOST_SHA384_DH2048_NEWTLSPSK)[..]);
        let ks = digest(HashId::Sha384, &secret);
        let g = GeneratedPsk::new(
            HashId::Sha384,
            &ks,
            &cval48,
            &unhex(CONCAT_C2_48),
            HOSTNQN,
            SUBNQN,
        )
        .unwrap();
        assert_eq!(g.raw(), &unhex(GEN_SHA384_PSK)[..]);
        assert_eq!(g.digest(), GEN_SHA384_DIGEST);
        assert_eq!(g.suite(), Suite::Aes256GcmSha384);
        let id = g.identity(HOSTNQN, SUBNQN);
        assert_eq!(id.encode(), GEN_SHA384_IDENTITY);
        assert_eq!(Identity::parse(GEN_SHA384_IDENTITY.as_bytes()).unwrap(), id);
        assert_eq!(&g.tls_psk()[..], &unhex(GEN_SHA384_TLS_PSK)[..]);
        // The identity's TLS PSK is the same derivation (context `hh digest`).
        assert_eq!(&id.tls_psk(g.raw())[..], &unhex(GEN_SHA384_TLS_PSK)[..]);
        let ks = digest(HashId::Sha256, &secret);
        let g = GeneratedPsk::new(
            HashId::Sha256,
            &ks,
            &unhex(CVAL32),
            &unhex(CONCAT_C2_32),
            HOSTNQN,
            SUBNQN,
        )
        .unwrap();
        assert_eq!(g.raw(), &unhex(GEN_SHA256_PSK)[..]);
        assert_eq!(g.digest(), GEN_SHA256_DIGEST);
        assert_eq!(&g.tls_psk()[..], &unhex(GEN_SHA256_TLS_PSK)[..]);
        assert!(format!("{g:?}").find(GEN_SHA256_PSK).is_none());
    }

    #[test]
    fn dh_agrees_in_every_group() {
        for g in DhGroup::ALL.into_iter().skip(1) {
            let a = DhKey::generate(g).unwrap();
            let b = DhKey::generate(g).unwrap();
            assert_eq!(a.public().len(), g.value_len());
            assert_eq!(
                &a.derive(b.public()).unwrap()[..],
                &b.derive(a.public()).unwrap()[..]
            );
        }
        assert_eq!(
            DhKey::generate(DhGroup::Null).unwrap_err(),
            DhError::NullGroup
        );
    }
}
