"""The kernel dm-crypt adapter: argv, input checks, error mapping, and the real
``cryptsetup --test-passphrase`` on a file (the open path runs in the QEMU guest)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool
from tests.runnerkit import RecordingRunner

from bastion.errors import (
    AuthError,
    CommandError,
    ConfigError,
    ConflictError,
    NotFoundError,
    PolicyError,
)
from bastion.io.runner import CommandResult
from bastion.storage import kernel_crypt as kc


def test_argv() -> None:
    assert kc.open_token_argv("/dev/vda4", "data") == [
        "cryptsetup",
        "open",
        "--token-only",
        "/dev/vda4",
        "data",
    ]
    assert kc.open_token_argv("/dev/vda4", "data", token_type="systemd-tpm2")[3] == (
        "--token-type=systemd-tpm2"
    )
    assert kc.open_key_argv("/dev/vda4", "data") == [
        "cryptsetup",
        "open",
        "--key-file=-",
        "/dev/vda4",
        "data",
    ]
    assert kc.test_key_argv("/dev/vda4")[2:] == ["--test-passphrase", "--key-file=-", "/dev/vda4"]
    assert kc.close_argv("data") == ["cryptsetup", "close", "data"]
    assert kc.status_argv("data") == ["cryptsetup", "status", "data"]


@pytest.mark.parametrize(
    ("device", "name"),
    [("vda4", "data"), ("/dev/vda4;rm", "data"), ("/dev/vda4", "da ta"), ("/dev/vda4", "--x")],
)
def test_argv_refuses(device: str, name: str) -> None:
    with pytest.raises(ConfigError):
        kc.open_token_argv(device, name)
    with pytest.raises(ConfigError):
        kc.open_key_argv(device, name)


@pytest.mark.parametrize(
    ("code", "err", "token", "error"),
    [
        (1, "No usable token is available.\n", True, PolicyError),
        (
            1,
            "Current policy digest does not match stored policy digest, cancelling TPM2 "
            "authentication attempt.\n",
            True,
            PolicyError,
        ),
        (
            1,
            "Couldn't find signature for this PCR bank, PCR index and public key.\n",
            True,
            PolicyError,
        ),
        (2, "No key available with this passphrase.\n", False, AuthError),
        (5, "Device data already exists.\n", True, ConflictError),
        (4, "Device /dev/vdz does not exist or access denied.\n", False, NotFoundError),
        (1, "Cannot initialize device-mapper.\n", False, CommandError),
        (1, "Cannot initialize device-mapper.\n", True, CommandError),
    ],
)
def test_raise_for(code: int, err: str, token: bool, error: type[Exception]) -> None:
    result = CommandResult(("cryptsetup", "open"), code, b"", err.encode())
    with pytest.raises(error) as caught:
        kc.raise_for(result, "unlock of /dev/vda4", token=token)
    assert err.strip().splitlines()[-1] in str(caught.value)


def test_kernel_crypt_sends_the_key_on_stdin_only() -> None:
    runner = RecordingRunner({("cryptsetup", "status"): (4, "", "")})
    crypt = kc.KernelCrypt(runner)
    assert crypt.open_with_key("/dev/vda4", "data", b"s3cret") == "/dev/mapper/data"
    assert crypt.open_with_token("/dev/vda4", "data") == "/dev/mapper/data"
    assert not crypt.is_active("data")
    (argv, stdin), (token_argv, token_stdin) = runner.calls[:2]
    assert b"s3cret" not in " ".join(argv).encode() and stdin == b"s3cret"
    assert token_argv == kc.open_token_argv("/dev/vda4", "data") and token_stdin is None


def test_real_cryptsetup_checks_a_key(tmp_path: Path) -> None:
    tool = need_tool("cryptsetup")
    volume = tmp_path / "data.luks"
    volume.write_bytes(bytes(32 * 1024 * 1024))
    subprocess.run(
        [
            tool,
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file=-",
            str(volume),
        ],
        input=b"right key",
        check=True,
        capture_output=True,
    )
    crypt = kc.KernelCrypt()
    crypt.test_key(str(volume), b"right key")
    with pytest.raises(AuthError, match="does not open any keyslot"):
        crypt.test_key(str(volume), b"wrong key")
    with pytest.raises(NotFoundError):
        crypt.test_key(str(tmp_path / "absent"), b"right key")
