"""Talking to the configured OpenID provider: discovery, JWKS, the code exchange.

One :class:`OidcProvider` per app (built by :func:`build_provider` from the settings,
kept in the app context). It fetches the discovery document and the JWKS (cached for
:data:`~bastion.limits.OIDC_METADATA_CACHE_SECONDS`; the JWKS once more when a token
names a key it does not hold), builds authorization URLs with PKCE S256, and redeems
codes at the token endpoint with ``client_secret_basic``. Every answer is read with a
size bound; deciding what to trust is :mod:`bastion.server.oidc.verify`'s.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from bastion import limits
from bastion.errors import (
    AuthError,
    ConfigError,
    FormatError,
    LimitError,
    SignatureError,
    TransportError,
)
from bastion.formats import strict_json
from bastion.io.files import read_bounded
from bastion.server.oidc import verify
from bastion.server.settings import ServerSettings

DISCOVERY_PATH = "/.well-known/openid-configuration"
#: the issuer and redirect URI are stored in String(512) columns
MAX_STORED_URL = 512


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """What the token endpoint returned (the ID token still unchecked)."""

    id_token: str
    access_token: str | None


def s256_challenge(verifier: str) -> str:
    """The PKCE S256 code challenge of ``verifier`` (RFC 7636 4.2), computed by authlib."""
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    return str(create_s256_code_challenge(verifier))


class OidcProvider:
    """The operator's provider: one issuer, one confidential client."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        scopes: str = "openid email",
        transport: httpx.BaseTransport | None = None,
        monotonic: Any = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._secret = client_secret
        self.scopes = scopes
        self._monotonic = monotonic
        self._http = httpx.Client(
            timeout=limits.OIDC_HTTP_TIMEOUT_SECONDS, transport=transport, follow_redirects=False
        )
        self._lock = threading.Lock()
        self._metadata: tuple[float, verify.ProviderMetadata] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None

    def close(self) -> None:
        self._http.close()

    # --- fetching -----------------------------------------------------------------------

    def _read(self, request: httpx.Request, what: str) -> tuple[int, bytes]:
        """(status, body) of one request, the body bounded."""
        body = bytearray()
        try:
            response = self._http.send(request, stream=True)
            try:
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limits.OIDC_DOCUMENT_MAX_SIZE:
                        raise LimitError(
                            f"{what} is larger than {limits.OIDC_DOCUMENT_MAX_SIZE} bytes"
                        )
            finally:
                response.close()
        except httpx.HTTPError as exc:
            raise TransportError(f"{what} from {request.url}: {exc}") from exc
        return response.status_code, bytes(body)

    def _get(self, url: str, what: str) -> bytes:
        request = self._http.build_request("GET", url, headers={"Accept": "application/json"})
        status, body = self._read(request, what)
        if status != 200:
            raise TransportError(f"{what} from {url}: HTTP {status}")
        return body

    def metadata(self) -> verify.ProviderMetadata:
        """The provider's discovery document (cached)."""
        with self._lock:
            now = self._monotonic()
            if self._metadata and now - self._metadata[0] < limits.OIDC_METADATA_CACHE_SECONDS:
                return self._metadata[1]
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        meta = verify.parse_discovery(self._get(url, "OIDC discovery document"), self.issuer)
        with self._lock:
            self._metadata = (self._monotonic(), meta)
        return meta

    def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        """The provider's public keys (cached unless ``refresh``)."""
        with self._lock:
            now = self._monotonic()
            cached = self._jwks
            if cached and not refresh and now - cached[0] < limits.OIDC_METADATA_CACHE_SECONDS:
                return cached[1]
        keys = verify.parse_jwks(self._get(self.metadata().jwks_uri, "OIDC JWKS"))
        with self._lock:
            self._jwks = (self._monotonic(), keys)
        return keys

    # --- the flow -------------------------------------------------------------------------

    def authorization_url(
        self, *, redirect_uri: str, state: str, nonce: str, code_verifier: str
    ) -> str:
        """Where to send the browser: code flow, PKCE S256, state and nonce."""
        endpoint = self.metadata().authorization_endpoint
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": s256_challenge(code_verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> TokenAnswer:
        """Redeem ``code`` at the token endpoint; AuthError when the provider refuses it."""
        endpoint = self.metadata().token_endpoint
        # client_secret_basic: id and secret are form-urlencoded first (RFC 6749 2.3.1)
        pair = f"{quote(self.client_id, safe='')}:{quote(self._secret, safe='')}"
        request = self._http.build_request(
            "POST",
            endpoint,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            headers={
                "Accept": "application/json",
                "Authorization": "Basic " + base64.b64encode(pair.encode()).decode(),
            },
        )
        status, content = self._read(request, "OIDC token answer")
        try:
            body = strict_json.loads_object(
                content,
                what="OIDC token answer",
                max_size=limits.OIDC_DOCUMENT_MAX_SIZE,
            )
        except FormatError:
            if status != 200:
                raise TransportError(f"OIDC token endpoint answered HTTP {status}") from None
            raise
        if status != 200:
            error = str(body.get("error", "unknown"))[:64]
            if status in (400, 401):
                raise AuthError(f"the OIDC provider refused the authorization code: {error}")
            raise TransportError(f"OIDC token endpoint answered HTTP {status}")
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise FormatError("the OIDC token answer has no id_token")
        access = body.get("access_token")
        return TokenAnswer(
            id_token=id_token, access_token=access if isinstance(access, str) else None
        )

    def verify(self, answer: TokenAnswer, *, nonce: str, now: dt.datetime) -> verify.IdTokenClaims:
        """Check the ID token; fetch the JWKS once more if the signing key is unknown."""
        meta = self.metadata()

        def attempt(keys: dict[str, Any]) -> verify.IdTokenClaims:
            return verify.verify_id_token(
                answer.id_token,
                keys,
                issuer=self.issuer,
                client_id=self.client_id,
                nonce=nonce,
                algorithms=meta.id_token_algs,
                now=now,
                access_token=answer.access_token,
            )

        try:
            return attempt(self.jwks())
        except (SignatureError, FormatError):
            return attempt(self.jwks(refresh=True))  # keys rotate; a second miss is final


