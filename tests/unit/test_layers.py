"""The layer map of docs/architecture.md, enforced: every module's imports, parsed with ``ast``.

Rules (dependencies point down only):

* ``formats/`` imports nothing of bastion but ``errors``, ``limits`` and ``formats``;
* ``device/`` never imports ``build/`` or ``server/``;
* ``trust/`` and ``storage/`` import none of ``device/``, ``build/``, ``server/``, ``cli/``;
* ``tpm/`` imports none of ``storage/``, ``trust/``, ``device/``, ``build/``, ``server/``;
* nothing below ``cli/`` calls ``sys.exit`` (or raises ``SystemExit``).

Imports inside functions and under ``TYPE_CHECKING`` count too: a lazy import is still a
dependency. The checker itself is tested on small sources, so a rule cannot pass by
matching nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "bastion"

#: package -> the bastion packages it must not import (None: only the allowed ones)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "device": ("build", "server"),
    "trust": ("device", "build", "server", "cli"),
    "storage": ("device", "build", "server", "cli"),
    "tpm": ("storage", "trust", "device", "build", "server"),
}
#: formats/ may import only these of bastion
FORMATS_ALLOWED = ("errors", "limits", "formats")


@dataclass(frozen=True, slots=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every absolute module name imported anywhere in ``tree`` (relative ones resolved)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from bastion import build` imports bastion.build
            found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
    return found


def _layer(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "bastion" or len(parts) < 2:
        return None
    return parts[1]


def _exits(tree: ast.AST) -> list[tuple[int, str]]:
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "exit"
                and isinstance(func.value, ast.Name)
                and func.value.id == "sys"
            ):
                hits.append((node.lineno, "calls sys.exit"))
            if isinstance(func, ast.Name) and func.id in ("exit", "quit"):
                hits.append((node.lineno, f"calls {func.id}()"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            if any(alias.name == "exit" for alias in node.names):
                hits.append((node.lineno, "imports sys.exit"))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                hits.append((node.lineno, "raises SystemExit"))
    return hits


def check_source(source: str, module: str, *, is_package: bool = False) -> list[Violation]:
    """The layer violations of one module's source."""
    tree = ast.parse(source)
    own = _layer(module)
    out: list[Violation] = []
    for line, name in imported_modules(tree, module, is_package):
        target = _layer(name)
        if target is None or own is None:
            continue
        if own == "formats" and target not in FORMATS_ALLOWED:
            out.append(Violation(module, line, f"formats/ imports {name}"))
        if target in FORBIDDEN.get(own or "", ()):
            out.append(Violation(module, line, f"{own}/ imports {name}"))
    if own != "cli":
        out.extend(Violation(module, line, what) for line, what in _exits(tree))
    return out


def check_tree(root: Path) -> list[Violation]:
    out: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        out.extend(
            check_source(
                path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py"
            )
        )
    return sorted(set(out), key=str)


def test_package_follows_the_layer_map() -> None:
    assert SRC.is_dir(), SRC
    assert len(list(SRC.rglob("*.py"))) > 50  # the walk really sees the package
    violations = check_tree(SRC)
    assert violations == [], "\n".join(str(v) for v in violations)


# --- the checker catches each kind of violation (negative table) ---------------------------

CASES = [
    ("bastion.formats.x", "from bastion.io import files", "formats/ imports bastion.io"),
    ("bastion.formats.x", "import bastion.trust.keys", "formats/ imports bastion.trust.keys"),
    ("bastion.formats.x", "from bastion import tpm", "formats/ imports bastion.tpm"),
    ("bastion.formats.x", "from ..storage import sealed", "formats/ imports bastion.storage"),
    ("bastion.device.boot", "from bastion.build import image", "device/ imports bastion.build"),
    ("bastion.device.boot", "from bastion import build", "device/ imports bastion.build"),
    (
        "bastion.device.boot",
        "def f():\n    from bastion.build.image import read_layout\n",
        "device/ imports bastion.build.image",
    ),
    (
        "bastion.device.boot",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bastion.server.app\n",
        "device/ imports bastion.server.app",
    ),
    ("bastion.device.x", "from ..build import image", "device/ imports bastion.build"),
    ("bastion.trust.image", "from bastion.device import boot", "trust/ imports bastion.device"),
    ("bastion.trust.image", "import bastion.build.fs", "trust/ imports bastion.build.fs"),
    ("bastion.trust.image", "from bastion.server import app", "trust/ imports bastion.server"),
    ("bastion.trust.image", "from bastion.cli import _common", "trust/ imports bastion.cli"),
    ("bastion.storage.x", "from bastion.device import platform", "storage/ imports bastion.device"),
    ("bastion.storage.x", "from bastion.build import fs", "storage/ imports bastion.build"),
    ("bastion.storage.x", "import bastion.cli.main", "storage/ imports bastion.cli.main"),
    ("bastion.tpm.x", "from bastion.storage import sealed", "tpm/ imports bastion.storage"),
    ("bastion.tpm.x", "from bastion.trust import keys", "tpm/ imports bastion.trust"),
    ("bastion.tpm.x", "from bastion.device import boot", "tpm/ imports bastion.device"),
    ("bastion.tpm.x", "from bastion.build import image", "tpm/ imports bastion.build"),
    ("bastion.tpm.x", "from bastion.server import app", "tpm/ imports bastion.server"),
    ("bastion.device.agent", "import sys\nsys.exit(2)\n", "calls sys.exit"),
    ("bastion.server.app", "from sys import exit\n", "imports sys.exit"),
    ("bastion.build.image", "raise SystemExit(1)\n", "raises SystemExit"),
    ("bastion.trust.x", "exit(1)\n", "calls exit()"),
]


