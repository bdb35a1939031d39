"""Who is calling: the :class:`Principal`, and the registry that resolves credentials.

Every request is resolved to exactly one frozen :class:`Principal` by
:meth:`AuthRegistry.resolve`:

1. ``Authorization: Bearer <token>``: the token's prefix picks an authenticator
   (``bst_ses_`` sessions and ``bst_pat_`` personal API tokens are the users
   feature's; other features add theirs, e.g. ``bst_dev_`` device keys and
   ``bst_prov_`` provisioning keys). An unknown prefix or a refused token is an
   :class:`~bastion.errors.AuthError` (401): a bad credential never falls back to
   anonymous.
2. else a verified TLS client certificate (mTLS) in the ASGI ``tls`` extension
   (``scope["extensions"]["tls"]["client_cert_chain"]``, PEM strings; see
   :mod:`bastion.server.tlsproto`), given to the certificate authenticator if one is
   registered.
3. else an RFC 9421 request signature (``Signature-Input``; ADR 0032), given to the
   signature authenticator if one is registered (the device agent's way in);
4. else :data:`ANONYMOUS`.

A request carrying both a bearer token and a signature is refused: one credential each.

Features register authenticators from their ``routes.install(app)``::

    from bastion.server.auth.principal import auth_registry
    # resolve_device_key(session, token, now) -> Principal
    auth_registry(app).add_token("bst_dev_", resolve_device_key)
    # resolve_device_cert(session, cert, now) -> Principal
    auth_registry(app).set_certificate(resolve_device_cert)

An authenticator returns a Principal or raises AuthError/ExpiredError/RevokedError.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cryptography import x509
from sqlalchemy.orm import Session

from bastion import limits
from bastion.errors import AuthError


class PrincipalKind(StrEnum):
    """The kinds of caller the fleet API knows."""

    ANONYMOUS = "anonymous"
    USER = "user"
    DEVICE = "device"
    PROVISIONING_KEY = "provisioning_key"


class Via(StrEnum):
    """How the principal proved itself."""

    NONE = "none"
    SESSION = "session"
    PAT = "pat"
    DEVICE_KEY = "device_key"
    CERTIFICATE = "certificate"
    SIGNATURE = "signature"
    PROVISIONING_KEY = "provisioning_key"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated (or anonymous) caller.

    ``org_id``/``fleet_id`` are set for devices and provisioning keys (the one fleet
    they belong to); users get their rights per fleet from memberships. ``scopes``
    caps what a personal API token may do (``read``, ``write``, ``admin``); sessions
    carry every scope. ``two_factor`` says the login passed a second factor (or the
    token was minted by such a session). ``authenticated_at`` (sessions only) is when
    the holder last proved password and second factor (see :mod:`.reauth`).
    """

    kind: PrincipalKind
    id: str = ""
    via: Via = Via.NONE
    org_id: str | None = None
    fleet_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None
    two_factor: bool = False
    client: str = ""
    #: the login behind this session (or the session that minted this token) used OIDC
    oidc: bool = False
    #: when a session's holder last gave password (+ second factor): login or re-auth
    authenticated_at: dt.datetime | None = None

    @property
    def authenticated(self) -> bool:
        """True for every kind but anonymous."""
        return self.kind is not PrincipalKind.ANONYMOUS

    @property
    def actor(self) -> str:
        """How the audit log names this caller, e.g. ``user:ab12...`` or ``device:...``."""
        if not self.authenticated:
            return f"anonymous@{self.client}" if self.client else "anonymous"
        return f"{self.kind.value}:{self.id}"

    @property
    def rate_key(self) -> str:
        """The rate-limit bucket: the principal, or the client address when anonymous."""
        return self.actor if self.authenticated else f"addr:{self.client}"


ANONYMOUS = Principal(kind=PrincipalKind.ANONYMOUS)


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """What a signature authenticator sees of a request: method, path?query, headers."""

    method: str
    target: str
    headers: Mapping[str, str]


TokenAuthenticator = Callable[[Session, str, dt.datetime], Principal]
CertificateAuthenticator = Callable[[Session, x509.Certificate, dt.datetime], Principal]
SignatureAuthenticator = Callable[[Session, SignedMessage, dt.datetime], Principal]


class AuthRegistry:
    """Authenticators by token prefix, plus at most one for client certificates."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenAuthenticator] = {}
        self._certificate: CertificateAuthenticator | None = None
        self._signature: SignatureAuthenticator | None = None

    def add_token(self, prefix: str, authenticator: TokenAuthenticator) -> None:
        """Route bearer tokens starting with ``prefix`` (e.g. ``bst_dev_``) to ``authenticator``."""
        if not prefix.startswith("bst_") or not prefix.endswith("_"):
            raise ValueError(f"token prefix {prefix!r} must look like 'bst_xxx_'")
        if prefix in self._tokens:
            raise ValueError(f"token prefix {prefix!r} registered twice")
        self._tokens[prefix] = authenticator

    def set_certificate(self, authenticator: CertificateAuthenticator) -> None:
        """Resolve verified mTLS client certificates with ``authenticator``."""
        self._certificate = authenticator

    def set_signature(self, authenticator: SignatureAuthenticator) -> None:
        """Resolve RFC 9421 signed requests (``Signature-Input``) with ``authenticator``."""
        self._signature = authenticator

    @property
    def prefixes(self) -> tuple[str, ...]:
        """Registered token prefixes."""
        return tuple(sorted(self._tokens))

    def resolve(
        self,
        session: Session,
        authorization: str | None,
        certificate: x509.Certificate | None,
        now: dt.datetime,
        signed: SignedMessage | None = None,
    ) -> Principal:
        """The principal for these credentials; AuthError when they are present but bad."""
        if signed is not None and authorization:
            raise AuthError("send a bearer token or a request signature, not both")
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise AuthError("Authorization header must be 'Bearer <token>'")
            if len(token) > limits.TOKEN_MAX_LENGTH:
                raise AuthError(
                    f"bearer token is {len(token)} characters, limit {limits.TOKEN_MAX_LENGTH}"
                )
            for prefix, authenticator in self._tokens.items():
                if token.startswith(prefix):
                    return authenticator(session, token, now)
            raise AuthError("bearer token has an unknown prefix")
        if signed is not None:
            if self._signature is None:
                raise AuthError("request signatures are not accepted by this server")
            return self._signature(session, signed, now)
        if certificate is not None and self._certificate is not None:
            return self._certificate(session, certificate, now)
        return ANONYMOUS


def auth_registry(app: Any) -> AuthRegistry:
    """The registry of an app made by :func:`bastion.server.app.create_app`."""
    from bastion.server.context import app_context

    return app_context(app).auth
