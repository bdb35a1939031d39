"""Shared test fixtures: locating reference tools, strict runs, and a clean work tree.

``need_tool("veritysetup")`` returns the tool's path. When the tool is missing the test
is skipped with a message naming the Debian package, except in a strict run (``CI=true``
or ``BASTION_STRICT_TESTS=1``, which ``make test`` sets) where a missing tool is a failure
and any skipped test fails the whole run: interop tests may never silently vanish.

Every test runs with its own temporary folder as the current directory, and the run fails
if the repository's work tree changed under it (a test writing into the tree).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bastion.io.runner import TOOL_PACKAGES, find_tool

IN_CI = os.environ.get("CI", "").lower() == "true" or os.environ.get("BASTION_STRICT_TESTS") == "1"
REPO = Path(__file__).resolve().parent.parent


def need_tool(name: str, package: str | None = None) -> str:
    """Path of ``name``; skip (or fail in CI) naming the package when it is missing."""
    path = find_tool(name)
    if path is None:
        pkg = package or TOOL_PACKAGES.get(name, name)
        message = f"{name} is not installed (Debian package {pkg!r})"
        if IN_CI:
            pytest.fail(f"{message}; CI must install it in .ci/run", pytrace=False)
        pytest.skip(message)
    return path


def need_module(name: str, pip_name: str | None = None) -> None:
    """Import ``name`` or skip (fail in CI) naming the pip extra that provides it.

    Only for third-party modules: bastion's own modules are imported plainly, so an
    import error in them fails the test instead of hiding behind a skip."""
    if name.split(".", maxsplit=1)[0] == "bastion":
        raise ValueError(f"need_module({name!r}): import bastion's own modules directly")
    try:
        __import__(name)
    except ImportError:
        message = f"Python module {name!r} is not installed (pip install {pip_name or name})"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True)
def _own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in its own temporary folder, never in the work tree."""
    monkeypatch.chdir(tmp_path)


_TREE_KEY = pytest.StashKey[str | None]()


def _tree_state() -> str | None:
    """``git status`` of the repository (None outside a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config.stash[_TREE_KEY] = _tree_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    before = session.config.stash.get(_TREE_KEY, None)
    after = _tree_state()
    problems: list[str] = []
    if before is not None and after is not None and before != after:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        problems.append("the tests changed the work tree: " + "; ".join(new[:10]))
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if IN_CI and skipped:
        problems.append(f"{skipped} test(s) skipped in a strict run (zero skips allowed)")
    for problem in problems:
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(f"bastion: {problem}", red=True, bold=True)
    if problems and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder for one test."""
    return tmp_path


try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "bastion", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
    )
    settings.load_profile("bastion")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


# --- TPM fixtures (tpm/swtpm.py, tpm/tss.py, tpm/software.py) -----------------------------


class TpmRig:
    """An open Tpm plus how to power-cycle it (PCRs reset, NV and seeds kept).

    ``power_cycle()`` closes the current connection and returns a fresh open ``Tpm``
    on the same state; ``tpm`` always names the current one.
    """

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.swtpm: object | None = None
        self.tpm = self._open()

    def _open(self):  # type: ignore[no-untyped-def]
        if self.kind == "software":
            from bastion.tpm.software import SoftwareTpm

            return SoftwareTpm(self.tmp_path / "tpm.state")
        from bastion.tpm.swtpm import Swtpm
        from bastion.tpm.tss import TssTpm

        if self.swtpm is None:
            self.swtpm = Swtpm.start(self.tmp_path / "swtpm")
        return TssTpm(self.swtpm.uri)  # type: ignore[attr-defined]

    @property
    def uri(self) -> str:
        """The TPM URI naming this TPM (``--tpm`` spelling)."""
        if self.kind == "software":
            return f"software:{self.tmp_path / 'tpm.state'}"
        return str(self.swtpm.uri)  # type: ignore[attr-defined]

    def power_cycle(self):  # type: ignore[no-untyped-def]
        """Reset the TPM as a reboot would and return the reopened Tpm."""
        if self.kind == "software":
            self.tpm.power_cycle()
            return self.tpm
        self.tpm.close()
        self.swtpm.restart()  # type: ignore[attr-defined]
        self.tpm = self._open()
        return self.tpm

    def close(self) -> None:
        self.tpm.close()
        if self.swtpm is not None:
            self.swtpm.stop()  # type: ignore[attr-defined]


def need_tss() -> None:
    """swtpm + tpm2-pytss, or skip (fail in CI) naming the packages."""
    need_tool("swtpm")
    need_module("tpm2_pytss", "'bastion[tpm]' (needs Debian libtss2-dev, pkg-config)")


@pytest.fixture
def swtpm(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A private swtpm (free ports, own state folder), stopped by PID afterwards."""
    need_tss()
    from bastion.tpm.swtpm import Swtpm

    with Swtpm.start(tmp_path / "swtpm") as tpm:
        yield tpm


@pytest.fixture(params=["software", "tss"])
def tpm_rig(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Each TPM backend in turn, fresh: the software TPM and tpm2-pytss over swtpm."""
    if request.param == "tss":
        need_tss()
    rig = TpmRig(request.param, tmp_path)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def tpm_backend(tpm_rig: TpmRig):  # type: ignore[no-untyped-def]
    """An open Tpm of each backend (see ``tpm_rig``)."""
    return tpm_rig.tpm
