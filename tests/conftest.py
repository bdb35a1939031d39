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
    """Import ``name`` or skip (fail in CI) naming the pip extra that provides it."""
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
