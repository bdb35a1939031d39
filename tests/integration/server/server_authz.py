"""The authorization matrix machinery: principals, access levels, rows, and the world.

The matrix is declarative. Each :class:`Row` names a route (method + path template), the
access *level* it requires and its success status. :data:`LEVELS` says, for every
level, what each principal must get: ``OK`` (the row's success status) or a denial
status. The test (test_authz_matrix.py) runs every row against every principal on a
fresh :class:`World` and compares; any 2xx not marked ``OK`` is a failure.

Other features extend it without editing this file: a module ``authz_<feature>.py``
next to it may define any of

* ``ROWS: list[Row]`` for its routes,
* ``LEVELS: dict[str, dict[str, int | str]]`` for new access levels,
* ``add_principals(world: World) -> None`` adding principals to ``world.headers``
  (e.g. ``provisioning_key``, ``device``, ``other_device``, ``revoked_device``), and
  extra ids to ``world.vars`` for path templates.

Principal names: see :data:`PRINCIPALS`. Path templates are ``str.format``-ed with
``world.vars`` plus whatever the row's ``setup`` returns.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

OK = "ok"
PASSWORD = "correct horse battery"

#: every principal the matrix knows; features add the device-side ones
PRINCIPALS = (
    "anonymous",
    "org_owner",
    "owner",
    "admin",
    "operator",
    "viewer",
    "outsider",
    "read_token",
    "expired_token",
    "revoked_token",
    "provisioning_key",
    "device",
    "other_device",
    "revoked_device",
)

USERS = ("org_owner", "owner", "admin", "operator", "viewer", "outsider")
_NOT_USER = {
    "anonymous": 401,
    "expired_token": 401,
    "revoked_token": 401,
    "provisioning_key": 403,
    "device": 403,
    "other_device": 403,
    "revoked_device": 401,
}


def _level(ok: set[str], *, outsider: int = 404, weaker: int = 403) -> dict[str, int | str]:
    table: dict[str, int | str] = dict(_NOT_USER)
    for name in USERS:
        if name in ok:
            table[name] = OK
        elif name == "outsider":
            table[name] = outsider
        else:
            table[name] = weaker
    # read_token is a 'read'-scoped PAT of ``owner``: capped at viewer
    table["read_token"] = OK if "viewer" in ok else weaker
    return table


FLEET_ROLES = ("org_owner", "owner", "admin", "operator", "viewer")

#: level -> principal -> OK or the denial status
LEVELS: dict[str, dict[str, int | str]] = {
    "public": {
        **{p: OK for p in PRINCIPALS},
        **{"expired_token": 401, "revoked_token": 401, "revoked_device": 401},
    },
    "user": _level(set(USERS)),
    "session": {**_level(set(USERS)), "read_token": 403},
    "org_member": _level(set(FLEET_ROLES)),
    "org_owner": {**_level({"org_owner"}), "read_token": 403},
    "viewer": _level(set(FLEET_ROLES)),
    "operator": _level({"org_owner", "owner", "admin", "operator"}),
    "admin": _level({"org_owner", "owner", "admin"}),
    "owner": _level({"org_owner", "owner"}),
}
LEVELS["nobody"] = {**_level(set(), outsider=403), "read_token": 403}
# 'user' routes that create organisations need a session or an admin-scoped token
LEVELS["user_admin_scope"] = {**LEVELS["user"], "read_token": 403}


@dataclass
class World:
    """Two organisations, their fleets, users in every role, and their credentials."""

    client: TestClient
    ctx: Any
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=itertools.count)
    tag: str = ""
    #: anything a feature's add_principals wants to keep (e.g. a provisioning key secret)
    extra: dict[str, Any] = field(default_factory=dict)

    def post(self, who: str, path: str, json: Any = None) -> dict[str, Any]:
        response = self.client.post(path, json=json, headers=self.headers[who])
        assert response.status_code in (200, 201), (path, response.text)
        result: dict[str, Any] = response.json()
        return result

    def put(self, who: str, path: str, json: Any) -> None:
        response = self.client.put(path, json=json, headers=self.headers[who])
        assert response.status_code == 200, (path, response.text)

    def make_user(self, name: str) -> str:
        from bastion.server.users import service

        email = f"{name}{self.tag}@example.org"
        with self.ctx.db.session() as session:
            user_id = service.create_user(self.ctx, session, email, PASSWORD, "cli:test").id
        self.users[name] = user_id
        self.emails[name] = email
        return user_id

    def login(self, name: str) -> dict[str, str]:
        response = self.client.post(
            "/v1/auth/login", json={"email": self.emails[name], "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def accept(self, email: str, invitation_id: str) -> None:
        """Log in as the holder of ``email`` and accept the invitation."""
        login = self.client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        answer = self.client.post(f"/v1/me/invitations/{invitation_id}/accept", headers=headers)
        assert answer.status_code == 200, answer.text

    def unique(self, stem: str) -> str:
        return f"{stem}{self.tag}-{next(self.counter)}"

    def add_member(self, who: str, email: str, fleet_role: str | None = None) -> None:
        """As org_owner: invite ``email`` to organisation A, accept as its holder (and
        give a role in fleet A)."""
        invitation = self.post(
            "org_owner",
            f"/v1/orgs/{self.vars['org']}/invitations",
            {"email": email, "role": "member"},
        )
        self.accept(email, invitation["id"])
        if fleet_role:
            self.put(
                "org_owner",
                f"/v1/fleets/{self.vars['fleet']}/members",
                {"email": email, "role": fleet_role},
            )


def build_world(client: TestClient, tag: str = "") -> World:
    """The standard world, then every ``authz_*.py`` module's ``add_principals``.

    ``tag`` makes every name unique so several worlds can share one database.
    """
    world = World(client=client, ctx=client.app.state.ctx, tag=tag)  # type: ignore[attr-defined]
    for name in (*USERS, "target"):
        world.make_user(name)
    for name in USERS:
        world.headers[name] = world.login(name)
    org = world.post("org_owner", "/v1/orgs", {"name": f"org-a{tag}"})["id"]
    world.vars["org"] = org
    fleet = world.post("org_owner", f"/v1/orgs/{org}/fleets", {"name": "fleet-a"})["id"]
    world.vars["fleet"] = fleet
    for role in ("owner", "admin", "operator", "viewer"):
        world.add_member("org_owner", world.emails[role], role)
    world.add_member("org_owner", world.emails["target"])
    world.vars["target"] = world.users["target"]
    org_b = world.post("outsider", "/v1/orgs", {"name": f"org-b{tag}"})["id"]
    world.vars["org_b"] = org_b
    world.vars["fleet_b"] = world.post("outsider", f"/v1/orgs/{org_b}/fleets", {"name": "fleet-b"})[
        "id"
    ]
    world.put("org_owner", f"/v1/fleets/{fleet}/env/EXISTING", {"value": "1"})
    # personal tokens of ``owner``: read-scoped, expired, revoked
    read = world.post("owner", "/v1/me/tokens", {"name": "read", "scopes": ["read"]})
    world.headers["read_token"] = {"Authorization": f"Bearer {read['token']}"}
    expired = world.post("owner", "/v1/me/tokens", {"name": "old", "scopes": ["admin"]})
    _expire_token(world, expired["id"])
    world.headers["expired_token"] = {"Authorization": f"Bearer {expired['token']}"}
    revoked = world.post("owner", "/v1/me/tokens", {"name": "gone", "scopes": ["admin"]})
    client.delete(f"/v1/me/tokens/{revoked['id']}", headers=world.headers["owner"])
    world.headers["revoked_token"] = {"Authorization": f"Bearer {revoked['token']}"}
    world.headers["anonymous"] = {}
    for module in plugin_modules():
        hook = getattr(module, "add_principals", None)
        if hook is not None:
            hook(world)
    return world


def _expire_token(world: World, token_id: str) -> None:
    from bastion.server.users.models import UserToken

    with world.ctx.db.session() as session:
        row = session.get(UserToken, token_id)
        row.expires_at = world.ctx.clock.now() - dt.timedelta(seconds=1)
        session.commit()


Setup = Callable[[World, str], dict[str, Any]]


@dataclass(frozen=True)
class Row:
    """One route: ``method path`` needs ``level``; success is ``ok``.

    ``body`` is sent as JSON (a callable gets the world and principal name);
    ``setup(world, principal)`` runs before each principal's request and returns extra
    path variables, and optionally ``"headers"`` to use instead of the principal's.
    """

    method: str
    path: str
    level: str
    ok: int = 200
    body: Any = None
    setup: Setup | None = None
    #: the route changes the callers' own credentials or 2FA: run it on a fresh world
    fresh: bool = False

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"


def plugin_modules() -> list[Any]:
    """Every ``authz_*.py`` module next to this file (imported once by Python's cache)."""
    here = Path(__file__).parent
    return [importlib.import_module(path.stem) for path in sorted(here.glob("authz_*.py"))]


def all_rows(core: list[Row]) -> list[Row]:
    rows = list(core)
    for module in plugin_modules():
        rows.extend(getattr(module, "ROWS", []))
    return rows


def all_levels() -> dict[str, dict[str, int | str]]:
    levels = dict(LEVELS)
    for module in plugin_modules():
        levels.update(getattr(module, "LEVELS", {}))
    return levels
