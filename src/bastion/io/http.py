"""The one HTTP client of bastion and the one wire-error codec.

Every caller of the fleet API (the operator CLI, ``device provision``, ``device attest``,
later the agent) goes through :class:`HttpClient`; nothing else in ``src`` imports
httpx but the OIDC provider of the server. The client:

* refuses plain ``http://`` to any host but a loopback one (:func:`check_server_url`);
* has a timeout and stops reading an answer at ``max_response`` bytes
  (:data:`bastion.limits.HTTP_MAX_RESPONSE` unless given);
* parses answers with the one strict JSON loader;
* turns an error answer into the :mod:`bastion.errors` class the server raised, with
  :func:`decode_error`.

The wire-error codec is one table, :data:`WIRE_ERRORS` (code -> status and class). The
server emits with :func:`encode_error` (the handler in :mod:`bastion.server.errors`), the
clients decode with :func:`decode_error`; both read the same table, so they cannot
disagree (tests/unit/io/test_http.py round-trips every code).
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, BinaryIO, Protocol, Self

import httpx

from bastion import limits
from bastion.errors import (
    AttestationRequiredError,
    AuthError,
    BackendError,
    BastionError,
    ConfigError,
    ConflictError,
    ExpiredError,
    FormatError,
    LimitError,
    NotFoundError,
    OidcRequiredError,
    RateLimitError,
    ReauthRequiredError,
    RevokedError,
    TransportError,
    VerificationError,
)
from bastion.formats import strict_json

_UPLOAD_CHUNK = 1 << 20  # bytes per chunk of a streamed upload


@dataclass(frozen=True, slots=True)
class WireError:
    """One error code on the wire: its HTTP status and the bastion class it stands for."""

    status: int
    error: type[BastionError]


#: the one table: error code in a response body -> status and bastion error class
WIRE_ERRORS: Mapping[str, WireError] = MappingProxyType(
    {
        "too_large": WireError(413, LimitError),
        "bad_request": WireError(400, FormatError),
        "invalid": WireError(422, FormatError),  # request validation (pydantic)
        "rate_limited": WireError(429, RateLimitError),
        "unauthenticated": WireError(401, AuthError),
        "forbidden": WireError(403, AuthError),
        "oidc_required": WireError(403, OidcRequiredError),
        "reauth_required": WireError(403, ReauthRequiredError),
        "attestation_required": WireError(403, AttestationRequiredError),
        "verification_failed": WireError(403, VerificationError),
        "not_found": WireError(404, NotFoundError),
        "method_not_allowed": WireError(405, NotFoundError),
        "conflict": WireError(409, ConflictError),
        "upstream": WireError(502, TransportError),
        "unavailable": WireError(503, BackendError),
        "internal": WireError(500, BackendError),
    }
)

#: codes whose detail is the exception's message (the others hide it from clients)
PUBLIC_DETAIL = frozenset(WIRE_ERRORS) - {"unavailable", "internal"}


def encode_error(exc: BaseException, *, authenticated: bool) -> tuple[int, str]:
    """(status, code) of the answer for ``exc``; ``authenticated``: a principal was set.

    An :class:`AuthError` is ``unauthenticated`` (401) without a principal and
    ``forbidden`` (403) with one; ``reauth_required`` needs a principal too.
    """
    code = _code(exc, authenticated)
    return WIRE_ERRORS[code].status, code


def _code(exc: BaseException, authenticated: bool) -> str:
    if isinstance(exc, LimitError):
        return "too_large"
    if isinstance(exc, FormatError):
        return "bad_request"
    if isinstance(exc, RateLimitError):
        return "rate_limited"
    if isinstance(exc, ExpiredError | RevokedError):
        return "unauthenticated"
    if isinstance(exc, OidcRequiredError):
        return "oidc_required"
    if isinstance(exc, ReauthRequiredError) and authenticated:
        return "reauth_required"
    if isinstance(exc, AttestationRequiredError):
        return "attestation_required"
    if isinstance(exc, AuthError):
        return "forbidden" if authenticated else "unauthenticated"
    if isinstance(exc, VerificationError):
        return "verification_failed"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, ConflictError):
        return "conflict"
    if isinstance(exc, TransportError):
        return "upstream"
    if isinstance(exc, BackendError):
        return "unavailable"
    return "internal"


def decode_error(
    status: int, body: bytes, *, what: str, retry_after: str | None = None
) -> BastionError:
    """The bastion error for an error answer (``what`` names the request).

    A known ``error`` code gives its class; an unknown or missing one gives
    :class:`AuthError` for 401/403 and :class:`TransportError` otherwise.
    """
    try:
        data = strict_json.loads(body, what="error body")
    except FormatError:
        data = None
    code = data.get("error") if isinstance(data, dict) else None
    detail = data.get("detail") if isinstance(data, dict) else None
    known = WIRE_ERRORS.get(code) if isinstance(code, str) else None
    if known is not None:
        cls = known.error
    else:
        cls = AuthError if status in (401, 403) else TransportError
    text = str(detail) if detail else body[:200].decode(errors="replace") or f"HTTP {status}"
    message = f"{what}: HTTP {status}: {text}"
    if cls is RateLimitError:
        try:
            wait = float(retry_after) if retry_after else 1.0
        except ValueError:
            wait = 1.0
        return RateLimitError(message, retry_after=wait)
    return cls(message)


# --- the client ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when ``host`` names only a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server_url(url: str) -> str:
    """``url`` without a trailing slash; ConfigError unless https, or http to loopback.

    Plain ``http://`` would send passwords and bearer tokens in the clear, so it is
    accepted only for a loopback host (``localhost``, 127.0.0.0/8, ``::1``).
    """
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


def tls_verify(ca_file: str | None) -> bool | ssl.SSLContext:
    """TLS verification: the system store, or a private CA file."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


