//! DH-HMAC-CHAP, the target's side: one state machine per queue pair, driven by the
//! AUTH_Send and AUTH_Receive commands, as SPDK's `lib/nvmf/auth.c`.
//!
//! A queue pair whose host has a DH-HMAC-CHAP key answers its Connect with AUTHREQ.ATR
//! set and then accepts nothing but AUTH_Send/AUTH_Receive (every other command gets
//! Authentication Required, SCT 1h SC 91h) until the exchange ends:
//!
//! ```text
//! host → AUTH_Negotiate        (AUTH_Send)    Negotiate → Challenge
//! host ← DH-HMAC-CHAP_Challenge (AUTH_Receive) Challenge → Reply
//! host → DH-HMAC-CHAP_Reply     (AUTH_Send)    Reply → Success1
//! host ← DH-HMAC-CHAP_Success1  (AUTH_Receive) Success1 → Completed, or → Success2 when
//!                                              the host asked the controller to prove itself
//! host → DH-HMAC-CHAP_Success2  (AUTH_Send)    Success2 → Completed
//! ```
//!
//! A fault in an AUTH_Send completes the command successfully and moves to Failure1
//! with a reason; the next AUTH_Receive returns AUTH_Failure1 with that reason and the
//! queue pair is closed 100 ms later (SPDK's behaviour, which lets the host read why).
//! Each step must come within the Keep Alive Timeout of the controller (120 s without
//! one); a stalled exchange closes the queue pair. On an enabled queue pair a new
//! AUTH_Negotiate starts a re-authentication; its stalling is not fatal, its failure is.
//!
//! Secure channel concatenation (NVMe base specification 2.1 §8.3.4.5.9; the Linux
//! target's rules): an AUTH_Negotiate on the admin queue may carry SC_C NEWTLSPSK (on a
//! plain connection) or REPLACETLSPSK (on a TLS one) when the listener does
//! concatenation ([`ConcatCtx`]); anything else is answered "secure channel
//! concatenation mismatch", as is a plain connection to a listener that requires TLS
//! asking for none, and an exchange that could only use the null DH group. The target
//! then picks SHA-384 or SHA-256 (a TLS suite's hash), a DH group, takes the host's C2
//! (required: the reply's sequence number 0 says the host does not ask the controller
//! to authenticate itself), and on success generates the PSK ([`GeneratedPsk`]) the
//! queue pair keeps in the subsystem for the host's TLS connections.
//!
//! The two Diffie-Hellman exponentiations of a transaction (our key pair for the
//! challenge, the shared secret on the reply) take milliseconds in the large groups, so
//! they do not run here: [`QpairAuth::send`] and [`QpairAuth::recv`] answer
//! [`After::Compute`] with a [`DhJob`], the queue pair runs it on a worker thread
//! (`reactor::offload`, [`DH_TIME_LIMIT`]) while its reactor serves the others, hands
//! the result to [`QpairAuth::computed`] and runs the same command again, which then
//! finds the result and goes on.

use super::subsystem::Subsystem;
use crate::keyring::Keyring;
use crate::nvme::auth::{
    self, AuthCmd, AuthDecodeError, DhGroup, FailureReason, HashId, auth_id, auth_type,
};
use crate::nvme::dhchap::{self, DhKey, DhchapKey, ResponseInputs};
use crate::nvme::spec::Status;
use crate::nvme::tls::GeneratedPsk;
use zeroize::Zeroizing;

/// Each step's time limit without a Keep Alive Timeout (SPDK's default).
pub(crate) const DEFAULT_STEP_TIMEOUT_MS: u64 = 120_000;
/// How long after AUTH_Failure1 the queue pair is closed.
pub(crate) const FAILURE1_CLOSE_DELAY_MS: u64 = 100;
/// The most a DH computation may take, queueing for a worker included; past it the
/// exchange fails (AUTH_Failure1, authentication failed).
pub(crate) const DH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A DH computation the exchange waits for; run off the reactor with [`DhJob::run`],
/// its result given to [`QpairAuth::computed`].
pub(crate) enum DhJob {
    /// Our key pair for the challenge.
    Generate(DhGroup),
    /// The shared secret of our key and the host's public value.
    Derive(DhKey, Vec<u8>),
}

