"""Kernel state parsers: samples in each source's documented format, and negative tables.

Samples are written from the kernel documentation named in formats/kernelstate.py
(proc_net_tcp.rst, proc.rst "mountinfo", sysctl/kernel.rst, kernel_lockdown(7),
efivarfs.rst, device-mapper/verity.rst); none is copied from a real machine.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from tests.posturekit import MOUNTINFO, TCP, TCP6, UDP

from bastion.errors import FormatError
from bastion.formats import kernelstate as ks

DMSETUP = b"0 2097152 verity V -\n"


def test_aslr_samples() -> None:
    assert [ks.parse_aslr(b"%d\n" % v) for v in (0, 1, 2)] == list(ks.Aslr)
    assert ks.parse_aslr(b"2") is ks.Aslr.FULL


def test_selinux_lsm_lockdown_samples() -> None:
    assert ks.parse_selinux_enforce(b"1") is ks.SelinuxMode.ENFORCING
    assert ks.parse_selinux_enforce(b"0") is ks.SelinuxMode.PERMISSIVE
    assert ks.parse_lsm(b"lockdown,capability,landlock,yama,selinux,bpf") == (
        "lockdown", "capability", "landlock", "yama", "selinux", "bpf")  # fmt: skip
    assert ks.parse_lockdown(b"none [integrity] confidentiality\n") is ks.Lockdown.INTEGRITY
    assert ks.parse_lockdown(b"[none] integrity confidentiality\n") is ks.Lockdown.NONE
    assert ks.parse_lockdown(b"none integrity [confidentiality]\n") is ks.Lockdown.CONFIDENTIALITY


def test_secure_boot_module_sig_cmdline_samples() -> None:
    assert ks.parse_secure_boot(b"\x06\x00\x00\x00\x01") is True  # BS|RT, value 1
    assert ks.parse_secure_boot(b"\x06\x00\x00\x00\x00") is False
    assert ks.parse_bool_parameter(b"Y\n") is True and ks.parse_bool_parameter(b"N\n") is False
    assert ks.parse_cmdline(b"BOOT_IMAGE=/vmlinuz root=/dev/dm-0 ro quiet\n") == (
        "BOOT_IMAGE=/vmlinuz root=/dev/dm-0 ro quiet")  # fmt: skip


def test_net_tables() -> None:
    tcp = ks.parse_net_table(TCP, "tcp")
    assert tcp[0].local_address == ipaddress.IPv4Address("0.0.0.0") and tcp[0].local_port == 22
    assert tcp[1].local_address == ipaddress.IPv4Address("127.0.0.1") and tcp[1].local_port == 631
    assert tcp[2].local_address == ipaddress.IPv4Address("10.0.2.15")
    assert (tcp[2].remote_port, tcp[2].listening) == (0xD2F4, False)  # established
    assert ks.parse_net_table(TCP, "tcp", "big")[1].local_address == ipaddress.IPv4Address(
        "1.0.0.127")  # fmt: skip
    tcp6 = ks.parse_net_table(TCP6, "tcp6")
    assert tcp6[0].local_address == ipaddress.IPv6Address("::1") and tcp6[0].local_port == 8080
    udp = ks.parse_net_table(UDP, "udp")
    assert udp[0].local_address == ipaddress.IPv4Address("127.0.0.53") and udp[0].listening
    assert not udp[1].listening  # a connected UDP socket
    assert ks.listening_ports(tcp + tcp6 + udp) == (22, 53, 631, 8080)
    assert ks.parse_net_table(TCP.splitlines(keepends=True)[0], "tcp") == ()


def test_mountinfo_and_dm() -> None:
    mounts = ks.parse_mountinfo(MOUNTINFO)
    root = ks.root_mount(mounts)
    assert root is not None and (root.major, root.minor, root.fstype) == (253, 0, "ext4")
    assert mounts[2].mount_point == "/boot/my efi"
    assert ks.root_mount(mounts[:1]) is None
    assert ks.parse_dev_number(b"253:0\n") == (253, 0)
    assert ks.parse_dm_attribute(b"CRYPT-VERITY-9f3c0d1e2b7a4c55a1d2e3f405162738-root\n", "uuid")
    assert ks.verity_status(ks.parse_dmsetup_status(DMSETUP)) is ks.VerityStatus.VERIFIED
    assert ks.verity_status(ks.parse_dmsetup_status(b"root: 0 2097152 verity C 3\n")) is (
        ks.VerityStatus.CORRUPTED)  # fmt: skip
    assert ks.verity_status(ks.parse_dmsetup_status(b"0 409600 linear\n")) is None


BAD: list[tuple[Any, bytes]] = [
    (ks.parse_aslr, b""),
    (ks.parse_aslr, b"3\n"),
    (ks.parse_aslr, b"2\n2\n"),
    (ks.parse_aslr, b"-1"),
    (ks.parse_aslr, b"\xff"),
    (ks.parse_selinux_enforce, b"2"),
    (ks.parse_selinux_enforce, b"enforcing"),
    (ks.parse_lsm, b"selinux,,yama"),
    (ks.parse_lsm, b"Selinux"),
    (ks.parse_lsm, b"yama,yama"),
    (ks.parse_lockdown, b"none integrity confidentiality\n"),
    (ks.parse_lockdown, b"[none] [integrity] confidentiality\n"),
    (ks.parse_lockdown, b"none [integrity] paranoid\n"),
    (ks.parse_lockdown, b"none [integrity confidentiality\n"),
    (ks.parse_lockdown, b"[integrity] [integrity]\n"),
    (ks.parse_lockdown, b""),
    (ks.parse_secure_boot, b"\x06\x00\x00\x00"),  # truncated
    (ks.parse_secure_boot, b"\x06\x00\x00\x00\x01\x00"),  # trailing byte
    (ks.parse_secure_boot, b"\x06\x00\x00\x00\x02"),
    (ks.parse_secure_boot, b"\x00\x00\x00\x00\x01"),  # no boot-service access
    (ks.parse_bool_parameter, b"1\n"),
    (ks.parse_bool_parameter, b"y\n"),
    (ks.parse_cmdline, b"root=/dev/sda\x00init=/bin/sh"),
    (ks.parse_cmdline, b"a\x1bb"),
    (ks.parse_cmdline, b"\xc3("),
    (ks.parse_cmdline, b"x" * 5000),
    (ks.parse_dev_number, b"253\n"),
    (ks.parse_dev_number, b"a:b\n"),
    (ks.parse_mountinfo, b"28 1 253:0 / / ro shared:1 ext4 /dev/root ro\n"),  # no "-"
    (ks.parse_mountinfo, b"28 1 253-0 / / ro - ext4 /dev/root ro\n"),
    (ks.parse_mountinfo, b"x 1 253:0 / / ro - ext4 /dev/root ro\n"),
    (ks.parse_dmsetup_status, b"0 2097152\n"),
    (ks.parse_dmsetup_status, b"zero 2097152 verity V\n"),
    (ks.parse_dmsetup_status, b"0 1 Verity!! V\n"),
    (lambda b: ks.verity_status(ks.parse_dmsetup_status(b)), b"0 2097152 verity X -\n"),
    (lambda b: ks.verity_status(ks.parse_dmsetup_status(b)), b"0 2097152 verity\n"),
    (lambda b: ks.parse_dm_attribute(b, "name"), b"two words\n"),
    (lambda b: ks.parse_net_table(b, "tcp"), b""),
    (lambda b: ks.parse_net_table(b, "tcp"), TCP.replace(b"sl  local", b"xx  local")),
    (lambda b: ks.parse_net_table(b, "tcp"), TCP.replace(b"0100007F:0277", b"0100007F0277")),
    (lambda b: ks.parse_net_table(b, "tcp"), TCP.replace(b"0100007F:0277", b"0100007G:0277")),
    (lambda b: ks.parse_net_table(b, "tcp"), TCP.replace(b" 0A ", b" A ", 1)),
    (lambda b: ks.parse_net_table(b, "tcp"), TCP[:-60]),  # truncated row
    (lambda b: ks.parse_net_table(b, "tcp"), TCP6),  # IPv6 rows in the IPv4 table
    (lambda b: ks.parse_net_table(b, "tcp6"), TCP),
]


@pytest.mark.parametrize(("parse", "data"), BAD)
def test_malformed_input_raises_format_error(parse: Any, data: bytes) -> None:
    with pytest.raises(FormatError):
        parse(data)
