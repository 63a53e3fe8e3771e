//! The JSON-RPC 2.0 wire format as SPDK speaks it over its Unix socket — pure, total and
//! fuzzed (`fuzz/fuzz_targets/rpc_request.rs`).
//!
//! # Framing
//!
//! SPDK's client (`spdk.rpc.client.JSONRPCClient`) writes each request as one JSON
//! object (pretty-printed, several pipelined requests separated by a newline, a batch
//! as one JSON array) and reads responses with a streaming decoder that takes one JSON
//! value off the front of its buffer: there is no length prefix and no delimiter. The
//! [`Framer`] therefore finds where a top-level object or array ends by following its
//! structure (brackets, strings, escapes) without parsing it, byte by byte as data
//! arrives, so a request split over many reads costs one scan. A frame that passes
//! [`MAX_REQUEST_BYTES`] or that cannot be JSON at all (a top-level scalar, a closing
//! bracket that does not match) is fatal: it is answered and the connection closed,
//! since the stream cannot be resynchronised. A frame whose brackets balance but whose
//! content is not valid JSON gets a parse error and the connection goes on.
//!
//! # Requests and responses
//!
//! [`parse_frame`] turns a frame into a single request or a batch; each request is
//! either valid ([`Request`]) or already an error [`Response`]. A request without an
//! `id` member is a notification and gets no response. Responses are written as one
//! compact JSON value followed by a newline ([`encode`]).

use super::error::RpcError;
use serde_json::{Map, Value};

/// The largest request accepted, in bytes (a batch counts as one request).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// Why a byte stream cannot go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// A request passed the size limit before it ended.
    TooLarge { limit_bytes: usize },
    /// A byte that cannot start or continue a JSON object or array at top level.
    NotJson { byte: u8, offset: usize },
    /// A closing bracket that does not match the open one.
    Mismatched { byte: u8, offset: usize },
}

impl FramingError {
    /// The error response for this failure.
    pub fn to_error(&self) -> RpcError {
        match self {
            FramingError::TooLarge { limit_bytes } => RpcError::invalid_request(format!(
                "request larger than {limit_bytes} bytes; closing the connection"
            )),
            FramingError::NotJson { byte, offset } => RpcError::parse(format!(
                "parse error: byte {offset} ({}) cannot start a JSON-RPC request (an object or an array); closing the connection",
                show_byte(*byte)
            )),
            FramingError::Mismatched { byte, offset } => RpcError::parse(format!(
                "parse error: unbalanced `{}` at byte {offset}; closing the connection",
                *byte as char
            )),
        }
    }
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// What [`Framer::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One complete top-level value (object or array), bytes included.
    Complete(Vec<u8>),
    /// More bytes are needed.
    Incomplete,
    /// The stream cannot go on.
    Fatal(FramingError),
}

/// Cuts a byte stream into top-level JSON objects and arrays.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned.
    scanned: usize,
    /// Where the current frame starts in `buf` (whitespace before it is skipped).
    start: usize,
    /// Open brackets of the current frame (the closers expected, innermost last).
    open: Vec<u8>,
    in_string: bool,
    escape: bool,
    /// Bytes consumed from the stream before `buf[0]` (for error offsets).
    consumed: usize,
    limit_bytes: usize,
    failed: Option<FramingError>,
}

