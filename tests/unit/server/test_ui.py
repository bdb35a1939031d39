"""Dashboard pieces without a server: the nav registry, CSRF tokens, origin checks, cookies."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from bastion.errors import AuthError
from bastion.server.auth.rbac import OrgRole, Role
from bastion.server.ui import nav
from bastion.server.ui.security import (
    CONTENT_SECURITY_POLICY,
    check_csrf,
    check_origin,
    cookie_secure,
    csrf_token,
)


def test_nav_shows_only_mounted_routes_and_reached_roles() -> None:
    mounted = {"ui.fleet", "ui.provisioning_keys", "ui.fleet_members"}
    labels = [e.label for e in nav.visible(mounted, nav.NavScope.FLEET, role=Role.OPERATOR)]
    assert labels == ["Devices", "Members"]  # keys are an admin's; releases not mounted
    labels = [e.label for e in nav.visible(mounted, nav.NavScope.FLEET, role=Role.ADMIN)]
    assert labels == ["Devices", "Members", "Provisioning keys"]
    # a feature that mounts a page named ui.releases appears without touching the dashboard
    plugged = [
        e.label
        for e in nav.visible({*mounted, "ui.releases"}, nav.NavScope.FLEET, role=Role.VIEWER)
    ]
    assert plugged == ["Devices", "Members", "Releases"]
    assert nav.visible({"ui.fleet"}, nav.NavScope.FLEET) == []  # no role: nothing
    org = {"ui.audit", "ui.org_members"}
    member = [e.label for e in nav.visible(org, nav.NavScope.ORG, org_role=OrgRole.MEMBER)]
    owner = [e.label for e in nav.visible(org, nav.NavScope.ORG, org_role=OrgRole.OWNER)]
    assert member == ["Members"] and owner == ["Members", "Audit log"]


def test_csrf_token_is_bound_to_the_session() -> None:
    a, b = csrf_token("bst_ses_a"), csrf_token("bst_ses_b")
    assert a != b and len(a) == 64
    check_csrf(a, a)
    for given in (None, "", b, a[:-1], a + "0", a.upper(), "x" * 10_000):
        with pytest.raises(AuthError):
            check_csrf(a, given)


def _request(headers: dict[str, str], url: str = "http://127.0.0.1:8080/ui/x") -> Request:
    scheme, rest = url.split("://")
    host, _, path = rest.partition("/")
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "scheme": scheme,
        "server": (host.split(":")[0], int(host.split(":")[1]) if ":" in host else 80),
        "path": "/" + path,
        "query_string": b"",
        "headers": [(b"host", host.encode())]
        + [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://127.0.0.1:9999"},
        {"Origin": "https://127.0.0.1:8080"},
        {"Origin": "http://localhost:8080"},
        {"Origin": "null"},
        {"Origin": "garbage"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:8080"},
    ],
)
def test_other_origins_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(AuthError):
        check_origin(_request(headers))


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Origin": "http://127.0.0.1:8080"},
        {"Origin": "HTTP://127.0.0.1:8080"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:8080"},
        {"Sec-Fetch-Site": "none"},
    ],
)
def test_own_origin_passes(headers: dict[str, str]) -> None:
    check_origin(_request(headers))


def _ctx(listen: str, tls: Path | None = None) -> Any:
    return SimpleNamespace(settings=SimpleNamespace(listen_host=listen, tls_cert=tls))


def test_cookie_is_secure_off_loopback() -> None:
    plain = _request({})
    assert not cookie_secure(_ctx("127.0.0.1"), plain)
    assert not cookie_secure(_ctx("::1"), plain)
    assert cookie_secure(_ctx("0.0.0.0", Path("cert.pem")), plain)
    assert cookie_secure(_ctx("127.0.0.1", Path("cert.pem")), plain)
    assert cookie_secure(_ctx("127.0.0.1"), _request({}, "https://127.0.0.1:8443/ui/x"))


def test_csp_allows_no_script() -> None:
    directives = dict(
        d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";") if d.strip()
    )
    assert directives["default-src"] == "'none'"
    assert "script-src" not in directives
    assert directives["frame-ancestors"] == "'none'"
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
