"""PCR 11 prediction and .pcrsig against systemd-measure 252 (calculate and sign)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.conftest import need_tool
from tests.unit.trust.conftest import make_key

from bastion.io.runner import find_tool
from bastion.trust.keys import private_key_to_pem
from bastion.trust.pcr11 import DEFAULT_PHASES, pcrsig_json, predict_pcr11, sign_pcr11
from bastion.trust.signer import SignatureScheme, SoftwareSigner

pytestmark = pytest.mark.interop

MEASURE_DIR = "/usr/lib/systemd"
OPTIONS = {".linux": "linux", ".osrel": "osrel", ".cmdline": "cmdline", ".initrd": "initrd"}
OPTIONS |= {".splash": "splash", ".dtb": "dtb", ".pcrpkey": "pcrpkey"}


def measure_tool() -> str:
    return find_tool("systemd-measure", (MEASURE_DIR,)) or need_tool("systemd-measure")


def _pem() -> bytes:
    return (
        make_key("rsa-2048", 3)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


CASES = {
    "full": {
        ".linux": b"MZ" + bytes(range(256)) * 33,
        ".osrel": b"ID=debian\n",
        ".cmdline": b"console=ttyS0 quiet\0",
        ".initrd": b"\x07\x07\x01" * 5000,
        ".pcrpkey": _pem(),
    },
    "kernel only": {".linux": b"MZ kernel"},
    "empty cmdline skipped, splash and dtb": {
        ".linux": b"MZ k",
        ".cmdline": b"",
        ".splash": b"BM splash",
        ".dtb": b"\xd0\x0d\xfe\xed",
    },
}


def _args(folder: Path, sections: dict[str, bytes]) -> list[str]:
    out = []
    for name, content in sections.items():
        path = folder / name.lstrip(".")
        path.write_bytes(content)
        out.append(f"--{OPTIONS[name]}={path}")
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_prediction_equals_calculate(tmp_path: Path, case: str) -> None:
    sections = CASES[case]
    phases = [":", *DEFAULT_PHASES]
    proc = subprocess.run(
        [measure_tool(), "calculate", "--bank=sha256", "--json=short"]
        + [f"--phase={p}" for p in phases]
        + _args(tmp_path, sections),
        capture_output=True,
        check=True,
    )
    entries = json.loads(proc.stdout)["sha256"]
    assert len(entries) == len(phases)
    for phase, entry in zip(phases, entries, strict=True):
        assert entry["pcr"] == 11
        assert entry["hash"] == predict_pcr11(sections, phase).hex(), phase


def test_pcrsig_byte_identical_to_measure_sign(tmp_path: Path, swtpm) -> None:  # type: ignore[no-untyped-def]
    key = make_key("rsa-2048", 3)
    (tmp_path / "pcr.key").write_bytes(private_key_to_pem(key))
    (tmp_path / "pcr.pub").write_bytes(_pem())
    sections = CASES["full"]
    env = dict(os.environ, SYSTEMD_TPM2_DEVICE=swtpm.uri)
    proc = subprocess.run(
        [
            measure_tool(),
            "sign",
            "--bank=sha256",
            f"--private-key={tmp_path / 'pcr.key'}",
            f"--public-key={tmp_path / 'pcr.pub'}",
            *_args(tmp_path, sections),
        ],
        capture_output=True,
        check=True,
        env=env,
    )
    signer = SoftwareSigner(key, SignatureScheme.RSA_PKCS1V15_SHA256)
    assert pcrsig_json(sign_pcr11(sections, signer)) == proc.stdout


def test_built_uki_prediction_equals_calculate_on_objcopy_dumps(tmp_path: Path) -> None:
    """Build on the real stub with a .pcrsig; objcopy dumps the sections back out and
    systemd-measure's value for them is the one signed in the UKI's .pcrsig."""
    from tests.interop.test_authenticode_sbsign import need_stub

    from bastion.build.uki import UkiInputs, build_uki, with_pcr_signature
    from bastion.trust.pcr11 import pcr11_policy

    signer = SoftwareSigner(make_key("rsa-2048", 3), SignatureScheme.RSA_PKCS1V15_SHA256)
    full = CASES["full"]
    inputs = UkiInputs(
        linux=full[".linux"], osrel=full[".osrel"], cmdline=full[".cmdline"], initrd=full[".initrd"]
    )
    uki = tmp_path / "uki.efi"
    uki.write_bytes(build_uki(need_stub(), with_pcr_signature(inputs, signer, ["enter-initrd"])))
    args = []
    for name, option in OPTIONS.items():
        out = tmp_path / f"dump-{option}"
        proc = subprocess.run(
            [
                need_tool("objcopy"),
                "--dump-section",
                f"{name}={out}",
                str(uki),
                str(tmp_path / "x"),
            ],
            capture_output=True,
            check=False,
        )
        if proc.returncode == 0 and out.is_file() and out.stat().st_size:
            args.append(f"--{option}={out}")
    assert len(args) == 5  # linux osrel cmdline initrd pcrpkey
    proc = subprocess.run(
        [
            measure_tool(),
            "calculate",
            "--bank=sha256",
            "--json=short",
            "--phase=enter-initrd",
            *args,
        ],
        capture_output=True,
        check=True,
    )
    value = bytes.fromhex(json.loads(proc.stdout)["sha256"][0]["hash"])
    objcopy_sig = tmp_path / "dump-pcrsig"
    subprocess.run(
        [
            need_tool("objcopy"),
            "--dump-section",
            f".pcrsig={objcopy_sig}",
            str(uki),
            str(tmp_path / "x"),
        ],
        capture_output=True,
        check=True,
    )
    entry = json.loads(objcopy_sig.read_bytes())["sha256"][0]
    assert entry["pol"] == pcr11_policy(value).hex()
