#!/usr/bin/env python3
"""Writes src/nvme/dhchap_vectors.rs: DH-HMAC-CHAP test vectors computed without tessera.

The key format, transformation and response follow SPDK's lib/nvme/nvme_auth.c
(nvme_auth_get_key, nvme_auth_transform_key, nvme_auth_augment_challenge,
spdk_nvme_dhchap_calculate), here with Python's zlib, base64, hmac and hashlib. The DH
values come from OpenSSL through the `cryptography` package (RFC 7919 ffdhe2048 as
OpenSSL has it built in), checked against Python's own pow().
Secure channel concatenation (the generated PSK, its digest, the NVMe1G identity and the
TLS PSK) follows the NVMe base specification 2.1 §8.3.4.5.9 and TP 8018 as the Linux
kernel's drivers/nvme/common/auth.c computes them; the kernel's own KUnit vectors
(drivers/nvme/common/tests/auth_kunit.c) are checked here first, so these functions are
known to agree with the kernel before they make tessera's vectors.
Run: python3 tests/dhchap_vectors.py > src/nvme/dhchap_vectors.rs
"""
import base64, hashlib, hmac, struct, subprocess, zlib

from cryptography.hazmat.primitives.asymmetric import dh

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:8ca5bd34-ea4a-4b4b-b1a8-0d5ef7ae8b20"
SUBNQN = "nqn.2026-11.io.tessera:vd0"
H = {1: hashlib.sha256, 2: hashlib.sha384, 3: hashlib.sha512}

def secret(hh, key):
    return "DHHC-1:%02x:%s:" % (hh, base64.b64encode(key + struct.pack("<I", zlib.crc32(key))).decode())

def transform(hh, key, nqn):
    if hh == 0:
        return key
    return hmac.new(key, nqn.encode() + b"NVMe-over-Fabrics", H[hh]).digest()

def calculate(keyhh, key, hid, kind, seq, tid, scc, nqn1, nqn2, dhsec, cval):
    if dhsec is not None:
        cval = hmac.new(H[hid](dhsec).digest(), cval, H[hid]).digest()
    kh = transform(keyhh, key, nqn1)
    msg = cval + struct.pack("<I", seq) + struct.pack("<H", tid) + bytes([scc]) + kind.encode() \
        + nqn1.encode() + b"\0" + nqn2.encode()
    return hmac.new(kh, msg, H[hid]).digest()

k256 = bytes(range(0x10, 0x30))            # 32 bytes
k512 = bytes((i * 7 + 3) & 0xff for i in range(64))
knone = bytes((i * 13 + 1) & 0xff for i in range(48))
kshort = bytes(16)
bad = bytearray(base64.b64decode(secret(1, k256)[10:-1])); bad[-1] ^= 1
cval32 = bytes((i * 5 + 9) & 0xff for i in range(32))
cval48 = bytes((i * 11 + 2) & 0xff for i in range(48))

# ffdhe2048 from OpenSSL's built-in group.
def openssl_prime(bits):
    pem = subprocess.run(["openssl", "genpkey", "-algorithm", "DH", "-pkeyopt", "group:ffdhe%d" % bits],
                         check=True, capture_output=True).stdout
    asn = subprocess.run(["openssl", "asn1parse"], input=pem, check=True, capture_output=True).stdout
    ints = [l.split(":")[-1] for l in asn.decode().splitlines() if "INTEGER" in l]
    return int(ints[1], 16)

params = dh.DHParameterNumbers(openssl_prime(2048), 2).parameters()
p = params.parameter_numbers().p
x = int.from_bytes(bytes((i * 29 + 17) & 0xff for i in range(64)), "big") | (1 << 511)
y = pow(2, x, p)
mine = dh.DHPrivateNumbers(x, dh.DHPublicNumbers(y, params.parameter_numbers())).private_key()
# The peer's key is fixed too, so that running the script again gives the same file.
peer_x = int.from_bytes(bytes((i * 41 + 99) & 0xff for i in range(64)), "big") | (1 << 511)
peer = dh.DHPrivateNumbers(peer_x, dh.DHPublicNumbers(pow(2, peer_x, p), params.parameter_numbers())).private_key()
shared = mine.exchange(peer.public_key())
peer_y = peer.public_key().public_numbers().y
assert shared == pow(peer_y, x, p).to_bytes(256, "big")

# Secure channel concatenation.
HASHLEN = {1: 32, 2: 48, 3: 64}

def generated_psk(hid, ks, c1, c2):
    return hmac.new(ks, c1 + c2, H[hid]).digest()

def psk_digest(hid, psk, hostnqn, subnqn):
    mac = hmac.new(psk, (hostnqn + " " + subnqn + " NVMe-over-Fabrics").encode(), H[hid]).digest()
    return base64.b64encode(mac).decode()

def hkdf_expand_label(hid, ikm, label, context, length):
    prk = hmac.new(bytes(HASHLEN[hid]), ikm, H[hid]).digest()        # HKDF-Extract, zero salt
    full = b"tls13 " + label
    info = struct.pack(">H", length) + bytes([len(full)]) + full + bytes([len(context)]) + context
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), H[hid]).digest()
        okm += t
        i += 1
    return okm[:length]

