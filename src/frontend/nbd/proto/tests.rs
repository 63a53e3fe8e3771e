use super::*;
use proptest::prelude::*;

#[test]
fn greeting_round_trips_and_bad_magic_is_named() {
    let mut out = Vec::new();
    encode_greeting(&mut out, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    assert_eq!(out.len(), GREETING_LEN);
    assert_eq!(&out[..8], b"NBDMAGIC");
    assert_eq!(&out[8..16], b"IHAVEOPT");
    assert_eq!(parse_greeting(&out), Ok(Some(3)));
    assert_eq!(parse_greeting(&out[..17]), Ok(None));
    let mut bad = out.clone();
    bad[0] = b'X';
    assert!(matches!(
        parse_greeting(&bad),
        Err(HandshakeError::BadMagic {
            expected: NBD_MAGIC,
            ..
        })
    ));
    let mut bad = out;
    bad[15] = b'X';
    assert!(matches!(
        parse_greeting(&bad),
        Err(HandshakeError::BadMagic {
            expected: IHAVEOPT,
            ..
        })
    ));
}

#[test]
fn client_flags_are_checked() {
    let offered = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;
    assert_eq!(
        parse_client_flags(3, offered),
        Ok(ClientFlags {
            fixed_newstyle: true,
            no_zeroes: true
        })
    );
    assert_eq!(parse_client_flags(0, offered), Ok(ClientFlags::default()));
    assert_eq!(
        parse_client_flags(1 << 7, offered),
        Err(HandshakeError::UnknownClientFlags(1 << 7))
    );
    assert_eq!(
        parse_client_flags(FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE),
        Err(HandshakeError::UnofferedNoZeroes)
    );
}

#[test]
fn option_headers_parse_incrementally() {
    let mut out = Vec::new();
    encode_option(&mut out, OPT_GO, b"abc");
    assert_eq!(out.len(), OPTION_HEADER_LEN + 3);
    for n in 0..OPTION_HEADER_LEN {
        assert_eq!(parse_option_header(&out[..n]), Ok(None), "{n} bytes");
    }
    assert_eq!(
        parse_option_header(&out),
        Ok(Some(OptionHeader {
            option: OPT_GO,
            len_bytes: 3
        }))
    );
    out[3] ^= 1;
    assert!(matches!(
        parse_option_header(&out),
        Err(HandshakeError::BadMagic { .. })
    ));
}

#[test]
fn every_option_parses_or_names_its_problem() {
    assert_eq!(
        parse_option(OPT_EXPORT_NAME, b"vd0"),
        Ok(ClientOption::ExportName { name: "vd0".into() })
    );
    assert_eq!(parse_option(OPT_ABORT, b"ignored"), Ok(ClientOption::Abort));
    assert_eq!(parse_option(OPT_LIST, b""), Ok(ClientOption::List));
    assert_eq!(
        parse_option(OPT_LIST, b"x"),
        Err(OptionError::UnexpectedData {
            option: "NBD_OPT_LIST",
            len: 1
        })
    );
    assert_eq!(parse_option(OPT_STARTTLS, b""), Ok(ClientOption::StartTls));
    assert_eq!(
        parse_option(OPT_STRUCTURED_REPLY, b""),
        Ok(ClientOption::StructuredReply)
    );
    assert!(parse_option(OPT_STRUCTURED_REPLY, b"1").is_err());
    assert_eq!(
        parse_option(OPT_EXTENDED_HEADERS, b""),
        Ok(ClientOption::ExtendedHeaders)
    );
    assert_eq!(
        parse_option(
            OPT_GO,
            &encode_info_request("disk", &[INFO_BLOCK_SIZE, INFO_NAME])
        ),
        Ok(ClientOption::Go {
            name: "disk".into(),
            requests: vec![INFO_BLOCK_SIZE, INFO_NAME]
        })
    );
    assert_eq!(
        parse_option(OPT_INFO, &encode_info_request("", &[])),
        Ok(ClientOption::Info {
            name: String::new(),
            requests: vec![]
        })
    );
    assert_eq!(
        parse_option(
            OPT_SET_META_CONTEXT,
            &encode_meta_context_request("disk", &["base:allocation", "qemu:x"])
        ),
        Ok(ClientOption::SetMetaContext {
            export: "disk".into(),
            queries: vec!["base:allocation".into(), "qemu:x".into()]
        })
    );
    assert_eq!(
        parse_option(
            OPT_LIST_META_CONTEXT,
            &encode_meta_context_request("d", &[])
        ),
        Ok(ClientOption::ListMetaContext {
            export: "d".into(),
            queries: vec![]
        })
    );
    assert_eq!(
        parse_option(77, b"xyz"),
        Ok(ClientOption::Unknown { option: 77 })
    );
}

#[test]
fn malformed_options_are_refused_precisely() {
    // INFO: name length beyond the data.
    let mut d = encode_info_request("disk", &[1]);
    d[3] = 50;
    assert!(matches!(
        parse_option(OPT_INFO, &d),
        Err(OptionError::Truncated {
            field: "export name",
            ..
        })
    ));
    // INFO: missing request count.
    let d = [0, 0, 0, 1, b'a'];
    assert!(matches!(
        parse_option(OPT_INFO, &d),
        Err(OptionError::Truncated {
            field: "number of information requests",
            ..
        })
    ));
    // INFO: fewer requests than announced.
    let mut d = encode_info_request("a", &[1, 2]);
    d.truncate(d.len() - 1);
    assert!(matches!(
        parse_option(OPT_GO, &d),
        Err(OptionError::Truncated { .. })
    ));
    // INFO: trailing bytes.
    let mut d = encode_info_request("a", &[]);
    d.push(0);
    assert_eq!(
        parse_option(OPT_GO, &d),
        Err(OptionError::Trailing {
            option: "NBD_OPT_GO",
            len: 1
        })
    );
    // Names: NUL, bad UTF-8, too long.
    assert!(matches!(
        parse_option(OPT_EXPORT_NAME, b"a\0b"),
        Err(OptionError::Nul { .. })
    ));
    assert!(matches!(
        parse_option(OPT_EXPORT_NAME, &[0xff, 0xfe]),
        Err(OptionError::NotUtf8 { .. })
    ));
    assert!(matches!(
        parse_option(OPT_EXPORT_NAME, &[b'a'; 5000]),
        Err(OptionError::StringTooLong { len: 5000, .. })
    ));
    let mut d = vec![0, 0, 0x20, 0];
    d.extend(vec![b'a'; 8192]);
    assert!(matches!(
        parse_option(OPT_GO, &d),
        Err(OptionError::StringTooLong { len: 8192, .. })
    ));
    // Meta contexts: a query count that cannot fit, a query running past the end.
    let mut d = encode_meta_context_request("d", &[]);
    let n = d.len();
    d[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        parse_option(OPT_SET_META_CONTEXT, &d),
        Err(OptionError::Truncated {
            field: "queries",
            ..
        })
    ));
    let mut d = encode_meta_context_request("d", &["base:allocation"]);
    d.truncate(d.len() - 2);
    assert!(matches!(
        parse_option(OPT_LIST_META_CONTEXT, &d),
        Err(OptionError::Truncated { field: "query", .. })
    ));
    let mut d = encode_meta_context_request("d", &["base:"]);
    d.push(1);
    assert!(matches!(
        parse_option(OPT_LIST_META_CONTEXT, &d),
        Err(OptionError::Trailing { len: 1, .. })
    ));
    // Every error has a message for the human.
    assert_eq!(
        OptionError::Trailing {
            option: "NBD_OPT_GO",
            len: 1
        }
        .to_string(),
        "NBD_OPT_GO: 1 bytes after the last field"
    );
}

