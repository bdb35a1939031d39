"""Shared test fixtures: locating reference tools, and failing (not skipping) in CI.

``need_tool("veritysetup")`` returns the tool's path. When the tool is missing the test
is skipped with a message naming the Debian package, except under ``CI=true`` where a
missing tool is a failure: interop tests may never silently vanish in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.io.runner import TOOL_PACKAGES, find_tool

IN_CI = os.environ.get("CI", "").lower() == "true"


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
