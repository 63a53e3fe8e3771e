//! NBD over TLS (`NBD_OPT_STARTTLS`) with real clients written by others — libnbd's
//! `nbdinfo` and `nbdcopy` (GnuTLS), qemu-img and qemu-io (qemu's TLS, GnuTLS too) —
//! on the thin disks of a real pool, with X.509 certificates the test makes with the
//! `openssl` command: a CA, a server certificate for 127.0.0.1 and localhost, a client
//! certificate with the allowed subject, one with another subject, and one with the
//! allowed subject from another CA. Checked:
//!
//! - data written and read back over TLS, verified by digest and by qemu-io patterns;
//! - `tls: required`: a plain client is refused with `NBD_REP_ERR_TLS_REQD` (as
//!   nbdinfo prints it, and on a raw socket for `NBD_OPT_GO`; `EXPORT_NAME` closes);
//! - client authorisation: the allowed subject gets in; another subject, another CA's
//!   certificate and no certificate are refused, and the refusal is logged;
//! - bad input: garbage instead of a ClientHello closes that connection with a logged
//!   error while others are served; a stalled handshake is closed after 10 s;
//! - a second `NBD_OPT_STARTTLS` inside TLS gets `NBD_REP_ERR_INVALID` and the
//!   connection goes on (LIST, GO, a read), from a client written here with OpenSSL;
//! - the key file check (a 0644 key is refused, naming the file), and a configuration
//!   with `tls: required` and no certificate (naming the field).
//!
//! A missing tool fails the test with the package to install (scripts/test.sh installs
//! them): nothing skips.

mod nbd_support;
mod process_support;

use nbd_support::*;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tessera::frontend::nbd::proto::*;
use tessera::frontend::nbd::{NbdLimits, NbdServer, NbdTlsSettings, TlsMode};

const T: Duration = Duration::from_secs(180);
/// The subject `tls_authz` allows (RFC 4514 order: most specific first).
const ALLOWED: &str = "CN=client1,O=Tessera Test";

