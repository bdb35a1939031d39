"""newc cpio: round trip, GNU cpio as the reference reader, and a table of bad archives."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import FormatError, LimitError
from bastion.formats import cpio
from bastion.formats.cpio import CpioEntry

ENTRIES = [
    CpioEntry.directory("bin"),
    CpioEntry.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    CpioEntry.symlink("bin/sh", "tool"),
    CpioEntry.directory("etc"),
    CpioEntry.file("etc/empty", b""),
    CpioEntry.file("etc/odd", b"abc"),  # length not a multiple of 4
    CpioEntry.file("init", b"x" * 5000, 0o700),
    CpioEntry.char_device("console", 5, 1),
]


def test_round_trip() -> None:
    data = cpio.archive(ENTRIES)
    assert len(data) % 4 == 0
    assert cpio.parse(data) == tuple(ENTRIES)
    # trailing zero padding and a second archive do not change the first one's entries
    assert cpio.parse(data + b"\0" * 512 + cpio.archive([ENTRIES[0]])) == tuple(ENTRIES)


def test_reproducible() -> None:
    assert cpio.archive(ENTRIES) == cpio.archive(list(ENTRIES))


def test_gnu_cpio_lists_and_extracts(tmp_path: Path) -> None:
    need_tool("cpio", "cpio")
    data = cpio.archive([e for e in ENTRIES if not stat.S_ISCHR(e.mode)])
    listed = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True)
    expected = [e.name for e in ENTRIES if not stat.S_ISCHR(e.mode)]
    assert listed.stdout.decode().split() == expected
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet"], input=data, cwd=out, check=True)
    assert (out / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (out / "bin/tool").stat().st_mode & 0o777 == 0o755
    assert (out / "bin/sh").readlink() == Path("tool")
    assert (out / "etc/odd").read_bytes() == b"abc"
    assert (out / "init").read_bytes() == b"x" * 5000


def test_reads_gnu_cpio_output(tmp_path: Path) -> None:
    need_tool("cpio", "cpio")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"hello")
    (tmp_path / "d" / "l").symlink_to("f")
    made = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input=b"d\nd/f\nd/l\n",
        cwd=tmp_path,
        capture_output=True,
        check=True,
    ).stdout
    parsed = {e.name: e for e in cpio.parse(made)}
    assert parsed["d"].is_dir
    assert parsed["d/f"].data == b"hello" and parsed["d/f"].is_file
    assert parsed["d/l"].is_symlink and parsed["d/l"].data == b"f"


def _bad_field(data: bytes) -> bytes:
    return data[:6] + b"XXXXXXXX" + data[14:]


def _no_nul(data: bytes) -> bytes:
    # name "bin" is 4 bytes with its NUL; overwrite the NUL
    return data[:113] + b"x" + data[114:]


def _huge_name(data: bytes) -> bytes:
    return data[:94] + b"%08X" % (1 << 20) + data[102:]


BAD = [
    ("empty", lambda d: b"", FormatError),
    ("bad magic", lambda d: b"070707" + d[6:], FormatError),
    ("non-hex field", _bad_field, FormatError),
    ("name without NUL", _no_nul, FormatError),
    ("name size over the limit", _huge_name, LimitError),
    ("truncated data", lambda d: d[: len(d) // 2], FormatError),
    ("no trailer", lambda d: d[: d.index(b"TRAILER!!!") - 110], FormatError),
]


@pytest.mark.parametrize(("case", "mutate", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_archives(case: str, mutate, error: type[Exception]) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        cpio.parse(mutate(cpio.archive(ENTRIES)))


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./x", "nul\0name"], ids=repr)
def test_bad_names(name: str) -> None:
    with pytest.raises(FormatError):
        CpioEntry.file(name, b"")


def test_duplicate_names_refused() -> None:
    with pytest.raises(FormatError, match="twice"):
        cpio.archive([CpioEntry.file("a", b"1"), CpioEntry.file("a", b"2")])


def test_directory_with_data_refused() -> None:
    with pytest.raises(FormatError):
        CpioEntry("d", stat.S_IFDIR | 0o755, b"data")


def test_entry_count_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpio, "CPIO_MAX_ENTRIES", 3)
    with pytest.raises(LimitError):
        cpio.parse(cpio.archive(ENTRIES))
