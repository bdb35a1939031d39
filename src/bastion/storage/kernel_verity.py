"""dm-verity by the kernel: ``veritysetup`` argv, run through ``io.runner``, errors mapped.

The userspace verity of the ``sim`` platform (:mod:`bastion.storage.verity_reader`)
and this adapter check the same tree; here the kernel does it on a real device
(``linux`` platform) and in the QEMU guest. Three layers, kept apart:

* **argv** (pure, checked): :func:`open_argv`, :func:`verify_argv`, :func:`close_argv`,
  :func:`status_argv`. Devices are absolute paths, mapping names plain words, the root
  hash 64 lower-case hex digits; nothing a caller passes can become an option.
* **run**: :class:`KernelVerity` runs them with ``check=False`` and maps the result to
  the error tree (:func:`raise_for`): a failed check is ``DigestMismatchError``
  (``area="verity"``), an existing mapping ``ConflictError``, a missing device
  ``NotFoundError``, anything else ``CommandError``.
* **the error response**: :class:`CorruptionResponse` is the kernel's answer to a
  corrupted block (``systemd.verity_root_options=`` words, ``veritysetup`` flags);
  device/profile.py maps the signed security profile to it (ADR 0028).

``veritysetup open`` with a wrong root hash succeeds and only reads fail (toolchain
notes): :meth:`KernelVerity.open` therefore leaves reading to the caller, and
:meth:`KernelVerity.verify` is the full check (``veritysetup verify`` needs no
device-mapper, so it also runs on a host).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.errors import (
    CommandError,
    ConfigError,
    ConflictError,
    DigestMismatchError,
    FormatError,
    LimitError,
    NotFoundError,
)
from bastion.io.runner import CommandResult, CommandRunner
from bastion.limits import KERNEL_TOOL_MAX_OUTPUT

TOOL = "veritysetup"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,126}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PATH = re.compile(r"/[A-Za-z0-9_./+\-:@]{0,4094}")


class CorruptionResponse(enum.StrEnum):
    """What the kernel does when a block does not match the tree (dm-verity modes).

    The value is the ``systemd.verity_root_options=`` word (and the dm table keyword);
    :attr:`flag` is the ``veritysetup open`` option. ``EIO`` is the kernel default: the
    read fails and nothing else happens.
    """

    EIO = "eio"
    IGNORE = "ignore-corruption"
    RESTART = "restart-on-corruption"
    PANIC = "panic-on-corruption"

    @property
    def flag(self) -> str | None:
        """The ``veritysetup`` option for this response (None for the default)."""
        return None if self is CorruptionResponse.EIO else f"--{self.value}"

    @property
    def options(self) -> str:
        """The ``systemd.verity_root_options=`` value ("" for the default)."""
        return "" if self is CorruptionResponse.EIO else self.value


def parse_options(text: str) -> CorruptionResponse:
    """The response named by a ``systemd.verity_root_options=`` value bastion writes.

    bastion writes at most one of the three corruption words; anything else (including
    two of them, which the kernel refuses) is a FormatError naming it.
    """
    words = [w for w in text.split(",") if w]
    if not words:
        return CorruptionResponse.EIO
    known = {r.value: r for r in CorruptionResponse if r is not CorruptionResponse.EIO}
    if len(words) != 1 or words[0] not in known:
        raise FormatError(f"verity options {text!r}: expected one of {sorted(known)} or nothing")
    return known[words[0]]


def check_device(path: str, what: str = "device") -> str:
    """``path`` if it is an absolute device path of plain characters; else ConfigError."""
    if not _PATH.fullmatch(path) or "/../" in f"{path}/" or "//" in path:
        raise ConfigError(f"{what} {path!r} is not an absolute path of plain characters")
    return path


def check_name(name: str) -> str:
    """``name`` if it is a valid device-mapper name bastion uses; else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"device-mapper name {name!r}: expected letters, digits, _ . -")
    return name


def root_hash_hex(root_hash: bytes | str) -> str:
    """The root hash as 64 lower-case hex digits (bytes or text in); else ConfigError."""
    text = root_hash.hex() if isinstance(root_hash, bytes) else root_hash
    if not _HEX64.fullmatch(text):
        raise ConfigError(f"root hash {text[:80]!r}: expected 64 lower-case hex digits (SHA-256)")
    return text


def open_argv(
    data: str,
    name: str,
    hash_device: str,
    root_hash: bytes | str,
    response: CorruptionResponse = CorruptionResponse.EIO,
    *,
    hash_offset: int = 0,
) -> list[str]:
    """``veritysetup open DATA NAME HASH ROOTHASH`` with the corruption response."""
    argv = [TOOL, "open"]
    if response.flag:
        argv.append(response.flag)
    if hash_offset:
        argv.append(f"--hash-offset={_offset(hash_offset)}")
    return [
        *argv,
        check_device(data, "data device"),
        check_name(name),
        check_device(hash_device, "hash device"),
        root_hash_hex(root_hash),
    ]


