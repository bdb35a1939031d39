"""install.slot_partition_uuids: the PARTUUIDs a filled slot needs so that its UKI's
``roothash=`` finds the root and verity partitions (DPS), and what it refuses."""

from __future__ import annotations

import hashlib

import pytest
from tests.pebuild import make_pe

from bastion.build.uki import UkiInputs, build_uki
from bastion.device.update.install import slot_partition_uuids
from bastion.errors import FormatError
from bastion.formats import gpt

STUB = make_pe(((".text", b"\xc3" * 300),), spare_headers=8)
ROOT_HASH = hashlib.sha256(b"slot b root").digest()


def _uki(cmdline: bytes) -> bytes:
    return build_uki(STUB, UkiInputs(linux=make_pe(), osrel=b"ID=bastion\n", cmdline=cmdline))


@pytest.mark.parametrize(
    ("cmdline", "words"),
    [
        (b"console=ttyS0 roothash=xyz\0", "roothash= on the kernel command line is 'xyz'"),
        (b"roothash=" + ROOT_HASH[:16].hex().encode() + b"\0", r"command line is '[0-9a-f]{32}'$"),
    ],
)
def test_a_malformed_roothash_is_refused(cmdline: bytes, words: str) -> None:
    with pytest.raises(FormatError, match=words):
        slot_partition_uuids(_uki(cmdline), "b")


@pytest.mark.parametrize(
    "payload",
    [b"MZ" + bytes(200), _uki(b"console=ttyS0\0")],
    ids=["not a PE", "no roothash="],
)
def test_a_payload_without_roothash_names_no_partition(payload: bytes) -> None:
    assert slot_partition_uuids(payload, "b") is None


def test_the_uuids_are_the_dps_ones_of_the_roothash() -> None:
    # the last roothash= wins, as Linux reads its command line
    cmdline = b"roothash=" + bytes(32).hex().encode() + b" roothash=" + ROOT_HASH.hex().encode()
    root_uuid, verity_uuid = gpt.verity_partition_uuids(ROOT_HASH)
    got = slot_partition_uuids(_uki(cmdline + b"\0"), "b")
    assert got == {"root-b": root_uuid, "root-b-verity": verity_uuid}
