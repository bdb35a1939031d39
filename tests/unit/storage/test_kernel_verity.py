"""The kernel dm-verity adapter: argv, input checks, error mapping, and the real
``veritysetup verify`` on files (the open path runs in the QEMU guest: tests/e2e)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import need_tool
from tests.runnerkit import RecordingRunner

from bastion.errors import (
    CommandError,
    ConfigError,
    ConflictError,
    DigestMismatchError,
    FormatError,
    LimitError,
    NotFoundError,
)
from bastion.formats.verity import VerityParams
from bastion.io.runner import CommandResult
from bastion.limits import KERNEL_TOOL_MAX_OUTPUT
from bastion.storage import kernel_verity as kv
from bastion.storage.kernel_verity import CorruptionResponse
from bastion.storage.verity_reader import format_region

HASH = "ab" * 32


@pytest.mark.parametrize(
    ("response", "flag"),
    [
        (CorruptionResponse.EIO, []),
        (CorruptionResponse.IGNORE, ["--ignore-corruption"]),
        (CorruptionResponse.RESTART, ["--restart-on-corruption"]),
        (CorruptionResponse.PANIC, ["--panic-on-corruption"]),
    ],
)
def test_open_argv_per_response(response: CorruptionResponse, flag: list[str]) -> None:
    argv = kv.open_argv("/dev/vda2", "root", "/dev/vda3", bytes.fromhex(HASH), response)
    assert argv == ["veritysetup", "open", *flag, "/dev/vda2", "root", "/dev/vda3", HASH]


def test_other_argv() -> None:
    assert kv.verify_argv("/dev/vda2", "/dev/vda3", HASH) == [
        "veritysetup",
        "verify",
        "/dev/vda2",
        "/dev/vda3",
        HASH,
    ]
    assert kv.verify_argv("/d", "/d", HASH, hash_offset=8192)[2] == "--hash-offset=8192"
    assert kv.close_argv("root") == ["veritysetup", "close", "root"]
    assert kv.status_argv("root") == ["veritysetup", "status", "root"]


@pytest.mark.parametrize(
    ("data", "name", "root_hash", "offset"),
    [
        ("dev/vda2", "root", HASH, 0),  # relative
        ("/dev/../etc/shadow", "root", HASH, 0),  # dot-dot
        ("/dev/vda2 --x", "root", HASH, 0),  # space
        ("/dev//vda2", "root", HASH, 0),
        ("-/dev/vda2", "root", HASH, 0),  # would read as an option
        ("/dev/vda2", "-root", HASH, 0),
        ("/dev/vda2", "ro/ot", HASH, 0),
        ("/dev/vda2", "", HASH, 0),
        ("/dev/vda2", "root", HASH.upper(), 0),
        ("/dev/vda2", "root", HASH[:-2], 0),
        ("/dev/vda2", "root", "zz" * 32, 0),
        ("/dev/vda2", "root", HASH, 100),  # not a multiple of 512
        ("/dev/vda2", "root", HASH, -512),
    ],
)
def test_open_argv_refuses(data: str, name: str, root_hash: str, offset: int) -> None:
    with pytest.raises(ConfigError):
        kv.open_argv(data, name, "/dev/vda3", root_hash, hash_offset=offset)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", CorruptionResponse.EIO),
        ("ignore-corruption", CorruptionResponse.IGNORE),
        ("restart-on-corruption", CorruptionResponse.RESTART),
        ("panic-on-corruption,", CorruptionResponse.PANIC),
    ],
)
def test_parse_options(text: str, expected: CorruptionResponse) -> None:
    assert kv.parse_options(text) is expected
    assert kv.parse_options(expected.options) is expected


@pytest.mark.parametrize(
    "text", ["panic-on-corruption,restart-on-corruption", "eio", "superblock=false", "x"]
)
def test_parse_options_refuses(text: str) -> None:
    with pytest.raises(FormatError, match="verity options"):
        kv.parse_options(text)


def _result(code: int, err: str) -> CommandResult:
    return CommandResult(("veritysetup", "open"), code, b"", err.encode())


@pytest.mark.parametrize(
    ("code", "err", "error"),
    [
        (1, "Verification of root hash failed.\n", DigestMismatchError),
        (
            2,
            "Verification failed at position 8192.\nVerification of data area failed.\n",
            DigestMismatchError,
        ),
        (5, "Device root already exists.\n", ConflictError),
        (4, "Device /dev/vdz does not exist or access denied.\n", NotFoundError),
        (1, "Cannot initialize device-mapper. Is dm_mod kernel module loaded?\n", CommandError),
        (3, "", CommandError),
    ],
)
def test_raise_for_maps_failures(code: int, err: str, error: type[Exception]) -> None:
    with pytest.raises(error) as caught:
        kv.raise_for(_result(code, err), "verity open of /dev/vda2")
    assert "verity open of /dev/vda2" in str(caught.value)
    if "position 8192" in err:
        assert isinstance(caught.value, DigestMismatchError)
        assert caught.value.block == 2 and caught.value.area == "verity"


def test_raise_for_passes_success() -> None:
    kv.raise_for(_result(0, "noise"), "anything")


STATUS = """\
/dev/mapper/root is active and is in use.
  type:        VERITY
  status:      verified
  hash type:   1
  data block:  4096
  root hash:   {hash}
