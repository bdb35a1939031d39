"""Item 23, server side: the operator and device-fleet commands against a real server
(uvicorn on a free loopback port), in text and ``--json``, print no Python repr; their
failures are one line, and with ``--json`` also the JSON error object on stdout."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.unit.cli.test_no_reprs import REPR, _strings

from bastion.cli.main import main

from .authz_ektrust import _ca_pem
from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str, Path]]:
    folder = tmp_path_factory.mktemp("reprs")
    with shared_world("sqlite", folder) as world, serve_on_loopback(world.client.app) as url:
        yield world, url, folder


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _check(argv: list[str], expected: int) -> str:
    code, out, err = _run(argv)
    assert code == expected, (argv, code, err)
    if "--json" in argv:
        doc = json.loads(out)  # one document, success or error object
        bad = [s for s in _strings(doc) if REPR.search(s)]
        if expected:
            assert doc["error"]["code"] == expected, doc
    else:
        bad = [line for line in out.splitlines() if REPR.search(line)]
        if expected:
            assert out == ""
    bad += [line for line in err.splitlines() if REPR.search(line)]
    assert not bad, (argv, bad)
    if expected:
        assert err.count("\n") == 1 and err.startswith("bastion: "), (argv, err)
    return out


@pytest.mark.parametrize("mode", ["text", "json"])
def test_server_commands_print_no_reprs(
    served: tuple[FleetWorld, str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    world, url, folder = served
    j = ["--json"] if mode == "json" else []
    db = [
        "--data-dir",
        str(folder / "data"),
        "--database-url",
        f"sqlite:///{folder / 'bastion.db'}",
    ]
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery\n")
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    _check(["server", "user", "add", f"new-{mode}@example.com", "--password-file", str(pw),
            *db, *j], 0)  # fmt: skip
    _check(["login", "--server", url, "--email", "viewer@example.com", "--password-file",
            str(pw), *j], 0)  # fmt: skip
    _check(["server", "audit", "verify", *db, *j], 0)
    token = world.headers["owner"]["Authorization"].split()[1]
    monkeypatch.setenv("BASTION_TOKEN", token)
    s = ["--server", url]
    name = f"f{mode}"
    _check(["org", "list", *s, *j], 0)
    _check(["org", "require-2fa", "off", "--org", "acme", *s, *j], 0)
    _check(["fleet", "create", name, "--org", "acme", *s, *j], 0)
    _check(["fleet", "list", *s, *j], 0)
    _check(["fleet", "grant", f"acme/{name}", "viewer@example.com", "viewer", *s, *j], 0)
    # fleet EK trust settings
    ca = tmp_path / "ek-ca.pem"
    ca.write_text(_ca_pem())
    fleet = f"acme/{name}"
    _check(["fleet", "ek-policy", fleet, *s, *j], 0)
    _check(["fleet", "ek-policy", fleet, "allow-list", *s, *j], 0)
    out = _check(["fleet", "ek-ca", "add", fleet, str(ca), "--name", "vendor", *s, "--json"], 0)
    _check(["fleet", "ek-ca", "list", fleet, *s, *j], 0)
    _check(["fleet", "ek-ca", "remove", fleet, json.loads(out)["id"], *s, *j], 0)
    _check(["fleet", "ek-deny", "add", fleet, "ab" * 32, "--reason", "stolen", *s, *j], 0)
    _check(["fleet", "ek-deny", "list", fleet, *s, *j], 0)
    _check(["fleet", "ek-deny", "remove", fleet, "ab" * 32, *s, *j], 0)
    _check(["fleet", "ek-deny", "list", fleet, *s, *j], 0)
    _check(["fleet", "ek-policy", fleet, "any", *s, *j], 0)
    _check(["env", "set", "--fleet", f"acme/{name}", "A=1", "EMPTY=", *s, *j], 0)
    _check(["env", "list", "--fleet", f"acme/{name}", *s, *j], 0)
    _check(["env", "unset", "A", "--fleet", f"acme/{name}", *s, *j], 0)
    out = _check(["provisioning-key", "create", "--fleet", "acme/cams", *s, *j], 0)
    if mode == "json":
        key_id = json.loads(out)["id"]
        _check(["provisioning-key", "revoke", key_id, "--fleet", "acme/cams", *s, *j], 0)
    pk = tmp_path / "pk"
    _check(["provisioning-key", "create", "--fleet", "acme/cams", "--uses", "1", "--ttl", "30m",
            "--out", str(pk), *s, *j], 0)  # fmt: skip
    _check(["provisioning-key", "list", "--fleet", "acme/cams", *s, *j], 0)
    dev = tmp_path / f"cam-{mode}"
    monkeypatch.delenv("BASTION_TOKEN")
    _check(["device", "provision", str(dev), "--provisioning-key", str(pk), *s, *j], 0)
    monkeypatch.setenv("BASTION_TOKEN", token)
    out = _check(["device", "list", "--fleet", "acme/cams", *s, "--json"], 0)
    device_id = next(d["id"] for d in json.loads(out) if d["serial"] == dev.name)
    _check(["device", "list", "--fleet", "acme/cams", *s, *j], 0)
    _check(["device", "show", device_id, "--fleet", "acme/cams", *s, *j], 0)
    from bastion.device.provision import DeviceIdentity
    from bastion.tpm.software import SoftwareTpm

    api_key = DeviceIdentity.load(dev).api_key(SoftwareTpm(dev / "tpm.state"))
    auth = {"Authorization": f"Bearer {api_key}"}
    for kind, body in (
        ("logs", {"lines": ["booted", ""]}),
        ("events", {"events": [{"type": "boot", "data": {"slot": "a", "n": None}}]}),
    ):
        assert httpx.post(f"{url}/v1/device/{kind}", json=body, headers=auth).status_code == 200
        _check(["device", kind, device_id, "--fleet", "acme/cams", *s, *j], 0)
    _check(["device", "revoke", device_id, "--fleet", "acme/cams", *s, *j], 0)
    out = _check(["org", "invite", f"bob-{mode}@example.com", "--org", "acme", *s, "--json"], 0)
    _check(["org", "invite", f"carol-{mode}@example.com", "--org", "acme", *s, *j], 0)
    _check(["org", "invitations", "--sent", "--org", "acme", *s, *j], 0)
    _check(["org", "uninvite", json.loads(out)["id"], "--org", "acme", *s, *j], 0)
    _check(["org", "set-role", "admin@example.com", "--role", "member", "--org", "acme",
            *s, *j], 0)  # fmt: skip
    checkpoint = tmp_path / "cp.json"
    _check(["server", "audit", "checkpoint", *db, "--out", str(checkpoint), *j], 0)
    _check(["server", "audit", "checkpoint-verify", str(checkpoint), "--key",
            str(folder / "data" / "audit.key"), *j], 0)  # fmt: skip
    _check(["server", "sweep", *db, *j], 0)
    # failures: one line, and the JSON error object with --json
    _check(["fleet", "create", name, "--org", "acme", *s, *j], 6)
    _check(["env", "set", "--fleet", f"acme/{name}", "1BAD=x", *s, *j], 3)
    _check(["device", "show", "nope", "--fleet", "acme/cams", *s, *j], 5)
    _check(["env", "list", "--fleet", "acme/nope", *s, *j], 5)
    monkeypatch.setenv("BASTION_TOKEN", "bst_ses_wrong")
    _check(["fleet", "list", *s, *j], 4)
