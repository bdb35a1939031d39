"""Key URIs, key files, passphrases."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.errors import AuthError, ConfigError, FormatError, NotFoundError
from bastion.trust.keys import (
    KeyAlgorithm,
    KeyUri,
    load_public_key,
    load_verifier,
    open_signer,
    public_key_to_pem,
    write_private_key,
)
from bastion.trust.signer import SignatureScheme


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file:/k/a.pem", KeyUri("file", "/k/a.pem")),
        ("file:///k/a.pem", KeyUri("file", "/k/a.pem")),
        ("file:rel/a.pem", KeyUri("file", "rel/a.pem")),
        ("/k/a.pem", KeyUri("file", "/k/a.pem")),
        ("a.pem", KeyUri("file", "a.pem")),
        ("file:/k/a.pem?passphrase-env=PW", KeyUri("file", "/k/a.pem", passphrase_env="PW")),
        (
            "tpm:software:/var/tpm#/k/boot.tpmkey",
            KeyUri("tpm", "/k/boot.tpmkey", tpm="software:/var/tpm"),
        ),
        (
            "tpm:swtpm:host=127.0.0.1,port=2321#k.json",
            KeyUri("tpm", "k.json", tpm="swtpm:host=127.0.0.1,port=2321"),
        ),
    ],
)
def test_uri_parse(text: str, expected: KeyUri) -> None:
    assert KeyUri.parse(text) == expected
    assert KeyUri.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "pkcs11:token=x", "file:", "file:/a?other=1", "tpm:software:/x", "tpm:#k", "tpm:x#"],
)
def test_uri_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        KeyUri.parse(text)


@pytest.mark.parametrize("alg", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"])
def test_open_signer_file(tmp_path: Path, keygen, alg: str) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, keygen(alg))
    assert path.stat().st_mode & 0o777 == 0o600
    signer = open_signer(f"file:{path}")
    pub = tmp_path / "k.pub"
    pub.write_bytes(public_key_to_pem(signer.public_key()))
    load_verifier(pub).verify(b"x", signer.sign(b"x"))
    assert load_verifier(pub).key_id == signer.key_id


def test_open_signer_with_scheme(tmp_path: Path, keygen) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, keygen("rsa-2048"))
    signer = open_signer(str(path), scheme=SignatureScheme.RSA_PKCS1V15_SHA256)
    assert signer.scheme is SignatureScheme.RSA_PKCS1V15_SHA256


def test_encrypted_key_passphrase_from_env(
    tmp_path: Path, keygen, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, keygen("ed25519"), passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    monkeypatch.setenv("KPW", "correct horse")
    signer = open_signer(f"file:{path}?passphrase-env=KPW")
    assert signer.key_id
    assert open_signer(str(path), passphrase=lambda: b"correct horse").key_id == signer.key_id


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ("wrong passphrase", AuthError),
        ("no passphrase", AuthError),
        ("env unset", ConfigError),
        ("missing file", NotFoundError),
        ("garbage", FormatError),
        ("public key", FormatError),
    ],
)
def test_open_signer_refuses(
    tmp_path: Path, keygen, monkeypatch: pytest.MonkeyPatch, setup: str, error: type
) -> None:
    path = tmp_path / "k.pem"
    write_private_key(path, keygen("ecdsa-p256"), passphrase=b"pw")
    uri = str(path)
    monkeypatch.delenv("NOPE", raising=False)
    if setup == "wrong passphrase":
        monkeypatch.setenv("KPW", "other")
        uri = f"file:{path}?passphrase-env=KPW"
    elif setup == "env unset":
        uri = f"file:{path}?passphrase-env=NOPE"
    elif setup == "missing file":
        uri = str(tmp_path / "absent.pem")
    elif setup == "garbage":
        path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif setup == "public key":
        path.write_bytes(public_key_to_pem(keygen("ecdsa-p256").public_key()))
    with pytest.raises(error):
        open_signer(uri)


def test_load_public_key_forms(keygen) -> None:
    from cryptography.hazmat.primitives import serialization

    pub = keygen("ed25519").public_key()
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert load_public_key(der) == pub
    assert load_public_key(public_key_to_pem(pub)) == pub
    with pytest.raises(FormatError):
        load_public_key(b"not a key")


def test_algorithms_enum() -> None:
    assert {a.value for a in KeyAlgorithm} >= {"ed25519", "ecdsa-p256", "rsa-3072"}


@pytest.mark.parametrize(
    "path", ["//srv/k.pem", "a?b.pem", "a#b%c.pem", "tpm:x", " k.pem", "ü.pem"]
)
def test_uri_round_trip_of_odd_paths(path: str) -> None:
    uri = KeyUri("file", path)
    assert KeyUri.parse(str(uri)) == uri
    tpm = KeyUri("tpm", path, tpm="software:/var/tpm.state")
    assert KeyUri.parse(str(tpm)) == tpm


@pytest.mark.parametrize(
    "text",
    [
        "file://host/k.pem",
        "file:/k?passphrase-env=1BAD",
        "file:/k?passphrase-env",
        "tpm:bogus#k",
        "file:%ff",
    ],
)
def test_uri_refused_more(text: str) -> None:
    with pytest.raises(ConfigError):
        KeyUri.parse(text)