def build_provider(
    settings: ServerSettings, *, transport: httpx.BaseTransport | None = None
) -> OidcProvider | None:
    """The configured provider, or None when OIDC sign-in is off (no issuer)."""
    if not settings.oidc_issuer:
        return None
    try:
        issuer = verify.check_endpoint(settings.oidc_issuer, "oidc_issuer")
        if settings.oidc_redirect_uri is not None:
            verify.check_endpoint(settings.oidc_redirect_uri, "oidc_redirect_uri")
    except FormatError as exc:
        raise ConfigError(str(exc)) from exc
    if len(issuer) > MAX_STORED_URL:
        raise ConfigError(f"oidc_issuer is longer than {MAX_STORED_URL} characters")
    if not settings.oidc_client_id:
        raise ConfigError("oidc_issuer is set but oidc_client_id is not")
    if settings.oidc_client_secret_file is not None:
        raw = read_bounded(settings.oidc_client_secret_file, 4096, "OIDC client secret file")
        secret = raw.decode("utf-8", "strict").strip()
    else:
        secret = (settings.oidc_client_secret or "").strip()
    if not secret:
        raise ConfigError(
            "OIDC needs a client secret: BASTION_SERVER_OIDC_CLIENT_SECRET or "
            "oidc_client_secret_file"
        )
    if len(settings.oidc_redirect_uri or "") > MAX_STORED_URL:
        raise ConfigError(f"oidc_redirect_uri is longer than {MAX_STORED_URL} characters")
    if "openid" not in settings.oidc_scopes.split():
        raise ConfigError("oidc_scopes must contain 'openid'")
    return OidcProvider(issuer, settings.oidc_client_id, secret, scopes=settings.oidc_scopes)
