"""A small test initramfs from the host's own binaries, to boot a bastion image for real.

What goes in (docs/vm.md lists what a product adds to dracut or mkosi instead):

* ``/bin/busybox`` from busybox-static, with a symlink per applet in ``/bin`` and
  ``/sbin/modprobe``, ``/sbin/poweroff``;
* ``veritysetup``, ``cryptsetup`` and ``tpm2`` (tpm2-tools) with every library ``ldd``
  names (Debian ships no static build), at the paths ``ldd`` prints, and the dynamic
  loader; systemd's ``systemd-tpm2`` token plugin at /lib/x86_64-linux-gnu/cryptsetup/
  (the only place libcryptsetup looks) and the TSS libraries it and tpm2 dlopen;
* the kernel modules for virtio disks, dm-verity, dm-crypt, erofs and their crypto, with
  the modules they depend on (from ``modules.dep``), the kernel's ``modules.builtin*`` and
  ``modules.order``, and the indexes ``depmod -b`` writes for them;
* bastion's ``/init`` (package data ``vm-init.sh``, see that file for its console
  markers) and ``/etc/bastion/storage.sh``, shell functions rendered from the kernel
  storage adapters (:func:`storage_script`): the init opens verity and dm-crypt with
  exactly the argv the ``linux`` platform runs (ADR 0028); and
  ``/etc/bastion/antirollback.sh``, the anti-rollback check a device's initrd runs as
  ``bastion-antirollback.service`` (:mod:`bastion.build.device_initrd`), sourced by the init.

The archive is a ``newc`` cpio written by :mod:`bastion.formats.cpio` (uid/gid 0,
mtime 0, sorted names: the same host files give the same bytes), compressed with zstd
(the ``zstd`` command) or gzip (the Python module, mtime 0). Commands run through
:class:`bastion.io.runner.CommandRunner`; module and library lists are parsed by pure
functions here.
"""

from __future__ import annotations

import enum
import gzip
import os
import shlex
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from bastion.build import device_initrd
from bastion.errors import ConfigError, FormatError
from bastion.formats.cpio import CpioEntry, archive
from bastion.io.runner import CommandRunner, require_tool
from bastion.storage import kernel_crypt, kernel_verity
from bastion.storage.kernel_verity import CorruptionResponse

#: modules the test /init loads, and the crypto they pull in at run time
DEFAULT_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "dm_mod",
    "dm_verity",
    "dm_crypt",
    "erofs",
    "crc32c_generic",
    "crc32c_intel",
    "xts",
    "aesni_intel",
    "sha256_ssse3",
    "efivarfs",
    "qemu_fw_cfg",
    "vfat",  # the ESP, read-only: the booted UKI's security version (anti-rollback)
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
)
#: programs copied with their libraries
DEFAULT_PROGRAMS = ("veritysetup", "cryptsetup", "tpm2")
_LIB = "/lib/x86_64-linux-gnu"
#: libraries copied with theirs: (host path, path in the initrd). libcryptsetup loads token
#: plugins from /lib/x86_64-linux-gnu/cryptsetup only; systemd's plugin and tpm2-tools
#: dlopen the TSS libraries and the TCTI for /dev/tpmrm0, which ldd does not show
DEFAULT_LIBRARIES = (
    (
        "/usr/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-systemd-tpm2.so",
        f"{_LIB}/cryptsetup/libcryptsetup-token-systemd-tpm2.so",
    ),
    *(
        (f"{_LIB}/{name}", f"{_LIB}/{name}")
        for name in (
            "libtss2-esys.so.0",
            "libtss2-rc.so.0",
            "libtss2-mu.so.0",
            "libtss2-tctildr.so.0",
            "libtss2-tcti-device.so.0",
        )
    ),
)
DEFAULT_BUSYBOX = "/bin/busybox"
INIT_RESOURCE = "vm-init.sh"
STORAGE_SCRIPT = "etc/bastion/storage.sh"
#: the anti-rollback check a device's initrd runs (bastion.build.device_initrd), sourced
ANTIROLLBACK_SCRIPT = "etc/bastion/antirollback.sh"
#: the mapping names the test init uses (as the linux platform does)
ROOT_MAPPING = "root"
DATA_MAPPING = "data"
#: checked placeholder values the adapters accept; rendered as the shell's "$1".. "$3"
_SENTINELS = {
    "/dev/bastion-sentinel-data": '"$1"',
    "/dev/bastion-sentinel-hash": '"$2"',
    "5e" * 32: '"$3"',
}
_MODULE_FILES = ("modules.builtin", "modules.builtin.modinfo", "modules.order")
_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp")


class Compression(enum.StrEnum):
    """The initrd compressions the kernel unpacks and bastion writes."""

    ZSTD = "zstd"
    GZIP = "gzip"
    NONE = "none"


def default_init() -> bytes:
    """bastion's test ``/init`` script (package data)."""
    return resources.files("bastion.build").joinpath(INIT_RESOURCE).read_bytes()


def _shell(argv: list[str]) -> str:
    return " ".join(_SENTINELS.get(word) or shlex.quote(word) for word in argv)


