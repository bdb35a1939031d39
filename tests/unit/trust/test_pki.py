"""Fleet PKI: issuing, CRLs, path validation, and the negative table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from bastion.errors import (
    ConfigError,
    ExpiredError,
    FormatError,
    RevokedError,
    SignatureError,
    VerificationError,
)
from bastion.trust import pki
from bastion.trust.pki import CertificateAuthority, RevocationState, RevokedEntry
from bastion.trust.signer import PublicKey, SignatureScheme, SoftwareSigner

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


class OpaqueSigner:
    """A signer that hides its key, like a TPM or HSM key: forces the DER splice path."""

    def __init__(self, inner: SoftwareSigner) -> None:
        self._inner = inner

    @property
    def key_id(self) -> str:
        return self._inner.key_id

    @property
    def scheme(self) -> SignatureScheme:
        return self._inner.scheme

    def public_key(self) -> PublicKey:
        return self._inner.public_key()

    def sign(self, data: bytes) -> bytes:
        return self._inner.sign(data)


@dataclass
class Pki:
    root: CertificateAuthority
    fleet: CertificateAuthority
    device_key: ec.EllipticCurvePrivateKey
    device: x509.Certificate
    server: x509.Certificate


def _csr(key: ec.EllipticCurvePrivateKey, cn: str = "ignored") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _build(keygen, opaque: bool = False) -> Pki:
    rs = SoftwareSigner(keygen("ecdsa-p256", 10))
    fs = SoftwareSigner(keygen("ecdsa-p256", 11))
    root_signer = OpaqueSigner(rs) if opaque else rs
    fleet_signer = OpaqueSigner(fs) if opaque else fs
    root = CertificateAuthority(
        root_signer, pki.create_root_ca(root_signer, "Acme Root", organization="Acme", now=NOW)
    )
    fleet = CertificateAuthority(
        fleet_signer,
        pki.create_intermediate_ca(root, fs.public_key(), "Acme Fleet", now=NOW),
    )
    dkey = keygen("ecdsa-p256", 12)
    device = pki.issue_device_certificate(
        fleet, _csr(dkey), "dev-0001", dt.timedelta(days=365), now=NOW, dns_domain="devices.acme"
    )
    server = pki.issue_server_certificate(
        fleet, keygen("ecdsa-p256", 13).public_key(), ["fleet.acme.test"], ["192.0.2.7"], now=NOW
    )
    return Pki(root, fleet, dkey, device, server)


@pytest.fixture(scope="module")
def world(request: pytest.FixtureRequest) -> Pki:
    from tests.unit.trust.conftest import make_key

    return _build(make_key)


@pytest.mark.parametrize("opaque", [False, True])
def test_device_chain_verifies(keygen, opaque: bool) -> None:
    w = _build(keygen, opaque)
    v = pki.verify_chain(
        w.device, roots=[w.root.certificate], intermediates=[w.fleet.certificate], now=NOW
    )
    assert v.chain == (w.device, w.fleet.certificate, w.root.certificate)
    assert pki.device_id_of(w.device) == "dev-0001"
    crl = pki.build_crl(w.fleet, [], crl_number=1, now=NOW)
    assert crl.is_signature_valid(w.fleet.certificate.public_key())
    pki.verify_chain(
        w.device,
        roots=[w.root.certificate],
        intermediates=[w.fleet.certificate],
        crls=[crl],
        now=NOW,
    )


def test_device_certificate_profile(world: Pki) -> None:
    cert = world.device
    assert cert.subject.rfc4514_string() == "CN=dev-0001"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:bastion:device:dev-0001"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["dev-0001.devices.acme"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = world.fleet.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ski.value.digest
    bc = world.fleet.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    assert cert.public_key() == world.device_key.public_key()


def test_server_chain_verifies(world: Pki) -> None:
    for name in ("fleet.acme.test", "192.0.2.7"):
        pki.verify_chain(
            world.server,
            roots=[world.root.certificate],
            intermediates=[world.fleet.certificate],
            usage="server",
            server_name=name,
            now=NOW,
        )


def _other_root(keygen) -> CertificateAuthority:
    s = SoftwareSigner(keygen("ecdsa-p256", 20))
    return CertificateAuthority(s, pki.create_root_ca(s, "Acme Root", organization="Acme", now=NOW))


NEGATIVE = [
    ("expired leaf", ExpiredError),
    ("not yet valid leaf", ExpiredError),
    ("expired intermediate", ExpiredError),
    ("server cert used as client", VerificationError),
    ("device cert used as server", VerificationError),
    ("wrong server name", VerificationError),
    ("revoked", RevokedError),
    ("revoked intermediate", RevokedError),
    ("missing intermediate", VerificationError),
    ("intermediate from another root with same name", SignatureError),
    ("untrusted root", VerificationError),
    ("tampered leaf signature", VerificationError),
    ("CRL signed by wrong key", SignatureError),
    ("stale CRL", ExpiredError),
    ("no CRL for leaf", VerificationError),
]


@pytest.mark.parametrize(("case", "error"), NEGATIVE)
def test_negative_table(keygen, world: Pki, case: str, error: type) -> None:
    leaf = world.device
    roots = [world.root.certificate]
    inter = [world.fleet.certificate]
    kwargs: dict[str, object] = {"now": NOW}
    if case == "expired leaf":
        kwargs["now"] = NOW + dt.timedelta(days=366)
    elif case == "not yet valid leaf":
        kwargs["now"] = NOW - dt.timedelta(hours=1)
    elif case == "expired intermediate":
        short = pki.create_intermediate_ca(
            world.root,
            world.fleet.signer.public_key(),
            "Acme Fleet",
            validity=dt.timedelta(days=10),
            now=NOW - dt.timedelta(days=30),
        )
        inter = [short]
    elif case == "server cert used as client":
        leaf = world.server
    elif case == "device cert used as server":
        kwargs.update(usage="server", server_name="dev-0001.devices.acme")
    elif case == "wrong server name":
        leaf = world.server
        kwargs.update(usage="server", server_name="evil.acme.test")
    elif case == "revoked":
        kwargs["crls"] = [
            pki.build_crl(
                world.fleet, [RevokedEntry(leaf.serial_number, NOW)], crl_number=2, now=NOW
            )
        ]
    elif case == "revoked intermediate":
        kwargs["crls"] = [
            pki.build_crl(world.fleet, [], crl_number=3, now=NOW),
            pki.build_crl(
                world.root,
                [RevokedEntry(world.fleet.certificate.serial_number, NOW, "key_compromise")],
                crl_number=1,
                now=NOW,
            ),
        ]
    elif case == "missing intermediate":
        inter = []
    elif case == "intermediate from another root with same name":
        other = _other_root(keygen)
        inter = [
            pki.create_intermediate_ca(
                other, world.fleet.signer.public_key(), "Acme Fleet", now=NOW
            )
        ]
    elif case == "untrusted root":
        roots = [_other_root(keygen).certificate]
    elif case == "tampered leaf signature":
        der = bytearray(leaf.public_bytes(serialization.Encoding.DER))
        der[-5] ^= 0x01
        leaf = x509.load_der_x509_certificate(bytes(der))
    elif case == "CRL signed by wrong key":
        fake = CertificateAuthority(
            SoftwareSigner(keygen("ecdsa-p256", 21)),
            pki.create_root_ca(
                SoftwareSigner(keygen("ecdsa-p256", 21)), "Acme Fleet", organization=None, now=NOW
            ),
        )
        # same issuer name as the fleet CA, different key
        assert fake.certificate.subject == world.fleet.certificate.subject
        kwargs["crls"] = [pki.build_crl(fake, [], crl_number=9, now=NOW)]
    elif case == "stale CRL":
        kwargs["crls"] = [
            pki.build_crl(world.fleet, [], crl_number=4, next_update=dt.timedelta(days=1), now=NOW)
        ]
        kwargs["now"] = NOW + dt.timedelta(days=2)
    elif case == "no CRL for leaf":
        kwargs["crls"] = []
    with pytest.raises(error) as info:
        pki.verify_chain(leaf, roots=roots, intermediates=inter, **kwargs)  # type: ignore[arg-type]
    assert str(info.value)


@pytest.mark.parametrize(
    "case",
    [
        "bad signature",
        "ed25519 key",
        "garbage",
        "bad device id",
        "id too long",
        "id not a DNS label",
    ],
)
def test_issue_refuses(world: Pki, case: str) -> None:
    csr = _csr(world.device_key)
    device_id = "dev-2"
    error: type[Exception] = FormatError
    if case == "bad signature":
        der = bytearray(x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER))
        der[-3] ^= 1
        csr = bytes(der)
        error = SignatureError
    elif case == "ed25519 key":
        k = ed25519.Ed25519PrivateKey.generate()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(k, None)
            .public_bytes(serialization.Encoding.PEM)
        )
    elif case == "garbage":
        csr = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "bad device id":
        device_id = "../etc/passwd"
        error = ConfigError
    elif case == "id too long":
        device_id = "a" * 65
        error = ConfigError
    elif case == "id not a DNS label":
        device_id = "dev_1"
        error = ConfigError
    with pytest.raises(error):
        pki.issue_device_certificate(world.fleet, csr, device_id, now=NOW, dns_domain="d.example")


def test_longest_device_id(world: Pki) -> None:
    cert = pki.issue_device_certificate(world.fleet, _csr(world.device_key), "a" * 64, now=NOW)
    assert pki.device_id_of(cert) == "a" * 64


def test_ca_key_must_match_certificate(keygen, world: Pki) -> None:
    with pytest.raises(ConfigError):
        CertificateAuthority(SoftwareSigner(keygen("ecdsa-p256", 30)), world.fleet.certificate)
    with pytest.raises(ConfigError):
        CertificateAuthority(SoftwareSigner(keygen("ecdsa-p256", 12)), world.device)


def test_crl_contents(world: Pki) -> None:
    state = RevocationState().revoke(5, NOW, "superseded").revoke(7, NOW).revoke(5, NOW)
    assert [e.serial for e in state.revoked] == [5, 7]
    assert RevocationState.parse(state.to_bytes()) == state
    crl = pki.build_crl(world.fleet, state.revoked, crl_number=42, now=NOW)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    assert crl.next_update_utc == NOW + dt.timedelta(days=7)
    entry = crl.get_revoked_certificate_by_serial_number(5)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.superseded
    )
    with pytest.raises(ConfigError):
        state.revoke(8, NOW, "because")
    with pytest.raises(FormatError):
        RevocationState.parse(b'{"crl_number": 1}')


def test_load_helpers(world: Pki) -> None:
    bundle = world.fleet.certificate.public_bytes(
        serialization.Encoding.PEM
    ) + world.root.certificate.public_bytes(serialization.Encoding.PEM)
    assert pki.load_certificates(bundle) == [world.fleet.certificate, world.root.certificate]
    crl = pki.build_crl(world.fleet, [], crl_number=1, now=NOW)
    assert pki.load_crl(crl.public_bytes(serialization.Encoding.PEM)) == crl
    assert pki.load_crl(crl.public_bytes(serialization.Encoding.DER)) == crl
    with pytest.raises(FormatError):
        pki.load_certificates(b"nope")
    with pytest.raises(FormatError):
        pki.load_crl(b"nope")


def test_long_server_name_goes_to_san_only(keygen, world: Pki) -> None:
    name = ("a" * 60 + ".") * 2 + "example"
    cert = pki.issue_server_certificate(
        world.fleet, keygen("ecdsa-p256", 13).public_key(), [name], now=NOW
    )
    assert cert.subject == x509.Name([])
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    pki.verify_chain(
        cert,
        roots=[world.root.certificate],
        intermediates=[world.fleet.certificate],
        usage="server",
        server_name=name,
        now=NOW,
    )


def test_long_ca_name_refused(keygen) -> None:
    with pytest.raises(ConfigError):
        pki.create_root_ca(SoftwareSigner(keygen("ecdsa-p256", 10)), "x" * 65, now=NOW)
