"""The operator CLI against a real server: user add, login, org, fleet, env, audit verify.

uvicorn serves the app in a thread on a free loopback port; commands run through
``bastion.cli.main.main`` exactly as the console script does.
"""

from __future__ import annotations

import json
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from bastion.cli.main import main

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(make_app, db_url: str, tmp_path: Path, monkeypatch) -> Iterator[tuple[str, list[str]]]:
    app = make_app()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/v1/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.delenv("BASTION_SERVER", raising=False)
    monkeypatch.delenv("BASTION_TOKEN", raising=False)
    for key, value in {
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_KIB": "8",
        "ARGON2_PARALLELISM": "1",
    }.items():
        monkeypatch.setenv(f"BASTION_SERVER_{key}", value)
    try:
        # the data folder holds the audit key (outside the database) that verify needs
        yield url, ["--database-url", db_url, "--data-dir", str(tmp_path / "data")]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_operator_flow(served, tmp_path: Path, capsys) -> None:
    url, data = served
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    code, out, _ = run(
        capsys,
        "server",
        "user",
        "add",
        "ops@example.org",
        "--password-file",
        str(pw),
        *data,
    )
    assert code == 0 and "created" in out
    code, out, err = run(
        capsys, "login", "--server", url, "--email", "ops@example.org", "--password-file", str(pw)
    )
    assert code == 0, err
    config = tmp_path / "operator.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text())["token"].startswith("bst_ses_")
    assert run(capsys, "org", "create", "acme")[0] == 0
    code, out, _ = run(capsys, "fleet", "create", "pumps", "--json")
    assert code == 0
    fleet_id = json.loads(out)["id"]
    code, out, _ = run(capsys, "fleet", "list", "--json")
    assert [f["id"] for f in json.loads(out)] == [fleet_id]
    assert run(capsys, "env", "set", "--fleet", "acme/pumps", "LOG_LEVEL=debug", "EMPTY=")[0] == 0
    code, out, _ = run(capsys, "env", "list", "--fleet", fleet_id, "--json")
    assert json.loads(out) == [
        {"name": "EMPTY", "value": ""},
        {"name": "LOG_LEVEL", "value": "debug"},
    ]
    code, out, _ = run(capsys, "server", "audit", "verify", *data, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] and report["entries"] >= 6


BAD_INPUT = [
    (["env", "set", "--fleet", "pumps", "1BAD=x"], 3, "NAME=VALUE"),
    (["env", "set", "--fleet", "pumps", "NOEQUALS"], 3, "NAME=VALUE"),
    (["env", "set", "--fleet", "nope", "A=1"], 5, "not found"),
    (["fleet", "create", "pumps"], 6, "already exists"),
    (["fleet", "create", "Bad Name"], 3, "name"),
    (["fleet", "grant", "pumps", "nobody@example.org", "viewer"], 5, "not a member"),
    (["server", "--listen", "0.0.0.0:8443"], 9, "refusing plain HTTP"),
    (["server", "--listen", "nonsense"], 9, "HOST:PORT"),
]


def test_bad_input_is_one_line(served, tmp_path: Path, capsys) -> None:
    url, data = served
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    run(capsys, "server", "user", "add", "ops@example.org", "--password-file", str(pw), *data)
    run(capsys, "login", "--server", url, "--email", "ops@example.org", "--password-file", str(pw))
    run(capsys, "org", "create", "acme")
    run(capsys, "fleet", "create", "pumps")
    for argv, code, fragment in BAD_INPUT:
        got, _out, err = run(capsys, *argv)
        assert got == code, (argv, err)
        assert fragment in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err


def test_wrong_password_and_not_logged_in(served, tmp_path: Path, capsys) -> None:
    url, data = served
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    run(
        capsys,
        "server",
        "user",
        "add",
        "ops@example.org",
        "--password-file",
        str(pw),
        *data,
    )
    code, _, err = run(capsys, "fleet", "list")
    assert code == 9 and "bastion login" in err
    bad = tmp_path / "bad"
    bad.write_text("not the password")
    code, _, err = run(
        capsys, "login", "--server", url, "--email", "ops@example.org", "--password-file", str(bad)
    )
    assert code == 4 and "HTTP 401" in err


def test_config_readable_by_others_is_refused(served, tmp_path: Path, capsys) -> None:
    config = tmp_path / "operator.json"
    config.write_text(json.dumps({"server": served[0], "token": "bst_ses_x"}))
    config.chmod(0o644)
    code, _, err = run(capsys, "fleet", "list")
    assert code == 9 and "chmod 600" in err


def test_tampered_audit_log_fails_verify(served, tmp_path: Path, capsys) -> None:
    url, data = served
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    run(
        capsys,
        "server",
        "user",
        "add",
        "ops@example.org",
        "--password-file",
        str(pw),
        *data,
    )
    run(capsys, "login", "--server", url, "--email", "ops@example.org", "--password-file", str(pw))
    from sqlalchemy import create_engine, text

    engine = create_engine(data[1])
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'user:evil' WHERE seq = 1"))
    engine.dispose()
    code, _, err = run(capsys, "server", "audit", "verify", *data)
    assert code == 2
    assert "audit entry 1" in err and "edited" in err


def test_invitation_flow(served, tmp_path: Path, capsys, monkeypatch) -> None:
    url, data = served
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    for email in ("ops@example.org", "bob@example.org"):
        assert (
            run(capsys, "server", "user", "add", email, "--password-file", str(pw), *data)[0] == 0
        )
    ops_config, bob_config = tmp_path / "operator.json", tmp_path / "bob.json"

    def as_user(config: Path, email: str) -> None:
        monkeypatch.setenv("BASTION_CONFIG", str(config))
        if not config.exists():
            code, _, err = run(
                capsys, "login", "--server", url, "--email", email, "--password-file", str(pw)
            )
            assert code == 0, err

    as_user(ops_config, "ops@example.org")
    assert run(capsys, "org", "create", "acme")[0] == 0
    code, out, err = run(capsys, "org", "invite", "bob@example.org", "--json")
    assert code == 0, err
    invitation = json.loads(out)["id"]
    code, out, _ = run(capsys, "org", "invitations", "--sent", "--json")
    assert [i["id"] for i in json.loads(out)] == [invitation]

    as_user(bob_config, "bob@example.org")
    code, out, _ = run(capsys, "org", "invitations")
    assert code == 0 and invitation in out and "acme" in out
    code, out, err = run(capsys, "org", "accept", invitation)
    assert code == 0, err
    assert "joined acme" in out
    code, _, err = run(capsys, "org", "accept", invitation)
    assert code == 6 and "already accepted" in err
    code, out, _ = run(capsys, "org", "list", "--json")
    assert [o["name"] for o in json.loads(out)] == ["acme"]
    assert run(capsys, "org", "leave", "--org", "acme")[0] == 0
    code, out, _ = run(capsys, "org", "list")
    assert "no organisations" in out

    as_user(ops_config, "ops@example.org")
    code, _, err = run(capsys, "org", "leave")
    assert code == 6 and "last owner" in err
    code, out, _ = run(capsys, "org", "invite", "bob@example.org", "--json")
    second = json.loads(out)["id"]
    assert run(capsys, "org", "uninvite", second)[0] == 0
    as_user(bob_config, "bob@example.org")
    code, _, err = run(capsys, "org", "decline", second)
    assert code == 6 and "revoked" in err
    code, _, err = run(capsys, "org", "set-role", "bob@example.org", "--role", "owner")
    assert code == 9  # bob belongs to no organisation any more: --org cannot default
