"""Keys addressed by URI: parse a key URI, open a Signer, load public keys, make keys.

Key URIs (see docs/keys.md and ADR 0006):

* ``file:PATH`` or a bare ``PATH``: a PEM private key (PKCS#8, or a traditional PEM).
  An encrypted PEM needs a passphrase, taken from the ``passphrase`` callback given to
  :func:`open_signer` or from the environment variable named in the URI query:
  ``file:/keys/boot.key.pem?passphrase-env=BOOT_PASS``. Passphrases never come from argv.
* ``tpm:BACKEND#KEYFILE``: a non-exportable TPM key. ``BACKEND`` is the TPM backend
  spelling used everywhere (``software:PATH``, ``swtpm:host=H,port=P``,
  ``device:/dev/tpmrm0``); ``KEYFILE`` holds the key's TPM2B_PUBLIC and TPM2B_PRIVATE
  as JSON (:class:`TpmKeyFile`). Signing goes through the ``Tpm`` protocol.

Reading files here is the adapter edge: everything it reads is bounded by
:data:`bastion.limits.KEY_FILE_MAX_SIZE`.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.errors import AuthError, ConfigError, FormatError
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded
from bastion.limits import KEY_FILE_MAX_SIZE
from bastion.tpm.base import Tpm, TpmKey
from bastion.trust.signer import (
    PrivateKey,
    PublicKey,
    SignatureScheme,
    Signer,
    SoftwareSigner,
    TpmSigner,
    Verifier,
)

PassphraseCallback = Callable[[], bytes]
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+$")  # 2+ chars: "C:" stays a path


class KeyAlgorithm(enum.StrEnum):
    """Algorithms bastion generates keys for."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    ECDSA_P384 = "ecdsa-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"


@dataclass(frozen=True, slots=True)
class KeyUri:
    """A parsed key URI: ``scheme`` is ``file`` or ``tpm``."""

    scheme: str
    path: str
    tpm: str | None = None
    passphrase_env: str | None = None

    @classmethod
    def parse(cls, text: str) -> KeyUri:
        """Parse ``file:PATH[?passphrase-env=VAR]``, ``tpm:BACKEND#KEYFILE`` or a bare path.

        In the ``file:`` and ``tpm:`` forms the paths are percent-decoded (write ``%3F``
        for a ``?`` in a file name); a bare path is taken literally.
        """
        if not text:
            raise ConfigError("empty key URI: expected file:PATH or tpm:BACKEND#KEYFILE")
        if text.startswith("tpm:"):
            backend, sep, keyfile = text[4:].rpartition("#")
            if not sep or not backend or not keyfile:
                raise ConfigError(
                    f"bad key URI {text!r}: expected tpm:BACKEND#KEYFILE, "
                    "e.g. tpm:software:/var/lib/bastion/tpm.state#/keys/boot.tpmkey"
                )
            from bastion.tpm.uri import parse_tpm_uri

            parse_tpm_uri(backend)  # ConfigError naming the accepted forms
            return cls("tpm", _unquote(keyfile, text), tpm=backend)
        if text.startswith("file:"):
            rest = text[5:]
            if rest.startswith("//"):
                if not rest.startswith("///"):
                    raise ConfigError(f"bad key URI {text!r}: file URIs name no host")
                rest = rest[2:]
            path, _, query = rest.partition("?")
            env = None
            if query:
                name, eq, value = query.partition("=")
                if name != "passphrase-env" or not eq:
                    raise ConfigError(
                        f"bad key URI {text!r}: expected only ?passphrase-env=VAR after the path"
                    )
                if not _ENV_RE.match(value):
                    raise ConfigError(f"bad key URI {text!r}: {value!r} is not a variable name")
                env = value
            path = _unquote(path, text)
            if not path:
                raise ConfigError(f"bad key URI {text!r}: no path")
            return cls("file", path, passphrase_env=env)
        scheme, sep, _ = text.partition(":")
        if sep and _SCHEME_RE.match(scheme):
            raise ConfigError(
                f"unknown key URI scheme {scheme!r} in {text!r}: expected file or tpm"
            )
        return cls("file", text)

    def __str__(self) -> str:
        if self.scheme == "tpm":
            return f"tpm:{self.tpm}#{_quote(self.path)}"
        suffix = f"?passphrase-env={self.passphrase_env}" if self.passphrase_env else ""
        quoted = _quote(self.path)
        if quoted.startswith("//"):  # keep it from reading as file://host
            quoted = "//" + quoted
        return f"file:{quoted}{suffix}"


