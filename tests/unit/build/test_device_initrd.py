"""What a real device's initrd gets from bastion (ADR 0028): command line words from the
signed profile, the crypttab line, the TPM lock unit; and the test initrd's storage.sh,
which must run exactly the kernel adapters' argv."""

from __future__ import annotations

import shlex
import subprocess
import uuid
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.build import device_initrd as di
from bastion.build import initrd
from bastion.device.profile import make_profile
from bastion.errors import ConfigError
from bastion.storage import kernel_crypt, kernel_verity
from bastion.storage.kernel_verity import CorruptionResponse

HASH = "0123456789abcdef" * 4
PART = uuid.UUID("6f0c8a5e-3c1b-4b47-9a52-5d7f3a1e2b90")


@pytest.mark.parametrize(
    ("response", "audit", "expected", "words"),
    [
        (
            "halt",
            (),
            CorruptionResponse.PANIC,
            ["systemd.verity_root_options=panic-on-corruption", "panic=0"],
        ),
        (
            "wipe-data",
            (),
            CorruptionResponse.PANIC,
            ["systemd.verity_root_options=panic-on-corruption", "panic=0"],
        ),
        (
            "try-other-slot",
            (),
            CorruptionResponse.RESTART,
            ["systemd.verity_root_options=restart-on-corruption"],
        ),
        (
            "halt",
            ("verity",),
            CorruptionResponse.IGNORE,
            ["systemd.verity_root_options=ignore-corruption"],
        ),
        (
            "halt",
            ("rollback",),
            CorruptionResponse.PANIC,
            ["systemd.verity_root_options=panic-on-corruption", "panic=0"],
        ),
    ],
)
def test_profile_maps_to_the_kernel_response(
    response: str, audit: tuple[str, ...], expected: CorruptionResponse, words: list[str]
) -> None:
    profile = make_profile(response, audit)
    assert profile.verity_error_response() is expected
    assert di.verity_words(profile) == words
    assert di.cmdline_words(bytes.fromhex(HASH), profile) == [f"roothash={HASH}", *words]
    # what the test initrd reads back from the command line is the same response
    option = words[0].split("=", 1)[1]
    assert kernel_verity.parse_options(option) is expected


def test_cmdline_refuses_a_bad_root_hash() -> None:
    with pytest.raises(ConfigError, match="root hash"):
        di.cmdline_words("ABC", make_profile())


def test_crypttab_line() -> None:
    line = di.crypttab_line(PART)
    assert line == (
        f"data PARTUUID={PART} none tpm2-device=auto,"
        "tpm2-signature=/.extra/tpm2-pcr-signature.json,headless=true,x-initrd.attach\n"
    )
    assert line.endswith("\n") and len(line.split()) == 4
    with pytest.raises(ConfigError, match="not a UUID"):
        di.crypttab_line("not-a-uuid")
    with pytest.raises(ConfigError):
        di.crypttab_line(PART, name="da ta")


def test_device_initrd_files() -> None:
    files = di.device_initrd_files(HASH, PART, make_profile("try-other-slot"))
    assert files["cmdline"] == (
        f"roothash={HASH} systemd.verity_root_options=restart-on-corruption\n".encode()
    )
    assert files["etc/crypttab"] == di.crypttab_line(PART).encode()
    unit = files["usr/lib/systemd/system/bastion-tpm-lock.service"].decode()
    assert "After=cryptsetup.target" in unit
    assert f"ExecStart={di.PCRPHASE} --graceful bastion-tpm-lock" in unit
    antirollback = {
        "usr/lib/bastion/antirollback.sh",
        "usr/lib/systemd/system/bastion-antirollback.service",
    }
    assert files["usr/lib/bastion/antirollback.sh"] == di.antirollback_script()
    assert set(di.device_initrd_files(HASH, None, make_profile())) == {"cmdline", *antirollback}


