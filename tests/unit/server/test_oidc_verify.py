"""The ID token, discovery and JWKS checks of OIDC sign-in: a table of negative cases.

Tokens are signed here with a key made for the test (the same way the provider in
tests/integration/server/oidckit.py is given its key); the end-to-end tests cover
tokens the real provider signs.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from typing import Any

import pytest

from bastion.errors import (
    ExpiredError,
    FormatError,
    LimitError,
    SignatureError,
    VerificationError,
)
from bastion.server.oidc.verify import parse_discovery, parse_jwks, verify_id_token

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, jwt

ISSUER = "https://id.example.org"
CLIENT = "bastion"
NONCE = "n-" + "a" * 40
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _key(kid: str) -> Any:
    key = JsonWebKey.generate_key("RSA", 2048, is_private=True)
    return key, {**key.as_dict(is_private=True), "kid": kid, "alg": "RS256", "use": "sig"}


KEY, PRIVATE = _key("k1")
OTHER_KEY, OTHER_PRIVATE = _key("k2")
PUBLIC = {k: v for k, v in PRIVATE.items() if k not in {"d", "p", "q", "dp", "dq", "qi"}}
JWKS = {"keys": [PUBLIC]}


def claims(**change: Any) -> dict[str, Any]:
    now = int(NOW.timestamp())
    base = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": CLIENT,
        "exp": now + 300,
        "iat": now,
        "nonce": NONCE,
        "email": "alice@example.org",
        "email_verified": True,
    }
    base.update(change)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], private: dict[str, Any] = PRIVATE, alg: str = "RS256") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(jwt.encode({"alg": alg, "kid": private["kid"]}, payload, private), "ascii")


def check(token: str, **kw: Any) -> Any:
    options = {
        "issuer": ISSUER,
        "client_id": CLIENT,
        "nonce": NONCE,
        "algorithms": ("RS256", "ES256"),
        "now": NOW,
    }
    options.update(kw)
    return verify_id_token(token, JWKS, **options)


def test_good_token() -> None:
    got = check(sign(claims()))
    assert (got.subject, got.email, got.email_verified) == ("alice", "alice@example.org", True)


def test_email_verified_must_be_json_true() -> None:
    for value in ("true", 1, None, False):
        assert check(sign(claims(email_verified=value))).email_verified is False


def _tampered() -> str:
    head, body, sig = sign(claims()).split(".")
    import base64

    data = json.loads(base64.urlsafe_b64decode(body + "=="))
    data["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


def _unsigned() -> str:
    import base64

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64(claims())}."


def _hmac_with_public_key() -> str:
    # the classic confusion: HS256 keyed with the provider's public key material
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        secret = {"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}
        return str(jwt.encode({"alg": "HS256", "kid": "k1"}, claims(), secret), "ascii")


NOW_S = int(NOW.timestamp())
NEGATIVE: list[tuple[str, Any, type[Exception], str]] = [
    ("wrong nonce", lambda: sign(claims(nonce="other")), VerificationError, "nonce"),
    ("no nonce", lambda: sign(claims(nonce=None)), VerificationError, "nonce"),
    ("other audience", lambda: sign(claims(aud="other-app")), VerificationError, "aud"),
    ("no audience", lambda: sign(claims(aud=None)), VerificationError, "aud"),
    (
        "several audiences, no azp",
        lambda: sign(claims(aud=[CLIENT, "other-app"])),
        VerificationError,
        "azp",
    ),
    (
        "azp of another client",
        lambda: sign(claims(aud=[CLIENT, "x"], azp="x")),
        VerificationError,
        "azp",
    ),
    ("other issuer", lambda: sign(claims(iss="https://evil.example")), VerificationError, "iss"),
    ("no subject", lambda: sign(claims(sub=None)), VerificationError, "sub"),
    ("expired", lambda: sign(claims(exp=NOW_S - 120)), ExpiredError, "expired"),
    ("no expiry", lambda: sign(claims(exp=None)), VerificationError, "exp"),
    ("issued in the future", lambda: sign(claims(iat=NOW_S + 3600)), VerificationError, "future"),
    ("signed by another key", lambda: sign(claims(), OTHER_PRIVATE), Exception, ""),
    ("payload changed", _tampered, SignatureError, "signature"),
    ("alg none", _unsigned, Exception, ""),
    ("HS256", _hmac_with_public_key, Exception, ""),
    ("not a JWT", lambda: "not.a.jwt", Exception, ""),
]


@pytest.mark.parametrize(("name", "make", "error", "words"), NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_refused(name: str, make: Any, error: type[Exception], words: str) -> None:
    with pytest.raises(error) as caught:
        check(make())
    # every refusal is one of ours (a BastionError), never a library exception
    assert isinstance(caught.value, VerificationError | FormatError), repr(caught.value)
    assert words.lower() in str(caught.value).lower()


def test_at_hash_must_match_the_access_token() -> None:
    token = sign(claims(at_hash="AAAAAAAAAAAAAAAAAAAAAA"))
    with pytest.raises(VerificationError, match="at_hash"):
        check(token, access_token="some-access-token")


def test_symmetric_algorithms_are_never_allowed() -> None:
    with pytest.raises(VerificationError, match="asymmetric"):
        check(sign(claims()), algorithms=("HS256",))


# --- discovery and JWKS ---------------------------------------------------------------


def discovery(**change: Any) -> bytes:
    doc = {
        "issuer": ISSUER,
        "authorization_endpoint": ISSUER + "/auth",
        "token_endpoint": ISSUER + "/token",
        "jwks_uri": ISSUER + "/jwks",
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
    }
    doc.update(change)
    return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()


def test_good_discovery() -> None:
    meta = parse_discovery(discovery(), ISSUER)
    assert meta.token_endpoint == ISSUER + "/token" and meta.id_token_algs == ("RS256",)
    local = "http://127.0.0.1:5556"
    doc = discovery(issuer=local, authorization_endpoint=local + "/a")
    assert parse_discovery(doc, local).issuer == local


DISCOVERY_NEGATIVE = [
    ("issuer differs", discovery(issuer="https://evil.example"), VerificationError),
    ("plain http endpoint", discovery(token_endpoint="http://id.example.org/t"), FormatError),
    ("no jwks_uri", discovery(jwks_uri=None), FormatError),
    ("plain PKCE only", discovery(code_challenge_methods_supported=["plain"]), VerificationError),
    ("HS256 only", discovery(id_token_signing_alg_values_supported=["HS256"]), VerificationError),
    ("none only", discovery(id_token_signing_alg_values_supported=["none"]), VerificationError),
    ("duplicate key", b'{"issuer": "a", "issuer": "b"}', FormatError),
    ("not an object", b"[]", FormatError),
    ("oversize", b" " * (256 * 1024 + 1), LimitError),
]


@pytest.mark.parametrize(
    ("name", "data", "error"), DISCOVERY_NEGATIVE, ids=[n[0] for n in DISCOVERY_NEGATIVE]
)
def test_discovery_refused(name: str, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_discovery(data, ISSUER)


def test_jwks_drops_private_and_symmetric_keys() -> None:
    data = json.dumps({"keys": [PRIVATE, {"kty": "oct", "k": "c2VjcmV0"}, PUBLIC]}).encode()
    assert parse_jwks(data) == {"keys": [PUBLIC]}
    for bad in (b'{"keys": []}', b"{}", json.dumps({"keys": [PRIVATE]}).encode()):
        with pytest.raises(FormatError):
            parse_jwks(bad)
    with pytest.raises(FormatError, match="limit"):
        parse_jwks(json.dumps({"keys": [PUBLIC] * 65}).encode())


def test_clock_leeway_is_bounded() -> None:
    # a token expired 30 s ago passes (leeway 60 s); 120 s ago does not (table above)
    assert check(sign(claims(exp=NOW_S - 30))).subject == "alice"


# --- configuration --------------------------------------------------------------------


def _settings(tmp_path: Any, **change: Any) -> Any:
    from bastion.server.settings import ServerSettings

    values = {
        "data_dir": tmp_path,
        "oidc_issuer": ISSUER,
        "oidc_client_id": CLIENT,
        "oidc_client_secret": "s3cret",
    }
    values.update(change)
    return ServerSettings(**{k: v for k, v in values.items() if v is not None})


def test_provider_configuration(tmp_path: Any) -> None:
    from bastion.errors import ConfigError
    from bastion.server.oidc.provider import build_provider

    assert build_provider(_settings(tmp_path, oidc_issuer=None)) is None
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    made = build_provider(
        _settings(tmp_path, oidc_client_secret=None, oidc_client_secret_file=secret_file)
    )
    assert made is not None and made._secret == "from-a-file"
    made.close()
    bad = [
        {"oidc_client_id": None},
        {"oidc_client_secret": None},
        {"oidc_client_secret": "  "},
        {"oidc_scopes": "email"},
        {"oidc_issuer": "http://id.example.org"},
        {"oidc_redirect_uri": "http://fleet.example.org/cb"},
        {"oidc_issuer": "https://id.example.org/" + "x" * 600},
    ]
    for change in bad:
        with pytest.raises(ConfigError):
            build_provider(_settings(tmp_path, **change))
