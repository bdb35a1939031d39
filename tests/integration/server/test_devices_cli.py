"""The CLI against a real server (uvicorn in a thread on a free loopback port).

``bastion provisioning-key create`` -> ``bastion device provision`` (software TPM) ->
``bastion device list|show|revoke``; bad input gives one line and a non-zero exit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bastion.cli.main import main
from bastion.device.provision import DeviceIdentity
from bastion.tpm.software import SoftwareTpm

from .devicekit import FleetWorld, serve_on_loopback, shared_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FleetWorld, str]]:
    with (
        shared_world("sqlite", tmp_path_factory.mktemp("cli")) as world,
        serve_on_loopback(world.client.app) as url,
    ):
        yield world, url


def test_operator_and_device_cli(served, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    world, url = served
    token = world.headers["admin"]["Authorization"].split()[1]
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", token)
    key_file = tmp_path / "pk"
    code = main(
        [
            "provisioning-key",
            "create",
            "--fleet",
            world.fleet_id,
            "--server",
            url,
            "--ttl",
            "30m",
            "--uses",
            "1",
            "--out",
            str(key_file),
            "--json",
        ]
    )
    assert code == 0
    created = json.loads(capsys.readouterr().out)
    assert "key" not in created and key_file.stat().st_mode & 0o777 == 0o600
    assert key_file.read_text().startswith("bst_pk_")

    dev = tmp_path / "cam-cli"
    monkeypatch.delenv("BASTION_TOKEN")
    code = main(
        [
            "device",
            "provision",
            str(dev),
            "--server",
            url,
            "--provisioning-key",
            str(key_file),
            "--json",
        ]
    )
    assert code == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert not key_file.exists()  # the provisioning key is deleted after use
    identity = DeviceIdentity.load(dev)
    assert identity.device_id == out["device_id"]
    assert (dev / "identity.json").stat().st_mode & 0o777 == 0o600
    assert "bst_dev_" not in (dev / "identity.json").read_text()  # the API key is never in clear
    api_key = identity.api_key(SoftwareTpm(dev / "tpm.state"))
    assert (
        httpx.get(f"{url}/v1/device", headers={"Authorization": f"Bearer {api_key}"}).status_code
        == 200
    )

    monkeypatch.setenv("BASTION_TOKEN", token)
    assert main(["device", "list", "--fleet", "acme/cams", "--server", url]) == 0
    assert identity.device_id in capsys.readouterr().out
    assert (
        main(
            [
                "device",
                "show",
                identity.device_id,
                "--fleet",
                world.fleet_id,
                "--server",
                url,
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["serial"] == "cam-cli"
    assert (
        main(["device", "revoke", identity.device_id, "--fleet", world.fleet_id, "--server", url])
        == 0
    )
    assert "revoked" in capsys.readouterr().out
    assert (
        httpx.get(f"{url}/v1/device", headers={"Authorization": f"Bearer {api_key}"}).status_code
        == 401
    )
    assert main(["provisioning-key", "list", "--fleet", "cams", "--server", url]) == 0
    assert "1/1 uses" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (
            [
                "device",
                "provision",
                "{dev}",
                "--server",
                "{url}",
                "--provisioning-key",
                "{missing}",
            ],
            5,
            "does not exist",
        ),
        (
            [
                "device",
                "provision",
                "{dev}",
                "--server",
                "{url}",
                "--provisioning-key",
                "{garbage}",
            ],
            3,
            "bst_pk_",
        ),
        (
            [
                "device",
                "provision",
                "{dev}",
                "--server",
                "{url}",
                "--provisioning-key",
                "{unknown}",
            ],
            4,
            "HTTP 401",
        ),
        (
            [
                "device",
                "provision",
                "{dev}",
                "--server",
                "ftp://x",
                "--provisioning-key",
                "{garbage}",
            ],
            9,
            "http://",
        ),
        (["device", "list", "--fleet", "nope", "--server", "{url}"], 4, "not logged in"),
        (
            ["provisioning-key", "create", "--fleet", "x", "--ttl", "soon", "--server", "{url}"],
            9,
            "--ttl",
        ),
    ],
)
def test_cli_bad_input_one_line(
    served, tmp_path: Path, monkeypatch, capsys, argv, code, needle
) -> None:  # type: ignore[no-untyped-def]
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.delenv("BASTION_TOKEN", raising=False)
    if "--ttl" in argv:
        monkeypatch.setenv("BASTION_TOKEN", "bst_pat_x")
    (tmp_path / "garbage").write_text("hello")
    (tmp_path / "unknown").write_text("bst_pk_" + "A" * 49)
    values = {
        "dev": str(tmp_path / "d"),
        "url": url,
        "missing": str(tmp_path / "nope"),
        "garbage": str(tmp_path / "garbage"),
        "unknown": str(tmp_path / "unknown"),
    }
    assert main([a.format(**values) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err
    del world


def _live_keys(world: FleetWorld) -> int:
    listed = world.client.get(
        f"/v1/fleets/{world.fleet_id}/provisioning-keys", headers=world.headers["admin"]
    ).json()
    return sum(1 for k in listed if not k["revoked"])


@pytest.mark.parametrize("where", ["missing-folder", "folder", "write-fails"])
def test_provisioning_key_create_leaves_no_unseen_live_key(  # type: ignore[no-untyped-def]
    served, tmp_path: Path, monkeypatch, capsys, where: str
) -> None:
    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["admin"]["Authorization"].split()[1])
    out = {
        "missing-folder": tmp_path / "no" / "such" / "pk",
        "folder": tmp_path,
        "write-fails": tmp_path / "pk",
    }[where]
    if where == "write-fails":  # the probe passes, then the real write fails

        def broken(*_a: object, **_k: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("bastion.cli.provisioning_key.atomic_write", broken)
    before = _live_keys(world)
    argv = ["provisioning-key", "create", "--fleet", world.fleet_id, "--server", url]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err
    assert _live_keys(world) == before
    assert not (tmp_path / "pk").exists()


def test_fleet_ek_trust_cli(served, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """ek-ca add|list|remove, ek-deny add|list|remove, ek-policy; development fleets are
    marked loudly in ``fleet list`` and ``fleet ek-policy``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    world, url = served
    monkeypatch.setenv("BASTION_CONFIG", str(tmp_path / "operator.json"))
    monkeypatch.setenv("BASTION_TOKEN", world.headers["owner"]["Authorization"].split()[1])
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CLI TPM Maker")])
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "maker.pem"
    pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    fleet = world.fleet_id

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--server", url])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = run("fleet", "ek-ca", "add", fleet, str(pem), "--json")
    assert code == 0, out
    ca_id = json.loads(out)["id"]
    code, out, _ = run("fleet", "ek-ca", "list", fleet)
    assert code == 0 and "CN=CLI TPM Maker" in out
    assert run("fleet", "ek-ca", "remove", fleet, ca_id)[0] == 0
    assert "no EK CA" in run("fleet", "ek-ca", "list", fleet)[1]

    ek = "ab" * 32
    assert run("fleet", "ek-deny", "add", fleet, ek, "--reason", "stolen")[0] == 0
    code, out, _ = run("fleet", "ek-deny", "list", fleet)
    assert code == 0 and ek in out and "stolen" in out
    assert run("fleet", "ek-deny", "remove", fleet, ek)[0] == 0
    assert ek not in run("fleet", "ek-deny", "list", fleet)[1]
    code, _, err = run("fleet", "ek-deny", "remove", fleet, ek)
    assert code != 0 and "not on this fleet's deny-list" in err

    # "cams" is a development fleet in this world: loud everywhere it is listed
    code, out, err = run("fleet", "ek-policy", fleet)
    assert code == 0 and "ek any" in out and "DEVELOPMENT FLEET" in out + err
    code, out, _ = run("fleet", "list")
    line = next(x for x in out.splitlines() if x.startswith(fleet))
    assert "DEVELOPMENT FLEET" in line
    code, out, _ = run("fleet", "ek-policy", fleet, "certified")
    assert code == 0 and "ek certified" in out and "DEVELOPMENT" not in out
    run("fleet", "ek-policy", fleet, "any")
