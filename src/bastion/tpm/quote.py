"""Server-side TPM cryptography: quote and certify verification, credential making.

Pure (bytes in, raise on failure), no TPM needed. Used by the fleet server, the
``bastion tpm verify-quote`` command and, for the credential math, the software TPM.

* ``verify_quote(attest, signature, ak_public, nonce, selection, pcr_values)`` checks, in
  this order: the AK signature over the exact TPMS_ATTEST bytes (``SignatureError``), the
  structure and type (``FormatError`` / ``VerificationError``), the nonce
  (``DigestMismatchError(area="nonce")``), the PCR selection (``area="pcr-selection"``)
  and the PCR digest against the supplied values (``area="pcr-digest"``). It returns the
  parsed :class:`~bastion.formats.tpm2.Attest` (clock, reset and restart counts).
  ``quote_result`` runs every check and collects the failures instead of raising.
* ``verify_certify(attest, signature, ak_public, nonce, key_public)``: TPM2_Certify.
* ``make_credential(ek_public, ak_name, secret)``: TPM2_MakeCredential done in software
  (Part 1, 24: RSA-OAEP(SHA-256, "IDENTITY\\0") of a random seed; symKey =
  KDFa(nameAlg, seed, "STORAGE", name); HMAC key = KDFa(nameAlg, seed, "INTEGRITY");
  AES-CFB with a zero IV; outer HMAC over encIdentity || name).
* ``kdfa``, ``secret_to_credential``, ``credential_to_secret``: the pieces, shared with
  the software TPM's ActivateCredential.
* ``public_key(tpm2b_public)`` / ``public_pem(tpm2b_public)``: a cryptography key or PEM
  from a TPM2B_PUBLIC, ``load_public(ak)`` for any accepted AK spelling.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # TPMs use AES-CFB; cryptography moved CFB to "decrepit" in 47
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

from bastion import limits
from bastion.errors import (
    BastionError,
    ConfigError,
    DigestMismatchError,
    FormatError,
    LimitError,
    SignatureError,
    VerificationError,
)
from bastion.formats.tpm2 import (
    HASH_NAMES,
    HASH_SIZES,
    ST_ATTEST_CERTIFY,
    ST_ATTEST_QUOTE,
    Alg,
    Attest,
    CertifyInfo,
    Curve,
    EccParms,
    EccPoint,
    EncryptedSecret,
    IdObject,
    Public,
    QuoteInfo,
    RsaParms,
    Signature,
    hash_digest,
    tpm2b,
    u32,
)
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.pcr import pcr_digest, selection_bytes, selection_list

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

_CURVES: dict[int, ec.EllipticCurve] = {
    Curve.NIST_P256: ec.SECP256R1(),
    Curve.NIST_P384: ec.SECP384R1(),
    Curve.NIST_P521: ec.SECP521R1(),
}
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}


#: TPM hash algorithm id -> HashAlg (a table: the enum's value lookup is slow per quote)
_HASH_ALGS: dict[int, HashAlg] = {alg: HashAlg(name) for alg, name in HASH_NAMES.items()}
#: one ECDSA scheme object per hash (immutable; building one per verify showed in profiles)
_ECDSA: dict[int, ec.ECDSA] = {alg: ec.ECDSA(h()) for alg, h in _HASHES.items()}


def hash_algorithm(alg: int) -> hashes.HashAlgorithm:
    """The cryptography hash object for a TPM hash algorithm id."""
    try:
        return _HASHES[alg]()
    except KeyError:
        raise FormatError(f"hash algorithm 0x{alg:04x} is not supported") from None


# --- keys -------------------------------------------------------------------------------------


def public_key(public: bytes | Public) -> PublicKey:
    """The cryptography public key of a TPM2B_PUBLIC (RSA or ECC)."""
    if isinstance(public, bytes):
        return _public_key_cached(public)
    return _public_key(public)


@functools.lru_cache(maxsize=4096)
def _public_key_cached(public: bytes) -> PublicKey:
    # a fleet server sees the same AKs again and again; key objects are immutable
    return _public_key(Public.parse(public))


def _public_key(pub: Public) -> PublicKey:
    if isinstance(pub.parameters, RsaParms) and isinstance(pub.unique, bytes):
        e = pub.parameters.exponent or 65537
        n = int.from_bytes(pub.unique, "big")
        if n.bit_length() != pub.parameters.key_bits:
            raise FormatError(
                f"TPM2B_PUBLIC: RSA modulus has {n.bit_length()} bits, "
                f"keyBits says {pub.parameters.key_bits}"
            )
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise FormatError(f"TPM2B_PUBLIC: bad RSA key: {exc}") from exc
    if isinstance(pub.parameters, EccParms) and isinstance(pub.unique, EccPoint):
        curve = _CURVES[pub.parameters.curve]
        x, y = int.from_bytes(pub.unique.x, "big"), int.from_bytes(pub.unique.y, "big")
        try:
            return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
        except ValueError as exc:
            raise FormatError(f"TPM2B_PUBLIC: ECC point is not on the curve: {exc}") from exc
    raise FormatError(f"TPM2B_PUBLIC: object type 0x{pub.type:04x} has no public key")


def public_pem(public: bytes | Public) -> bytes:
    """SubjectPublicKeyInfo PEM of a TPM2B_PUBLIC, as ``tpm2_readpublic -f pem`` writes."""
    return public_key(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


AkPublic = bytes | str | Public | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def load_public(ak: AkPublic) -> PublicKey:
    """An AK given as TPM2B_PUBLIC bytes, PEM (bytes or str), Public or key object."""
    if isinstance(ak, bytes) and not ak[:1].isspace() and not ak.startswith(b"-----BEGIN"):
        return public_key(ak)  # TPM2B_PUBLIC bytes, the server's spelling: first
    if isinstance(ak, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        return ak
    if isinstance(ak, Public):
        return public_key(ak)
    raw = ak.encode() if isinstance(ak, str) else ak
    if raw.lstrip().startswith(b"-----BEGIN"):
        if len(raw) > limits.KEY_FILE_MAX_SIZE:
            raise LimitError(f"AK PEM is {len(raw)} bytes, limit is {limits.KEY_FILE_MAX_SIZE}")
        try:
            key = serialization.load_pem_public_key(raw)
        except ValueError as exc:
            raise FormatError(f"AK PEM is not a public key: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise FormatError(f"AK PEM holds a {type(key).__name__}, expected an ECC or RSA key")
        return key
    return public_key(raw)


def verify_signature(key: AkPublic, message: bytes, signature: bytes) -> Signature:
    """Check a TPMT_SIGNATURE over ``message``; SignatureError if it does not verify."""
    sig = Signature.parse(signature)
    _verify_parsed(load_public(key), message, sig)
    return sig


def _verify_parsed(pub: PublicKey, message: bytes, sig: Signature) -> None:
    if sig.sig_alg == Alg.ECDSA and isinstance(pub, ec.EllipticCurvePublicKey):
        der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
        scheme = _ECDSA.get(sig.hash_alg) or ec.ECDSA(hash_algorithm(sig.hash_alg))
        try:
            pub.verify(der, message, scheme)
        except InvalidSignature:
            raise SignatureError("TPM signature (ECDSA) does not verify with the AK") from None
        return
    if sig.sig_alg in (Alg.RSASSA, Alg.RSAPSS) and isinstance(pub, rsa.RSAPublicKey):
        h = hash_algorithm(sig.hash_alg)
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if sig.sig_alg == Alg.RSASSA
            else padding.PSS(mgf=padding.MGF1(h), salt_length=padding.PSS.AUTO)
        )
        try:
            pub.verify(sig.sig, message, pad, h)
        except InvalidSignature:
            raise SignatureError("TPM signature (RSA) does not verify with the AK") from None
        return
    raise SignatureError(
        f"signature scheme 0x{sig.sig_alg:04x} does not match the {type(pub).__name__} key"
    )


# --- quotes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuoteFailure:
    """One failed quote check: a stable id (``quote.nonce``, ...) and the error."""

    id: str
    error: BastionError


@dataclass(frozen=True, slots=True)
class QuoteResult:
    """Every check of a quote: the parsed attest (None if unreadable) and the failures."""

    attest: Attest | None
    failures: tuple[QuoteFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    def raise_first(self) -> Attest:
        """Raise the first failure, or return the verified attest."""
        if self.failures:
            raise self.failures[0].error
        assert self.attest is not None
        return self.attest


def quote_result(  # noqa: PLR0917 - the issue's signature
    attest: bytes,
    signature: bytes,
    ak_public: AkPublic,
    nonce: bytes,
    selection: PcrSelection,
    pcr_values: Mapping[int, bytes],
) -> QuoteResult:
    """Run every quote check and collect the failures (see :func:`verify_quote`)."""
    failures: list[QuoteFailure] = []
    digest_alg: int = Alg.SHA256
    try:
        sig = Signature.parse(signature)
        digest_alg = sig.hash_alg
        _verify_parsed(load_public(ak_public), attest, sig)
    except BastionError as exc:
        failures.append(QuoteFailure("quote.signature", exc))
    try:
        parsed = Attest.parse(attest)
    except FormatError as exc:
        failures.append(QuoteFailure("quote.format", exc))
        return QuoteResult(None, tuple(failures))
    if parsed.type != ST_ATTEST_QUOTE or not isinstance(parsed.attested, QuoteInfo):
        failures.append(
            QuoteFailure(
                "quote.type",
                VerificationError(
                    f"attest type is 0x{parsed.type:04x}, expected quote 0x{ST_ATTEST_QUOTE:04x}"
                ),
            )
        )
        return QuoteResult(parsed, tuple(failures))
    if not hmac.compare_digest(parsed.extra_data, nonce):
        failures.append(
            QuoteFailure(
                "quote.nonce",
                DigestMismatchError(
                    f"quote nonce is {parsed.extra_data.hex() or '(empty)'}, "
                    f"expected {nonce.hex() or '(empty)'}",
                    area="nonce",
                ),
            )
        )
    # compared as structures (the encoding is one-to-one), marshalled only for the message
    if parsed.attested.pcr_select != selection_list(selection):
        got_sel = parsed.attested.pcr_select.to_bytes()
        want_sel = selection_bytes(selection)
        failures.append(
            QuoteFailure(
                "quote.pcr-selection",
                DigestMismatchError(
                    f"quote covers PCR selection {got_sel.hex()}, expected {selection} "
                    f"({want_sel.hex()})",
                    area="pcr-selection",
                ),
            )
        )
    else:
        try:
            expected = pcr_digest(selection, pcr_values, _HASH_ALGS[digest_alg])
        except (ConfigError, KeyError) as exc:
            failures.append(
                QuoteFailure("quote.pcr-values", VerificationError(f"bad PCR values: {exc}"))
            )
        else:
            if not hmac.compare_digest(parsed.attested.pcr_digest, expected):
                failures.append(
                    QuoteFailure(
                        "quote.pcr-digest",
                        DigestMismatchError(
                            f"quote pcrDigest {parsed.attested.pcr_digest.hex()} differs from "
                            f"the digest of the supplied {selection} values {expected.hex()}",
                            area="pcr-digest",
                        ),
                    )
                )
    return QuoteResult(parsed, tuple(failures))


def verify_quote(  # noqa: PLR0917 - the issue's signature
    attest: bytes,
    signature: bytes,
    ak_public: AkPublic,
    nonce: bytes,
    selection: PcrSelection,
    pcr_values: Mapping[int, bytes],
) -> Attest:
    """Verify a TPM2_Quote; raises the first failed check (signature first)."""
    return quote_result(attest, signature, ak_public, nonce, selection, pcr_values).raise_first()


def verify_certify(
    attest: bytes, signature: bytes, ak_public: AkPublic, nonce: bytes, key_public: bytes
) -> Attest:
    """Verify a TPM2_Certify of the key whose TPM2B_PUBLIC is ``key_public``."""
    verify_signature(ak_public, attest, signature)
    parsed = Attest.parse(attest)
    if parsed.type != ST_ATTEST_CERTIFY or not isinstance(parsed.attested, CertifyInfo):
        raise VerificationError(
            f"attest type is 0x{parsed.type:04x}, expected certify 0x{ST_ATTEST_CERTIFY:04x}"
        )
    if not hmac.compare_digest(parsed.extra_data, nonce):
        raise DigestMismatchError(
            f"certify nonce is {parsed.extra_data.hex()}, expected {nonce.hex()}", area="nonce"
        )
    name = Public.parse(key_public).name
    if not hmac.compare_digest(parsed.attested.name, name):
        raise DigestMismatchError(
            f"certified name {parsed.attested.name.hex()} is not the key's name {name.hex()}",
            area="name",
        )
    return parsed


# --- credentials ------------------------------------------------------------------------------


def kdfa(  # noqa: PLR0917 - the spec's KDFa(hash, key, label, U, V, bits)
    hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int
) -> bytes:
    """KDFa (Part 1, 11.4.10.2): SP800-108 counter mode with HMAC; ``label`` gets its NUL."""
    if not label.endswith(b"\0"):
        label += b"\0"
    name = HASH_NAMES[hash_alg]
    out = b""
    counter = 1
    nbytes = (bits + 7) // 8
    while len(out) < nbytes:
        out += hmac.digest(key, u32(counter) + label + context_u + context_v + u32(bits), name)
        counter += 1
    out = out[:nbytes]
    if bits % 8:
        out = bytes([out[0] & ((1 << (bits % 8)) - 1)]) + out[1:]
    return out


def aes_cfb(key: bytes, data: bytes, *, encrypt: bool, iv: bytes | None = None) -> bytes:
    cipher = Cipher(algorithms.AES(key), CFB(iv or bytes(16)))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def secret_to_credential(
    credential: bytes, name: bytes, seed: bytes, name_alg: int = Alg.SHA256, sym_bits: int = 128
) -> bytes:
    """TPM2B_ID_OBJECT protecting ``credential`` for object ``name`` (SecretToCredential)."""
    sym_key = kdfa(name_alg, seed, b"STORAGE", name, b"", sym_bits)
    enc = aes_cfb(sym_key, tpm2b(credential), encrypt=True)
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", HASH_SIZES[name_alg] * 8)
    outer = hmac.digest(hmac_key, enc + name, HASH_NAMES[name_alg])
    return IdObject(outer, enc).to_bytes()


def credential_to_secret(
    id_object: bytes, name: bytes, seed: bytes, name_alg: int = Alg.SHA256, sym_bits: int = 128
) -> bytes:
    """Undo :func:`secret_to_credential`; VerificationError if the integrity check fails."""
    obj = IdObject.parse(id_object)
    hmac_key = kdfa(name_alg, seed, b"INTEGRITY", b"", b"", HASH_SIZES[name_alg] * 8)
    outer = hmac.digest(hmac_key, obj.enc_identity + name, HASH_NAMES[name_alg])
    if not hmac.compare_digest(outer, obj.integrity_hmac):
        raise VerificationError("credential integrity check failed (wrong EK, AK name or blob)")
    sym_key = kdfa(name_alg, seed, b"STORAGE", name, b"", sym_bits)
    plain = aes_cfb(sym_key, obj.enc_identity, encrypt=False)
    size = int.from_bytes(plain[:2], "big")
    if len(plain) < 2 or size != len(plain) - 2:
        raise VerificationError("credential decrypts to a malformed TPM2B_DIGEST")
    return plain[2:]


IDENTITY_LABEL = b"IDENTITY\0"


def oaep(hash_alg: int, label: bytes = IDENTITY_LABEL) -> padding.OAEP:
    """The RSA-OAEP padding TPMs use for seeds (MGF1 with the same hash)."""
    h = hash_algorithm(hash_alg)
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=label)


def kdfe(hash_alg: int, z: bytes, label: bytes, party_u: bytes, party_v: bytes, bits: int) -> bytes:  # noqa: PLR0917 - the spec's KDFe
    """KDFe (Part 1, 11.4.10.3): the SP800-56A concatenation KDF over the ECDH x-coordinate."""
    if not label.endswith(b"\0"):
        label += b"\0"
    name = HASH_NAMES[hash_alg]
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hashlib.new(name, u32(counter) + z + label + party_u + party_v).digest()
        counter += 1
    return out[: (bits + 7) // 8]


def _ecc_seed(ek: Public, size: int) -> tuple[bytes, bytes]:
    """(seed, TPMS_ECC_POINT of the ephemeral key) for an ECC EK (Part 1, C.6.4)."""
    assert isinstance(ek.parameters, EccParms) and isinstance(ek.unique, EccPoint)
    key = public_key(ek)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    coord = (key.curve.key_size + 7) // 8
    eph = ec.generate_private_key(key.curve)
    z = eph.exchange(ec.ECDH(), key)
    nums = eph.public_key().public_numbers()
    ex, ey = nums.x.to_bytes(coord, "big"), nums.y.to_bytes(coord, "big")
    seed = kdfe(ek.name_alg, z, b"IDENTITY", ex, ek.unique.x, size * 8)
    return seed, EccPoint(ex, ey).to_bytes()


def make_credential(
    ek_public: bytes, ak_name: bytes, secret: bytes, *, seed: bytes | None = None
) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential in software: returns (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET).

    ``ek_public`` is the EK's TPM2B_PUBLIC: an RSA (seed encrypted with RSA-OAEP) or ECC
    (seed agreed by ephemeral ECDH + KDFe) storage key, as the TCG EK templates make;
    ``ak_name`` the Name of the key that must be loaded next to the EK; ``secret`` at most
    the EK nameAlg's digest size. ``seed`` (RSA only) is for reproducible tests.
    """
    ek = Public.parse(ek_public)
    if not isinstance(ek.parameters, RsaParms | EccParms):
        raise ConfigError(f"make_credential needs an RSA or ECC EK, got type 0x{ek.type:04x}")
    if ek.parameters.symmetric.algorithm != Alg.AES:
        raise ConfigError("the EK is not a storage key (no symmetric algorithm)")
    if ek.name_alg not in HASH_SIZES:
        raise ConfigError(f"the EK nameAlg 0x{ek.name_alg:04x} is not a hash")
    size = HASH_SIZES[ek.name_alg]
    if not 0 < len(secret) <= min(size, limits.TPM_MAX_CREDENTIAL_SIZE):
        raise ConfigError(f"credential secret is {len(secret)} bytes, must be 1..{size}")
    if len(ak_name) > limits.TPM_MAX_NAME_SIZE or len(ak_name) < 2:
        raise ConfigError(f"AK name is {len(ak_name)} bytes, not a TPM Name")
    if isinstance(ek.parameters, EccParms):
        if seed is not None:
            raise ConfigError("an ECC EK derives its seed from ECDH; no seed can be given")
        seed, encrypted = _ecc_seed(ek, size)
    else:
        seed = os.urandom(size) if seed is None else seed
        key = public_key(ek)
        assert isinstance(key, rsa.RSAPublicKey)
        encrypted = key.encrypt(seed, oaep(ek.name_alg))
    id_object = secret_to_credential(
        secret, ak_name, seed, ek.name_alg, ek.parameters.symmetric.key_bits
    )
    return id_object, EncryptedSecret(encrypted).to_bytes()


__all__ = [
    "QuoteFailure",
    "QuoteResult",
    "aes_cfb",
    "credential_to_secret",
    "hash_digest",
    "kdfa",
    "kdfe",
    "load_public",
    "make_credential",
    "oaep",
    "public_key",
    "public_pem",
    "quote_result",
    "secret_to_credential",
    "verify_certify",
    "verify_quote",
    "verify_signature",
]
