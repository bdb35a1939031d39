"""The one mapping from domain errors to HTTP responses, and the error body format.

Every error leaves the server as ``{"error": "<code>", "detail": "<one line>"}`` with
a status chosen by the one wire-error codec (:func:`bastion.io.http.encode_error`, whose
table every client decodes with):

============================  ======  ===================
bastion error                 status  code
============================  ======  ===================
LimitError                    413     ``too_large``
FormatError                   400     ``bad_request``
request validation (pydantic) 422     ``invalid``
database DataError            400     ``bad_request`` (NUL, out of range)
RateLimitError                429     ``rate_limited`` (+ ``Retry-After``)
OidcRequiredError             403     ``oidc_required``
ReauthRequiredError           403     ``reauth_required`` (re-authenticate)
AuthError, no credentials     401     ``unauthenticated`` (+ ``WWW-Authenticate``)
AuthError, authenticated      403     ``forbidden``
AttestationRequiredError      403     ``attestation_required``
ExpiredError / RevokedError   401     ``unauthenticated``
other VerificationError       403     ``verification_failed``
NotFoundError                 404     ``not_found``
ConflictError                 409     ``conflict``
TransportError                502     ``upstream``
BackendError                  503     ``unavailable`` (message not shown)
anything else                 500     ``internal`` (message not shown)
============================  ======  ===================

An :class:`AuthError` is a 401 when the request carried no valid credentials (no
principal was established, or it is anonymous) and a 403 when an authenticated
principal lacks the right. Stack traces never reach a client; unexpected exceptions
are logged with a correlation id that the response also carries.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bastion.errors import BastionError, RateLimitError
from bastion.io.http import PUBLIC_DETAIL, WIRE_ERRORS, encode_error

log = logging.getLogger("bastion.server")

#: error code -> bastion error class, the one wire table of :mod:`bastion.io.http`
CODE_TO_ERROR: Mapping[str, type[BastionError]] = MappingProxyType(
    {code: wire.error for code, wire in WIRE_ERRORS.items()}
)


def error_body(code: str, detail: str) -> dict[str, str]:
    """The JSON body of every error response."""
    return {"error": code, "detail": detail}


def _authenticated(request: Request) -> bool:
    principal = getattr(request.state, "principal", None)
    return principal is not None and getattr(principal, "authenticated", False)


def status_for(exc: BastionError, request: Request) -> tuple[int, str, str]:
    """(status, code, client-visible detail) for a domain error (:func:`encode_error`)."""
    status, code = encode_error(exc, authenticated=_authenticated(request))
    if code == "unavailable":
        return status, code, "a backend of the server is unavailable"
    if code not in PUBLIC_DETAIL:
        return status, code, "internal error"
    return status, code, str(exc)


def _headers(exc: BastionError, status: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="bastion"'
    return headers


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapper for domain errors, validation errors, HTTP errors and the rest."""

    @app.exception_handler(BastionError)
    async def _domain(request: Request, exc: BastionError) -> JSONResponse:
        status, code, detail = status_for(exc, request)
        if status >= 500:
            ref = secrets.token_hex(6)
            log.error("request %s failed [%s]: %r", request.url.path, ref, exc)
            detail = f"{detail} (ref {ref})"
        return JSONResponse(error_body(code, detail), status, headers=_headers(exc, status))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid", describe_validation(exc.errors())), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}
        code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse(error_body(code, detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(DataError)
    async def _data(_request: Request, exc: DataError) -> JSONResponse:
        # the database refused a value the edge let through (a NUL character, a number
        # out of the column's range): the client's input is at fault, not the server
        log.info("database refused a value: %s", type(exc.orig).__name__)
        return JSONResponse(
            error_body(
                "bad_request", "a value in the request cannot be stored (NUL or out of range)"
            ),
            400,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = secrets.token_hex(6)
        log.exception("unexpected error on %s [%s]", request.url.path, ref, exc_info=exc)
        return JSONResponse(error_body("internal", f"internal error (ref {ref})"), 500)


def describe_validation(errors: Any) -> str:
    """One line naming each invalid field and what was expected (no input echoed)."""
    parts = []
    for err in list(errors)[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"