def tls_psk(hid, psk, digest):
    return hkdf_expand_label(hid, psk, b"nvme-tls-psk", ("%02d %s" % (hid, digest)).encode(), HASHLEN[hid])

# The kernel's KUnit vectors (skey used as the session key, as the test passes it).
KUNIT = {
    1: ("1733c59fa7f48fcf37f5f26fc4ff0268ad4f78e030f4f3b0bfd1d47e7bb1447a",
        "OldoKuTfKddMuyCznAZojkWD7P4D9/AtzDzLimtOxqI=",
        "3c17da628474a04d2247c4cab47968c915388193f7c071bd9489cc3666cd7cc8"),
    2: ("f14b2dd3234c459694d3bc63f8968bd6b37c2c6de849e22e118749001ce4bbe8640b9e3a748cb11ce4b1d71d359cce39",
        "cffMWk8TSS7HOQebjgYEIkrPrjWPV4JE5cdPB8WhEvY4JBW5YynKyv66XscN4A9n",
        "27747532335 37b3fa50eb7d16a8e43457d85f4906c005b2236616c5d80939d0898fff15bb8b77119d2be0aac423e7590".replace(" ", "")),
}
for hid, (want_psk, want_digest, want_tls) in KUNIT.items():
    n = HASHLEN[hid]
    skey = bytes(ord("A") + i for i in range(n))
    c1 = bytes(range(n))
    c2 = bytes(0xff - i for i in range(n))
    g = generated_psk(hid, skey, c1, c2)
    assert g.hex() == want_psk, (hid, g.hex())
    d = psk_digest(hid, g, "hostnqn", "subsysnqn")
    assert d == want_digest, (hid, d)
    assert tls_psk(hid, g, d).hex() == want_tls, hid

# tessera's chain: KS = H(g^xy mod p) of the ffdhe2048 exchange above, SHA-384.
ks384 = hashlib.sha384(shared).digest()
c2_48 = bytes((i * 17 + 5) & 0xff for i in range(48))
gen384 = generated_psk(2, ks384, cval48, c2_48)
dig384 = psk_digest(2, gen384, HOSTNQN, SUBNQN)
ks256 = hashlib.sha256(shared).digest()
c2_32 = bytes((i * 3 + 7) & 0xff for i in range(32))
gen256 = generated_psk(1, ks256, cval32, c2_32)
dig256 = psk_digest(1, gen256, HOSTNQN, SUBNQN)

out = {
    "HOSTNQN": HOSTNQN, "SUBNQN": SUBNQN,
    "KEY_SHA256": secret(1, k256), "KEY_SHA512": secret(3, k512), "KEY_NONE": secret(0, knone),
    "KEY_SHORT": secret(0, kshort),
    "KEY_BAD_CRC": "DHHC-1:01:%s:" % base64.b64encode(bytes(bad)).decode(),
    "KEY_SHA256_TRANSFORMED": transform(1, k256, HOSTNQN).hex(),
    "KEY_SHA512_TRANSFORMED": transform(3, k512, SUBNQN).hex(),
    "CVAL32": cval32.hex(), "CVAL48": cval48.hex(),
    "RESP_HOST_SHA256_NULL": calculate(1, k256, 1, "HostHost", 0x12345678, 7, 0, HOSTNQN, SUBNQN, None, cval32).hex(),
    "DH2048_X": x.to_bytes(64, "big").hex(),
    "DH2048_PUB": y.to_bytes(256, "big").hex(),
    "DH2048_PEER": peer_y.to_bytes(256, "big").hex(),
    "DH2048_SECRET": shared.hex(),
    "RESP_CTRL_SHA384_DH2048": calculate(3, k512, 2, "Controller", 42, 0x0102, 0, SUBNQN, HOSTNQN, shared, cval48).hex(),
    "RESP_HOST_SHA384_DH2048_NEWTLSPSK": calculate(1, k256, 2, "HostHost", 7, 3, 2, HOSTNQN, SUBNQN, shared, cval48).hex(),
    "KUNIT_SHA256_PSK": KUNIT[1][0], "KUNIT_SHA256_DIGEST": KUNIT[1][1], "KUNIT_SHA256_TLS_PSK": KUNIT[1][2],
    "KUNIT_SHA384_PSK": KUNIT[2][0], "KUNIT_SHA384_DIGEST": KUNIT[2][1], "KUNIT_SHA384_TLS_PSK": KUNIT[2][2],
    "CONCAT_C2_48": c2_48.hex(), "CONCAT_C2_32": c2_32.hex(),
    "GEN_SHA384_PSK": gen384.hex(), "GEN_SHA384_DIGEST": dig384,
    "GEN_SHA384_IDENTITY": "NVMe1G02 %s %s %s" % (HOSTNQN, SUBNQN, dig384),
    "GEN_SHA384_TLS_PSK": tls_psk(2, gen384, dig384).hex(),
    "GEN_SHA256_PSK": gen256.hex(), "GEN_SHA256_DIGEST": dig256,
    "GEN_SHA256_TLS_PSK": tls_psk(1, gen256, dig256).hex(),
}
print("// Generated by tests/dhchap_vectors.py; do not edit.")
for k, v in out.items():
    print('const %s: &str = "%s";' % (k, v))
