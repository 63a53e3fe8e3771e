//! A small blocking NBD client over a std TCP socket, for `tessera send` and `receive`:
//! fixed newstyle negotiation with `NBD_OPT_GO`, simple replies, reads and writes with
//! a window of requests in flight, flush. Every socket operation has a time limit.

use crate::frontend::nbd::proto::{
    CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES,
    FLAG_FIXED_NEWSTYLE, IHAVEOPT, INFO_EXPORT, NBD_MAGIC, OPT_GO, OPTION_REPLY_MAGIC, REP_ACK,
    REP_INFO, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The error bit of an option reply type.
const REP_ERR: u32 = 1 << 31;
/// The largest request this client sends (the server's limit is larger).
pub const MAX_REQUEST: usize = 1 << 20;
/// Requests in flight.
const WINDOW: usize = 8;
/// The longest any socket read or write may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an NBD exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdClientError {
    #[error("NBD {addr}: cannot connect: {cause}")]
    Connect { addr: String, cause: io::Error },
    #[error("NBD {addr}: {what}: {cause}")]
    Io {
        addr: String,
        what: &'static str,
        cause: io::Error,
    },
    #[error("NBD {addr}: {msg}")]
    Protocol { addr: String, msg: String },
    #[error("NBD {addr}: {op} of {len} bytes at {offset} failed: error {errno}")]
    Failed {
        addr: String,
        op: &'static str,
        offset: u64,
        len: usize,
        errno: u32,
    },
}

/// A connection in transmission phase to one export.
pub struct NbdClient {
    s: TcpStream,
    addr: String,
    size: u64,
    next_handle: u64,
}

impl NbdClient {
    /// Connects to `addr` and opens export `name`.
    pub fn connect(addr: &str, name: &str) -> Result<NbdClient, NbdClientError> {
        let s = TcpStream::connect(addr).map_err(|cause| NbdClientError::Connect {
            addr: addr.to_string(),
            cause,
        })?;
        let set = |s: &TcpStream| -> io::Result<()> {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)
        };
        let mut c = NbdClient {
            addr: addr.to_string(),
            size: 0,
            next_handle: 1,
            s,
        };
        set(&c.s).map_err(|e| c.io("socket options", e))?;
        c.handshake(name)?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn io(&self, what: &'static str, cause: io::Error) -> NbdClientError {
        NbdClientError::Io {
            addr: self.addr.clone(),
            what,
            cause,
        }
    }

    fn proto(&self, msg: String) -> NbdClientError {
        NbdClientError::Protocol {
            addr: self.addr.clone(),
            msg,
        }
    }

    fn read_n(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), NbdClientError> {
        self.s.read_exact(buf).map_err(|e| self.io(what, e))
    }

    fn write_all(&mut self, buf: &[u8], what: &'static str) -> Result<(), NbdClientError> {
        self.s.write_all(buf).map_err(|e| self.io(what, e))
    }

