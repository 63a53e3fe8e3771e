//! The send stream: what `tessera send` writes and `tessera receive` reads — the blocks
//! of one snapshot that differ from a base snapshot (or, without a base, every block
//! holding data), with enough identity to apply them onto the right copy.
//!
//! Pure and total: the encoder writes into any `Write`, the decoder reads from any
//! `Read` and returns a value or a [`StreamError`] naming the field and its offset in the
//! stream — never a panic, whatever the bytes.
//!
//! ## Layout (version 1; integers little-endian, checksums CRC-32C)
//!
//! ```text
//! header   magic      8  "TSSEND\r\n"
//!          version    2  1
//!          flags      2  bit 0: a base snapshot is named (incremental); others 0
//!          pool_uuid  16 the source pool
//!          disk_uuid  16 the disk the snapshots are of (nil when unknown)
//!          base_uuid  16 the base snapshot (nil without flag 0)
//!          target_uuid 16 the snapshot the stream brings
//!          block_size 4  a power of two, 512..=65536
//!          size       8  the target snapshot's size in bytes, a multiple of block_size
//!          start      8  the first offset the stream may hold (0, or `--resume-from`)
//!          base_name  2 + n  length (<= 255) and UTF-8 (empty without flag 0)
//!          target_name 2 + n length (1..=255) and UTF-8
//!          crc        4  of every header byte before it
//! data     kind       1  1
//!          zero       3
//!          length     4  bytes of data: > 0, <= 8 MiB, a multiple of block_size
//!          offset     8  a multiple of block_size, >= start and >= the previous
//!                        record's end; offset + length <= size
//!          crc        4  of the 16 bytes before it and of the data
//!          data       length
//! end      kind       1  2
//!          zero       3
//!          records    8  data records in the stream
//!          bytes      8  their data bytes
//!          crc        4  of the 20 bytes before it
//! ```
//!
//! Nothing follows the end record. Data records are sorted and disjoint, so applying a
//! stream is a sequence of idempotent writes: applying it again, or its tail again after
//! an interruption, gives the same disk.

use std::io::{self, Read, Write};
use uuid::Uuid;

/// The first bytes of every stream.
pub const MAGIC: [u8; 8] = *b"TSSEND\r\n";
/// The format this build writes and reads.
pub const VERSION: u16 = 1;
/// Flag: a base snapshot is named.
pub const FLAG_INCREMENTAL: u16 = 1;
/// The longest data record.
pub const MAX_RECORD_BYTES: u32 = 8 << 20;
/// The longest snapshot name.
pub const MAX_NAME_BYTES: usize = 255;
/// Kind byte of a data record.
pub const KIND_DATA: u8 = 1;
/// Kind byte of the end record.
pub const KIND_END: u8 = 2;

/// The stream's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub pool_uuid: Uuid,
    pub disk_uuid: Uuid,
    /// The base snapshot (UUID and name), or `None` for a full send.
    pub base: Option<(Uuid, String)>,
    pub target_uuid: Uuid,
    pub target_name: String,
    pub block_size: u32,
    pub size: u64,
    /// The first offset the stream may hold: 0, or where a resumed send started.
    pub start: u64,
}

/// A record after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Data { offset: u64, data: Vec<u8> },
    End { records: u64, bytes: u64 },
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("send stream: byte {at}: {field}: {problem}")]
    Field {
        at: u64,
        field: &'static str,
        problem: String,
    },
    #[error("send stream: byte {at}: the stream ends inside {field} (truncated)")]
    Truncated { at: u64, field: &'static str },
    #[error("send stream: byte {at}: {what}: checksum {found:#010x}, computed {computed:#010x}")]
    Checksum {
        at: u64,
        what: &'static str,
        found: u32,
        computed: u32,
    },
    #[error("send stream: {0}")]
    Io(io::Error),
}

// Not `#[from]`: the message holds the cause, and a source would print it twice in a
// chain of causes.
impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> StreamError {
        StreamError::Io(e)
    }
}

