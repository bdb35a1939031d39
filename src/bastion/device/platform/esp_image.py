"""An ESP that is a FAT partition inside a disk image file, reached with mtools.

The ``sim`` platform's ``Platform.esp()`` when its ``disk.img`` has an EFI System
Partition (GPT type ``C12A7328-...``): :class:`ImageEsp` implements the
:class:`~bastion.device.platform.esp.Esp` protocol over the FAT filesystem of that
partition, in place, with mtools through :mod:`bastion.io.runner`
(``mdir``/``mcopy``/``mren``/``mdel``/``mmd`` with ``-i disk.img@@OFFSET``). No mount,
no root, no loop device: the same bytes QEMU's firmware reads.

Crash order: :meth:`ImageEsp.write` copies the new file under ``NAME.new`` first (in
full), then deletes ``NAME`` and renames ``NAME.new`` to ``NAME``; FAT has no atomic
replace. Every read of a folder first finishes what a power cut interrupted
(:meth:`ImageEsp.recover`): a ``NAME.new`` beside ``NAME`` may be partial and is
deleted (the old file stays); a ``NAME.new`` alone was complete before ``NAME`` was
deleted and is renamed into place. So a reader sees the old file or the new one, never
half of one and never neither (``.new`` is no BLS entry name either).
:meth:`ImageEsp.rename` is one directory-entry update, as systemd-boot's own rename.
Names are matched without case, as FAT does; a name stored as a bare 8.3 short name
(mtools writes ``bastion.efi`` as ``BASTION.EFI``) is listed in lower case.
:meth:`ImageEsp.rename` is one directory-entry update, as systemd-boot's own rename.

mtools is told ``MTOOLS_SKIP_CHECK=1`` (a FAT made by ``mkfs.vfat --invariant`` has
geometry mtools would question) and ``TZ=UTC``.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from bastion.device.platform.esp import EspSpace, check_path
from bastion.errors import CommandError, FormatError, LimitError, NotFoundError
from bastion.io.runner import CommandRunner
from bastion.limits import ESP_FILE_MAX_SIZE, ESP_MAX_LISTING

_ENV = {"MTOOLS_SKIP_CHECK": "1", "TZ": "UTC", "MTOOLS_NO_VFAT": "0"}
_TEMP_SUFFIX = ".new"
#: a name FAT stored as an 8.3 short name only (mtools writes no long name for a
#: lower-case 8.3 name): reported in lower case, as Linux's ``shortname=lower`` shows it
#: mdir's summary lines (digits grouped by spaces: "1 234 567 bytes")
_MDIR_TOTAL = re.compile(r"\s*[0-9]+ files?\s+([0-9 ]+) bytes\s*")
_MDIR_FREE = re.compile(r"\s*([0-9 ]+) bytes free\s*")
#: minfo's boot sector lines
_MINFO_SECTOR = re.compile(r"sector size: ([0-9]{1,6}) bytes")
_MINFO_CLUSTER = re.compile(r"cluster size: ([0-9]{1,4}) sectors")
_SHORT_ONLY = re.compile(r"[A-Z0-9_~!#$%&'()@^`{}-]{1,8}(\.[A-Z0-9_~!#$%&'()@^`{}-]{1,3})?")


class ImageEsp:
    """The FAT filesystem at byte ``offset`` of the image file ``image``."""

    def __init__(self, image: Path, offset: int, runner: CommandRunner | None = None) -> None:
        if offset < 0 or offset % 512:
            raise FormatError(f"ESP offset {offset} is not a positive multiple of 512")
        self.image = Path(image)
        self.offset = offset
        self.runner = runner or CommandRunner()

    # --- mtools ----------------------------------------------------------------------------

    @property
    def _drive(self) -> str:
        return f"{self.image}@@{self.offset}"

    def _run(self, tool: str, *args: str, check: bool = True) -> bytes:
        result = self.runner.run([tool, "-i", self._drive, *args], env=_ENV, check=False)
        if check and result.returncode != 0:
            tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise CommandError(
                f"{tool} on the ESP of {self.image}: {' | '.join(tail) or 'failed'}",
                argv=[tool, *args],
                returncode=result.returncode,
            )
        return result.stdout

    def _exists(self, path: str) -> bool:
        parent, _, name = path.rpartition("/")
        return name.casefold() in {n.casefold() for n in self._entries(parent)}

    def _entries(self, folder: str) -> list[str]:
        """Names directly inside ``folder`` (folders end in ``/``); [] if it is absent."""
        target = "::/" + folder if folder else "::/"
        result = self.runner.run(["mdir", "-b", "-i", self._drive, target], env=_ENV, check=False)
        if result.returncode != 0:
            return []
        prefix = target.rstrip("/") + "/"
        names = []
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            if not line.startswith(prefix):
                continue
            name = line[len(prefix) :]
            if _SHORT_ONLY.fullmatch(name.rstrip("/")):
                name = name.lower()  # a short name only: FAT keeps no case for it
            names.append(name)
        return names

    # --- the Esp protocol ----------------------------------------------------------------

    def recover(self, folder: str) -> list[str]:
        """Finish or undo interrupted writes in ``folder`` (module docstring); one line
        per repair."""
        entries = self._entries(folder)
        present = {n.casefold() for n in entries}
        done = []
        for name in entries:
            if not name.casefold().endswith(_TEMP_SUFFIX) or name.endswith("/"):
                continue
            base = name[: -len(_TEMP_SUFFIX)]
            path = f"{folder}/{name}" if folder else name
            if base.casefold() in present:
                self._run("mdel", f"::/{path}")
                done.append(f"ESP {path}: an interrupted write was dropped (the old file stays)")
            else:
                self._run("mren", f"::/{path}", base)
                present.add(base.casefold())
                done.append(f"ESP {path}: an interrupted replace was completed")
        return done

    def list(self, folder: str) -> list[str]:
        check_path(folder)
        self.recover(folder)
        names = sorted(n for n in self._entries(folder) if n and not n.endswith("/"))
        if len(names) > ESP_MAX_LISTING:
            raise FormatError(
                f"ESP folder {folder!r} holds {len(names)} files, limit {ESP_MAX_LISTING}"
            )
        return names

    def read(self, path: str, limit: int = ESP_FILE_MAX_SIZE) -> bytes:
        check_path(path)
        self.recover(path.rpartition("/")[0])
        if not self._exists(path):
            raise NotFoundError(f"ESP file {path!r} does not exist in {self.image}")
        data = self._run("mcopy", "-n", f"::/{path}", "-")
        if len(data) > limit:
            raise LimitError(f"ESP file {path!r} is {len(data)} bytes, limit {limit}")
        return data

    def write(self, path: str, data: bytes) -> None:
        check_path(path)
        parent, _, name = path.rpartition("/")
        self._make_folders(parent)
        temp = f"{path}{_TEMP_SUFFIX}"
        with tempfile.TemporaryDirectory(prefix="bastion-esp-") as tmp:
            staged = Path(tmp) / "file"
            staged.write_bytes(data)
            os.chmod(staged, 0o644)
            self._run("mcopy", "-o", "-n", str(staged), f"::/{temp}")
        if self._exists(path):
            self._run("mdel", f"::/{path}")
        self._run("mren", f"::/{temp}", name)

    def rename(self, old: str, new: str) -> None:
        check_path(old)
        check_path(new)
        old_parent, _, _ = old.rpartition("/")
        new_parent, _, new_name = new.rpartition("/")
        if old_parent != new_parent:
            raise FormatError(f"ESP rename {old!r} -> {new!r} crosses folders")
        if not self._exists(old):
            raise NotFoundError(f"ESP file {old!r} does not exist")
        if old == new:
            return
        if self._exists(new):  # rename(2) replaces; mren would refuse
            self._run("mdel", f"::/{new}")
        self._run("mren", f"::/{old}", new_name)

    def remove(self, path: str) -> None:
        check_path(path)
        if not self._exists(path):
            raise NotFoundError(f"ESP file {path!r} does not exist")
        self._run("mdel", f"::/{path}")

    def size(self, path: str) -> int:
        """The length ``mdir`` lists for ``path`` (its "N bytes" total of one file)."""
        check_path(path)
        if not self._exists(path):
            raise NotFoundError(f"ESP file {path!r} does not exist in {self.image}")
        total, _ = _mdir_summary(self._run("mdir", f"::/{path}"), f"mdir of {path}")
        if total is None:
            raise FormatError(f"mdir of ESP file {path!r} lists no size")
        return total

    def space(self) -> EspSpace:
        """Bytes free as ``mdir`` counts them (free clusters) and the cluster size from
        the boot sector as ``minfo`` shows it."""
        _, free = _mdir_summary(self._run("mdir", "::/"), "mdir of the ESP root")
        info = self._run("minfo").decode("utf-8", "replace")
        sector, cluster = _MINFO_SECTOR.search(info), _MINFO_CLUSTER.search(info)
        if sector is None or cluster is None:
            raise FormatError(f"minfo of the ESP of {self.image} gives no sector/cluster size")
        return EspSpace(free, int(sector.group(1)) * int(cluster.group(1)))

    # --- helpers ---------------------------------------------------------------------------

    def _make_folders(self, folder: str) -> None:
        if not folder:
            return
        done = ""
        for part in folder.split("/"):
            here = f"{done}/{part}" if done else part
            if f"{part}/".casefold() not in {n.casefold() for n in self._entries(done)}:
                self._run("mmd", f"::/{here}")
            done = here


def _mdir_summary(out: bytes, what: str) -> tuple[int | None, int]:
    """(bytes listed, or None for "No files"; bytes free) from ``mdir``'s last lines."""
    lines = [ln for ln in out.decode("utf-8", "replace").splitlines() if ln.strip()][-2:]
    free = _MDIR_FREE.fullmatch(lines[-1]) if lines else None
    if free is None:
        raise FormatError(f"{what}: no 'N bytes free' line: {lines!r}")
    total = _MDIR_TOTAL.fullmatch(lines[0]) if len(lines) == 2 else None
    listed = int(total.group(1).replace(" ", "")) if total else None
    return listed, int(free.group(1).replace(" ", ""))
