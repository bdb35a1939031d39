"""What cryptsetup refuses or never opens, bastion refuses or never opens (real tools).

* A keyslot made by ``cryptsetup luksAddKey --unbound`` has its own digest with no
  segment: its passphrase must not unlock the data (cryptsetup: "No usable keyslot").
* A primary header overwritten by a filesystem or swap area (the first 4 KiB of a real
  ``mkfs.ext4``/``mkswap`` image written over the volume), or replaced by a LUKS1 version
  field, must not make either tool fall back to the intact secondary header; a merely
  damaged checksum must (both tools recover from the secondary).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import AuthError, ConfigError, FormatError
from bastion.storage.luks2_volume import FileRange, Luks2Volume, read_header

pytestmark = pytest.mark.interop
MiB = 1 << 20
CS_PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def cs(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [need_tool("cryptsetup"), "--batch-mode", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode:
        raise AssertionError(f"cryptsetup {args}: {proc.returncode} {proc.stderr}")
    return proc


def _luks(tmp_path: Path, key: Path) -> Path:
    img = tmp_path / "v.img"
    with img.open("wb") as f:
        f.truncate(8 * MiB)
    cs("luksFormat", "--type", "luks2", *CS_PBKDF2, "--luks2-metadata-size", "16k",
       "--luks2-keyslots-size", "1m", "--key-file", key, img)  # fmt: skip
    return img


def test_unbound_keyslot_never_opens_the_data(tmp_path: Path) -> None:
    key, other = tmp_path / "key", tmp_path / "unbound"
    key.write_bytes(b"bound passphrase")
    other.write_bytes(b"unbound passphrase")
    img = _luks(tmp_path, key)
    cs("luksAddKey", "--unbound", "--key-size", "256", *CS_PBKDF2, "--key-file", key, img, other)
    assert cs("open", "--test-passphrase", "--key-file", other, img, check=False).returncode

    with FileRange(img) as storage:
        vol = Luks2Volume.open(storage)
        assert vol.metadata.digests[1].segments == ()
        with pytest.raises(AuthError):
            vol.unlock_passphrase(b"unbound passphrase")
        with pytest.raises(ConfigError, match="unbound"):
            vol.unlock_passphrase(b"unbound passphrase", keyslot=1)
        assert not vol.is_unlocked
        assert vol.unlock_passphrase(b"bound passphrase") == 0
        with pytest.raises(ConfigError, match="unbound"):
            vol.change_keyslot(1, b"would hold the data key")
        # removing the unbound keyslot takes its digest along; cryptsetup agrees
        vol.remove_keyslot(1)
        assert set(vol.metadata.digests) == {0}
    dump = cs("luksDump", img).stdout
    assert "  1: pbkdf2" not in dump
    cs("open", "--test-passphrase", "--key-file", key, img)


def _first_4k_of(tool: str, *args: str) -> Callable[[Path, Path], None]:
    def write(img: Path, work: Path) -> None:
        donor = work / f"{tool}.img"
        with donor.open("wb") as f:
            f.truncate(8 * MiB)
        subprocess.run([need_tool(tool), *args, str(donor)], capture_output=True, check=True)
        with img.open("r+b") as f:
            f.write(donor.read_bytes()[:4096])

    return write


def _patch(offset: int, data: bytes) -> Callable[[Path, Path], None]:
    def write(img: Path, work: Path) -> None:
        with img.open("r+b") as f:
            f.seek(offset)
            f.write(data)

    return write


OVERWRITES = [
    ("ext4", _first_4k_of("mkfs.ext4", "-q", "-F"), "signatures: ext4"),
    ("swap", _first_4k_of("mkswap"), "signatures: swap"),
    ("luks1-version", _patch(6, b"\x00\x01"), "LUKS1"),
    ("checksum-only", _patch(448, b"\xff" * 8), None),
]


@pytest.mark.parametrize(
    ("write", "refusal"), [(w, r) for _, w, r in OVERWRITES], ids=[n for n, _, _ in OVERWRITES]
)
def test_overwritten_primary_agrees_with_cryptsetup(
    tmp_path: Path, write: Callable[[Path, Path], None], refusal: str | None
) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"pw")
    img = _luks(tmp_path, key)
    write(img, tmp_path)
    theirs = tmp_path / "cryptsetup.img"
    shutil.copyfile(img, theirs)
    cryptsetup_ok = cs("luksDump", theirs, check=False).returncode == 0
    assert cryptsetup_ok is (refusal is None)
    with FileRange(img) as storage:
        if refusal is None:
            assert read_header(storage).winner.binary.copy.value == "secondary"
        else:
            with pytest.raises(FormatError, match=refusal):
                read_header(storage)