def test_antirollback_unit_order() -> None:
    # before the data volume's cryptsetup and the root; a failure isolates emergency.target
    unit = di.ANTIROLLBACK_UNIT.decode()
    assert "Wants=cryptsetup-pre.target" in unit
    assert "Before=cryptsetup-pre.target initrd-root-device.target initrd-root-fs.target" in unit
    assert "Before=sysroot.mount initrd.target initrd-switch-root.target" in unit
    assert "OnFailure=emergency.target\nOnFailureJobMode=isolate" in unit
    assert "RequiredBy=initrd-root-fs.target" in unit
    assert f"ExecStart=/bin/sh {di.ANTIROLLBACK_SCRIPT}" in unit
    # a refusal also measures a word no .pcrsig signs into PCR 11: the TPM keeps the key
    assert f"|| {di.PCRPHASE} --graceful bastion-rollback'" in unit


def test_initrd_carries_the_same_antirollback_script() -> None:
    assert initrd.ANTIROLLBACK_SCRIPT == "etc/bastion/antirollback.sh"
    init = initrd.default_init().decode()
    assert ". /etc/bastion/antirollback.sh" in init
    assert "bastion_antirollback_check /run/esp" in init


@pytest.mark.parametrize(
    ("name", "content"),
    [(di.LOCK_UNIT_NAME, di.TPM_LOCK_UNIT), (di.ANTIROLLBACK_UNIT_NAME, di.ANTIROLLBACK_UNIT)],
)
def test_units_pass_systemd_analyze(tmp_path: Path, name: str, content: bytes) -> None:
    tool = need_tool("systemd-analyze")
    unit = tmp_path / name
    unit.write_bytes(content)
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def _functions(script: str) -> dict[str, list[str]]:
    """Each rendered line ``"OPTIONS") argv ;;`` as OPTIONS -> argv words."""
    out = {}
    for line in script.splitlines():
        line = line.strip()
        if line.startswith('"') and line.endswith(";;") and ")" in line:
            key, _, body = line.partition(") ")
            out[key.strip('"')] = shlex.split(body.removesuffix(";;"))
        elif line.startswith("cryptsetup "):
            out["crypt"] = shlex.split(line)
    return out


@pytest.mark.parametrize("response", list(CorruptionResponse))
def test_storage_script_runs_the_adapter_argv(response: CorruptionResponse) -> None:
    rendered = _functions(initrd.storage_script().decode())
    words = rendered[response.options]
    values = {"$1": "/dev/vda2", "$2": "/dev/vda3", "$3": HASH}
    argv = [values.get(w, w) for w in words]
    assert argv == kernel_verity.open_argv("/dev/vda2", "root", "/dev/vda3", HASH, response)
    crypt = [{"$1": "/dev/vda4"}.get(w, w) for w in rendered["crypt"]]
    assert crypt == kernel_crypt.open_token_argv("/dev/vda4", "data")


def test_storage_script_runs_in_a_shell(tmp_path: Path) -> None:
    # with veritysetup/cryptsetup replaced by echo, the shell gets exactly the argv
    script = tmp_path / "storage.sh"
    script.write_bytes(initrd.storage_script())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("veritysetup", "cryptsetup"):
        (bindir / tool).write_text(f'#!/bin/sh\nprintf "%s\\n" {tool} "$@"\n')
        (bindir / tool).chmod(0o755)
    run = subprocess.run(
        [
            "sh",
            "-c",
            f"PATH={bindir}:$PATH; . {script}; "
            f"bastion_verity_open /dev/vda2 /dev/vda3 {HASH} restart-on-corruption; "
            "bastion_crypt_open_token /dev/vda4; bastion_verity_open /a /b c bogus; echo rc=$?",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = run.stdout.splitlines()
    assert lines[:7] == kernel_verity.open_argv(
        "/dev/vda2", "root", "/dev/vda3", HASH, CorruptionResponse.RESTART
    )
    assert lines[7:12] == kernel_crypt.open_token_argv("/dev/vda4", "data")
    assert lines[12] == "rc=22" and "not one bastion writes" in run.stderr