impl Framer {
    /// A framer refusing requests above `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            scanned: 0,
            start: 0,
            open: Vec::new(),
            in_string: false,
            escape: false,
            consumed: 0,
            limit_bytes,
            failed: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// True if part of a request is buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next complete frame, if the buffered bytes hold one.
    pub fn next_frame(&mut self) -> Frame {
        if let Some(e) = &self.failed {
            return Frame::Fatal(e.clone());
        }
        while self.scanned < self.buf.len() {
            let i = self.scanned;
            let b = self.buf[i];
            self.scanned += 1;
            if self.open.is_empty() {
                match b {
                    // Whitespace between requests.
                    b' ' | b'\t' | b'\n' | b'\r' => self.start = i + 1,
                    b'{' => self.open.push(b'}'),
                    b'[' => self.open.push(b']'),
                    _ => {
                        return self.fail(FramingError::NotJson {
                            byte: b,
                            offset: self.consumed + i,
                        });
                    }
                }
                continue;
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' => self.open.push(b'}'),
                b'[' => self.open.push(b']'),
                b'}' | b']' => {
                    if self.open.pop() != Some(b) {
                        return self.fail(FramingError::Mismatched {
                            byte: b,
                            offset: self.consumed + i,
                        });
                    }
                    if self.open.is_empty() {
                        let frame = self.buf[self.start..=i].to_vec();
                        self.buf.drain(..=i);
                        self.consumed += i + 1;
                        self.scanned = 0;
                        self.start = 0;
                        if frame.len() > self.limit_bytes {
                            return self.fail(FramingError::TooLarge {
                                limit_bytes: self.limit_bytes,
                            });
                        }
                        return Frame::Complete(frame);
                    }
                }
                _ => {}
            }
        }
        if self.open.is_empty() {
            // Only whitespace is buffered: drop it.
            self.buf.clear();
            self.consumed += self.scanned;
            self.scanned = 0;
            self.start = 0;
        } else if self.buf.len() - self.start > self.limit_bytes {
            return self.fail(FramingError::TooLarge {
                limit_bytes: self.limit_bytes,
            });
        }
        Frame::Incomplete
    }

    fn fail(&mut self, e: FramingError) -> Frame {
        self.buf = Vec::new();
        self.scanned = 0;
        self.start = 0;
        self.open.clear();
        self.failed = Some(e.clone());
        Frame::Fatal(e)
    }
}

/// A valid request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `None` for a notification (no `id` member); otherwise a number, string or null.
    pub id: Option<Value>,
    pub method: String,
    /// `None` when absent or null.
    pub params: Option<Value>,
}

/// A response to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: Value,
    pub result: Result<Value, RpcError>,
}

impl Response {
    /// A success.
    pub fn ok(id: Value, result: Value) -> Response {
        Response {
            id,
            result: Ok(result),
        }
    }

    /// A failure.
    pub fn err(id: Value, e: RpcError) -> Response {
        Response { id, result: Err(e) }
    }

    /// The response object.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("jsonrpc".into(), Value::String("2.0".into()));
        m.insert("id".into(), self.id.clone());
        match &self.result {
            Ok(v) => m.insert("result".into(), v.clone()),
            Err(e) => m.insert("error".into(), e.to_json()),
        };
        Value::Object(m)
    }
}

/// A parsed frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// One request (or the error response it earned).
    Single(Result<Request, Response>),
    /// A non-empty batch.
    Batch(Vec<Result<Request, Response>>),
}

/// Parses one frame. An `Err` is the error response for the whole frame (invalid JSON,
/// an empty batch, neither object nor array).
pub fn parse_frame(frame: &[u8]) -> Result<Incoming, Response> {
    let v: Value = serde_json::from_slice(frame)
        .map_err(|e| Response::err(Value::Null, RpcError::parse(format!("parse error: {e}"))))?;
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Response::err(
                    Value::Null,
                    RpcError::invalid_request("invalid request: empty batch"),
                ));
            }
            Ok(Incoming::Batch(
                items.into_iter().map(parse_request).collect(),
            ))
        }
        v => Ok(Incoming::Single(parse_request(v))),
    }
}

/// Checks one request object.
pub fn parse_request(v: Value) -> Result<Request, Response> {
    let Value::Object(mut m) = v else {
        return Err(Response::err(
            Value::Null,
            RpcError::invalid_request("invalid request: a request is a JSON object"),
        ));
    };
    let id = match m.remove("id") {
        None => None,
        Some(id @ (Value::Number(_) | Value::String(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(Response::err(
                Value::Null,
                RpcError::invalid_request(
                    "invalid request: \"id\" must be a number, a string or null",
                ),
            ));
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    let bad = |msg: &str| Response::err(reply_id.clone(), RpcError::invalid_request(msg));
    match m.remove("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        Some(_) => return Err(bad("invalid request: \"jsonrpc\" must be \"2.0\"")),
        None => return Err(bad("invalid request: missing \"jsonrpc\": \"2.0\"")),
    }
    let method = match m.remove("method") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("invalid request: \"method\" must be a string")),
        None => return Err(bad("invalid request: missing \"method\"")),
    };
    let params = match m.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => {
            return Err(bad(
                "invalid request: \"params\" must be an object (or an array)",
            ));
        }
    };
    Ok(Request { id, method, params })
}

