"""Allow-lists naming serials and EKs: an entry must match both (hardening)."""

from __future__ import annotations

import datetime as dt

import pytest

from bastion.errors import PolicyError
from bastion.server.provisioning.policy import KeyState, allow_listed, check_admission, ek_listed

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EK_A, EK_B = "a" * 64, "b" * 64


def _key(**lists: object) -> KeyState:
    return KeyState("k", "f", NOW + dt.timedelta(hours=1), 10, 0, False, **lists)  # type: ignore[arg-type]


CASES = [
    # (lists, serial, ek, admitted)
    ({}, "s1", EK_A, True),
    ({"allow_serials": frozenset({"s1"})}, "s1", EK_B, True),
    ({"allow_ek_hashes": frozenset({EK_A})}, "zz", EK_A, True),
    # serials and EK hashes both listed: a claimed serial alone is not enough
    ({"allow_serials": frozenset({"s1"}), "allow_ek_hashes": frozenset({EK_A})}, "s1", EK_B, False),
    ({"allow_serials": frozenset({"s1"}), "allow_ek_hashes": frozenset({EK_A})}, "s2", EK_A, False),
    ({"allow_serials": frozenset({"s1"}), "allow_ek_hashes": frozenset({EK_A})}, "s1", EK_A, True),
    # pairs: both of one entry
    ({"allow_devices": frozenset({("s1", EK_A), ("s2", EK_B)})}, "s1", EK_B, False),
    ({"allow_devices": frozenset({("s1", EK_A), ("s2", EK_B)})}, "s2", EK_B, True),
    ({"allow_devices": frozenset({("s1", EK_A)})}, "s1", EK_A.upper(), True),
]


@pytest.mark.parametrize(("lists", "serial", "ek", "admitted"), CASES)
def test_allow_list(lists: dict[str, object], serial: str, ek: str, admitted: bool) -> None:
    key = _key(**lists)
    assert allow_listed(key, serial, ek) is admitted
    if admitted:
        check_admission(key, now=NOW, serial=serial, ek_sha256=ek)
    else:
        with pytest.raises(PolicyError, match="allow-list"):
            check_admission(key, now=NOW, serial=serial, ek_sha256=ek)


def test_ek_listed_needs_the_ek_not_the_serial() -> None:
    assert not ek_listed(_key(allow_serials=frozenset({"s1"})), "s1", EK_A)
    assert ek_listed(_key(allow_devices=frozenset({("s1", EK_A)})), "s1", EK_A)
    assert not ek_listed(_key(allow_devices=frozenset({("s1", EK_A)})), "s2", EK_A)