/// The result of a [`DhJob`].
pub(crate) enum DhDone {
    Key(DhKey),
    Secret(Zeroizing<Vec<u8>>),
}

impl DhJob {
    /// Runs the computation (on a worker thread).
    pub(crate) fn run(self) -> Result<DhDone, dhchap::DhError> {
        match self {
            DhJob::Generate(g) => DhKey::generate(g).map(DhDone::Key),
            DhJob::Derive(k, peer) => k.derive(&peer).map(DhDone::Secret),
        }
    }
}

impl std::fmt::Debug for DhJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DhJob::Generate(g) => write!(f, "DhJob::Generate({})", g.name()),
            DhJob::Derive(k, _) => write!(f, "DhJob::Derive({})", k.group().name()),
        }
    }
}

/// Where the exchange is. One comment per state, as SPDK's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthState {
    /// Waiting for AUTH_Negotiate.
    Negotiate,
    /// Negotiated; waiting for the AUTH_Receive that fetches the challenge.
    Challenge,
    /// Challenge sent; waiting for the host's reply.
    Reply,
    /// Host authenticated; waiting for the AUTH_Receive that fetches Success1.
    Success1,
    /// Success1 carried our response; waiting for the host's Success2 (or Failure2).
    Success2,
    /// Failed; the next AUTH_Receive returns AUTH_Failure1.
    Failure1,
    /// Done: the queue pair is enabled.
    Completed,
    /// Failed for good: the queue pair closes.
    Error,
}

impl AuthState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AuthState::Negotiate => "negotiate",
            AuthState::Challenge => "challenge",
            AuthState::Reply => "reply",
            AuthState::Success1 => "success1",
            AuthState::Success2 => "success2",
            AuthState::Failure1 => "failure1",
            AuthState::Completed => "completed",
            AuthState::Error => "error",
        }
    }
}

/// What the queue pair must do after an authentication command.
#[derive(Debug)]
pub(crate) enum After {
    /// Nothing more.
    Nothing,
    /// A step was taken: restart the step timer.
    Rearm,
    /// Authentication succeeded: the queue pair is enabled.
    Enable,
    /// AUTH_Failure1 went out: close the queue pair shortly.
    CloseSoon,
    /// Close the queue pair now.
    Close,
    /// The command waits for a DH computation: run it off the reactor, give the result
    /// to [`QpairAuth::computed`], then run the command again.
    Compute(DhJob),
}

/// What an authentication needs to know of its queue pair.
pub(crate) struct AuthCtx<'a> {
    pub subsystem: &'a Subsystem,
    pub hostnqn: &'a str,
    pub qid: u16,
    pub keyring: &'a Keyring,
    /// Allowed digests and DH groups: bit `id` set when allowed.
    pub digests: u32,
    pub dhgroups: u32,
    /// What secure channel concatenation the connection may ask for.
    pub concat: ConcatCtx,
}

/// The connection's side of secure channel concatenation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConcatCtx {
    /// The listener does concatenation (`secure_concat`).
    pub listener: bool,
    /// A plain connection to a listener that requires TLS: it must ask for NEWTLSPSK.
    pub required: bool,
    /// The connection is TLS.
    pub tls: bool,
}