// ---------------------------------------------------------------------------------------
// The log, captured: the server's refusals must be logged.

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        if std::env::var_os("RUST_LOG").is_some() {
            std::io::stderr().write_all(b)?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Capture(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("tessera=info"))
            .with_ansi(false)
            .with_writer(move || w.clone())
            .try_init();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

/// Waits (up to 5 s) until the log holds `needle`.
#[track_caller]
fn assert_logged(needle: &str) {
    let ok = wait_until(Duration::from_secs(5), || log_text().contains(needle));
    assert!(ok, "the log should hold `{needle}`:\n{}", log_text());
}

// ---------------------------------------------------------------------------------------
// Certificates, made with the openssl command.

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client directory in libnbd's and qemu's layout (ca-cert.pem, client-cert.pem,
    /// client-key.pem), with the CA that signed the server.
    fn client_dir(&self, name: &str) -> PathBuf {
        self.path(name)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    need("openssl");
    run_ok(Command::new("openssl").current_dir(dir).args(args), T);
}

/// A CA `name` (name-cert.pem, name-key.pem).
fn make_ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "30",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A certificate `name` (name-cert.pem, name-key.pem) for `subj`, signed by CA `ca`.
fn make_leaf(dir: &Path, name: &str, subj: &str, ca: &str, server: bool, serial: u32) {
    let ext = dir.join(format!("{name}.ext"));
    let purpose = if server {
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    };
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{purpose}"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subj,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-cert.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-set_serial",
            &serial.to_string(),
            "-out",
            &format!("{name}-cert.pem"),
            "-days",
            "30",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    std::fs::set_permissions(
        dir.join(format!("{name}-key.pem")),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// The test PKI: CA `ca` (server and clients), CA `other` (a stranger), the server's
/// certificate, and client directories `good` (allowed subject), `subject` (another
/// subject), `otherca` (allowed subject, other CA) and `nocert` (the CA only).
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca", "Tessera Test CA");
    make_ca(d, "other", "Someone Else CA");
    make_leaf(d, "server", "/O=Tessera Test/CN=localhost", "ca", true, 1);
    for (name, subj, ca, serial) in [
        ("good", "/O=Tessera Test/CN=client1", "ca", 2),
        ("subject", "/O=Tessera Test/CN=intruder", "ca", 3),
        ("otherca", "/O=Tessera Test/CN=client1", "other", 4),
    ] {
        make_leaf(d, name, subj, ca, false, serial);
        let cd = d.join(name);
        std::fs::create_dir(&cd).unwrap();
        std::fs::copy(d.join("ca-cert.pem"), cd.join("ca-cert.pem")).unwrap();
        std::fs::copy(
            d.join(format!("{name}-cert.pem")),
            cd.join("client-cert.pem"),
        )
        .unwrap();
        std::fs::copy(d.join(format!("{name}-key.pem")), cd.join("client-key.pem")).unwrap();
        std::fs::set_permissions(
            cd.join("client-key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let nc = d.join("nocert");
    std::fs::create_dir(&nc).unwrap();
    std::fs::copy(d.join("ca-cert.pem"), nc.join("ca-cert.pem")).unwrap();
    Pki { dir }
}

fn settings(pki: &Pki, mode: TlsMode, ca: bool, authz: &[&str]) -> NbdTlsSettings {
    NbdTlsSettings {
        mode,
        cert: Some(pki.path("server-cert.pem")),
        key: Some(pki.path("server-key.pem")),
        ca: ca.then(|| pki.path("ca-cert.pem")),
        authz: authz.iter().map(|s| s.to_string()).collect(),
        psk_file: None,
    }
}

/// `nbds://127.0.0.1:PORT/EXPORT?tls-certificates=DIR`
fn tls_uri(srv: &TestServer, export: &str, dir: &Path) -> String {
    format!(
        "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
        srv.port(),
        dir.display()
    )
}

fn sha256(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path), T);
    out.split_whitespace().next().unwrap().to_string()
}

/// SHA-256 of `data`, in hex.
fn digest(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `cmd`; returns (success, stdout + stderr).
fn attempt(cmd: &mut Command) -> (bool, String) {
    let out = run(cmd, T);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------------------

#[test]
fn libnbd_and_qemu_read_and_write_a_thin_disk_over_tls() {
    need_all(&["nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "sha256sum"]);
    log_buffer();
    let pki = make_pki();
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        160,
        &[("vd0", 64)],
        settings(&pki, TlsMode::Required, true, &[ALLOWED]),
    );
    let good = pki.client_dir("good");
    let uri = tls_uri(&srv, "vd0", &good);

    let info = run_ok(Command::new("nbdinfo").arg(&uri), T);
    assert!(info.contains("export-size: 67108864"), "{info}");
    assert!(
        info.contains("with TLS"),
        "nbdinfo should report TLS:\n{info}"
    );

    // nbdcopy writes 24 MiB of a pattern into the disk and reads it back.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src.img");
    let back = work.path().join("back.img");
    std::fs::write(&src, pattern(7, 24 << 20)).unwrap();
    run_ok(
        Command::new("nbdcopy")
            .arg(&src)
            .arg(&uri)
            .arg("--destination-is-zero"),
        T,
    );
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&back), T);
    let read_back = std::fs::read(&back).unwrap();
    assert_eq!(read_back.len(), 64 << 20);
    assert_eq!(
        digest(&read_back[..24 << 20]),
        sha256(&src),
        "data read back over TLS"
    );
    assert_eq!(
        digest(&read_back[24 << 20..]),
        digest(&vec![0u8; 40 << 20]),
        "the rest of the disk reads as zeroes"
    );

    // qemu: tls-creds-x509 with the same directory, written and read back by qemu-io,
    // and qemu-img convert into the disk.
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        good.display()
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vd0,tls-creds=tls0",
        srv.port()
    );
    let qemu_io = |cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["--object", &object, "--image-opts", &opts]);
        for x in cmds {
            c.args(["-c", x]);
        }
        attempt(&mut c)
    };
    let (ok, out) = qemu_io(&[
        "write -P 0x5a 32M 1M",
        "flush",
        "read -P 0x5a 32M 1M",
        "read -P 0 33M 1M",
    ]);
    assert!(ok && !out.contains("failed"), "qemu-io over TLS:\n{out}");
    // A pattern check that must fail shows that the checks are real.
    let (_, out) = qemu_io(&["read -P 0x11 32M 64k"]);
    assert!(out.contains("Pattern verification failed"), "{out}");

    let img = work.path().join("q.img");
    std::fs::write(&img, vec![0x3cu8; 2 << 20]).unwrap();
    let target = format!("{opts},offset=48M,size=2M")
        .replace("driver=nbd,", "driver=raw,file.driver=nbd,")
        .replace("server.", "file.server.")
        .replace(",export=", ",file.export=")
        .replace(",tls-creds=", ",file.tls-creds=");
    run_ok(
        Command::new("qemu-img")
            .args([
                "convert",
                "-n",
                "-f",
                "raw",
                "--object",
                &object,
                "--target-image-opts",
            ])
            .arg(&img)
            .arg(&target),
        T,
    );
    let (ok, out) = qemu_io(&["read -P 0x3c 48M 2M"]);
    assert!(
        ok && !out.contains("failed"),
        "qemu-img convert over TLS:\n{out}"
    );
    // And libnbd sees qemu's write.
    let part = work.path().join("part.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&part), T);
    let data = std::fs::read(&part).unwrap();
    assert!(data[48 << 20..50 << 20].iter().all(|&b| b == 0x3c));
    assert!(data[32 << 20..33 << 20].iter().all(|&b| b == 0x5a));
}

#[test]
fn tls_required_refuses_plain_clients() {
    need("nbdinfo");
    log_buffer();
    let pki = make_pki();
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        64,
        &[("vd0", 16)],
        settings(&pki, TlsMode::Required, false, &[]),
    );
    // libnbd without TLS: the server answers its options with NBD_REP_ERR_TLS_REQD.
    let (ok, out) = attempt(
        Command::new("nbdinfo")
            .env("LIBNBD_DEBUG", "1")
            .arg(srv.uri("vd0")),
    );
    assert!(!ok, "a plain client must be refused:\n{out}");
    // libnbd prints NBD_REP_ERR_TLS_REQD as ENOTSUP, and (in its debug output) the
    // server's message with it.
    assert!(
        out.contains(
            "nbd_opt_go: server replied with error to opt_go request: Operation not supported"
        ),
        "nbdinfo should say the server refused NBD_OPT_GO:\n{out}"
    );
    assert!(
        out.contains("server error message: TLS is required: send NBD_OPT_STARTTLS first"),
        "the refusal should be the server's TLS_REQD:\n{out}"
    );
    assert_logged("before NBD_OPT_STARTTLS (tls: required)");

    // A raw client: GO and LIST before STARTTLS get TLS_REQD with a message; ABORT is
    // answered; EXPORT_NAME closes.
    let mut s = greet(srv.addr).unwrap();
    let mut go = Vec::new();
    go.extend_from_slice(&3u32.to_be_bytes());
    go.extend_from_slice(b"vd0");
    go.extend_from_slice(&0u16.to_be_bytes());
    let r = option(&mut s, OPT_GO, &go).unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, REP_ERR_TLS_REQD, "GO before STARTTLS: {r:?}");
    assert!(String::from_utf8_lossy(&r[0].1).contains("NBD_OPT_STARTTLS"));
    let r = option(&mut s, OPT_LIST, &[]).unwrap();
    assert_eq!(r[0].0, REP_ERR_TLS_REQD, "LIST before STARTTLS: {r:?}");
    // Unknown and oversized options too.
    let r = option(&mut s, 100, &vec![7u8; 100 << 10]).unwrap();
    assert_eq!(
        r[0].0, REP_ERR_TLS_REQD,
        "an oversized option before STARTTLS: {r:?}"
    );
    let r = option(&mut s, OPT_ABORT, &[]).unwrap();
    assert_eq!(r[0].0, REP_ACK, "ABORT: {r:?}");

    let mut s = greet(srv.addr).unwrap();
    let mut out = Vec::new();
    encode_option(&mut out, OPT_EXPORT_NAME, b"vd0");
    s.write_all(&out).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "EXPORT_NAME before STARTTLS must close"
    );

    // In optional mode the plain client is served.
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        64,
        &[("vd0", 16)],
        settings(&pki, TlsMode::Optional, false, &[]),
    );
    let out = run_ok(Command::new("nbdinfo").arg(srv.uri("vd0")), T);
    assert!(out.contains("export-size: 16777216"), "{out}");
    let out = run_ok(
        Command::new("nbdinfo").arg(tls_uri(&srv, "vd0", &pki.client_dir("nocert"))),
        T,
    );
    assert!(out.contains("with TLS"), "{out}");
    // The plain server (tls: off) refuses STARTTLS with POLICY (a second STARTTLS inside
    // TLS: `a_second_starttls_inside_tls_is_invalid_and_the_connection_goes_on`).
    let plain = TestServer::thin_pool_cold(Backing::Malloc, 64, &[("vd0", 16)]);
    let mut s = greet(plain.addr).unwrap();
    let r = option(&mut s, OPT_STARTTLS, &[]).unwrap();
    assert_eq!(r[0].0, REP_ERR_POLICY, "{r:?}");
}