impl Header {
    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if self.base.is_some() {
            FLAG_INCREMENTAL
        } else {
            0
        };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(self.pool_uuid.as_bytes());
        b.extend_from_slice(self.disk_uuid.as_bytes());
        let (base_uuid, base_name) = match &self.base {
            Some((u, n)) => (*u, n.as_str()),
            None => (Uuid::nil(), ""),
        };
        b.extend_from_slice(base_uuid.as_bytes());
        b.extend_from_slice(self.target_uuid.as_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.start.to_le_bytes());
        for name in [base_name, self.target_name.as_str()] {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Writes a stream: the header, data records, the end record.
pub struct Encoder<W: Write> {
    out: W,
    records: u64,
    bytes: u64,
}

impl<W: Write> Encoder<W> {
    /// Writes `header` and returns the encoder for the records.
    pub fn new(mut out: W, header: &Header) -> io::Result<Encoder<W>> {
        out.write_all(&header.encode())?;
        Ok(Encoder {
            out,
            records: 0,
            bytes: 0,
        })
    }

    /// One data record (the caller keeps records sorted, disjoint and within bounds).
    pub fn data(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut h = [0u8; 20];
        h[0] = KIND_DATA;
        h[4..8].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[8..16].copy_from_slice(&offset.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..16]), data);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        self.records += 1;
        self.bytes += data.len() as u64;
        Ok(())
    }

    /// The end record; returns the writer (flushed) and the totals.
    pub fn finish(mut self) -> io::Result<(W, u64, u64)> {
        let mut e = [0u8; 24];
        e[0] = KIND_END;
        e[4..12].copy_from_slice(&self.records.to_le_bytes());
        e[12..20].copy_from_slice(&self.bytes.to_le_bytes());
        let crc = crc32c::crc32c(&e[..20]);
        e[20..24].copy_from_slice(&crc.to_le_bytes());
        self.out.write_all(&e)?;
        self.out.flush()?;
        Ok((self.out, self.records, self.bytes))
    }
}

/// Reads a stream and checks every field as it goes.
pub struct Decoder<R: Read> {
    input: R,
    /// Bytes consumed so far (the offset errors name).
    at: u64,
    header: Header,
    /// The end of the previous data record (or the header's `start`).
    next_min: u64,
    records: u64,
    bytes: u64,
    ended: bool,
}

fn field(at: u64, field: &'static str, problem: impl Into<String>) -> StreamError {
    StreamError::Field {
        at,
        field,
        problem: problem.into(),
    }
}

/// Reads exactly `buf.len()` bytes, naming `what` if the stream ends first.
fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    at: &mut u64,
    what: &'static str,
) -> Result<(), StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(StreamError::Truncated {
                    at: *at + got as u64,
                    field: what,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    *at += buf.len() as u64;
    Ok(())
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}
fn uuid_at(b: &[u8], i: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[i..i + 16]);
    Uuid::from_bytes(a)
}

/// Fixed part of the header: magic to `start`.
const FIXED: usize = 8 + 2 + 2 + 16 * 4 + 4 + 8 + 8;