class RequestSigner(Protocol):
    """Headers that authenticate one request (the device agent: RFC 9421, ADR 0032)."""

    def __call__(self, method: str, target: str, body: bytes) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """A successful answer: status, headers and the body (at most ``max_response``)."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class HttpClient:
    """Calls one server; error answers raise the bastion error the server raised."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        ca_file: str | None = None,
        timeout: float = limits.HTTP_CLIENT_TIMEOUT_SECONDS,
        max_response: int = limits.HTTP_MAX_RESPONSE,
        transport: httpx.BaseTransport | None = None,
        signer: RequestSigner | None = None,
    ) -> None:
        self.server = check_server_url(server)
        self.ca_file = ca_file
        self.signer = signer
        headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=timeout,
            verify=tls_verify(ca_file),
            transport=transport,
        )
        self.max_response = max_response

    @classmethod
    def over(
        cls,
        http: httpx.Client,
        *,
        max_response: int = limits.HTTP_MAX_RESPONSE,
        signer: RequestSigner | None = None,
    ) -> Self:
        """Wrap a client the caller built (tests: an in-process ASGI client)."""
        self = cls.__new__(cls)
        self.server = str(http.base_url).rstrip("/")
        self.ca_file = None
        self.signer = signer
        self._http = http
        self.max_response = max_response
        return self

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        token: str | None = None,
        follow_redirects: bool = True,
    ) -> Answer:
        """One request; the answer below 400 (redirects too when not followed)."""
        what = f"{method} {path}"
        headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
        content: bytes | None = None
        if self.signer is not None:
            content = b"" if json_body is None else json.dumps(json_body).encode()
            if json_body is not None:
                headers["Content-Type"] = "application/json"
            headers.update(self.signer(method, self.target(path), content))
        try:
            with self._http.stream(
                method,
                path,
                json=json_body if content is None else None,
                content=content,
                headers=headers or None,
                follow_redirects=follow_redirects,
            ) as response:
                content = self._read(response, what)
        except httpx.HTTPError as exc:
            raise TransportError(f"{what} at {self.server}: {exc}") from exc
        if response.status_code >= 400:
            raise decode_error(
                response.status_code,
                content,
                what=what,
                retry_after=response.headers.get("retry-after"),
            )
        return Answer(response.status_code, dict(response.headers), content)

    def get_file(self, url: str, *, max_bytes: int) -> Answer:
        """``GET`` a static file (an absolute URL or a path), whatever the status.

        For files a caller interprets itself (TUF metadata: 403/404 mean "no newer
        version"): the answer is returned for any status, its body read up to
        ``max_bytes`` (LimitError past it); a network failure is a TransportError.
        Plain ``http://`` is refused unless the host is a loopback one.
        """
        if url.startswith(("http://", "https://")):
            check_server_url(url)
        what = f"GET {url}"
        try:
            with self._http.stream("GET", url) as response:
                parts: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise LimitError(f"{what}: file over {max_bytes} bytes")
                    parts.append(chunk)
        except httpx.HTTPError as exc:
            raise TransportError(f"{what}: {exc}") from exc
        return Answer(response.status_code, dict(response.headers), b"".join(parts))

    def target(self, path: str) -> str:
        """The request target (path and query) the server sees for ``path``."""
        prefix = urllib.parse.urlsplit(self.server).path.rstrip("/")
        return prefix + path

    def upload(
        self, path: str, stream: BinaryIO, *, content_type: str = "application/octet-stream"
    ) -> Any:
        """POST ``stream`` as the raw body (streamed in chunks); the answer's strict JSON."""
        what = f"POST {path}"

        def chunks() -> Iterator[bytes]:
            while block := stream.read(_UPLOAD_CHUNK):
                yield block

        try:
            with self._http.stream(
                "POST", path, content=chunks(), headers={"Content-Type": content_type}
            ) as response:
                content = self._read(response, what)
        except httpx.HTTPError as exc:
            raise TransportError(f"{what} at {self.server}: {exc}") from exc
        if response.status_code >= 400:
            raise decode_error(response.status_code, content, what=what)
        try:
            return strict_json.loads(content, what=f"{what} answer")
        except FormatError as exc:
            raise FormatError(f"{what}: answer is not JSON: {exc}") from exc

    def _read(self, response: httpx.Response, what: str) -> bytes:
        parts: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > self.max_response:
                raise LimitError(f"{what}: answer over {self.max_response} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def call(
        self, method: str, path: str, json_body: Any = None, *, token: str | None = None
    ) -> Any:
        """One request; the answer's strict JSON (None for an empty answer)."""
        answer = self.request(method, path, json_body, token=token)
        if answer.status == 204 or not answer.content:
            return None
        try:
            return strict_json.loads(answer.content, what=f"{method} {path} answer")
        except FormatError as exc:
            raise FormatError(f"{method} {path}: the answer is not strict JSON: {exc}") from exc

    def call_object(
        self, method: str, path: str, json_body: Any = None, *, token: str | None = None
    ) -> dict[str, Any]:
        """:meth:`call` for an answer that must be a JSON object."""
        data = self.call(method, path, json_body, token=token)
        if not isinstance(data, dict):
            raise FormatError(f"{method} {path}: answer is not a JSON object")
        return data

    def size_of(self, path: str) -> int:
        """The size of the file at ``path``, from ``Content-Range`` of a one-byte Range
        request (a server that ignores Range is refused: streaming needs it)."""
        _, total = self._range(path, 0, 1)
        return total

    def get_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of the file at ``path`` by an HTTP Range
        request; TransportError unless the answer is exactly that range."""
        data, _ = self._range(path, offset, length)
        return data

    def _range(self, path: str, offset: int, length: int) -> tuple[bytes, int]:
        what = f"GET {path} bytes {offset}+{length}"
        if offset < 0 or length <= 0 or length > self.max_response:
            raise LimitError(f"{what}: range out of 1..{self.max_response} bytes")
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    content = self._read(response, what)
                    raise decode_error(response.status_code, content, what=what)
                if response.status_code != 206:
                    raise TransportError(
                        f"{what}: expected 206 Partial Content, got {response.status_code}"
                    )
                crange = response.headers.get("content-range", "")
                parts = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > length:
                        raise TransportError(f"{what}: answer longer than the range")
                    parts.append(chunk)
        except httpx.HTTPError as exc:
            raise TransportError(f"{what} at {self.server}: {exc}") from exc
        expected = f"bytes {offset}-{offset + length - 1}/"
        total_text = crange[len(expected) :]
        if not crange.startswith(expected) or not total_text.isdigit() or len(total_text) > 19:
            raise TransportError(f"{what}: Content-Range {crange!r} is not the range asked for")
        data = b"".join(parts)
        if len(data) != length:
            raise TransportError(f"{what}: got {len(data)} bytes (truncated answer)")
        return data, int(total_text)

    def redirect_location(self, path: str) -> str:
        """``GET path`` without following it; the ``Location`` of the redirect answer."""
        answer = self.request("GET", path, follow_redirects=False)
        location = answer.headers.get("location")
        if answer.status not in (302, 303) or not location:
            raise TransportError(f"GET {path}: expected a redirect, got {answer.status}")
        return str(location)