impl ConcatCtx {
    /// Whether SC_C `scc` may be asked for on queue `qid`, or why not.
    fn check(&self, scc: u8, qid: u16) -> Result<(), String> {
        use auth::sc_c;
        let name = sc_c::name(scc);
        match scc {
            sc_c::NOSC if self.required => Err(
                "a plain connection to a listener that requires TLS may only authenticate \
                 with secure channel concatenation (SC_C NEWTLSPSK)"
                    .into(),
            ),
            sc_c::NOSC => Ok(()),
            sc_c::NEWTLSPSK | sc_c::REPLACETLSPSK if !self.listener => Err(format!(
                "SC_C {name}: secure channel concatenation is not enabled on this listener (secure_concat)"
            )),
            sc_c::NEWTLSPSK | sc_c::REPLACETLSPSK if qid != 0 => Err(format!(
                "SC_C {name} on I/O queue {qid}: only the admin queue concatenates"
            )),
            sc_c::NEWTLSPSK if self.tls => {
                Err("SC_C NEWTLSPSK on a TLS connection (REPLACETLSPSK replaces its PSK)".into())
            }
            sc_c::REPLACETLSPSK if !self.tls => {
                Err("SC_C REPLACETLSPSK on a connection without TLS (NEWTLSPSK makes one)".into())
            }
            sc_c::NEWTLSPSK | sc_c::REPLACETLSPSK => Ok(()),
            _ => Err(format!("SC_C {scc:#x} ({name}) is not usable on NVMe/TCP")),
        }
    }
}

/// One queue pair's authentication.
pub(crate) struct QpairAuth {
    pub state: AuthState,
    tid: u16,
    hash: Option<HashId>,
    dhgroup: DhGroup,
    /// Our challenge to the host, then (bidirectional) our response to the host's.
    cval: Zeroizing<[u8; 64]>,
    seqnum: u32,
    dhkey: Option<DhKey>,
    /// The shared secret computed for the reply being checked.
    dh_secret: Option<Zeroizing<Vec<u8>>>,
    /// The host asked us to authenticate.
    cvalid: bool,
    fail_reason: FailureReason,
    /// The AUTH_Negotiate's SC_C.
    sc_c: u8,
    /// The PSK this exchange generated (secure channel concatenation), until the queue
    /// pair takes it on success.
    generated: Option<GeneratedPsk>,
}

fn log_fail(ctx: &AuthCtx<'_>, what: &dyn std::fmt::Display) {
    tracing::error!(
        subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
        "authentication: {what}"
    );
}

impl QpairAuth {
    pub(crate) fn new() -> QpairAuth {
        QpairAuth {
            state: AuthState::Negotiate,
            tid: 0,
            hash: None,
            dhgroup: DhGroup::Null,
            cval: Zeroizing::new([0; 64]),
            seqnum: 0,
            dhkey: None,
            dh_secret: None,
            cvalid: false,
            fail_reason: FailureReason::Failed,
            sc_c: auth::sc_c::NOSC,
            generated: None,
        }
    }

    /// The PSK a successful exchange with secure channel concatenation generated.
    pub(crate) fn take_generated(&mut self) -> Option<GeneratedPsk> {
        self.generated.take()
    }

    /// The negotiated digest and DH group.
    pub(crate) fn negotiated(&self) -> (&'static str, &'static str) {
        (self.hash.map_or("none", HashId::name), self.dhgroup.name())
    }

    fn set_state(&mut self, ctx: &AuthCtx<'_>, to: AuthState) {
        if self.state != to {
            tracing::debug!(
                subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
                state = to.name(), "auth state"
            );
            self.state = to;
        }
    }

    /// A fault in an AUTH_Send: the command succeeds, Failure1 follows.
    fn fail1(&mut self, ctx: &AuthCtx<'_>, reason: FailureReason) -> (Status, After) {
        self.set_state(ctx, AuthState::Failure1);
        self.fail_reason = reason;
        self.dhkey = None;
        self.dh_secret = None;
        self.generated = None;
        (Status::SUCCESS, After::Nothing)
    }

    /// The result of the [`DhJob`] the last command waited for (`Err`: why there is
    /// none, for the log). A failure moves to Failure1 (authentication failed).
    pub(crate) fn computed(&mut self, ctx: &AuthCtx<'_>, r: Result<DhDone, String>) {
        match r {
            Ok(DhDone::Key(k)) => self.dhkey = Some(k),
            Ok(DhDone::Secret(s)) => self.dh_secret = Some(s),
            Err(e) => {
                log_fail(
                    ctx,
                    &format_args!("DH computation ({}): {e}", self.dhgroup.name()),
                );
                self.fail1(ctx, FailureReason::Failed);
            }
        }
    }

