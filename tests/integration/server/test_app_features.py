"""The server's one explicit router list, and per-app objects in the app context."""

from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

from fastapi import FastAPI

import bastion.server as server_pkg
from bastion.server.app import features
from bastion.server.context import AppContext, app_context
from bastion.server.devices.ca import DeviceCa
from bastion.server.enrollment.service import EnrollmentService

SRC = Path(__file__).resolve().parents[3] / "src" / "bastion"


def _feature_packages() -> set[str]:
    found = set()
    for info in pkgutil.iter_modules(server_pkg.__path__):
        name = f"bastion.server.{info.name}.routes"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            found.add(name)
    return found


def test_every_feature_router_is_in_the_one_list() -> None:
    listed = [module.__name__ for module in features()]
    assert len(listed) == len(set(listed))
    assert set(listed) == _feature_packages()
    assert all(callable(module.install) for module in features())


def test_app_factory_does_not_discover_features() -> None:
    text = (SRC / "server" / "app.py").read_text()
    assert "pkgutil" not in text
    assert "import_module" not in text


def test_every_listed_router_is_mounted(app: FastAPI) -> None:
    paths = set(app.openapi()["paths"])
    for expected in (
        "/v1/health",
        "/v1/enroll/begin",
        "/v1/device/attestation",
        "/v1/crl",
        "/v1/orgs",
        "/v1/fleets/{fleet_id}/ek-policy",
    ):
        assert expected in paths, expected


def test_per_app_objects_live_in_the_context(app: FastAPI) -> None:
    ctx = app_context(app)
    assert isinstance(ctx, AppContext)
    assert isinstance(ctx.device_ca, DeviceCa)
    assert isinstance(ctx.enrollment, EnrollmentService)
    assert ctx.enrollment.ca is ctx.device_ca
    assert set(vars(app.state)["_state"]) == {"ctx"}  # nothing else on app.state


def test_src_reads_app_state_in_one_place() -> None:
    users = []
    for path in sorted(SRC.rglob("*.py")):
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]
            if re.search(r"\bapp\.state\.\w+", code) and "``" not in code:
                users.append((path.relative_to(SRC).as_posix(), code.strip()))
    assert users == [
        ("server/app.py", "app.state.ctx = ctx"),
        ("server/context.py", "ctx = app.state.ctx"),
    ]
