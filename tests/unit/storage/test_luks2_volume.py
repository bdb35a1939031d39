"""LUKS2 volume: format, unlock, keyslots, tokens, data path, crash safety, repair."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.errors import AuthError, ConfigError, ConflictError, FormatError, NotFoundError
from bastion.formats.luks2 import BINARY_HEADER_SIZE, KdfType, Token
from bastion.storage.luks2_volume import FileRange, KdfSpec, Luks2Volume, read_header

MiB = 1 << 20
CHEAP = KdfSpec(KdfType.PBKDF2, iterations=1000)
TINY_ARGON = KdfSpec(KdfType.ARGON2ID, iterations=4, memory_kib=64, cpus=2)


def make(path: Path, *, size: int = 3 * MiB, sector: int = 4096, **kw: object) -> Luks2Volume:
    """A small volume: 2 MiB of metadata and keyslots (room for 8 keyslots), 1 MiB of data."""
    with open(path, "wb") as f:
        f.truncate(size)
    storage = FileRange(path)
    return Luks2Volume.format(
        storage,
        b"first",
        kdf=CHEAP,
        sector_size=sector,
        data_offset=2 * MiB,
        **kw,  # type: ignore[arg-type]
    )


def reopen(path: Path, **kw: object) -> Luks2Volume:
    return Luks2Volume.open(FileRange(path, **kw))  # type: ignore[arg-type]


def test_format_open_unlock(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img, label="data", subsystem="bastion")
    vk = vol.volume_key
    again = reopen(img)
    assert not again.is_unlocked
    assert again.label == "data"
    assert again.subsystem == "bastion"
    assert again.unlock_passphrase(b"first") == 0
    assert again.volume_key == vk
    assert again.data_size == MiB
    assert again.stale_copy is None


@pytest.mark.parametrize("sector", [512, 4096])
def test_read_write_any_offset(tmp_path: Path, sector: int) -> None:
    img = tmp_path / "v.img"
    vol = make(img, sector=sector)
    model = bytearray(vol.read(0, vol.data_size))
    rng = random.Random(sector)
    for _ in range(40):
        off = rng.randrange(0, len(model) - 1)
        n = rng.randrange(0, min(3 * sector + 7, len(model) - off))
        data = rng.randbytes(n)
        vol.write(off, data)
        model[off : off + n] = data
    vol.write(len(model) - 5, b"12345")
    model[-5:] = b"12345"
    assert vol.read(0, len(model)) == bytes(model)
    fresh = reopen(img)
    fresh.unlock_passphrase(b"first")
    for _ in range(20):
        off = rng.randrange(0, len(model))
        n = rng.randrange(0, len(model) - off)
        assert fresh.read(off, n) == bytes(model[off : off + n])
    with pytest.raises(ConfigError):
        fresh.read(len(model) - 1, 2)
    with pytest.raises(ConfigError):
        fresh.write(-1, b"x")
    raw = img.read_bytes()
    assert raw[2 * MiB : 2 * MiB + 4096] != bytes(model[:4096])


def test_locked_volume_refuses_data(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    make(img)
    vol = reopen(img)
    with pytest.raises(AuthError):
        vol.read(0, 10)
    with pytest.raises(AuthError):
        _ = vol.volume_key
    vol.unlock_passphrase(b"first")
    vol.lock()
    with pytest.raises(AuthError):
        vol.write(0, b"x")


def test_byte_range_inside_a_disk_image(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(5 * MiB)
        f.seek(0)
        f.write(b"\xaa" * MiB)
    storage = FileRange(img, offset=MiB, size=3 * MiB)
    vol = Luks2Volume.format(storage, b"pw", kdf=CHEAP, data_offset=MiB)
    vol.write(100, b"inside")
    raw = img.read_bytes()
    assert raw[:MiB] == b"\xaa" * MiB
    assert raw[MiB : MiB + 6] == b"LUKS\xba\xbe"
    assert raw[4 * MiB :] == bytes(MiB)
    again = Luks2Volume.open(FileRange(img, offset=MiB, size=3 * MiB))
    again.unlock_passphrase(b"pw")
    assert again.read(100, 6) == b"inside"
    assert again.data_size == 2 * MiB
    with pytest.raises(ConfigError):
        FileRange(img, offset=4 * MiB, size=2 * MiB)
    with pytest.raises(ConfigError):
        FileRange(img, offset=100)
    with pytest.raises(NotFoundError):
        FileRange(tmp_path / "missing.img")


def test_keyslots_add_change_remove(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img)
    vk = vol.volume_key
    assert vol.add_keyslot(b"second", kdf=TINY_ARGON) == 1
    assert vol.add_keyslot(b"fifth", kdf=CHEAP, keyslot=5, priority=2) == 5
    with pytest.raises(ConflictError):
        vol.add_keyslot(b"again", kdf=CHEAP, keyslot=5)
    v2 = reopen(img)
    assert v2.unlock_passphrase(b"second") == 1
    assert v2.unlock_passphrase(b"fifth") == 5
    assert v2.volume_key == vk
    v2.change_keyslot(1, b"changed", kdf=CHEAP)
    v3 = reopen(img)
    with pytest.raises(AuthError):
        v3.unlock_passphrase(b"second")
    assert v3.unlock_passphrase(b"changed") == 1
    v3.remove_keyslot(0)
    v4 = reopen(img)
    with pytest.raises(AuthError):
        v4.unlock_passphrase(b"first")
    assert v4.unlock_passphrase(b"fifth", keyslot=5) == 5
    with pytest.raises(NotFoundError):
        v4.unlock_passphrase(b"fifth", keyslot=9)
    v4.remove_keyslot(1)
    with pytest.raises(ConflictError, match="last"):
        v4.remove_keyslot(5)
    assert set(reopen(img).metadata.keyslots) == {5}


def test_locked_volume_cannot_add_keyslots(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    make(img)
    with pytest.raises(AuthError):
        reopen(img).add_keyslot(b"x", kdf=CHEAP)


def test_tokens_round_trip_and_follow_keyslots(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img)
    vol.add_keyslot(b"two", kdf=CHEAP)
    tok = {"type": "x-vendor", "keyslots": ["1"], "nested": {"a": [1, 2, "3"]}, "n": 7}
    assert vol.add_token(tok) == 0
    assert vol.add_token(Token("other", (0,), {}), token_id=4) == 4
    v2 = reopen(img)
    assert v2.tokens[0].to_json() == tok
    v2.unlock_passphrase(b"first")
    v2.remove_keyslot(1)
    assert reopen(img).tokens[0].keyslots == ()
    v2.remove_token(0)
    assert set(reopen(img).tokens) == {4}
    with pytest.raises(NotFoundError):
        v2.remove_token(0)
    with pytest.raises(FormatError):
        v2.add_token({"type": "x", "keyslots": ["9"]})
    with pytest.raises(ConflictError):
        v2.add_token({"type": "x", "keyslots": []}, token_id=4)


def test_token_too_big_for_json_area(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img)
    with pytest.raises(FormatError, match="JSON area"):
        vol.add_token({"type": "big", "keyslots": [], "blob": "A" * 20000})
    assert reopen(img).tokens == {}


# --- negative table: corrupt headers -----------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


HDR = 16384
CORRUPTIONS: list[tuple[str, list[int], str | None]] = [
    ("primary binary", [300], "secondary"),
    ("primary json", [BINARY_HEADER_SIZE + 10], "secondary"),
    ("primary magic", [0], "secondary"),
    ("secondary binary", [HDR + 300], "primary"),
    ("secondary json", [HDR + BINARY_HEADER_SIZE + 10], "primary"),
    ("both", [300, HDR + 300], None),
    ("both json", [BINARY_HEADER_SIZE + 5, HDR + BINARY_HEADER_SIZE + 5], None),
]


@pytest.mark.parametrize(
    ("offsets", "survivor"), [pytest.param(o, s, id=n) for n, o, s in CORRUPTIONS]
)
def test_corrupt_headers(tmp_path: Path, offsets: list[int], survivor: str | None) -> None:
    img = tmp_path / "v.img"
    make(img)
    for off in offsets:
        _flip(img, off)
    if survivor is None:
        with pytest.raises(FormatError, match="both header copies"):
            reopen(img)
        return
    vol = reopen(img)
    assert vol.stale_copy is not None
    assert vol.stale_copy.value != survivor
    vol.unlock_passphrase(b"first")
    before = img.read_bytes()
    Luks2Volume.open(FileRange(img), repair=False)
    assert img.read_bytes() == before, "reading must never write"
    repaired = Luks2Volume.open(FileRange(img), repair=True)
    assert repaired.stale_copy is None
    assert reopen(img).stale_copy is None
    reopen(img).unlock_passphrase(b"first")


def test_newer_secondary_wins(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img)
    old_primary = img.read_bytes()[:HDR]
    vol.add_keyslot(b"new", kdf=CHEAP)
    data = bytearray(img.read_bytes())
    data[:HDR] = old_primary
    img.write_bytes(bytes(data))
    choice = read_header(FileRange(img))
    assert choice.stale is not None and choice.stale.value == "primary"
    reopen(img).unlock_passphrase(b"new")


def test_wrong_passphrase_and_unknown_requirements(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    make(img)
    with pytest.raises(AuthError, match="no LUKS2 keyslot"):
        reopen(img).unlock_passphrase(b"wrong")
    with pytest.raises(AuthError):
        reopen(img).unlock_passphrase(b"first\n")
    vol = reopen(img)
    with pytest.raises(AuthError):
        vol.unlock_volume_key(os.urandom(64))


def test_format_arguments(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    with open(img, "wb") as f:
        f.truncate(2 * MiB)
    st = FileRange(img)
    with pytest.raises(ConfigError, match="metadata-size"):
        Luks2Volume.format(st, b"p", kdf=CHEAP, metadata_size=20000, data_offset=MiB)
    with pytest.raises(ConfigError, match="sector-size"):
        Luks2Volume.format(st, b"p", kdf=CHEAP, sector_size=300, data_offset=MiB)
    with pytest.raises(ConfigError, match="too small"):
        Luks2Volume.format(st, b"p", kdf=CHEAP)
    vk = bytes(range(64))
    vol = Luks2Volume.format(
        st, b"p", kdf=CHEAP, data_offset=MiB, volume_key=vk, metadata_size=64 * 1024
    )
    assert vol.header_size == 65536
    assert reopen(img).header_size == 65536
    reopen(img).unlock_volume_key(vk)


# --- crash safety ------------------------------------------------------------------------------


class StopError(Exception):
    pass


class StopAfter:
    """A storage that lets ``budget`` writes through, then raises (a power cut)."""

    def __init__(self, inner: FileRange, budget: int) -> None:
        self.inner = inner
        self.budget = budget
        self.writes = 0

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        return self.inner.read(offset, length)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.writes >= self.budget:
            raise StopError
        self.writes += 1
        self.inner.write(offset, data)

    def sync(self) -> None:
        self.inner.sync()


Op = Callable[[Luks2Volume], object]


def _shape(vol: Luks2Volume) -> tuple[object, ...]:
    m = vol.metadata
    return (sorted(m.keyslots), sorted(m.tokens), [d.keyslots for d in m.digests.values()])


OPERATIONS: list[tuple[str, Op]] = [
    ("add keyslot", lambda v: v.add_keyslot(b"new", kdf=CHEAP)),
    ("remove keyslot", lambda v: v.remove_keyslot(1)),
    ("change keyslot", lambda v: v.change_keyslot(1, b"new", kdf=CHEAP)),
    ("add token", lambda v: v.add_token({"type": "t", "keyslots": ["0"]})),
    ("repair", lambda v: v.repair()),
]


@pytest.mark.parametrize("op", [o for _, o in OPERATIONS], ids=[n for n, _ in OPERATIONS])
def test_stop_after_every_write(tmp_path: Path, op: Op) -> None:
    base = tmp_path / "base.img"
    vol = make(base)
    vol.add_keyslot(b"second", kdf=CHEAP)
    old_meta = reopen(base).metadata
    old_shape = _shape(reopen(base))
    # run once without stopping to learn the new state and the number of writes
    full = tmp_path / "full.img"
    shutil.copy(base, full)
    counter = StopAfter(FileRange(full), 10**6)
    v = Luks2Volume.open(counter)
    v.unlock_passphrase(b"first")
    op(v)
    total = counter.writes
    new_shape = _shape(reopen(full))
    needs_new = op in (OPERATIONS[0][1], OPERATIONS[2][1])
    assert total >= 3
    for budget in range(total):
        img = tmp_path / f"cut{budget}.img"
        shutil.copy(base, img)
        v = Luks2Volume.open(StopAfter(FileRange(img), budget))
        v.unlock_passphrase(b"first")
        with pytest.raises(StopError):
            op(v)
        after = reopen(img)
        shape = _shape(after)
        assert shape in (old_shape, new_shape), budget
        after.unlock_passphrase(b"first")
        if after.metadata == old_meta:
            if 1 in old_meta.keyslots:
                after.unlock_passphrase(b"second", keyslot=1)
        else:
            assert shape == new_shape
            if needs_new:
                after.unlock_passphrase(b"new")
        Luks2Volume.open(FileRange(img), repair=True)
        assert reopen(img).stale_copy is None
        img.unlink()


@pytest.mark.parametrize("workers", ["2", "3"])
def test_parallel_transfers_match_serial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    import bastion.storage.luks2_volume as mod

    img = tmp_path / "v.img"
    vol = make(img, size=3 * MiB + 64 * 4096)
    data = os.urandom(vol.data_size - 4096 - 100)
    monkeypatch.setattr(mod, "PARALLEL_MIN", 8192)
    monkeypatch.setenv("BASTION_LUKS_WORKERS", workers)
    vol.write(100, data)
    assert vol.read(100, len(data)) == data
    monkeypatch.setenv("BASTION_LUKS_WORKERS", "1")
    serial = reopen(img)
    serial.unlock_passphrase(b"first")
    assert serial.read(100, len(data)) == data
    raw_parallel = img.read_bytes()
    serial.write(100, data)
    assert img.read_bytes() == raw_parallel


def test_parallel_worker_failure_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bastion.storage.luks2_volume as mod

    img = tmp_path / "v.img"
    vol = make(img, size=3 * MiB + 64 * 4096)
    monkeypatch.setattr(mod, "PARALLEL_MIN", 8192)
    monkeypatch.setenv("BASTION_LUKS_WORKERS", "2")
    parent = os.getpid()
    real = vol._write_sectors

    def failing_in_child(first: int, plain: bytes | bytearray | memoryview) -> None:
        if os.getpid() != parent:
            raise OSError("disk gone")
        real(first, plain)

    monkeypatch.setattr(vol, "_write_sectors", failing_in_child)
    with pytest.raises(mod.BackendError, match="worker"):
        vol.write(0, bytes(vol.data_size))


def test_readinto(tmp_path: Path) -> None:
    img = tmp_path / "v.img"
    vol = make(img)
    data = os.urandom(vol.data_size)
    vol.write(0, data)
    buf = bytearray(8192)
    vol.readinto(4096, buf)
    assert buf == data[4096 : 4096 + 8192]
    vol.readinto(10, memoryview(buf)[:100])
    assert buf[:100] == data[10:110]
    with pytest.raises(ConfigError):
        vol.readinto(vol.data_size - 4096, buf)


def test_default_kdf_is_benchmarked_like_cryptsetup() -> None:
    from bastion.formats.luks2 import Argon2Params, Pbkdf2Params
    from bastion.storage.luks2_volume import default_argon2_memory_kib

    assert 32 <= default_argon2_memory_kib() <= 1024 * 1024
    fast = KdfSpec(KdfType.ARGON2ID, memory_kib=1024, cpus=2, iter_time_ms=50).resolve()
    assert isinstance(fast, Argon2Params)
    assert fast.time >= 4 and fast.memory == 1024 and fast.cpus == 2
    from bastion.storage.luks2_kdf import bench_argon2

    t, memory = bench_argon2(KdfType.ARGON2I, 8192, 1, 0)
    assert t == 4 and 32 <= memory < 8192
    pb = KdfSpec(KdfType.PBKDF2, iter_time_ms=20).resolve()
    assert isinstance(pb, Pbkdf2Params) and pb.iterations >= 1000
