"""Signers and verifiers: the one way bastion makes and checks a raw signature.

A :class:`Signer` is what service code holds instead of a private key: it knows its
key id, its signature scheme and its public key, and signs bytes. It is opened from a
key URI by :func:`bastion.trust.keys.open_signer`. A :class:`Verifier` wraps a public
key and a scheme and raises :class:`~bastion.errors.SignatureError` on a bad signature.

Schemes (:class:`SignatureScheme`): Ed25519; ECDSA P-256/SHA-256 and P-384/SHA-384 with
DER-encoded signatures; RSASSA-PSS/SHA-256 (MGF1-SHA-256, salt = digest length); and
RSASSA-PKCS1-v1_5/SHA-256/384/512 for formats that require it (kernel module
signatures, X.509). Key ids are the lowercase hex SHA-256 of the DER
SubjectPublicKeyInfo (:func:`key_id`). :class:`SoftwareSigner` holds an in-memory key;
:class:`TpmSigner` signs through the ``Tpm`` protocol with a non-exportable key.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bastion.errors import ConfigError, SignatureError, TpmError
from bastion.tpm.base import Tpm, TpmKey

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class SignatureScheme(enum.StrEnum):
    """How a key signs: algorithm, hash and encoding."""

    ED25519 = "ed25519"
    ECDSA_P256_SHA256 = "ecdsa-p256-sha256"
    ECDSA_P384_SHA384 = "ecdsa-p384-sha384"
    RSA_PSS_SHA256 = "rsa-pss-sha256"
    RSA_PKCS1V15_SHA256 = "rsa-pkcs1v15-sha256"
    RSA_PKCS1V15_SHA384 = "rsa-pkcs1v15-sha384"
    RSA_PKCS1V15_SHA512 = "rsa-pkcs1v15-sha512"

    @property
    def key_type(self) -> str:
        """``ed25519``, ``ec`` or ``rsa``."""
        if self is SignatureScheme.ED25519:
            return "ed25519"
        return "ec" if self.value.startswith("ecdsa") else "rsa"

    @property
    def hash_name(self) -> str | None:
        """The hash the scheme signs with (None for Ed25519, which hashes internally)."""
        if self is SignatureScheme.ED25519:
            return None
        return self.value.rsplit("-", 1)[1]

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """The cryptography hash object (SHA-256 for Ed25519's bookkeeping only)."""
        return {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}[
            self.hash_name or "sha256"
        ]


_CURVE_SCHEMES = {"secp256r1": SignatureScheme.ECDSA_P256_SHA256}
_CURVE_SCHEMES["secp384r1"] = SignatureScheme.ECDSA_P384_SHA384


def key_id(public_key: PublicKey) -> str:
    """Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo of ``public_key``."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def describe_key(public_key: PublicKey) -> str:
    """A short algorithm name: ``ed25519``, ``ecdsa-p256``, ``rsa-3072`` ..."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384"}.get(
            public_key.curve.name, f"ecdsa-{public_key.curve.name}"
        )
    return f"rsa-{public_key.key_size}"


def default_scheme(public_key: PublicKey) -> SignatureScheme:
    """The scheme a key signs with unless a format demands another."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return SignatureScheme.ED25519
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        scheme = _CURVE_SCHEMES.get(public_key.curve.name)
        if scheme is None:
            raise ConfigError(
                f"EC curve {public_key.curve.name} is not supported: expected P-256 or P-384"
            )
        return scheme
    if isinstance(public_key, rsa.RSAPublicKey):
        return SignatureScheme.RSA_PSS_SHA256
    raise ConfigError(f"unsupported key type {type(public_key).__name__}")


def check_scheme(public_key: PublicKey, scheme: SignatureScheme) -> None:
    """Raise ConfigError unless ``scheme`` can be used with ``public_key``."""
    actual = describe_key(public_key)
    if scheme.key_type == "ed25519" and isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    if (
        scheme.key_type == "ec"
        and isinstance(public_key, ec.EllipticCurvePublicKey)
        and _CURVE_SCHEMES.get(public_key.curve.name) is scheme
    ):
        return
    if scheme.key_type == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise ConfigError(f"RSA key of {public_key.key_size} bits: expected at least 2048")
        return
    raise ConfigError(f"signature scheme {scheme} does not fit a {actual} key")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


@runtime_checkable
class Signer(Protocol):
    """Something that signs bytes with one key; private key bytes stay inside."""

    @property
    def key_id(self) -> str:
        """Hex SHA-256 of the SubjectPublicKeyInfo."""
        ...

    @property
    def scheme(self) -> SignatureScheme:
        """The scheme :meth:`sign` uses."""
        ...

    def public_key(self) -> PublicKey:
        """The public half."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` (hashing it as the scheme says)."""
        ...