    fn fail_decode(&mut self, ctx: &AuthCtx<'_>, e: AuthDecodeError) -> (Status, After) {
        log_fail(ctx, &e);
        self.fail1(ctx, e.reason)
    }

    /// Checks SECP, SPSP0/1 and the length against the transfer (SPDK:
    /// Invalid Field with DNR).
    fn check_command(ctx: &AuthCtx<'_>, c: &AuthCmd, xfer_len: u32) -> bool {
        let why = if c.secp != auth::SECP_NVME {
            format!("invalid secp {:#x}", c.secp)
        } else if c.spsp0 != auth::SPSP || c.spsp1 != auth::SPSP {
            format!("invalid spsp0 {}, spsp1 {}", c.spsp0, c.spsp1)
        } else if c.len != xfer_len {
            format!("invalid length: {} != {xfer_len}", c.len)
        } else {
            return true;
        };
        log_fail(ctx, &why);
        false
    }

    /// AUTH_Send with message `msg` (the command's data).
    pub(crate) fn send(&mut self, ctx: &AuthCtx<'_>, c: &AuthCmd, msg: &[u8]) -> (Status, After) {
        if !Self::check_command(ctx, c, msg.len() as u32) {
            return (Status::INVALID_FIELD, After::Nothing);
        }
        let h = match auth::decode_header(msg) {
            Ok(h) => h,
            Err(e) => return self.fail_decode(ctx, e),
        };
        match (h.auth_type, h.auth_id) {
            (auth_type::COMMON, auth_id::NEGOTIATE) => self.negotiate(ctx, msg),
            (auth_type::COMMON, auth_id::FAILURE2) => self.failure2(ctx, msg),
            (auth_type::DHCHAP, auth_id::REPLY) => self.reply(ctx, msg),
            (auth_type::DHCHAP, auth_id::SUCCESS2) => self.success2(ctx, msg),
            (t, id) => {
                log_fail(ctx, &format_args!("unexpected message type {t} id {id:#x}"));
                self.fail1(ctx, FailureReason::IncorrectProtocolMessage)
            }
        }
    }

    fn wrong_state(&mut self, ctx: &AuthCtx<'_>, msg: &str) -> (Status, After) {
        log_fail(ctx, &format_args!("{msg} in state {}", self.state.name()));
        self.fail1(ctx, FailureReason::IncorrectProtocolMessage)
    }

    fn negotiate(&mut self, ctx: &AuthCtx<'_>, msg: &[u8]) -> (Status, After) {
        if self.state != AuthState::Negotiate {
            return self.wrong_state(ctx, "AUTH_Negotiate");
        }
        self.tid = auth::decode_header(msg).map(|h| h.tid).unwrap_or(0);
        let n = match auth::decode_negotiate(msg) {
            Ok(n) => n,
            Err(e) => return self.fail_decode(ctx, e),
        };
        if let Err(why) = ctx.concat.check(n.sc_c, ctx.qid) {
            log_fail(ctx, &why);
            return self.fail1(ctx, FailureReason::SccMismatch);
        }
        let concat = n.sc_c != auth::sc_c::NOSC;
        // With concatenation the generated PSK keys TLS: only a TLS suite's hash will
        // do, and only a real DH exchange gives it a secret.
        let Some(hash) = HashId::STRONGEST_FIRST.into_iter().find(|h| {
            ctx.digests & (1 << *h as u8) != 0
                && n.hashes.contains(&(*h as u8))
                && !(concat && *h == HashId::Sha512)
        }) else {
            log_fail(
                ctx,
                &if concat {
                    "no usable digest (secure channel concatenation takes sha256 or sha384)"
                } else {
                    "no usable digest"
                },
            );
            return self.fail1(ctx, FailureReason::HashUnusable);
        };
        let Some(group) = DhGroup::STRONGEST_FIRST.into_iter().find(|g| {
            ctx.dhgroups & (1 << *g as u8) != 0
                && n.dhgroups.contains(&(*g as u8))
                && !(concat && *g == DhGroup::Null)
        }) else {
            if concat {
                log_fail(
                    ctx,
                    &"secure channel concatenation needs a DH group; only the null group is usable",
                );
                return self.fail1(ctx, FailureReason::SccMismatch);
            }
            log_fail(ctx, &"no usable DH group");
            return self.fail1(ctx, FailureReason::DhGroupUnusable);
        };
        self.sc_c = n.sc_c;
        tracing::debug!(
            subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
            digest = hash.name(), dhgroup = group.name(), "negotiated"
        );
        self.hash = Some(hash);
        self.dhgroup = group;
        self.set_state(ctx, AuthState::Challenge);
        (Status::SUCCESS, After::Rearm)
    }