"""


def test_parse_status() -> None:
    st = kv.parse_status(STATUS.format(hash=HASH))
    assert st.active and st.verified and st.get("root hash") == HASH
    bad = kv.parse_status(STATUS.format(hash=HASH).replace("verified", "corrupted"))
    assert bad.active and not bad.verified
    gone = kv.parse_status("/dev/mapper/root is inactive.\n")
    assert not gone.active and not gone.verified
    with pytest.raises(LimitError):
        kv.parse_status("x" * (KERNEL_TOOL_MAX_OUTPUT + 1))


def test_kernel_verity_runs_the_argv_and_maps_status() -> None:
    runner = RecordingRunner(
        {
            ("veritysetup", "status"): (0, STATUS.format(hash=HASH), ""),
            ("veritysetup", "close"): (5, "", "Device root is busy.\n"),
        }
    )
    verity = kv.KernelVerity(runner)
    assert (
        verity.open("/dev/vda2", "root", "/dev/vda3", HASH, CorruptionResponse.PANIC)
        == "/dev/mapper/root"
    )
    assert verity.status("root").verified
    with pytest.raises(ConflictError, match="busy"):
        verity.close("root")
    assert runner.argvs[0] == kv.open_argv(
        "/dev/vda2", "root", "/dev/vda3", HASH, CorruptionResponse.PANIC
    )


@pytest.fixture
def formatted(tmp_path: Path) -> tuple[Path, Path, bytes]:
    data = tmp_path / "data.img"
    data.write_bytes(bytes(range(256)) * 16 * 40)  # 40 blocks
    result = format_region(data, tmp_path / "hash.img", VerityParams(40, salt=b"\x01" * 32))
    return data, tmp_path / "hash.img", result.root_hash


def test_real_veritysetup_verifies_bastions_tree(formatted: tuple[Path, Path, bytes]) -> None:
    need_tool("veritysetup")
    data, hash_img, root_hash = formatted
    verity = kv.KernelVerity()
    verity.verify(str(data), str(hash_img), root_hash)
    with pytest.raises(DigestMismatchError, match="root hash"):
        verity.verify(str(data), str(hash_img), bytes(32))
    fd = os.open(data, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xff", 5 * 4096 + 9)
    finally:
        os.close(fd)
    with pytest.raises(DigestMismatchError) as caught:
        verity.verify(str(data), str(hash_img), root_hash)
    assert caught.value.block == 5
