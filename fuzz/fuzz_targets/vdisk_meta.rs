//! Fuzzes the decoders of a pool's on-disk metadata: labels, superblocks, and table,
//! directory and space-map pages. Whatever the bytes (valid checksums included: the
//! target re-seals pages half of the time by encoding what it decoded), decoding must
//! never panic, and what decodes must re-encode to a page that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::vdisk::meta;
use tessera::vdisk::meta::label::Label;
use tessera::vdisk::meta::superblock::Superblock;

fuzz_target!(|data: &[u8]| {
    let mut page = vec![0u8; meta::PAGE_BYTES];
    let pool = uuid::Uuid::from_u128(0x7e55);
    let n = data.len().min(meta::PAGE_BYTES);
    page[..n].copy_from_slice(&data[..n]);
    let _ = Label::decode(&page, "fuzz");
    if let Ok(sb) = Superblock::decode(&page, "A") {
        assert_eq!(Superblock::decode(&sb.encode(), "A").as_ref(), Ok(&sb));
    }
    let index = u64::from(data.first().copied().unwrap_or(0));
    // Half of the inputs become pages with valid headers, to reach the payload decoders.
    if data.len() > 1 && data[1] & 1 == 1 {
        let kind = match data[1] >> 1 & 3 {
            0 => meta::PageKind::Internal,
            1 => meta::PageKind::Leaf,
            2 => meta::PageKind::Directory,
            _ => meta::PageKind::SpaceMap,
        };
        page = meta::forge_page(data, kind, index, &pool);
    }
    if let Ok(exts) = meta::node::decode_leaf(&page, index, &pool, 1 << 20) {
        // Round trip through the in-memory form.
        let built: Vec<_> = exts
            .iter()
            .map(|r| r.build(|seg, w| std::sync::Arc::new(tessera::vdisk::map::Fill::from_words(w, 0, seg))))
            .collect();
        let again = meta::node::encode_leaf(index, 1, &pool, &built);
        assert_eq!(meta::node::decode_leaf(&again, index, &pool, 1 << 20).as_ref(), Ok(&exts));
    }
    if let Ok(entries) = meta::node::decode_internal(&page, index, &pool, 1 << 20) {
        let again = meta::node::encode_internal(index, 1, &pool, &entries);
        assert_eq!(meta::node::decode_internal(&again, index, &pool, 1 << 20).as_ref(), Ok(&entries));
    }
    let _ = meta::directory::decode_directory(&page, index, &pool, 1 << 20);
    let _ = meta::space_map::decode_space_map(&page, index, &pool, index);
});
