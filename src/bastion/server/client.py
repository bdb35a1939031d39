"""The operator's HTTP client for the fleet API, and where its credentials are kept.

``bastion login`` stores the server URL, the session (or personal API) token and an
optional CA file in :func:`config_path` (``$BASTION_CONFIG`` or
``~/.config/bastion/operator.json``), written atomically with mode 0600. Every operator
command builds an :class:`ApiClient` from it (``$BASTION_SERVER``/``$BASTION_TOKEN``
and flags override it). Errors come back as the server's one-line ``detail`` mapped to
the same :mod:`bastion.errors` class the server raised (the one wire-error codec of
:mod:`bastion.io.http`), so the CLI prints one line with the usual exit code.

:class:`ApiClient` is the one client of :mod:`bastion.io.http` plus the operator's
lookups; it imports no server code (no FastAPI): the CLI stays light. Plain ``http://``
is refused for any host but a loopback one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bastion import limits
from bastion.errors import (
    AuthError,
    BastionError,
    ConfigError,
    FormatError,
    NotFoundError,
)
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded
from bastion.io.http import WIRE_ERRORS, HttpClient, check_server_url

#: error code in a response body -> the bastion error the client raises (the one table)
ERROR_CODES: dict[str, type[BastionError]] = {code: w.error for code, w in WIRE_ERRORS.items()}
MAX_RESPONSE = limits.HTTP_MAX_RESPONSE


def config_path() -> Path:
    """Where operator credentials live."""
    explicit = os.environ.get("BASTION_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bastion" / "operator.json"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """Server URL, bearer token and optional CA certificate file."""

    server: str
    token: str | None = None
    ca_file: str | None = None

    def save(self, path: Path | None = None) -> Path:
        """Write atomically with mode 0600 (the token is a secret)."""
        target = path or config_path()
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target, json.dumps(asdict(self), indent=2).encode() + b"\n", mode=0o600)
        return target

    @classmethod
    def load(cls, path: Path | None = None) -> OperatorConfig | None:
        """The stored configuration, or None when there is none."""
        target = path or config_path()
        if not target.exists():
            return None
        mode = target.stat().st_mode & 0o077
        if mode:
            raise ConfigError(
                f"{target} is readable by others (mode {oct(target.stat().st_mode & 0o777)}); "
                "chmod 600 it"
            )
        try:
            data = strict_json.loads_object(
                read_bounded(target, limits.KEY_FILE_MAX_SIZE, "operator config"),
                what=f"operator config {target}",
            )
            return cls(
                server=str(data["server"]),
                token=data.get("token"),
                ca_file=data.get("ca_file"),
            )
        except (FormatError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{target} is not a bastion operator config: {exc}") from exc


class ApiClient(HttpClient):
    """Calls the fleet API; raises the bastion error matching the server's answer."""

    @classmethod
    def from_config(
        cls,
        *,
        server: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        need_token: bool = True,
    ) -> ApiClient:
        """Flags first, then ``$BASTION_SERVER``/``$BASTION_TOKEN``, then the stored config."""
        stored = OperatorConfig.load()
        url = server or os.environ.get("BASTION_SERVER") or (stored.server if stored else None)
        if not url:
            raise ConfigError("no fleet server: run 'bastion login --server URL' or give --server")
        secret = token or os.environ.get("BASTION_TOKEN") or (stored.token if stored else None)
        if need_token and not secret:
            raise AuthError("not logged in: run 'bastion login' or set BASTION_TOKEN")
        ca = ca_file or (stored.ca_file if stored else None)
        return cls(url, secret, ca_file=ca)

    # --- lookups shared by commands -------------------------------------------------------

    def resolve_org(self, ref: str | None) -> dict[str, Any]:
        """An organisation by id or name; the only one when ``ref`` is None."""
        orgs: list[dict[str, Any]] = self.call("GET", "/v1/orgs")
        if ref is None:
            if len(orgs) == 1:
                return orgs[0]
            names = ", ".join(o["name"] for o in orgs) or "none"
            raise ConfigError(f"give --org (you belong to {len(orgs)} organisations: {names})")
        for org in orgs:
            if ref in (org["id"], org["name"]):
                return org
        raise NotFoundError(f"organisation {ref!r} not found among yours")

    def resolve_fleet(self, ref: str) -> dict[str, Any]:
        """A fleet by id, name, or ``org/name``."""
        fleets: list[dict[str, Any]] = self.call("GET", "/v1/fleets")
        org_part, _, name = ref.rpartition("/")
        matches = [f for f in fleets if f["id"] == ref or f["name"] == name]
        if org_part:
            org = self.resolve_org(org_part)
            matches = [f for f in matches if f["org_id"] == org["id"]]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFoundError(f"fleet {ref!r} not found among yours")
        raise ConfigError(f"fleet name {ref!r} is ambiguous: use ORG/NAME or the fleet id")


__all__ = ["ERROR_CODES", "MAX_RESPONSE", "ApiClient", "OperatorConfig", "check_server_url"]