/// STARTTLS, then a TLS handshake with OpenSSL presenting the certificate of client
/// directory `dir`, then `NBD_OPT_STRUCTURED_REPLY` over TLS: its reply type, or the
/// error that ended the connection.
fn raw_tls_client(srv: &TestServer, pki: &Pki, dir: &str) -> Result<u32, String> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    use std::io::Read;
    let mut s = greet(srv.addr).map_err(|e| e.to_string())?;
    let r = option(&mut s, OPT_STARTTLS, &[]).map_err(|e| e.to_string())?;
    assert_eq!(r[0].0, REP_ACK);
    let d = pki.client_dir(dir);
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(d.join("ca-cert.pem")).unwrap();
    b.set_certificate_file(d.join("client-cert.pem"), SslFiletype::PEM)
        .unwrap();
    b.set_private_key_file(d.join("client-key.pem"), SslFiletype::PEM)
        .unwrap();
    let mut t = b
        .build()
        .connect("localhost", s)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    encode_option(&mut out, OPT_STRUCTURED_REPLY, &[]);
    t.write_all(&out).map_err(|e| e.to_string())?;
    let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
    t.read_exact(&mut h).map_err(|e| e.to_string())?;
    let h = parse_option_reply_header(&h).unwrap().unwrap();
    Ok(h.reply_type)
}