def storage_script() -> bytes:
    """``/etc/bastion/storage.sh``: the kernel adapters' argv as shell functions.

    ``bastion_verity_open DATA HASH ROOTHASH OPTIONS`` runs
    :func:`bastion.storage.kernel_verity.open_argv` for the corruption response that
    ``OPTIONS`` (a ``systemd.verity_root_options=`` value) names, one ``case`` branch
    per response; ``bastion_crypt_open_token DEVICE`` runs
    :func:`bastion.storage.kernel_crypt.open_token_argv`. The run-time values are put
    in as positional parameters in place of checked sentinel values.
    """
    data, hash_dev, root_hash = list(_SENTINELS)
    lines = [
        "# generated by bastion.build.initrd.storage_script from bastion.storage.kernel_*:",
        "# the argv the linux platform runs, with the run-time values as parameters",
        "bastion_verity_open() { # DATA HASH ROOTHASH OPTIONS",
        '    case "$4" in',
    ]
    for response in CorruptionResponse:
        argv = kernel_verity.open_argv(data, ROOT_MAPPING, hash_dev, root_hash, response)
        lines.append(f'    "{response.options}") {_shell(argv)} ;;')
    lines += [
        '    *) echo "verity options $4 are not one bastion writes" >&2; return 22 ;;',
        "    esac",
        "}",
        "bastion_crypt_open_token() { # DEVICE",
        f"    {_shell(kernel_crypt.open_token_argv(data, DATA_MAPPING))}",
        "}",
    ]
    return ("\n".join(lines) + "\n").encode()


