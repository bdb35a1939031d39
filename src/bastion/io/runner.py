"""Run external commands: the one place bastion starts a subprocess.

``CommandRunner.run`` returns the completed process on exit code 0 and raises
:class:`~bastion.errors.CommandError` (with argv, exit code and the tail of stderr)
otherwise; a missing program raises :class:`~bastion.errors.ToolMissingError` naming
the Debian package that provides it. Code that needs to shell out takes a runner as a
parameter so tests can hand it a recording double or the real thing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bastion.errors import CommandError, ToolMissingError

#: Which Debian package provides each tool bastion may call.
TOOL_PACKAGES: dict[str, str] = {
    "veritysetup": "cryptsetup-bin",
    "cryptsetup": "cryptsetup-bin",
    "swtpm": "swtpm",
    "swtpm_setup": "swtpm-tools",
    "swtpm_ioctl": "swtpm-tools",
    "tpm2_quote": "tpm2-tools",
    "tpm2_createek": "tpm2-tools",
    "tpm2_activatecredential": "tpm2-tools",
    "tpm2_pcrread": "tpm2-tools",
    "tpm2_checkquote": "tpm2-tools",
    "tpm2_createpolicy": "tpm2-tools",
    "tpm2_makecredential": "tpm2-tools",
    "tpm2_eventlog": "tpm2-tools",
    "tpm2_print": "tpm2-tools",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "sfdisk": "fdisk",
    "openssl": "openssl",
    "systemd-cryptenroll": "systemd",
    "sign-file": "linux-kbuild-6.1",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    "pesign": "pesign",
    "objcopy": "binutils",
    "objdump": "binutils",
    "systemd-measure": "systemd",
    "qemu-system-x86_64": "qemu-system-x86",
    "depmod": "kmod",
    "ldd": "libc-bin",
    "zstd": "zstd",
    "cpio": "cpio",
    "mkfs.vfat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "mdir": "mtools",
    "cert-to-efi-sig-list": "efitools",
    "sign-efi-sig-list": "efitools",
    "efi-updatevar": "efitools",
    "sbvarsign": "sbsigntool",
    "sbsiglist": "sbsigntool",
    "sbkeysync": "sbsigntool",
    "busybox": "busybox-static",
    "gcc": "gcc",
    "rauc": "rauc",
}


def find_tool(name: str, extra_paths: Sequence[str] = ("/usr/sbin", "/sbin")) -> str | None:
    """Return the absolute path of ``name`` or None; also looks in sbin folders."""
    found = shutil.which(name)
    if found:
        return found
    for folder in extra_paths:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_tool(name: str) -> str:
    """Return the path of ``name`` or raise ToolMissingError naming its package."""
    path = find_tool(name)
    if path is None:
        raise ToolMissingError(name, TOOL_PACKAGES.get(name, name))
    return path


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a finished command produced."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (replacing undecodable bytes)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass(slots=True)
class CommandRunner:
    """Runs commands; raises CommandError on a non-zero exit unless ``check=False``."""

    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = 600.0

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run ``argv`` (argv[0] resolved with :func:`require_tool`) and capture its output."""
        if not argv:
            raise ValueError("empty command")
        program = argv[0] if os.sep in argv[0] else require_tool(argv[0])
        full_env = dict(os.environ)
        full_env.update(self.env)
        if env:
            full_env.update(env)
        try:
            proc = subprocess.run(
                [program, *argv[1:]],
                input=input,
                capture_output=True,
                env=full_env,
                cwd=cwd,
                timeout=timeout if timeout is not None else self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                f"{argv[0]} did not finish within {exc.timeout} s", argv=list(argv)
            ) from exc
        except OSError as exc:
            raise CommandError(f"cannot run {argv[0]}: {exc}", argv=list(argv)) from exc
        result = CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise CommandError(
                f"{argv[0]} exited with {proc.returncode}: {' | '.join(tail) or '(no stderr)'}",
                argv=list(argv),
                returncode=proc.returncode,
            )
        return result

    def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        output: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as a long-running child (stdio to /dev/null) and return it.

        With ``output``, stdout and stderr are appended to that file instead.
        The caller owns the process: it must stop it and ``wait()`` for it (reap it).
        Used for daemons bastion runs itself, such as a private swtpm or a QEMU.
        """
        if not argv:
            raise ValueError("empty command")
        program = argv[0] if os.sep in argv[0] else require_tool(argv[0])
        full_env = dict(os.environ)
        full_env.update(self.env)
        if env:
            full_env.update(env)
        try:
            sink = open(output, "ab") if output else None  # noqa: SIM115 - closed below
        except OSError as exc:
            raise CommandError(f"cannot open {output} for {argv[0]}: {exc}") from exc
        try:
            return subprocess.Popen(
                [program, *argv[1:]],
                stdin=subprocess.DEVNULL,
                stdout=sink or subprocess.DEVNULL,
                stderr=sink or subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise CommandError(f"cannot start {argv[0]}: {exc}", argv=list(argv)) from exc
        finally:
            if sink is not None:
                sink.close()