    /// Reads and parses a key of the keyring.
    fn load_key(ctx: &AuthCtx<'_>, name: &str) -> Option<DhchapKey> {
        let secret = match ctx.keyring.read(name) {
            Ok(s) => s,
            Err(e) => {
                log_fail(ctx, &format_args!("cannot read DH-HMAC-CHAP key: {e}"));
                return None;
            }
        };
        match DhchapKey::parse(secret.expose()) {
            Ok(k) => Some(k),
            Err(e) => {
                log_fail(ctx, &format_args!("key `{name}`: {e}"));
                None
            }
        }
    }

    fn reply(&mut self, ctx: &AuthCtx<'_>, msg: &[u8]) -> (Status, After) {
        if self.state != AuthState::Reply {
            return self.wrong_state(ctx, "DH-HMAC-CHAP_Reply");
        }
        let Some(hash) = self.hash else {
            return self.fail1(ctx, FailureReason::Failed);
        };
        let hl = hash.digest_len();
        let concat = self.sc_c != auth::sc_c::NOSC;
        let r = match auth::decode_reply_scc(msg, hl, concat) {
            Ok(r) => r,
            Err(e) => return self.fail_decode(ctx, e),
        };
        if concat && !r.cvalid {
            log_fail(
                ctx,
                &"secure channel concatenation without the host's challenge (cvalid 0)",
            );
            return self.fail1(ctx, FailureReason::Failed);
        }
        if r.tid != self.tid {
            log_fail(
                ctx,
                &format_args!("transaction id mismatch: {} != {}", r.tid, self.tid),
            );
            return self.fail1(ctx, FailureReason::IncorrectPayload);
        }
        // The shared secret: computed off the reactor, the command then runs again.
        let dh_secret = if self.dhgroup == DhGroup::Null {
            None
        } else if let Some(s) = self.dh_secret.take() {
            Some(s)
        } else if let Some(k) = self.dhkey.take() {
            return (
                Status::SUCCESS,
                After::Compute(DhJob::Derive(k, r.dhv.to_vec())),
            );
        } else {
            log_fail(ctx, &"no DH key for the reply");
            return self.fail1(ctx, FailureReason::Failed);
        };
        let keys = ctx.subsystem.host_keys(ctx.hostnqn).unwrap_or_default();
        let Some(key) = keys
            .dhchap_key
            .as_deref()
            .and_then(|n| Self::load_key(ctx, n))
        else {
            log_fail(ctx, &"couldn't get DH-HMAC-CHAP key");
            return self.fail1(ctx, FailureReason::Failed);
        };
        let subnqn = ctx.subsystem.nqn.as_str();
        let expected = dhchap::response(
            &key,
            &self.cval[..hl],
            &ResponseInputs {
                hash,
                kind: "HostHost",
                seqnum: self.seqnum,
                tid: self.tid,
                scc: self.sc_c,
                nqn1: ctx.hostnqn,
                nqn2: subnqn,
                dh_secret: dh_secret.as_deref().map(|s| &s[..]),
            },
        );
        if !dhchap::equal_ct(r.rval, &expected) {
            log_fail(ctx, &"challenge response mismatch");
            return self.fail1(ctx, FailureReason::Failed);
        }
        if concat {
            // KS = H(g^xy mod p); C1 ours, C2 the host's.
            let Some(secret) = dh_secret.as_deref() else {
                return self.fail1(ctx, FailureReason::Failed);
            };
            let ks = dhchap::digest(hash, secret);
            match GeneratedPsk::new(
                hash,
                &ks,
                &self.cval[..hl],
                r.cval,
                ctx.hostnqn,
                &ctx.subsystem.nqn,
            ) {
                Ok(g) => self.generated = Some(g),
                Err(e) => {
                    log_fail(ctx, &e);
                    return self.fail1(ctx, FailureReason::Failed);
                }
            }
        }
        // With concatenation a sequence number of 0 carries C2 without asking the
        // controller to authenticate itself.
        if r.cvalid && r.seqnum != 0 {
            let Some(ckey) = keys
                .dhchap_ctrlr_key
                .as_deref()
                .and_then(|n| Self::load_key(ctx, n))
            else {
                log_fail(ctx, &"missing DH-HMAC-CHAP ctrlr key");
                return self.fail1(ctx, FailureReason::Failed);
            };
            let ours = dhchap::response(
                &ckey,
                r.cval,
                &ResponseInputs {
                    hash,
                    kind: "Controller",
                    seqnum: r.seqnum,
                    tid: self.tid,
                    scc: self.sc_c,
                    nqn1: subnqn,
                    nqn2: ctx.hostnqn,
                    dh_secret: dh_secret.as_deref().map(|s| &s[..]),
                },
            );
            self.cval[..hl].copy_from_slice(&ours);
            self.cvalid = true;
        }
        self.dhkey = None;
        self.set_state(ctx, AuthState::Success1);
        (Status::SUCCESS, After::Rearm)
    }

