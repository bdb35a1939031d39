"""Posture collection from a /proc + /sys tree: a fake one built from samples, and this one."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from tests.posturekit import MOUNTINFO, TCP, TCP6, UDP

from bastion.device.posture import FileTree, collect_posture
from bastion.formats.kernelstate import SECURE_BOOT_VARIABLE
from bastion.trust.posture import PosturePolicy, check_posture

UDP6_EMPTY = b"  sl  local_address                         remote_address  st tx_queue\n"
VERITY_UUID = b"CRYPT-VERITY-9f3c0d1e2b7a4c55a1d2e3f405162738-root\n"
HARDENED: dict[str, bytes] = {
    "proc/sys/kernel/randomize_va_space": b"2\n",
    "proc/cmdline": b"root=/dev/mapper/root ro lockdown=integrity\n",
    "proc/self/mountinfo": MOUNTINFO,
    "proc/net/tcp": TCP,
    "proc/net/tcp6": TCP6,
    "proc/net/udp": UDP,
    "proc/net/udp6": UDP6_EMPTY,
    "sys/fs/selinux/enforce": b"1",
    "sys/kernel/security/lsm": b"lockdown,capability,yama,selinux,bpf",
    "sys/kernel/security/lockdown": b"none [integrity] confidentiality\n",
    f"sys/firmware/efi/efivars/{SECURE_BOOT_VARIABLE}": b"\x06\x00\x00\x00\x01",
    "sys/module/module/parameters/sig_enforce": b"Y\n",
    "sys/block/dm-0/dev": b"253:0\n",
    "sys/block/dm-0/dm/name": b"root\n",
    "sys/block/dm-0/dm/uuid": VERITY_UUID,
    "sys/block/sda/dev": b"8:0\n",
}
STRICT = PosturePolicy(
    require_selinux="enforcing",
    min_aslr=2,
    require_lockdown="integrity",
    require_secure_boot=True,
    require_module_sig_enforce=True,
    require_verity=True,
    allowed_ports=(22, 53, 631, 8080),
    forbidden_cmdline=("init=",),
)


def _tree(root: Path, files: dict[str, bytes]) -> FileTree:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return FileTree(root)


def _failures(posture: dict[str, Any]) -> list[str]:
    out: list[str] = []
    check_posture(lambda ident, _d: out.append(ident), posture, STRICT)
    return out


def test_hardened_tree(tmp_path: Path) -> None:
    posture = collect_posture(_tree(tmp_path, HARDENED))
    assert posture == {
        "randomize_va_space": 2,
        "selinux": "enforcing",
        "lockdown": "integrity",
        "secure_boot": True,
        "module_sig_enforce": True,
        "verity": "enabled",
        "listening_ports": [22, 53, 631, 8080],
        "cmdline": "root=/dev/mapper/root ro lockdown=integrity",
    }
    assert _failures(posture) == []


def test_dmsetup_status_gives_verified_or_corrupted(tmp_path: Path) -> None:
    files = _tree(tmp_path, HARDENED)
    asked: list[str] = []

    def status(answer: bytes) -> Any:
        return lambda name: asked.append(name) or answer

    assert collect_posture(files, status(b"0 2097152 verity V -\n"))["verity"] == "verified"
    assert collect_posture(files, status(b"0 2097152 verity C 2\n"))["verity"] == "corrupted"
    assert collect_posture(files, status(b"0 2097152 verity ?\n"))["verity"] == "unknown"
    assert asked == ["root", "root", "root"]


def test_empty_tree_is_all_unknown_and_fails_a_strict_policy(tmp_path: Path) -> None:
    posture = collect_posture(FileTree(tmp_path))
    assert posture == dict.fromkeys(posture, "unknown") and len(posture) == 8
    assert sorted(_failures(posture)) == sorted(f"posture.{k}.unknown" for k in posture)


# each row: files to drop or replace -> the facts that change
NEGATIVE: list[tuple[str, dict[str, bytes | None], dict[str, Any], str | None]] = [
    ("aslr-missing", {"proc/sys/kernel/randomize_va_space": None},
     {"randomize_va_space": "unknown"}, "posture.randomize_va_space.unknown"),
    ("aslr-1", {"proc/sys/kernel/randomize_va_space": b"1\n"},
     {"randomize_va_space": 1}, "posture.aslr.weak"),
    ("aslr-garbage", {"proc/sys/kernel/randomize_va_space": b"two\n"},
     {"randomize_va_space": "unknown"}, "posture.randomize_va_space.unknown"),
    ("selinux-permissive", {"sys/fs/selinux/enforce": b"0"},
     {"selinux": "permissive"}, "posture.selinux.permissive"),
    ("selinux-not-an-lsm", {"sys/fs/selinux/enforce": None,
                            "sys/kernel/security/lsm": b"lockdown,capability,yama"},
     {"selinux": "disabled"}, "posture.selinux.disabled"),
    ("selinux-unknown", {"sys/fs/selinux/enforce": None, "sys/kernel/security/lsm": None},
     {"selinux": "unknown"}, "posture.selinux.unknown"),
    ("lockdown-none", {"sys/kernel/security/lockdown": b"[none] integrity confidentiality\n"},
     {"lockdown": "none"}, "posture.lockdown.weak"),
    ("lockdown-not-an-lsm", {"sys/kernel/security/lockdown": None,
                             "sys/kernel/security/lsm": b"capability,selinux"},
     {"lockdown": "none"}, "posture.lockdown.weak"),
    ("lockdown-unknown", {"sys/kernel/security/lockdown": None,
                          "sys/kernel/security/lsm": None},
     {"lockdown": "unknown"}, "posture.lockdown.unknown"),
    ("secure-boot-off", {f"sys/firmware/efi/efivars/{SECURE_BOOT_VARIABLE}":
                         b"\x06\x00\x00\x00\x00"},
     {"secure_boot": False}, "posture.secure_boot.off"),
    ("secure-boot-truncated", {f"sys/firmware/efi/efivars/{SECURE_BOOT_VARIABLE}":
                               b"\x06\x00\x00\x00"},
     {"secure_boot": "unknown"}, "posture.secure_boot.unknown"),
    ("sig-enforce-N", {"sys/module/module/parameters/sig_enforce": b"N\n"},
     {"module_sig_enforce": False}, "posture.module_sig.off"),
    ("sig-enforce-missing", {"sys/module/module/parameters/sig_enforce": None},
     {"module_sig_enforce": "unknown"}, "posture.module_sig_enforce.unknown"),
    ("verity-linear", {"sys/block/dm-0/dm/uuid": b"LVM-abcdef\n"},
     {"verity": "off"}, "posture.verity.off"),
    ("verity-root-not-dm", {"proc/self/mountinfo": MOUNTINFO.replace(b"253:0", b"8:2")},
     {"verity": "off"}, "posture.verity.off"),
    ("verity-no-mountinfo", {"proc/self/mountinfo": None},
     {"verity": "unknown"}, "posture.verity.unknown"),
    ("port-extra", {"proc/net/udp6": UDP6_EMPTY + b"   0: " + b"0" * 32 + b":14E9 " + b"0" * 32
                    + b":0000 07 00000000:00000000 00:00000000 00000000 0 0 1 2 0 0\n"},
     {"listening_ports": [22, 53, 631, 5353, 8080]}, "posture.ports.unexpected"),
    ("ports-garbage", {"proc/net/tcp": b"garbage\n"},
     {"listening_ports": "unknown"}, "posture.listening_ports.unknown"),
    ("cmdline-init", {"proc/cmdline": b"root=/dev/mapper/root init=/bin/sh\n"},
     {"cmdline": "root=/dev/mapper/root init=/bin/sh"}, "posture.cmdline.forbidden"),
    ("cmdline-oversize", {"proc/cmdline": b"quiet " * 1000 + b"\n"},
     {"cmdline": "unknown"}, "posture.cmdline.unknown"),
    ("cmdline-missing", {"proc/cmdline": None},
     {"cmdline": "unknown"}, "posture.cmdline.unknown"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "change", "facts", "ident"), NEGATIVE, ids=[n[0] for n in NEGATIVE]
)
def test_negative_table(
    tmp_path: Path, case: str, change: dict[str, bytes | None], facts: dict[str, Any], ident: str
) -> None:
    files = {**HARDENED, **{k: v for k, v in change.items() if v is not None}}
    files = {k: v for k, v in files.items() if change.get(k, b"") is not None}
    posture = collect_posture(_tree(tmp_path, files))
    good = collect_posture(_tree(tmp_path / "good", HARDENED))
    assert {k: v for k, v in posture.items() if good[k] != v} == facts, case
    assert _failures(posture) == [ident]


def test_legacy_bios_and_uefi_without_secure_boot(tmp_path: Path) -> None:
    files = {k: v for k, v in HARDENED.items() if "efivars" not in k}
    (tmp_path / "bios/sys/firmware/acpi").mkdir(parents=True)
    assert collect_posture(_tree(tmp_path / "bios", files))["secure_boot"] is False
    (tmp_path / "uefi/sys/firmware/efi/efivars").mkdir(parents=True)
    assert collect_posture(_tree(tmp_path / "uefi", files))["secure_boot"] is False


def test_this_machine() -> None:
    """The real /proc and /sys: a well-formed posture, checked against facts stable here."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        posture = collect_posture(FileTree("/"))
    facts = {"randomize_va_space", "selinux", "lockdown", "secure_boot", "module_sig_enforce"}
    assert set(posture) == facts | {"verity", "listening_ports", "cmdline"}
    aslr = Path("/proc/sys/kernel/randomize_va_space").read_text().strip()
    assert posture["randomize_va_space"] == int(aslr)
    assert port in posture["listening_ports"]
    assert posture["cmdline"] == Path("/proc/cmdline").read_text().strip()
    assert posture["selinux"] in ("enforcing", "permissive", "disabled", "unknown")
    assert posture["verity"] in ("off", "enabled", "unknown")
    check_posture(lambda ident, detail: pytest.fail(f"{ident}: {detail}"), posture, PosturePolicy())


def test_dmsetup_status_of_a_missing_mapping_is_none() -> None:
    """The real adapter: no such mapping (or no device-mapper here) is None, never a raise."""
    from bastion.device.posture import dmsetup_status

    assert dmsetup_status("bastion-test-no-such-mapping") is None
