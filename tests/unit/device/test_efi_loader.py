"""systemd-boot's entry order and rename (device/boot/loader.py), and the sim firmware's
Secure Boot decisions (device/boot/firmware.py) over bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.device.boot import loader as sdboot
from bastion.device.boot.firmware import SecureBootVariables, check_image, efivar_name
from bastion.errors import FormatError


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1", "1", 0),
        ("2", "10", -1),
        ("1.0", "1.0.1", -1),
        ("1.0~rc1", "1.0", -1),  # ~ is older than the end of the string
        ("1.0", "1.0-1", -1),  # the end is older than -
        ("1.0-1", "1.0.1", -1),  # - is older than .
        ("1.0^1", "1.0.1", -1),
        ("a", "1", -1),  # numbers are newer than letters
        ("abc", "abd", -1),
        ("010", "10", 0),  # leading zeros do not count
        ("v2", "v10", -1),
        ("1_2", "1.2", 1),  # _ is skipped; a segment beats a "." at the same place
    ],
)
def test_version_compare_matches_strverscmp_improved(a: str, b: str, expected: int) -> None:
    assert sdboot.version_compare(a, b) == expected
    assert sdboot.version_compare(b, a) == -expected


@given(st.text(alphabet="0123456789.-~^ab", max_size=12), st.text("0123456789.-~^ab", max_size=12))
def test_version_compare_is_antisymmetric(a: str, b: str) -> None:
    assert sdboot.version_compare(a, b) == -sdboot.version_compare(b, a)
    assert sdboot.version_compare(a, a) == 0


def _cand(
    name: str, version: str | None = "1", sort_key: str | None = "bastion"
) -> sdboot.Candidate:
    osrel = {"ID": sort_key} if sort_key else {"NAME": "x"}
    if version:
        osrel["VERSION_ID"] = version
    found = sdboot.candidate(name, osrel)
    assert found is not None
    return found


def _order(*cands: sdboot.Candidate) -> list[str]:
    return [c.filename for c in sdboot.order(list(cands))]


def test_bad_entries_go_last() -> None:
    assert _order(_cand("b+0-3.efi", "2"), _cand("a.efi", "1")) == ["a.efi", "b+0-3.efi"]


def test_newer_version_first_then_newer_name() -> None:
    assert _order(_cand("a.efi", "1"), _cand("b+3-0.efi", "2")) == ["b+3-0.efi", "a.efi"]
    assert _order(_cand("a.efi", "1"), _cand("b.efi", "1")) == ["b.efi", "a.efi"]
    assert _order(_cand("x-9.efi", "1"), _cand("x-10.efi", "1")) == ["x-10.efi", "x-9.efi"]


def test_entries_with_a_sort_key_come_first() -> None:
    assert _order(_cand("z.efi", "9", None), _cand("a.efi", "1")) == ["a.efi", "z.efi"]


def test_same_entry_more_tries_left_first() -> None:
    assert _order(_cand("a+1-2.efi"), _cand("a+2-1.efi")) == ["a+2-1.efi", "a+1-2.efi"]


@pytest.mark.parametrize(
    ("name", "renamed"),
    [("a+3-0.efi", "a+2-1.efi"), ("a+1.efi", "a+0-1.efi"), ("a.efi", None), ("a+0-3.efi", None)],
)
def test_the_rename_before_loading(name: str, renamed: str | None) -> None:
    assert sdboot.booted_name(_cand(name)) == renamed


@pytest.mark.parametrize(
    ("name", "osrel"),
    [
        ("a.conf", {"ID": "x"}),  # type #1 entries are not UKIs
        ("a.efi", {}),  # no name or id in .osrel
        ("a+1-2-3.efi", {}),
        (".efi", {"ID": "x"}),
    ],
)
def test_what_systemd_boot_skips(name: str, osrel: dict[str, str]) -> None:
    assert sdboot.candidate(name, osrel) is None


def test_parse_osrel() -> None:
    doc = sdboot.parse_osrel(b"# c\nID=bastion\nVERSION_ID=\"1.0\"\nNAME='b'\n junk\n")
    assert doc == {"ID": "bastion", "VERSION_ID": "1.0", "NAME": "b"}
    with pytest.raises(FormatError):
        sdboot.parse_osrel(b"ID=\xff\n")


@given(st.binary(max_size=200))
def test_parse_osrel_gives_a_dict_or_format_error(data: bytes) -> None:
    try:
        doc = sdboot.parse_osrel(data)
    except FormatError:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items())


def test_variables_from_efivars_refuse_truncated_and_malformed() -> None:
    with pytest.raises(FormatError, match="no attributes"):
        SecureBootVariables.from_efivars(lambda n: b"\x07" if n.startswith("PK-") else None)
    with pytest.raises(FormatError):
        SecureBootVariables.from_efivars(
            lambda n: b"\x27\0\0\0garbage-that-is-no-list" if n.startswith("db-") else None
        )
    empty = SecureBootVariables.from_efivars(lambda n: None)
    assert not empty.secure_boot and empty.db_certificates() == []
    assert efivar_name("db") == "db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"


def test_check_image_refuses_what_is_no_pe() -> None:
    with pytest.raises(FormatError, match=r"^\\EFI\\x: not a loadable PE image"):
        check_image("\\EFI\\x", b"MZ" + bytes(100), SecureBootVariables())


@pytest.mark.parametrize(
    ("name", "slot", "expected"),
    [
        ("bastion-1-a.efi", "a", True),
        ("bastion-12-b+2-1.efi", "b", True),
        ("bastion-1-a+0-3.efi", "a", True),
        ("bastion-1-a.efi", "b", False),
        ("bastion-a.efi", "a", False),
        ("bastion-x-a.efi", "a", False),
        ("other-1-a.efi", "a", False),
        ("bastion-1-a.conf", "a", False),
    ],
)
def test_slot_entry_names(name: str, slot: str, expected: bool) -> None:
    from bastion.formats.image import entry_name, is_slot_entry

    assert is_slot_entry(name, slot) is expected
    assert is_slot_entry(entry_name(slot, 7) + ".efi", slot)