    fn success2(&mut self, ctx: &AuthCtx<'_>, msg: &[u8]) -> (Status, After) {
        if self.state != AuthState::Success2 {
            return self.wrong_state(ctx, "DH-HMAC-CHAP_Success2");
        }
        match auth::decode_success2(msg) {
            Err(e) => self.fail_decode(ctx, e),
            Ok(tid) if tid != self.tid => {
                log_fail(
                    ctx,
                    &format_args!("transaction id mismatch: {tid} != {}", self.tid),
                );
                self.fail1(ctx, FailureReason::IncorrectPayload)
            }
            Ok(_) => {
                tracing::debug!(
                    subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
                    "controller authentication successful"
                );
                self.set_state(ctx, AuthState::Completed);
                (Status::SUCCESS, After::Enable)
            }
        }
    }

    fn failure2(&mut self, ctx: &AuthCtx<'_>, msg: &[u8]) -> (Status, After) {
        if self.state != AuthState::Success2 {
            return self.wrong_state(ctx, "AUTH_Failure2");
        }
        match auth::decode_failure(msg) {
            Err(e) => self.fail_decode(ctx, e),
            Ok(f) if f.tid != self.tid => {
                log_fail(
                    ctx,
                    &format_args!("transaction id mismatch: {} != {}", f.tid, self.tid),
                );
                self.fail1(ctx, FailureReason::IncorrectPayload)
            }
            Ok(f) => {
                log_fail(
                    ctx,
                    &format_args!("ctrlr authentication failed: rc={}, rce={}", f.rc, f.rce),
                );
                self.set_state(ctx, AuthState::Error);
                (Status::SUCCESS, After::Close)
            }
        }
    }

