"""Authorization-matrix rows for OIDC sign-in (server/oidc/routes.py).

The routes are public (anyone may start or finish a sign-in; the state, the browser
cookie and the ticket are the credentials, tested in test_oidc.py). The matrix app has
no provider configured, so every caller whose credentials resolve gets 404 ``not_found``
("not configured"); expired and revoked tokens get 401 as on every public route.
"""

from __future__ import annotations

from server_authz import Row

ROWS = [
    Row("GET", "/v1/auth/oidc/login", "public", ok=404),
    Row("GET", "/v1/auth/oidc/callback", "public", ok=404),
    Row("POST", "/v1/auth/oidc/second-factor", "public", ok=404, body={"ticket": "t"}),
]