def _quote(path: str) -> str:
    return urllib.parse.quote(path, safe="/:@!$&'()*+,;=-._~")


def _unquote(path: str, text: str) -> str:
    try:
        return urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"bad key URI {text!r}: percent-encoding is not UTF-8") from exc


def generate_private_key(algorithm: KeyAlgorithm | str) -> PrivateKey:
    """A fresh private key of ``algorithm``."""
    alg = KeyAlgorithm(algorithm)
    if alg is KeyAlgorithm.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg is KeyAlgorithm.ECDSA_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlgorithm.ECDSA_P384:
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(alg.value.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PEM PKCS#8, encrypted with the best available scheme when ``passphrase`` is given."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def public_key_to_pem(key: PublicKey) -> bytes:
    """PEM SubjectPublicKeyInfo."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_private_key(
    path: str | os.PathLike[str], key: PrivateKey, passphrase: bytes | None = None
) -> None:
    """Write ``key`` as PEM PKCS#8 with mode 0600, atomically."""
    atomic_write(path, private_key_to_pem(key, passphrase), mode=0o600)


def load_private_key_pem(
    data: bytes, passphrase: bytes | None = None, *, what: str = "key"
) -> PrivateKey:
    """Parse a PEM private key; AuthError on a wrong or missing passphrase."""
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise AuthError(
                f"{what} is encrypted: give a passphrase (file:PATH?passphrase-env=VAR)"
            ) from exc
        raise AuthError(f"{what} is not encrypted but a passphrase was given") from exc
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise AuthError(f"{what}: wrong passphrase") from exc
        raise FormatError(f"{what} is not a PEM private key: {exc}") from exc
    except Exception as exc:  # cryptography raises assorted errors for garbage
        raise FormatError(f"{what} is not a PEM private key: {exc}") from exc
    if not isinstance(
        key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ):
        raise FormatError(f"{what} holds a {type(key).__name__}: expected Ed25519, ECDSA or RSA")
    return key


def load_public_key(data: bytes, *, what: str = "public key") -> PublicKey:
    """A public key from PEM/DER SubjectPublicKeyInfo or a PEM/DER X.509 certificate."""
    key: object
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            try:
                key = serialization.load_der_public_key(data)
            except ValueError:
                key = x509.load_der_x509_certificate(data).public_key()
    except Exception as exc:
        raise FormatError(f"{what} is not a public key or certificate (PEM/DER): {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise FormatError(f"{what} holds a {type(key).__name__}: expected Ed25519, ECDSA or RSA")
    return key


def load_public_key_file(path: str | os.PathLike[str]) -> PublicKey:
    """:func:`load_public_key` on a file (bounded read)."""
    what = f"public key {os.fspath(path)!r}"
    return load_public_key(read_bounded(path, KEY_FILE_MAX_SIZE, what), what=what)


def load_verifier(path: str | os.PathLike[str], scheme: SignatureScheme | None = None) -> Verifier:
    """A :class:`Verifier` for the public key or certificate in ``path``."""
    return Verifier.of(load_public_key_file(path), scheme)


def _passphrase_for(uri: KeyUri, callback: PassphraseCallback | None) -> bytes | None:
    if uri.passphrase_env:
        value = os.environ.get(uri.passphrase_env)
        if value is None:
            raise ConfigError(
                f"key {uri.path!r}: environment variable {uri.passphrase_env} is not set"
            )
        return value.encode()
    return callback() if callback else None


def open_signer(
    uri: str | KeyUri,
    *,
    passphrase: PassphraseCallback | None = None,
    scheme: SignatureScheme | None = None,
) -> Signer:
    """Open the key at ``uri`` as a :class:`Signer` (``scheme`` overrides the default)."""
    parsed = uri if isinstance(uri, KeyUri) else KeyUri.parse(uri)
    if parsed.scheme == "tpm":
        return _open_tpm_signer(parsed, scheme)
    data = read_bounded(Path(parsed.path), KEY_FILE_MAX_SIZE, "private key")
    what = f"private key {parsed.path!r}"
    encrypted = b"ENCRYPTED" in data
    secret = _passphrase_for(parsed, passphrase) if encrypted else None
    if encrypted and secret is None:
        raise AuthError(
            f"{what} is encrypted: give its passphrase (--passphrase-env VAR, "
            "file:PATH?passphrase-env=VAR, or a terminal prompt)"
        )
    return SoftwareSigner(load_private_key_pem(data, secret, what=what), scheme)


TPM_KEY_FORMAT = "bastion-tpm-key"
_TPM_ALGORITHMS = {KeyAlgorithm.ECDSA_P256: "ecc-p256", KeyAlgorithm.RSA_2048: "rsa2048"}


def tpm_key_to_bytes(key: TpmKey, algorithm: str) -> bytes:
    """The ``.tpmkey`` JSON for a TPM-held key (its public and private blobs)."""
    doc = {
        "format": TPM_KEY_FORMAT,
        "version": 1,
        "algorithm": algorithm,
        "public": base64.b64encode(key.public).decode(),
        "private": base64.b64encode(key.private).decode(),
        "name": key.name.hex(),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def tpm_key_from_bytes(data: bytes, what: str = "TPM key file") -> TpmKey:
    """Parse a ``.tpmkey`` file; FormatError if malformed."""
    try:
        doc = strict_json.loads_object(data, what=what, max_size=KEY_FILE_MAX_SIZE)
        if doc.get("format") != TPM_KEY_FORMAT or doc.get("version") != 1:
            raise FormatError(f"{what}: expected format {TPM_KEY_FORMAT!r} version 1")
        return TpmKey(
            public=base64.b64decode(doc["public"], validate=True),
            private=base64.b64decode(doc["private"], validate=True),
            name=bytes.fromhex(doc["name"]),
        )
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{what} is malformed: {exc}") from exc


def create_tpm_key(
    tpm: Tpm, algorithm: KeyAlgorithm | str, path: str | os.PathLike[str]
) -> TpmSigner:
    """Create a non-exportable signing key in ``tpm``, write its ``.tpmkey`` file, and
    return its Signer (``ecdsa-p256`` or ``rsa-2048``)."""
    alg = KeyAlgorithm(algorithm)
    if alg not in _TPM_ALGORITHMS:
        raise ConfigError(f"TPM keys are ecdsa-p256 or rsa-2048, not {alg}")
    key = tpm.create_signing_key(_TPM_ALGORITHMS[alg])
    atomic_write(path, tpm_key_to_bytes(key, _TPM_ALGORITHMS[alg]), 0o600)
    return TpmSigner(tpm, key)


def _open_tpm_signer(uri: KeyUri, scheme: SignatureScheme | None) -> Signer:
    from bastion.tpm.uri import open_tpm

    what = f"TPM key file {uri.path!r}"
    key = tpm_key_from_bytes(read_bounded(Path(uri.path), KEY_FILE_MAX_SIZE, what), what)
    tpm = open_tpm(uri.tpm)
    try:
        return TpmSigner(tpm, key, scheme)
    except BaseException:
        tpm.close()
        raise