#[test]
fn client_certificates_are_authorised_by_ca_and_subject() {
    need("nbdinfo");
    log_buffer();
    let pki = make_pki();
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        64,
        &[("vd0", 16)],
        settings(&pki, TlsMode::Required, true, &[ALLOWED]),
    );
    let info = |dir: &str| {
        attempt(Command::new("nbdinfo").arg(tls_uri(&srv, "vd0", &pki.client_dir(dir))))
    };

    let (ok, out) = info("good");
    assert!(
        ok && out.contains("export-size: 16777216"),
        "allowed subject:\n{out}"
    );

    let (ok, out) = info("subject");
    assert!(!ok, "another subject must be refused:\n{out}");
    assert_logged("client certificate subject `CN=intruder,O=Tessera Test` is not in tls_authz");

    // libnbd (GnuTLS) does not even offer a certificate the server's CA list does not
    // name: refused for having none.
    let (ok, out) = info("otherca");
    assert!(!ok, "another CA's certificate must be refused:\n{out}");
    assert_logged("no client certificate (tls_ca requires one)");
    // A client that offers it anyway (OpenSSL's): refused by verification.
    std::thread::sleep(Duration::from_millis(1100));
    let refused = raw_tls_client(&srv, &pki, "otherca");
    assert!(refused.is_err(), "another CA's certificate must be refused");
    assert_logged("client certificate refused: unable to get local issuer certificate");
    // The same client with the allowed certificate gets in (so the refusal above is
    // the certificate's).
    let answer = raw_tls_client(&srv, &pki, "good").expect("allowed certificate");
    assert_eq!(answer, REP_ACK);

    std::thread::sleep(Duration::from_millis(1100));
    let (ok, out) = info("nocert");
    assert!(
        !ok,
        "a client without a certificate must be refused:\n{out}"
    );
    let times = || {
        log_text()
            .matches("no client certificate (tls_ca requires one)")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(5), || times() == 2),
        "{}",
        log_text()
    );

    // The server still serves the allowed client, and no key material was logged.
    let (ok, out) = info("good");
    assert!(ok, "{out}");
    let key = std::fs::read_to_string(pki.path("server-key.pem")).unwrap();
    let body: String = key.lines().nth(1).unwrap().to_string();
    assert!(!log_text().contains(&body), "key material in the log");
}

