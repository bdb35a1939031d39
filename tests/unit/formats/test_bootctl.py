"""Boot-control records: layout, copy selection, fallbacks, negative cases."""

from __future__ import annotations

import pytest

from bastion.errors import FormatError
from bastion.formats import bootctl


def test_round_trip_and_size() -> None:
    ctl = bootctl.BootControl.initial()
    raw = ctl.to_bytes()
    assert len(raw) == bootctl.RECORD_SIZE
    assert bootctl.parse(raw) == ctl


def test_initial_chooses_a_then_b_when_a_exhausted() -> None:
    ctl = bootctl.BootControl.initial()
    assert ctl.choose() == "a"
    ctl = ctl.with_slot("a", bootctl.SlotState(15, 0, False, False))
    assert ctl.choose() is None
    ctl = ctl.with_slot("b", bootctl.SlotState(14, 3, False, False))
    assert ctl.choose() == "b"


def test_successful_slot_boots_without_tries() -> None:
    assert bootctl.SlotState(15, 0, True, False).bootable
    assert not bootctl.SlotState(15, 3, True, True).bootable


@pytest.mark.parametrize("offset", [0, 9, 12, 20, 24, 27, 100, 508])
def test_one_flipped_bit_is_detected(offset: int) -> None:
    raw = bytearray(bootctl.BootControl.initial().to_bytes())
    raw[offset] ^= 0x10
    with pytest.raises(FormatError):
        bootctl.parse(bytes(raw))


def test_partition_falls_back_to_other_copy_then_default() -> None:
    part = bytearray(bootctl.initial_partition())
    state = bootctl.parse_partition(bytes(part))
    assert state.copy == 0 and not state.errors
    part[24] ^= 1
    state = bootctl.parse_partition(bytes(part))
    assert state.copy == 1 and len(state.errors) == 1
    part[bootctl.COPY_OFFSET + 24] ^= 1
    state = bootctl.parse_partition(bytes(part))
    assert state.copy is None and state.control == bootctl.BootControl.initial()


def test_next_write_targets_losing_copy_with_higher_sequence() -> None:
    part = bytearray(bootctl.initial_partition())
    state = bootctl.parse_partition(bytes(part))
    new = state.control.with_slot("a", bootctl.SlotState(15, 2, False, False))
    offset, record = bootctl.next_write(state, new)
    assert offset == bootctl.COPY_OFFSET
    part[offset : offset + len(record)] = record
    state2 = bootctl.parse_partition(bytes(part))
    assert state2.copy == 1 and state2.control.slot("a").tries_left == 2
    assert state2.control.sequence == 1


def test_out_of_range_values_refused() -> None:
    with pytest.raises(FormatError):
        bootctl.BootControl(0, 2, (bootctl.SlotState(), bootctl.SlotState())).to_bytes()
    with pytest.raises(FormatError):
        bootctl.slot_index("c")
