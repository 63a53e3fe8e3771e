//! A small blocking client of the JSON-RPC socket: `tessera rpc`, and the tests. It
//! speaks exactly what SPDK's client does (one request object, no delimiter; one
//! response object read off a streaming decoder).

use super::error::RpcError;
use serde_json::{Map, Value, json};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {cause} (is `tessera serve` running?)")]
    Connect { path: String, cause: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the server closed the connection before answering")]
    Closed,
    #[error("invalid response: {0}")]
    BadResponse(String),
}

/// A connection to a server.
pub struct RpcClient {
    stream: UnixStream,
    next_id: u64,
    buf: Vec<u8>,
}

impl RpcClient {
    /// Connects to the socket at `path`; each answer must come within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<RpcClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|cause| ClientError::Connect {
            path: path.display().to_string(),
            cause,
        })?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RpcClient {
            stream,
            next_id: 1,
            buf: Vec::new(),
        })
    }

    /// Calls `method`; the outer error is a transport failure, the inner one the
    /// server's error response.
    pub fn call(
        &mut self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Result<Value, RpcError>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({"jsonrpc": "2.0", "method": method, "id": id});
        if let Some(p) = params {
            req["params"] = p;
        }
        self.stream
            .write_all(&serde_json::to_vec(&req).expect("JSON"))?;
        let resp = self.read_value()?;
        if resp.get("id") != Some(&json!(id)) {
            return Err(ClientError::BadResponse(format!(
                "expected id {id}, got {resp}"
            )));
        }
        parse_response(resp)
    }

    /// Reads one JSON value off the stream.
    pub fn read_value(&mut self) -> Result<Value, ClientError> {
        let mut chunk = [0u8; 64 << 10];
        loop {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            match it.next() {
                Some(Ok(v)) => {
                    let used = it.byte_offset();
                    self.buf.drain(..used);
                    return Ok(v);
                }
                Some(Err(e)) if !e.is_eof() => {
                    return Err(ClientError::BadResponse(e.to_string()));
                }
                _ => {}
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A response object's result or error.
pub fn parse_response(resp: Value) -> Result<Result<Value, RpcError>, ClientError> {
    if let Some(e) = resp.get("error") {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0) as i32;
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return Ok(Err(RpcError { code, message }));
    }
    resp.get("result")
        .cloned()
        .map(Ok)
        .ok_or_else(|| ClientError::BadResponse(format!("neither result nor error: {resp}")))
}

/// Builds a method's params from command-line words: `--name value`, `--name=value`,
/// a bare `--flag` (true), and `--json '{...}'` (an object the named ones add to).
/// Dashes in names become underscores; a value is taken as JSON when it parses as JSON
/// (`64`, `true`, `"123"`, `[1,2]`), else as a string.
pub fn params_from_args(args: &[String]) -> Result<Option<Value>, String> {
    let mut obj = Map::new();
    let mut named = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some(flag) = a.strip_prefix("--") else {
            return Err(format!(
                "unexpected argument `{a}`: give parameters as --name value (or --json '{{...}}')"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.to_string(), None),
        };
        let value = match inline {
            Some(v) => Some(v),
            None if i + 1 < args.len() && !args[i + 1].starts_with("--") => {
                i += 1;
                Some(args[i].clone())
            }
            None => None,
        };
        if name == "json" {
            let v = value.ok_or("--json needs a JSON object")?;
            match serde_json::from_str::<Value>(&v) {
                Ok(Value::Object(m)) => obj.extend(m),
                Ok(_) => return Err("--json: expected a JSON object".into()),
                Err(e) => return Err(format!("--json: {e}")),
            }
        } else if name.is_empty() {
            return Err("`--` without a parameter name".into());
        } else {
            let v = match value {
                None => Value::Bool(true),
                Some(v) => serde_json::from_str(&v).unwrap_or(Value::String(v)),
            };
            named.push((name.replace('-', "_"), v));
        }
        i += 1;
    }
    obj.extend(named);
    Ok((!obj.is_empty()).then_some(Value::Object(obj)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line_params() {
        let p = params_from_args(&args(&[
            "--lvs-name",
            "pool0",
            "--size_in_mib=64",
            "--thin-provision",
            "--lvol-name",
            "\"123\"",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            p,
            json!({"lvs_name": "pool0", "size_in_mib": 64, "thin_provision": true, "lvol_name": "123"})
        );
        let p = params_from_args(&args(&["--json", "{\"a\": 1, \"b\": 2}", "--b", "3"]))
            .unwrap()
            .unwrap();
        assert_eq!(p, json!({"a": 1, "b": 3}));
        assert_eq!(params_from_args(&[]).unwrap(), None);
        assert!(params_from_args(&args(&["oops"])).is_err());
        assert!(params_from_args(&args(&["--json", "[1]"])).is_err());
    }
}