    fn handshake(&mut self, name: &str) -> Result<(), NbdClientError> {
        let mut g = [0u8; 18];
        self.read_n(&mut g, "greeting")?;
        let magic = u64::from_be_bytes(g[0..8].try_into().unwrap_or_default());
        let opt = u64::from_be_bytes(g[8..16].try_into().unwrap_or_default());
        let flags = u16::from_be_bytes([g[16], g[17]]);
        if magic != NBD_MAGIC || opt != IHAVEOPT || flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.proto(format!(
                "not a fixed-newstyle NBD server (greeting {g:02x?})"
            )));
        }
        self.write_all(
            &(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes(),
            "client flags",
        )?;
        let mut o = Vec::new();
        o.extend_from_slice(&IHAVEOPT.to_be_bytes());
        o.extend_from_slice(&OPT_GO.to_be_bytes());
        o.extend_from_slice(&(4 + name.len() as u32 + 2).to_be_bytes());
        o.extend_from_slice(&(name.len() as u32).to_be_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(&0u16.to_be_bytes());
        self.write_all(&o, "NBD_OPT_GO")?;
        let mut size = None;
        loop {
            let mut h = [0u8; 20];
            self.read_n(&mut h, "option reply")?;
            let magic = u64::from_be_bytes(h[0..8].try_into().unwrap_or_default());
            let ty = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
            let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
            if magic != OPTION_REPLY_MAGIC || len > 64 << 10 {
                return Err(self.proto(format!("bad option reply {h:02x?}")));
            }
            let mut d = vec![0u8; len];
            self.read_n(&mut d, "option reply data")?;
            match ty {
                REP_ACK => break,
                REP_INFO if d.len() >= 12 && u16::from_be_bytes([d[0], d[1]]) == INFO_EXPORT => {
                    size = Some(u64::from_be_bytes(d[2..10].try_into().unwrap_or_default()));
                }
                REP_INFO => {}
                t if t & REP_ERR != 0 => {
                    return Err(self.proto(format!(
                        "export `{name}` refused (reply {t:#x}: {})",
                        String::from_utf8_lossy(&d)
                    )));
                }
                t => return Err(self.proto(format!("unexpected option reply {t:#x}"))),
            }
        }
        self.size = size.ok_or_else(|| self.proto("no NBD_INFO_EXPORT before the ACK".into()))?;
        Ok(())
    }

    fn request(&mut self, ty: u16, offset: u64, len: u32) -> Result<u64, NbdClientError> {
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut r = [0u8; 28];
        r[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r[6..8].copy_from_slice(&ty.to_be_bytes());
        r[8..16].copy_from_slice(&handle.to_be_bytes());
        r[16..24].copy_from_slice(&offset.to_be_bytes());
        r[24..28].copy_from_slice(&len.to_be_bytes());
        self.write_all(&r, "request")?;
        Ok(handle)
    }

    /// Reads one simple reply header: (handle, error).
    fn reply(&mut self) -> Result<(u64, u32), NbdClientError> {
        let mut h = [0u8; 16];
        self.read_n(&mut h, "reply")?;
        if u32::from_be_bytes([h[0], h[1], h[2], h[3]]) != SIMPLE_REPLY_MAGIC {
            return Err(self.proto(format!("bad reply {h:02x?}")));
        }
        let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        Ok((
            u64::from_be_bytes(h[8..16].try_into().unwrap_or_default()),
            err,
        ))
    }

    /// Reads `buf.len()` bytes at `offset`, up to [`WINDOW`] requests of at most
    /// [`MAX_REQUEST`] bytes in flight.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdClientError> {
        let chunks: Vec<(usize, usize)> = (0..buf.len())
            .step_by(MAX_REQUEST)
            .map(|at| (at, MAX_REQUEST.min(buf.len() - at)))
            .collect();
        let mut pending: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut next = 0;
        while next < chunks.len() || !pending.is_empty() {
            while next < chunks.len() && pending.len() < WINDOW {
                let (at, len) = chunks[next];
                let h = self.request(CMD_READ, offset + at as u64, len as u32)?;
                pending.insert(h, (at, len));
                next += 1;
            }
            let (h, err) = self.reply()?;
            let Some((at, len)) = pending.remove(&h) else {
                return Err(self.proto(format!("reply to unknown handle {h}")));
            };
            if err != 0 {
                return Err(NbdClientError::Failed {
                    addr: self.addr.clone(),
                    op: "read",
                    offset: offset + at as u64,
                    len,
                    errno: err,
                });
            }
            let (s, addr) = (&mut self.s, &self.addr);
            s.read_exact(&mut buf[at..at + len])
                .map_err(|cause| NbdClientError::Io {
                    addr: addr.clone(),
                    what: "read data",
                    cause,
                })?;
        }
        Ok(())
    }

    /// Reads the records `recs` (offset, length of at most [`MAX_REQUEST`] bytes), with up
    /// to `window` of them in flight, and hands each one's bytes to `sink` in the order of
    /// `recs`, whatever order the server answers in. Buffers come from `free` when it has
    /// one of the length (`sink`'s caller gives them back). Stops early, without an error,
    /// when `sink` returns false.
    pub fn read_records(
        &mut self,
        recs: &[(u64, usize)],
        window: usize,
        free: &std::sync::Mutex<Vec<Vec<u8>>>,
        mut sink: impl FnMut(u64, Vec<u8>) -> bool,
    ) -> Result<(), NbdClientError> {
        // Requests in flight, in `recs` order: handle, record, and its bytes once read.
        let mut pending: std::collections::VecDeque<(u64, usize, Option<Vec<u8>>)> =
            std::collections::VecDeque::with_capacity(window);
        let mut next = 0;
        while next < recs.len() || !pending.is_empty() {
            while next < recs.len() && pending.len() < window.max(1) {
                let (offset, len) = recs[next];
                if len > MAX_REQUEST {
                    return Err(self.proto(format!(
                        "a record of {len} bytes is longer than a request's {MAX_REQUEST}"
                    )));
                }
                let h = self.request(CMD_READ, offset, len as u32)?;
                pending.push_back((h, next, None));
                next += 1;
            }
            let (h, err) = self.reply()?;
            let Some(slot) = pending.iter().position(|p| p.0 == h && p.2.is_none()) else {
                return Err(self.proto(format!("reply to unknown handle {h}")));
            };
            let (offset, len) = recs[pending[slot].1];
            if err != 0 {
                return Err(NbdClientError::Failed {
                    addr: self.addr.clone(),
                    op: "read",
                    offset,
                    len,
                    errno: err,
                });
            }
            let mut buf = free
                .lock()
                .ok()
                .and_then(|mut f| f.pop())
                .unwrap_or_default();
            buf.resize(len, 0);
            self.read_n(&mut buf, "read data")?;
            pending[slot].2 = Some(buf);
            while pending.front().is_some_and(|p| p.2.is_some()) {
                if let Some((_, i, Some(buf))) = pending.pop_front()
                    && !sink(recs[i].0, buf)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset`, up to [`WINDOW`] requests in flight.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdClientError> {
        let mut pending: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut at = 0;
        while at < data.len() || !pending.is_empty() {
            while at < data.len() && pending.len() < WINDOW {
                let len = MAX_REQUEST.min(data.len() - at);
                let h = self.request(CMD_WRITE, offset + at as u64, len as u32)?;
                self.write_all(&data[at..at + len], "write data")?;
                pending.insert(h, (at, len));
                at += len;
            }
            let (h, err) = self.reply()?;
            let Some((a, len)) = pending.remove(&h) else {
                return Err(self.proto(format!("reply to unknown handle {h}")));
            };
            if err != 0 {
                return Err(NbdClientError::Failed {
                    addr: self.addr.clone(),
                    op: "write",
                    offset: offset + a as u64,
                    len,
                    errno: err,
                });
            }
        }
        Ok(())
    }

    /// Flushes the export (everything written before is durable when it returns).
    pub fn flush(&mut self) -> Result<(), NbdClientError> {
        let h = self.request(CMD_FLUSH, 0, 0)?;
        let (got, err) = self.reply()?;
        if got != h || err != 0 {
            return Err(NbdClientError::Failed {
                addr: self.addr.clone(),
                op: "flush",
                offset: 0,
                len: 0,
                errno: err,
            });
        }
        Ok(())
    }

    /// Ends the session (`NBD_CMD_DISC`).
    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0);
    }
}
