//! DH-HMAC-CHAP, the host's side (NVMe base specification 2.1, §8.3.4; SPDK's
//! `lib/nvme/nvme_auth.c`): a queue pair whose Connect answer carries AUTHREQ.ATR
//! authenticates before any other command goes out on it.
//!
//! ```text
//! AUTH_Send    AUTH_Negotiate          the digests and groups the host accepts
//! AUTH_Receive DH-HMAC-CHAP_Challenge  the controller's choice, challenge and DH value
//! AUTH_Send    DH-HMAC-CHAP_Reply      our response (and our challenge, bidirectional)
//! AUTH_Receive DH-HMAC-CHAP_Success1   (the controller's response, checked)
//! AUTH_Send    DH-HMAC-CHAP_Success2   bidirectional only; AUTH_Failure2 on a mismatch
//! ```
//!
//! The DH exponentiations (milliseconds in the large groups) run on a worker thread
//! (`reactor::offload`), so the reactor's other queue pairs carry on meanwhile.
//!
//! The keys come from the keyring at attach (`bdev_nvme_attach_controller`'s
//! `dhchap_key` and `dhchap_ctrlr_key` name them); only their names are kept in the
//! controller's parameters, and no key material reaches a log or an error.
//!
//! With secure channel concatenation (`secure_concat`, NVMe base specification 2.1
//! §8.3.4.5.9) the admin queue's AUTH_Negotiate carries SC_C NEWTLSPSK (REPLACETLSPSK
//! over TLS), offering SHA-256 and SHA-384 (the TLS suites' hashes) and the DH groups
//! but not the null one; the reply always carries our challenge C2, with a sequence
//! number of 0 unless the controller must prove itself too; on success both sides hold
//! the generated PSK ([`GeneratedPsk`]) the controller's TLS queue pairs are keyed by.
//!
//! `bdev_nvme_set_keys` (SPDK's) changes the keys of an attached controller and runs the
//! same exchange again on each of its connected queue pairs, admin queue first, without
//! disconnecting: the AUTH_Send/AUTH_Receive commands go out between the queue pair's
//! other commands, and I/O carries on. A failed re-authentication disconnects that queue
//! pair (SPDK's host does the same; the controller closes it too after AUTH_Failure1)
//! and the call reports which queue failed and the controller's reason.

use super::qpair::{HostError, HostQpair};
use crate::nvme::auth::{self, DhGroup, FailureReason, HashId, auth_id, auth_type};
use crate::nvme::dhchap::{self, DhKey, DhchapKey, ResponseInputs};
use crate::nvme::spec;
use crate::nvme::tls::GeneratedPsk;
use std::sync::Arc;

/// The longest message an AUTH_Receive asks for.
const RECV_LEN: usize = 4096;
/// The most the host's DH computation (key pair and shared secret, on a worker thread)
/// may take, queueing included.
const DH_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A host's DH-HMAC-CHAP keys: its own, and the controller's when the controller must
/// prove itself too (bidirectional).
pub struct HostKeys {
    pub key: DhchapKey,
    pub ctrlr_key: Option<DhchapKey>,
}

/// The keys a controller's queue pairs authenticate with, if any (shared; compared by
/// identity; `Debug` shows no key).
#[derive(Clone, Default)]
pub struct DhchapHostKeys(Option<Arc<HostKeys>>);

impl DhchapHostKeys {
    pub fn new(keys: HostKeys) -> DhchapHostKeys {
        DhchapHostKeys(Some(Arc::new(keys)))
    }

    pub fn get(&self) -> Option<&HostKeys> {
        self.0.as_deref()
    }
}

impl std::fmt::Debug for DhchapHostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.get() {
            None => write!(f, "DhchapHostKeys(none)"),
            Some(k) => write!(
                f,
                "DhchapHostKeys(host key{})",
                if k.ctrlr_key.is_some() {
                    ", controller key"
                } else {
                    ""
                }
            ),
        }
    }
}