#[test]
fn garbage_or_a_stall_after_starttls_closes_that_connection_only() {
    need("nbdinfo");
    log_buffer();
    let pki = make_pki();
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        64,
        &[("vd0", 16)],
        settings(&pki, TlsMode::Required, false, &[]),
    );
    let starttls = |srv: &TestServer| {
        let mut s = greet(srv.addr).unwrap();
        let r = option(&mut s, OPT_STARTTLS, &[]).unwrap();
        assert_eq!(r, vec![(REP_ACK, Vec::new())]);
        s
    };
    // Garbage instead of a ClientHello.
    let mut s = starttls(&srv);
    s.write_all(&pattern(3, 600)).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "garbage must close"
    );
    assert_logged("TLS handshake failed");
    // A truncated ClientHello: a record header announcing more than is sent, then a
    // stall: closed after the 10 s handshake limit.
    let t0 = Instant::now();
    let mut s = starttls(&srv);
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();
    // Meanwhile another client is served.
    let out = run_ok(
        Command::new("nbdinfo").arg(tls_uri(&srv, "vd0", &pki.client_dir("nocert"))),
        T,
    );
    assert!(out.contains("export-size: 16777216"), "{out}");
    assert!(
        closed_within(&mut s, Duration::from_secs(20)),
        "a stalled handshake must be closed"
    );
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed after {waited:?}, before the 10 s limit"
    );
    assert_logged("TLS handshake did not complete within 10s");
}