/// One response (or a batch of them) as bytes: compact JSON and a newline.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            match f.next_frame() {
                Frame::Incomplete => return out,
                Frame::Fatal(e) => {
                    out.push(Frame::Fatal(e));
                    return out;
                }
                c => out.push(c),
            }
        }
    }

    #[test]
    fn splits_pipelined_requests_as_spdk_sends_them() {
        // spdk.rpc.client: json.dumps(req, indent=2) joined by "\n", no trailing newline.
        let a = "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"a\",\n  \"id\": 1\n}";
        let b = "{\n  \"jsonrpc\": \"2.0\",\n  \"method\": \"b}\\\"{\",\n  \"id\": 2\n}";
        let all = format!("{a}\n{b}");
        // Byte by byte, and all at once.
        let mut f = Framer::new(1 << 20);
        let mut got = Vec::new();
        for byte in all.as_bytes() {
            f.push(std::slice::from_ref(byte));
            got.extend(frames(&mut f));
        }
        assert_eq!(
            got,
            vec![
                Frame::Complete(a.as_bytes().to_vec()),
                Frame::Complete(b.as_bytes().to_vec())
            ]
        );
        let mut f = Framer::new(1 << 20);
        f.push(all.as_bytes());
        assert_eq!(frames(&mut f).len(), 2);
        assert!(!f.has_partial());
    }

    #[test]
    fn fatal_framing() {
        let mut f = Framer::new(1 << 20);
        f.push(b"  hello");
        assert!(matches!(
            f.next_frame(),
            Frame::Fatal(FramingError::NotJson {
                byte: b'h',
                offset: 2
            })
        ));
        // Stays failed.
        f.push(b"{}");
        assert!(matches!(f.next_frame(), Frame::Fatal(_)));
        let mut f = Framer::new(1 << 20);
        f.push(b"{\"a\": [1}");
        assert!(matches!(
            f.next_frame(),
            Frame::Fatal(FramingError::Mismatched { byte: b'}', .. })
        ));
        let mut f = Framer::new(16);
        f.push(b"{\"method\": \"0123456789");
        assert_eq!(
            f.next_frame(),
            Frame::Fatal(FramingError::TooLarge { limit_bytes: 16 })
        );
    }

    #[test]
    fn requests() {
        let r = parse_frame(br#"{"jsonrpc":"2.0","method":"m","id":7,"params":{"a":1}}"#).unwrap();
        assert_eq!(
            r,
            Incoming::Single(Ok(Request {
                id: Some(Value::from(7)),
                method: "m".into(),
                params: Some(serde_json::json!({"a": 1}))
            }))
        );
        // Notification.
        let Incoming::Single(Ok(r)) = parse_frame(br#"{"jsonrpc":"2.0","method":"m"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.id, None);
        // Parse error keeps the stream going (the caller decides).
        let e = parse_frame(br#"{"jsonrpc": 2.0.0}"#).unwrap_err();
        assert_eq!(e.result.unwrap_err().code, super::super::error::PARSE_ERROR);
        // Invalid requests keep their id.
        let Incoming::Single(Err(e)) = parse_frame(br#"{"jsonrpc":"2.0","id":"x"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(e.id, Value::from("x"));
        assert_eq!(
            e.result.unwrap_err().code,
            super::super::error::INVALID_REQUEST
        );
        assert!(parse_frame(b"[]").is_err());
        let Incoming::Batch(b) =
            parse_frame(br#"[1, {"jsonrpc":"2.0","method":"m","id":1}]"#).unwrap()
        else {
            panic!()
        };
        assert!(b[0].is_err() && b[1].is_ok());
        let out = encode(&Response::ok(Value::from(1), Value::Bool(true)).to_json());
        assert_eq!(out, b"{\"id\":1,\"jsonrpc\":\"2.0\",\"result\":true}\n");
    }
}