impl PartialEq for DhchapHostKeys {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for DhchapHostKeys {}

fn failed(what: impl std::fmt::Display) -> HostError {
    HostError::Auth(what.to_string())
}

/// Sends `msg` with AUTH_Send.
async fn send(q: &HostQpair, msg: &[u8], what: &str) -> Result<(), HostError> {
    let sqe = spec::auth_sqe(0, true, msg.len() as u32);
    q.auth_command(sqe, msg.len(), Some(msg))
        .await
        .map_err(|e| failed(format_args!("AUTH_Send of {what}: {e}")))?;
    Ok(())
}

/// Fetches the controller's next message with AUTH_Receive. An AUTH_Failure1 is an
/// error naming its reason.
async fn recv(q: &HostQpair, what: &str) -> Result<Vec<u8>, HostError> {
    let sqe = spec::auth_sqe(0, false, RECV_LEN as u32);
    let (_, msg) = q
        .auth_command(sqe, RECV_LEN, None)
        .await
        .map_err(|e| failed(format_args!("AUTH_Receive of {what}: {e}")))?;
    if msg.first() == Some(&auth_type::COMMON) && msg.get(1) == Some(&auth_id::FAILURE1) {
        let f = auth::decode_failure(&msg[..auth::FAILURE_LEN.min(msg.len())])
            .map_err(|e| failed(format_args!("AUTH_Failure1 instead of {what}: {e}")))?;
        let reason = FailureReason::from_code(f.rce).map_or("unknown reason", |r| r.describe());
        return Err(failed(format_args!(
            "the controller refused ({reason}; AUTH_Failure1 rc {} rce {:#x}) instead of sending {what}",
            f.rc, f.rce
        )));
    }
    Ok(msg)
}

/// Runs the exchange on `q` with `keys`, as transaction `tid`: the first one on a
/// queue pair, or a re-authentication of a connected one (`bdev_nvme_set_keys`), whose
/// messages go out between the queue pair's other commands. With `scc` (SC_C
/// NEWTLSPSK or REPLACETLSPSK) it asks for secure channel concatenation and returns the
/// generated PSK.
pub(crate) async fn authenticate(
    q: &HostQpair,
    keys: &HostKeys,
    hostnqn: &str,
    subnqn: &str,
    tid: u16,
    scc: u8,
) -> Result<Option<GeneratedPsk>, HostError> {
    let concat = scc != auth::sc_c::NOSC;
    let mut msg = Vec::new();
    if concat {
        auth::encode_negotiate_scc(
            &mut msg,
            tid,
            scc,
            &[HashId::Sha256, HashId::Sha384],
            &DhGroup::ALL[1..],
        );
    } else {
        auth::encode_negotiate(&mut msg, tid, &HashId::ALL, &DhGroup::ALL);
    }
    send(q, &msg, "AUTH_Negotiate").await?;

    let challenge = recv(q, "DH-HMAC-CHAP_Challenge").await?;
    let ch = auth::decode_challenge(&challenge)
        .map_err(|e| failed(format_args!("DH-HMAC-CHAP_Challenge: {e}")))?;
    if ch.tid != tid {
        return Err(failed(format_args!(
            "DH-HMAC-CHAP_Challenge: transaction id {} where we sent {tid}",
            ch.tid
        )));
    }
    let (hash, hl) = (ch.hash, ch.hash.digest_len());
    if concat && (ch.dhgroup == DhGroup::Null || hash == HashId::Sha512) {
        return Err(failed(format_args!(
            "secure channel concatenation: the controller chose {} with the {} DH group; it needs sha256 or sha384 and a DH group",
            hash.name(),
            ch.dhgroup.name()
        )));
    }
    let (secret, public) = if ch.dhgroup == DhGroup::Null {
        (None, Vec::new())
    } else {
        // Two exponentiations of milliseconds each: on a worker thread, not the reactor.
        let (group, peer) = (ch.dhgroup, ch.dhv.to_vec());
        let (s, public) = crate::reactor::offload::run(DH_TIME_LIMIT, move || {
            let k =
                DhKey::generate(group).map_err(|e| format!("DH key of {}: {e}", group.name()))?;
            let s = k
                .derive(&peer)
                .map_err(|e| format!("DH secret of {}: {e}", group.name()))?;
            Ok::<_, String>((s, k.public().to_vec()))
        })
        .await
        .map_err(|e| failed(format_args!("DH computation of {}: {e}", ch.dhgroup.name())))?
        .map_err(failed)?;
        (Some(s), public)
    };
    let dh_secret = secret.as_deref().map(|s| &s[..]);
    let rval = dhchap::response(
        &keys.key,
        ch.cval,
        &ResponseInputs {
            hash,
            kind: "HostHost",
            seqnum: ch.seqnum,
            tid,
            scc,
            nqn1: hostnqn,
            nqn2: subnqn,
            dh_secret,
        },
    );
    // Bidirectional: our challenge to the controller, and what it must answer. With
    // concatenation the challenge (C2) goes out anyway: the generated PSK needs it.
    let mut my_cval = vec![0u8; hl];
    if concat {
        dhchap::random_bytes(&mut my_cval).map_err(failed)?;
    }
    let mut seqnum = 0u32;
    let expected = match &keys.ctrlr_key {
        None => None,
        Some(ck) => {
            if !concat {
                dhchap::random_bytes(&mut my_cval).map_err(failed)?;
            }
            while seqnum == 0 {
                let mut b = [0u8; 4];
                dhchap::random_bytes(&mut b).map_err(failed)?;
                seqnum = u32::from_le_bytes(b);
            }
            Some(dhchap::response(
                ck,
                &my_cval,
                &ResponseInputs {
                    hash,
                    kind: "Controller",
                    seqnum,
                    tid,
                    scc,
                    nqn1: subnqn,
                    nqn2: hostnqn,
                    dh_secret,
                },
            ))
        }
    };
    auth::encode_reply(
        &mut msg,
        &auth::Reply {
            tid,
            hl,
            cvalid: expected.is_some() || concat,
            seqnum,
            rval: &rval,
            cval: &my_cval,
            dhv: &public,
        },
    );
    send(q, &msg, "DH-HMAC-CHAP_Reply").await?;

    let success1 = recv(q, "DH-HMAC-CHAP_Success1").await?;
    let s1 = auth::decode_success1(&success1)
        .map_err(|e| failed(format_args!("DH-HMAC-CHAP_Success1: {e}")))?;
    // KS = H(g^xy mod p); C1 the controller's challenge, C2 ours.
    let generated = match (concat, dh_secret) {
        (true, Some(s)) => Some(
            GeneratedPsk::new(
                hash,
                &dhchap::digest(hash, s),
                ch.cval,
                &my_cval,
                hostnqn,
                subnqn,
            )
            .map_err(|e| failed(format_args!("secure channel concatenation: {e}")))?,
        ),
        _ => None,
    };
    let Some(expected) = expected else {
        return Ok(generated);
    };
    let proven = s1.hl == hl && s1.rval.is_some_and(|r| dhchap::equal_ct(r, &expected));
    if !proven {
        // Tell the controller why before giving up on it.
        let mut f = [0u8; auth::FAILURE_LEN];
        if let Some(n) = auth::encode_failure(&mut f, auth_id::FAILURE2, tid, FailureReason::Failed)
        {
            let _ = send(q, &f[..n], "AUTH_Failure2").await;
        }
        return Err(failed(
            "the controller's response does not match its key (dhchap_ctrlr_key)",
        ));
    }
    auth::encode_success2(&mut msg, tid);
    send(q, &msg, "DH-HMAC-CHAP_Success2").await?;
    Ok(generated)
}
