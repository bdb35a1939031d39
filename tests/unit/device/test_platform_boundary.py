"""The boot chain's sources touch hardware only through the Platform; the sim platform's
own surface (EFI variables, console, partition writes) refuses what it must."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from bastion.device.platform.base import ConsoleKind
from bastion.device.platform.sim import SimPlatform, create_sim_folder
from bastion.errors import ConfigError, LimitError
from bastion.limits import PLATFORM_EFI_VAR_MAX_SIZE

DEVICE = Path(__file__).resolve().parents[3] / "src" / "bastion" / "device"
#: the boot chain: everything it reads or writes goes through its Platform
CHAIN_MODULES = (
    "boot/efi_chain.py",
    "boot/firmware.py",
    "boot/loader.py",
    "boot/stub.py",
    "boot/data.py",
    "boot/policy.py",
)
#: modules that reach a disk or a file directly; the chain must not import them
RAW_ACCESS = (
    "bastion.storage.disk_image",
    "bastion.storage.luks2_io",
    "bastion.storage.verity_reader",
    "bastion.io.files",
)
#: the sim platform: only sim entry points (boot/__init__.py ``read_eventlog``) name it
SIM = "SimPlatform"
#: Path methods that open files
RAW_METHODS = {"read_bytes", "write_bytes", "read_text", "write_text"}


def raw_access(source: str) -> list[str]:
    """What in ``source`` reaches hardware other than through a Platform."""
    found: list[str] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found.extend(f"imports {n}" for n in names if n in RAW_ACCESS)
            if node.module in ("os", "io") or node.module.startswith("os."):
                found.append(f"imports from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in RAW_ACCESS or alias.name in ("os", "io"):
                    found.append(f"imports {alias.name}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append("calls open()")
            elif isinstance(func, ast.Attribute) and func.attr in RAW_METHODS:
                found.append(f"calls {func.attr}()")
            elif (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.value.id in ("os", "io")
            ):
                found.append(f"calls {func.value.id}.{func.attr}()")
    # the chain itself (class BootChain, or a module of helpers) never names the sim
    scopes = [
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name in ("BootChain", "EfiBootChain")
    ]
    for scope in scopes or [tree]:
        for node in ast.walk(scope):
            if isinstance(node, ast.Name) and node.id == SIM:
                found.append(f"names {SIM}")
    return found


@pytest.mark.parametrize("module", CHAIN_MODULES)
def test_chain_sources_use_only_the_platform(module: str) -> None:
    path = DEVICE / module
    assert path.is_file(), path
    assert raw_access(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("module", "name", "stages"),
    [
        ("boot/efi_chain.py", "EfiBootChain", {"firmware", "loader", "stub", "initrd", "running"}),
    ],
)
def test_boot_chain_takes_a_platform(module: str, name: str, stages: set[str]) -> None:
    tree = ast.parse((DEVICE / module).read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    annotation = init.args.args[1].annotation
    assert isinstance(annotation, ast.Name) and annotation.id == "Platform"
    found = [n.name for n in cls.body if isinstance(n, ast.FunctionDef)]
    assert stages <= set(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from bastion.storage.disk_image import DiskImage", "imports bastion.storage.disk_image"),
        ("from bastion.storage import verity_reader", "imports bastion.storage.verity_reader"),
        ("from bastion.io.files import atomic_write", "imports bastion.io.files"),
        ("import os", "imports os"),
        ("from os import pwrite", "imports from os"),
        ("with open(p, 'r+b') as h:\n    h.write(b'')", "calls open()"),
        ("fd = os.open(p, 0)", "calls os.open()"),
        ("os.pwrite(fd, b'', 0)", "calls os.pwrite()"),
        ("data = disk.read_bytes()", "calls read_bytes()"),
        ("plat = SimPlatform(folder)", "names SimPlatform"),
        ("class BootChain:\n    def f(self):\n        SimPlatform(x)\n", "names SimPlatform"),
    ],
)
def test_boundary_checker_catches(source: str, expected: str) -> None:
    assert expected in raw_access(source)


def test_boundary_checker_allows_platform_calls() -> None:
    source = (
        "x = plat.read_partition('boot')\nplat.write_partition('bootctl', 0, b'')\n"
        "volume = Luks2Volume.open(storage)\nroot.pread(4096, 0)\n"
        "class BootChain:\n    pass\n"
        "def boot(folder):\n    return BootChain(SimPlatform(folder)).run()\n"
    )
    assert raw_access(source) == []


# --- the sim platform's surface -----------------------------------------------------------

GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def test_efi_variables_of_a_sim_device(tmp_path: Path) -> None:
    plat = create_sim_folder(tmp_path / "dev", "software")
    assert plat.efi_variable(f"SecureBoot-{GUID}") is None  # the sim firmware needs none
    (plat.folder / "efivars").mkdir()
    (plat.folder / "efivars" / f"SecureBoot-{GUID}").write_bytes(b"\x06\x00\x00\x00\x01")
    assert plat.efi_variable(f"SecureBoot-{GUID}") == b"\x06\x00\x00\x00\x01"
    big = plat.folder / "efivars" / f"db-{GUID}"
    big.write_bytes(bytes(PLATFORM_EFI_VAR_MAX_SIZE + 1))
    with pytest.raises(LimitError):
        plat.efi_variable(f"db-{GUID}")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "SecureBoot",
        f"../SecureBoot-{GUID}",
        f"SecureBoot-{GUID}/x",
        f"Secure.Boot-{GUID}",
        f"SecureBoot-{GUID[:-1]}",
        f"SecureBoot-{GUID}0",
        f"{'A' * 65}-{GUID}",
        f"SecureBoot-{GUID.replace('-', '_')}",
    ],
)
def test_efi_variable_names_are_refused(tmp_path: Path, name: str) -> None:
    plat = create_sim_folder(tmp_path / "dev", "software")
    with pytest.raises(ConfigError):
        plat.efi_variable(name)


def test_console_lines_are_kept_in_order(tmp_path: Path) -> None:
    plat = SimPlatform(tmp_path)
    plat.console(ConsoleKind.MARKER, "bastion: rom reached")
    plat.console(ConsoleKind.WARNING, "w")
    assert plat.console_lines == [(ConsoleKind.MARKER, "bastion: rom reached"), ("warning", "w")]
    assert SimPlatform(tmp_path).console_lines == []  # per instance, nothing persisted
    assert SimPlatform(tmp_path) == plat  # the console is not part of the identity


def test_state_round_trips(tmp_path: Path) -> None:
    plat = create_sim_folder(tmp_path / "dev", "software")
    assert plat.state() == {}
    plat.set_state(data_volume=True)
    plat.set_state(reprovision=True)
    assert json.loads((plat.folder / "state.json").read_bytes()) == {
        "data_volume": True,
        "reprovision": True,
    }
