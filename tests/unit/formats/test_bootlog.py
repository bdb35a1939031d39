"""Serial console markers: outcomes, the event log block, PCR lines, bad input."""

from __future__ import annotations

import base64

import pytest

from bastion.errors import FormatError, LimitError
from bastion.formats import bootlog
from bastion.formats.bootlog import Outcome

EVENTLOG = bytes(range(256)) * 3
B64 = base64.encodebytes(EVENTLOG).decode()

RUNNING = (
    "BdsDxe: loading Boot0001\r\n"
    "BASTION: initrd uptime=1.23\r\n"
    "BASTION: eventlog begin\r\n" + B64.replace("\n", "\r\n") + "BASTION: eventlog end\r\n"
    "BASTION: pcr sha256 11 " + "AB" * 32 + "\r\n"
    "BASTION: efivar LoaderBootCountPath \\EFI\\Linux\\bastion+2-1.efi\r\n"
    "BASTION: root /dev/vda2 verity /dev/vda3\r\n"
    "BASTION: root mounted /dev/mapper/root /sysroot erofs ro,relatime\r\n"
    "BASTION: running\r\n"
    "BASTION: poweroff\r\n"
    "[    8.58] reboot: Power down\r\n"
)


def test_running_report() -> None:
    report = bootlog.parse(RUNNING)
    assert report.running and report.failure is None and report.powered_off
    assert report.eventlog == EVENTLOG
    assert report.pcrs == {"sha256": {11: b"\xab" * 32}}
    assert report.root_read_only
    assert report.efivars == {"LoaderBootCountPath": "\\EFI\\Linux\\bastion+2-1.efi"}
    assert bootlog.outcome(report, timed_out=False) is Outcome.RUNNING


def test_kernel_messages_inside_the_event_log_block_are_skipped() -> None:
    lines = B64.splitlines()
    text = (
        "BASTION: eventlog begin\n"
        + lines[0]
        + "\n[    3.1] random: crng init done\n"
        + "\n".join(lines[1:])
        + "\nBASTION: eventlog end\n"
    )
    assert bootlog.parse(text).eventlog == EVENTLOG


OUTCOMES = [
    ("failed", "BASTION: failed: verity: reading the root failed\n", False, Outcome.FAILED),
    (
        "failed wins over a later running",
        "BASTION: failed: x\nBASTION: running\n",
        False,
        Outcome.FAILED,
    ),
    (
        "access denied",
        "BdsDxe: failed to load Boot0001: Access Denied\n",
        True,
        Outcome.FIRMWARE_REFUSED,
    ),
    ("security violation", "Security Violation\n", False, Outcome.FIRMWARE_REFUSED),
    (
        "systemd-boot load error",
        "Error loading \\EFI\\Linux\\bastion+3-0.efi: Security violation\n",
        False,
        Outcome.FIRMWARE_REFUSED,
    ),
    ("panic", "[ 1.0] Kernel panic - not syncing: VFS\n", False, Outcome.PANIC),
    ("nothing, timed out", "BdsDxe: loading\nBASTION: initrd\n", True, Outcome.TIMEOUT),
    ("nothing, exited", "BASTION: initrd\n", False, Outcome.EXITED),
    ("marker not at line start", "echo BASTION: running\n", False, Outcome.EXITED),
    ("running without prefix space", "BASTION:running\n", False, Outcome.EXITED),
]


@pytest.mark.parametrize(
    ("case", "text", "timed_out", "expected"), OUTCOMES, ids=[o[0] for o in OUTCOMES]
)
def test_outcomes(case: str, text: str, timed_out: bool, expected: Outcome) -> None:
    report = bootlog.parse(text)
    assert bootlog.outcome(report, timed_out=timed_out) is expected
    assert bootlog.reason(report, expected)


def test_terminal_colours_are_dropped() -> None:
    text = "\x1b[1m\x1b[31m\x1b[40mError loading \\EFI\\Linux\\a.efi: Access Denied\r\n\x1b[0m"
    report = bootlog.parse(text)
    assert report.firmware_refusal == "Error loading \\EFI\\Linux\\a.efi: Access Denied"


def test_failure_reason_is_kept() -> None:
    report = bootlog.parse("BASTION: failed: no roothash= on the kernel command line\n")
    assert report.failure == "no roothash= on the kernel command line"
    assert not report.root_read_only


def test_read_write_root_is_not_read_only() -> None:
    report = bootlog.parse("BASTION: root mounted /dev/vda2 /sysroot ext4 rw,relatime\n")
    assert not report.root_read_only


def test_unclosed_event_log_is_ignored() -> None:
    assert bootlog.parse("BASTION: eventlog begin\nAAAA\n").eventlog is None


BAD = [
    ("not base64", "BASTION: eventlog begin\n!!!!\nBASTION: eventlog end\n", FormatError),
    ("bad padding", "BASTION: eventlog begin\nAAA\nBASTION: eventlog end\n", FormatError),
    ("pcr out of range", "BASTION: pcr sha256 24 00\n", FormatError),
    ("pcr odd hex", "BASTION: pcr sha256 13 3B3\n", FormatError),
    ("pcr short", "BASTION: pcr sha256 13 " + "00" * 31 + "\n", FormatError),
    ("pcr long", "BASTION: pcr sha1 13 " + "00" * 21 + "\n", FormatError),
]


@pytest.mark.parametrize(("case", "text", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_console(case: str, text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        bootlog.parse(text)


def test_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bootlog, "BOOTLOG_MAX_EVENTLOG_SIZE", 100)
    with pytest.raises(LimitError):
        bootlog.parse(RUNNING)
    monkeypatch.setattr(bootlog, "BOOTLOG_MAX_SIZE", 100)
    with pytest.raises(LimitError):
        bootlog.parse(RUNNING)


def test_quote_lines() -> None:
    attest, sig = b"\xffTCG" + bytes(60), b"\x00\x18" + bytes(70)
    text = (
        f"BASTION: quote attest {base64.b64encode(attest).decode()}\r\n"
        f"BASTION: quote signature {base64.b64encode(sig).decode()}\n"
        "BASTION: quote attest AAAA\n"  # a second one does not replace the first
    )
    assert bootlog.parse(text).quote == {"attest": attest, "signature": sig}
    assert bootlog.parse("BASTION: running\n").quote == {}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("BASTION: quote attest not*base64", FormatError),
        ("BASTION: quote signature " + "A" * 4000, LimitError),
    ],
)
def test_bad_quote_lines(line: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="quote on the console"):
        bootlog.parse(line + "\n")