#[test]
fn key_file_and_missing_certificate_are_refused_naming_them() {
    log_buffer();
    let pki = make_pki();
    let mut reactors = reactors();
    let start = |t: NbdTlsSettings| {
        NbdServer::start_with_tls(
            reactors.cores(),
            "127.0.0.1:0".parse().unwrap(),
            Vec::new(),
            NbdLimits::default(),
            t,
        )
    };
    let key = pki.path("server-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = start(settings(&pki, TlsMode::Required, false, &[]))
        .err()
        .expect("a 0644 key must be refused")
        .to_string();
    assert!(
        e.contains(&key.display().to_string()) && e.contains("0644") && e.contains("nbd.tls_key"),
        "{e}"
    );
    let material = std::fs::read_to_string(&key).unwrap();
    assert!(!e.contains(material.lines().nth(1).unwrap()), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut s = start(settings(&pki, TlsMode::Required, false, &[])).expect("0600 key accepted");
    drop(s.shutdown());

    let mut t = settings(&pki, TlsMode::Required, false, &[]);
    t.cert = None;
    let e = start(t).err().expect("no certificate").to_string();
    assert!(e.contains("nbd.tls_cert") && e.contains("missing"), "{e}");
    let mut t = settings(&pki, TlsMode::Required, false, &[ALLOWED]);
    t.ca = None;
    let e = start(t).err().expect("authz without CA").to_string();
    assert!(e.contains("nbd.tls_authz") && e.contains("tls_ca"), "{e}");
    // A key that does not belong to the certificate.
    let mut t = settings(&pki, TlsMode::Required, false, &[]);
    t.key = Some(pki.path("good-key.pem"));
    let e = start(t).err().expect("mismatched key").to_string();
    assert!(e.contains("does not match"), "{e}");
    reactors.shutdown();
}

/// TLS 1.3 with a pre-shared key (OpenSSL's server, GnuTLS's clients): libnbd's
/// `tls-psk-file` and qemu's `tls-creds-psk` with the `IDENTITY:HEXKEY` file both use;
/// a wrong key and an unknown identity are refused (the identity logged, never a key).
#[test]
fn psk_clients_get_in_and_wrong_keys_do_not() {
    need_all(&["nbdinfo", "qemu-io"]);
    log_buffer();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str, mode: u32| {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let key = "4f1c9a2b7e3d5c6a8b9f0e1d2c3b4a5968778695a4b3c2d1e0f1a2b3c4d5e6f7";
    let server_keys = write(
        "server/keys.psk",
        &format!("alice:{key}\nbob:00112233\n"),
        0o600,
    );
    let alice = write("alice/keys.psk", &format!("alice:{key}\n"), 0o600);
    let wrong = write(
        "wrong/keys.psk",
        "alice:00000000000000000000000000000000000000000000000000000000000000aa\n",
        0o600,
    );
    let mallory = write("mallory/keys.psk", &format!("mallory:{key}\n"), 0o600);
    let psk = NbdTlsSettings {
        mode: TlsMode::Required,
        psk_file: Some(server_keys.clone()),
        ..NbdTlsSettings::default()
    };
    let srv = TestServer::thin_pool_tls(Backing::Malloc, 64, &[("vd0", 16)], psk);
    let uri = |user: &str, file: &Path| {
        format!(
            "nbds://{user}@127.0.0.1:{}/vd0?tls-psk-file={}",
            srv.port(),
            file.display()
        )
    };
    let out = run_ok(Command::new("nbdinfo").arg(uri("alice", &alice)), T);
    assert!(
        out.contains("with TLS") && out.contains("export-size: 16777216"),
        "{out}"
    );

    let (ok, out) = attempt(Command::new("nbdinfo").arg(uri("alice", &wrong)));
    assert!(!ok, "a wrong key must be refused:\n{out}");
    assert_logged("wrong pre-shared key");
    let (ok, out) = attempt(Command::new("nbdinfo").arg(uri("mallory", &mallory)));
    assert!(!ok, "an unknown identity must be refused:\n{out}");
    assert_logged("unknown PSK identity `mallory`");
    assert!(!log_text().contains(key), "a key in the log");

    // qemu: tls-creds-psk reads DIR/keys.psk for the username's key.
    let object = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=client,username=alice",
        alice.parent().unwrap().display()
    );
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=vd0,tls-creds=tls0",
        srv.port()
    );
    let (ok, out) = attempt(Command::new("qemu-io").args([
        "--object",
        &object,
        "--image-opts",
        &opts,
        "-c",
        "write -P 0x6b 1M 256k",
        "-c",
        "read -P 0x6b 1M 256k",
    ]));
    assert!(ok && !out.contains("failed"), "qemu-io with a PSK:\n{out}");

    // The PSK file is checked as a key file, and its lines are checked.
    let reactors = reactors();
    let start = |f: &Path| {
        NbdServer::start_with_tls(
            reactors.cores(),
            "127.0.0.1:0".parse().unwrap(),
            Vec::new(),
            NbdLimits::default(),
            NbdTlsSettings {
                mode: TlsMode::Required,
                psk_file: Some(f.to_path_buf()),
                ..NbdTlsSettings::default()
            },
        )
        .err()
        .map(|e| e.to_string())
    };
    let open = write("open/keys.psk", &format!("alice:{key}\n"), 0o644);
    let e = start(&open).expect("0644 refused");
    assert!(e.contains("nbd.tls_psk_file") && e.contains("0644"), "{e}");
    let bad = write("bad/keys.psk", "alice:zz\n", 0o600);
    let e = start(&bad).expect("bad hex refused");
    assert!(e.contains("line 1") && e.contains("not hexadecimal"), "{e}");
    let e = start(&write("twice/keys.psk", "a:00\na:11\n", 0o600)).expect("twice");
    assert!(e.contains("line 2") && e.contains("twice"), "{e}");
    assert!(!e.contains(key));
}

/// Sends option `opt` with `data` on `s` (plain or TLS), by hand: `IHAVEOPT`, the
/// option, its length, its data; returns every reply (type, data) up to the final one
/// (`ACK` or an error).
fn option_by_hand<S: std::io::Read + Write>(
    s: &mut S,
    opt: u32,
    data: &[u8],
) -> std::io::Result<Vec<(u32, Vec<u8>)>> {
    let mut out = Vec::new();
    out.extend_from_slice(b"IHAVEOPT");
    out.extend_from_slice(&opt.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out)?;
    let mut replies = Vec::new();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h)?;
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().unwrap()),
            0x0003_e889_0455_65a9,
            "option reply magic"
        );
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut body = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut body)?;
        replies.push((kind, body));
        if kind == REP_ACK || kind & (1 << 31) != 0 {
            return Ok(replies);
        }
    }
}

