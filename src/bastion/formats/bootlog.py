"""What a guest said on its serial console: bastion's markers, the firmware's refusals.

Pure: text in, a frozen :class:`ConsoleReport` out. bastion's test ``/init``
(``build/vm-init.sh``) writes lines starting with ``BASTION: ``:

==============================  ==========================================================
``running``                     the verity root is open, read in full, mounted read-only
``failed: <reason>``            anything else (the first one counts)
``eventlog begin`` / ``end``    the TCG event log in base64 on the lines between
``pcr sha256 <n> <hex>``        a PCR value as the guest kernel reads it
``root mounted <dev> <dir> ..`` the root mount as /proc/mounts shows it
``efivar <name> <value>``       an EFI variable (SecureBoot, systemd-boot's Loader*)
``quote attest|signature <b64>`` a TPM2_Quote the guest made (TPMS_ATTEST, TPMT_SIGNATURE)
``verity options <opts>``       the dm-verity corruption response the guest used
``poweroff``                    the last line before the power-off
==============================  ==========================================================

Firmware lines are recognised too: OVMF prints ``Access Denied`` or ``Security
Violation`` when Secure Boot refuses an image (and then waits forever), and the kernel
``Kernel panic``. :func:`outcome` turns a report plus how the VM ended into one
:class:`Outcome`. Serial lines may end in CR LF and kernel messages (``[ seconds] ...``) may be
interleaved, also inside the event log block; a marker counts only at the start of a line.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from dataclasses import dataclass, field

from bastion.errors import FormatError, LimitError
from bastion.limits import BOOTLOG_MAX_EVENTLOG_SIZE, BOOTLOG_MAX_QUOTE_SIZE, BOOTLOG_MAX_SIZE

PREFIX = "BASTION: "
#: matched without regard to case (OVMF says "Access Denied", systemd-boot "Security violation")
FIRMWARE_REFUSALS = ("access denied", "security violation")
PANIC = "Kernel panic"
_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_PCR = re.compile(r"pcr (sha1|sha256|sha384|sha512) (\d{1,2}) ([0-9A-Fa-f]+)")
_B64 = re.compile(r"[A-Za-z0-9+/=]*")
#: terminal control sequences firmware and boot loaders print (colours, cursor moves)
_ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")


class Outcome(enum.StrEnum):
    """How a boot ended."""

    RUNNING = "running"  # the guest reached ``BASTION: running``
    FAILED = "failed"  # the guest printed ``BASTION: failed: ...``
    FIRMWARE_REFUSED = "firmware-refused"  # Secure Boot refused the image
    PANIC = "panic"  # the kernel panicked
    TIMEOUT = "timeout"  # none of the above within the time limit
    EXITED = "exited"  # the VM stopped without any of the above


@dataclass(frozen=True, slots=True)
class ConsoleReport:
    """Everything the console showed that bastion looks at."""

    running: bool = False
    failure: str | None = None
    firmware_refusal: str | None = None
    panic: str | None = None
    powered_off: bool = False
    root_mount: str | None = None
    eventlog: bytes | None = None
    pcrs: dict[str, dict[int, bytes]] = field(default_factory=dict)
    efivars: dict[str, str] = field(default_factory=dict)
    #: ``attest`` and ``signature`` of the guest's quote, when it made one
    quote: dict[str, bytes] = field(default_factory=dict)
    markers: tuple[str, ...] = ()

    @property
    def finished(self) -> bool:
        """True once the guest has said how it ended (running or failed)."""
        return self.running or self.failure is not None

    @property
    def root_read_only(self) -> bool:
        """True when the reported root mount options contain ``ro``."""
        if self.root_mount is None:
            return False
        words = self.root_mount.split()
        return len(words) >= 4 and "ro" in words[3].split(",")


def _eventlog(lines: list[str]) -> bytes:
    text = "".join(lines)
    if len(text) * 3 // 4 > BOOTLOG_MAX_EVENTLOG_SIZE:
        raise LimitError(f"event log on the console is over {BOOTLOG_MAX_EVENTLOG_SIZE} bytes")
    if not _B64.fullmatch(text):
        raise FormatError("event log on the console has characters outside base64")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"event log on the console is not valid base64: {exc}") from exc


def _quote_part(text: str) -> bytes:
    if len(text) * 3 // 4 > BOOTLOG_MAX_QUOTE_SIZE:
        raise LimitError(f"quote on the console is over {BOOTLOG_MAX_QUOTE_SIZE} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"quote on the console is not valid base64: {exc}") from exc


def parse(text: str) -> ConsoleReport:
    """Read a serial console log (raises LimitError past :data:`BOOTLOG_MAX_SIZE`).

    An event log block that is not closed yet is ignored; a closed one that is not
    base64 raises FormatError.
    """
    if len(text) > BOOTLOG_MAX_SIZE:
        raise LimitError(f"console log of {len(text)} characters (limit {BOOTLOG_MAX_SIZE})")
    running = False
    failure: str | None = None
    refusal: str | None = None
    panic: str | None = None
    powered_off = False
    root_mount: str | None = None
    eventlog: bytes | None = None
    pcrs: dict[str, dict[int, bytes]] = {}
    efivars: dict[str, str] = {}
    quote: dict[str, bytes] = {}
    markers: list[str] = []
    block: list[str] | None = None
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip("\r\x00")
        if block is not None and not line.startswith(PREFIX):
            if not line.startswith("["):  # a kernel message printed in between
                block.append(line.strip())
            continue
        if refusal is None:
            lowered = line.lower()
            for word in FIRMWARE_REFUSALS:
                if word in lowered:
                    refusal = line.strip()
        if panic is None and PANIC in line:
            panic = line[line.index(PANIC) :].strip()
        if not line.startswith(PREFIX):
            continue
        body = line[len(PREFIX) :].strip()
        markers.append(body)
        if body == "eventlog begin":
            block = []
        elif body == "eventlog end":
            if block is not None and eventlog is None:
                eventlog = _eventlog(block)
            block = None
        elif body == "running":
            running = running or failure is None
        elif body.startswith("failed:"):
            if failure is None and not running:
                failure = body[len("failed:") :].strip() or "(no reason given)"
        elif body == "poweroff":
            powered_off = True
        elif body.startswith("efivar "):
            name, _, value = body[len("efivar ") :].partition(" ")
            efivars.setdefault(name, value)
        elif body.startswith(("quote attest ", "quote signature ")):
            _, part, value = body.split(" ", 2)
            quote.setdefault(part, _quote_part(value.strip()))
        elif body.startswith("root mounted "):
            root_mount = body[len("root mounted ") :]
        elif match := _PCR.fullmatch(body):
            bank, index, value = match.group(1), int(match.group(2)), match.group(3)
            if index > 23:
                raise FormatError(f"console names PCR {index}")
            if len(value) != 2 * _DIGEST_SIZES[bank]:
                raise FormatError(f"console gives {bank} PCR {index} as {len(value)} hex digits")
            pcrs.setdefault(bank, {})[index] = bytes.fromhex(value)
    return ConsoleReport(
        running=running,
        failure=failure,
        firmware_refusal=refusal,
        panic=panic,
        powered_off=powered_off,
        root_mount=root_mount,
        eventlog=eventlog,
        pcrs=pcrs,
        efivars=efivars,
        quote=quote,
        markers=tuple(markers),
    )


def outcome(report: ConsoleReport, *, timed_out: bool) -> Outcome:
    """One outcome: the guest's own word first, then the firmware's, then how it stopped."""
    if report.failure is not None:
        return Outcome.FAILED
    if report.running:
        return Outcome.RUNNING
    if report.firmware_refusal is not None:
        return Outcome.FIRMWARE_REFUSED
    if report.panic is not None:
        return Outcome.PANIC
    return Outcome.TIMEOUT if timed_out else Outcome.EXITED


def reason(report: ConsoleReport, result: Outcome) -> str:
    """A one-line explanation of ``result`` for people."""
    if result is Outcome.FAILED:
        return report.failure or "failed"
    if result is Outcome.RUNNING:
        return f"running; root {report.root_mount or '(mount not reported)'}"
    if result is Outcome.FIRMWARE_REFUSED:
        return f"firmware refused the image: {report.firmware_refusal}"
    if result is Outcome.PANIC:
        return report.panic or "kernel panic"
    if result is Outcome.TIMEOUT:
        last = report.markers[-1] if report.markers else "no bastion marker"
        return f"no outcome before the time limit (last: {last})"
    last = report.markers[-1] if report.markers else "no bastion marker"
    return f"the VM stopped without an outcome (last: {last})"
