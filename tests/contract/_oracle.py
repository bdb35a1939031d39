"""An independent reading of the TPM bytes the contract suite checks.

Written from TPM 2.0 Part 2 (structures) for the test suite only, so that what a
backend returns is judged by code that shares nothing with either backend or with
bastion's own codecs: TPM2B_PUBLIC (ECC/RSA unique), TPMT_SIGNATURE (ECDSA, RSASSA)
and TPMS_ATTEST (quote and certify bodies). Signatures are checked with
``cryptography``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ALG_RSA, ALG_SHA256, ALG_NULL, ALG_ECC = 0x0001, 0x000B, 0x0010, 0x0023
ALG_RSASSA, ALG_ECDSA, ALG_KEYEDHASH = 0x0014, 0x0018, 0x0008
ST_ATTEST_CERTIFY, ST_ATTEST_QUOTE = 0x8017, 0x8018
GENERATED_VALUE = 0xFF544347


class _R:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def b2(self) -> bytes:
        return self.take(self.u16())


@dataclass
class Public:
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None
    tpmt: bytes

    @property
    def name(self) -> bytes:
        return struct.pack(">H", self.name_alg) + hashlib.sha256(self.tpmt).digest()


def parse_public(tpm2b: bytes) -> Public:
    r = _R(tpm2b)
    tpmt = r.b2()
    assert r.pos == len(tpm2b), "trailing bytes after TPM2B_PUBLIC"
    r = _R(tpmt)
    typ, name_alg, attrs = r.u16(), r.u16(), r.u32()
    policy = r.b2()
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None
    if typ in (ALG_ECC, ALG_RSA):
        sym = r.u16()
        if sym != ALG_NULL:
            r.take(4)
        scheme = r.u16()
        if scheme != ALG_NULL:
            r.u16()
        if typ == ALG_ECC:
            curve = r.u16()
            kdf = r.u16()
            if kdf != ALG_NULL:
                r.u16()
            x, y = r.b2(), r.b2()
            assert curve == 0x0003, "expected NIST P-256"
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        else:
            bits, exponent = r.u16(), r.u32()
            n = r.b2()
            assert len(n) * 8 == bits
            key = rsa.RSAPublicNumbers(exponent or 65537, int.from_bytes(n, "big")).public_key()
    elif typ == ALG_KEYEDHASH:
        scheme = r.u16()
        if scheme != ALG_NULL:
            r.take(4)
        r.b2()
    else:
        raise ValueError(f"unexpected type {typ:#x}")
    assert r.pos == len(tpmt), "trailing bytes in TPMT_PUBLIC"
    return Public(typ, name_alg, attrs, policy, key, tpmt)


def verify_signature(public: bytes, message: bytes, signature: bytes) -> None:
    """Raise (InvalidSignature / AssertionError) unless ``signature`` is valid."""
    pub = parse_public(public)
    r = _R(signature)
    alg, halg = r.u16(), r.u16()
    assert halg == ALG_SHA256
    if alg == ALG_ECDSA:
        sig_r, sig_s = r.b2(), r.b2()
        assert r.pos == len(signature)
        assert isinstance(pub.key, ec.EllipticCurvePublicKey)
        der = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
        pub.key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    elif alg == ALG_RSASSA:
        sig = r.b2()
        assert r.pos == len(signature)
        assert isinstance(pub.key, rsa.RSAPublicKey)
        pub.key.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise AssertionError(f"unexpected signature algorithm {alg:#x}")


def verify_digest_signature(public: bytes, digest: bytes, signature: bytes) -> None:
    """Like verify_signature, for a signature over a precomputed SHA-256 digest."""
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    pub = parse_public(public)
    r = _R(signature)
    alg, _halg = r.u16(), r.u16()
    if alg == ALG_ECDSA:
        sig_r, sig_s = r.b2(), r.b2()
        der = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
        assert isinstance(pub.key, ec.EllipticCurvePublicKey)
        pub.key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    else:
        sig = r.b2()
        assert isinstance(pub.key, rsa.RSAPublicKey)
        pub.key.verify(sig, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


@dataclass
class Attest:
    type: int
    extra_data: bytes
    # quote
    selection: list[tuple[int, bytes]]
    pcr_digest: bytes
    # certify
    name: bytes
    qualified_name: bytes


def parse_attest(data: bytes) -> Attest:
    r = _R(data)
    magic, typ = r.u32(), r.u16()
    assert magic == GENERATED_VALUE
    r.b2()  # qualifiedSigner
    extra = r.b2()
    r.take(8 + 4 + 4 + 1 + 8)  # clockInfo, firmwareVersion
    sel: list[tuple[int, bytes]] = []
    digest = name = qname = b""
    if typ == ST_ATTEST_QUOTE:
        for _ in range(r.u32()):
            halg = r.u16()
            sel.append((halg, r.take(r.u8())))
        digest = r.b2()
    elif typ == ST_ATTEST_CERTIFY:
        name, qname = r.b2(), r.b2()
    else:
        raise AssertionError(f"unexpected attest type {typ:#x}")
    assert r.pos == len(data), "trailing bytes in TPMS_ATTEST"
    return Attest(typ, extra, sel, digest, name, qname)
