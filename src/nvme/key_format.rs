//! The interchange shape NVMe's text keys share: `PREFIX:hh:<base64(key ||
//! crc32-le(key))>:`, optionally followed by white space (a newline) — DH-HMAC-CHAP
//! secrets (`DHHC-1:`, [`super::dhchap::DhchapKey`]) and NVMe/TCP TLS PSKs
//! (`NVMeTLSkey-1:`, [`super::tls::ConfiguredPsk`]). Each key type brings its own table
//! of hash identifiers and key lengths and maps [`KeyTextError`] to its own errors.
//!
//! Nothing here logs; no error carries key material; decoded bytes are zeroed on drop.

use super::dhchap::crc32_ieee;
use base64::Engine;
use zeroize::Zeroizing;

/// Why text is not a key of the interchange shape. No variant holds key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyTextError {
    /// The text does not start with the prefix.
    Prefix,
    /// The hash field is not two characters followed by `:` (its bytes before any `:`,
    /// at most two), or is not in the caller's table (the two characters if they are
    /// hex digits, else `??`).
    Hash(Vec<u8>),
    /// No `:` after the base64 part.
    Terminator,
    /// Something other than white space after the closing `:`.
    Trailing,
    /// The base64 part is not valid base64.
    Base64,
    /// The base64 part decodes to `decoded` bytes, which is not a key length of hash
    /// `hh` plus the 4-byte CRC-32.
    Length { hh: String, decoded: usize },
    /// The stored CRC-32 does not match the key's.
    Crc { stored: u32, computed: u32 },
}

/// Parses `PREFIX:hh:<base64(key || crc32-le(key))>:` plus optional white space.
/// `hash` maps the two characters `hh` to the caller's hash and the key lengths it
/// allows (`None`: not a known identifier). Returns that hash and the key bytes.
pub fn parse<H>(
    prefix: &[u8],
    text: &[u8],
    hash: impl FnOnce(&str) -> Option<(H, &'static [usize])>,
) -> Result<(H, Zeroizing<Vec<u8>>), KeyTextError> {
    let rest = text.strip_prefix(prefix).ok_or(KeyTextError::Prefix)?;
    if rest.len() < 3 || rest[2] != b':' {
        let shown = rest.iter().take(2).take_while(|c| **c != b':').copied();
        return Err(KeyTextError::Hash(shown.collect()));
    }
    let hh = std::str::from_utf8(&rest[..2]).unwrap_or("??");
    let Some((h, key_lens)) = hash(hh) else {
        if hh.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(KeyTextError::Hash(hh.into()));
        }
        return Err(KeyTextError::Hash(b"??".to_vec()));
    };
    let body = &rest[3..];
    let end = body
        .iter()
        .position(|&c| c == b':')
        .ok_or(KeyTextError::Terminator)?;
    if !body[end + 1..].iter().all(u8::is_ascii_whitespace) {
        return Err(KeyTextError::Trailing);
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(&body[..end])
            .map_err(|_| KeyTextError::Base64)?,
    );
    let n = decoded.len();
    if n < 4 || !key_lens.contains(&(n - 4)) {
        return Err(KeyTextError::Length {
            hh: hh.into(),
            decoded: n,
        });
    }
    let key_len = n - 4;
    let stored = u32::from_le_bytes([
        decoded[key_len],
        decoded[key_len + 1],
        decoded[key_len + 2],
        decoded[key_len + 3],
    ]);
    let computed = crc32_ieee(&decoded[..key_len]);
    if stored != computed {
        return Err(KeyTextError::Crc { stored, computed });
    }
    Ok((h, Zeroizing::new(decoded[..key_len].to_vec())))
}

/// `prefix` (e.g. `DHHC-1:`), hash identifier `hh` as two hex digits, `:`, base64 of
/// the key and its CRC-32 (little-endian), `:`.
pub fn format(prefix: &str, hh: u8, key: &[u8]) -> Zeroizing<String> {
    let mut raw = Zeroizing::new(key.to_vec());
    raw.extend_from_slice(&crc32_ieee(key).to_le_bytes());
    Zeroizing::new(format!(
        "{prefix}{hh:02x}:{}:",
        base64::engine::general_purpose::STANDARD.encode(&raw[..])
    ))
}