@pytest.mark.parametrize(("module", "source", "expected"), CASES)
def test_checker_reports(module: str, source: str, expected: str) -> None:
    found = [v.what for v in check_source(source, module)]
    assert any(expected in what for what in found), found


ALLOWED = [
    ("bastion.formats.x", "from bastion.errors import FormatError\nfrom . import gpt\n"),
    ("bastion.formats.x", "from bastion.limits import MiB\nimport hashlib\n"),
    ("bastion.device.boot", "from bastion.trust import image\nfrom bastion.storage import x\n"),
    ("bastion.trust.image", "from bastion.formats import gpt\nfrom bastion.tpm import base\n"),
    ("bastion.build.image", "from bastion.trust.image import ImageTrust\n"),
    ("bastion.cli.main", "import sys\nsys.exit(main())\n"),
    ("bastion.tpm.x", "from bastion.formats import tpm2\nfrom bastion.io import runner\n"),
]


@pytest.mark.parametrize(("module", "source"), ALLOWED)
def test_checker_allows(module: str, source: str) -> None:
    assert check_source(source, module) == []


def test_old_device_plane_is_refused() -> None:
    """The device plane as it was (boot.py importing the image builder) fails the check."""
    old = "from bastion.build import image as img\nfrom bastion.trust import measure\n"
    assert [v.what for v in check_source(old, "bastion.device.boot")] == [
        "device/ imports bastion.build",
        "device/ imports bastion.build.image",
    ]


# --- build/image.py builds; it re-exports nothing ------------------------------------------

ROOT = SRC.parents[1]
BUILD_IMAGE = "bastion.build.image"


def own_names(source: str) -> set[str]:
    """Names a module defines itself (functions, classes, assignments), not imports."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def borrowed_uses(source: str, module: str, defined: set[str]) -> list[str]:
    """Names taken from ``module`` that it does not define itself."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    out: list[str] = []
    parent, _, leaf = module.rpartition(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            out.extend(f"imports {a.name}" for a in node.names if a.name not in defined)
        elif isinstance(node, ast.ImportFrom) and node.module == parent:
            aliases.update(a.asname or a.name for a in node.names if a.name == leaf)
        elif isinstance(node, ast.Import):
            aliases.update(a.asname for a in node.names if a.name == module and a.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr not in defined
        ):
            out.append(f"uses {node.value.id}.{node.attr}")
    return out


def test_build_image_reexports_nothing() -> None:
    defined = own_names((SRC / "build" / "image.py").read_text(encoding="utf-8"))
    assert {"ImageSpec", "check_sizes", "check_cmdline"} <= defined
    found: list[str] = []
    for folder in ("src", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            uses = borrowed_uses(path.read_text(encoding="utf-8"), BUILD_IMAGE, defined)
            found.extend(f"{path.relative_to(ROOT)}: {u}" for u in uses)
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from bastion.build.image import read_layout", "imports read_layout"),
        ("from bastion.build import image as img\nimg.predict_pcrs(p)", "uses img.predict_pcrs"),
        ("import bastion.build.image as bi\nbi.ImageTrust", "uses bi.ImageTrust"),
    ],
)
def test_reexport_checker_reports(source: str, expected: str) -> None:
    assert expected in borrowed_uses(source, BUILD_IMAGE, {"build_image"})


def test_reexport_checker_allows_own_names() -> None:
    source = "from bastion.build import image as img\nimg.build_image(s, k, o)\n"
    assert borrowed_uses(source, BUILD_IMAGE, {"build_image"}) == []
