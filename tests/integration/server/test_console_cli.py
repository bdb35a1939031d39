# ruff: noqa: F811  (``served`` is a fixture imported from test_operator_cli)
"""The operator's console commands against a live server (uvicorn in a thread):
``server user reset-password|disable|enable``, ``user``, ``totp``, ``token``, ``audit``
and ``fleet config``. Commands run through ``bastion.cli.main.main``; SQLite and
PostgreSQL (the ``served`` fixture of test_operator_cli.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion import limits
from bastion.server.auth import totp

from .test_operator_cli import run, served  # noqa: F401

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a fresh long passphrase"
EMAIL = "ops@example.org"


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text + "\n")
    return str(path)


def _setup(capsys, tmp_path: Path, url: str, data: list[str]) -> str:
    """An operator account, logged in; returns the password file."""
    pw = _file(tmp_path, "pw", PASSWORD)
    code, _out, err = run(capsys, "server", "user", "add", EMAIL, "--password-file", pw, *data)
    assert code == 0, err
    code, _out, err = run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", pw)
    assert code == 0, err
    return pw


def _json(capsys, *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, (argv, err)
    return json.loads(out)


def test_server_user_disable_enable_and_reset(served, tmp_path: Path, capsys, monkeypatch) -> None:
    url, data = served
    pw = _setup(capsys, tmp_path, url, data)
    token = _json(capsys, "token", "create", "ci", "--scope", "write")["token"]
    assert token.startswith("bst_pat_")
    code, out, err = run(capsys, "server", "user", "disable", EMAIL, *data, "--json")
    assert code == 0, err
    assert json.loads(out)["tokens_revoked"] == 2  # the login session and the token
    # both credentials are refused on their very next request
    code, _out, err = run(capsys, "fleet", "list")
    assert code == 4 and "HTTP 401" in err
    monkeypatch.setenv("BASTION_TOKEN", token)
    code, _out, err = run(capsys, "fleet", "list")
    assert code == 4 and "HTTP 401" in err
    monkeypatch.delenv("BASTION_TOKEN")
    code, _out, err = run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", pw)
    assert code == 4
    assert run(capsys, "server", "user", "enable", EMAIL, *data)[0] == 0
    assert run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", pw)[0] == 0
    new = _file(tmp_path, "new", NEW_PASSWORD)
    code, out, err = run(
        capsys, "server", "user", "reset-password", EMAIL, "--password-file", new, *data
    )
    assert code == 0 and "1 session(s)" in out, err
    code, _out, err = run(capsys, "fleet", "list")
    assert code == 4 and "HTTP 401" in err
    assert run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", pw)[0] == 4
    assert run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", new)[0] == 0
    assert run(capsys, "fleet", "list")[0] == 0


def test_server_user_refusals(served, tmp_path: Path, capsys) -> None:
    url, data = served
    _setup(capsys, tmp_path, url, data)
    short = _file(tmp_path, "short", "short")
    new = _file(tmp_path, "new", NEW_PASSWORD)
    cases = [
        (["server", "user", "disable", "nobody@example.org", *data], 5, "no user"),
        (["server", "user", "enable", "nobody@example.org", *data], 5, "no user"),
        (
            ["server", "user", "reset-password", EMAIL, "--password-file", short, *data],
            3,
            "at least",
        ),
        (
            ["server", "user", "reset-password", "x@y.z", "--password-file", new, *data],
            5,
            "no user",
        ),
        (
            ["server", "user", "disable", EMAIL, "--data-dir", str(tmp_path / "nope")],
            9,
            "server init",
        ),
    ]
    for argv, want, fragment in cases:
        code, _out, err = run(capsys, *argv)
        assert code == want, (argv, err)
        assert fragment in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert run(capsys, "fleet", "list")[0] == 0  # nothing happened to the account


def test_token_commands_and_reauth(served, tmp_path: Path, capsys, clock) -> None:
    url, data = served
    pw = _setup(capsys, tmp_path, url, data)
    made = _json(capsys, "token", "create", "reader")
    assert made["scopes"] == ["read"] and made["token"].startswith("bst_pat_")
    listed = _json(capsys, "token", "list")
    assert [(t["id"], t["revoked"]) for t in listed] == [(made["id"], False)]
    assert all("token" not in t for t in listed)
    clock.advance(limits.REAUTH_MAX_AGE_SECONDS + 1)
    code, _out, err = run(capsys, "token", "create", "writer", "--scope", "write")
    assert code == 4 and "bastion user reauth" in err and "HTTP 403" in err
    assert run(capsys, "token", "create", "reader2")[0] == 0  # read scope needs no re-auth
    bad = _file(tmp_path, "bad", "not my password")
    assert run(capsys, "user", "reauth", "--password-file", bad)[0] == 4
    code, out, err = run(capsys, "user", "reauth", "--password-file", pw)
    assert code == 0 and "allowed until" in out, err
    writer = _json(capsys, "token", "create", "writer", "--scope", "write", "--scope", "read")
    assert writer["scopes"] == ["read", "write"]
    code, out, _err = run(capsys, "token", "revoke", made["id"])
    assert code == 0 and "revoked" in out
    states = {t["id"]: t["revoked"] for t in _json(capsys, "token", "list")}
    assert states[made["id"]] is True and states[writer["id"]] is False
    code, _out, err = run(capsys, "token", "revoke", "0" * 32)
    assert code == 5 and "not found" in err


def test_user_sessions_and_password(served, tmp_path: Path, capsys) -> None:
    url, data = served
    pw = _setup(capsys, tmp_path, url, data)

    def other_login() -> str:
        answer = httpx.post(f"{url}/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
        assert answer.status_code == 200
        return str(answer.json()["token"])

    second, third = other_login(), other_login()
    sessions = _json(capsys, "user", "sessions")
    assert len(sessions) == 3 and [s["current"] for s in sessions].count(True) == 1
    code, out, _err = run(capsys, "user", "sessions")
    assert code == 0 and out.count("\n") == 3 and "*" in out
    victim = next(s["id"] for s in sessions if not s["current"])
    assert run(capsys, "user", "revoke-session", victim)[0] == 0
    assert len(_json(capsys, "user", "sessions")) == 2
    code, out, _err = run(capsys, "user", "revoke-session", "--all-others")
    assert code == 0 and "1 other session(s)" in out
    for token in (second, third):
        me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401
    fourth = other_login()
    new = _file(tmp_path, "new", NEW_PASSWORD)
    wrong = _file(tmp_path, "wrong", "wrong password!")
    code, _out, err = run(
        capsys, "user", "password", "--password-file", wrong, "--new-password-file", new
    )
    assert code == 4
    code, out, err = run(
        capsys, "user", "password", "--password-file", pw, "--new-password-file", new
    )
    assert code == 0 and "1 other session(s) revoked" in out, err
    me = httpx.get(f"{url}/v1/me", headers={"Authorization": f"Bearer {fourth}"})
    assert me.status_code == 401
    assert run(capsys, "fleet", "list")[0] == 0  # the CLI's own session lives on
    assert run(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", new)[0] == 0


class CodeFromScreen:
    """Standard input that answers the code prompt from the secret the command printed."""

    def __init__(self, capsys, clock) -> None:
        self.capsys = capsys
        self.clock = clock
        self.shown = ""

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        self.shown += self.capsys.readouterr().out
        secret = re.search(r"^secret: ([A-Z2-7]+)$", self.shown, re.M)
        assert secret, self.shown
        return totp.code_at(secret.group(1), int(self.clock.now().timestamp()) // 30) + "\n"


def test_totp_enable_and_disable(served, tmp_path: Path, capsys, clock, monkeypatch) -> None:
    import sys

    url, data = served
    pw = _setup(capsys, tmp_path, url, data)
    monkeypatch.setitem(sys.modules, "qrcode", None)  # without qrcode: the secret is shown
    stdin = CodeFromScreen(capsys, clock)
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run(capsys, "totp", "enable")
    assert code == 0, err
    assert "otpauth URI: otpauth://totp/" in stdin.shown
    codes = re.findall(r"^  (\S+)$", out, re.M)
    assert len(codes) >= 8 and "not shown again" in out
    secret = re.search(r"^secret: ([A-Z2-7]+)$", stdin.shown, re.M).group(1)  # type: ignore[union-attr]
    # the login session predates the second factor: disabling needs a re-auth with it
    clock.advance(30)
    now_code = totp.code_at(secret, int(clock.now().timestamp()) // 30)
    code, _out, err = run(capsys, "totp", "disable", "--code", now_code)
    assert code == 4 and "bastion user reauth" in err
    code, _out, err = run(capsys, "user", "reauth", "--password-file", pw)
    assert code == 4 and "second factor" in err
    code, _out, err = run(
        capsys, "user", "reauth", "--password-file", pw, "--recovery-code", codes[0]
    )
    assert code == 0, err
    code, _out, err = run(capsys, "totp", "enable", "--code", "123456")
    assert code == 6 and "already enabled" in err
    code, out, err = run(capsys, "totp", "disable", "--code", now_code)
    assert code == 0 and "TOTP disabled" in out, err
    me = _json(capsys, "login", "--server", url, "--email", EMAIL, "--password-file", pw)
    assert me["email"] == EMAIL


def test_audit_show_and_export_paged(served, tmp_path: Path, capsys, monkeypatch) -> None:
    url, data = served
    _setup(capsys, tmp_path, url, data)
    assert run(capsys, "org", "create", "acme")[0] == 0
    for name in ("a", "b", "c"):
        assert run(capsys, "fleet", "create", name)[0] == 0
    shown = _json(capsys, "audit", "show", "--org", "acme")
    assert len(shown) >= 4 and {"org.create", "fleet.create"} <= {e["event"] for e in shown}
    page = _json(capsys, "audit", "show", "--limit", "2", "--after", str(shown[0]["seq"]))
    assert [e["seq"] for e in page] == [e["seq"] for e in shown[1:3]]
    code, out, _err = run(capsys, "audit", "show")
    assert code == 0 and "fleet.create" in out
    import bastion.cli.audit as audit_cli

    monkeypatch.setattr(audit_cli, "PAGE", 2)  # several pages for a handful of entries
    target = tmp_path / "audit.jsonl"
    code, _out, err = run(capsys, "audit", "export", "--out", str(target))
    assert code == 0 and f"{len(shown)} audit entries" in err
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert lines == shown
    code, out, _err = run(capsys, "audit", "export", "--after", str(shown[1]["seq"]))
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [e["seq"] for e in shown[2:]]
    code, _out, err = run(capsys, "audit", "show", "--org", "nope")
    assert code == 5 and "not found" in err


def test_fleet_config_get_and_set(served, tmp_path: Path, capsys) -> None:
    url, data = served
    _setup(capsys, tmp_path, url, data)
    run(capsys, "org", "create", "acme")
    run(capsys, "fleet", "create", "pumps")
    assert _json(capsys, "fleet", "config", "get", "pumps") == {}
    got = _json(
        capsys, "fleet", "config", "set", "acme/pumps", "mode=prod", "replicas=3", "debug=false"
    )
    assert got == {"mode": "prod", "replicas": 3, "debug": False}
    got = _json(capsys, "fleet", "config", "set", "pumps", 'nested={"a": [1]}', "--unset", "debug")
    assert got == {"mode": "prod", "replicas": 3, "nested": {"a": [1]}}
    code, out, _err = run(capsys, "fleet", "config", "get", "pumps")
    assert code == 0 and json.loads(out) == got
    whole = _file(tmp_path, "config.json", '{"only": "this"}')
    assert _json(capsys, "fleet", "config", "set", "pumps", "--file", whole) == {"only": "this"}
    bad = [
        (["fleet", "config", "set", "pumps"], 3, "nothing to set"),
        (["fleet", "config", "set", "pumps", "novalue"], 3, "KEY=VALUE"),
        (["fleet", "config", "set", "pumps", "--file", _file(tmp_path, "l", "[1]")], 3, "object"),
        (
            ["fleet", "config", "set", "pumps", "--file", _file(tmp_path, "d", '{"a":1,"a":2}')],
            3,
            "duplicate",
        ),
        (["fleet", "config", "get", "nope"], 5, "not found"),
    ]
    for argv, want, fragment in bad:
        code, _out, err = run(capsys, *argv)
        assert code == want, (argv, err)
        assert fragment in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert _json(capsys, "fleet", "config", "get", "pumps") == {"only": "this"}
