"""Fuse banks: write-once key hash, blow-only bits; file and TPM NV backends."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.conftest import TpmRig, need_tss

from bastion.errors import ConfigError, ConflictError, FormatError, RollbackError
from bastion.tpm.fuses import (
    DEFAULT_BASE_INDEX,
    FILE_MAGIC,
    FileFuseBank,
    FuseBank,
    FuseFile,
    TpmFuseBank,
    bits_for,
    counter_of,
)

H1 = hashlib.sha256(b"platform root key 1").digest()
H2 = hashlib.sha256(b"platform root key 2").digest()


@pytest.fixture(params=["file", "tpm-software", "tpm-tss"])
def bank_factory(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A callable that (re)opens the same bank, as a reboot would."""
    if request.param == "file":
        path = tmp_path / "fuses.bin"
        yield lambda: FileFuseBank(path)
        return
    kind = request.param.removeprefix("tpm-")
    if kind == "tss":
        need_tss()
    rig = TpmRig(kind, tmp_path)
    try:
        yield lambda: TpmFuseBank(rig.tpm, DEFAULT_BASE_INDEX)
    finally:
        rig.close()


def test_blank_bank(bank_factory) -> None:  # type: ignore[no-untyped-def]
    bank: FuseBank = bank_factory()
    assert bank.key_hash() is None
    assert bank.counter() == 0
    shown = bank.show()
    assert shown["key_hash"] is None and shown["counter"] == 0 and shown["bits"] == "0" * 16


def test_burn_once_and_reopen(bank_factory) -> None:  # type: ignore[no-untyped-def]
    bank_factory().burn_key_hash(H1)
    assert bank_factory().key_hash() == H1
    bank_factory().burn_key_hash(H1)  # the same hash again is a no-op
    assert bank_factory().key_hash() == H1
    assert bank_factory().show()["key_hash"] == H1.hex()


def test_counter_blows_up_only(bank_factory) -> None:  # type: ignore[no-untyped-def]
    bank_factory().blow_to(3)
    assert bank_factory().counter() == 3
    assert bank_factory().show()["bits"] == "0000000000000007"
    bank_factory().blow_to(3)
    bank_factory().blow_to(64)
    assert bank_factory().counter() == 64


# --- the negative table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda b: b.burn_key_hash(H2), ConflictError),  # second burn, another hash
        (lambda b: b.blow_to(4), RollbackError),  # counter lowered
        (lambda b: b.blow_to(0), RollbackError),
        (lambda b: b.blow_to(-1), ConfigError),
        (lambda b: b.blow_to(65), ConfigError),
        (lambda b: b.burn_key_hash(H1[:31]), ConfigError),  # truncated hash
        (lambda b: b.burn_key_hash(H1 + b"\0"), ConfigError),  # oversize hash
        (lambda b: b.burn_key_hash(bytes(32)), ConfigError),  # the blank value
    ],
    ids=[
        "other-hash",
        "lower-counter",
        "zero-counter",
        "negative",
        "over-64",
        "short-hash",
        "long-hash",
        "zero-hash",
    ],
)
def test_refused_and_nothing_changes(bank_factory, action, error) -> None:  # type: ignore[no-untyped-def]
    bank_factory().burn_key_hash(H1)
    bank_factory().blow_to(5)
    before = bank_factory().show()
    with pytest.raises(error):
        action(bank_factory())
    after = bank_factory().show()
    assert after == before
    assert after["key_hash"] == H1.hex() and after["counter"] == 5


def test_tpm_bits_never_clear_across_power_cycle(tpm_rig) -> None:  # type: ignore[no-untyped-def]
    TpmFuseBank(tpm_rig.tpm).burn_key_hash(H1)
    TpmFuseBank(tpm_rig.tpm).blow_to(9)
    tpm = tpm_rig.power_cycle()
    bank = TpmFuseBank(tpm)
    assert bank.key_hash() == H1 and bank.counter() == 9
    with pytest.raises(RollbackError):
        bank.blow_to(8)
    with pytest.raises(ConflictError):
        bank.burn_key_hash(H2)


def test_tpm_partial_burn_fails_closed_then_completes(tpm_backend) -> None:  # type: ignore[no-untyped-def]
    # a crash after the first word: one word complete, three still zero
    first = DEFAULT_BASE_INDEX + 1
    tpm_backend.nv_define_bits(first)
    tpm_backend.nv_set_bits(first, struct.unpack(">Q", H1[:8])[0])
    bank = TpmFuseBank(tpm_backend)
    with pytest.raises(ConflictError, match="partly burned"):
        bank.key_hash()
    with pytest.raises(ConflictError):
        bank.burn_key_hash(H2)  # a different hash never completes someone else's burn
    bank.burn_key_hash(H1)
    assert bank.key_hash() == H1


def test_tpm_word_gaining_bits_is_a_conflict(tpm_backend) -> None:  # type: ignore[no-untyped-def]
    bank = TpmFuseBank(tpm_backend)
    bank.burn_key_hash(H1)
    tpm_backend.nv_set_bits(DEFAULT_BASE_INDEX + 2, (1 << 64) - 1)  # an attacker ORs bits
    assert bank.key_hash() != H1
    with pytest.raises(ConflictError):
        bank.burn_key_hash(H1)


# --- the file format ----------------------------------------------------------------------


def test_file_layout(tmp_path: Path) -> None:
    bank = FileFuseBank(tmp_path / "f")
    bank.burn_key_hash(H1)
    bank.blow_to(2)
    data = (tmp_path / "f").read_bytes()
    assert data == FILE_MAGIC + H1 + (3).to_bytes(8, "big")
    assert FuseFile.parse(data) == FuseFile(H1, 3)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d + b"\0",
        lambda d: b"",
        lambda d: b"BFUSES02" + d[8:],
        lambda d: d * 2,
    ],
    ids=["truncated", "extended", "empty", "magic", "doubled"],
)
def test_malformed_file_refused(tmp_path: Path, mutate) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "f"
    FileFuseBank(path).blow_to(1)
    path.write_bytes(mutate(path.read_bytes()))
    bank = FileFuseBank(path)
    with pytest.raises(FormatError):
        bank.counter()
    with pytest.raises(FormatError):
        bank.blow_to(2)


def test_file_write_refuses_to_clear(tmp_path: Path) -> None:
    bank = FileFuseBank(tmp_path / "f")
    bank.blow_to(3)
    with pytest.raises(ConflictError):
        bank._write(FuseFile(bits=0b111), FuseFile(bits=0b011))
    assert bank.counter() == 3


@given(st.binary(max_size=64))
def test_fuse_file_parse_total(data: bytes) -> None:
    try:
        parsed = FuseFile.parse(data)
    except FormatError:
        return
    assert parsed.to_bytes() == data


@given(st.binary(min_size=32, max_size=32), st.integers(0, (1 << 64) - 1))
def test_fuse_file_round_trip(key_hash: bytes, bits: int) -> None:
    assert FuseFile.parse(FuseFile(key_hash, bits).to_bytes()) == FuseFile(key_hash, bits)


@given(st.integers(0, (1 << 64) - 1), st.integers(0, 64))
def test_bits_for_only_ors(current: int, n: int) -> None:
    try:
        bits = bits_for(current, n)
    except RollbackError:
        assert n < counter_of(current)
        return
    assert bits & current == current
    assert counter_of(bits) == n
