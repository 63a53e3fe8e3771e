//! Space-map pages: the persisted segment reference counts (two copies; the allocator
//! in `alloc.rs` is the in-memory form).

use super::{
    HEADER_BYTES, MetaError, PAGE_BYTES, PageHeader, PageKind, Reader, Writer, decode_header,
    new_page, seal,
};
use uuid::Uuid;

/// Segment reference counts per space-map page.
pub const SM_COUNTS_PER_PAGE: usize = (PAGE_BYTES - HEADER_BYTES) / 4;

/// Encodes a space-map page: reference counts of segments
/// `[index × SM_COUNTS_PER_PAGE, ..)`.
pub fn encode_space_map(page: u64, txn: u64, pool: &Uuid, index: u64, counts: &[u32]) -> Vec<u8> {
    debug_assert!(counts.len() <= SM_COUNTS_PER_PAGE);
    let h = PageHeader {
        kind: PageKind::SpaceMap,
        count: counts.len() as u32,
        page,
        txn,
        next: index,
    };
    let mut b = new_page(&h, pool);
    let mut w = Writer::new(&mut b, HEADER_BYTES);
    for &c in counts {
        w.u32(c);
    }
    seal(&mut b);
    b
}

/// Decodes a space-map page: (the transaction that wrote it, its counts).
pub fn decode_space_map(
    b: &[u8],
    page: u64,
    pool: &Uuid,
    index: u64,
) -> Result<(u64, Vec<u32>), MetaError> {
    let h = decode_header(b, page, pool, PageKind::SpaceMap)?;
    if h.next != index {
        return Err(MetaError::Field {
            page,
            field: "index",
            reason: format!("holds space-map page {}, expected {index}", h.next),
        });
    }
    if h.count as usize > SM_COUNTS_PER_PAGE {
        return Err(MetaError::Field {
            page,
            field: "count",
            reason: format!("{} counts", h.count),
        });
    }
    let mut r = Reader::new(&b[..PAGE_BYTES], HEADER_BYTES);
    Ok((h.txn, (0..h.count).map(|_| r.u32().unwrap_or(0)).collect()))
}
