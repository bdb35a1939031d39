"""bastion judges LUKS2 headers as cryptsetup does, case by case.

Every case of cryptsetup's ``luks2-validation-test`` (rebuilt in ``validation_cases.py``)
and the extra cases of the hardening issue is applied to a header that ``cryptsetup
luksFormat``/``luksAddKey`` made in this run (eight keyslots, 16 KiB metadata, 4 MiB
data offset, pbkdf2 with 1000 iterations and argon2id with 32 KiB, so it is fast). For
each case the test asks cryptsetup 2.6 (``luksDump`` exit status) and bastion
(``Luks2Volume.open``: a volume or a ``FormatError``, never another exception) and
requires the same verdict, except for the few documented deliberate refusals, where
cryptsetup accepts and bastion refuses with a message naming the unsupported feature.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from tests.conftest import need_tool

from bastion.errors import FormatError
from bastion.storage.luks2_volume import FileRange, Luks2Volume

from .validation_cases import CASES, EXTRA, Case, Image

pytestmark = pytest.mark.interop

MiB = 1 << 20
IMAGE_SIZE = 16 * MiB
PBKDF2 = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
ARGON2 = ["--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32"]
ARGON2 += ["--pbkdf-parallel", "1"]


def _cryptsetup(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [need_tool("cryptsetup"), *map(str, args)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    if check and proc.returncode:
        raise AssertionError(f"cryptsetup {args}: {proc.returncode} {proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """cryptsetup's shape of test header: 8 keyslots (1 and 2 argon2id, the rest pbkdf2)."""
    work = tmp_path_factory.mktemp("luks2-template")
    img, key = work / "template.img", work / "key"
    key.write_bytes(b"validation")
    with img.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    _cryptsetup(
        "luksFormat", "--batch-mode", "--type", "luks2", "--cipher", "aes-xts-plain64",
        "--key-size", "256", "--sector-size", "512", "--luks2-metadata-size", "16k",
        "--luks2-keyslots-size", str(4 * MiB - 32 * 1024), *PBKDF2, "--key-file", key, img,
    )  # fmt: skip
    for slot in range(1, 8):
        kdf = ARGON2 if slot in (1, 2) else PBKDF2
        _cryptsetup("luksAddKey", "--batch-mode", *kdf, "--key-file", key, img, key)
    data = img.read_bytes()
    return data[: len(data.rstrip(b"\0"))]  # headers and keyslot areas; then only zeros


def _write(template: bytes, case: Case, *paths: Path) -> None:
    image = Image(template)
    case.mutate(image)
    for path in paths:  # sparse: only the bytes the header and keyslots use
        with path.open("wb") as f:
            f.truncate(IMAGE_SIZE)
            f.write(image.data[: image.end])


def _bastion(path: Path) -> Luks2Volume | FormatError:
    with FileRange(path, writable=False) as storage:  # the header stays in memory
        try:
            return Luks2Volume.open(storage)
        except FormatError as exc:
            return exc


def _cryptsetup_accepts(path: Path) -> bool:
    return _cryptsetup("luksDump", path, check=False).returncode == 0


ALL = CASES + EXTRA


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_case_agrees_with_cryptsetup(case: Case, template: bytes, tmp_path: Path) -> None:
    img, copy_ = tmp_path / f"{case.name}.img", tmp_path / "for-cryptsetup.img"
    _write(template, case, img, copy_)  # luksDump may auto-repair its own copy
    ours = _bastion(img)
    theirs = _cryptsetup_accepts(copy_)

    assert theirs is (case.letter in "RT"), f"cryptsetup's verdict is not {case.letter}"
    if case.refusal is not None:
        assert isinstance(ours, FormatError), "bastion accepted a deliberately refused header"
        assert case.refusal in str(ours)
        return
    if not theirs:
        assert isinstance(ours, FormatError), "bastion accepted what cryptsetup refuses"
        return
    assert isinstance(ours, Luks2Volume), f"bastion refused what cryptsetup accepts: {ours}"
    if case.unusable is not None:
        slot, text = case.unusable
        reason = ours.metadata.keyslots[slot].unusable
        assert reason is not None
        assert text in reason
    if case.letter == "T":
        _token_remove_round_trip(img, tmp_path)


def _token_remove_round_trip(img: Path, tmp_path: Path) -> None:
    """Non-compact JSON: bastion's write keeps a header cryptsetup reads, and the reverse."""
    theirs = tmp_path / "cryptsetup-writes.img"
    shutil.copyfile(img, theirs)
    with FileRange(img) as storage:
        Luks2Volume.open(storage).remove_token(0)
    assert _cryptsetup_accepts(img)
    _cryptsetup("token", "remove", "--token-id", "0", theirs)
    for path in (img, theirs):
        reopened = _bastion(path)
        assert isinstance(reopened, Luks2Volume)
        assert reopened.tokens == {}


def test_case_table_covers_cryptsetup_suite() -> None:
    """The rebuilt table has all 85 cases of luks2-validation-test, each once."""
    names = [c.name for c in CASES]
    assert len(names) == 85
    assert len(set(names)) == 85
    refused = [c.name for c in ALL if c.refusal]
    assert refused == ["x-digest-hash-unknown", "x-digest-type-unknown", "x-duplicate-json-key"]