#[test]
fn option_replies_and_infos_round_trip() {
    let mut out = Vec::new();
    encode_option_reply(
        &mut out,
        OPT_INFO,
        REP_INFO,
        &encode_info_export(1 << 30, 0x1ff),
    );
    let h = parse_option_reply_header(&out).unwrap().unwrap();
    assert_eq!(
        h,
        OptionReplyHeader {
            option: OPT_INFO,
            reply_type: REP_INFO,
            len_bytes: 12
        }
    );
    assert_eq!(
        parse_info(&out[OPTION_REPLY_HEADER_LEN..]),
        Some(Info::Export {
            size_bytes: 1 << 30,
            flags: 0x1ff
        })
    );
    let sizes = BlockSizes {
        min_bytes: 512,
        preferred_bytes: 4096,
        max_bytes: 32 << 20,
    };
    let d = encode_info_block_size(sizes);
    assert_eq!(d.len(), 14);
    assert_eq!(parse_info(&d), Some(Info::BlockSize(sizes)));
    assert_eq!(
        parse_info(&encode_info_string(INFO_NAME, "vd0")),
        Some(Info::Name("vd0".into()))
    );
    assert_eq!(
        parse_info(&encode_info_string(INFO_DESCRIPTION, "d")),
        Some(Info::Description("d".into()))
    );
    assert_eq!(parse_info(&[0, 0, 1]), None, "truncated export info");
    assert_eq!(parse_info(&[0, 9]), Some(Info::Other { info: 9 }));
    let d = encode_rep_server("vd0", "a disk");
    assert_eq!(&d[..4], &3u32.to_be_bytes());
    assert_eq!(&d[4..], b"vd0a disk");
    let d = encode_meta_context(1, META_BASE_ALLOCATION);
    assert_eq!(&d[..4], &1u32.to_be_bytes());
    assert!(is_reply_error(REP_ERR_UNKNOWN) && !is_reply_error(REP_ACK));
    let mut out = Vec::new();
    encode_export_name_reply(&mut out, 4096, 3, true);
    assert_eq!(out.len(), 8 + 2 + 124);
    out.clear();
    encode_export_name_reply(&mut out, 4096, 3, false);
    assert_eq!(out.len(), 10);
}