def _module_name(path_or_name: str) -> str:
    base = path_or_name.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """``modules.dep`` as {module name: (path, [dependency paths])} (names with ``_``)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise FormatError(f"modules.dep line {number} has no ':'")
        out[_module_name(path.strip())] = (path.strip(), deps.split())
    return out


def module_closure(
    dep: dict[str, tuple[str, list[str]]], builtin: Iterable[str], names: Iterable[str]
) -> list[str]:
    """Paths (relative to the module folder) of ``names`` and everything they need, sorted.

    A name the kernel has built in needs nothing; a name that is neither is a ConfigError.
    """
    built = {_module_name(line.strip()) for line in builtin if line.strip()}
    by_path = {path: deps for path, deps in dep.values()}
    wanted: set[str] = set()
    for name in names:
        key = _module_name(name)
        if key in dep:
            stack = [dep[key][0]]
            while stack:
                path = stack.pop()
                if path in wanted:
                    continue
                wanted.add(path)
                stack.extend(by_path.get(path, []))
        elif key not in built:
            raise ConfigError(f"kernel module {name!r} is neither in modules.dep nor built in")
    return sorted(wanted)


def parse_ldd(text: str) -> list[str]:
    """Absolute library paths in ``ldd`` output (the vDSO and missing ones left out).

    A library ``ldd`` reports as "not found" raises ConfigError: the program would not
    start in the guest.
    """
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("linux-vdso", "linux-gate")):
            continue
        if "not found" in line:
            raise ConfigError(f"ldd: {line}")
        target = line.split("=>", 1)[1].split()[0] if "=>" in line else line.split()[0]
        if target.startswith("/"):
            out.append(target)
    return out


@dataclass(frozen=True, slots=True)
class InitrdSpec:
    """What to put into the test initramfs."""

    kernel_release: str
    modules_root: Path = Path("/lib/modules")
    modules: Sequence[str] = DEFAULT_MODULES
    programs: Sequence[str] = DEFAULT_PROGRAMS
    libraries: Sequence[tuple[str, str]] = DEFAULT_LIBRARIES
    busybox: Path = Path(DEFAULT_BUSYBOX)
    init: bytes | None = None
    extra_files: dict[str, bytes] = field(default_factory=dict)


class _Tree:
    """Entries of the archive keyed by name, parents created on demand."""

    def __init__(self) -> None:
        self.entries: dict[str, CpioEntry] = {}

    def dir(self, name: str) -> None:
        name = name.strip("/")
        if not name or name in self.entries:
            return
        self.dir(os.path.dirname(name))
        self.entries[name] = CpioEntry.directory(name)

    def add(self, entry: CpioEntry) -> None:
        self.dir(os.path.dirname(entry.name))
        existing = self.entries.get(entry.name)
        if existing is not None and existing != entry:
            raise ConfigError(f"initrd path /{entry.name} added twice with different content")
        self.entries[entry.name] = entry

    def host_file(self, path: str, dest: str | None = None) -> None:
        """Copy the host file ``path`` (symlinks followed) to ``dest`` (default: same path)."""
        real = Path(path).resolve()
        st = real.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file")
        perm = 0o755 if st.st_mode & 0o111 else 0o644
        self.add(CpioEntry.file((dest or path).lstrip("/"), real.read_bytes(), perm))

    def ordered(self) -> list[CpioEntry]:
        return [self.entries[name] for name in sorted(self.entries)]


def _busybox(tree: _Tree, busybox: Path, runner: CommandRunner) -> None:
    if not busybox.is_file():
        raise ConfigError(f"{busybox} is missing (install busybox-static)")
    tree.host_file(str(busybox), "bin/busybox")
    applets = runner.run([str(busybox.resolve()), "--list"]).text.split()
    for applet in sorted(set(applets)):
        if applet and "/" not in applet and applet not in ("busybox",):
            tree.add(CpioEntry.symlink(f"bin/{applet}", "busybox"))
    for applet in ("modprobe", "poweroff", "insmod", "switch_root"):
        tree.add(CpioEntry.symlink(f"sbin/{applet}", "../bin/busybox"))


def _programs(tree: _Tree, programs: Sequence[str], runner: CommandRunner) -> None:
    for name in programs:
        path = require_tool(name)
        tree.host_file(path)
        for lib in parse_ldd(runner.run(["ldd", path]).text):
            tree.host_file(lib)


def _libraries(tree: _Tree, libraries: Sequence[tuple[str, str]], runner: CommandRunner) -> None:
    for path, dest in libraries:
        if not Path(path).is_file():
            raise ConfigError(f"{path} is missing (systemd's cryptsetup token plugin, libtss2)")
        tree.host_file(path, dest)
        for lib in parse_ldd(runner.run(["ldd", path]).text):
            tree.host_file(lib)


def _modules(tree: _Tree, spec: InitrdSpec, runner: CommandRunner) -> None:
    base = spec.modules_root / spec.kernel_release
    dep_file = base / "modules.dep"
    if not dep_file.is_file():
        raise ConfigError(f"{dep_file} is missing: is the kernel {spec.kernel_release} installed?")
    builtin_file = base / "modules.builtin"
    builtin = builtin_file.read_text().splitlines() if builtin_file.is_file() else []
    paths = module_closure(parse_modules_dep(dep_file.read_text()), builtin, spec.modules)
    with tempfile.TemporaryDirectory(prefix="bastion-initrd-") as tmp:
        stage = Path(tmp) / "lib" / "modules" / spec.kernel_release
        stage.mkdir(parents=True)
        for rel in paths:
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((base / rel).read_bytes())
        for name in _MODULE_FILES:
            if (base / name).is_file():
                (stage / name).write_bytes((base / name).read_bytes())
        runner.run(["depmod", "-b", tmp, spec.kernel_release])
        for root, _dirs, files in os.walk(stage):
            for name in files:
                full = Path(root) / name
                rel = full.relative_to(tmp).as_posix()
                tree.add(CpioEntry.file(rel, full.read_bytes()))


def initrd_entries(spec: InitrdSpec, runner: CommandRunner | None = None) -> list[CpioEntry]:
    """Every archive member, sorted by name (parents before children)."""
    runner = runner or CommandRunner()
    tree = _Tree()
    for name in _DIRS:
        tree.dir(name)
    tree.add(CpioEntry.char_device("dev/console", 5, 1))
    tree.add(CpioEntry.char_device("dev/null", 1, 3, 0o666))
    _busybox(tree, spec.busybox, runner)
    _programs(tree, spec.programs, runner)
    _libraries(tree, spec.libraries, runner)
    _modules(tree, spec, runner)
    tree.add(CpioEntry.file("init", spec.init if spec.init is not None else default_init(), 0o755))
    tree.add(CpioEntry.file(STORAGE_SCRIPT, storage_script()))
    tree.add(CpioEntry.file(ANTIROLLBACK_SCRIPT, device_initrd.antirollback_script()))
    for name, content in sorted(spec.extra_files.items()):
        tree.add(CpioEntry.file(name.lstrip("/"), content))
    return tree.ordered()


def compress(data: bytes, how: str, runner: CommandRunner | None = None) -> bytes:
    """``data`` compressed for the kernel's initramfs unpacker (zstd, gzip or none)."""
    names = [str(c) for c in Compression]
    if how not in names:
        raise ConfigError(f"initrd compression {how!r}: expected one of {names}")
    if how == Compression.NONE:
        return data
    if how == Compression.GZIP:
        return gzip.compress(data, compresslevel=6, mtime=0)
    runner = runner or CommandRunner()
    return runner.run(["zstd", "-q", "-c", "-6", "--no-progress"], input=data).stdout


def build_initrd(
    spec: InitrdSpec, *, compression: str = Compression.ZSTD, runner: CommandRunner | None = None
) -> bytes:
    """The compressed initramfs for ``spec``."""
    runner = runner or CommandRunner()
    return compress(archive(initrd_entries(spec, runner)), compression, runner)


def host_kernel_release(kernel: Path) -> str:
    """The release of a Debian kernel image from its name (``vmlinuz-<release>``)."""
    name = kernel.name
    if not name.startswith("vmlinuz-") or len(name) == len("vmlinuz-"):
        raise ConfigError(f"cannot tell the kernel release from {kernel} (vmlinuz-<release>)")
    return name[len("vmlinuz-") :]


def host_kernels(boot: Path = Path("/boot")) -> list[Path]:
    """The host's kernels (``/boot/vmlinuz-*``), sorted."""
    return sorted(boot.glob("vmlinuz-*"))
