"""The operator's HTTP client for the fleet API, and where its credentials are kept.

``bastion login`` stores the server URL, the session (or personal API) token and an
optional CA file in :func:`config_path` (``$BASTION_CONFIG`` or
``~/.config/bastion/operator.json``), written atomically with mode 0600. Every operator
command builds an :class:`ApiClient` from it (``$BASTION_SERVER``/``$BASTION_TOKEN``
and flags override it). Errors come back as the server's one-line ``detail`` mapped to
the same :mod:`bastion.errors` class the server raised (the codes of
:mod:`bastion.server.errors`), so the CLI prints one line with the usual exit code.

This module imports no server code but the settings' loopback check (no FastAPI): the
CLI stays light. Plain ``http://`` is refused for any host but a loopback one.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bastion import limits
from bastion.errors import (
    AttestationRequiredError,
    AuthError,
    BackendError,
    BastionError,
    ConfigError,
    ConflictError,
    FormatError,
    LimitError,
    NotFoundError,
    RateLimitError,
    ReauthRequiredError,
    TransportError,
    VerificationError,
)
from bastion.formats import strict_json
from bastion.io.files import atomic_write, read_bounded

#: error code in a response body -> the bastion error the client raises
ERROR_CODES: dict[str, type[BastionError]] = {
    "too_large": LimitError,
    "bad_request": FormatError,
    "invalid": FormatError,
    "rate_limited": RateLimitError,
    "unauthenticated": AuthError,
    "forbidden": AuthError,
    "verification_failed": VerificationError,
    "not_found": NotFoundError,
    "method_not_allowed": NotFoundError,
    "conflict": ConflictError,
    "upstream": TransportError,
    "unavailable": BackendError,
    "internal": BackendError,
    "oidc_required": AuthError,
    "reauth_required": ReauthRequiredError,
    "attestation_required": AttestationRequiredError,
}
MAX_RESPONSE = 16 * limits.HTTP_MAX_BODY


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


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash; ConfigError unless https, or http to loopback.

    Plain ``http://`` would send the password and the bearer token in the clear, so it
    is accepted only for a loopback host (``localhost``, 127.0.0.0/8, ``::1``), where
    the server itself also allows it.
    """
    from bastion.server.settings import is_loopback

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"server URL {url!r} must start with http:// or https://")
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError as exc:
        raise ConfigError(f"server URL {url!r} is malformed: {exc}") from exc
    if not host:
        raise ConfigError(f"server URL {url!r} names no host")
    if url.startswith("http://") and not is_loopback(host):
        raise ConfigError(
            f"refusing plain http:// to {host!r}: the password and token would travel "
            "unencrypted; use https:// (with --ca-file for a private CA) or a loopback address"
        )
    return url.rstrip("/")


class ApiClient:
    """Calls the fleet API; raises the bastion error matching the server's answer."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
        verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self.server = check_server_url(server)
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

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

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, json_body: Any = None) -> Any:
        """One request; the decoded JSON answer (None for 204)."""
        try:
            response = self._http.request(method, path, json=json_body)
        except httpx.HTTPError as exc:
            raise TransportError(f"{method} {self.server}{path}: {exc}") from exc
        if len(response.content) > MAX_RESPONSE:
            raise LimitError(f"{method} {path}: answer of {len(response.content)} bytes")
        if response.status_code >= 400:
            raise self._error(method, path, response)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return strict_json.loads(response.content, what=f"{method} {path} answer")
        except FormatError as exc:
            raise FormatError(f"{method} {path}: the answer is not strict JSON: {exc}") from exc

    def redirect_location(self, path: str) -> str:
        """``GET path`` without following it; the ``Location`` of the redirect answer."""
        try:
            response = self._http.request("GET", path, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise TransportError(f"GET {self.server}{path}: {exc}") from exc
        if response.status_code >= 400:
            raise self._error("GET", path, response)
        location = response.headers.get("location")
        if response.status_code not in (302, 303) or not location:
            raise TransportError(f"GET {path}: expected a redirect, got {response.status_code}")
        return str(location)

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> BastionError:
        try:
            body = strict_json.loads(response.content, what="error body")
        except FormatError:
            body = None
        code = body.get("error") if isinstance(body, dict) else None
        detail = body.get("detail") if isinstance(body, dict) else None
        cls = ERROR_CODES.get(str(code), TransportError)
        text = str(detail or response.text[:200] or response.reason_phrase)
        return cls(f"{method} {path}: HTTP {response.status_code}: {text}")

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
