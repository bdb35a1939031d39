"""Secure Boot variables against efitools, sbsigntool, OpenSSL CMS and virt-firmware.

* ``cert-to-efi-sig-list`` and bastion write byte-identical EFI_SIGNATURE_LISTs;
* ``sign-efi-sig-list -t`` (OpenSSL PKCS7_sign, no attributes) and bastion write
  byte-identical ``.auth`` files for PK, KEK, db and an append; ``-o`` gives the same
  bytes-to-sign as :func:`signable_bytes` (its ``-i`` only pastes a file in, so it is
  no check);
* ``sbvarsign`` (signed attributes, its own clock) writes updates bastion verifies;
* bastion's signatures verify with ``openssl cms -verify`` over efitools' bytes-to-sign,
  and virt-firmware reads a folder of bastion's ``.auth`` files as a variable store.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.conftest import need_module, need_tool

from bastion.errors import SignatureError
from bastion.formats import efivars as ev
from bastion.formats.modsig import der_tlv
from bastion.formats.pkcs7_signed import OID_SIGNED_DATA
from bastion.trust import secureboot as sb
from bastion.trust.keys import private_key_to_pem
from bastion.trust.signer import SoftwareSigner

pytestmark = pytest.mark.interop

OWNER = uuid.UUID("5a1c7e5a-0000-4000-8000-00000000c0de")
WHEN = "2026-01-02 03:04:05"
T = ev.EfiTime(2026, 1, 2, 3, 4, 5)


class Material:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.signers: dict[str, SoftwareSigner] = {}
        self.certs: dict[str, x509.Certificate] = {}
        for name in ("PK", "KEK", "db"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.signers[name] = SoftwareSigner(key)
            self.certs[name] = sb.create_certificate(self.signers[name], name, "interop")
            (folder / f"{name}.key").write_bytes(private_key_to_pem(key))
            (folder / f"{name}.crt").write_bytes(
                self.certs[name].public_bytes(serialization.Encoding.PEM)
            )

    def path(self, name: str) -> str:
        return str(self.folder / name)

    def esl(self, name: str) -> bytes:
        return ev.encode_signature_lists([sb.certificate_list(OWNER, self.certs[name])])


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, check=False, timeout=60)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(tmp_path_factory.mktemp("sbinterop"))


def _efitools_esl(m: Material, name: str) -> bytes:
    out = m.path(f"{name}.ref.esl")
    tool = need_tool("cert-to-efi-sig-list")
    r = run(tool, "-g", str(OWNER), m.path(f"{name}.crt"), out)
    assert r.returncode == 0, r.stderr
    return Path(out).read_bytes()


def test_esl_byte_identical_with_cert_to_efi_sig_list(material: Material) -> None:
    for name in ("PK", "KEK", "db"):
        ref = _efitools_esl(material, name)
        assert ref == material.esl(name)
        assert sb.certificates_in(ev.parse_signature_lists(ref)) == [material.certs[name]]


SIGNING = [("PK", "PK", False), ("KEK", "PK", False), ("db", "KEK", False), ("db", "KEK", True)]


@pytest.mark.parametrize(("variable", "by", "append"), SIGNING)
def test_auth_byte_identical_with_sign_efi_sig_list(
    material: Material, variable: str, by: str, append: bool
) -> None:
    tool = need_tool("sign-efi-sig-list")
    payload = material.esl(variable)
    esl = material.path(f"{variable}.in.esl")
    Path(esl).write_bytes(payload)
    out = material.path(f"{variable}-{append}.ref.auth")
    flags = ["-a"] if append else []
    r = run(tool, *flags, "-t", WHEN, "-g", str(OWNER), "-k", material.path(f"{by}.key"),
            "-c", material.path(f"{by}.crt"), variable, esl, out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = Path(out).read_bytes()
    ours = sb.sign_update(
        variable, payload, material.signers[by], material.certs[by], T, append=append
    ).to_bytes()
    assert ours == ref
    got = sb.verify_update(
        variable, ref, pk=material.certs["PK"], kek=[material.certs["KEK"]], append=append
    )
    assert got.signer == material.certs[by] and got.timestamp == T
    # -o: the bytes-to-sign efitools computes are bastion's signable_bytes
    bundle = material.path(f"{variable}-{append}.forsig")
    r = run(tool, *flags, "-o", "-t", WHEN, "-g", str(OWNER), variable, esl, bundle)
    assert r.returncode == 0, r.stderr
    attrs = 0x67 if append else 0x27
    signable = ev.signable_bytes(variable, ev.SECURE_BOOT_VARIABLES[variable], attrs, T, payload)
    assert Path(bundle).read_bytes() == signable


def _content_info(bare: bytes) -> bytes:
    return der_tlv(0x30, der_tlv(0x06, OID_SIGNED_DATA) + der_tlv(0xA0, bare))


def test_bastion_signature_verifies_with_openssl_cms(
    material: Material,
) -> None:
    openssl = need_tool("openssl")
    tool = need_tool("sign-efi-sig-list")
    payload = material.esl("db")
    Path(material.path("db.in.esl")).write_bytes(payload)
    bundle = material.path("db.cms.forsig")
    r = run(tool, "-o", "-t", WHEN, "-g", str(OWNER), "db", material.path("db.in.esl"), bundle)
    assert r.returncode == 0, r.stderr
    auth = sb.sign_update("db", payload, material.signers["KEK"], material.certs["KEK"], T)
    p7 = material.path("db.p7")
    Path(p7).write_bytes(_content_info(auth.signed_data))

    def verify(ca: str, content: str) -> subprocess.CompletedProcess[bytes]:
        return run(openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", p7,
                   "-content", content, "-CAfile", material.path(ca), "-purpose", "any",
                   "-out", "/dev/null")  # fmt: skip

    ok = verify("KEK.crt", bundle)
    assert ok.returncode == 0, ok.stderr
    assert b"Verification successful" in ok.stderr
    assert verify("PK.crt", bundle).returncode != 0  # signed by KEK, not PK
    tampered = material.path("db.tampered.forsig")
    Path(tampered).write_bytes(Path(bundle).read_bytes()[:-1] + b"\x00")
    assert verify("KEK.crt", tampered).returncode != 0


def test_sbvarsign_updates_verify(material: Material) -> None:
    tool = need_tool("sbvarsign")
    attrs = "NON_VOLATILE,BOOTSERVICE_ACCESS,RUNTIME_ACCESS,TIME_BASED_AUTHENTICATED_WRITE_ACCESS"
    for variable, by in (("PK", "PK"), ("KEK", "PK"), ("db", "KEK")):
        data = material.path(f"{variable}.sbv.esl")
        Path(data).write_bytes(material.esl(variable))
        out = material.path(f"{variable}.sbv.auth")
        r = run(tool, "--key", material.path(f"{by}.key"), "--cert", material.path(f"{by}.crt"),
                "--attr", attrs, "--include-attrs", "--output", out, variable, data)  # fmt: skip
        assert r.returncode == 0, r.stderr
        raw = Path(out).read_bytes()
        assert raw[:4] == b"\x27\x00\x00\x00"  # --include-attrs prefix
        before = dt.datetime.now(dt.UTC)
        got = sb.verify_update(
            variable, raw[4:], pk=None if variable == "PK" else material.certs["PK"],
            kek=[material.certs["KEK"]],
        )  # fmt: skip
        assert got.signer == material.certs[by]
        # sbsigntool 0.9.4 stores struct tm's zero-based month (December is 11)
        after = dt.datetime.now(dt.UTC)
        stamp = got.timestamp
        assert (stamp.year, stamp.month + 1, stamp.day) in {
            (w.year, w.month, w.day) for w in (before, after)
        }
        assert sb.certificates_in(got.lists) == [material.certs[variable]]
    # the same sbvarsign db update is refused when checked against the wrong KEK
    raw = Path(material.path("db.sbv.auth")).read_bytes()[4:]
    with pytest.raises(SignatureError):
        sb.verify_update("db", raw, pk=material.certs["PK"], kek=[material.certs["db"]])


def test_virt_firmware_reads_bastion_auth_files(material: Material, tmp_path: Path) -> None:
    need_module("virt.firmware", "virt-firmware")
    from virt.firmware.varstore.authfiles import AuthFilesVarStore

    signing = {"PK": "PK", "KEK": "PK", "db": "KEK"}
    for variable, by in signing.items():
        auth = sb.sign_update(
            variable, material.esl(variable), material.signers[by], material.certs[by], T
        )
        (tmp_path / f"{variable}.auth").write_bytes(auth.to_bytes())
    varlist = AuthFilesVarStore(str(tmp_path)).get_varlist()
    assert sorted(varlist) == ["KEK", "PK", "db"]
    for variable in signing:
        var = varlist[variable]
        assert var.data == material.esl(variable)
        assert var.time == T.to_datetime()
        assert [str(sl.guid) for sl in var.sigdb] == [str(ev.EFI_CERT_X509_GUID)]
        sigs = [sig for sl in var.sigdb for sig in sl]
        der = material.certs[variable].public_bytes(serialization.Encoding.DER)
        assert [(str(sig["guid"]), bytes(sig["data"])) for sig in sigs] == [(str(OWNER), der)]
        assert var.sigdb[0].x509 == material.certs[variable]