impl<R: Read> Decoder<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Decoder<R>, StreamError> {
        let mut at = 0u64;
        let mut raw = vec![0u8; FIXED];
        read_exact(&mut input, &mut raw[..8], &mut at, "magic")?;
        if raw[..8] != MAGIC {
            return Err(field(
                0,
                "magic",
                format!("{:02x?} is not a tessera send stream", &raw[..8]),
            ));
        }
        read_exact(&mut input, &mut raw[8..FIXED], &mut at, "header")?;
        let version = u16_at(&raw, 8);
        if version != VERSION {
            return Err(field(
                8,
                "version",
                format!("version {version} is not supported (this build reads {VERSION})"),
            ));
        }
        let flags = u16_at(&raw, 10);
        if flags & !FLAG_INCREMENTAL != 0 {
            return Err(field(10, "flags", format!("unknown flags {flags:#06x}")));
        }
        let block_size = u32_at(&raw, 76);
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(field(
                76,
                "block_size",
                format!("{block_size} is not a power of two between 512 and 65536"),
            ));
        }
        let size = u64_at(&raw, 80);
        if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
            return Err(field(
                80,
                "size",
                format!("{size} is not a positive multiple of the block size {block_size}"),
            ));
        }
        let start = u64_at(&raw, 88);
        if start > size || !start.is_multiple_of(u64::from(block_size)) {
            return Err(field(
                88,
                "start",
                format!("{start} is not a multiple of the block size within the {size} bytes"),
            ));
        }
        let mut names = Vec::new();
        for what in ["base_name", "target_name"] {
            let mut len = [0u8; 2];
            let len_at = at;
            read_exact(&mut input, &mut len, &mut at, what)?;
            raw.extend_from_slice(&len);
            let n = u16::from_le_bytes(len) as usize;
            if n > MAX_NAME_BYTES {
                return Err(field(
                    len_at,
                    what,
                    format!("length {n} is over {MAX_NAME_BYTES}"),
                ));
            }
            let mut s = vec![0u8; n];
            read_exact(&mut input, &mut s, &mut at, what)?;
            raw.extend_from_slice(&s);
            let s = String::from_utf8(s).map_err(|_| field(len_at + 2, what, "not UTF-8"))?;
            names.push((len_at, s));
        }
        let mut crc = [0u8; 4];
        let crc_at = at;
        read_exact(&mut input, &mut crc, &mut at, "header crc")?;
        let found = u32::from_le_bytes(crc);
        let computed = crc32c::crc32c(&raw);
        if found != computed {
            return Err(StreamError::Checksum {
                at: crc_at,
                what: "header",
                found,
                computed,
            });
        }
        let (target_at, target_name) = names.pop().unwrap_or_default();
        let (base_at, base_name) = names.pop().unwrap_or_default();
        if target_name.is_empty() {
            return Err(field(target_at, "target_name", "empty"));
        }
        let base_uuid = uuid_at(&raw, 44);
        let base = if flags & FLAG_INCREMENTAL != 0 {
            if base_name.is_empty() {
                return Err(field(
                    base_at,
                    "base_name",
                    "empty in an incremental stream",
                ));
            }
            Some((base_uuid, base_name))
        } else {
            if !base_name.is_empty() || !base_uuid.is_nil() {
                return Err(field(
                    44,
                    "base_uuid",
                    "a full stream (flag 0 clear) names a base snapshot",
                ));
            }
            None
        };
        let header = Header {
            pool_uuid: uuid_at(&raw, 12),
            disk_uuid: uuid_at(&raw, 28),
            base,
            target_uuid: uuid_at(&raw, 60),
            target_name,
            block_size,
            size,
            start,
        };
        Ok(Decoder {
            input,
            at,
            next_min: start,
            header,
            records: 0,
            bytes: 0,
            ended: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes of the stream read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    /// The next record; after the end record, checks that nothing follows and returns
    /// `None`.
    pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
        if self.ended {
            let mut b = [0u8; 1];
            return match self.input.read(&mut b) {
                Ok(0) => Ok(None),
                Ok(_) => Err(field(self.at, "end", "bytes after the end record")),
                Err(e) => Err(e.into()),
            };
        }
        let rec_at = self.at;
        let mut h = [0u8; 24];
        read_exact(&mut self.input, &mut h[..20], &mut self.at, "record header")?;
        if h[1..4] != [0, 0, 0] {
            return Err(field(rec_at + 1, "record reserved bytes", "not zero"));
        }
        match h[0] {
            KIND_DATA => {
                let length = u32_at(&h, 4);
                let offset = u64_at(&h, 8);
                let bs = u64::from(self.header.block_size);
                if length == 0 || length > MAX_RECORD_BYTES || !u64::from(length).is_multiple_of(bs)
                {
                    return Err(field(
                        rec_at + 4,
                        "length",
                        format!(
                            "{length} is not a positive multiple of the block size {bs} up to {MAX_RECORD_BYTES}"
                        ),
                    ));
                }
                if !offset.is_multiple_of(bs) {
                    return Err(field(
                        rec_at + 8,
                        "offset",
                        format!("{offset} is not a multiple of the block size {bs}"),
                    ));
                }
                if offset < self.next_min {
                    return Err(field(
                        rec_at + 8,
                        "offset",
                        format!(
                            "{offset} is before {} (records are sorted, disjoint and from the header's start)",
                            self.next_min
                        ),
                    ));
                }
                let end = offset.checked_add(u64::from(length));
                if end.is_none_or(|e| e > self.header.size) {
                    return Err(field(
                        rec_at + 8,
                        "offset",
                        format!("{offset} + {length} is past the size {}", self.header.size),
                    ));
                }
                let mut data = vec![0u8; length as usize];
                read_exact(&mut self.input, &mut data, &mut self.at, "record data")?;
                let found = u32_at(&h, 16);
                let computed = crc32c::crc32c_append(crc32c::crc32c(&h[..16]), &data);
                if found != computed {
                    return Err(StreamError::Checksum {
                        at: rec_at + 16,
                        what: "data record",
                        found,
                        computed,
                    });
                }
                self.next_min = offset + u64::from(length);
                self.records += 1;
                self.bytes += u64::from(length);
                Ok(Some(Record::Data { offset, data }))
            }
            KIND_END => {
                read_exact(&mut self.input, &mut h[20..24], &mut self.at, "end record")?;
                let found = u32_at(&h, 20);
                let computed = crc32c::crc32c(&h[..20]);
                if found != computed {
                    return Err(StreamError::Checksum {
                        at: rec_at + 20,
                        what: "end record",
                        found,
                        computed,
                    });
                }
                let records = u64_at(&h, 4);
                let bytes = u64_at(&h, 12);
                if records != self.records {
                    return Err(field(
                        rec_at + 4,
                        "records",
                        format!("says {records}, the stream held {}", self.records),
                    ));
                }
                if bytes != self.bytes {
                    return Err(field(
                        rec_at + 12,
                        "bytes",
                        format!("says {bytes}, the stream held {}", self.bytes),
                    ));
                }
                self.ended = true;
                Ok(Some(Record::End { records, bytes }))
            }
            k => Err(field(
                rec_at,
                "kind",
                format!("{k} is not a record kind (1 data, 2 end)"),
            )),
        }
    }
}