#[test]
fn requests_parse_in_both_modes() {
    let h = RequestHeader {
        flags: CMD_FLAG_FUA,
        kind: CMD_WRITE,
        cookie: 0x0102_0304_0506_0708,
        offset_bytes: 1 << 40,
        len_bytes: 4096,
    };
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let mut out = Vec::new();
        encode_request(&mut out, mode, &h);
        assert_eq!(out.len(), mode.request_len());
        for n in 0..out.len() {
            assert_eq!(parse_request(&out[..n], mode), Ok(None), "{mode:?} {n}");
        }
        out.extend_from_slice(b"trailing");
        assert_eq!(parse_request(&out, mode), Ok(Some((h, mode.request_len()))));
        assert_eq!(h.payload_len(mode), 4096);
    }
    // The other mode's magic is bad magic, found from the first four bytes.
    let mut out = Vec::new();
    encode_request(&mut out, HeaderMode::Compact, &h);
    assert_eq!(
        parse_request(&out[..4], HeaderMode::Extended),
        Err(BadRequestMagic {
            expected: EXTENDED_REQUEST_MAGIC,
            found: REQUEST_MAGIC
        })
    );
    // 64-bit lengths only in extended mode.
    let big = RequestHeader {
        kind: CMD_TRIM,
        len_bytes: 1 << 40,
        ..h
    };
    let mut out = Vec::new();
    encode_request(&mut out, HeaderMode::Extended, &big);
    assert_eq!(
        parse_request(&out, HeaderMode::Extended)
            .unwrap()
            .unwrap()
            .0
            .len_bytes,
        1 << 40
    );
    assert_eq!(big.payload_len(HeaderMode::Extended), 0);
    let with_payload = RequestHeader {
        flags: CMD_FLAG_PAYLOAD_LEN,
        kind: CMD_BLOCK_STATUS,
        ..h
    };
    assert_eq!(with_payload.payload_len(HeaderMode::Extended), 4096);
    assert_eq!(with_payload.payload_len(HeaderMode::Compact), 0);
    assert_eq!(
        h.to_string(),
        "NBD_CMD_WRITE flags 0x1 cookie 0x102030405060708 offset 1099511627776 length 4096"
    );
}

#[test]
fn replies_encode_and_parse() {
    let mut hdr = [0u8; MAX_REPLY_HEADER_LEN];
    let n = write_simple_reply(&mut hdr, NBD_EINVAL, 42);
    assert_eq!(
        parse_reply_header(&hdr[..n]),
        Ok(Some((
            ReplyHeader::Simple {
                error: NBD_EINVAL,
                cookie: 42
            },
            SIMPLE_REPLY_LEN
        )))
    );
    for mode in [HeaderMode::Compact, HeaderMode::Extended] {
        let n = write_offset_data_header(&mut hdr, mode, 7, 8192, 4096);
        let (h, len) = parse_reply_header(&hdr[..n]).unwrap().unwrap();
        let ReplyHeader::Chunk(c) = h else {
            panic!("chunk expected")
        };
        assert_eq!(len + 8, n);
        assert_eq!((c.kind, c.flags, c.cookie, c.len_bytes), (1, 1, 7, 4104));
        assert_eq!(&hdr[len..n], &8192u64.to_be_bytes());
        if mode == HeaderMode::Extended {
            assert_eq!(c.offset_bytes, 8192, "extended replies echo the offset");
        }
        let n = write_error_chunk_header(&mut hdr, mode, 9, 0, NBD_EPERM, 5);
        let (h, len) = parse_reply_header(&hdr[..n]).unwrap().unwrap();
        let ReplyHeader::Chunk(c) = h else {
            panic!("chunk expected")
        };
        assert_eq!((c.kind, c.len_bytes), (REPLY_TYPE_ERROR, 11));
        let mut payload = hdr[len..n].to_vec();
        payload.extend_from_slice(b"nope!");
        assert_eq!(
            parse_error_payload(&payload),
            Some((NBD_EPERM, "nope!".into()))
        );
        let extents = [
            Extent {
                len_bytes: 4096,
                flags: STATE_HOLE | STATE_ZERO,
            },
            Extent {
                len_bytes: 1 << 20,
                flags: 0,
            },
        ];
        let mut p = Vec::new();
        let kind = encode_block_status_payload(&mut p, mode, 1, &extents);
        assert_eq!(
            p.len(),
            if mode == HeaderMode::Compact {
                4 + 16
            } else {
                8 + 32
            }
        );
        assert_eq!(
            parse_block_status_payload(kind, &p),
            Some((1, extents.to_vec()))
        );
    }
    assert_eq!(
        parse_reply_header(&[1, 2, 3, 4]),
        Err(BadReplyMagic(0x0102_0304))
    );
    assert_eq!(
        parse_block_status_payload(REPLY_TYPE_BLOCK_STATUS, &[0, 0, 0, 1]),
        None
    );
}

