"""What an OpenID provider says, checked: discovery document, JWKS and ID token.

Bytes and values in, frozen results out, errors raised; no I/O (the fetching is
:mod:`bastion.server.oidc.provider`'s). The ID token is checked by authlib's JWT
validation (:class:`authlib.oidc.core.CodeIDToken`): signature against the provider's
JWKS with an asymmetric algorithm the provider announced, ``iss`` equal to the
configured issuer, ``aud`` containing our client id (``azp`` when several audiences),
``exp``/``iat`` against our clock, ``nonce`` equal to the one stored with the state,
and ``at_hash`` when present.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from bastion import limits
from bastion.errors import ExpiredError, FormatError, SignatureError, VerificationError
from bastion.formats import strict_json
from bastion.io.http import is_loopback

with warnings.catch_warnings():
    # authlib 1.x marks authlib.jose as superseded by joserfc; its OIDC claim classes
    # still use it and stay supported up to authlib 2.0 (docs/adr/0021-oidc-sign-in.md)
    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, JsonWebToken
    from authlib.jose.errors import (
        BadSignatureError,
        ExpiredTokenError,
        InvalidClaimError,
        JoseError,
        MissingClaimError,
    )
    from authlib.oidc.core import CodeIDToken
    from joserfc import errors as joserfc_errors  # authlib 1.9 raises these from validate()

#: asymmetric ID-token algorithms we accept (never ``none``, never HMAC with the secret)
ASYMMETRIC_ALGS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: tolerated clock difference with the provider, seconds
CLOCK_LEEWAY = 60


@dataclass(frozen=True, slots=True)
class ProviderMetadata:
    """The parts of a discovery document the sign-in uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    id_token_algs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    """A verified ID token: who the provider says signed in."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool


def check_endpoint(url: str, what: str) -> str:
    """``url`` unless it is not https (plain http is allowed on loopback only)."""
    if not isinstance(url, str) or len(url) > limits.OIDC_PARAM_MAX_LENGTH:
        raise FormatError(f"{what} is not a URL string")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return url
    raise FormatError(f"{what} {url[:120]!r} must be https:// (http:// only on loopback)")


def parse_discovery(data: bytes, expected_issuer: str) -> ProviderMetadata:
    """The provider metadata from ``/.well-known/openid-configuration``.

    The ``issuer`` must equal the configured one exactly (OpenID Connect Discovery 4.3);
    a provider that lists PKCE methods must list ``S256``.
    """
    doc = strict_json.loads_object(
        data, what="OIDC discovery document", max_size=limits.OIDC_DOCUMENT_MAX_SIZE
    )
    issuer = doc.get("issuer")
    if issuer != expected_issuer:
        raise VerificationError(
            f"OIDC discovery document names issuer {str(issuer)[:120]!r}, "
            f"expected {expected_issuer!r}"
        )
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = doc.get(name)
        if not isinstance(value, str):
            raise FormatError(f"OIDC discovery document has no {name}")
        endpoints[name] = check_endpoint(value, f"OIDC {name}")
    methods = doc.get("code_challenge_methods_supported")
    if methods is not None and (not isinstance(methods, list) or "S256" not in methods):
        raise VerificationError(f"OIDC provider {issuer!r} does not support PKCE with S256")
    announced = doc.get("id_token_signing_alg_values_supported")
    if not isinstance(announced, list):
        raise FormatError("OIDC discovery document has no id_token_signing_alg_values_supported")
    algs = tuple(alg for alg in ASYMMETRIC_ALGS if alg in announced)
    if not algs:
        raise VerificationError(
            f"OIDC provider {issuer!r} signs ID tokens only with {announced[:8]!r}; "
            f"expected one of {list(ASYMMETRIC_ALGS)}"
        )
    return ProviderMetadata(issuer=issuer, id_token_algs=algs, **endpoints)


def parse_jwks(data: bytes) -> dict[str, Any]:
    """A JWK set (public keys only) as a dict; FormatError/LimitError otherwise."""
    doc = strict_json.loads_object(data, what="OIDC JWKS", max_size=limits.OIDC_DOCUMENT_MAX_SIZE)
    keys = doc.get("keys")
    if not isinstance(keys, list) or not keys:
        raise FormatError("OIDC JWKS has no keys")
    if len(keys) > limits.OIDC_JWKS_MAX_KEYS:
        raise FormatError(f"OIDC JWKS has {len(keys)} keys, limit {limits.OIDC_JWKS_MAX_KEYS}")
    public = []
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise FormatError("OIDC JWKS holds a key that is not a JWK object")
        if key["kty"] == "oct" or "d" in key:
            continue  # a symmetric or private key has no business in a public JWKS
        public.append(key)
    if not public:
        raise FormatError("OIDC JWKS has no public asymmetric key")
    return {"keys": public}


def verify_id_token(
    id_token: str,
    jwks: dict[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    algorithms: tuple[str, ...],
    now: dt.datetime,
    access_token: str | None = None,
) -> IdTokenClaims:
    """Check an ID token from the token endpoint; raise on any failure.

    SignatureError for a bad signature or unknown key, ExpiredError for ``exp`` in the
    past, VerificationError for a wrong ``iss``, ``aud``, ``azp``, ``nonce`` or
    ``at_hash``, FormatError for something that is not a JWT.
    """
    if not isinstance(id_token, str) or len(id_token) > limits.OIDC_DOCUMENT_MAX_SIZE:
        raise FormatError("ID token is not a string of acceptable size")
    allowed = [alg for alg in algorithms if alg in ASYMMETRIC_ALGS]
    if not allowed:
        raise VerificationError("no asymmetric ID token algorithm is allowed")
    try:
        keys = JsonWebKey.import_key_set(jwks)
    except (JoseError, ValueError, TypeError) as exc:
        raise FormatError(f"OIDC JWKS cannot be used: {exc}") from exc
    options = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": client_id},
        "sub": {"essential": True},
        "nonce": {"essential": True, "value": nonce},
    }
    params = {"nonce": nonce, "client_id": client_id, "access_token": access_token}
    try:
        claims = JsonWebToken(allowed).decode(
            id_token, keys, claims_cls=CodeIDToken, claims_options=options, claims_params=params
        )
        claims.validate(now=int(now.timestamp()), leeway=CLOCK_LEEWAY)
    except (BadSignatureError, joserfc_errors.BadSignatureError) as exc:
        raise SignatureError(f"ID token signature does not verify: {exc}") from exc
    except (ExpiredTokenError, joserfc_errors.ExpiredTokenError) as exc:
        raise ExpiredError(f"ID token expired: {exc}") from exc
    except (InvalidClaimError, MissingClaimError, JoseError, joserfc_errors.JoseError) as exc:
        raise VerificationError(f"ID token refused: {exc}") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"ID token is not a well-formed JWT: {exc}") from exc
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise VerificationError("ID token has no usable 'sub'")
    email = claims.get("email")
    if email is not None and not isinstance(email, str):
        raise FormatError("ID token 'email' is not a string")
    # only a JSON true counts: "true" as a string, 1 or a missing claim do not
    verified = claims.get("email_verified") is True
    return IdTokenClaims(issuer=issuer, subject=subject, email=email, email_verified=verified)