/// Decodes a whole stream held in memory: the header and every record, checking that
/// the end record is there and nothing follows it.
pub fn decode_all(bytes: &[u8]) -> Result<(Header, Vec<Record>), StreamError> {
    let mut d = Decoder::new(bytes)?;
    let mut out = Vec::new();
    while let Some(r) = d.next_record()? {
        out.push(r);
    }
    if !matches!(out.last(), Some(Record::End { .. })) {
        return Err(StreamError::Truncated {
            at: d.position(),
            field: "end record",
        });
    }
    Ok((d.header.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base: bool) -> Header {
        Header {
            pool_uuid: Uuid::from_u128(1),
            disk_uuid: Uuid::from_u128(2),
            base: base.then(|| (Uuid::from_u128(3), "s1".to_string())),
            target_uuid: Uuid::from_u128(4),
            target_name: "s2".into(),
            block_size: 4096,
            size: 1 << 20,
            start: 0,
        }
    }

    fn stream(base: bool) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new(), &header(base)).unwrap();
        e.data(0, &[1u8; 4096]).unwrap();
        e.data(8192, &[2u8; 8192]).unwrap();
        e.finish().unwrap().0
    }

    #[test]
    fn round_trip() {
        for base in [false, true] {
            let (h, recs) = decode_all(&stream(base)).unwrap();
            assert_eq!(h, header(base));
            assert_eq!(
                recs,
                vec![
                    Record::Data {
                        offset: 0,
                        data: vec![1u8; 4096]
                    },
                    Record::Data {
                        offset: 8192,
                        data: vec![2u8; 8192]
                    },
                    Record::End {
                        records: 2,
                        bytes: 12288
                    },
                ]
            );
        }
    }

    fn err(bytes: &[u8]) -> String {
        decode_all(bytes).unwrap_err().to_string()
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let s = stream(true);
        for n in 0..s.len() {
            let e = err(&s[..n]);
            assert!(e.contains("truncated"), "{n}: {e}");
        }
        for i in 0..s.len() {
            let mut b = s.clone();
            b[i] ^= 0x40;
            assert!(decode_all(&b).is_err(), "flip at {i} accepted");
        }
        let mut b = s.clone();
        b.push(0);
        assert!(err(&b).contains("bytes after the end record"));
    }

    #[test]
    fn fields_are_named() {
        let mut h = header(false);
        h.block_size = 1000;
        assert!(err(&h.encode()).contains("block_size"));
        let mut h = header(false);
        h.size = 4097;
        assert!(err(&h.encode()).contains("size"));
        // Records out of order, overlapping, past the end.
        let mut e = Encoder::new(Vec::new(), &header(false)).unwrap();
        e.data(8192, &[1u8; 4096]).unwrap();
        e.data(4096, &[1u8; 4096]).unwrap();
        let b = e.finish().unwrap().0;
        assert!(
            err(&b).contains("offset: 4096 is before 12288"),
            "{}",
            err(&b)
        );
        let mut e = Encoder::new(Vec::new(), &header(false)).unwrap();
        e.data(1 << 20, &[1u8; 4096]).unwrap();
        let b = e.finish().unwrap().0;
        assert!(err(&b).contains("past the size"));
        // An end record whose totals lie.
        let mut b = stream(false);
        let n = b.len();
        b[n - 20] = 9;
        let crc = crc32c::crc32c(&b[n - 24..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(err(&b).contains("records: says 9"), "{}", err(&b));
    }
}
