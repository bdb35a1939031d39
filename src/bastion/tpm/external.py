"""Keys from outside the TPM in the TPM's own shapes, for signed policies.

An authority's public key (the product key that signs ``.pcrsig`` policies) enters the
TPM through TPM2_LoadExternal as a TPM2B_PUBLIC, and its signatures through
TPM2_VerifySignature as TPMT_SIGNATUREs. The key's Name, nameAlg || H(TPMT_PUBLIC), is
what a PolicyAuthorize digest commits to, so the public area must be built exactly as
the enrolling tool built it:

* RSA as systemd 252 does (``openssl_pubkey_to_tpm2_pubkey``): nameAlg SHA-256,
  attributes decrypt|sign|userWithAuth (0x00060040), empty authPolicy, symmetric and
  scheme NULL, keyBits from the modulus, and the exponent written out (65537, not the
  TPM's 0 shorthand; later systemd versions write 0, which changes the Name).
  ``explicit_exponent=False`` gives that later form.
* ECC P-256 (not used by systemd 252, whose signed policies are RSA only): nameAlg
  SHA-256, sign|userWithAuth, scheme NULL, KDF NULL.

:func:`signature` turns a raw signature (PKCS#1 v1.5 bytes, or DER ECDSA) into the
TPMT_SIGNATURE TPM2_VerifySignature takes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from bastion.errors import ConfigError
from bastion.formats.tpm2 import (
    Alg,
    Curve,
    EccParms,
    EccPoint,
    ObjectAttr,
    Public,
    RsaParms,
    Scheme,
    Signature,
    SymDef,
)

#: systemd 252's attributes for a loaded PCR-signing key: decrypt|sign|userWithAuth
SYSTEMD_RSA_ATTRIBUTES = ObjectAttr.DECRYPT | ObjectAttr.SIGN_ENCRYPT | ObjectAttr.USER_WITH_AUTH
ECC_ATTRIBUTES = ObjectAttr.SIGN_ENCRYPT | ObjectAttr.USER_WITH_AUTH
RSA_EXPONENT_DEFAULT = 65537
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def rsa_public(key: rsa.RSAPublicKey, *, explicit_exponent: bool = True) -> Public:
    """The TPMT_PUBLIC systemd 252 loads for an RSA PCR-signing key."""
    nums = key.public_numbers()
    if key.key_size not in (2048, 3072, 4096):
        raise ConfigError(f"RSA key of {key.key_size} bits: a TPM loads 2048, 3072 or 4096")
    if nums.e >= 1 << 32:
        raise ConfigError(f"RSA exponent {nums.e} does not fit the TPM's 32-bit field")
    exponent = nums.e if explicit_exponent or nums.e != RSA_EXPONENT_DEFAULT else 0
    n = nums.n.to_bytes((key.key_size + 7) // 8, "big")
    parms = RsaParms(SymDef(), Scheme(), key.key_size, exponent)
    return Public(Alg.RSA, Alg.SHA256, int(SYSTEMD_RSA_ATTRIBUTES), b"", parms, n)


def ecc_public(key: ec.EllipticCurvePublicKey) -> Public:
    """A P-256 verification key as a TPMT_PUBLIC (scheme NULL: any ECDSA hash)."""
    if not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"ECC key on {key.curve.name}: only NIST P-256 is supported")
    nums = key.public_numbers()
    point = EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big"))
    parms = EccParms(SymDef(), Scheme(), Curve.NIST_P256)
    return Public(Alg.ECC, Alg.SHA256, int(ECC_ATTRIBUTES), b"", parms, point)


def external_public(key: PublicKey, *, explicit_exponent: bool = True) -> Public:
    """:func:`rsa_public` or :func:`ecc_public` for ``key``."""
    if isinstance(key, rsa.RSAPublicKey):
        return rsa_public(key, explicit_exponent=explicit_exponent)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ecc_public(key)
    raise ConfigError(f"a {type(key).__name__} cannot authorize TPM policies (RSA or ECC)")


def signature(key: PublicKey, raw: bytes) -> bytes:
    """TPMT_SIGNATURE for a SHA-256 signature by ``key``: RSASSA (PKCS#1 v1.5 bytes) or
    ECDSA (DER, as ``cryptography`` returns it)."""
    if isinstance(key, rsa.RSAPublicKey):
        return Signature(Alg.RSASSA, Alg.SHA256, sig=raw).to_bytes()
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            r, s = utils.decode_dss_signature(raw)
        except ValueError as exc:
            raise ConfigError(f"ECDSA signature is not DER: {exc}") from exc
        size = (key.curve.key_size + 7) // 8
        if r >= 1 << (8 * size) or s >= 1 << (8 * size):
            raise ConfigError("ECDSA signature values are larger than the curve")
        return Signature(
            Alg.ECDSA, Alg.SHA256, r=r.to_bytes(size, "big"), s=s.to_bytes(size, "big")
        ).to_bytes()
    raise ConfigError(f"a {type(key).__name__} cannot authorize TPM policies (RSA or ECC)")