class SoftwareSigner:
    """A signer over an in-memory private key (from a ``file:`` URI or generated)."""

    __slots__ = ("__key", "_key_id", "_scheme")

    def __init__(self, private_key: PrivateKey, scheme: SignatureScheme | None = None) -> None:
        public = private_key.public_key()
        chosen = scheme or default_scheme(public)
        check_scheme(public, chosen)
        self.__key = private_key
        self._scheme = chosen
        self._key_id = key_id(public)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def scheme(self) -> SignatureScheme:
        return self._scheme

    def public_key(self) -> PublicKey:
        return self.__key.public_key()

    def with_scheme(self, scheme: SignatureScheme) -> SoftwareSigner:
        """The same key signing with another scheme (e.g. PKCS#1 v1.5 for modsig)."""
        return SoftwareSigner(self.__key, scheme)

    def sign(self, data: bytes) -> bytes:
        key = self.__key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(data)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self._scheme.hash_algorithm()))
        if self._scheme is SignatureScheme.RSA_PSS_SHA256:
            return key.sign(data, _pss(), hashes.SHA256())
        return key.sign(data, padding.PKCS1v15(), self._scheme.hash_algorithm())

    def _private_key(self) -> PrivateKey:
        """The key object, for trust-internal builders (cryptography x509) only."""
        return self.__key

    def __repr__(self) -> str:
        return f"SoftwareSigner(key_id={self._key_id[:16]}..., scheme={self._scheme})"


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted public key and the scheme its signatures use."""

    public_key: PublicKey
    scheme: SignatureScheme
    key_id: str

    @classmethod
    def of(cls, public_key: PublicKey, scheme: SignatureScheme | None = None) -> Verifier:
        """A verifier for ``public_key`` with its default (or the given) scheme."""
        chosen = scheme or default_scheme(public_key)
        check_scheme(public_key, chosen)
        return cls(public_key, chosen, key_id(public_key))

    def verify(self, data: bytes, signature: bytes) -> None:
        """Raise SignatureError unless ``signature`` is this key's over ``data``."""
        key = self.public_key
        try:
            if isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, data)
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, data, ec.ECDSA(self.scheme.hash_algorithm()))
            elif self.scheme is SignatureScheme.RSA_PSS_SHA256:
                key.verify(signature, data, _pss(), hashes.SHA256())
            else:
                key.verify(signature, data, padding.PKCS1v15(), self.scheme.hash_algorithm())
        except InvalidSignature as exc:
            raise SignatureError(
                f"signature by key {self.key_id[:16]}... ({self.scheme}) does not verify"
            ) from exc
        except ValueError as exc:  # malformed DER etc.
            raise SignatureError(
                f"signature by key {self.key_id[:16]}... is malformed: {exc}"
            ) from exc


class TpmSigner:
    """A signer whose key never leaves a TPM: ECDSA P-256/SHA-256 or RSASSA/SHA-256.

    The data is hashed with SHA-256 here, the digest is signed by ``Tpm.sign`` and the
    TPMT_SIGNATURE is converted to the X.509/DSSE encoding (DER ECDSA, raw RSASSA).
    Every signature is checked against the key's public half before it is returned,
    so a misbehaving TPM fails closed with TpmError.
    """

    __slots__ = ("_key", "_key_id", "_public", "_scheme", "_tpm")

    def __init__(self, tpm: Tpm, key: TpmKey, scheme: SignatureScheme | None = None) -> None:
        from bastion.tpm.quote import public_key as tpm_public_key

        public = tpm_public_key(key.public)
        if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
            natural = SignatureScheme.ECDSA_P256_SHA256
        elif isinstance(public, rsa.RSAPublicKey):
            natural = SignatureScheme.RSA_PKCS1V15_SHA256
        else:
            raise ConfigError(f"TPM key {describe_key(public)}: expected ECC P-256 or RSA")
        if scheme is not None and scheme is not natural:
            raise ConfigError(f"this TPM key signs with {natural}, not {scheme}")
        self._tpm = tpm
        self._key = key
        self._public: PublicKey = public
        self._scheme = natural
        self._key_id = key_id(public)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def scheme(self) -> SignatureScheme:
        return self._scheme

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        from bastion.formats.tpm2 import Alg
        from bastion.formats.tpm2 import Signature as TpmSignature

        raw = self._tpm.sign(self._key, hashlib.sha256(data).digest())
        sig = TpmSignature.parse(raw)
        if sig.hash_alg != Alg.SHA256:
            raise TpmError(f"TPM signed with hash 0x{sig.hash_alg:04x}, expected SHA-256")
        if sig.sig_alg == Alg.ECDSA and self._scheme is SignatureScheme.ECDSA_P256_SHA256:
            out = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
        elif sig.sig_alg == Alg.RSASSA and self._scheme is SignatureScheme.RSA_PKCS1V15_SHA256:
            out = sig.sig
        else:
            raise TpmError(f"TPM signature scheme 0x{sig.sig_alg:04x} does not fit {self._scheme}")
        try:
            Verifier(self._public, self._scheme, self._key_id).verify(data, out)
        except SignatureError as exc:
            raise TpmError("the TPM returned a signature that does not verify") from exc
        return out

    def close(self) -> None:
        """Close the TPM connection."""
        self._tpm.close()

    def __repr__(self) -> str:
        return f"TpmSigner(key_id={self._key_id[:16]}..., scheme={self._scheme})"
