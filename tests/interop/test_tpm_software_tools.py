"""The software TPM and the pure TPM code against tpm2-tools 5.4 (and swtpm where a tool
needs a TPM): quotes accepted by tpm2_checkquote, PolicyPCR equal to tpm2_createpolicy's,
credentials from tpm2_makecredential activated, and every structure readable by tpm2_print.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import TpmError
from bastion.formats.tpm2 import Alg, CredentialFile, PcrsFile
from bastion.tpm.base import HashAlg, PcrSelection
from bastion.tpm.pcr import policy_pcr
from bastion.tpm.quote import public_pem
from bastion.tpm.software import SoftwareTpm

pytestmark = pytest.mark.interop

ENV = {**os.environ, "TSS2_LOG": "all+none"}


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, capture_output=True, env=env or ENV, cwd=cwd, check=False, timeout=60
    )


def _extend_some(tpm: SoftwareTpm) -> None:
    for i, word in [(0, b"firmware"), (7, b"secure-boot"), (23, b"app")]:
        tpm.pcr_extend(i, {HashAlg.SHA256: hashlib.sha256(word).digest()})


def _write_quote(tmp_path: Path, tpm: SoftwareTpm, nonce: bytes, sel: PcrSelection) -> None:
    ak = tpm.create_ak()
    q = tpm.quote(ak, nonce, sel)
    (tmp_path / "quote.msg").write_bytes(q.attest)
    (tmp_path / "quote.sig").write_bytes(q.signature)
    (tmp_path / "ak.pem").write_bytes(public_pem(ak.public))
    values = tpm.pcr_read(sel)
    (tmp_path / "pcrs.bin").write_bytes(PcrsFile.from_values(Alg.SHA256, values).to_bytes())


def _checkquote(
    tmp_path: Path, nonce_hex: str, pcrs: str = "pcrs.bin"
) -> subprocess.CompletedProcess[bytes]:
    tool = need_tool("tpm2_checkquote")
    return run(
        [
            tool,
            "-u",
            "ak.pem",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-f",
            pcrs,
            "-g",
            "sha256",
            "-q",
            nonce_hex,
        ],
        cwd=tmp_path,
    )


@pytest.mark.parametrize("selection", ["sha256:0,7,23", "sha256:0,1,2,3,4,5,6,7,8,9,10,11,16,23"])
def test_tpm2_checkquote_accepts_software_quote(tmp_path: Path, selection: str) -> None:
    tpm = SoftwareTpm(tmp_path / "state.json")
    _extend_some(tpm)
    nonce = bytes.fromhex("c0ffee00112233445566778899aabbcc")
    _write_quote(tmp_path, tpm, nonce, PcrSelection.parse(selection))
    res = _checkquote(tmp_path, nonce.hex())
    assert res.returncode == 0, res.stderr.decode()
    # and tpm2_checkquote refuses what it should
    assert _checkquote(tmp_path, "deadbeef").returncode != 0
    pcrs = bytearray((tmp_path / "pcrs.bin").read_bytes())
    pcrs[132 + 4 + 4 + 2] ^= 1  # first byte of the first PCR value
    (tmp_path / "bad.bin").write_bytes(bytes(pcrs))
    assert _checkquote(tmp_path, nonce.hex(), "bad.bin").returncode != 0
    msg = bytearray((tmp_path / "quote.msg").read_bytes())
    msg[-1] ^= 1
    (tmp_path / "quote.msg").write_bytes(bytes(msg))
    assert _checkquote(tmp_path, nonce.hex()).returncode != 0


def test_policy_pcr_equals_tpm2_createpolicy(tmp_path: Path, swtpm) -> None:  # type: ignore[no-untyped-def]
    tool = need_tool("tpm2_createpolicy")
    tpm = SoftwareTpm(tmp_path / "state.json")
    _extend_some(tpm)
    sel = PcrSelection.parse("sha256:0,7,23")
    values = tpm.pcr_read(sel)
    (tmp_path / "pcr.bin").write_bytes(b"".join(values[i] for i in sel.indexes))
    res = run(
        [tool, "-Q", "--policy-pcr", "-l", str(sel), "-f", "pcr.bin", "-L", "policy.bin"],
        cwd=tmp_path,
        env={**ENV, "TPM2TOOLS_TCTI": swtpm.uri},
    )
    assert res.returncode == 0, res.stderr.decode()
    reference = (tmp_path / "policy.bin").read_bytes()
    assert policy_pcr(sel, values) == reference
    from bastion.formats.tpm2 import Public

    assert Public.parse(tpm.seal(b"k", sel).public).auth_policy == reference


@pytest.fixture(scope="module")
def ek_tpm(tmp_path_factory: pytest.TempPathFactory) -> SoftwareTpm:
    t = SoftwareTpm(tmp_path_factory.mktemp("ek") / "state.json")
    t.ek_public()
    return t


def _makecredential(tmp_path: Path, ek_public: bytes, name: bytes, secret: bytes) -> CredentialFile:
    tool = need_tool("tpm2_makecredential")
    (tmp_path / "ek.pub").write_bytes(ek_public)
    (tmp_path / "secret.bin").write_bytes(secret)
    res = run(
        [
            tool,
            "-Q",
            "-T",
            "none",
            "-u",
            "ek.pub",
            "-s",
            "secret.bin",
            "-n",
            name.hex(),
            "-o",
            "cred.out",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr.decode()
    return CredentialFile.parse((tmp_path / "cred.out").read_bytes())


def test_tpm2_makecredential_activates_in_software_tpm(tmp_path: Path, ek_tpm: SoftwareTpm) -> None:
    ak = ek_tpm.create_ak()
    cred = _makecredential(
        tmp_path, ek_tpm.ek_public(), ak.name, b"0123456789abcdef0123456789abcdef"
    )
    got = ek_tpm.activate_credential(ak, cred.id_object, cred.encrypted_secret)
    assert got == b"0123456789abcdef0123456789abcdef"


def test_tpm2_makecredential_for_other_ek_does_not_activate(
    tmp_path: Path, ek_tpm: SoftwareTpm
) -> None:
    other = SoftwareTpm(tmp_path / "other.json")
    ak = ek_tpm.create_ak()
    cred = _makecredential(tmp_path, other.ek_public(), ak.name, b"secret")
    with pytest.raises(TpmError):
        ek_tpm.activate_credential(ak, cred.id_object, cred.encrypted_secret)
    assert other.activate_credential  # the intended TPM would need the AK loaded there


def test_tpm2_print_reads_software_structures(tmp_path: Path, ek_tpm: SoftwareTpm) -> None:
    tool = need_tool("tpm2_print")
    ak = ek_tpm.create_ak()
    sel = PcrSelection.parse("sha256:0,7")
    sealed = ek_tpm.seal(b"k" * 32, sel)
    q = ek_tpm.quote(ak, b"n", sel)
    files = {
        "TPM2B_PUBLIC": [
            ek_tpm.ek_public(),
            ak.public,
            sealed.public,
            ek_tpm.create_signing_key("rsa2048").public,
        ],
        "TPMS_ATTEST": [q.attest],
    }
    for typ, blobs in files.items():
        for n, blob in enumerate(blobs):
            path = tmp_path / f"{typ}.{n}"
            path.write_bytes(blob)
            res = run([tool, "-t", typ, str(path)])
            assert res.returncode == 0, (typ, n, res.stderr.decode())
    out = run([tool, "-t", "TPMS_ATTEST", str(tmp_path / "TPMS_ATTEST.0")]).stdout.decode()
    assert "ff544347" in out.lower() and "8018" in out
    sealed_out = run([tool, "-t", "TPM2B_PUBLIC", str(tmp_path / "TPM2B_PUBLIC.2")]).stdout.decode()
    assert "keyedhash" in sealed_out.lower()


@pytest.mark.parametrize("ek_alg", ["rsa", "ecc"])
def test_bastion_make_credential_activates_in_swtpm(tmp_path: Path, swtpm, ek_alg: str) -> None:  # type: ignore[no-untyped-def]
    from bastion.tpm.quote import make_credential

    env = {**ENV, "TPM2TOOLS_TCTI": swtpm.uri}

    def tool(*argv: str) -> subprocess.CompletedProcess[bytes]:
        res = run([need_tool(argv[0]), *argv[1:]], cwd=tmp_path, env=env)
        assert res.returncode == 0, (argv, res.stderr.decode())
        return res

    tool("tpm2_createek", "-c", "ek.ctx", "-G", ek_alg, "-u", "ek.pub")
    tool("tpm2_flushcontext", "-t")
    tool("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s",
         "ecdsa", "-u", "ak.pub", "-n", "ak.name")  # fmt: skip
    tool("tpm2_flushcontext", "-t")
    tool("tpm2_flushcontext", "-s")
    secret = b"credential-for-" + ek_alg.encode()
    blob, enc = make_credential(
        (tmp_path / "ek.pub").read_bytes(), (tmp_path / "ak.name").read_bytes(), secret
    )
    (tmp_path / "cred.out").write_bytes(CredentialFile(blob, enc).to_bytes())
    tool("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
    tool("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
    tool("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.out", "-o",
         "act.out", "-P", "session:session.ctx")  # fmt: skip
    tool("tpm2_flushcontext", "session.ctx")
    assert (tmp_path / "act.out").read_bytes() == secret