#[test]
fn errnos_stay_within_the_protocol_list() {
    assert_eq!(nbd_errno(libc::EPERM), NBD_EPERM);
    assert_eq!(nbd_errno(libc::ENOSPC), NBD_ENOSPC);
    assert_eq!(nbd_errno(libc::ENOTSUP), NBD_ENOTSUP);
    assert_eq!(nbd_errno(libc::ENOENT), NBD_EIO);
    assert_eq!(nbd_errno(-1), NBD_EIO);
    assert_eq!(nbd_errno(0), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The parsers are total: any bytes give a value or an error, never a panic.
    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), option in 0u32..14) {
        let _ = parse_greeting(&bytes);
        let _ = parse_option_header(&bytes);
        let _ = parse_option(option, &bytes);
        let _ = parse_option_reply_header(&bytes);
        let _ = parse_info(&bytes);
        let _ = parse_request(&bytes, HeaderMode::Compact);
        let _ = parse_request(&bytes, HeaderMode::Extended);
        let _ = parse_reply_header(&bytes);
        let _ = parse_error_payload(&bytes);
        let _ = parse_block_status_payload(REPLY_TYPE_BLOCK_STATUS, &bytes);
        let _ = parse_block_status_payload(REPLY_TYPE_BLOCK_STATUS_EXT, &bytes);
    }

    /// Whatever a request header holds, validation gives a verdict.
    #[test]
    fn request_checks_are_total(
        flags in any::<u16>(), kind in 0u16..12, offset in any::<u64>(), len in any::<u64>(),
        extended in any::<bool>(), ro in any::<bool>(),
    ) {
        use crate::frontend::nbd::check::{check_request, ExportLimits};
        let limits = ExportLimits {
            size_bytes: 1 << 30,
            block_size: 4096,
            max_payload_bytes: 32 << 20,
            read_only: ro,
            can_trim: true,
            can_write_zeroes: true,
            chunked: extended,
            block_status: extended,
            mode: if extended { HeaderMode::Extended } else { HeaderMode::Compact },
        };
        let h = RequestHeader { flags, kind, cookie: 1, offset_bytes: offset, len_bytes: len };
        let _ = check_request(&h, &limits);
    }

    /// Requests survive an encode/parse round trip.
    #[test]
    fn requests_round_trip(flags in any::<u16>(), kind in any::<u16>(), cookie in any::<u64>(),
                           offset in any::<u64>(), len in any::<u32>()) {
        let h = RequestHeader { flags, kind, cookie, offset_bytes: offset, len_bytes: len as u64 };
        for mode in [HeaderMode::Compact, HeaderMode::Extended] {
            let mut out = Vec::new();
            encode_request(&mut out, mode, &h);
            prop_assert_eq!(parse_request(&out, mode), Ok(Some((h, mode.request_len()))));
        }
    }

    /// INFO/GO and meta-context options survive an encode/parse round trip.
    #[test]
    fn options_round_trip(name in "[a-z0-9:/._-]{0,40}", reqs in proptest::collection::vec(any::<u16>(), 0..8),
                          queries in proptest::collection::vec("[a-z]{1,8}:[a-z]{0,12}", 0..5)) {
        prop_assert_eq!(
            parse_option(OPT_GO, &encode_info_request(&name, &reqs)),
            Ok(ClientOption::Go { name: name.clone(), requests: reqs.clone() })
        );
        let q: Vec<&str> = queries.iter().map(String::as_str).collect();
        prop_assert_eq!(
            parse_option(OPT_SET_META_CONTEXT, &encode_meta_context_request(&name, &q)),
            Ok(ClientOption::SetMetaContext { export: name.clone(), queries: queries.clone() })
        );
    }
}