def verify_argv(
    data: str, hash_device: str, root_hash: bytes | str, *, hash_offset: int = 0
) -> list[str]:
    """``veritysetup verify DATA HASH ROOTHASH``: every block, in userspace."""
    argv = [TOOL, "verify"]
    if hash_offset:
        argv.append(f"--hash-offset={_offset(hash_offset)}")
    return [
        *argv,
        check_device(data, "data device"),
        check_device(hash_device, "hash device"),
        root_hash_hex(root_hash),
    ]


def close_argv(name: str) -> list[str]:
    return [TOOL, "close", check_name(name)]


def status_argv(name: str) -> list[str]:
    return [TOOL, "status", check_name(name)]


def _offset(value: int) -> int:
    if value < 0 or value % 512:
        raise ConfigError(f"hash offset {value} is not a non-negative multiple of 512")
    return value


@dataclass(frozen=True, slots=True)
class VerityStatus:
    """``veritysetup status NAME`` as bastion reads it."""

    active: bool
    verified: bool  # ``status: verified`` (False: corrupted, or not read yet)
    fields: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        for k, v in self.fields:
            if k == key:
                return v
        return None


def parse_status(text: str) -> VerityStatus:
    """Parse ``veritysetup status`` output (``key: value`` lines; bounded)."""
    if len(text) > KERNEL_TOOL_MAX_OUTPUT:
        raise LimitError(f"veritysetup status output over {KERNEL_TOOL_MAX_OUTPUT} characters")
    lines = text.strip().splitlines()
    active = bool(lines) and " is active" in lines[0]
    fields = []
    for line in lines[1:]:
        key, sep, value = line.strip().partition(":")
        if sep:
            fields.append((key.strip(), value.strip()))
    status = VerityStatus(active, False, tuple(fields))
    return VerityStatus(active, active and status.get("status") == "verified", tuple(fields))


def raise_for(result: CommandResult, what: str) -> None:
    """Map a failed ``veritysetup`` run to the error tree (nothing on exit 0)."""
    if result.returncode == 0:
        return
    err = result.stderr.decode("utf-8", "replace")[-KERNEL_TOOL_MAX_OUTPUT:].strip()
    last = err.splitlines()[-1] if err else f"exit code {result.returncode}"
    if "Verification of root hash failed" in err:
        raise DigestMismatchError(
            f"{what}: the tree does not give the expected root hash ({last})", area="verity"
        )
    if "Verification failed at position" in err or "Verification of data area failed" in err:
        where = re.search(r"Verification failed at position (\d+)", err)
        raise DigestMismatchError(
            f"{what}: a data block does not match the tree"
            + (f" (byte {where.group(1)})" if where else "")
            + f": {last}",
            area="verity",
            block=int(where.group(1)) // 4096 if where else None,
        )
    if "already exists" in err or "is busy" in err or result.returncode == 5:
        raise ConflictError(f"{what}: {last}")
    if "does not exist" in err or "No such file" in err or result.returncode == 4:
        raise NotFoundError(f"{what}: {last}")
    raise CommandError(
        f"{what}: veritysetup exited with {result.returncode}: {last}",
        argv=list(result.argv),
        returncode=result.returncode,
    )


class KernelVerity:
    """Runs the argv above and maps failures (see the module docstring)."""

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self.runner = runner or CommandRunner()

    def _run(self, argv: Sequence[str], what: str) -> CommandResult:
        result = self.runner.run(argv, check=False)
        raise_for(result, what)
        return result

    def verify(
        self, data: str, hash_device: str, root_hash: bytes | str, *, hash_offset: int = 0
    ) -> None:
        """Check every block of ``data`` (raises DigestMismatchError)."""
        self._run(
            verify_argv(data, hash_device, root_hash, hash_offset=hash_offset),
            f"verity check of {data}",
        )

    def open(
        self,
        data: str,
        name: str,
        hash_device: str,
        root_hash: bytes | str,
        response: CorruptionResponse = CorruptionResponse.EIO,
        *,
        hash_offset: int = 0,
    ) -> str:
        """Map ``data`` as ``/dev/mapper/NAME``; returns that path. Read it to check it."""
        self._run(
            open_argv(data, name, hash_device, root_hash, response, hash_offset=hash_offset),
            f"verity open of {data} as {name}",
        )
        return f"/dev/mapper/{name}"

    def status(self, name: str) -> VerityStatus:
        """The mapping's status (inactive when there is none)."""
        result = self.runner.run(status_argv(name), check=False)
        if result.returncode not in (0, 4):
            raise_for(result, f"verity status of {name}")
        return parse_status(result.text)

    def close(self, name: str) -> None:
        self._run(close_argv(name), f"verity close of {name}")