/// A second `NBD_OPT_STARTTLS` inside TLS: the NBD protocol document has the server
/// answer `NBD_REP_ERR_INVALID` when TLS is already negotiated, and the option
/// haggling goes on — so `NBD_OPT_LIST` and `NBD_OPT_GO` work after it on the same
/// connection, and so does a read. The client is written here: the handshake bytes by
/// hand over a `TcpStream`, then OpenSSL's `SslConnector` with the test CA.
#[test]
fn a_second_starttls_inside_tls_is_invalid_and_the_connection_goes_on() {
    use openssl::ssl::{SslConnector, SslMethod};
    use std::io::Read;
    let pki = make_pki();
    let srv = TestServer::thin_pool_tls(
        Backing::Malloc,
        64,
        &[("vd0", 16)],
        settings(&pki, TlsMode::Required, false, &[]),
    );
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // Greeting: NBDMAGIC, IHAVEOPT, handshake flags (fixed newstyle, no zeroes).
    let mut g = [0u8; 18];
    s.read_exact(&mut g).unwrap();
    assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), 0b11);
    s.write_all(&0b11u32.to_be_bytes()).unwrap();
    let r = option_by_hand(&mut s, OPT_STARTTLS, &[]).unwrap();
    assert_eq!(r, vec![(REP_ACK, Vec::new())]);
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(pki.client_dir("nocert").join("ca-cert.pem"))
        .unwrap();
    let mut t = b.build().connect("localhost", s).expect("TLS handshake");

    // The second STARTTLS.
    let r = option_by_hand(&mut t, OPT_STARTTLS, &[]).unwrap();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        r[0].0, REP_ERR_INVALID,
        "a second STARTTLS must get NBD_REP_ERR_INVALID: {r:?}"
    );

    // The connection goes on: LIST, then GO, then a read.
    let r = option_by_hand(&mut t, OPT_LIST, &[]).unwrap();
    assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
    assert!(
        r.iter()
            .any(|(k, d)| *k == REP_SERVER && d.len() >= 7 && &d[4..7] == b"vd0"),
        "LIST names vd0: {r:?}"
    );
    let mut go = Vec::new();
    go.extend_from_slice(&3u32.to_be_bytes());
    go.extend_from_slice(b"vd0");
    go.extend_from_slice(&0u16.to_be_bytes());
    let r = option_by_hand(&mut t, OPT_GO, &go).unwrap();
    assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
    let info = r
        .iter()
        .find(|(k, d)| *k == REP_INFO && d.len() >= 12 && d[..2] == INFO_EXPORT.to_be_bytes())
        .expect("NBD_INFO_EXPORT");
    assert_eq!(
        u64::from_be_bytes(info.1[2..10].try_into().unwrap()),
        16 << 20
    );
    // NBD_CMD_READ of 4 KiB at 0 (simple reply: nothing else was negotiated inside TLS).
    let mut req = Vec::new();
    req.extend_from_slice(&0x2560_9513u32.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&0u16.to_be_bytes());
    req.extend_from_slice(&77u64.to_be_bytes());
    req.extend_from_slice(&0u64.to_be_bytes());
    req.extend_from_slice(&4096u32.to_be_bytes());
    t.write_all(&req).unwrap();
    let mut h = [0u8; 16];
    t.read_exact(&mut h).unwrap();
    assert_eq!(u32::from_be_bytes(h[..4].try_into().unwrap()), 0x6744_6698);
    assert_eq!(
        u32::from_be_bytes(h[4..8].try_into().unwrap()),
        0,
        "read error"
    );
    assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), 77);
    let mut data = vec![1u8; 4096];
    t.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&b| b == 0), "a thin disk reads zeros");
}
