"""Hypothesis: every kernel state parser gives a value or FormatError for any bytes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.errors import FormatError
from bastion.formats import kernelstate as ks

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "aslr": ks.parse_aslr,
    "selinux": ks.parse_selinux_enforce,
    "lsm": ks.parse_lsm,
    "lockdown": ks.parse_lockdown,
    "secure_boot": ks.parse_secure_boot,
    "bool": ks.parse_bool_parameter,
    "cmdline": ks.parse_cmdline,
    "dev": ks.parse_dev_number,
    "dm_uuid": lambda b: ks.parse_dm_attribute(b, "uuid"),
    "mountinfo": ks.parse_mountinfo,
    "dmsetup": lambda b: ks.verity_status(ks.parse_dmsetup_status(b)),
    "tcp": lambda b: ks.parse_net_table(b, "tcp"),
    "udp6": lambda b: ks.parse_net_table(b, "udp6"),
}
HEADER = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"
ALPHABET = st.sampled_from(list(b"0123456789ABCDEF:[] \n-,YNabcdefinortv\x00\xff"))


def _value_or_format_error(parse: Callable[[bytes], Any], data: bytes) -> None:
    try:
        parse(data)
    except FormatError:
        return


@pytest.mark.parametrize("name", sorted(PARSERS))
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    _value_or_format_error(PARSERS[name], data)


@pytest.mark.parametrize("name", sorted(PARSERS))
@given(data=st.lists(ALPHABET, max_size=200).map(bytes))
def test_near_valid_bytes(name: str, data: bytes) -> None:
    _value_or_format_error(PARSERS[name], data)
    _value_or_format_error(PARSERS[name], HEADER + data)


@given(
    st.sampled_from(["tcp", "udp"]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
    st.integers(0, 255),
)
def test_net_row_round_trip(protocol: str, addr: int, port: int, state: int) -> None:
    row = b"   0: %08X:%04X 00000000:0000 %02X 00000000:00000000 00:00000000 00000000 0 0 1\n"
    (sock,) = ks.parse_net_table(HEADER + row % (addr, port, state), protocol)
    assert int.from_bytes(sock.local_address.packed, "little") == addr
    assert (sock.local_port, sock.state) == (port, state)