    /// AUTH_Receive of `xfer_len` bytes into `out`; returns the status, the length of
    /// the message written and what follows.
    pub(crate) fn recv(
        &mut self,
        ctx: &AuthCtx<'_>,
        c: &AuthCmd,
        out: &mut [u8],
    ) -> (Status, u32, After) {
        if !Self::check_command(ctx, c, out.len() as u32) {
            return (Status::INVALID_FIELD, 0, After::Nothing);
        }
        if self.state == AuthState::Challenge
            && self.dhgroup != DhGroup::Null
            && self.dhkey.is_none()
        {
            // Our key pair: computed off the reactor, the command then runs again.
            return (
                Status::SUCCESS,
                0,
                After::Compute(DhJob::Generate(self.dhgroup)),
            );
        }
        out.fill(0);
        let r = match self.state {
            AuthState::Challenge => self.recv_challenge(ctx, out),
            AuthState::Success1 => self.recv_success1(ctx, out),
            AuthState::Failure1 => Err(self.fail_reason),
            _ => {
                log_fail(
                    ctx,
                    &format_args!("AUTH_Receive in state {}", self.state.name()),
                );
                Err(FailureReason::IncorrectProtocolMessage)
            }
        };
        match r {
            Ok((n, after)) => (Status::SUCCESS, n as u32, after),
            Err(reason) => {
                self.dhkey = None;
                self.dh_secret = None;
                self.generated = None;
                match auth::encode_failure(out, auth_id::FAILURE1, self.tid, reason) {
                    Some(n) => {
                        tracing::warn!(
                            subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
                            reason = reason.describe(), "sent AUTH_Failure1"
                        );
                        self.set_state(ctx, AuthState::Failure1);
                        (Status::SUCCESS, n as u32, After::CloseSoon)
                    }
                    None => {
                        self.set_state(ctx, AuthState::Error);
                        (Status::INVALID_FIELD, 0, After::Close)
                    }
                }
            }
        }
    }

    fn recv_challenge(
        &mut self,
        ctx: &AuthCtx<'_>,
        out: &mut [u8],
    ) -> Result<(usize, After), FailureReason> {
        let hash = self.hash.ok_or(FailureReason::Failed)?;
        let hl = hash.digest_len();
        if self.dhgroup != DhGroup::Null && self.dhkey.is_none() {
            log_fail(ctx, &"no DH key for the challenge");
            return Err(FailureReason::Failed);
        }
        let dhv_len = self.dhkey.as_ref().map_or(0, |k| k.public().len());
        if out.len() < auth::DHCHAP_HEADER_LEN + hl + dhv_len {
            log_fail(ctx, &format_args!("invalid message length: {}", out.len()));
            return Err(FailureReason::IncorrectPayload);
        }
        self.seqnum = ctx.subsystem.next_auth_seqnum().map_err(|e| {
            log_fail(ctx, &e);
            FailureReason::Failed
        })?;
        dhchap::random_bytes(&mut self.cval[..hl]).map_err(|e| {
            log_fail(ctx, &e);
            FailureReason::Failed
        })?;
        let n = auth::encode_challenge(
            out,
            &auth::Challenge {
                tid: self.tid,
                hash,
                dhgroup: self.dhgroup,
                seqnum: self.seqnum,
                cval: &self.cval[..hl],
                dhv: self.dhkey.as_ref().map_or(&[][..], |k| k.public()),
            },
        )
        .ok_or(FailureReason::IncorrectPayload)?;
        self.set_state(ctx, AuthState::Reply);
        Ok((n, After::Rearm))
    }

    fn recv_success1(
        &mut self,
        ctx: &AuthCtx<'_>,
        out: &mut [u8],
    ) -> Result<(usize, After), FailureReason> {
        let hl = self.hash.map_or(0, HashId::digest_len);
        let rval = self.cvalid.then(|| &self.cval[..hl]);
        let n = auth::encode_success1(
            out,
            &auth::Success1 {
                tid: self.tid,
                hl,
                rval,
            },
        )
        .ok_or_else(|| {
            log_fail(ctx, &format_args!("invalid message length: {}", out.len()));
            FailureReason::IncorrectPayload
        })?;
        tracing::debug!(
            subnqn = %ctx.subsystem.nqn, hostnqn = %ctx.hostnqn, qid = ctx.qid,
            "host authentication successful"
        );
        if self.cvalid {
            self.set_state(ctx, AuthState::Success2);
            Ok((n, After::Rearm))
        } else {
            self.set_state(ctx, AuthState::Completed);
            Ok((n, After::Enable))
        }
    }
}
